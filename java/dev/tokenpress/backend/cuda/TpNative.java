package dev.tokenpress.backend.cuda;

import org.bytedeco.javacpp.BytePointer;
import org.bytedeco.javacpp.Loader;
import org.bytedeco.javacpp.annotation.Cast;
import org.bytedeco.javacpp.annotation.Platform;

/**
 * JavaCPP binding of cuda/include/tokenpress.h. It only converts types: device and pinned-host addresses and
 * streams are {@code long}s passed as uint64_t; every function returns the C status code (0 = ok, see
 * {@link #TP_ERR_BAD_ARGUMENT} …). The native library {@code libjniTpNative.so} embeds the kernels (static
 * lib built by native-build/build-kernels.sh) and a static CUDA runtime, so it loads on machines without CUDA
 * and reports "no driver" through {@link #tp_device_count}. Do not touch this class directly: go through
 * {@link Cuda#available()} first, which loads it once and remembers a failure.
 */
@Platform(value = "linux-x86_64", include = "tokenpress.h",
        link = {"dl#", "rt#", "pthread#", "cudart_static#", "tokenpress_kernels#"})
public final class TpNative {
    static {
        Loader.load();
    }

    private TpNative() {}

    public static final int TP_OK = 0;
    public static final int TP_ERR_BAD_ARGUMENT = 1;
    public static final int TP_ERR_UNSUPPORTED_HEAD_DIM = 2;
    public static final int TP_ERR_CUDA = 3;
    public static final int TP_ERR_OUT_OF_MEMORY = 4;
    public static final int TP_ERR_UNSUPPORTED = 5;

    public static native @Cast("const char*") BytePointer tp_last_error_message();

    public static native int tp_last_cuda_error();

    public static native int tp_version();

    // ---- device, memory, streams, events, graphs ----------------------------------------------------------

    /** 1 when the current device can use Programmatic Dependent Launch (sm_90+, CUDA >= 12.3), else 0. */
    public static native int tp_pdl_supported();

    /** Process-wide PDL switch for the kernels of norm_rope_act.cu, gemv.cu, topk_select.cu (default off). */
    public static native int tp_set_pdl(int enabled);

    public static native int tp_pdl_enabled();

    public static native int tp_device_count(int[] count);

    public static native int tp_set_device(int device);

    public static native int tp_device_props(int device, int[] props);

    public static native int tp_device_name(int device, @Cast("char*") byte[] buf, int len);

    public static native int tp_versions(int[] driver, int[] runtime);

    public static native int tp_mem_get_info(@Cast("uint64_t*") long[] freeBytes, @Cast("uint64_t*") long[] totalBytes);

    public static native int tp_malloc(@Cast("uint64_t*") long[] ptr, @Cast("uint64_t") long bytes);

    public static native int tp_free(@Cast("uint64_t") long ptr);

    public static native int tp_malloc_host(@Cast("uint64_t*") long[] ptr, @Cast("uint64_t") long bytes);

    public static native int tp_free_host(@Cast("uint64_t") long ptr);

    public static native int tp_memset_async(@Cast("uint64_t") long dst, int byteValue, @Cast("uint64_t") long bytes,
                                             @Cast("uint64_t") long stream);

    public static native int tp_memcpy_async(@Cast("uint64_t") long dst, @Cast("uint64_t") long src,
                                             @Cast("uint64_t") long bytes, @Cast("uint64_t") long stream);

    public static native int tp_memcpy_2d_async(@Cast("uint64_t") long dst, @Cast("uint64_t") long dstPitch,
                                                @Cast("uint64_t") long src, @Cast("uint64_t") long srcPitch,
                                                @Cast("uint64_t") long width, @Cast("uint64_t") long height,
                                                @Cast("uint64_t") long stream);

    public static native int tp_memcpy_h2d(@Cast("uint64_t") long dst, @Cast("const void*") float[] src,
                                           @Cast("uint64_t") long bytes, @Cast("uint64_t") long stream);

    public static native int tp_memcpy_h2d(@Cast("uint64_t") long dst, @Cast("const void*") int[] src,
                                           @Cast("uint64_t") long bytes, @Cast("uint64_t") long stream);

    public static native int tp_memcpy_h2d(@Cast("uint64_t") long dst, @Cast("const void*") short[] src,
                                           @Cast("uint64_t") long bytes, @Cast("uint64_t") long stream);

    public static native int tp_memcpy_h2d(@Cast("uint64_t") long dst, @Cast("const void*") byte[] src,
                                           @Cast("uint64_t") long bytes, @Cast("uint64_t") long stream);

    public static native int tp_memcpy_d2h(@Cast("void*") float[] dst, @Cast("uint64_t") long src,
                                           @Cast("uint64_t") long bytes, @Cast("uint64_t") long stream);

    public static native int tp_memcpy_d2h(@Cast("void*") int[] dst, @Cast("uint64_t") long src,
                                           @Cast("uint64_t") long bytes, @Cast("uint64_t") long stream);

    public static native int tp_memcpy_d2h(@Cast("void*") short[] dst, @Cast("uint64_t") long src,
                                           @Cast("uint64_t") long bytes, @Cast("uint64_t") long stream);

    public static native int tp_stream_create(@Cast("uint64_t*") long[] stream);

    public static native int tp_stream_destroy(@Cast("uint64_t") long stream);

    public static native int tp_stream_synchronize(@Cast("uint64_t") long stream);

    public static native int tp_device_synchronize();

    public static native int tp_event_create(@Cast("uint64_t*") long[] event);

    /** An event for ordering only (no timing). */
    public static native int tp_event_create_sync(@Cast("uint64_t*") long[] event);

    public static native int tp_event_destroy(@Cast("uint64_t") long event);

    public static native int tp_event_record(@Cast("uint64_t") long event, @Cast("uint64_t") long stream);

    public static native int tp_event_synchronize(@Cast("uint64_t") long event);

    public static native int tp_stream_wait_event(@Cast("uint64_t") long stream, @Cast("uint64_t") long event);

    public static native int tp_event_elapsed_ms(float[] ms, @Cast("uint64_t") long start, @Cast("uint64_t") long end);

    public static native int tp_graph_begin_capture(@Cast("uint64_t") long stream);

    public static native int tp_graph_end_capture(@Cast("uint64_t") long stream, @Cast("uint64_t*") long[] graphExec);

    public static native int tp_graph_launch(@Cast("uint64_t") long graphExec, @Cast("uint64_t") long stream);

    public static native int tp_graph_destroy(@Cast("uint64_t") long graphExec);

    // ---- fused small ops ----------------------------------------------------------------------------------

    public static native int tp_embedding(@Cast("uint64_t") long out, @Cast("uint64_t") long table,
                                          @Cast("uint64_t") long tokens, int n, int dim, int vocab,
                                          @Cast("uint64_t") long stream);

    public static native int tp_rmsnorm(@Cast("uint64_t") long out, @Cast("uint64_t") long x, @Cast("uint64_t") long w,
                                        float eps, int n, int dim, @Cast("uint64_t") long stream);

    public static native int tp_rope(@Cast("uint64_t") long x, int n, int heads, int headDim,
                                     @Cast("uint64_t") long positions, @Cast("uint64_t") long invFreq, float scale,
                                     @Cast("uint64_t") long stream);

    public static native int tp_swiglu(@Cast("uint64_t") long out, @Cast("uint64_t") long gate,
                                       @Cast("uint64_t") long up, @Cast("int64_t") long count,
                                       @Cast("uint64_t") long stream);

    public static native int tp_add(@Cast("uint64_t") long x, @Cast("uint64_t") long y, @Cast("int64_t") long count,
                                    @Cast("uint64_t") long stream);

    public static native int tp_add_bias(@Cast("uint64_t") long out, @Cast("uint64_t") long bias, int n, int cols,
                                         @Cast("uint64_t") long stream);

    public static native int tp_f32_to_bf16(@Cast("uint64_t") long dst, @Cast("uint64_t") long src,
                                            @Cast("int64_t") long count, @Cast("uint64_t") long stream);

    public static native int tp_bf16_to_f32(@Cast("uint64_t") long dst, @Cast("uint64_t") long src,
                                            @Cast("int64_t") long count, @Cast("uint64_t") long stream);

    public static native int tp_fill_f32(@Cast("uint64_t") long dst, float value, @Cast("int64_t") long count,
                                         @Cast("uint64_t") long stream);

    public static native int tp_scatter_i32(@Cast("uint64_t") long dst, @Cast("uint64_t") long idx,
                                            @Cast("uint64_t") long vals, int count, @Cast("uint64_t") long stream);

    public static native int tp_store_kv(@Cast("uint64_t") long keyCache, @Cast("uint64_t") long valueCache,
                                         @Cast("uint64_t") long posCache, @Cast("uint64_t") long k,
                                         @Cast("uint64_t") long v, @Cast("uint64_t") long slots,
                                         @Cast("uint64_t") long tokenPos, int layer, int kvHeads, int headDim,
                                         int capacity, int n, @Cast("uint64_t") long stream);

    public static native int tp_rope_store_kv(@Cast("uint64_t") long q, int heads, @Cast("uint64_t") long k,
                                              @Cast("uint64_t") long v, @Cast("uint64_t") long positions,
                                              @Cast("uint64_t") long invFreq, float scale, @Cast("uint64_t") long keyCache,
                                              @Cast("uint64_t") long valueCache, @Cast("uint64_t") long posCache,
                                              @Cast("uint64_t") long slots, @Cast("uint64_t") long tokenPos,
                                              int layer, int kvHeads, int headDim, int capacity, int n,
                                              @Cast("uint64_t") long stream);

    public static native int tp_add_rmsnorm(@Cast("uint64_t") long out, @Cast("uint64_t") long x,
                                            @Cast("uint64_t") long y, @Cast("uint64_t") long w, float eps, int n,
                                            int dim, @Cast("uint64_t") long stream);

    // ---- decode GEMV --------------------------------------------------------------------------------------

    public static native int tp_gemv_q8(@Cast("uint64_t") long out, @Cast("uint64_t") long x,
                                        @Cast("uint64_t") long w, @Cast("uint64_t") long scales,
                                        @Cast("uint64_t") long bias, int n, int outDim, int inDim, int accumulate,
                                        @Cast("uint64_t") long stream);

    public static native int tp_gemv_q8_multi(@Cast("uint64_t") long out0, @Cast("uint64_t") long w0,
                                              @Cast("uint64_t") long s0, @Cast("uint64_t") long bias0, int rows0,
                                              @Cast("uint64_t") long out1, @Cast("uint64_t") long w1,
                                              @Cast("uint64_t") long s1, @Cast("uint64_t") long bias1, int rows1,
                                              @Cast("uint64_t") long out2, @Cast("uint64_t") long w2,
                                              @Cast("uint64_t") long s2, @Cast("uint64_t") long bias2, int rows2,
                                              @Cast("uint64_t") long x, int n, int inDim, @Cast("uint64_t") long stream);

    public static native int tp_gemv_q8_swiglu(@Cast("uint64_t") long out, @Cast("uint64_t") long x,
                                               @Cast("uint64_t") long wGate, @Cast("uint64_t") long sGate,
                                               @Cast("uint64_t") long wUp, @Cast("uint64_t") long sUp, int n,
                                               int outDim, int inDim, @Cast("uint64_t") long stream);

    public static native int tp_dequant_q8_bf16(@Cast("uint64_t") long dst, @Cast("uint64_t") long w,
                                                @Cast("uint64_t") long scales, int rows, int inDim,
                                                @Cast("uint64_t") long stream);

    public static native int tp_embedding_q8(@Cast("uint64_t") long out, @Cast("uint64_t") long table,
                                             @Cast("uint64_t") long scales, @Cast("uint64_t") long tokens, int n,
                                             int dim, int vocab, @Cast("uint64_t") long stream);

    public static native int tp_gemv_bf16(@Cast("uint64_t") long out, @Cast("uint64_t") long x,
                                          @Cast("uint64_t") long w, @Cast("uint64_t") long bias, int n, int outDim,
                                          int inDim, @Cast("uint64_t") long stream);

    public static native int tp_gemv_bf16_multi(@Cast("uint64_t") long out0, @Cast("uint64_t") long w0,
                                                @Cast("uint64_t") long bias0, int rows0, @Cast("uint64_t") long out1,
                                                @Cast("uint64_t") long w1, @Cast("uint64_t") long bias1, int rows1,
                                                @Cast("uint64_t") long out2, @Cast("uint64_t") long w2,
                                                @Cast("uint64_t") long bias2, int rows2, @Cast("uint64_t") long x,
                                                int n, int inDim, @Cast("uint64_t") long stream);

    public static native int tp_gemv_bf16_swiglu(@Cast("uint64_t") long out, @Cast("uint64_t") long x,
                                                 @Cast("uint64_t") long wGate, @Cast("uint64_t") long wUp, int n,
                                                 int outDim, int inDim, @Cast("uint64_t") long stream);

    public static native int tp_gemv_set_wpr(int warpsPerRow);

    public static native int tp_gemv_set_prefetch(int maxMib);

    public static native int tp_gemv_get_prefetch();

    public static native int tp_gemv_bf16_acc(@Cast("uint64_t") long out, @Cast("uint64_t") long x,
                                              @Cast("uint64_t") long w, @Cast("uint64_t") long bias, int n, int outDim,
                                              int inDim, @Cast("uint64_t") long stream);

    public static native int tp_gemv_bf16_multi_norm(@Cast("uint64_t") long out0, @Cast("uint64_t") long w0,
                                                     @Cast("uint64_t") long bias0, int rows0, @Cast("uint64_t") long out1,
                                                     @Cast("uint64_t") long w1, @Cast("uint64_t") long bias1, int rows1,
                                                     @Cast("uint64_t") long out2, @Cast("uint64_t") long w2,
                                                     @Cast("uint64_t") long bias2, int rows2, @Cast("uint64_t") long x,
                                                     @Cast("uint64_t") long normW, float eps, int n, int inDim,
                                                     @Cast("uint64_t") long stream);

    public static native int tp_gemv_bf16_swiglu_norm(@Cast("uint64_t") long out, @Cast("uint64_t") long x,
                                                      @Cast("uint64_t") long normW, float eps,
                                                      @Cast("uint64_t") long wGate, @Cast("uint64_t") long wUp, int n,
                                                      int outDim, int inDim, @Cast("uint64_t") long stream);

    // ---- attention ----------------------------------------------------------------------------------------

    public static native @Cast("uint64_t") long tp_decode_attention_workspace_bytes(int numHeads, int headDim);

    public static native int tp_decode_attention(@Cast("uint64_t") long out, @Cast("uint64_t") long q,
                                                 @Cast("uint64_t") long keyCache, @Cast("uint64_t") long valueCache,
                                                 @Cast("uint64_t") long posCache, int layer, int numHeads,
                                                 int kvHeads, int headDim, int capacity,
                                                 @Cast("uint64_t") long queryPos, @Cast("uint64_t") long selSlots,
                                                 int selStride, @Cast("uint64_t") long selCounts,
                                                 @Cast("uint64_t") long highWater, int maxLen, float scale,
                                                 @Cast("uint64_t") long rawScores, @Cast("uint64_t") long probSums,
                                                 @Cast("uint64_t") long workspace,
                                                 @Cast("uint64_t") long workspaceBytes,
                                                 @Cast("uint64_t") long stream);

    public static native int tp_decode_attention_counters(int numHeads, int kvHeads);

    /** Decode attention kernel: 1 = decode_split_kernel, 2 = the cp.async-pipelined kernel, 3 = tensor cores (process-wide). */
    public static native int tp_set_attention_variant(int variant);

    public static native int tp_get_attention_variant();

    /** Forced splits per (KV head, head chunk) of split decode-attention launches: 0 = automatic, 1 .. 256 (tuning). */
    public static native int tp_set_attention_splits(int splits);

    /** Decode attention v3 pipeline depth: 0 = default stages, 1 = twice as many (process-wide, tuning). */
    public static native int tp_set_attention_prefetch(int rows);

    public static native int tp_get_attention_prefetch();

    public static native int tp_set_attention_deep_pipeline(int enabled);

    public static native int tp_decode_attention_ex(@Cast("uint64_t") long out, @Cast("uint64_t") long q,
                                                    @Cast("uint64_t") long keyCache,
                                                    @Cast("uint64_t") long valueCache,
                                                    @Cast("uint64_t") long posCache, int layer, int numHeads,
                                                    int kvHeads, int headDim, int capacity,
                                                    @Cast("uint64_t") long queryPos, @Cast("uint64_t") long selSlots,
                                                    int selStride, @Cast("uint64_t") long selCounts,
                                                    @Cast("uint64_t") long highWater, int maxLen, float scale,
                                                    @Cast("uint64_t") long rawScores,
                                                    @Cast("uint64_t") long probSums,
                                                    @Cast("uint64_t") long workspace,
                                                    @Cast("uint64_t") long workspaceBytes,
                                                    @Cast("uint64_t") long counters,
                                                    @Cast("uint64_t") long stream);

    public static native int tp_decode_attention_ex2(@Cast("uint64_t") long out, @Cast("uint64_t") long q,
                                                     @Cast("uint64_t") long keyCache,
                                                     @Cast("uint64_t") long valueCache,
                                                     @Cast("uint64_t") long posCache, int layer, int numHeads,
                                                     int kvHeads, int headDim, int capacity,
                                                     @Cast("uint64_t") long queryPos, @Cast("uint64_t") long selSlots,
                                                     int selStride, @Cast("uint64_t") long selCounts,
                                                     @Cast("uint64_t") long highWater, int maxLen, float scale,
                                                     @Cast("uint64_t") long rawScores,
                                                     @Cast("uint64_t") long probSums,
                                                     @Cast("uint64_t") long workspace,
                                                     @Cast("uint64_t") long workspaceBytes,
                                                     @Cast("uint64_t") long counters, int singleSplitMaxLen,
                                                     @Cast("uint64_t") long stream);

    public static native @Cast("uint64_t") long tp_prefill_attention_workspace_bytes(int n, int numHeads);

    public static native int tp_prefill_attention(@Cast("uint64_t") long out, @Cast("uint64_t") long q,
                                                  @Cast("uint64_t") long keyCache, @Cast("uint64_t") long valueCache,
                                                  @Cast("uint64_t") long posCache, int layer, int numHeads,
                                                  int kvHeads, int headDim, int capacity, int n,
                                                  @Cast("uint64_t") long queryPos, @Cast("uint64_t") long selSlots,
                                                  int selStride, @Cast("uint64_t") long selCounts,
                                                  @Cast("uint64_t") long highWater, int maxLen, float scale,
                                                  int fromRow, @Cast("uint64_t") long rawScores,
                                                  @Cast("uint64_t") long probSums, @Cast("uint64_t") long workspace,
                                                  @Cast("uint64_t") long workspaceBytes,
                                                  @Cast("uint64_t") long stream);

    // ---- ops for KV compression policies (policy_ops.cu) ---------------------------------------------------

    public static native int tp_query_key_scores(@Cast("uint64_t") long out, int outStride, @Cast("uint64_t") long q,
                                                 @Cast("uint64_t") long keyCache, @Cast("uint64_t") long posCache,
                                                 int layer, int numHeads, int kvHeads, int headDim, int capacity,
                                                 int queryPos, @Cast("uint64_t") long highWater, int maxHighWater,
                                                 @Cast("uint64_t") long stream);

    public static native int tp_quest_page_scores(@Cast("uint64_t") long out, int outStride, @Cast("uint64_t") long q,
                                                  @Cast("uint64_t") long keyCache, @Cast("uint64_t") long posCache,
                                                  int layer, int numHeads, int kvHeads, int headDim, int capacity,
                                                  int queryPos, @Cast("uint64_t") long highWater, int pageSize,
                                                  int maxPages, @Cast("uint64_t") long stream);

    public static native int tp_kv_read_slot(@Cast("uint64_t") long out, @Cast("uint64_t") long keyCache,
                                             @Cast("uint64_t") long valueCache, int layer, int head, int kvHeads,
                                             int headDim, int capacity, int slot, @Cast("uint64_t") long stream);

    public static native int tp_kv_write_slot(@Cast("uint64_t") long keyCache, @Cast("uint64_t") long valueCache,
                                              @Cast("uint64_t") long posCache, @Cast("uint64_t") long src, int layer,
                                              int head, int kvHeads, int headDim, int capacity, int slot,
                                              int position, @Cast("uint64_t") long stream);

    // ---- TidalDecode token selection on the device (tidal_select.cu) ------------------------------------

    public static native int tp_tidal_select(@Cast("uint64_t") long outSlots, @Cast("uint64_t") long outCounts,
                                             int outStride, @Cast("uint64_t") long curSlot,
                                             @Cast("uint64_t") long keysWs, int len, @Cast("uint64_t") long q,
                                             @Cast("uint64_t") long keyCache, @Cast("uint64_t") long posCache,
                                             int layer, int numHeads, int kvHeads, int headDim, int capacity,
                                             @Cast("uint64_t") long params, int k, int sumGroup,
                                             @Cast("uint64_t") long stream);

    public static native int tp_quest_select(@Cast("uint64_t") long outSlots, @Cast("uint64_t") long outCounts,
                                             int outStride, @Cast("uint64_t") long curSlot,
                                             @Cast("uint64_t") long keysWs, @Cast("uint64_t") long questWs, int len,
                                             @Cast("uint64_t") long q, @Cast("uint64_t") long keyCache,
                                             @Cast("uint64_t") long posCache, int layer, int numHeads, int kvHeads,
                                             int headDim, int capacity, @Cast("uint64_t") long params, int pageSize,
                                             int kPages, int sumGroup, @Cast("uint64_t") long stream);

    public static native @Cast("uint64_t") long tp_quest_select_workspace_bytes(int numHeads, int kvHeads, int len,
                                                                               int kPages);

    public static native int tp_tokenselect_select(@Cast("uint64_t") long outSlots, @Cast("uint64_t") long outCounts,
                                                   int outStride, @Cast("uint64_t") long curSlot,
                                                   @Cast("uint64_t") long keysWs, @Cast("uint64_t") long tsWs, int len,
                                                   @Cast("uint64_t") long q, @Cast("uint64_t") long keyCache,
                                                   @Cast("uint64_t") long posCache, int layer, int numHeads, int kvHeads,
                                                   int headDim, int capacity, @Cast("uint64_t") long params, int k,
                                                   int init, int local, @Cast("uint64_t") long stream);

    public static native @Cast("uint64_t") long tp_tokenselect_workspace_bytes(int numHeads, int len, int k);

    /** TidalDecode's selection layer: decode attention over every visible slot, then the selection of the same q. */
    public static native int tp_decode_attention_select(@Cast("uint64_t") long out, @Cast("uint64_t") long q,
                                                        @Cast("uint64_t") long keyCache, @Cast("uint64_t") long valueCache,
                                                        @Cast("uint64_t") long posCache, int layer, int numHeads,
                                                        int kvHeads, int headDim, int capacity, int maxLen, float scale,
                                                        @Cast("uint64_t") long workspace,
                                                        @Cast("uint64_t") long workspaceBytes,
                                                        @Cast("uint64_t") long counters, int singleSplitMaxLen,
                                                        @Cast("uint64_t") long outSlots, @Cast("uint64_t") long outCounts,
                                                        int outStride, @Cast("uint64_t") long curSlot,
                                                        @Cast("uint64_t") long keysWs, int len,
                                                        @Cast("uint64_t") long params, int k, int sumGroup,
                                                        @Cast("uint64_t") long stream);

    /**
     * {@link #tp_decode_attention_select} with the selection forked onto {@code sideStream} after the attention
     * ({@code forkEvent}) and {@code joinEvent} recorded there: later readers of the selection wait for it.
     */
    public static native int tp_decode_attention_select_side(@Cast("uint64_t") long out, @Cast("uint64_t") long q,
                                                             @Cast("uint64_t") long keyCache, @Cast("uint64_t") long valueCache,
                                                             @Cast("uint64_t") long posCache, int layer, int numHeads,
                                                             int kvHeads, int headDim, int capacity, int maxLen, float scale,
                                                             @Cast("uint64_t") long workspace,
                                                             @Cast("uint64_t") long workspaceBytes,
                                                             @Cast("uint64_t") long counters, int singleSplitMaxLen,
                                                             @Cast("uint64_t") long outSlots, @Cast("uint64_t") long outCounts,
                                                             int outStride, @Cast("uint64_t") long curSlot,
                                                             @Cast("uint64_t") long keysWs, int len,
                                                             @Cast("uint64_t") long params, int k, int sumGroup,
                                                             @Cast("uint64_t") long stream, @Cast("uint64_t") long sideStream,
                                                             @Cast("uint64_t") long forkEvent, @Cast("uint64_t") long joinEvent);

    public static native @Cast("uint64_t") long tp_tidal_select_workspace_bytes(int kvHeads, int len);

    public static native int tp_set_tidal_select_variant(int variant);

    /** Keys per block of the histogram pass of a selection from keys (0 = the default 2048; a multiple of 128). */
    public static native int tp_tidal_select_set_hist_rows(int rowsPerBlock);

    /** 1: the collect pass's threshold resolution with 8 candidate-list entries in flight per thread; 0 (default): one. */
    public static native int tp_tidal_select_set_collect_batch(int on);

    public static native int tp_get_tidal_select_variant();

    // ---- selection ----------------------------------------------------------------------------------------

    public static native @Cast("uint64_t") long tp_topk_workspace_bytes(int count, int k);

    public static native int tp_argmax(@Cast("uint64_t") long x, int count, @Cast("uint64_t") long outIndex,
                                       @Cast("uint64_t") long outValue, @Cast("uint64_t") long workspace,
                                       @Cast("uint64_t") long workspaceBytes, @Cast("uint64_t") long stream);

    public static native int tp_topk(@Cast("uint64_t") long x, int count, int k, @Cast("uint64_t") long outIndex,
                                     @Cast("uint64_t") long outValue, @Cast("uint64_t") long workspace,
                                     @Cast("uint64_t") long workspaceBytes, @Cast("uint64_t") long stream);

    // ---- Cut-Cross-Entropy log-sum-exp ----------------------------------------------------------------------

    public static native @Cast("uint64_t") long tp_cce_lse_workspace_bytes(int n);

    public static native int tp_cce_lse_splits(int n, int vocab);

    /** Workspace bytes for n rows of dim under variant 1 or 2 (0 = the variant set now). */
    public static native @Cast("uint64_t") long tp_cce_lse_workspace_bytes_for(int n, int dim, int variant);

    /** Process-wide tp_cce_lse implementation: 1 (default) or 2 (h rounded to bf16 only; precise runs 1). */
    public static native int tp_cce_set_variant(int variant);

    public static native int tp_cce_get_variant();

    public static native int tp_cce_lse(@Cast("uint64_t") long lse, @Cast("uint64_t") long targetLogit,
                                        @Cast("uint64_t") long hidden, @Cast("uint64_t") long lmHead,
                                        @Cast("uint64_t") long targets, int n, int vocab, int dim, int precise,
                                        @Cast("uint64_t") long workspace, @Cast("uint64_t") long workspaceBytes,
                                        @Cast("uint64_t") long stream);

    public static native int tp_lse_rows(@Cast("uint64_t") long lse, @Cast("uint64_t") long targetLogit,
                                         @Cast("uint64_t") long logits, @Cast("uint64_t") long targets, int n,
                                         int vocab, @Cast("uint64_t") long stream);

    public static native int tp_lse_chunk(@Cast("uint64_t") long state, @Cast("uint64_t") long targetLogit,
                                          @Cast("uint64_t") long logits, @Cast("uint64_t") long targets, int rows,
                                          int cols, int ld, int v0, int first, @Cast("uint64_t") long stream);

    public static native int tp_lse_chunk_finish(@Cast("uint64_t") long lse, @Cast("uint64_t") long targetLogit,
                                                 @Cast("uint64_t") long state, @Cast("uint64_t") long targets,
                                                 int rows, int vocab, @Cast("uint64_t") long stream);

    public static native int tp_f32_split_bf16(@Cast("uint64_t") long hi, @Cast("uint64_t") long lo,
                                               @Cast("uint64_t") long src, @Cast("int64_t") long count,
                                               @Cast("uint64_t") long stream);

    // ---- quantized KV cache: KIVI int8 / int4 / int2 (kv_quant.cu) -----------------------------------------

    /** Device to host byte array (reads back block records of the quantized cache). */
    public static native int tp_memcpy_d2h(@Cast("void*") byte[] dst, @Cast("uint64_t") long src,
                                           @Cast("uint64_t") long bytes, @Cast("uint64_t") long stream);

    public static native @Cast("uint64_t") long tp_kvq_block_bytes(int headDim, int group, int bits);

    public static native int tp_kvq_set_attention_variant(int variant);

    public static native int tp_set_q8_gemv_variant(int variant);

    public static native int tp_q8_gemv_variant();

    public static native int tp_kvq_attention_variant();

    public static native int tp_kvq_set_splits(int maxSplits, int rowsPerSplit);

    public static native int tp_kvq_max_splits();

    public static native int tp_kvq_rows_per_split();

    public static native int tp_kvq_encode(@Cast("uint64_t") long pool, @Cast("uint64_t") long windowK,
                                           @Cast("uint64_t") long windowV, @Cast("uint64_t") long k,
                                           @Cast("uint64_t") long v, int kvStride, @Cast("uint64_t") long plan,
                                           int numBlocks, int layer, int kvHeads, int headDim, int group, int bits,
                                           int resCap, int maxBlocks, @Cast("uint64_t") long stream);

    public static native int tp_kvq_decode_lanes(@Cast("uint64_t") long k, @Cast("uint64_t") long v,
                                                 @Cast("uint64_t") long pool, @Cast("uint64_t") long plan, int m,
                                                 int layer, int kvHeads, int headDim, int group, int bits,
                                                 int maxBlocks, @Cast("uint64_t") long stream);

    public static native int tp_kvq_encode_rows(@Cast("uint64_t") long pool, @Cast("uint64_t") long k,
                                                @Cast("uint64_t") long v, @Cast("uint64_t") long plan, int numBlocks,
                                                int layer, int kvHeads, int headDim, int group, int bits, int maxBlocks,
                                                @Cast("uint64_t") long stream);

    public static native int tp_kvq_window_write(@Cast("uint64_t") long windowK, @Cast("uint64_t") long windowV,
                                                 @Cast("uint64_t") long k, @Cast("uint64_t") long v, int kvStride,
                                                 @Cast("uint64_t") long plan, int count, int layer, int kvHeads,
                                                 int headDim, int resCap, @Cast("uint64_t") long stream);

    public static native @Cast("uint64_t") long tp_kvq_attention_workspace_bytes(int n, int numHeads, int headDim,
                                                                                  int maxLen);

    public static native int tp_kvq_attention(@Cast("uint64_t") long out, @Cast("uint64_t") long q,
                                              @Cast("uint64_t") long pool, @Cast("uint64_t") long windowK,
                                              @Cast("uint64_t") long windowV, @Cast("uint64_t") long posCache,
                                              @Cast("uint64_t") long locCache, int layer, int numHeads, int kvHeads,
                                              int headDim, int capacity, int group, int bits, int resCap,
                                              int maxBlocks, int n, @Cast("uint64_t") long queryPos,
                                              @Cast("uint64_t") long selSlots, int selStride,
                                              @Cast("uint64_t") long selCounts, @Cast("uint64_t") long highWater,
                                              int maxLen, float scale, @Cast("uint64_t") long workspace,
                                              @Cast("uint64_t") long workspaceBytes, @Cast("uint64_t") long stream);

    public static native int tp_kvq_attention_ex(@Cast("uint64_t") long out, @Cast("uint64_t") long q,
                                                 @Cast("uint64_t") long pool, @Cast("uint64_t") long windowK,
                                                 @Cast("uint64_t") long windowV, @Cast("uint64_t") long posCache,
                                                 @Cast("uint64_t") long locCache, int layer, int numHeads, int kvHeads,
                                                 int headDim, int capacity, int group, int bits, int resCap,
                                                 int maxBlocks, int n, @Cast("uint64_t") long queryPos,
                                                 @Cast("uint64_t") long selSlots, int selStride,
                                                 @Cast("uint64_t") long selCounts, @Cast("uint64_t") long highWater,
                                                 int maxLen, float scale, @Cast("uint64_t") long workspace,
                                                 @Cast("uint64_t") long workspaceBytes, @Cast("uint64_t") long lse2,
                                                 @Cast("uint64_t") long stream);

    /** tp_kvq_attention_ex with split counters (zeroed int32s, left zero): variant 4 merges its splits itself. */
    public static native int tp_kvq_attention_ex2(@Cast("uint64_t") long out, @Cast("uint64_t") long q,
                                                  @Cast("uint64_t") long pool, @Cast("uint64_t") long windowK,
                                                  @Cast("uint64_t") long windowV, @Cast("uint64_t") long posCache,
                                                  @Cast("uint64_t") long locCache, int layer, int numHeads, int kvHeads,
                                                  int headDim, int capacity, int group, int bits, int resCap,
                                                  int maxBlocks, int n, @Cast("uint64_t") long queryPos,
                                                  @Cast("uint64_t") long selSlots, int selStride,
                                                  @Cast("uint64_t") long selCounts, @Cast("uint64_t") long highWater,
                                                  int maxLen, float scale, @Cast("uint64_t") long workspace,
                                                  @Cast("uint64_t") long workspaceBytes, @Cast("uint64_t") long lse2,
                                                  @Cast("uint64_t") long counters, @Cast("uint64_t") long stream);

    public static native int tp_kvq_query_key_scores(@Cast("uint64_t") long out, int outStride, @Cast("uint64_t") long q,
                                                     @Cast("uint64_t") long pool, @Cast("uint64_t") long windowK,
                                                     @Cast("uint64_t") long posCache, @Cast("uint64_t") long locCache,
                                                     int layer, int numHeads, int kvHeads, int headDim, int capacity,
                                                     int group, int bits, int resCap, int maxBlocks, int queryPos,
                                                     @Cast("uint64_t") long highWater, int maxHighWater,
                                                     @Cast("uint64_t") long stream);

    public static native int tp_kvq_tidal_select(@Cast("uint64_t") long outSlots, @Cast("uint64_t") long outCounts,
                                                 int outStride, @Cast("uint64_t") long curSlot,
                                                 @Cast("uint64_t") long keysWs, int len, @Cast("uint64_t") long q,
                                                 @Cast("uint64_t") long pool, @Cast("uint64_t") long windowK,
                                                 @Cast("uint64_t") long posCache, @Cast("uint64_t") long locCache,
                                                 int layer, int numHeads, int kvHeads, int headDim, int capacity,
                                                 int group, int bits, int resCap, int maxBlocks,
                                                 @Cast("uint64_t") long params, int k, int sumGroup,
                                                 @Cast("uint64_t") long stream);

    public static native int tp_kvq_attention_stats(@Cast("uint64_t") long q, @Cast("uint64_t") long pool,
                                                    @Cast("uint64_t") long windowK, @Cast("uint64_t") long posCache,
                                                    @Cast("uint64_t") long locCache, int layer, int numHeads,
                                                    int kvHeads, int headDim, int capacity, int group, int bits,
                                                    int resCap, int maxBlocks, int n, @Cast("uint64_t") long queryPos,
                                                    int fromRow, @Cast("uint64_t") long lse2,
                                                    @Cast("uint64_t") long selSlots, int selStride,
                                                    @Cast("uint64_t") long selCounts, @Cast("uint64_t") long highWater,
                                                    float scale, @Cast("uint64_t") long rawScores,
                                                    @Cast("uint64_t") long probSums, @Cast("uint64_t") long stream);

    public static native int tp_kvq_quest_page_scores(@Cast("uint64_t") long out, int outStride,
                                                      @Cast("uint64_t") long q, @Cast("uint64_t") long pool,
                                                      @Cast("uint64_t") long windowK, @Cast("uint64_t") long posCache,
                                                      @Cast("uint64_t") long locCache, int layer, int numHeads,
                                                      int kvHeads, int headDim, int capacity, int group, int bits,
                                                      int resCap, int maxBlocks, int queryPos,
                                                      @Cast("uint64_t") long highWater, int pageSize, int maxPages,
                                                      @Cast("uint64_t") long stream);
}
