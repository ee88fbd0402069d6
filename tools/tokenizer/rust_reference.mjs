// The same fixtures as make_tokenizer_golden.py (tokenizer.json ones only), from the Rust `tokenizers`
// library through its official Node binding (npm `tokenizers`, same Rust core as the Python wheel),
// for machines without Python `tokenizers`; also the reference's single-thread encode throughput
// on this machine, to compare with ours on the same CPU.
//
//   python3 tools/tokenizer/make_tokenizer_golden.py --texts-out /tmp/texts.json
//   (cd /tmp/tok && npm install tokenizers@0.23.2)
//   NODE_PATH=/tmp/tok/node_modules RAYON_NUM_THREADS=1 node tools/tokenizer/rust_reference.mjs \
//       /tmp/texts.json OUT_DIR [name ...]
import { createRequire } from "module";
import fs from "fs";
import path from "path";

const require = createRequire(import.meta.url);
const { Tokenizer } = require(process.env.TOKENIZERS_MODULE || "tokenizers");

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../..");
const [textsFile, outDir, ...only] = process.argv.slice(2);
const { cases, bench_docs: docs } = JSON.parse(fs.readFileSync(textsFile, "utf8"));
fs.mkdirSync(outDir, { recursive: true });

function dirs() {
  const out = [];
  for (const [base, prefix] of [["third_party/tokenizers", ""], ["tests/data/tokenizer/tiny", "tiny_"]]) {
    const b = path.join(root, base);
    if (!fs.existsSync(b)) continue;
    for (const d of fs.readdirSync(b).sort()) {
      const name = prefix + d;
      if (fs.existsSync(path.join(b, d, "tokenizer.json")) && (!only.length || only.includes(name))) {
        out.push([name, path.join(b, d)]);
      }
    }
  }
  return out;
}

function tokenName(config, key) {
  let v = config[key];
  if (v && typeof v === "object") v = v.content;
  return typeof v === "string" ? v : null;
}

for (const [name, dir] of dirs()) {
  const tok = Tokenizer.fromFile(path.join(dir, "tokenizer.json"));
  const outCases = [];
  for (const text of cases) {
    const ids = (await tok.encode(text, null, { addSpecialTokens: true })).getIds();
    const plain = (await tok.encode(text, null, { addSpecialTokens: false })).getIds();
    outCases.push({
      text,
      ids,
      ids_plain: plain,
      decoded: await tok.decode(ids, false),
      decoded_skip: await tok.decode(ids, true),
      roundtrip: (await tok.decode(plain, false)) === text,
    });
  }
  const cfgPath = path.join(dir, "tokenizer_config.json");
  const config = fs.existsSync(cfgPath) ? JSON.parse(fs.readFileSync(cfgPath, "utf8")) : {};
  const bos = tokenName(config, "bos_token"), eos = tokenName(config, "eos_token");
  const added = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8")).added_tokens || [];
  const specialIds = added.filter((t) => t.special).map((t) => tok.tokenToId(t.content)).sort((a, b) => a - b);
  const seen = [...new Set([...outCases.slice(0, 40).flatMap((c) => c.ids), ...specialIds.slice(0, 20)])].sort((a, b) => a - b);
  const fixture = {
    tokenizer: name,
    reference: "tokenizers 0.23.2 (node binding)",
    vocab_size: tok.getVocabSize(true),
    bos_id: bos ? tok.tokenToId(bos) : null,
    eos_id: eos ? tok.tokenToId(eos) : null,
    special_ids: specialIds,
    id_to_token: seen.map((i) => [i, tok.idToToken(i)]),
    cases: outCases,
  };
  fs.writeFileSync(path.join(outDir, `${name}.json`), JSON.stringify(fixture) + "\n");
  let line = `${name}: ${outCases.length} cases`;
  if (!name.startsWith("tiny_")) {
    const bytes = docs.reduce((n, d) => n + Buffer.byteLength(d), 0);
    for (const d of docs) await tok.encode(d, null, { addSpecialTokens: false });
    let best = Infinity;
    for (let r = 0; r < 3; r++) {
      const t0 = process.hrtime.bigint();
      for (const d of docs) await tok.encode(d, null, { addSpecialTokens: false });
      best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
    }
    line += `; encode ${(bytes / best / 1e6).toFixed(2)} MB/s over ${(bytes / 1e6).toFixed(2)} MB`;
  }
  console.log(line);
}
