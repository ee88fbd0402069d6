#!/usr/bin/env python3
"""Writes the small hand-made tokenizer.json files under tests/data/tokenizer/tiny/.

The real tokenizers in third_party/ cover byte-level BPE and SentencePiece-style BPE; these cover the
other components tokenizers supports (Unigram, WordPiece, WordLevel, BPE with a subword prefix or an
end-of-word suffix, the normalizers, pre-tokenizers, post-processors and decoders the real ones do not
use). make_tokenizer_golden.py runs the reference library on them like on the real ones.
Deterministic: the vocabularies and merges come from a fixed sample text. No dependencies.
"""
import collections
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "tests/data/tokenizer/tiny"
SAMPLE = """The quick brown fox jumps over the lazy dog. Hello world, hello tokenizer!
I'm sure you'll see they're fine, don't worry. Numbers 1234567890 and 3.14159.
Tokenization should match exactly: café naïve coöperate résumé. 中文分词 日本語のテキスト.
the then there these this that those thing think thought through throughout
playing played player plays replay display unplayable
""" * 3
SPM = "\u2581"


def bytes_tokens():
    return [f"<0x{b:02X}>" for b in range(256)]


def added(i, content, special=True, lstrip=False, rstrip=False, normalized=None, single_word=False):
    return {"id": i, "content": content, "single_word": single_word, "lstrip": lstrip, "rstrip": rstrip,
            "normalized": (not special) if normalized is None else normalized, "special": special}


def train_bpe(words, n_merges, prefix="", suffix=""):
    """Greedy BPE over word frequencies: symbols are characters (non-first ones carry `prefix`, the
    last one `suffix`); returns the alphabet and the merges in rank order."""
    freq = collections.Counter(words)
    seqs = {}
    alphabet = set()
    for w in freq:
        syms = [(prefix if i else "") + c + (suffix if i == len(w) - 1 else "") for i, c in enumerate(w)]
        seqs[w] = syms
        alphabet.update(syms)
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for w, syms in seqs.items():
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] += freq[w]
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merged = a + b[len(prefix):] if prefix and b.startswith(prefix) else a + b
        merges.append((a, b, merged))
        for w, syms in seqs.items():
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            seqs[w] = out
    return sorted(alphabet), merges


def template(first, last, ids):
    single = []
    if first:
        single.append({"SpecialToken": {"id": first, "type_id": 0}})
    single.append({"Sequence": {"id": "A", "type_id": 0}})
    if last:
        single.append({"SpecialToken": {"id": last, "type_id": 0}})
    pair = single + [{"Sequence": {"id": "B", "type_id": 1}}] + (
        [{"SpecialToken": {"id": last, "type_id": 1}}] if last else [])
    specials = {t: {"id": t, "ids": [ids[t]], "tokens": [t]} for t in (first, last) if t}
    return {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials}


def tokenizer(added_tokens, normalizer, pre_tokenizer, model, post_processor, decoder):
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added_tokens,
            "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "model": model,
            "post_processor": post_processor, "decoder": decoder}


def unigram():
    # Pieces: specials, bytes (byte_fallback), characters and frequent words with the metaspace prefix;
    # scores fall with rank so that longer, frequent pieces win the Viterbi path.
    words = collections.Counter(SPM + w.lower() for w in SAMPLE.split())
    pieces = ["<unk>", "<s>", "</s>"] + bytes_tokens()
    chars = sorted({c for c in SAMPLE.lower().replace(" ", SPM).replace("\n", "") if c.strip()} | {SPM})
    vocab = [[p, 0.0] for p in pieces]
    for rank, (w, _) in enumerate(words.most_common(40)):
        vocab.append([w, -2.0 - rank * 0.25])
    for i, c in enumerate(chars):
        vocab.append([c, -6.0 - i * 0.01])
    for sub in ["the", "th", "he", "ing", "play", SPM + "play", "er", "ed", "s", "ly", "to", "ken"]:
        if [sub, 0] not in vocab:
            vocab.append([sub, -4.5])
    mask_id = len(vocab)
    ids = {"<s>": 1, "</s>": 2}
    return tokenizer(
        [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>"), added(mask_id, "<mask>", lstrip=True),
         added(mask_id + 1, "hello world", special=False, normalized=True)],
        {"type": "Sequence", "normalizers": [
            {"type": "NFKC"},
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
            {"type": "Lowercase"}]},
        {"type": "Metaspace", "replacement": SPM, "prepend_scheme": "first", "split": True},
        {"type": "Unigram", "unk_id": 0, "vocab": vocab, "byte_fallback": True},
        template("<s>", "</s>", ids),
        {"type": "Sequence", "decoders": [
            {"type": "ByteFallback"},
            {"type": "Metaspace", "replacement": SPM, "prepend_scheme": "first", "split": True}]})


def wordpiece():
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [w.lower().strip(".,!:;'") for w in SAMPLE.split()]
    alphabet, merges = train_bpe([w for w in words if w], 120, prefix="##")
    vocab = specials + sorted(set(alphabet) | {m[2] for m in merges} | set("0123456789.,!?:;'-") |
                              {"##" + c for c in "0123456789"})
    return tokenizer(
        [added(0, "[PAD]"), added(1, "[UNK]"), added(2, "[CLS]"), added(3, "[SEP]"),
         added(4, "[MASK]", lstrip=True)],
        {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "strip_accents": None,
         "lowercase": True},
        {"type": "BertPreTokenizer"},
        {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
         "max_input_chars_per_word": 24, "vocab": {t: i for i, t in enumerate(vocab)}},
        {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        {"type": "WordPiece", "prefix": "##", "cleanup": True})


def bpe_suffix():
    # Original-GPT/CLIP style: an end-of-word suffix, accents stripped, digits one by one.
    words = [w for w in SAMPLE.lower().split()]
    alphabet, merges = train_bpe(words, 150, suffix="</w>")
    vocab = ["<s>", "<pad>", "</s>", "<unk>"] + alphabet + [m[2] for m in merges]
    vocab = list(dict.fromkeys(vocab))
    return tokenizer(
        [added(0, "<s>"), added(1, "<pad>"), added(2, "</s>"), added(3, "<unk>"),
         added(len(vocab), "[[note]]", special=False, single_word=True, rstrip=True, normalized=False)],
        {"type": "Sequence", "normalizers": [
            {"type": "NFD"}, {"type": "StripAccents"}, {"type": "Lowercase"},
            {"type": "Strip", "strip_left": True, "strip_right": True}]},
        {"type": "Sequence", "pretokenizers": [
            {"type": "WhitespaceSplit"}, {"type": "Digits", "individual_digits": True},
            {"type": "Punctuation", "behavior": "Isolated"}]},
        {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
         "end_of_word_suffix": "</w>", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
         "vocab": {t: i for i, t in enumerate(vocab)}, "merges": [[a, b] for a, b, _ in merges]},
        {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0], "trim_offsets": True,
         "add_prefix_space": False},
        {"type": "BPEDecoder", "suffix": "</w>"})


def bpe_prefix():
    # A "##" continuing-subword prefix, fused unknowns, and Split with every behaviour.
    words = [w for w in SAMPLE.split()]
    alphabet, merges = train_bpe(words, 150, prefix="##")
    vocab = list(dict.fromkeys(["[UNK]", "[CLS]"] + alphabet + [m[2] for m in merges]))
    return tokenizer(
        [added(0, "[UNK]"), added(1, "[CLS]"), added(len(vocab), "hello", special=False, lstrip=True,
                                                       rstrip=True, normalized=False)],
        {"type": "Sequence", "normalizers": [
            {"type": "Replace", "pattern": {"String": "``"}, "content": "\""},
            {"type": "NFC"}]},
        {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"String": " "}, "behavior": "Removed", "invert": False},
            {"type": "Split", "pattern": {"Regex": "[,.;:]"}, "behavior": "MergedWithPrevious", "invert": False},
            {"type": "Split", "pattern": {"Regex": "[-/]"}, "behavior": "MergedWithNext", "invert": False},
            {"type": "Split", "pattern": {"Regex": "\\p{N}"}, "behavior": "Contiguous", "invert": False},
            {"type": "Split", "pattern": {"Regex": "[A-Za-z']+"}, "behavior": "Isolated", "invert": True}]},
        {"type": "BPE", "dropout": None, "unk_token": "[UNK]", "continuing_subword_prefix": "##",
         "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": False,
         "vocab": {t: i for i, t in enumerate(vocab)}, "merges": [f"{a} {b}" for a, b, _ in merges]},
        template("[CLS]", None, {"[CLS]": 1}),
        {"type": "Sequence", "decoders": [
            {"type": "WordPiece", "prefix": "##", "cleanup": False},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Strip", "content": " ", "start": 2, "stop": 1}]})


def bytelevel():
    # GPT-2 style: ByteLevel pre-tokenizer with its own regex and a prefix space, NFKD first.
    table = {}
    n = 0
    for b in range(256):
        if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    import re
    pat = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+""")
    words = ["".join(table[b] for b in m.encode("utf-8")) for m in pat.findall(" " + SAMPLE)]
    alphabet, merges = train_bpe(words, 200)
    vocab = list(dict.fromkeys([table[b] for b in range(256)] + [m[2] for m in merges]))
    eot = len(vocab)
    return tokenizer(
        [added(eot, "<|endoftext|>"),
         added(eot + 1, "[[note]]", special=False, single_word=True, rstrip=True, normalized=False)],
        {"type": "NFKD"},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
         "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
         "vocab": {t: i for i, t in enumerate(vocab)}, "merges": [[a, b] for a, b, _ in merges]},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True})


def wordlevel():
    words = sorted({w.lower().strip(".,!:;") for w in SAMPLE.split()} - {""})
    vocab = ["[UNK]", "|"] + words
    return tokenizer(
        [added(0, "[UNK]")],
        {"type": "Lowercase"},
        {"type": "Sequence", "pretokenizers": [
            {"type": "CharDelimiterSplit", "delimiter": "|"}, {"type": "Whitespace"}]},
        {"type": "WordLevel", "vocab": {t: i for i, t in enumerate(vocab)}, "unk_token": "[UNK]"},
        None,
        None)


def main():
    for name, make in [("unigram", unigram), ("wordpiece", wordpiece), ("bpe_suffix", bpe_suffix),
                       ("bpe_prefix", bpe_prefix), ("bytelevel", bytelevel), ("wordlevel", wordlevel)]:
        d = OUT / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "tokenizer.json").write_text(json.dumps(make(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(d / "tokenizer.json")


if __name__ == "__main__":
    main()
