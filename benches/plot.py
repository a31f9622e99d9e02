#!/usr/bin/env python3
"""Summarise and plot the raw results of benches/compare.sh (standard library only).

    python3 benches/plot.py RESULTS.csv [--out perf/] [--summary-only]

Prints, per workload, the median and min-max of every engine's IOPS, its CPU time per
I/O and latency, and iobench's ratios to each peer measured in the same run: the ratio of
medians, and the median (min-max) of the per-repetition ratios (each repetition runs the
engines back to back, so a paired ratio cancels slow drifts in machine load). In a
workload with `iobench_threads` (`FALLBACK=1 benches/compare.sh`) the ratios are those of
iobench on the thread-pool backend, with a line per QD against fio psync and posixaio. Renders
hand-written SVG plots: IOPS vs QD and CPU/IO vs QD for each random-read workload, and
bandwidth per engine for the sequential ones.
"""

import argparse
import csv
import math
import os
import statistics
import sys
from collections import defaultdict

ENGINE_LABEL = {
    "iobench_threads": "iobench, threads backend",
    "iobench": "iobench (iocomplete)",
    "fio_uring": "fio io_uring",
    "fio_psync": "fio psync",
    "fio_libaio": "fio libaio",
    "fio_posixaio": "fio posixaio",
    "dd": "dd",
}
COLOR = {
    "iobench_threads": "#ff7f0e",
    "iobench": "#d62728",
    "fio_uring": "#1f77b4",
    "fio_psync": "#2ca02c",
    "fio_libaio": "#9467bd",
    "fio_posixaio": "#8c564b",
    "dd": "#7f7f7f",
}
WORKLOAD_TITLE = {
    "cached_randread": "4 KiB random read, page-cached file",
    "loop_direct_randread": "4 KiB random read, O_DIRECT, loop device on tmpfs",
    "disk_direct_randread": "4 KiB random read, O_DIRECT, file on the root disk",
    "cached_seqread": "sequential read, page-cached (QD 4; dd QD 1)",
    "direct_seqread": "sequential read, O_DIRECT (QD 4; dd QD 1)",
    "fallback_cached_randread": "thread-pool backend: 4 KiB random read, page-cached file",
    "fallback_loop_direct_randread": "thread-pool backend: 4 KiB random read, O_DIRECT, loop device on tmpfs",
}


def load(path):
    meta, rows = [], []
    with open(path) as f:
        lines = []
        for line in f:
            if line.startswith("#"):
                meta.append(line[1:].strip())
            elif line.strip():
                lines.append(line)
    for r in csv.DictReader(lines):
        for k in ("iops", "bw_bytes", "lat_p50_ns", "lat_p99_ns", "cpu_usr", "cpu_sys"):
            r[k] = float(r[k])
        r["qd"] = int(r["qd"])
        r["rep"] = int(r["rep"])
        cpu = (r["cpu_usr"] + r["cpu_sys"]) / 100.0
        # CPU time per I/O in microseconds (core-seconds per second / I/O per second).
        r["cpu_us_per_io"] = cpu / r["iops"] * 1e6 if r["iops"] > 0 and cpu > 0 else float("nan")
        rows.append(r)
    return meta, rows


def bs_bytes(bs):
    bs = bs.lower()
    return int(bs.rstrip("km")) * {"k": 1024, "m": 1 << 20}.get(bs[-1], 1)


def med(xs):
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else float("nan")


def fmt_iops(x):
    if math.isnan(x):
        return "-"
    return f"{x / 1e6:.3f} M" if x >= 1e6 else f"{x / 1e3:.1f} K"


def fmt_range(xs, f):
    return f"{f(min(xs))}–{f(max(xs))}" if len(xs) > 1 else f(xs[0])


def paired(ours, theirs, key="iops"):
    """Per-repetition ratios ours ÷ theirs of `key`, over the repetitions both ran."""
    by_rep = {r["rep"]: r[key] for r in theirs}
    return [r[key] / by_rep[r["rep"]] for r in ours if r["rep"] in by_rep and by_rep[r["rep"]] > 0]


def summarise(meta, rows, out=sys.stdout):
    w = out.write
    for m in meta:
        w(f"    {m}\n")
    groups = defaultdict(list)
    for r in rows:
        groups[(r["workload"], r["bs"], r["qd"], r["engine"])].append(r)
    workloads = []
    for r in rows:
        if r["workload"] not in workloads:
            workloads.append(r["workload"])
    for wl in workloads:
        # The engine whose ratios the table gives: the thread-pool backend where it ran.
        me = "iobench_threads" if any(x == wl and e == "iobench_threads" for (x, _, _, e) in groups) else "iobench"
        w(f"\n### {WORKLOAD_TITLE.get(wl, wl)} (`{wl}`)\n\n")
        w(f"| bs | QD | engine | IOPS median (min–max) | MiB/s | CPU µs/IO | usr+sys % | lat p50 / p99 µs | {me} ÷ this: IOPS (paired reps) | CPU/IO |\n")
        w("|---|---|---|---|---|---|---|---|---|---|\n")
        keys = sorted({(b, q) for (x, b, q, _) in groups if x == wl}, key=lambda k: (bs_bytes(k[0]), k[1]))
        for bs, qd in keys:
            engines = [e for (x, b, q, e) in groups if (x, b, q) == (wl, bs, qd)]
            order = sorted(engines, key=lambda e: list(ENGINE_LABEL).index(e) if e in ENGINE_LABEL else 99)
            ours = groups.get((wl, bs, qd, me), [])
            for e in order:
                g = groups[(wl, bs, qd, e)]
                iops = [r["iops"] for r in g]
                cpu = med([r["cpu_us_per_io"] for r in g])
                util = med([r["cpu_usr"] + r["cpu_sys"] for r in g])
                p50 = med([r["lat_p50_ns"] for r in g]) / 1e3
                p99 = med([r["lat_p99_ns"] for r in g]) / 1e3
                lat = f"{p50:.1f} / {p99:.1f}" if p50 > 0 else "-"
                ratio = cpu_ratio = ""
                if e != me and ours:
                    rm = med([r["iops"] for r in ours]) / med(iops)
                    pr = paired(ours, g)
                    # The headline is the median of the per-repetition ratios: each
                    # repetition runs the engines back to back, so a paired ratio cancels
                    # slow drifts in machine load; the ratio of medians does not.
                    if pr:
                        ratio = f"**{med(pr):.2f}×** ({fmt_range(pr, lambda x: f'{x:.2f}')}; of medians {rm:.2f}×)"
                    else:
                        ratio = f"{rm:.2f}× (of medians; no paired repetition)"
                    oc = med([r["cpu_us_per_io"] for r in ours])
                    if not math.isnan(oc) and not math.isnan(cpu) and oc > 0:
                        cpu_ratio = f"{oc / cpu:.2f}×"
                w(
                    f"| {bs} | {qd} | {ENGINE_LABEL.get(e, e)} | {fmt_iops(med(iops))} ({fmt_range(iops, fmt_iops)}) "
                    f"| {med([r['bw_bytes'] for r in g]) / (1 << 20):.0f} | {cpu:.2f} | {util:.0f} | {lat} | {ratio} | {cpu_ratio} |\n"
                )
        if wl == "cached_randread":
            ps = groups.get((wl, "4k", 1, "fio_psync"))
            if ps:
                by_rep = {r["rep"]: r for r in ps}
                w("\niobench at each QD against fio psync at QD 1 (synchronous, one thread; same run, "
                  "median of per-repetition ratios): ")
                parts = []
                for (x, b, q, e), g in sorted(groups.items(), key=lambda kv: kv[0][2]):
                    if (x, b, e) == (wl, "4k", "iobench"):
                        pairs = [(r, by_rep[r["rep"]]) for r in g if r["rep"] in by_rep]
                        if not pairs:
                            continue
                        parts.append(
                            f"QD {q}: **{med([a['iops'] / b['iops'] for a, b in pairs]):.2f}×** IOPS, "
                            f"{med([a['cpu_us_per_io'] / b['cpu_us_per_io'] for a, b in pairs]):.2f}× CPU/IO"
                        )
                w("; ".join(parts) + ".\n")
        if me == "iobench_threads":
            w(f"\n{me} ÷ peer, same run (IOPS: median of per-repetition ratios (range); CPU/IO: median of per-repetition ratios):\n\n")
            for bs, qd in keys:
                ours = groups.get((wl, bs, qd, me), [])
                parts = []
                for e in ("fio_psync", "fio_posixaio", "iobench"):
                    g = groups.get((wl, bs, qd, e), [])
                    pr, pc = paired(ours, g), paired(ours, g, "cpu_us_per_io")
                    if pr:
                        parts.append(
                            f"÷ {ENGINE_LABEL[e]} **{med(pr):.2f}×** ({fmt_range(pr, lambda x: f'{x:.2f}')}), CPU/IO {med(pc):.2f}×"
                        )
                if parts:
                    w(f"* {bs} QD {qd}: " + "; ".join(parts) + "\n")
    w(
        "\nCPU µs/IO = (usr+sys)/100 ÷ IOPS: core time per I/O, which holds up better than raw "
        "IOPS when other processes take CPU. Ratios: the median of the per-repetition ratios "
        "iobench ÷ peer (iobench_threads ÷ peer where the thread-pool backend ran; bold), their "
        "range, then the ratio of the medians.\n"
    )


# --- SVG --------------------------------------------------------------------------------------


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def nice_max(v):
    if v <= 0 or math.isnan(v):
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def svg_doc(width, height, body, title):
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">\n'
        f'<rect width="100%" height="100%" fill="white"/>\n'
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{esc(title)}</text>\n'
        + body
        + "</svg>\n"
    )


def line_chart(title, ylabel, series, subtitle=""):
    """series: list of (engine, [(qd, median, lo, hi)], dashed)."""
    W, H = 720, 430
    L, R, T, B = 80, 190, 50, 60
    pw, ph = W - L - R, H - T - B
    xs = sorted({p[0] for _, pts, _ in series for p in pts})
    if not xs:
        return None
    ymax = nice_max(max(p[3] for _, pts, _ in series for p in pts if not math.isnan(p[3])) * 1.05)
    lx = [math.log2(x) for x in xs]
    x0, x1 = min(lx), max(lx)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1

    def X(q):
        return L + (math.log2(q) - x0) / (x1 - x0) * pw

    def Y(v):
        return T + ph - v / ymax * ph

    b = [subtitle_svg(W, subtitle)]
    for i in range(6):
        v = ymax * i / 5
        y = Y(v)
        b.append(f'<line x1="{L}" y1="{y:.1f}" x2="{L + pw}" y2="{y:.1f}" stroke="#ddd"/>\n')
        label = f"{v / 1e3:.0f}K" if ymax >= 1e4 else (f"{v:.2f}" if ymax < 10 else f"{v:.0f}")
        b.append(f'<text x="{L - 8}" y="{y + 4:.1f}" text-anchor="end">{label}</text>\n')
    for q in xs:
        b.append(f'<line x1="{X(q):.1f}" y1="{T}" x2="{X(q):.1f}" y2="{T + ph}" stroke="#eee"/>\n')
        b.append(f'<text x="{X(q):.1f}" y="{T + ph + 18}" text-anchor="middle">{q}</text>\n')
    b.append(f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>\n')
    b.append(f'<text x="{L + pw / 2}" y="{H - 18}" text-anchor="middle">queue depth (log scale)</text>\n')
    b.append(
        f'<text x="18" y="{T + ph / 2}" text-anchor="middle" transform="rotate(-90 18 {T + ph / 2})">{esc(ylabel)}</text>\n'
    )
    for i, (eng, pts, dashed) in enumerate(series):
        c = COLOR.get(eng, "#000")
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        if dashed and len(pts) == 1:
            q, m, lo, hi = pts[0]
            b.append(f'<line x1="{L}" y1="{Y(m):.1f}" x2="{L + pw}" y2="{Y(m):.1f}" stroke="{c}" stroke-width="2"{dash}/>\n')
            b.append(f'<rect x="{L}" y="{Y(hi):.1f}" width="{pw}" height="{max(Y(lo) - Y(hi), 0.5):.1f}" fill="{c}" opacity="0.12"/>\n')
        else:
            path = " ".join(f"{'M' if j == 0 else 'L'}{X(q):.1f},{Y(m):.1f}" for j, (q, m, _, _) in enumerate(pts))
            b.append(f'<path d="{path}" fill="none" stroke="{c}" stroke-width="2.2"{dash}/>\n')
            for q, m, lo, hi in pts:
                b.append(f'<line x1="{X(q):.1f}" y1="{Y(lo):.1f}" x2="{X(q):.1f}" y2="{Y(hi):.1f}" stroke="{c}"/>\n')
                b.append(f'<circle cx="{X(q):.1f}" cy="{Y(m):.1f}" r="3.5" fill="{c}"/>\n')
        ly = T + 10 + i * 22
        b.append(f'<line x1="{L + pw + 15}" y1="{ly}" x2="{L + pw + 45}" y2="{ly}" stroke="{c}" stroke-width="2.5"{dash}/>\n')
        name = ENGINE_LABEL.get(eng, eng) + (" (QD 1)" if dashed else "")
        b.append(f'<text x="{L + pw + 50}" y="{ly + 4}">{esc(name)}</text>\n')
    b.append(
        f'<text x="{L + pw + 15}" y="{T + ph - 4}" fill="#555" font-size="10">dot: median; bar: min–max</text>\n'
    )
    return svg_doc(W, H, "".join(b), title)


def subtitle_svg(W, subtitle):
    """The subtitle line of a chart `W` wide (nothing without one)."""
    if not subtitle:
        return ""
    return f'<text x="{W / 2}" y="40" text-anchor="middle" fill="#555">{esc(subtitle)}</text>\n'


def bar_chart(title, groups, subtitle=""):
    """groups: list of (label, [(engine, median, lo, hi)]) in MiB/s."""
    W, H = 760, 430
    L, R, T, B = 80, 170, 50, 70
    pw, ph = W - L - R, H - T - B
    vmax = nice_max(max(hi for _, bars in groups for _, _, _, hi in bars) * 1.05)

    def Y(v):
        return T + ph - v / vmax * ph

    b = [subtitle_svg(W, subtitle)]
    for i in range(6):
        v = vmax * i / 5
        b.append(f'<line x1="{L}" y1="{Y(v):.1f}" x2="{L + pw}" y2="{Y(v):.1f}" stroke="#ddd"/>\n')
        b.append(f'<text x="{L - 8}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>\n')
    gw = pw / max(len(groups), 1)
    engines = []
    for gi, (label, bars) in enumerate(groups):
        bw = gw * 0.8 / max(len(bars), 1)
        for bi, (eng, m, lo, hi) in enumerate(bars):
            if eng not in engines:
                engines.append(eng)
            x = L + gi * gw + gw * 0.1 + bi * bw
            c = COLOR.get(eng, "#000")
            b.append(f'<rect x="{x:.1f}" y="{Y(m):.1f}" width="{bw * 0.9:.1f}" height="{T + ph - Y(m):.1f}" fill="{c}"/>\n')
            cx = x + bw * 0.45
            b.append(f'<line x1="{cx:.1f}" y1="{Y(lo):.1f}" x2="{cx:.1f}" y2="{Y(hi):.1f}" stroke="#000"/>\n')
        b.append(f'<text x="{L + gi * gw + gw / 2:.1f}" y="{T + ph + 18}" text-anchor="middle">{esc(label)}</text>\n')
    b.append(f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>\n')
    b.append(
        f'<text x="18" y="{T + ph / 2}" text-anchor="middle" transform="rotate(-90 18 {T + ph / 2})">MiB/s (median; bar: min–max)</text>\n'
    )
    for i, eng in enumerate(engines):
        ly = T + 10 + i * 22
        b.append(f'<rect x="{L + pw + 15}" y="{ly - 8}" width="14" height="14" fill="{COLOR.get(eng, "#000")}"/>\n')
        b.append(f'<text x="{L + pw + 35}" y="{ly + 4}">{esc(ENGINE_LABEL.get(eng, eng))}</text>\n')
    return svg_doc(W, H, "".join(b), title)


def plots(rows, outdir, stamp):
    os.makedirs(outdir, exist_ok=True)
    groups = defaultdict(list)
    for r in rows:
        groups[(r["workload"], r["bs"], r["qd"], r["engine"])].append(r)
    written = []
    for wl in ("cached_randread", "loop_direct_randread", "disk_direct_randread"):
        engines = sorted({e for (x, _, _, e) in groups if x == wl}, key=lambda e: list(ENGINE_LABEL).index(e))
        if not engines:
            continue
        for metric, ylabel, fname in (
            ("iops", "IOPS", f"{wl}_iops.svg"),
            ("cpu_us_per_io", "CPU µs per I/O (usr+sys)", f"{wl}_cpu_per_io.svg"),
        ):
            series = []
            for e in engines:
                pts = []
                for (x, b, q, en), g in sorted(groups.items(), key=lambda kv: kv[0][2]):
                    if (x, en) == (wl, e):
                        v = [r[metric] for r in g if not math.isnan(r[metric])]
                        if v:
                            pts.append((q, med(v), min(v), max(v)))
                if pts:
                    series.append((e, pts, e == "fio_psync"))
            svg = line_chart(WORKLOAD_TITLE.get(wl, wl), ylabel, series, subtitle=stamp)
            if svg:
                p = os.path.join(outdir, fname)
                open(p, "w").write(svg)
                written.append(p)
    seq = []
    for wl in ("cached_seqread", "direct_seqread"):
        for bs in ("128k", "1m"):
            bars = []
            for e in ("iobench", "fio_uring", "dd"):
                g = [r["bw_bytes"] / (1 << 20) for (x, b, q, en), gg in groups.items() if (x, b, en) == (wl, bs, e) for r in gg]
                if g:
                    bars.append((e, med(g), min(g), max(g)))
            if bars:
                seq.append((f"{'cached' if wl.startswith('cached') else 'O_DIRECT'} {bs}", bars))
    if seq:
        p = os.path.join(outdir, "seqread_bw.svg")
        open(p, "w").write(bar_chart("Sequential read bandwidth (QD 4; dd QD 1)", seq, subtitle=stamp))
        written.append(p)
    return written


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--out", default="perf")
    ap.add_argument("--summary-only", action="store_true")
    a = ap.parse_args()
    meta, rows = load(a.results)
    if not rows:
        sys.exit(f"plot.py: no results in {a.results}")
    summarise(meta, rows)
    if not a.summary_only:
        stamp = next((m for m in meta if m.startswith("kernel")), "")
        cores = next((m.split(";")[0] for m in meta if m.startswith("cores")), "")
        for p in plots(rows, a.out, f"{cores}; {stamp.split(';')[0]} — {os.path.basename(a.results)}"):
            print(f"wrote {p}", file=sys.stderr)


if __name__ == "__main__":
    main()
