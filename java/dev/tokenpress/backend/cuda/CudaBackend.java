package dev.tokenpress.backend.cuda;

import dev.tokenpress.backend.Backend;
import dev.tokenpress.backend.DecodeStep;
import dev.tokenpress.backend.DeviceUnavailableException;
import dev.tokenpress.backend.RopeTable;
import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.UnsupportedOpException;
import dev.tokenpress.io.DType;
import dev.tokenpress.io.Half;
import dev.tokenpress.io.TensorData;
import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.SlotSelection;
import org.bytedeco.cuda.cublas.cublasContext;
import org.bytedeco.cuda.cudart.CUstream_st;
import org.bytedeco.javacpp.BytePointer;
import org.bytedeco.javacpp.FloatPointer;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.IdentityHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

import static org.bytedeco.cuda.global.cublas.CUBLAS_COMPUTE_32F;
import static org.bytedeco.cuda.global.cublas.CUBLAS_GEMM_DEFAULT;
import static org.bytedeco.cuda.global.cublas.CUBLAS_OP_N;
import static org.bytedeco.cuda.global.cublas.CUBLAS_OP_T;
import static org.bytedeco.cuda.global.cublas.cublasCreate_v2;
import static org.bytedeco.cuda.global.cublas.cublasDestroy_v2;
import static org.bytedeco.cuda.global.cublas.cublasGemmEx;
import static org.bytedeco.cuda.global.cublas.cublasSetStream_v2;
import static org.bytedeco.cuda.global.cublas.cublasSetWorkspace_v2;
import static org.bytedeco.cuda.global.cudart.CUDA_R_16BF;
import static org.bytedeco.cuda.global.cudart.CUDA_R_32F;

/**
 * The CUDA backend: f32 activations and bf16 weights/KV in device memory, hand-written kernels through
 * {@link TpNative} and matmuls through cuBLAS ({@code cublasGemmEx}: bf16 A and B, f32 compute and output; the
 * f32 activations are converted to bf16 first). Everything runs in order on one stream; only the ops that return
 * host data (download, argmax, topK, attention statistics) wait for it.
 *
 * <p>Step values (token ids, positions, slot lists, counts, high-water marks) always travel through a pinned
 * staging buffer and an async copy, and every kernel reads them from device memory. That makes a decode step
 * replayable as a CUDA graph: {@link #runDecodeStep} runs the first step eagerly (warm-up), captures the next one
 * into a graph, and for later steps re-runs the Java body in a "dry" mode that only rewrites the pinned step
 * values and checks that the op sequence (a signature of every op's addresses and shapes) is unchanged; then it
 * replays the graph. A changed signature (e.g. the context crossed a power of two, which changes the split
 * count of decode attention) triggers a re-capture; an op that cannot be captured (statistics, downloads) makes
 * the backend fall back to eager launches and {@link #graphStatus()} says why.
 */
public final class CudaBackend implements Backend {
    private static final long EAGER_ARENA_BYTES = 32L << 20;
    private static final long GRAPH_ARENA_BYTES = 8L << 20;
    private static final long CUBLAS_WORKSPACE_BYTES = 32L << 20;
    /** Largest row count the GEMV kernel takes (tp_gemv_bf16); more rows go to cuBLAS. */
    public static final int GEMV_MAX_ROWS = 4;
    private static final int ATTN_COUNTERS = 65536;

    private enum Mode { EAGER, CAPTURE, DRY }

    private final int device;
    private final String deviceName;
    private final int[] props = new int[8];
    private final int driverVersion;
    private final long stream;
    private final cublasContext cublas;
    private final CUstream_st cublasStream;
    private final long cublasWorkspace;
    private final FloatPointer one = new FloatPointer(1f);
    private final FloatPointer zero = new FloatPointer(0f);
    private final RawPointer pA = new RawPointer(0, 0), pB = new RawPointer(0, 0), pC = new RawPointer(0, 0);
    private final Set<Long> allocations = new LinkedHashSet<>();
    private final List<CudaKvCache> caches = new ArrayList<>();
    private final List<CudaQuantKvCache> quantCaches = new ArrayList<>();
    private final Map<float[], Long> invFreqs = new IdentityHashMap<>();

    private StageArena eagerArena;
    private long eagerArenaHost, eagerArenaDev;
    // Graph step values: two pinned host arenas over one device arena. A decode step writes its values into one
    // host arena (dry run or capture), copies it to the device arena in one async copy right before its graph
    // launch, and the next step writes the other host arena, so the host can prepare step t + 1 while step t runs.
    private final long[] graphArenaHosts = new long[2];
    private final long graphArenaDev;
    private final StageArena[] graphArenas = new StageArena[2];
    private final long[] graphArenaCopied = new long[2]; // events after each host arena's last copy
    private final boolean[] graphArenaPending = new boolean[2];
    private int graphArenaIdx;
    private StageArena graphArena;
    // greedy token feedback: the register the argmax writes and the next step's embedding reads, and two pinned
    // host tickets with their copy events
    private final long feedbackDev, feedbackHost;
    private final java.nio.IntBuffer feedbackTickets;
    private final long[] feedbackEvents = new long[2];

    // scratch, grown only in eager mode
    private long xBf16;
    private dev.tokenpress.backend.WeightType weightType = dev.tokenpress.backend.WeightType.AS_STORED;
    private long q8Scratch, q8ScratchBytes;  // bf16 rows of a Q8_0 matrix for the cuBLAS GEMM of a prefill chunk
    private long q8SliceBytes = 64L << 20;   // the most bytes of one such slice

    /** The most bytes of dequantized Q8_0 weight rows one cuBLAS call of a prefill chunk takes (tests: small slices). */
    void setQ8SliceBytes(long bytes) {
        if (bytes < 2) throw new IllegalArgumentException("q8 slice bytes " + bytes);
        q8SliceBytes = bytes;
    }
    private long xBf16Bytes;
    private long attnWs;
    private long attnWsBytes;
    private final Scratch statRaw = new Scratch("attention raw-score buffer"),
            statProb = new Scratch("attention probability-sum buffer");
    // attention statistics through one pinned host buffer per call (pinnedStats): [heads][hw] raw scores, then
    // [kvHeads][hw] probability sums
    private boolean pinnedStats;
    private long statsHost, statsHostBytes;
    private java.nio.FloatBuffer statsHostFloats;
    private boolean statsInFlight;      // an upload from the pinned buffer may not have run yet
    private long selWs, selWsBytes;
    private long policyBuf, policyBufBytes;       // scores of queryKeyScores / questPageScores, one slot of readKv
    private float[] policyHostBuf = new float[0];  // their host copy
    private long selOut;              // int32[1024] + f32[1024]
    private long lseRows, lseRowsBytes; // logSumExpRows: targets int32[n], lse f32[n], target logits f32[n]
    private long attnCounters;        // int32[ATTN_COUNTERS], zeroed once; the fused decode-attention merge
                                      // leaves it zeroed after every call

    // kernel paths (system properties, or the setters below)
    private boolean gemvEnabled;
    private boolean fusedAttnMerge;
    private int attentionVariant = 2;  // decode attention kernel (tp_set_attention_variant)
    private boolean fusedQkv;          // matmulQkv: one GEMV launch for q, k, v
    private boolean fusedSwiglu;       // matmulSwiglu: gate/up GEMV + SwiGLU in one kernel
    private boolean fusedNorm;         // rmsnormMatmul*: RMSNorm inside the GEMV; matmulAdd: residual add in its epilogue
    private boolean fusedRopeStoreKv;  // ropeStoreKv: rope q, rope k, store k/v in one kernel
    private boolean fusedSelect;       // selectTopSlots queued for its layer's attention (tp_decode_attention_select)
    private boolean sideSelect;        // ... and that selection forked onto a second stream until its reader
    private long sideStream, sideFork, sideJoin; // the second stream and its fork / join events (made at first use)
    private boolean sideJoinPending;   // a selection runs on the second stream: its readers wait for sideJoin
    private boolean shortAttn;         // decode attention: one split that writes out directly for short contexts
    private final boolean pdlSupported; // Programmatic Dependent Launch possible (sm_90+, CUDA >= 12.3)

    // graphs
    private Mode mode = Mode.EAGER;
    private boolean graphsEnabled;
    private String graphsOffReason;
    private long graph;
    private long[] graphSig;
    // graphs captured earlier for other op sequences (e.g. the step of a quantized cache that also encodes a block),
    // replayed when a step's signature matches one again; at most SPARE_GRAPHS, the oldest destroyed first
    private static final int SPARE_GRAPHS = 3;
    private record SpareGraph(long[] sig, long exec) {}
    private final java.util.ArrayDeque<SpareGraph> spares = new java.util.ArrayDeque<>();
    private boolean quantGraphs;       // quantized-KV decode steps are captured into graphs too
    private boolean batchGraphs;       // batched decode steps (Llama.decodeBatch) are captured into graphs too
    private boolean batchAttention;    // pooled lane caches, one attention call per run of a batch's rows
    private final LongList sig = new LongList();
    private final long replayEvent;
    private boolean replayPending;
    private int decodeCalls, captures, replays, captureFailures, eagerSteps;
    private int failuresThisConfig; // failed captures since the last new KV cache (three turn graphs off)
    /** Graphs were turned off by a decode step that cannot be captured (not by the caller or a failed capture API). */
    private boolean graphsOffByStep;
    private boolean closed;

    /** Opens device 0; throws {@link DeviceUnavailableException} with the reason when CUDA cannot be used. */
    public static CudaBackend open() {
        if (!Cuda.available()) throw new DeviceUnavailableException(Cuda.unavailableReason());
        return new CudaBackend(0);
    }

    private CudaBackend(int device) {
        this.device = device;
        check(TpNative.tp_set_device(device), "cudaSetDevice");
        check(TpNative.tp_device_props(device, props), "device properties");
        byte[] name = new byte[256];
        check(TpNative.tp_device_name(device, name, name.length), "device name");
        int len = 0;
        while (len < name.length && name[len] != 0) len++;
        this.deviceName = new String(name, 0, len, StandardCharsets.UTF_8);
        int[] drv = {0}, rt = {0};
        TpNative.tp_versions(drv, rt);
        this.driverVersion = drv[0];
        long[] s = {0};
        check(TpNative.tp_stream_create(s), "stream");
        this.stream = s[0];
        this.cublas = new cublasContext();
        int st = cublasCreate_v2(cublas);
        if (st != 0) throw new CudaException("cublasCreate failed with status " + st, st);
        this.cublasStream = new CUstream_st(new RawPointer(stream, 0));
        cublasSetStream_v2(cublas, cublasStream);
        this.cublasWorkspace = malloc(CUBLAS_WORKSPACE_BYTES, "cuBLAS workspace");
        st = cublasSetWorkspace_v2(cublas, new RawPointer(cublasWorkspace, CUBLAS_WORKSPACE_BYTES), CUBLAS_WORKSPACE_BYTES);
        if (st != 0) throw new CudaException("cublasSetWorkspace failed with status " + st, st);
        this.eagerArenaHost = mallocHost(EAGER_ARENA_BYTES);
        this.eagerArenaDev = malloc(EAGER_ARENA_BYTES, "staging buffer");
        this.eagerArena = new StageArena(eagerArenaHost, eagerArenaDev, EAGER_ARENA_BYTES);
        this.graphArenaDev = malloc(GRAPH_ARENA_BYTES, "graph staging buffer");
        for (int i = 0; i < 2; i++) {
            graphArenaHosts[i] = mallocHost(GRAPH_ARENA_BYTES);
            graphArenas[i] = new StageArena(graphArenaHosts[i], graphArenaDev, GRAPH_ARENA_BYTES);
            long[] e = {0};
            check(TpNative.tp_event_create(e), "event");
            graphArenaCopied[i] = e[0];
            check(TpNative.tp_event_create(e), "event");
            feedbackEvents[i] = e[0];
        }
        this.graphArena = graphArenas[0];
        this.feedbackDev = malloc(16, "token feedback register");
        this.feedbackHost = mallocHost(16);
        this.feedbackTickets = new RawPointer(feedbackHost, 16).asByteBuffer().order(java.nio.ByteOrder.nativeOrder()).asIntBuffer();
        this.selOut = malloc(8 * 1024, "top-k output");
        long[] ev = {0};
        check(TpNative.tp_event_create(ev), "event");
        this.replayEvent = ev[0];
        String prop = System.getProperty("tokenpress.cuda.graphs", System.getenv().getOrDefault("TOKENPRESS_CUDA_GRAPHS", "true"));
        this.graphsEnabled = !"false".equalsIgnoreCase(prop) && !"0".equals(prop);
        if (!graphsEnabled) graphsOffReason = "disabled by tokenpress.cuda.graphs=false";
        this.gemvEnabled = flag("tokenpress.cuda.gemv", "TOKENPRESS_CUDA_GEMV");
        this.fusedAttnMerge = flag("tokenpress.cuda.fusedAttnMerge", "TOKENPRESS_CUDA_FUSED_ATTN_MERGE");
        this.fusedQkv = flag("tokenpress.cuda.fusedQkv", "TOKENPRESS_CUDA_FUSED_QKV");
        this.fusedSwiglu = flag("tokenpress.cuda.fusedSwiglu", "TOKENPRESS_CUDA_FUSED_SWIGLU");
        this.fusedRopeStoreKv = flag("tokenpress.cuda.fusedRopeStoreKv", "TOKENPRESS_CUDA_FUSED_ROPE_STORE_KV");
        this.shortAttn = flag("tokenpress.cuda.shortAttn", "TOKENPRESS_CUDA_SHORT_ATTN");
        this.fusedNorm = optIn("tokenpress.cuda.fusedNorm", "TOKENPRESS_CUDA_FUSED_NORM");
        this.fusedSelect = flag("tokenpress.cuda.fusedSelect", "TOKENPRESS_CUDA_FUSED_SELECT");
        this.sideSelect = flag("tokenpress.cuda.sideSelect", "TOKENPRESS_CUDA_SIDE_SELECT");
        if (sideSelect) ensureSideStream();
        this.quantGraphs = flag("tokenpress.cuda.quantGraphs", "TOKENPRESS_CUDA_QUANT_GRAPHS");
        this.pinnedStats = flag("tokenpress.cuda.pinnedStats", "TOKENPRESS_CUDA_PINNED_STATS");
        this.batchGraphs = flag("tokenpress.cuda.batchGraphs", "TOKENPRESS_CUDA_BATCH_GRAPHS");
        this.batchAttention = flag("tokenpress.cuda.batchAttention", "TOKENPRESS_CUDA_BATCH_ATTENTION");
        // quantized attention: v4 (tensor cores over the packed blocks; falls back to v3 where it does not apply) since its
        // first GPU run (H200, int4 at 8K / 32K / 128K: 22.5 / 43.1 / 122.5 µs against v3's 28.2 / 64.0 / 205.2)
        String qa = System.getProperty("tokenpress.cuda.quantAttention", System.getenv().getOrDefault("TOKENPRESS_CUDA_QUANT_ATTENTION", "v4"));
        int qv = switch (qa.toLowerCase(java.util.Locale.ROOT)) { case "v1", "1" -> 1; case "v2", "2" -> 2; case "v3", "3" -> 3; default -> 4; };
        check(TpNative.tp_kvq_set_attention_variant(qv), "quantized attention variant");
        // PDL: on where supported (sm_90+, CUDA >= 12.3) unless switched off; a process-wide switch in the native library
        this.pdlSupported = TpNative.tp_pdl_supported() != 0;
        boolean pdl = flag("tokenpress.cuda.pdl", "TOKENPRESS_CUDA_PDL") && pdlSupported;
        check(TpNative.tp_set_pdl(pdl ? 1 : 0), "tp_set_pdl");
        String attn = System.getProperty("tokenpress.cuda.attention", System.getenv().getOrDefault("TOKENPRESS_CUDA_ATTENTION", "v3"));
        setAttentionVariant(switch (attn.toLowerCase(java.util.Locale.ROOT)) { case "v1", "1" -> 1; case "v2", "2" -> 2; default -> 3; });
        // L2 prefetch before the PDL wait, process-wide (0 = off, the native default): rows per block of attention v3,
        // and the largest GEMV launch (MiB of weights) whose blocks prefetch their rows
        nativeSetting("tokenpress.cuda.attnPrefetch", "TOKENPRESS_CUDA_ATTN_PREFETCH", TpNative::tp_set_attention_prefetch);
        nativeSetting("tokenpress.cuda.gemvPrefetch", "TOKENPRESS_CUDA_GEMV_PREFETCH", TpNative::tp_gemv_set_prefetch);
        nativeSetting("tokenpress.cuda.q8Gemv", "TOKENPRESS_CUDA_Q8_GEMV", TpNative::tp_set_q8_gemv_variant); // 1 | 2 | 3 | 4, process-wide
        String tidal = System.getProperty("tokenpress.cuda.tidalSelect"); // auto (native default) | v1 | v2 | v3, process-wide
        if (tidal != null) check(TpNative.tp_set_tidal_select_variant(switch (tidal) { case "auto" -> 0; case "v1" -> 1; case "v2" -> 2; case "v3" -> 3; default -> -1; }), "tokenpress.cuda.tidalSelect=" + tidal);
        String cce = System.getProperty("tokenpress.cuda.cceVariant", System.getenv("TOKENPRESS_CUDA_CCE_VARIANT")); // gemm (CudaCce.GEMM, default) | v1 | v2 | v3 | v4, process-wide
        if (cce != null) {
            String c = cce.toLowerCase(java.util.Locale.ROOT);
            int v = switch (c) { case "gemm", "v5", "5" -> CudaCce.GEMM; case "v1", "1" -> 1; case "v2", "2" -> 2; case "v3", "3" -> 3; case "v4", "4" -> 4; default -> -1; };
            if (v < 0) throw new IllegalArgumentException("tokenpress.cuda.cceVariant=" + cce + ": gemm, v1, v2, v3 or v4");
            CudaCce.setVariant(v);
        }
        if (optIn("tokenpress.cuda.cceOverlap", "TOKENPRESS_CUDA_CCE_OVERLAP")) CudaCce.setGemmOverlap(true); // process-wide
        String chunk = System.getProperty("tokenpress.cuda.cceGemmChunk", System.getenv("TOKENPRESS_CUDA_CCE_GEMM_CHUNK")); // ROWSxCOLS
        if (chunk != null) {
            String[] rc = chunk.toLowerCase(java.util.Locale.ROOT).split("x");
            try {
                if (rc.length != 2) throw new NumberFormatException();
                CudaCce.setGemmChunk(Integer.parseInt(rc[0].trim()), Integer.parseInt(rc[1].trim()));
            } catch (RuntimeException e) {
                throw new IllegalArgumentException("tokenpress.cuda.cceGemmChunk=" + chunk + ": expected ROWSxCOLS, e.g. 2048x2048");
            }
        }
        // quantized-KV decode attention: at most MAX splits of ROWS candidate slots each (tp_kvq_set_splits), process-wide
        String kvqSplits = System.getProperty("tokenpress.cuda.kvqSplits", System.getenv("TOKENPRESS_CUDA_KVQ_SPLITS")); // MAXxROWS
        if (kvqSplits != null) {
            String[] mr = kvqSplits.toLowerCase(java.util.Locale.ROOT).split("x");
            int rc;
            try {
                if (mr.length != 2) throw new NumberFormatException();
                rc = TpNative.tp_kvq_set_splits(Integer.parseInt(mr[0].trim()), Integer.parseInt(mr[1].trim()));
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException("tokenpress.cuda.kvqSplits=" + kvqSplits + ": expected MAXxROWS, e.g. 256x64");
            }
            if (rc != TpNative.TP_OK)
                throw new IllegalArgumentException("tokenpress.cuda.kvqSplits=" + kvqSplits + ": " + lastError());
        }
    }

    /**
     * A switch that is off unless the system property (or else the environment variable) says true or 1: for paths
     * that are not (yet) worth being the default. Read at each use, so tests can opt in.
     */
    static boolean optIn(String property, String env) {
        String v = System.getProperty(property, System.getenv().getOrDefault(env, "false"));
        return "true".equalsIgnoreCase(v) || "1".equals(v);
    }

    /** Passes an integer system property (or else environment variable), when set, to a native setter; -1 if not a number. */
    private void nativeSetting(String property, String env, java.util.function.IntUnaryOperator setter) {
        String v = System.getProperty(property, System.getenv(env));
        if (v == null) return;
        int n;
        try {
            n = Integer.parseInt(v.trim());
        } catch (NumberFormatException e) {
            n = -1;
        }
        check(setter.applyAsInt(n), property + "=" + v);
    }

    /** A switch that is on unless the system property (or else the environment variable) says false or 0. */
    private static boolean flag(String property, String env) {
        String v = System.getProperty(property, System.getenv().getOrDefault(env, "true"));
        return !"false".equalsIgnoreCase(v) && !"0".equals(v);
    }

    // ---- info -------------------------------------------------------------------------------------------------

    @Override
    public String name() { return "cuda"; }

    @Override
    public String description() {
        return String.format("CUDA: %s (sm_%d%d, %d SMs, %.1f GiB, driver %d.%d), %s, %s",
                deviceName, props[1], props[2], props[0], props[3] / 1024.0, driverVersion / 1000,
                (driverVersion % 1000) / 10, kernelPaths(), graphsEnabled ? "CUDA graphs" : "eager launches");
    }

    public String deviceName() { return deviceName; }

    /** Multiprocessor count. */
    public int smCount() { return props[0]; }

    /** Peak DRAM bandwidth from the memory clock and bus width (bytes/s), 0 when unknown. */
    public double theoreticalBandwidth() {
        return props[6] <= 0 || props[7] <= 0 ? 0 : 2.0 * props[6] * 1e3 * (props[7] / 8.0);
    }

    /** The CUDA stream all work runs on (a cudaStream_t as a number). */
    public long stream() { return stream; }

    /** Graph use so far, one line (for logs and the benchmark). */
    public String graphStatus() {
        String base = "captures=" + captures + " replays=" + replays + " eagerSteps=" + eagerSteps
                + " captureFailures=" + captureFailures;
        return graphsEnabled ? "graphs on (" + base + ")" : "graphs off: " + graphsOffReason + " (" + base + ")";
    }

    public int graphReplays() { return replays; }

    /**
     * For benchmarks: replays the decode-step graph captured last {@code n} times back to back with the step values
     * of its last replay (the same token written to the same slots again) and returns the device time per replay in
     * µs, timed with CUDA events; NaN when no graph is held. Separates a step's device time from the host's share.
     */
    public double timeGraphReplays(int n) {
        if (graph == 0 || n <= 0) return Double.NaN;
        waitReplay();
        long[] e0 = {0}, e1 = {0};
        check(TpNative.tp_event_create(e0), "event create");
        check(TpNative.tp_event_create(e1), "event create");
        try {
            check(TpNative.tp_event_record(e0[0], stream), "event record");
            for (int i = 0; i < n; i++) check(TpNative.tp_graph_launch(graph, stream), "cudaGraphLaunch");
            check(TpNative.tp_event_record(e1[0], stream), "event record");
            check(TpNative.tp_event_synchronize(e1[0]), "event synchronize");
            float[] ms = {0};
            check(TpNative.tp_event_elapsed_ms(ms, e0[0], e1[0]), "event elapsed");
            return ms[0] * 1e3 / n;
        } finally {
            TpNative.tp_event_destroy(e0[0]);
            TpNative.tp_event_destroy(e1[0]);
        }
    }

    /**
     * Decode GEMV kernel ({@code tp_gemv_bf16}) for matmuls of at most {@link #GEMV_MAX_ROWS} rows with bf16
     * weights (default on; {@code -Dtokenpress.cuda.gemv=false} or this setter turns it off: every matmul then
     * goes through the f32→bf16 conversion and cuBLAS). Drops a captured graph.
     */
    public void setGemvEnabled(boolean on) {
        reconfigure("setGemvEnabled");
        gemvEnabled = on;
    }

    public boolean gemvEnabled() { return gemvEnabled; }

    /**
     * Decode attention merges the splits inside the split kernel (the last block per KV head; default on) or in
     * a second kernel ({@code -Dtokenpress.cuda.fusedAttnMerge=false} or this setter). Drops a captured graph.
     */
    public void setFusedAttnMerge(boolean on) {
        reconfigure("setFusedAttnMerge");
        fusedAttnMerge = on;
    }

    public boolean fusedAttnMerge() { return fusedAttnMerge; }

    /**
     * Decode attention kernel: 3 = tensor cores (default), 2 = the cp.async-pipelined kernel
     * ({@code -Dtokenpress.cuda.attention=v2} or this setter), 1 = the first, register-loaded kernel ({@code =v1}).
     * Process-wide in the native library (the last backend to set it wins). Drops a captured graph.
     */
    public void setAttentionVariant(int variant) {
        if (variant < 1 || variant > 3) throw new IllegalArgumentException("attention variant " + variant + ": 1, 2 or 3");
        reconfigure("setAttentionVariant");
        check(TpNative.tp_set_attention_variant(variant), "attention variant");
        attentionVariant = variant;
    }

    public int attentionVariant() { return attentionVariant; }

    /**
     * The Q8_0 GEMVs' kernel variant (tp_set_q8_gemv_variant): 1 = I2F with each scale read when used, 2 = a byte
     * permute with the scales loaded alongside the codes (the same results), 3 = lanes interleaved at 4 codes so that
     * x is read coalesced (results within rounding), 4 (the default) = x quantized to int8 per block of 32 in shared
     * memory and DP4A products, llama.cpp's integer path (results within x's 8-bit rounding; a call whose x exceeds
     * 47 KB of shared memory runs 1; 999 tokens/s end to end on an H100 against 795 for variant 1). Drops a captured
     * graph.
     */
    public void setQ8GemvVariant(int variant) {
        if (variant < 1 || variant > 4) throw new IllegalArgumentException("Q8 GEMV variant " + variant + ": 1, 2, 3 or 4");
        reconfigure("setQ8GemvVariant");
        check(TpNative.tp_set_q8_gemv_variant(variant), "Q8 GEMV variant");
    }

    public int q8GemvVariant() { return TpNative.tp_q8_gemv_variant(); }

    /**
     * Rows per block that decode attention v3 prefetches into L2 before waiting for the previous kernel
     * ({@code tp_set_attention_prefetch}, process-wide; 0 = off, the default; {@code -Dtokenpress.cuda.attnPrefetch}).
     * Results are bit-identical with any value. Drops a captured graph.
     */
    public void setAttentionPrefetch(int rows) {
        reconfigure("setAttentionPrefetch");
        check(TpNative.tp_set_attention_prefetch(rows), "attention L2 prefetch");
    }

    public int attentionPrefetch() { return TpNative.tp_get_attention_prefetch(); }

    /**
     * Decode GEMV launches that read at most {@code maxMib} MiB of weights prefetch each block's rows into L2 before
     * waiting for the previous kernel ({@code tp_gemv_set_prefetch}, process-wide; 0 = off, the default;
     * {@code -Dtokenpress.cuda.gemvPrefetch}). Results are bit-identical with any value. Drops a captured graph.
     */
    public void setGemvPrefetch(int maxMib) {
        reconfigure("setGemvPrefetch");
        check(TpNative.tp_gemv_set_prefetch(maxMib), "GEMV L2 prefetch");
    }

    public int gemvPrefetch() { return TpNative.tp_gemv_get_prefetch(); }

    /**
     * {@link #matmulQkv} as one GEMV launch over the rows of wq, wk and wv ({@code tp_gemv_bf16_multi}; default
     * on, needs the GEMV path; {@code -Dtokenpress.cuda.fusedQkv=false} or this setter: three matmuls). Drops a
     * captured graph.
     */
    public void setFusedQkv(boolean on) {
        reconfigure("setFusedQkv");
        fusedQkv = on;
    }

    public boolean fusedQkv() { return fusedQkv; }

    /**
     * {@link #matmulSwiglu} as one gate/up GEMV + SwiGLU kernel ({@code tp_gemv_bf16_swiglu}; default on, needs
     * the GEMV path; {@code -Dtokenpress.cuda.fusedSwiglu=false} or this setter: two matmuls and swiglu). Drops a
     * captured graph.
     */
    public void setFusedSwiglu(boolean on) {
        reconfigure("setFusedSwiglu");
        fusedSwiglu = on;
    }

    public boolean fusedSwiglu() { return fusedSwiglu; }

    /**
     * RMSNorm fused into the decode GEMVs that consume it ({@link #rmsnormMatmulQkv}, {@link #rmsnormMatmulSwiglu}:
     * {@code tp_gemv_bf16_multi_norm} / {@code tp_gemv_bf16_swiglu_norm}, the normalized activations are never
     * written) and the residual add into the o / down projections ({@link #matmulAdd}: {@code tp_gemv_bf16_acc}),
     * so a decoder layer runs six kernels instead of eight. Off unless {@code -Dtokenpress.cuda.fusedNorm=true} or
     * this setter; needs the GEMV path (and fused qkv / gate-up for the norm). Drops a captured graph.
     */
    public void setFusedNorm(boolean on) {
        reconfigure("setFusedNorm");
        fusedNorm = on;
    }

    public boolean fusedNorm() { return fusedNorm; }

    @Override
    public boolean fusesNormIntoMatmul() {
        return fusedNorm && gemvEnabled && fusedQkv && fusedSwiglu;
    }

    /**
     * TidalDecode's selection made by its layer's own attention: a {@link #selectTopSlots} over a bf16 cache that needs
     * no host copy is queued, and the attention call of that layer that follows (one decode row over every slot, the
     * same q, no statistics) runs {@code tp_decode_attention_select}: with the tensor-core attention kernel the
     * selection's scores come from the attention's own q·k, so the keys are read once instead of twice (scores in the
     * attention's arithmetic: slots within rounding of the threshold may differ from {@code tp_tidal_select}'s). Every
     * other op (and a decode step's start and end, a synchronize, a cache clear) first runs a queued selection alone,
     * so it reads q and the cache as they were when it was asked for. On by default ({@code
     * -Dtokenpress.cuda.fusedSelect=false} or this setter switches it off): on the H200 a selection layer at 128K took
     * 162.8 µs in place of 181.9 µs (docs/PERFORMANCE.md). Drops a captured graph.
     */
    public void setFusedSelect(boolean on) {
        reconfigure("setFusedSelect");
        flushPendingSelect();
        fusedSelect = on;
    }

    public boolean fusedSelect() { return fusedSelect; }

    /**
     * The selection of {@link #setFusedSelect} on a second stream: after the selection layer's attention (which writes
     * the selection's keys) the selection's passes over those keys (histogram, collect, compact) are forked onto it,
     * and only the next op that may read the selection — an attention call, another selection, a download, a cache
     * clear, the decode step's end — waits for them; the GEMVs, norms and the KV store of the layers in between run
     * beside them (TidalDecode's selection is read a layer later). The fork and join are graph edges in a captured
     * step. On by default ({@code -Dtokenpress.cuda.sideSelect=false} or this setter switches it off): on the H200,
     * TidalDecode at 128K with Q8_0 weights ran at 654.2 / 666.6 tokens/s against 596.6 / 644.3 with the selection on
     * the main stream (docs/PERFORMANCE.md). Drops a captured graph.
     */
    public void setSideSelect(boolean on) {
        reconfigure("setSideSelect");
        flushPendingSelect();
        if (on) ensureSideStream();
        sideSelect = on;
    }

    public boolean sideSelect() { return sideSelect; }

    private void ensureSideStream() {
        long[] h = {0};
        if (sideStream == 0) {
            check(TpNative.tp_stream_create(h), "selection stream");
            sideStream = h[0];
        }
        if (sideFork == 0) {
            h[0] = 0;
            check(TpNative.tp_event_create_sync(h), "selection fork event");
            sideFork = h[0];
        }
        if (sideJoin == 0) {
            h[0] = 0;
            check(TpNative.tp_event_create_sync(h), "selection join event");
            sideJoin = h[0];
        }
    }

    /** The main stream waits for a selection forked onto the second stream ({@link #setSideSelect}). */
    private void joinSideSelect() {
        if (!sideJoinPending) return;
        sideJoinPending = false;
        sig(55);
        if (mode != Mode.DRY) check(TpNative.tp_stream_wait_event(stream, sideJoin), "join the selection stream");
    }

    private long fusedSelectCalls;

    /** Attention calls that launched the queued selection of their layer ({@link #setFusedSelect}; graph replays not counted). */
    public long fusedSelectCalls() {
        return fusedSelectCalls;
    }

    /**
     * {@link #ropeStoreKv} as one kernel ({@code tp_rope_store_kv}; default on;
     * {@code -Dtokenpress.cuda.fusedRopeStoreKv=false} or this setter: rope, rope, storeKv). Drops a captured graph.
     */
    public void setFusedRopeStoreKv(boolean on) {
        reconfigure("setFusedRopeStoreKv");
        fusedRopeStoreKv = on;
    }

    public boolean fusedRopeStoreKv() { return fusedRopeStoreKv; }

    /**
     * Decode attention over short contexts (length hint up to 4 block iterations of rows: 256 for hd 64 with
     * GQA groups up to 4) runs one block per KV head that writes the output directly, with no split merge
     * (default on; {@code -Dtokenpress.cuda.shortAttn=false} or this setter: the split count as before). Drops a
     * captured graph.
     */
    public void setShortAttn(boolean on) {
        reconfigure("setShortAttn");
        shortAttn = on;
    }

    public boolean shortAttn() { return shortAttn; }

    /**
     * Programmatic Dependent Launch for the small-op, GEMV, decode-attention and argmax/top-k kernels
     * ({@code tp_set_pdl}): each may start while the kernel before it finishes (the GEMVs issue their first weight loads before waiting).
     * On by default where the device supports it (sm_90+); {@code -Dtokenpress.cuda.pdl=false} (or
     * {@code TOKENPRESS_CUDA_PDL=0}) turns it off. The switch is process-wide: it applies to every CudaBackend's later launches
     * and captures, and each new CudaBackend sets it from the property again. Drops this backend's captured
     * graph. Turning it on where {@link #pdlSupported()} is false throws {@link UnsupportedOpException}.
     */
    public void setPdl(boolean on) {
        reconfigure("setPdl");
        check(TpNative.tp_set_pdl(on ? 1 : 0), "setPdl");
    }

    /** Whether kernels are launched with Programmatic Dependent Launch now (process-wide). */
    public boolean pdl() { return TpNative.tp_pdl_enabled() != 0; }

    /** Whether this device can use Programmatic Dependent Launch (sm_90+, CUDA >= 12.3). */
    public boolean pdlSupported() { return pdlSupported; }

    /** Turns all four decode fusions above (QKV, gate/up + SwiGLU, RoPE + KV store, short attention) on or off. */
    public void setDecodeFusions(boolean on) {
        setFusedQkv(on);
        setFusedSwiglu(on);
        setFusedRopeStoreKv(on);
        setShortAttn(on);
    }

    /** Kernel paths in use, one line (for logs and the benchmark). */
    public String kernelPaths() {
        return "matmul " + (gemvEnabled ? "GEMV for n<=" + GEMV_MAX_ROWS + " + cuBLAS" : "cuBLAS only")
                + (gemvEnabled && TpNative.tp_gemv_get_prefetch() > 0 ? " (L2 prefetch up to " + TpNative.tp_gemv_get_prefetch() + " MiB)" : "")
                + ", decode attention v" + attentionVariant
                + (attentionVariant == 3 && TpNative.tp_get_attention_prefetch() > 0 ? " (L2 prefetch " + TpNative.tp_get_attention_prefetch() + " rows)" : "")
                + ", decode-attention merge " + (fusedAttnMerge ? "fused" : "separate kernel")
                + (shortAttn ? " (single split for short contexts)" : "")
                + ", fused qkv " + onOff(fusedQkv && gemvEnabled) + ", fused gate/up+swiglu " + onOff(fusedSwiglu && gemvEnabled)
                + ", fused rope+kv store " + onOff(fusedRopeStoreKv) + ", fused norm+gemv " + onOff(fusedNorm && gemvEnabled)
                + ", selection from the selection layer's attention " + onOff(fusedSelect)
                + (fusedSelect && sideSelect ? " (on a second stream)" : "")
                + ", quantized-KV attention v" + TpNative.tp_kvq_attention_variant()
                + (weightType == dev.tokenpress.backend.WeightType.Q8_0 ? ", q8_0 GEMV v" + TpNative.tp_q8_gemv_variant() : "")
                + ", PDL " + (pdl() ? "on" : pdlSupported ? "off" : "off (unsupported)");
    }

    private static String onOff(boolean on) {
        return on ? "on" : "off";
    }

    /** A switch of the kernel paths changes: only between steps, and the captured graph no longer applies. */
    private void reconfigure(String what) {
        requireEager(what);
        dropGraph();
    }

    /** Turns graph capture of decode steps on or off (off: every step runs eagerly). */
    public void setGraphsEnabled(boolean on) {
        dropGraph();
        graphsOffByStep = false;
        graphsEnabled = on;
        graphsOffReason = on ? null : "turned off by the caller";
    }

    // ---- memory -----------------------------------------------------------------------------------------------

    long malloc(long bytes, String what) {
        long[] p = {0};
        int rc = TpNative.tp_malloc(p, bytes);
        if (rc == TpNative.TP_ERR_OUT_OF_MEMORY) {
            long[] free = {-1}, total = {-1};
            TpNative.tp_mem_get_info(free, total);
            throw new CudaOutOfMemoryException(what, bytes, free[0], total[0]);
        }
        check(rc, "cudaMalloc(" + what + ")");
        allocations.add(p[0]);
        return p[0];
    }

    void free(long ptr) {
        if (ptr != 0 && allocations.remove(ptr)) TpNative.tp_free(ptr);
    }

    private long mallocHost(long bytes) {
        long[] p = {0};
        int rc = TpNative.tp_malloc_host(p, bytes);
        if (rc != TpNative.TP_OK) throw new CudaException("cudaMallocHost(" + bytes + " bytes) failed: " + lastError(), rc);
        return p[0];
    }

    void memsetNow(long ptr, int value, long bytes) {
        check(TpNative.tp_memset_async(ptr, value, bytes, stream), "cudaMemset");
    }

    /** Device-to-device copy in stream order (eager only). */
    void copyAsync(long dst, long src, long bytes) {
        requireEager("device copy");
        check(TpNative.tp_memcpy_async(dst, src, bytes, stream), "cudaMemcpyAsync");
    }

    void memsetAsync(long ptr, int value, long bytes) {
        if (mode != Mode.EAGER) throw abort("KV cache clear inside a decode step", true);
        flushPendingSelect(); // before a cache it may read is cleared
        check(TpNative.tp_memset_async(ptr, value, bytes, stream), "cudaMemset");
    }

    @Override
    public Tensor weight(TensorData data) {
        requireEager("weight upload");
        long[] shape = data.shape();
        if (shape.length == 1) {
            float[] f = data.toFloats();
            long p = malloc(4L * f.length, data.name());
            check(TpNative.tp_memcpy_h2d(p, f, 4L * f.length, stream), "upload " + data.name());
            return new CudaTensor(1, f.length, false, p, 4L * f.length, data.name());
        }
        if (shape.length != 2)
            throw new IllegalArgumentException(data.name() + ": expected a 1-D or 2-D tensor, got " + data.shapeString());
        int rows = Math.toIntExact(shape[0]), cols = Math.toIntExact(shape[1]);
        if (weightType == dev.tokenpress.backend.WeightType.Q8_0 && cols % dev.tokenpress.backend.Q8Codec.BLOCK == 0)
            return uploadQ8(data, rows, cols);
        long bytes = 2L * rows * cols;
        long p = malloc(bytes, data.name() + " " + data.shapeString());
        ByteBuffer b = data.buffer();
        if (data.dtype() == DType.BF16 && b.isDirect()) {
            BytePointer host = new BytePointer(b);
            long addr = host.address() + host.position();
            long chunk = 64L << 20;
            for (long off = 0; off < bytes; off += chunk)
                check(TpNative.tp_memcpy_async(p + off, addr + off, Math.min(chunk, bytes - off), stream), "upload " + data.name());
            check(TpNative.tp_stream_synchronize(stream), "upload " + data.name());
        } else {
            int rowsPerChunk = Math.max(1, (int) Math.min(rows, (8L << 20) / Math.max(1, cols)));
            short[] tmp = new short[rowsPerChunk * cols];
            for (int r0 = 0; r0 < rows; r0 += rowsPerChunk) {
                int nr = Math.min(rowsPerChunk, rows - r0);
                long base = (long) r0 * cols;
                for (int i = 0; i < nr * cols; i++) {
                    long e = base + i;
                    tmp[i] = switch (data.dtype()) {
                        case BF16 -> b.getShort((int) (e * 2));
                        case F16 -> Half.floatToBf16(Half.toFloat(b.getShort((int) (e * 2))));
                        case F32 -> Half.floatToBf16(b.getFloat((int) (e * 4)));
                    };
                }
                check(TpNative.tp_memcpy_h2d(p + base * 2, tmp, 2L * nr * cols, stream), "upload " + data.name());
            }
        }
        return new CudaTensor(rows, cols, true, p, bytes, data.name());
    }

    /**
     * Q8_0 weights ({@code --weight-type q8_0}; passed on an H100): matrices whose rows are whole blocks of 32 are
     * quantized on the host with the CPU's quantizer ({@link dev.tokenpress.backend.Q8Codec}, the same codes) and
     * uploaded as int8 codes and f32 scales; others stay bf16. Decode matmuls of at most 4 rows read them with the
     * Q8 GEMV ({@code tp_gemv_q8}); larger chunks dequantize row slices to bf16 for cuBLAS.
     */
    @Override
    public void setWeightType(dev.tokenpress.backend.WeightType type) {
        if (type == dev.tokenpress.backend.WeightType.Q4_0)
            throw new UnsupportedOpException("--weight-type q4_0 is not supported by the cuda backend: use q8_0, as-stored or --device cpu");
        weightType = type == null ? dev.tokenpress.backend.WeightType.AS_STORED : type;
    }

    private Tensor uploadQ8(TensorData data, int rows, int cols) {
        int nb = cols / dev.tokenpress.backend.Q8Codec.BLOCK;
        long codeBytes = (long) rows * cols, scaleBytes = 4L * rows * nb;
        long p = malloc(codeBytes, data.name() + " " + data.shapeString() + " (q8_0 codes)");
        long sc;
        try {
            sc = malloc(scaleBytes, data.name() + " (q8_0 scales)");
        } catch (RuntimeException e) {
            free(p);
            throw e;
        }
        int rowsPerChunk = Math.max(1, (int) Math.min(rows, (16L << 20) / Math.max(1, cols)));
        byte[] q = new byte[rowsPerChunk * cols];
        float[] d = new float[rowsPerChunk * nb];
        try {
            for (int r0 = 0; r0 < rows; r0 += rowsPerChunk) {
                int nr = Math.min(rowsPerChunk, rows - r0), first = r0;
                java.util.stream.IntStream.range(0, nr).parallel().forEach(i -> { // rows are independent
                    float[] row = new float[cols];
                    dev.tokenpress.backend.Q8Codec.rowFloats(data, data.buffer(), first + i, cols, row);
                    dev.tokenpress.backend.Q8Codec.quantizeRow(row, 0, cols, q, i * cols, d, i * nb);
                });
                check(TpNative.tp_memcpy_h2d(p + (long) r0 * cols, q, (long) nr * cols, stream), "upload " + data.name());
                check(TpNative.tp_memcpy_h2d(sc + 4L * r0 * nb, d, 4L * nr * nb, stream), "upload " + data.name());
            }
        } catch (RuntimeException | Error e) {
            free(p);
            free(sc);
            throw e;
        }
        return new CudaTensor(rows, cols, false, p, codeBytes + scaleBytes, data.name(), true, sc);
    }

    @Override
    public Tensor allocate(int rows, int cols) {
        requireEager("allocate");
        long bytes = 4L * rows * cols;
        long p = malloc(bytes, "activation [" + rows + ", " + cols + "]");
        check(TpNative.tp_memset_async(p, 0, bytes, stream), "cudaMemset");
        return new CudaTensor(rows, cols, false, p, bytes, null);
    }

    @Override
    public void upload(Tensor dst, float[] src) {
        flushPendingSelect(); // a queued selection reads q and the cache as they are now
        requireEager("upload");
        CudaTensor d = act(dst);
        if (src.length > (long) d.rows * d.cols) throw new IllegalArgumentException("upload: " + src.length + " floats do not fit " + d);
        check(TpNative.tp_memcpy_h2d(d.ptr, src, 4L * src.length, stream), "upload");
    }

    @Override
    public float[] download(Tensor src, int row0, int rows) {
        flushPendingSelect(); // a queued selection reads q and the cache as they are now
        requireEager("download");
        CudaTensor s = act(src);
        if (row0 < 0 || rows < 0 || row0 + rows > s.rows) throw new IllegalArgumentException("download: rows [" + row0 + ", " + (row0 + rows) + ") outside " + s);
        float[] out = new float[rows * s.cols];
        check(TpNative.tp_memcpy_d2h(out, s.row(row0), 4L * out.length, stream), "download");
        return out;
    }

    /** Q8_0 rows on the host: code · the scale of its block of 32 along the row (codes [rows, cols], scales [rows, cols / 32]). */
    static void q8Rows(byte[] codes, float[] scales, int rows, int cols, float[] dst) {
        int nb = cols / dev.tokenpress.backend.Q8Codec.BLOCK;
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) dst[r * cols + c] = codes[r * cols + c] * scales[r * nb + c / dev.tokenpress.backend.Q8Codec.BLOCK];
    }

    /** bf16 weights widen exactly; Q8_0 weights are codes times their block's scale, as the GEMV computes them. */
    @Override
    public void weightRows(Tensor w, int row0, int rows, float[] dst) {
        flushPendingSelect();
        requireEager("weightRows");
        if (!(w instanceof CudaTensor t)) throw new IllegalArgumentException("weightRows: not a CUDA tensor: " + w);
        if (row0 < 0 || rows < 0 || row0 + rows > t.rows) throw new IllegalArgumentException("weightRows: rows [" + row0 + ", " + (row0 + rows) + ") outside " + t);
        int cols = t.cols, n = rows * cols;
        if (n == 0) return;
        if (t.q8) {
            byte[] codes = new byte[n];
            float[] scales = new float[rows * (cols / 32)];
            check(TpNative.tp_memcpy_d2h(codes, t.ptr + (long) row0 * cols, n, stream), "weightRows codes");
            check(TpNative.tp_memcpy_d2h(scales, t.scales + 4L * row0 * (cols / 32), 4L * scales.length, stream), "weightRows scales");
            q8Rows(codes, scales, rows, cols, dst);
        } else if (t.bf16) {
            short[] buf = new short[n];
            check(TpNative.tp_memcpy_d2h(buf, t.ptr + 2L * row0 * cols, 2L * n, stream), "weightRows");
            for (int i = 0; i < n; i++) dst[i] = Float.intBitsToFloat((buf[i] & 0xFFFF) << 16);
        } else check(TpNative.tp_memcpy_d2h(dst, t.ptr + 4L * row0 * cols, 4L * n, stream), "weightRows");
    }

    @Override
    public void copyRows(Tensor dst, int dstRow, Tensor src, int srcRow, int rows) {
        flushPendingSelect(); // a queued selection reads q and the cache as they are now
        CudaTensor d = act(dst), s = act(src);
        if (d.cols != s.cols) throw new IllegalArgumentException("copyRows: " + d + " vs " + s);
        sig(1, d.ptr, dstRow, s.ptr, srcRow, rows);
        if (mode != Mode.DRY)
            check(TpNative.tp_memcpy_async(d.row(dstRow), s.row(srcRow), 4L * rows * s.cols, stream), "copyRows");
    }

    /** Keys and values in bf16 (nearest even), the only storage of an unquantized cache here. */
    @Override
    public dev.tokenpress.backend.KvType[] kvTypes() {
        return new dev.tokenpress.backend.KvType[] {dev.tokenpress.backend.KvType.BF16, dev.tokenpress.backend.KvType.BF16};
    }

    @Override
    public KvCache newKvCache(int layers, int kvHeads, int headDim, int capacity) {
        requireEager("newKvCache");
        checkHeadDim(headDim);
        retryGraphs();
        CudaKvCache c = new CudaKvCache(this, layers, kvHeads, headDim, capacity);
        caches.add(c);
        return c;
    }

    /**
     * {@code count} bf16 caches of one shape: with batched attention on ({@link #setBatchAttention}) one pool whose
     * members a batched decode step attends over in one call per run of consecutive members
     * ({@link #batchDecodeAttention}); otherwise caches of their own.
     */
    @Override
    public KvCache[] newKvCaches(int layers, int kvHeads, int headDim, int capacity, int count) {
        if (!batchAttention || count < 2) return Backend.super.newKvCaches(layers, kvHeads, headDim, capacity, count);
        requireEager("newKvCaches");
        checkHeadDim(headDim);
        retryGraphs();
        CudaKvCache.Pool pool = CudaKvCache.allocate(this, layers, kvHeads, headDim, capacity, count);
        KvCache[] out = new KvCache[count];
        for (int b = 0; b < count; b++) {
            CudaKvCache c = new CudaKvCache(this, layers, kvHeads, headDim, capacity, pool, count, b);
            caches.add(c);
            out[b] = c;
        }
        return out;
    }

    @Override
    public boolean batchesKvCaches() {
        return batchAttention;
    }

    /**
     * A KIVI-quantized KV cache (int8 / int4 / int2) in device memory ({@link CudaQuantKvCache}, kernels in
     * cuda/kv_quant.cu); {@code none} is the bf16 cache. Other methods (ZipCache, MiKV, GEAR, MiniCache) are CPU only.
     */
    @Override
    public KvCache newKvCache(int layers, int kvHeads, int headDim, int capacity, dev.tokenpress.kv.quant.KvQuantSpec quant) {
        if (quant == null || quant.isNone()) return newKvCache(layers, kvHeads, headDim, capacity);
        if (quant.method() != dev.tokenpress.kv.quant.KvQuantSpec.Method.KIVI)
            throw new UnsupportedOpException("the cuda backend quantizes the KV cache with int8/int4/int2 only, not --kv-quant " + quant.spec() + ": use --device cpu");
        if (!flag("tokenpress.cuda.quantKv", "TOKENPRESS_CUDA_QUANT_KV"))
            throw new UnsupportedOpException("--kv-quant on CUDA is switched off (-Dtokenpress.cuda.quantKv=false): use --device cpu, or drop that setting");
        requireEager("newKvCache");
        checkHeadDim(headDim);
        retryGraphs();
        CudaQuantKvCache c = new CudaQuantKvCache(this, layers, kvHeads, headDim, capacity, quant);
        quantCaches.add(c);
        return c;
    }

    void releaseQuantCache(CudaQuantKvCache c) {
        if (closed) return;
        synchronize();
        dropGraph();  // a later cache at the same addresses must not replay a step captured for this one
        quantCaches.remove(c);
        dropDeviceSelections(c);
        free(c.winK);
        free(c.winV);
        free(c.pool);
        free(c.pos);
        free(c.loc);
        free(c.scratch);
    }

    /** Device to host copy of raw bytes (waits for the stream). */
    void downloadRaw(float[] dst, long src, long bytes) {
        check(TpNative.tp_memcpy_d2h(dst, src, bytes, stream), "download");
    }

    void downloadRaw(byte[] dst, long src, long bytes) {
        check(TpNative.tp_memcpy_d2h(dst, src, bytes, stream), "download");
    }

    void releaseCache(CudaKvCache c) {
        if (closed) return;
        synchronize();
        dropGraph();
        caches.remove(c);
        dropDeviceSelections(c);
        if (!c.lastOfPool()) return; // other caches of its pool still use the arrays
        free(c.keys);
        free(c.values);
        free(c.pos);
    }

    /** Frees the device selections made for a cache being released (their handles stop being current). */
    private void dropDeviceSelections(KvCache c) {
        for (java.util.Iterator<DeviceSelection> it = deviceSelections.iterator(); it.hasNext(); ) {
            DeviceSelection ds = it.next();
            if (ds.cache != c) continue;
            free(ds.slots);
            free(ds.counts);
            free(ds.cur);
            it.remove();
        }
    }

    // ---- ops --------------------------------------------------------------------------------------------------

    @Override
    public void embedding(Tensor out, Tensor table, int[] tokens, int n) {
        flushQueuedSelect(); // a queued selection reads q and the cache as they are now
        CudaTensor o = act(out), t = (CudaTensor) table;
        if (!t.bf16 && !t.q8) throw new IllegalArgumentException("embedding: table must be a 2-D weight, got " + t);
        for (int i = 0; i < n; i++)
            if (tokens[i] < 0 || tokens[i] >= t.rows)
                throw new IllegalArgumentException("token id " + tokens[i] + " is outside the vocabulary [0, " + t.rows + ")");
        long d = stage(tokens, n);
        sig(2, o.ptr, t.ptr, n);
        if (mode == Mode.DRY) return;
        if (t.q8) check(TpNative.tp_embedding_q8(o.ptr, t.ptr, t.scales, d, n, t.cols, t.rows, stream), "embedding (q8_0)");
        else check(TpNative.tp_embedding(o.ptr, t.ptr, d, n, t.cols, t.rows, stream), "embedding");
    }

    @Override
    public void rmsnorm(Tensor out, Tensor x, Tensor w, float eps, int n) {
        flushQueuedSelect(); // a queued selection reads q and the cache as they are now
        CudaTensor o = act(out), xi = act(x), wt = (CudaTensor) w;
        if (wt.bf16 || (long) wt.rows * wt.cols != xi.cols) throw new IllegalArgumentException("rmsnorm: weight " + wt + " for " + xi);
        sig(3, o.ptr, xi.ptr, wt.ptr, Float.floatToIntBits(eps), n);
        if (mode != Mode.DRY) check(TpNative.tp_rmsnorm(o.ptr, xi.ptr, wt.ptr, eps, n, xi.cols, stream), "rmsnorm");
    }

    @Override
    public void rmsnormHeads(Tensor x, Tensor w, float eps, int n, int heads) {
        flushQueuedSelect(); // a queued selection reads q and the cache as they are now
        CudaTensor xi = act(x), wt = (CudaTensor) w;
        long hd = (long) wt.rows * wt.cols;
        if (wt.bf16 || wt.q8 || heads <= 0 || hd * heads != xi.cols)
            throw new IllegalArgumentException("rmsnormHeads: weight " + wt + " as " + heads + " heads of " + xi);
        sig(17, xi.ptr, wt.ptr, Float.floatToIntBits(eps), n, heads);
        if (mode != Mode.DRY) // rows of hd values; in place (rmsnorm_kernel reads a row before writing it, per thread)
            check(TpNative.tp_rmsnorm(xi.ptr, xi.ptr, wt.ptr, eps, n * heads, (int) hd, stream), "rmsnorm (heads)");
    }

    @Override
    public void matmul(Tensor out, Tensor x, Tensor w, Tensor bias, int n) {
        flushQueuedSelect(); // a queued selection reads q and the cache as they are now
        CudaTensor o = act(out), xi = act(x), wt = (CudaTensor) w;
        CudaTensor b = (CudaTensor) bias;
        int in = wt.cols, outDim = wt.rows;
        if (xi.cols != in) throw new IllegalArgumentException("matmul: x has " + xi.cols + " columns, weight expects " + in);
        if (o.cols != outDim) throw new IllegalArgumentException("matmul: out has " + o.cols + " columns, weight gives " + outDim);
        if (n <= 0) return;
        if (wt.q8) {
            matmulQ8(o, xi, wt, b, n, false);
            return;
        }
        if (gemvEnabled && gemvEligible(o, xi, wt, n, in, outDim)) {
            sig(4, o.ptr, xi.ptr, wt.ptr, b == null ? 0 : b.ptr, n, 1);
            if (mode != Mode.DRY)
                check(TpNative.tp_gemv_bf16(o.ptr, xi.ptr, wt.ptr, b == null ? 0 : b.ptr, n, outDim, in, stream), "matmul (GEMV)");
            return;
        }
        if (wt.bf16) growXBf16(n, in);
        sig(4, o.ptr, xi.ptr, wt.ptr, b == null ? 0 : b.ptr, n, 0);
        if (mode == Mode.DRY) return;
        int st;
        if (wt.bf16) {
            check(TpNative.tp_f32_to_bf16(xBf16, xi.ptr, (long) n * in, stream), "matmul: convert x");
            st = cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, outDim, n, in, one, pA.at(wt.ptr), CUDA_R_16BF, in,
                    pB.at(xBf16), CUDA_R_16BF, in, zero, pC.at(o.ptr), CUDA_R_32F, outDim, CUBLAS_COMPUTE_32F,
                    CUBLAS_GEMM_DEFAULT);
        } else {
            st = cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, outDim, n, in, one, pA.at(wt.ptr), CUDA_R_32F, in,
                    pB.at(xi.ptr), CUDA_R_32F, in, zero, pC.at(o.ptr), CUDA_R_32F, outDim, CUBLAS_COMPUTE_32F,
                    CUBLAS_GEMM_DEFAULT);
        }
        if (st != 0) throw new CudaException("cublasGemmEx failed with status " + st + " (" + outDim + "x" + in + " x n=" + n + ")", st);
        if (b != null) check(TpNative.tp_add_bias(o.ptr, b.ptr, n, outDim, stream), "matmul: bias");
    }

    /**
     * o (=, or += with accumulate) x · wᵀ (+ bias) for a Q8_0 weight: the Q8 GEMV for at most {@link #GEMV_MAX_ROWS}
     * rows; otherwise the rows of w dequantized to bf16 a slice at a time (a scratch of at most 64 MiB) and cuBLAS.
     */
    private void matmulQ8(CudaTensor o, CudaTensor xi, CudaTensor wt, CudaTensor b, int n, boolean accumulate) {
        int in = wt.cols, outDim = wt.rows;
        if (n <= GEMV_MAX_ROWS && (xi.ptr & 15) == 0 && disjoint(o, xi, n)) { // the GEMV reads x while it writes o
            sig(60, o.ptr, xi.ptr, wt.ptr, wt.scales, b == null ? 0 : b.ptr, n, accumulate ? 1 : 0);
            if (mode != Mode.DRY)
                check(TpNative.tp_gemv_q8(o.ptr, xi.ptr, wt.ptr, wt.scales, b == null ? 0 : b.ptr, n, outDim, in,
                        accumulate ? 1 : 0, stream), "matmul (q8_0 GEMV)");
            return;
        }
        if (mode != Mode.EAGER) throw abort("q8_0 prefill matmul", false); // chunks run eagerly
        growXBf16(n, in);
        int sliceRows = (int) Math.max(1, Math.min(outDim, q8SliceBytes / (2L * in)));
        long needW = 2L * sliceRows * in;
        if (needW > q8ScratchBytes) {
            free(q8Scratch);
            q8Scratch = 0;
            q8ScratchBytes = 0;
            q8Scratch = malloc(needW, "q8_0 dequantized weight slice");
            q8ScratchBytes = needW;
        }
        check(TpNative.tp_f32_to_bf16(xBf16, xi.ptr, (long) n * in, stream), "matmul: convert x");
        // o is row-major [n][outDim]: each slice of weight rows fills columns [r0, r0 + nr) of every row (ldc outDim)
        for (int r0 = 0; r0 < outDim; r0 += sliceRows) {
            int nr = Math.min(sliceRows, outDim - r0);
            check(TpNative.tp_dequant_q8_bf16(q8Scratch, wt.ptr + (long) r0 * in, wt.scales + 4L * r0 * (in / 32), nr, in,
                    stream), "matmul: dequantize q8_0");
            gemmBf16(o.ptr + 4L * r0, outDim, xBf16, q8Scratch, n, nr, in, accumulate);
        }
        if (b != null) {
            if (accumulate) throw new IllegalStateException("q8_0 matmul: bias with accumulate");
            check(TpNative.tp_add_bias(o.ptr, b.ptr, n, outDim, stream), "matmul: bias");
        }
    }

    /** Grows the bf16 copy of x (the cuBLAS operand) to n rows of in (eager only; a capture aborts instead). */
    /**
     * Frees a scratch buffer that a captured graph may read (matmul input, attention workspace, selection scores, top-k
     * workspace) before it is allocated again larger: the graphs go first (after the last replay), or a replay would
     * read freed memory — the captured step's signature holds the ops' arguments, not their scratch.
     */
    private void freeScratch(long p) {
        if (p == 0) return;
        dropGraph();
        free(p);
    }

    private void growXBf16(int n, int in) {
        long need = 2L * n * in;
        if (need <= xBf16Bytes) return;
        if (mode != Mode.EAGER) throw abort("matmul scratch growth", false);
        freeScratch(xBf16);
        xBf16 = 0;
        xBf16Bytes = 0;
        long sz = Math.max(need, 2L * 8 * in);
        xBf16 = malloc(sz, "matmul input scratch");
        xBf16Bytes = sz;
    }

    /**
     * c f32 row-major [n][ldc] (its first outDim columns) = x bf16 [n, in] · w bf16 [outDim, in]ᵀ, or += with
     * {@code accumulate}: one cublasGemmEx (f32 compute) on the backend's stream, eager only. For callers that manage
     * their own device buffers (the chunked CCE of {@link CudaCce}).
     */
    void gemmBf16(long c, int ldc, long x, long w, int n, int outDim, int in, boolean accumulate) {
        if (mode != Mode.EAGER) throw new IllegalStateException("gemmBf16 runs eagerly only");
        if (n <= 0 || outDim <= 0 || in <= 0 || ldc < outDim)
            throw new IllegalArgumentException("gemmBf16: n=" + n + " outDim=" + outDim + " in=" + in + " ldc=" + ldc);
        int st = cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, outDim, n, in, one, pA.at(w), CUDA_R_16BF, in,
                pB.at(x), CUDA_R_16BF, in, accumulate ? one : zero, pC.at(c), CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                CUBLAS_GEMM_DEFAULT);
        if (st != 0) throw new CudaException("cublasGemmEx failed with status " + st + " (" + outDim + "x" + in + " x n=" + n + ")", st);
    }

    /**
     * What tp_gemv_bf16 accepts: bf16 weight, n <= GEMV_MAX_ROWS, I % 8 == 0, 16-byte aligned x and weight, and
     * an output that does not overlap x.
     */
    private static boolean gemvEligible(CudaTensor o, CudaTensor x, CudaTensor w, int n, int in, int outDim) {
        if (!w.bf16 || n > GEMV_MAX_ROWS || in % 8 != 0 || (w.ptr & 15) != 0 || (x.ptr & 15) != 0) return false;
        long xEnd = x.ptr + 4L * n * in, oEnd = o.ptr + 4L * n * outDim;
        return oEnd <= x.ptr || xEnd <= o.ptr;
    }

    @Override
    public void matmulQkv(Tensor q, Tensor k, Tensor v, Tensor x, Tensor wq, Tensor bq, Tensor wk, Tensor bk,
                          Tensor wv, Tensor bv, int n) {
        flushQueuedSelect(); // a queued selection reads q and the cache as they are now
        CudaTensor qo = act(q), ko = act(k), vo = act(v), xi = act(x);
        CudaTensor wqt = (CudaTensor) wq, wkt = (CudaTensor) wk, wvt = (CudaTensor) wv;
        int in = xi.cols;
        if (q8QkvGemv(qo, ko, vo, xi, wqt, wkt, wvt, n)) {
            long pbq = ptrOrZero(bq), pbk = ptrOrZero(bk), pbv = ptrOrZero(bv);
            sig(61, qo.ptr, ko.ptr, vo.ptr, xi.ptr, wqt.ptr, wkt.ptr, wvt.ptr, pbq, pbk, pbv, n);
            if (mode != Mode.DRY)
                check(TpNative.tp_gemv_q8_multi(qo.ptr, wqt.ptr, wqt.scales, pbq, wqt.rows, ko.ptr, wkt.ptr, wkt.scales, pbk,
                        wkt.rows, vo.ptr, wvt.ptr, wvt.scales, pbv, wvt.rows, xi.ptr, n, in, stream), "matmulQkv (q8_0 GEMV)");
            return;
        }
        if (!qkvGemv(qo, ko, vo, xi, wqt, wkt, wvt, n)) {
            Backend.super.matmulQkv(q, k, v, x, wq, bq, wk, bk, wv, bv, n);
            return;
        }
        long pbq = ptrOrZero(bq), pbk = ptrOrZero(bk), pbv = ptrOrZero(bv);
        sig(11, qo.ptr, ko.ptr, vo.ptr, xi.ptr, wqt.ptr, wkt.ptr, wvt.ptr, pbq, pbk, pbv, n);
        if (mode != Mode.DRY)
            check(TpNative.tp_gemv_bf16_multi(qo.ptr, wqt.ptr, pbq, wqt.rows, ko.ptr, wkt.ptr, pbk, wkt.rows, vo.ptr,
                    wvt.ptr, pbv, wvt.rows, xi.ptr, n, in, stream), "matmulQkv (GEMV)");
    }

    @Override
    public void matmulSwiglu(Tensor out, Tensor up, Tensor x, Tensor wGate, Tensor wUp, int n) {
        flushQueuedSelect(); // a queued selection reads q and the cache as they are now
        CudaTensor o = act(out), xi = act(x), wg = (CudaTensor) wGate, wu = (CudaTensor) wUp;
        int in = xi.cols, f = wg.rows;
        if (q8Gemv(xi, n, in, wg, wu) && wu.rows == f && o.cols == f && disjoint(o, xi, n)) {
            sig(62, o.ptr, xi.ptr, wg.ptr, wu.ptr, n);
            if (mode != Mode.DRY)
                check(TpNative.tp_gemv_q8_swiglu(o.ptr, xi.ptr, wg.ptr, wg.scales, wu.ptr, wu.scales, n, f, in, stream),
                        "matmulSwiglu (q8_0 GEMV)");
            return;
        }
        if (!swigluGemv(o, xi, wg, wu, n)) {
            Backend.super.matmulSwiglu(out, up, x, wGate, wUp, n);
            return;
        }
        sig(12, o.ptr, xi.ptr, wg.ptr, wu.ptr, n);
        if (mode != Mode.DRY)
            check(TpNative.tp_gemv_bf16_swiglu(o.ptr, xi.ptr, wg.ptr, wu.ptr, n, f, in, stream), "matmulSwiglu (GEMV)");
    }

    @Override
    public void matmulAdd(Tensor x, Tensor y, Tensor a, Tensor w, int n) {
        flushQueuedSelect(); // a queued selection reads q and the cache as they are now
        CudaTensor xo = act(x), ai = act(a), wt = (CudaTensor) w;
        int in = wt.cols, outDim = wt.rows;
        if (wt.q8 && n > 0 && ai.cols == in && xo.cols == outDim) { // x += a · wᵀ in the matmul itself
            matmulQ8(xo, ai, wt, null, n, true);
            return;
        }
        if (fusedNorm && gemvEnabled && n > 0 && ai.cols == in && xo.cols == outDim && gemvEligible(xo, ai, wt, n, in, outDim)) {
            sig(14, xo.ptr, ai.ptr, wt.ptr, n);
            if (mode != Mode.DRY)
                check(TpNative.tp_gemv_bf16_acc(xo.ptr, ai.ptr, wt.ptr, 0, n, outDim, in, stream), "matmulAdd (GEMV)");
            return;
        }
        Backend.super.matmulAdd(x, y, a, w, n);
    }

    /** Whether q/k/v of x run as one fused Q8_0 GEMV launch (Q8_0 weights of the outputs' widths, outputs apart from x). */
    private static boolean q8QkvGemv(CudaTensor qo, CudaTensor ko, CudaTensor vo, CudaTensor xi, CudaTensor wq,
                                     CudaTensor wk, CudaTensor wv, int n) {
        return q8Gemv(xi, n, xi.cols, wq, wk, wv) && wq.rows == qo.cols && wk.rows == ko.cols && wv.rows == vo.cols
                && disjoint(qo, xi, n) && disjoint(ko, xi, n) && disjoint(vo, xi, n);
    }

    /** Whether the one-kernel RoPE + KV store takes these: a bf16 device cache of the head dim, exact row widths. */
    private static boolean ropeStoreFits(CudaTensor q, int heads, CudaTensor k, CudaTensor v, int kvHeads, int hd,
                                         KvCache cache, int n) {
        return n > 0 && cache instanceof CudaKvCache cc && cc.headDim() == hd && cc.kvHeads() == kvHeads && heads > 0
                && (long) heads * hd == q.cols && (long) kvHeads * hd == k.cols && k.cols == v.cols;
    }

    /** Whether the fused Q8_0 GEMVs take these: every matrix Q8_0 with the input width, n <= 4, x 16-byte aligned. */
    private static boolean q8Gemv(CudaTensor x, int n, int in, CudaTensor... ws) {
        if (n <= 0 || n > GEMV_MAX_ROWS || (x.ptr & 15) != 0) return false;
        for (CudaTensor w : ws) if (!w.q8 || w.cols != in) return false;
        return true;
    }

    /** An output of n rows that does not overlap x's n rows. */
    private static boolean disjoint(CudaTensor o, CudaTensor x, int n) {
        long xEnd = x.ptr + 4L * n * x.cols, oEnd = o.ptr + 4L * n * o.cols;
        return oEnd <= x.ptr || xEnd <= o.ptr;
    }

    /** Whether q/k/v of x run as one fused GEMV launch (switches on, shapes agree, every matrix GEMV-eligible). */
    private boolean qkvGemv(CudaTensor qo, CudaTensor ko, CudaTensor vo, CudaTensor xi, CudaTensor wq, CudaTensor wk,
                            CudaTensor wv, int n) {
        int in = xi.cols;
        return fusedQkv && gemvEnabled && n > 0 && wq.cols == in && wk.cols == in && wv.cols == in
                && qo.cols == wq.rows && ko.cols == wk.rows && vo.cols == wv.rows
                && gemvEligible(qo, xi, wq, n, in, wq.rows) && gemvEligible(ko, xi, wk, n, in, wk.rows)
                && gemvEligible(vo, xi, wv, n, in, wv.rows);
    }

    /** Whether gate/up of x + SwiGLU run as one fused GEMV kernel (switches on, shapes agree, GEMV-eligible). */
    private boolean swigluGemv(CudaTensor o, CudaTensor xi, CudaTensor wg, CudaTensor wu, int n) {
        int in = xi.cols, f = wg.rows;
        return fusedSwiglu && gemvEnabled && n > 0 && wg.cols == in && wu.cols == in && wu.rows == f && o.cols == f
                && gemvEligible(o, xi, wg, n, in, f) && gemvEligible(o, xi, wu, n, in, f);
    }

    /** An f32 norm weight of exactly {@code dim} elements, 16-byte aligned (what the *_norm GEMVs read). */
    private static boolean normWeightOk(CudaTensor nw, int dim) {
        return !nw.bf16 && (long) nw.rows * nw.cols == dim && (nw.ptr & 15) == 0;
    }

    @Override
    public void rmsnormMatmulQkv(Tensor q, Tensor k, Tensor v, Tensor x, Tensor normW, float eps, Tensor xn,
                                 Tensor wq, Tensor bq, Tensor wk, Tensor bk, Tensor wv, Tensor bv, int n) {
        flushQueuedSelect(); // a queued selection reads q and the cache as they are now
        CudaTensor qo = act(q), ko = act(k), vo = act(v), xi = act(x), nw = (CudaTensor) normW;
        CudaTensor wqt = (CudaTensor) wq, wkt = (CudaTensor) wk, wvt = (CudaTensor) wv;
        int in = xi.cols;
        if (!fusedNorm || !normWeightOk(nw, in) || !qkvGemv(qo, ko, vo, xi, wqt, wkt, wvt, n)) {
            Backend.super.rmsnormMatmulQkv(q, k, v, x, normW, eps, xn, wq, bq, wk, bk, wv, bv, n);
            return;
        }
        long pbq = ptrOrZero(bq), pbk = ptrOrZero(bk), pbv = ptrOrZero(bv);
        sig(15, qo.ptr, ko.ptr, vo.ptr, xi.ptr, nw.ptr, Float.floatToIntBits(eps), wqt.ptr, wkt.ptr, wvt.ptr, pbq, pbk, pbv, n);
        if (mode != Mode.DRY)
            check(TpNative.tp_gemv_bf16_multi_norm(qo.ptr, wqt.ptr, pbq, wqt.rows, ko.ptr, wkt.ptr, pbk, wkt.rows, vo.ptr,
                    wvt.ptr, pbv, wvt.rows, xi.ptr, nw.ptr, eps, n, in, stream), "rmsnormMatmulQkv (GEMV)");
    }

    @Override
    public void rmsnormMatmulSwiglu(Tensor out, Tensor up, Tensor x, Tensor normW, float eps, Tensor xn,
                                    Tensor wGate, Tensor wUp, int n) {
        flushQueuedSelect(); // a queued selection reads q and the cache as they are now
        CudaTensor o = act(out), xi = act(x), nw = (CudaTensor) normW, wg = (CudaTensor) wGate, wu = (CudaTensor) wUp;
        int in = xi.cols, f = wg.rows;
        if (!fusedNorm || !normWeightOk(nw, in) || !swigluGemv(o, xi, wg, wu, n)) {
            Backend.super.rmsnormMatmulSwiglu(out, up, x, normW, eps, xn, wGate, wUp, n);
            return;
        }
        sig(16, o.ptr, xi.ptr, nw.ptr, Float.floatToIntBits(eps), wg.ptr, wu.ptr, n);
        if (mode != Mode.DRY)
            check(TpNative.tp_gemv_bf16_swiglu_norm(o.ptr, xi.ptr, nw.ptr, eps, wg.ptr, wu.ptr, n, f, in, stream),
                    "rmsnormMatmulSwiglu (GEMV)");
    }

    private static long ptrOrZero(Tensor t) {
        return t == null ? 0 : ((CudaTensor) t).ptr;
    }

    /**
     * Fused residual add + RMSNorm: x += y, then out = rmsnorm(x) * w (= {@link #add} then {@link #rmsnorm}, one
     * kernel). out must be a different tensor from x and y; otherwise this runs the two ops.
     */
    @Override
    public void addRmsnorm(Tensor out, Tensor x, Tensor y, Tensor w, float eps, int n) {
        flushQueuedSelect(); // a queued selection reads q and the cache as they are now
        CudaTensor o = act(out), xi = act(x), yi = act(y), wt = (CudaTensor) w;
        if (o.ptr == xi.ptr || o.ptr == yi.ptr || xi.ptr == yi.ptr) {
            add(x, y, n);
            rmsnorm(out, x, w, eps, n);
            return;
        }
        if (wt.bf16 || (long) wt.rows * wt.cols != xi.cols) throw new IllegalArgumentException("addRmsnorm: weight " + wt + " for " + xi);
        if (yi.cols != xi.cols || o.cols != xi.cols) throw new IllegalArgumentException("addRmsnorm: " + o + ", " + xi + ", " + yi);
        sig(10, o.ptr, xi.ptr, yi.ptr, wt.ptr, Float.floatToIntBits(eps), n);
        if (mode != Mode.DRY)
            check(TpNative.tp_add_rmsnorm(o.ptr, xi.ptr, yi.ptr, wt.ptr, eps, n, xi.cols, stream), "addRmsnorm");
    }

    @Override
    public void rope(Tensor x, int heads, RopeTable rope, int[] positions, int n) {
        flushQueuedSelect(); // a queued selection reads q and the cache as they are now
        CudaTensor t = act(x);
        int hd = rope.headDim();
        if ((long) heads * hd > t.cols) throw new IllegalArgumentException("rope: " + heads + " heads of " + hd + " do not fit " + t);
        long inv = ropeTable(rope);
        long d = stage(positions, n);
        sig(5, t.ptr, heads, hd, inv, n, Float.floatToIntBits(rope.attentionScale()));
        if (mode != Mode.DRY) check(TpNative.tp_rope(t.ptr, n, heads, hd, d, inv, rope.attentionScale(), stream), "rope");
    }

    /** Device copy of the rope table's inverse frequencies (uploaded once, eagerly). */
    private long ropeTable(RopeTable rope) {
        Long inv = invFreqs.get(rope.invFreq());
        if (inv == null) {
            if (mode != Mode.EAGER) throw abort("rope table upload", false);
            float[] f = rope.invFreq();
            long p = malloc(4L * f.length, "rope table");
            check(TpNative.tp_memcpy_h2d(p, f, 4L * f.length, stream), "rope table");
            invFreqs.put(f, p);
            inv = p;
        }
        return inv;
    }

    @Override
    public void ropeStoreKv(Tensor q, int heads, Tensor k, Tensor v, int kvHeads, RopeTable rope, int[] positions,
                            KvCache cache, int layer, int[][] slots, int n) {
        flushQueuedSelect(); // a queued selection reads q and the cache as they are now
        CudaTensor qt = act(q), kt = act(k), vt = act(v);
        int hd = rope.headDim();
        if (!fusedRopeStoreKv || !ropeStoreFits(qt, heads, kt, vt, kvHeads, hd, cache, n)) {
            Backend.super.ropeStoreKv(q, heads, k, v, kvHeads, rope, positions, cache, layer, slots, n);
            return;
        }
        CudaKvCache c = (CudaKvCache) cache;
        long inv = ropeTable(rope);
        flushFrees(c);
        long d = stageRopeStore(c, positions, slots, kvHeads, layer, n);
        sig(13, qt.ptr, heads, kt.ptr, vt.ptr, inv, c.keys, c.deviceLayer(layer), n, Float.floatToIntBits(rope.attentionScale()));
        if (mode != Mode.DRY)
            check(TpNative.tp_rope_store_kv(qt.ptr, heads, kt.ptr, vt.ptr, d, inv, rope.attentionScale(), c.keys, c.values, c.pos,
                    d + 4L * n, d + 4L * (n + kvHeads * n), c.deviceLayer(layer), kvHeads, hd, c.capacity(), n, stream), "ropeStoreKv");
    }

    /**
     * Stages what the RoPE + KV store kernel reads: positions[n] | slots[hkv][n] | token positions[hkv][n] (each
     * slot checked against the capacity); returns the device address.
     */
    private long stageRopeStore(CudaKvCache c, int[] positions, int[][] slots, int kvHeads, int layer, int n) {
        int[] a = new int[n + 2 * kvHeads * n];
        System.arraycopy(positions, 0, a, 0, n);
        for (int g = 0; g < kvHeads; g++)
            for (int i = 0; i < n; i++) {
                int slot = slots[g][i];
                if (slot < 0 || slot >= c.capacity()) throw new IllegalArgumentException("storeKv: slot " + slot + " outside [0, " + c.capacity() + ")");
                a[n + g * n + i] = slot;
                a[n + kvHeads * n + g * n + i] = c.position(layer, g, slot);
            }
        return stage(a, a.length);
    }

    @Override
    public void swiglu(Tensor out, Tensor gate, Tensor up, int n) {
        flushQueuedSelect(); // a queued selection reads q and the cache as they are now
        CudaTensor o = act(out), g = act(gate), u = act(up);
        sig(6, o.ptr, g.ptr, u.ptr, n);
        if (mode != Mode.DRY) check(TpNative.tp_swiglu(o.ptr, g.ptr, u.ptr, (long) n * g.cols, stream), "swiglu");
    }

    @Override
    public void add(Tensor x, Tensor y, int n) {
        flushQueuedSelect(); // a queued selection reads q and the cache as they are now
        CudaTensor a = act(x), b = act(y);
        sig(7, a.ptr, b.ptr, n);
        if (mode != Mode.DRY) check(TpNative.tp_add(a.ptr, b.ptr, (long) n * a.cols, stream), "add");
    }

    @Override
    public void storeKv(KvCache cache, int layer, Tensor k, Tensor v, int[][] slots, int n) {
        flushQueuedSelect(); // a queued selection reads q and the cache as they are now
        if (cache instanceof CudaQuantKvCache qc) {
            storeKvQuant(qc, layer, act(k), act(v), slots, n);
            return;
        }
        CudaKvCache c = (CudaKvCache) cache;
        CudaTensor kt = act(k), vt = act(v);
        int hkv = c.kvHeads(), hd = c.headDim();
        flushFrees(c);
        int[] a = new int[2 * hkv * n];
        for (int g = 0; g < hkv; g++)
            for (int i = 0; i < n; i++) {
                int slot = slots[g][i];
                if (slot < 0 || slot >= c.capacity()) throw new IllegalArgumentException("storeKv: slot " + slot + " outside [0, " + c.capacity() + ")");
                a[g * n + i] = slot;
                a[hkv * n + g * n + i] = c.position(layer, g, slot);
            }
        long d = stage(a, a.length);
        sig(8, c.keys, kt.ptr, vt.ptr, c.deviceLayer(layer), n);
        if (mode != Mode.DRY)
            check(TpNative.tp_store_kv(c.keys, c.values, c.pos, kt.ptr, vt.ptr, d, d + 4L * hkv * n, c.deviceLayer(layer), hkv, hd,
                    c.capacity(), n, stream), "storeKv");
    }

    @Override
    public void attention(Tensor out, Tensor q, KvCache cache, int layer, int[] queryPositions, int n,
                          SlotSelection select, AttentionStats stats) {
        joinSideSelect(); // the selection it may read
        if (pendingSelect != null) {
            PendingSelect p = pendingSelect;
            if (select == null && stats == null && n == 1 && cache == p.cache && layer == p.layer
                    && act(q).ptr == p.q && queryPositions[0] == p.queryPosition) {
                pendingSelect = null;
                attentionSelect(act(out), act(q), p);
                return;
            }
            flushPendingSelect();
        }
        if (select != null && attentionOnDeviceSelection(out, q, cache, layer, queryPositions, n, select, stats)) return;
        if (cache instanceof CudaQuantKvCache qc) {
            attentionQuant(act(out), act(q), qc, layer, queryPositions, n, select, stats);
            return;
        }
        CudaKvCache c = (CudaKvCache) cache;
        CudaTensor o = act(out), qt = act(q);
        int hd = c.headDim(), hkv = c.kvHeads(), cap = c.capacity();
        checkHeadDim(hd);
        int heads = qt.cols / hd;
        if (heads % hkv != 0) throw new IllegalArgumentException("attention: " + heads + " q-heads for " + hkv + " KV heads");
        if (n <= 0) return;
        if (stats != null && mode != Mode.EAGER) throw abort("attention statistics", true);
        flushFrees(c);
        // staged ints: qpos[n] | highWater[hkv] | counts[hkv] | slots[hkv * stride]
        int maxLen = 0, stride = 0;
        if (select != null) {
            for (int g = 0; g < hkv; g++) maxLen = Math.max(maxLen, select.count()[g]);
            stride = Integer.highestOneBit(Math.max(1, maxLen - 1)) << 1;
            if (stride < maxLen) stride = maxLen;
        } else {
            for (int g = 0; g < hkv; g++) maxLen = Math.max(maxLen, c.highWater(layer, g));
        }
        int[] a = new int[n + 2 * hkv + hkv * stride];
        System.arraycopy(queryPositions, 0, a, 0, n);
        for (int g = 0; g < hkv; g++) a[n + g] = c.highWater(layer, g);
        if (select != null) {
            for (int g = 0; g < hkv; g++) {
                int cnt = select.count()[g];
                a[n + hkv + g] = cnt;
                System.arraycopy(select.slots()[g], 0, a, n + 2 * hkv + g * stride, cnt);
            }
        }
        long d = stage(a, a.length);
        long dq = d, dhw = d + 4L * n, dcnt = dhw + 4L * hkv, dsel = dcnt + 4L * hkv;
        int lenHint = maxLen <= 1 ? 1 : Integer.highestOneBit(maxLen - 1) << 1;
        float scale = (float) (1.0 / Math.sqrt(hd));
        boolean fused = n == 1 && fusedMerge(heads, hkv);
        sig(9, o.ptr, qt.ptr, c.keys, c.deviceLayer(layer), n, heads, stride, lenHint, select == null ? 0 : 1, fused ? 1 : 0,
                shortAttn ? 1 : 0);
        if (mode == Mode.DRY) return;

        long raw = 0, prob = 0;
        boolean wantRaw = stats != null && stats.rawScores != null;
        boolean wantProb = stats != null && stats.probSums != null && stats.fromRow < n;
        int statsHw = wantRaw || wantProb ? maxHighWater(c, layer) : 0;
        if (pinnedStats && statsHw > 0) statsPinned(heads + hkv, statsHw); // before either upload: no growth between them
        if (wantRaw) raw = statsUpload(statRaw, stats.rawScores, heads, cap, statsHw, 0, Float.NEGATIVE_INFINITY);
        if (wantProb) prob = statsUpload(statProb, stats.probSums, hkv, cap, statsHw, heads, 0f);
        long selSlots = select == null ? 0 : dsel, selCounts = select == null ? 0 : dcnt;
        int rc;
        if (n == 1) {
            ensureAttnWs(TpNative.tp_decode_attention_workspace_bytes(heads, hd), 0);
            rc = TpNative.tp_decode_attention_ex2(o.ptr, qt.ptr, c.keys, c.values, c.pos, c.deviceLayer(layer), heads, hkv, hd, cap,
                    dq, selSlots, Math.max(stride, 1), selCounts, dhw, lenHint, scale, raw, prob, attnWs, attnWsBytes,
                    fused ? attnCounters : 0, shortAttn ? -1 : 0, stream);
        } else {
            if (raw != 0 || prob != 0) ensureAttnWs(TpNative.tp_prefill_attention_workspace_bytes(n, heads), 0);
            rc = TpNative.tp_prefill_attention(o.ptr, qt.ptr, c.keys, c.values, c.pos, c.deviceLayer(layer), heads, hkv, hd, cap, n,
                    dq, selSlots, Math.max(stride, 1), selCounts, dhw, lenHint, scale, stats == null ? 0 : stats.fromRow,
                    raw, prob, attnWs, attnWsBytes, stream);
        }
        check(rc, n == 1 ? "decode attention" : "prefill attention");
        statsDownload(wantRaw ? stats.rawScores : null, raw, heads, wantProb ? stats.probSums : null, prob, hkv, cap, statsHw);
    }

    /**
     * Batched decode attention over pooled caches ({@link #newKvCaches} with batched attention on): RoPE of every row's
     * q and k (two launches), then per run of rows whose caches are consecutive members of one pool one KV store and
     * one decode attention over the run as one cache of (run length × KV heads) heads. Rows whose caches are not
     * pooled are runs of one. False (nothing done) when batched attention is off or a cache is not a bf16 CUDA cache.
     */
    @Override
    public boolean batchDecodeAttention(Tensor att, Tensor q, int heads, Tensor k, Tensor v, int kvHeads, RopeTable rope,
                                        int[] positions, KvCache[] caches, int layer, int[][] slots, int rows) {
        flushPendingSelect(); // a queued selection reads q and the cache as they are now
        if (!batchAttention || rows < 1) return false;
        for (int i = 0; i < rows; i++)
            if (!(caches[i] instanceof CudaKvCache c) || c.kvHeads() != kvHeads || c.headDim() != rope.headDim()) return false;
        CudaTensor o = act(att), qt = act(q), kt = act(k), vt = act(v);
        int hd = rope.headDim();
        checkHeadDim(hd);
        if (heads % kvHeads != 0) throw new IllegalArgumentException("attention: " + heads + " q-heads for " + kvHeads + " KV heads");
        // the rows' heads must lie back to back for a run to be one call
        if (qt.cols != heads * hd || o.cols != heads * hd || kt.cols != kvHeads * hd || vt.cols != kvHeads * hd) return false;
        if (rows > qt.rows || rows > o.rows || rows > kt.rows || rows > vt.rows)
            throw new IllegalArgumentException("batchDecodeAttention: " + rows + " rows for " + qt + " / " + kt);
        for (int i = 0; i < rows; i++) flushFrees((CudaKvCache) caches[i]);
        rope(q, heads, rope, positions, rows);
        rope(k, kvHeads, rope, positions, rows);
        for (int i0 = 0; i0 < rows; ) {
            CudaKvCache a = (CudaKvCache) caches[i0];
            int i1 = i0 + 1;
            while (i1 < rows && i1 - i0 < MAX_RUN && caches[i1] instanceof CudaKvCache b && b.keys == a.keys
                    && b.poolSize == a.poolSize && b.member == a.member + (i1 - i0) && b.capacity() == a.capacity()) i1++;
            storeAttendRun(o, qt, kt, vt, heads, kvHeads, hd, caches, layer, slots, positions, i0, i1 - i0, a);
            i0 = i1;
        }
        batchAttentionCalls++;
        return true;
    }

    /**
     * Rows one batched attention call takes at most: its workspace holds every q-head's partial states for the most
     * splits (rows × heads × 256 × hd floats), and its grid one block row per KV head.
     */
    static final int MAX_RUN = 32;
    private long batchAttentionCalls;

    /** Batched steps whose attention went through {@link #batchDecodeAttention} (one call per layer and step). */
    public long batchAttentionCalls() {
        return batchAttentionCalls;
    }

    /** The KV store and the attention of rows [r0, r0 + nr), whose caches are members a.member .. of a's pool. */
    private void storeAttendRun(CudaTensor o, CudaTensor qt, CudaTensor kt, CudaTensor vt, int heads, int kvHeads, int hd,
                                KvCache[] caches, int layer, int[][] slots, int[] positions, int r0, int nr, CudaKvCache a) {
        int hkvR = nr * kvHeads, headsR = nr * heads, cap = a.capacity();
        long base = a.slotBase(layer, 0);  // (layer, first member, head 0); the run's heads follow
        long kBase = a.keys + base * hd * 2, vBase = a.values + base * hd * 2, pBase = a.pos + base * 4;
        // store, as one row of the run's heads: staged slots[hkvR] | token positions[hkvR]
        int[] st = new int[2 * hkvR];
        int[] at = new int[1 + hkvR]; // attention: qpos | highWater[hkvR]
        int maxLen = 0, maxPos = Integer.MIN_VALUE;
        for (int r = 0; r < nr; r++) {
            KvCache c = caches[r0 + r];
            maxPos = Math.max(maxPos, positions[r0 + r]);
            for (int g = 0; g < kvHeads; g++) {
                int slot = slots[r0 + r][g];
                if (slot < 0 || slot >= cap) throw new IllegalArgumentException("storeKv: slot " + slot + " outside [0, " + cap + ")");
                st[r * kvHeads + g] = slot;
                st[hkvR + r * kvHeads + g] = c.position(layer, g, slot);
                int hw = c.highWater(layer, g);
                at[1 + r * kvHeads + g] = hw;
                maxLen = Math.max(maxLen, hw);
            }
        }
        at[0] = maxPos; // every token a row's cache holds is at or before the row's position: the latest row's bounds all
        long ds = stage(st, st.length);
        sig(48, kBase, kt.row(r0), vt.row(r0), hkvR, cap);
        if (mode != Mode.DRY)
            check(TpNative.tp_store_kv(kBase, vBase, pBase, kt.row(r0), vt.row(r0), ds, ds + 4L * hkvR, 0, hkvR, hd, cap, 1,
                    stream), "storeKv (batched)");
        long da = stage(at, at.length);
        int lenHint = maxLen <= 1 ? 1 : Integer.highestOneBit(maxLen - 1) << 1;
        boolean fused = fusedMerge(headsR, hkvR);
        // sized once for the longest run the pool can form: a longer run later would abort a captured step again
        ensureAttnWs(TpNative.tp_decode_attention_workspace_bytes(headsR, hd),
                TpNative.tp_decode_attention_workspace_bytes(Math.min(a.poolSize, MAX_RUN) * heads, hd));
        sig(49, o.row(r0), qt.row(r0), kBase, hkvR, headsR, lenHint, fused ? 1 : 0, shortAttn ? 1 : 0);
        if (mode == Mode.DRY) return;
        check(TpNative.tp_decode_attention_ex2(o.row(r0), qt.row(r0), kBase, vBase, pBase, 0, headsR, hkvR, hd, cap,
                da, 0, 1, 0, da + 4, lenHint, (float) (1.0 / Math.sqrt(hd)), 0, 0, attnWs, attnWsBytes,
                fused ? attnCounters : 0, shortAttn ? -1 : 0, stream), "decode attention (batched)");
    }

    /**
     * Batch lanes' caches in one pool and batched steps' attention in one call per run of them
     * ({@link #newKvCaches}, {@link #batchDecodeAttention}); on by default ({@code -Dtokenpress.cuda.batchAttention=false}
     * turns it off; on an H200, 64 sequences: 17,549 tokens/s against 3,819 with a cache per sequence).
     */
    public void setBatchAttention(boolean on) {
        batchAttention = on;
    }

    public boolean batchAttention() {
        return batchAttention;
    }

    // ---- quantized KV cache (kv_quant.cu); reached only for a CudaQuantKvCache; decode steps are captured into
    // graphs like the others (-Dtokenpress.cuda.quantGraphs=false: always eager) ------------------------------------

    private void storeKvQuant(CudaQuantKvCache c, int layer, CudaTensor kt, CudaTensor vt, int[][] slots, int n) {
        if (!quantGraphs) requireEager("storeKv into a quantized KV cache");
        int hkv = c.kvHeads(), hd = c.headDim();
        if (kt.cols != vt.cols || kt.cols < hkv * hd) throw new IllegalArgumentException("storeKv: " + kt + " / " + vt + " for " + hkv + " KV heads of " + hd);
        if (n <= 0) return;
        for (int g = 0; g < hkv; g++)
            for (int i = 0; i < n; i++)
                if (slots[g][i] < 0 || slots[g][i] >= c.capacity())
                    throw new IllegalArgumentException("storeKv: slot " + slots[g][i] + " outside [0, " + c.capacity() + ")");
        flushQuantFrees(c);
        // the plan made when the slots were allocated (host bookkeeping done once, even when this body runs again
        // for a capture); without one (slots not from one append of every head) it is made now, eagerly
        CudaQuantKvCache.Plan p = c.preparedPlan(layer, slots, n);
        if (p == null) {
            if (mode != Mode.EAGER) throw abort("storeKv into a quantized KV cache without a prepared plan", false);
            p = c.plan(layer, slots, n);
        }
        runQuantPlan(c, layer, p, kt.ptr, vt.ptr, kt.cols);
    }

    /**
     * The device work of a quantized cache's store plan, in order: compaction decodes, block encodes (sources: rows of
     * k/v [n, kvStride] or window entries), compaction encodes, window writes, location and position scatters.
     */
    private void runQuantPlan(CudaQuantKvCache c, int layer, CudaQuantKvCache.Plan p, long kPtr, long vPtr, int kvStride) {
        int hkv = c.kvHeads(), hd = c.headDim();
        sig(43, c.pool, c.winK, c.winV, c.loc, c.pos, kPtr, vPtr, kvStride, layer, p.blocks, p.writes, p.updates,
                p.posUpdates, p.decodes, p.compacted, c.scratch);
        if (p.decodes > 0) {  // compaction sources, read before any encode below can overwrite their blocks
            long d = stage(p.decode, p.decode.length);
            if (mode != Mode.DRY)
                check(TpNative.tp_kvq_decode_lanes(c.scratch, c.scratch + c.scratchValues(), c.pool, d, p.decodes, layer,
                        hkv, hd, c.group, c.bits, c.maxBlocks, stream), "storeKv (compaction: decode)");
        }
        if (p.blocks > 0) {
            long d = stage(p.encode, p.encode.length);
            if (mode != Mode.DRY)
                check(TpNative.tp_kvq_encode(c.pool, c.winK, c.winV, kPtr, vPtr, kvStride, d, p.blocks, layer, hkv, hd,
                        c.group, c.bits, c.resCap, c.maxBlocks, stream), "storeKv (quantize blocks)");
        }
        if (p.compacted > 0) {
            long d = stage(p.compact, p.compact.length);
            if (mode != Mode.DRY)
                check(TpNative.tp_kvq_encode_rows(c.pool, c.scratch, c.scratch + c.scratchValues(), d, p.compacted, layer,
                        hkv, hd, c.group, c.bits, c.maxBlocks, stream), "storeKv (compaction: encode)");
        }
        if (p.writes > 0) {
            long d = stage(p.write, p.write.length);
            if (mode != Mode.DRY)
                check(TpNative.tp_kvq_window_write(c.winK, c.winV, kPtr, vPtr, kvStride, d, p.writes, layer, hkv, hd,
                        c.resCap, stream), "storeKv (window)");
        }
        if (p.updates > 0) {
            int[] a = new int[2 * p.updates];
            System.arraycopy(p.locIdx, 0, a, 0, p.updates);
            System.arraycopy(p.locVal, 0, a, p.updates, p.updates);
            long d = stage(a, a.length);
            if (mode != Mode.DRY)
                check(TpNative.tp_scatter_i32(c.loc, d, d + 4L * p.updates, p.updates, stream), "storeKv (locations)");
        }
        if (p.posUpdates > 0) {
            int[] a = new int[2 * p.posUpdates];
            System.arraycopy(p.posIdx, 0, a, 0, p.posUpdates);
            System.arraycopy(p.posVal, 0, a, p.posUpdates, p.posUpdates);
            long d = stage(a, a.length);
            if (mode != Mode.DRY)
                check(TpNative.tp_scatter_i32(c.pos, d, d + 4L * p.posUpdates, p.posUpdates, stream), "storeKv (positions)");
        }
    }

    private void attentionQuant(CudaTensor o, CudaTensor qt, CudaQuantKvCache c, int layer, int[] queryPositions, int n,
                                SlotSelection select, AttentionStats stats) {
        if (!quantGraphs) requireEager("attention over a quantized KV cache");
        int hd = c.headDim(), hkv = c.kvHeads(), cap = c.capacity();
        checkHeadDim(hd);
        int heads = qt.cols / hd;
        if (heads % hkv != 0) throw new IllegalArgumentException("attention: " + heads + " q-heads for " + hkv + " KV heads");
        if (o.cols != qt.cols) throw new IllegalArgumentException("attention: out " + o + " for q " + qt);
        boolean wantRaw = stats != null && stats.rawScores != null;
        boolean wantProb = stats != null && stats.probSums != null && stats.fromRow < n;
        if (wantRaw || (stats != null && stats.probSums != null)) requireQuantPolicyOps("attention statistics");
        if (n <= 0) return;
        if ((wantRaw || wantProb) && mode != Mode.EAGER) throw abort("attention statistics", true);
        flushQuantFrees(c);
        int maxLen = 0, stride = 0;
        if (select != null) {
            for (int g = 0; g < hkv; g++) maxLen = Math.max(maxLen, select.count()[g]);
            stride = Math.max(1, maxLen);
        } else {
            for (int g = 0; g < hkv; g++) maxLen = Math.max(maxLen, c.highWater(layer, g));
        }
        int[] a = new int[n + 2 * hkv + hkv * stride];
        System.arraycopy(queryPositions, 0, a, 0, n);
        for (int g = 0; g < hkv; g++) a[n + g] = c.highWater(layer, g);
        if (select != null)
            for (int g = 0; g < hkv; g++) {
                int cnt = select.count()[g];
                a[n + hkv + g] = cnt;
                System.arraycopy(select.slots()[g], 0, a, n + 2 * hkv + g * stride, cnt);
            }
        long d = stage(a, a.length);
        long dq = d, dhw = d + 4L * n, dcnt = dhw + 4L * hkv, dsel = dcnt + 4L * hkv;
        // the kernels read every length from device memory; maxLen only sizes the split count: a power of two keeps
        // a captured step valid until the context doubles
        int lenHint = maxLen <= 1 ? 1 : Integer.highestOneBit(maxLen - 1) << 1;
        ensureAttnWs(TpNative.tp_kvq_attention_workspace_bytes(n, heads, hd, lenHint), 0);
        boolean fused = n == 1 && fusedMerge(heads, hkv); // quantized attention v4 merges its splits with the counters
        sig(44, o.ptr, qt.ptr, c.pool, c.winK, c.winV, c.pos, c.loc, layer, heads, hd, n, stride, lenHint,
                select == null ? 0 : 1, c.maxBlocks, fused ? 1 : 0);
        if (mode == Mode.DRY) return;
        float scale = (float) (1.0 / Math.sqrt(hd));
        long lse = 0, raw = 0, prob = 0;
        if (wantProb) lse = policyScratch(4L * n * heads);
        int statsHw = wantRaw || wantProb ? maxHighWater(c, layer) : 0;
        if (pinnedStats && statsHw > 0) statsPinned(heads + hkv, statsHw); // before either upload: no growth between them
        if (wantRaw) raw = statsUpload(statRaw, stats.rawScores, heads, cap, statsHw, 0, Float.NEGATIVE_INFINITY);
        if (wantProb) prob = statsUpload(statProb, stats.probSums, hkv, cap, statsHw, heads, 0f);
        check(TpNative.tp_kvq_attention_ex2(o.ptr, qt.ptr, c.pool, c.winK, c.winV, c.pos, c.loc, layer, heads, hkv, hd, cap,
                c.group, c.bits, c.resCap, c.maxBlocks, n, dq, select == null ? 0 : dsel, Math.max(stride, 1),
                select == null ? 0 : dcnt, dhw, lenHint, scale, attnWs, attnWsBytes, lse, fused ? attnCounters : 0, stream),
                n == 1 ? "decode attention (quantized KV)" : "prefill attention (quantized KV)");
        if (!wantRaw && !wantProb) return;
        check(TpNative.tp_kvq_attention_stats(qt.ptr, c.pool, c.winK, c.pos, c.loc, layer, heads, hkv, hd, cap, c.group,
                c.bits, c.resCap, c.maxBlocks, n, dq, stats.fromRow, lse, select == null ? 0 : dsel, Math.max(stride, 1),
                select == null ? 0 : dcnt, dhw, scale, raw, prob, stream), "attention statistics (quantized KV)");
        statsDownload(wantRaw ? stats.rawScores : null, raw, heads, wantProb ? stats.probSums : null, prob, hkv, cap, statsHw);
    }

    /**
     * Attention over a TidalDecode selection made by {@link #selectTopSlots} on a quantized cache: one decode row,
     * the slot lists and counts read in device memory.
     */
    private void attentionQuantOnDeviceSelection(CudaTensor o, CudaTensor qt, CudaQuantKvCache c, int layer, int queryPosition,
                                                 DeviceSelection ds) {
        int hd = c.headDim(), hkv = c.kvHeads(), cap = c.capacity();
        checkHeadDim(hd);
        int heads = qt.cols / hd;
        if (heads % hkv != 0) throw new IllegalArgumentException("attention: " + heads + " q-heads for " + hkv + " KV heads");
        flushQuantFrees(c);
        // staged ints: qpos[1] | highWater[hkv]
        int[] a = new int[1 + hkv];
        a[0] = queryPosition;
        for (int g = 0; g < hkv; g++) a[1 + g] = c.highWater(layer, g);
        long d = stage(a, a.length);
        int lenHint = ds.k <= 1 ? 1 : Integer.highestOneBit(ds.k - 1) << 1;
        ensureAttnWs(TpNative.tp_kvq_attention_workspace_bytes(1, heads, hd, lenHint), 0);
        sig(47, o.ptr, qt.ptr, c.pool, c.winK, c.winV, c.pos, c.loc, layer, heads, hd, ds.slots, ds.stride, lenHint, c.maxBlocks);
        if (mode == Mode.DRY) return;
        float scale = (float) (1.0 / Math.sqrt(hd));
        check(TpNative.tp_kvq_attention_ex(o.ptr, qt.ptr, c.pool, c.winK, c.winV, c.pos, c.loc, layer, heads, hkv, hd, cap,
                c.group, c.bits, c.resCap, c.maxBlocks, 1, d, ds.slots, ds.stride, ds.counts, d + 4, lenHint, scale,
                attnWs, attnWsBytes, 0, stream), "decode attention (quantized KV, device selection)");
    }

    /**
     * The ops a KV policy needs from a quantized cache (attention statistics, queryKeyScores, questPageScores,
     * selectTopSlots) and the cache's compaction: their kernels (cuda/kv_quant.cu) are on (they passed their parity
     * tests on an H100) unless {@code -Dtokenpress.cuda.quantPolicyOps=false} (or TOKENPRESS_CUDA_QUANT_POLICY_OPS=0),
     * read at each use.
     */
    static boolean quantPolicyOps() {
        return flag("tokenpress.cuda.quantPolicyOps", "TOKENPRESS_CUDA_QUANT_POLICY_OPS");
    }

    private static void requireQuantPolicyOps(String op) {
        if (!quantPolicyOps())
            throw new UnsupportedOpException(op + " on a quantized CUDA KV cache (needed by this --kv policy) is turned off "
                    + "(TOKENPRESS_CUDA_QUANT_POLICY_OPS=0 or -Dtokenpress.cuda.quantPolicyOps=false): unset it, or use --device cpu");
    }

    /** A device buffer that grows (never shrinks) to the largest size asked of it ({@link #ensure}, {@link #grow}). */
    private static final class Scratch {
        final String what;
        long ptr, bytes;
        int tag;  // grow: the shape it was sized for

        Scratch(String what) { this.what = what; }
    }

    private long ensure(Scratch s, long bytes) {
        if (bytes > s.bytes) {
            free(s.ptr);
            s.ptr = 0;
            s.bytes = 0;
            s.ptr = malloc(bytes, s.what);
            s.bytes = bytes;
        }
        return s.ptr;
    }

    /** Device copy of host statistics rows ([rows][>= cap], the first cap entries) in {@code into}. */
    /** The largest high-water mark of the KV heads of {@code layer}: the slots an attention call can touch lie below it. */
    private static int maxHighWater(KvCache c, int layer) {
        int hw = 0;
        for (int g = 0; g < c.kvHeads(); g++) hw = Math.max(hw, c.highWater(layer, g));
        return hw;
    }

    /**
     * Puts an attention statistics output ({@code count} host rows, device rows of {@code cap}) on the device before
     * the call: the kernels add to it or leave untouched entries as they are. Row by row (pinned statistics off): every
     * row's whole capacity, waiting for each copy. With {@link #setPinnedStats pinned statistics} (the default) only the first {@code hw}
     * entries of each row matter (the kernels touch no slot at or above the high-water mark, and only those entries
     * come back): when they all hold {@code neutral} (bit for bit: what a policy's cleared statistics hold) the device
     * rows are filled with it, else they go through the pinned buffer at row {@code pinnedRow} in one asynchronous copy.
     */
    private long statsUpload(Scratch into, float[][] rows, int count, int cap, int hw, int pinnedRow, float neutral) {
        long buf = ensure(into, 4L * count * cap);
        if (!pinnedStats) {
            for (int i = 0; i < count; i++)
                check(TpNative.tp_memcpy_h2d(buf + 4L * i * cap, rows[i], 4L * cap, stream), "stats upload");
            return buf;
        }
        if (hw == 0) return buf;
        for (int i = 0; i < count; i++)
            if (rows[i].length < hw) throw new IllegalArgumentException("attention statistics: a row of " + rows[i].length + " entries for " + hw + " slots");
        int bits = Float.floatToRawIntBits(neutral);
        boolean neutralRows = true;
        for (int i = 0; i < count && neutralRows; i++) {
            float[] r = rows[i];
            for (int s = 0; s < hw; s++)
                if (Float.floatToRawIntBits(r[s]) != bits) {
                    neutralRows = false;
                    break;
                }
        }
        if (neutralRows) {
            check(TpNative.tp_fill_f32(buf, neutral, (long) count * cap, stream), "stats fill");
            return buf;
        }
        java.nio.FloatBuffer host = statsHostFloats;
        if (host == null || (long) (pinnedRow + count) * hw > host.capacity())
            throw new IllegalStateException("attention statistics: the pinned buffer was not sized for the call");
        for (int i = 0; i < count; i++) host.put((pinnedRow + i) * hw, rows[i], 0, hw);
        statsInFlight = true; // until the call's download has waited
        check(TpNative.tp_memcpy_2d_async(buf, 4L * cap, statsHost + 4L * pinnedRow * hw, 4L * hw, 4L * hw, count, stream),
                "stats upload");
        return buf;
    }

    /**
     * Brings the statistics of an attention call back into the host rows (either may be null): row by row, or with
     * pinned statistics the first {@code hw} entries of every row in one asynchronous copy per output and one wait.
     */
    private void statsDownload(float[][] rawRows, long raw, int heads, float[][] probRows, long prob, int hkv, int cap, int hw) {
        if (!pinnedStats) {
            for (int i = 0; rawRows != null && i < heads; i++)
                check(TpNative.tp_memcpy_d2h(rawRows[i], raw + 4L * i * cap, 4L * cap, stream), "stats download");
            for (int i = 0; probRows != null && i < hkv; i++)
                check(TpNative.tp_memcpy_d2h(probRows[i], prob + 4L * i * cap, 4L * cap, stream), "stats download");
            return;
        }
        if (hw == 0 || rawRows == null && probRows == null) return;
        java.nio.FloatBuffer host = statsHostFloats; // sized for the call before its uploads
        if (host == null || (long) (heads + hkv) * hw > host.capacity())
            throw new IllegalStateException("attention statistics: the pinned buffer was not sized for the call");
        if (rawRows != null)
            check(TpNative.tp_memcpy_2d_async(statsHost, 4L * hw, raw, 4L * cap, 4L * hw, heads, stream), "stats download");
        if (probRows != null)
            check(TpNative.tp_memcpy_2d_async(statsHost + 4L * heads * hw, 4L * hw, prob, 4L * cap, 4L * hw, hkv, stream),
                    "stats download");
        check(TpNative.tp_stream_synchronize(stream), "stats download");
        statsInFlight = false;
        for (int i = 0; rawRows != null && i < heads; i++) host.get(i * hw, rawRows[i], 0, hw);
        for (int i = 0; probRows != null && i < hkv; i++) host.get((heads + i) * hw, probRows[i], 0, hw);
    }

    /**
     * The pinned statistics buffer, at least {@code rows * hw} floats; it grows only before a call's uploads (after
     * waiting for the stream, so no copy still uses the old one).
     */
    private java.nio.FloatBuffer statsPinned(int rows, int hw) {
        if (statsInFlight) { // a call that failed between its upload and its wait: its copy may still read the buffer
            synchronize();
            statsInFlight = false;
        }
        long bytes = 4L * rows * hw;
        if (bytes > Integer.MAX_VALUE) throw new IllegalArgumentException("attention statistics of " + rows + " x " + hw + " entries do not fit one buffer");
        if (bytes > statsHostBytes) {
            long size = Math.max(bytes, 1L << 20);
            if (statsHost != 0) {
                synchronize();
                TpNative.tp_free_host(statsHost);
            }
            statsHost = 0;
            statsHostBytes = 0;
            statsHostFloats = null;
            statsHost = mallocHost(size);
            statsHostBytes = size;
            statsHostFloats = new RawPointer(statsHost, size).asByteBuffer().order(java.nio.ByteOrder.nativeOrder()).asFloatBuffer();
        }
        return statsHostFloats;
    }

    /**
     * {@code floats} floats from device address {@code src} into the pinned statistics buffer (one asynchronous copy and
     * one wait, instead of a pageable copy into a Java array): the policy ops' scores with pinned statistics on.
     */
    private java.nio.FloatBuffer pinnedDownload(long src, long floats, String what) {
        if (floats > Integer.MAX_VALUE / 4) throw new IllegalArgumentException(what + ": " + floats + " floats do not fit one buffer");
        java.nio.FloatBuffer host = statsPinned(1, (int) floats);
        check(TpNative.tp_memcpy_async(statsHost, src, 4L * floats, stream), what);
        check(TpNative.tp_stream_synchronize(stream), what);
        return host;
    }

    /**
     * Attention statistics through one pinned buffer per call (first {@code hw} entries of every row, one copy each way
     * and one wait; cleared rows are filled on the device instead of uploaded) instead of one waiting copy per row of the
     * whole capacity, and the scores of queryKeyScores / questPageScores through the same buffer instead of a Java array;
     * the same values either way. On by default ({@code -Dtokenpress.cuda.pinnedStats=false} turns it off; on an H200 at
     * 8K, h2o 118.7 → 260.0 tokens/s, a2sf 107.5 → 325.0, quest 123.5 → 227.8).
     */
    public void setPinnedStats(boolean on) {
        pinnedStats = on;
    }

    public boolean pinnedStats() {
        return pinnedStats;
    }

    private void flushQuantFrees(CudaQuantKvCache c) {
        if (c.pendingFreeCount() == 0) return;
        if (mode != Mode.EAGER) throw abort("KV slot frees inside a decode step", false);
        int[] idx = c.takePendingFrees();
        int[] a = new int[2 * idx.length];
        System.arraycopy(idx, 0, a, 0, idx.length);
        Arrays.fill(a, idx.length, a.length, -1);
        long d = stage(a, a.length);
        check(TpNative.tp_scatter_i32(c.pos, d, d + 4L * idx.length, idx.length, stream), "KV free (quantized cache)");
    }

    /**
     * Whether a decode attention call over {@code heads} q-heads and {@code hkv} KV heads merges its splits in the
     * split kernel (fused merge on, and enough split counters); the counters are allocated, zeroed, on first use.
     */
    private boolean fusedMerge(int heads, int hkv) {
        if (!fusedAttnMerge) return false;
        if (attnCounters == 0) {
            if (mode != Mode.EAGER) throw abort("attention counter allocation", false);
            attnCounters = malloc(4L * ATTN_COUNTERS, "attention split counters");
            memsetNow(attnCounters, 0, 4L * ATTN_COUNTERS);
        }
        return TpNative.tp_decode_attention_counters(heads, hkv) <= ATTN_COUNTERS;
    }

    /**
     * The attention workspace holding at least {@code need} bytes; when it grows it is allocated at {@code full} bytes at
     * least. Eagerly only: a decode step being captured or dry-run aborts to an eager one instead.
     */
    private void ensureAttnWs(long need, long full) {
        if (need <= attnWsBytes) return;
        if (mode != Mode.EAGER) throw abort("attention workspace growth", false);
        freeScratch(attnWs);
        attnWs = 0;
        attnWsBytes = 0;
        long sz = Math.max(Math.max(need, full), 1L << 20);
        attnWs = malloc(sz, "attention workspace");
        attnWsBytes = sz;
    }

    // ---- TidalDecode token selection on the device (tidal_select.cu) -----------------------------------------------
    // The selection stays in device memory (one slot-list buffer per cache and layer) and decode attention reads it
    // there, so a selecting decode step needs no host round trip and can be captured into a CUDA graph: every step
    // value (high-water marks, query and current positions) is staged, the score grid spans a power-of-two bucket
    // of the largest high-water mark (part of the op signature, like the attention split count).

    /**
     * One layer's device selection: slot lists [Hkv][stride], counts [Hkv], current-slot scratch [Hkv] (-1); the
     * cache is a {@link CudaKvCache} or a {@link CudaQuantKvCache}.
     */
    private static final class DeviceSelection {
        final KvCache cache;
        final int layer, k, stride, kvHeads;
        final long slots, counts, cur;
        SlotSelection handle;

        DeviceSelection(KvCache cache, int layer, int k, int stride, int kvHeads, long slots, long counts, long cur) {
            this.cache = cache;
            this.layer = layer;
            this.k = k;
            this.stride = stride;
            this.kvHeads = kvHeads;
            this.slots = slots;
            this.counts = counts;
            this.cur = cur;
        }
    }

    private final List<DeviceSelection> deviceSelections = new ArrayList<>();
    private final Scratch tidalKeys = new Scratch("tidal selection scores");  // tp_tidal_select's workspace, tag: KV heads

    @Override
    public SlotSelection selectTopSlots(Tensor q, int row, int queryPosition, KvCache cache, int layer, int k,
                                        boolean sumGroup, int keepPosition, boolean hostCopy) {
        if (!flag("tokenpress.cuda.deviceSelect", "TOKENPRESS_CUDA_DEVICE_SELECT"))
            throw new UnsupportedOpException("selectTopSlots: the device selection is switched off (-Dtokenpress.cuda.deviceSelect=false)");
        if (cache instanceof CudaQuantKvCache) requireQuantPolicyOps("selectTopSlots");
        else if (cache == null || cache.getClass() != CudaKvCache.class)
            throw new UnsupportedOpException("selectTopSlots: no CUDA op for a " + (cache == null ? "null" : cache.getClass().getSimpleName()) + " cache");
        if (hostCopy) requireEager("selectTopSlots with a host copy");
        flushPendingSelect();
        KvCache c = cache;
        CudaQuantKvCache qc = cache instanceof CudaQuantKvCache x ? x : null;
        CudaTensor qt = act(q);
        int hd = c.headDim(), hkv = c.kvHeads(), cap = c.capacity();
        if (k < 0) throw new IllegalArgumentException("selectTopSlots: k must be >= 0, got " + k);
        int heads = selectionHeads("selectTopSlots", c, layer, qt, row);
        if (qc != null) flushQuantFrees(qc);
        else flushFrees((CudaKvCache) c);
        DeviceSelection ds = deviceSelection(c, layer, k);
        // staged ints: highWater[hkv] | queryPosition | keepPosition
        int[] a = new int[hkv + 2];
        int maxHw = 0;
        for (int g = 0; g < hkv; g++) maxHw = Math.max(maxHw, a[g] = c.highWater(layer, g));
        a[hkv] = queryPosition;
        a[hkv + 1] = keepPosition;
        int len = Math.min(cap, maxHw <= 1 ? 1 : Integer.highestOneBit(maxHw - 1) << 1);
        ensureTidalKeys(hkv, len, cap);
        if (qc == null && fusedSelect && !hostCopy) { // queued: the layer's attention selects (attention below)
            sig(40, qt.ptr, row, ((CudaKvCache) c).keys, ((CudaKvCache) c).deviceLayer(layer), heads, k, sumGroup ? 1 : 0, len,
                    ds.slots, 1);
            pendingSelect = new PendingSelect((CudaKvCache) c, layer, qt.row(row), queryPosition, ds, a, len, k, sumGroup, heads);
            SlotSelection handle = new SlotSelection(null, null);
            ds.handle = handle;
            return handle;
        }
        long d = stage(a, a.length);
        if (qc != null) {
            sig(46, qt.ptr, row, qc.pool, qc.winK, qc.pos, qc.loc, layer, heads, k, sumGroup ? 1 : 0, len, ds.slots, qc.maxBlocks);
            if (mode != Mode.DRY)
                check(TpNative.tp_kvq_tidal_select(ds.slots, ds.counts, ds.stride, ds.cur, tidalKeys.ptr, len, qt.row(row),
                        qc.pool, qc.winK, qc.pos, qc.loc, layer, heads, hkv, hd, cap, qc.group, qc.bits, qc.resCap,
                        qc.maxBlocks, d, k, sumGroup ? 1 : 0, stream), "selectTopSlots (quantized KV)");
        } else {
            CudaKvCache bc = (CudaKvCache) c;
            sig(40, qt.ptr, row, bc.keys, bc.deviceLayer(layer), heads, k, sumGroup ? 1 : 0, len, ds.slots);
            if (mode != Mode.DRY)
                check(TpNative.tp_tidal_select(ds.slots, ds.counts, ds.stride, ds.cur, tidalKeys.ptr, len, qt.row(row), bc.keys,
                        bc.pos, bc.deviceLayer(layer), heads, hkv, hd, cap, d, k, sumGroup ? 1 : 0, stream), "selectTopSlots");
        }
        SlotSelection handle = hostCopy ? download(ds) : new SlotSelection(null, null);
        ds.handle = handle;
        return handle;
    }

    /**
     * A selection's scratch s holding at least {@code need} bytes ({@link #ensure} for buffers a captured decode step
     * reads): when smaller, or sized for another {@code tag} (a shape it depends on), it is allocated anew at
     * {@code full} bytes at least (what the cache's whole capacity needs: no growth, and no graph abort, later) and
     * zero-filled when {@code zero} (a selection state that every call leaves zero). Eagerly only.
     */
    private void grow(Scratch s, long need, long full, int tag, boolean zero) {
        if (need <= s.bytes && tag == s.tag) return;
        if (mode != Mode.EAGER) throw abort(s.what + " growth", false);
        freeScratch(s.ptr);
        s.ptr = 0;
        s.bytes = 0;
        long sz = Math.max(need, full);
        s.ptr = malloc(sz, s.what);
        if (zero) memsetNow(s.ptr, 0, sz);
        s.bytes = sz;
        s.tag = tag;
    }

    /** The selection scratch of tp_tidal_select (and of the selections from keys) for hkv KV heads and len candidates. */
    private void ensureTidalKeys(int hkv, int len, int cap) {
        grow(tidalKeys, TpNative.tp_tidal_select_workspace_bytes(hkv, len), TpNative.tp_tidal_select_workspace_bytes(hkv, cap),
                hkv, true);
    }

    private final Scratch questWs = new Scratch("quest page bounds");

    /**
     * Quest's page selection in device memory ({@code tp_quest_select}: page bounds, the group's page keys, the kept
     * pages as TidalDecode's selection from keys, their visible slots), read by the attention like
     * {@link #selectTopSlots}' selections; no host round trip, so a step that selects can be captured. Only for a bf16
     * cache; on by default ({@code -Dtokenpress.cuda.deviceQuest=false} switches it off: unsupported, and QuestPolicy
     * selects on the host from {@link #questPageScores}).
     */
    @Override
    public SlotSelection selectTopPages(Tensor q, int row, int queryPosition, KvCache cache, int layer, int pageSize,
                                        int pages, boolean sumGroup, int keepPosition, boolean hostCopy) {
        flushPendingSelect();
        if (!flag("tokenpress.cuda.deviceQuest", "TOKENPRESS_CUDA_DEVICE_QUEST"))
            throw new UnsupportedOpException("selectTopPages: the device page selection is switched off (-Dtokenpress.cuda.deviceQuest=false)");
        CudaKvCache c = bf16Selection("selectTopPages", cache, hostCopy);
        CudaTensor qt = act(q);
        int hd = c.headDim(), hkv = c.kvHeads(), cap = c.capacity();
        if (pageSize < 1) throw new IllegalArgumentException("selectTopPages: page size must be >= 1, got " + pageSize);
        if (pages < 1) throw new IllegalArgumentException("selectTopPages: pages must be >= 1, got " + pages);
        int heads = selectionHeads("selectTopPages", c, layer, qt, row);
        flushFrees(c);
        int maxPagesCap = (cap + pageSize - 1) / pageSize;
        int kSlots = (int) Math.min((long) pages * pageSize, Integer.MAX_VALUE);
        DeviceSelection ds = deviceSelection(c, layer, kSlots);
        // staged ints: pages[hkv] | queryPosition | 0 | highWater[hkv] | keptPage[hkv]
        int[] a = new int[3 * hkv + 2];
        int maxPages = 0;
        for (int g = 0; g < hkv; g++) {
            int hw = c.highWater(layer, g), np = (hw + pageSize - 1) / pageSize;
            int[] pos = c.positions(layer, g);
            int cur = -1;
            for (int s = hw - 1; s >= 0; s--) if (pos[s] == keepPosition) { cur = s; break; }
            a[g] = np;
            a[hkv + 2 + g] = hw;
            a[2 * hkv + 2 + g] = cur < 0 ? np - 1 : cur / pageSize;
            maxPages = Math.max(maxPages, np);
        }
        a[hkv] = queryPosition;
        // the grid extent in pages: a power of two, so a captured step stays valid until the context doubles
        int len = Math.min(maxPagesCap, maxPages <= 1 ? 1 : Integer.highestOneBit(maxPages - 1) << 1);
        ensureTidalKeys(hkv, len, cap);
        grow(questWs, TpNative.tp_quest_select_workspace_bytes(heads, hkv, len, pages),
                TpNative.tp_quest_select_workspace_bytes(heads, hkv, maxPagesCap, pages), 0, false);
        long d = stage(a, a.length);
        sig(52, qt.ptr, row, c.keys, c.deviceLayer(layer), heads, pageSize, pages, sumGroup ? 1 : 0, len, ds.slots);
        if (mode != Mode.DRY)
            check(TpNative.tp_quest_select(ds.slots, ds.counts, ds.stride, ds.cur, tidalKeys.ptr, questWs.ptr, len, qt.row(row), c.keys,
                    c.pos, c.deviceLayer(layer), heads, hkv, hd, cap, d, pageSize, pages, sumGroup ? 1 : 0, stream),
                    "selectTopPages");
        SlotSelection handle = hostCopy ? download(ds) : new SlotSelection(null, null);
        ds.handle = handle;
        return handle;
    }

    private final Scratch tsKeys = new Scratch("token selection scores"), tsWs = new Scratch("token selection votes");
    private long tokenVoteCalls;

    /** {@link #selectTokenVotes} calls that launched the device vote (graph replays not counted). */
    public long tokenVoteCalls() {
        return tokenVoteCalls;
    }

    /**
     * TokenSelect's vote in device memory ({@code tp_tokenselect_select}: raw q·k, each q-head's softmax over the
     * candidates, the summed votes as order keys, the best k as TidalDecode's selection from keys, the slot lists),
     * read by the attention like {@link #selectTopSlots}' selections: no download of the scores per layer, so a step
     * can be captured. Only for a bf16 cache whose KV heads hold the same tokens in slots 0 .. t-1 in position order
     * ({@link KvCache#inPositionOrder}: appended at the top, nothing below freed since the last clear); null otherwise. On by
     * default ({@code -Dtokenpress.cuda.deviceTokenSelect=false} switches it off: unsupported, and the policy votes on the host).
     */
    @Override
    public SlotSelection selectTokenVotes(Tensor q, int row, int queryPosition, KvCache cache, int layer, int k, int init,
                                          int local, boolean hostCopy) {
        flushPendingSelect();
        if (!flag("tokenpress.cuda.deviceTokenSelect", "TOKENPRESS_CUDA_DEVICE_TOKEN_SELECT"))
            throw new UnsupportedOpException("selectTokenVotes: the device vote is switched off (-Dtokenpress.cuda.deviceTokenSelect=false)");
        CudaKvCache c = bf16Selection("selectTokenVotes", cache, hostCopy);
        CudaTensor qt = act(q);
        int hd = c.headDim(), hkv = c.kvHeads(), cap = c.capacity();
        if (k < 1 || init < 0 || local < 0) throw new IllegalArgumentException("selectTokenVotes: k " + k + ", init " + init + ", local " + local);
        int heads = selectionHeads("selectTokenVotes", c, layer, qt, row);
        flushFrees(c);
        // every KV head's slots 0 .. t-1 in position order, the same tokens (appended together); else the host votes
        int t = c.highWater(layer, 0);
        if (t == 0) return null;
        int last = c.position(layer, 0, t - 1);
        for (int g = 0; g < hkv; g++)
            if (c.highWater(layer, g) != t || c.occupied(layer, g) != t || !c.inPositionOrder(layer, g)
                    || c.position(layer, g, t - 1) != last) return null;
        if ((long) init + k + local >= t) throw new IllegalArgumentException("selectTokenVotes: init + k + local must be below the " + t + " tokens");
        int total = init + k + local;
        DeviceSelection ds = deviceSelection(c, layer, total);
        int len = Math.min(cap, t <= 1 ? 1 : Integer.highestOneBit(t - 1) << 1);
        grow(tsKeys, TpNative.tp_tidal_select_workspace_bytes(1, len), TpNative.tp_tidal_select_workspace_bytes(1, cap), 0, true);
        grow(tsWs, TpNative.tp_tokenselect_workspace_bytes(heads, len, k), TpNative.tp_tokenselect_workspace_bytes(heads, cap, k),
                0, false);
        // staged ints: t | queryPosition | 0 | highWater[hkv]
        int[] a = new int[3 + hkv];
        a[0] = t;
        a[1] = queryPosition;
        for (int g = 0; g < hkv; g++) a[3 + g] = c.highWater(layer, g);
        long d = stage(a, a.length);
        sig(53, qt.ptr, row, c.keys, c.deviceLayer(layer), heads, k, init, local, len, ds.slots);
        if (mode != Mode.DRY) tokenVoteCalls++;
        if (mode != Mode.DRY)
            // ds.cur: -1, as every selection leaves it (nothing forced)
            check(TpNative.tp_tokenselect_select(ds.slots, ds.counts, ds.stride, ds.cur, tsKeys.ptr, tsWs.ptr, len, qt.row(row), c.keys,
                    c.pos, c.deviceLayer(layer), heads, hkv, hd, cap, d, k, init, local, stream), "selectTokenVotes");
        SlotSelection handle = hostCopy ? download(ds) : new SlotSelection(null, null);
        ds.handle = handle;
        return handle;
    }

    @Override
    public SlotSelection hostSelection(SlotSelection selection) {
        if (selection == null || selection.slots() != null) return selection;
        flushPendingSelect();
        DeviceSelection ds = findDeviceSelection(selection);
        if (ds == null) throw new IllegalArgumentException("hostSelection: a device selection that is no longer current (a later selection for the same cache and layer replaced it)");
        requireEager("hostSelection");
        return download(ds);
    }

    /** For CudaKernelBench: {slots, counts, stride, cur, score scratch, scratch bytes} of a device selection. */
    long[] deviceSelectionBuffers(SlotSelection s) {
        flushPendingSelect();
        DeviceSelection ds = findDeviceSelection(s);
        if (ds == null) throw new IllegalArgumentException("not a current device selection");
        return new long[] {ds.slots, ds.counts, ds.stride, ds.cur, tidalKeys.ptr, tidalKeys.bytes};
    }

    /** The selection buffers of (cache, layer), allocated on first use (eagerly) and when k grows. */
    private DeviceSelection deviceSelection(KvCache c, int layer, int k) {
        DeviceSelection old = null;
        for (DeviceSelection ds : deviceSelections)
            if (ds.cache == c && ds.layer == layer) {
                if (ds.k == k) return ds;
                old = ds;
            }
        if (mode != Mode.EAGER) throw abort("selection buffer allocation", false);
        if (old != null) {
            synchronize();
            dropGraph();
            deviceSelections.remove(old);
            free(old.slots);
            free(old.counts);
            free(old.cur);
        }
        int hkv = c.kvHeads(), stride = Math.max(1, k);
        long slots = malloc(4L * hkv * stride, "tidal selection slots");
        long counts = malloc(4L * hkv, "tidal selection counts");
        long cur = malloc(4L * hkv, "tidal selection current slot");
        memsetNow(counts, 0, 4L * hkv);
        memsetNow(cur, 0xFF, 4L * hkv); // -1
        DeviceSelection ds = new DeviceSelection(c, layer, k, stride, hkv, slots, counts, cur);
        deviceSelections.add(ds);
        return ds;
    }

    private DeviceSelection findDeviceSelection(SlotSelection s) {
        for (DeviceSelection ds : deviceSelections) if (ds.handle == s) return ds;
        return null;
    }

    /**
     * A {@link #selectTopSlots} queued for its layer's attention (fused selection): the step values (high-water marks |
     * query position | keep position) are staged when it runs, as the selection's own launch would.
     */
    private record PendingSelect(CudaKvCache cache, int layer, long q, int queryPosition, DeviceSelection ds, int[] params,
                                 int len, int k, boolean sum, int heads) {}

    private PendingSelect pendingSelect;

    /**
     * Before an op that may read a selection, the selection's workspace, q or the cache: joins a selection running on
     * the second stream ({@link #setSideSelect}) and runs a queued one.
     */
    private void flushPendingSelect() {
        joinSideSelect();
        flushQueuedSelect();
    }

    /**
     * Runs a queued selection on its own ({@code tp_tidal_select}), before anything that may read it; the ops that
     * write neither a selection nor its workspace nor the KV cache's layer it read (GEMVs, norms, adds, RoPE, the KV
     * store of new rows) call only this, so a selection on the second stream runs beside them.
     */
    private void flushQueuedSelect() {
        PendingSelect p = pendingSelect;
        if (p == null) return;
        pendingSelect = null;
        CudaKvCache c = p.cache;
        long d = stage(p.params, p.params.length);
        sig(41, p.ds.slots);
        if (mode != Mode.DRY)
            check(TpNative.tp_tidal_select(p.ds.slots, p.ds.counts, p.ds.stride, p.ds.cur, tidalKeys.ptr, p.len, p.q, c.keys,
                    c.pos, c.deviceLayer(p.layer), p.heads, c.kvHeads(), c.headDim(), c.capacity(), d, p.k, p.sum ? 1 : 0,
                    stream), "selectTopSlots");
    }

    /** The attention of a queued selection's layer and the selection in one call ({@code tp_decode_attention_select}). */
    private void attentionSelect(CudaTensor o, CudaTensor qt, PendingSelect p) {
        CudaKvCache c = p.cache;
        int hd = c.headDim(), hkv = c.kvHeads(), cap = c.capacity(), heads = p.heads;
        if (qt.cols != heads * hd || o.cols != heads * hd)
            throw new IllegalArgumentException("attention: " + qt + " / " + o + " do not hold " + heads + " q-heads of " + hd);
        flushFrees(c);
        int maxLen = 0;
        for (int g = 0; g < hkv; g++) maxLen = Math.max(maxLen, p.params[g]);
        int lenHint = maxLen <= 1 ? 1 : Integer.highestOneBit(maxLen - 1) << 1;
        boolean fused = fusedMerge(heads, hkv);
        ensureAttnWs(TpNative.tp_decode_attention_workspace_bytes(heads, hd), 0);
        long d = stage(p.params, p.params.length);
        sig(51, o.ptr, qt.ptr, c.keys, c.deviceLayer(p.layer), heads, lenHint, fused ? 1 : 0, shortAttn ? 1 : 0, p.ds.slots,
                p.len, p.k, p.sum ? 1 : 0, sideSelect ? 1 : 0);
        sideJoinPending = sideSelect; // the join before the selection's first reader (flushPendingSelect, attention)
        if (mode == Mode.DRY) return;
        fusedSelectCalls++;
        check(TpNative.tp_decode_attention_select_side(o.ptr, qt.ptr, c.keys, c.values, c.pos, c.deviceLayer(p.layer), heads,
                hkv, hd, cap, lenHint, (float) (1.0 / Math.sqrt(hd)), attnWs, attnWsBytes, fused ? attnCounters : 0,
                shortAttn ? -1 : 0, p.ds.slots, p.ds.counts, p.ds.stride, p.ds.cur, tidalKeys.ptr, p.len, d, p.k, p.sum ? 1 : 0,
                stream, sideSelect ? sideStream : 0, sideSelect ? sideFork : 0, sideSelect ? sideJoin : 0),
                "decode attention + selection");
    }

    /** Host arrays of a device selection: counts, then each KV head's first count[g] slots. */
    private SlotSelection download(DeviceSelection ds) {
        int hkv = ds.kvHeads;
        int[] count = new int[hkv];
        check(TpNative.tp_memcpy_d2h(count, ds.counts, 4L * hkv, stream), "selection download");
        int[] all = new int[hkv * ds.stride];
        check(TpNative.tp_memcpy_d2h(all, ds.slots, 4L * all.length, stream), "selection download");
        int[][] slots = new int[hkv][];
        for (int g = 0; g < hkv; g++) slots[g] = Arrays.copyOfRange(all, g * ds.stride, g * ds.stride + count[g]);
        return new SlotSelection(slots, count);
    }

    /**
     * Attention over a selection made by {@link #selectTopSlots} on this backend: a decode step without statistics
     * reads the slot lists and counts in device memory (no upload); anything else runs the regular path with the
     * host arrays (downloaded when the selection has none). Returns false for any other selection.
     */
    private boolean attentionOnDeviceSelection(Tensor out, Tensor q, KvCache cache, int layer, int[] queryPositions,
                                               int n, SlotSelection select, AttentionStats stats) {
        DeviceSelection ds = select.slots() == null || !deviceSelections.isEmpty() ? findDeviceSelection(select) : null;
        if (ds == null) {
            if (select.slots() == null)
                throw new IllegalArgumentException("attention: a device selection that is no longer current (a later selectTopSlots for the same cache and layer replaced it)");
            return false;
        }
        if (n != 1 || stats != null || ds.cache != cache) {
            SlotSelection host = select.slots() != null ? select : hostSelection(select);
            attention(out, q, cache, layer, queryPositions, n, new SlotSelection(host.slots(), host.count()), stats);
            return true;
        }
        if (ds.cache instanceof CudaQuantKvCache qc) {
            attentionQuantOnDeviceSelection(act(out), act(q), qc, layer, queryPositions[0], ds);
            return true;
        }
        CudaKvCache c = (CudaKvCache) ds.cache;
        CudaTensor o = act(out), qt = act(q);
        int hd = c.headDim(), hkv = c.kvHeads(), cap = c.capacity();
        int heads = qt.cols / hd;
        if (heads % hkv != 0) throw new IllegalArgumentException("attention: " + heads + " q-heads for " + hkv + " KV heads");
        flushFrees(c);
        // staged ints: qpos[1] | highWater[hkv]
        int[] a = new int[1 + hkv];
        a[0] = queryPositions[0];
        for (int g = 0; g < hkv; g++) a[1 + g] = c.highWater(layer, g);
        long d = stage(a, a.length);
        int lenHint = ds.k <= 1 ? 1 : Integer.highestOneBit(ds.k - 1) << 1;
        float scale = (float) (1.0 / Math.sqrt(hd));
        boolean fused = fusedMerge(heads, hkv);
        ensureAttnWs(TpNative.tp_decode_attention_workspace_bytes(heads, hd), 0);
        sig(41, o.ptr, qt.ptr, c.keys, c.deviceLayer(layer), heads, ds.slots, ds.stride, lenHint, fused ? 1 : 0, shortAttn ? 1 : 0);
        if (mode == Mode.DRY) return true;
        check(TpNative.tp_decode_attention_ex2(o.ptr, qt.ptr, c.keys, c.values, c.pos, c.deviceLayer(layer), heads, hkv, hd, cap,
                d, ds.slots, ds.stride, ds.counts, d + 4, lenHint, scale, 0, 0, attnWs, attnWsBytes,
                fused ? attnCounters : 0, shortAttn ? -1 : 0, stream), "decode attention (device selection)");
        return true;
    }

    // ---- ops for KV compression policies (policy_ops.cu) ----------------------------------------------------------
    // Host-side policy logic consumes their results, so they run eagerly: inside a decode step they abort the
    // graph capture (the backend then stays eager, as for attention statistics). Positions are read from the
    // device copy, so queued frees are flushed first. Keys are the bf16 cache contents.

    @Override
    public void queryKeyScores(float[][] out, Tensor q, int row, int queryPosition, KvCache cache, int layer) {
        flushPendingSelect(); // a queued selection reads q and the cache as they are now
        requireEager("queryKeyScores");
        CudaQuantKvCache qc = quantPolicyCache(cache, "queryKeyScores");
        KvCache c = qc != null ? qc : cudaCache(cache, "queryKeyScores");
        CudaTensor qt = act(q);
        int hd = c.headDim(), hkv = c.kvHeads(), cap = c.capacity();
        int heads = qt.cols / hd;
        checkPolicyArgs("queryKeyScores", c, layer, qt, row, heads, out);
        int[] hw = new int[hkv];
        int maxHw = 0;
        for (int g = 0; g < hkv; g++) maxHw = Math.max(maxHw, hw[g] = c.highWater(layer, g));
        if (qc != null) flushQuantFrees(qc);
        else flushFrees((CudaKvCache) c);
        if (maxHw > 0) {
            long dhw = stage(hw, hkv);
            long buf = policyScratch(4L * heads * maxHw);
            if (qc != null)
                check(TpNative.tp_kvq_query_key_scores(buf, maxHw, qt.row(row), qc.pool, qc.winK, qc.pos, qc.loc, layer,
                        heads, hkv, hd, cap, qc.group, qc.bits, qc.resCap, qc.maxBlocks, queryPosition, dhw, maxHw, stream),
                        "queryKeyScores (quantized KV)");
            else
                check(TpNative.tp_query_key_scores(buf, maxHw, qt.row(row), ((CudaKvCache) c).keys, ((CudaKvCache) c).pos,
                        ((CudaKvCache) c).deviceLayer(layer), heads, hkv, hd, cap, queryPosition, dhw, maxHw, stream), "queryKeyScores");
            if (pinnedStats) {
                java.nio.FloatBuffer host = pinnedDownload(buf, (long) heads * maxHw, "queryKeyScores download");
                for (int h = 0; h < heads; h++) host.get(h * maxHw, out[h], 0, Math.min(maxHw, out[h].length));
            } else {
                float[] host = policyHost(heads * maxHw);
                check(TpNative.tp_memcpy_d2h(host, buf, 4L * heads * maxHw, stream), "queryKeyScores download");
                for (int h = 0; h < heads; h++) System.arraycopy(host, h * maxHw, out[h], 0, Math.min(maxHw, out[h].length));
            }
        }
        // entries in [hw_g, maxHw) are -inf from the kernel; the rest up to the capacity here (as the CPU op)
        for (int h = 0; h < heads; h++)
            if (out[h].length > maxHw) Arrays.fill(out[h], maxHw, Math.min(out[h].length, cap), Float.NEGATIVE_INFINITY);
    }

    @Override
    public void questPageScores(float[][] out, Tensor q, int row, int queryPosition, KvCache cache, int layer, int pageSize) {
        flushPendingSelect(); // a queued selection reads q and the cache as they are now
        requireEager("questPageScores");
        if (pageSize < 1) throw new IllegalArgumentException("questPageScores: page size must be >= 1, got " + pageSize);
        CudaQuantKvCache qc = quantPolicyCache(cache, "questPageScores");
        KvCache c = qc != null ? qc : cudaCache(cache, "questPageScores");
        CudaTensor qt = act(q);
        int hd = c.headDim(), hkv = c.kvHeads(), cap = c.capacity();
        int heads = qt.cols / hd;
        checkPolicyArgs("questPageScores", c, layer, qt, row, heads, out);
        int group = heads / hkv;
        int[] hw = new int[hkv], pages = new int[hkv];
        int maxPages = 0;
        for (int g = 0; g < hkv; g++) {
            hw[g] = c.highWater(layer, g);
            pages[g] = (int) ((hw[g] + (long) pageSize - 1) / pageSize);
            maxPages = Math.max(maxPages, pages[g]);
        }
        if (maxPages == 0) return;
        if (qc != null) flushQuantFrees(qc);
        else flushFrees((CudaKvCache) c);
        long dhw = stage(hw, hkv);
        long buf = policyScratch(4L * heads * maxPages);
        if (qc != null)
            check(TpNative.tp_kvq_quest_page_scores(buf, maxPages, qt.row(row), qc.pool, qc.winK, qc.pos, qc.loc, layer,
                    heads, hkv, hd, cap, qc.group, qc.bits, qc.resCap, qc.maxBlocks, queryPosition, dhw, pageSize,
                    maxPages, stream), "questPageScores (quantized KV)");
        else
            check(TpNative.tp_quest_page_scores(buf, maxPages, qt.row(row), ((CudaKvCache) c).keys, ((CudaKvCache) c).pos,
                    ((CudaKvCache) c).deviceLayer(layer), heads, hkv, hd, cap, queryPosition, dhw, pageSize, maxPages, stream), "questPageScores");
        // the CPU op writes the pages below ceil(highWater / pageSize) of each head's KV head and nothing else
        if (pinnedStats) {
            java.nio.FloatBuffer host = pinnedDownload(buf, (long) heads * maxPages, "questPageScores download");
            for (int h = 0; h < heads; h++) host.get(h * maxPages, out[h], 0, pages[h / group]);
        } else {
            float[] host = policyHost(heads * maxPages);
            check(TpNative.tp_memcpy_d2h(host, buf, 4L * heads * maxPages, stream), "questPageScores download");
            for (int h = 0; h < heads; h++) System.arraycopy(host, h * maxPages, out[h], 0, pages[h / group]);
        }
    }

    /** Copies one slot's key and value to the host (the bf16 contents, exactly). */
    @Override
    public void readKv(KvCache cache, int layer, int head, int slot, float[] key, float[] value) {
        flushPendingSelect(); // a queued selection reads q and the cache as they are now
        requireEager("readKv");
        CudaQuantKvCache qc = quantPolicyCache(cache, "readKv");
        if (qc != null) {  // the stored reconstruction (the CPU cache's float formulas, bit for bit)
            checkSlot("readKv", qc, layer, head, slot, key, value);
            CudaQuantKvCache.Stored st = qc.readStored(layer, head, slot);
            System.arraycopy(st.key(), 0, key, 0, qc.headDim());
            System.arraycopy(st.value(), 0, value, 0, qc.headDim());
            return;
        }
        CudaKvCache c = cudaCache(cache, "readKv");
        int hd = c.headDim();
        checkSlot("readKv", c, layer, head, slot, key, value);
        long buf = policyScratch(8L * hd);
        check(TpNative.tp_kv_read_slot(buf, c.keys, c.values, c.deviceLayer(layer), head, c.kvHeads(), hd, c.capacity(), slot, stream), "readKv");
        float[] host = policyHost(2 * hd);
        check(TpNative.tp_memcpy_d2h(host, buf, 8L * hd, stream), "readKv download");
        System.arraycopy(host, 0, key, 0, hd);
        System.arraycopy(host, hd, value, 0, hd);
    }

    /**
     * A bf16 cache's keys and values of (layer, head) below the high-water mark: two device-to-host copies of the bf16
     * rows, widened on the host (no kernel); other caches slot by slot ({@link #readKv}).
     */
    @Override
    public void readKvRange(KvCache cache, int layer, int head, int from, int to, float[] keys, float[] values) {
        flushPendingSelect(); // a queued selection reads q and the cache as they are now
        if (!(cache instanceof CudaKvCache c) || from >= to) {
            Backend.super.readKvRange(cache, layer, head, from, to, keys, values);
            return;
        }
        requireEager("readKvRange");
        int hd = c.headDim(), n = (to - from) * hd;
        short[] buf = new short[n];
        check(TpNative.tp_memcpy_d2h(buf, c.keysAddress(layer, head) + 2L * from * hd, 2L * n, stream), "readKvRange keys");
        for (int i = 0; i < n; i++) keys[i] = Float.intBitsToFloat((buf[i] & 0xFFFF) << 16);
        if (values == null) return;
        check(TpNative.tp_memcpy_d2h(buf, c.valuesAddress(layer, head) + 2L * from * hd, 2L * n, stream), "readKvRange values");
        for (int i = 0; i < n; i++) values[i] = Float.intBitsToFloat((buf[i] & 0xFFFF) << 16);
    }

    @Override
    public void readKvHead(KvCache cache, int layer, int head, float[] keys, float[] values) {
        flushPendingSelect(); // a queued selection reads q and the cache as they are now
        if (!(cache instanceof CudaKvCache c)) {
            Backend.super.readKvHead(cache, layer, head, keys, values);
            return;
        }
        requireEager("readKvHead");
        int n = c.highWater(layer, head) * c.headDim();
        if (n == 0) return;
        short[] buf = new short[n];
        check(TpNative.tp_memcpy_d2h(buf, c.keysAddress(layer, head), 2L * n, stream), "readKvHead keys");
        for (int i = 0; i < n; i++) keys[i] = Float.intBitsToFloat((buf[i] & 0xFFFF) << 16);
        check(TpNative.tp_memcpy_d2h(buf, c.valuesAddress(layer, head), 2L * n, stream), "readKvHead values");
        for (int i = 0; i < n; i++) values[i] = Float.intBitsToFloat((buf[i] & 0xFFFF) << 16);
    }

    /**
     * Copies a bf16 cache into another of the same shape: keys, values and device positions as three device copies in
     * stream order (the source's queued frees applied first, the destination's dropped), the host bookkeeping alongside.
     */
    @Override
    public void copyKvCache(KvCache src, KvCache dst) {
        flushPendingSelect(); // a queued selection reads q and the cache as they are now
        requireEager("copyKvCache");
        if (!(src instanceof CudaKvCache s) || !(dst instanceof CudaKvCache d) || !s.sameShape(d))
            throw new UnsupportedOpException("copyKvCache needs two unquantized CUDA caches of one shape");
        flushFrees(s);
        d.takePending();
        if (s.poolSize == 1 && d.poolSize == 1) {
            copyAsync(d.keys, s.keys, s.kvBytes);
            copyAsync(d.values, s.values, s.kvBytes);
            copyAsync(d.pos, s.pos, s.posBytes);
        } else { // a pooled cache's layers lie apart: one copy per layer and array
            int hd = s.headDim();
            long layerSlots = (long) s.kvHeads() * s.capacity();
            for (int l = 0; l < s.layers(); l++) {
                long so = s.slotBase(l, 0), dof = d.slotBase(l, 0);
                copyAsync(d.keys + 2L * hd * dof, s.keys + 2L * hd * so, 2L * hd * layerSlots);
                copyAsync(d.values + 2L * hd * dof, s.values + 2L * hd * so, 2L * hd * layerSlots);
                copyAsync(d.pos + 4L * dof, s.pos + 4L * so, 4L * layerSlots);
            }
        }
        d.copyFrom(s);
    }

    /**
     * Writes one slot's key and value, rounded to bf16 (nearest even) like every cached key/value on this backend
     * (the CPU cache keeps f32: a {@link #readKv} after this returns the rounded values), and sets the slot's
     * device position to the host bookkeeping's position (the slot may just have been allocated).
     */
    @Override
    public void writeKv(KvCache cache, int layer, int head, int slot, float[] key, float[] value) {
        flushPendingSelect(); // a queued selection reads q and the cache as they are now
        requireEager("writeKv");
        CudaQuantKvCache qc = quantPolicyCache(cache, "writeKv");
        if (qc != null) {
            writeKvQuant(qc, layer, head, slot, key, value);
            return;
        }
        CudaKvCache c = cudaCache(cache, "writeKv");
        int hd = c.headDim();
        checkSlot("writeKv", c, layer, head, slot, key, value);
        flushFrees(c); // a queued free of this slot must not land after the write
        int[] bits = new int[2 * hd];
        for (int i = 0; i < hd; i++) {
            bits[i] = Float.floatToRawIntBits(key[i]);
            bits[hd + i] = Float.floatToRawIntBits(value[i]);
        }
        long src = stage(bits, bits.length);
        check(TpNative.tp_kv_write_slot(c.keys, c.values, c.pos, src, c.deviceLayer(layer), head, c.kvHeads(), hd, c.capacity(), slot,
                c.position(layer, head, slot), stream), "writeKv");
    }

    /**
     * writeKv into a quantized cache, as the CPU cache stores a token (QuantKvCache.store): the slot's old location is
     * released and the f32 key/value enter the residual window, which may flush (and compact) as an append would.
     * The key and value are staged as row 0 of a [1, Hkv·hd] tensor in head {@code head}'s columns.
     */
    private void writeKvQuant(CudaQuantKvCache c, int layer, int head, int slot, float[] key, float[] value) {
        int hd = c.headDim(), hkv = c.kvHeads();
        checkSlot("writeKv", c, layer, head, slot, key, value);
        flushQuantFrees(c);  // a queued free of this slot must not land after the write
        c.forgetAppend(layer);
        int[][] slots = new int[hkv][];
        int[] counts = new int[hkv];
        for (int g = 0; g < hkv; g++) slots[g] = new int[0];
        slots[head] = new int[] {slot};
        counts[head] = 1;
        CudaQuantKvCache.Plan p = c.plan(layer, slots, counts);
        int[] bits = new int[2 * hkv * hd];  // keys row | values row
        for (int i = 0; i < hd; i++) {
            bits[head * hd + i] = Float.floatToRawIntBits(key[i]);
            bits[hkv * hd + head * hd + i] = Float.floatToRawIntBits(value[i]);
        }
        long src = stage(bits, bits.length);
        runQuantPlan(c, layer, p, src, src + 4L * hkv * hd, hkv * hd);
    }

    /** The quantized cache when {@code cache} is one (and its policy ops are on: else unsupported), else null. */
    private static CudaQuantKvCache quantPolicyCache(KvCache cache, String op) {
        if (!(cache instanceof CudaQuantKvCache qc)) return null;
        requireQuantPolicyOps(op);
        return qc;
    }

    private static CudaKvCache cudaCache(KvCache cache, String op) {
        if (cache instanceof CudaKvCache c) return c;
        if (cache instanceof CudaQuantKvCache)
            throw new UnsupportedOpException(op + " is not supported by the CUDA backend on a quantized KV cache (needed by this --kv policy): use --device cpu");
        throw new IllegalArgumentException(op + ": expected a CUDA KV cache, got " + (cache == null ? "null" : cache.getClass().getSimpleName()));
    }

    /** The bf16 CUDA cache of a device selection op that exists only for one ({@code hostCopy}: eager steps only). */
    private CudaKvCache bf16Selection(String op, KvCache cache, boolean hostCopy) {
        if (cache == null || cache.getClass() != CudaKvCache.class)
            throw new UnsupportedOpException(op + ": no CUDA op for a " + (cache == null ? "null" : cache.getClass().getSimpleName()) + " cache");
        if (hostCopy) requireEager(op + " with a host copy");
        return (CudaKvCache) cache;
    }

    /** The q-heads of a selection op's query tensor, after checking it, the layer and the row against the cache. */
    private static int selectionHeads(String op, KvCache c, int layer, CudaTensor qt, int row) {
        int hd = c.headDim(), hkv = c.kvHeads();
        checkHeadDim(hd);
        int heads = qt.cols / hd;
        if (layer < 0 || layer >= c.layers()) throw new IllegalArgumentException(op + ": layer " + layer + " outside [0, " + c.layers() + ")");
        if (row < 0 || row >= qt.rows) throw new IllegalArgumentException(op + ": row " + row + " outside " + qt);
        if (heads <= 0 || heads % hkv != 0 || (long) heads * hd != qt.cols)
            throw new IllegalArgumentException(op + ": " + qt + " does not hold q-heads of " + hd + " for " + hkv + " KV heads");
        return heads;
    }

    private static void checkPolicyArgs(String op, KvCache c, int layer, CudaTensor q, int row, int heads, float[][] out) {
        if (layer < 0 || layer >= c.layers()) throw new IllegalArgumentException(op + ": layer " + layer + " outside [0, " + c.layers() + ")");
        if (row < 0 || row >= q.rows) throw new IllegalArgumentException(op + ": row " + row + " outside " + q);
        if (heads <= 0 || heads % c.kvHeads() != 0 || (long) heads * c.headDim() > q.cols)
            throw new IllegalArgumentException(op + ": " + q + " does not hold q-heads of " + c.headDim() + " for " + c.kvHeads() + " KV heads");
        if (out.length < heads) throw new IllegalArgumentException(op + ": out has " + out.length + " rows for " + heads + " q-heads");
    }

    private static void checkSlot(String op, KvCache c, int layer, int head, int slot, float[] key, float[] value) {
        if (layer < 0 || layer >= c.layers()) throw new IllegalArgumentException(op + ": layer " + layer + " outside [0, " + c.layers() + ")");
        if (head < 0 || head >= c.kvHeads()) throw new IllegalArgumentException(op + ": KV head " + head + " outside [0, " + c.kvHeads() + ")");
        if (slot < 0 || slot >= c.capacity()) throw new IllegalArgumentException(op + ": slot " + slot + " outside [0, " + c.capacity() + ")");
        if (key.length < c.headDim() || value.length < c.headDim())
            throw new IllegalArgumentException(op + ": key/value arrays shorter than the head dim " + c.headDim());
    }

    /** Device scratch of the policy ops (scores, one slot), grown on demand. */
    private long policyScratch(long bytes) {
        if (bytes > policyBufBytes) {
            free(policyBuf);
            policyBuf = 0;
            policyBufBytes = 0;
            long sz = Math.max(bytes, 64L << 10);
            policyBuf = malloc(sz, "KV-policy scratch");
            policyBufBytes = sz;
        }
        return policyBuf;
    }

    private float[] policyHost(int floats) {
        if (policyHostBuf.length < floats) policyHostBuf = new float[Math.max(floats, 2 * policyHostBuf.length)];
        return policyHostBuf;
    }

    @Override
    public int argmax(Tensor x, int row) {
        flushPendingSelect(); // a queued selection reads q and the cache as they are now
        requireEager("argmax");
        CudaTensor t = act(x);
        ensureSelWs(t.cols, 1);
        check(TpNative.tp_argmax(t.row(row), t.cols, selOut, selOut + 4096, selWs, selWsBytes, stream), "argmax");
        int[] idx = new int[1];
        check(TpNative.tp_memcpy_d2h(idx, selOut, 4, stream), "argmax download");
        return idx[0];
    }

    /** One argmax launch per row into consecutive output words, then one download of all of them. */
    @Override
    public int[] argmaxRows(Tensor x, int rows) {
        flushPendingSelect(); // a queued selection reads q and the cache as they are now
        requireEager("argmaxRows");
        CudaTensor t = act(x);
        if (rows < 0 || rows > t.rows) throw new IllegalArgumentException("argmaxRows: " + rows + " rows of " + t);
        int[] idx = new int[rows];
        for (int r0 = 0; r0 < rows; r0 += 1024) { // the output buffer holds 1024 indices
            int m = Math.min(1024, rows - r0);
            ensureSelWs(t.cols, 1);
            for (int r = 0; r < m; r++)
                check(TpNative.tp_argmax(t.row(r0 + r), t.cols, selOut + 4L * r, selOut + 4096 + 4L * r, selWs, selWsBytes, stream), "argmax");
            int[] part = new int[m];
            check(TpNative.tp_memcpy_d2h(part, selOut, 4L * m, stream), "argmax download");
            System.arraycopy(part, 0, idx, r0, m);
        }
        return idx;
    }

    @Override
    public Tensor rowView(Tensor t, int row) {
        CudaTensor c = act(t);
        if (row < 0 || row >= c.rows) throw new IllegalArgumentException("rowView: row " + row + " of " + c);
        return new CudaTensor(1, c.cols, false, c.row(row), (long) c.cols * 4, c.name + "[" + row + "]");
    }

    @Override
    public boolean tokenFeedback() {
        return true;
    }

    @Override
    public void setFeedbackToken(int token) {
        flushPendingSelect(); // a queued selection reads q and the cache as they are now
        requireEager("setFeedbackToken");
        long d = stage(new int[] {token}, 1);
        check(TpNative.tp_memcpy_async(feedbackDev, d, 4, stream), "feedback token");
    }

    @Override
    public void argmaxToFeedback(Tensor x, int row, int slot) {
        flushPendingSelect(); // a queued selection reads q and the cache as they are now
        requireEager("argmaxToFeedback");
        if (slot != 0 && slot != 1) throw new IllegalArgumentException("feedback ticket " + slot + " (0 or 1)");
        CudaTensor t = act(x);
        ensureSelWs(t.cols, 1);
        check(TpNative.tp_argmax(t.row(row), t.cols, feedbackDev, feedbackDev + 8, selWs, selWsBytes, stream), "argmax");
        check(TpNative.tp_memcpy_async(feedbackHost + 4L * slot, feedbackDev, 4, stream), "feedback copy");
        check(TpNative.tp_event_record(feedbackEvents[slot], stream), "event record");
    }

    @Override
    public int feedbackToken(int slot) {
        flushPendingSelect(); // a queued selection reads q and the cache as they are now
        if (slot != 0 && slot != 1) throw new IllegalArgumentException("feedback ticket " + slot + " (0 or 1)");
        check(TpNative.tp_event_synchronize(feedbackEvents[slot]), "feedback token");
        return feedbackTickets.get(slot);
    }

    @Override
    public void embeddingFromFeedback(Tensor out, Tensor table) {
        flushPendingSelect(); // a queued selection reads q and the cache as they are now
        CudaTensor o = act(out), t = (CudaTensor) table;
        if (!t.bf16 && !t.q8) throw new IllegalArgumentException("embedding: table must be a 2-D weight, got " + t);
        sig(42, o.ptr, t.ptr, 1);
        if (mode == Mode.DRY) return;
        if (t.q8) check(TpNative.tp_embedding_q8(o.ptr, t.ptr, t.scales, feedbackDev, 1, t.cols, t.rows, stream), "embedding (q8_0)");
        else check(TpNative.tp_embedding(o.ptr, t.ptr, feedbackDev, 1, t.cols, t.rows, stream), "embedding");
    }

    @Override
    public int[] topK(Tensor x, int row, int k, float[] valuesOut) {
        flushPendingSelect(); // a queued selection reads q and the cache as they are now
        requireEager("topK");
        CudaTensor t = act(x);
        k = Math.min(k, t.cols);
        if (k <= 0) return new int[0];
        if (k > 1024) return hostTopK(download(t, row, 1), k, valuesOut);
        return topKRows(x, new int[] {row}, new int[] {k}, valuesOut == null ? null : new float[][] {valuesOut})[0];
    }

    /**
     * {@code tp_lse_rows} over the rows (one block per row: max, then the sum of exponentials in f32), then one
     * download of the log-sum-exps and target logits: 8 bytes per row instead of the row.
     */
    @Override
    public void logSumExpRows(Tensor x, int rows, int[] targets, double[] lseOut, double[] targetOut) {
        flushPendingSelect(); // a queued selection reads q and the cache as they are now
        requireEager("logSumExpRows");
        CudaTensor t = act(x);
        if (rows < 0 || rows > t.rows || targets.length < rows)
            throw new IllegalArgumentException("logSumExpRows: " + rows + " rows of " + t + ", " + targets.length + " targets");
        if (rows == 0) return;
        long need = 12L * rows;
        if (need > lseRowsBytes) {
            free(lseRows); // no captured graph uses this buffer: they stay
            lseRows = 0;
            lseRowsBytes = 0;
            lseRows = malloc(need, "log-sum-exp rows (" + rows + ")");
            lseRowsBytes = need;
        }
        check(TpNative.tp_memcpy_h2d(lseRows, targets, 4L * rows, stream), "targets upload");
        long lse = lseRows + 4L * rows, tgt = lseRows + 8L * rows;
        check(TpNative.tp_lse_rows(lse, tgt, t.ptr, lseRows, rows, t.cols, stream), "tp_lse_rows");
        float[] back = new float[2 * rows];
        check(TpNative.tp_memcpy_d2h(back, lse, 8L * rows, stream), "log-sum-exp download");
        for (int r = 0; r < rows; r++) {
            lseOut[r] = back[r];
            targetOut[r] = back[rows + r];
        }
    }

    /**
     * One top-k launch per row into consecutive places of the output buffer (1024 ids, then 1024 values) and one
     * download per group of rows whose k add up to at most 1024 (25 rows of llama.cpp's k = 40 per copy); a row with
     * k > 1024 goes through {@link #topK}.
     */
    @Override
    public int[][] topKRows(Tensor x, int[] rows, int[] k, float[][] valuesOut) {
        flushPendingSelect(); // a queued selection reads q and the cache as they are now
        requireEager("topKRows");
        CudaTensor t = act(x);
        int n = rows.length;
        if (k.length != n || (valuesOut != null && valuesOut.length != n))
            throw new IllegalArgumentException("topKRows: " + n + " rows, " + k.length + " k, " + (valuesOut == null ? 0 : valuesOut.length) + " value arrays");
        int[][] out = new int[n][];
        int i = 0;
        while (i < n) {
            int j = i, total = 0, maxK = 1;
            for (; j < n; j++) {
                int kk = Math.min(k[j], t.cols);
                if (kk > 1024) break;
                if (total + Math.max(kk, 0) > 1024) break;
                total += Math.max(kk, 0);
                maxK = Math.max(maxK, kk);
            }
            if (j == i) { // a single row of more than 1024: the host sort
                out[i] = topK(x, rows[i], k[i], valuesOut == null ? null : valuesOut[i]);
                i++;
                continue;
            }
            ensureSelWs(t.cols, maxK);
            for (int r = i, off = 0; r < j; r++) {
                int kk = Math.min(k[r], t.cols);
                if (kk <= 0) continue;
                if (rows[r] < 0 || rows[r] >= t.rows) throw new IllegalArgumentException("topKRows: row " + rows[r] + " of " + t);
                check(TpNative.tp_topk(t.row(rows[r]), t.cols, kk, selOut + 4L * off, selOut + 4096 + 4L * off, selWs, selWsBytes, stream), "topK");
                off += kk;
            }
            if (total > 0) {
                byte[] raw = new byte[4096 + 4 * total];
                check(TpNative.tp_memcpy_d2h(raw, selOut, raw.length, stream), "topK download");
                java.nio.ByteBuffer bb = java.nio.ByteBuffer.wrap(raw).order(java.nio.ByteOrder.LITTLE_ENDIAN);
                for (int r = i, off = 0; r < j; r++) {
                    int kk = Math.min(k[r], t.cols);
                    if (kk <= 0) continue;
                    out[r] = new int[kk];
                    for (int e = 0; e < kk; e++) {
                        out[r][e] = bb.getInt(4 * (off + e));
                        if (valuesOut != null) valuesOut[r][e] = bb.getFloat(4096 + 4 * (off + e));
                    }
                    off += kk;
                }
            }
            i = j;
        }
        return out;
    }

    private static int[] hostTopK(float[] d, int k, float[] valuesOut) {
        Integer[] idx = new Integer[d.length];
        for (int i = 0; i < d.length; i++) idx[i] = i;
        Arrays.sort(idx, (a, b) -> d[a] > d[b] ? -1 : d[a] < d[b] ? 1 : Integer.compare(a, b));
        int[] res = new int[k];
        for (int i = 0; i < k; i++) {
            res[i] = idx[i];
            if (valuesOut != null) valuesOut[i] = d[idx[i]];
        }
        return res;
    }

    private void ensureSelWs(int count, int k) {
        long need = TpNative.tp_topk_workspace_bytes(count, k);
        if (need > selWsBytes) {
            if (mode != Mode.EAGER) throw abort("top-k workspace growth", false);
            freeScratch(selWs);
            selWs = 0;
            selWsBytes = 0;
            selWs = malloc(need, "top-k workspace");
            selWsBytes = need;
        }
    }

    @Override
    public void synchronize() {
        if (mode == Mode.EAGER) flushPendingSelect();
        check(TpNative.tp_stream_synchronize(stream), "synchronize");
    }

    /** The host's common fork-join pool (the GPU leaves the host's cores to the policies). */
    @Override
    public void hostParallel(int n, java.util.function.IntConsumer body) {
        if (n <= 1) {
            if (n == 1) body.accept(0);
            return;
        }
        java.util.stream.IntStream.range(0, n).parallel().forEach(body);
    }

    // ---- decode steps as CUDA graphs ----------------------------------------------------------------------------

    /**
     * A batched decode step: with batch graphs on ({@link #setBatchGraphs}; on by default,
     * {@code -Dtokenpress.cuda.batchGraphs=false} turns them off) captured and replayed like a single sequence's step — the signature
     * holds every row's cache and the row count, so a batch whose sequences change is captured again — else launched
     * eagerly.
     */
    @Override
    public void runBatchStep(int rows, Runnable body) {
        // Q8_0 weights: more rows than the GEMV takes go through an eager dequantize + cuBLAS path (not capturable)
        if (batchGraphs && (rows <= GEMV_MAX_ROWS || weightType != dev.tokenpress.backend.WeightType.Q8_0)) runDecodeStep(null, body);
        else body.run();
    }

    /** Captures batched decode steps into CUDA graphs too ({@link #runBatchStep}). */
    public void setBatchGraphs(boolean on) {
        batchGraphs = on;
    }

    public boolean batchGraphs() {
        return batchGraphs;
    }

    @Override
    public void runDecodeStep(DecodeStep step, Runnable stepBody) {
        if (mode != Mode.EAGER) throw new IllegalStateException("runDecodeStep inside a decode step");
        flushPendingSelect(); // one queued before the step runs now, not inside the step's dry run or capture
        Runnable body = () -> { // a selection still queued at the end of the step runs inside it
            try {
                stepBody.run();
                flushPendingSelect();
            } catch (RuntimeException | Error e) {
                pendingSelect = null; // an aborted dry run or capture: the step runs again from its start
                if (mode == Mode.DRY) sideJoinPending = false; // a dry run forked nothing (a capture joins at its end)
                throw e;
            }
        };
        decodeCalls++;
        if (!graphsEnabled || decodeCalls == 1) { // the first step runs eagerly: lazy module loads, scratch sizing
            eagerSteps++;
            body.run();
            return;
        }
        if (step != null && step.cache() instanceof CudaKvCache c) flushFrees(c);
        for (CudaQuantKvCache qc : quantCaches) flushQuantFrees(qc); // every cache: a batched step has several
        for (CudaKvCache c : caches) flushFrees(c);
        if (graph != 0) {
            nextGraphArena(); // no wait for the replay in flight: it reads the other host arena's copy
            mode = Mode.DRY;
            sig.clear();
            GraphAbort abort = null;
            try {
                body.run();
            } catch (GraphAbort a) {
                abort = a;
            } finally {
                mode = Mode.EAGER;
            }
            long[] now = abort == null ? sig.toArray() : null;
            if (now != null && Arrays.equals(now, graphSig)) {
                copyGraphArena();
                launchGraph();
                return;
            }
            if (now != null && swapInSpare(now)) {
                copyGraphArena();
                launchGraph();
                return;
            }
            if (abort != null) dropGraph();
            else retireGraph();
            if (abort != null) {
                onAbort(abort);
                eagerSteps++;
                body.run();
                return;
            }
        }
        capture(body);
    }

    private void capture(Runnable body) {
        synchronize();
        nextGraphArena();
        sig.clear();
        int rc = TpNative.tp_graph_begin_capture(stream);
        if (rc != TpNative.TP_OK) {
            disableGraphs("cudaStreamBeginCapture failed: " + lastError());
            eagerSteps++;
            body.run();
            return;
        }
        mode = Mode.CAPTURE;
        GraphAbort abort = null;
        RuntimeException failure = null;
        try {
            body.run();
        } catch (GraphAbort a) {
            abort = a;
        } catch (RuntimeException e) {
            failure = e;
        } finally {
            mode = Mode.EAGER;
        }
        long[] ge = {0};
        if (sideJoinPending) { // an aborted capture with a selection forked onto the second stream: joined before its end
            sideJoinPending = false;
            TpNative.tp_stream_wait_event(stream, sideJoin);
        }
        rc = TpNative.tp_graph_end_capture(stream, ge);
        if (abort != null || failure != null || rc != TpNative.TP_OK || ge[0] == 0) {
            if (ge[0] != 0) TpNative.tp_graph_destroy(ge[0]);
            String endMsg = rc != TpNative.TP_OK ? lastError() : null;
            if (abort != null) onAbort(abort);
            else if (failure != null) disableGraphs("an op failed under stream capture: " + failure.getMessage());
            else disableGraphs("graph capture failed: " + endMsg);
            eagerSteps++;
            body.run(); // eager re-run: real errors surface here
            return;
        }
        graph = ge[0];
        graphSig = sig.toArray();
        captures++;
        copyGraphArena();
        launchGraph();
    }

    /** Switches to the other host arena of the graph step values, once its last copy to the device is done. */
    private void nextGraphArena() {
        graphArenaIdx ^= 1;
        if (graphArenaPending[graphArenaIdx]) {
            check(TpNative.tp_event_synchronize(graphArenaCopied[graphArenaIdx]), "step values copy");
            graphArenaPending[graphArenaIdx] = false;
        }
        graphArena = graphArenas[graphArenaIdx];
        graphArena.reset();
    }

    /** Queues the copy of the current host arena's step values to the device arena (before the graph launch). */
    private void copyGraphArena() {
        long used = graphArena.used();
        if (used == 0) return;
        check(TpNative.tp_memcpy_async(graphArenaDev, graphArena.host, used, stream), "step values copy");
        check(TpNative.tp_event_record(graphArenaCopied[graphArenaIdx], stream), "event record");
        graphArenaPending[graphArenaIdx] = true;
    }

    private void launchGraph() {
        check(TpNative.tp_graph_launch(graph, stream), "cudaGraphLaunch");
        check(TpNative.tp_event_record(replayEvent, stream), "event record");
        replayPending = true;
        replays++;
    }

    private void waitReplay() {
        if (replayPending) {
            check(TpNative.tp_event_synchronize(replayEvent), "graph replay");
            replayPending = false;
        }
    }

    private void dropGraph() {
        waitReplay(); // the last replay, of whichever graph, ran after every earlier one
        if (graph != 0) {
            TpNative.tp_graph_destroy(graph);
            graph = 0;
            graphSig = null;
        }
        while (!spares.isEmpty()) TpNative.tp_graph_destroy(spares.poll().exec());
    }

    /** Keeps the current graph as a spare (the oldest spare destroyed beyond SPARE_GRAPHS); no current graph after. */
    private void retireGraph() {
        if (graph == 0) return;
        waitReplay();
        spares.addLast(new SpareGraph(graphSig, graph));
        graph = 0;
        graphSig = null;
        while (spares.size() > SPARE_GRAPHS) TpNative.tp_graph_destroy(spares.pollFirst().exec());
    }

    /** Makes the spare graph captured for signature {@code s} the current one (the current one becomes a spare). */
    private boolean swapInSpare(long[] s) {
        for (java.util.Iterator<SpareGraph> it = spares.iterator(); it.hasNext(); ) {
            SpareGraph sp = it.next();
            if (!Arrays.equals(sp.sig(), s)) continue;
            it.remove();
            if (graph != 0) spares.addLast(new SpareGraph(graphSig, graph));
            graph = sp.exec();
            graphSig = sp.sig();
            return true;
        }
        return false;
    }

    private void onAbort(GraphAbort a) {
        captureFailures++;
        failuresThisConfig++;
        if (a.permanent || failuresThisConfig >= 3) {
            disableGraphs("a decode step uses " + a.getMessage() + ", which cannot be captured");
            graphsOffByStep = true;
        }
    }

    /**
     * A new KV cache starts a new configuration (cache type, and usually a new KV policy): the failed captures of
     * earlier configurations no longer count toward the limit that turns graphs off, and when graphs were turned off
     * only because an earlier configuration's decode step could not be captured, they are tried again.
     */
    /** A cache was cleared for a new sequence (a kept batch lane): a new configuration, as for a new cache. */
    void cacheStartsOver() {
        if (mode == Mode.EAGER) retryGraphs();
    }

    private void retryGraphs() {
        failuresThisConfig = 0;
        if (!graphsOffByStep) return;
        graphsOffByStep = false;
        graphsEnabled = true;
        graphsOffReason = null;
        captureFailures = 0;
    }

    private void disableGraphs(String why) {
        dropGraph();
        graphsEnabled = false;
        graphsOffReason = why;
    }

    private static final class GraphAbort extends RuntimeException {
        final boolean permanent;

        GraphAbort(String what, boolean permanent) {
            super(what, null, false, false);
            this.permanent = permanent;
        }
    }

    private GraphAbort abort(String what, boolean permanent) {
        return new GraphAbort(what, permanent);
    }

    private void requireEager(String op) {
        if (mode != Mode.EAGER) throw abort(op, true);
    }

    // ---- staging ------------------------------------------------------------------------------------------------

    /** Stages a[0..count) for the kernels of the current op; returns the device address of the copy. */
    private long stage(int[] a, int count) {
        int cnt = Math.max(count, 1);
        if (mode == Mode.EAGER) {
            if (!eagerArena.fits(cnt)) {
                synchronize();
                eagerArena.reset();
                if (!eagerArena.fits(cnt)) growEagerArena(4L * cnt);
            }
            long off = eagerArena.put(a, count);
            check(TpNative.tp_memcpy_async(eagerArena.dev + off, eagerArena.host + off, 4L * cnt, stream), "stage");
            return eagerArena.dev + off;
        }
        if (!graphArena.fits(cnt)) throw abort("more step values than the graph staging buffer holds", true);
        long off = graphArena.put(a, count);
        sig.add(-7, off, count);
        return graphArena.dev + off; // copied with the rest of the step's values before the launch (copyGraphArena)
    }

    private void growEagerArena(long bytes) {
        long size = Math.max(bytes * 2, EAGER_ARENA_BYTES);
        synchronize();
        TpNative.tp_free_host(eagerArenaHost);
        free(eagerArenaDev);
        eagerArenaHost = mallocHost(size);
        eagerArenaDev = malloc(size, "staging buffer");
        eagerArena = new StageArena(eagerArenaHost, eagerArenaDev, size);
    }

    private void flushFrees(CudaKvCache c) {
        if (c.pendingCount() == 0) return;
        if (mode != Mode.EAGER) throw abort("KV slot frees inside a decode step", true);
        int[] idx = c.takePending();
        int[] a = new int[2 * idx.length];
        System.arraycopy(idx, 0, a, 0, idx.length);
        Arrays.fill(a, idx.length, a.length, -1);
        long d = stage(a, a.length);
        check(TpNative.tp_scatter_i32(c.pos, d, d + 4L * idx.length, idx.length, stream), "KV free");
    }

    private void sig(long... v) {
        if (mode != Mode.EAGER) sig.add(v);
    }

    // ---- helpers ------------------------------------------------------------------------------------------------

    private static CudaTensor act(Tensor t) {
        if (t instanceof CudaTensor c && !c.bf16 && !c.q8) return c;
        throw new IllegalArgumentException("expected an f32 CUDA activation tensor, got " + t);
    }

    private static void checkHeadDim(int hd) {
        if (hd != 64 && hd != 128)
            throw new UnsupportedOpException("CUDA attention supports head dims 64 and 128, not " + hd + ": use --device cpu");
    }

    static String lastError() {
        return TpNative.tp_last_error_message().getString();
    }

    private void check(int rc, String op) {
        if (rc == TpNative.TP_OK) return;
        String msg = lastError();
        switch (rc) {
            case TpNative.TP_ERR_UNSUPPORTED_HEAD_DIM, TpNative.TP_ERR_UNSUPPORTED ->
                    throw new UnsupportedOpException(op + ": " + msg);
            case TpNative.TP_ERR_OUT_OF_MEMORY -> {
                long[] free = {-1}, total = {-1};
                TpNative.tp_mem_get_info(free, total);
                throw new CudaOutOfMemoryException(op, -1, free[0], total[0]);
            }
            case TpNative.TP_ERR_BAD_ARGUMENT -> throw new IllegalArgumentException(op + ": " + msg);
            default -> throw new CudaException(op + ": " + msg, rc);
        }
    }

    @Override
    public void close() {
        if (closed) return;
        pendingSelect = null;
        sideJoinPending = false;
        if (sideStream != 0) TpNative.tp_stream_synchronize(sideStream); // before anything it may use is freed
        TpNative.tp_stream_synchronize(stream);
        dropGraph();
        closed = true;
        for (long p : new ArrayList<>(allocations)) TpNative.tp_free(p);
        allocations.clear();
        caches.clear();
        TpNative.tp_free_host(eagerArenaHost);
        for (int i = 0; i < 2; i++) {
            TpNative.tp_free_host(graphArenaHosts[i]);
            TpNative.tp_event_destroy(graphArenaCopied[i]);
            TpNative.tp_event_destroy(feedbackEvents[i]);
        }
        TpNative.tp_free_host(feedbackHost);
        if (statsHost != 0) TpNative.tp_free_host(statsHost);
        TpNative.tp_event_destroy(replayEvent);
        if (sideStream != 0) {
            TpNative.tp_event_destroy(sideFork);
            TpNative.tp_event_destroy(sideJoin);
            TpNative.tp_stream_destroy(sideStream);
        }
        cublasDestroy_v2(cublas);
        TpNative.tp_stream_destroy(stream);
        one.close();
        zero.close();
    }

    /** A growable list of longs (the op signature of a captured step). */
    private static final class LongList {
        private long[] a = new long[1024];
        private int n;

        void add(long... v) {
            if (n + v.length > a.length) a = Arrays.copyOf(a, Math.max(a.length * 2, n + v.length));
            System.arraycopy(v, 0, a, n, v.length);
            n += v.length;
        }

        void clear() {
            n = 0;
        }

        long[] toArray() {
            return Arrays.copyOf(a, n);
        }
    }
}
