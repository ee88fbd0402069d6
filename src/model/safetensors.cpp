#include "model/safetensors.h"

#include <fcntl.h>
#include <fmt/ranges.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>
#include <utility>

#include "core/error.h"

namespace apus {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The reference implementation's limit: a larger length means a corrupt or foreign file.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

std::string supported_dtypes() {
  std::string s;
  for (int i = 0; i <= int(DType::F8E5M2); ++i) {  // F8E5M2 is the last enumerator
    if (i) s += ", ";
    s += dtype_name(DType(i));
  }
  return s;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// A JSON value as written in the file, cut short so that one bad value cannot flood the message.
std::string brief(const json& v) {
  std::string s = v.dump();
  return s.size() <= 60 ? s : s.substr(0, 57) + "...";
}

// False when a dimension is negative or the byte size overflows size_t.
bool checked_nbytes(const std::vector<int64_t>& shape, DType dtype, size_t* out) {
  size_t n = dtype_size(dtype);
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, size_t(d), &n)) return false;
  }
  *out = n;
  return true;
}

TensorEntry parse_entry(const std::string& path, const std::string& name, const json& v,
                        const char* data, size_t data_len) {
  const std::string at = fmt::format("{}: tensor '{}'", path, name);  // every message starts so
  APUS_CHECK(v.is_object(), "{}: expected an object with dtype, shape and data_offsets, found {}",
             at, brief(v));
  auto field = [&](const char* key) -> const json& {
    auto it = v.find(key);
    APUS_CHECK(it != v.end(), "{}: missing \"{}\"", at, key);
    return *it;
  };
  TensorEntry e{.name = name, .dtype = {}, .shape = {}, .data = {}, .nbytes = 0, .file = path};

  const json& dtype = field("dtype");
  APUS_CHECK(dtype.is_string(), "{}: \"dtype\" must be a string, found {}", at, brief(dtype));
  APUS_CHECK(parse_dtype(dtype.get<std::string>(), &e.dtype),
             "{}: unsupported dtype {} (supported: {})", at, brief(dtype), supported_dtypes());

  const json& shape = field("shape");
  APUS_CHECK(shape.is_array(), "{}: \"shape\" must be an array of integers, found {}", at,
             brief(shape));
  for (size_t i = 0; i < shape.size(); ++i) {
    const json& d = shape[i];
    APUS_CHECK(d.is_number_integer(), "{}: \"shape\" must be an array of integers, found {} in {}",
               at, brief(d), brief(shape));
    // nlohmann stores every non-negative integer as unsigned, so signed means negative.
    APUS_CHECK(d.is_number_unsigned() && d.get<uint64_t>() <= uint64_t(INT64_MAX),
               "{}: dimension {} of shape {} is {}", at, i, brief(shape),
               d.is_number_unsigned() ? "too large" : "negative");
    e.shape.push_back(d.get<int64_t>());
  }

  const json& offsets = field("data_offsets");
  APUS_CHECK(offsets.is_array() && offsets.size() == 2 && offsets[0].is_number_unsigned() &&
                 offsets[1].is_number_unsigned(),
             "{}: \"data_offsets\" must be [begin, end] with non-negative integers, found {}", at,
             brief(offsets));
  uint64_t begin = offsets[0].get<uint64_t>();
  uint64_t end = offsets[1].get<uint64_t>();
  APUS_CHECK(begin <= end, "{}: data_offsets [{}, {}] end before they begin", at, begin, end);
  APUS_CHECK(end <= data_len,
             "{}: data_offsets [{}, {}] run past the end of the data region ({} bytes); the file "
             "is truncated", at, begin, end, data_len);
  APUS_CHECK(checked_nbytes(e.shape, e.dtype, &e.nbytes), "{}: shape {} is too large", at,
             shape_str(e.shape));
  APUS_CHECK(end - begin == e.nbytes,
             "{}: data_offsets [{}, {}] hold {} bytes, but {}{} needs {} bytes", at, begin, end,
             end - begin, dtype_name(e.dtype), shape_str(e.shape), e.nbytes);
  e.data = data + begin;
  return e;
}

// Closes the descriptor on every exit path; the mapping stays valid after close.
struct FdGuard {
  int fd;
  ~FdGuard() {
    if (fd >= 0) ::close(fd);
  }
};

// Writes to `path`.tmp and renames it over `path` on commit: a reader may still have the old
// file mmap'd, and truncating that file in place would SIGBUS the reader.
class AtomicWriter {
 public:
  explicit AtomicWriter(std::string path)
      : path_(std::move(path)), tmp_(path_ + ".tmp"), f_(std::fopen(tmp_.c_str(), "wb")) {
    APUS_CHECK(f_ != nullptr, "{}: cannot open {} for writing: {}", path_, tmp_,
               std::strerror(errno));
  }
  AtomicWriter(const AtomicWriter&) = delete;
  AtomicWriter& operator=(const AtomicWriter&) = delete;
  ~AtomicWriter() {
    if (f_) {
      std::fclose(f_);
      std::remove(tmp_.c_str());
    }
  }

  void put(const void* p, size_t n) {
    APUS_CHECK(n == 0 || std::fwrite(p, 1, n, f_) == n, "{}: write failed: {}", path_,
               std::strerror(errno));
  }

  void commit() {
    int rc = std::fclose(std::exchange(f_, nullptr));
    if (rc == 0) rc = std::rename(tmp_.c_str(), path_.c_str());
    if (rc != 0) {
      int err = errno;
      std::remove(tmp_.c_str());
      fail("{}: write failed: {}", path_, std::strerror(err));
    }
  }

 private:
  std::string path_;
  std::string tmp_;
  std::FILE* f_;
};

// Tensor name -> shard file name, as listed in a model.safetensors.index.json.
std::map<std::string, std::string> read_weight_map(const std::string& index_path) {
  std::ifstream in(index_path, std::ios::binary);
  APUS_CHECK(in.good(), "{}: cannot open: {}", index_path, std::strerror(errno));
  json root;
  try {
    root = json::parse(in);
  } catch (const json::parse_error& e) {
    fail("{}: not valid JSON: {}", index_path, e.what());
  }
  APUS_CHECK(root.is_object(), "{}: expected a JSON object, found {}", index_path, brief(root));
  auto wm = root.find("weight_map");
  APUS_CHECK(wm != root.end() && wm->is_object() && !wm->empty(),
             "{}: expected a non-empty \"weight_map\" object of tensor name -> file, found {}",
             index_path, wm == root.end() ? "none" : brief(*wm));
  std::map<std::string, std::string> map;
  for (const auto& [name, file] : wm->items()) {
    APUS_CHECK(file.is_string(), "{}: weight_map entry for '{}' must be a file name, found {}",
               index_path, name, brief(file));
    map.emplace(name, file.get<std::string>());
  }
  return map;
}

}  // namespace

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  // The object exists before mmap so that its destructor unmaps if validation throws.
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile);
  f->path_ = path;
  FdGuard fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  APUS_CHECK(fd.fd >= 0, "{}: cannot open: {}", path, std::strerror(errno));
  struct stat st {};
  APUS_CHECK(::fstat(fd.fd, &st) == 0, "{}: cannot stat: {}", path, std::strerror(errno));
  APUS_CHECK(S_ISREG(st.st_mode), "{}: not a regular file", path);
  size_t size = size_t(st.st_size);
  // Also keeps mmap from being asked for zero bytes, which it rejects.
  APUS_CHECK(size >= 8, "{}: file is {} bytes, too small for the 8-byte header length", path,
             size);
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.fd, 0);
  APUS_CHECK(p != MAP_FAILED, "{}: mmap of {} bytes failed: {}", path, size,
             std::strerror(errno));
  f->map_ = p;
  f->map_len_ = size;

  const auto* bytes = static_cast<const unsigned char*>(p);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = header_len << 8 | bytes[i];  // little-endian
  APUS_CHECK(header_len <= kMaxHeaderBytes,
             "{}: header length is {} bytes, more than the {} byte limit; not a safetensors file?",
             path, header_len, kMaxHeaderBytes);
  APUS_CHECK(header_len <= size - 8,
             "{}: header length is {} bytes but only {} bytes follow it; the file is truncated",
             path, header_len, size - 8);
  f->parse_header(static_cast<const char*>(p) + 8, size_t(header_len), size - 8 - header_len);
  return f;
}

void SafetensorsFile::parse_header(const char* header, size_t header_len, size_t data_len) {
  json root;
  try {
    root = json::parse(header, header + header_len);
  } catch (const json::parse_error& e) {
    fail("{}: header is not valid JSON: {}", path_, e.what());
  }
  APUS_CHECK(root.is_object(), "{}: header must be a JSON object, found {}", path_, brief(root));

  const char* data = header + header_len;
  for (const auto& [key, value] : root.items()) {
    if (key != "__metadata__") {
      entries_.push_back(parse_entry(path_, key, value, data, data_len));
      continue;
    }
    APUS_CHECK(value.is_object(), "{}: \"__metadata__\" must be an object of strings, found {}",
               path_, brief(value));
    for (const auto& [k, s] : value.items()) {
      APUS_CHECK(s.is_string(), "{}: \"__metadata__\" value for '{}' must be a string, found {}",
                 path_, k, brief(s));
      metadata_.emplace(k, s.get<std::string>());
    }
  }

  auto offset = [&](const TensorEntry& e) {
    return size_t(static_cast<const char*>(e.data) - data);
  };
  std::sort(entries_.begin(), entries_.end(), [&](const TensorEntry& a, const TensorEntry& b) {
    return std::forward_as_tuple(offset(a), a.nbytes, a.name) <
           std::forward_as_tuple(offset(b), b.nbytes, b.name);
  });
  // Sorted by start, so a range overlaps an earlier one iff it overlaps the previous non-empty one.
  const TensorEntry* prev = nullptr;
  for (const auto& e : entries_) {
    if (e.nbytes == 0) continue;  // an empty range overlaps nothing
    APUS_CHECK(!prev || offset(*prev) + prev->nbytes <= offset(e),
               "{}: tensors '{}' (bytes [{}, {})) and '{}' (bytes [{}, {})) overlap", path_,
               prev->name, offset(*prev), offset(*prev) + prev->nbytes, e.name, offset(e),
               offset(e) + e.nbytes);
    prev = &e;
  }
  for (size_t i = 0; i < entries_.size(); ++i) by_name_.emplace(entries_[i].name, i);
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_len_);
}

const TensorEntry* SafetensorsFile::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

Checkpoint Checkpoint::open(const std::string& dir) {
  std::error_code ec;
  APUS_CHECK(fs::is_directory(dir, ec), "{}: not a directory", dir);
  Checkpoint ck;
  ck.dir_ = dir;
  const fs::path root(dir);

  // Same precedence as transformers: a single file wins over an index.
  if (fs::is_regular_file(root / kSingleFile, ec)) {
    ck.add_file(SafetensorsFile::open((root / kSingleFile).string()));
  } else if (fs::is_regular_file(root / kIndexFile, ec)) {
    const std::string index = (root / kIndexFile).string();
    std::map<std::string, std::shared_ptr<SafetensorsFile>> shards;
    for (const auto& [name, file] : read_weight_map(index)) {
      auto it = shards.find(file);
      if (it == shards.end()) {
        APUS_CHECK(fs::is_regular_file(root / file, ec),
                   "{}: weight_map puts tensor '{}' in '{}', which does not exist in {}", index,
                   name, file, dir);
        auto shard = SafetensorsFile::open((root / file).string());
        ck.add_file(shard);
        it = shards.emplace(file, std::move(shard)).first;
      }
      APUS_CHECK(it->second->find(name) != nullptr,
                 "{}: weight_map puts tensor '{}' in '{}', but {} has no such tensor", index, name,
                 file, it->second->path());
    }
  } else {
    std::vector<std::string> paths;
    fs::directory_iterator it(root, ec);
    for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
      if (it->path().extension() == ".safetensors" && it->is_regular_file(ec)) {
        paths.push_back(it->path().string());
      }
    }
    APUS_CHECK(!ec, "{}: cannot list directory: {}", dir, ec.message());
    APUS_CHECK(!paths.empty(), "{}: found no {}, {} or other *.safetensors file", dir, kSingleFile,
               kIndexFile);
    std::sort(paths.begin(), paths.end());
    for (const auto& p : paths) ck.add_file(SafetensorsFile::open(p));
  }
  return ck;
}

void Checkpoint::add_file(std::shared_ptr<SafetensorsFile> file) {
  for (const auto& e : file->entries()) {
    auto [it, inserted] = index_.try_emplace(e.name, Slot{&e, files_.size()});
    APUS_CHECK(inserted, "{}: tensor '{}' appears in both {} and {}", dir_, e.name,
               it->second.entry->file, e.file);
  }
  files_.push_back(std::move(file));
}

const TensorEntry* Checkpoint::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second.entry;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, slot] : index_) out.push_back(name);
  return out;
}

Tensor Checkpoint::tensor(const TensorEntry& e) const {
  auto it = index_.find(e.name);
  APUS_CHECK(it != index_.end() && it->second.entry == &e,
             "{}: tensor '{}' from {} is not part of this checkpoint", dir_, e.name, e.file);
  // Tensor::data is non-const for the sake of writable buffers; this one is mapped read-only.
  void* data = const_cast<void*>(e.data);
  return make_view(data, e.dtype, e.shape, Device::CPU,
                   std::shared_ptr<void>(files_[it->second.file], data));
}

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<size_t> sizes;
  size_t offset = 0;
  for (const auto& t : tensors) {
    size_t n = 0;
    APUS_CHECK(!t.name.empty() && t.name != "__metadata__", "{}: tensor name '{}' is reserved",
               path, t.name);
    APUS_CHECK(!header.contains(t.name), "{}: tensor '{}' given twice", path, t.name);
    APUS_CHECK(checked_nbytes(t.shape, t.dtype, &n), "{}: tensor '{}': invalid shape {}", path,
               t.name, shape_str(t.shape));
    APUS_CHECK(n == 0 || t.data != nullptr || t.produce, "{}: tensor '{}' has no data", path, t.name);
    header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + n}}};
    offset += n;
    sizes.push_back(n);
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const json::type_error& e) {  // names or metadata that are not UTF-8
    fail("{}: cannot encode header: {}", path, e.what());
  }
  // Padding starts the data region 8-byte aligned, so mapped tensors are as aligned as offsets.
  text.append((8 - text.size() % 8) % 8, ' ');
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(text.size() >> (8 * i));

  AtomicWriter out(path);
  out.put(len, sizeof len);
  out.put(text.data(), text.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!tensors[i].produce) {
      out.put(tensors[i].data, sizes[i]);
      continue;
    }
    const Tensor made = tensors[i].produce();
    APUS_CHECK(made.dtype == tensors[i].dtype && made.nbytes() == sizes[i] && made.contiguous(),
               "{}: tensor '{}' was produced as {}, not as announced", path, tensors[i].name, made.describe());
    out.put(made.data, sizes[i]);
  }
  out.commit();
}

void write_checkpoint(const std::string& dir, const std::vector<TensorToWrite>& tensors,
                      size_t max_shard_bytes) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  APUS_CHECK(!ec, "{}: cannot create directory: {}", dir, ec.message());

  // Greedy in the given order, so that shards follow the caller's (usually layer) order.
  std::vector<std::vector<TensorToWrite>> shards(1);
  std::set<std::string_view> seen;
  size_t shard_bytes = 0;
  size_t total = 0;
  for (const auto& t : tensors) {
    size_t n = 0;
    APUS_CHECK(seen.insert(t.name).second, "{}: tensor '{}' given twice", dir, t.name);
    APUS_CHECK(checked_nbytes(t.shape, t.dtype, &n), "{}: tensor '{}': invalid shape {}", dir,
               t.name, shape_str(t.shape));
    if (!shards.back().empty() && shard_bytes + n > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(t);
    shard_bytes += n;
    total += n;
  }

  // Each layout's entry point is removed when writing the other: loaders differ in which one they
  // prefer, and a stale one would shadow the new weights.
  const fs::path root(dir);
  if (shards.size() == 1) {
    write_safetensors((root / kSingleFile).string(), shards[0]);
    fs::remove(root / kIndexFile, ec);
    return;
  }
  json weight_map = json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    std::string name = fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size());
    write_safetensors((root / name).string(), shards[i]);
    for (const auto& t : shards[i]) weight_map[t.name] = name;
  }
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  std::string text = index.dump(2) + "\n";
  AtomicWriter out((root / kIndexFile).string());
  out.put(text.data(), text.size());
  out.commit();
  fs::remove(root / kSingleFile, ec);
}

void copy_side_files(const std::string& from, const std::string& to) {
  namespace fs = std::filesystem;
  for (const auto& f : fs::directory_iterator(from)) {
    if (!f.is_regular_file()) continue;
    const std::string name = f.path().filename().string(), ext = f.path().extension().string();
    if (name == "adapter_config.json" || name == "model.safetensors.index.json" || name == "README.md") continue;
    if (ext == ".json" || ext == ".txt" || ext == ".model" || ext == ".jinja" || ext == ".tiktoken" || ext == ".py")
      fs::copy_file(f.path(), fs::path(to) / name, fs::copy_options::overwrite_existing);
  }
}

}  // namespace apus
