"""Golden fixtures for the remote-code models Qwen v1 (QWenLMHeadModel) and ChatGLM3, from their
original implementations, which are not part of transformers and not of this repository.

--remote DIR holds excerpts of the original files, kept as written but reduced to the inference
path taken on CPU float32 (flash-attn, KV-cache quantization, P-tuning, chat/generate helpers left
out; PreTrainedModel / PreTrainedTokenizer replaced by what they do for these classes), taken from
public mirrors of the Hugging Face repositories:
  modeling_qwen.py, tokenization_qwen.py + qwen_generation_utils.make_context: ds-llo/qwcs @ 443804a5
    (a copy of Qwen/Qwen-72B-Chat's remote code)
  modeling_chatglm.py: czk1997/chatglm3-copy @ 00f2a120 (THUDM/chatglm3-6b), with RotaryEmbedding's
    rope_ratio from DracoUnion/chatglm3-6b-int4-lora @ 61985f2f
  tokenization_chatglm.py: czk1997/chatglm3-copy @ 591fa879
They are not part of this repository. --tokenizers DIR holds qwen/qwen.tiktoken and chatglm3/tokenizer.model (see
scripts/fetch-tokenizers.sh). Runs where torch, tiktoken and sentencepiece are installed (the GPU
machine; CPU, float32):

    python3 tools/golden/make_remote_golden.py --remote R --tokenizers T --out-dir .

writes
- tests/golden/<variant>.json: tiny random models in the original config.json format (weights from
  weights.py, stored dtype then upcast to float32), log-softmax of every prompt position and of 32
  greedy steps decoded with the original KV cache, as make_golden.py does for transformers models.
  The Qwen variants go past seq_length, so dynamic NTK and logn attention are exercised.
- tests/data/tokenizer/{qwen,chatglm3}.json: ids of the tokenizer corpus (as tests/test_tokenizer.cpp
  reads them).
- tests/data/templates/original_chat_ids.json: prompt ids of multi-turn conversations from Qwen's
  make_context and ChatGLM3's build_chat_input.
"""
import argparse
import importlib.util
import json
import os
import sys
import traceback
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from weights import random_weight  # noqa: E402
from make_golden import GEN_LEN, PROMPT_LEN, SEED, VOCAB, TORCH_DTYPE, logprobs  # noqa: E402


def einops_shim():
    """modeling_qwen.py imports einops.rearrange for two patterns; einops is not installed there."""
    if importlib.util.find_spec("einops") is not None:
        return
    m = types.ModuleType("einops")

    def rearrange(x, pattern, **kw):
        if pattern == "n d -> 1 n 1 d":
            return x[None, :, None, :]
        if pattern == "... (j d) -> ... j d":
            j = kw["j"]
            return x.reshape(*x.shape[:-1], j, x.shape[-1] // j)
        raise NotImplementedError(pattern)

    m.rearrange = rearrange
    sys.modules["einops"] = m


def load(remote, name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(remote, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


QWEN_BASE = {
    "architectures": ["QWenLMHeadModel"],
    "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig", "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
    "model_type": "qwen", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "kv_channels": 16,
    "intermediate_size": 256, "vocab_size": VOCAB, "layer_norm_epsilon": 1e-6, "rotary_emb_base": 10000,
    "rotary_pct": 1.0, "max_position_embeddings": 64, "no_bias": True, "tie_word_embeddings": False,
    "bf16": False, "fp16": False, "fp32": True, "use_flash_attn": False, "emb_dropout_prob": 0.0,
    "attn_dropout_prob": 0.0, "scale_attn_weights": True, "tokenizer_class": "QWenTokenizer",
}
GLM_BASE = {
    "architectures": ["ChatGLMModel"],
    "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                 "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
                 "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
    "model_type": "chatglm", "num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "kv_channels": 16,
    "ffn_hidden_size": 96, "padded_vocab_size": VOCAB, "seq_length": 64, "layernorm_epsilon": 1e-5,
    "rmsnorm": True, "post_layer_norm": True, "apply_residual_connection_post_layernorm": False,
    "add_bias_linear": False, "add_qkv_bias": True, "multi_query_attention": True, "multi_query_group_num": 2,
    "apply_query_key_layer_scaling": True, "attention_softmax_in_fp32": True, "fp32_residual_connection": False,
    "original_rope": True, "hidden_dropout": 0.0, "attention_dropout": 0.0, "tie_word_embeddings": False,
    "eos_token_id": 2, "pad_token_id": 0,
}

# (name, family, overrides, stored dtype)
VARIANTS = [
    # prompt (12) longer than seq_length (8): ntk alpha 3 from the prompt, logn on every position >= 8
    ("qwen_ntk_logn_bf16", "qwen", {"seq_length": 8, "use_dynamic_ntk": True, "use_logn_attn": True}, "BF16"),
    # prompt within seq_length (16) but generation past it: alpha stays 1 (fixed at the prompt), logn
    # starts during decoding
    ("qwen_ntk_fixed_f32", "qwen", {"seq_length": 16, "use_dynamic_ntk": True, "use_logn_attn": True}, "F32"),
    ("qwen_rotary_pct_bias_f16", "qwen", {"seq_length": 2048, "rotary_pct": 0.5, "no_bias": False,
                                          "use_dynamic_ntk": False, "use_logn_attn": False}, "F16"),
    ("chatglm3_mqa_bf16", "glm", {}, "BF16"),
    ("chatglm3_32k_rope_ratio_f32", "glm", {"architectures": ["ChatGLMForConditionalGeneration"], "rope_ratio": 50,
                                            "kv_channels": 32, "multi_query_group_num": 1, "add_bias_linear": True},
     "F32"),
]
DTYPE_NAME = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def qwen_model(mod, cfg):
    ns = SimpleNamespace(**cfg)
    return mod.QWenLMHeadModel(ns)


def glm_model(mod, cfg):
    fields = dict(rope_ratio=1, classifier_dropout=None, pre_seq_len=None, prefix_projection=False,
                  quantization_bit=0)  # ChatGLMConfig's defaults for fields config.json may leave out
    fields.update(cfg)
    ns = SimpleNamespace(**fields)
    ns.torch_dtype = torch.float32  # the reference computes in float32 (weights upcast from the stored dtype)
    return mod.ChatGLMForConditionalGeneration(ns)


def fill_weights(model, dtype, extra_buffers=()):
    tensors = []
    with torch.no_grad():
        named = list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if n in extra_buffers]
        for name, p in named:
            v = torch.from_numpy(random_weight(name, list(p.shape), SEED))
            stored = v.to(TORCH_DTYPE[dtype])
            if name in extra_buffers:  # stored in real checkpoints, never read by the model
                tensors.append({"name": name, "shape": list(p.shape), "sum": float(stored.double().sum())})
                continue
            p.copy_(stored.float())
            tensors.append({"name": name, "shape": list(p.shape), "sum": float(stored.double().sum())})
    return tensors


def run(model, family, prompt):
    """Prompt in one forward, then greedy decoding one token at a time through the original KV cache,
    as generate() drives these models (Qwen: no attention_mask for batch 1; ChatGLM: position_ids)."""
    with torch.no_grad():
        ids = torch.tensor([prompt])
        kw = {"position_ids": torch.arange(len(prompt))[None]} if family == "glm" else {}
        logits, past = model(ids, past_key_values=None, use_cache=True, **kw)
        prompt_lp = logprobs(logits[0])
        last = logits[0, -1]
        generated, steps = [], []
        for s in range(GEN_LEN):
            steps.append(logprobs(last[None])[0])
            tok = int(torch.argmax(last))
            generated.append(tok)
            kw = {"position_ids": torch.tensor([[len(prompt) + s]])} if family == "glm" else {}
            logits, past = model(torch.tensor([[tok]]), past_key_values=past, use_cache=True, **kw)
            last = logits[0, -1]
    return prompt_lp, generated, steps


def model_fixtures(remote, out_dir):
    qwen = load(remote, "modeling_qwen")
    glm = load(remote, "modeling_chatglm")
    rng = np.random.default_rng(7)
    prompt = [int(x) for x in rng.integers(3, VOCAB, PROMPT_LEN)]
    failures = 0
    for variant in VARIANTS:
        try:
            model_fixture(qwen, glm, prompt, *variant, out_dir)
        except Exception:  # keep going: one broken variant must not cost the others
            traceback.print_exc()
            failures += 1
    return failures


def model_fixture(qwen, glm, prompt, name, family, overrides, dtype, out_dir):
    cfg = dict(QWEN_BASE if family == "qwen" else GLM_BASE)
    cfg.update(overrides)
    cfg["torch_dtype"] = DTYPE_NAME[dtype]
    torch.manual_seed(0)
    model = qwen_model(qwen, cfg) if family == "qwen" else glm_model(glm, cfg)
    model.eval()
    extra = ("transformer.rotary_pos_emb.inv_freq",) if name == "chatglm3_mqa_bf16" else ()
    tensors = fill_weights(model, dtype, extra)
    prompt_lp, generated, steps = run(model, family, prompt)
    assert len(set(generated)) >= 8, f"{name}: degenerate continuation {generated}"
    margins = []
    for s in steps:
        top = sorted(s, reverse=True)[:2]
        margins.append(round(top[0] - top[1], 4))
    if family == "qwen" and cfg["use_logn_attn"]:  # the long-context features must matter
        for attr in ("use_dynamic_ntk", "use_logn_attn"):
            plain_cfg = dict(cfg, **{attr: False})
            plain = qwen_model(qwen, plain_cfg)
            plain.load_state_dict(model.state_dict())
            plain.eval()
            lp, gen, st = run(plain, family, prompt)
            same = next((k for k, (a, b) in enumerate(zip(gen, generated)) if a != b), len(gen) - 1) + 1
            diff = max(np.abs(np.array(lp) - np.array(prompt_lp)).max(),
                       np.abs(np.array(st[:same]) - np.array(steps[:same])).max())
            print(f"{name}: without {attr}: largest log-prob change {diff:.4f}, first token change at {same - 1}")
            if attr == "use_logn_attn" or name == "qwen_ntk_logn_bf16":
                assert diff > 1e-2, f"{name}: {attr} had no effect"
    fixture = {
        "name": name, "seed": SEED, "dtype": dtype, "config": cfg,
        "reference": f"original remote code (tools/golden/make_remote_golden.py), torch {torch.__version__}, "
                     "float32",
        "tensors": tensors, "prompt": prompt, "prompt_logprobs": prompt_lp,
        "generated": generated, "step_logprobs": steps, "step_margins": margins,
    }
    with open(os.path.join(out_dir, "tests/golden", name + ".json"), "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
    print(f"{name}: generated {generated[:8]}... min margin {min(margins):.4f}", flush=True)


def tokenizer_cases(root):
    sys.path.insert(0, str(Path(root) / "tools/tokenizer"))
    from make_tokenizer_golden import all_cases
    return all_cases()


def qwen_tokenizer_fixture(tok_mod, tok_dir, cases):
    import tiktoken
    tok = tok_mod.QWenTokenizer(os.path.join(tok_dir, "qwen.tiktoken"))
    out = []
    for text in cases:
        ids = tok.encode(text)  # PreTrainedTokenizer adds nothing for QWenTokenizer
        out.append({"text": text, "ids": ids, "ids_plain": ids, "decoded": tok.decode(ids),
                    "decoded_skip": tok.decode(ids, skip_special_tokens=True),
                    "roundtrip": tok.decode(ids) == text})
    special = [i for i, _ in tok_mod.SPECIAL_TOKENS]
    id_to_token = [[i, t] for i, t in tok_mod.SPECIAL_TOKENS]
    seen = sorted({i for c in out[:40] for i in c["ids"]})
    for i in seen:  # ordinary tokens whose bytes are text (others have no string form)
        b = tok.decoder[i]
        try:
            id_to_token.append([i, b.decode("utf-8")])
        except UnicodeDecodeError:
            pass
    return {
        "tokenizer": "qwen", "reference": f"tokenization_qwen.py (tiktoken {tiktoken.__version__})",
        "vocab_size": len(tok), "bos_id": None, "eos_id": None, "special_ids": special,
        "id_to_token": id_to_token, "cases": out,
    }, tok


def glm_tokenizer_fixture(tok_mod, tok_dir, cases):
    import sentencepiece
    tok = tok_mod.ChatGLMTokenizer(os.path.join(tok_dir, "tokenizer.model"))
    sp = tok.tokenizer.sp_model
    glm_ids = set(tok.tokenizer.index_special_tokens)

    def decode(ids, skip):
        # SPTokenizer.decode; with skip, GLM special ids and sentencepiece control/unknown ids dropped
        if skip:
            ids = [i for i in ids if i not in glm_ids and not (sp.is_control(i) or sp.is_unknown(i))]
        return tok.tokenizer.decode(ids)

    out = []
    for text in cases:
        ids = tok.encode(text)
        plain = tok.encode(text, add_special_tokens=False)
        out.append({"text": text, "ids": ids, "ids_plain": plain, "decoded": decode(ids, False),
                    "decoded_skip": decode(ids, True), "roundtrip": decode(plain, False) == text})
    n = sp.get_piece_size()
    special = sorted(glm_ids | {i for i in range(n) if sp.is_control(i) or sp.is_unknown(i)})
    id_to_token = [[i, t] for i, t in sorted(tok.tokenizer.index_special_tokens.items())]
    seen = sorted({i for c in out[:40] for i in c["ids_plain"]} - glm_ids)
    id_to_token += [[i, sp.id_to_piece(i)] for i in seen]
    return {
        "tokenizer": "chatglm3", "reference": f"tokenization_chatglm.py (sentencepiece {sentencepiece.__version__})",
        "vocab_size": tok.vocab_size, "bos_id": None, "eos_id": tok.get_command("<eos>"), "special_ids": special,
        "id_to_token": id_to_token, "cases": out,
    }, tok


CONVERSATIONS = [
    {"system": None, "history": [], "query": "你好"},
    {"system": "You are a helpful assistant.", "history": [["你好!", "你好！有什么可以帮你的吗？"]],
     "query": "浙江的省会在哪?"},
    {"system": "Answer briefly.", "history": [["Where is the treasure?", "Under the old oak."],
                                              ["How deep?", "Three feet, give or take."]],
     "query": "Thanks! What should I bring?\nA shovel?"},
    {"system": None, "history": [["def f(x):\n    return x * 2", "It doubles x."]], "query": "和 f(3) 呢？ 123"},
]


def chat_fixture(qwen_mod, qwen_tok, glm_tok):
    out = []
    for c in CONVERSATIONS:
        history = [tuple(h) for h in c["history"]]
        system = c["system"] if c["system"] is not None else "You are a helpful assistant."  # chat()'s default
        raw, qwen_ids = qwen_mod.make_context(qwen_tok, c["query"], history=history, system=system)
        glm_ids = glm_tok.build_chat_input(c["query"], history=history, system=c["system"])
        out.append({"system": c["system"], "history": c["history"], "query": c["query"],
                    "qwen_system": system, "qwen_text": raw, "qwen_ids": qwen_ids, "chatglm3_ids": glm_ids})
    return {"reference": "qwen_generation_utils.make_context (chatml) and ChatGLMTokenizer.build_chat_input, "
                         "with the tokenizers of tests/data/tokenizer/{qwen,chatglm3}.json",
            "conversations": out}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--remote", required=True)
    ap.add_argument("--tokenizers", required=True)
    ap.add_argument("--out-dir", required=True, help="a repository root to write the fixtures under")
    ap.add_argument("--root", default=str(HERE.parents[1]), help="repository root holding tools/tokenizer")
    args = ap.parse_args()
    einops_shim()
    for sub in ("tests/golden", "tests/data/tokenizer", "tests/data/templates"):
        os.makedirs(os.path.join(args.out_dir, sub), exist_ok=True)
    failures = model_fixtures(args.remote, args.out_dir)

    cases = tokenizer_cases(args.root)
    qwen_mod = load(args.remote, "tokenization_qwen")
    glm_mod = load(args.remote, "tokenization_chatglm")
    qfx, qtok = qwen_tokenizer_fixture(qwen_mod, os.path.join(args.tokenizers, "qwen"), cases)
    gfx, gtok = glm_tokenizer_fixture(glm_mod, os.path.join(args.tokenizers, "chatglm3"), cases)
    for fx in (qfx, gfx):
        path = os.path.join(args.out_dir, "tests/data/tokenizer", fx["tokenizer"] + ".json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(fx, ensure_ascii=False, separators=(",", ":")) + "\n")
        print(f"{fx['tokenizer']}: {len(fx['cases'])} cases, vocab {fx['vocab_size']}", flush=True)
    chat = chat_fixture(qwen_mod, qtok, gtok)
    with open(os.path.join(args.out_dir, "tests/data/templates/original_chat_ids.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(chat, ensure_ascii=False, indent=1) + "\n")
    print("chat: " + json.dumps(chat["conversations"][0], ensure_ascii=False), flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
