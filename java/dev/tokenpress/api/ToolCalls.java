package dev.tokenpress.api;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.tokenpress.io.ChatTemplate;
import dev.tokenpress.io.ChatTemplate.ToolCall;
import dev.tokenpress.sample.JsonSchemaGrammar;

import java.io.IOException;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.regex.Pattern;

/**
 * Function calling (OpenAI's {@code tools}): the tools a request offers, the calls a model's reply makes in its
 * family's own notation, and the grammar that makes a reply a call when the request demands one.
 * <p>
 * A model writes its calls as it was trained to, which its chat template shows ({@link #styleOf}):
 * <ul>
 *   <li>{@link Style#HERMES} (Qwen2/2.5/3, Hermes and other ChatML models): {@code <tool_call>{"name": ..., "arguments":
 *       {...}}</tool_call>} blocks, after optional text;</li>
 *   <li>{@link Style#LLAMA3_JSON} (Llama 3.1-3.3): the whole reply is {@code {"name": ..., "parameters": {...}}},
 *       optionally after {@code <|python_tag|>}, several separated by {@code ;};</li>
 *   <li>{@link Style#MISTRAL} (Mistral v0.3 and later): {@code [TOOL_CALLS]} then a JSON list of {@code {"name",
 *       "arguments"}}, or {@code [TOOL_CALLS]name[ARGS]{...}} per call;</li>
 *   <li>{@link Style#GENERIC}: a template that takes tools in none of those notations.</li>
 * </ul>
 * {@link #parse} reads every one of these notations whatever the style (models drift between them), but only a call
 * whose name is one of the offered tools and whose arguments are a JSON object counts, and a reply counts as calls
 * only when all of its call blocks do, so ordinary text and JSON answers stay content. The content beside calls is the
 * text before the first call without its trailing blanks (what a stream sends of it too).
 */
public final class ToolCalls {
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final com.fasterxml.jackson.databind.ObjectReader STRICT =
            JSON.reader().with(com.fasterxml.jackson.databind.DeserializationFeature.FAIL_ON_TRAILING_TOKENS);
    private static final SecureRandom RANDOM = new SecureRandom();
    private static final Pattern NAME = Pattern.compile("[A-Za-z0-9_.-]{1,64}");
    private static final String HERMES_OPEN = "<tool_call>", HERMES_CLOSE = "</tool_call>", PYTHON_TAG = "<|python_tag|>",
            MISTRAL_CALLS = "[TOOL_CALLS]", MISTRAL_ARGS = "[ARGS]";
    private static final String[] MARKERS = {HERMES_OPEN, MISTRAL_CALLS};

    private ToolCalls() {}

    /** How a model family writes its tool calls. */
    public enum Style { HERMES, LLAMA3_JSON, MISTRAL, GENERIC }

    /** A reply read for tool calls: its text outside the calls (empty when none) and the calls (empty when none). */
    public record Parsed(String content, List<ToolCall> calls) {
        public boolean hasCalls() { return !calls.isEmpty(); }
    }

    /** The style of a chat template's tool calls, from the notation its text uses. */
    public static Style styleOf(ChatTemplate t) {
        String s = t.templateText();
        if (s == null) return Style.GENERIC;
        if (s.contains(HERMES_OPEN)) return Style.HERMES;
        if (s.contains(MISTRAL_CALLS)) return Style.MISTRAL;
        if (t.format() == ChatTemplate.Format.LLAMA3 || s.contains(PYTHON_TAG) || s.contains("\"parameters\"")) return Style.LLAMA3_JSON;
        return Style.GENERIC;
    }

    /**
     * The names of OpenAI's {@code tools} list, each {@code {"type": "function", "function": {"name", "description"?,
     * "parameters"?}}}, in order.
     *
     * @throws IllegalArgumentException for a list that is not of that shape (one line naming the bad entry)
     */
    public static Set<String> names(JsonNode tools) {
        if (tools == null || !tools.isArray()) throw new IllegalArgumentException("'tools' must be a list of functions");
        Set<String> names = new LinkedHashSet<>();
        for (int i = 0; i < tools.size(); i++) {
            JsonNode t = tools.get(i);
            if (!t.isObject() || !t.path("type").asText("").equals("function") || !t.path("function").isObject())
                throw new IllegalArgumentException("tools[" + i + "] must be {\"type\": \"function\", \"function\": {...}}");
            JsonNode f = t.get("function");
            String name = f.path("name").asText("");
            if (!f.path("name").isTextual() || !NAME.matcher(name).matches())
                throw new IllegalArgumentException("tools[" + i + "].function.name must be 1-64 letters, digits, '_', '-' or '.'");
            if (!names.add(name)) throw new IllegalArgumentException("tools[" + i + "]: the name '" + name + "' is taken twice");
            JsonNode p = f.get("parameters");
            if (p != null && !p.isNull() && !p.isObject())
                throw new IllegalArgumentException("tools[" + i + "].function.parameters must be a JSON schema object");
        }
        return names;
    }

    /**
     * The calls in a reply: the blocks of any notation above whose names are in {@code names}; when some block is not
     * such a call (unknown name, broken JSON, arguments not an object), none count and the whole reply is content.
     */
    public static Parsed parse(String text, Set<String> names) {
        List<ToolCall> calls = new ArrayList<>();
        // the whole reply as JSON: one object, a list of them, or objects separated by ';' (Llama 3's notation)
        String s = text.strip();
        if (s.startsWith(PYTHON_TAG)) s = s.substring(PYTHON_TAG.length()).strip();
        if (s.startsWith("{") || s.startsWith("[")) {
            int at = 0;
            boolean all = true;
            while (at < s.length() && all) {
                int end = jsonEnd(s, at);
                if (end < 0 || !addAll(s.substring(at, end), names, calls)) all = false;
                at = end;
                while (all && at < s.length() && (Character.isWhitespace(s.charAt(at)) || s.charAt(at) == ';')) at++;
                if (all && at < s.length() && s.charAt(at) != '{' && s.charAt(at) != '[') all = false;
            }
            if (all && !calls.isEmpty()) return new Parsed("", calls);
            calls.clear();
        }
        // <tool_call>...</tool_call> blocks (the last one may lack its closing tag when the reply ended there)
        int open = text.indexOf(HERMES_OPEN);
        if (open >= 0) {
            int at = open;
            while (at >= 0) {
                int from = at + HERMES_OPEN.length();
                int close = text.indexOf(HERMES_CLOSE, from);
                String body = (close < 0 ? text.substring(from) : text.substring(from, close)).strip();
                ToolCall c = call(body, names);
                if (c == null) return new Parsed(text, List.of());
                calls.add(c);
                if (close < 0) break;
                int next = text.indexOf(HERMES_OPEN, close);
                if (next < 0 && !text.substring(close + HERMES_CLOSE.length()).isBlank()) return new Parsed(text, List.of());
                at = next;
            }
            return new Parsed(text.substring(0, open).stripTrailing(), calls);
        }
        int mark = text.indexOf(MISTRAL_CALLS);
        if (mark >= 0) {
            String rest = text.substring(mark);
            while (rest.startsWith(MISTRAL_CALLS)) {
                rest = rest.substring(MISTRAL_CALLS.length()).stripLeading();
                if (rest.startsWith("[") || rest.startsWith("{")) { // a JSON list (or one object)
                    int end = jsonEnd(rest, 0);
                    if (end < 0 || !addAll(rest.substring(0, end), names, calls)) return new Parsed(text, List.of());
                    rest = rest.substring(end).stripLeading();
                } else { // name[ARGS]{...}
                    int args = rest.indexOf(MISTRAL_ARGS);
                    if (args < 0) return new Parsed(text, List.of());
                    String name = rest.substring(0, args).strip();
                    String a = rest.substring(args + MISTRAL_ARGS.length()).stripLeading();
                    int end = a.startsWith("{") ? jsonEnd(a, 0) : -1;
                    if (end < 0 || !names.contains(name)) return new Parsed(text, List.of());
                    JsonNode argv = read(a.substring(0, end));
                    if (argv == null || !argv.isObject()) return new Parsed(text, List.of());
                    calls.add(new ToolCall("", name, argv.toString()));
                    rest = a.substring(end).stripLeading();
                }
            }
            if (!rest.isBlank() || calls.isEmpty()) return new Parsed(text, List.of());
            return new Parsed(text.substring(0, mark).stripTrailing(), calls);
        }
        return new Parsed(text, List.of());
    }

    /** Adds the call(s) of one JSON object or list; false if it is not all calls. */
    private static boolean addAll(String json, Set<String> names, List<ToolCall> out) {
        JsonNode n = read(json);
        if (n == null) return false;
        if (n.isObject()) {
            ToolCall c = call(n, names);
            if (c == null) return false;
            out.add(c);
            return true;
        }
        if (!n.isArray() || n.isEmpty()) return false;
        for (JsonNode x : n) {
            ToolCall c = call(x, names);
            if (c == null) return false;
            out.add(c);
        }
        return true;
    }

    private static ToolCall call(String json, Set<String> names) {
        JsonNode n = read(json);
        return n == null ? null : call(n, names);
    }

    /** {"name": N, "arguments"|"parameters": {...}} with N offered; null otherwise. */
    private static ToolCall call(JsonNode n, Set<String> names) {
        if (!n.isObject()) return null;
        if (n.path("function").isObject() && !n.has("name")) n = n.get("function"); // OpenAI's own shape
        String name = n.path("name").asText(null);
        if (name == null || !n.get("name").isTextual() || !names.contains(name)) return null;
        JsonNode args = n.has("arguments") ? n.get("arguments") : n.get("parameters");
        if (args == null || args.isNull()) args = JSON.createObjectNode();
        if (args.isTextual()) { // arguments written as a JSON string
            JsonNode inner = read(args.asText());
            if (inner == null || !inner.isObject()) return null;
            args = inner;
        }
        if (!args.isObject()) return null;
        return new ToolCall("", name, args.toString());
    }

    /** One JSON value and nothing after it, or null. */
    private static JsonNode read(String json) {
        try {
            return STRICT.readTree(json);
        } catch (IOException e) {
            return null;
        }
    }

    /** The index just past the JSON object or list that starts at {@code from}, or -1 if it does not close. */
    static int jsonEnd(String s, int from) {
        int depth = 0;
        boolean inString = false;
        for (int i = from; i < s.length(); i++) {
            char c = s.charAt(i);
            if (inString) {
                if (c == '\\') i++;
                else if (c == '"') inString = false;
            } else if (c == '"') {
                inString = true;
            } else if (c == '{' || c == '[') {
                depth++;
            } else if (c == '}' || c == ']') {
                if (--depth == 0) return i + 1;
                if (depth < 0) return -1;
            }
        }
        return -1;
    }

    /**
     * How much of a reply so far can be streamed as content: none while it may be a call written as the whole reply
     * (it starts, after blanks, with {@code {}, {@code [} or a call marker, or a prefix of one), else everything before
     * the first call marker, less an ending that may begin one and less trailing blanks.
     */
    public static int streamableLength(String text) {
        String lead = text.stripLeading();
        if (lead.isEmpty() || lead.startsWith("{") || lead.startsWith("[")) return 0;
        for (String m : new String[] {HERMES_OPEN, MISTRAL_CALLS, PYTHON_TAG})
            if (lead.startsWith(m) || m.startsWith(lead)) return 0;
        int first = text.length();
        for (String m : MARKERS) {
            int i = text.indexOf(m);
            if (i >= 0) first = Math.min(first, i);
        }
        int end = first;
        if (first == text.length()) {
            int keep = 0; // the longest ending that is a proper prefix of a marker
            for (String m : MARKERS)
                for (int k = Math.min(m.length() - 1, text.length()); k > keep; k--)
                    if (text.endsWith(m.substring(0, k))) {
                        keep = k;
                        break;
                    }
            end = text.length() - keep;
        }
        while (end > 0 && Character.isWhitespace(text.charAt(end - 1))) end--; // blanks that may precede a call
        return end;
    }

    /**
     * A GBNF grammar whose sentences are tool calls in {@code style}'s notation (HERMES and GENERIC: {@code
     * <tool_call>} blocks; LLAMA3_JSON: one {@code {"name", "parameters"}} object; MISTRAL: a JSON list of {@code
     * {"name", "arguments"}}, without the {@code [TOOL_CALLS]} control token, which text cannot spell): of the tool
     * {@code only} (null: any offered tool), one call or, when {@code parallel}, one or more. A tool's arguments follow
     * its parameters schema ({@link JsonSchemaGrammar}); a schema that uses a feature it does not support constrains
     * them to any JSON object instead.
     */
    public static String grammar(JsonNode tools, String only, boolean parallel, Style style) {
        names(tools);
        ArrayNode alternatives = JSON.createArrayNode();
        ObjectNode defs = JSON.createObjectNode();
        String argsKey = style == Style.LLAMA3_JSON ? "parameters" : "arguments";
        int i = 0;
        for (JsonNode t : tools) {
            JsonNode f = t.get("function");
            String name = f.get("name").asText();
            i++;
            if (only != null && !only.equals(name)) continue;
            JsonNode params = f.get("parameters");
            JsonNode schema = params == null || params.isNull() ? JSON.createObjectNode().put("type", "object")
                    : hoist(params, "t" + i, defs);
            boolean delegates = false; // the root refers elsewhere: the schema it names decides
            for (String k : new String[] {"$ref", "anyOf", "oneOf", "allOf", "enum", "const"}) delegates |= schema.has(k);
            if (schema.isObject() && !schema.has("type") && !delegates) ((ObjectNode) schema).put("type", "object"); // {}: no parameters
            if (!delegates && !schema.path("type").asText("").equals("object")) schema = JSON.createObjectNode().put("type", "object");
            try { // the tool's schema where it will sit, with the definitions hoisted so far
                ObjectNode probe = JSON.createObjectNode();
                probe.put("type", "object");
                probe.putObject("properties").set(argsKey, schema);
                probe.putArray("required").add(argsKey);
                probe.set("$defs", defs.deepCopy());
                JsonSchemaGrammar.toGbnf(probe);
            } catch (IllegalArgumentException e) {
                schema = JSON.createObjectNode().put("type", "object");
            }
            ObjectNode call = JSON.createObjectNode();
            call.put("type", "object");
            ObjectNode props = call.putObject("properties");
            props.putObject("name").put("const", name);
            props.set(argsKey, schema);
            call.putArray("required").add("name").add(argsKey);
            alternatives.add(call);
        }
        if (alternatives.isEmpty())
            throw new IllegalArgumentException("tool_choice names the function '" + only + "', which 'tools' does not offer");
        ObjectNode root = JSON.createObjectNode();
        if (alternatives.size() == 1) root.setAll((ObjectNode) alternatives.get(0));
        else root.set("anyOf", alternatives);
        if (!defs.isEmpty()) root.set("$defs", defs);
        String gbnf = JsonSchemaGrammar.toGbnf(root);
        if (!gbnf.startsWith("root ::= ")) throw new IllegalStateException("unexpected grammar: " + gbnf.lines().findFirst().orElse(""));
        gbnf = "tool-call ::= " + gbnf.substring("root ::= ".length());
        String top = switch (style) {
            case HERMES, GENERIC -> parallel
                    ? "root ::= tool-block (\"\\n\" tool-block)*\ntool-block ::= \"<tool_call>\\n\" tool-call \"\\n</tool_call>\"\n"
                    : "root ::= \"<tool_call>\\n\" tool-call \"\\n</tool_call>\"\n";
            case LLAMA3_JSON -> "root ::= tool-call\n";
            case MISTRAL -> parallel ? "root ::= \"[\" tool-call (\", \" tool-call)* \"]\"\n" : "root ::= \"[\" tool-call \"]\"\n";
        };
        return top + gbnf;
    }

    /**
     * A tool's parameters schema with its definitions moved into {@code defs} under names prefixed with {@code
     * prefix} and its references rewritten to match (a reference to its own root included), so that several tools'
     * schemas live in one.
     */
    private static JsonNode hoist(JsonNode params, String prefix, ObjectNode defs) {
        JsonNode copy = params.deepCopy();
        boolean selfRef = rewriteRefs(copy, prefix);
        if (copy.isObject()) {
            ObjectNode o = (ObjectNode) copy;
            for (String key : new String[] {"$defs", "definitions"}) {
                JsonNode d = o.remove(key);
                if (d != null && d.isObject())
                    for (Iterator<Map.Entry<String, JsonNode>> it = d.fields(); it.hasNext(); ) {
                        var e = it.next();
                        defs.set(prefix + "-" + e.getKey(), e.getValue());
                    }
            }
            if (selfRef) defs.set(prefix, o.deepCopy()); // user definitions are "prefix-NAME", so no clash
        }
        return copy;
    }

    /**
     * Rewrites "#/$defs/X" and "#/definitions/X" to "#/$defs/PREFIX-X", and "#" and other "#/..." pointers into the
     * schema to "#/$defs/PREFIX..." (the schema's own copy); true if the latter occur.
     */
    private static boolean rewriteRefs(JsonNode n, String prefix) {
        boolean self = false;
        if (n.isObject()) {
            ObjectNode o = (ObjectNode) n;
            JsonNode ref = o.get("$ref");
            if (ref != null && ref.isTextual()) {
                String r = ref.asText();
                if (r.equals("#")) {
                    o.put("$ref", "#/$defs/" + prefix);
                    self = true;
                } else if (r.startsWith("#/$defs/")) {
                    o.put("$ref", "#/$defs/" + prefix + "-" + r.substring("#/$defs/".length()));
                } else if (r.startsWith("#/definitions/")) {
                    o.put("$ref", "#/$defs/" + prefix + "-" + r.substring("#/definitions/".length()));
                } else if (r.startsWith("#/")) { // into the schema itself, e.g. #/properties/a
                    o.put("$ref", "#/$defs/" + prefix + r.substring(1));
                    self = true;
                }
            }
            for (Iterator<Map.Entry<String, JsonNode>> it = o.fields(); it.hasNext(); ) {
                var e = it.next();
                if (!e.getKey().equals("$ref")) self |= rewriteRefs(e.getValue(), prefix);
            }
        } else if (n.isArray()) {
            for (JsonNode x : n) self |= rewriteRefs(x, prefix);
        }
        return self;
    }

    /** A fresh call id: Mistral's templates want nine letters and digits, the others OpenAI's {@code call_...}. */
    public static String newId(Style style) {
        String alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        int n = style == Style.MISTRAL ? 9 : 24;
        StringBuilder sb = new StringBuilder(style == Style.MISTRAL ? "" : "call_");
        for (int i = 0; i < n; i++) sb.append(alphabet.charAt(RANDOM.nextInt(alphabet.length())));
        return sb.toString();
    }

    /** The calls with fresh ids (parsed calls carry none). */
    public static List<ToolCall> withIds(List<ToolCall> calls, Style style) {
        List<ToolCall> out = new ArrayList<>();
        for (ToolCall c : calls) out.add(new ToolCall(c.id().isEmpty() ? newId(style) : c.id(), c.name(), c.arguments()));
        return out;
    }
}
