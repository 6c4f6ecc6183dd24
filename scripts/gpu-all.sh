#!/usr/bin/env bash
# Everything that needs the GPU machine, in one run bounded by a deadline (its device time is scarce):
#   A. in parallel: CUDA JUnit parity tests (scripts/gpu-check.sh, STAGES=junit; it also generates the 2.5 GB
#      llama-1b-shape model on the CPU cores) and the Hugging Face reference fixtures (scripts/hf_reference.py, CPU)
#   B. training of the embedded tiny model (scripts/train_tiny_model.py) for as many minutes as the deadline allows
#      after reserving time for C (at most 3)
#   C. the benchmarks (decode attention, end to end, PyTorch peer) with the time that is left
#   D. packing: OUT/gpu-summary.txt, OUT/oracle-fixtures.log, OUT/oracle-train.log, OUT/hf-fixtures.tgz,
#      OUT/tiny-model.tgz, OUT/gpu-logs.tgz (every log and JUnit XML) -- six files.
#
#   bash scripts/gpu-all.sh OUT_DIR [DEADLINE_SECONDS (default 540)]
# Needs bundle/ from `bash scripts/gpu-check.sh` (built on the development machine) copied beside the checkout.
set -u -o pipefail
OUT=${1:?usage: bash scripts/gpu-all.sh OUT_DIR [DEADLINE_SECONDS]}
DEADLINE=${2:-540}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
W=/tmp/tokenpress-gpu-all
rm -rf "$W"
mkdir -p "$W/check" "$W/fix" "$W/train"
START=$SECONDS
left() { echo $((DEADLINE - (SECONDS - START))); }
clamp() { local v=$1 lo=$2 hi=$3; ((v < lo)) && v=$lo; ((v > hi)) && v=$hi; echo "$v"; }
note() { echo "[gpu-all +$((SECONDS - START))s] $*" | tee -a "$W/check/gpu-summary.txt"; }

# A: parity tests and fixtures in parallel
SKIP_TRAIN=1 bash scripts/gpu-oracle.sh "$W/fix" > /dev/null 2>&1 &
FIX_PID=$!
STAGES=junit T_JUNIT=$(clamp $(( $(left) / 3 )) 60 170) bash scripts/gpu-check.sh --run "$W/check"
wait "$FIX_PID"
note "fixtures exit $?"

# B: training, reserving ~170 s for the benchmarks and ~25 s for packing
MIN=$(python3 -c "import sys; print(f'{max(0.0, min(3.0, (int(sys.argv[1]) - 195 - 75) / 60)):.2f}')" "$(left)")
note "training minutes $MIN"
if python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) >= 0.75 else 1)" "$MIN"; then
  SKIP_FIXTURES=1 bash scripts/gpu-oracle.sh "$W/train" "$MIN" > /dev/null 2>&1
  note "training exit $?"
else
  note "training skipped: not enough time left"
fi

# C: benchmarks with the time that is left
L=$(( $(left) - 25 ))
if ((L > 30)); then
  APPEND_SUMMARY=1 STAGES=attention,e2e,peer T_ATT=$(clamp $((L / 4)) 15 60) T_E2E=$(clamp $((L * 2 / 5)) 20 120) \
    T_PEER=$(clamp $((L / 3)) 20 100) bash scripts/gpu-check.sh --run "$W/check"
else
  note "benchmarks skipped: not enough time left"
fi

# D: pack
note "packing"
cp "$W/check/gpu-summary.txt" "$OUT/" 2>/dev/null
cp "$W/fix/oracle.log" "$OUT/oracle-fixtures.log" 2>/dev/null
cp "$W/fix/hf-fixtures.tgz" "$OUT/" 2>/dev/null
cp "$W/train/oracle.log" "$OUT/oracle-train.log" 2>/dev/null
cp "$W/train/tiny-model.tgz" "$OUT/" 2>/dev/null
tar -C "$W" -czf "$OUT/gpu-logs.tgz" check 2>/dev/null
ls -la "$OUT"
echo "[gpu-all] done in $((SECONDS - START)) s"
