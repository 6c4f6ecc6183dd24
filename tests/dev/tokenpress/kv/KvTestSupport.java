package dev.tokenpress.kv;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.io.DType;
import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import dev.tokenpress.model.Weights;

import java.nio.file.Path;
import java.util.List;
import java.util.SplittableRandom;

/** Small generated models and a recording policy wrapper for the KV policy tests. */
final class KvTestSupport {
    private KvTestSupport() {}

    /** A GQA (4 q-heads, 2 KV heads) Llama with {@code layers} layers, head dim 16. */
    static LlamaConfig config(int layers) {
        return new LlamaConfig("LlamaForCausalLM", "llama", 64, 96, layers, 4, 2, 16, 300, 1e-5f, 10000f, null, 4096,
                true, false, null, 298, List.of(299), "float32");
    }

    static Llama model(Path dir, LlamaConfig c, int chunk) {
        ModelWriter.write(dir, c, DType.F32, 17, s -> {});
        SafeTensors st = SafeTensors.open(dir);
        CpuBackend b = new CpuBackend(2);
        Llama m = new Llama(c, Weights.load(st, c, b, null), b, chunk);
        m.setTextEncoder(text -> words(text, c.vocabSize()));
        return m;
    }

    /** A stand-in tokenizer for the generated models: one id per word or line break (a hash of it). */
    static int[] words(String text, int vocab) {
        java.util.List<String> parts = new java.util.ArrayList<>();
        java.util.regex.Matcher m = java.util.regex.Pattern.compile("\\n|[^\\s]+").matcher(text);
        while (m.find()) parts.add(m.group());
        int[] ids = new int[parts.size()];
        for (int i = 0; i < ids.length; i++) ids[i] = Math.floorMod(parts.get(i).hashCode(), vocab - 2);
        return ids;
    }

    static int[] tokens(int n, int vocab, long seed) {
        SplittableRandom r = new SplittableRandom(seed);
        int[] t = new int[n];
        for (int i = 0; i < n; i++) t[i] = r.nextInt(vocab - 2);
        return t;
    }

    /** Called when a layer is about to attend: the cache already holds the call's tokens. */
    interface Observer {
        void onSelect(KvCache cache, int layer, int n, SlotSelection selection);
    }

    /** Called before a layer attends, with its rotated queries. */
    interface QueryObserver {
        void onQuery(KvCache cache, int layer, Tensor q, int[] positions, int n);
    }

    /** Delegates every hook to {@code inner} and reports each layer's selection to an observer. */
    static KvPolicy recording(KvPolicy inner, Observer observer) {
        return recording(inner, observer, (c, l, q, p, n) -> {});
    }

    /** As {@link #recording(KvPolicy, Observer)}, also reporting each layer's queries. */
    static KvPolicy recording(KvPolicy inner, Observer observer, QueryObserver queries) {
        return new ForwardingPolicy(inner) {
            @Override
            public void beforeAttention(KvCache cache, int layer, Tensor q, int[] positions, int n) {
                queries.onQuery(cache, layer, q, positions, n);
                super.beforeAttention(cache, layer, q, positions, n);
            }

            @Override
            public SlotSelection select(KvCache cache, int layer, int n) {
                SlotSelection s = super.select(cache, layer, n);
                observer.onSelect(cache, layer, n, s);
                return s;
            }
        };
    }

    /**
     * A full-cache prefill of a prompt, as attention saw it: queries [layer][position][H*hd] (rotated), keys and values
     * [layer][KV head][position*hd] (a fresh cache: slot = position).
     */
    record Prefilled(float[][][] queries, float[][][] keys, float[][][] values) {}

    /** Prefills {@code prompt} under the full policy into a cache of {@code capacity} slots and keeps what attention saw. */
    static Prefilled prefilled(Llama model, LlamaConfig config, int[] prompt, int capacity) {
        int width = config.numHeads() * config.headDim(), hd = config.headDim();
        float[][][] queries = new float[config.numLayers()][prompt.length][];
        float[][][] keys = new float[config.numLayers()][config.numKvHeads()][capacity * hd];
        float[][][] values = new float[config.numLayers()][config.numKvHeads()][capacity * hd];
        model.setPolicy(recording(KvPolicy.FULL, (c, l, n, s) -> {}, (c, layer, q, positions, n) -> {
            float[] rows = model.backend.download(q, 0, n);
            for (int r = 0; r < n; r++) queries[layer][positions[r]] = java.util.Arrays.copyOfRange(rows, r * width, (r + 1) * width);
        }));
        try (KvCache c = model.newCache(capacity)) {
            model.prefill(c, prompt, 0, false, null);
            for (int l = 0; l < config.numLayers(); l++)
                for (int g = 0; g < config.numKvHeads(); g++) model.backend.readKvHead(c, l, g, keys[l][g], values[l][g]);
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
        return new Prefilled(queries, keys, values);
    }

    /** The positions held by (layer, head), sorted. */
    static int[] positions(KvCache c, int layer, int head) {
        int[] pos = c.positions(layer, head);
        return java.util.Arrays.stream(pos, 0, c.highWater(layer, head)).filter(p -> p >= 0).sorted().toArray();
    }

    /** Bytes the CPU cache allocates: f32 keys + values and an int position per slot. */
    static long cpuBytes(LlamaConfig c, int capacity) {
        return cpuBytes(c, capacity, 4);
    }

    /** The same with keys and values of {@code elementBytes} each (2: bf16). */
    static long cpuBytes(LlamaConfig c, int capacity, int elementBytes) {
        return 2L * c.numLayers() * c.numKvHeads() * capacity * c.headDim() * elementBytes + (long) c.numLayers() * c.numKvHeads() * capacity * 4;
    }
}
