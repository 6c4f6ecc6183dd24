package dev.tokenpress.server;

import com.fasterxml.jackson.databind.JsonNode;
import dev.tokenpress.api.LoadOptions;
import dev.tokenpress.api.TokenPress;
import dev.tokenpress.api.ToolCallsTest;
import dev.tokenpress.io.ChatTemplate;
import org.junit.jupiter.api.Assumptions;

import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;

/** A model served on a free local port for one server test class (CPU, 2 threads), and JSON posts to it. */
final class TinyServer implements AutoCloseable {
    static final Path MODEL = Path.of("models", "tokenpress-tiny");
    private static final HttpClient HTTP = HttpClient.newHttpClient();

    final TokenPress tp;
    final OpenAiServer server;

    private TinyServer(TokenPress tp, OpenAiServer server) {
        this.tp = tp;
        this.server = server;
    }

    /** The embedded model under {@code options} (the test class is skipped when the model is missing). */
    static TinyServer start(OpenAiServer.Options options) throws IOException {
        Assumptions.assumeTrue(Files.isRegularFile(MODEL.resolve("model.safetensors")), "no embedded model");
        return start(MODEL, options);
    }

    /** The model in {@code dir} under {@code options}. */
    static TinyServer start(Path dir, OpenAiServer.Options options) throws IOException {
        TokenPress tp = TokenPress.load(dir, LoadOptions.defaults().withDevice("cpu").withThreads(2));
        try {
            return new TinyServer(tp, OpenAiServer.start(tp, options));
        } catch (IOException | RuntimeException e) {
            tp.close();
            throw e;
        }
    }

    /** The Hermes tool-calling template of {@link ToolCallsTest} with the embedded model's end token. */
    static ChatTemplate hermes() {
        return ChatTemplate.fromJinja(ToolCallsTest.HERMES_TEMPLATE, "", "<|end_of_text|>", "test template");
    }

    /** POSTs {@code body} as JSON to {@code path}, with extra header name/value pairs. */
    HttpResponse<String> post(String path, JsonNode body, String... headers) throws Exception {
        HttpRequest.Builder b = HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + server.port() + path))
                .header("Content-Type", "application/json");
        for (int i = 0; i + 1 < headers.length; i += 2) b.header(headers[i], headers[i + 1]);
        return HTTP.send(b.POST(HttpRequest.BodyPublishers.ofString(body.toString())).build(), HttpResponse.BodyHandlers.ofString());
    }

    @Override
    public void close() {
        server.close();
        tp.close();
    }
}
