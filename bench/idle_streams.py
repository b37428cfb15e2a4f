#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""N concurrent, mostly idle Append streams against a gateway or a worker.

Each stream creates its own session, opens an exactly-once writer and, every
~--interval seconds, writes a short text, flushes and waits for its ack
(sync). After all are open it measures a --steady window: the ack latency
the clients see, and (with --pid) the server process's threads, RSS, open
files and CPU, and (with --metrics) its gauges. Prints one JSON object.

  PYTHONPATH=build/sdk/python/gen:sdk/python \\
    bench/idle_streams.py --target 127.0.0.1:7700 --n 1000 --pid PID \\
    [--metrics HOST:PORT]

Run it against a gateway and against a worker directly to see what the
gateway's thread-per-call forwarding costs (bench/RESULTS.md).
"""
import argparse
import asyncio
import json
import os
import random
import time
import urllib.request

from statestream.aio import AsyncClient
from statestream.errors import StatestreamError


def proc_sample(pid):
    """Threads, RSS (kB), open files and CPU ticks of process `pid`."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, value = line.split(":", 1)
            if key == "Threads":
                out["threads"] = int(value)
            elif key == "VmRSS":
                out["rss_kb"] = int(value.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    out["cpu_ticks"] = int(fields[11]) + int(fields[12])
    return out


def gauges(address):
    """The statestream_*_active/buffered gauges of a /metrics endpoint."""
    if not address:
        return {}
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(("statestream_gateway_calls_active",
                            "statestream_gateway_buffered_bytes",
                            "statestream_sessions_active")):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def percentile_ms(samples, p):
    if not samples:
        return None
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1e3,
                 1)


async def run(a):
    clients = [AsyncClient(a.target, tenant=a.tenant,
                           options=[("grpc.use_local_subchannel_pool", 1)])
               for _ in range(a.connections)]
    opening = asyncio.Semaphore(a.open_concurrency)
    stop = asyncio.Event()
    steady = False
    opened = 0
    errors = {}
    acks = []

    async def stream(i):
        nonlocal opened
        client = clients[i % len(clients)]
        session_id = f"{a.prefix}-{i}"
        try:
            async with opening:
                await client.create_session(session_id)
                writer = await client.session(session_id).writer(
                    start_offset=0)
                await writer.write(f"hello from {i}\n")
                await writer.flush()
                await writer.sync()
            opened += 1
            k = 0
            while not stop.is_set():
                try:  # spread the streams' messages over the interval
                    await asyncio.wait_for(
                        stop.wait(), a.interval * random.uniform(0.8, 1.2))
                except asyncio.TimeoutError:
                    pass
                if stop.is_set():
                    break
                k += 1
                began = time.monotonic()
                await writer.write(f"message {k} of stream {i}\n")
                await writer.flush()
                await writer.sync()
                if steady:
                    acks.append(time.monotonic() - began)
            await writer.close()
        except StatestreamError as e:
            key = f"{e.code.name}/{e.reason}"
            errors[key] = errors.get(key, 0) + 1

    began = time.monotonic()
    before = proc_sample(a.pid) if a.pid else {}
    tasks = [asyncio.create_task(stream(i)) for i in range(a.n)]
    while opened + sum(errors.values()) < a.n:
        await asyncio.sleep(0.2)
    open_s = time.monotonic() - began
    await asyncio.sleep(min(a.interval, 5))
    steady = True
    s0 = proc_sample(a.pid) if a.pid else {}
    t0 = time.monotonic()
    await asyncio.sleep(a.steady)
    s1 = proc_sample(a.pid) if a.pid else {}
    t1 = time.monotonic()
    during = gauges(a.metrics)
    steady = False
    stop.set()
    await asyncio.gather(*tasks)
    for client in clients:
        await client.close()
    await asyncio.sleep(3)
    after = proc_sample(a.pid) if a.pid else {}
    cpu = None
    if a.pid:
        cpu = round((s1["cpu_ticks"] - s0["cpu_ticks"]) /
                    os.sysconf("SC_CLK_TCK") / (t1 - t0) * 100, 1)
    print(json.dumps({
        "n": a.n, "opened": opened, "open_s": round(open_s, 1),
        "errors": errors, "steady_acks": len(acks),
        "ack_p50_ms": percentile_ms(acks, 0.5),
        "ack_p99_ms": percentile_ms(acks, 0.99),
        "ack_max_ms": percentile_ms(acks, 1.0),
        "process_before": before, "process_steady": s1,
        "cpu_pct_of_a_core": cpu, "process_after_close": after,
        "gauges_steady": during, "gauges_after_close": gauges(a.metrics),
    }, indent=1))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", required=True, help="HOST:PORT")
    p.add_argument("--n", type=int, default=100, help="streams")
    p.add_argument("--interval", type=float, default=5.0,
                   help="seconds between a stream's messages")
    p.add_argument("--steady", type=float, default=30.0,
                   help="seconds measured once all are open")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--open-concurrency", type=int, default=50)
    p.add_argument("--tenant", default="bench")
    p.add_argument("--prefix", default="idle")
    p.add_argument("--pid", type=int, default=0,
                   help="server process to sample")
    p.add_argument("--metrics", default="", help="its /metrics HOST:PORT")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
