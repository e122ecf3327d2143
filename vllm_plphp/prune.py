"""Prune one layer's cache for this step's targets (worker side, once per
request per layer, in the step that computes the request's last prompt token).

Per layer, each target's policy (`vllm_plphp.policies`) says whether the layer
scores (last prompt token's attention row) and whether it prunes. Order: the
scores of every scoring target, one all-reduce of the per-vision-token head
sums across tensor-parallel ranks (each rank holds a slice of the heads, and
all must keep the same entries), then per target: the policy's choice of kept
entries, compaction, and the new pruned count in the layer's block table.
"""

from __future__ import annotations

import functools
import logging
import time

import torch
from vllm.platforms import current_platform

from vllm_plphp import compaction, kv_layout, scoring
from vllm_plphp.policies import LayerScores, get_policy
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
    if STATE.config is None:
        return
    layer_idx = layer_position(layer.layer_name)
    n = STATE.num_layers
    roles = []  # (target, policy, scores this layer?, prunes this layer?)
    for target in STATE.targets:
        policy = get_policy(target.config.policy)
        score = policy.scores_layer(target.config, layer_idx, n)
        prune = policy.prunes_layer(target.config, layer_idx, n)
        if score or prune:
            roles.append((target, policy, score, prune))
    if not roles:
        return
    gid = STATE.layer_to_group[layer.layer_name]
    table = STATE.block_table_for(layer.layer_name)
    k_cache, v_cache = cache_views(impl, layer, kv_cache)
    device = kv_cache.device
    num_kv_heads = k_cache.shape[1]

    blocks, probs, vision, layer_scores = {}, {}, {}, {}
    for target, _, score, _ in roles:
        num_blocks = int(table.num_blocks_per_row[target.row])
        blocks[target.row] = torch.from_numpy(
            table.block_table.np[target.row, :num_blocks]).to(device=device, dtype=torch.long)
        if score:
            keys = compaction.gather(k_cache, blocks[target.row], target.prompt_len)
            probs[target.row] = scoring.last_token_attention(
                query[target.query_index], keys, impl.scale)
            vision[target.row] = torch.cat(target.images).to(device)

    # Attention on each vision position averaged over ALL query heads: this
    # rank's head sums, reduced across tensor-parallel ranks (each holds a
    # slice of the heads; all must choose the same entries), / global heads.
    scored = [t for t, _, score, _ in roles if score]
    if scored:
        sums = torch.cat([probs[t.row][:, vision[t.row]].sum(0) for t in scored])
        sums = _tp_all_reduce(sums) / (query.shape[1] * _tp_size())
        for t, part in zip(scored, torch.split(sums, [vision[t.row].numel() for t in scored])):
            layer_scores[t.row] = LayerScores(probs[t.row], part, num_kv_heads)

    for target, policy, score, prune in roles:
        images = [p.to(device) for p in target.images]
        scores = layer_scores.get(target.row)
        if score:
            policy.observe(target.config, target.memo, images, scores)
        if not prune:
            continue
        choice = policy.choose(target.config, target.memo, images, target.total_len, num_kv_heads)
        compaction.compact_(k_cache, v_cache, blocks[target.row], choice.keep)
        kept = choice.keep.shape[1]
        _commit(table, target, gid, kept)
        num_vision = target.num_vision
        vision_kept = num_vision - (target.total_len - kept)
        STATE.count("vision_tokens_seen", num_vision)
        STATE.count("vision_tokens_kept", vision_kept)
        STATE.step_stats.setdefault("rates", []).append(choice.rate)
        if STATE.keep_layer == layer_idx:
            STATE.keep_maps[target.req_id] = {
                "layer": layer_idx,
                "images": [p.tolist() for p in target.images],
                "keep": choice.keep.cpu().tolist(),  # (Hkv, L) positions per KV head
            }
        STATE.records.setdefault(target.req_id, {})[layer_idx] = LayerRecord(
            gamma=scores.gamma if scores is not None else float("nan"),
            rate=choice.rate,
            kept=kept,
            total=target.total_len,
            vision=num_vision,
            vision_kept=vision_kept,
        )
        if layer_idx == policy.last_layer(target.config, n):
            _log_request(target)


def _log_request(target) -> None:
    """Debug line per request: per-layer category (A attentive, B balanced,
    I indifferent, - not scored), then kept/total entries summed over pruned
    layers."""
    if not logger.isEnabledFor(logging.DEBUG):
        return
    c = target.config
    layers = STATE.records.get(target.req_id, {})
    cats = "".join(
        "-" if r.gamma != r.gamma else
        "A" if r.gamma >= c.alpha else ("I" if r.gamma < c.beta else "B")
        for _, r in sorted(layers.items())
    )
    kept = sum(r.kept for r in layers.values())
    total = sum(r.total for r in layers.values())
    logger.debug("PLPHP request %s (%s): layers %d.. categories %s, kept %d/%d entries",
                 target.req_id, c.policy, min(layers, default=0), cats, kept, total)


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
