// Decoding PNG and JPEG (images.hpp: image_decode). Its own file so that the fuzz tree can build
// it without the rest of the image code (FFT, patches, model filters).
#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "sae/error.hpp"
#include "sae/images.hpp"

// stb_image, compiled here only, with internal linkage (no clash with another copy elsewhere),
// from memory only, PNG and JPEG only.
// Every stb allocation zeroed: stb 2.27 reads some memory it never wrote (a JPEG scan may name a
// Huffman table no DHT defined), which must not depend on what the heap held before (fuzz_image
// found garbage tables tripping stb's Huffman assertion; test: UndefinedHuffmanTable...).
#define STBI_MALLOC(size) std::calloc(1, size)
#define STBI_REALLOC(p, size) std::realloc(p, size)
#define STBI_FREE(p) std::free(p)
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_STDIO
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#include "stb_image.h"

namespace sae {

namespace {

// Debian 12's stb_image (2022-09) builds a JPEG Huffman table from its 16 code-length counts
// without checking that they sum to at most 256, and then writes past its 257-entry table (found
// by fuzz_image; stb fixed it upstream later). Every DHT segment stb could read is checked here
// first: up to the first start-of-scan by following the marker segments exactly as stb does;
// from there on (where stb's position depends on the entropy-coded data) every 0xFF..0xC4 in the
// file is checked as a DHT. Valid coded data never contains 0xFF 0xC4, so a valid JPEG is only
// refused if a segment after its first scan happens to hold those two bytes followed by a
// table of over 256 codes. Returns the problem, or an empty string.
std::string jpeg_huffman_problem(const std::string& b) {
    const size_t size = b.size();
    auto at = [&](size_t i) { return unsigned(uint8_t(b[i])); };
    auto be16 = [&](size_t i) { return i + 1 < size ? (size_t(at(i)) << 8) | at(i + 1) : size_t(0); };
    // The tables of a DHT whose length field is at i, read as stb reads them; returns the
    // position after the last table read, or npos when a table declares over 256 codes.
    auto dht = [&](size_t i) -> size_t {
        int64_t left = int64_t(be16(i)) - 2;
        size_t p = i + 2;
        while (left > 0 && p < size) {
            unsigned n = 0;  // stb reads 0 past the end of the input
            for (size_t k = 1; k <= 16 && p + k < size; ++k) n += at(p + k);
            if (n > 256) return std::string::npos;
            p += 17 + n;
            left -= 17 + int64_t(n);
        }
        return p;
    };
    const std::string bad = "a Huffman table declares over 256 codes";
    // stb takes the input for a JPEG when it starts with 0xFF, any more 0xFF, then SOI (0xD8).
    size_t i = 0;
    if (size == 0 || at(0) != 0xFF) return {};
    while (i < size && at(i) == 0xFF) ++i;
    if (i >= size || at(i) != 0xD8) return {};
    ++i;
    // Up to the first SOS: stb's marker loop (bytes between segments skipped, 0xFF fill bytes
    // skipped, each segment by its own rules).
    while (i < size) {
        if (at(i) != 0xFF) {
            ++i;
            continue;
        }
        while (i < size && at(i) == 0xFF) ++i;
        if (i >= size) return {};
        const unsigned m = at(i++);
        if (m == 0xDA) break;  // start of scan
        if (m == 0xC4) {
            const size_t next = dht(i);
            if (next == std::string::npos) return bad;
            i = next;
        } else if (m == 0xDD || m == 0xDB || m == 0xC0 || m == 0xC1 || m == 0xC2 || (m >= 0xE0 && m <= 0xEF) ||
                   m == 0xFE) {
            const size_t len = be16(i);
            if (len < 2) return {};  // stb stops here with an error
            i += len;
        } else {
            return {};  // a marker stb refuses before the first scan: it reads no further
        }
    }
    // From the first scan on: every 0xFF (0xFF...) 0xC4 is a DHT stb might read.
    for (; i < size; ++i) {
        if (at(i) != 0xFF) continue;
        size_t j = i;
        while (j < size && at(j) == 0xFF) ++j;
        if (j < size && at(j) == 0xC4 && dht(j + 1) == std::string::npos) return bad;
        i = j - 1;
    }
    return {};
}

// Debian 12's stb_image (v2.27) grows its buffer for a PNG's IDAT chunk to the length the chunk
// header claims, and only then finds the file too short: a 150-byte PNG claiming a 2 GB chunk
// makes it allocate 2 GB (found by fuzz_image, as a 14 s "hang" under ASan). stb reads a PNG's
// chunks in order, each exactly as long as its length field says, up to IEND; so are they walked
// here, and a chunk claiming more bytes than the file has left is refused before stb runs.
// Returns the problem, or an empty string.
std::string png_chunk_problem(const std::string& b) {
    static const char signature[8] = {'\x89', 'P', 'N', 'G', '\r', '\n', '\x1a', '\n'};
    const size_t size = b.size();
    if (size < 8 || b.compare(0, 8, signature, 8) != 0) return {};
    auto be32 = [&](size_t i) {
        uint32_t v = 0;
        for (size_t k = 0; k < 4; ++k) v = (v << 8) | uint8_t(b[i + k]);
        return v;
    };
    bool seen_idat = false;
    for (size_t pos = 8; pos + 8 <= size;) {
        const uint32_t length = be32(pos);
        const std::string type = one_line(b.substr(pos + 4, 4));
        const size_t left = size - (pos + 8);
        if (length > left)
            return "its " + type + " chunk claims " + std::to_string(length) + " bytes, the file has " +
                   std::to_string(left) + " left";
        if (type == "IEND") break;
        // stb copies an IDAT chunk's bytes into its buffer, which is still a null pointer at the
        // first IDAT: memcpy(nullptr, ..., 0) is undefined (UBSan, found by fuzz_image). An empty
        // first IDAT is legal but no encoder we know writes one: refused.
        if (type == "IDAT" && !seen_idat && length == 0) return "its first IDAT chunk is empty";
        seen_idat = seen_idat || type == "IDAT";
        pos += 12 + size_t(length);  // length, type, data, CRC
    }
    return {};
}

}  // namespace

Image image_decode(const std::string& bytes, const std::string& name, int64_t max_side) {
    check(!bytes.empty(), name + ": empty file, not an image; pass PNG or JPEG files");
    check(bytes.size() <= size_t(INT_MAX), name + ": file too large for an image (over 2 GiB)");
    // Before stb reads anything (its header probe builds the Huffman tables too).
    const std::string huff = jpeg_huffman_problem(bytes);
    check(huff.empty(), name + ": corrupt JPEG image (" + huff + "); the file is damaged");
    const std::string chunk = png_chunk_problem(bytes);
    check(chunk.empty(), name + ": truncated or corrupt PNG image (" + chunk + "); the file is damaged");
    const auto* buf = reinterpret_cast<const stbi_uc*>(bytes.data());
    const int len = int(bytes.size());
    int w = 0, h = 0, comp = 0;
    if (!stbi_info_from_memory(buf, len, &w, &h, &comp))
        throw Error(name + ": not a valid PNG or JPEG image (stb: " + one_line(stbi_failure_reason()) +
                    "); pass PNG or JPEG files");
    check(w > 0 && h > 0, name + ": image has no pixels");
    check(w <= max_side && h <= max_side,
          name + ": image is " + std::to_string(w) + "x" + std::to_string(h) + " pixels, larger than the " +
              std::to_string(max_side) + "x" + std::to_string(max_side) + " limit; downscale it first");
    // A JPEG cut short still decodes in stb (the missing scan data reads as zeros): require the
    // end-of-image marker after the last start-of-scan (neither can occur inside coded data).
    if (bytes.size() >= 2 && uint8_t(bytes[0]) == 0xFF && uint8_t(bytes[1]) == 0xD8) {
        const size_t sos = bytes.rfind("\xFF\xDA"), eoi = bytes.rfind("\xFF\xD9");
        check(sos == std::string::npos || (eoi != std::string::npos && eoi > sos),
              name + ": truncated JPEG image (no end-of-image marker); the file is incomplete");
    }
    Image im;
    im.height = h;
    im.width = w;
    im.pixels.resize(size_t(int64_t(w) * h));
    // Either depth: the pixels stb returns (its size in w2, h2), scaled to [0, 1]; the size is
    // checked before they are read.
    int w2 = 0, h2 = 0, c2 = 0;
    auto take = [&](auto* p, float full_scale) {
        if (!p)
            throw Error(name + ": corrupt or truncated image (stb: " + one_line(stbi_failure_reason()) +
                        "); the file is damaged");
        const bool same = w2 == w && h2 == h;
        if (same)
            for (size_t i = 0; i < im.pixels.size(); ++i) im.pixels[i] = float(p[i]) / full_scale;
        stbi_image_free(p);
        check(same, name + ": image size changed while decoding; the file is damaged");
    };
    if (stbi_is_16_bit_from_memory(buf, len))
        take(stbi_load_16_from_memory(buf, len, &w2, &h2, &c2, 1), 65535.0f);
    else
        take(stbi_load_from_memory(buf, len, &w2, &h2, &c2, 1), 255.0f);
    return im;
}

}  // namespace sae
