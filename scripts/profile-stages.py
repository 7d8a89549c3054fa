#!/usr/bin/env python3
"""Where a pipeline run's CPU time goes, stage by stage: splits a `perf record` of
`rllr-train pipeline` by the stages' wall-clock windows (each `<run_dir>/<task>/<stage>/stage.json`
has `finished_at` and `wall_s`) and sorts the samples into kinds of work (gemm, the skinny decode
kernels, page zeroing, softmax, ...). Prints a Markdown table, percent of each stage's samples.

Record without call graphs (a 49 Hz sampler costs well under 1 %, and a whole run stays small):

    date -u +%FT%TZ > start
    perf record -F 49 -o perf.data -- target/release/rllr-train pipeline configs/quickstart.toml
    scripts/profile-stages.py runs/quickstart perf.data "$(cat start)"

The third argument is when perf started (UTC, ISO 8601): perf's timestamps count from boot, so
the first sample is pinned to it; a stage boundary is therefore accurate to about a second.
"""
import collections
import datetime
import glob
import json
import subprocess
import sys

# Kinds of work, tried in order against the sampled symbol.
KINDS = [
    ("gemm", ("gemm_f32", "gemm_common")),
    ("skinny kernels", ("rllr_core::skinny",)),
    ("page zeroing", ("clear_page", "folio_zero")),
    ("softmax", ("Softmax", "softmax")),
    ("exp", ("expf", "xflowf", "ieee754_exp", "exp@@")),
    ("swiglu", ("SwiGlu", "swiglu")),
    ("rms_norm", ("RmsNorm", "rms_norm")),
    ("rope", ("Rope", "rope")),
    ("attention", ("attention", "Attention")),
    ("copies / fill", ("memmove", "memcpy", "memset", "copy_strided", "copy2d")),
    ("allocator", ("mi_", "_mi_")),
    ("candle elementwise", ("binary_map", "unary_map", "cpu_backend")),
    ("thread sync", ("sched_yield", "futex", "BarrierGuard", "rayon", "crossbeam", "__schedule",
                     "finish_task_switch")),
]
OTHER = "other"


def kind(sym):
    for name, needles in KINDS:
        if any(n in sym for n in needles):
            return name
    return OTHER


def stages(run_dir):
    out = []
    for p in glob.glob(f"{run_dir}/*/*/stage.json"):
        s = json.load(open(p))
        task = p.split("/")[-3]
        out.append((s["finished_at"] - s["wall_s"], s["finished_at"], f"{task} {s['stage']}", s["wall_s"]))
    return sorted(out)


def samples(data):
    text = subprocess.run(["perf", "script", "-i", data, "-F", "time,ip,sym"],
                          capture_output=True, text=True, check=True).stdout
    for line in text.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 2:
            continue
        try:
            t = float(parts[0].rstrip(":"))
        except ValueError:
            continue
        yield t, (parts[2] if len(parts) > 2 else "").split("+0x")[0]


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    run_dir, data, start = sys.argv[1:]
    t0 = datetime.datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp()
    windows = stages(run_dir)
    if not windows:
        sys.exit(f"no stage.json under {run_dir}/<task>/<stage>/")
    per = collections.defaultdict(collections.Counter)
    base = None
    for t, sym in samples(data):
        base = t if base is None else base
        wall = t0 + (t - base)
        name = next((n for a, b, n, _ in windows if a <= wall <= b), "between stages")
        per[name][kind(sym)] += 1
    cols = [k for k, _ in KINDS] + [OTHER]
    print("| stage | wall (s) | samples | " + " | ".join(cols) + " |")
    print("|---|---:|---:|" + "---:|" * len(cols))
    total = collections.Counter()
    for _, _, name, wall in windows + [(0, 0, "between stages", 0.0)]:
        c = per.get(name)
        if not c:
            continue
        total.update(c)
        n = sum(c.values())
        print(f"| {name} | {wall:.0f} | {n} | " + " | ".join(f"{100 * c[k] / n:.0f}" for k in cols) + " |")
    n = sum(total.values())
    print(f"| all | {sum(w for *_, w in windows):.0f} | {n} | "
          + " | ".join(f"{100 * total[k] / n:.0f}" for k in cols) + " |")


if __name__ == "__main__":
    main()
