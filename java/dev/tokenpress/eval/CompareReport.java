package dev.tokenpress.eval;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;

import java.io.PrintWriter;
import java.util.List;
import java.util.Locale;

/**
 * The output of {@code perplexity} and {@code compare}: one row per policy as a Markdown table, CSV or JSON.
 * Both commands print through here, so a {@code compare} row and a {@code perplexity} run print the same figures.
 */
public final class CompareReport {
    private CompareReport() {}

    /**
     * What was evaluated.
     *
     * @param model    model directory
     * @param backend  backend description
     * @param machine  OS architecture, cores, Java version
     * @param text     text file
     * @param textTokens tokens of the whole text (before -c)
     */
    public record Meta(String model, String backend, String machine, String text, int textTokens) {}

    public static String machine() {
        return System.getProperty("os.arch") + ", " + Runtime.getRuntime().availableProcessors() + " cores, Java "
                + System.getProperty("java.version");
    }

    /** One-line description of the evaluated range. */
    public static String range(Perplexity.Result r, int textTokens) {
        return String.format(Locale.ROOT, "tokens 0..%d of %d (KV capacity %d); prefill %d; scored %d predictions (tokens %d..%d)",
                r.tokens() - 1, textTokens, r.tokens(), r.prefill(), r.scored(), r.prefill(), r.tokens() - 1);
    }

    public static void markdown(PrintWriter out, Meta m, List<Perplexity.Result> rows) {
        out.printf(Locale.ROOT, "model: %s | backend: %s | machine: %s%n", m.model(), m.backend(), m.machine());
        if (!rows.isEmpty()) {
            Perplexity.Result f = rows.get(0);
            out.printf(Locale.ROOT, "text: %s | %s%n", m.text(), range(f, m.textTokens()));
            if (f.baseline() != null)
                out.printf(Locale.ROOT, "baseline: %s (%s), PPL %.4f ± %.4f%n", f.baseline(),
                        "full".equals(f.baseline()) ? "full-attention prefill" : "decoded like the policy",
                        f.baselinePpl(), f.baselinePpl() * f.baselineNllStderr());
        }
        out.println();
        out.println("| kv | KV bytes | slots ratio | bytes ratio | PPL | ΔPPL | mean KLD | KLD p99 | top-1 agree | decode t/s |");
        out.println("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (Perplexity.Result r : rows)
            out.printf(Locale.ROOT, "| %s | %s | %.2f× | %.2f× | %.4f ± %.4f | %s | %s | %s | %s | %.1f |%n", r.kv(), human(r.kvBytes()),
                    r.slotRatio(), r.byteRatio(), r.ppl(), r.pplStderr(), fmt("%+.4f", r.deltaPpl()), fmt("%.6f", r.meanKld()),
                    fmt("%.6f", r.kldP99()), Double.isNaN(r.top1()) ? "" : String.format(Locale.ROOT, "%.2f%%", 100 * r.top1()),
                    r.decodeTokensPerSecond());
        out.flush();
    }

    public static void csv(PrintWriter out, Meta m, List<Perplexity.Result> rows) {
        out.println("kv,baseline,tokens,prefill,scored,kv_bytes,full_kv_bytes,peak_slots,full_slots,slot_ratio,byte_ratio,"
                + "ppl,ppl_stderr,mean_nll,baseline_ppl,delta_ppl,mean_kld,kld_p99,max_kld,top1_agreement,mean_delta_p,rms_delta_p,"
                + "decode_tokens_per_s");
        for (Perplexity.Result r : rows)
            out.printf(Locale.ROOT, "\"%s\",%s,%d,%d,%d,%d,%d,%d,%d,%.6f,%.6f,%.6f,%.6f,%.8f,%s,%s,%s,%s,%s,%s,%s,%s,%.3f%n",
                    r.kv(), r.baseline() == null ? "" : "\"" + r.baseline() + "\"", r.tokens(), r.prefill(), r.scored(),
                    r.kvBytes(), r.fullKvBytes(), r.peakSlots(), r.fullSlots(), r.slotRatio(), r.byteRatio(),
                    r.ppl(), r.pplStderr(), r.meanNll(), fmt("%.6f", r.baselinePpl()), fmt("%.6f", r.deltaPpl()),
                    fmt("%.8f", r.meanKld()), fmt("%.8f", r.kldP99()), fmt("%.8f", r.maxKld()), fmt("%.6f", r.top1()),
                    fmt("%.8f", r.meanDeltaP()), fmt("%.8f", r.rmsDeltaP()), r.decodeTokensPerSecond());
        out.flush();
    }

    public static void json(PrintWriter out, Meta m, List<Perplexity.Result> rows) {
        ObjectMapper om = new ObjectMapper();
        ObjectNode o = om.createObjectNode();
        o.put("model", m.model());
        o.put("backend", m.backend());
        o.put("machine", m.machine());
        o.put("text", m.text());
        o.put("text_tokens", m.textTokens());
        ArrayNode a = o.putArray("results");
        for (Perplexity.Result r : rows) a.add(toJson(om, r));
        try {
            out.println(om.writerWithDefaultPrettyPrinter().writeValueAsString(o));
        } catch (Exception e) {
            throw new IllegalStateException(e);
        }
        out.flush();
    }

    static ObjectNode toJson(ObjectMapper om, Perplexity.Result r) {
        ObjectNode n = om.createObjectNode();
        n.put("kv", r.kv());
        if (r.baseline() != null) n.put("baseline", r.baseline());
        else n.putNull("baseline");
        n.put("tokens", r.tokens());
        n.put("prefill", r.prefill());
        n.put("scored", r.scored());
        n.put("ppl", r.ppl());
        n.put("ppl_stderr", r.pplStderr());
        n.put("mean_nll", r.meanNll());
        if (r.baseline() != null) {
            n.put("baseline_ppl", r.baselinePpl());
            n.put("baseline_mean_nll", r.baselineNll());
            n.put("delta_ppl", r.deltaPpl());
            n.put("mean_kld", r.meanKld());
            n.put("kld_p99", r.kldP99());
            n.put("max_kld", r.maxKld());
            n.put("top1_agreement", r.top1());
            n.put("mean_delta_p", r.meanDeltaP());
            n.put("rms_delta_p", r.rmsDeltaP());
        }
        n.put("kv_bytes", r.kvBytes());
        n.put("full_kv_bytes", r.fullKvBytes());
        n.put("peak_slots", r.peakSlots());
        n.put("full_slots", r.fullSlots());
        n.put("peak_slots_per_head", r.peakHighWater());
        n.put("slot_ratio", r.slotRatio());
        n.put("byte_ratio", r.byteRatio());
        n.put("decode_steps", r.decodeSteps());
        n.put("decode_seconds", r.decodeSeconds());
        n.put("decode_tokens_per_s", r.decodeTokensPerSecond());
        n.put("baseline_seconds", r.baselineSeconds());
        return n;
    }

    private static String fmt(String f, double v) {
        return Double.isNaN(v) ? "" : String.format(Locale.ROOT, f, v);
    }

    static String human(long b) {
        if (b < 1024) return b + " B";
        String[] u = {"KiB", "MiB", "GiB", "TiB"};
        double v = b;
        int i = -1;
        while (v >= 1024 && i < u.length - 1) {
            v /= 1024;
            i++;
        }
        return String.format(Locale.ROOT, "%.2f %s", v, u[i]);
    }
}
