package dev.tokenpress.kv.policy;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * The key=value parameters of one policy in a {@code --kv} spec, checked against the policy's declared
 * parameters. Getters return the given value or the declared default and throw a one-line
 * {@link IllegalArgumentException} that names the policy, the key and the bad value.
 */
public final class PolicyArgs {

    /**
     * A declared parameter.
     *
     * @param name         the key
     * @param defaultValue its default as spec text ("" = none)
     * @param help         one line for {@code --kv help}
     */
    public record Param(String name, String defaultValue, String help) {}

    private final String policy;
    private final String spec;
    private final List<Param> params;
    private final Map<String, String> given;

    /**
     * @param policy the policy name
     * @param spec   the whole spec text, for messages
     * @param params the declared parameters
     * @param given  key → value as written (unknown keys are rejected here)
     */
    public PolicyArgs(String policy, String spec, List<Param> params, Map<String, String> given) {
        this.policy = policy;
        this.spec = spec;
        this.params = params;
        this.given = new LinkedHashMap<>(given);
        for (String k : given.keySet())
            if (params.stream().noneMatch(p -> p.name().equals(k)))
                throw error(policy + " has no key '" + k + "' (valid: " + names() + ")");
    }

    public String policy() { return policy; }

    public boolean has(String key) { return given.containsKey(key); }

    /** Whether the policy declares the key. */
    public boolean declares(String key) { return params.stream().anyMatch(p -> p.name().equals(key)); }

    /** The value as written, else the declared default. */
    public String raw(String key) {
        String v = given.get(key);
        if (v != null) return v;
        for (Param p : params) if (p.name().equals(key)) return p.defaultValue();
        throw new IllegalStateException("undeclared key " + key + " of " + policy);
    }

    public Budget budget(String key) {
        Budget b = Budget.parse(raw(key));
        if (b == null) throw bad(key, "is not a token count or a ratio in [0, 1] (e.g. " + key + "=256 or " + key + "=0.25)");
        return b;
    }

    /** A budget that must be at least one token when it is a count, and above 0 when it is a ratio. */
    public Budget positiveBudget(String key) {
        Budget b = budget(key);
        if (b.value() <= 0) throw bad(key, "must be above 0");
        return b;
    }

    public int integer(String key, int min, int max) {
        String v = raw(key).trim();
        int x;
        try {
            x = Integer.parseInt(v);
        } catch (NumberFormatException e) {
            throw bad(key, "is not an integer");
        }
        if (x < min || x > max) throw bad(key, "must be in [" + min + ", " + (max == Integer.MAX_VALUE ? "inf" : max) + "]");
        return x;
    }

    public long longValue(String key) {
        try {
            return Long.parseLong(raw(key).trim());
        } catch (NumberFormatException e) {
            throw bad(key, "is not an integer");
        }
    }

    public double real(String key, double min, double max) {
        String v = raw(key).trim();
        double x;
        try {
            x = Double.parseDouble(v);
        } catch (NumberFormatException e) {
            throw bad(key, "is not a number");
        }
        if (!(x >= min && x <= max)) throw bad(key, "must be in [" + fmt(min) + ", " + fmt(max) + "]");
        return x;
    }

    public String choice(String key, String... valid) {
        String v = raw(key).trim().toLowerCase(Locale.ROOT);
        for (String c : valid) if (c.equals(v)) return c;
        throw bad(key, "is not one of " + String.join(", ", valid));
    }

    /** An error about one key's value: "... policy: key=value is/must ...". */
    public IllegalArgumentException bad(String key, String what) {
        return error(policy + ": " + key + "=" + raw(key) + " " + what);
    }

    public IllegalArgumentException error(String message) {
        return new IllegalArgumentException("bad --kv spec '" + spec + "': " + message);
    }

    private String names() {
        List<String> n = new ArrayList<>();
        for (Param p : params) n.add(p.name());
        return n.isEmpty() ? "none" : String.join(", ", n);
    }

    private static String fmt(double d) {
        if (d == Double.MAX_VALUE || Double.isInfinite(d)) return "inf";
        if (d == Math.rint(d)) return Long.toString((long) d);
        return Double.toString(d);
    }
}
