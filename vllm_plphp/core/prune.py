"""Prune one layer's cache for this step's targets (worker side, once per
request per layer, in the step that computes the request's last prompt token).

Per layer, each target's policy (`vllm_plphp.core.policies`) says whether the
layer scores (last prompt token's attention row) and whether it prunes. Order:
the scores of every scoring target, one all-reduce of the per-vision-token head
sums across tensor-parallel ranks (each rank holds a slice of the heads, and
all must keep the same entries), then per target: the policy's choice of kept
entries, compaction, and the commit of the layer's new length through the
runner adapter (`adapter.block_ids` / `adapter.commit`).

PLPHP-policy layers take the batched path instead: all of the step's targets
in one go per layer, with no host sync per layer; the kept lengths come back
once per step (`commit_pending`). On CUDA (Triton importable, setting
`kernels` not "torch", fp16/bf16/fp32 caches) that is one fused Triton call
(`vllm_plphp.gpu.ops.prune_layer_batched_`); on vLLM's CPU_ATTN cache
(float32 / bfloat16, `kernels` "auto") one C call, two under tensor parallelism (`vllm_plphp.core.cpu_kernel`);
elsewhere the same in batched torch ops (`vllm_plphp.core.batched`). FastV / VTW, mixed GQA reductions and
per_head=False use the per-request torch path (`_prune`) everywhere.
"""

from __future__ import annotations

import functools
import logging
import time

import numpy as np
import torch

from vllm_plphp.core import batched, compaction, cpu_kernel, kv_layout, scoring
from vllm_plphp.core.policies import LayerScores
from vllm_plphp.core.worker import LayerRecord, PlphpWorker
from vllm_plphp.log import logger


@functools.lru_cache(maxsize=None)
def layer_position(layer_name: str) -> int:
    from vllm.model_executor.models.utils import extract_layer_index

    return extract_layer_index(layer_name)


def cache_views(impl, layer, kv_cache):
    """K and V views in the wrapped backend's layout (`impl.kv_layout`)."""
    if impl.kv_layout == "cpu":
        return kv_layout.cpu_views(kv_cache, layer.isa)
    return kv_layout.split_views(kv_cache, impl.head_size)


def _tp_all_reduce(values: torch.Tensor) -> torch.Tensor:
    """Sum over tensor-parallel ranks (callers skip it when `worker.tp_size` is 1)."""
    from vllm.distributed import tensor_model_parallel_all_reduce

    return tensor_model_parallel_all_reduce(values)


def prune_layer(worker: PlphpWorker, impl, layer, query: torch.Tensor, kv_cache: torch.Tensor) -> None:
    start = time.perf_counter()
    roles = _roles(worker, layer_position(layer.layer_name))
    if roles:
        _move_to_copies(worker, roles, worker.layer_to_group[layer.layer_name], kv_cache)
        backend = _batched(worker, roles, impl, layer, query, kv_cache)
        if backend:
            _prune_batched(worker, roles, impl, layer, query, kv_cache, backend)
        else:
            _prune(worker, roles, impl, layer, query, kv_cache)
    worker.prune_seconds += time.perf_counter() - start


def _move_to_copies(worker: PlphpWorker, roles, gid: int, kv_cache: torch.Tensor) -> None:
    """Prefix caching: a target the scheduler gave private copies of its
    region blocks (`PruneTarget.copy`) gets, in each layer it prunes, the
    region's pages copied into them (whole pages: K and V of every head) and
    its block table pointed at them, before anything is scored or compacted;
    the original blocks keep the unpruned prompt for the prefix cache."""
    for target, _, _, prune in roles:
        new = target.copy[1].get(gid) if prune and target.copy else None
        if not new:
            continue
        old = worker.adapter.swap_blocks(gid, target, target.copy[0], new)
        dst = torch.tensor(new, dtype=torch.long, device=kv_cache.device)
        kv_cache[dst] = kv_cache[old.to(device=kv_cache.device, dtype=torch.long)]


def _batched(worker: PlphpWorker, roles, impl, layer, query: torch.Tensor, kv_cache: torch.Tensor) -> str | None:
    """Which batched path the layer takes: "triton" (CUDA, or worker.kernels ==
    "triton"; fp16/bf16/fp32 caches), "c" (vLLM's CPU_ATTN cache, float32 /
    bfloat16, kernels "auto", the C kernel built), "torch" (elsewhere, fp8 caches), or
    None (the per-request path: not every target is a PLPHP layer that scores
    and prunes with per-head rankings and one GQA reduction)."""
    if any(policy.name != "plphp" or not (score and prune) for _, policy, score, prune in roles):
        return None
    if len({t.config.gqa_reduce for t, *_ in roles}) != 1:
        return None
    if not all(t.config.per_head for t, *_ in roles):  # the shared-ranking ablation
        return None
    if worker.kernels is None and impl.kv_layout == "cpu" and _c_supports(worker, impl, layer, query, kv_cache):
        return "c"
    if worker.kernels == "torch" or (worker.kernels is None and not kv_cache.is_cuda):
        return "torch"
    if kv_cache.element_size() == 1:  # fp8 (stored as uint8 or float8)
        return "torch"
    from vllm_plphp.gpu import ops

    return "triton" if ops.use_triton(kv_cache, "triton" if worker.kernels == "triton" else None) else "torch"


def _c_supports(worker: PlphpWorker, impl, layer, query, kv_cache) -> bool:
    """`cpu_kernel.supports`, asked once per layer and cache tensor (it does
    not change between steps; each check costs ~30 us between layers)."""
    key = (layer.layer_name, kv_cache.data_ptr(), query.shape[1])
    ok = worker.c_supported.get(key)
    if ok is None:
        ok = worker.c_supported[key] = cpu_kernel.supports(kv_cache, getattr(impl, "kv_cache_dtype", "auto"),
                                                           query.shape[1])
    return ok


def _prune_batched(worker: PlphpWorker, roles, impl, layer, query, kv_cache, backend: str) -> None:
    step = worker.step
    targets = [t for t, *_ in roles]
    ids = [t.req_id for t in targets]
    if step.batch is None or step.batch[0] != ids:
        from vllm_plphp.gpu import make_plan

        device = kv_cache.device
        plan = make_plan([t.images for t in targets], [t.prompt_len for t in targets],
                         [t.total_len for t in targets], device, configs=[t.config for t in targets])
        rows = torch.tensor([t.row for t in targets], device=device)
        queries = torch.tensor([t.query_index for t in targets], device=device)
        step.batch = (ids, plan, rows, queries, {})
    _, plan, rows, query_rows, layouts = step.batch
    gid = worker.layer_to_group[layer.layer_name]
    layer_idx = layer_position(layer.layer_name)
    return_keep = worker.keep_layer == layer_idx or worker.keep_all
    table = worker.adapter.group_table(gid)  # every row; the targets' rows are `rows`
    reduce = targets[0].config.gqa_reduce
    if backend in ("torch", "c"):
        if impl.kv_layout == "cpu" and layer.isa not in kv_layout.CPU_ISAS:
            kv_layout.cpu_views(kv_cache, layer.isa)  # refuses the ISA
        shape = (kv_cache.shape[2], kv_cache.shape[1])  # block size, KV heads
        layout = layouts.get(shape)
        if layout is None:
            layout = layouts[shape] = batched.make_layout(plan, *shape)
    tp = worker.tp_size
    if backend == "c":
        if layout.cpu is None:
            layout.cpu = cpu_kernel.make_cpu_plan(plan, query_rows, rows)
        if tp == 1 and cpu_kernel.fused_inputs(query, table):  # one C call: queries and ids read in C
            result = cpu_kernel.prune_layer_rows_(query, kv_cache, table, layout, impl.scale, reduce,
                                                  return_keep=return_keep)
        else:
            ids = table.index_select(0, rows).gather(1, layout.cols).long()
            result = cpu_kernel.prune_layer_(query.index_select(0, query_rows), kv_cache, ids, layout,
                                             impl.scale, reduce, num_heads_total=query.shape[1] * tp,
                                             all_reduce=_tp_all_reduce if tp > 1 else None,
                                             return_keep=return_keep)
        step.pending.append((gid, layer_idx, targets, result))
        return
    from vllm_plphp.gpu import ops

    common = dict(num_heads_total=query.shape[1] * tp, all_reduce=_tp_all_reduce if tp > 1 else None,
                  return_keep=return_keep)
    table = table.index_select(0, rows)
    queries = query.index_select(0, query_rows)
    if backend == "torch":
        kv_cache_dtype = getattr(impl, "kv_cache_dtype", "auto")
        k_scale = layer._k_scale_float if kv_cache_dtype in kv_layout.FP8_DTYPES else 1.0
        with batched.one_thread(kv_cache):
            result = batched.prune_layer_(queries, kv_cache, impl.kv_layout, table, plan, layout,
                                          impl.scale, reduce, kv_cache_dtype=kv_cache_dtype,
                                          k_scale=k_scale, **common)
    else:
        k_cache, v_cache = cache_views(impl, layer, kv_cache)
        result = ops.prune_layer_batched_(queries, k_cache, v_cache, table, plan, impl.scale,
                                          reduce, backend="triton", **common)
    step.pending.append((gid, layer_idx, targets, result))


def commit_pending(worker: PlphpWorker, step) -> None:
    """The batched path's commits for the whole step: one device->host copy
    (its time counts in `worker.prune_seconds`)."""
    if not step.pending:
        return
    start = time.perf_counter()
    pending, step.pending = step.pending, []
    results = [r for *_, r in pending]
    lengths = _on_host([r.lengths for r in results], torch.int64)
    gammas = _on_host([r.gammas for r in results], torch.float64)
    rates = _on_host([r.rates for r in results], torch.float64)
    for i, (gid, layer_idx, targets, result) in enumerate(pending):
        for b, target in enumerate(targets):
            kept = lengths[i][b]
            keep = None if result.keep is None else result.keep[b, :, :kept]
            _commit(worker, gid, target, kept)
            _record(worker, target, layer_idx, kept, rates[i][b], gammas[i][b], keep)
    for target in pending[-1][2]:
        _log_request(worker, target)
    worker.prune_seconds += time.perf_counter() - start


def _on_host(values: list, dtype: torch.dtype) -> list[list]:
    """Per-layer (B,) results as lists: numpy (the C kernel's) read directly,
    device tensors in one copy to the host."""
    if all(isinstance(v, np.ndarray) for v in values):
        return np.stack(values).tolist()
    return torch.stack([torch.as_tensor(v).to(dtype) for v in values]).cpu().tolist()


def _commit(worker: PlphpWorker, gid: int, target, kept: int) -> None:
    worker.adapter.commit(gid, target, kept)
    step = worker.step
    step.events.setdefault(target.req_id, {})[gid] = (target.total_len - kept, target.total_len)
    step.layers_pruned[target.req_id] = step.layers_pruned.get(target.req_id, 0) + 1


def _roles(worker: PlphpWorker, layer_idx: int) -> list:
    """(target, policy, scores this layer?, prunes this layer?) per target."""
    n = worker.num_layers
    roles = []
    for target in worker.step.targets:
        policy = target.policy
        score = policy.scores_layer(layer_idx, n)
        prune = policy.prunes_layer(layer_idx, n)
        if score or prune:
            roles.append((target, policy, score, prune))
    return roles


def _keys(impl, layer, k_cache, block_ids, length, dtype) -> torch.Tensor:
    """Positions 0..length-1 of the layer's keys, (Hkv, length, D), as `dtype`
    values (an fp8 cache's bytes dequantized with the layer's k_scale)."""
    keys = compaction.gather(k_cache, block_ids, length)
    kv_cache_dtype = getattr(impl, "kv_cache_dtype", "auto")
    if kv_cache_dtype not in kv_layout.FP8_DTYPES:
        return keys
    return kv_layout.dequantize(keys, kv_cache_dtype, layer._k_scale_float, dtype)


def _layer_scores(roles, impl, layer, query, k_cache, blocks, tp: int) -> dict[int, LayerScores]:
    """Scores of the targets this layer scores. Attention on each vision
    position averaged over ALL query heads: this rank's head sums, reduced
    across tensor-parallel ranks, / global heads."""
    scored = [t for t, _, score, _ in roles if score]
    if not scored:
        return {}
    num_kv_heads = k_cache.shape[1]
    probs, vision = {}, {}
    for t in scored:
        keys = _keys(impl, layer, k_cache, blocks[t.row], t.prompt_len, query.dtype)
        probs[t.row] = scoring.last_token_attention(query[t.query_index], keys, impl.scale)
        vision[t.row] = torch.cat(t.images).to(k_cache.device)
    sums = torch.cat([probs[t.row][:, vision[t.row]].sum(0) for t in scored])
    if tp > 1:
        sums = _tp_all_reduce(sums)
    sums = sums / (query.shape[1] * tp)
    parts = torch.split(sums, [vision[t.row].numel() for t in scored])
    return {t.row: LayerScores(probs[t.row], part, num_kv_heads) for t, part in zip(scored, parts)}


def _prune(worker: PlphpWorker, roles, impl, layer, query, kv_cache) -> None:
    layer_idx = layer_position(layer.layer_name)
    gid = worker.layer_to_group[layer.layer_name]
    adapter = worker.adapter
    k_cache, v_cache = cache_views(impl, layer, kv_cache)
    num_kv_heads = k_cache.shape[1]
    blocks = {t.row: adapter.block_ids(gid, t) for t, *_ in roles}
    layer_scores = _layer_scores(roles, impl, layer, query, k_cache, blocks, worker.tp_size)

    for target, policy, score, prune in roles:
        images = [p.to(k_cache.device) for p in target.images]
        scores = layer_scores.get(target.row)
        if score:
            policy.observe(images, scores)
        if not prune:
            continue
        choice = policy.choose(images, target.total_len, num_kv_heads)
        compaction.compact_(k_cache, v_cache, blocks[target.row], choice.keep)
        kept = choice.keep.shape[1]
        _commit(worker, gid, target, kept)
        _record(worker, target, layer_idx, kept, choice.rate,
                scores.gamma if scores is not None else float("nan"), choice.keep)
        if layer_idx == policy.last_layer(worker.num_layers):
            _log_request(worker, target)


def _record(worker: PlphpWorker, target, layer_idx: int, kept: int, rate: float,
            gamma: float, keep: torch.Tensor | None) -> None:
    """Metrics counts, the per-request record and (inspection) the keep map."""
    step = worker.step
    num_vision = target.num_vision
    vision_kept = num_vision - (target.total_len - kept)
    step.count("vision_tokens_seen", num_vision)
    step.count("vision_tokens_kept", vision_kept)
    if target.num_video:
        step.count("video_tokens_seen", target.num_video)
    step.stats.setdefault("rates", []).append(rate)
    if worker.keep_layer == layer_idx and keep is not None:
        worker.keep_maps[target.req_id] = {
            "layer": layer_idx,
            "images": [p.tolist() for p in target.images],
            "keep": keep.cpu().tolist(),  # (Hkv, L) positions per KV head
        }
    if worker.keep_all and keep is not None:
        worker.keep_maps_all.setdefault(target.req_id, {})[layer_idx] = keep.cpu().tolist()
    worker.records.setdefault(target.req_id, {})[layer_idx] = LayerRecord(
        gamma=gamma,
        rate=rate,
        kept=kept,
        total=target.total_len,
        vision=num_vision,
        vision_kept=vision_kept,
    )


def _log_request(worker: PlphpWorker, target) -> None:
    """Debug line per request: per-layer category (A attentive, B balanced,
    I indifferent, - not scored), then kept/total entries summed over pruned
    layers."""
    if not logger.isEnabledFor(logging.DEBUG):
        return
    c = target.config
    layers = worker.records.get(target.req_id, {})
    cats = "".join("-" if r.gamma != r.gamma else c.category(r.gamma)
                   for _, r in sorted(layers.items()))
    kept = sum(r.kept for r in layers.values())
    total = sum(r.total for r in layers.values())
    logger.debug("PLPHP request %s (%s): layers %d.. categories %s, kept %d/%d entries",
                 target.req_id, c.policy, min(layers, default=0), cats, kept, total)
