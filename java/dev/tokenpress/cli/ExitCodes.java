package dev.tokenpress.cli;

/** Process exit codes of the tokenpress CLI. */
public final class ExitCodes {
    private ExitCodes() {}

    public static final int OK = 0;
    /** Something failed while running (numerical error, I/O while writing, internal error). */
    public static final int RUNTIME = 1;
    /** Bad command line: unknown option, missing argument, value out of range. */
    public static final int USAGE = 2;
    /** The model directory or one of its files is missing, malformed or unsupported. */
    public static final int MODEL = 3;
    /** The GPU was asked for and cannot be used (no device, no driver, no native library, out of memory). */
    public static final int DEVICE = 4;
}
