package dev.tokenpress.backend.cuda;

import dev.tokenpress.backend.Backend;
import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import dev.tokenpress.model.Weights;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Whole-model parity: a generated bf16 model (hd 64, GQA 4 and hd 128, GQA 1) through CPU and CUDA, prefill then
 * 32 decode steps fed with the CPU's greedy tokens; logits compared by normalized MSE at every step. The CUDA
 * decode runs once with CUDA graphs (captured/replayed steps) and once eagerly, which must agree almost bitwise;
 * where the device supports Programmatic Dependent Launch, both again with PDL on, which must equal the PDL-off
 * runs (the same arithmetic; only the launch overlap differs).
 */
class CudaModelParityTest {
    @TempDir
    Path tmp;

    static LlamaConfig config(int hidden, int heads, int kvHeads, int headDim, int layers) {
        return new LlamaConfig("LlamaForCausalLM", "llama", hidden, 4 * hidden, layers, heads, kvHeads, headDim, 2048,
                1e-5f, 500000f, new LlamaConfig.RopeScaling("llama3", 32f, 1f, 4f, 8192), 131072, true, false, null,
                -1, List.of(), "bfloat16");
    }

    @Test
    void gqa4HeadDim64() {
        run(config(512, 8, 2, 64, 4), "gqa4-hd64");
    }

    @Test
    void mhaHeadDim128() {
        run(config(512, 4, 4, 128, 3), "mha-hd128");
    }

    /**
     * Qwen3 with YaRN scaling (factor 4 over 32 original positions, so the prompt runs past it): q_norm / k_norm per
     * head before RoPE (rmsnormHeads inside the captured decode step) and cos/sin times the attention factor.
     */
    @Test
    void qwen3QkNormYarnHeadDim128() {
        LlamaConfig c = config(512, 8, 2, 128, 3);
        run(new LlamaConfig("Qwen3ForCausalLM", "qwen3", c.hiddenSize(), c.intermediateSize(), c.numLayers(), c.numHeads(),
                c.numKvHeads(), c.headDim(), c.vocabSize(), 1e-6f, 1000000f, LlamaConfig.RopeScaling.yarn(4f, 32), 40960,
                true, false, null, -1, List.of(), "bfloat16"), "qwen3-yarn-hd128");
    }

    void run(LlamaConfig cfg0, String name) {
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        Path dir = tmp.resolve(name);
        LlamaConfig cfg = ModelWriter.write(dir, cfg0, 11, s -> {});
        int prompt = 50, steps = 32, ctx = 128;
        int[] tokens = new int[prompt];
        for (int i = 0; i < prompt; i++) tokens[i] = (i * 37 + 5) % cfg.vocabSize();
        float[][] ref = new float[steps + 1][];
        int[] next = new int[steps];
        try (SafeTensors st = SafeTensors.open(dir); Backend cpu = new CpuBackend()) {
            Llama m = new Llama(cfg, Weights.load(st, cfg, cpu, null), cpu, 64);
            KvCache cache = m.newCache(ctx);
            m.prefill(cache, tokens, 0, false, null);
            ref[0] = m.logits();
            for (int s = 0; s < steps; s++) {
                next[s] = m.argmax();
                m.decodeStep(cache, next[s], prompt + s);
                ref[s + 1] = m.logits();
            }
        }
        // pass 0: graphs, 1: eager, 2: graphs with the decode fusions off (QKV, gate/up + SwiGLU, RoPE + KV
        // store, short-context attention); 3: graphs with PDL, 4: eager with PDL (only where PDL is supported);
        // 5: graphs with RMSNorm fused into the GEMVs and the residual add into the o/down GEMVs (fusedNorm)
        float[][][] got = new float[6][][];
        String[] status = new String[6];
        int[] replays = new int[6];
        for (int pass = 0; pass < 6; pass++) {
            try (SafeTensors st = SafeTensors.open(dir)) {
                CudaBackend gpu = CudaBackend.open();
                try {
                    if ((pass == 3 || pass == 4) && !gpu.pdlSupported()) continue;
                    gpu.setGraphsEnabled(pass != 1 && pass != 4);
                    if (pass == 2) gpu.setDecodeFusions(false);
                    gpu.setPdl(pass == 3 || pass == 4);
                    gpu.setFusedNorm(pass == 5);
                    Llama m = new Llama(cfg, Weights.load(st, cfg, gpu, null), gpu, 64);
                    KvCache cache = m.newCache(ctx);
                    got[pass] = new float[steps + 1][];
                    m.prefill(cache, tokens, 0, false, null);
                    got[pass][0] = m.logits();
                    for (int s = 0; s < steps; s++) {
                        m.decodeStep(cache, next[s], prompt + s);
                        got[pass][s + 1] = m.logits();
                    }
                    status[pass] = gpu.graphStatus();
                    replays[pass] = gpu.graphReplays();
                    cache.close();
                } finally {
                    if (pass >= 3) gpu.setPdl(false);
                    gpu.close();
                }
            }
        }
        double worst = 0, worstGraphVsEager = 0, worstUnfused = 0, worstFusedVsUnfused = 0;
        for (int s = 0; s <= steps; s++) {
            worst = Math.max(worst, CudaParityTest.nmse(ref[s], got[0][s]));
            worstGraphVsEager = Math.max(worstGraphVsEager, CudaParityTest.nmse(got[1][s], got[0][s]));
            worstUnfused = Math.max(worstUnfused, CudaParityTest.nmse(ref[s], got[2][s]));
            worstFusedVsUnfused = Math.max(worstFusedVsUnfused, CudaParityTest.nmse(got[2][s], got[0][s]));
        }
        System.out.printf("[model-parity] %s: fusions off: worst nmse cuda-vs-cpu %.3g, fused-vs-unfused %.3g; %s%n",
                name, worstUnfused, worstFusedVsUnfused, status[2]);
        assertTrue(worstUnfused < 5e-3, name + ": CUDA logits (fusions off) differ from CPU, worst nmse " + worstUnfused);
        // only the GEMV summation order and the split count of attention differ
        assertTrue(worstFusedVsUnfused < 1e-4, name + ": fused and unfused decode differ, nmse " + worstFusedVsUnfused);
        System.out.printf("[model-parity] %s: worst nmse cuda-vs-cpu %.3g, graph-vs-eager %.3g; %s%n", name, worst,
                worstGraphVsEager, status[0]);
        assertTrue(worst < 5e-3, name + ": CUDA logits differ from CPU, worst nmse " + worst);
        assertTrue(worstGraphVsEager < 1e-6, name + ": graph replay differs from eager launches, nmse " + worstGraphVsEager);
        double worstNorm = 0, worstNormVsCpu = 0;
        for (int s = 0; s <= steps; s++) {
            worstNorm = Math.max(worstNorm, CudaParityTest.nmse(got[0][s], got[5][s]));
            worstNormVsCpu = Math.max(worstNormVsCpu, CudaParityTest.nmse(ref[s], got[5][s]));
        }
        System.out.printf("[model-parity] %s: fused norm+gemv: worst nmse vs default %.3g, vs cpu %.3g; %s%n", name,
                worstNorm, worstNormVsCpu, status[5]);
        assertTrue(worstNormVsCpu < 5e-3, name + ": CUDA logits with fused norm differ from CPU, worst nmse " + worstNormVsCpu);
        assertTrue(worstNorm < 1e-4, name + ": fused norm differs from the default path, nmse " + worstNorm);
        assertTrue(replays[5] > 0, name + ": decode steps with fused norm were not replayed as graphs: " + status[5]);
        if (got[3] == null) {
            System.out.printf("[model-parity] %s: PDL passes skipped (device does not support PDL)%n", name);
            return;
        }
        double worstPdlGraph = 0, worstPdlEager = 0;
        int bitDiffSteps = 0;
        for (int s = 0; s <= steps; s++) {
            worstPdlGraph = Math.max(worstPdlGraph, CudaParityTest.nmse(got[0][s], got[3][s]));
            worstPdlEager = Math.max(worstPdlEager, CudaParityTest.nmse(got[1][s], got[4][s]));
            if (!java.util.Arrays.equals(got[0][s], got[3][s]) || !java.util.Arrays.equals(got[1][s], got[4][s])) bitDiffSteps++;
        }
        System.out.printf("[model-parity] %s: PDL on vs off: worst nmse graphs %.3g, eager %.3g, steps not bit-identical %d of %d; %s%n",
                name, worstPdlGraph, worstPdlEager, bitDiffSteps, steps + 1, status[3]);
        // the same kernels and arithmetic: anything but (near-)identical logits means a missing PDL wait
        assertTrue(worstPdlGraph < 1e-12, name + ": graphs with PDL differ from graphs without, nmse " + worstPdlGraph);
        assertTrue(worstPdlEager < 1e-12, name + ": eager launches with PDL differ from plain ones, nmse " + worstPdlEager);
        assertTrue(replays[3] > 0, name + ": decode steps with PDL were not replayed as graphs: " + status[3]);
    }
}
