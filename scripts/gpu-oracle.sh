#!/usr/bin/env bash
# Produce the Hugging Face reference fixtures and train the tiny default model on a GPU machine.
#
#   bash scripts/gpu-oracle.sh OUT_DIR [MINUTES]
#
# Run from anywhere inside the repository (it changes to the repository root). Needs python3 with torch,
# transformers 5.x, tokenizers, safetensors and numpy; no network, no Java.
#   1. scripts/hf_reference.py     -> tests/fixtures/hf        (CPU, well under a minute)
#   2. scripts/train_tiny_model.py -> models/tokenpress-tiny   (GPU, MINUTES of training, default 3.0, max 5)
#   3. OUT_DIR/hf-fixtures.tgz and OUT_DIR/tiny-model.tgz (paths relative to the repository root: extract
#      there with `tar -xzf`), OUT_DIR/oracle.log (everything printed)
# A failing step does not stop the others; whatever exists is packed. Exit status 0 only if both steps passed.
# Environment: PYTHON (default python3), MINUTES (default 3.0), SKIP_FIXTURES=1, SKIP_TRAIN=1,
# TRAIN_ARGS (extra arguments for train_tiny_model.py, split on spaces).
set -u -o pipefail

OUT="${1:?usage: bash scripts/gpu-oracle.sh OUT_DIR [MINUTES]}"
MINUTES="${2:-${MINUTES:-3.0}}"
PY="${PYTHON:-python3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/oracle.log"
FIX_DIR="tests/fixtures/hf"
MODEL_DIR="models/tokenpress-tiny"
MAX_BYTES=$((16 * 1024 * 1024))

pack() {
  local dir="$1" tgz="$2" size
  if [ ! -d "$dir" ] || [ -z "$(ls -A "$dir" 2>/dev/null)" ]; then
    echo "pack: $dir is missing or empty; no $(basename "$tgz")"
    return 1
  fi
  rm -f "$tgz"
  if ! tar -czf "$tgz" "$dir"; then
    echo "pack: tar failed for $dir"
    return 1
  fi
  size=$(stat -c %s "$tgz")
  echo "pack: $tgz: $size bytes"
  tar -tzvf "$tgz" | awk '{print "  " $3 "  " $6}'
  if [ "$size" -ge "$MAX_BYTES" ]; then
    echo "pack: WARNING: $tgz is 16 MiB or more and may not come back from the GPU machine"
  fi
}

main() {
  cd "$ROOT" || return 1
  local t0 t1 rc_fix=0 rc_train=0 train_timeout
  local -a extra=()
  read -r -a extra <<< "${TRAIN_ARGS:-}"
  t0=$(date +%s)
  echo "== gpu-oracle: $(date -u '+%Y-%m-%dT%H:%M:%SZ'), repository $ROOT, output $OUT, training minutes $MINUTES"
  nvidia-smi -L 2>&1 || echo "(nvidia-smi not available)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
  echo "cpus: $(nproc 2>/dev/null || echo '?'), $(uname -srm)"
  "$PY" - <<'PYEOF' 2>&1 || echo "(version probe failed)"
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("torch", "transformers", "tokenizers", "safetensors", "numpy"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as e:  # keep going: the step that needs it reports the failure
        print(name, "IMPORT FAILED", repr(e))
try:
    import torch
    print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as e:
    print("torch probe failed", repr(e))
PYEOF
  echo "== probe done after $(( $(date +%s) - t0 ))s"

  export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=true

  if [ "${SKIP_FIXTURES:-0}" != "1" ]; then
    echo "== [1/3] scripts/hf_reference.py --out $FIX_DIR"
    t1=$(date +%s)
    timeout -k 10 150 "$PY" scripts/hf_reference.py --out "$FIX_DIR"
    rc_fix=$?
    echo "== hf_reference.py exit $rc_fix after $(( $(date +%s) - t1 ))s"
  else
    echo "== [1/3] skipped (SKIP_FIXTURES=1)"
  fi

  if [ "${SKIP_TRAIN:-0}" != "1" ]; then
    echo "== [2/3] scripts/train_tiny_model.py --out $MODEL_DIR --minutes $MINUTES ${TRAIN_ARGS:-}"
    t1=$(date +%s)
    # the script stops training on its own (minutes + ~1.4 min for everything); SIGTERM after minutes*60 + 110 s
    # makes it save what it has, SIGKILL 20 s later
    train_timeout=$("$PY" -c 'import sys; m = min(max(float(sys.argv[1]), 0.05), 5.0); print(int(m * 60 + 110))' "$MINUTES" 2>/dev/null || echo 290)
    timeout -k 20 "$train_timeout" "$PY" scripts/train_tiny_model.py --out "$MODEL_DIR" --minutes "$MINUTES" ${extra[@]+"${extra[@]}"}
    rc_train=$?
    echo "== train_tiny_model.py exit $rc_train after $(( $(date +%s) - t1 ))s (timeout ${train_timeout}s)"
  else
    echo "== [2/3] skipped (SKIP_TRAIN=1)"
  fi

  echo "== [3/3] packing"
  pack "$FIX_DIR" "$OUT/hf-fixtures.tgz" || true
  pack "$MODEL_DIR" "$OUT/tiny-model.tgz" || true
  if [ -f "$MODEL_DIR/TRAINING.md" ]; then
    echo "== $MODEL_DIR/TRAINING.md"
    cat "$MODEL_DIR/TRAINING.md"
  fi
  echo "== gpu-oracle: fixtures exit $rc_fix, training exit $rc_train, total $(( $(date +%s) - t0 ))s"
  [ "$rc_fix" -eq 0 ] && [ "$rc_train" -eq 0 ]
}

main 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
