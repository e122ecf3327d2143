#!/usr/bin/env bash
# The test command (README, .ci/run): set up if needed, then run the suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/unit -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "${@:-tests}"
