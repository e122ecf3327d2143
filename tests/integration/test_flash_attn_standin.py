"""PLPHP wrapping vLLM's FLASH_ATTN backend, driven inside the engine on CPU:
FLASH_ATTN's own metadata builder (`build`, `FlashAttentionMetadata`), impl
(`forward`, `do_kv_cache_update`) and cudagraph support declaration run as
vLLM ships them; only its two CUDA kernels, `flash_attn_varlen_func` and
`reshape_and_cache_flash`, are plain-torch stand-ins (test-only,
tests/support/flash_attn_cpu.py, which also answers FA version 2 and lets the
CPU platform return FLASH_ATTN when it is asked for). V1 runner, synchronous,
eager; engine core and worker in this process ("uni" executor), bfloat16
(FLASH_ATTN takes no float32).

On a 6-layer LLaVA (3 pruned layers, 64-token images), one batch of 1-image,
2-image and text prompts, at PLPHP's defaults and at thresholds that put the
three pruned layers in three categories:
- the engine runs PLPHP's subclasses of FLASH_ATTN's builder and impl, and
  FLASH_ATTN's cudagraph declaration is kept;
- stock FLASH_ATTN equals PLPHP on FLASH_ATTN at r=1;
- PLPHP on FLASH_ATTN equals the HF reference (same dtype) in tokens and
  per-layer kept lengths;
- every call of the FLASH_ATTN kernel read, from the seq_lens of the metadata
  FLASH_ATTN's builder produced (PLPHP's per-layer buffer), its own layer's
  compacted length: prefill the full prompt, decode step j `prompt + j -
  pruned(layer)`, which is also what the builder was given. (The V1 runner
  reuses one KV cache group's metadata for the others through
  `update_block_table` when a builder supports it, as FLASH_ATTN's does: every
  layer then read layer 0's lengths until PLPHP's builder opted out.)
"""

import pytest
import torch

from plphp_dev.fixtures.prompts import get_prompt, prompt_inputs
from tests.conftest import greedy, kept, make_inprocess_llm, mixed_thresholds, runner_of
from tests.support import flash_attn_cpu
from vllm_plphp.config import PlphpConfig

MAX_TOKENS = 8
DTYPE = "bfloat16"
CASES = [(1, 0), (2, 3), (0, 0), (1, 5)]  # (num_images, seed)
IMAGE_CASES = [i for i, (n, _) in enumerate(CASES) if n]
NUM_LAYERS = 6
FLASH = {"backend": "FLASH_ATTN"}
R1 = {"r": 1.0, "delta_r": 0.0}


def clear_backend_cache():
    """vLLM caches each layer's backend pick per process (`_cached_get_attn_backend`,
    keyed by the layer's selector config, not by additional_config): an
    in-process PLPHP engine would otherwise get the wrapped backend of an
    earlier one in this process, whatever its plphp.backend says."""
    from vllm.v1.attention.selector import _cached_get_attn_backend

    _cached_get_attn_backend.cache_clear()


def engine(path, *args, **kwargs):
    clear_backend_cache()
    return make_inprocess_llm(path, *args, dtype=DTYPE, distributed_executor_backend="uni",
                              **kwargs)


def generate(llm, requests, plphp=True):
    """requests: [(req_id, case, plphp override)] in one batch ->
    {req_id: (tokens, records, prompt length)}."""
    outs = llm.generate([prompt_inputs("llava", *CASES[c]) for _, c, _ in requests],
                        [greedy(MAX_TOKENS, plphp=o) for *_, o in requests])
    records = llm.collective_rpc("plphp_records", args=([o.request_id for o in outs],))[0] \
        if plphp else {}
    return {rid: (list(o.outputs[0].token_ids), records.get(o.request_id), len(o.prompt_token_ids))
            for (rid, *_), o in zip(requests, outs)}


class Runs:
    """Both engines of the module, one after the other."""

    def __init__(self, path, reference):
        self.mixed = mixed_thresholds(reference(0, None)[1])
        self.requests = [(f"d{i}", i, None) for i in range(len(CASES))] + [("m0", 0, self.mixed)]

        llm = engine(path, "plphp", FLASH)
        self.impls = llm.collective_rpc("plphp_attention_impls")[0]
        runner = runner_of(llm)
        self.builders = [(b, g.kv_cache_spec, runner.vllm_config) for groups in runner.attn_groups
                         for g in groups for b in g.metadata_builders]
        self.flash = generate(llm, self.requests + [(f"r{i}", i, R1) for i in range(len(CASES))])
        self.seq_lens = self._recorded(llm)
        self._stop(llm)

        llm = engine(path, attention_backend="FLASH_ATTN")
        layers = runner_of(llm).vllm_config.compilation_config.static_forward_context
        self.stock_impls = {type(layer.impl).__name__ for name, layer in layers.items()
                            if "language_model" in name}
        self.stock = generate(llm, [(f"s{i}", i, None) for i in range(len(CASES))], plphp=False)
        self._stop(llm)

    def _recorded(self, llm):
        """One 1-image request at the mixed thresholds, with the lengths each
        layer's builder was given and the kernel stand-in's calls recorded."""
        buffers = llm.collective_rpc("plphp_seq_lens_buffers")[0]
        llm.collective_rpc("plphp_set_record_seq_lens", args=(True,))
        flash_attn_cpu.record(True)
        try:
            run = generate(llm, [("k0", 0, self.mixed)])["k0"]
            calls = flash_attn_cpu.calls()
            last = llm.collective_rpc("plphp_last_seq_lens")[0]
        finally:
            flash_attn_cpu.record(False)
            llm.collective_rpc("plphp_set_record_seq_lens", args=(False,))
        return {"run": run, "calls": calls, "last": last, "buffers": buffers,
                "buffers_after": llm.collective_rpc("plphp_seq_lens_buffers")[0]}

    @staticmethod
    def _stop(llm):
        llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def reference():
    from plphp_dev.fixtures import build_fixture
    from plphp_dev.reference import ReferenceModel

    ref = ReferenceModel(build_fixture("llava", "shallow", progress=False),
                         dtype=getattr(torch, DTYPE))
    cache = {}

    def run(case, override):
        key = (case, repr(override))
        if key not in cache:
            text, images = get_prompt("llava", *CASES[case])
            config = PlphpConfig().replace(**(override or {}))
            cache[key] = ref.generate(text, images, MAX_TOKENS, config)
        return cache[key]

    return run


@pytest.fixture(scope="module")
def runs(reference):
    from plphp_dev.fixtures import build_fixture

    flash_attn_cpu.enable()
    try:
        yield Runs(build_fixture("llava", "shallow", progress=False), reference)
    finally:
        flash_attn_cpu.disable()
        clear_backend_cache()  # no later in-process engine reuses our picks


def test_standin_kernels_equal_dense_attention():
    """The stand-ins themselves, through FLASH_ATTN's cache views: written by
    slot, read through a shuffled block table, equal to causal SDPA (GQA) for
    a prefill row and a decode row."""
    gen = torch.Generator().manual_seed(0)
    num_blocks, block_size, hkv, heads, d = 12, 16, 2, 4, 32
    kv_cache = torch.full((num_blocks, hkv, block_size, 2 * d), float("nan"), dtype=torch.bfloat16)
    key_cache, value_cache = kv_cache.transpose(1, 2).split(d, dim=-1)  # as FLASH_ATTN's impl
    lens, query_lens = [37, 21], [37, 1]
    table = torch.randperm(num_blocks, generator=gen).view(2, 6).int()
    keys = [torch.randn(n, hkv, d, generator=gen).bfloat16() for n in lens]
    values = [torch.randn(n, hkv, d, generator=gen).bfloat16() for n in lens]
    for i, n in enumerate(lens):
        pos = torch.arange(n)
        slots = table[i, pos // block_size].long() * block_size + pos % block_size
        padded = torch.cat([slots, torch.tensor([-1])])  # a padding row is skipped
        flash_attn_cpu.STANDIN_reshape_and_cache_flash(
            torch.cat([keys[i], keys[i][:1]]), torch.cat([values[i], values[i][:1]]),
            key_cache, value_cache, padded, "auto", None, None)
    q = torch.randn(sum(query_lens), heads, d, generator=gen).bfloat16()
    out = torch.empty_like(q)
    flash_attn_cpu.STANDIN_flash_attn_varlen_func(
        q=q, k=key_cache, v=value_cache, out=out, cu_seqlens_q=torch.tensor([0, 37, 38]).int(),
        max_seqlen_q=37, seqused_k=torch.tensor(lens).int(), max_seqlen_k=37,
        softmax_scale=d ** -0.5, causal=True, block_table=table, fa_version=2)
    starts = [0, 37]
    for i, (n, m) in enumerate(zip(lens, query_lens)):
        qi = q[starts[i]:starts[i] + m].float().transpose(0, 1)
        ki = keys[i].float().repeat_interleave(heads // hkv, 1).transpose(0, 1)
        vi = values[i].float().repeat_interleave(heads // hkv, 1).transpose(0, 1)
        mask = torch.arange(n)[None, :] <= torch.arange(n - m, n)[:, None]
        want = torch.nn.functional.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask)
        torch.testing.assert_close(out[starts[i]:starts[i] + m].float(), want.transpose(0, 1),
                                   atol=1e-2, rtol=1e-2)


def test_runs_flash_attn_builder_and_impl_subclasses(runs):
    from vllm.v1.attention.backend import AttentionCGSupport
    from vllm.v1.attention.backends.flash_attn import (
        FlashAttentionImpl,
        FlashAttentionMetadataBuilder,
    )

    from vllm_plphp.worker import backend

    decoder = {v for k, v in runs.impls.items() if "language_model" in k}
    assert decoder == {"vllm_plphp.worker.backend.PlphpFlashAttentionImpl"}
    assert issubclass(backend.PlphpFlashAttentionImpl, FlashAttentionImpl)
    assert runs.stock_impls == {"FlashAttentionImpl"}
    assert len(runs.builders) == NUM_LAYERS  # one KV cache group per decoder layer
    for builder, spec, config in runs.builders:
        assert type(builder).__name__ == "PlphpFlashAttentionMetadataBuilder"
        assert isinstance(builder, FlashAttentionMetadataBuilder)
        # vLLM's own declaration (FA2: UNIFORM_BATCH), kept by the subclass
        assert builder.get_cudagraph_support(config, spec) == \
            FlashAttentionMetadataBuilder.get_cudagraph_support(config, spec) == \
            AttentionCGSupport.UNIFORM_BATCH


def test_stock_flash_attn_equals_plphp_on_flash_attn_at_r1(runs):
    for i, (n, _) in enumerate(CASES):
        tokens, records, _ = runs.flash[f"r{i}"]
        assert tokens == runs.stock[f"s{i}"][0], CASES[i]
        if n:  # planned and scored, nothing removed
            assert records and all(r["kept"] == r["total"] for r in records.values())
        else:
            assert records is None


def test_plphp_on_flash_attn_equals_reference(runs, reference):
    """Tokens and every pruned layer's kept length; the layer rule really acts
    (three categories in the mixed request) and pruning changes answers."""
    for req_id, case, override in runs.requests:
        tokens, records, _ = runs.flash[req_id]
        ref_tokens, ref_records = reference(case, override)
        assert tokens == ref_tokens, req_id
        assert kept(records) == kept(ref_records), req_id
        if CASES[case][0] == 0:
            assert records is None and tokens == runs.stock[f"s{case}"][0]
    mixed = runs.flash["m0"][1]
    assert {round(r["rate"], 6) for r in mixed.values()} == {0.2, 0.5, 0.8}
    differ = sum(runs.flash[f"d{i}"][0] != runs.stock[f"s{i}"][0] for i in IMAGE_CASES)
    assert differ >= 2, "pruning changed too few answers"


def test_flash_attn_kernel_reads_compacted_lengths(runs):
    """Each layer's FLASH_ATTN metadata carries PLPHP's seq_lens buffer of
    that layer (same address every step, one per layer), and the kernel read
    the layer's compacted length from it at every step."""
    rec = runs.seq_lens
    tokens, records, prompt_len = rec["run"]
    buffers = rec["buffers"]
    assert rec["buffers_after"] == buffers
    assert len(set(buffers.values())) == len(buffers) == NUM_LAYERS
    layer_of = {ptr: int(name.split("layers.")[1].split(".")[0]) for name, ptr in buffers.items()}
    per_layer = {}
    for call in rec["calls"]:
        assert call["seqused_k_ptr"] in layer_of, "seqused_k is not a PLPHP seq_lens buffer"
        per_layer.setdefault(layer_of[call["seqused_k_ptr"]], []).append(call)
    assert sorted(per_layer) == list(range(NUM_LAYERS)), "some layers read another layer's lengths"
    assert len({r["kept"] for r in records.values()}) == 3  # three different compacted lengths
    for layer, calls in per_layer.items():
        pruned = records[layer]["total"] - records[layer]["kept"] if layer in records else 0
        assert len(calls) == MAX_TOKENS, layer  # the prefill and MAX_TOKENS - 1 decode steps
        # prefill: the whole prompt (its first blocks may come from the prefix cache)
        assert calls[0]["seqused_k"] == [prompt_len] and 0 < calls[0]["query_lens"][0] <= prompt_len
        for j, call in enumerate(calls[1:], start=1):
            assert call["query_lens"] == [1]
            assert call["seqused_k"] == [prompt_len + j - pruned], (layer, j)
            assert call["max_seqlen_k"] >= call["seqused_k"][0]
        name = next(n for n, p in buffers.items() if layer_of[p] == layer)
        assert rec["last"][name] == calls[-1]["seqused_k"], layer  # what the builder was given
    assert tokens == runs.flash["m0"][0] and kept(records) == kept(runs.flash["m0"][1])
