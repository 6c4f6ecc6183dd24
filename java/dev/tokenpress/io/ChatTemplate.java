package dev.tokenpress.io;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The chat format of an instruction-tuned model: how a conversation (system, user and assistant messages) becomes
 * the text the model was trained on.
 * <p>
 * A model's own template ({@code chat_template} in {@code tokenizer_config.json}, or {@code chat_template.jinja} /
 * {@code chat_template.json}) is executed by {@link Jinja} as transformers' {@code apply_chat_template} does (with
 * {@code messages}, {@code add_generation_prompt}, {@code bos_token}, {@code eos_token} and {@code tools = None}),
 * so the text is exactly the one the model was trained on (e.g. Llama 3.1's date lines, Qwen's default system
 * message). Templates that do not parse, and the {@code --chat-template NAME} choices, use a built-in format of
 * the family (as llama.cpp's built-in templates):
 * <ul>
 *   <li>{@code llama3} (Llama 3.x Instruct): {@code <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>} per
 *       message (content trimmed), reply prompt {@code <|start_header_id|>assistant<|end_header_id|>\n\n} (no date
 *       lines).</li>
 *   <li>{@code chatml} (Qwen2, Qwen2.5 and other ChatML models): {@code <|im_start|>ROLE\nCONTENT<|im_end|>\n},
 *       reply prompt {@code <|im_start|>assistant\n} (no default system message).</li>
 *   <li>{@code llama2} (Llama 2 Chat): {@code [INST] <<SYS>>\nSYSTEM\n<</SYS>>\n\nUSER [/INST]} for the first user
 *       message (the system block only if there is one), {@code <s>[INST] USER [/INST]} for later ones, a reply is
 *       followed by {@code </s>}.</li>
 *   <li>{@code mistral} (Mistral Instruct v0.1-v0.3 style): {@code [INST] USER [/INST]}, the system message (if any)
 *       in front of the first user message separated by a blank line, a reply followed by {@code </s>}.</li>
 * </ul>
 * The built-in formats never start with the BOS token (the tokenizer's {@link HfTokenizer#encode} adds it; a model
 * template's leading BOS text is not doubled by it) and are prefix-stable: the rendering of a conversation followed
 * by a user message starts with the rendering of the conversation, so a chat can feed only the new part. A model's
 * template may not be (Mistral's puts the system message into the last user message); {@code Chat} then reuses what
 * the cache shares with the new rendering's tokens.
 */
public final class ChatTemplate {

    /**
     * A call of a tool (function) an assistant message makes: its id (what the tool's result message refers to), the
     * function's name and its arguments as JSON text (OpenAI's {@code tool_calls[i]}).
     */
    public record ToolCall(String id, String name, String arguments) {
        public ToolCall {
            if (name == null || name.isEmpty()) throw new IllegalArgumentException("a tool call needs a function name");
            if (arguments == null) arguments = "{}";
            if (id == null) id = "";
        }
    }

    /**
     * A message of a conversation: role "system", "user", "assistant" or "tool". An assistant message may carry the
     * tool calls it made ({@code toolCalls}, then its content may be empty); a tool message is a tool's result, with the
     * id of the call it answers ({@code toolCallId}, may be null). An assistant message may carry the reasoning that
     * preceded it ({@code reasoningContent}, may be null; a reasoning model's template, e.g. Qwen3's, shows it again
     * within the current turn). The model's own template decides how these look; the built-in formats have none, so
     * they refuse tool calls and tool messages and leave the reasoning out.
     */
    public record Message(String role, String content, List<ToolCall> toolCalls, String toolCallId, String reasoningContent) {
        public Message {
            if (!role.equals("system") && !role.equals("user") && !role.equals("assistant") && !role.equals("tool"))
                throw new IllegalArgumentException("chat message role must be system, user, assistant or tool, got " + role);
            if (content == null) throw new IllegalArgumentException("chat message content is null");
            toolCalls = toolCalls == null ? List.of() : List.copyOf(toolCalls);
            if (!toolCalls.isEmpty() && !role.equals("assistant"))
                throw new IllegalArgumentException("only an assistant message makes tool calls");
            if (toolCallId != null && !role.equals("tool"))
                throw new IllegalArgumentException("only a tool message answers a tool call");
            if (reasoningContent != null && !role.equals("assistant"))
                throw new IllegalArgumentException("only an assistant message carries reasoning");
        }

        public Message(String role, String content, List<ToolCall> toolCalls, String toolCallId) {
            this(role, content, toolCalls, toolCallId, null);
        }

        public Message(String role, String content) {
            this(role, content, List.of(), null, null);
        }

        public static Message system(String content) { return new Message("system", content); }

        public static Message user(String content) { return new Message("user", content); }

        public static Message assistant(String content) { return new Message("assistant", content); }

        /** An assistant message that calls tools ({@code content} may be empty). */
        public static Message assistant(String content, List<ToolCall> calls) {
            return new Message("assistant", content, calls, null);
        }

        /** A tool's result for the call {@code callId} (may be null). */
        public static Message tool(String callId, String content) { return new Message("tool", content, List.of(), callId); }
    }

    /** The built-in formats. */
    public enum Format {
        LLAMA3("llama3", "<|eot_id|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
        CHATML("chatml", "<|im_end|>\n", "<|im_end|>", "<|endoftext|>"),
        LLAMA2("llama2", "</s>", "</s>"),
        MISTRAL("mistral", "</s>", "</s>");

        /** Name used on the command line ({@code --chat-template NAME}). */
        public final String id;
        final String endOfReply;
        final List<String> stopTokens;

        Format(String id, String endOfReply, String... stopTokens) {
            this.id = id;
            this.endOfReply = endOfReply;
            this.stopTokens = List.of(stopTokens);
        }
    }

    public static final String TOKENIZER_CONFIG_FILE = "tokenizer_config.json";
    private static final ObjectMapper JSON = new ObjectMapper();

    private final Format format;          // the family (null: a model template of no known family)
    private final String source;
    private final String text;            // the model's template text (null for a built-in format)
    private final Jinja.Template jinja;   // the model's template, or null for a built-in format
    private final String bos, eos;        // special-token strings the model's template may print
    private String endOfReply;            // derived once from the model's template

    private ChatTemplate(Format format, String source, String text, Jinja.Template jinja, String bos, String eos) {
        this.format = format;
        this.source = source;
        this.text = jinja == null ? null : text;
        this.jinja = jinja;
        this.bos = bos == null ? "" : bos;
        this.eos = eos == null ? "" : eos;
        this.endOfReply = jinja == null ? format.endOfReply : null;
    }

    /**
     * A model's Jinja template; {@code bos}/{@code eos} are its special-token strings (may be null), {@code where}
     * names its origin for messages.
     *
     * @throws Jinja.TemplateException if the template does not parse
     */
    public static ChatTemplate fromJinja(String source, String bos, String eos, String where) {
        return new ChatTemplate(detect(source), where, source, Jinja.parse(source), bos, eos);
    }

    /**
     * Another Jinja template with this one's special-token strings (e.g. a request's own {@code chat_template});
     * {@code where} names it for messages.
     *
     * @throws Jinja.TemplateException if it does not parse
     */
    public ChatTemplate withTemplate(String jinjaText, String where) {
        return new ChatTemplate(detect(jinjaText), where, jinjaText, Jinja.parse(jinjaText), bos, eos);
    }

    /** A built-in format by name (llama3, chatml, llama2, mistral; case-insensitive). */
    public static ChatTemplate named(String name) {
        for (Format f : Format.values())
            if (f.id.equalsIgnoreCase(name.trim())) return new ChatTemplate(f, "built-in", null, null, null, null);
        throw new IllegalArgumentException("unknown chat template '" + name + "': use one of " + names());
    }

    /** The names of the built-in formats, comma-separated. */
    public static String names() {
        return String.join(", ", Arrays.stream(Format.values()).map(f -> f.id).toList());
    }

    /** The family of a Jinja chat template by its marker tokens, or null if none is recognised. */
    public static Format detect(String jinja) {
        if (jinja == null) return null;
        if (jinja.contains("<|start_header_id|>") && jinja.contains("<|end_header_id|>")) return Format.LLAMA3;
        if (jinja.contains("<|im_start|>")) return Format.CHATML;
        if (jinja.contains("<<SYS>>")) return Format.LLAMA2;
        if (jinja.contains("[INST]")) return Format.MISTRAL;
        return null;
    }

    /**
     * The format of the model in {@code dir}, from its chat template ({@code tokenizer_config.json}'s
     * {@code chat_template}: a string, or a list of named templates of which "default" (else the first) counts;
     * else {@code chat_template.jinja}; else {@code chat_template.json}): the template itself if it parses, else the
     * built-in format of its family.
     *
     * @throws ModelLoadException if the model has no chat template (a base model), or one that neither parses nor
     *                            belongs to a known family
     */
    public static ChatTemplate forModel(Path dir) {
        String jinja = null, where = null, bos = null, eos = null;
        Path cfg = dir.resolve(TOKENIZER_CONFIG_FILE);
        if (Files.isRegularFile(cfg)) {
            JsonNode root = readJson(cfg);
            jinja = templateText(root.get("chat_template"), cfg);
            where = cfg.toString();
            bos = tokenText(root.get("bos_token"));
            eos = tokenText(root.get("eos_token"));
        }
        if (jinja == null && Files.isRegularFile(dir.resolve("chat_template.jinja"))) {
            where = dir.resolve("chat_template.jinja").toString();
            try {
                jinja = Files.readString(dir.resolve("chat_template.jinja"), StandardCharsets.UTF_8);
            } catch (IOException e) {
                throw new ModelLoadException(where + ": cannot read it (" + e.getMessage() + ")", e);
            }
        }
        if (jinja == null && Files.isRegularFile(dir.resolve("chat_template.json"))) {
            Path p = dir.resolve("chat_template.json");
            jinja = templateText(readJson(p).get("chat_template"), p);
            where = p.toString();
        }
        if (jinja == null)
            throw new ModelLoadException(dir + " has no chat template (a base model?): pass --chat-template "
                    + String.join("|", Arrays.stream(Format.values()).map(f -> f.id).toList())
                    + " to pick a format, or use generate");
        Format f = detect(jinja);
        try {
            return fromJinja(jinja, bos, eos, where);
        } catch (Jinja.TemplateException e) {
            if (f == null)
                throw new ModelLoadException(where + ": its chat template does not parse (" + e.getMessage()
                        + ") and is not one of the known families (" + names() + "): pass --chat-template NAME");
            return new ChatTemplate(f, "built-in, as " + where + " does not parse: " + e.getMessage(), null, null, null, null);
        }
    }

    /**
     * A Jinja template file (e.g. {@code --chat-template-file}); the special-token strings come from the model's
     * {@code tokenizer_config.json} in {@code modelDir} when it has one.
     *
     * @throws ModelLoadException if the file cannot be read or does not parse
     */
    public static ChatTemplate fromFile(Path file, Path modelDir) {
        String text;
        try {
            text = Files.readString(file, StandardCharsets.UTF_8);
        } catch (IOException e) {
            throw new ModelLoadException(file + ": cannot read the chat template (" + e.getMessage() + ")", e);
        }
        String bos = null, eos = null;
        Path cfg = modelDir == null ? null : modelDir.resolve(TOKENIZER_CONFIG_FILE);
        if (cfg != null && Files.isRegularFile(cfg)) {
            JsonNode root = readJson(cfg);
            bos = tokenText(root.get("bos_token"));
            eos = tokenText(root.get("eos_token"));
        }
        try {
            return fromJinja(text, bos, eos, file.toString());
        } catch (Jinja.TemplateException e) {
            throw new ModelLoadException(file + ": the chat template does not parse: " + e.getMessage());
        }
    }

    /** A special token in tokenizer_config.json: a string or an object with "content"; null if absent. */
    private static String tokenText(JsonNode t) {
        if (t == null || t.isNull()) return null;
        if (t.isTextual()) return t.asText();
        return t.path("content").asText(null);
    }

    private static JsonNode readJson(Path p) {
        try {
            return JSON.readTree(p.toFile());
        } catch (IOException e) {
            throw new ModelLoadException(p + ": not valid JSON (" + ModelLoadException.firstLine(e) + "); fix the file", e);
        }
    }

    private static String templateText(JsonNode t, Path file) {
        if (t == null || t.isNull()) return null;
        if (t.isTextual()) return t.asText();
        if (t.isArray()) {
            String first = null;
            for (JsonNode e : t) {
                String text = e.path("template").asText(null);
                if (first == null) first = text;
                if ("default".equals(e.path("name").asText())) return text;
            }
            return first;
        }
        throw new ModelLoadException(file + ": chat_template must be a string or a list of {name, template}");
    }

    /** The family (null for a model template of no known family). */
    public Format format() { return format; }

    /** The family's name, or "jinja" for a model template of no known family. */
    public String name() { return format != null ? format.id : "jinja"; }

    /** Whether this runs the model's own Jinja template (else a built-in format). */
    public boolean isModelTemplate() { return jinja != null; }

    /** Where the format came from (a file, or "built-in"). */
    public String source() { return source; }

    /**
     * Text that closes an assistant reply in this format (what follows the reply's content): the family's, or for a
     * model template what it writes after an assistant message's content.
     */
    public synchronized String endOfReply() {
        if (endOfReply == null) {
            String marker = "tokenpress-reply-7f3a", close = null;
            try {
                String t = render(List.of(Message.user("question"), Message.assistant(marker)), false);
                int i = t.lastIndexOf(marker);
                if (i >= 0) close = t.substring(i + marker.length());
            } catch (IllegalArgumentException e) {
                close = null;
            }
            endOfReply = close != null && !close.isEmpty() ? close : format != null ? format.endOfReply : eos;
        }
        return endOfReply;
    }

    /**
     * Special tokens that end a reply: the family's end-of-turn tokens and, for a model template, its EOS token; the
     * ones in a vocabulary stop generation.
     */
    public List<String> stopTokens() {
        List<String> out = new ArrayList<>(format != null ? format.stopTokens : List.of());
        if (jinja != null && !eos.isEmpty() && !out.contains(eos)) out.add(eos);
        return out;
    }

    /**
     * The text of a conversation, followed by the prompt of an assistant reply if {@code addReplyPrompt}. A system
     * message may only come first; an assistant message follows a user message.
     *
     * @throws IllegalArgumentException if the conversation breaks those rules or the model's template refuses it
     */
    public String render(List<Message> messages, boolean addReplyPrompt) {
        return render(messages, addReplyPrompt, null);
    }

    /**
     * As {@link #render(List, boolean)}, offering the model {@code tools}: OpenAI's list of {@code {"type":
     * "function", "function": {"name", "description", "parameters"}}} (null or empty: none), given to the model's
     * template as transformers' {@code apply_chat_template(tools=...)} does. Tool calls of assistant messages reach the
     * template as {@code {"id", "type": "function", "function": {"name", "arguments"}}} with the arguments as a
     * mapping when they are a JSON object (what transformers' templates expect), and tool messages as {@code {"role":
     * "tool", "content", "tool_call_id"}}.
     *
     * @throws IllegalArgumentException as there, and for tools or tool messages in a built-in format, or tools the
     *                                  model's template never mentions
     */
    public String render(List<Message> messages, boolean addReplyPrompt, JsonNode tools) {
        return render(messages, addReplyPrompt, tools, Map.of());
    }

    /**
     * As {@link #render(List, boolean, JsonNode)}, with more variables for the model's template ({@code
     * chat_template_kwargs}, e.g. Qwen3's {@code enable_thinking}: values as {@link Jinja} takes them); they cannot
     * replace the ones named above, and a built-in format has no use for them.
     */
    public String render(List<Message> messages, boolean addReplyPrompt, JsonNode tools, Map<String, Object> extra) {
        boolean hasTools = tools != null && !tools.isNull() && !(tools.isArray() && tools.isEmpty());
        if (hasTools && !tools.isArray()) throw new IllegalArgumentException("tools must be a list");
        if (jinja != null) {
            if (hasTools && !acceptsTools())
                throw new IllegalArgumentException("the chat template (" + source + ") takes no tools");
            for (int i = 0; i < messages.size(); i++)
                if (i > 0 && messages.get(i).role().equals("system"))
                    throw new IllegalArgumentException("a system message may only be the first message of a conversation");
            List<Object> list = new ArrayList<>();
            for (Message m : messages) {
                Map<String, Object> mm = new LinkedHashMap<>();
                mm.put("role", m.role());
                mm.put("content", m.content().isEmpty() && !m.toolCalls().isEmpty() ? null : m.content());
                if (!m.toolCalls().isEmpty()) {
                    List<Object> calls = new ArrayList<>();
                    for (ToolCall c : m.toolCalls()) {
                        Map<String, Object> fn = new LinkedHashMap<>();
                        fn.put("name", c.name());
                        fn.put("arguments", argumentsValue(c.arguments()));
                        Map<String, Object> call = new LinkedHashMap<>();
                        call.put("id", c.id());
                        call.put("type", "function");
                        call.put("function", fn);
                        calls.add(call);
                    }
                    mm.put("tool_calls", calls);
                }
                if (m.toolCallId() != null) mm.put("tool_call_id", m.toolCallId());
                if (m.reasoningContent() != null) mm.put("reasoning_content", m.reasoningContent());
                list.add(mm);
            }
            Map<String, Object> vars = new HashMap<>(extra);
            vars.put("messages", list);
            vars.put("add_generation_prompt", addReplyPrompt);
            vars.put("bos_token", bos);
            vars.put("eos_token", eos);
            vars.put("tools", hasTools ? jinjaValue(tools) : null);
            vars.put("documents", null);
            try {
                return jinja.render(vars);
            } catch (Jinja.TemplateException e) {
                throw new IllegalArgumentException("the chat template (" + source + ") refuses this conversation: "
                        + e.getMessage());
            }
        }
        if (hasTools)
            throw new IllegalArgumentException("tools need the model's own chat template; the built-in " + format.id
                    + " format has none: pass --chat-template-file with the model's template");
        for (Message m : messages)
            if (m.role().equals("tool") || !m.toolCalls().isEmpty())
                throw new IllegalArgumentException("tool calls and tool messages need the model's own chat template; the "
                        + "built-in " + format.id + " format has none: pass --chat-template-file with the model's template");
        return renderBuiltIn(messages, addReplyPrompt);
    }

    /** Whether the model's template reads the tools it is given (it mentions {@code tools}); false for a built-in one. */
    public boolean acceptsTools() {
        return text != null && text.contains("tools");
    }

    /** The model's template text, or null for a built-in format. */
    public String templateText() { return text; }

    /** A tool call's arguments for a template: the mapping when they are a JSON object, else the text as given. */
    private static Object argumentsValue(String arguments) {
        try {
            JsonNode n = JSON.readTree(arguments);
            if (n != null && n.isObject()) return jinjaValue(n);
        } catch (IOException e) {
            // not JSON: the text as it is
        }
        return arguments;
    }

    /** A JSON value as the template engine's values: maps (in order), lists, strings, integers, doubles, booleans, null. */
    public static Object jinjaValue(JsonNode n) {
        if (n == null || n.isNull() || n.isMissingNode()) return null;
        if (n.isObject()) {
            Map<String, Object> m = new LinkedHashMap<>();
            n.fields().forEachRemaining(e -> m.put(e.getKey(), jinjaValue(e.getValue())));
            return m;
        }
        if (n.isArray()) {
            List<Object> l = new ArrayList<>();
            for (JsonNode x : n) l.add(jinjaValue(x));
            return l;
        }
        if (n.isBoolean()) return n.asBoolean();
        if (n.isIntegralNumber()) return n.canConvertToLong() ? (Object) n.asLong() : n.bigIntegerValue();
        if (n.isNumber()) return n.asDouble();
        return n.asText();
    }

    private String renderBuiltIn(List<Message> messages, boolean addReplyPrompt) {
        String system = null;
        int start = 0;
        if (!messages.isEmpty() && messages.get(0).role().equals("system")) {
            system = messages.get(0).content();
            start = 1;
        }
        StringBuilder sb = new StringBuilder();
        if (format == Format.LLAMA3 && system != null) header(sb, "system", system);
        if (format == Format.CHATML && system != null) chatml(sb, "system", system);
        boolean firstUser = true;
        String prev = "system";
        for (int i = start; i < messages.size(); i++) {
            Message m = messages.get(i);
            if (m.role().equals("system"))
                throw new IllegalArgumentException("a system message may only be the first message of a conversation");
            if (m.role().equals("assistant") && !prev.equals("user"))
                throw new IllegalArgumentException("an assistant message must follow a user message (message " + i + ")");
            switch (format) {
                case LLAMA3 -> header(sb, m.role(), m.content());
                case CHATML -> chatml(sb, m.role(), m.content());
                case LLAMA2 -> {
                    if (m.role().equals("user")) {
                        if (!firstUser) sb.append("<s>");
                        sb.append("[INST] ");
                        if (firstUser && system != null) sb.append("<<SYS>>\n").append(system.strip()).append("\n<</SYS>>\n\n");
                        sb.append(m.content().strip()).append(" [/INST]");
                    } else {
                        sb.append(m.content()).append(format.endOfReply);
                    }
                }
                case MISTRAL -> {
                    if (m.role().equals("user")) {
                        sb.append("[INST] ");
                        if (firstUser && system != null) sb.append(system.strip()).append("\n\n");
                        sb.append(m.content().strip()).append(" [/INST]");
                    } else {
                        sb.append(m.content()).append(format.endOfReply);
                    }
                }
            }
            if (m.role().equals("user")) firstUser = false;
            prev = m.role();
        }
        if (addReplyPrompt) {
            switch (format) {
                case LLAMA3 -> sb.append("<|start_header_id|>assistant<|end_header_id|>\n\n");
                case CHATML -> sb.append("<|im_start|>assistant\n");
                case LLAMA2, MISTRAL -> { }
            }
        }
        return sb.toString();
    }

    private static void header(StringBuilder sb, String role, String content) {
        sb.append("<|start_header_id|>").append(role).append("<|end_header_id|>\n\n").append(content.strip())
                .append("<|eot_id|>");
    }

    private static void chatml(StringBuilder sb, String role, String content) {
        sb.append("<|im_start|>").append(role).append('\n').append(content).append("<|im_end|>\n");
    }

    /** The ids of {@link #stopTokens} that {@code tokenizer} has (as single tokens). */
    public int[] stopTokenIds(HfTokenizer tokenizer) {
        List<Integer> ids = new ArrayList<>();
        for (String s : stopTokens()) {
            int id = tokenizer.tokenId(s);
            if (id >= 0) ids.add(id);
        }
        return ids.stream().mapToInt(Integer::intValue).toArray();
    }

    @Override
    public String toString() {
        return name() + (jinja != null ? " (the model's template, " + source + ")" : " (" + source + ")");
    }
}
