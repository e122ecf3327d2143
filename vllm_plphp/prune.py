"""Prune one layer's cache for this step's targets (worker side, once per
request per layer, in the step that computes the request's last prompt token).

Order per layer: scores for every target, one all-reduce of the gamma sums
across tensor-parallel ranks (each rank holds a slice of the heads, and all
must pick the same r_l), then per target: rate, per-head top-k, compaction,
and the new pruned count in the layer's block table.
"""

from __future__ import annotations

import functools
import logging
import time

import torch
from vllm.platforms import current_platform

from vllm_plphp import compaction, kv_layout, scoring
from vllm_plphp.log import logger
from vllm_plphp.worker_state import STATE, LayerRecord


@functools.lru_cache(maxsize=None)
def layer_position(layer_name: str) -> int:
    from vllm.model_executor.models.utils import extract_layer_index

    return extract_layer_index(layer_name)


def cache_views(impl, layer, kv_cache):
    if current_platform.is_cpu():
        return kv_layout.cpu_views(kv_cache, layer.isa)
    return kv_layout.cuda_views(kv_cache, impl.head_size)


def _tp_all_reduce(values: torch.Tensor) -> torch.Tensor:
    from vllm.distributed import get_tensor_model_parallel_world_size

    if get_tensor_model_parallel_world_size() == 1:
        return values
    from vllm.distributed import tensor_model_parallel_all_reduce

    return tensor_model_parallel_all_reduce(values)


def _tp_size() -> int:
    from vllm.distributed import get_tensor_model_parallel_world_size

    return get_tensor_model_parallel_world_size()


def prune_layer(impl, layer, query: torch.Tensor, kv_cache: torch.Tensor) -> None:
    start = time.perf_counter()
    _prune_layer(impl, layer, query, kv_cache)
    STATE.prune_seconds += time.perf_counter() - start


def _prune_layer(impl, layer, query: torch.Tensor, kv_cache: torch.Tensor) -> None:
    base = STATE.config
    layer_idx = layer_position(layer.layer_name)
    if base is None or not base.is_pruned_layer(layer_idx, STATE.num_layers):
        return
    gid = STATE.layer_to_group[layer.layer_name]
    table = STATE.block_table_for(layer.layer_name)
    k_cache, v_cache = cache_views(impl, layer, kv_cache)
    device = kv_cache.device
    num_kv_heads = k_cache.shape[1]

    work = []
    gamma_sums = torch.zeros(len(STATE.targets), dtype=torch.float32, device=device)
    for i, target in enumerate(STATE.targets):
        row = target.row
        num_blocks = int(table.num_blocks_per_row[row])
        block_ids = torch.from_numpy(table.block_table.np[row, :num_blocks]).to(
            device=device, dtype=torch.long
        )
        keys = compaction.gather(k_cache, block_ids, target.prompt_len)
        probs = scoring.last_token_attention(query[target.query_index], keys, impl.scale)
        vision = torch.cat(target.images).to(device)
        gamma_sums[i] = probs[:, vision].sum()
        work.append((target, block_ids, probs, vision))

    # gamma_l = mean over ALL query heads; the sum over this rank's heads is
    # reduced across ranks, then divided by the global head count.
    gamma_sums = _tp_all_reduce(gamma_sums)
    total_heads = query.shape[1] * _tp_size()
    gammas = (gamma_sums / total_heads).tolist()

    for (target, block_ids, probs, vision), gamma in zip(work, gammas):
        config = target.config
        rate = config.layer_rate(gamma)
        images = [p.to(device) for p in target.images]
        scores = scoring.kv_head_scores(probs, num_kv_heads, config.gqa_reduce)
        keep = scoring.select_kept(scores, images, rate, target.total_len)
        compaction.compact_(k_cache, v_cache, block_ids, keep)
        kept = keep.shape[1]
        _commit(table, target, gid, kept)
        STATE.count("vision_tokens_seen", int(vision.numel()))
        STATE.count("vision_tokens_kept", int(vision.numel()) - (target.total_len - kept))
        STATE.step_stats.setdefault("rates", []).append(rate)
        if layer_idx == STATE.num_layers - base.skip_last - 1:  # last pruned layer
            _log_request(target)
        if STATE.keep_layer == layer_idx:
            STATE.keep_maps[target.req_id] = {
                "layer": layer_idx,
                "images": [p.tolist() for p in target.images],
                "keep": keep.cpu().tolist(),  # (Hkv, L) positions per KV head
            }
        STATE.records.setdefault(target.req_id, {})[layer_idx] = LayerRecord(
            gamma=gamma,
            rate=rate,
            kept=kept,
            total=target.total_len,
            vision=int(vision.numel()),
            vision_kept=int(vision.numel()) - (target.total_len - kept),
        )


def _log_request(target) -> None:
    """Debug line per request: per-layer category (A attentive, B balanced,
    I indifferent), then kept/total entries summed over pruned layers."""
    if not logger.isEnabledFor(logging.DEBUG):
        return
    c = target.config
    layers = STATE.records.get(target.req_id, {})
    cats = "".join(
        "A" if r.gamma >= c.alpha else ("I" if r.gamma < c.beta else "B")
        for _, r in sorted(layers.items())
    )
    kept = sum(r.kept for r in layers.values())
    total = sum(r.total for r in layers.values())
    logger.debug("PLPHP request %s: layers %d.. categories %s, kept %d/%d entries",
                 target.req_id, min(layers, default=0), cats, kept, total)


def _commit(table, target, gid: int, kept: int) -> None:
    """Record the layer's new length; drop the tail blocks from the worker's
    copies of the request's block list (the block table row and the request
    state), exactly as the scheduler's `PlphpLayerManager.prune` will."""
    num_pruned = target.total_len - kept
    table.num_pruned[target.row] = num_pruned
    keep_blocks = -(-kept // table.block_size)
    old = int(table.num_blocks_per_row[target.row])
    if keep_blocks < old:
        table.block_table.np[target.row, keep_blocks:old] = 0
        table.num_blocks_per_row[target.row] = keep_blocks
        del STATE.runner.requests[target.req_id].block_ids[gid][keep_blocks:]
    STATE.pruned.setdefault(target.req_id, {})[gid] = num_pruned
    STATE.events.setdefault(target.req_id, {})[gid] = (num_pruned, target.total_len)
