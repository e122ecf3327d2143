"""The batched torch path (`vllm_plphp.core.batched`, what PLPHP layers run on
CPU) against the per-request torch path (`prune._prune`, the oracle FastV /
VTW still take) on the same inputs: same kept lengths, rates and gammas, the
same kept entries in every head, blocks of other requests untouched. Both
KV layouts (CPU_ATTN's tiles, FLASH_ATTN / TRITON_ATTN's split entries),
requests of different lengths and image counts in one step, all three layer
categories. No engine; a fake runner adapter (the seam)."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from vllm_plphp.config import PlphpConfig
from vllm_plphp.core import batched, cpu_kernel, kv_layout, prune
from vllm_plphp.core.plan import PruneTarget
from vllm_plphp.core.worker import PlphpWorker

LAYER = "model.layers.3.self_attn.attn"
HEADS, KV_HEADS, HEAD, BLOCK = 8, 2, 16, 8


class FakeAdapter:
    def __init__(self, table, totals):
        self.table, self.totals = table, totals
        self.commits = {}

    def block_ids(self, gid, target):
        return self.table[target.row, : -(-target.total_len // BLOCK)].long()

    def group_table(self, gid):
        return self.table

    def commit(self, gid, target, kept):
        self.commits[target.req_id] = kept


def make_step(seed, layout, extra):
    gen = torch.Generator().manual_seed(seed)
    plens = [70, 45, 96]
    images = [[torch.arange(3, 30), torch.arange(33, 60)], [torch.arange(5, 40)],
              [torch.arange(2, 20), torch.arange(22, 50), torch.arange(51, 90)]]
    totals = [p + extra for p in plens]
    nblk = [-(-t // BLOCK) for t in totals]
    num_blocks = sum(nblk) + 4
    perm = torch.randperm(num_blocks, generator=gen)
    rows = [2, 0, 3]  # batch rows out of order, and a row of no target (row 1)
    table = torch.zeros(4, max(nblk) + 2, dtype=torch.int32)  # zero padding, as V1 has
    o = 0
    for b, n in enumerate(nblk):
        table[rows[b], :n] = perm[o: o + n]
        o += n
    kv = torch.randn(num_blocks, KV_HEADS, BLOCK, 2 * HEAD, generator=gen)
    query = torch.randn(sum(totals), HEADS, HEAD, generator=gen) * 3
    starts = [sum(totals[:i]) for i in range(3)]
    thresholds = [dict(alpha=0.0, beta=0.0), dict(alpha=1.0, beta=1.0), dict(alpha=1.0, beta=0.0)]
    targets = [PruneTarget(row=rows[b], slot=rows[b], req_id=f"r{b}", query_index=starts[b] + plens[b] - 1,
                           prompt_len=plens[b], total_len=totals[b], images=images[b],
                           config=PlphpConfig(r=0.3, **thresholds[b])) for b in range(3)]
    return kv, table, totals, query, targets


def run(batched_path: bool, layout: str, seed: int, extra: int, kernels: str | None = "torch",
        dtype=torch.float32):
    kv, table, totals, query, targets = make_step(seed, layout, extra)
    kv = kv.to(dtype)
    config = SimpleNamespace(additional_config={}, model_config=SimpleNamespace(
        hf_text_config=SimpleNamespace(num_hidden_layers=8)))
    worker = PlphpWorker(config)
    worker._tp_size = 1
    worker.layer_to_group = {LAYER: 3}
    worker.adapter = FakeAdapter(table, totals)
    worker.keep_layer = 3
    worker.kernels = kernels  # "torch": batched torch ops; None (auto): the C kernel on CPU_ATTN
    step = worker.begin_step()
    step.targets = copy.deepcopy(targets)
    impl = SimpleNamespace(scale=HEAD ** -0.5, head_size=HEAD, kv_layout=layout)
    layer = SimpleNamespace(layer_name=LAYER, isa="vec")
    if batched_path:
        prune.prune_layer(worker, impl, layer, query, kv)
        assert len(step.pending) == 1 and not worker.adapter.commits  # committed at step end
    else:
        prune._prune(worker, prune._roles(worker, 3), impl, layer, query, kv)
    worker.end_step()
    k, v = (kv_layout.cpu_views(kv, "vec") if layout == "cpu" else kv_layout.split_views(kv, HEAD))
    entries, used = {}, set()
    for b, target in enumerate(targets):
        blocks = worker.adapter.block_ids(3, target)
        used |= set(blocks.tolist())
        n = worker.adapter.commits[target.req_id]
        entries[b] = [c[blocks].transpose(0, 1).reshape(KV_HEADS, -1, HEAD)[:, :n] for c in (k, v)]
    others = [i for i in range(kv.shape[0]) if i not in used]
    records = {req: rec[3] for req, rec in worker.records.items()}
    return worker.adapter.commits, records, entries, kv[others], worker.keep_maps


@pytest.mark.parametrize("layout,kernels,calls", [("cpu", "torch", None), ("split", "torch", None),
                                                 ("cpu", None, "prune_layer_rows_"), ("cpu", None, "prune_layer_")])
@pytest.mark.parametrize("seed,extra", [(0, 0), (1, 3)])
def test_batched_equals_per_request(layout, kernels, calls, seed, extra, monkeypatch):
    """kernels None on CPU_ATTN: the C kernel (`core/cpu_kernel.py`), which must
    run: in one call per layer (one rank), and in the two calls that tensor
    parallelism takes (forced here by refusing the one-call inputs)."""
    if calls == "prune_layer_":
        monkeypatch.setattr(cpu_kernel, "fused_inputs", lambda *a: False)
    seen = []
    for name in ("prune_layer_rows_", "prune_layer_"):
        real = getattr(cpu_kernel, name)
        monkeypatch.setattr(cpu_kernel, name, lambda *a, _n=name, _f=real, **k: seen.append(_n) or _f(*a, **k))
    oracle = run(False, layout, seed, extra)
    ours = run(True, layout, seed, extra, kernels)
    assert set(seen) == ({calls} if calls else set()) and len(seen) == (calls is not None)
    assert ours[0] == oracle[0]
    assert {r: rec.rate for r, rec in ours[1].items()} == {r: rec.rate for r, rec in oracle[1].items()}
    assert sorted(rec.rate for rec in ours[1].values()) == [0.0, 0.3, 0.6]  # I, B, A
    for req, rec in ours[1].items():
        assert math.isclose(rec.gamma, oracle[1][req].gamma, rel_tol=1e-5)
        assert (rec.kept, rec.vision_kept) == (oracle[1][req].kept, oracle[1][req].vision_kept)
    for b in range(3):
        for a, c in zip(ours[2][b], oracle[2][b]):
            torch.testing.assert_close(a, c, rtol=0, atol=0)
    torch.testing.assert_close(ours[3], oracle[3], rtol=0, atol=0)
    assert ours[4] == oracle[4]  # inspection's keep maps


def test_ties_go_to_the_lower_position():
    """Equal scores within an image: the earliest positions are kept (the HF
    reference's and the Triton kernel's rule)."""
    scores = torch.zeros(1, 2, 16)
    scores[0, 1, 12] = 1.0
    images = [[torch.arange(2, 14)]]
    from vllm_plphp.gpu import make_plan

    plan = make_plan(images, [16], [16], "cpu", configs=[PlphpConfig(r=0.25, delta_r=0.0)])
    layout = batched.make_layout(plan, 4, 2)
    src = batched.kept_sources(scores, layout, torch.tensor([[3]]))
    assert src[0, 0, :7].tolist() == [0, 1, 2, 3, 4, 14, 15]
    assert src[0, 1, :7].tolist() == [0, 1, 2, 3, 12, 14, 15]


@pytest.mark.parametrize("seed,extra", [(0, 0), (1, 3)])
def test_c_kernel_equals_torch_path_on_bfloat16(seed, extra):
    """bfloat16 caches (vLLM's CPU default dtype): the C kernel and the batched
    torch ops keep the same entries, rates and lengths."""
    torch_path = run(True, "cpu", seed, extra, "torch", torch.bfloat16)
    c_path = run(True, "cpu", seed, extra, None, torch.bfloat16)
    assert c_path[0] == torch_path[0]
    for req, rec in c_path[1].items():
        assert (rec.rate, rec.kept, rec.vision_kept) == \
            (torch_path[1][req].rate, torch_path[1][req].kept, torch_path[1][req].vision_kept)
    for b in range(3):
        for a, c in zip(c_path[2][b], torch_path[2][b]):
            torch.testing.assert_close(a, c, rtol=0, atol=0)
    torch.testing.assert_close(c_path[3], torch_path[3], rtol=0, atol=0)
    assert c_path[4] == torch_path[4]


def test_c_kernel_ties_go_to_the_lower_position():
    """All keys equal (every score ties): each head keeps the first K_j positions of each image."""
    from vllm_plphp.gpu import make_plan

    images = [[torch.arange(2, 14), torch.arange(16, 28)]]
    plan = make_plan(images, [30], [30], "cpu", configs=[PlphpConfig(r=0.25, delta_r=0.0)])
    kv = torch.zeros(4, 2, 8, 2 * 16)  # CPU_ATTN tiles: per (block, head) keys D-major (16 x 8), then values (8 x 16)
    values = kv.view(4, 2, 2, 8, 16)[:, :, 1]
    values[:] = torch.arange(4 * 2 * 8, dtype=torch.float32).view(4, 2, 8, 1)  # tell entries apart
    ids = torch.tensor([[3, 0, 2, 1]])
    order = {p: values[ids[0, p // 8], :, p % 8, 0].clone() for p in range(30)}
    layout = batched.make_layout(plan, 8, 2)
    layout.cpu = cpu_kernel.make_cpu_plan(plan)
    result = cpu_kernel.prune_layer_(torch.randn(1, 4, 16), kv, ids, layout, 0.25, return_keep=True)
    kept = [0, 1, 2, 3, 4, 14, 15, 16, 17, 18, 28, 29]  # K_j = 3 of 12 per image
    assert result.lengths.tolist() == [len(kept)]
    assert result.keep[0, :, : len(kept)].tolist() == [kept, kept]
    for slot, p in enumerate(kept):  # the values moved with their entries
        assert values[ids[0, slot // 8], :, slot % 8, 0].tolist() == order[p].tolist()


def test_without_a_c_compiler_the_torch_ops_run_and_say_why(monkeypatch, tmp_path, caplog):
    """No compiler: `supports` is False (prune.py then takes the torch ops) and one warning says why."""
    monkeypatch.setattr(cpu_kernel, "_lib", None)
    monkeypatch.setattr(cpu_kernel, "_failed", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing built yet
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    kv = torch.zeros(2, 2, 8, 32)
    with caplog.at_level("WARNING"):
        assert not cpu_kernel.supports(kv, "auto", 4)
        assert not cpu_kernel.supports(kv, "auto", 4)
    warnings = [r for r in caplog.records if "C pruning kernel could not be built" in r.getMessage()]
    assert len(warnings) == 1 and "no-such-compiler" in warnings[0].getMessage()
