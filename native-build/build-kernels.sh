#!/usr/bin/env bash
# Compiles cuda/*.cu with nvcc into the static library libtokenpress_kernels.a that the JavaCPP build of
# dev.tokenpress.backend.cuda.TpNative links (together with cudart_static) into libjniTpNative.so.
# Maven runs this from the javacpp plugin (execution "nvcc-kernels", phase generate-resources).
#
# usage: build-kernels.sh <project dir> <output dir>
# env:   CUDA_HOME (default /usr/local/cuda), TP_NVCC_JOBS (parallel nvcc processes, default: CPU count),
#        TP_GENCODE (override the -gencode list)
set -euo pipefail
PROJECT=${1:?project dir}
OUT=${2:?output dir}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NVCC="$CUDA_HOME/bin/nvcc"
if [[ ! -x "$NVCC" ]]; then
  echo "[tokenpress] nvcc not found at $NVCC: cannot build the CUDA kernels" >&2
  exit 1
fi
GENCODE=${TP_GENCODE:-"-gencode arch=compute_80,code=sm_80 -gencode arch=compute_89,code=sm_89 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90"}
JOBS=${TP_NVCC_JOBS:-$(nproc 2>/dev/null || echo 2)}
mkdir -p "$OUT/obj"
SRC_DIR="$PROJECT/cuda"
mapfile -t SOURCES < <(ls "$SRC_DIR"/*.cu | sort)
if [[ ${#SOURCES[@]} -eq 0 ]]; then
  echo "[tokenpress] no .cu files in $SRC_DIR" >&2
  exit 1
fi
echo "[tokenpress] nvcc $("$NVCC" --version | tail -1)"
echo "[tokenpress] compiling ${#SOURCES[@]} CUDA sources ($JOBS parallel): $GENCODE"
start=$(date +%s)
compile() {
  local src=$1 obj tmp
  obj="$OUT/obj/$(basename "${src%.cu}").o"
  tmp="$obj.$$.tmp"
  # incremental: skip when the object is newer than the source and every header
  if [[ -f "$obj" && "$obj" -nt "$src" ]] && [[ -z "$(find "$SRC_DIR" \( -name '*.cuh' -o -name '*.h' \) -newer "$obj" -print -quit)" ]]; then
    echo "[tokenpress]   $(basename "$src") up to date"
    return 0
  fi
  # shellcheck disable=SC2086
  if ! "$NVCC" -O3 -std=c++17 -lineinfo -Xcompiler -fPIC,-fvisibility=hidden -I"$SRC_DIR" $GENCODE \
       -c "$src" -o "$tmp" 2> "$obj.log"; then
    echo "[tokenpress] FAILED: $src" >&2
    cat "$obj.log" >&2
    return 1
  fi
  grep -v -E '^\s*$' "$obj.log" >&2 || true
  mv -f "$tmp" "$obj" || return 1
  echo "[tokenpress]   $(basename "$src") ok"
}
export -f compile
export NVCC GENCODE OUT SRC_DIR
printf '%s\n' "${SOURCES[@]}" | xargs -P "$JOBS" -I{} bash -c 'compile "$@"' _ {}
rm -f "$OUT/libtokenpress_kernels.a.tmp"
objs=()
for src in "${SOURCES[@]}"; do objs+=("$OUT/obj/$(basename "${src%.cu}").o"); done
ar rcs "$OUT/libtokenpress_kernels.a.tmp" "${objs[@]}"
mv -f "$OUT/libtokenpress_kernels.a.tmp" "$OUT/libtokenpress_kernels.a"
echo "[tokenpress] $OUT/libtokenpress_kernels.a built in $(( $(date +%s) - start )) s"
