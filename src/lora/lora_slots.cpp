#include "lora/lora_slots.h"

#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace apus {

namespace {

// The view of one slot of a stacked [slots, d1, d2] tensor.
Tensor slot_view(const Tensor& t, int slot) {
  const int64_t n = t.shape[1] * t.shape[2];
  return make_view(static_cast<char*>(t.data) + size_t(slot) * size_t(n) * dtype_size(t.dtype), t.dtype,
                   {1, t.shape[1], t.shape[2]}, t.device, t.owner);
}

}  // namespace

LoraSlots::LoraSlots(const ModelConfig& config, const Shard& shard, Backend& backend, int max_loras, int max_rank)
    : config_(config), shard_(shard), backend_(backend), max_loras_(max_loras), max_rank_(8) {
  const ModelConfig c = shard.local(config);  // this rank's sizes
  APUS_CHECK(max_loras >= 1 && max_rank >= 1, "max_loras and max_lora_rank must be at least 1");
  while (max_rank_ < max_rank) max_rank_ *= 2;  // a power of two from 8: what the CUDA kernels take
  const DType dt = backend.activation_dtype();
  const int64_t S = max_loras, R = max_rank, H = c.hidden_size, I = c.intermediate_size;
  auto part = [&](int64_t out, int64_t in, int64_t offset) {
    LoraPart p{backend.alloc(dt, {S, R, in}), backend.alloc(dt, {S, out, R}), offset};
    bytes_ += p.a.nbytes() + p.b.nbytes();
    return p;
  };
  for (int i = 0; i < c.num_layers; ++i) {
    LoraLayer L;
    L.qkv = {part(c.q_size(), H, 0), part(c.kv_size(), H, c.q_size()), part(c.kv_size(), H, c.q_size() + c.kv_size())};
    L.o = {part(H, c.q_size(), 0)};
    L.gate_up = {part(I, H, 0), part(I, H, I)};
    L.down = {part(H, I, 0)};
    layers_.push_back(std::move(L));
  }
  lm_heads_.resize(size_t(max_loras));
  backend.synchronize();  // the zero fill is queued on the step stream; loads copy on another
}

void LoraSlots::write(int slot, const std::string& module, LoraPart& part, const LoraModule* m, int64_t b_row0,
                      int64_t a_col0) {
  const int64_t R = max_rank_, in = part.a.shape[2], out = part.b.shape[1];
  Tensor a = host_tensor(part.a.dtype, {1, R, in}), b = host_tensor(part.b.dtype, {1, out, R});
  if (m) {
    APUS_CHECK(m->rank <= R, "{}: {} has rank {}, more than --max_lora_rank {}", m->a.describe(), module, m->rank, R);
    const int64_t full_in = m->a.shape[1];
    for (int64_t r = 0; r < m->rank; ++r)
      for (int64_t i = 0; i < in; ++i) set_float(a, r * in + i, get_float(m->a, r * full_in + a_col0 + i));
    for (int64_t o = 0; o < out; ++o)
      for (int64_t r = 0; r < m->rank; ++r)
        set_float(b, o * R + r, m->scale * get_float(m->b, (b_row0 + o) * m->rank + r));
  }
  Tensor da = slot_view(part.a, slot), db = slot_view(part.b, slot);
  backend_.copy_from_host(a.data, da);
  backend_.copy_from_host(b.data, db);
}

void LoraSlots::load(int slot, const LoraAdapter& ad) {
  APUS_CHECK(slot >= 0 && slot < max_loras_, "LoRA slot {} outside the {} slots (--max_loras)", slot, max_loras_);
  check_lora_adapter(ad, config_);
  APUS_CHECK(ad.max_rank <= max_rank_, "{}: the adapter's rank {} is more than --max_lora_rank {}", ad.dir, ad.max_rank,
             max_rank_);
  APUS_CHECK(!ad.saved.count("model.embed_tokens.weight"),
             "{}: the adapter replaces embed_tokens (modules_to_save); serve it merged (apus export --merge_lora true)",
             ad.dir);
  static const char* const kQkv[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"};
  static const char* const kGateUp[] = {"mlp.gate_proj", "mlp.up_proj"};
  auto find = [&](const std::string& name) -> const LoraModule* {
    auto it = ad.modules.find(name);
    return it == ad.modules.end() ? nullptr : &it->second;
  };
  APUS_CHECK(!listener_ || std::filesystem::exists(std::filesystem::path(ad.dir) / "adapter_config.json"),
             "{}: with tensor parallelism adapters are loaded from their directory by every rank", ad.dir);
  const int64_t hd = config_.head_dim, q0 = shard_.head0 * hd, kv0 = shard_.kv_head0 * hd;
  const int64_t qkv_row0[] = {q0, kv0, kv0};
  for (int i = 0; i < config_.num_layers; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    LoraLayer& L = layers_[size_t(i)];
    for (size_t k = 0; k < 3; ++k) write(slot, p + kQkv[k], L.qkv[k], find(p + kQkv[k]), qkv_row0[k]);
    write(slot, p + "self_attn.o_proj", L.o[0], find(p + "self_attn.o_proj"), 0, q0);
    for (size_t k = 0; k < 2; ++k) write(slot, p + kGateUp[k], L.gate_up[k], find(p + kGateUp[k]), shard_.inter0);
    write(slot, p + "mlp.down_proj", L.down[0], find(p + "mlp.down_proj"), 0, shard_.inter0);
  }
  lm_heads_[size_t(slot)].reset();
  if (auto it = ad.saved.find("lm_head.weight"); it != ad.saved.end()) {
    Tensor w = it->second;
    if (!shard_.whole()) {  // the rank's vocabulary rows, padded like its lm_head
      Tensor part = host_tensor(w.dtype, {shard_.vocab_padded, w.shape[1]});
      std::memcpy(part.data, contiguous(w.rows_view(shard_.vocab0, shard_.vocab)).data,
                  size_t(shard_.vocab * w.shape[1]) * dtype_size(w.dtype));
      w = part;
    }
    Linear l;
    l.parts.push_back(LinearPart{backend_.upload(convert_float(w, backend_.weight_dtype(w.dtype))), {}});
    l.in_features = w.shape[1];
    l.out_features = w.shape[0];
    lm_heads_[size_t(slot)] = std::make_unique<Linear>(backend_.prepare_linear(std::move(l)));
  }
  if (listener_) listener_(slot, ad.dir);
}

void LoraSlots::clear(int slot) {
  for (int i = 0; i < config_.num_layers; ++i) {
    LoraLayer& L = layers_[size_t(i)];
    for (auto* parts : {&L.qkv, &L.o, &L.gate_up, &L.down})
      for (LoraPart& p : *parts) write(slot, "", p, nullptr);
  }
  lm_heads_[size_t(slot)].reset();
  if (listener_) listener_(slot, "");
}

}  // namespace apus
