package dev.tokenpress.kv;

import dev.tokenpress.kv.policy.Budget;
import dev.tokenpress.kv.policy.CompositePolicy;
import dev.tokenpress.kv.policy.H2OPolicy;
import dev.tokenpress.kv.policy.TidalPolicy;
import dev.tokenpress.kv.policy.WindowPolicy;
import dev.tokenpress.model.LlamaConfig;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.params.provider.ValueSource;

import java.util.List;

import static org.junit.jupiter.api.Assertions.*;

/** The --kv spec language: defaults, ratios, canonical specs, one-line errors and the help text. */
class KvPoliciesTest {
    static final LlamaConfig CONFIG = KvTestSupport.config(6);

    @Test
    void fullIsTheSharedFullPolicy() {
        assertSame(KvPolicy.FULL, KvPolicies.parse("full", CONFIG));
        assertSame(KvPolicy.FULL, KvPolicies.parse(" FULL ", null));
    }

    @ParameterizedTest
    @CsvSource(delimiter = ';', value = {
            "window; window:sink=4,recent=2000",
            "window:budget=256; window:sink=4,budget=256",
            "window:budget=256,pos_shift=true; window:sink=4,budget=256,pos_shift=true",
            "streamingllm:sink=2,recent=0.5; window:sink=2,recent=0.5",
            "h2o; h2o:budget=0.2,recent=0.5",
            "h2o:budget=25%; h2o:budget=0.25,recent=0.5",
            "a2sf:forget=0.5; a2sf:budget=256,recent=16,sink=0,alpha=0.5",
            "tova; tova:budget=0.25,heads=layer",
            "tova:budget=128,heads=kv; tova:budget=128,heads=kv",
            "snapkv; snapkv:budget=2048,window=32,kernel=7,pool=max",
            "snapkv:pyramid=20; snapkv:budget=2048,window=32,kernel=7,pool=max,pyramid=20",
            "pyramidkv; pyramidkv:budget=2048,window=64,kernel=5,pool=avg,beta=20",
            "knorm; knorm:budget=0.5,recent=0,sink=0",
            "lagkv; lagkv:budget=0.5,recent=0,sink=4,lag=128,interval=128",
            "random:seed=9; random:budget=0.5,recent=0,sink=0,seed=9",
            "leverage; leverage:budget=0.5,recent=0,sink=0,sketch=48,seed=0",
            "simlayerkv; simlayerkv:threshold=0.9,recent=1024,sink=4,last=1",
            "kvzip:layerwise=true; kvzip:budget=0.3,sink=4,chunk=2048,layerwise=true,plus=false",
            "h2o:merge=32,budget=64; h2o:budget=64,recent=0.5,merge=32",
            "a2sf:merge=8; a2sf:budget=256,recent=16,sink=0,alpha=0.95,merge=8",
            "snapkv:critical=0.5; snapkv:budget=2048,window=32,kernel=7,pool=max,critical=0.5",
            "snapkv:critical=0.5,ada=0.2; snapkv:budget=2048,window=32,kernel=7,pool=max,ada=0.2,critical=0.5",
            "kvzip:rerotate=true; kvzip:budget=0.3,sink=4,chunk=2048,layerwise=false,plus=false,rerotate=true",
            "pyramidkv:critical=0.25; pyramidkv:budget=2048,window=64,kernel=5,pool=avg,beta=20,critical=0.25",
            "duo; duo:heads=0.5,sink=128,recent=256",
            "duo_attention:heads=0.25,recent=64; duo:heads=0.25,sink=128,recent=64",
            "knorm:once=true; knorm:budget=0.5,recent=0,sink=0,once=true",
            "lagkv:once=true; lagkv:budget=0.5,recent=0,sink=4,lag=128,interval=128,once=true",
            "cur; cur:budget=0.5,recent=0,sink=4,type=kv_product,window=16,project=0,seed=0",
            "cur:type=key,project=20; cur:budget=0.5,recent=0,sink=4,type=key,window=16,project=20,seed=0",
            "compactor; compactor:budget=0.5,sink=8,sink_end=4,chunk=256,sketch=48,seed=0",
            "compactor:blend=0,budget=64; compactor:budget=64,sink=8,sink_end=4,chunk=256,sketch=48,blend=0,seed=0",
            "expected:budget=128,cov=false; expected:budget=128,recent=0,sink=4,future=512,cov=false,vnorm=true,eps=0,interval=64",
            "expected_attention:interval=0; expected:budget=0.25,recent=0,sink=4,future=512,cov=true,vnorm=true,eps=0,interval=0",
            "h2o:ada=0.2,budget=64,interval=8; h2o:budget=64,recent=0.5,interval=8,ada=0.2",
            "tova:pyramid=4; tova:budget=0.25,heads=layer,pyramid=4",
            "keyformer; keyformer:budget=0.6,recent=0.3,tau_init=1.0,tau_end=2.0,steps=0,seed=0",
            "tidal; tidal:k=256,full_layers=2,reselect=auto,group=max",
            "quest:budget=512; quest:budget=512,page=16,dense_layers=2,group=max",
            "tokenselect; tokenselect:k=2048,init=128,local=512,reuse=0",
            "razor; razor:heads=0.15,echo=0.01,sink=4,recent=4000,ratio=0.2,probe=256,repeats=4,seed=0",
            "h2o:budget=64+tidal:k=8; h2o:budget=64,recent=0.5+tidal:k=8,full_layers=2,reselect=auto,group=max"})
    void defaultsAndCanonicalSpecs(String spec, String canonical) {
        KvPolicy p = KvPolicies.parse(spec, CONFIG);
        assertEquals(canonical, p.spec());
        assertEquals(canonical, KvPolicies.parse(p.spec(), CONFIG).spec(), "the spec recreates the policy");
    }

    @Test
    void budgetsAreCountsOrRatiosOfTheSequenceSeenSoFar() {
        assertEquals(Budget.count(256), Budget.parse("256"));
        assertEquals(Budget.fraction(0.25), Budget.parse("0.25"));
        assertEquals(Budget.fraction(0.25), Budget.parse("25%"));
        assertEquals(Budget.fraction(1.0), Budget.parse("1.0"));
        assertEquals(Budget.count(1), Budget.parse("1"));
        assertEquals(25, Budget.parse("0.25").tokens(100));
        assertEquals(26, Budget.parse("0.25").tokens(101), "ratios round up");
        assertEquals(3, Budget.parse("0.1").tokens(30), "no float drift: 0.1 * 30 is 3");
        assertEquals(256, Budget.parse("256").tokens(10));
        assertEquals(5, Budget.parse("0.5").of(10));
        for (String bad : new String[]{"-1", "1.5", "abc", "", "2e3", "120%", "."}) assertNull(Budget.parse(bad), bad);
        assertInstanceOf(H2OPolicy.class, KvPolicies.parse("h2o:budget=0.1,recent=0.5", CONFIG));
        assertInstanceOf(WindowPolicy.class, KvPolicies.parse("window:budget=0.5", CONFIG));
    }

    @ParameterizedTest
    @CsvSource(delimiter = ';', value = {
            "nosuch; unknown KV policy 'nosuch'; window",
            "h2o:foo=1; h2o has no key 'foo'; budget, recent",
            "h2o:budget=abc; budget=abc is not a token count or a ratio; budget=0.25",
            "h2o:budget=1.5; budget=1.5 is not a token count or a ratio; h2o",
            "h2o:budget=0; budget=0 must be above 0; h2o",
            "h2o:budget=16,recent=32; recent=32 must not exceed budget=16; h2o",
            "h2o:budget; 'budget' is not key=value; budget, recent",
            "h2o:budget=1,budget=2; key 'budget' given twice; h2o",
            "window:budget=8,recent=4; give budget or recent, not both; window",
            "window:sink=4,budget=4; budget=4 must exceed sink=4; window",
            "snapkv:kernel=4; kernel=4 must be odd; snapkv",
            "snapkv:pool=min; pool=min is not one of max, avg; snapkv",
            "snapkv:budget=16,window=32; budget=16 must exceed window=32; snapkv",
            "a2sf:alpha=2; alpha=2 must be in [0, 1]; a2sf",
            "tidal:k=x; k=x is not an integer; tidal",
            "tidal:k=0; k=0 must be in [1, inf]; tidal",
            "tidal:reselect=1; reselect=1 must lie in (2, 6); tidal",
            "tidal:group=mean; group=mean is not one of max, sum; tidal",
            "keyformer:tau_init=-1; tau_init=-1 must be in; keyformer",
            "h2o+a2sf; at most one evicting policy; tidal",
            "h2o:ada=1.5; ada=1.5 must be in [0, 1]; h2o",
            "h2o:chunk=4,ada=0.2; chunk and ada exclude each other; h2o",
            "h2o:chunk=0; chunk=0 must be in [1, ; h2o",
            "h2o:pyramid=0.5; pyramid=0.5 must be in [1, ; h2o",
            "h2o:interval=-1; interval=-1 must be in [0, inf]; h2o",
            "snapkv:interval=4; snapkv has no key 'interval'; pyramid",
            "snapkv:ada=0.2,chunk=4; chunk and ada exclude each other; snapkv",
            "window:interval=4; window has no key 'interval'; window",
            "expected:cov=maybe; cov=maybe is not one of true, false; expected",
            "knorm+expected; at most one evicting policy; knorm",
            "kvzip:layerwise=yes; layerwise=yes is not one of true, false; kvzip",
            "kvzip:chunk=0; chunk=0 must be in [1, ; kvzip",
            "kvzip+snapkv; at most one evicting policy; kvzip",
            "compactor:blend=-1; blend=-1 must be in [0, ; compactor",
            "knorm:merge=4; knorm has no key 'merge'; knorm",
            "snapkv:critical=0.5,chunk=4; critical and chunk exclude each other; snapkv",
            "snapkv:critical=2; critical=2 must be in [0, 1]; snapkv",
            "h2o:once=yes; once=yes is not one of true, false; h2o",
            "duo:heads=2; heads=2 must be in [0, 1]; duo",
            "snapkv:once=true; snapkv has no key 'once'; snapkv",
            "cur:type=both; type=both is not one of kv_product, key, value, kv_avg; cur",
            "h2o:merge=0; merge=0 must be in [1, ; h2o",
            "tidal+quest; at most one evicting policy; selecting",
            "h2o+; empty policy; h2o",
            "full:x=1; full has no key 'x' (valid: none); full"})
    void badSpecsGiveOneLineErrorsNamingTheProblem(String spec, String expected, String alsoMentioned) {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> KvPolicies.parse(spec, CONFIG));
        String m = e.getMessage();
        assertFalse(m.contains("\n"), "one line: " + m);
        assertTrue(m.contains(expected), m);
        assertTrue(m.contains(alsoMentioned), m);
        assertTrue(m.contains(spec.trim()) || spec.isBlank(), "names the spec: " + m);
    }

    @Test
    void configDependentChecksWaitForTheModel() {
        assertDoesNotThrow(() -> KvPolicies.parse("tidal:full_layers=40,reselect=50", null));
        assertThrows(IllegalArgumentException.class, () -> KvPolicies.parse("tidal:full_layers=40,reselect=50", CONFIG));
        assertDoesNotThrow(() -> KvPolicies.parse("tidal:full_layers=40", CONFIG), "a model too shallow for sparse layers stays dense");
        assertThrows(IllegalArgumentException.class, () -> KvPolicies.parse("", null));
    }

    @Test
    void combinedPoliciesJoinOneEvictingAndOneSelectingPolicy() {
        KvPolicy p = KvPolicies.parse("window:sink=2,recent=64+tidal:k=16", CONFIG);
        CompositePolicy c = assertInstanceOf(CompositePolicy.class, p);
        assertEquals(2, c.parts().size());
        assertInstanceOf(TidalPolicy.class, c.parts().get(1));
        assertSame(KvPolicy.FULL, KvPolicies.parse("full+full", CONFIG));
        assertInstanceOf(H2OPolicy.class, KvPolicies.parse("full+h2o", CONFIG));
    }

    @Test
    void benchListsSplitOnPolicyNames() {
        assertEquals(List.of("full", "window:sink=4,budget=256", "h2o:budget=0.2,recent=0.5", "tidal"),
                KvPolicies.splitList("full,window:sink=4,budget=256,h2o:budget=0.2,recent=0.5,tidal"));
        assertEquals(List.of("h2o:budget=64+tidal:k=8,reselect=3"), KvPolicies.splitList("h2o:budget=64+tidal:k=8,reselect=3"));
        assertThrows(IllegalArgumentException.class, () -> KvPolicies.splitList("full,,h2o"));
    }

    @Test
    void helpListsEveryPolicyWithItsParametersAndDefaults() {
        String help = KvPolicies.help();
        assertEquals(List.of("full", "window", "h2o", "a2sf", "tova", "snapkv", "pyramidkv", "kvzip", "compactor", "keyformer", "knorm", "keydiff", "lagkv", "leverage", "cur", "simlayerkv", "duo", "random", "expected", "tidal", "quest",
                        "tokenselect", "razor"),
                KvPolicies.names());
        for (String name : KvPolicies.names()) assertTrue(help.contains("\n" + name + " "), name);
        for (String param : new String[]{"sink", "recent", "budget", "alpha", "window", "kernel", "pool", "tau_init", "tau_end",
                "k ", "full_layers", "reselect", "page", "init", "local", "reuse", "heads", "echo", "probe"})
            assertTrue(help.contains("    " + param), param);
        assertTrue(help.contains("0.15"));
        assertTrue(help.contains("ratio"));
    }

    @ParameterizedTest
    @ValueSource(strings = {"window", "h2o", "a2sf", "snapkv", "keyformer", "tidal", "quest", "tokenselect", "razor"})
    void aPolicyMustBeInstalledBeforeUse(String name) {
        KvPolicy p = KvPolicies.parse(name, CONFIG);
        IllegalStateException e = assertThrows(IllegalStateException.class, () -> p.beforeAppend(new KvCache(1, 1, 1, 4) {
            @Override
            public long bytes() { return 0; }
        }, new int[]{0}, 1));
        assertTrue(e.getMessage().contains("setPolicy"), e.getMessage());
    }
}
