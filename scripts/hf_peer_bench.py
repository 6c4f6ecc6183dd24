#!/usr/bin/env python3
"""Peer figure for tokenpress' decode benchmark: the same generated model through PyTorch/transformers on the
same GPU (bf16, SDPA attention, static KV cache when available, greedy decoding), timing decode tokens/s at a short
context and after a long prompt. Prints `RESULT key value unit` lines like eval.KernelBench.

usage: hf_peer_bench.py MODEL_DIR [--steps 128] [--long-context 32768] [--long-steps 32]
"""
import argparse
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--long-context", type=int, default=32768)
    ap.add_argument("--long-steps", type=int, default=32)
    ap.add_argument("--attn", default="sdpa")
    a = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    dev = "cuda"
    print(f"peer: torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name(0)}",
          flush=True)
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.bfloat16, attn_implementation=a.attn)
    model.to(dev).eval()
    print(f"RESULT peer_load_s {time.time() - t0:.2f} s", flush=True)
    vocab = model.config.vocab_size

    def decode_tps(prompt_len, steps, label):
        ids = (torch.arange(prompt_len, device=dev) * 97 + 13) % vocab
        ids = ids.unsqueeze(0)
        with torch.inference_mode():
            out = model(input_ids=ids, use_cache=True)
            past = out.past_key_values
            tok = out.logits[:, -1:].argmax(-1)
            # warm-up
            for _ in range(4):
                out = model(input_ids=tok, past_key_values=past, use_cache=True)
                past = out.past_key_values
                tok = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            t = time.time()
            for _ in range(steps):
                out = model(input_ids=tok, past_key_values=past, use_cache=True)
                past = out.past_key_values
                tok = out.logits[:, -1:].argmax(-1)
                tok.item()  # greedy token to the host each step, like the tokenpress loop
            torch.cuda.synchronize()
            tps = steps / (time.time() - t)
        print(f"peer {label}: {tps:.1f} tokens/s (eager HF forward, {a.attn}, dynamic cache)", flush=True)
        return tps

    short = decode_tps(32, a.steps, "short context")
    print(f"RESULT peer_short_tps {short:.4f} tokens/s", flush=True)

    if a.long_context > 0:
        try:
            t = time.time()
            tps = decode_tps(a.long_context, a.long_steps, f"{a.long_context} context")
            print(f"RESULT peer_{a.long_context // 1024}k_tps {tps:.4f} tokens/s", flush=True)
            print(f"RESULT peer_long_total_s {time.time() - t:.2f} s", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"peer long context failed: {e}", flush=True)

    # generate() with a static cache is the fastest stock HF path; last, because transformers may compile the model for
    # it (minutes): the long-context figure above is not lost when the stage's time limit cuts this short
    try:
        ids = ((torch.arange(32, device=dev) * 97 + 13) % vocab).unsqueeze(0)
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=8, do_sample=False, cache_implementation="static")
            torch.cuda.synchronize()
            t = time.time()
            model.generate(ids, max_new_tokens=a.steps, min_new_tokens=a.steps, do_sample=False,
                           cache_implementation="static")
            torch.cuda.synchronize()
            tps = a.steps / (time.time() - t)
        print(f"peer generate(static cache): {tps:.1f} tokens/s (includes the 32-token prefill)", flush=True)
        print(f"RESULT peer_generate_static_tps {tps:.4f} tokens/s", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"peer generate(static cache) failed: {e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
