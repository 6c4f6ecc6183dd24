package dev.tokenpress.io;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.tokenpress.model.LlamaConfig;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
import java.util.Set;

/**
 * Parses a Hugging Face {@code config.json} (plus the optional {@code generation_config.json}) of a Llama, Mistral,
 * Qwen2 / Qwen3 checkpoint into a {@link LlamaConfig}. Every problem is reported as a one-line {@link ModelLoadException}
 * naming the file and the field.
 */
public final class ConfigLoader {
    private ConfigLoader() {}

    public static final String CONFIG_FILE = "config.json";
    public static final String GENERATION_CONFIG_FILE = "generation_config.json";
    public static final List<String> SUPPORTED_ARCHITECTURES =
            List.of("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM");

    private static final ObjectMapper JSON = new ObjectMapper();

    /** Loads {@code config.json} (and {@code generation_config.json} when present) from a model directory. */
    public static LlamaConfig load(Path modelDir) {
        Path cfgPath = modelDir.resolve(CONFIG_FILE);
        if (!Files.isRegularFile(cfgPath)) {
            throw new ModelLoadException(cfgPath + ": not found; the model directory must hold the Hugging Face "
                    + "config.json (download it together with the weights)");
        }
        JsonNode root = readJson(cfgPath);
        Path genPath = modelDir.resolve(GENERATION_CONFIG_FILE);
        JsonNode gen = Files.isRegularFile(genPath) ? readJson(genPath) : null;
        return parse(root, cfgPath.toString(), gen, genPath.toString());
    }

    /** Parses config.json text (for tests and tools); {@code file} is used in error messages. */
    public static LlamaConfig parse(String configJson, String file) {
        JsonNode root;
        try {
            root = JSON.readTree(configJson);
        } catch (IOException e) {
            throw new ModelLoadException(file + ": invalid JSON (" + ModelLoadException.firstLine(e) + ")", e);
        }
        return parse(root, file, null, null);
    }

    private static JsonNode readJson(Path p) {
        JsonNode n;
        try {
            n = JSON.readTree(Files.readAllBytes(p));
        } catch (IOException e) {
            throw new ModelLoadException(p + ": invalid JSON (" + ModelLoadException.firstLine(e)
                    + "); fix or re-download the file", e);
        }
        if (n == null || !n.isObject()) {
            throw new ModelLoadException(p + ": not a JSON object; fix or re-download the file");
        }
        return n;
    }

    private static LlamaConfig parse(JsonNode root, String file, JsonNode gen, String genFile) {
        if (root == null || !root.isObject()) {
            throw new ModelLoadException(file + ": not a JSON object; fix or re-download the file");
        }
        // ---- architecture / model type
        String arch = null;
        JsonNode archs = root.get("architectures");
        if (archs != null && archs.isArray() && archs.size() > 0 && archs.get(0).isTextual()) {
            arch = archs.get(0).asText();
        }
        String modelType = text(root, "model_type");
        if (arch == null) {
            if (modelType == null) {
                throw new ModelLoadException(file + ": neither architectures nor model_type is set; cannot tell the "
                        + "model family (supported: " + String.join(", ", SUPPORTED_ARCHITECTURES) + ")");
            }
            arch = switch (modelType.toLowerCase(Locale.ROOT)) {
                case "llama" -> "LlamaForCausalLM";
                case "mistral" -> "MistralForCausalLM";
                case "qwen2" -> "Qwen2ForCausalLM";
                case "qwen3" -> "Qwen3ForCausalLM";
                default -> throw new ModelLoadException(file + ": model_type " + modelType + " is not supported (supported: "
                        + String.join(", ", SUPPORTED_ARCHITECTURES) + ")");
            };
        }
        if (!SUPPORTED_ARCHITECTURES.contains(arch)) {
            throw new ModelLoadException(file + ": architecture " + arch + " is not supported (supported: "
                    + String.join(", ", SUPPORTED_ARCHITECTURES) + ")");
        }
        boolean qwen2 = arch.equals("Qwen2ForCausalLM");
        boolean qwen3 = arch.equals("Qwen3ForCausalLM");
        boolean mistral = arch.equals("MistralForCausalLM");
        if (modelType == null) modelType = qwen2 ? "qwen2" : qwen3 ? "qwen3" : mistral ? "mistral" : "llama";

        // ---- sizes
        int hidden = positiveInt(root, "hidden_size", file, null);
        int intermediate = positiveInt(root, "intermediate_size", file, null);
        int layers = positiveInt(root, "num_hidden_layers", file, null);
        int heads = positiveInt(root, "num_attention_heads", file, null);
        int kvHeads = positiveInt(root, "num_key_value_heads", file, heads);
        int vocab = positiveInt(root, "vocab_size", file, null);
        Integer hd = isNull(root.get("head_dim")) ? null : positiveInt(root, "head_dim", file, null);
        int headDim;
        if (hd != null) {
            headDim = hd;
        } else {
            if (hidden % heads != 0) {
                throw new ModelLoadException(file + ": field hidden_size (" + hidden + ") is not divisible by "
                        + "num_attention_heads (" + heads + ") and head_dim is not set; fix config.json");
            }
            headDim = hidden / heads;
        }
        if (heads % kvHeads != 0) {
            throw new ModelLoadException(file + ": field num_key_value_heads (" + kvHeads + ") must divide "
                    + "num_attention_heads (" + heads + "); fix config.json");
        }
        if (headDim % 2 != 0) {
            throw new ModelLoadException(file + ": field head_dim (" + headDim + ") must be even for rotary "
                    + "embeddings; fix config.json");
        }
        float eps = (float) positiveDouble(root, "rms_norm_eps", file, 1e-6);
        int defaultMaxPos = qwen2 ? 32768 : qwen3 ? 40960 : mistral ? 131072 : 2048;
        int maxPos = positiveInt(root, "max_position_embeddings", file, defaultMaxPos);

        // ---- rotary embedding: transformers 5 "rope_parameters" or legacy rope_theta + rope_scaling
        JsonNode ropeParams = root.get("rope_parameters");
        double theta;
        LlamaConfig.RopeScaling scaling;
        if (!isNull(ropeParams)) {
            if (!ropeParams.isObject()) {
                throw new ModelLoadException(file + ": field rope_parameters must be an object; fix config.json");
            }
            Double t = optDouble(ropeParams, "rope_theta", file, "rope_parameters.");
            if (t == null) t = optDouble(root, "rope_theta", file, "");
            theta = t == null ? 10000.0 : t;
            scaling = ropeScaling(ropeParams, file, "rope_parameters", root, maxPos);
        } else {
            Double t = optDouble(root, "rope_theta", file, "");
            theta = t == null ? 10000.0 : t;
            JsonNode rs = root.get("rope_scaling");
            if (isNull(rs)) {
                scaling = null;
            } else if (!rs.isObject()) {
                throw new ModelLoadException(file + ": field rope_scaling must be an object or null; fix config.json");
            } else {
                scaling = ropeScaling(rs, file, "rope_scaling", root, maxPos);
            }
        }
        if (!(theta > 0) || Double.isInfinite(theta)) {
            throw new ModelLoadException(file + ": field rope_theta (" + theta + ") must be positive; fix config.json");
        }

        // ---- flags
        boolean tie = bool(root, "tie_word_embeddings", file, false);
        boolean bias = qwen2 || bool(root, "attention_bias", file, false);
        Integer sliding = null;
        JsonNode sw = root.get("sliding_window");
        if (!isNull(sw)) {
            if (!sw.isIntegralNumber() || sw.asLong() < 0 || sw.asLong() > Integer.MAX_VALUE) {
                throw new ModelLoadException(file + ": field sliding_window must be a non-negative integer or null; "
                        + "fix config.json");
            }
            sliding = sw.asInt();
            JsonNode use = root.get("use_sliding_window");
            if (use != null && use.isBoolean() && !use.asBoolean()) sliding = null;   // Qwen2/3: window disabled
            if (sliding != null && sliding == 0) sliding = null;
        }

        // ---- special tokens
        int bos = -1;
        JsonNode b = root.get("bos_token_id");
        if (!isNull(b)) {
            if (!b.isIntegralNumber()) {
                throw new ModelLoadException(file + ": field bos_token_id must be an integer; fix config.json");
            }
            bos = b.asInt();
        }
        Set<Integer> eos = new LinkedHashSet<>();
        addIds(root.get("eos_token_id"), eos, file);
        if (gen != null) {
            addIds(gen.get("eos_token_id"), eos, genFile);
            if (bos < 0 && gen.get("bos_token_id") != null && gen.get("bos_token_id").isIntegralNumber()) {
                bos = gen.get("bos_token_id").asInt();
            }
        }
        String dtype = text(root, "torch_dtype");
        if (dtype == null) dtype = text(root, "dtype");

        return new LlamaConfig(arch, modelType, hidden, intermediate, layers, heads, kvHeads, headDim, vocab, eps,
                (float) theta, scaling, maxPos, tie, bias, sliding, bos, List.copyOf(new ArrayList<>(eos)), dtype);
    }

    private static LlamaConfig.RopeScaling ropeScaling(JsonNode rs, String file, String field, JsonNode root, int maxPos) {
        String type = text(rs, "rope_type");
        if (type == null) type = text(rs, "type");
        if (type == null || type.equals("default")) return null;
        String p = field + ".";
        if (type.equals("yarn")) return yarn(rs, file, p, root, maxPos);
        if (!type.equals("llama3")) {
            throw new ModelLoadException(file + ": " + field + " type " + type + " is not supported (supported: "
                    + "llama3, yarn, default); use a checkpoint without this RoPE scaling");
        }
        double factor = requiredDouble(rs, "factor", file, p);
        double low = requiredDouble(rs, "low_freq_factor", file, p);
        double high = requiredDouble(rs, "high_freq_factor", file, p);
        JsonNode om = rs.get("original_max_position_embeddings");
        if (isNull(om) || !om.isNumber() || om.asDouble() != Math.rint(om.asDouble()) || om.asDouble() <= 0
                || om.asDouble() > Integer.MAX_VALUE) {
            throw new ModelLoadException(file + ": field " + p + "original_max_position_embeddings must be a positive "
                    + "integer for llama3 rope scaling; fix config.json");
        }
        if (!(high > low)) {
            throw new ModelLoadException(file + ": field " + p + "high_freq_factor (" + high + ") must exceed "
                    + "low_freq_factor (" + low + "); fix config.json");
        }
        return new LlamaConfig.RopeScaling("llama3", (float) factor, (float) low, (float) high, om.asInt());
    }

    /**
     * YaRN as transformers reads it: {@code factor} (null: max_position_embeddings / original), {@code
     * original_max_position_embeddings} (a top-level one first, else the scaling's, else max_position_embeddings), {@code beta_fast} /
     * {@code beta_slow} (32 / 1), {@code attention_factor} (else from {@code mscale} / {@code mscale_all_dim}, else
     * 0.1 ln(factor) + 1), {@code truncate} (true).
     */
    private static LlamaConfig.RopeScaling yarn(JsonNode rs, String file, String p, JsonNode root, int maxPos) {
        JsonNode om = root.get("original_max_position_embeddings"); // transformers: the top-level value wins (Phi-3)
        if (isNull(om)) om = rs.get("original_max_position_embeddings");
        int original;
        if (isNull(om)) {
            original = maxPos;
        } else if (!om.isNumber() || om.asDouble() != Math.rint(om.asDouble()) || om.asDouble() <= 0
                || om.asDouble() > Integer.MAX_VALUE) {
            throw new ModelLoadException(file + ": field " + p + "original_max_position_embeddings must be a positive "
                    + "integer for yarn rope scaling; fix config.json");
        } else {
            original = om.asInt();
        }
        Double f = optDouble(rs, "factor", file, p);
        double factor = f != null ? f : (double) maxPos / original;
        if (!(factor > 0) || Double.isInfinite(factor))
            throw new ModelLoadException(file + ": field " + p + "factor must be a positive number for yarn rope scaling; fix config.json");
        Double bf = optDouble(rs, "beta_fast", file, p), bs = optDouble(rs, "beta_slow", file, p);
        double betaFast = bf == null || bf == 0 ? 32 : bf, betaSlow = bs == null || bs == 0 ? 1 : bs;
        if (!(betaFast > 0) || !(betaSlow > 0))
            throw new ModelLoadException(file + ": fields " + p + "beta_fast and beta_slow must be positive; fix config.json");
        Double af = optDouble(rs, "attention_factor", file, p);
        double attention;
        if (af != null) {
            attention = af;
        } else {
            Double ms = optDouble(rs, "mscale", file, p), msAll = optDouble(rs, "mscale_all_dim", file, p);
            attention = ms != null && ms != 0 && msAll != null && msAll != 0
                    ? LlamaConfig.RopeScaling.yarnMscale(factor, ms) / LlamaConfig.RopeScaling.yarnMscale(factor, msAll)
                    : LlamaConfig.RopeScaling.yarnMscale(factor, 1);
        }
        if (!(attention > 0) || Double.isInfinite(attention))
            throw new ModelLoadException(file + ": field " + p + "attention_factor (" + attention + ") must be positive; fix config.json");
        JsonNode tr = rs.get("truncate");
        boolean truncate = isNull(tr) || tr.asBoolean(true);
        return new LlamaConfig.RopeScaling("yarn", (float) factor, (float) betaSlow, (float) betaFast, original,
                (float) attention, truncate);
    }

    private static void addIds(JsonNode n, Set<Integer> out, String file) {
        if (isNull(n)) return;
        if (n.isIntegralNumber()) {
            out.add(n.asInt());
        } else if (n.isArray()) {
            for (JsonNode e : n) {
                if (!e.isIntegralNumber()) {
                    throw new ModelLoadException(file + ": field eos_token_id must be an integer or a list of integers; "
                            + "fix the file");
                }
                out.add(e.asInt());
            }
        } else {
            throw new ModelLoadException(file + ": field eos_token_id must be an integer or a list of integers; fix the file");
        }
    }

    private static boolean isNull(JsonNode n) {
        return n == null || n.isNull() || n.isMissingNode();
    }

    private static String text(JsonNode root, String field) {
        JsonNode n = root.get(field);
        return n != null && n.isTextual() ? n.asText() : null;
    }

    private static int positiveInt(JsonNode root, String field, String file, Integer dflt) {
        JsonNode n = root.get(field);
        if (isNull(n)) {
            if (dflt != null) return dflt;
            throw new ModelLoadException(file + ": field " + field + " is missing; fix or re-download config.json");
        }
        if (!n.isNumber() || n.asDouble() != Math.rint(n.asDouble()) || n.asDouble() <= 0
                || n.asDouble() > Integer.MAX_VALUE) {
            throw new ModelLoadException(file + ": field " + field + " must be a positive integer (got " + n
                    + "); fix config.json");
        }
        return n.asInt();
    }

    private static double positiveDouble(JsonNode root, String field, String file, double dflt) {
        JsonNode n = root.get(field);
        if (isNull(n)) return dflt;
        if (!n.isNumber() || !(n.asDouble() > 0) || Double.isInfinite(n.asDouble())) {
            throw new ModelLoadException(file + ": field " + field + " must be a positive number (got " + n
                    + "); fix config.json");
        }
        return n.asDouble();
    }

    private static Double optDouble(JsonNode obj, String field, String file, String prefix) {
        JsonNode n = obj.get(field);
        if (isNull(n)) return null;
        if (!n.isNumber()) {
            throw new ModelLoadException(file + ": field " + prefix + field + " must be a number (got " + n
                    + "); fix config.json");
        }
        return n.asDouble();
    }

    private static double requiredDouble(JsonNode obj, String field, String file, String prefix) {
        Double d = optDouble(obj, field, file, prefix);
        if (d == null || !(d > 0) || d.isInfinite()) {
            throw new ModelLoadException(file + ": field " + prefix + field + " must be a positive number for llama3 "
                    + "rope scaling; fix config.json");
        }
        return d;
    }

    private static boolean bool(JsonNode root, String field, String file, boolean dflt) {
        JsonNode n = root.get(field);
        if (isNull(n)) return dflt;
        if (!n.isBoolean()) {
            throw new ModelLoadException(file + ": field " + field + " must be true or false (got " + n
                    + "); fix config.json");
        }
        return n.asBoolean();
    }
}
