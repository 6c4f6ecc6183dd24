package dev.tokenpress.api;

import dev.tokenpress.io.ChatTemplate;
import dev.tokenpress.io.ChatTemplate.Message;
import dev.tokenpress.io.HfTokenizer;
import dev.tokenpress.sample.SamplingOptions;
import org.junit.jupiter.api.Test;

import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.Set;
import java.util.stream.IntStream;

import static org.junit.jupiter.api.Assertions.*;

/** Conversations over one session: what reaches the KV cache turn by turn, stop tokens, resets. */
class ChatTest {
    /** The embedded trained model: a random one repeats one token, which the stop-token case cannot use. */
    static final Path MODEL = Path.of("models", "tokenpress-tiny");

    static TokenPress load() {
        org.junit.jupiter.api.Assumptions.assumeTrue(java.nio.file.Files.isRegularFile(MODEL.resolve("model.safetensors")),
                "no embedded model");
        return TokenPress.load(MODEL, LoadOptions.defaults().withDevice("cpu").withThreads(2));
    }

    static int[] concat(int[]... parts) {
        return Arrays.stream(parts).flatMapToInt(Arrays::stream).toArray();
    }

    static int argmaxOfLastRow(float[] logits, int v) {
        int n = logits.length / v, best = 0;
        for (int j = 1; j < v; j++) if (logits[(n - 1) * v + j] > logits[(n - 1) * v + best]) best = j;
        return best;
    }

    /**
     * Two turns cut by the token limit: the second turn's prompt is the first reply's unfed last token, the closing
     * text and the new user message in the format (nothing else), the session then holds exactly the rendered
     * conversation's tokens, and the second reply's first token is what one prefill of those tokens predicts.
     */
    @Test
    void eachTurnFeedsOnlyWhatTheCacheLacks() {
        try (TokenPress tp = load(); Session s = tp.newSession(512)) {
            HfTokenizer tok = tp.tokenizer();
            ChatTemplate t = ChatTemplate.named("chatml");
            Chat chat = new Chat(tp, s, t, "You answer briefly.");
            GenerationResult r1 = chat.send("Hello there", 6, SamplingOptions.greedy(), null);
            assertEquals("length", r1.stopReason(), "the model does not end its turn within 6 tokens");
            int[] p1 = tok.encode(t.render(List.of(Message.system("You answer briefly."), Message.user("Hello there")), true));
            assertEquals(p1.length, r1.promptTokens());
            assertEquals(p1.length + 5, s.position(), "the 6th token waits for the next turn");

            GenerationResult r2 = chat.send("Tell me more", 6, SamplingOptions.greedy(), null);
            int[] close = tok.encodeNoSpecial(t.endOfReply());
            int[] user2 = tok.encodeNoSpecial("<|im_start|>user\nTell me more<|im_end|>\n<|im_start|>assistant\n");
            assertEquals(1 + close.length + user2.length, r2.promptTokens());
            int[] fed = concat(p1, r1.tokens(), close, user2);
            assertEquals(fed.length + 5, s.position());
            assertEquals(List.of(Message.system("You answer briefly."), Message.user("Hello there"),
                    Message.assistant(r1.text()), Message.user("Tell me more"), Message.assistant(r2.text())), chat.history());

            try (Session fresh = tp.newSession(512)) {
                int expect = argmaxOfLastRow(fresh.logits(fed), tp.config().vocabSize());
                assertEquals(expect, r2.tokens()[0]);
            }

            chat.reset();
            assertEquals(0, s.position());
            assertEquals(List.of(Message.system("You answer briefly.")), chat.history());
            GenerationResult again = chat.send("Hello there", 6, SamplingOptions.greedy(), null);
            assertArrayEquals(r1.tokens(), again.tokens(), "a reset conversation starts as the first did");
        }
    }

    /**
     * A template that rewrites earlier text (the system message rides with the last user message): the second turn
     * keeps the tokens the cache shares with the new rendering, feeds the rest, and answers as a fresh session over
     * the whole rendering does.
     */
    @Test
    void aTemplateThatRewritesEarlierTurns() {
        try (TokenPress tp = load(); Session s = tp.newSession(512); Session fresh = tp.newSession(512)) {
            ChatTemplate t = ChatTemplate.fromJinja("{%- for m in messages if m.role != 'system' %}"
                    + "{%- if m.role == 'user' %}[INST] {% if loop.last and messages[0].role == 'system' %}"
                    + "{{ messages[0].content }}\n\n{% endif %}{{ m.content }} [/INST]"
                    + "{%- else %}{{ m.content }}</s>{% endif %}{%- endfor %}", "", "", "test");
            Chat chat = new Chat(tp, s, t, "Answer in code.");
            chat.send("def add(a, b):", 5, SamplingOptions.greedy(), null);
            GenerationResult r2 = chat.send("def sub(a, b):", 5, SamplingOptions.greedy(), null);
            List<Message> h = chat.history();
            int[] all = tp.tokenizer().encode(t.render(h.subList(0, 4), true));
            assertTrue(r2.promptTokens() < all.length, "some tokens were kept: " + r2.promptTokens() + " of " + all.length);
            assertArrayEquals(all, Arrays.copyOf(s.tokens(), all.length));
            assertArrayEquals(fresh.generate(all, 5, SamplingOptions.greedy(), null).tokens(), r2.tokens());
        }
    }

    /**
     * Greedy JSON output checks the plain argmax first and masks only when it is not allowed: the same tokens as the
     * sampler chain masking every step (what a trace forces), and valid JSON.
     */
    @Test
    void greedyJsonTakesTheAllowedArgmax() {
        try (TokenPress tp = load(); Session a = tp.newSession(256); Session b = tp.newSession(256)) {
            int[] prompt = tp.tokenizer().encode("config = ");
            a.setOutputFormat(Session.OutputFormat.JSON_OBJECT);
            b.setOutputFormat(Session.OutputFormat.JSON_OBJECT);
            GenerationResult fast = a.generate(prompt, 40, SamplingOptions.greedy(), null);
            java.util.List<dev.tokenpress.sample.StepTrace> steps = new java.util.ArrayList<>();
            GenerationResult chain = b.generate(prompt, 40, SamplingOptions.greedy(), null, steps::add, java.util.Set.of());
            assertArrayEquals(chain.tokens(), fast.tokens());
            assertTrue(new dev.tokenpress.sample.JsonPrefix(true).feed(fast.text()), fast.text());
            assertTrue(fast.text().startsWith("{"), fast.text());
        }
    }

    /**
     * A stop token ends the reply without becoming part of it and is remembered for the next turn; a reply that
     * fills the context stops the conversation until a reset.
     */
    @Test
    void stopTokensAndAFullContext() {
        try (TokenPress tp = load()) {
            int[] prompt = tp.tokenizer().encode("The cat");
            try (Session s = tp.newSession(64)) {
                GenerationResult r = s.generate(prompt, 8, SamplingOptions.greedy(), null);
                assertArrayEquals(new int[] {r.tokens()[7]}, s.unfedTokens());
                assertEquals(-1, s.lastStopToken());
                // stop at the first token that is not a repeat of an earlier one
                int stop = -1, k;
                for (k = 1; k < 8; k++) {
                    int c = r.tokens()[k];
                    if (Arrays.stream(r.tokens(), 0, k).noneMatch(x -> x == c)) {
                        stop = c;
                        break;
                    }
                }
                assertTrue(stop >= 0, "8 greedy tokens of one value: " + Arrays.toString(r.tokens()));
                s.reset();
                GenerationResult stopped = s.generate(prompt, 8, SamplingOptions.greedy(), null, null, Set.of(stop));
                assertEquals("eos", stopped.stopReason());
                assertArrayEquals(Arrays.copyOf(r.tokens(), k), stopped.tokens());
                assertEquals(stop, s.lastStopToken());
                assertEquals(0, s.unfedTokens().length, "the token before the stop was fed by the step that produced the stop");
                assertEquals(prompt.length + k, s.position());
            }
            ChatTemplate t = ChatTemplate.named("llama3");
            int need = tp.tokenizer().encode(t.render(List.of(Message.user("hi")), true)).length;
            try (Session small = tp.newSession(need + 3)) {
                Chat chat = new Chat(tp, small, t, null);
                GenerationResult r = chat.send("hi", 50, SamplingOptions.greedy(), null);
                assertEquals("context", r.stopReason());
                IllegalStateException e = assertThrows(IllegalStateException.class,
                        () -> chat.send("more", 5, SamplingOptions.greedy(), null));
                assertTrue(e.getMessage().contains("reset"), e.getMessage());
                chat.reset();
                assertEquals("context", chat.send("hi", 50, SamplingOptions.greedy(), null).stopReason());
                chat.reset();
                String tooLong = String.join(" ", IntStream.range(0, 40).mapToObj(i -> "word" + i).toList());
                assertThrows(IllegalArgumentException.class, () -> chat.send(tooLong, 5, SamplingOptions.greedy(), null));
                assertTrue(chat.history().isEmpty(), "a refused message does not join the conversation");
            }
        }
    }
}
