"""CPU-only helper: a stand-in for the GPU image's site-packages.

    python scripts/gpu_check/image_sim.py SITE_PACKAGES OUT_DIR [WHEEL ...]

Fills OUT_DIR with symlinks to those distributions of SITE_PACKAGES (our .venv)
whose names appear in image_packages.txt (the device image's package list, from
the device tool's KINDS.md), each with its dist-info. A fresh venv with OUT_DIR on
its path then sees torch, transformers, numpy ... but none of what the image lacks,
so importing vLLM from the bundle there shows which wheels the bundle must carry.
Versions are ours, not the image's (transformers 5.19 here, 5.17 there), except
for the WHEELs given (e.g. the image's huggingface_hub 1.33.0 and transformers
5.17.0): those are unpacked instead of linked. So this finds missing packages,
not every version clash.
"""

from __future__ import annotations

import os
import re
import sys
import zipfile
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_names() -> set[str]:
    lines = (HERE / "image_packages.txt").read_text().splitlines()
    return {norm(x) for x in lines if x.strip() and not x.startswith("#")}


def main(site: str, out: str, *wheels: str) -> int:
    wanted = image_names()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    overridden = set()
    for wheel in wheels:  # the image's own version of a package
        overridden.add(norm(Path(wheel).name.split("-")[0]))
        with zipfile.ZipFile(wheel) as z:
            z.extractall(out_dir)
    linked = []
    for dist in metadata.distributions(path=[site]):
        name = norm(dist.metadata["Name"])
        if name not in wanted or name in overridden:
            continue
        tops = set()
        for f in dist.files or []:
            top = f.parts[0]
            if top.endswith(".dist-info") or top == ".." or top == "__pycache__":
                continue
            tops.add(top)
        tops.add(Path(dist._path).name)  # the dist-info itself (metadata lookups)
        for top in tops:
            src, dst = Path(site).resolve() / top, out_dir / top
            if src.exists() and not os.path.lexists(dst):
                os.symlink(src, dst)
        linked.append(dist.metadata["Name"])
    print(f"image stand-in: {len(linked)} distributions linked into {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
