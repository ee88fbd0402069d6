"""Golden fixtures for the llama-family architectures, from the Hugging Face implementation.

Runs where torch + transformers are installed (the GPU machine; it uses the CPU, float32, eager
attention). For each variant it builds a tiny model whose weights come from the deterministic
generator in weights.py (stored dtype, then upcast to float32 as transformers does on load),
records the log-softmax of every prompt position, a 32-token greedy continuation decoded
incrementally with the KV cache (as generate() does), the log-softmax of each step, and a sum per
tensor so the C++ side can check it regenerated the same weights.

    python3 tools/golden/make_golden.py --out tests/golden/
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
from weights import random_weight  # noqa: E402

SEED = 1234
PROMPT_LEN = 12
GEN_LEN = 32
VOCAB = 256

BASE = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": VOCAB,
    "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
}

# (name, architecture, model_type, overrides, dtype)
VARIANTS = [
    ("llama_gqa_f32", "LlamaForCausalLM", "llama", {}, "F32"),
    ("llama_mqa_bias_bf16", "LlamaForCausalLM", "llama",
     {"num_key_value_heads": 1, "attention_bias": True, "mlp_bias": True}, "BF16"),
    ("llama3_rope_f16", "LlamaForCausalLM", "llama",
     {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 32}}, "F16"),
    ("llama_linear_rope_bf16", "LlamaForCausalLM", "llama",
     {"rope_scaling": {"type": "linear", "factor": 2.0}}, "BF16"),
    ("llama_dynamic_rope_f32", "LlamaForCausalLM", "llama",
     {"rope_scaling": {"type": "dynamic", "factor": 2.0}, "max_position_embeddings": 24}, "F32"),
    ("qwen2_tied_bf16", "Qwen2ForCausalLM", "qwen2",
     {"tie_word_embeddings": True, "rope_theta": 1000000.0, "use_sliding_window": False}, "BF16"),
    ("qwen3_qknorm_bf16", "Qwen3ForCausalLM", "qwen3",
     {"head_dim": 32, "tie_word_embeddings": True, "attention_bias": False}, "BF16"),
    ("mistral_window_bf16", "MistralForCausalLM", "mistral", {"sliding_window": 6}, "BF16"),
]

TORCH_DTYPE = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def build(config_json: dict, dtype: str, tmp: str):
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config_json, f)
    config = AutoConfig.from_pretrained(tmp)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                             attn_implementation="eager")
    # The legacy `rope_scaling` spelling (as on the hub) must have been understood.
    scaling = config_json.get("rope_scaling") or {}
    want = scaling.get("rope_type", scaling.get("type", "default"))
    assert model.model.rotary_emb.rope_type == want, (model.model.rotary_emb.rope_type, want)
    model.eval()
    tensors = []
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied lm_head is not listed twice
            v = torch.from_numpy(random_weight(name, list(p.shape), SEED))
            stored = v.to(TORCH_DTYPE[dtype])
            p.copy_(stored.float())
            tensors.append({"name": name, "shape": list(p.shape),
                            "sum": float(stored.double().sum())})
    return model, tensors


def logprobs(logits: torch.Tensor) -> list:
    lp = torch.log_softmax(logits.float(), dim=-1)
    return [[round(float(x), 6) for x in row] for row in lp]


def run(model, prompt):
    with torch.no_grad():
        ids = torch.tensor([prompt])
        out = model(ids, use_cache=True)
        prompt_lp = logprobs(out.logits[0])
        past = out.past_key_values
        last = out.logits[0, -1]
        generated, steps = [], []
        for _ in range(GEN_LEN):
            steps.append(logprobs(last[None])[0])
            tok = int(torch.argmax(last))
            generated.append(tok)
            out = model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            last = out.logits[0, -1]
    return prompt_lp, generated, steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tmp", default="/tmp/apus_golden")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(7)
    prompt = [int(x) for x in rng.integers(3, VOCAB, PROMPT_LEN)]
    for name, arch, model_type, overrides, dtype in VARIANTS:
        cfg = dict(BASE)
        cfg.update(overrides)
        cfg["architectures"] = [arch]
        cfg["model_type"] = model_type
        cfg["torch_dtype"] = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype]
        model, tensors = build(cfg, dtype, os.path.join(args.tmp, name))
        prompt_lp, generated, steps = run(model, prompt)
        # A continuation that repeats one token means the output ignores attention and MLP.
        assert len(set(generated)) >= 8, f"{name}: degenerate continuation {generated}"
        margins = []
        for s in steps:
            top = sorted(s, reverse=True)[:2]
            margins.append(round(top[0] - top[1], 4))
        if name.startswith("mistral"):  # the window must matter, or the fixture tests nothing
            model.config.sliding_window = None
            unwindowed, _, _ = run(model, prompt)
            assert np.abs(np.array(unwindowed) - np.array(prompt_lp)).max() > 1e-2, "window had no effect"
        fixture = {
            "name": name, "seed": SEED, "dtype": dtype, "config": cfg,
            "reference": f"transformers {transformers.__version__}, torch {torch.__version__}, float32, eager",
            "tensors": tensors, "prompt": prompt, "prompt_logprobs": prompt_lp,
            "generated": generated, "step_logprobs": steps, "step_margins": margins,
        }
        with open(os.path.join(args.out, name + ".json"), "w") as f:
            json.dump(fixture, f, separators=(",", ":"))
        print(f"{name}: generated {generated[:8]}... min margin {min(margins):.4f} "
              f"rope={getattr(model.config, 'rope_parameters', None) or getattr(model.config, 'rope_scaling', None)}")


if __name__ == "__main__":
    main()
