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
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = ROOT / "crates/unfed-engine/src/bench_prompt.txt"


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def peak_rss_mib(cmd):
    """Runs `cmd` alone and returns its peak resident set (ru_maxrss of that child), MiB."""
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{cmd[0]} exited with {child.returncode}")
    return usage.ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--unfed", default=str(ROOT / "target/release/unfed"))
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-coder-0.5b"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    rows = []
    mems = []
    for model in args.models:
        path = subprocess.run([args.unfed, "model", "fetch", model], check=True, capture_output=True, text=True).stdout.strip()
        ours = {"whole model": ([], []), "3 shards": ([], [])}
        ref = ([], [])
        mem_ours, mem_ref, mem_ref_model = [], [], []
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
            mem_ref.append(l["median"]["peak_rss_mib"])
            mem_ref_model.append(l["median"]["peak_rss_mib"] - l["rss_before_load_mib"])
            # Peak memory of the same workload as a plain generation (the bench loads the model
            # twice, whole and split).
            mem_ours.append(peak_rss_mib([args.unfed, "--threads", str(args.threads), "generate", "--model", path,
                                          "--raw", "--prompt", PROMPT.read_text(), "--max-tokens", str(args.gen)]))
        lp, ld = statistics.median(ref[0]), statistics.median(ref[1])
        rows.append((model, quant, "llama.cpp", lp, ld, 1.0, 1.0))
        for name, (p, d) in ours.items():
            mp, md = statistics.median(p), statistics.median(d)
            rows.append((model, quant, f"unfed, {name}", mp, md, mp / lp, md / ld))
        mems.append((model, statistics.median(mem_ours), statistics.median(mem_ref), statistics.median(mem_ref_model)))

    print(f"threads {args.threads}, {args.gen} generated tokens, medians of {args.rounds} alternating rounds\n")
    print("| model | quant | engine | prefill tok/s | decode tok/s | prefill vs llama.cpp | decode vs llama.cpp |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for m, q, e, p, d, rp, rd in rows:
        print(f"| {m} | {q} | {e} | {p:.1f} | {d:.1f} | {rp:.2f}x | {rd:.2f}x |")
    print("\npeak resident memory, MiB (llama.cpp: whole Python process, and less what it held before loading the model)\n")
    print("| model | unfed generate | llama.cpp process | llama.cpp model share | unfed / llama.cpp process | unfed / model share |")
    print("| --- | --- | --- | --- | --- | --- |")
    for m, u, r, rm in mems:
        print(f"| {m} | {u:.1f} | {r:.1f} | {rm:.1f} | {u / r:.2f}x | {u / rm:.2f}x |")


if __name__ == "__main__":
    main()
