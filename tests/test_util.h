// Helpers shared by tests: temporary directories and writing checkpoints from the deterministic
// weight generator.
#pragma once
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "model/demo_model.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace apus::test {

// A fresh directory removed when the object goes out of scope.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() / ("apus_test_" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

inline void write_json(const std::filesystem::path& p, const nlohmann::json& j) {
  std::ofstream(p) << j.dump(2);
}

inline nlohmann::json read_json(const std::filesystem::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

// Runs the apus binary with `args` (shell syntax), returning its exit status and stdout+stderr.
struct Exec {
  int status;
  std::string out;
};
// Runs `cmd` under /bin/sh: its exit status (128 + N when killed by signal N) and stdout.
inline Exec sh(const std::string& cmd) {
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) out.append(buf.data(), n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), out};
}
inline Exec run_apus(const std::string& args) { return sh(std::string(APUS_BINARY) + " " + args + " 2>&1"); }

struct NamedShape {
  std::string name;
  std::vector<int64_t> shape;
};

// Writes config.json and the deterministic weights of `tensors` as a checkpoint in `dir`.
// Returns the host tensors (kept alive for the caller's checks).
inline std::vector<Tensor> write_random_checkpoint(const std::filesystem::path& dir, const nlohmann::json& config,
                                                   const std::vector<NamedShape>& tensors, DType dtype,
                                                   uint64_t seed, size_t max_shard_bytes = size_t(1) << 40) {
  write_json(dir / "config.json", config);
  std::vector<Tensor> values;
  std::vector<TensorToWrite> out;
  for (const auto& t : tensors) {
    values.push_back(random_weight(t.name, t.shape, dtype, seed));
    out.push_back({t.name, dtype, t.shape, values.back().data});
  }
  write_checkpoint(dir.string(), out, max_shard_bytes);
  return values;
}

// Regenerates the checkpoint of golden fixture `name` (tests/golden/NAME.json) into `dir`;
// `config_patch` is merged into its config.json (e.g. a longer max_position_embeddings).
inline void write_fixture_model(const std::filesystem::path& dir, const std::string& name,
                                const nlohmann::json& config_patch = nlohmann::json::object()) {
  auto fx = read_json(std::string(APUS_SOURCE_DIR) + "/tests/golden/" + name + ".json");
  std::vector<NamedShape> specs;
  for (const auto& t : fx["tensors"]) specs.push_back({t["name"], t["shape"].get<std::vector<int64_t>>()});
  DType dtype = DType::F32;
  parse_dtype(fx["dtype"].get<std::string>(), &dtype);
  nlohmann::json config = fx["config"];
  config.merge_patch(config_patch);
  write_random_checkpoint(dir, config, specs, dtype, fx["seed"].get<uint64_t>());
}

// The demo model (src/model/demo_model.h) with the tokenizer third_party/tokenizers/NAME. Returns
// false when the tokenizer files are missing (tests then skip).
inline bool write_tiny_chat_model(const std::filesystem::path& dir, const std::string& tokenizer = "qwen3") {
  const std::filesystem::path src = std::filesystem::path(APUS_SOURCE_DIR) / "third_party/tokenizers" / tokenizer;
  if (!std::filesystem::exists(src / "tokenizer.json")) return false;
  write_demo_model(src.string(), dir.string());
  return true;
}

}  // namespace apus::test
