// What the field reports: SAELens's reconstruction metrics in `evaluate` against a plain double
// computation.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>

#include "sae/data.hpp"
#include "sae/eval.hpp"
#include "sae/io.hpp"
#include "sae/modern.hpp"
#include "sae/objective.hpp"
#include "test_util.hpp"

using namespace sae;

namespace {

// The saved tensors of an objective (what model.safetensors holds), as double vectors.
std::map<std::string, std::vector<double>> saved(const Objective& obj, const float* params) {
    std::vector<std::vector<float>> scratch;
    std::map<std::string, std::vector<double>> out;
    for (const auto& t : obj.export_tensors(params, 1.0, scratch)) {
        int64_t n = 1;
        for (auto q : t.shape) n *= q;
        const float* d = static_cast<const float*>(t.data);
        out[t.name] = std::vector<double>(d, d + n);
    }
    return out;
}

// TopK (k per row, ties to the lower index) in double from the saved tensors: x̂ [m, d_in].
std::vector<double> topk_reconstruct(const std::map<std::string, std::vector<double>>& t, const Matrix<float>& X,
                                     int64_t d_sae, int64_t k) {
    const int64_t m = X.rows, d = X.cols;
    const auto &W = t.at("W_enc"), &b = t.at("b_enc"), &Wd = t.at("W_dec"), &bd = t.at("b_dec");
    std::vector<double> out(size_t(m * d));
    for (int64_t i = 0; i < m; ++i) {
        std::vector<double> pre(static_cast<size_t>(d_sae));
        for (int64_t j = 0; j < d_sae; ++j) {
            double z = b[size_t(j)];
            for (int64_t c = 0; c < d; ++c) z += (double(X(i, c)) - bd[size_t(c)]) * W[size_t(c * d_sae + j)];
            pre[size_t(j)] = z;
        }
        std::vector<int64_t> idx(static_cast<size_t>(d_sae));
        for (int64_t j = 0; j < d_sae; ++j) idx[size_t(j)] = j;
        std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t c) { return pre[size_t(a)] > pre[size_t(c)]; });
        for (int64_t c = 0; c < d; ++c) out[size_t(i * d + c)] = bd[size_t(c)];
        for (int64_t r = 0; r < k; ++r) {
            const int64_t j = idx[size_t(r)];
            const double h = std::max(0.0, pre[size_t(j)]);
            for (int64_t c = 0; c < d; ++c) out[size_t(i * d + c)] += h * Wd[size_t(j * d + c)];
        }
    }
    return out;
}

TEST(EvalMetrics, SaeLensReconstructionMetricsMatchPlainDouble) {
    Config cfg;
    cfg.architecture = "topk";
    cfg.d_sae = 24;
    cfg.k = 3;
    const int64_t d = 8, m = 50;
    auto obj = objective_create(cfg, d);
    std::vector<float> p(size_t(obj->layout().total));
    Rng rng(3);
    Matrix<float> X(m, d);
    for (auto& x : X.data) x = float(rng.uniform(-1, 2));
    obj->init(p.data(), rng, X);
    for (float& v : p) v += float(rng.uniform(-0.05, 0.05));
    auto be = backend_create("reference");
    const EvalResult r = evaluate(*be, *obj, cfg, p.data(), X, 0.0, 7);  // chunks of 7: sums across chunks

    const auto xh = topk_reconstruct(saved(*obj, p.data()), X, cfg.d_sae, cfg.k);
    // explained variance = 1 − Σᵢ‖xᵢ − x̂ᵢ‖² / Σᵢ‖xᵢ − x̄‖², x̄ the mean row; cos, l2 ratio per row
    // then averaged; relative reconstruction bias = Σ‖x̂ᵢ‖² / Σ xᵢ·x̂ᵢ.
    std::vector<double> mean(static_cast<size_t>(d), 0.0);
    for (int64_t i = 0; i < m; ++i)
        for (int64_t c = 0; c < d; ++c) mean[size_t(c)] += double(X(i, c)) / double(m);
    double res = 0, tot = 0, cos = 0, ratio = 0, hh_sum = 0, xd_sum = 0;
    for (int64_t i = 0; i < m; ++i) {
        double xx = 0, hh = 0, xd = 0;
        for (int64_t c = 0; c < d; ++c) {
            const double x = X(i, c), h = xh[size_t(i * d + c)];
            res += (x - h) * (x - h);
            tot += (x - mean[size_t(c)]) * (x - mean[size_t(c)]);
            xx += x * x, hh += h * h, xd += x * h;
        }
        cos += xd / std::sqrt(xx * hh) / double(m);
        ratio += std::sqrt(hh / xx) / double(m);
        hh_sum += hh, xd_sum += xd;
    }
    EXPECT_NEAR(r.explained_variance, 1 - res / tot, 1e-5);
    EXPECT_NEAR(r.explained_variance, 1 - r.fvu, 1e-15);
    EXPECT_NEAR(r.cossim, cos, 1e-5);
    EXPECT_NEAR(r.l2_ratio, ratio, 1e-5);
    EXPECT_NEAR(r.relative_reconstruction_bias, hh_sum / xd_sum, 1e-5);
    // Not trivially 1 (the model is random): the checks compare real numbers.
    EXPECT_LT(r.cossim, 0.999);
    EXPECT_GT(std::fabs(r.l2_ratio - 1), 1e-3);
}

// A zero input and a zero reconstruction: SAELens's guards (‖x‖ < 1e-4 divides by 1; norms
// clamped at 1e-8 in the cosine) keep every metric finite.
TEST(EvalMetrics, ZeroRowsStayFinite) {
    Stats st;
    st.reset(3, 2);
    const float X[6] = {0, 0, 0, 1, 2, 2}, Xh[6] = {0, 0, 0, 0, 0, 0}, H[4] = {0, 0, 0, 0};
    st.add(X, Xh, H, 2, 0.0);
    EXPECT_EQ(st.cossim(), 0.0);
    EXPECT_EQ(st.l2_ratio(), 0.0);
    EXPECT_EQ(st.relative_reconstruction_bias(), 0.0);
    EXPECT_TRUE(std::isfinite(st.explained_variance()));
}

}  // namespace
