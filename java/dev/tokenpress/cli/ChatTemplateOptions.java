package dev.tokenpress.cli;

import dev.tokenpress.io.ChatTemplate;
import dev.tokenpress.io.ModelLoadException;
import picocli.CommandLine.Option;

import java.io.PrintWriter;
import java.nio.file.Files;
import java.nio.file.Path;

/** The chat-format options of the commands that chat ({@code chat}, {@code serve}): a picocli mixin. */
public final class ChatTemplateOptions {
    @Option(names = "--chat-template", paramLabel = "NAME",
            description = "A built-in chat format instead of the model's template: llama3, chatml, llama2 or mistral.")
    String name;

    @Option(names = "--chat-template-file", paramLabel = "FILE",
            description = "A Jinja chat template to use instead of the model's (rendered as transformers renders it).")
    Path file;

    /** Checks the options before the model loads (usage errors). */
    void validate() {
        if (name != null && file != null) throw new Main.UsageException("give --chat-template or --chat-template-file, not both");
        if (name != null) {
            try {
                ChatTemplate.named(name);
            } catch (IllegalArgumentException e) {
                throw new Main.UsageException(e.getMessage());
            }
        }
        if (file != null && !Files.isRegularFile(file)) throw new Main.UsageException("chat template file not found: " + file);
    }

    /**
     * The chat format: the named built-in one, the template file, or the model's own.
     *
     * @param optional when the model has none: return null after a line on {@code err} (else throw)
     * @throws ModelLoadException if the model has none (unless optional) or the file does not parse
     */
    ChatTemplate resolve(Path modelDir, boolean optional, PrintWriter err) {
        validate();
        if (name != null) return ChatTemplate.named(name);
        if (file != null) return ChatTemplate.fromFile(file, modelDir);
        try {
            return ChatTemplate.forModel(modelDir);
        } catch (ModelLoadException e) {
            if (!optional) throw e;
            err.println("chat: " + e.getMessage());
            return null;
        }
    }
}
