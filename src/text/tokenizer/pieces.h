// The text between normalization and the model: a buffer cut into pieces. A piece is either an added
// token already resolved to an id (left alone by every later stage) or text still to be normalized,
// split and tokenized. This is `tokenizers`' PreTokenizedString without per-byte offset alignments,
// which ids and decoding do not need.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace apus::tok {

struct Piece {
  uint32_t begin = 0, end = 0;  // byte range in PieceList::text (unused for added tokens)
  int32_t added_id = -1;        // >= 0: an added token, already tokenized
  // True when the piece starts where the input starts (tokenizers' offsets_original().0 == 0),
  // which Metaspace's prepend_scheme "first" asks.
  bool at_input_start = false;
  bool is_added() const { return added_id >= 0; }
};

struct PieceList {
  std::string text;
  std::vector<Piece> pieces;

  std::string_view view(const Piece& p) const { return std::string_view(text).substr(p.begin, p.end - p.begin); }
  void clear() {
    text.clear();
    pieces.clear();
  }
};

// Cuts every text piece of `pl` into sub-pieces of the same buffer. split(view, emit) calls
// emit(begin, end) with ranges relative to the piece, in order; empty ranges are dropped, as
// PreTokenizedString::split drops empty splits.
template <typename SplitFn>
void split_pieces(PieceList& pl, std::vector<Piece>& scratch, SplitFn&& split) {
  scratch.clear();
  for (const Piece& p : pl.pieces) {
    if (p.is_added()) {
      scratch.push_back(p);
      continue;
    }
    split(pl.view(p), [&](size_t b, size_t e) {
      if (b == e) return;
      Piece q;
      q.begin = p.begin + static_cast<uint32_t>(b);
      q.end = p.begin + static_cast<uint32_t>(e);
      q.at_input_start = p.at_input_start && b == 0;
      scratch.push_back(q);
    });
  }
  pl.pieces.swap(scratch);
}

// Rewrites every text piece of `pl` into a new buffer: transform(piece, view, out) appends the new
// text of the piece to `out`. Pieces that become empty are dropped.
template <typename TransformFn>
void transform_pieces(PieceList& pl, std::string& scratch, TransformFn&& transform) {
  scratch.clear();
  std::vector<Piece> kept;
  kept.reserve(pl.pieces.size());
  for (const Piece& p : pl.pieces) {
    if (p.is_added()) {
      kept.push_back(p);
      continue;
    }
    Piece q = p;
    q.begin = static_cast<uint32_t>(scratch.size());
    transform(p, pl.view(p), scratch);
    q.end = static_cast<uint32_t>(scratch.size());
    if (q.begin != q.end) kept.push_back(q);
  }
  pl.text.swap(scratch);
  pl.pieces.swap(kept);
}

}  // namespace apus::tok
