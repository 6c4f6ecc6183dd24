package dev.tokenpress.cli;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.tokenpress.api.TokenPress;
import dev.tokenpress.eval.Bandwidth;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.KvPolicy;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;
import picocli.CommandLine.Model.CommandSpec;

import java.io.PrintWriter;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.SplittableRandom;
import java.util.concurrent.Callable;

/**
 * {@code tokenpress bench}, shaped like llama-bench: prompt processing (ppN) and token generation (tgN, optionally
 * after dN tokens of context) with repetitions, mean ± stdev, and the memory-bandwidth roofline for decode.
 */
@Command(name = "bench", mixinStandardHelpOptions = true,
        description = "Benchmark prompt processing (ppN) and decode (tgN @ dN) with the bandwidth roofline beside it.")
public final class BenchCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Mixin
    ModelOptions modelOptions;

    @Mixin
    KvOptionsMixin kvOptions;

    @Option(names = {"-p", "--n-prompt"}, split = ",", defaultValue = "512", description = "Prompt lengths for ppN tests (0 = none; default: ${DEFAULT-VALUE}).")
    int[] nPrompt;

    @Option(names = {"-n", "--n-gen"}, split = ",", defaultValue = "128", description = "Decode lengths for tgN tests (0 = none; default: ${DEFAULT-VALUE}).")
    int[] nGen;

    @Option(names = {"-d", "--n-depth"}, split = ",", defaultValue = "0", description = "Context depths before tgN (default: ${DEFAULT-VALUE}).")
    int[] depth;

    @Option(names = {"-np", "--parallel"}, split = ",", defaultValue = "1", paramLabel = "N[,N...]",
            description = "Sequences decoded together in tgN tests (tgN x S: S sequences of N tokens each, one forward "
                    + "pass per step for all; t/s counts every sequence's tokens; at most -b) (default: ${DEFAULT-VALUE}).")
    int[] parallel;

    @Option(names = {"-r", "--repetitions"}, defaultValue = "3", description = "Repetitions per test (default: ${DEFAULT-VALUE}).")
    int reps;

    @Option(names = {"-o", "--output"}, defaultValue = "md", paramLabel = "md|csv|json", description = "Output format (default: ${DEFAULT-VALUE}).")
    String format;

    @Option(names = "--bandwidth-mib", defaultValue = "1024", description = "Buffer size for the CPU read-bandwidth measurement (default: ${DEFAULT-VALUE}).")
    int bandwidthMib;

    /** One result; {@code sequences} decoded together (1 but for tgN xS). */
    record Row(String test, String kv, int tokens, int depth, double mean, double stdev, double rooflineTps, int sequences) {
        Row(String test, String kv, int tokens, int depth, double mean, double stdev, double rooflineTps) {
            this(test, kv, tokens, depth, mean, stdev, rooflineTps, 1);
        }
    }

    @Override
    public Integer call() throws Exception {
        PrintWriter out = spec.commandLine().getOut(), err = spec.commandLine().getErr();
        if (kvOptions.printHelpIfAsked(out)) return ExitCodes.OK;
        kvOptions.validate(true);
        var quants = kvOptions.quants();
        modelOptions.noteCacheTypes(quants, err);
        if (!List.of("md", "csv", "json").contains(format)) throw new Main.UsageException("-o must be md, csv or json");
        if (reps < 1) throw new Main.UsageException("-r must be >= 1");
        for (int np : parallel) {
            if (np < 1) throw new Main.UsageException("-np must be >= 1");
            if (np > modelOptions.chunk) throw new Main.UsageException("-np " + np + " exceeds the batch size -b " + modelOptions.chunk + ": raise -b");
        }
        var dir = modelOptions.resolveModel(err);
        List<Row> rows = new ArrayList<>();
        double bw;
        String backendDesc;
        long weightBytes;
        try (TokenPress tp = TokenPress.load(dir, modelOptions.toLoadOptions(err))) {
            Llama m = tp.model();
            LlamaConfig c = tp.config();
            backendDesc = tp.backend().description();
            weightBytes = weightBytesPerToken(tp);
            if (tp.backend().name().equals("cpu")) {
                err.println("measuring sequential read bandwidth (" + bandwidthMib + " MiB buffer)...");
                int threads = modelOptions.threads > 0 ? modelOptions.threads : Runtime.getRuntime().availableProcessors();
                bw = Bandwidth.sequentialRead((long) bandwidthMib << 20, threads, 7);
            } else if (tp.backend() instanceof dev.tokenpress.backend.cuda.CudaBackend gpu) {
                err.println("measuring device copy bandwidth...");
                bw = dev.tokenpress.backend.cuda.CudaKernelBench.copyBandwidth(gpu, 1L << 30, 10);
            } else {
                bw = Double.NaN;
            }
            int maxCtx = 1;
            for (int p : nPrompt) maxCtx = Math.max(maxCtx, p);
            for (int d : depth) for (int g : nGen) maxCtx = Math.max(maxCtx, d + g + 1);
            List<String> kvSpecs = kvOptions.specs();
            for (var quant : quants)
            for (String kvSpec : kvSpecs) {
                m.setPolicy(KvOptionsMixin.policy(kvSpec, c));
                String kv = quant.isNone() ? m.policy().spec() : m.policy().spec() + " q:" + quant.spec();
                String tag = kvSpecs.size() * quants.size() > 1 ? " [" + kv + "]" : "";
                SplittableRandom rnd = new SplittableRandom(1234); // the same tokens for every policy
                int slots = maxCtx + m.policy().scratchSlots(maxCtx); // + KVzip's reconstruction pass
                try (var cacheHolder = new CacheHolder(quant.isNone() ? m.newCache(slots) : m.newCache(slots, quant))) {
                    KvCache cache = cacheHolder.cache;
                    for (int p : nPrompt) {
                        if (p <= 0) continue;
                        double[] tps = new double[reps];
                        for (int r = 0; r < reps + 1; r++) {
                            cache.clear();
                            int[] toks = randomTokens(rnd, p, c.vocabSize());
                            long t0 = System.nanoTime();
                            m.prefill(cache, toks, 0, false, null);
                            tp.backend().synchronize();
                            double sec = (System.nanoTime() - t0) / 1e9;
                            if (r > 0) tps[r - 1] = p / sec; // first run warms up
                        }
                        rows.add(new Row("pp" + p, kv, p, 0, mean(tps), stdev(tps), Double.NaN));
                        err.printf(Locale.ROOT, "pp%d%s: %.2f t/s%n", p, tag, mean(tps));
                    }
                    for (int d : depth) {
                        for (int g : nGen) {
                            if (g <= 0) continue;
                            for (int np : parallel) {
                                if (np == 1) continue;
                                double t = batchedDecode(tp, kvSpec, quant, maxCtx, d, g, np, rnd, rows, kv, bw / weightBytes);
                                err.printf(Locale.ROOT, "tg%d%s x%d%s: %.2f t/s%n", g, d > 0 ? " @ d" + d : "", np, tag, t);
                            }
                            if (java.util.Arrays.stream(parallel).noneMatch(x -> x == 1)) continue;
                            double[] tps = new double[reps];
                            for (int r = 0; r < reps + 1; r++) {
                                cache.clear();
                                int pos = 0;
                                if (d > 0) {
                                    m.prefill(cache, randomTokens(rnd, d, c.vocabSize()), 0, false, null);
                                    pos = d;
                                }
                                int tok = rnd.nextInt(c.vocabSize());
                                int steps = r == 0 ? Math.min(g, 4) : g;
                                tp.backend().synchronize();
                                long t0 = System.nanoTime();
                                m.decodeGreedy(cache, tok, pos, steps, t -> true); // pipelined where the backend can
                                tp.backend().synchronize();
                                double sec = (System.nanoTime() - t0) / 1e9;
                                if (r > 0) tps[r - 1] = steps / sec;
                            }
                            String name = "tg" + g + (d > 0 ? " @ d" + d : "");
                            rows.add(new Row(name, kv, g, d, mean(tps), stdev(tps), bw / weightBytes));
                            err.printf(Locale.ROOT, "%s%s: %.2f t/s%n", name, tag, mean(tps));
                        }
                    }
                }
            }
            m.setPolicy(KvPolicy.FULL);
        }
        print(out, dir.toString(), backendDesc, weightBytes, bw, rows);
        return ExitCodes.OK;
    }

    /**
     * tgN x S: S sequences, each with its own cache (and policy) after d random tokens of context, decoded together for
     * g steps with {@link Llama#decodeBatch}, greedy on the device; returns the mean tokens/s of all sequences and adds
     * the row (roofline: S tokens per weight pass).
     */
    private double batchedDecode(TokenPress tp, String kvSpec, dev.tokenpress.kv.quant.KvQuantSpec quant, int maxCtx, int d, int g,
                                 int np, SplittableRandom rnd, List<Row> rows, String kv, double roofline) {
        Llama m = tp.model();
        LlamaConfig c = tp.config();
        KvCache[] caches = new KvCache[np];
        KvPolicy[] policies = new KvPolicy[np];
        try {
            int slots = maxCtx + KvOptionsMixin.policy(kvSpec, c).scratchSlots(maxCtx); // + KVzip's reconstruction pass
            // caches the backend may lay out together (one attention call per step and layer where it can)
            if (quant.isNone()) System.arraycopy(m.newCaches(slots, np), 0, caches, 0, np);
            for (int i = 0; i < np; i++) {
                if (caches[i] == null) caches[i] = m.newCache(slots, quant);
                policies[i] = KvOptionsMixin.policy(kvSpec, c);
                policies[i].attach(m);
            }
            double[] tps = new double[reps];
            for (int r = 0; r < reps + 1; r++) {
                Llama.BatchRow[] batch = new Llama.BatchRow[np];
                for (int i = 0; i < np; i++) {
                    caches[i].clear();
                    if (d > 0) m.prefillWith(policies[i], caches[i], randomTokens(rnd, d, c.vocabSize()), 0, null);
                    batch[i] = new Llama.BatchRow(caches[i], policies[i], rnd.nextInt(c.vocabSize()), d);
                }
                int steps = r == 0 ? Math.min(g, 4) : g;
                tp.backend().synchronize();
                long t0 = System.nanoTime();
                for (int s = 0; s < steps; s++) {
                    m.decodeBatch(batch);
                    int[] next = m.batchArgmaxAll();
                    for (int t : next) if (t < 0) throw new IllegalStateException("a sequence's KV cache is full");
                    for (int i = 0; i < np; i++)
                        batch[i] = new Llama.BatchRow(caches[i], policies[i], next[i], d + s + 1);
                }
                tp.backend().synchronize();
                double sec = (System.nanoTime() - t0) / 1e9;
                if (r > 0) tps[r - 1] = (double) steps * np / sec;
            }
            rows.add(new Row("tg" + g + (d > 0 ? " @ d" + d : "") + " x" + np, kv, g, d, mean(tps), stdev(tps), roofline * np, np));
            return mean(tps);
        } finally {
            for (KvCache kc : caches) if (kc != null) kc.close();
        }
    }

    /**
     * Bytes of weights a decode step streams: every layer matrix plus the LM head (the embedding is one row), as the
     * backend holds them (a quantized matrix counts its codes and scales; one read in place, its checkpoint bytes).
     */
    static long weightBytesPerToken(TokenPress tp) {
        LlamaConfig c = tp.config();
        long bytesPerElem = 2;
        String dt = c.torchDtype();
        if (dt != null && dt.contains("float32")) bytesPerElem = 4;
        var w = tp.model().weights();
        long sum = matrixBytes(w.lmHead(), bytesPerElem);
        for (var l : w.layers())
            for (var t : new dev.tokenpress.backend.Tensor[] {l.wq(), l.wk(), l.wv(), l.wo(), l.wGate(), l.wUp(), l.wDown()})
                sum += matrixBytes(t, bytesPerElem);
        return sum;
    }

    private static long matrixBytes(dev.tokenpress.backend.Tensor t, long bytesPerElem) {
        long b = t.bytes();
        return b > 0 ? b : (long) t.rows() * t.cols() * bytesPerElem;
    }

    private void print(PrintWriter out, String model, String backend, long weightBytes, double bw, List<Row> rows) {
        String machine = System.getProperty("os.arch") + ", " + Runtime.getRuntime().availableProcessors() + " cores, Java "
                + System.getProperty("java.version");
        switch (format) {
            case "json" -> {
                ObjectMapper om = new ObjectMapper();
                ObjectNode o = om.createObjectNode();
                o.put("model", model);
                o.put("backend", backend);
                o.put("machine", machine);
                o.put("weight_bytes_per_token", weightBytes);
                o.put("read_bandwidth_bytes_per_s", bw);
                ArrayNode a = o.putArray("results");
                for (Row r : rows) {
                    ObjectNode n = a.addObject();
                    n.put("test", r.test());
                    n.put("kv", r.kv());
                    n.put("tokens", r.tokens());
                    n.put("depth", r.depth());
                    n.put("sequences", r.sequences());
                    n.put("tokens_per_s", r.mean());
                    n.put("stdev", r.stdev());
                    if (!Double.isNaN(r.rooflineTps())) {
                        n.put("roofline_tokens_per_s", r.rooflineTps());
                        n.put("fraction_of_roofline", r.mean() / r.rooflineTps());
                    }
                }
                try {
                    out.println(om.writerWithDefaultPrettyPrinter().writeValueAsString(o));
                } catch (Exception e) {
                    throw new RuntimeException(e);
                }
            }
            case "csv" -> {
                out.println("model,backend,test,tokens,depth,tokens_per_s,stdev,roofline_tokens_per_s,fraction_of_roofline,kv");
                for (Row r : rows)
                    out.printf(Locale.ROOT, "%s,%s,%s,%d,%d,%.3f,%.3f,%s,%s,\"%s\"%n", model, backend.replace(',', ';'), r.test(), r.tokens(), r.depth(),
                            r.mean(), r.stdev(), Double.isNaN(r.rooflineTps()) ? "" : String.format(Locale.ROOT, "%.3f", r.rooflineTps()),
                            Double.isNaN(r.rooflineTps()) ? "" : String.format(Locale.ROOT, "%.3f", r.mean() / r.rooflineTps()), r.kv());
            }
            default -> {
                out.printf(Locale.ROOT, "model: %s | backend: %s | machine: %s%n", model, backend, machine);
                out.printf(Locale.ROOT, "weights streamed per token: %s | measured read bandwidth: %s%n%n",
                        Bytes.human(weightBytes), Double.isNaN(bw) ? "n/a" : String.format(Locale.ROOT, "%.2f GB/s", bw / 1e9));
                out.println("| test | t/s | roofline t/s | % of roofline | kv |");
                out.println("| --- | ---: | ---: | ---: | --- |");
                for (Row r : rows)
                    out.printf(Locale.ROOT, "| %s | %.2f ± %.2f | %s | %s | %s |%n", r.test(), r.mean(), r.stdev(),
                            Double.isNaN(r.rooflineTps()) ? "" : String.format(Locale.ROOT, "%.2f", r.rooflineTps()),
                            Double.isNaN(r.rooflineTps()) ? "" : String.format(Locale.ROOT, "%.1f%%", 100 * r.mean() / r.rooflineTps()), r.kv());
            }
        }
        out.flush();
    }

    private static int[] randomTokens(SplittableRandom rnd, int n, int vocab) {
        int[] t = new int[n];
        for (int i = 0; i < n; i++) t[i] = rnd.nextInt(vocab);
        return t;
    }

    private static double mean(double[] x) {
        double s = 0;
        for (double v : x) s += v;
        return s / x.length;
    }

    private static double stdev(double[] x) {
        if (x.length < 2) return 0;
        double m = mean(x), s = 0;
        for (double v : x) s += (v - m) * (v - m);
        return Math.sqrt(s / (x.length - 1));
    }

    private record CacheHolder(KvCache cache) implements AutoCloseable {
        @Override
        public void close() {
            cache.close();
        }
    }
}
