package dev.tokenpress.cli;

import dev.tokenpress.api.Chat;
import dev.tokenpress.api.GenerationResult;
import dev.tokenpress.api.Session;
import dev.tokenpress.api.TokenPress;
import dev.tokenpress.io.ChatTemplate;
import dev.tokenpress.kv.KvPolicy;
import dev.tokenpress.sample.SamplingOptions;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Spec;

import java.io.BufferedReader;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Callable;

/**
 * {@code tokenpress chat}: a conversation with an instruction-tuned model in its chat format. User messages come
 * from {@code -p} (repeatable), {@code -f} (one per line) or standard input (one per line; {@code /reset} starts
 * over, {@code /exit} or end of input ends); each reply streams to stdout followed by a blank line, figures per turn
 * go to stderr. The KV cache carries the whole conversation (earlier turns are not recomputed).
 */
@Command(name = "chat", mixinStandardHelpOptions = true,
        description = "Chat with an instruction-tuned model: user messages from -p, -f or stdin (one per line), "
                + "replies to stdout.")
public final class ChatCommand implements Callable<Integer> {
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

    @Option(names = {"-p", "--prompt"}, paramLabel = "TEXT",
            description = "A user message (repeat for several turns); without -p and -f messages are read from stdin.")
    List<String> prompts;

    @Option(names = {"-f", "--file"}, paramLabel = "FILE", description = "Read the user messages from a file, one per line.")
    Path file;

    @Option(names = {"-sys", "--system"}, paramLabel = "TEXT", description = "System message.")
    String system;

    @Mixin
    ChatTemplateOptions chatTemplate;

    @Option(names = {"-n", "--n-predict"}, defaultValue = "512", description = "Most tokens per reply (default: ${DEFAULT-VALUE}).")
    int nPredict;

    @Option(names = {"-c", "--ctx-size"}, defaultValue = "0",
            description = "KV cache size in tokens for the whole conversation (0 = min(model maximum, 4096)).")
    int ctx;

    @Option(names = "--format", paramLabel = "text|json|json-object", defaultValue = "text",
            description = "Constrain each reply: json keeps it one valid JSON value (json-object: an object) (default: ${DEFAULT-VALUE}).")
    String format;

    /** Standard input; tests replace it. */
    static InputStream stdin = System.in;

    @Override
    public Integer call() throws Exception {
        PrintWriter out = spec.commandLine().getOut(), err = spec.commandLine().getErr();
        if (kvOptions.printHelpIfAsked(out)) return ExitCodes.OK;
        kvOptions.validate(false);
        var quant = kvOptions.quant();
        modelOptions.noteCacheTypes(java.util.List.of(quant), err);
        if (nPredict <= 0) throw new Main.UsageException("-n must be > 0");
        if (prompts != null && file != null) throw new Main.UsageException("give user messages with -p or with -f, not both");
        if (file != null && !Files.isRegularFile(file)) throw new Main.UsageException("message file not found: " + file);
        chatTemplate.validate();
        draftOptions.validate(0);
        Session.OutputFormat outputFormat = GenerateCommand.outputFormat(format);
        SamplingOptions so = sampling.toOptions();
        Path dir = modelOptions.resolveModel(err);
        ChatTemplate template = chatTemplate.resolve(dir, false, err);
        try (TokenPress tp = TokenPress.load(dir, modelOptions.toLoadOptions(err));
             TokenPress draft = draftOptions.loadDraft(modelOptions, tp, err);
             Session session = tp.newSession(ctx, quant)) {
            session.setPolicy(kvOptions.policy(tp.config()));
            draftOptions.apply(session, tp, draft, err);
            session.setOutputFormat(outputFormat);
            grammarOptions.apply(session, outputFormat);
            sampling.applyTo(session, tp.config().vocabSize());
            err.printf(Locale.ROOT, "loaded %s (%s, %d layers) in %d ms; chat format %s%n", dir,
                    tp.config().architecture(), tp.config().numLayers(), tp.loadMillis(), template);
            if (tp.model().policy() != KvPolicy.FULL) err.println("kv policy: " + tp.model().policy().spec());
            if (!quant.isNone()) err.println("kv quant: " + quant.spec());
            Chat chat = new Chat(tp, session, template, system);
            boolean interactive = prompts == null && file == null && stdin == System.in && System.console() != null;
            if (interactive) err.println("type a message and press enter; /reset starts over, /exit or Ctrl-D ends");
            err.flush();
            BufferedReader reader = prompts != null ? null : new BufferedReader(new InputStreamReader(
                    file != null ? Files.newInputStream(file) : stdin, StandardCharsets.UTF_8));
            int turn = 0, given = 0;
            try {
                while (true) {
                    if (interactive) { // on the terminal's stdout: the launcher filters stderr line by line
                        out.print("> ");
                        out.flush();
                    }
                    String msg = reader != null ? reader.readLine() : (given < prompts.size() ? prompts.get(given++) : null);
                    if (msg == null || msg.strip().equals("/exit")) break;
                    if (msg.strip().equals("/reset")) {
                        chat.reset();
                        err.println("(conversation reset)");
                        err.flush();
                        continue;
                    }
                    if (msg.isBlank()) continue;
                    GenerationResult r = chat.send(msg, nPredict, so, piece -> {
                        out.print(piece);
                        out.flush();
                    });
                    out.println();
                    out.println();
                    out.flush();
                    turn++;
                    err.printf(Locale.ROOT, "[turn %d: prompt %d tokens, %.1f tokens/s | decode %d tokens, %.2f tokens/s | "
                                    + "conversation %d tokens, KV %s | stop: %s]%n", turn, r.promptTokens(),
                            r.prefillTokensPerSecond(), r.decodeSteps(), r.decodeTokensPerSecond(), chat.position(),
                            Bytes.human(r.kvBytes()), r.stopReason());
                    if (r.stopReason().equals("context")) {
                        err.println("the context is full: the conversation starts over (use a larger -c or an evicting --kv policy)");
                        chat.reset();
                    }
                    err.flush();
                }
            } finally {
                if (reader != null && file != null) reader.close();
            }
        }
        return ExitCodes.OK;
    }
}
