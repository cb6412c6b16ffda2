// The classic (CS294A) sparse autoencoder as an Objective.
#include "sae/error.hpp"
#include "sae/objective.hpp"

namespace sae {

class ClassicObjective final : public Objective {
public:
    ClassicObjective(const Config& cfg, int64_t d_in)
        : spec_(config_model_spec(cfg, d_in)), cost_(config_cost_spec(cfg)) {
        validate(spec_, cost_);
        d_in_ = d_in;
        d_sae_ = spec_.d_sae;
        layout_ = model_layout(spec_);
    }
    std::string architecture() const override { return "classic"; }
    void init(float* params, Rng& rng, const Matrix<float>&) override { model_init(spec_, layout_, params, rng); }
    void reserve(int64_t max_m) override { ws_.reserve(spec_, max_m); }
    CostTerms cost(Backend& be, const float* params, const float* X, int64_t m, float* grad) override {
        if (ws_.H.rows < m) ws_.reserve(spec_, m);
        return model_cost<float>(be, spec_, cost_, layout_, params, X, m, grad, ws_);
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
    Workspace<float> ws_;
};

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
