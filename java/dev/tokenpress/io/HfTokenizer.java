package dev.tokenpress.io;

import ai.djl.huggingface.tokenizers.Encoding;
import ai.djl.huggingface.tokenizers.HuggingFaceTokenizer;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * A Hugging Face fast tokenizer ({@code tokenizer.json}) run by the native {@code tokenizers} library through DJL.
 *
 * <p>Truncation and padding are switched off (DJL would otherwise truncate to 512 tokens). {@link #encode} applies the
 * tokenizer's own post-processor (for Llama-style tokenizers: one BOS token, never two, even if the text already
 * starts with the BOS string); {@link #decode} keeps special tokens. No {@code tokenizer_config.json} is consulted,
 * so decoding is exact (no "clean up tokenization spaces").
 *
 * <p>DJL's native library is bundled in the tokenizers jar and extracted to {@code ~/.djl.ai/tokenizers/...}. On a
 * machine with CUDA, DJL would instead look for a CUDA build and try to download it; this class therefore turns on
 * DJL's offline mode (system property {@code ai.djl.offline=true}, which selects the bundled CPU build and disables
 * DJL's usage tracking) unless the user has set {@code DJL_OFFLINE}/{@code ai.djl.offline} or {@code RUST_FLAVOR}.
 */
public final class HfTokenizer implements AutoCloseable {

    public static final String TOKENIZER_FILE = "tokenizer.json";
    private static final ObjectMapper JSON = new ObjectMapper();

    static {
        configureDjl();
    }

    /** Makes DJL use the CPU native library bundled in its jar, without network access. */
    static void configureDjl() {
        if (System.getenv("DJL_OFFLINE") == null && System.getProperty("ai.djl.offline") == null
                && System.getenv("RUST_FLAVOR") == null && System.getProperty("RUST_FLAVOR") == null) {
            System.setProperty("ai.djl.offline", "true");
        }
        if (System.getenv("OPT_OUT_TRACKING") == null && System.getProperty("OPT_OUT_TRACKING") == null) {
            System.setProperty("OPT_OUT_TRACKING", "true");
        }
        // DJL extracts the native library under ~/.djl.ai; fall back to the temp dir if home is not writable.
        if (System.getenv("DJL_CACHE_DIR") == null && System.getProperty("DJL_CACHE_DIR") == null
                && System.getenv("ENGINE_CACHE_DIR") == null && System.getProperty("ENGINE_CACHE_DIR") == null) {
            String home = System.getProperty("user.home");
            Path base = home == null ? null : Path.of(home);
            boolean ok = base != null && (Files.isWritable(base.resolve(".djl.ai"))
                    || (!Files.exists(base.resolve(".djl.ai")) && Files.isWritable(base)));
            if (!ok) {
                System.setProperty("DJL_CACHE_DIR",
                        Path.of(System.getProperty("java.io.tmpdir"), "djl-cache-" + System.getProperty("user.name"))
                                .toString());
            }
        }
    }

    private final HuggingFaceTokenizer tok;
    private final Path file;
    private final int vocabSize;
    private final int[] prefixIds;           // what the post-processor puts before the text (e.g. [BOS])
    private final Map<String, Integer> vocab; // token string -> id (model vocab + added tokens)
    private final Map<Integer, Boolean> specialIds;
    private volatile boolean closed;

    private HfTokenizer(HuggingFaceTokenizer tok, Path file, int vocabSize, int[] prefixIds, Map<String, Integer> vocab,
                        Map<Integer, Boolean> specialIds) {
        this.tok = tok;
        this.file = file;
        this.vocabSize = vocabSize;
        this.prefixIds = prefixIds;
        this.vocab = vocab;
        this.specialIds = specialIds;
    }

    /** Loads {@code tokenizer.json} from a model directory (or the file itself when given a file). */
    public static HfTokenizer load(Path modelDir) {
        Path file = Files.isDirectory(modelDir) ? modelDir.resolve(TOKENIZER_FILE) : modelDir;
        if (!Files.isRegularFile(file)) {
            throw new ModelLoadException(file + ": not found; tokenpress needs the Hugging Face fast-tokenizer file "
                    + "tokenizer.json in the model directory (download it with the weights)");
        }
        byte[] bytes;
        try {
            bytes = Files.readAllBytes(file);
        } catch (IOException e) {
            throw new ModelLoadException(file + ": cannot be read (" + ModelLoadException.firstLine(e) + ")", e);
        }
        // the native library parses the file on another thread while the vocabulary is read here: the two take
        // about as long (a 128K vocabulary: 0.2-0.5 s each), so loading takes the longer of them, not their sum
        java.util.concurrent.FutureTask<HuggingFaceTokenizer> parse = new java.util.concurrent.FutureTask<>(() -> {
            Map<String, String> opts = new HashMap<>();
            opts.put("truncation", "false");
            opts.put("padding", "false");
            opts.put("addSpecialTokens", "true");
            opts.put("withOverflowingTokens", "false");
            return HuggingFaceTokenizer.newInstance(new ByteArrayInputStream(bytes), opts);
        });
        Thread parser = new Thread(parse, "tokenizer-native-parse");
        parser.setDaemon(true);
        parser.start();
        Contents c;
        try {
            c = Contents.read(bytes, file);
        } catch (RuntimeException | Error e) {
            closeQuietly(parse);
            throw e;
        }
        HuggingFaceTokenizer t;
        try {
            t = getUninterruptibly(parse);
        } catch (java.util.concurrent.ExecutionException ee) {
            Throwable e = ee.getCause();
            String msg = ModelLoadException.firstLine(e);
            if (e instanceof UnsatisfiedLinkError || e.getClass().getName().contains("EngineException")) {
                throw new ModelLoadException(file + ": the Hugging Face tokenizers native library failed to load ("
                        + msg + "); check that ~/.djl.ai (or DJL_CACHE_DIR) is writable", e);
            }
            if (e instanceof Error err) throw err;
            throw new ModelLoadException(file + ": HF tokenizers cannot parse it (" + msg
                    + "); re-download tokenizer.json", e);
        }
        return new HfTokenizer(t, file, c.maxId + 1, c.prefix, c.vocab, c.special);
    }

    /** Starts {@link #load} on a thread of its own (e.g. beside a model's weights); {@link Pending#get} waits for it. */
    public static Pending loadInBackground(Path modelDir) {
        java.util.concurrent.FutureTask<HfTokenizer> task = new java.util.concurrent.FutureTask<>(() -> load(modelDir));
        Thread t = new Thread(task, "tokenizer-load");
        t.setDaemon(true);
        t.start();
        return new Pending(task);
    }

    /** A tokenizer loading on its own thread ({@link #loadInBackground}). */
    public static final class Pending {
        private final java.util.concurrent.FutureTask<HfTokenizer> task;

        private Pending(java.util.concurrent.FutureTask<HfTokenizer> task) {
            this.task = task;
        }

        /** Throws what the load threw if it has already failed (so a broken tokenizer.json stops a long weight load). */
        public void failFast() {
            if (task.isDone()) get();
        }

        /** Waits for the load (an interrupt is kept for later) and returns the tokenizer, or throws what the load threw. */
        public HfTokenizer get() {
            try {
                return getUninterruptibly(task);
            } catch (java.util.concurrent.ExecutionException e) {
                Throwable c = e.getCause();
                if (c instanceof RuntimeException r) throw r;
                if (c instanceof Error err) throw err;
                throw new ModelLoadException(c.toString(), c);
            }
        }
    }

    private static <T> T getUninterruptibly(java.util.concurrent.FutureTask<T> task)
            throws java.util.concurrent.ExecutionException {
        boolean interrupted = false;
        try {
            while (true) {
                try {
                    return task.get();
                } catch (InterruptedException e) {
                    interrupted = true;
                }
            }
        } finally {
            if (interrupted) Thread.currentThread().interrupt();
        }
    }

    /** Waits for the native parse and closes what it made (the load failed on the Java side). */
    private static void closeQuietly(java.util.concurrent.FutureTask<HuggingFaceTokenizer> parse) {
        try {
            getUninterruptibly(parse).close();
        } catch (java.util.concurrent.ExecutionException | RuntimeException ignored) {
            // the Java side's error is the one reported
        }
    }

    /**
     * What this class reads from tokenizer.json itself: the vocabulary (model vocabulary, then added tokens over it),
     * the special ids and the post-processor's prefix. A streaming parse: the merges and the normalizer,
     * pre-tokenizer and decoder definitions are skipped without building their trees.
     */
    /**
     * Field names are neither interned nor kept in a symbol table: the vocabulary's 100K+ token strings are each
     * seen once, and interning them took longer than the rest of the parse.
     */
    private static final ObjectMapper VOCAB_JSON = new ObjectMapper(com.fasterxml.jackson.core.JsonFactory.builder()
            .disable(com.fasterxml.jackson.core.JsonFactory.Feature.INTERN_FIELD_NAMES)
            .disable(com.fasterxml.jackson.core.JsonFactory.Feature.CANONICALIZE_FIELD_NAMES)
            .build());

    private record Contents(Map<String, Integer> vocab, Map<Integer, Boolean> special, int maxId, int[] prefix) {
        static Contents read(byte[] bytes, Path file) {
            Map<String, Integer> vocab = new HashMap<>();
            Map<Integer, Boolean> special = new HashMap<>();
            JsonNode added = null, postProcessor = null;
            boolean model = false;
            int maxId = -1;
            try (com.fasterxml.jackson.core.JsonParser p = VOCAB_JSON.createParser(bytes)) {
                if (p.nextToken() != com.fasterxml.jackson.core.JsonToken.START_OBJECT)
                    throw notTokenizer(file);
                while (p.nextToken() == com.fasterxml.jackson.core.JsonToken.FIELD_NAME) {
                    String field = p.currentName();
                    com.fasterxml.jackson.core.JsonToken value = p.nextToken();
                    switch (field) {
                        case "model" -> { // a repeated key: the last one counts, as in a JSON tree
                            vocab.clear();
                            maxId = -1;
                            model = value == com.fasterxml.jackson.core.JsonToken.START_OBJECT;
                            if (model) maxId = readModel(p, vocab);
                            else p.skipChildren();
                        }
                        case "added_tokens" -> added = p.readValueAsTree();
                        case "post_processor" -> postProcessor = p.readValueAsTree();
                        default -> p.skipChildren();
                    }
                }
            } catch (IOException e) {
                throw new ModelLoadException(file + ": invalid JSON (" + ModelLoadException.firstLine(e)
                        + "); re-download tokenizer.json", e);
            }
            if (!model) throw notTokenizer(file);
            if (added != null)
                for (JsonNode a : added) {
                    int id = a.path("id").asInt(-1);
                    if (id < 0) continue;
                    vocab.put(a.path("content").asText(), id);
                    if (a.path("special").asBoolean(false)) special.put(id, Boolean.TRUE);
                    maxId = Math.max(maxId, id);
                }
            return new Contents(vocab, special, maxId, postProcessorPrefix(postProcessor));
        }

        /** Reads the "model" object's vocabulary (BPE / WordPiece: token to id; Unigram: [[piece, score], ...]). */
        private static int readModel(com.fasterxml.jackson.core.JsonParser p, Map<String, Integer> vocab)
                throws IOException {
            int maxId = -1;
            while (p.nextToken() == com.fasterxml.jackson.core.JsonToken.FIELD_NAME) {
                String field = p.currentName();
                com.fasterxml.jackson.core.JsonToken value = p.nextToken();
                if (!field.equals("vocab")) {
                    p.skipChildren();
                    continue;
                }
                vocab.clear(); // a repeated "vocab": the last one counts
                maxId = -1;
                if (value == com.fasterxml.jackson.core.JsonToken.START_OBJECT) {
                    while (p.nextToken() == com.fasterxml.jackson.core.JsonToken.FIELD_NAME) {
                        String token = p.currentName();
                        p.nextToken();
                        vocab.put(token, p.currentToken().isNumeric() ? p.getValueAsInt() : asIntLikeTree(p));
                    }
                    for (int id : vocab.values()) maxId = Math.max(maxId, id); // a repeated token: its last id
                } else if (value == com.fasterxml.jackson.core.JsonToken.START_ARRAY) {
                    int i = 0;
                    while (p.nextToken() != com.fasterxml.jackson.core.JsonToken.END_ARRAY) {
                        if (p.currentToken() == com.fasterxml.jackson.core.JsonToken.START_ARRAY) {
                            com.fasterxml.jackson.core.JsonToken first = p.nextToken();
                            if (first != com.fasterxml.jackson.core.JsonToken.END_ARRAY) {
                                vocab.put(first.isScalarValue() ? p.getValueAsString("") : "", i);
                                if (!first.isScalarValue()) p.skipChildren();
                                while (p.nextToken() != com.fasterxml.jackson.core.JsonToken.END_ARRAY) p.skipChildren();
                            }
                        } else {
                            p.skipChildren();
                        }
                        i++;
                    }
                    maxId = i - 1;
                } else {
                    p.skipChildren();
                }
            }
            return maxId;
        }

        /** A vocabulary id that is not a JSON number (as JsonNode.asInt: numeric text parsed, anything else 0). */
        private static int asIntLikeTree(com.fasterxml.jackson.core.JsonParser p) throws IOException {
            JsonNode n = p.readValueAsTree();
            return n == null ? 0 : n.asInt();
        }

        private static ModelLoadException notTokenizer(Path file) {
            return new ModelLoadException(file + ": not a Hugging Face tokenizer (no \"model\" object); "
                    + "re-download tokenizer.json");
        }
    }

    /** Ids that the post-processor inserts in front of a single sequence (BOS for Llama/Mistral, none for Qwen2). */
    private static int[] postProcessorPrefix(JsonNode pp) {
        if (pp == null || pp.isMissingNode() || pp.isNull()) return new int[0];
        String type = pp.path("type").asText("");
        switch (type) {
            case "Sequence": {
                for (JsonNode p : pp.path("processors")) {
                    int[] r = postProcessorPrefix(p);
                    if (r.length > 0) return r;
                }
                return new int[0];
            }
            case "TemplateProcessing": {
                List<Integer> out = new ArrayList<>();
                for (JsonNode piece : pp.path("single")) {
                    JsonNode st = piece.get("SpecialToken");
                    if (st == null) break;
                    JsonNode ids = pp.path("special_tokens").path(st.path("id").asText()).path("ids");
                    for (JsonNode id : ids) out.add(id.asInt());
                }
                return out.stream().mapToInt(Integer::intValue).toArray();
            }
            case "BertProcessing":
            case "RobertaProcessing": {
                JsonNode cls = pp.path("cls");
                return cls.isArray() && cls.size() == 2 ? new int[] {cls.get(1).asInt()} : new int[0];
            }
            default:
                return new int[0];
        }
    }

    /** Tokenizes with the tokenizer's special-token post-processing (e.g. a leading BOS), never doubling the BOS. */
    public int[] encode(String text) {
        int[] ids = toInts(encoding(text, true).getIds());
        int p = prefixIds.length;
        if (p > 0 && ids.length >= 2 * p
                && Arrays.equals(ids, 0, p, prefixIds, 0, p) && Arrays.equals(ids, p, 2 * p, prefixIds, 0, p)) {
            ids = Arrays.copyOfRange(ids, p, ids.length);   // the text itself already started with BOS
        }
        return ids;
    }

    /** Tokenizes without adding any special tokens. */
    public int[] encodeNoSpecial(String text) {
        return toInts(encoding(text, false).getIds());
    }

    private Encoding encoding(String text, boolean special) {
        checkOpen();
        return tok.encode(text, special, false);
    }

    /** Decodes ids to text, keeping special tokens. */
    public String decode(int[] ids) {
        checkOpen();
        if (ids.length == 0) return "";
        long[] l = new long[ids.length];
        for (int i = 0; i < ids.length; i++) l[i] = ids[i];
        return tok.decode(l, false);
    }

    /** Number of token ids (largest id in the vocabulary or added tokens, plus one). */
    public int vocabSize() {
        return vocabSize;
    }

    /** Whether both tokenizers map the same token strings to the same ids (e.g. a draft model's and its target's). */
    public boolean sameVocabulary(HfTokenizer other) {
        return vocabSize == other.vocabSize && vocab.equals(other.vocab);
    }

    /** Id of a token string (vocabulary entry or added token), or -1. */
    public int tokenId(String token) {
        Integer id = vocab.get(token);
        return id == null ? -1 : id;
    }

    private volatile String[] tokenTexts;

    /**
     * The text of every token id on its own (built once, cached): null for special tokens and for pieces of a
     * multi-byte character, whose text only exists together with their neighbours.
     */
    public String[] tokenTexts() {
        String[] t = tokenTexts;
        if (t == null) {
            t = new String[vocabSize];
            // decoded after a plain token, as in running text: a SentencePiece decoder drops the leading space of
            // a sequence's first piece, which a token in the middle of a text keeps
            int[] a = encodeNoSpecial("a");
            int anchor = a.length == 1 ? a[0] : -1;
            String anchorText = anchor >= 0 ? decode(new int[] {anchor}) : "";
            for (int id = 0; id < vocabSize; id++) {
                if (isSpecial(id)) continue;
                String s = anchor >= 0 ? decode(new int[] {anchor, id}) : decode(new int[] {id});
                if (anchor >= 0) {
                    if (!s.startsWith(anchorText)) continue;
                    s = s.substring(anchorText.length());
                }
                t[id] = s.indexOf('\uFFFD') >= 0 ? null : s;
            }
            tokenTexts = t;
        }
        return t;
    }

    /** Whether {@code id} is a special added token (BOS, EOS, reserved...). */
    public boolean isSpecial(int id) {
        return specialIds.containsKey(id);
    }

    /** Ids the post-processor puts before the text (usually just BOS); empty when none. */
    public int[] prefixIds() {
        return prefixIds.clone();
    }

    /** The tokenizer.json this was loaded from. */
    public Path file() {
        return file;
    }

    /** A fresh incremental decoder for streaming generated tokens. */
    public StreamingDecoder streaming() {
        return new StreamingDecoder(this::decode);
    }

    private void checkOpen() {
        if (closed) throw new IllegalStateException(file + ": tokenizer already closed");
    }

    @Override
    public void close() {
        if (!closed) {
            closed = true;
            tok.close();
        }
    }

    private static int[] toInts(long[] l) {
        int[] r = new int[l.length];
        for (int i = 0; i < l.length; i++) r[i] = (int) l[i];
        return r;
    }
}
