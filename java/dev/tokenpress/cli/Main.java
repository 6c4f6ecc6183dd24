package dev.tokenpress.cli;

import dev.tokenpress.backend.DeviceUnavailableException;
import dev.tokenpress.backend.UnsupportedOpException;
import dev.tokenpress.io.ModelLoadException;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

import java.io.PrintWriter;
import java.io.UncheckedIOException;
import java.nio.file.NoSuchFileException;

/** The {@code tokenpress} command: the only place that calls System.exit. */
@Command(name = "tokenpress", mixinStandardHelpOptions = true, versionProvider = Main.Version.class,
        description = "Compressed decoding of Llama-family models (CPU and CUDA).",
        subcommands = {GenerateCommand.class, ChatCommand.class, ServeCommand.class, EmbedCommand.class, InfoCommand.class, MakeModelCommand.class, BenchCommand.class, PerplexityCommand.class, CompareCommand.class, NeedleCommand.class,
                CommandLine.HelpCommand.class})
public final class Main {

    @Option(names = "--verbose", scope = CommandLine.ScopeType.INHERIT, description = "Print stack traces with errors.")
    boolean verbose;

    public static void main(String[] args) {
        System.exit(run(args, new PrintWriter(System.out, true), new PrintWriter(System.err, true)));
    }

    /** Runs the CLI with the given streams and returns the exit code (tests call this). */
    public static int run(String[] args, PrintWriter out, PrintWriter err) {
        return newCommandLine(out, err).execute(args);
    }

    /** A configured command line whose results go to {@code out} and logs/errors to {@code err}. */
    public static CommandLine newCommandLine(PrintWriter out, PrintWriter err) {
        CommandLine cl = new CommandLine(new Main());
        cl.setOut(out);
        cl.setErr(err);
        cl.setExitCodeExceptionMapper(Main::exitCodeOf);
        cl.setParameterExceptionHandler((ex, a) -> {
            ex.getCommandLine().getErr().println("error: " + ex.getMessage());
            ex.getCommandLine().getErr().println("(run '" + ex.getCommandLine().getCommandSpec().qualifiedName() + " --help' for usage)");
            return ExitCodes.USAGE;
        });
        cl.setExecutionExceptionHandler((ex, commandLine, parseResult) -> {
            boolean verbose = false;
            for (CommandLine.ParseResult pr = parseResult; pr != null; pr = pr.subcommand())
                verbose |= pr.hasMatchedOption("--verbose");
            PrintWriter e = commandLine.getErr();
            e.println("error: " + oneLine(ex));
            if (verbose) ex.printStackTrace(e);
            e.flush();
            return exitCodeOf(ex);
        });
        return cl;
    }

    static int exitCodeOf(Throwable t) {
        if (t instanceof ModelLoadException || t instanceof NoSuchFileException) return ExitCodes.MODEL;
        if (t instanceof UncheckedIOException u && u.getCause() instanceof NoSuchFileException) return ExitCodes.MODEL;
        if (t instanceof DeviceUnavailableException) return ExitCodes.DEVICE;
        if (t.getClass().getSimpleName().equals("CudaOutOfMemoryException")) return ExitCodes.DEVICE;
        if (t instanceof CommandLine.ParameterException || t instanceof UsageException) return ExitCodes.USAGE;
        if (t instanceof UnsupportedOpException) return ExitCodes.DEVICE;
        return ExitCodes.RUNTIME;
    }

    static String oneLine(Throwable t) {
        String m = t.getMessage();
        if (m == null || m.isBlank()) m = t.getClass().getSimpleName();
        else if (!(t instanceof ModelLoadException || t instanceof DeviceUnavailableException || t instanceof UsageException
                || t instanceof IllegalArgumentException || t instanceof UnsupportedOpException))
            m = t.getClass().getSimpleName() + ": " + m;
        int nl = m.indexOf('\n');
        return nl < 0 ? m : m.substring(0, nl);
    }

    /** A user error detected after parsing (e.g. two options that exclude each other). */
    public static final class UsageException extends RuntimeException {
        public UsageException(String message) {
            super(message);
        }
    }

    static final class Version implements CommandLine.IVersionProvider {
        @Override
        public String[] getVersion() {
            String v = Main.class.getPackage().getImplementationVersion();
            return new String[]{"tokenpress " + (v == null ? "dev" : v),
                    "Java " + System.getProperty("java.version") + " (" + System.getProperty("java.vm.name") + ")"};
        }
    }
}
