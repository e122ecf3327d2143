"""GPU benchmark of PLPHP's per-prefill kernels at Qwen2-7B shapes (issue 7).

Shapes: 28 layers (25 pruned: 0-indexed 2..26), 28 query / 4 KV heads, head 128,
bf16, block size 16, vLLM FLASH_ATTN cache layout (nb, Hkv, bs, 2D) with K/V
as strided views; prompts of 1-4 images of 1200-7000 tokens with text between.

Reports, per (images x tokens, batch):
  * per-layer stage times: scoring kernels, top-K selection, compaction
    (in-place and two-pass), and the whole layer (wall, with the gamma host sync);
  * per request: 25 pruned layers x layer time / batch, against the prefill of
    the same prompt by HF Qwen2 (7B shape, random bf16 weights, SDPA) at batch 1;
  * achieved bandwidth of the scoring and compaction kernels vs a measured
    device-to-device copy;
  * decode attention per step (all 28 layers) on full vs compacted caches with
    the Triton paged split-K decode kernel (vllm_plphp/gpu/triton_ops.py), and
    torch SDPA on dense (gathered) full-length tensors as a sanity reference.

Keys/queries are random, so gamma_l is about the vision fraction (>= alpha):
every pruned layer is "vision-attentive" with r_l = r + dr = 0.7. Decode is also
reported for r_l = 0.4 on every pruned layer.

    python benchmarks/gpu/bench_kernels.py --out $OUT/bench_kernels.json
    python benchmarks/gpu/bench_kernels.py --smoke      # CPU, tiny, torch fallback
"""

from __future__ import annotations

import argparse
import gc
import math

import torch

from bench_common import (
    build_qwen2, device_info, device_ms, peak_copy_bandwidth_gbs, prompt_layout, save_json, wall_ms,
)
from vllm_plphp.config import PlphpConfig
from vllm_plphp.gpu import (
    compact_batched_, last_token_scores_batched, make_plan, paged_decode_attention,
    score_and_select_batched, select_kept_batched,
)

NUM_LAYERS, PRUNED_LAYERS, UNPRUNED_LAYERS = 28, 25, 3


def parse_configs(text):
    return [tuple(int(x) for x in c.split("x")) for c in text.split(",")]


def make_pool(batch, plen, hkv, d, bs, dtype, device, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    nblk = math.ceil(plen / bs)
    nb = batch * nblk + 8
    kv = torch.randn(nb, hkv, bs, 2 * d, dtype=dtype, device=device, generator=g)
    table = torch.randperm(nb, device=device, generator=g)[: batch * nblk].view(batch, nblk).to(torch.int32)
    return kv, kv[..., :d], kv[..., d:], table


def bench_kernels(args, device, dtype, peak):
    H, HKV, D, BS = args.heads, args.kv_heads, args.head_size, 16
    scale = D ** -0.5
    cfg = PlphpConfig()
    rows = []
    backends = ["triton", "torch"] if device == "cuda" else ["torch"]
    for n_img, s_img in parse_configs(args.configs):
        plen, spans = prompt_layout(n_img, s_img)
        images = [torch.arange(a, a + n) for a, n in spans]
        for batch in args.batches:
            need = batch * math.ceil(plen / BS) * HKV * BS * 2 * D * 2
            if need > args.max_pool_gib * 2**30:
                print(f"skip {n_img}x{s_img} batch {batch}: pool {need / 2**30:.1f} GiB", flush=True)
                continue
            kv, k, v, table = make_pool(batch, plen, HKV, D, BS, dtype, device, seed=batch)
            q = torch.randn(batch, H, D, dtype=dtype, device=device)
            plan_ms = wall_ms(lambda: make_plan([images] * batch, [plen] * batch, None, device), reps=3, warmup=1)
            plan = make_plan([images] * batch, [plen] * batch, None, device)
            for backend in backends:
                reps = 3 if backend == "torch" and batch > 8 else 10
                t_scores = device_ms(lambda: last_token_scores_batched(q, k, table, plan, scale, backend=backend))
                sel = score_and_select_batched(q, k, table, plan, scale, cfg.layer_rate, backend=backend)
                scores, _, _ = last_token_scores_batched(q, k, table, plan, scale, backend=backend)
                t_select = wall_ms(lambda: select_kept_batched(scores, plan, sel.rates), reps=reps)
                lens_dev = sel.lengths_dev()
                t_compact = device_ms(lambda: compact_batched_(k, v, table, sel.keep, lens_dev, backend=backend))
                t_compact2 = None
                if backend == "triton":
                    t_compact2 = device_ms(
                        lambda: compact_batched_(k, v, table, sel.keep, lens_dev, backend=backend, method="two_pass"))

                def layer():
                    s = score_and_select_batched(q, k, table, plan, scale, cfg.layer_rate, backend=backend)
                    compact_batched_(k, v, table, s.keep, s.lengths, backend=backend)

                t_layer = wall_ms(layer, reps=reps)
                L = sel.lengths[0]
                slots = torch.arange(sel.keep.shape[-1], device=device)
                moved = int((sel.keep != slots).logical_and(sel.keep >= 0).sum())
                esize = k.element_size()
                key_bytes = batch * HKV * plen * D * esize
                aux_bytes = batch * H * plen * 4 * 3 + batch * HKV * plen * 4  # logits w+r, probs, scores
                comp_bytes = 2 * moved * D * esize * 2  # K and V, read + write
                row = dict(
                    images=n_img, image_tokens=s_img, prompt_len=plen, batch=batch, backend=backend,
                    gamma=round(sel.gammas[0], 4), rate=sel.rates[0], kept_len=L,
                    plan_ms=plan_ms, scores_ms=t_scores, select_ms=t_select, compact_ms=t_compact,
                    compact_two_pass_ms=t_compact2, layer_wall_ms=t_layer,
                    per_request_all_layers_ms=t_layer * PRUNED_LAYERS / batch,
                    scores_key_gbs=key_bytes / t_scores / 1e6,
                    scores_all_gbs=(key_bytes + aux_bytes) / t_scores / 1e6,
                    compact_gbs=comp_bytes / t_compact / 1e6,
                    compact_two_pass_gbs=(comp_bytes / t_compact2 / 1e6) if t_compact2 else None,
                    moved_entries=moved,
                )
                if peak:
                    row["scores_key_pct_peak"] = 100 * row["scores_key_gbs"] / peak
                    row["compact_pct_peak"] = 100 * row["compact_gbs"] / peak
                rows.append(row)
                print({k_: (round(v_, 4) if isinstance(v_, float) else v_) for k_, v_ in row.items()}, flush=True)
            del kv, k, v, table, q, plan
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def bench_decode(args, device, dtype, peak):
    H, HKV, D, BS = args.heads, args.kv_heads, args.head_size, 16
    scale = D ** -0.5
    rows = []
    for n_img, s_img in parse_configs(args.configs):
        plen, spans = prompt_layout(n_img, s_img)
        images = [torch.arange(a, a + n) for a, n in spans]
        for batch in args.batches:
            need = batch * math.ceil(plen / BS) * HKV * BS * 2 * D * 2
            if need > args.max_pool_gib * 2**30:
                continue
            kv, k, v, table = make_pool(batch, plen, HKV, D, BS, dtype, device, seed=batch + 100)
            q = torch.randn(batch, H, D, dtype=dtype, device=device)
            plan = make_plan([images], [plen], None, "cpu")
            lens = {"full": plen, "r0.7": plan.kept_counts([0.7])[1][0], "r0.4": plan.kept_counts([0.4])[1][0]}
            t, splits = {}, {}
            for name, n in lens.items():
                seq = torch.full((batch,), n, dtype=torch.int32, device=device)
                if device == "cuda":
                    from vllm_plphp.gpu.triton_ops import decode_splits

                    sms = torch.cuda.get_device_properties(0).multi_processor_count
                    splits[name] = decode_splits(batch, HKV, n, sms)
                else:
                    splits[name] = None
                t[name] = device_ms(lambda: paged_decode_attention(
                    q, k, v, table, seq, scale, num_splits=splits[name]), cuda_graph=True)
            sdpa = None
            if device == "cuda" and need < 8 * 2**30:
                from vllm_plphp import compaction

                kd = torch.stack([compaction.gather(k, table[b].long(), plen) for b in range(batch)])
                vd = torch.stack([compaction.gather(v, table[b].long(), plen) for b in range(batch)])
                q4 = q[:, :, None]
                try:
                    sdpa = device_ms(lambda: torch.nn.functional.scaled_dot_product_attention(
                        q4, kd, vd, scale=scale, enable_gqa=True), cuda_graph=True)
                except Exception as exc:  # older torch without enable_gqa
                    print("sdpa reference failed:", repr(exc))
                del kd, vd
            full_step = NUM_LAYERS * t["full"]
            row = dict(images=n_img, image_tokens=s_img, prompt_len=plen, batch=batch, lens=lens,
                       layer_ms=t, num_splits=splits, sdpa_dense_full_layer_ms=sdpa, all_layers_full_ms=full_step)
            for name in ("r0.7", "r0.4"):
                plphp = UNPRUNED_LAYERS * t["full"] + PRUNED_LAYERS * t[name]
                row[f"all_layers_{name}_ms"] = plphp
                row[f"ratio_{name}"] = plphp / full_step
            kv_bytes = batch * HKV * plen * D * 2 * k.element_size()
            row["full_gbs"] = kv_bytes / t["full"] / 1e6
            if peak:
                row["full_pct_peak"] = 100 * row["full_gbs"] / peak
            rows.append(row)
            print(row, flush=True)
            del kv, k, v, table, q
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def bench_prefill(args, device, dtype):
    model = build_qwen2(args.smoke, device, dtype)
    hidden = model.config.hidden_size
    rows = []
    for n_img, s_img in parse_configs(args.configs):
        plen, _ = prompt_layout(n_img, s_img)
        x = torch.randn(1, plen, hidden, dtype=dtype, device=device) * 0.02

        def run():
            with torch.inference_mode():
                out = model(inputs_embeds=x, use_cache=True, logits_to_keep=1)
            return out.logits

        ms = wall_ms(run, reps=args.prefill_reps, warmup=1)
        rows.append(dict(images=n_img, image_tokens=s_img, prompt_len=plen, prefill_ms=ms))
        print(rows[-1], flush=True)
        del x
        if device == "cuda":
            torch.cuda.empty_cache()
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def summarize(res):
    lines = []
    pre = {r["prompt_len"]: r["prefill_ms"] for r in res.get("prefill", [])}
    lines.append("| images x tokens | P | batch | backend | L (r_l) | scores ms | select ms | compact ms (2-pass) "
                 "| layer wall ms | per request, 25 layers ms | prefill ms | share of prefill | scores GB/s (key) "
                 "| compact GB/s |")
    lines.append("|" + "---|" * 14)
    for r in res.get("kernels", []):
        p = pre.get(r["prompt_len"])
        share = f"{100 * r['per_request_all_layers_ms'] / p:.2f}%" if p else "-"
        c2 = f" ({r['compact_two_pass_ms']:.3f})" if r.get("compact_two_pass_ms") else ""
        lines.append(
            f"| {r['images']}x{r['image_tokens']} | {r['prompt_len']} | {r['batch']} | {r['backend']} | "
            f"{r['kept_len']} ({r['rate']}) | {r['scores_ms']:.3f} | {r['select_ms']:.3f} | {r['compact_ms']:.3f}{c2} | "
            f"{r['layer_wall_ms']:.3f} | {r['per_request_all_layers_ms']:.3f} | {p if p is None else round(p, 1)} | "
            f"{share} | {r['scores_key_gbs']:.0f} | {r['compact_gbs']:.0f} |")
    lines.append("")
    lines.append("| images x tokens | batch | full L | decode attn, 28 layers, full ms | r_l=0.7 ms (ratio) "
                 "| r_l=0.4 ms (ratio) | full-cache GB/s | SDPA dense full, 1 layer ms | Triton 1 layer ms |")
    lines.append("|" + "---|" * 9)
    for r in res.get("decode", []):
        lines.append(
            f"| {r['images']}x{r['image_tokens']} | {r['batch']} | {r['lens']['full']} | {r['all_layers_full_ms']:.3f} | "
            f"{r['all_layers_r0.7_ms']:.3f} ({r['ratio_r0.7']:.3f}) | {r['all_layers_r0.4_ms']:.3f} "
            f"({r['ratio_r0.4']:.3f}) | {r['full_gbs']:.0f} | "
            f"{'-' if r['sdpa_dense_full_layer_ms'] is None else round(r['sdpa_dense_full_layer_ms'], 4)} | "
            f"{r['layer_ms']['full']:.4f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="1x1200,2x3000,4x7000", help="IMAGESxTOKENS,...")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--max-pool-gib", type=float, default=8.0)
    ap.add_argument("--prefill-reps", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma list of: kernels,decode,prefill")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, torch fallback")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.smoke:
        args.configs, args.batches = "1x60,2x90", [1, 2]
        args.heads, args.kv_heads, args.head_size = 7, 1, 32
    else:
        args.heads, args.kv_heads, args.head_size = 28, 4, 128
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    skip = set(filter(None, args.skip.split(",")))
    res = dict(device=device_info(), args={k: v for k, v in vars(args).items()})
    peak = peak_copy_bandwidth_gbs()
    res["peak_copy_gbs"] = peak
    print("device", res["device"], "peak copy GB/s", peak, flush=True)
    if "kernels" not in skip:
        res["kernels"] = bench_kernels(args, device, dtype, peak)
        save_json(args.out, res)
    if "decode" not in skip:
        res["decode"] = bench_decode(args, device, dtype, peak)
        save_json(args.out, res)
    if "prefill" not in skip:
        res["prefill"] = bench_prefill(args, device, dtype)
    save_json(args.out, res)
    print(summarize(res))


if __name__ == "__main__":
    main()
