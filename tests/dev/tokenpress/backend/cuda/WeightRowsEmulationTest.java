package dev.tokenpress.backend.cuda;

import dev.tokenpress.backend.Q8Codec;
import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.WeightType;
import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.io.DType;
import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.io.TensorData;
import dev.tokenpress.model.LlamaConfig;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.List;

import static org.junit.jupiter.api.Assertions.*;

/**
 * The host half of {@code CudaBackend.weightRows} for Q8_0 weights, without a GPU: a checkpoint matrix quantized as
 * the CUDA upload quantizes it ({@link Q8Codec}) and read back through {@code q8Rows} gives the bits the CPU backend's
 * Q8_0 weight reads back, row for row.
 */
class WeightRowsEmulationTest {
    @TempDir
    Path dir;

    @Test
    void q8RowsMatchTheCpuBackendsQ8Weights() {
        LlamaConfig c = new LlamaConfig("LlamaForCausalLM", "llama", 64, 96, 1, 4, 2, 16, 300, 1e-5f, 10000f, null, 4096,
                true, false, null, 298, List.of(299), "bfloat16");
        ModelWriter.write(dir, c, DType.BF16, 3, s -> {});
        try (SafeTensors st = SafeTensors.open(dir); CpuBackend cpu = new CpuBackend(1)) {
            TensorData t = st.get("model.layers.0.self_attn.o_proj.weight");
            int rows = (int) t.shape()[0], cols = (int) t.shape()[1], nb = cols / Q8Codec.BLOCK;
            byte[] codes = new byte[rows * cols];
            float[] scales = new float[rows * nb], row = new float[cols];
            for (int r = 0; r < rows; r++) {
                Q8Codec.rowFloats(t, t.buffer(), r, cols, row);
                Q8Codec.quantizeRow(row, 0, cols, codes, r * cols, scales, r * nb);
            }
            float[] viaCuda = new float[rows * cols];
            CudaBackend.q8Rows(codes, scales, rows, cols, viaCuda);
            cpu.setWeightType(WeightType.Q8_0);
            Tensor w = cpu.weight(t);
            float[] viaCpu = new float[rows * cols];
            cpu.weightRows(w, 0, rows, viaCpu);
            for (int i = 0; i < viaCpu.length; i++)
                assertEquals(Float.floatToRawIntBits(viaCpu[i]), Float.floatToRawIntBits(viaCuda[i]), "element " + i);
            float[] three = new float[3 * cols];
            cpu.weightRows(w, 5, 3, three);
            for (int i = 0; i < three.length; i++) assertEquals(viaCpu[5 * cols + i], three[i], "a row range");
        }
    }
}
