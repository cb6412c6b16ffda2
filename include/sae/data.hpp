// Data sets: IDX (MNIST, raw or gzip) and NumPy .npy, chosen by content; normalisation.
#pragma once
#include <bit>
#include <cstdint>
#include <string>
#include <vector>

#include "sae/tensor.hpp"

namespace sae {

enum class SourceType { u8, f32, f64, f16, bf16 };

// An n-d array read from a file, values converted to float32.
struct Array {
    std::vector<int64_t> shape;
    std::vector<float> values;
    SourceType source = SourceType::f32;
    int64_t numel() const;
};

// IDX: 2 zero bytes, a type byte (only 0x08 = unsigned byte is accepted; others are rejected
// with a clear error), a dimension count, big-endian u32 sizes, then the data. Gzip is
// detected by its magic bytes (0x1f 0x8b), not by the extension.
Array idx_read(const std::string& path);
// .npy versions 1.0/2.0/3.0; dtypes '<f4', '<f8', '<f2', '|u1' (also '<u1'); C order only.
// dtype_hint (npy_parse, npy_parse_header, npy_read_header): with "bfloat16", a raw 2-byte void
// '<V2' / '|V2' (how NumPy saves an ml_dtypes bfloat16 array) is read as bfloat16; without it
// such a file is rejected with an error naming the option. Other hints are an error; the hint
// does not change how other dtypes are read.
Array npy_read(const std::string& path);
// Chooses the reader by the file's first bytes (after gunzip if gzip-compressed): "\x93NUMPY"
// → npy, otherwise a valid IDX magic → idx; anything else is an error naming both formats.
Array array_read(const std::string& path);
// The same parsers on a whole file's bytes (already gunzipped); name is used in error messages.
Array idx_parse(const std::string& bytes, const std::string& name);
Array npy_parse(const std::string& bytes, const std::string& name, const std::string& dtype_hint = "");

// --- .npy header without the data (for streaming and memory-mapping large files)
enum class NpyDtype { f32, f64, u8, f16, bf16 };
struct NpyHeader {
    std::vector<int64_t> shape;  // every dimension > 0
    NpyDtype dtype = NpyDtype::f32;
    std::string descr;           // as written in the file, e.g. "<f4" or "<V2"
    size_t item_size = 4;        // bytes per value
    uint64_t data_offset = 0;    // bytes from the start of the file to the first value
    int64_t numel = 0;
    uint64_t data_bytes() const { return uint64_t(numel) * item_size; }
};
// Parses the preamble and header dict from the first bytes of a .npy file; bytes must hold at
// least the whole header (more is ignored); file_size is the size of the whole file (only for
// the "header goes beyond the end" check and message). Validates exactly as npy_parse does,
// except the data size.
NpyHeader npy_parse_header(const std::string& bytes, uint64_t file_size, const std::string& name,
                           const std::string& dtype_hint = "");
// Reads only the header of path (no data, no gunzip: a gzip file is rejected with advice to
// gunzip it) and checks that the file size is exactly data_offset + data_bytes() (the same
// "truncated" / "trailing bytes" messages as npy_read). Must be a regular file.
NpyHeader npy_read_header(const std::string& path, const std::string& dtype_hint = "");

// Exact conversions of 16-bit floats to float32 (subnormals, infinities and NaN included).
inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = uint32_t(h >> 15) << 31, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0) {  // zero or subnormal: man * 2^-24, exact in float32
        const float v = float(man) * 0x1p-24f;
        return sign ? -v : v;
    }
    return std::bit_cast<float>(exp == 0x1f ? sign | 0x7f800000u | (man << 13)
                                            : sign | ((exp + (127 - 15)) << 23) | (man << 13));
}
inline float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }

// For tests and tools: writers of the same formats.
void idx_write_u8(const std::string& path, const uint8_t* data, const std::vector<int64_t>& shape,
                  bool gzip);

// Flattens all but the first axis: [N, a, b, ...] → [N, a·b·...]. A 1-d array becomes [N, 1].
Matrix<float> array_to_samples(Array&& a);

enum class Normalize { none, unit_range, ufldl };
Normalize normalize_parse(const std::string& name);  // throws listing the valid names
std::string normalize_name(Normalize n);

// Input normalisation with its statistics. They are fitted once, on the training data, saved
// with the model (cfg.json "normalize_stats") and applied as saved, so what a model computes for
// a sample depends on that sample alone:
//   none:       x' = x
//   unit_range: x' = (x − min) / (max − min), in double, rounded to float (0 when max = min);
//               min, max: those of the training data (uint8 data: 0 and 255, i.e. x / 255)
//   ufldl:      y = x − mean(row x) (per sample, in double, rounded to float), then
//               x' = (clamp(y, −clip, clip) / clip + 1) · 0.4 + 0.1 (0.5 when clip = 0);
//               clip: 3 × the population standard deviation of every y of the training data
struct Normalizer {
    Normalize mode = Normalize::none;
    double min = 0, max = 0;  // unit_range
    double clip = 0;          // ufldl
    // false: a model saved before the statistics were stored (they were re-derived from each
    // file read); only uint8 data under unit_range (÷ 255) can be read as it was meant.
    bool fitted = true;
    std::string origin;  // where it was read from, for messages (a cfg.json path)
};
Normalizer normalizer_fit(const Matrix<float>& X, Normalize mode, SourceType source);
// X [N, d] in place. Throws if the normaliser is unfitted (see `fitted`) unless the data is
// uint8 under unit_range; `source` is the element type X was read from.
void normalizer_apply(const Normalizer& n, Matrix<float>& X, SourceType source);

// normalizer_fit on X, then normalizer_apply: for data tools (patches) whose output is data.
void normalize_samples(Matrix<float>& X, Normalize mode, SourceType source);

// Throws "<what>: sample i, feature j is NaN/inf; ..." if any value is non-finite.
void check_finite(const Matrix<float>& X, const std::string& what);
void check_finite(const float* X, int64_t rows, int64_t cols, const std::string& what);  // X [rows, cols]

}  // namespace sae
