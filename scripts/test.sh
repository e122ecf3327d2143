#!/usr/bin/env bash
# The test command (README, .ci/run): set up if needed, then run the suite
# in two passes on CPU:
#   1. as vLLM runs here by default: Model Runner V1, synchronous scheduling
#      (vLLM's CPU platform turns async scheduling off; no Triton CPU backend);
#   2. under vLLM's GPU defaults, Model Runner V2 and async scheduling, made to
#      run on CPU by test-only overrides (tests/support/gpu_defaults.py, applied
#      in every process through tests/support/site/sitecustomize.py): the
#      modules in tests/gpu_defaults/, compiled (torch.compile) as on a GPU.
# The two passes run at the same time, to keep CI short: engine start-ups,
# server waits and single-threaded Python leave the cores idle much of the
# time, and the passes share nothing but the fixture cache (built under a
# file lock) and free ports. The second pass's output follows the first's.
# Extra arguments run only the first pass on them, e.g.
# `bash scripts/test.sh tests/unit -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
log=$(mktemp -t plphp-second-pass.XXXXXX)
PLPHP_GPU_DEFAULTS=1 PYTHONPATH="$PWD:$PWD/tests/support/site${PYTHONPATH:+:$PYTHONPATH}" \
  .venv/bin/python -m pytest tests/gpu_defaults >"$log" 2>&1 &
second=$!
first_status=0
.venv/bin/python -m pytest tests || first_status=$?
second_status=0
wait "$second" || second_status=$?
echo
echo "======== second pass: tests/gpu_defaults under vLLM's GPU defaults ========"
cat "$log"
rm -f "$log"
echo "first pass exit $first_status, second pass exit $second_status"
[ "$first_status" -eq 0 ] && [ "$second_status" -eq 0 ]
