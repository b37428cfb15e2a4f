#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Issue 7's engine matrix in one command: `statestream bench engine` for
every dtype x (decode at 1/8/32 sessions, 512-token prefill), repeated in
rounds, printed as the Markdown tables of bench/RESULTS.md.

    bench/engine_matrix.py --bin build/cli/statestream --shapes 0.1b,0.4b

Random-weight bf16 models of the official shapes are written on first use
(`statestream model random`, under --models-dir) and loaded at each dtype:
fp32, bf16 (two-term activations, the default), bf16-round
(--bf16-activations round) and int8. Every cell of a round runs before the
next round starts, so the rounds sample the shared machine's noise apart
and each table cell shows the range over the rounds. The "32 / 1" row
comes from the 32-session runs, which also time one session's steps
alternated with their own in the same process (bench engine
--versus-batch): a ratio the machine's drift does not skew.
"""

import argparse
import json
import os
import subprocess
import sys

# name -> (layers, embd, vocab, head_size): `model random` x070 shapes.
SHAPES = {
    "0.1b": (12, 768, 65536, 64),
    "0.4b": (24, 1024, 65536, 64),
    "tiny": (2, 64, 512, 32),  # for the test: seconds per round
}
# label -> bench engine flags
DTYPES = {
    "fp32": ["--dtype", "fp32"],
    "bf16": ["--dtype", "bf16", "--bf16-activations", "split"],
    "bf16-round": ["--dtype", "bf16", "--bf16-activations", "round"],
    "int8": ["--dtype", "int8"],
}


def model_path(args, shape):
    layers, embd, vocab, head = SHAPES[shape]
    path = os.path.join(args.models_dir, f"x070_{shape}_bf16.safetensors")
    if not os.path.exists(path):
        os.makedirs(args.models_dir, exist_ok=True)
        # `model random` picks the format by the extension: keep it last.
        tmp = path[:-len(".safetensors")] + ".tmp.safetensors"
        subprocess.run(
            [args.bin, "model", "random", "--arch", "x070", "--layers",
             str(layers), "--embd", str(embd), "--vocab", str(vocab),
             "--head-size", str(head), "--dtype", "bf16", "--seed", "1",
             "--out", tmp],
            check=True, stdout=subprocess.DEVNULL)
        os.replace(tmp, path)
    return path


def run_one(args, model, dtype, mode, n, versus=0):
    cmd = [args.bin, "bench", "engine", "--model", model, "--threads",
           str(args.threads), "--seconds", str(args.seconds)] + DTYPES[dtype]
    if mode == "decode":
        cmd += ["--mode", "decode", "--batch", str(n)]
        if versus:
            cmd += ["--versus-batch", str(versus)]
    else:
        cmd += ["--mode", "prefill", "--tokens", str(n)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def span(values, fmt):
    lo, hi = min(values), max(values)
    a, b = fmt.format(lo), fmt.format(hi)
    return a if a == b else f"{a}–{b}"


def table(shape, cells, dtypes, configs, rounds):
    lines = [f"**{shape}** — tok/s (fraction of the roofline measured in "
             f"the same run), {rounds} round(s)", "",
             "| | " + " | ".join(dtypes) + " |",
             "|---|" + "---|" * len(dtypes)]
    for mode, n in configs:
        label = (f"decode, {n} session{'s' if n > 1 else ''}"
                 if mode == "decode" else f"prefill, {n} tokens")
        row = []
        for d in dtypes:
            runs = cells[(d, mode, n)]
            row.append(span([r["tokens_per_s"] for r in runs], "{:,.0f}") +
                       " (" + span([r["roofline_fraction"] for r in runs],
                                   "{:.2f}") + ")")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    batches = sorted(n for m, n in configs if m == "decode")
    if len(batches) > 1:
        lo, hi = batches[0], batches[-1]
        row = [span([r["versus_ratio"] for r in cells[(d, "decode", hi)]],
                    "{:.1f}×") for d in dtypes]
        lines.append(f"| {hi} / {lo} sessions, steps alternated | " +
                     " | ".join(row) + " |")
    # As the peers quote it: one session (more sessions add their states).
    first = configs[0]
    row = [span([r["peak_rss_mib"] for r in cells[(d,) + first]], "{:,.0f}")
           for d in dtypes]
    label = (f"decode, {first[1]} session{'s' if first[1] > 1 else ''}"
             if first[0] == "decode" else f"prefill, {first[1]} tokens")
    lines.append(f"| peak RSS, MiB ({label}) | " + " | ".join(row) + " |")
    probes = [p for runs in cells.values() for r in runs
              for p in r["read_bandwidth_probes_gb_s"]]
    kernels = sorted({r["kernels"] for runs in cells.values() for r in runs})
    lines += ["", f"Read-bandwidth probe: {span(probes, '{:.0f}')} GB/s; "
              f"kernels: {', '.join(kernels)}."]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", default="build/cli/statestream",
                   help="the statestream binary")
    p.add_argument("--shapes", default="0.1b,0.4b",
                   help="comma-separated: " + ", ".join(SHAPES))
    p.add_argument("--models-dir", default="build/bench-models",
                   help="where the random models are written and reused")
    p.add_argument("--dtypes", default=",".join(DTYPES),
                   help="comma-separated: " + ", ".join(DTYPES))
    p.add_argument("--batches", default="1,8,32",
                   help="decode batch sizes; the ratio row is the largest "
                   "over the smallest, timed alternately in one process")
    p.add_argument("--tokens", type=int, default=512,
                   help="prefill chunk (0: no prefill row)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0,
                   help="bench engine --seconds per cell")
    p.add_argument("--threads", type=int, default=2,
                   help="engine threads (2: issue 7's machine; bench engine "
                   "alone defaults to one per CPU)")
    p.add_argument("--jsonl", help="also append every run's JSON here")
    args = p.parse_args()

    shapes = [s for s in args.shapes.split(",") if s]
    dtypes = [d for d in args.dtypes.split(",") if d]
    for name, known in (("shape", SHAPES), ("dtype", DTYPES)):
        for v in shapes if name == "shape" else dtypes:
            if v not in known:
                p.error(f"unknown {name} {v!r}; one of {', '.join(known)}")
    try:
        batches = sorted({int(b) for b in args.batches.split(",") if b})
    except ValueError:
        p.error(f"--batches: comma-separated integers, got {args.batches!r}")
    if any(b < 1 for b in batches) or args.tokens < 0:
        p.error("batch sizes must be >= 1 and --tokens >= 0")
    configs = [("decode", b) for b in batches]
    if args.tokens > 0:
        configs.append(("prefill", args.tokens))
    if args.rounds < 1 or not configs:
        p.error("nothing to run")

    largest = max(batches) if batches else 0
    models = {s: model_path(args, s) for s in shapes}
    cells = {s: {} for s in shapes}
    log = open(args.jsonl, "a") if args.jsonl else None
    for r in range(args.rounds):
        for s in shapes:
            for d in dtypes:
                for mode, n in configs:
                    # The largest batch also times the smallest one's
                    # steps, alternated with its own: the ratio row.
                    versus = (configs[0][1] if mode == "decode" and
                              n == largest and n != configs[0][1] else 0)
                    res = run_one(args, models[s], d, mode, n, versus)
                    res["shape"], res["label"], res["round"] = s, d, r
                    cells[s].setdefault((d, mode, n), []).append(res)
                    if log:
                        log.write(json.dumps(res) + "\n")
                    print(f"round {r + 1}/{args.rounds} {s} {d} {mode} {n}: "
                          f"{res['tokens_per_s']:,.1f} tok/s",
                          file=sys.stderr, flush=True)
    print(f"`{' '.join(sys.argv)}`\n")
    for s in shapes:
        print(table(s, cells[s], dtypes, configs, args.rounds) + "\n")


if __name__ == "__main__":
    main()
