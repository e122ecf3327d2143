"""Greedy vLLM evaluation of a quality checkpoint, compared with transformers.

    python benchmarks/quality/eval_vllm.py [--model plphp_dev/quality/model]
        [--n-per-task 10] [--seed 0] [--no-hf] [-- extra LLM kwargs as JSON]

Runs the test split through ``vllm.LLM.generate`` (raw prompts from
``tasks.prompt_text`` with the PIL images), scores it per task and, unless
``--no-hf``, runs the same examples through transformers greedy decoding and
reports how many answers agree exactly.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

from batches import ROOT  # benchmarks/quality is sys.path[0]; puts ROOT on it
from plphp_dev.quality import MODEL_DIR
from plphp_dev.quality.tasks import TASKS, chance_score, make_examples, score, vllm_inputs


def vllm_answers(model: str, examples, llm_kwargs: dict) -> tuple[list[str], float]:
    from vllm import LLM, SamplingParams

    kwargs = dict(model=model, dtype="float32", max_model_len=1024, seed=0,
                  limit_mm_per_prompt={"image": 3},
                  gpu_memory_utilization=0.3)
    kwargs.update(llm_kwargs)
    llm = LLM(**kwargs)
    sp = SamplingParams(temperature=0.0, max_tokens=40)
    t0 = time.perf_counter()
    outs = llm.generate([vllm_inputs(ex) for ex in examples], sp, use_tqdm=False)
    return [o.outputs[0].text.strip() for o in outs], time.perf_counter() - t0


def hf_answers(model: str, examples) -> list[str]:
    import torch
    from eval_hf import generate
    from plphp_dev.quality.model import ModelSpec, load_checkpoint

    torch.set_num_threads(2)
    m, processor = load_checkpoint(model)
    spec = ModelSpec(**{k: v for k, v in json.load(open(f"{model}/model_spec.json")).items()
                        if k != "num_image_tokens"})
    return generate(m, processor.tokenizer, spec, examples, "cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(MODEL_DIR))
    ap.add_argument("--n-per-task", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--llm-kwargs", default="{}", help="JSON merged into LLM(...)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    examples = make_examples("test", args.n_per_task, args.seed)
    got, gen_s = vllm_answers(args.model, examples, json.loads(args.llm_kwargs))
    ref = None if args.no_hf else hf_answers(args.model, examples)
    per_task, agree = defaultdict(list), defaultdict(list)
    for i, ex in enumerate(examples):
        per_task[ex.task].append(score(ex.task, got[i], ex.answer))
        if ref is not None:
            agree[ex.task].append(float(got[i] == ref[i]))
    print(f"{'task':10s} {'vllm':>6s} {'chance':>7s} {'=hf':>6s}")
    result = {"n_per_task": args.n_per_task, "generate_s": round(gen_s, 1), "tasks": {}}
    for t in TASKS:
        s = sum(per_task[t]) / len(per_task[t])
        a = sum(agree[t]) / len(agree[t]) if ref is not None else float("nan")
        result["tasks"][t] = {"vllm": round(s, 4), "chance": round(chance_score(t), 4),
                              "agree_hf": round(a, 4)}
        print(f"{t:10s} {s:6.3f} {chance_score(t):7.3f} {a:6.3f}")
    mismatches = [(examples[i].task, got[i], ref[i]) for i in range(len(examples))
                  if ref is not None and got[i] != ref[i]]
    result["mismatches"] = mismatches[:20]
    print("mismatches (task, vllm, hf):", mismatches[:10])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
