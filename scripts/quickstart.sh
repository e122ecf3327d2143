#!/usr/bin/env bash
# Quick start: set up, serve the bundled LLaVA fixture with PLPHP, send one
# image chat completion through the openai client, print the answer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
MODEL=$($PY -m plphp_dev.fixtures build llava)
PORT=${PORT:-8765}
LOG=$(mktemp -t plphp-serve-XXXX.log)
echo "[quickstart] vllm serve $MODEL --attention-backend plphp (log: $LOG)"
# vLLM's defaults otherwise (torch.compile, the runner vLLM picks). Why the rest:
#   --dtype float32: the fixture's weights; on CPU bf16 may select the AMX
#     attention ISA, whose packed key tiles PLPHP cannot compact (refused);
#   --kv-cache-memory-bytes: vLLM's CPU default reserves 92% of the NUMA
#     node's memory, more than these machines can give;
#   --max-model-len: the fixture's config allows more than this demo needs;
#   --limit-mm-per-prompt: let one message carry two images.
.venv/bin/vllm serve "$MODEL" --port "$PORT" --served-model-name fixture \
  --attention-backend plphp --additional-config '{"plphp": {"r": 0.4}}' \
  --dtype float32 --max-model-len 4096 --kv-cache-memory-bytes 268435456 \
  --limit-mm-per-prompt '{"image": 2}' >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
$PY examples/openai_chat_image.py --base-url "http://127.0.0.1:$PORT/v1" --wait 300
