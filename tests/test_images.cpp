// Natural images: loading, FFT, whitening, patches, filter grids, edge scores, and the
// `sae patches` / `sae features` commands.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <numbers>

#include "sae/data.hpp"
#include "sae/error.hpp"
#include "sae/images.hpp"
#include "sae/io.hpp"
#include "test_util.hpp"

// Our own static copy of stb (internal linkage): writes test images, decodes the PNGs we write.
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image.h>
#include <stb/stb_image_write.h>
// libpng, to write what stb_image_write cannot: interlaced, 16-bit, palette, grey+alpha PNGs.
#include <png.h>
#include <zlib.h>

#include <csetjmp>

using namespace sae;
using cd = std::complex<double>;

namespace {

const double kPi = std::numbers::pi;

void sink(void* ctx, void* data, int size) { static_cast<std::string*>(ctx)->append(static_cast<char*>(data), size_t(size)); }

std::string png_bytes(int w, int h, int comp, const std::vector<uint8_t>& px) {
    std::string s;
    EXPECT_NE(stbi_write_png_to_func(sink, &s, w, h, comp, px.data(), w * comp), 0);
    return s;
}
std::string jpg_bytes(int w, int h, int comp, const std::vector<uint8_t>& px) {
    std::string s;
    EXPECT_NE(stbi_write_jpg_to_func(sink, &s, w, h, comp, px.data(), 95), 0);
    return s;
}

// A PNG written by libpng: rows of packed samples (each row ceil(w·channels·depth/8) bytes) as
// they go into the file; palette only for PNG_COLOR_TYPE_PALETTE.
std::string libpng_bytes(int w, int h, int color_type, int depth, bool interlaced, const std::vector<uint8_t>& rows,
                         const std::vector<png_color>& palette = {}) {
    std::string out;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
    png_infop info = png_create_info_struct(png);
    std::vector<png_bytep> row_ptrs(static_cast<size_t>(h));  // before setjmp: nothing to destroy after a jump
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        ADD_FAILURE() << "libpng could not write the test image";
        return {};
    }
    png_set_write_fn(
        png, &out,
        [](png_structp p, png_bytep data, size_t n) {
            static_cast<std::string*>(png_get_io_ptr(p))->append(reinterpret_cast<char*>(data), n);
        },
        nullptr);
    png_set_IHDR(png, info, png_uint_32(w), png_uint_32(h), depth, color_type,
                 interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (!palette.empty()) png_set_PLTE(png, info, palette.data(), int(palette.size()));
    png_write_info(png, info);
    const size_t row_bytes = png_get_rowbytes(png, info);
    EXPECT_EQ(rows.size(), row_bytes * size_t(h));
    for (int r = 0; r < h; ++r) row_ptrs[size_t(r)] = const_cast<png_bytep>(rows.data()) + size_t(r) * row_bytes;
    png_write_image(png, row_ptrs.data());
    png_write_end(png, nullptr);
    png_destroy_write_struct(&png, &info);
    return out;
}

// The chunk of type `type` in png rewritten by edit (its data, in place), with its CRC recomputed.
template <class F>
std::string edit_chunk(std::string png, const std::string& type, F&& edit) {
    const size_t at = png.find(type);
    EXPECT_NE(at, std::string::npos) << type;
    const size_t len = (size_t(uint8_t(png[at - 4])) << 24) | (size_t(uint8_t(png[at - 3])) << 16) |
                       (size_t(uint8_t(png[at - 2])) << 8) | uint8_t(png[at - 1]);
    edit(&png[at + 4]);
    const uLong crc = crc32(0, reinterpret_cast<const Bytef*>(&png[at]), uInt(4 + len));
    for (int k = 0; k < 4; ++k) png[at + 4 + len + size_t(k)] = char((crc >> (24 - 8 * k)) & 0xff);
    return png;
}

// Runs f, expects an sae::Error of one line that contains every needle.
template <class F>
void expect_error(F&& f, std::vector<std::string> needles) {
    try {
        f();
        ADD_FAILURE() << "no error; expected one containing " << needles[0];
    } catch (const Error& e) {
        const std::string m = e.what();
        EXPECT_EQ(m.find('\n'), std::string::npos) << m;
        for (const auto& n : needles) EXPECT_NE(m.find(n), std::string::npos) << "'" << n << "' not in: " << m;
    }
}

// One line on stderr starting "sae: error: ", naming what is wrong, and a non-zero exit.
void expect_cli_error(const sae_test::CommandResult& r, const std::string& needle) {
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_EQ(r.err.rfind("sae: error: ", 0), 0u) << r.err;
}

std::string images_dir() { return sae_test::source_dir() + "/data/natural-images"; }

}  // namespace

// --------------------------------------------------------------------------- loading

TEST(Images, LoadsTheShippedPhotographs) {
    const std::map<std::string, int64_t> side = {{"astronaut", 512}, {"brick", 512}, {"camera", 512}, {"chelsea", 300},
                                                 {"coffee", 400},    {"grass", 512}, {"gravel", 512}, {"rocket", 427}};
    const auto paths = image_paths({images_dir()});
    ASSERT_EQ(paths.size(), 8u);
    EXPECT_TRUE(std::is_sorted(paths.begin(), paths.end()));
    for (const auto& p : paths) {
        const std::string stem = std::filesystem::path(p).stem().string();
        ASSERT_TRUE(side.count(stem)) << p;
        const Image im = image_load(p);
        EXPECT_EQ(im.height, side.at(stem)) << p;
        EXPECT_EQ(im.width, side.at(stem)) << p;
        ASSERT_EQ(int64_t(im.pixels.size()), im.height * im.width);
        double lo = 1, hi = 0, mean = 0, var = 0;
        for (float v : im.pixels) {
            lo = std::min(lo, double(v));
            hi = std::max(hi, double(v));
            mean += v;
        }
        mean /= double(im.pixels.size());
        for (float v : im.pixels) var += (v - mean) * (v - mean);
        var /= double(im.pixels.size());
        EXPECT_GE(lo, 0.0);
        EXPECT_LE(hi, 1.0);
        EXPECT_GT(std::sqrt(var), 0.02) << p << ": a photograph has contrast";
        // Values are k/255 exactly (8-bit PNGs).
        for (size_t i = 0; i < im.pixels.size(); i += 997)
            EXPECT_FLOAT_EQ(im.pixels[i] * 255.0f, std::round(im.pixels[i] * 255.0f));
    }
}

TEST(Images, DecodesHandMadePngAndJpeg) {
    const std::string dir = sae_test::temp_dir("img");
    // Gray PNG 5 x 3: exact values.
    std::vector<uint8_t> g(15);
    for (int i = 0; i < 15; ++i) g[size_t(i)] = uint8_t(i * 17);
    sae_test::write_bytes(dir + "/g.png", png_bytes(5, 3, 1, g));
    Image im = image_load(dir + "/g.png");
    ASSERT_EQ(im.width, 5);
    ASSERT_EQ(im.height, 3);
    for (int i = 0; i < 15; ++i) EXPECT_FLOAT_EQ(im.pixels[size_t(i)], float(i * 17) / 255.0f);
    EXPECT_FLOAT_EQ(im.at(2, 4), 14 * 17 / 255.0f);
    // RGBA PNG 2 x 2: luma (77 R + 150 G + 29 B) >> 8, alpha ignored.
    const std::vector<uint8_t> rgba = {255, 0, 0, 10, 0, 255, 0, 255, 0, 0, 255, 0, 200, 100, 50, 128};
    sae_test::write_bytes(dir + "/c.png", png_bytes(2, 2, 4, rgba));
    im = image_load(dir + "/c.png");
    ASSERT_EQ(im.width, 2);
    for (int i = 0; i < 4; ++i) {
        const int r = rgba[size_t(4 * i)], gg = rgba[size_t(4 * i + 1)], b = rgba[size_t(4 * i + 2)];
        EXPECT_FLOAT_EQ(im.pixels[size_t(i)], float((r * 77 + gg * 150 + b * 29) >> 8) / 255.0f) << i;
    }
    // JPEG 16 x 8: a horizontal ramp survives lossy coding within a few levels.
    std::vector<uint8_t> ramp(16 * 8);
    for (int r = 0; r < 8; ++r)
        for (int c = 0; c < 16; ++c) ramp[size_t(r * 16 + c)] = uint8_t(40 + 10 * c);
    sae_test::write_bytes(dir + "/r.jpg", jpg_bytes(16, 8, 1, ramp));
    im = image_load(dir + "/r.jpg");
    ASSERT_EQ(im.width, 16);
    ASSERT_EQ(im.height, 8);
    for (int r = 0; r < 8; ++r)
        for (int c = 0; c < 16; ++c) EXPECT_NEAR(im.at(r, c) * 255.0, 40 + 10 * c, 6.0) << r << "," << c;
    // A directory argument lists .png/.jpg in name order; a file is taken as is.
    const auto paths = image_paths({dir, dir + "/g.png"});
    ASSERT_EQ(paths.size(), 4u);
    EXPECT_EQ(std::filesystem::path(paths[0]).filename(), "c.png");
    EXPECT_EQ(std::filesystem::path(paths[2]).filename(), "r.jpg");
}

TEST(Images, BadFilesGiveOneLineNamingTheFile) {
    const std::string dir = sae_test::temp_dir("img");
    std::vector<uint8_t> px(64 * 64);
    for (size_t i = 0; i < px.size(); ++i) px[i] = uint8_t((i * 7919) % 251);  // incompressible-ish
    const std::string png = png_bytes(64, 64, 1, px), jpg = jpg_bytes(64, 64, 1, px);
    sae_test::write_bytes(dir + "/trunc.png", png.substr(0, png.size() / 2));
    expect_error([&] { image_load(dir + "/trunc.png"); }, {dir + "/trunc.png", "truncated"});
    sae_test::write_bytes(dir + "/trunc.jpg", jpg.substr(0, jpg.size() * 2 / 3));
    expect_error([&] { image_load(dir + "/trunc.jpg"); }, {dir + "/trunc.jpg", "truncated"});
    sae_test::write_bytes(dir + "/text.png", "hello, not an image");
    expect_error([&] { image_load(dir + "/text.png"); }, {dir + "/text.png", "not a valid PNG or JPEG"});
    sae_test::write_bytes(dir + "/empty.png", "");
    expect_error([&] { image_load(dir + "/empty.png"); }, {dir + "/empty.png", "empty"});
    expect_error([&] { image_load(dir + "/missing.png"); }, {dir + "/missing.png"});
    expect_error([&] { image_load(dir); }, {dir, "directory"});
    // A PNG header claiming 20000 x 10 pixels: refused from the header, before decoding.
    std::string big = png.substr(0, 33);  // signature + IHDR chunk
    big[16] = char(0x00), big[17] = char(0x00), big[18] = char(0x4e), big[19] = char(0x20);  // width 20000
    sae_test::write_bytes(dir + "/big.png", big);
    expect_error([&] { image_load(dir + "/big.png"); }, {dir + "/big.png", "20000x64", "16384"});
    // An IDAT chunk claiming 2 GB in a small file: libpng reads image data as it needs it (it
    // never allocates a chunk's claimed length) and runs out.
    std::string huge = png;
    const size_t idat = huge.find("IDAT");
    ASSERT_NE(idat, std::string::npos);
    huge[idat - 4] = char(0x7a), huge[idat - 3] = char(0x00), huge[idat - 2] = char(0x00), huge[idat - 1] = char(0x3a);
    sae_test::write_bytes(dir + "/huge.png", huge);
    expect_error([&] { image_load(dir + "/huge.png"); }, {dir + "/huge.png", "truncated PNG image"});
    // An empty IDAT chunk before the data is legal (stb could not take one; libpng does).
    std::string empty_idat = png;
    empty_idat.insert(idat - 4, std::string("\0\0\0\0IDAT\x35\xaf\x06\x1e", 12));  // length 0, "IDAT", its CRC
    EXPECT_EQ(image_decode(empty_idat, "e.png").pixels, image_decode(png, "p.png").pixels);
    // A lower limit (the fuzz target's) refuses the valid 64x64 image, naming that limit; at 64 it decodes.
    expect_error([&] { image_decode(png, "small.png", 63); }, {"small.png", "64x64", "63x63"});
    EXPECT_EQ(image_decode(png, "small.png", 64).pixels.size(), px.size());
    expect_error([&] { image_paths({dir + "/nowhere"}); }, {dir + "/nowhere", "no such file"});
    const std::string empty_dir = sae_test::temp_dir("img-empty");
    expect_error([&] { image_paths({empty_dir}); }, {empty_dir, "no .png"});
}

// What a decode gave: the pixels, or the error's text.
std::string decode_outcome(const std::string& bytes) {
    try {
        const Image im = image_decode(bytes, "t.jpg");
        return std::string(reinterpret_cast<const char*>(im.pixels.data()), im.pixels.size() * sizeof(float));
    } catch (const Error& e) {
        return std::string("error: ") + e.what();
    }
}

TEST(Images, UndefinedHuffmanTableIsRefusedTheSameWhateverTheHeapHeld) {
    // A scan that names Huffman tables no DHT defined (tables 2; stb_image_write defines 0 and
    // 1). stb decoded with whatever its malloc gave (found by fuzz_image); libjpeg refuses it.
    // The heap is filled with other bytes between decodes: the outcome must not change.
    std::vector<uint8_t> px(64 * 64);
    for (size_t i = 0; i < px.size(); ++i) px[i] = uint8_t((i * 7919) % 251);
    std::string jpg = jpg_bytes(64, 64, 1, px);
    const size_t sos = jpg.find("\xFF\xDA");
    ASSERT_NE(sos, std::string::npos);
    ASSERT_EQ(uint8_t(jpg[sos + 5]), 1u);  // first component's id, then its table byte
    jpg[sos + 6] = char(0x22);              // DC table 2, AC table 2: never defined
    const std::string first = decode_outcome(jpg);
    EXPECT_NE(first.find("error: t.jpg: corrupt JPEG image (libjpeg: Huffman table 0x02 was not defined)"),
              std::string::npos) << first;
    for (int round = 0; round < 3; ++round) {
        std::vector<void*> blocks;
        for (size_t size = 1024; size <= 64 * 1024; size += 512) {
            blocks.push_back(std::malloc(size));
            std::memset(blocks.back(), 0xA5 + round, size);
        }
        for (void* b : blocks) std::free(b);
        EXPECT_EQ(decode_outcome(jpg), first) << "round " << round;
    }
}

TEST(Images, EveryTruncationIsRefusedAsTruncated) {
    // Every prefix of a small PNG and of a small JPEG: one line saying "truncated" (libpng's
    // reader runs out; libjpeg's "premature end" warning is an error here, where libjpeg alone
    // would fill the rest of the image with gray).
    std::vector<uint8_t> px(24 * 16);
    for (size_t i = 0; i < px.size(); ++i) px[i] = uint8_t((i * 7919) % 251);
    const std::string png = png_bytes(24, 16, 1, px), jpg = jpg_bytes(24, 16, 1, px);
    ASSERT_NO_THROW(image_decode(png, "whole.png"));
    ASSERT_NO_THROW(image_decode(jpg, "whole.jpg"));
    for (size_t n = 1; n < png.size(); ++n)
        expect_error([&] { image_decode(png.substr(0, n), "cut.png"); }, {"cut.png: truncated PNG image"});
    for (size_t n = 2; n < jpg.size(); ++n)
        expect_error([&] { image_decode(jpg.substr(0, n), "cut.jpg"); },
                     {"cut.jpg: truncated JPEG image (libjpeg: Premature end of JPEG file)"});
}

TEST(Images, BadCrcIsRefused) {
    std::vector<uint8_t> px(16 * 16);
    for (size_t i = 0; i < px.size(); ++i) px[i] = uint8_t(i);
    const std::string png = png_bytes(16, 16, 1, px);
    // In the image data (a critical chunk).
    std::string bad = png;
    const size_t idat = bad.find("IDAT");
    const size_t len = (size_t(uint8_t(bad[idat - 2])) << 8) | uint8_t(bad[idat - 1]);
    bad[idat + 4 + len] ^= 0x01;
    expect_error([&] { image_decode(bad, "crc.png"); }, {"crc.png: corrupt PNG image (libpng: IDAT: CRC error)"});
    // In an ancillary chunk (a tEXt before the data): also refused, where libpng alone would warn.
    std::string text = png;
    text.insert(idat - 4, std::string("\0\0\0\x03tEXta\0b\0\0\0\0", 15));
    expect_error([&] { image_decode(text, "text.png"); }, {"text.png: corrupt PNG image (libpng: tEXt: CRC error)"});
    // The same chunk with its right CRC is skipped.
    text = edit_chunk(text, "tEXt", [](char*) {});
    EXPECT_EQ(image_decode(text, "text.png").pixels, image_decode(png, "p.png").pixels);
}

TEST(Images, HugeDeclaredSizeIsRefusedBeforeAllocating) {
    // Headers (with valid CRCs) claiming 16384 x 16384 pixels, within the side limit, in files of
    // a few hundred bytes: refused from the header (1 GiB of pixels would be allocated first).
    std::vector<uint8_t> px(16 * 16, 128);
    const std::string png = edit_chunk(png_bytes(16, 16, 1, px), "IHDR", [](char* d) {
        d[0] = 0, d[1] = 0, d[2] = 0x40, d[3] = 0;  // width 16384
        d[4] = 0, d[5] = 0, d[6] = 0x40, d[7] = 0;  // height 16384
    });
    expect_error([&] { image_decode(png, "huge.png"); },
                 {"huge.png: truncated or corrupt PNG image (its header claims 16384x16384 pixels, at least 260127 "
                  "bytes even at deflate's best ratio of 1032:1, but the file has "});
    // The bound is deflate's best ratio (1032:1), which zlib nearly reaches on a constant image:
    // a valid 2048 x 2048 PNG of zeros at level 9 is 4,145 bytes, the bound 4,066. It decodes.
    const std::string raw_rows = std::string(size_t(2048) * 2049, '\0');  // filter byte 0, then zeros
    std::string z(compressBound(uLong(raw_rows.size())), '\0');
    uLongf z_len = uLongf(z.size());
    ASSERT_EQ(compress2(reinterpret_cast<Bytef*>(z.data()), &z_len, reinterpret_cast<const Bytef*>(raw_rows.data()),
                        uLong(raw_rows.size()), 9),
              Z_OK);
    z.resize(z_len);
    auto chunk = [](const std::string& type, const std::string& data) {
        std::string c;
        for (int k = 0; k < 4; ++k) c += char((data.size() >> (24 - 8 * k)) & 0xff);
        c += type + data;
        const uLong crc = crc32(0, reinterpret_cast<const Bytef*>(c.data() + 4), uInt(4 + data.size()));
        for (int k = 0; k < 4; ++k) c += char((crc >> (24 - 8 * k)) & 0xff);
        return c;
    };
    const std::string zeros = std::string("\x89PNG\r\n\x1a\n", 8) +
                              chunk("IHDR", std::string("\0\0\x08\0\0\0\x08\0\x08\0\0\0\0", 13)) +
                              chunk("IDAT", z) + chunk("IEND", "");
    EXPECT_LT(zeros.size(), 4200u);
    const Image flat = image_decode(zeros, "zeros.png");
    EXPECT_EQ(flat.width, 2048);
    EXPECT_EQ(flat.height, 2048);
    EXPECT_EQ(*std::max_element(flat.pixels.begin(), flat.pixels.end()), 0.0f);

    std::string jpg = jpg_bytes(16, 16, 1, px);
    const size_t sof = jpg.find("\xFF\xC0");
    ASSERT_NE(sof, std::string::npos);
    jpg[sof + 5] = char(0x40), jpg[sof + 6] = 0, jpg[sof + 7] = char(0x40), jpg[sof + 8] = 0;  // height, width
    expect_error([&] { image_decode(jpg, "huge.jpg"); },
                 {"huge.jpg: truncated or corrupt JPEG image (its header claims 16384x16384 pixels, at least 524288 "
                  "bytes even Huffman-coded at one bit per 8x8 block, but the file has "});
}

// A 13 x 7 image (not a multiple of any Adam7 step) of random samples in the given format.
std::vector<uint8_t> random_rows(int w, int h, int channels, int depth, uint32_t seed) {
    const size_t row_bytes = (size_t(w) * size_t(channels) * size_t(depth) + 7) / 8;
    std::vector<uint8_t> rows(row_bytes * size_t(h));
    for (auto& b : rows) b = uint8_t((seed = seed * 1664525u + 1013904223u) >> 24);
    return rows;
}

TEST(Images, PngFormatsDecodeAsStbDidAndInterlacedEqualsPlain) {
    // Every PNG colour type and bit depth, written by libpng both plain and Adam7-interlaced: the
    // interlaced file decodes to exactly the plain one, and both to what stb_image gives for the
    // plain file (8-bit formats through stbi_load, 16-bit through stbi_load_16, one channel).
    std::vector<png_color> palette(16);
    for (int i = 0; i < 16; ++i) palette[size_t(i)] = {png_byte(i * 16), png_byte(255 - i * 9), png_byte(i * i)};
    struct Case {
        const char* what;
        int color, depth, channels;
    };
    const Case cases[] = {{"gray 1-bit", PNG_COLOR_TYPE_GRAY, 1, 1},     {"gray 4-bit", PNG_COLOR_TYPE_GRAY, 4, 1},
                          {"gray 8-bit", PNG_COLOR_TYPE_GRAY, 8, 1},     {"gray 16-bit", PNG_COLOR_TYPE_GRAY, 16, 1},
                          {"gray+alpha 8", PNG_COLOR_TYPE_GRAY_ALPHA, 8, 2}, {"gray+alpha 16", PNG_COLOR_TYPE_GRAY_ALPHA, 16, 2},
                          {"RGB 8", PNG_COLOR_TYPE_RGB, 8, 3},           {"RGB 16", PNG_COLOR_TYPE_RGB, 16, 3},
                          {"RGBA 8", PNG_COLOR_TYPE_RGBA, 8, 4},         {"RGBA 16", PNG_COLOR_TYPE_RGBA, 16, 4},
                          {"palette 4-bit", PNG_COLOR_TYPE_PALETTE, 4, 1}, {"palette 8-bit", PNG_COLOR_TYPE_PALETTE, 8, 1}};
    const int w = 13, h = 7;
    for (const Case& c : cases) {
        SCOPED_TRACE(c.what);
        std::vector<uint8_t> rows = random_rows(w, h, c.channels, c.depth, 42u + uint32_t(c.color * 17 + c.depth));
        if (c.color == PNG_COLOR_TYPE_PALETTE && c.depth == 8)
            for (auto& b : rows) b &= 15;  // indices within the 16-entry palette
        const std::vector<png_color> pal = c.color == PNG_COLOR_TYPE_PALETTE ? palette : std::vector<png_color>{};
        const std::string plain = libpng_bytes(w, h, c.color, c.depth, false, rows, pal);
        const std::string adam7 = libpng_bytes(w, h, c.color, c.depth, true, rows, pal);
        ASSERT_NE(plain, adam7);
        const Image a = image_decode(plain, "plain.png"), b = image_decode(adam7, "adam7.png");
        ASSERT_EQ(a.width, w);
        ASSERT_EQ(a.height, h);
        EXPECT_EQ(a.pixels, b.pixels);
        int sw = 0, sh = 0, sc = 0;
        std::vector<float> want(size_t(w * h));
        const auto* in = reinterpret_cast<const stbi_uc*>(plain.data());
        if (c.depth == 16) {
            stbi_us* p = stbi_load_16_from_memory(in, int(plain.size()), &sw, &sh, &sc, 1);
            ASSERT_NE(p, nullptr);
            for (size_t i = 0; i < want.size(); ++i) want[i] = float(p[i]) / 65535.0f;
            stbi_image_free(p);
        } else {
            stbi_uc* p = stbi_load_from_memory(in, int(plain.size()), &sw, &sh, &sc, 1);
            ASSERT_NE(p, nullptr);
            for (size_t i = 0; i < want.size(); ++i) want[i] = float(p[i]) / 255.0f;
            stbi_image_free(p);
        }
        EXPECT_EQ(a.pixels, want);
    }
}

TEST(Images, JpegDecodesCloseToStb) {
    // libjpeg's inverse DCT (its accurate integer one) and stb's own round differently: the gray
    // levels of the same file differ by one level in about 1 % of the pixels (measured on these
    // and on the shipped photographs saved as JPEG at quality 90), never by more.
    std::vector<uint8_t> gray(40 * 24), rgb(40 * 24 * 3);
    for (size_t i = 0; i < gray.size(); ++i) gray[i] = uint8_t((i * 7919) % 251);
    for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = uint8_t((i * 104729) % 253);
    for (const auto& [comp, px] : {std::pair{1, gray}, std::pair{3, rgb}}) {
        const std::string jpg = jpg_bytes(40, 24, comp, px);
        const Image im = image_decode(jpg, "x.jpg");
        int w = 0, h = 0, c = 0;
        stbi_uc* p = stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(jpg.data()), int(jpg.size()), &w, &h, &c, 1);
        ASSERT_NE(p, nullptr);
        ASSERT_EQ(im.width, w);
        ASSERT_EQ(im.height, h);
        int worst = 0;
        for (size_t i = 0; i < im.pixels.size(); ++i)
            worst = std::max(worst, std::abs(int(std::lround(im.pixels[i] * 255.0f)) - int(p[i])));
        stbi_image_free(p);
        EXPECT_LE(worst, 1) << comp << " component(s)";
    }
}

// --------------------------------------------------------------------------- FFT

std::vector<cd> direct_dft(const std::vector<cd>& x, bool inverse) {
    const int64_t n = int64_t(x.size());
    std::vector<cd> X(x.size());
    for (int64_t k = 0; k < n; ++k) {
        cd s = 0;
        for (int64_t j = 0; j < n; ++j)
            s += x[size_t(j)] * std::polar(1.0, (inverse ? 2 : -2) * kPi * double((j * k) % n) / double(n));
        X[size_t(k)] = inverse ? s / double(n) : s;
    }
    return X;
}

TEST(Images, FftMatchesDirectDftForEveryLength) {
    Rng rng(5);
    for (int64_t n : {1, 2, 3, 4, 5, 7, 8, 12, 17, 64, 100, 127, 256}) {
        std::vector<cd> x(static_cast<size_t>(n));
        for (auto& v : x) v = cd(rng.normal(), rng.normal());
        for (bool inverse : {false, true}) {
            const auto ref = direct_dft(x, inverse);
            auto y = x;
            fft(y.data(), n, inverse);
            double err = 0, scale = 0;
            for (int64_t k = 0; k < n; ++k) {
                err = std::max(err, std::abs(y[size_t(k)] - ref[size_t(k)]));
                scale = std::max(scale, std::abs(ref[size_t(k)]));
            }
            EXPECT_LT(err, 1e-12 * scale * double(n) + 1e-14) << "n = " << n << " inverse = " << inverse;
        }
        auto y = x;  // round trip
        fft(y.data(), n, false);
        fft(y.data(), n, true);
        for (int64_t k = 0; k < n; ++k) EXPECT_LT(std::abs(y[size_t(k)] - x[size_t(k)]), 1e-12) << n;
    }
}

TEST(Images, Fft2MatchesDirect2dDft) {
    const int64_t R = 6, C = 10;
    Rng rng(9);
    std::vector<cd> a(static_cast<size_t>(R * C));
    for (auto& v : a) v = cd(rng.normal(), rng.normal());
    auto b = a;
    fft2(b.data(), R, C, false);
    for (int64_t u = 0; u < R; ++u)
        for (int64_t v = 0; v < C; ++v) {
            cd s = 0;
            for (int64_t r = 0; r < R; ++r)
                for (int64_t c = 0; c < C; ++c)
                    s += a[size_t(r * C + c)] * std::polar(1.0, -2 * kPi * (double(u * r) / R + double(v * c) / C));
            EXPECT_LT(std::abs(b[size_t(u * C + v)] - s), 1e-11) << u << "," << v;
        }
    fft2(b.data(), R, C, true);
    for (size_t i = 0; i < a.size(); ++i) EXPECT_LT(std::abs(b[i] - a[i]), 1e-12);
}

// --------------------------------------------------------------------------- whitening

TEST(Images, OneOverFMultipliesEachFrequencyByItsRadialGain) {
    EXPECT_DOUBLE_EQ(oneoverf_gain(0.0), 0.0);
    EXPECT_DOUBLE_EQ(oneoverf_gain(0.4), 0.4 * std::exp(-1.0));
    EXPECT_DOUBLE_EQ(oneoverf_gain(0.2, 0.4), 0.2 * std::exp(-1.0 / 16));
    // Half-sample cosines are exact frequencies of the mirror-extended 2H x 2W image:
    // cos(π k (r + ½) / H) has ky = k / (2H) cycles/pixel. The filter must scale each component
    // by gain(|f|) and remove the constant.
    const int64_t H = 40, W = 64;
    const double f1 = std::hypot(5.0 / (2 * W), 3.0 / (2 * H)), f2 = 7.0 / (2 * H), f3 = 50.0 / (2 * W);
    auto c1 = [&](int64_t r, int64_t c) { return std::cos(kPi * 3 * (r + 0.5) / H) * std::cos(kPi * 5 * (c + 0.5) / W); };
    auto c2 = [&](int64_t r, int64_t) { return 0.5 * std::cos(kPi * 7 * (r + 0.5) / H); };
    auto c3 = [&](int64_t, int64_t c) { return 0.25 * std::cos(kPi * 50 * (c + 0.5) / W); };  // near f0: attenuated
    Image im;
    im.height = H;
    im.width = W;
    im.pixels.resize(size_t(H * W));
    for (int64_t r = 0; r < H; ++r)
        for (int64_t c = 0; c < W; ++c) im.at(r, c) = float(0.3 + c1(r, c) + c2(r, c) + c3(r, c));
    const Image out = oneoverf_filter(im);
    ASSERT_EQ(out.height, H);
    ASSERT_EQ(out.width, W);
    double err = 0;
    for (int64_t r = 0; r < H; ++r)
        for (int64_t c = 0; c < W; ++c) {
            const double want = oneoverf_gain(f1) * c1(r, c) + oneoverf_gain(f2) * c2(r, c) + oneoverf_gain(f3) * c3(r, c);
            err = std::max(err, std::abs(out.at(r, c) - want));
        }
    EXPECT_LT(err, 1e-6);  // float pixels
    EXPECT_LT(oneoverf_gain(f3) / f3, 0.5);  // the high frequency really is cut

    // whiten_oneoverf: zero mean, unit variance; a constant image gives zeros.
    const Image w = whiten_oneoverf(im);
    double mean = 0, var = 0;
    for (float v : w.pixels) mean += v;
    mean /= double(w.pixels.size());
    for (float v : w.pixels) var += (v - mean) * (v - mean);
    EXPECT_NEAR(mean, 0.0, 1e-6);
    EXPECT_NEAR(var / double(w.pixels.size()), 1.0, 1e-5);
    Image flat = im;
    std::fill(flat.pixels.begin(), flat.pixels.end(), 0.7f);
    for (float v : whiten_oneoverf(flat).pixels) ASSERT_EQ(v, 0.0f);
}

TEST(Images, OneOverFFlattensANaturalImageSpectrum) {
    // Natural images have power ~ 1/f²; after the filter (gain ~ f at low f) the spectrum of the
    // whitened image is roughly flat below f0. Compare the mean power in two radial bands.
    const Image im = image_load(images_dir() + "/camera.png");
    auto band_power = [](const Image& x, double lo, double hi) {
        const int64_t n = x.height;
        std::vector<cd> a(static_cast<size_t>(n * n));
        for (size_t i = 0; i < a.size(); ++i) a[i] = x.pixels[i];
        fft2(a.data(), n, n, false);
        double p = 0;
        int64_t cnt = 0;
        for (int64_t r = 0; r < n; ++r)
            for (int64_t c = 0; c < n; ++c) {
                const double fy = double(r <= n / 2 ? r : r - n) / n, fx = double(c <= n / 2 ? c : c - n) / n;
                const double f = std::hypot(fx, fy);
                if (f >= lo && f < hi) p += std::norm(a[size_t(r * n + c)]), ++cnt;
            }
        return p / double(cnt);
    };
    const double raw = band_power(im, 0.02, 0.04) / band_power(im, 0.16, 0.32);
    const Image w = whiten_oneoverf(im);
    const double white = band_power(w, 0.02, 0.04) / band_power(w, 0.16, 0.32);
    EXPECT_GT(raw, 20.0);               // steep: ~ (8)² for 1/f²
    EXPECT_LT(white, 0.5 * std::sqrt(raw));  // far flatter after whitening
}

TEST(Images, JacobiEigenDecomposition) {
    const int64_t n = 20;
    Rng rng(2);
    std::vector<double> A(static_cast<size_t>(n * n));
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j <= i; ++j) A[size_t(i * n + j)] = A[size_t(j * n + i)] = rng.normal();
    std::vector<double> lam, U;
    symmetric_eigen(A, n, lam, U);
    ASSERT_EQ(lam.size(), size_t(n));
    EXPECT_TRUE(std::is_sorted(lam.begin(), lam.end()));
    for (int64_t k = 0; k < n; ++k) {
        for (int64_t i = 0; i < n; ++i) {  // A u = λ u
            double s = 0;
            for (int64_t j = 0; j < n; ++j) s += A[size_t(i * n + j)] * U[size_t(j * n + k)];
            EXPECT_NEAR(s, lam[size_t(k)] * U[size_t(i * n + k)], 1e-10);
        }
        for (int64_t l = 0; l < n; ++l) {  // UᵀU = I
            double s = 0;
            for (int64_t i = 0; i < n; ++i) s += U[size_t(i * n + k)] * U[size_t(i * n + l)];
            EXPECT_NEAR(s, k == l ? 1.0 : 0.0, 1e-12);
        }
    }
}

TEST(Images, ZcaWhitenedCovarianceIsIdentity) {
    const int64_t n = 20000, d = 6;
    Rng rng(4);
    std::vector<double> M(static_cast<size_t>(d * d));
    for (auto& v : M) v = rng.normal();
    Matrix<float> X(n, d);
    for (int64_t i = 0; i < n; ++i) {
        double z[d];
        for (auto& v : z) v = rng.normal();
        for (int64_t j = 0; j < d; ++j) {
            double s = 1.5 + 0.2 * double(j);  // non-zero means
            for (int64_t k = 0; k < d; ++k) s += z[k] * M[size_t(k * d + j)] * (k == 0 ? 10 : 1);
            X(i, j) = float(s);
        }
    }
    const Matrix<float> X0 = X;
    const auto lam = zca_whiten(X, 1e-9);
    EXPECT_GT(lam.front(), 1e-3);
    // Covariance of the result, computed here in double.
    std::vector<double> mean(d, 0.0);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < d; ++j) mean[size_t(j)] += X(i, j) / double(n);
    for (int64_t j = 0; j < d; ++j) EXPECT_NEAR(mean[size_t(j)], 0.0, 1e-4);
    for (int64_t j = 0; j < d; ++j)
        for (int64_t k = 0; k < d; ++k) {
            double s = 0;
            for (int64_t i = 0; i < n; ++i) s += (X(i, j) - mean[size_t(j)]) * (X(i, k) - mean[size_t(k)]);
            EXPECT_NEAR(s / double(n), j == k ? 1.0 : 0.0, 2e-4) << j << "," << k;
        }
    // ZCA (not any whitening): the whitening matrix is symmetric, so the whitened data stays
    // closest to the original: each feature correlates positively with its own original.
    for (int64_t j = 0; j < d; ++j) {
        double s = 0;
        for (int64_t i = 0; i < n; ++i) s += double(X(i, j)) * (X0(i, j) - 1.5 - 0.2 * double(j));
        EXPECT_GT(s, 0.0) << j;
    }
    // eps much larger than every eigenvalue: X ← (X − mean) / √eps.
    Matrix<float> Y = X0;
    zca_whiten(Y, 1e8);
    std::vector<double> m0(d, 0.0);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < d; ++j) m0[size_t(j)] += X0(i, j) / double(n);
    double maxlam = lam.back();
    for (int64_t i = 0; i < n; i += 97)
        for (int64_t j = 0; j < d; ++j)
            EXPECT_NEAR(Y(i, j), (X0(i, j) - m0[size_t(j)]) / 1e4, 2e-4 * maxlam / 1e8 * 1e4 + 1e-8);
    Matrix<float> Z(10, 300);
    expect_error([&] { zca_whiten(Z, 0.1); }, {"300", "256"});
}

// --------------------------------------------------------------------------- patches

TEST(Images, PatchSamplingIsDeterministicAndInBounds) {
    // Pixel values encode (image, row, column), so every patch tells where it came from.
    std::vector<Image> imgs(2);
    const int64_t dims[2][2] = {{5, 7}, {9, 4}};
    for (int i = 0; i < 2; ++i) {
        imgs[size_t(i)].height = dims[i][0];
        imgs[size_t(i)].width = dims[i][1];
        imgs[size_t(i)].pixels.resize(size_t(dims[i][0] * dims[i][1]));
        for (int64_t r = 0; r < dims[i][0]; ++r)
            for (int64_t c = 0; c < dims[i][1]; ++c) imgs[size_t(i)].at(r, c) = float(i * 10000 + r * 100 + c);
    }
    const int64_t p = 3, n = 4000;
    Rng a(11), b(11), c(12);
    const Matrix<float> X = sample_patches(imgs, p, n, a);
    ASSERT_EQ(X.rows, n);
    ASSERT_EQ(X.cols, p * p);
    EXPECT_EQ(X.data, sample_patches(imgs, p, n, b).data);
    EXPECT_NE(X.data, sample_patches(imgs, p, n, c).data);
    std::map<std::tuple<int, int, int>, int> seen;
    int per_image[2] = {0, 0};
    for (int64_t k = 0; k < n; ++k) {
        const int v = int(X(k, 0));
        const int i = v / 10000, r0 = (v % 10000) / 100, c0 = v % 100;
        ASSERT_TRUE(i == 0 || i == 1);
        ASSERT_LE(r0 + p, dims[i][0]);
        ASSERT_LE(c0 + p, dims[i][1]);
        for (int64_t r = 0; r < p; ++r)
            for (int64_t cc = 0; cc < p; ++cc) ASSERT_EQ(X(k, r * p + cc), float(i * 10000 + (r0 + r) * 100 + c0 + cc));
        ++seen[{i, r0, c0}];
        ++per_image[i];
    }
    // Every position is reached (3·5 + 7·2 = 29 of them), images chosen about equally.
    EXPECT_EQ(seen.size(), size_t(3 * 5 + 7 * 2));
    EXPECT_NEAR(per_image[0] / double(n), 0.5, 0.04);
    Rng d(1);
    expect_error([&] { sample_patches(imgs, 6, 10, d); }, {"smaller than the patch size 6"});
}

TEST(Images, MakePatchesOnTheShippedImages) {
    const std::vector<std::string> paths = {images_dir() + "/chelsea.png", images_dir() + "/coffee.png"};
    PatchOptions o;
    o.count = 300;
    const Matrix<float> X = make_patches(paths, o);
    ASSERT_EQ(X.rows, 300);
    ASSERT_EQ(X.cols, 64);
    for (float v : X.data) {
        ASSERT_GE(v, 0.1f - 1e-6f);
        ASSERT_LE(v, 0.9f + 1e-6f);
    }
    EXPECT_EQ(X.data, make_patches(paths, o).data);
    o.whiten = Whiten::zca;
    o.normalize = "none";
    o.count = 2000;
    o.zca_epsilon = 1e-6;
    const Matrix<float> Z = make_patches({images_dir() + "/camera.png"}, o);
    // Each patch had its mean removed, then ZCA (one zero-variance direction, the constant):
    // the covariance is the identity minus the projector on the constant vector.
    const int64_t d = 64;
    for (int64_t j : {0, 9, 37})
        for (int64_t k : {0, 9, 37, 63}) {
            double s = 0, mj = 0, mk = 0;
            for (int64_t i = 0; i < Z.rows; ++i) mj += Z(i, j) / double(Z.rows), mk += Z(i, k) / double(Z.rows);
            for (int64_t i = 0; i < Z.rows; ++i) s += (Z(i, j) - mj) * (Z(i, k) - mk);
            EXPECT_NEAR(s / double(Z.rows), (j == k ? 1.0 : 0.0) - 1.0 / d, 0.02) << j << "," << k;
        }
    expect_error([&] { whiten_parse("pca"); }, {"pca", "none, oneoverf or zca"});
    o = PatchOptions{};
    o.size = 1;
    expect_error([&] { make_patches(paths, o); }, {"--size"});
}

// --------------------------------------------------------------------------- grid and PNG

TEST(Images, FilterGridLayoutAndPng) {
    // 5 filters of 2 x 3: ceil(√5) = 3 columns, 2 rows; scale 2 → tiles 4 x 6.
    std::vector<float> f(5 * 6, 0.0f);
    for (int t = 0; t < 5; ++t)
        for (int i = 0; i < 6; ++i) f[size_t(t * 6 + i)] = float(t + 1) * float(i - 2);  // -2 -1 0 1 2 3 (× t+1)
    std::fill(f.begin() + 18, f.begin() + 24, 0.0f);  // tile 3 is all zero
    GridOptions o;
    o.scale = 2;
    o.separator = 7;
    const Gray8 g = filter_grid(f.data(), 5, 2, 3, o);
    EXPECT_EQ(g.width, 3 * 6 + 4);
    EXPECT_EQ(g.height, 2 * 4 + 3);
    ASSERT_EQ(g.pixels.size(), size_t(g.width * g.height));
    for (int64_t x = 0; x < g.width; ++x)  // horizontal separators
        for (int64_t y : {0, 5, 10}) EXPECT_EQ(g.at(y, x), 7) << y << "," << x;
    for (int64_t y = 0; y < g.height; ++y)  // vertical separators
        for (int64_t x : {0, 7, 14, 21}) EXPECT_EQ(g.at(y, x), 7) << y << "," << x;
    for (int64_t y = 6; y < 10; ++y)  // the empty sixth cell
        for (int64_t x = 15; x < 21; ++x) EXPECT_EQ(g.at(y, x), 7);
    // Tile 4 (row 1, column 1) at (6, 8): symmetric contrast, w / max|w| with max|w| = 15.
    const int expect4[6] = {int(std::lround(255 * 0.5 * (-10.0 / 15 + 1))), int(std::lround(255 * 0.5 * (-5.0 / 15 + 1))),
                            128, int(std::lround(255 * 0.5 * (5.0 / 15 + 1))), int(std::lround(255 * 0.5 * (10.0 / 15 + 1))), 255};
    for (int64_t y = 0; y < 4; ++y)
        for (int64_t x = 0; x < 6; ++x) EXPECT_EQ(g.at(6 + y, 8 + x), expect4[(y / 2) * 3 + x / 2]) << y << "," << x;
    for (int64_t y = 0; y < 4; ++y)  // tile 3 (row 1, column 0), all zero: mid-gray
        for (int64_t x = 0; x < 6; ++x) EXPECT_EQ(g.at(6 + y, 1 + x), 128);
    // minmax contrast: tile 0 spans 0..255 exactly.
    o.contrast = TileContrast::minmax;
    o.columns = 5;
    o.scale = 1;
    const Gray8 m = filter_grid(f.data(), 5, 2, 3, o);
    EXPECT_EQ(m.width, 5 * 3 + 6);
    EXPECT_EQ(m.height, 2 + 2);
    EXPECT_EQ(m.at(1, 1), 0);
    EXPECT_EQ(m.at(1, 2), 51);
    EXPECT_EQ(m.at(2, 3), 255);

    // PNG bytes decode (with stb) to the same pixels.
    const std::string png = png_encode(g);
    int w = 0, h = 0, comp = 0;
    unsigned char* px = stbi_load_from_memory(reinterpret_cast<const unsigned char*>(png.data()), int(png.size()), &w, &h, &comp, 0);
    ASSERT_NE(px, nullptr);
    EXPECT_EQ(w, g.width);
    EXPECT_EQ(h, g.height);
    EXPECT_EQ(comp, 1);
    EXPECT_TRUE(std::equal(g.pixels.begin(), g.pixels.end(), px));
    stbi_image_free(px);
}

// --------------------------------------------------------------------------- edge scores

namespace {
// p x p filter centred at (cy, cx): Gaussian envelope σ (none if sigma <= 0) times a cosine
// carrier of wavelength lam along angle th (none if lam <= 0).
std::vector<float> synth(int p, double cy, double cx, double sigma, double lam, double th, double phase) {
    std::vector<float> f(static_cast<size_t>(p * p));
    for (int r = 0; r < p; ++r)
        for (int c = 0; c < p; ++c) {
            const double x = c - cx, y = r - cy;
            const double env = sigma > 0 ? std::exp(-(x * x + y * y) / (2 * sigma * sigma)) : 1.0;
            const double car = lam > 0 ? std::cos(2 * kPi * (x * std::cos(th) + y * std::sin(th)) / lam + phase) : 1.0;
            f[size_t(r * p + c)] = float(env * car);
        }
    return f;
}
}  // namespace

// Bars from computing the scores (8 x 8 to 16 x 16): Gabor (σ = 0.15 p, λ = p/2) localisation
// 0.61–0.65, orientation 0.71–0.76; centred Gaussian blob 0.63 / ≤ 0.012; full-patch cosine
// (λ = 0.45 p) ≤ 0.02 / 0.75–1.0; white noise mean 0.03 / 0.15 at p = 8 (worst of 200 seeds
// 0.18 / 0.35).
TEST(Images, EdgeScoresSeparateGaborsBlobsGratingsAndNoise) {
    for (int p : {8, 12, 16}) {
        const double c = (p - 1) / 2.0;
        for (double th : {0.0, 0.5, 1.0, 1.3, 2.5}) {
            for (const auto& [dy, dx, ph] : {std::tuple{0.0, 0.0, 0.3}, std::tuple{0.7, -1.0, kPi / 2}}) {
                const auto g = synth(p, c + dy, c + dx, 0.15 * p, 0.5 * p, th, ph);
                const auto s = filter_score(g.data(), p, p);
                EXPECT_GT(s.localisation, 0.55) << "gabor p=" << p << " th=" << th;
                EXPECT_GT(s.orientation, 0.65) << "gabor p=" << p << " th=" << th;
            }
            const auto grating = synth(p, c, c, 0, 0.45 * p, th, 0.3);
            const auto s = filter_score(grating.data(), p, p);
            EXPECT_LT(s.localisation, 0.06) << "grating p=" << p << " th=" << th;
            EXPECT_GT(s.orientation, 0.7) << "grating p=" << p << " th=" << th;
        }
        for (double dy : {0.0, 0.6}) {
            const auto blob = synth(p, c + dy, c - 1.3 * dy, 0.15 * p, 0, 0, 0);
            const auto s = filter_score(blob.data(), p, p);
            EXPECT_GT(s.localisation, 0.55) << "blob p=" << p;
            EXPECT_LT(s.orientation, 0.05) << "blob p=" << p;
        }
        double ml = 0, mo = 0;
        const int seeds = 50;
        for (int seed = 0; seed < seeds; ++seed) {
            Rng rng(static_cast<uint64_t>(seed));
            std::vector<float> noise(static_cast<size_t>(p * p));
            for (auto& v : noise) v = float(rng.normal());
            const auto s = filter_score(noise.data(), p, p);
            EXPECT_LT(s.localisation, 0.3);
            EXPECT_LT(s.orientation, 0.5);
            ml += s.localisation / seeds;
            mo += s.orientation / seeds;
        }
        EXPECT_LT(ml, 0.08) << "noise p=" << p;
        EXPECT_LT(mo, 0.25) << "noise p=" << p;
    }
    // A single pixel: fully localised; a zero filter: 0 and 0; non-square works.
    std::vector<float> one(64, 0.0f);
    one[27] = 1.0f;
    EXPECT_DOUBLE_EQ(filter_score(one.data(), 8, 8).localisation, 1.0);
    std::vector<float> zero(64, 0.0f);
    EXPECT_EQ(filter_score(zero.data(), 8, 8).localisation, 0.0);
    EXPECT_EQ(filter_score(zero.data(), 8, 8).orientation, 0.0);
    std::vector<float> rows(6 * 10);
    for (int r = 0; r < 6; ++r)
        for (int c = 0; c < 10; ++c) rows[size_t(r * 10 + c)] = float(r % 2 ? 1 : -1);  // horizontal stripes
    EXPECT_NEAR(filter_score(rows.data(), 6, 10).orientation, 1.0, 1e-12);
}

// --------------------------------------------------------------------------- CLI

TEST(ImagesCli, PatchesWritesTheRightShapeAndRefusesBadArguments) {
    const std::string dir = sae_test::temp_dir("img-cli");
    const std::string sae = sae_test::sae_binary();
    const std::string imgs = images_dir() + "/camera.png " + images_dir() + "/chelsea.png";
    auto r = sae_test::run(sae + " patches --images " + imgs + " --size 6 --count 500 --seed 3 --out " + dir + "/p.npy");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("[500, 36]"), std::string::npos) << r.out;
    const Array a = npy_read(dir + "/p.npy");
    ASSERT_EQ(a.shape, (std::vector<int64_t>{500, 36}));
    for (float v : a.values) ASSERT_TRUE(v >= 0.1f - 1e-6f && v <= 0.9f + 1e-6f);
    r = sae_test::run(sae + " patches --images " + imgs + " --size 6 --count 500 --seed 3 --whiten none --normalize none --out " +
                      dir + "/raw.npy");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    for (float v : npy_read(dir + "/raw.npy").values) ASSERT_TRUE(v >= 0.0f && v <= 1.0f);

    expect_cli_error(sae_test::run(sae + " patches --images " + imgs + " --whiten pca --out " + dir + "/x.npy"), "pca");
    expect_cli_error(sae_test::run(sae + " patches --images " + imgs + " --size 0 --out " + dir + "/x.npy"), "--size");
    expect_cli_error(sae_test::run(sae + " patches --images " + imgs + " --size 400 --out " + dir + "/x.npy"), "--size");
    expect_cli_error(sae_test::run(sae + " patches --images " + imgs + " --count 0 --out " + dir + "/x.npy"), "--count");
    expect_cli_error(sae_test::run(sae + " patches --images " + imgs + " --whiten zca --size 20 --out " + dir + "/x.npy"), "zca");
    expect_cli_error(sae_test::run(sae + " patches --images " + dir + "/none.png --out " + dir + "/x.npy"), "none.png");
    sae_test::write_bytes(dir + "/bad.png", "\x89PNG\r\n\x1a\n garbage");
    expect_cli_error(sae_test::run(sae + " patches --images " + dir + "/bad.png --out " + dir + "/x.npy"), "bad.png");
    expect_cli_error(sae_test::run(sae + " patches --images " + imgs + " --out " + dir + "/p.npy/sub/x.npy"), "p.npy");
    EXPECT_FALSE(std::filesystem::exists(dir + "/x.npy"));
}

TEST(ImagesCli, FeaturesDrawsAPngGridAndPrintsScores) {
    const std::string dir = sae_test::temp_dir("img-cli");
    const std::string sae = sae_test::sae_binary();
    auto r = sae_test::run(sae + " patches --images " + images_dir() + "/camera.png --count 400 --out " + dir + "/p.npy");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = sae_test::run(sae + " train --set data=" + dir + "/p.npy --set normalize=none --set d_sae=7 --set max_iterations=5 " +
                      "--set threads=1 --out " + dir + "/m");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    for (const std::string which : {"encoder", "decoder"}) {
        r = sae_test::run(sae + " features --model " + dir + "/m --which " + which + " --out " + dir + "/g.png");
        ASSERT_EQ(r.exit_code, 0) << r.err;
        const auto j = nlohmann::json::parse(r.out);
        // 7 tiles of 8 x 8 → 3 columns, 3 rows; default scale 4 → 32-pixel tiles.
        EXPECT_EQ(j["width"], 3 * 32 + 4);
        EXPECT_EQ(j["height"], 3 * 32 + 4);
        EXPECT_EQ(j["filters"], 7);
        ASSERT_EQ(j["localisation"].size(), 7u);
        ASSERT_EQ(j["orientation"].size(), 7u);
        for (const auto& v : j["orientation"]) EXPECT_TRUE(v.get<double>() >= 0 && v.get<double>() <= 1);
        const std::string png = sae_test::read_bytes(dir + "/g.png");
        int w = 0, h = 0, comp = 0;
        unsigned char* px = stbi_load_from_memory(reinterpret_cast<const unsigned char*>(png.data()), int(png.size()), &w,
                                                  &h, &comp, 0);
        ASSERT_NE(px, nullptr) << which;
        EXPECT_EQ(w, 100);
        EXPECT_EQ(h, 100);
        EXPECT_EQ(comp, 1);
        EXPECT_EQ(px[0], 0);  // border separator
        stbi_image_free(px);
    }
    // An explicit tile shape 4 x 16 with scale 1 and 7 columns.
    r = sae_test::run(sae + " features --model " + dir + "/m --width 16 --scale 1 --columns 7 --out " + dir + "/w.png");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["width"], 7 * 16 + 8);
    EXPECT_EQ(j["height"], 4 + 2);
    expect_cli_error(sae_test::run(sae + " features --model " + dir + "/m --width 5 --out " + dir + "/x.png"), "--width 5");
    expect_cli_error(sae_test::run(sae + " features --model " + dir + "/m --which middle --out " + dir + "/x.png"), "middle");
    expect_cli_error(sae_test::run(sae + " features --model " + dir + "/nowhere --out " + dir + "/x.png"), "nowhere");
    // A model whose d_in is not a perfect square needs --width/--height.
    std::vector<float> X(60 * 12);
    for (size_t i = 0; i < X.size(); ++i) X[i] = float((i * 37) % 11) / 11.0f;
    npy_write_f32(dir + "/x12.npy", X.data(), {60, 12});
    r = sae_test::run(sae + " train --set data=" + dir + "/x12.npy --set normalize=none --set d_sae=3 --set max_iterations=2 " +
                      "--set threads=1 --out " + dir + "/m12");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    expect_cli_error(sae_test::run(sae + " features --model " + dir + "/m12 --out " + dir + "/x.png"), "perfect square");
    r = sae_test::run(sae + " features --model " + dir + "/m12 --height 3 --out " + dir + "/x.png");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(nlohmann::json::parse(r.out)["tile"], nlohmann::json::array({3, 4}));
}
