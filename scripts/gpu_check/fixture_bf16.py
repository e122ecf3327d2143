"""Copy a built fixture with its weights cast to bfloat16 (half the bytes to carry).

    python scripts/gpu_check/fixture_bf16.py SRC_DIR DST_DIR

The GPU check runs vLLM in bfloat16 anyway; the HF reference loads the same
bf16 weights in float32 (exactly), so stored bf16 loses nothing the check uses.
config.json's "dtype" says bfloat16 so that dtype="auto" would pick it too.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def main(src: str, dst: str) -> int:
    src_dir, dst_dir = Path(src), Path(dst)
    if dst_dir.exists():
        shutil.rmtree(dst_dir)
    dst_dir.mkdir(parents=True)
    for f in src_dir.iterdir():
        if f.suffix != ".safetensors" and f.name != "config.json" and f.is_file():
            shutil.copy2(f, dst_dir / f.name)
    for f in src_dir.glob("*.safetensors"):
        tensors = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v)
                   for k, v in load_file(str(f)).items()}
        save_file(tensors, str(dst_dir / f.name), metadata={"format": "pt"})
    config = json.loads((src_dir / "config.json").read_text())
    for section in (config, config.get("text_config", {}), config.get("vision_config", {})):
        for key in ("dtype", "torch_dtype"):
            if key in section:
                section[key] = "bfloat16"
    (dst_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    size = sum(f.stat().st_size for f in dst_dir.iterdir())
    print(f"fixture (bf16): {dst_dir} {size / 2**20:.1f} MiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
