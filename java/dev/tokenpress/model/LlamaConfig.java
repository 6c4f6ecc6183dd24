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
     * Llama 3.1-style frequency scaling ({@code rope_type: "llama3"}).
     *
     * @param type                          "llama3" (others are rejected at parse time)
     * @param factor                        {@code factor}
     * @param lowFreqFactor                 {@code low_freq_factor}
     * @param highFreqFactor                {@code high_freq_factor}
     * @param originalMaxPositionEmbeddings {@code original_max_position_embeddings}
     */
    public record RopeScaling(String type, float factor, float lowFreqFactor, float highFreqFactor,
                              int originalMaxPositionEmbeddings) {}

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
