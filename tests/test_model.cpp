// The classic SAE: gradients by central differences in double (per term, every activation and
// sparsity), the fast path against the plain-loop reference, and cost values worked by hand.
#include <gtest/gtest.h>

#include <cmath>
#include <tuple>

#include "reference/reference.hpp"
#include "sae/model.hpp"

using namespace sae;

namespace {

struct Problem {
    ModelSpec spec;
    CostSpec cost;
    ParamLayout layout;
    std::vector<double> params;
    std::vector<double> X;
    int64_t m;
};

Problem make_problem(ModelSpec spec, CostSpec cost, int64_t m, uint64_t seed) {
    Problem p{spec, cost, model_layout(spec), {}, {}, m};
    Rng rng(seed);
    p.params.resize(size_t(p.layout.total));
    model_init(spec, p.layout, p.params.data(), rng);
    // Non-zero biases so every code path sees them.
    for (const char* b : {"b_enc", "b_dec"}) {
        const auto& v = p.layout.get(b);
        for (int64_t i = 0; i < v.numel(); ++i) p.params[size_t(v.offset + i)] = rng.uniform(-0.3, 0.3);
    }
    p.X.resize(size_t(m * spec.d_in));
    for (auto& x : p.X) x = rng.uniform(0.05, 0.95);
    return p;
}

CostTerms fast_cost(Backend& be, const Problem& p, const std::vector<double>& params,
                    std::vector<double>* grad) {
    Workspace<double> ws;
    ws.reserve(p.spec, p.m);
    return model_cost<double>(be, p.spec, p.cost, p.layout, params.data(), p.X.data(), p.m,
                              grad ? grad->data() : nullptr, ws);
}

// ‖num − ana‖ / ‖num + ana‖ over all parameters, central differences with step eps.
double gradient_error(Backend& be, const Problem& p, double eps = 1e-5) {
    std::vector<double> ana(size_t(p.layout.total));
    fast_cost(be, p, p.params, &ana);
    std::vector<double> x = p.params;
    double diff = 0, sum = 0;
    for (size_t i = 0; i < x.size(); ++i) {
        const double orig = x[i];
        x[i] = orig + eps;
        const double fp = fast_cost(be, p, x, nullptr).total();
        x[i] = orig - eps;
        const double fm = fast_cost(be, p, x, nullptr).total();
        x[i] = orig;
        const double num = (fp - fm) / (2 * eps);
        diff += (num - ana[i]) * (num - ana[i]);
        sum += (num + ana[i]) * (num + ana[i]);
    }
    return std::sqrt(diff) / std::sqrt(sum);
}

using Combo = std::tuple<Activation, Activation, bool, Sparsity>;

class GradientTest : public ::testing::TestWithParam<Combo> {};

TEST_P(GradientTest, CentralDifferencesAgreePerTerm) {
    auto [enc, dec, tied, sp] = GetParam();
    auto be = backend_create("onednn");
    ModelSpec spec{6, 4, enc, dec, tied};
    // Term by term: reconstruction alone, + weight decay, + sparsity, all together.
    const CostSpec terms[] = {
        {Sparsity::none, 0.1, 0.0, 0.0, 0.0},
        {Sparsity::none, 0.1, 0.0, 0.3, 0.0},
        {sp, 0.1, sp == Sparsity::kl ? 3.0 : 0.0, 0.0, sp == Sparsity::l1 ? 0.2 : 0.0},
        {sp, 0.1, 3.0, 0.3, 0.2},
    };
    for (const auto& cost : terms) {
        Problem p = make_problem(spec, cost, 7, 42);
        const double err = gradient_error(*be, p);
        EXPECT_LT(err, 1e-9) << "sparsity=" << sparsity_name(cost.sparsity)
                             << " wd=" << cost.weight_decay;
    }
}

std::vector<Combo> combos() {
    std::vector<Combo> out;
    for (auto enc : {Activation::sigmoid, Activation::relu, Activation::tanh})
        for (auto dec : {Activation::sigmoid, Activation::linear})
            for (bool tied : {false, true})
                for (auto sp : {Sparsity::none, Sparsity::kl, Sparsity::l1}) {
                    if (sp == Sparsity::kl && enc != Activation::sigmoid) continue;
                    out.emplace_back(enc, dec, tied, sp);
                }
    return out;
}

std::string combo_name(const ::testing::TestParamInfo<Combo>& info) {
    const Combo& c = info.param;
    return activation_name(std::get<0>(c)) + "_" + activation_name(std::get<1>(c)) +
           (std::get<2>(c) ? "_tied_" : "_untied_") + sparsity_name(std::get<3>(c));
}

INSTANTIATE_TEST_SUITE_P(AllModels, GradientTest, ::testing::ValuesIn(combos()),
                         combo_name);

// The reference's own gradient must pass the same finite-difference check, so that comparing
// the fast path with it means something.
TEST(Reference, GradientMatchesCentralDifferences) {
    for (bool tied : {false, true}) {
        Problem p = make_problem({5, 3, Activation::sigmoid, Activation::sigmoid, tied},
                                 {Sparsity::kl, 0.1, 3.0, 0.01, 0.0}, 6, 7);
        auto r = reference::cost(p.spec, p.cost, p.params, p.X, p.m, true);
        std::vector<double> x = p.params;
        double diff = 0, sum = 0;
        for (size_t i = 0; i < x.size(); ++i) {
            const double orig = x[i], eps = 1e-5;
            x[i] = orig + eps;
            const double fp = reference::cost(p.spec, p.cost, x, p.X, p.m, false).J.total();
            x[i] = orig - eps;
            const double fm = reference::cost(p.spec, p.cost, x, p.X, p.m, false).J.total();
            x[i] = orig;
            const double num = (fp - fm) / (2 * eps);
            diff += (num - r.grad[i]) * (num - r.grad[i]);
            sum += (num + r.grad[i]) * (num + r.grad[i]);
        }
        EXPECT_LT(std::sqrt(diff / sum), 1e-9);
    }
}

class FastVsReference : public ::testing::TestWithParam<Combo> {};

TEST_P(FastVsReference, CostAndGradientMatch) {
    auto [enc, dec, tied, sp] = GetParam();
    ModelSpec spec{20, 12, enc, dec, tied};
    Problem p = make_problem(spec, {sp, 0.1, 3.0, 3e-3, 1e-2}, 33, 9);
    auto ref = reference::cost(spec, p.cost, p.params, p.X, p.m, true);

    for (const char* name : {"onednn", "reference"}) {
        auto be = backend_create(name);
        // Double fast path: agrees to rounding.
        std::vector<double> g64(size_t(p.layout.total));
        CostTerms J64 = fast_cost(*be, p, p.params, &g64);
        EXPECT_NEAR(J64.rec, ref.J.rec, 1e-12);
        EXPECT_NEAR(J64.weight_decay, ref.J.weight_decay, 1e-12);
        EXPECT_NEAR(J64.sparsity, ref.J.sparsity, 1e-12);
        for (size_t i = 0; i < g64.size(); ++i) ASSERT_NEAR(g64[i], ref.grad[i], 1e-12) << i;

        // Float fast path: agrees to float rounding (relative 1e-4 of the gradient's scale).
        std::vector<float> pf(p.params.begin(), p.params.end()), Xf(p.X.begin(), p.X.end());
        std::vector<float> g32(size_t(p.layout.total));
        Workspace<float> ws;
        ws.reserve(spec, p.m);
        CostTerms J32 = model_cost<float>(*be, spec, p.cost, p.layout, pf.data(), Xf.data(), p.m,
                                          g32.data(), ws);
        EXPECT_NEAR(J32.total(), ref.J.total(), 1e-5 * std::max(1.0, ref.J.total()));
        double gmax = 0;
        for (double g : ref.grad) gmax = std::max(gmax, std::fabs(g));
        for (size_t i = 0; i < g32.size(); ++i)
            ASSERT_NEAR(g32[i], ref.grad[i], 1e-4 * gmax) << name << " param " << i;
        for (int64_t j = 0; j < spec.d_sae; ++j)
            EXPECT_NEAR(ws.rho_hat[size_t(j)], ref.rho_hat[size_t(j)], 1e-6);
    }
}

INSTANTIATE_TEST_SUITE_P(AllModels, FastVsReference, ::testing::ValuesIn(combos()),
                         combo_name);

// d_in = 2, d_sae = 1, two samples X = [[1,0],[0,1]], W_enc = [[0.5],[-1]], b_enc = [0.25],
// W_dec = [[1,-2]], b_dec = [0.1,-0.1]. By hand: z = 0.75 and −0.75, so h = σ(±0.75) =
// 0.679178699175393 and 0.320821300824607, ρ̂ = 0.5 exactly.
// J_weight_decay = ½·3e-3·(0.25 + 1 + 1 + 4) = 0.009375.
// J_sparsity(kl) = 3·(0.1·ln(0.1/0.5) + 0.9·ln(0.9/0.5)) = 1.1041926215054914.
// J_sparsity(l1, λ′=0.01) = 0.01·(0.6791787 + 0.3208213)/2 = 0.005.
// J_rec = 0.2394405080800584 (the same formula evaluated in Python's math module, 2026-11-22).
TEST(CostValues, WorkedByHand) {
    ModelSpec spec{2, 1, Activation::sigmoid, Activation::sigmoid, false};
    ParamLayout L = model_layout(spec);
    std::vector<double> params(size_t(L.total));
    auto P = model_params(spec, L, params.data());
    P.W_enc[0] = 0.5; P.W_enc[1] = -1; P.b_enc[0] = 0.25;
    P.W_dec[0] = 1; P.W_dec[1] = -2; P.b_dec[0] = 0.1; P.b_dec[1] = -0.1;
    const std::vector<double> X = {1, 0, 0, 1};
    auto be = backend_create("onednn");
    Workspace<double> ws;
    ws.reserve(spec, 2);

    CostSpec kl{Sparsity::kl, 0.1, 3.0, 3e-3, 0.0};
    CostTerms J = model_cost<double>(*be, spec, kl, L, params.data(), X.data(), 2, nullptr, ws);
    EXPECT_NEAR(J.rec, 0.2394405080800584, 1e-15);
    EXPECT_NEAR(J.weight_decay, 0.009375, 1e-15);
    EXPECT_NEAR(J.sparsity, 1.1041926215054914, 1e-14);
    EXPECT_NEAR(ws.H(0, 0), 0.679178699175393, 1e-15);
    EXPECT_NEAR(ws.rho_hat[0], 0.5, 1e-15);

    CostSpec l1{Sparsity::l1, 0.1, 0.0, 3e-3, 0.01};
    J = model_cost<double>(*be, spec, l1, L, params.data(), X.data(), 2, nullptr, ws);
    EXPECT_NEAR(J.sparsity, 0.005, 1e-15);

    // Tied: W_dec = W_encᵀ = [[0.5, -1]], decay counts W_enc twice: ½·3e-3·2·1.25.
    ModelSpec tied = spec;
    tied.tied = true;
    ParamLayout Lt = model_layout(tied);
    EXPECT_EQ(Lt.find("W_dec"), nullptr);
    std::vector<double> pt(size_t(Lt.total));
    auto Pt = model_params(tied, Lt, pt.data());
    Pt.W_enc[0] = 0.5; Pt.W_enc[1] = -1; Pt.b_enc[0] = 0.25;
    J = model_cost<double>(*be, tied, kl, Lt, pt.data(), X.data(), 2, nullptr, ws);
    EXPECT_NEAR(J.weight_decay, 0.00375, 1e-15);
}

TEST(CostValues, KlStaysFiniteAtTheEdges) {
    EXPECT_TRUE(std::isfinite(kl_divergence(0.1, 0.0)));
    EXPECT_TRUE(std::isfinite(kl_divergence(0.1, 1.0)));
    EXPECT_NEAR(kl_divergence(0.1, 0.1), 0.0, 1e-15);
    EXPECT_GT(kl_divergence(0.1, 0.5), 0.0);
}

TEST(Init, UniformInUfldlRangeAndSeeded) {
    ModelSpec spec{784, 196, Activation::sigmoid, Activation::sigmoid, false};
    ParamLayout L = model_layout(spec);
    std::vector<float> a(size_t(L.total)), b(size_t(L.total)), c(size_t(L.total));
    Rng r1(5), r2(5), r3(6);
    model_init(spec, L, a.data(), r1);
    model_init(spec, L, b.data(), r2);
    model_init(spec, L, c.data(), r3);
    EXPECT_EQ(a, b);
    EXPECT_NE(a, c);
    const double r = std::sqrt(6.0) / std::sqrt(784.0 + 196 + 1);
    const auto& W = L.get("W_enc");
    double lo = 1, hi = -1;
    for (int64_t i = 0; i < W.numel(); ++i) {
        lo = std::min(lo, double(a[size_t(W.offset + i)]));
        hi = std::max(hi, double(a[size_t(W.offset + i)]));
    }
    EXPECT_GE(lo, -r);
    EXPECT_LE(hi, r);
    EXPECT_LT(lo, -0.95 * r);  // actually spans the range
    EXPECT_GT(hi, 0.95 * r);
    const auto& bias = L.get("b_enc");
    for (int64_t i = 0; i < bias.numel(); ++i) EXPECT_EQ(a[size_t(bias.offset + i)], 0.0f);
}

TEST(Validate, KlNeedsSigmoidEncoder) {
    ModelSpec spec{4, 2, Activation::relu, Activation::linear, false};
    try {
        validate(spec, CostSpec{Sparsity::kl});
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("sigmoid"), std::string::npos) << e.what();
    }
    EXPECT_NO_THROW(validate(spec, CostSpec{Sparsity::l1}));
    spec.encoder = Activation::sigmoid;
    CostSpec bad{Sparsity::kl, 1.5};
    EXPECT_THROW(validate(spec, bad), Error);
}

}  // namespace
