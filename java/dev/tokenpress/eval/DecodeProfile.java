package dev.tokenpress.eval;

import dev.tokenpress.backend.Backend;
import dev.tokenpress.backend.Backends;
import dev.tokenpress.io.ConfigLoader;
import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import dev.tokenpress.model.Weights;

import java.nio.file.Path;
import java.util.Locale;

/**
 * A fixed decode workload for kernel profilers (e.g. Nsight Compute): loads a model, prefills a short prompt, then
 * runs greedy decode steps and prints the wall time of each. With {@code -Dtokenpress.cuda.graphs=false} every
 * kernel is an ordinary launch that a profiler can attribute; {@code -Dtokenpress.cuda.pdl=true} turns on
 * Programmatic Dependent Launch (the "backend:" line on stderr says PDL on/off), so running it with and without
 * gives the PDL A/B of the step time ({@code scripts/gpu-check.sh}, stage {@code profile}, does).
 *
 * <pre>java ... dev.tokenpress.eval.DecodeProfile MODEL_DIR [steps] [device] [weights: as-stored | q8_0]</pre>
 */
public final class DecodeProfile {
    private DecodeProfile() {}

    public static void main(String[] args) throws Exception {
        Locale.setDefault(Locale.ROOT);
        if (args.length < 1) {
            System.err.println("usage: DecodeProfile MODEL_DIR [steps=16] [device=cuda] [weights=as-stored|q8_0]");
            System.exit(2);
        }
        Path dir = Path.of(args[0]);
        int steps = args.length > 1 ? Integer.parseInt(args[1]) : 16;
        String device = args.length > 2 ? args[2] : "cuda";
        dev.tokenpress.backend.WeightType weights = args.length > 3
                ? dev.tokenpress.backend.WeightType.parse(args[3]) : dev.tokenpress.backend.WeightType.AS_STORED;
        LlamaConfig c = ConfigLoader.load(dir);
        try (SafeTensors st = SafeTensors.open(dir)) {
            Backend b = Backends.create(device, 0, System.err::println);
            b.setWeightType(weights);
            System.err.println("weights: " + weights);
            try (Llama m = new Llama(c, Weights.load(st, c, b, null), b, 32)) {
                KvCache cache = m.newCache(64 + steps);
                int[] prompt = new int[32];
                for (int i = 0; i < prompt.length; i++) prompt[i] = (i * 7919) % c.vocabSize();
                m.prefill(cache, prompt, 0, false, null);
                b.synchronize();
                int tok = m.argmax(), pos = prompt.length;
                for (int s = 0; s < steps; s++) {
                    long t0 = System.nanoTime();
                    m.decodeStep(cache, tok, pos++);
                    tok = m.argmax();
                    b.synchronize();
                    System.out.printf("step %d: %.3f ms%n", s, (System.nanoTime() - t0) / 1e6);
                }
            }
        }
    }
}
