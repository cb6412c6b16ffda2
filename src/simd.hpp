// Internal to the library: what the hot element-wise loops share.
//
// SAE_SIMD_CLONES compiles a function for AVX-512 and AVX2 as well as the baseline ISA and picks
// one at load time (GCC function multi-versioning); the rest of the library stays at the baseline.
// The build uses -ffp-contract=off (ISO mode) and no fast-math, so every clone computes the same
// bits: the clones differ in width, never in the order of operations.
//
// exp_f32 is a branch-free exp the compiler can vectorise (libm's expf is a call per element).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SAE_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SAE_SIMD_CLONES
#endif

namespace sae::simd {

// e^x for float, relative error below 2e-7 over the whole range (tested against std::exp in
// double). Inputs are clamped to [-87.3, 88.3]: the result saturates at about 1.2e-38 below and
// 2.1e38 above instead of going to 0 or +inf; NaN propagates. Method: x = n·ln2 + r with
// |r| ≤ ln2/2 (ln2 split in two parts so r is exact), e^r by a degree-6 polynomial, 2^n by
// building the exponent bits.
inline float exp_f32(float x) {
    const float hi = 88.3f, lo = -87.3f;
    float xc = x > hi ? hi : x;
    xc = xc < lo ? lo : xc;
    // n = round(x / ln2): adding and subtracting 1.5·2^23 rounds to the nearest integer.
    const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - n * 0.693359375f;  // ln2 high part (exact in a few bits)
    r = r - n * -2.12194440e-4f;       // ln2 low part
    // e^r ≈ 1 + r + r²/2 + r³/6 + ... (Taylor coefficients, rounded)
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = (int32_t(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, 4);
    const float y = p * scale;
    return x != x ? x : y;
}

// 1/(1 + e^-z) without overflow for any z: e = e^-|z| ≤ 1, then s or 1 − s by the sign.
inline float sigmoid_f32(float z) {
    const float e = exp_f32(-std::fabs(z));
    const float s = 1.0f / (1.0f + e);
    return z >= 0.0f ? s : e * s;
}

inline double sigmoid_f64(double z) {
    if (z >= 0.0) return 1.0 / (1.0 + std::exp(-z));
    const double e = std::exp(z);
    return e / (1.0 + e);
}

}  // namespace sae::simd
