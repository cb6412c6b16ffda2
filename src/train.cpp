#include "sae/train.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "sae/backend.hpp"
#include "sae/error.hpp"
#include "sae/eval.hpp"
#include "sae/io.hpp"
#include "sae/metrics.hpp"
#include "sae/model_file.hpp"
#include "sae/modern.hpp"
#include "sae/objective.hpp"
#include "sae/optim.hpp"
#include "sae/stream.hpp"

namespace sae {
namespace {

using Clock = std::chrono::steady_clock;
std::atomic<bool> g_interrupted{false};
extern "C" void on_interrupt(int) { g_interrupted = true; }

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string fmt_duration(double s) {
    if (!std::isfinite(s) || s < 0) return "--:--";
    const long long t = (long long)(s + 0.5);
    char buf[32];
    if (t >= 3600) std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", t / 3600, t / 60 % 60, t % 60);
    else std::snprintf(buf, sizeof buf, "%lld:%02lld", t / 60, t % 60);
    return buf;
}

// A bar redrawn in place on a terminal; plain lines otherwise (logs, CI, pipes).
class Progress {
public:
    explicit Progress(int64_t total) : total_(total), tty_(::isatty(STDERR_FILENO)), start_(Clock::now()) {}
    void update(int64_t step, int64_t first_step, const CostTerms& J, double samples_per_s, bool log_line) {
        const double elapsed = seconds_since(start_);
        const double eta = step > first_step ? elapsed / double(step - first_step) * double(total_ - step) : NAN;
        char text[256];
        std::snprintf(text, sizeof text, "step %lld/%lld  J=%.5g (rec %.4g, decay %.3g, sparsity %.4g%s)  %.0f samples/s  ETA %s",
                      (long long)step, (long long)total_, J.total(), J.rec, J.weight_decay, J.sparsity,
                      J.aux != 0 ? (", aux " + std::to_string(J.aux)).c_str() : "", samples_per_s,
                      fmt_duration(eta).c_str());
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

const char* nonfinite_term(const CostTerms& J, const float* grad, int64_t n) {
    if (!std::isfinite(J.rec)) return "J_rec";
    if (!std::isfinite(J.weight_decay)) return "J_weight_decay";
    if (!std::isfinite(J.sparsity)) return "J_sparsity";
    if (!std::isfinite(J.aux)) return "J_aux";
    if (!std::isfinite(J.denoise)) return "J_denoise";
    if (grad)
        for (int64_t i = 0; i < n; ++i)
            if (!std::isfinite(grad[i])) return "the gradient";
    return nullptr;
}

// Epoch e's sample order: a Fisher–Yates shuffle driven by (seed, e) alone.
void epoch_order(std::vector<int64_t>& perm, uint64_t seed, int64_t epoch) {
    for (size_t i = 0; i < perm.size(); ++i) perm[i] = int64_t(i);
    Rng rng(seed * 0x9e3779b97f4a7c15ULL + uint64_t(epoch) + 1);
    for (size_t i = perm.size(); i > 1; --i) std::swap(perm[i - 1], perm[rng.below(i)]);
}

// √d_in / mean ‖x‖ over (up to) the first 10,000 samples.
double expected_norm_scale(const Matrix<float>& X) {
    const int64_t n = std::min<int64_t>(X.rows, 10000);
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) {
        double s = 0;
        for (int64_t k = 0; k < X.cols; ++k) s += double(X(i, k)) * double(X(i, k));
        sum += std::sqrt(s);
    }
    check(sum > 0, "normalize_activations = \"expected_norm\": the data's first samples are all zero");
    return std::sqrt(double(X.cols)) / (sum / double(n));
}

struct Checkpoint {
    SafeTensors st;
    const std::string* path = nullptr;
    int64_t get_int(const std::string& key) const {
        auto it = st.metadata.find(key);
        check(it != st.metadata.end(), *path + ": checkpoint lacks '" + key + "'; it is damaged");
        try {
            size_t pos = 0;
            const int64_t v = std::stoll(it->second, &pos);
            if (pos == it->second.size()) return v;
        } catch (const std::exception&) {
        }
        throw Error(*path + ": checkpoint field '" + key + "' is not an integer; it is damaged");
    }
    double get_double(const std::string& key) const {
        auto it = st.metadata.find(key);
        check(it != st.metadata.end(), *path + ": checkpoint lacks '" + key + "'; it is damaged");
        try {
            size_t pos = 0;
            const double v = std::stod(it->second, &pos);
            if (pos == it->second.size()) return v;
        } catch (const std::exception&) {
        }
        throw Error(*path + ": checkpoint field '" + key + "' is not a number; it is damaged");
    }
    const TensorIn& tensor(const std::string& name, int64_t numel) const {
        auto it = st.tensors.find(name);
        check(it != st.tensors.end() && it->second.numel() == numel,
              *path + ": checkpoint tensor '" + name + "' is missing or of the wrong size; the checkpoint belongs to another model or optimiser");
        return it->second;
    }
};

Checkpoint checkpoint_load(const std::string& path, const Config& cfg) {
    check(std::filesystem::exists(path), path + ": no checkpoint to resume from; run without --resume to start afresh");
    Checkpoint c;
    c.st = safetensors_read(path);
    c.path = &path;
    auto fmt = c.st.metadata.find("format");
    check(fmt != c.st.metadata.end() && fmt->second == "sae-checkpoint",
          path + ": not an sae checkpoint (metadata 'format' missing)");
    auto conf = c.st.metadata.find("config");
    check(conf != c.st.metadata.end(), path + ": checkpoint has no settings; it is damaged");
    const Config saved = config_from_json(conf->second, path);
    const auto a = nlohmann::json::parse(config_to_json(saved)), b = nlohmann::json::parse(config_to_json(cfg));
    for (auto it = a.begin(); it != a.end(); ++it) {
        if (config_key_may_change_on_resume(it.key())) continue;
        check(b[it.key()] == it.value(), path + ": the checkpoint was made with " + it.key() + " = " + it.value().dump() +
                                             " but this run has " + b[it.key()].dump() +
                                             "; resume with the same settings or train into a new directory");
    }
    return c;
}

// Everything one training run carries between steps besides parameters and optimiser state.
struct RunState {
    int64_t step = 0;
    int64_t skipped = 0;                 // batches skipped for non-finite values
    int64_t resampled = 0;               // latents re-initialised (resample_dead, resample_duplicates)
    std::vector<int64_t> since_fired;    // [d_sae] samples since each latent last fired
    double input_scale = 1.0;
};

std::string metrics_line(int64_t step, double epoch, const CostTerms& J, const Stats& st, double lr,
                         double samples_per_s, const RunState& rs, int64_t dead_threshold) {
    const auto rho = st.rho_hat();
    double mean = 0, lo = rho.empty() ? 0 : rho[0], hi = lo;
    for (double r : rho) { mean += r; lo = std::min(lo, r); hi = std::max(hi, r); }
    if (!rho.empty()) mean /= double(rho.size());
    int64_t dead = 0;
    for (auto s : rs.since_fired) dead += s >= dead_threshold;
    nlohmann::ordered_json j;
    j["step"] = step;
    j["epoch"] = epoch;
    j["J_total"] = J.total();
    j["J_rec"] = J.rec;
    j["J_weight_decay"] = J.weight_decay;
    j["J_sparsity"] = J.sparsity;
    j["J_aux"] = J.aux;
    j["J_denoise"] = J.denoise;
    j["rho_hat_mean"] = mean;
    j["rho_hat_min"] = lo;
    j["rho_hat_max"] = hi;
    j["l0"] = st.l0();
    j["dead_fraction"] = st.dead_fraction();
    j["dead_fraction_threshold"] = rs.since_fired.empty() ? 0.0 : double(dead) / double(rs.since_fired.size());
    j["dense_fraction"] = st.dense_fraction();
    j["fvu"] = st.fvu();
    j["lr"] = lr;
    j["samples_per_s"] = samples_per_s;
    j["skipped_batches"] = rs.skipped;
    j["resampled_latents"] = rs.resampled;
    const auto hist = st.density_histogram();
    j["density_log10_hist"] = {{"edges", hist.edges}, {"counts", hist.counts}, {"never", hist.never}};
    return j.dump() + "\n";
}

// Re-initialises each latent j with redo[j] set (modern layouts: W_enc [d_in, d_sae], b_enc,
// W_dec [d_sae, d_in]) towards a sample the model reconstructs badly: samples of the batch
// X [m, d_in] are drawn with probability ∝ ‖x − x̂‖², W_dec[j] = x/‖x‖, W_enc[:, j] = 0.2 · (mean
// norm of the other encoder columns) · x/‖x‖, b_enc[j] = 0, and those entries of every
// optimiser moment are zeroed; its samples-since-fired count restarts. Returns the number of
// latents re-initialised.
int64_t resample_latents(const ParamLayout& L, float* params, Optimizer& opt, const float* X, const float* Xhat,
                         int64_t m, const std::vector<uint8_t>& redo, RunState& rs, Rng& rng) {
    const auto& we = L.get("W_enc");
    const int64_t d_in = we.shape[0], d_sae = we.shape[1];
    std::vector<double> cum(static_cast<size_t>(m));
    double total = 0;
    for (int64_t i = 0; i < m; ++i) {
        double e = 0;
        for (int64_t k = 0; k < d_in; ++k) e += double(Xhat[i * d_in + k] - X[i * d_in + k]) * (Xhat[i * d_in + k] - X[i * d_in + k]);
        total += e;
        cum[size_t(i)] = total;
    }
    float* W_enc = params + we.offset;
    float* b_enc = params + L.get("b_enc").offset;
    float* W_dec = params + L.get("W_dec").offset;
    double live_norm = 0;
    int64_t live = 0;
    for (int64_t j = 0; j < d_sae; ++j) {
        if (redo[size_t(j)]) continue;
        double s = 0;
        for (int64_t k = 0; k < d_in; ++k) s += double(W_enc[k * d_sae + j]) * W_enc[k * d_sae + j];
        live_norm += std::sqrt(s);
        ++live;
    }
    const double enc_scale = 0.2 * (live ? live_norm / double(live) : 1.0);
    auto moments = opt.state();
    int64_t count = 0;
    for (int64_t j = 0; j < d_sae; ++j) {
        if (!redo[size_t(j)] || total <= 0) continue;
        const double u = rng.uniform() * total;
        const int64_t i = std::min<int64_t>(m - 1, std::upper_bound(cum.begin(), cum.end(), u) - cum.begin());
        double norm = 0;
        for (int64_t k = 0; k < d_in; ++k) norm += double(X[i * d_in + k]) * X[i * d_in + k];
        norm = std::sqrt(norm);
        if (norm == 0) continue;
        for (int64_t k = 0; k < d_in; ++k) {
            const double v = double(X[i * d_in + k]) / norm;
            W_dec[j * d_in + k] = float(v);
            W_enc[k * d_sae + j] = float(enc_scale * v);
        }
        b_enc[j] = 0;
        for (auto& [name, buf] : moments) {
            float* b = buf->data();
            for (int64_t k = 0; k < d_in; ++k) {
                b[we.offset + k * d_sae + j] = 0;
                b[L.get("W_dec").offset + j * d_in + k] = 0;
            }
            b[L.get("b_enc").offset + j] = 0;
        }
        rs.since_fired[size_t(j)] = 0;
        ++count;
    }
    return count;
}

}  // namespace

bool config_key_may_change_on_resume(const std::string& key) {
    return key == "epochs" || key == "max_iterations" || key == "log_every" ||
           key == "checkpoint_every" || key == "threads";
}

TrainSummary train_run(const Config& settings, const std::string& out_dir, bool resume) {
    config_validate(settings);
    Config cfg = settings;
    cfg.normalize = config_normalize(cfg);  // auto resolved: cfg.json names what was applied
    set_num_threads(int(cfg.threads));
    ensure_writable_dir(out_dir);  // before any long work
    // A run killed mid-write leaves "<output>.tmp-<pid>" behind; sweep those of our own outputs.
    for (const auto& e : std::filesystem::directory_iterator(out_dir)) {
        const std::string name = e.path().filename().string();
        for (const char* out : {"model.safetensors", "cfg.json", "metrics.jsonl", "checkpoint.safetensors"})
            if (name.rfind(std::string(out) + ".tmp-", 0) == 0) std::filesystem::remove(e.path());
    }
    auto be = backend_create(cfg.backend);

    // The data: in memory, or streamed through a shuffle buffer (shuffle_buffer > 0).
    const bool streaming = cfg.shuffle_buffer > 0;
    check(!streaming || cfg.optimizer != "lbfgs",
          "shuffle_buffer > 0 streams minibatches, but optimizer = \"lbfgs\" needs the whole data set in memory; use adam, sgd or rmsprop");
    check(!streaming || cfg.normalize == "none",
          "shuffle_buffer > 0: streamed data cannot be normalised with normalize = \"" + cfg.normalize +
              "\" (it needs the whole set); use normalize = \"none\" (and normalize_activations if wanted)");
    check(!streaming || cfg.max_samples == 0, "shuffle_buffer > 0: max_samples is not supported when streaming; pick shards instead");
    std::unique_ptr<StreamSource> stream;
    Matrix<float> X;
    Normalizer norm;  // fitted on the training data, saved with the model
    if (streaming) {
        StreamOptions so;
        so.pattern = cfg.data;
        so.buffer_samples = cfg.shuffle_buffer;
        so.seed = uint64_t(cfg.seed);
        so.dtype_hint = cfg.data_dtype == "auto" ? "" : cfg.data_dtype;
        stream = std::make_unique<StreamSource>(so);
        // A sample of the data (its first samples in stream order) for initialisation and scaling.
        StreamSource head(so);
        X.resize(std::min<int64_t>(head.num_samples(), 10000), head.d_in());
        head.next_batch(X.data.data(), X.rows);
        check_finite(X, cfg.data);
    } else {
        X = dataset_load_fit(cfg.data, cfg.normalize, cfg.max_samples, &norm);
    }
    auto obj = objective_create(cfg, X.cols);
    const int64_t n = obj->layout().total, d_sae = obj->d_sae(), d_in = obj->d_in();
    const double threshold = config_active_threshold(cfg);
    const std::string ckpt_path = out_dir + "/checkpoint.safetensors";
    const std::string metrics_path = out_dir + "/metrics.jsonl";
    const std::string cfg_json = config_to_json(cfg);

    RunState rs;
    rs.since_fired.assign(size_t(d_sae), 0);
    rs.input_scale = cfg.normalize_activations == "expected_norm" ? expected_norm_scale(X) : 1.0;
    if (rs.input_scale != 1.0)
        for (auto& v : X.data) v = float(double(v) * rs.input_scale);

    std::vector<float> params(static_cast<size_t>(n)), grad(static_cast<size_t>(n));
    Checkpoint ckpt;
    if (resume) {
        ckpt = checkpoint_load(ckpt_path, cfg);
        const auto& p = ckpt.tensor("params", n).f32;
        std::copy(p.begin(), p.end(), params.begin());
        rs.step = ckpt.get_int("step");
        rs.skipped = ckpt.get_int("skipped_batches");
        rs.resampled = ckpt.get_int("resampled_latents");
        const auto& sf = ckpt.tensor("since_fired", d_sae).i64;
        check(int64_t(sf.size()) == d_sae, ckpt_path + ": 'since_fired' must be I64; the checkpoint is damaged");
        std::copy(sf.begin(), sf.end(), rs.since_fired.begin());
        std::map<std::string, double> extra;
        for (const auto& [key, value] : obj->extra_state()) extra[key] = ckpt.get_double("extra." + key);
        obj->set_extra_state(extra);
    } else {
        Rng rng(uint64_t(cfg.seed));
        Matrix<float> sample(std::min<int64_t>(X.rows, 4096), d_in);
        std::copy(X.data.begin(), X.data.begin() + sample.size(), sample.data.begin());
        obj->init(params.data(), rng, sample);
        write_file_atomic(metrics_path, "");
    }
    write_file_atomic(out_dir + "/cfg.json", model_cfg_json(cfg, *obj, rs.input_scale, norm));

    std::signal(SIGINT, on_interrupt);
    std::signal(SIGTERM, on_interrupt);
    g_interrupted = false;
    struct RestoreSignals {
        ~RestoreSignals() { std::signal(SIGINT, SIG_DFL); std::signal(SIGTERM, SIG_DFL); }
    } restore_signals;

    if (resume) metrics_truncate(metrics_path, rs.step);
    std::FILE* metrics = std::fopen(metrics_path.c_str(), "a");
    check(metrics != nullptr, metrics_path + ": cannot open for appending (" + std::strerror(errno) + ")");
    struct CloseFile {
        std::FILE* f;
        ~CloseFile() { std::fclose(f); }
    } close_metrics{metrics};
    auto write_metrics = [&](const std::string& line) {
        check(std::fputs(line.c_str(), metrics) >= 0 && std::fflush(metrics) == 0,
              metrics_path + ": write failed (disk full?)");
    };

    // Checkpoint = parameters + optimiser state (given as named buffers) + run state.
    auto save_checkpoint = [&](std::vector<TensorOut> opt_tensors, std::map<std::string, std::string> meta) {
        std::vector<TensorOut> t = {{"params", {n}, DType::f32, params.data()},
                                    {"since_fired", {d_sae}, DType::i64, rs.since_fired.data()}};
        for (auto& o : opt_tensors) t.push_back(std::move(o));
        meta["format"] = "sae-checkpoint";
        meta["config"] = cfg_json;
        meta["step"] = std::to_string(rs.step);
        meta["skipped_batches"] = std::to_string(rs.skipped);
        meta["resampled_latents"] = std::to_string(rs.resampled);
        char buf[64];
        std::snprintf(buf, sizeof buf, "%.17g", rs.input_scale);
        meta["input_scale"] = buf;
        for (const auto& [key, value] : obj->extra_state()) {
            std::snprintf(buf, sizeof buf, "%.17g", value);
            meta["extra." + key] = buf;
        }
        safetensors_write(ckpt_path, t, meta);
    };

    TrainSummary summary;
    const auto t0 = Clock::now();
    Stats win;
    win.reset(d_in, d_sae);
    obj->set_training(true);

    if (cfg.optimizer == "lbfgs") {
        // ---- full-batch L-BFGS ----
        obj->reserve(X.rows);
        LbfgsOptions lbfgs_options;
        lbfgs_options.history = int(cfg.lbfgs_history);
        Lbfgs opt(n, lbfgs_options);
        auto objective = [&](const double* x, double* g) {
            for (int64_t i = 0; i < n; ++i) params[size_t(i)] = float(x[i]);
            obj->set_step(0);  // denoising: one corruption for the whole run, a fixed function for L-BFGS
            const CostTerms J = obj->cost(*be, params.data(), X.data.data(), X.rows, grad.data());
            for (int64_t i = 0; i < n; ++i) g[i] = grad[size_t(i)];
            return J.total();
        };
        if (resume) {
            std::map<std::string, std::vector<double>> bufs;
            std::map<std::string, int64_t> scalars;
            for (auto& [name, t] : ckpt.st.tensors)
                if (name.rfind("lbfgs.", 0) == 0) bufs[name.substr(6)] = t.f64;
            for (auto& [key, v] : ckpt.st.metadata)
                if (key.rfind("lbfgs.", 0) == 0) scalars[key.substr(6)] = ckpt.get_int(key);
            opt.restore(bufs, scalars);
        } else {
            std::vector<double> x0(params.begin(), params.end());
            opt.init(x0.data(), objective);
        }
        const int64_t first = opt.iteration();
        auto save = [&]() {
            for (int64_t i = 0; i < n; ++i) params[size_t(i)] = float(opt.x()[size_t(i)]);
            rs.step = opt.iteration();
            const auto bufs = opt.save_buffers();
            std::vector<TensorOut> t;
            for (auto& [name, b] : bufs) t.push_back({"lbfgs." + name, {int64_t(b.size())}, DType::f64, b.data()});
            std::map<std::string, std::string> meta;
            for (auto& [k, v] : opt.save_scalars()) meta["lbfgs." + k] = std::to_string(v);
            save_checkpoint(std::move(t), std::move(meta));
        };
        Progress progress(cfg.max_iterations);
        const int64_t evals0 = opt.evaluations();
        // Metrics at the current point: one extra forward pass, only on logging steps.
        auto log_now = [&](int64_t it) {
            for (int64_t i = 0; i < n; ++i) params[size_t(i)] = float(opt.x()[size_t(i)]);
            const CostTerms J = obj->cost(*be, params.data(), X.data.data(), X.rows, nullptr);
            win.reset(d_in, d_sae);
            win.add(X.data.data(), obj->reconstruction(), obj->hidden(), X.rows, threshold);
            for (int64_t j = 0; j < d_sae; ++j) rs.since_fired[size_t(j)] = win.fires[size_t(j)] ? 0 : X.rows;
            const double secs = seconds_since(t0);
            const double sps = secs > 0 ? double((opt.evaluations() - evals0) * X.rows) / secs : 0;
            write_metrics(metrics_line(it, double(it), J, win, 0.0, sps, rs, cfg.dead_threshold_samples));
            progress.update(it, first, J, sps, true);
            summary.J = J;
            summary.mean_rho_hat = 0;
            for (double r : win.rho_hat()) summary.mean_rho_hat += r / double(d_sae);
        };
        if (!resume) log_now(0);
        while (opt.iteration() < cfg.max_iterations && opt.status() == LbfgsStatus::running) {
            opt.iterate(objective);
            const int64_t it = opt.iteration();
            if (!std::isfinite(opt.f()))
                throw Error("iteration " + std::to_string(it) + ": J_total is not finite; training stopped. The last good checkpoint is " + ckpt_path);
            const bool last = it >= cfg.max_iterations || opt.status() != LbfgsStatus::running || g_interrupted;
            if (it % cfg.log_every == 0 || last) log_now(it);
            if (it % cfg.checkpoint_every == 0 || last) save();
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
        // In memory: each epoch is ceil(N/B) batches, the last one possibly short. Streamed:
        // batches of B straddle epochs; the run is ceil(epochs·N/B) batches.
        const int64_t N = streaming ? stream->num_samples() : X.rows;
        const int64_t B = std::min(cfg.batch_size, N);
        // Per-step statistics read the sparse models' row lists, not a dense [B, d_sae].
        if (threshold >= 0) obj->set_dense_hidden(false);
        const int64_t per_epoch = (N + B - 1) / B;
        const int64_t total = streaming ? (cfg.epochs * N + B - 1) / B : per_epoch * cfg.epochs;
        auto opt = optimizer_create(cfg.optimizer, n, config_optimizer_hyper(cfg));
        LrSchedule sched;
        sched.kind = schedule_parse(cfg.lr_schedule);
        sched.base_lr = cfg.lr;
        sched.warmup_steps = cfg.warmup_steps;
        sched.total_steps = total;
        sched.step_size = cfg.lr_step_size;
        sched.gamma = cfg.lr_gamma;
        sched.min_lr = cfg.min_lr;
        if (resume) {
            if (streaming) {
                auto it = ckpt.st.metadata.find("stream_state");
                check(it != ckpt.st.metadata.end(), ckpt_path + ": checkpoint lacks the stream position; it was not made by a streamed run");
                stream->set_state(it->second);
            }
            opt->set_step(ckpt.get_int("optimizer_step"));
            for (auto& [name, buf] : opt->state()) {
                const auto& t = ckpt.tensor("opt." + name, n).f32;
                std::copy(t.begin(), t.end(), buf->begin());
            }
        }
        auto save = [&]() {
            std::vector<TensorOut> t;
            for (auto& [name, buf] : opt->state()) t.push_back({"opt." + name, {n}, DType::f32, buf->data()});
            std::map<std::string, std::string> meta = {{"optimizer_step", std::to_string(opt->step())}};
            if (streaming) meta["stream_state"] = stream->state();
            save_checkpoint(std::move(t), std::move(meta));
        };

        obj->reserve(B);
        Matrix<float> Xb(B, d_in);
        std::vector<int64_t> perm(streaming ? 0 : size_t(X.rows)), ids(streaming ? size_t(B) : 0);
        std::vector<uint8_t> dead(size_t(d_sae), 0), fired(size_t(d_sae), 0);
        int64_t perm_epoch = -1;
        Progress progress(total);
        const int64_t first = rs.step;
        CostTerms J_sum;
        int64_t win_steps = 0;
        auto win_start = Clock::now();
        double lr = sched.at(rs.step);
        while (rs.step < total) {
            int64_t m = B;
            if (streaming) {
                stream->next_batch(Xb.data.data(), m, ids.data());
                for (int64_t i = 0; i < m; ++i)
                    for (int64_t k = 0; k < d_in; ++k) {
                        float& x = Xb(i, k);
                        check(std::isfinite(x), cfg.data + ": sample " + std::to_string(ids[size_t(i)]) + ", feature " +
                                                    std::to_string(k) + " (counting from 0) is not finite; clean the data");
                        x = float(double(x) * rs.input_scale);
                    }
            } else {
                const int64_t epoch = rs.step / per_epoch, b = rs.step % per_epoch;
                if (epoch != perm_epoch) {
                    epoch_order(perm, uint64_t(cfg.seed), epoch);
                    perm_epoch = epoch;
                }
                m = std::min(B, X.rows - b * B);
                for (int64_t i = 0; i < m; ++i)
                    std::memcpy(Xb.row(i), X.row(perm[size_t(b * B + i)]), sizeof(float) * size_t(d_in));
            }

            bool any_dead = false;
            for (int64_t j = 0; j < d_sae; ++j) {
                dead[size_t(j)] = rs.since_fired[size_t(j)] >= cfg.dead_threshold_samples;
                any_dead |= dead[size_t(j)] != 0;
            }
            obj->set_dead_mask(any_dead ? dead.data() : nullptr);
            obj->set_sparsity_scale(cfg.sparsity_warmup_steps > 0
                                        ? std::min(1.0, double(rs.step + 1) / double(cfg.sparsity_warmup_steps))
                                        : 1.0);
            obj->set_step(rs.step);  // denoising masks drawn from (seed, step)
            const CostTerms J = obj->cost(*be, params.data(), Xb.data.data(), m, grad.data());
            lr = sched.at(rs.step);
            if (const char* bad = nonfinite_term(J, grad.data(), n)) {
                if (cfg.on_nonfinite == "stop")
                    throw Error("step " + std::to_string(rs.step) + ": " + bad +
                                " is not finite; training stopped. The last good checkpoint is " + ckpt_path +
                                "; lower lr, check the data, or set on_nonfinite = \"skip\"");
                ++rs.skipped;  // the batch is dropped: no update, no statistics
            } else {
                if (cfg.grad_clip_norm > 0) {
                    double sq = 0;
                    for (int64_t i = 0; i < n; ++i) sq += double(grad[size_t(i)]) * grad[size_t(i)];
                    const double norm = std::sqrt(sq);
                    if (norm > cfg.grad_clip_norm) {
                        const float s = float(cfg.grad_clip_norm / norm);
                        for (auto& g : grad) g *= s;
                    }
                }
                obj->before_update(params.data(), grad.data());
                opt->update(params.data(), grad.data(), lr);
                obj->after_update(params.data());
                // A finite gradient can still overflow the parameters (lr far too large): never
                // let such parameters reach a checkpoint. They cannot be skipped (no copy is kept).
                for (int64_t i = 0; i < n; ++i)
                    if (!std::isfinite(params[size_t(i)]))
                        throw Error("step " + std::to_string(rs.step) + ": the update made the parameters non-finite (lr = " +
                                    std::to_string(lr) + " is too large?); training stopped. The last good checkpoint is " +
                                    ckpt_path + "; lower lr or set grad_clip_norm");

                std::fill(fired.begin(), fired.end(), 0);
                if (const ActiveRows* A = obj->active_rows()) {  // sparse model: its row lists
                    for (int64_t i = 0; i < m; ++i)
                        for (int64_t e = A->beg[i]; e < A->end[i]; ++e)
                            fired[size_t(A->col[e])] |= double(A->val[e]) > threshold;
                    win.add(Xb.data.data(), obj->reconstruction(), *A, m, threshold);
                } else {
                    const float* H = obj->hidden();
                    for (int64_t i = 0; i < m; ++i)
                        for (int64_t j = 0; j < d_sae; ++j) fired[size_t(j)] |= double(H[i * d_sae + j]) > threshold;
                    win.add(Xb.data.data(), obj->reconstruction(), H, m, threshold);
                }
                for (int64_t j = 0; j < d_sae; ++j)
                    rs.since_fired[size_t(j)] = fired[size_t(j)] ? 0 : rs.since_fired[size_t(j)] + m;
                J_sum.rec += J.rec;
                J_sum.weight_decay += J.weight_decay;
                J_sum.sparsity += J.sparsity;
                J_sum.aux += J.aux;
                J_sum.denoise += J.denoise;
                ++win_steps;
                summary.samples += m;
            }
            ++rs.step;
            const bool last = rs.step == total || g_interrupted;
            const bool log_line = rs.step % cfg.log_every == 0 || last;
            if ((log_line || rs.step % 8 == 0) && win_steps > 0) {
                const double w = 1.0 / double(win_steps);
                const CostTerms Jm{J_sum.rec * w, J_sum.weight_decay * w, J_sum.sparsity * w, J_sum.aux * w, J_sum.denoise * w};
                const double secs = seconds_since(win_start);
                const double sps = secs > 0 ? double(win.n) / secs : 0;
                progress.update(rs.step, first, Jm, sps, log_line);
                // At multiples of log_every only: not at a run's last or interrupted step, which a
                // longer or uninterrupted run does not resample at (resume stays bit-identical).
                if (rs.step % cfg.log_every == 0 && (cfg.resample_dead || cfg.resample_duplicates > 0) &&
                    config_is_modern(cfg)) {
                    std::vector<uint8_t> redo(size_t(d_sae), 0);
                    if (cfg.resample_duplicates > 0) {
                        // Of two near-copies the one that fired longer ago goes (a function of the
                        // checkpointed state, so a resumed run chooses the same).
                        std::vector<int64_t> recent(static_cast<size_t>(d_sae));
                        for (int64_t j = 0; j < d_sae; ++j) recent[size_t(j)] = -rs.since_fired[size_t(j)];
                        redo = duplicate_latents(*be, params.data() + obj->layout().get("W_dec").offset, d_sae, d_in,
                                                 cfg.resample_duplicates, recent);
                    }
                    if (cfg.resample_dead)
                        for (int64_t j = 0; j < d_sae; ++j)
                            if (rs.since_fired[size_t(j)] >= cfg.dead_threshold_samples) redo[size_t(j)] = 1;
                    // Deterministic: the draw depends on (seed, step) only.
                    Rng rrng(uint64_t(cfg.seed) * 0x2545f4914f6cdd1dULL + uint64_t(rs.step));
                    rs.resampled += resample_latents(obj->layout(), params.data(), *opt, Xb.data.data(),
                                                     obj->reconstruction(), m, redo, rs, rrng);
                }
                if (log_line) {
                    write_metrics(metrics_line(rs.step, (streaming ? double(rs.step) * double(B) / double(N) : double(rs.step) / double(per_epoch)), Jm, win, lr, sps, rs,
                                               cfg.dead_threshold_samples));
                    summary.J = Jm;
                    summary.mean_rho_hat = 0;
                    for (double r : win.rho_hat()) summary.mean_rho_hat += r / double(d_sae);
                    win.reset(d_in, d_sae);
                    J_sum = {};
                    win_steps = 0;
                    win_start = Clock::now();
                }
            }
            if (rs.step % cfg.checkpoint_every == 0 || last) save();
            if (g_interrupted) {
                progress.finish();
                throw Error("interrupted at step " + std::to_string(rs.step) + "; checkpoint saved, continue with --resume");
            }
        }
        progress.finish();
        summary.steps = rs.step;
        summary.stop_reason = "epochs";
    }
    summary.skipped_batches = rs.skipped;

    model_save(out_dir, cfg, *obj, params.data(), rs.input_scale, norm);
    summary.seconds = seconds_since(t0);
    return summary;
}

}  // namespace sae
