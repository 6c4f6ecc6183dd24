package dev.tokenpress.io;

import java.math.BigDecimal;
import java.math.BigInteger;
import java.math.MathContext;
import java.math.RoundingMode;
import java.time.LocalDateTime;
import java.time.ZoneId;
import java.time.temporal.IsoFields;
import java.util.AbstractList;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Comparator;
import java.util.Deque;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Objects;
import java.util.RandomAccess;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * A Jinja2 template engine for Hugging Face chat templates (the {@code chat_template} strings of {@code
 * tokenizer_config.json}). It renders them as {@code transformers} does, which uses Jinja2's
 * {@code ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])} with the
 * globals {@code raise_exception} and {@code strftime_now} and its own {@code tojson} filter.
 *
 * <p>Values: {@link String}, {@link Long}/{@link Integer}/{@link Double} (other {@link Number}s are accepted),
 * {@link Boolean}, {@code null} (Python {@code None}), {@link List}, {@link Map} (iterated in its own order, so pass a
 * {@link LinkedHashMap}). A missing variable, attribute or item is <em>undefined</em> as with Jinja2's default
 * {@code Undefined}: it prints as "", is false, iterates as empty, {@code is defined} is false, {@code |length} is 0,
 * {@code |default} replaces it; arithmetic, comparison ({@code <} etc.), calling it or taking an attribute or item of
 * it raise an error naming it.
 *
 * <p>Syntax:
 * <ul>
 *   <li>{@code {{ expr }}}, {@code {% statement %}}, {@code {# comment #}}; {@code -} on either side of a delimiter
 *       strips the whitespace (newlines included) on that side, {@code +} keeps it. Block tags and comments drop the
 *       newline right after them (trim_blocks) and the spaces and tabs in front of them on their line
 *       (lstrip_blocks); {@code {{ }}} does neither. One newline at the end of the template is dropped, {@code \r\n}
 *       and {@code \r} read as {@code \n}. {@code {% raw %}...{% endraw %}} is verbatim text.</li>
 *   <li>Statements: {@code if/elif/else/endif}; {@code for target in expr [if cond] ... [else] ... endfor} (tuple
 *       targets, {@code loop.index/index0/revindex/revindex0/first/last/length/previtem/nextitem/depth/cycle()/
 *       changed()}, {@code break}, {@code continue}, {@code recursive} loops calling {@code loop(children)});
 *       {@code set x = expr}, {@code set a, b = expr}, {@code set ns.attr = expr} (on a {@code namespace}),
 *       {@code set x [| filters] ... endset};
 *       {@code macro name(a, b=default) ... endmacro} (called as functions, with {@code varargs}/{@code kwargs});
 *       {@code filter name(args) ... endfilter}; {@code with a = expr ... endwith}; {@code generation ...
 *       endgeneration} (renders its body). Not supported: {@code call}, {@code include}, {@code import},
 *       {@code extends}, {@code block}, {@code autoescape}.</li>
 *   <li>Scoping as Jinja2: a {@code for} iteration, a macro call and {@code with} get their own scope (an assignment
 *       in them is not seen outside, hence {@code namespace}); {@code if} does not; macros see the variables of the
 *       scope they were defined in, as they are when called.</li>
 *   <li>Expressions with Jinja2's precedence: literals (strings with Python escapes, adjacent strings joined, ints,
 *       floats, {@code true/false/none} in either case, lists, tuples, dicts), names, {@code a.b} (a method, else a map
 *       key), {@code a[b]} (negative indexes, slices {@code [start:stop:step]}), calls with positional, keyword,
 *       {@code *args} and {@code **kwargs} arguments, {@code x|filter(args)}, {@code x is [not] test(args)},
 *       then, loosest last: {@code **} (left-associative; a unary minus binds tighter, {@code -2 ** 2} is 4),
 *       {@code * / // %}, {@code ~}, {@code + -}, comparisons (chained, with {@code in} and {@code not in}),
 *       {@code not}, {@code and}, {@code or} (returning an operand, as Python), {@code a if c [else b]}. Filters
 *       and tests bind tighter than any operator ({@code a + b | f} filters {@code b}).</li>
 *   <li>Filters: abs, attr, batch, capitalize, center, count, d, default, dictsort, e, escape, first, float,
 *       forceescape, format, indent, int, items, join, last, length, list, lower, map, max, min, reject, rejectattr,
 *       replace, reverse, round, safe, select, selectattr, sort, string, sum, title, tojson (indent, separators,
 *       sort_keys, ensure_ascii; as {@code json.dumps}), trim, truncate, unique, upper, wordcount.</li>
 *   <li>Tests: boolean, callable, defined, divisibleby, eq/equalto/==, escaped, even, false, filter, float, ge/>=,
 *       gt/greaterthan/>, in, integer, iterable, le/<=, lower, lt/lessthan/&lt;, mapping, ne/!=, none, number, odd,
 *       sameas, sequence, string, test, true, undefined, upper.</li>
 *   <li>Methods: on strings {@code strip lstrip rstrip split rsplit splitlines startswith endswith upper lower title
 *       capitalize swapcase replace find rfind index rindex count join format center ljust rjust zfill partition
 *       rpartition removeprefix removesuffix isdigit isalpha isalnum isspace islower isupper isnumeric isdecimal
 *       istitle}; on maps {@code items keys values get copy}; on lists {@code index count copy}. Methods that
 *       would modify a value are refused (the environment is immutable).</li>
 *   <li>Globals: {@code range} (at most 100000 items), {@code namespace}, {@code dict}, {@code raise_exception(msg)}
 *       (fails the rendering with {@code msg}), {@code strftime_now(fmt)} (local time, C-library strftime codes
 *       including the {@code -}, {@code _}, {@code 0} and {@code ^} flags, Python's {@code %f}).</li>
 *   <li>Printing follows Python's {@code str}: None, True/False, floats as {@code repr} ({@code 2.0}, {@code 1e-05}),
 *       lists, tuples and dicts in Python repr form.</li>
 * </ul>
 * Syntax errors (thrown by {@link #parse}) name the line and column; an unknown filter or test is a syntax error
 * unless it is inside an {@code if} or conditional expression, where it fails when evaluated (as Jinja2).
 */
public final class Jinja {
    private Jinja() {
    }

    /** Parses a template; throws {@link TemplateException} (message names line and column) on a syntax error. */
    public static Template parse(String source) {
        Objects.requireNonNull(source, "source");
        Lexer lexer = new Lexer(source);
        return new Template(new Parser(lexer.src, lexer.tokenize()).parseTemplate());
    }

    /** A parsed template; immutable and safe to render from several threads. */
    public static final class Template {
        private final List<Node> body;

        private Template(List<Node> body) {
            this.body = body;
        }

        /**
         * Renders with the given variables; throws {@link TemplateException} on runtime errors, including
         * {@code raise_exception(msg)} (message = msg).
         */
        public String render(Map<String, Object> variables) {
            Frame root = new Frame(GLOBALS);
            if (variables != null) root.vars.putAll(variables);
            StringBuilder out = new StringBuilder();
            try {
                renderAll(body, root, out);
            } catch (TemplateException e) {
                throw e;
            } catch (StackOverflowError e) {
                throw new TemplateException("maximum recursion depth exceeded");
            } catch (RuntimeException e) {
                throw new TemplateException(e.getClass().getSimpleName() + ": " + e.getMessage());
            }
            return out.toString();
        }
    }

    /** A syntax error (from {@link #parse}) or a rendering error (from {@link Template#render}). */
    public static final class TemplateException extends RuntimeException {
        private static final long serialVersionUID = 1L;

        public TemplateException(String message) {
            super(message);
        }
    }

    // =====================================================================================================
    // Lexer
    // =====================================================================================================

    private enum T { DATA, VAR_BEGIN, VAR_END, BLOCK_BEGIN, BLOCK_END, NAME, STRING, INT, FLOAT, OP, EOF }

    private record Token(T type, String text, Object value, int pos) {
    }

    private static final String[] OPERATORS = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~",
            "[", "]", "(", ")", "{", "}", ">", "<", "=", ".", ":", "|", ",", ";"};

    /**
     * Splits the source into text and tag tokens, applying whitespace control the way Jinja2's lexer does
     * (trim_blocks and lstrip_blocks on).
     */
    private static final class Lexer {
        final String src;
        private final int n;
        private final List<Token> out = new ArrayList<>();
        private boolean lineStarting = true;

        Lexer(String source) {
            String s = source.replace("\r\n", "\n").replace('\r', '\n');
            if (s.endsWith("\n")) s = s.substring(0, s.length() - 1);
            src = s;
            n = s.length();
        }

        List<Token> tokenize() {
            int pos = 0;
            while (pos < n) {
                int open = findOpen(pos);
                if (open < 0) {
                    data(src.substring(pos), pos);
                    break;
                }
                char kind = src.charAt(open + 1);
                int p = open + 2;
                char sign = p < n && (src.charAt(p) == '-' || src.charAt(p) == '+') ? src.charAt(p) : 0;
                if (sign != 0) p++;
                data(strip(src.substring(pos, open), sign, kind != '{'), pos);
                lineStarting = false;
                int rawEnd = kind == '%' ? rawBegin(p) : -1;
                if (kind == '#') pos = comment(p, open);
                else if (rawEnd >= 0) pos = raw(rawEnd);
                else pos = tag(kind, open, p);
            }
            out.add(new Token(T.EOF, "", null, n));
            return out;
        }

        private int findOpen(int from) {
            for (int i = src.indexOf('{', from); i >= 0 && i + 1 < n; i = src.indexOf('{', i + 1)) {
                char c = src.charAt(i + 1);
                if (c == '{' || c == '%' || c == '#') return i;
            }
            return -1;
        }

        private void data(String text, int pos) {
            if (!text.isEmpty()) out.add(new Token(T.DATA, text, null, pos));
        }

        /** The text in front of a tag: all trailing whitespace goes for '-', leading blanks of the line for blocks. */
        private String strip(String text, char sign, boolean blockOrComment) {
            if (sign == '-') return rstripWhitespace(text);
            if (sign != '+' && blockOrComment) {
                int l = text.lastIndexOf('\n') + 1;
                if ((l > 0 || lineStarting) && l < text.length() && allWhitespace(text, l)) return text.substring(0, l);
            }
            return text;
        }

        private int comment(int p, int open) {
            int q = src.indexOf("#}", p);
            if (q < 0) throw syntax(src, open, "Missing end of comment tag");
            char before = q > p ? src.charAt(q - 1) : 0;
            int end = q + 2;
            if (before == '-') end = skipWhitespace(end);
            else if (before != '+' && end < n && src.charAt(end) == '\n') end++;
            lineStarting = src.charAt(end - 1) == '\n';
            return end;
        }

        /** The end of {@code raw %}} after "{%" and its sign, or -1 if this is not a raw tag. */
        private int rawBegin(int p) {
            int q = skipWhitespace(p);
            if (!src.startsWith("raw", q)) return -1;
            q = skipWhitespace(q + 3);
            if (src.startsWith("-%}", q)) return skipWhitespace(q + 3);
            if (src.startsWith("%}", q)) return q + 2;
            return -1;
        }

        private int raw(int bodyStart) {
            lineStarting = src.charAt(bodyStart - 1) == '\n';
            for (int k = src.indexOf("{%", bodyStart); k >= 0; k = src.indexOf("{%", k + 1)) {
                int p = k + 2;
                char sign = p < n && (src.charAt(p) == '-' || src.charAt(p) == '+') ? src.charAt(p) : 0;
                if (sign != 0) p++;
                p = skipWhitespace(p);
                if (!src.startsWith("endraw", p)) continue;
                p = skipWhitespace(p + 6);
                int end;
                if (src.startsWith("+%}", p)) end = p + 3;
                else if (src.startsWith("-%}", p)) end = skipWhitespace(p + 3);
                else if (src.startsWith("%}", p)) end = p + 2 < n && src.charAt(p + 2) == '\n' ? p + 3 : p + 2;
                else continue;
                data(strip(src.substring(bodyStart, k), sign, true), bodyStart);
                lineStarting = src.charAt(end - 1) == '\n';
                return end;
            }
            throw syntax(src, bodyStart, "Missing end of raw directive");
        }

        private int tag(char kind, int open, int p) {
            out.add(new Token(kind == '%' ? T.BLOCK_BEGIN : T.VAR_BEGIN, src.substring(open, p), null, open));
            Deque<Character> balance = new ArrayDeque<>();
            while (p < n) {
                if (balance.isEmpty()) {
                    int end = tagEnd(kind, p);
                    if (end >= 0) {
                        out.add(new Token(kind == '%' ? T.BLOCK_END : T.VAR_END, src.substring(p, end), null, p));
                        lineStarting = src.charAt(end - 1) == '\n';
                        return end;
                    }
                }
                char c = src.charAt(p);
                if (isSpace(c)) {
                    p++;
                } else if (c >= '0' && c <= '9') {
                    p = number(p);
                } else if (c == '_' || Character.isLetter(c)) {
                    int q = p + 1;
                    while (q < n && (src.charAt(q) == '_' || Character.isLetterOrDigit(src.charAt(q)))) q++;
                    out.add(new Token(T.NAME, src.substring(p, q), null, p));
                    p = q;
                } else if (c == '\'' || c == '"') {
                    p = string(p, c);
                } else {
                    String op = null;
                    for (String o : OPERATORS) {
                        if (src.startsWith(o, p)) {
                            op = o;
                            break;
                        }
                    }
                    if (op == null) throw syntax(src, p, "unexpected char " + strRepr(String.valueOf(c)));
                    if (op.equals("(") || op.equals("[") || op.equals("{")) {
                        balance.push(op.equals("(") ? ')' : op.equals("[") ? ']' : '}');
                    } else if (op.equals(")") || op.equals("]") || op.equals("}")) {
                        if (balance.isEmpty()) throw syntax(src, p, "unexpected '" + op + "'");
                        char expected = balance.pop();
                        if (expected != op.charAt(0)) {
                            throw syntax(src, p, "unexpected '" + op + "', expected '" + expected + "'");
                        }
                    }
                    out.add(new Token(T.OP, op, null, p));
                    p += op.length();
                }
            }
            return p;
        }

        private int tagEnd(char kind, int p) {
            if (kind == '%') {
                if (src.startsWith("+%}", p)) return p + 3;
                if (src.startsWith("-%}", p)) return skipWhitespace(p + 3);
                if (src.startsWith("%}", p)) return p + 2 < n && src.charAt(p + 2) == '\n' ? p + 3 : p + 2;
            } else {
                if (src.startsWith("-}}", p)) return skipWhitespace(p + 3);
                if (src.startsWith("}}", p)) return p + 2;
            }
            return -1;
        }

        private int digits(int p) {
            while (p < n && (Character.isDigit(src.charAt(p))
                    || src.charAt(p) == '_' && p + 1 < n && Character.isDigit(src.charAt(p + 1)))) {
                p++;
            }
            return p;
        }

        private int number(int p) {
            char x = p + 1 < n ? Character.toLowerCase(src.charAt(p + 1)) : 0;
            if (src.charAt(p) == '0' && (x == 'x' || x == 'o' || x == 'b')) {
                int radix = x == 'x' ? 16 : x == 'o' ? 8 : 2;
                int q = p + 2;
                while (q < n && (src.charAt(q) == '_' || Character.digit(src.charAt(q), radix) >= 0)) q++;
                String body = src.substring(p + 2, q).replace("_", "");
                if (body.isEmpty()) throw syntax(src, p, "invalid integer literal");
                out.add(new Token(T.INT, src.substring(p, q), new BigInteger(body, radix).longValue(), p));
                return q;
            }
            int q = digits(p);
            boolean isFloat = false;
            if (p == 0 || src.charAt(p - 1) != '.') {
                int r = q;
                if (r + 1 < n && src.charAt(r) == '.' && Character.isDigit(src.charAt(r + 1))) {
                    r = digits(r + 1);
                    isFloat = true;
                }
                if (r < n && (src.charAt(r) == 'e' || src.charAt(r) == 'E')) {
                    int s = r + 1;
                    if (s < n && (src.charAt(s) == '+' || src.charAt(s) == '-')) s++;
                    if (s < n && Character.isDigit(src.charAt(s))) {
                        r = digits(s);
                        isFloat = true;
                    }
                }
                if (isFloat) {
                    String text = src.substring(p, r);
                    out.add(new Token(T.FLOAT, text, Double.parseDouble(text.replace("_", "")), p));
                    return r;
                }
            }
            String text = src.substring(p, q);
            BigInteger v = new BigInteger(text.replace("_", ""));
            if (v.bitLength() > 63) throw syntax(src, p, "integer literal too large");
            out.add(new Token(T.INT, text, v.longValue(), p));
            return q;
        }

        private int string(int p, char quote) {
            int q = p + 1;
            while (q < n && src.charAt(q) != quote) q += src.charAt(q) == '\\' ? 2 : 1;
            if (q >= n) {
                throw syntax(src, p, "unexpected char " + strRepr(String.valueOf(quote)) + " (unterminated string)");
            }
            out.add(new Token(T.STRING, src.substring(p, q + 1), unescape(src.substring(p + 1, q), p), p));
            return q + 1;
        }

        /** Python's "unicode-escape" decoding of a string literal's body. */
        private String unescape(String s, int pos) {
            if (s.indexOf('\\') < 0) return s;
            StringBuilder b = new StringBuilder(s.length());
            for (int i = 0; i < s.length(); i++) {
                char c = s.charAt(i);
                if (c != '\\' || i + 1 >= s.length()) {
                    b.append(c);
                    continue;
                }
                char d = s.charAt(++i);
                switch (d) {
                    case '\n' -> { }
                    case '\\', '\'', '"' -> b.append(d);
                    case 'a' -> b.append('\u0007');
                    case 'b' -> b.append('\b');
                    case 'f' -> b.append('\f');
                    case 'n' -> b.append('\n');
                    case 'r' -> b.append('\r');
                    case 't' -> b.append('\t');
                    case 'v' -> b.append('\u000b');
                    case 'x', 'u', 'U' -> {
                        int len = d == 'x' ? 2 : d == 'u' ? 4 : 8;
                        if (i + 1 + len > s.length()) throw syntax(src, pos, "truncated \\" + d + " escape");
                        String hex = s.substring(i + 1, i + 1 + len);
                        int cp;
                        try {
                            cp = Integer.parseUnsignedInt(hex, 16);
                        } catch (NumberFormatException e) {
                            throw syntax(src, pos, "truncated \\" + d + " escape");
                        }
                        if (!Character.isValidCodePoint(cp)) throw syntax(src, pos, "illegal Unicode character");
                        b.appendCodePoint(cp);
                        i += len;
                    }
                    case 'N' -> {
                        int close = s.indexOf('}', i);
                        if (i + 1 >= s.length() || s.charAt(i + 1) != '{' || close < 0) {
                            throw syntax(src, pos, "malformed \\N character escape");
                        }
                        try {
                            b.appendCodePoint(Character.codePointOf(s.substring(i + 2, close)));
                        } catch (IllegalArgumentException e) {
                            throw syntax(src, pos, "unknown Unicode character name");
                        }
                        i = close;
                    }
                    default -> {
                        if (d >= '0' && d <= '7') {
                            int v = 0;
                            int k = i;
                            while (k < s.length() && k < i + 3 && s.charAt(k) >= '0' && s.charAt(k) <= '7') {
                                v = v * 8 + (s.charAt(k++) - '0');
                            }
                            b.append((char) v);
                            i = k - 1;
                        } else {
                            b.append('\\').append(d);
                        }
                    }
                }
            }
            return b.toString();
        }

        private int skipWhitespace(int p) {
            while (p < n && isSpace(src.charAt(p))) p++;
            return p;
        }
    }

    private static TemplateException syntax(String src, int pos, String message) {
        int line = 1;
        int lineStart = 0;
        for (int i = 0; i < pos && i < src.length(); i++) {
            if (src.charAt(i) == '\n') {
                line++;
                lineStart = i + 1;
            }
        }
        return new TemplateException("line " + line + ", column " + (pos - lineStart + 1) + ": " + message);
    }

    // =====================================================================================================
    // Parser
    // =====================================================================================================

    /** A filter or test name that is not defined, where it was used, and whether that was in a conditional. */
    private static final class UnknownName {
        final int pos;
        final String message;
        boolean soft;

        UnknownName(int pos, String message, boolean soft) {
            this.pos = pos;
            this.message = message;
            this.soft = soft;
        }
    }

    /** A recursive-descent parser following Jinja2's grammar and precedence. */
    private static final class Parser {
        private final String src;
        private final List<Token> toks;
        private int i;
        private final Deque<List<String>> endTokenStack = new ArrayDeque<>();
        private final Deque<String> tagStack = new ArrayDeque<>();
        private int loopDepth;
        /** Inside an {@code if} or a conditional expression: unknown filters and tests fail only when evaluated. */
        private boolean soft;
        /** Unknown filters and tests met so far. */
        private final List<UnknownName> unknown = new ArrayList<>();
        private Set<String> referenced = new HashSet<>();

        Parser(String src, List<Token> toks) {
            this.src = src;
            this.toks = toks;
        }

        List<Node> parseTemplate() {
            List<Node> body = subparse(null);
            for (UnknownName u : unknown) {
                if (!u.soft) throw syntax(src, u.pos, u.message);
            }
            return body;
        }

        // ---- token stream

        private Token cur() {
            return toks.get(i);
        }

        private Token look() {
            return toks.get(Math.min(i + 1, toks.size() - 1));
        }

        private Token next() {
            Token t = toks.get(i);
            if (t.type != T.EOF) i++;
            return t;
        }

        private boolean isOp(String op) {
            return cur().type == T.OP && cur().text.equals(op);
        }

        private boolean isName(String name) {
            return cur().type == T.NAME && cur().text.equals(name);
        }

        private boolean skipOp(String op) {
            if (!isOp(op)) return false;
            i++;
            return true;
        }

        private boolean skipName(String name) {
            if (!isName(name)) return false;
            i++;
            return true;
        }

        private TemplateException fail(String message, Token at) {
            return syntax(src, at.pos, message);
        }

        private static String describe(Token t) {
            return switch (t.type) {
                case NAME, OP -> t.text;
                case STRING -> "string";
                case INT -> "integer";
                case FLOAT -> "float";
                case DATA -> "template data / text";
                case VAR_BEGIN -> "begin of print statement";
                case VAR_END -> "end of print statement";
                case BLOCK_BEGIN -> "begin of statement block";
                case BLOCK_END -> "end of statement block";
                case EOF -> "end of template";
            };
        }

        private Token expect(T type, String what) {
            Token t = cur();
            if (t.type != type || (what != null && !t.text.equals(what))) {
                String expected = what != null ? what : describe(new Token(type, "", null, 0));
                if (t.type == T.EOF) throw fail("unexpected end of template, expected '" + expected + "'.", t);
                throw fail("expected token '" + expected + "', got '" + describe(t) + "'", t);
            }
            return next();
        }

        private Token expectOp(String op) {
            return expect(T.OP, op);
        }

        private Token expectName() {
            return expect(T.NAME, null);
        }

        // ---- statements

        private List<Node> subparse(List<String> endTokens) {
            List<Node> body = new ArrayList<>();
            if (endTokens != null) endTokenStack.push(endTokens);
            try {
                while (cur().type != T.EOF) {
                    Token t = cur();
                    if (t.type == T.DATA) {
                        body.add(new TextNode(t.text));
                        i++;
                    } else if (t.type == T.VAR_BEGIN) {
                        i++;
                        body.add(new OutputNode(parseTuple(false, true, null, false)));
                        expect(T.VAR_END, null);
                    } else if (t.type == T.BLOCK_BEGIN) {
                        i++;
                        if (endTokens != null && cur().type == T.NAME && endTokens.contains(cur().text)) return body;
                        body.addAll(parseStatement());
                        expect(T.BLOCK_END, null);
                    } else {
                        throw fail("unexpected '" + describe(t) + "'", t);
                    }
                }
                return body;
            } finally {
                if (endTokens != null) endTokenStack.pop();
            }
        }

        private List<Node> parseStatements(List<String> endTokens, boolean dropNeedle) {
            skipOp(":");
            expect(T.BLOCK_END, null);
            List<Node> body = subparse(endTokens);
            if (cur().type == T.EOF) throw failEof(endTokens, cur());
            if (dropNeedle) i++;
            return body;
        }

        private TemplateException failUnknown(String name, List<String> extraEnd, Token at) {
            List<List<String>> stack = new ArrayList<>(endTokenStack);
            java.util.Collections.reverse(stack);
            if (extraEnd != null) stack.add(extraEnd);
            Set<String> expected = new HashSet<>();
            for (List<String> l : stack) expected.addAll(l);
            StringBuilder msg = new StringBuilder(name == null ? "Unexpected end of template."
                    : "Encountered unknown tag '" + name + "'.");
            if (!stack.isEmpty()) {
                StringBuilder looking = new StringBuilder();
                for (String s : stack.get(stack.size() - 1)) {
                    if (looking.length() > 0) looking.append(" or ");
                    looking.append('\'').append(s).append('\'');
                }
                if (name != null && expected.contains(name)) {
                    msg.append(" You probably made a nesting mistake. Jinja is expecting this tag, but currently"
                            + " looking for ").append(looking).append('.');
                } else {
                    msg.append(" Jinja was looking for the following tags: ").append(looking).append('.');
                }
            }
            if (!tagStack.isEmpty()) {
                msg.append(" The innermost block that needs to be closed is '").append(tagStack.peek()).append("'.");
            }
            return fail(msg.toString(), at);
        }

        private TemplateException failEof(List<String> endTokens, Token at) {
            return failUnknown(null, endTokens, at);
        }

        private List<Node> parseStatement() {
            Token t = cur();
            if (t.type != T.NAME) throw fail("tag name expected", t);
            tagStack.push(t.text);
            boolean pop = true;
            try {
                switch (t.text) {
                    case "if":
                        return List.of(parseIf());
                    case "for":
                        return List.of(parseFor());
                    case "set":
                        return List.of(parseSet());
                    case "macro":
                        return List.of(parseMacro());
                    case "filter":
                        return List.of(parseFilterBlock());
                    case "with":
                        return List.of(parseWith());
                    case "break":
                    case "continue":
                        i++;
                        if (loopDepth == 0) throw fail("'" + t.text + "' outside loop", t);
                        return List.of(new LoopControlNode(t.text.equals("break")));
                    case "generation": {
                        i++;
                        return parseStatements(List.of("endgeneration"), true);
                    }
                    case "call":
                    case "include":
                    case "import":
                    case "from":
                    case "extends":
                    case "block":
                    case "autoescape":
                        throw fail("tag '" + t.text + "' is not supported", t);
                    default:
                        tagStack.pop();
                        pop = false;
                        throw failUnknown(t.text, null, t);
                }
            } finally {
                if (pop) tagStack.pop();
            }
        }

        private Node parseIf() {
            i++;
            List<Expr> tests = new ArrayList<>();
            List<List<Node>> bodies = new ArrayList<>();
            List<Node> elseBody = List.of();
            boolean oldSoft = soft;
            soft = true;
            while (true) {
                tests.add(parseTuple(false, false, null, false));
                bodies.add(parseStatements(List.of("elif", "else", "endif"), false));
                Token t = next();
                if (t.text.equals("elif")) continue;
                if (t.text.equals("else")) elseBody = parseStatements(List.of("endif"), true);
                break;
            }
            soft = oldSoft;
            return new IfNode(tests, bodies, elseBody);
        }

        private Node parseFor() {
            i++;
            Object target = parseAssignTarget(true, false, List.of("in"));
            expect(T.NAME, "in");
            Expr iter = parseTuple(false, false, List.of("recursive"), false);
            boolean oldSoft = soft;
            soft = false;
            Expr filter = skipName("if") ? parseExpression(true) : null;
            boolean recursive = skipName("recursive");
            loopDepth++;
            List<Node> body = parseStatements(List.of("endfor", "else"), false);
            loopDepth--;
            List<Node> elseBody = List.of();
            if (next().text.equals("else")) elseBody = parseStatements(List.of("endfor"), true);
            soft = oldSoft;
            return new ForNode(target, iter, filter, recursive, body, elseBody);
        }

        private Node parseSet() {
            i++;
            Object target = parseAssignTarget(true, true, null);
            if (skipOp("=")) return new SetNode(target, parseTuple(false, true, null, false));
            FilterExpr filter = (FilterExpr) parseFilter(null, false);
            boolean oldSoft = soft;
            soft = false;
            List<Node> body = parseStatements(List.of("endset"), true);
            soft = oldSoft;
            return new SetBlockNode(target, filter, body);
        }

        private Node parseMacro() {
            i++;
            String name = expectName().text;
            List<String> params = new ArrayList<>();
            List<Expr> defaults = new ArrayList<>();
            Set<String> outerReferenced = referenced;
            referenced = new HashSet<>();
            expectOp("(");
            while (!isOp(")")) {
                if (!params.isEmpty()) expectOp(",");
                Token p = expectName();
                if (skipOp("=")) {
                    defaults.add(parseExpression(true));
                } else if (defaults.stream().anyMatch(Objects::nonNull)) {
                    throw fail("non-default argument follows default argument", p);
                } else {
                    defaults.add(null);
                }
                params.add(p.text);
            }
            expectOp(")");
            int oldDepth = loopDepth;
            boolean oldSoft = soft;
            loopDepth = 0;
            soft = false;
            List<Node> body = parseStatements(List.of("endmacro"), true);
            loopDepth = oldDepth;
            soft = oldSoft;
            boolean varargs = referenced.contains("varargs");
            boolean kwargs = referenced.contains("kwargs");
            outerReferenced.addAll(referenced);
            referenced = outerReferenced;
            return new MacroNode(name, params, defaults, body, varargs, kwargs);
        }

        private Node parseFilterBlock() {
            i++;
            FilterExpr filter = (FilterExpr) parseFilter(null, true);
            boolean oldSoft = soft;
            soft = false;
            List<Node> body = parseStatements(List.of("endfilter"), true);
            soft = oldSoft;
            return new FilterBlockNode(filter, body);
        }

        private Node parseWith() {
            i++;
            List<Object> targets = new ArrayList<>();
            List<Expr> values = new ArrayList<>();
            while (cur().type != T.BLOCK_END) {
                if (!targets.isEmpty()) expectOp(",");
                targets.add(parseAssignTarget(true, false, null));
                expectOp("=");
                values.add(parseExpression(true));
            }
            boolean oldSoft = soft;
            soft = false;
            List<Node> body = parseStatements(List.of("endwith"), true);
            soft = oldSoft;
            return new WithNode(targets, values, body);
        }

        /** A name, a (nested) tuple of names as a List, or a {@link NsRef}. */
        private Object parseAssignTarget(boolean withTuple, boolean withNamespace, List<String> extraEnd) {
            if (withNamespace && cur().type == T.NAME && look().type == T.OP && look().text.equals(".")) {
                String ns = next().text;
                i++;
                return new NsRef(ns, expectName().text);
            }
            Token at = cur();
            Expr e = withTuple ? parseTuple(true, false, extraEnd, false) : parsePrimary();
            return toTarget(e, at);
        }

        private Object toTarget(Expr e, Token at) {
            if (e instanceof NameExpr ne) return ne.name();
            if (e instanceof ListExpr le && le.tuple()) {
                List<Object> names = new ArrayList<>();
                for (Expr item : le.items()) names.add(toTarget(item, at));
                return names;
            }
            String kind = e instanceof ConstExpr ? "const" : e instanceof ListExpr ? "list"
                    : e.getClass().getSimpleName().replace("Expr", "").toLowerCase(Locale.ROOT);
            throw fail("can't assign to '" + kind + "'", at);
        }

        // ---- expressions

        private Expr parseTuple(boolean simplified, boolean withCondexpr, List<String> extraEnd,
                                boolean explicitParens) {
            List<Expr> args = new ArrayList<>();
            boolean isTuple = false;
            while (true) {
                if (!args.isEmpty()) expectOp(",");
                if (isTupleEnd(extraEnd)) break;
                args.add(simplified ? parsePrimary() : parseExpression(withCondexpr));
                if (isOp(",")) isTuple = true;
                else break;
            }
            if (!isTuple) {
                if (!args.isEmpty()) return args.get(0);
                if (!explicitParens) throw fail("Expected an expression, got '" + describe(cur()) + "'", cur());
            }
            return new ListExpr(args, true);
        }

        private boolean isTupleEnd(List<String> extraEnd) {
            Token t = cur();
            if (t.type == T.VAR_END || t.type == T.BLOCK_END || isOp(")")) return true;
            return extraEnd != null && t.type == T.NAME && extraEnd.contains(t.text);
        }

        private Expr parseExpression(boolean withCondexpr) {
            return withCondexpr ? parseCondexpr() : parseOr();
        }

        private Expr parseCondexpr() {
            int mark = unknown.size();
            Expr expr1 = parseOr();
            while (skipName("if")) {
                Expr expr2 = parseOr();
                Expr expr3 = skipName("else") ? parseCondexpr() : null;
                expr1 = new CondExpr(expr2, expr1, expr3);
                for (int k = mark; k < unknown.size(); k++) unknown.get(k).soft = true;
            }
            return expr1;
        }

        private Expr parseOr() {
            Expr left = parseAnd();
            while (isName("or")) {
                int pos = next().pos;
                left = new LogicExpr(false, left, parseAnd());
            }
            return left;
        }

        private Expr parseAnd() {
            Expr left = parseNot();
            while (isName("and")) {
                int pos = next().pos;
                left = new LogicExpr(true, left, parseNot());
            }
            return left;
        }

        private Expr parseNot() {
            if (isName("not")) {
                int pos = next().pos;
                return new NotExpr(parseNot());
            }
            return parseCompare();
        }

        private Expr parseCompare() {
            Expr first = parseMath1();
            List<String> ops = new ArrayList<>();
            List<Expr> rest = new ArrayList<>();
            while (true) {
                Token t = cur();
                if (t.type == T.OP && List.of("==", "!=", "<", ">", "<=", ">=").contains(t.text)) {
                    i++;
                    ops.add(t.text);
                } else if (isName("in")) {
                    i++;
                    ops.add("in");
                } else if (isName("not") && look().type == T.NAME && look().text.equals("in")) {
                    i += 2;
                    ops.add("not in");
                } else {
                    break;
                }
                rest.add(parseMath1());
            }
            return ops.isEmpty() ? first : new CompareExpr(first, ops, rest);
        }

        private Expr parseMath1() {
            Expr left = parseConcat();
            while (isOp("+") || isOp("-")) {
                Token t = next();
                left = new BinExpr(t.text, left, parseConcat());
            }
            return left;
        }

        private Expr parseConcat() {
            List<Expr> parts = new ArrayList<>();
            parts.add(parseMath2());
            while (skipOp("~")) parts.add(parseMath2());
            return parts.size() == 1 ? parts.get(0) : new ConcatExpr(parts);
        }

        private Expr parseMath2() {
            Expr left = parsePow();
            while (isOp("*") || isOp("/") || isOp("//") || isOp("%")) {
                Token t = next();
                left = new BinExpr(t.text, left, parsePow());
            }
            return left;
        }

        private Expr parsePow() {
            Expr left = parseUnary(true);
            while (isOp("**")) {
                Token t = next();
                left = new BinExpr("**", left, parseUnary(true));
            }
            return left;
        }

        private Expr parseUnary(boolean withFilter) {
            Token t = cur();
            Expr node;
            if (isOp("-") || isOp("+")) {
                i++;
                node = new NegExpr(t.text.equals("-"), parseUnary(false));
            } else {
                node = parsePrimary();
            }
            node = parsePostfix(node);
            if (withFilter) node = parseFilterExpr(node);
            return node;
        }

        private Expr parsePrimary() {
            Token t = cur();
            switch (t.type) {
                case NAME -> {
                    i++;
                    return switch (t.text) {
                        case "true", "True" -> new ConstExpr(Boolean.TRUE);
                        case "false", "False" -> new ConstExpr(Boolean.FALSE);
                        case "none", "None" -> new ConstExpr(null);
                        default -> {
                            referenced.add(t.text);
                            yield new NameExpr(t.text);
                        }
                    };
                }
                case STRING -> {
                    StringBuilder b = new StringBuilder();
                    while (cur().type == T.STRING) b.append((String) next().value);
                    return new ConstExpr(b.toString());
                }
                case INT, FLOAT -> {
                    i++;
                    return new ConstExpr(t.value);
                }
                default -> {
                }
            }
            if (skipOp("(")) {
                Expr e = parseTuple(false, true, null, true);
                expectOp(")");
                return e;
            }
            if (skipOp("[")) {
                List<Expr> items = new ArrayList<>();
                while (!isOp("]")) {
                    if (!items.isEmpty()) expectOp(",");
                    if (isOp("]")) break;
                    items.add(parseExpression(true));
                }
                expectOp("]");
                return new ListExpr(items, false);
            }
            if (skipOp("{")) {
                List<Expr> keys = new ArrayList<>();
                List<Expr> values = new ArrayList<>();
                while (!isOp("}")) {
                    if (!keys.isEmpty()) expectOp(",");
                    if (isOp("}")) break;
                    keys.add(parseExpression(true));
                    expectOp(":");
                    values.add(parseExpression(true));
                }
                expectOp("}");
                return new DictExpr(keys, values);
            }
            throw fail("unexpected '" + describe(t) + "'", t);
        }

        private Expr parsePostfix(Expr node) {
            while (true) {
                if (isOp(".") || isOp("[")) node = parseSubscript(node);
                else if (isOp("(")) node = new CallExpr(node, parseCallArgs());
                else return node;
            }
        }

        private Expr parseFilterExpr(Expr node) {
            while (true) {
                if (isOp("|")) node = parseFilter(node, false);
                else if (isName("is")) node = parseTest(node);
                else if (isOp("(")) node = new CallExpr(node, parseCallArgs());
                else return node;
            }
        }

        private Expr parseSubscript(Expr node) {
            Token t = next();
            if (t.text.equals(".")) {
                Token attr = next();
                if (attr.type == T.NAME) return new AttrExpr(node, attr.text);
                if (attr.type != T.INT) throw fail("expected name or number", attr);
                return new ItemExpr(node, new ConstExpr(attr.value));
            }
            List<Expr> args = new ArrayList<>();
            while (!isOp("]")) {
                if (!args.isEmpty()) expectOp(",");
                args.add(parseSubscribed());
            }
            expectOp("]");
            Expr key = args.size() == 1 ? args.get(0) : new ListExpr(args, true);
            return new ItemExpr(node, key);
        }

        private Expr parseSubscribed() {
            Expr start = null;
            if (!skipOp(":")) {
                Expr e = parseExpression(true);
                if (!skipOp(":")) return e;
                start = e;
            }
            Expr stop = isOp(":") || isOp("]") || isOp(",") ? null : parseExpression(true);
            Expr step = null;
            if (skipOp(":") && !isOp("]") && !isOp(",")) step = parseExpression(true);
            return new SliceExpr(start, stop, step);
        }

        private CallArgs parseCallArgs() {
            Token open = expectOp("(");
            CallArgs a = new CallArgs();
            boolean requireComma = false;
            while (!isOp(")")) {
                if (requireComma) {
                    expectOp(",");
                    if (isOp(")")) break;
                }
                if (skipOp("*")) {
                    if (a.starArgs != null || a.starKwargs != null) throw invalidCall(open);
                    a.starArgs = parseExpression(true);
                } else if (skipOp("**")) {
                    if (a.starKwargs != null) throw invalidCall(open);
                    a.starKwargs = parseExpression(true);
                } else if (cur().type == T.NAME && look().type == T.OP && look().text.equals("=")) {
                    if (a.starKwargs != null) throw invalidCall(open);
                    String key = next().text;
                    i++;
                    a.kwNames.add(key);
                    a.kwValues.add(parseExpression(true));
                } else {
                    if (a.starArgs != null || a.starKwargs != null || !a.kwNames.isEmpty()) throw invalidCall(open);
                    a.args.add(parseExpression(true));
                }
                requireComma = true;
            }
            expectOp(")");
            return a;
        }

        private TemplateException invalidCall(Token open) {
            return fail("invalid syntax for function call expression", open);
        }

        private Expr parseFilter(Expr node, boolean startInline) {
            while (isOp("|") || startInline) {
                if (!startInline) i++;
                Token nameTok = expectName();
                String name = nameTok.text;
                while (skipOp(".")) name += "." + expectName().text;
                CallArgs args = isOp("(") ? parseCallArgs() : new CallArgs();
                if (!FILTERS.containsKey(name)) {
                    unknown.add(new UnknownName(nameTok.pos, "No filter named '" + name + "'.", soft));
                }
                node = new FilterExpr(node, name, args);
                startInline = false;
            }
            return node;
        }

        private Expr parseTest(Expr node) {
            Token is = next();
            boolean negated = skipName("not");
            Token nameTok = expectName();
            String name = nameTok.text;
            while (skipOp(".")) name += "." + expectName().text;
            CallArgs args = new CallArgs();
            Token t = cur();
            if (isOp("(")) {
                args = parseCallArgs();
            } else if ((t.type == T.NAME || t.type == T.STRING || t.type == T.INT || t.type == T.FLOAT
                    || isOp("[") || isOp("{")) && !(isName("else") || isName("or") || isName("and"))) {
                if (isName("is")) throw fail("You cannot chain multiple tests with is", t);
                args.args.add(parsePostfix(parsePrimary()));
            }
            if (!TESTS.containsKey(name)) {
                unknown.add(new UnknownName(nameTok.pos, "No test named '" + name + "'.", soft));
            }
            Expr test = new TestExpr(node, name, args);
            return negated ? new NotExpr(test) : test;
        }
    }

    // =====================================================================================================
    // Runtime values
    // =====================================================================================================

    /** A missing variable, attribute or item; {@link #hint} says which. */
    private static final class Undefined {
        final String hint;

        Undefined(String hint) {
            this.hint = hint;
        }

        TemplateException error() {
            return new TemplateException(hint);
        }
    }

    /** The object of {@code namespace()}: attributes assignable with {@code {% set ns.x = ... %}}. */
    private static final class Namespace {
        final Map<String, Object> attrs = new LinkedHashMap<>();
    }

    /** A Python tuple: a fixed list that prints as {@code (a, b)}. */
    private static final class Tuple extends AbstractList<Object> implements RandomAccess {
        private final Object[] items;

        Tuple(Object... items) {
            this.items = items;
        }

        static Tuple of(List<?> list) {
            return new Tuple(list.toArray());
        }

        @Override
        public Object get(int index) {
            return items[index];
        }

        @Override
        public int size() {
            return items.length;
        }
    }

    /** The result of {@code dict.items()}, {@code keys()} or {@code values()}: a list printed as the view. */
    private static final class View extends AbstractList<Object> implements RandomAccess {
        final String kind;
        final List<Object> items;

        View(String kind, List<Object> items) {
            this.kind = kind;
            this.items = items;
        }

        @Override
        public Object get(int index) {
            return items.get(index);
        }

        @Override
        public int size() {
            return items.size();
        }
    }

    /** A Python range. */
    private static final class Range extends AbstractList<Object> implements RandomAccess {
        final long start;
        final long stop;
        final long step;
        final int size;

        Range(long start, long stop, long step) {
            this.start = start;
            this.stop = stop;
            this.step = step;
            long n = step > 0 ? (stop - start + step - 1) / step : (start - stop - step - 1) / -step;
            if (n > MAX_RANGE) {
                throw new TemplateException("Range too big. The sandbox blocks ranges larger than MAX_RANGE ("
                        + MAX_RANGE + ").");
            }
            this.size = (int) Math.max(0, n);
        }

        @Override
        public Object get(int index) {
            return start + index * step;
        }

        @Override
        public int size() {
            return size;
        }

        @Override
        public String toString() {
            return "range(" + start + ", " + stop + (step == 1 ? "" : ", " + step) + ")";
        }
    }

    private static final int MAX_RANGE = 100_000;

    /** Arguments of a call to {@code fn}: positional and keyword. */
    private record Args(String fn, List<Object> pos, Map<String, Object> kw) {
        Object get(int index, String name, Object dflt) {
            if (index >= 0 && index < pos.size()) return pos.get(index);
            if (kw.containsKey(name)) return kw.get(name);
            return dflt;
        }

        Object required(int index, String name) {
            if (index >= 0 && index < pos.size()) return pos.get(index);
            if (kw.containsKey(name)) return kw.get(name);
            throw new TemplateException(fn + "() missing required argument '" + name + "'");
        }

        Args drop(int n) {
            return new Args(fn, pos.subList(Math.min(n, pos.size()), pos.size()), kw);
        }
    }

    /** Something callable from a template: globals, macros, methods, loop helpers. */
    private interface Fn {
        Object call(Args args);
    }

    /** A named built-in function or bound method. */
    private record Builtin(String name, Fn impl) implements Fn {
        @Override
        public Object call(Args args) {
            return impl.call(args);
        }
    }

    /** A macro bound to the scope it was defined in. */
    private static final class Macro implements Fn {
        final MacroNode def;
        final Frame closure;

        Macro(MacroNode def, Frame closure) {
            this.def = def;
            this.closure = closure;
        }

        @Override
        public Object call(Args a) {
            Frame f = new Frame(closure);
            List<String> params = def.params;
            if (a.pos.size() > params.size() && !def.varargs) {
                throw new TemplateException("macro '" + def.name + "' takes not more than " + params.size()
                        + " argument(s)");
            }
            Map<String, Object> extraKw = new LinkedHashMap<>(a.kw);
            for (int k = 0; k < params.size(); k++) {
                String p = params.get(k);
                Object v;
                if (k < a.pos.size()) {
                    if (extraKw.containsKey(p)) {
                        throw new TemplateException("macro '" + def.name + "' got multiple values for argument '"
                                + p + "'");
                    }
                    v = a.pos.get(k);
                } else if (extraKw.containsKey(p)) {
                    v = extraKw.remove(p);
                } else if (def.defaults.get(k) != null) {
                    v = def.defaults.get(k).eval(f);
                } else {
                    v = new Undefined("parameter '" + p + "' was not provided");
                }
                f.vars.put(p, v);
            }
            if (!extraKw.isEmpty() && !def.kwargs) {
                throw new TemplateException("macro '" + def.name + "' takes no keyword argument '"
                        + extraKw.keySet().iterator().next() + "'");
            }
            f.vars.put("varargs", Tuple.of(a.pos.subList(Math.min(params.size(), a.pos.size()), a.pos.size())));
            f.vars.put("kwargs", extraKw);
            StringBuilder out = new StringBuilder();
            renderAll(def.body, f, out);
            return out.toString();
        }
    }

    /** The {@code loop} variable of a for loop. */
    private static final class LoopInfo implements Fn {
        final List<Object> items;
        final int depth;
        final ForNode recursiveLoop;
        final Frame outer;
        int index0;
        Object lastChanged = LoopInfo.class;

        LoopInfo(List<Object> items, int depth, ForNode recursiveLoop, Frame outer) {
            this.items = items;
            this.depth = depth;
            this.recursiveLoop = recursiveLoop;
            this.outer = outer;
        }

        @Override
        public Object call(Args a) {
            if (recursiveLoop == null) {
                throw new TemplateException(
                        "Tried to call non recursive loop. Maybe you forgot the 'recursive' modifier.");
            }
            StringBuilder out = new StringBuilder();
            recursiveLoop.run(outer, a.required(0, "iterable"), depth + 1, out);
            return out.toString();
        }

        Object attr(String name) {
            int n = items.size();
            return switch (name) {
                case "index" -> (long) index0 + 1;
                case "index0" -> (long) index0;
                case "revindex" -> (long) (n - index0);
                case "revindex0" -> (long) (n - index0 - 1);
                case "first" -> index0 == 0;
                case "last" -> index0 == n - 1;
                case "length" -> (long) n;
                case "depth" -> (long) depth;
                case "depth0" -> (long) depth - 1;
                case "previtem" -> index0 > 0 ? items.get(index0 - 1) : new Undefined("there is no previous item");
                case "nextitem" -> index0 < n - 1 ? items.get(index0 + 1) : new Undefined("there is no next item");
                case "cycle" -> new Builtin("cycle", a -> {
                    if (a.pos.isEmpty()) throw new TemplateException("no items for cycling given");
                    return a.pos.get(index0 % a.pos.size());
                });
                case "changed" -> new Builtin("changed", a -> {
                    Object value = Tuple.of(a.pos);
                    if (lastChanged != LoopInfo.class && pyEquals(value, lastChanged)) return false;
                    lastChanged = value;
                    return true;
                });
                default -> new Undefined("'LoopContext object' has no attribute '" + name + "'");
            };
        }
    }

    /** A variable scope; lookups go to the enclosing scope when a name is not here. */
    private static final class Frame {
        final Frame parent;
        final Map<String, Object> vars = new HashMap<>();

        Frame(Frame parent) {
            this.parent = parent;
        }

        Object lookup(String name) {
            for (Frame f = this; f != null; f = f.parent) {
                Object v = f.vars.get(name);
                if (v != null || f.vars.containsKey(name)) return v;
            }
            return new Undefined("'" + name + "' is undefined");
        }
    }

    private record NsRef(String name, String attr) {
    }

    private record SliceKey(Object start, Object stop, Object step) {
    }

    /** Thrown by break/continue and caught by the enclosing loop. */
    private static final class LoopControl extends RuntimeException {
        private static final long serialVersionUID = 1L;
        final boolean isBreak;

        LoopControl(boolean isBreak) {
            super(null, null, false, false);
            this.isBreak = isBreak;
        }
    }

    private static final LoopControl BREAK = new LoopControl(true);
    private static final LoopControl CONTINUE = new LoopControl(false);

    // =====================================================================================================
    // Statements
    // =====================================================================================================

    private interface Node {
        void render(Frame f, StringBuilder out);
    }

    private static void renderAll(List<Node> nodes, Frame f, StringBuilder out) {
        for (Node node : nodes) node.render(f, out);
    }

    private record TextNode(String text) implements Node {
        @Override
        public void render(Frame f, StringBuilder out) {
            out.append(text);
        }
    }

    private record OutputNode(Expr expr) implements Node {
        @Override
        public void render(Frame f, StringBuilder out) {
            out.append(str(expr.eval(f)));
        }
    }

    private record IfNode(List<Expr> tests, List<List<Node>> bodies, List<Node> elseBody) implements Node {
        @Override
        public void render(Frame f, StringBuilder out) {
            for (int k = 0; k < tests.size(); k++) {
                if (truthy(tests.get(k).eval(f))) {
                    renderAll(bodies.get(k), f, out);
                    return;
                }
            }
            renderAll(elseBody, f, out);
        }
    }

    private record ForNode(Object target, Expr iter, Expr filter, boolean recursive, List<Node> body,
                           List<Node> elseBody) implements Node {
        @Override
        public void render(Frame f, StringBuilder out) {
            run(f, iter.eval(f), 1, out);
        }

        /** One level of the loop; a recursive loop's {@code loop(items)} runs the next level. */
        void run(Frame f, Object iterable, int depth, StringBuilder out) {
            List<Object> items = iterate(iterable);
            if (filter != null) {
                List<Object> kept = new ArrayList<>();
                for (Object item : items) {
                    Frame tf = new Frame(f);
                    assign(tf, target, item);
                    if (truthy(filter.eval(tf))) kept.add(item);
                }
                items = kept;
            }
            if (items.isEmpty()) {
                renderAll(elseBody, new Frame(f), out);
                return;
            }
            LoopInfo loop = new LoopInfo(items, depth, recursive ? this : null, f);
            for (int k = 0; k < items.size(); k++) {
                Frame it = new Frame(f);
                assign(it, target, items.get(k));
                loop.index0 = k;
                it.vars.put("loop", loop);
                try {
                    renderAll(body, it, out);
                } catch (LoopControl c) {
                    if (c.isBreak) break;
                }
            }
        }
    }

    private record LoopControlNode(boolean isBreak) implements Node {
        @Override
        public void render(Frame f, StringBuilder out) {
            throw isBreak ? BREAK : CONTINUE;
        }
    }

    private record SetNode(Object target, Expr value) implements Node {
        @Override
        public void render(Frame f, StringBuilder out) {
            assign(f, target, value.eval(f));
        }
    }

    private record SetBlockNode(Object target, FilterExpr filter, List<Node> body) implements Node {
        @Override
        public void render(Frame f, StringBuilder out) {
            StringBuilder sb = new StringBuilder();
            renderAll(body, f, sb);
            Object value = sb.toString();
            if (filter != null) value = filter.applyTo(value, f);
            assign(f, target, value);
        }
    }

    private record MacroNode(String name, List<String> params, List<Expr> defaults, List<Node> body, boolean varargs,
                             boolean kwargs) implements Node {
        @Override
        public void render(Frame f, StringBuilder out) {
            f.vars.put(name, new Macro(this, f));
        }
    }

    private record FilterBlockNode(FilterExpr filter, List<Node> body) implements Node {
        @Override
        public void render(Frame f, StringBuilder out) {
            StringBuilder sb = new StringBuilder();
            renderAll(body, new Frame(f), sb);
            out.append(str(filter.applyTo(sb.toString(), f)));
        }
    }

    private record WithNode(List<Object> targets, List<Expr> values, List<Node> body) implements Node {
        @Override
        public void render(Frame f, StringBuilder out) {
            Frame inner = new Frame(f);
            for (int k = 0; k < targets.size(); k++) assign(inner, targets.get(k), values.get(k).eval(f));
            renderAll(body, inner, out);
        }
    }

    /** Binds a target (a name, a nested list of names or a namespace attribute) in the frame. */
    private static void assign(Frame f, Object target, Object value) {
        if (target instanceof String name) {
            f.vars.put(name, value);
        } else if (target instanceof NsRef ref) {
            Object ns = f.lookup(ref.name);
            if (!(ns instanceof Namespace n)) {
                throw new TemplateException("cannot assign attribute on non-namespace object");
            }
            n.attrs.put(ref.attr, value);
        } else {
            List<?> names = (List<?>) target;
            List<Object> values = iterate(value);
            if (values.size() != names.size()) {
                throw new TemplateException(values.size() > names.size()
                        ? "too many values to unpack (expected " + names.size() + ")"
                        : "not enough values to unpack (expected " + names.size() + ", got " + values.size() + ")");
            }
            for (int k = 0; k < names.size(); k++) assign(f, names.get(k), values.get(k));
        }
    }

    // =====================================================================================================
    // Expressions
    // =====================================================================================================

    private interface Expr {
        Object eval(Frame f);
    }

    private record ConstExpr(Object value) implements Expr {
        @Override
        public Object eval(Frame f) {
            return value;
        }
    }

    private record NameExpr(String name) implements Expr {
        @Override
        public Object eval(Frame f) {
            return f.lookup(name);
        }
    }

    private record ListExpr(List<Expr> items, boolean tuple) implements Expr {
        @Override
        public Object eval(Frame f) {
            List<Object> values = new ArrayList<>(items.size());
            for (Expr e : items) values.add(e.eval(f));
            return tuple ? Tuple.of(values) : values;
        }
    }

    private record DictExpr(List<Expr> keys, List<Expr> values) implements Expr {
        @Override
        public Object eval(Frame f) {
            Map<Object, Object> map = new LinkedHashMap<>();
            for (int k = 0; k < keys.size(); k++) map.put(keys.get(k).eval(f), values.get(k).eval(f));
            return map;
        }
    }

    private record AttrExpr(Expr obj, String name) implements Expr {
        @Override
        public Object eval(Frame f) {
            return getAttr(obj.eval(f), name);
        }
    }

    private record ItemExpr(Expr obj, Expr key) implements Expr {
        @Override
        public Object eval(Frame f) {
            return getItem(obj.eval(f), key.eval(f));
        }
    }

    private record SliceExpr(Expr start, Expr stop, Expr step) implements Expr {
        @Override
        public Object eval(Frame f) {
            return new SliceKey(start == null ? null : start.eval(f), stop == null ? null : stop.eval(f),
                    step == null ? null : step.eval(f));
        }
    }

    /** The argument expressions of a call, filter or test. */
    private static final class CallArgs {
        final List<Expr> args = new ArrayList<>();
        final List<String> kwNames = new ArrayList<>();
        final List<Expr> kwValues = new ArrayList<>();
        Expr starArgs;
        Expr starKwargs;

        Args eval(Frame f, String fn) {
            List<Object> pos = new ArrayList<>(args.size());
            for (Expr e : args) pos.add(e.eval(f));
            if (starArgs != null) pos.addAll(iterate(starArgs.eval(f)));
            Map<String, Object> kw = new LinkedHashMap<>();
            for (int k = 0; k < kwNames.size(); k++) kw.put(kwNames.get(k), kwValues.get(k).eval(f));
            if (starKwargs != null) {
                Object m = starKwargs.eval(f);
                if (!(m instanceof Map<?, ?> map)) throw new TemplateException("argument after ** must be a mapping");
                for (Map.Entry<?, ?> e : map.entrySet()) kw.put(str(e.getKey()), e.getValue());
            }
            return new Args(fn, pos, kw);
        }
    }

    private record CallExpr(Expr callee, CallArgs args) implements Expr {
        @Override
        public Object eval(Frame f) {
            Object fn = callee.eval(f);
            if (fn instanceof Undefined u) throw u.error();
            String name = fn instanceof Builtin b ? b.name : fn instanceof Macro m ? m.def.name() : "loop";
            if (!(fn instanceof Fn c)) throw new TemplateException("'" + typeName(fn) + "' object is not callable");
            return c.call(args.eval(f, name));
        }
    }

    /** {@code value | name(args)}; value is null for the filter of a filter block or block set. */
    private record FilterExpr(Expr value, String name, CallArgs args) implements Expr {
        @Override
        public Object eval(Frame f) {
            return callFilter(name, value.eval(f), args.eval(f, name));
        }

        /** For filter blocks and block sets: the chain applied to the rendered body. */
        Object applyTo(Object input, Frame f) {
            Object v = value == null ? input : ((FilterExpr) value).applyTo(input, f);
            return callFilter(name, v, args.eval(f, name));
        }
    }

    private record TestExpr(Expr value, String name, CallArgs args) implements Expr {
        @Override
        public Object eval(Frame f) {
            return callTest(name, value.eval(f), args.eval(f, name));
        }
    }

    private record NotExpr(Expr operand) implements Expr {
        @Override
        public Object eval(Frame f) {
            return !truthy(operand.eval(f));
        }
    }

    private record NegExpr(boolean negate, Expr operand) implements Expr {
        @Override
        public Object eval(Frame f) {
            Object v = operand.eval(f);
            if (v instanceof Undefined u) throw u.error();
            if (!isNumber(v)) {
                throw new TemplateException("bad operand type for unary " + (negate ? "-" : "+") + ": '"
                        + typeName(v) + "'");
            }
            if (isFloat(v)) return negate ? -toDouble(v) : toDouble(v);
            return negate ? Math.negateExact(toLong(v)) : toLong(v);
        }
    }

    /** {@code and} / {@code or}, returning the deciding operand as Python does. */
    private record LogicExpr(boolean and, Expr left, Expr right) implements Expr {
        @Override
        public Object eval(Frame f) {
            Object l = left.eval(f);
            return truthy(l) == and ? right.eval(f) : l;
        }
    }

    private record BinExpr(String op, Expr left, Expr right) implements Expr {
        @Override
        public Object eval(Frame f) {
            return binop(op, left.eval(f), right.eval(f));
        }
    }

    private record ConcatExpr(List<Expr> parts) implements Expr {
        @Override
        public Object eval(Frame f) {
            StringBuilder b = new StringBuilder();
            for (Expr e : parts) b.append(str(e.eval(f)));
            return b.toString();
        }
    }

    /** A chain of comparisons, {@code a < b <= c} meaning {@code a < b and b <= c}. */
    private record CompareExpr(Expr first, List<String> ops, List<Expr> rest) implements Expr {
        @Override
        public Object eval(Frame f) {
            Object left = first.eval(f);
            for (int k = 0; k < ops.size(); k++) {
                Object right = rest.get(k).eval(f);
                if (!compare(ops.get(k), left, right)) return false;
                left = right;
            }
            return true;
        }
    }

    private record CondExpr(Expr test, Expr then, Expr otherwise) implements Expr {
        @Override
        public Object eval(Frame f) {
            if (truthy(test.eval(f))) return then.eval(f);
            return otherwise != null ? otherwise.eval(f)
                    : new Undefined("the inline if-expression evaluated to false and no else section was defined.");
        }
    }

    // =====================================================================================================
    // Python semantics: types, truth, printing, equality, ordering, arithmetic
    // =====================================================================================================

    private static boolean isInt(Object v) {
        return v instanceof Long || v instanceof Integer || v instanceof Short || v instanceof Byte
                || v instanceof BigInteger;
    }

    private static boolean isFloat(Object v) {
        return v instanceof Double || v instanceof Float || v instanceof BigDecimal;
    }

    /** int, float or bool (a bool is an int in Python arithmetic). */
    private static boolean isNumber(Object v) {
        return isInt(v) || isFloat(v) || v instanceof Boolean;
    }

    private static long toLong(Object v) {
        if (v instanceof Boolean b) return b ? 1 : 0;
        if (v instanceof BigInteger b) {
            if (b.bitLength() > 63) throw new TemplateException("integer too large: " + b);
            return b.longValue();
        }
        return ((Number) v).longValue();
    }

    private static double toDouble(Object v) {
        if (v instanceof Boolean b) return b ? 1 : 0;
        return ((Number) v).doubleValue();
    }

    private static String typeName(Object v) {
        if (v == null) return "NoneType";
        if (v instanceof String) return "str";
        if (v instanceof Boolean) return "bool";
        if (isInt(v)) return "int";
        if (isFloat(v)) return "float";
        if (v instanceof Tuple) return "tuple";
        if (v instanceof Range) return "range";
        if (v instanceof View view) return view.kind;
        if (v instanceof List) return "list";
        if (v instanceof Map) return "dict";
        if (v instanceof Undefined) return "Undefined";
        if (v instanceof Namespace) return "Namespace";
        if (v instanceof Macro) return "Macro";
        if (v instanceof LoopInfo) return "LoopContext";
        if (v instanceof Fn) return "builtin_function_or_method";
        return v.getClass().getSimpleName();
    }

    private static boolean truthy(Object v) {
        if (v == null || v instanceof Undefined) return false;
        if (v instanceof Boolean b) return b;
        if (isInt(v)) return v instanceof BigInteger b ? b.signum() != 0 : ((Number) v).longValue() != 0;
        if (isFloat(v)) return ((Number) v).doubleValue() != 0;
        if (v instanceof String s) return !s.isEmpty();
        if (v instanceof Collection<?> c) return !c.isEmpty();
        if (v instanceof Map<?, ?> m) return !m.isEmpty();
        return true;
    }

    /** Python's {@code str()}. */
    private static String str(Object v) {
        if (v instanceof String s) return s;
        if (v instanceof Undefined) return "";
        return repr(v);
    }

    /** Python's {@code repr()}. */
    private static String repr(Object v) {
        if (v == null) return "None";
        if (v instanceof String s) return strRepr(s);
        if (v instanceof Boolean b) return b ? "True" : "False";
        if (isInt(v)) return v.toString();
        if (isFloat(v)) return floatRepr(((Number) v).doubleValue());
        if (v instanceof Undefined) return "Undefined";
        if (v instanceof Range) return v.toString();
        if (v instanceof View view) return view.kind + "(" + repr(view.items) + ")";
        if (v instanceof List<?> l) {
            StringBuilder b = new StringBuilder(v instanceof Tuple ? "(" : "[");
            for (int k = 0; k < l.size(); k++) {
                if (k > 0) b.append(", ");
                b.append(repr(l.get(k)));
            }
            if (v instanceof Tuple && l.size() == 1) b.append(',');
            return b.append(v instanceof Tuple ? ")" : "]").toString();
        }
        if (v instanceof Map<?, ?> m) {
            StringBuilder b = new StringBuilder("{");
            for (Map.Entry<?, ?> e : m.entrySet()) {
                if (b.length() > 1) b.append(", ");
                b.append(repr(e.getKey())).append(": ").append(repr(e.getValue()));
            }
            return b.append('}').toString();
        }
        if (v instanceof Namespace ns) return "<Namespace " + repr(ns.attrs) + ">";
        if (v instanceof Macro m) return "<Macro '" + m.def.name + "'>";
        if (v instanceof LoopInfo l) return "<LoopContext " + (l.index0 + 1) + "/" + l.items.size() + ">";
        if (v instanceof Builtin b) return "<built-in method " + b.name + ">";
        return String.valueOf(v);
    }

    private static String strRepr(String s) {
        char q = s.indexOf('\'') >= 0 && s.indexOf('"') < 0 ? '"' : '\'';
        StringBuilder b = new StringBuilder(s.length() + 2).append(q);
        s.codePoints().forEach(c -> {
            if (c == q || c == '\\') b.append('\\').appendCodePoint(c);
            else if (c == '\n') b.append("\\n");
            else if (c == '\r') b.append("\\r");
            else if (c == '\t') b.append("\\t");
            else if (c < 0x20 || c == 0x7f) b.append(String.format("\\x%02x", c));
            else if (c < 0x7f || isPrintable(c)) b.appendCodePoint(c);
            else if (c <= 0xff) b.append(String.format("\\x%02x", c));
            else if (c <= 0xffff) b.append(String.format("\\u%04x", c));
            else b.append(String.format("\\U%08x", c));
        });
        return b.append(q).toString();
    }

    private static boolean isPrintable(int c) {
        if (c == ' ') return true;
        int t = Character.getType(c);
        return t != Character.CONTROL && t != Character.FORMAT && t != Character.SURROGATE
                && t != Character.PRIVATE_USE && t != Character.UNASSIGNED && t != Character.LINE_SEPARATOR
                && t != Character.PARAGRAPH_SEPARATOR && t != Character.SPACE_SEPARATOR;
    }

    /** Python's float repr: the shortest digits that read back as the same double. */
    private static String floatRepr(double d) {
        if (Double.isNaN(d)) return "nan";
        if (Double.isInfinite(d)) return d > 0 ? "inf" : "-inf";
        if (d == 0) return 1 / d < 0 ? "-0.0" : "0.0";
        BigDecimal exact = new BigDecimal(d);
        BigDecimal r = exact;
        for (int p = 1; p <= 17; p++) {
            r = exact.round(new MathContext(p, RoundingMode.HALF_EVEN));
            if (Double.parseDouble(r.toString()) == d) break;
        }
        r = r.stripTrailingZeros();
        String digits = r.unscaledValue().abs().toString();
        int decpt = digits.length() - r.scale();
        StringBuilder b = new StringBuilder(d < 0 ? "-" : "");
        if (decpt - 1 < -4 || decpt - 1 >= 16) {
            b.append(digits.charAt(0));
            if (digits.length() > 1) b.append('.').append(digits, 1, digits.length());
            int e = decpt - 1;
            b.append(e < 0 ? "e-" : "e+").append(Math.abs(e) < 10 ? "0" : "").append(Math.abs(e));
        } else if (decpt <= 0) {
            b.append("0.").append("0".repeat(-decpt)).append(digits);
        } else if (decpt >= digits.length()) {
            b.append(digits).append("0".repeat(decpt - digits.length())).append(".0");
        } else {
            b.append(digits, 0, decpt).append('.').append(digits, decpt, digits.length());
        }
        return b.toString();
    }

    private static boolean pyEquals(Object a, Object b) {
        if (a == b) return true;
        if (a == null || b == null) return false;
        if (a instanceof Undefined || b instanceof Undefined) return a instanceof Undefined && b instanceof Undefined;
        if (isNumber(a) && isNumber(b)) {
            if (isFloat(a) || isFloat(b)) return toDouble(a) == toDouble(b);
            return toLong(a) == toLong(b);
        }
        if (a instanceof String || b instanceof String) return a.equals(b);
        if (a instanceof List<?> x && b instanceof List<?> y) {
            if ((a instanceof Tuple) != (b instanceof Tuple) || x.size() != y.size()) return false;
            for (int k = 0; k < x.size(); k++) if (!pyEquals(x.get(k), y.get(k))) return false;
            return true;
        }
        if (a instanceof Map<?, ?> x && b instanceof Map<?, ?> y) {
            if (x.size() != y.size()) return false;
            for (Map.Entry<?, ?> e : x.entrySet()) {
                Object other = mapGet(y, e.getKey());
                if (other == MISSING || !pyEquals(e.getValue(), other)) return false;
            }
            return true;
        }
        return a.equals(b);
    }

    private static final Object MISSING = new Object();

    /** A map lookup in which the numbers 1, 1L and 1.0 are the same key, as in Python. */
    private static Object mapGet(Map<?, ?> m, Object key) {
        if (m.containsKey(key)) return m.get(key);
        if (isNumber(key)) {
            for (Map.Entry<?, ?> e : m.entrySet()) {
                if (isNumber(e.getKey()) && pyEquals(e.getKey(), key)) return e.getValue();
            }
        }
        return MISSING;
    }

    private static int pyCompare(Object a, Object b, String op) {
        if (a instanceof Undefined u) throw u.error();
        if (b instanceof Undefined u) throw u.error();
        if (isNumber(a) && isNumber(b)) {
            if (isFloat(a) || isFloat(b)) return Double.compare(toDouble(a), toDouble(b));
            return Long.compare(toLong(a), toLong(b));
        }
        if (a instanceof String x && b instanceof String y) return compareCodePoints(x, y);
        if (a instanceof List<?> x && b instanceof List<?> y && (a instanceof Tuple) == (b instanceof Tuple)) {
            for (int k = 0; k < Math.min(x.size(), y.size()); k++) {
                if (!pyEquals(x.get(k), y.get(k))) return pyCompare(x.get(k), y.get(k), op);
            }
            return Integer.compare(x.size(), y.size());
        }
        throw new TemplateException("'" + op + "' not supported between instances of '" + typeName(a) + "' and '"
                + typeName(b) + "'");
    }

    private static int compareCodePoints(String x, String y) {
        int i = 0;
        int j = 0;
        while (i < x.length() && j < y.length()) {
            int a = x.codePointAt(i);
            int b = y.codePointAt(j);
            if (a != b) return Integer.compare(a, b);
            i += Character.charCount(a);
            j += Character.charCount(b);
        }
        return Boolean.compare(i < x.length(), j < y.length());
    }

    private static boolean compare(String op, Object a, Object b) {
        return switch (op) {
            case "==" -> pyEquals(a, b);
            case "!=" -> !pyEquals(a, b);
            case "<" -> pyCompare(a, b, op) < 0;
            case "<=" -> pyCompare(a, b, op) <= 0;
            case ">" -> pyCompare(a, b, op) > 0;
            case ">=" -> pyCompare(a, b, op) >= 0;
            case "in" -> contains(b, a);
            case "not in" -> !contains(b, a);
            default -> throw new IllegalStateException(op);
        };
    }

    private static boolean contains(Object container, Object item) {
        if (container instanceof String s) {
            if (item instanceof Undefined u) throw u.error();
            if (!(item instanceof String sub)) {
                throw new TemplateException("'in <string>' requires string as left operand, not " + typeName(item));
            }
            return s.contains(sub);
        }
        if (container instanceof Map<?, ?> m) {
            if ((item instanceof List && !(item instanceof Tuple)) || item instanceof Map) {
                throw new TemplateException("unhashable type: '" + typeName(item) + "'");
            }
            return mapGet(m, item) != MISSING;
        }
        if (container instanceof Undefined) return false;
        if (container instanceof List<?> l) {
            for (Object o : l) if (pyEquals(o, item)) return true;
            return false;
        }
        throw new TemplateException("argument of type '" + typeName(container) + "' is not iterable");
    }

    private static Object binop(String op, Object a, Object b) {
        if (op.equals("%") && a instanceof String fmt) return printf(fmt, b);
        if (a instanceof Undefined u) throw u.error();
        if (b instanceof Undefined u) throw u.error();
        if (isNumber(a) && isNumber(b)) {
            boolean ints = !isFloat(a) && !isFloat(b);
            try {
                switch (op) {
                    case "+":
                        return ints ? (Object) Math.addExact(toLong(a), toLong(b)) : toDouble(a) + toDouble(b);
                    case "-":
                        return ints ? (Object) Math.subtractExact(toLong(a), toLong(b)) : toDouble(a) - toDouble(b);
                    case "*":
                        return ints ? (Object) Math.multiplyExact(toLong(a), toLong(b)) : toDouble(a) * toDouble(b);
                    case "/":
                        if (toDouble(b) == 0) throw new TemplateException("division by zero");
                        return toDouble(a) / toDouble(b);
                    case "//":
                        if (toDouble(b) == 0) throw new TemplateException("integer division or modulo by zero");
                        if (ints) return Math.floorDiv(toLong(a), toLong(b));
                        return Math.floor(toDouble(a) / toDouble(b));
                    case "%":
                        if (toDouble(b) == 0) throw new TemplateException("integer division or modulo by zero");
                        if (ints) return Math.floorMod(toLong(a), toLong(b));
                        double x = toDouble(a);
                        double y = toDouble(b);
                        double r = x % y;
                        if (r != 0 && (r < 0) != (y < 0)) r += y;
                        return r;
                    case "**":
                        if (ints && toLong(b) >= 0) {
                            long base = toLong(a);
                            long exp = toLong(b);
                            if (base == 0 || base == 1) return exp == 0 ? 1L : base;
                            if (base == -1) return exp % 2 == 0 ? 1L : -1L;
                            if (exp > 64) throw new ArithmeticException();
                            BigInteger power = BigInteger.valueOf(base).pow((int) exp);
                            if (power.bitLength() > 63) throw new ArithmeticException();
                            return power.longValue();
                        }
                        if (toDouble(a) == 0 && toDouble(b) < 0) {
                            throw new TemplateException("0.0 cannot be raised to a negative power");
                        }
                        return Math.pow(toDouble(a), toDouble(b));
                    default:
                        throw new IllegalStateException(op);
                }
            } catch (ArithmeticException e) {
                throw new TemplateException("integer overflow in '" + op + "'");
            }
        }
        if (op.equals("+")) {
            if (a instanceof String x && b instanceof String y) return x + y;
            if (a instanceof List<?> x && b instanceof List<?> y && (a instanceof Tuple) == (b instanceof Tuple)) {
                List<Object> r = new ArrayList<>(x);
                r.addAll(y);
                return a instanceof Tuple ? Tuple.of(r) : r;
            }
        }
        if (op.equals("*")) {
            boolean intA = isInt(a) || a instanceof Boolean;
            boolean intB = isInt(b) || b instanceof Boolean;
            if ((a instanceof String || a instanceof List) && intB) return repeat(a, toLong(b));
            if ((b instanceof String || b instanceof List) && intA) return repeat(b, toLong(a));
        }
        if (op.equals("+") && a instanceof String) {
            throw new TemplateException("can only concatenate str (not \"" + typeName(b) + "\") to str");
        }
        throw new TemplateException("unsupported operand type(s) for " + op + ": '" + typeName(a) + "' and '"
                + typeName(b) + "'");
    }

    private static Object repeat(Object seq, long times) {
        if (times > Integer.MAX_VALUE) throw new TemplateException("repeat count too large");
        if (seq instanceof String s) return times <= 0 ? "" : s.repeat((int) times);
        List<Object> r = new ArrayList<>();
        for (long k = 0; k < times; k++) r.addAll((List<?>) seq);
        return seq instanceof Tuple ? Tuple.of(r) : r;
    }

    /** The items of an iteration: list items, map keys, string characters; nothing for undefined. */
    @SuppressWarnings("unchecked")
    private static List<Object> iterate(Object v) {
        if (v instanceof List<?> l) return (List<Object>) l;
        if (v instanceof Map<?, ?> m) return new ArrayList<>(m.keySet());
        if (v instanceof String s) {
            List<Object> chars = new ArrayList<>(s.length());
            s.codePoints().forEach(c -> chars.add(new String(Character.toChars(c))));
            return chars;
        }
        if (v instanceof Undefined) return List.of();
        if (v instanceof Collection<?> c) return new ArrayList<>(c);
        throw new TemplateException("'" + typeName(v) + "' object is not iterable");
    }

    private static int length(Object v) {
        if (v instanceof String s) return s.codePointCount(0, s.length());
        if (v instanceof Collection<?> c) return c.size();
        if (v instanceof Map<?, ?> m) return m.size();
        if (v instanceof Undefined) return 0;
        throw new TemplateException("object of type '" + typeName(v) + "' has no len()");
    }

    // ---- attribute and item access

    private static String objectTypeRepr(Object o) {
        return o == null ? "None" : typeName(o) + " object";
    }

    private static Object getAttr(Object obj, String name) {
        if (obj instanceof Undefined u) throw u.error();
        if (obj instanceof Namespace ns) {
            return ns.attrs.containsKey(name) ? ns.attrs.get(name)
                    : new Undefined("'Namespace object' has no attribute '" + name + "'");
        }
        if (obj instanceof LoopInfo loop) return loop.attr(name);
        Object m = method(obj, name);
        if (m != null) return m;
        if (obj instanceof Map<?, ?> map) {
            Object v = mapGet(map, name);
            if (v != MISSING) return v;
        }
        return new Undefined("'" + objectTypeRepr(obj) + "' has no attribute '" + name + "'");
    }

    private static Object getItem(Object obj, Object key) {
        if (obj instanceof Undefined u) throw u.error();
        if (key instanceof Undefined u) throw u.error();
        if (key instanceof SliceKey s) {
            // slices bypass Jinja's lenient item lookup: only sequences can be sliced
            if ((obj instanceof List && !(obj instanceof View)) || obj instanceof String) return slice(obj, s);
            throw new TemplateException("'" + typeName(obj) + "' object is not subscriptable");
        }
        if (obj instanceof Map<?, ?> map) {
            Object v = mapGet(map, key);
            if (v != MISSING) return v;
        } else if (((obj instanceof List && !(obj instanceof View)) || obj instanceof String)
                && (isInt(key) || key instanceof Boolean)) {
            long index = toLong(key);
            if (obj instanceof List<?> l) {
                if (index < 0) index += l.size();
                if (index >= 0 && index < l.size()) return l.get((int) index);
            } else {
                String str = (String) obj;
                int n = str.codePointCount(0, str.length());
                if (index < 0) index += n;
                if (index >= 0 && index < n) {
                    int at = n == str.length() ? (int) index : str.offsetByCodePoints(0, (int) index);
                    return new String(Character.toChars(str.codePointAt(at)));
                }
            }
        } else if (obj instanceof Namespace || obj instanceof LoopInfo) {
            if (key instanceof String s) return getAttr(obj, s);
        }
        if (key instanceof String s) {
            Object m = method(obj, s);
            if (m != null) return m;
            return new Undefined("'" + objectTypeRepr(obj) + "' has no attribute '" + s + "'");
        }
        return new Undefined(objectTypeRepr(obj) + " has no element " + repr(key));
    }

    private static Object slice(Object seq, SliceKey s) {
        int[] cps = seq instanceof String str ? str.codePoints().toArray() : null;
        List<?> list = seq instanceof List<?> l ? l : null;
        int n = cps != null ? cps.length : list.size();
        long step = sliceIndex(s.step, 1);
        if (step == 0) throw new TemplateException("slice step cannot be zero");
        long start;
        long stop;
        if (step > 0) {
            start = clampSlice(s.start, 0, n, 0, n);
            stop = clampSlice(s.stop, n, n, 0, n);
        } else {
            start = clampSlice(s.start, n - 1, n, -1, n - 1);
            stop = clampSlice(s.stop, -1, n, -1, n - 1);
        }
        List<Object> items = new ArrayList<>();
        StringBuilder b = new StringBuilder();
        for (long k = start; step > 0 ? k < stop : k > stop; k += step) {
            if (cps != null) b.appendCodePoint(cps[(int) k]);
            else items.add(list.get((int) k));
        }
        if (cps != null) return b.toString();
        return seq instanceof Tuple ? Tuple.of(items) : items;
    }

    private static long sliceIndex(Object v, long dflt) {
        if (v == null) return dflt;
        if (!isInt(v) && !(v instanceof Boolean)) {
            throw new TemplateException("slice indices must be integers or None");
        }
        return toLong(v);
    }

    private static long clampSlice(Object v, long dflt, int n, long lo, long hi) {
        if (v == null) return dflt;
        long x = sliceIndex(v, dflt);
        if (x < 0) x += n;
        return Math.max(lo, Math.min(hi, x));
    }

    // =====================================================================================================
    // Methods of strings, maps and lists
    // =====================================================================================================

    private static final Set<String> UNSAFE_LIST = Set.of("append", "extend", "insert", "pop", "remove",
            "reverse", "sort", "clear");
    private static final Set<String> UNSAFE_MAP = Set.of("pop", "popitem", "setdefault", "update", "clear");

    /** The bound method {@code obj.name}, or null when there is none. */
    private static Object method(Object obj, String name) {
        if (obj instanceof String s) return stringMethod(s, name);
        if (obj instanceof Map<?, ?> m) {
            Fn fn = switch (name) {
                case "items" -> a -> new View("dict_items", itemsOf(m));
                case "keys" -> a -> new View("dict_keys", new ArrayList<>(m.keySet()));
                case "values" -> a -> new View("dict_values", new ArrayList<>(m.values()));
                case "get" -> a -> {
                    Object v = mapGet(m, a.required(0, "key"));
                    return v == MISSING ? a.get(1, "default", null) : v;
                };
                case "copy" -> a -> new LinkedHashMap<Object, Object>(m);
                default -> UNSAFE_MAP.contains(name) ? unsafe(name, "dict") : null;
            };
            return fn == null ? null : new Builtin(name, fn);
        }
        if (obj instanceof List<?> l) {
            Fn fn = switch (name) {
                case "index" -> a -> {
                    Object x = a.required(0, "value");
                    for (int k = 0; k < l.size(); k++) if (pyEquals(l.get(k), x)) return (long) k;
                    throw new TemplateException(repr(x) + " is not in list");
                };
                case "count" -> a -> {
                    Object x = a.required(0, "value");
                    return l.stream().filter(o -> pyEquals(o, x)).count();
                };
                case "copy" -> a -> new ArrayList<Object>(l);
                default -> UNSAFE_LIST.contains(name) ? unsafe(name, typeName(obj)) : null;
            };
            return fn == null ? null : new Builtin(name, fn);
        }
        return null;
    }

    private static Fn unsafe(String name, String type) {
        return a -> {
            throw new TemplateException("access to attribute '" + name + "' of '" + type + "' object is unsafe.");
        };
    }

    private static List<Object> itemsOf(Map<?, ?> m) {
        List<Object> items = new ArrayList<>(m.size());
        for (Map.Entry<?, ?> e : m.entrySet()) items.add(new Tuple(e.getKey(), e.getValue()));
        return items;
    }

    private static String strArg(Args a, int index, String name, String dflt) {
        Object v = a.get(index, name, dflt);
        if (v == null) return null;
        if (!(v instanceof String s)) {
            throw new TemplateException(a.fn + "() argument must be str, not " + typeName(v));
        }
        return s;
    }

    private static long intArg(Args a, int index, String name, long dflt) {
        Object v = a.get(index, name, null);
        if (v == null) return dflt;
        if (!isInt(v) && !(v instanceof Boolean)) {
            throw new TemplateException("'" + typeName(v) + "' object cannot be interpreted as an integer");
        }
        return toLong(v);
    }

    private static Object stringMethod(String s, String name) {
        Fn fn = switch (name) {
            case "strip" -> a -> stripChars(s, strArg(a, 0, "chars", null), true, true);
            case "lstrip" -> a -> stripChars(s, strArg(a, 0, "chars", null), true, false);
            case "rstrip" -> a -> stripChars(s, strArg(a, 0, "chars", null), false, true);
            case "split" -> a -> split(s, strArg(a, 0, "sep", null), intArg(a, 1, "maxsplit", -1));
            case "rsplit" -> a -> rsplit(s, strArg(a, 0, "sep", null), intArg(a, 1, "maxsplit", -1));
            case "splitlines" -> a -> splitLines(s, truthy(a.get(0, "keepends", false)));
            case "startswith", "endswith" -> a -> {
                Object prefix = a.required(0, name.startsWith("s") ? "prefix" : "suffix");
                String target = pySlice(s, a.get(1, "start", null), a.get(2, "end", null));
                List<Object> options = prefix instanceof List<?> l ? new ArrayList<>(l) : List.of(prefix);
                for (Object o : options) {
                    if (!(o instanceof String p)) {
                        throw new TemplateException(name + " first arg must be str or a tuple of str, not "
                                + typeName(o));
                    }
                    if (name.startsWith("s") ? target.startsWith(p) : target.endsWith(p)) return true;
                }
                return false;
            };
            case "upper" -> a -> s.toUpperCase(Locale.ROOT);
            case "lower", "casefold" -> a -> s.toLowerCase(Locale.ROOT);
            case "title" -> a -> pyTitle(s);
            case "capitalize" -> a -> capitalize(s);
            case "swapcase" -> a -> {
                StringBuilder b = new StringBuilder();
                s.codePoints().forEach(c -> b.appendCodePoint(Character.isUpperCase(c) ? Character.toLowerCase(c)
                        : Character.isLowerCase(c) ? Character.toUpperCase(c) : c));
                return b.toString();
            };
            case "replace" -> a -> replace(s, strArg(a, 0, "old", null), strArg(a, 1, "new", null),
                    intArg(a, 2, "count", -1));
            case "find", "index", "rfind", "rindex" -> a -> {
                String sub = strArg(a, 0, "sub", null);
                if (sub == null) throw new TemplateException(name + "() missing required argument 'sub'");
                long start = a.get(1, "start", null) == null ? 0 : intArg(a, 1, "start", 0);
                int[] cps = s.codePoints().toArray();
                int n = cps.length;
                if (start < 0) start = Math.max(0, start + n);
                long end = a.get(2, "end", null) == null ? n : intArg(a, 2, "end", n);
                if (end < 0) end = Math.max(0, end + n);
                end = Math.min(end, n);
                int found = -1;
                if (start <= end) {
                    String window = new String(cps, (int) start, (int) (end - start));
                    int at = name.startsWith("r") ? window.lastIndexOf(sub) : window.indexOf(sub);
                    if (at >= 0) found = (int) start + window.codePointCount(0, at);
                }
                if (found < 0 && name.endsWith("index")) throw new TemplateException("substring not found");
                return (long) found;
            };
            case "count" -> a -> {
                String sub = strArg(a, 0, "sub", null);
                if (sub == null) throw new TemplateException("count() missing required argument 'sub'");
                if (sub.isEmpty()) return (long) s.codePointCount(0, s.length()) + 1;
                long c = 0;
                for (int k = s.indexOf(sub); k >= 0; k = s.indexOf(sub, k + sub.length())) c++;
                return c;
            };
            case "join" -> a -> {
                StringBuilder b = new StringBuilder();
                List<Object> items = iterate(a.required(0, "iterable"));
                for (int k = 0; k < items.size(); k++) {
                    if (!(items.get(k) instanceof String item)) {
                        throw new TemplateException("sequence item " + k + ": expected str instance, "
                                + typeName(items.get(k)) + " found");
                    }
                    if (k > 0) b.append(s);
                    b.append(item);
                }
                return b.toString();
            };
            case "format" -> a -> strFormat(s, a);
            case "center", "ljust", "rjust" -> a -> {
                int width = (int) intArg(a, 0, "width", 0);
                String fill = strArg(a, 1, "fillchar", " ");
                int n = s.codePointCount(0, s.length());
                int marg = width - n;
                if (marg <= 0) return s;
                int left = name.equals("ljust") ? 0 : name.equals("rjust") ? marg : marg / 2 + (marg & width & 1);
                return fill.repeat(left) + s + fill.repeat(marg - left);
            };
            case "zfill" -> a -> {
                int width = (int) intArg(a, 0, "width", 0);
                int n = s.codePointCount(0, s.length());
                if (n >= width) return s;
                boolean sign = !s.isEmpty() && (s.charAt(0) == '+' || s.charAt(0) == '-');
                return (sign ? s.substring(0, 1) : "") + "0".repeat(width - n) + (sign ? s.substring(1) : s);
            };
            case "partition", "rpartition" -> a -> {
                String sep = strArg(a, 0, "sep", null);
                if (sep == null || sep.isEmpty()) throw new TemplateException("empty separator");
                int k = name.equals("partition") ? s.indexOf(sep) : s.lastIndexOf(sep);
                if (k < 0) return name.equals("partition") ? new Tuple(s, "", "") : new Tuple("", "", s);
                return new Tuple(s.substring(0, k), sep, s.substring(k + sep.length()));
            };
            case "removeprefix" -> a -> {
                String p = strArg(a, 0, "prefix", "");
                return s.startsWith(p) ? s.substring(p.length()) : s;
            };
            case "removesuffix" -> a -> {
                String p = strArg(a, 0, "suffix", "");
                return !p.isEmpty() && s.endsWith(p) ? s.substring(0, s.length() - p.length()) : s;
            };
            case "isdigit", "isdecimal", "isnumeric" ->
                    a -> !s.isEmpty() && s.codePoints().allMatch(Character::isDigit);
            case "isalpha" -> a -> !s.isEmpty() && s.codePoints().allMatch(Character::isLetter);
            case "isalnum" -> a -> !s.isEmpty() && s.codePoints().allMatch(Character::isLetterOrDigit);
            case "isspace" -> a -> !s.isEmpty() && s.codePoints().allMatch(Jinja::isSpace);
            case "islower" -> a -> isLower(s);
            case "isupper" -> a -> isUpper(s);
            case "istitle" -> a -> !s.isEmpty() && pyTitle(s).equals(s) && s.codePoints().anyMatch(Character::isLetter);
            default -> null;
        };
        return fn == null ? null : new Builtin(name, fn);
    }

    private static String pySlice(String s, Object start, Object end) {
        if (start == null && end == null) return s;
        return (String) slice(s, new SliceKey(start, end, null));
    }

    private static boolean isSpace(int c) {
        return Character.isWhitespace(c) || c == 0x85 || c == 0xa0 || c == 0x2007 || c == 0x202f;
    }

    private static boolean allWhitespace(String s, int from) {
        for (int k = from; k < s.length(); k++) if (!isSpace(s.charAt(k))) return false;
        return true;
    }

    private static String rstripWhitespace(String s) {
        return stripChars(s, null, false, true);
    }

    private static String stripChars(String s, String chars, boolean left, boolean right) {
        int[] cps = s.codePoints().toArray();
        int b = 0;
        int e = cps.length;
        while (left && b < e && (chars == null ? isSpace(cps[b]) : chars.indexOf(cps[b]) >= 0)) b++;
        while (right && e > b && (chars == null ? isSpace(cps[e - 1]) : chars.indexOf(cps[e - 1]) >= 0)) e--;
        return new String(cps, b, e - b);
    }

    private static List<Object> split(String s, String sep, long maxsplit) {
        List<Object> out = new ArrayList<>();
        if (sep == null) {
            int i = 0;
            int n = s.length();
            while (true) {
                while (i < n && isSpace(s.charAt(i))) i++;
                if (i >= n) break;
                if (maxsplit >= 0 && out.size() == maxsplit) {
                    out.add(s.substring(i));
                    break;
                }
                int j = i;
                while (j < n && !isSpace(s.charAt(j))) j++;
                out.add(s.substring(i, j));
                i = j;
            }
            return out;
        }
        if (sep.isEmpty()) throw new TemplateException("empty separator");
        int i = 0;
        while (maxsplit < 0 || out.size() < maxsplit) {
            int k = s.indexOf(sep, i);
            if (k < 0) break;
            out.add(s.substring(i, k));
            i = k + sep.length();
        }
        out.add(s.substring(i));
        return out;
    }

    private static List<Object> rsplit(String s, String sep, long maxsplit) {
        List<Object> out = new ArrayList<>();
        if (sep == null) {
            int j = s.length();
            while (true) {
                while (j > 0 && isSpace(s.charAt(j - 1))) j--;
                if (j <= 0) break;
                if (maxsplit >= 0 && out.size() == maxsplit) {
                    out.add(s.substring(0, j));
                    break;
                }
                int i = j;
                while (i > 0 && !isSpace(s.charAt(i - 1))) i--;
                out.add(s.substring(i, j));
                j = i;
            }
        } else {
            if (sep.isEmpty()) throw new TemplateException("empty separator");
            int j = s.length();
            while (maxsplit < 0 || out.size() < maxsplit) {
                int k = s.lastIndexOf(sep, j - sep.length());
                if (k < 0) break;
                out.add(s.substring(k + sep.length(), j));
                j = k;
            }
            out.add(s.substring(0, j));
        }
        java.util.Collections.reverse(out);
        return out;
    }

    private static boolean isLineBreak(char c) {
        return c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || c == 0x1c || c == 0x1d || c == 0x1e
                || c == 0x85 || c == 0x2028 || c == 0x2029;
    }

    private static List<Object> splitLines(String s, boolean keepEnds) {
        List<Object> out = new ArrayList<>();
        int i = 0;
        int n = s.length();
        while (i < n) {
            int j = i;
            while (j < n && !isLineBreak(s.charAt(j))) j++;
            int eol = j;
            if (j < n) j += s.charAt(j) == '\r' && j + 1 < n && s.charAt(j + 1) == '\n' ? 2 : 1;
            out.add(s.substring(i, keepEnds ? j : eol));
            i = j;
        }
        return out;
    }

    private static String replace(String s, String old, String replacement, long count) {
        if (old == null || replacement == null) throw new TemplateException("replace() takes at least 2 arguments");
        if (count < 0) count = Long.MAX_VALUE;
        StringBuilder b = new StringBuilder();
        if (old.isEmpty()) {
            int[] cps = s.codePoints().toArray();
            long done = 0;
            for (int k = 0; k <= cps.length; k++) {
                if (done < count) {
                    b.append(replacement);
                    done++;
                }
                if (k < cps.length) b.appendCodePoint(cps[k]);
            }
            return b.toString();
        }
        int i = 0;
        long done = 0;
        for (int k = s.indexOf(old); k >= 0 && done < count; k = s.indexOf(old, i)) {
            b.append(s, i, k).append(replacement);
            i = k + old.length();
            done++;
        }
        return b.append(s, i, s.length()).toString();
    }

    private static boolean isCased(int c) {
        return Character.isUpperCase(c) || Character.isLowerCase(c) || Character.isTitleCase(c);
    }

    private static boolean isLower(String s) {
        boolean cased = false;
        for (int c : s.codePoints().toArray()) {
            if (Character.isUpperCase(c) || Character.isTitleCase(c)) return false;
            if (Character.isLowerCase(c)) cased = true;
        }
        return cased;
    }

    private static boolean isUpper(String s) {
        boolean cased = false;
        for (int c : s.codePoints().toArray()) {
            if (Character.isLowerCase(c) || Character.isTitleCase(c)) return false;
            if (Character.isUpperCase(c)) cased = true;
        }
        return cased;
    }

    /** Python's {@code str.title()}: a cased character after an uncased one is upper case, others lower. */
    private static String pyTitle(String s) {
        StringBuilder b = new StringBuilder();
        boolean previousCased = false;
        for (int c : s.codePoints().toArray()) {
            String ch = new String(Character.toChars(c));
            if (isCased(c)) {
                b.append(previousCased ? ch.toLowerCase(Locale.ROOT) : titleCase(c));
                previousCased = true;
            } else {
                b.append(ch);
                previousCased = false;
            }
        }
        return b.toString();
    }

    private static String titleCase(int c) {
        String upper = new String(Character.toChars(c)).toUpperCase(Locale.ROOT);
        return upper.codePointCount(0, upper.length()) == 1 ? new String(Character.toChars(Character.toTitleCase(c)))
                : upper.charAt(0) + upper.substring(1).toLowerCase(Locale.ROOT);
    }

    private static String capitalize(String s) {
        if (s.isEmpty()) return s;
        int first = s.codePointAt(0);
        return titleCase(first) + s.substring(Character.charCount(first)).toLowerCase(Locale.ROOT);
    }

    // ---- printf-style and str.format formatting

    private static final Pattern PRINTF = Pattern.compile(
            "%(?:\\(([^)]*)\\))?([-+ #0]*)(\\*|\\d+)?(?:\\.(\\*|\\d+))?([diouxXeEfFgGcrsa%])");

    /** Python's {@code fmt % args}. */
    private static String printf(String fmt, Object args) {
        List<?> positional = args instanceof Tuple t ? t : java.util.Collections.singletonList(args);
        // as Python: a non-tuple argument that supports indexing may go unused, and serves %(name)s lookups
        boolean mapping = !(args instanceof Tuple) && (args instanceof Map || args instanceof List
                || args instanceof Undefined);
        Matcher m = PRINTF.matcher(fmt);
        StringBuilder b = new StringBuilder();
        int last = 0;
        int next = 0;
        while (m.find()) {
            b.append(fmt, last, m.start());
            last = m.end();
            char conv = m.group(5).charAt(0);
            if (conv == '%') {
                b.append('%');
                continue;
            }
            int width = -1;
            int precision = -1;
            if ("*".equals(m.group(3))) width = (int) toLong(positional.get(next++));
            else if (m.group(3) != null) width = Integer.parseInt(m.group(3));
            if ("*".equals(m.group(4))) precision = (int) toLong(positional.get(next++));
            else if (m.group(4) != null) precision = Integer.parseInt(m.group(4));
            Object value;
            if (m.group(1) != null) {
                if (args instanceof Undefined u) throw u.error();
                if (!(args instanceof Map<?, ?> map)) throw new TemplateException("format requires a mapping");
                value = mapGet(map, m.group(1));
                if (value == MISSING) throw new TemplateException("KeyError: " + strRepr(m.group(1)));
            } else {
                if (next >= positional.size()) throw new TemplateException("not enough arguments for format string");
                value = positional.get(next++);
            }
            String flags = m.group(2);
            String body = formatOne(value, conv, precision, flags.contains("+") ? '+' : flags.contains(" ") ? ' ' : '-',
                    flags.contains("#"));
            char align = flags.contains("-") ? '<' : '>';
            char fill = flags.contains("0") && align == '>' && "diouxXeEfFgG".indexOf(conv) >= 0 ? '0' : ' ';
            b.append(pad(body, width, align, fill));
        }
        if (!mapping && next < positional.size()) {
            throw new TemplateException("not all arguments converted during string formatting");
        }
        return b.append(fmt, last, fmt.length()).toString();
    }

    /** One value converted as by a printf or format-spec conversion character. */
    private static String formatOne(Object value, char conv, int precision, char sign, boolean alternate) {
        switch (conv) {
            case 's', 'r', 'a' -> {
                String s = conv == 's' ? str(value) : repr(value);
                return precision >= 0 && precision < s.length() ? s.substring(0, precision) : s;
            }
            case 'c' -> {
                return value instanceof String s ? s : new String(Character.toChars((int) toLong(value)));
            }
            default -> {
            }
        }
        if (value instanceof Undefined u) throw u.error();
        if (!isNumber(value)) {
            throw new TemplateException("%" + conv + " format: a real number is required, not " + typeName(value));
        }
        String digits;
        boolean negative;
        switch (conv) {
            case 'd', 'i', 'u', 'o', 'x', 'X' -> {
                long v = isFloat(value) ? (long) toDouble(value) : toLong(value);
                negative = v < 0;
                BigInteger abs = BigInteger.valueOf(v).abs();
                digits = switch (conv) {
                    case 'o' -> (alternate ? "0o" : "") + abs.toString(8);
                    case 'x' -> (alternate ? "0x" : "") + abs.toString(16);
                    case 'X' -> (alternate ? "0X" : "") + abs.toString(16).toUpperCase(Locale.ROOT);
                    default -> abs.toString();
                };
            }
            default -> {
                double v = toDouble(value);
                negative = v < 0 || (v == 0 && 1 / v < 0);
                digits = formatFloat(Math.abs(v), conv, precision < 0 ? 6 : precision, alternate);
            }
        }
        return (negative ? "-" : sign == '-' ? "" : String.valueOf(sign)) + digits;
    }

    private static String formatFloat(double v, char conv, int precision, boolean alternate) {
        if (Double.isNaN(v)) return Character.isUpperCase(conv) ? "NAN" : "nan";
        if (Double.isInfinite(v)) return Character.isUpperCase(conv) ? "INF" : "inf";
        BigDecimal exact = new BigDecimal(v);
        switch (Character.toLowerCase(conv)) {
            case 'f' -> {
                return exact.setScale(precision, RoundingMode.HALF_EVEN).toPlainString();
            }
            case 'e' -> {
                String s = sci(exact, precision);
                return conv == 'E' ? s.toUpperCase(Locale.ROOT) : s;
            }
            case '%' -> {
                return exact.movePointRight(2).setScale(precision, RoundingMode.HALF_EVEN).toPlainString() + "%";
            }
            default -> {
                int p = precision == 0 ? 1 : precision;
                int exp = v == 0 ? 0 : exact.round(new MathContext(p, RoundingMode.HALF_EVEN)).precision()
                        - exact.round(new MathContext(p, RoundingMode.HALF_EVEN)).scale() - 1;
                String s = exp >= -4 && exp < p ? exact.setScale(p - 1 - exp, RoundingMode.HALF_EVEN).toPlainString()
                        : sci(exact, p - 1);
                if (!alternate) {
                    int e = s.indexOf('e');
                    String mant = e >= 0 ? s.substring(0, e) : s;
                    if (mant.contains(".")) mant = mant.replaceAll("0+$", "").replaceAll("\\.$", "");
                    s = mant + (e >= 0 ? s.substring(e) : "");
                }
                return conv == 'G' ? s.toUpperCase(Locale.ROOT) : s;
            }
        }
    }

    private static String sci(BigDecimal exact, int precision) {
        if (exact.signum() == 0) return "0" + (precision > 0 ? "." + "0".repeat(precision) : "") + "e+00";
        BigDecimal r = exact.round(new MathContext(precision + 1, RoundingMode.HALF_EVEN));
        String digits = r.unscaledValue().abs().toString();
        int exp = digits.length() - r.scale() - 1;
        while (digits.length() < precision + 1) digits += "0";
        digits = digits.substring(0, precision + 1);
        return digits.charAt(0) + (precision > 0 ? "." + digits.substring(1) : "") + "e" + (exp < 0 ? "-" : "+")
                + (Math.abs(exp) < 10 ? "0" : "") + Math.abs(exp);
    }

    private static String pad(String s, int width, char align, char fill) {
        int n = s.codePointCount(0, s.length());
        if (width <= n) return s;
        int marg = width - n;
        if (fill == '0' && align == '>' && !s.isEmpty() && "+- ".indexOf(s.charAt(0)) >= 0) {
            return s.charAt(0) + "0".repeat(marg) + s.substring(1);
        }
        String f = String.valueOf(fill);
        return switch (align) {
            case '<' -> s + f.repeat(marg);
            case '^' -> f.repeat(marg / 2) + s + f.repeat(marg - marg / 2);
            default -> f.repeat(marg) + s;
        };
    }

    private static final Pattern FORMAT_SPEC = Pattern.compile(
            "(?:(.)?([<>=^]))?([-+ ])?(#)?(0)?(\\d+)?([,_])?(?:\\.(\\d+))?([bcdeEfFgGnosxX%])?");

    /** Python's {@code str.format}: {@code {}}, {@code {0}}, {@code {name}}, {@code !r/!s}, format specs. */
    private static String strFormat(String fmt, Args a) {
        StringBuilder b = new StringBuilder();
        int auto = 0;
        for (int i = 0; i < fmt.length(); i++) {
            char c = fmt.charAt(i);
            if (c == '}') {
                if (i + 1 < fmt.length() && fmt.charAt(i + 1) == '}') i++;
                else throw new TemplateException("Single '}' encountered in format string");
                b.append('}');
                continue;
            }
            if (c != '{') {
                b.append(c);
                continue;
            }
            if (i + 1 < fmt.length() && fmt.charAt(i + 1) == '{') {
                b.append('{');
                i++;
                continue;
            }
            int close = fmt.indexOf('}', i);
            if (close < 0) throw new TemplateException("Single '{' encountered in format string");
            String field = fmt.substring(i + 1, close);
            i = close;
            String spec = "";
            int colon = field.indexOf(':');
            if (colon >= 0) {
                spec = field.substring(colon + 1);
                field = field.substring(0, colon);
            }
            char conversion = 0;
            int bang = field.indexOf('!');
            if (bang >= 0) {
                conversion = field.charAt(bang + 1);
                field = field.substring(0, bang);
            }
            String head = field.split("[.\\[]", 2)[0];
            Object value;
            if (head.isEmpty()) {
                value = a.required(auto, "{" + auto + "}");
                auto++;
            }
            else if (head.chars().allMatch(Character::isDigit)) value = a.required(Integer.parseInt(head), head);
            else if (a.kw.containsKey(head)) value = a.kw.get(head);
            else throw new TemplateException("KeyError: " + strRepr(head));
            Matcher accessor = Pattern.compile("\\.(\\w+)|\\[([^]]*)]").matcher(field.substring(head.length()));
            while (accessor.find()) {
                if (accessor.group(1) != null) {
                    value = getAttr(value, accessor.group(1));
                } else {
                    String key = accessor.group(2);
                    value = getItem(value, key.chars().allMatch(Character::isDigit) && !key.isEmpty()
                            ? (Object) Long.parseLong(key) : key);
                }
            }
            if (conversion == 'r' || conversion == 'a') value = repr(value);
            else if (conversion == 's') value = str(value);
            b.append(formatSpec(value, spec));
        }
        return b.toString();
    }

    private static String formatSpec(Object value, String spec) {
        if (spec.isEmpty()) return str(value);
        Matcher m = FORMAT_SPEC.matcher(spec);
        if (!m.matches()) throw new TemplateException("Invalid format specifier '" + spec + "'");
        char fill = m.group(1) != null ? m.group(1).charAt(0) : m.group(5) != null ? '0' : ' ';
        char align = m.group(2) != null ? m.group(2).charAt(0) : value instanceof String ? '<' : '>';
        int width = m.group(6) != null ? Integer.parseInt(m.group(6)) : -1;
        int precision = m.group(8) != null ? Integer.parseInt(m.group(8)) : -1;
        char type = m.group(9) != null ? m.group(9).charAt(0) : 0;
        char sign = m.group(3) != null ? m.group(3).charAt(0) : '-';
        String body;
        if (value instanceof String s) {
            if (type != 0 && type != 's') {
                throw new TemplateException("Unknown format code '" + type + "' for object of type 'str'");
            }
            body = precision >= 0 && precision < s.length() ? s.substring(0, precision) : s;
        } else if (type == 0 && !isNumber(value)) {
            body = str(value);
        } else {
            char conv = type == 0 ? (isFloat(value) ? 'r' : 'd') : type == 'n' ? 'd' : type == 'b' ? 'b' : type;
            if (conv == 'r') {
                body = precision >= 0 ? formatOne(value, 'g', precision, sign, false) : floatRepr(toDouble(value));
                if (sign != '-' && toDouble(value) >= 0) body = sign + body;
            } else if (conv == 'b') {
                long v = toLong(value);
                body = (v < 0 ? "-" : sign == '-' ? "" : String.valueOf(sign)) + Long.toBinaryString(Math.abs(v));
            } else if (conv == '%') {
                double v = toDouble(value);
                body = (v < 0 ? "-" : sign == '-' ? "" : String.valueOf(sign))
                        + formatFloat(Math.abs(v), '%', precision < 0 ? 6 : precision, false);
            } else {
                if ("dxXo".indexOf(conv) >= 0 && isFloat(value)) {
                    throw new TemplateException("Unknown format code '" + conv + "' for object of type 'float'");
                }
                body = formatOne(value, conv, precision, sign, m.group(4) != null);
            }
            if (m.group(7) != null) {
                int end = body.indexOf('.') >= 0 ? body.indexOf('.') : body.length();
                int start = !body.isEmpty() && "+- ".indexOf(body.charAt(0)) >= 0 ? 1 : 0;
                StringBuilder grouped = new StringBuilder(body.substring(start, end));
                for (int k = grouped.length() - 3; k > 0; k -= 3) grouped.insert(k, m.group(7));
                body = body.substring(0, start) + grouped + body.substring(end);
            }
        }
        if (align == '=') {
            boolean signed = !body.isEmpty() && "+- ".indexOf(body.charAt(0)) >= 0;
            String digits = signed ? body.substring(1) : body;
            return (signed ? body.substring(0, 1) : "") + pad(digits, width - (signed ? 1 : 0), '>', fill);
        }
        if (fill == '0' && m.group(2) == null && !(value instanceof String)) return pad(body, width, '>', '0');
        return pad(body, width, align, fill);
    }

    // =====================================================================================================
    // JSON (Python json.dumps)
    // =====================================================================================================

    private static String toJson(Object v, String indent, String itemSep, String keySep, boolean sortKeys,
                                 boolean ensureAscii) {
        StringBuilder b = new StringBuilder();
        writeJson(b, v, indent, itemSep, keySep, sortKeys, ensureAscii, 0);
        return b.toString();
    }

    private static void writeJson(StringBuilder b, Object v, String indent, String itemSep, String keySep,
                                  boolean sortKeys, boolean ensureAscii, int level) {
        if (v == null) {
            b.append("null");
        } else if (v instanceof Boolean bool) {
            b.append(bool ? "true" : "false");
        } else if (isInt(v)) {
            b.append(v);
        } else if (isFloat(v)) {
            b.append(jsonFloat(((Number) v).doubleValue()));
        } else if (v instanceof String s) {
            jsonString(b, s, ensureAscii);
        } else if (v instanceof List<?> || v instanceof Map<?, ?>) {
            boolean isList = v instanceof List<?>;
            Collection<?> entries;
            if (isList) {
                entries = (List<?>) v;
            } else {
                List<Map.Entry<?, ?>> es = new ArrayList<>(((Map<?, ?>) v).entrySet());
                if (sortKeys) es.sort((x, y) -> pyCompare(x.getKey(), y.getKey(), "<"));
                entries = es;
            }
            if (entries.isEmpty()) {
                b.append(isList ? "[]" : "{}");
                return;
            }
            b.append(isList ? '[' : '{');
            String newline = indent == null ? null : "\n" + indent.repeat(level + 1);
            if (newline != null) b.append(newline);
            boolean first = true;
            for (Object item : entries) {
                if (!first) {
                    b.append(itemSep);
                    if (newline != null) b.append(newline);
                }
                first = false;
                if (isList) {
                    writeJson(b, item, indent, itemSep, keySep, sortKeys, ensureAscii, level + 1);
                } else {
                    Map.Entry<?, ?> e = (Map.Entry<?, ?>) item;
                    jsonString(b, jsonKey(e.getKey()), ensureAscii);
                    b.append(keySep);
                    writeJson(b, e.getValue(), indent, itemSep, keySep, sortKeys, ensureAscii, level + 1);
                }
            }
            if (indent != null) b.append('\n').append(indent.repeat(level));
            b.append(isList ? ']' : '}');
        } else {
            throw new TemplateException("Object of type " + typeName(v) + " is not JSON serializable");
        }
    }

    private static String jsonKey(Object k) {
        if (k instanceof String s) return s;
        if (k == null) return "null";
        if (k instanceof Boolean b) return b ? "true" : "false";
        if (isInt(k)) return k.toString();
        if (isFloat(k)) return jsonFloat(((Number) k).doubleValue());
        throw new TemplateException("keys must be str, int, float, bool or None, not " + typeName(k));
    }

    private static String jsonFloat(double d) {
        if (Double.isNaN(d)) return "NaN";
        if (Double.isInfinite(d)) return d > 0 ? "Infinity" : "-Infinity";
        return floatRepr(d);
    }

    private static void jsonString(StringBuilder b, String s, boolean ensureAscii) {
        b.append('"');
        for (int k = 0; k < s.length(); k++) {
            char c = s.charAt(k);
            switch (c) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                case '\n' -> b.append("\\n");
                case '\r' -> b.append("\\r");
                case '\t' -> b.append("\\t");
                case '\b' -> b.append("\\b");
                case '\f' -> b.append("\\f");
                default -> {
                    if (c < 0x20 || (ensureAscii && c > 0x7e)) b.append(String.format("\\u%04x", (int) c));
                    else b.append(c);
                }
            }
        }
        b.append('"');
    }

    // =====================================================================================================
    // strftime
    // =====================================================================================================

    private static final String[] DAY_NAMES = {"Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday",
            "Sunday"};
    private static final String[] MONTH_NAMES = {"January", "February", "March", "April", "May", "June", "July",
            "August", "September", "October", "November", "December"};

    /** C-library strftime (C locale) for a local date-time without a time zone, as Python's datetime does it. */
    static String strftime(String fmt, LocalDateTime t) {
        StringBuilder b = new StringBuilder();
        for (int i = 0; i < fmt.length(); i++) {
            char c = fmt.charAt(i);
            if (c != '%' || i + 1 >= fmt.length()) {
                b.append(c);
                continue;
            }
            int j = i + 1;
            char flag = 0;
            if ("-_0^#".indexOf(fmt.charAt(j)) >= 0 && j + 1 < fmt.length()) flag = fmt.charAt(j++);
            char code = fmt.charAt(j);
            int dow = t.getDayOfWeek().getValue();
            int yday = t.getDayOfYear() - 1;
            int hour12 = t.getHour() % 12 == 0 ? 12 : t.getHour() % 12;
            String v = switch (code) {
                case 'a' -> DAY_NAMES[dow - 1].substring(0, 3);
                case 'A' -> DAY_NAMES[dow - 1];
                case 'b', 'h' -> MONTH_NAMES[t.getMonthValue() - 1].substring(0, 3);
                case 'B' -> MONTH_NAMES[t.getMonthValue() - 1];
                case 'c' -> strftime("%a %b %e %H:%M:%S %Y", t);
                case 'C' -> num(t.getYear() / 100, 2, '0', flag);
                case 'd' -> num(t.getDayOfMonth(), 2, '0', flag);
                case 'D', 'x' -> strftime("%m/%d/%y", t);
                case 'e' -> num(t.getDayOfMonth(), 2, ' ', flag);
                case 'f' -> num(t.getNano() / 1000, 6, '0', (char) 0);
                case 'F' -> strftime("%Y-%m-%d", t);
                case 'G' -> String.valueOf(t.get(IsoFields.WEEK_BASED_YEAR));
                case 'g' -> num(t.get(IsoFields.WEEK_BASED_YEAR) % 100, 2, '0', flag);
                case 'H' -> num(t.getHour(), 2, '0', flag);
                case 'I' -> num(hour12, 2, '0', flag);
                case 'j' -> num(yday + 1, 3, '0', flag);
                case 'k' -> num(t.getHour(), 2, ' ', flag);
                case 'l' -> num(hour12, 2, ' ', flag);
                case 'm' -> num(t.getMonthValue(), 2, '0', flag);
                case 'M' -> num(t.getMinute(), 2, '0', flag);
                case 'n' -> "\n";
                case 'p' -> t.getHour() < 12 ? "AM" : "PM";
                case 'P' -> t.getHour() < 12 ? "am" : "pm";
                case 'r' -> strftime("%I:%M:%S %p", t);
                case 'R' -> strftime("%H:%M", t);
                case 's' -> String.valueOf(t.atZone(ZoneId.systemDefault()).toEpochSecond());
                case 'S' -> num(t.getSecond(), 2, '0', flag);
                case 't' -> "\t";
                case 'T', 'X' -> strftime("%H:%M:%S", t);
                case 'u' -> String.valueOf(dow);
                case 'U' -> num((yday + 7 - dow % 7) / 7, 2, '0', flag);
                case 'V' -> num(t.get(IsoFields.WEEK_OF_WEEK_BASED_YEAR), 2, '0', flag);
                case 'w' -> String.valueOf(dow % 7);
                case 'W' -> num((yday + 7 - (dow - 1)) / 7, 2, '0', flag);
                case 'y' -> num(t.getYear() % 100, 2, '0', flag);
                case 'Y' -> String.valueOf(t.getYear());
                case 'z', 'Z' -> "";
                case '%' -> "%";
                default -> null;
            };
            if (v == null) {
                b.append(fmt, i, j + 1);
            } else {
                b.append(flag == '^' ? v.toUpperCase(Locale.ROOT) : v);
            }
            i = j;
        }
        return b.toString();
    }

    private static String num(int value, int width, char padding, char flag) {
        String s = String.valueOf(value);
        if (flag == '-') return s;
        char p = flag == '_' ? ' ' : flag == '0' ? '0' : padding;
        return s.length() >= width ? s : String.valueOf(p).repeat(width - s.length()) + s;
    }

    // =====================================================================================================
    // Globals
    // =====================================================================================================

    private static final Frame GLOBALS = new Frame(null);

    private static void global(String name, Fn fn) {
        GLOBALS.vars.put(name, new Builtin(name, fn));
    }

    static {
        global("range", a -> {
            for (Object o : a.pos) {
                if (!isInt(o) && !(o instanceof Boolean)) {
                    throw new TemplateException("'" + typeName(o) + "' object cannot be interpreted as an integer");
                }
            }
            if (a.pos.isEmpty() || a.pos.size() > 3) throw new TemplateException("range expected 1 to 3 arguments");
            long start = a.pos.size() == 1 ? 0 : toLong(a.pos.get(0));
            long stop = toLong(a.pos.get(a.pos.size() == 1 ? 0 : 1));
            long step = a.pos.size() == 3 ? toLong(a.pos.get(2)) : 1;
            if (step == 0) throw new TemplateException("range() arg 3 must not be zero");
            return new Range(start, stop, step);
        });
        global("namespace", a -> {
            Namespace ns = new Namespace();
            for (Object o : a.pos) {
                if (!(o instanceof Map<?, ?> m)) {
                    throw new TemplateException("namespace() positional arguments must be mappings");
                }
                m.forEach((k, v) -> ns.attrs.put(str(k), v));
            }
            ns.attrs.putAll(a.kw);
            return ns;
        });
        global("dict", a -> {
            Map<Object, Object> m = new LinkedHashMap<>();
            for (Object o : a.pos) {
                if (o instanceof Map<?, ?> src) {
                    m.putAll(src);
                } else {
                    for (Object pair : iterate(o)) {
                        List<Object> kv = iterate(pair);
                        if (kv.size() != 2) {
                            throw new TemplateException("dictionary update sequence element has wrong length");
                        }
                        m.put(kv.get(0), kv.get(1));
                    }
                }
            }
            m.putAll(a.kw);
            return m;
        });
        global("raise_exception", a -> {
            throw new TemplateException(str(a.required(0, "message")));
        });
        global("strftime_now", a -> {
            Object fmt = a.required(0, "format");
            if (!(fmt instanceof String f)) {
                throw new TemplateException("strftime() argument 1 must be str, not " + typeName(fmt));
            }
            return strftime(f, LocalDateTime.now());
        });
    }

    // =====================================================================================================
    // Filters
    // =====================================================================================================

    private interface Filter {
        Object apply(Object value, Args args);
    }

    private interface Test {
        boolean test(Object value, Args args);
    }

    private static final Map<String, Filter> FILTERS = new HashMap<>();
    private static final Map<String, Test> TESTS = new HashMap<>();

    private static Object callFilter(String name, Object value, Args args) {
        Filter f = FILTERS.get(name);
        if (f == null) throw new TemplateException("No filter named '" + name + "' found.");
        return f.apply(value, args);
    }

    private static boolean callTest(String name, Object value, Args args) {
        Test t = TESTS.get(name);
        if (t == null) throw new TemplateException("No test named '" + name + "' found.");
        return t.test(value, args);
    }

    private static void filter(Filter f, String... names) {
        for (String n : names) FILTERS.put(n, f);
    }

    /** Registers a test taking the value and at most {@code params} more positional arguments. */
    private static void test(int params, Test t, String... names) {
        for (String n : names) {
            TESTS.put(n, (v, a) -> {
                if (a.pos.size() > params) {
                    throw new TemplateException("test '" + n + "' takes " + (params + 1) + " positional argument"
                            + (params == 0 ? "" : "s") + " but " + (a.pos.size() + 1) + " were given");
                }
                return t.test(v, a);
            });
        }
    }

    /** Jinja2's attribute getter: "a.b.0" looks up items a, then b, then 0, one after the other. */
    private static Object attrPath(Object item, Object attribute) {
        if (attribute == null) return item;
        if (!(attribute instanceof String path)) return getItem(item, attribute);
        for (String part : path.split("\\.")) {
            boolean index = !part.isEmpty() && part.chars().allMatch(Character::isDigit);
            Object key = index ? (Object) Long.parseLong(part) : part;
            item = getItem(item, key);
        }
        return item;
    }

    private static Object ignoreCase(Object v, boolean caseSensitive) {
        return !caseSensitive && v instanceof String s ? s.toLowerCase(Locale.ROOT) : v;
    }

    private static Object hashKey(Object v) {
        if (v instanceof Boolean b) return b ? 1L : 0L;
        if (isInt(v)) return toLong(v);
        if (isFloat(v)) {
            double d = toDouble(v);
            return d == Math.rint(d) && !Double.isInfinite(d) && Math.abs(d) < 9e18 ? (Object) (long) d : (Object) d;
        }
        if (v instanceof List<?> l) {
            if (!(v instanceof Tuple)) throw new TemplateException("unhashable type: 'list'");
            List<Object> keys = new ArrayList<>();
            for (Object o : l) keys.add(hashKey(o));
            return keys;
        }
        if (v instanceof Map) throw new TemplateException("unhashable type: 'dict'");
        return v;
    }

    private static List<Object> selectOrReject(Object value, Args a, boolean lookupAttr, boolean select) {
        int off = lookupAttr ? 1 : 0;
        Object attr = lookupAttr ? a.get(0, "attribute", null) : null;
        if (lookupAttr && attr == null) throw new TemplateException("Missing parameter for attribute name");
        String testName = a.pos.size() > off ? str(a.pos.get(off)) : null;
        Args testArgs = a.drop(off + 1);
        List<Object> out = new ArrayList<>();
        if (!truthy(value)) return out;
        for (Object item : iterate(value)) {
            Object v = lookupAttr ? attrPath(item, attr) : item;
            boolean ok = testName == null ? truthy(v) : callTest(testName, v, testArgs);
            if (ok == select) out.add(item);
        }
        return out;
    }

    private static Object minMax(Object value, Args a, boolean max) {
        boolean cs = truthy(a.get(0, "case_sensitive", false));
        Object attr = a.get(1, "attribute", null);
        List<Object> items = iterate(value);
        if (items.isEmpty()) return new Undefined("No aggregated item, sequence was empty.");
        Object best = items.get(0);
        Object bestKey = ignoreCase(attrPath(best, attr), cs);
        for (Object item : items.subList(1, items.size())) {
            Object key = ignoreCase(attrPath(item, attr), cs);
            int c = pyCompare(key, bestKey, max ? ">" : "<");
            if (max ? c > 0 : c < 0) {
                best = item;
                bestKey = key;
            }
        }
        return best;
    }

    private static Object toInt(Object value, Object dflt, int base) {
        if (value instanceof String s) {
            String t = s.strip().replace("_", "");
            boolean neg = t.startsWith("-");
            if (neg || t.startsWith("+")) t = t.substring(1);
            String lower = t.toLowerCase(Locale.ROOT);
            if ((base == 16 && lower.startsWith("0x")) || (base == 8 && lower.startsWith("0o"))
                    || (base == 2 && lower.startsWith("0b"))) {
                t = t.substring(2);
            }
            try {
                long v = Long.parseLong(t, base);
                return neg ? -v : v;
            } catch (NumberFormatException e) {
                Object f = toFloat(value, null);
                if (f instanceof Double d && !d.isNaN() && !d.isInfinite()) return (long) (double) d;
                return dflt;
            }
        }
        if (isInt(value) || value instanceof Boolean) return toLong(value);
        if (isFloat(value)) {
            double d = toDouble(value);
            return Double.isNaN(d) || Double.isInfinite(d) ? dflt : (Object) (long) d;
        }
        return dflt;
    }

    private static Object toFloat(Object value, Object dflt) {
        if (isNumber(value)) return toDouble(value);
        if (value instanceof String s) {
            String t = s.strip().replace("_", "").toLowerCase(Locale.ROOT);
            String u = t.startsWith("-") || t.startsWith("+") ? t.substring(1) : t;
            if (u.equals("inf") || u.equals("infinity")) {
                return t.startsWith("-") ? Double.NEGATIVE_INFINITY : Double.POSITIVE_INFINITY;
            }
            if (u.equals("nan")) return Double.NaN;
            if (!u.matches("(\\d+\\.?\\d*|\\.\\d+)(e[-+]?\\d+)?")) return dflt;
            return Double.parseDouble(t);
        }
        return dflt;
    }

    private static Object round(Object value, long precision, String method) {
        if (!isNumber(value)) {
            throw new TemplateException("type " + typeName(value) + " doesn't define __round__ method");
        }
        if (!method.equals("common") && !method.equals("ceil") && !method.equals("floor")) {
            throw new TemplateException("method must be common, ceil or floor");
        }
        if (method.equals("common")) {
            if (!isFloat(value)) {
                return BigDecimal.valueOf(toLong(value)).setScale((int) precision, RoundingMode.HALF_EVEN).longValue();
            }
            double d = toDouble(value);
            if (Double.isNaN(d) || Double.isInfinite(d)) return d;
            double r = new BigDecimal(d).setScale((int) precision, RoundingMode.HALF_EVEN).doubleValue();
            return r == 0 ? Math.copySign(0.0, d) : r;
        }
        double scale = Math.pow(10, precision);
        double scaled = toDouble(value) * scale;
        return (method.equals("ceil") ? Math.ceil(scaled) : Math.floor(scaled)) / scale;
    }

    private static String indent(String s, Object width, boolean first, boolean blank) {
        String indention = width instanceof String w ? w : " ".repeat((int) Math.max(0, toLong(width)));
        s = s + "\n";
        List<Object> lines = splitLines(s, false);
        StringBuilder rv = new StringBuilder();
        if (blank) {
            for (int k = 0; k < lines.size(); k++) {
                if (k > 0) rv.append('\n').append(indention);
                rv.append(lines.get(k));
            }
        } else {
            rv.append(lines.get(0));
            for (int k = 1; k < lines.size(); k++) {
                String line = (String) lines.get(k);
                rv.append('\n').append(line.isEmpty() ? "" : indention + line);
            }
        }
        return first ? indention + rv : rv.toString();
    }

    private static final Pattern WORD_SPLIT = Pattern.compile("([-\\s({\\[<]+)", Pattern.UNICODE_CHARACTER_CLASS);
    private static final Pattern WORD = Pattern.compile("\\w+", Pattern.UNICODE_CHARACTER_CLASS);

    static {
        filter((v, a) -> {
            if (v instanceof Undefined u) throw u.error();
            if (!isNumber(v)) throw new TemplateException("bad operand type for abs(): '" + typeName(v) + "'");
            return isFloat(v) ? (Object) Math.abs(toDouble(v)) : (Object) Math.abs(toLong(v));
        }, "abs");
        filter((v, a) -> {
            String name = str(a.required(0, "name"));
            if (v instanceof Undefined u) throw u.error();
            if (v instanceof Namespace || v instanceof LoopInfo) return getAttr(v, name);
            Object m = method(v, name);
            return m != null ? m : new Undefined("'" + objectTypeRepr(v) + "' has no attribute '" + name + "'");
        }, "attr");
        filter((v, a) -> {
            long size = intArg(a, 0, "linecount", 0);
            if (size <= 0) throw new TemplateException("batch size must be positive");
            Object fill = a.get(1, "fill_with", null);
            List<Object> out = new ArrayList<>();
            List<Object> tmp = new ArrayList<>();
            for (Object item : iterate(v)) {
                if (tmp.size() == size) {
                    out.add(tmp);
                    tmp = new ArrayList<>();
                }
                tmp.add(item);
            }
            if (!tmp.isEmpty()) {
                while (fill != null && tmp.size() < size) tmp.add(fill);
                out.add(tmp);
            }
            return out;
        }, "batch");
        filter((v, a) -> capitalize(str(v)), "capitalize");
        filter((v, a) -> ((Builtin) stringMethod(str(v), "center")).call(new Args("center",
                List.of(a.get(0, "width", 80L)), Map.of())), "center");
        filter((v, a) -> (long) length(v), "length", "count");
        filter((v, a) -> {
            Object dflt = a.get(0, "default_value", "");
            boolean bool = truthy(a.get(1, "boolean", false));
            return v instanceof Undefined || (bool && !truthy(v)) ? dflt : v;
        }, "default", "d");
        filter((v, a) -> {
            if (!(v instanceof Map<?, ?> m)) throw new TemplateException("dictsort expects a mapping");
            boolean cs = truthy(a.get(0, "case_sensitive", false));
            String by = str(a.get(1, "by", "key"));
            boolean reverse = truthy(a.get(2, "reverse", false));
            int pos;
            if (by.equals("key")) pos = 0;
            else if (by.equals("value")) pos = 1;
            else throw new TemplateException("You can only sort by either \"key\" or \"value\"");
            List<Object> items = itemsOf(m);
            Comparator<Object> c = (x, y) -> pyCompare(ignoreCase(((Tuple) x).get(pos), cs),
                    ignoreCase(((Tuple) y).get(pos), cs), "<");
            items.sort(reverse ? c.reversed() : c);
            return items;
        }, "dictsort");
        filter((v, a) -> str(v).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                .replace("'", "&#39;").replace("\"", "&#34;"), "escape", "e", "forceescape");
        filter((v, a) -> {
            List<Object> items = iterate(v);
            return items.isEmpty() ? new Undefined("No first item, sequence was empty.") : items.get(0);
        }, "first");
        filter((v, a) -> {
            List<Object> items = iterate(v);
            return items.isEmpty() ? new Undefined("No last item, sequence was empty.") : items.get(items.size() - 1);
        }, "last");
        filter((v, a) -> {
            if (v instanceof Undefined u) throw u.error();
            return toFloat(v, a.get(0, "default", 0.0));
        }, "float");
        filter((v, a) -> {
            if (!a.pos.isEmpty() && !a.kw.isEmpty()) {
                throw new TemplateException("can't handle positional and keyword arguments at the same time");
            }
            return printf(str(v), a.kw.isEmpty() ? Tuple.of(a.pos) : a.kw);
        }, "format");
        filter((v, a) -> indent(requireString(v, "+="), a.get(0, "width", 4L), truthy(a.get(1, "first", false)),
                truthy(a.get(2, "blank", false))), "indent");
        filter((v, a) -> {
            if (v instanceof Undefined u) throw u.error();
            return toInt(v, a.get(0, "default", 0L), (int) intArg(a, 1, "base", 10));
        }, "int");
        filter((v, a) -> {
            if (v instanceof Undefined) return new ArrayList<>();
            if (!(v instanceof Map<?, ?> m)) throw new TemplateException("Can only get item pairs from a mapping.");
            return itemsOf(m);
        }, "items");
        filter((v, a) -> {
            String sep = str(a.get(0, "d", ""));
            Object attr = a.get(1, "attribute", null);
            StringBuilder b = new StringBuilder();
            boolean first = true;
            for (Object item : iterate(v)) {
                if (!first) b.append(sep);
                first = false;
                b.append(str(attrPath(item, attr)));
            }
            return b.toString();
        }, "join");
        filter((v, a) -> new ArrayList<>(iterate(v)), "list");
        filter((v, a) -> str(v).toLowerCase(Locale.ROOT), "lower");
        filter((v, a) -> str(v).toUpperCase(Locale.ROOT), "upper");
        filter((v, a) -> {
            List<Object> out = new ArrayList<>();
            if (!truthy(v)) return out;
            if (a.pos.isEmpty() && a.kw.containsKey("attribute")) {
                Object attr = a.kw.get("attribute");
                Object dflt = a.kw.get("default");
                for (Object item : iterate(v)) {
                    Object x = attrPath(item, attr);
                    out.add(dflt != null && x instanceof Undefined ? dflt : x);
                }
            } else {
                if (a.pos.isEmpty()) throw new TemplateException("map requires a filter argument");
                String name = str(a.pos.get(0));
                Args rest = a.drop(1);
                for (Object item : iterate(v)) out.add(callFilter(name, item, rest));
            }
            return out;
        }, "map");
        filter((v, a) -> minMax(v, a, true), "max");
        filter((v, a) -> minMax(v, a, false), "min");
        filter((v, a) -> selectOrReject(v, a, false, true), "select");
        filter((v, a) -> selectOrReject(v, a, false, false), "reject");
        filter((v, a) -> selectOrReject(v, a, true, true), "selectattr");
        filter((v, a) -> selectOrReject(v, a, true, false), "rejectattr");
        filter((v, a) -> replace(str(v), str(a.required(0, "old")), str(a.required(1, "new")),
                a.get(2, "count", null) == null ? -1 : intArg(a, 2, "count", -1)), "replace");
        filter((v, a) -> {
            if (v instanceof String s) return new StringBuilder(s).reverse().toString();
            List<Object> items = new ArrayList<>(iterate(v));
            java.util.Collections.reverse(items);
            return items;
        }, "reverse");
        filter((v, a) -> round(v, intArg(a, 0, "precision", 0), str(a.get(1, "method", "common"))), "round");
        filter((v, a) -> v, "safe");
        filter((v, a) -> {
            boolean reverse = truthy(a.get(0, "reverse", false));
            boolean cs = truthy(a.get(1, "case_sensitive", false));
            Object attr = a.get(2, "attribute", null);
            List<Object> attrs = new ArrayList<>();
            if (attr instanceof String s) {
                for (String part : s.split(",")) attrs.add(part.strip());
            } else {
                attrs.add(attr);
            }
            List<Object> items = new ArrayList<>(iterate(v));
            Comparator<Object> c = (x, y) -> {
                for (Object at : attrs) {
                    Object kx = ignoreCase(attrPath(x, at), cs);
                    Object ky = ignoreCase(attrPath(y, at), cs);
                    if (!pyEquals(kx, ky)) return pyCompare(kx, ky, "<");
                }
                return 0;
            };
            items.sort(reverse ? c.reversed() : c);
            return items;
        }, "sort");
        filter((v, a) -> str(v), "string");
        filter((v, a) -> {
            Object attr = a.get(0, "attribute", null);
            Object total = a.get(1, "start", 0L);
            for (Object item : iterate(v)) total = binop("+", total, attrPath(item, attr));
            return total;
        }, "sum");
        filter((v, a) -> {
            StringBuilder b = new StringBuilder();
            for (String item : splitKeeping(WORD_SPLIT, str(v))) {
                if (item.isEmpty()) continue;
                int first = item.codePointAt(0);
                b.append(new String(Character.toChars(first)).toUpperCase(Locale.ROOT))
                        .append(item.substring(Character.charCount(first)).toLowerCase(Locale.ROOT));
            }
            return b.toString();
        }, "title");
        filter((v, a) -> {
            if (v instanceof Undefined u) throw u.error();
            Object indent = a.get(1, "indent", null);
            Object separators = a.get(2, "separators", null);
            boolean sortKeys = truthy(a.get(3, "sort_keys", false));
            boolean ensureAscii = truthy(a.get(0, "ensure_ascii", false));
            String ind = indent == null ? null
                    : indent instanceof String s ? s : " ".repeat((int) Math.max(0, toLong(indent)));
            String itemSep = ind == null ? ", " : ",";
            String keySep = ": ";
            if (separators != null) {
                List<Object> seps = iterate(separators);
                if (seps.size() != 2) throw new TemplateException("separators must be a pair of strings");
                itemSep = str(seps.get(0));
                keySep = str(seps.get(1));
            }
            return toJson(v, ind, itemSep, keySep, sortKeys, ensureAscii);
        }, "tojson");
        filter((v, a) -> stripChars(str(v), strArg(a, 0, "chars", null), true, true), "trim");
        filter((v, a) -> {
            long length = intArg(a, 0, "length", 255);
            boolean killwords = truthy(a.get(1, "killwords", false));
            String end = str(a.get(2, "end", "..."));
            long leeway = intArg(a, 3, "leeway", 5);
            int endLength = end.codePointCount(0, end.length());
            if (length < endLength) throw new TemplateException("expected length >= " + endLength + ", got " + length);
            if (length(v) <= length + leeway) return v;
            String s = requireString(v, "rsplit");
            String head = pySlice(s, null, length - endLength);
            if (killwords) return head + end;
            int sp = head.lastIndexOf(' ');
            return (sp >= 0 ? head.substring(0, sp) : head) + end;
        }, "truncate");
        filter((v, a) -> {
            boolean cs = truthy(a.get(0, "case_sensitive", false));
            Object attr = a.get(1, "attribute", null);
            Set<Object> seen = new HashSet<>();
            List<Object> out = new ArrayList<>();
            for (Object item : iterate(v)) {
                if (seen.add(hashKey(ignoreCase(attrPath(item, attr), cs)))) out.add(item);
            }
            return out;
        }, "unique");
        filter((v, a) -> {
            Matcher m = WORD.matcher(str(v));
            long c = 0;
            while (m.find()) c++;
            return c;
        }, "wordcount");
    }

    /** The value if it is a string; Python's TypeError for the operation otherwise. */
    private static String requireString(Object v, String operation) {
        if (v instanceof String s) return s;
        if (v instanceof Undefined u) throw u.error();
        throw new TemplateException("unsupported operand type(s) for " + operation + ": '" + typeName(v)
                + "' and 'str'");
    }

    /** {@code re.split} with a capturing group: the pieces and the separators, in order. */
    private static List<String> splitKeeping(Pattern p, String s) {
        List<String> out = new ArrayList<>();
        Matcher m = p.matcher(s);
        int last = 0;
        while (m.find()) {
            out.add(s.substring(last, m.start()));
            out.add(m.group());
            last = m.end();
        }
        out.add(s.substring(last));
        return out;
    }

    // =====================================================================================================
    // Tests
    // =====================================================================================================

    static {
        test(0, (v, a) -> !(v instanceof Undefined), "defined");
        test(0, (v, a) -> v instanceof Undefined, "undefined");
        test(0, (v, a) -> v == null, "none");
        test(0, (v, a) -> v instanceof Boolean, "boolean");
        test(0, (v, a) -> Boolean.TRUE.equals(v), "true");
        test(0, (v, a) -> Boolean.FALSE.equals(v), "false");
        test(0, (v, a) -> v instanceof String, "string");
        test(0, (v, a) -> isNumber(v), "number");
        test(0, (v, a) -> isInt(v), "integer");
        test(0, (v, a) -> isFloat(v), "float");
        test(0, (v, a) -> v instanceof Map, "mapping");
        test(0, (v, a) -> v instanceof String || v instanceof Collection || v instanceof Map || v instanceof Undefined,
                "iterable");
        test(0, (v, a) -> v instanceof String || (v instanceof List && !(v instanceof View)) || v instanceof Map
                || v instanceof Undefined, "sequence");
        test(0, (v, a) -> v instanceof Fn || v instanceof Undefined, "callable");
        test(0, (v, a) -> false, "escaped");
        test(0, (v, a) -> FILTERS.containsKey(str(v)), "filter");
        test(0, (v, a) -> TESTS.containsKey(str(v)), "test");
        test(0, (v, a) -> pyEquals(binop("%", v, 2L), 1L), "odd");
        test(0, (v, a) -> pyEquals(binop("%", v, 2L), 0L), "even");
        test(1, (v, a) -> pyEquals(binop("%", v, a.required(0, "num")), 0L), "divisibleby");
        test(1, (v, a) -> {
            Object o = a.required(0, "other");
            return v == o || (v instanceof Boolean && v.equals(o));
        }, "sameas");
        test(1, (v, a) -> contains(a.required(0, "seq"), v), "in");
        test(0, (v, a) -> isLower(str(v)), "lower");
        test(0, (v, a) -> isUpper(str(v)), "upper");
        test(1, (v, a) -> compare("==", v, a.required(0, "other")), "==", "eq", "equalto");
        test(1, (v, a) -> compare("!=", v, a.required(0, "other")), "!=", "ne");
        test(1, (v, a) -> compare(">", v, a.required(0, "other")), ">", "gt", "greaterthan");
        test(1, (v, a) -> compare(">=", v, a.required(0, "other")), ">=", "ge");
        test(1, (v, a) -> compare("<", v, a.required(0, "other")), "<", "lt", "lessthan");
        test(1, (v, a) -> compare("<=", v, a.required(0, "other")), "<=", "le");
    }
}
