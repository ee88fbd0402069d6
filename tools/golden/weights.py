"""Deterministic random weights, bit-identical to apus::random_weight (src/model/weights.cpp and
src/core/random.h). Keep the two in step: the golden tests regenerate checkpoints from a seed
instead of committing them, and check per-tensor sums recorded here."""
import math

import numpy as np

M64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def fnv1a64(s: str) -> int:
    h = 0xCBF29CE484222325
    for b in s.encode():
        h ^= b
        h = (h * 0x100000001B3) & M64
    return h


def splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(GAMMA)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def center_scale(name: str, shape) -> tuple:
    # Names of the three layouts: llama family, Qwen v1 (ln_1/ln_2/ln_f, wte, c_attn, c_proj) and
    # ChatGLM (word_embeddings, query_key_value, dense, dense_4h_to_h, output_layer).
    if name.endswith(("norm.weight", ".ln_1.weight", ".ln_2.weight", ".ln_f.weight")):
        return np.float32(1.0), np.float32(0.25)
    if name.endswith(".bias"):
        return np.float32(0.0), np.float32(0.5)
    if len(shape) == 2 and not name.endswith(("embed_tokens.weight", ".wte.weight", ".word_embeddings.weight")):
        gain = 1.0
        if name.endswith(("q_proj.weight", "k_proj.weight", "lm_head.weight", ".c_attn.weight",
                          ".query_key_value.weight", ".output_layer.weight")):
            gain = 2.0
        elif name.endswith(("o_proj.weight", "down_proj.weight", ".c_proj.weight", ".dense.weight",
                            ".dense_4h_to_h.weight")):
            gain = 3.0
        return np.float32(0.0), np.float32(gain * math.sqrt(3.0) / math.sqrt(float(shape[1])))
    return np.float32(0.0), np.float32(1.0)


def random_weight(name: str, shape, seed: int) -> np.ndarray:
    """float32 values before conversion to the checkpoint dtype (round to nearest even)."""
    n = int(np.prod(shape)) if len(shape) else 1
    key = fnv1a64(name) ^ ((seed * GAMMA) & M64)
    with np.errstate(over="ignore"):
        idx = np.arange(n, dtype=np.uint64) + np.uint64(key)
        bits = splitmix64(idx) >> np.uint64(40)
    u = bits.astype(np.float32) * np.float32(1.0 / 16777216.0)
    r = u * np.float32(2.0) - np.float32(1.0)
    center, scale = center_scale(name, shape)
    v = center + scale * r
    return v.astype(np.float32).reshape(shape)
