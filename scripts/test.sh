#!/usr/bin/env bash
# The test command (README quick start, docs/testing.md, .ci/run): set up if needed, then run the suite
# twice on CPU:
#   1. as vLLM runs here by default: Model Runner V1, synchronous scheduling
#      (vLLM's CPU platform turns async scheduling off; no Triton CPU backend);
#   2. under vLLM's GPU defaults, Model Runner V2 and async scheduling, made to
#      run on CPU by test-only overrides (tests/support/gpu_defaults.py, applied
#      in every process through tests/support/site/sitecustomize.py): the
#      modules in tests/gpu_defaults/, compiled (torch.compile) as on a GPU.
# Extra arguments go to the first pytest run only, e.g.
# `bash scripts/test.sh tests/unit -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest "${@:-tests}"
if [ $# -eq 0 ]; then
  PLPHP_GPU_DEFAULTS=1 PYTHONPATH="$PWD:$PWD/tests/support/site${PYTHONPATH:+:$PYTHONPATH}" \
    .venv/bin/python -m pytest tests/gpu_defaults
fi
