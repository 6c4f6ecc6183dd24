package dev.tokenpress.sample;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

import java.util.ArrayList;
import java.util.HashSet;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Turns a JSON Schema into a {@link Grammar} (GBNF) whose sentences are the JSON texts the schema accepts, for
 * structured output ({@code generate --json-schema}, OpenAI's {@code response_format: json_schema}), in the style of
 * llama.cpp's {@code json_schema_to_grammar}. Supported: {@code type} (object, array, string, number, integer,
 * boolean, null, or a list of them), {@code properties} / {@code required} (properties come in the schema's order,
 * the required ones first; no other keys unless the object has no {@code properties}, when {@code
 * additionalProperties} gives the values' schema), {@code items}, {@code minItems} / {@code maxItems}, {@code
 * minLength} / {@code maxLength}, {@code pattern} (ECMAScript regular expressions, {@link JsonRegex}), {@code format}
 * date, time, date-time and uuid (other formats stay annotations), integer {@code minimum} / {@code maximum} /
 * {@code exclusiveMinimum} / {@code exclusiveMaximum} (on numbers they are refused), {@code enum}, {@code const}, {@code anyOf} / {@code oneOf}, {@code $ref} into
 * {@code $defs} / {@code definitions} (recursion allowed), and {@code {}} / {@code true} for any value. Keywords that
 * would change what is accepted but are not supported ({@code allOf}, {@code not}, {@code
 * prefixItems}, {@code additionalProperties} beside {@code properties}, ...) are refused with an error, never ignored;
 * annotations ({@code title}, {@code description}, other {@code format}s, {@code default}, {@code examples}) are ignored.
 * Whitespace between tokens follows llama.cpp's JSON grammar: one space, or a newline and up to 20 blanks.
 */
public final class JsonSchemaGrammar {
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final Set<String> IGNORED = Set.of("title", "description", "format", "default", "examples",
            "$schema", "$id", "$comment", "$defs", "definitions", "strict", "name", "readOnly", "writeOnly", "deprecated");

    private static final Map<String, String> PRIMITIVES = new LinkedHashMap<>();

    static {
        PRIMITIVES.put("ws", "| \" \" | \"\\n\" [ \\t]{0,20}");
        PRIMITIVES.put("char", "[^\"\\\\\\x7F\\x00-\\x1F] | \"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4})");
        PRIMITIVES.put("string", "\"\\\"\" char* \"\\\"\" ws");
        PRIMITIVES.put("integer", "\"-\"? ([0-9] | [1-9] [0-9]{0,15}) ws");
        PRIMITIVES.put("number", "\"-\"? ([0-9] | [1-9] [0-9]{0,15}) (\".\" [0-9]{1,16})? ([eE] [-+]? [0-9]{1,15})? ws");
        PRIMITIVES.put("boolean", "(\"true\" | \"false\") ws");
        PRIMITIVES.put("null", "\"null\" ws");
        PRIMITIVES.put("value", "object | array | string | number | boolean | null");
        PRIMITIVES.put("object", "\"{\" ws ( string \":\" ws value ( \",\" ws string \":\" ws value )* )? \"}\" ws");
        PRIMITIVES.put("array", "\"[\" ws ( value ( \",\" ws value )* )? \"]\" ws");
    }

    private final JsonNode root;
    private final Map<String, String> rules = new LinkedHashMap<>();
    private int counter;

    private JsonSchemaGrammar(JsonNode root) {
        this.root = root;
    }

    /** Compiles a schema given as JSON text. */
    public static Grammar compile(String schemaJson) {
        return Grammar.parse(toGbnf(schemaJson));
    }

    /** The GBNF text for a schema given as JSON text; IllegalArgumentException for bad JSON or unsupported parts. */
    public static String toGbnf(String schemaJson) {
        JsonNode n;
        try {
            n = JSON.readTree(schemaJson);
        } catch (JsonProcessingException e) {
            throw new IllegalArgumentException("JSON schema: not valid JSON (" + e.getOriginalMessage() + ")");
        }
        if (n == null) throw new IllegalArgumentException("JSON schema: empty");
        return toGbnf(n);
    }

    /** The GBNF text for a schema. */
    public static String toGbnf(JsonNode schema) {
        JsonSchemaGrammar g = new JsonSchemaGrammar(schema);
        String top = g.visit(schema, "root-value", "#");
        StringBuilder sb = new StringBuilder("root ::= ").append(top).append('\n');
        for (var e : g.rules.entrySet()) sb.append(e.getKey()).append(" ::= ").append(e.getValue()).append('\n');
        // the primitive rules, all of them (those the schema does not reach are never entered)
        for (var e : PRIMITIVES.entrySet()) sb.append(e.getKey()).append(" ::= ").append(e.getValue()).append('\n');
        return sb.toString();
    }

    private String newRule(String hint, String body) {
        String name = unique(sanitize(hint));
        rules.put(name, body);
        return name;
    }

    /** base-N with the first N that no rule (nor primitive) has taken. */
    private String unique(String base) {
        String name;
        do name = base + "-" + (counter++); while (rules.containsKey(name) || PRIMITIVES.containsKey(name));
        return name;
    }

    private static String sanitize(String s) {
        String t = s.replaceAll("[^A-Za-z0-9-]", "-");
        return t.isEmpty() ? "r" : t.length() > 40 ? t.substring(0, 40) : t;
    }

    /** A GBNF expression (a rule name) for the values the schema accepts. */
    private String visit(JsonNode s, String hint, String path) {
        if (s.isBoolean()) {
            if (!s.asBoolean()) throw unsupported(path, "the schema false (nothing is allowed)");
            return "value";
        }
        if (!s.isObject()) throw new IllegalArgumentException("JSON schema: " + path + " is not a schema object");
        for (Iterator<String> it = s.fieldNames(); it.hasNext(); ) {
            String k = it.next();
            if (IGNORED.contains(k)) continue;
            if (!Set.of("type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
                    "minLength", "maxLength", "enum", "const", "anyOf", "oneOf", "$ref", "pattern", "minimum", "maximum",
                    "exclusiveMinimum", "exclusiveMaximum").contains(k))
                throw unsupported(path, "the keyword '" + k + "'");
        }
        if (s.has("$ref")) {
            onlyWith(s, path, "$ref");
            return ref(s.get("$ref").asText(), path);
        }
        if (s.has("const") || s.has("enum")) {
            onlyWith(s, path, "const", "enum", "type");
            List<JsonNode> values = new ArrayList<>();
            if (s.has("const")) values.add(s.get("const"));
            if (s.has("enum")) {
                JsonNode e = s.get("enum");
                if (!e.isArray() || e.isEmpty()) throw unsupported(path, "an empty or non-list enum");
                if (s.has("const")) throw unsupported(path, "const beside enum");
                e.forEach(values::add);
            }
            if (s.has("type")) { // the values the type also allows
                Set<String> types = new HashSet<>();
                if (s.get("type").isArray()) s.get("type").forEach(t -> types.add(t.asText()));
                else types.add(s.get("type").asText());
                values.removeIf(v -> !types.contains(jsonType(v)) && !(types.contains("number") && v.isNumber()));
                if (values.isEmpty()) throw unsupported(path, "an enum/const none of whose values has the type " + s.get("type"));
            }
            List<String> alts = new ArrayList<>();
            for (JsonNode v : values) alts.add(literalValue(v));
            return newRule(hint, String.join(" | ", alts));
        }
        for (String k : new String[] {"anyOf", "oneOf"})
            if (s.has(k)) {
                onlyWith(s, path, k);
                List<String> alts = new ArrayList<>();
                int i = 0;
                for (JsonNode sub : s.get(k)) alts.add(visit(sub, hint + "-" + i, path + "/" + k + "/" + i++));
                if (alts.isEmpty()) throw unsupported(path, "an empty " + k);
                return newRule(hint, String.join(" | ", alts));
            }
        JsonNode type = s.get("type");
        if (hasBounds(s) && (type == null || type.isArray()))
            throw unsupported(path, "minimum/maximum without \"type\": \"integer\"");
        if (type == null) {
            if (s.has("properties")) return object(s, hint, path);
            if (s.has("items")) return array(s, hint, path);
            return "value";
        }
        if (type.isArray()) {
            List<String> alts = new ArrayList<>();
            for (JsonNode t : type) alts.add(typed(t.asText(), s, hint + "-" + t.asText(), path));
            if (alts.isEmpty()) throw unsupported(path, "an empty type list");
            return newRule(hint, String.join(" | ", alts));
        }
        return typed(type.asText(), s, hint, path);
    }

    /** Refuses keywords (other than annotations) beside the given ones: they would otherwise be ignored. */
    private static void onlyWith(JsonNode s, String path, String... allowed) {
        Set<String> ok = Set.of(allowed);
        for (Iterator<String> it = s.fieldNames(); it.hasNext(); ) {
            String k = it.next();
            if (!IGNORED.contains(k) && !ok.contains(k))
                throw unsupported(path, "the keyword '" + k + "' beside " + String.join("/", allowed));
        }
    }

    /** The JSON Schema type name of a value ("integer" for integral numbers). */
    private static String jsonType(JsonNode v) {
        if (v.isIntegralNumber()) return "integer";
        if (v.isNumber()) return "number";
        if (v.isTextual()) return "string";
        if (v.isBoolean()) return "boolean";
        if (v.isNull()) return "null";
        return v.isArray() ? "array" : "object";
    }

    private String typed(String type, JsonNode s, String hint, String path) {
        return switch (type) {
            case "object" -> object(s, hint, path);
            case "array" -> array(s, hint, path);
            case "string" -> string(s, hint, path);
            case "number" -> {
                if (hasBounds(s)) throw unsupported(path, "minimum/maximum on a number (integers only)");
                yield "number";
            }
            case "integer" -> integer(s, hint, path);
            case "boolean" -> "boolean";
            case "null" -> "null";
            default -> throw unsupported(path, "the type '" + type + "'");
        };
    }

    /** String formats held to their syntax (RFC 3339 dates and times, RFC 4122 UUIDs); others stay annotations. */
    private static final Map<String, String> FORMATS = Map.of(
            "date", "[0-9]{4} \"-\" ( \"0\" [1-9] | \"1\" [0-2] ) \"-\" ( \"0\" [1-9] | [12] [0-9] | \"3\" [01] )",
            "time", "( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] \":\" [0-5] [0-9] ( \".\" [0-9]{1,9} )? "
                    + "( \"Z\" | ( \"+\" | \"-\" ) ( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] )",
            "uuid", "[0-9a-fA-F]{8} \"-\" [0-9a-fA-F]{4} \"-\" [0-9a-fA-F]{4} \"-\" [0-9a-fA-F]{4} \"-\" [0-9a-fA-F]{12}");

    private String string(JsonNode s, String hint, String path) {
        String fmt = s.path("format").asText("");
        String fmtRule = fmt.equals("date-time") ? FORMATS.get("date") + " \"T\" " + FORMATS.get("time") : FORMATS.get(fmt);
        boolean pattern = s.has("pattern");
        if (pattern && !s.get("pattern").isTextual()) throw unsupported(path, "a pattern that is not a string");
        if ((pattern || fmtRule != null) && (s.has("minLength") || s.has("maxLength")))
            throw unsupported(path, "minLength/maxLength beside " + (pattern ? "pattern" : "format " + fmt));
        if (pattern && fmtRule != null) throw unsupported(path, "pattern beside format " + fmt);
        if (pattern) return newRule(hint, "\"\\\"\" " + JsonRegex.toGbnf(s.get("pattern").asText(), path) + " \"\\\"\" ws");
        if (fmtRule != null) return newRule(hint, "\"\\\"\" " + fmtRule + " \"\\\"\" ws");
        int min = nonNegative(s, "minLength", 0, path), max = nonNegative(s, "maxLength", -1, path);
        if (min == 0 && max < 0) return "string";
        if (max >= 0 && max < min) throw unsupported(path, "maxLength below minLength");
        String rep = max < 0 ? "{" + min + ",}" : "{" + min + "," + max + "}";
        return newRule(hint, "\"\\\"\" char" + rep + " \"\\\"\" ws");
    }

    private String array(JsonNode s, String hint, String path) {
        String item = s.has("items") ? visit(s.get("items"), hint + "-item", path + "/items") : "value";
        int min = nonNegative(s, "minItems", 0, path), max = nonNegative(s, "maxItems", -1, path);
        if (max >= 0 && max < min) throw unsupported(path, "maxItems below minItems");
        String body;
        if (max == 0) body = "\"[\" ws \"]\" ws";
        else {
            String more = max < 0 ? "{" + Math.max(0, min - 1) + ",}" : "{" + Math.max(0, min - 1) + "," + (max - 1) + "}";
            String list = item + " ( \",\" ws " + item + " )" + more;
            body = min == 0 ? "\"[\" ws ( " + list + " )? \"]\" ws" : "\"[\" ws " + list + " \"]\" ws";
        }
        return newRule(hint, body);
    }

    private String object(JsonNode s, String hint, String path) {
        JsonNode props = s.get("properties"), additional = s.get("additionalProperties");
        if (props == null || props.isEmpty()) {
            if (s.has("required") && !s.get("required").isEmpty())
                throw unsupported(path, "the required property '" + s.get("required").get(0).asText()
                        + "' without a schema in properties");
            if (additional == null || additional.isBoolean() && additional.asBoolean()) {
                if (props != null && additional == null) return newRule(hint, "\"{\" ws \"}\" ws");
                return "object";
            }
            if (additional.isBoolean()) return newRule(hint, "\"{\" ws \"}\" ws");
            String v = visit(additional, hint + "-value", path + "/additionalProperties");
            return newRule(hint, "\"{\" ws ( string \":\" ws " + v + " ( \",\" ws string \":\" ws " + v + " )* )? \"}\" ws");
        }
        if (additional != null && !(additional.isBoolean() && !additional.asBoolean()))
            throw unsupported(path, "additionalProperties beside properties (give additionalProperties: false)");
        Set<String> required = new HashSet<>();
        if (s.has("required")) for (JsonNode r : s.get("required")) required.add(r.asText());
        for (String r : required)
            if (!props.has(r)) throw unsupported(path, "the required property '" + r + "' without a schema in properties");
        List<String> req = new ArrayList<>(), opt = new ArrayList<>();
        for (Iterator<Map.Entry<String, JsonNode>> it = props.fields(); it.hasNext(); ) {
            var e = it.next();
            String kv = newRule(hint + "-" + e.getKey() + "-kv", literalString(e.getKey()) + " ws \":\" ws "
                    + visit(e.getValue(), hint + "-" + e.getKey(), path + "/properties/" + e.getKey()));
            (required.contains(e.getKey()) ? req : opt).add(kv);
        }
        String tail = null; // a non-empty, comma-separated, in-order subsequence of the optional properties
        for (int i = opt.size() - 1; i >= 0; i--)
            tail = tail == null ? newRule(hint + "-opt", opt.get(i))
                    : newRule(hint + "-opt", opt.get(i) + " ( \",\" ws " + tail + " )? | " + tail);
        StringBuilder b = new StringBuilder("\"{\" ws ");
        for (int i = 0; i < req.size(); i++) b.append(i == 0 ? "" : "\",\" ws ").append(req.get(i)).append(' ');
        if (tail != null) b.append(req.isEmpty() ? "( " + tail + " )? " : "( \",\" ws " + tail + " )? ");
        b.append("\"}\" ws");
        return newRule(hint, b.toString());
    }

    private final Map<String, String> refs = new LinkedHashMap<>();

    private String ref(String ref, String path) {
        String name = refs.get(ref);
        if (name != null) return name;
        JsonNode target;
        if (ref.equals("#")) target = root;
        else if (ref.startsWith("#/")) target = root.at(ref.substring(1));
        else throw unsupported(path, "the $ref '" + ref + "' (only references into this schema, '#/...')");
        if (target == null || target.isMissingNode()) throw new IllegalArgumentException("JSON schema: " + path + ": $ref '" + ref + "' points nowhere");
        name = unique(sanitize("ref-" + ref.substring(ref.lastIndexOf('/') + 1)));
        refs.put(ref, name);
        rules.put(name, ""); // placeholder: recursion refers to the name
        String body = visit(target, name + "-body", ref);
        rules.put(name, body);
        return name;
    }

    private static boolean hasBounds(JsonNode s) {
        return s.has("minimum") || s.has("maximum") || s.has("exclusiveMinimum") || s.has("exclusiveMaximum");
    }

    /** The largest integer the grammar writes (16 digits, as the integer primitive). */
    private static final long INT_LIMIT = 9_999_999_999_999_999L;

    /**
     * An integer within {@code minimum} / {@code maximum} / {@code exclusiveMinimum} / {@code exclusiveMaximum}
     * (numbers; bounds beyond 16 digits are the primitive's): a grammar of its decimal forms, digit by digit.
     */
    private String integer(JsonNode s, String hint, String path) {
        Long min = bound(s, "minimum", path, false, false), max = bound(s, "maximum", path, true, false);
        Long xmin = bound(s, "exclusiveMinimum", path, false, true), xmax = bound(s, "exclusiveMaximum", path, true, true);
        if (xmin != null) min = min == null ? xmin : Math.max(min, xmin);
        if (xmax != null) max = max == null ? xmax : Math.min(max, xmax);
        if (min == null && max == null) return "integer";
        long lo = min == null ? -INT_LIMIT : Math.max(min, -INT_LIMIT), hi = max == null ? INT_LIMIT : Math.min(max, INT_LIMIT);
        if (lo > hi) throw unsupported(path, "an integer range with no member");
        List<String> alts = new ArrayList<>();
        if (lo < 0) alts.add("\"-\" " + group(digitsRange(Math.max(1, -Math.min(hi, -1)), -lo)));
        if (hi >= 0) alts.add(group(digitsRange(Math.max(0, lo), hi)));
        return newRule(hint, "( " + String.join(" | ", alts) + " ) ws");
    }

    /**
     * The inclusive integer bound a keyword sets (null when absent): an upper bound rounded down, a lower one up; an
     * exclusive one the next integer inside.
     */
    private static Long bound(JsonNode s, String key, String path, boolean upper, boolean exclusive) {
        JsonNode v = s.get(key);
        if (v == null || v.isNull()) return null;
        if (!v.isNumber()) throw unsupported(path, key + " " + v + " (a number is needed)");
        double d = v.asDouble();
        if (Math.abs(d) > INT_LIMIT) return d > 0 ? INT_LIMIT : -INT_LIMIT;
        if (v.isIntegralNumber()) return exclusive ? v.asLong() + (upper ? -1 : 1) : v.asLong();
        return exclusive ? (long) (upper ? Math.ceil(d) - 1 : Math.floor(d) + 1) : (long) (upper ? Math.floor(d) : Math.ceil(d));
    }

    private static String group(List<String> alts) {
        return alts.size() == 1 ? alts.get(0) : "( " + String.join(" | ", alts) + " )";
    }

    /** Alternatives for the decimal forms (no leading zeros) of [lo, hi], 0 <= lo <= hi. */
    private static List<String> digitsRange(long lo, long hi) {
        List<String> out = new ArrayList<>();
        int from = Long.toString(lo).length(), to = Long.toString(hi).length();
        for (int len = from; len <= to; len++) {
            long a = Math.max(lo, len == 1 ? 0 : pow10(len - 1)), b = Math.min(hi, pow10(len) - 1);
            if (a <= b) out.add(sameLength(Long.toString(a), Long.toString(b)));
        }
        return out;
    }

    private static long pow10(int n) {
        long p = 1;
        for (int i = 0; i < n; i++) p *= 10;
        return p;
    }

    /** The numbers from a to b, both written with the same number of digits. */
    private static String sameLength(String a, String b) {
        int n = a.length();
        if (n == 1) return a.equals(b) ? "\"" + a + "\"" : "[" + a + "-" + b + "]";
        char a0 = a.charAt(0), b0 = b.charAt(0);
        String restA = a.substring(1), restB = b.substring(1);
        if (a0 == b0) return "\"" + a0 + "\" " + group(List.of(sameLength(restA, restB)));
        List<String> alts = new ArrayList<>();
        String nines = "9".repeat(n - 1), zeros = "0".repeat(n - 1);
        char midFrom = a0, midTo = (char) (b0 - 1);
        if (!restA.equals(zeros)) { // a0 with a partial tail
            alts.add("\"" + a0 + "\" " + group(List.of(sameLength(restA, nines))));
            midFrom = (char) (a0 + 1);
        }
        boolean fullB = restB.equals(nines);
        if (fullB) midTo = b0;
        if (midFrom <= midTo) alts.add((midFrom == midTo ? "\"" + midFrom + "\"" : "[" + midFrom + "-" + midTo + "]") + " [0-9]{" + (n - 1) + "}");
        if (!fullB) alts.add("\"" + b0 + "\" " + group(List.of(sameLength(zeros, restB))));
        return group(alts);
    }

    private static int nonNegative(JsonNode s, String key, int dflt, String path) {
        if (!s.has(key)) return dflt;
        JsonNode v = s.get(key);
        if (!v.canConvertToInt() || v.asInt() < 0) throw unsupported(path, key + " " + v);
        return v.asInt();
    }

    /** A JSON value's compact text as a GBNF literal, then whitespace. */
    private String literalValue(JsonNode v) {
        try {
            return gbnfLiteral(JSON.writeValueAsString(v)) + " ws";
        } catch (JsonProcessingException e) {
            throw new IllegalStateException(e);
        }
    }

    /** A JSON string (quoted, escaped) as a GBNF literal. */
    private static String literalString(String s) {
        try {
            return gbnfLiteral(JSON.writeValueAsString(s));
        } catch (JsonProcessingException e) {
            throw new IllegalStateException(e);
        }
    }

    /** Text as a GBNF string literal. */
    static String gbnfLiteral(String text) {
        StringBuilder b = new StringBuilder("\"");
        text.codePoints().forEach(cp -> {
            switch (cp) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                case '\n' -> b.append("\\n");
                case '\r' -> b.append("\\r");
                case '\t' -> b.append("\\t");
                default -> {
                    if (cp < 0x20 || cp == 0x7F) b.append(String.format("\\x%02X", cp));
                    else b.appendCodePoint(cp);
                }
            }
        });
        return b.append('"').toString();
    }

    private static IllegalArgumentException unsupported(String path, String what) {
        return new IllegalArgumentException("JSON schema: " + path + ": " + what + " is not supported");
    }
}
