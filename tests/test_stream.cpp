// Streaming .npy shards: header-only parsing, float16/bfloat16 conversion, the shuffle buffer's
// order (every sample once per epoch, determinism), checkpoints, input errors, and the resident
// memory bound (measured in a forked child). Shard files are built byte by byte here, so the
// expected values do not come from the code under test.
//
// The full-scale memory check runs only when SAE_STREAM_BENCH_MIB is set (see
// bench/stream_bench.sh): StreamBench.FullScale.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "sae/data.hpp"
#include "sae/error.hpp"
#include "sae/stream.hpp"
#include "test_util.hpp"

using namespace sae;
using sae_test::temp_dir;
using sae_test::write_bytes;

namespace {

std::string u16le(uint32_t v) { return {char(v & 0xff), char(v >> 8)}; }

// numpy.save style v1.0 file: header padded with spaces and '\n' to a multiple of 64 bytes.
std::string npy_header(const std::string& descr, const std::string& shape) {
    std::string h = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
    while ((10 + h.size() + 1) % 64 != 0) h += ' ';
    h += '\n';
    return std::string("\x93NUMPY\x01\x00", 8) + u16le(uint32_t(h.size())) + h;
}
std::string shape2(int64_t rows, int64_t d) { return "(" + std::to_string(rows) + ", " + std::to_string(d) + ")"; }

// The value of global sample i, column j (d >= 3): small integers, exact in float16 and bfloat16;
// columns 0..2 spell i in base 128.
float enc(int64_t i, int64_t j) {
    if (j == 0) return float(i % 128);
    if (j == 1) return float((i / 128) % 128);
    if (j == 2) return float(i / 16384);
    return float((i + j) % 251);
}
int64_t dec(const float* row) { return int64_t(row[0]) + 128 * int64_t(row[1]) + 16384 * int64_t(row[2]); }

// IEEE binary16 bits of an integer 0 <= n < 2048, by hand.
uint16_t f16_of_int(int n) {
    if (n == 0) return 0;
    int e = 0;
    while ((n >> (e + 1)) != 0) ++e;  // n in [2^e, 2^(e+1))
    return uint16_t(((e + 15) << 10) | ((n << (10 - e)) & 0x3ff));
}
// bfloat16 bits of an integer 0 <= n < 256: the top half of its float32 bits (exact).
uint16_t bf16_of_int(int n) {
    const uint32_t b = std::bit_cast<uint32_t>(float(n));
    if (b & 0xffff) throw std::runtime_error("not exact in bfloat16");
    return uint16_t(b >> 16);
}

enum class Dt { f32, f16, bf16 };

// A shard of rows [first, first + rows) in the enc() encoding.
std::string shard_bytes(Dt dt, int64_t first, int64_t rows, int64_t d, const char* v2 = "<V2") {
    std::string b = npy_header(dt == Dt::f32 ? "<f4" : dt == Dt::f16 ? "<f2" : v2, shape2(rows, d));
    for (int64_t i = first; i < first + rows; ++i)
        for (int64_t j = 0; j < d; ++j) {
            const float v = enc(i, j);
            if (dt == Dt::f32) b.append(reinterpret_cast<const char*>(&v), 4);
            else b += u16le(dt == Dt::f16 ? f16_of_int(int(v)) : bf16_of_int(int(v)));
        }
    return b;
}

// A large float32 shard written in chunks (enc() values), optionally evicted from the page cache.
void write_big_shard(const std::string& path, int64_t first, int64_t rows, int64_t d, bool evict) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr) << path;
    const std::string h = npy_header("<f4", shape2(rows, d));
    std::fwrite(h.data(), 1, h.size(), f);
    std::vector<float> chunk(size_t(256 * d));
    for (int64_t r = 0; r < rows; r += 256) {
        const int64_t n = std::min<int64_t>(256, rows - r);
        for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < d; ++j) chunk[size_t(i * d + j)] = enc(first + r + i, j);
        ASSERT_EQ(std::fwrite(chunk.data(), sizeof(float), size_t(n * d), f), size_t(n * d));
    }
    std::fflush(f);
    if (evict) {
        ::fsync(::fileno(f));
        ::posix_fadvise(::fileno(f), 0, 0, POSIX_FADV_DONTNEED);
    }
    ASSERT_EQ(std::fclose(f), 0);
}

struct Dir {
    std::string dir;
    explicit Dir(const std::string& tag = "stream") : dir(temp_dir(tag)) {}
    ~Dir() { std::filesystem::remove_all(dir); }
    std::string put(const std::string& name, const std::string& bytes) const {
        const std::string p = dir + "/" + name;
        write_bytes(p, bytes);
        return p;
    }
};

struct Draw {
    std::vector<float> x;
    std::vector<int64_t> ids;
};
// n samples in batches of `batch` (the last one partial).
Draw draw(StreamSource& s, int64_t n, int64_t batch) {
    Draw r;
    r.x.resize(size_t(n * s.d_in()));
    r.ids.resize(size_t(n));
    for (int64_t at = 0; at < n; at += batch) {
        const int64_t m = std::min(batch, n - at);
        s.next_batch(r.x.data() + at * s.d_in(), m, r.ids.data() + at);
    }
    return r;
}

// Samples [from, from + N) of d are each global index exactly once, with matching contents.
void expect_one_epoch(const Draw& r, int64_t from, int64_t N, int64_t d) {
    std::vector<int> seen(size_t(N), 0);
    for (int64_t t = from; t < from + N; ++t) {
        const int64_t id = r.ids[size_t(t)];
        ASSERT_TRUE(id >= 0 && id < N) << id;
        ++seen[size_t(id)];
        const float* row = r.x.data() + t * d;
        for (int64_t j = 0; j < d; ++j) ASSERT_EQ(row[j], enc(id, j)) << "sample " << id << " column " << j;
    }
    for (int64_t i = 0; i < N; ++i) ASSERT_EQ(seen[size_t(i)], 1) << "sample " << i;
}

uint32_t bits(float f) { return std::bit_cast<uint32_t>(f); }

}  // namespace

// ---------------------------------------------------------------- header and conversions

TEST(StreamNpy, HeaderOnlyAndHalfTypes) {
    Dir fs;
    const std::string p = fs.put("a.npy", shard_bytes(Dt::f16, 0, 5, 3));
    NpyHeader h = npy_read_header(p);
    EXPECT_EQ(h.shape, (std::vector<int64_t>{5, 3}));
    EXPECT_EQ(h.dtype, NpyDtype::f16);
    EXPECT_EQ(h.descr, "<f2");
    EXPECT_EQ(h.item_size, 2u);
    EXPECT_EQ(h.data_offset, 128u);  // numpy.save pads the header to a multiple of 64
    EXPECT_EQ(h.numel, 15);
    EXPECT_EQ(h.data_bytes(), 30u);

    // The header parser on a prefix only: the data need not be there.
    const std::string whole = shard_bytes(Dt::f32, 0, 1000, 4);
    h = npy_parse_header(whole.substr(0, 128), whole.size(), "mem");
    EXPECT_EQ(h.shape, (std::vector<int64_t>{1000, 4}));
    EXPECT_EQ(h.dtype, NpyDtype::f32);
    sae_test::expect_error_line([&] { npy_parse_header(whole.substr(0, 100), whole.size(), "mem"); }, "mem", {"header needs 128"});

    // npy_parse reads float16, and bfloat16 given the hint.
    Array a = npy_parse(shard_bytes(Dt::f16, 7, 2, 3), "f16");
    EXPECT_EQ(a.source, SourceType::f16);
    EXPECT_EQ(a.values, (std::vector<float>{7, 0, 0, 8, 0, 0}));
    a = npy_parse(shard_bytes(Dt::bf16, 130, 1, 4), "bf16", "bfloat16");
    EXPECT_EQ(a.source, SourceType::bf16);
    EXPECT_EQ(a.values, (std::vector<float>{2, 1, 0, 133 % 251}));
    sae_test::expect_error_line([] { npy_parse(shard_bytes(Dt::bf16, 0, 1, 3), "v2"); }, "v2",
                 {"'<V2'", "raw 2-byte", "bfloat16", "dtype_hint", "astype"});
    sae_test::expect_error_line([] { npy_parse(shard_bytes(Dt::f32, 0, 1, 3), "x", "float8"); }, "x", {"'float8'", "unknown"});

    const std::string v2 = fs.put("b.npy", shard_bytes(Dt::bf16, 0, 2, 3, "|V2"));
    sae_test::expect_error_line([&] { npy_read_header(v2); }, v2, {"'|V2'", "dtype_hint"});
    EXPECT_EQ(npy_read_header(v2, "bfloat16").dtype, NpyDtype::bf16);
    // The hint does not change self-describing dtypes.
    EXPECT_EQ(npy_read_header(p, "bfloat16").dtype, NpyDtype::f16);

    std::string cut = shard_bytes(Dt::f32, 0, 3, 3);
    const std::string t = fs.put("cut.npy", cut.substr(0, cut.size() - 4));
    sae_test::expect_error_line([&] { npy_read_header(t); }, t, {"36 bytes", "only 32 bytes", "truncated"});
    const std::string l = fs.put("long.npy", cut + "xy");
    sae_test::expect_error_line([&] { npy_read_header(l); }, l, {"2 trailing bytes"});
    const std::string g = fs.put("gz.npy", std::string("\x1f\x8b\x08\x00", 4) + std::string(30, '\0'));
    sae_test::expect_error_line([&] { npy_read_header(g); }, g, {"gzip", "gunzip"});
    const std::string e = fs.put("empty.npy", "");
    sae_test::expect_error_line([&] { npy_read_header(e); }, e, {"empty"});
    sae_test::expect_error_line([&] { npy_read_header(fs.dir); }, fs.dir, {"not a regular file"});
    const std::string tiny = fs.put("tiny.npy", std::string("\x93NUMPY\x01\x00\x05\x00{}", 12));  // header length 5 > what is left
    sae_test::expect_error_line([&] { npy_read_header(tiny); }, tiny, {"header length 5", "beyond the end"});
}

TEST(StreamNpy, HalfConversionsExact) {
    struct Case {
        uint16_t h;
        float f;
    };
    const Case half[] = {{0x3c00, 1.0f},         {0xc000, -2.0f},         {0x7bff, 65504.0f},
                         {0x0001, 0x1p-24f},     {0x03ff, 0x1.ff8p-15f},  {0x0400, 0x1p-14f},
                         {0x8000, -0.0f},        {0x3555, 0x1.554p-2f},   {0x7c00, INFINITY},
                         {0xfc00, -INFINITY},    {0x0000, 0.0f},          {0x8001, -0x1p-24f}};
    for (const auto& c : half) EXPECT_EQ(bits(f16_to_f32(c.h)), bits(c.f)) << std::hex << c.h;
    EXPECT_EQ(bits(f16_to_f32(0x7e00)), 0x7fc00000u);
    EXPECT_EQ(bits(f16_to_f32(0xfe01)), 0xffc02000u);  // sign and payload kept
    const Case bf[] = {{0x3f80, 1.0f},     {0xc020, -2.5f},     {0x4049, 3.140625f}, {0x0001, 0x1p-133f},
                       {0x7f7f, 0x1.fep127f}, {0x8000, -0.0f},  {0xff80, -INFINITY}};
    for (const auto& c : bf) EXPECT_EQ(bits(bf16_to_f32(c.h)), bits(c.f)) << std::hex << c.h;
    EXPECT_EQ(bits(bf16_to_f32(0x7fc0)), 0x7fc00000u);
    // The test's own encoders agree with the hand values.
    EXPECT_EQ(f16_of_int(1), 0x3c00);
    EXPECT_EQ(f16_of_int(2047), 0x67ff);
    EXPECT_EQ(bf16_of_int(1), 0x3f80);
}

TEST(Stream, Float16AndBfloat16ShardsExact) {
    Dir fs;
    const uint16_t h16[3][4] = {{0x3c00, 0xc000, 0x7bff, 0x0001}, {0x03ff, 0x0400, 0x8000, 0x3555},
                                {0x7c00, 0xfc00, 0x7e00, 0x0000}};
    const float f16v[3][4] = {{1.0f, -2.0f, 65504.0f, 0x1p-24f}, {0x1.ff8p-15f, 0x1p-14f, -0.0f, 0x1.554p-2f},
                              {INFINITY, -INFINITY, std::bit_cast<float>(0x7fc00000u), 0.0f}};
    const uint16_t hb[2][4] = {{0x3f80, 0xc020, 0x4049, 0x0001}, {0x7f7f, 0x8000, 0xff80, 0x7fc0}};
    const float bfv[2][4] = {{1.0f, -2.5f, 3.140625f, 0x1p-133f},
                             {0x1.fep127f, -0.0f, -INFINITY, std::bit_cast<float>(0x7fc00000u)}};
    std::string a = npy_header("<f2", "(3, 4)"), b = npy_header("<V2", "(2, 4)");
    for (auto& row : h16)
        for (uint16_t v : row) a += u16le(v);
    for (auto& row : hb)
        for (uint16_t v : row) b += u16le(v);
    fs.put("a.npy", a);
    fs.put("b.npy", b);

    StreamOptions o;
    o.pattern = fs.dir + "/*.npy";
    sae_test::expect_error_line([&] { StreamSource s(o); }, fs.dir + "/b.npy", {"'<V2'", "dtype_hint"});
    o.dtype_hint = "bfloat16";
    o.buffer_samples = 3;
    StreamSource s(o);
    ASSERT_EQ(s.num_samples(), 5);
    ASSERT_EQ(s.d_in(), 4);
    EXPECT_EQ(s.shards()[1].dtype, NpyDtype::bf16);
    const Draw r = draw(s, 10, 3);  // two epochs
    for (int t = 0; t < 10; ++t) {
        const int64_t id = r.ids[size_t(t)];
        const float* want = id < 3 ? f16v[id] : bfv[id - 3];
        for (int j = 0; j < 4; ++j)
            EXPECT_EQ(bits(r.x[size_t(t * 4 + j)]), bits(want[j])) << "sample " << id << " column " << j;
    }
}

// ---------------------------------------------------------------- order

TEST(Stream, EverySampleOncePerEpoch) {
    Dir fs;
    const int64_t d = 5, rows[] = {1000, 37, 2500, 1};
    int64_t first = 0;
    for (int i = 0; i < 4; ++i) {
        fs.put("s" + std::to_string(i) + ".npy", shard_bytes(i % 2 ? Dt::f16 : Dt::f32, first, rows[i], d));
        first += rows[i];
    }
    const int64_t N = first;
    struct Setting {
        int64_t buffer, block, batch;
    };
    for (const Setting& st : {Setting{300, 64, 97}, Setting{1, 64, 10}, Setting{100000, 0, 256}, Setting{1, 1, 1},
                              Setting{50, 7, N}}) {
        SCOPED_TRACE("buffer " + std::to_string(st.buffer) + " block " + std::to_string(st.block));
        StreamOptions o;
        o.pattern = fs.dir + "/s*.npy";
        o.buffer_samples = st.buffer;
        o.block_samples = st.block;
        o.seed = 11;
        StreamSource s(o);
        ASSERT_EQ(s.num_samples(), N);
        ASSERT_EQ(s.buffer_slots(), std::min(st.buffer, N));
        const Draw r = draw(s, 3 * N, st.batch);
        for (int e = 0; e < 3; ++e) expect_one_epoch(r, e * N, N, d);
        EXPECT_EQ(s.epoch(), 2u);
        EXPECT_EQ(s.position(), N);
        const std::vector<int64_t> e0(r.ids.begin(), r.ids.begin() + N), e1(r.ids.begin() + N, r.ids.begin() + 2 * N);
        EXPECT_NE(e0, e1) << "epochs should differ in order";
        if (st.block == 0) {
            EXPECT_EQ(s.block_samples(), (int64_t(1) << 20) / (d * 4));
        }
        if (st.buffer == 1) {  // no shuffling beyond the block order: rows of a block come in file order
            const int64_t bs = s.block_samples();
            for (int64_t t = 1; t < N; ++t)
                if (r.ids[size_t(t)] != r.ids[size_t(t - 1)] + 1) {
                    // a jump: must be the start of a block within its shard
                    const int64_t id = r.ids[size_t(t)];
                    int64_t f = 0;
                    for (int64_t rw : rows) {
                        if (id < f + rw) break;
                        f += rw;
                    }
                    EXPECT_EQ((id - f) % bs, 0) << "t " << t << " id " << id;
                }
        } else {
            EXPECT_FALSE(std::is_sorted(e0.begin(), e0.end()));
        }
    }
}

TEST(Stream, SameSeedSameBitsDifferentSeedDifferent) {
    Dir fs;
    fs.put("a.npy", shard_bytes(Dt::f32, 0, 700, 6));
    fs.put("b.npy", shard_bytes(Dt::f16, 700, 500, 6));
    StreamOptions o;
    o.pattern = fs.dir + "/*.npy";
    o.buffer_samples = 128;
    o.block_samples = 32;
    o.seed = 5;
    const int64_t n = 3000;  // 2.5 epochs
    StreamSource a(o), b(o);
    const Draw ra = draw(a, n, 64), rb = draw(b, n, 100);  // batch size does not matter
    ASSERT_EQ(ra.x.size(), rb.x.size());
    EXPECT_EQ(std::memcmp(ra.x.data(), rb.x.data(), ra.x.size() * sizeof(float)), 0);
    EXPECT_EQ(ra.ids, rb.ids);

    o.seed = 6;
    StreamSource c(o);
    EXPECT_NE(draw(c, n, 64).ids, ra.ids);
    o.seed = 5;
    o.buffer_samples = 127;
    StreamSource e(o);
    EXPECT_NE(draw(e, n, 64).ids, ra.ids);
}

TEST(Stream, GlobSeveralShardsSortedMixedTypes) {
    Dir fs;
    // Written out of order; glob sorts by name. Non-matching files are ignored.
    fs.put("acts-02.npy", shard_bytes(Dt::bf16, 300, 50, 3));
    fs.put("acts-00.npy", shard_bytes(Dt::f32, 0, 120, 3));
    fs.put("acts-01.npy", shard_bytes(Dt::f16, 120, 180, 3));
    fs.put("other.npy", shard_bytes(Dt::f32, 0, 10, 7));
    fs.put("acts-notes.txt", "not a shard");
    StreamOptions o;
    o.pattern = fs.dir + "/acts-*.npy";
    o.dtype_hint = "bfloat16";
    o.buffer_samples = 64;
    o.block_samples = 16;
    StreamSource s(o);
    ASSERT_EQ(s.shards().size(), 3u);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(s.shards()[size_t(i)].path, fs.dir + "/acts-0" + std::to_string(i) + ".npy");
    EXPECT_EQ(s.shards()[1].first_row, 120);
    EXPECT_EQ(s.shards()[2].first_row, 300);
    EXPECT_EQ(s.num_samples(), 350);
    const Draw r = draw(s, 700, 33);
    expect_one_epoch(r, 0, 350, 3);
    expect_one_epoch(r, 350, 350, 3);
    for (size_t t = 0; t < r.ids.size(); ++t) EXPECT_EQ(dec(&r.x[t * 3]), r.ids[t]);

    // A single path (no glob characters) works too.
    o.pattern = fs.dir + "/acts-01.npy";
    StreamSource one(o);
    EXPECT_EQ(one.num_samples(), 180);
    EXPECT_EQ(one.shards()[0].first_row, 0);
}

// ---------------------------------------------------------------- checkpoints

TEST(Stream, RestoreGivesTheSameFollowingBatches) {
    Dir fs;
    fs.put("a.npy", shard_bytes(Dt::f32, 0, 400, 4));
    fs.put("b.npy", shard_bytes(Dt::f16, 400, 333, 4));
    StreamOptions o;
    o.pattern = fs.dir + "/*.npy";
    o.buffer_samples = 100;
    o.block_samples = 24;
    o.seed = 42;
    const int64_t N = 733;
    // Before the buffer is full, inside the fill, mid-epoch, while draining, at the epoch end,
    // and in later epochs.
    for (int64_t cut : {int64_t(0), int64_t(1), int64_t(99), int64_t(100), int64_t(365), N - 50, N - 1, N, N + 17,
                        2 * N + 300}) {
        SCOPED_TRACE("cut " + std::to_string(cut));
        StreamSource a(o);
        draw(a, cut, 13);
        const std::string st = a.state();
        EXPECT_EQ(a.epoch(), uint64_t(cut == 0 ? 0 : (cut - 1) / N));
        const Draw want = draw(a, 500, 50);

        StreamSource b(o);
        b.set_state(st);
        EXPECT_EQ(b.state(), st);
        const Draw got = draw(b, 500, 50);
        EXPECT_EQ(got.ids, want.ids);
        EXPECT_EQ(std::memcmp(got.x.data(), want.x.data(), got.x.size() * sizeof(float)), 0);

        // Restoring a stream that has moved on works the same.
        b.set_state(st);
        EXPECT_EQ(draw(b, 500, 7).ids, want.ids);
        // seek() with the numbers in the state.
        StreamSource c(o);
        c.seek(3, 5);  // from anywhere
        c.seek(uint64_t(cut == 0 ? 0 : (cut - 1) / N), cut == 0 ? 0 : (cut - 1) % N + 1);
        EXPECT_EQ(draw(c, 500, 50).ids, want.ids);
    }
    // Checkpoints from other settings or damaged text are refused.
    StreamSource a(o);
    draw(a, 10, 10);
    const std::string st = a.state();
    o.seed = 43;
    StreamSource other(o);
    sae_test::expect_error_line([&] { other.set_state(st); }, "stream state", {"seed 42", "has 43", "same data"});
    o.seed = 42;
    o.buffer_samples = 99;
    StreamSource other2(o);
    sae_test::expect_error_line([&] { other2.set_state(st); }, "stream state", {"buffer 100", "has 99"});
    for (const std::string& bad : {std::string(""), std::string("stream1"), st + " x", st.substr(0, st.size() - 3),
                                  std::string("stream1 seed=42 buffer=100 block=24 d_in=4 samples=733 epoch=0 position=734"),
                                  std::string("stream1 seed=42 buffer=100 block=24 d_in=4 samples=733 epoch=0 position=-1")})
        EXPECT_NE(sae_test::error_of([&] { a.set_state(bad); }).find("malformed"), std::string::npos) << bad;
    sae_test::expect_error_line([&] { a.seek(0, N + 1); }, "stream", {"position 734", "733 samples"});
}

// A data replica's view (next_part): the same ids as the whole stream and the same values in its
// rows of each batch, across the fill, the drain and epochs, and after a restore; the others'
// rows are not written; mixing the two uses is refused.
TEST(Stream, PartReadsItsRowsOfTheSameBatches) {
    Dir fs;
    fs.put("a.npy", shard_bytes(Dt::f32, 0, 400, 4));
    fs.put("b.npy", shard_bytes(Dt::f16, 400, 333, 4));
    StreamOptions o;
    o.pattern = fs.dir + "/*.npy";
    o.buffer_samples = 100;
    o.block_samples = 24;
    o.seed = 42;
    const int64_t B = 64, d = 4;
    for (auto [begin, count] : std::vector<std::pair<int64_t, int64_t>>{{0, 22}, {22, 21}, {43, 21}}) {
        SCOPED_TRACE("rows " + std::to_string(begin) + " +" + std::to_string(count));
        StreamSource whole(o), part(o);
        std::vector<float> xw(size_t(B * d)), xp(size_t(B * d), -7.0f);
        std::vector<int64_t> iw(static_cast<size_t>(B)), ip(static_cast<size_t>(B));
        std::string at;
        for (int batch = 0; batch < 30; ++batch) {  // 1920 samples: two epochs and a half
            whole.next_batch(xw.data(), B, iw.data());
            part.next_part(xp.data(), B, begin, count, ip.data());
            ASSERT_EQ(ip, iw) << batch;
            for (int64_t i = 0; i < B; ++i)
                for (int64_t k = 0; k < d; ++k) {
                    const float v = xp[size_t(i * d + k)];
                    if (i >= begin && i < begin + count) ASSERT_EQ(v, xw[size_t(i * d + k)]) << batch << " " << i;
                    else ASSERT_EQ(v, -7.0f) << "another replica's row was written";
                }
            if (batch == 17) at = part.state();
        }
        EXPECT_EQ(part.state(), whole.state());
        // Restored (ids only, nothing read for the buffer): the same following batches.
        StreamSource again(o), ref(o);
        again.set_ids_only();
        again.set_state(at);
        ref.set_state(at);
        for (int batch = 0; batch < 5; ++batch) {
            ref.next_batch(xw.data(), B, iw.data());
            again.next_part(xp.data(), B, begin, count, ip.data());
            ASSERT_EQ(ip, iw);
            ASSERT_EQ(std::memcmp(xp.data() + begin * d, xw.data() + begin * d, size_t(count * d) * sizeof(float)), 0);
        }
        EXPECT_NE(sae_test::error_of([&] { again.next_batch(xw.data(), B); }).find("next_batch after next_part"), std::string::npos);
    }
    StreamSource used(o);
    std::vector<float> x(size_t(B * d));
    std::vector<int64_t> ids(static_cast<size_t>(B));
    used.next_batch(x.data(), 10);
    EXPECT_NE(sae_test::error_of([&] { used.next_part(x.data(), B, 0, 4, ids.data()); }).find("next_part after next_batch"),
              std::string::npos);
    EXPECT_NE(sae_test::error_of([&] { StreamSource(o).next_part(x.data(), B, 60, 5, ids.data()); }).find("not a part"),
              std::string::npos);
}

// ---------------------------------------------------------------- bad input

TEST(Stream, BadInputsNameTheFile) {
    Dir fs;
    const std::string good = shard_bytes(Dt::f32, 0, 10, 4);
    const std::string data160 = good.substr(good.size() - 160);  // its 40 float32 values
    StreamOptions o;
    auto make_stream = [&](const std::string& pattern) {
        o.pattern = pattern;
        StreamSource s(o);
    };
    {  // truncated shard (data cut short), next to a good one
        Dir d;
        d.put("a.npy", good);
        const std::string p = d.put("b.npy", good.substr(0, good.size() - 6));
        sae_test::expect_error_line([&] { make_stream(d.dir + "/*.npy"); }, p, {"160 bytes", "only 154 bytes", "truncated"});
    }
    {  // cut inside the header
        const std::string p = fs.put("hdr.npy", good.substr(0, 40));
        sae_test::expect_error_line([&] { make_stream(p); }, p, {"header length", "beyond the end"});
    }
    {  // the header claims more rows than the file holds
        const std::string p = fs.put("claims.npy", npy_header("<f4", "(1000, 4)") + data160);
        sae_test::expect_error_line([&] { make_stream(p); }, p, {"4000 <f4 values", "16000 bytes", "only 160", "truncated"});
    }
    {  // mismatched d_in
        Dir d;
        d.put("a.npy", good);
        const std::string p = d.put("b.npy", shard_bytes(Dt::f32, 10, 10, 5));
        sae_test::expect_error_line([&] { make_stream(d.dir + "/*.npy"); }, p, {"d_in 5", "(10, 5)", d.dir + "/a.npy has 4", "same number"});
    }
    {  // unsupported dtypes
        std::string p = fs.put("i4.npy", npy_header("<i4", "(10, 4)") + data160);
        sae_test::expect_error_line([&] { make_stream(p); }, p, {"'<i4' is not supported", "astype"});
        p = fs.put("f8.npy", npy_header("<f8", "(5, 4)") + data160);
        sae_test::expect_error_line([&] { make_stream(p); }, p, {"'<f8' cannot be streamed", "astype(np.float32)"});
        p = fs.put("u1.npy", npy_header("|u1", "(10, 4)") + std::string(40, '\1'));
        sae_test::expect_error_line([&] { make_stream(p); }, p, {"'|u1' cannot be streamed"});
        p = fs.put("v2.npy", shard_bytes(Dt::bf16, 0, 3, 3));
        sae_test::expect_error_line([&] { make_stream(p); }, p, {"'<V2'", "dtype_hint = \"bfloat16\""});
        p = fs.put("be.npy", npy_header(">f2", "(20, 4)") + data160);
        sae_test::expect_error_line([&] { make_stream(p); }, p, {"big-endian", "'>f2'"});
    }
    {  // not 2-d
        const std::string p = fs.put("3d.npy", npy_header("<f4", "(2, 5, 4)") + data160);
        sae_test::expect_error_line([&] { make_stream(p); }, p, {"shape (2, 5, 4)", "2-d"});
        const std::string q = fs.put("1d.npy", npy_header("<f4", "(40,)") + data160);
        sae_test::expect_error_line([&] { make_stream(q); }, q, {"shape (40)", "2-d"});
    }
    {  // nothing matches; a missing plain path; a directory among the matches
        Dir d;
        sae_test::expect_error_line([&] { make_stream(d.dir + "/*.npy"); }, d.dir + "/*.npy", {"no files match"});
        sae_test::expect_error_line([&] { make_stream(d.dir + "/missing.npy"); }, d.dir + "/missing.npy", {"cannot open"});
        std::filesystem::create_directories(d.dir + "/sub.npy");
        sae_test::expect_error_line([&] { make_stream(d.dir + "/*.npy"); }, d.dir + "/sub.npy", {"not a regular file"});
    }
    {  // bad settings
        const std::string p = fs.put("ok.npy", good);
        o.buffer_samples = 0;
        sae_test::expect_error_line([&] { make_stream(p); }, "stream", {"buffer_samples is 0"});
        o.buffer_samples = 10;
        o.block_samples = -1;
        sae_test::expect_error_line([&] { make_stream(p); }, "stream", {"block_samples is -1"});
        o.block_samples = 0;
        o.dtype_hint = "float8";
        sae_test::expect_error_line([&] { make_stream(p); }, "stream", {"dtype_hint 'float8'", "bfloat16"});
        o.dtype_hint = "";
        sae_test::expect_error_line([&] { make_stream(""); }, "stream", {"no data path"});
        o.pattern = p;
        StreamSource s(o);
        float x[4];
        sae_test::expect_error_line([&] { s.next_batch(x, -1); }, "stream", {"negative"});
    }
    {  // a shard changed after validation
        Dir d;
        const std::string p = d.put("a.npy", good);
        o.pattern = p;
        StreamSource s(o);
        write_bytes(p, good.substr(0, 100));
        std::vector<float> x(4);
        sae_test::expect_error_line([&] { s.next_batch(x.data(), 1); }, p, {"changed size", "do not modify"});
    }
}

// ---------------------------------------------------------------- resident memory

namespace {

uint64_t status_kib(const char* key) {
    std::ifstream f("/proc/self/status");
    std::string line;
    const std::string k = std::string(key) + ":";
    while (std::getline(f, line))
        if (line.rfind(k, 0) == 0) return std::strtoull(line.c_str() + k.size(), nullptr, 10);
    return 0;
}

struct EpochMeasure {
    int64_t samples = 0;
    int exact = 0;                  // every sample exactly once, contents matching
    uint64_t base_kib = 0, hwm_kib = 0, bound = 0;
    int peak_was_reset = 0;         // /proc/self/clear_refs accepted "5"
    double seconds = 0;
    char error[400] = {};
};

// Streams one epoch of o in a forked child and reports its peak resident-set growth:
// VmHWM after the epoch minus VmRSS before opening the stream, with the peak first reset to the
// current RSS (if the kernel refuses the reset, the inherited peak can only over-estimate). The
// child's ru_maxrss (from wait4) is returned too, as a cross-check of the absolute peak.
struct ChildUsage {
    long maxrss_kib = 0;
    double cpu_s = 0;  // user + system
};
EpochMeasure measure_epoch(const StreamOptions& o, int64_t N, int64_t d, int64_t batch, ChildUsage* usage) {
    int fds[2];
    EXPECT_EQ(::pipe(fds), 0);
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::close(fds[0]);
        EpochMeasure m;
        try {
            std::vector<uint8_t> seen(size_t(N), 0);
            std::vector<float> out(size_t(batch * d), 0.0f);
            std::vector<int64_t> ids(size_t(batch), 0);
            const int cr = ::open("/proc/self/clear_refs", O_WRONLY);
            if (cr >= 0) {
                m.peak_was_reset = ::write(cr, "5", 1) == 1;
                ::close(cr);
            }
            m.base_kib = status_kib("VmRSS");
            const auto t0 = std::chrono::steady_clock::now();
            StreamSource s(o);
            m.bound = s.resident_bound_bytes();
            bool ok = s.num_samples() == N && s.d_in() == d;
            for (int64_t at = 0; at < N && ok; at += batch) {
                const int64_t n = std::min(batch, N - at);
                s.next_batch(out.data(), n, ids.data());
                for (int64_t i = 0; i < n; ++i) {
                    const int64_t id = ids[size_t(i)];
                    if (id < 0 || id >= N || seen[size_t(id)] || dec(&out[size_t(i * d)]) != id ||
                        out[size_t(i * d + d - 1)] != enc(id, d - 1))
                        ok = false;
                    else
                        seen[size_t(id)] = 1;
                }
                m.samples += n;
            }
            m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            m.exact = ok && m.samples == N;
            m.hwm_kib = status_kib("VmHWM");
        } catch (const std::exception& e) {
            std::snprintf(m.error, sizeof m.error, "%s", e.what());
        }
        const bool sent = ::write(fds[1], &m, sizeof m) == ssize_t(sizeof m);
        ::_exit(sent ? 0 : 3);
    }
    ::close(fds[1]);
    EpochMeasure m;
    size_t got = 0;
    while (got < sizeof m) {
        const ssize_t n = ::read(fds[0], reinterpret_cast<char*>(&m) + got, sizeof m - got);
        if (n <= 0) break;
        got += size_t(n);
    }
    ::close(fds[0]);
    int status = 0;
    struct rusage ru {};
    ::wait4(pid, &status, 0, &ru);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
    EXPECT_EQ(got, sizeof m);
    usage->maxrss_kib = ru.ru_maxrss;
    usage->cpu_s = double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + 1e-6 * double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
    return m;
}

}  // namespace

TEST(Stream, ResidentMemoryStaysUnderTheBound) {
#if defined(__SANITIZE_ADDRESS__)
    const bool check_rss = false;  // AddressSanitizer's shadow memory and quarantine distort RSS
#else
    const bool check_rss = true;
#endif
    // 4 shards of 34 MiB (136 MiB) against a 32 MiB limit: 4.25 x the limit.
    const uint64_t limit = uint64_t(32) << 20;
    const int64_t d = 512, rows = 17408, shards = 4, N = rows * shards;
    Dir fs("stream-rss");
    for (int64_t i = 0; i < shards; ++i)
        write_big_shard(fs.dir + "/part-" + std::to_string(i) + ".npy", i * rows, rows, d, false);
    ASSERT_GE(uint64_t(N * d * 4), 4 * limit);

    StreamOptions o;
    o.pattern = fs.dir + "/part-*.npy";
    o.buffer_samples = 12288;  // 24 MiB of float32
    o.seed = 3;
    ChildUsage u;
    const EpochMeasure m = measure_epoch(o, N, d, 256, &u);
    ASSERT_STREQ(m.error, "");
    EXPECT_TRUE(m.exact);
    EXPECT_EQ(m.samples, N);
    const uint64_t growth = (m.hwm_kib - m.base_kib) << 10;
    std::printf("[ stream  ] %lld MiB of shards, limit %llu MiB, stated bound %.2f MiB, peak RSS growth %.2f MiB "
                "(base %.1f MiB, peak reset %s, child ru_maxrss %.1f MiB), %.2f s\n",
                (long long)(N * d * 4 >> 20), (unsigned long long)(limit >> 20), double(m.bound) / (1 << 20),
                double(growth) / (1 << 20), double(m.base_kib) / 1024, m.peak_was_reset ? "yes" : "no",
                double(u.maxrss_kib) / 1024, m.seconds);
    EXPECT_LE(m.bound, limit);
    if (!check_rss) GTEST_SKIP() << "RSS not checked under AddressSanitizer (the epoch itself was)";
    EXPECT_LE(growth, m.bound);
    // The data could not have been resident as a whole.
    EXPECT_LT(growth * 4, uint64_t(N * d * 4));
}

// Full scale, opt-in: SAE_STREAM_BENCH_MIB (data), SAE_STREAM_BENCH_LIMIT_MIB (default a quarter of
// the data), SAE_STREAM_BENCH_DIR (default: a temp dir), SAE_STREAM_BENCH_D (default 1024).
// Shards are written with fsync and evicted from the page cache, so the epoch reads the disk,
// unless SAE_STREAM_BENCH_WARM=1 (then they are read from the page cache where it holds them).
TEST(StreamBench, FullScale) {
    const char* mib_env = std::getenv("SAE_STREAM_BENCH_MIB");
    if (!mib_env) GTEST_SKIP() << "set SAE_STREAM_BENCH_MIB (see bench/stream_bench.sh)";
    const uint64_t data = std::strtoull(mib_env, nullptr, 10) << 20;
    const char* lim_env = std::getenv("SAE_STREAM_BENCH_LIMIT_MIB");
    const uint64_t limit = lim_env ? std::strtoull(lim_env, nullptr, 10) << 20 : data / 4;
    const char* d_env = std::getenv("SAE_STREAM_BENCH_D");
    const int64_t d = d_env ? std::atoll(d_env) : 1024;
    const char* dir_env = std::getenv("SAE_STREAM_BENCH_DIR");
    const char* warm_env = std::getenv("SAE_STREAM_BENCH_WARM");
    const bool evict = !(warm_env && std::string(warm_env) == "1");
    ASSERT_GE(d, 3);
    const int64_t shard_rows = std::max<int64_t>(1, int64_t((uint64_t(256) << 20) / uint64_t(4 * d)));  // 256 MiB shards
    const int64_t N = int64_t(data / uint64_t(4 * d));
    ASSERT_GT(N, 0);

    std::string dir;
    if (dir_env) {
        dir = std::string(dir_env) + "/sae-stream-bench-" + std::to_string(::getpid());
        std::filesystem::create_directories(dir);
    } else {
        dir = temp_dir("stream-bench");
    }
    struct Cleanup {
        std::string d;
        ~Cleanup() { std::filesystem::remove_all(d); }
    } cleanup{dir};
    const auto t0 = std::chrono::steady_clock::now();
    int shards = 0;
    for (int64_t r = 0; r < N; r += shard_rows, ++shards) {
        char name[32];
        std::snprintf(name, sizeof name, "/part-%05d.npy", shards);
        write_big_shard(dir + name, r, std::min(shard_rows, N - r), d, evict);
    }
    const double write_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    StreamOptions o;
    o.pattern = dir + "/part-*.npy";
    o.seed = 1;
    // The buffer takes what the limit leaves after the window and the constant, with 10% spare.
    const double window = double(uint64_t(1) << 20) + 2 * 4096, fixed = double(2 << 20) + 1024.0 * shards;
    o.buffer_samples = std::max<int64_t>(1, int64_t((0.9 * double(limit) - window - fixed) / double(4 * d + 8)));
    ChildUsage u;
    const EpochMeasure m = measure_epoch(o, N, d, 1024, &u);
    ASSERT_STREQ(m.error, "");
    const uint64_t growth = (m.hwm_kib - m.base_kib) << 10;
    std::printf("[ bench   ] data %.0f MiB in %d shards (d_in %lld, float32, written in %.1f s, %s), limit %.0f MiB, buffer %lld samples, stated bound %.1f MiB\n"
                "[ bench   ] one epoch: %lld samples in %.2f s wall (%.0f MiB/s), child CPU %.2f s, exact once: %s; "
                "peak RSS growth %.1f MiB (child base %.1f MiB, peak reset %s, child ru_maxrss %.1f MiB)\n",
                double(N * d * 4) / (1 << 20), shards, (long long)d, write_s,
                evict ? "evicted from the page cache" : "left in the page cache", double(limit) / (1 << 20),
                (long long)o.buffer_samples, double(m.bound) / (1 << 20), (long long)m.samples, m.seconds,
                double(N * d * 4) / (1 << 20) / m.seconds, u.cpu_s, m.exact ? "yes" : "NO", double(growth) / (1 << 20),
                double(m.base_kib) / 1024, m.peak_was_reset ? "yes" : "no", double(u.maxrss_kib) / 1024);
    EXPECT_TRUE(m.exact);
    EXPECT_LE(m.bound, limit);
    EXPECT_LE(growth, m.bound);
}
