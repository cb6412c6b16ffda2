// Natural images: loading (PNG, JPEG), whitening (Olshausen & Field's 1/f filter, ZCA), random
// patches for training, and looking at what a model learned (a grid of its filters as a PNG,
// and two numbers that say how edge-like each filter is).
#pragma once
#include <complex>
#include <cstdint>
#include <string>
#include <vector>

#include "sae/rng.hpp"
#include "sae/tensor.hpp"

namespace sae {

struct SavedModel;

// A grayscale image, row-major [height, width], values as loaded ([0, 1]) or after whitening.
struct Image {
    int64_t height = 0, width = 0;
    std::vector<float> pixels;
    float& at(int64_t r, int64_t c) { return pixels[size_t(r * width + c)]; }
    float at(int64_t r, int64_t c) const { return pixels[size_t(r * width + c)]; }
};

// Largest accepted width or height: checked from the header, before any pixel is decoded.
inline constexpr int64_t kMaxImageSide = 16384;

// PNG (any bit depth and colour type, interlaced or not; libpng) or JPEG (libjpeg-turbo),
// recognised by content; colour is converted to luma ((77 R + 150 G + 29 B) >> 8, as stb_image
// did), alpha dropped; values scaled to [0, 1]. Every failure is one sae::Error line naming the
// file: unreadable, not a PNG or JPEG image, too large (sides over max_side, or a header
// claiming more pixels than the file can hold), or corrupt/truncated.
Image image_load(const std::string& path);
// The same on a whole file's bytes; name is used in messages. max_side lowers the side limit
// (the fuzz target uses it: a valid 16384x16384 image from some tens of kilobytes of PNG takes
// seconds to decode under the sanitizers).
Image image_decode(const std::string& bytes, const std::string& name, int64_t max_side = kMaxImageSide);

// Expands each argument: a directory gives its *.png, *.jpg, *.jpeg files (any case, sorted by
// name, not recursive); a file is taken as is. Throws if an argument does not exist or nothing
// is found.
std::vector<std::string> image_paths(const std::vector<std::string>& dirs_or_files);

// --- Fourier transforms --------------------------------------------------------------------
// In-place DFT of any length n >= 1: X[k] = Σ x[j]·exp(∓2πi·jk/n) (− forward, + inverse); the
// inverse is scaled by 1/n, so fft(fft(x), inverse) = x. Radix-2 for powers of two, Bluestein's
// chirp-z (through a power-of-two transform) otherwise: O(n log n) for every n.
void fft(std::complex<double>* a, int64_t n, bool inverse);
// 2-D transform of a row-major [rows, cols] array: every row, then every column.
void fft2(std::complex<double>* a, int64_t rows, int64_t cols, bool inverse);

// --- whitening -----------------------------------------------------------------------------
// Olshausen & Field's (1997) whitening/low-pass filter: gain(f) = f·exp(−(f/f0)⁴), f the radial
// spatial frequency in cycles per pixel. f0 = 0.4 cycles/pixel is their f0 = 0.4·N cycles/image.
double oneoverf_gain(double f, double f0 = 0.4);
// The filter applied to an image (any height × width): the mean is removed, the image is
// extended by mirror symmetry to 2H × 2W (so the periodic transform sees no edge at the
// border), transformed, multiplied by gain(√(fx² + fy²)) with fx = kx/(2W), fy = ky/(2H) in
// cycles/pixel, transformed back and cropped to H × W. No rescaling.
Image oneoverf_filter(const Image& im, double f0 = 0.4);
// oneoverf_filter, then scaled to zero mean and unit variance (a constant image stays 0).
Image whiten_oneoverf(const Image& im, double f0 = 0.4);

// Eigen-decomposition of a symmetric n×n matrix (row-major, only symmetry assumed) by cyclic
// Jacobi rotations in double: values ascending, vectors[i·n + k] = component i of the k-th
// eigenvector (columns).
void symmetric_eigen(const std::vector<double>& A, int64_t n, std::vector<double>& values,
                     std::vector<double>& vectors);

// ZCA whitening of samples X [n, d] (d <= 256): each feature's mean is removed, C = XᵀX/n,
// C = U·diag(λ)·Uᵀ, then X ← X·U·diag(1/√(λ + eps))·Uᵀ. eps > 0 regularises the directions with
// small variance (with pixels in [0, 1], UFLDL uses 0.1). Returns the eigenvalues λ, ascending.
std::vector<double> zca_whiten(Matrix<float>& X, double eps);

// --- patches ---------------------------------------------------------------------------------
// count random size×size patches: for each, an image uniformly, then a top-left corner
// uniformly among the positions where the patch fits, all from rng (in that order). Returns
// [count, size²], each patch row-major. Every image must be at least size × size.
Matrix<float> sample_patches(const std::vector<Image>& images, int64_t size, int64_t count, Rng& rng);

enum class Whiten { none, oneoverf, zca };
Whiten whiten_parse(const std::string& name);  // throws listing the valid names
std::string whiten_name(Whiten w);

struct PatchOptions {
    int64_t size = 8;
    int64_t count = 10000;
    Whiten whiten = Whiten::oneoverf;
    double zca_epsilon = 0.1;
    uint64_t seed = 0;
    std::string normalize = "ufldl";  // a name for normalize_parse: ufldl, none or unit_range
};
// The whole `sae patches` pipeline: load every image, whiten (oneoverf: each image before
// sampling; zca: each patch's mean removed, then ZCA over the patches), sample, normalise (ufldl:
// per-patch mean removed, clipped to ±3σ, rescaled to [0.1, 0.9], as UFLDL's sampleIMAGES).
Matrix<float> make_patches(const std::vector<std::string>& image_paths, const PatchOptions& opt);

// --- looking at filters --------------------------------------------------------------------
// The filters of a saved model as rows [d_sae, d_in]: "encoder" = the columns of W_enc,
// "decoder" = the rows of W_dec (any architecture; tied models give the same for both).
Matrix<float> model_filters(const SavedModel& m, const std::string& which);

// An 8-bit grayscale picture, row-major.
struct Gray8 {
    int64_t width = 0, height = 0;
    std::vector<uint8_t> pixels;
    uint8_t at(int64_t r, int64_t c) const { return pixels[size_t(r * width + c)]; }
};

enum class TileContrast {
    symmetric,  // w / max|w| mapped to [0, 255]: zero is mid-gray 128 (UFLDL's display_network)
    minmax      // [min w, max w] mapped to [0, 255]
};
struct GridOptions {
    int64_t columns = 0;  // tiles per row; 0 = ceil(√n)
    int64_t scale = 1;    // each filter pixel becomes scale × scale pixels
    TileContrast contrast = TileContrast::symmetric;
    uint8_t separator = 0;  // value of the separator lines and of empty cells
};
// n filters (rows of filters [n, h·w], each a row-major h × w image), each contrast-normalised on
// its own (a constant tile is 128), laid out row by row in a grid with a 1-pixel separator
// between tiles and around the border: width = columns·w·scale + columns + 1,
// height = rows·h·scale + rows + 1, rows = ceil(n / columns). Tile t's top-left pixel is at
// (1 + (t / columns)·(h·scale + 1), 1 + (t % columns)·(w·scale + 1)).
Gray8 filter_grid(const float* filters, int64_t n, int64_t h, int64_t w, const GridOptions& opt = {});
// PNG file bytes of an 8-bit grayscale picture (stb_image_write).
std::string png_encode(const Gray8& img);

// How edge-like a filter w [h, w] is, two numbers in [0, 1]:
//  localisation = 1 − s / s_uniform, where s = √(Σ w²·‖x − c‖² / Σ w²) is the energy-weighted
//    RMS distance of the pixels x from the energy centroid c = Σ w²·x / Σ w², and s_uniform
//    = √((h² − 1)/12 + (w² − 1)/12) is s for a filter with equal energy in every pixel. 1 = all
//    energy in one pixel, 0 = spread over the whole patch (clamped at 0).
//  orientation = |Σ P(k)·e^{2iθ(k)}| / Σ P(k): the mean resultant length of the doubled
//    orientation angles θ(k) = atan2(ky, kx) of the frequencies k ≠ 0 of the 2-D DFT power
//    spectrum P (frequencies in (−h/2, h/2] × (−w/2, w/2]; a Nyquist frequency of an even side is
//    counted half at +N/2 and half at −N/2). 1 = one orientation, 0 = isotropic.
// A zero filter scores 0 on both.
struct FilterScore {
    double localisation = 0, orientation = 0;
};
FilterScore filter_score(const float* w, int64_t h, int64_t wd);

}  // namespace sae
