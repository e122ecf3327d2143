#!/usr/bin/env bash
# Quick start: set up, serve the bundled trained model (a 5.7 M-parameter
# LLaVA that answers questions about generated pictures) with PLPHP and, for
# comparison, with stock vLLM; ask both about one seeded picture; print both
# answers and what PLPHP kept; draw which vision tokens each head kept.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
MODEL=$($PY -c "from plphp_dev.quality import MODEL_DIR; print(MODEL_DIR)")
OUT=out/quickstart
mkdir -p "$OUT"
PORT=${PORT:-8765}
# vLLM's defaults otherwise (torch.compile, the runner vLLM picks). Why the rest:
#   --dtype float32: the model's weights; on CPU bf16 may select the AMX
#     attention ISA, whose packed key tiles PLPHP cannot compact (refused);
#   --kv-cache-memory-bytes: vLLM's CPU default reserves 92% of the NUMA
#     node's memory, more than these machines can give to two servers;
#   --max-model-len: the model's 2048 positions; this demo needs far fewer.
COMMON=(--dtype float32 --max-model-len 1024 --kv-cache-memory-bytes 134217728
        --served-model-name quality)
echo "[quickstart] vllm serve $MODEL --attention-backend plphp   (log: $OUT/plphp.log)"
.venv/bin/vllm serve "$MODEL" --port "$PORT" --attention-backend plphp "${COMMON[@]}" \
  >"$OUT/plphp.log" 2>&1 &
PLPHP=$!
echo "[quickstart] vllm serve $MODEL   (stock, for comparison; log: $OUT/stock.log)"
.venv/bin/vllm serve "$MODEL" --port "$((PORT + 1))" "${COMMON[@]}" >"$OUT/stock.log" 2>&1 &
STOCK=$!
stop() { kill $PLPHP $STOCK 2>/dev/null || true; wait $PLPHP $STOCK 2>/dev/null || true; }
trap stop EXIT
$PY examples/quickstart_client.py --plphp-url "http://127.0.0.1:$PORT/v1" \
  --stock-url "http://127.0.0.1:$((PORT + 1))/v1" --out-dir "$OUT"
stop
echo "[quickstart] vllm-plphp inspect: per layer gamma_l, rate r_l, kept entries; per head kept tokens"
VLLM_LOGGING_LEVEL=WARNING .venv/bin/vllm-plphp inspect --model "$MODEL" \
  --image "$OUT/picture.png" --prompt "$(cat "$OUT/question.txt")" --dtype float32 \
  --max-model-len 1024 --out "$OUT/inspect.png" --engine-log "$OUT/inspect.log"
echo "[quickstart] picture of what PLPHP kept: $OUT/inspect.png"
