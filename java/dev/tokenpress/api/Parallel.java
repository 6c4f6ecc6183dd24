package dev.tokenpress.api;

import dev.tokenpress.io.StreamingDecoder;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.KvPolicies;
import dev.tokenpress.kv.KvPolicy;
import dev.tokenpress.kv.quant.KvQuantSpec;
import dev.tokenpress.model.Llama;
import dev.tokenpress.sample.SamplerChain;
import dev.tokenpress.sample.SamplingOptions;

import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.function.BooleanSupplier;

/**
 * Several sequences decoded together (continuous batching, as llama.cpp's {@code llama-batched} / {@code llama-parallel}
 * and vLLM do): each step feeds one token of every active sequence through one forward pass
 * ({@link Llama#decodeBatch}), so the weights, which dominate a decode step's memory traffic, are read once for the
 * whole batch. Each sequence has its own KV cache (and, with {@code --kv}, its own policy instance) and its own
 * sampler; a sequence that finishes leaves the batch and the next waiting request joins it (its prompt is prefilled
 * between two steps; requests with one prompt that join together under the full policy share one prefill, the others
 * copying its cache, and a prompt that shares a prefix of 8 tokens or more with a running sequence's prompt copies that
 * sequence's cache, cut back to the prefix, and prefills only the rest). A long prompt (more than the prefill chunk,
 * {@code -b}, under the full policy) that joins while others decode is prefilled a chunk per round, between their
 * steps, so they are not held up for the whole prompt (vLLM's chunked prefill). Every sequence gets the tokens it
 * would get decoded alone with the same options and seed, up to the rounding of matmuls over several rows.
 *
 * <p>Two ways to drive it: {@link #generate} runs a list of requests to completion; a server {@link #submit}s requests
 * from any thread and one worker thread calls {@link #step} (which joins waiting requests and runs one batched step)
 * while work remains. The model is used only inside {@code generate} and {@code step}; the caller keeps other users of
 * the model out while they run. The model's own policy ({@code Session.setPolicy}) is not used.
 */
public final class Parallel implements AutoCloseable {

    /**
     * One generation request.
     *
     * @param prompt        prompt token ids (at least one)
     * @param maxTokens     tokens to generate at most
     * @param options       sampling options (a seed of -1 draws one; the result reports it)
     * @param stops         stop strings: the text ends before the first one (empty: none)
     * @param listener      receives the text as it is produced, on the thread that steps (nullable)
     * @param bias          logit bias by token id, first in the sampler chain (-infinity bans; empty: none)
     * @param stopTokens    token ids that end the text like EOS (e.g. a chat format's end of turn; empty: none)
     * @param stopRequested polled after every token: true ends the text (stop reason "stop"; nullable)
     * @param kvSpec        this request's {@code --kv} policy (null: the one this object was made with)
     * @param constraint    constrained output (a grammar, a JSON schema, JSON mode): makes the sequence's constraint
     *                      from the tokens that end it (EOS and the stop tokens); null = free text
     */
    public record Request(int[] prompt, int maxTokens, SamplingOptions options, List<String> stops, TokenListener listener,
                          Map<Integer, Float> bias, Set<Integer> stopTokens, BooleanSupplier stopRequested, String kvSpec,
                          java.util.function.Function<Set<Integer>, dev.tokenpress.sample.TokenConstraint> constraint) {
        public Request {
            if (prompt == null || prompt.length == 0) throw new IllegalArgumentException("the prompt is empty: give at least one token");
            if (maxTokens < 0) throw new IllegalArgumentException("maxTokens must be >= 0");
            if (options == null) throw new IllegalArgumentException("sampling options are required");
            stops = stops == null ? List.of() : List.copyOf(stops);
            bias = bias == null ? Map.of() : Map.copyOf(bias);
            stopTokens = stopTokens == null ? Set.of() : Set.copyOf(stopTokens);
        }

        public Request(int[] prompt, int maxTokens, SamplingOptions options, List<String> stops, TokenListener listener,
                       Map<Integer, Float> bias, Set<Integer> stopTokens, BooleanSupplier stopRequested, String kvSpec) {
            this(prompt, maxTokens, options, stops, listener, bias, stopTokens, stopRequested, kvSpec, null);
        }

        /** A request with stop strings and a listener, without bias, stop tokens, stop request or its own policy. */
        public Request(int[] prompt, int maxTokens, SamplingOptions options, List<String> stops, TokenListener listener) {
            this(prompt, maxTokens, options, stops, listener, null, null, null, null, null);
        }

        /** As the five-argument form, with a logit bias. */
        public Request(int[] prompt, int maxTokens, SamplingOptions options, List<String> stops, TokenListener listener,
                       Map<Integer, Float> bias) {
            this(prompt, maxTokens, options, stops, listener, bias, null, null, null, null);
        }
    }

    private record Pending(Request req, CompletableFuture<GenerationResult> result) {}

    private final TokenPress tp;
    private final Llama model;
    private final int contextSize;
    private final KvQuantSpec quant;
    private final String kvSpec;
    private final KvPolicy[] policies;  // per batch lane, made on first use, reused across requests
    private final boolean[] laneBusy;
    private final Set<Integer> eos;
    private final ArrayDeque<Pending> waiting = new ArrayDeque<>();
    private volatile List<Lane> active = new ArrayList<>();
    /** Lanes whose prompt is being prefilled a chunk per round while the active ones decode (full policy). */
    private final List<Lane> prefilling = new ArrayList<>();
    // where the backend lays a batch's caches out together (Backend.batchesKvCaches) and they are not quantized: one
    // per lane from the first step's width on, kept and cleared between sequences, so a batched step's rows can attend
    // in one call per run of consecutive lanes
    private KvCache[] laneCaches;
    private boolean keepLaneCaches, laneCachesFailed;

    /** Keeps a cache per lane even where the backend does not lay a batch's caches out together (for tests). */
    void keepLaneCaches(boolean on) {
        keepLaneCaches = on;
    }
    private volatile long steps, rows, prefills, shared, prefixTokens;
    private boolean closed;

    /**
     * @param contextSize KV cache slots per sequence (<= 0: min(model max, 4096))
     * @param quant       how each sequence's cache is stored (null = f32)
     * @param kvSpec      the {@code --kv} policy of every sequence (null = full); each lane parses its own instance
     */
    public Parallel(TokenPress tp, int contextSize, KvQuantSpec quant, String kvSpec) {
        this.tp = tp;
        this.model = tp.model();
        this.contextSize = contextSize > 0 ? contextSize : Math.min(tp.config().maxPositionEmbeddings(), 4096);
        this.quant = quant == null ? KvQuantSpec.NONE : quant;
        this.kvSpec = kvSpec == null ? "full" : kvSpec;
        KvPolicies.parse(this.kvSpec, tp.config()); // a bad spec fails here
        this.policies = new KvPolicy[model.maxChunk()];
        this.laneBusy = new boolean[model.maxChunk()];
        this.eos = new HashSet<>(tp.config().eosTokenIds());
    }

    /** The most sequences one step can hold: the model's prefill chunk ({@code -b}). */
    public int maxWidth() { return model.maxChunk(); }

    /** KV cache slots per sequence. */
    public int contextSize() { return contextSize; }

    /**
     * Decode steps run so far, the sequence-tokens they produced (their ratio is the mean batch width), prompts
     * prefilled, prompts that copied the cache of a lane with the same prompt instead, and prompt tokens taken from
     * another lane's cache (a shared prefix) rather than prefilled.
     */
    public long[] stepCounts() { return new long[]{steps, rows, prefills, shared, prefixTokens}; }

    /** Sequences being decoded now, or whose prompt is being prefilled between their steps. */
    public int activeCount() { return active.size() + waitingLanes(); }

    /** Lanes holding a KV cache now (0 once every request has ended). */
    public int busyLanes() {
        int n = 0;
        for (boolean b : laneBusy) if (b) n++;
        return n;
    }

    /** Lanes prefilling or waiting for an identical prompt's prefill. */
    private int waitingLanes() {
        int n = 0;
        for (Lane s : prefilling) n += 1 + s.followers.size();
        return n;
    }

    private final class Lane {
        final Pending pending;
        final Request req;
        final int lane;
        final KvCache cache;
        final KvPolicy policy;
        final SamplerChain chain;
        final StreamingDecoder text;
        final StopText stopText;
        final dev.tokenpress.sample.TokenConstraint constraint; // constrained output (null = none)
        final boolean argmaxOnly; // plain greedy, no bias, no constraint: the backend's argmax is its sampler
        final StringBuilder out = new StringBuilder();
        int[] generated = new int[16];
        int count, position, next = -1, decodeSteps;
        String stop = "length";
        long t0, decodeStart;
        double prefillMs, ttftMs;
        float[] firstLogits;  // the logits after the prompt (shared with a lane forked from this one)
        int prefilled;        // prompt tokens in the cache so far (a prompt prefilled chunk by chunk)
        final List<Lane> followers = new ArrayList<>(); // lanes with the same prompt waiting for this one's prefill

        Lane(Pending pending, int lane) {
            this.pending = pending;
            this.req = pending.req();
            this.lane = lane;
            if (req.constraint() != null) {
                Set<Integer> ends = new HashSet<>(eos);
                ends.addAll(req.stopTokens());
                this.constraint = req.constraint().apply(ends);
            } else {
                this.constraint = null;
            }
            this.chain = SamplerChain.create(req.options(), tp.config().vocabSize(), req.bias(), constraint,
                    Session.dryBreakers(tp, req.options()));
            this.argmaxOnly = req.options().isPlainGreedy() && req.bias().isEmpty() && constraint == null;
            KvPolicy p;
            if (req.kvSpec() == null || req.kvSpec().equals(kvSpec)) {
                if (policies[lane] == null) {
                    KvPolicy made = KvPolicies.parse(kvSpec, tp.config());
                    made.attach(model);
                    policies[lane] = made;
                }
                p = policies[lane];
            } else {
                p = KvPolicies.parse(req.kvSpec(), tp.config());
                p.attach(model);
            }
            this.policy = p;
            this.text = tp.tokenizer().streaming();
            this.stopText = new StopText(req.stops());
            if (laneCaches != null && lane < laneCaches.length) {
                this.cache = laneCaches[lane];
                this.cache.clear();
                this.ownCache = false;
            } else {
                this.cache = model.newCache(contextSize, quant);
                this.ownCache = true;
            }
        }

        /** Whether the cache is this sequence's own (closed when it ends) rather than its lane's (kept). */
        private final boolean ownCache;

        /** Takes a sampled token; returns whether the sequence goes on. */
        boolean take(int token) {
            if (count == 0) {
                ttftMs = (System.nanoTime() - t0) / 1e6;
                decodeStart = System.nanoTime();
            }
            if (eos.contains(token) || req.stopTokens().contains(token)) {
                stop = "eos";
                return false;
            }
            chain.accept(token);
            if (count == generated.length) generated = Arrays.copyOf(generated, 2 * count);
            generated[count++] = token;
            String piece = stopText.add(text.push(token));
            if (!piece.isEmpty()) {
                out.append(piece);
                if (req.listener() != null) req.listener().onText(piece);
            }
            if (stopText.hit() || pending.result().isDone()
                    || (req.stopRequested() != null && req.stopRequested().getAsBoolean())) {
                stop = "stop";
                return false;
            }
            if (count >= req.maxTokens()) return false;
            if (policy == KvPolicy.FULL && position >= cache.capacity()) {
                stop = "context";
                return false;
            }
            next = token;
            return true;
        }

        /** Ends the sequence: the result goes to its future, the cache is freed, the lane is free again. */
        void finish() {
            try {
                String tail = stopText.hit() ? "" : stopText.add(text.flush()) + stopText.rest();
                if (!tail.isEmpty()) {
                    out.append(tail);
                    if (req.listener() != null) req.listener().onText(tail);
                }
                double decodeMs = decodeSteps == 0 ? 0 : (System.nanoTime() - decodeStart) / 1e6;
                pending.result().complete(new GenerationResult(out.toString(), Arrays.copyOf(generated, count),
                        req.prompt().length, stop, prefillMs, decodeSteps, decodeMs, ttftMs, cache.bytes(), chain.seed()));
            } catch (RuntimeException | Error e) {
                pending.result().completeExceptionally(e);
            } finally {
                release();
            }
        }

        void fail(Throwable e) {
            pending.result().completeExceptionally(e);
            release();
        }

        private boolean released;

        private void release() {
            if (released) return;
            released = true;
            if (ownCache) cache.close();
            laneBusy[lane] = false;
        }
    }

    /** The batch was closed before a request could run or end. */
    public static final class ClosedException extends IllegalStateException {
        private static final long serialVersionUID = 1L;

        ClosedException(String message) {
            super(message);
        }
    }

    /**
     * Queues a request (any thread); its result completes when the sequence ends, or with the error that ended it.
     * Cancelling the future stops the sequence at its next token.
     *
     * @throws ClosedException when the batch is closed
     */
    public CompletableFuture<GenerationResult> submit(Request r) {
        CompletableFuture<GenerationResult> f = new CompletableFuture<>();
        synchronized (waiting) {
            if (closed) throw new ClosedException("this batch is closed");
            waiting.add(new Pending(r, f));
            waiting.notifyAll();
        }
        return f;
    }

    /** Waits up to {@code millis} for a request to be queued; returns whether one is waiting. */
    public boolean awaitWork(long millis) throws InterruptedException {
        synchronized (waiting) {
            if (waiting.isEmpty() && !closed) waiting.wait(millis);
            return !waiting.isEmpty();
        }
    }

    /**
     * One round (one thread at a time): waiting requests join free lanes (up to {@code width} sequences; each prompt
     * is prefilled and its first token sampled), then one batched decode step for every active sequence; sequences
     * that end complete their futures. A request that fails alone (its prompt does not fit) completes exceptionally;
     * a failing step fails every active sequence. Returns whether requests are active or waiting afterwards.
     */
    public boolean step(int width) {
        if (width < 1 || width > maxWidth())
            throw new IllegalArgumentException("parallel width must be 1 to " + maxWidth() + " (the prefill chunk, -b), not " + width);
        Map<java.nio.IntBuffer, Lane> fresh = new java.util.HashMap<>(); // prompts prefilled this round (full policy)
        if (laneCaches == null && !laneCachesFailed && width > 1 && quant.isNone()
                && (keepLaneCaches || tp.backend().batchesKvCaches())) {
            try {
                laneCaches = model.newCaches(contextSize, width);
            } catch (RuntimeException e) { // e.g. out of device memory for every lane at once: a cache per sequence instead
                laneCachesFailed = true;
                System.err.println("tokenpress: no cache pool for " + width + " sequences of " + contextSize + " tokens ("
                        + e.getMessage() + "): each sequence gets its own cache");
            }
        }
        while (active.size() + waitingLanes() < width) {
            Pending p;
            synchronized (waiting) {
                p = waiting.poll();
            }
            if (p == null) break;
            admit(p, fresh);
        }
        advancePrefills();
        if (!active.isEmpty()) decodeStep();
        synchronized (waiting) {
            return !active.isEmpty() || !prefilling.isEmpty() || !waiting.isEmpty();
        }
    }

    /**
     * A request joins lane: its prompt is prefilled, or, when a lane that joined in the same round under the full
     * policy has the same prompt, that lane's cache is copied ({@code Backend.copyKvCache}) and its logits reused.
     */
    private void admit(Pending p, Map<java.nio.IntBuffer, Lane> fresh) {
        int lane = 0;
        while (laneBusy[lane]) lane++;
        Lane s;
        try {
            s = new Lane(p, lane);
        } catch (RuntimeException | Error e) {
            p.result().completeExceptionally(e);
            return;
        }
        laneBusy[lane] = true;
        try {
            Request r = p.req();
            s.t0 = System.nanoTime();
            if (s.policy == KvPolicy.FULL && r.prompt().length > s.cache.capacity())
                throw new IllegalArgumentException("a prompt has " + r.prompt().length + " tokens but the context holds "
                        + s.cache.capacity() + ": raise the context size (-c)");
            for (int t : r.prompt()) s.chain.accept(t);
            if (s.constraint != null) s.constraint.begin(); // what follows is the constrained text
            java.nio.IntBuffer key = java.nio.IntBuffer.wrap(r.prompt());
            Lane twin = s.policy == KvPolicy.FULL ? fresh.get(key) : null;
            boolean copied = false;
            if (twin != null) {
                try {
                    tp.backend().copyKvCache(twin.cache, s.cache);
                    s.firstLogits = twin.firstLogits;
                    copied = true;
                    shared++;
                } catch (dev.tokenpress.backend.UnsupportedOpException e) {
                    // a cache the backend cannot copy (quantized): prefill instead
                }
            }
            if (!copied) {
                // prefix sharing: the longest prompt prefix an active lane's cache holds is copied, the rest prefilled
                int keep = s.policy == KvPolicy.FULL ? sharePrefix(s, r.prompt()) : 0;
                prefills++;
                prefixTokens += keep;
                s.prefilled = keep;
                if (s.policy == KvPolicy.FULL && !active.isEmpty() && r.prompt().length - keep > model.maxChunk()) {
                    // a long prompt while others decode: a chunk per round, so their steps go on in between; the same
                    // prompt already going in: wait for it and copy its cache
                    for (Lane o : prefilling)
                        if (Arrays.equals(o.req.prompt(), r.prompt())) {
                            o.followers.add(s);
                            return;
                        }
                    prefilling.add(s);
                    return;
                }
                model.prefillWith(s.policy, s.cache, keep == 0 ? r.prompt() : Arrays.copyOfRange(r.prompt(), keep, r.prompt().length),
                        keep, null);
                s.firstLogits = model.logits();
            }
            if (promptDone(s)) fresh.putIfAbsent(key, s);
        } catch (RuntimeException | Error e) {
            s.fail(e);
        }
    }

    /** The prompt is in the cache: the first token is sampled; returns whether the lane decodes on (active). */
    private boolean promptDone(Lane s) {
        Request r = s.req;
        s.position = r.prompt().length;
        s.prefillMs = (System.nanoTime() - s.t0) / 1e6;
        if (r.maxTokens() > 0 && s.take(s.chain.sample(s.firstLogits))) {
            active.add(s);
            return s.policy == KvPolicy.FULL;
        }
        s.finish();
        return false;
    }

    /**
     * Prefills the next chunk of the oldest lane that is prefilling (all of them when nothing decodes, as no one waits);
     * a lane whose prompt completes samples its first token and joins the decoding lanes.
     */
    private void advancePrefills() {
        boolean once = !active.isEmpty();
        while (!prefilling.isEmpty()) {
            Lane s = prefilling.get(0);
            if (s.pending.result().isDone() || (s.req.stopRequested() != null && s.req.stopRequested().getAsBoolean())) {
                prefilling.remove(0); // cancelled or stopped while its prompt was going in: no need to go on
                s.stop = "stop";
                s.finish();
                releaseFollowers(s);
                continue;
            }
            int[] prompt = s.req.prompt();
            int n = Math.min(model.maxChunk(), prompt.length - s.prefilled);
            boolean done = false;
            try {
                model.prefillWith(s.policy, s.cache, Arrays.copyOfRange(prompt, s.prefilled, s.prefilled + n), s.prefilled, null);
                s.prefilled += n;
                if (s.prefilled == prompt.length) {
                    prefilling.remove(0);
                    done = true;
                    s.firstLogits = model.logits();
                    for (Lane f : s.followers) follow(f, s); // before the leader's first decode step changes its cache
                    s.followers.clear();
                    promptDone(s);
                }
            } catch (RuntimeException | Error e) {
                if (!done) prefilling.remove(0);
                s.fail(e);
                releaseFollowers(s);
            }
            if (once) return;
        }
    }

    /** A lane that waited for an identical prompt's prefill copies its cache and logits, then samples its first token. */
    private void follow(Lane f, Lane leader) {
        try {
            if (f.pending.result().isDone()) {
                f.stop = "stop";
                f.finish();
                return;
            }
            tp.backend().copyKvCache(leader.cache, f.cache);
            f.firstLogits = leader.firstLogits;
            shared++;
            prefills--; // counted when it joined; it did not prefill after all
            promptDone(f);
        } catch (RuntimeException | Error e) {
            f.fail(e);
        }
    }

    /** The leader of identical prompts ended before its prompt was in: its followers prefill their own. */
    private void releaseFollowers(Lane leader) {
        prefilling.addAll(leader.followers);
        leader.followers.clear();
    }

    /** Shortest prompt prefix worth copying from another lane instead of prefilling it. */
    private static final int MIN_SHARED_PREFIX = 8;

    /**
     * Copies into {@code s}'s cache the cache of the active full-policy lane whose prompt shares the longest prefix with
     * {@code prompt} (at least {@link #MIN_SHARED_PREFIX} tokens), cut back to that prefix, keeping at least the last
     * prompt token to prefill; returns the tokens kept (0 = none shared).
     */
    private int sharePrefix(Lane s, int[] prompt) {
        int w = model.slidingWindow();
        Lane best = null;
        int bestLen = 0;
        for (Lane a : active) {
            if (a.policy != KvPolicy.FULL || (w > 0 && a.position > w)) continue; // a window's drops cannot be cut back
            int[] q = a.req.prompt();
            int n = Math.min(Math.min(q.length, prompt.length - 1), a.position), l = 0;
            while (l < n && q[l] == prompt[l]) l++;
            if (l > bestLen) {
                bestLen = l;
                best = a;
            }
        }
        if (best == null || bestLen < MIN_SHARED_PREFIX) return 0;
        try {
            tp.backend().copyKvCache(best.cache, s.cache);
        } catch (dev.tokenpress.backend.UnsupportedOpException e) {
            return 0; // a cache the backend cannot copy (quantized)
        }
        s.cache.freeFrom(bestLen);
        return bestLen;
    }

    private void decodeStep() {
        // rows in lane order: consecutive lanes' caches are consecutive in their pool (one attention call per run)
        if (laneCaches != null) {
            List<Lane> sorted = new ArrayList<>(active);
            sorted.sort(java.util.Comparator.comparingInt(l -> l.lane));
            active = sorted;
        }
        Llama.BatchRow[] batch = new Llama.BatchRow[active.size()];
        for (int i = 0; i < batch.length; i++) {
            Lane s = active.get(i);
            batch[i] = new Llama.BatchRow(s.cache, s.policy, s.next, s.position);
        }
        int[] left;
        try {
            left = model.decodeBatch(batch);
        } catch (RuntimeException | Error e) {
            failAll(e);
            return;
        }
        boolean[] full = new boolean[batch.length];
        for (int i : left) full[i] = true;
        float[][] logits = null, topValues = null;
        int[][] top = null;
        int[] greedy = null;
        try {
            boolean allGreedy = true;
            for (int i = 0; i < batch.length; i++) allGreedy &= full[i] || active.get(i).argmaxOnly;
            // plain greedy rows only: their tokens where the logits live, one read; else the rows' top candidates
            // where their chains can decide from them (Llama.sample's rule), read together, and every row's logits at
            // once when some chain needs its whole row
            if (allGreedy) greedy = model.batchArgmaxAll();
            else {
                int[] k = new int[batch.length];
                boolean whole = false, any = false;
                boolean cand = Llama.candidateSampling();
                for (int i = 0; i < batch.length; i++) {
                    if (full[i]) continue;
                    k[i] = cand ? active.get(i).chain.candidateCount() : 0;
                    whole |= k[i] == 0;
                    any |= k[i] > 0;
                }
                if (any) {
                    topValues = new float[batch.length][];
                    for (int i = 0; i < batch.length; i++) if (k[i] > 0) topValues[i] = new float[k[i]];
                    top = model.batchTopLogits(k, topValues);
                }
                if (whole) logits = model.batchLogitsAll();
            }
        } catch (RuntimeException | Error e) {
            failAll(e);
            return;
        }
        steps++;
        rows += batch.length - left.length;
        List<Lane> still = new ArrayList<>();
        for (int i = 0; i < batch.length; i++) {
            Lane s = active.get(i);
            if (full[i]) { // a non-evicting policy filled the cache: the sequence ends where it is
                s.stop = "context";
                s.finish();
                continue;
            }
            s.position++;
            s.decodeSteps++;
            try {
                int t = -1;
                if (greedy != null) t = greedy[i];
                else if (top != null && top[i] != null && top[i].length == topValues[i].length)
                    t = s.chain.sampleCandidates(top[i], topValues[i], top[i].length);
                if (t < 0) t = s.chain.sample(logits != null && logits[i] != null ? logits[i] : model.batchLogits(i));
                if (s.take(t)) still.add(s);
                else s.finish();
            } catch (RuntimeException | Error e) { // e.g. its listener failed: that sequence alone ends
                s.fail(e);
            }
        }
        active = still;
    }

    private void failAll(Throwable e) {
        for (Lane s : active) s.fail(e);
        active = new ArrayList<>();
    }

    private void failPrefilling(Throwable e) {
        for (Lane s : prefilling) {
            for (Lane f : s.followers) f.fail(e);
            s.fail(e);
        }
        prefilling.clear();
    }

    /**
     * Runs every request to its end, at most {@code width} at a time (1 .. {@link #maxWidth()}); returns the results
     * in the requests' order. The first request that failed throws its error after all have ended.
     */
    public List<GenerationResult> generate(List<Request> requests, int width) {
        if (width < 1 || width > maxWidth())
            throw new IllegalArgumentException("parallel width must be 1 to " + maxWidth() + " (the prefill chunk, -b), not " + width);
        List<CompletableFuture<GenerationResult>> fs = new ArrayList<>();
        for (Request r : requests) fs.add(submit(r));
        while (step(width)) {
            // every request runs to its end
        }
        tp.backend().synchronize();
        List<GenerationResult> out = new ArrayList<>();
        for (CompletableFuture<GenerationResult> f : fs) {
            try {
                out.add(f.join());
            } catch (CompletionException e) {
                if (e.getCause() instanceof RuntimeException re) throw re;
                if (e.getCause() instanceof Error er) throw er;
                throw e;
            }
        }
        return out;
    }

    /** Fails whatever is waiting or active (for the thread that steps, or when none does); later submits are refused. */
    @Override
    public void close() {
        List<Pending> left;
        synchronized (waiting) {
            closed = true;
            left = new ArrayList<>(waiting);
            waiting.clear();
            waiting.notifyAll();
        }
        ClosedException e = new ClosedException("the batch was closed before this request ended");
        for (Pending p : left) p.result().completeExceptionally(e);
        failAll(e);
        failPrefilling(e);
        Arrays.fill(policies, null);
        if (laneCaches != null) {
            for (KvCache c : laneCaches) c.close();
            laneCaches = null;
        }
    }
}
