#!/usr/bin/env python3
"""Reference CPU benchmark of llama.cpp (via llama-cpp-python) for UNFED.

BENCHMARK ONLY. This script is never run by CI; it exists so that UNFED's own
benchmark (which reads the same prompt file,
crates/unfed-engine/src/bench_prompt.txt) can be compared with an independent,
well-optimised engine on the same machine, model file and thread count.

Setup (once; llama-cpp-python builds llama.cpp from source, which takes
several minutes on a 2-core machine):

    python3 -m venv /root/.venvs/llama
    CMAKE_ARGS="-DGGML_NATIVE=ON" /root/.venvs/llama/bin/pip install llama-cpp-python==0.3.36
    /root/.venvs/llama/bin/pip install numpy

(0.3.36 vendors llama.cpp commit 0c1e570, ggml 0.25.3. On a small machine run
the install in the background with its output going to a log file.)

Usage:

    /root/.venvs/llama/bin/python scripts/bench_llamacpp.py \
        --model /tmp/dl/smol.gguf --threads 2 \
        --prompt-file crates/unfed-engine/src/bench_prompt.txt \
        --gen 128 --runs 3 [--json]

What is measured:

* The model is loaded with llama.cpp's default model parameters (mmap as
  llama.cpp does by default, CPU only) and one context with the default context
  parameters except: n_threads = n_threads_batch = --threads, n_ctx large
  enough for prompt + generated tokens (at least 512), and n_batch / n_ubatch
  raised to the prompt length if it exceeds their defaults, so the whole prompt
  is one llama_decode call and one ubatch (one graph). Flash attention stays on
  llama.cpp's default "auto" (it resolves to enabled on CPU; reported).
* The prompt file's text is used verbatim (no trimming) and tokenized the way
  llama.cpp's tools do: add_special=True (so BOS is added only if the model's
  metadata asks for it) and parse_special=True.
* --warmup untimed runs (default 1, like llama-bench) go first, then each
  timed run: clear the KV cache (llama_memory_clear), time the prefill (one
  llama_decode of the whole prompt + argmax of the last logits), then time
  --gen single-token llama_decode calls, each fed the argmax of the previous
  logits (greedy; EOS is ignored so the count is fixed). Prefill tok/s =
  prompt tokens / prefill time; decode tok/s = --gen / decode time.
* Peak RSS is getrusage(RUSAGE_SELF).ru_maxrss after each run (a high-water
  mark for the whole process, so it only grows; mmapped weights count once
  their pages are touched). The RSS before the model is loaded (Python, numpy,
  llama_cpp imported) is reported too.
* Without --json a human-readable report goes to stdout; with --json exactly
  one JSON object goes to stdout and the informational text to stderr.

The greedy token ids of the first run are reported too (all runs must agree);
they are a useful correctness reference for UNFED's own greedy decoding.
"""

import argparse
import ctypes
import json
import os
import re
import resource
import statistics
import sys
import time

import numpy as np

try:
    import llama_cpp
except ImportError:  # pragma: no cover - benchmark-only dependency
    sys.exit(
        "llama_cpp not importable; create the venv described at the top of "
        "this script and run it with /root/.venvs/llama/bin/python"
    )


# ---------------------------------------------------------------------------
# llama.cpp log capture (used to pull the tensor type summary out of the
# loader's log, and to keep stdout clean for --json)
# ---------------------------------------------------------------------------

_LOG = []
_ECHO_LOG = False


@llama_cpp.llama_log_callback
def _log_cb(level, text, user_data):  # noqa: ARG001
    s = text.decode("utf-8", errors="replace") if text else ""
    _LOG.append(s)
    if _ECHO_LOG:
        sys.stderr.write(s)


def install_log_capture():
    llama_cpp.llama_log_set(_log_cb, ctypes.c_void_p(0))


def ggml_version_and_commit():
    """ggml_version()/ggml_commit() from libggml-base, if exported."""
    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    for name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
        path = os.path.join(libdir, name)
        if not os.path.exists(path):
            continue
        try:
            lib = ctypes.CDLL(path)
            out = []
            for fn in ("ggml_version", "ggml_commit"):
                f = getattr(lib, fn)
                f.restype = ctypes.c_char_p
                f.argtypes = []
                out.append(f().decode())
            return out[0], out[1]
        except (OSError, AttributeError):
            break
    return None, None


def version_info():
    ggml_ver, ggml_commit = ggml_version_and_commit()
    return {
        "llama_cpp_python": getattr(llama_cpp, "__version__", None),
        "ggml_version": ggml_ver,
        "llama_cpp_commit": ggml_commit,  # llama.cpp sets GGML_BUILD_COMMIT to its own commit
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
    }


def meta_str(model, key):
    buf = ctypes.create_string_buffer(4096)
    n = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    if n < 0:
        return None
    return buf.value.decode("utf-8", errors="replace")


def tensor_types_from_log(log_text):
    """Parse 'llama_model_loader: - type  q4_1:   30 tensors' lines."""
    types = {}
    for m in re.finditer(r"-\s+type\s+(\w+):\s+(\d+)\s+tensors", log_text):
        types[m.group(1)] = types.get(m.group(1), 0) + int(m.group(2))
    ftype = None
    m = re.search(r"file type\s*=\s*([^\n]+)", log_text)
    if m:
        ftype = m.group(1).strip()
    return types, ftype


def tokenize(vocab, text, add_special, parse_special):
    data = text.encode("utf-8")
    n_max = len(data) + 16
    arr = (llama_cpp.llama_token * n_max)()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), arr, n_max, add_special, parse_special)
    if n < 0:
        n_max = -n
        arr = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), arr, n_max, add_special, parse_special)
    if n < 0:
        raise RuntimeError("llama_tokenize failed")
    return list(arr[:n])


def detokenize(vocab, ids):
    if not ids:
        return ""
    arr = (llama_cpp.llama_token * len(ids))(*ids)
    size = 64 + 32 * len(ids)
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, True)
    if n < 0:
        size = -n
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, True)
    return buf.raw[:n].decode("utf-8", errors="replace")


def perf_counts(ctx):
    """llama.cpp's own token counters for the run (sanity check: n_p_eval should
    be the prompt length, n_eval --gen). Its timers stay 0 because the default
    context params have no_perf=true, which this script leaves alone."""
    try:
        d = llama_cpp.llama_perf_context(ctx)
        return {"n_p_eval": d.n_p_eval, "n_eval": d.n_eval}
    except Exception:  # noqa: BLE001 - informational only
        return None


def main():
    global _ECHO_LOG
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--prompt-file", required=True)
    ap.add_argument("--gen", type=int, required=True)
    ap.add_argument("--runs", type=int, required=True)
    ap.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed full runs (prefill + --gen decode) before the timed ones (default 1, as llama-bench)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--verbose", action="store_true", help="echo llama.cpp's log to stderr")
    args = ap.parse_args()
    if args.runs < 1 or args.gen < 1 or args.threads < 1 or args.warmup < 0:
        ap.error("--runs, --gen and --threads must be >= 1, --warmup >= 0")

    _ECHO_LOG = args.verbose
    info = sys.stderr if args.json else sys.stdout

    # Python + numpy + llama_cpp import overhead, to subtract when comparing
    # with a native binary
    rss_base_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    install_log_capture()
    llama_cpp.llama_backend_init()

    mparams = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(args.model.encode(), mparams)
    if not model:
        sys.exit(f"failed to load model {args.model}")
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)

    with open(args.prompt_file, "rb") as f:
        prompt_text = f.read().decode("utf-8")
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    prompt = tokenize(vocab, prompt_text, add_special=True, parse_special=True)
    n_prompt = len(prompt)

    cparams = llama_cpp.llama_context_default_params()
    need = n_prompt + args.gen + 8
    cparams.n_ctx = max(512, (need + 255) // 256 * 256)
    # defaults (n_batch 2048, n_ubatch 512) unless the prompt is longer: the
    # prompt must be one llama_decode call and one ubatch (one graph)
    cparams.n_batch = max(cparams.n_batch, n_prompt)
    cparams.n_ubatch = max(cparams.n_ubatch, n_prompt)
    cparams.n_threads = args.threads
    cparams.n_threads_batch = args.threads
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    if not ctx:
        sys.exit("failed to create context")
    mem = llama_cpp.llama_get_memory(ctx)

    log_text = "".join(_LOG)
    tensor_types, file_type = tensor_types_from_log(log_text)
    fa = re.search(r"Flash Attention (enabled|disabled)", log_text) or re.search(
        r"flash_attn\s*=\s*(\w+)", log_text
    )
    repacked = re.findall(r"repack tensor (\S+) with (\S+)", log_text)
    model_info = {
        "path": os.path.abspath(args.model),
        "name": meta_str(model, "general.name"),
        "arch": meta_str(model, "general.architecture"),
        "tokenizer_pre": meta_str(model, "tokenizer.ggml.pre"),
        "file_type": file_type,
        "tensor_types": tensor_types,
        "n_params": llama_cpp.llama_model_n_params(model),
        "size_bytes": llama_cpp.llama_model_size(model),
        "n_vocab": n_vocab,
        "add_bos": add_bos,
        # weights llama.cpp's CPU backend re-lays-out at load time (CPU_REPACK)
        "repacked_tensors": len(repacked),
        "repack_formats": sorted({f for _, f in repacked}),
    }
    ctx_info = {
        "n_ctx": llama_cpp.llama_n_ctx(ctx),
        "n_batch": llama_cpp.llama_n_batch(ctx),
        "n_ubatch": llama_cpp.llama_n_ubatch(ctx),
        "n_threads": args.threads,
        "n_threads_batch": args.threads,
        "flash_attn": fa.group(1) if fa else None,
        "warmup_runs": args.warmup,
    }

    prompt_arr = (llama_cpp.llama_token * n_prompt)(*prompt)
    one = (llama_cpp.llama_token * 1)()

    def argmax_last():
        ptr = llama_cpp.llama_get_logits_ith(ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(n_vocab,))))

    runs = []
    first_ids = None
    for r in range(-args.warmup, args.runs):
        llama_cpp.llama_memory_clear(mem, True)
        llama_cpp.llama_perf_context_reset(ctx)

        t0 = time.perf_counter()
        rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(prompt_arr, n_prompt))
        if rc != 0:
            sys.exit(f"llama_decode (prefill) failed: {rc}")
        llama_cpp.llama_synchronize(ctx)
        tok = argmax_last()
        t1 = time.perf_counter()

        ids = [tok]
        for _ in range(args.gen):
            one[0] = tok
            rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(one, 1))
            if rc != 0:
                sys.exit(f"llama_decode (decode) failed: {rc}")
            llama_cpp.llama_synchronize(ctx)
            tok = argmax_last()
            ids.append(tok)
        t2 = time.perf_counter()

        if r < 0:  # warmup
            continue
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        prefill_s = t1 - t0
        decode_s = t2 - t1
        run = {
            "run": r + 1,
            "prompt_tokens": n_prompt,
            "gen_tokens": args.gen,
            "prefill_s": prefill_s,
            "decode_s": decode_s,
            "prefill_tok_s": n_prompt / prefill_s,
            "decode_tok_s": args.gen / decode_s,
            "peak_rss_mib": rss_kib / 1024.0,
            "llama_counts": perf_counts(ctx),
        }
        runs.append(run)
        if first_ids is None:
            first_ids = ids
        elif ids != first_ids:
            run["greedy_mismatch"] = True
        if not args.json:
            print(
                f"run {r + 1}: prompt {n_prompt} tok, prefill {run['prefill_tok_s']:.1f} tok/s "
                f"({prefill_s * 1e3:.1f} ms), decode {run['decode_tok_s']:.1f} tok/s "
                f"({decode_s * 1e3:.1f} ms / {args.gen}), peak RSS {run['peak_rss_mib']:.1f} MiB",
                file=info,
            )

    median = {
        "prompt_tokens": n_prompt,
        "prefill_tok_s": statistics.median(r["prefill_tok_s"] for r in runs),
        "decode_tok_s": statistics.median(r["decode_tok_s"] for r in runs),
        "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
    }
    result = {
        "engine": "llama.cpp",
        "version": version_info(),
        "model": model_info,
        "context": ctx_info,
        "prompt_file": os.path.abspath(args.prompt_file),
        "prompt_tokens": n_prompt,
        "prompt_ids": prompt,
        "gen": args.gen,
        "rss_before_load_mib": rss_base_mib,
        "runs": runs,
        "median": median,
        "greedy_ids": first_ids,
        "greedy_text": detokenize(vocab, first_ids),
        "greedy_consistent": all(not r.get("greedy_mismatch") for r in runs),
    }

    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    else:
        v = result["version"]
        print(
            f"llama.cpp {v['llama_cpp_commit']} (ggml {v['ggml_version']}, "
            f"llama-cpp-python {v['llama_cpp_python']})"
        )
        print(f"system: {v['system_info']}")
        print(
            f"model: {model_info['name']} [{model_info['arch']}, pre={model_info['tokenizer_pre']}] "
            f"{model_info['file_type']}, {model_info['n_params'] / 1e6:.1f}M params, "
            f"{model_info['size_bytes'] / 2**20:.1f} MiB"
        )
        print(
            "tensor types: "
            + ", ".join(f"{k}={v}" for k, v in sorted(tensor_types.items()))
            + (
                f" ({len(repacked)} repacked at load: {', '.join(model_info['repack_formats'])})"
                if repacked
                else ""
            )
        )
        print(
            f"context: n_ctx={ctx_info['n_ctx']} n_batch={ctx_info['n_batch']} "
            f"n_ubatch={ctx_info['n_ubatch']} threads={args.threads} flash_attn={ctx_info['flash_attn']} "
            f"warmup={args.warmup}"
        )
        print(
            f"median of {args.runs}: prompt {n_prompt} tok, prefill {median['prefill_tok_s']:.1f} tok/s, "
            f"decode {median['decode_tok_s']:.1f} tok/s, peak RSS {median['peak_rss_mib']:.1f} MiB "
            f"(of which {rss_base_mib:.1f} MiB before the model was loaded)"
        )
        print(f"greedy output consistent across runs: {result['greedy_consistent']}")
        print(f"greedy text (first run): {result['greedy_text']!r}")

    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)


if __name__ == "__main__":
    main()
