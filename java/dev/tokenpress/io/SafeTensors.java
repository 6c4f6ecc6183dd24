package dev.tokenpress.io;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.channels.WritableByteChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Comparator;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentHashMap;
import java.util.stream.Stream;

/**
 * Reader (and writer) for Hugging Face safetensors checkpoints.
 *
 * <p>Layout of a file: an 8-byte little-endian unsigned length {@code N}, then {@code N} bytes of UTF-8 JSON mapping
 * tensor names to {@code {"dtype", "shape", "data_offsets": [begin, end]}} (plus an optional {@code __metadata__}
 * string map), then the data section; offsets are relative to byte {@code 8 + N}.
 *
 * <p>Tensor data is memory-mapped read-only, one mapping per tensor, and never copied onto the Java heap. All header
 * entries are validated when the file is opened, so a corrupt or truncated checkpoint fails fast with a one-line
 * {@link ModelLoadException} naming the file and tensor.
 */
public final class SafeTensors implements AutoCloseable {

    /** Standard single-file name. */
    public static final String SINGLE_FILE = "model.safetensors";
    /** Standard index file of a sharded checkpoint. */
    public static final String INDEX_FILE = "model.safetensors.index.json";
    /** Largest header tokenpress accepts (real headers are well under 1 MB). */
    static final long MAX_HEADER_BYTES = 100L * 1024 * 1024;
    /** Largest single tensor that can be mapped as one ByteBuffer. */
    static final long MAX_TENSOR_BYTES = Integer.MAX_VALUE;

    private static final ObjectMapper JSON = new ObjectMapper();

    /** Where one tensor lives. */
    private record Slot(String name, DType dtype, long[] shape, long fileOffset, long bytes, Path file,
                        FileChannel channel) {}

    private final String label;
    private final Map<String, Slot> slots;          // sorted by name
    private final Map<String, String> metadata;
    private final List<FileChannel> channels;
    private final Map<String, TensorData> mapped = new ConcurrentHashMap<>();
    private volatile boolean closed;

    private SafeTensors(String label, Map<String, Slot> slots, Map<String, String> metadata,
                        List<FileChannel> channels) {
        this.label = label;
        this.slots = Collections.unmodifiableMap(slots);
        this.metadata = Collections.unmodifiableMap(metadata);
        this.channels = channels;
    }

    // ------------------------------------------------------------------------------------------------ opening

    /**
     * Opens the weights of a model directory: {@code model.safetensors}, or a sharded checkpoint described by
     * {@code model.safetensors.index.json}, or else the only {@code *.safetensors} file present. A path to a file is
     * opened with {@link #openFile(Path)}.
     */
    public static SafeTensors open(Path modelDir) {
        if (Files.isRegularFile(modelDir)) return openFile(modelDir);
        if (!Files.isDirectory(modelDir)) {
            throw new ModelLoadException(modelDir + ": model directory not found; pass the directory that holds "
                    + "config.json and the *.safetensors weights");
        }
        Path index = modelDir.resolve(INDEX_FILE);
        if (Files.isRegularFile(index)) return openSharded(modelDir, index);
        Path single = modelDir.resolve(SINGLE_FILE);
        if (Files.isRegularFile(single)) return openFile(single, modelDir.toString());
        List<Path> candidates;
        try (Stream<Path> s = Files.list(modelDir)) {
            candidates = s.filter(p -> p.getFileName().toString().endsWith(".safetensors"))
                    .filter(Files::isRegularFile).sorted().toList();
        } catch (IOException e) {
            throw new ModelLoadException(modelDir + ": cannot list the model directory (" + ModelLoadException.firstLine(e)
                    + ")", e);
        }
        if (candidates.size() == 1) return openFile(candidates.get(0), modelDir.toString());
        if (candidates.isEmpty()) {
            throw new ModelLoadException(modelDir + ": no " + SINGLE_FILE + " (or " + INDEX_FILE
                    + ") found; download the safetensors weights of the model (PyTorch .bin checkpoints are not read)");
        }
        throw new ModelLoadException(modelDir + ": " + candidates.size() + " *.safetensors files but no " + INDEX_FILE
                + "; add the index file of the sharded checkpoint or keep a single " + SINGLE_FILE);
    }

    /** Opens one safetensors file. */
    public static SafeTensors openFile(Path file) {
        return openFile(file, file.toString());
    }

    private static SafeTensors openFile(Path file, String label) {
        FileChannel ch = openChannel(file);
        try {
            Map<String, String> meta = new LinkedHashMap<>();
            Map<String, Slot> slots = parse(file, ch, meta);
            List<FileChannel> chans = new ArrayList<>();
            chans.add(ch);
            return new SafeTensors(label, slots, meta, chans);
        } catch (RuntimeException e) {
            closeQuietly(ch);
            throw e;
        }
    }

    private static SafeTensors openSharded(Path dir, Path index) {
        JsonNode root;
        try {
            root = JSON.readTree(Files.readAllBytes(index));
        } catch (JsonProcessingException e) {
            throw new ModelLoadException(index + ": invalid JSON (" + ModelLoadException.firstLine(e)
                    + "); re-download the index file", e);
        } catch (IOException e) {
            throw new ModelLoadException(index + ": cannot read (" + ModelLoadException.firstLine(e) + ")", e);
        }
        JsonNode wm = root == null ? null : root.get("weight_map");
        if (wm == null || !wm.isObject()) {
            throw new ModelLoadException(index + ": missing \"weight_map\" object; re-download the index file");
        }
        Map<String, FileChannel> shardChannels = new LinkedHashMap<>();
        Map<String, Map<String, Slot>> shardSlots = new LinkedHashMap<>();
        Map<String, String> meta = new LinkedHashMap<>();
        Map<String, Slot> slots = new TreeMap<>();
        try {
            for (Iterator<Map.Entry<String, JsonNode>> it = wm.fields(); it.hasNext(); ) {
                Map.Entry<String, JsonNode> e = it.next();
                String tensor = e.getKey();
                if (!e.getValue().isTextual()) {
                    throw new ModelLoadException(index + ": weight_map entry for tensor " + tensor
                            + " is not a file name; re-download the index file");
                }
                String shardName = e.getValue().asText();
                Map<String, Slot> inShard = shardSlots.get(shardName);
                if (inShard == null) {
                    Path shard = dir.resolve(shardName).normalize();
                    if (!Files.isRegularFile(shard)) {
                        throw new ModelLoadException(index + ": shard " + shardName + " (holding tensor " + tensor
                                + ") not found in " + dir + "; download all shards of the model");
                    }
                    FileChannel ch = openChannel(shard);
                    shardChannels.put(shardName, ch);
                    Map<String, String> shardMeta = new LinkedHashMap<>();
                    inShard = parse(shard, ch, shardMeta);
                    shardSlots.put(shardName, inShard);
                    shardMeta.forEach(meta::putIfAbsent);
                }
                Slot s = inShard.get(tensor);
                if (s == null) {
                    throw new ModelLoadException(index + ": weight_map puts tensor " + tensor + " in shard " + shardName
                            + ", which does not contain it; re-download the model");
                }
                slots.put(tensor, s);
            }
        } catch (RuntimeException e) {
            shardChannels.values().forEach(SafeTensors::closeQuietly);
            throw e;
        }
        return new SafeTensors(dir.toString(), slots, meta, new ArrayList<>(shardChannels.values()));
    }

    private static FileChannel openChannel(Path file) {
        try {
            return FileChannel.open(file, StandardOpenOption.READ);
        } catch (NoSuchFileException e) {
            throw new ModelLoadException(file + ": file not found", e);
        } catch (IOException e) {
            throw new ModelLoadException(file + ": cannot open (" + ModelLoadException.firstLine(e) + ")", e);
        }
    }

    /** Reads and validates the header of one file. */
    private static Map<String, Slot> parse(Path file, FileChannel ch, Map<String, String> metaOut) {
        long size;
        byte[] header;
        long n;
        try {
            size = ch.size();
            if (size < 8) {
                throw new ModelLoadException(file + ": file is " + size
                        + " bytes, too small to be a safetensors file (truncated download?); re-download it");
            }
            ByteBuffer lenBuf = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN);
            readFully(ch, lenBuf, 0);
            n = lenBuf.getLong(0);
            if (n < 2 || n > MAX_HEADER_BYTES) {
                throw new ModelLoadException(file + ": header length " + Long.toUnsignedString(n)
                        + " is implausible (limit " + MAX_HEADER_BYTES + "); not a safetensors file or corrupt, re-download it");
            }
            if (8 + n > size) {
                throw new ModelLoadException(file + ": header length " + n + " overruns the file (" + size
                        + " bytes); the file is truncated or not safetensors, re-download it");
            }
            ByteBuffer hb = ByteBuffer.allocate((int) n);
            readFully(ch, hb, 8);
            header = hb.array();
        } catch (IOException e) {
            throw new ModelLoadException(file + ": cannot read header (" + ModelLoadException.firstLine(e) + ")", e);
        }
        JsonNode root;
        try {
            root = JSON.readTree(header);
        } catch (IOException e) {
            throw new ModelLoadException(file + ": header is not valid JSON (" + ModelLoadException.firstLine(e)
                    + "); the file is corrupt, re-download it", e);
        }
        if (root == null || !root.isObject()) {
            throw new ModelLoadException(file + ": header is not a JSON object; the file is corrupt, re-download it");
        }
        long dataStart = 8 + n;
        long dataSize = size - dataStart;
        Map<String, Slot> slots = new TreeMap<>();
        for (Iterator<Map.Entry<String, JsonNode>> it = root.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            String name = e.getKey();
            JsonNode v = e.getValue();
            if (name.equals("__metadata__")) {
                if (v.isObject()) {
                    for (Iterator<Map.Entry<String, JsonNode>> m = v.fields(); m.hasNext(); ) {
                        Map.Entry<String, JsonNode> me = m.next();
                        metaOut.put(me.getKey(), me.getValue().isTextual() ? me.getValue().asText() : me.getValue().toString());
                    }
                }
                continue;
            }
            String where = file + ": tensor " + name;
            if (!v.isObject()) throw new ModelLoadException(where + " has a malformed header entry; re-download the file");
            JsonNode dt = v.get("dtype");
            if (dt == null || !dt.isTextual()) {
                throw new ModelLoadException(where + " has no dtype; the file is corrupt, re-download it");
            }
            DType dtype = DType.fromSafetensors(dt.asText());
            if (dtype == null) {
                throw new ModelLoadException(where + " has unsupported dtype " + dt.asText()
                        + " (tokenpress reads F32, F16 and BF16); use a BF16/F16/F32 checkpoint (quantized files are not read)");
            }
            JsonNode sh = v.get("shape");
            if (sh == null || !sh.isArray()) {
                throw new ModelLoadException(where + " has no shape; the file is corrupt, re-download it");
            }
            long[] shape = new long[sh.size()];
            long numel = 1;
            for (int i = 0; i < shape.length; i++) {
                JsonNode d = sh.get(i);
                if (!d.isIntegralNumber() || !d.canConvertToLong() || d.asLong() < 0) {
                    throw new ModelLoadException(where + " has an invalid shape " + sh + "; the file is corrupt, re-download it");
                }
                shape[i] = d.asLong();
                try {
                    numel = Math.multiplyExact(numel, shape[i]);
                } catch (ArithmeticException ex) {
                    throw new ModelLoadException(where + " has an absurd shape " + sh + "; the file is corrupt, re-download it");
                }
            }
            JsonNode off = v.get("data_offsets");
            if (off == null || !off.isArray() || off.size() != 2 || !off.get(0).isIntegralNumber()
                    || !off.get(1).isIntegralNumber()) {
                throw new ModelLoadException(where + " has no valid data_offsets; the file is corrupt, re-download it");
            }
            long begin = off.get(0).asLong(), end = off.get(1).asLong();
            long need;
            try {
                need = Math.multiplyExact(numel, (long) dtype.bytes);
            } catch (ArithmeticException ex) {
                throw new ModelLoadException(where + " has an absurd shape " + sh + "; the file is corrupt, re-download it");
            }
            if (begin < 0 || end < begin || end > dataSize) {
                throw new ModelLoadException(where + " has data_offsets [" + begin + ", " + end
                        + "] outside the data section (" + dataSize + " bytes); the file is truncated, re-download it");
            }
            if (end - begin != need) {
                throw new ModelLoadException(where + " has shape " + sh + " x " + dtype.safetensorsName + " = " + need
                        + " bytes but data_offsets span " + (end - begin) + " bytes; the file is corrupt, re-download it");
            }
            if (need > MAX_TENSOR_BYTES) {
                throw new ModelLoadException(where + " is " + need
                        + " bytes; tensors over 2 GiB are not supported (re-shard or split the checkpoint)");
            }
            slots.put(name, new Slot(name, dtype, shape, dataStart + begin, need, file, ch));
        }
        return slots;
    }

    private static void readFully(FileChannel ch, ByteBuffer buf, long pos) throws IOException {
        while (buf.hasRemaining()) {
            int r = ch.read(buf, pos);
            if (r < 0) throw new IOException("unexpected end of file");
            pos += r;
        }
    }

    // ------------------------------------------------------------------------------------------------ access

    /** Memory-maps tensor {@code name}; the returned buffer is little-endian, read-only, position 0, limit = bytes. */
    public TensorData get(String name) {
        if (closed) throw new IllegalStateException(label + ": safetensors already closed");
        TensorData td = mapped.get(name);
        if (td != null) return td;
        Slot s = slots.get(name);
        if (s == null) throw new ModelLoadException(label + ": missing tensor " + name
                + "; the checkpoint does not match the config (wrong or incomplete model)");
        return mapped.computeIfAbsent(name, k -> map(s));
    }

    private static TensorData map(Slot s) {
        try {
            ByteBuffer buf = s.bytes == 0 ? ByteBuffer.allocate(0).asReadOnlyBuffer()
                    : s.channel.map(FileChannel.MapMode.READ_ONLY, s.fileOffset, s.bytes);
            buf.order(ByteOrder.LITTLE_ENDIAN);
            return new TensorData(s.name, s.dtype, s.shape.clone(), buf, s.file);
        } catch (IOException e) {
            throw new ModelLoadException(s.file + ": tensor " + s.name + " cannot be memory-mapped ("
                    + ModelLoadException.firstLine(e) + ")", e);
        }
    }

    /** Whether tensor {@code name} exists. */
    public boolean has(String name) {
        return slots.containsKey(name);
    }

    /** All tensor names, sorted. */
    public Set<String> names() {
        return slots.keySet();
    }

    /** Sum of all tensors' data sizes in bytes. */
    public long totalBytes() {
        long t = 0;
        for (Slot s : slots.values()) t += s.bytes;
        return t;
    }

    /** The {@code __metadata__} map (empty when absent). */
    public Map<String, String> metadata() {
        return metadata;
    }

    /** Dtype of a tensor without mapping it (null when absent). */
    public DType dtype(String name) {
        Slot s = slots.get(name);
        return s == null ? null : s.dtype;
    }

    /** Shape of a tensor without mapping it (null when absent). */
    public long[] shape(String name) {
        Slot s = slots.get(name);
        return s == null ? null : s.shape.clone();
    }

    /** The directory or file this was opened from (as used in error messages). */
    public String source() {
        return label;
    }

    /** Closes the files; already-returned buffers stay valid until garbage-collected. */
    @Override
    public void close() {
        closed = true;
        for (FileChannel ch : channels) closeQuietly(ch);
    }

    private static void closeQuietly(FileChannel ch) {
        try {
            ch.close();
        } catch (IOException ignored) {
            // nothing useful to do
        }
    }

    // ------------------------------------------------------------------------------------------------ writing

    /** A tensor to write; {@code data} holds exactly numel*dtype.bytes bytes from its position (little-endian). */
    public record Entry(String name, DType dtype, long[] shape, ByteBuffer data) {}

    /** Name, dtype and shape of a tensor whose bytes are produced while writing (see {@link Content}). */
    public record Spec(String name, DType dtype, long[] shape) {
        public long numel() {
            long n = 1;
            for (long s : shape) n *= s;
            return n;
        }

        public long bytes() {
            return numel() * dtype.bytes;
        }
    }

    /** Produces the bytes of one tensor, in order, into {@code out} (exactly {@code spec.bytes()} bytes). */
    @FunctionalInterface
    public interface Content {
        void write(Spec spec, WritableByteChannel out) throws IOException;
    }

    /**
     * Writes a safetensors file: entries sorted by name (as Hugging Face does), header padded with spaces to an
     * 8-byte boundary, written to a temporary file in the same directory and atomically renamed over {@code file}.
     */
    public static void write(Path file, List<Entry> entries, Map<String, String> metadata) {
        Map<String, Entry> byName = new LinkedHashMap<>();
        List<Spec> specs = new ArrayList<>();
        for (Entry e : entries) {
            Spec s = new Spec(e.name(), e.dtype(), e.shape());
            if (e.data().remaining() != s.bytes()) {
                throw new IllegalArgumentException("tensor " + e.name() + ": " + e.data().remaining()
                        + " bytes given, shape " + Arrays.toString(e.shape()) + " x " + e.dtype() + " needs " + s.bytes());
            }
            if (byName.put(e.name(), e) != null) throw new IllegalArgumentException("duplicate tensor " + e.name());
            specs.add(s);
        }
        write(file, specs, metadata, (spec, out) -> {
            ByteBuffer b = byName.get(spec.name()).data().duplicate();
            while (b.hasRemaining()) out.write(b);
        });
    }

    /**
     * Streaming writer: the header is written first (sizes are known from the specs), then {@code content} is asked
     * for each tensor's bytes in name order, so a multi-gigabyte model never has to sit in memory.
     */
    public static void write(Path file, List<Spec> specs, Map<String, String> metadata, Content content) {
        List<Spec> sorted = new ArrayList<>(specs);
        sorted.sort(Comparator.comparing(Spec::name));
        for (int i = 1; i < sorted.size(); i++) {
            if (sorted.get(i).name().equals(sorted.get(i - 1).name())) {
                throw new IllegalArgumentException("duplicate tensor " + sorted.get(i).name());
            }
        }
        ObjectNode root = JSON.createObjectNode();
        if (metadata != null && !metadata.isEmpty()) {
            ObjectNode m = root.putObject("__metadata__");
            new TreeMap<>(metadata).forEach(m::put);
        }
        long offset = 0;
        for (Spec s : sorted) {
            if (s.name().equals("__metadata__")) throw new IllegalArgumentException("reserved tensor name __metadata__");
            ObjectNode t = root.putObject(s.name());
            t.put("dtype", s.dtype().safetensorsName);
            ArrayNode sh = t.putArray("shape");
            for (long d : s.shape()) {
                if (d < 0) throw new IllegalArgumentException("tensor " + s.name() + ": negative dimension");
                sh.add(d);
            }
            long bytes = s.bytes();
            ArrayNode off = t.putArray("data_offsets");
            off.add(offset);
            off.add(offset + bytes);
            offset += bytes;
        }
        byte[] json;
        try {
            json = JSON.writeValueAsBytes(root);
        } catch (JsonProcessingException e) {
            throw new IllegalStateException(e);
        }
        int padded = (json.length + 7) & ~7;
        ByteBuffer head = ByteBuffer.allocate(8 + padded).order(ByteOrder.LITTLE_ENDIAN);
        head.putLong(padded).put(json);
        while (head.hasRemaining()) head.put((byte) ' ');
        head.flip();

        Path abs = file.toAbsolutePath();
        Path dir = abs.getParent();
        Path tmp = null;
        try {
            Files.createDirectories(dir);
            tmp = Files.createTempFile(dir, "." + abs.getFileName(), ".tmp");
            try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.WRITE, StandardOpenOption.TRUNCATE_EXISTING)) {
                while (head.hasRemaining()) ch.write(head);
                CountingChannel counter = new CountingChannel(ch);
                for (Spec s : sorted) {
                    counter.count = 0;
                    content.write(s, counter);
                    if (counter.count != s.bytes()) {
                        throw new IllegalStateException("tensor " + s.name() + ": content wrote " + counter.count
                                + " bytes, expected " + s.bytes());
                    }
                }
                ch.force(false);
            }
            try {
                Files.move(tmp, abs, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
            } catch (AtomicMoveNotSupportedException e) {
                Files.move(tmp, abs, StandardCopyOption.REPLACE_EXISTING);
            }
            tmp = null;
        } catch (IOException e) {
            throw new UncheckedIOException(abs + ": cannot write safetensors file (" + ModelLoadException.firstLine(e) + ")", e);
        } finally {
            if (tmp != null) {
                try {
                    Files.deleteIfExists(tmp);
                } catch (IOException ignored) {
                    // best effort
                }
            }
        }
    }

    /** Counts bytes passing through to the file. */
    private static final class CountingChannel implements WritableByteChannel {
        private final FileChannel ch;
        long count;

        CountingChannel(FileChannel ch) {
            this.ch = ch;
        }

        @Override
        public int write(ByteBuffer src) throws IOException {
            int total = 0;
            while (src.hasRemaining()) total += ch.write(src);
            count += total;
            return total;
        }

        @Override
        public boolean isOpen() {
            return ch.isOpen();
        }

        @Override
        public void close() {
            // the writer owns the channel
        }
    }
}
