#include "sae/io.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>

#include "sae/error.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using sae_test::read_bytes;
using sae_test::temp_dir;
using sae_test::write_bytes;

namespace {

// u64 little-endian header length + header text + data buffer.
std::string st_bytes(const std::string& header, const std::string& data = "") {
    std::string out(8, '\0');
    const uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) out[i] = char((n >> (8 * i)) & 0xff);
    return out + header + data;
}

// The message of the sae::Error thrown by f; fails the test if none is thrown.
template <class F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const sae::Error& e) {
        return e.what();
    }
    ADD_FAILURE() << "expected sae::Error";
    return "";
}

// Writes bytes to a file, reads it as safetensors, and returns the error message.
std::string st_error(const std::string& bytes) {
    const std::string path = temp_dir("io-bad") + "/bad.safetensors";
    write_bytes(path, bytes);
    const std::string msg = error_of([&] { sae::safetensors_read(path); });
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    EXPECT_NE(msg.find("; "), std::string::npos) << msg;
    return msg;
}

std::vector<std::string> dir_entries(const std::string& dir) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
}

std::string le16s(std::initializer_list<uint16_t> v) {
    std::string s;
    for (uint16_t x : v) s += {char(x & 0xff), char(x >> 8)};
    return s;
}

}  // namespace

TEST(DType, NamesAndSizes) {
    using sae::DType;
    const std::pair<DType, std::pair<const char*, size_t>> expect[] = {
        {DType::u8, {"U8", 1}},   {DType::f16, {"F16", 2}}, {DType::bf16, {"BF16", 2}},
        {DType::f32, {"F32", 4}}, {DType::f64, {"F64", 8}}, {DType::i64, {"I64", 8}}};
    for (const auto& [t, ns] : expect) {
        EXPECT_EQ(sae::dtype_name(t), ns.first);
        EXPECT_EQ(sae::dtype_size(t), ns.second);
    }
}

TEST(SafeTensors, RoundTripAndHeaderLayout) {
    const std::string path = temp_dir("io-st") + "/m.safetensors";
    const std::vector<float> w = {1.5f, -2.25f, 0.0f, 3e-8f, -1e30f, 7.0f};  // [2, 3]
    const std::vector<double> d = {0.1, -1e300, 2.0 / 3.0, 5e-324};          // [4]
    const std::vector<int64_t> ix = {-5, int64_t(1) << 62, 0};               // [3]
    const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "a \"quoted\" value"}};
    sae::safetensors_write(path,
                           {{"zeta.w", {2, 3}, sae::DType::f32, w.data()},
                            {"alpha", {4}, sae::DType::f64, d.data()},
                            {"empty", {0, 5}, sae::DType::f32, nullptr},
                            {"idx", {3}, sae::DType::i64, ix.data()}},
                           meta);

    // Independent look at the bytes.
    const std::string raw = read_bytes(path);
    ASSERT_GE(raw.size(), 8u);
    uint64_t n = 0;
    std::memcpy(&n, raw.data(), 8);
    EXPECT_EQ(n % 8, 0u);
    ASSERT_EQ(raw.size(), 8 + n + 6 * 4 + 4 * 8 + 3 * 8);
    const std::string text = raw.substr(8, n);
    EXPECT_EQ(text.front(), '{');
    const size_t close = text.find_last_of('}');
    EXPECT_LT(n - close - 1, 8u);
    EXPECT_EQ(text.find_first_not_of(' ', close + 1), std::string::npos);
    const auto h = nlohmann::json::parse(text);
    ASSERT_EQ(h.size(), 5u);
    EXPECT_EQ(h["__metadata__"], nlohmann::json(meta));
    const struct {
        const char* name;
        const char* dtype;
        std::vector<int64_t> shape;
        uint64_t begin, end;
    } expect[] = {{"zeta.w", "F32", {2, 3}, 0, 24},
                  {"alpha", "F64", {4}, 24, 56},
                  {"empty", "F32", {0, 5}, 56, 56},
                  {"idx", "I64", {3}, 56, 80}};
    for (const auto& e : expect) {
        SCOPED_TRACE(e.name);
        const auto& t = h.at(e.name);
        EXPECT_EQ(t.size(), 3u);
        EXPECT_EQ(t["dtype"], e.dtype);
        EXPECT_EQ(t["shape"].get<std::vector<int64_t>>(), e.shape);
        EXPECT_EQ(t["data_offsets"].get<std::vector<uint64_t>>(), (std::vector<uint64_t>{e.begin, e.end}));
    }
    const char* data = raw.data() + 8 + n;
    EXPECT_EQ(std::memcmp(data, w.data(), 24), 0);
    EXPECT_EQ(std::memcmp(data + 24, d.data(), 32), 0);
    EXPECT_EQ(std::memcmp(data + 56, ix.data(), 24), 0);

    // Read back.
    const sae::SafeTensors st = sae::safetensors_read(path);
    EXPECT_EQ(st.metadata, meta);
    ASSERT_EQ(st.tensors.size(), 4u);
    const auto& tw = st.tensors.at("zeta.w");
    EXPECT_EQ(tw.dtype, sae::DType::f32);
    EXPECT_EQ(tw.shape, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(tw.numel(), 6);
    EXPECT_EQ(tw.f32, w);
    EXPECT_TRUE(tw.f64.empty() && tw.i64.empty());
    const auto& ta = st.tensors.at("alpha");
    EXPECT_EQ(ta.dtype, sae::DType::f64);
    EXPECT_EQ(ta.f64, d);
    ASSERT_EQ(ta.f32.size(), 4u);
    for (size_t i = 0; i < 4; ++i) EXPECT_EQ(ta.f32[i], float(d[i]));
    EXPECT_TRUE(std::isinf(ta.f32[1]) && ta.f32[1] < 0);
    const auto& te = st.tensors.at("empty");
    EXPECT_EQ(te.shape, (std::vector<int64_t>{0, 5}));
    EXPECT_EQ(te.numel(), 0);
    EXPECT_TRUE(te.f32.empty());
    const auto& ti = st.tensors.at("idx");
    EXPECT_EQ(ti.dtype, sae::DType::i64);
    EXPECT_EQ(ti.i64, ix);
    EXPECT_TRUE(ti.f32.empty());
}

TEST(SafeTensors, NoMetadataKeyWhenEmptyAndScalarShape) {
    const std::string path = temp_dir("io-st") + "/s.safetensors";
    const float x = 42.0f;
    sae::safetensors_write(path, {{"x", {}, sae::DType::f32, &x}});
    const std::string raw = read_bytes(path);
    uint64_t n = 0;
    std::memcpy(&n, raw.data(), 8);
    const auto h = nlohmann::json::parse(raw.substr(8, n));
    EXPECT_FALSE(h.contains("__metadata__"));
    EXPECT_EQ(h["x"]["shape"], nlohmann::json::array());
    const auto st = sae::safetensors_read(path);
    EXPECT_TRUE(st.metadata.empty());
    EXPECT_EQ(st.tensors.at("x").numel(), 1);
    EXPECT_EQ(st.tensors.at("x").f32, std::vector<float>{42.0f});
}

TEST(SafeTensors, HandBuiltHalfBfloatU8) {
    // F16 [3, 4], BF16 [6], U8 [3], laid out in that order: a 24 + 12 + 3 byte buffer.
    const std::string f16 = le16s({0x3C00, 0xC000, 0x7BFF, 0x0001,   // 1, -2, 65504, 2^-24
                                   0x03FF, 0x0400, 0x3555, 0x8000,   // max subnormal, 2^-14, ~1/3, -0
                                   0x7C00, 0xFC00, 0x7E00, 0x3800}); // inf, -inf, nan, 0.5
    const std::string bf16 = le16s({0x3F80, 0x4049, 0xC000, 0x7F80, 0x0001, 0xFF81});
    const std::string u8 = {char(0), char(7), char(255)};
    const std::string header =
        R"({"h":{"dtype":"F16","shape":[3,4],"data_offsets":[0,24]},)"
        R"("b":{"data_offsets":[24,36],"shape":[6],"dtype":"BF16"},)"
        R"("u":{"dtype":"U8","shape":[3],"data_offsets":[36,39]}})";
    const std::string path = temp_dir("io-half") + "/h.safetensors";
    write_bytes(path, st_bytes(header, f16 + bf16 + u8));
    const auto st = sae::safetensors_read(path);

    const auto& h = st.tensors.at("h");
    EXPECT_EQ(h.dtype, sae::DType::f16);
    EXPECT_EQ(h.shape, (std::vector<int64_t>{3, 4}));
    ASSERT_EQ(h.f32.size(), 12u);
    const float inf = std::numeric_limits<float>::infinity();
    const float expect_h[] = {1.0f, -2.0f, 65504.0f, 5.9604644775390625e-08f,
                              6.0975551605224609375e-05f, 6.103515625e-05f, 0.333251953125f, -0.0f,
                              inf, -inf, 0.0f /* nan */, 0.5f};
    for (size_t i = 0; i < 12; ++i) {
        SCOPED_TRACE(i);
        if (i == 10) {
            EXPECT_TRUE(std::isnan(h.f32[i]));
        } else {
            EXPECT_EQ(h.f32[i], expect_h[i]);
            EXPECT_EQ(std::signbit(h.f32[i]), std::signbit(expect_h[i]));
        }
    }
    EXPECT_TRUE(h.f64.empty());

    const auto& b = st.tensors.at("b");
    EXPECT_EQ(b.dtype, sae::DType::bf16);
    ASSERT_EQ(b.f32.size(), 6u);
    EXPECT_EQ(b.f32[0], 1.0f);
    EXPECT_EQ(b.f32[1], 3.140625f);
    EXPECT_EQ(b.f32[2], -2.0f);
    EXPECT_EQ(b.f32[3], inf);
    EXPECT_EQ(b.f32[4], std::ldexp(1.0f, -133));  // float subnormal
    EXPECT_TRUE(std::isnan(b.f32[5]));

    const auto& u = st.tensors.at("u");
    EXPECT_EQ(u.dtype, sae::DType::u8);
    EXPECT_EQ(u.f32, (std::vector<float>{0.0f, 7.0f, 255.0f}));
}

TEST(SafeTensorsBad, TooSmall) {
    EXPECT_NE(st_error("").find("too small"), std::string::npos);
    EXPECT_NE(st_error("\x05\0\0\0\0").find("too small"), std::string::npos);
}

TEST(SafeTensorsBad, HeaderLengthBeyondFile) {
    std::string b = st_bytes("{}");
    const uint64_t huge = uint64_t(1) << 60;
    std::memcpy(b.data(), &huge, 8);
    const std::string msg = st_error(b);
    EXPECT_NE(msg.find("header length 1152921504606846976"), std::string::npos) << msg;
    EXPECT_NE(msg.find("exceeds the file size"), std::string::npos) << msg;
    // One byte too long.
    std::string c = st_bytes("{}");
    c[0] = 3;
    EXPECT_NE(st_error(c).find("header length 3"), std::string::npos);
}

TEST(SafeTensorsBad, InvalidJsonAndNonObject) {
    EXPECT_NE(st_error(st_bytes(R"({"a": )")).find("invalid JSON"), std::string::npos);
    EXPECT_NE(st_error(st_bytes("\x01\x02garbage")).find("invalid JSON"), std::string::npos);
    EXPECT_NE(st_error(st_bytes("{\"a\":\n\n")).find("invalid JSON"), std::string::npos);  // one line
    EXPECT_NE(st_error(st_bytes("[1, 2]")).find("not a JSON object"), std::string::npos);
    EXPECT_NE(st_error(st_bytes(R"({"a": 3})")).find("exactly the keys"), std::string::npos);
    EXPECT_NE(st_error(st_bytes(R"({"a":{"dtype":"F32","shape":[1]}})", "xxxx")).find("exactly the keys"),
              std::string::npos);
    EXPECT_NE(st_error(st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", "xxxx"))
                  .find("exactly the keys"),
              std::string::npos);
}

TEST(SafeTensorsBad, UnknownDtype) {
    const std::string msg =
        st_error(st_bytes(R"({"a":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", "xx"));
    EXPECT_NE(msg.find("unsupported dtype \"F8_E4M3\""), std::string::npos) << msg;
    EXPECT_NE(msg.find("U8, F16, BF16, F32, F64, I64"), std::string::npos) << msg;
    EXPECT_NE(st_error(st_bytes(R"({"a":{"dtype":4,"shape":[2],"data_offsets":[0,2]}})", "xx"))
                  .find("unsupported dtype"),
              std::string::npos);
    // A name with a newline is shown on one line.
    EXPECT_NE(st_error(st_bytes(R"({"a\nb":{"dtype":"Q","shape":[2],"data_offsets":[0,2]}})", "xx"))
                  .find("tensor 'a\\x0ab': unsupported dtype"),
              std::string::npos);
}

TEST(SafeTensorsBad, OffsetsOutOfRange) {
    const std::string msg = st_error(st_bytes(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
                                              std::string(8, '\0')));
    EXPECT_NE(msg.find("outside the data buffer of 8 bytes"), std::string::npos) << msg;
    EXPECT_NE(st_error(st_bytes(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})",
                                std::string(8, '\0')))
                  .find("is after end"),
              std::string::npos);
    EXPECT_NE(st_error(st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", "xxxx"))
                  .find("non-negative integers"),
              std::string::npos);
    EXPECT_NE(st_error(st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", "xxxx"))
                  .find("[begin, end]"),
              std::string::npos);
}

TEST(SafeTensorsBad, Overlap) {
    const std::string msg = st_error(st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                              R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                              std::string(12, '\0')));
    EXPECT_NE(msg.find("tensor 'b' overlaps tensor 'a'"), std::string::npos) << msg;
    // The same region claimed twice.
    EXPECT_NE(st_error(st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                R"("b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                                std::string(4, '\0')))
                  .find("overlaps"),
              std::string::npos);
}

TEST(SafeTensorsBad, Holes) {
    const std::string msg = st_error(st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                              R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                                              std::string(12, '\0')));
    EXPECT_NE(msg.find("hole of 4 bytes before tensor 'b'"), std::string::npos) << msg;
    EXPECT_NE(st_error(st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                std::string(8, '\0')))
                  .find("hole of 4 bytes before tensor 'a'"),
              std::string::npos);
    EXPECT_NE(st_error(st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                                std::string(7, '\0')))
                  .find("hole of 3 unused bytes at the end"),
              std::string::npos);
    EXPECT_NE(st_error(st_bytes("{}", "x")).find("hole of 1 unused bytes"), std::string::npos);
}

TEST(SafeTensorsBad, SizeMismatch) {
    const std::string msg = st_error(st_bytes(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                                              std::string(8, '\0')));
    EXPECT_NE(msg.find("data size 8 bytes does not match shape [3] of F32 (12 bytes)"), std::string::npos)
        << msg;
}

TEST(SafeTensorsBad, BadShapes) {
    std::string msg = st_error(st_bytes(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})"));
    EXPECT_NE(msg.find("shape entry -1 is not a non-negative integer"), std::string::npos) << msg;
    msg = st_error(st_bytes(R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,0]}})"));
    EXPECT_NE(msg.find("shape entry 1.5"), std::string::npos) << msg;
    msg = st_error(st_bytes(R"({"a":{"dtype":"F32","shape":3,"data_offsets":[0,0]}})"));
    EXPECT_NE(msg.find("shape is not an array"), std::string::npos) << msg;
    // 2^32 * 2^32 overflows u64; 2^31 * 2^31 * 4 bytes does too.
    msg = st_error(st_bytes(
        R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})"));
    EXPECT_NE(msg.find("overflows"), std::string::npos) << msg;
    msg = st_error(st_bytes(
        R"({"a":{"dtype":"F32","shape":[2147483648,2147483648],"data_offsets":[0,0]}})"));
    EXPECT_NE(msg.find("overflows"), std::string::npos) << msg;
    // Larger than int64.
    msg = st_error(st_bytes(R"({"a":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,0]}})"));
    EXPECT_NE(msg.find("not a non-negative integer"), std::string::npos) << msg;
    // A huge but non-overflowing shape is just a size mismatch, not an allocation.
    msg = st_error(st_bytes(R"({"a":{"dtype":"U8","shape":[1000000,1000000],"data_offsets":[0,0]}})"));
    EXPECT_NE(msg.find("does not match shape"), std::string::npos) << msg;
}

TEST(SafeTensorsBad, Metadata) {
    std::string msg = st_error(st_bytes(R"({"__metadata__":{"a":"ok","b":1}})"));
    EXPECT_NE(msg.find("__metadata__ value for 'b' is not a string"), std::string::npos) << msg;
    msg = st_error(st_bytes(R"({"__metadata__":["a"]})"));
    EXPECT_NE(msg.find("__metadata__ is not a JSON object"), std::string::npos) << msg;
}

TEST(SafeTensorsBad, MissingFile) {
    const std::string path = temp_dir("io-missing") + "/nope.safetensors";
    const std::string msg = error_of([&] { sae::safetensors_read(path); });
    EXPECT_EQ(msg, path + ": cannot open (No such file or directory); check the path and permissions");
}

TEST(SafeTensorsBad, EveryTruncationAndRandomCorruptionIsHandled) {
    const std::string dir = temp_dir("io-fuzz");
    const std::vector<float> w = {1, 2, 3, 4, 5, 6};
    const std::vector<int64_t> ix = {7, 8};
    sae::safetensors_write(dir + "/m.safetensors",
                           {{"w", {2, 3}, sae::DType::f32, w.data()}, {"i", {2}, sae::DType::i64, ix.data()}},
                           {{"k", "v"}});
    const std::string good = read_bytes(dir + "/m.safetensors");
    for (size_t n = 0; n < good.size(); ++n)
        EXPECT_THROW(sae::safetensors_parse(good.substr(0, n), "t"), sae::Error) << "prefix " << n;
    EXPECT_THROW(sae::safetensors_parse(good + "x", "t"), sae::Error);

    std::mt19937 gen(1234);
    int accepted = 0;
    for (int trial = 0; trial < 3000; ++trial) {
        std::string b = good;
        const int flips = 1 + int(gen() % 3);
        for (int k = 0; k < flips; ++k) b[gen() % b.size()] = char(gen());
        try {
            sae::safetensors_parse(b, "t");
            ++accepted;  // e.g. a changed data byte or metadata character
        } catch (const sae::Error& e) {
            EXPECT_EQ(std::string(e.what()).rfind("t: ", 0), 0u);
        }
    }
    EXPECT_GT(accepted, 0);
}

TEST(SafeTensorsWrite, RejectsBadInput) {
    const std::string dir = temp_dir("io-stw");
    const std::string path = dir + "/x.safetensors";
    const float v[2] = {1, 2};
    using T = sae::TensorOut;
    EXPECT_NE(error_of([&] {
                  sae::safetensors_write(path, {T{"a", {2}, sae::DType::f32, v}, T{"a", {1}, sae::DType::f32, v}});
              }).find("tensor 'a': duplicate name"),
              std::string::npos);
    EXPECT_NE(error_of([&] { sae::safetensors_write(path, {T{"__metadata__", {2}, sae::DType::f32, v}}); })
                  .find("reserved"),
              std::string::npos);
    EXPECT_NE(error_of([&] { sae::safetensors_write(path, {T{"a", {2}, sae::DType::f32, nullptr}}); })
                  .find("null"),
              std::string::npos);
    EXPECT_NE(error_of([&] { sae::safetensors_write(path, {T{"a", {-2}, sae::DType::f32, v}}); })
                  .find("negative dimension -2"),
              std::string::npos);
    EXPECT_NE(error_of([&] {
                  sae::safetensors_write(path, {T{"a", {int64_t(1) << 40, int64_t(1) << 40}, sae::DType::f32, v}});
              }).find("overflows"),
              std::string::npos);
    EXPECT_TRUE(dir_entries(dir).empty());
}

TEST(AtomicFile, CommitReplacesContent) {
    const std::string dir = temp_dir("io-atomic");
    const std::string path = dir + "/f.txt";
    write_bytes(path, "old contents");
    {
        sae::AtomicFile f(path);
        EXPECT_EQ(f.path(), path);
        f.write("new ");
        f.write(std::string("da\0ta", 5));
        EXPECT_EQ(read_bytes(path), "old contents");  // not visible before commit
        f.commit();
    }
    EXPECT_EQ(read_bytes(path), std::string("new da\0ta", 9));
    EXPECT_EQ(dir_entries(dir), std::vector<std::string>{"f.txt"});
}

TEST(AtomicFile, UncommittedLeavesOldFileAndNoTemp) {
    const std::string dir = temp_dir("io-atomic");
    const std::string path = dir + "/f.txt";
    write_bytes(path, "keep me");
    try {
        sae::AtomicFile f(path);
        f.write("partial");
        EXPECT_EQ(dir_entries(dir).size(), 2u);  // the temp file exists meanwhile
        throw std::runtime_error("interrupted");
    } catch (const std::runtime_error&) {
    }
    EXPECT_EQ(read_bytes(path), "keep me");
    EXPECT_EQ(dir_entries(dir), std::vector<std::string>{"f.txt"});

    // No previous file: nothing appears.
    { sae::AtomicFile g(dir + "/new.txt"); g.write("x"); }
    EXPECT_EQ(dir_entries(dir), std::vector<std::string>{"f.txt"});
}

TEST(AtomicFile, UnwritableDirectoryGivesClearError) {
    const std::string dir = temp_dir("io-atomic");
    write_bytes(dir + "/afile", "a regular file");
    const std::string path = dir + "/afile/sub/x";
    std::string msg = error_of([&] { sae::AtomicFile f(path); });
    EXPECT_EQ(msg, path + ": cannot create file (Not a directory); check that the directory exists and is writable");
    msg = error_of([&] { sae::write_file_atomic(dir + "/missing/x", "y"); });
    EXPECT_EQ(msg, dir + "/missing/x: cannot create file (No such file or directory); check that the directory "
                         "exists and is writable");
    msg = error_of([&] { sae::ensure_writable_dir(dir + "/afile/sub"); });
    EXPECT_EQ(msg.rfind(dir + "/afile/sub: cannot create directory (", 0), 0u) << msg;
    msg = error_of([&] { sae::ensure_writable_dir(dir + "/afile"); });
    EXPECT_EQ(msg.rfind(dir + "/afile: ", 0), 0u) << msg;
    EXPECT_EQ(dir_entries(dir), std::vector<std::string>{"afile"});
}

TEST(Files, WriteReadAndEnsureDir) {
    const std::string dir = temp_dir("io-files");
    const std::string bin("\0\x01\xff text\n", 8);
    sae::write_file_atomic(dir + "/b", bin);
    EXPECT_EQ(sae::read_file(dir + "/b"), bin);
    sae::write_file_atomic(dir + "/b", "");
    EXPECT_EQ(sae::read_file(dir + "/b"), "");
    const std::string big(300000, 'z');  // more than one read chunk
    sae::write_file_atomic(dir + "/big", big);
    EXPECT_EQ(sae::read_file(dir + "/big"), big);

    EXPECT_EQ(error_of([&] { sae::read_file(dir + "/none"); }),
              dir + "/none: cannot open (No such file or directory); check the path and permissions");
    EXPECT_EQ(error_of([&] { sae::read_file(dir); }).rfind(dir + ": cannot read (is a directory)", 0), 0u);

    sae::ensure_writable_dir(dir + "/x/y/z");
    EXPECT_TRUE(fs::is_directory(dir + "/x/y/z"));
    EXPECT_TRUE(fs::is_empty(dir + "/x/y/z"));
    sae::ensure_writable_dir(dir + "/x/y/z");  // existing is fine
}

TEST(Npy, WritesExactBytes) {
    const std::string dir = temp_dir("io-npy");
    const std::vector<float> v = {1.0f, -2.5f, 3.25f, 0.0f, 1e-3f, 6.0f};
    struct Case {
        std::vector<int64_t> shape;
        std::string shape_text;
        size_t count;
    };
    for (const Case& c : {Case{{2, 3}, "(2, 3)", 6}, Case{{6}, "(6,)", 6}, Case{{1, 2, 3}, "(1, 2, 3)", 6},
                          Case{{0, 4}, "(0, 4)", 0}}) {
        SCOPED_TRACE(c.shape_text);
        const std::string path = dir + "/a.npy";
        sae::npy_write_f32(path, v.data(), c.shape);
        const std::string raw = read_bytes(path);
        ASSERT_GE(raw.size(), 10u);
        EXPECT_EQ(raw.substr(0, 6), "\x93NUMPY");
        EXPECT_EQ(raw[6], 1);
        EXPECT_EQ(raw[7], 0);
        const size_t hlen = uint8_t(raw[8]) | size_t(uint8_t(raw[9])) << 8;
        EXPECT_EQ((10 + hlen) % 64, 0u);
        ASSERT_EQ(raw.size(), 10 + hlen + 4 * c.count);
        const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': " + c.shape_text + ", }";
        std::string expect_header = dict;
        expect_header.resize(hlen - 1, ' ');
        expect_header += '\n';
        EXPECT_EQ(raw.substr(10, hlen), expect_header);
        EXPECT_EQ(std::memcmp(raw.data() + 10 + hlen, v.data(), 4 * c.count), 0);
    }
    EXPECT_EQ(dir_entries(dir), std::vector<std::string>{"a.npy"});
    EXPECT_NE(error_of([&] { sae::npy_write_f32(dir + "/b.npy", v.data(), {-1, 2}); }).find("negative"),
              std::string::npos);
    EXPECT_NE(error_of([&] { sae::npy_write_f32(dir + "/b.npy", nullptr, {2}); }).find("null"),
              std::string::npos);
}
