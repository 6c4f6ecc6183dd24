package dev.tokenpress.io;

import dev.tokenpress.io.Jinja.TemplateException;
import org.junit.jupiter.api.Test;

import java.time.LocalDate;
import java.time.LocalDateTime;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.*;

/**
 * {@link Jinja}: chat-template constructs rendered as Python's jinja2 renders them in transformers (sandboxed,
 * trim_blocks, lstrip_blocks, loop controls, raise_exception, strftime_now and transformers' tojson). The expected
 * strings were produced by jinja2 3.1 with that environment.
 */
class JinjaTest {

    private static final List<Object> CONVERSATION = list(
            msg("system", "  You answer briefly.  "),
            msg("user", "Hello\n"),
            msg("assistant", " Hi! How can I help? "),
            msg("user", "Name three colors."));

    private static final List<Object> TOOLS = list(
            map("type", "function", "function", map(
                    "name", "get_time",
                    "description", "Current time in a city",
                    "parameters", map(
                            "type", "object",
                            "properties", map("city", map("type", "string", "description", "City name")),
                            "required", list("city")))),
            map("type", "function", "function", map(
                    "name", "convert",
                    "description", "Unit conversion: °C → °F",
                    "parameters", map(
                            "type", "object",
                            "properties", map("value", map("type", "number"), "exact", map("type", "boolean")),
                            "required", list()))));

    private static final List<Object> TOOL_CONVERSATION = list(
            msg("user", "Time in Oslo and Rome?"),
            msg("assistant", null, "tool_calls", list(
                    map("id", "call_1", "type", "function",
                            "function", map("name", "get_time", "arguments", map("city", "Oslo"))),
                    map("id", "call_2", "type", "function",
                            "function", map("name", "get_time", "arguments", "{\"city\": \"Rome\"}")))),
            msg("tool", "10:00", "tool_call_id", "call_1"),
            msg("tool", "10:00", "tool_call_id", "call_2"),
            msg("assistant", "Both are at 10:00."));

    private static final List<Object> MULTIMODAL = list(
            msg("user", list(
                    map("type", "image"),
                    map("type", "text", "text", "What is this?"),
                    map("type", "text", "text", "Be brief."))),
            msg("assistant", "A cat."));

    private static Map<String, Object> map(Object... keysAndValues) {
        Map<String, Object> m = new LinkedHashMap<>();
        for (int i = 0; i < keysAndValues.length; i += 2) m.put((String) keysAndValues[i], keysAndValues[i + 1]);
        return m;
    }

    private static List<Object> list(Object... items) {
        return new ArrayList<>(Arrays.asList(items));
    }

    private static Map<String, Object> msg(String role, Object content, Object... extra) {
        Map<String, Object> message = map("role", role, "content", content);
        message.putAll(map(extra));
        return message;
    }

    private static List<Object> concat(List<Object> a, List<Object> b) {
        List<Object> all = new ArrayList<>(a);
        all.addAll(b);
        return all;
    }

    private static String render(String template, Map<String, Object> variables) {
        return Jinja.parse(template).render(variables);
    }

    private static String render(String template) {
        return render(template, Map.of());
    }

    private static String errorOf(Runnable r) {
        return assertThrows(TemplateException.class, r::run).getMessage();
    }

    /** A Llama-3 style layout: the first message is taken out when it is a system message, contents are trimmed. */
    @Test
    void systemMessageIsExtractedAndTheRestRendered() {
        Jinja.Template t = Jinja.parse("""
                {{- bos_token }}
                {%- if messages[0]['role'] == 'system' %}
                    {%- set system_text = messages[0]['content'] | trim %}
                    {%- set turns = messages[1:] %}
                {%- else %}
                    {%- set system_text = 'You are a concise assistant.' %}
                    {%- set turns = messages %}
                {%- endif %}
                {{- '<|header|>system<|/header|>\\n\\n' + system_text + '<|end|>' }}
                {%- for message in turns %}
                    {{- '<|header|>' + message['role'] + '<|/header|>\\n\\n' + message['content'] | trim + '<|end|>' }}
                {%- endfor %}
                {%- if add_generation_prompt %}
                    {{- '<|header|>assistant<|/header|>\\n\\n' }}
                {%- endif %}
                """);
        assertEquals("<BOS><|header|>system<|/header|>\n" +
                "\n" +
                "You answer briefly.<|end|><|header|>user<|/header|>\n" +
                "\n" +
                "Hello<|end|><|header|>assistant<|/header|>\n" +
                "\n" +
                "Hi! How can I help?<|end|><|header|>user<|/header|>\n" +
                "\n" +
                "Name three colors.<|end|><|header|>assistant<|/header|>\n" +
                "\n",
                t.render(map("messages", CONVERSATION, "add_generation_prompt", true, "bos_token", "<BOS>")));
        assertEquals("<BOS><|header|>system<|/header|>\n" +
                "\n" +
                "You are a concise assistant.<|end|><|header|>user<|/header|>\n" +
                "\n" +
                "Hello<|end|><|header|>assistant<|/header|>\n" +
                "\n" +
                "Hi! How can I help?<|end|><|header|>user<|/header|>\n" +
                "\n" +
                "Name three colors.<|end|>",
                t.render(map(
                                "messages", CONVERSATION.subList(1, 4),
                                "add_generation_prompt", false,
                                "bos_token", "<BOS>")));
        assertEquals("<BOS><|header|>system<|/header|>\n" +
                "\n" +
                "You are a concise assistant.<|end|><|header|>user<|/header|>\n" +
                "\n" +
                "Hi<|end|>",
                t.render(map("messages", list(msg("user", "Hi")), "bos_token", "<BOS>")));
    }

    /** trim_blocks and lstrip_blocks turn a tag-per-line template into clean ChatML. */
    @Test
    void chatMlTrimsBlocksAndStripsIndentation() {
        Jinja.Template t = Jinja.parse("""
                {% for message in messages %}
                {% if loop.first and message.role != 'system' %}
                <|im_start|>system
                Default system prompt.<|im_end|>
                {% endif %}
                <|im_start|>{{ message.role }}
                {{ message.content }}<|im_end|>
                {% if loop.last and add_generation_prompt %}
                <|im_start|>assistant
                {% endif %}
                {% endfor %}
                """);
        assertEquals("<|im_start|>system\n" +
                "Default system prompt.<|im_end|>\n" +
                "<|im_start|>user\n" +
                "Hello\n" +
                "<|im_end|>\n" +
                "<|im_start|>assistant\n" +
                " Hi! How can I help? <|im_end|>\n" +
                "<|im_start|>user\n" +
                "Name three colors.<|im_end|>\n" +
                "<|im_start|>assistant\n",
                t.render(map("messages", CONVERSATION.subList(1, 4), "add_generation_prompt", true)));
        assertEquals("<|im_start|>system\n" +
                "  You answer briefly.  <|im_end|>\n" +
                "<|im_start|>user\n" +
                "Hello\n" +
                "<|im_end|>\n",
                t.render(map("messages", CONVERSATION.subList(0, 2), "add_generation_prompt", false)));
    }

    /** loop.index, index0, revindex, revindex0, first, last, length, previtem, nextitem, cycle and depth. */
    @Test
    void loopVariables() {
        assertEquals("1/0/4/3/4 first;2/1/3/2/4;3/2/2/1/4;4/3/1/0/4 last;",
                render("{% for m in messages %}{{ loop.index }}/{{ loop.index0 }}"
                        + "/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.length }}"
                        + "{{ ' first' if loop.first }}{{ ' last' if loop.last }}"
                        + ";{% endfor %}",
                        map("messages", CONVERSATION)));
        assertEquals("^ab abc bc$ ",
                render("{% for x in ['a', 'b', 'c'] %}{{ loop.previtem | default('^') }}"
                        + "{{ x }}{{ loop.nextitem | default('$') }} {% endfor %}"));
        assertEquals("odd,even,odd,even",
                render("{% for x in range(4) %}{{ loop.cycle('odd', 'even') }}"
                        + "{% if not loop.last %},{% endif %}{% endfor %}"));
        assertEquals("a@1(b@2 c@2(d@3 ) ) e@1 ",
                render("{% for node in tree recursive %}{{ node.name }}"
                        + "@{{ loop.depth }}{% if node.children %}({{ loop(node.children) }}"
                        + "){% endif %} {% endfor %}",
                        map(
                                "tree", list(
                                        map(
                                                "name", "a",
                                                "children", list(
                                                        map("name", "b"),
                                                        map("name", "c", "children", list(map("name", "d"))))),
                                        map("name", "e")))));
    }

    /** raise_exception fails the rendering with exactly its message. */
    @Test
    void alternatingRolesAreEnforcedWithRaiseException() {
        Jinja.Template t = Jinja.parse("""
                {{ bos_token }}
                {%- for message in messages %}
                    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
                        {{- raise_exception('Roles must alternate between user and assistant.') }}
                    {%- endif %}
                    {%- if message['role'] == 'user' %}
                        {{- '[INST] ' + message['content'] + ' [/INST]' }}
                    {%- elif message['role'] == 'assistant' %}
                        {{- ' ' + message['content'] + eos_token }}
                    {%- else %}
                        {{- raise_exception('Unsupported role: ' ~ message['role']) }}
                    {%- endif %}
                {%- endfor %}
                """);
        assertEquals("<s>[INST] Hello\n" +
                " [/INST]  Hi! How can I help? </s>[INST] Name three colors. [/INST]",
                t.render(map("messages", CONVERSATION.subList(1, 4), "bos_token", "<s>", "eos_token", "</s>")));
        assertEquals("Roles must alternate between user and assistant.",
                errorOf(() -> t.render(map(
                                "messages", list(msg("user", "a"), msg("user", "b")),
                                "bos_token", "<s>",
                                "eos_token", "</s>"))));
        assertEquals("Roles must alternate between user and assistant.",
                errorOf(() -> t.render(map("messages", CONVERSATION, "bos_token", "<s>", "eos_token", "</s>"))));
    }

    /**
     * tojson as transformers defines it: json.dumps with ', ' and ': ' separators, or ',' with an indent; non-ASCII
     * kept.
     */
    @Test
    void toolsAreWrittenAsJson() {
        Jinja.Template t = Jinja.parse("""
                {%- if tools %}
                    {{- 'Available functions:\\n' }}
                    {%- for tool in tools %}
                        {{- tool | tojson(indent=4) }}
                        {{- '\\n\\n' }}
                    {%- endfor %}
                    {{- 'Names: ' + tools | map(attribute='function') | map(attribute='name') | list | tojson }}
                {%- else %}
                    {{- 'No tools.' }}
                {%- endif %}
                """);
        assertEquals("Available functions:\n" +
                "{\n" +
                "    \"type\": \"function\",\n" +
                "    \"function\": {\n" +
                "        \"name\": \"get_time\",\n" +
                "        \"description\": \"Current time in a city\",\n" +
                "        \"parameters\": {\n" +
                "            \"type\": \"object\",\n" +
                "            \"properties\": {\n" +
                "                \"city\": {\n" +
                "                    \"type\": \"string\",\n" +
                "                    \"description\": \"City name\"\n" +
                "                }\n" +
                "            },\n" +
                "            \"required\": [\n" +
                "                \"city\"\n" +
                "            ]\n" +
                "        }\n" +
                "    }\n" +
                "}\n" +
                "\n" +
                "{\n" +
                "    \"type\": \"function\",\n" +
                "    \"function\": {\n" +
                "        \"name\": \"convert\",\n" +
                "        \"description\": \"Unit conversion: °C → °F\",\n" +
                "        \"parameters\": {\n" +
                "            \"type\": \"object\",\n" +
                "            \"properties\": {\n" +
                "                \"value\": {\n" +
                "                    \"type\": \"number\"\n" +
                "                },\n" +
                "                \"exact\": {\n" +
                "                    \"type\": \"boolean\"\n" +
                "                }\n" +
                "            },\n" +
                "            \"required\": []\n" +
                "        }\n" +
                "    }\n" +
                "}\n" +
                "\n" +
                "Names: [\"get_time\", \"convert\"]",
                t.render(map("tools", TOOLS)));
        assertEquals("No tools.",
                t.render(map("tools", null)));
        assertEquals("No tools.",
                t.render(Map.of()));
        assertEquals("{\"text\": \"café \\\"quoted\\\"\\n\", \"n\": 3, \"x\": 2.5, \"ok\": true, \"none\": null, " +
                "\"list\": [1, [], {}]}",
                render("{{ value | tojson }}",
                        map(
                                "value", map(
                                        "text", "café \"quoted\"\n",
                                        "n", 3,
                                        "x", 2.5,
                                        "ok", true,
                                        "none", null,
                                        "list", list(1, list(), map())))));
        assertEquals("{\"a\": [1, 2], \"b\": 1} {\"a\":[1,2]} \"caf\\u00e9\"",
                render("{{ {'b': 1, 'a': [1, 2]} | tojson(sort_keys=true) }}"
                        + " {{ {'a': [1, 2]} | tojson(separators=(',', ':')) }}"
                        + " {{ 'café' | tojson(ensure_ascii=true) }}"));
    }

    /**
     * Assistant tool calls (arguments as a mapping or a JSON string) and consecutive tool results grouped by looking
     * at neighbours.
     */
    @Test
    void toolCallsAndToolResults() {
        Jinja.Template t = Jinja.parse("""
                {%- for message in messages %}
                    {%- if message.role == 'assistant' and message.tool_calls %}
                        {{- '<|assistant|>' }}
                        {%- if message.content %}
                            {{- message.content + '\\n' }}
                        {%- endif %}
                        {%- for call in message.tool_calls %}
                            {%- if call.function is defined %}
                                {%- set call = call.function %}
                            {%- endif %}
                            {{- '<call>{"name": "' + call.name + '", "arguments": ' }}
                            {%- if call.arguments is string %}
                                {{- call.arguments }}
                            {%- else %}
                                {{- call.arguments | tojson }}
                            {%- endif %}
                            {{- '}</call>' }}
                        {%- endfor %}
                        {{- '<|end|>\\n' }}
                    {%- elif message.role == 'tool' %}
                        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
                            {{- '<|user|>' }}
                        {%- endif %}
                        {{- '<result>' + message.content + '</result>' }}
                        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
                            {{- '<|end|>\\n' }}
                        {%- endif %}
                    {%- else %}
                        {{- '<|' + message.role + '|>' + message.content + '<|end|>\\n' }}
                    {%- endif %}
                {%- endfor %}
                """);
        assertEquals("<|user|>Time in Oslo and Rome?<|end|>\n" +
                "<|assistant|><call>{\"name\": \"get_time\", \"arguments\": {\"city\": " +
                "\"Oslo\"}}</call><call>{\"name\": \"get_time\", \"arguments\": {\"city\": " +
                "\"Rome\"}}</call><|end|>\n" +
                "<|user|><result>10:00</result><result>10:00</result><|end|>\n" +
                "<|assistant|>Both are at 10:00.<|end|>\n",
                t.render(map("messages", TOOL_CONVERSATION)));
    }

    /** Assignments in a loop body stay in the iteration; namespace attributes survive it. */
    @Test
    void namespaceCarriesStateOutOfLoops() {
        Jinja.Template t = Jinja.parse("""
                {%- set ns = namespace(system='', in_tool=false, tool_count=0) %}
                {%- for message in messages %}
                    {%- if message.role == 'system' %}
                        {%- set ns.system = message.content %}
                    {%- endif %}
                {%- endfor %}
                {{- ns.system }}
                {%- for message in messages if message.role != 'system' %}
                    {%- if message.role == 'tool' %}
                        {%- if not ns.in_tool %}{{ '<tools>' }}{% endif %}
                        {%- set ns.in_tool = true %}
                        {%- set ns.tool_count = ns.tool_count + 1 %}
                        {{- '(' ~ message.content ~ ')' }}
                    {%- else %}
                        {%- if ns.in_tool %}{{ '</tools>' }}{% endif %}
                        {%- set ns.in_tool = false %}
                        {{- '<' ~ message.role ~ '>' ~ (message.content or '') }}
                    {%- endif %}
                {%- endfor %}
                {%- if ns.in_tool %}{{ '</tools>' }}{% endif %}
                {{- ' tools=' ~ ns.tool_count }}
                """);
        assertEquals("SYS <user>Time in Oslo and Rome?<assistant><tools>(10:00)(10:00)</tools><assista" +
                "nt>Both are at 10:00. tools=2",
                t.render(map("messages", concat(list(msg("system", "SYS ")), TOOL_CONVERSATION))));
        assertEquals("0",
                render("{% set count = 0 %}{% for m in messages %}{% set count = count + 1 %}"
                        + "{% endfor %}{{ count }}",
                        map("messages", CONVERSATION)));
        assertEquals("4",
                render("{% set ns = namespace(count=0) %}{% for m in messages %}"
                        + "{% set ns.count = ns.count + 1 %}{% endfor %}"
                        + "{{ ns.count }}",
                        map("messages", CONVERSATION)));
        assertEquals("set inside if",
                render("{% if true %}{% set shown = 'set inside if' %}{% endif %}{{ shown }}"));
    }

    /** selectattr/rejectattr with tests, map by attribute and by filter, select, unique, join, first, last. */
    @Test
    void selectAndRejectChains() {
        Jinja.Template t = Jinja.parse("""
                {%- set system_messages = messages | selectattr('role', 'equalto', 'system') | list %}
                {%- set others = messages | rejectattr('role', 'equalto', 'system') | list %}
                {{- system_messages | length }}|{{ others | map(attribute='role') | join(',') }}
                {{- '|' ~ messages | selectattr('tool_calls', 'defined') | list | length }}
                {{- '|' ~ (others | last).content }}
                {{- '|' ~ messages | map(attribute='content') | select('string') | map('trim') | map('upper') | first }}
                {{- '|' ~ messages | rejectattr('content', 'none') | map(attribute='role') | unique | join('+') }}
                """);
        assertEquals("1|user,assistant,user,user,assistant,tool,tool,assistant|1|Both are at " +
                "10:00.|YOU ANSWER BRIEFLY.|system+user+assistant+tool",
                t.render(map("messages", concat(CONVERSATION, TOOL_CONVERSATION))));
    }

    /**
     * Macros with defaults and keyword arguments, called as expressions, seeing the variables of their definition
     * scope when called.
     */
    @Test
    void macros() {
        Jinja.Template t = Jinja.parse("""
                {%- macro render_content(content, prefix='') %}
                    {%- if content is string %}
                        {{- prefix ~ content }}
                    {%- else %}
                        {%- for part in content if part.type == 'text' %}
                            {{- prefix ~ part.text }}
                            {%- if not loop.last %}{{ ' ' }}{% endif %}
                        {%- endfor %}
                    {%- endif %}
                {%- endmacro %}
                {%- for message in messages %}
                    {{- message.role ~ ': ' ~ render_content(message.content, prefix='> ') ~ '\\n' }}
                {%- endfor %}
                """);
        assertEquals("user: > What is this? > Be brief.\n" +
                "assistant: > A cat.\n",
                t.render(map("messages", MULTIMODAL)));
        assertEquals("<b>bold</b>|<br>|<i>x</i>",
                render("{% macro tag(name, body='', close=true) %}<{{ name }}"
                        + ">{{ body }}{% if close %}</{{ name }}>{% endif %}"
                        + "{% endmacro %}{{ tag('b', 'bold') }}|{{ tag('br', close=false) }}"
                        + "|{{ tag(body='x', name='i') }}"));
        assertEquals("HEY!!",
                render("{% set suffix = '!' %}{% macro shout(s) %}{{ s | upper ~ suffix }}"
                        + "{% endmacro %}{% set suffix = '!!' %}{{ shout('hey') }}"));
        assertEquals("3 2 1 0",
                render("{% macro countdown(n) %}{{ n }}{% if n > 0 %}"
                        + " {{ countdown(n - 1) }}{% endif %}{% endmacro %}"
                        + "{{ countdown(3) }}"));
    }

    /**
     * '-' strips all whitespace on its side, '+' keeps it; block tags and comments trim their line; output tags do
     * not.
     */
    @Test
    void whitespaceControl() {
        assertEquals("A\n" +
                "    B\n" +
                "C",
                render("A\n    {% if true %}\n    B\n    {% endif %}\nC"));
        assertEquals("x\n" +
                "  y",
                render("{{ 'x' }}\n  {{ 'y' }}\n"));
        assertEquals("abc",
                render("a  {%- if true -%}  b  {%- endif -%}  c"));
        assertEquals("a\n" +
                "  b\n" +
                "c",
                render("a\n  {%+ if true %}b{% endif +%}\nc"));
        assertEquals("A\n" +
                "BC",
                render("A\n  {# a comment #}\nB {#- trimmed -#} C"));
        assertEquals("  x  12 34",
                render("{{- '  x  ' -}}\n\n{{ 1 }} {{- 2 }} {{ 3 -}} {{ 4 }}"));
        assertEquals("line1\n" +
                "line2\n" +
                "line3\n",
                render("line1\r\nline2\r\n{% if true %}\r\nline3\r\n{% endif %}\r\n"));
        assertEquals("{{ not evaluated }} {% if %}",
                render("{% raw %}{{ not evaluated }} {% if %}{% endraw %}"));
    }

    /** Operators with Python/Jinja precedence and Python number semantics. */
    @Test
    void expressions() {
        assertEquals("7 9 64 3 -4 2 3.5 2.0 0.30000000000000004 1e-05 2.5e+20",
                render("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 2 ** 3 ** 2 }}"
                        + " {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }}"
                        + " {{ 6 / 3 }} {{ 0.1 + 0.2 }} {{ 1e-05 }} {{ 2.5e20 }}"));
        assertEquals("True True True True True True True True",
                render("{{ 1 == 1.0 }} {{ n == 3 }} {{ x == 0.5 }} {{ 'b' > 'a' }}"
                        + " {{ 1 < n <= 3 }} {{ 'ell' in 'hello' }} {{ 'k' in {'k': 1} }}"
                        + " {{ 3 not in [1, 2] }}",
                        map("n", 3, "x", 0.5)));
        assertEquals("yes [] fallback 0 False",
                render("{{ 'yes' if n > 2 else 'no' }} [{{ 'shown' if false }}"
                        + "] {{ none or 'fallback' }} {{ 0 and 'never' }}"
                        + " {{ not n }}",
                        map("n", 3)));
        assertEquals("a1NoneTrue abcd [1, 2] --- 4 4",
                render("{{ 'a' ~ 1 ~ none ~ true }} {{ 'ab' + 'cd' }}"
                        + " {{ [1] + [2] }} {{ '-' * 3 }} {{ -n }} {{ n | abs }}",
                        map("n", -4)));
    }

    /** Python str methods, negative indexes and slices. */
    @Test
    void stringMethodsAndSlicing() {
        assertEquals("pad|hi|left|['a', ' b', 'c']|['a', 'b']|['k', 'v=w']|['a', 'b']",
                render("{{ '  pad  '.strip() }}|{{ 'xxhixx'.strip('x') }}"
                        + "|{{ '  left'.lstrip() }}|{{ 'a, b,c'.split(',') }}"
                        + "|{{ ' a  b '.split() }}|{{ 'k=v=w'.split('=', 1) }}"
                        + "|{{ 'a\\nb'.splitlines() }}"));
        assertEquals("True|True|<answer>42</answer>|11|[think]plan[/think]\n" +
                "[answer]42[/answer]",
                render("{{ s.startswith('<think>') }}|{{ s.endswith(('x', '</answer>')) }}"
                        + "|{{ s.split('</think>')[-1].lstrip() }}|{{ s.find('</think>') }}"
                        + "|{{ s.replace('<', '[').replace('>', ']') }}",
                        map("s", "<think>plan</think>\n<answer>42</answer>")));
        assertEquals("ag|bcd|abcd|gfedcba|aceg|[2, 3, 4]|[3, 4]|[4, 3, 2, 1]",
                render("{{ s[0] }}{{ s[-1] }}|{{ s[1:4] }}|{{ s[:-3] }}"
                        + "|{{ s[::-1] }}|{{ s[::2] }}|{{ items[1:] }}|{{ items[-2:] }}"
                        + "|{{ items[::-1] }}",
                        map("s", "abcdefg", "items", list(1, 2, 3, 4))));
        assertEquals("Hello World|Hello|MIXEDmixed|a, b|1|007",
                render("{{ 'hello world'.title() }}|{{ 'hELLO'.capitalize() }}"
                        + "|{{ 'Mixed'.upper() }}{{ 'Mixed'.lower() }}|{{ ', '.join(['a', 'b']) }}"
                        + "|{{ 'abc'.count('b') }}|{{ '7'.zfill(3) }}"));
    }

    /** Iterating keys and items, get with a default, items and dictsort filters, attribute falling back to keys. */
    @Test
    void dictionaries() {
        assertEquals("c=3;a=1;b=2; cab 2 none 3 1 ['c', 'a', 'b'] 6",
                render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}"
                        + " {% for k in d %}{{ k }}{% endfor %} {{ d.get('b') }}"
                        + " {{ d.get('zz', 'none') }} {{ d.c }} {{ d['a'] }}"
                        + " {{ d.keys() | list }} {{ d.values() | list | sum }}",
                        map("d", map("c", 3, "a", 1, "b", 2))));
        assertEquals("c:3 a:1 b:2 abc ('c', 3)",
                render("{% for k, v in d | items %}{{ k }}:{{ v }} {% endfor %}"
                        + "{% for k, v in d | dictsort %}{{ k }}{% endfor %}"
                        + " {{ d | dictsort(by='value', reverse=true) | first }}",
                        map("d", map("c", 3, "a", 1, "b", 2))));
        assertEquals("{'k': 'v'} {'nested': {'list': [1, 'two', None, True, 1.0]}} {'a': 1, 'b': 'x'}",
                render("{{ d }} {{ {'nested': {'list': [1, 'two', none, true, 1.0]}}"
                        + " }} {{ dict(a=1, b='x') }}",
                        map("d", map("k", "v"))));
    }

    /** None, booleans, floats, lists, tuples and dicts print as Python's str() does. */
    @Test
    void printsValuesAsPython() {
        assertEquals("None True False 3 3.0 0.5 1e+16 0.0001 [1, 'a', None] ('x',) (1, 2) [] {} " +
                "[\"it's\"]",
                render("{{ none }} {{ true }} {{ false }} {{ 3 }} {{ 3.0 }}"
                        + " {{ 0.5 }} {{ 1e16 }} {{ 0.0001 }} {{ [1, 'a', none] }}"
                        + " {{ ('x',) }} {{ (1, 2) }} {{ [] }} {{ {} }} {{ [\"it's\"] }}"));
        assertEquals("[1, 2.5, 's', None, True, {'k': [1]}]",
                render("{{ values }}",
                        map("values", list(1, 2.5, "s", null, true, map("k", list(1))))));
    }

    /** Missing variables and keys are undefined: empty, false, replaced by default, tested with 'is defined'. */
    @Test
    void undefinedValues() {
        assertEquals("[] False True dflt empty 0 no",
                render("[{{ missing }}] {{ missing is defined }} {{ missing is undefined }}"
                        + " {{ missing | default('dflt') }} {{ '' | default('empty', true) }}"
                        + " {{ missing | length }} {% for x in missing %}"
                        + "never{% endfor %}{{ 'no' if not missing }}"));
        assertEquals("False anon [] True",
                render("{{ message.tool_calls is defined }} {{ message['name'] | default('anon') }}"
                        + " [{{ message.nothing }}] {{ message.content is none }}",
                        map("message", msg("user", null))));
        assertEquals("no tools ",
                render("{% if tools is defined and tools %}tools{% else %}"
                        + "no tools{% endif %} {% if tools is not none %}"
                        + "not none{% endif %}",
                        map("tools", null)));
    }

    /**
     * break and continue, an inline loop filter (which the loop counters follow), and for-else when nothing is
     * iterated.
     */
    @Test
    void loopControlsFilterAndElse() {
        assertEquals("0246",
                render("{% for i in range(10) %}{% if i is odd %}{% continue %}"
                        + "{% endif %}{% if i > 6 %}{% break %}{% endif %}"
                        + "{{ i }}{% endfor %}"));
        assertEquals("1:Hello,2:Name three colors.",
                render("{% for m in messages if m.role == 'user' %}{{ loop.index }}"
                        + ":{{ m.content | trim }}{{ ',' if not loop.last }}"
                        + "{% endfor %}",
                        map("messages", CONVERSATION)));
        assertEquals("no messages|1x2y",
                render("{% for m in messages %}{{ m }}{% else %}no messages{% endfor %}"
                        + "|{% for a, b in [(1, 'x'), (2, 'y')] %}{{ a }}"
                        + "{{ b }}{% endfor %}",
                        map("messages", list())));
    }

    /** The common filters. */
    @Test
    void filters() {
        assertEquals("t|Hello World|Hello|a+b+c|3|ABC|x|[1, 2, 3]|['A', 'b', 'c']|[1, 2, 3]|[3, 2, 1]",
                render("{{ '  t  ' | trim }}|{{ 'hello world' | title }}"
                        + "|{{ 'hELLO' | capitalize }}|{{ 'a-b-c' | replace('-', '+') }}"
                        + "|{{ 'abc' | length }}|{{ 'abc' | upper }}|{{ 'x' | string }}"
                        + "|{{ [3, 1, 2] | sort }}|{{ ['b', 'A', 'c'] | sort }}"
                        + "|{{ [1, 2, 1, 3] | unique | list }}|{{ [1, 2, 3] | reverse | list }}"));
        assertEquals("43|3.5|0|2.0|3.14|3.0|6|2|8|[[1, 2], [3, 4], [5]]",
                render("{{ '42' | int + 1 }}|{{ '3.5' | float }}|{{ 'abc' | int }}"
                        + "|{{ 2.5 | round }}|{{ 3.14159 | round(2) }}|{{ 2.1 | round(0, 'ceil') }}"
                        + "|{{ [1, 2, 3] | sum }}|{{ [4, 2, 8] | min }}|{{ [4, 2, 8] | max }}"
                        + "|{{ [1, 2, 3, 4, 5] | batch(2) | list }}"));
        assertEquals("first\n" +
                "    second\n" +
                "\n" +
                "    third|  a\n" +
                "  b|3|a long...|ab|['a', 'b', 'c']|ac",
                render("{{ 'first\\nsecond\\n\\nthird' | indent(4) }}|{{ 'a\\nb' | indent(2, first=true) "
                        + "}}|{{ 'one two three' | wordcount }}|{{ 'a long sentence to cut' | truncate(10, "
                        + "leeway=0) }}|{{ ['a', 'b'] | join }}|{{ 'abc' | list }}"
                        + "|{{ 'abc' | first }}{{ 'abc' | last }}"));
        assertEquals("SHOUT THIS|[built 2]|QUIET",
                render("{% filter upper %}shout {{ 'this' }}{% endfilter %}"
                        + "|{% set block %}  built {{ 1 + 1 }}  {% endset %}"
                        + "[{{ block | trim }}]|{% set loud | upper %}quiet{% endset %}"
                        + "{{ loud }}"));
    }

    /** The 'is' tests. */
    @Test
    void tests() {
        assertEquals("True True True True True True True True True True True True True True False " +
                "True True True",
                render("{{ 'a' is string }} {{ 1 is number }} {{ 1 is integer }}"
                        + " {{ 1.5 is float }} {{ true is boolean }} {{ {} is mapping }}"
                        + " {{ [] is iterable }} {{ 'ab' is sequence }} {{ none is none }}"
                        + " {{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }}"
                        + " {{ 2 is in [1, 2] }} {{ 'x' is equalto 'x' }}"
                        + " {{ 1 is eq 2 }} {{ 'ab' is lower }} {{ range is callable }}"
                        + " {{ true is sameas true }}"));
        assertEquals("parts text other ",
                render("{% for m in messages %}{{ 'text' if m.content is string else 'parts' if m.content "
                        + "is iterable else 'other' }} {% endfor %}",
                        map("messages", concat(MULTIMODAL, list(msg("tool", null))))));
    }

    /** Syntax errors are reported when parsing, with the line and column and what was expected. */
    @Test
    void syntaxErrorsNameLineAndColumn() {
        assertEquals("line 3, column 19: unexpected 'end of statement block'",
                errorOf(() -> Jinja.parse("{% for m in messages %}\n  {{ m.content }}\n  {% if m.role == %}\n"
                        + "{% endfor %}")));
        assertEquals("line 2, column 7: Unexpected end of template. Jinja was looking for the following tags:"
                        + " 'elif' or 'else' or 'endif'. The innermost block that needs to be closed is 'if'.",
                errorOf(() -> Jinja.parse("{% if messages %}\n  text\n")));
        assertEquals("line 1, column 20: Encountered unknown tag 'endif'. Jinja was looking for the following tags:"
                        + " 'endfor' or 'else'. The innermost block that needs to be closed is 'for'.",
                errorOf(() -> Jinja.parse("{% for x in y %}{% endif %}")));
        assertEquals("line 2, column 4: Encountered unknown tag 'endfor'.",
                errorOf(() -> Jinja.parse("line\n{% endfor %}")));
        assertEquals("line 1, column 7: unexpected '}', expected ')'", errorOf(() -> Jinja.parse("{{ (1 }}")));
        assertEquals("line 2, column 4: unexpected char \"'\" (unterminated string)",
                errorOf(() -> Jinja.parse("ok\n{{ 'never closed }}")));
        assertEquals("line 1, column 1: Missing end of comment tag", errorOf(() -> Jinja.parse("{# open comment")));
        assertEquals("line 1, column 4: 'break' outside loop", errorOf(() -> Jinja.parse("{% break %}")));
        assertEquals("line 1, column 17: non-default argument follows default argument",
                errorOf(() -> Jinja.parse("{% macro m(a=1, b) %}{% endmacro %}")));
    }

    /** An unknown filter or test fails the parse, unless it is inside an if, where it fails only when reached. */
    @Test
    void unknownFiltersAndTests() {
        assertEquals("line 1, column 8: No filter named 'frobnicate'.",
                errorOf(() -> Jinja.parse("{{ x | frobnicate }}")));
        assertEquals("line 3, column 9: No test named 'frobbed'.",
                errorOf(() -> Jinja.parse("{% if x %}\n{{ x is frobbed }}{% endif %}\n{{ x is frobbed }}")));
        Jinja.Template guarded = Jinja.parse("{% if x %}{{ x | frobnicate }}{% endif %}done");
        assertEquals("done", guarded.render(map("x", false)));
        assertEquals("No filter named 'frobnicate' found.", errorOf(() -> guarded.render(map("x", true))));
    }

    /** Errors while rendering carry Python's (or Jinja's) message. */
    @Test
    void runtimeErrors() {
        assertEquals("'missing' is undefined", errorOf(() -> Jinja.parse("{{ missing.attr }}").render(Map.of())));
        assertEquals("'dict object' has no attribute 'function'",
                errorOf(() -> Jinja.parse("{{ message.function.name }}").render(map("message", msg("user", "hi")))));
        assertEquals("access to attribute 'append' of 'list' object is unsafe.",
                errorOf(() -> Jinja.parse("{{ messages.append(1) }}").render(map("messages", list()))));
        assertEquals("unsupported operand type(s) for +: 'int' and 'str'",
                errorOf(() -> Jinja.parse("{{ 1 + 'a' }}").render(Map.of())));
        assertEquals("can only concatenate str (not \"NoneType\") to str",
                errorOf(() -> Jinja.parse("{{ 'role: ' + content }}").render(map("content", null))));
        assertEquals("'int' object is not iterable",
                errorOf(() -> Jinja.parse("{% for x in 5 %}{% endfor %}").render(Map.of())));
        assertEquals("division by zero", errorOf(() -> Jinja.parse("{{ 1 / 0 }}").render(Map.of())));
        assertEquals("macro 'm' takes not more than 1 argument(s)",
                errorOf(() -> Jinja.parse("{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}").render(Map.of())));
    }

    /** strftime_now formats the local time with C strftime codes. */
    @Test
    void strftimeNow() {
        LocalDateTime t = LocalDateTime.of(2024, 7, 26, 14, 5, 9, 123_456_000);
        assertEquals("26 Jul 2024|Friday July Fri|14:05:09|02 PM|208 29 30 5 5|24 20 26|26 7 14|123456|%|%Q",
                Jinja.strftime("%d %b %Y|%A %B %a|%H:%M:%S|%I %p|%j %U %W %u %w|%y %C %e|%-d %-m %-H|%f|%%|%Q", t));
        assertEquals("2024-07-26 14:05:09|Fri Jul 26 14:05:09 2024|07/26/24 14:05:09|30 2024",
                Jinja.strftime("%F %T|%c|%x %X|%V %G", t));
        assertEquals("12 AM|001|00 00|01 2025|Wed|12",
                Jinja.strftime("%I %p|%j|%U %W|%V %G|%a|%-I", LocalDateTime.of(2025, 1, 1, 0, 0)));

        Jinja.Template today = Jinja.parse("{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%H:%M:%S') }}");
        DateTimeFormatter dayFormat = DateTimeFormatter.ofPattern("dd MMM yyyy", Locale.ENGLISH);
        for (int attempt = 0; ; attempt++) {
            LocalDate before = LocalDate.now();
            String[] out = today.render(Map.of()).split("\\|");
            if (!before.equals(LocalDate.now()) && attempt < 3) continue; // crossed midnight
            assertEquals(before.format(dayFormat), out[0]);
            assertTrue(out[1].matches("\\d\\d:\\d\\d:\\d\\d"), out[1]);
            break;
        }
    }

    /** transformers' {% generation %} tag (marking assistant text for masks) renders its body. */
    @Test
    void generationTagRendersItsBody() {
        Jinja.Template t = Jinja.parse("{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}"
                + "[{{ m.content }}]{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}");
        assertEquals("Q[A]", t.render(map("messages", list(msg("user", "Q"), msg("assistant", "A")))));
    }

    /** A parsed template renders many times, each rendering with its own variables and assignments. */
    @Test
    void templateIsReusable() {
        Jinja.Template t = Jinja.parse("{% set greeting = 'Hi ' ~ name %}{{ greeting }}");
        assertEquals("Hi A", t.render(map("name", "A")));
        assertEquals("Hi B", t.render(map("name", "B")));
        assertEquals("Hi ", t.render(null));
    }
}
