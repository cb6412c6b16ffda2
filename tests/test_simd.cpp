// The vectorisable exp and sigmoid of src/simd.hpp against std::exp in double.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "simd.hpp"

namespace {

using sae::simd::exp_f32;
using sae::simd::sigmoid_f32;

TEST(SimdExp, RelativeErrorBelow2e7AcrossTheRange) {
    // About two million floats spread over [-87.3, 88.3], dense near 0 (every float exponent).
    double worst = 0;
    float worst_x = 0;
    auto check = [&](float x) {
        const double want = std::exp(double(x));
        const double err = std::fabs(double(exp_f32(x)) - want) / want;
        if (err > worst) worst = err, worst_x = x;
    };
    for (int i = 0; i <= 2000000; ++i) check(-87.3f + float(i) * (175.6f / 2000000.0f));
    for (float x = 1e-30f; x < 80.0f; x *= 1.001f) check(x), check(-x);
    check(0.0f);
    EXPECT_LT(worst, 2e-7) << "at x = " << worst_x;
}

TEST(SimdExp, SaturatesInsteadOfOverflowingAndKeepsNaN) {
    EXPECT_TRUE(std::isfinite(exp_f32(1000.0f)));
    EXPECT_GT(exp_f32(1000.0f), 1e38f);
    EXPECT_GT(exp_f32(-1000.0f), 0.0f);
    EXPECT_LT(exp_f32(-1000.0f), 2e-38f);
    EXPECT_TRUE(std::isnan(exp_f32(std::numeric_limits<float>::quiet_NaN())));
    EXPECT_EQ(exp_f32(0.0f), 1.0f);
}

TEST(SimdSigmoid, MatchesDoubleAndStaysInUnitInterval) {
    double worst_abs = 0, worst_rel = 0;
    for (int i = 0; i <= 400000; ++i) {
        const float z = -40.0f + float(i) * 2e-4f;
        const double want = 1.0 / (1.0 + std::exp(-double(z)));
        const double got = sigmoid_f32(z);
        worst_abs = std::max(worst_abs, std::fabs(got - want));
        worst_rel = std::max(worst_rel, std::fabs(got - want) / want);
    }
    EXPECT_LT(worst_abs, 1e-7);
    EXPECT_LT(worst_rel, 4e-7);
    for (float z : {-1e30f, -1000.0f, -88.0f, 88.0f, 1000.0f, 1e30f}) {
        const float s = sigmoid_f32(z);
        EXPECT_TRUE(std::isfinite(s)) << z;
        EXPECT_GE(s, 0.0f) << z;
        EXPECT_LE(s, 1.0f) << z;
    }
    EXPECT_EQ(sigmoid_f32(1000.0f), 1.0f);
    EXPECT_EQ(sigmoid_f32(0.0f), 0.5f);
    // Symmetry σ(−z) = 1 − σ(z) to float precision.
    for (float z : {0.1f, 1.0f, 3.0f, 10.0f}) EXPECT_NEAR(sigmoid_f32(-z), 1.0 - double(sigmoid_f32(z)), 1e-7) << z;
}

}  // namespace
