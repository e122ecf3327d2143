"""PLPHP's own defaults for vLLM settings the user did not set.

KV block size on CPU: vLLM's CPU platform defaults to 128-token blocks. Each
pruned layer keeps cdiv(kept + 1, block) blocks, so at 128 the partly filled
last block of every pruned layer eats much of the saving (28-layer LLaVA, 576
image tokens, r=0.4 balanced: KV per request 0.58 of stock instead of the
ideal 0.48). At 32 tokens (the CPU attention kernel's smallest block) it
is 0.48 and more requests run at once; figures in benchmarks/RESULTS.md
("Capacity at vLLM's default block size"). An explicit --block-size is kept.
"""

from __future__ import annotations

from vllm_plphp.log import logger

CPU_BLOCK_SIZE = 32


def choose_block_size(args, platform=None) -> None:
    """Set `args.block_size` (EngineArgs) to PLPHP's CPU default when unset."""
    if platform is None:
        from vllm.platforms import current_platform as platform
    if args.block_size is not None or not platform.is_cpu():
        return
    args.block_size = CPU_BLOCK_SIZE
    logger.info("PLPHP: KV block size %d on CPU (vLLM's CPU default is 128; pruned layers free "
                "more with smaller blocks; --block-size overrides)", CPU_BLOCK_SIZE)
