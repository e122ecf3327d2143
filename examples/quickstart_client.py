"""The quick start's client (scripts/quickstart.sh starts the servers).

Draws one seeded picture with the project's task generator, saves it, asks
its question through the `openai` client to a PLPHP server and to a stock vLLM
server of the same model, and prints the picture's path, the question, the
expected answer, both answers as they come, and what PLPHP kept for this
request, read from the PLPHP server's /metrics before and after it.

  .venv/bin/python examples/quickstart_client.py --plphp-url http://127.0.0.1:8765/v1 \\
      --stock-url http://127.0.0.1:8766/v1 --out-dir out/quickstart
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from openai import OpenAI

from plphp_dev.quality.tasks import chat_messages, make_example
from plphp_dev.serving import metric_value, metrics_text, wait_ready

COUNTERS = ("requests_pruned", "vision_tokens_seen", "vision_tokens_kept", "kv_blocks_freed")


def ask(url: str, messages: list[dict]) -> str:
    client = OpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=300)
    model = client.models.list().data[0].id
    resp = client.chat.completions.create(model=model, messages=messages, max_tokens=24,
                                          temperature=0.0)
    return resp.choices[0].message.content or ""


def plphp_counts(url: str) -> dict:
    text = metrics_text(url)
    return {name: metric_value(text, f"vllm:plphp_{name}_total") or 0.0 for name in COUNTERS}


def run(plphp_url: str, stock_url: str, out_dir: str, task: str = "count", index: int = 0) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    example = make_example(task, "test", index, seed=0)
    picture = out / "picture.png"
    example.images[0].save(picture)
    (out / "question.txt").write_text(example.question)
    messages = chat_messages(example)

    before = plphp_counts(plphp_url)
    plphp_answer = ask(plphp_url, messages)
    after = plphp_counts(plphp_url)
    stock_answer = ask(stock_url, messages)
    delta = {name: int(after[name] - before[name]) for name in COUNTERS}
    result = {"picture": str(picture.resolve()), "question": example.question,
              "expected": example.answer, "plphp": plphp_answer, "stock": stock_answer, **delta}
    print(f"picture          : {result['picture']}")
    print(f"question         : {example.question}")
    print(f"expected answer  : {example.answer}")
    print(f"PLPHP answer     : {plphp_answer}")
    print(f"stock vLLM answer: {stock_answer}")
    print(f"KV saving        : {delta['vision_tokens_kept']} of {delta['vision_tokens_seen']} "
          "vision-token entries kept (per KV head, summed over the pruned layers); "
          f"{delta['kv_blocks_freed']} KV blocks returned to vLLM's pool")
    (out / "answers.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plphp-url", required=True)
    ap.add_argument("--stock-url", required=True)
    ap.add_argument("--out-dir", default="out/quickstart")
    ap.add_argument("--task", default="count", help="a task the trained model answers well")
    ap.add_argument("--index", type=int, default=0, help="which seeded test example")
    ap.add_argument("--wait", type=float, default=900, help="seconds to wait for the servers")
    args = ap.parse_args()
    for url in (args.plphp_url, args.stock_url):
        wait_ready(url, args.wait)
    run(args.plphp_url, args.stock_url, args.out_dir, args.task, args.index)


if __name__ == "__main__":
    main()
