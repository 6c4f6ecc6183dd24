package dev.tokenpress.sample;

import java.util.Arrays;

/**
 * Repetition, presence and frequency penalties over the last {@code lastN} accepted tokens (llama.cpp
 * {@code penalties}): for a token seen {@code count > 0} times, a positive logit is divided by {@code repeat} and a
 * non-positive one multiplied by it, then {@code count * frequency + presence} is subtracted.
 * {@code lastN == 0} disables; {@code lastN == -1} looks at every accepted token.
 */
public final class PenaltiesSampler implements Sampler {
    private final int lastN;
    private final float repeat, frequency, presence;
    private final int[] counts;
    private final int[] stamp;
    private int stampNow;
    // ring buffer of the window (grows when lastN == -1)
    private int[] ring;
    private int first, len;

    public PenaltiesSampler(int vocabSize, int lastN, double repeat, double presence, double frequency) {
        if (lastN < -1) throw new IllegalArgumentException("lastN must be >= -1, got " + lastN);
        this.lastN = lastN;
        this.repeat = (float) repeat;
        this.presence = (float) presence;
        this.frequency = (float) frequency;
        this.counts = new int[vocabSize];
        this.stamp = new int[vocabSize];
        this.ring = new int[lastN > 0 ? lastN : 64];
    }

    @Override
    public String name() {
        return "penalties";
    }

    private boolean active() {
        return lastN != 0 && !(repeat == 1f && frequency == 0f && presence == 0f);
    }

    /**
     * True when applying the penalties can only lower logits (or does nothing): repeat >= 1, presence >= 0 and
     * frequency >= 0. Then a token outside the m most likely ones stays outside after the penalties, which lets
     * {@link SamplerChain#sampleCandidates} work from the top (k + {@link #penalisedTokens()}) logits alone.
     */
    public boolean onlyLowers() {
        // finite: a penalty beyond float range makes 0 · ∞ = NaN of a zero logit
        return !active() || (repeat >= 1f && presence >= 0f && frequency >= 0f
                && Float.isFinite(repeat) && Float.isFinite(presence) && Float.isFinite(frequency));
    }

    /** Distinct tokens the next {@link #apply} penalises (0 when the penalties are off). */
    public int penalisedTokens() {
        if (!active() || len == 0) return 0;
        if (++stampNow == 0) {
            Arrays.fill(stamp, 0);
            stampNow = 1;
        }
        int n = 0;
        for (int j = 0; j < len; j++) {
            int t = ring[(first + j) % ring.length];
            if (stamp[t] != stampNow) {
                stamp[t] = stampNow;
                n++;
            }
        }
        return n;
    }

    @Override
    public void accept(int token) {
        if (lastN == 0) return;
        if (token < 0 || token >= counts.length)
            throw new IllegalArgumentException("token " + token + " outside vocabulary of " + counts.length);
        if (lastN > 0 && len == lastN) {
            int old = ring[first];
            counts[old]--;
            first = (first + 1) % ring.length;
            len--;
        } else if (len == ring.length) { // unbounded window: grow
            int[] nr = new int[ring.length * 2];
            for (int i = 0; i < len; i++) nr[i] = ring[(first + i) % ring.length];
            ring = nr;
            first = 0;
        }
        ring[(first + len) % ring.length] = token;
        len++;
        counts[token]++;
    }

    /** Tokens currently in the window, oldest first (for tests and diagnostics). */
    public int[] window() {
        int[] out = new int[len];
        for (int i = 0; i < len; i++) out[i] = ring[(first + i) % ring.length];
        return out;
    }

    @Override
    public void reset() {
        Arrays.fill(counts, 0);
        first = 0;
        len = 0;
    }

    private void penalise(float[] lg, int i, int count) {
        float l = lg[i];
        l = l <= 0f ? l * repeat : l / repeat;
        lg[i] = l - (count * frequency + presence);
    }

    @Override
    public void apply(TokenDataArray cur) {
        if (!active() || len == 0) return;
        // Fast path: the list still holds token t at position t (it does as the chain's first stage), so only the
        // distinct tokens of the window are touched.
        boolean direct = true;
        for (int j = 0; j < len && direct; j++) {
            int t = ring[(first + j) % ring.length];
            if (t >= cur.size || cur.ids[t] != t) direct = false;
        }
        if (direct) {
            if (++stampNow == 0) {
                Arrays.fill(stamp, 0);
                stampNow = 1;
            }
            for (int j = 0; j < len; j++) {
                int t = ring[(first + j) % ring.length];
                if (stamp[t] == stampNow) continue;
                stamp[t] = stampNow;
                penalise(cur.logits, t, counts[t]);
            }
        } else {
            for (int i = 0; i < cur.size; i++) {
                int id = cur.ids[i];
                if (id >= 0 && id < counts.length && counts[id] > 0) penalise(cur.logits, i, counts[id]);
            }
        }
        cur.sorted = false;
    }
}
