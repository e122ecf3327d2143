"""The mask edit of `benchmarks/quality/count_intervention.py` on the HF
reference (v1 model, one held-out count prompt): it adds exactly the asked
positions to PLPHP's masks, and is undone after its block."""

import sys
from pathlib import Path

import numpy as np
import torch

QUALITY = str(Path(__file__).resolve().parents[2] / "benchmarks" / "quality")
if QUALITY not in sys.path:
    sys.path.insert(0, QUALITY)

from caption_objects import object_patches, task_scene  # noqa: E402
from count_intervention import keep_also  # noqa: E402
from plphp_dev import reference  # noqa: E402
from plphp_dev.quality import MODEL_DIR  # noqa: E402
from plphp_dev.quality.tasks import make_examples, prompt_text  # noqa: E402


def test_keep_also_adds_exactly_the_asked_positions():
    ref = reference.ReferenceModel(str(MODEL_DIR))
    ex = make_examples("test", 1, 0, tasks=("count",))[0]
    scene, _ = task_scene("count", 0)
    prompt, cfg = prompt_text(ex), {"policy": "plphp", "r": 0.3}
    vision = ref.last_positions(prompt, ex.images)[0]
    on_object = np.zeros(vision.numel(), dtype=bool)
    on_object[np.concatenate(object_patches(scene, ex.images[0].size[0]))] = True
    stock, _ = ref.generate(prompt, ex.images, 12)
    ref.generate(prompt, ex.images, 12, cfg)
    plain = {layer: m.clone() for layer, m in ref.last_run.masks.items()}
    assert plain and not all(m[:, vision].all() for m in plain.values())  # r=0.3 pruned something

    with keep_also(vision[torch.from_numpy(on_object)]):
        ref.generate(prompt, ex.images, 12, cfg)
    for layer, m in ref.last_run.masks.items():
        assert m[:, vision[torch.from_numpy(on_object)]].all()  # every object patch kept
        background = vision[torch.from_numpy(~on_object)]
        assert torch.equal(m[:, background], plain[layer][:, background])  # background as r=0.3 chose

    with keep_also(vision):  # every vision position kept: the pruned model is stock again
        tokens, _ = ref.generate(prompt, ex.images, 12, cfg)
    assert tokens == stock
    ref.generate(prompt, ex.images, 12, cfg)  # the edit is gone after its block
    assert all(torch.equal(m, plain[layer]) for layer, m in ref.last_run.masks.items())
