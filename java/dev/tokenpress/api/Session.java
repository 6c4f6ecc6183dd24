package dev.tokenpress.api;

import dev.tokenpress.io.StreamingDecoder;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.KvCacheFullException;
import dev.tokenpress.kv.KvPolicy;
import dev.tokenpress.model.Drafter;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LookupDrafter;
import dev.tokenpress.model.ModelDrafter;
import dev.tokenpress.sample.Grammar;
import dev.tokenpress.sample.GrammarConstraint;
import dev.tokenpress.sample.JsonConstraint;
import dev.tokenpress.sample.JsonSchemaGrammar;
import dev.tokenpress.sample.TokenConstraint;
import dev.tokenpress.sample.SamplerChain;
import dev.tokenpress.sample.SamplingOptions;
import dev.tokenpress.sample.StepTrace;

import java.util.Arrays;
import java.util.HashSet;
import java.util.Set;
import java.util.function.BooleanSupplier;
import java.util.function.Consumer;

/**
 * One sequence being decoded: a KV cache plus the tokens it holds. Not thread-safe; one model serves one
 * session at a time (they share activation buffers).
 */
public final class Session implements AutoCloseable {
    private final TokenPress tp;
    private final Llama model;
    private final KvCache cache;
    private int position;
    private final Set<Integer> eos;
    private int[] unfed = new int[0];
    private int stopToken = -1;
    private int[] fed = new int[64]; // the tokens processed so far, in order (fedCount == position)
    private int fedCount;
    private int lookup;               // prompt lookup decoding: most drafted tokens per step (0 = off)
    private ModelDrafter drafter;     // speculative decoding with a draft model (null = off)
    private ModelDrafter eadSmall;    // entropy-adaptive decoding: the small model (null = off)
    private double eadTau;
    private int eadWindow;
    private final long[] eadCounts = new long[3]; // tokens from the small model, from this model, switches
    private int draftMax;             // its most drafted tokens per step
    private OutputFormat format = OutputFormat.TEXT;
    private Grammar grammar;          // constrained output (GBNF or a JSON schema); null = none
    private java.util.Map<Integer, Float> logitBias = java.util.Map.of();
    private boolean ignoreEos;
    private String grammarName;
    private boolean allFull = true;  // every token since the last reset was processed under the full policy

    Session(TokenPress tp, int contextSize) {
        this(tp, contextSize, null);
    }

    /** A session whose KV cache is stored as {@code quant} says (null or none: f32). */
    Session(TokenPress tp, int contextSize, dev.tokenpress.kv.quant.KvQuantSpec quant) {
        this.tp = tp;
        this.model = tp.model();
        this.cache = quant == null || quant.isNone() ? model.newCache(contextSize) : model.newCache(contextSize, quant);
        this.eos = new HashSet<>(tp.config().eosTokenIds());
    }

    public KvCache cache() { return cache; }

    /** Tokens processed so far (the next token's position). */
    public int position() { return position; }

    public int contextSize() { return cache.capacity(); }

    /** Uses a KV policy for this session's model from now on. */
    public void setPolicy(KvPolicy policy) { model.setPolicy(policy); }

    /** The tokens processed so far, in order (prompts and the generated tokens fed back; {@link #position} of them). */
    public int[] tokens() {
        return Arrays.copyOf(fed, fedCount);
    }

    /**
     * Whether {@link #truncate} works here: the cache holds every processed token (the {@code full} policy now and
     * for everything since the last {@link #reset}) and freeing the newest tokens restores it exactly (not a
     * quantized cache).
     */
    public boolean canTruncate() {
        return allFull && model.policy() == KvPolicy.FULL && cache.appendsReversible() && !windowDropped();
    }

    /** Whether a sliding window has freed tokens of this sequence, which a truncation could not bring back. */
    private boolean windowDropped() {
        int w = model.slidingWindow();
        return w > 0 && position > w;
    }

    /**
     * Keeps only the first {@code n} tokens (frees the later ones' slots), so a prompt that shares a prefix with
     * what was processed only needs its new part fed (prompt caching).
     *
     * @throws IllegalStateException    unless {@link #canTruncate}
     * @throws IllegalArgumentException unless 0 <= n <= {@link #position}
     */
    public void truncate(int n) {
        if (!canTruncate())
            throw new IllegalStateException(windowDropped()
                    ? "truncate cannot bring back the tokens the model's sliding window dropped: reset and feed the prefix again"
                    : "truncate needs the full KV policy and an unquantized cache (policy " + model.policy().spec() + ")");
        if (n < 0 || n > position) throw new IllegalArgumentException("truncate to " + n + " of " + position + " tokens");
        cache.freeFrom(n);
        position = n;
        fedCount = n;
        unfed = new int[0];
        stopToken = -1;
    }

    /**
     * After a failure part-way: frees what was appended from {@code from} on where appends can be freed exactly, and
     * stops prompt caching from trusting the rest.
     */
    private void rollBack(int from) {
        if (windowDropped()) { // the window freed tokens a rollback would need: start over
            reset();
            return;
        }
        if (cache.appendsReversible()) cache.freeFrom(from);
        else allFull = false;
        if (model.policy() != KvPolicy.FULL) allFull = false;
        position = from;
        unfed = new int[0];
        stopToken = -1;
    }

    private void record(int[] tokens, int n) {
        if (fedCount + n > fed.length) fed = Arrays.copyOf(fed, Math.max(fed.length * 2, fedCount + n));
        System.arraycopy(tokens, 0, fed, fedCount, n);
        fedCount += n;
    }

    /**
     * Prompt lookup decoding from now on: up to {@code maxDraft} tokens per step are drafted from an earlier
     * occurrence of the sequence's last tokens and checked in one forward pass ({@link Llama#decodeSpeculative}); the
     * tokens are those of plain decoding either way (greedy or sampled with the same seed). 0 turns it off. While on,
     * it is used instead of a draft model ({@link #setDraftModel}), which stays set for when it is off again. It
     * applies where the policy is {@code full} and the cache unquantized; elsewhere decoding runs as usual.
     */
    public void setLookup(int maxDraft) {
        if (maxDraft < 0) throw new IllegalArgumentException("lookup draft must be >= 0, got " + maxDraft);
        lookup = maxDraft;
    }

    /**
     * Speculative decoding with a draft model from now on (llama.cpp's {@code --model-draft}): a smaller model with
     * the same tokenizer drafts up to {@code maxDraft} tokens per step greedily, stopping early once its top token's
     * probability is below {@code pMin} (after {@code minDraft} tokens); this session's model checks them in one
     * forward pass. The tokens are exactly those of plain decoding (greedy or sampled with the same seed); only the
     * speed changes, with how often the draft is right. Applies where {@link #setLookup} does and turns lookup off. The draft
     * model keeps its own KV cache of this session's context size; {@code draft} stays open as long as it is used
     * and is not closed by this session.
     *
     * @throws IllegalArgumentException if the draft's tokenizer differs from this model's
     */
    public void setDraftModel(TokenPress draft, int maxDraft, int minDraft, float pMin) {
        checkDraftModel(tp, draft);
        useDrafter(draft.model(), maxDraft, minDraft, pMin);
    }

    /** Throws IllegalArgumentException unless {@code draft} can draft for {@code target}: the same tokenizer. */
    public static void checkDraftModel(TokenPress target, TokenPress draft) {
        ModelDrafter.checkVocabulary(target.config(), draft.config());
        if (!target.tokenizer().sameVocabulary(draft.tokenizer()))
            throw new IllegalArgumentException("the draft model's tokenizer (" + draft.tokenizer().file()
                    + ") differs from the model's: use a draft model with the same tokenizer");
    }

    /**
     * Self-speculative decoding from now on: the draft model is this model's first {@code layers} layers with its
     * final norm and LM head (an early exit; the weights are shared, nothing is loaded twice); otherwise as {@link
     * #setDraftModel}.
     */
    public void setSelfDraft(int layers, int maxDraft, int minDraft, float pMin) {
        useDrafter(ModelDrafter.selfDraft(model, layers), maxDraft, minDraft, pMin);
    }

    /**
     * SpecDec++'s stopping rule for the draft model set by {@link #setDraftModel} or {@link #setSelfDraft}: drafting
     * stops once 1 − Π p_acc exceeds {@code threshold}, p_acc of a token being the draft model's probability of it
     * ({@link ModelDrafter#setStopRejection}); 0 = off.
     *
     * @throws IllegalStateException without a draft model
     */
    public void setDraftStop(double threshold) {
        if (drafter == null) throw new IllegalStateException("no draft model: set one with setDraftModel or setSelfDraft first");
        drafter.setStopRejection(threshold);
    }

    private void useDrafter(Llama draftModel, int maxDraft, int minDraft, float pMin) {
        if (maxDraft < 1) throw new IllegalArgumentException("draft-max must be >= 1, got " + maxDraft);
        ModelDrafter d = new ModelDrafter(draftModel, cache.capacity(), minDraft, pMin);
        closeDrafter();
        closeEad();
        drafter = d;
        draftMax = maxDraft;
        lookup = 0;
    }

    /**
     * Entropy-adaptive decoding from now on (Entropy Adaptive Decoding, arXiv 2502.06833): every token comes from
     * {@code small} (same tokenizer, its own KV cache kept in step) unless the mean entropy of the small model's
     * next-token distributions over the last {@code window} steps, in bits before temperature, exceeds {@code
     * tauBits}; then this session's model produces it, after prefilling the tokens it has not seen. Deviation from
     * the paper: the switch always looks at the small model's entropy (computed at every step), so the rule has no
     * state beyond that window. {@code Double.POSITIVE_INFINITY} = always the small model, {@code
     * Double.NEGATIVE_INFINITY} = always this one. Replaces drafting (speculative decoding). The caller keeps
     * {@code small} open.
     */
    public void setEntropyAdaptive(TokenPress small, double tauBits, int window) {
        checkDraftModel(tp, small);
        if (window < 1) throw new IllegalArgumentException("entropy window must be >= 1, got " + window);
        if (Double.isNaN(tauBits)) throw new IllegalArgumentException("entropy threshold is NaN");
        ModelDrafter d = new ModelDrafter(small.model(), cache.capacity(), 0, 0f);
        clearDraft();
        closeEad();
        eadSmall = d;
        eadTau = tauBits;
        eadWindow = window;
    }

    /** {tokens from the small model, tokens from this model, switches} of entropy-adaptive decoding so far. */
    public long[] entropyAdaptiveCounts() {
        return eadCounts.clone();
    }

    private void closeEad() {
        if (eadSmall != null) eadSmall.close();
        eadSmall = null;
    }

    /** H = -Σ p log2 p of softmax(logits), in bits. */
    static double entropyBits(float[] logits) {
        return dev.tokenpress.sample.LogitRows.entropy(logits, 0, logits.length) / Math.log(2);
    }

    /** Turns speculative decoding off (a draft model or prompt lookup). */
    public void clearDraft() {
        closeDrafter();
        lookup = 0;
    }

    private void closeDrafter() {
        if (drafter != null) drafter.close();
        drafter = null;
    }

    /** Bytes of the draft model's KV cache (0 without a draft model). */
    public long draftCacheBytes() {
        return drafter == null ? 0 : drafter.cacheBytes();
    }

    /**
     * Whether speculative decoding (a draft model or prompt lookup) would run now: one is set, the policy is {@code
     * full} and the cache's appends can be freed exactly (not quantized).
     */
    public boolean speculativeApplies() {
        return (drafter != null || lookup > 0) && model.policy() == KvPolicy.FULL && cache.appendsReversible()
                && model.slidingWindow() == 0; // a checked draft runs several rows, which a sliding window forbids
    }

    /**
     * One scored position: {@code logprob} = ln p(the next token | everything before) under the model distribution
     * (softmax of the logits), and the {@code topTokens} most likely tokens there with their {@code topLogprobs}.
     */
    public record Score(int token, double logprob, int[] topTokens, double[] topLogprobs) {}

    /**
     * Feeds {@code tokens[0..n)} after what the session holds (one prefill, chunk by chunk; only one chunk of logits
     * is kept at a time) and scores every token of {@code tokens} that follows a fed one: entry i is the score of
     * {@code tokens[i + 1]} (so {@code min(n, tokens.length - 1)} entries; with {@code n < tokens.length} the last is
     * the first unfed token, e.g. a prompt's last token that generation will feed). {@code top} alternatives per
     * position (0 = none).
     */
    public Score[] score(int[] tokens, int n, int top) {
        if (n < 1 || n > tokens.length) throw new IllegalArgumentException("score: n=" + n + " of " + tokens.length + " tokens");
        if (position + n > cache.capacity() && model.policy() == KvPolicy.FULL)
            throw new IllegalArgumentException("the text has " + n + " tokens but the context holds "
                    + (cache.capacity() - position) + ": raise the context size (-c)");
        Score[] out = new Score[Math.min(n, tokens.length - 1)];
        int[] targets = new int[out.length];
        for (int i = 0; i < out.length; i++) targets[i] = tokens[i + 1];
        // each row reduced where the logits live: its log-sum-exp, its target's logit, its top alternatives
        model.prefillScored(cache, tokens, n, position, targets, top, (first, m, lse, target, ids, vals) -> {
            for (int r = 0; r < m && first + r < out.length; r++) {
                int k = ids == null ? 0 : ids[r].length;
                int[] topIds = new int[k];
                double[] lps = new double[k];
                for (int i = 0; i < k; i++) {
                    topIds[i] = ids[r][i];
                    lps[i] = vals[r][i] - lse[r];
                }
                out[first + r] = new Score(targets[first + r], target[r] - lse[r], topIds, lps);
            }
        }, null);
        if (model.policy() != KvPolicy.FULL) allFull = false;
        position += n;
        record(tokens, n);
        unfed = new int[0];
        stopToken = -1;
        return out;
    }

    /** What generated text must be. */
    public enum OutputFormat {
        /** Anything. */
        TEXT,
        /** One JSON value (then an end token). */
        JSON,
        /** One JSON object (OpenAI's {@code response_format: {"type": "json_object"}}). */
        JSON_OBJECT
    }

    /**
     * Constrains what {@link #generate} produces from now on: {@link OutputFormat#JSON} / {@link
     * OutputFormat#JSON_OBJECT} keep the text a valid JSON prefix at every step ({@link JsonConstraint}; sampling goes
     * through the sampler chain, greedy included) and end it with an end token once the value is complete; the
     * prompt should ask for JSON, as with any JSON mode.
     */
    public void setOutputFormat(OutputFormat f) {
        format = f == null ? OutputFormat.TEXT : f;
    }

    /**
     * Adds these biases to the logits before sampling from now on (token id → bias; {@code -infinity} bans the
     * token; null or empty = none), llama.cpp's {@code --logit-bias} and OpenAI's {@code logit_bias}. Greedy decoding
     * then goes through the sampler chain.
     */
    public void setLogitBias(java.util.Map<Integer, Float> bias) {
        logitBias = bias == null ? java.util.Map.of() : java.util.Map.copyOf(bias);
    }

    /** Bans the end-of-sequence tokens from now on, so generation runs to its token limit (llama.cpp's {@code --ignore-eos}). */
    public void setIgnoreEos(boolean on) {
        ignoreEos = on;
    }

    /**
     * Constrains what {@link #generate} produces from now on to the sentences of a grammar in llama.cpp's GBNF
     * notation ({@link Grammar}; null = none): every step keeps the text a prefix of a sentence, the end tokens come
     * only once it is one, and once no rule can go on, generation ends. Takes precedence over {@link
     * #setOutputFormat}.
     *
     * @throws IllegalArgumentException for a malformed grammar (one line: what and where)
     */
    public void setGrammar(String gbnf) {
        grammar = gbnf == null ? null : Grammar.parse(gbnf);
        grammarName = "grammar";
    }

    /**
     * Constrains what {@link #generate} produces to JSON that the schema accepts (structured output, {@link
     * JsonSchemaGrammar}; null = none); as {@link #setGrammar}.
     *
     * @throws IllegalArgumentException for invalid JSON or a schema feature that is not supported
     */
    public void setJsonSchema(String schema) {
        grammar = schema == null ? null : JsonSchemaGrammar.compile(schema);
        grammarName = "json-schema";
    }

    /** Forgets all tokens. */
    private static final int CACHE_MAGIC = 0x54504B56; // "TPKV"

    /**
     * Writes the tokens this session has processed and their keys and values to {@code file} (llama.cpp's prompt
     * cache): a later session of the same model restores them with {@link #loadCache} instead of prefilling them
     * again. Needs what {@link #truncate} needs (the full policy, an unquantized cache, no tokens dropped by a sliding
     * window). The file is written next to its destination and moved into place.
     */
    public void saveCache(java.nio.file.Path file) throws java.io.IOException {
        if (!canTruncate())
            throw new IllegalStateException("a prompt cache holds every token: it needs the full KV policy and an unquantized cache "
                    + "(policy " + model.policy().spec() + ")");
        int hd = cache.headDim();
        java.nio.file.Path tmp = file.resolveSibling(file.getFileName() + ".tmp");
        try (java.io.DataOutputStream out = new java.io.DataOutputStream(new java.io.BufferedOutputStream(
                java.nio.file.Files.newOutputStream(tmp), 1 << 16))) {
            out.writeInt(CACHE_MAGIC);
            out.writeInt(1);
            out.writeLong(tp.fingerprint());
            out.writeInt(cache.layers());
            out.writeInt(cache.kvHeads());
            out.writeInt(hd);
            out.writeInt(fedCount);
            for (int i = 0; i < fedCount; i++) out.writeInt(fed[i]);
            float[] keys = new float[cache.capacity() * hd], values = new float[cache.capacity() * hd];
            for (int l = 0; l < cache.layers(); l++)
                for (int g = 0; g < cache.kvHeads(); g++) {
                    int[] pos = cache.positions(l, g);
                    int hw = cache.highWater(l, g), count = cache.occupied(l, g);
                    out.writeInt(count);
                    tp.backend().readKvHead(cache, l, g, keys, values);
                    for (int slot = 0; slot < hw; slot++) {
                        if (pos[slot] < 0) continue;
                        out.writeInt(pos[slot]);
                        for (int d = 0; d < hd; d++) out.writeFloat(keys[slot * hd + d]);
                        for (int d = 0; d < hd; d++) out.writeFloat(values[slot * hd + d]);
                    }
                }
        }
        java.nio.file.Files.move(tmp, file, java.nio.file.StandardCopyOption.REPLACE_EXISTING,
                java.nio.file.StandardCopyOption.ATOMIC_MOVE);
    }

    /**
     * Restores a file written by {@link #saveCache}: the session starts over holding those tokens (see {@link #tokens})
     * and their keys and values, ready for {@link #truncate} to the prefix a prompt shares with them and
     * {@code generate} of the rest.
     *
     * @throws IllegalArgumentException when the file is not a prompt cache of this model or does not fit this session
     */
    public int[] loadCache(java.nio.file.Path file) throws java.io.IOException {
        if (model.policy() != KvPolicy.FULL || !cache.appendsReversible())
            throw new IllegalStateException("a prompt cache restores every token: it needs the full KV policy and an unquantized cache "
                    + "(policy " + model.policy().spec() + ")");
        reset();
        int hd = cache.headDim();
        try (java.io.DataInputStream in = new java.io.DataInputStream(new java.io.BufferedInputStream(
                java.nio.file.Files.newInputStream(file), 1 << 16))) {
            if (in.readInt() != CACHE_MAGIC || in.readInt() != 1)
                throw new IllegalArgumentException(file + " is not a tokenpress prompt cache");
            if (in.readLong() != tp.fingerprint())
                throw new IllegalArgumentException(file + " was saved with another model: delete it or give another file");
            if (in.readInt() != cache.layers() || in.readInt() != cache.kvHeads() || in.readInt() != hd)
                throw new IllegalArgumentException(file + ": the cache's shape differs from this model's");
            int n = in.readInt();
            if (n < 0 || n > cache.capacity())
                throw new IllegalArgumentException(file + " holds " + n + " tokens, more than the context (" + cache.capacity() + "): raise -c");
            int[] tokens = new int[n];
            for (int i = 0; i < n; i++) tokens[i] = in.readInt();
            float[] k = new float[hd], v = new float[hd];
            int[] p = new int[1];
            for (int l = 0; l < cache.layers(); l++)
                for (int g = 0; g < cache.kvHeads(); g++) {
                    int count = in.readInt();
                    if (count != n) throw new IllegalArgumentException(file + " is damaged (" + count + " keys for " + n + " tokens)");
                    for (int i = 0; i < count; i++) {
                        p[0] = in.readInt();
                        if (p[0] < 0 || p[0] >= n) throw new IllegalArgumentException(file + " is damaged (position " + p[0] + ")");
                        for (int d = 0; d < hd; d++) k[d] = in.readFloat();
                        for (int d = 0; d < hd; d++) v[d] = in.readFloat();
                        int slot = cache.allocate(l, g, p, 1)[0];
                        tp.backend().writeKv(cache, l, g, slot, k, v);
                    }
                }
            record(tokens, n);
            position = n;
            return tokens;
        } catch (RuntimeException | java.io.IOException e) {
            reset();
            if (e instanceof java.io.EOFException) throw new IllegalArgumentException(file + " is truncated");
            throw e;
        }
    }

    public void reset() {
        cache.clear();
        position = 0;
        fedCount = 0;
        allFull = true;
        unfed = new int[0];
        stopToken = -1;
    }

    /**
     * Encodes the prompt (with the tokenizer's own special tokens, e.g. BOS), runs it and samples up to
     * {@code maxTokens} tokens, streaming text to {@code listener}. Stops at an EOS token, at maxTokens, or
     * when the KV cache is full.
     */
    public GenerationResult generate(String prompt, int maxTokens, SamplingOptions options, TokenListener listener) {
        return generate(tp.tokenizer().encode(prompt), maxTokens, options, listener);
    }

    public GenerationResult generate(int[] promptTokens, int maxTokens, SamplingOptions options, TokenListener listener) {
        return generate(promptTokens, maxTokens, options, listener, null);
    }

    /**
     * As {@link #generate(int[], int, SamplingOptions, TokenListener)}, also passing each sampling step's
     * diagnostics ({@link StepTrace}: entropy, top-k entropy and mass, surprise, Mirostat mu) to {@code trace}
     * (null: no tracing). With a trace, greedy decoding also goes through the sampler chain (same tokens).
     */
    public GenerationResult generate(int[] promptTokens, int maxTokens, SamplingOptions options, TokenListener listener,
                                     Consumer<StepTrace> trace) {
        return generate(promptTokens, maxTokens, options, listener, trace, Set.of());
    }

    /**
     * Generated tokens of the last {@link #generate} that are not in the KV cache yet (the last sampled token is
     * only fed by the step after it): to be fed before anything else when the sequence goes on.
     */
    int[] unfedTokens() { return unfed.clone(); }

    /** The token that ended the last generation with stop reason "eos" (not part of its tokens), else -1. */
    int lastStopToken() { return stopToken; }

    /** As {@link #generate(int[], int, SamplingOptions, TokenListener, Consumer)}, also stopping at {@code extraStops}. */
    public GenerationResult generate(int[] promptTokens, int maxTokens, SamplingOptions options, TokenListener listener,
                                     Consumer<StepTrace> trace, Set<Integer> extraStops) {
        return generate(promptTokens, maxTokens, options, listener, trace, extraStops, null);
    }

    /**
     * The general form: also stops (reason "eos", the token not part of the result) at any of {@code extraStops}
     * besides the model's EOS tokens, and (reason "stop") as soon as {@code stopRequested} (asked after each token
     * whose text went to the listener; null = never) says so, e.g. when the text reached a stop string.
     */
    public GenerationResult generate(int[] promptTokens, int maxTokens, SamplingOptions options, TokenListener listener,
                                     Consumer<StepTrace> trace, Set<Integer> extraStops, BooleanSupplier stopRequested) {
        if (promptTokens.length == 0) throw new IllegalArgumentException("the prompt is empty: give at least one token");
        // an evicting policy frees room as it goes; everything else needs the prompt to fit
        if (model.policy() == KvPolicy.FULL && position + promptTokens.length > cache.capacity())
            throw new IllegalArgumentException("the prompt has " + promptTokens.length + " tokens but the context holds "
                    + (cache.capacity() - position) + ": raise the context size (-c)");
        TokenConstraint json = null;
        if (format != OutputFormat.TEXT || grammar != null) {
            Set<Integer> ends = new HashSet<>(eos);
            ends.addAll(extraStops);
            if (ends.isEmpty())
                throw new IllegalStateException("constrained output needs an end token, and this model declares no EOS");
            json = grammar != null ? new GrammarConstraint(grammar, tp.tokenizer().tokenTexts(), ends, grammarName)
                    : new JsonConstraint(tp.tokenizer().tokenTexts(), ends, format == OutputFormat.JSON_OBJECT);
        }
        java.util.Map<Integer, Float> bias = new java.util.HashMap<>(logitBias);
        if (ignoreEos) {
            if (json != null) throw new IllegalStateException("ignoring EOS and constrained output exclude each other (the text ends with EOS)");
            for (int e : eos) bias.put(e, Float.NEGATIVE_INFINITY);
        }
        SamplerChain chain = SamplerChain.create(options, tp.config().vocabSize(), bias, json, dryBreakers(tp, options));
        boolean plainGreedy = trace == null && options.isPlainGreedy() && bias.isEmpty();
        boolean greedy = plainGreedy && json == null;
        if (trace != null) chain.setTrace(true);
        StreamingDecoder text = tp.tokenizer().streaming();
        StringBuilder out = new StringBuilder();
        for (int i = 0; i < fedCount; i++) chain.accept(fed[i]); // the penalties see the whole sequence
        if (model.policy() != KvPolicy.FULL) allFull = false;
        for (int t : promptTokens) chain.accept(t);
        if (json != null) json.begin(); // what follows is the JSON text

        long t0 = System.nanoTime();
        int total = promptTokens.length;
        boolean report = total > 2 * model.maxChunk();
        try {
            model.prefill(cache, promptTokens, position, false, report ? done -> tp.progress().update("prefill", done, total) : null);
        } catch (RuntimeException | Error e) {
            rollBack(position); // nothing of this prompt stays
            throw e;
        }
        tp.backend().synchronize();
        long t1 = System.nanoTime();
        position += promptTokens.length;

        int promptEnd = position;
        stopToken = -1;
        unfed = new int[0];
        // the per-token bookkeeping of both loops below: returns whether decoding goes on after `next`
        var g = new Object() {
            int[] generated = new int[Math.max(0, Math.min(maxTokens, 256))]; // grows: maxTokens may be huge
            int count, steps;
            String stop = "length";
            double ttft;
            long decodeStart;

            boolean take(int next) {
                if (count == 0) {
                    ttft = (System.nanoTime() - t0) / 1e6;
                    decodeStart = System.nanoTime();
                }
                if (eos.contains(next) || extraStops.contains(next)) {
                    stop = "eos";
                    stopToken = next;
                    return false;
                }
                chain.accept(next);
                if (count == generated.length) generated = Arrays.copyOf(generated, (int) Math.min(maxTokens, 2L * count));
                generated[count++] = next;
                String piece = text.push(next);
                if (!piece.isEmpty()) {
                    out.append(piece);
                    if (listener != null) listener.onText(piece);
                }
                if (stopRequested != null && stopRequested.getAsBoolean()) {
                    stop = "stop";
                    return false;
                }
                return count < maxTokens;
            }
        };
        try {
            boolean full = model.policy() == KvPolicy.FULL;
            boolean speculative = speculativeApplies();
            if (maxTokens > 0 && eadSmall != null) {
                // entropy-adaptive: every token from the small model unless its recent entropy is high
                Llama.TokenChooser choose = chooser(chain, json, plainGreedy, trace);
                int[] seq = Arrays.copyOf(fed, fedCount + promptTokens.length + 64);
                System.arraycopy(promptTokens, 0, seq, fedCount, promptTokens.length);
                int len = fedCount + promptTokens.length;
                double[] recent = new double[eadWindow];
                int seen = 0;
                boolean wasLarge = false;
                while (true) {
                    float[] small = eadSmall.logitsAfter(seq, len);
                    recent[seen++ % eadWindow] = entropyBits(small);
                    double mean = 0;
                    for (int i = 0; i < Math.min(seen, eadWindow); i++) mean += recent[i];
                    mean /= Math.min(seen, eadWindow);
                    boolean large = mean > eadTau;
                    float[] logits = small;
                    if (large) { // the model catches up with what the small one produced, then decides
                        if (position < len) {
                            model.prefill(cache, Arrays.copyOfRange(seq, position, len), position, false, null);
                            position = len;
                        }
                        logits = model.logits();
                    }
                    if (seen > 1 && large != wasLarge) eadCounts[2]++;
                    wasLarge = large;
                    eadCounts[large ? 1 : 0]++;
                    int next = choose.choose(logits);
                    if (!g.take(next)) break;
                    if (len >= cache.capacity()) {
                        g.stop = "context";
                        break;
                    }
                    if (len == seq.length) seq = Arrays.copyOf(seq, 2 * seq.length);
                    seq[len++] = next;
                }
                if (position < len) { // the cache holds every fed token, as after plain decoding
                    model.prefill(cache, Arrays.copyOfRange(seq, position, len), position, false, null);
                    position = len;
                }
                g.steps = len - promptEnd;
            } else if (maxTokens > 0 && (greedy || speculative)) {
                // greedy: pipelined where the backend keeps the token on the device (Llama.decodeGreedy);
                // speculative: drafts checked a pass at a time (Llama.decodeSpeculative). Same tokens either way.
                Llama.TokenChooser chooser = greedy ? null : chooser(chain, json, plainGreedy, trace);
                int next = greedy ? model.argmax() : chooser.choose(model.logits());
                if (g.take(next)) {
                    int room = full ? cache.capacity() - position : Integer.MAX_VALUE;
                    if (room <= 0) {
                        g.stop = "context";
                    } else {
                        try {
                            int n;
                            if (speculative) {
                                int[] ctx = Arrays.copyOf(fed, fedCount + promptTokens.length);
                                System.arraycopy(promptTokens, 0, ctx, fedCount, promptTokens.length);
                                Drafter d = drafter != null ? drafter : LookupDrafter.INSTANCE;
                                // at most maxTokens - 1 tokens are fed (the last taken one is not): no drafts past it
                                n = model.decodeSpeculative(cache, next, position, Math.min(room, maxTokens - 1), chooser,
                                        g::take, ctx, ctx.length, d, drafter != null ? draftMax : lookup);
                            } else {
                                n = model.decodeGreedy(cache, next, position, room, g::take);
                            }
                            position += n;
                            g.steps += n;
                            if (n == room && g.count < maxTokens && g.stop.equals("length")) g.stop = "context";
                        } catch (KvCacheFullException e) {
                            g.stop = "context"; // a non-evicting policy filled the cache
                            position += g.count - 1 - g.steps; // the steps that ran before the full cache
                            g.steps = g.count - 1;
                        }
                    }
                }
            } else {
                while (g.count < maxTokens) {
                    int next;
                    if (json != null && plainGreedy) {
                        // the constraint's argmax is the plain argmax whenever that one is allowed: check it first
                        int a = model.argmax();
                        next = json.allows(a) ? a : chain.sample(model.logits());
                    } else {
                        next = model.sample(chain);
                    }
                    if (trace != null) trace.accept(chain.lastTrace());
                    if (!g.take(next)) break;
                    if (position >= cache.capacity() && full) {
                        g.stop = "context";
                        break;
                    }
                    try {
                        model.decodeStep(cache, next, position);
                    } catch (KvCacheFullException e) {
                        g.stop = "context"; // a non-evicting policy filled the cache
                        break;
                    }
                    position++;
                    g.steps++;
                }
            }
        } catch (RuntimeException | Error e) {
            // a listener, trace or step failed: the session keeps the prompt, not the half-made reply
            rollBack(promptEnd);
            record(promptTokens, promptTokens.length);
            throw e;
        }
        int count = g.count, steps = g.steps;
        int[] generated = g.generated;
        unfed = Arrays.copyOfRange(generated, Math.min(steps, count), count);
        record(promptTokens, promptTokens.length);
        record(generated, Math.min(steps, count));
        String stop = g.stop;
        double ttft = g.ttft;
        long decodeStart = g.decodeStart;
        tp.backend().synchronize();
        double decodeMs = steps == 0 ? 0 : (System.nanoTime() - decodeStart) / 1e6;
        String tail = text.flush();
        if (!tail.isEmpty()) {
            out.append(tail);
            if (listener != null) listener.onText(tail);
        }
        return new GenerationResult(out.toString(), Arrays.copyOf(generated, count), promptTokens.length, stop,
                (t1 - t0) / 1e6, steps, decodeMs, ttft, cache.bytes(), chain.seed());
    }

    /** DRY's sequence breakers for the model's vocabulary (none when DRY is off). */
    static dev.tokenpress.sample.DrySampler.Breakers dryBreakers(TokenPress tp, SamplingOptions o) {
        if (!o.dryEnabled() || o.drySequenceBreakers().isEmpty()) return dev.tokenpress.sample.DrySampler.Breakers.NONE;
        return dev.tokenpress.sample.DrySampler.Breakers.of(o.drySequenceBreakers(), tp.tokenizer().tokenTexts(),
                tp.tokenizer()::encodeNoSpecial);
    }

    /** The token choice of sampled (or constrained) decoding from one position's logits, as the one-at-a-time loop makes it. */
    private static Llama.TokenChooser chooser(SamplerChain chain, TokenConstraint json, boolean plainGreedy,
                                              Consumer<StepTrace> trace) {
        return new Llama.TokenChooser() {
            @Override
            public int choose(float[] logits) {
                int next;
                if (json != null && plainGreedy) {
                    int a = argmax(logits); // the constraint's argmax is the plain argmax whenever that one is allowed
                    next = json.allows(a) ? a : chain.sample(logits);
                } else {
                    next = chain.sample(logits);
                }
                if (trace != null) trace.accept(chain.lastTrace());
                return next;
            }

            @Override
            public SamplerChain chain() {
                // only where choosing is the chain's sample alone (a trace turns candidates off in the chain itself)
                return json == null && trace == null ? chain : null;
            }
        };
    }

    /** Index of the first largest entry (as the backends' argmax). */
    private static int argmax(float[] v) {
        int best = 0;
        for (int i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
        return best;
    }

    /**
     * Teacher-forced log-probabilities: for tokens t0..t(n-1) returns log p(t_i | t_<i) for i = 1..n-1
     * (array of n-1), computed with one prefill from the start of this (reset) session.
     */
    public float[] logProbs(int[] tokens) {
        reset();
        Score[] sc = score(tokens, tokens.length, 0); // one chunk of logits at a time
        float[] lp = new float[sc.length];
        for (int i = 0; i < sc.length; i++) lp[i] = (float) sc[i].logprob();
        return lp;
    }

    /** Logits of every position [n * V] for the given tokens, from the start of this (reset) session. */
    public float[] logits(int[] tokens) {
        reset();
        float[] logits = model.prefill(cache, tokens, 0, true, null);
        if (model.policy() != KvPolicy.FULL) allFull = false;
        position = tokens.length;
        record(tokens, tokens.length);
        return logits;
    }

    @Override
    public void close() {
        closeDrafter();
        closeEad();
        cache.close();
    }
}
