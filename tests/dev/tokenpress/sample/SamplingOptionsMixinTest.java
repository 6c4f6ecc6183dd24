package dev.tokenpress.sample;

import dev.tokenpress.cli.SamplingOptionsMixin;
import org.junit.jupiter.api.Test;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;

import static org.junit.jupiter.api.Assertions.*;

class SamplingOptionsMixinTest {

    @Command(name = "gen")
    static class Gen implements Runnable {
        @Mixin
        SamplingOptionsMixin sampling;
        SamplingOptions parsed;

        @Override
        public void run() {
            parsed = sampling.toOptions();
        }
    }

    static SamplingOptions parse(String... args) {
        Gen g = new Gen();
        new CommandLine(g).parseArgs(args);
        return g.sampling.toOptions();
    }

    @Test
    void defaultsEqualSamplingOptionsDefaults() {
        assertEquals(SamplingOptions.defaults(), parse());
    }

    @Test
    void parsesLlamaCppFlagNames() {
        SamplingOptions o = parse("--temp", "0.7", "--top-k", "20", "--top-p", "0.9", "--min-p", "0.1",
                "--typical", "0.5", "--repeat-last-n", "32", "--repeat-penalty", "1.1", "--presence-penalty", "0.2",
                "--frequency-penalty", "0.3", "--mirostat", "2", "--mirostat-lr", "0.2", "--mirostat-ent", "4",
                "-s", "42");
        assertEquals(new SamplingOptions(0.7, 20, 0.9, 0.1, 0.5, 32, 1.1, 0.2, 0.3, 2, 0.2, 4.0, 42), o);
        assertEquals(7, parse("--seed", "7").seed());
    }

    @Test
    void rejectsOutOfRangeWithParameterException() {
        for (String[] bad : new String[][]{{"--top-p", "0"}, {"--top-p", "1.5"}, {"--mirostat", "3"},
                {"--min-p", "-0.1"}, {"--typical", "0"}, {"--repeat-last-n", "-2"}, {"--repeat-penalty", "0"},
                {"--mirostat-ent", "-1"}, {"--seed", "-5"}}) {
            CommandLine.ParameterException e = assertThrows(CommandLine.ParameterException.class, () -> parse(bad),
                    String.join(" ", bad));
            assertFalse(e.getMessage().contains("\n"));
            assertTrue(e.getMessage().startsWith(bad[0]), e.getMessage());
        }
        // through execute(): picocli reports it as a usage error (exit code 2)
        Gen g = new Gen();
        CommandLine cl = new CommandLine(g);
        cl.setErr(new java.io.PrintWriter(new java.io.StringWriter()));
        assertEquals(2, cl.execute("--mirostat", "5"));
        assertEquals(0, new CommandLine(new Gen()).execute("--temp", "0"));
    }

    @Test
    void helpShowsDefaults() {
        String usage = new CommandLine(new Gen()).getUsageMessage(CommandLine.Help.Ansi.OFF).replaceAll("\\s+", " ");
        assertTrue(usage.contains("--top-k=N"), usage);
        assertTrue(usage.contains("default: 40"), usage);
        assertTrue(usage.contains("-s, --seed=SEED"), usage);
        assertTrue(usage.contains("default: 0.95"), usage);
    }

    @Test
    void parsesDryXtcTopNSigmaAndDynatempFlags() {
        SamplingOptions o = parse("--dry-multiplier", "0.8", "--dry-base", "2", "--dry-allowed-length", "3",
                "--dry-penalty-last-n", "128", "--dry-sequence-breaker", "\\n", "--dry-sequence-breaker", "###",
                "--xtc-probability", "0.5", "--xtc-threshold", "0.2", "--top-nsigma", "1.5", "--dynatemp-range", "0.3",
                "--dynatemp-exp", "1.2");
        assertEquals(0.8, o.dryMultiplier(), 1e-12);
        assertEquals(2.0, o.dryBase(), 1e-12);
        assertEquals(3, o.dryAllowedLength());
        assertEquals(128, o.dryPenaltyLastN());
        assertEquals(java.util.List.of("\n", "###"), o.drySequenceBreakers());
        assertEquals(0.5, o.xtcProbability(), 1e-12);
        assertEquals(0.2, o.xtcThreshold(), 1e-12);
        assertEquals(1.5, o.topNSigma(), 1e-12);
        assertEquals(0.3, o.dynatempRange(), 1e-12);
        assertEquals(1.2, o.dynatempExp(), 1e-12);
        assertEquals(java.util.List.of(), parse("--dry-sequence-breaker", "none").drySequenceBreakers());
        assertThrows(CommandLine.ParameterException.class, () -> parse("--dry-base", "0.5"));
        assertThrows(CommandLine.ParameterException.class, () -> parse("--xtc-probability", "2"));
    }
}
