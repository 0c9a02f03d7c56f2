"""Writes an HF llama directory of the size of a 1.1B-parameter model (TinyLlama's shapes) whose
safetensors file is sparse: a real header, no weight data on disk. `ftl check` and `ftl inspect`
read headers only, so they can be timed on it (BENCHMARKS.md, "Plan mode").

    python3 bench/make_sparse_model.py OUT_DIR
"""
import json
import os
import struct
import sys

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
h, inter, layers, heads, kv, vocab = 2048, 5632, 22, 32, 4, 32000
hd = h // heads
config = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": h,
    "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
    "num_key_value_heads": kv, "vocab_size": vocab, "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
shapes = {"model.embed_tokens.weight": [vocab, h], "model.norm.weight": [h], "lm_head.weight": [vocab, h]}
for i in range(layers):
    p = f"model.layers.{i}."
    shapes.update({
        p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h],
        p + "self_attn.q_proj.weight": [h, h], p + "self_attn.k_proj.weight": [kv * hd, h],
        p + "self_attn.v_proj.weight": [kv * hd, h], p + "self_attn.o_proj.weight": [h, h],
        p + "mlp.gate_proj.weight": [inter, h], p + "mlp.up_proj.weight": [inter, h],
        p + "mlp.down_proj.weight": [h, inter],
    })
header, off = {}, 0
for name, shape in shapes.items():
    n = 2
    for d in shape:
        n *= d
    header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + n]}
    off += n
raw = json.dumps(header).encode()
raw += b" " * (-len(raw) % 8)
with open(os.path.join(out, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    f.truncate(8 + len(raw) + off)
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
print(f"{out}: {sum(1 for _ in shapes)} tensors, {off // 2:,} parameters (sparse)")
