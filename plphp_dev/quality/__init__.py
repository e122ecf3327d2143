"""Quality benchmark tasks and the small LLaVA-style model trained on them.

``plphp_dev.quality.tasks`` (re-exported here) generates seeded synthetic
vision tasks with exact answers and scores predictions; it needs only PIL.
``plphp_dev.quality.model`` builds the model config, tokenizer and
processor (needs torch and transformers, never vLLM).  Training and
evaluation scripts live in ``benchmarks/quality/``.
"""

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

__all__ = [
    "IMAGE_TOKEN",
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
