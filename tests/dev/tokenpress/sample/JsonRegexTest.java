package dev.tokenpress.sample;

import com.fasterxml.jackson.databind.ObjectMapper;
import org.junit.jupiter.api.Test;

import java.util.Random;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.*;

/**
 * JSON Schema {@code pattern} and {@code format} in schema grammars: a string value is accepted exactly when
 * java.util.regex finds the pattern in it (JSON Schema's search semantics), checked on random strings with quotes,
 * backslashes, control characters and non-ASCII text, which the grammar sees escaped as JSON writes them.
 */
class JsonRegexTest {
    static final ObjectMapper JSON = new ObjectMapper();
    static final String[] PATTERNS = {
            "^[a-z]+$", "^\\d{3}-\\d{4}$", "^(ab|cd)*e?$", "^[^\"\\\\]{0,3}$", "a.c", "^x", "y$", "^\\w+@\\w+\\.com$",
            "^[A-F0-9]{2}(:[A-F0-9]{2}){2}$", "^\"q\"$", "^\\\\n$", "^a\\s?b$", "^[\\s\\d]+$", "^\\D\\W\\S$", "^[ -~]+$",
            "^(?:ab)+(?<tail>c|d{1,2})$", "^é+$", "^[^a-c]*$", "^.{2,4}$", "^\\u00e9\\x41$", "^a{2,}$", "^[\\-\\]]+$",
            "^(a|)b$", "^\\t\\n$", "(\\d+)x"};
    static final String ALPHABET = "abcdexyzABCF019-_:.@ \"\\\n\té€q";

    static String jsonText(String s) throws Exception {
        return JSON.writeValueAsString(s);
    }

    @Test
    void patternsAcceptWhatTheRegexFinds() throws Exception {
        Random rnd = new Random(11);
        for (String p : PATTERNS) {
            String schema = JSON.createObjectNode().put("type", "string").put("pattern", p).toString();
            Grammar g = JsonSchemaGrammar.compile(schema);
            // java.util.regex's $ also matches before a final line break; ECMAScript's only at the end
            Pattern re = Pattern.compile(p.endsWith("$") ? p.substring(0, p.length() - 1) + "\\z" : p);
            int accepted = 0;
            for (int i = 0; i < 400; i++) {
                int len = rnd.nextInt(8);
                StringBuilder sb = new StringBuilder();
                for (int k = 0; k < len; k++) sb.appendCodePoint(ALPHABET.codePointAt(ALPHABET.offsetByCodePoints(0, rnd.nextInt(ALPHABET.codePointCount(0, ALPHABET.length())))));
                String s = sb.toString();
                boolean want = re.matcher(s).find();
                assertEquals(want, g.matches(jsonText(s)), "pattern " + p + " on " + jsonText(s));
                if (want) accepted++;
            }
            // strings made to match: a few known members per pattern
            for (String m : members(p)) {
                assertTrue(re.matcher(m).find(), p + " / " + m);
                assertTrue(g.matches(jsonText(m)), "pattern " + p + " on its member " + jsonText(m));
            }
        }
    }

    static String[] members(String p) {
        return switch (p) {
            case "^[a-z]+$" -> new String[] {"abc"};
            case "^\\d{3}-\\d{4}$" -> new String[] {"555-1234"};
            case "^\\w+@\\w+\\.com$" -> new String[] {"ann@site.com"};
            case "^[A-F0-9]{2}(:[A-F0-9]{2}){2}$" -> new String[] {"0A:FF:19"};
            case "^\"q\"$" -> new String[] {"\"q\""};
            case "^\\\\n$" -> new String[] {"\\n"};
            case "^(?:ab)+(?<tail>c|d{1,2})$" -> new String[] {"abababdd", "abc"};
            case "^\\u00e9\\x41$" -> new String[] {"éA"};
            case "^[\\-\\]]+$" -> new String[] {"-]-"};
            case "^\\t\\n$" -> new String[] {"\t\n"};
            case "^[ -~]+$" -> new String[] {"a \"\\ ~"};
            default -> new String[0];
        };
    }

    @Test
    void formatsFollowTheirSyntax() {
        Grammar date = JsonSchemaGrammar.compile("{\"type\": \"string\", \"format\": \"date\"}");
        assertTrue(date.matches("\"2026-11-27\""));
        for (String bad : new String[] {"\"2026-13-01\"", "\"2026-1-01\"", "\"26-11-27\"", "\"2026-11-32\""})
            assertFalse(date.matches(bad), bad);
        Grammar dt = JsonSchemaGrammar.compile("{\"type\": \"string\", \"format\": \"date-time\"}");
        assertTrue(dt.matches("\"2026-11-27T17:05:09Z\""));
        assertTrue(dt.matches("\"2026-11-27T17:05:09.123+01:00\""));
        assertFalse(dt.matches("\"2026-11-27 17:05:09Z\""));
        assertFalse(dt.matches("\"2026-11-27T24:00:00Z\""));
        Grammar uuid = JsonSchemaGrammar.compile("{\"type\": \"string\", \"format\": \"uuid\"}");
        assertTrue(uuid.matches("\"123e4567-e89b-12d3-a456-426614174000\""));
        assertFalse(uuid.matches("\"123e4567e89b12d3a456426614174000\""));
        Grammar email = JsonSchemaGrammar.compile("{\"type\": \"string\", \"format\": \"email\"}");
        assertTrue(email.matches("\"not checked\""), "other formats stay annotations");
    }

    /** Integer bounds: exactly the integers in range, for every integer in [-1500, 1500], in their JSON form. */
    @Test
    void integerBoundsAcceptExactlyTheRange() {
        Long[][] ranges = {{0L, 0L}, {5L, 123L}, {-17L, 42L}, {-1000L, -3L}, {7L, null}, {null, 55L}, {null, -5L}, {-5L, null},
                {99L, 1000L}, {1L, 1L}, {10L, 99L}, {-99L, -10L}, {0L, 1099L}, {101L, 109L}};
        for (Long[] r : ranges) {
            var node = JSON.createObjectNode().put("type", "integer");
            if (r[0] != null) node.put("minimum", r[0]);
            if (r[1] != null) node.put("maximum", r[1]);
            Grammar g = JsonSchemaGrammar.compile(node.toString());
            for (long x = -1500; x <= 1500; x++) {
                boolean want = (r[0] == null || x >= r[0]) && (r[1] == null || x <= r[1]);
                assertEquals(want, g.matches(Long.toString(x)), node + " on " + x);
            }
            assertFalse(g.matches("007"), "no leading zeros");
        }
        Grammar ex = JsonSchemaGrammar.compile("{\"type\": \"integer\", \"exclusiveMinimum\": 0, \"exclusiveMaximum\": 10.5}");
        for (long x = -5; x <= 15; x++) assertEquals(x >= 1 && x <= 10, ex.matches(Long.toString(x)), "exclusive " + x);
        assertTrue(JsonSchemaGrammar.compile("{\"type\": \"integer\", \"minimum\": 123456789012}").matches("9999999999999999"));
        assertThrows(IllegalArgumentException.class, () -> JsonSchemaGrammar.compile("{\"type\": \"number\", \"minimum\": 0}"));
        assertThrows(IllegalArgumentException.class, () -> JsonSchemaGrammar.compile("{\"minimum\": 0}"));
        assertThrows(IllegalArgumentException.class, () -> JsonSchemaGrammar.compile("{\"type\": \"integer\", \"minimum\": 5, \"maximum\": 4}"));
    }

    @Test
    void refusesWhatItCannotHold() {
        for (String p : new String[] {"(a)\\1", "a(?=b)", "\\bword", "a^b", "(?i)a", "a**", "[z-a]", "(a", "a)"}) {
            String schema = JSON.createObjectNode().put("type", "string").put("pattern", p).toString();
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> JsonSchemaGrammar.compile(schema), p);
            assertTrue(e.getMessage().contains("pattern"), e.getMessage());
        }
        assertThrows(IllegalArgumentException.class,
                () -> JsonSchemaGrammar.compile("{\"type\": \"string\", \"pattern\": \"^a$\", \"maxLength\": 3}"));
        assertThrows(IllegalArgumentException.class,
                () -> JsonSchemaGrammar.compile("{\"type\": \"string\", \"pattern\": \"^a$\", \"format\": \"date\"}"));
    }
}
