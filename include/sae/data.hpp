// Data sets: IDX (MNIST, raw or gzip) and NumPy .npy, chosen by content; normalisation.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "sae/tensor.hpp"

namespace sae {

enum class SourceType { u8, f32, f64 };

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
// .npy versions 1.0/2.0/3.0; dtypes '<f4', '<f8', '|u1' (also '<u1'); C order only.
Array npy_read(const std::string& path);
// Chooses the reader by the file's first bytes (after gunzip if gzip-compressed): "\x93NUMPY"
// → npy, otherwise a valid IDX magic → idx; anything else is an error naming both formats.
Array array_read(const std::string& path);
// The same parsers on a whole file's bytes (already gunzipped); name is used in error messages.
Array idx_parse(const std::string& bytes, const std::string& name);
Array npy_parse(const std::string& bytes, const std::string& name);

// For tests and tools: writers of the same formats.
void idx_write_u8(const std::string& path, const uint8_t* data, const std::vector<int64_t>& shape,
                  bool gzip);

// Flattens all but the first axis: [N, a, b, ...] → [N, a·b·...]. A 1-d array becomes [N, 1].
Matrix<float> array_to_samples(Array&& a);

enum class Normalize { none, unit_range, ufldl };
Normalize normalize_parse(const std::string& name);  // throws listing the valid names
std::string normalize_name(Normalize n);

// none: unchanged. unit_range: uint8 data divided by 255; float data rescaled from its global
// [min, max] to [0, 1] (a constant array becomes 0). ufldl: subtract each sample's mean, clip to
// ±3 standard deviations of all values, rescale linearly to [0.1, 0.9].
void normalize_samples(Matrix<float>& X, Normalize mode, SourceType source);

// Throws "<what>: sample i, feature j is NaN/inf; ..." if any value is non-finite.
void check_finite(const Matrix<float>& X, const std::string& what);

}  // namespace sae
