package dev.tokenpress.io;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class SafeTensorsTest {

    @TempDir
    Path tmp;

    private static ByteBuffer randomBytes(long seed, int n) {
        byte[] b = new byte[n];
        new SplittableRandom(seed).nextBytes(b);
        return ByteBuffer.wrap(b);
    }

    @Test
    void roundTripEveryDtypeBitExact() throws IOException {
        Path f = tmp.resolve("m.safetensors");
        ByteBuffer f32 = randomBytes(1, 3 * 5 * 4);
        ByteBuffer f16 = randomBytes(2, 7 * 2);
        ByteBuffer bf16 = randomBytes(3, 4 * 6 * 2);
        ByteBuffer scalar = ByteBuffer.allocate(4).order(ByteOrder.LITTLE_ENDIAN).putFloat(0, 3.5f);
        List<SafeTensors.Entry> entries = List.of(
                new SafeTensors.Entry("z.f32", DType.F32, new long[] {3, 5}, f32),
                new SafeTensors.Entry("a.f16", DType.F16, new long[] {7}, f16),
                new SafeTensors.Entry("m.bf16", DType.BF16, new long[] {4, 6}, bf16),
                new SafeTensors.Entry("scalar", DType.F32, new long[] {}, scalar),
                new SafeTensors.Entry("empty", DType.BF16, new long[] {0, 4}, ByteBuffer.allocate(0)));
        SafeTensors.write(f, entries, Map.of("format", "pt", "note", "x"));

        // header: 8-byte length, JSON padded with spaces to 8-byte alignment, sorted names
        byte[] raw = Files.readAllBytes(f);
        long n = ByteBuffer.wrap(raw, 0, 8).order(ByteOrder.LITTLE_ENDIAN).getLong();
        assertEquals(0, (8 + n) % 8);
        String header = new String(raw, 8, (int) n, StandardCharsets.UTF_8);
        assertTrue(header.startsWith("{\"__metadata__\""), header);
        assertTrue(header.indexOf("\"a.f16\"") < header.indexOf("\"empty\"")
                && header.indexOf("\"m.bf16\"") < header.indexOf("\"z.f32\""), header);
        assertTrue(header.stripTrailing().endsWith("}") && header.substring(header.stripTrailing().length()).isBlank());
        assertEquals(8 + n + 60 + 14 + 48 + 4, raw.length);
        try (Stream<Path> s = Files.list(tmp)) {
            assertEquals(1, s.count(), "no temp file left behind");
        }

        try (SafeTensors st = SafeTensors.openFile(f)) {
            assertEquals(List.of("a.f16", "empty", "m.bf16", "scalar", "z.f32"), List.copyOf(st.names()));
            assertEquals(Map.of("format", "pt", "note", "x"), st.metadata());
            assertEquals(60 + 14 + 48 + 4, st.totalBytes());
            assertTrue(st.has("m.bf16"));
            assertFalse(st.has("nope"));
            check(st.get("z.f32"), DType.F32, new long[] {3, 5}, f32);
            check(st.get("a.f16"), DType.F16, new long[] {7}, f16);
            check(st.get("m.bf16"), DType.BF16, new long[] {4, 6}, bf16);
            check(st.get("empty"), DType.BF16, new long[] {0, 4}, ByteBuffer.allocate(0));
            TensorData sc = st.get("scalar");
            assertEquals(1, sc.numel());
            assertEquals(3.5f, sc.getFloat(0));
            assertEquals(f, st.get("z.f32").file());
            assertTrue(st.get("z.f32").data().isDirect(), "memory-mapped, not on the heap");
        }
    }

    private static void check(TensorData t, DType dtype, long[] shape, ByteBuffer expected) {
        assertEquals(dtype, t.dtype());
        assertArrayEquals(shape, t.shape());
        ByteBuffer d = t.data();
        assertTrue(d.isReadOnly());
        assertEquals(ByteOrder.LITTLE_ENDIAN, d.order());
        assertEquals(0, d.position());
        assertEquals(expected.remaining(), d.limit());
        byte[] got = new byte[d.remaining()];
        d.duplicate().get(got);
        byte[] want = new byte[expected.remaining()];
        expected.duplicate().get(want);
        assertArrayEquals(want, got);
        if (dtype == DType.F32 && t.numel() > 0) {
            assertEquals(expected.order(ByteOrder.LITTLE_ENDIAN).getFloat(0), t.getFloat(0));
        }
    }

    @Test
    void floatValuesSurviveAllDtypes() {
        float[] vals = {0f, -1.5f, 0.02f, 1e-3f, 65504f, -2.75f};
        for (DType dt : DType.values()) {
            ByteBuffer b = ByteBuffer.allocate(vals.length * dt.bytes).order(ByteOrder.LITTLE_ENDIAN);
            for (float v : vals) {
                switch (dt) {
                    case F32 -> b.putFloat(v);
                    case F16 -> b.putShort(Half.fromFloat(v));
                    case BF16 -> b.putShort(Half.floatToBf16(v));
                }
            }
            b.flip();
            Path f = tmp.resolve(dt + ".safetensors");
            SafeTensors.write(f, List.of(new SafeTensors.Entry("w", dt, new long[] {vals.length}, b)), Map.of());
            try (SafeTensors st = SafeTensors.openFile(f)) {
                float[] got = st.get("w").toFloats();
                for (int i = 0; i < vals.length; i++) {
                    float want = switch (dt) {
                        case F32 -> vals[i];
                        case F16 -> Half.toFloat(Half.fromFloat(vals[i]));
                        case BF16 -> Half.bf16ToFloat(Half.floatToBf16(vals[i]));
                    };
                    assertEquals(want, got[i], dt + " element " + i);
                }
                assertTrue(st.metadata().isEmpty());
            }
        }
    }

    @Test
    void openDirectoryVariants() throws IOException {
        Path d1 = Files.createDirectory(tmp.resolve("single"));
        SafeTensors.write(d1.resolve("model.safetensors"),
                List.of(new SafeTensors.Entry("x", DType.F32, new long[] {2}, randomBytes(4, 8))), Map.of());
        try (SafeTensors st = SafeTensors.open(d1)) {
            assertEquals(List.of("x"), List.copyOf(st.names()));
        }
        Path d2 = Files.createDirectory(tmp.resolve("odd-name"));
        SafeTensors.write(d2.resolve("weights.safetensors"),
                List.of(new SafeTensors.Entry("y", DType.F32, new long[] {2}, randomBytes(5, 8))), Map.of());
        try (SafeTensors st = SafeTensors.open(d2)) {
            assertTrue(st.has("y"));
        }
        SafeTensors.write(d2.resolve("other.safetensors"),
                List.of(new SafeTensors.Entry("z", DType.F32, new long[] {2}, randomBytes(6, 8))), Map.of());
        assertMessage(() -> SafeTensors.open(d2), d2.toString(), "index");
        Path d3 = Files.createDirectory(tmp.resolve("empty"));
        assertMessage(() -> SafeTensors.open(d3), d3.toString(), "model.safetensors");
        assertMessage(() -> SafeTensors.open(tmp.resolve("absent")), "absent");
    }

    @Test
    void shardedCheckpoint() throws IOException {
        Path d = Files.createDirectory(tmp.resolve("sharded"));
        ByteBuffer a = randomBytes(10, 4 * 8 * 2), b = randomBytes(11, 8 * 2), c = randomBytes(12, 3 * 4);
        SafeTensors.write(d.resolve("model-00001-of-00002.safetensors"), List.of(
                new SafeTensors.Entry("model.embed_tokens.weight", DType.BF16, new long[] {4, 8}, a),
                new SafeTensors.Entry("model.norm.weight", DType.BF16, new long[] {8}, b)), Map.of("format", "pt"));
        SafeTensors.write(d.resolve("model-00002-of-00002.safetensors"), List.of(
                new SafeTensors.Entry("lm_head.weight", DType.F32, new long[] {3}, c)), Map.of("format", "pt"));
        Files.writeString(d.resolve("model.safetensors.index.json"), """
                {
                  "metadata": {"total_size": 92},
                  "weight_map": {
                    "lm_head.weight": "model-00002-of-00002.safetensors",
                    "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                    "model.norm.weight": "model-00001-of-00002.safetensors"
                  }
                }
                """);
        try (SafeTensors st = SafeTensors.open(d)) {
            assertEquals(List.of("lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"),
                    List.copyOf(st.names()));
            assertEquals(64 + 16 + 12, st.totalBytes());
            check(st.get("model.embed_tokens.weight"), DType.BF16, new long[] {4, 8}, a);
            check(st.get("model.norm.weight"), DType.BF16, new long[] {8}, b);
            check(st.get("lm_head.weight"), DType.F32, new long[] {3}, c);
            assertEquals(d.resolve("model-00002-of-00002.safetensors"), st.get("lm_head.weight").file());
            assertEquals("pt", st.metadata().get("format"));
            ModelLoadException e = assertThrows(ModelLoadException.class, () -> st.get("model.layers.0.mlp.up_proj.weight"));
            assertEquals(d + ": missing tensor model.layers.0.mlp.up_proj.weight", e.getMessage().substring(0,
                    e.getMessage().indexOf(';')));
        }
        // an index entry pointing at a shard that lacks the tensor, and at a missing shard
        Files.writeString(d.resolve("model.safetensors.index.json"),
                "{\"weight_map\":{\"lm_head.weight\":\"model-00001-of-00002.safetensors\"}}");
        assertMessage(() -> SafeTensors.open(d), "model.safetensors.index.json", "lm_head.weight",
                "model-00001-of-00002.safetensors");
        Files.writeString(d.resolve("model.safetensors.index.json"),
                "{\"weight_map\":{\"lm_head.weight\":\"model-00009-of-00009.safetensors\"}}");
        assertMessage(() -> SafeTensors.open(d), "model.safetensors.index.json", "lm_head.weight",
                "model-00009-of-00009.safetensors", "not found");
        Files.writeString(d.resolve("model.safetensors.index.json"), "{\"weight_map\": [");
        assertMessage(() -> SafeTensors.open(d), "model.safetensors.index.json", "invalid JSON");
    }

    // ------------------------------------------------------------------------------------------ malformed files

    private Path raw(String name, String header, int dataBytes, Long headerLenOverride) throws IOException {
        byte[] h = header.getBytes(StandardCharsets.UTF_8);
        ByteBuffer b = ByteBuffer.allocate(8 + h.length + dataBytes).order(ByteOrder.LITTLE_ENDIAN);
        b.putLong(headerLenOverride != null ? headerLenOverride : h.length).put(h);
        Path f = tmp.resolve(name);
        Files.write(f, b.array());
        return f;
    }

    private static void assertMessage(org.junit.jupiter.api.function.Executable ex, String... fragments) {
        ModelLoadException e = assertThrows(ModelLoadException.class, ex);
        String m = e.getMessage();
        assertFalse(m.contains("\n"), m);
        for (String f : fragments) assertTrue(m.contains(f), "'" + f + "' not in: " + m);
    }

    @Test
    void truncatedFile() throws IOException {
        Path good = tmp.resolve("good.safetensors");
        SafeTensors.write(good, List.of(
                new SafeTensors.Entry("a", DType.F32, new long[] {16}, randomBytes(1, 64)),
                new SafeTensors.Entry("b", DType.F32, new long[] {16}, randomBytes(2, 64))), Map.of());
        byte[] all = Files.readAllBytes(good);
        Path cut = tmp.resolve("cut.safetensors");
        Files.write(cut, java.util.Arrays.copyOf(all, all.length - 10));
        assertMessage(() -> SafeTensors.openFile(cut), cut.toString(), "tensor b", "truncated");
        Path cut2 = tmp.resolve("cut2.safetensors");
        Files.write(cut2, java.util.Arrays.copyOf(all, 20));
        assertMessage(() -> SafeTensors.openFile(cut2), cut2.toString(), "overruns");
        Path tiny = tmp.resolve("tiny.safetensors");
        Files.write(tiny, new byte[] {1, 2, 3});
        assertMessage(() -> SafeTensors.openFile(tiny), tiny.toString(), "too small");
    }

    @Test
    void headerOverrunsOrAbsurd() throws IOException {
        Path f = raw("over.safetensors", "{}", 0, 4096L);
        assertMessage(() -> SafeTensors.openFile(f), f.toString(), "header length 4096 overruns the file");
        Path g = raw("absurd.safetensors", "{}", 0, 1L << 40);
        assertMessage(() -> SafeTensors.openFile(g), g.toString(), "implausible");
        Path h = raw("neg.safetensors", "{}", 0, -1L);
        assertMessage(() -> SafeTensors.openFile(h), h.toString(), "18446744073709551615");
    }

    @Test
    void badJson() throws IOException {
        Path f = raw("bad.safetensors", "{\"a\": {\"dtype\": \"F32\", ", 0, null);
        assertMessage(() -> SafeTensors.openFile(f), f.toString(), "not valid JSON");
        Path g = raw("arr.safetensors", "[1, 2]", 0, null);
        assertMessage(() -> SafeTensors.openFile(g), g.toString(), "not a JSON object");
    }

    @Test
    void unsupportedDtypes() throws IOException {
        for (String dt : new String[] {"I8", "F64", "F8_E4M3", "U8"}) {
            Path f = raw(dt + ".safetensors", "{\"w.weight\":{\"dtype\":\"" + dt + "\",\"shape\":[2],\"data_offsets\":[0,2]}}",
                    16, null);
            assertMessage(() -> SafeTensors.openFile(f), f.toString(), "tensor w.weight", "unsupported dtype " + dt);
        }
    }

    @Test
    void shapeSizeMismatchAndOffsets() throws IOException {
        Path f = raw("mismatch.safetensors", "{\"w\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,10]}}", 16, null);
        assertMessage(() -> SafeTensors.openFile(f), f.toString(), "tensor w", "12 bytes", "span 10");
        Path g = raw("outside.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 16, null);
        assertMessage(() -> SafeTensors.openFile(g), g.toString(), "tensor w", "outside the data section");
        Path h = raw("reversed.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 16, null);
        assertMessage(() -> SafeTensors.openFile(h), h.toString(), "tensor w");
        Path i = raw("noshape.safetensors", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 16, null);
        assertMessage(() -> SafeTensors.openFile(i), i.toString(), "tensor w", "shape");
        Path j = raw("short.safetensors",
                "{\"w\":{\"dtype\":\"F32\",\"shape\":[1000000000],\"data_offsets\":[0,4000000000]}}", 16, null);
        assertMessage(() -> SafeTensors.openFile(j), j.toString(), "tensor w", "truncated");
    }

    @Test
    void tensorOver2GiBIsAClearError() throws IOException {
        // a sparse file: the data section is a hole, so this takes no disk space
        String header = "{\"small\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                + "\"big\":{\"dtype\":\"BF16\",\"shape\":[65536,32769],\"data_offsets\":[8,4295098376]}}";
        Path f = raw("huge.safetensors", header, 8, null);
        try (java.io.RandomAccessFile r = new java.io.RandomAccessFile(f.toFile(), "rw")) {
            r.setLength(8 + header.length() + 4295098376L);
        }
        assertMessage(() -> SafeTensors.openFile(f), f.toString(), "tensor big", "over 2 GiB");
    }

    @Test
    void missingTensorNamesFileAndTensor() throws IOException {
        Path f = tmp.resolve("one.safetensors");
        SafeTensors.write(f, List.of(new SafeTensors.Entry("a", DType.F32, new long[] {1}, randomBytes(1, 4))), Map.of());
        try (SafeTensors st = SafeTensors.openFile(f)) {
            assertMessage(() -> st.get("model.norm.weight"), f + ": missing tensor model.norm.weight");
        }
    }

    @Test
    void writerRejectsWrongSizes() {
        assertThrows(IllegalArgumentException.class, () -> SafeTensors.write(tmp.resolve("x.safetensors"),
                List.of(new SafeTensors.Entry("a", DType.F32, new long[] {3}, ByteBuffer.allocate(8))), Map.of()));
        assertThrows(IllegalArgumentException.class, () -> SafeTensors.write(tmp.resolve("y.safetensors"), List.of(
                new SafeTensors.Entry("a", DType.F32, new long[] {1}, ByteBuffer.allocate(4)),
                new SafeTensors.Entry("a", DType.F32, new long[] {1}, ByteBuffer.allocate(4))), Map.of()));
    }
}
