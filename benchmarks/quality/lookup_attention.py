"""Recipe v2, stages 8-12: ask attention to find the object a question names (issue 30).

Why: after stages 3-7 the model answers "Which image has a red circle?" from
the colour alone (``differ_breakdown.py``) and "What color is the circle?"
at 0.5: attention keyed on a shape was not learned from the answer loss in
2000+ steps, though every image token names its shape (patch probe 1.0).
This loss gives that lookup a direct gradient: at every position that
predicts an answer token of a lookup question, some head of ``LAYERS`` should
put its attention on the patches of the named object.

Questions and their targets (patches whose ``batches.patch_targets`` tags
match every attribute the question names, in every image of the
conversation; a named pair is in one image only, by construction):

    "Which image has a red circle?"   colour and shape
    "Which image has a circle?"       shape
    "Which image has a red object?"   colour
    "What color is the circle?"       shape
    "What shape is the red object?"   colour
    "Where is the red circle?"        colour and shape

Loss: mean over those positions of ``-log(max over layers and heads of the
attention mass on the targets)``: the best head is asked to find the object,
the others stay free.  The attention is recomputed from each layer's input
(captured by a forward pre-hook) with the layer's own q/k projections and
rotary embedding, only for the supervised query rows; the model itself is an
unchanged LLaVA (vLLM loads it as before).

How the stages use it (``train.py``; ``recipe_v2.py`` items 12-16 say why):
stage 8 supervises every answer position, best head of ``LAYERS``; stage 9
only the position that predicts the answer's key word (``key_token``);
stages 10-12 one fixed head, ``loss(..., head=(5, 3))``; stage 12 also reads
each entry's asked colour and shape (``targets(..., names=[])``) for
training-only probes on that position's input to layer 5.

Shapes: ``hidden``: (batch, seq, hidden); queries (rows, heads, head_dim);
keys (seq, kv_heads, head_dim); ``mass``: (rows, layers * heads).
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch
from transformers.models.llama.modeling_llama import rotate_half  # the rotary embedding the model uses

from batches import encode  # benchmarks/quality is sys.path[0]
from plphp_dev.quality.scenes import COLOR_NAMES, POSITIONS, SHAPES
from plphp_dev.quality.tasks import ORDINALS

LAYERS = (2, 3, 4, 5)
WEIGHT = 0.2
# answer words that carry what the lookup found (an ordinal, a colour, a shape, a place)
KEY_WORDS = frozenset((*COLOR_NAMES, *SHAPES, *ORDINALS, *(w for p in POSITIONS for w in p.split())))
_ASKS = (re.compile(r"^Which image has an? (.+)\?$"), re.compile(r"^What color is the (.+)\?$"),
         re.compile(r"^What shape is the (.+)\?$"), re.compile(r"^Where is the (.+)\?$"))


def named(question: str) -> tuple[str | None, str | None] | None:
    """``(colour, shape)`` a lookup question names (either may be None), else None."""
    for pat in _ASKS:
        m = pat.match(question)
        if m:
            words = m.group(1).split()
            colour = next((w for w in words if w in COLOR_NAMES), None)
            shape = next((w for w in words if w in SHAPES), None)
            return (colour, shape) if colour or shape else None
    return None


def _answer_runs(weights: list[float]) -> list[list[int]]:
    """Positions of each turn's answer predictions (``batches.conversation_ids``
    gives them weight > 0, one contiguous run per turn, in turn order)."""
    runs, cur = [], []
    for i, w in enumerate(weights):
        if w > 0:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def key_token(question: str, answer_tokens: list[str]) -> int:
    """Index of the first answer token that says what the lookup found: a
    ``KEY_WORDS`` word the question does not hold ("The circle is red." after
    "What color is the circle?" -> " red"); -1 if none."""
    asked = set(question.rstrip("?").split())
    for j, t in enumerate(answer_tokens):
        w = t.strip()
        if w in KEY_WORDS and w not in asked:
            return j
    return -1


def targets(convs, batch: dict, tokenizer, spec, key_only: bool = False, names: list | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows, positions, target mask)``: one entry per supervised query
    position, ``mask``: (entries, seq) bool over the key positions to find.
    Supervised positions: every one that predicts an answer token, or with
    ``key_only`` only the one that predicts ``key_token`` (later positions can
    find the object from the answer already written).  ``names``: when given, gets
    each entry's ``(colour index, shape index)`` in ``COLOR_NAMES`` / ``SHAPES``
    (-100 for an attribute the question does not name)."""
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    colour_ids = {c: encode(tokenizer, " " + c)[0] for c in COLOR_NAMES}
    shape_ids = {s: encode(tokenizer, " " + s)[0] for s in SHAPES}
    tags = batch["patch_targets"]  # (images, patches, 4)
    seq = batch["input_ids"].shape[1]
    rows, poss, masks = [], [], []
    first_image = 0
    for b, conv in enumerate(convs):
        n_img = len(conv.images)
        img_pos = (batch["input_ids"][b] == image_id).nonzero()[:, 0]  # (n_img * patches,)
        t = tags[first_image:first_image + n_img].reshape(-1, tags.shape[-1])
        first_image += n_img
        runs = _answer_runs(batch["weights"][b].tolist())
        assert len(runs) == len(conv.turns), (len(runs), conv.turns)
        for (question, answer), run in zip(conv.turns, runs):
            ask = named(question)
            if ask is None:
                continue
            hit = torch.ones(len(t), dtype=torch.bool)
            if ask[0]:
                hit &= t[:, 0] == colour_ids[ask[0]]
            if ask[1]:
                hit &= t[:, 1] == shape_ids[ask[1]]
            if not hit.any():
                continue
            mask = torch.zeros(seq, dtype=torch.bool)
            mask[img_pos[hit]] = True
            if key_only:  # run[j] predicts answer token j
                j = key_token(question, [tokenizer.decode([i]) for i in encode(tokenizer, " " + answer)])
                run = [run[j]] if j >= 0 else []
            for p in run:
                if names is not None:
                    names.append((COLOR_NAMES.index(ask[0]) if ask[0] else -100,
                                  SHAPES.index(ask[1]) if ask[1] else -100))
                rows.append(b)
                poss.append(p)
                masks.append(mask)
    if not rows:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0, seq, dtype=torch.bool)
    return torch.tensor(rows), torch.tensor(poss), torch.stack(masks)


@contextmanager
def captured(model, layers=LAYERS):
    """Within the block, ``store[layer] = (hidden, cos, sin)``: each listed layer's
    attention input from the last forward."""
    store: dict[int, tuple] = {}
    handles = []
    decoder = model.model.language_model.layers
    for layer in layers:
        def hook(mod, args, kwargs, layer=layer):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            cos, sin = kwargs["position_embeddings"]
            store[layer] = (hidden, cos, sin)
        handles.append(decoder[layer].self_attn.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def loss(model, store: dict, rows: torch.Tensor, poss: torch.Tensor, mask: torch.Tensor,
         attention_mask: torch.Tensor, head: tuple[int, int] | None = None) -> torch.Tensor:
    """``-log`` of the best head's attention mass on the targets, mean over entries;
    ``head=(layer, index)``: that head's, always (it must be in ``store``)."""
    if len(rows) == 0:
        return torch.zeros((), device=attention_mask.device)
    decoder = model.model.language_model.layers
    seq = attention_mask.shape[1]
    dev = attention_mask.device
    rows, poss, mask = rows.to(dev), poss.to(dev), mask.to(dev)
    allowed = (torch.arange(seq, device=dev)[None] <= poss[:, None]) & attention_mask[rows].bool()
    masses = []
    for layer, (hidden, cos, sin) in store.items():
        if head is not None and layer != head[0]:
            continue
        attn = decoder[layer].self_attn
        d = attn.head_dim
        cos, sin = cos.expand(hidden.shape[0], -1, -1), sin.expand(hidden.shape[0], -1, -1)  # (1 or B, S, d)
        q = attn.q_proj(hidden[rows, poss]).view(len(rows), -1, d)  # (E, H, d)
        q = q * cos[rows, poss][:, None] + rotate_half(q) * sin[rows, poss][:, None]
        k = attn.k_proj(hidden).view(hidden.shape[0], seq, -1, d)  # (B, S, KV, d)
        k = k * cos[:, :, None] + rotate_half(k) * sin[:, :, None]
        group = q.shape[1] // k.shape[2]
        kk = k[rows].repeat_interleave(group, dim=2)  # (E, S, H, d)
        scores = torch.einsum("ehd,eshd->ehs", q.float(), kk.float()) * attn.scaling
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        p = scores.softmax(-1)
        m = (p * mask[:, None]).sum(-1)  # (E, H)
        masses.append(m if head is None else m[:, head[1]:head[1] + 1])
    mass = torch.cat(masses, dim=1)  # (E, layers * heads)
    return -torch.log(mass.max(dim=1).values + 1e-6).mean()

