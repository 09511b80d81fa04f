#!/usr/bin/env python3
"""Reads `harmony bench … --json` runs (one JSON object per line) on stdin and prints a
Markdown table of each figure's median, with the raw engine's median and every run's value,
for BENCHMARKS.md."""
import json
import statistics
import sys

runs = [json.loads(line) for line in sys.stdin if line.strip()]
if not runs:
    sys.exit("no runs on standard input")
print(f"suite `{runs[0]['suite']}`, backend `{runs[0]['backend']}`, {len(runs)} runs on {runs[0]['machine']}\n")
print("| figure | median | unit | raw median | ratio of medians | every run |")
print("|---|---:|---|---:|---:|---|")
def show(value, grouped=True):
    """Counts without decimals, latencies in ms to the microsecond."""
    if value < 100:
        return f"{value:.3f}"
    return f"{value:,.0f}" if grouped else f"{value:.0f}"


for figure in runs[0]["figures"]:
    name = figure["name"]
    same = [next(f for f in run["figures"] if f["name"] == name) for run in runs]
    value = statistics.median(f["value"] for f in same)
    raws = [f["raw"] for f in same if f.get("raw") is not None]
    raw = statistics.median(raws) if raws else None
    ratio = f"{value / raw:.2f}" if raw else "-"
    every = ", ".join(show(f["value"], grouped=False) for f in same)
    raw_text = f"{raw:,.0f}" if raw is not None else "-"
    print(f"| `{name}` | {show(value)} | {figure['unit']} | {raw_text} | {ratio} | {every} |")
