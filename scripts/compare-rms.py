#!/usr/bin/env python3
"""Compare two reward models scored on the same pairs, pair by pair.

Each input is the JSONL `rllr-train eval reward --scores FILE` writes ({"id", "chosen",
"rejected"} per pair). A pair counts as right when chosen > rejected (strictly, as `eval reward`
counts it). Prints both accuracies, the discordant pairs (right under one model only) and the exact
two-sided McNemar p-value (a binomial test on the discordant pairs), which is the right test for
two models on the same pairs: their errors are correlated, so two separate confidence intervals
overstate the noise.

    python3 scripts/compare-rms.py label-scores.jsonl rationale-scores.jsonl
"""

import json
import sys
from math import comb


def load(path):
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["id"]: r["chosen"] > r["rejected"] for r in rows}, [r["id"] for r in rows]


def mcnemar_exact(b, c):
    """Two-sided exact p-value of b vs c discordant pairs under H0: p = 1/2."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    (a, ids_a), (b, ids_b) = load(sys.argv[1]), load(sys.argv[2])
    if sorted(ids_a) != sorted(ids_b):
        sys.exit("the two files do not score the same pair ids")
    n = len(ids_a)
    only_a = sum(a[i] and not b[i] for i in ids_a)
    only_b = sum(b[i] and not a[i] for i in ids_a)
    both = sum(a[i] and b[i] for i in ids_a)
    print(f"pairs {n}")
    print(f"A {sys.argv[1]}: accuracy {sum(a.values()) / n:.4f}")
    print(f"B {sys.argv[2]}: accuracy {sum(b.values()) / n:.4f}")
    print(f"right under both {both}, A only {only_a}, B only {only_b}, neither {n - both - only_a - only_b}")
    print(f"McNemar exact two-sided p = {mcnemar_exact(only_a, only_b):.4g}")


if __name__ == "__main__":
    main()
