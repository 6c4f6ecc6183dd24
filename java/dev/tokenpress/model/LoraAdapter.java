package dev.tokenpress.model;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.tokenpress.io.DType;
import dev.tokenpress.io.Half;
import dev.tokenpress.io.ModelLoadException;
import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.io.TensorData;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashSet;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Set;
import java.util.regex.Pattern;
import java.util.stream.IntStream;

/**
 * A PEFT LoRA adapter ({@code adapter_config.json} + {@code adapter_model.safetensors}) merged into the model's
 * weights at load time, as PEFT's {@code merge_and_unload} does: W' = W + s · (α / r) · B·A for every adapted
 * projection (q/k/v/o, gate/up/down), with α / √r under rsLoRA, per-module ranks and alphas from {@code rank_pattern}
 * / {@code alpha_pattern} (PEFT's matching: the first key in the file that ends the module name at a dot boundary,
 * as a regular expression), and s the adapter's scale ({@code --lora-scaled}); PEFT's {@code .default} adapter name
 * in tensor keys is accepted. The merged matrices are computed in
 * f32 and stored in the checkpoint's dtype (bf16 rounding as PEFT's merge in bf16), in memory; the other weights stay
 * as they are. Adapters that change anything else are refused with the reason: DoRA, trained biases, {@code
 * modules_to_save}, embedding or LM-head LoRA, {@code layers_to_transform}, Conv1D ({@code fan_in_fan_out}), and
 * the variants PEFT itself cannot merge or that change the update (activated LoRA, Arrow, BD-LoRA, QA-LoRA, KaSA,
 * MonteCLoRA). The merged projections live in the Java heap: a large adapter needs -Xmx room for them (or
 * {@code --weight-type q8_0}, which quantizes each as it is merged).
 */
public final class LoraAdapter implements AutoCloseable {
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final Set<String> TARGETS = Set.of("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj");
    private static final String PREFIX = "base_model.model.";
    /** base_model.model.MODULE.lora_(A|B)[.ADAPTER].weight (PEFT writes the adapter name "default" in some versions). */
    private static final Pattern KEY = Pattern.compile("base_model\\.model\\.(.+)\\.lora_([AB])(?:\\.[A-Za-z0-9_-]+)?\\.weight");

    private final Path dir;
    private final SafeTensors st;
    private final float scale;
    private final double alpha;
    private final boolean rslora;
    private final Map<String, Double> alphaPattern = new LinkedHashMap<>();
    private final Set<String> modules = new HashSet<>();   // module names with an A/B pair, e.g. model.layers.0.self_attn.q_proj
    private final Set<String> merged = new HashSet<>();
    private final Map<String, String> keys = new java.util.HashMap<>();  // "module|A" / "module|B" -> tensor name

    private LoraAdapter(Path dir, SafeTensors st, float scale, double alpha, boolean rslora) {
        this.dir = dir;
        this.st = st;
        this.scale = scale;
        this.alpha = alpha;
        this.rslora = rslora;
    }

    /**
     * Reads an adapter directory for a model of {@code config}; {@code scale} multiplies its update (1 = as trained).
     *
     * @throws ModelLoadException for a missing or malformed adapter, or one this merge cannot apply (one line: why)
     */
    public static LoraAdapter load(Path dir, LlamaConfig config, float scale) {
        Path cfgFile = dir.resolve("adapter_config.json"), weights = dir.resolve("adapter_model.safetensors");
        if (!Files.isRegularFile(cfgFile))
            throw new ModelLoadException(cfgFile + ": not found; a LoRA adapter directory holds PEFT's adapter_config.json and adapter_model.safetensors");
        if (!Files.isRegularFile(weights))
            throw new ModelLoadException(weights + ": not found (adapter_model.bin is not read: save the adapter with safetensors)");
        JsonNode c;
        try {
            c = JSON.readTree(cfgFile.toFile());
        } catch (IOException e) {
            String m = e.getMessage() == null ? e.toString() : e.getMessage().lines().findFirst().orElse("");
            throw new ModelLoadException(cfgFile + ": not valid JSON (" + m + ")", e);
        }
        String where = cfgFile.toString();
        if (!c.path("peft_type").asText("LORA").equals("LORA"))
            throw new ModelLoadException(where + ": peft_type " + c.path("peft_type").asText() + " is not supported (LORA only)");
        refuse(c, where, "use_dora", "DoRA adapters are not supported");
        refuse(c, where, "fan_in_fan_out", "fan_in_fan_out (Conv1D) adapters are not supported");
        refuse(c, where, "lora_bias", "adapters with LoRA biases are not supported");
        if (!c.path("bias").asText("none").equals("none"))
            throw new ModelLoadException(where + ": bias " + c.path("bias").asText() + " (trained biases) is not supported: only bias \"none\"");
        refuse(c, where, "use_bdlora", "BD-LoRA adapters are not supported");
        refuse(c, where, "use_qalora", "QA-LoRA adapters are not supported");
        for (String k : new String[] {"modules_to_save", "layers_to_transform", "target_parameters", "trainable_token_indices",
                "layer_replication", "alora_invocation_tokens", "arrow_config", "kasa_config", "monteclora_config"}) {
            JsonNode v = c.get(k);
            if (v != null && !v.isNull() && !(v.isContainerNode() && v.isEmpty()))
                throw new ModelLoadException(where + ": " + k + " is not supported by the load-time merge");
        }
        JsonNode rp = c.get("rank_pattern");
        double alpha = c.path("lora_alpha").asDouble(Double.NaN);
        if (!(alpha > 0)) throw new ModelLoadException(where + ": lora_alpha must be a positive number");
        if (!(scale > 0) || Float.isInfinite(scale)) throw new IllegalArgumentException("LoRA scale must be positive, got " + scale);
        SafeTensors st = SafeTensors.openFile(weights);
        LoraAdapter a = new LoraAdapter(dir, st, scale, alpha, c.path("use_rslora").asBoolean(false));
        try {
            JsonNode ap = c.get("alpha_pattern");
            if (ap != null && ap.isObject())
                for (Iterator<Map.Entry<String, JsonNode>> it = ap.fields(); it.hasNext(); ) {
                    var e = it.next();
                    a.alphaPattern.put(e.getKey(), e.getValue().asDouble());
                }
            // every tensor must be an A or B of a supported projection of an existing layer
            for (String name : st.names()) {
                java.util.regex.Matcher km = KEY.matcher(name);
                if (!km.matches())
                    throw new ModelLoadException(weights + ": tensor " + name + " is not a LoRA A/B matrix of a linear layer "
                            + "(embedding or LM-head adapters, biases and saved modules are not supported)");
                String module = km.group(1);
                a.keys.put(module + "|" + km.group(2), name);
                String leaf = module.substring(module.lastIndexOf('.') + 1);
                if (!TARGETS.contains(leaf))
                    throw new ModelLoadException(weights + ": LoRA on " + module + " is not supported (only q/k/v/o and gate/up/down projections)");
                java.util.regex.Matcher m = Pattern.compile("model\\.layers\\.(\\d+)\\..*").matcher(module);
                if (!m.matches() || Integer.parseInt(m.group(1)) >= config.numLayers())
                    throw new ModelLoadException(weights + ": " + module + " is not a layer of this " + config.numLayers() + "-layer model");
                a.modules.add(module);
            }
            for (String module : a.modules)
                if (!a.keys.containsKey(module + "|A") || !a.keys.containsKey(module + "|B"))
                    throw new ModelLoadException(weights + ": " + module + " has only one of lora_A and lora_B");
            if (a.modules.isEmpty()) throw new ModelLoadException(weights + ": no LoRA matrices");
        } catch (RuntimeException e) {
            st.close();
            throw e;
        }
        return a;
    }

    private static void refuse(JsonNode c, String where, String key, String why) {
        if (c.path(key).asBoolean(false)) throw new ModelLoadException(where + ": " + why);
    }

    /** The adapter's directory. */
    public Path directory() { return dir; }

    /** Projections this adapter changes. */
    public int moduleCount() { return modules.size(); }

    /**
     * The weight {@code w} (a checkpoint tensor such as {@code model.layers.0.self_attn.q_proj.weight}) with this
     * adapter's update merged in, or {@code w} itself when the adapter does not touch it.
     */
    public TensorData apply(TensorData w) {
        if (!w.name().endsWith(".weight")) return w;
        String module = w.name().substring(0, w.name().length() - ".weight".length());
        if (!modules.contains(module)) return w;
        TensorData a = st.get(keys.get(module + "|A")), b = st.get(keys.get(module + "|B"));
        long out = w.shape()[0], in = w.shape()[1];
        if (a.shape().length != 2 || b.shape().length != 2 || a.shape()[1] != in || b.shape()[0] != out || a.shape()[0] != b.shape()[1])
            throw new ModelLoadException(dir + ": LoRA of " + module + " has A " + a.shapeString() + " and B " + b.shapeString()
                    + ", which do not fit its weight " + w.shapeString());
        int r = (int) a.shape()[0];
        double al = alpha;
        for (var e : alphaPattern.entrySet()) // PEFT's get_pattern_key: re.match(rf"(.*\.)?({key})$", name), first wins
            if (Pattern.matches("(.*\\.)?(" + e.getKey() + ")", module)) {
                al = e.getValue();
                break;
            }
        float s = (float) (scale * (rslora ? al / Math.sqrt(r) : al / r));
        float[] av = a.toFloats(), bv = b.toFloats();
        int rows = Math.toIntExact(out), cols = Math.toIntExact(in);
        DType dt = w.dtype();
        ByteBuffer dst;
        try {
            dst = ByteBuffer.allocate(Math.toIntExact((long) rows * cols * dt.bytes)).order(ByteOrder.LITTLE_ENDIAN);
        } catch (OutOfMemoryError e) {
            throw new ModelLoadException(dir + ": no memory for the merged " + module + " (" + ((long) rows * cols * dt.bytes >> 20)
                    + " MiB): the merged projections live in the Java heap; raise -Xmx (JAVA_OPTS) or load with --weight-type q8_0");
        }
        ByteBuffer src = w.buffer();
        IntStream.range(0, rows).parallel().forEach(o -> {
            float[] row = new float[cols];
            for (int k = 0; k < r; k++) {
                float bk = s * bv[o * r + k];
                if (bk == 0f) continue;
                for (int i = 0, base = k * cols; i < cols; i++) row[i] += bk * av[base + i];
            }
            for (int i = 0; i < cols; i++) {
                long idx = (long) o * cols + i;
                int at = Math.toIntExact(idx * dt.bytes);
                switch (dt) {
                    case F32 -> dst.putFloat(at, src.getFloat(at) + row[i]);
                    case BF16 -> dst.putShort(at, Half.floatToBf16(Float.intBitsToFloat((src.getShort(at) & 0xFFFF) << 16) + row[i]));
                    case F16 -> dst.putShort(at, Half.fromFloat(Half.toFloat(src.getShort(at)) + row[i]));
                }
            }
        });
        synchronized (merged) {
            merged.add(module);
        }
        return new TensorData(w.name(), dt, w.shape().clone(), dst, dir.resolve("adapter_model.safetensors"));
    }

    /**
     * Checks that every projection the adapter changes was merged (the model has it).
     *
     * @throws ModelLoadException naming one that was not
     */
    public void checkAllMerged() {
        for (String m : modules)
            if (!merged.contains(m))
                throw new ModelLoadException(dir + ": the adapter changes " + m + ", which this model does not have");
    }

    @Override
    public void close() {
        st.close();
    }
}
