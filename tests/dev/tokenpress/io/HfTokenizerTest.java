package dev.tokenpress.io;

import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class HfTokenizerTest {

    @TempDir
    static Path dir;
    static Path tiny;
    static HfTokenizer tok;

    static final String[] TEXTS = {
        "Hello, world!",
        "The quick brown fox jumps over the lazy dog.",
        "Café crème, naïve façade, Dvořák in Zürich — déjà vu.",
        "Emoji: 😀🎉👩‍💻 and flags 🇫🇷 plus math ∑∫√ and CJK 你好，世界",
        "public static void main(String[] args) {\n\tSystem.out.println(\"hi\");\n}\n",
        "def f(x):\n    return x ** 2  # square\n\n\n",
        "  leading and trailing spaces   ",
        "tabs\tand\r\nwindows newlines\u00a0nbsp",
        "",
    };

    @BeforeAll
    static void setUp() {
        tiny = dir.resolve("tiny");
        ModelWriter.write(tiny, ModelWriter.Preset.TINY, 7, s -> { });
        tok = HfTokenizer.load(tiny);
    }

    @AfterAll
    static void tearDown() {
        if (tok != null) tok.close();
    }

    @Test
    void vocabAndSpecialTokens() {
        assertEquals(512, tok.vocabSize());
        assertEquals(510, tok.tokenId(ByteLevelBpe.BOS));
        assertEquals(511, tok.tokenId(ByteLevelBpe.EOS));
        assertTrue(tok.isSpecial(510));
        assertFalse(tok.isSpecial(100));
        assertArrayEquals(new int[] {510}, tok.prefixIds());
    }

    @Test
    void roundTripMixedText() {
        for (String t : TEXTS) {
            int[] plain = tok.encodeNoSpecial(t);
            assertEquals(t, tok.decode(plain), "round trip of: " + t);
            int[] withBos = tok.encode(t);
            assertEquals(510, withBos[0]);
            assertArrayEquals(plain, Arrays.copyOfRange(withBos, 1, withBos.length));
            assertEquals(ByteLevelBpe.BOS + t, tok.decode(withBos));
            for (int id : withBos) assertTrue(id >= 0 && id < 512);
        }
    }

    @Test
    void mergesCompressEnglish() {
        String t = "The farmer walked to the market with a basket of apples.";
        int[] ids = tok.encodeNoSpecial(t);
        assertTrue(ids.length < t.length() * 0.6, "BPE merges should apply: " + ids.length + " tokens");
    }

    @Test
    void bosIsNeverDoubled() {
        int[] a = tok.encode(ByteLevelBpe.BOS + "Hello there");
        int[] b = tok.encode("Hello there");
        assertArrayEquals(b, a);
        assertEquals(510, a[0]);
        assertTrue(a.length < 2 || a[1] != 510);
        // special tokens in the text are recognised, not split into bytes
        int[] c = tok.encodeNoSpecial("a" + ByteLevelBpe.EOS + "b");
        assertTrue(Arrays.stream(c).anyMatch(i -> i == 511), Arrays.toString(c));
    }

    @Test
    void noTruncation() {
        String longText = "word ".repeat(3000);
        int[] ids = tok.encode(longText);
        assertTrue(ids.length > 1000, "got " + ids.length);
        assertEquals(longText, tok.decode(Arrays.copyOfRange(ids, 1, ids.length)));
    }

    @Test
    void streamingMatchesFullDecode() {
        for (String t : TEXTS) {
            int[] ids = tok.encodeNoSpecial(t);
            StreamingDecoder sd = tok.streaming();
            StringBuilder sb = new StringBuilder();
            for (int id : ids) {
                String piece = sd.push(id);
                assertFalse(piece.indexOf('\uFFFD') >= 0, "partial character leaked for: " + t);
                sb.append(piece);
            }
            sb.append(sd.flush());
            assertEquals(t, sb.toString());
        }
    }

    @Test
    void streamingHoldsBackSplitCharacters() {
        // every byte of the emoji is its own token in a byte-level tokenizer without a merge for it
        String emoji = "😀";
        int[] ids = tok.encodeNoSpecial(emoji);
        assertTrue(ids.length > 1, Arrays.toString(ids));
        StreamingDecoder sd = tok.streaming();
        List<String> pieces = new ArrayList<>();
        for (int id : ids) pieces.add(sd.push(id));
        for (int i = 0; i < pieces.size() - 1; i++) assertEquals("", pieces.get(i));
        assertEquals(emoji, pieces.get(pieces.size() - 1));
    }

    @Test
    void streamingWithSpecialTokensAndBos() {
        int[] ids = tok.encode("Hi there, émigré!");
        StreamingDecoder sd = tok.streaming();
        StringBuilder sb = new StringBuilder();
        for (int id : ids) sb.append(sd.push(id));
        sb.append(sd.push(511));
        assertEquals(ByteLevelBpe.BOS + "Hi there, émigré!" + ByteLevelBpe.EOS, sb.toString());
    }

    /** A SentencePiece-style (Llama 2 / TinyLlama / Mistral) tokenizer: Metaspace, byte fallback, Strip decoder. */
    /** A SentencePiece-style BPE (Llama 2 / Mistral): ▁ for spaces, byte fallback, a BOS template. */
    static String sentencePieceJson() {
        StringBuilder vocab = new StringBuilder("\"<unk>\":0,\"<s>\":1,\"</s>\":2");
        int id = 3;
        for (int b = 0; b < 256; b++) vocab.append(String.format(",\"<0x%02X>\":%d", b, id++));
        String pieces = "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,!";
        for (int i = 0; i < pieces.length(); i++) vocab.append(",\"").append(pieces.charAt(i)).append("\":").append(id++);
        vocab.append(",\"▁H\":").append(id++).append(",\"▁He\":").append(id++);
        String json = "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":["
                + "{\"id\":0,\"content\":\"<unk>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},"
                + "{\"id\":1,\"content\":\"<s>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},"
                + "{\"id\":2,\"content\":\"</s>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true}],"
                + "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"▁\"},"
                + "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"▁\"}]},"
                + "\"pre_tokenizer\":null,"
                + "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},"
                + "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"pair\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},"
                + "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":1}},"
                + "{\"Sequence\":{\"id\":\"B\",\"type_id\":1}}],\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[1],\"tokens\":[\"<s>\"]}}},"
                + "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"▁\"},\"content\":\" \"},"
                + "{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]},"
                + "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":\"<unk>\",\"continuing_subword_prefix\":null,"
                + "\"end_of_word_suffix\":null,\"fuse_unk\":true,\"byte_fallback\":true,\"ignore_merges\":false,"
                + "\"vocab\":{" + vocab + "},\"merges\":[\"▁ H\",\"▁H e\"]}}";
        return json;
    }

    @Test
    void sentencePieceStyleTokenizerStreamsCorrectly() throws Exception {
        String json = sentencePieceJson();
        Path d = Files.createDirectories(dir.resolve("sp"));
        Files.writeString(d.resolve("tokenizer.json"), json);
        try (HfTokenizer sp = HfTokenizer.load(d)) {
            String text = "Hello wörld  😀 ok.";
            int[] ids = sp.encode(text);
            assertEquals(1, ids[0]);
            assertEquals(1, sp.encode("<s>Hello")[0]);
            assertTrue(sp.encode("<s>Hello")[1] != 1, "BOS not doubled");
            int[] body = Arrays.copyOfRange(ids, 1, ids.length);
            String full = sp.decode(body);
            assertEquals(text, full);
            StreamingDecoder sd = sp.streaming();
            StringBuilder sb = new StringBuilder();
            for (int i : body) sb.append(sd.push(i));
            sb.append(sd.flush());
            assertEquals(full, sb.toString());
        }
    }

    /**
     * The vocabulary, special ids and BOS prefix read by the streaming parse equal what the whole JSON tree gives
     * (model vocabulary first, added tokens over it), for a byte-level BPE with 128K+ entries, a SentencePiece-style
     * BPE, a Unigram model, and a file with the model before its added tokens and an added token that replaces a
     * vocabulary entry's id.
     */
    @Test
    void vocabularyMatchesTheJsonTree() throws Exception {
        Path big = dir.resolve("big");
        ModelWriter.write(big, ModelWriter.Preset.TINY, 3, s -> { }); // the tokenizer of the tiny preset
        Path big128 = Files.createDirectories(dir.resolve("big128"));
        Files.writeString(big128.resolve("tokenizer.json"), ByteLevelBpe.build(128_256).json());
        String head = "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,";
        String nulls = "\"normalizer\":null,\"pre_tokenizer\":null,\"post_processor\":null,\"decoder\":null,";
        Path uni = Files.createDirectories(dir.resolve("unigram"));
        Files.writeString(uni.resolve("tokenizer.json"), head
                + "\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true}],"
                + nulls + "\"model\":{\"type\":\"Unigram\",\"unk_id\":0,\"vocab\":[[\"<unk>\",0.0],[\"a\",-1.0],"
                + "[\"b\",-2.0],[\"ab\",-1.5],[\"c\",-3.0]],\"byte_fallback\":false}}");
        Path late = Files.createDirectories(dir.resolve("late"));
        Files.writeString(late.resolve("tokenizer.json"), head + nulls
                + "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"continuing_subword_prefix\":null,"
                + "\"end_of_word_suffix\":null,\"fuse_unk\":false,\"byte_fallback\":false,"
                + "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"<x>\":3},\"merges\":[[\"a\",\"b\"]]},"
                + "\"added_tokens\":[{\"id\":5,\"content\":\"<x>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},"
                + "{\"id\":4,\"content\":\"<y>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":false}]}");
        Path sp = Files.createDirectories(dir.resolve("sp-vocab"));
        Files.writeString(sp.resolve("tokenizer.json"), sentencePieceJson());
        // repeated keys: the last "model", the last "vocab", a token's last id (as a JSON tree and the native parser)
        String bpe = "\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"continuing_subword_prefix\":null,"
                + "\"end_of_word_suffix\":null,\"fuse_unk\":false,\"byte_fallback\":false,";
        Path dup = Files.createDirectories(dir.resolve("dup"));
        Files.writeString(dup.resolve("tokenizer.json"), head + nulls + "\"added_tokens\":[],"
                + "\"model\":{" + bpe + "\"vocab\":{\"x\":0,\"y\":1,\"zz\":9},\"merges\":[]},"
                + "\"model\":{" + bpe + "\"vocab\":{\"q\":7},\"vocab\":{\"a\":9,\"b\":1,\"ab\":2,\"a\":0},"
                + "\"merges\":[[\"a\",\"b\"]]}}");
        for (Path d : new Path[] {big, big128, uni, late, sp, dup}) {
            com.fasterxml.jackson.databind.JsonNode root = new com.fasterxml.jackson.databind.ObjectMapper()
                    .readTree(Files.readAllBytes(d.resolve("tokenizer.json")));
            java.util.Map<String, Integer> vocab = new java.util.HashMap<>();
            java.util.Set<Integer> special = new java.util.HashSet<>();
            int maxId = -1;
            com.fasterxml.jackson.databind.JsonNode v = root.path("model").path("vocab");
            if (v.isObject()) {
                for (var it = v.fields(); it.hasNext(); ) {
                    var e = it.next();
                    vocab.put(e.getKey(), e.getValue().asInt());
                    maxId = Math.max(maxId, e.getValue().asInt());
                }
            } else {
                for (int i = 0; i < v.size(); i++) vocab.put(v.get(i).get(0).asText(), i);
                maxId = v.size() - 1;
            }
            for (com.fasterxml.jackson.databind.JsonNode a : root.path("added_tokens")) {
                int id = a.path("id").asInt();
                vocab.put(a.path("content").asText(), id);
                if (a.path("special").asBoolean()) special.add(id);
                maxId = Math.max(maxId, id);
            }
            try (HfTokenizer t = HfTokenizer.load(d)) {
                assertEquals(maxId + 1, t.vocabSize(), d.toString());
                for (var e : vocab.entrySet()) assertEquals((int) e.getValue(), t.tokenId(e.getKey()), e.getKey());
                assertEquals(-1, t.tokenId("not a token \u0001"));
                for (int id = 0; id < t.vocabSize(); id++) assertEquals(special.contains(id), t.isSpecial(id), "special " + id);
                if (d.equals(big) || d.equals(big128))
                    assertArrayEquals(new int[] {t.tokenId(ByteLevelBpe.BOS)}, t.prefixIds());
                else if (!d.equals(sp)) assertEquals(0, t.prefixIds().length);
            }
        }
        try (HfTokenizer t = HfTokenizer.load(late)) {
            assertEquals(5, t.tokenId("<x>"), "the added token's id replaces the vocabulary's");
            assertEquals(6, t.vocabSize());
            assertTrue(t.isSpecial(5));
            assertFalse(t.isSpecial(4));
        }
        try (HfTokenizer t = HfTokenizer.load(dup)) {
            assertEquals(3, t.vocabSize());
            assertEquals(-1, t.tokenId("x"));
            assertEquals(-1, t.tokenId("q"));
            assertEquals(0, t.tokenId("a"));
            assertArrayEquals(new int[] {2}, t.encodeNoSpecial("ab"), "the native tokenizer reads the same vocabulary");
        }
        try (HfTokenizer t = HfTokenizer.load(uni)) {
            assertEquals(3, t.tokenId("ab"));
            assertEquals(5, t.vocabSize());
            assertArrayEquals(new int[] {3, 4}, t.encodeNoSpecial("abc"));
        }
    }

    @Test
    void errorsAreOneLineAndNameTheFile() throws Exception {
        Path empty = Files.createDirectories(dir.resolve("empty"));
        ModelLoadException e = assertThrows(ModelLoadException.class, () -> HfTokenizer.load(empty));
        assertTrue(e.getMessage().contains("tokenizer.json") && e.getMessage().contains("not found"), e.getMessage());

        Path bad = Files.createDirectories(dir.resolve("bad"));
        Files.writeString(bad.resolve("tokenizer.json"), "{\"model\": {");
        e = assertThrows(ModelLoadException.class, () -> HfTokenizer.load(bad));
        assertTrue(e.getMessage().contains(bad.resolve("tokenizer.json").toString()), e.getMessage());
        assertFalse(e.getMessage().contains("\n"));

        Path wrong = Files.createDirectories(dir.resolve("wrong"));
        Files.writeString(wrong.resolve("tokenizer.json"), "{\"model\": {\"type\": \"Nope\", \"vocab\": {}}}");
        e = assertThrows(ModelLoadException.class, () -> HfTokenizer.load(wrong));
        assertTrue(e.getMessage().contains(wrong.resolve("tokenizer.json").toString()), e.getMessage());
        assertFalse(e.getMessage().contains("\n"), e.getMessage());
    }

    /**
     * Token texts as they read in running text: a SentencePiece-style tokenizer (▁ for spaces, a decoder that strips
     * the sequence's leading space) keeps the space of "▁1" in the middle of a text, so its text is " 1".
     */
    @Test
    void tokenTextsKeepTheSpaceOfSentencePiecePieces() throws Exception {
        Path sp = dir.resolve("sp");
        Files.createDirectories(sp);
        String vocab = "{\"<unk>\": 0, \"<s>\": 1, \"</s>\": 2, \"\u2581\": 3, \"1\": 4, \"\u25811\": 5, \"[\": 6, "
                + "\"]\": 7, \"a\": 8, \"\u2581a\": 9, \"t\": 10, \"u\": 11, \"e\": 12, \"ue\": 13, \"\u2581ue\": 14}";
        String json = "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null, \"added_tokens\": ["
                + "{\"id\": 0, \"content\": \"<unk>\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true},"
                + "{\"id\": 1, \"content\": \"<s>\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true},"
                + "{\"id\": 2, \"content\": \"</s>\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true}],"
                + "\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", \"prepend\": \"\u2581\"},"
                + "{\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\u2581\"}]},"
                + "\"pre_tokenizer\": null, \"post_processor\": null,"
                + "\"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": {\"String\": \"\u2581\"}, \"content\": \" \"},"
                + "{\"type\": \"Fuse\"}, {\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}]},"
                + "\"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": \"<unk>\", \"continuing_subword_prefix\": null,"
                + "\"end_of_word_suffix\": null, \"fuse_unk\": true, \"byte_fallback\": false, \"vocab\": " + vocab + ","
                + "\"merges\": [\"\u2581 1\", \"\u2581 a\", \"u e\", \"\u2581 ue\"]}}";
        Files.writeString(sp.resolve("tokenizer.json"), json);
        try (HfTokenizer t = HfTokenizer.load(sp)) {
            String[] texts = t.tokenTexts();
            assertEquals(" 1", texts[t.tokenId("\u25811")], "the piece's space is part of its text mid-sentence");
            assertEquals("1", texts[t.tokenId("1")]);
            assertEquals(" ue", texts[t.tokenId("\u2581ue")]);
            assertEquals(null, texts[t.tokenId("</s>")], "special tokens have no text of their own");
            assertEquals("a 1", t.decode(new int[] {t.tokenId("\u2581a"), t.tokenId("\u25811")}));
        }
    }
}
