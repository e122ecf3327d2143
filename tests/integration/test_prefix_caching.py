"""Prefix caching (vLLM's default) with PLPHP on the real engine.

Image requests share the blocks wholly before their first vision token (here a
long system prompt) in every layer; blocks from the first vision token on are
never cached, so no request is ever handed a block that another request's
pruning compacted (`vllm_plphp/engine/block_manager.py`). Checked against the
HF reference, which has no cache at all, and against stock vLLM with caching
for text-only traffic. One PLPHP engine and one stock engine for the module,
32-token blocks (CPU_ATTN's smallest) so the system prompt spans several.
"""

import pytest

from tests.conftest import MAX_TOKENS, greedy, make_inprocess_llm, make_llm, scheduler_of
from plphp_dev.fixtures.prompts import make_image

BLOCK = 32
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's "
          "questions about the pictures the human shows it. It looks at every part "
          "of each picture before it answers, and it says so when it is not sure.")


def image_prompt(question: str, seed: int, history: str = ""):
    text = f"{SYSTEM} USER: <image>\n{question} ASSISTANT:{history}"
    return text, [make_image(seed)]


def request(text, images):
    return {"prompt": text, "multi_modal_data": {"image": images}} if images else text


@pytest.fixture(scope="module")
def llm(llava_path):
    llm = make_inprocess_llm(llava_path, "plphp", block_size=BLOCK)
    yield llm
    llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def ref(llava_path):
    from plphp_dev.reference import ReferenceModel

    return ReferenceModel(llava_path)


def first_vision_block(llm, text, images) -> int:
    """Index of the block that holds the prompt's first vision token."""
    tokenizer = llm.get_tokenizer()
    before = text.split("<image>")[0]
    return len(tokenizer(before).input_ids) // BLOCK


def run(llm, text, images, plphp=None):
    out = llm.generate([request(text, images)], greedy(plphp=plphp), use_tqdm=False)[0]
    records = llm.collective_rpc("plphp_records", args=([out.request_id],))[0]
    return list(out.outputs[0].token_ids), out.num_cached_tokens, records.get(out.request_id)


def reference(ref, text, images, **settings):
    from vllm_plphp.config import PlphpConfig

    return ref.generate(text, images, MAX_TOKENS, PlphpConfig(**settings))[0]


def assert_pruned(records):
    assert records and any(r["kept"] < r["total"] for r in records.values())


def test_prefix_caching_is_on_by_default(llm):
    assert llm.llm_engine.vllm_config.cache_config.enable_prefix_caching


def test_shared_system_prompt_hits_and_stays_correct(llm, ref):
    first = image_prompt("Describe the image in detail.", 0)
    second = image_prompt("What colour is the largest shape?", 1)
    tokens_a, _, rec_a = run(llm, *first)
    tokens_b, cached_b, rec_b = run(llm, *second)
    shared = first_vision_block(llm, *second)
    assert shared >= 2
    assert cached_b == shared * BLOCK  # every block before the image, nothing after
    assert_pruned(rec_a)
    assert_pruned(rec_b)
    assert tokens_a == reference(ref, *first)
    assert tokens_b == reference(ref, *second)


def test_same_image_different_rates_each_equal_their_own_run(llm, ref):
    """Same system prompt, same image, different per-request r: a block the
    first request's pruning compacted would give the second a wrong answer."""
    text, images = image_prompt("How many shapes are there?", 7)
    want = {r: reference(ref, text, images, r=r) for r in (0.3, 0.6)}
    run(llm, *image_prompt("Describe the image in detail.", 8))  # caches the system prompt
    for r in (0.3, 0.6, 0.3):  # one after the other: each may hit the other's blocks
        tokens, cached, records = run(llm, text, images, plphp={"r": r})
        assert tokens == want[r], r
        assert cached == first_vision_block(llm, text, images) * BLOCK
        assert_pruned(records)
    # both in one batch
    outs = llm.generate([request(text, images)] * 2,
                        [greedy(plphp={"r": 0.3}), greedy(plphp={"r": 0.6})], use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in outs] == [want[0.3], want[0.6]]


def test_second_turn_about_the_same_image(llm, ref):
    """Turn 2 repeats turn 1's prompt, image and answer: it reuses the blocks
    before the image and recomputes the image and everything after it."""
    text, images = image_prompt("Describe the image in detail.", 3)
    turn1, _, _ = run(llm, text, images)
    answer = llm.get_tokenizer().decode(turn1)
    text2, _ = image_prompt("Describe the image in detail.", 3,
                            history=f"{answer} USER: And what is in the top left corner? ASSISTANT:")
    tokens, cached, records = run(llm, text2, images)
    assert cached == first_vision_block(llm, text2, images) * BLOCK
    assert_pruned(records)
    assert tokens == reference(ref, text2, images)


def test_image_blocks_are_never_cached_and_nothing_leaks(llm):
    """While a pruned request decodes: in every layer its blocks before the
    image are cached (shareable), none from the image's block on is. After it
    finishes, every block is back in the pool exactly once."""
    engine = llm.llm_engine
    scheduler = scheduler_of(llm)
    managers = scheduler.kv_cache_manager.coordinator.single_type_managers
    pool = scheduler.kv_cache_manager.block_pool
    text, images = image_prompt("Describe the image in detail.", 11)
    shared = first_vision_block(llm, text, images)
    engine.add_request("probe", request(text, images), greedy(max_tokens=6))
    checked = pruned = 0
    while engine.has_unfinished_requests():
        engine.step()
        # vLLM may add a suffix to the id it schedules under
        running = [r for rid, r in scheduler.requests.items() if rid.startswith("probe")]
        if not running or running[0].num_output_tokens < 2:
            continue
        rid = running[0].request_id
        for manager in managers:
            blocks = manager.req_to_blocks[rid]
            assert all(b.block_hash is not None for b in blocks[:shared])
            assert all(b.block_hash is None for b in blocks[shared:])
            pruned += manager.num_pruned.get(rid, 0) > 0
        checked += 1
    assert checked and pruned
    assert pool.get_num_free_blocks() == pool.num_gpu_blocks - 1  # block 0 is the null block
    assert all(b.ref_cnt == 0 for b in pool.blocks[1:])


@pytest.fixture(scope="module")
def stock(llava_path):
    llm = make_llm(llava_path, block_size=BLOCK)
    yield llm
    llm.llm_engine.engine_core.shutdown()


def test_text_only_traffic_is_stock(llm, stock):
    """Text-only requests: same tokens and same cache hits as stock vLLM."""
    # "Text only." first: nothing of the image requests above (same SYSTEM)
    # is a prefix of these, so both engines start with a cold cache for them
    prompts = [f"Text only. {SYSTEM} USER: {q} ASSISTANT:" for q in
               ("Tell me a story.", "Write a poem about the sea.", "Tell me a story.")]
    ours, theirs = [], []
    for prompt in prompts:  # one at a time, so later prompts hit earlier ones
        for engine, out in ((llm, ours), (stock, theirs)):
            o = engine.generate([prompt], greedy(), use_tqdm=False)[0]
            out.append((list(o.outputs[0].token_ids), o.num_cached_tokens))
    assert ours == theirs
    assert ours[1][1] > 0 and ours[2][1] > ours[1][1]  # the repeat hits more than the shared prefix
