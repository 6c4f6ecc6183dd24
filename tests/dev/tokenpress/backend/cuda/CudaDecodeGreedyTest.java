package dev.tokenpress.backend.cuda;

import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import dev.tokenpress.model.Weights;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Pipelined greedy decoding on CUDA ({@link Llama#decodeGreedy} with the device's token feedback register: each
 * step's embedding reads the previous step's argmax on the device, the next step is queued before the host reads
 * the token) against the plain loop on the same backend: the same tokens, the same cache slots and positions, and
 * bit-identical logits of a following step, with CUDA graphs and eagerly, including a refused token (a queued step
 * taken back); for the full policy and for TidalDecode (device-side selection).
 */
class CudaDecodeGreedyTest {
    @TempDir
    Path tmp;

    private record Run(int steps, List<Integer> tokens, int[][] state, float[] nextLogits, String graphs) {}

    private static Run run(CudaBackend gpu, Llama m, boolean pipelined, int prompt, int maxSteps, int stopAt, int ctx) {
        KvCache cache = m.newCache(ctx);
        int[] tokens = new int[prompt];
        for (int i = 0; i < prompt; i++) tokens[i] = (i * 37 + 5) % m.config.vocabSize();
        m.prefill(cache, tokens, 0, false, null);
        int first = m.argmax();
        List<Integer> seen = new ArrayList<>();
        int steps;
        m.setPipelinedGreedy(pipelined);
        try {
            steps = m.decodeGreedy(cache, first, prompt, maxSteps, t -> {
                seen.add(t);
                return seen.size() != stopAt;
            });
        } finally {
            m.setPipelinedGreedy(null);
        }
        gpu.synchronize();
        int hkv = m.config.numKvHeads();
        int[][] state = new int[m.config.numLayers() * hkv][];
        for (int l = 0; l < m.config.numLayers(); l++)
            for (int g = 0; g < hkv; g++) {
                int[] pos = cache.positions(l, g);
                int[] st = Arrays.copyOf(pos, pos.length + 2);
                st[pos.length] = cache.highWater(l, g);
                st[pos.length + 1] = cache.occupied(l, g);
                state[l * hkv + g] = st;
            }
        m.setPipelinedGreedy(false);
        m.decodeStep(cache, seen.get(seen.size() - 1), prompt + steps); // the cache serves the next step alike
        float[] next = m.logits();
        m.setPipelinedGreedy(null);
        String graphs = gpu.graphStatus();
        cache.close();
        return new Run(steps, seen, state, next, graphs);
    }

    /**
     * A step fed a token's embedding row ({@link Llama#decodeStepEmbedded}, Superposed Decoding's input: written into
     * the step's input before a captured step replays) gives the token's own step's logits bit for bit, with CUDA
     * graphs and eagerly, over several steps (so replays happen).
     */
    @ParameterizedTest(name = "embedded step graphs={0}")
    @org.junit.jupiter.params.provider.ValueSource(booleans = {true, false})
    void aStepFedAnEmbeddingRowIsTheTokensStep(boolean graphs) {
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        LlamaConfig cfg = ModelWriter.write(tmp.resolve("e"), CudaModelParityTest.config(512, 8, 2, 64, 4), 17, s -> {});
        try (SafeTensors st = SafeTensors.open(tmp.resolve("e"))) {
            CudaBackend gpu = CudaBackend.open();
            try {
                gpu.setGraphsEnabled(graphs);
                Llama m = new Llama(cfg, Weights.load(st, cfg, gpu, null), gpu, 64);
                int[] prompt = new int[20];
                for (int i = 0; i < prompt.length; i++) prompt[i] = (i * 41 + 3) % cfg.vocabSize();
                float[] row = new float[cfg.hiddenSize()];
                try (KvCache a = m.newCache(64); KvCache b = m.newCache(64)) {
                    m.prefill(a, prompt, 0, false, null);
                    m.prefill(b, prompt, 0, false, null);
                    for (int s = 0; s < 8; s++) {
                        int t = (s * 97 + 5) % cfg.vocabSize();
                        m.decodeStep(a, t, prompt.length + s);
                        float[] want = m.logits().clone();
                        m.embeddingRow(t, row);
                        m.decodeStepEmbedded(b, row, prompt.length + s);
                        assertArrayEquals(want, m.logits(), "step " + s + " (" + gpu.graphStatus() + ")");
                    }
                }
            } finally {
                gpu.close();
            }
        }
    }

    /**
     * SkipDecode's steps ({@link Llama#decodeStepFrom}: the layers below the first skipped, no slot there) on CUDA, with
     * CUDA graphs and eagerly, against the same steps on the CPU backend (model-parity tolerance).
     */
    @ParameterizedTest(name = "skip-decode steps graphs={0}")
    @org.junit.jupiter.params.provider.ValueSource(booleans = {true, false})
    void skipDecodeStepsMatchTheCpu(boolean graphs) {
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        LlamaConfig cfg = ModelWriter.write(tmp.resolve("s"), CudaModelParityTest.config(512, 8, 2, 64, 4), 19, s -> {});
        int[] prompt = new int[16];
        for (int i = 0; i < prompt.length; i++) prompt[i] = (i * 29 + 7) % cfg.vocabSize();
        int[] fed = {3, 91, 250, 17, 66, 400}, first = {1, 1, 1, 2, 2, 3};
        float[][] want = new float[fed.length][];
        try (SafeTensors st = SafeTensors.open(tmp.resolve("s")); dev.tokenpress.backend.cpu.CpuBackend cpu = new dev.tokenpress.backend.cpu.CpuBackend(2)) {
            Llama m = new Llama(cfg, Weights.load(st, cfg, cpu, null), cpu, 64);
            try (KvCache c = m.newCache(64)) {
                m.prefill(c, prompt, 0, false, null);
                for (int s = 0; s < fed.length; s++) {
                    m.decodeStepFrom(c, fed[s], prompt.length + s, first[s]);
                    want[s] = m.logits().clone();
                }
            }
            CudaBackend gpu = CudaBackend.open();
            try {
                gpu.setGraphsEnabled(graphs);
                Llama g = new Llama(cfg, Weights.load(st, cfg, gpu, null), gpu, 64);
                try (KvCache c = g.newCache(64)) {
                    g.prefill(c, prompt, 0, false, null);
                    for (int s = 0; s < fed.length; s++) {
                        g.decodeStepFrom(c, fed[s], prompt.length + s, first[s]);
                        double e = CudaParityTest.nmse(want[s], g.logits());
                        assertTrue(e < 5e-3, "step " + s + ": nmse " + e + " (" + gpu.graphStatus() + ")");
                    }
                    assertEquals(prompt.length, c.occupied(0, 0), "layer 0 misses the skipped tokens");
                    assertEquals(prompt.length + 3, c.occupied(1, 0));
                    assertEquals(prompt.length + fed.length, c.occupied(3, 0));
                }
            } finally {
                gpu.close();
            }
        }
    }

    @ParameterizedTest(name = "graphs={0} maxSteps={1} stopAt={2} kv={3}")
    @CsvSource({"true,40,0,full", "true,40,17,full", "false,24,9,full", "true,1,0,full",
            "true,40,17,'tidal:k=16,full_layers=1,reselect=2'", "false,24,9,'tidal:k=16,full_layers=1,reselect=2'"})
    void pipelinedMatchesPlainLoop(boolean graphs, int maxSteps, int stopAt, String kv) {
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        LlamaConfig cfg = ModelWriter.write(tmp.resolve("m"), CudaModelParityTest.config(512, 8, 2, 64, 4), 11, s -> {});
        try (SafeTensors st = SafeTensors.open(tmp.resolve("m"))) {
            CudaBackend gpu = CudaBackend.open();
            try {
                assertTrue(gpu.tokenFeedback());
                gpu.setGraphsEnabled(graphs);
                Llama m = new Llama(cfg, Weights.load(st, cfg, gpu, null), gpu, 64);
                if (!kv.equals("full")) m.setPolicy(dev.tokenpress.kv.KvPolicies.parse(kv, cfg));
                Run plain = run(gpu, m, false, 30, maxSteps, stopAt, 128);
                Run pipe = run(gpu, m, true, 30, maxSteps, stopAt, 128);
                System.out.println("[decode-greedy] " + kv + " graphs=" + graphs + " steps " + pipe.steps() + ", tokens agree "
                        + plain.tokens().equals(pipe.tokens()) + "; " + pipe.graphs());
                assertEquals(plain.steps(), pipe.steps(), "steps");
                assertEquals(plain.tokens(), pipe.tokens(), "tokens");
                assertArrayEquals(plain.state(), pipe.state(), "cache slots and positions");
                assertArrayEquals(plain.nextLogits(), pipe.nextLogits(), "logits of the following step");
            } finally {
                gpu.close();
            }
        }
    }
}
