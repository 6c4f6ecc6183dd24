package dev.tokenpress.model;

import dev.tokenpress.backend.Backend;
import dev.tokenpress.backend.Tensor;
import dev.tokenpress.io.ModelLoadException;
import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.io.TensorData;

import java.util.function.IntConsumer;

/**
 * The model's tensors under their Hugging Face names, made usable by one backend.
 *
 * @param embed     [V, D] {@code model.embed_tokens.weight}
 * @param layers    [L] per-layer tensors
 * @param finalNorm [D] {@code model.norm.weight}
 * @param lmHead    [V, D] {@code lm_head.weight}, or {@code embed} when embeddings are tied
 */
public record Weights(Tensor embed, Layer[] layers, Tensor finalNorm, Tensor lmHead) {

    /**
     * One decoder layer.
     *
     * @param attnNorm [D] input_layernorm
     * @param wq [H*hd, D] q_proj   @param bq [H*hd] or null
     * @param wk [Hkv*hd, D] k_proj @param bk [Hkv*hd] or null
     * @param wv [Hkv*hd, D] v_proj @param bv [Hkv*hd] or null
     * @param wo [D, H*hd] o_proj
     * @param mlpNorm [D] post_attention_layernorm
     * @param wGate [F, D] gate_proj  @param wUp [F, D] up_proj  @param wDown [D, F] down_proj
     * @param qNorm [hd] q_norm (Qwen3) or null  @param kNorm [hd] k_norm (Qwen3) or null
     */
    public record Layer(Tensor attnNorm, Tensor wq, Tensor bq, Tensor wk, Tensor bk, Tensor wv, Tensor bv, Tensor wo,
                        Tensor mlpNorm, Tensor wGate, Tensor wUp, Tensor wDown, Tensor qNorm, Tensor kNorm) {
        public Layer(Tensor attnNorm, Tensor wq, Tensor bq, Tensor wk, Tensor bk, Tensor wv, Tensor bv, Tensor wo,
                     Tensor mlpNorm, Tensor wGate, Tensor wUp, Tensor wDown) {
            this(attnNorm, wq, bq, wk, bk, wv, bv, wo, mlpNorm, wGate, wUp, wDown, null, null);
        }
    }

    /** Bytes the backend allocated for the weights (0 for tensors read in place from the memory map). */
    public long allocatedBytes() {
        java.util.Set<Tensor> seen = java.util.Collections.newSetFromMap(new java.util.IdentityHashMap<>());
        java.util.List<Tensor> all = new java.util.ArrayList<>(java.util.List.of(embed, finalNorm, lmHead));
        for (Layer l : layers)
            all.addAll(java.util.Arrays.asList(l.attnNorm(), l.wq(), l.bq(), l.wk(), l.bk(), l.wv(), l.bv(), l.wo(),
                    l.mlpNorm(), l.wGate(), l.wUp(), l.wDown(), l.qNorm(), l.kNorm()));
        long sum = 0;
        for (Tensor t : all) if (t != null && seen.add(t)) sum += t.bytes();
        return sum;
    }

    /** Validates every tensor's presence and shape against the config, then hands each to the backend. */
    public static Weights load(SafeTensors st, LlamaConfig c, Backend backend, IntConsumer layerProgress) {
        return load(st, c, backend, layerProgress, t -> t);
    }

    /**
     * As {@link #load(SafeTensors, LlamaConfig, Backend, IntConsumer)}, each matrix of the decoder layers passed through
     * {@code transform} after its shape is checked (e.g. merging LoRA adapters, {@link LoraAdapter#apply}).
     */
    public static Weights load(SafeTensors st, LlamaConfig c, Backend backend, IntConsumer layerProgress,
                               java.util.function.UnaryOperator<TensorData> transform) {
        long d = c.hiddenSize(), f = c.intermediateSize(), v = c.vocabSize(), q = c.qDim(), kv = c.kvDim(), hd = c.headDim();
        Tensor embed = backend.weight(get(st, "model.embed_tokens.weight", v, d));
        Layer[] layers = new Layer[c.numLayers()];
        for (int i = 0; i < layers.length; i++) {
            String p = "model.layers." + i + ".";
            boolean bias = c.attentionBias();
            layers[i] = new Layer(
                    backend.weight(get(st, p + "input_layernorm.weight", d)),
                    backend.weight(transform.apply(get(st, p + "self_attn.q_proj.weight", q, d))),
                    bias ? backend.weight(get(st, p + "self_attn.q_proj.bias", q)) : null,
                    backend.weight(transform.apply(get(st, p + "self_attn.k_proj.weight", kv, d))),
                    bias ? backend.weight(get(st, p + "self_attn.k_proj.bias", kv)) : null,
                    backend.weight(transform.apply(get(st, p + "self_attn.v_proj.weight", kv, d))),
                    bias ? backend.weight(get(st, p + "self_attn.v_proj.bias", kv)) : null,
                    backend.weight(transform.apply(get(st, p + "self_attn.o_proj.weight", d, q))),
                    backend.weight(get(st, p + "post_attention_layernorm.weight", d)),
                    backend.weight(transform.apply(get(st, p + "mlp.gate_proj.weight", f, d))),
                    backend.weight(transform.apply(get(st, p + "mlp.up_proj.weight", f, d))),
                    backend.weight(transform.apply(get(st, p + "mlp.down_proj.weight", d, f))),
                    c.qkNorm() ? backend.weight(get(st, p + "self_attn.q_norm.weight", hd)) : null,
                    c.qkNorm() ? backend.weight(get(st, p + "self_attn.k_norm.weight", hd)) : null);
            if (layerProgress != null) layerProgress.accept(i + 1);
        }
        Tensor norm = backend.weight(get(st, "model.norm.weight", d));
        Tensor head;
        if (c.tieWordEmbeddings() && !st.has("lm_head.weight")) head = embed;
        else head = backend.weight(get(st, "lm_head.weight", v, d));
        return new Weights(embed, layers, norm, head);
    }

    private static TensorData get(SafeTensors st, String name, long... shape) {
        TensorData t = st.get(name);
        boolean ok = t.shape().length == shape.length;
        for (int i = 0; ok && i < shape.length; i++) ok = t.shape()[i] == shape[i];
        if (!ok) {
            StringBuilder want = new StringBuilder("[");
            for (int i = 0; i < shape.length; i++) want.append(i == 0 ? "" : ", ").append(shape[i]);
            throw new ModelLoadException(t.file() + ": tensor " + name + " has shape " + t.shapeString() + ", config.json implies "
                    + want + "]; the checkpoint does not match its config");
        }
        return t;
    }
}
