package dev.tokenpress.model;

import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.io.TensorData;

/** A straightforward double-precision Llama forward pass over all positions, as an independent reference. */
final class NaiveLlama {
    private NaiveLlama() {}

    /** Logits [n][V] of a full causal forward pass over tokens. */
    static double[][] logits(LlamaConfig c, SafeTensors st, int[] tokens) {
        TensorData emb = st.get("model.embed_tokens.weight");
        TensorData head = st.has("lm_head.weight") ? st.get("lm_head.weight") : emb;
        return linear(hidden(c, st, tokens), head, null);
    }

    /** The final hidden states [n][D] (after the last RMSNorm) of a full causal forward pass over tokens. */
    static double[][] hidden(LlamaConfig c, SafeTensors st, int[] tokens) {
        return hidden(c, st, tokens, new int[tokens.length]);
    }

    /**
     * Logits [n][V] when token i runs only layers [first[i], L) (SkipDecode): its embedding enters layer first[i], and
     * in layer l only the tokens with first ≤ l are keys.
     */
    static double[][] logitsSkipping(LlamaConfig c, SafeTensors st, int[] tokens, int[] first) {
        TensorData emb = st.get("model.embed_tokens.weight");
        TensorData head = st.has("lm_head.weight") ? st.get("lm_head.weight") : emb;
        return linear(hidden(c, st, tokens, first), head, null);
    }

    private static double[][] hidden(LlamaConfig c, SafeTensors st, int[] tokens, int[] first) {
        int n = tokens.length, d = c.hiddenSize(), hd = c.headDim(), H = c.numHeads(), Hkv = c.numKvHeads();
        double[][] x = new double[n][d];
        TensorData emb = st.get("model.embed_tokens.weight");
        for (int i = 0; i < n; i++) for (int j = 0; j < d; j++) x[i][j] = emb.getFloat((long) tokens[i] * d + j);
        float[] inv = dev.tokenpress.backend.RopeTable.of(c).invFreq();
        for (int l = 0; l < c.numLayers(); l++) {
            String p = "model.layers." + l + ".";
            double[][] before = new double[n][];
            for (int i = 0; i < n; i++) if (first[i] > l) before[i] = x[i].clone();
            double[][] h = norm(x, st.get(p + "input_layernorm.weight"), c.rmsNormEps());
            double[][] q = linear(h, st.get(p + "self_attn.q_proj.weight"), c.attentionBias() ? st.get(p + "self_attn.q_proj.bias") : null);
            double[][] k = linear(h, st.get(p + "self_attn.k_proj.weight"), c.attentionBias() ? st.get(p + "self_attn.k_proj.bias") : null);
            double[][] v = linear(h, st.get(p + "self_attn.v_proj.weight"), c.attentionBias() ? st.get(p + "self_attn.v_proj.bias") : null);
            rope(q, H, hd, inv);
            rope(k, Hkv, hd, inv);
            double[][] att = new double[n][H * hd];
            for (int i = 0; i < n; i++)
                for (int hh = 0; hh < H; hh++) {
                    int g = hh / (H / Hkv);
                    double[] s = new double[i + 1];
                    double max = Double.NEGATIVE_INFINITY;
                    int from = c.slidingWindow() == null ? 0 : Math.max(0, i - c.slidingWindow() + 1); // HF: key j > i - W
                    for (int j = 0; j < from; j++) s[j] = Double.NEGATIVE_INFINITY;
                    for (int j = from; j <= i; j++) {
                        if (first[j] > l) { s[j] = Double.NEGATIVE_INFINITY; continue; } // not in this layer
                        double dot = 0;
                        for (int e = 0; e < hd; e++) dot += q[i][hh * hd + e] * k[j][g * hd + e];
                        s[j] = dot / Math.sqrt(hd);
                        max = Math.max(max, s[j]);
                    }
                    double sum = 0;
                    for (int j = 0; j <= i; j++) { s[j] = j < from || first[j] > l ? 0 : Math.exp(s[j] - max); sum += s[j]; }
                    for (int j = 0; j <= i; j++) for (int e = 0; e < hd; e++) att[i][hh * hd + e] += s[j] / sum * v[j][g * hd + e];
                }
            add(x, linear(att, st.get(p + "self_attn.o_proj.weight"), null));
            double[][] h2 = norm(x, st.get(p + "post_attention_layernorm.weight"), c.rmsNormEps());
            double[][] gate = linear(h2, st.get(p + "mlp.gate_proj.weight"), null);
            double[][] up = linear(h2, st.get(p + "mlp.up_proj.weight"), null);
            for (int i = 0; i < n; i++) for (int j = 0; j < gate[i].length; j++) gate[i][j] = gate[i][j] / (1 + Math.exp(-gate[i][j])) * up[i][j];
            add(x, linear(gate, st.get(p + "mlp.down_proj.weight"), null));
            for (int i = 0; i < n; i++) if (before[i] != null) x[i] = before[i]; // skipped: still the embedding
        }
        return norm(x, st.get("model.norm.weight"), c.rmsNormEps());
    }

    private static double[][] norm(double[][] x, TensorData w, double eps) {
        double[][] out = new double[x.length][x[0].length];
        for (int i = 0; i < x.length; i++) {
            double ss = 0;
            for (double v : x[i]) ss += v * v;
            double inv = 1 / Math.sqrt(ss / x[i].length + eps);
            for (int j = 0; j < x[i].length; j++) out[i][j] = x[i][j] * inv * w.getFloat(j);
        }
        return out;
    }

    private static double[][] linear(double[][] x, TensorData w, TensorData b) {
        int o = (int) w.shape()[0], in = (int) w.shape()[1];
        double[][] out = new double[x.length][o];
        for (int r = 0; r < o; r++)
            for (int i = 0; i < x.length; i++) {
                double s = b == null ? 0 : b.getFloat(r);
                for (int j = 0; j < in; j++) s += w.getFloat((long) r * in + j) * x[i][j];
                out[i][r] = s;
            }
        return out;
    }

    private static void rope(double[][] x, int heads, int hd, float[] inv) {
        for (int i = 0; i < x.length; i++)
            for (int h = 0; h < heads; h++)
                for (int j = 0; j < hd / 2; j++) {
                    double ang = (float) (i * inv[j]);
                    double a = x[i][h * hd + j], b = x[i][h * hd + j + hd / 2];
                    x[i][h * hd + j] = a * Math.cos(ang) - b * Math.sin(ang);
                    x[i][h * hd + j + hd / 2] = b * Math.cos(ang) + a * Math.sin(ang);
                }
    }

    private static void add(double[][] x, double[][] y) {
        for (int i = 0; i < x.length; i++) for (int j = 0; j < x[i].length; j++) x[i][j] += y[i][j];
    }
}
