// Modern SAEs (standard L1, TopK, BatchTopK, JumpReLU, AuxK): central differences in double on
// the fast path, the fast path (float and double, both backends) against the plain-loop
// reference, values worked by hand, selection rules, decoder-norm helpers, initialisation.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <new>
#include <ostream>
#include <string>

#include "reference/reference_modern.hpp"
#include "sae/modern.hpp"

// Counts heap allocations while g_counting is set (the workspace promise: none once reserved).
// The replacements pair malloc with free; GCC cannot see that and warns about every delete.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_allocations{0};
}  // namespace
void* operator new(std::size_t n) {
    if (g_counting.load(std::memory_order_relaxed)) ++g_allocations;
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

using namespace sae;

namespace {

struct Problem {
    ModernSpec spec;
    ParamLayout layout;
    std::vector<double> params;
    std::vector<double> X;  // [m, d_in]
    int64_t m = 0;
    std::vector<uint8_t> dead;  // [d_sae], or empty for no dead mask
    const uint8_t* dead_ptr() const { return dead.empty() ? nullptr : dead.data(); }
};

// Random parameters (not the init: W_enc ≠ W_decᵀ so both gradients are exercised), non-zero
// biases, thresholds θ ∈ [0.05, 0.4], inputs in [−1, 1]. Every third latent dead if asked.
Problem make_problem(const ModernSpec& spec, int64_t m, uint64_t seed, bool with_dead) {
    Problem p{spec, modern_layout(spec), {}, {}, m, {}};
    Rng rng(seed);
    p.params.resize(size_t(p.layout.total));
    for (const auto& v : p.layout.views)
        for (int64_t i = 0; i < v.numel(); ++i) {
            double& w = p.params[size_t(v.offset + i)];
            if (v.name == "W_enc" || v.name == "W_dec") w = rng.uniform(-0.5, 0.5);
            else if (v.name == "b_enc" || v.name == "b_gate" || v.name == "b_mag") w = rng.uniform(-0.1, 0.3);
            else if (v.name == "r_mag") w = rng.uniform(-0.3, 0.3);
            else if (v.name == "b_dec") w = rng.uniform(-0.3, 0.3);
            else w = std::log(rng.uniform(0.05, 0.4));  // log_threshold
        }
    p.X.resize(size_t(m * spec.d_in));
    for (auto& x : p.X) x = rng.uniform(-1, 1);
    if (with_dead) {
        p.dead.assign(size_t(spec.d_sae), 0);
        for (int64_t j = 1; j < spec.d_sae; j += 3) p.dead[size_t(j)] = 1;
    }
    return p;
}

struct Case {
    Arch arch;
    bool apply_b_dec;
    bool l1_decoder_norm;  // standard only
    bool aux;              // topk / batchtopk only
    double batchtopk_threshold = -1;
};

std::string case_label(const Case& c) {
    std::string s = arch_name(c.arch) + (c.apply_b_dec ? "_bdecin" : "_nobdecin");
    if (c.arch == Arch::standard) s += c.l1_decoder_norm ? "_decnorm" : "_plainl1";
    if (c.aux) s += "_auxk";
    if (c.batchtopk_threshold >= 0) s += "_inference";
    return s;
}
std::string case_name(const ::testing::TestParamInfo<Case>& info) { return case_label(info.param); }
void PrintTo(const Case& c, std::ostream* os) { *os << case_label(c); }

// The tests make thousands of calls on tiny problems, where forking threads only adds barrier
// waits (seconds on a loaded machine), so they run on one thread. Multi-threaded results are
// checked bit-for-bit against one thread in Determinism.SameBitsForAnyThreadCount.
const bool kOneThread = (set_num_threads(1), true);

ModernSpec case_spec(const Case& c, int64_t d_in, int64_t d_sae, int64_t k, int64_t k_aux) {
    ModernSpec s;
    s.d_in = d_in;
    s.d_sae = d_sae;
    s.arch = c.arch;
    s.k = k;
    s.apply_b_dec_to_input = c.apply_b_dec;
    s.l1_decoder_norm = c.l1_decoder_norm;
    s.l1_coefficient = 0.05;
    s.l0_coefficient = 0.02;
    s.bandwidth = 0.1;
    s.k_aux = c.aux ? k_aux : 0;
    s.aux_coefficient = 0.25;
    if (arch_info(c.arch).nested) {  // three nested groups, unequal weights
        s.group_ends = {d_sae / 4, d_sae / 2, d_sae};
        s.group_weights = {1.0, 0.5, 2.0};
    }
    validate(s);
    return s;
}

// Every row of arch_table(), with and without b_dec subtracted from the input: standard with
// and without decoder norms in its L1, AuxK on and off where it applies, and the inference rule
// of a batch threshold.
std::vector<Case> all_cases(bool with_inference) {
    std::vector<Case> out;
    for (bool b : {true, false})
        for (const ArchInfo& row : arch_table()) {
            if (row.arch == Arch::standard) {
                for (bool norm : {true, false}) out.push_back({row.arch, b, norm, false});
                continue;
            }
            out.push_back({row.arch, b, false, false});
            if (row.aux_k) out.push_back({row.arch, b, false, true});
            if (with_inference && row.threshold == ThresholdKind::batch)
                out.push_back({row.arch, b, false, true, 0.15});
        }
    return out;
}

constexpr double kScale = 0.7;  // sparsity_scale used throughout (not 1, so it is exercised)

// --- central differences ------------------------------------------------------------------
// The objective differentiated: rec + sparsity + AuxK with e = x − x̂ frozen at the base point
// (the spec treats e as a constant); gated: + the gate's reconstruction through the decoder
// frozen at the base point. The selection (TopK/BatchTopK/AuxK sets, JumpReLU gates)
// is piecewise constant: a parameter whose ±eps step changes it is skipped and counted.
struct FdResult {
    double err = 0;
    int checked = 0, skipped = 0;
    double base_mismatch = 0;  // |objective(p0) − (rec + sparsity + aux)(p0)|
};

// eval(params, with_grad_out) → {terms, H, Haux, Ehat, Xhat} through a callback, so the same
// check runs on the fast path and on the reference.
struct Eval {
    CostTerms J;
    std::vector<double> H, Haux, Ehat, Xhat;
};

template <class F>
FdResult central_differences(const Problem& p, const std::vector<double>& ana, F&& eval,
                             double eps = 1e-6) {
    const bool aux = p.spec.k_aux > 0 && !p.dead.empty();
    const bool gate = arch_info(p.spec.arch).gate;
    const int64_t m = p.m, d_in = p.spec.d_in, d_sae = p.spec.d_sae;
    const double* Wd0 = p.params.data() + p.layout.get("W_dec").offset;
    const double* bd0 = p.params.data() + p.layout.get("b_dec").offset;
    Eval base = eval(p.params);
    std::vector<double> e0(base.Xhat.size());
    for (size_t t = 0; t < e0.size(); ++t) e0[t] = p.X[t] - base.Xhat[t];
    auto pattern = [&](const Eval& e) {
        std::vector<uint8_t> pat;
        for (double h : e.H) pat.push_back(h != 0);
        if (aux || gate)
            for (double h : e.Haux) pat.push_back(h != 0);
        return pat;
    };
    auto objective = [&](const Eval& e) {
        double f = e.J.rec + e.J.sparsity;
        if (gate) {
            double q = 0;
            for (int64_t i = 0; i < m; ++i)
                for (int64_t c = 0; c < d_in; ++c) {
                    double z = bd0[c];
                    for (int64_t j = 0; j < d_sae; ++j) z += e.Haux[size_t(i * d_sae + j)] * Wd0[j * d_in + c];
                    q += (z - p.X[size_t(i * d_in + c)]) * (z - p.X[size_t(i * d_in + c)]);
                }
            f += 0.5 * q / double(m);
        }
        if (aux) {
            double s = 0;
            for (size_t t = 0; t < e0.size(); ++t) s += (e.Ehat[t] - e0[t]) * (e.Ehat[t] - e0[t]);
            f += p.spec.aux_coefficient * 0.5 * s / double(m);
        }
        return f;
    };
    const auto pat0 = pattern(base);
    FdResult r;
    r.base_mismatch = std::fabs(objective(base) - (base.J.rec + base.J.sparsity + base.J.aux));
    const ParamView* lt = p.layout.find("log_threshold");
    std::vector<double> x = p.params;
    double diff = 0, sum = 0;
    for (int64_t i = 0; i < int64_t(x.size()); ++i) {
        if (lt && i >= lt->offset && i < lt->offset + lt->numel()) continue;  // surrogate only
        const double orig = x[size_t(i)];
        x[size_t(i)] = orig + eps;
        const Eval ep = eval(x);
        x[size_t(i)] = orig - eps;
        const Eval em = eval(x);
        x[size_t(i)] = orig;
        if (pattern(ep) != pat0 || pattern(em) != pat0) {
            ++r.skipped;
            continue;
        }
        ++r.checked;
        const double num = (objective(ep) - objective(em)) / (2 * eps);
        diff += (num - ana[size_t(i)]) * (num - ana[size_t(i)]);
        sum += (num + ana[size_t(i)]) * (num + ana[size_t(i)]);
    }
    r.err = std::sqrt(diff) / std::sqrt(sum);
    return r;
}

Eval fast_eval(Backend& be, const Problem& p, const std::vector<double>& params,
               ModernWorkspace<double>& ws, double* grad, double threshold = -1) {
    Eval e;
    e.J = modern_cost<double>(be, p.spec, p.layout, params.data(), p.X.data(), p.m, grad, ws,
                              p.dead_ptr(), threshold, kScale);
    const int64_t nh = p.m * p.spec.d_sae, nx = p.m * p.spec.d_in;
    e.H.assign(ws.H.data.begin(), ws.H.data.begin() + nh);
    e.Xhat.assign(ws.Xhat.data.begin(), ws.Xhat.data.begin() + nx);
    if (!ws.Haux.data.empty()) {
        e.Haux.assign(ws.Haux.data.begin(), ws.Haux.data.begin() + nh);
        e.Ehat.assign(ws.Eaux.data.begin(), ws.Eaux.data.begin() + nx);
    }
    return e;
}

class GradientTest : public ::testing::TestWithParam<Case> {};

TEST_P(GradientTest, FastPathMatchesCentralDifferences) {
    const Case c = GetParam();
    Problem p = make_problem(case_spec(c, 6, 9, 3, 2), 5, 11, c.aux);
    auto be = backend_create("onednn");
    ModernWorkspace<double> ws;
    ws.reserve(p.spec, p.m);
    std::vector<double> ana(size_t(p.layout.total));
    const Eval base = fast_eval(*be, p, p.params, ws, ana.data());
    if (c.aux) {
        EXPECT_GT(base.J.aux, 0.0);
    }
    if (c.arch == Arch::standard || c.arch == Arch::jumprelu || c.arch == Arch::gated) {
        EXPECT_GT(base.J.sparsity, 0.0);
    }
    if (arch_info(c.arch).gate) {
        EXPECT_GT(base.J.aux, 0.0);
    }
    const FdResult r = central_differences(
        p, ana, [&](const std::vector<double>& x) { return fast_eval(*be, p, x, ws, nullptr); });
    EXPECT_LT(r.base_mismatch, 1e-15);
    EXPECT_LT(r.err, 1e-7) << "checked " << r.checked << ", skipped " << r.skipped;
    EXPECT_LE(r.skipped, r.checked / 20) << "too many selection changes for a meaningful check";
}

// The reference's own gradient passes the same check, so comparing against it means something.
TEST_P(GradientTest, ReferenceMatchesCentralDifferences) {
    const Case c = GetParam();
    Problem p = make_problem(case_spec(c, 6, 9, 3, 2), 5, 12, c.aux);
    auto ref_eval = [&](const std::vector<double>& x) {
        auto r = reference::modern_cost(p.spec, x, p.X, p.m, false, p.dead, -1, kScale);
        return Eval{r.J, r.H, r.Haux, r.Ehat, r.Xhat};
    };
    auto r0 = reference::modern_cost(p.spec, p.params, p.X, p.m, true, p.dead, -1, kScale);
    const FdResult r = central_differences(p, r0.grad, ref_eval);
    EXPECT_LT(r.base_mismatch, 1e-15);
    EXPECT_LT(r.err, 1e-7) << "checked " << r.checked << ", skipped " << r.skipped;
    EXPECT_LE(r.skipped, r.checked / 20);
}

INSTANTIATE_TEST_SUITE_P(AllArchitectures, GradientTest, ::testing::ValuesIn(all_cases(false)),
                         case_name);

// --- fast path against the reference -------------------------------------------------------
class FastVsReference : public ::testing::TestWithParam<Case> {};

TEST_P(FastVsReference, CostTermsActivationsAndGradientMatch) {
    const Case c = GetParam();
    const ModernSpec spec = case_spec(c, 20, 32, 5, 4);
    Problem p = make_problem(spec, 33, 9, c.aux);
    const double thr = c.batchtopk_threshold;
    auto ref = reference::modern_cost(spec, p.params, p.X, p.m, true, p.dead, thr, kScale);
    if (c.aux) {
        EXPECT_GT(ref.J.aux, 0.0);
    }
    double gmax = 0;
    for (double g : ref.grad) gmax = std::max(gmax, std::fabs(g));
    if (spec.arch == Arch::jumprelu) {
        // The surrogate is exercised: some log_threshold gradients are non-zero.
        const auto& v = p.layout.get("log_threshold");
        int nonzero = 0;
        for (int64_t j = 0; j < v.numel(); ++j) nonzero += ref.grad[size_t(v.offset + j)] != 0;
        EXPECT_GT(nonzero, spec.d_sae / 4);
    }

    for (const char* name : {"onednn", "reference"}) {
        SCOPED_TRACE(name);
        auto be = backend_create(name);
        // Double: agrees to rounding.
        ModernWorkspace<double> ws;
        ws.reserve(spec, p.m + 3);  // larger than the batch on purpose
        std::vector<double> g64(size_t(p.layout.total), 123.0);  // overwritten, not added to
        CostTerms J = modern_cost<double>(*be, spec, p.layout, p.params.data(), p.X.data(), p.m,
                                          g64.data(), ws, p.dead_ptr(), thr, kScale);
        EXPECT_NEAR(J.rec, ref.J.rec, 1e-12);
        EXPECT_NEAR(J.sparsity, ref.J.sparsity, 1e-12);
        EXPECT_NEAR(J.aux, ref.J.aux, 1e-12);
        EXPECT_EQ(J.weight_decay, 0.0);
        for (int64_t t = 0; t < p.m * spec.d_sae; ++t) {
            ASSERT_NEAR(ws.pre.data[size_t(t)], ref.pre[size_t(t)], 1e-12) << t;
            ASSERT_NEAR(ws.H.data[size_t(t)], ref.H[size_t(t)], 1e-12) << t;
        }
        for (int64_t t = 0; t < p.m * spec.d_in; ++t)
            ASSERT_NEAR(ws.Xhat.data[size_t(t)], ref.Xhat[size_t(t)], 1e-12) << t;
        for (size_t i = 0; i < g64.size(); ++i)
            ASSERT_NEAR(g64[i], ref.grad[i], 1e-12 * std::max(1.0, gmax)) << "param " << i;

        // Float: agrees to float rounding (relative 1e-4 of the gradient's scale).
        std::vector<float> pf(p.params.begin(), p.params.end()), Xf(p.X.begin(), p.X.end());
        std::vector<float> g32(size_t(p.layout.total));
        ModernWorkspace<float> wf;
        wf.reserve(spec, p.m);
        CostTerms Jf = modern_cost<float>(*be, spec, p.layout, pf.data(), Xf.data(), p.m,
                                          g32.data(), wf, p.dead_ptr(), thr, kScale);
        EXPECT_NEAR(Jf.rec, ref.J.rec, 1e-5 * std::max(1.0, ref.J.rec));
        EXPECT_NEAR(Jf.sparsity, ref.J.sparsity, 1e-5 * std::max(1.0, ref.J.sparsity));
        EXPECT_NEAR(Jf.aux, ref.J.aux, 1e-5 * std::max(1.0, ref.J.aux));
        for (int64_t t = 0; t < p.m * spec.d_sae; ++t)
            ASSERT_NEAR(wf.H.data[size_t(t)], ref.H[size_t(t)], 1e-5) << t;
        for (size_t i = 0; i < g32.size(); ++i)
            ASSERT_NEAR(g32[i], ref.grad[i], 1e-4 * gmax) << "param " << i;
    }
}

INSTANTIATE_TEST_SUITE_P(AllArchitectures, FastVsReference, ::testing::ValuesIn(all_cases(true)),
                         case_name);

// --- worked by hand -------------------------------------------------------------------------
// d_in = 2, d_sae = 3, m = 2, b_dec subtracted from the input:
//   W_enc = [[1, 0, 1], [0, 1, −1]]   (row = input feature)   b_enc = [0, 0, 0.1]
//   W_dec = [[1, 0], [0, 1], [0.5, 0.5]]                       b_dec = [0.5, 0]
//   X = [[1.5, 1], [0.5, 3]]  →  x' = [[1, 1], [0, 3]]
//   pre = x'·W_enc + b_enc = [[1, 1, 0.1], [0, 3, −2.9]]
// TopK k=1: row 0 ties 1 = 1 → the lower index 0 wins; row 1 keeps 3.
//   H = [[1, 0, 0], [0, 3, 0]]; x̂ = H·W_dec + b_dec = [[1.5, 0], [0.5, 3]]
//   x̂ − x = [[0, −1], [0, 0]] → rec = ½·(1 + 0)/2 = 0.25.
// AuxK with latent 2 dead, k_aux = 1, coefficient 1/32: e = x − x̂ = [[0, 1], [0, 0]];
//   h_aux = [[0, 0, 0.1], [0, 0, relu(−2.9) = 0]]; ê = [[0.05, 0.05], [0, 0]];
//   ê − e = [[0.05, −0.95], [0, 0]] → aux = (1/32)·½·(0.0025 + 0.9025)/2 = 0.00707031250.
// BatchTopK k=2, training (keep 4 of 6): 3, 1, 1, 0.1 → H = [[1, 1, 0.1], [0, 3, 0]];
//   x̂ = [[1.55, 1.05], [0.5, 3]] → rec = ½·(0.05² + 0.05²)/2 = 0.00125.
// BatchTopK k=1, training (keep 2): 3, then the tie 1 = 1 at (0,0) and (0,1) → (0,0):
//   the same H as TopK k=1.
// BatchTopK inference, threshold 0.5: H = [[1, 1, 0], [0, 3, 0]], x̂ = x → rec = 0.
// Standard, λ₁ = 0.01: H = relu(pre) = [[1, 1, 0.1], [0, 3, 0]], rec = 0.00125;
//   decoder norms [1, 1, √0.5] → sparsity = 0.01·(1 + 1 + 0.1·√0.5 + 3)/2
//   = 0.025353553390593274; without the norm 0.01·5.1/2 = 0.0255; sparsity_scale 0.5 halves it.
// JumpReLU, θ = 0.05 for every latent, ε = 0.2, λ₀ = 0.01:
//   gates pre > θ: [[1, 1, 1], [0, 1, 0]] → H = [[1, 1, 0.1], [0, 3, 0]], rec = 0.00125,
//   sparsity = 0.01·4/2 = 0.02.
//   ∂rec/∂h: row 0 (x̂ − x)/m = [0.025, 0.025] → ·W_decᵀ = [0.025, 0.025, 0.025]; row 1: 0.
//   K window |pre − θ| < ε/2 = 0.1: row 0 only latent 2 (0.1), row 1 only latent 0 (0).
//   ∂J/∂θ₀ = row 1: 0·(−θ/ε) − (λ₀/m)/ε = −0.025;  ∂J/∂θ₁ = 0;
//   ∂J/∂θ₂ = row 0: 0.025·(−0.05/0.2) − (0.01/2)/0.2 = −0.00625 − 0.025 = −0.03125.
//   ∂J/∂log θ = θ·∂J/∂θ = [−0.00125, 0, −0.0015625].
struct HandExample {
    ModernSpec spec;
    ParamLayout L;
    std::vector<double> params;
    std::vector<double> X{1.5, 1, 0.5, 3};

    explicit HandExample(Arch arch, int64_t k = 1) {
        spec.d_in = 2;
        spec.d_sae = 3;
        spec.arch = arch;
        spec.k = k;
        spec.apply_b_dec_to_input = true;
        L = modern_layout(spec);
        params.assign(size_t(L.total), 0.0);
        set("W_enc", {1, 0, 1, 0, 1, -1});
        set("b_enc", {0, 0, 0.1});
        set("W_dec", {1, 0, 0, 1, 0.5, 0.5});
        set("b_dec", {0.5, 0});
        if (arch == Arch::jumprelu) set("log_threshold", std::vector<double>(3, std::log(0.05)));
    }
    void set(const char* name, const std::vector<double>& v) {
        const auto& view = L.get(name);
        ASSERT_EQ(int64_t(v.size()), view.numel());
        std::copy(v.begin(), v.end(), params.begin() + view.offset);
    }
    CostTerms run(ModernWorkspace<double>& ws, double* grad = nullptr,
                  const uint8_t* dead = nullptr, double thr = -1, double scale = 1) {
        auto be = backend_create("onednn");
        ws.reserve(spec, 2);
        return modern_cost<double>(*be, spec, L, params.data(), X.data(), 2, grad, ws, dead, thr,
                                   scale);
    }
};

void expect_matrix(const Matrix<double>& M, const std::vector<double>& want, double tol) {
    for (size_t t = 0; t < want.size(); ++t) EXPECT_NEAR(M.data[t], want[t], tol) << "entry " << t;
}

TEST(WorkedByHand, TopKWithAuxK) {
    HandExample ex(Arch::topk, 1);
    ex.spec.k_aux = 1;
    ex.spec.aux_coefficient = 1.0 / 32;
    ModernWorkspace<double> ws;
    const uint8_t dead[3] = {0, 0, 1};
    CostTerms J = ex.run(ws, nullptr, dead);
    expect_matrix(ws.pre, {1, 1, 0.1, 0, 3, -2.9}, 1e-15);
    expect_matrix(ws.H, {1, 0, 0, 0, 3, 0}, 0);
    expect_matrix(ws.Xhat, {1.5, 0, 0.5, 3}, 1e-15);
    expect_matrix(ws.Haux, {0, 0, 0.1, 0, 0, 0}, 1e-15);
    expect_matrix(ws.Eaux, {0.05, 0.05, 0, 0}, 1e-15);
    EXPECT_NEAR(J.rec, 0.25, 1e-15);
    EXPECT_EQ(J.sparsity, 0.0);
    EXPECT_NEAR(J.aux, 0.00707031250, 1e-15);
    // No dead mask: no AuxK.
    EXPECT_EQ(ex.run(ws).aux, 0.0);
}

TEST(WorkedByHand, BatchTopK) {
    ModernWorkspace<double> ws;
    HandExample k2(Arch::batchtopk, 2);
    CostTerms J = k2.run(ws);
    expect_matrix(ws.H, {1, 1, 0.1, 0, 3, 0}, 1e-15);
    expect_matrix(ws.Xhat, {1.55, 1.05, 0.5, 3}, 1e-15);
    EXPECT_NEAR(J.rec, 0.00125, 1e-15);
    EXPECT_NEAR(batchtopk_min_kept(ws, 2, 3), 0.1, 1e-15);

    HandExample k1(Arch::batchtopk, 1);
    J = k1.run(ws);
    expect_matrix(ws.H, {1, 0, 0, 0, 3, 0}, 0);
    EXPECT_NEAR(J.rec, 0.25, 1e-15);
    EXPECT_EQ(batchtopk_min_kept(ws, 2, 3), 1.0);

    J = k1.run(ws, nullptr, nullptr, 0.5);  // inference rule; k no longer matters
    expect_matrix(ws.H, {1, 1, 0, 0, 3, 0}, 0);
    EXPECT_NEAR(J.rec, 0.0, 1e-15);
}

TEST(WorkedByHand, StandardL1) {
    HandExample ex(Arch::standard);
    ex.spec.l1_coefficient = 0.01;
    ModernWorkspace<double> ws;
    ex.spec.l1_decoder_norm = true;
    CostTerms J = ex.run(ws);
    expect_matrix(ws.H, {1, 1, 0.1, 0, 3, 0}, 1e-15);
    EXPECT_NEAR(J.rec, 0.00125, 1e-15);
    EXPECT_NEAR(J.sparsity, 0.025353553390593274, 1e-15);
    EXPECT_NEAR(ex.run(ws, nullptr, nullptr, -1, 0.5).sparsity, 0.025353553390593274 / 2, 1e-15);
    ex.spec.l1_decoder_norm = false;
    EXPECT_NEAR(ex.run(ws).sparsity, 0.0255, 1e-15);
}

TEST(WorkedByHand, JumpReluThresholdSurrogate) {
    HandExample ex(Arch::jumprelu);
    ex.spec.bandwidth = 0.2;
    ex.spec.l0_coefficient = 0.01;
    ModernWorkspace<double> ws;
    std::vector<double> grad(size_t(ex.L.total));
    CostTerms J = ex.run(ws, grad.data());
    expect_matrix(ws.H, {1, 1, 0.1, 0, 3, 0}, 1e-15);
    EXPECT_NEAR(J.rec, 0.00125, 1e-15);
    EXPECT_NEAR(J.sparsity, 0.02, 1e-15);
    const double* g = grad.data() + ex.L.get("log_threshold").offset;
    EXPECT_NEAR(g[0], -0.00125, 1e-15);
    EXPECT_EQ(g[1], 0.0);
    EXPECT_NEAR(g[2], -0.0015625, 1e-15);
    // The reference derives the same numbers independently.
    auto ref = reference::modern_cost(ex.spec, ex.params, ex.X, 2, true);
    const double* gr = ref.grad.data() + ex.L.get("log_threshold").offset;
    EXPECT_NEAR(gr[0], -0.00125, 1e-15);
    EXPECT_EQ(gr[1], 0.0);
    EXPECT_NEAR(gr[2], -0.0015625, 1e-15);
}

// --- selection rules ------------------------------------------------------------------------
struct Selected {
    ModernSpec spec;
    Problem p;
    ModernWorkspace<float> ws;
    Selected(Arch arch, int64_t k, double thr = -1)
        : spec(case_spec({arch, true, false, false}, 10, 50, k, 0)), p(make_problem(spec, 40, 3, false)) {
        auto be = backend_create("onednn");
        std::vector<float> pf(p.params.begin(), p.params.end()), Xf(p.X.begin(), p.X.end());
        ws.reserve(spec, p.m);
        modern_cost<float>(*be, spec, p.layout, pf.data(), Xf.data(), p.m, nullptr, ws, nullptr, thr);
    }
};

TEST(Selection, TopKKeepsTheKLargestPerRow) {
    const int64_t k = 7;
    Selected s(Arch::topk, k);
    const int64_t n = s.spec.d_sae;
    int full_rows = 0;
    for (int64_t i = 0; i < s.p.m; ++i) {
        int64_t kept = 0, positive = 0;
        float min_kept = INFINITY, max_dropped = -INFINITY;
        for (int64_t j = 0; j < n; ++j) {
            const float pre = s.ws.pre(i, j), h = s.ws.H(i, j);
            positive += pre > 0;
            if (h != 0) {
                ++kept;
                EXPECT_EQ(h, pre);
                min_kept = std::min(min_kept, pre);
            } else {
                max_dropped = std::max(max_dropped, pre);
            }
        }
        EXPECT_LE(kept, k);
        if (positive >= k) {
            EXPECT_EQ(kept, k) << "row " << i;
            EXPECT_GE(min_kept, max_dropped) << "row " << i;
            ++full_rows;
        } else {
            EXPECT_EQ(kept, positive) << "row " << i;
        }
    }
    EXPECT_GT(full_rows, s.p.m / 2);  // the data exercises the k-limit
}

TEST(Selection, BatchTopKKeepsMTimesKOverTheBatch) {
    const int64_t k = 4;
    Selected s(Arch::batchtopk, k);
    int64_t kept = 0, positive = 0;
    float min_kept = INFINITY, max_dropped = -INFINITY;
    bool uneven = false;
    for (int64_t i = 0; i < s.p.m; ++i) {
        int64_t row = 0;
        for (int64_t j = 0; j < s.spec.d_sae; ++j) {
            const float pre = s.ws.pre(i, j), h = s.ws.H(i, j);
            positive += pre > 0;
            if (h != 0) {
                ++row;
                EXPECT_EQ(h, pre);
                min_kept = std::min(min_kept, pre);
            } else {
                max_dropped = std::max(max_dropped, pre);
            }
        }
        kept += row;
        uneven |= row != k;
    }
    ASSERT_GE(positive, s.p.m * k);
    EXPECT_EQ(kept, s.p.m * k);
    EXPECT_GE(min_kept, max_dropped);
    EXPECT_TRUE(uneven) << "every row kept exactly k: that is TopK, not BatchTopK";
    EXPECT_EQ(batchtopk_min_kept(s.ws, s.p.m, s.spec.d_sae), double(min_kept));
}

TEST(Selection, BatchTopKInferenceUsesTheThreshold) {
    const double thr = 0.2;
    Selected s(Arch::batchtopk, 4, thr);
    int kept = 0;
    for (int64_t t = 0; t < s.p.m * s.spec.d_sae; ++t) {
        const float pre = s.ws.pre.data[size_t(t)];
        EXPECT_EQ(s.ws.H.data[size_t(t)], double(pre) > thr ? pre : 0.0f);
        kept += s.ws.H.data[size_t(t)] != 0;
    }
    EXPECT_GT(kept, 0);
    EXPECT_NE(kept, s.p.m * 4);  // not the training rule
}

// pre = b_enc = [1, 1, 1, 0.5] in both rows (W_enc = 0): every selection meets ties.
template <class T>
void check_ties() {
    ModernSpec spec;
    spec.d_in = 2;
    spec.d_sae = 4;
    spec.apply_b_dec_to_input = false;
    spec.k = 2;
    spec.k_aux = 2;
    auto be = backend_create("onednn");
    const std::vector<T> X = {0.3f, -0.2f, 0.7f, 0.1f};
    const uint8_t dead[4] = {0, 1, 1, 1};
    for (Arch arch : {Arch::topk, Arch::batchtopk}) {
        spec.arch = arch;
        ParamLayout L = modern_layout(spec);
        std::vector<T> params(size_t(L.total), T(0));
        const T b[4] = {1, 1, 1, 0.5};
        std::copy(b, b + 4, params.begin() + L.get("b_enc").offset);
        ModernWorkspace<T> ws;
        ws.reserve(spec, 2);
        modern_cost<T>(*be, spec, L, params.data(), X.data(), 2, nullptr, ws, dead);
        const std::vector<T> want = arch == Arch::topk
                                        ? std::vector<T>{1, 1, 0, 0, 1, 1, 0, 0}   // per row
                                        : std::vector<T>{1, 1, 1, 0, 1, 0, 0, 0};  // flat order
        for (int t = 0; t < 8; ++t)
            EXPECT_EQ(ws.H.data[size_t(t)], want[size_t(t)]) << arch_name(arch) << " " << t;
        // AuxK among dead {1, 2, 3} with values [1, 1, 0.5]: latents 1 and 2.
        const std::vector<T> aux = {0, 1, 1, 0, 0, 1, 1, 0};
        for (int t = 0; t < 8; ++t)
            EXPECT_EQ(ws.Haux.data[size_t(t)], aux[size_t(t)]) << arch_name(arch) << " " << t;
    }
}

TEST(Selection, TiesGoToTheLowerIndex) {
    check_ties<float>();
    check_ties<double>();
}

// Many exact ties (pre on a grid of halves, exact in float): TopK, BatchTopK and AuxK sets must
// equal the reference's, which selects by sorting / repeated arg-max.
template <class T>
void check_grid_ties() {
    auto be = backend_create("onednn");
    for (Arch arch : {Arch::topk, Arch::batchtopk})
        for (int64_t k : {1, 3, 7, 20}) {
            SCOPED_TRACE(arch_name(arch) + " k=" + std::to_string(k));
            ModernSpec spec = case_spec({arch, false, false, true}, 3, 20, k, 4);
            Problem p = make_problem(spec, 30, 31 + uint64_t(k), true);
            Rng rng(k);
            auto grid = [&](double step, int lo, int hi) {  // step·(a uniform integer in [lo, hi])
                return step * double(lo + int64_t(rng.below(uint64_t(hi - lo + 1))));
            };
            for (const auto& v : p.layout.views)
                for (int64_t i = 0; i < v.numel(); ++i) {
                    double& w = p.params[size_t(v.offset + i)];
                    if (v.name == "W_enc") w = grid(0.5, -2, 2);
                    else if (v.name == "b_enc") w = grid(0.5, 0, 1);
                }
            for (auto& x : p.X) x = grid(1, -1, 1);
            auto ref = reference::modern_cost(spec, p.params, p.X, p.m, false, p.dead);
            std::vector<T> pf(p.params.begin(), p.params.end()), Xf(p.X.begin(), p.X.end());
            ModernWorkspace<T> ws;
            ws.reserve(spec, p.m);
            modern_cost<T>(*be, spec, p.layout, pf.data(), Xf.data(), p.m, nullptr, ws, p.dead_ptr());
            for (int64_t t = 0; t < p.m * spec.d_sae; ++t) {
                ASSERT_EQ(double(ws.H.data[size_t(t)]), ref.H[size_t(t)]) << "entry " << t;
                ASSERT_EQ(double(ws.Haux.data[size_t(t)]), ref.Haux[size_t(t)]) << "aux entry " << t;
            }
        }
}

TEST(Selection, ManyTiesMatchTheReference) {
    check_grid_ties<float>();
    check_grid_ties<double>();
}

// A NaN pre-activation (diverged parameters) ranks below every number: it is never selected,
// and the selection stays well-defined for the other entries.
TEST(Selection, NaNIsNeverSelected) {
    auto be = backend_create("onednn");
    for (Arch arch : {Arch::topk, Arch::batchtopk}) {
        ModernSpec spec = case_spec({arch, true, false, true}, 5, 8, 3, 2);
        Problem p = make_problem(spec, 6, 41, true);
        // Every pre-activation positive (bias 3) except latent 1 (dead), which is NaN.
        const auto& b_enc = p.layout.get("b_enc");
        for (int64_t j = 0; j < spec.d_sae; ++j) p.params[size_t(b_enc.offset + j)] = j == 1 ? NAN : 3;
        ModernWorkspace<double> ws;
        ws.reserve(spec, p.m);
        modern_cost<double>(*be, spec, p.layout, p.params.data(), p.X.data(), p.m, nullptr, ws,
                            p.dead_ptr());
        int64_t kept = 0;
        for (int64_t i = 0; i < p.m; ++i) {
            EXPECT_EQ(ws.H(i, 1), 0.0);
            int64_t aux_kept = 0;
            for (int64_t j = 0; j < spec.d_sae; ++j) {
                EXPECT_FALSE(std::isnan(ws.H(i, j)));
                kept += ws.H(i, j) != 0;
                aux_kept += ws.Haux(i, j) != 0;
            }
            EXPECT_EQ(aux_kept, spec.k_aux) << "row " << i;  // dead 4 and 7, not the NaN
        }
        EXPECT_EQ(kept, p.m * spec.k) << arch_name(arch);  // no slot spent on the NaN
    }
}

// --- AuxK -----------------------------------------------------------------------------------
TEST(AuxK, ZeroWhenNoLatentIsDead) {
    Problem p = make_problem(case_spec({Arch::topk, true, false, true}, 8, 12, 3, 3), 9, 21, false);
    auto be = backend_create("onednn");
    ModernWorkspace<double> ws;
    ws.reserve(p.spec, p.m);
    std::vector<double> g_none(size_t(p.layout.total)), g_alive(size_t(p.layout.total));
    CostTerms a = modern_cost<double>(*be, p.spec, p.layout, p.params.data(), p.X.data(), p.m,
                                      g_none.data(), ws);
    const std::vector<uint8_t> none_dead(size_t(p.spec.d_sae), 0);
    CostTerms b = modern_cost<double>(*be, p.spec, p.layout, p.params.data(), p.X.data(), p.m,
                                      g_alive.data(), ws, none_dead.data());
    EXPECT_EQ(a.aux, 0.0);
    EXPECT_EQ(b.aux, 0.0);
    EXPECT_EQ(a.rec, b.rec);
    EXPECT_EQ(g_none, g_alive);
}

TEST(AuxK, UsesOnlyDeadLatents) {
    Problem p = make_problem(case_spec({Arch::topk, true, false, true}, 8, 12, 3, 3), 9, 22, true);
    const int64_t n = p.spec.d_sae, d_in = p.spec.d_in;
    // Latent 0 is alive but never selected (very negative bias): its decoder row cannot reach
    // x̂, ê or the selection. Latent 1 is dead.
    ASSERT_EQ(p.dead[0], 0);
    ASSERT_EQ(p.dead[1], 1);
    p.params[size_t(p.layout.get("b_enc").offset)] = -100;
    auto be = backend_create("onednn");
    ModernWorkspace<double> ws;
    ws.reserve(p.spec, p.m);
    std::vector<double> g_aux(size_t(p.layout.total)), g_plain(size_t(p.layout.total));
    const double aux0 = modern_cost<double>(*be, p.spec, p.layout, p.params.data(), p.X.data(),
                                            p.m, g_aux.data(), ws, p.dead_ptr())
                            .aux;
    ASSERT_GT(aux0, 0.0);
    int dead_active = 0;
    for (int64_t i = 0; i < p.m; ++i)
        for (int64_t j = 0; j < n; ++j) {
            if (!p.dead[size_t(j)]) {
                EXPECT_EQ(ws.Haux(i, j), 0.0) << i << "," << j;
            }
            dead_active += j == 1 && ws.Haux(i, j) > 0;
        }
    ASSERT_GT(dead_active, 0);
    modern_cost<double>(*be, p.spec, p.layout, p.params.data(), p.X.data(), p.m, g_plain.data(), ws);

    // The AuxK part of the gradient is zero on every live latent's W_dec row, W_enc column and
    // b_enc entry.
    const auto& We = p.layout.get("W_enc");
    const auto& be_v = p.layout.get("b_enc");
    const auto& Wd = p.layout.get("W_dec");
    for (int64_t j = 0; j < n; ++j) {
        if (p.dead[size_t(j)]) continue;
        const auto at = [&](int64_t idx) { return g_aux[size_t(idx)] - g_plain[size_t(idx)]; };
        EXPECT_EQ(at(be_v.offset + j), 0.0) << j;
        for (int64_t c = 0; c < d_in; ++c) {
            EXPECT_EQ(at(Wd.offset + j * d_in + c), 0.0) << j;
            EXPECT_EQ(at(We.offset + c * n + j), 0.0) << j;
        }
    }

    auto aux_after = [&](int64_t latent) {
        std::vector<double> q = p.params;
        for (int64_t c = 0; c < d_in; ++c) q[size_t(Wd.offset + latent * d_in + c)] += 0.3;
        return modern_cost<double>(*be, p.spec, p.layout, q.data(), p.X.data(), p.m, nullptr, ws,
                                   p.dead_ptr())
            .aux;
    };
    EXPECT_EQ(aux_after(0), aux0);  // live latent: unchanged
    EXPECT_NE(aux_after(1), aux0);  // dead latent: changes
}

// --- decoder-norm helpers -------------------------------------------------------------------
TEST(DecoderNorm, RemoveParallelGradientAndNormalize) {
    ModernSpec spec = case_spec({Arch::topk, true, false, false}, 7, 10, 3, 0);
    Problem p = make_problem(spec, 1, 5, false);
    const auto& Wd = p.layout.get("W_dec");
    Rng rng(77);
    std::vector<double> grad(size_t(p.layout.total));
    for (auto& g : grad) g = rng.uniform(-1, 1);
    const std::vector<double> before = grad;
    decoder_remove_parallel_grad(spec, p.layout, p.params.data(), grad.data());
    for (int64_t i = 0; i < p.layout.total; ++i)
        if (i < Wd.offset || i >= Wd.offset + Wd.numel()) {
            EXPECT_EQ(grad[size_t(i)], before[size_t(i)]);
        }
    for (int64_t j = 0; j < spec.d_sae; ++j) {
        const double* w = p.params.data() + Wd.offset + j * spec.d_in;
        const double* g0 = before.data() + Wd.offset + j * spec.d_in;
        const double* g1 = grad.data() + Wd.offset + j * spec.d_in;
        double wg = 0, ww = 0, dot_after = 0;
        for (int64_t c = 0; c < spec.d_in; ++c) {
            wg += w[c] * g0[c];
            ww += w[c] * w[c];
            dot_after += w[c] * g1[c];
        }
        EXPECT_NEAR(dot_after, 0.0, 1e-14) << "row " << j;
        // Perpendicular part unchanged: g1 = g0 − (w·g0 / w·w)·w.
        for (int64_t c = 0; c < spec.d_in; ++c)
            EXPECT_NEAR(g1[c], g0[c] - wg / ww * w[c], 1e-14) << "row " << j;
    }

    std::vector<float> pf(p.params.begin(), p.params.end());
    decoder_normalize_rows(spec, p.layout, p.params.data());
    decoder_normalize_rows(spec, p.layout, pf.data());
    for (int64_t j = 0; j < spec.d_sae; ++j) {
        double n64 = 0, n32 = 0;
        for (int64_t c = 0; c < spec.d_in; ++c) {
            const size_t t = size_t(Wd.offset + j * spec.d_in + c);
            n64 += p.params[t] * p.params[t];
            n32 += double(pf[t]) * double(pf[t]);
        }
        EXPECT_NEAR(std::sqrt(n64), 1.0, 1e-15);
        EXPECT_NEAR(std::sqrt(n32), 1.0, 1e-6);
    }
    // W_enc untouched by normalisation.
    const auto& We = p.layout.get("W_enc");
    Problem fresh = make_problem(spec, 1, 5, false);
    for (int64_t i = 0; i < We.numel(); ++i)
        EXPECT_EQ(p.params[size_t(We.offset + i)], fresh.params[size_t(We.offset + i)]);
}

// --- initialisation, layout, validation -----------------------------------------------------
template <class T>
void check_init() {
    ModernSpec spec;
    spec.d_in = 16;
    spec.d_sae = 40;
    spec.arch = Arch::jumprelu;
    spec.initial_threshold = 0.02;
    ParamLayout L = modern_layout(spec);
    std::vector<T> a(size_t(L.total)), b(size_t(L.total)), c(size_t(L.total));
    Rng r1(5), r2(5), r3(6);
    modern_init(spec, L, a.data(), r1);
    modern_init(spec, L, b.data(), r2);
    modern_init(spec, L, c.data(), r3);
    EXPECT_EQ(a, b);
    EXPECT_NE(a, c);
    const T* We = a.data() + L.get("W_enc").offset;
    const T* Wd = a.data() + L.get("W_dec").offset;
    for (int64_t j = 0; j < spec.d_sae; ++j) {
        double sq = 0;
        for (int64_t k = 0; k < spec.d_in; ++k) {
            sq += double(Wd[j * spec.d_in + k]) * double(Wd[j * spec.d_in + k]);
            EXPECT_EQ(We[k * spec.d_sae + j], Wd[j * spec.d_in + k]);
        }
        EXPECT_NEAR(std::sqrt(sq), 0.1, sizeof(T) == 4 ? 1e-7 : 1e-15);
    }
    for (const char* bias : {"b_enc", "b_dec"}) {
        const auto& v = L.get(bias);
        for (int64_t i = 0; i < v.numel(); ++i) EXPECT_EQ(a[size_t(v.offset + i)], T(0));
    }
    const auto& lt = L.get("log_threshold");
    for (int64_t i = 0; i < lt.numel(); ++i)
        EXPECT_EQ(a[size_t(lt.offset + i)], T(std::log(0.02)));
    // Directions are spread out, not one repeated vector.
    double dot01 = 0;
    for (int64_t k = 0; k < spec.d_in; ++k) dot01 += double(Wd[k]) * double(Wd[spec.d_in + k]);
    EXPECT_LT(std::fabs(dot01), 0.0099);
}

TEST(Init, DecoderRowsNormPointOneTiedEncoderSeeded) {
    check_init<float>();
    check_init<double>();
}

TEST(Layout, TensorsShapesAndOrder) {
    ModernSpec spec;
    spec.d_in = 3;
    spec.d_sae = 5;
    for (const ArchInfo& row : arch_table()) {
        spec.arch = row.arch;
        ParamLayout L = modern_layout(spec);
        std::vector<std::string> names;
        for (const auto& v : L.views) names.push_back(v.name);
        std::vector<std::string> want = {"W_enc", row.enc_bias, "W_dec", "b_dec"};
        for (const char* e : row.extra) want.push_back(e);
        EXPECT_EQ(names, want);
        EXPECT_EQ(L.get("W_enc").shape, (std::vector<int64_t>{3, 5}));
        EXPECT_EQ(L.get("W_dec").shape, (std::vector<int64_t>{5, 3}));
        EXPECT_EQ(L.total, 3 * 5 * 2 + 5 + 3 + 5 * int64_t(row.extra.size()));
    }
    // The extra tensors of two rows, spelled out.
    ASSERT_EQ(arch_info(Arch::jumprelu).extra.size(), 1u);
    EXPECT_EQ(std::string(arch_info(Arch::jumprelu).extra[0]), "log_threshold");
    EXPECT_TRUE(arch_info(Arch::standard).extra.empty());
}

TEST(Arch, ParseAndName) {
    for (const ArchInfo& row : arch_table()) EXPECT_EQ(arch_parse(arch_name(row.arch)), row.arch);
    EXPECT_EQ(arch_parse("l1"), Arch::standard);
    try {
        arch_parse("no_such_arch");
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("batchtopk"), std::string::npos) << e.what();
    }
}

TEST(Validate, NamesTheSetting) {
    ModernSpec ok;
    ok.d_in = 8;
    ok.d_sae = 16;
    ok.k = 4;
    EXPECT_NO_THROW(validate(ok));
    auto expect_error = [](ModernSpec s, const std::string& setting) {
        try {
            validate(s);
            ADD_FAILURE() << "expected an error naming " << setting;
        } catch (const Error& e) {
            const std::string msg = e.what();
            EXPECT_NE(msg.find(setting), std::string::npos) << msg;
            EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
        }
    };
    ModernSpec s = ok;
    s.k = 0;
    expect_error(s, "k");
    s.k = 17;
    expect_error(s, "k");
    s.arch = Arch::standard;  // k is not used by the L1 SAE
    EXPECT_NO_THROW(validate(s));
    s = ok;
    s.k_aux = 17;
    expect_error(s, "k_aux");
    s.k_aux = -1;
    expect_error(s, "k_aux");
    s = ok;
    s.l1_coefficient = -1;
    expect_error(s, "l1_coefficient");
    s = ok;
    s.l0_coefficient = NAN;
    expect_error(s, "l0_coefficient");
    s = ok;
    s.aux_coefficient = INFINITY;
    expect_error(s, "aux_coefficient");
    s = ok;
    s.arch = Arch::jumprelu;
    EXPECT_NO_THROW(validate(s));
    s.bandwidth = 0;
    expect_error(s, "bandwidth");
    s.bandwidth = 1e-3;
    s.initial_threshold = -0.1;
    expect_error(s, "initial_threshold");
    s = ok;
    s.d_sae = 0;
    expect_error(s, "d_sae");
}

TEST(Validate, MatryoshkaGroupsAndWeights) {
    EXPECT_EQ(matryoshka_group_ends("0.25,0.25,0.5", 16), (std::vector<int64_t>{4, 8, 16}));
    EXPECT_EQ(matryoshka_group_ends("1", 7), (std::vector<int64_t>{7}));
    EXPECT_EQ(matryoshka_group_weights("", 3), (std::vector<double>{1, 1, 1}));
    EXPECT_EQ(matryoshka_group_weights("1, 0.5", 2), (std::vector<double>{1, 0.5}));
    auto one_line_naming = [](const std::function<void()>& f, const std::string& setting) {
        try {
            f();
            ADD_FAILURE() << "expected an error naming " << setting;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(setting), std::string::npos) << e.what();
            EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
        }
    };
    one_line_naming([] { matryoshka_group_ends("0.5,0.6", 16); }, "matryoshka_groups");
    one_line_naming([] { matryoshka_group_ends("0.5,x", 16); }, "matryoshka_groups");
    one_line_naming([] { matryoshka_group_ends("0.5,-0.5,1", 16); }, "matryoshka_groups");
    one_line_naming([] { matryoshka_group_weights("1,", 2); }, "matryoshka_weights");
    ModernSpec s;
    s.d_in = 4;
    s.d_sae = 16;
    s.k = 2;
    s.arch = Arch::matryoshka_batchtopk;
    s.group_ends = matryoshka_group_ends("0.01,0.99", 16);  // the first group rounds to 0 latents
    s.group_weights = {1, 1};
    one_line_naming([&] { validate(s); }, "matryoshka_groups");
    s.group_ends = {4, 16};
    s.group_weights = {1};
    one_line_naming([&] { validate(s); }, "matryoshka_weights");
    s.group_weights = {1, -1};
    one_line_naming([&] { validate(s); }, "matryoshka_weights");
    s.group_weights = {1, 2};
    EXPECT_NO_THROW(validate(s));
}

// --- workspace and determinism --------------------------------------------------------------
TEST(Workspace, NoAllocationOnceReserved) {
    for (const Case& c : all_cases(true)) {
        SCOPED_TRACE(case_label(c));
        const ModernSpec spec = case_spec(c, 12, 20, 4, 3);
        Problem p = make_problem(spec, 16, 4, c.aux);
        auto be = backend_create("reference");
        std::vector<float> pf(p.params.begin(), p.params.end()), Xf(p.X.begin(), p.X.end());
        std::vector<float> g(size_t(p.layout.total));
        ModernWorkspace<float> ws;
        ws.reserve(spec, p.m);
        // First call warms the thread pool; the second (smaller batch) is counted.
        modern_cost<float>(*be, spec, p.layout, pf.data(), Xf.data(), p.m, g.data(), ws,
                           p.dead_ptr(), c.batchtopk_threshold);
        g_allocations = 0;
        g_counting = true;
        modern_cost<float>(*be, spec, p.layout, pf.data(), Xf.data(), p.m - 3, g.data(), ws,
                           p.dead_ptr(), c.batchtopk_threshold);
        g_counting = false;
        EXPECT_EQ(g_allocations.load(), 0);
    }
}

TEST(Workspace, RejectsABatchLargerThanReserved) {
    ModernSpec spec = case_spec({Arch::topk, true, false, false}, 4, 6, 2, 0);
    Problem p = make_problem(spec, 5, 1, false);
    auto be = backend_create("reference");
    ModernWorkspace<double> ws;
    ws.reserve(spec, 4);
    EXPECT_THROW(modern_cost<double>(*be, spec, p.layout, p.params.data(), p.X.data(), 5, nullptr, ws),
                 Error);
}

TEST(Determinism, SameBitsForAnyThreadCount) {
    ASSERT_TRUE(kOneThread);
    const int saved = get_num_threads();
    for (const Case& c : all_cases(false)) {
        SCOPED_TRACE(case_label(c));
        const ModernSpec spec = case_spec(c, 24, 48, 6, 5);
        Problem p = make_problem(spec, 37, 8, c.aux);
        auto be = backend_create("reference");
        std::vector<float> pf(p.params.begin(), p.params.end()), Xf(p.X.begin(), p.X.end());
        auto run = [&](int threads, std::vector<float>& g) {
            set_num_threads(threads);
            ModernWorkspace<float> ws;
            ws.reserve(spec, p.m);
            return modern_cost<float>(*be, spec, p.layout, pf.data(), Xf.data(), p.m, g.data(),
                                      ws, p.dead_ptr(), -1, kScale);
        };
        std::vector<float> g1(size_t(p.layout.total)), g3(size_t(p.layout.total));
        const CostTerms a = run(1, g1), b = run(3, g3);
        EXPECT_EQ(a.rec, b.rec);
        EXPECT_EQ(a.sparsity, b.sparsity);
        EXPECT_EQ(a.aux, b.aux);
        EXPECT_EQ(g1, g3);
    }
    set_num_threads(saved);
}

}  // namespace

// --------------------------------------------------------------------------- duplicate latents

// Plain loops in double: the pairs (j, l) in order, each skipped once either latent is marked.
std::vector<uint8_t> duplicates_by_loops(const std::vector<float>& W, int64_t d_sae, int64_t d_in, double above,
                                         const std::vector<int64_t>& fires) {
    auto dot = [&](int64_t a, int64_t b) {
        double s = 0;
        for (int64_t c = 0; c < d_in; ++c) s += double(W[size_t(a * d_in + c)]) * W[size_t(b * d_in + c)];
        return s;
    };
    std::vector<uint8_t> marked(size_t(d_sae), 0);
    for (int64_t j = 0; j < d_sae; ++j)
        for (int64_t l = j + 1; l < d_sae && !marked[size_t(j)]; ++l) {
            const double nn = dot(j, j) * dot(l, l);
            if (marked[size_t(l)] || nn == 0 || dot(j, l) / std::sqrt(nn) <= above) continue;
            marked[size_t(fires[size_t(l)] <= fires[size_t(j)] ? l : j)] = 1;
        }
    return marked;
}

TEST(DuplicateLatents, MarksTheRarerOfEachNearCopyAndMatchesPlainLoops) {
    auto be = backend_create("onednn");
    // 300 rows (more than one block of 256) in 24 dimensions: random, with planted copies.
    const int64_t d_sae = 300, d_in = 24;
    Rng rng(11);
    std::vector<float> W(static_cast<size_t>(d_sae * d_in));
    for (auto& w : W) w = float(rng.normal());
    auto copy_row = [&](int64_t to, int64_t from, double scale, double noise) {
        for (int64_t c = 0; c < d_in; ++c)
            W[size_t(to * d_in + c)] = float(scale * W[size_t(from * d_in + c)] + noise * rng.normal());
    };
    copy_row(5, 2, 3.0, 0.01);     // a scaled near-copy of row 2
    copy_row(270, 2, 0.5, 0.01);   // a third copy, in the second block
    copy_row(9, 1, -1.0, 0.0);     // opposite direction: cosine −1, not a duplicate
    copy_row(40, 30, 1.0, 0.0);    // an exact copy
    for (int64_t c = 0; c < d_in; ++c) W[size_t(20 * d_in + c)] = 0, W[size_t(21 * d_in + c)] = 0;  // zero rows
    std::vector<int64_t> fires(static_cast<size_t>(d_sae));
    for (auto& f : fires) f = int64_t(rng.uniform() * 1000);
    fires[2] = 50, fires[5] = 900, fires[270] = 10;  // row 5 scores highest in its group
    fires[30] = 7, fires[40] = 7;                    // a tie: the later one goes
    const auto marks = duplicate_latents(*be, W.data(), d_sae, d_in, 0.9, fires);
    ASSERT_EQ(marks.size(), size_t(d_sae));
    EXPECT_EQ(marks, duplicates_by_loops(W, d_sae, d_in, 0.9, fires));
    // Worked out: of {2, 5, 270} only 5 stays; 40 goes (tie); 1, 9 and the zero rows stay;
    // random rows in 24 dimensions are nowhere near cosine 0.9.
    std::vector<int64_t> expected = {2, 40, 270}, got;
    for (int64_t j = 0; j < d_sae; ++j)
        if (marks[size_t(j)]) got.push_back(j);
    EXPECT_EQ(got, expected);
    // A threshold of 1 marks nothing (cosines never exceed 1).
    const auto none = duplicate_latents(*be, W.data(), d_sae, d_in, 1.0, fires);
    EXPECT_EQ(std::count(none.begin(), none.end(), uint8_t(1)), 0);
}
