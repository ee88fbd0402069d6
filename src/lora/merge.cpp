#include "lora/merge.h"

#include <filesystem>
#include <fstream>
#include <set>

#include "backend/cpu/gemm.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "lora/adapter.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace apus {

namespace fs = std::filesystem;

namespace {

// W + scale * B A in W's dtype.
Tensor merged(const Tensor& w, const LoraModule& m, ThreadPool& pool) {
  const int64_t out = w.shape[0], in = w.shape[1], r = m.rank;
  const Tensor b = convert_float(m.b, DType::F32);
  Tensor at = host_tensor(DType::F32, {in, r});  // A^T, so that gemm computes B A as B (A^T)^T
  for (int64_t k = 0; k < r; ++k)
    for (int64_t i = 0; i < in; ++i) at.ptr<float>()[i * r + k] = get_float(m.a, k * in + i);
  Tensor delta = host_tensor(DType::F32, {out, in});
  gemm(b.ptr<float>(), r, at.data, DType::F32, r, nullptr, delta.ptr<float>(), in, out, in, r, pool);
  Tensor res = host_tensor(w.dtype, w.shape);
  for (int64_t i = 0; i < out * in; ++i) {
    set_float(res, i, get_float(w, i) + m.scale * delta.ptr<float>()[i]);
  }
  return res;
}

}  // namespace

std::string merge_lora(const MergeOptions& o) {
  const LoraAdapter ad = load_lora_adapter(o.adapter_dir);
  std::string base = o.base_dir;
  if (base.empty()) {
    APUS_CHECK(!ad.base_model.empty() && fs::is_directory(ad.base_model),
               "{}: the base model \"{}\" (base_model_name_or_path) is not a local directory: pass --model BASE_DIR",
               o.adapter_dir, ad.base_model);
    base = ad.base_model;
  }
  const ModelConfig config = load_model_config(base);
  check_lora_adapter(ad, config);
  const Checkpoint ckpt = Checkpoint::open(base);
  std::string out_dir = o.output_dir;
  if (out_dir.empty()) out_dir = fs::path(o.adapter_dir).lexically_normal().string() + "-merged";
  while (out_dir.size() > 1 && out_dir.back() == '/') out_dir.pop_back();
  std::error_code ec;
  for (const std::string& other : {base, o.adapter_dir})
    APUS_CHECK(!fs::equivalent(out_dir, other, ec), "--output_dir {} is the input directory {}", out_dir, other);

  std::vector<TensorToWrite> tensors;
  std::set<std::string> replaced;
  ThreadPool pool(std::max(1, o.num_threads));
  for (const std::string& name : ckpt.names()) {
    const TensorEntry& e = *ckpt.find(name);
    const Tensor w = ckpt.tensor(e);
    TensorToWrite t{name, e.dtype, e.shape, e.data};
    const std::string module = name.ends_with(".weight") ? name.substr(0, name.size() - 7) : "";
    if (auto it = ad.modules.find(module); it != ad.modules.end()) {
      const LoraModule& m = it->second;
      APUS_CHECK(e.dtype == DType::F32 || e.dtype == DType::F16 || e.dtype == DType::BF16,
                 "{}: {} has dtype {}; only float weights can be merged into", e.file, name, dtype_name(e.dtype));
      APUS_CHECK(e.shape == std::vector<int64_t>({m.b.shape[0], m.a.shape[1]}),
                 "{}: {} has shape [{}], but the adapter's B A is [{}, {}]", e.file, name, fmt::join(e.shape, ", "),
                 m.b.shape[0], m.a.shape[1]);
      t.data = nullptr;
      t.produce = [w, &m, &pool] { return merged(w, m, pool); };
      replaced.insert(module);
    } else if (auto s = ad.saved.find(name); s != ad.saved.end()) {
      APUS_CHECK(e.shape == s->second.shape, "{}: {} has shape [{}], the adapter's saved copy [{}]", e.file, name,
                 fmt::join(e.shape, ", "), fmt::join(s->second.shape, ", "));
      const Tensor saved = s->second;
      const DType dt = e.dtype;
      t.data = nullptr;
      t.produce = [saved, dt] { return convert_float(saved, dt); };
      replaced.insert(name);
    }
    tensors.push_back(std::move(t));
  }
  for (const auto& [module, m] : ad.modules)
    APUS_CHECK(replaced.count(module), "{}: the base checkpoint has no {}.weight for the adapter's LoRA", base, module);
  for (const auto& [name, t] : ad.saved)
    APUS_CHECK(replaced.count(name), "{}: the base checkpoint has no {} for the adapter's modules_to_save", base, name);

  fs::create_directories(out_dir, ec);
  APUS_CHECK(!ec, "{}: cannot create directory: {}", out_dir, ec.message());
  write_checkpoint(out_dir, tensors, o.max_shard_bytes);
  // Config, generation config and tokenizer from the base, then any the adapter directory carries
  // (a fine-tune often saves its tokenizer beside the adapter).
  for (const std::string& from : {base, o.adapter_dir}) copy_side_files(from, out_dir);
  return out_dir;
}

}  // namespace apus
