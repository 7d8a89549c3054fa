#!/usr/bin/env bash
# PPO cross-check: rllr-train ppo vs TRL 0.7.2's PPOTrainer.step on the same M_sft, label RM,
# prompts and settings (configs/trl-crosscheck.toml); writes runs/trl-crosscheck/ and
# docs/ppo-vs-trl.svg. See docs/ppo-vs-trl.md.
#
#   bash scripts/trl-ppo-crosscheck.sh            # everything (~45 min on 2 busy cores)
#   RLLR_TRAIN_BIN=target/release/rllr-train THREADS=2 bash scripts/trl-ppo-crosscheck.sh
#
# Needs: python3.11 (tomllib), models/smollm2-135m-instruct (scripts/fetch-smollm2.sh) and a built
# rllr-train (cargo build --release -p rllr-trainer). Only PyPI is used; no hub downloads.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${RLLR_TRAIN_BIN:-target/release/rllr-train}
THREADS=${THREADS:-2}
VENV=${VENV:-.venv-trl}
OUT=runs/trl-crosscheck
PY=$VENV/bin/python

if [ ! -x "$PY" ] || ! "$PY" -c "import trl, peft, matplotlib" 2>/dev/null; then
    python3 -m venv "$VENV"
    # TRL 0.7.2 (the paper's) with the transformers/peft/accelerate of its time; pyarrow < 15
    # because later ones need NumPy 2, which torch 2.1 does not take.
    "$VENV/bin/pip" install -q "torch==2.1.2" "transformers==4.36.2" "tokenizers==0.15.2" \
        "trl==0.7.2" "peft==0.7.1" "accelerate==0.25.0" "datasets==2.16.1" "pyarrow==14.0.2" \
        "numpy==1.26.4" "matplotlib==3.11.2"
fi
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS RAYON_NUM_THREADS=$THREADS
mkdir -p "$OUT"
{ date -u; uptime; echo "avx512f lines: $(grep -c avx512f /proc/cpuinfo || true)"; nproc; } > "$OUT/machine.txt"

# 1. One M_sft for both sides (peft merge of the shipped SFT adapter), the label RM re-based on it.
"$PY" scripts/trl-ppo-crosscheck.py prepare

# 2. The RM in transformers vs rllr-train eval reward on 12 texts (6 label pairs of the dev split).
head -6 data/comve/dev.jsonl > "$OUT/dev6.jsonl"
"$BIN" pairs label --task comve --data "$OUT/dev6.jsonl" --output "$OUT/pairs6.jsonl"
"$BIN" eval reward --model "$OUT/rm-label" --base "$OUT/msft" --task data/tasks/comve.json \
    --pairs "$OUT/pairs6.jsonl" --scores "$OUT/rllr-rm-scores.jsonl"
"$PY" scripts/trl-ppo-crosscheck.py check-rm --threads "$THREADS" --pairs "$OUT/pairs6.jsonl" \
    --rllr-scores "$OUT/rllr-rm-scores.jsonl" | tee "$OUT/check-rm.md"

# 3. rllr's PPO, then TRL's (one after the other: never two heavy jobs on the same cores).
rm -rf "$OUT/rllr"
"$BIN" ppo --config configs/trl-crosscheck.toml 2>&1 | tee "$OUT/rllr.log"
"$PY" scripts/trl-ppo-crosscheck.py trl --threads "$THREADS" --output "$OUT/trl" 2>&1 | tee "$OUT/trl.log"

# 4. Table + plot.
{ date -u; uptime; } >> "$OUT/machine.txt"
"$PY" scripts/trl-ppo-crosscheck.py compare --table "$OUT/table.md" --svg docs/ppo-vs-trl.svg
