package dev.tokenpress.api;

import dev.tokenpress.io.ChatTemplate;
import org.junit.jupiter.api.Test;

import java.util.Random;

import static org.junit.jupiter.api.Assertions.*;

/** Thinking blocks split off replies, whole and as they stream in pieces of every size. */
class ReasoningTest {

    @Test
    void splitsAWholeReply() {
        assertEquals(new Reasoning.Split("Two plus two.", "4"), Reasoning.split("<think>\nTwo plus two.\n</think>\n\n4", false));
        assertEquals(new Reasoning.Split("Two plus two.", "4 "), Reasoning.split("  Two plus two. </think>  4 ", true),
                "the prompt opened the block");
        assertEquals(new Reasoning.Split("", "Just 4."), Reasoning.split("Just 4.", false));
        assertEquals(new Reasoning.Split("", " 4 <think>x</think>"), Reasoning.split(" 4 <think>x</think>", false),
                "a block not at the start is text");
        assertEquals(new Reasoning.Split("cut off", ""), Reasoning.split("<think>cut off", false));
        assertEquals(new Reasoning.Split("all thinking", ""), Reasoning.split("all thinking\n", true));
        assertEquals(new Reasoning.Split("", "<thi"), Reasoning.split("<thi", false));
        assertEquals(new Reasoning.Split("", ""), Reasoning.split("", true));
        assertTrue(Reasoning.opensThinking("<|Assistant|><think>\n"));
        assertFalse(Reasoning.opensThinking("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
        assertFalse(Reasoning.templateThinks(ChatTemplate.named("chatml")));
        assertTrue(Reasoning.templateThinks(ChatTemplate.fromJinja("{{ messages[0].content.split('</think>')[-1] }}", "", "", "t")));
    }

    /** The streamed parts add up to the whole split, however the reply is cut into pieces. */
    @Test
    void streamedPiecesAddUpToTheSplit() {
        String[] replies = {
                "<think>\nLet me think.\n\nIt is 4.\n</think>\n\nThe answer is 4.",
                "  <think>a</think>b", "<think></think>", "<think>  </think>  x  ", "<think>no end yet  ",
                "plain answer", "  plain with <think> inside", "<thin", "<", "", "   ",
                "reasoning < / think > </think", "reasoning </thinking> more </think> answer </think> tail",
                "x</think>y", "\n\n</think>\n\nanswer"};
        Random rnd = new Random(7);
        for (String reply : replies)
            for (boolean open : new boolean[] {false, true})
                for (int trial = 0; trial < 40; trial++) {
                    Reasoning.Splitter sp = new Reasoning.Splitter(open);
                    StringBuilder r = new StringBuilder(), c = new StringBuilder();
                    int at = 0;
                    while (at < reply.length()) {
                        int n = 1 + rnd.nextInt(trial % 4 == 0 ? 1 : 6);
                        int to = Math.min(reply.length(), at + n);
                        Reasoning.Split s = sp.add(reply.substring(at, to));
                        r.append(s.reasoning());
                        c.append(s.content());
                        at = to;
                    }
                    Reasoning.Split s = sp.finish();
                    r.append(s.reasoning());
                    c.append(s.content());
                    Reasoning.Split want = Reasoning.split(reply, open);
                    assertEquals(want.reasoning(), r.toString(), "reasoning of '" + reply + "' open=" + open);
                    assertEquals(want.content(), c.toString(), "content of '" + reply + "' open=" + open);
                }
    }
}
