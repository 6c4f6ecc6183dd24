package dev.tokenpress.kv;

import dev.tokenpress.kv.policy.A2sfPolicy;
import dev.tokenpress.kv.policy.TovaPolicy;
import dev.tokenpress.kv.policy.BasePolicy;
import dev.tokenpress.kv.policy.Budget;
import dev.tokenpress.kv.policy.CompactorPolicy;
import dev.tokenpress.kv.policy.CompositePolicy;
import dev.tokenpress.kv.policy.CurPolicy;
import dev.tokenpress.kv.policy.DuoAttentionPolicy;
import dev.tokenpress.kv.policy.EvictingPolicy;
import dev.tokenpress.kv.policy.ExpectedAttentionPolicy;
import dev.tokenpress.kv.policy.KeyDiffPolicy;
import dev.tokenpress.kv.policy.KnormPolicy;
import dev.tokenpress.kv.policy.LagKvPolicy;
import dev.tokenpress.kv.policy.LeveragePolicy;
import dev.tokenpress.kv.policy.RandomPolicy;
import dev.tokenpress.kv.policy.KvzipPolicy;
import dev.tokenpress.kv.policy.SimLayerKvPolicy;
import dev.tokenpress.kv.policy.H2OPolicy;
import dev.tokenpress.kv.policy.KeyformerPolicy;
import dev.tokenpress.kv.policy.PolicyArgs;
import dev.tokenpress.kv.policy.PolicyArgs.Param;
import dev.tokenpress.kv.policy.QuestPolicy;
import dev.tokenpress.kv.policy.RazorPolicy;
import dev.tokenpress.kv.policy.SnapKvPolicy;
import dev.tokenpress.kv.policy.TidalPolicy;
import dev.tokenpress.kv.policy.TokenSelectPolicy;
import dev.tokenpress.kv.policy.WindowPolicy;
import dev.tokenpress.model.LlamaConfig;

import java.util.ArrayList;
import java.util.EnumSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;

/**
 * KV policies from llama.cpp-style spec strings: {@code NAME[:key=value,...]}, several joined with '+'
 * (one evicting and one selecting policy, e.g. {@code h2o:budget=512+tidal:k=64}). Budgets are token counts
 * ({@code budget=256}) or ratios of the sequence length seen so far ({@code budget=0.25}, {@code budget=25%}).
 * {@link #help()} lists every policy with its parameters and defaults.
 */
public final class KvPolicies {
    private KvPolicies() {}

    @FunctionalInterface
    private interface Factory {
        KvPolicy make(String spec, PolicyArgs a, LlamaConfig config);
    }

    private record Info(String name, String description, List<Param> params, Factory factory) {}

    private static final Map<String, Info> POLICIES = new LinkedHashMap<>();
    private static final Map<String, String> ALIASES = Map.of("streamingllm", "window", "streaming", "window",
            "tidaldecode", "tidal", "razorattention", "razor", "heavy-hitter", "h2o", "expected_attention", "expected",
            "expectedattention", "expected", "duoattention", "duo", "duo_attention", "duo");

    private static void add(String name, String description, List<Param> params, Factory f) {
        POLICIES.put(name, new Info(name, description, params, f));
    }

    private static Param p(String name, String def, String help) {
        return new Param(name, def, help);
    }

    static {
        add("full", "keep and attend to every token (no compression)", List.of(), (s, a, c) -> KvPolicy.FULL);

        add("window", "StreamingLLM: attention sinks + a window of recent tokens; older tokens are evicted", List.of(
                p("sink", "4", "first tokens always kept (attention sinks)"),
                p("recent", "2000", "recent window (tokens or ratio); ignored when budget is given"),
                p("budget", "", "sink + recent window in all (tokens or ratio); replaces recent"),
                p("pos_shift", "", "true: the sinks sit right before the window, as StreamingLLM's positions inside the cache place them (off unless given)")), (s, a, c) -> {
            int sink = a.integer("sink", 0, Integer.MAX_VALUE);
            if (a.has("budget") && a.has("recent")) throw a.error("window: give budget or recent, not both");
            boolean shift = a.has("pos_shift") && a.choice("pos_shift", "true", "false").equals("true");
            if (a.has("budget")) {
                Budget b = a.positiveBudget("budget");
                if (!b.ratio() && b.value() <= sink) throw a.bad("budget", "must exceed sink=" + sink);
                return new WindowPolicy(s, sink, null, b).posShift(shift);
            }
            return new WindowPolicy(s, sink, a.positiveBudget("recent"), null).posShift(shift);
        });

        add("h2o", "H2O: heavy hitters by accumulated attention probability + a recent window; evicts every step", shaped(true, "", 
                p("budget", "0.2", "tokens kept (tokens or ratio of the sequence)"),
                p("recent", "0.5", "recent window within the budget (tokens, or ratio of the budget)"),
                mergeParam()), (s, a, c) -> {
            Kept k = kept(a);
            return merge(shape(new H2OPolicy(s, k.budget(), k.recent()), a), a);
        });

        add("a2sf", "A2SF: accumulated attention with a forgetting factor + sinks + recent window; evicts every step", shaped(true, "", 
                p("budget", "256", "tokens kept (tokens or ratio of the sequence)"),
                p("recent", "16", "recent window within the budget (tokens, or ratio of the budget)"),
                p("sink", "0", "first tokens always kept"),
                p("alpha", "0.95", "forgetting factor in (0, 1] (alias: forget)"),
                mergeParam()), (s, a, c) -> {
            Kept k = kept(a);
            double alpha = a.real("alpha", 0, 1);
            if (alpha <= 0) throw a.bad("alpha", "must be above 0");
            if (!k.budget().ratio() && !k.recent().ratio() && k.sink() + k.recent().value() > k.budget().value())
                throw a.error("a2sf: sink + recent must not exceed budget");
            return merge(shape(new A2sfPolicy(s, k.budget(), k.recent(), k.sink(), (float) alpha), a), a);
        });

        add("tova", "TOVA: drops the tokens the current query attends to least (averaged over the layer's heads); evicts every step", shaped(true, "", 
                p("budget", "0.25", "tokens kept (tokens or ratio of the sequence)"),
                p("heads", "layer", "layer: one ranking per layer, all KV heads keep the same tokens (TOVA); kv: per KV head")), (s, a, c) -> {
            Budget b = a.positiveBudget("budget");
            return shape(new TovaPolicy(s, b, a.choice("heads", "layer", "kv").equals("layer")), a);
        });

        add("snapkv", "SnapKV: compresses the prompt once from an observation window's votes; decoding appends", shaped(false, null, 
                p("budget", "2048", "prompt tokens kept, window included (tokens or ratio of the prompt)"),
                p("window", "32", "observation window: the last prompt tokens whose queries vote"),
                p("kernel", "7", "pooling width (odd)"),
                p("pool", "max", "pooling: max or avg"),
                p("chunk", "", "ChunkKV: keep whole runs of this many consecutive prompt tokens, ranked by mean pooled vote over the layer's heads; all heads keep the same tokens (off unless given; kvpress 20)"),
                adaParam(), criticalParam(), rerotateParam(), firstParam()), (s, a, c) -> {
            if (a.has("critical") && a.has("chunk")) throw a.error("snapkv: critical and chunk exclude each other");
            return shape(snapKv(s, a), a);
        });

        add("pyramidkv", "PyramidKV: SnapKV with layer budgets in a pyramid (more tokens in lower layers, the same total)", List.of(
                p("budget", "2048", "mean prompt tokens kept per layer, window included (tokens or ratio of the prompt)"),
                p("window", "64", "observation window: the last prompt tokens whose queries vote"),
                p("kernel", "5", "pooling width (odd)"),
                p("pool", "avg", "pooling: max or avg"),
                p("beta", "20", "pyramid steepness >= 1: the top layer keeps (budget - window) / beta + window"),
                adaParam(), criticalParam(), rerotateParam(), firstParam()), (s, a, c) -> {
            return snapKv(s, a).shaping(new EvictingPolicy.Shaping(0, a.real("beta", 1, 1e6), a.has("ada") ? a.real("ada", 0, 1) : -1));
        });

        add("kvzip", "KVzip: compresses the prompt once by how the model attends to it while repeating it (context reconstruction, kvpress KVzipPress); decoding appends", List.of(
                p("budget", "0.3", "prompt tokens kept per KV head on average (tokens or ratio of the prompt); layers and heads keep different counts"),
                p("sink", "4", "first tokens always kept"),
                p("chunk", "2048", "prompt tokens repeated per reconstruction pass (shrinks to the cache's free slots)"),
                p("layerwise", "false", "true: every layer keeps the same count (its heads still differ)"),
                p("plus", "false", "KVzip+: probabilities divided by the query's hidden-state norm, times the key's |v W_o| (kvpress kvzip_plus_normalization)"),
                rerotateParam(), firstParam()), (s, a, c) ->
                promptKeys(new KvzipPolicy(s, a.positiveBudget("budget"), a.integer("sink", 0, Integer.MAX_VALUE), a.integer("chunk", 1, 1 << 20),
                        a.choice("layerwise", "true", "false").equals("true"), a.choice("plus", "true", "false").equals("true")), a));

        add("compactor", "Compactor: compresses the prompt once by non-causal chunked attention blended with key leverage (kvpress CompactorPress); decoding appends", List.of(
                p("budget", "0.5", "prompt tokens kept per KV head, sinks included (tokens or ratio of the prompt)"),
                p("sink", "8", "first prompt tokens always kept"),
                p("sink_end", "4", "last prompt tokens always kept"),
                p("chunk", "256", "tokens per chunk of the non-causal attention"),
                p("sketch", "48", "columns of the leverage's Gaussian sketch"),
                p("blend", "", "weight of the leverage scores (default: the share of the prompt that goes; 0 = attention only)"),
                p("seed", "0", "seed of the sketch"),
                rerotateParam(), firstParam()), (s, a, c) ->
                promptKeys(new CompactorPolicy(s, a.positiveBudget("budget"), a.integer("sink", 0, Integer.MAX_VALUE),
                        a.integer("sink_end", 0, Integer.MAX_VALUE), a.integer("chunk", 1, 1 << 16), a.integer("sketch", 1, 4096),
                        a.has("blend") ? a.real("blend", 0, 1e6) : Double.NaN, a.longValue("seed")), a));

        add("keyformer", "Keyformer: key tokens by accumulated Gumbel-softmax scores + a recent window; evicts every step", shaped(true, "", 
                p("budget", "0.6", "tokens attention sees (tokens or ratio of the sequence)"),
                p("recent", "0.3", "recent window within the budget (tokens, or ratio of the budget)"),
                p("tau_init", "1.0", "Gumbel-softmax temperature at the prompt"),
                p("tau_end", "2.0", "temperature after `steps` decode steps"),
                p("steps", "0", "decode steps of the linear temperature ramp (0 = the context left after the prompt)"),
                p("seed", "0", "seed of the Gumbel noise")), (s, a, c) -> {
            Kept k = kept(a);
            double ti = a.real("tau_init", 1e-6, 1e6), te = a.real("tau_end", 1e-6, 1e6);
            return shape(new KeyformerPolicy(s, k.budget(), k.recent(), ti, te, a.integer("steps", 0, Integer.MAX_VALUE), a.longValue("seed")), a);
        });

        add("knorm", "Knorm: drops the tokens whose keys have the largest L2 norm (kvpress KnormPress); evicts every step", shaped(true, "",
                budgeted("0.5", "0")), (s, a, c) -> {
            Kept k = kept(a);
            return shape(new KnormPolicy(s, k.budget(), k.recent(), k.sink()), a);
        });

        add("keydiff", "KeyDiff: drops the tokens whose keys are most similar to the mean key direction (kvpress KeyDiffPress); evicts every step", shaped(true, "",
                budgeted("0.5", "0")), (s, a, c) -> {
            Kept k = kept(a);
            return shape(new KeyDiffPolicy(s, k.budget(), k.recent(), k.sink()), a);
        });

        add("lagkv", "LagKV: drops the tokens whose keys and values vary least relative to the next lag partition's range (kvpress LagKVPress)", shaped(true, "128",
                budgeted("0.5", "4",
                p("lag", "128", "partition length: each partition is scored against the next; the last one and the rest are kept"))), (s, a, c) -> {
            Kept k = kept(a);
            return shape(new LagKvPolicy(s, k.budget(), k.recent(), k.sink(), a.integer("lag", 1, 1 << 20)), a);
        });

        add("leverage", "Leverage scores (Compactor, kvpress LeverageScorePress): keeps the keys farthest outside the subspace the head's keys span (sketched pre-RoPE keys)", shaped(true, "",
                budgeted("0.5", "0",
                p("sketch", "48", "columns of the Gaussian sketch (>= head dim: exact leverage)"),
                p("seed", "0", "seed of the sketch"))), (s, a, c) -> {
            Kept k = kept(a);
            return shape(new LeveragePolicy(s, k.budget(), k.recent(), k.sink(), a.integer("sketch", 1, 4096), a.longValue("seed")), a);
        });

        add("cur", "CurDKV: keeps the tokens whose keys and values have the largest squared norms, each normalized over local windows (kvpress CURPress)", shaped(true, "",
                budgeted("0.5", "4",
                p("type", "kv_product", "score: kv_product, key, value or kv_avg"),
                p("window", "16", "tokens per local normalization window (0 = off)"),
                p("project", "0", "dimensions of a random projection of keys and values first (0 = off; kvpress 20)"),
                p("seed", "0", "seed of the projection"))), (s, a, c) -> {
            Kept k = kept(a);
            CurPolicy.Type type = CurPolicy.Type.valueOf(a.choice("type", "kv_product", "key", "value", "kv_avg").toUpperCase(Locale.ROOT));
            return shape(new CurPolicy(s, k.budget(), k.recent(), k.sink(), type, a.integer("window", 0, 1 << 20),
                    a.integer("project", 0, 4096), a.longValue("seed")), a);
        });

        add("simlayerkv", "SimLayerKV: layers whose last prompt token attends almost only to the sinks and the recent tokens keep just that window (kvpress SimLayerKVPress)", List.of(
                p("threshold", "0.9", "a layer is lazy when its mass on sinks + recent exceeds this (paper: Llama 3 0.9, Llama 2 0.65, Mistral 0.8, Qwen 0.85; 1 = never)"),
                p("recent", "1024", "recent tokens a lazy layer keeps"),
                p("sink", "4", "first tokens a lazy layer keeps"),
                p("last", "1", "last prompt tokens whose attention decides")), (s, a, c) ->
                new SimLayerKvPolicy(s, a.real("threshold", 0, 1), a.integer("recent", 1, Integer.MAX_VALUE),
                        a.integer("sink", 0, Integer.MAX_VALUE), a.integer("last", 1, Integer.MAX_VALUE)));

        add("duo", "DuoAttention: retrieval heads keep everything, streaming heads sinks + a recent window; heads scored from the first prompt (kvpress DuoAttentionPress, on the fly)", List.of(
                p("heads", "0.5", "share of all KV heads that stream (the lowest-scored)"),
                p("sink", "128", "first tokens a streaming head keeps"),
                p("recent", "256", "recent tokens a streaming head keeps")), (s, a, c) ->
                new DuoAttentionPolicy(s, a.real("heads", 0, 1), a.integer("sink", 0, Integer.MAX_VALUE), a.integer("recent", 1, Integer.MAX_VALUE)));

        add("random", "Random: drops uniformly random tokens, a reproducible baseline (kvpress RandomPress)", shaped(true, "",
                budgeted("0.5", "0",
                p("seed", "0", "seed of the scores"))), (s, a, c) -> {
            Kept k = kept(a);
            return shape(new RandomPolicy(s, k.budget(), k.recent(), k.sink(), a.longValue("seed")), a);
        });

        add("expected", "Expected Attention: keeps the tokens future queries are expected to attend to (query mean/covariance, averaged RoPE) x value norm", shaped(true, "64",
                p("budget", "0.25", "tokens kept (tokens or ratio of the sequence)"),
                p("recent", "0", "recent window within the budget (tokens, or ratio of the budget)"),
                p("sink", "4", "first tokens always kept, and left out of the query statistics"),
                p("future", "512", "future positions RoPE is averaged over"),
                p("cov", "true", "use the queries' covariance (false: the mean only)"),
                p("vnorm", "true", "scale the expected attention by the value norm"),
                p("eps", "0", "added to the expected attention before the value-norm scaling")), (s, a, c) -> {
            Kept k = kept(a);
            return shape(new ExpectedAttentionPolicy(s, k.budget(), k.recent(), k.sink(), a.integer("future", 1, 1 << 20),
                    a.choice("cov", "true", "false").equals("true"), a.choice("vnorm", "true", "false").equals("true"),
                    a.real("eps", 0, 1e6)), a);
        });

        add("tidal", "TidalDecode: top-k tokens chosen at 2 layers, reused by all sparse layers (no eviction)", List.of(
                p("k", "256", "tokens each sparse layer attends to (the current token included)"),
                p("full_layers", "2", "first layers with full attention; the next one selects (>= layers: all dense)"),
                p("reselect", "auto", "layer that selects again (auto = round(13/32 * layers); -1 = none)"),
                p("group", "max", "GQA: rank a slot by the max or sum of its q-heads' raw scores")), (s, a, c) -> {
            int k = a.integer("k", 1, Integer.MAX_VALUE);
            int full = a.integer("full_layers", 0, Integer.MAX_VALUE);
            int re = a.raw("reselect").trim().equalsIgnoreCase("auto") ? -2 : a.integer("reselect", -1, Integer.MAX_VALUE);
            if (c != null && re >= 0 && (re <= full || re >= c.numLayers()))
                throw a.bad("reselect", "must lie in (" + full + ", " + c.numLayers() + ") or be -1/auto");
            return new TidalPolicy(s, k, full, re, a.choice("group", "max", "sum").equals("sum"));
        });

        add("quest", "Quest: query-aware selection of pages by min/max key bounds (no eviction)", List.of(
                p("budget", "1024", "tokens attended per layer, the current page included"),
                p("page", "16", "page size in slots"),
                p("dense_layers", "2", "first layers with full attention"),
                p("group", "max", "GQA: rank a page by the max or sum of its q-heads' bounds")), (s, a, c) -> {
            int page = a.integer("page", 1, 1 << 20);
            int budget = a.integer("budget", 1, Integer.MAX_VALUE);
            return new QuestPolicy(s, budget, page, a.integer("dense_layers", 0, Integer.MAX_VALUE),
                    a.choice("group", "max", "sum").equals("sum"));
        });

        add("tokenselect", "TokenSelect: per-head soft voting over q.k picks one token set for all heads (no eviction)", List.of(
                p("k", "2048", "tokens selected by the vote"),
                p("init", "128", "first tokens always attended"),
                p("local", "512", "last tokens always attended"),
                p("reuse", "0", "selection cache: reuse a layer's top-k while cos(q, cached q) >= reuse (0 = off; paper 0.9)")), (s, a, c) ->
                new TokenSelectPolicy(s, a.integer("k", 1, Integer.MAX_VALUE), a.integer("init", 0, Integer.MAX_VALUE),
                        a.integer("local", 1, Integer.MAX_VALUE), a.real("reuse", 0, 1)));

        add("razor", "RazorAttention: retrieval heads (echo/induction probe) keep all; others keep sinks + window + 1 compensation token", List.of(
                p("heads", "0.15", "fraction of KV heads that keep the full cache (induction + echo)"),
                p("echo", "0.01", "part of `heads` chosen by echo score (capped at heads)"),
                p("sink", "4", "first tokens kept by the other heads"),
                p("recent", "4000", "minimum recent window S0 of the other heads (tokens)"),
                p("ratio", "0.2", "recent window as a fraction of the sequence (1/C); the window is max(recent, ratio*N)"),
                p("probe", "256", "random tokens per repeat of the head probe"),
                p("repeats", "4", "repeats of the probe block"),
                p("seed", "0", "seed of the probe tokens")), (s, a, c) -> {
            double heads = a.real("heads", 0, 1), echo = a.real("echo", 0, 1);
            echo = Math.min(echo, heads); // the echo heads are part of `heads`
            return new RazorPolicy(s, heads, echo, a.integer("sink", 0, Integer.MAX_VALUE), a.integer("recent", 1, Integer.MAX_VALUE),
                    a.real("ratio", 0, 1), a.integer("probe", 2, 1 << 20), a.integer("repeats", 2, 1024), a.longValue("seed"));
        });
    }

    /**
     * The keys every budgeted evicting policy takes besides its own: interval (kvpress's DecodingPress), pyramid
     * (PyramidKV's layer budgets) and, for scored policies that evict while decoding, ada (AdaKV's head-wise budget)
     * and chunk (ChunkKV's whole-run eviction).
     * {@code interval} null: a prompt-only policy, pyramid alone.
     */
    private static List<Param> shaped(boolean ada, String interval, Param... own) {
        List<Param> out = new ArrayList<>(List.of(own));
        if (interval != null) {
            out.add(p("interval", interval, "a head grows to budget + interval tokens, then is cut back to the budget in one go (kvpress DecodingPress: every interval steps; 0 = every step)"));
            out.add(p("once", "", "true: cut the prompt to the budget once, at the first decode step, then append without eviction; interval does not apply (kvpress's presses; off unless given)"));
        }
        out.add(p("pyramid", "", "PyramidKV beta >= 1: layer budgets fall linearly from the first layer to the last, same mean (off unless given; paper 20)"));
        if (ada) out.add(p("ada", "", "AdaKV: a layer's KV heads share its budget, lowest scores go first, each keeps >= this fraction (off unless given; kvpress 0.2)"));
        if (ada) out.add(p("chunk", "", "ChunkKV: evict whole runs of this many consecutive tokens, ranked by mean score over the layer's heads; all heads keep the same tokens (off unless given; kvpress 20)"));
        return out;
    }

    /** Key rerotation on the prompt policies. */
    private static Param rerotateParam() {
        return p("rerotate", "", "true: the kept prompt keys are moved to contiguous positions after the cut (kvpress KeyRerotationPress; off unless given)");
    }

    /** Applies the prompt policies' rerotate and first keys. */
    private static <P extends EvictingPolicy> P promptKeys(P p, PolicyArgs a) {
        p.rerotate(a.has("rerotate") && a.choice("rerotate", "true", "false").equals("true"));
        p.firstPromptOnly(a.has("first") && a.choice("first", "true", "false").equals("true"));
        return p;
    }

    /** The first-prompt-only key on the prompt policies. */
    private static Param firstParam() {
        return p("first", "", "true: compress only a sequence's first prompt; later prompts (questions, chat turns) are appended whole (off unless given)");
    }

    /** AdaKV's key on SnapKV and PyramidKV (the per-step policies get it from {@link #shaped}). */
    private static Param adaParam() {
        return p("ada", "", "AdaKV: the layer's KV heads share its prompt budget by vote, each keeps >= this fraction (off unless given; kvpress 0.2)");
    }

    /** CriticalKV's key on SnapKV and PyramidKV. */
    private static Param criticalParam() {
        return p("critical", "", "CriticalKV: this share of the kept tokens goes by vote, the rest by vote x |W_o v|_1 (off unless given; kvpress 0.5)");
    }

    /** CaM's key on the policies whose scores are accumulated attention. */
    private static Param mergeParam() {
        return p("merge", "", "CaM: an evicted token's value is merged, with probability min(1, its score / the mean score of those), into the next this-many kept tokens (off unless given; kvpress 32)");
    }

    /** Applies the merge key (CaM) to an evicting policy shaped by {@link #shape}. */
    private static KvPolicy merge(KvPolicy shaped, PolicyArgs a) {
        if (!a.has("merge")) return shaped;
        return ((EvictingPolicy) shaped).merge(a.integer("merge", 1, 1 << 16));
    }

    /** Applies the interval/pyramid/ada/chunk keys to an evicting policy. */
    private static KvPolicy shape(EvictingPolicy p, PolicyArgs a) {
        int interval = a.declares("interval") && !a.raw("interval").isEmpty() ? a.integer("interval", 0, Integer.MAX_VALUE) : 0;
        double pyramid = a.declares("pyramid") && a.has("pyramid") ? a.real("pyramid", 1, 1e6) : 0;
        double ada = a.declares("ada") && a.has("ada") ? a.real("ada", 0, 1) : -1;
        int chunk = a.declares("chunk") && a.has("chunk") ? a.integer("chunk", 1, 1 << 20) : 0;
        if (chunk > 0 && ada >= 0) throw a.error(a.policy() + ": chunk and ada exclude each other (chunk keeps the same tokens in every head)");
        boolean once = a.declares("once") && a.has("once") && a.choice("once", "true", "false").equals("true");
        return p.shaping(new EvictingPolicy.Shaping(interval, pyramid, ada, chunk, once));
    }

    /** SnapKV from its keys (budget, window, kernel, pool), shared by snapkv and pyramidkv. */
    private static SnapKvPolicy snapKv(String s, PolicyArgs a) {
        Budget b = a.positiveBudget("budget");
        int w = a.integer("window", 1, Integer.MAX_VALUE);
        int k = a.integer("kernel", 1, 1023);
        if (k % 2 == 0) throw a.bad("kernel", "must be odd");
        String pool = a.choice("pool", "max", "avg");
        if (!b.ratio() && b.value() <= w) throw a.bad("budget", "must exceed window=" + w);
        SnapKvPolicy p = new SnapKvPolicy(s, b, w, k, pool.equals("max"));
        promptKeys(p, a);
        return a.has("critical") ? p.critical(a.real("critical", 0, 1)) : p;
    }

    /** The keys of a budgeted policy: budget (tokens or ratio), recent window within it, sinks; then its own. */
    private static Param[] budgeted(String budget, String sink, Param... own) {
        List<Param> out = new ArrayList<>(List.of(p("budget", budget, "tokens kept (tokens or ratio of the sequence)"),
                p("recent", "0", "recent window within the budget (tokens, or ratio of the budget)"),
                p("sink", sink, "first tokens always kept")));
        out.addAll(List.of(own));
        return out.toArray(new Param[0]);
    }

    /** A budgeted policy's budget, recent window (checked against the budget) and sinks (0 where it has no sink key). */
    private record Kept(Budget budget, Budget recent, int sink) {}

    private static Kept kept(PolicyArgs a) {
        Budget b = a.positiveBudget("budget"), r = a.budget("recent");
        checkRecent(a, b, r);
        return new Kept(b, r, a.declares("sink") ? a.integer("sink", 0, Integer.MAX_VALUE) : 0);
    }

    private static void checkRecent(PolicyArgs a, Budget budget, Budget recent) {
        if (!budget.ratio() && !recent.ratio() && recent.value() > budget.value())
            throw a.bad("recent", "must not exceed budget=" + budget);
    }

    /** The names of all policies, in help order. */
    public static List<String> names() {
        return List.copyOf(POLICIES.keySet());
    }

    /**
     * Parses a spec such as {@code h2o:budget=0.2,recent=0.5} or {@code window:sink=4,budget=256+tidal:k=64}.
     *
     * @param config the model, for checks that depend on its depth (null: syntax and values only)
     * @throws IllegalArgumentException one line naming the bad policy, key or value and the valid ones
     */
    public static KvPolicy parse(String spec, LlamaConfig config) {
        if (spec == null || spec.isBlank()) throw new IllegalArgumentException("empty --kv spec (valid policies: " + String.join(", ", names()) + ")");
        String whole = spec.trim();
        String[] parts = whole.split("\\+", -1);
        List<KvPolicy> policies = new ArrayList<>();
        Set<BasePolicy.Kind> kinds = EnumSet.noneOf(BasePolicy.Kind.class);
        for (String part : parts) {
            KvPolicy p = parseOne(part.trim(), whole, config);
            if (p == KvPolicy.FULL && parts.length > 1) continue;
            if (p instanceof BasePolicy b && !kinds.add(b.kind()))
                throw new IllegalArgumentException("bad --kv spec '" + whole + "': combine at most one evicting policy (window, h2o, a2sf, tova, snapkv, pyramidkv, kvzip, compactor, keyformer, knorm, keydiff, lagkv, leverage, cur, simlayerkv, duo, random, expected, razor) "
                        + "and one selecting policy (tidal, quest, tokenselect)");
            policies.add(p);
        }
        if (policies.isEmpty()) return KvPolicy.FULL;
        return policies.size() == 1 ? policies.get(0) : new CompositePolicy(policies);
    }

    private static KvPolicy parseOne(String part, String whole, LlamaConfig config) {
        if (part.isEmpty()) throw new IllegalArgumentException("bad --kv spec '" + whole + "': empty policy between '+'");
        int colon = part.indexOf(':');
        String name = (colon < 0 ? part : part.substring(0, colon)).trim().toLowerCase(Locale.ROOT);
        name = ALIASES.getOrDefault(name, name);
        Info info = POLICIES.get(name);
        if (info == null)
            throw new IllegalArgumentException("unknown KV policy '" + (colon < 0 ? part : part.substring(0, colon)).trim() + "' in --kv spec '"
                    + whole + "' (valid: " + String.join(", ", names()) + "; see --kv help)");
        Map<String, String> given = new LinkedHashMap<>();
        if (colon >= 0) {
            String body = part.substring(colon + 1).trim();
            if (!body.isEmpty())
                for (String kv : body.split(",", -1)) {
                    int eq = kv.indexOf('=');
                    String key = (eq < 0 ? kv : kv.substring(0, eq)).trim().toLowerCase(Locale.ROOT);
                    if (eq < 0 || key.isEmpty() || kv.substring(eq + 1).trim().isEmpty())
                        throw new IllegalArgumentException("bad --kv spec '" + whole + "': '" + kv.trim() + "' is not key=value (" + name + " keys: "
                                + keys(info) + ")");
                    if (name.equals("a2sf") && key.equals("forget")) key = "alpha";
                    if (given.put(key, kv.substring(eq + 1).trim()) != null)
                        throw new IllegalArgumentException("bad --kv spec '" + whole + "': " + name + " key '" + key + "' given twice");
                }
        }
        PolicyArgs args = new PolicyArgs(name, whole, info.params(), given);
        return info.factory().make(canonical(info, args), args, config);
    }

    private static String keys(Info info) {
        List<String> k = new ArrayList<>();
        for (Param p : info.params()) k.add(p.name());
        return k.isEmpty() ? "none" : String.join(", ", k);
    }

    /** name:key=value,... with every parameter that has a value (given or default), in declared order. */
    private static String canonical(Info info, PolicyArgs a) {
        StringBuilder sb = new StringBuilder(info.name());
        String sep = ":";
        for (Param p : info.params()) {
            if (info.name().equals("window") && ((p.name().equals("recent") && a.has("budget")) || (p.name().equals("budget") && !a.has("budget"))))
                continue;
            String v = a.raw(p.name());
            if (v.isEmpty()) continue;
            Budget b = Budget.parse(v);
            if (b != null && b.ratio()) v = b.toString();
            sb.append(sep).append(p.name()).append('=').append(v.trim());
            sep = ",";
        }
        return sb.toString();
    }

    /**
     * Splits a comma-separated list of specs (the bench's {@code --kv full,window:budget=256,sink=4,h2o}):
     * an item with '=' but no ':' continues the previous spec's parameters.
     */
    public static List<String> splitList(String list) {
        List<String> out = new ArrayList<>();
        for (String item : list.split(",", -1)) {
            String t = item.trim();
            if (t.isEmpty()) throw new IllegalArgumentException("bad --kv list '" + list + "': empty item");
            if (t.contains("=") && !t.contains(":") && !t.contains("+") && !out.isEmpty())
                out.set(out.size() - 1, out.get(out.size() - 1) + "," + t);
            else out.add(t);
        }
        return out;
    }

    /** The text of {@code --kv help}: every policy with its parameters, defaults and a one-line description. */
    public static String help() {
        StringBuilder sb = new StringBuilder();
        sb.append("KV cache policies: --kv NAME[:key=value,...]; join one evicting and one selecting policy with '+'.\n");
        sb.append("Budgets are token counts (budget=256) or ratios of the sequence length seen so far\n");
        sb.append("(budget=0.25 or budget=25%; 1 is one token, 1.0 is everything).\n\n");
        for (Info i : POLICIES.values()) {
            sb.append(String.format(Locale.ROOT, "%-12s %s%n", i.name(), i.description()));
            for (Param p : i.params())
                sb.append(String.format(Locale.ROOT, "    %-13s %-10s %s%n", p.name(), p.defaultValue().isEmpty() ? "-" : p.defaultValue(), p.help()));
        }
        sb.append("\nExamples: --kv window:sink=4,budget=512   --kv h2o:budget=0.2   --kv tidal:k=128\n");
        sb.append("          --kv snapkv:budget=1024,window=32,kernel=7,pool=max   --kv h2o:budget=1024+tidal:k=128\n");
        sb.append("Details and deviations from the papers: docs/KV_POLICIES.md\n");
        return sb.toString();
    }
}
