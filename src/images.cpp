// Natural images: loading, whitening, patches, filter grids and edge scores (see images.hpp).
#include "sae/images.hpp"

#include <algorithm>
#include <bit>
#include <cctype>
#include <climits>
#include <cmath>
#include <filesystem>
#include <numbers>

#include "sae/data.hpp"
#include "sae/error.hpp"
#include "sae/io.hpp"
#include "sae/model_file.hpp"

// stb_image_write, compiled here only, with internal linkage, to memory only. (Decoding is in
// image_decode.cpp, which the fuzz targets build on its own.)
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBI_WRITE_NO_STDIO
#include "stb_image_write.h"

namespace sae {

namespace fs = std::filesystem;
using cd = std::complex<double>;

// ---------------------------------------------------------------------------------- loading

Image image_load(const std::string& path) {
    std::error_code ec;
    check(!fs::is_directory(path, ec), path + ": is a directory, not an image");
    return image_decode(read_file(path), path);
}

std::vector<std::string> image_paths(const std::vector<std::string>& args) {
    std::vector<std::string> out;
    for (const auto& a : args) {
        std::error_code ec;
        if (fs::is_directory(a, ec)) {
            std::vector<std::string> found;
            for (const auto& e : fs::directory_iterator(a, ec)) {
                if (!e.is_regular_file(ec)) continue;
                std::string ext = e.path().extension().string();
                std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
                if (ext == ".png" || ext == ".jpg" || ext == ".jpeg") found.push_back(e.path().string());
            }
            check(!ec, a + ": cannot list the directory (" + ec.message() + ")");
            check(!found.empty(), a + ": no .png, .jpg or .jpeg files in this directory");
            std::sort(found.begin(), found.end());
            out.insert(out.end(), found.begin(), found.end());
        } else {
            check(fs::exists(a, ec), a + ": no such file or directory");
            out.push_back(a);
        }
    }
    check(!out.empty(), "no images given; pass image files or directories");
    return out;
}

// ---------------------------------------------------------------------------------- FFT

namespace {

bool is_pow2(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

// A transform of one length, reusable (read-only after construction; scratch is the caller's).
class FftPlan {
public:
    explicit FftPlan(int64_t n) : n_(n) {
        check(n >= 1, "fft: length must be at least 1");
        m_ = is_pow2(n) ? n : int64_t(std::bit_ceil(uint64_t(2 * n - 1)));
        tw_.resize(size_t(std::max<int64_t>(m_ / 2, 1)));
        for (int64_t k = 0; k < int64_t(tw_.size()); ++k)
            tw_[size_t(k)] = std::polar(1.0, -2.0 * std::numbers::pi * double(k) / double(m_));
        if (!is_pow2(n)) {  // Bluestein: X_k = w_k Σ_j (x_j w_j) conj(w_{k−j}), w_j = e^{−iπ j²/n}
            chirp_.resize(size_t(n));
            for (int64_t j = 0; j < n; ++j) {
                const int64_t j2 = (j * j) % (2 * n);  // exact: keeps the angle small
                chirp_[size_t(j)] = std::polar(1.0, -std::numbers::pi * double(j2) / double(n));
            }
            bhat_.assign(size_t(m_), cd(0, 0));
            bhat_[0] = std::conj(chirp_[0]);
            for (int64_t j = 1; j < n; ++j) bhat_[size_t(j)] = bhat_[size_t(m_ - j)] = std::conj(chirp_[size_t(j)]);
            radix2(bhat_.data(), false);
        }
    }
    int64_t scratch_size() const { return is_pow2(n_) ? 0 : m_; }

    // Forward (e^{−}) or inverse (e^{+}, scaled by 1/n) transform of a[0..n) in place.
    void run(cd* a, bool inverse, std::vector<cd>& scratch) const {
        if (inverse)
            for (int64_t i = 0; i < n_; ++i) a[i] = std::conj(a[i]);
        if (is_pow2(n_)) {
            radix2(a, false);
        } else {
            scratch.assign(size_t(m_), cd(0, 0));
            for (int64_t j = 0; j < n_; ++j) scratch[size_t(j)] = a[j] * chirp_[size_t(j)];
            radix2(scratch.data(), false);
            for (int64_t j = 0; j < m_; ++j) scratch[size_t(j)] *= bhat_[size_t(j)];
            radix2(scratch.data(), true);
            for (int64_t k = 0; k < n_; ++k) a[k] = scratch[size_t(k)] * chirp_[size_t(k)] / double(m_);
        }
        if (inverse)
            for (int64_t i = 0; i < n_; ++i) a[i] = std::conj(a[i]) / double(n_);
    }

private:
    // Unscaled iterative radix-2 transform of length m_ (conj twiddles when inv).
    void radix2(cd* a, bool inv) const {
        const int64_t m = m_;
        for (int64_t i = 1, j = 0; i < m; ++i) {
            int64_t bit = m >> 1;
            for (; j & bit; bit >>= 1) j ^= bit;
            j ^= bit;
            if (i < j) std::swap(a[i], a[j]);
        }
        for (int64_t len = 2; len <= m; len <<= 1) {
            const int64_t half = len / 2, step = m / len;
            for (int64_t i = 0; i < m; i += len)
                for (int64_t k = 0; k < half; ++k) {
                    const cd w = inv ? std::conj(tw_[size_t(k * step)]) : tw_[size_t(k * step)];
                    const cd u = a[i + k], v = a[i + k + half] * w;
                    a[i + k] = u + v;
                    a[i + k + half] = u - v;
                }
        }
    }

    int64_t n_ = 0, m_ = 0;
    std::vector<cd> tw_, chirp_, bhat_;
};

}  // namespace

void fft(cd* a, int64_t n, bool inverse) {
    const FftPlan plan(n);
    std::vector<cd> scratch;
    plan.run(a, inverse, scratch);
}

void fft2(cd* a, int64_t rows, int64_t cols, bool inverse) {
    const FftPlan prow(cols), pcol(rows);
    // Threads only pay off for large arrays (small ones, e.g. an 8 x 8 filter, stay serial).
#pragma omp parallel if (rows * cols >= 16384)
    {
        std::vector<cd> scratch;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) prow.run(a + r * cols, inverse, scratch);
        std::vector<cd> col(static_cast<size_t>(rows));
#pragma omp for schedule(static)
        for (int64_t c = 0; c < cols; ++c) {
            for (int64_t r = 0; r < rows; ++r) col[size_t(r)] = a[r * cols + c];
            pcol.run(col.data(), inverse, scratch);
            for (int64_t r = 0; r < rows; ++r) a[r * cols + c] = col[size_t(r)];
        }
    }
}

// ---------------------------------------------------------------------------------- whitening

double oneoverf_gain(double f, double f0) { return f * std::exp(-std::pow(f / f0, 4.0)); }

Image oneoverf_filter(const Image& im, double f0) {
    check(im.height >= 1 && im.width >= 1 && int64_t(im.pixels.size()) == im.height * im.width,
          "oneoverf_filter: empty or malformed image");
    check(f0 > 0, "oneoverf_filter: f0 must be > 0");
    const int64_t H = im.height, W = im.width, H2 = 2 * H, W2 = 2 * W;
    double mean = 0;
    for (float v : im.pixels) mean += v;
    mean /= double(im.pixels.size());
    // Mirror extension: pixel (r, c) of the 2H × 2W array is pixel (r', c') of the image with
    // r' = r for r < H and 2H − 1 − r otherwise (the same for columns).
    std::vector<cd> a(static_cast<size_t>(H2 * W2));
    for (int64_t r = 0; r < H2; ++r) {
        const int64_t rr = r < H ? r : H2 - 1 - r;
        for (int64_t c = 0; c < W2; ++c) {
            const int64_t cc = c < W ? c : W2 - 1 - c;
            a[size_t(r * W2 + c)] = cd(double(im.at(rr, cc)) - mean, 0.0);
        }
    }
    fft2(a.data(), H2, W2, false);
    for (int64_t r = 0; r < H2; ++r) {
        const double fy = double(r <= H2 / 2 ? r : r - H2) / double(H2);
        for (int64_t c = 0; c < W2; ++c) {
            const double fx = double(c <= W2 / 2 ? c : c - W2) / double(W2);
            a[size_t(r * W2 + c)] *= oneoverf_gain(std::sqrt(fx * fx + fy * fy), f0);
        }
    }
    fft2(a.data(), H2, W2, true);
    Image out;
    out.height = H;
    out.width = W;
    out.pixels.resize(im.pixels.size());
    for (int64_t r = 0; r < H; ++r)
        for (int64_t c = 0; c < W; ++c) out.at(r, c) = float(a[size_t(r * W2 + c)].real());
    return out;
}

Image whiten_oneoverf(const Image& im, double f0) {
    Image out = oneoverf_filter(im, f0);
    double mean = 0, var = 0;
    for (float v : out.pixels) mean += v;
    mean /= double(out.pixels.size());
    for (float v : out.pixels) var += (v - mean) * (v - mean);
    var /= double(out.pixels.size());
    const double scale = var > 1e-300 ? 1.0 / std::sqrt(var) : 0.0;
    for (float& v : out.pixels) v = float((v - mean) * scale);
    return out;
}

void symmetric_eigen(const std::vector<double>& Ain, int64_t n, std::vector<double>& values,
                     std::vector<double>& vectors) {
    check(n >= 1 && int64_t(Ain.size()) == n * n, "symmetric_eigen: matrix must be n x n");
    std::vector<double> A = Ain;
    for (int64_t i = 0; i < n; ++i)  // symmetrise exactly
        for (int64_t j = i + 1; j < n; ++j) A[size_t(i * n + j)] = A[size_t(j * n + i)] = 0.5 * (A[size_t(i * n + j)] + A[size_t(j * n + i)]);
    std::vector<double> V(size_t(n * n), 0.0);
    for (int64_t i = 0; i < n; ++i) V[size_t(i * n + i)] = 1.0;
    auto a = [&](int64_t i, int64_t j) -> double& { return A[size_t(i * n + j)]; };
    double total = 0;
    for (double v : A) total += v * v;
    for (int sweep = 0; sweep < 100; ++sweep) {
        double off = 0;
        for (int64_t i = 0; i < n; ++i)
            for (int64_t j = i + 1; j < n; ++j) off += a(i, j) * a(i, j);
        if (off <= 1e-30 * total || off == 0) break;
        for (int64_t p = 0; p < n; ++p)
            for (int64_t q = p + 1; q < n; ++q) {
                const double apq = a(p, q);
                if (std::abs(apq) <= 1e-300) continue;
                const double theta = (a(q, q) - a(p, p)) / (2.0 * apq);
                const double t = (theta >= 0 ? 1.0 : -1.0) / (std::abs(theta) + std::sqrt(theta * theta + 1.0));
                const double c = 1.0 / std::sqrt(t * t + 1.0), s = t * c;
                for (int64_t k = 0; k < n; ++k) {  // A ← A·J
                    const double akp = a(k, p), akq = a(k, q);
                    a(k, p) = c * akp - s * akq;
                    a(k, q) = s * akp + c * akq;
                }
                for (int64_t k = 0; k < n; ++k) {  // A ← Jᵀ·A
                    const double apk = a(p, k), aqk = a(q, k);
                    a(p, k) = c * apk - s * aqk;
                    a(q, k) = s * apk + c * aqk;
                }
                a(p, q) = a(q, p) = 0.0;
                for (int64_t k = 0; k < n; ++k) {  // V ← V·J
                    double& vkp = V[size_t(k * n + p)];
                    double& vkq = V[size_t(k * n + q)];
                    const double x = vkp, y = vkq;
                    vkp = c * x - s * y;
                    vkq = s * x + c * y;
                }
            }
    }
    std::vector<int64_t> order(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) order[size_t(i)] = i;
    std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return a(x, x) < a(y, y); });
    values.resize(size_t(n));
    vectors.resize(size_t(n * n));
    for (int64_t k = 0; k < n; ++k) {
        values[size_t(k)] = a(order[size_t(k)], order[size_t(k)]);
        for (int64_t i = 0; i < n; ++i) vectors[size_t(i * n + k)] = V[size_t(i * n + order[size_t(k)])];
    }
}

std::vector<double> zca_whiten(Matrix<float>& X, double eps) {
    const int64_t n = X.rows, d = X.cols;
    check(n >= 2 && d >= 1, "zca: need at least 2 samples");
    check(d <= 256, "zca: " + std::to_string(d) + " features is too many (at most 256, e.g. 16x16 patches)");
    check(eps > 0 && std::isfinite(eps), "zca: epsilon must be > 0");
    std::vector<double> mean(size_t(d), 0.0);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < d; ++j) mean[size_t(j)] += X(i, j);
    for (auto& m : mean) m /= double(n);
    std::vector<double> C(size_t(d * d), 0.0), row(static_cast<size_t>(d));
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < d; ++j) row[size_t(j)] = double(X(i, j)) - mean[size_t(j)];
        for (int64_t j = 0; j < d; ++j) {
            const double rj = row[size_t(j)];
            double* Cj = C.data() + j * d;
            for (int64_t k = j; k < d; ++k) Cj[k] += rj * row[size_t(k)];
        }
    }
    for (int64_t j = 0; j < d; ++j)
        for (int64_t k = j; k < d; ++k) C[size_t(k * d + j)] = C[size_t(j * d + k)] /= double(n);
    std::vector<double> lam, U;
    symmetric_eigen(C, d, lam, U);
    // Wz = U·diag(1/√(max(λ, 0) + eps))·Uᵀ (λ can be a tiny negative from rounding).
    std::vector<double> Wz(size_t(d * d), 0.0);
    for (int64_t k = 0; k < d; ++k) {
        const double g = 1.0 / std::sqrt(std::max(lam[size_t(k)], 0.0) + eps);
        for (int64_t i = 0; i < d; ++i) {
            const double ui = U[size_t(i * d + k)] * g;
            for (int64_t j = 0; j < d; ++j) Wz[size_t(i * d + j)] += ui * U[size_t(j * d + k)];
        }
    }
#pragma omp parallel
    {
        std::vector<double> r(static_cast<size_t>(d));
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; ++i) {
            for (int64_t j = 0; j < d; ++j) r[size_t(j)] = double(X(i, j)) - mean[size_t(j)];
            for (int64_t j = 0; j < d; ++j) {
                double s = 0;
                for (int64_t k = 0; k < d; ++k) s += r[size_t(k)] * Wz[size_t(k * d + j)];
                X(i, j) = float(s);
            }
        }
    }
    return lam;
}

// ---------------------------------------------------------------------------------- patches

Matrix<float> sample_patches(const std::vector<Image>& images, int64_t size, int64_t count, Rng& rng) {
    check(!images.empty(), "patches: no images");
    check(size >= 1, "patches: size must be >= 1");
    check(count >= 1, "patches: count must be >= 1");
    for (size_t i = 0; i < images.size(); ++i)
        check(images[i].height >= size && images[i].width >= size,
              "patches: image " + std::to_string(i) + " is " + std::to_string(images[i].width) + "x" +
                  std::to_string(images[i].height) + ", smaller than the patch size " + std::to_string(size));
    Matrix<float> X(count, size * size);
    for (int64_t n = 0; n < count; ++n) {
        const Image& im = images[size_t(rng.below(images.size()))];
        const int64_t r0 = int64_t(rng.below(uint64_t(im.height - size + 1)));
        const int64_t c0 = int64_t(rng.below(uint64_t(im.width - size + 1)));
        float* out = X.row(n);
        for (int64_t r = 0; r < size; ++r)
            for (int64_t c = 0; c < size; ++c) out[r * size + c] = im.at(r0 + r, c0 + c);
    }
    return X;
}

Whiten whiten_parse(const std::string& name) {
    if (name == "none") return Whiten::none;
    if (name == "oneoverf") return Whiten::oneoverf;
    if (name == "zca") return Whiten::zca;
    throw Error("whiten: unknown method '" + name + "'; use none, oneoverf or zca");
}

std::string whiten_name(Whiten w) {
    switch (w) {
        case Whiten::none: return "none";
        case Whiten::oneoverf: return "oneoverf";
        case Whiten::zca: return "zca";
    }
    return "?";
}

Matrix<float> make_patches(const std::vector<std::string>& paths, const PatchOptions& opt) {
    check(opt.size >= 2 && opt.size <= 64, "--size must be between 2 and 64 (got " + std::to_string(opt.size) + ")");
    check(opt.count >= 1 && opt.count <= 100'000'000,
          "--count must be between 1 and 100000000 (got " + std::to_string(opt.count) + ")");
    check(opt.whiten != Whiten::zca || opt.size <= 16,
          "--whiten zca supports patches up to 16x16 (256 features); use a smaller --size or oneoverf");
    check(opt.zca_epsilon > 0 && std::isfinite(opt.zca_epsilon), "--zca-epsilon must be > 0");
    const Normalize norm = normalize_parse(opt.normalize);
    std::vector<Image> images;
    for (const auto& p : paths) {
        Image im = image_load(p);
        check(im.height >= opt.size && im.width >= opt.size,
              p + ": image is " + std::to_string(im.width) + "x" + std::to_string(im.height) +
                  ", smaller than the patch size " + std::to_string(opt.size));
        if (opt.whiten == Whiten::oneoverf) im = whiten_oneoverf(im);
        images.push_back(std::move(im));
    }
    Rng rng(opt.seed);
    Matrix<float> X = sample_patches(images, opt.size, opt.count, rng);
    if (opt.whiten == Whiten::zca) {
        check(opt.count >= 2, "--whiten zca needs --count >= 2");
        for (int64_t i = 0; i < X.rows; ++i) {  // UFLDL: each patch's mean (its DC) removed first
            double m = 0;
            for (int64_t j = 0; j < X.cols; ++j) m += X(i, j);
            m /= double(X.cols);
            for (int64_t j = 0; j < X.cols; ++j) X(i, j) = float(X(i, j) - m);
        }
        zca_whiten(X, opt.zca_epsilon);
    }
    normalize_samples(X, norm, SourceType::f32);
    check_finite(X, "patches");
    return X;
}

// ---------------------------------------------------------------------------------- filters

Matrix<float> model_filters(const SavedModel& m, const std::string& which) {
    check(which == "encoder" || which == "decoder", "--which must be encoder or decoder (got '" + which + "')");
    const int64_t d_in = m.objective->d_in(), d_sae = m.objective->d_sae();
    std::vector<std::vector<float>> scratch;
    const auto tensors = m.objective->export_tensors(m.params.data(), 1.0, scratch);
    const std::string name = which == "encoder" ? "W_enc" : "W_dec";
    for (const auto& t : tensors) {
        if (t.name != name) continue;
        check(t.dtype == DType::f32, "model: " + name + " is not float32");
        const float* p = static_cast<const float*>(t.data);
        Matrix<float> F(d_sae, d_in);
        if (which == "encoder") {  // W_enc [d_in, d_sae]: filter j is column j
            for (int64_t i = 0; i < d_in; ++i)
                for (int64_t j = 0; j < d_sae; ++j) F(j, i) = p[i * d_sae + j];
        } else {  // W_dec [d_sae, d_in]: filter j is row j
            std::copy(p, p + d_sae * d_in, F.data.begin());
        }
        return F;
    }
    throw Error("model: no " + name + " tensor");
}

Gray8 filter_grid(const float* filters, int64_t n, int64_t h, int64_t w, const GridOptions& opt) {
    check(n >= 1 && h >= 1 && w >= 1, "filter grid: need at least one filter of at least 1x1");
    check(opt.scale >= 1 && opt.scale <= 256, "filter grid: scale must be between 1 and 256");
    check(opt.columns >= 0, "filter grid: columns must be >= 0");
    int64_t cols = opt.columns;
    if (cols == 0) {
        cols = int64_t(std::ceil(std::sqrt(double(n))));
        while (cols * cols < n) ++cols;
        while (cols > 1 && (cols - 1) * (cols - 1) >= n) --cols;
    }
    cols = std::min(cols, n);
    const int64_t rows = (n + cols - 1) / cols;
    const int64_t th = h * opt.scale, tw = w * opt.scale;
    Gray8 g;
    g.width = cols * tw + cols + 1;
    g.height = rows * th + rows + 1;
    check(g.width <= 65535 && g.height <= 65535, "filter grid: picture would be larger than 65535 pixels a side; "
                                                 "use a smaller scale");
    g.pixels.assign(size_t(g.width * g.height), opt.separator);
    std::vector<uint8_t> tile(static_cast<size_t>(h * w));
    for (int64_t t = 0; t < n; ++t) {
        const float* f = filters + t * h * w;
        double lo = f[0], hi = f[0], amax = 0;
        for (int64_t i = 0; i < h * w; ++i) {
            lo = std::min(lo, double(f[i]));
            hi = std::max(hi, double(f[i]));
            amax = std::max(amax, std::abs(double(f[i])));
        }
        for (int64_t i = 0; i < h * w; ++i) {
            double u = 0.5;  // in [0, 1]
            if (opt.contrast == TileContrast::symmetric) {
                if (amax > 0 && std::isfinite(amax)) u = 0.5 * (double(f[i]) / amax + 1.0);
            } else if (hi > lo && std::isfinite(hi - lo)) {
                u = (double(f[i]) - lo) / (hi - lo);
            }
            if (!std::isfinite(u)) u = 0.5;
            tile[size_t(i)] = uint8_t(std::lround(std::clamp(u, 0.0, 1.0) * 255.0));
        }
        const int64_t top = 1 + (t / cols) * (th + 1), left = 1 + (t % cols) * (tw + 1);
        for (int64_t y = 0; y < th; ++y)
            for (int64_t x = 0; x < tw; ++x)
                g.pixels[size_t((top + y) * g.width + left + x)] = tile[size_t((y / opt.scale) * w + x / opt.scale)];
    }
    return g;
}

std::string png_encode(const Gray8& img) {
    check(img.width >= 1 && img.height >= 1 && int64_t(img.pixels.size()) == img.width * img.height,
          "png: empty or malformed picture");
    std::string out;
    auto sink = [](void* ctx, void* data, int size) {
        static_cast<std::string*>(ctx)->append(static_cast<const char*>(data), size_t(size));
    };
    const int ok = stbi_write_png_to_func(sink, &out, int(img.width), int(img.height), 1, img.pixels.data(),
                                          int(img.width));
    check(ok != 0 && !out.empty(), "png: encoding failed");
    return out;
}

FilterScore filter_score(const float* f, int64_t h, int64_t w) {
    check(h >= 1 && w >= 1, "filter_score: empty filter");
    FilterScore s;
    // Localisation.
    double E = 0, cy = 0, cx = 0;
    for (int64_t r = 0; r < h; ++r)
        for (int64_t c = 0; c < w; ++c) {
            const double e = double(f[r * w + c]) * f[r * w + c];
            E += e;
            cy += e * double(r);
            cx += e * double(c);
        }
    if (!(E > 0) || !std::isfinite(E)) return s;
    cy /= E;
    cx /= E;
    double m2 = 0;
    for (int64_t r = 0; r < h; ++r)
        for (int64_t c = 0; c < w; ++c) {
            const double e = double(f[r * w + c]) * f[r * w + c];
            m2 += e * ((double(r) - cy) * (double(r) - cy) + (double(c) - cx) * (double(c) - cx));
        }
    const double spread = std::sqrt(m2 / E);
    const double uniform = std::sqrt(double(h * h - 1) / 12.0 + double(w * w - 1) / 12.0);
    s.localisation = uniform > 0 ? std::clamp(1.0 - spread / uniform, 0.0, 1.0) : 1.0;
    // Orientation.
    std::vector<cd> a(static_cast<size_t>(h * w));
    for (int64_t i = 0; i < h * w; ++i) a[size_t(i)] = cd(f[i], 0.0);
    fft2(a.data(), h, w, false);
    cd acc(0, 0);
    double P = 0;
    auto freqs = [](int64_t k, int64_t n) {  // the signed frequency (or the two Nyquist aliases)
        std::vector<std::pair<double, double>> out;  // (value, weight)
        if (2 * k == n) {
            out.push_back({double(k), 0.5});
            out.push_back({-double(k), 0.5});
        } else {
            out.push_back({double(2 * k < n ? k : k - n), 1.0});
        }
        return out;
    };
    for (int64_t r = 0; r < h; ++r)
        for (int64_t c = 0; c < w; ++c) {
            if (r == 0 && c == 0) continue;  // DC removed
            const double p = std::norm(a[size_t(r * w + c)]);
            if (p == 0) continue;
            // Angles in cycles per pixel so that non-square filters measure true orientation.
            for (const auto& [ky, wy] : freqs(r, h))
                for (const auto& [kx, wx] : freqs(c, w)) {
                    const double th = std::atan2(ky / double(h), kx / double(w));
                    acc += p * wy * wx * std::polar(1.0, 2.0 * th);
                }
            P += p;
        }
    s.orientation = P > 0 ? std::clamp(std::abs(acc) / P, 0.0, 1.0) : 0.0;
    return s;
}

}  // namespace sae
