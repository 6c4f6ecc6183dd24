package dev.tokenpress.model;

import dev.tokenpress.kv.KvCache;
import dev.tokenpress.sample.SamplerChain;

import java.util.Arrays;
import java.util.Set;
import java.util.function.IntPredicate;

/**
 * SkipDecode (Del Corro et al. 2023, arXiv 2307.02628): token-level early exit that stays compatible with the KV
 * cache. Instead of stopping early, a generated token skips the lower layers and always runs the top ones; how many
 * layers run falls linearly with the token's index from {@code maxLayers} to {@code minLayers} over the generation,
 * so the first layer a token runs never goes down along the sequence and every layer a later token runs was run by
 * all the tokens before it: nothing needs recomputing ({@link Llama#decodeStepFrom}). The paper trains its models with
 * the schedule; an ordinary checkpoint run this way loses accuracy (the measured cost is the point of running it).
 */
public final class SkipDecode {
    private SkipDecode() {}

    /**
     * Layers run by generated token t of {@code steps}: {@code maxLayers} at t = 0 down to {@code minLayers} at the last,
     * linearly (rounded to the nearest layer).
     */
    public record Schedule(int maxLayers, int minLayers, int steps) {
        public Schedule {
            if (minLayers < 1 || minLayers > maxLayers)
                throw new IllegalArgumentException("skip-decode needs 1 <= min layers <= max layers, got " + maxLayers + ":" + minLayers);
            if (steps < 1) throw new IllegalArgumentException("skip-decode needs at least one step");
        }

        /**
         * "MAX:MIN" for a model of {@code layers} layers over {@code steps} tokens; IllegalArgumentException with the
         * reason for anything else.
         */
        public static Schedule parse(String spec, int layers, int steps) {
            String[] mm = spec.split(":");
            int max, min;
            try {
                if (mm.length != 2) throw new NumberFormatException();
                max = Integer.parseInt(mm[0].trim());
                min = Integer.parseInt(mm[1].trim());
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException("skip-decode takes MAX:MIN layers, e.g. 24:16, got " + spec);
            }
            if (max > layers) throw new IllegalArgumentException("skip-decode " + spec + ": more layers than the model's " + layers);
            return new Schedule(max, min, Math.max(1, steps));
        }

        public int activeLayers(int t) {
            if (steps == 1) return maxLayers;
            int c = Math.min(Math.max(t, 0), steps - 1);
            return maxLayers - (int) Math.round((maxLayers - minLayers) * (double) c / (steps - 1));
        }

        /** The first layer token t runs in a model of {@code layers} layers. */
        public int firstLayer(int t, int layers) {
            if (maxLayers > layers) throw new IllegalArgumentException("skip-decode: " + maxLayers + " layers of a " + layers + "-layer model");
            return layers - activeLayers(t);
        }
    }

    /** What {@link #generate} produced: the tokens and the layers each one's step ran (0 for the one from the prompt). */
    public record Result(int[] tokens, int[] layersRun) {
        /** Mean layers run per generated token's step. */
        public double meanLayers() {
            return layersRun.length == 0 ? 0 : Arrays.stream(layersRun).average().orElse(0);
        }
    }

    /**
     * Prefills {@code prompt} at {@code position} (every layer), then generates up to {@code maxTokens} tokens with
     * {@code chain}, token t fed through layers [L − activeLayers(t), L); stops at an end token (included), when
     * {@code onToken} returns false, or when the cache is full.
     */
    public static Result generate(Llama model, KvCache cache, int[] prompt, int position, int maxTokens, Schedule schedule,
                                  SamplerChain chain, Set<Integer> endTokens, IntPredicate onToken) {
        int layers = model.config.numLayers();
        model.prefill(cache, prompt, position, false, null);
        int[] out = new int[maxTokens], ran = new int[maxTokens];
        int n = 0;
        int pos = position + prompt.length;
        while (n < maxTokens) {
            int t = chain.sample(model.logits());
            out[n] = t;
            ran[n] = n == 0 ? layers : layers - schedule.firstLayer(n - 1, layers);
            n++;
            if (endTokens.contains(t) || !onToken.test(t) || n == maxTokens) break;
            try {
                model.decodeStepFrom(cache, t, pos++, schedule.firstLayer(n - 1, layers));
            } catch (dev.tokenpress.kv.KvCacheFullException e) {
                break;
            }
        }
        return new Result(Arrays.copyOf(out, n), Arrays.copyOf(ran, n));
    }
}
