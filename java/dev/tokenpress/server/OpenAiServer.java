package dev.tokenpress.server;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import dev.tokenpress.api.Embeddings;
import dev.tokenpress.api.GenerationResult;
import dev.tokenpress.api.Parallel;
import dev.tokenpress.api.Reasoning;
import dev.tokenpress.api.Session;
import dev.tokenpress.api.StopText;
import dev.tokenpress.api.TokenPress;
import dev.tokenpress.api.ToolCalls;
import dev.tokenpress.io.ChatTemplate;
import dev.tokenpress.io.ChatTemplate.Message;
import dev.tokenpress.kv.KvPolicies;
import dev.tokenpress.kv.KvPolicy;
import dev.tokenpress.kv.quant.KvQuantSpec;
import dev.tokenpress.sample.SamplerChain;
import dev.tokenpress.sample.SamplingOptions;
import dev.tokenpress.sample.StepTrace;

import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.ReentrantLock;
import java.util.function.Consumer;

/**
 * An HTTP server with the OpenAI API's text endpoints over one loaded model (the JDK's built-in HTTP server, no
 * other dependency), so that OpenAI clients and tools can use a model with KV-cache compression:
 * <ul>
 *   <li>{@code POST /v1/completions}: {@code prompt} (a string, one string in a list, or a list of token ids; with
 *       {@code suffix}, the text to insert between them, through the model's fill-in-the-middle tokens);</li>
 *   <li>{@code POST /v1/chat/completions}: {@code messages} (system/developer, user, assistant with optional {@code
 *       tool_calls}, tool with {@code tool_call_id}; content a string or a list of text parts) in the model's {@link
 *       ChatTemplate} format; function calling with {@code tools}, {@code tool_choice} (auto, none, required or a
 *       named function: the last two constrain the reply to a call by a grammar) and {@code parallel_tool_calls}:
 *       calls in the model's notation come back as {@code tool_calls} ({@link ToolCalls}); a reasoning model's
 *       thinking as {@code reasoning_content} ({@link Reasoning}, {@code reasoning_format}); {@code
 *       chat_template_kwargs} are more variables for the template;</li>
 *   <li>{@code POST /v1/responses}: OpenAI's Responses API over the chat machinery ({@link #responses});</li>
 *   <li>{@code POST /v1/messages}, {@code /v1/messages/count_tokens}: Anthropic's Messages API over it ({@link #messages});</li>
 *   <li>{@code GET /v1/models}, {@code GET /health}; llama-server's {@code POST /tokenize} ({@code content}, {@code
 *       add_special}, {@code with_pieces}), {@code POST /detokenize} ({@code tokens}) and {@code POST /apply-template}
 *       (a chat request's prompt).</li>
 * </ul>
 * Request fields: {@code max_tokens} (chat also {@code max_completion_tokens}; default the server's), {@code
 * temperature}, {@code top_p}, {@code seed}, {@code stop} (a string or a list), {@code stream} (server-sent events
 * ending with {@code data: [DONE]}), {@code presence_penalty}, {@code frequency_penalty}, and llama.cpp's {@code
 * top_k}, {@code min_p}, {@code typical_p}, {@code repeat_penalty}, {@code repeat_last_n}, {@code mirostat}, {@code
 * mirostat_tau}, {@code mirostat_eta}; unset ones take the server's sampling defaults; {@code logprobs} (completions: the
 * number of alternatives, 0-20; chat: true with {@code top_logprobs}), without streaming: log-probabilities of the
 * model distribution (softmax of the logits after the penalties, before truncation and temperature); and tokenpress's {@code kv}: a
 * {@code --kv} policy spec for this request (default the server's), so policies can be compared on one server, and
 * {@code lookup}: prompt lookup decoding's draft length for this request (default the server's; while above 0 it
 * drafts instead of the server's draft model, if it has one), and {@code
 * response_format} {@code {"type": "json_object"}} (or tokenpress's {@code "json"} for any JSON value), {@code
 * {"type": "json_schema", "json_schema": {"schema": ...}}} (structured output; also llama-server's {@code json_schema}
 * field and {@code json_object} with a {@code schema}), llama-server's {@code grammar} (GBNF), {@code logit_bias}
 * (OpenAI's object, -100 bans; or llama-server's list) and {@code ignore_eos}: sampling
 * keeps the text valid JSON and ends it when the value is complete ({@link Session#setOutputFormat}). {@code n}: up
 * to 16 choices without streaming (each after the first reuses the prompt's cache and draws with seed + its index).
 * {@code echo} (without streaming) puts the prompt before the completion, and with {@code logprobs} also the prompt
 * tokens' log-probabilities, from one prefill of the prompt before any compression acts (the first token's is null):
 * what loglikelihood evaluations (e.g. lm-evaluation-harness's local-completions) ask for. Responses carry {@code
 * usage} and llama-server's {@code timings}. Errors
 * are OpenAI-shaped ({@code {"error": {"message", "type", "code"}}}, status 400/401/404/405/500/503), Anthropic-shaped
 * on /v1/messages. Also: {@code POST /v1/embeddings}; llama-server's {@code /completion}, {@code /infill}, {@code
 * GET /props}; vLLM/SGLang's {@code /generate}; {@code GET /metrics} (Prometheus).
 * <p>
 * With {@code parallel} 1, one request decodes at a time (others wait); with more, requests without log-probabilities,
 * echo or prompt lookup are decoded together ({@link Parallel}). Each uses the model's KV policy and the server's cache storage in a KV
 * cache of the server's context size. Prompt caching (llama-server's {@code cache_prompt}, on unless a request says
 * false): where the cache can be cut back ({@link Session#canTruncate}: the {@code full} policy, unquantized), the
 * part of the previous request's tokens that begins this prompt stays and only the rest is prefilled (a chat that
 * resends its history prefills only the new turn); otherwise each request starts from an empty cache. {@code
 * timings.cache_n} says how many tokens were reused. A client that disconnects while streaming stops its generation.
 */
public final class OpenAiServer implements AutoCloseable {

    /**
     * @param host             address to bind (e.g. 127.0.0.1; 0.0.0.0 for every interface)
     * @param port             TCP port (0 = any free one, see {@link #port()})
     * @param contextSize      KV cache size in tokens (0 = the model's default)
     * @param quant            how the KV cache is stored (null = full precision)
     * @param template         chat format for /v1/chat/completions (null = that endpoint answers 400)
     * @param modelName        the model id the API reports
     * @param sampling         defaults for the sampling fields a request leaves out
     * @param defaultMaxTokens tokens generated when a request gives no max_tokens
     * @param log              one line per request (null = none)
     * @param lookup           prompt lookup decoding for greedy requests: most drafted tokens per step (0 = off)
     * @param apiKey           when not null, every endpoint but /health needs {@code Authorization: Bearer KEY}
     * @param draft            speculative decoding with a draft model for requests without {@code lookup} (null = none)
     * @param parallel         sequences decoded together (continuous batching, {@link Parallel}; each with its own KV
     *                         cache of {@code contextSize}); 1 = one request at a time through one session
     * @param reasoningFormat  chat replies' thinking ({@link Reasoning}): "deepseek" splits it into {@code
     *                         reasoning_content}, "none" leaves it in the content, "auto" (or null) splits when the
     *                         chat template writes thinking blocks; a request's {@code reasoning_format} overrides it
     */
    public record Options(String host, int port, int contextSize, KvQuantSpec quant, ChatTemplate template,
                          String modelName, SamplingOptions sampling, int defaultMaxTokens, Consumer<String> log,
                          int lookup, String apiKey, Draft draft, int parallel, String reasoningFormat) {
        public Options {
            if (reasoningFormat == null) reasoningFormat = "auto";
            if (!REASONING_FORMATS.contains(reasoningFormat))
                throw new IllegalArgumentException("reasoning format must be one of " + String.join(", ", REASONING_FORMATS)
                        + ", got " + reasoningFormat);
        }

        public Options(String host, int port, int contextSize, KvQuantSpec quant, ChatTemplate template,
                       String modelName, SamplingOptions sampling, int defaultMaxTokens, Consumer<String> log,
                       int lookup, String apiKey, Draft draft, int parallel) {
            this(host, port, contextSize, quant, template, modelName, sampling, defaultMaxTokens, log, lookup, apiKey, draft,
                    parallel, "auto");
        }

        public Options(String host, int port, int contextSize, KvQuantSpec quant, ChatTemplate template,
                       String modelName, SamplingOptions sampling, int defaultMaxTokens, Consumer<String> log,
                       int lookup, String apiKey) {
            this(host, port, contextSize, quant, template, modelName, sampling, defaultMaxTokens, log, lookup, apiKey, null, 1);
        }

        public Options(String host, int port, int contextSize, KvQuantSpec quant, ChatTemplate template,
                       String modelName, SamplingOptions sampling, int defaultMaxTokens, Consumer<String> log,
                       int lookup, String apiKey, Draft draft) {
            this(host, port, contextSize, quant, template, modelName, sampling, defaultMaxTokens, log, lookup, apiKey, draft, 1);
        }
    }

    /**
     * The draft of speculative decoding ({@link Session#setDraftModel}, {@link Session#setSelfDraft}): {@code model}
     * (same tokenizer; the caller keeps it open while the server runs), or when null the served model's first
     * {@code layers} layers; {@code max}, {@code min} and {@code pMin} as there; {@code stop} SpecDec++'s threshold
     * ({@link Session#setDraftStop}; 0 = off).
     */
    public record Draft(TokenPress model, int layers, int max, int min, float pMin, double stop) {
        public Draft(TokenPress model, int layers, int max, int min, float pMin) {
            this(model, layers, max, min, pMin, 0);
        }
    }

    private static final ObjectMapper JSON = new ObjectMapper();
    /** The values of {@link Options#reasoningFormat} and of a request's {@code reasoning_format}. */
    public static final List<String> REASONING_FORMATS = List.of("auto", "none", "deepseek");

    private final TokenPress tp;
    private final Options options;
    private final Session session;
    private final HttpServer http;
    private final ExecutorService executor;
    private final ReentrantLock decoding = new ReentrantLock(true);
    private final AtomicLong ids = new AtomicLong();
    // Prometheus counters (/metrics)
    private final java.util.concurrent.ConcurrentHashMap<String, java.util.concurrent.atomic.LongAdder> requestCounts =
            new java.util.concurrent.ConcurrentHashMap<>();
    private final java.util.concurrent.atomic.LongAdder promptTokens = new java.util.concurrent.atomic.LongAdder(),
            generatedTokens = new java.util.concurrent.atomic.LongAdder(), promptMicros = new java.util.concurrent.atomic.LongAdder(),
            decodeMicros = new java.util.concurrent.atomic.LongAdder(), cachedTokens = new java.util.concurrent.atomic.LongAdder();
    private final java.util.concurrent.atomic.AtomicInteger processing = new java.util.concurrent.atomic.AtomicInteger();

    /** A generating request's handler; returns the log note. */
    private interface Handler {
        String run() throws IOException;
    }

    /** Runs a generating request's handler counted in {@code processing} (what /metrics and /props report). */
    private String counted(Handler h) throws IOException {
        processing.incrementAndGet();
        try {
            return h.run();
        } finally {
            processing.decrementAndGet();
        }
    }
    private volatile long kvBytes;
    private final Embeddings embedder;  // its cache is reused across requests (under the decoding lock)
    private final KvPolicy defaultPolicy;
    private final Parallel batcher;   // continuous batching (options.parallel > 1), else null
    private final Thread batchWorker;
    private volatile boolean closed;

    private OpenAiServer(TokenPress tp, Options options) throws IOException {
        this.tp = tp;
        this.options = options;
        this.session = tp.newSession(options.contextSize(), options.quant());
        this.defaultPolicy = tp.model().policy();
        this.embedder = new Embeddings(tp);
        Draft d = options.draft();
        try {
            if (d != null && d.model() != null) session.setDraftModel(d.model(), d.max(), d.min(), d.pMin());
            else if (d != null) session.setSelfDraft(d.layers(), d.max(), d.min(), d.pMin());
            if (d != null && d.stop() > 0) session.setDraftStop(d.stop());
            if (options.parallel() < 1 || options.parallel() > tp.model().maxChunk())
                throw new IllegalArgumentException("parallel sequences must be 1 to " + tp.model().maxChunk()
                        + " (the prefill chunk, -b), not " + options.parallel());
            if (options.parallel() > 1 && d != null)
                throw new IllegalArgumentException("parallel decoding and a draft model exclude each other");
        } catch (RuntimeException e) {
            session.close();
            throw e;
        }
        if (options.parallel() > 1) {
            this.batcher = new Parallel(tp, session.contextSize(), options.quant(), defaultPolicy.spec());
            this.batchWorker = new Thread(this::batchLoop, "tokenpress-batch");
            batchWorker.setDaemon(true);
        } else {
            this.batcher = null;
            this.batchWorker = null;
        }
        try {
            this.http = HttpServer.create(new InetSocketAddress(options.host(), options.port()), 64);
        } catch (IOException e) {
            session.close();
            throw new IOException("cannot listen on " + options.host() + ":" + options.port() + " (" + e.getMessage()
                    + "): pick another --port or --host", e);
        }
        // waiting requests hold a thread each (batched ones until their sequence ends); /health stays answerable
        this.executor = Executors.newFixedThreadPool(16 + Math.max(0, options.parallel()), r -> {
            Thread t = new Thread(r, "tokenpress-http");
            t.setDaemon(true);
            return t;
        });
        http.setExecutor(executor);
        http.createContext("/", this::handle);
    }

    /** Binds and starts serving; {@link #close} stops. */
    public static OpenAiServer start(TokenPress tp, Options options) throws IOException {
        OpenAiServer s = new OpenAiServer(tp, options);
        if (s.batchWorker != null) s.batchWorker.start();
        s.http.start();
        return s;
    }

    /**
     * The continuous-batching worker: under the decoding lock, one {@link Parallel#step} at a time (waiting requests
     * join, every active sequence advances a token), so requests outside the batch (log-probabilities, echo, prompt
     * lookup) take the lock between two steps.
     */
    private void batchLoop() {
        while (!closed) {
            try {
                boolean more;
                decoding.lock();
                try {
                    more = !closed && batcher.step(options.parallel());
                } finally {
                    decoding.unlock();
                }
                if (!more) batcher.awaitWork(200);
            } catch (InterruptedException e) {
                return;
            } catch (RuntimeException | Error e) { // step fails the sequences concerned; the worker goes on
                if (options.log() != null) options.log().accept("batch step failed: " + firstLine(e));
            }
        }
    }

    /** The port the server listens on. */
    public int port() {
        return http.getAddress().getPort();
    }

    /** The context size of the server's KV cache, in tokens. */
    public int contextSize() {
        return session.contextSize();
    }

    @Override
    public void close() {
        closed = true;
        http.stop(0);
        executor.shutdownNow();
        if (batchWorker != null) {
            batchWorker.interrupt();
            try {
                batchWorker.join(10_000);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
        decoding.lock();
        try {
            if (batcher != null) batcher.close();
            embedder.close();
            session.close();
        } finally {
            decoding.unlock();
        }
    }

    // ---- routing ----------------------------------------------------------------------------------------------

    /** An error to answer with an OpenAI-shaped body. */
    static final class ApiException extends RuntimeException {
        private static final long serialVersionUID = 1L;
        final int status;
        final String type, code;

        ApiException(int status, String type, String code, String message) {
            super(message);
            this.status = status;
            this.type = type;
            this.code = code;
        }

        static ApiException badRequest(String message) {
            return new ApiException(400, "invalid_request_error", null, message);
        }
    }

    private void handle(HttpExchange ex) throws IOException {
        long t0 = System.nanoTime();
        String path = ex.getRequestURI().getPath(), method = ex.getRequestMethod();
        String note = "";
        int status = 200;
        try {
            ex.getResponseHeaders().set("Access-Control-Allow-Origin", "*");
            if (method.equals("OPTIONS")) {
                ex.getResponseHeaders().set("Access-Control-Allow-Methods", "GET, POST, PUT, OPTIONS");
                ex.getResponseHeaders().set("Access-Control-Allow-Headers",
                        "Content-Type, Authorization, x-api-key, anthropic-version, anthropic-beta");
                ex.sendResponseHeaders(204, -1);
                status = 204;
                return;
            }
            String key = options.apiKey() == null || options.apiKey().isBlank() ? null : options.apiKey().trim();
            if (key != null && !path.equals("/health") && !path.equals("/v1/health")) {
                String auth = ex.getRequestHeaders().getFirst("Authorization");
                String given = auth != null && auth.regionMatches(true, 0, "Bearer ", 0, 7) ? auth.substring(7).trim() : "";
                String xKey = ex.getRequestHeaders().getFirst("x-api-key"); // Anthropic's clients
                if (given.isEmpty() && xKey != null) given = xKey.trim();
                if (!constantTimeEquals(given, key))
                    throw new ApiException(401, "invalid_request_error", "invalid_api_key",
                            "missing or wrong API key: send the header Authorization: Bearer KEY (or x-api-key: KEY)");
            }
            switch (path) {
                case "/health", "/v1/health" -> {
                    requireMethod(ex, "GET");
                    ObjectNode o = JSON.createObjectNode();
                    o.put("status", "ok");
                    sendJson(ex, 200, o);
                }
                case "/v1/models" -> {
                    requireMethod(ex, "GET");
                    sendJson(ex, 200, models());
                }
                case "/v1/completions", "/v1/chat/completions" -> {
                    requireMethod(ex, "POST");
                    note = counted(() -> complete(ex, body(ex), path.equals("/v1/chat/completions")));
                }
                case "/v1/embeddings", "/embeddings" -> {
                    requireMethod(ex, "POST");
                    note = embeddings(ex, body(ex));
                }
                case "/v1/messages" -> {
                    requireMethod(ex, "POST");
                    note = counted(() -> messages(ex, body(ex)));
                }
                case "/v1/messages/count_tokens" -> {
                    requireMethod(ex, "POST");
                    ObjectNode o = JSON.createObjectNode();
                    o.put("input_tokens", tp.tokenizer().encode(chatPrompt(anthropicChatBody(body(ex))).text()).length);
                    sendJson(ex, 200, o);
                }
                case "/v1/responses" -> {
                    requireMethod(ex, "POST");
                    note = counted(() -> responses(ex, body(ex)));
                }
                case "/metrics" -> {
                    requireMethod(ex, "GET");
                    metrics(ex);
                }
                case "/props" -> {
                    requireMethod(ex, "GET");
                    sendJson(ex, 200, props());
                }
                case "/completion", "/completions" -> {
                    requireMethod(ex, "POST");
                    note = counted(() -> completeLlama(ex, body(ex)));
                }
                case "/infill" -> {
                    requireMethod(ex, "POST");
                    note = counted(() -> infill(ex, body(ex)));
                }
                case "/generate" -> {
                    if (!method.equals("PUT") && !method.equals("POST"))
                        throw new ApiException(405, "invalid_request_error", null, "/generate takes PUT or POST");
                    note = counted(() -> generateNative(ex, body(ex)));
                }
                case "/apply-template" -> { // llama-server's: the prompt a chat request would feed
                    requireMethod(ex, "POST");
                    ObjectNode o = JSON.createObjectNode();
                    o.put("prompt", chatPrompt(body(ex)).text());
                    sendJson(ex, 200, o);
                }
                case "/tokenize" -> {
                    requireMethod(ex, "POST");
                    JsonNode b = body(ex);
                    JsonNode c = b.get("content");
                    if (c == null || !c.isTextual()) throw ApiException.badRequest("'content' must be a string");
                    int[] ids = b.path("add_special").asBoolean(false) ? tp.tokenizer().encode(c.asText())
                            : tp.tokenizer().encodeNoSpecial(c.asText());
                    ObjectNode o = JSON.createObjectNode();
                    var a = o.putArray("tokens");
                    boolean pieces = b.path("with_pieces").asBoolean(false);
                    for (int id : ids) {
                        if (pieces) a.addObject().put("id", id).put("piece", piece(id));
                        else a.add(id);
                    }
                    sendJson(ex, 200, o);
                }
                case "/detokenize" -> {
                    requireMethod(ex, "POST");
                    JsonNode t = body(ex).get("tokens");
                    if (t == null || !t.isArray() || !allInts(t)) throw ApiException.badRequest("'tokens' must be a list of token ids");
                    int[] ids = new int[t.size()];
                    for (int i = 0; i < ids.length; i++) {
                        ids[i] = t.get(i).asInt();
                        if (ids[i] < 0 || ids[i] >= tp.config().vocabSize())
                            throw ApiException.badRequest("token " + ids[i] + " is outside the vocabulary of " + tp.config().vocabSize());
                    }
                    ObjectNode o = JSON.createObjectNode();
                    o.put("content", tp.tokenizer().decode(ids));
                    sendJson(ex, 200, o);
                }
                default -> throw new ApiException(404, "not_found_error", null, "no endpoint " + path
                        + ": use /v1/completions, /v1/chat/completions, /v1/responses, /v1/messages, /v1/embeddings, /v1/models, /completion, /infill, /generate, /tokenize, /detokenize, /apply-template, /props, /metrics or /health");
            }
        } catch (ApiException e) {
            status = e.status;
            note = e.getMessage();
            if (path.startsWith("/v1/messages")) sendAnthropicError(ex, e);
            else sendError(ex, e);
        } catch (RuntimeException e) {
            status = 500;
            note = e.toString();
            ApiException a = new ApiException(500, "server_error", null, firstLine(e));
            if (path.startsWith("/v1/messages")) sendAnthropicError(ex, a);
            else sendError(ex, a);
        } finally {
            ex.close();
            String endpoint = switch (path) {
                case "/health", "/v1/health", "/v1/models", "/v1/completions", "/v1/chat/completions", "/generate", "/tokenize",
                     "/detokenize", "/apply-template", "/metrics", "/props", "/v1/embeddings", "/embeddings", "/completion",
                     "/completions", "/infill", "/v1/responses", "/v1/messages", "/v1/messages/count_tokens" -> path;
                default -> "other";
            };
            requestCounts.computeIfAbsent(endpoint + "|" + status, k -> new java.util.concurrent.atomic.LongAdder()).increment();
            if (options.log() != null)
                options.log().accept(String.format(Locale.ROOT, "%s %s %d %.0f ms%s", method, path, status,
                        (System.nanoTime() - t0) / 1e6, note.isEmpty() ? "" : " | " + note));
        }
    }

    private static boolean constantTimeEquals(String a, String b) {
        return java.security.MessageDigest.isEqual(a.getBytes(StandardCharsets.UTF_8), b.getBytes(StandardCharsets.UTF_8));
    }

    private static JsonNode body(HttpExchange ex) {
        JsonNode body;
        try {
            body = JSON.readTree(ex.getRequestBody());
        } catch (IOException e) {
            throw ApiException.badRequest("the request body is not valid JSON: " + firstLine(e));
        }
        if (body == null || !body.isObject()) throw ApiException.badRequest("the request body must be a JSON object");
        return body;
    }

    private static void requireMethod(HttpExchange ex, String method) {
        if (!ex.getRequestMethod().equals(method))
            throw new ApiException(405, "invalid_request_error", null, ex.getRequestURI().getPath() + " takes " + method);
    }

    private ObjectNode models() {
        ObjectNode o = JSON.createObjectNode();
        o.put("object", "list");
        ObjectNode m = o.putArray("data").addObject();
        m.put("id", options.modelName());
        m.put("object", "model");
        m.put("created", 0);
        m.put("owned_by", "tokenpress");
        ObjectNode meta = m.putObject("meta");
        meta.put("architecture", tp.config().architecture());
        meta.put("n_ctx", session.contextSize());
        meta.put("n_vocab", tp.config().vocabSize());
        meta.put("kv", defaultPolicy.spec());
        meta.put("kv_quant", options.quant() == null ? "none" : options.quant().spec());
        putCacheTypes(meta);
        meta.put("chat_template", options.template() == null ? null : options.template().name());
        return o;
    }

    // ---- completions ------------------------------------------------------------------------------------------

    /** One parsed request. */
    private record Request(int[] tokens, int maxTokens, SamplingOptions sampling, List<String> stop, boolean stream,
                           Set<Integer> stopTokens, boolean cachePrompt, KvPolicy policy, int logprobs, int lookup,
                           boolean echo, Session.OutputFormat format, int n, String grammar, String schema,
                           Map<Integer, Float> logitBias, boolean ignoreEos, Tools tools, Thinking thinking) {
        /**
         * This chat request reading its replies for tool calls ({@code tools}, null = not) and thinking ({@code
         * thinking}, null = not), constrained by {@code grammar}.
         */
        Request withChat(Tools tools, Thinking thinking, String grammar) {
            return new Request(tokens, maxTokens, sampling, stop, stream, stopTokens, cachePrompt, policy, logprobs, lookup,
                    echo, format, n, grammar, schema, logitBias, ignoreEos, tools, thinking);
        }

        /** This request also stopping at {@code more} tokens. */
        Request withStopTokens(Set<Integer> more) {
            Set<Integer> all = new HashSet<>(stopTokens);
            all.addAll(more);
            return new Request(tokens, maxTokens, sampling, stop, stream, Set.copyOf(all), cachePrompt, policy, logprobs,
                    lookup, echo, format, n, grammar, schema, logitBias, ignoreEos, tools, thinking);
        }
    }

    /** A chat reply split into reasoning and answer ({@link Reasoning}); {@code open}: the prompt opened the block. */
    private record Thinking(boolean open) {}

    /** The tools a chat request offers: their names (only their calls count) and the notation of the model's calls. */
    private record Tools(Set<String> names, ToolCalls.Style style, boolean parallel) {}

    /** One generated choice: the result, its text (cut at a stop string), its sampling steps, and how it began. */
    private record Choice(GenerationResult r, StopText text, List<StepTrace> steps, Session.Score[] promptScores,
                          double scoreMs, int reused, String finish) {}

    /** Runs a completion request; returns a note for the log. */
    private String complete(HttpExchange ex, JsonNode body, boolean chat) throws IOException {
        String id = (chat ? "chatcmpl-" : "cmpl-") + ids.incrementAndGet();
        long created = System.currentTimeMillis() / 1000;
        Run run = run(() -> chat ? chatRequest(body) : completionRequest(body), rq -> {
            if (!rq.stream()) return null;
            Stream st = new Stream(ex, id, created, chat);
            st.tools = rq.tools();
            if (rq.thinking() != null) st.splitter = new Reasoning.Splitter(rq.thinking().open());
            return st;
        });
        Request req = run.req();
        Stream stream = run.stream();
        List<Choice> choices = run.choices();
        boolean batched = run.batched();
        ObjectNode usage = JSON.createObjectNode();
        int completion = 0;
        for (Choice c : choices) completion += c.r().tokens().length;
        usage.put("prompt_tokens", req.tokens().length);
        usage.put("completion_tokens", completion);
        usage.put("total_tokens", req.tokens().length + completion);
        Choice first = choices.get(0);
        GenerationResult r = first.r();
        ObjectNode timings = JSON.createObjectNode();
        timings.put("cache_n", first.reused());
        int promptN = first.promptScores() == null ? r.promptTokens() : req.tokens().length - first.reused();
        double promptMs = r.prefillMillis() + first.scoreMs();
        timings.put("prompt_n", promptN);
        timings.put("prompt_ms", promptMs);
        timings.put("prompt_per_second", promptMs <= 0 ? 0 : promptN * 1000.0 / promptMs);
        timings.put("predicted_n", r.decodeSteps());
        timings.put("predicted_ms", r.decodeMillis());
        timings.put("predicted_per_second", r.decodeTokensPerSecond());
        int calls = 0;
        if (stream != null) {
            calls = finishStream(stream, first);
            stream.end(calls > 0 ? "tool_calls" : first.finish(), usage, timings);
        } else {
            ObjectNode o = JSON.createObjectNode();
            o.put("id", id);
            o.put("object", chat ? "chat.completion" : "text_completion");
            o.put("created", created);
            o.put("model", options.modelName());
            ArrayNode arr = o.putArray("choices");
            for (int i = 0; i < choices.size(); i++) {
                Choice ch = choices.get(i);
                ObjectNode c = arr.addObject();
                c.put("index", i);
                String text = ch.text().text();
                int n = Math.min(ch.steps().size(), ch.r().tokens().length); // the steps of the tokens in the text
                String finish = ch.finish();
                if (chat) {
                    ObjectNode m = c.putObject("message");
                    m.put("role", "assistant");
                    Reply reply = reply(req, text, finish);
                    if (!reply.reasoning().isEmpty()) m.put("reasoning_content", reply.reasoning());
                    if (!reply.calls().isEmpty()) {
                        if (reply.content().isEmpty()) m.putNull("content");
                        else m.put("content", reply.content());
                        ArrayNode ta = m.putArray("tool_calls");
                        for (ChatTemplate.ToolCall tc : reply.calls()) toolCall(ta.addObject(), tc);
                        calls += reply.calls().size();
                        finish = "tool_calls";
                    } else {
                        m.put("content", reply.content());
                    }
                    if (req.logprobs() >= 0) c.set("logprobs", chatLogprobs(ch.steps().subList(0, n), req.logprobs()));
                    else c.putNull("logprobs");
                } else {
                    c.put("text", (req.echo() ? promptText(req.tokens()) : "") + text);
                    if (req.logprobs() >= 0)
                        c.set("logprobs", completionLogprobs(req.echo() ? req.tokens() : null, first.promptScores(),
                                ch.steps().subList(0, n), req.logprobs()));
                    else c.putNull("logprobs");
                }
                c.put("finish_reason", finish);
            }
            o.set("usage", usage);
            o.set("timings", timings);
            sendJson(ex, 200, o);
        }
        return String.format(Locale.ROOT, "prompt %d tokens (%d cached), %d generated, %.1f tokens/s, %s%s%s%s",
                req.tokens().length, first.reused(), completion, r.decodeTokensPerSecond(), first.finish(),
                choices.size() > 1 ? " (" + choices.size() + " choices)" : "", batched ? " (batched)" : "",
                calls > 0 ? " (" + calls + " tool call" + (calls > 1 ? "s" : "") + ")" : "");
    }

    /** A whole (not streamed) reply: its content, the reasoning split off it, the tool calls parsed out of it. */
    private record Reply(String content, String reasoning, List<ChatTemplate.ToolCall> calls) {}

    /**
     * Splits a finished reply's text: the reasoning off the front when the request thinks, then the tool calls when it
     * has tools and the reply stopped on its own (the content is then what surrounds the calls).
     */
    private static Reply reply(Request req, String text, String finish) {
        String reasoning = "";
        if (req.thinking() != null) {
            Reasoning.Split sp = Reasoning.split(text, req.thinking().open());
            reasoning = sp.reasoning();
            text = sp.content();
        }
        ToolCalls.Parsed parsed = req.tools() != null && finish.equals("stop") ? ToolCalls.parse(text, req.tools().names()) : null;
        if (parsed == null || !parsed.hasCalls()) return new Reply(text, reasoning, List.of());
        return new Reply(parsed.content(), reasoning, ToolCalls.withIds(firstOnly(parsed.calls(), req.tools()), req.tools().style()));
    }

    /** Ends a streamed reply: what its stop-text guard still held back goes out, then its tool calls; returns their count. */
    private static int finishStream(Stream stream, Choice first) {
        String tail = first.text().hit() ? "" : first.text().rest();
        if (!tail.isEmpty()) stream.text(tail);
        return stream.endTools(first.finish());
    }

    /** The calls a reply keeps: all of them, or the first when the request turned parallel calls off. */
    private static List<ChatTemplate.ToolCall> firstOnly(List<ChatTemplate.ToolCall> calls, Tools tools) {
        return tools.parallel() || calls.size() <= 1 ? calls : calls.subList(0, 1);
    }

    /** OpenAI's {@code {"id", "type": "function", "function": {"name", "arguments"}}}. */
    private static void toolCall(ObjectNode o, ChatTemplate.ToolCall tc) {
        o.put("id", tc.id());
        o.put("type", "function");
        ObjectNode f = o.putObject("function");
        f.put("name", tc.name());
        f.put("arguments", tc.arguments());
    }

    // ---- Anthropic Messages API ----------------------------------------------------------------------------------

    /**
     * {@code POST /v1/messages}, Anthropic's Messages API over the chat machinery (what Claude-style clients and SDKs
     * call): {@code system} (a string or text blocks), {@code messages} (user / assistant, content a string or blocks:
     * text, tool_use, tool_result, thinking), {@code tools} ({@code {"name", "description", "input_schema"}}), {@code
     * tool_choice} (auto, any, tool, none; {@code disable_parallel_tool_use}), {@code max_tokens}, {@code
     * stop_sequences}, {@code temperature}, {@code top_p}, {@code top_k}, {@code thinking} ({@code {"type": "disabled"}}
     * passes {@code enable_thinking: false} to the template), {@code stream} (message_start ... message_stop) and
     * tokenpress's {@code kv}. The answer's content holds thinking, text and tool_use blocks; {@code stop_reason} is
     * end_turn, max_tokens, stop_sequence or tool_use. Errors come in Anthropic's shape.
     */
    private String messages(HttpExchange ex, JsonNode body) throws IOException {
        ObjectNode chat = anthropicChatBody(body);
        String id = "msg_" + Long.toHexString(System.nanoTime()) + ids.incrementAndGet();
        Run run = run(() -> chatRequest(chat), rq -> {
            if (!rq.stream()) return null;
            Stream st = new Stream(ex, id, System.currentTimeMillis() / 1000, true);
            st.tools = rq.tools();
            if (rq.thinking() != null) st.splitter = new Reasoning.Splitter(rq.thinking().open());
            st.responses = new AnthropicEvents(st, id, rq.tokens().length);
            return st;
        });
        Request req = run.req();
        Choice first = run.choices().get(0);
        GenerationResult r = first.r();
        String stopSeq = first.text().hit() || r.stopReason().equals("stop")
                ? firstHit(req.stop(), tp.tokenizer().decode(r.tokens()), first.text().text()) : "";
        int calls;
        String stopReason;
        if (run.stream() != null) {
            Stream stream = run.stream();
            calls = finishStream(stream, first);
            stopReason = calls > 0 ? "tool_use" : first.finish().equals("length") ? "max_tokens" : !stopSeq.isEmpty() ? "stop_sequence" : "end_turn";
            ((AnthropicEvents) stream.responses).end(stopReason, stopSeq.isEmpty() ? null : stopSeq,
                    req.tokens().length - first.reused(), first.reused(), r.tokens().length);
        } else {
            Reply reply = reply(req, first.text().text(), first.finish());
            String text = reply.content(), reasoning = reply.reasoning();
            List<ChatTemplate.ToolCall> tcs = reply.calls();
            calls = tcs.size();
            stopReason = calls > 0 ? "tool_use" : first.finish().equals("length") ? "max_tokens" : !stopSeq.isEmpty() ? "stop_sequence" : "end_turn";
            ObjectNode o = JSON.createObjectNode();
            o.put("id", id);
            o.put("type", "message");
            o.put("role", "assistant");
            o.put("model", options.modelName());
            ArrayNode content = o.putArray("content");
            if (!reasoning.isEmpty()) content.addObject().put("type", "thinking").put("thinking", reasoning).put("signature", "");
            if (!text.isEmpty()) content.addObject().put("type", "text").put("text", text);
            for (ChatTemplate.ToolCall tc : tcs) toolUse(content.addObject(), tc);
            o.put("stop_reason", stopReason);
            if (stopReason.equals("stop_sequence")) o.put("stop_sequence", stopSeq);
            else o.putNull("stop_sequence");
            ObjectNode usage = o.putObject("usage"); // Anthropic's prompt = input + cache_creation + cache_read tokens
            usage.put("input_tokens", req.tokens().length - first.reused());
            usage.put("cache_creation_input_tokens", 0);
            usage.put("cache_read_input_tokens", first.reused());
            usage.put("output_tokens", r.tokens().length);
            sendJson(ex, 200, o);
        }
        return String.format(Locale.ROOT, "messages: prompt %d tokens (%d cached), %d generated, %s%s", req.tokens().length,
                first.reused(), r.tokens().length, stopReason, run.batched() ? " (batched)" : "");
    }

    private static void toolUse(ObjectNode o, ChatTemplate.ToolCall tc) {
        o.put("type", "tool_use");
        o.put("id", tc.id());
        o.put("name", tc.name());
        try {
            o.set("input", JSON.readTree(tc.arguments()));
        } catch (IOException e) {
            o.putObject("input");
        }
    }

    /** A Messages request as a chat completions request (see {@link #messages}). */
    private ObjectNode anthropicChatBody(JsonNode b) {
        ObjectNode c = JSON.createObjectNode();
        ArrayNode msgs = c.putArray("messages");
        JsonNode sys = b.get("system");
        if (sys != null && !sys.isNull()) msgs.addObject().put("role", "system").put("content", anthropicText(sys, "system"));
        JsonNode in = b.get("messages");
        if (in == null || !in.isArray() || in.isEmpty()) throw ApiException.badRequest("'messages' must be a non-empty list");
        for (JsonNode m : in) {
            String role = m.path("role").asText("");
            if (!role.equals("user") && !role.equals("assistant"))
                throw ApiException.badRequest("message role '" + role + "' is not supported: user or assistant");
            JsonNode content = m.get("content");
            if (content == null || content.isNull()) throw ApiException.badRequest("a message needs 'content'");
            if (content.isTextual()) {
                msgs.addObject().put("role", role).put("content", content.asText());
                continue;
            }
            if (!content.isArray()) throw ApiException.badRequest("message content must be a string or a list of blocks");
            StringBuilder text = new StringBuilder(), thinking = new StringBuilder();
            ArrayNode toolCalls = null;
            for (JsonNode block : content) {
                String type = block.path("type").asText("");
                switch (type) {
                    case "text" -> text.append(block.path("text").asText(""));
                    case "thinking" -> {
                        if (!role.equals("assistant")) throw ApiException.badRequest("a thinking block belongs to an assistant message");
                        thinking.append(block.path("thinking").asText(""));
                    }
                    case "redacted_thinking" -> { }
                    case "tool_use" -> {
                        if (!role.equals("assistant")) throw ApiException.badRequest("a tool_use block belongs to an assistant message");
                        if (toolCalls == null) toolCalls = JSON.createArrayNode();
                        ObjectNode tc = toolCalls.addObject();
                        tc.put("id", block.path("id").asText(""));
                        tc.put("type", "function");
                        JsonNode input = block.get("input");
                        tc.putObject("function").put("name", block.path("name").asText(""))
                                .put("arguments", input == null || input.isNull() ? "{}" : input.toString());
                    }
                    case "tool_result" -> {
                        if (!role.equals("user")) throw ApiException.badRequest("a tool_result block belongs to a user message");
                        JsonNode rc = block.get("content");
                        String result = rc == null || rc.isNull() ? "" : anthropicText(rc, "tool_result content");
                        if (block.path("is_error").asBoolean(false)) result = "Error: " + result;
                        msgs.addObject().put("role", "tool").put("tool_call_id", block.path("tool_use_id").asText("")).put("content", result);
                    }
                    default -> throw ApiException.badRequest("content block type '" + type + "' is not supported: text, thinking, tool_use or tool_result");
                }
            }
            if (role.equals("assistant")) {
                ObjectNode a = msgs.addObject().put("role", "assistant").put("content", text.toString());
                if (toolCalls != null) a.set("tool_calls", toolCalls);
                if (!thinking.isEmpty()) a.put("reasoning_content", thinking.toString());
            } else if (!text.isEmpty()) {
                msgs.addObject().put("role", "user").put("content", text.toString());
            } else if (!hasToolResult(content)) {
                throw ApiException.badRequest("a user message needs text or tool_result blocks");
            }
        }
        // an empty final assistant message prefills nothing: a new turn
        JsonNode lastMsg = msgs.get(msgs.size() - 1);
        if (lastMsg.path("role").asText().equals("assistant") && lastMsg.path("content").asText("").isEmpty()
                && !lastMsg.has("tool_calls") && !lastMsg.has("reasoning_content"))
            msgs.remove(msgs.size() - 1);
        JsonNode tools = b.get("tools");
        if (tools != null && !tools.isNull()) {
            if (!tools.isArray()) throw ApiException.badRequest("'tools' must be a list");
            ArrayNode ct = c.putArray("tools");
            for (JsonNode t : tools) {
                if (t.has("type") && !t.path("type").asText().equals("custom"))
                    throw ApiException.badRequest("tool type '" + t.path("type").asText() + "' is not supported: only client tools with an input_schema");
                ObjectNode f = ct.addObject().put("type", "function").putObject("function");
                f.set("name", t.get("name"));
                if (t.has("description")) f.set("description", t.get("description"));
                if (t.has("input_schema")) f.set("parameters", t.get("input_schema"));
            }
        }
        JsonNode choice = b.get("tool_choice");
        if (choice != null && choice.isObject()) {
            switch (choice.path("type").asText("auto")) {
                case "auto" -> c.put("tool_choice", "auto");
                case "any" -> c.put("tool_choice", "required");
                case "none" -> c.put("tool_choice", "none");
                case "tool" -> c.putObject("tool_choice").put("type", "function").putObject("function").put("name", choice.path("name").asText(""));
                default -> throw ApiException.badRequest("tool_choice type '" + choice.path("type").asText() + "' is not supported: auto, any, tool or none");
            }
            if (choice.path("disable_parallel_tool_use").asBoolean(false)) c.put("parallel_tool_calls", false);
        }
        if (b.has("max_tokens")) c.set("max_tokens", b.get("max_tokens"));
        if (b.has("stop_sequences")) c.set("stop", b.get("stop_sequences"));
        if (b.has("stream")) c.set("stream", b.get("stream"));
        passSampling(b, c);
        ObjectNode kwargs = b.path("chat_template_kwargs").isObject() ? ((ObjectNode) b.get("chat_template_kwargs")).deepCopy() : JSON.createObjectNode();
        String thinkingType = b.path("thinking").path("type").asText("");
        if (thinkingType.equals("disabled")) kwargs.put("enable_thinking", false);
        if (thinkingType.equals("enabled")) kwargs.put("enable_thinking", true);
        if (!kwargs.isEmpty()) c.set("chat_template_kwargs", kwargs);
        return c;
    }

    private static boolean hasToolResult(JsonNode blocks) {
        for (JsonNode b : blocks) if (b.path("type").asText("").equals("tool_result")) return true;
        return false;
    }

    /** The sampling fields (OpenAI's and llama.cpp's), kv, lookup, logit_bias, ignore_eos and reasoning_format, as given. */
    private static final String[] SAMPLING_FIELDS = {"temperature", "top_p", "top_k", "min_p", "typical_p", "seed",
            "presence_penalty", "frequency_penalty", "repeat_penalty", "repeat_last_n", "mirostat", "mirostat_tau",
            "mirostat_eta", "dynatemp_range", "dynatemp_exponent", "xtc_probability", "xtc_threshold", "top_n_sigma",
            "dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n", "dry_sequence_breakers", "kv",
            "lookup", "logit_bias", "ignore_eos", "reasoning_format", "cache_prompt", "stop_token_ids", "repetition_penalty"};

    private static void passSampling(JsonNode from, ObjectNode to) {
        for (String k : SAMPLING_FIELDS) if (from.has(k)) to.set(k, from.get(k));
    }

    /** Text of a string or a list of text blocks. */
    private static String anthropicText(JsonNode n, String what) {
        if (n.isTextual()) return n.asText();
        if (!n.isArray()) throw ApiException.badRequest("'" + what + "' must be a string or a list of text blocks");
        StringBuilder sb = new StringBuilder();
        for (JsonNode block : n) {
            if (!block.path("type").asText("").equals("text"))
                throw ApiException.badRequest("'" + what + "' block type '" + block.path("type").asText() + "' is not supported: only text");
            sb.append(block.path("text").asText(""));
        }
        return sb.toString();
    }

    /** Anthropic's streamed events: message_start, content blocks (thinking, text, tool_use) with deltas, message_delta, message_stop. */
    private final class AnthropicEvents implements ReplyEvents {
        private final Stream st;
        private final String id;
        private final int inputTokens;
        private int index = -1;       // the current block's index
        private String open;          // the open block's type (null = none)

        AnthropicEvents(Stream st, String id, int inputTokens) {
            this.st = st;
            this.id = id;
            this.inputTokens = inputTokens;
        }

        private ObjectNode ev(String type) {
            ObjectNode e = JSON.createObjectNode();
            e.put("type", type);
            return e;
        }

        private void send(ObjectNode e) {
            st.event(e.get("type").asText(), e);
        }

        public void begin() {
            ObjectNode e = ev("message_start");
            ObjectNode m = e.putObject("message");
            m.put("id", id);
            m.put("type", "message");
            m.put("role", "assistant");
            m.put("model", options.modelName());
            m.putArray("content");
            m.putNull("stop_reason");
            m.putNull("stop_sequence");
            // the cache's share is known once generation starts: message_delta carries the final counts
            m.putObject("usage").put("input_tokens", inputTokens).put("cache_creation_input_tokens", 0)
                    .put("cache_read_input_tokens", 0).put("output_tokens", 0);
            send(e);
        }

        private void openBlock(String type, ObjectNode block) {
            if (type.equals(open)) return;
            closeBlock();
            index++;
            open = type;
            ObjectNode e = ev("content_block_start");
            e.put("index", index);
            e.set("content_block", block);
            send(e);
        }

        private void closeBlock() {
            if (open == null) return;
            if (open.equals("thinking")) { // Anthropic's thinking blocks end with a signature (none here: nothing to verify)
                ObjectNode s = ev("content_block_delta");
                s.put("index", index);
                s.putObject("delta").put("type", "signature_delta").put("signature", "");
                send(s);
            }
            ObjectNode e = ev("content_block_stop");
            e.put("index", index);
            send(e);
            open = null;
        }

        public void reasoning(String delta) {
            openBlock("thinking", JSON.createObjectNode().put("type", "thinking").put("thinking", "").put("signature", ""));
            ObjectNode e = ev("content_block_delta");
            e.put("index", index);
            e.putObject("delta").put("type", "thinking_delta").put("thinking", delta);
            send(e);
        }

        public void text(String delta) {
            if (delta.isEmpty()) return;
            openBlock("text", JSON.createObjectNode().put("type", "text").put("text", ""));
            ObjectNode e = ev("content_block_delta");
            e.put("index", index);
            e.putObject("delta").put("type", "text_delta").put("text", delta);
            send(e);
        }

        public void calls(List<ChatTemplate.ToolCall> calls) {
            for (ChatTemplate.ToolCall tc : calls) {
                closeBlock();
                ObjectNode block = JSON.createObjectNode();
                block.put("type", "tool_use");
                block.put("id", tc.id());
                block.put("name", tc.name());
                block.putObject("input");
                openBlock("tool_use:" + tc.id(), block);
                ObjectNode e = ev("content_block_delta");
                e.put("index", index);
                e.putObject("delta").put("type", "input_json_delta").put("partial_json", tc.arguments());
                send(e);
            }
        }

        void end(String stopReason, String stopSequence, int inputTokens, int cached, int outputTokens) {
            closeBlock();
            ObjectNode e = ev("message_delta");
            ObjectNode d = e.putObject("delta");
            d.put("stop_reason", stopReason);
            if (stopSequence != null) d.put("stop_sequence", stopSequence);
            else d.putNull("stop_sequence");
            e.putObject("usage").put("input_tokens", inputTokens).put("cache_creation_input_tokens", 0)
                    .put("cache_read_input_tokens", cached).put("output_tokens", outputTokens);
            send(e);
            send(ev("message_stop"));
        }

        public void failed(String message) {
            ObjectNode e = ev("error");
            e.putObject("error").put("type", message.contains("shutting down") ? "overloaded_error" : "api_error").put("message", message);
            send(e);
        }
    }

    // ---- OpenAI Responses API ------------------------------------------------------------------------------------

    /** A streamed chat reply in another API's events: its reasoning, answer text and tool calls as they come. */
    private interface ReplyEvents {
        void begin();

        void reasoning(String delta);

        void text(String delta);

        void calls(List<ChatTemplate.ToolCall> calls);

        void failed(String message);
    }

    /**
     * {@code POST /v1/responses}, OpenAI's Responses API over the chat machinery: {@code input} (a string, or a list
     * of items: messages with string or {@code input_text}/{@code output_text} parts, {@code function_call} and
     * {@code function_call_output}), {@code instructions} (a system message), {@code tools} (function tools, flat
     * {@code {"type": "function", "name", "description", "parameters"}}), {@code tool_choice}, {@code
     * parallel_tool_calls}, {@code max_output_tokens}, {@code temperature}, {@code top_p}, {@code text.format}
     * (json_object / json_schema), {@code stream} (named events: response.created ... response.completed) and the
     * sampling and {@code kv} fields the chat endpoint takes. The answer's {@code output} holds a reasoning item (a
     * thinking model's reasoning), a message with {@code output_text}, and {@code function_call} items. Nothing is
     * stored: {@code previous_response_id} is refused (send the whole conversation).
     */
    private String responses(HttpExchange ex, JsonNode body) throws IOException {
        ObjectNode chat = chatBodyOf(body);
        String id = "resp_" + Long.toHexString(System.nanoTime()) + ids.incrementAndGet();
        long created = System.currentTimeMillis() / 1000;
        Run run = run(() -> chatRequest(chat), rq -> {
            if (!rq.stream()) return null;
            Stream st = new Stream(ex, id, created, true);
            st.tools = rq.tools();
            if (rq.thinking() != null) st.splitter = new Reasoning.Splitter(rq.thinking().open());
            st.responses = new ResponseEvents(st, id, created, body);
            return st;
        });
        Request req = run.req();
        Choice first = run.choices().get(0);
        GenerationResult r = first.r();
        ObjectNode usage = JSON.createObjectNode();
        usage.put("input_tokens", req.tokens().length);
        usage.putObject("input_tokens_details").put("cached_tokens", first.reused());
        usage.put("output_tokens", r.tokens().length);
        usage.put("total_tokens", req.tokens().length + r.tokens().length);
        boolean cut = first.finish().equals("length");
        int calls;
        if (run.stream() != null) {
            Stream stream = run.stream();
            calls = finishStream(stream, first);
            ((ResponseEvents) stream.responses).completed(cut, usage);
        } else {
            Reply reply = reply(req, first.text().text(), first.finish());
            String text = reply.content(), reasoning = reply.reasoning();
            List<ChatTemplate.ToolCall> tcs = reply.calls();
            ArrayNode output = JSON.createArrayNode();
            if (!reasoning.isEmpty()) output.add(reasoningItem("rs_" + id, reasoning));
            if (!text.isEmpty() || tcs.isEmpty()) output.add(messageItem("msg_" + id, text, "completed"));
            for (ChatTemplate.ToolCall tc : tcs) output.add(functionCallItem("fc_" + tc.id(), tc, "completed"));
            calls = tcs.size();
            reasoningTokens(usage, reasoning);
            sendJson(ex, 200, responseObject(id, created, body, cut ? "incomplete" : "completed", output, usage, cut));
        }
        return String.format(Locale.ROOT, "responses: prompt %d tokens (%d cached), %d generated, %s%s%s", req.tokens().length,
                first.reused(), r.tokens().length, first.finish(), run.batched() ? " (batched)" : "",
                calls > 0 ? " (" + calls + " tool call" + (calls > 1 ? "s" : "") + ")" : "");
    }

    /** Adds output_tokens_details.reasoning_tokens: the tokens of the reasoning text (at most the output's). */
    private void reasoningTokens(ObjectNode usage, String reasoning) {
        int n = reasoning.isEmpty() ? 0 : tp.tokenizer().encodeNoSpecial(reasoning).length;
        usage.putObject("output_tokens_details").put("reasoning_tokens", Math.min(n, usage.path("output_tokens").asInt()));
    }

    /** A Responses request as a chat completions request (see {@link #responses}). */
    private ObjectNode chatBodyOf(JsonNode b) {
        if (b.hasNonNull("previous_response_id"))
            throw ApiException.badRequest("'previous_response_id': this server stores no responses; send the whole conversation in 'input'");
        ObjectNode c = JSON.createObjectNode();
        ArrayNode msgs = c.putArray("messages");
        JsonNode instr = b.get("instructions");
        if (instr != null && !instr.isNull()) {
            if (!instr.isTextual()) throw ApiException.badRequest("'instructions' must be a string");
            msgs.addObject().put("role", "system").put("content", instr.asText());
        }
        JsonNode in = b.get("input");
        if (in == null || in.isNull()) throw ApiException.badRequest("'input' is required: a string or a list of items");
        if (in.isTextual()) {
            msgs.addObject().put("role", "user").put("content", in.asText());
        } else if (in.isArray()) {
            ObjectNode callHolder = null; // the assistant message that collects consecutive function calls
            String reasoning = null;      // a reasoning item's text, for the assistant message that follows it
            for (JsonNode item : in) {
                String type = item.path("type").asText(item.has("role") ? "message" : "");
                switch (type) {
                    case "message" -> {
                        String role = item.path("role").asText("");
                        if (!Set.of("user", "system", "developer", "assistant").contains(role))
                            throw ApiException.badRequest("input message role '" + role + "' is not supported: user, system, developer or assistant");
                        ObjectNode m = msgs.addObject().put("role", role);
                        m.put("content", itemText(item.get("content")));
                        if (role.equals("assistant") && reasoning != null) m.put("reasoning_content", reasoning);
                        reasoning = null;
                        callHolder = role.equals("assistant") ? m : null;
                    }
                    case "function_call" -> {
                        if (callHolder == null) {
                            callHolder = msgs.addObject().put("role", "assistant");
                            callHolder.putNull("content");
                            if (reasoning != null) callHolder.put("reasoning_content", reasoning);
                            reasoning = null;
                        }
                        ArrayNode tcs = callHolder.has("tool_calls") ? (ArrayNode) callHolder.get("tool_calls") : callHolder.putArray("tool_calls");
                        ObjectNode tc = tcs.addObject();
                        tc.put("id", item.path("call_id").asText(""));
                        tc.put("type", "function");
                        tc.putObject("function").put("name", item.path("name").asText("")).put("arguments", item.path("arguments").asText("{}"));
                    }
                    case "function_call_output" -> {
                        JsonNode out = item.get("output");
                        msgs.addObject().put("role", "tool").put("tool_call_id", item.path("call_id").asText(""))
                                .put("content", out == null || out.isNull() ? "" : out.isTextual() ? out.asText() : itemText(out));
                        callHolder = null;
                    }
                    case "reasoning" -> { // the reasoning of the assistant message or calls that follow: its text, else its summary
                        StringBuilder t = new StringBuilder();
                        for (JsonNode part : item.path("content")) t.append(part.path("text").asText(""));
                        if (t.isEmpty()) for (JsonNode part : item.path("summary")) t.append(part.path("text").asText(""));
                        reasoning = t.toString();
                        callHolder = null;
                    }
                    default -> throw ApiException.badRequest("input item type '" + type + "' is not supported: message, function_call, function_call_output or reasoning");
                }
            }
        } else {
            throw ApiException.badRequest("'input' must be a string or a list of items");
        }
        JsonNode tools = b.get("tools");
        if (tools != null && !tools.isNull()) {
            if (!tools.isArray()) throw ApiException.badRequest("'tools' must be a list");
            ArrayNode ct = c.putArray("tools");
            for (JsonNode t : tools) {
                if (!t.path("type").asText("").equals("function"))
                    throw ApiException.badRequest("tool type '" + t.path("type").asText() + "' is not supported: only function tools");
                ObjectNode f = ct.addObject().put("type", "function").putObject("function");
                f.set("name", t.get("name"));
                if (t.has("description")) f.set("description", t.get("description"));
                if (t.has("parameters")) f.set("parameters", t.get("parameters"));
            }
        }
        JsonNode choice = b.get("tool_choice");
        if (choice != null && !choice.isNull()) {
            if (choice.isObject() && choice.path("type").asText("").equals("function"))
                c.putObject("tool_choice").put("type", "function").putObject("function").put("name", choice.path("name").asText(""));
            else c.set("tool_choice", choice);
        }
        JsonNode fmt = b.path("text").path("format");
        if (fmt.isObject()) {
            switch (fmt.path("type").asText("text")) {
                case "text" -> { }
                case "json_object" -> c.putObject("response_format").put("type", "json_object");
                case "json_schema" -> {
                    ObjectNode rf = c.putObject("response_format").put("type", "json_schema");
                    rf.putObject("json_schema").set("schema", fmt.get("schema"));
                }
                default -> throw ApiException.badRequest("text.format type '" + fmt.path("type").asText() + "' is not supported: text, json_object or json_schema");
            }
        }
        c.put("continue_final_message", false); // the Responses API has no prefill: a final assistant message gets a new one
        if (b.has("max_output_tokens")) c.set("max_tokens", b.get("max_output_tokens"));
        for (String k : new String[] {"stream", "parallel_tool_calls", "stop", "chat_template_kwargs"})
            if (b.has(k)) c.set(k, b.get(k));
        passSampling(b, c);
        return c;
    }

    /** The text of a Responses message's content: a string, or parts of type input_text / output_text / text. */
    private static String itemText(JsonNode c) {
        if (c == null || c.isNull()) return "";
        if (c.isTextual()) return c.asText();
        if (!c.isArray()) throw ApiException.badRequest("message content must be a string or a list of text parts");
        StringBuilder sb = new StringBuilder();
        for (JsonNode part : c) {
            String t = part.path("type").asText("");
            if (!t.equals("input_text") && !t.equals("output_text") && !t.equals("text"))
                throw ApiException.badRequest("content part type '" + t + "' is not supported: only text");
            sb.append(part.path("text").asText(""));
        }
        return sb.toString();
    }

    private static ObjectNode messageItem(String id, String text, String status) {
        ObjectNode m = JSON.createObjectNode();
        m.put("id", id);
        m.put("type", "message");
        m.put("status", status);
        m.put("role", "assistant");
        ArrayNode content = m.putArray("content");
        if (text != null) content.addObject().put("type", "output_text").put("text", text).putArray("annotations");
        return m;
    }

    private static ObjectNode reasoningItem(String id, String text) {
        ObjectNode m = JSON.createObjectNode();
        m.put("id", id);
        m.put("type", "reasoning");
        m.putArray("summary");
        m.putArray("content").addObject().put("type", "reasoning_text").put("text", text);
        return m;
    }

    private static ObjectNode functionCallItem(String id, ChatTemplate.ToolCall tc, String status) {
        ObjectNode f = JSON.createObjectNode();
        f.put("id", id);
        f.put("type", "function_call");
        f.put("status", status);
        f.put("call_id", tc.id());
        f.put("name", tc.name());
        f.put("arguments", tc.arguments());
        return f;
    }

    private ObjectNode responseObject(String id, long created, JsonNode req, String status, ArrayNode output, ObjectNode usage,
                                      boolean cut) {
        ObjectNode o = JSON.createObjectNode();
        o.put("id", id);
        o.put("object", "response");
        o.put("created_at", created);
        o.put("status", status);
        o.put("model", options.modelName());
        o.set("output", output);
        if (cut) o.putObject("incomplete_details").put("reason", "max_output_tokens");
        else o.putNull("incomplete_details");
        o.putNull("error");
        o.set("instructions", req.has("instructions") ? req.get("instructions") : com.fasterxml.jackson.databind.node.NullNode.getInstance());
        o.set("max_output_tokens", req.has("max_output_tokens") ? req.get("max_output_tokens") : com.fasterxml.jackson.databind.node.NullNode.getInstance());
        o.put("parallel_tool_calls", req.path("parallel_tool_calls").asBoolean(true));
        o.set("tools", req.has("tools") ? req.get("tools") : JSON.createArrayNode());
        o.set("tool_choice", req.has("tool_choice") ? req.get("tool_choice") : com.fasterxml.jackson.databind.node.TextNode.valueOf("auto"));
        o.put("store", false);
        if (usage != null) o.set("usage", usage);
        else o.putNull("usage");
        return o;
    }

    /**
     * The Responses API's streamed events for one reply: response.created / in_progress; for a thinking model a
     * reasoning item (reasoning_text deltas); a message item (output_text deltas, opened at the first text); function
     * call items (their arguments in one delta); response.completed (or incomplete) with the whole response.
     */
    private final class ResponseEvents implements ReplyEvents {
        private final Stream st;
        private final String id;
        private final long created;
        private final JsonNode req;
        private final ArrayNode output = JSON.createArrayNode();
        private int seq;
        private ObjectNode reasoning, message;  // the open items (null = none open)
        private final StringBuilder reasoningText = new StringBuilder(), text = new StringBuilder();

        ResponseEvents(Stream st, String id, long created, JsonNode req) {
            this.st = st;
            this.id = id;
            this.created = created;
            this.req = req;
        }

        private ObjectNode ev(String type) {
            ObjectNode e = JSON.createObjectNode();
            e.put("type", type);
            e.put("sequence_number", seq++);
            return e;
        }

        private void send(ObjectNode e) {
            st.event(e.get("type").asText(), e);
        }

        public void begin() {
            ObjectNode e = ev("response.created");
            e.set("response", responseObject(id, created, req, "in_progress", JSON.createArrayNode(), null, false));
            send(e);
            e = ev("response.in_progress");
            e.set("response", responseObject(id, created, req, "in_progress", JSON.createArrayNode(), null, false));
            send(e);
        }

        public void reasoning(String delta) {
            if (reasoning == null) {
                reasoning = reasoningItem("rs_" + id, "");
                ((ArrayNode) reasoning.get("content")).removeAll();
                ObjectNode e = ev("response.output_item.added");
                e.put("output_index", output.size());
                e.set("item", reasoning.deepCopy());
                send(e);
            }
            reasoningText.append(delta);
            ObjectNode e = ev("response.reasoning_text.delta");
            e.put("item_id", reasoning.get("id").asText());
            e.put("output_index", output.size());
            e.put("content_index", 0);
            e.put("delta", delta);
            send(e);
        }

        private void closeReasoning() {
            if (reasoning == null) return;
            ObjectNode e = ev("response.reasoning_text.done");
            e.put("item_id", reasoning.get("id").asText());
            e.put("output_index", output.size());
            e.put("content_index", 0);
            e.put("text", reasoningText.toString());
            send(e);
            ObjectNode item = reasoningItem(reasoning.get("id").asText(), reasoningText.toString());
            e = ev("response.output_item.done");
            e.put("output_index", output.size());
            e.set("item", item);
            send(e);
            output.add(item);
            reasoning = null;
        }

        public void text(String delta) {
            openMessage();
            if (delta.isEmpty()) return;
            text.append(delta);
            ObjectNode e = ev("response.output_text.delta");
            e.put("item_id", message.get("id").asText());
            e.put("output_index", output.size());
            e.put("content_index", 0);
            e.put("delta", delta);
            e.putArray("logprobs");
            send(e);
        }

        private void openMessage() {
            closeReasoning();
            if (message == null) {
                message = messageItem("msg_" + id, null, "in_progress");
                ObjectNode e = ev("response.output_item.added");
                e.put("output_index", output.size());
                e.set("item", message.deepCopy());
                send(e);
                e = ev("response.content_part.added");
                e.put("item_id", message.get("id").asText());
                e.put("output_index", output.size());
                e.put("content_index", 0);
                e.putObject("part").put("type", "output_text").put("text", "").putArray("annotations");
                send(e);
            }
        }

        private void closeMessage(boolean always) {
            closeReasoning();
            if (message == null && !always) return;
            openMessage();
            String itemId = message.get("id").asText();
            ObjectNode e = ev("response.output_text.done");
            e.put("item_id", itemId);
            e.put("output_index", output.size());
            e.put("content_index", 0);
            e.put("text", text.toString());
            e.putArray("logprobs");
            send(e);
            e = ev("response.content_part.done");
            e.put("item_id", itemId);
            e.put("output_index", output.size());
            e.put("content_index", 0);
            e.putObject("part").put("type", "output_text").put("text", text.toString()).putArray("annotations");
            send(e);
            ObjectNode item = messageItem(itemId, text.toString(), "completed");
            e = ev("response.output_item.done");
            e.put("output_index", output.size());
            e.set("item", item);
            send(e);
            output.add(item);
            message = null;
        }

        public void calls(List<ChatTemplate.ToolCall> calls) {
            closeMessage(false);
            for (ChatTemplate.ToolCall tc : calls) {
                String itemId = "fc_" + tc.id();
                ObjectNode added = functionCallItem(itemId, tc, "in_progress");
                added.put("arguments", "");
                ObjectNode e = ev("response.output_item.added");
                e.put("output_index", output.size());
                e.set("item", added);
                send(e);
                e = ev("response.function_call_arguments.delta");
                e.put("item_id", itemId);
                e.put("output_index", output.size());
                e.put("delta", tc.arguments());
                send(e);
                e = ev("response.function_call_arguments.done");
                e.put("item_id", itemId);
                e.put("output_index", output.size());
                e.put("arguments", tc.arguments());
                send(e);
                ObjectNode item = functionCallItem(itemId, tc, "completed");
                e = ev("response.output_item.done");
                e.put("output_index", output.size());
                e.set("item", item);
                send(e);
                output.add(item);
            }
        }

        void completed(boolean cut, ObjectNode usage) {
            boolean hasCalls = false;
            for (JsonNode item : output) hasCalls |= item.path("type").asText().equals("function_call");
            closeMessage(!hasCalls);
            reasoningTokens(usage, reasoningText.toString());
            ObjectNode e = ev(cut ? "response.incomplete" : "response.completed");
            e.set("response", responseObject(id, created, req, cut ? "incomplete" : "completed", output, usage, cut));
            send(e);
        }

        public void failed(String message) {
            ObjectNode e = ev("error");
            e.put("code", "server_error");
            e.put("message", message);
            send(e);
            e = ev("response.failed");
            ObjectNode r = responseObject(id, created, req, "failed", output, null, false);
            r.putObject("error").put("code", "server_error").put("message", message);
            e.set("response", r);
            send(e);
        }
    }

    /**
     * {@code POST /v1/embeddings}: OpenAI's shape ({@code input}: a string, a list of strings, a list of token ids or a
     * list of such lists; {@code encoding_format} float or base64), pooled as {@code pooling} says (last or mean;
     * default last) and L2-normalized unless {@code normalize} is false ({@link Embeddings}).
     */
    private String embeddings(HttpExchange ex, JsonNode b) throws IOException {
        JsonNode in = b.get("input");
        List<int[]> inputs = new ArrayList<>();
        if (in != null && in.isTextual()) inputs.add(tp.tokenizer().encode(in.asText()));
        else if (in != null && in.isArray() && in.size() > 0 && allInts(in)) inputs.add(ids(in));
        else if (in != null && in.isArray() && in.size() > 0) {
            for (JsonNode x : in) {
                if (x.isTextual()) inputs.add(tp.tokenizer().encode(x.asText()));
                else if (x.isArray() && x.size() > 0 && allInts(x)) inputs.add(ids(x));
                else throw ApiException.badRequest("'input' must be a string, a list of strings, a list of token ids or a list of such lists");
            }
        } else {
            throw ApiException.badRequest("'input' must be a string, a list of strings, a list of token ids or a list of such lists");
        }
        Embeddings.Pooling pooling;
        try {
            pooling = Embeddings.Pooling.parse(b.path("pooling").asText("last"));
        } catch (IllegalArgumentException e) {
            throw ApiException.badRequest(e.getMessage());
        }
        boolean normalize = b.path("normalize").asBoolean(true);
        String format = b.path("encoding_format").asText("float");
        if (!format.equals("float") && !format.equals("base64")) throw ApiException.badRequest("'encoding_format' must be float or base64");
        for (int[] t : inputs) {
            if (t.length == 0) throw ApiException.badRequest("an input is empty");
            if (t.length > session.contextSize())
                throw new ApiException(400, "invalid_request_error", "context_length_exceeded", "an input has " + t.length
                        + " tokens but the server's context holds " + session.contextSize());
        }
        List<float[]> vectors = new ArrayList<>();
        int tokens = 0;
        for (int[] t : inputs) { // one input at a time under the lock, so batched sequences step in between
            decoding.lock();
            try {
                if (closed) throw new ApiException(503, "server_error", null, "the server is shutting down");
                vectors.add(embedder.embed(t, pooling, normalize));
            } finally {
                decoding.unlock();
            }
            tokens += t.length;
        }
        ObjectNode o = JSON.createObjectNode();
        o.put("object", "list");
        ArrayNode data = o.putArray("data");
        for (int i = 0; i < vectors.size(); i++) {
            ObjectNode d = data.addObject();
            d.put("object", "embedding");
            d.put("index", i);
            float[] v = vectors.get(i);
            if (format.equals("base64")) {
                java.nio.ByteBuffer buf = java.nio.ByteBuffer.allocate(4 * v.length).order(java.nio.ByteOrder.LITTLE_ENDIAN);
                for (float x : v) buf.putFloat(x);
                d.put("embedding", java.util.Base64.getEncoder().encodeToString(buf.array()));
            } else {
                ArrayNode a = d.putArray("embedding");
                for (float x : v) a.add(x);
            }
        }
        o.put("model", options.modelName());
        ObjectNode usage = o.putObject("usage");
        usage.put("prompt_tokens", tokens);
        usage.put("total_tokens", tokens);
        promptTokens.add(tokens);
        sendJson(ex, 200, o);
        return inputs.size() + " inputs, " + tokens + " tokens, " + pooling.name().toLowerCase(Locale.ROOT) + " pooling";
    }

    private int[] ids(JsonNode a) {
        int[] t = new int[a.size()];
        for (int i = 0; i < t.length; i++) {
            t[i] = a.get(i).asInt();
            if (t[i] < 0 || t[i] >= tp.config().vocabSize())
                throw ApiException.badRequest("token " + t[i] + " is outside the vocabulary of " + tp.config().vocabSize());
        }
        return t;
    }

    /**
     * {@code GET /props}, llama-server's server properties: the default sampling settings, the context size, the number
     * of sequences decoded together, the model and its chat template, plus this server's KV policy and quantization.
     */
    private ObjectNode props() {
        ObjectNode o = JSON.createObjectNode();
        ObjectNode d = o.putObject("default_generation_settings");
        SamplingOptions so = options.sampling();
        d.put("n_ctx", session.contextSize());
        d.put("n_predict", options.defaultMaxTokens());
        d.put("temperature", so.temp());
        d.put("top_k", so.topK());
        d.put("top_p", so.topP());
        d.put("min_p", so.minP());
        d.put("typical_p", so.typicalP());
        d.put("repeat_last_n", so.repeatLastN());
        d.put("repeat_penalty", so.repeatPenalty());
        d.put("presence_penalty", so.presencePenalty());
        d.put("frequency_penalty", so.frequencyPenalty());
        d.put("mirostat", so.mirostat());
        d.put("mirostat_tau", so.mirostatEnt());
        d.put("mirostat_eta", so.mirostatLr());
        d.put("dry_multiplier", so.dryMultiplier());
        d.put("xtc_probability", so.xtcProbability());
        d.put("top_n_sigma", so.topNSigma());
        d.put("dynatemp_range", so.dynatempRange());
        d.put("seed", so.seed());
        o.put("total_slots", batcher == null ? 1 : options.parallel());
        o.put("model_path", tp.directory().toString());
        o.put("model_alias", options.modelName());
        o.put("chat_template", options.template() == null ? "" : options.template().toString());
        o.put("n_ctx", session.contextSize());
        o.put("kv", defaultPolicy.spec());
        o.put("kv_quant", options.quant() == null ? "none" : options.quant().spec());
        putCacheTypes(o);
        o.put("build_info", "tokenpress");
        return o;
    }

    /** How an unquantized cache stores keys and values (-ctk / -ctv); a quantized cache stores codes instead. */
    private void putCacheTypes(ObjectNode o) {
        if (options.quant() == null || options.quant().isNone()) tp.cacheTypes().forEach(o::put);
    }

    /** Adds a request's figures to the /metrics counters. */
    private void account(Request req, List<Choice> choices) {
        promptTokens.add(req.tokens().length);
        for (Choice c : choices) {
            generatedTokens.add(c.r().tokens().length);
            promptMicros.add((long) ((c.r().prefillMillis() + c.scoreMs()) * 1000));
            decodeMicros.add((long) (c.r().decodeMillis() * 1000));
            cachedTokens.add(c.reused());
        }
    }

    /** {@code GET /metrics}: Prometheus text format, names in the spirit of llama-server's and vLLM's. */
    private void metrics(HttpExchange ex) throws IOException {
        StringBuilder b = new StringBuilder();
        b.append("# HELP tokenpress_requests_total Requests answered, by endpoint and HTTP status.\n");
        b.append("# TYPE tokenpress_requests_total counter\n");
        new java.util.TreeMap<>(requestCounts).forEach((k, v) -> {
            int bar = k.lastIndexOf('|');
            b.append("tokenpress_requests_total{endpoint=\"").append(k, 0, bar).append("\",status=\"").append(k.substring(bar + 1))
                    .append("\"} ").append(v.sum()).append('\n');
        });
        counter(b, "tokenpress_prompt_tokens_total", "Prompt tokens of generation requests.", promptTokens.sum());
        counter(b, "tokenpress_prompt_tokens_cached_total", "Prompt tokens taken from the previous request's cache.", cachedTokens.sum());
        counter(b, "tokenpress_generated_tokens_total", "Tokens generated.", generatedTokens.sum());
        counter(b, "tokenpress_prompt_seconds_total", "Time spent on prompts.", promptMicros.sum() / 1e6);
        counter(b, "tokenpress_decode_seconds_total", "Time spent decoding, per sequence (batched sequences overlap).", decodeMicros.sum() / 1e6);
        gauge(b, "tokenpress_requests_processing", "Generation requests being answered.", processing.get());
        if (batcher != null) {
            long[] c = batcher.stepCounts();
            gauge(b, "tokenpress_batch_sequences", "Sequences in the continuous batch.", batcher.activeCount());
            gauge(b, "tokenpress_batch_width", "Most sequences decoded together (-np).", options.parallel());
            counter(b, "tokenpress_batch_steps_total", "Batched decode steps.", c[0]);
            counter(b, "tokenpress_batch_tokens_total", "Sequence tokens the batched steps produced.", c[1]);
            counter(b, "tokenpress_batch_prefills_total", "Prompts prefilled for the batch.", c[2]);
            counter(b, "tokenpress_batch_shared_prefills_total", "Prompts that copied the cache of a lane with the same prompt.", c[3]);
            counter(b, "tokenpress_batch_prefix_tokens_total", "Prompt tokens copied from another sequence's cache (shared prefixes).", c[4]);
        }
        if (decoding.tryLock()) { // the cache is the decoding thread's: read it between two of its steps, else the last figure
            try {
                kvBytes = session.cache().bytes();
            } finally {
                decoding.unlock();
            }
        }
        gauge(b, "tokenpress_kv_cache_bytes", "Bytes allocated for the session's KV cache.", kvBytes);
        byte[] bytes = b.toString().getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", "text/plain; version=0.0.4; charset=utf-8");
        ex.sendResponseHeaders(200, bytes.length);
        try (OutputStream os = ex.getResponseBody()) {
            os.write(bytes);
        }
    }

    private static void counter(StringBuilder b, String name, String help, double v) {
        b.append("# HELP ").append(name).append(' ').append(help).append('\n').append("# TYPE ").append(name).append(" counter\n")
                .append(name).append(' ').append(num(v)).append('\n');
    }

    private static void gauge(StringBuilder b, String name, String help, double v) {
        b.append("# HELP ").append(name).append(' ').append(help).append('\n').append("# TYPE ").append(name).append(" gauge\n")
                .append(name).append(' ').append(num(v)).append('\n');
    }

    private static String num(double v) {
        return v == Math.rint(v) && Math.abs(v) < 1e15 ? Long.toString((long) v) : Double.toString(v);
    }

    /** A generation request as it ran: the parsed request, its stream (null = none), its choices, whether batched. */
    private record Run(Request req, Stream stream, List<Choice> choices, boolean batched) {}

    /**
     * Parses a generation request under the decoding lock and runs it: alone through the session there, or, when the
     * server batches and the request is plain, as sequences of the continuous batch waited for outside the lock.
     */
    private Run run(java.util.function.Supplier<Request> parse, java.util.function.Function<Request, Stream> streamOf) {
        Request req;
        Stream stream;
        List<Choice> choices = new ArrayList<>();
        boolean batched;
        decoding.lock();
        try {
            req = parse.get();
            stream = streamOf.apply(req);
            checkContext(req);
            batched = batcher != null && batchable(req);
            if (!batched) choices.addAll(generateAlone(req, stream));
        } finally {
            decoding.unlock();
        }
        if (batched) choices.addAll(generateBatched(req, stream));
        account(req, choices);
        return new Run(req, stream, choices, batched);
    }

    private void checkContext(Request req) {
        if (req.tokens().length + 1 > session.contextSize())
            throw new ApiException(400, "invalid_request_error", "context_length_exceeded", "the prompt has "
                    + req.tokens().length + " tokens but the server's context holds " + session.contextSize()
                    + ": shorten it or start the server with a larger -c");
    }

    /**
     * {@code POST /completion}, llama-server's native completion endpoint: the request takes llama.cpp's field names
     * ({@code prompt} text or token ids, {@code n_predict}, the sampling fields, {@code stop}, {@code stream},
     * {@code cache_prompt}, grammars and the rest that /v1/completions takes); the answer is
     * {@code {"content", "stop": true, "stop_type", "stopping_word", "tokens_predicted", "tokens_evaluated", "tokens_cached",
     * "timings", ...}}, or with {@code stream} events {@code {"content": piece, "stop": false}} then that final object.
     */
    private String completeLlama(HttpExchange ex, JsonNode body) throws IOException {
        return completeLlama(ex, body, Set.of(), false);
    }

    /** As /completion, with more stop tokens ({@code extraStops}) and the {@code truncated} flag to report. */
    private String completeLlama(HttpExchange ex, JsonNode body, Set<Integer> extraStops, boolean truncated) throws IOException {
        ObjectNode b = JSON.createObjectNode();
        body.fields().forEachRemaining(e -> b.set(e.getKey(), e.getValue()));
        if (b.path("n_predict").isNumber() && b.get("n_predict").asInt() < 0) b.remove("n_predict"); // -1: the server's default
        b.remove("logprobs");
        b.remove("suffix"); // OpenAI's insertion is /v1/completions' (llama-server's endpoints have no such field)
        String id = "cmpl-" + ids.incrementAndGet();
        Run run = run(() -> {
            Request rq = completionRequest(b);
            if (rq.n() > 1) throw ApiException.badRequest("/completion makes one completion: use /v1/completions for 'n'");
            return extraStops.isEmpty() ? rq : rq.withStopTokens(extraStops);
        }, rq -> {
            if (!rq.stream()) return null;
            Stream st = new Stream(ex, id, System.currentTimeMillis() / 1000, false);
            st.llama = true;
            return st;
        });
        Request req = run.req();
        Stream stream = run.stream();
        List<Choice> choices = run.choices();
        boolean batched = run.batched();
        Choice c = choices.get(0);
        GenerationResult r = c.r();
        ObjectNode o = JSON.createObjectNode();
        o.put("content", stream != null ? "" : c.text().text());
        o.put("id_slot", 0);
        o.put("stop", true);
        o.put("model", options.modelName());
        o.put("tokens_predicted", r.tokens().length);
        o.put("tokens_evaluated", req.tokens().length);
        o.put("tokens_cached", req.tokens().length + r.tokens().length); // llama-server: the tokens the cache now holds
        String type = c.text().hit() ? "word" : r.stopReason().equals("eos") ? "eos" : r.stopReason().equals("stop") ? "word" : "limit";
        o.put("stop_type", type);
        o.put("stopping_word", c.text().hit() || type.equals("word") ? firstHit(req.stop(), tp.tokenizer().decode(r.tokens()), c.text().text()) : "");
        o.put("truncated", truncated);
        ObjectNode timings = o.putObject("timings");
        int promptN = req.tokens().length - c.reused();
        timings.put("cache_n", c.reused());
        timings.put("prompt_n", promptN);
        timings.put("prompt_ms", r.prefillMillis());
        timings.put("prompt_per_second", r.prefillMillis() <= 0 ? 0 : promptN * 1000.0 / r.prefillMillis());
        timings.put("predicted_n", r.tokens().length);
        timings.put("predicted_ms", r.decodeMillis());
        timings.put("predicted_per_second", r.decodeTokensPerSecond());
        if (stream != null) {
            String tail = c.text().hit() ? "" : c.text().rest();
            if (!tail.isEmpty()) stream.text(tail);
            stream.event(o.toString());
        } else {
            sendJson(ex, 200, o);
        }
        return String.format(Locale.ROOT, "prompt %d tokens (%d cached), %d generated, %s%s", req.tokens().length, c.reused(),
                r.tokens().length, type, batched ? " (batched)" : "");
    }

    /**
     * A code model's fill-in-the-middle tokens (-1 where it has none): prefix, suffix, middle, repository name and file
     * separator, and the tokens that end an infill besides EOS.
     */
    record Fim(int pre, int suf, int mid, int rep, int sep, Set<Integer> stops, boolean suffixFirst) {
        /** The FIM tokens of a vocabulary in the spellings of Qwen2.5-Coder, StarCoder, CodeLlama, DeepSeek-Coder and Codestral; null when it has none. */
        static Fim of(dev.tokenpress.io.HfTokenizer t) {
            boolean mistral = t.tokenId("[PREFIX]") >= 0 && t.tokenId("[SUFFIX]") >= 0; // Codestral: [SUFFIX] s [PREFIX] p
            int pre = first(t, "<|fim_prefix|>", "<fim_prefix>", "<fim-prefix>", "▁<PRE>", "<PRE>", "<｜fim▁begin｜>", "[PREFIX]");
            int suf = first(t, "<|fim_suffix|>", "<fim_suffix>", "<fim-suffix>", "▁<SUF>", "<SUF>", "<｜fim▁hole｜>", "[SUFFIX]");
            int mid = first(t, "<|fim_middle|>", "<fim_middle>", "<fim-middle>", "▁<MID>", "<MID>", "<｜fim▁end｜>", "[MIDDLE]");
            if (pre < 0 || suf < 0) return null;
            int rep = first(t, "<|repo_name|>", "<repo_name>", "<reponame>");
            int sep = first(t, "<|file_sep|>", "<file_sep>");
            Set<Integer> stops = new HashSet<>();
            for (int id : new int[] {first(t, "<|fim_pad|>", "<fim_pad>"), first(t, "▁<EOT>", "<EOT>"), rep, sep})
                if (id >= 0) stops.add(id);
            if (mistral) {
                pre = t.tokenId("[PREFIX]");
                suf = t.tokenId("[SUFFIX]");
                mid = -1;
            }
            return new Fim(pre, suf, mid, rep, sep, Set.copyOf(stops), mistral || mid < 0);
        }

        private static int first(dev.tokenpress.io.HfTokenizer t, String... names) {
            for (String n : names) {
                int id = t.tokenId(n);
                if (id >= 0) return id;
            }
            return -1;
        }
    }

    private volatile Fim fim;
    private volatile boolean fimKnown;

    /**
     * {@code POST /infill}, llama-server's fill-in-the-middle for code models (what editor plugins such as
     * llama.vim and llama.vscode call): {@code input_prefix} (text before the cursor), {@code input_suffix} (after
     * it), {@code input_extra} (more files, {@code [{"filename", "text"}]}) and {@code prompt} (the start of the middle,
     * appended to the prefix text before it is tokenized) become {@code [BOS] [<repo_name>myproject\\n
     * <file_sep>name\\n text ... <file_sep>filename\\n] <fim_prefix>prefix+prompt <fim_suffix>suffix <fim_middle>}, the
     * layout of llama-server's format_infill except that BOS comes first (llama-server puts the extra files before
     * it); a vocabulary with Mistral's [PREFIX]/[SUFFIX] (Codestral) gets {@code [BOS] [SUFFIX]suffix [PREFIX]prefix},
     * its FIM format. To fit the context less the tokens to generate (max_tokens, max_completion_tokens or n_predict; at
     * most half the context),
     * the suffix keeps its start (at least a quarter of the room, or all the prefix leaves), the prefix its end (the
     * rest), the extra files their end (what is left) — llama-server sizes these from its batch size instead; the
     * answer is /completion's ({@code truncated} says whether anything was cut). Generation also stops at the FIM
     * pad, end-of-infill, repository and file-separator tokens.
     */
    private String infill(HttpExchange ex, JsonNode body) throws IOException {
        JsonNode pr = body.get("prompt");
        if (pr != null && !pr.isNull() && !pr.isTextual()) throw ApiException.badRequest("'prompt' of /infill must be a string");
        int max = options.defaultMaxTokens();
        for (String k : new String[] {"max_tokens", "max_completion_tokens", "n_predict"}) {
            JsonNode v = body.get(k);
            if (v != null && v.canConvertToInt() && v.asInt() >= 0) max = v.asInt();
        }
        FimPrompt fp = fimPrompt(textField(body, "input_prefix") + (pr == null || pr.isNull() ? "" : pr.asText()),
                textField(body, "input_suffix"), body.get("input_extra"), max);
        ObjectNode b = JSON.createObjectNode();
        body.fields().forEachRemaining(e -> {
            if (!e.getKey().equals("input_prefix") && !e.getKey().equals("input_suffix") && !e.getKey().equals("input_extra"))
                b.set(e.getKey(), e.getValue());
        });
        ArrayNode arr = b.putArray("prompt");
        for (int id : fp.tokens()) arr.add(id);
        return completeLlama(ex, b, fp.stops(), fp.truncated()) + (fp.truncated() ? " (infill truncated)" : "");
    }

    /** A fill-in-the-middle prompt: its tokens, whether a part was cut to fit, and the tokens that end an infill. */
    private record FimPrompt(int[] tokens, boolean truncated, Set<Integer> stops) {}

    /**
     * The FIM prompt of {@code prefix} (the start of the middle included), {@code suffix} and {@code extra} files
     * (null = none), fitted into the context less {@code maxTokens} (see {@link #infill}).
     */
    private FimPrompt fimPrompt(String prefix, String suffix, JsonNode ie, int maxTokens) {
        if (!fimKnown) {
            fim = Fim.of(tp.tokenizer());
            fimKnown = true;
        }
        Fim f = fim;
        if (f == null)
            throw ApiException.badRequest("this model has no fill-in-the-middle tokens (<|fim_prefix|>, <fim_prefix>, <PRE>, "
                    + "...): infilling needs a code model trained for it, e.g. Qwen2.5-Coder, CodeLlama or DeepSeek-Coder");
        var tok = tp.tokenizer();
        List<Integer> extra = new ArrayList<>();
        if (ie != null && !ie.isNull()) {
            if (!ie.isArray()) throw ApiException.badRequest("'input_extra' must be a list of {\"filename\", \"text\"}");
            if (f.rep() >= 0) {
                extra.add(f.rep());
                for (int id : tok.encodeNoSpecial("myproject\n")) extra.add(id);
            }
            for (JsonNode chunk : ie) {
                if (!chunk.isObject() || (chunk.has("text") && !chunk.get("text").isTextual()))
                    throw ApiException.badRequest("'input_extra' items are {\"filename\": string, \"text\": string}");
                String name = chunk.path("filename").asText("tmp"), text = chunk.path("text").asText("");
                if (f.sep() >= 0) {
                    extra.add(f.sep());
                    for (int id : tok.encodeNoSpecial(name + "\n")) extra.add(id);
                } else {
                    for (int id : tok.encodeNoSpecial("\n\n--- snippet ---\n\n")) extra.add(id);
                }
                for (int id : tok.encodeNoSpecial(text)) extra.add(id);
            }
        }
        if (f.sep() >= 0 && !extra.isEmpty()) {
            extra.add(f.sep());
            for (int id : tok.encodeNoSpecial("filename\n")) extra.add(id);
        }
        int[] pre = tok.encodeNoSpecial(prefix), suf = tok.encodeNoSpecial(suffix);
        int[] bos = tok.prefixIds();
        int ctx = session.contextSize();
        int room = ctx - 1 - bos.length - 3 - Math.min(maxTokens, ctx / 2); // the markers, and room to generate
        if (room <= 0) throw ApiException.badRequest("the context of " + ctx + " tokens leaves no room for the infill: lower the tokens to generate");
        int sufTake = Math.min(suf.length, Math.max(room / 4, room - pre.length));
        int preTake = Math.min(pre.length, room - sufTake);
        int extraTake = Math.min(extra.size(), room - sufTake - preTake);
        boolean truncated = preTake < pre.length || sufTake < suf.length || extraTake < extra.size();
        List<Integer> ids = new ArrayList<>();
        for (int id : bos) ids.add(id);
        ids.addAll(extra.subList(extra.size() - extraTake, extra.size()));
        List<Integer> p = new ArrayList<>(), s = new ArrayList<>();
        p.add(f.pre());
        for (int i = pre.length - preTake; i < pre.length; i++) p.add(pre[i]);
        s.add(f.suf());
        for (int i = 0; i < sufTake; i++) s.add(suf[i]);
        if (!f.suffixFirst()) {
            ids.addAll(p);
            ids.addAll(s);
            ids.add(f.mid());
        } else { // suffix first, no middle token: Mistral's (Codestral's) [SUFFIX] ... [PREFIX] ...
            ids.addAll(s);
            ids.addAll(p);
        }
        return new FimPrompt(ids.stream().mapToInt(Integer::intValue).toArray(), truncated, f.stops());
    }

    private static String textField(JsonNode b, String key) {
        JsonNode v = b.get(key);
        if (v == null || v.isNull()) return "";
        if (!v.isTextual()) throw ApiException.badRequest("'" + key + "' must be a string");
        return v.asText();
    }

    /** The stop string that ended a text: the one found earliest from where the kept text ends ("" when none is). */
    private static String firstHit(List<String> stops, String whole, String kept) {
        String best = "";
        int at = Integer.MAX_VALUE;
        for (String st : stops) {
            if (st.isEmpty()) continue;
            int i = whole.indexOf(st, Math.max(0, kept.length() - st.length()));
            if (i >= 0 && i < at) {
                at = i;
                best = st;
            }
        }
        return best;
    }

    /**
     * {@code PUT|POST /generate}, the native endpoints of vLLM's legacy API server ({@code {"prompt": ..., "max_tokens":
     * ..., "temperature": ..., "top_k": ..., "top_p": ..., "stop": [...]}} answered with {@code {"text": [completion]}})
     * and of SGLang ({@code {"text": ..., "sampling_params": {"max_new_tokens": ..., ...}}} answered with
     * {@code {"text": completion, "meta_info": {...}}}), which benchmark harnesses such as RULER call: every other field
     * of a completions request ({@code kv}, {@code seed}, penalties) is taken as well.
     */
    private String generateNative(HttpExchange ex, JsonNode body) throws IOException {
        boolean sglang = body.has("text") && !body.has("prompt");
        ObjectNode b = JSON.createObjectNode();
        if (sglang) {
            body.fields().forEachRemaining(e -> {
                if (!e.getKey().equals("text") && !e.getKey().equals("sampling_params")) b.set(e.getKey(), e.getValue());
            });
            b.set("prompt", body.get("text"));
            JsonNode sp = body.path("sampling_params");
            if (sp.isObject())
                sp.fields().forEachRemaining(e -> b.set(e.getKey().equals("max_new_tokens") ? "max_tokens" : e.getKey(), e.getValue()));
        } else {
            body.fields().forEachRemaining(e -> b.set(e.getKey(), e.getValue()));
        }
        if (b.path("stream").asBoolean(false)) throw ApiException.badRequest("/generate answers without streaming: drop 'stream'");
        b.remove("stream");
        if (b.path("top_k").isNumber() && b.get("top_k").asInt() < 0) b.put("top_k", 0); // vLLM's -1 = off
        Run run = run(() -> completionRequest(b), rq -> null);
        Request req = run.req();
        List<Choice> choices = run.choices();
        boolean batched = run.batched();
        ObjectNode o = JSON.createObjectNode();
        GenerationResult r = choices.get(0).r();
        if (sglang) {
            o.put("text", choices.get(0).text().text());
            ObjectNode meta = o.putObject("meta_info");
            meta.put("prompt_tokens", req.tokens().length);
            meta.put("completion_tokens", r.tokens().length);
            meta.putObject("finish_reason").put("type", choices.get(0).finish());
        } else {
            ArrayNode a = o.putArray("text");
            for (Choice c : choices) a.add(c.text().text());
        }
        sendJson(ex, 200, o);
        return String.format(Locale.ROOT, "prompt %d tokens, %d generated, %s%s", req.tokens().length, r.tokens().length,
                choices.get(0).finish(), batched ? " (batched)" : "");
    }

    /** The request through the server's session, under the decoding lock: every choice one after the other. */
    private List<Choice> generateAlone(Request req, Stream stream) {
        tp.model().setPolicy(req.policy());
        session.setLookup(req.lookup());
        session.setOutputFormat(req.format());
        session.setGrammar(req.grammar()); // null: none
        session.setLogitBias(req.logitBias());
        session.setIgnoreEos(req.ignoreEos());
        if (req.schema() != null) session.setJsonSchema(req.schema());
        if (closed) throw new ApiException(503, "server_error", null, "the server is shutting down");
        if (stream != null) stream.begin();
        List<Choice> choices = new ArrayList<>();
        try {
            for (int i = 0; i < req.n(); i++) choices.add(generate(req, i, stream));
        } catch (RuntimeException | Error e) {
            session.reset(); // the next request starts from a clean cache
            if (stream != null) stream.error(e instanceof ApiException ? e.getMessage() : firstLine(e));
            throw e;
        }
        return choices;
    }

    /**
     * What continuous batching decodes: sampled text, free or constrained (JSON mode, a schema, a grammar, demanded
     * tool calls), without log-probabilities, echo or prompt lookup; other requests go through the session.
     */
    private static boolean batchable(Request req) {
        return req.logprobs() < 0 && !req.echo() && req.lookup() == 0;
    }

    /** The per-sequence constraint of a request's output for the batch (null = free text). */
    private java.util.function.Function<Set<Integer>, dev.tokenpress.sample.TokenConstraint> constraintOf(Request req) {
        String[] texts = tp.tokenizer().tokenTexts();
        if (req.grammar() != null) {
            dev.tokenpress.sample.Grammar g = dev.tokenpress.sample.Grammar.parse(req.grammar());
            return ends -> new dev.tokenpress.sample.GrammarConstraint(g, texts, ends, "grammar");
        }
        if (req.schema() != null) {
            dev.tokenpress.sample.Grammar g = dev.tokenpress.sample.JsonSchemaGrammar.compile(req.schema());
            return ends -> new dev.tokenpress.sample.GrammarConstraint(g, texts, ends, "json-schema");
        }
        if (req.format() != Session.OutputFormat.TEXT) {
            boolean object = req.format() == Session.OutputFormat.JSON_OBJECT;
            return ends -> new dev.tokenpress.sample.JsonConstraint(texts, ends, object);
        }
        return null;
    }

    /**
     * The request's choices as sequences of the continuous batch (choice i samples with seed + i), waited for outside
     * the decoding lock; a streamed choice's text is queued by the worker and written by this request's thread.
     */
    private List<Choice> generateBatched(Request req, Stream stream) {
        if (closed) throw new ApiException(503, "server_error", null, "the server is shutting down");
        if (stream != null) stream.begin();
        Map<Integer, Float> bias = new java.util.HashMap<>(req.logitBias());
        if (req.ignoreEos()) for (int e : tp.config().eosTokenIds()) bias.put(e, Float.NEGATIVE_INFINITY);
        List<java.util.concurrent.CompletableFuture<GenerationResult>> results = new ArrayList<>();
        java.util.concurrent.LinkedBlockingQueue<String> pieces = new java.util.concurrent.LinkedBlockingQueue<>();
        var constraint = constraintOf(req);
        try {
            for (int i = 0; i < req.n(); i++) {
                SamplingOptions so = req.sampling();
                if (i > 0 && so.seed() != SamplingOptions.RANDOM_SEED) so = so.withSeed(so.seed() + i);
                results.add(batcher.submit(new Parallel.Request(req.tokens(), req.maxTokens(), so, req.stop(),
                        stream != null ? pieces::add : null, bias, req.stopTokens(),
                        () -> closed || (stream != null && stream.gone), req.policy().spec(), constraint)));
            }
            if (stream != null) { // this thread writes the pieces, so a slow client never holds up the batch
                var f = results.get(0);
                while (!f.isDone()) {
                    String piece;
                    try {
                        piece = pieces.poll(50, java.util.concurrent.TimeUnit.MILLISECONDS);
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                        f.cancel(false);
                        break;
                    }
                    if (piece != null) stream.text(piece);
                }
                for (String piece; (piece = pieces.poll()) != null; ) stream.text(piece);
            }
            List<Choice> choices = new ArrayList<>();
            for (var f : results) {
                GenerationResult r;
                try {
                    r = f.join();
                } catch (java.util.concurrent.CompletionException e) {
                    Throwable c = e.getCause() != null ? e.getCause() : e;
                    if (c instanceof RuntimeException re) throw re;
                    if (c instanceof Error er) throw er;
                    throw e;
                }
                StopText st = new StopText(List.of());
                st.add(r.text()); // cut at its stop string already, and streamed
                String finish = r.stopReason().equals("length") || r.stopReason().equals("context") ? "length" : "stop";
                choices.add(new Choice(r, st, List.of(), null, 0, 0, finish));
            }
            return choices;
        } catch (Parallel.ClosedException e) { // the batch closed under the request
            ApiException a = new ApiException(503, "server_error", null, "the server is shutting down");
            if (stream != null) stream.error(a.getMessage());
            throw a;
        } catch (RuntimeException | Error e) {
            if (stream != null) stream.error(e instanceof ApiException ? e.getMessage() : firstLine(e));
            throw e;
        }
    }

    /**
     * Generates choice {@code index} of a request (under the lock): prompt caching first (the previous request's or
     * choice's shared prefix stays), then the prompt's scores if echo asks for them, then generation; choices after
     * the first draw with seed + index.
     */
    private Choice generate(Request req, int index, Stream sse) {
        int reused = 0;
        boolean scorePrompt = req.echo() && req.logprobs() >= 0 && index == 0; // every prompt position's logits
        if ((req.cachePrompt() || index > 0) && !scorePrompt && session.canTruncate()) {
            int[] have = session.tokens();
            int n = Math.min(have.length, req.tokens().length - 1);
            while (reused < n && have[reused] == req.tokens()[reused]) reused++;
        }
        if (reused > 0) session.truncate(reused);
        else session.reset();
        StopText st = new StopText(req.stop());
        List<StepTrace> steps = new ArrayList<>();
        Session.Score[] promptScores = null;
        double scoreMs = 0;
        int[] feed = Arrays.copyOfRange(req.tokens(), reused, req.tokens().length);
        if (scorePrompt) {
            // the prompt's log-probabilities from one prefill; generation then feeds the last prompt token
            long t0 = System.nanoTime();
            int n = req.maxTokens() == 0 ? feed.length : feed.length - 1;
            promptScores = n > 0 ? session.score(feed, n, req.logprobs()) : new Session.Score[0];
            if (n > 0) feed = Arrays.copyOfRange(feed, n, feed.length);
            scoreMs = (System.nanoTime() - t0) / 1e6;
        }
        SamplingOptions so = req.sampling();
        if (index > 0 && so.seed() != SamplingOptions.RANDOM_SEED) so = so.withSeed(so.seed() + index);
        GenerationResult r = feed.length == 0
                ? new GenerationResult("", new int[0], 0, "length", 0, 0, 0, 0, session.cache().bytes(), 0)
                : session.generate(feed, req.maxTokens(), so, piece -> {
                    String out = st.add(piece);
                    if (sse != null && !out.isEmpty()) sse.text(out);
                }, req.logprobs() >= 0 ? steps::add : null, req.stopTokens(), () -> st.hit() || (sse != null && sse.gone));
        String finish = switch (r.stopReason()) {
            case "length", "context" -> "length";
            default -> "stop";
        };
        return new Choice(r, st, steps, promptScores, scoreMs, reused, finish);
    }

    private Request completionRequest(JsonNode b) {
        JsonNode sx = b.get("suffix");
        if (sx != null && !sx.isNull() && !(sx.isTextual() && sx.asText().isEmpty())) { // OpenAI's insertion: a FIM prompt
            if (!sx.isTextual()) throw ApiException.badRequest("'suffix' must be a string");
            JsonNode p = b.get("prompt");
            if (p != null && p.isArray() && p.size() == 1 && p.get(0).isTextual()) p = p.get(0);
            if (p == null || !p.isTextual()) throw ApiException.badRequest("'suffix' needs 'prompt' as a string");
            if (b.path("echo").asBoolean(false)) throw ApiException.badRequest("'suffix' and 'echo' exclude each other");
            int max = options.defaultMaxTokens();
            for (String k : new String[] {"max_tokens", "max_completion_tokens", "n_predict"}) {
                JsonNode v = b.get(k);
                if (v != null && v.canConvertToInt() && v.asInt() >= 0) max = v.asInt();
            }
            FimPrompt fp = fimPrompt(p.asText(), sx.asText(), null, max);
            ObjectNode nb = JSON.createObjectNode();
            b.fields().forEachRemaining(e -> { if (!e.getKey().equals("suffix")) nb.set(e.getKey(), e.getValue()); });
            ArrayNode arr = nb.putArray("prompt");
            for (int id : fp.tokens()) arr.add(id);
            return completionRequest(nb).withStopTokens(fp.stops());
        }
        JsonNode p = b.get("prompt");
        int[] tokens;
        if (p != null && p.isArray() && p.size() == 1 && p.get(0).isTextual()) p = p.get(0);
        if (p != null && p.isTextual()) {
            tokens = tp.tokenizer().encode(p.asText());
        } else if (p != null && p.isArray() && p.size() > 0 && allInts(p)) {
            tokens = new int[p.size()];
            for (int i = 0; i < tokens.length; i++) {
                tokens[i] = p.get(i).asInt();
                if (tokens[i] < 0 || tokens[i] >= tp.config().vocabSize())
                    throw ApiException.badRequest("prompt token " + tokens[i] + " is outside the vocabulary of "
                            + tp.config().vocabSize());
            }
        } else {
            throw ApiException.badRequest("'prompt' must be a string, a list with one string, or a list of token ids");
        }
        if (tokens.length == 0) throw ApiException.badRequest("the prompt is empty");
        int logprobs = -1;
        JsonNode lp = b.get("logprobs");
        if (lp != null && !lp.isNull()) {
            if (!lp.canConvertToInt() || lp.asInt() < 0 || lp.asInt() > SamplerChain.TRACE_TOP_LOGPROBS)
                throw ApiException.badRequest("'logprobs' must be an integer from 0 to " + SamplerChain.TRACE_TOP_LOGPROBS);
            logprobs = lp.asInt();
        }
        return common(b, tokens, Set.of(), logprobs);
    }

    /**
     * A chat request's prompt text, the tools it offers (null when none, or when tool_choice is "none"), the grammar of
     * a demanded call (null = none), and whether it continues the last assistant message.
     */
    private record ChatPrompt(String text, Tools tools, String toolGrammar, boolean continued, ChatTemplate template) {}

    private Request chatRequest(JsonNode b) {
        ChatPrompt cp = chatPrompt(b);
        Set<Integer> stops = new HashSet<>();
        for (int id : cp.template().stopTokenIds(tp.tokenizer())) stops.add(id);
        int logprobs = -1;
        if (b.path("logprobs").asBoolean(false)) {
            JsonNode top = b.get("top_logprobs");
            logprobs = top == null || top.isNull() ? 0 : top.asInt(-1);
            if (logprobs < 0 || logprobs > SamplerChain.TRACE_TOP_LOGPROBS)
                throw ApiException.badRequest("'top_logprobs' must be an integer from 0 to " + SamplerChain.TRACE_TOP_LOGPROBS);
        } else if (b.hasNonNull("top_logprobs")) {
            throw ApiException.badRequest("'top_logprobs' needs 'logprobs': true");
        }
        Request req = common(b, tp.tokenizer().encode(cp.text()), stops, logprobs);
        if (cp.toolGrammar() != null && (req.grammar() != null || req.schema() != null || req.format() != Session.OutputFormat.TEXT))
            throw ApiException.badRequest("a tool_choice that demands a call excludes 'grammar', a schema and a JSON response_format");
        if (cp.toolGrammar() != null && req.ignoreEos())
            throw ApiException.badRequest("'ignore_eos' and a tool_choice that demands a call exclude each other");
        String rf = options.reasoningFormat();
        JsonNode rfn = b.get("reasoning_format");
        if (rfn != null && !rfn.isNull()) {
            if (!rfn.isTextual() || !REASONING_FORMATS.contains(rfn.asText()))
                throw ApiException.badRequest("'reasoning_format' must be one of " + String.join(", ", REASONING_FORMATS));
            rf = rfn.asText();
        }
        boolean constrained = cp.toolGrammar() != null || req.grammar() != null || req.schema() != null
                || req.format() != Session.OutputFormat.TEXT; // a constrained reply has no thinking block
        boolean think = !constrained && !cp.continued()
                && (rf.equals("deepseek") || (rf.equals("auto") && Reasoning.templateThinks(cp.template())));
        Thinking thinking = think ? new Thinking(Reasoning.opensThinking(cp.text())) : null;
        if (cp.tools() == null && thinking == null) return req;
        return req.withChat(cp.tools(), thinking, cp.toolGrammar() != null ? cp.toolGrammar() : req.grammar());
    }

    /**
     * The prompt of a chat request: its messages (system/developer, user, assistant with optional {@code tool_calls},
     * tool results with {@code tool_call_id}) and {@code tools} rendered by the model's template; with tools, {@code
     * tool_choice} ("auto" by default, "none", "required" or {@code {"type": "function", "function": {"name"}}}) and
     * {@code parallel_tool_calls} (default true) say whether replies are read for calls and whether a call is demanded.
     */
    private ChatPrompt chatPrompt(JsonNode b) {
        ChatTemplate t = options.template();
        JsonNode own = b.get("chat_template"); // vLLM's: a Jinja template for this request
        if (own != null && !own.isNull()) {
            if (!own.isTextual()) throw ApiException.badRequest("'chat_template' must be a Jinja template string");
            try {
                t = t == null ? ChatTemplate.fromJinja(own.asText(), null, null, "the request's chat_template")
                        : t.withTemplate(own.asText(), "the request's chat_template");
            } catch (dev.tokenpress.io.Jinja.TemplateException e) {
                throw ApiException.badRequest("'chat_template' does not parse: " + e.getMessage());
            }
        }
        if (t == null)
            throw ApiException.badRequest("this model has no known chat template: restart the server with "
                    + "--chat-template " + String.join("|", ChatTemplate.names().split(", ")) + " or use /v1/completions");
        JsonNode msgs = b.get("messages");
        if (msgs == null || !msgs.isArray() || msgs.isEmpty())
            throw ApiException.badRequest("'messages' must be a non-empty list");
        List<Message> list = new ArrayList<>();
        for (JsonNode m : msgs) {
            String role = m.path("role").asText("");
            if (role.equals("developer")) role = "system";
            if (!role.equals("system") && !role.equals("user") && !role.equals("assistant") && !role.equals("tool"))
                throw ApiException.badRequest("message role '" + role + "' is not supported: use system, developer, "
                        + "user, assistant or tool");
            List<ChatTemplate.ToolCall> calls = new ArrayList<>();
            JsonNode tc = m.get("tool_calls");
            if (tc != null && !tc.isNull()) {
                if (!role.equals("assistant") || !tc.isArray())
                    throw ApiException.badRequest("'tool_calls' is a list on an assistant message");
                for (JsonNode c : tc) {
                    JsonNode f = c.path("function");
                    if (!f.path("name").isTextual() || f.path("name").asText().isEmpty())
                        throw ApiException.badRequest("a tool call needs function.name");
                    JsonNode args = f.get("arguments");
                    String a = args == null || args.isNull() ? "{}" : args.isTextual() ? args.asText() : args.toString();
                    calls.add(new ChatTemplate.ToolCall(c.path("id").asText(""), f.get("name").asText(), a));
                }
            }
            String callId = null;
            if (role.equals("tool")) {
                JsonNode id = m.get("tool_call_id");
                callId = id != null && id.isTextual() ? id.asText() : null;
            }
            JsonNode rc = m.get("reasoning_content");
            String reasoning = role.equals("assistant") && rc != null && rc.isTextual() ? rc.asText() : null;
            list.add(new Message(role, content(m.get("content")), calls, callId, reasoning));
        }
        Message last = list.get(list.size() - 1);
        // continue_final_message (vLLM) / assistant prefill (llama-server): a final assistant message is continued unless
        // the request says false (then a new assistant turn follows it, as the Responses API wants)
        boolean lastAssistant = last.role().equals("assistant");
        if (b.path("continue_final_message").asBoolean(false) && !lastAssistant)
            throw ApiException.badRequest("'continue_final_message' needs the last message to be the assistant's");
        boolean cont = lastAssistant && b.path("continue_final_message").asBoolean(true);
        if (cont && !last.toolCalls().isEmpty())
            throw ApiException.badRequest("the last message makes tool calls: add the tools' results as tool messages");
        if (!last.role().equals("user") && !last.role().equals("tool") && !lastAssistant)
            throw ApiException.badRequest("the last message must be a user or tool message, or an assistant message to continue");
        JsonNode toolsNode = b.get("tools");
        boolean hasTools = toolsNode != null && !toolsNode.isNull() && !(toolsNode.isArray() && toolsNode.isEmpty());
        Tools tools = null;
        String toolGrammar = null;
        if (hasTools) {
            Set<String> names;
            try {
                names = ToolCalls.names(toolsNode);
            } catch (IllegalArgumentException e) {
                throw ApiException.badRequest(e.getMessage());
            }
            ToolCalls.Style style = ToolCalls.styleOf(t);
            boolean parallel = b.path("parallel_tool_calls").asBoolean(true);
            JsonNode choice = b.get("tool_choice");
            String only = null;
            boolean demand = false, read = true;
            if (choice == null || choice.isNull() || (choice.isTextual() && choice.asText().equals("auto"))) {
                demand = false;
            } else if (choice.isTextual() && choice.asText().equals("none")) {
                read = false;
            } else if (choice.isTextual() && choice.asText().equals("required")) {
                demand = true;
            } else if (choice.isObject() && choice.path("function").path("name").isTextual()) {
                demand = true;
                only = choice.get("function").get("name").asText();
                if (!names.contains(only))
                    throw ApiException.badRequest("tool_choice names the function '" + only + "', which 'tools' does not offer");
            } else {
                throw ApiException.badRequest("'tool_choice' must be \"auto\", \"none\", \"required\" or "
                        + "{\"type\": \"function\", \"function\": {\"name\": ...}}");
            }
            if (read) tools = new Tools(names, style, parallel);
            if (demand) {
                if (cont) throw ApiException.badRequest("a tool_choice that demands a call cannot continue an assistant message");
                try {
                    toolGrammar = ToolCalls.grammar(toolsNode, only, parallel, style);
                } catch (IllegalArgumentException e) {
                    throw ApiException.badRequest(e.getMessage());
                }
            }
        } else if (b.hasNonNull("tool_choice") && !b.get("tool_choice").asText("").equals("none")
                && !b.get("tool_choice").asText("").equals("auto")) {
            throw ApiException.badRequest("'tool_choice' needs 'tools'");
        }
        Map<String, Object> kwargs = new java.util.HashMap<>();
        JsonNode kw = b.get("chat_template_kwargs");
        if (kw != null && !kw.isNull()) {
            if (!kw.isObject()) throw ApiException.badRequest("'chat_template_kwargs' must be an object");
            kw.fields().forEachRemaining(e -> kwargs.put(e.getKey(), ChatTemplate.jinjaValue(e.getValue())));
        }
        String text;
        try {
            text = t.render(list, !cont, hasTools ? toolsNode : null, kwargs);
        } catch (IllegalArgumentException e) {
            throw ApiException.badRequest(e.getMessage());
        }
        if (cont) { // the reply goes on from the last assistant message: cut what the template closes its turn with
            int at = last.content().isEmpty() ? -1 : text.lastIndexOf(last.content());
            if (at < 0)
                throw ApiException.badRequest("the chat template does not show the last assistant message as given: it cannot be continued");
            text = text.substring(0, at + last.content().length());
        }
        return new ChatPrompt(text, tools, toolGrammar, cont, t);
    }

    private static String content(JsonNode c) {
        if (c == null || c.isNull()) return "";
        if (c.isTextual()) return c.asText();
        if (c.isArray()) {
            StringBuilder sb = new StringBuilder();
            for (JsonNode part : c) {
                if (!part.path("type").asText("text").equals("text"))
                    throw ApiException.badRequest("content part type '" + part.path("type").asText()
                            + "' is not supported: only text");
                sb.append(part.path("text").asText(""));
            }
            return sb.toString();
        }
        throw ApiException.badRequest("message content must be a string or a list of text parts");
    }

    private Request common(JsonNode b, int[] tokens, Set<Integer> stopTokens, int logprobs) {
        int choices = 1;
        JsonNode nn = b.get("n");
        if (nn != null && !nn.isNull()) {
            if (!nn.canConvertToInt() || nn.asInt() < 1 || nn.asInt() > 16)
                throw ApiException.badRequest("'n' must be an integer from 1 to 16");
            choices = nn.asInt();
            if (choices > 1 && b.path("stream").asBoolean(false))
                throw ApiException.badRequest("'n' > 1 works without streaming only");
        }
        if (logprobs >= 0 && b.path("stream").asBoolean(false))
            throw ApiException.badRequest("log-probabilities are returned without streaming only: drop 'stream' or 'logprobs'");
        int max = options.defaultMaxTokens();
        for (String k : new String[] {"max_tokens", "max_completion_tokens", "n_predict"}) {
            JsonNode v = b.get(k);
            if (v != null && !v.isNull()) {
                if (!v.canConvertToInt() || v.asInt() < 0) throw ApiException.badRequest("'" + k + "' must be an integer >= 0");
                max = v.asInt();
            }
        }
        SamplingOptions d = options.sampling();
        SamplingOptions so = new SamplingOptions(
                num(b, "temperature", d.temp()), (int) num(b, "top_k", d.topK()), num(b, "top_p", d.topP()),
                num(b, "min_p", d.minP()), num(b, "typical_p", d.typicalP()),
                (int) num(b, "repeat_last_n", d.repeatLastN()),
                num(b, "repeat_penalty", num(b, "repetition_penalty", d.repeatPenalty())), // vLLM's name too
                num(b, "presence_penalty", d.presencePenalty()), num(b, "frequency_penalty", d.frequencyPenalty()),
                (int) num(b, "mirostat", d.mirostat()), num(b, "mirostat_eta", d.mirostatLr()),
                num(b, "mirostat_tau", d.mirostatEnt()), b.path("seed").isIntegralNumber() ? b.get("seed").asLong()
                        : (long) num(b, "seed", d.seed()),
                num(b, "dynatemp_range", d.dynatempRange()), num(b, "dynatemp_exponent", d.dynatempExp()),
                num(b, "xtc_probability", d.xtcProbability()), num(b, "xtc_threshold", d.xtcThreshold()),
                num(b, "top_n_sigma", d.topNSigma()), num(b, "dry_multiplier", d.dryMultiplier()), num(b, "dry_base", d.dryBase()),
                (int) num(b, "dry_allowed_length", d.dryAllowedLength()), (int) num(b, "dry_penalty_last_n", d.dryPenaltyLastN()),
                strings(b, "dry_sequence_breakers", d.drySequenceBreakers()));
        String err = so.validationError();
        if (err != null) throw ApiException.badRequest(fieldNames(err));
        List<String> stop = new ArrayList<>();
        JsonNode s = b.get("stop");
        if (s != null && s.isTextual()) stop.add(s.asText());
        else if (s != null && s.isArray()) {
            for (JsonNode x : s) {
                if (!x.isTextual()) throw ApiException.badRequest("'stop' must be a string or a list of strings");
                stop.add(x.asText());
            }
        } else if (s != null && !s.isNull()) throw ApiException.badRequest("'stop' must be a string or a list of strings");
        KvPolicy policy = defaultPolicy;
        JsonNode kv = b.get("kv");
        if (kv != null && !kv.isNull()) {
            if (!kv.isTextual()) throw ApiException.badRequest("'kv' must be a policy spec string such as \"tidal:k=256\"");
            try {
                policy = KvPolicies.parse(kv.asText(), tp.config());
            } catch (IllegalArgumentException e) {
                throw ApiException.badRequest(e.getMessage());
            }
        }
        int lookup = options.lookup();
        JsonNode lk = b.get("lookup");
        if (lk != null && !lk.isNull()) {
            if (!lk.canConvertToInt() || lk.asInt() < 0 || lk.asInt() > 64)
                throw ApiException.badRequest("'lookup' must be an integer from 0 to 64");
            lookup = lk.asInt();
        }
        boolean echo = b.path("echo").asBoolean(false);
        if (echo && b.path("stream").asBoolean(false)) throw ApiException.badRequest("'echo' works without streaming only");
        Session.OutputFormat format = Session.OutputFormat.TEXT;
        String schema = null, grammar = null;
        JsonNode rf = b.get("response_format");
        if (rf != null && !rf.isNull()) {
            String type = rf.isTextual() ? rf.asText() : rf.path("type").asText("");
            switch (type) {
                case "text" -> format = Session.OutputFormat.TEXT;
                case "json_object" -> {
                    if (rf.has("schema")) schema = rf.get("schema").toString(); // llama-server's form
                    else format = Session.OutputFormat.JSON_OBJECT;
                }
                case "json" -> format = Session.OutputFormat.JSON;
                case "json_schema" -> {
                    JsonNode js = rf.path("json_schema");
                    JsonNode sc = js.has("schema") ? js.get("schema") : rf.get("schema");
                    if (sc == null || sc.isNull()) throw ApiException.badRequest("response_format json_schema needs json_schema.schema");
                    schema = sc.toString();
                }
                default -> throw ApiException.badRequest("response_format type '" + type + "' is not supported: use text, "
                        + "json_object, json_schema (or json for any JSON value)");
            }
        }
        JsonNode js = b.get("json_schema"), gr = b.get("grammar");
        if (js != null && !js.isNull()) {
            if (schema != null) throw ApiException.badRequest("give the schema once: 'json_schema' or response_format");
            schema = js.toString();
        }
        if (gr != null && !gr.isNull()) {
            if (!gr.isTextual()) throw ApiException.badRequest("'grammar' must be a string (GBNF)");
            if (schema != null || format != Session.OutputFormat.TEXT)
                throw ApiException.badRequest("'grammar' excludes a schema or a JSON response_format");
            grammar = gr.asText();
        }
        Map<Integer, Float> bias = logitBias(b.get("logit_bias"));
        boolean ignoreEos = b.path("ignore_eos").asBoolean(false);
        if (ignoreEos && (schema != null || grammar != null || format != Session.OutputFormat.TEXT))
            throw ApiException.badRequest("'ignore_eos' and constrained output exclude each other");
        try { // refuse a bad grammar or schema now, with the reason
            if (schema != null) dev.tokenpress.sample.JsonSchemaGrammar.compile(schema);
            if (grammar != null) dev.tokenpress.sample.Grammar.parse(grammar);
        } catch (IllegalArgumentException e) {
            throw ApiException.badRequest(e.getMessage());
        }
        JsonNode sti = b.get("stop_token_ids"); // vLLM's: token ids that end the text like EOS
        if (sti != null && !sti.isNull()) {
            if (!sti.isArray() || !allInts(sti)) throw ApiException.badRequest("'stop_token_ids' must be a list of token ids");
            Set<Integer> all = new HashSet<>(stopTokens);
            for (int id : ids(sti)) all.add(id);
            stopTokens = Set.copyOf(all);
        }
        return new Request(tokens, max, so, stop, b.path("stream").asBoolean(false), stopTokens,
                b.path("cache_prompt").asBoolean(true), policy, logprobs, lookup, echo, format, choices, grammar, schema,
                bias, ignoreEos, null, null);
    }

    /**
     * OpenAI's {@code logit_bias} ({@code {"15043": -100}}; -100 or less bans the token) or llama-server's list form
     * ({@code [[15043, -1.5], [2, false]]}, false bans).
     */
    private Map<Integer, Float> logitBias(JsonNode lb) {
        Map<Integer, Float> m = new java.util.HashMap<>();
        if (lb == null || lb.isNull()) return m;
        int v = tp.config().vocabSize();
        java.util.function.BiConsumer<String, JsonNode> put = (id, val) -> {
            int t;
            try {
                t = Integer.parseInt(id.trim());
            } catch (NumberFormatException e) {
                throw ApiException.badRequest("logit_bias: '" + id + "' is not a token id");
            }
            if (t < 0 || t >= v) throw ApiException.badRequest("logit_bias: token " + t + " is outside the vocabulary [0, " + v + ")");
            float bias;
            if (val.isBoolean() && !val.asBoolean()) bias = Float.NEGATIVE_INFINITY;
            else if (val.isNumber()) bias = val.asDouble() <= -100 ? Float.NEGATIVE_INFINITY : (float) val.asDouble();
            else throw ApiException.badRequest("logit_bias: the bias of token " + t + " must be a number (or false)");
            m.merge(t, bias, Float::sum);
        };
        if (lb.isObject()) lb.fields().forEachRemaining(e -> put.accept(e.getKey(), e.getValue()));
        else if (lb.isArray()) {
            for (JsonNode pair : lb) {
                if (!pair.isArray() || pair.size() != 2) throw ApiException.badRequest("logit_bias: list items are [token id, bias]");
                put.accept(pair.get(0).asText(), pair.get(1));
            }
        } else throw ApiException.badRequest("logit_bias must be an object or a list");
        return m;
    }

    /** A sampling validation message with the command-line flags it names replaced by the request's field names. */
    private static String fieldNames(String err) {
        String[][] names = {{"--temp", "temperature"}, {"--top-nsigma", "top_n_sigma"}, {"--dynatemp-exp", "dynatemp_exponent"},
                {"--mirostat-lr", "mirostat_eta"}, {"--mirostat-ent", "mirostat_tau"}, {"--typical", "typical_p"}};
        for (String[] n : names) err = err.replace(n[0], n[1]);
        java.util.regex.Matcher m = java.util.regex.Pattern.compile("--([a-z]+(?:-[a-z]+)*)").matcher(err);
        StringBuilder out = new StringBuilder();
        while (m.find()) m.appendReplacement(out, m.group(1).replace('-', '_'));
        m.appendTail(out);
        return out.toString();
    }

    /** A list of strings field, or the default when absent. */
    private static List<String> strings(JsonNode b, String key, List<String> dflt) {
        JsonNode v = b.get(key);
        if (v == null || v.isNull()) return dflt;
        if (!v.isArray()) throw ApiException.badRequest("'" + key + "' must be a list of strings");
        List<String> out = new ArrayList<>();
        for (JsonNode x : v) {
            if (!x.isTextual()) throw ApiException.badRequest("'" + key + "' must be a list of strings");
            out.add(x.asText());
        }
        return out;
    }

    private static double num(JsonNode b, String key, double dflt) {
        JsonNode v = b.get(key);
        if (v == null || v.isNull()) return dflt;
        if (!v.isNumber()) throw ApiException.badRequest("'" + key + "' must be a number");
        return v.asDouble();
    }

    private static boolean allInts(JsonNode a) {
        for (JsonNode x : a) if (!x.canConvertToInt() || !x.isIntegralNumber()) return false;
        return true;
    }

    // ---- log-probabilities (of the model distribution: softmax of the logits after the penalties) ----------------

    /** The prompt as text for echo: without the BOS the tokenizer put in front. */
    private String promptText(int[] tokens) {
        int[] pre = tp.tokenizer().prefixIds();
        int skip = pre.length > 0 && tokens.length >= pre.length
                && Arrays.equals(tokens, 0, pre.length, pre, 0, pre.length) ? pre.length : 0;
        return tp.tokenizer().decode(Arrays.copyOfRange(tokens, skip, tokens.length));
    }

    private String piece(int id) {
        return tp.tokenizer().decode(new int[] {id});
    }

    private static ArrayNode bytes(String s) {
        ArrayNode a = JSON.createArrayNode();
        for (byte x : s.getBytes(StandardCharsets.UTF_8)) a.add(x & 0xff);
        return a;
    }

    /** The legacy completions shape: tokens, token_logprobs, top_logprobs (maps), text_offset. */
    private ObjectNode completionLogprobs(int[] prompt, Session.Score[] promptScores, List<StepTrace> steps, int top) {
        ObjectNode o = JSON.createObjectNode();
        ArrayNode tokens = o.putArray("tokens"), lps = o.putArray("token_logprobs"), tops = o.putArray("top_logprobs"),
                offsets = o.putArray("text_offset");
        int offset = 0;
        int n = (prompt == null ? 0 : prompt.length) + steps.size();
        for (int i = 0; i < n; i++) {
            // echo: the prompt's tokens first; the first has no log-probability (nothing before it)
            boolean inPrompt = prompt != null && i < prompt.length;
            Session.Score sc = inPrompt && i > 0 && i - 1 < promptScores.length ? promptScores[i - 1] : null;
            StepTrace t = inPrompt ? null : steps.get(i - (prompt == null ? 0 : prompt.length));
            String p = piece(inPrompt ? prompt[i] : t.token());
            tokens.add(p);
            offsets.add(offset);
            offset += p.length();
            if (inPrompt && sc == null) {
                lps.addNull();
                tops.addNull();
                continue;
            }
            lps.add(inPrompt ? sc.logprob() : t.logprob());
            ObjectNode m = tops.addObject();
            int[] ids = inPrompt ? sc.topTokens() : t.topTokens();
            double[] alt = inPrompt ? sc.topLogprobs() : t.topLogprobs();
            for (int j = 0; j < Math.min(top, ids.length); j++) {
                if (!Double.isFinite(alt[j])) continue;
                String q = piece(ids[j]);
                if (!m.has(q)) m.put(q, alt[j]);
            }
        }
        return o;
    }

    /** The chat shape: content = [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]. */
    private ObjectNode chatLogprobs(List<StepTrace> steps, int top) {
        ObjectNode o = JSON.createObjectNode();
        ArrayNode content = o.putArray("content");
        for (StepTrace t : steps) {
            ObjectNode e = content.addObject();
            String p = piece(t.token());
            e.put("token", p);
            e.put("logprob", t.logprob());
            e.set("bytes", bytes(p));
            ArrayNode alts = e.putArray("top_logprobs");
            for (int j = 0; j < Math.min(top, t.topTokens().length); j++) {
                if (!Double.isFinite(t.topLogprobs()[j])) continue;
                ObjectNode a = alts.addObject();
                String q = piece(t.topTokens()[j]);
                a.put("token", q);
                a.put("logprob", t.topLogprobs()[j]);
                a.set("bytes", bytes(q));
            }
        }
        return o;
    }

    // ---- responses --------------------------------------------------------------------------------------------

    /** A server-sent-events response; {@link #gone} once the client stopped reading. */
    private final class Stream {
        final HttpExchange ex;
        final String id;
        final long created;
        final boolean chat;
        boolean llama;  // llama-server's /completion events ({"content": ..., "stop": false}) instead of OpenAI chunks
        Tools tools;    // a chat reply read for tool calls: content that may begin a call is held back (null = none)
        Reasoning.Splitter splitter; // a chat reply's thinking sent as reasoning_content (null = none)
        ReplyEvents responses;       // another API's events (Responses, Anthropic Messages) instead of chat chunks (null = chunks)
        private final StringBuilder reply = new StringBuilder();
        private int sent;  // characters of the reply sent as content
        OutputStream os;
        volatile boolean gone;

        Stream(HttpExchange ex, String id, long created, boolean chat) {
            this.ex = ex;
            this.id = id;
            this.created = created;
            this.chat = chat;
        }

        void begin() {
            try {
                ex.getResponseHeaders().set("Content-Type", "text/event-stream; charset=utf-8");
                ex.getResponseHeaders().set("Cache-Control", "no-cache");
                ex.sendResponseHeaders(200, 0);
                os = ex.getResponseBody();
            } catch (IOException e) {
                gone = true;
            }
            if (responses != null) {
                responses.begin();
                return;
            }
            if (chat && !llama) {
                ObjectNode c = chunk();
                ObjectNode ch = (ObjectNode) c.get("choices").get(0);
                ch.putObject("delta").put("role", "assistant");
                ch.putNull("finish_reason");
                event(c.toString());
            }
        }

        ObjectNode chunk() {
            ObjectNode o = JSON.createObjectNode();
            o.put("id", id);
            o.put("object", chat ? "chat.completion.chunk" : "text_completion");
            o.put("created", created);
            o.put("model", options.modelName());
            o.putArray("choices").addObject().put("index", 0);
            return o;
        }

        void text(String piece) {
            if (splitter != null) {
                route(splitter.add(piece));
                return;
            }
            answer(piece);
        }

        /** Reasoning and answer text of a split reply. */
        private void route(Reasoning.Split sp) {
            if (!sp.reasoning().isEmpty() && responses != null) responses.reasoning(sp.reasoning());
            else if (!sp.reasoning().isEmpty()) {
                ObjectNode c = chunk();
                ObjectNode ch = (ObjectNode) c.get("choices").get(0);
                ch.putObject("delta").put("reasoning_content", sp.reasoning());
                ch.putNull("finish_reason");
                event(c.toString());
            }
            if (!sp.content().isEmpty()) answer(sp.content());
        }

        /** Answer text: straight out, or through the hold-back of a reply read for tool calls. */
        private void answer(String piece) {
            if (tools != null) { // send what can no longer turn out to be a call
                reply.append(piece);
                int safe = ToolCalls.streamableLength(reply.toString());
                if (safe > sent) {
                    String out = reply.substring(sent, safe);
                    sent = safe;
                    content(out);
                }
                return;
            }
            content(piece);
        }

        /**
         * The end of a reply read for tool calls: its calls as one {@code tool_calls} delta (after the content before
         * them), or the content held back; returns the number of calls (0 without tools, or when it ended otherwise).
         */
        int endTools(String finish) {
            if (splitter != null) route(splitter.finish());
            if (tools == null) return 0;
            String all = reply.toString();
            ToolCalls.Parsed p = finish.equals("stop") ? ToolCalls.parse(all, tools.names()) : null;
            if (p == null || !p.hasCalls()) {
                if (all.length() > sent) content(all.substring(sent));
                return 0;
            }
            // parse's content is the reply's beginning up to the first call (without trailing blanks), "" when the whole
            // reply is the calls: what the stream still owes of it
            int contentEnd = Math.max(sent, p.content().length());
            if (contentEnd > sent) content(all.substring(sent, contentEnd));
            List<ChatTemplate.ToolCall> calls = ToolCalls.withIds(firstOnly(p.calls(), tools), tools.style());
            if (responses != null) {
                responses.calls(calls);
                return calls.size();
            }
            ObjectNode c = chunk();
            ObjectNode ch = (ObjectNode) c.get("choices").get(0);
            ArrayNode ta = ch.putObject("delta").putArray("tool_calls");
            for (int i = 0; i < calls.size(); i++) {
                ObjectNode o = ta.addObject();
                o.put("index", i);
                toolCall(o, calls.get(i));
            }
            ch.putNull("finish_reason");
            event(c.toString());
            return calls.size();
        }

        private void content(String piece) {
            if (responses != null) {
                responses.text(piece);
                return;
            }
            if (llama) {
                ObjectNode o = JSON.createObjectNode();
                o.put("content", piece);
                o.put("stop", false);
                event(o.toString());
                return;
            }
            ObjectNode c = chunk();
            ObjectNode ch = (ObjectNode) c.get("choices").get(0);
            if (chat) ch.putObject("delta").put("content", piece);
            else ch.put("text", piece);
            ch.putNull("finish_reason");
            event(c.toString());
        }

        void end(String finish, ObjectNode usage, ObjectNode timings) {
            ObjectNode c = chunk();
            ObjectNode ch = (ObjectNode) c.get("choices").get(0);
            if (chat) ch.putObject("delta");
            else ch.put("text", "");
            ch.put("finish_reason", finish);
            c.set("usage", usage);
            c.set("timings", timings);
            event(c.toString());
            event("[DONE]");
        }

        /** A failure after the stream began: an error event and the end of the stream (headers are gone). */
        void error(String message) {
            if (responses != null) {
                responses.failed(message);
                return;
            }
            ObjectNode o = JSON.createObjectNode();
            ObjectNode err = o.putObject("error");
            err.put("message", message);
            err.put("type", "server_error");
            event(o.toString());
            if (!llama) event("[DONE]");
        }

        /** A named server-sent event (the Responses API's {@code event: NAME}). */
        void event(String name, ObjectNode data) {
            if (gone) return;
            try {
                os.write(("event: " + name + "\ndata: " + data + "\n\n").getBytes(StandardCharsets.UTF_8));
                os.flush();
            } catch (IOException e) {
                gone = true;
            }
        }

        void event(String data) {
            if (gone) return;
            try {
                os.write(("data: " + data + "\n\n").getBytes(StandardCharsets.UTF_8));
                os.flush();
            } catch (IOException e) {
                gone = true;
            }
        }
    }

    private static void sendJson(HttpExchange ex, int status, JsonNode body) throws IOException {
        byte[] bytes = JSON.writeValueAsBytes(body);
        ex.getResponseHeaders().set("Content-Type", "application/json; charset=utf-8");
        ex.sendResponseHeaders(status, bytes.length);
        try (OutputStream os = ex.getResponseBody()) {
            os.write(bytes);
        }
    }

    /** An error in Anthropic's shape: {@code {"type": "error", "error": {"type", "message"}}}. */
    private static void sendAnthropicError(HttpExchange ex, ApiException e) {
        ObjectNode o = JSON.createObjectNode();
        o.put("type", "error");
        ObjectNode err = o.putObject("error");
        err.put("type", switch (e.status) {
            case 400 -> "invalid_request_error";
            case 401 -> "authentication_error";
            case 404 -> "not_found_error";
            case 503 -> "overloaded_error";
            default -> "api_error";
        });
        err.put("message", e.getMessage());
        try {
            sendJson(ex, e.status, o);
        } catch (IOException | RuntimeException ignored) {
            // headers already sent or the client is gone
        }
    }

    private static void sendError(HttpExchange ex, ApiException e) {
        ObjectNode o = JSON.createObjectNode();
        ObjectNode err = o.putObject("error");
        err.put("message", e.getMessage());
        err.put("type", e.type);
        if (e.code != null) err.put("code", e.code);
        else err.putNull("code");
        try {
            sendJson(ex, e.status, o);
        } catch (IOException | RuntimeException ignored) {
            // headers already sent (a failure while streaming) or the client is gone: nothing more to tell it
        }
    }

    private static String firstLine(Throwable t) {
        String m = t.getMessage();
        if (m == null || m.isBlank()) return t.getClass().getSimpleName();
        int nl = m.indexOf('\n');
        return (nl < 0 ? m : m.substring(0, nl)).trim();
    }
}
