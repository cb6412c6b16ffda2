#include "sae/data.hpp"

#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>

#include "sae/error.hpp"

static_assert(std::endian::native == std::endian::little, "data.cpp assumes a little-endian host");

namespace sae {

namespace {

constexpr int64_t kMaxElements = int64_t(1) << 40;  // far beyond any data set; keeps byte counts in range

[[noreturn]] void fail(const std::string& name, const std::string& what) { throw Error(name + ": " + what); }

std::string join_dims(const std::vector<int64_t>& dims, const char* sep) {
    std::string s;
    for (size_t i = 0; i < dims.size(); ++i) s += (i ? sep : "") + std::to_string(dims[i]);
    return s;
}

// File text quoted in a one-line message: trailing space dropped, control bytes escaped, long text cut.
std::string printable(std::string s) {
    while (!s.empty() && std::isspace(uint8_t(s.back()))) s.pop_back();
    std::string out;
    for (size_t i = 0; i < s.size() && i < 200; ++i) {
        const uint8_t c = uint8_t(s[i]);
        if (c >= 0x20 && c < 0x7f) {
            out += char(c);
        } else {
            char hex[8];
            std::snprintf(hex, sizeof hex, "\\x%02x", c);
            out += hex;
        }
    }
    return s.size() > 200 ? out + "..." : out;
}

// Whole file as bytes, read in chunks (no size taken on trust).
std::string read_all(const std::string& path) {
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
    if (!f) fail(path, std::string("cannot open (") + std::strerror(errno) + "); check the path");
    std::string bytes;
    char buf[1 << 16];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f.get())) > 0) bytes.append(buf, n);
    if (std::ferror(f.get()))
        fail(path, std::string("read error (") + std::strerror(errno) + "); check that it is a readable file");
    return bytes;
}

bool is_gzip(const std::string& b) { return b.size() >= 2 && uint8_t(b[0]) == 0x1f && uint8_t(b[1]) == 0x8b; }

// Inflates one or more concatenated gzip members into a buffer grown chunk by chunk.
std::string gunzip(const std::string& in, const std::string& name) {
    z_stream zs{};
    if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) fail(name, "cannot initialise zlib; out of memory?");
    std::unique_ptr<z_stream, int (*)(z_stream*)> guard(&zs, &inflateEnd);
    std::string out;
    size_t produced = 0, in_pos = 0, chunk = 1 << 16;
    for (;;) {
        if (zs.avail_in == 0 && in_pos < in.size()) {
            const size_t take = std::min<size_t>(in.size() - in_pos, 1u << 30);
            zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data() + in_pos));
            zs.avail_in = uInt(take);
            in_pos += take;
        }
        if (out.size() == produced) {
            out.resize(produced + chunk);
            chunk = std::min<size_t>(chunk * 2, size_t(1) << 26);
        }
        zs.next_out = reinterpret_cast<Bytef*>(out.data() + produced);
        zs.avail_out = uInt(out.size() - produced);
        const int rc = inflate(&zs, Z_NO_FLUSH);
        produced = out.size() - zs.avail_out;
        const size_t left = zs.avail_in + (in.size() - in_pos);
        if (rc == Z_STREAM_END) {
            if (left == 0) break;
            const size_t at = in.size() - left;
            if (left < 2 || uint8_t(in[at]) != 0x1f || uint8_t(in[at + 1]) != 0x8b)
                fail(name, std::to_string(left) + " stray bytes after the gzip stream; the file is corrupt, re-create it");
            inflateReset(&zs);
        } else if (rc == Z_BUF_ERROR || rc == Z_OK) {
            if (left == 0 && zs.avail_out > 0)
                fail(name, "gzip stream ends early; the file is truncated, re-download it");
        } else {
            fail(name, std::string("gzip data is corrupt (") + (zs.msg ? zs.msg : "zlib error " + std::to_string(rc)) +
                           "); re-download the file");
        }
    }
    out.resize(produced);
    return out;
}

// File content, gunzipped if it starts with the gzip magic.
std::string load(const std::string& path) {
    std::string bytes = read_all(path);
    if (bytes.empty()) fail(path, "file is empty; expected an IDX or .npy data file");
    if (is_gzip(bytes)) {
        bytes = gunzip(bytes, path);
        if (bytes.empty()) fail(path, "gzip content is empty; expected an IDX or .npy data file");
    }
    return bytes;
}

bool is_npy(const std::string& b) { return b.size() >= 6 && b.compare(0, 6, "\x93NUMPY") == 0; }

uint32_t be32(const std::string& b, size_t at) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = (v << 8) | uint8_t(b[at + i]);
    return v;
}

uint32_t le(const std::string& b, size_t at, size_t n) {
    uint32_t v = 0;
    for (size_t i = n; i-- > 0;) v = (v << 8) | uint8_t(b[at + i]);
    return v;
}

// --- .npy header: a Python dict literal such as
// {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
struct PyValue {
    enum Kind { str, boolean, tuple } kind = str;
    std::string s;
    bool b = false;
    std::vector<int64_t> dims;
};

class DictParser {
public:
    DictParser(const std::string& text, const std::string& name) : t_(text), name_(name) {}

    // Calls on_item(key, value) for each entry.
    template <class F>
    void parse(F&& on_item) {
        expect('{');
        for (;;) {
            if (peek() == '}') break;
            const std::string key = string_lit();
            expect(':');
            on_item(key, value());
            if (peek() == ',') {
                ++i_;
                continue;
            }
            if (peek() != '}') bad("expected ',' or '}'");
        }
        ++i_;
        ws();
        if (i_ != t_.size()) bad("unexpected text after the closing '}'");
    }

private:
    const std::string& t_;
    const std::string& name_;
    size_t i_ = 0;

    [[noreturn]] void bad(const std::string& what) {
        fail(name_, "malformed .npy header (" + what + " at offset " + std::to_string(i_) + " of '" + printable(t_) +
                        "'); re-save the file with numpy.save");
    }
    void ws() {
        while (i_ < t_.size() && (t_[i_] == ' ' || t_[i_] == '\t' || t_[i_] == '\n' || t_[i_] == '\r')) ++i_;
    }
    char peek() {
        ws();
        return i_ < t_.size() ? t_[i_] : '\0';
    }
    void expect(char c) {
        if (peek() != c) bad(std::string("expected '") + c + "'");
        ++i_;
    }
    bool word(const char* w) {
        const size_t n = std::strlen(w);
        if (t_.compare(i_, n, w) != 0) return false;
        i_ += n;
        return true;
    }
    std::string string_lit() {
        const char q = peek();
        if (q != '\'' && q != '"') bad("expected a quoted string");
        const size_t end = t_.find(q, i_ + 1);
        if (end == std::string::npos) bad("unterminated string");
        std::string s = t_.substr(i_ + 1, end - i_ - 1);
        i_ = end + 1;
        return s;
    }
    int64_t integer() {
        if (peek() == '-') bad("negative dimension");
        if (!std::isdigit(uint8_t(peek()))) bad("expected an integer");
        int64_t v = 0;
        while (i_ < t_.size() && std::isdigit(uint8_t(t_[i_]))) {
            const int d = t_[i_++] - '0';
            if (v > (std::numeric_limits<int64_t>::max() - d) / 10) bad("dimension too large");
            v = v * 10 + d;
        }
        if (i_ < t_.size() && t_[i_] == 'L') ++i_;  // Python 2 long suffix
        return v;
    }
    PyValue value() {
        PyValue v;
        const char c = peek();
        if (c == '\'' || c == '"') {
            v.s = string_lit();
        } else if (word("True") || word("False")) {
            v.kind = PyValue::boolean;
            v.b = t_[i_ - 2] == 'u';  // "True" vs "False"
        } else if (c == '(') {
            v.kind = PyValue::tuple;
            ++i_;
            while (peek() != ')') {
                v.dims.push_back(integer());
                if (peek() == ',') ++i_;
                else if (peek() != ')') bad("expected ',' or ')' in the shape");
            }
            ++i_;
        } else {
            bad("unsupported value");
        }
        return v;
    }
};

}  // namespace

int64_t Array::numel() const {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
}

Array idx_parse(const std::string& b, const std::string& name) {
    if (b.size() < 4)
        fail(name, "only " + std::to_string(b.size()) + " bytes, too short for an IDX header; the file is truncated");
    if (b[0] != 0 || b[1] != 0) fail(name, "not an IDX file (the first two bytes are not zero); check the path");
    const uint8_t type = uint8_t(b[2]), ndim = uint8_t(b[3]);
    if (type != 0x08) {
        const char* tname = type == 0x09 ? "int8" : type == 0x0B ? "int16" : type == 0x0C ? "int32"
                          : type == 0x0D ? "float32" : type == 0x0E ? "float64" : "unknown";
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02x", type);
        fail(name, std::string("IDX element type ") + hex + " (" + tname +
                       ") is not supported, only 0x08 (unsigned byte); convert the data to uint8 IDX or to .npy");
    }
    if (ndim < 1 || ndim > 4)
        fail(name, "IDX header has " + std::to_string(ndim) + " dimensions, expected 1 to 4; the file is corrupt");
    const size_t header = 4 + 4 * size_t(ndim);
    if (b.size() < header)
        fail(name, "IDX header needs " + std::to_string(header) + " bytes but the file has only " +
                       std::to_string(b.size()) + "; the file is truncated, re-download it");
    Array a;
    a.source = SourceType::u8;
    int64_t n = 1;
    for (size_t i = 0; i < ndim; ++i) {
        const int64_t d = be32(b, 4 + 4 * i);
        a.shape.push_back(d);
        if (d == 0) fail(name, "IDX dimension " + std::to_string(i) + " is 0; the file is corrupt or holds no data");
        if (n > kMaxElements / d)
            fail(name, "IDX dimensions " + join_dims(a.shape, " x ") + "... are implausibly large; the file is corrupt");
        n *= d;
    }
    const size_t have = b.size() - header;
    if (have < size_t(n))
        fail(name, "IDX header says " + join_dims(a.shape, " x ") + " = " + std::to_string(n) + " bytes but only " +
                       std::to_string(have) + " bytes follow; the file is truncated, re-download it");
    if (have > size_t(n))
        fail(name, std::to_string(have - size_t(n)) + " trailing bytes after the " + std::to_string(n) +
                       " data bytes of IDX shape " + join_dims(a.shape, " x ") + "; the file is corrupt, re-download it");
    a.values.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) a.values[size_t(i)] = float(uint8_t(b[header + size_t(i)]));
    return a;
}

namespace {

struct NpyPreamble {
    size_t start = 0, hlen = 0;  // offset and length of the header text
};

// Magic, version and header length; file_size bounds the header (b may be only a prefix).
NpyPreamble npy_preamble(const std::string& b, uint64_t file_size, const std::string& name) {
    if (!is_npy(b)) fail(name, "not a .npy file (no \\x93NUMPY magic); save it with numpy.save");
    if (b.size() < 10) fail(name, ".npy preamble is truncated; re-export the file");
    const int major = uint8_t(b[6]);
    if (major < 1 || major > 3)
        fail(name, ".npy version " + std::to_string(major) + "." + std::to_string(uint8_t(b[7])) +
                       " is not supported (1.0, 2.0, 3.0 are); re-save with numpy.save");
    const size_t len_bytes = major == 1 ? 2 : 4, start = 8 + len_bytes;
    if (b.size() < start) fail(name, ".npy preamble is truncated; re-export the file");
    const size_t hlen = le(b, 8, len_bytes);
    if (hlen > file_size - start)
        fail(name, ".npy header length " + std::to_string(hlen) + " goes beyond the end of the file (" +
                       std::to_string(file_size) + " bytes); the file is truncated or corrupt, re-export it");
    return {start, hlen};
}

// The data that follows the header must be exactly the bytes the header describes.
void npy_check_size(const NpyHeader& h, uint64_t have, const std::string& name) {
    const uint64_t need = h.data_bytes();
    if (have < need)
        fail(name, "header says " + std::to_string(h.numel) + " " + h.descr + " values (" + std::to_string(need) +
                       " bytes) but only " + std::to_string(have) + " bytes follow; the file is truncated, re-export it");
    if (have > need)
        fail(name, std::to_string(have - need) + " trailing bytes after the " + std::to_string(need) +
                       " data bytes of shape (" + join_dims(h.shape, ", ") + "); the file is corrupt, re-export it");
}

}  // namespace

NpyHeader npy_parse_header(const std::string& b, uint64_t file_size, const std::string& name,
                           const std::string& dtype_hint) {
    if (!dtype_hint.empty() && dtype_hint != "bfloat16")
        fail(name, "dtype hint '" + printable(dtype_hint) + "' is unknown; use \"bfloat16\" or leave it empty");
    const NpyPreamble pre = npy_preamble(b, std::max<uint64_t>(file_size, b.size()), name);
    if (pre.hlen > b.size() - pre.start)
        fail(name, "only the first " + std::to_string(b.size()) + " bytes were given, the .npy header needs " +
                       std::to_string(pre.start + pre.hlen) + "; read the whole header");
    const std::string header = b.substr(pre.start, pre.hlen);

    PyValue descr, fortran, shape;
    bool has_descr = false, has_fortran = false, has_shape = false;
    DictParser(header, name).parse([&](const std::string& key, PyValue v) {
        if (key == "descr") descr = std::move(v), has_descr = true;
        else if (key == "fortran_order") fortran = std::move(v), has_fortran = true;
        else if (key == "shape") shape = std::move(v), has_shape = true;
    });
    if (!has_descr || !has_fortran || !has_shape)
        fail(name, ".npy header lacks '" + std::string(!has_descr ? "descr" : !has_fortran ? "fortran_order" : "shape") +
                       "' in " + printable(header) + "; re-save the file with numpy.save");
    if (descr.kind != PyValue::str)
        fail(name, ".npy descr is not a simple dtype (structured arrays are not supported); save a plain numeric array");
    if (fortran.kind != PyValue::boolean) fail(name, ".npy fortran_order is not True/False; re-save with numpy.save");
    if (shape.kind != PyValue::tuple) fail(name, ".npy shape is not a tuple; re-save with numpy.save");

    NpyHeader h;
    const std::string& d = descr.s;
    h.descr = d;
    if (d == "<f4") h.dtype = NpyDtype::f32, h.item_size = 4;
    else if (d == "<f8") h.dtype = NpyDtype::f64, h.item_size = 8;
    else if (d == "<f2") h.dtype = NpyDtype::f16, h.item_size = 2;
    else if (d == "|u1" || d == "<u1") h.dtype = NpyDtype::u8, h.item_size = 1;
    else if ((d == "<V2" || d == "|V2") && dtype_hint == "bfloat16") h.dtype = NpyDtype::bf16, h.item_size = 2;
    else if (d == "<V2" || d == "|V2")
        fail(name, "dtype '" + d + "' is a raw 2-byte type (how NumPy saves an ml_dtypes bfloat16 array); if it holds "
                   "bfloat16, set the dtype hint \"bfloat16\" (dtype_hint = \"bfloat16\"), else convert with "
                   "arr.astype(np.float32)");
    else if (d == ">f4" || d == ">f8" || d == ">f2")
        fail(name, "big-endian dtype '" + d + "' is not supported; convert with arr.astype('<" + d.substr(1) + "')");
    else
        fail(name, "dtype '" + printable(d) + "' is not supported (float32 '<f4', float64 '<f8', float16 '<f2', "
                   "uint8 '|u1', and bfloat16 '<V2' with dtype hint \"bfloat16\" are); convert with "
                   "arr.astype(np.float32)");
    if (shape.dims.size() > 32)
        fail(name, ".npy shape has " + std::to_string(shape.dims.size()) + " dimensions, at most 32 are supported");
    h.shape = shape.dims;
    if (fortran.b && h.shape.size() > 1)
        fail(name, "array is stored in Fortran order; convert with np.ascontiguousarray(arr) and save again");
    int64_t n = 1;
    for (auto dim : h.shape) {
        if (dim == 0) fail(name, ".npy shape (" + join_dims(h.shape, ", ") + ") holds no values; the data set is empty");
        if (n > kMaxElements / dim)
            fail(name, ".npy shape (" + join_dims(h.shape, ", ") + ") is implausibly large; the file is corrupt");
        n *= dim;
    }
    h.numel = n;
    h.data_offset = pre.start + pre.hlen;
    return h;
}

Array npy_parse(const std::string& b, const std::string& name, const std::string& dtype_hint) {
    const NpyHeader h = npy_parse_header(b, b.size(), name, dtype_hint);
    npy_check_size(h, b.size() - h.data_offset, name);
    Array a;
    a.shape = h.shape;
    const size_t n = size_t(h.numel);
    const char* p = b.data() + h.data_offset;
    a.values.resize(n);
    float* v = a.values.data();
    switch (h.dtype) {
        case NpyDtype::f32:
            a.source = SourceType::f32;
            std::memcpy(v, p, 4 * n);
            break;
        case NpyDtype::f64:
            a.source = SourceType::f64;
            for (size_t i = 0; i < n; ++i) {
                double x;
                std::memcpy(&x, p + 8 * i, 8);
                v[i] = float(x);
            }
            break;
        case NpyDtype::f16:
        case NpyDtype::bf16: {
            const bool half = h.dtype == NpyDtype::f16;
            a.source = half ? SourceType::f16 : SourceType::bf16;
            for (size_t i = 0; i < n; ++i) {
                uint16_t x;
                std::memcpy(&x, p + 2 * i, 2);
                v[i] = half ? f16_to_f32(x) : bf16_to_f32(x);
            }
            break;
        }
        case NpyDtype::u8:
            a.source = SourceType::u8;
            for (size_t i = 0; i < n; ++i) v[i] = float(uint8_t(p[i]));
            break;
    }
    return a;
}

NpyHeader npy_read_header(const std::string& path, const std::string& dtype_hint) {
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
    if (!f) fail(path, std::string("cannot open (") + std::strerror(errno) + "); check the path");
    struct stat st {};
    if (::fstat(::fileno(f.get()), &st) != 0)
        fail(path, std::string("cannot stat (") + std::strerror(errno) + "); check the path");
    if (!S_ISREG(st.st_mode)) fail(path, "is not a regular file (a directory?); give .npy files");
    const uint64_t size = uint64_t(st.st_size);
    if (size == 0) fail(path, "file is empty; expected a .npy file");
    std::string b;
    auto read_to = [&](uint64_t want) {  // grows b to the first `want` bytes of the file
        const size_t at = b.size();
        if (want <= at) return;
        b.resize(size_t(want));
        if (std::fread(b.data() + at, 1, b.size() - at, f.get()) != b.size() - at)
            fail(path, std::string("read error (") + (std::ferror(f.get()) ? std::strerror(errno) : "file shrank") +
                           "); check that it is a readable file that is not being written");
    };
    read_to(std::min<uint64_t>(size, 12));
    if (is_gzip(b))
        fail(path, "is gzip-compressed; reading .npy without loading it needs an uncompressed file, gunzip it");
    const NpyPreamble pre = npy_preamble(b, size, path);
    read_to(pre.start + pre.hlen);
    NpyHeader h = npy_parse_header(b, size, path, dtype_hint);
    npy_check_size(h, size - h.data_offset, path);
    return h;
}

Array idx_read(const std::string& path) { return idx_parse(load(path), path); }
Array npy_read(const std::string& path) { return npy_parse(load(path), path); }

Array array_read(const std::string& path) {
    const std::string b = load(path);
    if (is_npy(b)) return npy_parse(b, path);
    if (b.size() >= 2 && b[0] == 0 && b[1] == 0) return idx_parse(b, path);
    fail(path, "neither a .npy file (\\x93NUMPY magic) nor an IDX file (two zero bytes), raw or gzip; "
               "save the data with numpy.save or as uint8 IDX");
}

void idx_write_u8(const std::string& path, const uint8_t* data, const std::vector<int64_t>& shape, bool gzip) {
    if (shape.empty() || shape.size() > 4) fail(path, "IDX needs 1 to 4 dimensions; cannot write");
    std::string b{'\0', '\0', '\x08', char(shape.size())};
    int64_t n = 1;
    for (auto d : shape) {
        if (d <= 0 || d > int64_t(UINT32_MAX) || n > kMaxElements / d)
            fail(path, "IDX dimensions (" + join_dims(shape, ", ") + ") out of range; cannot write");
        n *= d;
        for (int s = 24; s >= 0; s -= 8) b.push_back(char((uint64_t(d) >> s) & 0xff));
    }
    b.append(reinterpret_cast<const char*>(data), size_t(n));
    if (gzip) {
        gzFile f = gzopen(path.c_str(), "wb");
        if (!f) fail(path, std::string("cannot create (") + std::strerror(errno) + "); check the directory");
        bool ok = true;
        for (size_t at = 0; ok && at < b.size(); at += 1u << 30) {
            const unsigned len = unsigned(std::min<size_t>(b.size() - at, 1u << 30));
            ok = gzwrite(f, b.data() + at, len) == int(len);
        }
        if (gzclose(f) != Z_OK || !ok) fail(path, "gzip write failed; check free space");
    } else {
        std::FILE* f = std::fopen(path.c_str(), "wb");
        if (!f) fail(path, std::string("cannot create (") + std::strerror(errno) + "); check the directory");
        const bool ok = std::fwrite(b.data(), 1, b.size(), f) == b.size();
        if (std::fclose(f) != 0 || !ok) fail(path, "write failed; check free space");
    }
}

Matrix<float> array_to_samples(Array&& a) {
    check(!a.shape.empty() && a.shape[0] > 0,
          "a 0-d or empty array cannot be used as samples; save an array of shape [N, ...]");
    check(int64_t(a.values.size()) == a.numel(), "array values do not match its shape");
    Matrix<float> m;
    m.rows = a.shape[0];
    m.cols = a.numel() / a.shape[0];
    m.data = std::move(a.values);
    return m;
}

Normalize normalize_parse(const std::string& name) {
    if (name == "none") return Normalize::none;
    if (name == "unit_range") return Normalize::unit_range;
    if (name == "ufldl") return Normalize::ufldl;
    throw Error("normalisation '" + name + "': unknown; use one of none, unit_range, ufldl");
}

std::string normalize_name(Normalize n) {
    switch (n) {
        case Normalize::none: return "none";
        case Normalize::unit_range: return "unit_range";
        case Normalize::ufldl: return "ufldl";
    }
    return "?";
}

namespace {
// Each sample's mean removed, in double, rounded to float (ufldl's first step).
void remove_row_mean(const float* r, int64_t d, float* out) {
    double mean = 0;
    for (int64_t j = 0; j < d; ++j) mean += r[j];
    mean /= double(d);
    for (int64_t j = 0; j < d; ++j) out[j] = float(r[j] - mean);
}
}  // namespace

Normalizer normalizer_fit(const Matrix<float>& X, Normalize mode, SourceType source) {
    Normalizer n;
    n.mode = mode;
    if (mode == Normalize::none) return n;
    if (mode == Normalize::unit_range) {
        if (source == SourceType::u8) {
            n.min = 0;
            n.max = 255;
            return n;
        }
        if (X.data.empty()) return n;
        const auto [lo, hi] = std::minmax_element(X.data.begin(), X.data.end());
        n.min = *lo;
        n.max = *hi;
        check(std::isfinite(n.min) && std::isfinite(n.max) && std::isfinite(n.max - n.min),
              "unit_range normalisation: the data contains inf; clean the data first");
        return n;
    }
    // ufldl: the population standard deviation of all mean-removed values (two passes).
    if (X.data.empty()) return n;
    std::vector<float> y(size_t(X.cols));
    double mean = 0, var = 0;
    for (int64_t i = 0; i < X.rows; ++i) {
        remove_row_mean(X.row(i), X.cols, y.data());
        for (float v : y) mean += v;
    }
    mean /= double(X.data.size());
    for (int64_t i = 0; i < X.rows; ++i) {
        remove_row_mean(X.row(i), X.cols, y.data());
        for (float v : y) var += (v - mean) * (v - mean);
    }
    n.clip = 3.0 * std::sqrt(var / double(X.data.size()));
    check(std::isfinite(n.clip), "ufldl normalisation: the data contains NaN or inf; clean the data first");
    return n;
}

void normalizer_apply(const Normalizer& n, Matrix<float>& X, SourceType source) {
    if (n.mode == Normalize::none || X.data.empty()) return;
    double lo = n.min, hi = n.max;
    if (!n.fitted) {
        check(n.mode == Normalize::unit_range && source == SourceType::u8,
              n.origin + ": saved without its normalisation statistics (normalize = \"" + normalize_name(n.mode) +
                  "\" took them from each file read, so codes depended on the file); add them with "
                  "`sae upgrade --model DIR`, which fits them on the training data");
        lo = 0;
        hi = 255;
    }
    if (n.mode == Normalize::unit_range) {
        const double range = hi - lo;
        for (auto& x : X.data) x = range > 0 ? float((x - lo) / range) : 0.0f;
        return;
    }
    const double clip = n.clip;
    for (int64_t i = 0; i < X.rows; ++i) {
        float* r = X.row(i);
        remove_row_mean(r, X.cols, r);
        for (int64_t j = 0; j < X.cols; ++j)
            r[j] = clip > 0 ? float((std::clamp(double(r[j]), -clip, clip) / clip + 1.0) * 0.4 + 0.1) : 0.5f;
    }
}

void normalize_samples(Matrix<float>& X, Normalize mode, SourceType source) {
    normalizer_apply(normalizer_fit(X, mode, source), X, source);
}

void check_finite(const Matrix<float>& X, const std::string& what) {
    check_finite(X.data.data(), X.rows, X.cols, what);
}

void check_finite(const float* X, int64_t rows, int64_t cols, const std::string& what) {
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) {
            const float x = X[i * cols + j];
            if (!std::isfinite(x))
                throw Error(what + ": sample " + std::to_string(i) + ", feature " + std::to_string(j) +
                            " (counting from 0) is " + (std::isnan(x) ? "NaN" : "inf") +
                            "; the data must be finite, clean or re-export it");
        }
}

}  // namespace sae
