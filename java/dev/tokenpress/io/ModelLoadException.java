package dev.tokenpress.io;

/**
 * A model directory or file cannot be loaded. The message is a single line that names the offending file
 * (and tensor or field where applicable) and says what to do; the CLI prints it and exits with code 3.
 */
public class ModelLoadException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public ModelLoadException(String message) {
        super(oneLine(message));
    }

    public ModelLoadException(String message, Throwable cause) {
        super(oneLine(message), cause);
    }

    /** Collapses line breaks so the message always prints as one line. */
    static String oneLine(String s) {
        if (s == null) return "model load error";
        return s.replaceAll("\\s*[\\r\\n]+\\s*", " ").trim();
    }

    /** First line of an exception's message (for wrapping parser errors), never null. */
    static String firstLine(Throwable t) {
        String m = t.getMessage();
        if (m == null || m.isBlank()) return t.getClass().getSimpleName();
        int nl = m.indexOf('\n');
        return (nl < 0 ? m : m.substring(0, nl)).trim();
    }
}
