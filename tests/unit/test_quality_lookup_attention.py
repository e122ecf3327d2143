"""Recipe v2's stage 8-11 losses (``benchmarks/quality/lookup_attention.py``,
``image_index.py``): the questions read, the patches targeted, the attention
against transformers' own eager attention weights (an untrained model, no
checkpoint), and the image-index labels."""

import sys
from pathlib import Path

import torch

QUALITY = str(Path(__file__).resolve().parents[2] / "benchmarks" / "quality")
if QUALITY not in sys.path:
    sys.path.insert(0, QUALITY)

import lookup_attention as la  # noqa: E402
from batches import collate  # noqa: E402
from plphp_dev.quality.conversations import make_conversation  # noqa: E402
from plphp_dev.quality.model import ModelSpec, build_tokenizer, new_model  # noqa: E402


def test_named_reads_lookup_questions_only():
    assert la.named("Which image has a red circle?") == ("red", "circle")
    assert la.named("Which image has a circle?") == (None, "circle")
    assert la.named("Which image has a red object?") == ("red", None)
    assert la.named("What color is the cross?") == (None, "cross")
    assert la.named("What shape is the blue object?") == ("blue", None)
    assert la.named("Where is the green diamond?") == ("green", "diamond")
    assert la.named("Which image has more objects?") is None
    assert la.named("How many objects are there?") is None
    assert la.named("Describe the second image.") is None


def test_targets_are_the_named_objects_patches_in_the_answered_image():
    spec = ModelSpec()
    tok = build_tokenizer(spec)
    image_id = tok.convert_tokens_to_ids("<image>")
    checked = 0
    for i in range(8):
        conv = make_conversation("lookup", "train", i, seed=3000)
        batch = collate([conv], tok, spec)
        rows, poss, mask = la.targets([conv], batch, tok, spec)
        img_pos = (batch["input_ids"][0] == image_id).nonzero()[:, 0].view(len(conv.images), -1)
        masks = list(dict.fromkeys(tuple(m.nonzero()[:, 0].tolist()) for m in mask))  # one per turn, in order
        asked = [(q, a) for q, a in conv.turns if la.named(q)]
        assert len(masks) == len(asked) > 0
        for hit, (q, a) in zip(masks, asked):
            which = ("first", "second", "third").index(a.split()[1])
            assert set(hit) <= set(img_pos[which].tolist()), (q, a)  # the answered image only
            assert 0 < len(hit) < 20  # one object's patches
            checked += 1
        assert (poss > img_pos.max()).all() and (rows == 0).all()
    assert checked >= 8


def test_loss_is_the_eager_attention_mass():
    spec = ModelSpec()
    tok = build_tokenizer(spec)
    convs = [c for c in (make_conversation("lookup", "train", i, seed=3000) for i in range(12))
             if len(c.images) == 2][:2]
    batch = collate(convs, tok, spec)
    rows, poss, mask = la.targets(convs, batch, tok, spec)
    model = new_model(spec, tok, seed=0).eval()
    model.config._attn_implementation = "eager"
    model.model.language_model.config._attn_implementation = "eager"
    with torch.no_grad(), la.captured(model) as store:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    pixel_values=batch["pixel_values"], output_attentions=True)
        got = la.loss(model, store, rows, poss, mask, batch["attention_mask"])
    best = torch.stack([(out.attentions[layer][rows, :, poss] * mask[:, None]).sum(-1)
                        for layer in la.LAYERS], 1).flatten(1).max(1).values
    want = -torch.log(best + 1e-6).mean()
    assert torch.allclose(got, want, rtol=1e-4), (got, want)
    assert got > 0.5  # an untrained model does not find the objects
    one = -torch.log((out.attentions[3][rows, 1, poss] * mask).sum(-1) + 1e-6).mean()
    with torch.no_grad(), la.captured(model, (3,)) as store:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              pixel_values=batch["pixel_values"])
        fixed = la.loss(model, store, rows, poss, mask, batch["attention_mask"], head=(3, 1))
    assert torch.allclose(fixed, one, rtol=1e-4) and fixed >= got, (fixed, one, got)


def test_key_only_supervises_the_position_predicting_the_found_word():
    spec = ModelSpec()
    tok = build_tokenizer(spec)
    conv = next(c for c in (make_conversation("single", "train", i, seed=0) for i in range(20))
                if any(q.startswith("What color") for q, _ in c.turns))
    batch = collate([conv], tok, spec)
    _, every, _ = la.targets([conv], batch, tok, spec)
    rows, poss, mask = la.targets([conv], batch, tok, spec, key_only=True)
    asked = [(q, a) for q, a in conv.turns if la.named(q)]
    assert len(poss) == len(asked) < len(every)  # one position per lookup turn
    for p, (q, a) in zip(poss.tolist(), asked):
        # the position p predicts token p + 1: the word the lookup found
        found = tok.decode([batch["input_ids"][0, p + 1].item()]).strip()
        assert found in la.KEY_WORDS and found not in q, (q, a, found)
        assert found in a.rstrip(".").split(), (q, a, found)


def test_image_index_labels_count_image_blocks_per_row():
    import image_index

    ids = torch.tensor([[1, 9, 9, 9, 9, 5, 9, 9, 9, 9, 7, 0],
                        [1, 9, 9, 9, 9, 5, 7, 0, 0, 0, 0, 0]])
    lab = image_index.labels(ids, image_id=9, tokens_per_image=4)
    assert lab[0].tolist() == [-100, 0, 0, 0, 0, -100, 1, 1, 1, 1, -100, -100]
    assert lab[1].tolist() == [-100, 0, 0, 0, 0] + [-100] * 7
    probe = image_index.Probe(8)
    hidden = torch.randn(2, 12, 8)
    want = torch.nn.functional.cross_entropy(probe(hidden[lab != -100]), lab[lab != -100])
    assert torch.allclose(image_index.loss(probe, hidden, lab), want)
