#!/usr/bin/env python3
"""Compares the rewards of the same trials scored on validation samples of different sizes.

Usage: benches/val-sample/analyze.py [runs/val-sample] — reads {all,20,50,200}/trials.jsonl and
validation.json written by run.sh and prints a Markdown table: per sample size the number of
images, the validation CE's standard error (median per-image SD / sqrt(n)), Kendall tau and
Spearman rho of the sample's rewards against the whole held-out part's (95% bootstrap intervals
over trials), where the sample's best trial ranks on the whole part and its regret there, the
top-5 overlap, and the mean trial time. Standard library only.
"""
import json
import math
import random
import sys
from pathlib import Path


def load(run):
    trials = {}
    for line in open(run / "trials.jsonl"):
        t = json.loads(line)
        trials[t["trial"]] = t["outcome"]
    n = len(json.load(open(run / "validation.json")))
    return trials, n


def ranks(xs):
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def kendall(a, b):
    """Kendall's tau-b (scipy's default), as autokd_search::kendall_tau_b."""
    c = d = ta = tb = pairs = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            pairs += 1
            da, db = a[i] - a[j], b[i] - b[j]
            ta += da == 0
            tb += db == 0
            c += da * db > 0
            d += da * db < 0
    den = math.sqrt((pairs - ta) * (pairs - tb))
    return (c - d) / den if den else float("nan")


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb) if va and vb else float("nan")


def bootstrap(f, a, b, reps=2000, seed=0):
    rng = random.Random(seed)
    vals = []
    for _ in range(reps):
        idx = [rng.randrange(len(a)) for _ in a]
        v = f([a[i] for i in idx], [b[i] for i in idx])
        if not math.isnan(v):
            vals.append(v)
    vals.sort()
    return vals[int(0.025 * len(vals))], vals[int(0.975 * len(vals)) - 1]


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/val-sample")
    whole, n_whole = load(root / "all")
    ok = {k: v for k, v in whole.items() if v["reward"] is not None}
    rewards = sorted((v["reward"] for v in ok.values()), reverse=True)
    mean = sum(rewards) / len(rewards)
    sd = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1))
    print(f"whole held-out part: {n_whole} images, {len(ok)} of {len(whole)} trials accepted; "
          f"rewards: SD {sd:.4f} between trials, best {rewards[0]:.4f}, 5th {rewards[4]:.4f}, "
          f"10th {rewards[9]:.4f}\n")
    print("| per class | images | CE std. error | Kendall τ [95%] | Spearman ρ [95%] | "
          "best's rank on whole | its regret | top-5 overlap | s/trial |")
    print("| ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for name in ["20", "50", "200", "all"]:
        run = root / name
        if not (run / "trials.jsonl").exists():
            continue
        trials, n = load(run)
        keys = sorted(k for k in trials if trials[k]["reward"] is not None and k in ok)
        a = [trials[k]["reward"] for k in keys]
        b = [ok[k]["reward"] for k in keys]
        sds = sorted(trials[k]["val_ce_sd"] for k in keys if trials[k].get("val_ce_sd") is not None)
        se = sds[len(sds) // 2] / math.sqrt(n) if sds else float("nan")
        tau, rho = kendall(a, b), spearman(a, b)
        tl, th = bootstrap(kendall, a, b)
        rl, rh = bootstrap(spearman, a, b)
        best = max(keys, key=lambda k: trials[k]["reward"])
        rank_whole = 1 + sum(1 for k in keys if ok[k]["reward"] > ok[best]["reward"])
        regret = max(b) - ok[best]["reward"]
        top = lambda d: set(sorted(keys, key=lambda k: -d[k]["reward"])[:5])
        overlap = len(top(trials) & top(ok))
        secs = sum(t["seconds"] for t in trials.values()) / len(trials)
        label = "all (the 10,000 cap)" if name == "all" else name
        print(f"| {label} | {n} | {se:.4f} | {tau:.3f} [{tl:.2f}, {th:.2f}] | "
              f"{rho:.3f} [{rl:.2f}, {rh:.2f}] | {rank_whole} | {regret:.4f} | {overlap}/5 | "
              f"{secs:.2f} |")


if __name__ == "__main__":
    main()
