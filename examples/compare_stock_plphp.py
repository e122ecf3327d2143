"""Greedy outputs of stock vLLM vs PLPHP on a fixture, and PLPHP's per-layer
kept lengths.  Run: .venv/bin/python examples/compare_stock_plphp.py [--model qwen2_vl] [--r 0.4]
"""

import argparse
import json

from vllm import LLM, SamplingParams

from plphp_dev.fixtures import build_fixture
from plphp_dev.fixtures.prompts import prompt_inputs
from vllm_plphp.worker.extension import WORKER_EXT


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="llava", help="fixture name (llava, qwen2_vl) or a model path")
    ap.add_argument("--plphp", default="{}", help='JSON PLPHP settings, e.g. \'{"r": 0.3}\'')
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args()
    path = build_fixture(args.model) if args.model in ("llava", "qwen2_vl") else args.model
    name = args.model if args.model in ("llava", "qwen2_vl") else "llava"
    prompts = [prompt_inputs(name, 1, 0), prompt_inputs(name, 2, 3), prompt_inputs(name, 0, 0)]
    labels = ["1 image", "2 images", "text only"]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    common = dict(model=path, dtype="float32", max_model_len=4096,
                  kv_cache_memory_bytes=256 << 20, limit_mm_per_prompt={"image": 2})

    stock = LLM(**common)
    stock_out = stock.generate(prompts, params)
    stock.llm_engine.engine_core.shutdown()

    plphp = LLM(**common, attention_backend="plphp", worker_extension_cls=WORKER_EXT,
                additional_config={"plphp": json.loads(args.plphp)})
    ours = plphp.generate(prompts, params)
    records = plphp.collective_rpc("plphp_records", args=([o.request_id for o in ours],))[0]

    for label, s, o in zip(labels, stock_out, ours):
        print(f"\n== {label} ({len(o.prompt_token_ids)} prompt tokens)")
        print(f"  stock : {s.outputs[0].text!r}")
        print(f"  plphp : {o.outputs[0].text!r}")
        print(f"  same tokens: {list(s.outputs[0].token_ids) == list(o.outputs[0].token_ids)}")
        layers = records.get(o.request_id)
        if not layers:
            print("  not pruned (no image)")
            continue
        print("  layer  gamma   r_l   kept/total  (vision kept/seen per head)")
        for layer, r in sorted(layers.items()):
            print(f"  {layer:5d}  {r['gamma']:.3f}  {r['rate']:.2f}  {r['kept']:5d}/{r['total']:<5d}"
                  f"  ({r['vision_kept']}/{r['vision']})")
        kept = sum(r["kept"] for r in layers.values())
        total = sum(r["total"] for r in layers.values())
        print(f"  pruned layers keep {kept / total:.1%} of their KV entries")
    plphp.llm_engine.engine_core.shutdown()


if __name__ == "__main__":
    main()
