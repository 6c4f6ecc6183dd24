package dev.tokenpress.api;

/** Receives generated text as soon as it is complete (streaming). */
@FunctionalInterface
public interface TokenListener {
    void onText(String text);
}
