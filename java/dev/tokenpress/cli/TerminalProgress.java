package dev.tokenpress.cli;

import dev.tokenpress.api.ProgressListener;
import me.tongfei.progressbar.ProgressBar;
import me.tongfei.progressbar.ProgressBarBuilder;
import me.tongfei.progressbar.ProgressBarStyle;

/** Progress bars on stderr, only when stderr is an interactive terminal (never in pipes, files or tests). */
final class TerminalProgress implements ProgressListener {
    private ProgressBar bar;
    private String task;

    static ProgressListener forStderr() {
        return interactive() && System.getenv("TERM") != null && !"dumb".equals(System.getenv("TERM"))
                ? new TerminalProgress() : ProgressListener.NONE;
    }

    /** A console attached to a terminal (Java 22+ returns a Console even when redirected: ask isTerminal()). */
    static boolean interactive() {
        java.io.Console c = System.console();
        if (c == null) return false;
        try {
            return (Boolean) java.io.Console.class.getMethod("isTerminal").invoke(c);
        } catch (ReflectiveOperationException e) {
            return true; // before Java 22 a non-null console means a terminal
        }
    }

    @Override
    public synchronized void update(String task, long done, long total) {
        if (bar == null || !task.equals(this.task)) {
            if (bar != null) bar.close();
            this.task = task;
            bar = new ProgressBarBuilder().setTaskName(task).setInitialMax(total).setStyle(ProgressBarStyle.ASCII)
                    .setConsumer(new me.tongfei.progressbar.ConsoleProgressBarConsumer(System.err)).continuousUpdate().build();
        }
        bar.stepTo(done);
        if (done >= total) {
            bar.close();
            bar = null;
            this.task = null;
        }
    }
}
