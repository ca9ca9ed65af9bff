#!/usr/bin/env bash
# One entry point for a fresh machine (Python 3.11, no GPU, nothing installed):
#   ./run.sh demo   set up, then start the demo (controller, workers, web UI) on the shipped checkpoints
#   ./run.sh test   set up, then run the test suite (what CI runs)
#   ./run.sh setup  only set up (idempotent; a second run takes about a second)
set -euo pipefail
cd "$(dirname "$0")"
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

VENV=${VENV:-.venv}
PY="$VENV/bin/python"

pip_quiet() {
    # pip warns about every unreachable extra index on some machines; show only what matters.
    local log rc=0
    log=$(mktemp)
    "$PY" -m pip install --disable-pip-version-check -q "$@" >"$log" 2>&1 || rc=$?
    grep -v "is ignored: it is neither a file nor a directory" "$log" >&2 || true
    rm -f "$log"
    return $rc
}

setup() {
    local python=${PYTHON:-python3}
    "$python" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' 2>/dev/null \
        || { echo "run.sh: Python 3.11 or newer is needed as '$python' (set PYTHON=...)" >&2; exit 1; }
    [ -x "$PY" ] || "$python" -m venv "$VENV"
    local stamp="$VENV/.setup-stamp" want
    want=$(cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    echo "run.sh: installing dependencies into $VENV (first run takes a few minutes)"
    # The CPU build; an unpinned torch would pull several GB of CUDA packages.
    "$PY" -c 'import torch' 2>/dev/null || pip_quiet "torch==2.13.0"
    pip_quiet -r requirements-dev.txt
    pip_quiet --no-deps --no-build-isolation -e .
    echo "$want" > "$stamp"
}

ensure_chromium() {
    # Browser tests drive Debian's Chromium; install it when missing and we may (root with apt).
    [ -x /usr/bin/chromium ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "run.sh: installing chromium for the browser tests (apt)"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
            || echo "run.sh: could not install chromium; browser tests will be skipped" >&2
    else
        echo "run.sh: /usr/bin/chromium not found; browser tests will be skipped (apt-get install chromium)" >&2
    fi
}

cmd=${1:-help}
shift || true
case "$cmd" in
    setup)
        setup
        ;;
    demo)
        setup
        # Controller + one worker per shipped checkpoint (tiny random ones until those exist) + web UI.
        exec "$PY" -m serve.launch "$@"
        ;;
    test)
        setup
        ensure_chromium
        set +e
        "$PY" -m pytest "$@"
        rc=$?
        set -e
        if [ $rc -eq 5 ]; then
            echo "run.sh: pytest collected no tests; that is a failure" >&2
            exit 1
        fi
        exit $rc
        ;;
    *)
        sed -n '2,6p' "$0"
        exit 1
        ;;
esac
