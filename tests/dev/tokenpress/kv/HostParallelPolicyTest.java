package dev.tokenpress.kv;

import dev.tokenpress.backend.Backend;
import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.io.DType;
import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import dev.tokenpress.model.Weights;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Proxy;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.function.IntConsumer;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;

/**
 * Work the policies split over {@code Backend.hostParallel} — Keyformer's and TokenSelect's per-q-head scoring
 * (Keyformer each head with the Gumbel noise of its own layer, head and query position), every evicting policy's
 * victims per (layer, KV head) — gives the same result in any order: a backend that runs the pieces in reverse order
 * on three threads decodes the same logits and keeps or selects the same tokens as one that runs them in order;
 * another Keyformer seed gives other decisions.
 */
class HostParallelPolicyTest {
    @TempDir
    Path tmp;

    @Test
    void headsMayRunInAnyOrderOnAnyThreads() throws Exception {
        LlamaConfig c = KvTestSupport.config(3);
        ModelWriter.write(tmp, c, DType.F32, 17, s -> {});
        CpuBackend cpu = new CpuBackend(2);
        ExecutorService pool = Executors.newFixedThreadPool(3);
        try (SafeTensors st = SafeTensors.open(tmp)) {
            Backend shuffled = (Backend) Proxy.newProxyInstance(Backend.class.getClassLoader(), new Class<?>[] {Backend.class},
                    (proxy, method, args) -> {
                        if (method.getName().equals("hostParallel")) {
                            reverseOnThreads(pool, (Integer) args[0], (IntConsumer) args[1]);
                            return null;
                        }
                        try {
                            return method.invoke(cpu, args);
                        } catch (InvocationTargetException e) {
                            throw e.getCause();
                        }
                    });
            Llama inOrder = new Llama(c, Weights.load(st, c, cpu, null), cpu, 16);
            Llama reversed = new Llama(c, Weights.load(st, c, shuffled, null), shuffled, 16);
            for (String spec : new String[] {"keyformer:budget=24,recent=4,seed=5", "tokenselect:k=8,init=2,local=6",
                    "h2o:budget=24", "window:sink=2,budget=20", "tova:budget=24,interval=4"}) {
                Run a = decode(inOrder, c, spec), b = decode(reversed, c, spec);
                for (int i = 0; i < a.logits.size(); i++) assertArrayEquals(a.logits.get(i), b.logits.get(i), spec + ": step " + i);
                assertArrayEquals(a.kept, b.kept, spec + ": kept positions");
            }
            Run a = decode(inOrder, c, "keyformer:budget=24,recent=4,seed=5");
            Run other = decode(inOrder, c, "keyformer:budget=24,recent=4,seed=6");
            assertNotEquals(java.util.Arrays.toString(a.kept), java.util.Arrays.toString(other.kept),
                    "another seed draws other noise, so it keeps other tokens");
        } finally {
            pool.shutdown();
            cpu.close();
        }
    }

    record Run(List<float[]> logits, int[] kept) {}

    /** A 60-token prompt in chunks of 16, then 30 greedy steps; the logits of each step and the positions kept at the end. */
    static Run decode(Llama m, LlamaConfig c, String spec) {
        m.setPolicy(KvPolicies.parse(spec, c));
        try (KvCache cache = m.newCache(128)) {
            int[] prompt = KvTestSupport.tokens(60, c.vocabSize(), 3);
            m.prefill(cache, prompt, 0, false, null);
            List<float[]> logits = new ArrayList<>();
            int pos = prompt.length, tok = m.argmax();
            for (int s = 0; s < 30; s++) {
                m.decodeStep(cache, tok, pos++);
                float[] l = m.logits();
                logits.add(l);
                tok = m.argmax();
            }
            List<Integer> kept = new ArrayList<>();
            for (int l = 0; l < cache.layers(); l++)
                for (int g = 0; g < cache.kvHeads(); g++)
                    for (int s = 0; s < cache.highWater(l, g); s++) kept.add(cache.position(l, g, s));
            return new Run(logits, kept.stream().mapToInt(Integer::intValue).toArray());
        } finally {
            m.setPolicy(KvPolicy.FULL);
        }
    }

    /** body(n-1) … body(0) submitted in that order to three threads; waits for all, rethrows a failure. */
    static void reverseOnThreads(ExecutorService pool, int n, IntConsumer body) {
        List<Future<?>> f = new ArrayList<>();
        for (int i = n - 1; i >= 0; i--) {
            int idx = i;
            f.add(pool.submit(() -> body.accept(idx)));
        }
        try {
            for (Future<?> x : f) x.get();
        } catch (Exception e) {
            throw new RuntimeException(e);
        }
    }
}
