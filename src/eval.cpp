#include "sae/eval.hpp"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "sae/data.hpp"
#include "sae/error.hpp"
#include "sae/io.hpp"
#include "sae/metrics.hpp"
#include "sae/model_file.hpp"

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

Matrix<float> dataset_load_fit(const std::string& path, const std::string& normalize,
                               int64_t max_samples, Normalizer* fitted) {
    SourceType source;
    Matrix<float> X = dataset_read(path, max_samples, &source);
    const Normalizer n = normalizer_fit(X, normalize_parse(normalize), source);
    normalizer_apply(n, X, source);
    check_finite(X, path + " (after normalize = " + normalize + ")");
    if (fitted) *fitted = n;
    return X;
}

Matrix<float> dataset_load(const std::string& path, const Normalizer& norm, int64_t max_samples) {
    SourceType source;
    Matrix<float> X = dataset_read(path, max_samples, &source);
    normalizer_apply(norm, X, source);
    check_finite(X, path + " (after normalize = " + normalize_name(norm.mode) + ")");
    return X;
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
    const int64_t d_in = obj.d_in(), d_sae = obj.d_sae();
    check(X.cols == d_in, "the data has " + std::to_string(X.cols) +
                              " features per sample but the model expects d_in = " +
                              std::to_string(d_in) + "; use data of the model's shape");
    obj.set_training(false);
    obj.set_dead_mask(nullptr);
    const int64_t c = std::max<int64_t>(1, std::min(chunk, X.rows));
    obj.reserve(c);
    Stats st;
    st.reset(d_in, d_sae);
    EvalResult out;
    double sparsity_sum = 0;
    for (int64_t r = 0; r < X.rows; r += c) {
        const int64_t m = std::min(c, X.rows - r);
        const CostTerms J = obj.cost(be, params, X.row(r), m, nullptr);
        out.J.weight_decay = J.weight_decay;     // depends on the weights only
        sparsity_sum += J.sparsity * double(m);  // every per-sample term is a batch mean
        st.add(X.row(r), obj.reconstruction(), obj.hidden(), m, threshold);
    }
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
    const int64_t d_in = obj.d_in(), d_sae = obj.d_sae();
    check(X.cols == d_in, "the data has " + std::to_string(X.cols) +
                              " features per sample but the model expects d_in = " +
                              std::to_string(d_in) + "; use data of the model's shape");
    obj.set_training(false);
    obj.set_dead_mask(nullptr);
    const int64_t c = std::max<int64_t>(1, std::min(chunk, X.rows));
    obj.reserve(c);
    Matrix<float> H(X.rows, d_sae);
    for (int64_t r = 0; r < X.rows; r += c) {
        const int64_t m = std::min(c, X.rows - r);
        obj.cost(be, params, X.row(r), m, nullptr);
        std::copy(obj.hidden(), obj.hidden() + m * d_sae, H.row(r));
    }
    return H;
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
