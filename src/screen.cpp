// Screened TopK: the defining fixed-order dot product, the error bound of the screening
// product, and the two vector passes of the screened selection (docs/performance.md). Built with
// -ffp-contract=off (CMakeLists.txt): no FMA contraction, so every clone gives the same bits.
#include <cmath>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <string>

#include "bf16.hpp"
#include "sae/modern.hpp"
#include "screen_kernels.hpp"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

namespace sae {

Screen screen_parse(const std::string& name) {
    if (name == "off") return Screen::off;
    if (name == "fp32" || name == "float32") return Screen::fp32;
    if (name == "bf16") return Screen::bf16;
    throw std::invalid_argument("screen must be off, fp32 or bf16 (got '" + name + "')");
}
std::string screen_name(Screen s) { return s == Screen::off ? "off" : s == Screen::fp32 ? "fp32" : "bf16"; }

namespace {
constexpr int kLanes = 16;

// Lanes combined pairwise: l + 8, then + 4, + 2, + 1.
inline float combine_lanes(float* a) {
    for (int h = kLanes / 2; h >= 1; h /= 2)
        for (int l = 0; l < h; ++l) a[l] = a[l] + a[l + h];
    return a[0];
}
}  // namespace

float screen_dot_plain(const float* x, const float* w, int64_t n, float b) {
    float a[kLanes];
    for (int l = 0; l < kLanes; ++l) a[l] = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
        const float p = x[i] * w[i];
        a[i % kLanes] = a[i % kLanes] + p;
    }
    return combine_lanes(a) + b;
}

#if defined(__GNUC__) && defined(__x86_64__)
namespace {
// The same order as screen_dot_plain; the tail lanes add 0·0 = +0, which changes no lane (a
// lane starts at +0 and a rounded sum is −0 only when both terms are −0).
__attribute__((target("avx512f"))) float screen_dot_avx512(const float* x, const float* w, int64_t n, float b) {
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(w + i)));
    if (i < n) {
        const __mmask16 m = __mmask16((1u << (n - i)) - 1u);
        acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, w + i)));
    }
    alignas(64) float a[kLanes];
    _mm512_store_ps(a, acc);
    return combine_lanes(a) + b;
}

__attribute__((target("avx512f"))) bool screen_lower_avx512(const float* s, const float* wn, const float* cb,
                                                             float alpha, float tau, int64_t n, float* lo) {
    const __m512 va = _mm512_set1_ps(alpha), vt = _mm512_set1_ps(tau);
    __mmask16 bad = 0;
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        const __m512 sv = _mm512_loadu_ps(s + j);
        const __m512 e = _mm512_add_ps(_mm512_mul_ps(va, _mm512_loadu_ps(wn + j)),
                                       _mm512_add_ps(_mm512_loadu_ps(cb + j), vt));
        const __m512 l = _mm512_sub_ps(sv, e);
        bad |= _mm512_cmp_ps_mask(_mm512_sub_ps(l, l), _mm512_setzero_ps(), _CMP_NEQ_UQ);
        _mm512_storeu_ps(lo + j, l);
    }
    bool ok = bad == 0;
    for (; j < n; ++j) {
        const float e = alpha * wn[j] + (cb[j] + tau);
        lo[j] = s[j] - e;
        ok = ok && (lo[j] - lo[j]) == 0.0f;
    }
    return ok;
}

__attribute__((target("avx512f"))) int64_t screen_candidates_avx512(const float* s, const float* wn,
                                                                     const float* cb, float alpha, float tau,
                                                                     int64_t n, float thr, int32_t* out) {
    const __m512 va = _mm512_set1_ps(alpha), vt = _mm512_set1_ps(tau), vthr = _mm512_set1_ps(thr);
    int64_t c = 0, j = 0;
    for (; j + 16 <= n; j += 16) {
        const __m512 e = _mm512_add_ps(_mm512_mul_ps(va, _mm512_loadu_ps(wn + j)),
                                       _mm512_add_ps(_mm512_loadu_ps(cb + j), vt));
        __mmask16 m = _mm512_cmp_ps_mask(_mm512_add_ps(_mm512_loadu_ps(s + j), e), vthr, _CMP_GE_OQ);
        while (m) {
            const int b = __builtin_ctz(unsigned(m));
            out[c++] = int32_t(j + b);
            m = __mmask16(m & (m - 1));
        }
    }
    for (; j < n; ++j)
        if (s[j] + (alpha * wn[j] + (cb[j] + tau)) >= thr) out[c++] = int32_t(j);
    return c;
}
// AVX2: the 16 lanes of the definition as two registers of 8 (lanes 0–7, 8–15), each lane
// summing in the same order as the plain loop; the tail masked (+0 in the unused lanes).
__attribute__((target("avx2"))) float screen_dot_avx2(const float* x, const float* w, int64_t n, float b) {
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
        lo = _mm256_add_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(w + i)));
        hi = _mm256_add_ps(hi, _mm256_mul_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(w + i + 8)));
    }
    alignas(32) float a[kLanes];
    _mm256_store_ps(a, lo);
    _mm256_store_ps(a + 8, hi);
    for (; i < n; ++i) {  // the tail in lane order, as the plain loop adds it
        const float p = x[i] * w[i];
        a[i % kLanes] = a[i % kLanes] + p;
    }
    return combine_lanes(a) + b;
}

__attribute__((target("avx2"))) bool screen_lower_avx2(const float* s, const float* wn, const float* cb, float alpha,
                                                        float tau, int64_t n, float* lo) {
    const __m256 va = _mm256_set1_ps(alpha), vt = _mm256_set1_ps(tau);
    __m256 bad = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 e = _mm256_add_ps(_mm256_mul_ps(va, _mm256_loadu_ps(wn + j)), _mm256_add_ps(_mm256_loadu_ps(cb + j), vt));
        const __m256 l = _mm256_sub_ps(_mm256_loadu_ps(s + j), e);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_sub_ps(l, l), _mm256_setzero_ps(), _CMP_NEQ_UQ));
        _mm256_storeu_ps(lo + j, l);
    }
    bool ok = _mm256_movemask_ps(bad) == 0;
    for (; j < n; ++j) {
        const float e = alpha * wn[j] + (cb[j] + tau);
        lo[j] = s[j] - e;
        ok = ok && (lo[j] - lo[j]) == 0.0f;
    }
    return ok;
}

__attribute__((target("avx2"))) int64_t screen_candidates_avx2(const float* s, const float* wn, const float* cb,
                                                                float alpha, float tau, int64_t n, float thr,
                                                                int32_t* out) {
    const __m256 va = _mm256_set1_ps(alpha), vt = _mm256_set1_ps(tau), vthr = _mm256_set1_ps(thr);
    int64_t c = 0, j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 e = _mm256_add_ps(_mm256_mul_ps(va, _mm256_loadu_ps(wn + j)), _mm256_add_ps(_mm256_loadu_ps(cb + j), vt));
        unsigned m = unsigned(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_add_ps(_mm256_loadu_ps(s + j), e), vthr, _CMP_GE_OQ)));
        while (m) {
            out[c++] = int32_t(j + __builtin_ctz(m));
            m &= m - 1;
        }
    }
    for (; j < n; ++j)
        if (s[j] + (alpha * wn[j] + (cb[j] + tau)) >= thr) out[c++] = int32_t(j);
    return c;
}
}  // namespace
#endif

namespace {
bool screen_lower_plain(const float* s, const float* wn, const float* cb, float alpha, float tau, int64_t n,
                        float* lo) {
    bool ok = true;
    for (int64_t j = 0; j < n; ++j) {
        const float e = alpha * wn[j] + (cb[j] + tau);
        lo[j] = s[j] - e;
        ok = ok && (lo[j] - lo[j]) == 0.0f;
    }
    return ok;
}
int64_t screen_candidates_plain(const float* s, const float* wn, const float* cb, float alpha, float tau,
                                int64_t n, float thr, int32_t* out) {
    int64_t c = 0;
    for (int64_t j = 0; j < n; ++j)
        if (s[j] + (alpha * wn[j] + (cb[j] + tau)) >= thr) out[c++] = int32_t(j);
    return c;
}

bool has_avx512() {
#if defined(__GNUC__) && defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
#else
    return false;
#endif
}
bool has_avx2() {
#if defined(__GNUC__) && defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
#else
    return false;
#endif
}
const bool g_avx512 = has_avx512();
const bool g_avx2 = has_avx2();
// The clone to run: the one asked for (2 AVX-512, 1 AVX2, 0 plain) if the CPU has it, else the
// next one down.
int clone_for(int want) { return want >= 2 && g_avx512 ? 2 : want >= 1 && g_avx2 ? 1 : 0; }
const int g_clone = clone_for(2);
}  // namespace

float screen_dot_clone(int which, const float* x, const float* w, int64_t n, float b) {
#if defined(__GNUC__) && defined(__x86_64__)
    switch (clone_for(which)) {
        case 2: return screen_dot_avx512(x, w, n, b);
        case 1: return screen_dot_avx2(x, w, n, b);
        default: break;
    }
#endif
    return screen_dot_plain(x, w, n, b);
}

bool screen_lower_clone(int which, const float* s, const float* wn, const float* cb, float alpha, float tau, int64_t n,
                        float* lo) {
#if defined(__GNUC__) && defined(__x86_64__)
    switch (clone_for(which)) {
        case 2: return screen_lower_avx512(s, wn, cb, alpha, tau, n, lo);
        case 1: return screen_lower_avx2(s, wn, cb, alpha, tau, n, lo);
        default: break;
    }
#endif
    return screen_lower_plain(s, wn, cb, alpha, tau, n, lo);
}

int64_t screen_candidates_clone(int which, const float* s, const float* wn, const float* cb, float alpha, float tau,
                                int64_t n, float thr, int32_t* out) {
#if defined(__GNUC__) && defined(__x86_64__)
    switch (clone_for(which)) {
        case 2: return screen_candidates_avx512(s, wn, cb, alpha, tau, n, thr, out);
        case 1: return screen_candidates_avx2(s, wn, cb, alpha, tau, n, thr, out);
        default: break;
    }
#endif
    return screen_candidates_plain(s, wn, cb, alpha, tau, n, thr, out);
}

float screen_dot(const float* x, const float* w, int64_t n, float b) { return screen_dot_clone(g_clone, x, w, n, b); }

bool screen_lower(const float* s, const float* wn, const float* cb, float alpha, float tau, int64_t n, float* lo) {
    return screen_lower_clone(g_clone, s, wn, cb, alpha, tau, n, lo);
}

int64_t screen_candidates(const float* s, const float* wn, const float* cb, float alpha, float tau, int64_t n,
                          float thr, int32_t* out) {
    return screen_candidates_clone(g_clone, s, wn, cb, alpha, tau, n, thr, out);
}

int64_t screen_candidates_each(const float* s, const float* wn, const float* cb, float alpha, float tau, int64_t n,
                               const float* thr, int32_t* out) {
    int64_t c = 0;
    for (int64_t j = 0; j < n; ++j)
        if (s[j] + (alpha * wn[j] + (cb[j] + tau)) >= thr[j]) out[c++] = int32_t(j);
    return c;
}

// u = 2⁻²⁴ (fp32), u_b = 2⁻⁸ (bf16 inputs, nearest even), γ = (n + 2)·u / (1 − (n + 2)·u) for
// the n products, n additions and the bias addition of either path, in any order.
//   value v = screen_dot:   |v − t| ≤ γ·(Σ|x||w| + |b|)             t = Σ x·w + b (exact)
//   fp32 screen s:          |s − t| ≤ γ·(Σ|x||w| + |b|)
//   bf16 screen s:          |s − t| ≤ γ·(Σ|x̃||w̃| + |b|) + (2u_b + u_b²)·Σ|x||w| + u_b·|b|
// with Σ|x̃||w̃| ≤ (1 + u_b)²·Σ|x||w| and Σ|x||w| ≤ ‖x‖·‖w‖. 8u more on both terms covers the
// float rounding of s ± e in the passes; tau covers underflow and flush-to-zero (≤ 2⁻¹²⁶ per
// operation, denormal inputs read as 0: ≤ 2⁻¹²⁶·|other factor|), for both paths, doubled.
namespace {
// v rounded to bf16 where v is a normal float; a subnormal v as it is (what the bf16 product
// makes of those — read as zero, or rounded — is within the bound's underflow term τ).
inline double bf16_normal(float v) {
    return std::fabs(v) < std::numeric_limits<float>::min() ? double(v) : double(bf16::value(bf16::round(v)));
}
}  // namespace

double screen_row_factor(Screen sc, const float* x, int64_t n, double rho, double* xn) {
    const ScreenBound B = screen_bound(sc, n);
    double q = 0, qt = 0, qd = 0;
    for (int64_t c = 0; c < n; ++c) {
        q += double(x[c]) * double(x[c]);
        if (sc == Screen::bf16) {
            const double t = bf16_normal(x[c]), dx = double(x[c]) - t;
            qt += t * t;
            qd += dx * dx;
        }
    }
    *xn = std::sqrt(q);
    if (sc != Screen::bf16) return B.coef_s * *xn;
    const double u = std::ldexp(1.0, -24), nu = double(n + 2) * u, g = nu / (1 - nu);
    const double xt = std::sqrt(qt), xd = std::sqrt(qd);
    return g * ((1 + rho) * xt + *xn) + rho * xt + (1 + 2 * rho) * xd + 8 * u * *xn;
}

double screen_column_sq(const float* w, int64_t d, double* resid) {
    double q = 0, qd = 0;
    for (int64_t c = 0; c < d; ++c) {
        const double v = double(w[c]), e = v - bf16_normal(w[c]);
        q += v * v;
        qd += e * e;
    }
    *resid = qd;
    return q;
}

double screen_rho(const float* Wt, int64_t n, int64_t d) {
    double rho = 0;
#pragma omp parallel for schedule(static) reduction(max : rho)
    for (int64_t j = 0; j < n; ++j) {
        double qd = 0;
        const double q = screen_column_sq(Wt + j * d, d, &qd);
        if (q > 0) rho = std::max(rho, std::sqrt(qd / q));
    }
    return rho;
}

bool screen_bf16_native() {
#if defined(__GNUC__) && defined(__x86_64__)
    static const bool native = std::getenv("SAE_NO_BF16") == nullptr &&
                               (__builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16"));
    return native;
#else
    return false;
#endif
}

ScreenBound screen_bound(Screen sc, int64_t n) {
    const double u = std::ldexp(1.0, -24), ub = sc == Screen::bf16 ? std::ldexp(1.0, -8) : 0.0;
    const double nu = double(n + 2) * u;
    const double g = nu / (1 - nu);
    ScreenBound b;
    b.coef_s = g * (1 + ub) * (1 + ub) + (2 * ub + ub * ub) + g + 8 * u;
    b.coef_b = 2 * g + ub + 8 * u;
    b.tau_scale = std::ldexp(1.0, -124);
    return b;
}

}  // namespace sae
