#include "sae/optim.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <utility>

#include "sae/error.hpp"
#include "simd.hpp"

namespace sae {

// --- learning-rate schedules --------------------------------------------------------------

double LrSchedule::at(int64_t step) const {
    if (step < warmup_steps) return base_lr * double(step + 1) / double(warmup_steps);
    const int64_t s = std::max<int64_t>(0, step - warmup_steps);
    switch (kind) {
        case ScheduleKind::constant: return base_lr;
        case ScheduleKind::step:
            check(step_size > 0, "learning-rate schedule: step_size is " + std::to_string(step_size) +
                                     "; it must be positive");
            return base_lr * std::pow(gamma, double(s / step_size));
        case ScheduleKind::cosine: {
            const int64_t T = std::max<int64_t>(1, total_steps - warmup_steps);
            const double frac = double(std::min(s, T)) / double(T);
            return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + std::cos(std::numbers::pi * frac));
        }
        case ScheduleKind::linear: {
            const int64_t T = std::max<int64_t>(1, total_steps - warmup_steps);
            const double frac = double(std::min(s, T)) / double(T);
            return base_lr + (min_lr - base_lr) * frac;
        }
    }
    return base_lr;
}

ScheduleKind schedule_parse(const std::string& name) {
    if (name == "constant") return ScheduleKind::constant;
    if (name == "step") return ScheduleKind::step;
    if (name == "cosine") return ScheduleKind::cosine;
    if (name == "linear") return ScheduleKind::linear;
    throw Error("learning-rate schedule '" + name + "' is unknown; use one of constant, step, cosine, linear");
}

std::string schedule_name(ScheduleKind k) {
    switch (k) {
        case ScheduleKind::constant: return "constant";
        case ScheduleKind::step: return "step";
        case ScheduleKind::cosine: return "cosine";
        case ScheduleKind::linear: return "linear";
    }
    return "unknown";
}

// --- first-order optimisers -----------------------------------------------------------------
// Each update is one element-wise pass; threads only split the index range, so results do not
// depend on the thread count. Small buffers stay on the calling thread.

namespace {

constexpr int64_t kParallelMin = 1 << 15;
constexpr int64_t kBlock = 1 << 13;  // elements per unit of parallel work

SAE_SIMD_CLONES
void adam_block(float* __restrict p, float* __restrict m, float* __restrict v, const float* __restrict g,
                int64_t n, float b1, float b2, float a1, float a2, float step, float inv_bc2, float eps) {
    for (int64_t i = 0; i < n; ++i) {
        m[i] = b1 * m[i] + a1 * g[i];
        v[i] = b2 * v[i] + a2 * g[i] * g[i];
        p[i] -= step * m[i] / (std::sqrt(v[i] * inv_bc2) + eps);
    }
}

void check_unit(double v, const std::string& what) {
    check(v >= 0.0 && v < 1.0, "optimizer: " + what + " is " + std::to_string(v) + "; it must lie in [0, 1)");
}

class Sgd final : public Optimizer {
public:
    Sgd(int64_t n, const OptimizerHyper& h) : mu_(float(h.momentum)), v_(size_t(n), 0.0f) {
        check(h.momentum >= 0.0, "optimizer: momentum is negative; it must be ≥ 0");
    }
    std::string name() const override { return "sgd"; }
    void update(float* p, const float* g, double lr) override {
        ++t_;
        const float lr_f = float(lr), mu = mu_;
        float* v = v_.data();
        const int64_t n = int64_t(v_.size());
#pragma omp parallel for simd if (n >= kParallelMin)
        for (int64_t i = 0; i < n; ++i) {
            v[i] = mu * v[i] + g[i];
            p[i] -= lr_f * v[i];
        }
    }
    std::vector<std::pair<std::string, std::vector<float>*>> state() override { return {{"velocity", &v_}}; }

private:
    float mu_;
    std::vector<float> v_;  // [n]
};

class Adam final : public Optimizer {
public:
    Adam(int64_t n, const OptimizerHyper& h)
        : b1_(h.beta1), b2_(h.beta2), eps_(float(h.eps)), m_(size_t(n), 0.0f), v_(size_t(n), 0.0f) {
        check_unit(h.beta1, "beta1");
        check_unit(h.beta2, "beta2");
        check(h.eps >= 0.0, "optimizer: eps is negative; it must be ≥ 0");
    }
    std::string name() const override { return "adam"; }
    void update(float* p, const float* g, double lr) override {
        ++t_;
        // Bias corrections in double, once per step.
        const float step = float(lr / (1.0 - std::pow(b1_, double(t_))));
        const float inv_bc2 = float(1.0 / (1.0 - std::pow(b2_, double(t_))));
        const float b1 = float(b1_), b2 = float(b2_), eps = eps_;
        const float a1 = float(1.0 - b1_), a2 = float(1.0 - b2_);
        float* m = m_.data();
        float* v = v_.data();
        const int64_t n = int64_t(m_.size());
        const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
        for (int64_t b = 0; b < blocks; ++b) {
            const int64_t lo = b * kBlock, len = std::min(kBlock, n - lo);
            adam_block(p + lo, m + lo, v + lo, g + lo, len, b1, b2, a1, a2, step, inv_bc2, eps);
        }
    }
    std::vector<std::pair<std::string, std::vector<float>*>> state() override {
        return {{"m", &m_}, {"v", &v_}};
    }

private:
    double b1_, b2_;
    float eps_;
    std::vector<float> m_, v_;  // [n] each
};

class RmsProp final : public Optimizer {
public:
    RmsProp(int64_t n, const OptimizerHyper& h)
        : rho_(float(h.rms_decay)), a_(float(1.0 - h.rms_decay)), eps_(float(h.eps)), s_(size_t(n), 0.0f) {
        check_unit(h.rms_decay, "rms_decay");
        check(h.eps >= 0.0, "optimizer: eps is negative; it must be ≥ 0");
    }
    std::string name() const override { return "rmsprop"; }
    void update(float* p, const float* g, double lr) override {
        ++t_;
        const float lr_f = float(lr), rho = rho_, a = a_, eps = eps_;
        float* s = s_.data();
        const int64_t n = int64_t(s_.size());
#pragma omp parallel for simd if (n >= kParallelMin)
        for (int64_t i = 0; i < n; ++i) {
            s[i] = rho * s[i] + a * g[i] * g[i];
            p[i] -= lr_f * g[i] / (std::sqrt(s[i]) + eps);
        }
    }
    std::vector<std::pair<std::string, std::vector<float>*>> state() override { return {{"s", &s_}}; }

private:
    float rho_, a_, eps_;  // ρ, 1 − ρ, eps
    std::vector<float> s_;  // [n]
};

}  // namespace

std::unique_ptr<Optimizer> optimizer_create(const std::string& name, int64_t n, const OptimizerHyper& hyper) {
    check(n >= 0, "optimizer: parameter count " + std::to_string(n) + " is negative");
    if (name == "sgd") return std::make_unique<Sgd>(n, hyper);
    if (name == "adam") return std::make_unique<Adam>(n, hyper);
    if (name == "rmsprop") return std::make_unique<RmsProp>(n, hyper);
    throw Error("optimizer '" + name + "' is unknown; use one of sgd, adam, rmsprop");
}

// --- L-BFGS ---------------------------------------------------------------------------------

std::string lbfgs_status_name(LbfgsStatus s) {
    switch (s) {
        case LbfgsStatus::running: return "running";
        case LbfgsStatus::converged_grad: return "converged_grad";
        case LbfgsStatus::converged_progress: return "converged_progress";
        case LbfgsStatus::line_search_failed: return "line_search_failed";
    }
    return "unknown";
}

namespace {

double dot(const double* a, const double* b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
}

double max_abs(const std::vector<double>& a) {
    double m = 0;
    for (double v : a) m = std::max(m, std::abs(v));
    return m;
}

// Minimiser of the cubic matching φ and φ' at a and b; else of the quadratic matching φ(a),
// φ'(a), φ(b); clamped to [lo, hi]; `fallback` when neither exists (or values are not finite).
double interpolate(double a, double fa, double da, double b, double fb, double db, double lo, double hi,
                   double fallback) {
    double t = std::numeric_limits<double>::quiet_NaN();
    const double d1 = da + db - 3.0 * (fa - fb) / (a - b);
    const double disc = d1 * d1 - da * db;
    if (disc >= 0.0) {
        const double d2 = std::copysign(std::sqrt(disc), b - a);
        t = b - (b - a) * (db + d2 - d1) / (db - da + 2.0 * d2);
    }
    if (!std::isfinite(t)) {
        const double curv = fb - fa - da * (b - a);  // ½φ''(b−a)²
        if (curv > 0.0) t = a - da * (b - a) * (b - a) / (2.0 * curv);
    }
    if (!std::isfinite(t)) return fallback;
    return std::clamp(t, lo, hi);
}

}  // namespace

Lbfgs::Lbfgs(int64_t n, const LbfgsOptions& options) : n_(n), opt_(options) {
    check(n >= 0, "L-BFGS: parameter count " + std::to_string(n) + " is negative");
    check(opt_.history >= 1, "L-BFGS: history is " + std::to_string(opt_.history) + "; it must be ≥ 1");
    check(opt_.max_line_search >= 1, "L-BFGS: max_line_search must be ≥ 1");
    check(0.0 < opt_.c1 && opt_.c1 < opt_.c2 && opt_.c2 < 1.0,
          "L-BFGS: Wolfe constants need 0 < c1 < c2 < 1");
    const size_t un = size_t(n), h = size_t(opt_.history);
    for (auto* v : {&x_, &g_, &d_, &x_new_, &g_new_, &g_lo_}) v->assign(un, 0.0);
    alpha_.assign(h, 0.0);
    rho_.assign(h, 0.0);
    s_.assign(h * un, 0.0);
    y_.assign(h * un, 0.0);
}

void Lbfgs::init(const double* x0, const ObjectiveFn& f) {
    std::copy(x0, x0 + n_, x_.begin());
    f_ = f(x_.data(), g_.data());
    evaluations_ = 1;
    iteration_ = 0;
    stored_ = head_ = 0;
    status_ = max_abs(g_) <= opt_.grad_tol ? LbfgsStatus::converged_grad : LbfgsStatus::running;
}

LbfgsStatus Lbfgs::iterate(const ObjectiveFn& f) {
    if (status_ != LbfgsStatus::running) return status_;
    const int64_t n = n_, h = opt_.history;
    double* d = d_.data();

    // Direction d = −H g by the two-loop recursion, newest pair first, then oldest first.
    for (int64_t i = 0; i < n; ++i) d[i] = -g_[i];
    if (stored_ > 0) {
        for (int64_t k = stored_ - 1; k >= 0; --k) {
            const int64_t j = (head_ + k) % h;
            const double* sj = &s_[size_t(j * n)];
            const double* yj = &y_[size_t(j * n)];
            alpha_[j] = rho_[j] * dot(sj, d, n);
            for (int64_t i = 0; i < n; ++i) d[i] -= alpha_[j] * yj[i];
        }
        const int64_t newest = (head_ + stored_ - 1) % h;
        const double* yn = &y_[size_t(newest * n)];
        const double gamma = 1.0 / (rho_[newest] * dot(yn, yn, n));  // H0 = sᵀy / yᵀy
        for (int64_t i = 0; i < n; ++i) d[i] *= gamma;
        for (int64_t k = 0; k < stored_; ++k) {
            const int64_t j = (head_ + k) % h;
            const double* sj = &s_[size_t(j * n)];
            const double* yj = &y_[size_t(j * n)];
            const double beta = rho_[j] * dot(yj, d, n);
            for (int64_t i = 0; i < n; ++i) d[i] += (alpha_[j] - beta) * sj[i];
        }
    }
    double dg0 = dot(g_.data(), d, n);
    if (!(dg0 < 0.0) && stored_ > 0) {  // not a descent direction: drop the history
        stored_ = head_ = 0;
        for (int64_t i = 0; i < n; ++i) d[i] = -g_[i];
        dg0 = dot(g_.data(), d, n);
    }
    if (!(dg0 < 0.0)) {  // g is zero or not finite
        status_ = dg0 == 0.0 ? LbfgsStatus::converged_grad : LbfgsStatus::line_search_failed;
        return status_;
    }
    double a = 1.0;
    if (stored_ == 0) {
        double g1 = 0;
        for (double v : g_) g1 += std::abs(v);
        a = std::min(1.0, 1.0 / g1);
    }

    // Strong-Wolfe line search on φ(α) = f(x + α d) (Nocedal & Wright alg. 3.5/3.6).
    // [lo, hi] brackets an acceptable step once `bracketed`; lo is the lowest point satisfying
    // sufficient decrease so far (α = 0 at first), with its gradient in g_lo_ when lo > 0.
    const double f0 = f_;
    auto eval = [&](double alpha, double& dphi) {
        for (int64_t i = 0; i < n; ++i) x_new_[i] = x_[i] + alpha * d[i];
        ++evaluations_;
        const double fa = f(x_new_.data(), g_new_.data());
        dphi = dot(g_new_.data(), d, n);
        return fa;
    };
    auto sufficient = [&](double alpha, double fa) { return fa <= f0 + opt_.c1 * alpha * dg0; };  // false on NaN
    double lo = 0, f_lo = f0, dg_lo = dg0, hi = 0, f_hi = 0, dg_hi = 0;
    double prev = 0, f_prev = f0, dg_prev = dg0;  // previous lo, for extrapolation
    bool bracketed = false, found = false;
    double f_new = f0;
    for (int evals = 1;; ++evals) {
        double dg;
        const double fa = eval(a, dg);
        if (!sufficient(a, fa) || fa >= f_lo) {
            hi = a, f_hi = fa, dg_hi = dg;
            bracketed = true;
        } else if (std::abs(dg) <= -opt_.c2 * dg0) {
            found = true;
            f_new = fa;
            break;
        } else {
            if (bracketed ? dg * (hi - lo) >= 0 : dg >= 0) {
                hi = lo, f_hi = f_lo, dg_hi = dg_lo;
                bracketed = true;
            }
            prev = lo, f_prev = f_lo, dg_prev = dg_lo;
            lo = a, f_lo = fa, dg_lo = dg;
            std::swap(g_lo_, g_new_);
        }
        if (evals >= opt_.max_line_search) break;
        if (bracketed) {
            const double w = std::abs(hi - lo), left = std::min(lo, hi), right = std::max(lo, hi);
            a = interpolate(lo, f_lo, dg_lo, hi, f_hi, dg_hi, left + 0.1 * w, right - 0.1 * w, 0.5 * (lo + hi));
            if (!(a > left && a < right)) break;  // interval below double resolution
        } else {
            const double w = lo - prev;
            a = interpolate(prev, f_prev, dg_prev, lo, f_lo, dg_lo, lo + w, lo + 10.0 * w, lo + 10.0 * w);
        }
    }
    if (!found) {
        if (lo == 0.0) {
            status_ = LbfgsStatus::line_search_failed;
            return status_;
        }
        for (int64_t i = 0; i < n; ++i) x_new_[i] = x_[i] + lo * d[i];
        std::swap(g_lo_, g_new_);
        f_new = f_lo;
    }

    // Accept x_new: store the pair (s, y) = (Δx, Δg) when sᵀy is safely positive.
    double sy = 0, ss = 0, yy = 0, dx_max = 0;
    for (int64_t i = 0; i < n; ++i) {
        const double si = x_new_[i] - x_[i], yi = g_new_[i] - g_[i];
        sy += si * yi, ss += si * si, yy += yi * yi;
        dx_max = std::max(dx_max, std::abs(si));
    }
    if (found && sy > 1e-10 * std::sqrt(ss * yy)) {
        int64_t j;
        if (stored_ < h) {
            j = (head_ + stored_) % h;
            ++stored_;
        } else {
            j = head_;
            head_ = (head_ + 1) % h;
        }
        for (int64_t i = 0; i < n; ++i) {
            s_[size_t(j * n + i)] = x_new_[i] - x_[i];
            y_[size_t(j * n + i)] = g_new_[i] - g_[i];
        }
        rho_[j] = 1.0 / sy;
    }
    const double df = f_new - f_;
    std::copy(x_new_.begin(), x_new_.end(), x_.begin());
    std::copy(g_new_.begin(), g_new_.end(), g_.begin());
    f_ = f_new;
    ++iteration_;
    if (max_abs(g_) <= opt_.grad_tol) status_ = LbfgsStatus::converged_grad;
    else if (!found) status_ = LbfgsStatus::line_search_failed;
    else if (std::abs(df) < opt_.progress_tol || dx_max < opt_.progress_tol) status_ = LbfgsStatus::converged_progress;
    return status_;
}

std::map<std::string, std::vector<double>> Lbfgs::save_buffers() const {
    return {{"x", x_}, {"g", g_}, {"f", {f_}}, {"s", s_}, {"y", y_}, {"rho", rho_}};
}

std::map<std::string, int64_t> Lbfgs::save_scalars() const {
    return {{"stored", stored_},         {"head", head_},
            {"iteration", iteration_},   {"evaluations", evaluations_},
            {"status", int64_t(status_)}};
}

void Lbfgs::restore(const std::map<std::string, std::vector<double>>& buffers,
                    const std::map<std::string, int64_t>& scalars) {
    const size_t un = size_t(n_), h = size_t(opt_.history);
    auto buffer = [&](const std::string& name, size_t expected) -> const std::vector<double>& {
        auto it = buffers.find(name);
        check(it != buffers.end(), "checkpoint L-BFGS state '" + name + "' is missing; the checkpoint is damaged");
        check(it->second.size() == expected,
              "checkpoint L-BFGS state '" + name + "' has " + std::to_string(it->second.size()) +
                  " values, expected " + std::to_string(expected) + "; the checkpoint belongs to a different model");
        return it->second;
    };
    auto scalar = [&](const std::string& name, int64_t lo, int64_t hi) {
        auto it = scalars.find(name);
        check(it != scalars.end(), "checkpoint L-BFGS scalar '" + name + "' is missing; the checkpoint is damaged");
        check(it->second >= lo && it->second <= hi,
              "checkpoint L-BFGS scalar '" + name + "' is " + std::to_string(it->second) + ", outside [" +
                  std::to_string(lo) + ", " + std::to_string(hi) + "]; the checkpoint is damaged");
        return it->second;
    };
    // Validate everything before changing any state.
    const auto& x = buffer("x", un);
    const auto& g = buffer("g", un);
    const auto& f = buffer("f", 1);
    const auto& s = buffer("s", h * un);
    const auto& y = buffer("y", h * un);
    const auto& rho = buffer("rho", h);
    const int64_t big = std::numeric_limits<int64_t>::max();
    const int64_t stored = scalar("stored", 0, opt_.history), head = scalar("head", 0, opt_.history - 1);
    const int64_t iteration = scalar("iteration", 0, big), evaluations = scalar("evaluations", 0, big);
    const int64_t status = scalar("status", 0, int64_t(LbfgsStatus::line_search_failed));
    std::copy(x.begin(), x.end(), x_.begin());
    std::copy(g.begin(), g.end(), g_.begin());
    f_ = f[0];
    std::copy(s.begin(), s.end(), s_.begin());
    std::copy(y.begin(), y.end(), y_.begin());
    std::copy(rho.begin(), rho.end(), rho_.begin());
    stored_ = stored, head_ = head, iteration_ = iteration, evaluations_ = evaluations;
    status_ = LbfgsStatus(status);
}

}  // namespace sae
