package dev.tokenpress.sample;

import com.fasterxml.jackson.databind.ObjectMapper;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.SplittableRandom;
import java.util.regex.Pattern;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.*;

/**
 * GBNF grammars: parsing (llama.cpp's syntax, errors with a line), matching against equivalent regular expressions
 * on random strings (whole sentences and prefixes), the token mask against token-by-token checks, and JSON schemas
 * against instances that must or must not be accepted.
 */
class GrammarTest {

    /** Grammar, equivalent Java regex, alphabet of the random strings. */
    static Stream<Arguments> regexCases() {
        return Stream.of(
                Arguments.of("root ::= \"yes\" | \"no\"", "yes|no", "yesno"),
                Arguments.of("root ::= [a-c]+ \"!\"?", "[a-c]+!?", "abcd!"),
                Arguments.of("root ::= [^a-b]* \"a\"", "[^ab]*a", "abcx"),
                Arguments.of("root ::= x{2,3} y{2} z{0,2} w{1,}\nx ::= \"a\"\ny ::= \"b\"\nz ::= \"c\"\nw ::= \"d\"",
                        "a{2,3}b{2}c{0,2}d+", "abcd"),
                Arguments.of("root ::= ( \"(\" root \")\" )* # nested parentheses\n",
                        "(\\((\\((\\(\\))*\\))*\\))*", "()"),
                Arguments.of("root ::= item (\",\" item)*\nitem ::= [0-9]+ | \"-\" [0-9]+", "(-?[0-9]+)(,-?[0-9]+)*", "12-,a"),
                Arguments.of("root ::= .{1,3} \"\\n\"", "(?s).{1,3}\\n", "ab\n"),
                Arguments.of("root ::= \"\\x41\" [\\u0062-\\u0063] \"\\\"\"", "A[bc]\"", "ABbc\""));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("regexCases")
    void matchesLikeTheRegex(String gbnf, String regex, String alphabet) {
        Grammar g = Grammar.parse(gbnf);
        Pattern p = Pattern.compile(regex);
        SplittableRandom r = new SplittableRandom(gbnf.hashCode());
        int accepted = 0;
        for (int i = 0; i < 20000; i++) {
            StringBuilder sb = new StringBuilder(); // runs of one character: repetitions get exercised
            for (int runs = r.nextInt(5), j = 0; j < runs; j++) {
                char ch = alphabet.charAt(r.nextInt(alphabet.length()));
                for (int k = r.nextInt(4) == 0 ? 2 + r.nextInt(2) : 1; k > 0; k--) sb.append(ch);
            }
            String s = sb.toString();
            if (gbnf.contains("nested") && s.length() > 6) continue; // the regex bounds the nesting depth at 3
            boolean want = p.matcher(s).matches();
            assertEquals(want, g.matches(s), "'" + s + "'");
            if (want) accepted++;
            // a prefix is live iff some extension matches: check against the regex's hitEnd
            var m = p.matcher(s);
            boolean live = m.matches() || m.hitEnd();
            if (!gbnf.contains("nested")) assertEquals(live, g.isPrefix(s), "prefix '" + s + "'");
        }
        assertTrue(accepted > 0, "some random strings match");
    }

    static Stream<Arguments> badGrammars() {
        return Stream.of(
                Arguments.of("root ::= foo", "rule 'foo' is used but not defined"),
                Arguments.of("foo ::= \"a\"", "no 'root' rule"),
                Arguments.of("root ::= \"a\"\nroot ::= \"b\"", "defined twice at line 2"),
                Arguments.of("root ::= \"a", "unterminated string literal"),
                Arguments.of("root ::= [a-", "unterminated character class"),
                Arguments.of("root ::= * \"a\"", "follows nothing"),
                Arguments.of("root ::= \"a\"{3,1}", "max < min"),
                Arguments.of("root ::= root \"a\" | \"b\"", "left-recursive"),
                Arguments.of("root ::= \"x\" (\"a\"?)*", "left-recursive"),
                Arguments.of("root ::= a\na ::= b? \"x\"\nb ::= \"\" | a", "left-recursive"),
                Arguments.of("root ::= \"a\"{3", "expected '}'"),
                Arguments.of("root ::= \"\\x+1\"", "hex digits"),
                Arguments.of("root := \"a\"", "expected '::='"),
                Arguments.of("root ::= \"\\q\"", "unknown escape"));
    }

    @ParameterizedTest(name = "{1}")
    @MethodSource("badGrammars")
    void badGrammarsAreRefusedWithAReason(String gbnf, String message) {
        var e = assertThrows(IllegalArgumentException.class, () -> Grammar.parse(gbnf).matches("ab"));
        assertTrue(e.getMessage().contains(message), e.getMessage());
    }

    @Test
    void deepFiniteNestingAndGeneratedNamesAreFine() {
        // deeper than the recursion limit of the first version (2,000 frames); an ambiguous grammar like this one costs
        // time quadratic in the nesting per character, so the depth stays moderate
        Grammar deep = Grammar.parse("root ::= (\"a\"?){0,1200} \"b\"");
        assertTrue(deep.matches("aaab"));
        assertTrue(deep.matches("b"));
        assertFalse(deep.matches("ba"));
        Grammar named = Grammar.parse("root ::= (\"a\") root-1\nroot-1 ::= \"b\"");
        assertTrue(named.matches("ab"));
    }

    @Test
    void multiLineRulesAndComments() {
        Grammar g = Grammar.parse("""
                # a list of words
                root ::=
                  word (
                    "," " "? word   # more words
                  )*
                word ::= [a-z]+ |
                  "'" [^']* "'"
                """);
        assertTrue(g.matches("ab, c,'x y'"));
        assertFalse(g.matches("ab,"));
        assertTrue(g.isPrefix("ab,"));
        assertFalse(g.isPrefix("ab;"));
    }

    /** The all-at-once mask equals checking each token's text on its own. */
    @Test
    void maskEqualsTokenByTokenChecks() {
        SplittableRandom r = new SplittableRandom(9);
        String alphabet = "{}[]\",:0123456789 -.eantrufls\\b";
        String[] texts = new String[3000];
        for (int i = 0; i < alphabet.length(); i++) texts[1 + i] = String.valueOf(alphabet.charAt(i)); // one per char
        for (int i = 1 + alphabet.length(); i < texts.length; i++) {
            if (i % 97 == 0) continue; // special tokens: no text
            StringBuilder sb = new StringBuilder();
            int len = 1 + r.nextInt(i % 3 == 0 ? 2 : 6);
            for (int j = 0; j < len; j++) sb.append(alphabet.charAt(r.nextInt(alphabet.length())));
            texts[i] = sb.toString();
        }
        Grammar g = JsonSchemaGrammar.compile("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"array\",\"items\":{\"type\":\"number\"}},"
                + "\"b\":{\"type\":\"string\"}},\"required\":[\"a\"]}");
        GrammarConstraint c = new GrammarConstraint(g, texts, Set.of(0), "json-schema");
        c.begin();
        String[] prefix = {"", "{", "{\"a\"", "{\"a\": [1", "{\"a\": [1, 2.5], \"b\": \"x", "{\"a\": [1, 2.5], \"b\": \"x\\", "{\"a\": []}"};
        String fed = "";
        for (String p : prefix) {
            if (!p.startsWith(fed)) {
                c.begin();
                fed = "";
            }
            for (char ch : p.substring(fed.length()).toCharArray()) c.accept(1 + alphabet.indexOf(ch));
            fed = p;
            boolean[] mask = c.mask();
            int allowed = 0;
            for (int i = 1; i < texts.length; i++) {
                assertEquals(c.allows(i), mask[i], "after '" + p + "': token " + i + " '" + texts[i] + "'");
                boolean brute = texts[i] != null && g.isPrefix(p + texts[i]);
                assertEquals(brute, mask[i], "after '" + p + "': token '" + texts[i] + "'");
                if (mask[i]) allowed++;
            }
            assertEquals(g.matches(p), c.allows(0), "the end token after '" + p + "'");
            assertEquals(!g.advance(g.initial(), p).closed(), allowed > 0, "something may follow '" + p + "'");
        }
    }

    /** Checking candidates best-first up to top-k keeps exactly what a full mask followed by top-k keeps (ties too). */
    @Test
    void topKShortcutKeepsWhatTheFullMaskKeeps() {
        SplittableRandom r = new SplittableRandom(11);
        String alphabet = "{}[]\",:0123456789 -.eantrufls";
        String[] texts = new String[2000];
        for (int i = 0; i < alphabet.length(); i++) texts[1 + i] = String.valueOf(alphabet.charAt(i));
        for (int i = 1 + alphabet.length(); i < texts.length; i++) {
            StringBuilder sb = new StringBuilder();
            for (int j = 0, len = 1 + r.nextInt(4); j < len; j++) sb.append(alphabet.charAt(r.nextInt(alphabet.length())));
            texts[i] = sb.toString();
        }
        Grammar g = JsonSchemaGrammar.compile("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"array\",\"items\":{\"type\":\"number\"}},"
                + "\"b\":{\"type\":\"string\"}},\"required\":[\"a\",\"b\"]}");
        for (String p : new String[] {"", "{", "{\"a\": [", "{\"a\": [1, 2", "{\"a\": [], \"b\": \"xy"}) {
            for (int k : new int[] {1, 5, 40}) {
                for (int trial = 0; trial < 20; trial++) {
                    float[] logits = new float[texts.length];
                    for (int i = 0; i < logits.length; i++) logits[i] = (float) Math.round(r.nextGaussian() * 4) / 2f; // many ties
                    TokenDataArray a = new TokenDataArray(texts.length), b = new TokenDataArray(texts.length);
                    a.load(logits, 0, logits.length);
                    b.load(logits, 0, logits.length);
                    GrammarConstraint lazy = constraint(g, texts, p), full = constraint(g, texts, p);
                    lazy.limitTo(k);
                    lazy.apply(a);
                    full.apply(b);
                    new TopKSampler(k).apply(a);
                    new TopKSampler(k).apply(b);
                    assertEquals(b.size, a.size, p + " k " + k);
                    for (int i = 0; i < a.size; i++) {
                        assertEquals(b.ids[i], a.ids[i], p + " k " + k + " rank " + i);
                        assertEquals(b.logits[i], a.logits[i], 0f);
                    }
                }
            }
        }
    }

    private static GrammarConstraint constraint(Grammar g, String[] texts, String fed) {
        GrammarConstraint c = new GrammarConstraint(g, texts, Set.of(0), "json-schema");
        c.begin();
        for (char ch : fed.toCharArray())
            for (int i = 1; i < texts.length; i++)
                if (texts[i].equals(String.valueOf(ch))) {
                    c.accept(i);
                    break;
                }
        return c;
    }

    static final String PERSON = """
            {"type": "object",
             "properties": {
               "name": {"type": "string", "minLength": 1},
               "age": {"type": "integer"},
               "tags": {"type": "array", "items": {"enum": ["a", "b", 3, null]}, "maxItems": 2},
               "address": {"$ref": "#/$defs/address"},
               "ok": {"type": ["boolean", "null"]}
             },
             "required": ["name", "age"],
             "$defs": {"address": {"type": "object", "properties": {"city": {"const": "Paris"}, "next": {"$ref": "#/$defs/address"}},
                                   "additionalProperties": false}}}
            """;

    static Stream<Arguments> instances() {
        return Stream.of(
                Arguments.of("{\"name\": \"Ann\", \"age\": 3}", true),
                Arguments.of("{\"name\":\"Ann\",\"age\":-3,\"tags\":[\"a\",3],\"ok\":null}", true),
                Arguments.of("{\"name\": \"A\", \"age\": 0, \"address\": {\"city\": \"Paris\", \"next\": {}}}", true),
                Arguments.of("{\"name\": \"A\", \"age\": 0, \"ok\": true}", true),
                Arguments.of("{\n  \"name\": \"A\",\n  \"age\": 1\n}", true),
                Arguments.of("{\"age\": 3, \"name\": \"Ann\"}", false),
                Arguments.of("{\"name\": \"Ann\"}", false),
                Arguments.of("{\"name\": \"\", \"age\": 3}", false),
                Arguments.of("{\"name\": \"Ann\", \"age\": 3.5}", false),
                Arguments.of("{\"name\": \"Ann\", \"age\": 3, \"tags\": [\"a\", \"b\", 3]}", false),
                Arguments.of("{\"name\": \"Ann\", \"age\": 3, \"tags\": [\"c\"]}", false),
                Arguments.of("{\"name\": \"Ann\", \"age\": 3, \"extra\": 1}", false),
                Arguments.of("{\"name\": \"Ann\", \"age\": 3, \"address\": {\"city\": \"Rome\"}}", false),
                Arguments.of(" {\"name\": \"Ann\", \"age\": 3}", false));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("instances")
    void schemaAcceptsExactlyItsInstances(String json, boolean valid) throws Exception {
        Grammar g = JsonSchemaGrammar.compile(PERSON);
        assertEquals(valid, g.matches(json), JsonSchemaGrammar.toGbnf(PERSON));
        if (valid) new ObjectMapper().readTree(json); // the accepted texts are JSON
    }

    @Test
    void arraysStringsAndGenericValues() {
        Grammar a = JsonSchemaGrammar.compile("{\"type\": \"array\", \"items\": {\"type\": \"string\", \"maxLength\": 2}, \"minItems\": 1}");
        assertTrue(a.matches("[\"ab\"]"));
        assertTrue(a.matches("[\"\", \"\\u00e9x\"]"));
        assertFalse(a.matches("[]"));
        assertFalse(a.matches("[\"abc\"]"));
        Grammar any = JsonSchemaGrammar.compile("{}");
        for (String ok : new String[] {"1", "-0.5e3", "\"x\"", "[1, {\"a\": [true, null]}]", "{}"})
            assertTrue(any.matches(ok), ok);
        for (String bad : new String[] {"01", "[1,]", "{a: 1}", "tru", "\"\t\""})
            assertFalse(any.matches(bad), bad);
        Grammar map = JsonSchemaGrammar.compile("{\"type\": \"object\", \"additionalProperties\": {\"type\": \"integer\"}}");
        assertTrue(map.matches("{\"x\": 1, \"y\": 2}"));
        assertFalse(map.matches("{\"x\": \"1\"}"));
        Grammar opt = JsonSchemaGrammar.compile("{\"properties\": {\"a\": {\"type\": \"integer\"}, \"b\": {\"type\": \"integer\"}}}");
        for (String ok : new String[] {"{}", "{\"a\": 1}", "{\"b\": 2}", "{\"a\": 1, \"b\": 2}"}) assertTrue(opt.matches(ok), ok);
        for (String bad : new String[] {"{\"b\": 2, \"a\": 1}", "{,}", "{\"a\": 1,}"}) assertFalse(opt.matches(bad), bad);
    }

    static Stream<Arguments> unsupported() {
        return Stream.of(
                Arguments.of("{\"type\": \"string\", \"pattern\": \"a(?=b)\"}", "lookaround"),
                Arguments.of("{\"allOf\": [{}]}", "keyword 'allOf'"),
                Arguments.of("{\"type\": \"object\", \"properties\": {\"a\": {}}, \"additionalProperties\": true}", "additionalProperties beside properties"),
                Arguments.of("{\"type\": \"date\"}", "type 'date'"),
                Arguments.of("{\"$ref\": \"#/$defs/missing\"}", "points nowhere"),
                Arguments.of("{\"$ref\": \"http://x/s.json\"}", "only references into this schema"),
                Arguments.of("{\"type\": \"object\", \"required\": [\"a\"], \"properties\": {\"b\": {}}}", "required property 'a'"),
                Arguments.of("not json", "not valid JSON"),
                Arguments.of("{\"type\": \"object\", \"required\": [\"a\"]}", "required property 'a'"),
                Arguments.of("{\"$ref\": \"#/$defs/a\", \"type\": \"string\", \"$defs\": {\"a\": {}}}", "beside $ref"),
                Arguments.of("{\"anyOf\": [{}], \"type\": \"object\", \"properties\": {}}", "beside anyOf"),
                Arguments.of("{\"enum\": [1, 2], \"type\": \"string\"}", "none of whose values"));
    }

    @ParameterizedTest(name = "{1}")
    @MethodSource("unsupported")
    void unsupportedSchemasAreRefused(String schema, String message) {
        var e = assertThrows(IllegalArgumentException.class, () -> JsonSchemaGrammar.compile(schema));
        assertTrue(e.getMessage().contains(message), e.getMessage());
    }

    @Test
    void enumsFollowTheirTypeAndRefNamesDoNotCollide() {
        Grammar typed = JsonSchemaGrammar.compile("{\"type\": \"string\", \"enum\": [\"a\", 1]}");
        assertTrue(typed.matches("\"a\""));
        assertFalse(typed.matches("1"));
        Grammar refs = JsonSchemaGrammar.compile("{\"anyOf\":[{\"$ref\":\"#/$defs/a\"},{\"enum\":[0]},{\"enum\":[1]},{\"enum\":[2]},"
                + "{\"$ref\":\"#/$defs/a-0-body-1\"}],\"$defs\":{\"a\":{\"type\":\"array\",\"items\":{\"type\":\"integer\"}},"
                + "\"a-0-body-1\":{\"type\":\"boolean\"}}}");
        for (String ok : new String[] {"[1, 2]", "0", "2", "true"}) assertTrue(refs.matches(ok), ok);
        assertFalse(refs.matches("3"));
    }

    @Test
    void generatedLiteralsEscape() {
        assertEquals("\"a\\\"b\\\\c\\n\\x01\"", JsonSchemaGrammar.gbnfLiteral("a\"b\\c\n\u0001"));
        Grammar g = JsonSchemaGrammar.compile("{\"enum\": [\"a\\\"b\", \"line\\nbreak\"]}");
        assertTrue(g.matches("\"a\\\"b\""));
        assertTrue(g.matches("\"line\\nbreak\""));
        List<String> none = new ArrayList<>();
        assertTrue(none.isEmpty());
    }
}
