#include "sae/train.hpp"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "sae/backend.hpp"
#include "sae/error.hpp"
#include "sae/eval.hpp"
#include "sae/io.hpp"
#include "sae/metrics.hpp"
#include "sae/model_file.hpp"
#include "sae/optim.hpp"

namespace sae {
namespace {

using Clock = std::chrono::steady_clock;
std::atomic<bool> g_interrupted{false};
extern "C" void on_interrupt(int) { g_interrupted = true; }

std::string fmt_duration(double s) {
    if (!std::isfinite(s) || s < 0) return "--:--";
    const int64_t t = int64_t(s + 0.5);
    char buf[32];
    if (t >= 3600) std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", (long long)(t / 3600), (long long)(t / 60 % 60), (long long)(t % 60));
    else std::snprintf(buf, sizeof buf, "%lld:%02lld", (long long)(t / 60), (long long)(t % 60));
    return buf;
}

// A bar redrawn in place on a terminal; plain lines otherwise (logs, CI, pipes).
class Progress {
public:
    Progress(int64_t total) : total_(total), tty_(::isatty(STDERR_FILENO)), start_(Clock::now()) {}
    void update(int64_t step, int64_t first_step, const CostTerms& J, double samples_per_s, bool log_line) {
        const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
        const double eta = step > first_step ? elapsed / double(step - first_step) * double(total_ - step) : NAN;
        char text[256];
        std::snprintf(text, sizeof text, "step %lld/%lld  J=%.5g (rec %.4g, decay %.3g, sparsity %.4g)  %.0f samples/s  ETA %s",
                      (long long)step, (long long)total_, J.total(), J.rec, J.weight_decay, J.sparsity,
                      samples_per_s, fmt_duration(eta).c_str());
        if (tty_) {
            const int width = 24;
            const int filled = total_ > 0 ? int(double(width) * double(step) / double(total_)) : width;
            std::fprintf(stderr, "\r\033[K[%s%s] %s", std::string(size_t(filled), '#').c_str(),
                         std::string(size_t(width - filled), ' ').c_str(), text);
            std::fflush(stderr);
        } else if (log_line) {
            std::fprintf(stderr, "%s\n", text);
        }
    }
    void finish() {
        if (tty_) std::fprintf(stderr, "\n");
    }

private:
    int64_t total_;
    bool tty_;
    Clock::time_point start_;
};

struct Window {  // metrics accumulated between two log lines
    Stats stats;
    CostTerms J_sum;
    int64_t steps = 0;
    Clock::time_point start = Clock::now();
    void reset(int64_t d_in, int64_t d_sae) {
        stats.reset(d_in, d_sae);
        J_sum = {};
        steps = 0;
        start = Clock::now();
    }
};

std::string metrics_line(int64_t step, double epoch, const CostTerms& J, const Stats& st, double lr,
                         double samples_per_s) {
    const auto rho = st.rho_hat();
    double mean = 0, lo = rho.empty() ? 0 : rho[0], hi = lo;
    for (double r : rho) { mean += r; lo = std::min(lo, r); hi = std::max(hi, r); }
    if (!rho.empty()) mean /= double(rho.size());
    nlohmann::ordered_json j;
    j["step"] = step;
    j["epoch"] = epoch;
    j["J_total"] = J.total();
    j["J_rec"] = J.rec;
    j["J_weight_decay"] = J.weight_decay;
    j["J_sparsity"] = J.sparsity;
    j["rho_hat_mean"] = mean;
    j["rho_hat_min"] = lo;
    j["rho_hat_max"] = hi;
    j["l0"] = st.l0();
    j["dead_fraction"] = st.dead_fraction();
    j["fvu"] = st.fvu();
    j["lr"] = lr;
    j["samples_per_s"] = samples_per_s;
    return j.dump() + "\n";
}

// Keeps the metrics lines with step ≤ last_step (a killed run may have logged past its last
// checkpoint, or died mid-line), rewriting the file atomically.
void metrics_truncate(const std::string& path, int64_t last_step) {
    if (!std::filesystem::exists(path)) return;
    std::ifstream in(path);
    std::string line, kept;
    while (std::getline(in, line)) {
        try {
            auto j = nlohmann::json::parse(line);
            if (j.contains("step") && j["step"].get<int64_t>() <= last_step) kept += line + "\n";
        } catch (const std::exception&) {
            // a torn last line: dropped
        }
    }
    write_file_atomic(path, kept);
}

void check_finite_step(int64_t step, const CostTerms& J, const float* grad, int64_t n,
                       const std::string& out_dir) {
    const char* bad = !std::isfinite(J.rec)            ? "J_rec"
                      : !std::isfinite(J.weight_decay) ? "J_weight_decay"
                      : !std::isfinite(J.sparsity)     ? "J_sparsity"
                                                       : nullptr;
    if (!bad)
        for (int64_t i = 0; i < n; ++i)
            if (!std::isfinite(grad[i])) { bad = "the gradient"; break; }
    if (bad)
        throw Error("step " + std::to_string(step) + ": " + bad + " is not finite; training stopped. The last good checkpoint is " +
                    out_dir + "/checkpoint.safetensors; lower lr or check the data");
}

// Epoch e's sample order: a Fisher–Yates shuffle driven by (seed, e) alone.
void epoch_order(std::vector<int64_t>& perm, uint64_t seed, int64_t epoch) {
    for (size_t i = 0; i < perm.size(); ++i) perm[i] = int64_t(i);
    Rng rng(seed * 0x9e3779b97f4a7c15ULL + uint64_t(epoch) + 1);
    for (size_t i = perm.size(); i > 1; --i) std::swap(perm[i - 1], perm[rng.below(i)]);
}

struct Checkpoint {
    std::map<std::string, std::string> meta;
    SafeTensors tensors;
};

Checkpoint checkpoint_load(const std::string& path, const Config& cfg, int64_t n_params) {
    check(std::filesystem::exists(path), path + ": no checkpoint to resume from; run without --resume to start afresh");
    Checkpoint c;
    c.tensors = safetensors_read(path);
    c.meta = c.tensors.metadata;
    check(c.meta.count("format") && c.meta["format"] == "sae-checkpoint",
          path + ": not an sae checkpoint (metadata 'format' missing)");
    check(c.meta.count("config"), path + ": checkpoint has no settings; it is damaged");
    const Config saved = config_from_json(c.meta["config"], path);
    const auto a = nlohmann::json::parse(config_to_json(saved)), b = nlohmann::json::parse(config_to_json(cfg));
    for (auto it = a.begin(); it != a.end(); ++it) {
        if (config_key_may_change_on_resume(it.key())) continue;
        check(b[it.key()] == it.value(), path + ": the checkpoint was made with " + it.key() + " = " + it.value().dump() +
                                             " but this run has " + b[it.key()].dump() +
                                             "; resume with the same settings or train into a new directory");
    }
    auto p = c.tensors.tensors.find("params");
    check(p != c.tensors.tensors.end() && p->second.numel() == n_params,
          path + ": checkpoint parameters do not match the model's size; it belongs to another model");
    return c;
}

int64_t meta_int(const Checkpoint& c, const std::string& key, const std::string& path) {
    auto it = c.meta.find(key);
    check(it != c.meta.end(), path + ": checkpoint lacks '" + key + "'; it is damaged");
    try {
        size_t pos = 0;
        const int64_t v = std::stoll(it->second, &pos);
        check(pos == it->second.size(), "");
        return v;
    } catch (const std::exception&) {
        throw Error(path + ": checkpoint field '" + key + "' is not an integer; it is damaged");
    }
}

}  // namespace

bool config_key_may_change_on_resume(const std::string& key) {
    return key == "epochs" || key == "max_iterations" || key == "log_every" ||
           key == "checkpoint_every" || key == "threads";
}

TrainSummary train_run(const Config& cfg, const std::string& out_dir, bool resume) {
    config_validate(cfg);
    set_num_threads(int(cfg.threads));
    ensure_writable_dir(out_dir);  // before any long work
    auto be = backend_create(cfg.backend);

    const Matrix<float> X = dataset_load(cfg.data, cfg.normalize, cfg.max_samples);
    const ModelSpec spec = config_model_spec(cfg, X.cols);
    const CostSpec cost = config_cost_spec(cfg);
    validate(spec, cost);
    const ParamLayout layout = model_layout(spec);
    const int64_t n = layout.total;
    const double threshold = config_active_threshold(cfg);
    const std::string ckpt_path = out_dir + "/checkpoint.safetensors";
    const std::string metrics_path = out_dir + "/metrics.jsonl";
    const std::string cfg_json = config_to_json(cfg);

    std::vector<float> params(static_cast<size_t>(n)), grad(static_cast<size_t>(n));
    Checkpoint ckpt;
    if (resume) {
        ckpt = checkpoint_load(ckpt_path, cfg, n);
        const auto& p = ckpt.tensors.tensors.at("params").f32;
        std::copy(p.begin(), p.end(), params.begin());
    } else {
        Rng rng(uint64_t(cfg.seed));
        model_init(spec, layout, params.data(), rng);
        write_file_atomic(metrics_path, "");
    }
    write_file_atomic(out_dir + "/cfg.json", model_cfg_json(cfg, spec.d_in));

    std::signal(SIGINT, on_interrupt);
    std::signal(SIGTERM, on_interrupt);
    g_interrupted = false;
    struct RestoreSignals {
        ~RestoreSignals() { std::signal(SIGINT, SIG_DFL); std::signal(SIGTERM, SIG_DFL); }
    } restore_signals;

    std::FILE* metrics = nullptr;
    TrainSummary summary;
    const auto t0 = Clock::now();
    Window win;
    win.reset(spec.d_in, spec.d_sae);

    auto open_metrics = [&](int64_t last_step) {
        if (resume) metrics_truncate(metrics_path, last_step);
        metrics = std::fopen(metrics_path.c_str(), "a");
        check(metrics != nullptr, metrics_path + ": cannot open for appending (" + std::strerror(errno) + ")");
    };
    auto write_metrics = [&](const std::string& line) {
        check(std::fputs(line.c_str(), metrics) >= 0 && std::fflush(metrics) == 0,
              metrics_path + ": write failed (disk full?)");
    };
    struct CloseFile {
        std::FILE*& f;
        ~CloseFile() { if (f) std::fclose(f); }
    } close_metrics{metrics};

    if (cfg.optimizer == "lbfgs") {
        // ---- full batch L-BFGS ----
        Workspace<float> ws;
        ws.reserve(spec, X.rows);
        LbfgsOptions lopt;
        Lbfgs opt(n, lopt);
        auto objective = [&](const double* x, double* g) {
            for (int64_t i = 0; i < n; ++i) params[size_t(i)] = float(x[i]);
            const CostTerms J = model_cost<float>(*be, spec, cost, layout, params.data(), X.data.data(), X.rows, grad.data(), ws);
            for (int64_t i = 0; i < n; ++i) g[i] = grad[size_t(i)];
            return J.total();
        };
        int64_t first = 0;
        if (resume) {
            std::map<std::string, std::vector<double>> bufs;
            std::map<std::string, int64_t> scalars;
            for (auto& [name, t] : ckpt.tensors.tensors)
                if (name.rfind("lbfgs.", 0) == 0) bufs[name.substr(6)] = t.f64;
            for (auto& [key, v] : ckpt.meta)
                if (key.rfind("lbfgs.", 0) == 0) scalars[key.substr(6)] = meta_int(ckpt, key, ckpt_path);
            opt.restore(bufs, scalars);
            first = opt.iteration();
        } else {
            std::vector<double> x0(params.begin(), params.end());
            opt.init(x0.data(), objective);
        }
        open_metrics(first);
        auto save_ckpt = [&]() {
            for (int64_t i = 0; i < n; ++i) params[size_t(i)] = float(opt.x()[size_t(i)]);
            const auto bufs = opt.save_buffers();
            std::vector<TensorOut> t = {{"params", {n}, DType::f32, params.data()}};
            for (auto& [name, b] : bufs) t.push_back({"lbfgs." + name, {int64_t(b.size())}, DType::f64, b.data()});
            std::map<std::string, std::string> meta = {{"format", "sae-checkpoint"}, {"config", cfg_json},
                                                       {"step", std::to_string(opt.iteration())}};
            for (auto& [k, v] : opt.save_scalars()) meta["lbfgs." + k] = std::to_string(v);
            safetensors_write(ckpt_path, t, meta);
        };
        Progress progress(cfg.max_iterations);
        const int64_t evals0 = opt.evaluations();
        // Metrics at the current point: one extra forward pass, only on logging steps.
        auto log_now = [&](int64_t it, bool log_line) {
            for (int64_t i = 0; i < n; ++i) params[size_t(i)] = float(opt.x()[size_t(i)]);
            const CostTerms J = model_cost<float>(*be, spec, cost, layout, params.data(), X.data.data(), X.rows, nullptr, ws);
            win.stats.reset(spec.d_in, spec.d_sae);
            win.stats.add(X.data.data(), ws.Xhat.data.data(), ws.H.data.data(), X.rows, threshold);
            const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
            const double sps = secs > 0 ? double((opt.evaluations() - evals0) * X.rows) / secs : 0;
            if (log_line) write_metrics(metrics_line(it, double(it), J, win.stats, 0.0, sps));
            progress.update(it, first, J, sps, log_line);
            summary.J = J;
            summary.mean_rho_hat = 0;
            for (double r : win.stats.rho_hat()) summary.mean_rho_hat += r / double(spec.d_sae);
        };
        if (!resume) log_now(0, true);
        while (opt.iteration() < cfg.max_iterations && opt.status() == LbfgsStatus::running) {
            opt.iterate(objective);
            const int64_t it = opt.iteration();
            if (!std::isfinite(opt.f()))
                throw Error("iteration " + std::to_string(it) + ": J_total is not finite; training stopped. The last good checkpoint is " + ckpt_path);
            const bool last = it >= cfg.max_iterations || opt.status() != LbfgsStatus::running || g_interrupted;
            if (it % cfg.log_every == 0 || last) log_now(it, true);
            if (it % cfg.checkpoint_every == 0 || last) save_ckpt();
            if (g_interrupted) {
                progress.finish();
                throw Error("interrupted at iteration " + std::to_string(it) + "; checkpoint saved, continue with --resume");
            }
        }
        progress.finish();
        for (int64_t i = 0; i < n; ++i) params[size_t(i)] = float(opt.x()[size_t(i)]);
        summary.steps = opt.iteration();
        summary.samples = (opt.evaluations() - evals0) * X.rows;
        summary.stop_reason = opt.status() == LbfgsStatus::running ? "max_iterations" : lbfgs_status_name(opt.status());
    } else {
        // ---- minibatch optimisers ----
        const int64_t B = std::min(cfg.batch_size, X.rows);
        const int64_t per_epoch = (X.rows + B - 1) / B;
        const int64_t total = per_epoch * cfg.epochs;
        auto opt = optimizer_create(cfg.optimizer, n, config_optimizer_hyper(cfg));
        LrSchedule sched;
        sched.kind = schedule_parse(cfg.lr_schedule);
        sched.base_lr = cfg.lr;
        sched.warmup_steps = cfg.warmup_steps;
        sched.total_steps = total;
        sched.step_size = cfg.lr_step_size;
        sched.gamma = cfg.lr_gamma;
        sched.min_lr = cfg.min_lr;

        int64_t step = 0;
        if (resume) {
            step = meta_int(ckpt, "step", ckpt_path);
            opt->set_step(meta_int(ckpt, "optimizer_step", ckpt_path));
            for (auto& [name, buf] : opt->state()) {
                auto it = ckpt.tensors.tensors.find("opt." + name);
                check(it != ckpt.tensors.tensors.end() && it->second.numel() == n,
                      ckpt_path + ": optimiser state '" + name + "' missing or of the wrong size; the checkpoint belongs to another optimiser");
                std::copy(it->second.f32.begin(), it->second.f32.end(), buf->begin());
            }
        }
        open_metrics(step);
        auto save_ckpt = [&]() {
            std::vector<TensorOut> t = {{"params", {n}, DType::f32, params.data()}};
            for (auto& [name, buf] : opt->state()) t.push_back({"opt." + name, {n}, DType::f32, buf->data()});
            safetensors_write(ckpt_path, t,
                              {{"format", "sae-checkpoint"}, {"config", cfg_json}, {"step", std::to_string(step)},
                               {"optimizer_step", std::to_string(opt->step())}});
        };

        Workspace<float> ws;
        ws.reserve(spec, B);
        Matrix<float> Xb(B, X.cols);
        std::vector<int64_t> perm(size_t(X.rows));
        int64_t perm_epoch = -1;
        Progress progress(total);
        const int64_t first = step;
        double lr = sched.at(step);
        while (step < total) {
            const int64_t epoch = step / per_epoch, b = step % per_epoch;
            if (epoch != perm_epoch) {
                epoch_order(perm, uint64_t(cfg.seed), epoch);
                perm_epoch = epoch;
            }
            const int64_t m = std::min(B, X.rows - b * B);
            for (int64_t i = 0; i < m; ++i)
                std::memcpy(Xb.row(i), X.row(perm[size_t(b * B + i)]), sizeof(float) * size_t(X.cols));
            const CostTerms J = model_cost<float>(*be, spec, cost, layout, params.data(), Xb.data.data(), m, grad.data(), ws);
            check_finite_step(step, J, grad.data(), n, out_dir);
            lr = sched.at(step);
            opt->update(params.data(), grad.data(), lr);
            ++step;
            win.stats.add(Xb.data.data(), ws.Xhat.data.data(), ws.H.data.data(), m, threshold);
            win.J_sum.rec += J.rec;
            win.J_sum.weight_decay += J.weight_decay;
            win.J_sum.sparsity += J.sparsity;
            ++win.steps;
            summary.samples += m;
            const bool last = step == total || g_interrupted;
            const bool log_line = step % cfg.log_every == 0 || last;
            if (log_line || step % 8 == 0) {
                const CostTerms Jm{win.J_sum.rec / double(win.steps), win.J_sum.weight_decay / double(win.steps),
                                   win.J_sum.sparsity / double(win.steps)};
                const double secs = std::chrono::duration<double>(Clock::now() - win.start).count();
                const double sps = secs > 0 ? double(win.stats.n) / secs : 0;
                progress.update(step, first, Jm, sps, log_line);
                if (log_line) {
                    write_metrics(metrics_line(step, double(step) / double(per_epoch), Jm, win.stats, lr, sps));
                    summary.J = Jm;
                    summary.mean_rho_hat = 0;
                    for (double r : win.stats.rho_hat()) summary.mean_rho_hat += r / double(spec.d_sae);
                    win.reset(spec.d_in, spec.d_sae);
                }
            }
            if (step % cfg.checkpoint_every == 0 || last) save_ckpt();
            if (g_interrupted) {
                progress.finish();
                throw Error("interrupted at step " + std::to_string(step) + "; checkpoint saved, continue with --resume");
            }
        }
        progress.finish();
        summary.steps = step;
        summary.stop_reason = "epochs";
    }

    model_save(out_dir, cfg, spec, layout, params.data());
    summary.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    return summary;
}

}  // namespace sae
