#include "text/model_types.h"

#include "core/error.h"

namespace apus {

namespace {

// Each row follows the register_model(...) call of the same name in swift/llm/utils/model.py @
// 5d13db79; eos overrides come from the get function the decorator chain ends in:
//   get_model_tokenizer_qwen_chat   -> tokenizer.eos_token_id = im_end_id   (<|im_end|>)
//   get_model_tokenizer_qwen_base   -> tokenizer.eos_token_id = eod_id      (<|endoftext|>)
//   get_model_tokenizer_qwen2_chat  -> eos_token = '<|im_end|>' (Qwen1.5 chat, Qwen2 instruct, and
//                                      their GPTQ variants through get_model_tokenizer_qwen2_intx)
//   yi-*-chat                        -> register_model(..., eos_token='<|im_end|>')
constexpr std::string_view kQwen = "QWenLMHeadModel", kQwen2 = "Qwen2ForCausalLM", kLlama = "LlamaForCausalLM",
                           kMistral = "MistralForCausalLM", kGlm = "ChatGLMModel";
constexpr std::string_view kImEnd = "<|im_end|>", kEndOfText = "<|endoftext|>";

const std::vector<ModelTypeInfo> kModelTypes = {
    // Qwen (v1): get_model_tokenizer_qwen_base / _qwen_chat / _qwen_intx
    {"qwen-1_8b", "default-generation", kQwen, "Qwen/Qwen-1_8B", "", kEndOfText},
    {"qwen-1_8b-chat", "qwen", kQwen, "Qwen/Qwen-1_8B-Chat", "", kImEnd},
    {"qwen-7b", "default-generation", kQwen, "Qwen/Qwen-7B", "", kEndOfText},
    {"qwen-7b-chat", "qwen", kQwen, "Qwen/Qwen-7B-Chat", "", kImEnd},
    {"qwen-7b-chat-int4", "qwen", kQwen, "Qwen/Qwen-7B-Chat-Int4", "gptq-int4", kImEnd},
    {"qwen-7b-chat-int8", "qwen", kQwen, "Qwen/Qwen-7B-Chat-Int8", "gptq-int8", kImEnd},
    {"qwen-14b", "default-generation", kQwen, "Qwen/Qwen-14B", "", kEndOfText},
    {"qwen-14b-chat", "qwen", kQwen, "Qwen/Qwen-14B-Chat", "", kImEnd},
    {"qwen-72b-chat", "qwen", kQwen, "Qwen/Qwen-72B-Chat", "", kImEnd},
    // Qwen1.5: base models through get_model_tokenizer_with_flash_attn (tokenizer's eos), chat
    // models through get_model_tokenizer_qwen2_chat / _qwen2_intx
    {"qwen1half-0_5b", "default-generation", kQwen2, "Qwen/Qwen1.5-0.5B", "", ""},
    {"qwen1half-7b", "default-generation", kQwen2, "Qwen/Qwen1.5-7B", "", ""},
    {"qwen1half-0_5b-chat", "qwen", kQwen2, "Qwen/Qwen1.5-0.5B-Chat", "", kImEnd},
    {"qwen1half-1_8b-chat", "qwen", kQwen2, "Qwen/Qwen1.5-1.8B-Chat", "", kImEnd},
    {"qwen1half-4b-chat", "qwen", kQwen2, "Qwen/Qwen1.5-4B-Chat", "", kImEnd},
    {"qwen1half-7b-chat", "qwen", kQwen2, "Qwen/Qwen1.5-7B-Chat", "", kImEnd},
    {"qwen1half-14b-chat", "qwen", kQwen2, "Qwen/Qwen1.5-14B-Chat", "", kImEnd},
    {"qwen1half-72b-chat", "qwen", kQwen2, "Qwen/Qwen1.5-72B-Chat", "", kImEnd},
    {"qwen1half-0_5b-chat-int4", "qwen", kQwen2, "Qwen/Qwen1.5-0.5B-Chat-GPTQ-Int4", "gptq-int4", kImEnd},
    {"qwen1half-7b-chat-int4", "qwen", kQwen2, "Qwen/Qwen1.5-7B-Chat-GPTQ-Int4", "gptq-int4", kImEnd},
    {"qwen1half-7b-chat-int8", "qwen", kQwen2, "Qwen/Qwen1.5-7B-Chat-GPTQ-Int8", "gptq-int8", kImEnd},
    {"qwen1half-7b-chat-awq", "qwen", kQwen2, "Qwen/Qwen1.5-7B-Chat-AWQ", "awq", kImEnd},
    // Qwen2
    {"qwen2-0_5b", "default-generation", kQwen2, "Qwen/Qwen2-0.5B", "", ""},
    {"qwen2-7b", "default-generation", kQwen2, "Qwen/Qwen2-7B", "", ""},
    {"qwen2-0_5b-instruct", "qwen", kQwen2, "Qwen/Qwen2-0.5B-Instruct", "", kImEnd},
    {"qwen2-1_5b-instruct", "qwen", kQwen2, "Qwen/Qwen2-1.5B-Instruct", "", kImEnd},
    {"qwen2-7b-instruct", "qwen", kQwen2, "Qwen/Qwen2-7B-Instruct", "", kImEnd},
    {"qwen2-72b-instruct", "qwen", kQwen2, "Qwen/Qwen2-72B-Instruct", "", kImEnd},
    {"qwen2-7b-instruct-int4", "qwen", kQwen2, "Qwen/Qwen2-7B-Instruct-GPTQ-Int4", "gptq-int4", kImEnd},
    {"qwen2-7b-instruct-awq", "qwen", kQwen2, "Qwen/Qwen2-7B-Instruct-AWQ", "awq", kImEnd},
    // Qwen2.5: registered only after the pinned commit; mapped like qwen2-*-instruct.
    {"qwen2_5-0_5b-instruct", "qwen", kQwen2, "Qwen/Qwen2.5-0.5B-Instruct", "", kImEnd, false},
    {"qwen2_5-7b-instruct", "qwen", kQwen2, "Qwen/Qwen2.5-7B-Instruct", "", kImEnd, false},
    // ChatGLM3: get_model_tokenizer_chatglm
    {"chatglm3-6b", "chatglm3", kGlm, "THUDM/chatglm3-6b", "", ""},
    {"chatglm3-6b-32k", "chatglm3", kGlm, "THUDM/chatglm3-6b-32k", "", ""},
    {"chatglm3-6b-128k", "chatglm3", kGlm, "THUDM/chatglm3-6b-128k", "", ""},
    // Yi
    {"yi-6b", "default-generation", kLlama, "01-ai/Yi-6B", "", ""},
    {"yi-6b-chat", "yi", kLlama, "01-ai/Yi-6B-Chat", "", kImEnd},
    {"yi-6b-chat-awq", "yi", kLlama, "01-ai/Yi-6B-Chat-4bits", "awq", kImEnd},
    {"yi-34b", "default-generation", kLlama, "01-ai/Yi-34B", "", ""},
    {"yi-34b-chat", "yi", kLlama, "01-ai/Yi-34B-Chat", "", kImEnd},
    // Llama 2: get_model_tokenizer_llama2
    {"llama2-7b", "default-generation", kLlama, "meta-llama/Llama-2-7b-hf", "", ""},
    {"llama2-7b-chat", "llama", kLlama, "meta-llama/Llama-2-7b-chat-hf", "", ""},
    {"llama2-13b-chat", "llama", kLlama, "meta-llama/Llama-2-13b-chat-hf", "", ""},
    {"llama2-70b-chat", "llama", kLlama, "meta-llama/Llama-2-70b-chat-hf", "", ""},
    // Llama 3 / 3.1
    {"llama3-8b", "default-generation", kLlama, "meta-llama/Meta-Llama-3-8B", "", ""},
    {"llama3-8b-instruct", "llama3", kLlama, "meta-llama/Meta-Llama-3-8B-Instruct", "", ""},
    {"llama3-70b-instruct", "llama3", kLlama, "meta-llama/Meta-Llama-3-70B-Instruct", "", ""},
    {"llama3_1-8b", "default-generation", kLlama, "meta-llama/Meta-Llama-3.1-8B", "", ""},
    {"llama3_1-8b-instruct", "llama3", kLlama, "meta-llama/Meta-Llama-3.1-8B-Instruct", "", ""},
    {"llama3_1-70b-instruct", "llama3", kLlama, "meta-llama/Meta-Llama-3.1-70B-Instruct", "", ""},
    // Mistral (the instruct models use the llama template in the reference)
    {"mistral-7b", "default-generation", kMistral, "mistralai/Mistral-7B-v0.1", "", ""},
    {"mistral-7b-instruct", "llama", kMistral, "mistralai/Mistral-7B-Instruct-v0.1", "", ""},
    {"mistral-7b-instruct-v2", "llama", kMistral, "mistralai/Mistral-7B-Instruct-v0.2", "", ""},
    {"mistral-7b-instruct-v3", "llama", kMistral, "mistralai/Mistral-7B-Instruct-v0.3", "", ""},
};

}  // namespace

const std::vector<ModelTypeInfo>& model_types() { return kModelTypes; }

std::string known_model_types() {
  std::string out;
  for (const auto& m : kModelTypes) out += (out.empty() ? "" : ", ") + std::string(m.name);
  return out;
}

const ModelTypeInfo& find_model_type(std::string_view name) {
  for (const auto& m : kModelTypes)
    if (m.name == name) return m;
  fail("unknown model type \"{}\" (known: {})", name, known_model_types());
}

}  // namespace apus
