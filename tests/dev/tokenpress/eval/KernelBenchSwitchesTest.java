package dev.tokenpress.eval;

import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;

/** A run's switches in {@code KernelBench e2epol}: system properties set for the run and restored after it. */
class KernelBenchSwitchesTest {
    @Test
    void propertiesAreSetAndRestored() {
        System.setProperty("tokenpress.test.switchA", "before");
        try {
            Runnable restore = KernelBench.applySwitches(null, "tokenpress.test.switchA=on,tokenpress.test.switchB=x=y");
            assertEquals("on", System.getProperty("tokenpress.test.switchA"));
            assertEquals("x=y", System.getProperty("tokenpress.test.switchB"), "only the first '=' separates");
            restore.run();
            assertEquals("before", System.getProperty("tokenpress.test.switchA"));
            assertNull(System.getProperty("tokenpress.test.switchB"));
            KernelBench.applySwitches(null, null).run(); // no switches: nothing to do
        } finally {
            System.clearProperty("tokenpress.test.switchA");
            System.clearProperty("tokenpress.test.switchB");
        }
    }
}
