#!/usr/bin/env python3
"""The table of record from sse_compare.sh's results: per scenario and figure, each server's
median (min-max) over the rounds, the ratio of the medians, and the range of the ratios of
the runs paired by round (the run-to-run spread that a goal must clear).

Usage: sse_compare.py OUT_DIR   (reads OUT_DIR/nchan.jsonl and OUT_DIR/mailpush.jsonl)
"""
import json
import os
import statistics
import sys


def runs(path):
    """Scenario label -> its runs, in round order."""
    by_scenario = {}
    if not os.path.exists(path):
        return by_scenario
    for line in open(path):
        if line.strip():
            run = json.loads(line)
            by_scenario.setdefault(run["label"].split("#")[0], []).append(run)
    return by_scenario


def cpu_per_delivery_us(run):
    return 1e6 * run["server"]["cpu_util_publish"] / run["deliveries_per_sec"]


FIGURES = {
    # scenario: [(figure, function of a run, format, goal as (comparison, ratio) or None)]
    "fanout_max": [
        ("deliveries/s", lambda r: r["deliveries_per_sec"], "{:,.0f}", None),
        ("generator CPU", lambda r: 100 * r["generator"]["cpu_util_publish"], "{:.0f} %", None),
    ],
    "fanout_rate": [
        ("CPU µs/delivery", cpu_per_delivery_us, "{:.1f}", ("<=", 0.65)),
        ("p50 ms", lambda r: r["latency_us"]["p50"] / 1000, "{:.2f}", None),
        ("p99 ms", lambda r: r["latency_us"]["p99"] / 1000, "{:.2f}", ("<=", 0.8)),
    ],
    "wide_max": [
        ("events/s", lambda r: r["publish_rate"], "{:,.0f}", (">=", 1.4)),
        ("generator CPU", lambda r: 100 * r["generator"]["cpu_util_publish"], "{:.0f} %", None),
    ],
    "wide_rate": [
        ("CPU µs/delivery", cpu_per_delivery_us, "{:.1f}", ("<=", 0.65)),
        ("p50 ms", lambda r: r["latency_us"]["p50"] / 1000, "{:.2f}", None),
        ("p99 ms", lambda r: r["latency_us"]["p99"] / 1000, "{:.2f}", ("<=", 0.8)),
    ],
    "idle19k": [
        ("RSS B/conn", lambda r: r["server"]["rss_bytes_per_conn"], "{:,.0f}", None),
    ],
}


GROWTH = [
    ("RSS MiB connected", lambda r: r["server"]["rss_kb_after_connect"] / 1024, "{:.1f}", None),
    ("RSS B/conn", lambda r: r["server"]["rss_bytes_per_conn"], "{:,.0f}", None),
    ("CPU µs/delivery", cpu_per_delivery_us, "{:.1f}", None),
    ("p99 ms", lambda r: r["latency_us"]["p99"] / 1000, "{:.2f}", None),
]


def spread(values, fmt):
    text = fmt.format(statistics.median(values))
    if len(values) > 1 and min(values) != max(values):
        text += f" ({fmt.format(min(values))}–{fmt.format(max(values))})"
    return text


def main(out_dir):
    nchan = runs(os.path.join(out_dir, "nchan.jsonl"))
    mailpush = runs(os.path.join(out_dir, "mailpush.jsonl"))
    print("| scenario | figure | Nchan | mailpush | ratio of medians | ratios by round | goal |")
    print("|---|---|---|---|---|---|---|")
    growth = sorted((s for s in mailpush if s.startswith("conns_")), key=lambda s: int(s[6:]))
    for scenario, figures in list(FIGURES.items()) + [(s, GROWTH) for s in growth]:
        ours, theirs = mailpush.get(scenario, []), nchan.get(scenario, [])
        if not ours and not theirs:
            continue
        for name, figure, fmt, goal in figures:
            mine = [figure(run) for run in ours]
            other = [figure(run) for run in theirs]
            row = [scenario, name, spread(other, fmt) if other else "-",
                   spread(mine, fmt) if mine else "-"]
            if mine and other:
                ratio = statistics.median(mine) / statistics.median(other)
                paired = [m / o for m, o in zip(mine, other)]
                row += [f"{ratio:.2f}×", "–".join(f"{x:.2f}" for x in (min(paired), max(paired)))]
                if goal:
                    op, bound = goal
                    met = ratio <= bound if op == "<=" else ratio >= bound
                    every = all(x <= bound if op == "<=" else x >= bound for x in paired)
                    verdict = "met in every round" if every else ("met (median)" if met else "not met")
                    row.append(f"{op} {bound}: {verdict}")
                else:
                    row.append("")
            else:
                row += ["", "", ""]
            print("| " + " | ".join(row) + " |")
    broken = [
        (scenario, run.get(key))
        for scenario, scenario_runs in mailpush.items()
        for run in scenario_runs
        for key in ("unsatisfied", "misrouted", "missing")
        if run.get(key)
    ]
    print()
    print("mailpush runs with unsatisfied, misrouted or missing deliveries:", broken or "none")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
