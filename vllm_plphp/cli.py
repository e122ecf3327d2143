"""`vllm-plphp` command line: `inspect` one prefill of a model with PLPHP.

  vllm-plphp inspect --model M (--image IMG | --video VIDEO) [--prompt TEXT] [--layer L]
                     [--plphp JSON] [--out inspect.png] [--json out.json]

VIDEO: a video file (read with OpenCV), a .npy array (frames, height, width, 3)
of uint8 RGB, or a folder of frame images (sorted by name).

Runs one request through the real engine with `--attention-backend plphp`,
prints per layer: gamma_l, category, r_l, kept/total entries; and writes a PNG
with the gamma_l curve (the "re-attention" curve) against alpha/beta, the
chosen r_l per layer, and each KV head's kept-token map of one layer over the
image grid.
"""

from __future__ import annotations

import argparse
import json
import math
import sys


def _category(gamma: float, config) -> str:
    if gamma != gamma:  # NaN: the layer was not scored (FastV / VTW policies)
        return config.policy
    return {"A": "attentive", "I": "indifferent", "B": "balanced"}[config.category(gamma)]


def load_video(path: str):
    """(frames, height, width, 3) uint8 RGB from a video file, .npy or frame folder."""
    import os

    import numpy as np
    from PIL import Image

    if path.endswith(".npy"):
        return np.load(path)
    if os.path.isdir(path):
        names = sorted(os.listdir(path))
        return np.stack([np.asarray(Image.open(os.path.join(path, n)).convert("RGB")) for n in names])
    import cv2

    cap, frames = cv2.VideoCapture(path), []
    ok, frame = cap.read()
    while ok:
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        ok, frame = cap.read()
    cap.release()
    if not frames:
        raise SystemExit(f"vllm-plphp inspect: no frames read from {path}")
    return np.stack(frames)


def _generate(llm, args, params):
    """One request with the item (image or video), rendered by the model's chat template."""
    from PIL import Image

    if not args.video:
        image = Image.open(args.image).convert("RGB")
        messages = [{"role": "user", "content": [
            {"type": "image_pil", "image_pil": image}, {"type": "text", "text": args.prompt}]}]
        return llm.chat(messages, params)[0]
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": args.prompt}]}]
    tokenizer = llm.get_tokenizer()
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.encode(text, add_special_tokens=False)
    return llm.generate({"prompt_token_ids": ids, "multi_modal_data": {"video": load_video(args.video)}},
                        params)[0]


def run_inspect(args) -> dict:
    from vllm import LLM, SamplingParams

    from vllm_plphp.config import from_dict
    from vllm_plphp.worker.extension import WORKER_EXT

    settings = json.loads(args.plphp)
    config = from_dict(settings)
    llm = LLM(model=args.model, attention_backend="plphp", additional_config={"plphp": settings},
              worker_extension_cls=WORKER_EXT, dtype=args.dtype, max_model_len=args.max_model_len,
              kv_cache_memory_bytes=args.kv_mib << 20,
              limit_mm_per_prompt={"video" if args.video else "image": 1},
              # one prefill: torch.compile's warm-up (minutes on CPU) would cost
              # more than it saves; pruning runs the same either way
              enforce_eager=not args.compile)
    try:
        num_layers = llm.llm_engine.model_config.hf_text_config.num_hidden_layers
        layer = args.layer if args.layer is not None else num_layers // 2
        llm.collective_rpc("plphp_record_keep", args=(layer,))
        out = _generate(llm, args, SamplingParams(max_tokens=1, temperature=0))
        records = llm.collective_rpc("plphp_records", args=([out.request_id],))[0][out.request_id]
        keep_map = next(iter(llm.collective_rpc("plphp_keep_maps")[0].values()), None)
    finally:
        llm.llm_engine.engine_core.shutdown()
    layers = [
        {"layer": l, "gamma": r["gamma"], "category": _category(r["gamma"], config),
         "rate": r["rate"], "kept": r["kept"], "total": r["total"]}
        for l, r in sorted(records.items())
    ]
    return {"model": args.model, "config": config.__dict__, "num_layers": num_layers,
            "prompt_tokens": len(out.prompt_token_ids), "layers": layers, "keep_map": keep_map}


def print_table(result: dict) -> None:
    c = result["config"]
    print(f"PLPHP inspect: {result['model']} ({result['prompt_tokens']} prompt tokens); "
          f"r={c['r']} delta_r={c['delta_r']} alpha={c['alpha']} beta={c['beta']}")
    print(f"{'layer':>5} {'gamma':>7} {'category':>12} {'r_l':>5} {'kept/total':>12}")
    for row in result["layers"]:
        print(f"{row['layer']:5d} {row['gamma']:7.4f} {row['category']:>12} {row['rate']:5.2f} "
              f"{row['kept']:>5d}/{row['total']:<6d}")


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c, rows, km = result["config"], result["layers"], result["keep_map"]
    heads = len(km["keep"]) if km else 0
    fig = plt.figure(figsize=(10, 7 if heads else 4))
    ax = fig.add_subplot(2 if heads else 1, 1, 1)
    xs = [r["layer"] for r in rows]
    ax.plot(xs, [r["gamma"] for r in rows], "o-", label="gamma_l (vision attention)")
    ax.bar(xs, [r["rate"] for r in rows], alpha=0.3, color="tab:green", label="r_l (retention)")
    ax.axhline(c["alpha"], ls="--", color="tab:red", label=f"alpha={c['alpha']}")
    ax.axhline(c["beta"], ls=":", color="tab:purple", label=f"beta={c['beta']}")
    ax.set_xlabel("decoder layer")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("PLPHP: per-layer vision attention and retention")
    if heads:
        image = km["images"][0]  # (a video's tokens, all frames, make one square)
        side = int(math.isqrt(len(image)))
        index = {p: i for i, p in enumerate(image)}
        for h, kept in enumerate(km["keep"]):
            grid = [[0.0] * side for _ in range(side)]
            for p in kept:
                i = index.get(p)
                if i is not None and i < side * side:
                    grid[i // side][i % side] = 1.0
            axh = fig.add_subplot(2, heads, heads + h + 1)
            axh.imshow(grid, cmap="viridis", vmin=0, vmax=1)
            axh.set_title(f"layer {km['layer']}, KV head {h}: kept", fontsize=9)
            axh.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="vllm-plphp", description="vllm-plphp tools")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="one prefill with PLPHP: per-layer table and a PNG")
    p.add_argument("--model", required=True)
    item = p.add_mutually_exclusive_group(required=True)
    item.add_argument("--image", help="an image file")
    item.add_argument("--video", help="a video file, a .npy (frames, H, W, 3) uint8 array or a folder of frames")
    p.add_argument("--prompt", default="Describe the image in detail.")
    p.add_argument("--layer", type=int, help="layer whose per-head kept maps are drawn (default N/2)")
    p.add_argument("--plphp", default="{}", help="PLPHP settings as JSON")
    p.add_argument("--out", default="plphp_inspect.png")
    p.add_argument("--json", help="also write the numbers as JSON")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--kv-mib", type=int, default=256)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model as vLLM does by default (slower for one prefill)")
    args = ap.parse_args(argv)
    result = run_inspect(args)
    print_table(result)
    plot(result, args.out)
    print(f"wrote {args.out}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
