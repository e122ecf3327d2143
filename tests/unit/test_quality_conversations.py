"""Training conversations of the quality model: the training-only ``ordinal``
kind answers from its scenes, and a stream without it in its weights never
draws it (recipe v2's stage-2 stream is unchanged by its existence)."""

import re
import sys
from pathlib import Path

from plphp_dev.quality import conversations as conv
from plphp_dev.quality.scenes import NUMBER_WORDS
from plphp_dev.quality.tasks import ORDINALS

# benchmarks/quality (recipe_v2, batches) is a script folder, not a package
QUALITY = str(Path(__file__).resolve().parents[2] / "benchmarks" / "quality")
if QUALITY not in sys.path:
    sys.path.insert(0, QUALITY)


def test_ordinal_answers_follow_the_scenes():
    seen = set()
    for i in range(60):
        c = conv.make_conversation("ordinal", "train", i, seed=1000)
        assert 2 <= len(c.images) <= 3 and len(c.scenes) == len(c.images)
        for q, a in c.turns:
            if m := re.fullmatch(r"Describe the (\w+) image\.", q):
                assert a == c.scenes[ORDINALS.index(m[1])].caption()
                seen.add("describe")
            elif m := re.fullmatch(r"How many objects are in the (\w+) image\?", q):
                n = len(c.scenes[ORDINALS.index(m[1])].objects)
                assert NUMBER_WORDS[n] in a.split()
                seen.add("count")
            elif m := re.fullmatch(r"Which image has a (\w+) object\?", q):
                having = [k for k, s in enumerate(c.scenes) if any(o.color == m[1] for o in s.objects)]
                assert len(having) == 1 and a == f"The {ORDINALS[having[0]]} image has it."
                seen.add("colour")
            else:
                m = re.fullmatch(r"Which image has a (\w+) (\w+)\?", q)
                having = [k for k, s in enumerate(c.scenes) if s.find(m[1], m[2]) is not None]
                assert len(having) == 1 and a == f"The {ORDINALS[having[0]]} image has it."
                seen.add("differ")
    assert seen == {"describe", "count", "colour", "differ"}


def test_streams_draw_ordinal_only_when_weighted():
    from recipe_v2 import ConvStream

    without = ConvStream(0, 4, {"single": 3.0, "caption": 1.5, "differ": 1.0, "spot": 1.0, "compare": 0.5})
    kinds = {k for _ in range(40) for k, _ in without._next_keys()}
    assert "ordinal" not in kinds and {"single", "differ"} <= kinds
    with_it = ConvStream(0, 4, {"ordinal": 5.0})
    assert any(k == "ordinal" for _ in range(10) for k, _ in with_it._next_keys())


def test_binding_decoys_hold_both_near_misses():
    """Every differ answer is the one image with the pair; for the question
    the conversation is built on, every other image has the colour (on
    another shape) and the shape (in another colour)."""
    for i in range(40):
        c = conv.make_conversation("binding", "train", i, seed=2000)
        built_on = 0
        for q, a in c.turns:
            color, shape = re.fullmatch(r"Which image has a (\w+) (\w+)\?", q).groups()
            having = [k for k, s in enumerate(c.scenes) if s.find(color, shape) is not None]
            assert len(having) == 1 and a == f"The {ORDINALS[having[0]]} image has it."
            others = [s for k, s in enumerate(c.scenes) if k != having[0]]
            built_on += all(color in {o.color for o in s.objects} and shape in {o.shape for o in s.objects}
                            for s in others)
        assert built_on >= 1


def test_lookup_decoys_hold_the_colour_never_the_shape():
    """The differ question's other images hold its colour (on other shapes) and
    never its shape; a shape-only question names the one image with that shape."""
    for i in range(40):
        c = conv.make_conversation("lookup", "train", i, seed=3000)
        pair = [t for t in c.turns if re.fullmatch(r"Which image has a \w+ \w+\?", t[0])]
        assert len(pair) == 1
        color, shape = re.fullmatch(r"Which image has a (\w+) (\w+)\?", pair[0][0]).groups()
        having = [k for k, s in enumerate(c.scenes) if s.find(color, shape) is not None]
        assert len(having) == 1 and pair[0][1] == f"The {ORDINALS[having[0]]} image has it."
        for k, s in enumerate(c.scenes):
            if k != having[0]:
                assert color in {o.color for o in s.objects} and shape not in {o.shape for o in s.objects}
        for q, a in c.turns:
            m = re.fullmatch(r"Which image has a (\w+)\?", q)
            if m:
                with_it = [k for k, s in enumerate(c.scenes) if m[1] in {o.shape for o in s.objects}]
                assert len(with_it) == 1 and a == f"The {ORDINALS[with_it[0]]} image has it."


def test_tag_temperature_asks_for_a_wider_margin():
    """Recipe v2 stage 7: dividing the shape tag's logits by T gives a margin m*T
    the loss a margin m had at T = 1, and leaves the colour tag's term alone."""
    import torch

    from recipe_v2 import tag_aux_loss

    unk, cands = 0, [torch.tensor([1, 2]), torch.tensor([3, 4])]  # colour words, shape words
    tgt = torch.tensor([[1, 3]])  # one object patch: colour word 1, shape word 3

    def loss(colour_margin, shape_margin, temps):
        logits = torch.zeros(1, 5)
        logits[0, 1], logits[0, 3] = colour_margin, shape_margin
        return tag_aux_loss(logits, tgt, (unk, cands), temps).item()

    plain = loss(4.0, 4.0, (1.0, 1.0))
    assert loss(4.0, 4.0, (1.0, 5.0)) > plain  # same margin, shape now counts as narrow
    assert abs(loss(4.0, 20.0, (1.0, 5.0)) - plain) < 1e-6  # 5x the margin, same loss
    assert abs(loss(4.0, 4.0, (5.0, 1.0)) - loss(4.0, 4.0, (1.0, 5.0))) < 1e-6  # per tag
