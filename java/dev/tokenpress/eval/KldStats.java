package dev.tokenpress.eval;

import dev.tokenpress.sample.LogitRows;

import java.util.Arrays;

/**
 * Per-token statistics of one policy against a baseline, accumulated one scored position at a time from the two
 * logit rows (llama-perplexity's KL-divergence mode): NLL of both, KL(baseline ‖ policy) over the full-vocabulary
 * softmax, whether the argmax agrees, and Δp = p_policy(target) − p_baseline(target). Memory: O(1) per position
 * plus one double per position for the KL percentiles; all sums in double precision.
 */
public final class KldStats {
    private int count, agree;
    private double nll, nll2, baseNll, baseNll2, kld, kldMax, dp, dp2;
    private double[] klds = new double[256];
    private boolean hasBaseline;

    /** Adds a position scored by the policy alone (no baseline). */
    public void add(float[] policyLogits, int target) {
        double lse = LogitRows.logSumExp(policyLogits, 0, policyLogits.length);
        double x = lse - policyLogits[target];
        nll += x;
        nll2 += x * x;
        count++;
    }

    /**
     * Adds a position with both logit rows [V] and the token that follows. With the rows' maxima m and
     * S = Σ e^(x − m): log-sum-exps l = m + ln S, and KL(b ‖ q) = Σ p_b·((b − l_b) − (q − l_q)) = T / S_b − l_b + l_q
     * with T = Σ e^(b − m_b)·(b − q): one pass of two exponentials per entry ({@link LogitRows}), exactly 0 when the
     * rows are equal.
     *
     * @return the position's KL(baseline ‖ policy) in nats
     */
    public double add(float[] policyLogits, float[] baselineLogits, int target) {
        hasBaseline = true;
        int v = policyLogits.length;
        if (baselineLogits.length != v) throw new IllegalArgumentException("rows of " + v + " and " + baselineLogits.length + " logits");
        float mq = LogitRows.max(policyLogits, 0, v), mb = LogitRows.max(baselineLogits, 0, v);
        int aq = LogitRows.indexOf(policyLogits, 0, v, mq), ab = LogitRows.indexOf(baselineLogits, 0, v, mb);
        double[] sums = new double[3];
        LogitRows.klSums(policyLogits, baselineLogits, v, mq, mb, sums);
        double lq = mq + Math.log(sums[0]), lb = mb + Math.log(sums[1]);
        double k = sums[2] / sums[1] - lb + lq;
        double xq = lq - policyLogits[target], xb = lb - baselineLogits[target];
        nll += xq;
        nll2 += xq * xq;
        baseNll += xb;
        baseNll2 += xb * xb;
        kld += k;
        kldMax = Math.max(kldMax, k);
        if (count == klds.length) klds = Arrays.copyOf(klds, 2 * klds.length);
        klds[count] = k;
        if (aq == ab) agree++;
        double d = Math.exp(-xq) - Math.exp(-xb);
        dp += d;
        dp2 += d * d;
        count++;
        return k;
    }

    public int count() { return count; }

    public boolean hasBaseline() { return hasBaseline; }

    /** Mean NLL of the policy, nats per token. */
    public double meanNll() { return nll / count; }

    /** Standard error of the mean NLL. */
    public double nllStderr() { return stderr(nll, nll2); }

    public double meanBaselineNll() { return hasBaseline ? baseNll / count : Double.NaN; }

    public double baselineNllStderr() { return hasBaseline ? stderr(baseNll, baseNll2) : Double.NaN; }

    public double meanKld() { return hasBaseline ? kld / count : Double.NaN; }

    public double maxKld() { return hasBaseline ? kldMax : Double.NaN; }

    /** The q-quantile (0..1) of the per-position KL divergences (nearest rank). */
    public double kldQuantile(double q) {
        if (!hasBaseline || count == 0) return Double.NaN;
        double[] s = Arrays.copyOf(klds, count);
        Arrays.sort(s);
        int i = (int) Math.ceil(q * count) - 1;
        return s[Math.max(0, Math.min(count - 1, i))];
    }

    /** Fraction of positions whose most likely token is the same under the policy and the baseline. */
    public double top1Agreement() { return hasBaseline ? (double) agree / count : Double.NaN; }

    /** Mean of p_policy(target) − p_baseline(target). */
    public double meanDeltaP() { return hasBaseline ? dp / count : Double.NaN; }

    /** Root mean square of p_policy(target) − p_baseline(target). */
    public double rmsDeltaP() { return hasBaseline ? Math.sqrt(dp2 / count) : Double.NaN; }

    private double stderr(double s, double s2) {
        if (count < 2) return Double.NaN;
        double m = s / count;
        double var = Math.max(0, (s2 / count - m * m)) * count / (count - 1);
        return Math.sqrt(var / count);
    }
}
