#!/usr/bin/env python3
"""Writes tokenizer fixtures from the reference libraries, for tests/test_tokenizer.cpp.

For each tokenizer directory (third_party/tokenizers/<name>/ as fetched by
scripts/fetch-tokenizers.sh, and the hand-made tests/data/tokenizer/tiny/<name>/), encodes every case
of tests/data/tokenizer/corpus.txt plus a few generated ones with and without special tokens, decodes
the ids with and without skip_special_tokens, and writes tests/data/tokenizer/<name>.json.

References: the Rust `tokenizers` library (Python binding) for tokenizer.json; `sentencepiece` for a
bare tokenizer.model, with LlamaTokenizer's convention of a BOS in front when adding special tokens.
Also prints the reference's single-thread encode throughput on a mixed corpus (--bench-out).

Runs on the GPU machine (python3 with tokenizers 0.23 and sentencepiece):
  python3 tools/tokenizer/make_tokenizer_golden.py --out-dir tests/data/tokenizer --bench-out bench.txt
--texts-out FILE only writes the case texts (no reference library needed), for other checkers.
"""
import os

# Single-threaded reference: set before tokenizers is imported.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests/data/tokenizer/corpus.txt"
FETCHED = ROOT / "third_party/tokenizers"
TINY = ROOT / "tests/data/tokenizer/tiny"
BENCH_BYTES = 2 << 20  # per tokenizer
BENCH_DOC_BYTES = 4096


def unescape(line):
    """Corpus escapes: \\n \\r \\t \\\\ and \\u{HEX}."""
    out, i = [], 0
    while i < len(line):
        c = line[i]
        if c != "\\" or i + 1 == len(line):
            out.append(c)
            i += 1
            continue
        n = line[i + 1]
        if n in "nrt\\":
            out.append({"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}[n])
            i += 2
        elif n == "u" and line[i + 2:i + 3] == "{":
            end = line.index("}", i)
            out.append(chr(int(line[i + 3:end], 16)))
            i = end + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def corpus_cases():
    lines = CORPUS.read_text(encoding="utf-8").split("\n")
    return [unescape(l) for l in lines if l and not l.startswith("#")]


def generated_cases():
    rng = random.Random(1234)
    words = ["the", "tokenizer", "must", "match", "exactly", "Größe", "中文", "😀", "123", "x_y", "don't",
             "  ", "\t", "naïve", "<|im_start|>", "<s>", "日本語", "мир", "3.14", "!!", "\u00a0", "\n"]
    line = []
    while sum(len(w) + 1 for w in line) < 5000:
        line.append(rng.choice(words))
    long_line = " ".join(line)[:5000]
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [
        "",
        " ",
        "   ",
        "\n",
        "\t",
        long_line,
        "".join(rng.choice(letters) for _ in range(300)),
        "a" * 2000,
        "9" * 500,
        " " * 1000 + "after a thousand spaces",
        "\n" * 200 + "after newlines",
        "😀" * 100,
        "<|im_start|>" * 20,
        "中" * 300,
    ]


def all_cases():
    return corpus_cases() + generated_cases()


def bench_documents(cases):
    """About BENCH_BYTES of UTF-8 in documents of >= BENCH_DOC_BYTES, cycling through the cases."""
    docs, cur, size, total, i = [], [], 0, 0, 0
    while total < BENCH_BYTES:
        text = cases[i % len(cases)]
        i += 1
        cur.append(text)
        size += len(text.encode("utf-8")) + 1
        if size >= BENCH_DOC_BYTES:
            doc = "\n".join(cur)
            docs.append(doc)
            total += len(doc.encode("utf-8"))
            cur, size = [], 0
    return docs


def best_mb_per_s(encode, docs):
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    for d in docs:  # warm-up: caches filled, as a long-running engine has them
        encode(d)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for d in docs:
            encode(d)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e6, nbytes


def config_of(tok_dir):
    path = tok_dir / "tokenizer_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def token_name(config, key):
    v = config.get(key)
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def hf_fixture(name, tok_dir, cases, docs):
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    out_cases = []
    for text in cases:
        ids = tok.encode(text, add_special_tokens=True).ids
        plain = tok.encode(text, add_special_tokens=False).ids
        out_cases.append({
            "text": text,
            "ids": ids,
            "ids_plain": plain,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip": tok.decode(ids, skip_special_tokens=True),
            "roundtrip": tok.decode(plain, skip_special_tokens=False) == text,
        })
    added = tok.get_added_tokens_decoder()
    special_ids = sorted(i for i, t in added.items() if t.special)
    seen = sorted({i for c in out_cases[:40] for i in c["ids"]} | set(special_ids[:20]))
    config = config_of(tok_dir)
    bos, eos = token_name(config, "bos_token"), token_name(config, "eos_token")
    fixture = {
        "tokenizer": name,
        "reference": f"tokenizers {tokenizers.__version__}",
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "bos_id": tok.token_to_id(bos) if bos else None,
        "eos_id": tok.token_to_id(eos) if eos else None,
        "special_ids": special_ids,
        "id_to_token": [[i, tok.id_to_token(i)] for i in seen],
        "cases": out_cases,
    }
    speed = None
    if docs:
        speed = best_mb_per_s(lambda d: tok.encode(d, add_special_tokens=False), docs)
    return fixture, speed


def sp_decode(sp, ids, skip_special):
    """sentencepiece decodes runs of ordinary ids; control/unknown ids are dropped when skipping
    special tokens, else written as their piece (mirrored by the C++ SentencePiece backend)."""
    out, run = [], []
    for i in ids:
        if sp.is_control(i) or sp.is_unknown(i):
            if run:
                out.append(sp.decode(run))
                run = []
            if not skip_special:
                out.append(sp.id_to_piece(i))
        else:
            run.append(i)
    if run:
        out.append(sp.decode(run))
    return "".join(out)


def sp_fixture(name, tok_dir, cases, docs):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))
    config = config_of(tok_dir)
    add_bos = config.get("add_bos_token", True)
    add_eos = config.get("add_eos_token", False)
    out_cases = []
    for text in cases:
        plain = sp.encode(text)
        ids = ([sp.bos_id()] if add_bos and sp.bos_id() >= 0 else []) + plain + \
              ([sp.eos_id()] if add_eos and sp.eos_id() >= 0 else [])
        out_cases.append({
            "text": text,
            "ids": ids,
            "ids_plain": plain,
            "decoded": sp_decode(sp, ids, False),
            "decoded_skip": sp_decode(sp, ids, True),
            "roundtrip": sp_decode(sp, plain, False) == text,
        })
    n = sp.get_piece_size()
    special_ids = [i for i in range(n) if sp.is_control(i) or sp.is_unknown(i)]
    seen = sorted({i for c in out_cases[:40] for i in c["ids"]} | set(special_ids))
    fixture = {
        "tokenizer": name,
        "reference": f"sentencepiece {sentencepiece.__version__}",
        "vocab_size": n,
        "bos_id": sp.bos_id() if sp.bos_id() >= 0 else None,
        "eos_id": sp.eos_id() if sp.eos_id() >= 0 else None,
        "special_ids": special_ids,
        "id_to_token": [[i, sp.id_to_piece(i)] for i in seen],
        "cases": out_cases,
    }
    speed = None
    if docs:
        speed = best_mb_per_s(lambda d: sp.encode(d), docs)
    return fixture, speed


def tokenizer_dirs(only):
    found = []
    for base, prefix in ((FETCHED, ""), (TINY, "tiny_")):
        if not base.is_dir():
            continue
        for d in sorted(base.iterdir()):
            if (d / "tokenizer.json").exists() or (d / "tokenizer.model").exists():
                name = prefix + d.name
                if not only or name in only:
                    found.append((name, d))
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=str(ROOT / "tests/data/tokenizer"))
    ap.add_argument("--bench-out", help="write reference throughput here (also printed)")
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--only", nargs="*", help="tokenizer names (e.g. qwen3 tiny_unigram)")
    ap.add_argument("--texts-out", help="only write the case texts and bench documents as JSON")
    args = ap.parse_args()

    cases = all_cases()
    docs = bench_documents(cases)
    if args.texts_out:
        Path(args.texts_out).write_text(json.dumps({"cases": cases, "bench_docs": docs}, ensure_ascii=False),
                                        encoding="utf-8")
        return 0

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = [f"reference single-thread encode throughput (RAYON_NUM_THREADS=1), "
              f"{len(docs)} documents, python {sys.version.split()[0]}"]
    failures = 0
    for name, d in tokenizer_dirs(args.only):
        bench = [] if args.no_bench or name.startswith("tiny_") else docs
        try:
            if (d / "tokenizer.json").exists():
                fixture, speed = hf_fixture(name, d, cases, bench)
            else:
                fixture, speed = sp_fixture(name, d, cases, bench)
        except Exception as e:  # keep going: one broken tokenizer must not cost the others
            failures += 1
            report.append(f"{name}: FAILED: {type(e).__name__}: {e}")
            print(report[-1], flush=True)
            continue
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(fixture, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
        n_ids = sum(len(c["ids"]) + len(c["ids_plain"]) for c in fixture["cases"])
        line = f"{name}: {fixture['reference']}: {len(fixture['cases'])} cases, {n_ids} ids -> {path.name}"
        if speed:
            line += f"; encode {speed[0]:.2f} MB/s over {speed[1] / 1e6:.2f} MB"
        report.append(line)
        print(line, flush=True)
    if args.bench_out:
        Path(args.bench_out).write_text("\n".join(report) + "\n", encoding="utf-8")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
