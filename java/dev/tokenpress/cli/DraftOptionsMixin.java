package dev.tokenpress.cli;

import dev.tokenpress.api.Session;
import dev.tokenpress.api.TokenPress;
import picocli.CommandLine.Option;

import java.io.PrintWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Locale;

/** Speculative decoding options (llama.cpp's names): a draft model, or the model's own first layers as the draft. */
final class DraftOptionsMixin {
    @Option(names = {"-md", "--model-draft"}, paramLabel = "DIR",
            description = "Speculative decoding: a smaller model with the same tokenizer drafts tokens that the model "
                    + "checks in one forward pass; the output is the same, faster when the draft is often right.")
    Path modelDraft;

    @Option(names = "--draft-layers", paramLabel = "N",
            description = "Self-speculative decoding: the model's own first N layers (and its LM head) draft; "
                    + "nothing more is loaded.")
    Integer draftLayers;

    @Option(names = "--draft-max", paramLabel = "N", defaultValue = "16",
            description = "Most tokens drafted per step (default: ${DEFAULT-VALUE}).")
    int draftMax;

    @Option(names = "--draft-min", paramLabel = "N", defaultValue = "0",
            description = "Tokens drafted before --draft-p-min may stop a draft (default: ${DEFAULT-VALUE}).")
    int draftMin;

    @Option(names = "--draft-p-min", paramLabel = "P", defaultValue = "0.75",
            description = "Stop drafting when the draft's most likely token has a lower probability (default: ${DEFAULT-VALUE}).")
    float draftPMin;

    @Option(names = "--draft-stop", paramLabel = "P", defaultValue = "0",
            description = "SpecDec++'s rule: stop drafting once the estimated chance that some drafted token is rejected "
                    + "(1 - the product of the draft's probabilities) exceeds P; 0 = off (default: ${DEFAULT-VALUE}).")
    double draftStop;

    boolean enabled() {
        return modelDraft != null || draftLayers != null;
    }

    /** Usage errors; {@code lookup} is the command's --lookup (0 when it has none). */
    void validate(int lookup) {
        if (modelDraft != null && draftLayers != null)
            throw new Main.UsageException("give --model-draft or --draft-layers, not both");
        if (enabled() && lookup > 0)
            throw new Main.UsageException("--lookup and a draft model are two ways of drafting: give one");
        if (draftMax < 1) throw new Main.UsageException("--draft-max must be >= 1");
        if (draftMin < 0) throw new Main.UsageException("--draft-min must be >= 0");
        if (!(draftPMin >= 0 && draftPMin <= 1)) throw new Main.UsageException("--draft-p-min must be in [0, 1]");
        if (!(draftStop >= 0 && draftStop < 1)) throw new Main.UsageException("--draft-stop must be in [0, 1)");
        if (draftLayers != null && draftLayers < 1) throw new Main.UsageException("--draft-layers must be >= 1");
        if (modelDraft != null && !Files.isDirectory(modelDraft))
            throw new Main.UsageException("draft model directory not found: " + modelDraft);
    }

    /**
     * Loads the --model-draft model onto the model's backend (one thread team or CUDA stream for both; null without
     * one); the caller closes it.
     */
    TokenPress loadDraft(ModelOptions modelOptions, TokenPress host, PrintWriter err) {
        if (modelDraft == null) return null;
        // the adapters are the target's: the draft is another checkpoint
        TokenPress d = TokenPress.loadOn(modelDraft, modelOptions.toLoadOptions(err).withLoras(java.util.List.of()), host);
        err.printf(Locale.ROOT, "draft model: %s (%d layers) in %d ms%n", modelDraft, d.config().numLayers(), d.loadMillis());
        return d;
    }

    /** The server's draft (null without one); usage errors for bad values. */
    dev.tokenpress.server.OpenAiServer.Draft serverDraft(TokenPress tp, TokenPress draft) {
        if (!enabled()) return null;
        if (draft != null) {
            try {
                Session.checkDraftModel(tp, draft);
            } catch (IllegalArgumentException e) {
                throw new dev.tokenpress.io.ModelLoadException(modelDraft + ": " + e.getMessage());
            }
            return new dev.tokenpress.server.OpenAiServer.Draft(draft, 0, draftMax, draftMin, draftPMin, draftStop);
        }
        checkLayers(tp);
        return new dev.tokenpress.server.OpenAiServer.Draft(null, draftLayers, draftMax, draftMin, draftPMin, draftStop);
    }

    private void checkLayers(TokenPress tp) {
        if (draftLayers >= tp.config().numLayers())
            throw new Main.UsageException("--draft-layers must be below the model's " + tp.config().numLayers()
                    + " layers (the draft is its first layers)");
    }

    /** Puts the drafter on the session (a draft model or the model's first layers); usage errors for bad values. */
    void apply(Session session, TokenPress tp, TokenPress draft, PrintWriter err) {
        try {
            if (draft != null) {
                try {
                    session.setDraftModel(draft, draftMax, draftMin, draftPMin);
                } catch (IllegalArgumentException e) {
                    throw new dev.tokenpress.io.ModelLoadException(modelDraft + ": " + e.getMessage());
                }
            } else if (draftLayers != null) {
                checkLayers(tp);
                session.setSelfDraft(draftLayers, draftMax, draftMin, draftPMin);
                err.printf(Locale.ROOT, "draft: the model's first %d of %d layers%n", draftLayers, tp.config().numLayers());
            }
            if (enabled() && draftStop > 0) session.setDraftStop(draftStop);
        } catch (IllegalArgumentException e) {
            throw new Main.UsageException(e.getMessage());
        }
    }
}
