#include "sae/optim.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numbers>
#include <vector>

#include "sae/error.hpp"

using namespace sae;

namespace {

// Message of the sae::Error thrown by fn, or "" when none is thrown.
template <class Fn>
std::string error_of(Fn&& fn) {
    try {
        fn();
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

}  // namespace

// --- schedules --------------------------------------------------------------------------------

TEST(Schedule, ConstantWithWarmup) {
    LrSchedule s;
    s.kind = ScheduleKind::constant;
    s.base_lr = 0.1;
    s.warmup_steps = 4;
    // Warm-up: 0.1·(step+1)/4.
    EXPECT_DOUBLE_EQ(s.at(0), 0.025);
    EXPECT_DOUBLE_EQ(s.at(1), 0.05);
    EXPECT_DOUBLE_EQ(s.at(3), 0.1);
    EXPECT_DOUBLE_EQ(s.at(4), 0.1);
    EXPECT_DOUBLE_EQ(s.at(1000), 0.1);
}

TEST(Schedule, StepWithWarmup) {
    LrSchedule s;
    s.kind = ScheduleKind::step;
    s.base_lr = 1.0;
    s.warmup_steps = 2;
    s.step_size = 3;
    s.gamma = 0.5;
    EXPECT_DOUBLE_EQ(s.at(0), 0.5);   // warm-up 1·1/2
    EXPECT_DOUBLE_EQ(s.at(1), 1.0);   // warm-up 1·2/2
    EXPECT_DOUBLE_EQ(s.at(2), 1.0);   // s=0 → 0.5^0
    EXPECT_DOUBLE_EQ(s.at(4), 1.0);   // s=2 → 0.5^0
    EXPECT_DOUBLE_EQ(s.at(5), 0.5);   // s=3 → 0.5^1
    EXPECT_DOUBLE_EQ(s.at(8), 0.25);  // s=6 → 0.5^2
    EXPECT_DOUBLE_EQ(s.at(10), 0.25); // s=8 → 0.5^2
    EXPECT_DOUBLE_EQ(s.at(11), 0.125);
}

TEST(Schedule, CosineWithWarmup) {
    LrSchedule s;
    s.kind = ScheduleKind::cosine;
    s.base_lr = 1.0;
    s.min_lr = 0.2;
    s.warmup_steps = 2;
    s.total_steps = 6;  // T = 4
    // After warm-up: 0.2 + 0.4·(1 + cos(π·s/4)); cos(π/4) = 0.70710678118654752.
    EXPECT_DOUBLE_EQ(s.at(0), 0.5);
    EXPECT_DOUBLE_EQ(s.at(1), 1.0);
    EXPECT_DOUBLE_EQ(s.at(2), 1.0);
    EXPECT_NEAR(s.at(3), 0.88284271247461901, 1e-15);
    EXPECT_NEAR(s.at(4), 0.6, 1e-15);
    EXPECT_NEAR(s.at(5), 0.31715728752538099, 1e-15);
    EXPECT_NEAR(s.at(6), 0.2, 1e-15);
    EXPECT_NEAR(s.at(500), 0.2, 1e-15);  // stays at min_lr past total_steps
}

TEST(Schedule, CosineWithoutWarmupDegenerateTotal) {
    LrSchedule s;
    s.kind = ScheduleKind::cosine;
    s.base_lr = 0.3;
    s.min_lr = 0.1;
    s.total_steps = 0;  // T = max(1, 0) = 1
    EXPECT_DOUBLE_EQ(s.at(0), 0.3);
    EXPECT_NEAR(s.at(1), 0.1, 1e-15);
}

// Warm-up 2 steps to 0.1, then linear decay to 0.02 over T = 10 − 2 = 8 steps:
// step 0 → 0.05, 1 → 0.1, 2 → 0.1, 6 → 0.1 + (0.02 − 0.1)·4/8 = 0.06, 10 → 0.02, 50 → 0.02.
TEST(Schedule, LinearDecayWithWarmup) {
    LrSchedule s;
    s.kind = ScheduleKind::linear;
    s.base_lr = 0.1;
    s.min_lr = 0.02;
    s.warmup_steps = 2;
    s.total_steps = 10;
    EXPECT_DOUBLE_EQ(s.at(0), 0.05);
    EXPECT_DOUBLE_EQ(s.at(1), 0.1);
    EXPECT_DOUBLE_EQ(s.at(2), 0.1);
    EXPECT_NEAR(s.at(6), 0.06, 1e-15);
    EXPECT_NEAR(s.at(10), 0.02, 1e-15);
    EXPECT_NEAR(s.at(50), 0.02, 1e-15);
    EXPECT_EQ(schedule_parse("linear"), ScheduleKind::linear);
    EXPECT_EQ(schedule_name(ScheduleKind::linear), "linear");
}

TEST(Schedule, ParseAndName) {
    for (auto k : {ScheduleKind::constant, ScheduleKind::step, ScheduleKind::cosine})
        EXPECT_EQ(schedule_parse(schedule_name(k)), k);
    EXPECT_EQ(schedule_name(ScheduleKind::cosine), "cosine");
    const std::string msg = error_of([] { schedule_parse("exponential"); });
    EXPECT_NE(msg.find("exponential"), std::string::npos) << msg;
    for (const char* valid : {"constant", "step", "cosine", "linear"}) EXPECT_NE(msg.find(valid), std::string::npos) << msg;
}

// --- first-order optimisers -----------------------------------------------------------------

TEST(Optimizer, SgdMomentumByHand) {
    OptimizerHyper h;
    h.momentum = 0.9;
    auto opt = optimizer_create("sgd", 2, h);
    std::vector<float> p = {1.0f, 2.0f};
    const float g1[2] = {1.0f, -1.0f}, g2[2] = {0.5f, 0.5f};
    opt->update(p.data(), g1, 0.1);  // v = g1 = (1, −1); p = (1 − 0.1, 2 + 0.1)
    EXPECT_FLOAT_EQ(p[0], 0.9f);
    EXPECT_FLOAT_EQ(p[1], 2.1f);
    opt->update(p.data(), g2, 0.1);  // v = 0.9·(1, −1) + 0.5 = (1.4, −0.4); p −= 0.1·v
    EXPECT_FLOAT_EQ(p[0], 0.76f);
    EXPECT_FLOAT_EQ(p[1], 2.14f);
    EXPECT_FLOAT_EQ((*opt->state()[0].second)[0], 1.4f);
    EXPECT_FLOAT_EQ((*opt->state()[0].second)[1], -0.4f);
}

TEST(Optimizer, RmspropByHand) {
    OptimizerHyper h;
    h.rms_decay = 0.99;
    h.eps = 1e-8;
    auto opt = optimizer_create("rmsprop", 1, h);
    float p = 1.0f;
    const float g1 = 2.0f, g2 = -1.0f;
    opt->update(&p, &g1, 0.01);  // s = 0.01·4 = 0.04; p −= 0.01·2/0.2 = 0.1
    EXPECT_NEAR(p, 0.9, 1e-6);
    opt->update(&p, &g2, 0.01);  // s = 0.99·0.04 + 0.01 = 0.0496; √s = 0.22271057; p += 0.01/√s
    EXPECT_NEAR(p, 0.94490133, 1e-6);
    EXPECT_NEAR((*opt->state()[0].second)[0], 0.0496, 1e-8);  // float rounding ≈ 4e-9
}

TEST(Optimizer, AdamByHandAndDoubleReference) {
    OptimizerHyper h;  // β1 = 0.9, β2 = 0.999, eps = 1e-8
    auto opt = optimizer_create("adam", 2, h);
    std::vector<float> p = {1.0f, -2.0f};
    const std::vector<std::vector<float>> grads = {{0.5f, -0.1f}, {0.2f, 0.3f}, {-0.4f, 0.05f}};
    const double lr = 0.01;
    // Step 1: m̂ = g, v̂ = g², so the step is lr·g/(|g| + eps) ≈ lr·sign(g).
    opt->update(p.data(), grads[0].data(), lr);
    EXPECT_NEAR(p[0], 0.99, 1e-6);
    EXPECT_NEAR(p[1], -1.99, 1e-6);
    // Steps 2, 3 against a plain double-precision transcription of the formula.
    double rp[2] = {0.99, -1.99}, m[2], v[2];
    for (int i = 0; i < 2; ++i) m[i] = 0.1 * grads[0][i], v[i] = 0.001 * grads[0][i] * grads[0][i];
    for (int t = 2; t <= 3; ++t) {
        opt->update(p.data(), grads[size_t(t - 1)].data(), lr);
        for (int i = 0; i < 2; ++i) {
            const double g = grads[size_t(t - 1)][size_t(i)];
            m[i] = 0.9 * m[i] + 0.1 * g;
            v[i] = 0.999 * v[i] + 0.001 * g * g;
            rp[i] -= lr * (m[i] / (1 - std::pow(0.9, t))) / (std::sqrt(v[i] / (1 - std::pow(0.999, t))) + 1e-8);
        }
        EXPECT_NEAR(p[0], rp[0], 1e-6) << "step " << t;
        EXPECT_NEAR(p[1], rp[1], 1e-6) << "step " << t;
        // Step 2 by hand, component 0: m = 0.9·0.05 + 0.1·0.2 = 0.065, v = 0.999·0.00025 + 0.001·0.04
        // = 0.00028975; m̂ = 0.065/0.19 = 0.34210526, v̂ = 0.00028975/0.001999 = 0.14494747,
        // √v̂ = 0.38071967; p = 0.99 − 0.01·0.34210526/0.38071967 = 0.98101425.
        if (t == 2) {
            EXPECT_NEAR(p[0], 0.98101425, 1e-6);
        }
    }
    EXPECT_NEAR((*opt->state()[0].second)[0], 0.9 * 0.065 + 0.1 * -0.4, 1e-7);  // m after step 3
}

TEST(Optimizer, StateNamesSizesAndStepCount) {
    const OptimizerHyper h;
    const std::vector<std::pair<std::string, std::vector<std::string>>> expected = {
        {"sgd", {"velocity"}}, {"adam", {"m", "v"}}, {"rmsprop", {"s"}}};
    for (const auto& [name, names] : expected) {
        auto opt = optimizer_create(name, 7, h);
        EXPECT_EQ(opt->name(), name);
        auto st = opt->state();
        ASSERT_EQ(st.size(), names.size()) << name;
        for (size_t k = 0; k < st.size(); ++k) {
            EXPECT_EQ(st[k].first, names[k]) << name;
            EXPECT_EQ(st[k].second->size(), 7u) << name;
        }
        EXPECT_EQ(opt->step(), 0) << name;
        std::vector<float> p(7, 1.0f), g(7, 0.5f);
        opt->update(p.data(), g.data(), 0.01);
        EXPECT_EQ(opt->step(), 1) << name;
        opt->update(p.data(), g.data(), 0.01);
        EXPECT_EQ(opt->step(), 2) << name;
        opt->set_step(40);
        opt->update(p.data(), g.data(), 0.01);
        EXPECT_EQ(opt->step(), 41) << name;
    }
}

TEST(Optimizer, UnknownNameThrowsListingValid) {
    const std::string msg = error_of([] { optimizer_create("adagrad", 3, OptimizerHyper{}); });
    EXPECT_NE(msg.find("adagrad"), std::string::npos) << msg;
    for (const char* valid : {"sgd", "adam", "rmsprop"}) EXPECT_NE(msg.find(valid), std::string::npos) << msg;
}

// Adam's step after a sign flip of the gradient uses step t (global), which bias-corrects by 1−β^t.
TEST(Optimizer, AdamUsesRestoredStepForBiasCorrection) {
    auto a = optimizer_create("adam", 1, OptimizerHyper{});
    auto b = optimizer_create("adam", 1, OptimizerHyper{});
    float pa = 0, pb = 0;
    const float g = 1.0f;
    b->set_step(1000);  // bias corrections ≈ 1 − 0.9^1001 ≈ 1 and 1 − 0.999^1001 ≈ 0.632
    a->update(&pa, &g, 0.1);
    b->update(&pb, &g, 0.1);
    EXPECT_NEAR(pa, -0.1, 1e-6);  // m̂ = 1, v̂ = 1
    // m = 0.1, v = 0.001: step = 0.1·0.1/(√(0.001/(1−0.999^1001)) + eps)
    EXPECT_NEAR(pb, -0.1 * 0.1 / std::sqrt(0.001 / (1 - std::pow(0.999, 1001))), 1e-6);
}

TEST(Optimizer, LargeBufferMatchesElementwiseUpdate) {
    // Above the threading threshold each element must still see exactly its own update.
    const int64_t n = 100003;
    for (const char* name : {"sgd", "adam", "rmsprop"}) {
        auto big = optimizer_create(name, n, OptimizerHyper{});
        std::vector<float> p(static_cast<size_t>(n)), g(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) p[size_t(i)] = float(i % 7) - 3.0f, g[size_t(i)] = float(i % 5) - 2.5f;
        for (int t = 0; t < 3; ++t) big->update(p.data(), g.data(), 0.01);
        for (int64_t i : {int64_t(0), int64_t(1), int64_t(4), n / 2, n - 1}) {
            auto one = optimizer_create(name, 1, OptimizerHyper{});
            float q = float(i % 7) - 3.0f;
            const float gi = float(i % 5) - 2.5f;
            for (int t = 0; t < 3; ++t) one->update(&q, &gi, 0.01);
            EXPECT_FLOAT_EQ(p[size_t(i)], q) << name << " element " << i;
        }
    }
}

namespace {

// f(x) = ½ Σ aᵢ(xᵢ − cᵢ)², minimum at c.
const std::vector<double> kA = {1.0, 2.0, 5.0, 0.5, 3.0};
const std::vector<double> kC = {1.0, -2.0, 0.5, 3.0, -1.0};

double run_quadratic(const std::string& name, const LrSchedule& sched, int64_t steps) {
    auto opt = optimizer_create(name, int64_t(kA.size()), OptimizerHyper{});
    std::vector<float> x(kA.size(), 0.0f), g(kA.size());
    for (int64_t t = 0; t < steps; ++t) {
        for (size_t i = 0; i < x.size(); ++i) g[i] = float(kA[i] * (x[i] - kC[i]));
        opt->update(x.data(), g.data(), sched.at(t));
    }
    double err = 0;
    for (size_t i = 0; i < x.size(); ++i) err = std::max(err, std::abs(x[i] - kC[i]));
    return err;
}

}  // namespace

TEST(Optimizer, SgdConvergesOnQuadratic) {
    LrSchedule s;
    s.base_lr = 0.05;
    EXPECT_LT(run_quadratic("sgd", s, 1000), 1e-5);
}

TEST(Optimizer, AdamConvergesOnQuadratic) {
    LrSchedule s;
    s.kind = ScheduleKind::cosine;
    s.base_lr = 0.1;
    s.total_steps = 3000;
    EXPECT_LT(run_quadratic("adam", s, 3000), 1e-3);
}

TEST(Optimizer, RmspropConvergesOnQuadratic) {
    LrSchedule s;
    s.kind = ScheduleKind::cosine;
    s.base_lr = 0.05;
    s.total_steps = 3000;
    EXPECT_LT(run_quadratic("rmsprop", s, 3000), 1e-3);
}

// --- L-BFGS -----------------------------------------------------------------------------------

namespace {

// Chained Rosenbrock: Σ 100(x_{i+1} − x_i²)² + (1 − x_i)²; minimum 0 at all ones.
double rosenbrock(const double* x, double* g, int64_t n) {
    double f = 0;
    for (int64_t i = 0; i < n; ++i) g[i] = 0;
    for (int64_t i = 0; i + 1 < n; ++i) {
        const double a = x[i + 1] - x[i] * x[i], b = 1 - x[i];
        f += 100 * a * a + b * b;
        g[i] += -400 * a * x[i] - 2 * b;
        g[i + 1] += 200 * a;
    }
    return f;
}

ObjectiveFn rosenbrock_fn(int64_t n) {
    return [n](const double* x, double* g) { return rosenbrock(x, g, n); };
}

std::vector<double> rosenbrock_start(int64_t n) {
    std::vector<double> x(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) x[size_t(i)] = i % 2 == 0 ? -1.2 : 1.0;
    return x;
}

}  // namespace

TEST(Lbfgs, StatusNames) {
    EXPECT_EQ(lbfgs_status_name(LbfgsStatus::running), "running");
    EXPECT_EQ(lbfgs_status_name(LbfgsStatus::converged_grad), "converged_grad");
    EXPECT_EQ(lbfgs_status_name(LbfgsStatus::converged_progress), "converged_progress");
    EXPECT_EQ(lbfgs_status_name(LbfgsStatus::line_search_failed), "line_search_failed");
}

TEST(Lbfgs, Rosenbrock2dConverges) {
    LbfgsOptions o;
    o.grad_tol = 1e-9;
    o.progress_tol = 1e-16;
    Lbfgs opt(2, o);
    const auto f = rosenbrock_fn(2);
    const double x0[2] = {-1.2, 1.0};
    opt.init(x0, f);
    EXPECT_EQ(opt.evaluations(), 1);
    while (opt.status() == LbfgsStatus::running && opt.iteration() < 100) opt.iterate(f);
    EXPECT_NE(opt.status(), LbfgsStatus::running);
    EXPECT_NE(opt.status(), LbfgsStatus::line_search_failed);
    EXPECT_LE(opt.iteration(), 100);
    EXPECT_NEAR(opt.x()[0], 1.0, 1e-6);
    EXPECT_NEAR(opt.x()[1], 1.0, 1e-6);
    EXPECT_LT(opt.f(), 1e-12);
}

TEST(Lbfgs, EvaluationsCountObjectiveCalls) {
    int64_t calls = 0;
    const ObjectiveFn f = [&](const double* x, double* g) { ++calls; return rosenbrock(x, g, 2); };
    Lbfgs opt(2, LbfgsOptions{});
    const double x0[2] = {-1.2, 1.0};
    opt.init(x0, f);
    for (int k = 0; k < 15 && opt.status() == LbfgsStatus::running; ++k) opt.iterate(f);
    EXPECT_EQ(opt.iteration(), 15);
    EXPECT_EQ(opt.evaluations(), calls);
    EXPECT_GT(calls, 15);  // at least one per iteration plus init
}

TEST(Lbfgs, IllConditionedQuadratic50d) {
    // f = ½ Σ aᵢ(xᵢ − cᵢ)², aᵢ = 10^(4i/49): condition number 1e4. A short history wraps the ring.
    const int64_t n = 50;
    std::vector<double> a(n), c(n);
    for (int64_t i = 0; i < n; ++i) a[size_t(i)] = std::pow(10.0, 4.0 * double(i) / 49.0), c[size_t(i)] = std::sin(double(i) + 1);
    const ObjectiveFn f = [&](const double* x, double* g) {
        double v = 0;
        for (int64_t i = 0; i < n; ++i) {
            const double r = x[i] - c[size_t(i)];
            g[i] = a[size_t(i)] * r;
            v += 0.5 * a[size_t(i)] * r * r;
        }
        return v;
    };
    LbfgsOptions o;
    o.history = 5;
    o.grad_tol = 1e-8;
    o.progress_tol = 0;
    Lbfgs opt(n, o);
    const std::vector<double> x0(n, 0.0);
    opt.init(x0.data(), f);
    while (opt.status() == LbfgsStatus::running && opt.iteration() < 2000) opt.iterate(f);
    EXPECT_EQ(opt.status(), LbfgsStatus::converged_grad);
    for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(opt.x()[size_t(i)], c[size_t(i)], 2e-8) << i;  // |xᵢ − cᵢ| = |gᵢ|/aᵢ ≤ grad_tol
}

TEST(Lbfgs, EveryStepSatisfiesStrongWolfe) {
    // Observable from outside with s = x_{k+1} − x_k = α d:
    //   Armijo:    f_{k+1} ≤ f_k + c1·g_kᵀs        (so f decreases monotonically)
    //   curvature: |g_{k+1}ᵀs| ≤ c2·|g_kᵀs|
    const int64_t n = 10;
    LbfgsOptions o;
    o.history = 4;
    o.grad_tol = 1e-10;
    o.progress_tol = 0;
    Lbfgs opt(n, o);
    const auto f = rosenbrock_fn(n);
    opt.init(rosenbrock_start(n).data(), f);
    int checked = 0;
    while (opt.status() == LbfgsStatus::running && opt.iteration() < 300) {
        const std::vector<double> x = opt.x(), g = opt.g();
        const double fk = opt.f();
        opt.iterate(f);
        if (opt.status() == LbfgsStatus::line_search_failed) break;
        double gs = 0, gs_new = 0;
        for (int64_t i = 0; i < n; ++i) {
            const double s = opt.x()[size_t(i)] - x[size_t(i)];
            gs += g[size_t(i)] * s;
            gs_new += opt.g()[size_t(i)] * s;
        }
        EXPECT_LT(gs, 0) << "iteration " << opt.iteration();
        EXPECT_LE(opt.f(), fk + o.c1 * gs + 1e-15 * std::abs(fk)) << "iteration " << opt.iteration();
        EXPECT_LT(opt.f(), fk) << "iteration " << opt.iteration();
        EXPECT_LE(std::abs(gs_new), o.c2 * std::abs(gs) * (1 + 1e-12)) << "iteration " << opt.iteration();
        ++checked;
    }
    EXPECT_GT(checked, 20);
    EXPECT_NEAR(opt.x()[0], 1.0, 1e-6);
}

TEST(Lbfgs, LineSearchRejectsStepWithoutSufficientDecrease) {
    // f(x) = −x + 3x² − 1.95x³ from 0: the first trial x = 1 (step min(1, 1/|g|) = 1) has
    // f = 0.05 > f(0) yet |f'(1)| = 0.85 ≤ c2, so only the Armijo test can reject it.
    const ObjectiveFn f = [](const double* x, double* g) {
        const double t = x[0];
        g[0] = -1 + 6 * t - 5.85 * t * t;
        return -t + 3 * t * t - 1.95 * t * t * t;
    };
    Lbfgs opt(1, LbfgsOptions{});
    const double x0 = 0;
    opt.init(&x0, f);
    opt.iterate(f);
    EXPECT_NE(opt.status(), LbfgsStatus::line_search_failed);  // (cubic interpolation is exact here)
    EXPECT_GT(opt.x()[0], 0.0);
    EXPECT_LE(opt.f(), 0.0 + 1e-4 * -1.0 * opt.x()[0]);  // f(0) + c1·f'(0)·s
    EXPECT_LE(std::abs(opt.g()[0]), 0.9);                // |f'(x)| ≤ c2·|f'(0)|
}

TEST(Lbfgs, FirstTrialIsSteepestDescentScaledByL1Norm) {
    // At (−1.2, 1): g = (−215.6, −88), ‖g‖₁ = 303.6, so the first trial is x0 − g/303.6.
    std::vector<std::vector<double>> trials;
    const ObjectiveFn f = [&](const double* x, double* g) {
        trials.push_back({x[0], x[1]});
        return rosenbrock(x, g, 2);
    };
    Lbfgs opt(2, LbfgsOptions{});
    const double x0[2] = {-1.2, 1.0};
    opt.init(x0, f);
    opt.iterate(f);
    ASSERT_GE(trials.size(), 2u);
    EXPECT_NEAR(trials[1][0], -1.2 + 215.6 / 303.6, 1e-12);
    EXPECT_NEAR(trials[1][1], 1.0 + 88.0 / 303.6, 1e-12);
}

TEST(Lbfgs, ConvergedAtInitWhenGradientSmall) {
    Lbfgs opt(2, LbfgsOptions{});
    const auto f = rosenbrock_fn(2);
    const double x0[2] = {1.0, 1.0};
    opt.init(x0, f);
    EXPECT_EQ(opt.status(), LbfgsStatus::converged_grad);
    EXPECT_EQ(opt.iterate(f), LbfgsStatus::converged_grad);  // no further work
    EXPECT_EQ(opt.iteration(), 0);
    EXPECT_EQ(opt.evaluations(), 1);
}

TEST(Lbfgs, ConvergedProgressWhenStepsStall) {
    LbfgsOptions o;
    o.grad_tol = 0;
    o.progress_tol = 1e-3;
    Lbfgs opt(2, o);
    const auto f = rosenbrock_fn(2);
    const double x0[2] = {-1.2, 1.0};
    opt.init(x0, f);
    while (opt.status() == LbfgsStatus::running && opt.iteration() < 200) opt.iterate(f);
    EXPECT_EQ(opt.status(), LbfgsStatus::converged_progress);
}

TEST(Lbfgs, LineSearchFailureKeepsBestPoint) {
    // Finite only at x0: every trial point is NaN, so the search cannot make progress.
    const double x0[2] = {0.5, -0.25};
    const ObjectiveFn f = [&](const double* x, double* g) {
        g[0] = 2 * x[0], g[1] = 2 * x[1];
        return x[0] == x0[0] && x[1] == x0[1] ? x[0] * x[0] + x[1] * x[1] : std::nan("");
    };
    LbfgsOptions o;
    o.max_line_search = 7;
    Lbfgs opt(2, o);
    opt.init(x0, f);
    EXPECT_EQ(opt.iterate(f), LbfgsStatus::line_search_failed);
    EXPECT_EQ(opt.x()[0], 0.5);
    EXPECT_EQ(opt.x()[1], -0.25);
    EXPECT_EQ(opt.f(), 0.3125);
    EXPECT_EQ(opt.evaluations(), 1 + 7);
}

TEST(Lbfgs, CheckpointRestoreIsBitIdentical) {
    const int64_t n = 8;
    LbfgsOptions o;
    o.history = 3;  // the ring wraps before and after the checkpoint
    o.grad_tol = 0;
    o.progress_tol = 0;
    const auto f = rosenbrock_fn(n);
    const auto x0 = rosenbrock_start(n);
    const int k = 10, total = 25;

    Lbfgs full(n, o);
    full.init(x0.data(), f);
    for (int i = 0; i < total; ++i) full.iterate(f);
    ASSERT_EQ(full.status(), LbfgsStatus::running);

    std::map<std::string, std::vector<double>> buffers;
    std::map<std::string, int64_t> scalars;
    {
        Lbfgs first(n, o);
        first.init(x0.data(), f);
        for (int i = 0; i < k; ++i) first.iterate(f);
        buffers = first.save_buffers();
        scalars = first.save_scalars();
    }
    ASSERT_EQ(scalars.at("stored"), 3);
    ASSERT_NE(scalars.at("head"), 0);  // the ring has wrapped: its order must survive the restore
    Lbfgs resumed(n, o);
    resumed.restore(buffers, scalars);
    EXPECT_EQ(resumed.iteration(), k);
    for (int i = k; i < total; ++i) resumed.iterate(f);

    EXPECT_EQ(std::memcmp(resumed.x().data(), full.x().data(), sizeof(double) * size_t(n)), 0);
    EXPECT_EQ(std::memcmp(resumed.g().data(), full.g().data(), sizeof(double) * size_t(n)), 0);
    EXPECT_EQ(resumed.f(), full.f());
    EXPECT_EQ(resumed.iteration(), full.iteration());
    EXPECT_EQ(resumed.evaluations(), full.evaluations());
    EXPECT_EQ(resumed.save_buffers(), full.save_buffers());
    EXPECT_EQ(resumed.save_scalars(), full.save_scalars());
}

TEST(Lbfgs, RestoreRejectsMismatchedState) {
    LbfgsOptions o;
    o.history = 5;
    Lbfgs small(4, o);
    const auto f = rosenbrock_fn(4);
    small.init(rosenbrock_start(4).data(), f);
    small.iterate(f);
    const auto buffers = small.save_buffers();
    const auto scalars = small.save_scalars();

    Lbfgs bigger(5, o);  // different parameter count
    std::string msg = error_of([&] { bigger.restore(buffers, scalars); });
    EXPECT_NE(msg.find("'x' has 4 values, expected 5"), std::string::npos) << msg;

    LbfgsOptions o8 = o;
    o8.history = 8;  // different history: 's' is [history, n]
    Lbfgs other_history(4, o8);
    msg = error_of([&] { other_history.restore(buffers, scalars); });
    EXPECT_NE(msg.find("'s' has 20 values, expected 32"), std::string::npos) << msg;

    auto missing = buffers;
    missing.erase("rho");
    Lbfgs same(4, o);
    msg = error_of([&] { same.restore(missing, scalars); });
    EXPECT_NE(msg.find("rho"), std::string::npos) << msg;

    auto bad_scalars = scalars;
    bad_scalars["head"] = 5;  // must be < history
    msg = error_of([&] { same.restore(buffers, bad_scalars); });
    EXPECT_NE(msg.find("head"), std::string::npos) << msg;

    // A failed restore leaves the optimiser untouched; a valid one succeeds.
    EXPECT_EQ(same.x(), std::vector<double>(4, 0.0));
    EXPECT_EQ(same.iteration(), 0);
    same.restore(buffers, scalars);
    EXPECT_EQ(same.x(), small.x());
}
