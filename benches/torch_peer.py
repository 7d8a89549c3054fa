"""PyTorch + transformers peer of the rllr speed benchmark (`rllr-bench`).

Why this exists
---------------
rllr's speed claims are relative: the Rust engine is timed against the stock PyTorch path on the
same weights, the same shapes, the same device and dtype, and on the CPU the same number of
threads. This script is that PyTorch side. It measures exactly the workloads rllr-bench measures
and writes a JSON file in a shape the Rust side can read and put next to its own numbers.

Workloads are named by shape, as in rllr-bench (each: one warm-up run, then the median of
--repeats timed runs, wall clock):
    forward_{B}x{L}    one forward of a batch BxL (random ids, seed 0, full attention mask)
    decode_b{B}_{N}    greedy generate of exactly N new tokens from B different 32-token prompts
                       (no padding)
    decode_lora_b{B}_{N}  the same through a peft LoRA adapter (r=16, alpha=32 on q_proj and v_proj,
                       unmerged, eval mode): a PPO rollout, a best-of-N sample, a served adapter
    train_lora_{B}x{L} one LoRA training step: peft LoRA r=16, alpha=32, dropout=0.1 on q_proj
                       and v_proj (rllr's LoraConfig::default()), model.train(), forward BxL ->
                       mean cross-entropy (logits in float32, as rllr) over every position ->
                       backward -> torch.optim.AdamW step
    score_{B}x{L}      reward scoring: LlamaForSequenceClassification(num_labels=1) over BxL, one
                       score per row at its last token; sequences_per_s = B / seconds
    peak_rss_train_lora  VmHWM (MiB) of a fresh Python process that loads the model and runs two
                       train_lora_8x256 steps (this script re-run with --only train_lora_8x256);
                       CPU only
The CPU set is forward_8x128, forward_32x128, train_lora_8x256, score_16x128, decode_b1_64,
decode_b8_64, decode_b32_64, decode_lora_b8_64, peak_rss_train_lora; the GPU set is
forward_32x512, decode_b1_128, decode_b8_128, decode_b64_128, train_lora_8x512, score_16x512 (`--only cpu` / `--only gpu`; a kind
such as `--only decode` picks that kind from the device's set).
Decode uses generate(min_new_tokens=N, max_new_tokens=N, do_sample=False, use_cache=True), so
it includes the 32-token prefill; tokens_per_s = B * N / seconds. For forwards,
tokens_per_s = B * L / seconds (prefill throughput).

Setup: --device cpu (default), cuda or cuda:N; --dtype float32 (default), bfloat16 or float16;
model loaded with that dtype and moved to the device, inputs created on it.
torch.set_num_threads(N), torch.inference_mode() (grad on for training), attention
implementation "sdpa" (PyTorch's default; recorded in the JSON, override with --attn).
On CUDA, torch.cuda.synchronize() runs before each timer starts and before it stops, so times
cover the kernels; each result also gets cuda_peak_mib (torch.cuda.max_memory_allocated over that
workload) in place of the CPU-only peak RSS.
Random ids are drawn from [3, vocab) so no special token (pad/bos/eos) appears.

Usage:
    python benches/torch_peer.py --model DIR --threads N [--repeats 3] \
        [--only forward_8x128,decode_b1_64 | --only forward,decode] --json OUT.json
    python benches/torch_peer.py --model DIR --device cuda --dtype bfloat16 --threads 8 \
        --only gpu --json OUT.json
    python benches/torch_peer.py --gguf path/to/model.gguf --threads 2 --repeats 1 --json OUT.json

Output JSON:
    {"peer": "pytorch", "torch": ver, "transformers": ver, "threads": N, "attn": "sdpa",
     "model": path, "dtype": "float32", "device": "cpu", "gpu": name or null,
     "results": {name: {"median_s": s, "runs": [s, ...], "tokens_per_s": t}}}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, GenerationConfig

PROMPT = 32
CPU_WORKLOADS = ["forward_8x128", "forward_32x128", "train_lora_8x256", "score_16x128",
                 "decode_b1_64", "decode_b8_64", "decode_b32_64", "decode_lora_b8_64",
                 "peak_rss_train_lora"]
GPU_WORKLOADS = ["forward_32x512", "decode_b1_128", "decode_b8_128", "decode_b64_128",
                 "train_lora_8x512", "score_16x512"]
TRAIN = "train_lora_8x256"  # what peak_rss_train_lora runs in a fresh process
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
PATTERNS = [  # (kind, regex of the name; groups: batch, length or new tokens)
    ("forward", re.compile(r"forward_(\d+)x(\d+)")),
    ("train", re.compile(r"train_lora_(\d+)x(\d+)")),
    ("score", re.compile(r"score_(\d+)x(\d+)")),
    ("decode", re.compile(r"decode_b(\d+)_(\d+)")),
    ("decode_lora", re.compile(r"decode_lora_b(\d+)_(\d+)")),
]


def parse(name: str) -> tuple[str, int, int]:
    """(kind, batch, length) of a workload name; for decode, length is the new tokens."""
    if name == "peak_rss_train_lora":
        return "peak_rss", 0, 0
    for kind, pat in PATTERNS:
        m = pat.fullmatch(name)
        if m and int(m[1]) > 0 and int(m[2]) > 0:
            return kind, int(m[1]), int(m[2])
    raise SystemExit(f"--only: unknown workload {name!r}; use forward_BxL, train_lora_BxL, "
                     "score_BxL, decode_bB_N, decode_lora_bB_N, peak_rss_train_lora, a kind or "
                     "a set (cpu, gpu)")


def random_ids(batch: int, length: int, vocab: int, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (batch, length), generator=gen, dtype=torch.int64)
    return ids.to(device)


def select(only: str | None, cuda: bool) -> list[str]:
    default = GPU_WORKLOADS if cuda else CPU_WORKLOADS
    if not only:
        return list(default)
    names = []
    for w in (w.strip() for w in only.split(",")):
        if not w:
            continue
        if w in ("cpu", "gpu"):
            hits = CPU_WORKLOADS if w == "cpu" else GPU_WORKLOADS
        elif w in {kind for kind, _ in PATTERNS} | {"peak_rss"}:
            hits = [n for n in default if parse(n)[0] == w]
        else:
            parse(w)
            hits = [w]
        names += [h for h in hits if h not in names]
    return names


def load(args, cls=AutoModelForCausalLM, **extra):
    kw = dict(dtype=DTYPES[args.dtype], attn_implementation=args.attn, **extra)
    if args.gguf:
        folder, name = os.path.split(os.path.abspath(args.gguf))
        model = cls.from_pretrained(folder, gguf_file=name, **kw)
        src = args.gguf
    else:
        model = cls.from_pretrained(args.model, local_files_only=True, **kw)
        src = args.model
    return model.to(args.device).eval(), src


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_train(model, batch: int, length: int, device):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(model, cfg).train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad])
    vocab = model.config.vocab_size
    ids = random_ids(batch, length, vocab, device)
    targets = random_ids(batch, length, vocab, device).roll(1, dims=1)
    mask = torch.ones_like(ids)

    def run():
        logits = peft_model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        # float32 logits for the loss, as rllr's (a no-op in float32).
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), targets.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run, batch * length


def make_score(args, batch: int, length: int):
    from transformers import LlamaForSequenceClassification

    model, _ = load(args, LlamaForSequenceClassification, num_labels=1)
    if model.config.pad_token_id is None:
        # Batches above 1 need a pad id to find each row's last token; ids are >= 3, so 0 never
        # appears and the last token is the last position, as on the rllr side.
        model.config.pad_token_id = 0
    ids = random_ids(batch, length, model.config.vocab_size, args.device)
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
               "--dtype", args.dtype, "--repeats", "1", "--only", TRAIN, "--attn", args.attn,
               "--json", tmp.name]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(tmp.name) as f:
            return {"peak_rss_mib": json.load(f)["peak_rss_mib"]}


def make_run(model, kind: str, batch: int, length: int, vocab: int, device):
    if kind == "forward":
        ids = random_ids(batch, length, vocab, device)
        mask = torch.ones_like(ids)

        def run():
            model(input_ids=ids, attention_mask=mask, use_cache=False)

        return run, batch * length
    new = length
    ids = random_ids(batch, PROMPT, vocab, device)
    mask = torch.ones_like(ids)
    eos = model.generation_config.eos_token_id
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else (eos if eos is not None else 0)
    gcfg = GenerationConfig(
        min_new_tokens=new, max_new_tokens=new, do_sample=False, use_cache=True, eos_token_id=eos, pad_token_id=pad
    )

    def run():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gcfg)
        assert out.shape == (batch, PROMPT + new), out.shape

    return run, batch * new


def measure(run, items: int, repeats: int, rate: str, mode, device) -> dict:
    """One warm-up, then the median of `repeats` wall-clock runs under `mode` (grad or not); on
    CUDA the device is synchronized before each timer starts and before it stops."""
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with mode():
        run()
        runs = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            run()
            sync()
            runs.append(time.perf_counter() - t0)
    med = statistics.median(runs)
    out = {"median_s": med, "runs": runs, rate: items / med}
    if cuda:
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="Hugging Face model dir (config.json + safetensors)")
    src.add_argument("--gguf", help="GGUF file, dequantised to --dtype by transformers")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", help="comma list of workload names, kinds (forward, decode, ...) or sets (cpu, gpu)")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (the same string rllr-bench got)")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                    help="weight and compute dtype (rllr-bench passes its own --dtype)")
    ap.add_argument("--json", required=True, help="output file")
    args = ap.parse_args()
    args.dtype = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}.get(args.dtype, args.dtype)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    names = select(args.only, cuda)
    if cuda and "peak_rss_train_lora" in names:
        print("  peak_rss_train_lora skipped: host RSS is CPU-only (see cuda_peak_mib)", flush=True)
        names.remove("peak_rss_train_lora")
    # Loaded only when a forward/decode workload needs it, so the memory child holds one model.
    shared = {}

    def base():
        if not shared:
            shared["model"] = load(args)[0]
        return shared["model"]

    def one(name: str) -> dict:
        kind, batch, length = parse(name)
        if kind == "peak_rss":
            r = peak_rss_child(args)
            print(f"  {name:<20} {r['peak_rss_mib']:9.1f} MiB", flush=True)
            return r
        if kind == "train":
            # A fresh model: peft wraps it in place, and later workloads need the bare one.
            run, items = make_train(load(args)[0], batch, length, device)
            r = measure(run, items, args.repeats, "tokens_per_s", torch.enable_grad, device)
        elif kind == "score":
            run, items = make_score(args, batch, length)
            r = measure(run, items, args.repeats, "sequences_per_s", torch.inference_mode, device)
        elif kind == "decode_lora":
            # A fresh model: peft wraps it in place, and later workloads need the bare one.
            from peft import LoraConfig, get_peft_model

            cfg = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"])
            model = get_peft_model(load(args)[0], cfg).eval()
            run, items = make_run(model, "decode", batch, length, model.config.vocab_size, device)
            r = measure(run, items, args.repeats, "tokens_per_s", torch.inference_mode, device)
        else:
            model = base()
            run, items = make_run(model, kind, batch, length, model.config.vocab_size, device)
            r = measure(run, items, args.repeats, "tokens_per_s", torch.inference_mode, device)
        print(f"  {name:<20} {r['median_s']:9.3f} s", flush=True)
        return r

    # A workload that fails (out of memory, peft missing) is recorded with its error and the rest
    # still run: one scarce GPU session yields every number it can; the exit status is then 1.
    results = {}
    failed = 0
    for name in names:
        try:
            results[name] = one(name)
        except Exception as e:  # noqa: BLE001 - recorded, and the exit status says so
            failed += 1
            results[name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"  {name:<20} failed: {results[name]['error']}", flush=True)
        if cuda:
            torch.cuda.empty_cache()

    report = {
        "peer": "pytorch",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": args.threads,
        "attn": args.attn,
        "dtype": args.dtype,
        "device": args.device,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "model": args.gguf or args.model,
        "repeats": args.repeats,
        "cpu": platform.processor() or platform.machine(),
        "results": results,
    }
    if not cuda:
        report["peak_rss_mib"] = peak_rss_mib()
    print()
    print(f"pytorch peer  torch {torch.__version__}  transformers {transformers.__version__}  "
          f"device {args.device} {report['gpu'] or ''}  dtype {args.dtype}  threads {args.threads}  "
          f"attn {args.attn}  repeats {args.repeats}")
    for name, r in results.items():
        print(f"{name:<20} {json.dumps(r)}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    if failed:
        raise SystemExit(f"{failed} workload(s) failed; see their errors in {args.json}")


if __name__ == "__main__":
    main()
