#!/usr/bin/python3
"""Writes tests/data/templates/jinja_golden.json: the prompt text transformers' apply_chat_template
renders for the chat_template of each tokenizer in third_party/tokenizers, over several
conversations (tests/test_chat_template.cpp compares apus's ChatTemplate with it).

The context is the one apply_chat_template builds: messages, tools=None, documents=None,
add_generation_prompt, the tokenizer's special_tokens_map (bos/eos/unk/sep/pad/cls/mask tokens and
additional_special_tokens, read from tokenizer_config.json), then the extra keyword arguments. The
environment is transformers': ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
extensions=[loopcontrols] and the {% generation %} tag) with its tojson filter and the raise_exception / strftime_now globals.
Only texts are stored: the test checks ids as Tokenizer::encode(text, add_special_tokens=false),
which is what apply_chat_template does and which tests/test_tokenizer.cpp checks against the
tokenizers library.

Llama 2's tokenizer_config.json has no chat_template; its cases use llama2_chat.jinja (the
Llama-2-chat template) from this folder.

Run with Debian's interpreter, which has python3-jinja2 (apt-get install -y python3-jinja2):
    /usr/bin/python3 tools/templates/make_template_golden.py
"""
import json
import pathlib

import sys

import jinja2

# transformers' Jinja environment, shared with the interpreter's differential fixtures.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "jinja"))
from make_jinja_golden import FIXED_NOW, make_env  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "templates"
TOKENIZERS = ROOT / "third_party" / "tokenizers"
SPECIAL = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]

SYS = {"role": "system", "content": "You are a pirate. Answer briefly."}
U1 = {"role": "user", "content": "Where is the treasure?"}
A1 = {"role": "assistant", "content": "Under the old oak, matey."}
U2 = {"role": "user", "content": "And how deep?"}
CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "Hello!"}],
    "system_user": [SYS, U1],
    "empty_system": [{"role": "system", "content": ""}, U1],
    "multi_turn": [SYS, U1, A1, U2],
    "multi_turn_no_system": [U1, A1, U2],
    "unicode": [{"role": "user", "content": "你好!"}, {"role": "assistant", "content": "你好！有什么可以帮你？"},
                {"role": "user", "content": "浙江的省会在哪?"}],
    "whitespace": [{"role": "user", "content": "  spaced out \n\n"}],
    "finished": [U1, A1],
}


def token_text(v):
    if isinstance(v, dict):
        return v.get("content")
    return v


def special_tokens_map(config):
    out = {}
    for key in SPECIAL:
        t = token_text(config.get(key))
        if t:
            out[key] = t
    extra = config.get("additional_special_tokens")
    if extra:
        out["additional_special_tokens"] = [token_text(t) for t in extra]
    return out


def template_source(name, config):
    t = config.get("chat_template")
    if isinstance(t, list):
        t = next(x["template"] for x in t if x["name"] == "default")
    if t is None:
        return (OUT / f"{name}_chat.jinja").read_text(), f"{name}_chat.jinja"
    return t, None


def main():
    env = make_env()
    cases = []
    plan = {
        "qwen3": [(c, {}) for c in CONVERSATIONS] + [("multi_turn", {"enable_thinking": False}),
                                                    ("single_user", {"enable_thinking": True})],
        "llama3_1": [(c, {}) for c in CONVERSATIONS],
        "llama2": [(c, {}) for c in CONVERSATIONS],
        "deepseek_v3": [(c, {}) for c in CONVERSATIONS],
        "gemma3": [(c, {}) for c in CONVERSATIONS if c != "empty_system"],
    }
    errors = {"gemma3": [("assistant_first", [A1, U1], "Conversation roles must alternate")],
              "llama2": [("two_users", [U1, U2], "Conversation roles must alternate")]}
    for name, runs in plan.items():
        config = json.loads((TOKENIZERS / name / "tokenizer_config.json").read_text())
        source, template_file = template_source(name, config)
        template = env.from_string(source)
        special = special_tokens_map(config)
        for conv, extra in runs:
            messages = CONVERSATIONS[conv]
            gen = messages[-1]["role"] != "assistant"
            ctx = {"messages": messages, "tools": None, "documents": None, "add_generation_prompt": gen,
                   **special, **extra}
            case = {"name": f"{name}/{conv}" + "".join(f"/{k}={v}" for k, v in extra.items()),
                    "tokenizer": name, "messages": messages, "add_generation_prompt": gen, "extra": extra}
            if template_file:
                case["template_file"] = template_file
            case["text"] = template.render(**ctx)
            cases.append(case)
        for conv, messages, message in errors.get(name, []):
            ctx = {"messages": messages, "tools": None, "documents": None, "add_generation_prompt": True, **special}
            try:
                template.render(**ctx)
            except jinja2.exceptions.TemplateError as e:
                assert message in str(e), str(e)
            else:
                raise SystemExit(f"{name}/{conv} rendered without the expected error")
            case = {"name": f"{name}/{conv}", "tokenizer": name, "messages": messages, "add_generation_prompt": True,
                    "extra": {}, "error": message}
            if template_file:
                case["template_file"] = template_file
            cases.append(case)
    golden = {"generator": "tools/templates/make_template_golden.py", "jinja2_version": jinja2.__version__,
              "now": FIXED_NOW, "cases": cases}
    (OUT / "jinja_golden.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {OUT / 'jinja_golden.json'}")


if __name__ == "__main__":
    main()
