"""Checks of `vllm_plphp.gpu` against the torch oracle, shared by
tests/gpu/test_kernels.py (CPU fallback, Triton interpreter, CUDA) and usable
as a plain script on a GPU machine without pytest (one file, over 300 lines,
because the GPU machine runs it alone: it must carry every check):

    python -m tests.gpu.kernel_checks            # CUDA, Triton backend
    TRITON_INTERPRET=1 python -m tests.gpu.kernel_checks --interpret   # CPU

Every check draws fresh random inputs (randomly permuted block tables, several
requests, images at arbitrary positions) and raises AssertionError on failure.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from vllm_plphp.core import compaction, scoring
from vllm_plphp.config import PlphpConfig
from benchmarks.gpu.decode_attention import paged_decode_attention  # noqa: E402
from vllm_plphp.gpu import (
    compact_,
    compact_batched_,
    kept_counts_device,
    last_token_scores_batched,
    make_plan,
    prune_layer_batched_,
    score_and_select,
    select_kept_batched,
)


def make_requests(gen, prompt_lens, images_per_req, extra=0, text_gap=(1, 40)):
    """Random image layouts: per request, images placed between text segments."""
    reqs = []
    for plen, n_img in zip(prompt_lens, images_per_req):
        imgs = []
        if n_img:
            budget = plen - 1  # the last prompt token is text
            sizes = torch.randint(1, max(2, budget // n_img - text_gap[1]), (n_img,), generator=gen).tolist()
            pos = int(torch.randint(0, text_gap[1], (1,), generator=gen))
            for s in sizes:
                s = max(1, min(s, budget - pos - n_img))
                if s <= 0 or pos + s > budget:
                    break
                imgs.append(torch.arange(pos, pos + s))
                pos += s + int(torch.randint(text_gap[0], text_gap[1], (1,), generator=gen))
        reqs.append(imgs)
    totals = [p + extra for p in prompt_lens]
    return reqs, totals


def paged_batch(gen, device, dtype, total_lens, num_kv_heads, head_size, block_size, spare=3, vllm_layout=True):
    """A shared paged pool (vLLM FLASH_ATTN layout when vllm_layout: K/V strided
    views of one (nb, Hkv, bs, 2D) tensor) and a permuted block table (B, n) int32."""
    nblk = [-(-t // block_size) for t in total_lens]
    num_blocks = sum(nblk) + spare
    perm = torch.randperm(num_blocks, generator=gen)
    table = torch.zeros(len(total_lens), max(nblk), dtype=torch.int32)
    o = 0
    for b, n in enumerate(nblk):
        table[b, :n] = perm[o : o + n]
        o += n
    if vllm_layout:
        kv = torch.randn(num_blocks, num_kv_heads, block_size, 2 * head_size, generator=gen).to(device, dtype)
        k, v = kv[..., :head_size], kv[..., head_size:]
    else:
        kv = None
        k = torch.randn(num_blocks, num_kv_heads, block_size, head_size, generator=gen).to(device, dtype)
        v = torch.randn(num_blocks, num_kv_heads, block_size, head_size, generator=gen).to(device, dtype)
    return kv, k, v, table.to(device)


def _tol(dtype):
    return dict(rtol=2e-4, atol=2e-6) if dtype == torch.float32 else dict(rtol=2e-3, atol=2e-5)


def check_scores(device="cpu", dtype=torch.float32, backend=None, seed=0, batch=3, num_heads=8,
                 num_kv_heads=2, head_size=64, block_size=16, max_prompt=300, reduce="mean"):
    gen = torch.Generator().manual_seed(seed)
    plens = torch.randint(8, max_prompt, (batch,), generator=gen).tolist()
    nimg = torch.randint(0, 4, (batch,), generator=gen).tolist()
    images, totals = make_requests(gen, plens, nimg, extra=3)
    _, k, _, table = paged_batch(gen, device, dtype, totals, num_kv_heads, head_size, block_size)
    q = torch.randn(batch, num_heads, head_size, generator=gen).to(device, dtype)
    scale = head_size ** -0.5 * 4  # sharper than 1/sqrt(D): larger logits stress softmax
    plan = make_plan(images, plens, totals, device)
    scores, gsum, probs = last_token_scores_batched(q, k, table, plan, scale, reduce, True, backend)
    for b, plen in enumerate(plens):
        keys = compaction.gather(k, table[b].long(), plen)
        ref = scoring.last_token_attention(q[b], keys, scale)
        torch.testing.assert_close(probs[b, :, :plen], ref, **_tol(dtype))
        torch.testing.assert_close(scores[b, :, :plen], scoring.kv_head_scores(ref, num_kv_heads, reduce), **_tol(dtype))
        vis = torch.cat(images[b]).to(device) if images[b] else torch.zeros(0, dtype=torch.long, device=device)
        gamma = float(gsum[b]) / num_heads
        assert abs(gamma - scoring.vision_score(ref, vis)) < 1e-4, (gamma, scoring.vision_score(ref, vis))
    return plens


def check_select(device="cpu", seed=0, batch=5, num_kv_heads=4, max_prompt=400):
    gen = torch.Generator().manual_seed(seed)
    plens = torch.randint(4, max_prompt, (batch,), generator=gen).tolist()
    nimg = torch.randint(0, 5, (batch,), generator=gen).tolist()
    images, _ = make_requests(gen, plens, nimg)
    totals = [p + int(e) for p, e in zip(plens, torch.randint(0, 5, (batch,), generator=gen))]
    # non-contiguous image positions too: reverse-interleave one image
    if images[0]:
        images[0][0] = images[0][0].flip(0)
    scores = torch.rand(batch, num_kv_heads, max(plens), generator=gen).to(device)
    rates = [float(r) for r in torch.tensor([0.1, 0.4, 0.7, 1.0, 0.05])[torch.randint(0, 5, (batch,), generator=gen)]]
    plan = make_plan(images, plens, totals, device)
    keep, lengths = select_kept_batched(scores, plan, rates)
    for b in range(batch):
        ref = scoring.select_kept(scores[b, :, : plens[b]], [p.to(device) for p in images[b]], rates[b], totals[b])
        assert lengths[b] == ref.shape[1]
        assert torch.equal(keep[b, :, : lengths[b]], ref), b
        assert bool((keep[b, :, lengths[b]:] == -1).all())


def check_score_and_select(device="cpu", dtype=torch.float32, backend=None, seed=0, num_heads=8,
                           num_kv_heads=2, head_size=64, block_size=16, prompt=500):
    """Whole per-layer pipeline on one request against the oracle pipeline."""
    gen = torch.Generator().manual_seed(seed)
    images, totals = make_requests(gen, [prompt], [2], extra=2)
    _, k, _, table = paged_batch(gen, device, dtype, totals, num_kv_heads, head_size, block_size)
    q = torch.randn(num_heads, head_size, generator=gen).to(device, dtype)
    cfg = PlphpConfig()
    scale = head_size ** -0.5
    imgs = [p.to(device) for p in images[0]]
    keep, gamma, rate = score_and_select(q, k, table[0].long(), prompt, totals[0], imgs, scale, cfg.layer_rate,
                                         backend=backend)
    probs = scoring.last_token_attention(q, compaction.gather(k, table[0].long(), prompt), scale)
    g_ref = scoring.vision_score(probs, torch.cat(imgs))
    assert abs(gamma - g_ref) < 1e-4
    r_ref = cfg.layer_rate(g_ref)
    assert rate == r_ref
    ref = scoring.select_kept(scoring.kv_head_scores(probs, num_kv_heads), imgs, r_ref, totals[0])
    assert keep.shape == ref.shape
    _assert_same_up_to_ties(keep, ref, scoring.kv_head_scores(probs, num_kv_heads))


def check_kept_counts_device(device="cpu", seed=0):
    """Device K_j / L rule == host `scoring.num_kept` rule, boundary cases included."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [[10, 3, 1], [7000, 1234], [576], [], [5, 0]]
    plens = [max(1, sum(r) + 5) for r in sizes]
    images = [[torch.arange(sum(r[:j]), sum(r[:j]) + n) for j, n in enumerate(r)] for r in sizes]
    plan = make_plan(images, plens, [p + 2 for p in plens], device)
    for rates in ([0.7, 0.4, 0.1, 1.0, 0.3], [0.1 * i for i in (1, 3, 7, 5, 9)],
                  torch.rand(5, generator=gen, dtype=torch.float64).tolist()):
        k_dev, l_dev = kept_counts_device(plan, torch.tensor(rates, dtype=torch.float64, device=device))
        k_host, l_host = plan.kept_counts(rates)
        assert l_dev.tolist() == l_host, (rates, l_dev.tolist(), l_host)
        for b, r in enumerate(k_host):
            assert k_dev[b, : len(r)].tolist() == r


def check_prune_layer(device="cpu", dtype=torch.float32, backend=None, seed=0, num_heads=8, num_kv_heads=2,
                      head_size=64, block_size=16, max_prompt=400, reduce="mean", method="fused",
                      zero_query=False):
    """The sync-free device pipeline (scores, gamma, device r_l, select, compact)
    against the oracle pipeline, per-request configs covering all three r_l cases."""
    gen = torch.Generator().manual_seed(seed)
    batch = 4
    plens = torch.randint(60, max_prompt, (batch,), generator=gen).tolist()
    images, totals = make_requests(gen, plens, [2, 1, 3, 2], extra=2)
    kv, k, v, table = paged_batch(gen, device, dtype, totals, num_kv_heads, head_size, block_size)
    q = torch.randn(batch, num_heads, head_size, generator=gen).to(device, dtype)
    if zero_query:  # uniform attention: every score of an image ties
        q.zero_()
    cfgs = [PlphpConfig(), PlphpConfig(alpha=0.95, beta=0.9), PlphpConfig(alpha=0.01, beta=0.0),
            PlphpConfig(r=0.3, delta_r=0.2)]
    scale = head_size ** -0.5
    plan = make_plan(images, plens, totals, device, configs=cfgs)
    k0, v0 = k.clone(), v.clone()
    res = prune_layer_batched_(q, k, v, table, plan, scale, reduce, backend=backend, method=method,
                               return_keep=True)
    lengths = res.lengths.tolist()
    for b in range(batch):
        ids = table[b].long()
        probs = scoring.last_token_attention(q[b], compaction.gather(k0, ids, plens[b]), scale)
        imgs = [p.to(device) for p in images[b]]
        gamma = scoring.vision_score(probs, torch.cat(imgs)) if imgs else 0.0
        assert abs(float(res.gammas[b]) - gamma) < 1e-4, (b, float(res.gammas[b]), gamma)
        rate = cfgs[b].layer_rate(gamma)
        assert float(res.rates[b]) == rate, (b, float(res.rates[b]), rate)
        sc = scoring.kv_head_scores(probs, num_kv_heads, reduce)
        ref = scoring.select_kept(sc, imgs, rate, totals[b])
        assert lengths[b] == ref.shape[1]
        keep = res.keep[b, :, : lengths[b]]
        assert bool((res.keep[b, :, lengths[b]:] == -1).all())
        _assert_same_up_to_ties(keep, ref, sc, None if zero_query else 0.01, images=imgs)
        # the cache holds, per head, the entries of the kernel's own keep, in order
        dense_k0 = compaction.gather(k0, ids, totals[b])
        dense_v0 = compaction.gather(v0, ids, totals[b])
        got_k = compaction.gather(k, ids, lengths[b])
        got_v = compaction.gather(v, ids, lengths[b])
        for h in range(num_kv_heads):
            assert torch.equal(got_k[h], dense_k0[h, keep[h]]) and torch.equal(got_v[h], dense_v0[h, keep[h]])
    # other requests' / free blocks untouched
    used = set(table[table >= 0].tolist())
    free = [i for i in range(k.shape[0]) if i not in used]
    assert torch.equal(k[free], k0[free]) and torch.equal(v[free], v0[free])
    if kv is not None:
        assert kv.data_ptr() == k.data_ptr()


def _assert_same_up_to_ties(keep, ref, ref_scores, max_diff_frac=0.01, mass_tol=1e-5, images=None):
    """keep equals ref except where near-equal scores swapped places: same size,
    same count per image, and the oracle-score mass of the differing entries equal.
    max_diff_frac=None allows any number of swaps (all-tied scores)."""
    for h in range(keep.shape[0]):
        a, r = set(keep[h].tolist()), set(ref[h].tolist())
        assert len(a) == len(r) == keep.shape[1], h
        for img in images or []:
            img = set(img.tolist())
            assert len(a & img) == len(r & img), (h, len(a & img), len(r & img))
        diff = len(a - r)
        if max_diff_frac is not None:
            assert diff <= max(2, max_diff_frac * len(r)), (h, diff)
        if diff:
            s = ref_scores[h].double().cpu()
            only_a = torch.tensor(sorted(a - r))
            only_r = torch.tensor(sorted(r - a))
            only_a = only_a[only_a < s.numel()]
            only_r = only_r[only_r < s.numel()]
            assert abs(float(s[only_a].sum() - s[only_r].sum())) <= mass_tol, h


def random_keep(gen, num_kv_heads, total, length, identity_prefix=0):
    """Per head an ascending random subset of size length (keep[i] >= i holds)."""
    rows = []
    for _ in range(num_kv_heads):
        rest = torch.randperm(total - identity_prefix, generator=gen)[: length - identity_prefix] + identity_prefix
        rows.append(torch.cat([torch.arange(identity_prefix), rest.sort().values]))
    return torch.stack(rows)


def check_compact(device="cpu", dtype=torch.float32, backend=None, method="inplace", seed=0, batch=4,
                  num_kv_heads=4, head_size=64, block_size=16, max_total=600, vllm_layout=True):
    gen = torch.Generator().manual_seed(seed)
    totals = torch.randint(1, max_total, (batch,), generator=gen).tolist()
    kv, k, v, table = paged_batch(gen, device, dtype, totals, num_kv_heads, head_size, block_size,
                                  vllm_layout=vllm_layout)
    lengths, keeps = [], []
    for t in totals:
        frac = float(torch.rand(1, generator=gen)) * 0.9 + 0.05
        length = max(1, int(t * frac))
        prefix = int(torch.randint(0, length + 1, (1,), generator=gen))
        keeps.append(random_keep(gen, num_kv_heads, t, length, prefix))
        lengths.append(length)
    lmax = max(lengths)
    keep = torch.full((batch, num_kv_heads, lmax), -1, dtype=torch.long)
    for b, kp in enumerate(keeps):
        keep[b, :, : kp.shape[1]] = kp
    keep = keep.to(device)
    k_ref, v_ref = k.clone(), v.clone()
    for b in range(batch):
        compaction.compact_(k_ref, v_ref, table[b].long(), keep[b, :, : lengths[b]])
    compact_batched_(k, v, table, keep, lengths, backend=backend, method=method)
    assert torch.equal(k, k_ref) and torch.equal(v, v_ref)
    # single-request form, oracle signature
    k2, v2 = k.clone(), v.clone()
    k3, v3 = k.clone(), v.clone()
    compact_(k2, v2, table[0].long(), keep[0, :, : lengths[0]], backend=backend, method=method)
    compaction.compact_(k3, v3, table[0].long(), keep[0, :, : lengths[0]])
    assert torch.equal(k2, k3) and torch.equal(v2, v3)


def check_decode(device="cpu", dtype=torch.float32, backend=None, seed=0, batch=3, num_heads=8,
                 num_kv_heads=2, head_size=64, block_size=16, max_len=500, num_splits=None):
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, max_len, (batch,), generator=gen).tolist()
    _, k, v, table = paged_batch(gen, device, dtype, lens, num_kv_heads, head_size, block_size)
    q = torch.randn(batch, num_heads, head_size, generator=gen).to(device, dtype)
    seq = torch.tensor(lens, dtype=torch.int32, device=device)
    scale = head_size ** -0.5
    out = paged_decode_attention(q, k, v, table, seq, scale, num_splits=num_splits, backend=backend)
    group = num_heads // num_kv_heads
    for b, n in enumerate(lens):
        kk = compaction.gather(k, table[b].long(), n).double().repeat_interleave(group, 0)
        vv = compaction.gather(v, table[b].long(), n).double().repeat_interleave(group, 0)
        ref = torch.softmax(q[b].double()[:, None] @ kk.transpose(1, 2) * scale, -1) @ vv
        err = float((out[b].double() - ref[:, 0]).norm() / ref.norm())
        assert err < (1e-5 if dtype == torch.float32 else 1e-2), (b, err)


def run_all(device, dtype, backend, real_shapes=False, seeds=(0, 1, 2)):
    """Every check at small shapes; with real_shapes also Qwen2-7B-like shapes."""
    results = []

    def run(name, fn, **kw):
        t = time.perf_counter()
        fn(**kw)
        results.append((name, time.perf_counter() - t))

    for seed in seeds:
        run(f"scores mean seed{seed}", check_scores, device=device, dtype=dtype, backend=backend, seed=seed)
        run(f"scores max seed{seed}", check_scores, device=device, dtype=dtype, backend=backend, seed=seed, reduce="max")
        run(f"select seed{seed}", check_select, device=device, seed=seed)
        run(f"score_and_select seed{seed}", check_score_and_select, device=device, dtype=dtype, backend=backend, seed=seed)
        for method in ("inplace", "two_pass"):
            run(f"compact {method} seed{seed}", check_compact, device=device, dtype=dtype, backend=backend,
                method=method, seed=seed)
        run(f"compact separate K/V seed{seed}", check_compact, device=device, dtype=dtype, backend=backend,
            seed=seed, vllm_layout=False)
        run(f"decode seed{seed}", check_decode, device=device, dtype=dtype, backend=backend, seed=seed)
        run(f"kept counts device seed{seed}", check_kept_counts_device, device=device, seed=seed)
        for method in ("fused", "inplace"):
            run(f"prune layer {method} seed{seed}", check_prune_layer, device=device, dtype=dtype, backend=backend,
                seed=seed, method=method)
        run(f"prune layer fused, all scores tied, seed{seed}", check_prune_layer, device=device, dtype=dtype,
            backend=backend, seed=seed, zero_query=True)
    if real_shapes:
        real = dict(num_heads=28, num_kv_heads=4, head_size=128, block_size=16)
        run("scores real", check_scores, device=device, dtype=dtype, backend=backend, batch=4, max_prompt=9000, **real)
        run("score_and_select real", check_score_and_select, device=device, dtype=dtype, backend=backend,
            prompt=7000, **real)
        for method in ("inplace", "two_pass"):
            for seed in range(3):
                run(f"compact real {method} seed{seed}", check_compact, device=device, dtype=dtype, backend=backend,
                    method=method, seed=10 + seed, batch=8, max_total=9000, num_kv_heads=4, head_size=128)
        for method in ("fused", "inplace"):
            run(f"prune layer real {method}", check_prune_layer, device=device, dtype=dtype, backend=backend,
                max_prompt=9000, method=method, **real)
        run("decode real", check_decode, device=device, dtype=dtype, backend=backend, batch=8, max_len=9000, **real)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--interpret", action="store_true", help="CPU tensors, Triton interpreter (float32)")
    parser.add_argument("--real-shapes", action="store_true")
    args = parser.parse_args(argv)
    if args.interpret:
        res = run_all("cpu", torch.float32, "triton", seeds=(0,))
    else:
        assert torch.cuda.is_available(), "needs CUDA (or --interpret)"
        res = []
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            res += [(f"{dtype} {n}", t) for n, t in run_all("cuda", dtype, "triton", args.real_shapes)]
    for name, t in res:
        print(f"PASS {name} ({t:.2f}s)")
    print(f"all {len(res)} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
