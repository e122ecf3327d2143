"""Soak: `vllm serve --attention-backend plphp` for minutes under a seeded,
bounded mix of real OpenAI-client traffic with faults, then checks that
nothing leaked and no answer changed.

  .venv/bin/python benchmarks/soak.py                # 3 minutes of traffic at 1.5 req/s
  .venv/bin/python benchmarks/soak.py --duration 600 --rate 1.5 --seed 7
  (CI: tests/integration/test_soak.py runs 45 s, --seed 3 --rate 1.5 --prompts 2)

Traffic (open loop, Poisson arrivals at --rate, at most --max-inflight at
once): text-only and 1-3 image chats over a small pool of prompts (so every
answer can be replayed), streaming and not, greedy and sampled, valid
per-request PLPHP overrides and invalid ones (must be HTTP 400), clients that
disconnect mid-stream, clients that time out on a long non-streaming answer.
The KV budget (--kv-mib) is small enough that the scheduler has to preempt.
vLLM's defaults otherwise (block size, prefix caching, runner, compilation).

At the end: no request running or waiting, KV usage back to 0, /health ok;
preemptions happened; PLPHP pruned at least every completed image request
that asked for pruning; every completed greedy image answer equals the same
request served alone afterwards on the same server; then a stock server
answers every text-only request and every image request that opted out of
pruning (`"plphp": "false"`) exactly as PLPHP did. Prints the counts; exits 1
on any loss.

Preempted image requests (found from PLPHP's per-request prune line in the
server log: pruned twice) are reported separately: PLPHP recomputes their
generated tokens over the pruned layers (docs/limitations.md), so any
difference from the request served alone is a loss unless
--allow-preemption-drift (which reports them without failing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.server import Server, metric_value  # noqa: E402
from benchmarks.soak_traffic import OVERRIDES, Request, traffic  # noqa: E402

# PLPHP's per-request prune line (DEBUG) in the server log; the rest of vLLM stays at INFO
LOGGING = {
    "version": 1, "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(asctime)s [%(name)s] %(message)s"}},
    "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "plain", "level": "DEBUG",
                         "stream": "ext://sys.stdout"}},
    "loggers": {"vllm": {"handlers": ["out"], "level": "INFO", "propagate": False},
                "vllm.plphp": {"handlers": ["out"], "level": "DEBUG", "propagate": False}},
}


def count_prunes(logs: str, reqs: list[Request]) -> None:
    """How many prefills of each request PLPHP pruned (engine ids are the response id + a suffix)."""
    seen = Counter(m.group(1).rsplit("-", 1)[0] for m in re.finditer(r"PLPHP request (\S+) \(", logs))
    for r in reqs:
        r.prunes = seen.get(r.response_id, 0)


def counters(srv: Server) -> dict:
    text = srv.metrics()
    names = {"preemptions": "vllm:num_preemptions_total", "pruned": "vllm:plphp_requests_pruned_total",
             "skipped": "vllm:plphp_requests_skipped_total", "blocks_freed": "vllm:plphp_kv_blocks_freed_total",
             "running": "vllm:num_requests_running", "waiting": "vllm:num_requests_waiting",
             "kv_usage": "vllm:kv_cache_usage_perc"}
    return {k: metric_value(text, v) or 0.0 for k, v in names.items()}


def settled(srv: Server, timeout: float = 120) -> dict:
    """Counters once nothing runs or waits and the KV pool is empty (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        c = counters(srv)
        if (c["running"], c["waiting"], c["kv_usage"]) == (0, 0, 0) or time.monotonic() > deadline:
            return c
        time.sleep(0.5)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=10) as r:
            return r.status == 200
    except OSError:
        return False


def serve_alone(srv: Server, prompts, with_override: bool = True) -> dict:
    """Each prompt by itself, non-streaming, greedy, one after the other."""
    client, out = srv.client(), {}
    for p in sorted(prompts, key=lambda p: (p.images, p.seed, p.override)):
        resp = client.chat.completions.create(
            model="fixture", messages=p.messages(), max_tokens=p.max_tokens, temperature=0.0,
            extra_body=p.extra_body(with_override))
        out[p] = resp.choices[0].message.content or ""
    return out


def compare(reqs: list[Request], reference: dict, what: str, losses: list, drift: list | None = None) -> int:
    """Answers against `reference`; a pruned request that was preempted (pruned twice) and
    differs goes to `drift` when given (see --allow-preemption-drift)."""
    checked = 0
    for r in reqs:
        if r.prompt in reference:
            checked += 1
            ref = reference[r.prompt]
            if r.text != ref:
                at = next((i for i, (a, b) in enumerate(zip(r.text, ref)) if a != b), min(len(r.text), len(ref)))
                msg = (f"request {r.id} {r.prompt} ({'stream' if r.stream else 'whole'}, pruned {r.prunes}x): "
                       f"answer differs from {what} at char {at}/{len(ref)}: "
                       f"{r.text[max(0, at - 20):at + 40]!r} vs {ref[max(0, at - 20):at + 40]!r}")
                (drift if drift is not None and r.prunes > 1 else losses).append(msg)
    return checked


def server_args(args) -> list[str]:
    # 3 images = 3 x 576 + text + 160 output tokens < 2048 (and vLLM demands room for one
    # 2048-token request in the KV budget)
    return ["--max-model-len", "2048", "--limit-mm-per-prompt", json.dumps({"image": 3})]


def soak(model: str, args) -> dict:
    losses: list[str] = []
    log_config = Path(tempfile.mkdtemp(prefix="soak-")) / "logging.json"
    log_config.write_text(json.dumps(LOGGING))
    srv = Server(model, *server_args(args), plphp={}, kv_bytes=args.kv_mib << 20, timeout=900,
                 eager=args.eager, env={"VLLM_LOGGING_CONFIG_PATH": str(log_config)})
    try:
        before = counters(srv)
        reqs = asyncio.run(traffic(srv.url, args))
        after = settled(srv)
        count_prunes(srv.logs(), reqs)
        outcomes = Counter(r.outcome for r in reqs)
        for r in reqs:
            valid = OVERRIDES[r.prompt.override][1]
            expected = ({"ok"} | ({"disconnect"} if r.disconnect_after else set())
                        | ({"timeout"} if r.timeout else set()))
            if not valid and r.outcome != "400":
                losses.append(f"request {r.id} {r.prompt}: invalid override answered {r.outcome}")
            elif not valid and "vllm_xargs.plphp" not in r.detail:
                losses.append(f"request {r.id}: 400 does not name the field: {r.detail}")
            elif valid and r.outcome not in expected:
                losses.append(f"request {r.id} {r.prompt}: {r.outcome} {r.detail}")
        if (after["running"], after["waiting"], after["kv_usage"]) != (0, 0, 0):
            losses.append(f"not back to idle after the soak: {after}")
        delta = {k: after[k] - before[k] for k in ("preemptions", "pruned", "skipped", "blocks_freed")}
        if delta["preemptions"] == 0:
            losses.append("no preemption: the load did not press the KV pool (raise --rate or lower --kv-mib)")
        done = [r for r in reqs if r.outcome == "ok"]
        pruning = [r for r in done if r.prompt.images and r.prompt.override != "skip"]
        if delta["pruned"] < len(pruning):
            losses.append(f"{delta['pruned']:.0f} requests pruned, fewer than the {len(pruning)} "
                          "completed image requests that asked for it")
        if pruning and delta["blocks_freed"] <= 0:
            losses.append("pruning freed no KV block")
        greedy = [r for r in done if not r.sampled]
        images = [r for r in greedy if r.prompt.images]
        alone = serve_alone(srv, {r.prompt for r in images})
        drift: list[str] = []
        checked_alone = compare(images, alone, "the same request alone", losses, drift)
        if not args.allow_preemption_drift:
            losses += drift
        final = settled(srv)
        if (final["running"], final["waiting"], final["kv_usage"]) != (0, 0, 0):
            losses.append(f"not back to idle after the replay: {final}")
        if not healthy(srv.url):
            losses.append("/health not ok after the soak")
    finally:
        srv.stop()
    # stock vLLM (its own defaults) answers the text-only and opted-out image requests
    stock_side = [r for r in greedy if r.prompt.images == 0 or r.prompt.override == "skip"]
    srv = Server(model, *server_args(args), kv_bytes=args.kv_mib << 20, timeout=900, eager=args.eager)
    try:
        stock = serve_alone(srv, {r.prompt for r in stock_side}, with_override=False)
    finally:
        srv.stop()
    checked_stock = compare(stock_side, stock, "stock vLLM", losses)
    return {
        "duration_s": args.duration, "rate": args.rate, "seed": args.seed, "kv_mib": args.kv_mib,
        "requests": len(reqs), "outcomes": dict(outcomes),
        "images": dict(Counter(r.prompt.images for r in reqs)),
        "streaming": sum(r.stream for r in reqs), "sampled": sum(r.sampled for r in reqs),
        "image_requests_preempted": sum(r.prunes > 1 for r in reqs),
        "overrides": dict(Counter(r.prompt.override for r in reqs)),
        **{k: int(v) for k, v in delta.items()},
        "image_answers_checked_alone": checked_alone, "distinct_replayed_alone": len(alone),
        "answers_checked_against_stock": checked_stock, "distinct_replayed_stock": len(stock),
        "final": final, "losses": losses, "preemption_drift": drift,
        "log": [[r.id, r.prompt.images, r.prompt.seed, r.prompt.override, r.prompt.max_tokens, r.stream,
                 r.sampled, r.outcome, r.prunes] for r in reqs],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=180, help="seconds of traffic (default 180)")
    ap.add_argument("--rate", type=float, default=1.5, help="mean requests per second (Poisson)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-inflight", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=4, help="distinct image seeds per image count")
    ap.add_argument("--kv-mib", type=int, default=28, help="KV budget (--kv-cache-memory-bytes)")
    ap.add_argument("--variant", default="tiny", help="LLaVA fixture variant")
    ap.add_argument("--eager", action="store_true", help="--enforce-eager (tests: shorter start)")
    ap.add_argument("--drain-timeout", type=float, default=600)
    ap.add_argument("--allow-preemption-drift", action="store_true",
                    help="report, but do not fail on, preempted image requests whose answer differs from "
                         "the same request alone (for comparing vLLM versions; none is expected)")
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args()

    from plphp_dev.fixtures import build_fixture

    start = time.monotonic()
    summary = soak(build_fixture("llava", args.variant, progress=False), args)
    summary["wall_s"] = round(time.monotonic() - start)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("losses", "log", "preemption_drift")}, indent=1))
    for loss in summary["losses"][:30]:
        print("LOSS:", loss)
    if args.allow_preemption_drift:
        for msg in summary["preemption_drift"]:
            print("DIFFERS AFTER PREEMPTION (allowed):", msg)
    print(f"[soak] {'FAILED: ' + str(len(summary['losses'])) + ' loss(es)' if summary['losses'] else 'clean'}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=str))
    return 1 if summary["losses"] else 0


if __name__ == "__main__":
    sys.exit(main())
