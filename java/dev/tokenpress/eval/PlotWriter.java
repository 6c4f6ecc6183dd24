package dev.tokenpress.eval;

import javax.imageio.ImageIO;
import java.awt.BasicStroke;
import java.awt.Color;
import java.awt.Font;
import java.awt.FontMetrics;
import java.awt.Graphics2D;
import java.awt.RenderingHints;
import java.awt.image.BufferedImage;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.List;
import java.util.Locale;

/**
 * A PNG scatter plot of ΔPPL (against the baseline) over KV cache memory, one labelled point per policy, drawn
 * with Java2D (headless). The file is written to a temporary file beside the target and renamed.
 */
public final class PlotWriter {
    private PlotWriter() {}

    private static final Color[] PALETTE = {new Color(0x1f77b4), new Color(0xd62728), new Color(0x2ca02c), new Color(0xff7f0e),
            new Color(0x9467bd), new Color(0x8c564b), new Color(0xe377c2), new Color(0x7f7f7f), new Color(0xbcbd22), new Color(0x17becf)};

    /** Writes the plot of {@code rows} (their kvBytes and deltaPpl) to {@code file}. */
    public static void write(Path file, String title, List<Perplexity.Result> rows) {
        BufferedImage img = render(title, rows, 1200, 600);
        Path abs = file.toAbsolutePath();
        Path dir = abs.getParent();
        try {
            if (dir != null) Files.createDirectories(dir);
            Path tmp = Files.createTempFile(dir, "." + abs.getFileName(), ".tmp");
            try {
                if (!ImageIO.write(img, "png", tmp.toFile())) throw new IOException("no PNG writer available");
                try {
                    Files.move(tmp, abs, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
                } catch (AtomicMoveNotSupportedException e) {
                    Files.move(tmp, abs, StandardCopyOption.REPLACE_EXISTING);
                }
            } finally {
                Files.deleteIfExists(tmp);
            }
        } catch (IOException e) {
            throw new UncheckedIOException("cannot write the plot " + file + ": " + e.getMessage(), e);
        }
    }

    static BufferedImage render(String title, List<Perplexity.Result> rows, int w, int h) {
        BufferedImage img = new BufferedImage(w, h, BufferedImage.TYPE_INT_RGB);
        Graphics2D g = img.createGraphics();
        g.setRenderingHint(RenderingHints.KEY_ANTIALIASING, RenderingHints.VALUE_ANTIALIAS_ON);
        g.setRenderingHint(RenderingHints.KEY_TEXT_ANTIALIASING, RenderingHints.VALUE_TEXT_ANTIALIAS_ON);
        g.setColor(Color.WHITE);
        g.fillRect(0, 0, w, h);
        int left = 90, right = 360, top = 50, bottom = 70;
        int pw = w - left - right, ph = h - top - bottom;

        double xmin = Double.POSITIVE_INFINITY, xmax = 0, ymin = 0, ymax = 0;
        for (Perplexity.Result r : rows) {
            double x = r.kvBytes() / 1048576.0, y = Double.isNaN(r.deltaPpl()) ? 0 : r.deltaPpl();
            xmin = Math.min(xmin, x);
            xmax = Math.max(xmax, x);
            ymin = Math.min(ymin, y);
            ymax = Math.max(ymax, y);
        }
        if (!(xmin < Double.POSITIVE_INFINITY)) xmin = 0;
        xmin = 0;
        if (xmax <= xmin) xmax = xmin + 1;
        if (ymax - ymin < 1e-9) ymax = ymin + 1;
        double[] xt = ticks(xmin, xmax * 1.08), yt = ticks(ymin - 0.05 * (ymax - ymin), ymax + 0.12 * (ymax - ymin));
        double x0 = xt[0], x1 = xt[xt.length - 1], y0 = yt[0], y1 = yt[yt.length - 1];

        Font small = new Font(Font.SANS_SERIF, Font.PLAIN, 13), bold = new Font(Font.SANS_SERIF, Font.BOLD, 16);
        g.setFont(bold);
        g.setColor(Color.BLACK);
        FontMetrics fm = g.getFontMetrics();
        g.drawString(title, (w - fm.stringWidth(title)) / 2, 30);
        g.setFont(small);
        fm = g.getFontMetrics();
        // grid and ticks
        for (double t : xt) {
            int px = left + (int) Math.round((t - x0) / (x1 - x0) * pw);
            g.setColor(new Color(0xE6E6E6));
            g.drawLine(px, top, px, top + ph);
            g.setColor(Color.DARK_GRAY);
            String s = num(t);
            g.drawString(s, px - fm.stringWidth(s) / 2, top + ph + 18);
        }
        for (double t : yt) {
            int py = top + ph - (int) Math.round((t - y0) / (y1 - y0) * ph);
            g.setColor(new Color(0xE6E6E6));
            g.drawLine(left, py, left + pw, py);
            g.setColor(Color.DARK_GRAY);
            String s = num(t);
            g.drawString(s, left - 8 - fm.stringWidth(s), py + 5);
        }
        // zero line (the baseline)
        if (y0 <= 0 && y1 >= 0) {
            int py = top + ph - (int) Math.round((0 - y0) / (y1 - y0) * ph);
            g.setColor(Color.GRAY);
            g.setStroke(new BasicStroke(1f, BasicStroke.CAP_BUTT, BasicStroke.JOIN_MITER, 10f, new float[]{6f, 4f}, 0f));
            g.drawLine(left, py, left + pw, py);
            g.setStroke(new BasicStroke(1f));
        }
        g.setColor(Color.BLACK);
        g.drawRect(left, top, pw, ph);
        String xl = "KV cache memory (MiB, cache.bytes())", yl = "ΔPPL vs baseline";
        g.drawString(xl, left + (pw - fm.stringWidth(xl)) / 2, h - 25);
        Graphics2D gy = (Graphics2D) g.create();
        gy.rotate(-Math.PI / 2);
        gy.drawString(yl, -(top + (ph + fm.stringWidth(yl)) / 2), 25);
        gy.dispose();
        // points
        int i = 0;
        for (Perplexity.Result r : rows) {
            double x = r.kvBytes() / 1048576.0, y = Double.isNaN(r.deltaPpl()) ? 0 : r.deltaPpl();
            int px = left + (int) Math.round((x - x0) / (x1 - x0) * pw);
            int py = top + ph - (int) Math.round((y - y0) / (y1 - y0) * ph);
            Color c = PALETTE[i++ % PALETTE.length];
            g.setColor(c);
            g.fillOval(px - 6, py - 6, 12, 12);
            g.setColor(c.darker());
            String label = Integer.toString(i);
            g.drawString(label, px + 8, py - 6 - ((i + 1) % 2) * 12);
            // legend: number, colour, spec and ΔPPL
            int ly = top + 8 + 20 * (i - 1);
            g.setColor(c);
            g.fillOval(left + pw + 16, ly - 9, 10, 10);
            g.setColor(Color.BLACK);
            String spec = r.kv().length() > 34 ? r.kv().substring(0, 33) + "…" : r.kv();
            g.drawString(String.format(Locale.ROOT, "%d  %s  %+.3f", i, spec, y), left + pw + 32, ly);
        }
        g.dispose();
        return img;
    }

    /** About 6 round tick values covering [lo, hi]. */
    static double[] ticks(double lo, double hi) {
        double span = hi - lo;
        double step = Math.pow(10, Math.floor(Math.log10(span / 6)));
        for (double m : new double[]{1, 2, 2.5, 5, 10}) {
            if (span / (step * m) <= 7) {
                step *= m;
                break;
            }
        }
        double a = Math.floor(lo / step) * step, b = Math.ceil(hi / step) * step;
        int k = (int) Math.round((b - a) / step);
        double[] t = new double[k + 1];
        for (int i = 0; i <= k; i++) t[i] = a + i * step;
        return t;
    }

    private static String num(double v) {
        if (Math.abs(v) < 1e-12) return "0";
        double a = Math.abs(v);
        if (a >= 100) return String.format(Locale.ROOT, "%.0f", v);
        if (a >= 1) return String.format(Locale.ROOT, "%.2f", v).replaceAll("\\.?0+$", "");
        return String.format(Locale.ROOT, "%.4f", v).replaceAll("0+$", "");
    }
}
