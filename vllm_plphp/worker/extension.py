"""Worker extension for inspection: `LLM(..., worker_extension_cls=WORKER_EXT)`
then `llm.collective_rpc("plphp_records")` (one result per worker/rank).

Read-only views of the worker's PLPHP state, for tests, demos and `inspect`.
"""

from __future__ import annotations

from dataclasses import asdict

WORKER_EXT = "vllm_plphp.worker.extension.PlphpWorkerExtension"


class PlphpWorkerExtension:
    @property
    def _plphp(self):
        from vllm_plphp.core.worker import worker_for

        return worker_for(self.model_runner.vllm_config)

    def plphp_records(self, req_ids=None) -> dict:
        """{req_id: {layer_index: {gamma, rate, kept, total, vision, vision_kept}}}.

        req_ids: user-facing ids (`RequestOutput.request_id`); the engine's
        internal id is that id plus a random "-suffix", and is matched too.
        Finished requests keep their records up to the last
        `core.worker.MAX_FINISHED_RECORDS` (4096); read them after every few
        thousand requests (benchmarks/quality/bench_paired.py does).
        """
        merged = {**self._plphp.finished, **self._plphp.records}
        out = {}
        for internal, layers in merged.items():
            key = internal
            if req_ids is not None:
                key = next((r for r in req_ids if internal == r or internal.startswith(f"{r}-")), None)
                if key is None:
                    continue
            out[key] = {layer: asdict(rec) for layer, rec in layers.items()}
        return out

    def plphp_set_record_seq_lens(self, on: bool) -> None:
        self._plphp.record_seq_lens = bool(on)
        self._plphp.last_seq_lens.clear()

    def plphp_last_seq_lens(self) -> dict:
        """{layer_name: seq_lens the stock kernel received in the last step}."""
        return dict(self._plphp.last_seq_lens)

    def plphp_timing(self, reset: bool = False) -> dict:
        """Seconds spent scoring + compacting, and in the steps that pruned."""
        out = {"prune_seconds": self._plphp.prune_seconds, "pruning_step_seconds": self._plphp.pruning_step_seconds}
        if reset:
            self._plphp.prune_seconds = self._plphp.pruning_step_seconds = 0.0
        return out

    def plphp_record_keep(self, layer: int | None, all_layers: bool = False) -> None:
        """Keep each KV head's kept positions of `layer` (and, with
        `all_layers`, of every pruned layer) for later requests."""
        self._plphp.keep_layer = layer
        self._plphp.keep_maps.clear()
        self._plphp.keep_all = all_layers
        self._plphp.keep_maps_all.clear()

    def plphp_keep_maps(self) -> dict:
        return dict(self._plphp.keep_maps)

    def plphp_keep_maps_all(self) -> dict:
        """{req_id: {layer: (Hkv, L) kept positions}} (plphp_record_keep(..., True))."""
        return {req: dict(layers) for req, layers in self._plphp.keep_maps_all.items()}

    def plphp_attention_impls(self) -> dict:
        """{layer_name: attention impl class path} of the loaded model."""
        runner = self.model_runner
        layers = runner.compilation_config.static_forward_context
        return {
            name: f"{type(layer.impl).__module__}.{type(layer.impl).__qualname__}"
            for name, layer in layers.items()
            if hasattr(layer, "impl")
        }

    def plphp_kv_cache_groups(self) -> list[list[str]]:
        """Layer names of each KV cache group (PLPHP: one layer per group)."""
        return [list(g.layer_names) for g in self.model_runner.kv_cache_config.kv_cache_groups]

    def plphp_seq_lens_buffers(self) -> dict:
        """{layer_name: address of the persistent seq_lens buffer its attention
        metadata builder hands the kernel} (what a full CUDA graph reads)."""
        out = {}
        for groups in self.model_runner.attn_groups:
            for group in groups:
                for builder in group.metadata_builders:
                    buf = getattr(builder, "seq_lens_buf", None)
                    if buf is not None:
                        for name in group.layer_names:
                            out[name] = buf.data_ptr()
        return out

    def plphp_runner(self) -> dict:
        """Which runner adapter this worker uses, and whether scheduling is async."""
        adapter = self._plphp.adapter
        config = self.model_runner.vllm_config
        return {"runner": adapter.name if adapter is not None else None,
                "async_scheduling": bool(config.scheduler_config.async_scheduling),
                "compiled": not config.model_config.enforce_eager}
