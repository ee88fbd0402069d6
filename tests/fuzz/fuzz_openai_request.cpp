// The OpenAI request parser under fuzzing: any bytes, as the body of either endpoint, must give a
// checked OpenAIRequest or an ApiError(400), never a crash, a hang or another exception. The chat
// messages it accepts then go through parse_messages, which may only throw apus::Error.
//
// One entry point for both uses: the libFuzzer binary (APUS_FUZZ=ON, Clang) and the corpus replay
// that every build runs as a ctest (replay_main.cpp); see README.md.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string_view>

#include "core/error.h"
#include "server/openai_protocol.h"
#include "text/chat_template.h"

namespace {

using apus::server::ApiError;
using apus::server::Endpoint;
using apus::server::OpenAIRequest;

// An invariant the parser promises broke: abort, so the fuzzer keeps the input as a crasher.
void expect(bool ok, const char* what, std::string_view body) {
  if (ok) return;
  std::fprintf(stderr, "fuzz_openai_request: %s for body (%zu bytes): %.*s\n", what, body.size(), int(body.size()),
               body.data());
  std::abort();
}

// What an accepted request must hold (the server relies on these without checking again).
void check_accepted(const OpenAIRequest& r, Endpoint ep, std::string_view body) {
  expect(r.endpoint == ep, "wrong endpoint", body);
  expect(r.n >= 1 && r.n <= apus::server::kMaxN, "n out of range", body);
  expect(!r.max_tokens || *r.max_tokens >= 1, "max_tokens < 1", body);
  expect(r.temperature >= 0.0f && r.temperature <= 2.0f, "temperature out of range", body);
  expect(r.top_p > 0.0f && r.top_p <= 1.0f, "top_p out of range", body);
  expect(r.min_p >= 0.0f && r.min_p <= 1.0f, "min_p out of range", body);
  expect(r.repetition_penalty > 0.0f, "repetition_penalty <= 0", body);
  expect(!r.logprobs || (*r.logprobs >= 0 && *r.logprobs <= apus::server::kMaxLogprobs), "logprobs out of range", body);
  expect(r.include_usage ? r.stream : true, "include_usage without stream", body);
  for (const auto& s : r.stop) expect(!s.empty(), "empty stop string", body);
  expect(r.chat_template_kwargs.is_object(), "chat_template_kwargs not an object", body);
  if (ep == Endpoint::Chat) {
    expect(r.messages.is_array() && !r.messages.empty(), "messages not a non-empty array", body);
    try {
      (void)apus::parse_messages(r.messages);
    } catch (const apus::Error&) {
      // a bad message: the server answers 400
    }
  } else {
    expect(!r.prompts.empty(), "no prompt", body);
    for (const auto& p : r.prompts) {
      expect(p.is_ids ? !p.ids.empty() : !p.text.empty(), "empty prompt", body);
      for (int32_t t : p.ids) expect(t >= 0, "negative token id", body);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  for (Endpoint ep : {Endpoint::Chat, Endpoint::Completion}) {
    try {
      check_accepted(apus::server::parse_openai_request(ep, body), ep, body);
    } catch (const ApiError& e) {
      expect(e.status == 400, "an ApiError other than 400", body);
      // The error body goes to the client as is: it must be valid JSON whatever the input held.
      expect(nlohmann::json::accept(e.body()), "an error body that is not JSON", body);
    }
  }
  return 0;
}
