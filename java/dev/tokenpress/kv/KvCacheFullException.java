package dev.tokenpress.kv;

/** No free slot is left in the KV cache. */
public class KvCacheFullException extends RuntimeException {
    public KvCacheFullException(String message) {
        super(message);
    }
}
