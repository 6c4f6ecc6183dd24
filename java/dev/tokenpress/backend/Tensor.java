package dev.tokenpress.backend;

/**
 * A 2-D buffer owned by a backend: activations are f32 [rows, cols]; weights keep the checkpoint's dtype
 * (CPU: memory-mapped bf16/f16/f32; CUDA: bf16 in device memory). 1-D tensors have rows = 1.
 */
public interface Tensor {
    int rows();

    int cols();

    /** Bytes this tensor occupies in its backend's memory (0 for memory-mapped weights the OS pages in). */
    long bytes();
}
