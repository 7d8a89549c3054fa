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
}


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
            raise SystemExit(f"--only: unknown workload {w!r}; choose from {list(WORKLOADS)} or forward/decode")
        names += [h for h in hits if h not in names]
    return names


def load(args):
    kw = dict(dtype=torch.float32, attn_implementation=args.attn)
    if args.gguf:
        folder, name = os.path.split(os.path.abspath(args.gguf))
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **kw)
        src = args.gguf
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model, local_files_only=True, **kw)
        src = args.model
    return model.eval(), src


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
    model, source = load(args)
    vocab = model.config.vocab_size
    attn = model.config._attn_implementation

    results = {}
    with torch.inference_mode():
        for name in names:
            kind, batch = WORKLOADS[name]
            run, tokens = make_run(model, kind, batch, vocab)
            run()  # warm-up
            runs = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                run()
                runs.append(time.perf_counter() - t0)
            med = statistics.median(runs)
            results[name] = {"median_s": med, "runs": runs, "tokens_per_s": tokens / med}
            print(f"  {name:<16} {med:9.3f} s  {tokens / med:10.1f} tok/s", flush=True)

    report = {
        "peer": "pytorch",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": args.threads,
        "attn": attn,
        "dtype": "float32",
        "model": source,
        "repeats": args.repeats,
        "cpu": platform.processor() or platform.machine(),
        "results": results,
    }
    print()
    print(f"pytorch peer  torch {torch.__version__}  transformers {transformers.__version__}  "
          f"threads {args.threads}  attn {attn}  repeats {args.repeats}")
    print(f"{'workload':<16} {'median_s':>10} {'tokens/s':>10}  runs")
    for name, r in results.items():
        print(f"{name:<16} {r['median_s']:10.3f} {r['tokens_per_s']:10.1f}  {[round(x, 3) for x in r['runs']]}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
