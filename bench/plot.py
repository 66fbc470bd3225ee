#!/usr/bin/env python3
"""Charts for dmem-bench results.

    python3 bench/plot.py RESULTS.json OUTDIR

RESULTS.json is what `dmem-bench ... --json FILE` writes ({"tool": "dmem-bench",
"machine": {...}, "runs": [...]}); a single scenario's `{"scenario": ..., "runs": [...]}`
is read too. Each chart is drawn only when the fields it needs exist:

  throughput_vs_batch.png  GB/s vs batch size, one line per direction (and scenario,
                           coalescing, backend), one panel per page size, with the
                           same-run memcpy ceiling as dashed lines.
  coalescing.png           GB/s with coalescing on vs off, per direction and page size.
  latency.png              latency percentiles (p50 ... p99.9, max) of every
                           <name>_p50_us family; fault latencies first when present.
  summary.png              every throughput figure of the run next to its memcpy baseline.

The tool (`dmem-bench --plot DIR`) runs this script; it needs matplotlib only.
"""

import json
import math
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PERCENTILES = [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9)]
# Fields that tell runs apart in legends, in order of importance.
CASE_FIELDS = ["direction", "coalesce", "backend", "channels", "queue_depth"]


def load(path):
    with open(path) as f:
        doc = json.load(f)
    runs = doc.get("runs", [])
    if "tool" not in doc and "scenario" in doc:  # one scenario's --json output
        runs = [dict(run, scenario=doc["scenario"]) for run in runs]
    for run in runs:
        run.setdefault("params", {})
        run.setdefault("scenario", "?")
    return doc, runs


def parse_size(text):
    text = str(text).strip().upper().rstrip("B").rstrip("I")
    shifts = {"K": 10, "M": 20, "G": 30, "T": 40}
    if text and text[-1] in shifts:
        return int(text[:-1]) << shifts[text[-1]]
    return int(text)


def size_label(n):
    for shift, suffix in ((40, "T"), (30, "G"), (20, "M"), (10, "K")):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{suffix}"
    return str(n)


def page_size(run):
    if isinstance(run.get("page_size"), (int, float)):
        return int(run["page_size"])
    if "page-size" in run["params"]:
        return parse_size(run["params"]["page-size"])
    return None


def batch(run):
    for key in ("batch_pages", "batch"):
        if isinstance(run.get(key), (int, float)) and not isinstance(run.get(key), bool):
            return int(run[key])
    if "batch" in run["params"]:
        return int(run["params"]["batch"])
    return None


def coalesce(run):
    value = run.get("coalesce", run["params"].get("coalesce"))
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.lower() in ("on", "yes", "true", "1")
    return None


def throughput_fields(run):
    return [k for k, v in run.items()
            if k.endswith("gbps") and k != "memcpy_gbps" and isinstance(v, (int, float))]


def constant_fields(runs):
    """Case fields with one value across `runs` (left out of legends: they tell nothing apart)."""
    return {f for f in CASE_FIELDS if len({str(r.get(f)) for r in runs}) == 1 and f != "direction"}


def case_label(run, skip=()):
    parts = [run["scenario"]]
    for field in CASE_FIELDS:
        if field in skip or field not in run:
            continue
        value = run[field]
        if field == "direction":
            parts.append(str(value))
        elif field == "coalesce":
            parts.append("coalesce " + ("on" if value in (True, "on") else "off"))
        else:
            parts.append(f"{field}={value}")
    return " ".join(parts)


def memcpy_ceiling(runs, size, direction):
    """Median memcpy GB/s of the same page size (and direction when there is one)."""
    memcpy = [r for r in runs if r["scenario"] == "memcpy" and page_size(r) == size and "gbps" in r]
    same = [r for r in memcpy if r.get("direction") == direction]
    chosen = same or memcpy
    if chosen:
        return statistics.median(r["gbps"] for r in chosen)
    own = [r["memcpy_gbps"] for r in runs
           if page_size(r) == size and r.get("direction") == direction and isinstance(r.get("memcpy_gbps"), (int, float))]
    return statistics.median(own) if own else None


def machine_note(doc):
    m = doc.get("machine", {})
    bits = [f"{m['cores']} cores" if "cores" in m else None, m.get("cpu_model"),
            f"kernel {m['kernel']}" if "kernel" in m else None,
            f"liburing {m['liburing']}" if "liburing" in m else None,
            f"{m['build']} build" if "build" in m else None,
            (m.get("git_revision") or "")[:10] or None]
    return ", ".join(b for b in bits if b)


def finish(fig, doc, path):
    note = machine_note(doc)
    if note:
        fig.text(0.01, 0.005, note, fontsize=7, color="gray", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(path)


def plot_throughput_vs_batch(doc, runs, outdir):
    usable = [r for r in runs if batch(r) is not None and "gbps" in r and page_size(r) is not None]
    if len({batch(r) for r in usable}) < 2:
        return
    sizes = sorted({page_size(r) for r in usable})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4.5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        here = [r for r in usable if page_size(r) == size]
        # memcpy is drawn as the ceiling, not as a line, unless it is all there is.
        measured = [r for r in here if r["scenario"] != "memcpy"] or here
        lines = {}
        same = constant_fields(measured)
        for r in measured:
            lines.setdefault(case_label(r, same), []).append(r)
        for label, points in sorted(lines.items()):
            points.sort(key=batch)
            xs = [batch(p) for p in points]
            ys = [p["gbps"] for p in points]
            err = None
            if all("gbps_min" in p and "gbps_max" in p for p in points):
                err = [[y - p["gbps_min"] for y, p in zip(ys, points)], [p["gbps_max"] - y for y, p in zip(ys, points)]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
        if measured is not here:
            styles = iter(["--", ":", "-."])
            for direction in sorted({r.get("direction") for r in measured if r.get("direction")}):
                ceiling = memcpy_ceiling(runs, size, direction)
                if ceiling:
                    ax.axhline(ceiling, linestyle=next(styles, "--"), linewidth=1.2, color="gray",
                               label=f"memcpy {direction}: {ceiling:.1f} GB/s")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size (pages)")
        ax.set_ylabel("GB/s")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{size_label(size)} pages")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Throughput vs batch size" + (" (gray: same-run memcpy ceiling)" if any(r["scenario"] != "memcpy" for r in usable) else ""))
    finish(fig, doc, os.path.join(outdir, "throughput_vs_batch.png"))


def plot_coalescing(doc, runs, outdir):
    usable = [r for r in runs if coalesce(r) is not None and "gbps" in r]
    groups = {}
    for r in usable:
        key = (r["scenario"], r.get("direction", ""), page_size(r) or 0, batch(r) or 0)
        groups.setdefault(key, {}).setdefault(coalesce(r), []).append(r["gbps"])
    pairs = {k: v for k, v in groups.items() if True in v and False in v}
    if not pairs:
        return
    batches = sorted({k[3] for k in pairs})
    if len(pairs) > 12:  # keep one batch size: 512 (nouveau's) if present, else the largest
        keep = 512 if 512 in batches else batches[-1]
        pairs = {k: v for k, v in pairs.items() if k[3] == keep}
    keys = sorted(pairs)
    labels = [f"{d or s} {size_label(p)}" + (f"\nbatch {b}" if len(batches) > 1 else "") for s, d, p, b in keys]
    on = [statistics.median(pairs[k][True]) for k in keys]
    off = [statistics.median(pairs[k][False]) for k in keys]
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(keys) + 2), 4.5))
    xs = range(len(keys))
    ax.bar([x - 0.2 for x in xs], off, width=0.4, label="coalesce off")
    ax.bar([x + 0.2 for x in xs], on, width=0.4, label="coalesce on")
    for x, (s, d, p, b) in zip(xs, keys):
        ceiling = memcpy_ceiling(runs, p, d)
        if ceiling:
            ax.hlines(ceiling, x - 0.45, x + 0.45, colors="gray", linestyles="--", linewidth=1,
                      label="same-run memcpy" if x == 0 else None)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("GB/s")
    ax.set_title("Coalescing on vs off")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3)
    ax.grid(True, axis="y", alpha=0.3)
    finish(fig, doc, os.path.join(outdir, "coalescing.png"))


def nines(p):
    return -math.log10(1 - p / 100.0)


def plot_latency(doc, runs, outdir):
    families = {}
    for r in runs:
        for key in r:
            if key.endswith("_p50_us") and isinstance(r[key], (int, float)):
                families.setdefault(key[: -len("_p50_us")], []).append(r)
    if not families:
        return
    faults = [f for f in families if "fault" in f]
    chosen = sorted(faults or families)[:4]
    fig, axes = plt.subplots(1, len(chosen), figsize=(5.5 * len(chosen), 4.5), squeeze=False)
    varying = [k for k in sorted({k for r in runs for k in r["params"]})
               if len({r["params"].get(k) for r in runs}) > 1]
    for ax, family in zip(axes[0], chosen):
        members = families[family]
        if len(members) > 10:
            step = len(members) / 10
            members = [members[int(i * step)] for i in range(10)]
        for r in members:
            xs, ys = [], []
            for suffix, p in PERCENTILES:
                value = r.get(f"{family}_{suffix}_us")
                if isinstance(value, (int, float)) and value > 0:
                    xs.append(nines(p))
                    ys.append(value)
            top = r.get(f"{family}_max_us")
            if isinstance(top, (int, float)) and top > 0:
                xs.append(nines(99.99))
                ys.append(top)
            label = case_label(r, constant_fields(members)) + "".join(f" {k}={r['params'][k]}" for k in varying if k in r["params"])
            ax.plot(xs, ys, marker="o", label=label)
        ticks = [nines(p) for _, p in PERCENTILES] + [nines(99.99)]
        ax.set_xticks(ticks)
        ax.set_xticklabels(["p50", "p90", "p99", "p99.9", "max"])
        ax.set_yscale("log")
        ax.set_ylabel("µs")
        samples = members[0].get(f"{family}_samples")
        ax.set_title(f"{family} latency" + (f" ({samples} samples/run)" if samples else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Fault latency distribution" if faults else "Latency distribution")
    finish(fig, doc, os.path.join(outdir, "latency.png"))


def plot_summary(doc, runs, outdir):
    bars = []
    varying = {}
    for r in runs:
        for k, v in r["params"].items():
            varying.setdefault((r["scenario"], k), set()).add(v)
    same = {}
    for r in runs:
        if r["scenario"] not in same:
            same[r["scenario"]] = constant_fields([x for x in runs if x["scenario"] == r["scenario"]])
    for r in runs:
        shown = {f for f in CASE_FIELDS if f in r and f not in same[r["scenario"]]}
        extra = "".join(f" {k}={v}" for k, v in sorted(r["params"].items())
                        if len(varying[(r["scenario"], k)]) > 1 and k.replace("-", "_") not in shown)
        for field in throughput_fields(r):
            stem = "" if field == "gbps" else " " + field[: -len("_gbps")]
            base = r.get("memcpy_gbps")
            if not isinstance(base, (int, float)) and r["scenario"] != "memcpy" and page_size(r):
                base = memcpy_ceiling(runs, page_size(r), r.get("direction"))
            bars.append((case_label(r, same[r["scenario"]]) + stem + extra, r[field],
                         base if r["scenario"] != "memcpy" else None))
    if not bars or len(bars) > 60:
        return
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(bars) + 1.5))
    ys = range(len(bars))
    ax.barh(list(ys), [b[1] for b in bars], color="tab:blue")
    for y, (_, value, base) in zip(ys, bars):
        text = f"{value:.2f}"
        if base:
            ax.plot([base, base], [y - 0.4, y + 0.4], color="black", linewidth=1.5)
            text += f"  ({value / base:.2f}× memcpy)"
        ax.text(max(value, base or 0), y, " " + text, va="center", fontsize=7)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([b[0] for b in bars], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("GB/s (black tick: same-run memcpy)")
    ax.set_title("Throughput by case")
    ax.set_xlim(right=max(max(b[1] for b in bars), max((b[2] or 0) for b in bars)) * 1.5)
    ax.grid(True, axis="x", alpha=0.3)
    finish(fig, doc, os.path.join(outdir, "summary.png"))


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    doc, runs = load(argv[1])
    os.makedirs(argv[2], exist_ok=True)
    if not runs:
        print("no runs to plot", file=sys.stderr)
        return 0
    for chart in (plot_throughput_vs_batch, plot_coalescing, plot_latency, plot_summary):
        chart(doc, runs, argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
