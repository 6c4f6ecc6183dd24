package dev.tokenpress.cli;

import java.util.Locale;

/** Human-readable byte counts (binary units). */
final class Bytes {
    private Bytes() {}

    static String human(long b) {
        if (b < 1024) return b + " B";
        String[] u = {"KiB", "MiB", "GiB", "TiB"};
        double v = b;
        int i = -1;
        while (v >= 1024 && i < u.length - 1) {
            v /= 1024;
            i++;
        }
        return String.format(Locale.ROOT, "%.2f %s", v, u[i]);
    }
}
