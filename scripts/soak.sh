#!/usr/bin/env bash
# Soak check (docs/operations.md, "Soak"): one rllr-server on the embedded default
# (server/server.toml), then `rllr-soak` against it: a closed-loop capacity probe, then 30 minutes
# of open-loop mixed scoring (label + rationale reward models) and classification at 80 % of the
# measured capacity. Passes when there is no error other than RESOURCE_EXHAUSTED, the server's RSS
# grows ≤ 5 % after the 5-minute warm-up (median of the first 5 minutes after it against the median
# of the last 5), and the p99 is stable: the last 5 minutes' p99 ≤ 1.5× the first 5's, or else
# no significant upward trend in the per-minute p99 and the last 5 minutes ≤ 1.5× the median
# 5-minute block (docs/operations.md, "Soak"). /metrics is scraped every 15 s throughout. At the
# end the server gets SIGTERM and must exit 0.
#
# Needs: release binaries (cargo build --release -p rllr-server -p rllr-benches) and the embedded
# default's models (scripts/fetch-smollm2.sh; models/quickstart ships in the repo). Run it on a
# quiet machine: the capacity is measured once, at the start.
#
#   bash scripts/soak.sh [REPORT.json]      extra rllr-soak flags via RLLR_SOAK_* variables
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benches/results/soak-cpu-2core.json}
bin=${RLLR_BIN_DIR:-target/release}
addr=${RLLR_SOAK_LISTEN:-127.0.0.1:50071}
metrics=${RLLR_SOAK_METRICS_LISTEN:-127.0.0.1:9071}
work=$(mktemp -d)
server=
scraper=
trap 'kill $scraper $server 2>/dev/null; rm -rf "$work"' EXIT

"$bin/rllr-server" --listen "$addr" --metrics-listen "$metrics" --http-listen "" \
  >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 600); do
  "$bin/rllr" --endpoint "http://$addr" --resolve-every-s 0 health >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log"; exit 1; }
  sleep 0.5
done
echo "server $server serving on $addr"
# Scrape /metrics every 15 s, as Prometheus would, so the exporter is part of the soak.
(while sleep 15; do curl -fsS "http://$metrics/metrics" >"$work/metrics.txt" || echo "scrape failed"; done) &
scraper=$!

rc=0
"$bin/rllr-soak" --url "http://$addr" --server-pid "$server" --out "$out" >/dev/null || rc=$?

kill "$scraper"; scraper=
grep -E '^rllr_requests_total' "$work/metrics.txt" | head -20 || true
kill -TERM "$server"
wait "$server" && echo "server exited 0 after SIGTERM" || { echo "server exit $?"; rc=1; }
server=
grep -c '"level":"ERROR"\| ERROR ' "$work/server.log" | sed 's/^/server log ERROR lines: /' || true
echo "report: $out"
exit "$rc"
