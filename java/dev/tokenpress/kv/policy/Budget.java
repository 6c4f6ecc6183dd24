package dev.tokenpress.kv.policy;

import java.util.Locale;

/**
 * A token budget in a {@code --kv} spec: an absolute token count ({@code budget=256}) or a ratio
 * ({@code budget=0.25} or {@code budget=25%}) of the sequence length seen so far (prompt and generated tokens
 * up to that moment), so a ratio keeps a constant fraction of the sequence as it grows. A value with a decimal
 * point or a percent sign is a ratio and must lie in [0, 1]; a plain integer is a count ({@code 1} is one token,
 * {@code 1.0} is everything).
 *
 * @param value the count, or the ratio in [0, 1]
 * @param ratio whether {@code value} is a ratio
 */
public record Budget(double value, boolean ratio) {

    public static Budget count(int n) { return new Budget(n, false); }

    public static Budget fraction(double r) { return new Budget(r, true); }

    /** The number of tokens for a sequence of {@code seqLen} tokens: the count, or ceil(ratio * seqLen). */
    public int tokens(int seqLen) {
        if (!ratio) return (int) value;
        return (int) Math.ceil(value * seqLen - 1e-9);
    }

    /** As {@link #tokens(int)} for a ratio of a base count (e.g. a recent window as a fraction of the budget). */
    public int of(int base) {
        return ratio ? (int) Math.ceil(value * base - 1e-9) : (int) value;
    }

    /**
     * Parses "256", "0.25", "25%"; null when the text is not a count or a ratio in [0, 1].
     */
    public static Budget parse(String text) {
        String t = text.trim();
        try {
            if (t.endsWith("%")) {
                double p = Double.parseDouble(t.substring(0, t.length() - 1));
                return p >= 0 && p <= 100 ? new Budget(p / 100.0, true) : null;
            }
            if (t.matches("\\d+")) {
                long v = Long.parseLong(t);
                return v <= Integer.MAX_VALUE ? new Budget(v, false) : null;
            }
            if (t.matches("\\d*\\.\\d*([eE][-+]?\\d+)?") && !t.equals(".")) {
                double r = Double.parseDouble(t);
                return r >= 0 && r <= 1 ? new Budget(r, true) : null;
            }
        } catch (NumberFormatException e) {
            return null;
        }
        return null;
    }

    @Override
    public String toString() {
        if (!ratio) return Integer.toString((int) value);
        String s = String.format(Locale.ROOT, "%.6f", value).replaceAll("0+$", "");
        return s.endsWith(".") ? s + "0" : s;
    }
}
