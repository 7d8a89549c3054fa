"""PyTorch + transformers peer of the rllr speed benchmark (`rllr-bench`).

Why this exists
---------------
rllr's speed claims are relative: the Rust engine is timed against the stock PyTorch path on the
same weights, the same shapes and the same number of CPU threads. This script is that PyTorch
side. It measures exactly the workloads rllr-bench measures and writes a JSON file in a shape the
Rust side can read and put next to its own numbers.

Workloads (each: one warm-up run, then the median of --repeats timed runs, wall clock):
    forward_8x128    one forward of a batch 8x128 (random ids, seed 0, full attention mask)
    forward_32x128   same with batch 32
    decode_b1_64     greedy generate of exactly 64 new tokens from a 32-token prompt, batch 1
    decode_b8_64     same with batch 8 (8 different 32-token prompts, no padding)
    decode_b32_64    same with batch 32
    train_lora_8x256 one LoRA training step: peft LoRA r=16, alpha=32, dropout=0.1 on q_proj and
                     v_proj (rllr's LoraConfig::default()), model.train(), forward 8x256 -> mean
                     cross-entropy over every position -> backward -> torch.optim.AdamW step
    score_16x128     reward scoring: LlamaForSequenceClassification(num_labels=1) over 16x128,
                     one score per row at its last token; sequences_per_s = 16 / seconds
    peak_rss_train_lora  VmHWM (MiB) of a fresh Python process that loads the model and runs two
                     train_lora_8x256 steps (this script re-run with --only train_lora_8x256)
Decode uses generate(min_new_tokens=64, max_new_tokens=64, do_sample=False, use_cache=True), so
it includes the 32-token prefill; tokens_per_s = batch * 64 / seconds. For forwards,
tokens_per_s = batch * 128 / seconds (prefill throughput).

Setup: float32, CPU, torch.set_num_threads(N), torch.inference_mode(), attention
implementation "sdpa" (PyTorch's default; recorded in the JSON, override with --attn).
Random ids are drawn from [3, vocab) so no special token (pad/bos/eos) appears.

Usage:
    python benches/torch_peer.py --model DIR --threads N [--repeats 3] \
        [--only forward_8x128,decode_b1_64 | --only forward,decode] --json OUT.json
    python benches/torch_peer.py --gguf path/to/model.gguf --threads 2 --repeats 1 --json OUT.json

Output JSON:
    {"peer": "pytorch", "torch": ver, "transformers": ver, "threads": N, "attn": "sdpa",
     "model": path, "dtype": "float32",
     "results": {name: {"median_s": s, "runs": [s, ...], "tokens_per_s": t}}}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, GenerationConfig

SEQ = 128
PROMPT = 32
NEW = 64
WORKLOADS = {
    # name: (kind, batch)
    "forward_8x128": ("forward", 8),
    "forward_32x128": ("forward", 32),
    "decode_b1_64": ("decode", 1),
    "decode_b8_64": ("decode", 8),
    "decode_b32_64": ("decode", 32),
    "train_lora_8x256": ("train", 8),
    "score_16x128": ("score", 16),
    "peak_rss_train_lora": ("peak_rss", 8),
}
TRAIN_SEQ = 256


def random_ids(batch: int, length: int, vocab: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(3, vocab, (batch, length), generator=gen, dtype=torch.int64)


def select(only: str | None) -> list[str]:
    if not only:
        return list(WORKLOADS)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    names = []
    for w in wanted:
        hits = [n for n, (kind, _) in WORKLOADS.items() if n == w or kind == w]
        if not hits:
            raise SystemExit(f"--only: unknown workload {w!r}; choose from {list(WORKLOADS)} or a kind")
        names += [h for h in hits if h not in names]
    return names


def load(args, cls=AutoModelForCausalLM, **extra):
    kw = dict(dtype=torch.float32, attn_implementation=args.attn, **extra)
    if args.gguf:
        folder, name = os.path.split(os.path.abspath(args.gguf))
        model = cls.from_pretrained(folder, gguf_file=name, **kw)
        src = args.gguf
    else:
        model = cls.from_pretrained(args.model, local_files_only=True, **kw)
        src = args.model
    return model.eval(), src


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_train(model, batch: int):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(model, cfg).train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad])
    vocab = model.config.vocab_size
    ids = random_ids(batch, TRAIN_SEQ, vocab)
    targets = random_ids(batch, TRAIN_SEQ, vocab).roll(1, dims=1)
    mask = torch.ones_like(ids)

    def run():
        logits = peft_model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run, batch * TRAIN_SEQ


def make_score(args, batch: int):
    from transformers import LlamaForSequenceClassification

    model, _ = load(args, LlamaForSequenceClassification, num_labels=1)
    ids = random_ids(batch, SEQ, model.config.vocab_size)
    mask = torch.ones_like(ids)

    def run():
        out = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        assert out.shape == (batch, 1), out.shape

    return run, batch


def peak_rss_child(args) -> dict:
    """Run the training step alone in a fresh interpreter and read its VmHWM."""
    import subprocess
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
        src = ["--gguf", args.gguf] if args.gguf else ["--model", args.model]
        cmd = [sys.executable, os.path.abspath(__file__), *src, "--threads", str(args.threads),
               "--repeats", "1", "--only", "train_lora_8x256", "--attn", args.attn, "--json", tmp.name]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(tmp.name) as f:
            return {"peak_rss_mib": json.load(f)["peak_rss_mib"]}


def make_run(model, kind: str, batch: int, vocab: int):
    if kind == "forward":
        ids = random_ids(batch, SEQ, vocab)
        mask = torch.ones_like(ids)

        def run():
            model(input_ids=ids, attention_mask=mask, use_cache=False)

        return run, batch * SEQ
    ids = random_ids(batch, PROMPT, vocab)
    mask = torch.ones_like(ids)
    eos = model.generation_config.eos_token_id
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else (eos if eos is not None else 0)
    gcfg = GenerationConfig(
        min_new_tokens=NEW, max_new_tokens=NEW, do_sample=False, use_cache=True, eos_token_id=eos, pad_token_id=pad
    )

    def run():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gcfg)
        assert out.shape == (batch, PROMPT + NEW), out.shape

    return run, batch * NEW


def measure(run, items: int, repeats: int, rate: str, mode) -> dict:
    """One warm-up, then the median of `repeats` wall-clock runs under `mode` (grad or not)."""
    with mode():
        run()
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            runs.append(time.perf_counter() - t0)
    med = statistics.median(runs)
    return {"median_s": med, "runs": runs, rate: items / med}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="Hugging Face model dir (config.json + safetensors)")
    src.add_argument("--gguf", help="GGUF file, dequantised to float32 by transformers")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", help="comma list of workload names or kinds (forward, decode)")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--json", required=True, help="output file")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    names = select(args.only)
    # Loaded only when a forward/decode workload needs it, so the memory child holds one model.
    shared = {}

    def base():
        if not shared:
            shared["model"] = load(args)[0]
        return shared["model"]

    results = {}
    for name in names:
        kind, batch = WORKLOADS[name]
        if kind == "peak_rss":
            results[name] = peak_rss_child(args)
            print(f"  {name:<20} {results[name]['peak_rss_mib']:9.1f} MiB", flush=True)
            continue
        if kind == "train":
            # A fresh model: peft wraps it in place, and later workloads need the bare one.
            run, items = make_train(load(args)[0], batch)
            results[name] = measure(run, items, args.repeats, "tokens_per_s", torch.enable_grad)
        elif kind == "score":
            run, items = make_score(args, batch)
            results[name] = measure(run, items, args.repeats, "sequences_per_s", torch.inference_mode)
        else:
            model = base()
            run, items = make_run(model, kind, batch, model.config.vocab_size)
            results[name] = measure(run, items, args.repeats, "tokens_per_s", torch.inference_mode)
        print(f"  {name:<20} {results[name]['median_s']:9.3f} s", flush=True)

    report = {
        "peer": "pytorch",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": args.threads,
        "attn": args.attn,
        "dtype": "float32",
        "model": args.gguf or args.model,
        "repeats": args.repeats,
        "cpu": platform.processor() or platform.machine(),
        "results": results,
        "peak_rss_mib": peak_rss_mib(),
    }
    print()
    print(f"pytorch peer  torch {torch.__version__}  transformers {transformers.__version__}  "
          f"threads {args.threads}  attn {args.attn}  repeats {args.repeats}")
    for name, r in results.items():
        print(f"{name:<20} {json.dumps(r)}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
