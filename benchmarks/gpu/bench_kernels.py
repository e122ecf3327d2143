"""GPU benchmark of PLPHP's per-prefill kernels at Qwen2-7B shapes (issue 7).
(Over 300 lines: one self-contained script, so that a single call on a lent
GPU machine runs every measurement.)

Shapes: 28 layers (25 pruned: 0-indexed 2..26), 28 query / 4 KV heads, head 128,
bf16, block size 16, vLLM FLASH_ATTN cache layout (nb, Hkv, bs, 2D) with K/V
as strided views; prompts of 1-4 images of 1200-7000 tokens with text between.

Reports, per (images x tokens, batch):
  * per-layer device times (CUDA-graph replays) of the stages: scoring kernels,
    fused select+compact (Triton), the torch top-K selection, index-list compaction
    (in-place and two-pass), and of the whole sync-free layer pipeline
    `prune_layer_batched_` fused (default) and unfused; eager wall time of the
    layer (Python launches + one sync, nothing overlapped); the torch fallback;
  * per request: 25 pruned layers x layer device time / batch, against the prefill
    of the same prompt by HF Qwen2 (7B shape, random bf16 weights, SDPA) at batch 1,
    and the measured prefill with the pipeline hooked into every pruned layer
    (the CPU launches it while the GPU still runs the layer);
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
import statistics

import torch

from bench_common import (
    build_qwen2, device_info, device_ms, peak_copy_bandwidth_gbs, prompt_layout, save_json, wall_ms,
)
from vllm_plphp.config import PlphpConfig
from benchmarks.gpu.decode_attention import paged_decode_attention  # noqa: E402
from vllm_plphp.gpu import (
    compact_batched_, last_token_scores_batched, layer_rates, make_plan,
    prune_layer_batched_, score_and_select_batched, select_kept_device,
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
    """Per pruned layer, batched over B requests: device time of each stage and of the
    whole sync-free pipeline (CUDA graph), eager wall time (CPU launch cost, not
    overlapped), and the torch-fallback wall time (per-request loops, host syncs)."""
    H, HKV, D, BS = args.heads, args.kv_heads, args.head_size, 16
    scale = D ** -0.5
    cfg = PlphpConfig()
    rows = []
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
            plan_ms = wall_ms(lambda: make_plan([images] * batch, [plen] * batch, None, device, cfg), reps=3, warmup=1)
            plan = make_plan([images] * batch, [plen] * batch, None, device, cfg)
            row = dict(images=n_img, image_tokens=s_img, prompt_len=plen, batch=batch, plan_ms=plan_ms)
            if device == "cuda":
                from vllm_plphp.gpu.triton_ops import select_and_compact_

                res = prune_layer_batched_(q, k, v, table, plan, scale, method="inplace")
                lengths = res.lengths.tolist()
                row.update(gamma=round(float(res.gammas[0]), 4), rate=float(res.rates[0]), kept_len=lengths[0])
                scores, gsum, _ = last_token_scores_batched(q, k, table, plan, scale)
                gam = gsum / H

                def select():
                    return select_kept_device(scores, plan, layer_rates(gam, plan))

                row["scores_ms"] = device_ms(lambda: last_token_scores_batched(q, k, table, plan, scale), cuda_graph=True)
                row["select_torch_ms"] = device_ms(select, cuda_graph=True)
                row["select_compact_fused_ms"] = device_ms(
                    lambda: select_and_compact_(scores, gam, plan, k, v, table), cuda_graph=True)
                keep, lens_dev = select()
                row["compact_ms"] = device_ms(lambda: compact_batched_(k, v, table, keep, lens_dev))
                row["compact_two_pass_ms"] = device_ms(
                    lambda: compact_batched_(k, v, table, keep, lens_dev, method="two_pass"))
                row["layer_device_ms"] = device_ms(
                    lambda: prune_layer_batched_(q, k, v, table, plan, scale), cuda_graph=True)
                row["layer_device_unfused_ms"] = device_ms(
                    lambda: prune_layer_batched_(q, k, v, table, plan, scale, method="inplace"), cuda_graph=True)
                row["layer_eager_wall_ms"] = wall_ms(lambda: prune_layer_batched_(q, k, v, table, plan, scale))
                row["layer_eager_wall_unfused_ms"] = wall_ms(
                    lambda: prune_layer_batched_(q, k, v, table, plan, scale, method="inplace"))
                row["per_request_all_layers_device_ms"] = row["layer_device_ms"] * PRUNED_LAYERS / batch
                slots = torch.arange(keep.shape[-1], device=device)
                moved = int(((keep != slots) & (keep >= 0)).sum())
                esize = k.element_size()
                key_bytes = batch * HKV * plen * D * esize
                comp_bytes = 2 * moved * D * esize * 2  # K and V, read + write
                row.update(
                    moved_entries=moved,
                    scores_key_gbs=key_bytes / row["scores_ms"] / 1e6,
                    compact_gbs=comp_bytes / row["compact_ms"] / 1e6,
                    compact_two_pass_gbs=comp_bytes / row["compact_two_pass_ms"] / 1e6,
                )
                if peak:
                    row["scores_key_pct_peak"] = 100 * row["scores_key_gbs"] / peak
                    row["compact_pct_peak"] = 100 * row["compact_gbs"] / peak
                del scores, gsum, keep, lens_dev, res

            def torch_layer():
                sel = score_and_select_batched(q, k, table, plan, scale, cfg.layer_rate, backend="torch")
                compact_batched_(k, v, table, sel.keep, sel.lengths, backend="torch")
                return sel

            sel = torch_layer()
            if "kept_len" not in row:
                row.update(gamma=round(sel.gammas[0], 4), rate=sel.rates[0], kept_len=sel.lengths[0])
            row["torch_layer_wall_ms"] = wall_ms(torch_layer, reps=3 if batch > 8 else 6, warmup=1)
            row["torch_per_request_all_layers_ms"] = row["torch_layer_wall_ms"] * PRUNED_LAYERS / batch
            rows.append(row)
            print({k_: (round(v_, 4) if isinstance(v_, float) else v_) for k_, v_ in row.items()}, flush=True)
            del kv, k, v, table, q, plan, sel
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
                    from benchmarks.gpu.decode_attention import decode_splits

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


def install_pruning(model, images, plen, cfg):
    """Forward hooks running the sync-free PLPHP pipeline on each pruned layer's
    HF DynamicCache right after the layer's attention wrote it (the cache of one
    request, (1, Hkv, P, D), is one paged block of P slots). Returns (hooks, results)."""
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    mc = model.config
    H, D = mc.num_attention_heads, mc.hidden_size // mc.num_attention_heads
    n = mc.num_hidden_layers
    dev = next(model.parameters()).device
    table = torch.zeros(1, 1, dtype=torch.int32, device=dev)
    state = dict(results=[], plan=None)
    hooks = []

    def pre(module, args, kwargs):
        cos, sin = kwargs["position_embeddings"]
        state["last"] = (kwargs["hidden_states"][:, -1:], cos[:, -1:], sin[:, -1:])

    def post(layer_idx):
        def fn(module, args, kwargs, output):
            hs, cos, sin = state["last"]
            q = module.q_proj(hs).view(1, 1, H, D).transpose(1, 2)
            q, _ = apply_rotary_pos_emb(q, q, cos, sin)
            if state["plan"] is None:
                state["plan"] = make_plan([images], [plen], None, dev, cfg)
            layer = kwargs["past_key_values"].layers[layer_idx]
            state["results"].append(prune_layer_batched_(
                q[:, :, 0].contiguous(), layer.keys, layer.values, table, state["plan"], D ** -0.5))
        return fn

    for i, layer in enumerate(model.model.layers):
        if cfg.is_pruned_layer(i, n):
            hooks.append(layer.self_attn.register_forward_pre_hook(pre, with_kwargs=True))
            hooks.append(layer.self_attn.register_forward_hook(post(i), with_kwargs=True))
    return hooks, state


def bench_prefill(args, device, dtype):
    """Prefill of one request (batch 1) by HF Qwen2 (7B shape, random weights, SDPA),
    plain and with the PLPHP pipeline hooked into every pruned layer (sync-free:
    the CPU launches the pruning kernels while the GPU still runs the layer's
    matmuls; one host sync at the end reads the kept lengths, as a step would)."""
    model = build_qwen2(args.smoke, device, dtype)
    hidden = model.config.hidden_size
    cfg = PlphpConfig()
    rows = []
    for n_img, s_img in parse_configs(args.configs):
        plen, spans = prompt_layout(n_img, s_img)
        images = [torch.arange(a, a + n) for a, n in spans]
        x = torch.randn(1, plen, hidden, dtype=dtype, device=device) * 0.02
        last = {}

        def run(prune):
            hooks, state = install_pruning(model, images, plen, cfg) if prune else ([], None)
            try:
                with torch.inference_mode():
                    out = model(inputs_embeds=x, use_cache=True, logits_to_keep=1)
                    if prune:
                        last["lengths"] = torch.stack([r.lengths for r in state["results"]]).cpu()
                        last["rates"] = torch.stack([r.rates for r in state["results"]]).cpu()
                        last["gammas"] = torch.stack([r.gammas for r in state["results"]]).cpu()
            finally:
                for h in hooks:
                    h.remove()
            return out.logits

        plain, pruned = [], []
        run(False), run(True)  # warm-up (Triton compiles for this P)
        for _ in range(args.prefill_reps):  # interleaved, to share drifts
            plain.append(wall_ms(lambda: run(False), reps=1, warmup=0))
            pruned.append(wall_ms(lambda: run(True), reps=1, warmup=0))
        p0, p1 = statistics.median(plain), statistics.median(pruned)
        rates = last["rates"][:, 0].tolist()
        rows.append(dict(
            images=n_img, image_tokens=s_img, prompt_len=plen, prefill_ms=p0, prefill_with_pruning_ms=p1,
            overhead_pct=100 * (p1 - p0) / p0, plain_runs=plain, pruned_runs=pruned,
            rate_mix={str(r): rates.count(r) for r in sorted(set(rates))},
            gamma_range=[float(last["gammas"].min()), float(last["gammas"].max())],
            kept_lens=sorted(set(last["lengths"][:, 0].tolist())),
        ))
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
    pre = {r["prompt_len"]: r for r in res.get("prefill", [])}
    lines.append("Prefill (batch 1, HF Qwen2-7B shape) plain vs with the sync-free PLPHP pipeline hooked into "
                 "the 25 pruned layers:")
    lines.append("| images x tokens | P | prefill ms | with pruning ms | overhead | r_l mix | kept L |")
    lines.append("|---|---|---|---|---|---|---|")
    for r in res.get("prefill", []):
        lines.append(f"| {r['images']}x{r['image_tokens']} | {r['prompt_len']} | {r['prefill_ms']:.1f} | "
                     f"{r['prefill_with_pruning_ms']:.1f} | {r['overhead_pct']:.2f}% | {r['rate_mix']} | "
                     f"{r['kept_lens']} |")
    lines.append("")
    lines.append("Per pruned layer, batch of B requests (device times from CUDA-graph replays; eager wall = "
                 "launch from Python + sync, not overlapped with anything):")
    lines.append("| images x tokens | P | batch | L (r_l) | scores ms | select+compact fused ms | torch select ms "
                 "| compact ms (2-pass) | layer device ms (unfused) | layer eager wall ms (unfused) "
                 "| per request 25 layers device ms | share of prefill | scores GB/s (key) | compact GB/s "
                 "| torch fallback per request ms |")
    lines.append("|" + "---|" * 15)
    for r in res.get("kernels", []):
        p = pre.get(r["prompt_len"], {}).get("prefill_ms")
        if "layer_device_ms" in r:
            share = f"{100 * r['per_request_all_layers_device_ms'] / p:.2f}%" if p else "-"
            lines.append(
                f"| {r['images']}x{r['image_tokens']} | {r['prompt_len']} | {r['batch']} | "
                f"{r['kept_len']} ({r['rate']}) | {r['scores_ms']:.3f} | {r['select_compact_fused_ms']:.3f} | "
                f"{r['select_torch_ms']:.3f} | {r['compact_ms']:.3f} ({r['compact_two_pass_ms']:.3f}) | "
                f"{r['layer_device_ms']:.3f} ({r['layer_device_unfused_ms']:.3f}) | "
                f"{r['layer_eager_wall_ms']:.3f} ({r['layer_eager_wall_unfused_ms']:.3f}) | "
                f"{r['per_request_all_layers_device_ms']:.3f} | {share} | "
                f"{r['scores_key_gbs']:.0f} | {r['compact_gbs']:.0f} | {r['torch_per_request_all_layers_ms']:.2f} |")
        else:
            lines.append(f"| {r['images']}x{r['image_tokens']} | {r['prompt_len']} | {r['batch']} | "
                         f"{r['kept_len']} ({r['rate']}) |" + " - |" * 10 +
                         f" {r['torch_per_request_all_layers_ms']:.2f} |")
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
    ap.add_argument("--prefill-reps", type=int, default=5)
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
