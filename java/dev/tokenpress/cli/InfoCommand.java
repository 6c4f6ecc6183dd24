package dev.tokenpress.cli;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.tokenpress.io.ConfigLoader;
import dev.tokenpress.io.DType;
import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.io.TensorData;
import dev.tokenpress.model.LlamaConfig;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;
import picocli.CommandLine.Model.CommandSpec;

import java.io.PrintWriter;
import java.nio.file.Path;
import java.util.EnumMap;
import java.util.Map;
import java.util.concurrent.Callable;

/** {@code tokenpress info}: what a model directory holds, without loading weights onto a device. */
@Command(name = "info", mixinStandardHelpOptions = true, description = "Describe a model: architecture, size, dtypes, shapes, KV bytes per token.")
public final class InfoCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Option(names = {"-m", "--model"}, required = true, paramLabel = "DIR", description = "Hugging Face model directory.")
    Path model;

    @Option(names = "--json", description = "Print one JSON object.")
    boolean json;

    @Override
    public Integer call() throws Exception {
        PrintWriter out = spec.commandLine().getOut();
        LlamaConfig c = ConfigLoader.load(model);
        Map<DType, Long> dtypes = new EnumMap<>(DType.class);
        long fileBytes;
        long params = 0;
        try (SafeTensors st = SafeTensors.open(model)) {
            for (String name : st.names()) {
                TensorData t = st.get(name);
                dtypes.merge(t.dtype(), t.numel(), Long::sum);
                params += t.numel();
            }
            fileBytes = st.totalBytes();
        }
        String chat;
        try {
            chat = dev.tokenpress.io.ChatTemplate.forModel(model).toString();
        } catch (dev.tokenpress.io.ModelLoadException e) {
            chat = "none";
        }
        if (json) {
            ObjectMapper om = new ObjectMapper();
            ObjectNode o = om.createObjectNode();
            o.put("architecture", c.architecture());
            o.put("model_type", c.modelType());
            o.put("parameters", params);
            o.put("tensor_bytes", fileBytes);
            ObjectNode d = o.putObject("dtypes");
            dtypes.forEach((k, v) -> d.put(k.name(), v));
            o.put("layers", c.numLayers());
            o.put("hidden_size", c.hiddenSize());
            o.put("intermediate_size", c.intermediateSize());
            o.put("heads", c.numHeads());
            o.put("kv_heads", c.numKvHeads());
            o.put("head_dim", c.headDim());
            o.put("vocab_size", c.vocabSize());
            o.put("max_position_embeddings", c.maxPositionEmbeddings());
            o.put("rope_theta", c.ropeTheta());
            o.put("rope_scaling", c.ropeScaling() == null ? "none" : c.ropeScaling().type());
            o.put("tied_embeddings", c.tieWordEmbeddings());
            o.put("attention_bias", c.attentionBias());
            long[] wb = decodeWeightBytes(c);
            o.put("weight_bytes_per_token_bf16", wb[0]);
            o.put("weight_bytes_per_token_q8_0", wb[1]);
            o.put("weight_bytes_per_token_q4_0", wb[2]);
            o.put("kv_bytes_per_token_bf16", c.kvBytesPerToken(2));
            o.put("kv_bytes_per_token_f32", c.kvBytesPerToken(4));
            if (c.slidingWindow() != null) o.put("sliding_window", c.slidingWindow());
            o.put("chat_template", chat);
            out.println(om.writerWithDefaultPrettyPrinter().writeValueAsString(o));
        } else {
            out.printf("architecture      %s (%s)%n", c.architecture(), c.modelType());
            out.printf("parameters        %,d (%s of tensors)%n", params, Bytes.human(fileBytes));
            StringBuilder sb = new StringBuilder();
            dtypes.forEach((k, v) -> sb.append(sb.length() == 0 ? "" : ", ").append(k).append(' ').append(String.format("%,d", v)));
            out.printf("dtypes            %s%n", sb);
            out.printf("layers            %d%n", c.numLayers());
            out.printf("hidden / mlp      %d / %d%n", c.hiddenSize(), c.intermediateSize());
            out.printf("heads / kv heads  %d / %d (GQA %d)%n", c.numHeads(), c.numKvHeads(), c.groupSize());
            out.printf("head dim          %d%n", c.headDim());
            out.printf("vocab             %d%n", c.vocabSize());
            out.printf("context           %d (rope theta %.0f, scaling %s)%n", c.maxPositionEmbeddings(), c.ropeTheta(),
                    c.ropeScaling() == null ? "none" : c.ropeScaling().type() + " x" + c.ropeScaling().factor());
            out.printf("tied embeddings   %s, qkv bias %s%n", c.tieWordEmbeddings(), c.attentionBias());
            long[] wb = decodeWeightBytes(c);
            out.printf("decode weights    %s bf16, %s q8_0, %s q4_0 (read per token: layer matrices + LM head)%n",
                    Bytes.human(wb[0]), Bytes.human(wb[1]), Bytes.human(wb[2]));
            out.printf("KV bytes/token    %s (bf16), %s (f32)%n", Bytes.human(c.kvBytesPerToken(2)), Bytes.human(c.kvBytesPerToken(4)));
            if (c.slidingWindow() != null)
                out.printf("sliding window    %d (attention sees the last %d tokens; prompt tokens past it run one at a time)%n",
                        c.slidingWindow(), c.slidingWindow());
            out.printf("chat template     %s%n", chat);
        }
        out.flush();
        return ExitCodes.OK;
    }

    /**
     * Bytes of the matrices a decode step reads (every layer matrix and the LM head) as bf16, Q8_0 (a byte per weight
     * and an f32 scale per 32, as tokenpress holds them) and Q4_0 (half a byte and the scale).
     */
    static long[] decodeWeightBytes(LlamaConfig c) {
        long d = c.hiddenSize(), f = c.intermediateSize();
        long params = c.numLayers() * (2L * d * c.qDim() + 2L * d * c.kvDim() + 3L * d * f) + (long) c.vocabSize() * d;
        return new long[] {2 * params, params / 32 * 36, params / 32 * 20};
    }
}
