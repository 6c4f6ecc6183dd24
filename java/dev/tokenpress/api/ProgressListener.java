package dev.tokenpress.api;

/** Receives progress of long operations (loading weights, long prefills). */
@FunctionalInterface
public interface ProgressListener {
    /**
     * @param task  short name, e.g. "load" or "prefill"
     * @param done  units finished so far (done == total marks the end)
     * @param total units in all
     */
    void update(String task, long done, long total);

    ProgressListener NONE = (t, d, n) -> {};
}
