"""`vllm-plphp inspect` runs one prefill on the real engine, prints the table,
writes the PNG, and its numbers match the HF reference's for the same prompt."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_plphp.config import PlphpConfig
from plphp_dev.fixtures.prompts import get_prompt, make_image

CLI = str(Path(sys.executable).with_name("vllm-plphp"))


def test_inspect_png_and_numbers_match_reference(tmp_path, llava_path):
    image = tmp_path / "img.png"
    make_image(4, 336).save(image)
    out_png, out_json = tmp_path / "inspect.png", tmp_path / "inspect.json"
    question = "Describe the image in detail."
    proc = subprocess.run(
        [CLI, "inspect", "--model", llava_path, "--image", str(image), "--prompt", question,
         "--layer", "5", "--out", str(out_png), "--json", str(out_json), "--dtype", "float32",
         "--engine-log", str(tmp_path / "engine.log")],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "VLLM_LOGGING_LEVEL": "INFO"},  # vLLM's logs would print
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:] + \
        (tmp_path / "engine.log").read_text()[-3000:]
    # only inspect's own lines on the terminal; the engine's went to the log
    for line in proc.stdout.splitlines():
        assert line.startswith(("PLPHP inspect:", "layer", "wrote")) or line[:5].strip().isdigit(), line
    assert "PLPHP attention backend active" in (tmp_path / "engine.log").read_text()
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out_png.stat().st_size > 10_000
    result = json.loads(out_json.read_text())
    assert "gamma" in proc.stdout and "wrote" in proc.stdout
    km = result["keep_map"]
    assert km["layer"] == 5 and len(km["keep"]) == 2  # two KV heads
    assert km["keep"][0] != km["keep"][1]  # heads keep different tokens
    # every pruned layer's per-head kept positions (drawn over the picture)
    maps = result["keep_maps"]
    assert maps["5"] == km["keep"]
    for row in result["layers"]:
        assert [len(h) for h in maps[str(row["layer"])]] == [row["kept"]] * 2

    from plphp_dev.reference import ReferenceModel

    text, images = get_prompt("llava", 1, seed=4, question=question)
    _, ref = ReferenceModel(llava_path).generate(text, images, 1, PlphpConfig())
    rows = {r["layer"]: r for r in result["layers"]}
    assert sorted(rows) == sorted(ref)
    for layer, r in ref.items():
        assert rows[layer]["kept"] == r["kept"]
        assert rows[layer]["gamma"] == pytest.approx(r["gamma"], abs=1e-4)
        assert rows[layer]["rate"] == pytest.approx(r["rate"])
        line = f"{layer:5d} {rows[layer]['gamma']:7.4f}"
        assert line in proc.stdout


def test_inspect_takes_a_video(tmp_path, qwen2_vl_path):
    """`--video` (a .npy of frames): one video item, numbers equal the reference's."""
    import numpy as np

    from plphp_dev.fixtures.videos import make_video

    video = tmp_path / "video.npy"
    np.save(video, make_video(3))
    out_json = tmp_path / "inspect.json"
    question = "Describe what happens in the video."
    proc = subprocess.run(
        [CLI, "inspect", "--model", qwen2_vl_path, "--video", str(video), "--prompt", question,
         "--out", str(tmp_path / "v.png"), "--json", str(out_json), "--dtype", "float32"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out_json.read_text())
    assert len(result["keep_map"]["images"]) == 1  # the video is one item

    from plphp_dev.reference import ReferenceModel

    text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            f"<|vision_start|><|video_pad|><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n")
    _, ref = ReferenceModel(qwen2_vl_path).generate(text, None, 1, PlphpConfig(), videos=[make_video(3)])
    rows = {r["layer"]: r for r in result["layers"]}
    assert sorted(rows) == sorted(ref) and ref
    for layer, r in ref.items():
        assert rows[layer]["kept"] == r["kept"]
        assert rows[layer]["gamma"] == pytest.approx(r["gamma"], abs=1e-4)
