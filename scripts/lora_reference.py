#!/usr/bin/env python3
"""LoRA adapter fixture: a PEFT LoRA adapter for tests/fixtures/hf/llama-gqa-f32 and the logits transformers + PEFT
compute with it, so tokenpress's load-time merge (--lora) is checked against the reference implementation.

Writes OUT/lora-llama-gqa/: adapter_config.json and adapter_model.safetensors (PEFT's save_pretrained), and
reference.safetensors (tokens_0 int64 [7] and logits_0 float32 [7, vocab], the base checkpoint with the adapter
active, eager attention, float32 on CPU). Deterministic: fixed seeds. Needs torch, transformers 5.x, peft,
safetensors.

    python3 scripts/lora_reference.py --out tests/fixtures/hf
"""
import argparse
import json
import os
import shutil

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

BASE = "llama-gqa-f32"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/hf")
    args = ap.parse_args()
    base_dir = os.path.join(args.out, BASE)
    model = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    # rank 4 on the attention q/v and the MLP's down projection, alpha 8 (scale 2), rsLoRA off
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0, bias="none")
    peft = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(7007)
    with torch.no_grad():
        for name, p in sorted(peft.named_parameters(), key=lambda kv: kv[0]):
            if "lora_A" in name or "lora_B" in name:  # B starts at zero in PEFT: randomize both
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.05)
    out_dir = os.path.join(args.out, "lora-llama-gqa")
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    peft.save_pretrained(out_dir)
    ref = load_file(os.path.join(base_dir, "reference.safetensors"))
    ids = ref["tokens_0"]
    with torch.no_grad():
        logits = peft(input_ids=ids[None, :], use_cache=False).logits[0].to(torch.float32)
        merged = peft.merge_and_unload()
        check = merged(input_ids=ids[None, :], use_cache=False).logits[0].to(torch.float32)
    diff = float((logits - check).abs().max())
    print(f"adapter active vs merged: max abs logit diff {diff:.3e}; change vs base "
          f"{float((logits - ref['logits_0']).abs().max()):.3e}")
    save_file({"tokens_0": ids.contiguous(), "logits_0": logits.contiguous()},
              os.path.join(out_dir, "reference.safetensors"), metadata={"format": "pt"})
    # the README PEFT writes is a model card template: keep the fixture lean
    card = os.path.join(out_dir, "README.md")
    if os.path.exists(card):
        os.remove(card)
    with open(os.path.join(out_dir, "adapter_config.json")) as f:
        print(json.dumps({k: v for k, v in json.load(f).items() if k in ("r", "lora_alpha", "target_modules", "use_rslora")}))


if __name__ == "__main__":
    main()
