#!/usr/bin/env python3
"""A Qwen2-shaped checkpoint with i.i.d. random bf16 weights and the real Qwen tokenizer, written with
the standard library only (no numpy), to measure `apus export --quant_bits 4` on a model whose
activations have no trained structure (bench/RESULTS.md, "GPTQ export").

usage: tools/quant/random_qwen2.py OUT_DIR [--hidden 256] [--inter 512] [--layers 4] [--seed 0]
"""
import argparse, json, os, random, shutil, struct, sys

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--hidden", type=int, default=256)
p.add_argument("--inter", type=int, default=512)
p.add_argument("--layers", type=int, default=4)
p.add_argument("--heads", type=int, default=8)
p.add_argument("--kv_heads", type=int, default=2)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
V, H, I, L = 151936, a.hidden, a.inter, a.layers
hd = H // a.heads
rng = random.Random(a.seed)
tok = os.path.join(os.path.dirname(__file__), "..", "..", "third_party", "tokenizers", "qwen3")
os.makedirs(a.out, exist_ok=True)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(tok, f), a.out)
config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": H, "intermediate_size": I,
          "num_hidden_layers": L, "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads,
          "vocab_size": V, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
          "hidden_act": "silu", "tie_word_embeddings": True, "bos_token_id": 151643, "eos_token_id": 151645,
          "torch_dtype": "bfloat16"}
json.dump(config, open(os.path.join(a.out, "config.json"), "w"), indent=2)


def bf16(values):
    return b"".join(struct.pack("<H", struct.unpack("<I", struct.pack("<f", v))[0] >> 16) for v in values)


def uniform(n, scale, center=0.0):
    return [center + scale * (2.0 * rng.random() - 1.0) for _ in range(n)]


tensors = [("model.embed_tokens.weight", [V, H], 1.0, 0.0)]
for i in range(L):
    q = f"model.layers.{i}."
    tensors += [(q + "input_layernorm.weight", [H], 0.25, 1.0), (q + "post_attention_layernorm.weight", [H], 0.25, 1.0)]
    for name, rows in (("q_proj", a.heads * hd), ("k_proj", a.kv_heads * hd), ("v_proj", a.kv_heads * hd)):
        tensors += [(q + f"self_attn.{name}.weight", [rows, H], 3 ** 0.5 / H ** 0.5, 0.0),
                    (q + f"self_attn.{name}.bias", [rows], 0.5, 0.0)]
    tensors += [(q + "self_attn.o_proj.weight", [H, a.heads * hd], 3 * 3 ** 0.5 / H ** 0.5, 0.0),
                (q + "mlp.gate_proj.weight", [I, H], 3 ** 0.5 / H ** 0.5, 0.0),
                (q + "mlp.up_proj.weight", [I, H], 3 ** 0.5 / H ** 0.5, 0.0),
                (q + "mlp.down_proj.weight", [H, I], 3 * 3 ** 0.5 / I ** 0.5, 0.0)]
tensors.append(("model.norm.weight", [H], 0.25, 1.0))
header, blobs, off = {}, [], 0
for name, shape, scale, center in tensors:
    n = 1
    for d in shape:
        n *= d
    blob = bf16(uniform(n, scale, center))
    header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + len(blob)]}
    blobs.append(blob)
    off += len(blob)
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(os.path.join(a.out, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for b in blobs:
        f.write(b)
print("wrote", a.out, file=sys.stderr)
