package dev.tokenpress.io;

import dev.tokenpress.io.ChatTemplate.Format;
import dev.tokenpress.io.ChatTemplate.Message;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.*;

/** Chat formats: detection from a model's template, the exact text of each family, prefix stability. */
class ChatTemplateTest {
    @TempDir
    Path tmp;

    static final List<Message> CONVERSATION = List.of(Message.system("Be brief."), Message.user("Hi there"),
            Message.assistant("Hello!"), Message.user(" And you? "));

    @Test
    void detectsTheFamilyByItsMarkers() {
        assertEquals(Format.LLAMA3, ChatTemplate.detect(
                "{{- bos_token }}{%- for m in messages %}{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' }}"));
        assertEquals(Format.CHATML, ChatTemplate.detect("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n'}}"));
        assertEquals(Format.LLAMA2, ChatTemplate.detect("{{ bos_token + '[INST] ' + '<<SYS>>\\n' + system }}"));
        assertEquals(Format.MISTRAL, ChatTemplate.detect("{{ bos_token }}{% for m in messages %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"));
        assertNull(ChatTemplate.detect("{% for m in messages %}{{ m['content'] }}{% endfor %}"));
        assertNull(ChatTemplate.detect(null));
    }

    @Test
    void rendersEachFamilyExactly() {
        assertEquals("<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                        + "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
                        + "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
                        + "<|start_header_id|>user<|end_header_id|>\n\nAnd you?<|eot_id|>"
                        + "<|start_header_id|>assistant<|end_header_id|>\n\n",
                ChatTemplate.named("llama3").render(CONVERSATION, true));
        assertEquals("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
                        + "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n And you? <|im_end|>\n"
                        + "<|im_start|>assistant\n",
                ChatTemplate.named("chatml").render(CONVERSATION, true));
        assertEquals("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST]Hello!</s><s>[INST] And you? [/INST]",
                ChatTemplate.named("llama2").render(CONVERSATION, true));
        assertEquals("[INST] Be brief.\n\nHi there [/INST]Hello!</s>[INST] And you? [/INST]",
                ChatTemplate.named("Mistral").render(CONVERSATION, true));
        // without a system message and without the reply prompt
        assertEquals("<|im_start|>user\nHi<|im_end|>\n", ChatTemplate.named("chatml").render(List.of(Message.user("Hi")), false));
        assertEquals("[INST] Hi [/INST]", ChatTemplate.named("llama2").render(List.of(Message.user("Hi")), false));
        assertEquals("<|eot_id|>", ChatTemplate.named("llama3").endOfReply());
        assertEquals("<|im_end|>\n", ChatTemplate.named("chatml").endOfReply());
        assertEquals(List.of("<|im_end|>", "<|endoftext|>"), ChatTemplate.named("chatml").stopTokens());
    }

    /** What a chat feeds turn by turn is exactly the rendering of the whole conversation. */
    @Test
    void everyFamilyIsPrefixStable() {
        for (Format f : Format.values()) {
            ChatTemplate t = ChatTemplate.named(f.id);
            for (boolean withSystem : new boolean[] {true, false}) {
                List<Message> h = new ArrayList<>();
                if (withSystem) h.add(Message.system("sys"));
                for (int turn = 0; turn < 3; turn++) {
                    String before = t.render(h, false);
                    h.add(Message.user("question " + turn));
                    String prompt = t.render(h, true);
                    assertTrue(prompt.startsWith(before), f + " turn " + turn + ": " + before + " | " + prompt);
                    h.add(Message.assistant("answer " + turn));
                    String after = t.render(h, false);
                    assertTrue(after.startsWith(prompt), f + " turn " + turn);
                    assertTrue(after.endsWith("answer " + turn + t.endOfReply()), f + ": " + after);
                }
            }
        }
    }

    /** A ChatML-style template with a default system message, in the way model repositories write them. */
    static final String MODEL_TEMPLATE = """
            {%- if messages[0]['role'] == 'system' %}
                {%- set system = messages[0]['content'] %}
                {%- set rest = messages[1:] %}
            {%- else %}
                {%- set system = 'You are helpful.' %}
                {%- set rest = messages %}
            {%- endif %}
            {{- '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}
            {%- for m in rest %}
                {%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}
                    {{- raise_exception('roles must alternate user/assistant') }}
                {%- endif %}
                {{- '<|im_start|>' + m['role'] + '\\n' + m['content'] | trim + '<|im_end|>\\n' }}
            {%- endfor %}
            {%- if add_generation_prompt %}
                {{- '<|im_start|>assistant\\n' }}
            {%- endif %}""";

    /** The model's own template runs as transformers renders it: defaults, errors, the closing text it writes. */
    @Test
    void runsTheModelsOwnTemplate() throws Exception {
        Path dir = Files.createDirectories(tmp.resolve("own"));
        com.fasterxml.jackson.databind.ObjectMapper om = new com.fasterxml.jackson.databind.ObjectMapper();
        Files.writeString(dir.resolve("tokenizer_config.json"), om.writeValueAsString(java.util.Map.of(
                "chat_template", MODEL_TEMPLATE, "eos_token", java.util.Map.of("content", "<|endoftext|>"), "bos_token", "")));
        ChatTemplate t = ChatTemplate.forModel(dir);
        assertTrue(t.isModelTemplate());
        assertEquals(Format.CHATML, t.format());
        assertEquals("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
                t.render(List.of(Message.user(" Hi ")), true));
        assertEquals("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n",
                t.render(List.of(Message.system("Be brief."), Message.user("Hi"), Message.assistant("Yo")), false));
        assertEquals("<|im_end|>\n", t.endOfReply());
        assertEquals(List.of("<|im_end|>", "<|endoftext|>"), t.stopTokens());
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> t.render(List.of(Message.user("a"), Message.user("b")), true));
        assertTrue(e.getMessage().contains("roles must alternate"), e.getMessage());

        Path file = tmp.resolve("custom.jinja");
        Files.writeString(file, "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
                + "{% if add_generation_prompt %}[assistant] {% endif %}");
        ChatTemplate custom = ChatTemplate.fromFile(file, dir);
        assertEquals("[user] Hi\n[assistant] ", custom.render(List.of(Message.user("Hi")), true));
        assertEquals("\n", custom.endOfReply());
        assertEquals(List.of("<|endoftext|>"), custom.stopTokens(), "the model's EOS from its tokenizer_config.json");
        Files.writeString(file, "{% if %}");
        assertThrows(ModelLoadException.class, () -> ChatTemplate.fromFile(file, dir));
    }

    @Test
    void refusesMisplacedMessagesAndUnknownNames() {
        ChatTemplate t = ChatTemplate.named("chatml");
        assertThrows(IllegalArgumentException.class, () -> t.render(List.of(Message.user("a"), Message.system("b")), true));
        assertThrows(IllegalArgumentException.class, () -> t.render(List.of(Message.assistant("a")), true));
        assertThrows(IllegalArgumentException.class, () -> new Message("function", "x"));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> ChatTemplate.named("vicuna"));
        assertTrue(e.getMessage().contains("llama3, chatml, llama2, mistral"), e.getMessage());
    }

    @Test
    void readsTheModelsTemplateFromItsFiles() throws Exception {
        Path a = Files.createDirectories(tmp.resolve("a"));
        Files.writeString(a.resolve("tokenizer_config.json"),
                "{\"eos_token\": \"<|im_end|>\", \"chat_template\": \"{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}\"}");
        assertEquals(Format.CHATML, ChatTemplate.forModel(a).format());

        Path b = Files.createDirectories(tmp.resolve("b"));
        Files.writeString(b.resolve("tokenizer_config.json"), "{\"chat_template\": [{\"name\": \"tool_use\", \"template\": "
                + "\"<|im_start|>\"}, {\"name\": \"default\", \"template\": \"<|start_header_id|>x<|end_header_id|>\"}]}");
        assertEquals(Format.LLAMA3, ChatTemplate.forModel(b).format());

        Path c = Files.createDirectories(tmp.resolve("c"));
        Files.writeString(c.resolve("tokenizer_config.json"), "{\"bos_token\": \"<s>\"}");
        Files.writeString(c.resolve("chat_template.jinja"), "{{ bos_token }}[INST] {{ m }} [/INST]");
        ChatTemplate ct = ChatTemplate.forModel(c);
        assertEquals(Format.MISTRAL, ct.format());
        assertTrue(ct.source().endsWith("chat_template.jinja"), ct.source());

        Path d = Files.createDirectories(tmp.resolve("d"));
        Files.writeString(d.resolve("chat_template.json"), "{\"chat_template\": \"<<SYS>> [INST]\"}");
        assertEquals(Format.LLAMA2, ChatTemplate.forModel(d).format());

        Path base = Files.createDirectories(tmp.resolve("base"));
        Files.writeString(base.resolve("tokenizer_config.json"), "{\"bos_token\": \"<s>\"}");
        ModelLoadException none = assertThrows(ModelLoadException.class, () -> ChatTemplate.forModel(base));
        assertTrue(none.getMessage().contains("--chat-template"), none.getMessage());

        // a template of no known family runs as it is
        Path odd = Files.createDirectories(tmp.resolve("odd"));
        Files.writeString(odd.resolve("tokenizer_config.json"), "{\"chat_template\": \"{{ messages[0].content }}!\"}");
        ChatTemplate generic = ChatTemplate.forModel(odd);
        assertNull(generic.format());
        assertEquals("jinja", generic.name());
        assertEquals("Hi!", generic.render(List.of(Message.user("Hi")), true));
        // one that does not parse: the built-in format of its family, or an error naming the file
        Path unparsable = Files.createDirectories(tmp.resolve("unparsable"));
        Files.writeString(unparsable.resolve("tokenizer_config.json"), "{\"chat_template\": \"{% if %}<|im_start|>\"}");
        ChatTemplate fallback = ChatTemplate.forModel(unparsable);
        assertEquals(Format.CHATML, fallback.format());
        assertFalse(fallback.isModelTemplate());
        assertTrue(fallback.source().contains("does not parse"), fallback.source());
        Path bad = Files.createDirectories(tmp.resolve("bad"));
        Files.writeString(bad.resolve("tokenizer_config.json"), "{\"chat_template\": \"{% for %}\"}");
        ModelLoadException unknown = assertThrows(ModelLoadException.class, () -> ChatTemplate.forModel(bad));
        assertTrue(unknown.getMessage().contains("tokenizer_config.json") && unknown.getMessage().contains("--chat-template"),
                unknown.getMessage());

        Path broken = Files.createDirectories(tmp.resolve("broken"));
        Files.writeString(broken.resolve("tokenizer_config.json"), "{\"chat_template\": ");
        assertThrows(ModelLoadException.class, () -> ChatTemplate.forModel(broken));
    }
}
