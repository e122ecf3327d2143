#!/usr/bin/env bash
# What of the one-call GPU check can be checked on these CPU machines (no GPU,
# Python 3.11 with our .venv). Not part of the test suite: about 5 minutes.
#
#   bash scripts/gpu_check/cpu_check.sh [--offline]
#
# 1. Builds the bundle for Python 3.11 (same list and pins; only the compiled
#    wheels' tags differ from the real cp312 bundle) into /tmp/gpubundle311.
# 2. A fresh venv (no system site-packages, not .venv) that sees only a stand-in
#    of the GPU image's packages (image_sim.py: our .venv's copies of the image's
#    package list, with the image's transformers 5.17.0 / huggingface_hub 1.33.0).
# 3. `gpu_check.sh --install` into a prefix, then imports vLLM's offline and GPU
#    modules and the plugin there; then `gpu_check.sh --run` (python3 = that venv)
#    with run.py's --allow-no-cuda: it gets through env and the HF reference, then
#    fails at the first engine (no CUDA).
# 4. --offline: also adds vLLM's CPU .so files and a 0.32.0+cpu alias to a copy
#    of the prefix (CPU only: neither travels) and runs run.py there on the CPU
#    platform (CPU_ATTN, eager, small sizes): offline LLM(...) stock and PLPHP
#    from the bundle, so lazy imports of the engine path show up, and run.py's
#    token check and timing code run end to end.
# 5. If a Python 3.12 is found (pyenv), imports the real cp312 bundle's compiled
#    modules with it (no torch there: only those that load without it).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
W=${GPU_CHECK_WORK:-/tmp/gpu_check_cpu}
mkdir -p "$W"
nice="nice -n 10"

echo "== 1. bundle for Python 3.11"
GPU_CHECK_PYVER=3.11 $nice bash scripts/gpu_check.sh --bundle /tmp/gpubundle311 | tail -5

echo "== 2. fresh venv + stand-in of the GPU image"
if [ ! -d "$W/imgwheels" ]; then
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$W/imgwheels" \
    huggingface_hub==1.33.0 transformers==5.17.0 2>&1 | grep -v "is ignored" || true
fi
rm -rf "$W/image" "$W/venv"
.venv/bin/python scripts/gpu_check/image_sim.py .venv/lib/python3.11/site-packages "$W/image" \
  "$W"/imgwheels/*.whl
python3 -m venv "$W/venv"
site=$("$W/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$W/image" > "$site/gpu_image_standin.pth"
PY=$W/venv/bin/python

echo "== 3. install, imports, run.py --allow-no-cuda"
# gpu_check.sh unpacks with `python3`: give it the venv's
PATH=$W/venv/bin:$PATH bash scripts/gpu_check.sh --install /tmp/gpubundle311 "$W/prefix"
export PYTHONPATH=$W/prefix:$REPO HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1
$nice "$PY" - <<'EOF'
import importlib, sys
mods = """vllm vllm.entrypoints.llm vllm.platforms.cuda vllm.v1.attention.backends.triton_attn
vllm.v1.engine.core vllm.v1.engine.llm_engine vllm.v1.executor.multiproc_executor
vllm.v1.executor.uniproc_executor vllm.v1.worker.gpu_worker vllm.v1.worker.gpu.model_runner
vllm.v1.worker.gpu_model_runner vllm.model_executor.models.llava vllm.v1.structured_output
vllm.compilation.backends vllm.multimodal.processing vllm_plphp vllm_plphp.worker.extension
vllm_plphp.worker.backend plphp_dev.reference plphp_dev.fixtures.prompts""".split()
bad = []
for m in mods:
    try:
        importlib.import_module(m)
    except Exception as e:
        bad.append(f"{m}: {type(e).__name__}: {e}")
print("\n".join(bad) or f"all {len(mods)} modules import")
import vllm.platforms, importlib.metadata as md
print("vllm version", md.version("vllm"), "platform", type(vllm.platforms.current_platform).__name__)
sys.exit(1 if bad else 0)
EOF
set +e
mkdir -p "$W/out"; rm -f "$W/out"/*
PATH=$W/venv/bin:$PATH OUT=$W/out GPU_CHECK_PREFIX=$W/prefix_run $nice bash scripts/gpu_check.sh \
  --run /tmp/gpubundle311 --allow-no-cuda --modes eager --cases 2 > /dev/null 2>&1
echo "gpu_check.sh --run exit $? (expected 1: no engine without CUDA); its summary:"
set -e
cat "$W/out/gpu_check_summary.txt"

if [ "${1:-}" = "--offline" ]; then
  echo "== 4. offline LLM on CPU from the bundle (+ CPU-only .so files and +cpu alias)"
  src=.venv/lib/python3.11/site-packages
  rm -rf "$W/prefix_cpu"; cp -al "$W/prefix" "$W/prefix_cpu"
  rm -rf "$W/prefix_cpu/vllm-0.32.0.dist-info" "$W/prefix_cpu/vllm/_C_stable_libtorch.py"
  cp -r "$src/vllm-0.32.0+cpu.dist-info" "$W/prefix_cpu/"
  for so in "$src"/vllm/*.so; do ln -s "$REPO/$so" "$W/prefix_cpu/vllm/"; done
  # run.py itself on the CPU platform (CPU_ATTN in place of TRITON_ATTN, small sizes):
  # the token check and the timing code run end to end
  PYTHONPATH=$W/prefix_cpu:$REPO $nice "$PY" scripts/gpu_check/run.py --allow-no-cuda \
    --model "$W/prefix/fixture/llava-tiny-bf16" --backend CPU_ATTN --dtype float32 \
    --modes eager --cases 2 --tokens 8 --batches 2 --images 1 --decode-tokens 4 --repeats 2 \
    --rows plphp,plphp_r0.4 --kv-mib 256 > "$W/run_cpu.log" 2>&1 || true
  sed -n '/GPU CHECK SUMMARY/,$p' "$W/run_cpu.log"
fi

py312=$(ls -d /root/.pyenv/versions/3.12*/bin/python3 2>/dev/null | head -1 || true)
if [ -n "$py312" ] && [ -f /tmp/gpubundle/deps.tar.xz ]; then
  echo "== 5. cp312 compiled modules under $py312"
  rm -rf "$W/prefix312"; mkdir -p "$W/prefix312"
  tar -xJf /tmp/gpubundle/deps.tar.xz -C "$W/prefix312"
  # (the image stand-in after it: pure-Python needs like typing_extensions)
  PYTHONPATH=$W/prefix312:$W/image "$py312" -c "
import pydantic, pydantic_core, msgspec, zmq, cbor2, pybase64, blake3, rpds, llguidance, openai_harmony, tvm_ffi, openai, jsonschema, mistral_common
print('cp312 compiled modules import:', pydantic_core.__version__, zmq.__version__, blake3.__name__)"
fi
