#!/usr/bin/env python3
"""Build tiny random Llama-family checkpoints and Hugging Face reference outputs for them.

For every model in MODELS this writes two variants, ``<name>-f32`` and ``<name>-bf16``, under ``--out``
(default ``tests/fixtures/hf``). Each variant directory holds an HF-format checkpoint (``config.json``,
``generation_config.json``, ``model.safetensors``) plus ``reference.safetensors`` / ``reference.json`` with
the logits and greedy continuations that ``transformers`` computes for fixed token sequences.

The bf16 variant stores the f32 weights rounded to bf16; its reference outputs come from those bf16 weights
upcast to f32 and run with f32 math (what the Java engine does with bf16 checkpoints).

Everything runs on the CPU in float32 with eager attention; it takes seconds. Needs torch, transformers (5.x),
safetensors. No network, no tokenizer.
"""

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import safetensors  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

FORMAT_VERSION = 1
SEQ_LENGTHS = (7, 33)
GREEDY_NEW_TOKENS = 16
INIT_STD = 0.02          # every Linear / Embedding weight ...
QK_INIT_STD = 0.1        # ... except q_proj / k_proj, so attention is far from uniform and RoPE errors show
NORM_JITTER_STD = 0.1    # RMSNorm weights = 1 + N(0, 0.1)
BIAS_STD = 0.1           # q/k/v biases (Qwen2)
TOKEN_SEED_BASE = 10_000

# config dicts are written the way published checkpoints spell them (rope_theta / rope_scaling at top level)
MODELS = [
    {
        "name": "llama-gqa",
        "config_cls": LlamaConfig,
        "model_cls": LlamaForCausalLM,
        "seed": 1001,
        "config": {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": 320,
            "hidden_size": 64,
            "intermediate_size": 160,
            "num_hidden_layers": 3,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "hidden_act": "silu",
            "max_position_embeddings": 256,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            # original_max_position_embeddings 64 puts one frequency of head_dim 16 (wavelength ~32.6) in the
            # smooth band (16, 64), one below it and six above it: all three llama3 branches are exercised.
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            "tie_word_embeddings": True,
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
    },
    {
        "name": "qwen2-bias",
        "config_cls": Qwen2Config,
        "model_cls": Qwen2ForCausalLM,
        "seed": 2002,
        "config": {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "vocab_size": 300,
            "hidden_size": 64,
            "intermediate_size": 176,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "hidden_act": "silu",
            "max_position_embeddings": 256,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "rope_scaling": None,
            "tie_word_embeddings": False,
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": 2,
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
    },
    {
        "name": "qwen3-qknorm",
        "config_cls": Qwen3Config,
        "model_cls": Qwen3ForCausalLM,
        "seed": 4004,
        "config": {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "vocab_size": 300,
            "hidden_size": 64,
            "intermediate_size": 160,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "hidden_act": "silu",
            "max_position_embeddings": 256,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "rope_scaling": None,
            "tie_word_embeddings": True,
            "attention_bias": False,
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": 2,
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
    },
    {
        "name": "qwen2-yarn",
        "config_cls": Qwen2Config,
        "model_cls": Qwen2ForCausalLM,
        "seed": 5005,
        "config": {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "vocab_size": 300,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "hidden_act": "silu",
            "max_position_embeddings": 256,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            # Qwen2.5's long-context setting (factor 4 over the original context), scaled down: with head_dim 32
            # and original 64 positions the ramp keeps the fastest frequencies, interpolates the slowest and
            # blends four between; cos and sin carry the attention factor 0.1 ln 4 + 1
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            "tie_word_embeddings": False,
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": 2,
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
    },
    {
        "name": "mistral-mha",
        "config_cls": MistralConfig,
        "model_cls": MistralForCausalLM,
        "seed": 3003,
        "config": {
            "architectures": ["MistralForCausalLM"],
            "model_type": "mistral",
            "vocab_size": 280,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "head_dim": 32,
            "hidden_act": "silu",
            "max_position_embeddings": 256,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "rope_scaling": None,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
    },
]


def log(msg):
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# config handling
# ---------------------------------------------------------------------------------------------------------------

def make_config(spec):
    """Build the HF config the way from_pretrained would from a config.json holding spec['config']."""
    d = json.loads(json.dumps(spec["config"]))  # deep copy
    cls = spec["config_cls"]
    try:
        cfg = cls.from_dict(d)
    except Exception as e:  # pragma: no cover - depends on the transformers version
        log(f"  {cls.__name__}.from_dict failed ({e!r}); retrying with the constructor")
        d = json.loads(json.dumps(spec["config"]))
        d.pop("model_type", None)
        cfg = cls(**d)
    try:
        cfg._attn_implementation = "eager"
    except Exception as e:  # pragma: no cover
        log(f"  could not preset eager attention on the config: {e!r}")
    return cfg


def rope_dict(cfg):
    """The effective RoPE parameters of a config, on transformers 5 (rope_parameters) or 4 (rope_theta/rope_scaling)."""
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict) and isinstance(rp.get("full_attention"), dict):
        rp = rp["full_attention"]  # per-layer-type layout
    if isinstance(rp, dict) and rp:
        out = dict(rp)
    else:
        rs = getattr(cfg, "rope_scaling", None)
        out = dict(rs) if isinstance(rs, dict) else {}
    if out.get("rope_theta") is None:
        out["rope_theta"] = getattr(cfg, "rope_theta", None)
    out.setdefault("rope_type", out.get("type", "default"))
    return out


def check_config(cfg, spec):
    """Compare the HF config with the spec. Wrong shapes are fatal; RoPE / window differences are returned as
    warnings (the fixtures then still show what transformers computes, and reference.json records the problem)."""
    want = spec["config"]
    problems = []
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings"):
        if getattr(cfg, key, None) != want[key]:
            problems.append(f"{key}={getattr(cfg, key, None)!r} (wanted {want[key]!r})")
    if abs(float(cfg.rms_norm_eps) - want["rms_norm_eps"]) > 1e-12:
        problems.append(f"rms_norm_eps={cfg.rms_norm_eps!r}")
    head_dim = want.get("head_dim", want["hidden_size"] // want["num_attention_heads"])
    got_hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if got_hd != head_dim:
        problems.append(f"head_dim={got_hd} (wanted {head_dim})")
    if problems:
        raise RuntimeError(f"{spec['name']}: config mismatch: " + "; ".join(problems))
    rd = rope_dict(cfg)
    if rd.get("rope_theta") is None or abs(float(rd["rope_theta"]) - want["rope_theta"]) > 1e-6:
        problems.append(f"rope_theta={rd.get('rope_theta')!r}")
    ws = want.get("rope_scaling")
    if ws:
        if rd.get("rope_type") != ws["rope_type"]:
            problems.append(f"rope_type={rd.get('rope_type')!r}")
        keys = ("factor", "original_max_position_embeddings") if ws["rope_type"] == "yarn" else \
            ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        for k in keys:
            if rd.get(k) is None or abs(float(rd[k]) - float(ws[k])) > 1e-9:
                problems.append(f"rope {k}={rd.get(k)!r} (wanted {ws[k]!r})")
    elif rd.get("rope_type", "default") != "default":
        problems.append(f"unexpected rope_type={rd.get('rope_type')!r}")
    if getattr(cfg, "sliding_window", None) not in (None, 0):
        problems.append(f"sliding_window={cfg.sliding_window!r} (wanted none)")
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is not None and any(t != "full_attention" for t in layer_types):
        problems.append(f"layer_types={layer_types!r}")
    for p in problems:
        log(f"  WARNING: {spec['name']}: config differs from the spec: {p}")
    return head_dim, problems


def write_config_json(cfg, out_dir, weights_dtype, spec):
    """config.json as transformers writes it, plus the legacy top-level keys published checkpoints carry.

    transformers 5 folds rope_theta / rope_scaling into rope_parameters; the legacy keys are added (when absent)
    with the same values so readers of either spelling agree. Returns the list of keys added.
    """
    path = os.path.join(out_dir, "config.json")
    try:
        cfg.save_pretrained(out_dir)
    except Exception as e:  # pragma: no cover
        log(f"  config.save_pretrained failed ({e!r}); writing to_json_file(use_diff=False)")
        try:
            cfg.to_json_file(path, use_diff=False)
        except Exception as e2:
            log(f"  config.to_json_file failed too ({e2!r}); writing the spec's config dict by hand")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(dict(spec["config"], transformers_version=transformers.__version__), f, indent=2)
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    added = []
    want = spec["config"]
    rp = d.get("rope_parameters")
    if "rope_theta" not in d:
        theta = rp.get("rope_theta") if isinstance(rp, dict) and rp.get("rope_theta") is not None else want["rope_theta"]
        d["rope_theta"] = float(theta)
        added.append("rope_theta")
    if "rope_scaling" not in d:
        if isinstance(rp, dict) and rp.get("rope_type", "default") != "default":
            d["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
        else:
            d["rope_scaling"] = want.get("rope_scaling")
        added.append("rope_scaling")
    for k, v in want.items():
        if k not in d and k not in ("rope_theta", "rope_scaling"):
            d[k] = v
            added.append(k)
    d["dtype"] = weights_dtype
    if "torch_dtype" in d:
        d["torch_dtype"] = weights_dtype
    with open(path, "w", encoding="utf-8") as f:
        json.dump(d, f, indent=2, sort_keys=True)
        f.write("\n")
    return added, d


def write_generation_config(out_dir, spec):
    want = spec["config"]
    d = {
        "_from_model_config": True,
        "bos_token_id": want["bos_token_id"],
        "eos_token_id": want["eos_token_id"],
        "transformers_version": transformers.__version__,
    }
    with open(os.path.join(out_dir, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump(d, f, indent=2, sort_keys=True)
        f.write("\n")


# ---------------------------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------------------------

def ensure_tied(model, tied):
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    if not tied:
        if head.data_ptr() == emb.data_ptr():
            raise RuntimeError("lm_head shares the embedding although tie_word_embeddings is false")
        return
    if head.data_ptr() != emb.data_ptr():
        log("  lm_head is not tied after construction; calling tie_weights()")
        model.tie_weights()
        head = model.get_output_embeddings().weight
    if head.data_ptr() != emb.data_ptr():
        log("  tie_weights() did not tie; sharing the Parameter by hand")
        model.get_output_embeddings().weight = model.get_input_embeddings().weight


def init_weights(model, seed):
    """Deterministic re-initialisation of every parameter (shared parameters are visited once)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if p.ndim == 1 and name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * BIAS_STD)
            elif p.ndim == 1:
                p.copy_(1.0 + torch.randn(p.shape, generator=g, dtype=torch.float32) * NORM_JITTER_STD)
            elif name.endswith("q_proj.weight") or name.endswith("k_proj.weight"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * QK_INIT_STD)
            else:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * INIT_STD)


def export_state_dict(model, tied):
    """HF tensor names -> contiguous f32 copies; the tied lm_head is left out, as transformers does."""
    out = {}
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        if not torch.is_floating_point(t) or not (name.endswith(".weight") or name.endswith(".bias")):
            continue  # parameters only (no buffers such as rotary tables)
        out[name] = t.detach().to(torch.float32).clone().contiguous()
    return out


def round_model_to_bf16(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


# ---------------------------------------------------------------------------------------------------------------
# independent re-implementation (float64) used only to cross-check the HF outputs
# ---------------------------------------------------------------------------------------------------------------

def expected_inv_freq(want, head_dim):
    """RoPE inverse frequencies computed independently (float64, then rounded), llama3 scaling included."""
    theta = want["rope_theta"]
    inv = [1.0 / (theta ** ((2.0 * i) / head_dim)) for i in range(head_dim // 2)]
    rs = want.get("rope_scaling")
    if rs and rs.get("rope_type") == "llama3":
        old = rs["original_max_position_embeddings"]
        lo, hi, factor = rs["low_freq_factor"], rs["high_freq_factor"], rs["factor"]
        low_wl, high_wl = old / lo, old / hi
        out = []
        for f in inv:
            wl = 2 * math.pi / f
            if wl < high_wl:
                out.append(f)
            elif wl > low_wl:
                out.append(f / factor)
            else:
                s = (old / wl - lo) / (hi - lo)
                out.append((1 - s) * f / factor + s * f)
        inv = out
    if rs and rs.get("rope_type") == "yarn":  # YaRN: a ramp between extrapolated and interpolated frequencies
        factor = rs["factor"]
        old = rs.get("original_max_position_embeddings", want["max_position_embeddings"])
        fast, slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1

        def corr(rot):
            return head_dim * math.log(old / (rot * 2 * math.pi)) / (2 * math.log(theta))

        lo, hi = max(math.floor(corr(fast)), 0), min(math.ceil(corr(slow)), head_dim - 1)
        if lo == hi:
            hi += 0.001
        out = []
        for i, f in enumerate(inv):
            keep = 1 - min(1.0, max(0.0, (i - lo) / (hi - lo)))
            out.append(f / factor * (1 - keep) + f * keep)
        inv = out
    return torch.tensor(inv, dtype=torch.float64)


def expected_attention_scale(want):
    """YaRN's factor on cos and sin (attention_factor, else 0.1 ln(factor) + 1); 1 without YaRN."""
    rs = want.get("rope_scaling")
    if not rs or rs.get("rope_type") != "yarn":
        return 1.0
    if rs.get("attention_factor") is not None:
        return float(rs["attention_factor"])
    return 0.1 * math.log(rs["factor"]) + 1.0 if rs["factor"] > 1 else 1.0


def rope_branches(want, head_dim):
    rs = want.get("rope_scaling")
    if not rs or rs.get("rope_type") != "llama3":
        return None
    theta = want["rope_theta"]
    old = rs["original_max_position_embeddings"]
    low_wl, high_wl = old / rs["low_freq_factor"], old / rs["high_freq_factor"]
    out = []
    for i in range(head_dim // 2):
        wl = 2 * math.pi * theta ** ((2.0 * i) / head_dim)
        out.append("high(kept)" if wl < high_wl else "low(scaled)" if wl > low_wl else "smooth")
    return out


def reference_forward(w, want, head_dim, inv_freq, ids, dtype=torch.float64, attn_scale=1.0):
    """Plain re-implementation of the Llama/Qwen2/Qwen3/Mistral decoder. ids: [T] long. Returns (logits [T,V], resid)."""
    H = want["num_attention_heads"]
    Hkv = want["num_key_value_heads"]
    L = want["num_hidden_layers"]
    eps = want["rms_norm_eps"]
    G = H // Hkv
    T = ids.shape[0]

    def W(name):
        return w[name].to(dtype)

    def rms(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    def rot_half(x):
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    def lin(x, prefix):
        y = x @ W(prefix + ".weight").T
        if (prefix + ".bias") in w:
            y = y + W(prefix + ".bias")
        return y

    pos = torch.arange(T, dtype=dtype)
    freqs = pos[:, None] * inv_freq.to(dtype)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos() * attn_scale, emb.sin() * attn_scale
    causal = torch.ones(T, T, dtype=torch.bool).tril()

    x = W("model.embed_tokens.weight")[ids]
    resid = [x.clone()]
    for layer in range(L):
        p = f"model.layers.{layer}."
        h = rms(x, W(p + "input_layernorm.weight"))
        q = lin(h, p + "self_attn.q_proj").view(T, H, head_dim).transpose(0, 1)
        k = lin(h, p + "self_attn.k_proj").view(T, Hkv, head_dim).transpose(0, 1)
        v = lin(h, p + "self_attn.v_proj").view(T, Hkv, head_dim).transpose(0, 1)
        if (p + "self_attn.q_norm.weight") in w:  # Qwen3: per-head RMSNorm of q and k before RoPE
            q = rms(q, W(p + "self_attn.q_norm.weight"))
            k = rms(k, W(p + "self_attn.k_norm.weight"))
        q = q * cos + rot_half(q) * sin
        k = k * cos + rot_half(k) * sin
        k = k.repeat_interleave(G, dim=0)
        v = v.repeat_interleave(G, dim=0)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
        s = s.masked_fill(~causal, float("-inf"))
        o = torch.softmax(s, dim=-1) @ v
        o = o.transpose(0, 1).reshape(T, H * head_dim)
        x = x + lin(o, p + "self_attn.o_proj")
        h = rms(x, W(p + "post_attention_layernorm.weight"))
        g = lin(h, p + "mlp.gate_proj")
        u = lin(h, p + "mlp.up_proj")
        x = x + lin(torch.nn.functional.silu(g) * u, p + "mlp.down_proj")
        resid.append(x.clone())
    x = rms(x, W("model.norm.weight"))
    head = W("lm_head.weight") if "lm_head.weight" in w else W("model.embed_tokens.weight")
    return x @ head.T, torch.stack(resid)


# ---------------------------------------------------------------------------------------------------------------
# HF outputs
# ---------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def hf_logits(model, ids):
    out = model(input_ids=ids[None, :], use_cache=False)
    return out.logits[0].to(torch.float32)


@torch.no_grad()
def hf_greedy(model, ids, n):
    """n greedy tokens by repeated full forward passes (no cache, EOS ignored); also the top-1/top-2 margins."""
    seq = ids.clone()
    toks, margins = [], []
    for _ in range(n):
        last = hf_logits(model, seq)[-1]
        nxt = int(torch.argmax(last).item())
        top2 = torch.topk(last, 2).values
        toks.append(nxt)
        margins.append(float(top2[0] - top2[1]))
        seq = torch.cat([seq, torch.tensor([nxt], dtype=seq.dtype)])
    return torch.tensor(toks, dtype=torch.int64), torch.tensor(margins, dtype=torch.float32)


def load_pretrained(model_cls, path):
    kwargs = dict(attn_implementation="eager")
    try:
        m = model_cls.from_pretrained(path, dtype=torch.float32, **kwargs)
    except TypeError:
        m = model_cls.from_pretrained(path, torch_dtype=torch.float32, **kwargs)
    m.eval()
    return m


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------

def build_model(spec):
    want = spec["config"]
    cfg = make_config(spec)
    head_dim, cfg_problems = check_config(cfg, spec)
    torch.manual_seed(spec["seed"])
    model = spec["model_cls"](cfg)
    model.to(torch.float32)
    model.eval()
    try:
        if getattr(model.config, "_attn_implementation", None) != "eager" and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")
    except Exception as e:  # pragma: no cover
        log(f"  set_attn_implementation('eager') failed: {e!r}")
    ensure_tied(model, want["tie_word_embeddings"])
    init_weights(model, spec["seed"])
    return cfg, model, head_dim, cfg_problems


def hf_inv_freq(model):
    rot = getattr(getattr(model, "model", None), "rotary_emb", None)
    t = getattr(rot, "inv_freq", None) if rot is not None else None
    return None if t is None else t.detach().to(torch.float32).clone()


def run_model(spec, out_root):
    name = spec["name"]
    want = spec["config"]
    log(f"== {name}")
    t0 = time.time()
    cfg, model, head_dim, cfg_problems = build_model(spec)
    attn_impl = getattr(model.config, "_attn_implementation", None)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"  {spec['model_cls'].__name__}: {n_params} parameters, head_dim {head_dim}, attention {attn_impl}")

    inv_exp = expected_inv_freq(want, head_dim)
    inv_hf = hf_inv_freq(model)
    if inv_hf is None:
        log("  WARNING: model.model.rotary_emb.inv_freq not found; using the independent inv_freq")
        inv_hf = inv_exp.to(torch.float32)
        inv_check = {"ok": None, "note": "HF inv_freq buffer not found"}
    elif inv_hf.shape != inv_exp.shape:
        log(f"  WARNING: HF inv_freq has shape {tuple(inv_hf.shape)}, expected ({head_dim // 2},)")
        inv_check = {"ok": False, "note": f"HF inv_freq shape {tuple(inv_hf.shape)} != ({head_dim // 2},)"}
        inv_hf = inv_exp.to(torch.float32)
    else:
        rel = float(((inv_hf.double() - inv_exp).abs() / inv_exp.abs()).max())
        inv_check = {"ok": rel < 1e-5, "max_rel_diff_vs_independent": rel}
        log(f"  rope inv_freq vs independent llama3/yarn/default formula: max rel diff {rel:.3e}")
        if rel >= 1e-5:
            log("  WARNING: HF inv_freq differs from the independent computation")

    seqs = []
    for s, length in enumerate(SEQ_LENGTHS):
        g = torch.Generator().manual_seed(TOKEN_SEED_BASE + spec["seed"] + s)
        seqs.append(torch.randint(0, want["vocab_size"], (length,), generator=g, dtype=torch.int64))

    results = {}
    for variant in ("f32", "bf16"):
        vdir = os.path.join(out_root, f"{name}-{variant}")
        if os.path.isdir(vdir):
            shutil.rmtree(vdir)
        os.makedirs(vdir)
        if variant == "bf16":
            round_model_to_bf16(model)
        sd = export_state_dict(model, want["tie_word_embeddings"])
        file_dtype = torch.float32 if variant == "f32" else torch.bfloat16
        file_sd = {k: v.to(file_dtype).contiguous() for k, v in sd.items()}
        save_file(file_sd, os.path.join(vdir, "model.safetensors"), metadata={"format": "pt"})
        added, cfg_json = write_config_json(cfg, vdir, "float32" if variant == "f32" else "bfloat16", spec)
        write_generation_config(vdir, spec)

        ref = {"rope_inv_freq": inv_hf.contiguous()}
        seq_meta = []
        checks = {"inv_freq": inv_check,
                  "config": {"ok": not cfg_problems, "problems": cfg_problems}}
        max_indep = 0.0
        for s, ids in enumerate(seqs):
            logits = hf_logits(model, ids)
            greedy, margins = hf_greedy(model, ids, GREEDY_NEW_TOKENS)
            ind_logits, resid = reference_forward(sd, want, head_dim, inv_hf.double(), ids,
                                                  attn_scale=expected_attention_scale(want))
            d_ind = float((ind_logits - logits.double()).abs().max())
            max_indep = max(max_indep, d_ind)
            ref[f"tokens_{s}"] = ids.contiguous()
            ref[f"logits_{s}"] = logits.contiguous()
            ref[f"greedy_{s}"] = greedy.contiguous()
            ref[f"greedy_margin_{s}"] = margins.contiguous()
            ref[f"residual_{s}"] = resid.to(torch.float32).contiguous()
            seq_meta.append({
                "index": s,
                "length": int(ids.numel()),
                "token_seed": TOKEN_SEED_BASE + spec["seed"] + s,
                "tokens": [int(t) for t in ids.tolist()],
                "greedy": [int(t) for t in greedy.tolist()],
                "greedy_margin": [round(float(m), 7) for m in margins.tolist()],
                "greedy_min_margin": float(margins.min()),
                "greedy_contains_eos": bool((greedy == want["eos_token_id"]).any()),
                "logits_abs_max": float(logits.abs().max()),
                "logits_std": float(logits.std()),
            })
        checks["independent_forward"] = {"ok": max_indep < 1e-4, "max_abs_logit_diff": max_indep}
        log(f"  [{variant}] independent float64 forward vs HF logits: max abs diff {max_indep:.3e}")
        if max_indep >= 1e-4:
            log(f"  WARNING [{variant}]: independent forward disagrees with HF")

        # reload the written checkpoint through transformers and compare
        try:
            m2 = load_pretrained(spec["model_cls"], vdir)
            d_rel = 0.0
            for s, ids in enumerate(seqs):
                d_rel = max(d_rel, float((hf_logits(m2, ids) - ref[f"logits_{s}"]).abs().max()))
            dtype_ok = all(p.dtype == torch.float32 for p in m2.parameters())
            checks["reload"] = {"ok": d_rel < 1e-5 and dtype_ok, "max_abs_logit_diff": d_rel,
                                "params_float32": dtype_ok,
                                "attn_implementation": getattr(m2.config, "_attn_implementation", None)}
            log(f"  [{variant}] from_pretrained(written dir) vs reference logits: max abs diff {d_rel:.3e}")
            if not checks["reload"]["ok"]:
                log(f"  WARNING [{variant}]: the written checkpoint does not reproduce the reference through transformers")
            del m2
        except Exception as e:
            checks["reload"] = {"ok": False, "error": repr(e)}
            log(f"  WARNING [{variant}]: reloading the written checkpoint failed: {e!r}")
            traceback.print_exc()

        meta = {"format_version": FORMAT_VERSION, "model": name, "variant": variant,
                "architecture": want["architectures"][0], "weights_dtype": "float32" if variant == "f32" else "bfloat16",
                "reference_compute": "float32 on CPU, eager attention, weights upcast to float32" if variant == "bf16"
                else "float32 on CPU, eager attention",
                "bf16_note": "weights = the f32 variant's weights rounded to bf16 (round-to-nearest-even)"
                if variant == "bf16" else None,
                "head_dim": head_dim, "num_parameters": n_params,
                "greedy_new_tokens": GREEDY_NEW_TOKENS,
                "greedy_method": "argmax of the last position of a full forward pass per step; EOS is not a stop",
                "init": {"seed": spec["seed"], "std": INIT_STD, "q_k_proj_std": QK_INIT_STD,
                         "norm": f"1 + N(0, {NORM_JITTER_STD})", "bias_std": BIAS_STD,
                         "torch_manual_seed": spec["seed"]},
                "rope": {"inv_freq_source": "model.model.rotary_emb.inv_freq",
                         "llama3_branches": rope_branches(want, head_dim)},
                "tensors": {
                    "tokens_<s>": "int64 [len] input ids",
                    "logits_<s>": "float32 [len, vocab] logits at every position",
                    "greedy_<s>": f"int64 [{GREEDY_NEW_TOKENS}] greedy continuation of the whole sequence",
                    "greedy_margin_<s>": f"float32 [{GREEDY_NEW_TOKENS}] top1 - top2 logit at each greedy step",
                    "residual_<s>": "float32 [layers+1, len, hidden] residual stream after the embedding and after "
                                    "each decoder layer (before the final norm), from the float64 re-implementation",
                    "rope_inv_freq": "float32 [head_dim/2] inverse frequencies HF used (scaling applied)",
                },
                "sequences": seq_meta,
                "checks": checks,
                "config_keys_added_to_hf_output": added,
                "files": {},
                "versions": versions()}
        save_file(ref, os.path.join(vdir, "reference.safetensors"), metadata={"format": "pt"})
        for fn in sorted(os.listdir(vdir)):
            if fn != "reference.json":
                meta["files"][fn] = {"bytes": os.path.getsize(os.path.join(vdir, fn)),
                                     "sha256": sha256(os.path.join(vdir, fn))}
        with open(os.path.join(vdir, "reference.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
        ok = all(c.get("ok") is not False for c in checks.values())
        results[variant] = ok
        log(f"  [{variant}] wrote {vdir} ({'checks ok' if ok else 'CHECKS FAILED'}); "
            f"greedy_0={seq_meta[0]['greedy'][:8]}... min margin "
            f"{min(sm['greedy_min_margin'] for sm in seq_meta):.2e}")
    log(f"  {name} done in {time.time() - t0:.1f}s")
    return results


def versions():
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "safetensors": safetensors.__version__}


README = """# Hugging Face reference fixtures

Tiny random-weight checkpoints in Hugging Face format, with the outputs `transformers` computes for them.
Tests load a checkpoint with the Java engine and compare against `reference.safetensors`.

Generated by `scripts/hf_reference.py` (see `scripts/README.md`); do not edit by hand. Regenerate with

    python3 scripts/hf_reference.py --out tests/fixtures/hf

on any machine with torch, transformers 5.x and safetensors (CPU only, a few seconds), or as part of
`bash scripts/gpu-oracle.sh OUT`. Weights and token ids come from fixed seeds; the logits can move in the
last bits between torch versions.

## Models

| directory | architecture | shapes | what it exercises |
| --- | --- | --- | --- |
| `llama-gqa-{f32,bf16}` | LlamaForCausalLM | D 64, F 160, 3 layers, 8 heads / 2 KV (GQA 4), head_dim 16 (explicit, != D/H), vocab 320 | llama3 rope_scaling (factor 8, low 1, high 4, original 64: kept, smooth and scaled frequencies), rope_theta 5e5, tied embeddings (no `lm_head.weight` in the file) |
| `qwen2-bias-{f32,bf16}` | Qwen2ForCausalLM | D 64, F 176, 2 layers, 4 heads / 2 KV (GQA 2), head_dim 16, vocab 300 | q/k/v biases, rope_theta 1e6, untied head, eps 1e-6 |
| `mistral-mha-{f32,bf16}` | MistralForCausalLM | D 64, F 128, 2 layers, 4 heads / 4 KV (MHA), head_dim 32 (explicit, H*hd = 128 != D), vocab 280 | explicit head_dim wider than D/H, no sliding window, untied head |
| `qwen2-yarn-{f32,bf16}` | Qwen2ForCausalLM | D 64, F 128, 2 layers, 4 heads / 2 KV (GQA 2), head_dim 32, vocab 300 | YaRN rope_scaling (factor 4 over an original 64 positions: kept, blended and interpolated frequencies; cos/sin times 0.1 ln 4 + 1), biases, untied head |
| `qwen3-qknorm-{f32,bf16}` | Qwen3ForCausalLM | D 64, F 160, 2 layers, 4 heads / 2 KV (GQA 2), head_dim 32 (explicit, H*hd = 128 != D), vocab 300 | per-head q_norm / k_norm before RoPE, no biases, rope_theta 1e6, tied embeddings, eps 1e-6 |

Initialisation: Linear/Embedding weights N(0, 0.02) except q_proj/k_proj N(0, 0.1) (so attention is not
uniform and position errors show), RMSNorm weights 1 + N(0, 0.1), biases N(0, 0.1).

`lora-llama-gqa/` (made by `scripts/lora_reference.py` with PEFT): a LoRA adapter for `llama-gqa-f32` (rank 4,
alpha 8, on q_proj, v_proj and down_proj, random A and B from seed 7007) as PEFT saves it, and `reference.safetensors`
with `tokens_0` and the logits transformers computes with the adapter active (`logits_0`).

## Files in each directory

- `config.json`: written by `transformers` (`config.save_pretrained`); transformers 5 folds RoPE settings into
  `rope_parameters`, so the top-level `rope_theta` / `rope_scaling` keys of published checkpoints are added with
  the same values (`reference.json` lists the added keys under `config_keys_added_to_hf_output`); `dtype` is
  the dtype of the stored weights. The script reloads every written directory with `from_pretrained` and checks
  that it reproduces the reference logits.
- `generation_config.json`, `model.safetensors` (HF tensor names; F32 or BF16).
- `reference.safetensors`:
  - `tokens_0` (7) and `tokens_1` (33): int64 input ids, random in [0, vocab);
  - `logits_<s>`: float32 [len, vocab], HF logits at every position (eager attention, float32 math on CPU;
    the bf16 variant runs its bf16 weights upcast to float32);
  - `greedy_<s>`: int64 [16], greedy continuation of the whole sequence by full re-forward per step; EOS
    (id 2) does not stop it;
  - `greedy_margin_<s>`: float32 [16], top-1 minus top-2 logit at each greedy step (skip steps whose margin is
    below your tolerance);
  - `residual_<s>`: float32 [layers+1, len, hidden], the residual stream after the embedding and after each
    decoder layer, before the final norm (from an independent float64 re-implementation that matches the HF
    logits; `checks.independent_forward` in `reference.json`), for localising a mismatch;
  - `rope_inv_freq`: float32 [head_dim/2], the inverse frequencies HF used, scaling applied.
- `reference.json`: the same ids, greedy tokens and margins as JSON, seeds, versions, file hashes, checks.

Sequence positions start at 0; no BOS is prepended. Suggested tolerances: f32 logits within ~1e-4 absolute,
bf16 variant within ~1e-4 too (same f32 math on the rounded weights).
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/hf", help="output directory (default tests/fixtures/hf)")
    ap.add_argument("--only", default=None, help="comma-separated model names to build (default: all)")
    args = ap.parse_args()

    t0 = time.time()
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    log(f"hf_reference: python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, safetensors {safetensors.__version__}")
    os.makedirs(args.out, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    failures = []
    for spec in MODELS:
        if only and spec["name"] not in only:
            continue
        try:
            res = run_model(spec, args.out)
            for variant, ok in res.items():
                if not ok:
                    failures.append(f"{spec['name']}-{variant} (checks)")
        except Exception as e:
            log(f"ERROR building {spec['name']}: {e!r}")
            traceback.print_exc()
            sys.stdout.flush()
            failures.append(f"{spec['name']} ({e!r})")
    with open(os.path.join(args.out, "VERSION"), "w", encoding="utf-8") as f:
        f.write(f"{FORMAT_VERSION}\n")
    with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as f:
        f.write(README)
    log(f"hf_reference: done in {time.time() - t0:.1f}s; "
        + ("all checks passed" if not failures else "PROBLEMS: " + ", ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
