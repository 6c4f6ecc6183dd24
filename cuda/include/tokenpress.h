/*
 * tokenpress native ABI: the only interface between Java (dev.tokenpress.backend.cuda.TpNative) and the CUDA
 * kernels. Plain C, no CUDA types, so the JNI glue compiles with g++.
 *
 * Conventions
 *  - Every function returns an int status: TP_OK (0) or one of the TP_ERR_* codes below; after an error
 *    tp_last_error_message() (thread-local) names the bad argument or the failing CUDA call.
 *  - Device memory and host (pinned) memory are passed as raw addresses (uint64_t); a CUDA stream is the
 *    cudaStream_t value as uint64_t (0 = legacy default stream).
 *  - Activations are f32; weights, keys and values are bf16 (stored as uint16 bit patterns).
 *  - Shapes in comments: n = rows in use, D = hidden size, H / Hkv = q / KV heads, hd = head dim,
 *    C = KV capacity (slots per layer and KV head), L = layers, V = vocabulary.
 *  - KV cache layout: keys/values bf16 [L][Hkv][C][hd]; positions int32 [L][Hkv][C] (-1 = free slot).
 *    A slot is visible to a query at position p iff 0 <= position[slot] <= p.
 *  - All launches are asynchronous on the given stream; step-varying values (token ids, positions, slot
 *    lists, counts, high-water marks) are always read from device memory, so launches can be captured into a
 *    CUDA graph and replayed after the host rewrites those buffers.
 */
#ifndef TOKENPRESS_H
#define TOKENPRESS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TP_OK 0
#define TP_ERR_BAD_ARGUMENT 1          /* an argument is out of range; the message names it */
#define TP_ERR_UNSUPPORTED_HEAD_DIM 2  /* attention kernels exist for hd 64 and 128 only */
#define TP_ERR_CUDA 3                  /* a CUDA runtime call failed; tp_last_cuda_error() has its code */
#define TP_ERR_OUT_OF_MEMORY 4         /* cudaMalloc / cudaMallocHost failed */
#define TP_ERR_UNSUPPORTED 5           /* another unsupported shape (e.g. top-k with k > 1024) */

/** Message of the last error on this thread ("" when none). */
const char* tp_last_error_message(void);
/** cudaError_t of the last TP_ERR_CUDA / TP_ERR_OUT_OF_MEMORY on this thread. */
int tp_last_cuda_error(void);
/** Library version, e.g. 1. */
int tp_version(void);

/* ---- device, memory, streams, events, graphs (runtime linked statically) ------------------------------ */

/**
 * 1 when the current device can use Programmatic Dependent Launch (sm_90+, driver and runtime >= CUDA 12.3,
 * needed to capture programmatic launches into graphs), else 0.
 */
int tp_pdl_supported(void);
/**
 * Process-wide switch (default off): with it on, the kernels of norm_rope_act.cu, gemv.cu and topk_select.cu
 * are launched with programmaticStreamSerializationAllowed (cudaLaunchKernelEx), so each may start while its
 * stream predecessor finishes; they wait (griddepcontrol.wait) before touching data earlier kernels write or
 * read. The decode GEMVs load their first weights, and add_rmsnorm its norm weights, before that wait: those
 * buffers must not be written by the kernels just before them (they are model weights). Other kernels stay
 * ordinary launches. Affects launches (and captures) after the call. TP_ERR_UNSUPPORTED when enabling it on a
 * device where tp_pdl_supported() is 0 (the switch stays as it was).
 */
int tp_set_pdl(int enabled);
/** The current state of the switch (0 or 1). */
int tp_pdl_enabled(void);

/** cudaGetDeviceCount; returns TP_ERR_CUDA with the CUDA code in tp_last_cuda_error() (35: no/old driver). */
int tp_device_count(int* count);
/** Selects the device and creates its primary context. */
int tp_set_device(int device);
/** props[8] = {sm count, major, minor, total MiB, l2 bytes, max smem per block optin, mem clock kHz, bus bits}. */
int tp_device_props(int device, int* props);
/** Device name into buf[len] (NUL-terminated). */
int tp_device_name(int device, char* buf, int len);
/** Driver and runtime versions (e.g. 13000). */
int tp_versions(int* driver, int* runtime);
int tp_mem_get_info(uint64_t* free_bytes, uint64_t* total_bytes);
int tp_malloc(uint64_t* ptr, uint64_t bytes);
int tp_free(uint64_t ptr);
int tp_malloc_host(uint64_t* ptr, uint64_t bytes);  /* pinned */
int tp_free_host(uint64_t ptr);
int tp_memset_async(uint64_t dst, int byte_value, uint64_t bytes, uint64_t stream);
/** Copies between any two addresses (host pageable/pinned or device), cudaMemcpyDefault, on the stream. */
int tp_memcpy_async(uint64_t dst, uint64_t src, uint64_t bytes, uint64_t stream);
/**
 * Copies `height` rows of `width` bytes between any two addresses (cudaMemcpy2DAsync, cudaMemcpyDefault): row r
 * from src + r * src_pitch to dst + r * dst_pitch, on the stream; width <= both pitches.
 */
int tp_memcpy_2d_async(uint64_t dst, uint64_t dst_pitch, uint64_t src, uint64_t src_pitch, uint64_t width,
                       uint64_t height, uint64_t stream);
/** Host array (pageable, any type) to device, then waits for the stream. */
int tp_memcpy_h2d(uint64_t dst, const void* src, uint64_t bytes, uint64_t stream);
/** Device to host array (pageable, any type); waits for the stream first. */
int tp_memcpy_d2h(void* dst, uint64_t src, uint64_t bytes, uint64_t stream);
int tp_stream_create(uint64_t* stream);
int tp_stream_destroy(uint64_t stream);
int tp_stream_synchronize(uint64_t stream);
int tp_device_synchronize(void);
int tp_event_create(uint64_t* event);
/** An event for ordering only (no timing: cheaper to record and wait for), e.g. a fork or join between streams. */
int tp_event_create_sync(uint64_t* event);
int tp_event_destroy(uint64_t event);
int tp_event_record(uint64_t event, uint64_t stream);
int tp_event_synchronize(uint64_t event);
/** cudaStreamWaitEvent: work queued on stream afterwards waits for the event's last record. */
int tp_stream_wait_event(uint64_t stream, uint64_t event);
int tp_event_elapsed_ms(float* ms, uint64_t start, uint64_t end);
/** Begins capturing the stream (thread-local capture mode). */
int tp_graph_begin_capture(uint64_t stream);
/** Ends the capture and instantiates it; *graph_exec = 0 on failure (the capture is discarded). */
int tp_graph_end_capture(uint64_t stream, uint64_t* graph_exec);
int tp_graph_launch(uint64_t graph_exec, uint64_t stream);
int tp_graph_destroy(uint64_t graph_exec);

/* ---- fused small ops (norm_rope_act.cu) -------------------------------------------------------------- */

/** out[i, :] = f32(table[tokens[i], :]); out f32 [n, D], table bf16 [V, D], tokens int32 [n] (device). */
int tp_embedding(uint64_t out, uint64_t table, uint64_t tokens, int n, int dim, int vocab, uint64_t stream);
/** out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * w; out, x f32 [n, D] (out may be x), w f32 [D]. */
int tp_rmsnorm(uint64_t out, uint64_t x, uint64_t w, float eps, int n, int dim, uint64_t stream);
/**
 * Rotary embedding in place, HF rotate_half pairing (i, i + hd/2); x f32 [n, heads*hd]; positions int32 [n]
 * (device); inv_freq f32 [hd/2]; angle = (float) position * inv_freq[i] in f32; cos and sin are multiplied by
 * scale (> 0; YaRN's attention factor, 1 otherwise).
 */
int tp_rope(uint64_t x, int n, int heads, int head_dim, uint64_t positions, uint64_t inv_freq, float scale,
            uint64_t stream);
/** out = silu(gate) * up over count elements (f32); out may be gate. */
int tp_swiglu(uint64_t out, uint64_t gate, uint64_t up, int64_t count, uint64_t stream);
/** x += y over count f32 elements. */
int tp_add(uint64_t x, uint64_t y, int64_t count, uint64_t stream);
/** out[i, :] += bias; out f32 [n, cols], bias f32 [cols]. */
int tp_add_bias(uint64_t out, uint64_t bias, int n, int cols, uint64_t stream);
/** dst bf16 [count] = round-to-nearest-even(src f32 [count]). */
int tp_f32_to_bf16(uint64_t dst, uint64_t src, int64_t count, uint64_t stream);
/** dst f32 [count] = src bf16 [count]. */
int tp_bf16_to_f32(uint64_t dst, uint64_t src, int64_t count, uint64_t stream);
/** dst f32 [count] = value. */
int tp_fill_f32(uint64_t dst, float value, int64_t count, uint64_t stream);
/** dst int32[idx[i]] = vals[i] for i < count; idx, vals int32 [count] (device). */
int tp_scatter_i32(uint64_t dst, uint64_t idx, uint64_t vals, int count, uint64_t stream);
/**
 * KV store: for each KV head g and token i < n: keys[layer][g][slots[g][i]] = bf16(k[i, g*hd : (g+1)*hd]),
 * same for values, and positions[layer][g][slots[g][i]] = token_pos[g][i].
 * k, v f32 [n, Hkv*hd]; slots, token_pos int32 [Hkv][n] (device).
 */
int tp_store_kv(uint64_t key_cache, uint64_t value_cache, uint64_t pos_cache, uint64_t k, uint64_t v,
                uint64_t slots, uint64_t token_pos, int layer, int kv_heads, int head_dim, int capacity, int n,
                uint64_t stream);

/**
 * Fused residual add + RMSNorm: x += y, then out = x / sqrt(mean(x^2) + eps) * w, one pass per row.
 * out, x, y f32 [n, D] (out must not alias x or y), w f32 [D].
 */
int tp_add_rmsnorm(uint64_t out, uint64_t x, uint64_t y, uint64_t w, float eps, int n, int dim, uint64_t stream);

/**
 * RoPE of q and k + KV store in one kernel (= tp_rope(q), tp_rope(k), tp_store_kv): q f32 [n, heads*hd] and
 * k f32 [n, Hkv*hd] are rotated in place (angle positions[i] * inv_freq[j] in f32, rotate_half pairing, cos and
 * sin times scale), then
 * the rotated k and v are stored as in tp_store_kv. positions int32 [n]; slots, token_pos int32 [Hkv][n]
 * (device); a slot outside [0, capacity) is skipped (k is still rotated).
 */
int tp_rope_store_kv(uint64_t q, int heads, uint64_t k, uint64_t v, uint64_t positions, uint64_t inv_freq,
                     float scale, uint64_t key_cache, uint64_t value_cache, uint64_t pos_cache, uint64_t slots,
                     uint64_t token_pos, int layer, int kv_heads, int head_dim, int capacity, int n,
                     uint64_t stream);

/* ---- decode GEMV (gemv.cu) --------------------------------------------------------------------------- */

/**
 * out[r, o] = sum_i w[o, i] * x[r, i] (+ bias[o]) for r < n, in f32 with bf16 weights read directly:
 * out f32 [n, O], x f32 [n, I], w bf16 [O, I] row-major, bias f32 [O] or 0. out must not alias x.
 * Returns TP_ERR_UNSUPPORTED (nothing launched) unless n <= 4, I % 8 == 0 and x and w are 16-byte aligned;
 * callers then use a GEMM.
 */
int tp_gemv_bf16(uint64_t out, uint64_t x, uint64_t w, uint64_t bias, int n, int out_dim, int in_dim,
                 uint64_t stream);

/**
 * Decode GEMV over Q8_0 weights (--weight-type q8_0): out f32 [n, out_dim] (=, or += with accumulate != 0)
 * x f32 [n, in_dim] · w^T (+ bias f32 [out_dim] or 0), w int8 codes [out_dim, in_dim] with scales f32
 * [out_dim, in_dim / 32] (weight = code * scale). n <= 4, in_dim % 32 == 0, x and w 16-byte aligned.
 */
int tp_gemv_q8(uint64_t out, uint64_t x, uint64_t w, uint64_t scales, uint64_t bias, int n, int out_dim, int in_dim,
               int accumulate, uint64_t stream);
/** tp_gemv_bf16_multi for Q8_0 matrices (codes w_m, scales s_m): up to three products of the same x in one launch. */
int tp_gemv_q8_multi(uint64_t out0, uint64_t w0, uint64_t s0, uint64_t bias0, int rows0, uint64_t out1, uint64_t w1,
                     uint64_t s1, uint64_t bias1, int rows1, uint64_t out2, uint64_t w2, uint64_t s2, uint64_t bias2,
                     int rows2, uint64_t x, int n, int in_dim, uint64_t stream);
/** tp_gemv_bf16_swiglu for Q8_0 gate/up matrices: out f32 [n, out_dim] = silu(x · gate^T) * (x · up^T). */
int tp_gemv_q8_swiglu(uint64_t out, uint64_t x, uint64_t w_gate, uint64_t s_gate, uint64_t w_up, uint64_t s_up, int n,
                      int out_dim, int in_dim, uint64_t stream);
/**
 * Picks the Q8_0 GEMVs' kernel variant, for the whole process: 1 = 16 consecutive codes per lane, I2F per byte, each
 * scale read when used; 2 = the scales loaded with the codes and a byte permute into a float's mantissa plus one
 * subtraction (exact: the same results as 1); 3 = the lanes of a warp interleaved at 4 codes, so that every load of x
 * is coalesced (results within rounding of 1); 4 (default) = llama.cpp's integer path: each block quantizes x to int8
 * per 32 (scale max|x| / 127) in shared memory and multiplies codes by codes with DP4A (results within x's 8-bit
 * rounding of 1; a call whose n * in_dim * 9/8 bytes exceed 47 KB runs variant 1). End to end (llama-1b-shape):
 * 795 / 831 / 789 / 999 tokens/s for 1 / 2 / 3 / 4 on an H100, 871 / 869 / 811 / 1,127 on an H200.
 */
int tp_set_q8_gemv_variant(int variant);
/** The variant tp_gemv_q8* use now (1, 2, 3 or 4). */
int tp_q8_gemv_variant(void);
/** dst bf16 [rows, in_dim] = Q8_0 rows (codes w int8 [rows, in_dim], scales f32 [rows, in_dim / 32]) dequantized. */
int tp_dequant_q8_bf16(uint64_t dst, uint64_t w, uint64_t scales, int rows, int in_dim, uint64_t stream);
/** tp_embedding over a Q8_0 table (codes int8 [vocab, dim], scales f32 [vocab, dim / 32]); dim % 32 == 0. */
int tp_embedding_q8(uint64_t out, uint64_t table, uint64_t scales, uint64_t tokens, int n, int dim, int vocab,
                    uint64_t stream);
/**
 * Up to three tp_gemv_bf16 products of the same x [n, I] in one launch (q, k, v projections): out_m f32
 * [n, rows_m] = x · w_m^T (+ bias_m), m = 0, 1, 2; rows1 / rows2 = 0 leave matrix 1 / 2 out (rows2 > 0 needs
 * rows1 > 0). Blocks cover the rows of all matrices; no out_m may alias x. Same limits as tp_gemv_bf16.
 */
int tp_gemv_bf16_multi(uint64_t out0, uint64_t w0, uint64_t bias0, int rows0, uint64_t out1, uint64_t w1,
                       uint64_t bias1, int rows1, uint64_t out2, uint64_t w2, uint64_t bias2, int rows2, uint64_t x,
                       int n, int in_dim, uint64_t stream);

/**
 * Gate/up GEMV + SwiGLU: out[r, o] = silu(g) * u with g = w_gate[o] · x[r], u = w_up[o] · x[r] (f32, bf16
 * weights [O, I]); each row o of both matrices is read by the same warp(s). out f32 [n, O] must not alias x.
 * Same limits as tp_gemv_bf16.
 */
int tp_gemv_bf16_swiglu(uint64_t out, uint64_t x, uint64_t w_gate, uint64_t w_up, int n, int out_dim, int in_dim,
                        uint64_t stream);

/**
 * Forces the warps per weight row of every decode GEMV (tp_gemv_bf16*, process-wide): 0 = automatic (the fewest
 * that still give about two blocks per SM), or 1, 2, 4, 8. For tuning sweeps (KernelBench gemv); results are
 * the same up to summation order.
 */
int tp_gemv_set_wpr(int warps_per_row);
/**
 * L2 prefetch in the decode GEMVs (process-wide): a launch that reads at most max_mib MiB of weights has each block
 * ask L2 for all of its weight rows before waiting for the previous kernel (Programmatic Dependent Launch), so
 * resident blocks stream their rows during that kernel's tail; 0 = never (the default). A hint only: results are
 * bit-identical with any value. Launches already captured in a graph keep theirs. TP_ERR_BAD_ARGUMENT outside
 * 0 .. 65536.
 */
int tp_gemv_set_prefetch(int max_mib);
/** The limit tp_gemv_set_prefetch set, in MiB (0 = off). */
int tp_gemv_get_prefetch(void);

/**
 * tp_gemv_bf16 accumulated into out: out[r, o] = out[r, o] + (x[r] · w[o] (+ bias[o])), the residual add of a
 * projection in the same pass (out is the residual stream; it must not alias x). Same limits as tp_gemv_bf16.
 */
int tp_gemv_bf16_acc(uint64_t out, uint64_t x, uint64_t w, uint64_t bias, int n, int out_dim, int in_dim,
                     uint64_t stream);

/**
 * tp_gemv_bf16_multi of RMSNorm(x): every block computes inv[r] = 1/sqrt(mean(x[r]^2) + eps) of the n rows and
 * uses x[r, i] * inv[r] * norm_w[i] (norm_w f32 [in_dim], 16-byte aligned), so the normalized activations are
 * never written. Same limits as tp_gemv_bf16_multi.
 */
int tp_gemv_bf16_multi_norm(uint64_t out0, uint64_t w0, uint64_t bias0, int rows0, uint64_t out1, uint64_t w1,
                            uint64_t bias1, int rows1, uint64_t out2, uint64_t w2, uint64_t bias2, int rows2,
                            uint64_t x, uint64_t norm_w, float eps, int n, int in_dim, uint64_t stream);

/** tp_gemv_bf16_swiglu of RMSNorm(x), the norm fused as in tp_gemv_bf16_multi_norm. */
int tp_gemv_bf16_swiglu_norm(uint64_t out, uint64_t x, uint64_t norm_w, float eps, uint64_t w_gate, uint64_t w_up,
                             int n, int out_dim, int in_dim, uint64_t stream);

/* ---- attention (decode_attention.cu, prefill_attention.cu) ------------------------------------------- */

/** Bytes of workspace tp_decode_attention needs for num_heads q-heads of head_dim (any context length). */
uint64_t tp_decode_attention_workspace_bytes(int num_heads, int head_dim);

/**
 * Flash-decoding for one query token. out f32 [H*hd]; q f32 [H*hd] (rotated); q-head h uses KV head
 * h / (H/Hkv). query_pos int32 [1] (device). Candidate slots of KV head g: sel_slots[g*sel_stride + j] for
 * j < min(sel_counts[g], sel_stride) when sel_slots != 0 (int32, device), else [0, high_water[g]) (int32
 * [Hkv], device). max_len: an upper bound hint of the candidate count, used only to pick the split count
 * (the kernels read the real counts from device memory). scale: softmax scale (1/sqrt(hd)).
 * Optional (0 = not wanted): raw_scores f32 [H][C] receives q·k (unscaled) at each attended slot (others
 * untouched); prob_sums f32 [Hkv][C] += post-softmax probability summed over the group's q-heads.
 * workspace: tp_decode_attention_workspace_bytes(H, hd) bytes of device memory.
 * Returns TP_ERR_UNSUPPORTED_HEAD_DIM for hd not in {64, 128}.
 */
int tp_decode_attention(uint64_t out, uint64_t q, uint64_t key_cache, uint64_t value_cache, uint64_t pos_cache,
                        int layer, int num_heads, int kv_heads, int head_dim, int capacity, uint64_t query_pos,
                        uint64_t sel_slots, int sel_stride, uint64_t sel_counts, uint64_t high_water,
                        int max_len, float scale, uint64_t raw_scores, uint64_t prob_sums,
                        uint64_t workspace, uint64_t workspace_bytes, uint64_t stream);

/** Number of int32 counters tp_decode_attention_ex may use for num_heads q-heads over kv_heads KV heads. */
int tp_decode_attention_counters(int num_heads, int kv_heads);

/**
 * tp_decode_attention with the split merge fused into the split kernel: the last block of each (KV head,
 * head chunk) to finish merges the partial states of all splits (no second kernel). counters: int32
 * [tp_decode_attention_counters(H, Hkv)] of device memory, zeroed once by the caller before its first use and
 * left zeroed by every completed call (the merging block resets its counter); not shared between calls that
 * may run concurrently. counters == 0 is exactly tp_decode_attention (separate merge kernel).
 */
int tp_decode_attention_ex(uint64_t out, uint64_t q, uint64_t key_cache, uint64_t value_cache, uint64_t pos_cache,
                           int layer, int num_heads, int kv_heads, int head_dim, int capacity, uint64_t query_pos,
                           uint64_t sel_slots, int sel_stride, uint64_t sel_counts, uint64_t high_water,
                           int max_len, float scale, uint64_t raw_scores, uint64_t prob_sums,
                           uint64_t workspace, uint64_t workspace_bytes, uint64_t counters, uint64_t stream);

/**
 * tp_decode_attention_ex with a short-context path: when max_len <= single_split_max_len, one block per (KV
 * head, head chunk) walks all candidates and writes out directly (no partial states, no merge, no counters).
 * single_split_max_len < 0: the built-in threshold (4 block iterations of rows: 256 rows for hd 64 with
 * GQA groups <= 4); 0: never (= tp_decode_attention_ex).
 */
int tp_decode_attention_ex2(uint64_t out, uint64_t q, uint64_t key_cache, uint64_t value_cache, uint64_t pos_cache,
                            int layer, int num_heads, int kv_heads, int head_dim, int capacity, uint64_t query_pos,
                            uint64_t sel_slots, int sel_stride, uint64_t sel_counts, uint64_t high_water,
                            int max_len, float scale, uint64_t raw_scores, uint64_t prob_sums,
                            uint64_t workspace, uint64_t workspace_bytes, uint64_t counters,
                            int single_split_max_len, uint64_t stream);

/**
 * Selects the decode attention kernel of tp_decode_attention*: 1 = decode_split_kernel (the register-loaded
 * flash-decoding kernel), 2 = the cp.async-pipelined kernel (default), 3 = the tensor-core kernel (mma.sync bf16,
 * sm_80+). Process-wide; launches already captured in a graph keep the kernel they were captured with.
 * TP_ERR_BAD_ARGUMENT for any other value.
 */
int tp_set_attention_variant(int variant);
/** The variant tp_decode_attention* launches now (1, 2 or 3). */
int tp_get_attention_variant(void);
/**
 * Forces the number of splits per (KV head, head chunk) of every split decode-attention launch (process-wide):
 * 0 = the kernel's own choice (one wave of resident blocks), else 1 .. 256. Single-pass launches of short
 * candidate lists are not affected. For tuning sweeps (KernelBench attnsweep); results are the same up to
 * summation order. TP_ERR_BAD_ARGUMENT outside 0 .. 256.
 */
int tp_set_attention_splits(int splits);
/**
 * Pipeline depth of decode attention v3 (process-wide): 0 = the default stages per warp (4 for head dim 64, 3 for
 * 128), 1 = twice as many (more bytes in flight per SM, one resident block per SM). Launches already captured in
 * a graph keep theirs. TP_ERR_BAD_ARGUMENT for any other value.
 */
int tp_set_attention_deep_pipeline(int enabled);
/**
 * L2 prefetch in decode attention v3 (process-wide): before waiting for the previous kernel (Programmatic Dependent
 * Launch), each block asks L2 for the first `rows` keys and values of its candidate range, so the stream of old
 * tokens starts while RoPE + KV store finish; 0 = off (the default). A hint only: results are bit-identical with any
 * value. Launches already captured in a graph keep theirs. TP_ERR_BAD_ARGUMENT outside 0 .. 65536.
 */
int tp_set_attention_prefetch(int rows);
/** The rows tp_set_attention_prefetch set (0 = off). */
int tp_get_attention_prefetch(void);

/** Bytes of workspace tp_prefill_attention needs for n queries of num_heads heads. */
uint64_t tp_prefill_attention_workspace_bytes(int n, int num_heads);

/**
 * Causal attention for n queries at query_pos int32 [n] (device), tiled with online softmax. out, q f32
 * [n, H*hd]. Candidates, cache layout and stats as for tp_decode_attention, except: raw_scores are written
 * for the last query row (n-1) only, prob_sums accumulate over query rows [from_row, n).
 */
int tp_prefill_attention(uint64_t out, uint64_t q, uint64_t key_cache, uint64_t value_cache, uint64_t pos_cache,
                         int layer, int num_heads, int kv_heads, int head_dim, int capacity, int n,
                         uint64_t query_pos, uint64_t sel_slots, int sel_stride, uint64_t sel_counts,
                         uint64_t high_water, int max_len, float scale, int from_row, uint64_t raw_scores,
                         uint64_t prob_sums, uint64_t workspace, uint64_t workspace_bytes, uint64_t stream);

/* ---- ops for KV compression policies (policy_ops.cu) ------------------------------------------------ */
/* Their results go back to host-side policy logic, so callers run them eagerly (not inside a captured graph);
 * the query position is therefore a plain int. Cache layout and visibility as above. */

/**
 * Raw (unscaled) q·k of one query row against every slot below the high-water mark: out f32 [H][out_stride],
 * out[h*out_stride + s] for s < max_high_water = q_h · key[layer][h / (H/Hkv)][s], or -inf when s >= high_water[g]
 * or the slot is not visible to query_pos. q f32 [H*hd] (one row, rotated); high_water int32 [Hkv] (device),
 * max_high_water = max over g (<= capacity, <= out_stride). head_dim % 8 == 0 (else TP_ERR_UNSUPPORTED_HEAD_DIM),
 * (H/Hkv)*hd*4 <= 48 KiB (else TP_ERR_UNSUPPORTED); key_cache 16-byte aligned.
 */
int tp_query_key_scores(uint64_t out, int out_stride, uint64_t q, uint64_t key_cache, uint64_t pos_cache, int layer,
                        int num_heads, int kv_heads, int head_dim, int capacity, int query_pos, uint64_t high_water,
                        int max_high_water, uint64_t stream);

/**
 * Quest's per-page bound: pages are runs of page_size slots; with M and m the elementwise max and min of the keys
 * of the page's visible slots (below high_water[g]), out[h*out_stride + p] = sum_i max(q_i*M_i, q_i*m_i) for
 * p < max_pages, -inf for a page without a visible slot (pages at or after ceil(high_water[g] / page_size)
 * included). Computed on the fly from the bf16 keys (no page metadata is kept). out f32 [H][out_stride];
 * q f32 [H*hd]; high_water int32 [Hkv] (device); max_pages <= ceil(capacity / page_size); head_dim <= 256.
 */
int tp_quest_page_scores(uint64_t out, int out_stride, uint64_t q, uint64_t key_cache, uint64_t pos_cache, int layer,
                         int num_heads, int kv_heads, int head_dim, int capacity, int query_pos, uint64_t high_water,
                         int page_size, int max_pages, uint64_t stream);

/**
 * Quest's page selection on the device (Backend.selectTopPages), capturable in a CUDA graph: every step value is
 * read from params int32 (device): pages[kv_heads] | query_pos | 0 | high_water[kv_heads] | cur_page[kv_heads], with
 * pages[g] = ceil(high_water[g] / page_size) and cur_page[g] < pages[g] the page to keep (the page of the current
 * token; -1: none). Per KV head g: the bounds of tp_quest_page_scores for pages [0, len) (len >= every pages[g]); a page's
 * score is the max (sum_group 0) or the sum (1, in q-head order) of its finite bounds over the group's q-heads
 * (none finite: not a candidate); kept are cur_page plus the best min(k_pages, candidates) - 1 other pages (ties:
 * lower page), and out_slots[g * out_stride ..] receives the visible slots (0 <= position <= query_pos) of the kept
 * pages in slot order, out_counts[g] their number: the sel_slots / sel_counts of tp_decode_attention_ex2.
 * keys_ws / cur_slot: as tp_tidal_select's (tp_tidal_select_workspace_bytes(kv_heads, len)); quest_ws:
 * tp_quest_select_workspace_bytes(num_heads, kv_heads, len, k_pages) bytes, 16-byte aligned. out_stride >=
 * k_pages * page_size; head_dim <= 256.
 */
int tp_quest_select(uint64_t out_slots, uint64_t out_counts, int out_stride, uint64_t cur_slot, uint64_t keys_ws,
                    uint64_t quest_ws, int len, uint64_t q, uint64_t key_cache, uint64_t pos_cache, int layer,
                    int num_heads, int kv_heads, int head_dim, int capacity, uint64_t params, int page_size,
                    int k_pages, int sum_group, uint64_t stream);
/** Bytes of quest_ws tp_quest_select needs (page bounds, page lists and counts). */
uint64_t tp_quest_select_workspace_bytes(int num_heads, int kv_heads, int len, int k_pages);
/**
 * TokenSelect's vote on the device (Backend.selectTokenVotes), capturable in a CUDA graph, for a cache whose KV
 * heads hold the same t tokens in slots 0 .. t-1 in position order (the caller checks it): params int32 (device): t | query_pos | 0 |
 * high_water[kv_heads]. Each q-head's softmax of the raw q·k over the candidate slots [init, t - local) (float
 * differences, double exp and sum; a head with no visible candidate adds nothing), the probabilities summed over
 * the q-heads in order into one vote per candidate, the k best-voted candidates (ties: lower slot; k <= t - init -
 * local), and out_slots[g * out_stride ..] = 0 .. init-1, the k candidates ascending, t-local .. t-1 for every KV
 * head g, out_counts[g] = init + k + local. keys_ws: tp_tidal_select_workspace_bytes(1, len), zero-filled before the
 * first call (each call leaves its state zero); cur_slot int32 [1] = -1 (left so); ts_ws:
 * tp_tokenselect_workspace_bytes(num_heads, len, k) bytes, 16-byte aligned; len >= t (the grid extent).
 */
int tp_tokenselect_select(uint64_t out_slots, uint64_t out_counts, int out_stride, uint64_t cur_slot, uint64_t keys_ws,
                          uint64_t ts_ws, int len, uint64_t q, uint64_t key_cache, uint64_t pos_cache, int layer,
                          int num_heads, int kv_heads, int head_dim, int capacity, uint64_t params, int k, int init,
                          int local, uint64_t stream);
/** Bytes of ts_ws tp_tokenselect_select needs (raw scores, softmax statistics, the selected candidates). */
uint64_t tp_tokenselect_workspace_bytes(int num_heads, int len, int k);

/** out f32 [2*hd] (device) = key then value of slot of (layer, head), converted from bf16 (exact). */
int tp_kv_read_slot(uint64_t out, uint64_t key_cache, uint64_t value_cache, int layer, int head, int kv_heads,
                    int head_dim, int capacity, int slot, uint64_t stream);

/**
 * Slot of (layer, head) = src f32 [2*hd] (device; key then value), rounded to bf16 (nearest even), and its
 * position entry = position.
 */
int tp_kv_write_slot(uint64_t key_cache, uint64_t value_cache, uint64_t pos_cache, uint64_t src, int layer, int head,
                     int kv_heads, int head_dim, int capacity, int slot, int position, uint64_t stream);

/* ---- TidalDecode token selection on the device (tidal_select.cu) ------------------------------------ */

/**
 * Per KV head g of one layer: score(slot) = max (sum_group = 0) or sum (1, in q-head order) over the group's
 * q-heads of the raw q·k (q f32 [num_heads * head_dim], one row) for the visible slots below high_water[g]; keeps
 * the last slot holding keep_pos when it is visible, plus the best min(k, visible) - 1 other visible slots (ties:
 * lower slot; +0 and -0 tie). out_slots int32 [kv_heads][out_stride] ascending, out_counts int32 [kv_heads] =
 * min(k, visible): the sel_slots / sel_counts of tp_decode_attention_ex2. params int32 (device): high_water[kv_heads]
 * | query_pos | keep_pos. keys_ws: scratch of tp_tidal_select_workspace_bytes(kv_heads, len) bytes (16-byte
 * aligned), len >= max high water (grid extent); it must be zero-filled before the first call and serves one
 * kv_heads value (any len up to the one it was sized for): each call leaves its per-KV-head state zero again.
 * cur_slot int32 [kv_heads] must hold -1 before the first call (each call leaves it at -1).
 */
int tp_tidal_select(uint64_t out_slots, uint64_t out_counts, int out_stride, uint64_t cur_slot, uint64_t keys_ws,
                    int len, uint64_t q, uint64_t key_cache, uint64_t pos_cache, int layer, int num_heads,
                    int kv_heads, int head_dim, int capacity, uint64_t params, int k, int sum_group,
                    uint64_t stream);
/** Bytes of keys_ws tp_tidal_select needs for kv_heads KV heads and a grid extent of len slots (both variants). */
uint64_t tp_tidal_select_workspace_bytes(int kv_heads, int len);
/**
 * TidalDecode's selection layer in one call: decode attention over every visible slot (tp_decode_attention_ex2 with
 * no slot list, high_water = params[0, kv_heads), query_pos = params[kv_heads]) followed by tp_tidal_select of the
 * same q (same outputs, keys_ws, params, cur_slot, k and sum_group; the selection variant as set). With the
 * tensor-core attention (tp_set_attention_variant(3)), head dim 64 or 128 and at most 8 q-heads per KV head, the
 * attention kernel writes the selection's keys from its own q·k as it goes, so the keys are read once instead of
 * twice; the selection then runs from those keys (v1's kernel, or from len 16384 on v2's passes). Those scores are
 * the attention's (q · scale · log2 e in three bf16 terms on tensor cores; group sums added in another order), so
 * slots within rounding of the threshold may be chosen differently from tp_tidal_select; the attention output is the
 * same as tp_decode_attention_ex2's. Otherwise exactly the two calls.
 */
int tp_decode_attention_select(uint64_t out, uint64_t q, uint64_t key_cache, uint64_t value_cache, uint64_t pos_cache,
                               int layer, int num_heads, int kv_heads, int head_dim, int capacity, int max_len,
                               float scale, uint64_t workspace, uint64_t workspace_bytes, uint64_t counters,
                               int single_split_max_len, uint64_t out_slots, uint64_t out_counts, int out_stride,
                               uint64_t cur_slot, uint64_t keys_ws, int len, uint64_t params, int k, int sum_group,
                               uint64_t stream);
/**
 * tp_decode_attention_select with the selection on another stream: the attention on stream, then fork_event recorded
 * on stream and waited for by side_stream, the selection from the attention's keys launched on side_stream, and
 * join_event recorded there. The caller makes every later reader of the selection (out_slots, out_counts, cur_slot)
 * and of keys_ws wait for join_event (tp_stream_wait_event): TidalDecode's selection is read layers later, so it runs
 * beside the layers in between. Where the tensor-core kernel does not apply, the selection (tp_tidal_select, which
 * reads q) runs on stream and join_event is recorded on stream. side_stream 0: tp_decode_attention_select.
 * Capturable (the fork and join become graph edges); the join must precede the end of a capture.
 */
int tp_decode_attention_select_side(uint64_t out, uint64_t q, uint64_t key_cache, uint64_t value_cache,
                                    uint64_t pos_cache, int layer, int num_heads, int kv_heads, int head_dim,
                                    int capacity, int max_len, float scale, uint64_t workspace,
                                    uint64_t workspace_bytes, uint64_t counters, int single_split_max_len,
                                    uint64_t out_slots, uint64_t out_counts, int out_stride, uint64_t cur_slot,
                                    uint64_t keys_ws, int len, uint64_t params, int k, int sum_group, uint64_t stream,
                                    uint64_t side_stream, uint64_t fork_event, uint64_t join_event);
/**
 * Which implementation tp_tidal_select launches from now on (process-wide): 0 (default) automatic (from len 16384
 * on 3 where it applies, else 2; below 16384 1), 1 the first version (one select block per KV head), 2 the multi-block selection with the first radix
 * histogram fused into the score kernel, 3 = 2 with a coalesced score kernel (hd/8 lanes per key row, q in
 * registers; head_dim 64/128/256, groups <= 8, else 2). 1 and 2 have identical output; 3 sums each q·k in another
 * order, so slots whose scores are within rounding of the threshold may be chosen differently. A captured graph
 * keeps what it was captured with.
 */
int tp_set_tidal_select_variant(int variant);
/** The setting tp_set_tidal_select_variant made (0, 1, 2 or 3). */
int tp_get_tidal_select_variant(void);
/**
 * Keys per block of the histogram pass of a selection from keys another kernel wrote (the selection layer's attention,
 * the quantized cache's and Quest's / TokenSelect's selections): 0 = the default 2048, else a multiple of 128 up to
 * 65536 (process-wide; the same selection for any setting). A captured graph keeps what it was captured with.
 */
int tp_tidal_select_set_hist_rows(int rows_per_block);
/**
 * 1: the collect pass of a selection from keys resolves its threshold with 8 candidate-list entries in flight per
 * thread (every load before the atomics that use them); 0 (the default until it is timed on a GPU): one at a time.
 * Process-wide; the same selection either way. A captured graph keeps what it was captured with.
 */
int tp_tidal_select_set_collect_batch(int on);

/* ---- selection over the vocabulary (topk_select.cu) -------------------------------------------------- */

/** Bytes of workspace for tp_argmax / tp_topk over count elements with k results. */
uint64_t tp_topk_workspace_bytes(int count, int k);
/** out_index int32 [1], out_value f32 [1] (device) = argmax of x f32 [count] (ties: lowest index). */
int tp_argmax(uint64_t x, int count, uint64_t out_index, uint64_t out_value, uint64_t workspace,
              uint64_t workspace_bytes, uint64_t stream);
/**
 * The k largest of x f32 [count] without a full sort (per-block bitonic top-k, then merge passes):
 * out_index int32 [k], out_value f32 [k] (device), descending, ties lowest index first. k <= 1024.
 */
int tp_topk(uint64_t x, int count, int k, uint64_t out_index, uint64_t out_value, uint64_t workspace,
            uint64_t workspace_bytes, uint64_t stream);

/* ---- Cut-Cross-Entropy log-sum-exp (cce_lse.cu) ---------------------------------------------------- */

/** Bytes of workspace tp_cce_lse needs for n rows (n * 64 splits * 2 floats; any vocabulary). */
uint64_t tp_cce_lse_workspace_bytes(int n);
/**
 * Bytes of workspace tp_cce_lse needs for n rows of dim under a variant (1-4; 0 = the variant set now): variant 1
 * as tp_cce_lse_workspace_bytes(n); variants 2-4 add a bf16 copy of h (n * dim * 2 bytes). Variants 2-4 with a
 * smaller workspace are refused (TP_ERR_BAD_ARGUMENT).
 */
uint64_t tp_cce_lse_workspace_bytes_for(int n, int dim, int variant);
/**
 * Which tp_cce_lse implementation runs from now on (process-wide): 1 the first tensor-core kernel, 2 (default) the
 * cp.async / ldmatrix kernel with 128 x 256 block tiles and D in chunks of 32 through 4 stages, 3 and 4 the same
 * kernel with D in chunks of 64 through 3 or 4 stages (h rounded to bf16 only: precise = 1 still runs variant 1; a
 * device without the shared memory a shape needs runs the next smaller one: 4 -> 3 -> 2 -> 1). Same outputs
 * contract; variants 2-4 need tp_cce_lse_workspace_bytes_for(n, dim, variant). TP_ERR_BAD_ARGUMENT outside 1-4.
 */
int tp_cce_set_variant(int variant);
/** The setting tp_cce_set_variant made (1 to 4). */
int tp_cce_get_variant(void);
/** Vocabulary splits tp_cce_lse uses for n rows over vocab entries on the current device under the variant set
 *  now with precise = 0 (informational). */
int tp_cce_lse_splits(int n, int vocab);
/**
 * lse f32 [n] = log sum_v exp(h_i . W_v) and target_logit f32 [n] = h_i . W_{t_i} (NaN where t_i < 0 or
 * t_i >= vocab) for hidden f32 [n, dim] and lm_head bf16 [vocab, dim] (row-major), without materialising the
 * [n, vocab] logits (tensor-core tiles, online softmax per vocabulary split, then a merge kernel).
 * targets int32 [n] (device) or 0 (no targets); target_logit 0 = not wanted. precise = 1: h split into
 * bf16 hi + lo (about f32 accuracy, two MMAs per product); 0: h rounded to bf16 (as the cuBLAS matmul path).
 * workspace: tp_cce_lse_workspace_bytes(n) bytes of device memory. Returns TP_ERR_UNSUPPORTED (nothing
 * launched) unless dim % 8 == 0 and hidden and lm_head are 16-byte aligned.
 */
int tp_cce_lse(uint64_t lse, uint64_t target_logit, uint64_t hidden, uint64_t lm_head, uint64_t targets, int n,
               int vocab, int dim, int precise, uint64_t workspace, uint64_t workspace_bytes, uint64_t stream);
/**
 * Naive baseline over materialised logits f32 [n, vocab]: lse f32 [n] (row max, then sum of exp) and
 * target_logit f32 [n] (gathered; NaN for ignored targets; 0 = not wanted). targets int32 [n] or 0.
 */
int tp_lse_rows(uint64_t lse, uint64_t target_logit, uint64_t logits, uint64_t targets, int n, int vocab,
                uint64_t stream);
/**
 * Chunked log-sum-exp over materialised logits (CCE through cuBLAS: Java's CudaCce variant "gemm" makes each chunk
 * of logits with cublasGemmEx into a buffer that stays in L2 and folds it here). Folds the chunk logits f32
 * [rows][ld] (columns 0..cols-1 are vocabulary entries v0..v0+cols-1) into state f32 [rows][2] = (running max,
 * sum of exp relative to it; natural base; first = 1 starts the state instead of merging), and writes
 * target_logit[r] = the chunk's logit of targets[r] where that lies in [v0, v0 + cols) (targets int32 [rows] or 0,
 * target_logit 0 = not wanted). ld >= cols, ld % 4 == 0, logits 16-byte aligned.
 */
int tp_lse_chunk(uint64_t state, uint64_t target_logit, uint64_t logits, uint64_t targets, int rows, int cols,
                 int ld, int v0, int first, uint64_t stream);
/** lse f32 [rows] = max + log(sum) of state f32 [rows][2]; target_logit[r] = NaN where targets[r] (0 = none) is
 *  outside [0, vocab) (target_logit 0 = not wanted). */
int tp_lse_chunk_finish(uint64_t lse, uint64_t target_logit, uint64_t state, uint64_t targets, int rows, int vocab,
                        uint64_t stream);
/** hi bf16 [count] = bf16(src), lo bf16 [count] = bf16(src - hi) (round to nearest even; src f32 [count]). */
int tp_f32_split_bf16(uint64_t hi, uint64_t lo, uint64_t src, int64_t count, uint64_t stream);

/* ---- quantized KV cache: KIVI int8 / int4 / int2 (kv_quant.cu) ------------------------------------------
 * Only used by a cache made with a KvQuantSpec (Java: CudaQuantKvCache); the bf16 cache above is unaffected.
 * Per (layer, KV head): window keys/values f32 [L][Hkv][res_cap][hd] (the residual window, exact), a block pool
 * u8 [L][Hkv][max_blocks][tp_kvq_block_bytes] (one record per G tokens: f16 key zero[hd], key scale[hd], value
 * zero[G][ng], value scale[G][ng], key codes [hd][ceil(G*b/8)] packed along tokens, value codes [G][ceil(hd*b/8)]
 * packed along channels; ng = hd / min(G, hd); padded to 16 bytes), positions int32 [L][Hkv][C] (-1 free) and
 * loc int32 [L][Hkv][C] (block*G + lane, or -(window entry + 1)). The quantizer is bit-identical to the CPU's
 * dev.tokenpress.kv.quant.Quant (f16 zero rounded down, scale rounded up, round-half-up codes).
 */

/** Bytes of one block record (0 for bad arguments: bits not 2/4/8, group outside [1, 4096]). */
uint64_t tp_kvq_block_bytes(int head_dim, int group, int bits);
/**
 * Quantizes num_blocks new blocks. plan int32 (device): g[nb] | block id[nb] | src[nb][group], src >= 0 = row of
 * k / v f32 [n, kv_stride] (head g at column g*hd), src < 0 = window entry -src-1 (its current contents). Lanes
 * in the order given (the host sorts them by position). Must run before tp_kvq_window_write of the same step.
 */
int tp_kvq_encode(uint64_t pool, uint64_t window_k, uint64_t window_v, uint64_t k, uint64_t v, int kv_stride,
                  uint64_t plan, int num_blocks, int layer, int kv_heads, int head_dim, int group, int bits,
                  int res_cap, int max_blocks, uint64_t stream);
/**
 * Compaction of partially dead blocks (the CPU cache's): rows i of k / v f32 [m, hd] <- the reconstructed key and
 * value of block lane loc[i] of KV head g[i], plan int32 (device): g[m] | loc[m] (block * group + lane); the CPU's
 * float formulas (key = zero + scale * code, value = code * scale + zero), so re-encoding gives its codes.
 */
int tp_kvq_decode_lanes(uint64_t k, uint64_t v, uint64_t pool, uint64_t plan, int m, int layer, int kv_heads,
                        int head_dim, int group, int bits, int max_blocks, uint64_t stream);
/**
 * Encodes num_blocks blocks from rows of k / v f32 [m, hd] (tp_kvq_decode_lanes' output): plan int32 (device):
 * g[nb] | block id[nb] | lanes[nb] | row[nb][group]; block b gets lanes[b] <= group lanes (min/max over those).
 */
int tp_kvq_encode_rows(uint64_t pool, uint64_t k, uint64_t v, uint64_t plan, int num_blocks, int layer, int kv_heads,
                       int head_dim, int group, int bits, int max_blocks, uint64_t stream);
/** Window entries <- rows of k / v. plan int32 (device): g[count] | entry[count] | row[count]. */
int tp_kvq_window_write(uint64_t window_k, uint64_t window_v, uint64_t k, uint64_t v, int kv_stride, uint64_t plan,
                        int count, int layer, int kv_heads, int head_dim, int res_cap, uint64_t stream);
/**
 * Picks the kernel of tp_kvq_attention for the whole process: 1 = a warp per candidate slot, 2 (the library's
 * default; CudaBackend sets 3) = a lane
 * per candidate slot with the tile's value rows read coalesced, 3 = variant 2 with each key row's loads in flight
 * together and the tile's value rows staged in shared memory (falls back to 2 for layouts with more than 16 value
 * groups per token), 4 = tensor cores over the packed blocks (kvq_mma.cuh: aligned runs of 16 block lanes through
 * mma.sync with the quantization folded into q and p, every other stage rebuilt in f32 in shared memory; decode
 * calls (n = 1) over every slot, no selection list, with a group size that is a multiple of 16; anything else runs
 * variant 3). Same results up to summation order.
 */
int tp_kvq_set_attention_variant(int variant);
/** The variant tp_kvq_attention runs now (1, 2, 3 or 4). */
int tp_kvq_attention_variant(void);
/**
 * Split count of tp_kvq_attention's decode calls (n = 1) from now on, process-wide: ceil(max_len / rows_per_split)
 * splits, at most max_splits (defaults 64 and 128; max_splits 1 .. 1024, rows_per_split a multiple of 32 in
 * 32 .. 65536, else TP_ERR_BAD_ARGUMENT). Results equal up to summation order; the workspace a call needs
 * (tp_kvq_attention_workspace_bytes) follows the setting. For tuning sweeps (KernelBench policies).
 */
int tp_kvq_set_splits(int max_splits, int rows_per_split);
/** The settings of tp_kvq_set_splits now. */
int tp_kvq_max_splits(void);
int tp_kvq_rows_per_split(void);
/** Workspace bytes tp_kvq_attention needs (0 when it runs one split: n > 1 or a short max_len). */
uint64_t tp_kvq_attention_workspace_bytes(int n, int num_heads, int head_dim, int max_len);
/**
 * Attention of q f32 [n, H*hd] over the quantized cache of one layer, dequantization fused into q·k and the value
 * accumulation; candidates, visibility, query_pos, selection and high-water marks as tp_prefill_attention.
 * n == 1: ceil(max_len / 128) splits (<= 64) and a merge kernel; n > 1: one split. hd 64 / 128 only
 * (else TP_ERR_UNSUPPORTED_HEAD_DIM). = tp_kvq_attention_ex with lse2 = 0.
 */
int tp_kvq_attention(uint64_t out, uint64_t q, uint64_t pool, uint64_t window_k, uint64_t window_v, uint64_t pos_cache,
                     uint64_t loc_cache, int layer, int num_heads, int kv_heads, int head_dim, int capacity, int group,
                     int bits, int res_cap, int max_blocks, int n, uint64_t query_pos, uint64_t sel_slots,
                     int sel_stride, uint64_t sel_counts, uint64_t high_water, int max_len, float scale,
                     uint64_t workspace, uint64_t workspace_bytes, uint64_t stream);
/**
 * tp_kvq_attention plus, when lse2 != 0, lse2 f32 [n, H] = log2 of each row and head's softmax denominator over
 * the scores in the log2 domain (max + log2(sum of exp2(s - max)), s = q·k * scale * log2(e); -inf without a
 * visible slot): what tp_kvq_attention_stats turns into probabilities.
 */
int tp_kvq_attention_ex(uint64_t out, uint64_t q, uint64_t pool, uint64_t window_k, uint64_t window_v,
                        uint64_t pos_cache, uint64_t loc_cache, int layer, int num_heads, int kv_heads, int head_dim,
                        int capacity, int group, int bits, int res_cap, int max_blocks, int n, uint64_t query_pos,
                        uint64_t sel_slots, int sel_stride, uint64_t sel_counts, uint64_t high_water, int max_len,
                        float scale, uint64_t workspace, uint64_t workspace_bytes, uint64_t lse2, uint64_t stream);
/**
 * tp_kvq_attention_ex with counters (int32 device array of at least tp_decode_attention_counters(num_heads, kv_heads)
 * entries, zero before the first call; every call leaves them zero; 0 = none): where variant 4 runs a decode call
 * with more than one split, its last split to finish merges the partial states (no merge kernel). Calls that share
 * counters must run one after another (one stream). Without counters, or for any other kernel, exactly
 * tp_kvq_attention_ex.
 */
int tp_kvq_attention_ex2(uint64_t out, uint64_t q, uint64_t pool, uint64_t window_k, uint64_t window_v,
                         uint64_t pos_cache, uint64_t loc_cache, int layer, int num_heads, int kv_heads, int head_dim,
                         int capacity, int group, int bits, int res_cap, int max_blocks, int n, uint64_t query_pos,
                         uint64_t sel_slots, int sel_stride, uint64_t sel_counts, uint64_t high_water, int max_len,
                         float scale, uint64_t workspace, uint64_t workspace_bytes, uint64_t lse2, uint64_t counters,
                         uint64_t stream);

/* Ops for KV compression policies over the quantized cache: the contracts of their bf16-cache counterparts, the
 * keys dequantized in registers exactly as tp_kvq_attention does (window entries: the f32 rows). The arguments
 * pool .. max_blocks describe the cache as for tp_kvq_attention (window_v is not needed). hd 64 / 128 only. */

/** tp_query_key_scores over the quantized cache (query_pos by value, high_water int32 [Hkv] in device memory). */
int tp_kvq_query_key_scores(uint64_t out, int out_stride, uint64_t q, uint64_t pool, uint64_t window_k,
                            uint64_t pos_cache, uint64_t loc_cache, int layer, int num_heads, int kv_heads,
                            int head_dim, int capacity, int group, int bits, int res_cap, int max_blocks,
                            int query_pos, uint64_t high_water, int max_high_water, uint64_t stream);
/**
 * tp_tidal_select over the quantized cache (same workspace, params, cur_slot and outputs): the group scores as
 * keys, then tp_tidal_select's selection from them (v1's one-block kernel, or from len 16384 on, as
 * tp_set_tidal_select_variant's automatic rule, v2's histogram / collect / compact passes; ties: lower slot first).
 */
int tp_kvq_tidal_select(uint64_t out_slots, uint64_t out_counts, int out_stride, uint64_t cur_slot, uint64_t keys_ws,
                        int len, uint64_t q, uint64_t pool, uint64_t window_k, uint64_t pos_cache, uint64_t loc_cache,
                        int layer, int num_heads, int kv_heads, int head_dim, int capacity, int group, int bits,
                        int res_cap, int max_blocks, uint64_t params, int k, int sum_group, uint64_t stream);
/**
 * The statistics outputs of tp_decode_attention / tp_prefill_attention for an attention call over the quantized
 * cache: raw_scores f32 [H][C] = q·k of row n-1 at its visible candidates (other entries untouched); prob_sums
 * f32 [Hkv][C] += the attention probabilities summed over the group's q-heads and rows [from_row, n), from lse2
 * f32 [n, H] written by tp_kvq_attention_ex for the same call (same q, candidates and scale). Either output may be 0.
 */
int tp_kvq_attention_stats(uint64_t q, uint64_t pool, uint64_t window_k, uint64_t pos_cache, uint64_t loc_cache,
                           int layer, int num_heads, int kv_heads, int head_dim, int capacity, int group, int bits,
                           int res_cap, int max_blocks, int n, uint64_t query_pos, int from_row, uint64_t lse2,
                           uint64_t sel_slots, int sel_stride, uint64_t sel_counts, uint64_t high_water, float scale,
                           uint64_t raw_scores, uint64_t prob_sums, uint64_t stream);
/** tp_quest_page_scores over the quantized cache (the page bounds of the dequantized keys). */
int tp_kvq_quest_page_scores(uint64_t out, int out_stride, uint64_t q, uint64_t pool, uint64_t window_k,
                             uint64_t pos_cache, uint64_t loc_cache, int layer, int num_heads, int kv_heads,
                             int head_dim, int capacity, int group, int bits, int res_cap, int max_blocks,
                             int query_pos, uint64_t high_water, int page_size, int max_pages, uint64_t stream);

#ifdef __cplusplus
}
#endif

#endif /* TOKENPRESS_H */
