#!/usr/bin/env python3
"""Writes fuzz/in/gguf/tiny-q4_0: a 1-layer llama GGUF of a few KB (Q4_0 matrices, F32 norms,
a byte-level BPE tokenizer), written as tests/fixtures/gen/gen_gguf.py writes its cases, as a
small seed for the GGUF fuzz target.

    /work/venv/bin/python fuzz/make-gguf.py
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests/fixtures/gen"))
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from gen_gguf import write_gguf  # noqa: E402

c = {"arch": "llama", "hidden": 32, "layers": 1, "inter": 32, "heads": 2, "kv": 1, "ctx": 64,
     "theta": 10000.0, "eps": 1e-5, "type": "Q4_0", "vocab": 260, "tied": True}
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(
    hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
    num_key_value_heads=1, vocab_size=260, max_position_embeddings=64, tie_word_embeddings=True))
out = HERE / "in/gguf/tiny-q4_0"
out.parent.mkdir(parents=True, exist_ok=True)
write_gguf(out, c, model, 0, "fuzz-tiny")
print(out, out.stat().st_size, "bytes")
