"""Core PLPHP on the real engine vs the HF reference (and vs stock vLLM).

Per model family (LLaVA: Llama RoPE; Qwen2-VL: M-RoPE), one stock engine,
one PLPHP engine and one HF reference are started for the whole module. In
the second pass (GPU defaults, compiled) "stock" is the HF reference without
pruning instead of a second compiled engine (minutes of CPU each): the first
pass holds PLPHP at r=1 to stock vLLM itself, and this module holds the
compiled PLPHP engine to the same reference token for token.
"""

import pytest

from tests.conftest import EAGER, MAX_TOKENS, greedy, make_inprocess_llm, token_ids
from tests.support import gpu_defaults
from vllm_plphp.core import scoring
from vllm_plphp.config import PlphpConfig
from plphp_dev.fixtures.prompts import get_prompt, prompt_inputs

# (num_images, seed): 1-image, 2-image and text-only prompts batched together
CASES = [(1, 0), (2, 3), (0, 0), (1, 5)]
IMAGE_CASES = [i for i, (n, _) in enumerate(CASES) if n]


class Family:
    def __init__(self, name, path):
        self.name = name
        self.prompts = [prompt_inputs(name, n, seed) for n, seed in CASES]
        from plphp_dev.reference import ReferenceModel

        self.ref = ReferenceModel(path)
        self._ref_cache = {}
        if gpu_defaults.enabled():
            self.stock = [self.reference(case, None)[0] for case in range(len(CASES))]
        else:
            stock_llm = make_inprocess_llm(path)
            self.stock = token_ids(stock_llm.generate(self.prompts, greedy()))
            stock_llm.llm_engine.engine_core.shutdown()
        self.llm = make_inprocess_llm(path, "plphp")

    def reference(self, case: int, config: PlphpConfig | None):
        key = (case, config)
        if key not in self._ref_cache:
            n, seed = CASES[case]
            text, images = get_prompt(self.name, n, seed)
            self._ref_cache[key] = self.ref.generate(text, images, MAX_TOKENS, config)
        return self._ref_cache[key]

    def run(self, plphp=None):
        """PLPHP engine outputs and per-request records, in CASES order."""
        outs = self.llm.generate(self.prompts, greedy(plphp=plphp))
        records = self.llm.collective_rpc("plphp_records", args=([o.request_id for o in outs],))[0]
        return token_ids(outs), [records.get(o.request_id) for o in outs]


@pytest.fixture(scope="module", params=["llava", "qwen2_vl"])
def family(request):
    from plphp_dev.fixtures import build_fixture

    fam = Family(request.param, build_fixture(request.param, "tiny", progress=False))
    yield fam
    fam.llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def default_run(family):
    return family.run()


def test_default_equals_reference_and_differs_from_stock(family, default_run):
    ours, records = default_run
    for case in range(len(CASES)):
        ref_tokens, ref_records = family.reference(case, PlphpConfig())
        assert ours[case] == ref_tokens, f"case {CASES[case]}"
        if CASES[case][0] == 0:
            assert records[case] is None and ref_records == {}  # text-only: untouched
        else:
            assert {l: r["kept"] for l, r in records[case].items()} == {
                l: r["kept"] for l, r in ref_records.items()
            }
    differ = sum(ours[i] != family.stock[i] for i in IMAGE_CASES)
    assert differ * 2 > len(IMAGE_CASES), "pruning changed too few outputs"


def test_runner_is_the_one_vllm_picked(family):
    """First test pass: V1, synchronous (vLLM on CPU); second: vLLM's GPU defaults."""
    v2 = gpu_defaults.enabled()
    assert family.llm.collective_rpc("plphp_runner")[0] == {
        "runner": "Model Runner V2" if v2 else "Model Runner V1",
        "async_scheduling": v2, "compiled": not EAGER}


def test_r1_equals_stock(family):
    ours, records = family.run({"r": 1.0, "delta_r": 0.0})
    assert ours == family.stock
    assert all(r["kept"] == r["total"] for i in IMAGE_CASES for r in records[i].values())


def test_kept_lengths_follow_layer_rates(family, default_run):
    _, records = default_run
    n_layers = family.ref.num_layers
    for i in IMAGE_CASES:
        images = family.ref._image_positions(
            family.ref.processor(text=[get_prompt(family.name, *CASES[i])[0]],
                                 images=get_prompt(family.name, *CASES[i])[1], return_tensors="pt")
        )
        assert sorted(records[i]) == list(range(2, n_layers - 1))
        for rec in records[i].values():
            removed = sum(p.numel() - scoring.num_kept(rec["rate"], p.numel()) for p in images)
            assert rec["kept"] == rec["total"] - removed > 0
            assert rec["vision"] == sum(p.numel() for p in images)


def test_mixed_layer_categories_equal_reference(family, default_run):
    """Thresholds inside the observed gamma range give attentive, balanced and
    indifferent layers in one request; still equal to the reference."""
    _, records = default_run
    gammas = sorted(r["gamma"] for r in records[0].values())
    # midpoints between observed gammas, so float noise cannot flip a category
    i, j = len(gammas) // 3, 2 * len(gammas) // 3
    beta = (gammas[i - 1] + gammas[i]) / 2
    alpha = (gammas[j - 1] + gammas[j]) / 2
    override = {"alpha": alpha, "beta": beta, "r": 0.5, "delta_r": 0.3}
    ours, mixed = family.run(override)
    config = PlphpConfig().replace(**override)
    rates = {round(r["rate"], 6) for r in mixed[0].values()}
    assert rates == {0.2, 0.5, 0.8}
    for case in IMAGE_CASES:
        assert ours[case] == family.reference(case, config)[0], f"case {CASES[case]}"
    assert ours[2] == family.stock[2]  # text-only stays stock


def test_decode_kernel_reads_compacted_lengths(family):
    """The stock kernel gets each layer's compacted length, from a buffer that
    keeps its address from step to step (what a captured full CUDA graph reads)."""
    llm = family.llm
    buffers = llm.collective_rpc("plphp_seq_lens_buffers")[0]
    llm.collective_rpc("plphp_set_record_seq_lens", args=(True,))
    try:
        out = llm.generate([family.prompts[1]], greedy())[0]
        seq_lens = llm.collective_rpc("plphp_last_seq_lens")[0]
        records = llm.collective_rpc("plphp_records", args=([out.request_id],))[0][out.request_id]
    finally:
        llm.collective_rpc("plphp_set_record_seq_lens", args=(False,))
    assert set(buffers) == set(seq_lens) and len(set(buffers.values())) == len(buffers)
    assert llm.collective_rpc("plphp_seq_lens_buffers")[0] == buffers
    full = len(out.prompt_token_ids) + MAX_TOKENS - 1  # last decode step
    for name, lens in seq_lens.items():
        layer = int(name.split("layers.")[1].split(".")[0])
        if layer in records:
            rec = records[layer]
            assert lens == [full - (rec["total"] - rec["kept"])], name
            assert lens[0] < full
        else:
            assert lens == [full], name


def test_per_head_ablation_equals_reference(family):
    """per_head=False (every KV head keeps the same tokens, ranked by the
    attention averaged over all query heads): equal to the reference's own
    reading of the ablation, tokens and kept lengths."""
    ours, records = family.run({"per_head": False})
    config = PlphpConfig().replace(per_head=False)
    for case in IMAGE_CASES:
        ref_tokens, ref_records = family.reference(case, config)
        assert ours[case] == ref_tokens, f"case {CASES[case]}"
        assert {l: r["kept"] for l, r in records[case].items()} == \
            {l: r["kept"] for l, r in ref_records.items()}


BASELINES = [
    {"policy": "fastv", "k": 3, "fastv_r": 0.75},
    {"policy": "fastv", "k": 2, "fastv_r": 0.5},
    {"policy": "vtw", "k": 6},
]


@pytest.mark.parametrize("override", BASELINES, ids=lambda o: f"{o['policy']}-k{o['k']}")
def test_baseline_policies_equal_reference(family, override):
    """FastV / VTW through the same engine machinery (per-request policy):
    tokens and per-layer kept lengths equal the HF reference; every layer from
    K on is pruned to the same length; text-only requests stay stock."""
    ours, records = family.run(override)
    config = PlphpConfig().replace(**override)
    n_layers = family.ref.num_layers
    for case in IMAGE_CASES:
        ref_tokens, ref_records = family.reference(case, config)
        assert ours[case] == ref_tokens, f"case {CASES[case]}"
        assert sorted(records[case]) == list(range(override["k"], n_layers))
        assert {l: r["kept"] for l, r in records[case].items()} == {
            l: r["kept"] for l, r in ref_records.items()}
        rec = next(iter(records[case].values()))
        expected_vision = (0 if override["policy"] == "vtw"
                           else int((1 - override["fastv_r"]) * rec["vision"] + 1e-6))
        assert {r["vision_kept"] for r in records[case].values()} == {expected_vision}
    assert ours[2] == family.stock[2]
    assert any(ours[i] != family.stock[i] for i in IMAGE_CASES)
