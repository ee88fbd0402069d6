"""Checks an `apus export --quant_bits 4` checkpoint (GPTQ, or AWQ with --quant_method awq) with the
Hugging Face stack (GPU machine: torch, transformers, safetensors, numpy; no GPTQ or AWQ library
there, so no QuantLinear / WQLinear):
  1. transformers reads config.json and accepts its quantization_config as a GPTQConfig (AwqConfig);
  2. every quantized linear layer has the tensors AutoGPTQ's QuantLinear declares, with its shapes
     and dtypes (qweight int32 [in/8, out], qzeros int32 [groups, out/8], scales fp16 [groups, out],
     g_idx int32 [in]) -- for AWQ, AutoAWQ's GEMM WQLinear's (qweight int32 [in, out/8], qzeros
     int32 [groups, out/8], scales fp16 [groups, out]) -- and no float .weight beside them;
  3. the weights dequantized by make_quant_golden.py's unpackers (AutoGPTQ's and AutoAWQ's
     dequantizer arithmetic, written independently of Apus) loaded into the float model give, for
     the prompt and a greedy continuation, the tokens and top-5 log-probabilities that Apus printed
     for the quantized checkpoint (`apus generate --prompt-ids ... --temperature 0 --logprobs 5 --json`).

    python3 tools/quant/check_export_in_transformers.py EXPORTED_DIR APUS_GENERATE.json PROMPT_IDS
"""
import json
import os
import sys

import numpy as np
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
from make_quant_golden import LINEARS, dequantize, unpack_awq, unpack_gptq  # noqa: E402


def main():
    qdir, apus_json, prompt_arg = sys.argv[1:4]
    prompt = [int(x) for x in prompt_arg.split(",")]
    apus = json.load(open(apus_json))
    cfg = AutoConfig.from_pretrained(qdir)
    qc = cfg.quantization_config
    qc = qc if isinstance(qc, dict) else qc.to_dict()
    awq = qc["quant_method"] == "awq"
    if awq:
        c = transformers.AwqConfig.from_dict(dict(qc))
        print(f"transformers {transformers.__version__}: AwqConfig bits={c.bits} group_size={c.group_size} "
              f"zero_point={c.zero_point} version={getattr(c, 'version', qc.get('version'))}")  # no .version in 5.x
    else:
        c = transformers.GPTQConfig.from_dict(dict(qc))
        print(f"transformers {transformers.__version__}: GPTQConfig bits={c.bits} group_size={c.group_size} "
              f"desc_act={c.desc_act} sym={c.sym} checkpoint_format={qc.get('checkpoint_format')}")
    loaded = {}
    for f in sorted(os.listdir(qdir)):
        if f.endswith(".safetensors"):
            loaded.update(load_file(os.path.join(qdir, f)))
    # numpy for the integer and fp16 tensors (numpy has no bfloat16); float ones stay torch tensors
    tensors = {k: v.numpy() if v.dtype in (torch.int32, torch.float16) else v for k, v in loaded.items()}
    bits, group = qc.get("bits", qc.get("w_bit")), qc.get("group_size", qc.get("q_group_size"))
    v1 = qc.get("checkpoint_format", "gptq") == "gptq"
    state, checked = {}, 0
    for name, t in tensors.items():
        if not name.endswith(".qweight"):
            if not name.endswith((".qzeros", ".scales", ".g_idx")):
                state[name] = t.float() if isinstance(t, torch.Tensor) else torch.from_numpy(t.astype(np.float32))
            continue
        prefix = name[: -len(".qweight")]
        assert prefix.split(".")[-1] in LINEARS, prefix
        assert prefix + ".weight" not in tensors, prefix
        out = tensors[prefix + ".scales"].shape[1]
        n_in = tensors[prefix + ".qweight"].shape[0] if awq else tensors[prefix + ".g_idx"].shape[0]
        g = n_in // (n_in if group == -1 else group)
        if awq:
            assert prefix + ".g_idx" not in tensors, prefix
            want = {"qweight": (np.int32, (n_in, out // 8)), "qzeros": (np.int32, (g, out // 8)),
                    "scales": (np.float16, (g, out))}
        else:
            want = {"qweight": (np.int32, (n_in * bits // 32, out)), "qzeros": (np.int32, (g, out * bits // 32)),
                    "scales": (np.float16, (g, out)), "g_idx": (np.int32, (n_in,))}
        for suffix, (dtype, shape) in want.items():
            x = tensors[f"{prefix}.{suffix}"]
            assert x.dtype == dtype and x.shape == shape, (prefix, suffix, x.dtype, x.shape, dtype, shape)
        packed = {k: tensors[f"{prefix}.{k}"] for k in ("qweight", "qzeros", "scales")}
        if awq:
            q, z, s = unpack_awq(packed)
            g_idx = np.arange(n_in, dtype=np.int64) // (n_in if group == -1 else group)
        else:
            q, z, s = unpack_gptq(packed, bits, v1)
            g_idx = tensors[prefix + ".g_idx"].astype(np.int64)
        state[prefix + ".weight"] = torch.from_numpy(dequantize(q, z, s, g_idx))
        checked += 1
    layout = "AutoAWQ's GEMM WQLinear" if awq else "AutoGPTQ's QuantLinear"
    print(f"{checked} quantized linear layers: tensors, shapes and dtypes as {layout} declares")
    del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (cfg.tie_word_embeddings and m == "lm_head.weight")]
    assert not missing and not unexpected, (missing, unexpected)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    model.eval()
    ids = list(prompt)
    worst, same = 0.0, 0
    with torch.no_grad():
        for step, apus_top in enumerate(apus["logprobs"]):
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)
            top = torch.topk(lp, 5)
            ref = [[int(i), float(v)] for v, i in zip(top.values, top.indices)]
            for (ai, av) in apus_top:
                worst = max(worst, abs(av - float(lp[int(ai)])))
            same += int(ref[0][0] == apus["token_ids"][step])
            ids.append(apus["token_ids"][step])
    n = len(apus["logprobs"])
    print(f"greedy tokens equal to Apus's: {same}/{n}; max |log-prob difference| over Apus's top-5: {worst:.2e}")
    ok = same == n and worst < 1e-3
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
