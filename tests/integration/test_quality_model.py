"""The committed quality model (plphp_dev/quality/model) through vLLM.

It must really read its images (blinding its decode steps with VTW at K=0
costs a large part of its score), PLPHP at the default setting must prune and
keep most of the stock score, and PLPHP / FastV must equal the HF reference
token for token on this trained model, whose attention is peaked rather than
random. One stock and one PLPHP engine for the module.
"""

from pathlib import Path

import pytest

from plphp_dev.quality import MODEL_DIR
from tests.conftest import make_llm
from vllm_plphp.config import PlphpConfig

MODEL = MODEL_DIR
N_PER_TASK = 10
EXACT = ("color", "shape", "count", "position", "differ", "spot", "compare")

pytestmark = pytest.mark.skipif(not (MODEL / "config.json").is_file(),
                                reason="plphp_dev/quality/model is not in this checkout")


def _params(override, max_tokens=24):
    from vllm import SamplingParams

    extra = None if override is None else {"plphp": override}
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, extra_args=extra)


class Runs:
    def __init__(self):
        from plphp_dev.quality.tasks import make_examples, vllm_inputs

        self.examples = make_examples("test", N_PER_TASK, 0)
        self.inputs = [vllm_inputs(ex) for ex in self.examples]
        kw = dict(max_model_len=1024, limit_mm_per_prompt={"image": 3})
        stock = make_llm(str(MODEL), **kw)
        self.stock = stock.generate(self.inputs, _params(None), use_tqdm=False)
        stock.llm_engine.engine_core.shutdown()
        self.llm = make_llm(str(MODEL), "plphp", **kw)

    def run(self, override):
        outs = self.llm.generate(self.inputs, _params(override), use_tqdm=False)
        records = self.llm.collective_rpc("plphp_records", args=([o.request_id for o in outs],))[0]
        return outs, [records.get(o.request_id, {}) for o in outs]

    def score(self, outs) -> float:
        from plphp_dev.quality.tasks import score

        pairs = [(ex, o) for ex, o in zip(self.examples, outs) if ex.task in EXACT]
        return sum(score(ex.task, o.outputs[0].text.strip(), ex.answer) for ex, o in pairs) / len(pairs)


@pytest.fixture(scope="module")
def runs():
    r = Runs()
    yield r
    r.llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def blind(runs):
    """VTW at K=0: every layer's decode steps see no vision entry."""
    return runs.run({"policy": "vtw", "k": 0})


def test_model_reads_its_images(runs, blind):
    from plphp_dev.quality.tasks import chance_score

    stock = runs.score(runs.stock)
    chance = sum(chance_score(t) for t in EXACT) / len(EXACT)
    assert stock >= chance + 0.15, (stock, chance)
    assert runs.score(blind[0]) <= stock - 0.15, "the answers do not depend on the image"


def test_plphp_default_prunes_and_keeps_most_of_the_score(runs, blind):
    outs, records = runs.run(None)
    n_layers = runs.llm.llm_engine.model_config.hf_config.text_config.num_hidden_layers
    image_records = [rec for ex, rec in zip(runs.examples, records) if ex.images]
    assert all(sorted(rec) == list(range(2, n_layers - 1)) for rec in image_records)
    kept = [r["vision_kept"] / r["vision"] for rec in image_records for r in rec.values()]
    assert max(kept) <= 0.7 + 1e-6
    ours, stock = runs.score(outs), runs.score(runs.stock)
    assert ours >= stock - 0.15 and ours >= runs.score(blind[0]) + 0.1, (ours, stock)


@pytest.mark.parametrize("override", [None, {"policy": "fastv", "k": 2, "fastv_r": 0.75}],
                         ids=["plphp", "fastv"])
def test_trained_model_equals_reference(runs, override):
    from plphp_dev.reference import ReferenceModel

    ref = ReferenceModel(str(MODEL))
    picks = [i for i, ex in enumerate(runs.examples) if ex.task in ("differ", "spot", "color")][::4]
    outs, _ = runs.run(override)
    config = PlphpConfig() if override is None else PlphpConfig().replace(**override)
    eos = ref.processor.tokenizer.eos_token_id
    for i in picks[:6]:
        ex = runs.examples[i]
        from plphp_dev.quality.tasks import prompt_text

        tokens, _ = ref.generate(prompt_text(ex), ex.images, 24, config)
        ours = list(outs[i].outputs[0].token_ids)
        expected = tokens[: tokens.index(eos) + 1] if eos in tokens else tokens
        assert ours == expected, (ex.task, ex.question)
