#include "sae/io.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "sae/error.hpp"

static_assert(std::endian::native == std::endian::little, "sae assumes a little-endian host");

namespace fs = std::filesystem;

namespace sae {

namespace {

std::string errno_text() { return std::strerror(errno); }

std::string dir_of(const std::string& path) {
    const std::string d = fs::path(path).parent_path().string();
    return d.empty() ? "." : d;
}

// fsync of a directory so a rename inside it is durable. Filesystems that cannot fsync a
// directory (EINVAL) are tolerated.
void fsync_dir(const std::string& dir, const std::string& what) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    check(fd >= 0, what + ": cannot open directory " + dir + " to sync it (" + errno_text() +
                       "); check the directory permissions");
    const int rc = ::fsync(fd);
    const int err = errno;
    ::close(fd);
    if (rc != 0 && err != EINVAL)
        throw Error(what + ": cannot sync directory " + dir + " (" + std::strerror(err) +
                    "); check the disk and retry");
}

bool mul_ok(uint64_t a, uint64_t b, uint64_t& out) { return !__builtin_mul_overflow(a, b, &out); }

// Product of non-negative dims; false on overflow. A zero dim makes the product 0.
bool checked_numel(const std::vector<int64_t>& shape, uint64_t& n) {
    n = 1;
    if (std::find(shape.begin(), shape.end(), 0) != shape.end()) {
        n = 0;
        return true;
    }
    for (int64_t d : shape)
        if (!mul_ok(n, uint64_t(d), n)) return false;
    return true;
}

}  // namespace

// --- AtomicFile ----------------------------------------------------------------------------

AtomicFile::AtomicFile(const std::string& path)
    : path_(path), tmp_(path + ".tmp-" + std::to_string(::getpid())) {
    f_ = std::fopen(tmp_.c_str(), "wb");
    check(f_ != nullptr, path_ + ": cannot create file (" + errno_text() +
                             "); check that the directory exists and is writable");
}

AtomicFile::~AtomicFile() {
    if (f_) std::fclose(f_);
    if (!committed_) std::remove(tmp_.c_str());
}

void AtomicFile::write(const void* data, size_t n) {
    check(f_ != nullptr, path_ + ": write after commit; this is a bug in sae, please report it");
    if (n == 0) return;
    if (std::fwrite(data, 1, n, f_) != n)
        throw Error(path_ + ": short write (" + errno_text() + "); disk full? free space and retry");
}

void AtomicFile::commit() {
    check(f_ != nullptr, path_ + ": committed twice; this is a bug in sae, please report it");
    const bool flushed = std::fflush(f_) == 0 && ::fsync(::fileno(f_)) == 0;
    const int err = errno;
    const bool closed = std::fclose(f_) == 0;
    f_ = nullptr;
    if (!flushed || !closed)
        throw Error(path_ + ": cannot flush file to disk (" + std::strerror(flushed ? errno : err) +
                    "); disk full? free space and retry");
    if (std::rename(tmp_.c_str(), path_.c_str()) != 0)
        throw Error(path_ + ": cannot rename " + tmp_ + " into place (" + errno_text() +
                    "); check the directory permissions");
    committed_ = true;
    fsync_dir(dir_of(path_), path_);
}

void write_file_atomic(const std::string& path, const std::string& contents) {
    AtomicFile f(path);
    f.write(contents);
    f.commit();
}

std::string read_file(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    check(fd >= 0, path + ": cannot open (" + errno_text() + "); check the path and permissions");
    struct stat st {};
    if (::fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
        const std::string why = S_ISDIR(st.st_mode) ? "is a directory" : errno_text();
        ::close(fd);
        throw Error(path + ": cannot read (" + why + "); give the path of a regular file");
    }
    std::string out;
    if (S_ISREG(st.st_mode)) out.reserve(size_t(st.st_size));
    char buf[1 << 16];
    for (;;) {
        const ssize_t r = ::read(fd, buf, sizeof buf);
        if (r == 0) break;
        if (r < 0) {
            if (errno == EINTR) continue;
            const std::string why = errno_text();
            ::close(fd);
            throw Error(path + ": read failed (" + why + "); check the file and the disk");
        }
        out.append(buf, size_t(r));
    }
    ::close(fd);
    return out;
}

void ensure_writable_dir(const std::string& dir) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    check(!ec, dir + ": cannot create directory (" + ec.message() +
                   "); check that the path is valid and its parent is writable");
    check(fs::is_directory(dir, ec), dir + ": is not a directory; choose a directory path");
    const std::string probe = dir + "/.sae-write-probe-" + std::to_string(::getpid());
    const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    check(fd >= 0, dir + ": directory is not writable (" + errno_text() +
                       "); check its permissions and free space");
    ::close(fd);
    ::unlink(probe.c_str());
}

// --- dtypes --------------------------------------------------------------------------------

std::string dtype_name(DType t) {
    switch (t) {
        case DType::u8: return "U8";
        case DType::f16: return "F16";
        case DType::bf16: return "BF16";
        case DType::f32: return "F32";
        case DType::f64: return "F64";
        case DType::i64: return "I64";
    }
    throw Error("dtype: invalid value " + std::to_string(int(t)) + "; this is a bug in sae");
}

size_t dtype_size(DType t) {
    switch (t) {
        case DType::u8: return 1;
        case DType::f16: case DType::bf16: return 2;
        case DType::f32: return 4;
        case DType::f64: case DType::i64: return 8;
    }
    throw Error("dtype: invalid value " + std::to_string(int(t)) + "; this is a bug in sae");
}

namespace {

constexpr DType kAllDTypes[] = {DType::u8, DType::f16, DType::bf16, DType::f32, DType::f64, DType::i64};

bool parse_dtype(const std::string& s, DType& out) {
    for (DType t : kAllDTypes)
        if (dtype_name(t) == s) {
            out = t;
            return true;
        }
    return false;
}

// IEEE binary16 -> binary32, exact (subnormals, infinities and NaN payloads included).
float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0) {  // zero or subnormal: man * 2^-24
        const float v = std::ldexp(float(man), -24);
        return sign ? -v : v;
    }
    const uint32_t bits = exp == 0x1f ? sign | 0x7f800000u | (man << 13)
                                      : sign | ((exp - 15 + 127) << 23) | (man << 13);
    return std::bit_cast<float>(bits);
}

float bf16_to_float(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }

template <class T>
T load(const char* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// A JSON value as a non-negative integer that fits in int64; false otherwise.
bool json_index(const nlohmann::json& v, int64_t& out) {
    if (v.is_number_unsigned()) {
        const uint64_t u = v.get<uint64_t>();
        if (u > uint64_t(std::numeric_limits<int64_t>::max())) return false;
        out = int64_t(u);
        return true;
    }
    if (v.is_number_integer()) {
        out = v.get<int64_t>();
        return out >= 0;
    }
    return false;
}

// Fills t.f32 / t.f64 / t.i64 from numel stored values of t.dtype at p.
void convert(TensorIn& t, const char* p, uint64_t numel) {
    if (numel == 0) return;
    const size_t nbytes = numel * dtype_size(t.dtype);
    if (t.dtype == DType::i64) {
        t.i64.resize(numel);
        std::memcpy(t.i64.data(), p, nbytes);
        return;
    }
    t.f32.resize(numel);
    switch (t.dtype) {
        case DType::f32: std::memcpy(t.f32.data(), p, nbytes); break;
        case DType::f16:
            for (uint64_t i = 0; i < numel; ++i) t.f32[i] = half_to_float(load<uint16_t>(p + 2 * i));
            break;
        case DType::bf16:
            for (uint64_t i = 0; i < numel; ++i) t.f32[i] = bf16_to_float(load<uint16_t>(p + 2 * i));
            break;
        case DType::u8:
            for (uint64_t i = 0; i < numel; ++i) t.f32[i] = float(uint8_t(p[i]));
            break;
        case DType::f64:
            t.f64.resize(numel);
            std::memcpy(t.f64.data(), p, nbytes);
            for (uint64_t i = 0; i < numel; ++i) t.f32[i] = float(t.f64[i]);
            break;
        case DType::i64: break;
    }
}

}  // namespace

int64_t TensorIn::numel() const {
    uint64_t n = 0;
    check(checked_numel(shape, n) && n <= uint64_t(std::numeric_limits<int64_t>::max()),
          "tensor: element count overflows; the shape is corrupt");
    return int64_t(n);
}

// --- safetensors ---------------------------------------------------------------------------

void safetensors_write(const std::string& path, const std::vector<TensorOut>& tensors,
                       const std::map<std::string, std::string>& metadata) {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::vector<uint64_t> nbytes;
    uint64_t offset = 0;
    for (const TensorOut& t : tensors) {
        const std::string what = path + ": tensor '" + t.name + "'";
        check(t.name != "__metadata__", what + ": the name is reserved; rename the tensor");
        check(!header.contains(t.name), what + ": duplicate name; give each tensor a unique name");
        for (int64_t d : t.shape)
            check(d >= 0, what + ": negative dimension " + std::to_string(d) + "; fix the shape");
        uint64_t n = 0, b = 0, end = 0;
        check(checked_numel(t.shape, n) && mul_ok(n, dtype_size(t.dtype), b) &&
                  !__builtin_add_overflow(offset, b, &end),
              what + ": byte size overflows; fix the shape");
        check(t.data != nullptr || b == 0, what + ": data pointer is null; pass the tensor data");
        header[t.name] = {{"dtype", dtype_name(t.dtype)},
                          {"shape", t.shape},
                          {"data_offsets", {offset, end}}};
        nbytes.push_back(b);
        offset = end;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    const uint64_t len = text.size();

    AtomicFile f(path);
    f.write(&len, 8);
    f.write(text);
    for (size_t i = 0; i < tensors.size(); ++i) f.write(tensors[i].data, nbytes[i]);
    f.commit();
}

SafeTensors safetensors_parse(const std::string& bytes, const std::string& name) {
    const std::string bad = "; the file is corrupt or not safetensors";
    check(bytes.size() >= 8, name + ": file is " + std::to_string(bytes.size()) +
                                 " bytes, too small for a safetensors header (8 bytes)" + bad);
    const uint64_t hlen = load<uint64_t>(bytes.data());
    constexpr uint64_t kMaxHeader = 100'000'000;
    check(hlen <= bytes.size() - 8 && hlen <= kMaxHeader,
          name + ": header length " + std::to_string(hlen) + " exceeds the file size " +
              std::to_string(bytes.size()) + " (or the 100 MB limit); the file is truncated or not safetensors");
    const char* data = bytes.data() + 8 + hlen;
    const uint64_t data_size = bytes.size() - 8 - hlen;

    nlohmann::json header;
    try {
        header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + int64_t(hlen));
    } catch (const nlohmann::json::exception& e) {
        throw Error(name + ": invalid JSON header (" + one_line(e.what()) + ")" + bad);
    }
    check(header.is_object(), name + ": header is not a JSON object" + bad);

    struct Span {
        uint64_t begin, end;
        std::string name;
    };
    std::vector<Span> spans;
    SafeTensors out;
    for (const auto& [key, v] : header.items()) {
        if (key == "__metadata__") {
            check(v.is_object(), name + ": __metadata__ is not a JSON object" + bad);
            for (const auto& [mk, mv] : v.items()) {
                check(mv.is_string(), name + ": __metadata__ value for '" + one_line(mk) + "' is not a string" + bad);
                out.metadata[mk] = mv.get<std::string>();
            }
            continue;
        }
        const std::string what = name + ": tensor '" + one_line(key) + "'";
        check(v.is_object() && v.size() == 3 && v.contains("dtype") && v.contains("shape") &&
                  v.contains("data_offsets"),
              what + ": entry must be an object with exactly the keys dtype, shape, data_offsets" + bad);
        TensorIn t;
        const auto& dt = v["dtype"];
        check(dt.is_string() && parse_dtype(dt.get<std::string>(), t.dtype),
              what + ": unsupported dtype " + dt.dump() +
                  "; supported dtypes are U8, F16, BF16, F32, F64, I64 (convert the file)");
        const auto& sh = v["shape"];
        check(sh.is_array(), what + ": shape is not an array" + bad);
        for (const auto& d : sh) {
            int64_t x = 0;
            check(json_index(d, x), what + ": shape entry " + d.dump() + " is not a non-negative integer" + bad);
            t.shape.push_back(x);
        }
        uint64_t numel = 0, nbytes = 0;
        check(checked_numel(t.shape, numel) && mul_ok(numel, dtype_size(t.dtype), nbytes),
              what + ": shape " + sh.dump() + " overflows the element count" + bad);
        const auto& off = v["data_offsets"];
        int64_t b = 0, e = 0;
        check(off.is_array() && off.size() == 2 && json_index(off[0], b) && json_index(off[1], e),
              what + ": data_offsets must be [begin, end] with non-negative integers" + bad);
        check(b <= e, what + ": data_offsets begin " + std::to_string(b) + " is after end " +
                          std::to_string(e) + bad);
        check(uint64_t(e) <= data_size, what + ": data_offsets end " + std::to_string(e) +
                                            " is outside the data buffer of " +
                                            std::to_string(data_size) + " bytes; the file is truncated or corrupt");
        check(uint64_t(e - b) == nbytes,
              what + ": data size " + std::to_string(e - b) + " bytes does not match shape " + sh.dump() +
                  " of " + dtype_name(t.dtype) + " (" + std::to_string(nbytes) + " bytes)" + bad);
        spans.push_back({uint64_t(b), uint64_t(e), one_line(key)});

        // numel <= data_size here, so the allocations in convert() are bounded by the file.
        convert(t, data + b, numel);
        out.tensors.emplace(key, std::move(t));
    }

    // The tensors must tile the data buffer exactly.
    std::sort(spans.begin(), spans.end(),
              [](const Span& a, const Span& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
    uint64_t pos = 0;
    std::string prev = "the start of the data buffer";
    for (const Span& s : spans) {
        check(s.begin >= pos, name + ": tensor '" + s.name + "' overlaps " + prev + bad);
        check(s.begin == pos, name + ": hole of " + std::to_string(s.begin - pos) + " bytes before tensor '" +
                                  s.name + "' in the data buffer" + bad);
        pos = s.end;
        prev = "tensor '" + s.name + "'";
    }
    check(pos == data_size, name + ": hole of " + std::to_string(data_size - pos) +
                                " unused bytes at the end of the data buffer" + bad);
    return out;
}

SafeTensors safetensors_read(const std::string& path) { return safetensors_parse(read_file(path), path); }

// --- .npy ----------------------------------------------------------------------------------

void npy_write_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
    std::string dims;
    for (size_t i = 0; i < shape.size(); ++i) {
        check(shape[i] >= 0, path + ": negative dimension " + std::to_string(shape[i]) + "; fix the shape");
        dims += (i ? ", " : "") + std::to_string(shape[i]);
    }
    if (shape.size() == 1) dims += ",";
    uint64_t numel = 0, nbytes = 0;
    check(checked_numel(shape, numel) && mul_ok(numel, 4, nbytes), path + ": array size overflows; fix the shape");
    check(data != nullptr || nbytes == 0, path + ": data pointer is null; pass the array data");

    // magic(6) + version(2) + u16 length + dict, padded with spaces and '\n' to a multiple of 64.
    std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
    dict.append(63 - (10 + dict.size()) % 64, ' ');
    dict += '\n';
    check(dict.size() <= 0xffff, path + ": too many dimensions for an .npy v1.0 header; reduce the rank");
    const uint16_t len = uint16_t(dict.size());

    AtomicFile f(path);
    f.write("\x93NUMPY\x01\x00", 8);
    f.write(&len, 2);
    f.write(dict);
    f.write(data, nbytes);
    f.commit();
}

}  // namespace sae
