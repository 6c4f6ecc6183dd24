package dev.tokenpress.api;

import dev.tokenpress.io.ChatTemplate;

/**
 * The thinking of reasoning models (DeepSeek-R1 and its Qwen2/Llama distills, QwQ, Qwen3): a reply that begins with a
 * {@code <think>...</think>} block, or whose prompt already opened one (the R1 distills' templates end the reply
 * prompt with {@code <think>\n}), is split into its reasoning and its answer, as llama-server's {@code
 * --reasoning-format deepseek} and vLLM's {@code deepseek_r1} reasoning parser do ({@code reasoning_content} beside
 * {@code content}). The reasoning is trimmed; the answer starts at its first non-blank character. A reply cut before
 * {@code </think>} is all reasoning.
 */
public final class Reasoning {
    public static final String OPEN = "<think>", CLOSE = "</think>";

    private Reasoning() {}

    /** A reply split: its reasoning ("" when none) and its answer. */
    public record Split(String reasoning, String content) {}

    /** Whether a chat template writes thinking blocks (it mentions {@code </think>}). */
    public static boolean templateThinks(ChatTemplate t) {
        return t.templateText() != null && t.templateText().contains(CLOSE);
    }

    /** Whether a prompt leaves the reply inside a thinking block: it ends with {@code <think>} and blanks. */
    public static boolean opensThinking(String prompt) {
        return prompt.stripTrailing().endsWith(OPEN);
    }

    /** Splits a whole reply; {@code open}: its prompt opened the thinking block. */
    public static Split split(String reply, boolean open) {
        String r = reply;
        if (!open) {
            String lead = r.stripLeading();
            if (!lead.startsWith(OPEN)) return new Split("", reply);
            r = lead.substring(OPEN.length());
        }
        int close = r.indexOf(CLOSE);
        if (close < 0) return new Split(r.strip(), "");
        return new Split(r.substring(0, close).strip(), r.substring(close + CLOSE.length()).stripLeading());
    }

    /**
     * Splits a reply as it streams: {@link #add} takes each piece and returns what can be sent of the reasoning and of
     * the answer; the pieces sent add up to {@link #split}'s parts. Held back: an opening that may still become {@code
     * <think>}, an ending that may still become {@code </think>}, and blanks that may still end the reasoning or begin
     * the answer.
     */
    public static final class Splitter {
        private enum Mode { UNDECIDED, THINKING, ANSWER }

        private final StringBuilder buf = new StringBuilder();
        private Mode mode;
        private int sent;          // characters of buf sent (in the current part)
        private boolean started;   // the current part has sent a non-blank character

        /** {@code open}: the prompt opened the thinking block. */
        public Splitter(boolean open) {
            mode = open ? Mode.THINKING : Mode.UNDECIDED;
        }

        /** The next piece of the reply; returns the reasoning and answer text that can be sent now. */
        public Split add(String piece) {
            buf.append(piece);
            return advance(false);
        }

        /** The end of the reply: what is left of either part. */
        public Split finish() {
            return advance(true);
        }

        private Split advance(boolean end) {
            StringBuilder reasoning = new StringBuilder(), answer = new StringBuilder();
            while (true) {
                if (mode == Mode.UNDECIDED) {
                    String s = buf.toString();
                    int lead = 0;
                    while (lead < s.length() && Character.isWhitespace(s.charAt(lead))) lead++;
                    String rest = s.substring(lead);
                    if (rest.startsWith(OPEN)) {
                        mode = Mode.THINKING;
                        sent = lead + OPEN.length();
                        started = false;
                        continue;
                    }
                    if (!end && OPEN.startsWith(rest)) break; // may still become <think>
                    mode = Mode.ANSWER;
                    sent = 0;
                    started = true; // no thinking block: the reply is the answer as it is
                    continue;
                }
                if (mode == Mode.THINKING) {
                    String s = buf.toString();
                    int close = s.indexOf(CLOSE, sent);
                    if (close >= 0) {
                        reasoning.append(trimmed(s, sent, close, true));
                        mode = Mode.ANSWER;
                        sent = close + CLOSE.length();
                        started = false;
                        continue;
                    }
                    int safe = s.length();
                    if (!end) {
                        for (int k = Math.min(CLOSE.length() - 1, s.length() - sent); k > 0; k--)
                            if (s.endsWith(CLOSE.substring(0, k))) {
                                safe = s.length() - k;
                                break;
                            }
                    }
                    reasoning.append(trimmed(s, sent, safe, true));
                    break;
                }
                String s = buf.toString(); // ANSWER
                answer.append(trimmed(s, sent, s.length(), false));
                break;
            }
            return new Split(reasoning.toString(), answer.toString());
        }

        /**
         * buf[from, to) less its leading blanks until the part has started and, for reasoning, less trailing blanks
         * (held until more text follows them); advances {@code sent} over what it returns or drops.
         */
        private String trimmed(String s, int from, int to, boolean holdTrailing) {
            int a = from;
            if (!started) while (a < to && Character.isWhitespace(s.charAt(a))) a++;
            int b = to;
            if (holdTrailing) while (b > a && Character.isWhitespace(s.charAt(b - 1))) b--;
            if (b > a) started = true;
            sent = Math.max(sent, started ? b : a);
            return s.substring(a, b);
        }
    }
}
