package dev.tokenpress.cli;

import dev.tokenpress.api.Session;
import picocli.CommandLine.Option;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;

/** Grammar-constrained output (llama.cpp's names): a GBNF grammar or a JSON schema, inline or from a file. */
final class GrammarOptionsMixin {
    @Option(names = "--grammar", paramLabel = "GBNF",
            description = "Constrain the output to a grammar in llama.cpp's GBNF notation (a 'root' rule).")
    String grammar;

    @Option(names = "--grammar-file", paramLabel = "FILE", description = "Read the GBNF grammar from a file.")
    Path grammarFile;

    @Option(names = {"-j", "--json-schema"}, paramLabel = "SCHEMA",
            description = "Constrain the output to JSON that this JSON Schema accepts (e.g. '{\"type\": \"object\", ...}').")
    String jsonSchema;

    @Option(names = {"-jf", "--json-schema-file"}, paramLabel = "FILE", description = "Read the JSON Schema from a file.")
    Path jsonSchemaFile;

    boolean enabled() {
        return grammar != null || grammarFile != null || jsonSchema != null || jsonSchemaFile != null;
    }

    /** Puts the constraint on the session; usage errors (one line) for conflicts, missing files, bad grammars. */
    void apply(Session session, Session.OutputFormat format) {
        int given = (grammar != null ? 1 : 0) + (grammarFile != null ? 1 : 0) + (jsonSchema != null ? 1 : 0)
                + (jsonSchemaFile != null ? 1 : 0);
        if (given > 1) throw new Main.UsageException("give one of --grammar, --grammar-file, --json-schema, --json-schema-file");
        if (given == 1 && format != Session.OutputFormat.TEXT)
            throw new Main.UsageException("--format json and a grammar or schema exclude each other");
        try {
            if (grammar != null) session.setGrammar(grammar);
            else if (grammarFile != null) session.setGrammar(read(grammarFile));
            else if (jsonSchema != null) session.setJsonSchema(jsonSchema);
            else if (jsonSchemaFile != null) session.setJsonSchema(read(jsonSchemaFile));
        } catch (IllegalArgumentException e) {
            throw new Main.UsageException(e.getMessage());
        }
    }

    /**
     * The same constraint for sequences of a batch ({@code generate -np}): a factory from the end tokens to a new
     * constraint per sequence; null for free text.
     */
    java.util.function.Function<java.util.Set<Integer>, dev.tokenpress.sample.TokenConstraint> constraint(String[] texts,
                                                                                                    Session.OutputFormat format) {
        int given = (grammar != null ? 1 : 0) + (grammarFile != null ? 1 : 0) + (jsonSchema != null ? 1 : 0)
                + (jsonSchemaFile != null ? 1 : 0);
        if (given > 1) throw new Main.UsageException("give one of --grammar, --grammar-file, --json-schema, --json-schema-file");
        if (given == 1 && format != Session.OutputFormat.TEXT)
            throw new Main.UsageException("--format json and a grammar or schema exclude each other");
        try {
            dev.tokenpress.sample.Grammar g = grammar != null ? dev.tokenpress.sample.Grammar.parse(grammar)
                    : grammarFile != null ? dev.tokenpress.sample.Grammar.parse(read(grammarFile))
                    : jsonSchema != null ? dev.tokenpress.sample.JsonSchemaGrammar.compile(jsonSchema)
                    : jsonSchemaFile != null ? dev.tokenpress.sample.JsonSchemaGrammar.compile(read(jsonSchemaFile)) : null;
            String name = grammar != null || grammarFile != null ? "grammar" : "json-schema";
            if (g != null) return ends -> new dev.tokenpress.sample.GrammarConstraint(g, texts, ends, name);
        } catch (IllegalArgumentException e) {
            throw new Main.UsageException(e.getMessage());
        }
        if (format == Session.OutputFormat.TEXT) return null;
        boolean object = format == Session.OutputFormat.JSON_OBJECT;
        return ends -> new dev.tokenpress.sample.JsonConstraint(texts, ends, object);
    }

    private static String read(Path f) {
        if (!Files.isRegularFile(f)) throw new Main.UsageException("file not found: " + f);
        try {
            return Files.readString(f, StandardCharsets.UTF_8);
        } catch (IOException e) {
            throw new Main.UsageException("cannot read " + f + ": " + e.getMessage());
        }
    }
}
