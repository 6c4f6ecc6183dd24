package dev.tokenpress.model;

import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.io.DType;
import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.io.SafeTensors;

import java.nio.file.Path;
import java.util.List;

/**
 * A small generated f32 Llama on the CPU backend (GQA 4 q-heads over 2 KV heads, head dim 16, vocabulary 300, token 299
 * the end token) with its checkpoint open, for the decode-loop tests.
 */
record GeneratedModel(LlamaConfig config, SafeTensors st, Llama model) implements AutoCloseable {
    static GeneratedModel write(Path dir, int layers, boolean tied, long seed) {
        LlamaConfig c = new LlamaConfig("LlamaForCausalLM", "llama", 64, 96, layers, 4, 2, 16, 300, 1e-5f, 10000f, null, 4096,
                tied, false, null, 298, List.of(299), "float32");
        ModelWriter.write(dir, c, DType.F32, seed, s -> {});
        SafeTensors st = SafeTensors.open(dir);
        CpuBackend b = new CpuBackend(2);
        return new GeneratedModel(c, st, new Llama(c, Weights.load(st, c, b, null), b, 8));
    }

    @Override
    public void close() {
        model.close();
        st.close();
    }
}
