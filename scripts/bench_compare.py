#!/usr/bin/env python3
"""UNFED's engine against llama.cpp, in one run, on the same GGUF files and thread count.

BENCHMARK ONLY (never run by CI). For each model it alternates `unfed bench --json` (whole model
and 3 shards) with `scripts/bench_llamacpp.py --json` (same prompt file, same token count) for
--rounds rounds, then prints a markdown table of medians and the ratios UNFED / llama.cpp.

    cargo build --release -p unfed
    /root/.venvs/llama/bin/python scripts/bench_compare.py --threads 2 --rounds 3

Models are resolved through the model store (`unfed model fetch` first). The llama.cpp venv is
described at the top of bench_llamacpp.py.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = ROOT / "crates/unfed-engine/src/bench_prompt.txt"


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--unfed", default=str(ROOT / "target/release/unfed"))
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-coder-0.5b"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    rows = []
    for model in args.models:
        path = subprocess.run([args.unfed, "model", "fetch", model], check=True, capture_output=True, text=True).stdout.strip()
        ours = {"whole model": ([], []), "3 shards": ([], [])}
        ref = ([], [])
        quant = ""
        for _ in range(args.rounds):
            u = run_json([args.unfed, "--threads", str(args.threads), "bench", "--model", path, "--shards", "3",
                          "--gen", str(args.gen), "--runs", "1", "--json"])
            quant = u["quant"]
            for p in u["paths"]:
                ours[p["path"]][0].append(p["prefill_tok_s"])
                ours[p["path"]][1].append(p["decode_tok_s"])
            l = run_json([sys.executable, str(ROOT / "scripts/bench_llamacpp.py"), "--model", path, "--threads",
                          str(args.threads), "--prompt-file", str(PROMPT), "--gen", str(args.gen), "--runs", "1", "--json"])
            ref[0].append(l["median"]["prefill_tok_s"])
            ref[1].append(l["median"]["decode_tok_s"])
        lp, ld = statistics.median(ref[0]), statistics.median(ref[1])
        rows.append((model, quant, "llama.cpp", lp, ld, 1.0, 1.0))
        for name, (p, d) in ours.items():
            mp, md = statistics.median(p), statistics.median(d)
            rows.append((model, quant, f"unfed, {name}", mp, md, mp / lp, md / ld))

    print(f"threads {args.threads}, {args.gen} generated tokens, medians of {args.rounds} alternating rounds\n")
    print("| model | quant | engine | prefill tok/s | decode tok/s | prefill vs llama.cpp | decode vs llama.cpp |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for m, q, e, p, d, rp, rd in rows:
        print(f"| {m} | {q} | {e} | {p:.1f} | {d:.1f} | {rp:.2f}x | {rd:.2f}x |")


if __name__ == "__main__":
    main()
