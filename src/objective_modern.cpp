// Modern interpretability SAEs (standard/L1, TopK, BatchTopK, JumpReLU) as an Objective, with
// today's training practice: b_dec initialised from the data, unit-norm decoder rows, AuxK on
// dead latents, BatchTopK's inference threshold learnt as a running mean.
#include <algorithm>
#include <cmath>

#include "sae/error.hpp"
#include "sae/modern.hpp"
#include "sae/objective.hpp"

namespace sae {

// Weiszfeld's iteration for the point minimising the sum of Euclidean distances to the rows of
// X [n, d], started at the mean; out [d]. Distances below 1e-12 are skipped (a row at the
// current estimate would divide by zero).
void geometric_median(const Matrix<float>& X, double* out, int iterations, double tol) {
    const int64_t n = X.rows, d = X.cols;
    std::vector<double> y(static_cast<size_t>(d), 0.0), next(static_cast<size_t>(d));
    for (int64_t i = 0; i < n; ++i)
        for (int64_t k = 0; k < d; ++k) y[size_t(k)] += double(X(i, k)) / double(n);
    for (int it = 0; it < iterations; ++it) {
        std::fill(next.begin(), next.end(), 0.0);
        double wsum = 0;
        for (int64_t i = 0; i < n; ++i) {
            double dist = 0;
            for (int64_t k = 0; k < d; ++k) {
                const double e = double(X(i, k)) - y[size_t(k)];
                dist += e * e;
            }
            dist = std::sqrt(dist);
            if (dist < 1e-12) continue;
            const double w = 1.0 / dist;
            wsum += w;
            for (int64_t k = 0; k < d; ++k) next[size_t(k)] += w * double(X(i, k));
        }
        if (wsum == 0) break;
        double change = 0, norm = 0;
        for (int64_t k = 0; k < d; ++k) {
            next[size_t(k)] /= wsum;
            change += (next[size_t(k)] - y[size_t(k)]) * (next[size_t(k)] - y[size_t(k)]);
            norm += next[size_t(k)] * next[size_t(k)];
        }
        y.swap(next);
        if (std::sqrt(change) <= tol * std::max(1.0, std::sqrt(norm))) break;
    }
    std::copy(y.begin(), y.end(), out);
}

ModernSpec modern_spec(const Config& cfg, int64_t d_in) {
    ModernSpec s;
    s.d_in = d_in;
    s.d_sae = cfg.d_sae;
    s.arch = arch_parse(config_architecture(cfg));
    s.k = cfg.k;
    s.apply_b_dec_to_input = cfg.apply_b_dec_to_input;
    s.l1_decoder_norm = cfg.l1_decoder_norm;
    s.l1_coefficient = cfg.l1_coefficient;
    s.l0_coefficient = cfg.l0_coefficient;
    s.bandwidth = cfg.bandwidth;
    s.initial_threshold = cfg.jumprelu_init_threshold;
    s.k_aux = !arch_info(s.arch).aux_k ? 0 : (cfg.k_aux < 0 ? std::max<int64_t>(1, std::min(d_in / 2, cfg.d_sae)) : cfg.k_aux);
    s.aux_coefficient = cfg.aux_coefficient;
    if (arch_info(s.arch).nested) {
        s.group_ends = matryoshka_group_ends(cfg.matryoshka_groups, cfg.d_sae);
        s.group_weights = matryoshka_group_weights(cfg.matryoshka_weights, s.group_ends.size());
    }
    return s;
}

namespace {

class ModernObjective final : public Objective {
public:
    ModernObjective(const Config& cfg, int64_t d_in)
        : cfg_(cfg), spec_(modern_spec(cfg, d_in)), batch_threshold_(arch_info(spec_.arch).threshold == ThresholdKind::batch) {
        validate(spec_);
        d_in_ = d_in;
        d_sae_ = spec_.d_sae;
        layout_ = modern_layout(spec_);
        ws_.precision = precision_parse(cfg.dtype);  // bf16: products only; params stay fp32
        ws_.screen = screen_parse(cfg.screen);
        ws_.dense_h = !screened_dense();
    }
    std::string architecture() const override { return arch_name(spec_.arch); }

    void init(float* params, Rng& rng, const Matrix<float>& sample) override {
        modern_init(spec_, layout_, params, rng);
        float* b_dec = params + layout_.get("b_dec").offset;
        if (cfg_.b_dec_init == "zero" || sample.rows == 0) return;
        std::vector<double> b(size_t(d_in_), 0.0);
        if (cfg_.b_dec_init == "mean") {
            for (int64_t i = 0; i < sample.rows; ++i)
                for (int64_t k = 0; k < d_in_; ++k) b[size_t(k)] += double(sample(i, k)) / double(sample.rows);
        } else {
            geometric_median(sample, b.data(), 100, 1e-7);
        }
        for (int64_t k = 0; k < d_in_; ++k) b_dec[k] = float(b[size_t(k)]);
    }
    void reserve(int64_t max_m) override {
        ws_.reserve(spec_, max_m);
        hdense_.resize(screened_dense() ? size_t(max_m * d_sae_) : 0);
        reserved_ = max_m;
    }
    void set_batch_share(int64_t rows, int rank, int size, std::function<void(double*, int64_t)> sum) override {
        // Screened BatchTopK bounds the batch's cut from this process's rows alone; with replicas
        // the cut is the whole batch's, which that bound does not cover.
        if (size > 1 && spec_.arch == Arch::batchtopk && ws_.screen != Screen::off)
            throw Error("screen = " + screen_name(ws_.screen) + " with batchtopk is not supported across " +
                        std::to_string(size) + " data replicas (the screened cut is bounded per process); "
                        "use screen = off under mpirun, or one process");
        ws_.share = {rows, rank, size, std::move(sum)};
    }

    void set_latent_shard(Comm* group, int64_t begin, int64_t count) override {
        check(ws_.screen == Screen::off, "latent_shards > 1: screen = " + screen_name(ws_.screen) +
                                             " is not supported with latent shards yet; use screen = off");
        check(count >= 1, "latent_shards = " + std::to_string(group->size()) + " leaves a shard without latents (d_sae = " +
                              std::to_string(spec_.d_sae) + "); use fewer shards");
        spec_.latents_total = spec_.latents_total > 0 ? spec_.latents_total : spec_.d_sae;
        spec_.latent_begin = begin;
        spec_.d_sae = count;
        d_sae_ = count;
        layout_ = modern_layout(spec_);
        ws_.shards = group;
    }

    CostTerms cost(Backend& be, const float* params, const float* X, int64_t m, float* grad) override {
        if (reserved_ < m) reserve(m);
        const double thr = (batch_threshold_ && !training_) ? std::max(0.0, threshold_) : -1.0;
        const CostTerms J = modern_cost<float>(be, spec_, layout_, params, X, m, grad, ws_, dead_, thr, scale_);
        if (batch_threshold_ && training_ && grad) {
            double t = batchtopk_min_kept(ws_, m, d_sae_);
            if (ws_.share.rows > 0) {  // the smallest kept over every replica's rows
                std::vector<double> all(size_t(ws_.share.size), 0.0);
                all[size_t(ws_.share.rank)] = t;
                ws_.share.sum(all.data(), ws_.share.size);
                t = -1;
                for (double v : all)
                    if (v >= 0 && (t < 0 || v < t)) t = v;
            }
            if (ws_.shards && ws_.shards->size() > 1) {  // and over every shard's latents
                std::vector<double> all(size_t(ws_.shards->size()));
                ws_.shards->allgather(&t, sizeof t, all.data(), "batch statistics");
                t = -1;
                for (double v : all)
                    if (v >= 0 && (t < 0 || v < t)) t = v;
            }
            if (t >= 0) threshold_ = threshold_ < 0 ? t : 0.99 * threshold_ + 0.01 * t;
        }
        if (screened_dense()) {  // the screened lists scattered into the dense hidden()
            float* H = hdense_.data();
            std::fill(H, H + m * d_sae_, 0.0f);
            const SparseRows<float>& A = ws_.act;
            for (int64_t i = 0; i < m; ++i)
                for (int64_t e = A.beg[size_t(i)]; e < A.end[size_t(i)]; ++e)
                    H[i * d_sae_ + A.col[size_t(e)]] = A.val[size_t(e)];
        }
        return J;
    }
    const float* hidden() const override { return screened_dense() ? hdense_.data() : ws_.H.data.data(); }
    const float* reconstruction() const override { return ws_.Xhat.data.data(); }
    void set_dense_hidden(bool on) override {
        if (want_dense_ == on) return;
        want_dense_ = on;
        ws_.dense_h = on && !screened_dense();
        if (reserved_ > 0) reserve(reserved_);  // buffers differ (see ModernWorkspace)
    }
    const ActiveRows* active_rows() const override {
        if (want_dense_ || !ws_.sparse_used) return nullptr;
        rows_ = {ws_.act.beg.data(), ws_.act.end.data(), ws_.act.col.data(), ws_.act.val.data()};
        return &rows_;
    }

    void before_update(const float* params, float* grad) override {
        if (cfg_.decoder_unit_norm) decoder_remove_parallel_grad(spec_, layout_, params, grad);
    }
    void after_update(float* params) override {
        if (cfg_.decoder_unit_norm) decoder_normalize_rows(spec_, layout_, params);
    }
    void set_training(bool training) override { training_ = training; }
    void set_dead_mask(const uint8_t* dead) override { dead_ = dead; }
    void set_sparsity_scale(double scale) override { scale_ = scale; }

    std::map<std::string, double> extra_state() const override {
        if (batch_threshold_) return {{"threshold", threshold_}};
        return {};
    }
    void set_extra_state(const std::map<std::string, double>& s) override {
        if (auto it = s.find("threshold"); it != s.end()) threshold_ = it->second;
    }

    // Training saw x·s; the saved model takes raw x: W_enc·s, W_dec/s, b_dec/s (b_enc and the
    // thresholds act on pre-activations, which are unchanged).
    std::vector<TensorOut> export_tensors(const float* params, double s,
                                          std::vector<std::vector<float>>& scratch) const override {
        auto scaled = [&](const char* name, double f) -> const float* {
            const auto& v = layout_.get(name);
            if (f == 1.0) return params + v.offset;
            auto& buf = scratch.emplace_back(params + v.offset, params + v.offset + v.numel());
            for (auto& x : buf) x = float(double(x) * f);
            return buf.data();
        };
        const ArchInfo& row = arch_info(spec_.arch);
        std::vector<TensorOut> t = {
            {"W_enc", {d_in_, d_sae_}, DType::f32, scaled("W_enc", s)},
            {row.enc_bias, {d_sae_}, DType::f32, params + layout_.get(row.enc_bias).offset},
            {"W_dec", {d_sae_, d_in_}, DType::f32, scaled("W_dec", 1.0 / s)},
            {"b_dec", {d_in_}, DType::f32, scaled("b_dec", 1.0 / s)},
        };
        // The row's own [d_sae] parameters act on pre-activations, which the scale leaves alone.
        for (const char* name : row.extra)
            if (row.threshold != ThresholdKind::learnt || std::string(name) != "log_threshold")
                t.push_back({name, {d_sae_}, DType::f32, params + layout_.get(name).offset});
        if (row.threshold == ThresholdKind::learnt) {
            const auto& v = layout_.get("log_threshold");
            auto& th = scratch.emplace_back(size_t(d_sae_));
            for (int64_t j = 0; j < d_sae_; ++j) th[size_t(j)] = std::exp(params[v.offset + j]);
            t.push_back({"threshold", {d_sae_}, DType::f32, th.data()});
        } else if (row.threshold == ThresholdKind::batch) {
            auto& th = scratch.emplace_back(size_t(d_sae_), float(std::max(0.0, threshold_)));
            t.push_back({"threshold", {d_sae_}, DType::f32, th.data()});
        }
        return t;
    }

    void import_tensors(const std::map<std::string, TensorIn>& t, float* params,
                        const std::string& path) override {
        const ArchInfo& row = arch_info(spec_.arch);
        for (const char* name : {"W_enc", row.enc_bias, "W_dec", "b_dec"})
            import_tensor(t, params + layout_.get(name).offset, path, name, layout_.get(name).shape);
        for (const char* name : row.extra)
            if (row.threshold != ThresholdKind::learnt || std::string(name) != "log_threshold")
                import_tensor(t, params + layout_.get(name).offset, path, name, {d_sae_});
        if (row.threshold != ThresholdKind::none) {
            std::vector<float> th(static_cast<size_t>(d_sae_));
            import_tensor(t, th.data(), path, "threshold", {d_sae_});
            for (float v : th)
                check(std::isfinite(v) && v >= 0, path + ": tensor 'threshold' holds a negative or non-finite value");
            if (row.threshold == ThresholdKind::learnt) {
                const auto& v = layout_.get("log_threshold");
                for (int64_t j = 0; j < d_sae_; ++j)
                    params[v.offset + j] = std::log(std::max(th[size_t(j)], 1e-30f));
            } else {
                for (float v : th)
                    check(v == th[0], path + ": " + row.name + " 'threshold' must hold one value repeated; per-latent thresholds are a jumprelu model");
                threshold_ = th[0];
            }
        }
    }

private:
    // Screened TopK asked for a dense hidden() (encode, eval): the screened path keeps lists only
    // and cost() scatters them into hdense_, so every use of the model sees the values and
    // selections of the screening definition (docs/performance.md "Screened TopK").
    bool screened_dense() const {
        return want_dense_ && spec_.arch == Arch::topk && ws_.screen != Screen::off && ws_.path != ProductPath::dense;
    }
    Config cfg_;
    ModernSpec spec_;
    ModernWorkspace<float> ws_;
    mutable ActiveRows rows_;  // active_rows() view of ws_.act
    bool want_dense_ = true;   // set_dense_hidden
    std::vector<float> hdense_;  // [reserved, d_sae] when screened_dense()
    int64_t reserved_ = 0;
    const uint8_t* dead_ = nullptr;
    double scale_ = 1.0;
    bool batch_threshold_;     // the row learns one inference threshold from training batches
    double threshold_ = -1.0;  // BatchTopK running threshold; < 0 until the first training batch
    bool training_ = true;
};

}  // namespace

std::unique_ptr<Objective> make_modern_objective(const Config& cfg, int64_t d_in) {
    return std::make_unique<ModernObjective>(cfg, d_in);
}

}  // namespace sae
