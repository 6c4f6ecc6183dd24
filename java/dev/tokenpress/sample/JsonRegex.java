package dev.tokenpress.sample;

import java.util.ArrayList;
import java.util.List;

/**
 * A JSON Schema {@code pattern} (an ECMAScript regular expression over the string's characters) as a GBNF expression
 * over the string's JSON text between the quotes, where {@code "} and {@code \} and control characters appear
 * escaped. Supported: literals and escapes ({@code \d \D \w \W \s \S \. \\ \n \t \r \f \v \/ \\uHHHH \xHH}), {@code .}
 * (not a line terminator), classes ({@code [a-z0-9_]}, {@code [^...]} with ranges and escapes), groups ({@code (...)}, {@code (?:...)},
 * {@code (?<name>...)}), alternation, quantifiers ({@code * + ? {n} {n,} {n,m}}, lazy forms alike) and the anchors
 * {@code ^} at the start and {@code $} at the end. As JSON Schema defines it the pattern may match anywhere: without
 * {@code ^} any text may come before the match, without {@code $} after it. Backreferences, lookarounds, word
 * boundaries and anchors elsewhere are refused with an error.
 */
final class JsonRegex {
    private static final int MAX_REPEAT = 1000;
    /** Any character of a JSON string, escaped where it must be (the schema grammar's {@code char} rule). */
    static final String ANY = "char";

    private final String src;
    private final int[] cps;
    private int at;

    private JsonRegex(String src) {
        this.src = src;
        this.cps = src.codePoints().toArray();
    }

    /** The GBNF expression for a pattern ({@code path} names it in errors). */
    static String toGbnf(String pattern, String path) {
        JsonRegex r = new JsonRegex(pattern);
        boolean start = r.cps.length > 0 && r.cps[0] == '^';
        if (start) r.at = 1;
        int end = r.cps.length;
        boolean anchoredEnd = end > r.at && r.cps[end - 1] == '$' && !r.escaped(end - 1);
        int[] body = java.util.Arrays.copyOfRange(r.cps, 0, anchoredEnd ? end - 1 : end);
        JsonRegex inner = new JsonRegex(new String(body, 0, body.length));
        inner.at = r.at;
        String expr;
        try {
            expr = inner.alternation();
            if (inner.at != inner.cps.length) throw inner.error("an unmatched ')'");
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("JSON schema: " + path + ": pattern " + pattern + ": " + e.getMessage());
        }
        return (start ? "" : ANY + "* ") + "( " + expr + " )" + (anchoredEnd ? "" : " " + ANY + "*");
    }

    /** Whether the character at i is preceded by an odd number of backslashes. */
    private boolean escaped(int i) {
        int n = 0;
        for (int j = i - 1; j >= 0 && cps[j] == '\\'; j--) n++;
        return n % 2 == 1;
    }

    private IllegalArgumentException error(String what) {
        return new IllegalArgumentException(what + " at offset " + at + " is not supported");
    }

    private boolean more() { return at < cps.length; }

    private int peek() { return cps[at]; }

    private String alternation() {
        List<String> alts = new ArrayList<>();
        alts.add(sequence());
        while (more() && peek() == '|') {
            at++;
            alts.add(sequence());
        }
        return alts.size() == 1 ? alts.get(0) : "( " + String.join(" | ", alts) + " )";
    }

    private String sequence() {
        StringBuilder sb = new StringBuilder();
        while (more() && peek() != '|' && peek() != ')') {
            String atom = atom();
            String q = quantifier();
            if (sb.length() > 0) sb.append(' ');
            sb.append(q.isEmpty() ? atom : "( " + atom + " )" + q);
        }
        return sb.length() == 0 ? "\"\"" : sb.toString();
    }

    private String quantifier() {
        if (!more()) return "";
        int c = peek();
        String q;
        if (c == '*' || c == '+' || c == '?') {
            at++;
            q = String.valueOf((char) c);
        } else if (c == '{' && isCount()) {
            at++;
            int min = number(), max = min;
            if (peek() == ',') {
                at++;
                max = peek() == '}' ? -1 : number();
            }
            at++; // '}'
            if (max >= 0 && max < min) throw error("{" + min + "," + max + "}");
            if (min > MAX_REPEAT || max > MAX_REPEAT) throw error("a repetition above " + MAX_REPEAT);
            q = max < 0 ? "{" + min + ",}" : min == max ? "{" + min + "}" : "{" + min + "," + max + "}";
        } else {
            return "";
        }
        if (more() && peek() == '?') at++; // lazy: the same strings
        if (more() && (peek() == '*' || peek() == '+' || peek() == '?' || peek() == '{' && isCount()))
            throw error("a quantifier after a quantifier");
        return q;
    }

    /** Whether '{' at the cursor starts {n}, {n,} or {n,m}. */
    private boolean isCount() {
        int i = at + 1;
        int digits = 0;
        while (i < cps.length && Character.isDigit(cps[i])) { i++; digits++; }
        if (digits == 0 || i >= cps.length) return false;
        if (cps[i] == '}') return true;
        if (cps[i] != ',') return false;
        i++;
        while (i < cps.length && Character.isDigit(cps[i])) i++;
        return i < cps.length && cps[i] == '}';
    }

    private int number() {
        int v = 0;
        while (more() && Character.isDigit(peek())) {
            v = Math.min(MAX_REPEAT + 1, v * 10 + (peek() - '0'));
            at++;
        }
        return v;
    }

    private String atom() {
        int c = cps[at++];
        switch (c) {
            case '(' -> {
                if (more() && peek() == '?') {
                    if (at + 1 < cps.length && cps[at + 1] == ':') at += 2;
                    else if (at + 1 < cps.length && cps[at + 1] == '<' && at + 2 < cps.length && cps[at + 2] != '='
                            && cps[at + 2] != '!') {
                        int close = src.indexOf('>', src.offsetByCodePoints(0, at));
                        if (close < 0) throw error("an unterminated group name");
                        at = src.codePointCount(0, close) + 1;
                    } else {
                        throw error("a lookaround or inline flag");
                    }
                }
                String inner = alternation();
                if (!more() || peek() != ')') throw error("an unclosed '('");
                at++;
                return "( " + inner + " )";
            }
            case '[' -> {
                return charClass();
            }
            case '.' -> { // any character but a line terminator (ECMAScript without the s flag)
                return classExpr(new Ranges().add(new int[][] {{'\n', '\n'}, {'\r', '\r'}, {0x2028, 0x2029}}), true);
            }
            case '\\' -> {
                return escape();
            }
            case '^', '$' -> throw error("an anchor inside the pattern");
            case '*', '+', '?', '{' -> {
                if (c == '{' && !isCountAt(at - 1)) return literal(c);
                throw error("a quantifier with nothing to repeat");
            }
            default -> {
                return literal(c);
            }
        }
    }

    private boolean isCountAt(int i) {
        int save = at;
        at = i;
        boolean r = isCount();
        at = save;
        return r;
    }

    private String escape() {
        if (!more()) throw error("a trailing backslash");
        int c = cps[at++];
        return switch (c) {
            case 'd' -> "[0-9]";
            case 'w' -> "[0-9A-Za-z_]";
            case 's' -> "( \" \" | \"\\\\t\" | \"\\\\n\" | \"\\\\r\" | \"\\\\f\" | \"\\\\u000b\" )";
            case 'D', 'W', 'S' -> classExpr(new Ranges().add(switch (c) {
                case 'D' -> new int[][] {{'0', '9'}};
                case 'W' -> new int[][] {{'0', '9'}, {'A', 'Z'}, {'a', 'z'}, {'_', '_'}};
                default -> new int[][] {{' ', ' '}, {'\t', '\r'}};
            }), true);
            case 'b', 'B' -> throw error("a word boundary");
            case 'n' -> literal('\n');
            case 't' -> literal('\t');
            case 'r' -> literal('\r');
            case 'f' -> literal('\f');
            case 'v' -> literal(0x0B);
            case '0' -> literal(0);
            case 'u' -> literal(hex(4));
            case 'x' -> literal(hex(2));
            default -> {
                if (Character.isDigit(c)) throw error("a backreference");
                if (Character.isLetter(c)) throw error("the escape \\" + (char) c);
                yield literal(c);
            }
        };
    }

    private int hex(int n) {
        if (at + n > cps.length) throw error("a short hex escape");
        int v = 0;
        for (int i = 0; i < n; i++) {
            int d = Character.digit(cps[at++], 16);
            if (d < 0) throw error("a bad hex escape");
            v = v * 16 + d;
        }
        return v;
    }

    /** One character as it appears in the JSON text. */
    static String literal(int cp) {
        return switch (cp) {
            case '"' -> "\"\\\\\\\"\"";
            case '\\' -> "\"\\\\\\\\\"";
            case '\n' -> "\"\\\\n\"";
            case '\r' -> "\"\\\\r\"";
            case '\t' -> "\"\\\\t\"";
            case '\b' -> "\"\\\\b\"";
            case '\f' -> "\"\\\\f\"";
            default -> cp < 0x20 || cp == 0x7F ? "\"\\\\u" + String.format("%04x", cp) + "\""
                    : JsonSchemaGrammar.gbnfLiteral(new String(Character.toChars(cp)));
        };
    }

    /** Code point ranges of a class. */
    private static final class Ranges {
        final List<int[]> list = new ArrayList<>();

        Ranges add(int[][] rs) {
            for (int[] r : rs) list.add(r);
            return this;
        }

        boolean contains(int cp) {
            for (int[] r : list) if (cp >= r[0] && cp <= r[1]) return true;
            return false;
        }
    }

    private String charClass() {
        boolean negated = more() && peek() == '^';
        if (negated) at++;
        Ranges r = new Ranges();
        boolean first = true;
        while (true) {
            if (!more()) throw error("an unclosed '['");
            int c = cps[at];
            if (c == ']' && !first) {
                at++;
                break;
            }
            first = false;
            at++;
            int lo;
            if (c == '\\') {
                if (!more()) throw error("a trailing backslash");
                int e = cps[at++];
                switch (e) {
                    case 'd' -> { r.add(new int[][] {{'0', '9'}}); continue; }
                    case 'w' -> { r.add(new int[][] {{'0', '9'}, {'A', 'Z'}, {'a', 'z'}, {'_', '_'}}); continue; }
                    case 's' -> { r.add(new int[][] {{' ', ' '}, {'\t', '\r'}}); continue; }
                    case 'D', 'W', 'S' -> throw error("a negated shorthand inside a class");
                    case 'n' -> lo = '\n';
                    case 't' -> lo = '\t';
                    case 'r' -> lo = '\r';
                    case 'f' -> lo = '\f';
                    case 'v' -> lo = 0x0B;
                    case 'b' -> lo = '\b';
                    case 'u' -> lo = hex(4);
                    case 'x' -> lo = hex(2);
                    default -> {
                        if (Character.isLetterOrDigit(e)) throw error("the escape \\" + (char) e + " in a class");
                        lo = e;
                    }
                }
            } else {
                lo = c;
            }
            int hi = lo;
            if (more() && peek() == '-' && at + 1 < cps.length && cps[at + 1] != ']') {
                at++;
                int h = cps[at++];
                if (h == '\\') {
                    if (!more()) throw error("a trailing backslash");
                    int e = cps[at++];
                    h = switch (e) {
                        case 'n' -> '\n';
                        case 't' -> '\t';
                        case 'u' -> hex(4);
                        case 'x' -> hex(2);
                        default -> {
                            if (Character.isLetterOrDigit(e)) throw error("the escape \\" + (char) e + " in a range");
                            yield e;
                        }
                    };
                }
                hi = h;
                if (hi < lo) throw error("a reversed range");
            }
            r.add(new int[][] {{lo, hi}});
        }
        return classExpr(r, negated);
    }

    /**
     * The JSON text of one character of the class (or of its complement): a GBNF class for the characters that stand
     * for themselves, and escaped alternatives for quote, backslash and control characters.
     */
    private static String classExpr(Ranges r, boolean negated) {
        List<String> alts = new ArrayList<>();
        // characters written as themselves: printable, not '"' or '\'
        StringBuilder cls = new StringBuilder(negated ? "[^" : "[");
        if (negated) {
            for (int[] x : r.list) cls.append(cpEsc(x[0])).append(x[0] == x[1] ? "" : "-" + cpEsc(x[1]));
            cls.append("\\x22\\x5C\\x00-\\x1F\\x7F]");
            alts.add(cls.toString());
        } else {
            boolean any = false;
            for (int[] x : r.list)
                for (int[] part : split(x)) {
                    cls.append(cpEsc(part[0])).append(part[0] == part[1] ? "" : "-" + cpEsc(part[1]));
                    any = true;
                }
            cls.append(']');
            if (any) alts.add(cls.toString());
        }
        // the characters written escaped, where the class holds them
        int[] special = {'"', '\\', '\n', '\r', '\t', '\b', '\f'};
        for (int cp : special) if (r.contains(cp) != negated) alts.add(literal(cp));
        for (int cp = 0; cp < 0x20; cp++)
            if (cp != '\n' && cp != '\r' && cp != '\t' && cp != '\b' && cp != '\f' && r.contains(cp) != negated) alts.add(literal(cp));
        if (r.contains(0x7F) != negated) alts.add(literal(0x7F));
        if (alts.isEmpty()) throw new IllegalArgumentException("a class that no JSON string character matches is not supported");
        return alts.size() == 1 ? alts.get(0) : "( " + String.join(" | ", alts) + " )";
    }

    /** A range less '"', '\', the control characters and DEL (those are written escaped). */
    private static List<int[]> split(int[] x) {
        List<int[]> out = new ArrayList<>();
        int lo = x[0];
        for (int cut : new int[] {0x1F, '"', '\\', 0x7F}) {
            if (cut < lo) continue;
            if (cut > x[1]) break;
            if (cut == 0x1F) { // everything up to 0x1F goes
                lo = 0x20;
                continue;
            }
            if (lo <= cut - 1) out.add(new int[] {lo, cut - 1});
            lo = cut + 1;
        }
        if (lo <= x[1]) out.add(new int[] {lo, x[1]});
        return out;
    }

    private static String cpEsc(int cp) {
        if (cp < 0x10000 && (Character.isLetterOrDigit(cp) || cp == ' ' || cp == '_'))
            return new String(Character.toChars(cp));
        return cp <= 0xFF ? String.format("\\x%02X", cp) : cp <= 0xFFFF ? String.format("\\u%04X", cp) : String.format("\\U%08X", cp);
    }
}
