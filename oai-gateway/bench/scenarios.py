#!/usr/bin/env python3
"""The loadtest's scenarios through oai-gateway, with the official OpenAI Python SDK as the client.

For each scenario: a fresh mock upstream configured as tools/loadtest/src/main.rs configures it
(`mock-server --scenario NAME`), a fresh gateway in front of it (its defaults), and N calls at
concurrency C through `openai.OpenAI(base_url=GATEWAY/v1)` with `max_retries` left at the SDK's
default (2), one thread per concurrent call. Requests are counted by the mock (what reached the
upstream) and by the gateway's access log (what the SDK sent, its own retries included).

| scenario | mock | latency | N | C | target (as the tower stack's) |
|---|---|---|---|---|---|
| burst | bucket of 20 refilled 20/s | 20 ms | 300 | 50 | 0 failed, <= 1.15 req/call, wall <= 1.05x (N-20)/20 s + latency |
| flaky | 20 % random 5xx, no limit | 20 ms | 300 | 20 | 0 failed, <= 1.30 req/call |
| quota | every call a quota 429 | 20 ms | 20 | 20 | 1.00 req/call |
| outage | 100 % 5xx for 10 s, then healthy; a call every 50 ms | 20 ms | 300 | 50 | req/call during the outage <= 1.2, every call after it ok |

    python3 oai-gateway/bench/scenarios.py --bin-dir DIR [--scenario burst,flaky] [--out DIR]

DIR holds `oai-gateway` and `mock-server` (`oai-gateway/bench/run-scenarios.sh` builds them and
calls this with the venv's Python). Exit status 1 if a target is missed.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

KEY = "sk-proj-M0ckTestKey0penAiShape0123456789abcd"  # oai_resilience::mock::TEST_KEY; no real key
DEFAULTS = {"burst": (300, 50), "flaky": (300, 20), "quota": (20, 20), "outage": (300, 50)}
LATENCY = 0.020
BUCKET, REFILL = 20, 20.0
OUTAGE_S, ARRIVAL_S = 10.0, 0.050


class Mock:
    """mock-server as a child: `counts` and `errors P` over its stdin and stdout."""

    def __init__(self, bin_dir, scenario, log_dir):
        self.proc = subprocess.Popen(
            [str(bin_dir / "mock-server"), "--scenario", scenario],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(log_dir / f"{scenario}-mock.err", "w"),
            text=True,
            bufsize=1,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("listening "):
            raise RuntimeError(f"mock-server: {line!r}")
        self.url = line.split()[1]
        self.lock = threading.Lock()

    def command(self, cmd):
        with self.lock:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())

    def counts(self):
        return self.command("counts")

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


class Gateway:
    def __init__(self, bin_dir, upstream, log_path):
        self.log_path = log_path
        env = dict(os.environ, RUST_LOG=os.environ.get("GATEWAY_RUST_LOG", "info"))
        self.proc = subprocess.Popen(
            [str(bin_dir / "oai-gateway"), "--listen", "127.0.0.1:0", "--upstream", upstream + "/v1"],
            stdout=subprocess.PIPE,
            stderr=open(log_path, "w"),
            text=True,
            env=env,
        )
        line = self.proc.stdout.readline()
        if "listening on " not in line:
            raise RuntimeError(f"oai-gateway: {line!r}")
        self.url = line.split("listening on ")[1].split()[0]  # http://127.0.0.1:PORT/v1

    def requests_logged(self):
        return sum(1 for l in open(self.log_path) if "oai_gateway::access" in l)

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=40)


def run(scenario, n, c, bin_dir, out):
    mock = Mock(bin_dir, scenario, out)
    gw = Gateway(bin_dir, mock.url, out / f"{scenario}-gateway.err")
    client = openai.OpenAI(base_url=gw.url, api_key=KEY)  # max_retries: the default
    # Warm-up outside the clock: the SDK's lazy imports and first connection, the gateway's
    # upstream connection. GET /v1/models is not the mock's (404 before any bucket or fault);
    # then the mock's counts are cleared.
    try:
        client.models.list()
    except openai.APIError:
        pass
    mock.command("reset")
    warm_up_logged = gw.requests_logged()
    results = []
    lock = threading.Lock()

    def call(i):
        began = time.monotonic()
        try:
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "Hello"}],
                max_tokens=5,
            )
            err = None
        except openai.APIStatusError as e:
            err = f"{e.status_code}"
        except openai.APIError as e:
            err = type(e).__name__
        with lock:
            results.append((began, time.monotonic() - began, err))

    outage = scenario == "outage"
    during_sent = {}
    start = time.monotonic()
    if outage:
        mock.command("errors 1")

        def end_outage():
            time.sleep(max(0.0, start + OUTAGE_S - time.monotonic()))
            mock.command("errors 0")
            during_sent["total"] = mock.counts()["total"]

        switch = threading.Thread(target=end_outage)
        switch.start()
    with ThreadPoolExecutor(max_workers=c) as pool:
        for i in range(n):
            if outage:  # open loop: a call every 50 ms, queued while C are in flight
                time.sleep(max(0.0, start + i * ARRIVAL_S - time.monotonic()))
            pool.submit(call, i)
    wall = time.monotonic() - start
    if outage:
        switch.join()
    time.sleep(0.2)  # the access log's last lines
    counts = mock.counts()
    sdk_requests = gw.requests_logged() - warm_up_logged
    gw.close()
    mock.close()

    failed = [r for r in results if r[2] is not None]
    lat = sorted(r[1] for r in results)
    row = {
        "scenario": scenario,
        "calls": n,
        "concurrency": c,
        "ok": n - len(failed),
        "failed": len(failed),
        "failed_by": {k: sum(1 for r in failed if r[2] == k) for k in sorted({r[2] for r in failed})},
        "upstream_requests": counts["total"],
        "req_per_call": counts["total"] / n,
        "sdk_requests": sdk_requests,
        "sdk_req_per_call": sdk_requests / n,
        "wall_s": wall,
        "p50_s": lat[len(lat) // 2],
        "p99_s": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "upstream_by_status": counts["by_status"],
    }
    if scenario == "burst":
        minimum = max((n - BUCKET) / REFILL + LATENCY, -(-n // c) * LATENCY)
        row["minimum_s"] = minimum
        row["wall_over_minimum"] = wall / minimum
        row["met"] = row["failed"] == 0 and wall / minimum <= 1.05 and row["req_per_call"] <= 1.15
        row["target"] = (
            f"0 failed ({row['failed']}), req/call <= 1.15 ({row['req_per_call']:.3f}), "
            f"wall <= 1.05x min ({row['wall_over_minimum']:.3f}x of {minimum:.2f} s)"
        )
    elif scenario == "flaky":
        row["met"] = row["failed"] == 0 and row["req_per_call"] <= 1.30
        row["target"] = f"0 failed ({row['failed']}), req/call <= 1.30 ({row['req_per_call']:.3f})"
    elif scenario == "quota":
        row["met"] = counts["total"] == n
        row["target"] = f"req/call = 1.00 ({row['req_per_call']:.3f})"
    elif scenario == "outage":
        end = start + OUTAGE_S
        during = [r for r in results if r[0] < end]
        after = [r for r in results if r[0] >= end]
        after_ok = sum(1 for r in after if r[2] is None)
        sent = during_sent["total"]
        ratio = sent / max(1, len(during))
        row.update(
            {
                "outage_sent": sent,
                "outage_calls": len(during),
                "outage_req_per_call": ratio,
                "after_calls": len(after),
                "after_ok": after_ok,
            }
        )
        row["met"] = ratio <= 1.2 and after_ok == len(after)
        row["target"] = (
            f"req/call during outage <= 1.2 ({ratio:.3f} = {sent}/{len(during)}), "
            f"calls after all ok ({after_ok}/{len(after)})"
        )
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", required=True, type=Path)
    ap.add_argument("--scenario", default="burst,flaky,quota,outage")
    ap.add_argument("--n", type=int)
    ap.add_argument("--concurrency", type=int)
    ap.add_argument("--out", type=Path, default=Path("/tmp/oai-gateway-scenarios"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    print(f"openai {openai.__version__}, max_retries default {openai.DEFAULT_MAX_RETRIES}; "
          f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for s in a.scenario.split(","):
        n, c = DEFAULTS[s]
        row = run(s, a.n or n, a.concurrency or c, a.bin_dir, a.out)
        rows.append(row)
        print(json.dumps(row), flush=True)
    (a.out / "scenarios.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print("\n| scenario | calls | C | failed | upstream req/call | SDK req/call | wall s | p50 s | p99 s | target |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['scenario']} | {r['calls']} | {r['concurrency']} | {r['failed']} "
            f"| {r['req_per_call']:.3f} | {r['sdk_req_per_call']:.3f} | {r['wall_s']:.2f} "
            f"| {r['p50_s']:.3f} | {r['p99_s']:.3f} | {'met' if r['met'] else 'MISSED'}: {r['target']} |"
        )
    sys.exit(0 if all(r["met"] for r in rows) else 1)


if __name__ == "__main__":
    main()
