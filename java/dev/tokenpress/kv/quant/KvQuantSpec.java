package dev.tokenpress.kv.quant;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * How the KV cache stores keys and values: {@code none} (f32), KIVI ({@code int8}, {@code int4}, {@code int2}),
 * {@code zipcache}, {@code mikv}, {@code gear}, or MiniCache's cross-layer merging ({@code minicache}). Made from spec strings {@code NAME[:key=value,...]} by
 * {@link #parse}; {@link #help()} lists every method with its parameters and defaults.
 *
 * @param method   the quantization scheme
 * @param bits     bits of every quantized element (KIVI, GEAR) or of salient / important tokens (ZipCache, MiKV)
 * @param loBits   bits of non-salient tokens (ZipCache) or of tokens an eviction policy would drop (MiKV); = bits otherwise
 * @param group    tokens per key group (keys: per channel over {@code group} tokens); values: channels per group
 *                 (min(group, head dim)); also the flush granularity of the residual window
 * @param residual most recent tokens kept in full precision (KIVI's R)
 * @param ratio    ZipCache: fraction of each group's tokens quantized at loBits (the least salient); MiniCache: fraction
 *                 of each merged group kept unmerged (the most distinct pairs), keys and values separately
 * @param budget   MiKV: tokens kept at high precision, a count (>= 1) or a ratio of the cached tokens (< 1)
 * @param rank     GEAR: rank r of the low-rank correction per group
 * @param outliers GEAR: fraction s of entries kept as sparse full-precision outliers
 * @param iters    GEAR: power-iteration steps
 * @param interp   MiniCache: SLERP's interpolation parameter t (0 = the lower layer's direction, 1 = the upper's)
 * @param start    MiniCache: first merged layer, a layer index (>= 1) or a fraction of the layers (< 1)
 * @param spec     the canonical spec string
 */
public record KvQuantSpec(Method method, int bits, int loBits, int group, int residual, double ratio, double budget,
                          int rank, double outliers, int iters, double interp, double start, String spec) {

    public enum Method { NONE, KIVI, ZIPCACHE, MIKV, GEAR, MINICACHE }

    public static final KvQuantSpec NONE = new KvQuantSpec(Method.NONE, 32, 32, 1, 0, 0, 0, 0, 0, 0, 0, 0, "none");

    /**
     * MiniCache: the lower layer of the first merged pair for a model of {@code layers} layers (pairs are
     * (s, s+1), (s+2, s+3), ...; an odd last layer stays unmerged); {@code layers} when nothing is merged.
     */
    public int firstMergedLayer(int layers) {
        int s = start < 1 ? (int) Math.round(start * layers) : (int) start;
        return Math.min(s, layers);
    }

    public boolean isNone() { return method == Method.NONE; }

    /** Values are quantized in groups of this many channels (<= head dim, must divide it). */
    public int valueGroup(int headDim) { return Math.min(group, headDim); }

    /** Whether the cache tracks per-token attention (saliency / importance) for this method. */
    public boolean tracksAttention() { return method == Method.ZIPCACHE || method == Method.MIKV; }

    private record Param(String name, String def, String help) {}

    private record Info(String name, String description, List<Param> params) {}

    private static final Map<String, Info> METHODS = new LinkedHashMap<>();

    private static void add(String name, String description, Param... params) {
        METHODS.put(name, new Info(name, description, List.of(params)));
    }

    private static final Param GROUP = new Param("group", "32", "tokens per key group (per-channel scale); channels per value group");
    private static final Param RESIDUAL = new Param("residual", "32", "most recent tokens kept in f32 (KIVI's R; 128 in the paper's LongBench runs)");

    static {
        add("none", "f32 keys and values (no quantization)");
        add("int8", "KIVI 8-bit: keys per channel over token groups, values per token over channel groups, asymmetric", GROUP, RESIDUAL);
        add("int4", "KIVI 4-bit (2 codes per byte)", GROUP, RESIDUAL);
        add("int2", "KIVI 2-bit (4 codes per byte)", GROUP, RESIDUAL);
        add("zipcache", "ZipCache: salient tokens (normalized accumulated attention) at hi bits, the rest at lo bits; "
                        + "keys per channel, values channel-separable per token",
                new Param("hi", "4", "bits of salient tokens"), new Param("lo", "2", "bits of the other tokens"),
                new Param("ratio", "0.4", "fraction of each group stored at lo bits (least salient)"), GROUP, RESIDUAL);
        add("mikv", "MiKV: tokens outside the heavy-hitter budget are kept at lo bits instead of being evicted; "
                        + "per-token keys and values",
                new Param("hi", "8", "bits of important tokens"), new Param("lo", "2", "bits of the other tokens"),
                new Param("budget", "0.25", "high-precision tokens (count, or ratio of cached tokens when < 1), residual window included"),
                GROUP, RESIDUAL);
        add("gear", "GEAR: KIVI-grouped quantization + rank-r power-iteration correction of the residual + sparse outliers",
                new Param("bits", "4", "bits of the quantized part"), new Param("rank", "2", "rank r of the low-rank correction per group"),
                new Param("s", "0.02", "fraction of entries kept as f16 outliers (per channel for keys, per token for values)"),
                new Param("iters", "3", "power-iteration steps"), GROUP, RESIDUAL);
        add("minicache", "MiniCache: adjacent layers from the middle of the model down share one direction per token "
                        + "(SLERP of the two unit vectors) and keep their own norms; the most distinct pairs stay unmerged; f32 storage",
                new Param("t", "0.6", "SLERP interpolation (0 = lower layer's direction, 1 = upper's)"),
                new Param("start", "0.5", "first merged layer: a layer index, or a fraction of the layers when < 1"),
                new Param("retain", "0.05", "fraction of each merged group kept unmerged (the largest angles)"),
                new Param("group", "32", "tokens merged together once they leave the window (retain counts per group)"),
                new Param("residual", "32", "most recent tokens kept unmerged"));
    }

    /** Every method with its parameters and defaults, one block per method. */
    public static String help() {
        StringBuilder sb = new StringBuilder("KV cache storage methods (--kv-quant NAME[:key=value,...]): quantization, and MiniCache's cross-layer merging:\n");
        for (Info i : METHODS.values()) {
            sb.append(String.format(Locale.ROOT, "  %-9s %s%n", i.name, i.description));
            for (Param p : i.params)
                sb.append(String.format(Locale.ROOT, "      %-9s default %-5s %s%n", p.name, p.def, p.help));
        }
        sb.append("Composes with any --kv policy: evicted slots free their quantized storage too.\n");
        return sb.toString();
    }

    /**
     * Parses {@code NAME[:key=value,...]}; null or blank is {@code none}.
     *
     * @throws IllegalArgumentException with a one-line message naming the bad part
     */
    public static KvQuantSpec parse(String text) {
        if (text == null || text.isBlank()) return NONE;
        String s = text.trim().toLowerCase(Locale.ROOT);
        int colon = s.indexOf(':');
        String name = colon < 0 ? s : s.substring(0, colon);
        Info info = METHODS.get(name);
        if (info == null)
            throw new IllegalArgumentException("unknown --kv-quant method '" + name + "': use one of " + String.join(", ", METHODS.keySet())
                    + " ('--kv-quant help' lists their parameters)");
        Map<String, String> args = new LinkedHashMap<>();
        for (Param p : info.params) args.put(p.name, p.def);
        if (colon >= 0 && colon < s.length() - 1) {
            for (String kv : s.substring(colon + 1).split(",")) {
                int eq = kv.indexOf('=');
                if (eq <= 0) throw new IllegalArgumentException("--kv-quant " + name + ": expected key=value, got '" + kv + "'");
                String k = kv.substring(0, eq).trim(), v = kv.substring(eq + 1).trim();
                if (!args.containsKey(k))
                    throw new IllegalArgumentException("--kv-quant " + name + ": unknown parameter '" + k + "'"
                            + (info.params.isEmpty() ? " (it takes none)" : " (known: " + String.join(", ", args.keySet()) + ")"));
                args.put(k, v);
            }
        }
        if (name.equals("none")) return NONE;
        int group = integer(name, args, "group", 1, 4096), residual = integer(name, args, "residual", 0, 1 << 20);
        String canon = name + ":" + joinArgs(args);
        return switch (name) {
            case "int8", "int4", "int2" -> {
                int b = name.charAt(3) - '0';
                yield new KvQuantSpec(Method.KIVI, b, b, group, residual, 0, 0, 0, 0, 0, 0, 0, canon);
            }
            case "zipcache" -> {
                int hi = bits(name, args, "hi"), lo = bits(name, args, "lo");
                double ratio = real(name, args, "ratio", 0, 1);
                yield new KvQuantSpec(Method.ZIPCACHE, hi, lo, group, residual, ratio, 0, 0, 0, 0, 0, 0, canon);
            }
            case "mikv" -> {
                int hi = bits(name, args, "hi"), lo = bits(name, args, "lo");
                double budget = real(name, args, "budget", 0, Integer.MAX_VALUE);
                if (budget >= 1 && budget != Math.rint(budget))
                    throw new IllegalArgumentException("--kv-quant mikv: budget must be a token count or a ratio < 1, got " + args.get("budget"));
                yield new KvQuantSpec(Method.MIKV, hi, lo, group, residual, 0, budget, 0, 0, 0, 0, 0, canon);
            }
            case "gear" -> {
                int b = bits(name, args, "bits");
                int rank = integer(name, args, "rank", 0, 64), iters = integer(name, args, "iters", 1, 100);
                double sOut = real(name, args, "s", 0, 0.5);
                yield new KvQuantSpec(Method.GEAR, b, b, group, residual, 0, 0, rank, sOut, iters, 0, 0, canon);
            }
            case "minicache" -> {
                double t = real(name, args, "t", 0, 1), retain = real(name, args, "retain", 0, 1);
                double start = real(name, args, "start", 0, 1 << 16);
                if (start >= 1 && start != Math.rint(start))
                    throw new IllegalArgumentException("--kv-quant minicache: start must be a layer index or a fraction < 1, got " + args.get("start"));
                yield new KvQuantSpec(Method.MINICACHE, 32, 32, group, residual, retain, 0, 0, 0, 0, t, start, canon);
            }
            default -> throw new IllegalStateException(name);
        };
    }

    private static String joinArgs(Map<String, String> args) {
        StringBuilder sb = new StringBuilder();
        for (var e : args.entrySet()) {
            if (sb.length() > 0) sb.append(',');
            sb.append(e.getKey()).append('=').append(e.getValue());
        }
        return sb.toString();
    }

    private static int integer(String m, Map<String, String> a, String k, int min, int max) {
        try {
            int v = Integer.parseInt(a.get(k));
            if (v < min || v > max) throw new NumberFormatException();
            return v;
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("--kv-quant " + m + ": " + k + " must be an integer in [" + min + ", " + max + "], got '" + a.get(k) + "'");
        }
    }

    private static int bits(String m, Map<String, String> a, String k) {
        int b = integer(m, a, k, 1, 8);
        if (b != 1 && b != 2 && b != 4 && b != 8)
            throw new IllegalArgumentException("--kv-quant " + m + ": " + k + " must be 1, 2, 4 or 8 bits, got " + b);
        return b;
    }

    private static double real(String m, Map<String, String> a, String k, double min, double max) {
        try {
            double v = Double.parseDouble(a.get(k));
            if (!(v >= min && v <= max)) throw new NumberFormatException();
            return v;
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("--kv-quant " + m + ": " + k + " must be a number in [" + min + ", " + max + "], got '" + a.get(k) + "'");
        }
    }

    /** Checks the spec against a head dimension; throws IllegalArgumentException naming the problem. */
    public void check(int headDim) {
        if (isNone() || method == Method.MINICACHE) return; // MiniCache's group only sets when tokens merge
        if (headDim % valueGroup(headDim) != 0)
            throw new IllegalArgumentException("--kv-quant " + spec + ": group=" + group + " must divide the head dim " + headDim
                    + " (or be >= it)");
    }

    @Override
    public String toString() { return spec; }
}
