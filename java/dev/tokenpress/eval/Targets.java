package dev.tokenpress.eval;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * The performance targets of the CUDA issues, read off a {@code gpu-check.sh} summary (its {@code RESULT key value unit}
 * lines, as {@link KernelBench} prints them): one row per target with the measured figure, the device it was measured
 * on and whether it is met. The targets are set on an H100; a figure from another device is reported as such.
 *
 * <pre>java -cp ... dev.tokenpress.eval.Targets OUT/gpu-summary.txt</pre>
 */
public final class Targets {
    private Targets() {}

    /** One target: a figure (or a ratio of two) and the bound it must reach (at least, or at most when {@code atMost}). */
    record Target(String issue, String what, String key, String denominatorKey, double bound, boolean atMost, String unit) {}

    /** The targets of issues 3, 4 and 5 (keys as KernelBench writes them; e2e_pol keys with the weights' suffix). */
    static final List<Target> TARGETS = List.of(
            new Target("3", "decode attention at 32K, % of copy bandwidth", "attn_32768_pct_copy_bw", null, 90, false, "%"),
            new Target("3", "end to end, short context, bf16 weights", "e2e_short_tps", null, 1150, false, "tokens/s"),
            new Target("3", "end to end, short context, Q8_0 weights", "e2e_short_q8_tps", null, 1150, false, "tokens/s"),
            new Target("4", "tidal:k=2048 attention at 32K, × faster than full", "pol_32768_tidal_attn_speedup", null, 8, false, "×"),
            new Target("4", "int4 KV memory at 32K, × less than bf16", "quant_32768_bf16_kv_bytes", "quant_32768_int4_kv_bytes", 3.5,
                    false, "×"),
            new Target("4", "int4 attention at 32K, × faster than bf16", "quant_32768_int4_speedup", null, 3, false, "×"),
            new Target("4", "tidal at 128K end to end, × full (bf16 weights)", "e2e_pol_131072_tidal_speedup@as-stored", null, 1.8,
                    false, "×"),
            new Target("4", "tidal at 128K end to end, × full (Q8_0 weights)", "e2e_pol_131072_tidal_speedup@q8_0", null, 1.8, false,
                    "×"),
            new Target("4", "tidal at 128K end to end, pipelined greedy loop, × full pipelined (bf16 weights)",
                    "e2e_pol_131072_tidal_pipelined_vs_full_pipelined@as-stored", null, 1.8, false, "×"),
            new Target("4", "tidal at 128K end to end, pipelined greedy loop, × full pipelined (Q8_0 weights)",
                    "e2e_pol_131072_tidal_pipelined_vs_full_pipelined@q8_0", null, 1.8, false, "×"),
            new Target("5", "CCE (default chunks) time, × the bare GEMM", "cce_gemm_4096x2048_vs_gemm", null, 1.2, true, "×"));

    /** A row of the table: the target, the figure (NaN when not measured), the device and the verdict. */
    record Row(Target target, double value, String device, String status) {}

    /**
     * The figures of a summary: the first value of each key; keys printed under an {@code e2e policy table: weights W}
     * line get {@code @W} appended (the e2epol stage runs once per weight type); {@code device} holds the last GPU
     * named by a {@code GPU: } or {@code device: CUDA: } line.
     */
    static Map<String, Double> parse(List<String> lines, String[] device) {
        Map<String, Double> out = new LinkedHashMap<>();
        String weights = null;
        for (String raw : lines) {
            String line = raw.strip();
            if (line.startsWith("GPU: ")) device[0] = line.substring(5).split(",")[0].strip();
            else if (line.startsWith("device: CUDA: ")) device[0] = line.substring(14).split(" \\(")[0].strip();
            if (line.startsWith("e2e policy table: weights ")) weights = line.substring(26).split("[ ;]")[0];
            if (line.startsWith("tokenpress gpu-check")) weights = null; // a new stage
            if (!line.startsWith("RESULT ")) continue;
            String[] f = line.split("\\s+");
            if (f.length < 3) continue;
            double v;
            try {
                v = Double.parseDouble(f[2]);
            } catch (NumberFormatException e) {
                continue;
            }
            String key = f[1].startsWith("e2e_pol_") && weights != null ? f[1] + "@" + weights : f[1];
            out.putIfAbsent(key, v);
        }
        return out;
    }

    static List<Row> evaluate(Map<String, Double> figures, String device) {
        List<Row> rows = new ArrayList<>();
        boolean h100 = device != null && device.contains("H100");
        for (Target t : TARGETS) {
            Double a = figures.get(t.key());
            Double b = t.denominatorKey() == null ? Double.valueOf(1) : figures.get(t.denominatorKey());
            if (a == null || b == null || b == 0) {
                rows.add(new Row(t, Double.NaN, device, "not measured"));
                continue;
            }
            double v = a / b;
            boolean met = t.atMost() ? v <= t.bound() : v >= t.bound();
            String status = (met ? "met" : "not met") + (h100 || device == null ? "" : " (on " + device + "; the target is set on an H100)");
            rows.add(new Row(t, v, device, status));
        }
        return rows;
    }

    static void print(List<Row> rows, PrintStream out) {
        out.println("| issue | target | measured | status |");
        out.println("|---|---|---:|---|");
        for (Row r : rows) {
            Target t = r.target();
            String bound = (t.atMost() ? "≤ " : "≥ ") + fmt(t.bound()) + " " + t.unit();
            String value = Double.isNaN(r.value()) ? "—" : fmt(r.value()) + " " + t.unit();
            out.printf("| %s | %s %s | %s | %s |%n", t.issue(), t.what(), bound, value, r.status());
        }
    }

    private static String fmt(double v) {
        return Math.abs(v) >= 100 ? String.format(Locale.ROOT, "%.1f", v)
                : Math.abs(v) >= 0.1 ? String.format(Locale.ROOT, "%.2f", v) : String.format(Locale.ROOT, "%.4f", v);
    }

    public static void main(String[] args) throws IOException {
        if (args.length != 1) {
            System.err.println("usage: Targets <gpu-summary.txt>");
            System.exit(2);
        }
        Path p = Path.of(args[0]);
        if (!Files.isRegularFile(p)) {
            System.err.println("Targets: no such file: " + p);
            System.exit(2);
        }
        String[] device = {null};
        Map<String, Double> figures = parse(Files.readAllLines(p), device);
        print(evaluate(figures, device[0]), System.out);
    }
}
