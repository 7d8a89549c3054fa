#!/usr/bin/env bash
# The GPU check: one prepared command for a machine with an NVIDIA GPU, CUDA 13 driver, Python with
# PyTorch (cu130) + transformers, and no Rust toolchain. It runs the binaries that
# scripts/build-cuda.sh built and stripped (target/cuda/dist/), in about 8 minutes, and writes one
# JSON file and a readable summary:
#   (a) parity on the GPU: the committed tiny transformers fixtures (logits of left/right-padded
#       batches, 32 greedy tokens, a PEFT LoRA adapter, the score head), in f32 and in bf16;
#   (b) rllr-bench against PyTorch + transformers on the same card, same shapes, bf16, on
#       random-weight models written from benches/configs/*.json (SmolLM2-135M and a ~1.1B Llama),
#       so no weights travel: forward 32x512, greedy decode of 128 tokens at batch 1/8/64, a LoRA
#       step 8x512, reward scoring 16x512;
#   (c) rllr-serve-bench on the GPU: scoring at 1 and 64 clients, batcher on and off.
#
# Usage (from the repository root, on the GPU machine):
#   bash scripts/gpu-check.sh [OUT_DIR]        # default OUT_DIR: $OUT, else gpu-check-out
#   RLLR_GPU_DIST      binaries, or rllr-cuda-bundle.tar.xz holding them (default target/cuda/dist)
#   RLLR_GPU_ONLY      comma-separated parts to run: parity,bench,serve (default all)
#   RLLR_GPU_DEVICE    device (default cuda; `cpu` with CPU binaries smoke-tests this script)
#   RLLR_GPU_DTYPE     dtype of the benches (default bf16)
#   RLLR_GPU_SHAPES    benches/configs/ names (default smollm2-135m,llama-1b)
#   RLLR_GPU_WORK      rllr-bench workloads (default: the GPU set below)
#   RLLR_GPU_NO_PEER   set to skip the PyTorch peer (no torch on the machine)
#   RLLR_GPU_TOKENIZER a tokenizer.json for the serving bench (default: SmolLM2's, committed with
#                      the template fixtures)
# Each part has its own time limit, so one hung part cannot eat the others' time; the summary
# says which parts passed, failed or were skipped, and why.
set -uo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
dest="${1:-${OUT:-gpu-check-out}}"
mkdir -p "$dest"
# Parts write into a scratch folder; only gpu-check.json, summary.md and gpu-check.log land in
# OUT_DIR (the device tool brings back at most 8 files).
out="$(mktemp -d)"
dist="${RLLR_GPU_DIST:-target/cuda/dist}"
only="${RLLR_GPU_ONLY:-parity,bench,serve}"
device="${RLLR_GPU_DEVICE:-cuda}"
dtype="${RLLR_GPU_DTYPE:-bf16}"
shapes="${RLLR_GPU_SHAPES:-smollm2-135m,llama-1b}"
peer_args=(--peer-script benches/torch_peer.py)
[[ -n "${RLLR_GPU_NO_PEER:-}" ]] && peer_args=(--no-peer)
python="${PYTHON:-python3}"
tokenizer="${RLLR_GPU_TOKENIZER:-tests/fixtures/templates/smollm2/tokenizer.json}"
log="$out/gpu-check.log"
: > "$log"
say() { echo "gpu-check: $*" | tee -a "$log"; }
want() { [[ ",$only," == *",$1,"* ]]; }

# --- the CUDA 13 libraries the binaries link against, from PyTorch's NVIDIA wheels -------------
libdirs="$("$python" - <<'PY'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = set()
for r in roots:
    for so in glob.glob(os.path.join(r, "nvidia", "**", "lib", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(so))
print(":".join(sorted(dirs)))
PY
)"
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [[ ! -x "$dist/rllr-bench" && -f "$dist/rllr-cuda-bundle.tar.xz" ]]; then
    unpacked="$(mktemp -d)"
    # Python's tarfile + lzma: no reliance on the machine's tar having xz support.
    "$python" -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' \
        "$dist/rllr-cuda-bundle.tar.xz" "$unpacked" || { echo "gpu-check: cannot unpack the bundle" >&2; exit 2; }
    chmod +x "$unpacked"/rllr-*
    dist="$unpacked"
fi
for bin in rllr-bench rllr-serve-bench rllr-parity; do
    if [[ ! -x "$dist/$bin" ]]; then
        say "missing $dist/$bin: build it with scripts/build-cuda.sh and carry $dist"
        exit 2
    fi
    missing="$(ldd "$dist/$bin" | grep 'not found' || true)"
    if [[ -n "$missing" ]]; then
        say "$bin: shared libraries not found (LD_LIBRARY_PATH from PyTorch's wheels: $libdirs):"
        echo "$missing" | tee -a "$log"
        exit 2
    fi
done

nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader \
    > "$out/gpu.txt" 2>&1 || true
say "GPU: $(cat "$out/gpu.txt")"
"$python" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)' \
    2>&1 | tee "$out/python.txt" | tee -a "$log"

status_file="$out/status.txt"
: > "$status_file"
# part NAME LIMIT_S COMMAND...: run with a time limit, record pass/fail/timeout and the time.
part() {
    local name="$1" limit="$2"
    shift 2
    say "--- $name (limit ${limit}s): $*"
    local t0=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
    rc=$?
    local dt=$((SECONDS - t0)) verdict=pass
    [[ $rc -eq 0 ]] || verdict=fail
    [[ $rc -eq 124 || $rc -eq 137 ]] && verdict=timeout
    echo "$name $verdict rc=$rc ${dt}s" | tee -a "$status_file" | tee -a "$log"
}

# --- (a) parity --------------------------------------------------------------------------------
if want parity; then
    for pdtype in f32 bf16; do
        RLLR_TEST_DEVICE=$device RLLR_TEST_DTYPE=$pdtype RLLR_FIXTURES_DIR="$repo_root/tests/fixtures" \
            part "parity-$pdtype" 120 "$dist/rllr-parity" --test-threads 1 --nocapture
    done
fi

# --- (b) engine against PyTorch on the same card -------------------------------------------------
gpu_work="${RLLR_GPU_WORK:-forward_32x512,decode_b1_128,decode_b8_128,decode_b64_128,train_lora_8x512,score_16x512}"
if want bench; then
    for shape in ${shapes//,/ }; do
        part "bench-$shape" 200 "$dist/rllr-bench" --device "$device" --dtype "$dtype" \
            --random-config "benches/configs/$shape.json" --random-out "/tmp/rllr-random-$shape" \
            "${peer_args[@]}" --python "$python" \
            --only "$gpu_work" --repeats 3 --json "$out/bench-$shape.json"
    done
fi

# --- (c) serving ---------------------------------------------------------------------------------
if want serve; then
    if [[ -f "$tokenizer" ]]; then
        part serve 150 "$dist/rllr-serve-bench" --device "$device" --dtype "$dtype" \
            --random-config benches/configs/smollm2-135m.json --tokenizer "$tokenizer" \
            --clients 1,64 --requests 512 --json "$out/serve.json"
    else
        echo "serve skipped no-tokenizer 0s" | tee -a "$status_file" | tee -a "$log"
        say "serve: no tokenizer at $tokenizer"
    fi
fi

# --- one JSON + a readable summary -------------------------------------------------------------
"$python" - "$out" <<'PY'
import json, os, re, sys
out = sys.argv[1]
def read(name):
    p = os.path.join(out, name)
    return open(p).read().strip() if os.path.exists(p) else None
def load(name):
    p = os.path.join(out, name)
    try:
        return json.load(open(p))
    except Exception:
        return None
status = {}
for line in (read("status.txt") or "").splitlines():
    name, verdict, *rest = line.split()
    status[name] = {"verdict": verdict, "detail": " ".join(rest)}
log = read("gpu-check.log") or ""
parity = {}
for dtype in ("f32", "bf16"):
    block = log.split(f"--- parity-{dtype}", 1)[-1].split("--- ", 1)[0] if f"--- parity-{dtype}" in log else ""
    parity[dtype] = {
        "deltas": re.findall(r"^(.*max \|Δ\|.*)$", block, re.M),
        "result": re.findall(r"^test result: .*$", block, re.M),
    }
report = {"gpu": read("gpu.txt"), "python": read("python.txt"), "parts": status, "parity": parity,
          "bench": {f[6:-5]: load(f) for f in sorted(os.listdir(out)) if f.startswith("bench-") and f.endswith(".json")},
          "serve": load("serve.json")}
json.dump(report, open(os.path.join(out, "gpu-check.json"), "w"), indent=2)

lines = [f"# rllr GPU check", "", f"GPU: {report['gpu']}", f"Python: {report['python']}", "",
         "| part | verdict | detail |", "|---|---|---|"]
lines += [f"| {k} | {v['verdict']} | {v['detail']} |" for k, v in status.items()]
for dtype, p in parity.items():
    if p["result"]:
        lines += ["", f"## parity {dtype}", *[f"- {d}" for d in p["deltas"]], *[f"- {r}" for r in p["result"]]]
for shape, b in report["bench"].items():
    if not b:
        continue
    lines += ["", f"## rllr-bench {shape} ({b.get('device')}, {b.get('dtype')}), rllr / PyTorch time", "",
              "| work | rllr s | PyTorch s | ratio |", "|---|---:|---:|---:|"]
    peer = ((b.get("peer") or {}).get("results")) or {}
    for name, r in (b.get("rllr") or {}).items():
        if not isinstance(r, dict) or "median_s" not in r:
            continue
        p = (peer.get(name) or {}).get("median_s")
        ratio = f"{r['median_s'] / p:.2f}×" if p else "-"
        lines.append(f"| {name} | {r['median_s']:.4f} | {'-' if p is None else f'{p:.4f}'} | {ratio} |")
if report["serve"]:
    lines += ["", "## rllr-serve-bench", "", "```", json.dumps(report["serve"], indent=1)[:4000], "```"]
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY

cp "$out/gpu-check.json" "$out/summary.md" "$log" "$dest/" 2>/dev/null
say "wrote $dest/gpu-check.json, $dest/summary.md, $dest/gpu-check.log"
grep -qv ' pass ' "$status_file" && exit 1
exit 0
