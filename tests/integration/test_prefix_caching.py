"""Prefix caching (vLLM's default) with PLPHP on the real engine.

A pruned request's whole prompt, image included, stays in the prefix cache:
in the step that prunes, the request moves onto private copies of its blocks
from the image on and the unpruned originals go back to the pool hashed
(`vllm_plphp/engine/cache_copies.py`, `block_manager.py`), so turn 2 of a chat
and new chats about the same picture hit through the image; no request is
ever handed a block another request's pruning compacted, and nothing written
after pruning is cached. Checked against the HF reference, which has no cache
at all, against a cold cache, and against stock vLLM for text-only traffic.
One PLPHP engine and one stock engine for the module, 32-token blocks
(CPU_ATTN's smallest) so the system prompt spans several.
"""

import pytest

from tests.conftest import MAX_TOKENS, greedy, make_inprocess_llm, scheduler_of
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


def prompt_blocks(ref, text, images) -> int:
    """Full blocks of the prompt as the engine sees it (image tokens expanded)."""
    return ref.processor(text=[text], images=images, return_tensors="pt")["input_ids"].shape[1] // BLOCK


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
    """Same system prompt, same image, different per-request r: each later
    request hits the cache through the image (the unpruned prompt blocks the
    earlier one left there) and prunes its own copy; a block an earlier
    request's pruning had compacted would give a wrong answer."""
    text, images = image_prompt("How many shapes are there?", 7)
    want = {r: reference(ref, text, images, r=r) for r in (0.3, 0.6)}
    run(llm, *image_prompt("Describe the image in detail.", 8))  # caches the system prompt
    full = prompt_blocks(ref, text, images)
    for i, r in enumerate((0.3, 0.6, 0.3)):  # one after the other: each hits the last's blocks
        tokens, cached, records = run(llm, text, images, plphp={"r": r})
        assert tokens == want[r], r
        expected = first_vision_block(llm, text, images) if i == 0 else full
        assert cached == expected * BLOCK, (i, cached)
        assert_pruned(records)
    # both in one batch (scheduled in the same step: neither's image is in the
    # cache yet, since a request's region is hashed once its prune is applied)
    outs = llm.generate([request(text, images)] * 2,
                        [greedy(plphp={"r": 0.3}), greedy(plphp={"r": 0.6})], use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in outs] == [want[0.3], want[0.6]]


def test_second_turn_hits_through_the_image(llm, ref):
    """Turn 2 repeats turn 1's prompt, image and answer: it gets every full
    block of turn 1's prompt from the cache (image included), prunes afresh
    from its own last prompt token, and answers as with a cold cache and as
    the reference of a fresh prune over its whole prompt."""
    text, images = image_prompt("Describe the image in detail.", 3)
    turn1, _, _ = run(llm, text, images)
    answer = llm.get_tokenizer().decode(turn1)
    text2, _ = image_prompt("Describe the image in detail.", 3,
                            history=f"{answer} USER: And what is in the top left corner? ASSISTANT:")
    tokens, cached, records = run(llm, text2, images)
    turn1_blocks = prompt_blocks(ref, text, images)
    assert turn1_blocks > first_vision_block(llm, text2, images) + 10  # the image is cached
    assert cached == turn1_blocks * BLOCK
    assert_pruned(records)
    assert tokens == reference(ref, text2, images)
    llm.reset_prefix_cache()
    cold, cold_cached, cold_records = run(llm, text2, images)
    assert cold_cached == 0 and cold == tokens
    assert {l: r["kept"] for l, r in cold_records.items()} == \
        {l: r["kept"] for l, r in records.items()}


def test_a_second_chat_hits_while_the_first_decodes(llm, ref):
    """A new conversation about a picture another request is still decoding:
    once that request's prune is applied, its unpruned prompt is in the cache;
    the newcomer hits through the image while both run, and each prunes its
    own copy (the shared blocks are never compacted)."""
    engine = llm.llm_engine
    text_a, images = image_prompt("Describe the image in detail.", 21)
    text_b, _ = image_prompt("Describe the image in detail.", 21,
                             history=" It shows shapes. USER: Which is largest? ASSISTANT:")
    engine.add_request("chat-a", request(text_a, images), greedy())
    outputs, cached, done, steps = {}, {}, {}, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                outputs[out.request_id] = list(out.outputs[0].token_ids)
                cached[out.request_id] = out.num_cached_tokens
                done[out.request_id] = steps
        steps += 1
        if steps == 3:  # chat-a decodes; its prune event has been applied
            engine.add_request("chat-b", request(text_b, images), greedy())
    assert outputs["chat-a"] == reference(ref, text_a, images)
    assert outputs["chat-b"] == reference(ref, text_b, images)
    assert cached["chat-b"] == prompt_blocks(ref, text_a, images) * BLOCK
    assert done["chat-a"] > 3  # chat-b started while chat-a was still decoding


def test_pruned_copies_are_private_and_nothing_leaks(llm, ref):
    """While a pruned request decodes, in every layer: its blocks before the
    image are cached; in the layers it prunes, the blocks from the image on are
    private copies (never hashed, held by it alone) and the originals sit in
    the cache with no holder; in the other layers its full prompt blocks are
    cached; no block past its prompt is hashed in any layer. After it
    finishes, every block is back in the pool exactly once."""
    engine = llm.llm_engine
    scheduler = scheduler_of(llm)
    managers = scheduler.kv_cache_manager.coordinator.single_type_managers
    pool = scheduler.kv_cache_manager.block_pool
    text, images = image_prompt("Describe the image in detail.", 11)
    shared = first_vision_block(llm, text, images)
    full = prompt_blocks(ref, text, images)
    engine.add_request("probe", request(text, images), greedy(max_tokens=6))
    checked = pruned = 0
    while engine.has_unfinished_requests():
        engine.step()
        # vLLM may add a suffix to the id it schedules under
        running = [r for rid, r in scheduler.requests.items() if rid.startswith("probe")]
        if not running or running[0].num_output_tokens < 3:
            continue
        request_ = running[0]
        rid = request_.request_id
        for manager in managers:
            blocks = manager.req_to_blocks[rid]
            assert all(b.block_hash is not None for b in blocks[:shared])
            if manager.layer_index in request_.plphp.pruned_layers:
                assert manager.num_pruned.get(rid, 0) > 0
                assert all(b.block_hash is None and b.ref_cnt == 1 for b in blocks[shared:])
                pruned += 1
            else:
                assert all(b.block_hash is not None for b in blocks[:full])
                assert all(b.block_hash is None for b in blocks[full:])
        checked += 1
    assert checked and pruned
    assert pool.get_num_free_blocks() == pool.num_gpu_blocks - 1  # block 0 is the null block
    assert all(b.ref_cnt == 0 for b in pool.blocks[1:])
    # the originals of every layer are cached: a repeat hits its whole prompt
    _, cached, _ = run(llm, text, images)
    assert cached == full * BLOCK


@pytest.mark.parametrize("abort_step", [1, 2])
def test_abort_around_the_copy_leaks_nothing(llm, abort_step):
    """Abort in the step that copies (1) or right after it (2, before the
    prune event under async scheduling): no block leaked or still held."""
    engine = llm.llm_engine
    pool = scheduler_of(llm).kv_cache_manager.block_pool
    text, images = image_prompt(f"Abort me {abort_step}.", 30 + abort_step)
    engine.add_request("victim", request(text, images), greedy())
    engine.add_request("bystander", request(*image_prompt("Stay.", 40)), greedy())
    steps = 0
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
        if steps == abort_step:
            engine.abort_request(["victim"])
    assert pool.get_num_free_blocks() == pool.num_gpu_blocks - 1
    assert all(b.ref_cnt == 0 for b in pool.blocks[1:])


@pytest.fixture(scope="module")
def stock(llava_path):
    llm = make_inprocess_llm(llava_path, block_size=BLOCK)
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
