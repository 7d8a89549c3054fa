#!/usr/bin/env bash
# kill -9 during PPO, then resume (issue 7): runs the quickstart's PPO stage config (rllr mode) into
# a scratch directory, SIGKILLs the process once a step after the first checkpoint has been logged,
# checks that only complete checkpoints are left (no temp dirs, every checkpoint has state.json),
# resumes with --resume and checks the run finishes with one metrics record per step.
# Usage: scripts/ppo-kill-resume.sh [STEPS] (after `rllr-train pipeline configs/quickstart.toml`).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-6}
cfg=runs/quickstart/configs/comve/ppo-rllr.toml
out=$(mktemp -d)/ppo
bin=target/release/rllr-train
[ -f "$cfg" ] || { echo "run the quickstart pipeline first ($cfg missing)"; exit 1; }
common=(ppo --config "$cfg" --output "$out" --max-steps "$steps" --save-every 2)
"$bin" "${common[@]}" > "$out.log" 2>&1 &
pid=$!
until [ -f "$out/metrics.jsonl" ] && [ "$(wc -l < "$out/metrics.jsonl")" -ge 3 ]; do
  kill -0 $pid 2>/dev/null || { echo "ppo exited early"; cat "$out.log"; exit 1; }
  sleep 1
done
kill -9 $pid; wait $pid 2>/dev/null || true
echo "killed after $(wc -l < "$out/metrics.jsonl") logged steps; checkpoints: $(ls "$out/checkpoints" | tr '\n' ' ')"
for d in "$out"/checkpoints/*; do
  case "$(basename "$d")" in step-*) ;; *) echo "stray entry $d"; exit 1;; esac
  [ -f "$d/state.json" ] && [ -f "$d/trainable.safetensors" ] && [ -f "$d/optimizer.safetensors" ] || { echo "incomplete checkpoint $d"; exit 1; }
done
"$bin" "${common[@]}" --resume > "$out.resume.log" 2>&1
grep -E "resuming from" "$out.resume.log"
n=$(wc -l < "$out/metrics.jsonl")
steps_logged=$(python3 -c "import json,sys; print(sorted(json.loads(l)['step'] for l in open('$out/metrics.jsonl')))")
echo "after resume: $n metrics records, steps $steps_logged"
[ "$n" -eq "$steps" ] && [ -f "$out/model/adapter_model.safetensors" ] && echo "OK: resumed and finished; policy adapter at $out/model"
