"""Per-layer cost of PLPHP's prefill pruning on CPU, outside the engine.

One pruned layer of the `llava-bench` fixture's shape (4 query / 2 KV heads,
head 64, float32, CPU_ATTN's KV layout, 32-token blocks), `--batch` requests
whose prompts end in this step, each with `--images` 576-token images; a fake
runner adapter (the seam `block_ids` / `block_table` / `commit`). Times, in
interleaved repeats, the per-request torch path (`prune._prune`: FastV / VTW
and the ablations take it) and the two batched paths `prune.prune_layer` runs for
PLPHP layers: batched torch ops (`kernels="torch"`) and, on CPU_ATTN by
default, the C kernel (`vllm_plphp/core/cpu_kernel.py`), each over
`--layers` layers, plus the end-of-step commit.
Times are this thread's CPU time (`--threads 1`, the default): on a shared
machine that leaves out the waits for a core, not memory contention.

  .venv/bin/python benchmarks/prune_cost.py --batch 1 --images 1
  .venv/bin/python benchmarks/prune_cost.py --batch 4 --images 8 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HEADS, KV_HEADS, HEAD, BLOCK, IMAGE = 4, 2, 64, 32, 576


class Adapter:
    def __init__(self, table: torch.Tensor, totals: list[int]):
        self.table, self.totals = table, totals

    def block_ids(self, gid, target):
        return self.table[target.row, : -(-self.totals[target.row] // BLOCK)].long()

    def block_table(self, gid, rows):
        return self.table.index_select(0, rows)

    def commit(self, gid, target, kept):
        pass


def setup(batch: int, images: int, layers: int):
    from vllm_plphp.config import PlphpConfig
    from vllm_plphp.core import prune
    from vllm_plphp.core.plan import PruneTarget
    from vllm_plphp.core.worker import PlphpWorker

    prune._tp_size = lambda: 1
    prompt = 12 + images * (IMAGE + 1)  # "USER: " .. images .. question
    totals = [prompt] * batch
    nblk = -(-prompt // BLOCK)
    gen = torch.Generator().manual_seed(0)
    kv = torch.randn(batch * nblk + 1, KV_HEADS, BLOCK, 2 * HEAD, generator=gen)
    table = (torch.randperm(batch * nblk, generator=gen) + 1).view(batch, nblk).int()
    query = torch.randn(batch * prompt, HEADS, HEAD, generator=gen)
    config = SimpleNamespace(additional_config={}, model_config=SimpleNamespace(
        hf_text_config=SimpleNamespace(num_hidden_layers=layers + 3)))
    worker = PlphpWorker(config)
    names = [f"model.layers.{2 + l}.self_attn.attn" for l in range(layers)]
    worker.layer_to_group = {name: i for i, name in enumerate(names)}
    worker.adapter = Adapter(table, totals)
    imgs = [torch.arange(6 + j * (IMAGE + 1), 6 + j * (IMAGE + 1) + IMAGE) for j in range(images)]
    targets = lambda: [PruneTarget(row=b, slot=b, req_id=f"r{b}", query_index=(b + 1) * prompt - 1,
                                   prompt_len=prompt, total_len=prompt, images=imgs,
                                   config=PlphpConfig(r=0.4)) for b in range(batch)]
    impl = SimpleNamespace(scale=HEAD ** -0.5, head_size=HEAD, kv_layout="cpu")
    layer = lambda name: SimpleNamespace(layer_name=name, isa="vec")
    return worker, names, targets, impl, layer, query, kv


PATHS = {"per-request": "torch", "torch ops": "torch", "C kernel": None}  # path -> worker.kernels


def time_path(path: str, worker, names, targets, impl, layer, query, kv) -> float:
    from vllm_plphp.core import prune

    per_request = path == "per-request"
    worker.kernels = PATHS[path]
    start = time.thread_time()
    step = worker.begin_step()
    step.targets = targets()
    for name in names:
        if per_request:
            roles = prune._roles(worker, prune.layer_position(name))
            prune._prune(worker, roles, impl, layer(name), query, kv)
        else:
            prune.prune_layer(worker, impl, layer(name), query, kv)
    worker.end_step()
    return time.thread_time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--images", type=int, default=1)
    ap.add_argument("--layers", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    state = setup(args.batch, args.images, args.layers)
    times = {name: [] for name in PATHS}
    for rep in range(args.repeats + 1):  # the first is a warm-up
        for name in times:
            t = time_path(name, *state)
            if rep:
                times[name].append(t)
    prompt = 12 + args.images * (IMAGE + 1)
    print(f"{args.batch} request(s) x {args.images} image(s) ({prompt} tokens), {args.layers} "
          f"pruned layers, {args.threads} thread(s), {args.repeats} repeats")
    for name, values in times.items():
        ms = [v * 1e3 / args.layers for v in values]
        print(f"{name:12s} ms per layer: median {statistics.median(ms):.2f} "
              f"(min {min(ms):.2f}, max {max(ms):.2f})")
    for name in ("per-request", "torch ops"):
        ratios = [a / b for a, b in zip(times[name], times["C kernel"])]
        print(f"{name} / C kernel: median {statistics.median(ratios):.2f}x "
              f"(min {min(ratios):.2f}, max {max(ratios):.2f})")


if __name__ == "__main__":
    main()
