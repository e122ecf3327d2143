"""register() with a vLLM it was not checked against: stock vLLM untouched,
`--attention-backend plphp` refused naming the supported versions. Runs in a
fresh interpreter (this one has registered the plugin already)."""

import subprocess
import sys

SCRIPT = r"""
import vllm
vllm.__version__ = "0.33.0"
from vllm.engine.arg_utils import EngineArgs
from vllm.platforms.cpu import CpuPlatform
before = (CpuPlatform.get_attn_backend_cls, EngineArgs.create_engine_config)
import vllm_plphp
from vllm_plphp.patches import ORIGINALS
vllm_plphp.register()
vllm_plphp.register()  # idempotent
assert not ORIGINALS, ORIGINALS
assert CpuPlatform.get_attn_backend_cls == before[0]
from vllm.v1.attention.backends.registry import AttentionBackendEnum
try:
    AttentionBackendEnum["PLPHP"].get_class()
    raise SystemExit("backend class loaded")
except RuntimeError as e:
    assert "supports vLLM 0.32.x, found 0.33.0" in str(e), e
try:
    EngineArgs(model=sys.argv[1], attention_backend="plphp").create_engine_config()
    raise SystemExit("plphp accepted")
except RuntimeError as e:
    assert "supports vLLM 0.32.x, found 0.33.0" in str(e), e
config = EngineArgs(model=sys.argv[1]).create_engine_config()  # stock still builds
print("OK", config.attention_config.backend)
"""


def test_unsupported_vllm_leaves_stock_working(llava_path):
    proc = subprocess.run([sys.executable, "-c", "import sys\n" + SCRIPT, llava_path],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "vllm-plphp supports vLLM 0.32.x, found 0.33.0" in proc.stderr
