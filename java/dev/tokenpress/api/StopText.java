package dev.tokenpress.api;

import java.util.List;

/**
 * Generated text checked against stop strings as it streams: {@link #add} returns the part of the text that can be
 * sent now, holding back a tail that could still become a stop string; once a stop string appears the text ends
 * just before it ({@link #hit}) and nothing more is returned. Use {@code add} as the {@link TokenListener} and
 * {@code hit} as the stop request of {@link Session#generate(int[], int, dev.tokenpress.sample.SamplingOptions,
 * TokenListener, java.util.function.Consumer, java.util.Set, java.util.function.BooleanSupplier)}.
 */
public final class StopText {
    private final List<String> stops;
    private final StringBuilder text = new StringBuilder();
    private int sent;
    private boolean hit;

    public StopText(List<String> stops) {
        this.stops = stops.stream().filter(s -> !s.isEmpty()).toList();
    }

    /** Appends a piece of generated text and returns what can be sent now (possibly empty). */
    public String add(String piece) {
        if (hit) return "";
        text.append(piece);
        int cut = -1;
        for (String s : stops) {
            int i = text.indexOf(s, Math.max(0, sent - s.length() + 1));
            if (i >= 0 && (cut < 0 || i < cut)) cut = i;
        }
        if (cut >= 0) {
            hit = true;
            text.setLength(cut);
            String out = cut > sent ? text.substring(sent) : "";
            sent = text.length();
            return out;
        }
        int hold = 0;
        for (String s : stops)
            for (int k = Math.min(s.length() - 1, text.length() - sent); k > hold; k--)
                if (endsWith(text, s, k)) {
                    hold = k;
                    break;
                }
        int safe = text.length() - hold;
        String out = text.substring(sent, safe);
        sent = safe;
        return out;
    }

    /** Whether a stop string appeared (the text ends before it). */
    public boolean hit() {
        return hit;
    }

    /** What is still held back, for the end of generation; afterwards everything has been returned. */
    public String rest() {
        String out = text.substring(sent);
        sent = text.length();
        return out;
    }

    /** The whole text, cut before the first stop string. */
    public String text() {
        return text.toString();
    }

    /** Whether {@code text} ends with the first {@code k} characters of {@code s}. */
    private static boolean endsWith(StringBuilder text, String s, int k) {
        int off = text.length() - k;
        for (int i = 0; i < k; i++) if (text.charAt(off + i) != s.charAt(i)) return false;
        return true;
    }
}
