// Decoding PNG and JPEG (images.hpp: image_decode) with Debian's libpng and libjpeg-turbo, from
// memory. Its own file so that the fuzz tree can build it without the rest of the image code
// (FFT, patches, model filters).
//
// Both libraries report errors through callbacks that must not return; ours record the message
// and longjmp back to the setjmp in png_guarded / jpeg_guarded, which hold no C++ object and
// only return false; png_body / jpeg_body between hold none across a library call (everything
// with a destructor lives in the caller's PngJob / JpegJob), so the jump skips no destructor.
// The error is thrown by png_run / jpeg_run, outside the function that called setjmp. Nothing
// is ever printed: libpng's warnings are dropped, libjpeg's output_message does nothing.
#include <png.h>
// jpeglib.h needs size_t and FILE declared first.
#include <cstdio>
#include <jerror.h>
#include <jpeglib.h>

#include <algorithm>
#include <climits>
#include <csetjmp>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "sae/error.hpp"
#include "sae/images.hpp"

namespace sae {

namespace {

// Luma as stb_image computed it (stbi__compute_y, also on 16-bit values), kept so that colour
// images give the same gray levels as before: (77 R + 150 G + 29 B) >> 8.
inline uint32_t luma(uint32_t r, uint32_t g, uint32_t b) { return (r * 77 + g * 150 + b * 29) >> 8; }
// x·y/255 rounded, as stb multiplied a CMYK channel by K (stbi__blinn_8x8).
inline uint32_t blinn(uint32_t x, uint32_t y) {
    const uint32_t t = x * y + 128;
    return (t + (t >> 8)) >> 8;
}

void check_side(int64_t w, int64_t h, const std::string& name, int64_t max_side) {
    check(w > 0 && h > 0, name + ": image has no pixels");
    check(w <= max_side && h <= max_side,
          name + ": image is " + std::to_string(w) + "x" + std::to_string(h) + " pixels, larger than the " +
              std::to_string(max_side) + "x" + std::to_string(max_side) + " limit; downscale it first");
}

// A header whose pixels the file's size cannot hold is refused before any pixel is allocated:
// need_bytes is a lower bound on the coded size of every valid file of that header's size.
void check_plausible(int64_t w, int64_t h, const std::string& name, const char* format, int64_t need_bytes,
                     size_t have_bytes, const char* why) {
    check(need_bytes <= int64_t(have_bytes),
          name + ": truncated or corrupt " + format + " image (its header claims " + std::to_string(w) + "x" +
              std::to_string(h) + " pixels, at least " + std::to_string(need_bytes) + " bytes even " + why +
              ", but the file has " + std::to_string(have_bytes) + " bytes); the file is damaged");
}

// ------------------------------------------------------------------------------------ PNG

struct PngJob {
    const std::string& bytes;
    const std::string& name;
    int64_t max_side;
    Image& im;
    size_t pos = 0;
    bool ran_out = false;  // the read callback was asked for bytes past the end
    char message[256] = {};
    png_structp png = nullptr;
    png_infop info = nullptr;
    std::vector<png_byte> buffer;  // one row, or the whole image when interlaced
    std::vector<png_bytep> rows;
    PngJob(const std::string& b, const std::string& n, int64_t m, Image& i) : bytes(b), name(n), max_side(m), im(i) {}
    ~PngJob() { png_destroy_read_struct(&png, info ? &info : nullptr, nullptr); }
};

void png_on_error(png_structp png, png_const_charp msg) {
    auto* job = static_cast<PngJob*>(png_get_error_ptr(png));
    std::snprintf(job->message, sizeof job->message, "%s", msg ? msg : "unknown error");
    png_longjmp(png, 1);
}
// libpng's warnings are about things it has already worked around (an sRGB profile it knows to
// be wrong, a stray IDAT after the image data): not printed, not an error.
void png_on_warning(png_structp, png_const_charp) {}

void png_on_read(png_structp png, png_bytep out, size_t n) {
    auto* job = static_cast<PngJob*>(png_get_io_ptr(png));
    if (n > job->bytes.size() - job->pos) {
        job->ran_out = true;
        png_error(png, "the file ends early");
    }
    std::memcpy(out, job->bytes.data() + job->pos, n);
    job->pos += n;
}

// One decoded row (8 or 16 bits, 1 to 4 channels after libpng's expansions) into im's row r.
void png_take_row(const png_byte* p, int64_t width, int channels, bool deep, float* out) {
    const int step = channels * (deep ? 2 : 1);
    for (int64_t c = 0; c < width; ++c, p += step) {
        auto sample = [&](int k) { return deep ? (uint32_t(p[2 * k]) << 8) | p[2 * k + 1] : uint32_t(p[k]); };
        const uint32_t v = channels >= 3 ? luma(sample(0), sample(1), sample(2)) : sample(0);  // alpha ignored
        out[c] = float(v) / (deep ? 65535.0f : 255.0f);
    }
}

// Everything between libpng's setjmp and the end of decoding (png_guarded holds the setjmp). Its
// own objects with destructors (temporaries of a failing check) never live across a libpng call.
[[gnu::noinline]] void png_body(PngJob& job) {
    png_set_read_fn(job.png, &job, png_on_read);
    // No ancillary chunk matters for gray levels (gamma, colour profiles and text are ignored,
    // as stb did): libpng skips them all unread but for their CRC. Every CRC error is fatal,
    // also in an ancillary chunk (libpng would warn and drop the chunk): the file is damaged.
    png_set_keep_unknown_chunks(job.png, PNG_HANDLE_CHUNK_NEVER, nullptr, -1);
    png_set_crc_action(job.png, PNG_CRC_ERROR_QUIT, PNG_CRC_ERROR_QUIT);
    png_set_user_limits(job.png, png_uint_32(std::min<int64_t>(job.max_side, PNG_UINT_31_MAX)),
                        png_uint_32(std::min<int64_t>(job.max_side, PNG_UINT_31_MAX)));
    png_read_info(job.png, job.info);

    const int64_t w = png_get_image_width(job.png, job.info), h = png_get_image_height(job.png, job.info);
    check_side(w, h, job.name, job.max_side);
    // zlib's deflate expands at most 1032:1 (a 258-byte match in 2 bits), so the image data
    // (every row's pixels, at the file's bit depth) needs at least raw/1032 bytes of file.
    const int64_t bits = int64_t(png_get_channels(job.png, job.info)) * png_get_bit_depth(job.png, job.info);
    const int64_t raw = h * ((w * bits + 7) / 8 + 1);
    check_plausible(w, h, job.name, "PNG", raw / 1032, job.bytes.size(), "at deflate's best ratio of 1032:1");

    const int color = png_get_color_type(job.png, job.info), depth = png_get_bit_depth(job.png, job.info);
    if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(job.png);
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(job.png);  // 0..1 -> 0..255
    const int passes = png_set_interlace_handling(job.png);
    png_read_update_info(job.png, job.info);
    const int channels = png_get_channels(job.png, job.info);
    const bool deep = png_get_bit_depth(job.png, job.info) == 16;
    const size_t rowbytes = png_get_rowbytes(job.png, job.info);
    check(channels >= 1 && channels <= 4 && rowbytes == size_t(w) * size_t(channels) * (deep ? 2 : 1),
          job.name + ": PNG image has an unexpected pixel layout after decoding; the file is damaged");

    job.im.height = h;
    job.im.width = w;
    job.im.pixels.assign(size_t(w * h), 0.0f);
    if (passes == 1) {  // row by row through one buffer
        job.buffer.resize(rowbytes);
        for (int64_t r = 0; r < h; ++r) {
            png_read_row(job.png, job.buffer.data(), nullptr);
            png_take_row(job.buffer.data(), w, channels, deep, &job.im.pixels[size_t(r * w)]);
        }
    } else {  // Adam7: libpng fills in the whole image over its seven passes
        job.buffer.resize(rowbytes * size_t(h));
        job.rows.resize(size_t(h));
        for (int64_t r = 0; r < h; ++r) job.rows[size_t(r)] = job.buffer.data() + size_t(r) * rowbytes;
        png_read_image(job.png, job.rows.data());
        for (int64_t r = 0; r < h; ++r)
            png_take_row(job.rows[size_t(r)], w, channels, deep, &job.im.pixels[size_t(r * w)]);
    }
    // The chunks after the image data, up to IEND: a file cut short there is truncated too.
    png_read_end(job.png, nullptr);
}

// false when libpng gave up (job.message, job.ran_out say why). No C++ object here: the error
// message is built by the caller, outside the function that called setjmp.
bool png_guarded(PngJob& job) {
    if (setjmp(png_jmpbuf(job.png))) return false;
    png_body(job);
    return true;
}

void png_run(PngJob& job) {
    job.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &job, png_on_error, png_on_warning);
    check(job.png != nullptr, job.name + ": cannot decode the PNG image (libpng could not start: out of memory?)");
    job.info = png_create_info_struct(job.png);
    check(job.info != nullptr, job.name + ": cannot decode the PNG image (out of memory)");
    if (png_guarded(job)) return;
    if (job.ran_out) throw Error(job.name + ": truncated PNG image (it ends before its IEND chunk); the file is incomplete");
    throw Error(job.name + ": corrupt PNG image (libpng: " + one_line(job.message) + "); the file is damaged");
}

// ----------------------------------------------------------------------------------- JPEG

struct JpegErrors {
    jpeg_error_mgr mgr;  // first: cinfo->err points at it and so at the whole struct
    std::jmp_buf jump;
    bool truncated;
    char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void jpeg_on_error(j_common_ptr cinfo) {
    auto* e = reinterpret_cast<JpegErrors*>(cinfo->err);
    (*cinfo->err->format_message)(cinfo, e->message);
    std::longjmp(e->jump, 1);
}
// libjpeg's warnings are corrupt or missing data that it papers over (premature end of the file:
// the rest filled with gray; a bad Huffman code: the rest of the segment zeroed): each one is an
// error here, so that a damaged file is refused rather than decoded to partly made-up pixels.
// Except the two that say nothing about the pixels: an unknown JFIF version and an unknown Adobe
// colour transform code (libjpeg then assumes YCbCr, as stb did).
void jpeg_on_message(j_common_ptr cinfo, int level) {
    if (level >= 0) return;  // trace messages
    const int code = cinfo->err->msg_code;
    if (code == JWRN_JFIF_MAJOR || code == JWRN_ADOBE_XFORM) {
        ++cinfo->err->num_warnings;
        return;
    }
    reinterpret_cast<JpegErrors*>(cinfo->err)->truncated = code == JWRN_JPEG_EOF;
    jpeg_on_error(cinfo);
}
void jpeg_silent(j_common_ptr) {}

struct JpegJob {
    const std::string& bytes;
    const std::string& name;
    int64_t max_side;
    Image& im;
    jpeg_decompress_struct cinfo;
    JpegErrors err;
    bool created = false;
    std::vector<JSAMPLE> row;
    JpegJob(const std::string& b, const std::string& n, int64_t m, Image& i) : bytes(b), name(n), max_side(m), im(i) {
        std::memset(&cinfo, 0, sizeof cinfo);
        std::memset(&err, 0, sizeof err);
    }
    ~JpegJob() {
        if (created) jpeg_destroy_decompress(&cinfo);
    }
};

// Everything between libjpeg's setjmp and the end of decoding (jpeg_guarded holds the setjmp),
// with the same rule as png_body.
[[gnu::noinline]] void jpeg_body(JpegJob& job) {
    jpeg_decompress_struct& cinfo = job.cinfo;
    job.created = true;  // (jpeg_destroy_decompress is safe on a struct that creating failed on)
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, reinterpret_cast<const unsigned char*>(job.bytes.data()), (unsigned long)job.bytes.size());
    jpeg_read_header(&cinfo, TRUE);

    const int64_t w = cinfo.image_width, h = cinfo.image_height;
    check_side(w, h, job.name, job.max_side);
    // Huffman coding spends at least one bit on every block's DC coefficient (in the first DC
    // scan of a progressive file; a file whose AC scans come first is refused below, libjpeg
    // warns), and there is at least one block per MCU of 8·hmax × 8·vmax pixels. Arithmetic
    // coding has no such floor: there only the side limit holds.
    if (!cinfo.arith_code) {
        int hmax = 1, vmax = 1;
        for (int c = 0; c < cinfo.num_components; ++c) {
            hmax = std::max(hmax, cinfo.comp_info[c].h_samp_factor);
            vmax = std::max(vmax, cinfo.comp_info[c].v_samp_factor);
        }
        const int64_t mcus = ((w + 8 * hmax - 1) / (8 * hmax)) * ((h + 8 * vmax - 1) / (8 * vmax));
        check_plausible(w, h, job.name, "JPEG", (mcus + 7) / 8, job.bytes.size(),
                        "Huffman-coded at one bit per 8x8 block");
    }
    // Gray levels as stb gave them: YCbCr (and gray) files their Y channel as decoded; RGB
    // files the luma of R, G, B; CMYK (and YCCK, which libjpeg turns into CMYK) the luma of
    // C·K, M·K, Y·K (Adobe's files store inverted CMYK, so that is RGB).
    switch (cinfo.jpeg_color_space) {
        case JCS_GRAYSCALE:
        case JCS_YCbCr: cinfo.out_color_space = JCS_GRAYSCALE; break;
        case JCS_RGB: cinfo.out_color_space = JCS_RGB; break;
        case JCS_CMYK:
        case JCS_YCCK: cinfo.out_color_space = JCS_CMYK; break;
        default:
            throw Error(job.name + ": JPEG image with " + std::to_string(cinfo.num_components) +
                        " colour components, not gray, YCbCr, RGB or CMYK; convert it to one of those");
    }
    jpeg_start_decompress(&cinfo);
    const int channels = cinfo.output_components;
    check(int64_t(cinfo.output_width) == w && int64_t(cinfo.output_height) == h &&
              channels == (cinfo.out_color_space == JCS_GRAYSCALE ? 1 : cinfo.out_color_space == JCS_RGB ? 3 : 4),
          job.name + ": JPEG image has an unexpected pixel layout after decoding; the file is damaged");

    job.im.height = h;
    job.im.width = w;
    job.im.pixels.assign(size_t(w * h), 0.0f);
    job.row.resize(size_t(w) * size_t(channels));
    while (cinfo.output_scanline < cinfo.output_height) {
        const int64_t r = cinfo.output_scanline;
        JSAMPROW p = job.row.data();
        // The call first, then the check: no message string may be alive while libjpeg can jump.
        const JDIMENSION got = jpeg_read_scanlines(&cinfo, &p, 1);
        check(got == 1, job.name + ": JPEG image gave no scanline; the file is damaged");  // never: memory source
        float* out = &job.im.pixels[size_t(r * w)];
        for (int64_t c = 0; c < w; ++c, p += channels) {
            uint32_t v = p[0];
            if (channels == 3) v = luma(p[0], p[1], p[2]);
            if (channels == 4) v = luma(blinn(p[0], p[3]), blinn(p[1], p[3]), blinn(p[2], p[3]));
            out[c] = float(v) / 255.0f;
        }
    }
    // Reads on to the end-of-image marker: a file cut short there is truncated too.
    jpeg_finish_decompress(&cinfo);
}

bool jpeg_guarded(JpegJob& job) {
    if (setjmp(job.err.jump)) return false;
    jpeg_body(job);
    return true;
}

void jpeg_run(JpegJob& job) {
    job.cinfo.err = jpeg_std_error(&job.err.mgr);
    job.err.mgr.error_exit = jpeg_on_error;
    job.err.mgr.emit_message = jpeg_on_message;
    job.err.mgr.output_message = jpeg_silent;
    if (jpeg_guarded(job)) return;
    if (job.err.truncated)
        throw Error(job.name + ": truncated JPEG image (libjpeg: " + one_line(job.err.message) + "); the file is incomplete");
    throw Error(job.name + ": corrupt JPEG image (libjpeg: " + one_line(job.err.message) + "); the file is damaged");
}

}  // namespace

Image image_decode(const std::string& bytes, const std::string& name, int64_t max_side) {
    check(!bytes.empty(), name + ": empty file, not an image; pass PNG or JPEG files");
    check(bytes.size() <= size_t(INT_MAX), name + ": file too large for an image (over 2 GiB)");
    const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
    Image im;
    // PNG: the 8-byte signature (a file that is only a prefix of it is a truncated PNG).
    if (png_sig_cmp(b, 0, std::min<size_t>(bytes.size(), 8)) == 0) {
        // The side limit straight from the IHDR chunk, so that a header alone is enough to be
        // refused (libpng would first read on to the image data); libpng checks it again.
        if (bytes.size() >= 24 && bytes.compare(12, 4, "IHDR") == 0) {
            auto be32 = [&](size_t i) {
                return (int64_t(b[i]) << 24) | (int64_t(b[i + 1]) << 16) | (int64_t(b[i + 2]) << 8) | b[i + 3];
            };
            check_side(be32(16), be32(20), name, max_side);
        }
        PngJob job(bytes, name, max_side, im);
        png_run(job);
        return im;
    }
    if (bytes.size() >= 2 && b[0] == 0xFF && b[1] == 0xD8) {  // JPEG: start-of-image marker
        JpegJob job(bytes, name, max_side, im);
        jpeg_run(job);
        return im;
    }
    throw Error(name + ": not a valid PNG or JPEG image (it starts with neither the PNG signature nor a JPEG "
                       "start-of-image marker); pass PNG or JPEG files");
}

}  // namespace sae
