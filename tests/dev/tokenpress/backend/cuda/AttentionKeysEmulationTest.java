package dev.tokenpress.backend.cuda;

import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;

/**
 * The selection keys the tensor-core decode attention writes for TidalDecode ({@code v3_sel_reduce} and {@code v3_sel_store} in
 * {@code cuda/sel_keys.cuh}, used by {@code tp_decode_attention_select} and the quantized attention's scores mode)
 * emulated on the host: the function is
 * pasted into {@code tests/resources/cuda/attention_keys_emulation.cpp}, compiled with g++ and run with one host thread
 * per lane, each lane given its scores where the MMA C fragment holds them (the mapping the kernel's softmax already
 * reads on a GPU); the keys must be the order keys of the group max or sum (in the reduce-scatter's order), 0 for an
 * invisible key, none at or past the end, on 1,000 random stages. Skipped where g++ is missing. (On a GPU,
 * {@code CudaTidalSelectParityTest.selectionFromTheLayersAttention} runs the kernel itself.)
 */
class AttentionKeysEmulationTest {
    @TempDir
    Path tmp;

    @Test
    void stageKeysMatchTheGroupScores() throws Exception {
        Assumptions.assumeTrue(HostEmulation.gppAvailable(), "g++ not found");
        String src = Files.readString(Path.of("cuda/sel_keys.cuh"));
        String fn = HostEmulation.function(src, "cuda/sel_keys.cuh", "__device__ __forceinline__ float ",
                "v3_sel_reduce", "static float ")
                + HostEmulation.function(src, "cuda/sel_keys.cuh", "__device__ __forceinline__ void ",
                "v3_sel_store", "static void ");
        HostEmulation.compileAndRun(tmp, "tests/resources/cuda/attention_keys_emulation.cpp", "/*KEYS*/", fn);
    }
}
