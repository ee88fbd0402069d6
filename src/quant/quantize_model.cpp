#include "quant/quantize_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <ostream>

#include "backend/backend.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "kv/kv_cache.h"
#include "model/config.h"
#include "model/load.h"
#include "model/safetensors.h"
#include "quant/awq.h"
#include "quant/calibration.h"
#include "quant/gptq_format.h"
#include "quant/quant_config.h"
#include "text/tokenizer/tokenizer.h"

namespace apus {

namespace fs = std::filesystem;
using Slot = DecoderModel::LinearSlot;

namespace {

// The linear layers of a llama-family decoder layer, in the order they run, with their checkpoint
// names under model.layers.N. (parts of one fused Linear share their input, hence one Hessian).
struct Module {
  Slot slot;
  const char* name;
  std::vector<const char*> parts;
};
const Module kModules[] = {{Slot::kQkv, "self_attn.q/k/v", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}},
                           {Slot::kO, "self_attn.o_proj", {"self_attn.o_proj"}},
                           {Slot::kGateUp, "mlp.gate/up", {"mlp.gate_proj", "mlp.up_proj"}},
                           {Slot::kDown, "mlp.down_proj", {"mlp.down_proj"}}};

Linear& linear_of(LayerWeights& l, Slot s) {
  switch (s) {
    case Slot::kQkv: return l.qkv;
    case Slot::kO: return l.o;
    case Slot::kGateUp: return l.gate_up;
    case Slot::kDown: break;
  }
  return l.down;
}

std::vector<float> to_float(const Tensor& w) {
  std::vector<float> out(size_t(w.rows() * w.cols()));
  for (int64_t r = 0; r < w.rows(); ++r)
    for (int64_t c = 0; c < w.cols(); ++c) out[size_t(r * w.cols() + c)] = get_float(w, r * w.row_stride + c);
  return out;
}

Tensor float_tensor(const std::vector<float>& v, int64_t rows, int64_t cols) {
  Tensor t = host_tensor(DType::F32, {rows, cols});
  std::memcpy(t.data, v.data(), v.size() * sizeof(float));
  return t;
}

// Calibration samples as prefill steps of at most ~kChunkTokens tokens each (one sample at least),
// with their sequences' blocks laid out one after another in one cache.
struct Chunk {
  StepBatch batch;
  Tensor hidden;  // the residual stream entering the current layer, F32 [T, hidden]
};

std::vector<Chunk> make_chunks(const std::vector<std::vector<int32_t>>& samples, int block_size, int* max_blocks_out) {
  constexpr int64_t kChunkTokens = 4096;
  std::vector<Chunk> chunks;
  int max_blocks = 0;
  for (size_t s = 0; s < samples.size();) {
    Chunk c;
    StepBatch& b = c.batch;
    b.q_start.push_back(0);
    int block = 0;
    std::vector<std::vector<int32_t>> tables;
    while (s < samples.size() && (b.tokens.empty() || int64_t(b.tokens.size() + samples[s].size()) <= kChunkTokens)) {
      const std::vector<int32_t>& t = samples[s++];
      const int n = int(t.size()), blocks = (n + block_size - 1) / block_size;
      std::vector<int32_t> table;
      for (int i = 0; i < blocks; ++i) table.push_back(block + i);
      for (int i = 0; i < n; ++i) b.slot_mapping.push_back((block + i / block_size) * block_size + i % block_size);
      block += blocks;
      b.tokens.insert(b.tokens.end(), t.begin(), t.end());
      b.q_start.push_back(int32_t(b.tokens.size()));
      b.ctx_len.push_back(n);
      tables.push_back(std::move(table));
    }
    for (const auto& t : tables) b.max_blocks = std::max(b.max_blocks, int(t.size()));
    for (const auto& t : tables) {
      b.block_table.insert(b.block_table.end(), t.begin(), t.end());
      b.block_table.resize(b.block_table.size() + size_t(b.max_blocks) - t.size(), 0);
    }
    max_blocks = std::max(max_blocks, block);
    chunks.push_back(std::move(c));
  }
  *max_blocks_out = max_blocks;
  return chunks;
}

// The quantized matrices, packed, by checkpoint weight name ("model.layers.0.self_attn.q_proj").
using Packed = std::map<std::string, QuantTensors>;

void check_model(const ModelConfig& c, const QuantGrid& grid, const std::string& dir) {
  APUS_CHECK(c.layout == WeightLayout::kLlama,
             "{}: export --quant_bits supports the llama-family layout (Llama, Qwen2, Qwen3, Mistral); {} keeps fused "
             "projections with other names", dir, c.architecture);
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {c.q_size(), H}, {c.kv_size(), H}, {H, c.q_size()}, {I, H}, {H, I}};
  for (const auto& [out, in] : shapes) {
    const int64_t gs = grid.group_size == -1 ? in : grid.group_size;
    APUS_CHECK(in % gs == 0 && in % 8 == 0 && out % 8 == 0,
               "{}: a linear layer [{}, {}] does not fit group_size {} (inputs must be a multiple of the group size; "
               "inputs and outputs multiples of 8)", dir, out, in, grid.group_size);
  }
}

// GPTQ (with `gptq`: Hessians from the calibration chunks, one pass per group of the layer as
// quantized so far) or RTN on decoder layer i; the matrices are replaced by their dequantized values.
void gptq_layer(DecoderModel& model, int i, bool gptq, std::vector<Chunk>& chunks, KvCache& cache,
                const QuantGrid& grid, const QuantConfig& qc, Backend& backend, ThreadPool& pool, Packed& packed,
                QuantizeResult& res, std::ostream& log) {
  for (const Module& m : kModules) {
    Linear& lin = linear_of(model.layer_weights(i), m.slot);
    Hessian h(lin.in_features);
    if (gptq) {
      const DecoderModel::LinearTap tap = [&](Slot s, const Tensor& x) {  // stop once the input is seen
        if (s != m.slot) return true;
        h.add(x, pool);
        return false;
      };
      for (Chunk& ch : chunks) {
        Tensor x = backend.alloc(DType::F32, ch.hidden.shape);
        std::memcpy(x.data, ch.hidden.data, ch.hidden.nbytes());
        model.forward_layer(ch.batch, cache, i, x, tap);
      }
    }
    for (size_t p = 0; p < m.parts.size(); ++p) {
      LinearPart& part = lin.parts[p];
      const int64_t out = part.weight.rows(), in = part.weight.cols();
      const std::vector<float> w = to_float(part.weight);
      LinearError e{i, m.parts[p], out, in, -1.0, -1.0};
      const QuantMatrix rtn = quantize_rtn(w.data(), out, in, grid);
      QuantMatrix q;
      if (gptq) {
        q = quantize_gptq(w.data(), out, in, h, grid, pool);
        e.quantized = relative_error(w.data(), q, h, pool);
        e.rtn = relative_error(w.data(), rtn, h, pool);
        log << fmt::format("layer {:3d} {:18s} [{:5d}, {:5d}]  gptq {:.5f}  rtn {:.5f}\n", i, m.parts[p], out, in,
                           e.quantized, e.rtn);
      } else {
        q = rtn;
      }
      res.errors.push_back(e);
      part.weight = float_tensor(q.dequantize(), out, in);  // what the next layers' inputs see
      packed[fmt::format("model.layers.{}.{}", i, m.parts[p])] = pack_quant(q, qc);
    }
    lin = backend.prepare_linear(std::move(lin));
  }
}

// AWQ on decoder layer i (AutoAWQ's order): the inputs of its four groups from one pass of the
// layer as it is; the scales of every group searched on them and applied (the norm before q/k/v
// and before gate/up, v_proj's rows before o_proj when there is one v row per o column (no GQA),
// up_proj's rows before down_proj, each divided by the scales its consumers' columns are
// multiplied by); clipping searched for every matrix but q and k; then RTN. The layer's matrices
// are replaced by their dequantized values and the changed norms and biases kept in `changed` (by
// checkpoint name) for the output. Differences from AutoAWQ, on purpose: the losses are those of
// the linear layers' own outputs (AutoAWQ measures q/k/v's on the attention block's output and
// gate/up's on the MLP's), and every search runs on one sample of at most kAwqRows tokens (AutoAWQ:
// all tokens for the scales, 512 for clipping).
constexpr int64_t kAwqRows = 512;

void awq_layer(DecoderModel& model, int i, std::vector<Chunk>& chunks, KvCache& cache, int64_t stride,
               const QuantGrid& grid, const QuantConfig& qc, Backend& backend, ThreadPool& pool, Packed& packed,
               std::map<std::string, Tensor>& changed, QuantizeResult& res, std::ostream& log) {
  const ModelConfig& c = model.config();
  LayerWeights& L = model.layer_weights(i);
  std::map<Slot, ActivationSample> xs;
  for (const Module& m : kModules) {
    const int64_t in = linear_of(L, m.slot).in_features;
    xs.emplace(m.slot, ActivationSample(in, stride, kAwqRows));
  }
  const DecoderModel::LinearTap tap = [&](Slot s, const Tensor& x) {
    xs.at(s).add(x);
    return true;
  };
  for (Chunk& ch : chunks) {
    Tensor x = backend.alloc(DType::F32, ch.hidden.shape);
    std::memcpy(x.data, ch.hidden.data, ch.hidden.nbytes());
    model.forward_layer(ch.batch, cache, i, x, tap);
  }
  // The float weights of every part, and each part's RTN error before anything changes.
  LayerFloats w;
  std::vector<LinearError> errs;
  for (const Module& m : kModules) {
    const Linear& lin = linear_of(L, m.slot);
    for (size_t p = 0; p < m.parts.size(); ++p) {
      const LinearPart& part = lin.parts[p];
      const int64_t out = part.weight.rows(), in = part.weight.cols();
      w[m.slot].push_back(to_float(part.weight));
      const std::vector<float> rtn = quantize_rtn(w[m.slot].back().data(), out, in, grid).dequantize();
      errs.push_back({i, m.parts[p], out, in, -1.0, sample_error(w[m.slot].back().data(), rtn.data(), out, xs.at(m.slot), pool)});
    }
  }
  auto refs = [&](Slot s) {
    std::vector<MatrixRef> r;
    for (const auto& v : w[s]) r.push_back({v.data(), int64_t(v.size()) / xs.at(s).cols()});
    return r;
  };
  const std::string pre = fmt::format("model.layers.{}.", i);
  const bool o_scaled = c.q_size() == c.kv_size();  // v's row r feeds o's column r only without GQA
  for (const Module& m : kModules) {
    if (m.slot == Slot::kO && !o_scaled) continue;
    const AwqScales s = awq_search_scales(refs(m.slot), xs.at(m.slot), grid, pool);
    log << fmt::format("layer {:3d} {:18s} scales {}: output mean squared error {:.4g} (rtn {:.4g})\n", i, m.name,
                       s.ratio < 0 ? std::string("none (no alpha beats s = 1)") : fmt::format("alpha {:.2f}", s.ratio),
                       s.loss, s.loss_rtn);
    if (s.ratio < 0) continue;
    xs.at(m.slot).divide_columns(s.s);
    if (!fold_awq_scales(L, m.slot, s.s, w)) continue;
    switch (m.slot) {  // the tensor that took the scales, for the checkpoint
      case Slot::kQkv: changed[pre + "input_layernorm.weight"] = L.attn_norm; break;
      case Slot::kGateUp: changed[pre + "post_attention_layernorm.weight"] = L.mlp_norm; break;
      case Slot::kO: changed[pre + "self_attn.v_proj.bias"] = L.qkv.parts[2].bias; break;
      case Slot::kDown: changed[pre + "mlp.up_proj.bias"] = L.gate_up.parts[1].bias; break;
    }
  }
  size_t e = 0;
  for (const Module& m : kModules) {
    Linear& lin = linear_of(L, m.slot);
    for (size_t p = 0; p < m.parts.size(); ++p, ++e) {
      LinearPart& part = lin.parts[p];
      const int64_t out = part.weight.rows(), in = part.weight.cols();
      const std::vector<float>& v = w[m.slot][p];
      std::vector<float> clipped = v;
      if (m.slot != Slot::kQkv || p == 2) awq_clip(clipped.data(), out, in, xs.at(m.slot), grid, pool);
      const QuantMatrix q = quantize_rtn(clipped.data(), out, in, grid);
      const std::vector<float> d = q.dequantize();
      errs[e].quantized = sample_error(v.data(), d.data(), out, xs.at(m.slot), pool);
      log << fmt::format("layer {:3d} {:18s} [{:5d}, {:5d}]  awq {:.5f}  rtn {:.5f}\n", i, m.parts[p], out, in,
                         errs[e].quantized, errs[e].rtn);
      part.weight = float_tensor(d, out, in);
      packed[pre + m.parts[p]] = pack_quant(q, qc);
    }
    lin = backend.prepare_linear(std::move(lin));
  }
  res.errors.insert(res.errors.end(), errs.begin(), errs.end());
}

}  // namespace

QuantizeResult quantize_model(const QuantizeOptions& o, std::ostream& log) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  APUS_CHECK(o.method == "gptq" || o.method == "awq" || o.method == "rtn",
             "--quant_method {} is not supported (supported: gptq, awq, rtn)", o.method);
  APUS_CHECK(o.grid.bits == 4 || o.grid.bits == 8, "--quant_bits {} is not supported (supported: 4, 8)", o.grid.bits);
  APUS_CHECK(!(o.method != "gptq" && o.grid.desc_act), "--desc_act needs --quant_method gptq (it orders columns by H)");
  const bool awq = o.method == "awq";
  APUS_CHECK(!awq || (o.grid.bits == 4 && !o.grid.sym),
             "--quant_method awq writes AutoAWQ's GEMM layout: 4 bits with zero points (not --quant_bits {}{})",
             o.grid.bits, o.grid.sym ? ", --sym true" : "");
  QuantConfig qc;
  qc.method = awq ? QuantMethod::kAwq : QuantMethod::kGptq;
  qc.bits = o.grid.bits;
  qc.group_size = o.grid.group_size;
  qc.sym = o.grid.sym;
  qc.desc_act = o.grid.desc_act;
  qc.zeros_minus_one = !awq;
  nlohmann::json qjson = quant_config_json(qc);
  parse_quant_config({{"quantization_config", qjson}}, "--group_size/--quant_bits");  // the loader's rules
  const ModelConfig config = load_model_config(o.model_dir);
  check_model(config, o.grid, o.model_dir);
  APUS_CHECK(!config.quant, "{}/config.json: the model is already quantized ({})", o.model_dir,
             config.quant ? config.quant->describe() : "");
  std::string out_dir = o.output_dir;
  if (out_dir.empty())
    out_dir = fs::path(o.model_dir).lexically_normal().string() + fmt::format("-{}-int{}", awq ? "awq" : "gptq", o.grid.bits);
  while (out_dir.size() > 1 && out_dir.back() == '/') out_dir.pop_back();
  std::error_code ec;
  APUS_CHECK(!fs::equivalent(out_dir, o.model_dir, ec), "--output_dir {} is the input directory", out_dir);

  const int threads = std::max(1, o.num_threads);
  ThreadPool pool(threads);
  std::unique_ptr<Backend> backend = make_cpu_backend(threads);
  LoadOptions lo;
  lo.model_dir = o.model_dir;
  lo.num_threads = threads;
  std::unique_ptr<DecoderModel> model = load_model(lo, *backend);
  const ModelConfig& c = model->config();

  QuantizeResult res;
  res.output_dir = out_dir;
  const bool gptq = o.method == "gptq", calibrate = gptq || awq;
  std::vector<Chunk> chunks;
  KvCache cache;
  if (calibrate) {
    const std::unique_ptr<Tokenizer> tok = Tokenizer::load(o.model_dir);
    const std::vector<std::string> texts =
        o.dataset.empty() ? builtin_calibration_texts() : read_calibration_jsonl(o.dataset);
    const std::vector<std::vector<int32_t>> samples = calibration_samples(*tok, texts, o.n_samples, o.seqlen);
    for (const auto& s : samples) res.calibration_tokens += int64_t(s.size());
    res.calibration_samples = int(samples.size());
    log << fmt::format("calibration: {} samples, {} tokens from {}{}\n", samples.size(), res.calibration_tokens,
                       o.dataset.empty() ? "the built-in text" : o.dataset,
                       int(samples.size()) < o.n_samples ? fmt::format(" (fewer than --quant_n_samples {}: the text is short)", o.n_samples)
                                                         : "");
    int max_blocks = 0;
    constexpr int kBlock = 16;
    chunks = make_chunks(samples, kBlock, &max_blocks);
    cache = KvCache::create(*backend, c, max_blocks, kBlock);
    for (Chunk& ch : chunks) {
      ch.hidden = backend->alloc(DType::F32, {int64_t(ch.batch.tokens.size()), c.hidden_size});
      model->embed(ch.batch, ch.hidden);
    }
  }

  Packed packed;
  std::map<std::string, Tensor> changed;  // AWQ: norms and biases with scales folded in, by name
  const int64_t awq_stride = (res.calibration_tokens + kAwqRows - 1) / kAwqRows;
  for (int i = 0; i < c.num_layers; ++i) {
    if (awq) awq_layer(*model, i, chunks, cache, awq_stride, o.grid, qc, *backend, pool, packed, changed, res, log);
    else gptq_layer(*model, i, gptq, chunks, cache, o.grid, qc, *backend, pool, packed, res, log);
    if (calibrate) {
      for (Chunk& ch : chunks) model->forward_layer(ch.batch, cache, i, ch.hidden, {});
      log << fmt::format("layer {} of {} quantized ({:.1f} s)\n", i + 1, c.num_layers,
                         std::chrono::duration<double>(clock::now() - t0).count());
    }
  }
  if (calibrate) {
    double g = 0.0, r = 0.0;
    for (const LinearError& e : res.errors) g += e.quantized, r += e.rtn;
    log << fmt::format("mean relative error ||WX - QX|| / ||WX|| over {} matrices: {} {:.5f}, rtn {:.5f}\n",
                       res.errors.size(), o.method, g / double(res.errors.size()), r / double(res.errors.size()));
  }

  // The checkpoint: every tensor of the input, with each quantized W replaced by its GPTQ / AWQ
  // tensors and (AWQ) the norms and biases that took the scales, in their dtype.
  const Checkpoint ckpt = Checkpoint::open(o.model_dir);
  std::vector<TensorToWrite> tensors;
  for (const std::string& name : ckpt.names()) {
    const TensorEntry& e = *ckpt.find(name);
    const std::string module = name.ends_with(".weight") ? name.substr(0, name.size() - 7) : "";
    auto it = packed.find(module);
    if (it == packed.end()) {
      auto ch = changed.find(name);
      if (ch != changed.end())
        tensors.push_back({name, e.dtype, e.shape, nullptr, [t = ch->second, dt = e.dtype] { return convert_float(t, dt); }});
      else
        tensors.push_back({name, e.dtype, e.shape, e.data});
      continue;
    }
    const QuantTensors& t = it->second;
    for (const auto& [suffix, tensor] :
         {std::pair<const char*, const Tensor*>{".qweight", &t.qweight}, {".qzeros", &t.qzeros},
          {".scales", &t.scales}, {".g_idx", &t.g_idx}})
      if (!tensor->empty()) tensors.push_back({module + suffix, tensor->dtype, tensor->shape, tensor->data});
  }
  fs::create_directories(out_dir, ec);
  APUS_CHECK(!ec, "{}: cannot create directory: {}", out_dir, ec.message());
  write_checkpoint(out_dir, tensors, o.max_shard_bytes);
  copy_side_files(o.model_dir, out_dir);
  nlohmann::ordered_json cfg;
  {
    std::ifstream in(fs::path(o.model_dir) / "config.json");
    cfg = nlohmann::ordered_json::parse(in);
  }
  nlohmann::ordered_json qj = nlohmann::ordered_json::parse(qjson.dump());
  if (awq) {
    qj["modules_to_not_convert"] = nullptr;  // AutoAWQ writes it (lm_head and embeddings stay float anyway)
  } else {
    qj["damp_percent"] = o.grid.damp_percent;
    qj["true_sequential"] = true;
    qj["static_groups"] = false;
    qj["meta"] = {{"quantizer", {gptq ? "apus:gptq" : "apus:rtn"}}};  // GPTQModel's place for the tool
  }
  cfg["quantization_config"] = qj;
  std::ofstream(fs::path(out_dir) / "config.json") << cfg.dump(2) << "\n";
  log << fmt::format("wrote {} ({:.1f} s)\n", out_dir, std::chrono::duration<double>(clock::now() - t0).count());
  return res;
}

}  // namespace apus
