#include "model/safetensors.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <source_location>

#include "core/error.h"

namespace apus {
namespace {

namespace fs = std::filesystem;

// Runs f, expecting an apus::Error whose message contains every one of `parts`.
void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts,
                  std::source_location loc = std::source_location::current()) {
  testing::ScopedTrace trace(loc.file_name(), int(loc.line()), "expect_error");
  try {
    f();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) {
      EXPECT_NE(msg.find(p), std::string::npos) << "\"" << p << "\" not in: " << msg;
    }
    return;
  }
  ADD_FAILURE() << "no apus::Error thrown";
}

template <typename T>
std::string bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

std::string bytes_at(const void* p, size_t n) {
  return std::string(static_cast<const char*>(p), n);
}

// Owns the data behind a list of TensorToWrite.
struct Sample {
  std::vector<float> f32{0.5f, -1.f, 2.f, 3.25f, -4.f, 5.f};
  std::vector<uint16_t> f16{f32_to_f16(1.f), f32_to_f16(-2.5f), f32_to_f16(0.f),
                            f32_to_f16(65504.f)};
  std::vector<uint16_t> bf16{f32_to_bf16(1.f), f32_to_bf16(-3.f), f32_to_bf16(1e30f),
                             f32_to_bf16(0.1f)};
  std::vector<int32_t> i32{-1, 0, 7};
  int64_t scalar = 42;

  std::vector<TensorToWrite> tensors() const {
    return {{"a.f32", DType::F32, {2, 3}, f32.data()},
            {"b.f16", DType::F16, {4}, f16.data()},
            {"c.bf16", DType::BF16, {2, 2}, bf16.data()},
            {"d.empty", DType::F32, {0, 5}, nullptr},
            {"e.i32", DType::I32, {3}, i32.data()},
            {"f.scalar", DType::I64, {}, &scalar}};
  }
};

void expect_same(const TensorEntry* e, const TensorToWrite& t) {
  ASSERT_NE(e, nullptr) << t.name;
  EXPECT_EQ(e->name, t.name);
  EXPECT_EQ(e->dtype, t.dtype) << t.name;
  EXPECT_EQ(e->shape, t.shape) << t.name;
  size_t n = dtype_size(t.dtype);
  for (int64_t d : t.shape) n *= size_t(d);
  ASSERT_EQ(e->nbytes, n) << t.name;
  EXPECT_EQ(bytes_at(e->data, n), bytes_at(t.data, n)) << t.name;
}

class SafetensorsTest : public testing::Test {
 protected:
  void SetUp() override {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / fmt::format("apus_safetensors_{}_{}_{:x}", ::getpid(),
                                                   info->name(), std::random_device{}());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  std::string write_bytes(const std::string& name, const std::string& bytes) const {
    std::ofstream(path(name), std::ios::binary) << bytes;
    return path(name);
  }

  // A safetensors file from raw parts; `len` replaces the true header length when given.
  std::string write_raw(const std::string& name, const std::string& header,
                        const std::string& data = "", std::optional<uint64_t> len = {}) const {
    uint64_t n = len.value_or(header.size());
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = char(n >> (8 * i));
    return write_bytes(name, out + header + data);
  }

  // Opening `header` + `data` must fail with a message naming the file and containing `parts`.
  void expect_bad(const std::string& header, const std::string& data,
                  std::vector<std::string> parts,
                  std::source_location loc = std::source_location::current()) const {
    std::string p = write_raw("bad.safetensors", header, data);
    parts.push_back(p);
    expect_error([&] { SafetensorsFile::open(p); }, parts, loc);
  }

  fs::path dir_;
};

TEST_F(SafetensorsTest, RoundTripKeepsDtypesShapesBytesAndMetadata) {
  Sample s;
  const auto tensors = s.tensors();
  const std::string p = path("rt.safetensors");
  write_safetensors(p, tensors, {{"format", "pt"}, {"note", "hello"}});

  std::ifstream in(p, std::ios::binary);
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = header_len << 8 | len[i];
  EXPECT_EQ(header_len % 8, 0u);
  EXPECT_EQ(fs::file_size(p), 8 + header_len + 24 + 8 + 8 + 0 + 12 + 8);  // no gaps

  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f->path(), p);
  EXPECT_EQ(f->metadata(),
            (std::map<std::string, std::string>{{"format", "pt"}, {"note", "hello"}}));
  ASSERT_EQ(f->entries().size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_EQ(f->entries()[i].name, tensors[i].name) << "entries are in data order";
    EXPECT_EQ(f->entries()[i].file, p);
    expect_same(f->find(tensors[i].name), tensors[i]);
  }
  EXPECT_EQ(f->find("missing"), nullptr);
}

TEST_F(SafetensorsTest, ZeroSizeTensorsNeverOverlap) {
  auto p = write_raw("z.safetensors",
                     R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                         "z": {"dtype": "BF16", "shape": [3, 0], "data_offsets": [8, 8]}})",
                     std::string(16, '\1'));
  auto f = SafetensorsFile::open(p);
  ASSERT_NE(f->find("z"), nullptr);
  EXPECT_EQ(f->find("z")->nbytes, 0u);
}

TEST_F(SafetensorsTest, SingleShardCheckpoint) {
  Sample s;
  const std::string dir = path("ck");
  write_checkpoint(dir, s.tensors(), 1 << 20);
  EXPECT_TRUE(fs::exists(fs::path(dir) / "model.safetensors"));
  EXPECT_FALSE(fs::exists(fs::path(dir) / "model.safetensors.index.json"));
  auto ck = Checkpoint::open(dir);
  EXPECT_EQ(ck.dir(), dir);
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"a.f32", "b.f16", "c.bf16", "d.empty", "e.i32",
                                                  "f.scalar"}));
  for (const auto& t : s.tensors()) expect_same(ck.find(t.name), t);
  EXPECT_EQ(ck.find("missing"), nullptr);
}

TEST_F(SafetensorsTest, ShardedCheckpointFindsEveryTensor) {
  std::vector<float> big(30), mid(16), small(4), other(8);
  for (size_t i = 0; i < big.size(); ++i) big[i] = float(i) * 1.5f;
  for (size_t i = 0; i < mid.size(); ++i) mid[i] = -float(i);
  small = {9, 8, 7, 6};
  for (size_t i = 0; i < other.size(); ++i) other[i] = float(i * i);
  const std::vector<TensorToWrite> tensors{{"z.first", DType::F32, {16}, mid.data()},
                                           {"y.second", DType::F32, {4}, small.data()},
                                           {"x.third", DType::F32, {4, 4}, mid.data()},
                                           {"w.fourth", DType::F32, {8}, other.data()},
                                           {"v.huge", DType::F32, {30}, big.data()}};
  const std::string dir = path("sharded");
  write_checkpoint(dir, tensors, 100);  // 64+16 | 64+32 | 120 (over the limit, on its own)

  auto shard = [](int i) { return fmt::format("model-{:05d}-of-00003.safetensors", i); };
  const std::vector<std::string> shard_of{shard(1), shard(1), shard(2), shard(2), shard(3)};
  EXPECT_FALSE(fs::exists(fs::path(dir) / "model.safetensors"));
  auto index = nlohmann::json::parse(std::ifstream(fs::path(dir) / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 296);
  ASSERT_EQ(index["weight_map"].size(), tensors.size());

  auto ck = Checkpoint::open(dir);
  for (size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_EQ(index["weight_map"][tensors[i].name], shard_of[i]);
    const TensorEntry* e = ck.find(tensors[i].name);
    expect_same(e, tensors[i]);
    if (e) {
      EXPECT_EQ(fs::path(e->file).filename(), shard_of[i]);
    }
  }
  EXPECT_EQ(ck.names(),
            (std::vector<std::string>{"v.huge", "w.fourth", "x.third", "y.second", "z.first"}));
}

TEST_F(SafetensorsTest, RewritingACheckpointRemovesTheOtherLayout) {
  Sample s;
  const fs::path dir = path("rewrite");
  write_checkpoint(dir.string(), s.tensors(), 1 << 20);
  write_checkpoint(dir.string(), s.tensors(), 16);
  EXPECT_FALSE(fs::exists(dir / "model.safetensors"));
  for (const auto& t : s.tensors()) expect_same(Checkpoint::open(dir.string()).find(t.name), t);
  write_checkpoint(dir.string(), s.tensors(), 1 << 20);
  EXPECT_FALSE(fs::exists(dir / "model.safetensors.index.json"));
}

TEST_F(SafetensorsTest, FallsBackToEverySafetensorsFile) {
  Sample s;
  auto t = s.tensors();
  write_safetensors(path("part-b.safetensors"), {t[0], t[1]});
  write_safetensors(path("part-a.safetensors"), {t[2], t[3], t[4], t[5]});
  write_bytes("README.md", "not a tensor file");
  auto ck = Checkpoint::open(dir_.string());
  EXPECT_EQ(ck.names().size(), t.size());
  for (const auto& x : t) expect_same(ck.find(x.name), x);
}

TEST_F(SafetensorsTest, TensorViewOutlivesCheckpoint) {
  Sample s;
  write_checkpoint(path("ck"), s.tensors(), 1 << 20);
  Tensor view;
  {
    auto ck = Checkpoint::open(path("ck"));
    view = ck.tensor(*ck.find("a.f32"));
  }
  EXPECT_NE(view.owner, nullptr);
  EXPECT_EQ(view.dtype, DType::F32);
  EXPECT_EQ(view.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_TRUE(view.contiguous());
  for (size_t i = 0; i < s.f32.size(); ++i) EXPECT_EQ(view.ptr<float>()[i], s.f32[i]);
}

TEST_F(SafetensorsTest, TensorRejectsEntryFromAnotherCheckpoint) {
  Sample s;
  write_checkpoint(path("one"), s.tensors(), 1 << 20);
  write_checkpoint(path("two"), s.tensors(), 1 << 20);
  auto one = Checkpoint::open(path("one"));
  auto two = Checkpoint::open(path("two"));
  expect_error([&] { one.tensor(*two.find("a.f32")); }, {path("one"), "'a.f32'", "not part of"});
}

// ---- malformed single files ----

TEST_F(SafetensorsTest, RejectsEmptyAndTinyFiles) {
  auto p = write_bytes("empty.safetensors", "");
  expect_error([&] { SafetensorsFile::open(p); }, {p, "0 bytes", "too small"});
  p = write_bytes("tiny.safetensors", "abcde");
  expect_error([&] { SafetensorsFile::open(p); }, {p, "5 bytes", "too small"});
  p = path("absent.safetensors");
  expect_error([&] { SafetensorsFile::open(p); }, {p, "cannot open"});
}

TEST_F(SafetensorsTest, RejectsBadHeaderLength) {
  auto p = write_raw("huge.safetensors", "{}", "", uint64_t(1) << 40);
  expect_error([&] { SafetensorsFile::open(p); }, {p, "1099511627776", "limit"});
  p = write_raw("short.safetensors", "{}", "", 200);
  expect_error([&] { SafetensorsFile::open(p); }, {p, "200", "truncated"});
}

TEST_F(SafetensorsTest, RejectsHeaderThatIsNotAJsonObject) {
  expect_bad(R"({"a": )", "", {"not valid JSON"});
  expect_bad("[1, 2]", "", {"must be a JSON object", "[1,2]"});
  expect_bad(R"({"model.embed": 5})", "", {"'model.embed'", "expected an object", "found 5"});
  expect_bad(R"({"__metadata__": {"k": 1}})", "", {"__metadata__", "'k'", "must be a string"});
}

TEST_F(SafetensorsTest, RejectsMissingFields) {
  expect_bad(R"({"model.embed": {"shape": [1], "data_offsets": [0, 4]}})", std::string(4, '\0'),
             {"'model.embed'", "missing \"dtype\""});
  expect_bad(R"({"model.embed": {"dtype": "F32", "data_offsets": [0, 4]}})", std::string(4, '\0'),
             {"'model.embed'", "missing \"shape\""});
  expect_bad(R"({"model.embed": {"dtype": "F32", "shape": [1]}})", std::string(4, '\0'),
             {"'model.embed'", "missing \"data_offsets\""});
}

TEST_F(SafetensorsTest, RejectsWrongJsonTypes) {
  const std::string data(8, '\0');
  expect_bad(R"({"t": {"dtype": 5, "shape": [2], "data_offsets": [0, 8]}})", data,
             {"'t'", "\"dtype\" must be a string", "found 5"});
  expect_bad(R"({"t": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}})", data,
             {"'t'", "\"shape\" must be an array of integers", "found \"2\""});
  expect_bad(R"({"t": {"dtype": "F32", "shape": [2, 1.5], "data_offsets": [0, 8]}})", data,
             {"'t'", "\"shape\" must be an array of integers", "1.5"});
  expect_bad(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8]}})", data,
             {"'t'", "\"data_offsets\" must be [begin, end]", "found [8]"});
  expect_bad(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}})", data,
             {"'t'", "\"data_offsets\" must be [begin, end]", "non-negative"});
}

TEST_F(SafetensorsTest, RejectsNegativeDimension) {
  expect_bad(R"({"model.embed": {"dtype": "F32", "shape": [2, -3], "data_offsets": [0, 0]}})", "",
             {"'model.embed'", "dimension 1", "[2,-3]", "negative"});
}

TEST_F(SafetensorsTest, RejectsUnsupportedDtypeListingSupportedOnes) {
  expect_bad(R"({"model.embed": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}})",
             std::string(1, '\0'),
             {"'model.embed'", "unsupported dtype \"F4\"", "F32, F16, BF16", "F8_E5M2"});
}

TEST_F(SafetensorsTest, RejectsTruncatedData) {
  expect_bad(R"({"model.embed": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})",
             std::string(8, '\0'), {"'model.embed'", "[0, 16]", "8 bytes", "truncated"});
}

TEST_F(SafetensorsTest, RejectsOffsetsThatDisagreeWithShape) {
  expect_bad(R"({"model.embed": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})",
             std::string(24, '\0'), {"'model.embed'", "hold 20 bytes", "F32[2, 3] needs 24 bytes"});
  expect_bad(R"({"model.embed": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})",
             std::string(8, '\0'), {"'model.embed'", "[8, 4]", "end before they begin"});
}

TEST_F(SafetensorsTest, RejectsOverlappingTensors) {
  expect_bad(R"({"first": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                 "second": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})",
             std::string(24, '\0'), {"'first'", "'second'", "[0, 16)", "[8, 24)", "overlap"});
}

// ---- malformed checkpoint directories ----

TEST_F(SafetensorsTest, RejectsDuplicateNamesAcrossShards) {
  Sample s;
  auto t = s.tensors();
  write_safetensors(path("one.safetensors"), {t[0], t[1]});
  write_safetensors(path("two.safetensors"), {t[1], t[2]});
  expect_error([&] { Checkpoint::open(dir_.string()); },
               {"'b.f16'", "one.safetensors", "two.safetensors"});
}

TEST_F(SafetensorsTest, RejectsMalformedIndex) {
  Sample s;
  auto t = s.tensors();
  write_safetensors(path("shard.safetensors"), {t[0]});
  const std::string index = path("model.safetensors.index.json");
  auto expect_index_error = [&](const std::string& text, std::vector<std::string> parts,
                                std::source_location loc = std::source_location::current()) {
    write_bytes("model.safetensors.index.json", text);
    parts.push_back(index);
    expect_error([&] { Checkpoint::open(dir_.string()); }, parts, loc);
  };
  expect_index_error("{\"weight_map\": ", {"not valid JSON"});
  expect_index_error(R"(["a.f32"])", {"expected a JSON object"});
  expect_index_error(R"({"metadata": {}})", {"\"weight_map\"", "found none"});
  expect_index_error(R"({"weight_map": {}})", {"non-empty \"weight_map\"", "found {}"});
  expect_index_error(R"({"weight_map": {"a.f32": 3}})",
                     {"'a.f32'", "must be a file name", "found 3"});
  expect_index_error(R"({"weight_map": {"a.f32": "gone.safetensors"}})",
                     {"'a.f32'", "'gone.safetensors'", "does not exist"});
  expect_index_error(R"({"weight_map": {"a.f32": "shard.safetensors",
                                         "b.f16": "shard.safetensors"}})",
                     {"'b.f16'", "shard.safetensors", "no such tensor"});
  write_bytes("model.safetensors.index.json", R"({"weight_map": {"a.f32": "shard.safetensors"}})");
  expect_same(Checkpoint::open(dir_.string()).find("a.f32"), t[0]);
}

TEST_F(SafetensorsTest, RejectsDirectoryWithoutWeights) {
  expect_error([&] { Checkpoint::open(dir_.string()); },
               {dir_.string(), "no model.safetensors", "*.safetensors"});
  const std::string missing = path("nowhere");
  expect_error([&] { Checkpoint::open(missing); }, {missing, "not a directory"});
}

TEST_F(SafetensorsTest, CorruptShardErrorNamesTheShard) {
  write_raw("model.safetensors",
            R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})");
  expect_error([&] { Checkpoint::open(dir_.string()); },
               {path("model.safetensors"), "'w'", "truncated"});
}

// ---- writer errors ----

TEST_F(SafetensorsTest, WriterReportsBadInputAndIoFailures) {
  float x = 1.f;
  const std::vector<TensorToWrite> dup{{"x", DType::F32, {1}, &x}, {"x", DType::F32, {1}, &x}};
  expect_error([&] { write_safetensors(path("dup.safetensors"), dup); },
               {"dup.safetensors", "'x'", "twice"});
  expect_error([&] { write_checkpoint(path("dupck"), dup, 1); }, {"dupck", "'x'", "twice"});
  expect_error([&] { write_safetensors(path("neg.safetensors"), {{"n", DType::F32, {-1}, &x}}); },
               {"neg.safetensors", "'n'", "invalid shape [-1]"});
  const std::string unwritable = path("no/such/dir/out.safetensors");
  expect_error([&] { write_safetensors(unwritable, {{"x", DType::F32, {1}, &x}}); },
               {unwritable, "cannot open"});
  EXPECT_FALSE(fs::exists(path("dup.safetensors")));
}

}  // namespace
}  // namespace apus
