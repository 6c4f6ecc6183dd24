package dev.tokenpress.backend;

import dev.tokenpress.backend.cpu.CpuBackend;

import java.lang.reflect.InvocationTargetException;
import java.util.function.Consumer;

/** Chooses a backend for {@code --device auto|cpu|cuda} and says which one it picked. */
public final class Backends {
    private Backends() {}

    /**
     * @param device  "auto", "cpu" or "cuda"
     * @param threads CPU threads (<= 0: all cores)
     * @param log     receives one line naming the backend chosen (and why CUDA was not, under auto)
     * @throws DeviceUnavailableException for "cuda" when no usable GPU / native library is present
     */
    public static Backend create(String device, int threads, Consumer<String> log) {
        String d = device == null ? "auto" : device.toLowerCase();
        switch (d) {
            case "cpu" -> {
                Backend b = cpu(threads);
                log.accept("backend: " + b.description());
                return b;
            }
            case "cuda" -> {
                Backend b = openCuda();
                log.accept("backend: " + b.description());
                return b;
            }
            case "auto" -> {
                try {
                    Backend b = openCuda();
                    log.accept("backend: " + b.description() + " (auto)");
                    return b;
                } catch (DeviceUnavailableException e) {
                    Backend b = cpu(threads);
                    log.accept("backend: " + b.description() + " (auto; CUDA unavailable: " + e.getMessage() + ")");
                    return b;
                }
            }
            default -> throw new IllegalArgumentException("unknown device '" + device + "': use auto, cpu or cuda");
        }
    }

    private static Backend cpu(int threads) {
        return threads > 0 ? new CpuBackend(threads) : new CpuBackend();
    }

    /** Opens the CUDA backend if its classes and native library are present and a device answers. */
    public static Backend openCuda() {
        try {
            Class<?> c = Class.forName("dev.tokenpress.backend.cuda.CudaBackend");
            return (Backend) c.getMethod("open").invoke(null);
        } catch (ClassNotFoundException | NoSuchMethodException | IllegalAccessException e) {
            throw new DeviceUnavailableException("this build has no CUDA backend");
        } catch (InvocationTargetException e) {
            Throwable t = e.getCause();
            if (t instanceof DeviceUnavailableException due) throw due;
            if (t instanceof RuntimeException re) throw re;
            throw new DeviceUnavailableException(String.valueOf(t), t);
        } catch (LinkageError e) {
            throw new DeviceUnavailableException("CUDA native library could not be loaded: " + e.getMessage(), e);
        }
    }
}
