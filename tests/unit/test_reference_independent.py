"""The HF reference (the equivalence tests' oracle) shares no selection code
with the engine: neither it nor anything it imports pulls in vllm_plphp."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_reference_imports_no_engine_code():
    source = (ROOT / "plphp_dev" / "reference.py").read_text()
    assert "vllm_plphp" not in source.split('"""', 2)[2]  # no import below the docstring
    code = ("import sys; import plphp_dev.reference as r; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('vllm_plphp', 'vllm')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
