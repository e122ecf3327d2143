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
# Compile caching for the compiled engines (each test starts several of the
# same model): vLLM 0.32 with torch >= 2.10 saves an AOT artifact on CPU that
# it cannot load back ("'function' object has no attribute
# 'finalize_loading'", for stock vLLM too), so every start recompiled from
# scratch after a failed load. With AOT compile off, vLLM's other cache path
# runs and Inductor's FX graph cache serves later starts: here 32 s against
# 70 s for a repeated compiled start of the LLaVA fixture. The compiled graph
# is the same either way (docs/testing.md).
export VLLM_USE_AOT_COMPILE="${VLLM_USE_AOT_COMPILE:-0}"
.venv/bin/python -m pytest "${@:-tests}"
if [ $# -eq 0 ]; then
  PLPHP_GPU_DEFAULTS=1 PYTHONPATH="$PWD:$PWD/tests/support/site${PYTHONPATH:+:$PYTHONPATH}" \
    .venv/bin/python -m pytest tests/gpu_defaults
fi
