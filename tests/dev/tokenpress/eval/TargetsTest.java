package dev.tokenpress.eval;

import org.junit.jupiter.api.Test;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The target table read off a gpu-check summary (an excerpt of real H200 runs). */
class TargetsTest {
    static final Path SUMMARY = Path.of("tests/resources/targets/gpu-summary-h200.txt");

    @Test
    void parsesFiguresPerWeightTypeAndTheDevice() throws Exception {
        String[] device = {null};
        Map<String, Double> f = Targets.parse(Files.readAllLines(SUMMARY), device);
        assertEquals("NVIDIA H200", device[0]);
        assertEquals(50.756, f.get("attn_32768_pct_copy_bw"), 1e-9);
        assertEquals(1.3725, f.get("cce_gemm_4096x2048_vs_gemm"), 1e-9, "the first of two values");
        assertEquals(1.8252, f.get("e2e_pol_131072_tidal_speedup@q8_0"), 1e-9);
        assertEquals(1.7330, f.get("e2e_pol_131072_tidal_speedup@as-stored"), 1e-9);
        assertNull(f.get("e2e_pol_131072_tidal_speedup"), "e2e_pol keys carry their weight type");
    }

    @Test
    void judgesEachTargetAndSaysWhereItWasMeasured() throws Exception {
        String[] device = {null};
        List<Targets.Row> rows = Targets.evaluate(Targets.parse(Files.readAllLines(SUMMARY), device), device[0]);
        assertEquals(Targets.TARGETS.size(), rows.size());
        Map<String, Targets.Row> by = new java.util.HashMap<>();
        for (Targets.Row r : rows) by.put(r.target().key(), r);
        assertTrue(by.get("attn_32768_pct_copy_bw").status().startsWith("not met"));
        assertTrue(by.get("e2e_short_q8_tps").status().startsWith("not met"), "1121.3 < 1150");
        assertTrue(by.get("e2e_pol_131072_tidal_speedup@q8_0").status().startsWith("met (on NVIDIA H200"));
        assertTrue(by.get("e2e_pol_131072_tidal_speedup@as-stored").status().startsWith("not met"), "1.733 < 1.8");
        assertEquals(68157440.0 / 23371776.0, by.get("quant_32768_bf16_kv_bytes").value(), 1e-12, "a ratio of two figures");
        assertTrue(by.get("quant_32768_bf16_kv_bytes").status().startsWith("not met"), "2.92 < 3.5");
        assertTrue(by.get("cce_gemm_4096x2048_vs_gemm").status().startsWith("not met"), "1.37 > 1.2 (at most)");
        // a summary without a figure: not measured, not "not met"
        List<Targets.Row> none = Targets.evaluate(Map.of(), null);
        for (Targets.Row r : none) assertEquals("not measured", r.status());
        // met on an H100: no device note
        List<Targets.Row> h100 = Targets.evaluate(Map.of("pol_32768_tidal_attn_speedup", 9.0), "NVIDIA H100 80GB HBM3");
        assertEquals("met", h100.stream().filter(r -> r.target().key().equals("pol_32768_tidal_attn_speedup")).findFirst()
                .orElseThrow().status());
    }

    @Test
    void printsOneRowPerTarget() throws Exception {
        String[] device = {null};
        ByteArrayOutputStream b = new ByteArrayOutputStream();
        Targets.print(Targets.evaluate(Targets.parse(Files.readAllLines(SUMMARY), device), device[0]),
                new PrintStream(b, true, StandardCharsets.UTF_8));
        String[] lines = b.toString(StandardCharsets.UTF_8).split("\n");
        assertEquals(2 + Targets.TARGETS.size(), lines.length);
        assertTrue(lines[2].contains("50.76 %") && lines[2].contains("≥ 90.00 %"), lines[2]);
    }
}
