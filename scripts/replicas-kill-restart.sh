#!/usr/bin/env bash
# Scale-out check (docs/operations.md, "Three replicas behind one name"): three rllr-server
# replicas on 127.0.0.2-4 behind one name in /etc/hosts, `rllr batch` over one name; mid-job one
# replica is SIGKILLed, later started again, and another is restarted (SIGTERM, start). At the end
# every input id must be in the output exactly once; the load spread over the replicas is printed.
#
# Needs: release binaries (cargo build --release -p rllr-server -p rllr-client), the embedded
# default's models (scripts/fetch-smollm2.sh; models/quickstart ships in the repo), and root to
# append the name to /etc/hosts (or set RLLR_REPLICAS_NAME to a name that already lists the three).
#
#   bash scripts/replicas-kill-restart.sh [INPUT.jsonl] [ROWS]
set -euo pipefail
cd "$(dirname "$0")/.."
input=${1:-data/sst2/test.jsonl}
rows=${2:-1000}
bin=${RLLR_BIN_DIR:-target/release}
name=${RLLR_REPLICAS_NAME:-rllr-replicas.test}
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

if [ -z "${RLLR_REPLICAS_NAME:-}" ] && ! grep -q " $name\$" /etc/hosts; then
  printf '127.0.0.2 %s\n127.0.0.3 %s\n127.0.0.4 %s\n' "$name" "$name" "$name" >> /etc/hosts
fi
python3 - "$name" <<'EOF'
import socket, sys
a = sorted({x[4][0] for x in socket.getaddrinfo(sys.argv[1], 50051, proto=socket.IPPROTO_TCP)})
print(f"{sys.argv[1]} resolves to {a}")
assert len(a) >= 3, "the name must list three addresses (glibc: 'multi on' in /etc/host.conf)"
EOF

head -n "$rows" "$input" > "$work/in.jsonl"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), avx512f: $(grep -c avx512f /proc/cpuinfo), cores: $(nproc)"

start() { # replica index 2..4
  RAYON_NUM_THREADS=1 "$bin/rllr-server" --listen "127.0.0.$1:50051" --metrics-listen "" \
    --http-listen "" >"$work/server-$1.log" 2>&1 &
  eval "pid$1=$!"
  pids+=("$!")
}
wait_serving() {
  for _ in $(seq 600); do
    if "$bin/rllr" --endpoint "http://127.0.0.$1:50051" --resolve-every-s 0 health >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  echo "replica 127.0.0.$1 did not become ready"; cat "$work/server-$1.log"; exit 1
}
lines() { [ -f "$work/out.jsonl" ] && wc -l <"$work/out.jsonl" || echo 0; }
wait_rows() { while [ "$(lines)" -lt "$1" ]; do sleep 0.2; done; }

for r in 2 3 4; do start "$r"; done
for r in 2 3 4; do wait_serving "$r"; done
echo "three replicas serving"

t0=$(date +%s)
"$bin/rllr" --endpoint "http://$name:50051" --resolve-every-s 2 batch \
  --input "$work/in.jsonl" --out "$work/out.jsonl" --concurrency 12 --batch-size 4 \
  --no-progress 2>"$work/batch.log" &
batch=$!

wait_rows $((rows / 5))
echo "$(lines) rows: SIGKILL 127.0.0.2"; kill -KILL "$pid2"
wait_rows $((rows * 2 / 5))
echo "$(lines) rows: start 127.0.0.2 again"; start 2
wait_rows $((rows * 3 / 5))
echo "$(lines) rows: restart 127.0.0.3 (SIGTERM, then start)"; kill -TERM "$pid3"
wait "$pid3" || true
start 3
wait "$batch"
echo "batch done in $(( $(date +%s) - t0 )) s"
cat "$work/batch.log"

python3 - "$work/in.jsonl" "$work/out.jsonl" "$work/out.summary.json" <<'EOF'
import collections, json, sys
want = [json.loads(l)["id"] for l in open(sys.argv[1])]
got = collections.Counter(json.loads(l)["id"] for l in open(sys.argv[2]))
missing = [i for i in want if i not in got]
dups = [i for i, n in got.items() if n > 1]
extra = [i for i in got if i not in set(want)]
print(f"input ids {len(want)}, output rows {sum(got.values())}, missing {len(missing)}, duplicated {len(dups)}, unknown {len(extra)}")
spread = json.load(open(sys.argv[3]))["rows_per_endpoint"]
for k, v in sorted(spread.items()):
    print(f"  {v:>6} rows  {k}")
assert not missing and not dups and not extra, "every row exactly once"
assert len(spread) >= 3, "load went to every replica"
print("OK: every row exactly once")
EOF
