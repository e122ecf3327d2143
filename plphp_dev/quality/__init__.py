"""Quality benchmark tasks and the small LLaVA-style model trained on them.

``plphp_dev.quality.tasks`` (re-exported here) generates seeded synthetic
vision tasks with exact answers and scores predictions; it needs only PIL.
``plphp_dev.quality.model`` builds the model config, tokenizer and
processor (needs torch and transformers, never vLLM).  Training and
evaluation scripts live in ``benchmarks/quality/``. ``MODEL_DIR`` is the
trained checkpoint (11 MB, shipped as package data): the quick start serves it.
"""

from pathlib import Path

from .tasks import (
    IMAGE_TOKEN,
    MAX_IMAGES,
    MULTI_IMAGE_TASKS,
    TASKS,
    Example,
    chance_score,
    chat_messages,
    make_example,
    make_examples,
    prompt_text,
    score,
    vllm_inputs,
)

MODEL_DIR = Path(__file__).resolve().parent / "model"
# recipe v2 (issue 30, ``benchmarks/quality/train.py --recipe v2``): the model that reads its pictures
MODEL_V2_DIR = Path(__file__).resolve().parent / "model_v2"

__all__ = [
    "IMAGE_TOKEN",
    "MODEL_DIR",
    "MODEL_V2_DIR",
    "MAX_IMAGES",
    "MULTI_IMAGE_TASKS",
    "TASKS",
    "Example",
    "chance_score",
    "chat_messages",
    "make_example",
    "make_examples",
    "prompt_text",
    "score",
    "vllm_inputs",
]
