#!/usr/bin/env python3
"""Summarises a run of oai-gateway/bench/run.sh: `summarize.py OUT_DIR` prints Markdown.

Every figure is the median over the rounds. "Added" latency is, per round, the target's
percentile minus the direct calls' percentile in the same round, then the median of those.
Latencies are measured from each request's due time (open loop, as wrk2); the `service`
columns from the moment it was issued.
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}"


def main():
    out = Path(sys.argv[1])
    rows = []
    for line in (out / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        r.update(json.loads(r["label"]))
        rows.append(r)
    machine = (out / "machine.txt").read_text().strip() if (out / "machine.txt").exists() else ""
    targets = []
    for r in rows:
        if r["target"] not in targets:
            targets.append(r["target"])
    # (test, target) -> list of rows; test = ("rate", R) or ("concurrency", C)
    by = defaultdict(list)
    for r in rows:
        test = ("rate", r["rate"]) if r["mode"] == "rate" else ("concurrency", r["concurrency"])
        by[(test, r["target"])].append(r)
    rates = sorted({t[1] for (t, _) in by if t[0] == "rate"}, reverse=True)
    concs = sorted({t[1] for (t, _) in by if t[0] == "concurrency"})

    print("# oai-gateway benchmark\n")
    print("```\n" + machine + "\n```\n")
    print(
        "One shared machine: the mock, the proxy under test and the load driver run together "
        "on its cores, with whatever else runs there.\n"
    )
    for rate in rates:
        test = ("rate", rate)
        print(f"## Open loop at {rate:g} requests/s (latency in ms, median of rounds)\n")
        print(
            "| target | p50 | p99 | added p50 | added p99 | service p50 | service p99 "
            "| added service p50 | added service p99 | ok/s | failed | dropped |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        direct = {r["round"]: r for r in by.get((test, "direct"), [])}
        for t in targets:
            rs = by.get((test, t), [])
            if not rs:
                continue

            def added(key):
                d = [r[key] - direct[r["round"]][key] for r in rs if r["round"] in direct]
                return med(d) if t != "direct" else None

            print(
                f"| {t} | {fmt(med(r['p50_ms'] for r in rs))} | {fmt(med(r['p99_ms'] for r in rs))} "
                f"| {fmt(added('p50_ms'))} | {fmt(added('p99_ms'))} "
                f"| {fmt(med(r['service_p50_ms'] for r in rs))} "
                f"| {fmt(med(r['service_p99_ms'] for r in rs))} "
                f"| {fmt(added('service_p50_ms'))} | {fmt(added('service_p99_ms'))} "
                f"| {fmt(med(r['rps'] for r in rs), 0)} | {med(r['failed'] for r in rs):g} "
                f"| {med(r['dropped'] for r in rs):g} |"
            )
        print()
    if concs:
        print("## Maximum throughput, closed loop (answers/s, median of rounds)\n")
        print("| target | " + " | ".join(f"C={c}" for c in concs) + " | p50 ms at max | failed |")
        print("|---|" + "---|" * (len(concs) + 2))
        for t in targets:
            cells, best = [], None
            for c in concs:
                rs = by.get((("concurrency", c), t), [])
                rps = med(r["rps"] for r in rs)
                cells.append(fmt(rps, 0))
                if rps is not None and (best is None or rps > best[0]):
                    best = (rps, rs)
            if best is None:
                continue
            p50 = med(r["p50_ms"] for r in best[1])
            failed = med(r["failed"] for r in best[1])
            print(f"| {t} | " + " | ".join(cells) + f" | {fmt(p50)} | {failed:g} |")
        print()
    rounds = sorted({r["round"] for r in rows})
    if rates:
        # Per round, at the highest rate: a disturbed round shows here, not in the medians.
        test = ("rate", rates[0])
        print(f"## Each round at {rates[0]:g} requests/s (p50 / p99 ms)\n")
        print("| round | " + " | ".join(targets) + " |")
        print("|---|" + "---|" * len(targets))
        for rnd in rounds:
            cells = []
            for t in targets:
                rs = [r for r in by.get((test, t), []) if r["round"] == rnd]
                cells.append(f"{fmt(rs[0]['p50_ms'])} / {fmt(rs[0]['p99_ms'])}" if rs else "-")
            print(f"| {rnd} | " + " | ".join(cells) + " |")
        print()
    print(f"Rounds: {len(rounds)}. Raw rows: `{out / 'results.jsonl'}`.")


if __name__ == "__main__":
    main()
