package dev.tokenpress.model;

import java.util.List;

/**
 * Model hyper-parameters; field names mirror Hugging Face {@code config.json}.
 *
 * @param architecture          "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM" or "Qwen3ForCausalLM"
 * @param modelType             config.json {@code model_type} ("llama", "mistral", "qwen2", "qwen3")
 * @param hiddenSize            D, {@code hidden_size}
 * @param intermediateSize      F, {@code intermediate_size} (MLP width)
 * @param numLayers             L, {@code num_hidden_layers}
 * @param numHeads              H, {@code num_attention_heads}
 * @param numKvHeads            Hkv, {@code num_key_value_heads} (H when absent); H % Hkv == 0
 * @param headDim               hd, {@code head_dim} (D / H when absent)
 * @param vocabSize             V, {@code vocab_size}
 * @param rmsNormEps            {@code rms_norm_eps}
 * @param ropeTheta             {@code rope_theta}
 * @param ropeScaling           {@code rope_scaling} (null = none; only type "llama3" changes frequencies)
 * @param maxPositionEmbeddings {@code max_position_embeddings}
 * @param tieWordEmbeddings     {@code tie_word_embeddings}: LM head reuses {@code model.embed_tokens.weight}
 * @param attentionBias         q/k/v projections carry biases (Qwen2 always; Llama when {@code attention_bias})
 * @param slidingWindow         Mistral {@code sliding_window} (null/0 = none): a query at position p attends to positions
 *                              (p - W, p] ({@code Llama} drops older slots and runs prompt tokens past W one at a time)
 * @param bosTokenId            {@code bos_token_id} or -1
 * @param eosTokenIds           {@code eos_token_id} (int or list) merged with generation_config.json
 * @param torchDtype            {@code torch_dtype} / {@code dtype} as written, informational
 */
public record LlamaConfig(
        String architecture,
        String modelType,
        int hiddenSize,
        int intermediateSize,
        int numLayers,
        int numHeads,
        int numKvHeads,
        int headDim,
        int vocabSize,
        float rmsNormEps,
        float ropeTheta,
        RopeScaling ropeScaling,
        int maxPositionEmbeddings,
        boolean tieWordEmbeddings,
        boolean attentionBias,
        Integer slidingWindow,
        int bosTokenId,
        List<Integer> eosTokenIds,
        String torchDtype) {

    /**
     * RoPE frequency scaling: Llama 3.1's ({@code rope_type: "llama3"}) or YaRN ({@code "yarn"}: Qwen2.5 / Qwen3 past
     * 32K, as their model cards configure it), as transformers computes them.
     *
     * @param type                          "llama3" or "yarn" (others are rejected at parse time)
     * @param factor                        {@code factor}
     * @param lowFreqFactor                 llama3: {@code low_freq_factor}; yarn: {@code beta_slow} (default 1)
     * @param highFreqFactor                llama3: {@code high_freq_factor}; yarn: {@code beta_fast} (default 32)
     * @param originalMaxPositionEmbeddings {@code original_max_position_embeddings}
     * @param attentionFactor               yarn: what cos and sin are multiplied by ({@code attention_factor}, else
     *                                      0.1 ln(factor) + 1, or DeepSeek's mscale ratio); llama3: 1
     * @param truncate                      yarn: the correction range's bounds are rounded outwards ({@code truncate},
     *                                      default true)
     */
    public record RopeScaling(String type, float factor, float lowFreqFactor, float highFreqFactor,
                              int originalMaxPositionEmbeddings, float attentionFactor, boolean truncate) {
        /** Llama 3.1-style scaling. */
        public RopeScaling(String type, float factor, float lowFreqFactor, float highFreqFactor, int originalMaxPositionEmbeddings) {
            this(type, factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings, 1f, true);
        }

        /** YaRN with the attention factor transformers infers when none is given (0.1 ln(factor) + 1). */
        public static RopeScaling yarn(float factor, int originalMaxPositionEmbeddings) {
            return new RopeScaling("yarn", factor, 1f, 32f, originalMaxPositionEmbeddings, (float) yarnMscale(factor, 1), true);
        }

        /** YaRN's get_mscale: 1 for scale <= 1, else 0.1 * mscale * ln(scale) + 1. */
        public static double yarnMscale(double scale, double mscale) {
            return scale <= 1 ? 1.0 : 0.1 * mscale * Math.log(scale) + 1.0;
        }
    }

    /**
     * Whether each head's query and key are RMS-normalized (learned weights of {@code head_dim}, the model's eps)
     * before RoPE: Qwen3's {@code q_norm} / {@code k_norm}.
     */
    public boolean qkNorm() {
        return architecture.equals("Qwen3ForCausalLM");
    }

    /** q-heads per KV head (the GQA ratio). */
    public int groupSize() {
        return numHeads / numKvHeads;
    }

    /** Width of the q projection output, H * hd. */
    public int qDim() {
        return numHeads * headDim;
    }

    /** Width of each of the k and v projection outputs, Hkv * hd. */
    public int kvDim() {
        return numKvHeads * headDim;
    }

    /** Number of parameters implied by the shapes (tied embeddings counted once). */
    public long parameterCount() {
        long d = hiddenSize, f = intermediateSize, v = vocabSize;
        long attn = d * qDim() + 2L * d * kvDim() + (long) qDim() * d;
        if (attentionBias) attn += qDim() + 2L * kvDim();
        long mlp = 3 * d * f;
        long perLayer = attn + mlp + 2 * d;
        return v * d + (tieWordEmbeddings ? 0 : v * d) + numLayers * perLayer + d;
    }

    /** KV-cache bytes per token at a given bytes-per-element (keys + values, all layers). */
    public long kvBytesPerToken(int bytesPerElement) {
        return 2L * numLayers * kvDim() * bytesPerElement;
    }
}
