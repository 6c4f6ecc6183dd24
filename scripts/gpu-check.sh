#!/usr/bin/env bash
# GPU check for the CUDA backend, in two halves.
#
#   bash scripts/gpu-check.sh                 # HERE (build machine): builds bundle/ (< 64 MiB)
#   bash scripts/gpu-check.sh --run "$OUT"    # ON THE GPU MACHINE, from the repo root, with bundle/ copied beside it
#   bash scripts/gpu-check.sh --run-split "$OUT"  # the same in separate JVMs per test group and stage (see run_split)
#   bash scripts/gpu-check.sh --run-targets "$OUT"  # the tests and every stage the issues' targets need (run_targets)
#
# bundle/: the project jar (with libjniTpNative.so), runtime deps (the tokenizer's native library for linux-x86_64 only),
# the test classes, junit-platform-console-standalone 1.14.1 and a jlinked Temurin 25 runtime as jre.tar.xz.
# --run: prints nvidia-smi, puts the pip CUDA 13 libraries on LD_LIBRARY_PATH, runs the CUDA JUnit tests
# (op parity + whole-model parity), the kernel and end-to-end benchmarks and the PyTorch peer benchmark, each
# stage under its own timeout; a failing stage does not stop the next. Writes $OUT/gpu-summary.txt (every
# number, every pass/fail), $OUT/junit/*.xml and one log per stage.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUNDLE="$ROOT/bundle"
JUNIT_VERSION=1.14.1
TEMURIN=${TEMURIN:-/usr/lib/jvm/temurin-25-jdk-amd64}

build_bundle() {
  set -e
  cd "$ROOT"
  echo "[bundle] mvn package (tests are not run here)"
  mvn -B -o -q package -DskipTests
  rm -rf "$BUNDLE"
  mkdir -p "$BUNDLE/lib" "$BUNDLE/test"
  cp target/tokenpress-*.jar "$BUNDLE/lib/"
  if [[ $(unzip -l "$BUNDLE"/lib/tokenpress-*.jar | grep -c 'libjniTpNative.so') -eq 0 ]]; then
    echo "[bundle] WARNING: the jar has no libjniTpNative.so (built without nvcc?)" >&2
  fi
  for j in target/lib/*.jar; do
    case "$(basename "$j")" in
      jline-*) ;;
      tokenizers-*) # the DJL tokenizer (loaded with a model's tokenizer.json): only its linux-x86_64 native library
        cp "$j" "$BUNDLE/lib/"
        zip -q -d "$BUNDLE/lib/$(basename "$j")" 'native/lib/win-*' 'native/lib/osx-*' 'native/lib/linux-aarch64/*' ;;
      cuda-*-linux-x86_64.jar) # JavaCPP's CUDA JNI libraries: only cudart's and cuBLAS's are loaded
        cp "$j" "$BUNDLE/lib/"
        zip -q -d "$BUNDLE/lib/$(basename "$j")" $(unzip -Z1 "$j" | grep -E '/libjni[^/]*\.so$' \
          | grep -vE '/libjni(cudart|cublas)\.so$') > /dev/null || true ;;
      jna-*) # JNA (the DJL tokenizer's dependency): only its linux-x86-64 dispatch library
        cp "$j" "$BUNDLE/lib/"
        zip -q -d "$BUNDLE/lib/$(basename "$j")" $(unzip -Z1 "$j" | grep -E '^com/sun/jna/[^/]+/' \
          | grep -v '^com/sun/jna/linux-x86-64/' | grep -E '\.(so|a|dll|jnilib)$') > /dev/null || true ;;
      *) cp "$j" "$BUNDLE/lib/" ;;
    esac
  done
  (cd target/test-classes && jar cf "$BUNDLE/test/tokenpress-tests.jar" .)
  local console="$HOME/.m2/repository/org/junit/platform/junit-platform-console-standalone/$JUNIT_VERSION/junit-platform-console-standalone-$JUNIT_VERSION.jar"
  if [[ ! -f "$console" ]]; then
    echo "[bundle] fetching junit-platform-console-standalone $JUNIT_VERSION"
    mvn -B -q dependency:copy -Dartifact=org.junit.platform:junit-platform-console-standalone:$JUNIT_VERSION \
      -DoutputDirectory="$BUNDLE/test" || mvn -B -q dependency:get -Dartifact=org.junit.platform:junit-platform-console-standalone:$JUNIT_VERSION
  fi
  [[ -f "$BUNDLE/test/junit-platform-console-standalone-$JUNIT_VERSION.jar" ]] || cp "$console" "$BUNDLE/test/"
  echo "[bundle] jlink Temurin 25"
  local tmp
  tmp=$(mktemp -d)
  "$TEMURIN/bin/jlink" --add-modules java.base,jdk.unsupported,jdk.incubator.vector,java.logging,java.xml,jdk.zipfs,jdk.httpserver,java.net.http \
    --strip-debug --no-header-files --no-man-pages --compress=zip-0 --output "$tmp/jre"
  # uncompressed modules + xz: about half the size of zip-6 + gzip, which keeps the bundle and the repo under 64 MiB
  tar -C "$tmp" -cJf "$BUNDLE/jre.tar.xz" jre
  rm -rf "$tmp"
  cp "$ROOT/scripts/hf_peer_bench.py" "$BUNDLE/"
  local size
  size=$(du -sb "$BUNDLE" | cut -f1)
  echo "[bundle] $BUNDLE: $((size / 1048576)) MiB"
  du -sh "$BUNDLE"/* "$BUNDLE"/lib/* | sort -h | tail -8
  if (( size >= 64 * 1048576 )); then
    echo "[bundle] ERROR: bundle is ${size} bytes, over 64 MiB" >&2
    exit 1
  fi
  echo "[bundle] ok. On the GPU machine: bash scripts/gpu-check.sh --run \"\$OUT\" (copy bundle/ there first)"
}

run_checks() {
  local OUT=${1:?output dir}
  mkdir -p "$OUT"
  OUT=$(cd "$OUT" && pwd)
  local SUMMARY=${SUMMARY_FILE:-$OUT/gpu-summary.txt}
  local WORK=${TP_WORK:-/tmp/tokenpress-gpu}
  mkdir -p "$WORK"
  [[ -n "${APPEND_SUMMARY:-}" ]] || : > "$SUMMARY"
  say() { echo "$*" | tee -a "$SUMMARY"; }
  # STAGES (default all but gemv, attnsweep, e2epol, profile and selprofile): any of genmodel (only generates the model), junit,attention,policies,gemv,attnsweep,e2epol,cce,e2e,peer,profile,selprofile; T_JUNIT/T_ATT/T_POL/T_CCE/T_E2E/T_PEER/T_SELPROF override
  # stage timeouts; E2E_PARTS picks the e2e stage's parts (short,batch,long,q8) and E2EPOL_CTX the e2epol stage's
  # contexts (8192,32768,131072); POL_E2E=1 adds the policies stage's end-to-end full vs tidal:k=2048 decode (32K/128K, needs the model);
  # JUNIT_CLASSES (simple class names) and JUNIT_TAG (suffix of junit<TAG>.log) split the JUnit stage into several
  # JVMs, so one crashing class cannot take the others down; APPEND_SUMMARY=1 appends to gpu-summary.txt
  local STAGES=${STAGES:-junit,attention,policies,cce,e2e,peer}
  want() { [[ ",$STAGES," == *",$1,"* ]]; }
  stage_rc() { say "STAGE $1: $( [[ $2 -eq 0 ]] && echo PASS || echo "FAIL (rc=$2$( [[ $2 -eq 124 ]] && echo ', timed out'))")"; }
  # kb_stage NAME TIMEOUT PATTERN ARGS...: KernelBench ARGS into bench-NAME.log under TIMEOUT seconds, the stage's
  # pass/fail and the log lines matching PATTERN (grep -E) in the summary, its tail when it failed
  kb_stage() {
    local name=$1 limit=$2 pattern=$3 rc
    shift 3
    timeout "$limit" "$JAVA" "${JOPTS[@]}" -cp "$CP" dev.tokenpress.eval.KernelBench "$@" > "$OUT/bench-$name.log" 2>&1
    rc=$?
    stage_rc "bench-$name" $rc
    grep -E "$pattern" "$OUT/bench-$name.log" | sed 's/^/  /' | tee -a "$SUMMARY"
    [[ $rc -ne 0 ]] && tail -15 "$OUT/bench-$name.log" | sed 's/^/  ! /' | tee -a "$SUMMARY"
    return 0
  }
  local T0=$SECONDS
  say "tokenpress gpu-check $(date -u +%FT%TZ) on $(hostname)"

  # -- stage 0: device
  { nvidia-smi; nvidia-smi --query-gpu=name,memory.total,clocks.max.memory,driver_version --format=csv; } > "$OUT/nvidia-smi.txt" 2>&1
  say "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"

  # -- stage 1: runtime: CUDA 13 libs from pip wheels, jlinked JRE
  local VENV=${VENV:-/opt/torch/.venv} libdirs=""
  for d in "$VENV"/lib/python3*/site-packages/nvidia/cu13/lib; do [[ -d "$d" ]] && libdirs="$d"; done
  if [[ -z "$libdirs" ]]; then
    for so in libcublas.so.13 libcublasLt.so.13 libcudart.so.13; do
      local f
      f=$(find "$VENV"/lib/python3*/site-packages/nvidia -name "$so" 2>/dev/null | head -1)
      [[ -n "$f" ]] && libdirs="$libdirs:$(dirname "$f")"
    done
    libdirs=${libdirs#:}
  fi
  export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  say "CUDA libs: ${libdirs:-NOT FOUND}"
  [[ -n "${TP_JRE_READY:-}" && -x "$WORK/jre/bin/java" ]] || { rm -rf "$WORK/jre"; tar -C "$WORK" -xJf "$BUNDLE/jre.tar.xz" 2> /dev/null \
    || python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$BUNDLE/jre.tar.xz" "$WORK"; }
  local JAVA="$WORK/jre/bin/java"
  "$JAVA" -version > "$OUT/java-version.txt" 2>&1
  say "java: $(head -1 "$OUT/java-version.txt")"
  local CP
  CP=$(ls "$BUNDLE"/lib/*.jar | tr '\n' ':')
  local JOPTS=(--enable-native-access=ALL-UNNAMED --add-modules jdk.incubator.vector -XX:PerMethodTrapLimit=1000 "-Xmx${TP_XMX:-24g}"
               -Dorg.bytedeco.javacpp.cachedir="$WORK/javacpp-cache${JUNIT_TAG:-}"
               -DRUST_FLAVOR=cpu -Dai.djl.offline=true -DDJL_CACHE_DIR="$WORK/djl${JUNIT_TAG:-}")  # the tokenizer's bundled cpu library, never a download
  # TP_JOPTS: extra JVM options for every Java stage, e.g. opt-in kernel paths:
  # TP_JOPTS="-Dtokenpress.cuda.kvqSplits=128x128"
  # shellcheck disable=SC2206
  [[ -n "${TP_JOPTS:-}" ]] && JOPTS+=(${TP_JOPTS})

  # the 2.5 GB llama-1b-shape model is generated on the CPU cores while the GPU runs the tests
  local MODEL=${TP_MODEL_DIR:-$WORK/llama-1b-shape}
  local GEN_PID="" rc=0
  local HAVE_GPU=1
  command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1 || HAVE_GPU=0
  [[ $HAVE_GPU -eq 0 ]] && say "no GPU here: the CUDA tests report skipped; model generation, e2e and peer stages are skipped"
  if [[ $HAVE_GPU -eq 1 && ! -f "$MODEL/model.safetensors" ]] && { want genmodel || want e2e || want e2epol || want peer || want profile || [[ -n "${POL_E2E:-}" ]]; }; then
    timeout "${T_GEN:-200}" "$JAVA" "${JOPTS[@]}" -cp "$CP" dev.tokenpress.eval.KernelBench generate "$MODEL" > "$OUT/make-model.log" 2>&1 &
    GEN_PID=$!
  fi
  # wait_model: waits for the model generation started above (if still running) and reports it once
  wait_model() {
    [[ -n "$GEN_PID" ]] || return 0
    local grc
    wait "$GEN_PID"
    grc=$?
    GEN_PID=""
    stage_rc make-model $grc
    grep -E "^RESULT" "$OUT/make-model.log" | sed 's/^/  /' | tee -a "$SUMMARY"
    [[ $grc -ne 0 ]] && tail -5 "$OUT/make-model.log" | sed 's/^/  ! /' | tee -a "$SUMMARY"
    return 0
  }

  # -- stage 2: JUnit (op parity, whole-model parity, native lib)
  if want junit; then
  # JUNIT_CLASSES: simple names of the test classes to run (default: every CUDA class below)
  local classes=${JUNIT_CLASSES:-"CudaNativeLibTest CudaParityTest CudaModelParityTest CudaGemvParityTest CudaQ8ParityTest CudaFusedDecodeParityTest CudaPolicyOpsParityTest CudaPolicyModelParityTest CudaCceParityTest CudaKvQuantParityTest CudaQuantPolicyOpsParityTest CudaTidalSelectParityTest CudaQuestSelectParityTest CudaTokenSelectParityTest CudaDecodeGreedyTest CudaSessionTest CudaStatsTransferTest"}
  local sel=() c
  for c in $classes; do sel+=(--select-class "dev.tokenpress.backend.cuda.$c"); done
  timeout "${T_JUNIT:-150}" "$JAVA" "${JOPTS[@]}" -jar "$BUNDLE/test/junit-platform-console-standalone-$JUNIT_VERSION.jar" execute \
    --disable-banner --details=tree --disable-ansi-colors \
    --class-path "$BUNDLE/test/tokenpress-tests.jar:$CP" "${sel[@]}" \
    --reports-dir "$OUT/junit${JUNIT_TAG:-}" > "$OUT/junit${JUNIT_TAG:-}.log" 2>&1
  rc=$?
  stage_rc junit $rc
  grep -E "tests (successful|failed|aborted|skipped|found)|containers failed" "$OUT/junit${JUNIT_TAG:-}.log" | sed 's/^/  /' | tee -a "$SUMMARY"
  grep -E "\[parity\]|\[model-parity\]" "$OUT/junit${JUNIT_TAG:-}.log" | sed 's/^/  /' | tee -a "$SUMMARY"
  grep -E "✘|MethodSource .*FAILED|=> " "$OUT/junit${JUNIT_TAG:-}.log" | head -40 | sed 's/^/  /' | tee -a "$SUMMARY"
  fi

  # -- stage 3: kernel benchmark (decode attention GB/s vs measured copy bandwidth)
  want attention && kb_stage attention "${T_ATT:-60}" '^(device|RESULT|\|)' attention

  # -- stage 3a: KV-policy kernels (full vs TidalDecode device selection k=2048 at 8K/32K/128K)
  if want policies; then
  local POL_ARGS=()
  [[ -n "${POL_E2E:-}" ]] && wait_model  # the end-to-end part needs the whole model file
  [[ -n "${POL_E2E:-}" && -f "$MODEL/model.safetensors" ]] && POL_ARGS=("$MODEL")
  kb_stage policies "${T_POL:-150}" '^(device|RESULT|e2e|\|)' policies ${POL_ARGS[@]+"${POL_ARGS[@]}"}
  fi

  # -- stage 3e (only when STAGES names it): end-to-end decode per policy (full, tidal, int4) at 32K and 128K alone
  if want e2epol; then
    wait_model
    # E2EPOL_WEIGHTS=q8_0: the table with Q8_0 weights (default: as stored, bf16); E2EPOL_TABLE=main: only full,
    # the tidal variants (tidal, tidal_separate, tidal_fused), quest and tokenselect (host and device), int4 (quantized
    # attention v3 and v4), the pipelined loop and tidal over int4 (not the other policies' table)
    kb_stage e2epol "${T_E2EPOL:-360}" '^(device|RESULT e2e|e2e)' e2epol "$MODEL" "${E2EPOL_CTX:-8192,32768,131072}" \
      "${E2EPOL_WEIGHTS:-as-stored}" "${E2EPOL_TABLE:-table}"
  fi

  # -- stage 3c (only when STAGES names it): decode GEMV at the 1B shapes, automatic vs forced warps per row
  want gemv && kb_stage gemv "${T_GEMV:-60}" '^(device|RESULT copy|\|)' gemv

  # -- stage 3d (only when STAGES names it): decode attention split-count sweep, full and tidal k=2048, graph and eager
  want attnsweep && kb_stage attnsweep "${T_SWEEP:-90}" '^(device|RESULT copy|\|)' attnsweep

  # -- stage 3b: CCE log-sum-exp vs cuBLAS logits + naive log-softmax (N=8192, D=2048, V=128256)
  want cce && kb_stage cce "${T_CCE:-60}" '^(device|RESULT|cce|\|)' cce

  # -- stage 4: end-to-end decode tokens/s of llama-1b-shape (model generated here once)
  wait_model
  if [[ $HAVE_GPU -eq 1 ]] && want e2e; then
    kb_stage e2e "${T_E2E:-170}" '^(device|RESULT|e2e)' e2e "$MODEL" 128 64 "${E2E_PARTS:-short,batch,long,q8}"
  elif want e2e; then
    say "STAGE bench-e2e: SKIPPED (no GPU)"
  fi

  local NCU  # Nsight Compute, for the profile stages
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  # -- stage 6 (only when STAGES names it): where a decode step's time goes. Step wall times with and without
  # CUDA graphs, then Nsight Compute over about one eager decode step (graphs off so each kernel is attributed).
  if [[ $HAVE_GPU -eq 1 && -f "$MODEL/model.safetensors" ]] && want profile; then
    # graphs on, graphs off, graphs on with Programmatic Dependent Launch (the log's "backend:" line says PDL on/off)
    # PROF_STEPS=0 skips these step timings (Nsight Compute only); PROF_WEIGHTS=q8_0 profiles the Q8_0 weights' step
    [[ "${PROF_STEPS:-1}" == 0 ]] || for gp in "true false" "false false" "true true"; do
      local g p tag
      read -r g p <<< "$gp"
      tag="graphs-$g"; [[ $p == true ]] && tag="$tag-pdl"
      timeout "${T_DP:-60}" "$JAVA" "${JOPTS[@]}" -Dtokenpress.cuda.graphs=$g -Dtokenpress.cuda.pdl=$p -cp "$CP" \
        dev.tokenpress.eval.DecodeProfile "$MODEL" 24 cuda "${PROF_WEIGHTS:-as-stored}" > "$OUT/profile-$tag.log" 2>&1
      say "  decode step ms with graphs=$g pdl=$p (steps 12..23): $(grep -E '^step (1[2-9]|2[0-3]):' "$OUT/profile-$tag.log" | awk '{s+=$3; n++} END {if (n) printf "%.3f", s/n; else print "n/a"}')"
    done
    if [[ -n "$NCU" ]]; then
      timeout "${T_PROF:-150}" "$NCU" --target-processes all --launch-skip "${PROF_SKIP:-1500}" --launch-count "${PROF_COUNT:-240}" \
        --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --csv --log-file "$OUT/ncu.csv" \
        "$JAVA" "${JOPTS[@]}" -Dtokenpress.cuda.graphs=false -cp "$CP" dev.tokenpress.eval.DecodeProfile "$MODEL" 16 \
        cuda "${PROF_WEIGHTS:-as-stored}" \
        > "$OUT/ncu-run.log" 2>&1
      rc=$?
      stage_rc profile $rc
      "${VENV}/bin/python" "$ROOT/scripts/ncu_summary.py" "$OUT/ncu.csv" 2>&1 | tee -a "$SUMMARY" | head -40
    else
      say "STAGE profile: SKIPPED (ncu not found)"
    fi
  fi

  # -- stage 7 (only when STAGES names it): Nsight Compute over TidalDecode's selection and decode attention at
  # SELPROF_CTX (default 131072): every tidal_* and decode_split_v3 kernel of `KernelBench selprofile` (SELPROF_ITERS
  # timed calls per figure), summarised per template instantiation (the attention's KEYS variant apart from the plain),
  # and the int4 quantized attention's kernels (variants 2, 3 and 4: kvq_attention*, kvq_merge)
  if [[ $HAVE_GPU -eq 1 ]] && want selprofile; then
    if [[ -n "$NCU" ]]; then
      timeout "${T_SELPROF:-200}" "$NCU" --clock-control none --target-processes all \
        --kernel-name "regex:tidal_|decode_split_v3|kvq_attention|kvq_merge" --metrics gpu__time_duration.sum --csv --log-file "$OUT/ncu-sel.csv" \
        "$JAVA" "${JOPTS[@]}" -Dtokenpress.bench.policyContexts="${SELPROF_CTX:-131072}" \
        -Dtokenpress.bench.policyIters="${SELPROF_ITERS:-8}" -cp "$CP" dev.tokenpress.eval.KernelBench selprofile \
        > "$OUT/selprofile.log" 2>&1
      rc=$?
      stage_rc selprofile $rc
      "${VENV}/bin/python" "$ROOT/scripts/ncu_summary.py" "$OUT/ncu-sel.csv" --templates 2>&1 | tee -a "$SUMMARY" | head -40
    else
      say "STAGE selprofile: SKIPPED (ncu not found)"
    fi
  fi

  # -- stage 5: PyTorch/transformers peer on the same model
  local PY="$VENV/bin/python"
  if [[ $HAVE_GPU -eq 1 && -f "$MODEL/model.safetensors" && -x "$PY" ]] && want peer; then
    timeout "${T_PEER:-100}" "$PY" "$BUNDLE/hf_peer_bench.py" "$MODEL" --steps 128 --long-context 32768 --long-steps 32 > "$OUT/bench-peer.log" 2>&1
    rc=$?
    stage_rc bench-peer $rc
    grep -E "^RESULT|^peer" "$OUT/bench-peer.log" | sed 's/^/  /' | tee -a "$SUMMARY"
    [[ $rc -ne 0 ]] && tail -15 "$OUT/bench-peer.log" | sed 's/^/  ! /' | tee -a "$SUMMARY"
  elif want peer; then
    say "STAGE bench-peer: SKIPPED (model or $PY missing)"
  fi
  say "total $((SECONDS - T0)) s"
  # a single run: the issues' performance targets read off the summary (Targets; --run-parallel does this at its end)
  [[ -z "${APPEND_SUMMARY:-}" ]] && "$JAVA" -cp "$CP" dev.tokenpress.eval.Targets "$SUMMARY" 2>&1 | tee -a "$SUMMARY"
  return 0
}

# --run-split OUT: the whole check in separate JVMs — seven JUnit groups (a crash or hang in one class cannot take the
# others down), then every benchmark stage — each under its own limit (the limits add up to about 14 minutes; most
# stages end well before theirs). SPLIT_PARTS (default junit,bench,policies,peer) picks the parts, so the check can
# be spread over two device calls; JUNIT_GROUPS (default abcdefg) picks the JUnit groups.
run_split() {
  local OUT=${1:?output dir}
  mkdir -p "$OUT"
  : > "$OUT/gpu-summary.txt"
  export APPEND_SUMMARY=1
  local groups=(
    "a|CudaNativeLibTest CudaGemvParityTest CudaQ8ParityTest CudaPolicyOpsParityTest CudaCceParityTest CudaStatsTransferTest|90"
    "b|CudaParityTest|90"
    "c|CudaFusedDecodeParityTest CudaModelParityTest CudaDecodeGreedyTest CudaSessionTest|90"
    "d|CudaKvQuantParityTest|90"
    "e|CudaTidalSelectParityTest CudaQuestSelectParityTest CudaTokenSelectParityTest|120"
    "f|CudaQuantPolicyOpsParityTest|90"
    "g|CudaPolicyModelParityTest|90")
  local parts=",${SPLIT_PARTS:-junit,bench,policies,peer}," only=${JUNIT_GROUPS:-abcdefg}
  local g tag classes limit
  if [[ $parts == *,junit,* ]]; then
    for g in "${groups[@]}"; do
      IFS='|' read -r tag classes limit <<< "$g"
      [[ $only == *$tag* ]] || continue
      JUNIT_TAG=$tag JUNIT_CLASSES="$classes" STAGES=junit T_JUNIT=$limit run_checks "$OUT" > /dev/null 2>&1
    done
  fi
  [[ $parts == *,bench,* ]] && STAGES=attention,cce,e2e T_ATT=${T_ATT:-45} T_CCE=${T_CCE:-45} T_E2E=${T_E2E:-150} \
    run_checks "$OUT" > "$OUT/run-bench.log" 2>&1
  [[ $parts == *,policies,* ]] && POL_E2E=1 STAGES=policies T_POL=${T_POL:-170} run_checks "$OUT" > "$OUT/run-policies.log" 2>&1
  [[ $parts == *,peer,* ]] && STAGES=peer T_PEER=${T_PEER:-90} run_checks "$OUT" > "$OUT/run-peer.log" 2>&1
  grep -E "^STAGE|tests (successful|failed|aborted)" "$OUT/gpu-summary.txt"
}

# --run-parallel OUT: the seven JUnit groups of --run-split at the same time, each in its own JVM on the one GPU
# (parity tests, no timings), while the llama-1b-shape model is generated on the CPU cores; then, one after
# another, the benchmark stages named in PAR_STAGES (default e2e; any of attention,policies,cce,e2e,e2epol,peer,selprofile),
# each with TP_JOPTS plus PAR_JOPTS_<stage> (e.g. PAR_JOPTS_e2epol="-Dtokenpress.cuda.fusedSelect=true": JVM options
# for that stage alone). The summaries go to OUT/gpu-summary.txt group by group.
run_parallel() {
  local OUT=${1:?output dir}
  mkdir -p "$OUT"
  OUT=$(cd "$OUT" && pwd)
  : > "$OUT/gpu-summary.txt"
  rm -f "$OUT"/summary-*.txt
  local WORK=${TP_WORK:-/tmp/tokenpress-gpu}
  mkdir -p "$WORK"
  rm -rf "$WORK/jre"
  tar -C "$WORK" -xJf "$BUNDLE/jre.tar.xz" 2> /dev/null \
    || python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$BUNDLE/jre.tar.xz" "$WORK"
  export TP_JRE_READY=1 APPEND_SUMMARY=1
  local groups=(
    "a|CudaNativeLibTest CudaGemvParityTest CudaQ8ParityTest CudaPolicyOpsParityTest CudaCceParityTest CudaStatsTransferTest"
    "b|CudaParityTest"
    "c|CudaFusedDecodeParityTest CudaModelParityTest CudaDecodeGreedyTest CudaSessionTest"
    "d|CudaKvQuantParityTest"
    "e|CudaTidalSelectParityTest CudaQuestSelectParityTest CudaTokenSelectParityTest"
    "f|CudaQuantPolicyOpsParityTest"
    "g|CudaPolicyModelParityTest")
  local only=${JUNIT_GROUPS:-abcdefg} g tag classes pids=() t0=$SECONDS
  if [[ -z "${PAR_NO_MODEL:-}" ]]; then
    SUMMARY_FILE="$OUT/summary-model.txt" STAGES=genmodel run_checks "$OUT" > "$OUT/run-model.log" 2>&1 &
    pids+=($!)
  fi
  for g in "${groups[@]}"; do
    IFS='|' read -r tag classes <<< "$g"
    [[ $only == *$tag* ]] || continue
    SUMMARY_FILE="$OUT/summary-$tag.txt" JUNIT_TAG=$tag JUNIT_CLASSES="$classes" STAGES=junit T_JUNIT=${T_JUNIT:-240} \
      TP_XMX=${TP_XMX:-10g} run_checks "$OUT" > /dev/null 2>&1 &
    pids+=($!)
  done
  [[ ${#pids[@]} -gt 0 ]] && wait "${pids[@]}"
  for tag in model a b c d e f g; do
    [[ -f "$OUT/summary-$tag.txt" ]] || continue
    echo "== $tag" >> "$OUT/gpu-summary.txt"
    grep -Ev '^(tokenpress gpu-check|GPU:|CUDA libs:|java:|total)' "$OUT/summary-$tag.txt" >> "$OUT/gpu-summary.txt"
    rm -f "$OUT/summary-$tag.txt"
  done
  echo "parallel part: $((SECONDS - t0)) s" >> "$OUT/gpu-summary.txt"
  local st
  for st in $(echo "${PAR_STAGES:-e2e}" | tr ',' ' '); do
    local extra="PAR_JOPTS_$st"
    TP_JOPTS="${TP_JOPTS:-} ${!extra:-}" STAGES=$st run_checks "$OUT" > "$OUT/run-$st.log" 2>&1
  done
  grep -E "^(STAGE|==|parallel|total)|tests (successful|failed|aborted)" "$OUT/gpu-summary.txt"
  [[ -n "${NO_TARGETS:-}" ]] || print_targets "$OUT"
  ! grep -q "^STAGE .*: FAIL" "$OUT/gpu-summary.txt"  # the exit status: 1 when a stage failed
}

# print_targets OUT: the issues' performance targets read off OUT/gpu-summary.txt (dev.tokenpress.eval.Targets) into
# OUT/targets.md, appended to the summary and printed
print_targets() {
  local OUT=$1 WORK=${TP_WORK:-/tmp/tokenpress-gpu}
  "$WORK/jre/bin/java" -cp "$(ls "$BUNDLE"/lib/*.jar | tr '\n' ':')" dev.tokenpress.eval.Targets "$OUT/gpu-summary.txt" \
    > "$OUT/targets.md" 2>&1
  { echo "== targets"; cat "$OUT/targets.md"; } >> "$OUT/gpu-summary.txt"
  cat "$OUT/targets.md"
}

# --run-targets OUT: what the issues' targets need, in one call (about 4 minutes on an H200): the seven JUnit groups
# at once, then the stages attention, policies, e2e (short and Q8_0), cce, e2epol (the main runs at 128K with Q8_0
# weights), selprofile, then e2epol again with the weights as stored (bf16), and the target table. Every variable of
# --run-parallel still applies (PAR_STAGES, E2EPOL_CTX, T_*, ...).
run_targets() {
  local OUT=${1:?output dir} rc
  PAR_STAGES=${PAR_STAGES:-attention,policies,e2e,cce,e2epol,selprofile} E2E_PARTS=${E2E_PARTS:-short,q8} \
    E2EPOL_WEIGHTS=q8_0 E2EPOL_TABLE=${E2EPOL_TABLE:-main} E2EPOL_CTX=${E2EPOL_CTX:-131072} T_E2EPOL=${T_E2EPOL:-180} \
    NO_TARGETS=1 run_parallel "$OUT"
  rc=$?
  APPEND_SUMMARY=1 TP_JRE_READY=1 STAGES=e2epol E2EPOL_WEIGHTS=as-stored E2EPOL_TABLE=${E2EPOL_TABLE:-main} \
    E2EPOL_CTX=${E2EPOL_CTX:-131072} T_E2EPOL=${T_E2EPOL:-180} run_checks "$OUT" > "$OUT/run-e2epol-bf16.log" 2>&1
  grep -E "^STAGE bench-e2epol" "$OUT/gpu-summary.txt" | tail -1
  print_targets "$OUT"
  return $rc
}

case "${1:-}" in
  --run) shift; run_checks "$@" ;;
  --run-split) shift; run_split "$@" ;;
  --run-parallel) shift; run_parallel "$@" ;;
  --run-targets) shift; run_targets "$@" ;;
  ""|--build) build_bundle ;;
  *) echo "usage: $0 [--build] | --run OUT_DIR | --run-split OUT_DIR | --run-parallel OUT_DIR | --run-targets OUT_DIR" >&2; exit 2 ;;
esac
