package dev.tokenpress.api;

import dev.tokenpress.io.ChatTemplate;
import dev.tokenpress.io.ChatTemplate.Message;
import dev.tokenpress.io.HfTokenizer;
import dev.tokenpress.sample.SamplingOptions;

import java.util.ArrayList;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Set;

/**
 * A conversation with an instruction-tuned model over one {@link Session}: each {@link #send} feeds only what the
 * KV cache does not hold yet (the end of the previous reply and the new user message in the model's
 * {@link ChatTemplate} format; for a template that rewrites earlier text, what follows the tokens the cache shares
 * with the new rendering, or everything where the cache cannot be cut back) and generates the reply, so earlier turns are never recomputed and the KV policy
 * acts over the whole conversation as it does in one long generation. The tokens in the cache are the rendered
 * conversation's: the prompt pieces as the tokenizer encodes them and each reply's tokens as sampled, closed by the
 * format's end of reply (the end-of-turn token the model emitted, or the format's closing text when the reply
 * was cut by the token limit). Generation stops at the model's EOS tokens and at the format's stop tokens.
 *
 * <pre>{@code
 * try (TokenPress tp = TokenPress.load(dir, LoadOptions.defaults());
 *      Session s = tp.newSession(4096)) {
 *     Chat chat = new Chat(tp, s, ChatTemplate.forModel(dir), "You are a concise assistant.");
 *     chat.send("What is a KV cache?", 256, SamplingOptions.greedy(), System.out::print);
 * }
 * }</pre>
 */
public final class Chat {
    private final Session session;
    private final HfTokenizer tokenizer;
    private final ChatTemplate template;
    private final String system;
    private final Set<Integer> stops = new HashSet<>();
    private final List<Message> history = new ArrayList<>();
    private String inCache = "";        // the text the cache holds: prompts, replies and their closing text
    private int[] pending = new int[0]; // tokens to feed before the next user message
    private boolean full;               // a reply filled the cache
    private boolean resync;             // a turn failed: match the next one by tokens, not by text

    /**
     * A conversation on {@code session} (reset here) in {@code template}'s format, with a system message unless
     * {@code system} is null or empty.
     */
    public Chat(TokenPress tp, Session session, ChatTemplate template, String system) {
        this.session = session;
        this.tokenizer = tp.tokenizer();
        this.template = template;
        this.system = system == null || system.isEmpty() ? null : system;
        for (int id : template.stopTokenIds(tokenizer)) stops.add(id);
        reset();
    }

    /** Forgets the conversation (the system message stays) and clears the session. */
    public void reset() {
        session.reset();
        history.clear();
        if (system != null) history.add(Message.system(system));
        inCache = "";
        pending = new int[0];
        full = false;
        resync = false;
    }

    /** The conversation so far (system message first if any). */
    public List<Message> history() {
        return Collections.unmodifiableList(history);
    }

    public ChatTemplate template() { return template; }

    /** Tokens the session holds (the conversation's length in the KV cache). */
    public int position() { return session.position(); }

    /**
     * Adds a user message and generates the reply (streamed to {@code listener}, which may be null); the reply
     * joins the conversation. Stop reasons as {@link Session#generate}: "eos" (end of turn), "length" (maxTokens:
     * the reply is closed as if it had ended), "context" (the cache is full: {@link #reset} before going on).
     *
     * @throws IllegalArgumentException if the message does not fit in what is left of the context
     * @throws IllegalStateException    after a reply that filled the context, until {@link #reset}
     */
    public GenerationResult send(String user, int maxTokens, SamplingOptions options, TokenListener listener) {
        if (full)
            throw new IllegalStateException("the context is full after the last reply: reset the chat (or use a larger "
                    + "context or an evicting KV policy)");
        List<Message> next = new ArrayList<>(history);
        next.add(Message.user(user));
        String text = template.render(next, true);
        int[] tokens;
        if (!resync && text.startsWith(inCache)) {
            String delta = text.substring(inCache.length());
            tokens = session.position() == 0 ? tokenizer.encode(delta) : concat(pending, tokenizer.encodeNoSpecial(delta));
        } else {
            // the template rewrites earlier text (e.g. the system message moves to the last user message): keep the
            // tokens the cache shares with the new rendering where it can be cut back, feed the rest
            int[] all = tokenizer.encode(text), have = session.tokens();
            int keep = 0, max = Math.min(have.length, all.length - 1);
            while (keep < max && have[keep] == all[keep]) keep++;
            if (keep > 0 && session.canTruncate()) session.truncate(keep);
            else {
                session.reset();
                keep = 0;
            }
            tokens = java.util.Arrays.copyOfRange(all, keep, all.length);
        }
        GenerationResult r;
        try {
            r = session.generate(tokens, maxTokens, options, listener, null, stops);
        } catch (RuntimeException | Error e) {
            resync = true; // what the cache holds is known only as tokens now: the next turn compares tokens
            throw e;
        }
        resync = false;
        history.add(Message.user(user));
        history.add(Message.assistant(r.text()));
        inCache = text + r.text() + template.endOfReply();  // the text the cache now holds (once pending is fed)
        // close the reply in the cache: the end-of-turn token the model emitted, or the format's closing text
        String close = template.endOfReply();
        int[] closing;
        int stop = session.lastStopToken();
        String stopText = stop >= 0 ? tokenizer.decode(new int[] {stop}) : null;
        if (r.stopReason().equals("eos") && stopText != null && !stopText.isEmpty() && close.startsWith(stopText)) {
            String rest = close.substring(stopText.length());
            closing = concat(new int[] {stop}, rest.isEmpty() ? new int[0] : tokenizer.encodeNoSpecial(rest));
        } else {
            closing = tokenizer.encodeNoSpecial(close);
        }
        pending = concat(session.unfedTokens(), closing);
        full = r.stopReason().equals("context");
        return r;
    }

    private static int[] concat(int[] a, int[] b) {
        int[] c = new int[a.length + b.length];
        System.arraycopy(a, 0, c, 0, a.length);
        System.arraycopy(b, 0, c, a.length, b.length);
        return c;
    }
}
