#!/usr/bin/env bash
# The checks that need a CUDA machine, as one run: both shipped checkpoints scored on CUDA in float32, bfloat16
# (what a worker loads there by default) and float16, and the demo's controller + workers answering on CUDA.
#
#   OUT=/tmp/gpu_check .ci/gpu_check.sh            # on the GPU machine, from the repository root
#   PICTURES=100 PROBLEMS=150 DEVICE=cuda PY=python3    # the defaults; DEVICE=cpu PICTURES=2 tries it anywhere
#
# Worker wheels for a machine without fastapi/uvicorn go in .devwheels/ (pip download ... --python-version).
# Everything lands in $OUT/summary.txt and $OUT/gpu_check.tar.gz (the eval tables and JSON, the server logs).
# Compare with the same draws on CPU: python -m llava.eval chat --model checkpoints/llava-shapes-chat
# --pictures 100 --dtype float32 (and sqa --problems 150).
set -u
OUT=${OUT:-/tmp/gpu_check}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
PICTURES=${PICTURES:-100}
PROBLEMS=${PROBLEMS:-150}
EVAL_TIMEOUT=${EVAL_TIMEOUT:-360}
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False PYTHONUNBUFFERED=1
work=$(mktemp -d)
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }

if [ -d .devwheels ] && ! $PY -c "import fastapi, uvicorn" 2>/dev/null; then
    $PY -m pip install -q --no-index --find-links .devwheels fastapi uvicorn pydantic >"$work/pip.txt" 2>&1 ||
        say "pip install from .devwheels failed (see pip.txt)"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /' | tee -a "$summary"
$PY -c "import sys, torch, transformers; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$summary"

# 1. The demo's processes on $DEVICE, default dtype: five chat answers and one ScienceQA answer, timed by the client.
started=$(date +%s)
$PY -m serve.launch --no-ui --device "$DEVICE" --controller-port 21101 --worker-port 21102 >"$work/launch.txt" 2>&1 &
launch=$!
ready=0
for _ in $(seq 1 240); do
    if $PY - <<'EOF' 2>/dev/null; then ready=1; break; fi
import httpx, sys
models = httpx.post("http://127.0.0.1:21101/list_models", timeout=2).json()["models"]
sys.exit(0 if {"llava-shapes-chat", "llava-shapes-sqa"} <= set(models) else 1)
EOF
    sleep 0.5
done
say "demo up on $DEVICE: $ready after $(($(date +%s) - started)) s"
if [ "$ready" = 1 ]; then
    for i in 1 2 3 4 5; do
        $PY -m serve.client --controller-address http://127.0.0.1:21101 --model-name llava-shapes-chat \
            --image examples/images/shapes.png --message "Describe the image in detail." --temperature 0 \
            >>"$work/client_chat.txt" 2>&1
    done
    $PY -m serve.client --controller-address http://127.0.0.1:21101 --model-name llava-shapes-sqa \
        --image examples/images/shapes.png --temperature 0 \
        --message $'Question: How many circles are in the picture?\nContext: \nOptions: (A) 1 (B) 2 (C) 3' \
        >>"$work/client_sqa.txt" 2>&1
    say "chat answer: $(head -1 "$work/client_chat.txt")"
    grep -h "first chunk" "$work"/client_*.txt | tee -a "$summary"
fi
kill -TERM "$launch" 2>/dev/null
wait "$launch" 2>/dev/null
grep -h -i "loaded\|error\|Traceback" "$work/launch.txt" | head -20 | tee -a "$summary"

# 2. Decoding speed through llava.generation alone, to set against the worker's log lines above; the last two lines
# are a new thread's first and second answer (on the H200 a new thread's first answer decoded ~12x slower on
# average), with the median and slowest step: one slow step means a one-time cost, a slow median a per-step one.
# Then the same with cuDNN's attention kernels off: if that first answer gets fast, cuDNN is the cause.
$PY -m llava.bench --device "$DEVICE" --runs 5 2>&1 | grep -v Warning | tee -a "$summary"
$PY -m llava.bench --device "$DEVICE" --runs 3 --no-cudnn-attention 2>&1 | grep -v Warning | sed 's/^/no cuDNN attention: /' |
    tee -a "$summary"

# 3. Accuracy per dtype, all six scorings at once (one process each; the GPU has room).
for dt in float32 bfloat16 float16; do
    timeout "$EVAL_TIMEOUT" $PY -m llava.eval chat --model checkpoints/llava-shapes-chat --pictures "$PICTURES" \
        --device "$DEVICE" --dtype "$dt" --quiet --json "$work/chat_$dt.json" >"$work/chat_$dt.txt" 2>&1 &
    timeout "$EVAL_TIMEOUT" $PY -m llava.eval sqa --model checkpoints/llava-shapes-sqa --problems "$PROBLEMS" \
        --device "$DEVICE" --dtype "$dt" --quiet --json "$work/sqa_$dt.json" >"$work/sqa_$dt.txt" 2>&1 &
done
started=$(date +%s)
wait
say "scoring took $(($(date +%s) - started)) s"
for f in "$work"/chat_*.txt "$work"/sqa_*.txt; do
    say "== $(basename "$f")"
    grep -E "^\| |Error|error" "$f" | head -4 | tee -a "$summary"
done
tar -czf "$OUT/gpu_check.tar.gz" -C "$work" .
rm -rf "$work"
