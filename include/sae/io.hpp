// Files out and in: atomic writes, safetensors, .npy writing.
// Every reader validates sizes against the file before allocating and throws sae::Error with
// one line: "<path>: <what is wrong>; <what to do>".
#pragma once
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace sae {

// Writes to "<path>.tmp-<pid>", then flush + fsync + rename over path + fsync of the directory.
// If commit() is never called (an exception, a crash), path keeps its previous contents and
// the destructor removes the temporary file.
class AtomicFile {
public:
    explicit AtomicFile(const std::string& path);  // throws if the directory is not writable
    ~AtomicFile();
    AtomicFile(const AtomicFile&) = delete;
    AtomicFile& operator=(const AtomicFile&) = delete;
    void write(const void* data, size_t n);  // throws on a short write (e.g. disk full)
    void write(const std::string& s) { write(s.data(), s.size()); }
    void commit();
    const std::string& path() const { return path_; }

private:
    std::string path_, tmp_;
    std::FILE* f_ = nullptr;
    bool committed_ = false;
};

// Whole-file helpers built on AtomicFile.
void write_file_atomic(const std::string& path, const std::string& contents);
std::string read_file(const std::string& path);  // throws naming the path if unreadable

// Throws a clear error if dir cannot be created or written (checked by creating and removing
// a probe file). Used before long work starts.
void ensure_writable_dir(const std::string& dir);

enum class DType { u8, f16, bf16, f32, f64, i64 };
std::string dtype_name(DType t);  // safetensors spelling: U8, F16, BF16, F32, F64, I64
size_t dtype_size(DType t);

// --- safetensors -------------------------------------------------------------------------
// Layout: u64 little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...,
//  "__metadata__": {"key": "string value"}}, then the data buffer. Offsets are relative to the
// start of the data buffer; tensors are written in the order given, contiguous.
struct TensorOut {
    std::string name;
    std::vector<int64_t> shape;
    DType dtype = DType::f32;  // f32 or f64 (or i64) only for writing
    const void* data = nullptr;
};
void safetensors_write(const std::string& path, const std::vector<TensorOut>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

struct TensorIn {
    std::vector<int64_t> shape;
    DType dtype = DType::f32;        // as stored in the file
    std::vector<float> f32;          // values converted to float (F32, F16, BF16, F64, U8)
    std::vector<double> f64;         // filled only for F64 tensors (exact values)
    std::vector<int64_t> i64;        // filled only for I64 tensors
    int64_t numel() const;
};
struct SafeTensors {
    std::map<std::string, TensorIn> tensors;
    std::map<std::string, std::string> metadata;
};
// Validates: header length within the file, JSON well formed, known dtypes, non-negative
// shapes whose byte size matches data_offsets, offsets inside the data buffer, no overlaps,
// no holes. Throws sae::Error otherwise.
SafeTensors safetensors_read(const std::string& path);
// The same checks on a whole file already in memory; name is used in messages.
SafeTensors safetensors_parse(const std::string& bytes, const std::string& name);

// --- .npy writing (reading lives in data.hpp) ---------------------------------------------
// Writes a C-order little-endian float32 array, atomically.
void npy_write_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape);

}  // namespace sae
