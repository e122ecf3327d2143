"""Recipe v2 of the quality model (issue 30): helpers used by ``train.py --recipe v2``.

Why the v1 model (``plphp_dev/quality/model``) does not read shape or position
------------------------------------------------------------------------------
Measured on its checkpoint and with short vision-only runs (the vision tower,
projector and input embeddings trained on the auxiliary patch loss alone,
64 held-out probe scenes; see ``train.patch_probe``):

* Position.  CLIP's learned position embeddings start at std 0.02 (norm
  about 0.23 per patch) while a patch embedding of a rendered scene has norm
  about 4.9: after ``pre_layrnorm`` the position is 5% of the signal and the
  tower barely knows where a patch is.  In the committed model they stayed
  that way (norm 0.29 after training).  Its probe: row 0.41, column 0.35
  (chance 1/3), and asking for row/column in the auxiliary loss did not
  help (v1 docstring; here: still 0.33/0.35 after 100 vision-only steps).
  The text model cannot recover 2D position either: it sees 144 image tokens
  through 1D RoPE.  Hence position 0.14 (chance 0.11) even though the colour
  probe is 1.0 and "Where is the red circle?" only needs the red patches.
* Shape.  Probe 0.41 (chance 0.2).  An 8 px patch of a 18-26 px object shows
  a piece of a silhouette whose pixels are background or object colour; the
  random linear patch embedding mixes colour and silhouette, and telling
  silhouettes apart colour-invariantly takes many steps (vision-only: shape
  at chance after 200 steps in every variant with the default patch init).
  Colour ("What color is the circle?") needs the shape to find the object, so
  it fails too (0.31 while the colour probe is 1.0); differ and caption need
  colour and shape together.
* The auxiliary loss.  v1 averages full-vocabulary CEs over all patches;
  about 85% of the patches are background (target ``<unk>``), so the object
  tags get a small share of the gradient, and one softmax must put its mass
  on four words at once (floor log 4 per tag).
* Steps.  550 steps of 32 conversations; the answer loss was still falling.

What v2 changes (the architecture and checkpoint format are those of v1:
standard llava-hf CLIP + MLP projector + Llama, loadable by vLLM unchanged)
---------------------------------------------------------------------------
1. Init only: the CLIP position embeddings start as a 2D sin-cos table
   (row and column, 32 frequencies each, ``sincos_2d``) scaled to the mean
   patch-embedding norm, so every patch knows its row and column from step
   0.  They stay ordinary learned parameters.
2. Init only: the first 64 patch-embedding channels pass each pixel's
   (negated) luminance through (``LUMINANCE_ALPHA``): every object is darker
   than every background, so these channels carry the patch's silhouette
   whatever its colour.  The other 64 channels keep the default init.
3. ``tag_aux_loss``: background patches -> ``<unk>`` over the vocabulary
   (weight 0.25); object patches -> one CE per tag over that tag's words
   only (colour among 6, shape among 5, row among top/center/bottom, column
   among left/center/right).  Position tags are on.
4. Stage 1 (vision warm-up, ``vision_steps``): only the vision tower,
   projector and input embeddings, on ``tag_aux_loss`` over fresh random
   scenes ("vision/<seed>/<step>/<j>"); an order of magnitude cheaper per
   image than a full step, so the tower learns colour, shape and position
   before the text model has to use them.
5. Stage 2: the v1 conversations and answer loss (+ the v2 aux loss), more
   steps, more ``single`` conversations (colour/shape/position/count),
   fewer ``compare`` (already 0.94 in v1).
6. A validation split (``val_examples``: ``make_examples("train", n,
   seed=VAL_SEED)``, generators "train/<VAL_SEED>/<task>/<i>", shared with
   neither the training conversations "conv/train/<seed>/...", the vision
   scenes "vision/<seed>/...", nor the test split "test/...").  Every
   checkpoint is scored on it; the best by ``val_metric`` (mean over tasks
   of score - chance) is kept.  The test split is only evaluated at the end,
   on the selected checkpoint, and never selects anything.

7. Stage 3 (added after stage-2 step 1300; ``train.V2_STAGE3``): ``differ``
   ("Which image has a red circle?") stayed at chance (0.43-0.55 on
   validation from step 100 to 1300) while ``compare`` reached 1.0.  On 200
   fresh differ prompts (step-1300 checkpoint) it was 0.59 even when the
   other image had neither the colour nor the shape: the model finds the
   object but not which image it is in.  Stage 3 continues from the stage-2
   end state on a new conversation stream with more ``differ`` and the
   training-only ``ordinal`` kind (``conversations._ordinal``: "Describe the
   second image.", "How many objects are in the first image?", "Which image
   has a red object?"), which name images by place or ask for the place.
   Checkpoints are selected on validation by the number of tasks at least
   0.2 above chance, then ``val_metric``.
8. Stage 4 (``train.V2_STAGE4``): after stage 3 the model found the image
   (on 200 fresh 2-image differ prompts 0.72, against 0.50; 0.95 when the
   other image had neither the colour nor the shape), but failed when the
   other image held both near misses (0.38) and on 3 images (0.41).  Stage 4
   adds the training-only ``binding`` kind (``conversations._binding``):
   exactly those prompts.
9. Stage 5 (``train.V2_STAGE5``; stage 4 stopped at its step 300, where no
   checkpoint had beaten stage 3): on 300 validation differ prompts
   (``differ_breakdown.py``) the stage-3 and stage-4 models scored
   0.94-1.00 when the other images held no near miss or only the shape in
   another colour, and 0.40-0.49 when another image held the pair's colour
   on another shape (0.43-0.47 with both near misses): they found the image
   by colour alone.  Stage 5 adds the training-only
   ``lookup`` kind (colour decoys only, and "Which image has a circle?") and
   selects on 300 differ prompts.  After 300 steps differ was 0.657 (stage
   3: 0.643 on the same prompts); at step 200 the shape-only question was
   0.67 (stage 3: 0.61, 128 prompts of held-out lookup conversations):
   learned, slowly; not selected (colour fell to 0.25 on its 40 prompts).
10. Stage 6 (``train.V2_STAGE6``): the lookup and binding kinds at a larger
   share, lr 5e-4 (1e-3 broke shape and count within 100 steps), validation
   with 300 differ and 200 colour prompts.  Differ on validation: 0.607 / 0.627
   / 0.607 at steps 100 / 200 / 300, not selected; stages 4-6 kept no state.
11. Stage 7 (``train.V2_STAGE7``, branching from stage 3's end, the selected
   weights; ``--branch shape``, the default path): why shape lookup is slow.
   In the stage-3 model's image tokens (64 probe scenes, 1375 object patches)
   colour explains 58% of the object patches' variance and shape 16% (row 15%,
   column 6%), and the tag logit margins (right word over the best wrong one,
   median) are 57 for colour and 15 for shape; the same shares hold in the
   text model's hidden states at layers 1-6 (61% / 15%).  Both tags are read
   perfectly (probe 1.0), so the tag loss had stopped pushing; but a query
   that must find "the circle" meets keys dominated by colour.  Stage 7
   divides the shape tag's logits by ``shape_temp`` in ``tag_aux_loss``
   (a margin that many times wider is needed for the same loss) and trains
   on the test kinds plus the lookup and binding kinds at a moderate share.
   Stopped at step 200 (``shape_stop``): the shape margin went 15 -> 36 but
   differ 0.643 -> 0.603 / 0.627 / 0.600 / 0.623 and colour 0.505 -> 0.49 /
   0.48 / 0.41 / 0.405 at steps 50-200 (300 differ, 200 colour prompts).
12. Stage 8 (``train.V2_STAGE8``, from stage 7's step 200): the answer loss did
   not teach shape-keyed attention in 2000+ steps, so ``lookup_attention``
   gives it a direct gradient: at the positions that predict a lookup
   question's answer, the best head of layers 2-5 should attend to the named
   object's patches (weight ``attend_weight``).  In the stage-3 model a
   layer-5 head already put 0.81 of its attention on the named object of one
   2-image differ prompt (the mechanism exists; the loss sharpens its key).
   Stopped at step 100 (``attend_stop``): the loss fell to 0.08, but on 16
   two-image validation differ prompts with a colour decoy, at the position
   that predicts "first"/"second", the heads still split their attention
   between the object and the decoy (layer 5 head 3: 0.45 / 0.50; layer 7
   head 2: 0.58 / 0.36), and differ was 0.600 / 0.613 at steps 50 / 100.
   The loss was met at the later answer positions, where the answer already
   written ("The first ...") finds the object by colour and image.
13. Stage 9 (``train.V2_STAGE9``, from stage 8's step 100): the same loss at
   weight 1.0, only at the position that predicts the answer's key word
   (``lookup_attention.key_token``: the ordinal, colour, shape or place the
   lookup found), and more lookup and binding conversations.  Stopped at
   step 100 (``sharpen_stop``): on the 16 decoy prompts the best head now
   found the object in every one (mass 0.96-1.0, decoy 0-0.04; in the
   stage-3 model 0.04-0.95), yet differ stayed 0.637 / 0.630 and colour
   0.43 / 0.45 at steps 50 / 100.  Finding the object was not the missing
   step; which head found it changed from prompt to prompt, so no later
   layer could rely on reading it.
14. Stage 10 (``train.V2_STAGE10``, from stage 9's step 100): the same loss on
   one fixed head, layer 5 head 3 (in the stage-3 model the head with the
   most attention on the named object of those prompts: 0.55, decoy 0.39),
   so the object's features are always in that head's output.  Stopped at
   step 150 (``retrieve_stop``): differ 0.600 / 0.667 / 0.643 and colour
   0.42 / 0.455 / 0.425 at steps 50 / 100 / 150.  Step 100, the first
   checkpoint with differ 20 points above chance on validation, scored 0.614
   [0.586, 0.641] on the test split (1200 prompts, ``differ_breakdown.py
   --split test``; stage 3: 0.592): 0.71 on 2 images but 0.43 on 3, 0.41
   when the other images held both near misses.
15. Stage 11 (``train.V2_STAGE11``, from stage 10's step 150): stage 10's loss
   plus ``image_index``'s: in the stage-3 model a linear probe read the image
   index of object patches from layer 5's input at only 0.81 on 3-image
   prompts (0.35 / 0.68 / 0.78 from the inputs of layers 0 / 2 / 4), so a
   head that finds the object by content can say which image holds it no
   better than that.  A training-only probe's cross-entropy asks layer 5's
   input to carry the index.  Stopped at step 150 (``index_stop``): the probe
   read the index (loss 0.03), but differ was 0.627 / 0.640 / 0.633 at steps
   50 / 100 / 150.  On 24 two-image validation prompts whose other image held
   both near misses, head (5, 3) put 0.44 of its attention on the object,
   0.55 on the colour decoy and 0.00 on the shape decoy: it keys on colour
   alone, supervision or not.  Why: a linear probe on the answer position's
   hidden state (the query's source) reads the asked colour from layer 2's
   input on (1.00) but the asked shape only from layer 6's (0.22-0.27 at the
   inputs of layers 2-5, chance 0.2; 0.72 at layer 6).  Up to layer 5 the
   query does not know the shape it looks for.
16. Stage 12 (``train.V2_STAGE12``, from stage 11's step 150): stage 11's
   losses plus two training-only probes that must read the asked colour and
   shape from the key position's input to layer 5 (``lookup_attention.targets``
   ``names``), so the query can key on both.  The shape probe's loss went
   1.68 (chance 1.61) / 1.18 / 0.05 / 0.01 and differ on validation 0.623 /
   0.653 / 0.700 / 0.933 at steps 50 / 100 / 150 / 200.  The recipe ends at
   step 200 (``query_stop``), the selected checkpoint (validation, n = 40
   per task, differ 300, colour 200: shape 1.0, count 0.90, position 0.975,
   spot 0.475, compare 0.90, caption 0.89, differ 0.933, colour 0.54).  On
   the test split, reported only: differ 0.928 [0.912, 0.942] of 1200 (2
   images 0.98, 3 images 0.82; both near misses 0.87, colour decoy 0.98).

Measured in short vision-only runs (1 thread, shared CPU, 100-200 steps of
32 scenes, probe accuracy colour/shape/row/column):
default init + v1 loss 0.98/0.23/0.33/0.35; default init + balanced loss
1.0/0.23/0.33/0.35; sin-cos + balanced 1.0/0.25/0.92/0.94; sin-cos + tag loss
1.0/0.27/1.0/1.0; sin-cos + tag loss + luminance (alpha 1, lr 2e-3, 144 steps)
0.94/0.49/1.0/1.0.  The full stage 1 (seed 0, 1 thread): after 500 of its
1000 steps (262 s) the probe reads colour 1.0, shape 0.99, row 1.0, column
1.0, background 1.0 (v1 model: 1.0/0.41/0.41/0.35).
"""

from __future__ import annotations

import math
import random

import torch

from batches import COL_WORDS, ROW_WORDS, encode  # benchmarks/quality is sys.path[0]
from plphp_dev.quality import conversations
from plphp_dev.quality.conversations import KINDS, TRAIN_KINDS, make_conversation
from plphp_dev.quality.model import ModelSpec, pixel_values
from plphp_dev.quality.scenes import COLOR_NAMES, SHAPES, random_scene, render
from plphp_dev.quality.tasks import TASKS, chance_score, make_examples, score

VAL_SEED = 31337  # validation = make_examples("train", n, seed=VAL_SEED)
SINCOS_TEMPERATURE = 100.0  # lowest frequency 100**(-31/32) rad per patch
LUMINANCE_ALPHA = 1.0
BACKGROUND_WEIGHT = 0.25


def sincos_2d(grid: int, dim: int, temperature: float = SINCOS_TEMPERATURE) -> torch.Tensor:
    """(grid*grid, dim) row-major table [sin x, cos x, sin y, cos y], unit rows."""
    q = dim // 4
    assert 4 * q == dim, dim
    y, x = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                          torch.arange(grid, dtype=torch.float64), indexing="ij")
    om = 1.0 / temperature ** (torch.arange(q, dtype=torch.float64) / q)
    x = x.flatten()[:, None] * om
    y = y.flatten()[:, None] * om
    t = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], 1)
    return (t / t.norm(dim=1, keepdim=True)).float()


def vision_embeddings(model):
    tower = model.model.vision_tower
    return getattr(tower, "vision_model", tower).embeddings


@torch.no_grad()
def init_vision(model, spec: ModelSpec, seed: int, pos_init: str = "sincos",
                patch_init: str = "luminance") -> dict:
    """Recipe v2 init of the CLIP embeddings (in place); returns what it measured."""
    emb = vision_embeddings(model)
    scenes = [random_scene(random.Random(f"init/{seed}/{i}")) for i in range(16)]
    pix = pixel_values([render(s, spec.image_size) for s in scenes], spec)
    patch_norm = emb.patch_embedding(pix).flatten(2).norm(dim=1).mean().item()
    info = {"default_patch_norm": round(patch_norm, 3),
            "default_position_norm": round(emb.position_embedding.weight.norm(dim=1).mean().item(), 3)}
    if pos_init == "sincos":
        g = spec.image_size // spec.patch_size
        emb.position_embedding.weight[1:] = sincos_2d(g, spec.vision_hidden_size) * patch_norm
        emb.position_embedding.weight[0] = 0.0  # CLS, dropped by the "default" strategy
    if patch_init == "luminance":
        w = emb.patch_embedding.weight  # (C, 3, p, p)
        p = spec.patch_size
        assert w.shape[0] >= p * p, w.shape
        for k in range(p * p):
            w[k].zero_()
            w[k, :, k // p, k % p] = -LUMINANCE_ALPHA / 3
        info["luminance_patch_norm"] = round(emb.patch_embedding(pix).flatten(2).norm(dim=1).mean().item(), 3)
    return info


def tag_ids(tokenizer) -> tuple[int, list[torch.Tensor]]:
    """``(unk id, [candidate word ids per tag])``, tags = colour, shape, row, column."""
    words = (COLOR_NAMES, SHAPES, ROW_WORDS, COL_WORDS)
    return tokenizer.unk_token_id, [torch.tensor([encode(tokenizer, " " + w)[0] for w in ws])
                                    for ws in words]


def tag_aux_loss(logits: torch.Tensor, tgt: torch.Tensor, tags,
                 temps: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """``BACKGROUND_WEIGHT`` x CE(background patches -> ``<unk>``, whole vocabulary)
    + mean over tags of CE(object patches -> the tag's word, among that tag's words,
    logits divided by ``temps[k]``: a temperature above 1 asks for a wider margin).

    ``logits``: (patches, vocab) = image tokens . input embeddings;
    ``tgt``: (patches, n_tags) target ids from ``batches.patch_targets``;
    ``temps``: one per tag (colour, shape, row, column)."""
    unk, cands = tags
    f = torch.nn.functional.cross_entropy
    obj = tgt[:, 0] != unk
    loss = BACKGROUND_WEIGHT * f(logits[~obj], tgt[~obj, 0]) if (~obj).any() else logits.sum() * 0
    if obj.any():
        lo, to = logits[obj], tgt[obj]
        n = min(len(cands), tgt.shape[1])
        for k in range(n):
            cand = cands[k].to(logits.device)
            y = (to[:, k, None] == cand[None]).float().argmax(1)
            loss = loss + f(lo[:, cand] / temps[k], y) / n
    return loss


def image_tokens(model, pix: torch.Tensor) -> torch.Tensor:
    """Projected image tokens (N, patches, hidden), as the LLaVA forward computes them."""
    cfg = model.config
    out = model.model.get_image_features(pixel_values=pix, vision_feature_layer=cfg.vision_feature_layer,
                                         vision_feature_select_strategy=cfg.vision_feature_select_strategy)
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats


def vision_scenes(seed: int, step: int, n: int):
    return [random_scene(random.Random(f"vision/{seed}/{step}/{j}")) for j in range(n)]


def vision_step(model, tokenizer, spec: ModelSpec, tags, seed: int, step: int, n: int, device: str) -> float:
    """Stage 1: one forward/backward of ``tag_aux_loss`` on ``n`` fresh scenes."""
    from batches import patch_targets

    scenes = vision_scenes(seed, step, n)
    pix = pixel_values([render(s, spec.image_size) for s in scenes], spec).to(device)
    tgt = patch_targets(scenes, tokenizer, spec).reshape(-1, 4).to(device)
    feats = image_tokens(model, pix).reshape(-1, spec.hidden_size).float()
    logits = feats @ model.get_input_embeddings().weight.float().T
    loss = tag_aux_loss(logits, tgt, tags)
    loss.backward()
    return loss.item()


def vision_parameters(model) -> list[torch.nn.Parameter]:
    """What stage 1 trains: vision tower, projector, input embeddings."""
    return (list(model.model.vision_tower.parameters())
            + list(model.model.multi_modal_projector.parameters())
            + [model.get_input_embeddings().weight])


class ConvStream:
    """``batches.batch_stream(seed, batch_size, kind_weights, "train", image_size)``,
    batch for batch, but resumable: ``skip(n)`` replays n batches without
    drawing a pixel (a conversation's image count comes from its scenes)."""

    def __init__(self, seed: int, batch_size: int, kind_weights: dict[str, float], image_size: int = 96):
        self.seed, self.batch_size, self.image_size = seed, batch_size, image_size
        self.rng = random.Random(seed)
        self.names = list(TRAIN_KINDS)
        self.weights = [kind_weights.get(k, 1.0 if k in KINDS else 0.0) for k in self.names]
        self.counters = dict.fromkeys(self.names, 0)
        self.buckets: dict[int, list[tuple[str, int]]] = {}
        self.consumed = 0

    def _n_images(self, kind: str, index: int) -> int:
        # the same generator make_conversation uses, without rendering
        rng = random.Random(f"conv/train/{self.seed or 0}/{kind}/{index}")
        return len(conversations._MAKERS[kind](rng)[0])

    def _next_keys(self) -> list[tuple[str, int]]:
        while True:
            kind = self.rng.choices(self.names, self.weights)[0]
            index = self.counters[kind]
            self.counters[kind] += 1
            n = self._n_images(kind, index)
            bucket = self.buckets.setdefault(n, [])
            bucket.append((kind, index))
            if len(bucket) == self.batch_size:
                self.buckets[n] = []
                self.consumed += 1
                return bucket

    def skip(self, n: int) -> None:
        for _ in range(n):
            self._next_keys()

    def __iter__(self):
        return self

    def __next__(self):
        return [make_conversation(k, "train", i, self.seed, self.image_size) for k, i in self._next_keys()]


def val_examples(n_per_task: int, image_size: int = 96):
    """The validation split: ``n_per_task`` examples per task, never test, never trained on."""
    return make_examples("train", n_per_task, seed=VAL_SEED, image_size=image_size)


def evaluate_examples(model, tokenizer, spec: ModelSpec, examples, device: str) -> dict:
    """Greedy scores per task on ``examples`` + margins over ``chance_score``."""
    from eval_hf import generate

    answers = generate(model, tokenizer, spec, examples, device)
    per: dict[str, list[float]] = {}
    for ex, a in zip(examples, answers):
        per.setdefault(ex.task, []).append(score(ex.task, a, ex.answer))
    scores = {t: round(sum(v) / len(v), 4) for t, v in per.items()}
    margins = {t: round(s - chance_score(t), 4) for t, s in scores.items()}
    return {"n_per_task": len(next(iter(per.values()))), "n": {t: len(v) for t, v in per.items()},
            "scores": scores, "margins": margins,
            "val_metric": round(val_metric(margins), 4), "min_margin": round(min(margins.values()), 4),
            "tasks_20_above": sum(m >= 0.2 for m in margins.values())}


def val_metric(margins: dict[str, float]) -> float:
    """Selection metric: mean over tasks of (score - best image-blind score)."""
    return sum(margins[t] for t in TASKS if t in margins) / len(margins)


def lr_cosine(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up, cosine to 0.1 x lr (as ``train.lr_at``)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))
