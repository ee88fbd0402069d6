#!/usr/bin/python3
"""Writes tests/data/jinja/golden.json: what Python's Jinja2 renders for each test case.

The environment is the one transformers builds for chat templates (apply_chat_template):
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with the loopcontrols
extension, transformers' {% generation %} tag, its tojson filter and the raise_exception and
strftime_now globals. strftime_now reads a fixed instant (UTC) so the output is reproducible;
tests/test_jinja.cpp sets the same instant with set_clock_for_testing().

Run with Debian's interpreter, which has python3-jinja2 (apt-get install -y python3-jinja2):
    /usr/bin/python3 tools/jinja/make_jinja_golden.py

Templates are read from tests/data/jinja/templates/*.jinja; the ones shipped with our tokenizer
fixtures are first copied there from third_party/tokenizers/*/tokenizer_config.json.
"""
import datetime
import json
import pathlib
import sys

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from golden_cases import (builtin_matrix_cases, chat_cases, operator_matrix_cases, unit_cases,  # noqa: E402
                          whitespace_matrix_cases)

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "jinja"
TEMPLATES = DATA / "templates"
FIXED_NOW = 1721995200  # 2024-07-26 12:00:00 UTC

# tokenizer_config.json files whose chat_template we test; llama2 ships none.
THIRD_PARTY = ["qwen3", "llama3_1", "llama2", "deepseek_v3", "gemma3"]


class AssistantTracker(Extension):
    """transformers' {% generation %}: renders its body unchanged (it also records spans)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_generation_support"), [], [], body).set_lineno(lineno)

    @jinja2.pass_eval_context
    def _generation_support(self, context, caller):
        return caller()


def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.datetime.fromtimestamp(FIXED_NOW, datetime.timezone.utc).strftime(format)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[AssistantTracker, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def copy_third_party_templates():
    notes = {}
    for name in THIRD_PARTY:
        config = json.loads((ROOT / "third_party" / "tokenizers" / name / "tokenizer_config.json").read_text())
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: keep the default one
            template = next(t["template"] for t in template if t["name"] == "default")
        if template is None:
            notes[name] = "tokenizer_config.json has no chat_template"
            continue
        (TEMPLATES / f"{name}.jinja").write_text(template)
    return notes


def render_case(env, case):
    if "template_file" in case:
        source = (TEMPLATES / case["template_file"]).read_text()
    else:
        source = case["template"]
    context = case.get("context", {})
    want_error = case.get("error")
    try:
        out = env.from_string(source).render(**context)
    except Exception as e:  # noqa: BLE001 - every Jinja failure is a possible expected error
        message = str(e)
        if want_error is None:
            raise SystemExit(f"case {case['name']!r} raised unexpectedly: {type(e).__name__}: {message}")
        if want_error not in message:
            raise SystemExit(f"case {case['name']!r}: error {message!r} lacks {want_error!r}")
        return {"error": want_error, "python_error": f"{type(e).__name__}: {message}"}
    if want_error is not None:
        raise SystemExit(f"case {case['name']!r} rendered {out!r} but an error was expected")
    return {"expected": out}


def main():
    notes = copy_third_party_templates()
    env = make_env()
    cases = (unit_cases() + whitespace_matrix_cases() + operator_matrix_cases() + builtin_matrix_cases() +
             chat_cases(sorted(p.name for p in TEMPLATES.glob("*.jinja"))))
    names = set()
    out = []
    for case in cases:
        if case["name"] in names:
            raise SystemExit(f"duplicate case name {case['name']!r}")
        names.add(case["name"])
        entry = {k: case[k] for k in ("name", "template", "template_file") if k in case}
        entry["context"] = case.get("context", {})
        entry.update(render_case(env, case))
        out.append(entry)
    golden = {
        "generator": "tools/jinja/make_jinja_golden.py",
        "jinja2_version": jinja2.__version__,
        "now": FIXED_NOW,
        "notes": notes,
        "cases": out,
    }
    (DATA / "golden.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n")
    kinds = {}
    for c in out:
        kind = c["name"].split("/")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"wrote {len(out)} cases {kinds} to {DATA / 'golden.json'}")


if __name__ == "__main__":
    main()
