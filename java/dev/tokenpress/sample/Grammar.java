package dev.tokenpress.sample;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * A context-free grammar in llama.cpp's GBNF notation, compiled for incremental matching:
 * <pre>
 * root   ::= answer ws            # comments run to the end of the line
 * answer ::= "yes" | "no" | [0-9]{1,3} | ( "maybe" [ \t]* )+
 * ws     ::= [ \t\n]*
 * </pre>
 * Rules {@code name ::= alternatives}; items are {@code "literals"} (escapes {@code \n \r \t \\ \" \xHH \\uHHHH
 * \UHHHHHHHH}), character classes {@code [a-z_]} / {@code [^"\\]}, {@code .} (any character), rule names and
 * {@code ( groups )}, each optionally repeated with {@code * + ?} or {@code {m} {m,} {m,n}}. A rule ends at the end of
 * its line unless inside parentheses or after {@code |}. The grammar needs a {@code root} rule.
 * <p>
 * Matching follows llama.cpp's stack model: a {@link State} is the set of parse stacks that the text so far leaves
 * open (each stack the elements still to match, innermost first, its top a character class) and whether the text is
 * a complete sentence. States are interned and their transitions memoized, so a character class that loops (the body
 * of a string) costs one lookup per character after the first time. Left-recursive rules are refused.
 */
public final class Grammar {
    /** One element of a sequence: a character class, or a reference to a rule. */
    private static final class Elem {
        final int[] ranges;   // inclusive code point ranges [lo0, hi0, lo1, hi1, ...] (chars)
        final boolean negated;
        final int rule;       // >= 0: a rule reference

        Elem(int[] ranges, boolean negated) {
            this.ranges = ranges;
            this.negated = negated;
            this.rule = -1;
        }

        Elem(int rule) {
            this.ranges = null;
            this.negated = false;
            this.rule = rule;
        }

        boolean matches(int cp) {
            boolean in = false;
            for (int i = 0; i < ranges.length && !in; i += 2) in = cp >= ranges[i] && cp <= ranges[i + 1];
            return in != negated;
        }
    }

    /** A parse stack: the element at {@code pos} of sequence {@code seq} is next, then {@code next}. */
    private static final class Stack {
        final int seq, pos;
        final Stack next;
        final int hash;

        Stack(int seq, int pos, Stack next) {
            this.seq = seq;
            this.pos = pos;
            this.next = next;
            this.hash = (31 * seq + pos) * 31 + (next == null ? 0 : next.hash);
        }

        @Override
        public int hashCode() { return hash; }

        @Override
        public boolean equals(Object o) {
            if (this == o) return true;
            if (!(o instanceof Stack s) || s.hash != hash) return false;
            Stack a = this, b = s;
            while (a != null && b != null) {
                if (a == b) return true;
                if (a.seq != b.seq || a.pos != b.pos) return false;
                a = a.next;
                b = b.next;
            }
            return a == b;
        }
    }

    /** What a text prefix leaves possible: the open parse stacks, and whether the text is a complete sentence. */
    public static final class State {
        private final Stack[] stacks;
        private final boolean accepting;
        private final Map<Integer, State> next = new HashMap<>(); // memo of advance, beyond ASCII
        private State[] ascii;                                     // memo of advance for code points < 128

        private State(Stack[] stacks, boolean accepting) {
            this.stacks = stacks;
            this.accepting = accepting;
        }

        /** The text so far is a sentence of the grammar. */
        public boolean accepting() { return accepting; }

        /** Nothing can follow (the text is complete and no rule goes on, or the text left the grammar). */
        public boolean closed() { return stacks.length == 0; }

        /** The text left the grammar: no continuation makes it a sentence. */
        public boolean dead() { return stacks.length == 0 && !accepting; }
    }

    private static final int MAX_EXPANSION_STEPS = 1_000_000;
    private static final int MAX_MEMO = 1 << 20;

    private final Elem[][] seqs;      // every sequence of elements
    private final int[][] alts;       // rule -> its alternatives (sequence ids)
    private final String[] names;     // rule names (generated ones included)
    private final State initial;
    private final State deadState = new State(new Stack[0], false);
    private final Map<StateKey, State> interned = new HashMap<>();
    private int memo;

    private Grammar(Elem[][] seqs, int[][] alts, String[] names, int root) {
        this.seqs = seqs;
        this.alts = alts;
        this.names = names;
        Set<Stack> out = new LinkedHashSet<>();
        boolean acc = false;
        Set<Stack> seen = new java.util.HashSet<>();
        for (int a : alts[root]) acc |= expand(node(a, 0, null), out, seen);
        this.initial = intern(out, acc);
    }

    /** The state before any text. */
    public State initial() { return initial; }

    /** The state after one more code point (the dead state when the grammar does not allow it). */
    public synchronized State advance(State s, int cp) {
        return step(s, cp);
    }

    /** {@link #advance} for a caller that holds this grammar's lock (a whole vocabulary walk). */
    State step(State s, int cp) {
        State t = cp < 128 ? (s.ascii == null ? null : s.ascii[cp]) : s.next.get(cp);
        if (t != null) return t;
        if (s.stacks.length == 0) return deadState;
        Set<Stack> out = new LinkedHashSet<>();
        boolean acc = false;
        Set<Stack> seen = new java.util.HashSet<>(); // shared: the stacks' expansions overlap (nested optionals)
        for (Stack st : s.stacks) {
            Elem e = seqs[st.seq][st.pos];
            if (e.matches(cp)) acc |= expand(node(st.seq, st.pos + 1, st.next), out, seen);
        }
        t = out.isEmpty() && !acc ? deadState : intern(out, acc);
        if (++memo > MAX_MEMO) { // bound the memo: forget every transition (states stay valid)
            for (State x : interned.values()) {
                x.next.clear();
                x.ascii = null;
            }
            memo = 0;
        }
        if (cp < 128) {
            if (s.ascii == null) s.ascii = new State[128];
            s.ascii[cp] = t;
        } else {
            s.next.put(cp, t);
        }
        return t;
    }

    /** The state after a text (code points), or the dead state. */
    public State advance(State s, String text) {
        for (int i = 0; i < text.length() && !s.dead(); ) {
            int cp = text.codePointAt(i);
            s = advance(s, cp);
            i += Character.charCount(cp);
        }
        return s;
    }

    /** Whether the whole text is a sentence of the grammar. */
    public boolean matches(String text) {
        return advance(initial, text).accepting();
    }

    /** Whether the text can still be continued into a sentence (it is a prefix of one). */
    public boolean isPrefix(String text) {
        return !advance(initial, text).dead();
    }

    /**
     * Adds the stack's expansion to out (stacks whose top is a character class); true when one of its expansions is
     * empty (the text may end here). Iterative, and a stack in {@code seen} (shared by the expansions of one step)
     * is not expanded again: what it adds is already in out, and its empty expansion already counted; so deep but
     * finite nesting ({@code ("a"?){0,1000}}) costs work linear in the nesting per character. Left recursion is
     * refused when the grammar is parsed.
     */
    private boolean expand(Stack start, Set<Stack> out, Set<Stack> seen) {
        boolean acc = false;
        java.util.ArrayDeque<Stack> work = new java.util.ArrayDeque<>();
        work.push(start);
        long steps = 0;
        while (!work.isEmpty()) {
            Stack s = work.pop();
            while (s != null && s.pos == seqs[s.seq].length) s = s.next;
            if (s == null) {
                acc = true;
                continue;
            }
            if (!seen.add(s)) continue;
            if (++steps > MAX_EXPANSION_STEPS)
                throw new IllegalArgumentException("grammar: rule '" + ruleOf(s) + "' expands into too many alternatives");
            Elem e = seqs[s.seq][s.pos];
            if (e.rule < 0) {
                out.add(s);
                continue;
            }
            Stack cont = node(s.seq, s.pos + 1, s.next);
            int[] as = alts[e.rule];
            for (int i = as.length - 1; i >= 0; i--) work.push(node(as[i], 0, cont));
        }
        return acc;
    }

    /** A stack node given its (interned) tail; its next is identity-keyed. */
    private record NodeKey(int seq, int pos, Stack next) {
        @Override
        public boolean equals(Object o) {
            return o instanceof NodeKey k && k.seq == seq && k.pos == pos && k.next == next;
        }

        @Override
        public int hashCode() {
            return (31 * seq + pos) * 31 + System.identityHashCode(next);
        }
    }

    private final Map<NodeKey, Stack> nodes = new HashMap<>();

    /**
     * The stack (seq, pos) :: next, hash-consed: structurally equal stacks built from interned tails are one object,
     * so comparing them (state keys, the expansion's seen-set) stops at the first identical node instead of walking
     * whole chains, which matters for deeply nested, ambiguous grammars.
     */
    private Stack node(int seq, int pos, Stack next) {
        if (nodes.size() > MAX_MEMO) nodes.clear(); // old nodes stay valid, merely no longer shared
        return nodes.computeIfAbsent(new NodeKey(seq, pos, next), k -> new Stack(seq, pos, next));
    }

    private String ruleOf(Stack s) {
        if (s == null) return "?";
        for (int r = 0; r < alts.length; r++) for (int a : alts[r]) if (a == s.seq) return names[r];
        return "?";
    }

    private record StateKey(Stack[] stacks, boolean accepting) {
        @Override
        public boolean equals(Object o) {
            return o instanceof StateKey k && k.accepting == accepting && Arrays.equals(k.stacks, stacks);
        }

        @Override
        public int hashCode() { return Arrays.hashCode(stacks) * 2 + (accepting ? 1 : 0); }
    }

    private State intern(Set<Stack> set, boolean acc) {
        Stack[] arr = set.toArray(new Stack[0]);
        Arrays.sort(arr, (a, b) -> Integer.compare(a.hash, b.hash));
        StateKey k = new StateKey(arr, acc);
        State s = interned.get(k);
        if (s == null) {
            s = new State(arr, acc);
            interned.put(k, s);
        }
        return s;
    }

    // ---- parsing GBNF --------------------------------------------------------------------------------------------

    /** Parses GBNF text; throws IllegalArgumentException with the line of the first problem. */
    public static Grammar parse(String text) {
        return new Parser(text).parse();
    }

    private static final class Parser {
        private final String src;
        private int pos;
        private final Map<String, Integer> ids = new LinkedHashMap<>();
        private final List<String> names = new ArrayList<>();
        private final List<List<Integer>> ruleAlts = new ArrayList<>();
        private final List<Elem[]> seqs = new ArrayList<>();
        private final Set<String> defined = new LinkedHashSet<>();

        Parser(String src) {
            this.src = src;
        }

        Grammar parse() {
            space(true);
            while (pos < src.length()) {
                int start = pos;
                String name = name();
                space(false);
                if (!src.startsWith("::=", pos)) throw error("expected '::=' after rule name '" + name + "'");
                pos += 3;
                space(true);
                int id = symbol(name);
                if (!defined.add(name)) throw error("rule '" + name + "' is defined twice", start);
                alternates(id, false);
                if (pos < src.length() && src.charAt(pos) != '\n' && src.charAt(pos) != '\r')
                    throw error("unexpected '" + src.charAt(pos) + "'");
                space(true);
            }
            for (String n : ids.keySet())
                if (!defined.contains(n)) throw new IllegalArgumentException("grammar: rule '" + n + "' is used but not defined");
            Integer root = ids.get("root");
            if (root == null) throw new IllegalArgumentException("grammar: no 'root' rule");
            int[][] alts = new int[ruleAlts.size()][];
            for (int i = 0; i < alts.length; i++) alts[i] = ruleAlts.get(i).stream().mapToInt(Integer::intValue).toArray();
            Elem[][] sq = seqs.toArray(new Elem[0][]);
            checkLeftRecursion(sq, alts);
            return new Grammar(sq, alts, names.toArray(new String[0]), root);
        }

        /**
         * Refuses a rule that can reach itself before consuming a character (as llama.cpp's
         * {@code detect_left_recursion}): a cycle through the rules each alternative may begin with, where a rule may
         * also begin with what follows a prefix of rules that match empty text (e.g. {@code ("a"?)*}).
         */
        private void checkLeftRecursion(Elem[][] sq, int[][] alts) {
            int n = alts.length;
            boolean[] nullable = new boolean[n];
            for (boolean changed = true; changed; ) {
                changed = false;
                for (int r = 0; r < n; r++) {
                    if (nullable[r]) continue;
                    for (int a : alts[r]) {
                        boolean all = true;
                        for (Elem e : sq[a]) if (e.rule < 0 || !nullable[e.rule]) { all = false; break; }
                        if (all) {
                            nullable[r] = true;
                            changed = true;
                            break;
                        }
                    }
                }
            }
            List<List<Integer>> begins = new ArrayList<>();
            for (int r = 0; r < n; r++) {
                List<Integer> b = new ArrayList<>();
                for (int a : alts[r])
                    for (Elem e : sq[a]) {
                        if (e.rule < 0) break;
                        b.add(e.rule);
                        if (!nullable[e.rule]) break;
                    }
                begins.add(b);
            }
            int[] color = new int[n]; // 0 new, 1 on the path, 2 done
            for (int r = 0; r < n; r++) if (color[r] == 0) visit(r, begins, color);
        }

        private void visit(int start, List<List<Integer>> begins, int[] color) {
            java.util.ArrayDeque<int[]> st = new java.util.ArrayDeque<>(); // {rule, next edge}
            st.push(new int[] {start, 0});
            color[start] = 1;
            while (!st.isEmpty()) {
                int[] top = st.peek();
                List<Integer> b = begins.get(top[0]);
                if (top[1] < b.size()) {
                    int nx = b.get(top[1]++);
                    if (color[nx] == 1)
                        throw new IllegalArgumentException("grammar: rule '" + names.get(nx) + "' is left-recursive "
                                + "(it can reach itself before matching a character)");
                    if (color[nx] == 0) {
                        color[nx] = 1;
                        st.push(new int[] {nx, 0});
                    }
                } else {
                    color[top[0]] = 2;
                    st.pop();
                }
            }
        }

        private int symbol(String name) {
            Integer id = ids.get(name);
            if (id != null) return id;
            id = names.size();
            ids.put(name, id);
            names.add(name);
            ruleAlts.add(new ArrayList<>());
            return id;
        }

        private int generated(String base) {
            String n = base + "~" + names.size(); // '~' cannot appear in a written rule name: no collisions
            int id = names.size();
            names.add(n);
            ruleAlts.add(new ArrayList<>());
            ids.put(n, id);
            defined.add(n);
            return id;
        }

        private int addSeq(List<Elem> elems) {
            seqs.add(elems.toArray(new Elem[0]));
            return seqs.size() - 1;
        }

        private void alternates(int rule, boolean nested) {
            ruleAlts.get(rule).add(addSeq(sequence(names.get(rule), nested)));
            while (pos < src.length() && src.charAt(pos) == '|') {
                pos++;
                space(true);
                ruleAlts.get(rule).add(addSeq(sequence(names.get(rule), nested)));
            }
        }

        private List<Elem> sequence(String rule, boolean nested) {
            List<Elem> out = new ArrayList<>();
            int last = -1; // start of the last item in out
            while (pos < src.length()) {
                char c = src.charAt(pos);
                if (c == '"') {
                    pos++;
                    last = out.size();
                    while (true) {
                        if (pos >= src.length()) throw error("unterminated string literal");
                        if (src.charAt(pos) == '"') {
                            pos++;
                            break;
                        }
                        int cp = character();
                        out.add(new Elem(new int[] {cp, cp}, false));
                    }
                } else if (c == '[') {
                    pos++;
                    boolean neg = pos < src.length() && src.charAt(pos) == '^';
                    if (neg) pos++;
                    List<Integer> r = new ArrayList<>();
                    while (true) {
                        if (pos >= src.length()) throw error("unterminated character class");
                        if (src.charAt(pos) == ']') {
                            pos++;
                            break;
                        }
                        int lo = character(), hi = lo;
                        if (pos + 1 < src.length() && src.charAt(pos) == '-' && src.charAt(pos + 1) != ']') {
                            pos++;
                            hi = character();
                            if (hi < lo) throw error("empty character range");
                        }
                        r.add(lo);
                        r.add(hi);
                    }
                    last = out.size();
                    out.add(new Elem(r.stream().mapToInt(Integer::intValue).toArray(), neg));
                } else if (c == '.') {
                    pos++;
                    last = out.size();
                    out.add(new Elem(new int[0], true));
                } else if (isWordChar(c)) {
                    last = out.size();
                    out.add(new Elem(symbol(name())));
                } else if (c == '(') {
                    pos++;
                    space(true);
                    int g = generated(rule);
                    alternates(g, true);
                    if (pos >= src.length() || src.charAt(pos) != ')') throw error("expected ')'");
                    pos++;
                    last = out.size();
                    out.add(new Elem(g));
                } else if (c == '*' || c == '+' || c == '?' || c == '{') {
                    if (last < 0) throw error("'" + c + "' follows nothing");
                    int min, max; // max -1: unbounded
                    pos++;
                    if (c == '*') { min = 0; max = -1; }
                    else if (c == '+') { min = 1; max = -1; }
                    else if (c == '?') { min = 0; max = 1; }
                    else {
                        space(nested);
                        min = integer();
                        space(nested);
                        if (pos >= src.length()) throw error("expected '}'");
                        if (src.charAt(pos) == ',') {
                            pos++;
                            space(nested);
                            max = pos < src.length() && Character.isDigit(src.charAt(pos)) ? integer() : -1;
                            space(nested);
                        } else {
                            max = min;
                        }
                        if (pos >= src.length() || src.charAt(pos) != '}') throw error("expected '}'");
                        pos++;
                        if (max >= 0 && max < min) throw error("repetition {" + min + "," + max + "} has max < min");
                    }
                    List<Elem> item = new ArrayList<>(out.subList(last, out.size()));
                    out.subList(last, out.size()).clear();
                    last = out.size();
                    repeat(rule, item, min, max, out);
                } else {
                    break;
                }
                space(nested);
            }
            return out;
        }

        /** Appends item{min,max} to out: min copies, then a looping rule or nested optional rules. */
        private void repeat(String rule, List<Elem> item, int min, int max, List<Elem> out) {
            for (int i = 0; i < min; i++) out.addAll(item);
            if (max == min) return;
            if (max < 0) { // R ::= item R | ""
                int r = generated(rule);
                List<Elem> loop = new ArrayList<>(item);
                loop.add(new Elem(r));
                ruleAlts.get(r).add(addSeq(loop));
                ruleAlts.get(r).add(addSeq(List.of()));
                out.add(new Elem(r));
                return;
            }
            int inner = -1; // R_k ::= item R_(k-1) | "" (R_1 ::= item | "")
            for (int k = 0; k < max - min; k++) {
                int r = generated(rule);
                List<Elem> body = new ArrayList<>(item);
                if (inner >= 0) body.add(new Elem(inner));
                ruleAlts.get(r).add(addSeq(body));
                ruleAlts.get(r).add(addSeq(List.of()));
                inner = r;
            }
            out.add(new Elem(inner));
        }

        private int integer() {
            int start = pos;
            while (pos < src.length() && Character.isDigit(src.charAt(pos))) pos++;
            if (start == pos) throw error("expected a number");
            try {
                return Integer.parseInt(src.substring(start, pos));
            } catch (NumberFormatException e) {
                throw error("number too large");
            }
        }

        /** One code point of a literal or class, with escapes. */
        private int character() {
            int cp = src.codePointAt(pos);
            if (cp != '\\') {
                pos += Character.charCount(cp);
                return cp;
            }
            if (pos + 1 >= src.length()) throw error("dangling '\\'");
            char e = src.charAt(pos + 1);
            pos += 2;
            return switch (e) {
                case 'n' -> '\n';
                case 'r' -> '\r';
                case 't' -> '\t';
                case 'x' -> hex(2);
                case 'u' -> hex(4);
                case 'U' -> hex(8);
                case '\\', '"', '[', ']', '-', '^', '/', '\'' -> e;
                default -> throw error("unknown escape '\\" + e + "'");
            };
        }

        private int hex(int n) {
            if (pos + n > src.length() || !src.substring(pos, pos + n).matches("[0-9a-fA-F]+"))
                throw error("expected " + n + " hex digits");
            try {
                int v = Integer.parseUnsignedInt(src.substring(pos, pos + n), 16);
                pos += n;
                return v;
            } catch (NumberFormatException e) {
                throw error("expected " + n + " hex digits");
            }
        }

        private String name() {
            int start = pos;
            while (pos < src.length() && isWordChar(src.charAt(pos))) pos++;
            if (start == pos) throw error("expected a rule name");
            return src.substring(start, pos);
        }

        private static boolean isWordChar(char c) {
            return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_';
        }

        /** Skips blanks and comments, and line breaks when newlineOk. */
        private void space(boolean newlineOk) {
            while (pos < src.length()) {
                char c = src.charAt(pos);
                if (c == ' ' || c == '\t') pos++;
                else if (c == '#') {
                    while (pos < src.length() && src.charAt(pos) != '\n' && src.charAt(pos) != '\r') pos++;
                } else if (newlineOk && (c == '\n' || c == '\r')) pos++;
                else break;
            }
        }

        private IllegalArgumentException error(String what) {
            return error(what, pos);
        }

        private IllegalArgumentException error(String what, int at) {
            int line = 1, col = 1;
            for (int i = 0; i < Math.min(at, src.length()); i++) {
                if (src.charAt(i) == '\n') {
                    line++;
                    col = 1;
                } else col++;
            }
            return new IllegalArgumentException("grammar: " + what + " at line " + line + ", column " + col);
        }
    }
}
