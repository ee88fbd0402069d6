"""Golden fixtures for GPTQ and AWQ checkpoints (issue 9), with the Hugging Face implementation as
the reference on the dequantized weights.

Runs where torch + transformers + safetensors are installed (the GPU machine; it uses the CPU,
float32, eager attention). No GPTQ/AWQ library is needed or used: the packing below follows the
layouts of AutoGPTQ's and AutoAWQ's pack() (../../../shared/FORMATS.md "GPTQ"), written from those
descriptions independently of src/quant, and is checked by an unpacker that follows their
dequantizers. For each variant it:
  1. takes the golden generator's float weights (tools/golden/weights.py) of a tiny model,
  2. quantizes every linear layer of the decoder round-to-nearest (per group; act-order variants
     draw a random g_idx, so groups are scattered over the inputs),
  3. writes a checkpoint directory tests/golden/quant/NAME/ (config.json with quantization_config,
     model.safetensors with qweight/qzeros/scales/g_idx; embeddings, norms, biases and lm_head in
     the float dtype),
  4. loads the dequantized weights w = (q - zero) * scale (exact in float32) into the float model
     and records the log-softmax of every prompt position and a 32-token greedy continuation
     (tests/golden/quant/NAME.json, read by tests/test_golden.cpp's GoldenQuant).

    python3 tools/quant/make_quant_golden.py --out tests/golden/quant/
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "golden"))
from make_golden import BASE, PROMPT_LEN, SEED, VOCAB, run  # noqa: E402
from weights import random_weight  # noqa: E402

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]

# (name, architecture, model_type, overrides, float dtype, quantization)
VARIANTS = [
    ("qwen2_gptq4_g32_v1_f16", "Qwen2ForCausalLM", "qwen2", {"rope_theta": 1000000.0, "use_sliding_window": False},
     "F16", {"quant_method": "gptq", "bits": 4, "group_size": 32, "sym": True, "desc_act": False,
             "checkpoint_format": "gptq"}),
    ("llama_gptq4_actorder_asym_v2_bf16", "LlamaForCausalLM", "llama", {},
     "BF16", {"quant_method": "gptq", "bits": 4, "group_size": 32, "sym": False, "desc_act": True,
              "checkpoint_format": "gptq_v2"}),
    ("qwen2_gptq4_nogroup_asym_v1_f16", "Qwen2ForCausalLM", "qwen2", {"tie_word_embeddings": True, "use_sliding_window": False},
     "F16", {"quant_method": "gptq", "bits": 4, "group_size": -1, "sym": False, "desc_act": False}),
    ("llama_gptq8_g64_actorder_v1_f16", "LlamaForCausalLM", "llama", {"attention_bias": True},
     "F16", {"quant_method": "gptq", "bits": 8, "group_size": 64, "sym": True, "desc_act": True,
             "checkpoint_format": "gptq"}),
    ("qwen2_awq4_g32_f16", "Qwen2ForCausalLM", "qwen2", {"use_sliding_window": False},
     "F16", {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"}),
]

NP_DTYPE = {"F16": np.float16, "F32": np.float32}
TORCH_DTYPE = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def quantize(w, bits, group, sym, g_idx):
    """Round-to-nearest per group of inputs (groups as g_idx assigns them), as GPTQ's quantizer
    sets scale and zero (min/max including 0; symmetric: zero at the middle). Returns codes
    [out, in], zeros [out, G], fp16 scales [out, G]."""
    out, n_in = w.shape
    maxq = 2 ** bits - 1
    groups = int(g_idx.max()) + 1
    q = np.zeros((out, n_in), np.int64)
    zeros = np.zeros((out, groups), np.int64)
    scales = np.zeros((out, groups), np.float16)
    for g in range(groups):
        cols = np.where(g_idx == g)[0]
        wg = w[:, cols].astype(np.float64)
        xmin = np.minimum(wg.min(1), 0)
        xmax = np.maximum(wg.max(1), 0)
        if sym:
            xmax = np.maximum(np.abs(xmin), xmax)
            xmin = -xmax
        scale = (xmax - xmin) / maxq
        scale[scale == 0] = 1.0
        s16 = scale.astype(np.float16)
        zero = np.full(out, (maxq + 1) // 2) if sym else np.clip(np.round(-xmin / s16.astype(np.float64)), 0, maxq)
        q[:, cols] = np.clip(np.round(wg / s16.astype(np.float64)[:, None]) + zero[:, None], 0, maxq)
        zeros[:, g] = zero
        scales[:, g] = s16
    return q, zeros, scales


def dequantize(q, zeros, scales, g_idx):
    return ((q - zeros[:, g_idx]).astype(np.float32) * scales[:, g_idx].astype(np.float32)).astype(np.float32)


def pack_gptq(q, zeros, scales, g_idx, bits, v1):
    """AutoGPTQ's layout: qweight [in/p, out] packs p consecutive inputs per int32 (input p*r + k in
    bits k*b..); qzeros [G, out/p] packs p consecutive outputs, storing zero - 1 in v1 (masked)."""
    p, maxq = 32 // bits, 2 ** bits - 1
    intweight = q.T.astype(np.uint32)
    qweight = np.zeros((q.shape[1] // p, q.shape[0]), np.uint32)
    for k in range(p):
        qweight |= intweight[k::p, :] << np.uint32(bits * k)
    z = zeros.T.astype(np.int64)
    if v1:
        z = (z - 1) & maxq
    qzeros = np.zeros((z.shape[0], z.shape[1] // p), np.uint32)
    for k in range(p):
        qzeros |= z[:, k::p].astype(np.uint32) << np.uint32(bits * k)
    return {"qweight": qweight.view(np.int32), "qzeros": qzeros.view(np.int32),
            "scales": np.ascontiguousarray(scales.T), "g_idx": g_idx.astype(np.int32)}


def unpack_gptq(t, bits, v1):
    """As AutoGPTQ's dequantizer reads it (shift, mask; v1: zeros + 1, masked)."""
    p, maxq = 32 // bits, 2 ** bits - 1
    qw = t["qweight"].view(np.uint32)
    q = np.stack([(qw >> np.uint32(bits * k)) & maxq for k in range(p)], 1).reshape(-1, qw.shape[1]).T
    qz = t["qzeros"].view(np.uint32)
    z = np.stack([(qz >> np.uint32(bits * k)) & maxq for k in range(p)], 2).reshape(qz.shape[0], -1)
    if v1:
        z = (z + 1) & maxq
    return q.astype(np.int64), z.T.astype(np.int64), t["scales"].T


def pack_awq(q, zeros, scales):
    """AutoAWQ's gemm layout: qweight [in, out/8], nibble j of column c holds output 8c + AWQ_ORDER[j]."""
    intweight = q.T.astype(np.uint32)
    qweight = np.zeros((q.shape[1], q.shape[0] // 8), np.uint32)
    z = zeros.T.astype(np.uint32)
    qzeros = np.zeros((z.shape[0], z.shape[1] // 8), np.uint32)
    for j in range(8):
        qweight |= intweight[:, AWQ_ORDER[j]::8] << np.uint32(4 * j)
        qzeros |= z[:, AWQ_ORDER[j]::8] << np.uint32(4 * j)
    return {"qweight": qweight.view(np.int32), "qzeros": qzeros.view(np.int32), "scales": np.ascontiguousarray(scales.T)}


def unpack_awq(t):
    """As AutoAWQ's unpack_awq + reverse_awq_order read it."""
    def unpack(x):
        x = x.view(np.uint32)
        v = np.stack([(x >> np.uint32(4 * j)) & 15 for j in range(8)], 2)  # [rows, cols, nibble]
        v = v.reshape(x.shape[0], -1, 8)[:, :, AWQ_REVERSE_ORDER]
        return v.reshape(x.shape[0], -1).astype(np.int64)
    return unpack(t["qweight"]).T, unpack(t["qzeros"]).T, t["scales"].T


def build(name, arch, model_type, overrides, dtype, qcfg, out_dir, tmp, rng):
    cfg = dict(BASE)
    cfg.update(overrides)
    cfg["architectures"] = [arch]
    cfg["model_type"] = model_type
    cfg["torch_dtype"] = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype]
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(cfg, f)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp), dtype=torch.float32,
                                             attn_implementation="eager")
    model.eval()
    bits, awq = qcfg["bits"], qcfg["quant_method"] == "awq"
    sym = qcfg.get("sym", not qcfg.get("zero_point", True))
    v1 = not awq and qcfg.get("checkpoint_format", "gptq") == "gptq"
    tensors = {}
    with torch.no_grad():
        for pname, p in model.named_parameters():
            w = random_weight(pname, list(p.shape), SEED)
            prefix = pname[: -len(".weight")]
            if pname.endswith(".weight") and prefix.split(".")[-1] in LINEARS:
                n_in = w.shape[1]
                group = n_in if qcfg["group_size"] == -1 else qcfg["group_size"]
                g_idx = np.arange(n_in) // group
                if qcfg.get("desc_act"):
                    g_idx = g_idx[rng.permutation(n_in)]  # act-order: groups scattered over the inputs
                q, zeros, scales = quantize(w, bits, group, sym, g_idx)
                packed = pack_awq(q, zeros, scales) if awq else pack_gptq(q, zeros, scales, g_idx, bits, v1)
                uq, uz, us = unpack_awq(packed) if awq else unpack_gptq(packed, bits, v1)
                assert (uq == q).all() and (uz == zeros).all() and (us == scales).all(), f"{pname}: pack round trip"
                for k, v in packed.items():
                    tensors[f"{prefix}.{k}"] = v
                p.copy_(torch.from_numpy(dequantize(q, zeros, scales, g_idx)))
            else:
                stored = torch.from_numpy(w).to(TORCH_DTYPE[dtype])
                tensors[pname] = stored.numpy() if dtype != "BF16" else stored.view(torch.int16).numpy()
                p.copy_(stored.float())
    ckpt = os.path.join(out_dir, name)
    os.makedirs(ckpt, exist_ok=True)
    qc = dict(qcfg)
    cfg_q = dict(cfg)
    cfg_q["quantization_config"] = qc
    with open(os.path.join(ckpt, "config.json"), "w") as f:
        json.dump(cfg_q, f, indent=1)
    if dtype == "BF16":
        # numpy has no bfloat16: write through torch's safetensors path instead.
        from safetensors.torch import save_file as save_torch
        tt = {k: (torch.from_numpy(v).view(torch.bfloat16) if v.dtype == np.int16 else torch.from_numpy(v))
              for k, v in tensors.items()}
        save_torch(tt, os.path.join(ckpt, "model.safetensors"), metadata={"format": "pt"})
    else:
        save_file(tensors, os.path.join(ckpt, "model.safetensors"), metadata={"format": "pt"})
    return model, cfg_q


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tmp", default="/tmp/apus_quant_golden")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    prompt = [int(x) for x in np.random.default_rng(7).integers(3, VOCAB, PROMPT_LEN)]
    for name, arch, model_type, overrides, dtype, qcfg in VARIANTS:
        rng = np.random.default_rng(99)  # the act-order variants' g_idx
        model, cfg = build(name, arch, model_type, overrides, dtype, qcfg, args.out, os.path.join(args.tmp, name), rng)
        prompt_lp, generated, steps = run(model, prompt)
        assert len(set(generated)) >= 8, f"{name}: degenerate continuation {generated}"
        margins = [round(sorted(s, reverse=True)[0] - sorted(s, reverse=True)[1], 4) for s in steps]
        fixture = {
            "name": name, "seed": SEED, "dtype": dtype, "config": cfg, "checkpoint": f"quant/{name}",
            "reference": f"transformers {transformers.__version__}, torch {torch.__version__}, float32, eager, "
                         "dequantized weights",
            "prompt": prompt, "prompt_logprobs": prompt_lp,
            "generated": generated, "step_logprobs": steps, "step_margins": margins,
        }
        with open(os.path.join(args.out, name + ".json"), "w") as f:
            json.dump(fixture, f, separators=(",", ":"))
        print(f"{name}: generated {generated[:8]}... min margin {min(margins):.4f}")


if __name__ == "__main__":
    main()
