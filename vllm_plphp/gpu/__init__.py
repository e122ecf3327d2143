"""GPU implementations of PLPHP's per-prefill operations (issue 7).

Triton kernels (`vllm_plphp.gpu.triton_ops`, imported lazily) for
  (a) last-token scoring against a request's paged keys: fused gather + q.k +
      softmax over the prompt, per-head probs, gamma_l partial sums and the
      per-KV-head (mean/max) reduction; top-K per image is one batched torch
      `topk` (`vllm_plphp.gpu.select`);
  (b) in-place per-head compaction of paged K/V, overlap-safe;
(the benchmarks' paged decode-attention kernel: benchmarks/gpu/decode_attention.py).

The dispatchers in `vllm_plphp.gpu.ops` use Triton for CUDA tensors and fall
back to the torch oracle (`vllm_plphp.core.scoring`, `vllm_plphp.core.compaction`)
otherwise. Nothing here imports vLLM.
"""

from vllm_plphp.gpu.ops import (
    LayerResult,
    LayerSelection,
    compact_,
    compact_batched_,
    last_token_scores_batched,
    layer_rates,
    prune_layer_batched_,
    score_and_select,
    score_and_select_batched,
    triton_available,
    use_triton,
)
from vllm_plphp.gpu.select import (
    BatchPlan,
    kept_counts_device,
    make_plan,
    select_kept_batched,
    select_kept_device,
)

__all__ = [
    "BatchPlan",
    "LayerResult",
    "LayerSelection",
    "compact_",
    "compact_batched_",
    "kept_counts_device",
    "last_token_scores_batched",
    "layer_rates",
    "make_plan",
    "prune_layer_batched_",
    "score_and_select",
    "score_and_select_batched",
    "select_kept_batched",
    "select_kept_device",
    "triton_available",
    "use_triton",
]
