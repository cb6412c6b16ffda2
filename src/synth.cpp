#include "sae/synth.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "sae/error.hpp"
#include "sae/rng.hpp"

namespace sae {

namespace {

uint64_t splitmix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}
// Seed of an independent stream: (seed, stream, index) hashed together.
uint64_t stream_seed(uint64_t seed, uint64_t stream, uint64_t index) {
    return splitmix(splitmix(splitmix(seed) ^ (stream * 0xd1b54a32d192ed03ULL)) ^ index);
}

// Uniform in [0, 1) on the 24-bit float grid (never rounds up to 1.0f).
float uniform_f24(Rng& rng) { return float(rng.next_u64() >> 40) * 0x1.0p-24f; }

// Two independent standard normals from one Box–Muller draw.
void normal_pair(Rng& rng, double& a, double& b) {
    double u1 = rng.uniform();
    while (u1 <= 0.0) u1 = rng.uniform();
    const double u2 = rng.uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double t = 6.283185307179586476925 * u2;
    a = r * std::cos(t);
    b = r * std::sin(t);
}
void fill_normal(Rng& rng, double* out, int64_t n) {
    int64_t i = 0;
    for (; i + 1 < n; i += 2) normal_pair(rng, out[i], out[i + 1]);
    if (i < n) {
        double spare;
        normal_pair(rng, out[i], spare);
    }
}

std::string str(int64_t v) { return std::to_string(v); }
std::string str(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
}

}  // namespace

double normal_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

double normal_quantile(double p) {
    check(p >= 0 && p <= 1, "normal_quantile: p = " + str(p) + " is outside [0, 1]");
    if (p == 0) return -std::numeric_limits<double>::infinity();
    if (p == 1) return std::numeric_limits<double>::infinity();
    double lo = -40, hi = 40;  // Φ(−40) underflows to 0 < p, Φ(40) = 1 > p
    for (int it = 0; it < 400; ++it) {
        const double mid = 0.5 * (lo + hi);
        if (mid <= lo || mid >= hi) break;  // interval is two adjacent doubles
        if (normal_cdf(mid) < p) lo = mid; else hi = mid;
    }
    return 0.5 * (lo + hi);
}

void synth_validate(const SynthSpec& s, bool keep_codes) {
    check(s.features >= 1, "features = " + str(s.features) + ": need at least 1 true feature; pass --features G with G >= 1");
    check(s.dim >= 1, "dim = " + str(s.dim) + ": need at least 1 dimension; pass --dim d with d >= 1");
    check(s.samples >= 1, "samples = " + str(s.samples) + ": need at least 1 sample; pass --samples N with N >= 1");
    check(std::isfinite(s.mean_active) && s.mean_active > 0 && s.mean_active <= double(s.features),
          "mean_active = " + str(s.mean_active) + " must be in (0, features = " + str(s.features) +
              "]; choose a smaller mean active count or more features");
    check(std::isfinite(s.decay) && s.decay > 0 && s.decay <= 1,
          "decay = " + str(s.decay) + " must be in (0, 1]; the paper uses 0.99");
    check(!s.correlated || (s.correlation_rank >= 1 && s.correlation_rank <= 4096),
          "correlation_rank = " + str(s.correlation_rank) + " must be in [1, 4096]");
    // Sizes in double: no integer overflow for absurd requests.
    const double data_bytes = 4.0 * double(s.samples) * double(s.dim);
    const double feat_bytes = 4.0 * double(s.features) * double(s.dim);
    const double code_bytes = keep_codes ? 4.0 * double(s.samples) * double(s.features) : 0.0;
    const double limit = double(kSynthMaxBytes);
    auto gib = [](double b) { return str(b / double(1ull << 30)) + " GiB"; };
    check(data_bytes <= limit, "samples x dim = " + str(s.samples) + " x " + str(s.dim) + " float32 is " +
                                   gib(data_bytes) + ", above the 8 GiB limit; use fewer samples or a smaller dim");
    check(feat_bytes <= limit, "features x dim = " + str(s.features) + " x " + str(s.dim) + " float32 is " +
                                   gib(feat_bytes) + ", above the 8 GiB limit; use fewer features or a smaller dim");
    check(data_bytes + feat_bytes + code_bytes <= limit,
          "the data set needs " + gib(data_bytes + feat_bytes + code_bytes) +
              " in memory, above the 8 GiB limit; use fewer samples");
}

std::vector<double> synth_probabilities(const SynthSpec& s, int64_t* clipped) {
    const int64_t G = s.features;
    check(G >= 1, "features = " + str(G) + ": need at least 1 true feature");
    check(std::isfinite(s.mean_active) && s.mean_active > 0 && s.mean_active <= double(G),
          "mean_active = " + str(s.mean_active) + " must be in (0, features = " + str(G) + "]");
    check(std::isfinite(s.decay) && s.decay > 0 && s.decay <= 1, "decay = " + str(s.decay) + " must be in (0, 1]");
    std::vector<double> w(static_cast<size_t>(G)), suffix(size_t(G) + 1, 0.0);
    for (int64_t i = 0; i < G; ++i) w[size_t(i)] = std::pow(s.decay, double(i));
    for (int64_t i = G - 1; i >= 0; --i) suffix[size_t(i)] = suffix[size_t(i) + 1] + w[size_t(i)];
    // The first k features clipped at 1, the rest s·wᵢ with Σ = mean_active − k: take the
    // smallest k whose scale keeps feature k at or below 1 (wᵢ decreasing, so then all are).
    std::vector<double> p(size_t(G), 1.0);
    for (int64_t k = 0; k < G; ++k) {
        const double rest = s.mean_active - double(k);
        if (rest <= 0) break;  // k features at 1 already give the count (mean_active == k)
        if (suffix[size_t(k)] <= 0) break;
        const double scale = rest / suffix[size_t(k)];
        if (scale * w[size_t(k)] <= 1.0) {
            for (int64_t i = k; i < G; ++i) p[size_t(i)] = std::min(1.0, scale * w[size_t(i)]);
            if (clipped) *clipped = k;
            return p;
        }
    }
    const int64_t k = int64_t(std::llround(s.mean_active));
    check(std::fabs(s.mean_active - double(k)) < 1e-9,
          "mean_active = " + str(s.mean_active) + " cannot be reached with decay = " + str(s.decay) +
              " (probabilities underflow); raise decay or lower mean_active");
    for (int64_t i = 0; i < G; ++i) p[size_t(i)] = i < k ? 1.0 : 0.0;
    if (clipped) *clipped = k;
    return p;
}

double SynthData::mean_active() const { return samples > 0 ? double(active_total) / double(samples) : 0.0; }

SynthData synth_generate(const SynthSpec& s, bool keep_codes) {
    synth_validate(s, keep_codes);
    const int64_t G = s.features, d = s.dim, N = s.samples;
    SynthData out;
    out.samples = N;
    out.dim = d;
    out.n_features = G;
    out.probabilities = synth_probabilities(s, &out.clipped);
    const auto& p = out.probabilities;

    // True features: Gaussian directions, normalised in double.
    out.features.resize(size_t(G * d));
    {
        Rng rng(stream_seed(s.seed, 1, 0));
        std::vector<double> v(static_cast<size_t>(d));
        for (int64_t i = 0; i < G; ++i) {
            double nn = 0;
            do {
                fill_normal(rng, v.data(), d);
                nn = 0;
                for (double x : v) nn += x * x;
            } while (nn <= 0);
            const double inv = 1.0 / std::sqrt(nn);
            for (int64_t k = 0; k < d; ++k) out.features[size_t(i * d + k)] = float(v[size_t(k)] * inv);
        }
    }

    // Activation rules: independent → u64 draw below pᵢ·2⁶⁴; correlated → zᵢ below Φ⁻¹(pᵢ).
    std::vector<uint64_t> thr(static_cast<size_t>(G));
    std::vector<char> always(static_cast<size_t>(G));
    for (int64_t i = 0; i < G; ++i) {
        always[size_t(i)] = p[size_t(i)] >= 1.0;
        thr[size_t(i)] = always[size_t(i)] ? UINT64_MAX : uint64_t(std::ldexp(p[size_t(i)], 64));
    }
    const int64_t r = s.correlated ? s.correlation_rank : 0;
    std::vector<double> A, inv_sd, zthr;
    if (s.correlated) {
        Rng rng(stream_seed(s.seed, 2, 0));
        A.resize(size_t(G * r));
        fill_normal(rng, A.data(), G * r);
        inv_sd.resize(size_t(G));
        zthr.resize(size_t(G));
        for (int64_t i = 0; i < G; ++i) {
            double v = 1.0;  // the identity part
            for (int64_t j = 0; j < r; ++j) v += A[size_t(i * r + j)] * A[size_t(i * r + j)];
            inv_sd[size_t(i)] = 1.0 / std::sqrt(v);
            zthr[size_t(i)] = normal_quantile(p[size_t(i)]);
        }
    }

    out.data.assign(size_t(N * d), 0.0f);
    if (keep_codes) out.codes.assign(size_t(N * G), 0.0f);
    const int64_t blocks = (N + kSynthBlock - 1) / kSynthBlock;
    int64_t active_total = 0;
#pragma omp parallel reduction(+ : active_total)
    {
        std::vector<double> acc(static_cast<size_t>(d)), u(static_cast<size_t>(r)), e(size_t(s.correlated ? G : 0));
        std::vector<int64_t> act;
        std::vector<float> coef;
#pragma omp for schedule(dynamic)
        for (int64_t b = 0; b < blocks; ++b) {
            Rng rng(stream_seed(s.seed, 3, uint64_t(b)));
            const int64_t end = std::min(N, (b + 1) * kSynthBlock);
            for (int64_t n = b * kSynthBlock; n < end; ++n) {
                act.clear();
                coef.clear();
                if (!s.correlated) {
                    for (int64_t i = 0; i < G; ++i) {
                        const uint64_t x = rng.next_u64();
                        if (always[size_t(i)] || x < thr[size_t(i)]) act.push_back(i);
                    }
                } else {
                    fill_normal(rng, u.data(), r);
                    fill_normal(rng, e.data(), G);
                    for (int64_t i = 0; i < G; ++i) {
                        double z = e[size_t(i)];
                        const double* a = A.data() + i * r;
                        for (int64_t j = 0; j < r; ++j) z += a[j] * u[size_t(j)];
                        z *= inv_sd[size_t(i)];
                        if (always[size_t(i)] || z < zthr[size_t(i)]) act.push_back(i);
                    }
                }
                for (size_t t = 0; t < act.size(); ++t) coef.push_back(uniform_f24(rng));
                std::fill(acc.begin(), acc.end(), 0.0);
                for (size_t t = 0; t < act.size(); ++t) {
                    const float* f = out.features.data() + act[t] * d;
                    const double c = coef[t];
                    for (int64_t k = 0; k < d; ++k) acc[size_t(k)] += c * double(f[k]);
                }
                float* x = out.data.data() + n * d;
                for (int64_t k = 0; k < d; ++k) x[k] = float(acc[size_t(k)]);
                if (keep_codes)
                    for (size_t t = 0; t < act.size(); ++t) out.codes[size_t(n * G + act[t])] = coef[t];
                active_total += int64_t(act.size());
            }
        }
    }
    out.active_total = active_total;
    return out;
}

// --- MMCS ---------------------------------------------------------------------------------

namespace {
std::vector<float> normalised_rows(const float* M, int64_t rows, int64_t d) {
    std::vector<float> out(size_t(rows * d), 0.0f);
    for (int64_t i = 0; i < rows; ++i) {
        double nn = 0;
        for (int64_t k = 0; k < d; ++k) nn += double(M[i * d + k]) * double(M[i * d + k]);
        check(std::isfinite(nn), "mmcs: row " + std::to_string(i) + " has a NaN or infinite value");
        if (nn <= 0) continue;  // zero row: cosine 0 with everything
        const double inv = 1.0 / std::sqrt(nn);
        for (int64_t k = 0; k < d; ++k) out[size_t(i * d + k)] = float(double(M[i * d + k]) * inv);
    }
    return out;
}
}  // namespace

MmcsResult mmcs(Backend& be, const float* features, int64_t G, const float* W_dec, int64_t d_sae, int64_t d) {
    check(G >= 1, "mmcs: no true features (G = " + std::to_string(G) + ")");
    check(d_sae >= 1, "mmcs: no decoder rows (d_sae = " + std::to_string(d_sae) + ")");
    check(d >= 1, "mmcs: dimension d = " + std::to_string(d) + " must be at least 1");
    const std::vector<float> F = normalised_rows(features, G, d);
    const std::vector<float> D = normalised_rows(W_dec, d_sae, d);
    MmcsResult r;
    r.per_feature.assign(size_t(G), 0.0);
    r.best_row.assign(size_t(G), 0);
    const int64_t block = std::max<int64_t>(1, std::min<int64_t>(G, (int64_t(1) << 24) / d_sae));  // ≤ 64 MiB
    std::vector<float> C(size_t(block * d_sae));
    for (int64_t i0 = 0; i0 < G; i0 += block) {
        const int64_t m = std::min(block, G - i0);
        be.gemm(Trans::no, Trans::yes, m, d_sae, d, 1.0f, F.data() + i0 * d, d, D.data(), d, 0.0f, C.data(), d_sae);
        for (int64_t i = 0; i < m; ++i) {
            const float* c = C.data() + i * d_sae;
            int64_t best = 0;
            for (int64_t j = 1; j < d_sae; ++j)
                if (c[j] > c[best]) best = j;
            r.per_feature[size_t(i0 + i)] = std::clamp(double(c[best]), -1.0, 1.0);
            r.best_row[size_t(i0 + i)] = best;
        }
    }
    double sum = 0;
    int64_t above = 0;
    for (double v : r.per_feature) {
        sum += v;
        above += v > 0.9;
    }
    r.mmcs = sum / double(G);
    r.frac_above_0_9 = double(above) / double(G);
    std::vector<double> sorted = r.per_feature;
    std::sort(sorted.begin(), sorted.end());
    r.min = sorted.front();
    r.median = (G % 2) ? sorted[size_t(G / 2)] : 0.5 * (sorted[size_t(G / 2 - 1)] + sorted[size_t(G / 2)]);
    return r;
}

MmcsResult mmcs(const float* features, int64_t G, const float* W_dec, int64_t d_sae, int64_t d) {
    auto be = backend_create("onednn");
    return mmcs(*be, features, G, W_dec, d_sae, d);
}

}  // namespace sae
