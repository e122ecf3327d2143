"""Chat-shaped prompts for the quality tasks: a system prompt, earlier turns.

The plain task prompts (``tasks.prompt_text``) are a bare question after the
images, so the trained model's last prompt token puts most of its attention
on the images in every layer (gamma_l > alpha = 0.25 everywhere: PLPHP's
layer rule never acts).  Real chats carry more text: a system prompt
(LLaVA-1.5's, plus a line of answering instructions) and the earlier turns of
the conversation.  ``chat_examples`` builds such prompts from the held-out
conversations of ``conversations`` (split "test"; the model was trained on
split "train"): every turn but the last is history with its true answer, the
last turn is the question scored.  The text is what the model's chat
template renders for ``[system, user(images, q1), assistant(a1), user(q2), ...]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from .conversations import KINDS, make_conversation
from .tasks import IMAGE_TOKEN

SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions. "
    "Look at every image carefully before you answer. Answer with one short sentence, "
    "name colours and shapes exactly, and use the words top, center, bottom, left and "
    "right for positions."
)

# task of a question, by its wording (tasks.py's templates)
_STARTS = (("What color", "color"), ("What shape", "shape"), ("How many", "count"),
           ("Where is", "position"), ("Which image has a", "differ"),
           ("Where do", "spot"), ("Which image has more", "compare"), ("Describe", "caption"))


@dataclass
class ChatExample:
    task: str  # the scored (last) question's task
    images: list[Image.Image]
    prompt: str  # raw prompt text (BOS added by the tokenizer)
    answer: str
    turns: int


def task_of(question: str) -> str:
    return next(t for start, t in _STARTS if question.startswith(start))


def chat_prompt(images: int, turns: list[tuple[str, str]], system: str | None = SYSTEM_PROMPT) -> str:
    """The chat template's text: system, then USER/ASSISTANT turns; the last
    turn's answer is left for the model."""
    parts = [] if system is None else [system]
    for k, (q, a) in enumerate(turns):
        parts.append("USER: " + ((IMAGE_TOKEN + "\n") * images if k == 0 else "") + q)
        if k < len(turns) - 1:
            parts.append("ASSISTANT: " + a + "</s>")
    return " ".join(parts) + " ASSISTANT:"


def chat_examples(n_per_kind: int, seed: int | None = None, system: str | None = SYSTEM_PROMPT,
                  kinds: tuple[str, ...] = KINDS) -> list[ChatExample]:
    """``n_per_kind`` held-out conversations of each kind, kind-major."""
    out = []
    for kind in kinds:
        for i in range(n_per_kind):
            conv = make_conversation(kind, "test", i, seed)
            q, a = conv.turns[-1]
            out.append(ChatExample(task_of(q), conv.images, chat_prompt(len(conv.images), conv.turns, system),
                                   a, len(conv.turns)))
    return out
