// Data readers (IDX, .npy, gzip), array_to_samples, normalisation, check_finite.
// Test inputs are built byte by byte here, so the expected values do not come from the code
// under test.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>

#include "sae/data.hpp"
#include "test_util.hpp"

using namespace sae;
using sae_test::read_bytes;
using sae_test::temp_dir;
using sae_test::write_bytes;

namespace {

std::string u32be(uint32_t v) {
    return {char(v >> 24), char((v >> 16) & 0xff), char((v >> 8) & 0xff), char(v & 0xff)};
}
std::string u16le(uint32_t v) { return {char(v & 0xff), char(v >> 8)}; }
std::string u32le(uint32_t v) { return {char(v & 0xff), char((v >> 8) & 0xff), char((v >> 16) & 0xff), char(v >> 24)}; }

// IDX file: 00 00 <type> <ndim>, big-endian dims, data.
std::string idx_bytes(uint8_t type, const std::vector<uint32_t>& dims, const std::string& data) {
    std::string b{'\0', '\0', char(type), char(dims.size())};
    for (auto d : dims) b += u32be(d);
    return b + data;
}

// .npy file with the given header text, unpadded, and data.
std::string npy_bytes(int major, const std::string& header, const std::string& data) {
    std::string b = std::string("\x93NUMPY") + char(major) + '\0';
    b += major == 1 ? u16le(uint32_t(header.size())) : u32le(uint32_t(header.size()));
    return b + header + data;
}

// numpy.save style: header padded with spaces and '\n' so the data starts at a multiple of 64.
std::string npy_padded(const std::string& dict, const std::string& data) {
    std::string h = dict;
    while ((10 + h.size() + 1) % 64 != 0) h += ' ';
    return npy_bytes(1, h + '\n', data);
}

// Little-endian IEEE bytes, written out by hand.
const std::string F4_ONE("\x00\x00\x80\x3f", 4), F4_M2_5("\x00\x00\x20\xc0", 4), F4_0_1("\xcd\xcc\xcc\x3d", 4);
const std::string F8_ONE("\x00\x00\x00\x00\x00\x00\xf0\x3f", 8), F8_M0_5("\x00\x00\x00\x00\x00\x00\xe0\xbf", 8),
    F8_3_25("\x00\x00\x00\x00\x00\x00\x0a\x40", 8);

uint32_t crc32(const std::string& s) {
    uint32_t c = 0xffffffffu;
    for (unsigned char ch : s) {
        c ^= ch;
        for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return ~c;
}

// A gzip file holding s in one stored (uncompressed) deflate block.
std::string gzip_stored(const std::string& s) {
    std::string g("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff", 10);
    g += '\x01' + u16le(uint32_t(s.size())) + u16le(uint32_t(~s.size() & 0xffff)) + s;
    return g + u32le(crc32(s)) + u32le(uint32_t(s.size()));
}

struct Files {
    std::string dir = temp_dir("data");
    ~Files() { std::filesystem::remove_all(dir); }
    std::string put(const std::string& name, const std::string& bytes) {
        const std::string p = dir + "/" + name;
        write_bytes(p, bytes);
        return p;
    }
};

Matrix<float> matrix(int64_t r, int64_t c, std::vector<float> v) {
    Matrix<float> m(r, c);
    m.data = std::move(v);
    return m;
}

}  // namespace

// ---------------------------------------------------------------- IDX

TEST(Idx, WriteProducesStandardBytesAndReadsBack) {
    Files fs;
    std::vector<uint8_t> data(3 * 2 * 4);
    for (size_t i = 0; i < data.size(); ++i) data[i] = uint8_t(i * 37 % 256);
    const std::string p = fs.dir + "/a.idx";
    idx_write_u8(p, data.data(), {3, 2, 4}, false);
    const std::string expect = idx_bytes(0x08, {3, 2, 4}, std::string(data.begin(), data.end()));
    EXPECT_EQ(read_bytes(p), expect);

    for (const Array& a : {idx_read(p), array_read(p)}) {
        EXPECT_EQ(a.shape, (std::vector<int64_t>{3, 2, 4}));
        EXPECT_EQ(a.source, SourceType::u8);
        EXPECT_EQ(a.numel(), 24);
        ASSERT_EQ(a.values.size(), 24u);
        for (size_t i = 0; i < 24; ++i) EXPECT_EQ(a.values[i], float(i * 37 % 256)) << i;
    }
}

TEST(Idx, GzipRoundTrip) {
    Files fs;
    std::vector<uint8_t> data(1000 * 7);
    for (size_t i = 0; i < data.size(); ++i) data[i] = uint8_t((i * i) % 251);
    const std::string p = fs.dir + "/b.idx.gz";
    idx_write_u8(p, data.data(), {1000, 7}, true);
    const std::string raw = read_bytes(p);
    ASSERT_GE(raw.size(), 2u);
    EXPECT_EQ(uint8_t(raw[0]), 0x1f);
    EXPECT_EQ(uint8_t(raw[1]), 0x8b);
    const Array a = idx_read(p);
    EXPECT_EQ(a.shape, (std::vector<int64_t>{1000, 7}));
    ASSERT_EQ(a.values.size(), data.size());
    for (size_t i = 0; i < data.size(); ++i) ASSERT_EQ(a.values[i], float(data[i])) << i;
}

TEST(Idx, HandWrittenOneDimensional) {
    Files fs;
    const std::string p = fs.put("labels", idx_bytes(0x08, {5}, std::string("\x00\x01\x09\xff\x80", 5)));
    const Array a = idx_read(p);
    EXPECT_EQ(a.shape, (std::vector<int64_t>{5}));
    EXPECT_EQ(a.values, (std::vector<float>{0, 1, 9, 255, 128}));
}

TEST(Idx, GzipStoredBlockAndConcatenatedMembers) {
    Files fs;
    const std::string full = idx_bytes(0x08, {2, 3}, "abcdef");
    const Array a = idx_read(fs.put("stored.gz", gzip_stored(full)));
    EXPECT_EQ(a.values, (std::vector<float>{'a', 'b', 'c', 'd', 'e', 'f'}));
    // Two gzip members, as `cat x.gz y.gz` produces, decompress to one stream.
    const Array b = idx_read(fs.put("two.gz", gzip_stored(full.substr(0, 9)) + gzip_stored(full.substr(9))));
    EXPECT_EQ(b.shape, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(b.values, a.values);
}

TEST(Idx, RealMnist) {
    const std::string dir = SAE_SOURCE_DIR "/../shared/data/mnist10k/";
    if (!std::filesystem::exists(dir + "images-idx3-ubyte.gz")) GTEST_SKIP() << "no MNIST data at " << dir;
    const Array img = array_read(dir + "images-idx3-ubyte.gz");
    EXPECT_EQ(img.shape, (std::vector<int64_t>{10000, 28, 28}));
    EXPECT_EQ(img.source, SourceType::u8);
    ASSERT_EQ(img.values.size(), 10000u * 784u);
    float lo = 1e9f, hi = -1e9f;
    for (float v : img.values) {
        lo = std::min(lo, v), hi = std::max(hi, v);
        ASSERT_EQ(v, std::floor(v));
    }
    EXPECT_EQ(lo, 0.0f);
    EXPECT_EQ(hi, 255.0f);

    const Array lab = idx_read(dir + "labels-idx1-ubyte.gz");
    EXPECT_EQ(lab.shape, (std::vector<int64_t>{10000}));
    std::vector<int> counts(10, 0);
    for (float v : lab.values) {
        ASSERT_TRUE(v >= 0 && v <= 9) << v;
        counts[size_t(v)]++;
    }
    EXPECT_EQ(counts, (std::vector<int>{1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978}));
}

TEST(Idx, BadInputs) {
    Files fs;
    std::string p;
    const std::string good = idx_bytes(0x08, {2, 3}, "abcdef");

    p = fs.put("empty.idx", "");
    sae_test::expect_error_line([&] { idx_read(p); }, p, {"empty"});
    sae_test::expect_error_line([&] { array_read(p); }, p, {"empty"});

    p = fs.dir + "/does-not-exist.idx";
    sae_test::expect_error_line([&] { idx_read(p); }, p, {"cannot open"});

    p = fs.put("header-only.idx", idx_bytes(0x08, {2, 3}, ""));
    sae_test::expect_error_line([&] { idx_read(p); }, p, {"truncated", "only 0 bytes follow", "6 bytes"});

    p = fs.put("cut.idx", good.substr(0, good.size() - 2));
    sae_test::expect_error_line([&] { idx_read(p); }, p, {"truncated", "only 4 bytes"});

    p = fs.put("dims-cut.idx", good.substr(0, 9));
    sae_test::expect_error_line([&] { idx_read(p); }, p, {"truncated"});

    p = fs.put("three.idx", good.substr(0, 3));
    sae_test::expect_error_line([&] { idx_read(p); }, p, {"truncated"});

    p = fs.put("magic.idx", "\x01\x02\x08\x01" + u32be(1) + "z");
    sae_test::expect_error_line([&] { idx_read(p); }, p, {"not an IDX"});
    sae_test::expect_error_line([&] { array_read(p); }, p, {"neither", ".npy", "IDX"});

    p = fs.put("float.idx", idx_bytes(0x0D, {2}, std::string(8, '\0')));
    sae_test::expect_error_line([&] { idx_read(p); }, p, {"0x0d", "float32", "only 0x08"});
    sae_test::expect_error_line([&] { array_read(p); }, p, {"0x0d"});

    p = fs.put("ndim0.idx", idx_bytes(0x08, {}, "abc"));
    sae_test::expect_error_line([&] { idx_read(p); }, p, {"0 dimensions"});
    p = fs.put("ndim5.idx", idx_bytes(0x08, {1, 1, 1, 1, 1}, "a"));
    sae_test::expect_error_line([&] { idx_read(p); }, p, {"5 dimensions"});

    p = fs.put("zero.idx", idx_bytes(0x08, {3, 0}, ""));
    sae_test::expect_error_line([&] { idx_read(p); }, p, {"dimension 1 is 0"});

    const auto t0 = std::chrono::steady_clock::now();
    p = fs.put("huge.idx", idx_bytes(0x08, {0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu}, "abc"));
    sae_test::expect_error_line([&] { idx_read(p); }, p, {"implausibly large"});
    p = fs.put("big1.idx", idx_bytes(0x08, {0xFFFFFFFFu}, "abc"));  // 4 GiB claimed, 3 bytes present
    sae_test::expect_error_line([&] { idx_read(p); }, p, {"4294967295", "only 3 bytes", "truncated"});
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));

    p = fs.put("trailing.idx", good + "xyz");
    sae_test::expect_error_line([&] { idx_read(p); }, p, {"3 trailing bytes"});
}

TEST(Idx, BadGzip) {
    Files fs;
    std::vector<uint8_t> data(5000);
    for (size_t i = 0; i < data.size(); ++i) data[i] = uint8_t(i * 7919 % 256);
    const std::string gz = fs.dir + "/ok.gz";
    idx_write_u8(gz, data.data(), {50, 100}, true);
    const std::string bytes = read_bytes(gz);
    ASSERT_GT(bytes.size(), 40u);

    std::string bad = bytes;
    for (size_t i = 12; i < 30; ++i) bad[i] = char(bad[i] ^ 0x5a);
    std::string p = fs.put("corrupt.gz", bad);
    sae_test::expect_error_line([&] { idx_read(p); }, p, {"gzip data is corrupt"});
    sae_test::expect_error_line([&] { array_read(p); }, p, {"gzip data is corrupt"});

    bad = bytes;
    bad[bad.size() - 6] = char(bad[bad.size() - 6] ^ 1);  // CRC mismatch
    p = fs.put("crc.gz", bad);
    sae_test::expect_error_line([&] { idx_read(p); }, p, {"gzip data is corrupt"});

    p = fs.put("cut.gz", bytes.substr(0, bytes.size() / 2));
    sae_test::expect_error_line([&] { idx_read(p); }, p, {"gzip stream ends early"});

    p = fs.put("junk-after.gz", bytes + "junk");
    sae_test::expect_error_line([&] { idx_read(p); }, p, {"4 stray bytes after the gzip stream"});

    p = fs.put("magic-only.gz", "\x1f\x8b");
    sae_test::expect_error_line([&] { idx_read(p); }, p, {"gzip"});

    // A valid gzip of an IDX file with trailing bytes inside: the IDX check still applies.
    p = fs.put("inner-trailing.gz", gzip_stored(idx_bytes(0x08, {2}, "abc")));
    sae_test::expect_error_line([&] { idx_read(p); }, p, {"1 trailing bytes"});
}

// ---------------------------------------------------------------- .npy

TEST(Npy, Version1Float32) {
    Files fs;
    const std::string p = fs.put(
        "a.npy", npy_padded("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }",
                            F4_ONE + F4_M2_5 + F4_0_1 + F4_ONE));
    const Array a = npy_read(p);
    EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 2}));
    EXPECT_EQ(a.source, SourceType::f32);
    EXPECT_EQ(a.values, (std::vector<float>{1.0f, -2.5f, 0.1f, 1.0f}));
}

TEST(Npy, Version2Float64) {
    Files fs;
    const std::string p =
        fs.put("b.npy", npy_bytes(2, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }\n",
                                  F8_ONE + F8_M0_5 + F8_3_25));
    const Array a = npy_read(p);
    EXPECT_EQ(a.shape, (std::vector<int64_t>{3}));
    EXPECT_EQ(a.source, SourceType::f64);
    EXPECT_EQ(a.values, (std::vector<float>{1.0f, -0.5f, 3.25f}));
}

TEST(Npy, Version3Uint8BothSpellings) {
    Files fs;
    for (const char* d : {"|u1", "<u1"}) {
        const std::string p = fs.put(std::string("c") + d[0] + ".npy",
                                     npy_bytes(3, std::string("{'descr': '") + d + "', 'fortran_order': False, 'shape': (1, 3, 1)}",
                                               std::string("\x00\x7f\xff", 3)));
        const Array a = npy_read(p);
        EXPECT_EQ(a.shape, (std::vector<int64_t>{1, 3, 1})) << d;
        EXPECT_EQ(a.source, SourceType::u8);
        EXPECT_EQ(a.values, (std::vector<float>{0, 127, 255})) << d;
    }
}

TEST(Npy, HeaderVariants) {
    Files fs;
    // Keys in another order, double quotes, odd whitespace, no trailing comma, Python 2 long suffix.
    Array a = npy_read(fs.put("v1.npy", npy_bytes(1, "{ \"shape\" : ( 1 ,2 ) ,\"fortran_order\":False,'descr':'<f4'}  \n",
                                                 F4_0_1 + F4_M2_5)));
    EXPECT_EQ(a.shape, (std::vector<int64_t>{1, 2}));
    EXPECT_EQ(a.values, (std::vector<float>{0.1f, -2.5f}));

    a = npy_read(fs.put("v2.npy", npy_bytes(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2L, 1L), }", F8_3_25 + F8_ONE)));
    EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 1}));
    EXPECT_EQ(a.values, (std::vector<float>{3.25f, 1.0f}));

    // A 0-d array holds one value; fortran_order is irrelevant for 1-d data.
    a = npy_read(fs.put("scalar.npy", npy_padded("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", F4_M2_5)));
    EXPECT_TRUE(a.shape.empty());
    EXPECT_EQ(a.numel(), 1);
    EXPECT_EQ(a.values, (std::vector<float>{-2.5f}));
    a = npy_read(fs.put("f1d.npy", npy_padded("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", F4_ONE + F4_0_1)));
    EXPECT_EQ(a.values, (std::vector<float>{1.0f, 0.1f}));

    // Unknown extra keys are ignored.
    a = npy_read(fs.put("extra.npy", npy_padded("{'descr': '|u1', 'note': 'hi', 'fortran_order': False, 'shape': (1,)}", "\x05")));
    EXPECT_EQ(a.values, (std::vector<float>{5}));
}

TEST(Npy, ArrayReadChoosesByContent) {
    Files fs;
    const std::string npy = npy_padded("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }", F4_ONE + F4_M2_5);
    const std::string idx = idx_bytes(0x08, {1, 2}, "\x03\x04");

    Array a = array_read(fs.put("looks-like.idx", npy));
    EXPECT_EQ(a.source, SourceType::f32);
    EXPECT_EQ(a.values, (std::vector<float>{1.0f, -2.5f}));

    a = array_read(fs.put("looks-like.npy", idx));
    EXPECT_EQ(a.source, SourceType::u8);
    EXPECT_EQ(a.values, (std::vector<float>{3, 4}));

    a = array_read(fs.put("npy-in-gzip.bin", gzip_stored(npy)));
    EXPECT_EQ(a.source, SourceType::f32);
    EXPECT_EQ(a.shape, (std::vector<int64_t>{1, 2}));
    EXPECT_EQ(a.values, (std::vector<float>{1.0f, -2.5f}));

    const std::string p = fs.put("text.csv", "1,2,3\n");
    sae_test::expect_error_line([&] { array_read(p); }, p, {"neither", ".npy", "IDX"});
    // Each specific reader refuses the other format.
    const std::string q = fs.put("n.npy", idx);
    sae_test::expect_error_line([&] { npy_read(q); }, q, {"not a .npy"});
    const std::string r = fs.put("i.idx", npy);
    sae_test::expect_error_line([&] { idx_read(r); }, r, {"not an IDX"});
}

TEST(Npy, BadInputs) {
    Files fs;
    const std::string f4x6 = F4_ONE + F4_ONE + F4_ONE + F4_ONE + F4_ONE + F4_ONE;
    auto hdr = [](const std::string& descr, const std::string& fortran, const std::string& shape) {
        return "{'descr': '" + descr + "', 'fortran_order': " + fortran + ", 'shape': " + shape + ", }";
    };
    std::string p;

    std::string b = npy_padded(hdr("<f4", "False", "(2, 3)"), f4x6);
    b[5] = 'X';
    p = fs.put("magic.npy", b);
    sae_test::expect_error_line([&] { npy_read(p); }, p, {"not a .npy"});

    p = fs.put("preamble.npy", "\x93NUMPY\x01");
    sae_test::expect_error_line([&] { npy_read(p); }, p, {"truncated"});
    sae_test::expect_error_line([&] { array_read(p); }, p, {"truncated"});

    b = npy_padded(hdr("<f4", "False", "(2, 3)"), f4x6);
    b[6] = 4;
    p = fs.put("version.npy", b);
    sae_test::expect_error_line([&] { npy_read(p); }, p, {"version 4.0"});

    p = fs.put("hlen.npy", std::string("\x93NUMPY\x01\x00", 8) + u16le(5000) + "{'descr': '<f4'");
    sae_test::expect_error_line([&] { npy_read(p); }, p, {"header length 5000", "beyond the end"});
    p = fs.put("hlen2.npy", std::string("\x93NUMPY\x02\x00", 8) + u32le(0xFFFFFFF0u) + "{}");
    sae_test::expect_error_line([&] { npy_read(p); }, p, {"header length 4294967280", "beyond the end"});

    p = fs.put("fortran.npy", npy_padded(hdr("<f4", "True", "(2, 3)"), f4x6));
    sae_test::expect_error_line([&] { npy_read(p); }, p, {"Fortran order", "np.ascontiguousarray"});

    p = fs.put("i4.npy", npy_padded(hdr("<i4", "False", "(2, 3)"), f4x6));
    sae_test::expect_error_line([&] { npy_read(p); }, p, {"dtype '<i4' is not supported", "astype"});
    p = fs.put("be.npy", npy_padded(hdr(">f4", "False", "(2, 3)"), f4x6));
    sae_test::expect_error_line([&] { npy_read(p); }, p, {"big-endian", "'>f4'", "astype('<f4')"});
    p = fs.put("struct.npy", npy_padded("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", F4_ONE));
    sae_test::expect_error_line([&] { npy_read(p); }, p, {"malformed"});

    p = fs.put("short.npy", npy_padded(hdr("<f4", "False", "(1000000,)"), std::string(1200, '\0')));
    sae_test::expect_error_line([&] { npy_read(p); }, p, {"1000000", "4000000 bytes", "only 1200 bytes", "truncated"});
    p = fs.put("long.npy", npy_padded(hdr("<f4", "False", "(2, 3)"), f4x6 + "ab"));
    sae_test::expect_error_line([&] { npy_read(p); }, p, {"2 trailing bytes"});
    p = fs.put("huge.npy", npy_padded(hdr("<f8", "False", "(4294967296, 4294967296, 16)"), ""));
    sae_test::expect_error_line([&] { npy_read(p); }, p, {"implausibly large"});
    p = fs.put("overflow.npy", npy_padded(hdr("<f8", "False", "(99999999999999999999999,)"), ""));
    sae_test::expect_error_line([&] { npy_read(p); }, p, {"malformed", "too large"});
    p = fs.put("zero.npy", npy_padded(hdr("<f4", "False", "(0, 3)"), ""));
    sae_test::expect_error_line([&] { npy_read(p); }, p, {"no values"});

    p = fs.put("neg.npy", npy_padded(hdr("<f4", "False", "(-2, 3)"), f4x6));
    sae_test::expect_error_line([&] { npy_read(p); }, p, {"negative dimension"});

    const std::vector<std::string> malformed = {
        "",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), ",  // no closing brace
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3) 'x': 1}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3]}",
        "{'descr': '<f4, 'fortran_order': False, 'shape': (2, 3)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2 3)}",
        "{'descr': '<f4', 'fortran_order': false, 'shape': (2, 3)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)} extra",
        "{descr: '<f4', 'fortran_order': False, 'shape': (2, 3)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3),,}",
        "{'descr' '<f4', 'fortran_order': False, 'shape': (2, 3)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3",
    };
    for (size_t i = 0; i < malformed.size(); ++i) {
        p = fs.put("bad" + std::to_string(i) + ".npy", npy_padded(malformed[i], f4x6));
        sae_test::expect_error_line([&] { npy_read(p); }, p, {"malformed .npy header"});
    }
    p = fs.put("noshape.npy", npy_padded("{'descr': '<f4', 'fortran_order': False}", f4x6));
    sae_test::expect_error_line([&] { npy_read(p); }, p, {"lacks 'shape'"});
    p = fs.put("shape-str.npy", npy_padded("{'descr': '<f4', 'fortran_order': False, 'shape': '6'}", f4x6));
    sae_test::expect_error_line([&] { npy_read(p); }, p, {"shape is not a tuple"});
    p = fs.put("fo-str.npy", npy_padded("{'descr': '<f4', 'fortran_order': 'no', 'shape': (6,)}", f4x6));
    sae_test::expect_error_line([&] { npy_read(p); }, p, {"fortran_order"});
}

TEST(Npy, ParseFunctionsUseGivenName) {
    sae_test::expect_error_line([] { npy_parse("", "mem"); }, "mem", {"not a .npy"});
    sae_test::expect_error_line([] { idx_parse(std::string("\0\0\x08", 3), "mem"); }, "mem", {"truncated"});
    const Array a = idx_parse(idx_bytes(0x08, {1}, "\x2a"), "mem");
    EXPECT_EQ(a.values, (std::vector<float>{42}));
}

// ---------------------------------------------------------------- samples and normalisation

TEST(Samples, FlattensTrailingAxes) {
    Array a;
    a.shape = {2, 3, 4};
    for (int i = 0; i < 24; ++i) a.values.push_back(float(i));
    const Matrix<float> m = array_to_samples(std::move(a));
    EXPECT_EQ(m.rows, 2);
    EXPECT_EQ(m.cols, 12);
    EXPECT_EQ(m(1, 0), 12.0f);
    EXPECT_EQ(m(1, 11), 23.0f);

    Array b;
    b.shape = {5};
    b.values = {1, 2, 3, 4, 5};
    const Matrix<float> v = array_to_samples(std::move(b));
    EXPECT_EQ(v.rows, 5);
    EXPECT_EQ(v.cols, 1);
    EXPECT_EQ(v(4, 0), 5.0f);

    Array s;
    s.values = {1};
    EXPECT_THROW(array_to_samples(std::move(s)), Error);
}

TEST(Normalize, Names) {
    for (auto n : {Normalize::none, Normalize::unit_range, Normalize::ufldl}) EXPECT_EQ(normalize_parse(normalize_name(n)), n);
    EXPECT_EQ(normalize_name(Normalize::none), "none");
    EXPECT_EQ(normalize_name(Normalize::unit_range), "unit_range");
    EXPECT_EQ(normalize_name(Normalize::ufldl), "ufldl");
    const std::string msg = sae_test::error_of([] { normalize_parse("zscore"); });
    for (const char* s : {"zscore", "none", "unit_range", "ufldl"}) EXPECT_NE(msg.find(s), std::string::npos) << msg;
}

TEST(Normalize, NoneLeavesDataAlone) {
    Matrix<float> X = matrix(1, 3, {-7, 0.5f, 300});
    normalize_samples(X, Normalize::none, SourceType::f32);
    EXPECT_EQ(X.data, (std::vector<float>{-7, 0.5f, 300}));
}

TEST(Normalize, UnitRangeUint8DividesBy255) {
    Matrix<float> X = matrix(2, 2, {0, 51, 255, 10});  // max is not 255 in every row; still /255
    normalize_samples(X, Normalize::unit_range, SourceType::u8);
    EXPECT_FLOAT_EQ(X(0, 0), 0.0f);
    EXPECT_FLOAT_EQ(X(0, 1), 0.2f);
    EXPECT_FLOAT_EQ(X(1, 0), 1.0f);
    EXPECT_FLOAT_EQ(X(1, 1), 10.0f / 255.0f);

    Matrix<float> Y = matrix(1, 2, {10, 20});  // u8 data not spanning 0..255 is still divided by 255
    normalize_samples(Y, Normalize::unit_range, SourceType::u8);
    EXPECT_FLOAT_EQ(Y(0, 1), 20.0f / 255.0f);
}

TEST(Normalize, UnitRangeFloatUsesGlobalMinMax) {
    Matrix<float> X = matrix(2, 2, {-2, 0, 6, 4});
    normalize_samples(X, Normalize::unit_range, SourceType::f32);
    EXPECT_EQ(X.data, (std::vector<float>{0.0f, 0.25f, 1.0f, 0.75f}));

    Matrix<float> C = matrix(2, 2, {3, 3, 3, 3});
    normalize_samples(C, Normalize::unit_range, SourceType::f64);
    EXPECT_EQ(C.data, (std::vector<float>{0, 0, 0, 0}));
}

TEST(Normalize, UfldlHandComputed) {
    // Rows [1,3] and [0,0]: centred [-1,1], [0,0]; std = sqrt(2/4), pstd = 3·sqrt(0.5);
    // ±1/pstd = ±0.471405 → 0.5 ± 0.188562.
    Matrix<float> X = matrix(2, 2, {1, 3, 0, 0});
    normalize_samples(X, Normalize::ufldl, SourceType::f32);
    EXPECT_NEAR(X(0, 0), 0.311438f, 1e-5);
    EXPECT_NEAR(X(0, 1), 0.688562f, 1e-5);
    EXPECT_NEAR(X(1, 0), 0.5f, 1e-6);
    EXPECT_NEAR(X(1, 1), 0.5f, 1e-6);

    // One row of 17: [17, 0 × 16] → centred [16, -1 × 16]; var = (256 + 16)/17 = 16, pstd = 12.
    // 16 is clipped to 12 → 0.9; -1/12 → (11/12)·0.4 + 0.1 = 0.466667.
    std::vector<float> v(17, 0.0f);
    v[0] = 17;
    Matrix<float> Y = matrix(1, 17, v);
    normalize_samples(Y, Normalize::ufldl, SourceType::f32);
    EXPECT_NEAR(Y(0, 0), 0.9f, 1e-6);
    for (int j = 1; j < 17; ++j) EXPECT_NEAR(Y(0, j), 0.4666667f, 1e-6) << j;

    // Every row constant → all zero after centring → 0.5.
    Matrix<float> Z = matrix(2, 3, {1, 1, 1, 5, 5, 5});
    normalize_samples(Z, Normalize::ufldl, SourceType::u8);
    for (float z : Z.data) EXPECT_EQ(z, 0.5f);
}

TEST(Normalize, UfldlMatchesIndependentComputation) {
    const int n = 6, d = 9;
    std::vector<float> v(n * d);
    for (int k = 0; k < n * d; ++k) v[size_t(k)] = float(std::sin(k * 1.7) * 3 + (k % d) * 0.25 + (k / d));
    v[13] = 40.0f;  // outliers that get clipped
    v[40] = -35.0f;
    Matrix<float> X = matrix(n, d, v);
    normalize_samples(X, Normalize::ufldl, SourceType::f32);

    // Centre with per-row sums, std from E[x²] − E[x]², clip with branches.
    std::vector<double> c(v.begin(), v.end());
    double s = 0, s2 = 0;
    for (int i = 0; i < n; ++i) {
        double row = 0;
        for (int j = 0; j < d; ++j) row += c[size_t(i * d + j)];
        for (int j = 0; j < d; ++j) {
            double& x = c[size_t(i * d + j)];
            x -= row / d;
            s += x;
            s2 += x * x;
        }
    }
    const double N = n * d, sd = std::sqrt(s2 / N - (s / N) * (s / N)), lim = 3 * sd;
    int clipped = 0;
    for (size_t k = 0; k < c.size(); ++k) {
        double x = c[k];
        if (x > lim) x = lim, ++clipped;
        if (x < -lim) x = -lim, ++clipped;
        const double expect = 0.1 + 0.8 * (x / lim + 1) / 2;
        EXPECT_NEAR(X.data[k], expect, 1e-5) << k;
        EXPECT_GE(X.data[k], 0.1f - 1e-6f);
        EXPECT_LE(X.data[k], 0.9f + 1e-6f);
    }
    EXPECT_GE(clipped, 2);
}

TEST(CheckFinite, ReportsPositionAndKind) {
    Matrix<float> X = matrix(2, 3, {0, 1, 2, 3, 4, 5});
    EXPECT_NO_THROW(check_finite(X, "train.npy"));
    X(1, 2) = std::numeric_limits<float>::quiet_NaN();
    std::string msg = sae_test::error_of([&] { check_finite(X, "train.npy"); });
    EXPECT_EQ(msg.rfind("train.npy: sample 1, feature 2", 0), 0u) << msg;
    EXPECT_NE(msg.find("NaN"), std::string::npos) << msg;

    X(1, 2) = 0;
    X(0, 1) = -std::numeric_limits<float>::infinity();
    msg = sae_test::error_of([&] { check_finite(X, "train.npy"); });
    EXPECT_EQ(msg.rfind("train.npy: sample 0, feature 1", 0), 0u) << msg;
    EXPECT_NE(msg.find("inf"), std::string::npos) << msg;
}
