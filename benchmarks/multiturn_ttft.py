"""Second turn of a chat about the same image, with prefix caching (vLLM's
default): time to first token of PLPHP against stock vLLM, both engines in one
run, interleaved repeats (these machines vary +-30%).

  .venv/bin/python benchmarks/multiturn_ttft.py               # bench fixture, 5 repeats
  .venv/bin/python benchmarks/multiturn_ttft.py --repeats 3 --fixture tiny

Each repeat, per engine: turn 1 (system prompt, a fresh image, a question;
`--answer` tokens), then turn 2 = turn 1's prompt, image and answer plus a
new question, timed for one output token (offline, so TTFT is the prefill).
Stock reuses every cached block of turn 1's prompt and answer (image
included); PLPHP reuses every full block of turn 1's prompt, image included
(the request decoded on a pruned copy and left its unpruned prompt blocks in
the cache: vllm_plphp/engine/cache_copies.py), never the answer's blocks
(computed over pruned caches). Each engine at its own default block size
(stock 128 on CPU, PLPHP 32). A third column, "plphp-optout", is turn 2 on the
PLPHP engine with pruning turned off for that request only (turn 1 pruned, a
fresh image): its difference to "plphp" is the pruning work of the turn-2
prefill. Prints per repeat the turn-2 times, the cached tokens each engine
reported and the ratios PLPHP/stock, then the median, min and max of the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's "
          "questions about the pictures the human shows it. ") * 2


def request(text, image):
    return {"prompt": text, "multi_modal_data": {"image": [image]}}


def turn2_time(llm, image, answer_tokens: int, plphp=None) -> tuple[float, int, int]:
    """(seconds, cached tokens, prompt tokens) of turn 2's first token
    (`plphp`: the turn-2 request's per-request setting, e.g. False)."""
    from vllm import SamplingParams

    turn1 = f"{SYSTEM} USER: <image>\nDescribe the image in detail. ASSISTANT:"
    params = SamplingParams(temperature=0.0, max_tokens=answer_tokens, ignore_eos=True)
    answer = llm.generate([request(turn1, image)], params, use_tqdm=False)[0].outputs[0].text
    turn2 = f"{turn1}{answer} USER: What is in the top left corner? ASSISTANT:"
    one = SamplingParams(temperature=0.0, max_tokens=1,
                         extra_args=None if plphp is None else {"plphp": plphp})
    start = time.perf_counter()
    out = llm.generate([request(turn2, image)], one, use_tqdm=False)[0]
    return time.perf_counter() - start, out.num_cached_tokens, len(out.prompt_token_ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixture", default="bench", choices=["tiny", "bench"])
    parser.add_argument("--answer", type=int, default=32, help="turn-1 answer tokens")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from vllm import LLM

    from plphp_dev.fixtures import build_fixture
    from plphp_dev.fixtures.prompts import make_image

    model = build_fixture("llava", args.fixture)
    common = dict(model=model, dtype="float32", max_model_len=4096,
                  kv_cache_memory_bytes=512 << 20, limit_mm_per_prompt={"image": 1}, seed=0)
    engines = {"stock": LLM(**common),
               "plphp": LLM(**common, attention_backend="plphp",
                            additional_config={"plphp": {"r": 0.4}})}
    for llm in engines.values():  # warm-up (compilation, first-call costs)
        turn2_time(llm, make_image(999), args.answer)
    ratios, cached_ratios = [], []
    for rep in range(args.repeats):
        image = make_image(rep)  # a fresh image per repeat: nothing of it cached yet
        got = {name: turn2_time(llm, image, args.answer) for name, llm in engines.items()}
        # the same engine and cache, turn 2 not pruned: what pruning itself costs
        got["plphp-optout"] = turn2_time(engines["plphp"], make_image(1000 + rep), args.answer,
                                         plphp=False)
        ratio = got["plphp"][0] / got["stock"][0]
        ratios.append(ratio)
        cached_ratios.append(got["plphp"][1] / max(1, got["stock"][1]))
        print(f"repeat {rep}: " + "  ".join(
            f"{n} {t * 1000:.0f} ms (cached {c}/{p} tokens)" for n, (t, c, p) in got.items())
            + f"  plphp/stock {ratio:.2f}", flush=True)
    print(f"turn-2 TTFT plphp/stock: median {statistics.median(ratios):.2f} "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f}, {len(ratios)} repeats)")
    print(f"turn-2 cached tokens plphp/stock: median {statistics.median(cached_ratios):.2f} "
          f"(min {min(cached_ratios):.2f}, max {max(cached_ratios):.2f})")


if __name__ == "__main__":
    main()
