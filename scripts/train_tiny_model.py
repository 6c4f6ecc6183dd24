#!/usr/bin/env python3
"""Train tokenpress-tiny, the small Llama-architecture model tokenpress embeds as its default model.

Runs offline on one GPU in a bounded wall-clock time:
  1. corpus: the *.py files of this machine's Python installation (torch's site-packages and the stdlib),
     ordered by md5 of their path, deduplicated by content, capped at --corpus-mb; ~2% of files (md5(path) % 50
     == 0) are held out for validation;
  2. tokenizer: byte-level BPE (tokenizers library), vocab 4096, <|begin_of_text|> / <|end_of_text|>, a
     post-processor that prepends BOS like Llama 3;
  3. model: LlamaForCausalLM, hidden 256, 6 layers, 8 heads / 2 KV heads, head_dim 32, FFN 768, tied
     embeddings (~5.6M parameters), trained with AdamW + bf16 autocast for --minutes of wall time;
  4. evaluation on held-out files: perplexity with the full context and with a 64-token sliding window;
  5. output in --out: config.json, model.safetensors (bf16), tokenizer.json, tokenizer_config.json,
     generation_config.json, samples.json, train_metrics.json, TRAINING.md.
"""

import time

T_START = time.time()

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
import traceback  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import safetensors  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
import tokenizers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
import transformers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
MAX_MINUTES = 5.0

MODEL_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 4096,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 6,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "mlp_bias": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "bos_token_id": 0,
    "eos_token_id": 1,
}

SAMPLE_PROMPTS = [
    "def fibonacci(n):\n",
    "import numpy as np\n\n\n",
    "class Config:\n    def __init__(self",
    "for i in range(10):\n    ",
]
TOKENIZER_PROBES = [
    "def add(a, b):\n    return a + b\n",
    "    if x is None:\n        raise ValueError(\"x must not be None\")\n",
    "import os, sys  # comment with unicode: caf\u00e9 \u2192 \u03bb\n",
    "x = [i ** 2 for i in range(10)]\t\n\n",
]

STOP = {"flag": False, "signal": None}


def on_signal(signum, frame):  # noqa: ARG001
    STOP["flag"] = True
    STOP["signal"] = signum
    print(f"!! received signal {signum}: finishing the current step, then saving", flush=True)


def log(msg):
    print(f"[{time.time() - T_START:7.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------------------------------------------

def md5_hex(s):
    return hashlib.md5(s.encode("utf-8")).hexdigest()


def corpus_roots():
    roots = []
    site = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))
    roots.append(("site-packages", site))
    stdlib = sysconfig.get_paths().get("stdlib")
    if stdlib and os.path.isdir(stdlib) and os.path.realpath(stdlib) != os.path.realpath(site):
        roots.append(("stdlib", stdlib))
    return roots


def list_py_files(roots, min_bytes=200, max_bytes=400_000):
    entries = []
    seen_real = set()
    site_real = {os.path.realpath(r) for _, r in roots}
    for name, root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            keep = []
            for d in sorted(dirnames):
                full = os.path.join(dirpath, d)
                if d == "__pycache__" or d.startswith("."):
                    continue
                if d in ("site-packages", "dist-packages") or (os.path.realpath(full) in site_real):
                    continue  # another root (or a venv inside the stdlib) is walked on its own
                keep.append(d)
            dirnames[:] = keep
            for fn in sorted(filenames):
                if not fn.endswith(".py"):
                    continue
                full = os.path.join(dirpath, fn)
                try:
                    real = os.path.realpath(full)
                    if real in seen_real:
                        continue
                    size = os.path.getsize(full)
                except OSError:
                    continue
                if size < min_bytes or size > max_bytes:
                    continue
                seen_real.add(real)
                rel = name + "/" + os.path.relpath(full, root).replace(os.sep, "/")
                entries.append((rel, full, size))
    return entries


def collect_corpus(roots, cap_bytes, val_mod):
    t0 = time.time()
    entries = list_py_files(roots)
    entries.sort(key=lambda e: md5_hex(e[0]))
    log(f"corpus: {len(entries)} candidate .py files under {[r for _, r in roots]} (listed in {time.time() - t0:.1f}s)")
    train, val = [], []
    stats = {"candidates": len(entries), "skipped_decode": 0, "skipped_special": 0, "skipped_long_line": 0,
             "skipped_duplicate": 0, "read": 0}
    seen = set()
    total = 0
    for rel, full, _size in entries:
        if total >= cap_bytes:
            break
        try:
            with open(full, "rb") as f:
                raw = f.read()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            stats["skipped_decode"] += 1
            continue
        if "\x00" in text:
            stats["skipped_decode"] += 1
            continue
        if BOS in text or EOS in text:
            stats["skipped_special"] += 1
            continue
        text = text.replace("\r\n", "\n")
        if max((len(line) for line in text.split("\n")), default=0) > 1000:
            stats["skipped_long_line"] += 1
            continue
        h = hashlib.md5(raw).digest()
        if h in seen:
            stats["skipped_duplicate"] += 1
            continue
        seen.add(h)
        stats["read"] += 1
        nbytes = len(text.encode("utf-8"))
        total += nbytes
        if int(md5_hex(rel)[:8], 16) % val_mod == 0:
            val.append((rel, text))
        else:
            train.append((rel, text))
    stats["train_files"] = len(train)
    stats["val_files"] = len(val)
    stats["train_bytes"] = sum(len(t.encode("utf-8")) for _, t in train)
    stats["val_bytes"] = sum(len(t.encode("utf-8")) for _, t in val)
    stats["seconds"] = round(time.time() - t0, 2)
    top = {}
    for rel, t in train:
        parts = rel.split("/")
        key = parts[0] + "/" + (parts[1] if len(parts) > 2 else "")
        top[key] = top.get(key, 0) + len(t)
    stats["top_sources"] = sorted(top.items(), key=lambda kv: -kv[1])[:15]
    log(f"corpus: {stats['train_files']} train files ({stats['train_bytes'] / 1e6:.1f} MB), "
        f"{stats['val_files']} validation files ({stats['val_bytes'] / 1e6:.2f} MB) in {stats['seconds']}s; "
        f"skipped {stats['skipped_decode']} undecodable, {stats['skipped_special']} with special tokens, "
        f"{stats['skipped_long_line']} with very long lines, {stats['skipped_duplicate']} duplicates")
    return train, val, stats


# ---------------------------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------------------------

def train_tokenizer(docs, vocab_size, cap_bytes):
    t0 = time.time()
    subset, total = [], 0
    for _, text in docs:
        if total >= cap_bytes:
            break
        subset.append(text)
        total += len(text.encode("utf-8"))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(subset, trainer=trainer, length=len(subset))
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    if bos_id is None or eos_id is None:
        raise RuntimeError("special tokens missing from the trained vocabulary")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B:1",
        special_tokens=[(BOS, bos_id)],
    )
    info = {"train_docs": len(subset), "train_bytes": total, "vocab_size": tok.get_vocab_size(),
            "bos_id": bos_id, "eos_id": eos_id, "seconds": round(time.time() - t0, 2)}
    log(f"tokenizer: BPE vocab {info['vocab_size']} trained on {len(subset)} files ({total / 1e6:.1f} MB) "
        f"in {info['seconds']}s; BOS={bos_id} EOS={eos_id}")
    return tok, info


def encode_docs(tok, docs, bos_id, eos_id, deadline, batch=256):
    enc_fn = getattr(tok, "encode_batch_fast", None)
    parts, n_docs = [], 0
    for i in range(0, len(docs), batch):
        texts = [t for _, t in docs[i:i + batch]]
        encs = None
        if enc_fn is not None:
            try:
                encs = enc_fn(texts, add_special_tokens=False)
            except TypeError:
                enc_fn = None
        if encs is None:
            encs = tok.encode_batch(texts, add_special_tokens=False)
        for e in encs:
            ids = np.asarray(e.ids, dtype=np.int32)
            arr = np.empty(ids.size + 2, dtype=np.int32)
            arr[0] = bos_id
            arr[1:-1] = ids
            arr[-1] = eos_id
            parts.append(arr)
        n_docs += len(texts)
        if time.time() > deadline:
            log(f"encode: time limit reached after {n_docs}/{len(docs)} files")
            break
    if not parts:
        return np.zeros(0, dtype=np.int32), 0
    return np.concatenate(parts), n_docs


# ---------------------------------------------------------------------------------------------------------------
# model helpers
# ---------------------------------------------------------------------------------------------------------------

def make_config(d):
    d = json.loads(json.dumps(d))
    try:
        cfg = LlamaConfig.from_dict(d)
    except Exception as e:  # pragma: no cover - depends on the transformers version
        log(f"LlamaConfig.from_dict failed ({e!r}); retrying with the constructor")
        d.pop("model_type", None)
        cfg = LlamaConfig(**d)
    rp = getattr(cfg, "rope_parameters", None)
    theta = rp.get("rope_theta") if isinstance(rp, dict) and rp.get("rope_theta") is not None \
        else getattr(cfg, "rope_theta", None)
    if theta is None or abs(float(theta) - d["rope_theta"]) > 1e-6:
        raise RuntimeError(f"rope_theta not taken over by the config: {theta!r}")
    if getattr(cfg, "head_dim", None) not in (None, d["head_dim"]):
        raise RuntimeError(f"head_dim not taken over by the config: {cfg.head_dim!r}")
    if cfg.num_key_value_heads != d["num_key_value_heads"] or not cfg.tie_word_embeddings:
        raise RuntimeError("num_key_value_heads / tie_word_embeddings not taken over by the config")
    return cfg


def ensure_tied(model):
    emb = model.get_input_embeddings().weight
    if model.get_output_embeddings().weight.data_ptr() != emb.data_ptr():
        log("lm_head not tied after construction; calling tie_weights()")
        model.tie_weights()
    if model.get_output_embeddings().weight.data_ptr() != emb.data_ptr():
        log("tie_weights() did not tie; sharing the Parameter by hand")
        model.get_output_embeddings().weight = model.get_input_embeddings().weight


def init_weights(model, n_layers, seed, std=0.02):
    """Explicit, deterministic init (not left to the library): N(0, std) for matrices and the embedding,
    N(0, std / sqrt(2 * layers)) for the residual output projections, ones for RMSNorm weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if p.ndim == 1:
                p.fill_(1.0)
            elif name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * (std / math.sqrt(2 * n_layers)))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def export_state_dict(model, dtype):
    out = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to model.embed_tokens.weight
        if not torch.is_floating_point(t) or not name.endswith(".weight"):
            continue  # parameters only (no buffers such as rotary tables)
        out[name] = t.detach().to(dtype).cpu().clone().contiguous()
    return out


def round_model_to_bf16(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(p.dtype))


def write_config_json(cfg, out_dir, d_want):
    path = os.path.join(out_dir, "config.json")
    try:
        cfg.save_pretrained(out_dir)
    except Exception as e:  # pragma: no cover
        log(f"config.save_pretrained failed ({e!r}); writing to_json_file(use_diff=False)")
        try:
            cfg.to_json_file(path, use_diff=False)
        except Exception as e2:
            log(f"config.to_json_file failed too ({e2!r}); writing the config dict by hand")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(dict(d_want, transformers_version=transformers.__version__), f, indent=2, sort_keys=True)
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    added = []
    rp = d.get("rope_parameters")
    if "rope_theta" not in d:
        d["rope_theta"] = float(rp["rope_theta"]) if isinstance(rp, dict) and rp.get("rope_theta") is not None \
            else d_want["rope_theta"]
        added.append("rope_theta")
    if "rope_scaling" not in d:
        d["rope_scaling"] = None
        added.append("rope_scaling")
    for k, v in d_want.items():
        if k not in d and k not in ("rope_theta", "rope_scaling"):
            d[k] = v
            added.append(k)
    d["dtype"] = "bfloat16"
    if "torch_dtype" in d:
        d["torch_dtype"] = "bfloat16"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(d, f, indent=2, sort_keys=True)
        f.write("\n")
    return added


def attention_mask(T, device, window=None, sinks=0):
    """[T, T] bool, True where query i may attend key j: causal, optionally only the last `window` positions
    (i - j < window, the query itself included) plus the first `sinks` positions."""
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    causal = j <= i
    if window is None:
        return causal
    m = causal & ((i - j) < (window - sinks))
    if sinks:
        m = m | (causal & (j < sinks))
    return m


def reference_forward(w, c, ids, inv_freq, mask):
    """Llama forward in float32 from HF-named weights with an explicit [T, T] attention mask. ids: [B, T]."""
    B, T = ids.shape
    H, Hkv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    G = H // Hkv
    eps = c["rms_norm_eps"]

    def rms(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    def rot_half(x):
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    pos = torch.arange(T, device=ids.device, dtype=torch.float32)
    freqs = pos[:, None] * inv_freq.float()[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    neg = torch.zeros(T, T, device=ids.device, dtype=torch.float32).masked_fill(~mask, float("-inf"))

    x = w["model.embed_tokens.weight"][ids]
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = (h @ w[p + "self_attn.q_proj.weight"].T).view(B, T, H, hd).transpose(1, 2)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).view(B, T, Hkv, hd).transpose(1, 2)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(B, T, Hkv, hd).transpose(1, 2)
        q = q * cos + rot_half(q) * sin
        k = k * cos + rot_half(k) * sin
        k = k.repeat_interleave(G, dim=1)
        v = v.repeat_interleave(G, dim=1)
        s = (q @ k.transpose(-1, -2)) * (hd ** -0.5) + neg
        o = torch.softmax(s, dim=-1) @ v
        o = o.transpose(1, 2).reshape(B, T, H * hd)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        x = x + (F.silu(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)) \
            @ w[p + "mlp.down_proj.weight"].T
    x = rms(x, w["model.norm.weight"])
    return x @ w["model.embed_tokens.weight"].T


def position_nll(logits, ids):
    """Summed NLL per target position: [T-1] (targets ids[:, 1:])."""
    V = logits.shape[-1]
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), ids[:, 1:].reshape(-1), reduction="none")
    return nll.view(ids.shape[0], -1).sum(0).double()


@torch.no_grad()
def greedy(model, ids, n, device):
    seq = list(ids)
    out = []
    for _ in range(n):
        x = torch.tensor([seq], dtype=torch.long, device=device)
        nxt = int(model(input_ids=x, use_cache=False).logits[0, -1].float().argmax().item())
        out.append(nxt)
        seq.append(nxt)
    return out


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description="Train the tokenpress-tiny default model (see module docstring).")
    ap.add_argument("--out", default="models/tokenpress-tiny")
    ap.add_argument("--minutes", type=float, default=3.0, help=f"training wall-clock budget (max {MAX_MINUTES})")
    ap.add_argument("--deadline-minutes", type=float, default=None,
                    help="whole-script budget from process start; training is shortened to fit "
                         "(default: minutes + 1.4)")
    ap.add_argument("--steps", type=int, default=0, help="train exactly this many steps instead of by time")
    ap.add_argument("--corpus-mb", type=float, default=64.0)
    ap.add_argument("--tokenizer-mb", type=float, default=16.0)
    ap.add_argument("--encode-seconds", type=float, default=45.0)
    ap.add_argument("--val-mod", type=int, default=50, help="hold out files with md5(path) %% N == 0")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--ctx", type=int, default=1024, help="training context length")
    ap.add_argument("--batch", type=int, default=32, help="sequences per step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--eval-seqs", type=int, default=64)
    ap.add_argument("--eval-len", type=int, default=1024)
    ap.add_argument("--eval-batch", type=int, default=8)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    minutes = max(0.05, min(float(args.minutes), MAX_MINUTES))
    deadline_s = args.deadline_minutes * 60 if args.deadline_minutes else minutes * 60 + 84
    reserve_s = 40.0
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (cpu)"
    vers = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": getattr(torch.version, "cuda", None), "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__, "numpy": np.__version__}
    log(f"train_tiny_model: device {device} ({gpu}); " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    log(f"budget: training {minutes:.2f} min, whole script {deadline_s / 60:.2f} min")
    os.makedirs(args.out, exist_ok=True)
    phases = {}
    report = {"args": vars(args), "argv": sys.argv[1:], "versions": vers, "gpu": gpu, "phases": phases}

    # 1. corpus --------------------------------------------------------------------------------------------------
    t = time.time()
    roots = corpus_roots()
    train_docs, val_docs, cstats = collect_corpus(roots, int(args.corpus_mb * 1e6), args.val_mod)
    phases["corpus_s"] = round(time.time() - t, 2)
    report["corpus"] = cstats
    report["corpus"]["roots"] = [{"name": n, "path": p} for n, p in roots]
    if not train_docs:
        raise RuntimeError("no training files found")

    # 2. tokenizer -----------------------------------------------------------------------------------------------
    t = time.time()
    tok, tinfo = train_tokenizer(train_docs, args.vocab, int(args.tokenizer_mb * 1e6))
    if tinfo["vocab_size"] > args.vocab:
        raise RuntimeError(f"tokenizer vocab {tinfo['vocab_size']} exceeds {args.vocab}")
    tok.save(os.path.join(args.out, "tokenizer.json"))
    with open(os.path.join(args.out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"bos_token": BOS, "eos_token": EOS, "clean_up_tokenization_spaces": False,
                   "model_max_length": MODEL_CONFIG["max_position_embeddings"],
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=2)
        f.write("\n")
    phases["tokenizer_s"] = round(time.time() - t, 2)
    report["tokenizer"] = tinfo
    bos_id, eos_id = tinfo["bos_id"], tinfo["eos_id"]

    # 3. encode --------------------------------------------------------------------------------------------------
    t = time.time()
    train_ids, n_train_docs = encode_docs(tok, train_docs, bos_id, eos_id, t + args.encode_seconds)
    val_ids, _ = encode_docs(tok, val_docs, bos_id, eos_id, time.time() + 15)
    phases["encode_s"] = round(time.time() - t, 2)
    enc_bytes = sum(len(x.encode("utf-8")) for _, x in train_docs[:n_train_docs])
    report["data"] = {"train_tokens": int(train_ids.size), "train_files_encoded": n_train_docs,
                      "train_bytes_encoded": enc_bytes, "val_tokens": int(val_ids.size),
                      "bytes_per_token": round(enc_bytes / max(1, train_ids.size - 2 * n_train_docs), 3)}
    log(f"encode: {train_ids.size:,} train tokens from {n_train_docs} files, {val_ids.size:,} validation tokens "
        f"in {phases['encode_s']}s ({report['data']['bytes_per_token']} bytes/token)")
    del train_docs

    # 4. model + training ----------------------------------------------------------------------------------------
    mcfg = dict(MODEL_CONFIG)
    mcfg["vocab_size"] = args.vocab
    mcfg["bos_token_id"] = bos_id
    mcfg["eos_token_id"] = eos_id
    cfg = make_config(mcfg)
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(cfg)
    ensure_tied(model)
    init_weights(model, mcfg["num_hidden_layers"], args.seed)
    model.to(device=device, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    report["model"] = {"parameters": n_params, "config": mcfg}
    log(f"model: LlamaForCausalLM with {n_params:,} parameters (tied embeddings counted once), "
        f"attention {getattr(model.config, '_attn_implementation', None)}")

    ctx, B = args.ctx, args.batch
    if train_ids.size < ctx + 2:
        raise RuntimeError(f"only {train_ids.size} training tokens")
    data = torch.from_numpy(train_ids).to(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)
    offs = torch.arange(ctx + 1, device=device)

    def get_batch():
        ix = torch.randint(0, data.numel() - ctx - 1, (B,), device=device, generator=gen)
        chunk = data[ix[:, None] + offs[None, :]].long()
        return chunk[:, :-1], chunk[:, 1:]

    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=(device.type == "cuda"))
    except (TypeError, RuntimeError):
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    params = [p for g in groups for p in g["params"]]
    # TF32 flags are left at PyTorch's defaults (float32 matmuls in full precision): training runs under bf16
    # autocast anyway, and recent PyTorch raises when the legacy and the new TF32 APIs are mixed.
    amp_dtype = torch.bfloat16

    elapsed_before = time.time() - T_START
    budget = min(minutes * 60.0, deadline_s - elapsed_before - reserve_s)
    budget = max(budget, 10.0)
    log(f"train: ctx {ctx}, batch {B} ({B * ctx:,} tokens/step), lr {args.lr} (warmup {args.warmup}, cosine to "
        f"{args.min_lr_frac:g}x over the {'steps' if args.steps else 'time'} budget), "
        + (f"{args.steps} steps (capped at {budget:.0f}s)" if args.steps else f"{budget:.0f}s of training"))

    def hf_train_forward(x):
        return model(input_ids=x, use_cache=False).logits

    train_mask = attention_mask(ctx, device)
    rot0 = getattr(model.model, "rotary_emb", None)
    train_inv_freq = getattr(rot0, "inv_freq", None) if rot0 is not None else None
    if train_inv_freq is None:
        train_inv_freq = 1.0 / (mcfg["rope_theta"] ** (torch.arange(0, mcfg["head_dim"], 2, device=device).float()
                                                        / mcfg["head_dim"]))

    def reference_train_forward(x):
        w = dict(model.named_parameters())
        return reference_forward(w, mcfg, x, train_inv_freq, train_mask)

    forward_fn = hf_train_forward
    fallback = {"used": False, "error": None}

    history = []
    model.train()
    step = 0
    loss_acc = torch.zeros((), device=device)
    n_acc = 0
    last_interval_loss = float("nan")
    stopped_reason = "budget"
    t_train = time.time()
    t_log, step_log = t_train, 0
    while True:
        elapsed = time.time() - t_train
        if args.steps:
            if step >= args.steps:
                break
            if elapsed >= budget:
                stopped_reason = "time cap before --steps was reached"
                break
            progress = step / args.steps
        else:
            if elapsed >= budget:
                break
            progress = elapsed / budget
        if STOP["flag"]:
            stopped_reason = f"signal {STOP['signal']}"
            break
        warm = min(1.0, (step + 1) / max(1, args.warmup))
        lr = args.lr * warm * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = get_batch()
        try:
            with torch.autocast(device_type=device.type, dtype=amp_dtype):
                logits = forward_fn(x)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
        except Exception as e:
            opt.zero_grad(set_to_none=True)
            if step == 0 and not fallback["used"]:
                log(f"!! the transformers forward/backward failed on the first step ({e!r}); "
                    "training through the plain reference forward on the same parameters instead")
                traceback.print_exc()
                fallback["used"] = True
                fallback["error"] = repr(e)
                forward_fn = reference_train_forward
                continue
            log(f"!! training step {step + 1} failed: {e!r}; keeping the model as it is")
            traceback.print_exc()
            stopped_reason = f"error at step {step + 1}: {e!r}"
            break
        gnorm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        loss_acc += loss.detach()
        n_acc += 1
        if step % args.log_every == 0 or step in (1, 10):
            lv = (loss_acc / n_acc).item()
            now = time.time()
            tps = (step - step_log) * B * ctx / max(1e-9, now - t_log)
            t_log, step_log = now, step
            history.append({"step": step, "loss": round(lv, 5), "lr": lr, "grad_norm": round(float(gnorm), 4),
                            "elapsed_s": round(now - t_train, 2), "tokens_per_s": round(tps)})
            log(f"step {step:6d}  loss {lv:.4f}  lr {lr:.2e}  gnorm {float(gnorm):.3f}  "
                f"{tps / 1e6:.2f}M tok/s  {now - t_train:6.1f}s")
            last_interval_loss = lv
            loss_acc.zero_()
            n_acc = 0
            if not math.isfinite(lv):
                stopped_reason = "non-finite loss"
                log("!! loss is not finite; stopping training")
                break
    if n_acc:
        lv = (loss_acc / n_acc).item()
        history.append({"step": step, "loss": round(lv, 5), "elapsed_s": round(time.time() - t_train, 2)})
        log(f"step {step:6d}  loss {lv:.4f}  (last {n_acc} steps)")
        if n_acc >= args.log_every // 2 or not math.isfinite(last_interval_loss):
            last_interval_loss = lv
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.time() - t_train
    tokens_seen = step * B * ctx
    phases["train_s"] = round(train_s, 2)
    report["training"] = {"steps": step, "tokens_seen": tokens_seen, "epochs": round(tokens_seen / max(1, train_ids.size), 2),
                          "seconds": round(train_s, 2), "tokens_per_s": round(tokens_seen / max(1e-9, train_s)),
                          "final_train_loss": last_interval_loss, "stopped": stopped_reason,
                          "budget_s": round(budget, 1), "reference_forward_fallback": fallback,
                          "history": history}
    log(f"train: {step} steps, {tokens_seen:,} tokens ({report['training']['epochs']} epochs) in {train_s:.1f}s, "
        f"final loss {last_interval_loss:.4f} ({stopped_reason})")

    # 5. bf16 weights + save -------------------------------------------------------------------------------------
    t = time.time()
    model.eval()
    round_model_to_bf16(model)
    sd = export_state_dict(model, torch.bfloat16)
    wpath = os.path.join(args.out, "model.safetensors")
    save_file(sd, wpath, metadata={"format": "pt"})
    added = write_config_json(cfg, args.out, mcfg)
    with open(os.path.join(args.out, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump({"_from_model_config": True, "bos_token_id": bos_id, "eos_token_id": eos_id,
                   "transformers_version": transformers.__version__}, f, indent=2, sort_keys=True)
        f.write("\n")
    phases["save_s"] = round(time.time() - t, 2)
    report["config_keys_added_to_hf_output"] = added
    log(f"saved {wpath} ({os.path.getsize(wpath) / 2**20:.2f} MiB, {len(sd)} tensors, bf16) and config.json")

    # 6. evaluation ----------------------------------------------------------------------------------------------
    ev = {}
    report["eval"] = ev
    try:
        if STOP["flag"]:
            raise RuntimeError("skipped after a stop signal")
        t = time.time()
        try:
            mm_precision = torch.get_float32_matmul_precision()
        except Exception as e:  # newer PyTorch can refuse to answer after mixed TF32 API use
            mm_precision = f"unknown ({e!r})"
        L = args.eval_len
        src, src_name = val_ids, "validation files"
        if src.size < L + 1:
            src, src_name = train_ids[-(args.eval_seqs * L + 1):], "tail of the training stream (validation too small)"
        n_seq = max(1, min(args.eval_seqs, src.size // L))
        L = min(L, src.size)
        stride = max(L, (src.size - L) // max(1, n_seq - 1)) if n_seq > 1 else L
        starts = [min(i * stride, src.size - L) for i in range(n_seq)]
        ev_ids = torch.from_numpy(np.stack([src[s:s + L] for s in starts]).astype(np.int64)).to(device)
        ev.update({"source": src_name, "sequences": n_seq, "length": L, "targets_per_seq": L - 1,
                   "window": args.window, "sinks": args.sinks,
                   "weights": "bf16 (as saved), float32 compute",
                   "float32_matmul_precision": mm_precision})
        w = {k: v.to(device=device, dtype=torch.float32) for k, v in sd.items()}
        rot = getattr(model.model, "rotary_emb", None)
        inv_freq = getattr(rot, "inv_freq", None) if rot is not None else None
        if inv_freq is None:
            hd = mcfg["head_dim"]
            inv_freq = 1.0 / (mcfg["rope_theta"] ** (torch.arange(0, hd, 2, device=device).float() / hd))
        masks = {
            "full": attention_mask(L, device),
            f"window{args.window}": attention_mask(L, device, window=args.window),
            f"sinks{args.sinks}+window{args.window - args.sinks}": attention_mask(L, device, window=args.window,
                                                                                  sinks=args.sinks),
        }
        sums = {"hf_full": torch.zeros(L - 1, dtype=torch.float64, device=device)}
        for k in masks:
            sums["ref_" + k] = torch.zeros(L - 1, dtype=torch.float64, device=device)
        max_diff = 0.0
        with torch.no_grad():
            for b0 in range(0, n_seq, args.eval_batch):
                xb = ev_ids[b0:b0 + args.eval_batch]
                hf = None
                if "hf_full" in sums:
                    try:
                        hf = model(input_ids=xb, use_cache=False).logits.float()
                        sums["hf_full"] += position_nll(hf, xb)
                    except Exception as e:
                        log(f"!! transformers eval forward failed ({e!r}); reporting the reference forward only")
                        ev["hf_forward_error"] = repr(e)
                        del sums["hf_full"]
                        hf = None
                for k, m in masks.items():
                    lg = reference_forward(w, mcfg, xb, inv_freq, m)
                    if k == "full" and hf is not None:
                        max_diff = max(max_diff, float((lg - hf).abs().max()))
                    sums["ref_" + k] += position_nll(lg, xb)
                    del lg
                del hf
        n_tot = n_seq * (L - 1)
        tail_from = args.window  # targets at positions >= window (where the window actually drops context)
        results = {}
        for k, s in sums.items():
            nll = float(s.sum()) / n_tot
            tail = s[tail_from - 1:] if L - 1 > tail_from else s
            nll_tail = float(tail.sum()) / (n_seq * tail.numel())
            results[k] = {"nll": round(nll, 5), "ppl": round(math.exp(nll), 4),
                          "nll_tail": round(nll_tail, 5), "ppl_tail": round(math.exp(nll_tail), 4)}
        ev["results"] = results
        ev["hf_vs_reference_max_abs_logit_diff"] = max_diff
        ev["tail_definition"] = f"targets at positions >= {tail_from}"
        phases["eval_s"] = round(time.time() - t, 2)
        for k, r in results.items():
            log(f"eval {k:>22s}: nll {r['nll']:.4f}  ppl {r['ppl']:.3f}  (positions >= {tail_from}: ppl {r['ppl_tail']:.3f})")
        log(f"eval: HF vs reference implementation (full mask) max |logit diff| {max_diff:.2e}; {phases['eval_s']}s")
    except Exception as e:
        ev["error"] = repr(e)
        log(f"!! evaluation failed: {e!r}")
        traceback.print_exc()

    # 7. samples + reload check ----------------------------------------------------------------------------------
    samples = {"prompts": [], "tokenizer_probes": []}
    try:
        if STOP["flag"]:
            raise RuntimeError("skipped after a stop signal")
        t = time.time()
        try:
            tok_file = Tokenizer.from_file(os.path.join(args.out, "tokenizer.json"))
        except Exception as e:
            tok_file = None
            log(f"!! tokenizer.json does not load back: {e!r}")
        for s in TOKENIZER_PROBES:
            e = tok.encode(s)
            same = None if tok_file is None else list(tok_file.encode(s).ids) == list(e.ids)
            samples["tokenizer_probes"].append({"text": s, "ids": list(e.ids), "tokens": list(e.tokens),
                                                "decoded": tok.decode(list(e.ids), skip_special_tokens=True),
                                                "same_ids_from_saved_file": same})
        for p in SAMPLE_PROMPTS:
            ids = list(tok.encode(p).ids)
            gen_ids = greedy(model, ids, 48, device)
            try:
                text = tok.decode(gen_ids, skip_special_tokens=False)
            except Exception as e:  # an id the tokenizer does not know
                text = f"<decode failed: {e!r}>"
            samples["prompts"].append({"prompt": p, "prompt_ids": ids, "greedy_ids": gen_ids, "greedy_text": text})
        samples["note"] = ("prompt_ids include the BOS the tokenizer's post-processor prepends; greedy_ids are "
                           "48 argmax tokens from full forward passes of the saved bf16 weights in float32 on "
                           + str(device) + " (EOS does not stop)")
        report["samples"] = samples["prompts"]
        phases["samples_s"] = round(time.time() - t, 2)
        for sp in samples["prompts"][:2]:
            log(f"sample {sp['prompt']!r} -> {sp['greedy_text'][:120]!r}")
    except Exception as e:
        samples["error"] = repr(e)
        log(f"!! samples failed: {e!r}")
        traceback.print_exc()
    with open(os.path.join(args.out, "samples.json"), "w", encoding="utf-8") as f:
        json.dump(samples, f, indent=2, ensure_ascii=False)
        f.write("\n")

    try:
        if STOP["flag"]:
            raise RuntimeError("skipped after a stop signal")
        t = time.time()
        try:
            m2 = LlamaForCausalLM.from_pretrained(args.out, dtype=torch.float32)
        except TypeError:
            m2 = LlamaForCausalLM.from_pretrained(args.out, torch_dtype=torch.float32)
        m2.to(device).eval()
        probe = torch.tensor([samples["prompts"][0]["prompt_ids"] + samples["prompts"][0]["greedy_ids"]]
                             if samples["prompts"] else [[bos_id] + list(range(2, 66))], device=device)
        with torch.no_grad():
            a = model(input_ids=probe, use_cache=False).logits.float()
            b = m2(input_ids=probe, use_cache=False).logits.float()
        d = float((a - b).abs().max())
        tied = m2.get_output_embeddings().weight.data_ptr() == m2.get_input_embeddings().weight.data_ptr()
        report["reload_check"] = {"ok": d < 1e-3 and tied, "max_abs_logit_diff": d, "lm_head_tied": tied}
        phases["reload_s"] = round(time.time() - t, 2)
        log(f"reload: from_pretrained({args.out}) vs in-memory model max |logit diff| {d:.2e}, tied {tied}")
        del m2
    except Exception as e:
        report["reload_check"] = {"ok": False, "error": repr(e)}
        log(f"!! reload check failed: {e!r}")
        traceback.print_exc()

    # 8. reports -------------------------------------------------------------------------------------------------
    phases["total_s"] = round(time.time() - T_START, 2)
    report["files"] = {}
    for fn in sorted(os.listdir(args.out)):
        pth = os.path.join(args.out, fn)
        if os.path.isfile(pth) and fn not in ("TRAINING.md", "train_metrics.json"):
            report["files"][fn] = {"bytes": os.path.getsize(pth), "sha256": sha256(pth)}
    with open(os.path.join(args.out, "train_metrics.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")
    with open(os.path.join(args.out, "TRAINING.md"), "w", encoding="utf-8") as f:
        f.write(training_md(report, args, minutes, cfg))
    log(f"done in {phases['total_s']:.1f}s; wrote {sorted(os.listdir(args.out))}")
    return 0


def training_md(r, args, minutes, cfg):
    c = r["model"]["config"]
    tr = r.get("training", {})
    ev = r.get("eval", {})
    cs = r["corpus"]
    tk = r["tokenizer"]
    dt = r["data"]
    ph = r["phases"]
    lines = []
    a = lines.append
    a("# tokenpress-tiny")
    a("")
    a("A small Llama-architecture model trained from scratch on Python source code: the default model tokenpress")
    a("embeds. Produced by `scripts/train_tiny_model.py` (see `scripts/README.md`); every number below comes from")
    a("the run that wrote these files (also in `train_metrics.json`).")
    a("")
    a("## Model")
    a("")
    a("| | |")
    a("| --- | --- |")
    a(f"| architecture | LlamaForCausalLM, {r['model']['parameters']:,} parameters (tied embeddings counted once) |")
    a(f"| layers / hidden / FFN | {c['num_hidden_layers']} / {c['hidden_size']} / {c['intermediate_size']} (SiLU-gated) |")
    a(f"| heads / KV heads / head_dim | {c['num_attention_heads']} / {c['num_key_value_heads']} (GQA "
      f"{c['num_attention_heads'] // c['num_key_value_heads']}) / {c['head_dim']} |")
    a(f"| vocab | {c['vocab_size']} (byte-level BPE; BOS `{BOS}` = {c['bos_token_id']}, EOS `{EOS}` = {c['eos_token_id']}) |")
    a(f"| RoPE | theta {c['rope_theta']:g}, no scaling; max_position_embeddings {c['max_position_embeddings']}; trained at context {args.ctx} |")
    a(f"| norm | RMSNorm eps {c['rms_norm_eps']:g} |")
    a("| weights | `model.safetensors`, bf16, HF tensor names, no `lm_head.weight` (tied to `model.embed_tokens.weight`) |")
    a("")
    a("## Corpus")
    a("")
    roots = ", ".join(f"`{x['path']}` ({x['name']})" for x in cs["roots"])
    a(f"- `*.py` files of the training machine's Python installation: {roots}.")
    a(f"- Files of 200 B to 400 kB, ordered by md5 of `root/relative/path`, read until {args.corpus_mb:g} MB;")
    a("  skipped: undecodable UTF-8 / NUL bytes "
      f"({cs['skipped_decode']}), files containing the special-token strings ({cs['skipped_special']}), files with a "
      f"line over 1000 characters ({cs['skipped_long_line']}), byte-identical duplicates ({cs['skipped_duplicate']}).")
    a(f"- Held out for validation: files whose md5(path) % {args.val_mod} == 0: {cs['val_files']} files, "
      f"{cs['val_bytes'] / 1e6:.2f} MB, {dt['val_tokens']:,} tokens.")
    a(f"- Training: {cs['train_files']} files, {cs['train_bytes'] / 1e6:.1f} MB; {dt['train_files_encoded']} encoded "
      f"into {dt['train_tokens']:,} tokens ({dt['bytes_per_token']} bytes/token); each file is "
      "`BOS + tokens + EOS`, files concatenated.")
    top = ", ".join(f"{k.rstrip('/')} {v / 1e6:.1f} MB" for k, v in cs.get("top_sources", [])[:10])
    a(f"- Largest sources: {top}.")
    a("")
    a("## Tokenizer")
    a("")
    a(f"Byte-level BPE (`tokenizers` {r['versions']['tokenizers']}): ByteLevel pre-tokenizer (GPT-2 regex, no prefix "
      f"space) and decoder, vocab {tk['vocab_size']}, min frequency 2, trained on the first {tk['train_docs']} training "
      f"files ({tk['train_bytes'] / 1e6:.1f} MB) in {tk['seconds']} s. The post-processor prepends BOS "
      "(`TemplateProcessing`, as Llama 3 does); `samples.json` lists probe strings with their ids.")
    a("")
    a("## Training")
    a("")
    if tr:
        a(f"- {tr['steps']} steps of {args.batch} x {args.ctx} tokens: {tr['tokens_seen']:,} tokens seen "
          f"({tr['epochs']} passes over the training tokens), random windows of the token stream.")
        a(f"- AdamW (betas 0.9/0.95, weight decay {args.weight_decay} on matrices, grad clip 1.0), peak lr {args.lr:g}, "
          f"{args.warmup} warmup steps, cosine to {args.min_lr_frac:g}x over the "
          f"{'step' if args.steps else 'wall-clock'} budget; bf16 autocast, float32 master weights; seed {args.seed}.")
        a(f"- Init: N(0, 0.02) for the embedding and matrices, N(0, 0.02/sqrt({2 * c['num_hidden_layers']})) for "
          "o_proj/down_proj, RMSNorm weights 1.")
        a(f"- Wall time {tr['seconds']:.1f} s of a {minutes:g}-minute budget (stopped by: {tr['stopped']}); "
          f"{tr['tokens_per_s'] / 1e6:.2f} M tokens/s on {r['gpu']}.")
        a(f"- Final training loss (mean of the last {args.log_every} steps): {tr['final_train_loss']:.4f}.")
        a("- The run is time-bounded, so its step count depends on the GPU; pass `--steps N` for a fixed schedule.")
        fb = tr.get("reference_forward_fallback") or {}
        if fb.get("used"):
            a(f"- The transformers forward failed on the first step ({fb.get('error')}); training ran through the "
              "plain reference forward (same parameters, same math, explicit attention) instead.")
    a("")
    a("## Held-out evaluation")
    a("")
    if ev.get("results"):
        res = ev["results"]
        a(f"{ev['sequences']} sequences of {ev['length']} tokens from the {ev['source']}, "
          f"{ev['sequences'] * ev['targets_per_seq']:,} predicted tokens; {ev['weights']} "
          f"(float32 matmul precision: {ev.get('float32_matmul_precision')}).")
        a("")
        a(f"| attention | NLL | perplexity | perplexity, positions >= {args.window} |")
        a("| --- | --- | --- | --- |")
        names = {"hf_full": "full cache (transformers forward)",
                 "ref_full": "full cache (reference implementation)",
                 f"ref_window{args.window}": f"sliding window, last {args.window} tokens",
                 f"ref_sinks{args.sinks}+window{args.window - args.sinks}":
                     f"first {args.sinks} + last {args.window - args.sinks} tokens"}
        for k, v in res.items():
            a(f"| {names.get(k, k)} | {v['nll']:.4f} | {v['ppl']:.3f} | {v['ppl_tail']:.3f} |")
        a("")
        if ev.get("hf_forward_error"):
            agree = f"the transformers forward failed here ({ev['hf_forward_error']}), so it was not compared"
        else:
            agree = ("its full-mask logits match transformers to "
                     f"{ev.get('hf_vs_reference_max_abs_logit_diff', float('nan')):.1e}")
        a(f"The window rows mask every layer's attention (query i sees keys j with i - j < {args.window}, itself "
          f"included; the sink row also sees positions 0-{args.sinks - 1}), which is what a KV cache that keeps only "
          f"those positions computes. They come from a plain re-implementation of the forward pass; {agree}.")
    else:
        a(f"Evaluation did not complete: {ev.get('error', 'unknown')}")
    a("")
    rc = r.get("reload_check", {})
    a(f"Reload check: `LlamaForCausalLM.from_pretrained` on this directory reproduces the in-memory model "
      f"(max |logit diff| {rc.get('max_abs_logit_diff', 'n/a')}, ok: {rc.get('ok')}).")
    a("")
    a("## Environment")
    a("")
    v = r["versions"]
    a(f"- GPU: {r['gpu']}")
    a(f"- Python {v['python']}, torch {v['torch']} (CUDA {v['cuda']}), transformers {v['transformers']}, "
      f"tokenizers {v['tokenizers']}, safetensors {v['safetensors']}, numpy {v['numpy']}")
    a("- Phases (s): " + ", ".join(f"{k[:-2]} {val}" for k, val in ph.items()))
    a(f"- Date (UTC): {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}")
    a("")
    a("## Reproduce")
    a("")
    a("    python3 scripts/train_tiny_model.py " + " ".join(r.get("argv", [])))
    a("")
    a("or `bash scripts/gpu-oracle.sh OUT` on a GPU machine (see `scripts/README.md`).")
    a("")
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:
        print(f"!! train_tiny_model failed: {exc!r}", flush=True)
        traceback.print_exc()
        sys.exit(1)
