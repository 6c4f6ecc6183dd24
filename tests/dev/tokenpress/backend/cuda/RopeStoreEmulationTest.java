package dev.tokenpress.backend.cuda;

import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;

/**
 * Decode attention v3's RoPE prologue ({@code v3_rope_store} in {@code cuda/rope_store.cuh}, the RoPE + KV store that
 * {@code tp_decode_attention_rope} runs inside the attention kernel) emulated on the host: the functions are pasted
 * into {@code tests/resources/cuda/rope_store_emulation.cpp}, compiled with g++ and run as one block of 128 threads per
 * KV head on 200 random shapes (head dims 64 / 128, groups 1..8, slots outside the capacity); q, k, the stored keys,
 * values and positions must equal a plain loop's bit for bit, and nothing else may be written. Skipped where g++ is
 * missing. (On a GPU, {@code CudaFusedDecodeParityTest.ropeInAttention} runs the kernel itself.)
 */
class RopeStoreEmulationTest {
    @TempDir
    Path tmp;

    @Test
    void prologueRotatesAndStoresLikeTheSeparateKernel() throws Exception {
        Assumptions.assumeTrue(HostEmulation.gppAvailable(), "g++ not found");
        String src = Files.readString(Path.of("cuda/rope_store.cuh"));
        String h = "rope_store.cuh";
        String code = HostEmulation.function(src, h, "__device__ __forceinline__ void ", "rope_cos_sin", "static void ")
                + HostEmulation.function(src, h, "__device__ __forceinline__ void ", "rope_rotate", "static void ")
                + "template <int HD>\n"
                + HostEmulation.function(src, h, "__device__ __forceinline__ void ", "v3_rope_store", "static void ");
        HostEmulation.compileAndRun(tmp, "tests/resources/cuda/rope_store_emulation.cpp", "/*ROPE*/", code);
    }
}
