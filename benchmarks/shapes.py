"""Prompt shapes of the benchmarks: one image up to thousands of vision tokens.

All on the `bench` text model (28 layers, hidden 256, head 64, 4 query / 2 KV
heads, float32); the vision towers are tiny and random.

  1img   llava-bench, 1 image        (576 vision tokens,  ~589-token prompt)
  4img   llava-bench, 4 images       (2304 vision tokens, ~2330)
  8img   llava-bench, 8 images       (4608 vision tokens, ~4640)
  video  qwen2_vl-bench, one 64-frame 224x224 video (2048 vision tokens, ~2080)

`inputs(shape, seed)` is a prompt dict for `LLM.generate`; `messages(shape,
seed)` the same request as OpenAI chat messages (images only: the video
shape has no HTTP form here). The video shape's engine profiles a dummy
video of the shape's own size at start-up (`Shape.limit_mm`).
"""

from __future__ import annotations

from dataclasses import dataclass

VIDEO_SIZE = (224, 224)  # plphp_dev.fixtures.videos.VIDEO_SIZE (not imported: it pulls in the fixtures)


@dataclass(frozen=True)
class Shape:
    family: str  # fixture family (bench variant)
    images: int = 0
    frames: int = 0  # one video of this many frames (0: none)

    @property
    def limit_mm(self) -> dict:
        """vLLM's `limit_mm_per_prompt`. The video entry also sizes the dummy
        video vLLM profiles at start-up to this shape's real video: left to
        the model's maximum, that profiling had not finished after 4 minutes
        on the 2-core machine."""
        video = {"count": 1, "num_frames": self.frames, "width": VIDEO_SIZE[1], "height": VIDEO_SIZE[0]}
        return {"image": max(self.images, 1), "video": video if self.frames else 0}

    @property
    def max_model_len(self) -> int:
        return 8192 if self.images > 4 else 4096


SHAPES = {
    "1img": Shape("llava", images=1),
    "4img": Shape("llava", images=4),
    "8img": Shape("llava", images=8),
    "video": Shape("qwen2_vl", frames=64),
}


def model(shape: str) -> str:
    from plphp_dev.fixtures import build_fixture

    return build_fixture(SHAPES[shape].family, "bench")


def inputs(shape: str, seed: int) -> dict:
    s = SHAPES[shape]
    if s.frames:
        from plphp_dev.fixtures.videos import av_inputs

        return av_inputs(s.family, ("video",), seed, frames=s.frames)
    from plphp_dev.fixtures.prompts import prompt_inputs

    return prompt_inputs(s.family, s.images, seed)


def messages(shape: str, seed: int) -> list[dict]:
    s = SHAPES[shape]
    if s.frames:
        raise ValueError("the video shape is offline-engine only")
    from plphp_dev.fixtures.prompts import chat_messages

    return chat_messages(s.family, s.images, seed)


def engine_args(shape: str) -> dict:
    """The `LLM` / `vllm serve` arguments every engine of a shape shares."""
    s = SHAPES[shape]
    mm = {k: v for k, v in s.limit_mm.items() if v}
    return dict(model=model(shape), dtype="float32", max_model_len=s.max_model_len,
                limit_mm_per_prompt=mm, max_num_batched_tokens=max(8192, s.max_model_len))
