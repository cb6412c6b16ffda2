// The classic (CS294A) sparse autoencoder as an Objective, optionally denoising: in training
// mode each cost() corrupts its batch (and drops hidden units) with masks drawn from
// (seed, step) — see set_step() and model.hpp. The trainer's L-BFGS keeps step 0 for the whole
// run, i.e. one fixed corruption of the data set, so the line searches see one fixed function.
#include "sae/error.hpp"
#include "sae/objective.hpp"

namespace sae {

class ClassicObjective final : public Objective {
public:
    ClassicObjective(const Config& cfg, int64_t d_in)
        : spec_(config_model_spec(cfg, d_in)), cost_(config_cost_spec(cfg)), noise_(config_denoise_spec(cfg)),
          seed_(uint64_t(cfg.seed)) {
        validate(spec_, cost_);
        d_in_ = d_in;
        d_sae_ = spec_.d_sae;
        layout_ = model_layout(spec_);
    }
    std::string architecture() const override { return "classic"; }
    void init(float* params, Rng& rng, const Matrix<float>&) override { model_init(spec_, layout_, params, rng); }
    void reserve(int64_t max_m) override {
        ws_.reserve(spec_, max_m, noise_.active());
        if (noise_.active()) {
            Xc_.resize(max_m, d_in_);
            noise_buf_.resize(max_m, d_in_);
            drop_.resize(max_m, d_sae_);
        }
    }
    CostTerms cost(Backend& be, const float* params, const float* X, int64_t m, float* grad) override {
        if (ws_.H.rows < m) reserve(m);
        if (!training_ || !noise_.active())
            return model_cost<float>(be, spec_, cost_, layout_, params, X, m, grad, ws_);
        // The draws depend on (seed, step, batch rows) only; kept while those stay the same
        // (L-BFGS evaluates the same step many times), applied afresh to whatever X is. Data
        // replicas draw the whole batch's masks, as one process does, and take their rows' part.
        const bool corrupt = noise_.corruption != Corruption::none && noise_.level > 0;
        const bool dropout = noise_.dropout > 0;
        const int64_t M = share_rows_ > 0 ? share_rows_ : m;
        const int64_t first = share_rows_ > 0 ? replica_rows(M, share_rank_, share_size_).begin : 0;
        check(first + m <= M, "classic denoising: this replica's rows lie outside the batch");
        if (noise_buf_.rows < M) {  // (replicas: room for the whole batch's draws, once)
            noise_buf_.resize(M, d_in_);
            drop_.resize(M, d_sae_);
        }
        if (drawn_step_ != step_ || drawn_m_ != M) {
            Rng rng = corruption_rng(seed_, step_);
            draw_corruption(noise_, M, d_in_, d_sae_, noise_buf_.data.data(), dropout ? drop_.data.data() : nullptr, rng);
            drawn_step_ = step_;
            drawn_m_ = M;
        }
        const float* noise = noise_buf_.data.data() + first * d_in_;
        const float* drop = drop_.data.data() + first * d_sae_;
        if (corrupt) apply_corruption(noise_.corruption, X, noise, m * d_in_, Xc_.data.data());
        return model_cost<float>(be, spec_, cost_, layout_, params, X, m, grad, ws_, corrupt ? Xc_.data.data() : nullptr,
                                 dropout ? drop : nullptr);
    }
    void set_training(bool training) override { training_ = training; }
    void set_step(int64_t step) override { step_ = step; }
    void set_batch_share(int64_t rows, int rank, int size, std::function<void(double*, int64_t)> sum) override {
        ws_.share_rows = rows;
        ws_.share_sum = std::move(sum);
        share_rows_ = rows;
        share_rank_ = rank;
        share_size_ = size;
    }
    const float* hidden() const override { return ws_.H.data.data(); }
    const float* reconstruction() const override { return ws_.Xhat.data.data(); }

    std::vector<TensorOut> export_tensors(const float* params, double input_scale,
                                          std::vector<std::vector<float>>& scratch) const override {
        check(input_scale == 1.0, "the classic model cannot fold an input scale into its weights (its decoder may be non-linear); set normalize_activations = \"none\"");
        const float* dec = nullptr;
        if (spec_.tied) {  // materialise W_encᵀ [d_sae, d_in]
            const float* W = params + layout_.get("W_enc").offset;
            auto& Wt = scratch.emplace_back(size_t(d_sae_ * d_in_));
            for (int64_t k = 0; k < d_in_; ++k)
                for (int64_t j = 0; j < d_sae_; ++j) Wt[size_t(j * d_in_ + k)] = W[k * d_sae_ + j];
            dec = Wt.data();
        } else {
            dec = params + layout_.get("W_dec").offset;
        }
        return {
            {"W_enc", {d_in_, d_sae_}, DType::f32, params + layout_.get("W_enc").offset},
            {"b_enc", {d_sae_}, DType::f32, params + layout_.get("b_enc").offset},
            {"W_dec", {d_sae_, d_in_}, DType::f32, dec},
            {"b_dec", {d_in_}, DType::f32, params + layout_.get("b_dec").offset},
        };
    }

    void import_tensors(const std::map<std::string, TensorIn>& t, float* params,
                        const std::string& path) override {
        import_named(t, params, path, "W_enc", {d_in_, d_sae_}, true);
        import_named(t, params, path, "b_enc", {d_sae_}, true);
        import_named(t, params, path, "W_dec", {d_sae_, d_in_}, !spec_.tied);
        import_named(t, params, path, "b_dec", {d_in_}, true);
    }

    // Checks one tensor's presence, dtype and shape; copies it into params when `store`.
    void import_named(const std::map<std::string, TensorIn>& t, float* params, const std::string& path,
                      const std::string& name, const std::vector<int64_t>& shape, bool store) const;

private:
    ModelSpec spec_;
    CostSpec cost_;
    DenoiseSpec noise_;
    uint64_t seed_ = 0;
    Workspace<float> ws_;
    bool training_ = true;
    int64_t step_ = 0, drawn_step_ = -1, drawn_m_ = -1;
    int64_t share_rows_ = 0;  // data replicas: the whole batch's rows (set_batch_share), 0 = none
    int share_rank_ = 0, share_size_ = 1;
    Matrix<float> Xc_, noise_buf_, drop_;  // [m, d_in] corrupted batch and its draws, [m, d_sae] dropout
};

void Objective::set_latent_shard(Comm*, int64_t, int64_t) {
    throw Error("latent_shards > 1: the latents of a classic model cannot be sharded (its KL penalty and "
                "weight decay are not built for it); use latent_shards = 1 (data replicas)");
}

std::string shape_text(const std::vector<int64_t>& s) {
    std::string t = "[";
    for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
    return t + "]";
}

void import_tensor(const std::map<std::string, TensorIn>& t, float* dst, const std::string& path,
                   const std::string& name, const std::vector<int64_t>& shape) {
    auto it = t.find(name);
    check(it != t.end(), path + ": tensor '" + name + "' is missing");
    check(it->second.dtype == DType::f32,
          path + ": tensor '" + name + "' is " + dtype_name(it->second.dtype) + ", expected F32");
    check(it->second.shape == shape, path + ": tensor '" + name + "' has shape " + shape_text(it->second.shape) +
                                         " but cfg.json implies " + shape_text(shape));
    if (dst) std::copy(it->second.f32.begin(), it->second.f32.end(), dst);
}

void ClassicObjective::import_named(const std::map<std::string, TensorIn>& t, float* params,
                                    const std::string& path, const std::string& name,
                                    const std::vector<int64_t>& shape, bool store) const {
    import_tensor(t, store ? params + layout_.get(name).offset : nullptr, path, name, shape);
}

std::unique_ptr<Objective> make_classic_objective(const Config& cfg, int64_t d_in) {
    return std::make_unique<ClassicObjective>(cfg, d_in);
}

}  // namespace sae
