"""Which requests get pruned in this step, and where their vision tokens are.

Worker side, once per step (not per layer): a request is pruned in the step
whose scheduled tokens include its last prompt token (position P-1). That holds
for plain prefill, chunked prefill (the last chunk) and the re-prefill of a
preempted request (its cache was dropped and is rebuilt from position 0).
Runner-agnostic: the adapters pass plain arrays in batch-row order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from vllm_plphp.config import PlphpConfig
from vllm_plphp.core.policies import make_policy
from vllm_plphp.log import logger
from vllm_plphp.request_config import config_for_request

# modalities whose placeholder tokens are pruned; each item (one image, one
# video with all its frames) is budgeted on its own: K_j = floor(r_l * S_j)
VISION_MODALITIES = ("image", "video")


class RequestInfo(NamedTuple):
    """What the planner needs of a request (V1: the runner's CachedRequestState
    has these attributes; V2: the adapter records them when a request is added)."""

    num_prompt_tokens: int
    mm_features: list | None
    sampling_params: object


@dataclass
class PruneTarget:
    row: int  # row in this step's batch
    slot: int  # where the runner keeps the request (V1: batch row, V2: request slot)
    req_id: str
    query_index: int  # index of the last prompt token in this step's flat batch
    prompt_len: int  # P
    total_len: int  # T: tokens in the cache once this step is done (T >= P)
    images: list[torch.Tensor]  # per vision item, its vision positions (is_embed only)
    config: PlphpConfig
    num_video: int = 0  # of the vision positions, how many belong to video items
    # the request's policy for this prefill (vllm_plphp.core.policies)
    policy: object = None
    # private copies of its region blocks from the scheduler (prefix caching):
    # (first region block, {group id: [block ids]}); None: compact in place
    copy: tuple | None = None

    def __post_init__(self) -> None:
        if self.policy is None:
            self.policy = make_policy(self.config)

    @property
    def num_vision(self) -> int:
        return sum(int(p.numel()) for p in self.images)

    def expects_pruning(self, num_layers: int, layers=None) -> bool:
        """Whether the request's policy prunes at least one of `layers` (default:
        all the model's layers; a pipeline stage passes its own)."""
        layers = range(num_layers) if layers is None else layers
        return any(self.policy.prunes_layer(l, num_layers) for l in layers)


def first_vision_offset(mm_features) -> int | None:
    """Prompt position where the request's first vision item starts (None when
    it has none). Blocks wholly before it are the same as stock in every layer
    whatever PLPHP keeps; from it on, pruned layers compact in place."""
    offsets = [f.mm_position.offset for f in mm_features or () if f.modality in VISION_MODALITIES]
    return min(offsets) if offsets else None


def vision_positions(mm_features) -> list[torch.Tensor]:
    """Per vision item, the prompt positions that hold vision embeddings."""
    return [positions for positions, _ in vision_items(mm_features)]


def vision_items(mm_features) -> list[tuple[torch.Tensor, str]]:
    """Per vision item (image or video), its vision positions and modality."""
    items = []
    for feature in mm_features or ():
        if feature.modality not in VISION_MODALITIES:
            continue
        pos = feature.mm_position
        positions = torch.arange(pos.offset, pos.offset + pos.length)
        if pos.is_embed is not None:
            positions = positions[pos.is_embed.to(torch.bool).cpu()]
        if positions.numel():
            items.append((positions, feature.modality))
    return items


def plan_step(
    req_ids: list,
    num_computed: np.ndarray,
    num_scheduled: np.ndarray,
    requests,
    base: PlphpConfig,
    slots: np.ndarray | None = None,
    copies: dict | None = None,
) -> tuple[list[PruneTarget], list[str], int]:
    """Rows whose scheduled tokens reach their last prompt token.

    num_computed / num_scheduled: (num_reqs,) ints in batch-row order;
    requests: req_id -> RequestInfo-like; slots: (num_reqs,) the runner's
    request slots (default: the batch rows); copies: the scheduler's region
    copies of this step (`SchedulerOutput.plphp_copies`; an entry None: the
    request's image came from the prefix cache and there was no room to copy
    it, so it is not pruned).
    Returns (targets, planned req ids, number of image requests opted out).
    """
    targets, planned, skipped = [], [], 0
    start = 0
    for row, req_id in enumerate(req_ids):
        n = int(num_scheduled[row])
        first = int(num_computed[row])
        state = requests[req_id]
        last_prompt = state.num_prompt_tokens - 1
        if n and first <= last_prompt < first + n and state.mm_features:
            items = vision_items(state.mm_features)
            images = [positions for positions, _ in items]
            if images:
                planned.append(req_id)
                try:
                    config = config_for_request(base, state.sampling_params)
                except ValueError as e:  # the front end validates; never crash here
                    logger.warning("request %s: PLPHP skipped: %s", req_id, e)
                    config = None
                if config is None:
                    skipped += 1
                elif copies and req_id in copies and copies[req_id] is None:
                    pass  # counted by the scheduler (prompt_cache_fallbacks)
                else:
                    targets.append(PruneTarget(
                        row=row,
                        slot=row if slots is None else int(slots[row]),
                        req_id=req_id,
                        query_index=start + last_prompt - first,
                        prompt_len=last_prompt + 1,
                        total_len=first + n,
                        images=images,
                        config=config,
                        num_video=sum(int(p.numel()) for p, m in items if m == "video"),
                        copy=(copies or {}).get(req_id),
                    ))
        start += n
    return targets, planned, skipped
