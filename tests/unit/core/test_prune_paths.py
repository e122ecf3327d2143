"""The two batched pruning paths of `vllm_plphp.core.prune` on the same
inputs: the torch path (`vllm_plphp.core.batched`, CPU) and the fused Triton
path (CUDA),
here run on CPU in Triton's interpreter. Both must commit the same kept
lengths and rates and leave the same kept entries in every head, and neither
may touch blocks outside the pruned requests. Fake runner adapter (the seam:
`block_ids`, `block_table`, `commit`); runs in a subprocess because
TRITON_INTERPRET must be set before Triton is imported."""

import os
import subprocess
import sys
from types import SimpleNamespace

import torch

LAYER = "model.layers.3.self_attn.attn"


class FakeAdapter:
    def __init__(self, table, totals, block_size):
        self.table, self.totals, self.bs = table, totals, block_size
        self.commits = {}

    def block_ids(self, gid, target):
        return self.table[target.row, : -(-self.totals[target.row] // self.bs)].long()

    def group_table(self, gid):
        return self.table

    def commit(self, gid, target, kept):
        self.commits[(gid, target.req_id)] = kept


def run(kernels: str, seed: int = 0):
    from tests.gpu.kernel_checks import make_requests, paged_batch
    from vllm_plphp.config import PlphpConfig
    from vllm_plphp.core import kv_layout, prune
    from vllm_plphp.core.plan import PruneTarget
    from vllm_plphp.core.worker import PlphpWorker

    gen = torch.Generator().manual_seed(seed)
    plens = [300, 180, 240]
    images, totals = make_requests(gen, plens, [1, 2, 3], extra=0)
    kv, _, _, table = paged_batch(gen, "cpu", torch.float32, totals, 2, 64, 16)
    query = torch.randn(sum(plens), 8, 64, generator=gen) * 3
    config = SimpleNamespace(additional_config={}, model_config=SimpleNamespace(
        hf_text_config=SimpleNamespace(num_hidden_layers=8)))
    worker = PlphpWorker(config)
    worker._tp_size = 1
    worker.kernels = kernels
    worker.layer_to_group = {LAYER: 3}
    worker.adapter = FakeAdapter(table, totals, 16)
    starts = [sum(plens[:i]) for i in range(3)]
    step = worker.begin_step()
    step.targets = [
        PruneTarget(row=b, slot=b, req_id=f"r{b}", query_index=starts[b] + plens[b] - 1,
                    prompt_len=plens[b], total_len=totals[b], images=images[b],
                    config=PlphpConfig(r=0.3, **thresholds))
        for b, thresholds in enumerate([  # attentive, indifferent, balanced
            dict(alpha=0.03, beta=0.01), dict(alpha=0.9, beta=0.8), dict(alpha=0.9, beta=0.0)])]
    impl = SimpleNamespace(scale=64 ** -0.5, head_size=64, kv_layout="split")
    prune.prune_layer(worker, impl, SimpleNamespace(layer_name=LAYER), query, kv)
    # both batched paths defer their commits to the end of the step (one host sync)
    assert len(step.pending) == 1 and not worker.adapter.commits
    worker.end_step()
    kept = {req: v for (_, req), v in worker.adapter.commits.items()}
    records = {req: (rec[3].kept, rec[3].rate) for req, rec in worker.records.items()}
    k, v = kv_layout.split_views(kv, 64)
    entries = {}
    for b in range(3):
        blocks = worker.adapter.block_ids(3, step.targets[b])
        n = kept[f"r{b}"]
        flat_k = k[blocks].transpose(0, 1).reshape(2, -1, 64)[:, :n]
        flat_v = v[blocks].transpose(0, 1).reshape(2, -1, 64)[:, :n]
        entries[b] = (flat_k, flat_v)
    used = set(table[table >= 0].tolist()) if False else {
        int(x) for b in range(3) for x in worker.adapter.block_ids(3, step.targets[b])}
    others = [i for i in range(kv.shape[0]) if i not in used]
    return kept, records, entries, kv[others]


def main():
    torch_path = run("torch")
    triton_path = run("triton")
    assert torch_path[0] == triton_path[0], (torch_path[0], triton_path[0])
    assert torch_path[1] == triton_path[1]
    assert sorted(r for _, r in torch_path[1].values()) == [0.0, 0.3, 0.6]  # A, I, B
    assert all(kept < total for kept, total in zip(torch_path[0].values(), [300, 180, 240]))
    for b in range(3):
        for a, c in zip(torch_path[2][b], triton_path[2][b]):
            torch.testing.assert_close(a, c, rtol=0, atol=0)
    torch.testing.assert_close(torch_path[3], triton_path[3], rtol=0, atol=0)
    print("OK")


def test_torch_and_triton_paths_prune_alike():
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "tests.unit.core.test_prune_paths"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


if __name__ == "__main__":
    main()
