package dev.tokenpress.backend.cuda;

import org.bytedeco.javacpp.Loader;

/**
 * Probes once whether the CUDA backend can run here and remembers the answer (a JavaCPP class that failed to
 * load stays dead, so it is never touched twice). Order: our JNI library (kernels + static CUDA runtime; loads
 * without a driver) → a device answering cudaGetDeviceCount → cuBLAS/cudart 13 shared libraries for the
 * bytedeco bindings. {@link #unavailableReason()} says which step failed and what to do.
 */
public final class Cuda {
    private Cuda() {}

    private static final String NATIVE_RESOURCE = "linux-x86_64/libjniTpNative.so";
    private static volatile boolean probed;
    private static String reason;
    private static int deviceCount;

    /** True when the JNI library, a driver, a device and cuBLAS are all usable. */
    public static boolean available() {
        probe();
        return reason == null;
    }

    /** Why CUDA is unavailable (one line), or null when it is available. */
    public static String unavailableReason() {
        probe();
        return reason;
    }

    /** Number of CUDA devices (0 when unavailable). */
    public static int deviceCount() {
        probe();
        return deviceCount;
    }

    /** Whether this build carries the JNI library (false when it was built without nvcc). */
    public static boolean nativeLibraryPresent() {
        return TpNative.class.getResource(NATIVE_RESOURCE) != null;
    }

    /** Whether the JNI library itself loaded (it loads without a GPU); false when missing or broken. */
    public static boolean nativeLibraryLoaded() {
        probe();
        return nativeLoaded;
    }

    private static boolean nativeLoaded;

    private static synchronized void probe() {
        if (probed) return;
        String why = null;
        try {
            if (!nativeLibraryPresent()) {
                why = "the tokenpress CUDA native library is missing from this build (it was built without nvcc; "
                        + "rebuild with the CUDA 13 toolkit at /usr/local/cuda)";
            } else {
                Class.forName(TpNative.class.getName(), true, Cuda.class.getClassLoader());
                nativeLoaded = true;
            }
        } catch (Throwable t) {
            why = "the tokenpress CUDA native library could not be loaded: " + rootMessage(t);
        }
        if (why == null) {
            try {
                int[] n = {0};
                int rc = TpNative.tp_device_count(n);
                if (rc != TpNative.TP_OK) {
                    int ce = TpNative.tp_last_cuda_error();
                    String msg = TpNative.tp_last_error_message().getString();
                    if (ce == 35 || ce == 34)
                        why = "no usable NVIDIA driver (libcuda.so.1 missing or older than CUDA 13): " + msg;
                    else if (ce == 100) why = "no CUDA device found (" + msg + ")";
                    else why = "CUDA initialisation failed: " + msg;
                } else if (n[0] == 0) {
                    why = "no CUDA device found";
                } else {
                    deviceCount = n[0];
                }
            } catch (Throwable t) {
                why = "CUDA initialisation failed: " + rootMessage(t);
            }
        }
        if (why == null) {
            try {
                Loader.load(org.bytedeco.cuda.global.cublas.class);
            } catch (Throwable t) {
                why = "cuBLAS 13 could not be loaded (put libcublas.so.13, libcublasLt.so.13 and libcudart.so.13 on "
                        + "LD_LIBRARY_PATH, e.g. site-packages/nvidia/cu13/lib of a CUDA 13 PyTorch): " + rootMessage(t);
                deviceCount = 0;
            }
        }
        reason = why;
        probed = true;
    }

    static String rootMessage(Throwable t) {
        Throwable r = t;
        while (r.getCause() != null && r.getCause() != r) r = r.getCause();
        String m = r.getMessage();
        return r.getClass().getSimpleName() + (m == null ? "" : ": " + m.lines().findFirst().orElse(""));
    }
}
