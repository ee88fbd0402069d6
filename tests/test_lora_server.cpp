// LoRA through `apus deploy`: --lora_modules, /v1/models listing adapters with their parent, the
// request's `model` picking the adapter, 404 for unknown names, and loading / unloading adapters
// at run time (POST /v1/load_lora_adapter, /v1/unload_lora_adapter, behind --api_key).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "apus/apus.h"
#include "core/error.h"
#include "deploy_process.h"
#include "text/chat_template.h"
#include "test_util.h"

namespace apus {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A rank-4 adapter of q_proj and v_proj for the demo model, from the deterministic generator.
void write_adapter(const fs::path& dir, const fs::path& model) {
  fs::create_directories(dir);
  const json c = test::read_json(model / "config.json");
  const int64_t H = c["hidden_size"], heads = c["num_attention_heads"], kv = c["num_key_value_heads"];
  const int64_t hd = H / heads, r = 4;
  test::write_json(dir / "adapter_config.json", {{"peft_type", "LORA"}, {"r", r}, {"lora_alpha", 16},
                                                 {"target_modules", {"q_proj", "v_proj"}}, {"bias", "none"}});
  std::vector<Tensor> keep;
  std::vector<TensorToWrite> out;
  for (const auto& [m, rows] : std::vector<std::pair<std::string, int64_t>>{{"q_proj", heads * hd}, {"v_proj", kv * hd}})
    for (const auto& [which, shape] : std::vector<std::pair<std::string, std::vector<int64_t>>>{
             {"lora_A", {r, H}}, {"lora_B", {rows, r}}}) {
      const std::string name = "base_model.model.model.layers.0.self_attn." + m + "." + which + ".weight";
      keep.push_back(random_weight(name, shape, DType::F32, 5));
      out.push_back({name, DType::F32, shape, keep.back().data});
    }
  write_safetensors((dir / "adapter_model.safetensors").string(), out);
}

TEST(LoraServer, AdaptersByName) {
  test::TempDir tmp;
  if (!test::write_tiny_chat_model(tmp.path() / "model")) GTEST_SKIP() << "tokenizer files not fetched";
  write_adapter(tmp.path() / "ad", tmp.path() / "model");
  test::DeployProcess p;
  ASSERT_TRUE(p.start(tmp.path() / "model", tmp.path() / "log",
                      {"--served-model-name", "base", "--lora_modules", "mine=" + (tmp.path() / "ad").string(),
                       "--max_loras", "2", "--api_key", "k", "--device", "cpu"}));
  server::HttpClient c(p.url(), "k", 60.0);
  auto ids = [](const server::ClientResponse& r) { return json::parse(r.body)["choices"][0]["text"].get<std::string>(); };
  auto complete = [&](const std::string& model) {
    return c.post("/v1/completions", json({{"model", model}, {"prompt", {11, 22, 33, 44, 55}}, {"max_tokens", 8},
                                           {"temperature", 0}, {"ignore_eos", true}})
                                         .dump());
  };

  const json models = json::parse(c.get("/v1/models").body)["data"];
  ASSERT_EQ(models.size(), 2u) << models.dump();
  EXPECT_EQ(models[0]["id"], "base");
  EXPECT_EQ(models[1]["id"], "mine");
  EXPECT_EQ(models[1]["parent"], "base");

  const auto base = complete("base"), mine = complete("mine");
  ASSERT_EQ(base.status, 200) << base.body;
  ASSERT_EQ(mine.status, 200) << mine.body;
  EXPECT_NE(ids(base), ids(mine)) << "the adapter changes nothing";
  EXPECT_EQ(ids(complete("base")), ids(base));
  const auto unknown = complete("nope");
  EXPECT_EQ(unknown.status, 404);
  EXPECT_EQ(json::parse(unknown.body)["error"]["code"], "model_not_found");

  // Run-time loading: the same files under a second name give the same text; slots are limited.
  EXPECT_EQ(server::HttpClient(p.url(), "", 10.0)
                .post("/v1/load_lora_adapter", R"({"lora_name": "x", "lora_path": "/nonexistent"})")
                .status,
            401);
  const auto load = c.post("/v1/load_lora_adapter",
                           json({{"lora_name", "again"}, {"lora_path", (tmp.path() / "ad").string()}}).dump());
  ASSERT_EQ(load.status, 200) << load.body;
  EXPECT_EQ(json::parse(c.get("/v1/models").body)["data"].size(), 3u);
  EXPECT_EQ(ids(complete("again")), ids(mine));
  const auto full = c.post("/v1/load_lora_adapter",
                           json({{"lora_name", "third"}, {"lora_path", (tmp.path() / "ad").string()}}).dump());
  EXPECT_EQ(full.status, 400);
  EXPECT_NE(full.body.find("--max_loras"), std::string::npos) << full.body;
  const auto bad = c.post("/v1/load_lora_adapter", json({{"lora_name", "bad"}, {"lora_path", tmp.str()}}).dump());
  EXPECT_EQ(bad.status, 400);
  EXPECT_NE(bad.body.find("adapter_config.json"), std::string::npos) << bad.body;

  ASSERT_EQ(c.post("/v1/unload_lora_adapter", R"({"lora_name": "again"})").status, 200);
  EXPECT_EQ(complete("again").status, 404);
  EXPECT_EQ(c.post("/v1/unload_lora_adapter", R"({"lora_name": "again"})").status, 404);
  // Its slot is free again.
  ASSERT_EQ(c.post("/v1/load_lora_adapter",
                   json({{"lora_name", "third"}, {"lora_path", (tmp.path() / "ad").string()}}).dump())
                .status,
            200);
  EXPECT_EQ(ids(complete("third")), ids(mine));
  EXPECT_EQ(p.stop(std::chrono::seconds(30)), 0) << p.log();
}

// The offline API: EngineOptions::lora_modules, InferRequest::lora_request per request.
TEST(LoraServer, OfflineApiPerRequest) {
  test::TempDir tmp;
  if (!test::write_tiny_chat_model(tmp.path() / "model")) GTEST_SKIP() << "tokenizer files not fetched";
  write_adapter(tmp.path() / "ad", tmp.path() / "model");
  EngineOptions o;
  o.device = "cpu";
  o.num_threads = 2;
  o.verbose = false;
  o.lora_modules = {(tmp.path() / "ad").string()};  // a bare path: default-lora
  auto engine = LlmEngine::load((tmp.path() / "model").string(), o);
  engine->generation_config.max_new_tokens = 8;
  auto tmpl = get_template(*engine);
  InferRequest base{"hello"}, tuned{"hello"};
  tuned.lora_request = "default-lora";
  const auto both = inference(*engine, *tmpl, {base, tuned});
  EXPECT_NE(both[0].response, both[1].response) << "the adapter changes nothing";
  EXPECT_EQ(inference(*engine, *tmpl, {tuned})[0].response, both[1].response);
  InferRequest unknown{"hello"};
  unknown.lora_request = "nope";
  EXPECT_THROW(inference(*engine, *tmpl, {unknown}), Error);
}

}  // namespace
}  // namespace apus
