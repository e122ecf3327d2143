"""Quality of PLPHP, its two ablations, FastV and VTW on the trained model,
with paired intervals against stock (the quality section of RESULTS.md).

    nice -n 10 .venv/bin/python benchmarks/quality/bench_paired.py [--model v2] \\
        [--n-plain 1200] [--n-chat 200] [--raw benchmarks/quality/paired_raw_v2.json.gz] [--resume]
    .venv/bin/python benchmarks/quality/bench_paired.py --report-only   # tables from --raw

--model picks the trained model: v2 (default, `plphp_dev/quality/model_v2`,
recipe v2, the one that reads its pictures: issue 30) or v1 (the bundled
quick-start model, `plphp_dev/quality/model`). Each has its own raw file.

Two prompt suites, both from held-out data (split "test"):
- plain: the task prompts (`plphp_dev.quality.tasks`), n per task;
- chat: a system prompt plus the earlier turns of a held-out conversation,
  the last turn scored (`plphp_dev.quality.chat`), n per conversation kind.
  Here the last prompt token's vision share gamma_l falls below alpha = 0.25
  in some layers, so PLPHP's layer rule acts.

One stock `vllm.LLM` and one `--attention-backend plphp` engine (offline,
CPU, float32, greedy, 40 tokens); every pruning setting is a per-request
override on the PLPHP engine. Settings: PLPHP at the paper's r = 0.3/0.4/0.5
(delta_r 0.3, alpha 0.25, beta 0.1); "shared heads" = PLPHP with per_head=False
(every KV head keeps the same tokens, same counts, so the same KV); "uniform"
(chat suite) = PLPHP with delta_r=0 and, per request, r = the mean r_l PLPHP
chose for that request (the same KV up to rounding, no layer rule); FastV and
VTW curves. Per example it keeps score, answer tokens, finish reason, vision
retention (kept vision tokens per layer, unpruned layers 1.0, averaged over all
layers), KV entries vs stock at the end of prefill (all layers have the same
entry size, so this is the KV-bytes ratio), KV blocks vs stock (what the block
pool frees, block size of the engine) and each pruned layer's category
(A attentive, B balanced, I indifferent). Raw figures go to --raw after every
setting; the report (`paired_report.py`) works from that file.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MODELS = {"v1": ROOT / "plphp_dev" / "quality" / "model",
          "v2": ROOT / "plphp_dev" / "quality" / "model_v2"}
RAWS = {"v1": HERE / "paired_raw.json.gz", "v2": HERE / "paired_raw_v2.json.gz"}
MODEL = MODELS["v2"]  # set by main() from --model
MAX_TOKENS = 40


def plphp(r, **kw):
    return {"policy": "plphp", "r": r, "delta_r": 0.3, "alpha": 0.25, "beta": 0.1, **kw}


def plain_settings(num_layers: int) -> dict:
    out = {"stock": None}
    for r in (0.3, 0.4, 0.5):
        out[f"plphp r={r}"] = plphp(r)
    out["shared heads r=0.4"] = plphp(0.4, per_head=False)
    for k, ratio in ((2, 0.75), (3, 0.5), (3, 0.25), (3, 0.1)):
        out[f"fastv K={k} R={ratio}"] = {"policy": "fastv", "k": k, "fastv_r": ratio}
    for k in sorted({2, num_layers // 2, num_layers - 2, num_layers - 1}):
        out[f"vtw K={k}"] = {"policy": "vtw", "k": k}
    return out


# Run order (the report keeps the table order above): the settings the
# targets and ablations rest on first, so a run cut short still answers them.
FIRST = ("stock", "plphp r=0.4", "shared heads r=0.4", "fastv K=3 R=0.5", "fastv K=3 R=0.25",
         "fastv K=2 R=0.75", "vtw K=6", "vtw K=7")


def run_order(settings: dict) -> list[str]:
    return [k for k in FIRST if k in settings] + [k for k in settings if k not in FIRST]


def chat_settings() -> dict:
    out = {"stock": None}
    for r in (0.3, 0.4, 0.5):
        out[f"plphp r={r}"] = plphp(r)
        out[f"uniform r={r}"] = ("uniform", f"plphp r={r}")  # rates from that run
    out["shared heads r=0.4"] = plphp(0.4, per_head=False)
    return out


def suites(n_plain: int, n_chat: int, seed: int) -> dict:
    from plphp_dev.quality.chat import chat_examples
    from plphp_dev.quality.tasks import make_examples, prompt_text

    plain = [(e.task, prompt_text(e), e.images, e.answer) for e in make_examples("test", n_plain, seed)]
    chat = [(e.task, e.prompt, e.images, e.answer) for e in chat_examples(n_chat, seed)]
    return {"chat": chat, "plain": plain}


def make_engine(plphp_backend: bool):
    from vllm import LLM

    kw = dict(model=str(MODEL), dtype="float32", max_model_len=1024,
              kv_cache_memory_bytes=256 << 20, limit_mm_per_prompt={"image": 3},
              disable_log_stats=True, seed=0, enable_prefix_caching=False)
    if plphp_backend:
        kw.update(attention_backend="plphp", additional_config={"plphp": {}},
                  worker_extension_cls="vllm_plphp.worker.extension.PlphpWorkerExtension")
    return LLM(**kw)


META = ("retention", "kv", "kv_blocks", "cats", "rate")  # from the engine's per-request records
CHUNK = 2000  # requests per generate call: the worker keeps the records of the last 4096 finished


def run_setting(llm, items, overrides, num_layers: int, block: int) -> dict:
    """overrides: one per item (None: stock / no override)."""
    res = {k: [] for k in ("score", "tokens", "eos", "text") + META}
    for start in range(0, len(items), CHUNK):
        part = run_chunk(llm, items[start:start + CHUNK], overrides[start:start + CHUNK],
                         num_layers, block)
        for k in res:
            res[k].extend(part[k])
    return res


def run_chunk(llm, items, overrides, num_layers: int, block: int) -> dict:
    from vllm import SamplingParams

    from vllm_plphp.config import PlphpConfig
    from vllm_plphp.core.policies import mean_retention
    from plphp_dev.quality.tasks import score

    params = [SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS,
                             extra_args=None if o is None else {"plphp": o}) for o in overrides]
    prompts = [{"prompt": p, "multi_modal_data": {"image": list(im)}} for _, p, im, _ in items]
    outs = llm.generate(prompts, params, use_tqdm=False)
    records = {}
    if any(o is not None for o in overrides):
        records = llm.collective_rpc("plphp_records", args=([o.request_id for o in outs],))[0]
    cfg = PlphpConfig()
    res = {k: [] for k in ("score", "tokens", "eos", "text") + META}
    for (task, _, _, answer), out, override in zip(items, outs, overrides):
        o = out.outputs[0]
        res["score"].append(score(task, o.text.strip(), answer))
        res["tokens"].append(len(o.token_ids))
        res["eos"].append(o.finish_reason == "stop")
        res["text"].append(o.text.strip())
        for k, v in request_meta(records.get(out.request_id), override, len(out.prompt_token_ids),
                                 num_layers, block, cfg, mean_retention).items():
            res[k].append(v)
    return res


def request_meta(record, override, total: int, num_layers: int, block: int, cfg, mean_retention) -> dict:
    """Retention, KV, categories and mean rate of one request from its record.
    Every request here has images, so a pruning request without a record is
    an error, not an unpruned request."""
    if override is not None and not record:
        raise RuntimeError("a pruning request has no PLPHP record")
    rec = {int(l): r for l, r in (record or {}).items()}
    kept = [rec[l]["kept"] if l in rec else total for l in range(num_layers)]
    gammas = [rec[l]["gamma"] for l in sorted(rec)]
    rates = [rec[l]["rate"] for l in sorted(rec)]
    return {
        "retention": mean_retention({l: r["vision_kept"] / r["vision"] for l, r in rec.items()}, num_layers),
        "kv": sum(kept) / (num_layers * total),
        "kv_blocks": sum(math.ceil(k / block) for k in kept) / (num_layers * math.ceil(total / block)),
        "cats": "".join(cfg.category(g) if g == g else "-" for g in gammas),
        "rate": sum(rates) / len(rates) if rates else 1.0,
    }


def refill_records(llm, raw: dict, items: dict, plan: dict, per_task: int, num_layers: int, block: int) -> None:
    """Runs of a version of this script that lost per-request records (META
    is None there): rerun the first `per_task` of each task's affected
    examples under the same setting and keep only their META (the prefill's
    pruning decisions); scores stay those of the full run."""
    for suite, settings in plan.items():
        done = raw["suites"][suite]["settings"]
        for name, override in settings.items():
            if override is None or isinstance(override, tuple) or name not in done:
                continue
            missing = [i for i, r in enumerate(done[name]["rate"]) if r is None]
            by_task: dict = {}
            for i in missing:
                by_task.setdefault(items[suite][i][0], []).append(i)
            pick = [i for idx in by_task.values() for i in idx[:per_task]]
            if not pick:
                continue
            part = run_setting(llm, [items[suite][i] for i in pick], [override] * len(pick), num_layers, block)
            for j, i in enumerate(pick):
                for k in META:
                    done[name][k][i] = part[k][j]
            raw.setdefault("refilled", {}).setdefault(suite, {})[name] = {
                t: min(len(v), per_task) for t, v in by_task.items()}
            print(f"[{suite} / {name}] records refilled for {len(pick)} examples", file=sys.stderr, flush=True)


def done_in_plan_order(raw: dict, plan: dict) -> None:
    """Settings in the plan's (table) order, whatever order they ran in."""
    for suite, settings in plan.items():
        done = raw["suites"][suite]["settings"]
        order = [k for k in settings if k in done] + [k for k in done if k not in settings]
        ordered = {k: done.pop(k) for k in order}
        done.update(ordered)


def save_raw(path: str, raw: dict) -> None:
    data = json.dumps(raw).encode()
    Path(path).write_bytes(gzip.compress(data, mtime=0) if path.endswith(".gz") else data)


def load_raw(path: str) -> dict:
    data = Path(path).read_bytes()
    return json.loads(gzip.decompress(data) if path.endswith(".gz") else data)


def resume(raw: dict, old: dict, n_new: dict) -> None:
    """Keep `old`'s settings, cut to the first n examples of each task / kind
    (examples are seeded by index, so they are the same examples)."""
    if old["args"].get("model", "v1") != raw["args"]["model"]:  # raw files before --model are v1's
        raise SystemExit(f"--resume: the raw file holds model {old['args'].get('model', 'v1')}, "
                         f"not {raw['args']['model']}")
    raw["block_size"] = old.get("block_size")
    for suite, n in n_new.items():
        n_old = old["args"][f"n_{suite}"]
        if suite not in old["suites"] or n > n_old or old["args"]["seed"] != raw["args"]["seed"]:
            continue
        blocks = len(old["suites"][suite]["task"]) // n_old
        idx = [b * n_old + k for b in range(blocks) for k in range(n)]
        assert [old["suites"][suite]["task"][i] for i in idx] == raw["suites"][suite]["task"]
        for name, res in old["suites"][suite]["settings"].items():
            res = {k: [v[i] for i in idx] for k, v in res.items()}
            if name != "stock":  # every request prunes: no categories = a record the run lost
                lost = [not c for c in res["cats"]]
                for k in META:
                    res[k] = [None if gone else v for v, gone in zip(res[k], lost)]
            raw["suites"][suite]["settings"][name] = res
    raw["refilled"] = old.get("refilled", {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-plain", type=int, default=1200, help="examples per task (plain suite)")
    ap.add_argument("--n-chat", type=int, default=200, help="conversations per kind (chat suite)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", choices=sorted(MODELS), default="v2",
                    help="v2: the recipe-v2 model (issue 30); v1: the quick-start model")
    ap.add_argument("--raw", default=None, help="raw figures (default: one file per --model)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--refill-records", type=int, default=0, metavar="N",
                    help="with --resume: rerun up to N examples per task whose records an earlier "
                         "run lost, for their retention / KV / categories only")
    ap.add_argument("--resume", action="store_true",
                    help="keep the settings already in --raw (cut to the n asked) and run the rest")
    args = ap.parse_args()
    global MODEL
    MODEL = MODELS[args.model]
    args.raw = args.raw or str(RAWS[args.model])
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE))
    from paired_report import report

    if args.report_only:
        report(load_raw(args.raw))
        return
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from transformers import AutoConfig

    num_layers = AutoConfig.from_pretrained(MODEL).text_config.num_hidden_layers
    items = suites(args.n_plain, args.n_chat, args.seed)
    plan = {"chat": chat_settings(), "plain": plain_settings(num_layers)}  # chat first: the ablations
    raw = {"args": vars(args), "num_layers": num_layers,
           "suites": {s: {"task": [it[0] for it in items[s]], "answer": [it[3] for it in items[s]],
                          "settings": {}} for s in items}}
    if args.resume and Path(args.raw).is_file():
        resume(raw, load_raw(args.raw), {"plain": args.n_plain, "chat": args.n_chat})
    llm = None
    for backend in (False, True):
        todo = [n for suite in plan for n, o in plan[suite].items()
                if (o is None) != backend and n not in raw["suites"][suite]["settings"]]
        lost = backend and args.refill_records and any(
            None in r["rate"] for suite in raw["suites"].values() for r in suite["settings"].values())
        if not todo and not lost:
            continue
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
        llm = make_engine(backend)
        block = raw["block_size"] = llm.llm_engine.vllm_config.cache_config.block_size
        if backend and args.refill_records:
            refill_records(llm, raw, items, plan, args.refill_records, num_layers, block)
            save_raw(args.raw, raw)
        for suite, settings in plan.items():
            done = raw["suites"][suite]["settings"]
            for name in run_order(settings):
                override = settings[name]
                if (override is None) == backend or name in done:
                    continue
                if isinstance(override, tuple):  # uniform: PLPHP's mean r_l per request
                    r_mean = done[override[1]]["rate"]
                    per_item = [{"policy": "plphp", "r": round(r, 6), "delta_r": 0.0} for r in r_mean]
                else:
                    per_item = [override] * len(items[suite])
                start = time.perf_counter()
                done[name] = run_setting(llm, items[suite], per_item, num_layers, block)
                print(f"[{suite} / {name}] {len(items[suite])} prompts, "
                      f"{time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)
                done_in_plan_order(raw, plan)
                save_raw(args.raw, raw)
    if llm is not None:
        llm.llm_engine.engine_core.shutdown()
    report(raw)


if __name__ == "__main__":
    main()
