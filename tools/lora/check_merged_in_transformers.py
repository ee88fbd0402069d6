"""Checks that `apus export --merge_lora` writes checkpoints transformers loads and runs as PEFT's
merge_and_unload does: for each adapter of tests/golden/lora, rebuilds the tiny float32 base of
tools/golden, merges with the apus binary, loads the result with AutoModelForCausalLM and compares
its prompt log-probabilities and greedy continuation with the fixture's PEFT-merged ones.

Runs where torch + transformers are installed (the GPU machine; it uses the CPU, float32, eager):

    python3 tools/lora/check_merged_in_transformers.py --apus build-gpu/apus
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "golden"))
import make_golden  # noqa: E402

make_golden.GEN_LEN = 16


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--apus", required=True)
    ap.add_argument("--golden", default=os.path.join(os.path.dirname(__file__), "..", "..", "tests", "golden", "lora"))
    ap.add_argument("--tmp", default="/tmp/apus_lora_merged_check")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    with open(os.path.join(args.golden, "base.json")) as f:
        base = json.load(f)
    shutil.rmtree(args.tmp, ignore_errors=True)
    base_dir = os.path.join(args.tmp, "base")
    model, _ = make_golden.build(base["config"], base["dtype"], base_dir)
    model.save_pretrained(base_dir)  # the deterministic weights, as safetensors
    failed = False
    for name in ("a1", "a2"):
        with open(os.path.join(args.golden, name + ".json")) as f:
            want = json.load(f)["merged"]
        out = os.path.join(args.tmp, name + "-merged")
        subprocess.run([args.apus, "export", "--ckpt_dir", os.path.join(args.golden, name), "--model", base_dir,
                        "--merge_lora", "true", "--output_dir", out], check=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32,
                                                                  attn_implementation="eager")
        model.eval()
        prompt_lp, generated, steps = make_golden.run(model, base["prompt"])
        err = 0.0
        for got_rows, want_rows in ((prompt_lp, want["prompt_logprobs"]), (steps, want["step_logprobs"])):
            for g, w in zip(got_rows, want_rows):
                err = max(err, max(abs(a - b) for a, b in zip(g, w)))
        ok = generated == want["generated"] and err <= args.tol
        failed = failed or not ok
        print(f"{name}: transformers {transformers.__version__} loads the apus-merged checkpoint; greedy tokens "
              f"{'equal' if generated == want['generated'] else 'DIFFER'} to PEFT merged; largest log-probability "
              f"error {err:.3g} ({'ok' if ok else 'FAIL'})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
