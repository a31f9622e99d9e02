#!/usr/bin/env python3
"""Summarise benches/peers/run.sh output (CSV on stdin or in the files named).

Per workload: each engine's median IOPS and CPU us/IO over its repetitions, and its median
of per-repetition ratios iocomplete / engine (IOPS: > 1 means iocomplete is ahead; CPU:
< 1 means iocomplete spends less per I/O); then iocomplete / the best peer of each
repetition (whichever it was), median and range. The ratios pair runs of the same repetition
only, so drifts in the machine's load hit both sides of each ratio alike.

iocomplete's own variants (`iocomplete_*`, e.g. `iocomplete_tokio`, its async layer; `ioc_*`,
A/B builds) are not peers: they are left out of the best peer, and each gets its own line,
variant / iocomplete and variant / tokio_uring (its peer: one thread, futures), medians of
the per-repetition ratios (IOPS, CPU per I/O).
"""
import csv
import statistics
import sys
from collections import defaultdict


def main():
    files = [open(p) for p in sys.argv[1:]] or [sys.stdin]
    rows = []
    for f in files:
        lines = [l for l in f if l.strip() and not l.startswith("#")]
        rows += list(csv.DictReader(lines))
    runs = defaultdict(dict)  # (workload, rep) -> engine -> (iops, cpu)
    order = []
    for r in rows:
        if not r.get("cpu_us_per_io"):
            continue  # a truncated line
        key = (r["workload"], r.get("rep", "1"))
        runs[key][r["engine"]] = (float(r["iops"]), float(r["cpu_us_per_io"]))
        if r["workload"] not in order:
            order.append(r["workload"])
    med = statistics.median

    def ours(e):
        return e == "iocomplete" or e.startswith("iocomplete_") or e.startswith("ioc_")
    for wl in order:
        reps = {k[1]: v for k, v in runs.items() if k[0] == wl}
        engines = []
        for v in reps.values():
            engines += [e for e in v if e not in engines]
        print(f"\n{wl} ({len(reps)} reps)")
        print(f"  {'engine':<15} {'IOPS':>10} {'CPU us/IO':>10} {'ioc/eng IOPS':>13} {'ioc/eng CPU':>12}")
        best = None
        for e in engines:
            iops = [v[e][0] for v in reps.values() if e in v]
            cpu = [v[e][1] for v in reps.values() if e in v]
            r_iops = [v["iocomplete"][0] / v[e][0] for v in reps.values() if e in v and "iocomplete" in v]
            r_cpu = [v["iocomplete"][1] / v[e][1] for v in reps.values() if e in v and "iocomplete" in v]
            ri = f"{med(r_iops):.2f}x" if r_iops else "-"
            rc = f"{med(r_cpu):.2f}x" if r_cpu else "-"
            rng = f" ({min(r_iops):.2f}-{max(r_iops):.2f})" if len(r_iops) > 1 else ""
            print(f"  {e:<15} {med(iops):>10.0f} {med(cpu):>10.3f} {ri:>13}{rng} {rc:>6}")
            if not ours(e) and r_iops and (best is None or med(iops) > best[1]):
                best = (e, med(iops), med(r_iops))
        if best:
            verdict = "ahead" if best[2] >= 1.0 else "BEHIND"
            print(f"  best peer (highest median IOPS): {best[0]}; iocomplete / {best[0]} = "
                  f"{best[2]:.2f}x (median of per-rep ratios): {verdict}")
        # Per repetition: iocomplete / the best peer of that repetition; then the median.
        # Stricter, and biased against iocomplete when runs are noisy (the maximum of several
        # noisy peers against one noisy iocomplete): read it on a quiet machine.
        per_rep = []
        for v in reps.values():
            peers = [(x[0], e) for e, x in v.items() if not ours(e)]
            if "iocomplete" in v and peers:
                top = max(peers)
                per_rep.append((v["iocomplete"][0] / top[0], top[1]))
        if per_rep:
            r = med([x[0] for x in per_rep])
            print(f"  iocomplete / best peer of each rep: median {r:.2f}x, "
                  f"range {min(x[0] for x in per_rep):.2f}-{max(x[0] for x in per_rep):.2f}")
        # iocomplete's variants against iocomplete and against tokio_uring, per repetition.
        for e in engines:
            if not ours(e) or e == "iocomplete":
                continue
            for base in ("iocomplete", "tokio_uring"):
                pairs = [(v[e], v[base]) for v in reps.values() if e in v and base in v]
                if not pairs:
                    continue
                ri = [a[0] / b[0] for a, b in pairs]
                rc = [a[1] / b[1] for a, b in pairs]
                rng = f" ({min(ri):.2f}-{max(ri):.2f})" if len(ri) > 1 else ""
                print(f"  {e} / {base}: IOPS {med(ri):.2f}x{rng}, CPU/IO {med(rc):.2f}x "
                      f"(median of {len(pairs)} per-rep ratios)")

if __name__ == "__main__":
    main()
