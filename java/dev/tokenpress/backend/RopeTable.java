package dev.tokenpress.backend;

import dev.tokenpress.model.LlamaConfig;

/**
 * Rotary embedding inverse frequencies, Hugging Face "rotate_half" layout: dimension i pairs with i + hd/2 and
 * uses {@code invFreq[i]}. Llama 3 and YaRN {@code rope_scaling} are applied here once, so kernels only see invFreq
 * and YaRN's attention scale (cos and sin are multiplied by it, as transformers does; 1 otherwise).
 *
 * @param headDim        head dimension hd
 * @param invFreq        [hd/2] inverse frequencies
 * @param attentionScale what cos and sin are multiplied by
 */
public record RopeTable(int headDim, float[] invFreq, float attentionScale) {

    public RopeTable(int headDim, float[] invFreq) {
        this(headDim, invFreq, 1f);
    }

    public static RopeTable of(LlamaConfig c) {
        int half = c.headDim() / 2;
        float[] inv = new float[half];
        for (int i = 0; i < half; i++) {
            // computed like HF: 1 / theta^(2i/hd) in float64 then rounded
            inv[i] = (float) (1.0 / Math.pow(c.ropeTheta(), (2.0 * i) / c.headDim()));
        }
        LlamaConfig.RopeScaling s = c.ropeScaling();
        if (s != null && "llama3".equals(s.type())) {
            double lowWavelen = s.originalMaxPositionEmbeddings() / s.lowFreqFactor();
            double highWavelen = s.originalMaxPositionEmbeddings() / s.highFreqFactor();
            for (int i = 0; i < half; i++) {
                double f = inv[i];
                double wavelen = 2 * Math.PI / f;
                double out;
                if (wavelen < highWavelen) out = f;
                else if (wavelen > lowWavelen) out = f / s.factor();
                else {
                    double smooth = (s.originalMaxPositionEmbeddings() / wavelen - s.lowFreqFactor())
                            / (s.highFreqFactor() - s.lowFreqFactor());
                    out = (1 - smooth) * f / s.factor() + smooth * f;
                }
                inv[i] = (float) out;
            }
        }
        if (s != null && "yarn".equals(s.type())) {
            // transformers' _compute_yarn_parameters: interpolated (1 / (factor * theta^(2i/hd))) and extrapolated
            // (1 / theta^(2i/hd)) frequencies blended by a linear ramp over the dimensions between the correction
            // bounds of beta_fast and beta_slow rotations at the original context length
            int dim = c.headDim();
            double base = c.ropeTheta();
            double low = correctionDim(s.highFreqFactor(), dim, base, s.originalMaxPositionEmbeddings());
            double high = correctionDim(s.lowFreqFactor(), dim, base, s.originalMaxPositionEmbeddings());
            if (s.truncate()) {
                low = Math.floor(low);
                high = Math.ceil(high);
            }
            low = Math.max(low, 0);
            high = Math.min(high, dim - 1);
            if (low == high) high += 0.001;
            for (int i = 0; i < half; i++) {
                float pos = (float) Math.pow(base, (float) (2 * i) / dim);     // f32, as torch computes it
                float extrapolation = 1f / pos, interpolation = 1f / (s.factor() * pos);
                float ramp = (float) Math.min(1, Math.max(0, (i - low) / (high - low)));
                float extra = 1f - ramp;                                       // inv_freq_extrapolation_factor
                inv[i] = interpolation * (1f - extra) + extrapolation * extra;
            }
            return new RopeTable(dim, inv, s.attentionFactor());
        }
        return new RopeTable(c.headDim(), inv);
    }

    /**
     * out[0, hd) = the key or query x[xOff, +hd) rotated by {@code by} positions (negative: back), with angles and
     * products in double and no attention scale (x carries it already): what a policy that moves a cached key to
     * another position, or back to its pre-RoPE form, needs.
     */
    public void rotate(float[] x, int xOff, long by, double[] out) {
        int half = headDim / 2;
        for (int j = 0; j < half; j++) {
            double angle = (double) by * invFreq[j], c = Math.cos(angle), s = Math.sin(angle);
            double a = x[xOff + j], b = x[xOff + j + half];
            out[j] = a * c - b * s;
            out[j + half] = b * c + a * s;
        }
    }

    /** The dimension at which a frequency makes {@code rotations} turns over {@code maxPos} positions (YaRN). */
    private static double correctionDim(double rotations, int dim, double base, int maxPos) {
        return (dim * Math.log(maxPos / (rotations * 2 * Math.PI))) / (2 * Math.log(base));
    }
}
