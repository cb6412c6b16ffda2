// Optimisers over one flat parameter buffer, and learning-rate schedules.
// An optimiser knows only the parameter vector, the gradient and its own explicit state; the
// step count is global (one per call), never per tensor. The objective lives elsewhere.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace sae {

// --- learning-rate schedules --------------------------------------------------------------
enum class ScheduleKind { constant, step, cosine, linear };
struct LrSchedule {
    ScheduleKind kind = ScheduleKind::constant;
    double base_lr = 1e-3;
    int64_t warmup_steps = 0;   // linear warm-up from base_lr/warmup_steps to base_lr, any kind
    int64_t total_steps = 1;    // cosine: decays to min_lr at total_steps
    int64_t step_size = 1000;   // step: multiply by gamma every step_size steps (after warm-up)
    double gamma = 0.1;
    double min_lr = 0.0;
    // Learning rate for 0-based step `step`. During warm-up: base_lr·(step+1)/warmup_steps.
    // After it, with s = step − warmup_steps, T = max(1, total_steps − warmup_steps):
    //   constant: base_lr; step: base_lr·gamma^floor(s/step_size);
    //   cosine: min_lr + ½(base_lr − min_lr)(1 + cos(π·min(s,T)/T));
    //   linear: base_lr + (min_lr − base_lr)·min(s,T)/T (warm-up then linear decay).
    double at(int64_t step) const;
};
ScheduleKind schedule_parse(const std::string& name);  // throws listing valid names
std::string schedule_name(ScheduleKind k);

// --- first-order optimisers -----------------------------------------------------------------
struct OptimizerHyper {
    double momentum = 0.9;      // sgd (heavy ball: v = μv + g; p −= lr·v)
    double beta1 = 0.9;         // adam
    double beta2 = 0.999;       // adam
    double eps = 1e-8;          // adam, rmsprop
    double rms_decay = 0.99;    // rmsprop: s = ρs + (1−ρ)g²; p −= lr·g/(√s + eps)
};

class Optimizer {
public:
    virtual ~Optimizer() = default;
    virtual std::string name() const = 0;
    // One update of params [n] from grad [n] with learning rate lr; increments step().
    virtual void update(float* params, const float* grad, double lr) = 0;
    int64_t step() const { return t_; }
    void set_step(int64_t t) { t_ = t; }
    // Named state buffers, each [n] in the parameter layout ("m", "v", ...), for checkpoints.
    virtual std::vector<std::pair<std::string, std::vector<float>*>> state() = 0;

protected:
    int64_t t_ = 0;
};

// name ∈ {sgd, adam, rmsprop}; n = number of parameters. Throws listing valid names.
// Adam: m = β1 m + (1−β1) g; v = β2 v + (1−β2) g²; p −= lr·(m/(1−β1^t))/(√(v/(1−β2^t)) + eps),
// with t the step count after increment.
std::unique_ptr<Optimizer> optimizer_create(const std::string& name, int64_t n,
                                            const OptimizerHyper& hyper);

// --- L-BFGS (full batch) ----------------------------------------------------------------------
// Works in double. f(x, g) returns the objective at x [n] and writes its gradient into g [n].
using ObjectiveFn = std::function<double(const double* x, double* g)>;

struct LbfgsOptions {
    int history = 10;            // correction pairs kept (scipy's and mlpack's default)
    double grad_tol = 1e-5;      // stop when max|g| ≤ grad_tol
    double progress_tol = 1e-9;  // stop when |Δf| or max|Δx| falls below this
    double c1 = 1e-4, c2 = 0.9;  // strong Wolfe constants
    int max_line_search = 25;
};

enum class LbfgsStatus { running, converged_grad, converged_progress, line_search_failed };
std::string lbfgs_status_name(LbfgsStatus s);

// Step-wise, so the caller owns the loop (progress bar, metrics, checkpoints):
//   Lbfgs opt(n, options); opt.init(x0, f); while (opt.status()==running && it<max) opt.iterate(f);
class Lbfgs {
public:
    Lbfgs(int64_t n, const LbfgsOptions& options);
    void init(const double* x0, const ObjectiveFn& f);  // evaluates f at x0
    LbfgsStatus iterate(const ObjectiveFn& f);          // one direction + strong-Wolfe search
    const std::vector<double>& x() const { return x_; }
    const std::vector<double>& g() const { return g_; }
    double f() const { return f_; }
    int64_t iteration() const { return iteration_; }
    int64_t evaluations() const { return evaluations_; }
    LbfgsStatus status() const { return status_; }

    // Complete state for checkpoints: double buffers by name, and integer scalars by name.
    // restore() validates sizes and throws sae::Error on a mismatch.
    std::map<std::string, std::vector<double>> save_buffers() const;
    std::map<std::string, int64_t> save_scalars() const;
    void restore(const std::map<std::string, std::vector<double>>& buffers,
                 const std::map<std::string, int64_t>& scalars);

private:
    int64_t n_;
    LbfgsOptions opt_;
    std::vector<double> x_, g_, d_, x_new_, g_new_, g_lo_, alpha_;  // [n] each; alpha_ [history]
    std::vector<double> s_, y_, rho_;  // history ring buffers: s_, y_ are [history, n]
    int64_t stored_ = 0, head_ = 0;    // number of stored pairs, index of the oldest
    double f_ = 0;
    int64_t iteration_ = 0, evaluations_ = 0;
    LbfgsStatus status_ = LbfgsStatus::running;
};

}  // namespace sae
