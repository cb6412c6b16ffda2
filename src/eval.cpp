#include "sae/eval.hpp"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "sae/data.hpp"
#include "sae/error.hpp"
#include "sae/io.hpp"
#include "sae/metrics.hpp"
#include "sae/model_file.hpp"
#include "sae/synth.hpp"

namespace sae {

Matrix<float> dataset_read(const std::string& path, int64_t max_samples, SourceType* source) {
    Array a = array_read(path);
    if (source) *source = a.source;
    Matrix<float> X = array_to_samples(std::move(a));
    check(X.rows > 0, path + ": the data set has no samples");
    if (max_samples > 0 && max_samples < X.rows) X.resize(max_samples, X.cols);
    check_finite(X, path);  // before normalising: a rescale could hide a NaN
    return X;
}

namespace {
// Raw samples X (finite) → normalised in place, checked again (a rescale can overflow).
Normalizer fit_apply(Matrix<float>& X, SourceType source, const std::string& normalize, const std::string& name) {
    const Normalizer n = normalizer_fit(X, normalize_parse(normalize), source);
    normalizer_apply(n, X, source);
    check_finite(X, name + " (after normalize = " + normalize + ")");
    return n;
}
void apply(const Normalizer& norm, Matrix<float>& X, SourceType source, const std::string& name) {
    normalizer_apply(norm, X, source);
    check_finite(X, name + " (after normalize = " + normalize_name(norm.mode) + ")");
}
Matrix<float> copy_of(const float* X, int64_t rows, int64_t cols) {
    Matrix<float> M(rows, cols);
    std::copy(X, X + rows * cols, M.data.begin());
    return M;
}
void check_width(const Objective& obj, int64_t cols) {
    check(cols == obj.d_in(), "the data has " + std::to_string(cols) + " features per sample but the model expects d_in = " +
                                  std::to_string(obj.d_in()) + "; use data of the model's shape");
}
// The model's forward pass over X in chunks of c rows: each() sees a chunk's first row and size.
template <class F>
void forward_chunks(Backend& be, Objective& obj, const float* params, const float* X, int64_t rows, int64_t cols,
                    int64_t chunk, F&& each) {
    check_width(obj, cols);
    obj.set_training(false);
    obj.set_dead_mask(nullptr);
    const int64_t c = std::max<int64_t>(1, std::min(chunk, rows));
    obj.reserve(c);
    for (int64_t r = 0; r < rows; r += c) {
        const int64_t m = std::min(c, rows - r);
        each(r, m, obj.cost(be, params, X + r * cols, m, nullptr));
    }
}
}  // namespace

Matrix<float> dataset_load_fit(const std::string& path, const std::string& normalize,
                               int64_t max_samples, Normalizer* fitted) {
    SourceType source;
    Matrix<float> X = dataset_read(path, max_samples, &source);
    const Normalizer n = fit_apply(X, source, normalize, path);
    if (fitted) *fitted = n;
    return X;
}

Matrix<float> dataset_load(const std::string& path, const Normalizer& norm, int64_t max_samples) {
    SourceType source;
    Matrix<float> X = dataset_read(path, max_samples, &source);
    apply(norm, X, source, path);
    return X;
}

int64_t samples_fit(const float* X, int64_t rows, int64_t cols, SourceType source, const std::string& normalize,
                    int64_t max_samples, const std::string& name, Normalizer* fitted, Matrix<float>* normalised) {
    check(rows > 0 && cols > 0, name + ": the data set has no samples");
    if (max_samples > 0 && max_samples < rows) rows = max_samples;
    check_finite(X, rows, cols, name);  // before normalising: a rescale could hide a NaN
    *normalised = {};
    if (normalize_parse(normalize) == Normalize::none) {
        if (fitted) *fitted = normalizer_fit(Matrix<float>{}, Normalize::none, source);
        return rows;
    }
    *normalised = copy_of(X, rows, cols);
    const Normalizer n = fit_apply(*normalised, source, normalize, name);
    if (fitted) *fitted = n;
    return rows;
}

void samples_apply(const float* X, int64_t rows, int64_t cols, SourceType source, const Normalizer& norm,
                   const std::string& name, Matrix<float>* normalised) {
    check(rows > 0 && cols > 0, name + ": the data set has no samples");
    check_finite(X, rows, cols, name);
    *normalised = {};
    if (norm.mode == Normalize::none) return;
    *normalised = copy_of(X, rows, cols);
    apply(norm, *normalised, source, name);
}

Normalizer model_fit_normalization(const std::string& dir, const std::string& data, bool* changed) {
    const SavedModel m = model_load(dir);
    if (changed) *changed = false;
    if (m.norm.fitted) return m.norm;
    const std::string path = data.empty() ? m.cfg.data : data;
    SourceType source;
    const Matrix<float> X = dataset_read(path, data.empty() ? m.cfg.max_samples : 0, &source);
    check(X.cols == m.objective->d_in(), path + ": samples have " + std::to_string(X.cols) +
                                            " features but the model has d_in = " + std::to_string(m.objective->d_in()) +
                                            "; give the model's training data with --data");
    const Normalizer n = normalizer_fit(X, m.norm.mode, source);
    const std::string cfg_path = dir + "/cfg.json";
    auto j = nlohmann::ordered_json::parse(read_file(cfg_path));
    j["normalize_stats"] = normalizer_to_json(n);
    write_file_atomic(cfg_path, j.dump(2) + "\n");
    if (changed) *changed = true;
    return n;
}

EvalResult evaluate(Backend& be, Objective& obj, const Config& cfg, const float* params,
                    const Matrix<float>& X, double threshold, int64_t chunk) {
    return evaluate(be, obj, cfg, params, X.data.data(), X.rows, X.cols, threshold, chunk);
}

EvalResult evaluate(Backend& be, Objective& obj, const Config& cfg, const float* params,
                    const float* X, int64_t rows, int64_t cols, double threshold, int64_t chunk) {
    Stats st;
    st.reset(obj.d_in(), obj.d_sae());
    EvalResult out;
    double sparsity_sum = 0;
    forward_chunks(be, obj, params, X, rows, cols, chunk, [&](int64_t r, int64_t m, const CostTerms& J) {
        out.J.weight_decay = J.weight_decay;     // depends on the weights only
        sparsity_sum += J.sparsity * double(m);  // every per-sample term is a batch mean
        st.add(X + r * cols, obj.reconstruction(), obj.hidden(), m, threshold);
    });
    out.n = st.n;
    out.J.rec = 0.5 * st.sq_err / double(st.n);
    out.J.sparsity = sparsity_sum / double(st.n);
    const auto rho_hat = st.rho_hat();
    if (config_architecture(cfg) == "classic" && cfg.sparsity == "kl") {
        double s = 0;  // KL is not a per-sample mean: use ρ̂ over the whole set
        for (double r : rho_hat) s += kl_divergence(cfg.rho, r);
        out.J.sparsity = cfg.beta * s;
    }
    out.mse = st.mse();
    out.fvu = st.fvu();
    out.explained_variance = st.explained_variance();
    out.cossim = st.cossim();
    out.l2_ratio = st.l2_ratio();
    out.relative_reconstruction_bias = st.relative_reconstruction_bias();
    out.l0 = st.l0();
    out.dead_fraction = st.dead_fraction();
    out.dense_fraction = st.dense_fraction();
    out.density = st.density_histogram();
    double sum = 0;
    out.rho_hat_min = rho_hat.empty() ? 0 : rho_hat[0];
    out.rho_hat_max = out.rho_hat_min;
    for (double r : rho_hat) {
        sum += r;
        out.rho_hat_min = std::min(out.rho_hat_min, r);
        out.rho_hat_max = std::max(out.rho_hat_max, r);
    }
    out.mean_activation = rho_hat.empty() ? 0 : sum / double(rho_hat.size());
    return out;
}

Matrix<float> encode(Backend& be, Objective& obj, const float* params, const Matrix<float>& X,
                     int64_t chunk) {
    check_width(obj, X.cols);
    Matrix<float> H(X.rows, obj.d_sae());
    encode(be, obj, params, X.data.data(), X.rows, X.cols, H.data.data(), chunk);
    return H;
}

void encode(Backend& be, Objective& obj, const float* params, const float* X, int64_t rows, int64_t cols,
            float* H, int64_t chunk) {
    const int64_t d_sae = obj.d_sae();
    forward_chunks(be, obj, params, X, rows, cols, chunk, [&](int64_t r, int64_t m, const CostTerms&) {
        std::copy(obj.hidden(), obj.hidden() + m * d_sae, H + r * d_sae);
    });
}

void reconstruct(Backend& be, Objective& obj, const float* params, const float* X, int64_t rows, int64_t cols,
                 float* Xhat, int64_t chunk) {
    const int64_t d_in = obj.d_in();
    forward_chunks(be, obj, params, X, rows, cols, chunk, [&](int64_t r, int64_t m, const CostTerms&) {
        std::copy(obj.reconstruction(), obj.reconstruction() + m * d_in, Xhat + r * d_in);
    });
}

void decode(Backend& be, const Objective& obj, const Config& cfg, const float* params, const float* H,
            int64_t rows, float* Xhat) {
    std::vector<std::vector<float>> scratch;
    const float *W_dec = nullptr, *b_dec = nullptr;
    for (const auto& t : obj.export_tensors(params, 1.0, scratch)) {
        if (t.name == "W_dec") W_dec = static_cast<const float*>(t.data);
        if (t.name == "b_dec") b_dec = static_cast<const float*>(t.data);
    }
    check(W_dec && b_dec, "model: no W_dec or b_dec tensor");
    const Activation g = config_architecture(cfg) == "classic" ? activation_parse(cfg.decoder_activation) : Activation::linear;
    if (rows > 0) dense_forward<float>(be, Xhat, H, W_dec, Trans::no, b_dec, rows, obj.d_sae(), obj.d_in(), g);
}

std::string eval_json(const EvalResult& r, const MmcsResult* mm, int64_t G) {
    nlohmann::ordered_json j;
    j["J_total"] = r.J.total();
    j["J_rec"] = r.J.rec;
    j["J_weight_decay"] = r.J.weight_decay;
    j["J_sparsity"] = r.J.sparsity;
    j["J_denoise"] = r.J.denoise;  // 0: evaluation never corrupts
    j["mse"] = r.mse;
    j["fvu"] = r.fvu;
    j["explained_variance"] = r.explained_variance;
    j["cossim"] = r.cossim;
    j["l2_ratio"] = r.l2_ratio;
    j["relative_reconstruction_bias"] = r.relative_reconstruction_bias;
    j["l0"] = r.l0;
    j["mean_activation"] = r.mean_activation;
    j["dead_fraction"] = r.dead_fraction;
    j["dense_fraction"] = r.dense_fraction;
    j["density_log10_hist"] = {{"edges", r.density.edges}, {"counts", r.density.counts}, {"never", r.density.never}};
    j["rho_hat_min"] = r.rho_hat_min;
    j["rho_hat_max"] = r.rho_hat_max;
    j["samples"] = r.n;
    if (mm) {
        j["mmcs"] = mm->mmcs;
        j["mmcs_min"] = mm->min;
        j["mmcs_median"] = mm->median;
        j["mmcs_frac_above_0.9"] = mm->frac_above_0_9;
        j["ground_truth_features"] = G;
    }
    return j.dump();
}

GradcheckRun gradcheck_settings(const Config& cfg, int64_t d_in, int64_t d_sae, int64_t samples, double eps) {
    GradcheckRun g;
    g.spec = config_model_spec(cfg, d_in);
    g.spec.d_sae = d_sae;
    g.cost = config_cost_spec(cfg);
    // Every term on: a zero coefficient would leave its gradient unchecked.
    if (g.cost.weight_decay == 0) g.cost.weight_decay = 1e-3;
    if (g.cost.sparsity == Sparsity::kl && g.cost.beta == 0) g.cost.beta = 3;
    if (g.cost.sparsity == Sparsity::l1 && g.cost.l1_coefficient == 0) g.cost.l1_coefficient = 1e-3;
    Rng rng(uint64_t(cfg.seed) + 12345);
    std::vector<double> X(size_t(samples * d_in));
    for (auto& x : X) x = rng.uniform(0.05, 0.95);
    g.result = gradcheck(g.spec, g.cost, X, samples, uint64_t(cfg.seed), eps);
    return g;
}

GradcheckResult gradcheck(const ModelSpec& spec, const CostSpec& cost,
                          const std::vector<double>& X, int64_t m, uint64_t seed, double eps) {
    validate(spec, cost);
    auto be = backend_create("onednn");
    const ParamLayout layout = model_layout(spec);
    std::vector<double> x(size_t(layout.total)), ana(size_t(layout.total));
    Rng rng(seed);
    model_init(spec, layout, x.data(), rng);
    for (const char* b : {"b_enc", "b_dec"}) {
        const auto& v = layout.get(b);
        for (int64_t i = 0; i < v.numel(); ++i) x[size_t(v.offset + i)] = rng.uniform(-0.3, 0.3);
    }
    Workspace<double> ws;
    ws.reserve(spec, m);
    model_cost<double>(*be, spec, cost, layout, x.data(), X.data(), m, ana.data(), ws);
    auto f = [&]() {
        return model_cost<double>(*be, spec, cost, layout, x.data(), X.data(), m, nullptr, ws).total();
    };
    GradcheckResult r;
    double diff_all = 0, sum_all = 0;
    for (const auto& v : layout.views) {
        double diff = 0, sum = 0;
        for (int64_t i = v.offset; i < v.offset + v.numel(); ++i) {
            const double orig = x[size_t(i)];
            x[size_t(i)] = orig + eps;
            const double fp = f();
            x[size_t(i)] = orig - eps;
            const double fm = f();
            x[size_t(i)] = orig;
            const double num = (fp - fm) / (2 * eps);
            diff += (num - ana[size_t(i)]) * (num - ana[size_t(i)]);
            sum += (num + ana[size_t(i)]) * (num + ana[size_t(i)]);
        }
        r.per_tensor.emplace_back(v.name, sum > 0 ? std::sqrt(diff / sum) : std::sqrt(diff));
        diff_all += diff;
        sum_all += sum;
    }
    r.overall = sum_all > 0 ? std::sqrt(diff_all / sum_all) : std::sqrt(diff_all);
    return r;
}

}  // namespace sae
