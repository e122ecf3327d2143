"""The offline example runs as documented (LLM.generate and LLM.chat with PLPHP)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_offline_generate_chat_example_runs(llava_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "offline_generate_chat.py"), "--model", llava_path],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [l for l in proc.stdout.splitlines() if l.startswith(("generate:", "chat    :"))]
    assert len(lines) == 4 and all(len(l) > 12 for l in lines)
