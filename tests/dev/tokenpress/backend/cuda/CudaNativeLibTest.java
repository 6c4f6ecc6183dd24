package dev.tokenpress.backend.cuda;

import dev.tokenpress.backend.DeviceUnavailableException;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

import java.nio.file.Files;
import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Runs everywhere: the native library is part of the build when nvcc exists, the availability probe answers
 * (false with a reason on a machine without a GPU), and the C ABI validates arguments before touching CUDA.
 */
class CudaNativeLibTest {

    private static boolean nvccPresent() {
        return Files.isExecutable(Path.of("/usr/local/cuda/bin/nvcc"));
    }

    private static boolean gpuDevicePresent() {
        return Files.exists(Path.of("/dev/nvidiactl")) || Files.exists(Path.of("/dev/nvidia0"));
    }

    @Test
    void nativeLibraryIsBuiltWhenNvccExists() {
        Assumptions.assumeTrue(nvccPresent() || Cuda.nativeLibraryPresent(), "no nvcc here: the native build was skipped");
        assertTrue(Cuda.nativeLibraryPresent(), "libjniTpNative.so missing from dev/tokenpress/backend/cuda/linux-x86_64");
        assertTrue(Cuda.nativeLibraryLoaded(), "the JNI library must load even without a GPU: " + Cuda.unavailableReason());
    }

    @Test
    void availabilityProbeGivesAReason() {
        boolean ok = Cuda.available();
        if (ok) {
            assertNull(Cuda.unavailableReason());
            assertTrue(Cuda.deviceCount() > 0);
        } else {
            String why = Cuda.unavailableReason();
            assertNotNull(why);
            assertFalse(why.isBlank());
            assertEquals(0, Cuda.deviceCount());
            assertThrows(DeviceUnavailableException.class, CudaBackend::open);
        }
        if (!gpuDevicePresent()) assertFalse(ok, "no /dev/nvidia* here, yet CUDA reports available");
        // a second probe gives the same answer without touching native code again
        assertEquals(ok, Cuda.available());
    }

    @Test
    void abiRejectsUnsupportedHeadDimAndNamesBadArguments() {
        Assumptions.assumeTrue(Cuda.nativeLibraryLoaded(), "native library not loaded: " + Cuda.unavailableReason());
        int rc = TpNative.tp_decode_attention(8, 8, 8, 8, 8, 0, 8, 2, 96, 16, 8, 0, 1, 0, 8, 16, 0.1f, 0, 0, 8, 1 << 20, 0);
        assertEquals(TpNative.TP_ERR_UNSUPPORTED_HEAD_DIM, rc);
        assertTrue(TpNative.tp_last_error_message().getString().contains("head_dim 96"));
        rc = TpNative.tp_prefill_attention(8, 8, 8, 8, 8, 0, 8, 2, 80, 16, 4, 8, 0, 1, 0, 8, 16, 0.1f, 0, 0, 0, 8, 1 << 20, 0);
        assertEquals(TpNative.TP_ERR_UNSUPPORTED_HEAD_DIM, rc);

        rc = TpNative.tp_rmsnorm(0, 8, 8, 1e-5f, 1, 64, 0);
        assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, rc);
        assertTrue(TpNative.tp_last_error_message().getString().contains("'out'"), TpNative.tp_last_error_message().getString());

        rc = TpNative.tp_decode_attention(8, 8, 8, 8, 8, 0, 12, 8, 64, 16, 8, 0, 1, 0, 8, 16, 0.1f, 0, 0, 8, 1 << 30, 0);
        assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, rc);
        assertTrue(TpNative.tp_last_error_message().getString().contains("num_heads"));

        rc = TpNative.tp_topk(8, 5000, 2000, 8, 8, 8, 1 << 30, 0);
        assertEquals(TpNative.TP_ERR_UNSUPPORTED, rc);
        rc = TpNative.tp_topk(8, 10, 11, 8, 8, 8, 1 << 30, 0);
        assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, rc);
        assertTrue(TpNative.tp_last_error_message().getString().contains("'k'"));
        assertTrue(TpNative.tp_decode_attention_workspace_bytes(32, 64) > 0);

        int q8 = TpNative.tp_q8_gemv_variant();
        if (System.getProperty("tokenpress.cuda.q8Gemv") == null && System.getenv("TOKENPRESS_CUDA_Q8_GEMV") == null)
            assertEquals(4, q8, "variant 4 (DP4A) is the default: the fastest on an H200");
        for (int v : new int[] {0, 5}) {
            assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, TpNative.tp_set_q8_gemv_variant(v));
            assertTrue(TpNative.tp_last_error_message().getString().contains("variant " + v));
        }
        assertEquals(0, TpNative.tp_set_q8_gemv_variant(3));
        assertEquals(3, TpNative.tp_q8_gemv_variant());
        assertEquals(0, TpNative.tp_set_q8_gemv_variant(4));
        assertEquals(4, TpNative.tp_q8_gemv_variant());
        assertEquals(0, TpNative.tp_set_q8_gemv_variant(q8));
    }

    /** The error message names the bad argument (arguments are checked before any device work). */
    static void refused(int rc, String argument) {
        assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, rc, argument);
        String msg = TpNative.tp_last_error_message().getString();
        assertTrue(msg.contains("'" + argument + "'"), "expected '" + argument + "' in: " + msg);
    }

    /**
     * The KV-policy ops over the quantized cache refuse bad arguments by name, with distinct values in every
     * position (a binding that passed two arguments in the wrong order would trip another check), and return
     * TP_OK without device work when there is nothing to do.
     */
    @Test
    void abiQuantPolicyOpsWithoutGpu() {
        Assumptions.assumeTrue(Cuda.nativeLibraryLoaded(), "native library not loaded: " + Cuda.unavailableReason());
        // q=16 pool=32 window=48 pos=64 loc=80, layer 1, 8 q-heads, 2 KV heads, hd 64, capacity 40, group 8, 4 bits,
        // res_cap 16, max_blocks 7
        refused(TpNative.tp_kvq_query_key_scores(96, 40, 16, 32, 48, 64, 80, 1, 8, 2, 64, 40, 8, 3, 16, 7, 5, 112, 40, 0), "bits");
        refused(TpNative.tp_kvq_query_key_scores(96, 41, 16, 32, 48, 64, 80, 1, 8, 2, 64, 40, 8, 4, 16, 7, 5, 112, 41, 0), "max_high_water");
        refused(TpNative.tp_kvq_query_key_scores(96, 39, 16, 32, 48, 64, 80, 1, 8, 2, 64, 40, 8, 4, 16, 7, 5, 112, 40, 0), "out_stride");
        refused(TpNative.tp_kvq_query_key_scores(96, 40, 16, 32, 48, 64, 80, 1, 8, 3, 64, 40, 8, 4, 16, 7, 5, 112, 40, 0), "num_heads");
        assertEquals(TpNative.TP_ERR_UNSUPPORTED_HEAD_DIM,
                TpNative.tp_kvq_query_key_scores(96, 40, 16, 32, 48, 64, 80, 1, 8, 2, 96, 40, 8, 4, 16, 7, 5, 112, 40, 0));
        assertEquals(TpNative.TP_OK, TpNative.tp_kvq_query_key_scores(96, 40, 16, 32, 48, 64, 80, 1, 8, 2, 64, 40, 8, 4, 16, 7, 5, 112, 0, 0));
        // selection: slots=128 counts=144 stride 9 cur=160 workspace=176 len 32 ... params=192 k 9
        refused(TpNative.tp_kvq_tidal_select(128, 144, 9, 160, 184, 32, 16, 32, 48, 64, 80, 1, 8, 2, 64, 40, 8, 4, 16, 7, 192, 9, 0, 0), "keys_ws");
        refused(TpNative.tp_kvq_tidal_select(128, 144, 9, 160, 176, 41, 16, 32, 48, 64, 80, 1, 8, 2, 64, 40, 8, 4, 16, 7, 192, 9, 0, 0), "len");
        refused(TpNative.tp_kvq_tidal_select(128, 144, 9, 160, 176, 32, 16, 32, 48, 64, 80, 1, 8, 2, 64, 40, 8, 4, 16, 7, 192, -1, 0, 0), "k");
        refused(TpNative.tp_kvq_tidal_select(128, 144, 9, 160, 176, 32, 16, 32, 48, 64, 80, 1, 8, 2, 64, 40, 8, 4, 16, 7, 192, 10, 0, 0), "out_stride");
        refused(TpNative.tp_kvq_tidal_select(128, 144, 9, 160, 176, 32, 16, 32, 48, 64, 80, 1, 8, 2, 64, 40, 8, 4, 16, 7, 0, 9, 0, 0), "params");
        // statistics: n 2, qpos=208, from_row 1, lse=224, no selection, hw=112, raw=240, prob=256
        refused(TpNative.tp_kvq_attention_stats(16, 32, 48, 64, 80, 1, 8, 2, 64, 40, 8, 4, 16, 7, 2, 208, 1, 0, 0, 1, 0, 112, 0.125f, 240, 256, 0), "lse2");
        refused(TpNative.tp_kvq_attention_stats(16, 32, 48, 64, 80, 1, 8, 2, 64, 40, 8, 4, 16, 7, 2, 208, 1, 224, 272, 1, 0, 112, 0.125f, 240, 256, 0), "sel_slots");
        refused(TpNative.tp_kvq_attention_stats(16, 32, 48, 64, 80, 1, 8, 2, 64, 40, 8, 4, 16, 7, 2, 0, 1, 224, 0, 1, 0, 112, 0.125f, 240, 256, 0), "query_pos");
        assertEquals(TpNative.TP_OK, TpNative.tp_kvq_attention_stats(16, 32, 48, 64, 80, 1, 8, 2, 64, 40, 8, 4, 16, 7, 2, 208, 1, 224, 0, 1, 0, 112, 0.125f, 0, 0, 0));
        assertEquals(TpNative.TP_OK, TpNative.tp_kvq_attention_stats(16, 32, 48, 64, 80, 1, 8, 2, 64, 40, 8, 4, 16, 7, 0, 208, 1, 224, 0, 1, 0, 112, 0.125f, 240, 256, 0));
        // quest: page 8 -> at most 5 pages of a 40-slot cache
        refused(TpNative.tp_kvq_quest_page_scores(96, 5, 16, 32, 48, 64, 80, 1, 8, 2, 64, 40, 8, 4, 16, 7, 5, 112, 0, 5, 0), "page_size");
        refused(TpNative.tp_kvq_quest_page_scores(96, 6, 16, 32, 48, 64, 80, 1, 8, 2, 64, 40, 8, 4, 16, 7, 5, 112, 8, 6, 0), "max_pages");
        refused(TpNative.tp_kvq_quest_page_scores(96, 4, 16, 32, 48, 64, 80, 1, 8, 2, 64, 40, 8, 4, 16, 7, 5, 112, 8, 5, 0), "out_stride");
        assertEquals(TpNative.TP_OK, TpNative.tp_kvq_quest_page_scores(96, 5, 16, 32, 48, 64, 80, 1, 8, 2, 64, 40, 8, 4, 16, 7, 5, 112, 8, 0, 0));
        // compaction: decode lanes into rows, encode blocks from rows (k=304 v=320 pool=32 plan=336)
        refused(TpNative.tp_kvq_decode_lanes(304, 320, 32, 336, -1, 1, 2, 64, 8, 4, 7, 0), "m");
        refused(TpNative.tp_kvq_decode_lanes(304, 320, 32, 336, 3, 1, 2, 64, 8, 5, 7, 0), "bits");
        refused(TpNative.tp_kvq_decode_lanes(304, 320, 32, 336, 3, 1, 2, 64, 8, 4, 0, 0), "max_blocks");
        assertEquals(TpNative.TP_OK, TpNative.tp_kvq_decode_lanes(304, 320, 32, 336, 0, 1, 2, 64, 8, 4, 7, 0));
        refused(TpNative.tp_kvq_encode_rows(32, 304, 320, 336, -1, 1, 2, 64, 8, 4, 7, 0), "num_blocks");
        refused(TpNative.tp_kvq_encode_rows(32, 304, 320, 336, 2, 1, 2, 64, 4097, 4, 7, 0), "group");
        refused(TpNative.tp_kvq_encode_rows(32, 304, 320, 0, 2, 1, 2, 64, 8, 4, 7, 0), "plan");
        assertEquals(TpNative.TP_OK, TpNative.tp_kvq_encode_rows(32, 304, 320, 336, 0, 1, 2, 64, 8, 4, 7, 0));
        // attention with its log-sum-exp: n checked, n = 0 nothing to do
        refused(TpNative.tp_kvq_attention_ex(96, 16, 32, 48, 288, 64, 80, 1, 8, 2, 64, 40, 8, 4, 16, 7, -1, 208, 0, 1, 0, 112, 40, 0.125f, 0, 0, 224, 0), "n");
        assertEquals(TpNative.TP_OK, TpNative.tp_kvq_attention_ex(96, 16, 32, 48, 288, 64, 80, 1, 8, 2, 64, 40, 8, 4, 16, 7, 0, 208, 0, 1, 0, 112, 40, 0.125f, 0, 0, 224, 0));
    }

    @Test
    void abiGemvFusedOpsAndCountersWithoutGpu() {
        Assumptions.assumeTrue(Cuda.nativeLibraryLoaded(), "native library not loaded: " + Cuda.unavailableReason());
        // GEMV: shapes it does not take are refused before any launch, so callers can fall back to cuBLAS
        assertEquals(TpNative.TP_ERR_UNSUPPORTED, TpNative.tp_gemv_bf16(16, 16, 16, 0, 1, 4, 12, 0));   // I % 8 != 0
        assertEquals(TpNative.TP_ERR_UNSUPPORTED, TpNative.tp_gemv_bf16(16, 16, 16, 0, 5, 4, 64, 0));   // n > 4
        assertEquals(TpNative.TP_ERR_UNSUPPORTED, TpNative.tp_gemv_bf16(16, 8, 16, 0, 1, 4, 64, 0));    // x unaligned
        assertEquals(TpNative.TP_ERR_UNSUPPORTED, TpNative.tp_gemv_bf16(16, 16, 24, 0, 1, 4, 64, 0));   // w unaligned
        assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, TpNative.tp_gemv_bf16(0, 16, 16, 0, 1, 4, 64, 0));
        assertTrue(TpNative.tp_last_error_message().getString().contains("'out'"));
        assertEquals(TpNative.TP_OK, TpNative.tp_gemv_bf16(16, 16, 16, 0, 0, 4, 64, 0));               // n = 0: nothing to do
        // fused add + RMSNorm refuses aliasing
        assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, TpNative.tp_add_rmsnorm(8, 8, 16, 24, 1e-5f, 1, 64, 0));
        assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, TpNative.tp_add_rmsnorm(8, 16, 16, 24, 1e-5f, 1, 64, 0));
        // split counters: one per (KV head, chunk of <= 8 q-heads)
        assertEquals(8, TpNative.tp_decode_attention_counters(32, 8));
        assertEquals(4, TpNative.tp_decode_attention_counters(32, 4));
        assertEquals(2, TpNative.tp_decode_attention_counters(16, 1));
        assertEquals(0, TpNative.tp_decode_attention_counters(12, 8));
        int rc = TpNative.tp_decode_attention_ex(8, 8, 8, 8, 8, 0, 8, 2, 64, 16, 8, 0, 1, 0, 8, 16, 0.1f, 0, 0, 16,
                1 << 30, 6, 0);
        assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, rc);
        assertTrue(TpNative.tp_last_error_message().getString().contains("counters"));
        // decode attention kernel variant: 2 (pipelined) in a fresh process (a CudaBackend opened earlier in this JVM
        // sets its own, 3), 1 and 3 selectable, anything else refused
        int v0 = TpNative.tp_get_attention_variant();
        assertTrue(v0 >= 1 && v0 <= 3, "attention variant " + v0);
        assertEquals(TpNative.TP_OK, TpNative.tp_set_attention_variant(3));
        assertEquals(3, TpNative.tp_get_attention_variant());
        assertEquals(TpNative.TP_OK, TpNative.tp_set_attention_variant(1));
        assertEquals(1, TpNative.tp_get_attention_variant());
        assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, TpNative.tp_set_attention_variant(4));
        assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, TpNative.tp_set_attention_variant(0));
        assertTrue(TpNative.tp_last_error_message().getString().contains("variant"));
        assertEquals(TpNative.TP_OK, TpNative.tp_set_attention_variant(2));
        assertEquals(2, TpNative.tp_get_attention_variant());
        assertEquals(TpNative.TP_OK, TpNative.tp_set_attention_variant(v0));
        // forced GEMV warps per row (tuning sweeps): 0 (automatic), 1, 2, 4, 8; anything else refused
        assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, TpNative.tp_gemv_set_wpr(3));
        assertTrue(TpNative.tp_last_error_message().getString().contains("warps_per_row"));
        assertEquals(TpNative.TP_OK, TpNative.tp_gemv_set_wpr(4));
        assertEquals(TpNative.TP_OK, TpNative.tp_gemv_set_wpr(0));
        // GEMV L2 prefetch limit in MiB: 0 .. 65536
        int pf = TpNative.tp_gemv_get_prefetch();
        try {
            assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, TpNative.tp_gemv_set_prefetch(-1));
            assertTrue(TpNative.tp_last_error_message().getString().contains("max_mib"));
            assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, TpNative.tp_gemv_set_prefetch(65537));
            assertEquals(TpNative.TP_OK, TpNative.tp_gemv_set_prefetch(16));
            assertEquals(16, TpNative.tp_gemv_get_prefetch());
        } finally {
            TpNative.tp_gemv_set_prefetch(pf);
        }
    }

    @Test
    void abiAttentionTuningSwitchesWithoutGpu() {
        Assumptions.assumeTrue(Cuda.nativeLibraryLoaded(), "native library not loaded: " + Cuda.unavailableReason());
        try {
            assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, TpNative.tp_set_attention_splits(-1));
            assertTrue(TpNative.tp_last_error_message().getString().contains("splits"));
            assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, TpNative.tp_set_attention_splits(257));
            assertEquals(TpNative.TP_OK, TpNative.tp_set_attention_splits(256));
            assertEquals(TpNative.TP_OK, TpNative.tp_set_attention_splits(0));
            assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, TpNative.tp_set_attention_deep_pipeline(2));
            assertTrue(TpNative.tp_last_error_message().getString().contains("enabled"));
            assertEquals(TpNative.TP_OK, TpNative.tp_set_attention_deep_pipeline(1));
            int prefetch = TpNative.tp_get_attention_prefetch();
            try {
                assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, TpNative.tp_set_attention_prefetch(-1));
                assertTrue(TpNative.tp_last_error_message().getString().contains("rows"));
                assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, TpNative.tp_set_attention_prefetch(65537));
                assertEquals(TpNative.TP_OK, TpNative.tp_set_attention_prefetch(256));
                assertEquals(256, TpNative.tp_get_attention_prefetch());
            } finally {
                TpNative.tp_set_attention_prefetch(prefetch);
            }
        } finally {
            TpNative.tp_set_attention_splits(0);
            TpNative.tp_set_attention_deep_pipeline(0);
        }
    }

    /**
     * The chunked cuBLAS CCE's kernels (and the stream wait of its overlapped folds) refuse bad arguments by name
     * before launching anything (which checks the Java bindings' argument order), and its Java side sizes its
     * workspace and refuses a short one without a device.
     */
    @Test
    void abiCceGemmChunksWithoutGpu() {
        Assumptions.assumeTrue(Cuda.nativeLibraryLoaded(), "native library not loaded: " + Cuda.unavailableReason());
        String[][] cases = {
                {"" + TpNative.tp_lse_chunk(0, 0, 256, 0, 4, 8, 8, 0, 1, 0), "'state'"},
                {"" + TpNative.tp_lse_chunk(512, 0, 260, 0, 4, 8, 8, 0, 1, 0), "'logits'"},
                {"" + TpNative.tp_lse_chunk(512, 0, 256, 0, -1, 8, 8, 0, 1, 0), "'rows'"},
                {"" + TpNative.tp_lse_chunk(512, 0, 256, 0, 4, 0, 8, 0, 1, 0), "'cols'"},
                {"" + TpNative.tp_lse_chunk(512, 0, 256, 0, 4, 8, 6, 0, 1, 0), "'ld'"},
                {"" + TpNative.tp_lse_chunk(512, 0, 256, 0, 4, 8, 10, 0, 1, 0), "'ld'"},
                {"" + TpNative.tp_lse_chunk(512, 0, 256, 0, 4, 8, 8, -4, 1, 0), "'v0'"},
                {"" + TpNative.tp_lse_chunk(512, 0, 256, 0, 4, 8, 8, 0, 2, 0), "'first'"},
                {"" + TpNative.tp_lse_chunk_finish(0, 0, 256, 0, 4, 10, 0), "'lse'"},
                {"" + TpNative.tp_lse_chunk_finish(512, 0, 0, 0, 4, 10, 0), "'state'"},
                {"" + TpNative.tp_lse_chunk_finish(512, 0, 256, 0, -2, 10, 0), "'rows'"},
                {"" + TpNative.tp_lse_chunk_finish(512, 0, 256, 0, 4, 0, 0), "'vocab'"},
                {"" + TpNative.tp_f32_split_bf16(0, 256, 512, 8, 0), "'hi'"},
                {"" + TpNative.tp_f32_split_bf16(256, 0, 512, 8, 0), "'lo'"},
                {"" + TpNative.tp_f32_split_bf16(256, 512, 0, 8, 0), "'src'"},
                {"" + TpNative.tp_f32_split_bf16(256, 512, 768, -1, 0), "'count'"}};
        for (String[] c : cases)
            assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, Integer.parseInt(c[0]), c[1]);
        // the last message names the last refused argument
        assertTrue(TpNative.tp_last_error_message().getString().contains("tp_f32_split_bf16"),
                TpNative.tp_last_error_message().getString());
        // nothing to do is not an error (and launches nothing)
        assertEquals(TpNative.TP_OK, TpNative.tp_lse_chunk(512, 0, 256, 0, 0, 8, 8, 0, 1, 0));
        assertEquals(TpNative.TP_OK, TpNative.tp_lse_chunk_finish(512, 0, 256, 0, 0, 10, 0));
        assertEquals(TpNative.TP_OK, TpNative.tp_f32_split_bf16(256, 512, 768, 0, 0));
        // the overlapped folds' stream ordering call
        refused(TpNative.tp_stream_wait_event(0, 0), "event");

        // Java side: bf16 h (twice when precise) + the chunk + (max, sum) per row, each padded to 256 bytes
        long fast = CudaCce.gemmWorkspaceBytes(100, 64, false, 32, 1001);
        assertEquals(12800 + 32L * 1004 * 4 + 1024, fast);
        assertEquals(fast + 12800, CudaCce.gemmWorkspaceBytes(100, 64, true, 32, 1001));
        assertEquals(12800 + 3328 + 1024, CudaCce.gemmWorkspaceBytes(100, 64, false, 4096, 8), "chunk rows <= n");
        assertEquals(0, CudaCce.gemmWorkspaceBytes(0, 64, true, 32, 32));
        assertThrows(IllegalArgumentException.class, () -> CudaCce.computeGemm(null, 256, 0, 512, 768, 0, 100, 1000,
                64, false, 1024, fast - 1, 32, 1001));
        assertThrows(IllegalArgumentException.class, () -> CudaCce.computeGemm(null, 0, 0, 512, 768, 0, 100, 1000,
                64, false, 1024, fast, 32, 1001));
        assertThrows(IllegalArgumentException.class, () -> CudaCce.computeGemm(null, 256, 0, 512, 768, 0, 100, 1000,
                64, false, 1024, fast, 0, 1001));
        int v0 = CudaCce.variant(), native0 = TpNative.tp_cce_get_variant();
        try {
            CudaCce.setVariant(2);
            assertEquals(2, CudaCce.variant());
            CudaCce.setVariant(CudaCce.GEMM);
            assertEquals(CudaCce.GEMM, CudaCce.variant());
            assertEquals(CudaCce.gemmWorkspaceBytes(100, 64, true, CudaCce.GEMM_ROWS, CudaCce.GEMM_COLS),
                    CudaCce.workspaceBytes(100, 64));
            assertEquals(2, TpNative.tp_cce_get_variant(), "the native setting is left as it was");
        } finally {
            CudaCce.setVariant(native0);
            CudaCce.setVariant(v0);
        }
        assertEquals(v0, CudaCce.variant());
    }

    /** TidalDecode's fused selection layer: bad arguments are refused by name before any device work. */
    @Test
    void abiAttentionSelectWithoutGpu() {
        Assumptions.assumeTrue(Cuda.nativeLibraryLoaded(), "native library not loaded: " + Cuda.unavailableReason());
        int before = TpNative.tp_get_attention_variant();
        try {
            for (int variant : new int[] {2, 3}) { // 3: the fused path (keys from the attention kernel), 2: two calls
                assertEquals(TpNative.TP_OK, TpNative.tp_set_attention_variant(variant));
                long ws = TpNative.tp_decode_attention_workspace_bytes(8, 64);
                // out 1024, q 2048, caches 4096 / 8192, positions 12288, workspace 1 << 20, slots 32768, counts 36864,
                // cur 40960, keys 49152, params 65536; 8 q-heads over 2 KV heads of 64, capacity 64, k 8
                refused(attentionSelect(2048, 64, 64, 0, 36864, 16, 40960, 49152, 64, 65536, 8, 0, ws), "out_slots");
                refused(attentionSelect(2048, 64, 64, 32768, 0, 16, 40960, 49152, 64, 65536, 8, 0, ws), "out_counts");
                refused(attentionSelect(2048, 64, 64, 32768, 36864, 16, 0, 49152, 64, 65536, 8, 0, ws), "cur_slot");
                refused(attentionSelect(2048, 64, 64, 32768, 36864, 16, 40960, 49160, 64, 65536, 8, 0, ws), "keys_ws");
                refused(attentionSelect(2048, 64, 64, 32768, 36864, 16, 40960, 49152, 64, 0, 8, 0, ws), "params");
                refused(attentionSelect(2048, 64, 64, 32768, 36864, 16, 40960, 49152, 65, 65536, 8, 0, ws), "len");
                refused(attentionSelect(2048, 64, 64, 32768, 36864, 16, 40960, 49152, 0, 65536, 8, 0, ws), "len");
                refused(attentionSelect(2048, 64, 64, 32768, 36864, 16, 40960, 49152, 64, 65536, -1, 0, ws), "k");
                refused(attentionSelect(2048, 64, 64, 32768, 36864, 4, 40960, 49152, 64, 65536, 8, 0, ws), "out_stride");
                refused(attentionSelect(2048, 64, 64, 32768, 36864, 16, 40960, 49152, 64, 65536, 8, 2, ws), "sum_group");
                // the attention's own checks
                refused(attentionSelect(0, 64, 64, 32768, 36864, 16, 40960, 49152, 64, 65536, 8, 0, ws), "q");
                refused(attentionSelect(2048, 64, 64, 32768, 36864, 16, 40960, 49152, 64, 65536, 8, 0, ws - 1), "workspace");
                assertEquals(TpNative.TP_ERR_UNSUPPORTED_HEAD_DIM,
                        attentionSelect(2048, 96, 64, 32768, 36864, 16, 40960, 49152, 64, 65536, 8, 0, ws), "head_dim 96");
                // the selection on a second stream: its stream and events checked before anything runs
                refused(attentionSelectSide(ws, 0x10, 0x10, 0x20, 0x30), "side_stream");
                refused(attentionSelectSide(ws, 0x10, 0x40, 0, 0x30), "fork_event");
                refused(attentionSelectSide(ws, 0x10, 0x40, 0x20, 0), "join_event");
                refused(attentionSelectSide(ws, 0x10, 0x40, 0x20, 0x20), "join_event");
            }
        } finally {
            TpNative.tp_set_attention_variant(before);
        }
    }

    /** The quantized attention's split setting: refused out of range, and the workspace a call needs follows it. */
    @Test
    void kvqSplitsWithoutGpu() {
        Assumptions.assumeTrue(Cuda.nativeLibraryLoaded(), "native library not loaded: " + Cuda.unavailableReason());
        int max = TpNative.tp_kvq_max_splits(), rows = TpNative.tp_kvq_rows_per_split();
        assertEquals(64, max, "default max splits");
        assertEquals(128, rows, "default rows per split");
        try {
            // 32 q-heads of 64 at 32K: 64 splits of (64 + 2) floats per head
            assertEquals(32L * 64 * 66 * 4, TpNative.tp_kvq_attention_workspace_bytes(1, 32, 64, 32768));
            refused(TpNative.tp_kvq_set_splits(0, 128), "max_splits");
            refused(TpNative.tp_kvq_set_splits(1025, 128), "max_splits");
            refused(TpNative.tp_kvq_set_splits(64, 48), "rows_per_split");
            refused(TpNative.tp_kvq_set_splits(64, 0), "rows_per_split");
            assertEquals(64, TpNative.tp_kvq_max_splits(), "a refused setting changes nothing");
            assertEquals(TpNative.TP_OK, TpNative.tp_kvq_set_splits(256, 64));
            assertEquals(32L * 256 * 66 * 4, TpNative.tp_kvq_attention_workspace_bytes(1, 32, 64, 32768));
            assertEquals(32L * 128 * 66 * 4, TpNative.tp_kvq_attention_workspace_bytes(1, 32, 64, 8192)); // 8192 / 64
            assertEquals(0L, TpNative.tp_kvq_attention_workspace_bytes(1, 32, 64, 64), "one split: no workspace");
            assertEquals(0L, TpNative.tp_kvq_attention_workspace_bytes(4, 32, 64, 32768), "n > 1: one split");
        } finally {
            TpNative.tp_kvq_set_splits(max, rows);
        }
    }

    /** Quest's device page selection: bad arguments refused by name before any device work; its workspace size. */
    @Test
    void abiQuestSelectWithoutGpu() {
        Assumptions.assumeTrue(Cuda.nativeLibraryLoaded(), "native library not loaded: " + Cuda.unavailableReason());
        // bounds 8 heads x 64 pages (2048 B) | page lists 2 x 4 (32 B) | counts 2 (8 -> 16 B)
        assertEquals(2048L + 32 + 16, TpNative.tp_quest_select_workspace_bytes(8, 2, 64, 4));
        assertEquals(0L, TpNative.tp_quest_select_workspace_bytes(8, 2, 0, 4));
        // slots 1024, counts 2048, cur 3072, keys 4096, quest ws 8192, q 12288, caches 16384 / 20480, params 24576;
        // 8 q-heads over 2 KV heads of 64, capacity 1024, pages of 16 (64 pages), len 64, 4 pages kept (stride 64)
        refused(quest(0, 4096, 8192, 64, 64, 16, 4, 0), "out_slots");
        refused(quest(1024, 4100, 8192, 64, 64, 16, 4, 0), "keys_ws");
        refused(quest(1024, 4096, 0, 64, 64, 16, 4, 0), "quest_ws");
        refused(quest(1024, 4096, 8192, 64, 65, 16, 4, 0), "len");
        refused(quest(1024, 4096, 8192, 64, 0, 16, 4, 0), "len");
        refused(quest(1024, 4096, 8192, 64, 64, 0, 4, 0), "page_size");
        refused(quest(1024, 4096, 8192, 64, 64, 16, 0, 0), "k_pages");
        refused(quest(1024, 4096, 8192, 63, 64, 16, 4, 0), "out_stride");
        refused(quest(1024, 4096, 8192, 64, 64, 16, 4, 2), "sum_group");
    }

    /** TokenSelect's device vote: bad arguments refused by name before any device work; its workspace size. */
    @Test
    void abiTokenSelectWithoutGpu() {
        Assumptions.assumeTrue(Cuda.nativeLibraryLoaded(), "native library not loaded: " + Cuda.unavailableReason());
        // raw 8 heads x 64 (2048 B) | stats 8 x 16 (128 B) | top 4 (16 B) | count (16 B)
        assertEquals(2048L + 128 + 16 + 16, TpNative.tp_tokenselect_workspace_bytes(8, 64, 4));
        assertEquals(0L, TpNative.tp_tokenselect_workspace_bytes(8, 0, 4));
        // slots 1024, counts 2048, cur 3072, keys 4096, ws 8192, q 12288, caches 16384 / 20480, params 24576;
        // 8 q-heads over 2 KV heads of 64, capacity 128, len 64, k 4, init 2, local 3 (stride 9)
        refused(tokenSelect(0, 4096, 8192, 9, 64, 4, 2, 3), "out_slots");
        refused(tokenSelect(1024, 4100, 8192, 9, 64, 4, 2, 3), "keys_ws");
        refused(tokenSelect(1024, 4096, 0, 9, 64, 4, 2, 3), "ts_ws");
        refused(tokenSelect(1024, 4096, 8192, 9, 129, 4, 2, 3), "len");
        refused(tokenSelect(1024, 4096, 8192, 9, 64, 0, 2, 3), "k");
        refused(tokenSelect(1024, 4096, 8192, 9, 64, 4, -1, 3), "init/local");
        refused(tokenSelect(1024, 4096, 8192, 8, 64, 4, 2, 3), "out_stride");
    }

    private static int tokenSelect(long slots, long keys, long ws, int stride, int len, int k, int init, int local) {
        return TpNative.tp_tokenselect_select(slots, 2048, stride, 3072, keys, ws, len, 12288, 16384, 20480, 0, 8, 2, 64, 128,
                24576, k, init, local, 0);
    }

    private static int quest(long slots, long keys, long ws, int stride, int len, int page, int kPages, int sum) {
        return TpNative.tp_quest_select(slots, 2048, stride, 3072, keys, ws, len, 12288, 16384, 20480, 0, 8, 2, 64, 1024,
                24576, page, kPages, sum, 0);
    }

    private static int attentionSelectSide(long wsBytes, long stream, long side, long fork, long join) {
        return TpNative.tp_decode_attention_select_side(1024, 2048, 4096, 8192, 12288, 0, 8, 2, 64, 64, 64, 0.125f, 1 << 20,
                wsBytes, 0, -1, 32768, 36864, 16, 40960, 49152, 64, 65536, 8, 0, stream, side, fork, join);
    }

    /** The selection's histogram pass setting: refused off its grid, 0 restores the default. */
    @Test
    void histRowsWithoutGpu() {
        Assumptions.assumeTrue(Cuda.nativeLibraryLoaded(), "native library not loaded: " + Cuda.unavailableReason());
        try {
            refused(TpNative.tp_tidal_select_set_hist_rows(-128), "rows_per_block");
            refused(TpNative.tp_tidal_select_set_hist_rows(64), "rows_per_block");
            refused(TpNative.tp_tidal_select_set_hist_rows(200), "rows_per_block");
            refused(TpNative.tp_tidal_select_set_hist_rows(65536 + 128), "rows_per_block");
            assertEquals(TpNative.TP_OK, TpNative.tp_tidal_select_set_hist_rows(128));
            assertEquals(TpNative.TP_OK, TpNative.tp_tidal_select_set_hist_rows(65536));
            refused(TpNative.tp_tidal_select_set_collect_batch(2), "on");
            refused(TpNative.tp_tidal_select_set_collect_batch(-1), "on");
            assertEquals(TpNative.TP_OK, TpNative.tp_tidal_select_set_collect_batch(1));
        } finally {
            assertEquals(TpNative.TP_OK, TpNative.tp_tidal_select_set_hist_rows(0));
            assertEquals(TpNative.TP_OK, TpNative.tp_tidal_select_set_collect_batch(0));
        }
    }

    /** The quantized attention's kernel setting: variants 1 to 4, anything else refused. */
    @Test
    void quantAttentionVariantWithoutGpu() {
        Assumptions.assumeTrue(Cuda.nativeLibraryLoaded(), "native library not loaded: " + Cuda.unavailableReason());
        int before = TpNative.tp_kvq_attention_variant();
        try {
            refused(TpNative.tp_kvq_set_attention_variant(0), "variant");
            refused(TpNative.tp_kvq_set_attention_variant(5), "variant");
            for (int v = 1; v <= 4; v++) {
                assertEquals(TpNative.TP_OK, TpNative.tp_kvq_set_attention_variant(v));
                assertEquals(v, TpNative.tp_kvq_attention_variant());
            }
            // tp_kvq_attention_ex2 (split counters) checks its arguments as tp_kvq_attention_ex does, and n = 0 is a no-op
            refused(TpNative.tp_kvq_attention_ex2(0, 32, 48, 64, 80, 96, 112, 0, 8, 2, 64, 40, 32, 4, 16, 7, 1, 208, 0, 1, 0,
                    224, 40, 0.125f, 240, 1 << 20, 0, 256, 0), "out");
            refused(TpNative.tp_kvq_attention_ex2(16, 32, 48, 64, 80, 96, 112, 0, 8, 2, 64, 40, 32, 3, 16, 7, 1, 208, 0, 1, 0,
                    224, 40, 0.125f, 240, 1 << 20, 0, 256, 0), "bits");
            assertEquals(TpNative.TP_OK, TpNative.tp_kvq_attention_ex2(16, 32, 48, 64, 80, 96, 112, 0, 8, 2, 64, 40, 32, 4, 16,
                    7, 0, 208, 0, 1, 0, 224, 40, 0.125f, 240, 1 << 20, 0, 256, 0));
        } finally {
            assertEquals(TpNative.TP_OK, TpNative.tp_kvq_set_attention_variant(before));
        }
    }

    private static int attentionSelect(long q, int hd, int capacity, long slots, long counts, int stride, long cur, long keys,
                                       int len, long params, int k, int sum, long wsBytes) {
        return TpNative.tp_decode_attention_select(1024, q, 4096, 8192, 12288, 0, 8, 2, hd, capacity, 64, 0.125f, 1 << 20,
                wsBytes, 0, -1, slots, counts, stride, cur, keys, len, params, k, sum, 0);
    }

    @Test
    void abiCceVariantAndWorkspaceWithoutGpu() {
        Assumptions.assumeTrue(Cuda.nativeLibraryLoaded(), "native library not loaded: " + Cuda.unavailableReason());
        int v0 = TpNative.tp_cce_get_variant();
        try {
            assertEquals(2, v0, "variant 2 is the default");
            assertEquals(TpNative.TP_OK, TpNative.tp_cce_set_variant(1));
            assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, TpNative.tp_cce_set_variant(0));
            assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, TpNative.tp_cce_set_variant(5));
            assertTrue(TpNative.tp_last_error_message().getString().contains("variant"));
            long w1 = TpNative.tp_cce_lse_workspace_bytes(100);
            assertEquals(w1, TpNative.tp_cce_lse_workspace_bytes_for(100, 64, 1));
            assertEquals(w1, TpNative.tp_cce_lse_workspace_bytes_for(100, 64, 0));  // the variant set now: 1
            assertEquals(w1 + 2L * 100 * 64, TpNative.tp_cce_lse_workspace_bytes_for(100, 64, 2));
            assertEquals(0, TpNative.tp_cce_lse_workspace_bytes_for(0, 64, 2));
            assertEquals(w1 + 2L * 100 * 64, TpNative.tp_cce_lse_workspace_bytes_for(100, 64, 3));
            assertEquals(w1 + 2L * 100 * 64, TpNative.tp_cce_lse_workspace_bytes_for(100, 64, 4));
            assertEquals(TpNative.TP_OK, TpNative.tp_cce_set_variant(2));
            assertEquals(2, TpNative.tp_cce_get_variant());
            assertEquals(w1 + 2L * 100 * 64, TpNative.tp_cce_lse_workspace_bytes_for(100, 64, 0));
            // variant 2 (bf16 h) with a variant-1 workspace is refused before anything is launched
            int rc = TpNative.tp_cce_lse(16, 0, 32, 48, 0, 100, 1000, 64, 0, 64, w1, 0);
            assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, rc);
            assertTrue(TpNative.tp_last_error_message().getString().contains("variant 2"),
                    TpNative.tp_last_error_message().getString());
            // its other checks are variant 1's
            assertEquals(TpNative.TP_ERR_UNSUPPORTED, TpNative.tp_cce_lse(16, 0, 32, 48, 0, 100, 1000, 60, 0, 64,
                    w1 + 2L * 100 * 64, 0));
        } finally {
            TpNative.tp_cce_set_variant(v0);
        }
    }

    @Test
    void pdlSwitchWithoutGpu() {
        Assumptions.assumeTrue(Cuda.nativeLibraryLoaded(), "native library not loaded: " + Cuda.unavailableReason());
        Assumptions.assumeFalse(Cuda.available(), "a GPU is present: the GPU tests cover PDL");
        assertEquals(0, TpNative.tp_pdl_supported());
        assertEquals(0, TpNative.tp_pdl_enabled());
        assertEquals(TpNative.TP_ERR_UNSUPPORTED, TpNative.tp_set_pdl(1));  // refused, stays off
        assertTrue(TpNative.tp_last_error_message().getString().contains("sm_90"), TpNative.tp_last_error_message().getString());
        assertEquals(0, TpNative.tp_pdl_enabled());
        assertEquals(TpNative.TP_OK, TpNative.tp_set_pdl(0));
        // with PDL off, launchers still validate arguments before any launch
        assertEquals(TpNative.TP_ERR_BAD_ARGUMENT, TpNative.tp_rmsnorm(0, 8, 8, 1e-5f, 1, 64, 0));
    }
}
