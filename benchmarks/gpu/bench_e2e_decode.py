"""End-to-end decode benchmark in the paper's setting (issue 7).
(Over 300 lines: one self-contained script, so that a single call on a lent
GPU machine runs it.)

Model: HF Qwen2ForCausalLM with the language-model shape of LLaVA-OneVision-7B /
Qwen2-VL-7B (Qwen2-7B: 28 layers, hidden 3584, 28 query / 4 KV heads, head 128,
MLP 18944, vocab 152064), random bf16 weights built from the config (no
download), SDPA attention. Prompt: text + 2 images x 3000 vision tokens + text
(6100 tokens); vision tokens are random embeddings fed through inputs_embeds.

Flow per request:
  1. HF prefill (DynamicCache); forward pre-hooks on every attention module
     capture the last prompt token's post-RoPE query.
  2. PLPHP with the torch reference (vllm_plphp.core.scoring): for each pruned layer
     (0-indexed 2..26) gamma_l, r_l (r=0.4, dr=0.3, alpha=0.25, beta=0.1), and per
     KV head the top-K vision tokens of each image; the layer's DynamicCache
     tensors are replaced by the per-head gathered (compacted) ones. The GPU
     path (vllm_plphp.gpu.score_and_select) is run on the same inputs and its
     choice compared with the reference.
  3. Greedy decode of 256 tokens, stock vs compacted, by a static-buffer decoder
     that runs the HF model's own modules (embedding, RMSNorms, q/k/v/o
     projections, RoPE, MLP, lm_head) and the Triton paged decode-attention
     kernel on per-layer static KV buffers whose length is read on the device,
     so one whole decode step is captured in a CUDA graph and replayed (no CPU
     in the loop). Its first-step logits are checked against HF's own forward
     on the same (stock or compacted) DynamicCache.
  Also timed: HF's own eager decode loop (model(...) per token with the
  DynamicCache, no graph) at batch 1, which is CPU-bound.

Modes: "stock" (no pruning), "gamma" (r_l from gamma_l as the paper; with random
weights gamma_l is about the vision fraction, so all pruned layers get
r_l = 0.7), "r0.4" (r_l = 0.4 on every pruned layer: the mean rate of the
paper's default setting, standing in for a trained model's mix).
Batches > the number of distinct prefilled requests reuse them cyclically.

    python benchmarks/gpu/bench_e2e_decode.py --out $OUT/bench_e2e.json
    python benchmarks/gpu/bench_e2e_decode.py --smoke     # CPU, tiny model
"""

from __future__ import annotations

import argparse
import gc
import time

import torch

from bench_common import build_qwen2, device_info, prompt_layout, save_json, sync
from vllm_plphp.core import scoring
from vllm_plphp.config import PlphpConfig
from benchmarks.gpu.decode_attention import paged_decode_attention  # noqa: E402
from vllm_plphp.gpu import score_and_select


def rope():
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    return apply_rotary_pos_emb


def make_prompt(model, plen, spans, seed, device):
    g = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, plen), generator=g).to(device)
    with torch.inference_mode():
        x = model.model.embed_tokens(ids).clone()
        std = float(x.float().std())
        for a, n in spans:
            x[0, a : a + n] = (torch.randn(n, x.shape[-1], generator=g) * std).to(device, x.dtype)
    return x


def prefill(model, x):
    """HF prefill; returns (per-layer (K, V) of shape (Hkv, P, D), per-layer last-token
    post-RoPE query (H, D), first generated token)."""
    cfg = model.config
    H, D = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    queries, ks_check, hooks = {}, {}, []
    apply = rope()

    def hook(layer_idx):
        def fn(module, args, kwargs):
            hs = kwargs["hidden_states"][:, -1:]
            cos, sin = kwargs["position_embeddings"]
            q = module.q_proj(hs).view(1, 1, H, D).transpose(1, 2)
            k = module.k_proj(hs).view(1, 1, -1, D).transpose(1, 2)
            q, k = apply(q, k, cos[:, -1:], sin[:, -1:])
            queries[layer_idx] = q[0, :, 0].clone()
            ks_check[layer_idx] = k[0, :, 0].clone()

        return fn

    for i, layer in enumerate(model.model.layers):
        hooks.append(layer.self_attn.register_forward_pre_hook(hook(i), with_kwargs=True))
    try:
        with torch.inference_mode():
            out = model(inputs_embeds=x, use_cache=True, logits_to_keep=1)
    finally:
        for h in hooks:
            h.remove()
    cache = out.past_key_values
    kvs = [(layer.keys[0].clone(), layer.values[0].clone()) for layer in cache.layers]
    # the hook's RoPE'd key of the last token must equal what the cache holds
    err = float((ks_check[0].float() - kvs[0][0][:, -1].float()).abs().max())
    assert err < 1e-2, f"captured query/key do not match the cache (max err {err})"
    first = int(out.logits[0, -1].argmax())
    return kvs, [queries[i] for i in range(len(kvs))], first


def plphp_compact(kvs, queries, images, mode, cfg: PlphpConfig, scale, check_gpu=True):
    """Torch-reference PLPHP over one request's per-layer caches. Returns
    (new kvs, per-layer records, gpu agreement)."""
    n = len(kvs)
    vision = torch.cat(images)
    out, records, agree = [], [], []
    for l, (k, v) in enumerate(kvs):
        if mode == "stock" or not cfg.is_pruned_layer(l, n):
            out.append((k, v))
            continue
        hkv, total, d = k.shape
        probs = scoring.last_token_attention(queries[l], k, scale)
        gamma = scoring.vision_score(probs, vision)
        rate = cfg.layer_rate(gamma) if mode == "gamma" else float(mode[1:])
        scores = scoring.kv_head_scores(probs, hkv, cfg.gqa_reduce)
        keep = scoring.select_kept(scores, images, rate, total)
        idx = keep[..., None].expand(-1, -1, d)
        out.append((k.gather(1, idx), v.gather(1, idx)))
        records.append(dict(layer=l, gamma=round(gamma, 4), rate=rate, kept=keep.shape[1], total=total))
        if check_gpu:
            # the GPU path on the same cache, seen as one paged block of `total` slots
            g_keep, g_gamma, g_rate = score_and_select(
                queries[l], k[None], torch.zeros(1, dtype=torch.long, device=k.device), total, total,
                images, scale, (lambda g: rate), cfg.gqa_reduce)
            same = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(g_keep, keep))
            agree.append(same / keep.numel())
            assert abs(g_gamma - gamma) < 1e-3, (l, g_gamma, gamma)
    return out, records, (min(agree) if agree else None)


def kv_bytes(kvs):
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kvs)


class StaticDecoder:
    """Greedy decode over static per-layer KV buffers (B, Hkv, cap_l, D) with
    per-(layer, request) lengths on the device; the HF model's modules do
    everything but attention (Triton paged decode attention, or the torch
    fallback on CPU). CUDA: one step is captured in a CUDA graph."""

    def __init__(self, model, requests, first_tokens, prompt_len, new_tokens):
        cfg = model.config
        self.model, self.new_tokens = model, new_tokens
        self.B = B = len(requests)
        self.H = cfg.num_attention_heads
        self.D = cfg.hidden_size // self.H
        self.Hkv = cfg.num_key_value_heads
        dev = requests[0][0][0].device
        self.dev, self.scale = dev, self.D ** -0.5
        n_layers = len(requests[0])
        self.kb, self.vb, self.splits = [], [], []
        lens = torch.zeros(n_layers, B, dtype=torch.int32)
        for l in range(n_layers):
            cap = max(r[l][0].shape[1] for r in requests) + new_tokens
            kb = torch.zeros(B, self.Hkv, cap, self.D, dtype=requests[0][l][0].dtype, device=dev)
            vb = torch.zeros_like(kb)
            for b, r in enumerate(requests):
                n = r[l][0].shape[1]
                kb[b, :, :n] = r[l][0]
                vb[b, :, :n] = r[l][1]
                lens[l, b] = n
            self.kb.append(kb)
            self.vb.append(vb)
            if dev.type == "cuda":
                from benchmarks.gpu.decode_attention import decode_splits

                sms = torch.cuda.get_device_properties(dev).multi_processor_count
                self.splits.append(decode_splits(B, self.Hkv, cap, sms))
            else:
                self.splits.append(None)
        self.lens0 = lens.to(dev)
        self.lens = self.lens0.clone()
        self.table = torch.arange(B, dtype=torch.int32, device=dev)[:, None]
        self.bidx = torch.arange(B, device=dev)
        self.tok0 = torch.tensor(first_tokens, dtype=torch.long, device=dev)
        self.tok = self.tok0.clone()
        self.pos0 = torch.full((B,), prompt_len, dtype=torch.long, device=dev)
        self.pos = self.pos0.clone()
        self.step_i = torch.zeros(1, dtype=torch.long, device=dev)
        self.tokens = torch.zeros(B, new_tokens + 1, dtype=torch.long, device=dev)
        self.logits = None
        self.graph = None
        self.apply = rope()

    def reset(self):
        self.lens.copy_(self.lens0)
        self.tok.copy_(self.tok0)
        self.pos.copy_(self.pos0)
        self.step_i.zero_()

    @torch.inference_mode()
    def step(self):
        m, B, H, D, Hkv = self.model.model, self.B, self.H, self.D, self.Hkv
        h = m.embed_tokens(self.tok)[:, None]
        cos, sin = m.rotary_emb(h, self.pos[:, None])
        for l, layer in enumerate(m.layers):
            a = layer.self_attn
            r = layer.input_layernorm(h)
            q = a.q_proj(r).view(B, 1, H, D).transpose(1, 2)
            k = a.k_proj(r).view(B, 1, Hkv, D).transpose(1, 2)
            v = a.v_proj(r).view(B, 1, Hkv, D).transpose(1, 2)
            q, k = self.apply(q, k, cos, sin)
            at = self.lens[l].long()
            self.kb[l][self.bidx, :, at] = k[:, :, 0]
            self.vb[l][self.bidx, :, at] = v[:, :, 0]
            o = paged_decode_attention(
                q[:, :, 0].contiguous(), self.kb[l], self.vb[l], self.table, self.lens[l] + 1, self.scale,
                num_splits=self.splits[l])
            h = h + a.o_proj(o.reshape(B, 1, H * D))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        logits = self.model.lm_head(m.norm(h))[:, 0]
        self.logits = logits
        nxt = logits.argmax(-1)
        self.tokens.scatter_(1, self.step_i.expand(B)[:, None], nxt[:, None])
        self.step_i += 1
        self.tok.copy_(nxt)
        self.pos += 1
        self.lens += 1

    def capture(self):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                self.step()
        torch.cuda.current_stream().wait_stream(s)
        self.reset()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step()
        self.reset()

    def run(self, steps):
        if self.graph is not None:
            for _ in range(steps):
                self.graph.replay()
        else:
            for _ in range(steps):
                self.step()

    def time_per_token_ms(self, steps):
        self.reset()
        sync()
        t = time.perf_counter()
        if self.dev.type == "cuda":
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            self.run(steps)
            e1.record()
            torch.cuda.synchronize()
            dev_ms = e0.elapsed_time(e1) / steps
        else:
            self.run(steps)
            dev_ms = None
        wall = (time.perf_counter() - t) * 1e3 / steps
        return wall, dev_ms


def hf_cache(kvs):
    from transformers import DynamicCache

    c = DynamicCache()
    for l, (k, v) in enumerate(kvs):
        c.update(k[None].clone(), v[None].clone(), l)
    return c


def hf_decode(model, kvs, first, prompt_len, steps, sdpa_backends=None):
    """HF's own eager decode loop (batch 1). Returns (wall ms per token, tokens, first-step logits).
    sdpa_backends: restrict torch SDPA to these backends (None: torch's own choice)."""
    import contextlib

    ctx = contextlib.nullcontext()
    if sdpa_backends:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        ctx = sdpa_kernel([getattr(SDPBackend, b) for b in sdpa_backends])
    with ctx, torch.inference_mode():
        return _hf_decode(model, kvs, first, prompt_len, steps)


def _hf_decode(model, kvs, first, prompt_len, steps):
    cache = hf_cache(kvs)
    dev = kvs[0][0].device
    tok = torch.tensor([[first]], device=dev)
    toks, first_logits = [], None
    sync()
    t = time.perf_counter()
    for i in range(steps):
        out = model(input_ids=tok, past_key_values=cache, use_cache=True,
                    position_ids=torch.tensor([[prompt_len + i]], device=dev))
        if first_logits is None:
            first_logits = out.logits[0, -1].float().clone()
        tok = out.logits[:, -1:].argmax(-1)
        toks.append(int(tok))  # host sync per token, as generate() does
    sync()
    return (time.perf_counter() - t) * 1e3 / steps, toks, first_logits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--image-tokens", type=int, default=3000)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--distinct", type=int, default=4, help="distinct prefilled requests (reused cyclically)")
    ap.add_argument("--modes", default="stock,gamma,r0.4")
    ap.add_argument("--hf-steps", type=int, default=32)
    ap.add_argument("--no-graph", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.smoke:
        args.image_tokens, args.new_tokens, args.batches, args.distinct, args.hf_steps = 60, 8, "1,3", 2, 4
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    batches = [int(b) for b in args.batches.split(",")]
    modes = args.modes.split(",")
    res = dict(device=device_info(), args=vars(args))

    t0 = time.perf_counter()
    model = build_qwen2(args.smoke, device, dtype)
    res["model_build_s"] = time.perf_counter() - t0
    cfg = PlphpConfig()
    n_layers = model.config.num_hidden_layers
    head = model.config.hidden_size // model.config.num_attention_heads
    scale = head ** -0.5
    plen, spans = prompt_layout(args.images, args.image_tokens)
    images = [torch.arange(a, a + n, device=device) for a, n in spans]
    res["prompt_len"], res["vision_tokens"] = plen, sum(n for _, n in spans)
    print(res["device"], "prompt", plen, flush=True)

    reqs, pre_ms = [], []
    for i in range(args.distinct):
        x = make_prompt(model, plen, spans, seed=i, device=device)
        sync()
        t = time.perf_counter()
        reqs.append(prefill(model, x))
        sync()
        pre_ms.append((time.perf_counter() - t) * 1e3)
    res["prefill_ms"] = pre_ms

    compacted, res["modes"] = {}, {}
    for mode in modes:
        kvl, recs, agree, comp_ms = [], None, [], []
        for i, (kvs, qs, _) in enumerate(reqs):
            sync()
            t = time.perf_counter()
            new, r, a = plphp_compact(kvs, qs, images, mode, cfg, scale, check_gpu=True)
            sync()
            comp_ms.append((time.perf_counter() - t) * 1e3)
            kvl.append(new)
            agree.append(a)
            recs = recs or r
        compacted[mode] = kvl
        info = dict(kv_bytes_prefill=kv_bytes(kvl[0]), layers=recs,
                    gpu_keep_agreement_min=min((a for a in agree if a is not None), default=None),
                    reference_compaction_ms=comp_ms)
        if recs:
            rates = [r["rate"] for r in recs]
            info["rate_mix"] = {str(x): rates.count(x) for x in sorted(set(rates))}
            info["gamma_range"] = [min(r["gamma"] for r in recs), max(r["gamma"] for r in recs)]
        res["modes"][mode] = info
        print(mode, {k: v for k, v in info.items() if k != "layers"}, flush=True)
    stock_bytes = res["modes"]["stock"]["kv_bytes_prefill"] if "stock" in res["modes"] else None
    per_tok = 2 * n_layers * model.config.num_key_value_heads * head * 2  # bytes per token, all layers
    for mode, info in res["modes"].items():
        info["kv_bytes_end"] = info["kv_bytes_prefill"] + args.new_tokens * per_tok
        if stock_bytes:
            info["kv_ratio_prefill"] = info["kv_bytes_prefill"] / stock_bytes
            info["kv_ratio_end"] = info["kv_bytes_end"] / res["modes"]["stock"]["kv_bytes_end"]

    # HF's own eager decode (batch 1) and first-step logits reference
    hf = {}
    for mode in modes:
        kvs = compacted[mode][0]
        try:
            ms, toks, lg = hf_decode(model, kvs, reqs[0][2], plen, args.hf_steps)
            hf[mode] = dict(ms_per_token=ms, tokens=toks[:16], logits=lg)
        except Exception as exc:  # record, keep going
            hf[mode] = dict(error=repr(exc))
        print("hf eager", mode, {k: v for k, v in hf[mode].items() if k != "logits"}, flush=True)
        if device == "cuda":
            try:
                ms2, toks2, _ = hf_decode(model, kvs, reqs[0][2], plen, args.hf_steps,
                                          ["FLASH_ATTENTION", "EFFICIENT_ATTENTION"])
                hf[mode]["ms_per_token_flash_or_efficient_sdpa"] = ms2
            except Exception as exc:
                hf[mode]["flash_error"] = repr(exc)
            print("hf eager (flash/efficient SDPA only)", mode,
                  hf[mode].get("ms_per_token_flash_or_efficient_sdpa", hf[mode].get("flash_error")), flush=True)

    res["decode"] = []
    for batch in batches:
        for mode in modes:
            rq = [compacted[mode][i % args.distinct] for i in range(batch)]
            firsts = [reqs[i % args.distinct][2] for i in range(batch)]
            dec = StaticDecoder(model, rq, firsts, plen, args.new_tokens)
            row = dict(batch=batch, mode=mode)
            # first step eagerly: check against HF's forward on the same cache
            dec.reset()
            dec.step()
            if "logits" in hf.get(mode, {}):
                ref = hf[mode]["logits"]
                got = dec.logits[0].float()
                row["first_step_logits_rel_err_vs_hf"] = float((got - ref).norm() / ref.norm())
                row["first_token_equal_hf"] = bool(int(got.argmax()) == int(ref.argmax()))
            graph_ok = False
            if device == "cuda" and not args.no_graph:
                try:
                    dec.capture()
                    graph_ok = True
                except Exception as exc:
                    row["graph_error"] = repr(exc)
                    dec.graph = None
            row["cuda_graph"] = graph_ok
            dec.time_per_token_ms(8)  # warm
            wall, dev_ms = dec.time_per_token_ms(args.new_tokens)
            row["ms_per_token"] = wall
            row["device_ms_per_token"] = dev_ms
            row["tokens_head"] = dec.tokens[0, :8].tolist()
            if batch == 1 and "tokens" in hf.get(mode, {}):
                n_cmp = min(8, len(hf[mode]["tokens"]))
                row["greedy_equal_hf_first8"] = dec.tokens[0, :n_cmp].tolist() == hf[mode]["tokens"][:n_cmp]
            row["kv_bytes_batch"] = sum(kb.numel() * kb.element_size() * 2 for kb in dec.kb)
            res["decode"].append(row)
            print(row, flush=True)
            del dec
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
    for mode in modes:
        hf.get(mode, {}).pop("logits", None)
    res["hf_eager"] = hf
    save_json(args.out, res)
    print(summarize(res))


def summarize(res):
    lines = [f"prompt {res['prompt_len']} tokens ({res['vision_tokens']} vision); prefill ms "
             f"{[round(x, 1) for x in res['prefill_ms']]}"]
    lines.append("| mode | r_l mix (pruned layers) | KV bytes/request after prefill | ratio | after +new tokens ratio |")
    lines.append("|---|---|---|---|---|")
    for mode, m in res["modes"].items():
        lines.append(f"| {mode} | {m.get('rate_mix', '-')} | {m['kv_bytes_prefill'] / 2**20:.1f} MiB | "
                     f"{m.get('kv_ratio_prefill', 1):.3f} | {m.get('kv_ratio_end', 1):.3f} |")
    lines.append("")
    lines.append("| batch | mode | ms/token (graph) | vs stock | first-step logits rel err vs HF |")
    lines.append("|---|---|---|---|---|")
    stock = {r["batch"]: r["ms_per_token"] for r in res["decode"] if r["mode"] == "stock"}
    for r in res["decode"]:
        s = stock.get(r["batch"])
        ratio = "-" if not s else f"{r['ms_per_token'] / s:.3f}"
        lines.append(f"| {r['batch']} | {r['mode']} | {r['ms_per_token']:.3f} | {ratio} | "
                     f"{r.get('first_step_logits_rel_err_vs_hf', '-')} |")
    lines.append("")
    for mode, h in res.get("hf_eager", {}).items():
        lines.append(f"HF eager decode, batch 1, {mode}: {h.get('ms_per_token', h.get('error'))} ms/token; "
                     f"SDPA restricted to flash/efficient: {h.get('ms_per_token_flash_or_efficient_sdpa', '-')}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
