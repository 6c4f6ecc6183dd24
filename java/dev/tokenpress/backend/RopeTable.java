package dev.tokenpress.backend;

import dev.tokenpress.model.LlamaConfig;

/**
 * Rotary embedding inverse frequencies, Hugging Face "rotate_half" layout: dimension i pairs with i + hd/2 and
 * uses {@code invFreq[i]}. Llama 3 {@code rope_scaling} is applied here once, so kernels only see invFreq.
 *
 * @param headDim head dimension hd
 * @param invFreq [hd/2] inverse frequencies
 */
public record RopeTable(int headDim, float[] invFreq) {

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
        return new RopeTable(c.headDim(), inv);
    }
}
