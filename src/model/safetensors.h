// Reading and writing Hugging Face safetensors checkpoints. Files are mmap'd read-only and every
// tensor is a zero-copy view into the mapping; all validation happens at open time so that later
// code can trust shapes, dtypes and byte ranges without re-checking.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"

namespace apus {

struct TensorEntry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;  // points into the read-only mmap
  size_t nbytes;
  std::string file;  // path of the file it came from
};

class SafetensorsFile {
 public:
  // mmap (PROT_READ, MAP_PRIVATE) and validate; throws apus::Error naming the path (and tensor)
  // on any problem.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorEntry>& entries() const { return entries_; }  // sorted by data offset
  const TensorEntry* find(std::string_view name) const;                 // nullptr if absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  void parse_header(const char* header, size_t header_len, size_t data_len);

  std::string path_;
  void* map_ = nullptr;
  size_t map_len_ = 0;
  std::vector<TensorEntry> entries_;
  std::map<std::string, size_t, std::less<>> by_name_;  // name -> index into entries_
  std::map<std::string, std::string> metadata_;
};

// A model directory: model.safetensors, or model.safetensors.index.json ({"weight_map": {tensor:
// file}}) with its shards, or (fallback) every *.safetensors file in the directory.
class Checkpoint {
 public:
  static Checkpoint open(const std::string& dir);
  const std::string& dir() const { return dir_; }
  const TensorEntry* find(std::string_view name) const;  // nullptr if absent
  std::vector<std::string> names() const;                // sorted
  // A Tensor view of the entry (no copy); its `owner` keeps the file mapped. The memory is
  // read-only: writing through the view faults.
  Tensor tensor(const TensorEntry& e) const;

 private:
  void add_file(std::shared_ptr<SafetensorsFile> file);

  struct Slot {
    const TensorEntry* entry;
    size_t file;  // index into files_
  };
  std::string dir_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, Slot, std::less<>> index_;
};

struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
  // Instead of `data`: makes the bytes when the writer reaches the tensor (a host tensor of this
  // dtype and shape), so that a converter holds one tensor at a time (export --merge_lora).
  std::function<Tensor()> produce = {};
};

// Writes one safetensors file (header padded with spaces to a multiple of 8 bytes, tensors in the
// given order, no gaps). Throws apus::Error naming the path on I/O failure.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes shards of at most max_shard_bytes each (a larger tensor gets a shard of its own) as
// model-0000i-of-0000n.safetensors plus model.safetensors.index.json, or a single
// model.safetensors when everything fits in one shard.
void write_checkpoint(const std::string& dir, const std::vector<TensorToWrite>& tensors,
                      size_t max_shard_bytes);

// Copies the files of model directory `from` that are not weights (config.json, generation config,
// tokenizer files, chat templates, remote code; not adapter_config.json, the safetensors index or
// README.md) into `to`, replacing files of the same name. For converters that write a checkpoint.
void copy_side_files(const std::string& from, const std::string& to);

}  // namespace apus
