package dev.tokenpress.cli;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.tokenpress.api.GenerationResult;
import dev.tokenpress.api.Parallel;
import dev.tokenpress.api.Session;
import dev.tokenpress.api.StopText;
import dev.tokenpress.api.TokenPress;
import dev.tokenpress.kv.KvPolicy;
import dev.tokenpress.sample.SamplingOptions;
import picocli.CommandLine.ArgGroup;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;
import picocli.CommandLine.Model.CommandSpec;

import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Locale;
import java.util.concurrent.Callable;

/** {@code tokenpress generate}: prompt → streamed completion, timings on stderr (or one JSON object). */
@Command(name = "generate", mixinStandardHelpOptions = true,
        description = "Generate text from a prompt; the text streams to stdout, timings go to stderr.")
public final class GenerateCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Mixin
    ModelOptions modelOptions;

    @Mixin
    SamplingOptionsMixin sampling;

    @Mixin
    KvOptionsMixin kvOptions;

    @Mixin
    DraftOptionsMixin draftOptions;

    @Mixin
    GrammarOptionsMixin grammarOptions;

    static final class PromptSource {
        @Option(names = {"-p", "--prompt"}, paramLabel = "TEXT", description = "The prompt text.")
        String prompt;

        @Option(names = {"-f", "--file"}, paramLabel = "FILE", description = "Read the prompt from a file.")
        Path file;
    }

    @ArgGroup(exclusive = true, multiplicity = "0..1")
    PromptSource source;

    @Option(names = {"-n", "--n-predict"}, defaultValue = "128", description = "Tokens to generate (default: ${DEFAULT-VALUE}).")
    int nPredict;

    @Option(names = {"-c", "--ctx-size"}, defaultValue = "0",
            description = "KV cache size in tokens (0 = min(model maximum, 4096)).")
    int ctx;

    @Option(names = "--json", description = "Print one JSON object (text and figures) on stdout instead of streaming.")
    boolean json;

    @Option(names = "--trace", description = "With --json: add a \"trace\" array, one record per sampled token (log-probability, "
            + "entropy and top-k entropy in nats, top-k mass, surprise in bits, Mirostat mu).")
    boolean trace;

    @Option(names = "--lookup", paramLabel = "N", defaultValue = "0",
            description = "Prompt lookup decoding (full cache): draft up to N tokens per step from an earlier "
                    + "occurrence of the last tokens and check them in one forward pass; same output, fewer passes "
                    + "on repetitive text (default: 0 = off).")
    int lookup;

    @Option(names = "--stop", paramLabel = "TEXT",
            description = "Stop before this text (repeatable); the text is not printed.")
    java.util.List<String> stops;

    @Option(names = "--format", paramLabel = "text|json|json-object", defaultValue = "text",
            description = "Constrain the output: json keeps it one valid JSON value (json-object: an object) and ends it "
                    + "there (default: ${DEFAULT-VALUE}).")
    String format;

    @Option(names = "--prompt-cache", paramLabel = "FILE",
            description = "Reuse the KV cache saved in FILE for the prompt's shared beginning (llama.cpp's prompt cache; "
                    + "full policy, unquantized cache) and save the cache there afterwards.")
    Path promptCache;

    @Option(names = "--prompt-cache-ro", description = "With --prompt-cache: read the file, never write it.")
    boolean promptCacheReadOnly;

    @Option(names = {"-np", "--parallel"}, paramLabel = "N", defaultValue = "1",
            description = "Decode N sequences of the prompt together, one forward pass per step for all of them (seeds "
                    + "seed, seed+1, ...; llama.cpp's llama-batched); each is printed when all have ended (at most -b).")
    int parallel;

    @Option(names = "--ead-model", paramLabel = "DIR",
            description = "Entropy-adaptive decoding: a smaller model with the same tokenizer produces every token "
                    + "unless its recent entropy exceeds --ead-threshold; then this model does.")
    Path eadModel;

    @Option(names = "--ead-threshold", paramLabel = "BITS", defaultValue = "3.0",
            description = "Mean entropy (bits, over --ead-window steps) above which the model takes over (default: ${DEFAULT-VALUE}).")
    double eadThreshold;

    @Option(names = "--ead-window", paramLabel = "N", defaultValue = "5",
            description = "Steps of the entropy's rolling mean (default: ${DEFAULT-VALUE}).")
    int eadWindow;

    @Option(names = "--superposed", paramLabel = "K", defaultValue = "0",
            description = "Superposed Decoding (arXiv 2405.18400): K drafts from one pass per step, each step fed the drafts' "
                    + "last tokens' embeddings weighted by the drafts' probabilities; prints every draft (0 = off).")
    int superposed;

    @Option(names = "--superposed-corpus", paramLabel = "FILE",
            description = "Text whose token n-grams (contexts of 1 to 5 tokens) the drafts' scores interpolate with the "
                    + "model's (repeatable; without one the drafts share the model's distribution).")
    java.util.List<Path> superposedCorpus;

    @Option(names = "--superposed-alpha", paramLabel = "A", defaultValue = "0.54",
            description = "Weight of the n-gram log-probability in a draft's score (default: ${DEFAULT-VALUE}).")
    double superposedAlpha;

    @Option(names = "--superposed-temp", paramLabel = "T", defaultValue = "0.06",
            description = "Temperature of the step distribution the drafts extend from (default: ${DEFAULT-VALUE}).")
    double superposedTemp;

    @Option(names = "--superposed-top", paramLabel = "N", defaultValue = "0",
            description = "Top tokens of each step the drafts may extend with (default: max(9, 2K)).")
    int superposedTop;

    @Option(names = "--skip-decode", paramLabel = "MAX:MIN",
            description = "SkipDecode (arXiv 2307.02628): generated token t runs only the top layers, from MAX at the first "
                    + "down to MIN at the last, linearly; the layers skipped store nothing. For models trained with it; "
                    + "an ordinary model loses accuracy.")
    String skipDecode;

    static final String DEFAULT_PROMPT = "def fibonacci(n):";

    /** The --format value as an output format (usage error otherwise). */
    static Session.OutputFormat outputFormat(String format) {
        return switch (format.toLowerCase(Locale.ROOT)) {
            case "text" -> Session.OutputFormat.TEXT;
            case "json" -> Session.OutputFormat.JSON;
            case "json-object", "json_object" -> Session.OutputFormat.JSON_OBJECT;
            default -> throw new Main.UsageException("--format must be text, json or json-object, got " + format);
        };
    }

    @Override
    public Integer call() throws Exception {
        PrintWriter out = spec.commandLine().getOut(), err = spec.commandLine().getErr();
        if (kvOptions.printHelpIfAsked(out)) return ExitCodes.OK;
        kvOptions.validate(false);
        var quant = kvOptions.quant();
        modelOptions.noteCacheTypes(java.util.List.of(quant), err);
        if (nPredict < 0) throw new Main.UsageException("-n must be >= 0");
        if (trace && !json) throw new Main.UsageException("--trace needs --json (the trace is part of the JSON object)");
        if (lookup < 0) throw new Main.UsageException("--lookup must be >= 0");
        draftOptions.validate(lookup);
        if (eadModel != null) {
            if (lookup > 0 || draftOptions.enabled())
                throw new Main.UsageException("--ead-model and speculative decoding (--lookup, -md, --draft-layers) exclude each other");
            if (eadWindow < 1) throw new Main.UsageException("--ead-window must be >= 1");
            if (!Files.isDirectory(eadModel)) throw new Main.UsageException("--ead-model directory not found: " + eadModel);
        }
        sampling.logitBias(); // malformed values fail before the model loads
        Session.OutputFormat outputFormat = outputFormat(format);
        if (sampling.ignoreEos && (outputFormat != Session.OutputFormat.TEXT || grammarOptions.enabled()))
            throw new Main.UsageException("--ignore-eos and constrained output exclude each other (the text ends with EOS)");
        SamplingOptions so = sampling.toOptions();
        String prompt;
        if (source != null && source.file != null) {
            if (!Files.isRegularFile(source.file)) throw new Main.UsageException("prompt file not found: " + source.file);
            prompt = Files.readString(source.file, StandardCharsets.UTF_8);
        } else if (source != null && source.prompt != null) {
            prompt = source.prompt;
        } else {
            prompt = DEFAULT_PROMPT;
            err.println("prompt: \"" + DEFAULT_PROMPT + "\" (default; use -p or -f)");
        }
        Path dir = modelOptions.resolveModel(err);
        if (parallel < 1) throw new Main.UsageException("-np must be >= 1");
        if (promptCacheReadOnly && promptCache == null) throw new Main.UsageException("--prompt-cache-ro needs --prompt-cache FILE");
        if (promptCache != null && (parallel > 1 || !kvOptions.spec().equals("full") || !quant.isNone()))
            throw new Main.UsageException("--prompt-cache keeps every token: it needs the full --kv policy, no --kv-quant and no -np");
        if (skipDecode != null) {
            if (superposed > 0 || parallel > 1 || lookup > 0 || draftOptions.enabled() || eadModel != null || trace
                    || grammarOptions.enabled() || outputFormat != Session.OutputFormat.TEXT || promptCache != null
                    || !kvOptions.spec().equals("full"))
                throw new Main.UsageException("--skip-decode runs its own decoding loop under the full --kv policy: it does not "
                        + "combine with --superposed, -np, --lookup, -md, --draft-layers, --ead-model, --trace, grammars, --format "
                        + "or --prompt-cache");
            return runSkipDecode(out, err, dir, prompt, so, quant);
        }
        if (superposed < 0) throw new Main.UsageException("--superposed must be >= 0");
        if (superposed > 0) {
            if (parallel > 1 || lookup > 0 || draftOptions.enabled() || eadModel != null || trace || grammarOptions.enabled()
                    || outputFormat != Session.OutputFormat.TEXT || promptCache != null)
                throw new Main.UsageException("--superposed runs its own decoding loop: it does not combine with -np, --lookup, -md, "
                        + "--draft-layers, --ead-model, --trace, grammars, --format or --prompt-cache");
            return runSuperposed(out, err, dir, prompt, quant);
        }
        if (parallel > 1) {
            if (lookup > 0 || draftOptions.enabled() || eadModel != null || trace)
                throw new Main.UsageException("-np decodes sequences together: it does not combine with --lookup, -md, --draft-layers, "
                        + "--ead-model or --trace");
            if (parallel > modelOptions.chunk)
                throw new Main.UsageException("-np " + parallel + " exceeds the batch size -b " + modelOptions.chunk + ": raise -b");
            return runParallel(out, err, dir, prompt, so, quant);
        }
        try (TokenPress tp = TokenPress.load(dir, modelOptions.toLoadOptions(err));
             TokenPress draft = draftOptions.loadDraft(modelOptions, tp, err);
             TokenPress ead = eadModel == null ? null
                     : TokenPress.loadOn(eadModel, modelOptions.toLoadOptions(err).withLoras(java.util.List.of()), tp);
             Session session = tp.newSession(ctx, quant)) {
            if (ead != null) {
                try {
                    session.setEntropyAdaptive(ead, eadThreshold, eadWindow);
                } catch (IllegalArgumentException e) {
                    throw new dev.tokenpress.io.ModelLoadException(eadModel + ": " + e.getMessage());
                }
                err.printf(Locale.ROOT, "entropy-adaptive: %s (%d layers) below %.2f bits over %d steps, this model above%n",
                        eadModel, ead.config().numLayers(), eadThreshold, eadWindow);
            }
            session.setPolicy(kvOptions.policy(tp.config()));
            session.setLookup(lookup);
            draftOptions.apply(session, tp, draft, err);
            session.setOutputFormat(outputFormat);
            grammarOptions.apply(session, outputFormat);
            sampling.applyTo(session, tp.config().vocabSize());
            boolean drafting = lookup > 0 || draftOptions.enabled();
            String drafter = lookup > 0 ? "lookup" : "draft";
            long[] lookup0 = tp.model().draftCounts();
            logLoaded(err, dir, tp);
            if (tp.model().policy() != KvPolicy.FULL) err.println("kv policy: " + tp.model().policy().spec());
            if (!quant.isNone()) err.println("kv quant: " + quant.spec());
            err.flush();
            if (!json) {
                out.print(prompt);
                out.flush();
            }
            java.util.List<dev.tokenpress.sample.StepTrace> steps = new java.util.ArrayList<>();
            StopText stopText = new StopText(stops == null ? java.util.List.of() : stops);
            int[] ids = tp.tokenizer().encode(prompt);
            int reused = 0;
            if (promptCache != null && Files.isRegularFile(promptCache)) {
                try {
                    int[] held = session.loadCache(promptCache);
                    int lcp = 0;
                    while (lcp < Math.min(held.length, ids.length) && held[lcp] == ids[lcp]) lcp++;
                    reused = Math.min(lcp, ids.length - 1); // the last prompt token runs again for its logits
                    session.truncate(reused);
                } catch (IllegalArgumentException e) {
                    err.println("prompt cache: " + e.getMessage() + " (going on without it)");
                    session.reset();
                }
            }
            GenerationResult r = session.generate(java.util.Arrays.copyOfRange(ids, reused, ids.length), nPredict, so, piece -> {
                String o = stopText.add(piece);
                if (!json && !o.isEmpty()) {
                    out.print(o);
                    out.flush();
                }
            }, trace ? steps::add : null, java.util.Set.of(), stopText::hit);
            if (!json && !stopText.hit()) out.print(stopText.rest());
            if (promptCache != null) {
                String saved = "";
                if (!promptCacheReadOnly) {
                    if (session.canTruncate()) {
                        session.saveCache(promptCache);
                        saved = ", " + session.tokens().length + " tokens saved to " + promptCache;
                    } else {
                        saved = ", not saved (the model's sliding window dropped tokens)";
                    }
                }
                err.printf(Locale.ROOT, "prompt cache: %d of %d prompt tokens reused%s%n", reused, ids.length, saved);
            }
            if (json) {
                ObjectMapper om = new ObjectMapper();
                ObjectNode o = om.createObjectNode();
                o.put("model", dir.toString());
                o.put("backend", tp.backend().description());
                o.put("prompt", prompt);
                o.put("text", stopText.hit() ? stopText.text() : r.text());
                o.put("prompt_tokens", ids.length);
                o.put("generated_tokens", r.tokens().length);
                o.put("stop_reason", r.stopReason());
                o.put("load_ms", tp.loadMillis());
                o.put("prefill_ms", r.prefillMillis());
                o.put("prompt_tokens_per_s", r.prefillTokensPerSecond());
                o.put("ttft_ms", r.ttftMillis());
                o.put("decode_steps", r.decodeSteps());
                o.put("decode_ms", r.decodeMillis());
                o.put("decode_tokens_per_s", r.decodeTokensPerSecond());
                o.put("kv_bytes", r.kvBytes());
                o.put("kv", tp.model().policy().spec());
                o.put("kv_quant", quant.spec());
                putCacheTypes(o, tp, quant);
                o.put("weight_type", modelOptions.weightType);
                o.put("ctx_size", session.contextSize());
                if (promptCache != null) o.put("prompt_cache_reused", reused);
                o.put("seed", r.seed());
                if (ead != null) {
                    long[] c = session.entropyAdaptiveCounts();
                    o.put("ead_small_tokens", c[0]);
                    o.put("ead_model_tokens", c[1]);
                    o.put("ead_switches", c[2]);
                }
                if (drafting) {
                    long[] c = tp.model().draftCounts();
                    o.put(drafter + "_drafted", c[0] - lookup0[0]);
                    o.put(drafter + "_accepted", c[1] - lookup0[1]);
                    if (draftOptions.enabled()) o.put("draft_kv_bytes", session.draftCacheBytes());
                }
                o.put("sampler", so.toString());
                if (trace) {
                    com.fasterxml.jackson.databind.node.ArrayNode a = o.putArray("trace");
                    for (dev.tokenpress.sample.StepTrace t : steps) {
                        ObjectNode n = a.addObject();
                        n.put("token", t.token());
                        n.put("piece", tp.tokenizer().decode(new int[]{t.token()}));
                        n.put("logprob", t.logprob());
                        n.put("entropy", t.entropy());
                        n.put("top_k_entropy", t.topKEntropy());
                        n.put("top_k_mass", t.topKMass());
                        if (Double.isInfinite(t.surprise())) n.putNull("surprise");
                        else n.put("surprise", t.surprise());
                        if (Double.isNaN(t.mirostatMu())) n.putNull("mirostat_mu");
                        else n.put("mirostat_mu", t.mirostatMu());
                    }
                }
                out.println(om.writeValueAsString(o));
            } else {
                out.println();
                if (ead != null) {
                    long[] c = session.entropyAdaptiveCounts();
                    err.printf(Locale.ROOT, "entropy-adaptive: %d tokens from the small model, %d from this model, %d switches%n",
                            c[0], c[1], c[2]);
                }
                if (drafting) {
                    long[] c = tp.model().draftCounts();
                    long d = c[0] - lookup0[0], a = c[1] - lookup0[1];
                    err.printf(Locale.ROOT, "%s: %d of %d drafted tokens accepted%s%n", drafter, a, d,
                            session.speculativeApplies() ? (d > 0 ? String.format(Locale.ROOT, " (%.1f%%)", 100.0 * a / d) : "")
                                    : " (speculative decoding needs the full policy and an unquantized cache: not used)");
                }
                err.printf(Locale.ROOT, "load %d ms | prompt %d tokens, %.1f tokens/s | ttft %.1f ms | decode %d tokens, %.2f tokens/s | KV %s (%d tokens) | stop: %s | seed %d%n",
                        tp.loadMillis(), ids.length, r.prefillTokensPerSecond(), r.ttftMillis(), r.decodeSteps(),
                        r.decodeTokensPerSecond(), Bytes.human(r.kvBytes()), session.contextSize(), r.stopReason(), r.seed());
            }
            out.flush();
            err.flush();
        }
        return ExitCodes.OK;
    }

    /** The stderr line after a model has loaded: directory, architecture, layers, load time. */
    private static void logLoaded(PrintWriter err, Path dir, TokenPress tp) {
        err.printf(Locale.ROOT, "loaded %s (%s, %d layers) in %d ms%n", dir, tp.config().architecture(),
                tp.config().numLayers(), tp.loadMillis());
    }

    /** --skip-decode MAX:MIN: {@link dev.tokenpress.model.SkipDecode} with the sampler chain of the options. */
    private int runSkipDecode(PrintWriter out, PrintWriter err, Path dir, String prompt, SamplingOptions so,
                              dev.tokenpress.kv.quant.KvQuantSpec quant) throws Exception {
        try (TokenPress tp = TokenPress.load(dir, modelOptions.toLoadOptions(err))) {
            int layers = tp.config().numLayers();
            dev.tokenpress.model.SkipDecode.Schedule schedule;
            try {
                schedule = dev.tokenpress.model.SkipDecode.Schedule.parse(skipDecode, layers, nPredict);
            } catch (IllegalArgumentException e) {
                throw new Main.UsageException("--" + e.getMessage());
            }
            logLoaded(err, dir, tp);
            int[] ids = tp.tokenizer().encode(prompt);
            dev.tokenpress.model.Llama m = tp.model();
            dev.tokenpress.sample.SamplerChain chain = dev.tokenpress.sample.SamplerChain.create(so, tp.config().vocabSize());
            int capacity = ctx > 0 ? ctx : ids.length + nPredict;
            long t0 = System.nanoTime();
            dev.tokenpress.model.SkipDecode.Result r;
            try (dev.tokenpress.kv.KvCache cache = m.newCache(capacity, quant)) {
                r = dev.tokenpress.model.SkipDecode.generate(m, cache, ids, 0, nPredict,
                        schedule, chain,
                        sampling.ignoreEos ? java.util.Set.of() : new java.util.HashSet<>(tp.config().eosTokenIds()), t -> true);
            }
            double sec = (System.nanoTime() - t0) / 1e9;
            String text = tp.tokenizer().decode(r.tokens());
            if (json) {
                ObjectMapper om = new ObjectMapper();
                ObjectNode n = om.createObjectNode();
                n.put("model", dir.toString());
                n.put("prompt", prompt);
                n.put("text", text);
                n.put("generated_tokens", r.tokens().length);
                n.put("seconds", sec);
                n.put("mean_layers", r.meanLayers());
                n.put("layers", layers);
                out.println(om.writeValueAsString(n));
            } else {
                out.println(prompt + text);
                err.printf(Locale.ROOT, "skip-decode: layers %d down to %d of %d, %.2f per token on average | %d tokens in %.2f s%n",
                        schedule.maxLayers(), schedule.minLayers(), layers, r.meanLayers(), r.tokens().length, sec);
            }
            out.flush();
            err.flush();
        }
        return ExitCodes.OK;
    }

    /** --superposed K: K drafts through {@link dev.tokenpress.model.SuperposedDecoding}, printed best first. */
    private int runSuperposed(PrintWriter out, PrintWriter err, Path dir, String prompt,
                              dev.tokenpress.kv.quant.KvQuantSpec quant) throws Exception {
        dev.tokenpress.model.SuperposedDecoding.Options o;
        try {
            o = new dev.tokenpress.model.SuperposedDecoding.Options(superposed,
                    superposedTop > 0 ? superposedTop : Math.max(9, 2 * superposed), superposedAlpha, superposedTemp,
                    dev.tokenpress.model.SuperposedDecoding.DEFAULT_NGRAM_WEIGHTS, 200);
        } catch (IllegalArgumentException e) {
            throw new Main.UsageException("--superposed: " + e.getMessage());
        }
        if (superposedCorpus != null)
            for (Path f : superposedCorpus)
                if (!Files.isRegularFile(f)) throw new Main.UsageException("--superposed-corpus file not found: " + f);
        try (TokenPress tp = TokenPress.load(dir, modelOptions.toLoadOptions(err))) {
            logLoaded(err, dir, tp);
            dev.tokenpress.sample.NGramModel ngrams = null;
            if (superposedCorpus != null && !superposedCorpus.isEmpty()) {
                ngrams = new dev.tokenpress.sample.NGramModel(dev.tokenpress.model.SuperposedDecoding.DEFAULT_NGRAM_WEIGHTS.length);
                for (Path f : superposedCorpus) ngrams.add(tp.tokenizer().encode(Files.readString(f, StandardCharsets.UTF_8)));
                err.printf(Locale.ROOT, "superposed: n-grams of %d corpus tokens%n", ngrams.tokens());
            }
            int[] ids = tp.tokenizer().encode(prompt);
            dev.tokenpress.model.Llama m = tp.model();
            m.setPolicy(kvOptions.policy(tp.config()));
            int capacity = ctx > 0 ? ctx : ids.length + nPredict;
            long t0 = System.nanoTime();
            dev.tokenpress.model.SuperposedDecoding.Result r;
            try (dev.tokenpress.kv.KvCache cache = m.newCache(capacity, quant)) {
                r = new dev.tokenpress.model.SuperposedDecoding(o, ngrams).generate(m, cache, ids, 0, nPredict,
                        new java.util.HashSet<>(tp.config().eosTokenIds()));
            } finally {
                m.setPolicy(KvPolicy.FULL);
            }
            double sec = (System.nanoTime() - t0) / 1e9;
            java.util.List<dev.tokenpress.model.SuperposedDecoding.Draft> drafts = new java.util.ArrayList<>(r.finished());
            drafts.addAll(r.alive());
            drafts.sort((a, b) -> Double.compare(b.meanLogProb(), a.meanLogProb()));
            if (json) {
                ObjectMapper om = new ObjectMapper();
                ObjectNode n = om.createObjectNode();
                n.put("model", dir.toString());
                n.put("backend", tp.backend().description());
                n.put("prompt", prompt);
                n.put("prompt_tokens", ids.length);
                n.put("drafts_requested", superposed);
                n.put("steps", r.steps());
                n.put("seconds", sec);
                n.put("prefill_s", r.prefillSeconds());
                n.put("stop", r.cacheFull() ? "context" : "length");
                n.put("steps_per_s", r.steps() / r.stepSeconds());
                com.fasterxml.jackson.databind.node.ArrayNode a = n.putArray("drafts");
                for (var d : drafts) {
                    ObjectNode x = a.addObject();
                    x.put("text", tp.tokenizer().decode(d.tokens()));
                    x.put("tokens", d.tokens().length);
                    x.put("score", d.logProb());
                    x.put("score_per_token", d.meanLogProb());
                    x.put("finished", d.finished());
                }
                out.println(om.writeValueAsString(n));
            } else {
                for (int i = 0; i < drafts.size(); i++) {
                    var d = drafts.get(i);
                    out.printf(Locale.ROOT, "draft %d (score %.3f per token%s):%n%n%s%s%n%n", i, d.meanLogProb(), d.finished() ? ", ended" : "",
                            prompt, tp.tokenizer().decode(d.tokens()));
                }
                err.printf(Locale.ROOT, "superposed: %d drafts | prompt %d tokens in %.2f s | %d steps in %.2f s, %.2f steps/s (one pass each)%s%n",
                        superposed, ids.length, r.prefillSeconds(), r.steps(), r.stepSeconds(), r.steps() / r.stepSeconds(),
                        r.cacheFull() ? " | stop: the KV cache is full (-c)" : "");
            }
            out.flush();
            err.flush();
        }
        return ExitCodes.OK;
    }

    /** -np N: N sequences of the prompt through {@link Parallel}, printed one after the other. */
    private int runParallel(PrintWriter out, PrintWriter err, Path dir, String prompt, SamplingOptions so,
                            dev.tokenpress.kv.quant.KvQuantSpec quant) throws Exception {
        try (TokenPress tp = TokenPress.load(dir, modelOptions.toLoadOptions(err));
             Parallel par = new Parallel(tp, ctx, quant, kvOptions.spec())) {
            logLoaded(err, dir, tp);
            if (!kvOptions.spec().equals("full")) err.println("kv policy: " + kvOptions.policy(tp.config()).spec());
            if (!quant.isNone()) err.println("kv quant: " + quant.spec());
            java.util.Map<Integer, Float> bias = new java.util.HashMap<>(sampling.logitBias());
            for (int id : bias.keySet())
                if (id >= tp.config().vocabSize())
                    throw new Main.UsageException("--logit-bias: token " + id + " is outside the vocabulary [0, " + tp.config().vocabSize() + ")");
            if (sampling.ignoreEos) for (int e : tp.config().eosTokenIds()) bias.put(e, Float.NEGATIVE_INFINITY);
            int[] ids = tp.tokenizer().encode(prompt);
            var constraint = grammarOptions.constraint(tp.tokenizer().tokenTexts(), outputFormat(format));
            java.util.List<Parallel.Request> reqs = new java.util.ArrayList<>();
            for (int i = 0; i < parallel; i++) {
                SamplingOptions o = so.seed() == SamplingOptions.RANDOM_SEED ? so : so.withSeed(so.seed() + i);
                reqs.add(new Parallel.Request(ids, nPredict, o, stops == null ? java.util.List.of() : stops, null, bias,
                        null, null, null, constraint));
            }
            long t0 = System.nanoTime();
            java.util.List<GenerationResult> rs = par.generate(reqs, parallel);
            double sec = (System.nanoTime() - t0) / 1e9;
            long generated = 0;
            for (GenerationResult r : rs) generated += r.tokens().length;
            long[] counts = par.stepCounts();
            if (json) {
                ObjectMapper om = new ObjectMapper();
                ObjectNode o = om.createObjectNode();
                o.put("model", dir.toString());
                o.put("backend", tp.backend().description());
                o.put("prompt", prompt);
                o.put("prompt_tokens", ids.length);
                o.put("parallel", parallel);
                o.put("seconds", sec);
                o.put("generated_tokens", generated);
                o.put("tokens_per_s", generated / sec);
                o.put("decode_steps", counts[0]);
                o.put("kv", kvOptions.policy(tp.config()).spec());
                o.put("kv_quant", quant.spec());
                putCacheTypes(o, tp, quant);
                o.put("sampler", so.toString());
                com.fasterxml.jackson.databind.node.ArrayNode a = o.putArray("sequences");
                for (GenerationResult r : rs) {
                    ObjectNode n = a.addObject();
                    n.put("text", r.text());
                    n.put("generated_tokens", r.tokens().length);
                    n.put("stop_reason", r.stopReason());
                    n.put("seed", r.seed());
                    n.put("ttft_ms", r.ttftMillis());
                    n.put("kv_bytes", r.kvBytes());
                }
                out.println(om.writeValueAsString(o));
            } else {
                for (int i = 0; i < rs.size(); i++) {
                    out.println("sequence " + i + ":");
                    out.println();
                    out.println(prompt + rs.get(i).text());
                    out.println();
                }
                err.printf(Locale.ROOT, "load %d ms | %d sequences, prompt %d tokens each | %d tokens generated in %.2f s, %.2f tokens/s "
                                + "(%d decode steps, %.2f sequences per step) | seeds %s%n",
                        tp.loadMillis(), parallel, ids.length, generated, sec, generated / sec, counts[0],
                        counts[0] == 0 ? 0.0 : (double) counts[1] / counts[0],
                        rs.stream().map(r -> Long.toString(r.seed())).collect(java.util.stream.Collectors.joining(",")));
            }
            out.flush();
            err.flush();
        }
        return ExitCodes.OK;
    }

    /** How an unquantized cache stored keys and values ({@code -ctk} / {@code -ctv}; a quantized cache has codes instead). */
    private static void putCacheTypes(com.fasterxml.jackson.databind.node.ObjectNode o, TokenPress tp, dev.tokenpress.kv.quant.KvQuantSpec quant) {
        if (quant.isNone()) tp.cacheTypes().forEach(o::put);
    }
}
