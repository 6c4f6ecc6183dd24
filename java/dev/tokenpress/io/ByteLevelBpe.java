package dev.tokenpress.io;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Builds a byte-level BPE tokenizer in Hugging Face {@code tokenizer.json} format, the kind GPT-2, Llama 3 and Qwen2
 * use: 256 byte tokens (GPT-2 byte-to-unicode alphabet), merges learned here by a small BPE trainer on a built-in
 * corpus, then, when the corpus runs out of merges, up to 256 {@code <|reserved_special_token_N|>} added tokens (as
 * Llama 3 has), then, for still larger vocabularies, deterministic extra merges of existing word pieces (HF tokenizers
 * loads N added tokens in O(N^2) time: 125k reserved tokens took two minutes, so they cannot fill a 128k vocabulary),
 * and finally {@code <|begin_of_text|>} / {@code <|end_of_text|>} as the last two ids. The post-processor prepends BOS.
 */
public final class ByteLevelBpe {
    private ByteLevelBpe() {}

    public static final String BOS = "<|begin_of_text|>";
    public static final String EOS = "<|end_of_text|>";
    /** Byte tokens plus BOS and EOS. */
    public static final int MIN_VOCAB = 258;

    /** GPT-2 pre-tokenization regex, as used by the HF ByteLevel pre-tokenizer with use_regex=true. */
    private static final Pattern GPT2_SPLIT = Pattern.compile(
            "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
            Pattern.UNICODE_CHARACTER_CLASS);

    private static final ObjectMapper JSON = new ObjectMapper();

    /** Id of BOS in a tokenizer of the given vocabulary size. */
    public static int bosId(int vocabSize) {
        return vocabSize - 2;
    }

    /** Id of EOS in a tokenizer of the given vocabulary size. */
    public static int eosId(int vocabSize) {
        return vocabSize - 1;
    }

    /** GPT-2's reversible byte to printable-character mapping. */
    static char[] byteToUnicode() {
        char[] map = new char[256];
        boolean[] direct = new boolean[256];
        for (int b = '!'; b <= '~'; b++) direct[b] = true;
        for (int b = 0xA1; b <= 0xAC; b++) direct[b] = true;
        for (int b = 0xAE; b <= 0xFF; b++) direct[b] = true;
        int n = 0;
        for (int b = 0; b < 256; b++) map[b] = direct[b] ? (char) b : (char) (256 + n++);
        return map;
    }

    /** Learned merges, in rank order, as pairs of token strings; computed once (training is prefix-stable). */
    private static volatile List<String[]> cachedMerges;

    static List<String[]> merges() {
        List<String[]> m = cachedMerges;
        if (m == null) {
            synchronized (ByteLevelBpe.class) {
                if (cachedMerges == null) cachedMerges = train(TrainingCorpus.TEXT, 1, 100_000);
                m = cachedMerges;
            }
        }
        return m;
    }

    /**
     * Classic BPE training over pre-tokenized words: repeatedly merge the most frequent adjacent pair (ties broken by
     * the smaller pair of token ids, so the result is deterministic) until no pair occurs {@code minFrequency} times.
     */
    static List<String[]> train(String corpus, int minFrequency, int maxMerges) {
        char[] b2u = byteToUnicode();
        List<String> tokens = new ArrayList<>();
        Map<String, Integer> tokenIds = new HashMap<>();
        for (int b = 0; b < 256; b++) {
            String s = String.valueOf(b2u[b]);
            tokenIds.put(s, tokens.size());
            tokens.add(s);
        }
        Map<String, Integer> wordCounts = new LinkedHashMap<>();
        Matcher m = GPT2_SPLIT.matcher(corpus);
        while (m.find()) wordCounts.merge(m.group(), 1, Integer::sum);
        int nWords = wordCounts.size();
        int[][] words = new int[nWords][];
        int[] lens = new int[nWords];
        int[] freq = new int[nWords];
        int w = 0;
        for (Map.Entry<String, Integer> e : wordCounts.entrySet()) {
            byte[] bytes = e.getKey().getBytes(StandardCharsets.UTF_8);
            words[w] = new int[bytes.length];
            for (int i = 0; i < bytes.length; i++) words[w][i] = bytes[i] & 0xFF;
            lens[w] = bytes.length;
            freq[w] = e.getValue();
            w++;
        }
        List<String[]> merges = new ArrayList<>();
        Map<Long, Integer> counts = new HashMap<>();
        while (merges.size() < maxMerges) {
            counts.clear();
            for (int i = 0; i < nWords; i++) {
                int[] ws = words[i];
                for (int j = 0; j + 1 < lens[i]; j++) {
                    counts.merge(((long) ws[j] << 32) | ws[j + 1], freq[i], Integer::sum);
                }
            }
            long best = -1;
            int bestCount = 0;
            for (Map.Entry<Long, Integer> e : counts.entrySet()) {
                int c = e.getValue();
                long k = e.getKey();
                if (c > bestCount || (c == bestCount && k < best)) {
                    best = k;
                    bestCount = c;
                }
            }
            if (best < 0 || bestCount < minFrequency) break;
            int a = (int) (best >>> 32), b = (int) best;
            String merged = tokens.get(a) + tokens.get(b);
            Integer id = tokenIds.get(merged);
            if (id == null) {
                id = tokens.size();
                tokenIds.put(merged, id);
                tokens.add(merged);
            }
            merges.add(new String[] {tokens.get(a), tokens.get(b)});
            for (int i = 0; i < nWords; i++) {
                int[] ws = words[i];
                int len = lens[i], out = 0;
                for (int j = 0; j < len; j++) {
                    if (j + 1 < len && ws[j] == a && ws[j + 1] == b) {
                        ws[out++] = id;
                        j++;
                    } else {
                        ws[out++] = ws[j];
                    }
                }
                lens[i] = out;
            }
        }
        return List.copyOf(merges);
    }

    /** Summary of a built tokenizer. */
    public record Built(String json, int vocabSize, int mergeCount, int reservedCount, int bosId, int eosId) {}

    /** At most this many {@code <|reserved_special_token_N|>} fillers (as Llama 3); HF tokenizers loads large
     *  numbers of added tokens in quadratic time, so further ids are filled with synthesized merges instead. */
    static final int MAX_RESERVED = 256;
    /** Longest synthesized token, in characters. */
    private static final int MAX_SYNTH_CHARS = 16;

    /**
     * Builds a tokenizer.json with exactly {@code vocabSize} ids: byte tokens, merges learned from the built-in corpus,
     * then (if the corpus runs out) up to {@value #MAX_RESERVED} reserved special tokens, then, for still larger
     * vocabularies, extra merges of existing word pieces (deterministic), and finally BOS and EOS.
     */
    public static Built build(int vocabSize) {
        if (vocabSize < MIN_VOCAB) {
            throw new IllegalArgumentException("vocab size " + vocabSize + " is below the " + MIN_VOCAB
                    + " ids a byte-level tokenizer needs (256 bytes + BOS + EOS)");
        }
        char[] b2u = byteToUnicode();
        LinkedHashMap<String, Integer> vocab = new LinkedHashMap<>();
        List<String> byId = new ArrayList<>();
        for (int b = 0; b < 256; b++) {
            vocab.put(String.valueOf(b2u[b]), b);
            byId.add(String.valueOf(b2u[b]));
        }
        int target = vocabSize - 2;          // ids below BOS/EOS
        List<String[]> usedMerges = new ArrayList<>();
        for (String[] mg : merges()) {
            String merged = mg[0] + mg[1];
            if (!vocab.containsKey(merged)) {
                if (vocab.size() >= target) break;
                vocab.put(merged, vocab.size());
                byId.add(merged);
            }
            usedMerges.add(mg);
        }
        int trainedTokens = vocab.size();
        int rest = target - vocab.size();
        int reserved = Math.min(rest, MAX_RESERVED);
        int synth = rest - reserved;
        if (synth > 0) synthesize(vocab, byId, usedMerges, trainedTokens, vocab.size() + synth);
        int mergeCount = usedMerges.size();

        ObjectNode root = JSON.createObjectNode();
        root.put("version", "1.0");
        root.putNull("truncation");
        root.putNull("padding");
        ArrayNode added = root.putArray("added_tokens");
        int nextId = vocab.size();
        for (int r = 0; r < reserved; r++) addToken(added, nextId++, "<|reserved_special_token_" + r + "|>");
        int bos = nextId++, eos = nextId++;
        addToken(added, bos, BOS);
        addToken(added, eos, EOS);
        root.putNull("normalizer");
        ObjectNode pre = root.putObject("pre_tokenizer");
        pre.put("type", "ByteLevel");
        pre.put("add_prefix_space", false);
        pre.put("trim_offsets", true);
        pre.put("use_regex", true);

        ObjectNode post = root.putObject("post_processor");
        post.put("type", "TemplateProcessing");
        ArrayNode single = post.putArray("single");
        single.addObject().putObject("SpecialToken").put("id", BOS).put("type_id", 0);
        single.addObject().putObject("Sequence").put("id", "A").put("type_id", 0);
        ArrayNode pair = post.putArray("pair");
        pair.addObject().putObject("SpecialToken").put("id", BOS).put("type_id", 0);
        pair.addObject().putObject("Sequence").put("id", "A").put("type_id", 0);
        pair.addObject().putObject("SpecialToken").put("id", BOS).put("type_id", 1);
        pair.addObject().putObject("Sequence").put("id", "B").put("type_id", 1);
        ObjectNode st = post.putObject("special_tokens").putObject(BOS);
        st.put("id", BOS);
        st.putArray("ids").add(bos);
        st.putArray("tokens").add(BOS);

        ObjectNode dec = root.putObject("decoder");
        dec.put("type", "ByteLevel");
        dec.put("add_prefix_space", true);
        dec.put("trim_offsets", true);
        dec.put("use_regex", true);

        ObjectNode model = root.putObject("model");
        model.put("type", "BPE");
        model.putNull("dropout");
        model.putNull("unk_token");
        model.putNull("continuing_subword_prefix");
        model.putNull("end_of_word_suffix");
        model.put("fuse_unk", false);
        model.put("byte_fallback", false);
        model.put("ignore_merges", false);
        ObjectNode v = model.putObject("vocab");
        vocab.forEach(v::put);
        ArrayNode merges = model.putArray("merges");
        for (String[] mg : usedMerges) merges.add(mg[0] + " " + mg[1]);

        String json;
        try {
            json = JSON.writeValueAsString(root);
        } catch (JsonProcessingException e) {
            throw new IllegalStateException(e);
        }
        return new Built(json, vocabSize, mergeCount, reserved, bos, eos);
    }

    /**
     * Adds merges "a b" of existing word pieces (a from the learned tokens or earlier synthesized ones, b a piece that
     * does not start with a space marker) until the vocabulary reaches {@code until} entries. Deterministic.
     */
    private static void synthesize(Map<String, Integer> vocab, List<String> byId, List<String[]> merges,
                                   int trainedTokens, int until) {
        int[] u2b = unicodeToByte();
        List<String> left = new ArrayList<>();
        List<String> right = new ArrayList<>();
        for (int i = 256; i < trainedTokens; i++) {
            String t = byId.get(i);
            byte[] bytes = tokenBytes(t, u2b);
            if (!validUtf8(bytes)) continue;
            left.add(t);
            boolean wordPiece = true;
            for (byte x : bytes) wordPiece &= (x & 0xFF) > ' ' && x != 0x7F;
            if (wordPiece) right.add(t);
        }
        for (char c = 'a'; c <= 'z'; c++) right.add(String.valueOf(c));
        SplittableRandom rnd = new SplittableRandom(0x5eed_70c3_7a11L);
        long attempts = 0, maxAttempts = 1000L * (until - vocab.size()) + 1_000_000;
        while (vocab.size() < until) {
            if (++attempts > maxAttempts) throw new IllegalStateException("cannot synthesize " + until + " BPE tokens");
            String a = left.get(rnd.nextInt(left.size()));
            String b = right.get(rnd.nextInt(right.size()));
            String ab = a + b;
            if (ab.length() > MAX_SYNTH_CHARS || vocab.containsKey(ab)) continue;
            vocab.put(ab, vocab.size());
            byId.add(ab);
            left.add(ab);
            merges.add(new String[] {a, b});
        }
    }

    static int[] unicodeToByte() {
        char[] b2u = byteToUnicode();
        int[] u2b = new int[512];
        java.util.Arrays.fill(u2b, -1);
        for (int b = 0; b < 256; b++) u2b[b2u[b]] = b;
        return u2b;
    }

    /** The raw bytes a byte-level token stands for. */
    static byte[] tokenBytes(String token, int[] u2b) {
        byte[] out = new byte[token.length()];
        for (int i = 0; i < out.length; i++) out[i] = (byte) u2b[token.charAt(i)];
        return out;
    }

    static boolean validUtf8(byte[] bytes) {
        try {
            StandardCharsets.UTF_8.newDecoder().decode(java.nio.ByteBuffer.wrap(bytes));
            return true;
        } catch (java.nio.charset.CharacterCodingException e) {
            return false;
        }
    }

    private static void addToken(ArrayNode added, int id, String content) {
        ObjectNode t = added.addObject();
        t.put("id", id);
        t.put("content", content);
        t.put("single_word", false);
        t.put("lstrip", false);
        t.put("rstrip", false);
        t.put("normalized", false);
        t.put("special", true);
    }
}
