package dev.tokenpress.eval;

import dev.tokenpress.backend.Backend;
import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.cuda.CudaBackend;
import dev.tokenpress.backend.cuda.CudaCce;
import dev.tokenpress.backend.cuda.CudaKernelBench;
import dev.tokenpress.io.ConfigLoader;
import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import dev.tokenpress.model.Weights;

import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Locale;
import java.util.SplittableRandom;

/**
 * GPU benchmarks (CUDA events / wall clock on the device's stream):
 * <ul>
 *   <li>{@code attention}: decode attention at 1K/8K/32K/128K context for the Llama-3.2-1B shape (32 q-heads, 8 KV
 *       heads, hd 64): achieved GB/s of KV read and its share of the device-to-device copy bandwidth measured in
 *       the same run.</li>
 *   <li>{@code e2e DIR}: decode tokens/s of the {@code llama-1b-shape} model in DIR (generated there when absent)
 *       at short context and at 32K context (the 32K of context is written into the KV cache directly, synthetic
 *       keys/values, so no 32K prefill is timed), with the bandwidth roofline (weight + KV bytes per token ÷
 *       measured copy bandwidth) beside it; the default kernel paths with Programmatic Dependent Launch
 *       on where the device supports it (keys e2e_*) and off (e2e_*_nopdl), and the earlier paths; continuous
 *       batching of 4/16/64 sequences and Q8_0 weights at short context. {@code e2e DIR SHORT LONG PARTS} sets the
 *       decode steps and picks the parts (comma-separated, default {@code short,batch,long,q8}).</li>
 *   <li>{@code gemv}: the decode GEMV at the llama-1b shapes with the automatic and each forced warps per row
 *       (µs, GB/s, % of copy bandwidth), for tuning.</li>
 *   <li>{@code e2epol <model-dir> [contexts [weights]]}: the end-to-end part of {@code policies}, also at 8K, plus every other policy
 *       (window, h2o, a2sf, keyformer, quest, tokenselect, razor) with tokens/s and KV bytes.</li>
 *   <li>{@code e2epol-cpu <model-dir> [contexts [warmup [steps [f32|bf16 [spec;spec...]]]]]}: the same policy table on the CPU backend (no GPU needed), for a
 *       {@code llama-1b-attention} model: what the policies' host-side work costs beside the attention.</li>
 *   <li>{@code attn-cpu [head-dim [f32|bf16 [context [k]]]]}: decode attention on the CPU backend (Llama-3.2-1B's
 *       attention shape: 32 q-heads, 8 KV heads; default head dim 64, f32, 8,192 tokens, k = 2,048) over every slot,
 *       over k scattered slots (TidalDecode's pattern) and over k slots in pages of 16 (Quest's), 16 layers' caches
 *       visited in turn so that none stays in the last-level cache: µs per layer, best of 5 passes.</li>
 *   <li>{@code attnsweep}: decode attention (full and tidal k=2048) at 8K/32K/128K with each forced split count,
 *       timed in a CUDA graph and eagerly, for tuning.</li>
 *   <li>{@code policies [model-dir]}: TidalDecode on the device for the llama-1b attention shape at 8K/32K/128K:
 *       decode attention over everything vs over a device-resident selection of k=2048 slots per KV head, the
 *       selection op (group scores + top-k) alone and with the sparse attention, KV bytes per layer as
 *       {@code cache.bytes()} reports them (tidal evicts nothing: the same as full); with a model dir, decode
 *       tokens/s of the llama-1b-shape model with {@code full} vs {@code tidal:k=2048} at 32K and 128K.</li>
 *   <li>{@code cce [N D V]}: Cut-Cross-Entropy log-sum-exp ({@code tp_cce_lse}, default N=8192, D=2048,
 *       V=128256, bf16 LM head) against cuBLAS f32 logits [N, V] plus a naive log-softmax kernel: time and device
 *       memory of both paths.</li>
 * </ul>
 * Every number is printed as a {@code RESULT key value unit} line (parsed by scripts/gpu-check.sh) plus a table.
 * Kernel figures are timed by replaying the calls captured in a CUDA graph, as a decode step runs
 * ({@code -Dtokenpress.bench.timing=eager} launches each call from the host instead).
 */
public final class KernelBench {
    private KernelBench() {}

    public static void main(String[] args) throws Exception {
        Locale.setDefault(Locale.ROOT);
        if (args.length == 0) {
            System.err.println("usage: KernelBench generate <model-dir> | attn-cpu [head-dim [f32|bf16 [context [k]]]] | attention | policies [model-dir] | selprofile | e2e <model-dir> [short-steps] [long-steps] | gemv | attnsweep | e2epol <model-dir> [contexts [as-stored|q8_0 [table|main]]] | e2epol-cpu <model-dir> [contexts [warmup [steps [f32|bf16 [spec;spec...]]]]] | cce [N D V] | all <model-dir>");
            System.exit(2);
        }
        PrintStream out = System.out;
        if (args[0].equals("generate")) { // CPU only: writes the llama-1b-shape model
            Path dir = Path.of(args[1]);
            long t0 = System.nanoTime();
            ModelWriter.write(dir, ModelWriter.Preset.LLAMA_1B_SHAPE, 1, s -> System.err.println("make-model: " + s));
            result(out, "model_generate_s", (System.nanoTime() - t0) / 1e9, "s");
            return;
        }
        if (args[0].equals("e2epol-cpu")) { // the policy table on the CPU backend (host-side policy work; no GPU)
            Path dir = Path.of(args[1]);
            int[] contexts = args.length > 2 ? java.util.Arrays.stream(args[2].split(",")).mapToInt(c -> Integer.parseInt(c.trim())).toArray()
                    : new int[] {8192};
            int warmup = args.length > 3 ? Integer.parseInt(args[3]) : 80, steps = args.length > 4 ? Integer.parseInt(args[4]) : 30;
            // the KV cache's storage: f32 (default) or bf16; one per JVM (after a switch of storage type the JIT's
            // recompiled kernels ran at a third of their speed: timings of a second type in one JVM are not figures)
            dev.tokenpress.backend.KvType kv = dev.tokenpress.backend.KvType.parse(args.length > 5 ? args[5] : "f32");
            String[] specs = args.length > 6 ? args[6].split(";") : POLICY_TABLE_SPECS;
            policyTableCpu(dir, contexts, warmup, steps, kv, specs, out);
            return;
        }
        if (args[0].equals("attn-cpu")) { // decode attention over slot lists on the CPU backend (no GPU)
            int hd = args.length > 1 ? Integer.parseInt(args[1]) : 64;
            dev.tokenpress.backend.KvType kv = dev.tokenpress.backend.KvType.parse(args.length > 2 ? args[2] : "f32");
            int ctx = args.length > 3 ? Integer.parseInt(args[3]) : 8192, k = args.length > 4 ? Integer.parseInt(args[4]) : POLICY_K;
            attentionCpu(hd, kv, ctx, Math.min(k, ctx), out);
            return;
        }
        try (CudaBackend gpu = CudaBackend.open()) {
            out.println("device: " + gpu.description());
            double bw = CudaKernelBench.copyBandwidth(gpu, 1L << 30, 5);
            result(out, "copy_bandwidth", bw / 1e9, "GB/s");
            if (gpu.theoreticalBandwidth() > 0) result(out, "theoretical_bandwidth", gpu.theoreticalBandwidth() / 1e9, "GB/s");
            String what = args[0];
            if (what.equals("attention") || what.equals("all")) attention(gpu, bw, out);
            if (what.equals("policies")) {
                policies(gpu, out);
                quantPolicies(gpu, out);
                if (args.length > 1) policiesEndToEnd(gpu, Path.of(args[1]), null, false, out);
            }
            if (what.equals("selprofile")) { // the attention/selection table alone (under a profiler)
                policies(gpu, out);
                quantKernels(gpu, out);
            }
            if (what.equals("gemv")) gemvSweep(gpu, bw, out);
            if (what.equals("attnsweep")) splitSweep(gpu, bw, out);
            if (what.equals("e2epol")) {
                int[] contexts = args.length > 2 ? java.util.Arrays.stream(args[2].split(",")).mapToInt(c -> Integer.parseInt(c.trim())).toArray()
                        : new int[] {8192, 32768, 131072};
                // optional weight type (as-stored | q8_0): the whole table with weights stored that way
                dev.tokenpress.backend.WeightType wt = args.length > 3 && !args[3].isBlank()
                        ? dev.tokenpress.backend.WeightType.parse(args[3]) : dev.tokenpress.backend.WeightType.AS_STORED;
                // optional: "main" runs only the E2E_POLICY_RUNS (full, the tidal variants, quest, tokenselect, int4 with kernels v3 and v4, pipelined, tidal_int4), not the other policies' table
                boolean table = args.length <= 4 || !args[4].trim().equals("main");
                out.println("e2e policy table: weights " + wt + (table ? "" : " (main runs only)") + "; " + gpu.kernelPaths());
                gpu.setWeightType(wt);
                try {
                    policiesEndToEnd(gpu, Path.of(args[1]), contexts, table, out);
                } finally {
                    gpu.setWeightType(dev.tokenpress.backend.WeightType.AS_STORED);
                }
            }
            if (what.equals("cce")) {
                int n = args.length > 1 ? Integer.parseInt(args[1]) : 8192;
                int d = args.length > 2 ? Integer.parseInt(args[2]) : 2048;
                int v = args.length > 3 ? Integer.parseInt(args[3]) : 128256;
                cce(gpu, n, d, v, out);
            }
            if (what.equals("e2e") || what.equals("all")) {
                Path dir = Path.of(args[1]);
                int shortSteps = args.length > 2 ? Integer.parseInt(args[2]) : 128;
                int longSteps = args.length > 3 ? Integer.parseInt(args[3]) : 64;
                java.util.Set<String> parts = new java.util.HashSet<>(java.util.List.of((args.length > 4 ? args[4] : "short,batch,long,q8").split(",")));
                endToEnd(gpu, bw, dir, shortSteps, longSteps, parts, out);
            }
        }
    }

    /**
     * Decode attention GB/s for the llama-1b shape at 1K..128K, with the split merge fused into the split kernel
     * (the default; keys attn_*) and as a separate merge kernel (keys attn_*_sepmerge), same run, for the backend's
     * attention kernel variant; then the fused merge with each kernel variant (keys attn_*_v1, attn_*_v2, attn_*_v3)
     * and v3 with 256 and 2048 rows of L2 prefetch per block before the PDL wait (keys attn_*_pf256, attn_*_pf2048).
     */
    public static void attention(CudaBackend gpu, double copyBw, PrintStream out) {
        out.println("| context | kernel | merge | layers rotated | µs/call | KV MB/call | GB/s | % of copy bw |");
        out.println("|---|---|---|---|---|---|---|---|");
        for (int ctx : new int[] {1024, 8192, 32768, 131072}) {
            int iters = ctx >= 65536 ? 50 : 200;
            for (boolean fused : new boolean[] {true, false}) {
                CudaKernelBench.AttentionResult r = CudaKernelBench.decodeAttention(gpu, 32, 8, 64, ctx, iters, fused);
                double pct = 100 * r.gbPerSecond() * 1e9 / copyBw;
                out.printf("| %d | v%d (default) | %s | %d | %.2f | %.2f | %.0f | %.1f%% |%n", ctx, gpu.attentionVariant(),
                        fused ? "fused" : "separate", r.layersRotated(), r.microseconds(), r.bytesPerCall() / 1e6,
                        r.gbPerSecond(), pct);
                String k = "attn_" + ctx, sfx = fused ? "" : "_sepmerge";
                result(out, k + "_us" + sfx, r.microseconds(), "us");
                result(out, k + "_gbps" + sfx, r.gbPerSecond(), "GB/s");
                result(out, k + "_pct_copy_bw" + sfx, pct, "%");
            }
            for (int v = 1; v <= 3; v++) {
                CudaKernelBench.AttentionResult r = CudaKernelBench.decodeAttention(gpu, 32, 8, 64, ctx, iters, true, v);
                double pct = 100 * r.gbPerSecond() * 1e9 / copyBw;
                out.printf("| %d | v%d | fused | %d | %.2f | %.2f | %.0f | %.1f%% |%n", ctx, v, r.layersRotated(),
                        r.microseconds(), r.bytesPerCall() / 1e6, r.gbPerSecond(), pct);
                String k = "attn_" + ctx, sfx = "_v" + v;
                result(out, k + "_us" + sfx, r.microseconds(), "us");
                result(out, k + "_gbps" + sfx, r.gbPerSecond(), "GB/s");
                result(out, k + "_pct_copy_bw" + sfx, pct, "%");
            }
            // v3 with its L2 prefetch before the PDL wait (rows per block; keys attn_<ctx>_*_pf<rows>)
            int before = gpu.attentionPrefetch();
            try {
                for (int rows : new int[] {256, 2048}) {
                    gpu.setAttentionPrefetch(rows);
                    CudaKernelBench.AttentionResult r = CudaKernelBench.decodeAttention(gpu, 32, 8, 64, ctx, iters, true, 3);
                    double pct = 100 * r.gbPerSecond() * 1e9 / copyBw;
                    out.printf("| %d | v3, L2 prefetch %d rows | fused | %d | %.2f | %.2f | %.0f | %.1f%% |%n", ctx, rows,
                            r.layersRotated(), r.microseconds(), r.bytesPerCall() / 1e6, r.gbPerSecond(), pct);
                    String k = "attn_" + ctx, sfx = "_pf" + rows;
                    result(out, k + "_us" + sfx, r.microseconds(), "us");
                    result(out, k + "_pct_copy_bw" + sfx, pct, "%");
                }
            } finally {
                gpu.setAttentionPrefetch(before);
            }
        }
    }


    /**
     * Decode attention on the CPU backend for Llama-3.2-1B's attention shape with head dim {@code hd}: one query row
     * over all {@code ctx} slots, over {@code k} scattered slots (a sorted random sample per KV head: TidalDecode's
     * pattern) and over {@code k} slots in pages of 16 (Quest's), each layer of 16 in turn (keys
     * attn_cpu_{full,scattered,paged}_us, µs per layer, best of 5 passes after 3 rounds of warm-up).
     */
    static void attentionCpu(int hd, dev.tokenpress.backend.KvType kv, int ctx, int k, PrintStream out) {
        int layers = 16, kvHeads = 8, heads = 32, chunk = 256;
        try (dev.tokenpress.backend.cpu.CpuBackend b = new dev.tokenpress.backend.cpu.CpuBackend()) {
            b.setKvTypes(kv, kv);
            out.printf("CPU decode attention: %s; %d q-heads, %d KV heads, head dim %d, %s cache, %d tokens, k = %d, %d layers visited in turn%n",
                    b.description(), heads, kvHeads, hd, kv.name().toLowerCase(Locale.ROOT), ctx, k, layers);
            dev.tokenpress.kv.KvCache cache = b.newKvCache(layers, kvHeads, hd, ctx);
            SplittableRandom r = new SplittableRandom(1);
            dev.tokenpress.backend.Tensor kt = b.allocate(chunk, kvHeads * hd), vt = b.allocate(chunk, kvHeads * hd);
            float[] buf = new float[chunk * kvHeads * hd];
            for (int l = 0; l < layers; l++)
                for (int p0 = 0; p0 < ctx; p0 += chunk) {
                    int n = Math.min(chunk, ctx - p0);
                    int[] pos = new int[n];
                    for (int i = 0; i < n; i++) pos[i] = p0 + i;
                    int[][] slots = new int[kvHeads][];
                    for (int g = 0; g < kvHeads; g++) slots[g] = cache.allocate(l, g, pos, n);
                    for (int i = 0; i < buf.length; i++) buf[i] = (float) (r.nextDouble() * 2 - 1);
                    b.upload(kt, buf);
                    for (int i = 0; i < buf.length; i++) buf[i] = (float) (r.nextDouble() * 2 - 1);
                    b.upload(vt, buf);
                    b.storeKv(cache, l, kt, vt, slots, n);
                }
            dev.tokenpress.backend.Tensor q = b.allocate(1, heads * hd), o = b.allocate(1, heads * hd);
            float[] qd = new float[heads * hd];
            for (int i = 0; i < qd.length; i++) qd[i] = (float) (r.nextDouble() * 2 - 1);
            b.upload(q, qd);
            int[][] scattered = new int[kvHeads][], paged = new int[kvHeads][k];
            for (int g = 0; g < kvHeads; g++) {
                int[] all = new int[ctx];
                for (int i = 0; i < ctx; i++) all[i] = i;
                for (int i = ctx - 1; i > 0; i--) {
                    int j = r.nextInt(i + 1), t = all[i];
                    all[i] = all[j];
                    all[j] = t;
                }
                scattered[g] = Arrays.copyOf(all, k);
                Arrays.sort(scattered[g]);
                // pages of 16 spread evenly over the context
                int pages = (k + 15) / 16, stride = Math.max(1, (ctx / 16) / pages), n = 0;
                for (int pg = 0; n < k; pg += stride)
                    for (int i = 0; i < 16 && n < k; i++) paged[g][n++] = (pg * 16 + i) % ctx;
                Arrays.sort(paged[g]);
            }
            String[] names = {"full", "scattered", "paged"};
            dev.tokenpress.kv.SlotSelection[] sels = {null, dev.tokenpress.kv.SlotSelection.of(scattered), dev.tokenpress.kv.SlotSelection.of(paged)};
            int[] qp = {ctx};
            double[] best = new double[3];
            Arrays.fill(best, Double.MAX_VALUE);
            for (int round = 0; round < 6; round++)
                for (int v = 0; v < 3; v++)
                    for (int rep = 0; rep < 5; rep++) {
                        long t0 = System.nanoTime();
                        for (int l = 0; l < layers; l++) b.attention(o, q, cache, l, qp, 1, sels[v], null);
                        double us = (System.nanoTime() - t0) / 1e3 / layers;
                        if (round >= 3) best[v] = Math.min(best[v], us);
                    }
            for (int v = 0; v < 3; v++) {
                out.printf("%-9s %d slots: %.0f µs per layer%n", names[v], v == 0 ? ctx : k, best[v]);
                result(out, "attn_cpu_" + names[v] + "_us", best[v], "us");
            }
            cache.close();
        }
    }

    /**
     * The contexts of the policies mode's attention table: 8192, 32768 and 131072, or those listed in
     * {@code -Dtokenpress.bench.policyContexts} (comma-separated; e.g. one context under a profiler, with fewer timed
     * calls per figure from {@code -Dtokenpress.bench.policyIters}).
     */
    static int[] policyContexts() {
        String v = System.getProperty("tokenpress.bench.policyContexts");
        if (v == null || v.isBlank()) return new int[] {8192, 32768, 131072};
        return java.util.Arrays.stream(v.split(",")).mapToInt(c -> Integer.parseInt(c.trim())).toArray();
    }

    /**
     * The int4 quantized attention at the policies mode's contexts with each kernel variant of tp_kvq_attention from
     * 2 on (keys quant_<ctx>_int4_kernel_v<v>_us; under a profiler: its kernels one by one).
     */
    static void quantKernels(CudaBackend gpu, PrintStream out) {
        int iters = Integer.getInteger("tokenpress.bench.policyIters", 100);
        int before = dev.tokenpress.backend.cuda.TpNative.tp_kvq_attention_variant();
        try {
            for (int ctx : policyContexts())
                for (int v = 2; v <= 4; v++) {
                    dev.tokenpress.backend.cuda.TpNative.tp_kvq_set_attention_variant(v);
                    CudaKernelBench.QuantAttentionResult q = CudaKernelBench.quantAttention(gpu, 32, 8, 64, ctx, "int4", iters);
                    out.printf("int4 attention %dK, kernel v%d: %.2f us%n", ctx / 1024, v, q.microseconds());
                    result(out, "quant_" + ctx + "_int4_kernel_v" + v + "_us", q.microseconds(), "us");
                }
        } finally {
            dev.tokenpress.backend.cuda.TpNative.tp_kvq_set_attention_variant(before);
        }
    }

    /** TidalDecode's k for the policies mode (the target: tidal:k=2048). */
    static final int POLICY_K = 2048;

    /**
     * Decode attention for the llama-1b shape (32 q, 8 KV heads, hd 64) at 8K/32K/128K: full vs a device selection
     * of k=2048 per KV head (keys pol_<ctx>_full_us, pol_<ctx>_tidal_attn_us, pol_<ctx>_tidal_select_us,
     * pol_<ctx>_tidal_total_us, the speed-ups and KV bytes per layer per policy; pol_<ctx>_tidal_select_us_v1..v3
     * the selection op with each tp_tidal_select variant forced).
     */
    public static void policies(CudaBackend gpu, PrintStream out) {
        out.println("| context | full µs | tidal k=" + POLICY_K + " attention µs | selection µs | selection + attention µs | attention speed-up | KV bytes/layer full | KV bytes/layer tidal |");
        out.println("|---|---|---|---|---|---|---|---|");
        for (int ctx : policyContexts()) {
            int iters = Integer.getInteger("tokenpress.bench.policyIters", ctx >= 65536 ? 50 : 200); // fewer under a profiler
            CudaKernelBench.PolicyAttentionResult r = CudaKernelBench.tidalAttention(gpu, 32, 8, 64, ctx, POLICY_K, iters);
            out.printf("| %d | %.2f | %.2f | %.2f | %.2f | %.1fx | %d | %d |%n", ctx, r.fullUs(), r.sparseUs(), r.selectUs(),
                    r.selectPlusSparseUs(), r.fullUs() / r.sparseUs(), r.kvBytesPerLayer(), r.kvBytesPerLayer());
            String k = "pol_" + ctx;
            result(out, k + "_full_us", r.fullUs(), "us");
            result(out, k + "_tidal_attn_us", r.sparseUs(), "us");
            result(out, k + "_tidal_select_us", r.selectUs(), "us");
            result(out, k + "_tidal_total_us", r.selectPlusSparseUs(), "us");
            result(out, k + "_tidal_attn_speedup", r.fullUs() / r.sparseUs(), "x");
            result(out, k + "_tidal_total_speedup", r.fullUs() / r.selectPlusSparseUs(), "x");
            result(out, k + "_kv_bytes_full", r.kvBytesPerLayer(), "B");
            result(out, k + "_kv_bytes_tidal", r.kvBytesPerLayer(), "B");
            result(out, k + "_read_bytes_full", r.fullReadBytes(), "B");
            result(out, k + "_read_bytes_tidal", r.sparseReadBytes(), "B");
            for (int v = 1; v <= 3; v++) {
                double f = v == 1 ? r.fullUsV1() : v == 2 ? r.fullUsV2() : r.fullUsV3();
                double s = v == 1 ? r.sparseUsV1() : v == 2 ? r.sparseUsV2() : r.sparseUsV3();
                out.printf("| %d | attention kernel v%d: full %.2f µs, tidal attention %.2f µs (%.1fx) | | | | | | |%n", ctx, v, f, s, f / s);
                result(out, k + "_full_us_v" + v, f, "us");
                result(out, k + "_tidal_attn_us_v" + v, s, "us");
            }
            double[] sel = {r.selectUsV1(), r.selectUsV2(), r.selectUsV3()};
            out.printf("| %d | tidal selection v1 %.2f µs, v2 %.2f µs, v3 %.2f µs | | | | | | |%n", ctx, sel[0], sel[1], sel[2]);
            for (int v = 1; v <= 3; v++) result(out, k + "_tidal_select_us_v" + v, sel[v - 1], "us");
            result(out, k + "_tidal_select_v3_diff_slots", r.selectV3DiffSlots(), "slots");
            out.printf("| %d | selection layer: full attention + selection %.2f µs, selection from the attention's scores %.2f µs (%.2fx; %d slots differ, output max diff %.3g) | | | | | | |%n",
                    ctx, r.fullThenSelectUs(), r.attnSelectUs(), r.fullThenSelectUs() / r.attnSelectUs(), r.attnSelectDiffSlots(),
                    r.attnSelectOutMaxDiff());
            result(out, k + "_sel_layer_separate_us", r.fullThenSelectUs(), "us");
            result(out, k + "_sel_layer_fused_us", r.attnSelectUs(), "us");
            result(out, k + "_sel_layer_fused_speedup", r.fullThenSelectUs() / r.attnSelectUs(), "x");
            result(out, k + "_sel_layer_fused_diff_slots", r.attnSelectDiffSlots(), "slots");
            result(out, k + "_sel_layer_fused_out_max_diff", r.attnSelectOutMaxDiff(), "abs");
            for (int i = 0; i < CudaKernelBench.HIST_ROWS.length; i++) {
                int rows = CudaKernelBench.HIST_ROWS[i];
                out.printf("| %d | selection layer, histogram pass %d keys per block: %.2f µs | | | | | | |%n", ctx, rows,
                        r.attnSelectHistUs()[i]);
                result(out, k + "_sel_layer_fused_hist" + rows + "_us", r.attnSelectHistUs()[i], "us");
            }
            out.printf("| %d | selection layer, collect pass with batched candidate loads: %.2f µs | | | | | | |%n", ctx,
                    r.attnSelectBatchedUs());
            result(out, k + "_sel_layer_fused_collect_batched_us", r.attnSelectBatchedUs(), "us");
        }
    }

    /**
     * Split-count sweep of decode attention (the backend's kernel variant, default and deep pipeline) at 8K/32K/128K
     * for the llama-1b shape (32 q, 8 KV heads, hd 64) and at 32K for the Llama-3-8B (32 q, 8 KV, hd 128) and
     * Llama-2-7B (32 q, 32 KV, hd 128) shapes: full and tidal k=2048 attention with each forced split count, timed
     * in a CUDA graph and eagerly (keys sweep_<shape>_<ctx>_<pipe>_s<S>_{full,sparse}_{graph,eager}_us; S = 0 is
     * the automatic choice); then, at the automatic split count, v3's L2 prefetch before the PDL wait with 64, 256,
     * 1024 and 4096 rows per block (pipe = pf<rows>). The deep pipeline (measured no faster) is no longer swept.
     */
    public static void splitSweep(CudaBackend gpu, double copyBw, PrintStream out) {
        out.println("| shape | context | pipeline | splits | full µs graph | full µs eager | full % copy bw (graph) | tidal k="
                + POLICY_K + " µs graph | tidal µs eager | full / tidal (graph) |");
        out.println("|---|---|---|---|---|---|---|---|---|---|");
        int[][] cases = {{32, 8, 64, 8192}, {32, 8, 64, 32768}, {32, 8, 64, 131072}, {32, 8, 128, 32768}, {32, 32, 128, 32768}};
        for (int[] cs : cases) {
            int heads = cs[0], kvHeads = cs[1], hd = cs[2], ctx = cs[3];
            int[] splits = kvHeads == 32 ? new int[] {0, 2, 3, 4, 6, 8, 12} : new int[] {0, 1, 2, 4, 8, 12, 16, 24, 33};
            String shape = heads + "x" + kvHeads + "x" + hd;
            for (int prefetch : new int[] {0, 64, 256, 1024, 4096}) {
                int[] sp = prefetch == 0 ? splits : new int[] {0};
                CudaKernelBench.SplitSweepResult r = CudaKernelBench.splitSweep(gpu, heads, kvHeads, hd, ctx, POLICY_K,
                        ctx >= 65536 ? 50 : 200, sp, false, prefetch);
                double bytes = (double) ctx * kvHeads * (hd * 4.0 + 4);
                String pipe = prefetch == 0 ? "default" : "pf" + prefetch;
                for (int i = 0; i < sp.length; i++) {
                    out.printf("| %s | %d | %s | %s | %.2f | %.2f | %.1f%% | %.2f | %.2f | %.1fx |%n", shape, ctx, pipe,
                            sp[i] == 0 ? "auto" : String.valueOf(sp[i]), r.fullGraphUs()[i], r.fullEagerUs()[i],
                            100 * bytes / (r.fullGraphUs()[i] * 1e-6) / copyBw, r.sparseGraphUs()[i], r.sparseEagerUs()[i],
                            r.fullGraphUs()[i] / r.sparseGraphUs()[i]);
                    String k = "sweep_" + shape + "_" + ctx + "_" + pipe + "_s" + sp[i];
                    result(out, k + "_full_graph_us", r.fullGraphUs()[i], "us");
                    result(out, k + "_full_eager_us", r.fullEagerUs()[i], "us");
                    result(out, k + "_sparse_graph_us", r.sparseGraphUs()[i], "us");
                    result(out, k + "_sparse_eager_us", r.sparseEagerUs()[i], "us");
                }
            }
        }
    }

    /**
     * The decode GEMV at the llama-1b decode shapes (q/o 2048×2048, q+k+v 3072×2048, down 2048×8192, gate+up
     * 16384×2048, LM head 128256×2048) with the automatic and each forced warps per row: µs, GB/s and % of the
     * copy bandwidth (keys gemv_<O>x<I>_wpr<W>_us / _gbps; W = 0 is the automatic choice).
     */
    public static void gemvSweep(CudaBackend gpu, double copyBw, PrintStream out) {
        out.println("| O × I | warps/row | µs | GB/s | % of copy bw |");
        out.println("|---|---|---|---|---|");
        int[][] shapes = {{2048, 2048}, {3072, 2048}, {2048, 8192}, {16384, 2048}, {128256, 2048}};
        for (int[] sh : shapes) {
            CudaKernelBench.GemvResult r = CudaKernelBench.gemv(gpu, sh[0], sh[1], sh[0] > 100000 ? 50 : 400);
            for (int i = 0; i < r.warpsPerRow().length; i++) {
                int w = r.warpsPerRow()[i];
                out.printf("| %d × %d | %s | %.2f | %.0f | %.1f%% |%n", sh[0], sh[1], w == 0 ? "auto" : String.valueOf(w),
                        r.microseconds()[i], r.gbPerSecond()[i], 100 * r.gbPerSecond()[i] * 1e9 / copyBw);
                String k = "gemv_" + sh[0] + "x" + sh[1] + "_wpr" + w;
                result(out, k + "_us", r.microseconds()[i], "us");
                result(out, k + "_gbps", r.gbPerSecond()[i], "GB/s");
            }
        }
    }

    /** KV quantization specs of the policies mode's quantized-attention table. */
    static final String[] QUANT_SPECS = {"int8", "int4", "int2", "int4:group=128"};

    /**
     * Decode attention over a KIVI-quantized device cache for the llama-1b shape at 8K/32K/128K against the bf16
     * cache: µs per call, device KV bytes per layer, speed-up and memory ratio vs bf16 (keys
     * quant_<ctx>_bf16_us, quant_<ctx>_<spec>_us, _kv_bytes, _speedup, _mem_ratio; spec with ':' '=' ',' as '_');
     * then TidalDecode (k = POLICY_K) over int4: selection and sparse attention µs, speed-up of the sparse attention
     * vs full bf16 attention (quant_<ctx>_tidal_int4_select_us, _sparse_us, _speedup).
     */
    /** Split settings of the quantized decode attention swept for int4: {max splits, rows per split}. */
    static final int[][] KVQ_SPLITS = {{128, 128}, {32, 128}, {16, 128}, {8, 128}, {32, 64}, {16, 256}};
    /** Split settings timed with the tensor-core quantized attention (variant 4), besides the default 64 × 128. */
    static final int[][] KVQ_SPLITS_V4 = {{32, 128}, {16, 128}, {16, 256}, {8, 256}};

    /**
     * int4 attention at {@code ctx} with quantized-attention kernel {@code variant} under each split setting of
     * {@code settings} ({max splits, rows per split}); keys {@code <k>_v<variant>_splits_<max>x<rows>_us / _speedup}.
     */
    static void splitSweep(CudaBackend gpu, PrintStream out, int ctx, int iters, String k, double bfUs, int variant,
                           int[][] settings, String label) {
        int before = dev.tokenpress.backend.cuda.TpNative.tp_kvq_attention_variant();
        try {
            dev.tokenpress.backend.cuda.TpNative.tp_kvq_set_attention_variant(variant);
            CudaKernelBench.QuantAttentionResult q = CudaKernelBench.quantAttention(gpu, 32, 8, 64, ctx, "int4", iters, 0, settings);
            for (int i = 0; i < settings.length; i++) {
                int[] mr = settings[i];
                double us = q.splitMicroseconds()[i];
                int splits = Math.max(1, Math.min(mr[0], (ctx + mr[1] - 1) / mr[1]));
                out.printf("| %d | int4 (kernel v%d), " + label + " | %.2f | %.2fx | | |%n", ctx, variant, splits, mr[0], mr[1], us, bfUs / us);
                String key = k + "_v" + variant + "_splits_" + mr[0] + "x" + mr[1];
                result(out, key + "_us", us, "us");
                result(out, key + "_speedup", bfUs / us, "x");
            }
        } finally {
            dev.tokenpress.backend.cuda.TpNative.tp_kvq_set_attention_variant(before);
        }
    }

    public static void quantPolicies(CudaBackend gpu, PrintStream out) {
        out.println("| context | KV | attention µs | speed-up vs bf16 | KV bytes/layer | memory vs bf16 |");
        out.println("|---|---|---|---|---|---|");
        int[] contexts = {8192, 32768, 131072};
        double[] bfUs = new double[contexts.length];
        for (int ci = 0; ci < contexts.length; ci++) {
            int ctx = contexts[ci];
            int iters = ctx >= 65536 ? 50 : 200;
            CudaKernelBench.AttentionResult bf = CudaKernelBench.decodeAttention(gpu, 32, 8, 64, ctx, iters);
            bfUs[ci] = bf.microseconds();
            long bfBytes = (long) ctx * 8 * (64 * 2 * 2 + 4);
            out.printf("| %d | bf16 | %.2f | 1.0x | %d | 1.00x |%n", ctx, bf.microseconds(), bfBytes);
            result(out, "quant_" + ctx + "_bf16_us", bf.microseconds(), "us");
            result(out, "quant_" + ctx + "_bf16_kv_bytes", bfBytes, "B");
            for (String spec : QUANT_SPECS) {
                CudaKernelBench.QuantAttentionResult q = CudaKernelBench.quantAttention(gpu, 32, 8, 64, ctx, spec, iters);
                double sp = bf.microseconds() / q.microseconds(), mem = (double) bfBytes / q.kvBytesPerLayer();
                out.printf("| %d | %s | %.2f | %.2fx | %d | %.2fx |%n", ctx, spec, q.microseconds(), sp, q.kvBytesPerLayer(), mem);
                String k = "quant_" + ctx + "_" + spec.replaceAll("[:=,]", "_");
                result(out, k + "_us", q.microseconds(), "us");
                result(out, k + "_kv_bytes", q.kvBytesPerLayer(), "B");
                result(out, k + "_speedup", sp, "x");
                result(out, k + "_mem_ratio", mem, "x");
                if (spec.startsWith("int4")) {  // the other kernels of tp_kvq_attention, for comparison
                    int before = dev.tokenpress.backend.cuda.TpNative.tp_kvq_attention_variant();
                    try {
                        for (int v = 1; v <= 4; v++) {
                            if (v == before || (v == 1 && !spec.equals("int4"))) continue;
                            dev.tokenpress.backend.cuda.TpNative.tp_kvq_set_attention_variant(v);
                            CudaKernelBench.QuantAttentionResult qv = CudaKernelBench.quantAttention(gpu, 32, 8, 64, ctx, spec, v == 1 ? Math.max(10, iters / 4) : iters);
                            out.printf("| %d | %s (kernel v%d) | %.2f | %.2fx | %d | %.2fx |%n", ctx, spec, v, qv.microseconds(),
                                    bf.microseconds() / qv.microseconds(), qv.kvBytesPerLayer(), (double) bfBytes / qv.kvBytesPerLayer());
                            result(out, k + "_v" + v + "_us", qv.microseconds(), "us");
                            result(out, k + "_v" + v + "_speedup", bf.microseconds() / qv.microseconds(), "x");
                        }
                    } finally {
                        dev.tokenpress.backend.cuda.TpNative.tp_kvq_set_attention_variant(before);
                    }
                }
                if (spec.equals("int4")) {
                    // the same calls with other split counts than the default (tp_kvq_set_splits): kernel v3's count is
                    // the setting (on the H200 more splits than 64 of 128 slots were slower at every context, so the
                    // sweep tries fewer); the tensor-core kernel v4 stops at one wave and is tried with fewer, longer
                    // splits (its warps pipeline a run of stages)
                    splitSweep(gpu, out, ctx, iters, k, bf.microseconds(), 3, KVQ_SPLITS, "%d splits (at most %d of %d slots)");
                    splitSweep(gpu, out, ctx, iters, k, bf.microseconds(), 4, KVQ_SPLITS_V4,
                            "at most %d splits (%d of %d slots; v4 stops at one wave)");
                }
            }
        }
        // the Llama-3-8B attention shape (head dim 128) at 32K: metadata is a smaller share of a token there
        out.println("| context (hd 128) | KV | attention µs | speed-up vs bf16 | KV bytes/layer | memory vs bf16 |");
        out.println("|---|---|---|---|---|---|");
        int ctx = 32768;
        CudaKernelBench.AttentionResult bf = CudaKernelBench.decodeAttention(gpu, 32, 8, 128, ctx, 100);
        long bfBytes = (long) ctx * 8 * (128 * 2 * 2 + 4);
        out.printf("| %d | bf16 | %.2f | 1.0x | %d | 1.00x |%n", ctx, bf.microseconds(), bfBytes);
        result(out, "quant_hd128_" + ctx + "_bf16_us", bf.microseconds(), "us");
        for (String spec : new String[] {"int4", "int4:group=128"}) {
            CudaKernelBench.QuantAttentionResult q = CudaKernelBench.quantAttention(gpu, 32, 8, 128, ctx, spec, 100);
            double sp = bf.microseconds() / q.microseconds(), mem = (double) bfBytes / q.kvBytesPerLayer();
            out.printf("| %d | %s | %.2f | %.2fx | %d | %.2fx |%n", ctx, spec, q.microseconds(), sp, q.kvBytesPerLayer(), mem);
            String k = "quant_hd128_" + ctx + "_" + spec.replaceAll("[:=,]", "_");
            result(out, k + "_us", q.microseconds(), "us");
            result(out, k + "_speedup", sp, "x");
            result(out, k + "_mem_ratio", mem, "x");
        }
        // TidalDecode over int4 (last: its kernels are the newest), k = POLICY_K, against full bf16 attention
        out.println("| context | tidal:k=" + POLICY_K + " over int4 | selection µs | sparse attention µs | speed-up vs full bf16 | memory vs bf16 |");
        out.println("|---|---|---|---|---|---|");
        for (int ci = 0; ci < contexts.length; ci++) {
            int c2 = contexts[ci];
            long bfBytes2 = (long) c2 * 8 * (64 * 2 * 2 + 4);
            CudaKernelBench.QuantAttentionResult t = CudaKernelBench.quantAttention(gpu, 32, 8, 64, c2, "int4",
                    c2 >= 65536 ? 50 : 200, POLICY_K);
            double sp = bfUs[ci] / t.sparseMicroseconds(), mem = (double) bfBytes2 / t.kvBytesPerLayer();
            out.printf("| %d | int4 | %.2f | %.2f | %.2fx | %.2fx |%n", c2, t.selectMicroseconds(), t.sparseMicroseconds(), sp, mem);
            String k = "quant_" + c2 + "_tidal_int4";
            result(out, k + "_select_us", t.selectMicroseconds(), "us");
            result(out, k + "_sparse_us", t.sparseMicroseconds(), "us");
            result(out, k + "_speedup", sp, "x");
            // the other kernel for the selection's keys: v4's tensor-core scores mode (the default) or v3's scalar scores
            int before = dev.tokenpress.backend.cuda.TpNative.tp_kvq_attention_variant();
            int other = before == 4 ? 3 : 4;
            try {
                dev.tokenpress.backend.cuda.TpNative.tp_kvq_set_attention_variant(other);
                CudaKernelBench.QuantAttentionResult t4 = CudaKernelBench.quantAttention(gpu, 32, 8, 64, c2, "int4",
                        c2 >= 65536 ? 50 : 200, POLICY_K);
                out.printf("| %d | int4 (kernel v%d keys) | %.2f | %.2f | %.2fx | %.2fx |%n", c2, other, t4.selectMicroseconds(),
                        t4.sparseMicroseconds(), bfUs[ci] / t4.sparseMicroseconds(), mem);
                result(out, k + "_v" + other + "_select_us", t4.selectMicroseconds(), "us");
                result(out, k + "_v" + other + "_sparse_us", t4.sparseMicroseconds(), "us");
            } finally {
                dev.tokenpress.backend.cuda.TpNative.tp_kvq_set_attention_variant(before);
            }
        }
    }

    /**
     * Decode tokens/s of the llama-1b-shape model in {@code dir} (generated when absent) with {@code full} and
     * {@code tidal:k=2048}, and {@code full} over an int4 cache, at 32K and 128K of synthetic context (keys
     * e2e_pol_<ctx>_<full|tidal|int4>_tps, _kv_bytes, and _speedup vs full), graphs as configured, each with the
     * plain decode loop (like for like); full_pipelined and tidal_pipelined: full and tidal with Llama.decodeGreedy's
     * pipelined loop (the default greedy loop; key e2e_pol_<ctx>_tidal_pipelined_vs_full_pipelined compares the two);
     * tidal_int4: {@code tidal:k=2048} over the int4 cache (its selection over the packed blocks, switched on for
     * that run); tidal with the backend's defaults (the selection made from the selection layers' attention, its passes
     * on a second stream), tidal_separate with the selection op on its own ({@link CudaBackend#setFusedSelect} off for
     * that run) and tidal_fused with the selection from the attention on one stream ({@link CudaBackend#setSideSelect}
     * off); quest and quest_device: {@code quest:budget=2048}
     * with its pages selected on the host from downloaded bounds, and in device memory
     * ({@code -Dtokenpress.cuda.deviceQuest}, set for each run); tokenselect and tokenselect_device: {@code
     * tokenselect:k=2048} voting on the host and in device memory ({@code -Dtokenpress.cuda.deviceTokenSelect}). With
     * {@code everyPolicyAt} (stage e2epol: {@code e2epol DIR [CONTEXTS]}, default 8192,32768,131072)
     * at those contexts instead, each followed, when {@code table}, by {@link #policyTable} for the other policies
     * ({@link #POLICY_TABLE_SPECS}).
     */
    public static void policiesEndToEnd(CudaBackend gpu, Path dir, int[] everyPolicyAt, boolean table, PrintStream out) {
        boolean everyPolicy = everyPolicyAt != null;
        if (!Files.exists(dir.resolve(SafeTensors.SINGLE_FILE)))
            ModelWriter.write(dir, ModelWriter.Preset.LLAMA_1B_SHAPE, 1, s -> System.err.println("make-model: " + s));
        LlamaConfig cfg = ConfigLoader.load(dir);
        int steps = 64; // decode steps per run (after the warm-up steps); 32 for the other policies' table
        try (SafeTensors st = SafeTensors.open(dir)) {
            Weights w = Weights.load(st, cfg, gpu, null);
            Llama m = new Llama(cfg, w, gpu, 256);
            for (int ctx : everyPolicy ? everyPolicyAt : new int[] {32768, 131072}) {
                double full = 0, fullPipelined = 0;
                for (String[] run : E2E_POLICY_RUNS) {
                    String spec = run[0], name = run[2];
                    Runnable restore = applySwitches(gpu, run[3]); // the run's switches, restored after it
                    m.setPolicy(spec.equals("full") ? dev.tokenpress.kv.KvPolicy.FULL : dev.tokenpress.kv.KvPolicies.parse(spec, cfg));
                    dev.tokenpress.kv.quant.KvQuantSpec quant = dev.tokenpress.kv.quant.KvQuantSpec.parse(run[1]);
                    try (KvCache cache = m.newCache(ctx + decodeSlots(steps, false) + 16, quant)) {
                        fillSynthetic(gpu, cfg, cache, ctx);
                        gpu.synchronize();
                        // the plain loop for every policy (like for like: pipelined greedy decoding needs a plain
                        // cache, so int4 cannot use it); *_pipelined: Llama.decodeGreedy's pipelined loop
                        boolean pipelined = name.endsWith("_pipelined");
                        m.setPipelinedGreedy(pipelined ? null : Boolean.FALSE);
                        double tps = decode(gpu, m, cache, 1, ctx, steps);
                        if (name.equals("full")) full = tps;
                        if (name.equals("full_pipelined")) fullPipelined = tps;
                        out.printf("e2e %dK context, --kv %s --kv-quant %s [%s]: %.1f tokens/s; KV %d bytes; %s%n", ctx / 1024, spec,
                                run[1], name, tps, cache.bytes(), gpu.graphStatus());
                        result(out, "e2e_pol_" + ctx + "_" + name + "_tps", tps, "tokens/s");
                        result(out, "e2e_pol_" + ctx + "_" + name + "_kv_bytes", cache.bytes(), "B");
                        if (!name.equals("full")) result(out, "e2e_pol_" + ctx + "_" + name + "_speedup", tps / full, "x");
                        if (pipelined && !name.equals("full_pipelined") && fullPipelined > 0) // pipelined against pipelined
                            result(out, "e2e_pol_" + ctx + "_" + name + "_vs_full_pipelined", tps / fullPipelined, "x");
                    } catch (RuntimeException e) {
                        out.printf("e2e %dK context, --kv %s --kv-quant %s: FAILED %s%n", ctx / 1024, spec, run[1], e.getMessage());
                    } finally {
                        m.setPipelinedGreedy(null);
                        restore.run();
                    }
                }
                if (everyPolicy && table) policyTable(gpu, m, cfg, ctx, POLICY_TABLE_SPECS, 32, full, out);
            }
            m.setPolicy(dev.tokenpress.kv.KvPolicy.FULL);
        }
    }

    /**
     * Sets a run's switches, comma-separated {@code name=value} (null: none): {@code fusedSelect} and {@code sideSelect}
     * through the backend's setters, {@code kvqAttention} as the quantized attention's kernel variant, any other name
     * as a system property (read at each use); returns what restores them.
     */
    static Runnable applySwitches(CudaBackend gpu, String switches) {
        java.util.List<Runnable> undo = new java.util.ArrayList<>();
        if (switches != null)
            for (String item : switches.split(",")) {
                String[] kv = item.split("=", 2);
                switch (kv[0]) {
                    case "fusedSelect" -> {
                        boolean before = gpu.fusedSelect();
                        gpu.setFusedSelect(Boolean.parseBoolean(kv[1]));
                        undo.add(() -> gpu.setFusedSelect(before));
                    }
                    case "sideSelect" -> {
                        boolean before = gpu.sideSelect();
                        gpu.setSideSelect(Boolean.parseBoolean(kv[1]));
                        undo.add(() -> gpu.setSideSelect(before));
                    }
                    case "kvqAttention" -> {
                        int before = dev.tokenpress.backend.cuda.TpNative.tp_kvq_attention_variant();
                        dev.tokenpress.backend.cuda.TpNative.tp_kvq_set_attention_variant(Integer.parseInt(kv[1]));
                        undo.add(() -> dev.tokenpress.backend.cuda.TpNative.tp_kvq_set_attention_variant(before));
                    }
                    default -> {
                        String before = System.getProperty(kv[0]);
                        System.setProperty(kv[0], kv[1]);
                        undo.add(() -> {
                            if (before == null) System.clearProperty(kv[0]);
                            else System.setProperty(kv[0], before);
                        });
                    }
                }
            }
        return () -> {
            for (int i = undo.size() - 1; i >= 0; i--) undo.get(i).run();
        };
    }

    /**
     * The runs of {@link #policiesEndToEnd}: {--kv, --kv-quant, result name, the run's switches ({@link #applySwitches};
     * null: none)}; int4_kvq3 / tidal_int4_kvq3: the int4 cache with quantized attention variant 3 (the default before
     * variant 4, the tensor-core kernel, and for tidal the scalar scores kernel for the selection's keys). tidal runs with the backend's defaults, tidal_separate with the selection
     * op on its own (a second read of every key), tidal_fused with the selection from the attention's keys on one
     * stream.
     */
    static final String[][] E2E_POLICY_RUNS = {{"full", "none", "full", null},
            {"tidal:k=" + POLICY_K, "none", "tidal", null},
            {"tidal:k=" + POLICY_K, "none", "tidal_separate", "fusedSelect=false"},
            {"tidal:k=" + POLICY_K, "none", "tidal_fused", "fusedSelect=true,sideSelect=false"},
            {"quest:budget=" + POLICY_K, "none", "quest", "tokenpress.cuda.deviceQuest=false"},
            {"quest:budget=" + POLICY_K, "none", "quest_device", "tokenpress.cuda.deviceQuest=true"},
            {"tokenselect:k=" + POLICY_K, "none", "tokenselect", "tokenpress.cuda.deviceTokenSelect=false"},
            {"tokenselect:k=" + POLICY_K, "none", "tokenselect_device", "tokenpress.cuda.deviceTokenSelect=true"},
            {"full", "int4", "int4", null}, {"full", "int4", "int4_kvq3", "kvqAttention=3"},
            {"full", "none", "full_pipelined", null},
            // tidal with the pipelined loop too (TidalDecode is speculation-safe: the loop greedy decoding uses by default)
            {"tidal:k=" + POLICY_K, "none", "tidal_pipelined", null},
            // tidal over int4: the quantized cache's selection op (on by default; forced on here for the run)
            {"tidal:k=" + POLICY_K, "int4", "tidal_int4", "tokenpress.cuda.quantPolicyOps=true"},
            // the same with quantized attention v3 (the default v4's tensor-core scores mode makes the selection's keys)
            {"tidal:k=" + POLICY_K, "int4", "tidal_int4_kvq3", "tokenpress.cuda.quantPolicyOps=true,kvqAttention=3"}};

    /** The other policies of the e2epol table, each with a budget of POLICY_K tokens where it has one. */
    static final String[] POLICY_TABLE_SPECS = {"window:sink=4,budget=" + POLICY_K, "h2o:budget=" + POLICY_K,
            "a2sf:budget=" + POLICY_K + ",sink=4", "keyformer:budget=" + POLICY_K, "quest:budget=" + POLICY_K,
            "tokenselect:k=" + POLICY_K, "razor"};

    /**
     * Decode tokens/s of each policy in {@code specs} after {@code ctx} tokens of synthetic context written straight
     * into a cache of ctx + a few slots (the plain decode loop; the evicting policies cut the cache down to their
     * budget in the first, untimed steps; SnapKV is left out: it compresses a prompt, and a synthetic context has
     * none), with the KV bytes allocated and the share of them the occupied slots hold after the run (keys
     * e2e_pol_<ctx>_<policy>_tps, _speedup vs {@code fullTps} when > 0, _kv_bytes, _live_kv_bytes, _occupied_slots;
     * on CUDA each line ends with the backend's graph status, and the policies that read attention statistics run a
     * second time with the other statistics transfer: keys e2e_pol_<ctx>_<policy>_unpinned_* (one synchronizing copy
     * per row; the pinned buffer is the default) or _pinned_*).
     * A policy that fails prints FAILED with its message; the others go on.
     */
    public static void policyTable(Backend b, Llama m, LlamaConfig cfg, int ctx, String[] specs, int steps, double fullTps,
                                   PrintStream out) {
        policyTable(b, m, cfg, ctx, specs, DECODE_WARMUP, steps, fullTps, out);
    }

    /** {@link #policyTable} with {@code warmup} untimed steps before the timed ones (the CPU's JIT needs dozens). */
    public static void policyTable(Backend b, Llama m, LlamaConfig cfg, int ctx, String[] specs, int warmup, int steps,
                                   double fullTps, PrintStream out) {
        for (String spec : specs) {
            String name = spec.contains(":") ? spec.substring(0, spec.indexOf(':')) : spec;
            policyRun(b, m, cfg, ctx, spec, name, warmup, steps, fullTps, out);
            // the policies that bring statistics or scores to the host every layer, again with the other transfer
            // (CudaBackend.setPinnedStats, on by default: keys e2e_pol_<ctx>_<policy>_unpinned_* for one synchronizing
            // copy per row, or _pinned_* when the run above had them off)
            if (b instanceof CudaBackend gpu && STATS_POLICIES.contains(name)) {
                boolean pinned = gpu.pinnedStats();
                gpu.setPinnedStats(!pinned);
                try {
                    policyRun(b, m, cfg, ctx, spec, name + (pinned ? "_unpinned" : "_pinned"), warmup, steps, fullTps, out);
                } finally {
                    gpu.setPinnedStats(pinned);
                }
            }
        }
    }

    /**
     * {@code e2epol-cpu DIR [CONTEXTS [WARMUP [STEPS]]]}: {@link #policyTable} on the CPU backend after full at each
     * context (default 8192; 80 warm-up and 30 timed steps: the JIT needs dozens of steps to settle, and 40 were not always enough for TidalDecode), for a model written with {@code make-model --preset llama-1b-attention} (written there when DIR has none):
     * Llama-3.2-1B's attention shape with a small MLP, so a step's time is the attention plus the policy's host work.
     */
    static void policyTableCpu(Path dir, int[] contexts, int warmup, int steps, dev.tokenpress.backend.KvType kv, String[] specs, PrintStream out) {
        if (!Files.exists(dir.resolve(SafeTensors.SINGLE_FILE)))
            ModelWriter.write(dir, ModelWriter.Preset.LLAMA_1B_ATTENTION, 1, s -> System.err.println("make-model: " + s));
        LlamaConfig cfg = ConfigLoader.load(dir);
        try (SafeTensors st = SafeTensors.open(dir); dev.tokenpress.backend.cpu.CpuBackend cpu = new dev.tokenpress.backend.cpu.CpuBackend()) {
            out.println("device: " + cpu.description() + "; model " + dir + " (" + cfg.numLayers() + " layers, "
                    + cfg.numHeads() + " q-heads, " + cfg.numKvHeads() + " KV heads of " + cfg.headDim() + ", hidden " + cfg.hiddenSize() + ")");
            Llama m = new Llama(cfg, Weights.load(st, cfg, cpu, null), cpu, 256);
            out.println("warm-up steps " + warmup + ", timed steps " + steps);
            cpu.setKvTypes(kv, kv);
            out.println("KV cache: keys and values " + kv);
            for (int ctx : contexts) {
                double full = policyRun(cpu, m, cfg, ctx, "full", "full", warmup, steps, 0, out);
                if (specs.length > 0 && !specs[0].isEmpty()) policyTable(cpu, m, cfg, ctx, specs, warmup, steps, full, out);
            }
        }
    }

    /**
     * The policies of {@link #POLICY_TABLE_SPECS} whose decode steps bring attention statistics or the policy ops'
     * scores to the host.
     */
    static final java.util.Set<String> STATS_POLICIES = java.util.Set.of("h2o", "a2sf", "keyformer", "quest", "tokenselect");

    /** One row of {@link #policyTable}; returns its tokens/s (0 when it failed). */
    private static double policyRun(Backend b, Llama m, LlamaConfig cfg, int ctx, String spec, String name, int warmup, int steps,
                                    double fullTps, PrintStream out) {
        try {
            m.setPolicy(dev.tokenpress.kv.KvPolicies.parse(spec, cfg));
            try (KvCache cache = m.newCache(ctx + warmup + steps + 16)) {
                fillSynthetic(b, cfg, cache, ctx);
                b.synchronize();
                // the previous row's cache is garbage now, and on the CPU this one (550 MB at 8K for the 1B shape) is
                // young: collected before the steps rather than in a timed window (a young collection copying the
                // new cache took 270-370 ms, most of a 30-step window of an evicting policy)
                System.gc();
                m.setPipelinedGreedy(Boolean.FALSE);
                double tps = decodeTimed(b, m, cache, 1, ctx, warmup, steps, new int[1]);
                long occupied = 0;
                for (int l = 0; l < cache.layers(); l++)
                    for (int g = 0; g < cache.kvHeads(); g++) occupied += cache.occupied(l, g);
                long slots = (long) cache.layers() * cache.kvHeads() * cache.capacity();
                long live = (long) ((double) cache.bytes() * occupied / slots);
                out.printf(Locale.ROOT, "e2e %dK context, --kv %s%s: %.1f tokens/s%s; KV %d bytes allocated, %d in the %d occupied slots%s%n",
                        ctx / 1024, m.policy().spec(), name.endsWith("_unpinned") ? " (statistics copied per row, unpinned)" : name.endsWith("_pinned") ? " (pinned statistics)" : "", tps,
                        fullTps > 0 ? String.format(Locale.ROOT, " (%.2fx full)", tps / fullTps) : "",
                        cache.bytes(), live, occupied, b instanceof CudaBackend gpu ? "; " + gpu.graphStatus() : "");
                String k = "e2e_pol_" + ctx + "_" + name;
                result(out, k + "_tps", tps, "tokens/s");
                if (fullTps > 0) result(out, k + "_speedup", tps / fullTps, "x");
                result(out, k + "_kv_bytes", cache.bytes(), "B");
                result(out, k + "_live_kv_bytes", live, "B");
                result(out, k + "_occupied_slots", occupied, "");
                return tps;
            }
        } catch (RuntimeException e) {
            out.printf("e2e %dK context, --kv %s: FAILED %s%n", ctx / 1024, spec, e.getMessage());
            return 0;
        } finally {
            m.setPipelinedGreedy(null);
            m.setPolicy(dev.tokenpress.kv.KvPolicy.FULL);
        }
    }

    /**
     * CCE log-sum-exp of N rows of hidden size D over a V-entry bf16 LM head (tp_cce_lse, h rounded to bf16: keys
     * cce_*; split hi + lo h: cce_precise_*) against cuBLAS f32 logits (CudaBackend.matmul: h → bf16 + GEMM, key
     * gemm_ms) plus tp_lse_rows over them (naive_lsm_ms). Memory: bytes allocated per path (cce_bytes,
     * naive_bytes) and the cudaMemGetInfo drop (cce_meminfo_bytes, naive_meminfo_bytes). Variant 2 of tp_cce_lse
     * (bf16 h, its h → bf16 conversion included): keys cce_v2_* (time, TFLOP/s, ratios to the GEMM and to variant 1,
     * bytes, max differences to the naive path and to variant 1); variants 3 and 4 (D chunks of 64, 3 or 4 stages):
     * keys cce_v3_* and cce_v4_*. The chunked cuBLAS variant (CudaCce.GEMM) per chunk shape: keys
     * cce_gemm_ROWSxCOLS_* (fast and precise ms, ratio to the GEMM, bytes, max differences), cce_gemm_best_*.
     */
    public static void cce(CudaBackend gpu, int n, int d, int v, PrintStream out) {
        CudaCce.BenchResult r = CudaCce.bench(gpu, n, d, v, 3);
        double flop = 2.0 * n * d * v;
        out.printf("cce N=%d D=%d V=%d (%d vocabulary splits)%n", n, d, v, r.splits());
        out.println("| path | ms | TFLOP/s | device bytes |");
        out.println("|---|---|---|---|");
        out.printf("| tp_cce_lse (bf16 h) | %.3f | %.1f | %d |%n", r.cceMs(), flop / r.cceMs() / 1e9, r.cceBytes());
        out.printf("| tp_cce_lse precise (hi+lo h) | %.3f | %.1f | %d |%n", r.ccePreciseMs(), flop / r.ccePreciseMs() / 1e9, r.cceBytes());
        out.printf("| tp_cce_lse variant 2 (bf16 h, %d splits) | %.3f | %.1f | %d |%n", r.v2Splits(), r.cceV2Ms(), flop / r.cceV2Ms() / 1e9, r.v2Bytes());
        out.printf("| tp_cce_lse variant 3 (bf16 h, D chunks of 64, 3 stages) | %.3f | %.1f | %d |%n", r.cceV3Ms(), flop / r.cceV3Ms() / 1e9, r.v2Bytes());
        out.printf("| tp_cce_lse variant 4 (bf16 h, D chunks of 64, 4 stages) | %.3f | %.1f | %d |%n", r.cceV4Ms(), flop / r.cceV4Ms() / 1e9, r.v2Bytes());
        for (CudaCce.GemmRun g : r.gemm())
            out.printf("| cuBLAS in %d x %d chunks + tp_lse_chunk (bf16 h; precise %.3f ms) | %.3f | %.1f | %d |%n",
                    g.rows(), g.cols(), g.preciseMs(), g.ms(), flop / g.ms() / 1e9, g.bytes());
        out.printf("| cuBLAS GEMM f32 logits | %.3f | %.1f | %d |%n", r.gemmMs(), flop / r.gemmMs() / 1e9, r.naiveBytes());
        out.printf("| + naive log-softmax | %.3f | | |%n", r.naiveLsmMs());
        result(out, "cce_ms", r.cceMs(), "ms");
        result(out, "cce_precise_ms", r.ccePreciseMs(), "ms");
        result(out, "gemm_ms", r.gemmMs(), "ms");
        result(out, "naive_lsm_ms", r.naiveLsmMs(), "ms");
        result(out, "cce_vs_gemm", r.cceMs() / r.gemmMs(), "x");
        result(out, "cce_precise_vs_gemm", r.ccePreciseMs() / r.gemmMs(), "x");
        result(out, "cce_vs_gemm_plus_lsm", r.cceMs() / (r.gemmMs() + r.naiveLsmMs()), "x");
        result(out, "cce_tflops", flop / r.cceMs() / 1e9, "TFLOP/s");
        result(out, "gemm_tflops", flop / r.gemmMs() / 1e9, "TFLOP/s");
        result(out, "cce_bytes", r.cceBytes(), "B");
        result(out, "naive_bytes", r.naiveBytes(), "B");
        result(out, "cce_meminfo_bytes", r.cceMemDelta(), "B");
        result(out, "naive_meminfo_bytes", r.naiveMemDelta(), "B");
        result(out, "cce_vs_naive_max_lse_diff", r.maxLseDiff(), "");
        result(out, "cce_vs_naive_max_target_diff", r.maxTargetDiff(), "");
        result(out, "cce_v2_ms", r.cceV2Ms(), "ms");
        result(out, "cce_v3_ms", r.cceV3Ms(), "ms");
        result(out, "cce_v3_vs_gemm", r.cceV3Ms() / r.gemmMs(), "x");
        result(out, "cce_v3_vs_naive_max_lse_diff", r.v3MaxLseDiff(), "");
        result(out, "cce_v4_ms", r.cceV4Ms(), "ms");
        result(out, "cce_v4_vs_gemm", r.cceV4Ms() / r.gemmMs(), "x");
        result(out, "cce_v4_vs_naive_max_lse_diff", r.v4MaxLseDiff(), "");
        result(out, "cce_v2_tflops", flop / r.cceV2Ms() / 1e9, "TFLOP/s");
        result(out, "cce_v2_vs_gemm", r.cceV2Ms() / r.gemmMs(), "x");
        result(out, "cce_v2_vs_v1", r.cceV2Ms() / r.cceMs(), "x");
        result(out, "cce_v2_bytes", r.v2Bytes(), "B");
        result(out, "cce_v2_splits", r.v2Splits(), "");
        result(out, "cce_v2_vs_naive_max_lse_diff", r.v2MaxLseDiff(), "");
        result(out, "cce_v2_vs_naive_max_target_diff", r.v2MaxTargetDiff(), "");
        result(out, "cce_v2_vs_v1_max_lse_diff", r.v2VsV1MaxLseDiff(), "");
        CudaCce.GemmRun best = null;
        for (CudaCce.GemmRun g : r.gemm()) {
            String k = "cce_gemm_" + g.rows() + "x" + g.cols();
            result(out, k + "_ms", g.ms(), "ms");
            result(out, k + "_precise_ms", g.preciseMs(), "ms");
            result(out, k + "_vs_gemm", g.ms() / r.gemmMs(), "x");
            result(out, k + "_bytes", g.bytes(), "B");
            result(out, k + "_vs_naive_max_lse_diff", g.maxLseDiff(), "");
            result(out, k + "_vs_naive_max_target_diff", g.maxTargetDiff(), "");
            result(out, k + "_overlap_ms", g.overlapMs(), "ms");
            result(out, k + "_overlap_vs_gemm", g.overlapMs() / r.gemmMs(), "x");
            result(out, k + "_overlap_vs_plain_max_diff", g.overlapMaxDiff(), "");
            if (!Double.isNaN(g.ms()) && (best == null || g.ms() < best.ms())) best = g;
        }
        if (best != null) {
            out.printf("cce gemm variant: best chunk %d x %d%n", best.rows(), best.cols());
            result(out, "cce_gemm_best_ms", best.ms(), "ms");
            result(out, "cce_gemm_best_vs_gemm", best.ms() / r.gemmMs(), "x");
        }
    }

    /**
     * The kernel paths e2e compares in one run: the default (PDL on where supported); _prefetch: the default plus
     * decode attention v3's L2 prefetch of 256 rows per block before the PDL wait; _gemvpf16 / _gemvpf64: that plus
     * the GEMVs' L2 prefetch of their rows for launches of at most 16 / 64 MiB of weights; _fusednorm: RMSNorm
     * inside the GEMVs; _nopdl: PDL off; _cublas: the first path (cuBLAS, separate merge, no decode fusions).
     */
    private record Paths(String suffix, boolean gemv, boolean fusedMerge, boolean decodeFusions, boolean pdl,
                         boolean fusedNorm, int attention, int prefetch, int gemvPrefetchMib) {
        Paths(String suffix, boolean gemv, boolean fusedMerge, boolean decodeFusions, boolean pdl, boolean fusedNorm,
              int attention) {
            this(suffix, gemv, fusedMerge, decodeFusions, pdl, fusedNorm, attention, 0, 0);
        }
    }

    private static final Paths[] E2E_PATHS = {new Paths("", true, true, true, true, false, 3),
            new Paths("_prefetch", true, true, true, true, false, 3, 256, 0),
            new Paths("_gemvpf16", true, true, true, true, false, 3, 256, 16),
            new Paths("_gemvpf64", true, true, true, true, false, 3, 256, 64),
            new Paths("_fusednorm", true, true, true, true, true, 3),
            new Paths("_nopdl", true, true, true, false, false, 3),
            new Paths("_cublas", false, false, false, false, false, 3)};

    private static void usePaths(CudaBackend gpu, Paths p) {
        gpu.setGemvEnabled(p.gemv());
        gpu.setFusedAttnMerge(p.fusedMerge());
        gpu.setDecodeFusions(p.decodeFusions());
        gpu.setPdl(p.pdl() && gpu.pdlSupported());
        gpu.setFusedNorm(p.fusedNorm());
        gpu.setAttentionVariant(p.attention());
        gpu.setAttentionPrefetch(p.prefetch());
        gpu.setGemvPrefetch(p.gemvPrefetchMib());
    }

    /**
     * Decode tokens/s of the llama-1b-shape model at short and 32K context, for each of {@link #E2E_PATHS} on the
     * same model and cache (keys e2e_* for the default path (PDL on where supported), e2e_*_nopdl for it with PDL
     * off and e2e_*_pdl_speedup for the ratio default / no PDL, e2e_*_cublas for cuBLAS matmuls + separate
     * attention merge); the paths run back to back on one cache, so the second sees a context longer by one run's
     * steps.
     */
    public static void endToEnd(CudaBackend gpu, double copyBw, Path dir, int shortSteps, int longSteps,
                                java.util.Set<String> parts, PrintStream out) {
        if (!Files.exists(dir.resolve(SafeTensors.SINGLE_FILE))) {
            long t0 = System.nanoTime();
            ModelWriter.write(dir, ModelWriter.Preset.LLAMA_1B_SHAPE, 1, s -> System.err.println("make-model: " + s));
            result(out, "model_generate_s", (System.nanoTime() - t0) / 1e9, "s");
        }
        LlamaConfig cfg = ConfigLoader.load(dir);
        int longCtx = 32768;
        try (SafeTensors st = SafeTensors.open(dir)) {
            long t0 = System.nanoTime();
            Weights w = Weights.load(st, cfg, gpu, null);
            result(out, "model_upload_s", (System.nanoTime() - t0) / 1e9, "s");
            long weightBytes = st.totalBytes();
            if (!cfg.tieWordEmbeddings()) weightBytes -= (long) cfg.vocabSize() * cfg.hiddenSize() * 2; // embedding rows are gathered, not streamed
            Llama m = new Llama(cfg, w, gpu, 256);
            int runs = E2E_PATHS.length;
            if (parts.contains("short")) try (KvCache cache = m.newCache(64 + runs * decodeSlots(shortSteps, true) + 2 * (DECODE_WARMUP + shortSteps) + 16)) {
                int[] prompt = new int[32];
                for (int i = 0; i < prompt.length; i++) prompt[i] = (i * 97 + 13) % cfg.vocabSize();
                m.prefill(cache, prompt, 0, false, null);
                int token = m.argmax(), pos = prompt.length;
                double base = 0;
                for (Paths p : E2E_PATHS) {
                    usePaths(gpu, p);
                    double tps = decode(gpu, m, cache, token, pos, shortSteps, out, "short" + p.suffix());
                    pos += decodeSlots(shortSteps, true);
                    double kvBytes = (double) cfg.kvBytesPerToken(2) * (pos - shortSteps / 2.0);
                    double roof = copyBw / (weightBytes + kvBytes);
                    out.printf("e2e short context (32-token prompt, %d decode steps) [%s]: %.1f tokens/s, roofline %.1f tokens/s (%.1f%%); %s%n",
                            shortSteps, gpu.kernelPaths(), tps, roof, 100 * tps / roof, gpu.graphStatus());
                    result(out, "e2e_short_tps" + p.suffix(), tps, "tokens/s");
                    result(out, "e2e_short_roofline_tps" + p.suffix(), roof, "tokens/s");
                    result(out, "e2e_short_pct_roofline" + p.suffix(), 100 * tps / roof, "%");
                    if (p.suffix().isEmpty()) base = tps;
                    if (p.suffix().equals("_nopdl") && base > 0) result(out, "e2e_short_pdl_speedup", base / tps, "x");
                    if (p.suffix().equals("_fusednorm") && base > 0) result(out, "e2e_short_fusednorm_speedup", tps / base, "x");
                    if (p.suffix().startsWith("_prefetch") || p.suffix().startsWith("_gemvpf"))
                        if (base > 0) result(out, "e2e_short" + p.suffix() + "_speedup", tps / base, "x");
                }
            }
            usePaths(gpu, E2E_PATHS[0]); // the default kernel paths (the short runs end on the last of E2E_PATHS)
            if (parts.contains("short")) try (KvCache cache = m.newCache(64 + 2 * (DECODE_WARMUP + shortSteps) + 16)) {
                int[] prompt = new int[32];
                for (int i = 0; i < prompt.length; i++) prompt[i] = (i * 97 + 13) % cfg.vocabSize();
                m.prefill(cache, prompt, 0, false, null);
                int pos = prompt.length;
                double[] tps = new double[2];
                for (int run = 0; run < 2; run++) { // the top candidates from the device, then the whole row read
                    tps[run] = decodeSampled(gpu, m, cfg.vocabSize(), cache, pos, shortSteps, run == 0);
                    pos += DECODE_WARMUP + shortSteps;
                }
                out.printf("e2e short context, sampled (llama.cpp's default chain: top-k 40, top-p 0.95, min-p 0.05, temp 0.8; plain loop): "
                        + "%.1f tokens/s from the device's top candidates, %.1f reading the whole row (%.2fx)%n", tps[0], tps[1], tps[0] / tps[1]);
                result(out, "e2e_short_sampled_tps", tps[0], "tokens/s");
                result(out, "e2e_short_sampled_wholerow_tps", tps[1], "tokens/s");
                result(out, "e2e_short_sampled_speedup", tps[0] / tps[1], "x");
            }
            if (parts.contains("batch")) endToEndBatch(gpu, copyBw, m, cfg, weightBytes, shortSteps, out);
            // 32K context, written directly into the cache
            if (parts.contains("long")) try (KvCache cache = m.newCache(longCtx + runs * decodeSlots(longSteps, true) + 16)) {
                long f0 = System.nanoTime();
                fillSynthetic(gpu, cfg, cache, longCtx);
                gpu.synchronize();
                result(out, "e2e_32k_fill_s", (System.nanoTime() - f0) / 1e9, "s");
                int pos = longCtx;
                double base = 0;
                for (Paths p : E2E_PATHS) {
                    usePaths(gpu, p);
                    double tps = decode(gpu, m, cache, 1, pos, longSteps, out, "32k" + p.suffix());
                    pos += decodeSlots(longSteps, true);
                    double ctx = pos - longSteps / 2.0;
                    double kvBytes = (double) cfg.kvBytesPerToken(2) * ctx
                            + (double) cfg.numLayers() * cfg.numKvHeads() * ctx * 4;
                    double roof = copyBw / (weightBytes + kvBytes);
                    out.printf("e2e 32K context (%d decode steps) [%s]: %.1f tokens/s, roofline %.1f tokens/s (%.1f%%); %s%n",
                            longSteps, gpu.kernelPaths(), tps, roof, 100 * tps / roof, gpu.graphStatus());
                    result(out, "e2e_32k_tps" + p.suffix(), tps, "tokens/s");
                    result(out, "e2e_32k_roofline_tps" + p.suffix(), roof, "tokens/s");
                    result(out, "e2e_32k_pct_roofline" + p.suffix(), 100 * tps / roof, "%");
                    if (p.suffix().isEmpty()) base = tps;
                    if (p.suffix().equals("_nopdl") && base > 0) result(out, "e2e_32k_pdl_speedup", base / tps, "x");
                    if (p.suffix().equals("_fusednorm") && base > 0) result(out, "e2e_32k_fusednorm_speedup", tps / base, "x");
                    if (p.suffix().startsWith("_prefetch") || p.suffix().startsWith("_gemvpf"))
                        if (base > 0) result(out, "e2e_32k" + p.suffix() + "_speedup", tps / base, "x");
                }
            }
            usePaths(gpu, E2E_PATHS[0]);
            result(out, "weight_bytes_per_token", weightBytes / 1e9, "GB");
            if (parts.contains("q8")) endToEndQ8(gpu, copyBw, st, cfg, shortSteps, out);
        }
    }

    /**
     * Continuous batching at short context (keys e2e_batch{S}_*, and e2e_batch4_copies_* through one-row copies
     * instead of row views; 4 sequences run copies, views, copies, views, the first two reported as *_first): S
     * sequences with their own caches after a 32-token
     * prompt each, decoded together with {@link Llama#decodeBatch} (greedy on the device) for {@code steps} steps;
     * tokens/s counts every sequence's tokens; the roofline is S tokens per pass over the weights. Eager launches,
     * then 4, 16 and 64 sequences again with the batched steps captured into CUDA graphs ({@code
     * CudaBackend.setBatchGraphs}; keys e2e_batch{S}_graphs_*, with the graph status), with the caches in one pool and
     * one store + attention call per step and layer ({@code setBatchAttention}; keys e2e_batch{S}_pooled_*), and with
     * both (e2e_batch{S}_pooled_graphs_*). A failure is reported, not thrown.
     */
    private static void endToEndBatch(CudaBackend gpu, double copyBw, Llama m, LlamaConfig cfg, long weightBytes, int steps,
                                      PrintStream out) {
        // 4 sequences through one-row copies (the path before row views) and through views, twice each in turn (the
        // second of each reported under its key, the first warms the code paths), then 16 and 64 with views
        int[] seqsOf = {4, 4, 4, 4, 16, 64, 4, 16, 64, 4, 16, 64, 4, 16, 64};
        boolean graphsBefore = gpu.batchGraphs(), pooledBefore = gpu.batchAttention();
        for (int run = 0; run < seqsOf.length; run++) {
            int seqs = seqsOf[run];
            // runs 6-8: batch graphs; 9-11: pooled caches with batched attention; 12-14: both
            boolean views = run != 0 && run != 2, graphs = run >= 6 && run < 9 || run >= 12, pooled = run >= 9;
            m.setBatchRowViews(views);
            gpu.setBatchGraphs(graphs);
            gpu.setBatchAttention(pooled);
            String key = "e2e_batch" + seqs + (views ? "" : "_copies") + (pooled ? "_pooled" : "") + (graphs ? "_graphs" : "")
                    + (run < 2 ? "_first" : "");
            KvCache[] caches = new KvCache[seqs];
            try {
                Llama.BatchRow[] batch = new Llama.BatchRow[seqs];
                int[] prompt = new int[32];
                int capacity = prompt.length + steps + DECODE_WARMUP + 8;
                KvCache[] pool = pooled ? m.newCaches(capacity, seqs) : null;
                if (pool != null) System.arraycopy(pool, 0, caches, 0, seqs);
                for (int i = 0; i < seqs; i++) {
                    if (pool == null) caches[i] = m.newCache(capacity);
                    for (int j = 0; j < prompt.length; j++) prompt[j] = (j * 97 + 13 * i + 5) % cfg.vocabSize();
                    m.prefill(caches[i], prompt, 0, false, null);
                    batch[i] = new Llama.BatchRow(caches[i], null, m.argmax(), prompt.length);
                }
                long t0 = 0;
                for (int s = 0; s < DECODE_WARMUP + steps; s++) {
                    if (s == DECODE_WARMUP) {
                        gpu.synchronize();
                        t0 = System.nanoTime();
                    }
                    m.decodeBatch(batch);
                    int[] next = m.batchArgmaxAll();
                    for (int t : next) if (t < 0) throw new IllegalStateException("a sequence's KV cache is full");
                    for (int i = 0; i < seqs; i++)
                        batch[i] = new Llama.BatchRow(caches[i], null, next[i], batch[i].position() + 1);
                }
                gpu.synchronize();
                double tps = (double) steps * seqs / ((System.nanoTime() - t0) / 1e9);
                double roof = copyBw / weightBytes * seqs;
                out.printf("e2e continuous batching, %d sequences (%d steps)%s%s: %.1f tokens/s (%.1f per sequence), weight roofline %.1f tokens/s%s%n",
                        seqs, steps, views ? "" : ", one-row copies", pooled ? ", pooled caches + batched attention" : "", tps,
                        tps / seqs, roof, graphs ? "; batch graphs, " + gpu.graphStatus() : "");
                result(out, key + "_tps", tps, "tokens/s");
                result(out, key + "_per_seq_tps", tps / seqs, "tokens/s");
                result(out, key + "_pct_roofline", 100 * tps / roof, "%");
            } catch (RuntimeException e) {
                out.println("e2e continuous batching, " + seqs + " sequences: FAILED " + e.getMessage());
            } finally {
                for (KvCache c : caches) if (c != null) c.close();
                m.setBatchRowViews(true);
                gpu.setBatchGraphs(graphsBefore);
                gpu.setBatchAttention(pooledBefore);
            }
        }
        // 16 sequences sampled (llama.cpp's default chain, one chain per sequence): the rows' top candidates read back
        // together (Parallel's path) against every row's logits read back and sampled whole
        int seqs = 16;
        double[] tps = new double[2];
        int[][][] drawn = new int[2][seqs][DECODE_WARMUP + steps];
        for (int run = 0; run < 2; run++) {
            KvCache[] caches = new KvCache[seqs];
            try {
                Llama.BatchRow[] batch = new Llama.BatchRow[seqs];
                dev.tokenpress.sample.SamplerChain[] chains = new dev.tokenpress.sample.SamplerChain[seqs];
                int[] prompt = new int[32];
                for (int i = 0; i < seqs; i++) {
                    caches[i] = m.newCache(prompt.length + steps + DECODE_WARMUP + 8);
                    for (int j = 0; j < prompt.length; j++) prompt[j] = (j * 97 + 13 * i + 5) % cfg.vocabSize();
                    m.prefill(caches[i], prompt, 0, false, null);
                    chains[i] = dev.tokenpress.sample.SamplerChain.create(dev.tokenpress.sample.SamplingOptions.defaults().withSeed(i), cfg.vocabSize());
                    batch[i] = new Llama.BatchRow(caches[i], null, m.argmax(), prompt.length);
                }
                long t0 = 0;
                for (int st = 0; st < DECODE_WARMUP + steps; st++) {
                    if (st == DECODE_WARMUP) {
                        gpu.synchronize();
                        t0 = System.nanoTime();
                    }
                    m.decodeBatch(batch);
                    int[] next = new int[seqs];
                    if (run == 0) {
                        int[] k = new int[seqs];
                        float[][] values = new float[seqs][];
                        for (int i = 0; i < seqs; i++) values[i] = new float[k[i] = chains[i].candidateCount()];
                        int[][] top = m.batchTopLogits(k, values);
                        for (int i = 0; i < seqs; i++) {
                            next[i] = chains[i].sampleCandidates(top[i], values[i], k[i]);
                            if (next[i] < 0) next[i] = chains[i].sample(m.batchLogits(i));
                        }
                    } else {
                        float[][] rows = m.batchLogitsAll();
                        for (int i = 0; i < seqs; i++) next[i] = chains[i].sample(rows[i]);
                    }
                    for (int i = 0; i < seqs; i++) {
                        chains[i].accept(next[i]);
                        drawn[run][i][st] = next[i];
                        batch[i] = new Llama.BatchRow(caches[i], null, next[i], batch[i].position() + 1);
                    }
                }
                gpu.synchronize();
                tps[run] = (double) steps * seqs / ((System.nanoTime() - t0) / 1e9);
            } catch (RuntimeException e) {
                out.println("e2e continuous batching, " + seqs + " sequences sampled: FAILED " + e.getMessage());
                return;
            } finally {
                for (KvCache c : caches) if (c != null) c.close();
            }
        }
        out.printf("e2e continuous batching, %d sequences sampled (llama.cpp's default chain): %.1f tokens/s from the rows' top candidates, "
                + "%.1f reading every row whole (%.2fx)%n", seqs, tps[0], tps[1], tps[0] / tps[1]);
        result(out, "e2e_batch16_sampled_tps", tps[0], "tokens/s");
        result(out, "e2e_batch16_sampled_wholerow_tps", tps[1], "tokens/s");
        result(out, "e2e_batch16_sampled_speedup", tps[0] / tps[1], "x");
        // the same prompts and seeds: the candidates must draw the tokens the whole rows draw
        result(out, "e2e_batch16_sampled_same_tokens", java.util.Arrays.deepEquals(drawn[0], drawn[1]) ? 1 : 0, "");
    }

    /**
     * The short-context run of {@link #endToEnd} with the weights quantized to Q8_0 (a second copy on the device;
     * keys e2e_short_q8_* for the default Q8 GEMV variant and e2e_short_q8_*_vN for the others): half the bytes a step
     * streams. A failure is reported, not thrown.
     */
    private static void endToEndQ8(CudaBackend gpu, double copyBw, SafeTensors st, LlamaConfig cfg, int shortSteps,
                                   PrintStream out) {
        try {
            gpu.setWeightType(dev.tokenpress.backend.WeightType.Q8_0);
            long t0 = System.nanoTime();
            Weights w = Weights.load(st, cfg, gpu, null);
            result(out, "model_upload_q8_s", (System.nanoTime() - t0) / 1e9, "s");
            long bytes = w.lmHead().bytes();
            for (Weights.Layer l : w.layers())
                for (dev.tokenpress.backend.Tensor t : new dev.tokenpress.backend.Tensor[] {l.wq(), l.wk(), l.wv(), l.wo(), l.wGate(), l.wUp(), l.wDown()})
                    bytes += t.bytes();
            Llama m = new Llama(cfg, w, gpu, 256);
            int variant = gpu.q8GemvVariant();
            try {
                int[] order = java.util.stream.IntStream.concat(java.util.stream.IntStream.of(variant),
                        java.util.stream.IntStream.rangeClosed(1, 4).filter(x -> x != variant)).toArray();
                for (int v : order) { // the default variant first, then the others
                    gpu.setQ8GemvVariant(v);
                    String sfx = v == variant ? "" : "_v" + v;
                    try (KvCache cache = m.newCache(64 + decodeSlots(shortSteps, true) + 16)) {
                        int[] prompt = new int[32];
                        for (int i = 0; i < prompt.length; i++) prompt[i] = (i * 97 + 13) % cfg.vocabSize();
                        m.prefill(cache, prompt, 0, false, null);
                        double tps = decode(gpu, m, cache, m.argmax(), prompt.length, shortSteps, out, "short_q8" + sfx);
                        double roof = copyBw / (bytes + (double) cfg.kvBytesPerToken(2) * (prompt.length + shortSteps / 2.0));
                        out.printf("e2e short context, q8_0 weights, Q8 GEMV v%d (%d decode steps) [%s]: %.1f tokens/s, roofline %.1f tokens/s (%.1f%%); %s%n",
                                v, shortSteps, gpu.kernelPaths(), tps, roof, 100 * tps / roof, gpu.graphStatus());
                        result(out, "e2e_short_q8_tps" + sfx, tps, "tokens/s");
                        result(out, "e2e_short_q8_roofline_tps" + sfx, roof, "tokens/s");
                        result(out, "e2e_short_q8_pct_roofline" + sfx, 100 * tps / roof, "%");
                    }
                }
            } finally {
                gpu.setQ8GemvVariant(variant);
            }
            result(out, "weight_bytes_per_token_q8", bytes / 1e9, "GB");
        } catch (RuntimeException e) {
            out.println("e2e short context, q8_0 weights: FAILED " + e.getMessage());
        } finally {
            gpu.setWeightType(dev.tokenpress.backend.WeightType.AS_STORED);
        }
    }

    /** Untimed decode steps before each timed run (graph capture, warm caches). */
    private static final int DECODE_WARMUP = 4;

    private static double decode(CudaBackend gpu, Llama m, KvCache cache, int token, int pos, int steps) {
        return decode(gpu, m, cache, token, pos, steps, null, null);
    }

    /**
     * Greedy decode of {@code steps} tokens with {@link Llama#decodeGreedy} after {@link #DECODE_WARMUP} untimed
     * steps, from {@code token} at {@code pos}; returns tokens/s (wall clock, the backend synchronized) and leaves
     * the last token in {@code last[0]}.
     */
    static double decodeTimed(Backend b, Llama m, KvCache cache, int token, int pos, int steps, int[] last) {
        return decodeTimed(b, m, cache, token, pos, DECODE_WARMUP, steps, last);
    }

    /** {@link #decodeTimed} after {@code warmup} untimed steps. */
    static double decodeTimed(Backend b, Llama m, KvCache cache, int token, int pos, int warmup, int steps, int[] last) {
        last[0] = token;
        java.util.function.IntPredicate keep = t -> {
            last[0] = t;
            return true;
        };
        m.decodeGreedy(cache, last[0], pos, warmup, keep);
        pos += warmup;
        b.synchronize();
        long t0 = System.nanoTime();
        m.decodeGreedy(cache, last[0], pos, steps, keep);
        b.synchronize();
        return steps / ((System.nanoTime() - t0) / 1e9);
    }

    /**
     * Sampled decode (llama.cpp's default chain, seed 1) of {@code steps} tokens after {@link #DECODE_WARMUP} untimed
     * ones, one step at a time as generate's sampled loop runs: decodeStep, then {@link Llama#sample} — the chain
     * sampling from the device's top candidates ({@code candidates}) or from the whole row of logits read back
     * ({@code -Dtokenpress.candidateSampling=false}); returns tokens/s.
     */
    private static double decodeSampled(CudaBackend gpu, Llama m, int vocab, KvCache cache, int pos, int steps, boolean candidates) {
        String was = System.getProperty("tokenpress.candidateSampling");
        System.setProperty("tokenpress.candidateSampling", Boolean.toString(candidates));
        try {
            dev.tokenpress.sample.SamplerChain chain = dev.tokenpress.sample.SamplerChain.create(
                    dev.tokenpress.sample.SamplingOptions.defaults().withSeed(1), vocab);
            long t0 = 0;
            for (int i = 0; i < DECODE_WARMUP + steps; i++) {
                if (i == DECODE_WARMUP) {
                    gpu.synchronize();
                    t0 = System.nanoTime();
                }
                int t = m.sample(chain);
                chain.accept(t);
                m.decodeStep(cache, t, pos++);
            }
            m.sample(chain); // the last step's token: its wait ends the timing
            return steps / ((System.nanoTime() - t0) / 1e9);
        } finally {
            if (was == null) System.clearProperty("tokenpress.candidateSampling");
            else System.setProperty("tokenpress.candidateSampling", was);
        }
    }

    /** Cache positions {@link #decode} uses for {@code steps} timed steps (with the plain-loop breakdown or not). */
    private static int decodeSlots(int steps, boolean breakdown) {
        return (steps + DECODE_WARMUP) * (breakdown ? 2 : 1);
    }

    /**
     * Greedy decode of {@code steps} tokens with {@link Llama#decodeGreedy} (pipelined where the backend keeps the
     * token on the device) after a few warm-up steps; returns tokens/s (wall clock). With {@code out} non-null it
     * then runs the plain loop (decodeStep, argmax, one step at a time) and prints where its step time goes (key
     * prefix {@code key}): the host's decodeStep call (slot bookkeeping, graph dry run, step values, launch), the
     * argmax call (device argmax, copy, wait for the step), and the device time of one step from back-to-back
     * replays of its graph, beside the pipelined figure.
     */
    private static double decode(CudaBackend gpu, Llama m, KvCache cache, int token, int pos, int steps,
                                 PrintStream out, String key) {
        int[] last = {token};
        double tps = decodeTimed(gpu, m, cache, token, pos, steps, last);
        pos += DECODE_WARMUP + steps;
        if (out == null) return tps;

        m.setPipelinedGreedy(false);
        try {
            int tok = last[0];
            for (int i = 0; i < DECODE_WARMUP; i++) {
                m.decodeStep(cache, tok, pos++);
                tok = m.argmax();
            }
            gpu.synchronize();
            long p0 = System.nanoTime(), hostNs = 0, argmaxNs = 0;
            for (int i = 0; i < steps; i++) {
                long a = System.nanoTime();
                m.decodeStep(cache, tok, pos++);
                long b = System.nanoTime();
                tok = m.argmax();
                hostNs += b - a;
                argmaxNs += System.nanoTime() - b;
            }
            gpu.synchronize();
            double plainTps = steps / ((System.nanoTime() - p0) / 1e9);
            double replayUs = gpu.timeGraphReplays(32);
            double stepUs = 1e6 / plainTps;
            out.printf("e2e step breakdown [%s]: pipelined %.1f tokens/s (%.1f µs/step); plain loop %.1f tokens/s = decodeStep call %.1f + argmax call %.1f µs/step; graph replay alone %.1f µs (device busy %.0f%% of the plain loop, %.0f%% pipelined)%n",
                    key, tps, 1e6 / tps, plainTps, hostNs / 1e3 / steps, argmaxNs / 1e3 / steps, replayUs,
                    100 * replayUs / stepUs, 100 * replayUs * tps / 1e6);
            result(out, "e2e_" + key + "_plain_tps", plainTps, "tokens/s");
            result(out, "e2e_" + key + "_pipelined_speedup", tps / plainTps, "x");
            result(out, "e2e_" + key + "_plain_step_us", stepUs, "us");
            result(out, "e2e_" + key + "_decodestep_call_us", hostNs / 1e3 / steps, "us");
            result(out, "e2e_" + key + "_argmax_call_us", argmaxNs / 1e3 / steps, "us");
            result(out, "e2e_" + key + "_graph_replay_us", replayUs, "us");
        } finally {
            m.setPipelinedGreedy(null);
        }
        return tps;
    }

    /** Positions 0..ctx-1 in every layer and KV head, random bf16 keys/values. */
    static void fillSynthetic(Backend gpu, LlamaConfig cfg, KvCache cache, int ctx) {
        int chunk = 4096, kvDim = cfg.kvDim();
        Tensor k = gpu.allocate(chunk, kvDim), v = gpu.allocate(chunk, kvDim);
        SplittableRandom r = new SplittableRandom(7);
        float[] data = new float[chunk * kvDim];
        for (int i = 0; i < data.length; i++) data[i] = (float) (r.nextDouble() * 2 - 1);
        gpu.upload(k, data);
        for (int i = 0; i < data.length; i++) data[i] = (float) (r.nextDouble() * 2 - 1);
        gpu.upload(v, data);
        for (int done = 0; done < ctx; done += chunk) {
            int m = Math.min(chunk, ctx - done);
            int[] pos = new int[m];
            for (int i = 0; i < m; i++) pos[i] = done + i;
            for (int l = 0; l < cfg.numLayers(); l++) {
                int[][] slots = new int[cfg.numKvHeads()][];
                for (int g = 0; g < cfg.numKvHeads(); g++) slots[g] = cache.allocate(l, g, pos, m);
                gpu.storeKv(cache, l, k, v, slots, m);
            }
        }
    }

    private static void result(PrintStream out, String key, double value, String unit) {
        out.printf("RESULT %s %.4f %s%n", key, value, unit);
    }
}
