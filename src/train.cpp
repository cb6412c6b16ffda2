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
#include <utility>
#include <nlohmann/json.hpp>
#include <thread>

#include "sae/backend.hpp"
#include "sae/comm.hpp"
#include "sae/error.hpp"
#include "sae/eval.hpp"
#include "sae/io.hpp"
#include "sae/metrics.hpp"
#include "sae/model_file.hpp"
#include "sae/modern.hpp"
#include "sae/objective.hpp"
#include "sae/optim.hpp"
#include "sae/replicas.hpp"
#include "sae/shards.hpp"
#include "sae/stream.hpp"
#include "train_data.hpp"

namespace sae {
namespace {

using Clock = std::chrono::steady_clock;
std::atomic<bool> g_interrupted{false};
extern "C" void on_interrupt(int) { g_interrupted = true; }

// While alive, SIGINT and SIGTERM set g_interrupted; the handlers found are put back after (a
// host such as Python keeps its own).
class InterruptGuard {
public:
    InterruptGuard() {
        g_interrupted = false;
        struct sigaction sa {};
        sa.sa_handler = on_interrupt;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_RESTART;
        sigaction(SIGINT, &sa, &old_int_);
        sigaction(SIGTERM, &sa, &old_term_);
    }
    ~InterruptGuard() {
        sigaction(SIGINT, &old_int_, nullptr);
        sigaction(SIGTERM, &old_term_, nullptr);
    }
    InterruptGuard(const InterruptGuard&) = delete;
    InterruptGuard& operator=(const InterruptGuard&) = delete;

private:
    struct sigaction old_int_ {}, old_term_ {};
};

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
    Progress() : tty_(::isatty(STDERR_FILENO)), start_(Clock::now()) {}
    // label: the variant shown ("" for a single run).
    void update(const TrainProgress& p, const std::string& label) {
        const double elapsed = seconds_since(start_);
        const double eta = p.step > p.first_step && p.total >= 0
                               ? elapsed / double(p.step - p.first_step) * double(p.total - p.step) : NAN;
        const CostTerms& J = p.J;
        const std::string of = p.total >= 0 ? "/" + std::to_string(p.total) : "";
        char text[256];
        std::snprintf(text, sizeof text, "step %lld%s%s  J=%.5g (rec %.4g, decay %.3g, sparsity %.4g%s)  %.0f samples/s  ETA %s",
                      (long long)p.step, of.c_str(), label.empty() ? "" : ("  [" + label + "]").c_str(), J.total(), J.rec,
                      J.weight_decay, J.sparsity,
                      J.aux != 0 ? (", aux " + std::to_string(J.aux)).c_str() : "", p.samples_per_s,
                      fmt_duration(eta).c_str());
        if (tty_) {
            const int width = 24;
            const int filled = p.total > 0 ? int(double(width) * double(p.step) / double(p.total)) : width;
            std::fprintf(stderr, "\r\033[K[%s%s] %s", std::string(size_t(filled), '#').c_str(),
                         std::string(size_t(width - filled), ' ').c_str(), text);
            std::fflush(stderr);
        } else if (p.log_step) {
            std::fprintf(stderr, "%s\n", text);
        }
    }
    void finish() {
        if (tty_) std::fprintf(stderr, "\n");
    }

private:
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

// √d_in / mean ‖x‖ over (up to) the first 10,000 samples.
double expected_norm_scale(const train_data::Samples& X) {
    const int64_t n = std::min<int64_t>(X.rows, 10000);
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) {
        double s = 0;
        for (int64_t k = 0; k < X.cols; ++k) s += double(X.row(i)[k]) * double(X.row(i)[k]);
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
// norm of the other encoder columns) · x/‖x‖, its encoder biases 0 (b_enc; gated: b_gate, b_mag
// and r_mag, so the magnitude path's scale is exp(0) = 1), and those entries of every
// optimiser moment are zeroed; its samples-since-fired count restarts. Returns the number of
// latents re-initialised. Latent shards (shards, not null): params are this shard's; the mean
// norm is over every shard's other columns, and the draws are those of one process (the draws
// of the latents of the shards before this one skipped), so every latent gets what it would.
int64_t resample_latents(const ParamLayout& L, float* params, Optimizer& opt, const float* X, const float* Xhat,
                         int64_t m, const std::vector<uint8_t>& redo, RunState& rs, Rng& rng, Comm* shards = nullptr) {
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
    std::vector<int64_t> biases;  // offsets of the [d_sae] encoder tensors reset to 0
    for (const char* name : {"b_enc", "b_gate", "b_mag", "r_mag"})
        if (const ParamView* v = L.find(name)) biases.push_back(v->offset);
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
    if (shards) {
        double both[2] = {live_norm, double(live)};
        shards->allreduce_sum(both, 2, "resampling");
        live_norm = both[0];
        live = int64_t(both[1]);
        if (total > 0) {  // one uniform per latent redone, in latent order
            double mine = 0;
            for (int64_t j = 0; j < d_sae; ++j) mine += redo[size_t(j)] != 0;
            std::vector<double> each(size_t(shards->size()));
            shards->allgather(&mine, sizeof mine, each.data(), "resampling");
            for (int s = 0; s < shards->rank(); ++s)
                for (int64_t t = 0; t < int64_t(each[size_t(s)]); ++t) rng.uniform();
        }
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
        for (int64_t off : biases) params[off + j] = 0;
        for (auto& [name, buf] : moments) {
            float* b = buf->data();
            for (int64_t k = 0; k < d_in; ++k) {
                b[we.offset + k * d_sae + j] = 0;
                b[L.get("W_dec").offset + j * d_in + k] = 0;
            }
            for (int64_t off : biases) b[off + j] = 0;
        }
        rs.since_fired[size_t(j)] = 0;
        ++count;
    }
    return count;
}

// Calls f (user code: a hook, a batch source); if it throws, save() writes the checkpoints of the
// last finished step before the exception goes on (a failure to save then is not allowed to
// hide it).
template <class F>
auto guarded(const std::function<void()>& save, F&& f) -> decltype(f()) {
    try {
        return f();
    } catch (...) {
        if (save) {
            try {
                save();
            } catch (...) {
            }
        }
        throw;
    }
}

std::string mb(double bytes) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f MB", bytes / 1e6);
    return buf;
}

// The data every variant of a run trains on, read once: the samples in memory (or the first
// samples of a stream), the normaliser fitted on them, the input scale, and the minibatches with
// the current one. cfg: the stream's settings (normalize resolved), which all variants share.
struct Stream {
    Stream(const Config& cfg, const TrainData& data);
    std::string name;          // names the data in messages (default: cfg.data)
    train_data::Samples X;     // the data (in memory), or a sample of it (streamed)
    Normalizer norm;           // fitted on the training data, saved with every model
    double input_scale = 1.0;  // normalize_activations = "expected_norm", folded into the saved weights
    std::unique_ptr<train_data::Batches> batches;  // minibatch optimisers
    Matrix<float> Xb;          // the current batch [m, d_in] (room for B rows)

private:
    void load(const Config& cfg, const TrainData& data);
};

Stream::Stream(const Config& cfg, const TrainData& data) {
    name = data.name.empty() ? cfg.data : data.name;
    load(cfg, data);
    input_scale = cfg.normalize_activations == "expected_norm" ? expected_norm_scale(X) : 1.0;
    if (input_scale != 1.0) X.scale(input_scale);
    if (batches) batches->set_input_scale(input_scale);
    if (cfg.optimizer == "lbfgs") return;
    // In memory: each epoch is ceil(N/B) batches, the last one possibly short. Streamed: batches
    // of B straddle epochs.
    if (!batches) batches = train_data::batches_in_memory(X, cfg.batch_size, cfg.epochs, uint64_t(cfg.seed));
    Xb.resize(batches->batch_size(), X.cols);
}

// In memory (a file, or the caller's samples), or streamed through a shuffle buffer
// (shuffle_buffer > 0: .npy shards, or the caller's batch source). Streamed, X is a sample of
// the data's first samples, for initialisation and scaling.
void Stream::load(const Config& cfg, const TrainData& data) {
    const bool streaming = cfg.shuffle_buffer > 0;
    check(!streaming || cfg.optimizer != "lbfgs",
          "shuffle_buffer > 0 streams minibatches, but optimizer = \"lbfgs\" needs the whole data set in memory; use adam, sgd or rmsprop");
    check(!streaming || cfg.normalize == "none",
          "shuffle_buffer > 0: streamed data cannot be normalised with normalize = \"" + cfg.normalize +
              "\" (it needs the whole set); use normalize = \"none\" (and normalize_activations if wanted)");
    check(!streaming || cfg.max_samples == 0, "shuffle_buffer > 0: max_samples is not supported when streaming; pick shards instead");
    if (data.batches) {
        check(streaming, name + ": batches are streamed through a shuffle buffer; set shuffle_buffer > 0 (e.g. 65536 samples)");
        Matrix<float> head;
        batches = train_data::batches_fed(*data.batches, cfg.shuffle_buffer, cfg.batch_size, cfg.epochs,
                                          uint64_t(cfg.seed), name, &head);
        X.own(std::move(head));
    } else if (data.samples) {
        check(!streaming, name + ": shuffle_buffer > 0 streams .npy shards or batches, but these samples are in memory "
                                 "already; leave shuffle_buffer at 0");
        Matrix<float> normalised;
        const int64_t rows = samples_fit(data.samples, data.rows, data.cols, data.source, cfg.normalize,
                                         cfg.max_samples, name, &norm, &normalised);
        if (normalised.data.empty()) X.borrow(data.samples, rows, data.cols);  // used as given
        else X.own(std::move(normalised));
    } else if (streaming) {
        StreamOptions so;
        so.pattern = cfg.data;
        so.buffer_samples = cfg.shuffle_buffer;
        so.seed = uint64_t(cfg.seed);
        so.dtype_hint = cfg.data_dtype == "auto" ? "" : cfg.data_dtype;
        Matrix<float> head;
        batches = train_data::batches_from_shards(so, cfg.batch_size, cfg.epochs, name, &head);
        X.own(std::move(head));
    } else {
        X.own(dataset_load_fit(cfg.data, cfg.normalize, cfg.max_samples, &norm));
    }
}

// One model being trained (one variant) on a Stream. The constructor sets it up (settings,
// model); start() restores or initialises the parameters; then either lbfgs() runs the whole
// optimisation, or the Trainer calls step() and log() for each minibatch of the stream.
class Run {
public:
    Run(const Config& settings, const std::string& out_dir, const std::string& label, Stream& data,
        const TrainHooks& hooks, Progress& bar);
    ~Run() {
        if (metrics_) std::fclose(metrics_);
    }
    // Creates out_dir (before any long work) and sweeps the temporary files a killed run left.
    static void prepare_dir(const std::string& out_dir);
    bool has_checkpoint() const { return std::filesystem::exists(ckpt_path_); }
    void start(bool resume);
    // full-batch
    void lbfgs();
    // minibatch: set-up, the stream's position at the checkpoint, then each step in order
    void minibatch_setup();
    std::string stream_position() const;
    void step(int64_t m);
    void log(bool last, bool display);
    void save() {
        if (save_) save_();
    }
    void finish(const std::string& reason);
    TrainSummary end();  // the model saved (unless interrupted) and the summary
    int64_t steps() const { return rs_.step; }
    bool resumed() const { return resumed_; }
    std::function<void()> save_all;  // every variant's checkpoint (a hook's failure saves them all)
    // Several ranks: the stop request that travelled with this variant's last reduction.
    bool stop_agreed() const { return agreed_stop_; }
    // Parameters, gradient and optimiser state of this variant, per rank (L-BFGS: x, g and the
    // s, y pairs in double).
    double state_bytes() const {
        const double copies = cfg_.optimizer == "lbfgs" ? double(6 + 4 * cfg_.lbfgs_history)
                                                        : double(2 + (opt_ ? opt_->state().size() : 0));
        return double(n_) * 4.0 * copies;
    }

private:
    // the minibatch step, in order
    CostTerms batch_cost(int64_t m);
    void skip_batch(const char* bad);
    void update(const CostTerms& J, int64_t m);
    void resample(int64_t m);
    void check_layout();
    void reserve(int64_t M);
    CostTerms slice_cost(const float* X, int64_t M, float* grad);
    // helpers
    bool stop_local() const { return g_interrupted || (hooks_.stop && hooks_.stop->load()); }
    // Several ranks stop together: at the request that travelled with the last reduction.
    bool stop_requested() const { return comm_.size() > 1 ? agreed_stop_ : stop_local(); }
    template <class F>
    auto external(F&& f) -> decltype(f()) {
        return guarded(save_all ? save_all : save_, std::forward<F>(f));
    }
    void show(const TrainProgress& p);
    void write_metrics(const std::string& line);
    void save_checkpoint(std::vector<TensorOut> opt_tensors, std::map<std::string, std::string> meta);
    // latent shards
    std::string shard_file(int64_t step, int shard) const;
    std::string manifest_path() const { return out_dir_ + "/checkpoint.json"; }
    std::string resume_path();  // the checkpoint file this rank restores from
    void check_resume_layout(const std::string& path);
    std::vector<float> gather_params();  // world rank 0: the whole model's parameters (else empty)
    void gather_stats(Stats& st, RunState& rs);  // every shard's latents (sums over the shards)
    const Objective& whole() const { return whole_ ? *whole_ : *obj_; }

    Config cfg_;
    const TrainHooks& hooks_;
    Comm& comm_;              // the ranks (one process: every collective a no-op)
    bool writer_ = true;      // rank 0 writes the files and shows progress
    // The layout (latent_shards S x R data replicas; world rank = replica·S + shard): the ranks
    // holding this one's latents (comm_ itself when S = 1) and those holding its other latents
    // of the same replica (null when S = 1).
    int shard_ = 0, shards_ = 1, replica_ = 0;
    RowSlice latents_{0, 0};  // this shard's latents of the whole d_sae
    int64_t d_sae_total_ = 0;
    MeshLayout mesh_;
    Comm* rep_ = nullptr;     // the data replicas of this shard (sums of gradients and statistics)
    Comm* shard_group_ = nullptr;  // the other shards of this replica (null: S = 1)
    std::unique_ptr<Objective> whole_;  // shards: the whole model (cfg.json, model.safetensors)
    RowSlice mine_;           // this replica's rows of the current batch
    bool agreed_stop_ = false;
    std::vector<float> scratch_, xrows_;
    std::string out_dir_, label_, ckpt_path_, metrics_path_, cfg_json_;
    Stream& data_;
    Progress& bar_;
    std::unique_ptr<Backend> be_;
    std::unique_ptr<Objective> obj_;
    int64_t n_ = 0, d_sae_ = 0, d_in_ = 0;
    double threshold_ = 0;
    bool resumed_ = false;
    RunState rs_;
    std::vector<float> params_, grad_;
    std::string ckpt_file_;  // the file restored from (resumed)
    Checkpoint ckpt_;
    std::FILE* metrics_ = nullptr;
    std::function<void()> save_;  // the optimiser family's checkpoint
    TrainSummary summary_;
    Clock::time_point t0_;
    Stats win_;  // statistics since the last metrics line
    // minibatch optimisers
    std::unique_ptr<Optimizer> opt_;
    LrSchedule sched_;
    std::vector<uint8_t> dead_, fired_;
    int64_t first_step_ = 0, win_steps_ = 0;
    CostTerms J_sum_;
    Clock::time_point win_start_;
    double lr_ = 0;
    int64_t last_m_ = 0;  // rows of the last batch used (resampling draws from it)
    int64_t win_samples_ = 0;  // samples of all replicas since the last metrics line
};

void Run::prepare_dir(const std::string& out_dir) {
    ensure_writable_dir(out_dir);
    // A run killed mid-write leaves "<output>.tmp-<pid>" behind; sweep those of our own outputs
    // (rank 0, which alone writes them).
    if (comm_world().rank() != 0) return;
    for (const auto& e : std::filesystem::directory_iterator(out_dir)) {
        const std::string name = e.path().filename().string();
        for (const char* out : {"model.safetensors", "cfg.json", "metrics.jsonl", "checkpoint.safetensors", "checkpoint.json"})
            if (name.rfind(std::string(out) + ".tmp-", 0) == 0) std::filesystem::remove(e.path());
        if (name.rfind("checkpoint.step-", 0) == 0 && name.find(".tmp-") != std::string::npos) std::filesystem::remove(e.path());
    }
}

Run::Run(const Config& settings, const std::string& out_dir, const std::string& label, Stream& data,
         const TrainHooks& hooks, Progress& bar)
    : cfg_(settings), hooks_(hooks), comm_(comm_world()), writer_(comm_world().rank() == 0), out_dir_(out_dir),
      label_(label), data_(data), bar_(bar) {
    cfg_.normalize = config_normalize(cfg_);  // auto resolved: cfg.json names what was applied
    const ScheduleKind k = schedule_parse(cfg_.lr_schedule);
    check(!(data_.batches && data_.batches->external()) || (k != ScheduleKind::cosine && k != ScheduleKind::linear),
          (label_.empty() ? "" : "variant '" + label_ + "': ") + "lr_schedule = \"" + cfg_.lr_schedule +
              "\" needs the run's length, which a batch source does not know in advance; use constant or step, or give the data as an array");
    be_ = backend_create(cfg_.backend);
    obj_ = objective_create(cfg_, data_.X.cols);
    check_layout();
    d_sae_total_ = obj_->d_sae();
    mesh_ = mesh_layout(comm_, shards_, d_sae_total_);
    rep_ = mesh_.data;
    shard_group_ = mesh_.shard_group.get();
    latents_ = mesh_.latents;
    if (shards_ > 1) {
        whole_ = std::move(obj_);
        obj_ = objective_create(cfg_, data_.X.cols);
        try {
            obj_->set_latent_shard(shard_group_, latents_.begin, latents_.count);
        } catch (const Error& e) {
            throw Error((label_.empty() ? "" : "variant '" + label_ + "': ") + e.what());
        }
    }
    n_ = obj_->layout().total;
    d_sae_ = obj_->d_sae();
    d_in_ = obj_->d_in();
    threshold_ = config_active_threshold(cfg_);
    ckpt_path_ = shards_ > 1 ? manifest_path() : out_dir_ + "/checkpoint.safetensors";
    metrics_path_ = out_dir_ + "/metrics.jsonl";
    cfg_json_ = config_to_json(cfg_);
    rs_.since_fired.assign(size_t(d_sae_), 0);
    rs_.input_scale = data_.input_scale;
}

// Several ranks (mpirun): latent_shards x data replicas. Every replica reads the same data and
// holds the same parameters of every variant; it computes the cost of its slice of each batch.
void Run::check_layout() {
    const std::string who = label_.empty() ? "" : "variant '" + label_ + "': ";
    const int64_t ranks = comm_.size();
    check(ranks % cfg_.latent_shards == 0, who + "latent_shards = " + std::to_string(cfg_.latent_shards) + " does not divide the " +
                                               std::to_string(ranks) + " ranks; pick a divisor (mpirun -np N)");
    shards_ = int(cfg_.latent_shards);
    shard_ = comm_.rank() % shards_;
    replica_ = comm_.rank() / shards_;
    if (ranks == 1) return;
    const std::string arch = config_architecture(cfg_);
    if (shards_ > 1) {
        check(cfg_.optimizer != "lbfgs", who + "latent_shards > 1 with optimizer = \"lbfgs\": L-BFGS's line search needs "
                                               "the whole parameter vector in one process; use adam, sgd or rmsprop, or latent_shards = 1");
        check(cfg_.resample_duplicates <= 0,
              who + "latent_shards > 1: resample_duplicates (which compares every pair of decoder rows) is not built for "
                    "latent shards yet; turn it off (resample_dead works) or use latent_shards = 1");
    }
}

// Parameters initialised (or restored from the checkpoint), cfg.json, metrics.jsonl opened.
void Run::start(bool resume) {
    resumed_ = resume;
    params_.resize(size_t(n_));
    grad_.resize(size_t(n_));
    if (resume) {
        ckpt_file_ = resume_path();  // (ckpt_ keeps a pointer to it for its messages)
        ckpt_ = checkpoint_load(ckpt_file_, cfg_);
        check_resume_layout(ckpt_file_);
        const auto& p = ckpt_.tensor("params", n_).f32;
        std::copy(p.begin(), p.end(), params_.begin());
        rs_.step = ckpt_.get_int("step");
        rs_.skipped = ckpt_.get_int("skipped_batches");
        rs_.resampled = ckpt_.get_int("resampled_latents");
        const auto& sf = ckpt_.tensor("since_fired", d_sae_).i64;
        check(int64_t(sf.size()) == d_sae_, ckpt_file_ + ": 'since_fired' must be I64; the checkpoint is damaged");
        std::copy(sf.begin(), sf.end(), rs_.since_fired.begin());
        std::map<std::string, double> extra;
        for (const auto& [key, value] : obj_->extra_state()) extra[key] = ckpt_.get_double("extra." + key);
        obj_->set_extra_state(extra);
    } else {
        Rng rng(uint64_t(cfg_.seed));
        obj_->init(params_.data(), rng, data_.X.head(4096));  // a shard: its part of the whole model's
        if (writer_) write_file_atomic(metrics_path_, "");
    }
    if (writer_) {
        write_file_atomic(out_dir_ + "/cfg.json", model_cfg_json(cfg_, whole(), rs_.input_scale, data_.norm, comm_.size()));
        if (resume) metrics_truncate(metrics_path_, rs_.step);
        metrics_ = std::fopen(metrics_path_.c_str(), "a");
        check(metrics_ != nullptr, metrics_path_ + ": cannot open for appending (" + std::strerror(errno) + ")");
    }
    win_.reset(d_in_, d_sae_);
    obj_->set_training(true);
    t0_ = Clock::now();
}

// Where this rank's checkpoint is: checkpoint.safetensors, or with latent shards the file of its
// shard that the manifest (checkpoint.json, written once every shard's file of that step is
// complete) names.
std::string Run::resume_path() {
    const std::string single = out_dir_ + "/checkpoint.safetensors";
    if (shards_ == 1) {
        check(std::filesystem::exists(single) || !std::filesystem::exists(manifest_path()),
              manifest_path() + ": the checkpoint was made with latent shards (see its \"latent_shards\" and \"ranks\"); "
                                "resume with that layout or train into a new directory");
        return single;
    }
    check(std::filesystem::exists(manifest_path()) || !std::filesystem::exists(single),
          single + ": the checkpoint was made without latent shards (latent_shards = 1); resume with that layout "
                   "or train into a new directory");
    check(std::filesystem::exists(manifest_path()),
          manifest_path() + ": no checkpoint to resume from; run without --resume to start afresh");
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(read_file(manifest_path()));
    } catch (const std::exception&) {
        throw Error(manifest_path() + ": not valid JSON; the checkpoint manifest is damaged");
    }
    check(j.is_object() && j.value("format", "") == "sae-checkpoint-shards" && j.contains("step") && j["step"].is_number_integer() &&
              j.contains("ranks") && j["ranks"].is_number_integer() && j.contains("latent_shards") &&
              j["latent_shards"].is_number_integer(),
          manifest_path() + ": not an sae checkpoint manifest (format, step, ranks, latent_shards); it is damaged");
    const int64_t S = j["latent_shards"], R = j["ranks"];
    check(S == shards_ && R == comm_.size(),
          manifest_path() + ": the checkpoint was made by " + std::to_string(R) + " ranks with latent_shards = " + std::to_string(S) +
              " but this run has " + std::to_string(comm_.size()) + " ranks with latent_shards = " + std::to_string(shards_) +
              "; resume with mpirun -np " + std::to_string(R) + " and latent_shards = " + std::to_string(S) +
              " (the same layout) or train into a new directory");
    return shard_file(j["step"].get<int64_t>(), shard_);
}

// The layout a checkpoint file was made with must be this run's: data replicas would resume
// alike, but not to the same bits (sums in another order); latent shards hold other slices.
// Refused, not re-sharded.
void Run::check_resume_layout(const std::string& path) {
    const auto r = ckpt_.st.metadata.find("ranks");
    const int64_t saved_ranks = r == ckpt_.st.metadata.end() ? 1 : ckpt_.get_int("ranks");
    const auto s = ckpt_.st.metadata.find("latent_shards");
    const int64_t saved_shards = s == ckpt_.st.metadata.end() ? 1 : ckpt_.get_int("latent_shards");
    check(saved_ranks == comm_.size() && saved_shards == shards_,
          path + ": the checkpoint was made by " + std::to_string(saved_ranks) + " ranks" +
              (saved_shards > 1 ? " with latent_shards = " + std::to_string(saved_shards) : "") + " but this run has " +
              std::to_string(comm_.size()) + (shards_ > 1 ? " with latent_shards = " + std::to_string(shards_) : "") +
              "; resume with mpirun -np " + std::to_string(saved_ranks) + " (the same layout) or train into a new directory");
    if (shards_ > 1)
        check(ckpt_.get_int("shard") == shard_ && ckpt_.get_int("latent_begin") == latents_.begin &&
                  ckpt_.get_int("latent_count") == latents_.count,
              path + ": the file holds another shard's latents; the checkpoint is damaged");
}

std::string Run::shard_file(int64_t step, int shard) const {
    return out_dir_ + "/checkpoint.step-" + std::to_string(step) + ".shard-" + std::to_string(shard) + "-of-" +
           std::to_string(shards_) + ".safetensors";
}

TrainSummary Run::end() {
    summary_.skipped_batches = rs_.skipped;
    if (summary_.stop_reason != "interrupted") {
        if (shards_ > 1) {  // the whole model, gathered on rank 0: the file one process writes
            opt_.reset();  // (the checkpoint holds them: room for the whole model on rank 0)
            std::vector<float>().swap(grad_);
            const std::vector<float> all = gather_params();
            whole_->set_extra_state(obj_->extra_state());  // (BatchTopK's threshold: every shard's the same)
            if (writer_) model_save(out_dir_, cfg_, *whole_, all.data(), rs_.input_scale, data_.norm, comm_.size());
        } else if (writer_) {
            model_save(out_dir_, cfg_, *obj_, params_.data(), rs_.input_scale, data_.norm, comm_.size());
        }
    }
    summary_.seconds = seconds_since(t0_);
    return summary_;
}

// The variants of one run and the stream they share. Full-batch L-BFGS trains one variant
// alone (Run::lbfgs); minibatch optimisers step every variant on each batch of the stream.
class Trainer {
public:
    struct Spec {
        Config cfg;
        std::string out_dir, label;  // label: the variant's name ("" for a single run)
    };
    Trainer(const std::vector<Spec>& specs, const TrainData& data, const TrainHooks& hooks);
    std::vector<TrainSummary> train(bool resume);

private:
    void minibatch();
    int64_t next_batch();
    bool in_step(const Run& r) const { return r.steps() == step_; }
    void save_all();  // the checkpoint of every variant at the stream's step
    // Several ranks: the stop request agreed in the reductions of this step's variants.
    bool stop_requested() const {
        return comm_world().size() > 1 ? stop_agreed_ : g_interrupted || (hooks_.stop && hooks_.stop->load());
    }
    void show_layout(int64_t batch) const;

    const TrainHooks& hooks_;
    Config cfg_;  // the stream's settings (shared by every variant)
    Progress bar_;
    std::unique_ptr<Stream> data_;
    std::vector<std::unique_ptr<Run>> runs_;
    std::function<void()> save_all_ = [this] { save_all(); };
    int64_t step_ = 0;  // minibatch: the stream's step (every variant in step takes it)
    bool stop_agreed_ = false;
};

Trainer::Trainer(const std::vector<Spec>& specs, const TrainData& data, const TrainHooks& hooks) : hooks_(hooks) {
    for (const Spec& s : specs) config_validate(s.cfg);
    cfg_ = specs.at(0).cfg;
    cfg_.normalize = config_normalize(cfg_);
    // threads = 0 under mpirun: the machine's cores shared among its ranks, not all to each.
    if (cfg_.threads == 0 && comm_world().size() > 1)
        set_num_threads(std::max(1, int(std::thread::hardware_concurrency()) / comm_local_ranks()));
    else
        set_num_threads(int(cfg_.threads));
    for (const Spec& s : specs) Run::prepare_dir(s.out_dir);
    data_ = std::make_unique<Stream>(cfg_, data);
    for (const Spec& s : specs) {
        runs_.push_back(std::make_unique<Run>(s.cfg, s.out_dir, s.label, *data_, hooks_, bar_));
        runs_.back()->save_all = save_all_;
    }
}

// A variant with no checkpoint yet, beside others that have one (the run was stopped before its
// first checkpoint), starts afresh and catches up.
std::vector<TrainSummary> Trainer::train(bool resume) {
    bool any = false;
    for (auto& r : runs_) any |= r->has_checkpoint();
    for (auto& r : runs_) r->start(resume && (!any || r->has_checkpoint()));
    const InterruptGuard interrupts;
    bar_ = Progress();
    if (cfg_.optimizer == "lbfgs") {
        show_layout(data_->X.rows);
        runs_.at(0)->lbfgs();
    } else {
        minibatch();
    }
    if (!hooks_.progress && !hooks_.quiet && comm_world().rank() == 0) bar_.finish();
    std::vector<TrainSummary> out;
    for (auto& r : runs_) out.push_back(r->end());
    return out;
}

// ---- minibatch optimisers: for each step, one batch → each variant's cost → update → log → checkpoint ----
void Trainer::minibatch() {
    train_data::Batches& batches = *data_->batches;
    for (auto& r : runs_) r->minibatch_setup();
    show_layout(data_->batches->batch_size());
    // Resumed, the stream restarts where the variant furthest behind stopped; the others wait
    // until it reaches their step.
    // Data replicas of a stream each read only their rows of every batch.
    const Comm& world = comm_world();
    const int replicas = world.size() / int(cfg_.latent_shards);
    if (replicas > 1 && batches.streamed() && !batches.external()) {
        const RowSlice part = replica_rows(batches.batch_size(), world.rank() / int(cfg_.latent_shards), replicas);
        batches.set_part(part.begin, part.count);
    }
    const Run& behind = **std::min_element(runs_.begin(), runs_.end(), [](auto& a, auto& b) { return a->steps() < b->steps(); });
    step_ = behind.steps();
    if (behind.resumed()) batches.set_state(behind.stream_position());
    while (!batches.done(step_)) {
        const int64_t m = next_batch();
        stop_agreed_ = false;
        for (auto& r : runs_)
            if (in_step(*r)) {
                r->step(m);
                stop_agreed_ |= r->stop_agreed();
            }
        ++step_;
        const bool last = batches.done(step_) || stop_requested();
        bool display = true;  // the first variant in step shows the progress
        for (auto& r : runs_)
            if (in_step(*r)) r->log(last, std::exchange(display, false));
        const bool stop = stop_requested();  // (a hook may have raised it while logging)
        if (step_ % cfg_.checkpoint_every == 0 || last || stop) save_all();
        if (stop) {
            for (auto& r : runs_) r->finish("interrupted");
            return;
        }
    }
    for (auto& r : runs_)
        check(in_step(*r), "a variant's checkpoint is at step " + std::to_string(r->steps()) + ", past the run's end at step " +
                               std::to_string(step_) + "; resume with the epochs it was trained with");
    for (auto& r : runs_) r->finish("epochs");
}

int64_t Trainer::next_batch() {
    train_data::Batches& b = *data_->batches;
    float* Xb = data_->Xb.data.data();
    return b.external() ? guarded(save_all_, [&] { return b.next(Xb); }) : b.next(Xb);
}

// Several ranks: the layout and the memory per rank, once (rank 0).
void Trainer::show_layout(int64_t batch) const {
    const Comm& comm = comm_world();
    if (comm.size() == 1 || comm.rank() != 0 || hooks_.quiet) return;
    const int replicas = comm.size() / int(cfg_.latent_shards);
    double state = 0;
    for (const auto& r : runs_) state += r->state_bytes();
    std::fprintf(stderr, "%d ranks x %d threads: latent_shards %lld x %lld data replicas of batch %lld (up to %lld rows each); "
                         "per rank: parameters, gradient and optimiser state %s%s, data in memory %s\n",
                 comm.size(), get_num_threads(), (long long)cfg_.latent_shards, (long long)replicas,
                 (long long)batch, (long long)replica_rows(batch, 0, replicas).count, mb(state).c_str(),
                 runs_.size() > 1 ? (" (" + std::to_string(runs_.size()) + " variants)").c_str() : "",
                 mb(double(data_->X.rows) * double(data_->X.cols) * 4.0).c_str());
}

// A variant ahead of the stream (catching up after a resume) keeps the checkpoint it has.
void Trainer::save_all() {
    for (auto& r : runs_)
        if (cfg_.optimizer == "lbfgs" || in_step(*r)) r->save();
}

void Run::minibatch_setup() {
    const int64_t B = data_.batches->batch_size();
    if (rep_->size() > 1) {  // every replica needs a row of every batch (in memory, the last one may be short)
        const int64_t rows = data_.X.rows;
        const int64_t last = data_.batches->streamed() ? B : (rows % B == 0 ? B : rows % B);
        check(std::min(B, last) >= rep_->size(),
              "batch_size = " + std::to_string(B) + " over " + std::to_string(rows) + " samples makes batches of " +
                  std::to_string(std::min(B, last)) + " rows, fewer than the " + std::to_string(rep_->size()) +
                  " data replicas; pick a batch_size that leaves each replica a row");
    }
    // Per-step statistics read the sparse models' row lists, not a dense [B, d_sae].
    if (threshold_ >= 0) obj_->set_dense_hidden(false);
    opt_ = optimizer_create(cfg_.optimizer, n_, config_optimizer_hyper(cfg_));
    sched_.kind = schedule_parse(cfg_.lr_schedule);
    sched_.base_lr = cfg_.lr;
    sched_.warmup_steps = cfg_.warmup_steps;
    sched_.total_steps = data_.batches->total();
    sched_.step_size = cfg_.lr_step_size;
    sched_.gamma = cfg_.lr_gamma;
    sched_.min_lr = cfg_.min_lr;
    if (resumed_) {
        opt_->set_step(ckpt_.get_int("optimizer_step"));
        for (auto& [name, buf] : opt_->state()) {
            const auto& t = ckpt_.tensor("opt." + name, n_).f32;
            std::copy(t.begin(), t.end(), buf->begin());
        }
    }
    save_ = [this]() {
        std::vector<TensorOut> t;
        for (auto& [name, buf] : opt_->state()) t.push_back({"opt." + name, {n_}, DType::f32, buf->data()});
        std::map<std::string, std::string> meta = {{"optimizer_step", std::to_string(opt_->step())}};
        if (data_.batches->streamed()) meta["stream_state"] = data_.batches->state();
        save_checkpoint(std::move(t), std::move(meta));
    };
    reserve(B);
    dead_.assign(size_t(d_sae_), 0);
    fired_.assign(size_t(d_sae_), 0);
    first_step_ = rs_.step;
    win_start_ = Clock::now();
}

// Where the stream stood when the checkpoint was saved: the shuffle buffer's state (streamed),
// or the step (each epoch's order follows from seed and epoch).
std::string Run::stream_position() const {
    if (!data_.batches->streamed()) return std::to_string(rs_.step);
    auto it = ckpt_.st.metadata.find("stream_state");
    check(it != ckpt_.st.metadata.end(), ckpt_file_ + ": checkpoint lacks the stream position; it was not made by a streamed run");
    return it->second;
}

// One step on the stream's current batch Xb [m, d_in]: cost → update (or skip) → statistics.
void Run::step(int64_t m) {
    lr_ = sched_.at(rs_.step);
    last_m_ = m;
    const CostTerms J = batch_cost(m);
    const char* bad = nonfinite_term(J, grad_.data(), n_);
    if (shard_group_) {  // every shard skips the batch or none, and stops when any rank asked
        double any[2] = {bad ? 1.0 : 0.0, agreed_stop_ ? 1.0 : 0.0};
        shard_group_->allreduce_sum(any, 2, "non-finite check and stop request");
        if (any[0] > 0 && !bad) bad = "the gradient (of another latent shard)";
        agreed_stop_ = any[1] > 0;
    }
    if (bad) skip_batch(bad);
    else update(J, m);
    ++rs_.step;
}

CostTerms Run::batch_cost(int64_t m) {
    bool any_dead = false;
    for (int64_t j = 0; j < d_sae_; ++j) {
        dead_[size_t(j)] = rs_.since_fired[size_t(j)] >= cfg_.dead_threshold_samples;
        any_dead |= dead_[size_t(j)] != 0;
    }
    obj_->set_dead_mask(any_dead ? dead_.data() : nullptr);
    obj_->set_sparsity_scale(cfg_.sparsity_warmup_steps > 0
                                 ? std::min(1.0, double(rs_.step + 1) / double(cfg_.sparsity_warmup_steps))
                                 : 1.0);
    obj_->set_step(rs_.step);  // denoising masks drawn from (seed, step)
    return slice_cost(data_.Xb.data.data(), m, grad_.data());
}

// The cost of the batch X [M, d_in] and its gradient (when grad): this replica's rows of it,
// then summed over the replicas (one process: the cost of X).
CostTerms Run::slice_cost(const float* X, int64_t M, float* grad) {
    mine_ = replica_rows(M, rep_->rank(), rep_->size());
    return replicas_cost(*rep_, *obj_, *be_, params_.data(), X, M, grad, stop_local(), &agreed_stop_);
}

void Run::skip_batch(const char* bad) {
    if (cfg_.on_nonfinite == "stop")
        throw Error("step " + std::to_string(rs_.step) + ": " + bad + " is not finite; training stopped. The last good checkpoint is " +
                    ckpt_path_ + "; lower lr, check the data, or set on_nonfinite = \"skip\"");
    ++rs_.skipped;  // the batch is dropped: no update, no statistics
}

// The optimiser's step, then the batch's statistics (firing, the log window's sums).
void Run::update(const CostTerms& J, int64_t m) {
    if (cfg_.grad_clip_norm > 0) {
        double sq = 0;
        for (int64_t i = 0; i < n_; ++i) sq += double(grad_[size_t(i)]) * grad_[size_t(i)];
        if (shard_group_) {  // the whole model's norm: every shard's latents, b_dec (replicated) once
            const auto& b = obj_->layout().get("b_dec");
            if (shard_ != 0)
                for (int64_t i = b.offset; i < b.offset + b.numel(); ++i) sq -= double(grad_[size_t(i)]) * grad_[size_t(i)];
            shard_group_->allreduce_sum(&sq, 1, "gradient norm");
        }
        const double norm = std::sqrt(sq);
        if (norm > cfg_.grad_clip_norm) {
            const float s = float(cfg_.grad_clip_norm / norm);
            for (auto& g : grad_) g *= s;
        }
    }
    obj_->before_update(params_.data(), grad_.data());
    opt_->update(params_.data(), grad_.data(), lr_);
    obj_->after_update(params_.data());
    // A finite gradient can still overflow the parameters (lr far too large): never let such
    // parameters reach a checkpoint. They cannot be skipped (no copy is kept).
    for (int64_t i = 0; i < n_; ++i)
        if (!std::isfinite(params_[size_t(i)]))
            throw Error("step " + std::to_string(rs_.step) + ": the update made the parameters non-finite (lr = " +
                        std::to_string(lr_) + " is too large?); training stopped. The last good checkpoint is " +
                        ckpt_path_ + "; lower lr or set grad_clip_norm");

    // Firing and statistics from this replica's rows (one process: the batch).
    std::fill(fired_.begin(), fired_.end(), 0);
    const int64_t mr = mine_.count;
    const float* Xr = data_.Xb.data.data() + mine_.begin * d_in_;
    if (const ActiveRows* A = obj_->active_rows()) {  // sparse model: its row lists
        for (int64_t i = 0; i < mr; ++i)
            for (int64_t e = A->beg[i]; e < A->end[i]; ++e) fired_[size_t(A->col[e])] |= double(A->val[e]) > threshold_;
        win_.add(Xr, obj_->reconstruction(), *A, mr, threshold_);
    } else {
        const float* H = obj_->hidden();
        for (int64_t i = 0; i < mr; ++i)
            for (int64_t j = 0; j < d_sae_; ++j) fired_[size_t(j)] |= double(H[i * d_sae_ + j]) > threshold_;
        win_.add(Xr, obj_->reconstruction(), H, mr, threshold_);
    }
    replicas_any(*rep_, fired_, scratch_);  // fired on any replica's rows
    for (int64_t j = 0; j < d_sae_; ++j)
        rs_.since_fired[size_t(j)] = fired_[size_t(j)] ? 0 : rs_.since_fired[size_t(j)] + m;
    J_sum_.rec += J.rec;
    J_sum_.weight_decay += J.weight_decay;
    J_sum_.sparsity += J.sparsity;
    J_sum_.aux += J.aux;
    J_sum_.denoise += J.denoise;
    ++win_steps_;
    win_samples_ += m;
    summary_.samples += m;
}

// Every 8 steps and at each log step: resampling (at multiples of log_every), the metrics line
// (at log steps and the last), the progress display (display: this variant shows it) and the hooks.
void Run::log(bool last, bool display) {
    const bool log_line = rs_.step % cfg_.log_every == 0 || last;
    if (!(log_line || rs_.step % 8 == 0) || win_steps_ == 0) return;
    const double w = 1.0 / double(win_steps_);
    const CostTerms Jm{J_sum_.rec * w, J_sum_.weight_decay * w, J_sum_.sparsity * w, J_sum_.aux * w, J_sum_.denoise * w};
    const double secs = seconds_since(win_start_);
    const double sps = secs > 0 ? double(win_samples_) / secs : 0;
    // At multiples of log_every only: not at a run's last or interrupted step, which a longer or
    // uninterrupted run does not resample at (resume stays bit-identical).
    if (rs_.step % cfg_.log_every == 0 && (cfg_.resample_dead || cfg_.resample_duplicates > 0) && config_is_modern(cfg_))
        resample(last_m_);
    std::string line;
    if (log_line) {
        replicas_reduce(*rep_, win_);  // every replica's rows
        Stats all = win_;
        RunState rs = rs_;
        if (shard_group_) gather_stats(all, rs);  // every shard's latents
        line = metrics_line(rs_.step, data_.batches->epoch(rs_.step), Jm, all, lr_, sps, rs, cfg_.dead_threshold_samples);
        write_metrics(line);
        summary_.J = Jm;
        summary_.mean_rho_hat = 0;
        for (double r : all.rho_hat()) summary_.mean_rho_hat += r / double(d_sae_total_);
        win_.reset(d_in_, d_sae_);
        J_sum_ = {};
        win_steps_ = 0;
        win_samples_ = 0;
        win_start_ = Clock::now();
    }
    if (display) show({rs_.step, first_step_, data_.batches->total(), Jm, sps, log_line});
    if (log_line && hooks_.on_log) {
        const std::string json = line.substr(0, line.size() - 1);  // a variant's line starts with its name
        const std::string named = label_.empty() ? json : "{\"variant\":" + nlohmann::json(label_).dump() + "," + json.substr(1);
        external([&] { hooks_.on_log(rs_.step, named); });
    }
}

// Dead latents (resample_dead) and near-duplicates (resample_duplicates) re-initialised from
// the last batch.
void Run::resample(int64_t m) {
    std::vector<uint8_t> redo(size_t(d_sae_), 0);
    if (cfg_.resample_duplicates > 0) {
        // Of two near-copies the one that fired longer ago goes (a function of the checkpointed
        // state, so a resumed run chooses the same).
        std::vector<int64_t> recent(static_cast<size_t>(d_sae_));
        for (int64_t j = 0; j < d_sae_; ++j) recent[size_t(j)] = -rs_.since_fired[size_t(j)];
        redo = duplicate_latents(*be_, params_.data() + obj_->layout().get("W_dec").offset, d_sae_, d_in_,
                                 cfg_.resample_duplicates, recent);
    }
    if (cfg_.resample_dead)
        for (int64_t j = 0; j < d_sae_; ++j)
            if (rs_.since_fired[size_t(j)] >= cfg_.dead_threshold_samples) redo[size_t(j)] = 1;
    // Deterministic: the draw depends on (seed, step) only.
    Rng rrng(uint64_t(cfg_.seed) * 0x2545f4914f6cdd1dULL + uint64_t(rs_.step));
    const float* Xhat = obj_->reconstruction();
    const float* X = data_.Xb.data.data();
    if (rep_->size() > 1) {  // every replica draws from the whole batch, alike
        replicas_gather_rows(*rep_, Xhat, m, d_in_, scratch_);
        Xhat = scratch_.data();
        if (data_.batches->streamed()) {  // (each replica read only its rows of a stream)
            replicas_gather_rows(*rep_, X + mine_.begin * d_in_, m, d_in_, xrows_);
            X = xrows_.data();
        }
    }
    int64_t done = resample_latents(obj_->layout(), params_.data(), *opt_, X, Xhat, m, redo, rs_, rrng, shard_group_);
    if (shard_group_) {  // every shard's count
        double all = double(done);
        shard_group_->allreduce_sum(&all, 1, "resampling");
        done = int64_t(all);
    }
    rs_.resampled += done;
}

// ---- full-batch L-BFGS: for each iteration, iterate (cost and line search) → log → checkpoint ----
void Run::lbfgs() {
    // Replicas: each computes the cost of its rows of the whole set; summed, it is the one
    // process's cost and gradient, so every rank follows its iterates.
    const int64_t N = data_.X.rows;
    check(N >= comm_.size(), data_.name + ": " + std::to_string(N) + " samples for " + std::to_string(comm_.size()) +
                                 " data replicas; each needs one at least");
    reserve(N);
    LbfgsOptions lbfgs_options;
    lbfgs_options.history = int(cfg_.lbfgs_history);
    Lbfgs opt(n_, lbfgs_options);
    auto objective = [&](const double* x, double* g) {
        for (int64_t i = 0; i < n_; ++i) params_[size_t(i)] = float(x[i]);
        obj_->set_step(0);  // denoising: one corruption for the whole run, a fixed function for L-BFGS
        const CostTerms J = slice_cost(data_.X.data, N, grad_.data());
        for (int64_t i = 0; i < n_; ++i) g[i] = grad_[size_t(i)];
        return J.total();
    };
    if (resumed_) {
        std::map<std::string, std::vector<double>> bufs;
        std::map<std::string, int64_t> scalars;
        for (auto& [name, t] : ckpt_.st.tensors)
            if (name.rfind("lbfgs.", 0) == 0) bufs[name.substr(6)] = t.f64;
        for (auto& [key, v] : ckpt_.st.metadata)
            if (key.rfind("lbfgs.", 0) == 0) scalars[key.substr(6)] = ckpt_.get_int(key);
        opt.restore(bufs, scalars);
    } else {
        std::vector<double> x0(params_.begin(), params_.end());
        opt.init(x0.data(), objective);
    }
    const int64_t first = opt.iteration();
    save_ = [&]() {
        for (int64_t i = 0; i < n_; ++i) params_[size_t(i)] = float(opt.x()[size_t(i)]);
        rs_.step = opt.iteration();
        const auto bufs = opt.save_buffers();
        std::vector<TensorOut> t;
        for (auto& [name, b] : bufs) t.push_back({"lbfgs." + name, {int64_t(b.size())}, DType::f64, b.data()});
        std::map<std::string, std::string> meta;
        for (auto& [k, v] : opt.save_scalars()) meta["lbfgs." + k] = std::to_string(v);
        save_checkpoint(std::move(t), std::move(meta));
    };
    const int64_t evals0 = opt.evaluations();
    // Metrics at the current point: one extra forward pass, only on logging steps.
    auto log_now = [&](int64_t it) {
        for (int64_t i = 0; i < n_; ++i) params_[size_t(i)] = float(opt.x()[size_t(i)]);
        const CostTerms J = slice_cost(data_.X.data, N, nullptr);
        win_.reset(d_in_, d_sae_);
        win_.add(data_.X.data + mine_.begin * d_in_, obj_->reconstruction(), obj_->hidden(), mine_.count, threshold_);
        replicas_reduce(*rep_, win_);
        for (int64_t j = 0; j < d_sae_; ++j) rs_.since_fired[size_t(j)] = win_.fires[size_t(j)] ? 0 : data_.X.rows;
        const double secs = seconds_since(t0_);
        const double sps = secs > 0 ? double((opt.evaluations() - evals0) * data_.X.rows) / secs : 0;
        const std::string line = metrics_line(it, double(it), J, win_, 0.0, sps, rs_, cfg_.dead_threshold_samples);
        write_metrics(line);
        summary_.J = J;
        summary_.mean_rho_hat = 0;
        for (double r : win_.rho_hat()) summary_.mean_rho_hat += r / double(d_sae_);
        show({it, first, cfg_.max_iterations, J, sps, true});
        if (hooks_.on_log) external([&] { hooks_.on_log(it, line.substr(0, line.size() - 1)); });
    };
    if (!resumed_) log_now(0);
    while (opt.iteration() < cfg_.max_iterations && opt.status() == LbfgsStatus::running) {
        opt.iterate(objective);
        const int64_t it = opt.iteration();
        if (!std::isfinite(opt.f()))
            throw Error("iteration " + std::to_string(it) + ": J_total is not finite; training stopped. The last good checkpoint is " + ckpt_path_);
        const bool last = it >= cfg_.max_iterations || opt.status() != LbfgsStatus::running || stop_requested();
        if (it % cfg_.log_every == 0 || last) log_now(it);
        const bool stop = stop_requested();
        if (it % cfg_.checkpoint_every == 0 || last || stop) save_();
        if (stop) return finish("interrupted");
    }
    for (int64_t i = 0; i < n_; ++i) params_[size_t(i)] = float(opt.x()[size_t(i)]);
    summary_.samples = (opt.evaluations() - evals0) * data_.X.rows;
    rs_.step = opt.iteration();
    finish(opt.status() == LbfgsStatus::running ? "max_iterations" : lbfgs_status_name(opt.status()));
}

// The objective's workspace for this replica's rows of batches of up to M rows. A batch-wide
// selection (BatchTopK) may keep any number of its M·k entries in one replica's rows: its lists
// get room for the whole batch.
void Run::reserve(int64_t M) {
    const bool batch_selection = config_architecture(cfg_).find("batchtopk") != std::string::npos;
    obj_->reserve(batch_selection ? M : replica_rows(M, 0, rep_->size()).count);
}

void Run::show(const TrainProgress& p) {
    if (!writer_) return;
    if (hooks_.progress) external([&] { hooks_.progress(p); });
    else if (!hooks_.quiet) bar_.update(p, label_);
}

void Run::write_metrics(const std::string& line) {
    if (!writer_) return;
    check(std::fputs(line.c_str(), metrics_) >= 0 && std::fflush(metrics_) == 0, metrics_path_ + ": write failed (disk full?)");
}

// Checkpoint = parameters + optimiser state (given as named buffers) + run state.
// Several ranks: the replicas hold the same parameters (checked), and rank 0 writes.
// Latent shards: the first replica of each shard writes its shard's file of this step (its own
// latents' parameters, counters and optimiser state); once every one is complete (a barrier),
// rank 0 writes the manifest checkpoint.json naming the step and layout, and then (a second
// barrier) the files of older steps go. A job killed at any point leaves the manifest naming a
// step whose files are all there.
void Run::save_checkpoint(std::vector<TensorOut> opt_tensors, std::map<std::string, std::string> meta) {
    if (comm_.size() > 1) {
        replicas_check_same(*rep_, params_, rs_.step);
        meta["ranks"] = std::to_string(comm_.size());
        meta["latent_shards"] = std::to_string(cfg_.latent_shards);
        if (shards_ > 1) {
            meta["shard"] = std::to_string(shard_);
            meta["latent_begin"] = std::to_string(latents_.begin);
            meta["latent_count"] = std::to_string(latents_.count);
        } else if (!writer_) {
            return;
        }
    }
    std::vector<TensorOut> t = {{"params", {n_}, DType::f32, params_.data()},
                                {"since_fired", {d_sae_}, DType::i64, rs_.since_fired.data()}};
    for (auto& o : opt_tensors) t.push_back(std::move(o));
    meta["format"] = "sae-checkpoint";
    meta["config"] = cfg_json_;
    meta["step"] = std::to_string(rs_.step);
    meta["skipped_batches"] = std::to_string(rs_.skipped);
    meta["resampled_latents"] = std::to_string(rs_.resampled);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", rs_.input_scale);
    meta["input_scale"] = buf;
    for (const auto& [key, value] : obj_->extra_state()) {
        std::snprintf(buf, sizeof buf, "%.17g", value);
        meta["extra." + key] = buf;
    }
    if (shards_ == 1) return safetensors_write(ckpt_path_, t, meta);
    const std::string mine = shard_file(rs_.step, shard_);
    if (replica_ == 0) safetensors_write(mine, t, meta);
    comm_.barrier();
    if (writer_) {
        nlohmann::ordered_json j;
        j["format"] = "sae-checkpoint-shards";
        j["step"] = rs_.step;
        j["ranks"] = comm_.size();
        j["latent_shards"] = shards_;
        j["files"] = nlohmann::json::array();
        for (int sh = 0; sh < shards_; ++sh)
            j["files"].push_back(std::filesystem::path(shard_file(rs_.step, sh)).filename().string());
        write_file_atomic(manifest_path(), j.dump(2) + "\n");
    }
    comm_.barrier();
    if (replica_ != 0) return;
    const std::string keep = std::filesystem::path(mine).filename().string();
    const std::string tail = ".shard-" + std::to_string(shard_) + "-of-" + std::to_string(shards_) + ".safetensors";
    for (const auto& e : std::filesystem::directory_iterator(out_dir_)) {
        const std::string name = e.path().filename().string();
        if (name != keep && name.rfind("checkpoint.step-", 0) == 0 && name.size() > tail.size() &&
            name.compare(name.size() - tail.size(), tail.size(), tail) == 0)
            std::filesystem::remove(e.path());
    }
}

// Each shard's latents packed latent by latent (its W_enc column, then its row of every other
// [d_sae, ...] tensor, in layout order), gathered on rank 0 and laid out as one process's
// parameters (b_dec: the first shard's; every shard holds the same).
std::vector<float> Run::gather_params() {
    if (replica_ != 0) return {};
    const ParamLayout& L = obj_->layout();
    const ParamLayout& W = whole_->layout();
    int64_t per = 0;  // floats per latent
    for (const auto& v : L.views)
        if (v.name != "b_dec") per += v.numel() / d_sae_;
    const int64_t most = latent_slice(d_sae_total_, 0, shards_).count;
    std::vector<float> send(size_t(most * per), 0.0f), recv(writer_ ? size_t(most * per * shards_) : 0);
    for (int64_t j = 0; j < d_sae_; ++j) {
        float* o = send.data() + j * per;
        for (const auto& v : L.views) {
            if (v.name == "b_dec") continue;
            const float* p = params_.data() + v.offset;
            if (v.name == "W_enc")
                for (int64_t c = 0; c < d_in_; ++c) *o++ = p[c * d_sae_ + j];
            else
                for (int64_t w = v.numel() / d_sae_, c = 0; c < w; ++c) *o++ = p[j * w + c];
        }
    }
    shard_group_->gather(send.data(), int64_t(send.size() * sizeof(float)), writer_ ? recv.data() : nullptr, 0, "model gather");
    if (!writer_) return {};
    std::vector<float> all(size_t(W.total));
    const auto& b = L.get("b_dec");
    std::copy(params_.begin() + b.offset, params_.begin() + b.offset + b.numel(), all.begin() + W.get("b_dec").offset);
    for (int sh = 0; sh < shards_; ++sh) {
        const RowSlice ls = latent_slice(d_sae_total_, sh, shards_);
        for (int64_t j = 0; j < ls.count; ++j) {
            const float* in = recv.data() + (int64_t(sh) * most + j) * per;
            const int64_t g = ls.begin + j;
            for (const auto& v : W.views) {
                if (v.name == "b_dec") continue;
                float* p = all.data() + v.offset;
                if (v.name == "W_enc")
                    for (int64_t c = 0; c < d_in_; ++c) p[c * d_sae_total_ + g] = *in++;
                else
                    for (int64_t w = v.numel() / d_sae_total_, c = 0; c < w; ++c) p[g * w + c] = *in++;
            }
        }
    }
    return all;
}

// A metrics line needs every latent: the shards' per-latent sums and counters side by side, the
// activations' totals summed (the reconstruction's terms are the same on every shard).
void Run::gather_stats(Stats& st, RunState& rs) {
    const int64_t most = latent_slice(d_sae_total_, 0, shards_).count;
    std::vector<double> send(size_t(3 * most + 2), 0.0), recv(size_t((3 * most + 2) * shards_));
    for (int64_t j = 0; j < d_sae_; ++j) {
        send[size_t(j)] = st.sum_h[size_t(j)];
        send[size_t(most + j)] = double(st.fires[size_t(j)]);
        send[size_t(2 * most + j)] = double(rs.since_fired[size_t(j)]);
    }
    send[size_t(3 * most)] = st.sum_abs_h;
    send[size_t(3 * most + 1)] = double(st.active);
    shard_group_->allgather(send.data(), int64_t(send.size() * sizeof(double)), recv.data(), "statistics");
    st.sum_h.assign(size_t(d_sae_total_), 0.0);
    st.fires.assign(size_t(d_sae_total_), 0);
    rs.since_fired.assign(size_t(d_sae_total_), 0);
    st.d_sae = d_sae_total_;
    st.sum_abs_h = 0;
    st.active = 0;
    for (int sh = 0; sh < shards_; ++sh) {
        const double* in = recv.data() + size_t(sh) * (3 * most + 2);
        const RowSlice ls = latent_slice(d_sae_total_, sh, shards_);
        for (int64_t j = 0; j < ls.count; ++j) {
            st.sum_h[size_t(ls.begin + j)] = in[j];
            st.fires[size_t(ls.begin + j)] = int64_t(in[most + j]);
            rs.since_fired[size_t(ls.begin + j)] = int64_t(in[2 * most + j]);
        }
        st.sum_abs_h += in[3 * most];
        st.active += int64_t(in[3 * most + 1]);
    }
}

void Run::finish(const std::string& reason) {
    summary_.steps = rs_.step;
    summary_.stop_reason = reason;
}

}  // namespace

bool config_key_may_change_on_resume(const std::string& key) {
    return key == "epochs" || key == "max_iterations" || key == "log_every" ||
           key == "checkpoint_every" || key == "threads";
}

TrainSummary train_run(const Config& cfg, const std::string& out_dir, bool resume, const TrainData& data,
                       const TrainHooks& hooks) {
    Trainer trainer({{cfg, out_dir, ""}}, data, hooks);
    return trainer.train(resume).at(0);
}

std::vector<TrainSummary> train_run_variants(const std::vector<Variant>& variants, const std::string& out_dir, bool resume,
                                             const TrainData& data, const TrainHooks& hooks) {
    check(!variants.empty(), "no variants to train");
    std::vector<Trainer::Spec> specs;
    const auto first = nlohmann::json::parse(config_to_json(variants[0].cfg));
    for (const Variant& v : variants) {
        const std::string who = "variant '" + one_line(v.name) + "'";
        check(!v.name.empty() && v.name.find('/') == std::string::npos && v.name != "." && v.name != "..",
              who + ": a name is a directory name");
        for (const Trainer::Spec& s : specs)
            check(s.label != v.name, who + ": the name is given twice; each variant needs its own (its output directory)");
        check(v.cfg.optimizer != "lbfgs", who + ": optimizer = \"lbfgs\" is full-batch and cannot share a stream of minibatches "
                                                "with other variants; use adam, sgd or rmsprop, or train it alone");
        const auto mine = nlohmann::json::parse(config_to_json(v.cfg));
        for (auto it = first.begin(); it != first.end(); ++it)
            check(!config_key_is_shared(it.key()) || mine[it.key()] == it.value(),
                  who + ": '" + it.key() + "' defines the data stream, which every variant shares; set it outside the variants");
        check(config_normalize(v.cfg) == config_normalize(variants[0].cfg),
              who + ": normalize resolves differently from variant '" + variants[0].name + "' (auto depends on the architecture); set normalize");
        specs.push_back({v.cfg, out_dir + "/" + v.name, v.name});
    }
    ensure_writable_dir(out_dir);
    Trainer trainer(specs, data, hooks);
    return trainer.train(resume);
}

TrainSummary train_run(const Config& cfg, const std::string& out_dir, bool resume) {
    return train_run(cfg, out_dir, resume, TrainData{}, TrainHooks{});
}

std::string train_interrupted_message(const Config& cfg, const TrainSummary& s) {
    return std::string("interrupted at ") + (cfg.optimizer == "lbfgs" ? "iteration " : "step ") + std::to_string(s.steps) +
           "; checkpoint saved, continue with --resume";
}

}  // namespace sae
