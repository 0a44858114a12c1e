#!/usr/bin/env python3
"""Generate tokenizer fixtures for UNFED's Rust tokenizer tests, using llama.cpp
(via llama-cpp-python) as the independent reference.

Not run by CI; the generated JSON files are committed. Setup is the same venv
as scripts/bench_llamacpp.py:

    python3 -m venv /root/.venvs/llama
    CMAKE_ARGS="-DGGML_NATIVE=ON" /root/.venvs/llama/bin/pip install llama-cpp-python==0.3.36
    /root/.venvs/llama/bin/pip install numpy

Usage (defaults are the two test models):

    /root/.venvs/llama/bin/python scripts/make_token_fixtures.py \
        --smollm2 /tmp/dl/smol.gguf --qwen /tmp/dl/qwen.gguf

writes

    crates/unfed-model/tests/fixtures/tokens-smollm2-135m.json
    crates/unfed-model/tests/fixtures/tokens-qwen2.5-coder-0.5b.json

Each file is

    {"model": ..., "model_file": ..., "model_sha256": ...,
     "llama_cpp_version": ..., "tokenizer": {...}, "special": {...},
     "cases": [{"text": ..., "ids": [...]}, ...]}

`ids` is exactly llama_tokenize(vocab, text, add_special=false,
parse_special=true): no BOS/EOS is added, and special-token text such as
"<|im_start|>" becomes the special token. Every case is detokenized again with
llama_detokenize(remove_special=false, unparse_special=true); if llama.cpp
itself does not round-trip a case, the case also gets a "detokenized" field
holding llama.cpp's output (the script reports it on stderr).
"""

import argparse
import ctypes
import hashlib
import json
import os
import sys

try:
    import llama_cpp
except ImportError:  # pragma: no cover
    sys.exit("llama_cpp not importable; see the setup at the top of this script")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO, "crates", "unfed-model", "tests", "fixtures")

CASES = [
    # plain English with punctuation
    "Hello, world! How are you today? I'm fine -- thanks for asking; really.",
    # spaces: leading, trailing, repeated
    " Hello",
    "   leading and trailing spaces   ",
    "multiple   spaces    between     words",
    # tabs and newlines
    "tabs\tbetween\t\twords\t",
    "line one\nline two\n\n\nline five\n",
    "\n\n\n",
    "  \n  ",
    "windows\r\nline endings\r\n",
    # digits
    "1234567890",
    "pi is 3.14159, e is 2.71828",
    "year 2026",
    # contractions
    "don't, I'll, we've, She'S",
    # code
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "fn main() {\n    let v: Vec<u32> = std::iter::repeat(7).take(3).collect::<Vec<_>>();\n"
    "    println!(\"{:?}\", v);\n}\n",
    # non-ASCII
    "café naïve résumé",
    "你好，世界",
    "Привет, мир! Как дела?",
    "🦀🚀 👩‍💻",
    # chat markup with special tokens
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "before<|endoftext|>after",
    # "</s>" is an ordinary BPE token in Qwen2's vocabulary that llama.cpp's
    # load-time heuristics mark as control/EOG, so parse_special matches it
    "a</s>b",
    # edge cases
    "",
    "antidisestablishmentarianism",
]

MODELS = {
    "smollm2": ("tokens-smollm2-135m.json", "SmolLM2-135M-Instruct"),
    "qwen": ("tokens-qwen2.5-coder-0.5b.json", "Qwen2.5-Coder-0.5B-Instruct"),
}

_LOG = []


@llama_cpp.llama_log_callback
def _log_cb(level, text, user_data):  # noqa: ARG001
    _LOG.append(text.decode("utf-8", errors="replace") if text else "")


def ggml_commit():
    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    path = os.path.join(libdir, "libggml-base.so")
    try:
        lib = ctypes.CDLL(path)
        lib.ggml_commit.restype = ctypes.c_char_p
        lib.ggml_version.restype = ctypes.c_char_p
        return lib.ggml_version().decode(), lib.ggml_commit().decode()
    except (OSError, AttributeError):
        return None, None


def meta_str(model, key):
    buf = ctypes.create_string_buffer(4096)
    n = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    return None if n < 0 else buf.value.decode("utf-8", errors="replace")


def tokenize(vocab, text):
    data = text.encode("utf-8")
    n_max = len(data) + 16
    arr = (llama_cpp.llama_token * n_max)()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), arr, n_max, False, True)
    if n < 0:
        raise RuntimeError(f"llama_tokenize failed for {text!r}: {n}")
    return list(arr[:n])


def detokenize(vocab, ids):
    if not ids:
        return b""
    arr = (llama_cpp.llama_token * len(ids))(*ids)
    size = 64 + 64 * len(ids)
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, True)
    if n < 0:
        raise RuntimeError(f"llama_detokenize failed: {n}")
    return buf.raw[:n]


def token_text(vocab, tok):
    t = llama_cpp.llama_vocab_get_text(vocab, tok)
    return t.decode("utf-8", errors="replace") if t is not None else None


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dump(obj):
    """JSON with one case per line-group and id lists kept on one line."""
    head = {k: v for k, v in obj.items() if k != "cases"}
    lines = ["{"]
    for k, v in head.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v)},")
    lines.append('  "cases": [')
    for i, c in enumerate(obj["cases"]):
        sep = "," if i + 1 < len(obj["cases"]) else ""
        lines.append("    " + json.dumps(c) + sep)
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def build(path, label, version, commit):
    _LOG.clear()
    mparams = llama_cpp.llama_model_default_params()
    mparams.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(path.encode(), mparams)
    if not model:
        sys.exit(f"failed to load {path}")
    vocab = llama_cpp.llama_model_get_vocab(model)

    def tid(t):
        return None if t < 0 else int(t)

    special = {}
    for name, fn in [
        ("bos", llama_cpp.llama_vocab_bos),
        ("eos", llama_cpp.llama_vocab_eos),
        ("eot", llama_cpp.llama_vocab_eot),
        ("pad", llama_cpp.llama_vocab_pad),
        ("nl", llama_cpp.llama_vocab_nl),
    ]:
        t = tid(fn(vocab))
        special[name] = t
        special[name + "_text"] = token_text(vocab, t) if t is not None else None
    special["add_bos"] = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    special["add_eos"] = bool(llama_cpp.llama_vocab_get_add_eos(vocab))
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    eog = [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    special["eog"] = eog
    special["eog_text"] = [token_text(vocab, t) for t in eog]

    tokenizer = {
        "model": meta_str(model, "tokenizer.ggml.model"),
        "pre": meta_str(model, "tokenizer.ggml.pre"),
        "n_vocab": n_vocab,
    }

    cases = []
    failures = []
    for text in CASES:
        ids = tokenize(vocab, text)
        back = detokenize(vocab, ids)
        case = {"text": text, "ids": ids}
        if back != text.encode("utf-8"):
            case["detokenized"] = back.decode("utf-8", errors="replace")
            failures.append((text, back))
        cases.append(case)

    out = {
        "model": label,
        "general_name": meta_str(model, "general.name"),
        "model_file": os.path.basename(path),
        "model_sha256": sha256(path),
        "llama_cpp_version": f"llama.cpp {commit} (ggml {version}, llama-cpp-python {llama_cpp.__version__})",
        "tokenize": "llama_tokenize(add_special=false, parse_special=true)",
        "detokenize": "llama_detokenize(remove_special=false, unparse_special=true)",
        "tokenizer": tokenizer,
        "special": special,
        "cases": cases,
    }
    llama_cpp.llama_model_free(model)
    return out, failures


def main():
    ap = argparse.ArgumentParser(description="generate tokenizer fixtures with llama.cpp")
    ap.add_argument("--smollm2", default="/tmp/dl/smol.gguf")
    ap.add_argument("--qwen", default="/tmp/dl/qwen.gguf")
    ap.add_argument("--out-dir", default=OUT_DIR)
    args = ap.parse_args()

    llama_cpp.llama_log_set(_log_cb, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    version, commit = ggml_commit()
    os.makedirs(args.out_dir, exist_ok=True)

    for key, path in (("smollm2", args.smollm2), ("qwen", args.qwen)):
        fname, label = MODELS[key]
        out, failures = build(path, label, version, commit)
        dest = os.path.join(args.out_dir, fname)
        with open(dest, "w", encoding="utf-8") as f:
            f.write(dump(out))
        print(
            f"{dest}: {len(out['cases'])} cases, pre={out['tokenizer']['pre']}, "
            f"special={ {k: v for k, v in out['special'].items() if not k.endswith('_text')} }",
            file=sys.stderr,
        )
        for text, back in failures:
            print(f"  NO ROUND-TRIP: {text!r} -> {back!r}", file=sys.stderr)


if __name__ == "__main__":
    main()
