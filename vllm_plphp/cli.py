"""`vllm-plphp` command line: `inspect` one prefill of a model with PLPHP.

  vllm-plphp inspect --model M (--image IMG | --video VIDEO) [--prompt TEXT] [--layer L]
                     [--plphp JSON] [--out inspect.png] [--json out.json]
                     [--engine-log FILE]

VIDEO: a video file (read with OpenCV), a .npy array (frames, height, width, 3)
of uint8 RGB, or a folder of frame images (sorted by name).

Runs one request through the real engine with `--attention-backend plphp`,
prints per layer: gamma_l, category, r_l, kept/total entries; and writes a PNG
with the gamma_l curve (the "re-attention" curve) against alpha/beta and the
chosen r_l per layer, then one row per pruned layer (at most --rows, spread
over the depth; its gamma_l and r_l in the title) of the picture itself with
each KV head's kept patches over it and its pruned patches dimmed (square
patch grids, e.g. LLaVA; other layouts and videos: the kept map of --layer as
a grid). `--engine-log FILE` sends the engine's own output (vLLM's start-up
logs, of this process and the engine's) to FILE, so only these lines print.
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
        llm.collective_rpc("plphp_record_keep", args=(layer, True))
        out = _generate(llm, args, SamplingParams(max_tokens=1, temperature=0))
        records = llm.collective_rpc("plphp_records", args=([out.request_id],))[0][out.request_id]
        keep_map = next(iter(llm.collective_rpc("plphp_keep_maps")[0].values()), None)
        keep_all = next(iter(llm.collective_rpc("plphp_keep_maps_all")[0].values()), {})
    finally:
        llm.llm_engine.engine_core.shutdown()
    layers = [
        {"layer": l, "gamma": r["gamma"], "category": _category(r["gamma"], config),
         "rate": r["rate"], "kept": r["kept"], "total": r["total"]}
        for l, r in sorted(records.items())
    ]
    return {"model": args.model, "config": config.__dict__, "num_layers": num_layers,
            "prompt_tokens": len(out.prompt_token_ids), "layers": layers, "keep_map": keep_map,
            "keep_maps": {str(l): keep for l, keep in sorted(keep_all.items())}}


def print_table(result: dict) -> None:
    c = result["config"]
    print(f"PLPHP inspect: {result['model']} ({result['prompt_tokens']} prompt tokens); "
          f"r={c['r']} delta_r={c['delta_r']} alpha={c['alpha']} beta={c['beta']}")
    print(f"{'layer':>5} {'gamma':>7} {'category':>12} {'r_l':>5} {'kept/total':>12}")
    for row in result["layers"]:
        print(f"{row['layer']:5d} {row['gamma']:7.4f} {row['category']:>12} {row['rate']:5.2f} "
              f"{row['kept']:>5d}/{row['total']:<6d}")


def _square_picture(path: str, side: int):
    """The picture center-cropped to a square (as CLIP-style processors crop),
    as an array, or None."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    w, h = image.size
    s = min(w, h)
    image = image.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    import numpy as np

    return np.asarray(image.resize((side * 16, side * 16)))


def _dim_mask(image_positions: list, kept: list, side: int):
    """(side, side, 4) RGBA: transparent over kept patches, dark over pruned ones."""
    import numpy as np

    mask = np.zeros((side, side, 4))
    mask[..., 3] = 0.72
    index = {p: i for i, p in enumerate(image_positions)}
    for p in kept:
        i = index.get(p)
        if i is not None and i < side * side:
            mask[i // side, i % side, 3] = 0.0
    return mask


def _rows_to_draw(result: dict, max_rows: int) -> list:
    """Pruned layers with kept maps, at most max_rows, spread over the depth."""
    layers = [r for r in result["layers"] if str(r["layer"]) in result.get("keep_maps", {})]
    if len(layers) <= max_rows:
        return layers
    step = (len(layers) - 1) / (max_rows - 1)
    return [layers[round(i * step)] for i in range(max_rows)]


def plot(result: dict, path: str, picture: str | None = None, max_rows: int = 6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c, rows, km = result["config"], result["layers"], result["keep_map"]
    image = km["images"][0] if km else []  # (a video's tokens, all frames, make one square)
    side = int(math.isqrt(len(image)))
    overlay = picture is not None and km is not None and side * side == len(image)
    drawn = _rows_to_draw(result, max_rows) if overlay else []
    heads = len(km["keep"]) if km else 0
    shown_heads = min(heads, 4)
    n_rows = 1 + (len(drawn) if overlay else (1 if heads else 0))
    fig = plt.figure(figsize=(2.4 * max(shown_heads, 4), 3.2 + 2.5 * (n_rows - 1)))
    grid = fig.add_gridspec(n_rows, max(shown_heads, 1), height_ratios=[1.3] + [1] * (n_rows - 1))
    ax = fig.add_subplot(grid[0, :])
    xs = [r["layer"] for r in rows]
    ax.plot(xs, [r["gamma"] for r in rows], "o-", label="gamma_l (vision attention)")
    ax.bar(xs, [r["rate"] for r in rows], alpha=0.3, color="tab:green", label="r_l (retention)")
    ax.axhline(c["alpha"], ls="--", color="tab:red", label=f"alpha={c['alpha']}")
    ax.axhline(c["beta"], ls=":", color="tab:purple", label=f"beta={c['beta']}")
    ax.set_xlabel("decoder layer")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("PLPHP: per-layer vision attention and retention")
    if overlay:
        pixels = _square_picture(picture, side)
        for row, rec in enumerate(drawn, start=1):
            keep = result["keep_maps"][str(rec["layer"])]
            for h in range(shown_heads):
                axh = fig.add_subplot(grid[row, h])
                axh.imshow(pixels, extent=(0, side, side, 0))
                axh.imshow(_dim_mask(image, keep[h], side), extent=(0, side, side, 0),
                           interpolation="nearest")
                axh.set_title(f"layer {rec['layer']} (gamma {rec['gamma']:.2f}, r_l "
                              f"{rec['rate']:.2f}), KV head {h}", fontsize=7)
                axh.axis("off")
    elif heads:
        index = {p: i for i, p in enumerate(image)}
        for h, kept in enumerate(km["keep"][:shown_heads]):
            cells = [[0.0] * side for _ in range(side)]
            for p in kept:
                i = index.get(p)
                if i is not None and i < side * side:
                    cells[i // side][i % side] = 1.0
            axh = fig.add_subplot(grid[1, h])
            axh.imshow(cells, cmap="viridis", vmin=0, vmax=1)
            axh.set_title(f"layer {km['layer']}, KV head {h}: kept", fontsize=9)
            axh.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


class _EngineLog:
    """Send this process's stdout/stderr file descriptors (which the engine's
    processes inherit) to a file while the engine runs."""

    def __init__(self, path: str | None):
        self.path = path

    def __enter__(self):
        import os

        if self.path:
            sys.stdout.flush()
            sys.stderr.flush()
            self.saved = [os.dup(1), os.dup(2)]
            self.file = open(self.path, "w")
            os.dup2(self.file.fileno(), 1)
            os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        import os

        if self.path:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(self.saved[0], 1)
            os.dup2(self.saved[1], 2)
            for fd in self.saved:
                os.close(fd)
            self.file.close()
        return False


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
    p.add_argument("--rows", type=int, default=6, help="pruned layers drawn over the picture")
    p.add_argument("--engine-log", help="write the engine's own output (vLLM's logs) here")
    args = ap.parse_args(argv)
    with _EngineLog(args.engine_log):
        result = run_inspect(args)
    print_table(result)
    plot(result, args.out, picture=args.image, max_rows=args.rows)
    print(f"wrote {args.out}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
