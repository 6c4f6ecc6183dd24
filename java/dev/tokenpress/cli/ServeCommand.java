package dev.tokenpress.cli;

import dev.tokenpress.api.TokenPress;
import dev.tokenpress.io.ChatTemplate;
import dev.tokenpress.kv.KvPolicy;
import dev.tokenpress.server.OpenAiServer;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;

import java.io.PrintWriter;
import java.nio.file.Path;
import java.util.Locale;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Callable;

/**
 * {@code tokenpress serve}: the OpenAI API's completion endpoints over one model ({@link OpenAiServer}) until
 * interrupted; the sampling, {@code --kv} and {@code --kv-quant} options set the server's defaults and cache.
 */
@Command(name = "serve", mixinStandardHelpOptions = true,
        description = "Serve the model over HTTP: OpenAI's /v1/completions, /v1/chat/completions (tools, reasoning), "
                + "/v1/responses and /v1/embeddings, Anthropic's /v1/messages, llama-server's /completion, /infill, "
                + "/tokenize, /detokenize, /apply-template, /props and /metrics, vLLM/SGLang's /generate (one request "
                + "decodes at a time unless -np); runs until interrupted.")
public final class ServeCommand implements Callable<Integer> {
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

    @Option(names = "--host", defaultValue = "127.0.0.1", description = "Address to listen on (default: ${DEFAULT-VALUE}; 0.0.0.0 = all).")
    String host;

    @Option(names = "--port", defaultValue = "8080", description = "TCP port (default: ${DEFAULT-VALUE}).")
    int port;

    @Option(names = {"-c", "--ctx-size"}, defaultValue = "0",
            description = "KV cache size in tokens per request (0 = min(model maximum, 4096)).")
    int ctx;

    @Option(names = {"-n", "--n-predict"}, defaultValue = "256",
            description = "Tokens generated when a request gives no max_tokens (default: ${DEFAULT-VALUE}).")
    int nPredict;

    @Mixin
    ChatTemplateOptions chatTemplate;

    @Option(names = "--lookup", paramLabel = "N", defaultValue = "0",
            description = "Prompt lookup decoding (full policy, unquantized cache): draft up to N tokens per step "
                    + "(default: 0 = off; a request's 'lookup' field overrides it).")
    int lookup;

    @Option(names = {"-np", "--parallel"}, paramLabel = "N", defaultValue = "1",
            description = "Decode up to N requests together (continuous batching: one forward pass per step for all; each "
                    + "sequence has its own KV cache of -c tokens; at most -b; constrained output too). Requests with logprobs, "
                    + "echo or lookup run alone between steps (default: ${DEFAULT-VALUE}).")
    int parallel;

    @Option(names = "--api-key", paramLabel = "KEY",
            description = "Require Authorization: Bearer KEY (or x-api-key: KEY) on every endpoint but /health (or set TOKENPRESS_API_KEY).")
    String apiKey;

    @Option(names = "--alias", paramLabel = "NAME", description = "Model id reported by the API (default: the directory name).")
    String alias;

    @Option(names = "--reasoning-format", paramLabel = "FORMAT", defaultValue = "auto",
            description = "Thinking of reasoning models in chat replies: deepseek = the <think> block goes to "
                    + "reasoning_content, none = left in content, auto = deepseek when the chat template writes <think> "
                    + "blocks (default: ${DEFAULT-VALUE}; a request's reasoning_format overrides it).")
    String reasoningFormat;

    @Override
    public Integer call() throws Exception {
        PrintWriter out = spec.commandLine().getOut(), err = spec.commandLine().getErr();
        if (kvOptions.printHelpIfAsked(out)) return ExitCodes.OK;
        kvOptions.validate(false);
        if (port < 0 || port > 65535) throw new Main.UsageException("--port must be in 0..65535");
        if (nPredict < 0) throw new Main.UsageException("-n must be >= 0");
        if (lookup < 0) throw new Main.UsageException("--lookup must be >= 0");
        draftOptions.validate(lookup);
        if (parallel < 1) throw new Main.UsageException("-np must be >= 1");
        if (!OpenAiServer.REASONING_FORMATS.contains(reasoningFormat))
            throw new Main.UsageException("--reasoning-format must be one of " + String.join(", ", OpenAiServer.REASONING_FORMATS));
        if (parallel > modelOptions.chunk) throw new Main.UsageException("-np " + parallel + " exceeds the batch size -b " + modelOptions.chunk + ": raise -b");
        if (parallel > 1 && draftOptions.enabled())
            throw new Main.UsageException("-np and speculative decoding (-md, --draft-layers) exclude each other");
        chatTemplate.validate();
        var so = sampling.toOptions();
        Path dir = modelOptions.resolveModel(err);
        ChatTemplate template = chatTemplate.resolve(dir, true, err);
        if (template == null) err.println("chat: /v1/chat/completions answers 400 (pass --chat-template or --chat-template-file)");
        String name = alias != null ? alias : dir.toAbsolutePath().normalize().getFileName().toString();
        try (TokenPress tp = TokenPress.load(dir, modelOptions.toLoadOptions(err));
             TokenPress draft = draftOptions.loadDraft(modelOptions, tp, err)) {
            tp.model().setPolicy(kvOptions.policy(tp.config()));
            var quant = kvOptions.quant();
            modelOptions.noteCacheTypes(java.util.List.of(quant), err);
            CountDownLatch stopped = new CountDownLatch(1);
            try (OpenAiServer server = OpenAiServer.start(tp, new OpenAiServer.Options(host, port, ctx, quant, template,
                    name, so, nPredict, line -> {
                        synchronized (err) {
                            err.println(line);
                            err.flush();
                        }
                    }, lookup, apiKey != null ? apiKey : System.getenv("TOKENPRESS_API_KEY"),
                    draftOptions.serverDraft(tp, draft), parallel, reasoningFormat))) {
                Runtime.getRuntime().addShutdownHook(new Thread(stopped::countDown));
                err.printf(Locale.ROOT, "loaded %s (%s, %d layers) in %d ms; context %d tokens; kv %s; kv quant %s; chat %s%n",
                        dir, tp.config().architecture(), tp.config().numLayers(), tp.loadMillis(), server.contextSize(),
                        tp.model().policy() == KvPolicy.FULL ? "full" : tp.model().policy().spec(), quant.spec(),
                        template == null ? "none" : template.toString());
                if (draftOptions.draftLayers != null)
                    err.printf(Locale.ROOT, "draft: the model's first %d of %d layers (requests without 'lookup')%n",
                            draftOptions.draftLayers, tp.config().numLayers());
                if (parallel > 1)
                    err.printf(Locale.ROOT, "parallel: up to %d requests decoded together, each with a KV cache of %d tokens%n",
                            parallel, server.contextSize());
                err.printf(Locale.ROOT, "listening on http://%s:%d/v1 (Ctrl-C stops)%n", host, server.port());
                err.flush();
                stopped.await();
            }
        }
        return ExitCodes.OK;
    }
}
