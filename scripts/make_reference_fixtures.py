#!/usr/bin/env python3
"""Generate Hugging Face `transformers` reference fixtures for UNFED's model tests.

What it makes
-------------
Two tiny random-weight causal LMs, each saved to a directory under
``crates/unfed-model/tests/fixtures/``:

* ``hf-tiny-llama/``  -- ``LlamaForCausalLM`` (GQA: 4 query heads, 2 KV heads,
  untied lm_head, no attention bias, rope_theta 1e4, rms_norm_eps 1e-5).
* ``hf-tiny-qwen2/``  -- ``Qwen2ForCausalLM`` (GQA 4/2, q/k/v biases, tied
  embeddings, rope_theta 1e6, rms_norm_eps 1e-6).

Both: hidden_size 64, intermediate_size 160, 3 layers, vocab 272.

Each directory contains

* ``config.json``, ``generation_config.json``, ``model.safetensors`` (float32,
  written by ``save_pretrained(..., safe_serialization=True)``; tied weights are
  dropped the way transformers normally does it, i.e. the Qwen2 file has no
  ``lm_head.weight``),
* ``tokenizer.json`` + ``tokenizer_config.json`` (ChatML chat template): a
  byte-level BPE with exactly 272 tokens = 256 byte tokens (id == byte value,
  GPT-2 byte->unicode mapping) + 13 merges learned on a small English text
  (ids 256..268) + ``<|endoftext|>`` (269), ``<|im_start|>`` (270),
  ``<|im_end|>`` (271, eos),
* ``reference.json``: transformers/torch versions, ``input_ids`` (12 ids),
  full-sequence float32 ``logits`` [12 x 272], ``hidden_states``
  (output_hidden_states=True: 4 arrays of [12 x 64], embeddings first; the last
  one has the final RMSNorm applied -- see ``hidden_states_note``),
  ``final_layer_output_prenorm`` (last decoder layer output before the final
  norm) and ``greedy_continuation`` (16 greedy tokens from ``generate``, eos
  ignored, exercising the KV-cache path).

Weights are random but scaled so activations and logits are O(1)
(initializer_range 0.15, RMSNorm weights 1 + 0.1*randn, biases 0.1*randn), so a
1e-4 tolerance is meaningful and a wrong norm / missing bias is caught.

How to run
----------
    /root/.venvs/ref/bin/python scripts/make_reference_fixtures.py

(any Python env with torch==2.15.*, transformers==5.23.*, tokenizers works; it
runs on CPU in a few seconds). The output is committed to the repository, so CI
never needs torch: the Rust tests only read the JSON/safetensors files.
The generator pins the versions below and refuses to run with others unless
``--allow-other-versions`` is given; the versions actually used are written
into every ``reference.json``.
"""

import argparse
import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import torch
import transformers
import tokenizers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

PINNED_TORCH = "2.15"
PINNED_TRANSFORMERS = "5.23"

SEED = 1234
REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "crates" / "unfed-model" / "tests" / "fixtures"

VOCAB_SIZE = 272
NUM_MERGES = 13
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 269, 270, 271

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Small English text the 13 BPE merges are learned from.
TRAIN_TEXT = """\
The quick brown fox jumps over the lazy dog. The dog was not amused, and the fox
ran into the forest. In the morning the sun rose over the hills, and the birds
began to sing. There is nothing in the world that the fox loves more than the
sound of the wind in the trees. Then the rain came, and the fox went home to
rest in the warm den under the old oak tree, where the other foxes were sleeping.
"""

# Encodes to exactly 12 ids with the tokenizer built below (checked at runtime).
INPUT_TEXT = "The fox ran in the sun"

HIDDEN_STATES_NOTE = (
    "hidden_states[0] is the token embedding output; hidden_states[i] for "
    "1 <= i < num_hidden_layers is the output of decoder layer i-1 (residual "
    "stream, no norm); the LAST entry hidden_states[num_hidden_layers] has the "
    "final model.norm (RMSNorm) applied, i.e. it equals the input to lm_head "
    "(transformers replaces the last layer's raw output with the normed "
    "last_hidden_state). The raw output of the last decoder layer before the "
    "final norm is stored separately in final_layer_output_prenorm."
)


# --------------------------------------------------------------------------- tokenizer


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable unicode char mapping (same as tokenizers' ByteLevel)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def learn_merges(text, num_merges):
    """Plain BPE training, deterministic (ties broken lexicographically)."""
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    words = Counter(w for w, _ in pre.pre_tokenize_str(text))
    seqs = {w: list(w) for w in words}
    merges = []
    for _ in range(num_merges):
        pairs = Counter()
        for w, c in words.items():
            s = seqs[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += c
        # Highest count; ties broken by the lexicographically smallest pair.
        top = max(pairs.values())
        best = min(p for p, c in pairs.items() if c == top)
        merges.append(best)
        for w in seqs:
            s, out, i = seqs[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return merges


def build_tokenizer():
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}  # id == byte value
    merges = learn_merges(TRAIN_TEXT, NUM_MERGES)
    for a, b in merges:
        tok = a + b
        assert tok not in vocab, f"duplicate merged token {tok!r}"
        vocab[tok] = len(vocab)
    assert len(vocab) == 256 + NUM_MERGES

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    assert tok.get_vocab_size(with_added_tokens=True) == VOCAB_SIZE
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == 269 + i, (t, tok.token_to_id(t))

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=256,
        clean_up_tokenization_spaces=False,
    )
    return hf_tok, merges


# --------------------------------------------------------------------------- models

COMMON = dict(
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB_SIZE,
    max_position_embeddings=256,
    initializer_range=0.15,
    hidden_act="silu",
    bos_token_id=None,
    eos_token_id=271,
    pad_token_id=269,
)


def llama_config():
    return LlamaConfig(
        **COMMON,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        attn_implementation="eager",
    )


def qwen2_config():
    return Qwen2Config(
        **COMMON,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        use_sliding_window=False,
        attn_implementation="eager",
    )


def randomize_norms_and_biases(model, gen):
    """Default init sets RMSNorm weights to 1 and biases to 0; make them random so bugs show."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def floats(t):
    """float32 tensor -> nested lists of Python floats (exact float32 values; json writes repr)."""
    assert t.dtype == torch.float32
    return t.tolist()


def make_fixture(name, model_cls, config, hf_tok, input_ids, input_text):
    out_dir = FIXTURES / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    torch.manual_seed(SEED)
    model = model_cls(config).to(torch.float32)
    gen = torch.Generator().manual_seed(SEED + 1)
    randomize_norms_and_biases(model, gen)
    model.eval()
    assert model.config._attn_implementation == "eager", model.config._attn_implementation
    if config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # generation_config: plain greedy, no eos stopping baked in.
    model.generation_config.do_sample = False

    ids = torch.tensor([input_ids], dtype=torch.long)
    L = config.num_hidden_layers
    captured = {}
    hook = model.model.layers[L - 1].register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("last", (out[0] if isinstance(out, tuple) else out).detach().clone())
    )
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    hook.remove()
    logits = out.logits[0].float()
    hs = [h[0].float() for h in out.hidden_states]
    assert len(hs) == L + 1, len(hs)
    prenorm = captured["last"][0]
    # Verify the documented semantics of hidden_states.
    with torch.no_grad():
        assert torch.allclose(hs[0], model.model.embed_tokens(ids)[0])
        assert torch.allclose(hs[-1], model.model.norm(prenorm), atol=1e-6), "last hidden state is not the normed one?"
        assert not torch.allclose(hs[-1], prenorm)
        assert torch.allclose(logits, model.lm_head(hs[-1]), atol=1e-5)

    # Greedy continuation through generate() (KV cache), eos ignored.
    with torch.no_grad():
        gen_out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=16,
            min_new_tokens=16,
            eos_token_id=None,
            pad_token_id=config.pad_token_id,
            use_cache=True,
        )
    continuation = gen_out[0, len(input_ids):].tolist()
    assert len(continuation) == 16, continuation
    # Cross-check against a no-cache argmax loop.
    seq = list(input_ids)
    with torch.no_grad():
        for _ in range(16):
            nxt = int(model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].argmax())
            seq.append(nxt)
    assert seq[len(input_ids):] == continuation, (seq[len(input_ids):], continuation)

    model.save_pretrained(out_dir, safe_serialization=True)
    hf_tok.save_pretrained(out_dir, save_jinja_files=False)

    reference = {
        "model": name,
        "architecture": type(model).__name__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "tokenizers_version": tokenizers.__version__,
        "seed": SEED,
        "dtype": "float32",
        "attn_implementation": "eager",
        "input_text": input_text,
        "input_ids": list(input_ids),
        "logits": floats(logits),
        "hidden_states_note": HIDDEN_STATES_NOTE,
        "hidden_states": [floats(h) for h in hs],
        "final_layer_output_prenorm": floats(prenorm),
        "greedy_continuation": continuation,
        "greedy_note": "model.generate(do_sample=False, max_new_tokens=16, eos ignored) after input_ids "
        "(uses the KV cache); identical to an argmax loop of full no-cache forwards.",
    }
    with open(out_dir / "reference.json", "w") as f:
        json.dump(reference, f)
        f.write("\n")

    std = logits.std().item()
    print(f"[{name}] logits std={std:.4f} mean={logits.mean().item():.4f} "
          f"absmax={logits.abs().max().item():.4f}")
    print(f"[{name}] hidden_states rms per entry: "
          + ", ".join(f"{h.pow(2).mean().sqrt().item():.3f}" for h in hs))
    print(f"[{name}] greedy continuation: {continuation}")
    assert 0.5 <= std <= 5.0, f"logits std {std} outside [0.5, 5]"
    return out_dir, logits


def verify_roundtrip(out_dir, model_cls, input_ids, expected_logits):
    """Reload from disk with from_pretrained + AutoTokenizer and compare."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    model = model_cls.from_pretrained(out_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([input_ids])).logits[0]
    diff = (logits - expected_logits).abs().max().item()
    assert diff == 0.0 or diff < 1e-6, f"reloaded logits differ by {diff}"
    ref = json.loads((out_dir / "reference.json").read_text())
    assert torch.equal(torch.tensor(ref["logits"], dtype=torch.float32), expected_logits), "JSON floats not exact"

    tok = AutoTokenizer.from_pretrained(out_dir)
    assert tok.encode(ref["input_text"], add_special_tokens=True) == input_ids
    assert len(tok) == VOCAB_SIZE and tok.eos_token_id == 271
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", repr(chat)

    print(f"[{out_dir.name}] reload OK (max |dlogits| = {diff}); safetensors tensors:")
    with safe_open(out_dir / "model.safetensors", "pt") as f:
        for k in sorted(f.keys()):
            t = f.get_slice(k)
            print(f"    {k:50s} {t.get_dtype()} {list(t.get_shape())}")
    total = 0
    for p in sorted(out_dir.iterdir()):
        sz = p.stat().st_size
        total += sz
        print(f"    {p.name:28s} {sz:>9,d} bytes")
    print(f"    {'TOTAL':28s} {total:>9,d} bytes ({total / 1024:.1f} KiB)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--allow-other-versions", action="store_true")
    args = ap.parse_args()

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}")
    if not (torch.__version__.startswith(PINNED_TORCH) and transformers.__version__.startswith(PINNED_TRANSFORMERS)):
        msg = (f"expected torch {PINNED_TORCH}.* and transformers {PINNED_TRANSFORMERS}.*, got "
               f"{torch.__version__} / {transformers.__version__}")
        if not args.allow_other_versions:
            sys.exit(msg + " (pass --allow-other-versions to override)")
        print("WARNING: " + msg)

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    hf_tok, merges = build_tokenizer()
    print("merges:", [a + " " + b for a, b in merges])
    input_ids = hf_tok.encode(INPUT_TEXT, add_special_tokens=False)
    print(f"input {INPUT_TEXT!r} -> {input_ids}")
    assert len(input_ids) == 12, f"INPUT_TEXT must encode to 12 ids, got {len(input_ids)}: {input_ids}"
    assert hf_tok.decode(input_ids) == INPUT_TEXT

    specs = [
        ("hf-tiny-llama", LlamaForCausalLM, llama_config()),
        ("hf-tiny-qwen2", Qwen2ForCausalLM, qwen2_config()),
    ]
    for name, cls, cfg in specs:
        out_dir, logits = make_fixture(name, cls, cfg, hf_tok, input_ids, INPUT_TEXT)
        verify_roundtrip(out_dir, cls, input_ids, logits)


if __name__ == "__main__":
    main()
