#include "sae/eval.hpp"

#include <algorithm>
#include <cmath>

#include "sae/data.hpp"
#include "sae/error.hpp"
#include "sae/metrics.hpp"

namespace sae {

Matrix<float> dataset_load(const std::string& path, const std::string& normalize,
                           int64_t max_samples) {
    Array a = array_read(path);
    const SourceType source = a.source;
    Matrix<float> X = array_to_samples(std::move(a));
    check(X.rows > 0, path + ": the data set has no samples");
    if (max_samples > 0 && max_samples < X.rows) X.resize(max_samples, X.cols);
    normalize_samples(X, normalize_parse(normalize), source);
    check_finite(X, path);
    return X;
}

EvalResult evaluate(Backend& be, const ModelSpec& spec, const CostSpec& cost,
                    const ParamLayout& layout, const float* params, const Matrix<float>& X,
                    double threshold, int64_t chunk) {
    check(X.cols == spec.d_in, "the data has " + std::to_string(X.cols) +
                                   " features per sample but the model expects d_in = " +
                                   std::to_string(spec.d_in) + "; use data of the model's shape");
    const auto P = model_params(spec, layout, const_cast<float*>(params));
    const int64_t c = std::min(chunk, X.rows);
    Matrix<float> H(c, spec.d_sae), Xhat(c, spec.d_in);
    Stats st;
    st.reset(spec.d_in, spec.d_sae);
    for (int64_t r = 0; r < X.rows; r += c) {
        const int64_t m = std::min(c, X.rows - r);
        dense_forward(be, H.data.data(), X.row(r), P.W_enc, Trans::no, P.b_enc, m, spec.d_in,
                      spec.d_sae, spec.encoder);
        dense_forward(be, Xhat.data.data(), H.data.data(), P.W_dec, P.dec_trans, P.b_dec, m,
                      spec.d_sae, spec.d_in, spec.decoder);
        st.add(X.row(r), Xhat.data.data(), H.data.data(), m, threshold);
    }
    EvalResult out;
    out.n = st.n;
    out.J.rec = 0.5 * st.sq_err / double(st.n);
    double wd = 0;
    for (const auto& v : layout.views) {
        if (v.name != "W_enc" && v.name != "W_dec") continue;
        for (int64_t i = 0; i < v.numel(); ++i) wd += double(params[v.offset + i]) * params[v.offset + i];
    }
    out.J.weight_decay = 0.5 * cost.weight_decay * wd * (spec.tied ? 2.0 : 1.0);
    const auto rho_hat = st.rho_hat();
    if (cost.sparsity == Sparsity::kl) {
        double s = 0;
        for (double r : rho_hat) s += kl_divergence(cost.rho, r);
        out.J.sparsity = cost.beta * s;
    } else if (cost.sparsity == Sparsity::l1) {
        out.J.sparsity = cost.l1_coefficient * st.sum_abs_h / double(st.n);
    }
    out.mse = st.mse();
    out.fvu = st.fvu();
    out.l0 = st.l0();
    out.dead_fraction = st.dead_fraction();
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

Matrix<float> encode(Backend& be, const ModelSpec& spec, const ParamLayout& layout,
                     const float* params, const Matrix<float>& X, int64_t chunk) {
    check(X.cols == spec.d_in, "the data has " + std::to_string(X.cols) +
                                   " features per sample but the model expects d_in = " +
                                   std::to_string(spec.d_in) + "; use data of the model's shape");
    const auto P = model_params(spec, layout, const_cast<float*>(params));
    Matrix<float> H(X.rows, spec.d_sae);
    for (int64_t r = 0; r < X.rows; r += chunk) {
        const int64_t m = std::min(chunk, X.rows - r);
        dense_forward(be, H.row(r), X.row(r), P.W_enc, Trans::no, P.b_enc, m, spec.d_in,
                      spec.d_sae, spec.encoder);
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
