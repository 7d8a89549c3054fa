#!/usr/bin/env python3
"""Check a model directory written by `rllr-train convert` against transformers' own GGUF loader.

Why: rllr's importer must give exactly what transformers gives from the same file, or a model
trained in rllr silently diverges from the one people evaluate in Python. This compares every
tensor (max |diff|), the tokenizer on the committed cases, and greedy-generates from the converted
directory as a smoke test that the weights are sane.

Usage: scripts/check-gguf-parity.py MODEL_DIR GGUF_FILE [--cases tests/fixtures/gguf/smollm2_tokenizer_cases.json]
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("gguf", type=Path)
    ap.add_argument("--cases", type=Path, default=Path(__file__).resolve().parent.parent / "tests/fixtures/gguf/smollm2_tokenizer_cases.json")
    ap.add_argument("--prompt", default="What is the capital of France?")
    args = ap.parse_args()
    ok = True

    ref = AutoModelForCausalLM.from_pretrained(str(args.gguf.parent), gguf_file=args.gguf.name, dtype=torch.float32)
    ref_sd = ref.state_dict()
    ours = load_file(str(args.model_dir / "model.safetensors"))
    worst = 0.0
    for name, ref_t in ref_sd.items():
        if name == "lm_head.weight" and name not in ours and ref.config.tie_word_embeddings:
            continue
        if name not in ours:
            print(f"MISSING {name}")
            ok = False
            continue
        ours_t = ours[name].float()
        if ours_t.shape != ref_t.shape:
            print(f"SHAPE {name}: {tuple(ours_t.shape)} vs {tuple(ref_t.shape)}")
            ok = False
            continue
        d = (ours_t - ref_t).abs().max().item()
        worst = max(worst, d)
        if d > 1e-6:
            print(f"DIFF {name}: max |diff| {d}")
            ok = False
    extra = set(ours) - set(ref_sd)
    if extra:
        print(f"EXTRA tensors: {sorted(extra)}")
        ok = False
    print(f"tensors: {len(ours)} compared, max |diff| over all = {worst}")

    tok_ref = AutoTokenizer.from_pretrained(str(args.gguf.parent), gguf_file=args.gguf.name)
    tok = AutoTokenizer.from_pretrained(str(args.model_dir))
    cases = json.loads(args.cases.read_text()) if args.cases.exists() else []
    bad = 0
    for case in cases:
        ids = tok.encode(case["text"], add_special_tokens=False)
        ref_ids = tok_ref.encode(case["text"], add_special_tokens=False)
        if ids != ref_ids or ids != case["ids"] or tok.decode(ids) != case["text"]:
            bad += 1
            print(f"TOKENIZER mismatch on {case['text']!r}: {ids} vs {ref_ids}")
    print(f"tokenizer: {len(cases) - bad}/{len(cases)} cases identical (saved tokenizer vs transformers-from-GGUF)")
    ok &= bad == 0

    model = AutoModelForCausalLM.from_pretrained(str(args.model_dir), dtype=torch.float32)
    msgs = [{"role": "user", "content": args.prompt}]
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=40, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"generation: {answer!r}")
    ok &= "Paris" in answer
    print("PARITY OK" if ok else "PARITY FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
