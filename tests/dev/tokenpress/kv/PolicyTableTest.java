package dev.tokenpress.kv;

import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.eval.KernelBench;
import dev.tokenpress.io.DType;
import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.model.Weights;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The per-policy decode table of {@code KernelBench e2epol} ({@link KernelBench#policyTable}) on the CPU: every policy
 * decodes after a synthetic context written straight into the cache (which no policy has seen), the evicting ones
 * cut it down to their budget, the selecting ones keep every token, and each row reports its figures.
 */
class PolicyTableTest {
    @TempDir
    Path tmp;

    @Test
    void everyPolicyDecodesAfterASyntheticContext() {
        LlamaConfig c = KvTestSupport.config(3);
        ModelWriter.write(tmp, c, DType.F32, 17, s -> {});
        CpuBackend b = new CpuBackend(2);
        Llama m = new Llama(c, Weights.load(SafeTensors.open(tmp), c, b, null), b, 32);
        int ctx = 200, steps = 3, budget = 40;
        String[] specs = {"window:sink=4,budget=" + budget, "h2o:budget=" + budget, "a2sf:budget=" + budget + ",sink=4",
                "keyformer:budget=" + budget, "quest:budget=" + budget + ",page=8", "tokenselect:k=" + budget + ",init=4,local=8",
                "razor:heads=0.5,recent=16,ratio=0,probe=16,repeats=2"};
        ByteArrayOutputStream buf = new ByteArrayOutputStream();
        try (PrintStream out = new PrintStream(buf, true, StandardCharsets.UTF_8)) {
            KernelBench.policyTable(b, m, c, ctx, specs, steps, 100.0, out);
        }
        String text = buf.toString(StandardCharsets.UTF_8);
        assertFalse(text.contains("FAILED"), text);
        Map<String, Double> results = new HashMap<>();
        for (String line : text.split("\n")) {
            String[] f = line.trim().split(" ");
            if (f.length >= 3 && f[0].equals("RESULT")) results.put(f[1], Double.parseDouble(f[2]));
        }
        int heads = c.numLayers() * c.numKvHeads(), fed = ctx + 4 + steps;  // 4 warm-up steps
        for (String spec : specs) {
            String name = spec.substring(0, spec.indexOf(':')), k = "e2e_pol_" + ctx + "_" + name;
            for (String key : new String[] {"_tps", "_speedup", "_kv_bytes", "_live_kv_bytes", "_occupied_slots"})
                assertTrue(results.containsKey(k + key), "missing " + k + key + " in\n" + text);
            assertTrue(results.get(k + "_tps") > 0, k);
            double occupied = results.get(k + "_occupied_slots");
            assertTrue(results.get(k + "_live_kv_bytes") <= results.get(k + "_kv_bytes"), k);
            if (name.equals("quest") || name.equals("tokenselect"))
                assertEquals(heads * (double) fed, occupied, k + ": a selecting policy keeps every token");
            else if (name.equals("razor"))  // half the KV heads keep everything, the others sinks + window + 1
                assertTrue(occupied <= heads * (fed + 4 + 16 + 1 + steps) / 2.0, k + ": keeps " + occupied + " of " + heads * fed + " slots");
            else
                assertTrue(occupied < heads * (double) ctx / 2, k + ": an evicting policy keeps " + occupied + " of " + heads * fed + " slots");
        }
    }
}
