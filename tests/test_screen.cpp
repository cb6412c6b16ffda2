// Screened TopK (docs/performance.md "Screened TopK"): the selections and values of the screened
// path (bf16 or fp32 screening product) are those of the definition, the exact TopK of
// screen_dot values, on every row; the bound holds against double; fp32 and bf16 screening give
// the same bits, step after step.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "sae/backend.hpp"
#include "sae/config.hpp"
#include "sae/eval.hpp"
#include "sae/objective.hpp"
#include "sae/modern.hpp"
#include "sae/rng.hpp"
#include "screen_kernels.hpp"
#include "test_util.hpp"

using namespace sae;
using namespace sae_test;

namespace {

uint32_t bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

struct Case {
    ModernSpec spec;
    ParamLayout layout;
    std::vector<float> params, X;
    std::vector<uint8_t> dead;
    int64_t m = 0;
};

// kind: 0 random; 1 exact ties (duplicate columns); 2 near ties (columns one ulp apart);
// 3 huge, tiny, denormal and zero rows; 4 columns of very different norms.
Case make_case(int kind, int64_t d_in, int64_t d_sae, int64_t k, int64_t m, bool aux, uint64_t seed) {
    Case c;
    c.spec.d_in = d_in;
    c.spec.d_sae = d_sae;
    c.spec.arch = Arch::topk;
    c.spec.k = k;
    c.spec.apply_b_dec_to_input = true;
    c.spec.k_aux = aux ? 2 * k : 0;
    c.spec.aux_coefficient = 0.25;
    validate(c.spec);
    c.layout = modern_layout(c.spec);
    c.m = m;
    Rng rng(seed);
    c.params.resize(size_t(c.layout.total));
    for (const auto& v : c.layout.views)
        for (int64_t i = 0; i < v.numel(); ++i) {
            float& w = c.params[size_t(v.offset + i)];
            if (v.name == "W_enc" || v.name == "W_dec") w = float(rng.uniform(-0.3, 0.3));
            else if (v.name == "b_enc") w = float(rng.uniform(-0.2, 0.1));
            else w = float(rng.uniform(-0.1, 0.1));
        }
    float* W = c.params.data() + c.layout.get("W_enc").offset;
    float* b = c.params.data() + c.layout.get("b_enc").offset;
    c.X.resize(size_t(m * d_in));
    for (auto& x : c.X) x = float(rng.uniform(-1, 1));
    if (kind == 1)  // every 5th column a copy of an earlier one, biases equal: exact ties
        for (int64_t j = 5; j < d_sae; j += 5) {
            const int64_t src = int64_t(rng.uniform(0, double(j - 1)));
            for (int64_t r = 0; r < d_in; ++r) W[r * d_sae + j] = W[r * d_sae + src];
            b[j] = b[src];
        }
    if (kind == 2)  // columns one ulp away from their left neighbour in one entry
        for (int64_t j = 1; j < d_sae; j += 2) {
            for (int64_t r = 0; r < d_in; ++r) W[r * d_sae + j] = W[r * d_sae + j - 1];
            const int64_t r = int64_t(rng.uniform(0, double(d_in - 1)));
            W[r * d_sae + j] = std::nextafter(W[r * d_sae + j], 1.0f);
            b[j] = b[j - 1];
        }
    if (kind == 3) {  // b_dec = 0 so the rows' scales reach the encoder
        float* bd = c.params.data() + c.layout.get("b_dec").offset;
        std::fill(bd, bd + d_in, 0.0f);
        const float scales[] = {1e-30f, 1e20f, 1e-42f, 0.0f, 3e30f, 1.0f};
        for (int64_t i = 0; i < m; ++i)
            for (int64_t r = 0; r < d_in; ++r) c.X[size_t(i * d_in + r)] *= scales[i % 6];
        for (int64_t j = 0; j < d_sae; j += 7)  // denormal weights too
            for (int64_t r = 0; r < d_in; ++r) W[r * d_sae + j] *= 1e-39f;
    }
    if (kind == 4)
        for (int64_t j = 0; j < d_sae; ++j) {
            const float sc = std::pow(10.0f, float(j % 7) - 3.0f);
            for (int64_t r = 0; r < d_in; ++r) W[r * d_sae + j] *= sc;
        }
    if (aux) {
        c.dead.assign(size_t(d_sae), 0);
        for (int64_t j = 0; j < d_sae; j += 3) c.dead[size_t(j)] = 1;
    }
    return c;
}

struct Lists {
    std::vector<std::vector<std::pair<int32_t, float>>> act, aux;
};

// The definition: screen_dot values of every entry, the k largest positive (ties to the lower
// column); AuxK: the k_aux largest among the dead, then those > 0.
Lists reference(const Case& c) {
    const int64_t d_in = c.spec.d_in, n = c.spec.d_sae, k = c.spec.k;
    const float* W = c.params.data() + c.layout.get("W_enc").offset;
    const float* b = c.params.data() + c.layout.get("b_enc").offset;
    const float* bd = c.params.data() + c.layout.get("b_dec").offset;
    std::vector<float> wt(size_t(n * d_in)), x(static_cast<size_t>(d_in)), v(static_cast<size_t>(n));
    for (int64_t r = 0; r < d_in; ++r)
        for (int64_t j = 0; j < n; ++j) wt[size_t(j * d_in + r)] = W[r * n + j];
    Lists L;
    for (int64_t i = 0; i < c.m; ++i) {
        for (int64_t r = 0; r < d_in; ++r) x[size_t(r)] = c.X[size_t(i * d_in + r)] - bd[r];
        for (int64_t j = 0; j < n; ++j) v[size_t(j)] = screen_dot_plain(x.data(), wt.data() + j * d_in, d_in, b[j]);
        auto top = [&](std::vector<int32_t> cols, int64_t kk, bool positive_first) {
            std::stable_sort(cols.begin(), cols.end(), [&](int32_t a, int32_t bb) { return v[a] > v[bb]; });
            std::vector<std::pair<int32_t, float>> out;
            for (int64_t t = 0; t < int64_t(cols.size()) && (positive_first ? int64_t(out.size()) < kk : t < kk); ++t)
                if (v[cols[t]] > 0) out.push_back({cols[t], v[cols[t]]});
            std::sort(out.begin(), out.end());
            return out;
        };
        std::vector<int32_t> all(static_cast<size_t>(n));
        std::iota(all.begin(), all.end(), 0);
        L.act.push_back(top(all, k, true));
        if (!c.dead.empty()) {
            std::vector<int32_t> d;
            for (int64_t j = 0; j < n; ++j)
                if (c.dead[size_t(j)]) d.push_back(int32_t(j));
            L.aux.push_back(top(d, std::min<int64_t>(c.spec.k_aux, int64_t(d.size())), false));
        }
    }
    return L;
}

struct ScreenRun {
    Lists lists;
    CostTerms J;
    std::vector<float> grad;
    ScreenStats stats;
};

ScreenRun run_screened(Backend& be, const Case& c, Screen sc, int64_t block = 256) {
    ModernWorkspace<float> ws;
    ws.dense_h = false;
    ws.screen = sc;
    ws.encoder_block = block;
    ws.reserve(c.spec, c.m);
    ScreenRun r;
    r.grad.assign(size_t(c.layout.total), 0.0f);
    r.J = modern_cost<float>(be, c.spec, c.layout, c.params.data(), c.X.data(), c.m, r.grad.data(), ws,
                             c.dead.empty() ? nullptr : c.dead.data());
    r.stats = ws.screen_stats;
    auto grab = [&](const SparseRows<float>& S, std::vector<std::vector<std::pair<int32_t, float>>>& out) {
        for (int64_t i = 0; i < c.m; ++i) {
            std::vector<std::pair<int32_t, float>> row;
            for (int64_t e = S.beg[size_t(i)]; e < S.end[size_t(i)]; ++e) row.push_back({S.col[size_t(e)], S.val[size_t(e)]});
            std::sort(row.begin(), row.end());
            out.push_back(row);
        }
    };
    grab(ws.act, r.lists.act);
    if (!c.dead.empty()) grab(ws.aux, r.lists.aux);
    return r;
}

void expect_same(const std::vector<std::vector<std::pair<int32_t, float>>>& a,
                 const std::vector<std::vector<std::pair<int32_t, float>>>& b, const char* what) {
    ASSERT_EQ(a.size(), b.size()) << what;
    for (size_t i = 0; i < a.size(); ++i) {
        ASSERT_EQ(a[i].size(), b[i].size()) << what << " row " << i;
        for (size_t e = 0; e < a[i].size(); ++e) {
            ASSERT_EQ(a[i][e].first, b[i][e].first) << what << " row " << i;
            ASSERT_EQ(bits(a[i][e].second), bits(b[i][e].second)) << what << " row " << i;
        }
    }
}

}  // namespace

TEST(Screen, DotClonesGiveTheSameBitsAndStayWithinTheBound) {
    Rng rng(3);
    for (int64_t n : {1, 2, 15, 16, 17, 31, 33, 100, 768, 769}) {
        std::vector<float> x(static_cast<size_t>(n)), w(static_cast<size_t>(n));
        for (int t = 0; t < 20; ++t) {
            for (auto& v : x) v = float(rng.uniform(-2, 2));
            for (auto& v : w) v = float(rng.uniform(-2, 2));
            const float b = float(rng.uniform(-1, 1));
            const float p = screen_dot_plain(x.data(), w.data(), n, b), q = screen_dot(x.data(), w.data(), n, b);
            ASSERT_EQ(bits(p), bits(q)) << n;
            for (int clone : {0, 1, 2})  // plain, AVX2, AVX-512 (where the CPU has them)
                ASSERT_EQ(bits(screen_dot_clone(clone, x.data(), w.data(), n, b)), bits(p)) << n << " clone " << clone;
            double t_ = b, a = std::fabs(b);
            for (int64_t i = 0; i < n; ++i) {
                t_ += double(x[size_t(i)]) * double(w[size_t(i)]);
                a += std::fabs(double(x[size_t(i)]) * double(w[size_t(i)]));
            }
            const double u = std::ldexp(1.0, -24), g = double(n + 2) * u / (1 - double(n + 2) * u);
            EXPECT_LE(std::fabs(double(p) - t_), g * a) << n;
        }
    }
}

// The per-row passes (lower bounds, candidates) give the same results on every clone, at lengths
// around the vector widths, with non-finite values and ties at the threshold.
TEST(Screen, PassClonesAgree) {
    Rng rng(8);
    for (int64_t n : {1, 7, 8, 9, 15, 16, 17, 40, 513}) {
        std::vector<float> sv(static_cast<size_t>(n)), wn(static_cast<size_t>(n)), cb(static_cast<size_t>(n));
        for (int t = 0; t < 10; ++t) {
            for (int64_t j = 0; j < n; ++j) {
                sv[size_t(j)] = float(std::round(rng.uniform(-4, 4) * 4) / 4);  // ties at the thresholds
                wn[size_t(j)] = float(rng.uniform(0, 2));
                cb[size_t(j)] = float(rng.uniform(0, 0.01));
            }
            if (t == 3) sv[size_t(n / 2)] = std::numeric_limits<float>::infinity();
            if (t == 4) sv[size_t(n - 1)] = std::numeric_limits<float>::quiet_NaN();
            const float alpha = 0.25f, tau = 1e-30f, thr = 1.0f;
            std::vector<float> l0(static_cast<size_t>(n)), l1(static_cast<size_t>(n));
            std::vector<int32_t> c0(static_cast<size_t>(n)), c1(static_cast<size_t>(n));
            const bool ok0 = screen_lower_clone(0, sv.data(), wn.data(), cb.data(), alpha, tau, n, l0.data());
            const int64_t k0 = screen_candidates_clone(0, sv.data(), wn.data(), cb.data(), alpha, tau, n, thr, c0.data());
            EXPECT_EQ(ok0, t != 3 && t != 4);
            for (int clone : {1, 2}) {
                SCOPED_TRACE(::testing::Message() << "n " << n << " t " << t << " clone " << clone);
                EXPECT_EQ(screen_lower_clone(clone, sv.data(), wn.data(), cb.data(), alpha, tau, n, l1.data()), ok0);
                for (int64_t j = 0; j < n; ++j) ASSERT_EQ(bits(l1[size_t(j)]), bits(l0[size_t(j)])) << j;
                const int64_t k1 = screen_candidates_clone(clone, sv.data(), wn.data(), cb.data(), alpha, tau, n, thr, c1.data());
                ASSERT_EQ(k1, k0);
                for (int64_t j = 0; j < k0; ++j) ASSERT_EQ(c1[size_t(j)], c0[size_t(j)]);
            }
        }
    }
}

// The screening products against the definition: |s − v| never exceeds the bound, for random and
// adversarial rows and columns; and each side against double.
TEST(Screen, BoundHoldsAgainstDouble) {
    auto be = backend_create("onednn");
    for (int kind = 0; kind < 5; ++kind) {
        const Case c = make_case(kind, 96, 320, 8, 48, false, 10 + kind);
        const int64_t d_in = c.spec.d_in, n = c.spec.d_sae, m = c.m;
        const float* W = c.params.data() + c.layout.get("W_enc").offset;
        const float* b = c.params.data() + c.layout.get("b_enc").offset;
        std::vector<float> wt(size_t(n * d_in));
        for (int64_t r = 0; r < d_in; ++r)
            for (int64_t j = 0; j < n; ++j) wt[size_t(j * d_in + r)] = W[r * n + j];
        for (Screen sc : {Screen::fp32, Screen::bf16}) {
            std::vector<float> S(size_t(m * n));
            be->gemm_ex(Trans::no, Trans::no, m, n, d_in, 1.0f, c.X.data(), d_in, W, n, 0.0f, S.data(), n, b,
                        sc == Screen::bf16 ? Precision::bf16 : Precision::f32);
            const ScreenBound B = screen_bound(sc, d_in);
            double wmax = 0;
            std::vector<double> wn(static_cast<size_t>(n));
            for (int64_t j = 0; j < n; ++j) {
                double q = 0;
                for (int64_t r = 0; r < d_in; ++r) q += double(wt[size_t(j * d_in + r)]) * double(wt[size_t(j * d_in + r)]);
                wn[size_t(j)] = std::sqrt(q);
                wmax = std::max(wmax, wn[size_t(j)]);
            }
            // ρ, by hand: the columns' largest relative bf16 rounding.
            double rho = 0;
            for (int64_t j = 0; j < n; ++j) {
                double qd = 0;
                for (int64_t r = 0; r < d_in; ++r) {
                    const float w = wt[size_t(j * d_in + r)];  // (subnormal entries: within τ)
                    const double e = std::fabs(w) < std::numeric_limits<float>::min() ? 0.0 : double(w) - double(bf16_to_float(float_to_bf16(w)));
                    qd += e * e;
                }
                if (wn[size_t(j)] > 0) rho = std::max(rho, std::sqrt(qd) / wn[size_t(j)]);
            }
            EXPECT_NEAR(screen_rho(wt.data(), n, d_in), rho, 1e-12);
            EXPECT_LE(rho, std::ldexp(1.0, -8));  // never more than the worst case
            double worst = 0, worst_loose = 0, tighter = 0;
            for (int64_t i = 0; i < m; ++i) {
                const float* x = c.X.data() + i * d_in;
                double q = 0;
                for (int64_t r = 0; r < d_in; ++r) q += double(x[r]) * double(x[r]);
                const double xn = std::sqrt(q);
                double xn2 = 0;
                const double f = screen_row_factor(sc, x, d_in, rho, &xn2);
                EXPECT_NEAR(xn2, xn, 1e-12 * std::max(1.0, xn));
                EXPECT_LE(f, B.coef_s * xn * (1 + 1e-12)) << "never looser than the worst case";
                if (xn > 0) tighter = std::max(tighter, B.coef_s * xn / f);
                for (int64_t j = 0; j < n; ++j) {
                    const float v = screen_dot(x, wt.data() + j * d_in, d_in, b[j]);
                    const double rest = B.coef_b * std::fabs(double(b[j])) +
                                        B.tau_scale * (2.0 * double(d_in) + 4 + 2 * std::sqrt(double(d_in)) * (xn + wmax));
                    const double e = f * wn[size_t(j)] + rest, loose = B.coef_s * xn * wn[size_t(j)] + rest;
                    const double err = std::fabs(double(S[size_t(i * n + j)]) - double(v));
                    ASSERT_LE(err, e) << "kind " << kind << " " << screen_name(sc) << " (" << i << ", " << j << ")";
                    if (e > 0) worst = std::max(worst, err / e);
                    if (loose > 0) worst_loose = std::max(worst_loose, err / loose);
                }
            }
            std::printf("kind %d %s: largest error / bound %.3g (of the Cauchy-Schwarz worst case: %.3g; that bound up to %.3g x the row's)\n",
                        kind, screen_name(sc).c_str(), worst, worst_loose, tighter);
        }
    }
}

// Selections and values (bits) of the screened path equal the definition, TopK and AuxK, at batch
// sizes around the encoder block, on random and adversarial data; fp32 and bf16 screening agree
// to the bit in the cost and the gradient.
TEST(Screen, SelectionsAndValuesAreTheDefinitionsOnEveryRow) {
    auto be = backend_create("onednn");
    for (int kind = 0; kind < 5; ++kind)
        for (int64_t m : {1, 63, 64, 65, 130}) {
            const Case c = make_case(kind, 40, 512, 6, m, kind != 4, 100 * kind + m);
            const Lists ref = reference(c);
            const ScreenRun a = run_screened(*be, c, Screen::bf16, 64);
            const ScreenRun f = run_screened(*be, c, Screen::fp32, 64);
            SCOPED_TRACE(::testing::Message() << "kind " << kind << " m " << m);
            expect_same(a.lists.act, ref.act, "bf16 TopK");
            expect_same(f.lists.act, ref.act, "fp32 TopK");
            if (!c.dead.empty()) {
                expect_same(a.lists.aux, ref.aux, "bf16 AuxK");
                expect_same(f.lists.aux, ref.aux, "fp32 AuxK");
            }
            EXPECT_EQ(a.J.rec, f.J.rec);
            EXPECT_EQ(a.J.aux, f.J.aux);
            for (size_t t = 0; t < a.grad.size(); ++t) ASSERT_EQ(bits(a.grad[t]), bits(f.grad[t])) << t;
            EXPECT_EQ(a.stats.rows, m);
            if (kind == 0) EXPECT_LT(a.stats.candidates, m * 512 / 2);  // the screen does screen
        }
}

// Small k against a long row (the group bound) and k near d_sae (the exact k-th bound).
TEST(Screen, ShortAndLongRows) {
    auto be = backend_create("onednn");
    for (int64_t k : {1, 3, 20, 30}) {
        const Case c = make_case(0, 24, 64, k, 70, true, 7 + k);
        const Lists ref = reference(c);
        const ScreenRun a = run_screened(*be, c, Screen::bf16, 32);
        expect_same(a.lists.act, ref.act, "TopK");
        expect_same(a.lists.aux, ref.aux, "AuxK");
    }
}

// Training: the same parameters step after step with fp32 or bf16 screening (plain SGD on the
// gradient, which depends on every selection and value).
TEST(Screen, TrainingIsBitIdenticalBetweenScreeningProducts) {
    auto be = backend_create("onednn");
    Case c = make_case(0, 48, 384, 8, 200, true, 99);
    Case d = c;
    for (int step = 0; step < 8; ++step) {
        const ScreenRun a = run_screened(*be, c, Screen::bf16, 64);
        const ScreenRun f = run_screened(*be, d, Screen::fp32, 64);
        ASSERT_EQ(a.J.rec, f.J.rec) << step;
        ASSERT_EQ(a.J.aux, f.J.aux) << step;
        for (size_t t = 0; t < c.params.size(); ++t) {
            c.params[t] -= 0.05f * a.grad[t];
            d.params[t] -= 0.05f * f.grad[t];
        }
        for (size_t t = 0; t < c.params.size(); ++t) ASSERT_EQ(bits(c.params[t]), bits(d.params[t])) << step;
    }
}

// Inference keeps the screening's preparation (W_enc transposed, norms, bf16 copy) across calls
// only while W_enc and b_enc are unchanged: parameters changed in place, under the same pointer,
// are prepared afresh.
TEST(Screen, EncodeReusesItsPreparationOnlyForTheSameParameters) {
    auto be = backend_create("onednn");
    Case c = make_case(0, 40, 512, 6, 300, false, 77);
    Config cfg;
    cfg.architecture = "topk";
    cfg.d_sae = c.spec.d_sae;
    cfg.k = c.spec.k;
    cfg.optimizer = "adam";
    cfg.screen = "bf16";
    config_validate(cfg);
    auto obj = objective_create(cfg, c.spec.d_in);
    std::vector<float> P = c.params, H(size_t(c.m * c.spec.d_sae));
    auto same_as_definition = [&](const Case& k) {
        const Lists ref = reference(k);
        int64_t wrong = 0;
        for (int64_t i = 0; i < k.m; ++i) {
            std::vector<float> want(size_t(k.spec.d_sae), 0.0f);
            for (const auto& [j, v] : ref.act[size_t(i)]) want[size_t(j)] = v;
            for (int64_t j = 0; j < k.spec.d_sae; ++j) wrong += bits(H[size_t(i * k.spec.d_sae + j)]) != bits(want[size_t(j)]);
        }
        return wrong;
    };
    for (int pass = 0; pass < 2; ++pass) {  // the second pass reuses the preparation
        encode(*be, *obj, P.data(), c.X.data(), c.m, c.spec.d_in, H.data(), 4096);
        EXPECT_EQ(same_as_definition(c), 0) << pass;
    }
    // The latent kept most often, its encoder column negated in place: it stops firing.
    std::vector<int64_t> count(size_t(c.spec.d_sae), 0);
    for (const auto& row : reference(c).act)
        for (const auto& [j, v] : row) ++count[size_t(j)];
    const int64_t top = std::max_element(count.begin(), count.end()) - count.begin();
    ASSERT_GT(count[size_t(top)], 10);
    const auto& we = c.layout.get("W_enc");
    for (int64_t r = 0; r < c.spec.d_in; ++r) {
        P[size_t(we.offset + r * c.spec.d_sae + top)] *= -1.0f;
        c.params[size_t(we.offset + r * c.spec.d_sae + top)] *= -1.0f;
    }
    encode(*be, *obj, P.data(), c.X.data(), c.m, c.spec.d_in, H.data(), 4096);
    EXPECT_EQ(same_as_definition(c), 0);
}

// encode / eval of a TopK model with screening: the dense codes are the definition's (columns and
// value bits, zero elsewhere) for either screening product, in chunks that split the batch and the
// encoder blocks; screen = off is today's oneDNN path.
TEST(Screen, EncodeGivesTheDefinitionsCodes) {
    auto be = backend_create("onednn");
    for (int kind = 0; kind < 5; ++kind) {
        const Case c = make_case(kind, 40, 512, 6, 300, false, 500 + kind);
        const Lists ref = reference(c);
        for (const char* sc : {"bf16", "fp32"}) {
            Config cfg;
            cfg.architecture = "topk";
            cfg.d_sae = c.spec.d_sae;
            cfg.k = c.spec.k;
            cfg.optimizer = "adam";
            cfg.screen = sc;
            config_validate(cfg);
            auto obj = objective_create(cfg, c.spec.d_in);
            ASSERT_EQ(obj->layout().total, c.layout.total);
            std::vector<float> H(size_t(c.m * c.spec.d_sae), -1.0f);
            for (int64_t chunk : {int64_t(64), int64_t(4096)}) {
                encode(*be, *obj, c.params.data(), c.X.data(), c.m, c.spec.d_in, H.data(), chunk);
                SCOPED_TRACE(::testing::Message() << "kind " << kind << " " << sc << " chunk " << chunk);
                for (int64_t i = 0; i < c.m; ++i) {
                    size_t e = 0;
                    for (int64_t j = 0; j < c.spec.d_sae; ++j) {
                        const float h = H[size_t(i * c.spec.d_sae + j)];
                        if (e < ref.act[size_t(i)].size() && ref.act[size_t(i)][e].first == j) {
                            ASSERT_EQ(bits(h), bits(ref.act[size_t(i)][e].second)) << i << " " << j;
                            ++e;
                        } else {
                            ASSERT_EQ(bits(h), 0u) << i << " " << j;
                        }
                    }
                    ASSERT_EQ(e, ref.act[size_t(i)].size()) << i;
                }
                // eval sees the same codes: its l0 is the definition's
                const EvalResult r = evaluate(*be, *obj, cfg, c.params.data(), c.X.data(), c.m, c.spec.d_in, 0.0, chunk);
                double l0 = 0;
                for (const auto& row : ref.act) l0 += double(row.size());
                EXPECT_DOUBLE_EQ(r.l0, l0 / double(c.m));
            }
        }
    }
}

// --- BatchTopK and JumpReLU -----------------------------------------------------------------
// The case's parameters under another architecture (the layouts share W_enc, b_enc, W_dec, b_dec;
// jumprelu adds log_threshold: θ_j in [0.05, 0.4], so rows have open gates and window entries).
Case as_arch(const Case& c0, Arch arch, uint64_t seed) {
    Case c = c0;
    c.spec.arch = arch;
    c.spec.bandwidth = 0.05;
    c.spec.l0_coefficient = 0.01;
    if (arch == Arch::jumprelu) c.spec.k_aux = 0;
    validate(c.spec);
    c.layout = modern_layout(c.spec);
    c.params.resize(size_t(c.layout.total));
    if (arch == Arch::jumprelu) {
        Rng rng(seed);
        const auto& v = c.layout.get("log_threshold");
        for (int64_t j = 0; j < v.numel(); ++j) c.params[size_t(v.offset + j)] = float(std::log(rng.uniform(0.05, 0.4)));
        c.dead.clear();
    }
    return c;
}

// The definition's values v [m, d_sae] (screen_dot of every entry).
std::vector<float> exact_values(const Case& c) {
    const int64_t d_in = c.spec.d_in, n = c.spec.d_sae;
    const float* W = c.params.data() + c.layout.get("W_enc").offset;
    const float* b = c.params.data() + c.layout.get("b_enc").offset;
    const float* bd = c.params.data() + c.layout.get("b_dec").offset;
    std::vector<float> wt(size_t(n * d_in)), x(static_cast<size_t>(d_in)), V(size_t(c.m * n));
    for (int64_t r = 0; r < d_in; ++r)
        for (int64_t j = 0; j < n; ++j) wt[size_t(j * d_in + r)] = W[r * n + j];
    for (int64_t i = 0; i < c.m; ++i) {
        for (int64_t r = 0; r < d_in; ++r) x[size_t(r)] = c.X[size_t(i * d_in + r)] - bd[r];
        for (int64_t j = 0; j < n; ++j)
            V[size_t(i * n + j)] = screen_dot_plain(x.data(), wt.data() + j * d_in, d_in, b[j]);
    }
    return V;
}

// The definitions, densely: BatchTopK training keeps the m·k largest values of the batch (ties
// to the lower flattened index), then those > 0; inference (theta ≥ 0) and JumpReLU keep v > θ.
// JumpReLU also lists (value 0) the closed entries in the window |v − θ|/ε < ½.
struct Dense {
    std::vector<float> H;
    Lists lists;  // act: (jumprelu) open and window entries; aux: BatchTopK's AuxK
};
Dense dense_definition(const Case& c, double theta) {
    const int64_t n = c.spec.d_sae, m = c.m;
    const std::vector<float> V = exact_values(c);
    Dense D;
    D.H.assign(size_t(m * n), 0.0f);
    D.lists.act.resize(size_t(m));
    if (c.spec.arch == Arch::batchtopk && theta < 0) {
        std::vector<int64_t> idx(size_t(m * n));
        std::iota(idx.begin(), idx.end(), 0);
        std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return V[size_t(a)] > V[size_t(b)]; });
        for (int64_t t = 0; t < m * c.spec.k; ++t)
            if (V[size_t(idx[size_t(t)])] > 0) D.H[size_t(idx[size_t(t)])] = V[size_t(idx[size_t(t)])];
        if (!c.dead.empty())
            for (int64_t i = 0; i < m; ++i) {
                std::vector<int32_t> d;
                for (int64_t j = 0; j < n; ++j)
                    if (c.dead[size_t(j)]) d.push_back(int32_t(j));
                std::stable_sort(d.begin(), d.end(), [&](int32_t a, int32_t b) { return V[size_t(i * n + a)] > V[size_t(i * n + b)]; });
                std::vector<std::pair<int32_t, float>> row;
                for (int64_t t = 0; t < std::min<int64_t>(c.spec.k_aux, int64_t(d.size())); ++t)
                    if (V[size_t(i * n + d[size_t(t)])] > 0) row.push_back({d[size_t(t)], V[size_t(i * n + d[size_t(t)])]});
                std::sort(row.begin(), row.end());
                D.lists.aux.push_back(row);
            }
        return D;
    }
    const float* lt = c.spec.arch == Arch::jumprelu ? c.params.data() + c.layout.get("log_threshold").offset : nullptr;
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
            const double th = lt ? std::exp(double(lt[j])) : theta;
            const float v = V[size_t(i * n + j)];
            const bool on = double(v) > th;
            if (on) D.H[size_t(i * n + j)] = v;
            if (lt && (on || std::fabs((double(v) - th) / c.spec.bandwidth) < 0.5))
                D.lists.act[size_t(i)].push_back({int32_t(j), on ? v : 0.0f});
        }
    return D;
}

struct ArchRun {
    std::vector<float> H, grad;
    Lists lists;
    CostTerms J;
    ScreenStats stats;
    bool sparse = false;
};
// One modern_cost with the dense H written; lists from the sparse path (path sparse: complete).
ArchRun run_arch(Backend& be, const Case& c, Screen sc, double theta, ProductPath path = ProductPath::sparse) {
    ModernWorkspace<float> ws;
    ws.dense_h = true;
    ws.path = path;
    ws.screen = sc;
    ws.reserve(c.spec, c.m);
    ArchRun r;
    r.grad.assign(size_t(c.layout.total), 0.0f);
    const bool train = theta < 0 || c.spec.arch == Arch::jumprelu;
    r.J = modern_cost<float>(be, c.spec, c.layout, c.params.data(), c.X.data(), c.m, train ? r.grad.data() : nullptr, ws,
                             c.dead.empty() ? nullptr : c.dead.data(), theta);
    r.stats = ws.screen_stats;
    r.sparse = ws.sparse_used;
    r.H.assign(ws.H.data.begin(), ws.H.data.begin() + c.m * c.spec.d_sae);
    auto grab = [&](const SparseRows<float>& S, std::vector<std::vector<std::pair<int32_t, float>>>& out) {
        for (int64_t i = 0; i < c.m; ++i) {
            std::vector<std::pair<int32_t, float>> row;
            for (int64_t e = S.beg[size_t(i)]; e < S.end[size_t(i)]; ++e) row.push_back({S.col[size_t(e)], S.val[size_t(e)]});
            std::sort(row.begin(), row.end());
            out.push_back(row);
        }
    };
    if (r.sparse) grab(ws.act, r.lists.act);
    if (!c.dead.empty() && train) grab(ws.aux, r.lists.aux);
    return r;
}

void expect_same_bits(const std::vector<float>& a, const std::vector<float>& b, const char* what) {
    ASSERT_EQ(a.size(), b.size()) << what;
    for (size_t t = 0; t < a.size(); ++t) ASSERT_EQ(bits(a[t]), bits(b[t])) << what << " entry " << t;
}

// BatchTopK training (with AuxK), BatchTopK inference and JumpReLU (training: the window lists):
// the dense H, the lists and AuxK's lists are the definition's, bit for bit, on random and
// adversarial data at batch sizes 1 to 130; fp32 and bf16 screening give the same cost and
// gradient bits; the dense path reads the same pre-activations as the sparse one.
TEST(Screen, BatchTopKAndJumpReLUAreTheDefinitions) {
    auto be = backend_create("onednn");
    for (Arch arch : {Arch::batchtopk, Arch::jumprelu})
        for (int kind = 0; kind < 5; ++kind)
            for (int64_t m : {1, 63, 64, 65, 130}) {
                const Case c = as_arch(make_case(kind, 40, 512, 6, m, kind != 4, 300 * kind + m), arch, 17 + m);
                for (double theta : arch == Arch::batchtopk ? std::vector<double>{-1.0, 0.0, 0.15} : std::vector<double>{-1.0}) {
                    SCOPED_TRACE(::testing::Message() << arch_name(arch) << " kind " << kind << " m " << m << " theta " << theta);
                    const Dense D = dense_definition(c, theta);
                    const ArchRun a = run_arch(*be, c, Screen::bf16, theta);
                    const ArchRun f = run_arch(*be, c, Screen::fp32, theta);
                    expect_same_bits(a.H, D.H, "bf16 H");
                    expect_same_bits(f.H, D.H, "fp32 H");
                    if (arch == Arch::jumprelu) {
                        ASSERT_TRUE(a.sparse && f.sparse);
                        expect_same(a.lists.act, D.lists.act, "bf16 lists");
                        expect_same(f.lists.act, D.lists.act, "fp32 lists");
                        int64_t window = 0;
                        for (const auto& row : D.lists.act)
                            for (const auto& [j, v] : row) window += v == 0.0f;
                        if (kind == 0 && m >= 63) EXPECT_GT(window, 0);
                    }
                    if (!c.dead.empty() && theta < 0 && arch == Arch::batchtopk) {
                        expect_same(a.lists.aux, D.lists.aux, "bf16 AuxK");
                        expect_same(f.lists.aux, D.lists.aux, "fp32 AuxK");
                    }
                    EXPECT_EQ(a.J.rec, f.J.rec);
                    EXPECT_EQ(a.J.aux, f.J.aux);
                    EXPECT_EQ(a.J.sparsity, f.J.sparsity);
                    expect_same_bits(a.grad, f.grad, "gradient");
                    if (kind == 0) {
                        const ArchRun d = run_arch(*be, c, Screen::bf16, theta, ProductPath::dense);
                        expect_same_bits(d.H, D.H, "dense-path H");
                        if (theta < 0) EXPECT_LT(a.stats.candidates, m * 512 / 2);  // the screen does screen
                    }
                }
            }
}

// The definition is not oneDNN's: unscreened, some value differs in its low bits (so the tests
// above would see a path that did not screen).
TEST(Screen, UnscreenedValuesDifferFromTheDefinition) {
    auto be = backend_create("onednn");
    const Case c = as_arch(make_case(0, 200, 512, 6, 130, false, 5), Arch::jumprelu, 6);
    const Dense D = dense_definition(c, -1);
    const ArchRun off = run_arch(*be, c, Screen::off, -1);
    const ArchRun on = run_arch(*be, c, Screen::bf16, -1);
    expect_same_bits(on.H, D.H, "screened");
    bool differs = false;
    for (size_t t = 0; t < D.H.size(); ++t) differs = differs || bits(off.H[t]) != bits(D.H[t]);
    EXPECT_TRUE(differs);
}

// Training: the same parameters step after step with fp32 or bf16 screening (SGD on the gradient,
// which depends on every selection, value and window entry).
TEST(Screen, BatchTopKAndJumpReLUTrainTheSameWithEitherProduct) {
    auto be = backend_create("onednn");
    for (Arch arch : {Arch::batchtopk, Arch::jumprelu}) {
        Case c = as_arch(make_case(0, 48, 384, 8, 200, true, 41), arch, 42);
        Case d = c;
        for (int step = 0; step < 6; ++step) {
            const ArchRun a = run_arch(*be, c, Screen::bf16, -1, ProductPath::automatic);
            const ArchRun f = run_arch(*be, d, Screen::fp32, -1, ProductPath::automatic);
            ASSERT_EQ(a.J.rec, f.J.rec) << arch_name(arch) << " " << step;
            ASSERT_EQ(a.J.aux, f.J.aux) << step;
            ASSERT_EQ(a.J.sparsity, f.J.sparsity) << step;
            for (size_t t = 0; t < c.params.size(); ++t) {
                c.params[t] -= 0.05f * a.grad[t];
                d.params[t] -= 0.05f * f.grad[t];
            }
            for (size_t t = 0; t < c.params.size(); ++t) ASSERT_EQ(bits(c.params[t]), bits(d.params[t])) << step;
        }
    }
}

// encode of BatchTopK (its inference threshold) and JumpReLU models with screening: the
// definition's codes, for either product.
TEST(Screen, EncodeBatchTopKAndJumpReLUGiveTheDefinitionsCodes) {
    auto be = backend_create("onednn");
    for (Arch arch : {Arch::batchtopk, Arch::jumprelu})
        for (int kind : {0, 3}) {
            const Case c = as_arch(make_case(kind, 40, 512, 6, 150, false, 60 + kind), arch, 61);
            const double theta = 0.15;
            const Dense D = dense_definition(c, theta);
            for (const char* sc : {"bf16", "fp32"}) {
                Config cfg;
                cfg.architecture = arch_name(arch);
                cfg.d_sae = c.spec.d_sae;
                cfg.k = c.spec.k;
                cfg.optimizer = "adam";
                cfg.bandwidth = c.spec.bandwidth;
                cfg.screen = sc;
                config_validate(cfg);
                auto obj = objective_create(cfg, c.spec.d_in);
                ASSERT_EQ(obj->layout().total, c.layout.total);
                if (arch == Arch::batchtopk) obj->set_extra_state({{"threshold", theta}});
                std::vector<float> H(size_t(c.m * c.spec.d_sae), -1.0f);
                encode(*be, *obj, c.params.data(), c.X.data(), c.m, c.spec.d_in, H.data(), 64);
                SCOPED_TRACE(::testing::Message() << arch_name(arch) << " kind " << kind << " " << sc);
                expect_same_bits(H, D.H, "codes");
            }
        }
}

// End to end: `sae train` of BatchTopK and JumpReLU with screen = fp32 and bf16 writes the same
// model bytes (and not the unscreened run's).
TEST(Screen, TrainBatchTopKAndJumpReLUTheSameWithEitherProduct) {
    const std::string dir = temp_dir("screen_train_bt");
    const std::string sae = sae_binary();
    ASSERT_EQ(run(sae + " synth --out " + dir + "/d --features 64 --dim 32 --samples 1000").exit_code, 0);
    for (const char* arch : {"batchtopk", "jumprelu"}) {
        std::string models[3];
        int t = 0;
        for (const char* sc : {"fp32", "bf16", "off"}) {
            const std::string out = dir + "/" + arch + "_" + sc;
            const CommandResult r = run(sae + " train --set data=" + dir + "/d/data.npy --set architecture=" + arch +
                                        " --set d_sae=128 --set k=4 --set batch_size=100 --set epochs=2 --set threads=1" +
                                        " --set optimizer=adam --set screen=" + sc + " --out " + out);
            ASSERT_EQ(r.exit_code, 0) << r.err;
            models[t++] = read_bytes(out + "/model.safetensors");
        }
        EXPECT_FALSE(models[0].empty());
        EXPECT_EQ(models[0], models[1]) << arch;
        EXPECT_NE(models[0], models[2]) << arch;  // the screened runs did screen
    }
}

TEST(Screen, ParsesItsNames) {
    EXPECT_EQ(screen_parse("off"), Screen::off);
    EXPECT_EQ(screen_parse("fp32"), Screen::fp32);
    EXPECT_EQ(screen_parse("bf16"), Screen::bf16);
    EXPECT_THROW(screen_parse("int8"), std::invalid_argument);
    EXPECT_EQ(screen_name(Screen::bf16), "bf16");
}

// End to end: `sae train` (Adam) with screen = fp32 and bf16 writes the same model bytes, and
// cfg.json records the setting.
TEST(Screen, TrainWritesTheSameModelWithEitherScreeningProduct) {
    const std::string dir = temp_dir("screen_train");
    const std::string sae = sae_binary();
    ASSERT_EQ(run(sae + " synth --out " + dir + "/d --features 64 --dim 32 --samples 2000").exit_code, 0);
    std::string models[3];
    int t = 0;
    for (const char* sc : {"fp32", "bf16", "off"}) {
        const std::string out = dir + "/r_" + sc;
        const CommandResult r = run(sae + " train --set data=" + dir + "/d/data.npy --set architecture=topk" +
                                    " --set d_sae=128 --set k=4 --set batch_size=100 --set epochs=2 --set threads=2 --set optimizer=adam" +
                                    " --set screen=" + sc + " --out " + out);
        ASSERT_EQ(r.exit_code, 0) << r.err;
        models[t++] = read_bytes(out + "/model.safetensors");
        if (std::string(sc) != "off")
            EXPECT_NE(read_bytes(out + "/cfg.json").find(std::string("\"screen\": \"") + sc + "\""), std::string::npos);
    }
    EXPECT_FALSE(models[0].empty());
    EXPECT_EQ(models[0], models[1]);
    // A CPU without bf16 instructions (SAE_NO_BF16 says so): bf16 screening takes the fp32
    // product, and the same bytes come out.
    {
        const std::string out = dir + "/r_nobf16";
        const CommandResult r = run("SAE_NO_BF16=1 " + sae + " train --set data=" + dir + "/d/data.npy --set architecture=topk" +
                                    " --set d_sae=128 --set k=4 --set batch_size=100 --set epochs=2 --set threads=2 --set optimizer=adam" +
                                    " --set screen=bf16 --out " + out);
        ASSERT_EQ(r.exit_code, 0) << r.err;
        EXPECT_EQ(read_bytes(out + "/model.safetensors"), models[1]);
    }
    // oneDNN's values differ from screen_dot's in low bits, so the unscreened run differs: the
    // screened runs did screen (minibatch training keeps lists only; L-BFGS does not screen).
    EXPECT_NE(models[0], models[2]);
    // encode follows the model's saved screen (bf16 here); --set screen=fp32 gives the same bytes,
    // and eval the same JSON
    const std::string model = dir + "/r_bf16", data = dir + "/d/data.npy";
    ASSERT_EQ(run(sae + " encode --model " + model + " --data " + data + " --out " + dir + "/h1.npy").exit_code, 0);
    ASSERT_EQ(run(sae + " encode --model " + model + " --data " + data + " --set screen=fp32 --out " + dir + "/h2.npy")
                  .exit_code,
              0);
    EXPECT_EQ(read_bytes(dir + "/h1.npy"), read_bytes(dir + "/h2.npy"));
    const CommandResult e1 = run(sae + " eval --model " + model + " --data " + data);
    const CommandResult e2 = run(sae + " eval --model " + model + " --data " + data + " --set screen=fp32");
    ASSERT_EQ(e1.exit_code, 0) << e1.err;
    EXPECT_EQ(e1.out, e2.out);
    // --set cannot change the parameters' shape
    EXPECT_NE(run(sae + " encode --model " + model + " --data " + data + " --set d_sae=64 --out " + dir + "/h3.npy")
                  .exit_code,
              0);
}
