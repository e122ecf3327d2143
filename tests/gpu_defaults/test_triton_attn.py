"""PLPHP on vLLM's TRITON_ATTN backend: the attention path our GPU users run
(TRITON_ATTN's metadata builder, impl, KV layout (num_blocks, Hkv, block_size,
2D) and kernels `unified_attention` / `triton_reshape_and_cache_flash`), here
with its Triton kernels in Triton's interpreter (tests/support/triton_attn_cpu.py),
under Model Runner V2 + async scheduling, eager.

On a 6-layer LLaVA (3 pruned layers, 64-token images: interpreted attention
costs grow with the square of the prompt), one batch of 1-image, 2-image and text prompts with
PLPHP at the paper's settings, at thresholds that mix the layer categories,
FastV and VTW, each request its own settings:
- stock TRITON_ATTN equals stock CPU_ATTN (PLPHP's CPU_ATTN engine with
  every request opted out) and the HF reference;
- PLPHP wrapping TRITON_ATTN (`{"plphp": {"backend": "TRITON_ATTN"}}`) equals
  the HF reference in tokens and per-layer kept lengths, with the fused Triton
  pruning kernels (`kernels: "triton"`, what CUDA runs; FastV / VTW take the
  torch path there) and with the torch pruning path;
- the blocks it frees, step by step, equal PLPHP on CPU_ATTN (the platform's
  own pick here), and every block comes back.
"""

import pytest

from plphp_dev.fixtures.prompts import get_prompt, prompt_inputs
from tests.conftest import greedy, kept, make_inprocess_llm, mixed_thresholds, scheduler_of
from vllm_plphp.config import PlphpConfig

pytestmark = pytest.mark.usefixtures("eager_engines")

MAX_TOKENS = 8
CASES = [(1, 0), (2, 3), (0, 0), (1, 5)]  # (num_images, seed)
IMAGE_CASES = [i for i, (n, _) in enumerate(CASES) if n]
FASTV = {"policy": "fastv", "k": 3, "fastv_r": 0.5}
VTW = {"policy": "vtw", "k": 4}
TRITON = {"backend": "TRITON_ATTN"}


def run_batch(llm, requests):
    """Add every (req_id, case, plphp override) at once, step to the end.
    Returns ({req_id: tokens}, [free blocks after each step], free at start)."""
    engine = llm.llm_engine
    pool = scheduler_of(llm).kv_cache_manager.block_pool
    start = pool.get_num_free_blocks()
    for req_id, case, override in requests:
        engine.add_request(req_id, prompt_inputs("llava", *CASES[case]),
                           greedy(MAX_TOKENS, plphp=override))
    outputs, free = {}, []
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                outputs[out.request_id] = list(out.outputs[0].token_ids)
        free.append(pool.get_num_free_blocks())
    return outputs, free, start


class Runs:
    """Every engine of the module, started one after the other."""

    def __init__(self, path):
        # PLPHP on CPU_ATTN (vLLM's own pick on this platform): the thresholds
        # that mix categories, then the batch whose freed blocks are compared
        llm = make_inprocess_llm(path, "plphp")
        first, _, _ = run_batch(llm, [("t0", 0, None)])
        self.mixed = mixed_thresholds(llm.collective_rpc("plphp_records", args=(["t0"],))[0]["t0"])
        self.requests = ([(f"d{i}", i, None) for i in range(len(CASES))]
                         + [("m0", 0, self.mixed), ("f1", 1, FASTV), ("v0", 0, VTW)])
        self.cpu = self._plphp(llm)
        self.cpu_wrapped = llm.collective_rpc("plphp_attention_impls")[0]
        # stock CPU_ATTN: the same engine with every request opted out (PLPHP's
        # impl then runs the stock one untouched; one engine start less)
        prompts = [prompt_inputs("llava", *case) for case in CASES]
        self.stock = {"CPU_ATTN": [list(o.outputs[0].token_ids)
                                   for o in llm.generate(prompts, greedy(MAX_TOKENS, plphp=False))]}
        self._stop(llm)

        llm = make_inprocess_llm(path, "plphp", {**TRITON, "kernels": "triton"})
        self.triton = self._plphp(llm)
        self.triton_wrapped = llm.collective_rpc("plphp_attention_impls")[0]
        self._stop(llm)

        llm = make_inprocess_llm(path, "plphp", {**TRITON, "kernels": "torch"})
        ids = [r for r in self.requests if r[0][0] in "dm"]
        outs = llm.generate([prompt_inputs("llava", *CASES[c]) for _, c, _ in ids],
                            [greedy(MAX_TOKENS, plphp=o) for *_, o in ids])
        records = llm.collective_rpc("plphp_records", args=([o.request_id for o in outs],))[0]
        self.torch = {rid: (list(o.outputs[0].token_ids), records.get(o.request_id))
                      for (rid, *_), o in zip(ids, outs)}
        self._stop(llm)

        llm = make_inprocess_llm(path, attention_backend="TRITON_ATTN")
        self.stock["TRITON_ATTN"] = [list(o.outputs[0].token_ids)
                                     for o in llm.generate(prompts, greedy(MAX_TOKENS))]
        self._stop(llm)

    def _plphp(self, llm):
        llm.reset_prefix_cache()  # both engines start the batch with a cold cache
        outputs, free, start = run_batch(llm, self.requests)
        records = llm.collective_rpc("plphp_records", args=(list(outputs),))[0]
        return {"tokens": outputs, "records": records, "free": free, "start": start}

    @staticmethod
    def _stop(llm):
        llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def runs():
    from plphp_dev.fixtures import build_fixture

    return Runs(build_fixture("llava", "shallow", progress=False))


@pytest.fixture(scope="module")
def reference():
    from plphp_dev.fixtures import build_fixture
    from plphp_dev.reference import ReferenceModel

    ref = ReferenceModel(build_fixture("llava", "shallow", progress=False))
    cache = {}

    def run(case, override):
        key = (case, repr(override))
        if key not in cache:
            config = None if override is False else PlphpConfig().replace(**(override or {}))
            text, images = get_prompt("llava", *CASES[case])
            cache[key] = ref.generate(text, images, MAX_TOKENS, config)
        return cache[key]

    return run


def test_each_engine_wraps_the_backend_it_was_given(runs):
    decoder = lambda impls: {v for k, v in impls.items() if "language_model" in k}  # noqa: E731
    assert decoder(runs.cpu_wrapped) == {"vllm_plphp.worker.backend.PlphpCPUAttentionBackendImpl"}
    assert decoder(runs.triton_wrapped) == {"vllm_plphp.worker.backend.PlphpTritonAttentionImpl"}


def test_stock_triton_attn_equals_stock_cpu_attn_and_reference(runs, reference):
    assert runs.stock["TRITON_ATTN"] == runs.stock["CPU_ATTN"]
    assert runs.stock["TRITON_ATTN"] == [reference(i, False)[0] for i in range(len(CASES))]


@pytest.mark.parametrize("kernels", ["triton", "torch"])
def test_plphp_on_triton_attn_equals_reference(runs, reference, kernels):
    """Tokens and every pruned layer's kept length; the layer rule really acts
    (three categories in the mixed requests) and pruning changes answers."""
    got = runs.triton if kernels == "triton" else None
    checked = 0
    for req_id, case, override in runs.requests:
        if got is not None:
            tokens, records = got["tokens"][req_id], got["records"].get(req_id)
        elif req_id in runs.torch:
            tokens, records = runs.torch[req_id]
        else:
            continue
        ref_tokens, ref_records = reference(case, override)
        assert tokens == ref_tokens, req_id
        assert kept(records) == kept(ref_records), req_id
        if CASES[case][0] == 0:
            assert records is None and tokens == runs.stock["CPU_ATTN"][case]
        checked += 1
    assert checked == (len(runs.requests) if got is not None else 5)
    mixed = (runs.triton["records"] if got is not None else {r: v[1] for r, v in runs.torch.items()})["m0"]
    assert {round(r["rate"], 6) for r in mixed.values()} == {0.2, 0.5, 0.8}
    differ = sum(runs.triton["tokens"][f"d{i}"] != runs.stock["CPU_ATTN"][i] for i in IMAGE_CASES)
    assert differ >= 2, "pruning changed too few answers"


def test_baselines_on_triton_attn_prune_their_layers(runs):
    for req_id, case, override in runs.requests:
        if override in (FASTV, VTW):
            layers = runs.triton["records"][req_id]
            assert sorted(layers) == list(range(override["k"], 6)), req_id
            if override is VTW:
                assert {r["vision_kept"] for r in layers.values()} == {0}


def test_blocks_freed_equal_plphp_on_cpu_attn(runs):
    """Same batch, same block size: the pool's free count after every step is
    the same on both wrapped backends, pruning freed blocks during decode,
    and every block is back at the end."""
    t, c = runs.triton, runs.cpu
    assert t["start"] == c["start"]
    assert t["free"] == c["free"]
    assert t["free"][-1] == t["start"]
    assert kept(t["records"]["d1"]) == kept(c["records"]["d1"])
    lowest = min(t["free"])
    assert any(f > lowest for f in t["free"][t["free"].index(lowest):]), "no block freed mid-run"
