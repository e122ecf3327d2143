"""Offline batch: `vllm run-batch --attention-backend plphp` on a JSONL file of
image chat requests; outputs equal an offline `LLM.chat` run with PLPHP."""

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import EAGER
from plphp_dev.fixtures.prompts import chat_messages

VLLM = str(Path(sys.executable).with_name("vllm"))


def test_run_batch_with_image_requests(tmp_path, llava_path):
    lines = []
    for i, (n, seed) in enumerate([(1, 0), (2, 3), (0, 0)]):
        body = {"model": "fixture", "messages": chat_messages("llava", n, seed=seed),
                "max_tokens": 8, "temperature": 0}
        lines.append({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    cmd = [VLLM, "run-batch", "-i", str(src), "-o", str(dst), "--model", llava_path,
           "--served-model-name", "fixture", "--attention-backend", "plphp",
           "--additional-config", json.dumps({"plphp": {"r": 0.3}}), "--dtype", "float32",
           "--max-model-len", "4096", *(["--enforce-eager"] if EAGER else []),  # CI time
           "--kv-cache-memory-bytes", str(192 << 20),
           "--limit-mm-per-prompt", json.dumps({"image": 2})]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {r["custom_id"]: r for r in map(json.loads, dst.read_text().splitlines())}
    assert sorted(results) == ["req-0", "req-1", "req-2"]
    for r in results.values():
        assert r["error"] is None and r["response"]["status_code"] == 200
        assert r["response"]["body"]["usage"]["completion_tokens"] == 8
    # the same requests through the offline API with the same settings
    from tests.conftest import greedy, make_llm

    llm = make_llm(llava_path, "plphp", {"r": 0.3})
    try:
        for line in lines:
            out = llm.chat(line["body"]["messages"], greedy(8))[0]
            got = results[line["custom_id"]]["response"]["body"]["choices"][0]["message"]["content"]
            assert got == out.outputs[0].text
    finally:
        llm.llm_engine.engine_core.shutdown()
