"""Which requests get pruned in this step, and where their vision tokens are.

Worker side, once per step (not per layer): a request is pruned in the step
whose scheduled tokens include its last prompt token (position P-1). That holds
for plain prefill, chunked prefill (the last chunk) and the re-prefill of a
preempted request (its cache was dropped and is rebuilt from position 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vllm_plphp.config import PlphpConfig
from vllm_plphp.log import logger
from vllm_plphp.request_config import config_for_request


@dataclass
class PruneTarget:
    row: int  # row in the input batch (and in every per-layer block table)
    req_id: str
    query_index: int  # index of the last prompt token in this step's flat batch
    prompt_len: int  # P
    total_len: int  # T: tokens in the cache once this step is done (T >= P)
    images: list[torch.Tensor]  # per image, its vision positions (is_embed only)
    config: PlphpConfig
    # what the request's policy carries from one layer to a later one this step
    memo: dict = field(default_factory=dict)

    @property
    def num_vision(self) -> int:
        return sum(int(p.numel()) for p in self.images)


def vision_positions(mm_features) -> list[torch.Tensor]:
    """Per image item, the prompt positions that hold vision embeddings."""
    images = []
    for feature in mm_features or ():
        if feature.modality != "image":
            continue
        pos = feature.mm_position
        positions = torch.arange(pos.offset, pos.offset + pos.length)
        if pos.is_embed is not None:
            positions = positions[pos.is_embed.to(torch.bool).cpu()]
        if positions.numel():
            images.append(positions)
    return images


def plan_step(
    req_ids: list,
    num_computed: np.ndarray,
    num_scheduled: np.ndarray,
    requests: dict,
    base: PlphpConfig,
    on_skip=None,
) -> list[PruneTarget]:
    """Rows whose scheduled tokens reach their last prompt token.

    num_computed / num_scheduled: (num_reqs,) ints in batch-row order, as the
    model runner holds them when it prepares the step's inputs.
    """
    targets = []
    start = 0
    for row, req_id in enumerate(req_ids):
        n = int(num_scheduled[row])
        first = int(num_computed[row])
        state = requests[req_id]
        last_prompt = state.num_prompt_tokens - 1
        if n and first <= last_prompt < first + n and state.mm_features:
            try:
                config = config_for_request(base, state.sampling_params)
            except ValueError as e:  # the front end validates; never crash here
                logger.warning("request %s: PLPHP skipped: %s", req_id, e)
                config = None
            images = vision_positions(state.mm_features)
            if config is None and images and on_skip is not None:
                on_skip()
            if config is not None and images:
                targets.append(
                    PruneTarget(
                        row=row,
                        req_id=req_id,
                        query_index=start + last_prompt - first,
                        prompt_len=last_prompt + 1,
                        total_len=first + n,
                        images=images,
                        config=config,
                    )
                )
        start += n
    return targets
