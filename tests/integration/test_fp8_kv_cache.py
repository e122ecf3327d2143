"""fp8 KV caches (`kv_cache_dtype` fp8 / fp8_e4m3 / fp8_e5m2) with PLPHP on
the real engine (CPU_ATTN stores them; PLPHP scores on the dequantized keys and
moves the quantized bytes). Checked token for token, and kept lengths per
layer, against the HF reference attending over the same quantized K/V
(`plphp_dev/kv_quant.py`). One engine per dtype ("fp8" is vLLM's alias of
fp8_e4m3), one reference model for the module.
"""

import pytest

from tests.conftest import MAX_TOKENS, fp8_cpu_cache, greedy, make_inprocess_llm, token_ids
from plphp_dev.fixtures.prompts import get_prompt, prompt_inputs

CASES = [(1, 0), (2, 3), (0, 0)]  # (num_images, seed)


@pytest.fixture(scope="module")
def ref(llava_path):
    from plphp_dev.reference import ReferenceModel

    return ReferenceModel(llava_path)


@pytest.fixture(scope="module", params=["fp8", "fp8_e5m2"])
def engine(request, llava_path):
    llm = make_inprocess_llm(llava_path, "plphp", kv_cache_dtype=request.param)
    yield request.param, llm
    llm.llm_engine.engine_core.shutdown()


@pytest.mark.skipif(not fp8_cpu_cache(), reason="vLLM's CPU fp8 KV cache needs AVX-512 or AMX")
def test_fp8_engine_equals_fp8_reference(engine, ref):
    from plphp_dev.kv_quant import use_fp8_kv
    from vllm_plphp.config import PlphpConfig

    dtype, llm = engine
    outs = llm.generate([prompt_inputs("llava", n, seed) for n, seed in CASES], greedy(),
                        use_tqdm=False)
    records = llm.collective_rpc("plphp_records", args=([o.request_id for o in outs],))[0]
    use_fp8_kv(ref.model, dtype)
    pruned = 0
    for (n, seed), tokens, out in zip(CASES, token_ids(outs), outs):
        text, images = get_prompt("llava", n, seed)
        ref_tokens, ref_records = ref.generate(text, images, MAX_TOKENS, PlphpConfig())
        assert tokens == ref_tokens, (dtype, n, seed)
        ours = records.get(out.request_id) or {}
        assert {l: r["kept"] for l, r in ours.items()} == \
            {l: r["kept"] for l, r in ref_records.items()}
        pruned += any(r["kept"] < r["total"] for r in ours.values())
    assert pruned == 2  # both image prompts pruned, the text prompt untouched
