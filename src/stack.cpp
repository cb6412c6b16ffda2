// Stacked autoencoders: greedy pretraining, a softmax layer, end-to-end fine-tuning (stack.hpp).
#include "sae/stack.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "sae/classify.hpp"
#include "sae/error.hpp"
#include "sae/eval.hpp"
#include "sae/io.hpp"
#include "sae/model_file.hpp"
#include "sae/optim.hpp"

namespace sae {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

template <class T>
struct StackParams {
    std::vector<const T*> W, b;  // encoders 1..L
    const T* Ws;
    const T* bs;
};
template <class T>
StackParams<T> stack_params(const StackSpec& s, const ParamLayout& L, const T* p) {
    StackParams<T> P;
    const size_t nl = s.layers.size();
    for (size_t k = 0; k < nl; ++k) {
        P.W.push_back(p + L.views[2 * k].offset);
        P.b.push_back(p + L.views[2 * k + 1].offset);
    }
    P.Ws = p + L.views[2 * nl].offset;
    P.bs = p + L.views[2 * nl + 1].offset;
    return P;
}

// Forward through every encoder and the softmax layer's logits: ws.A[k], ws.Z [m, K].
template <class T>
void stack_forward(Backend& be, const StackSpec& s, const StackParams<T>& P, const T* X, int64_t m,
                   StackWorkspace<T>& ws) {
    check(m >= 1, "stack: empty batch");
    if (ws.Z.rows < m || ws.A.size() != s.layers.size()) ws.reserve(s, m);
    const T* in = X;
    int64_t d = s.d_in;
    for (size_t k = 0; k < s.layers.size(); ++k) {
        dense_forward(be, ws.A[k].data.data(), in, P.W[k], Trans::no, P.b[k], m, d, s.layers[k], s.activation);
        in = ws.A[k].data.data();
        d = s.layers[k];
    }
    dense_forward(be, ws.Z.data.data(), in, P.Ws, Trans::no, P.bs, m, d, s.n_classes, Activation::linear);
}

// One L-BFGS run over float parameters (the cost in float, the optimiser in double), logging
// every log_every iterations to stderr. Returns the status; params hold the final point.
struct FitResult {
    double f0 = 0, f = 0;
    int64_t iterations = 0;
    std::string stop_reason;
};
template <class Cost>
FitResult lbfgs_fit(std::vector<float>& params, int64_t max_iterations, int64_t history, int64_t log_every,
                    const std::string& what, Cost cost) {
    const int64_t n = int64_t(params.size());
    std::vector<float> p(params), g(static_cast<size_t>(n));
    auto f = [&](const double* x, double* grad) {
        for (int64_t i = 0; i < n; ++i) p[size_t(i)] = float(x[i]);
        const double J = cost(p.data(), g.data());
        for (int64_t i = 0; i < n; ++i) grad[i] = g[size_t(i)];
        return J;
    };
    LbfgsOptions options;
    options.history = int(history);
    Lbfgs opt(n, options);
    std::vector<double> x0(params.begin(), params.end());
    opt.init(x0.data(), f);
    FitResult r;
    r.f0 = opt.f();
    check(std::isfinite(r.f0), what + ": the cost is not finite at the start; check the data");
    std::fprintf(stderr, "%s: iteration 0/%lld  J=%.6g\n", what.c_str(), (long long)max_iterations, r.f0);
    while (opt.iteration() < max_iterations && opt.status() == LbfgsStatus::running) {
        opt.iterate(f);
        check(std::isfinite(opt.f()), what + ": the cost became non-finite at iteration " + std::to_string(opt.iteration()));
        const bool last = opt.iteration() >= max_iterations || opt.status() != LbfgsStatus::running;
        if (opt.iteration() % log_every == 0 || last)
            std::fprintf(stderr, "%s: iteration %lld/%lld  J=%.6g\n", what.c_str(), (long long)opt.iteration(),
                         (long long)max_iterations, opt.f());
    }
    for (int64_t i = 0; i < n; ++i) params[size_t(i)] = float(opt.x()[size_t(i)]);
    r.f = opt.f();
    r.iterations = opt.iteration();
    r.stop_reason = opt.status() == LbfgsStatus::running ? "max_iterations" : lbfgs_status_name(opt.status());
    return r;
}

}  // namespace

void validate(const StackSpec& s) {
    check(s.d_in > 0, "stack: the data has no features");
    check(!s.layers.empty(), "setting 'layers' is empty; give the hidden sizes of the stacked encoders, e.g. layers = [200, 200]");
    for (int64_t d : s.layers)
        check(d > 0, "setting 'layers' contains " + std::to_string(d) + "; every layer needs at least one hidden unit");
    check(s.n_classes >= 2, "stack: a classifier needs at least two classes");
    check(s.lambda >= 0 && std::isfinite(s.lambda), "softmax_weight_decay must be a finite number >= 0");
}

ParamLayout stack_layout(const StackSpec& s) {
    ParamLayout L;
    int64_t d = s.d_in;
    for (size_t k = 0; k < s.layers.size(); ++k) {
        const std::string e = "enc" + std::to_string(k + 1);
        L.add(e + ".W", {d, s.layers[k]});
        L.add(e + ".b", {s.layers[k]});
        d = s.layers[k];
    }
    L.add("softmax.W", {d, s.n_classes});
    L.add("softmax.b", {s.n_classes});
    return L;
}

template <class T>
void StackWorkspace<T>::reserve(const StackSpec& s, int64_t max_m) {
    A.resize(s.layers.size());
    dA.resize(s.layers.size());
    for (size_t k = 0; k < s.layers.size(); ++k) {
        A[k].resize(max_m, s.layers[k]);
        dA[k].resize(max_m, s.layers[k]);
    }
    Z.resize(max_m, s.n_classes);
    row_sums.resize(size_t(max_m));
}

template <class T>
double stack_cost(Backend& be, const StackSpec& s, const ParamLayout& layout, const T* params, const T* X,
                  const int32_t* y, int64_t m, T* grad, StackWorkspace<T>& ws) {
    const auto P = stack_params(s, layout, params);
    const int64_t K = s.n_classes, L = int64_t(s.layers.size());
    for (int64_t i = 0; i < m; ++i)
        if (y[i] < 0 || y[i] >= K)
            throw Error("stack: label " + std::to_string(y[i]) + " of sample " + std::to_string(i) + " is outside [0, " +
                        std::to_string(K) + ")");
    stack_forward(be, s, P, X, m, ws);
    // Row by row: log-sum-exp (shifted by the row's maximum), −log p(y), probabilities in place.
    T* Z = ws.Z.data.data();
    double* row_sums = ws.row_sums.data();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
        T* z = Z + i * K;
        double mx = double(z[0]);
        for (int64_t c = 1; c < K; ++c) mx = std::max(mx, double(z[c]));
        double sum = 0;
        for (int64_t c = 0; c < K; ++c) sum += std::exp(double(z[c]) - mx);
        const double lse = mx + std::log(sum);
        row_sums[i] = lse - double(z[y[i]]);
        for (int64_t c = 0; c < K; ++c) z[c] = T(std::exp(double(z[c]) - lse));
    }
    double nll = 0;
    for (int64_t i = 0; i < m; ++i) nll += row_sums[i];
    const double inv_m = 1.0 / double(m);
    double sq = 0;
    auto decayed = [&](auto&& fn) {  // every weight matrix (not the biases)
        for (int64_t k = 0; k < L; ++k) fn(layout.views[size_t(2 * k)]);
        fn(layout.views[size_t(2 * L)]);
    };
    decayed([&](const ParamView& v) {
        for (int64_t i = 0; i < v.numel(); ++i) sq += double(params[v.offset + i]) * double(params[v.offset + i]);
    });
    const double J = nll * inv_m + 0.5 * s.lambda * sq;
    if (!grad) return J;

    std::fill(grad, grad + layout.total, T(0));
    // dZ = (P − Y)/m, in place.
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
        T* z = Z + i * K;
        z[y[i]] -= T(1);
        for (int64_t c = 0; c < K; ++c) z[c] = T(double(z[c]) * inv_m);
    }
    const ParamView& vWs = layout.views[size_t(2 * L)];
    const ParamView& vbs = layout.views[size_t(2 * L + 1)];
    const T* A_last = ws.A[size_t(L - 1)].data.data();
    dense_backward(be, ws.dA[size_t(L - 1)].data.data(), grad + vWs.offset, grad + vbs.offset, Z, A_last, P.Ws,
                   Trans::no, m, s.layers[size_t(L - 1)], K);
    for (int64_t k = L - 1; k >= 0; --k) {
        T* dA = ws.dA[size_t(k)].data.data();
        const int64_t dk = s.layers[size_t(k)], dprev = k > 0 ? s.layers[size_t(k - 1)] : s.d_in;
        activation_backward(dA, ws.A[size_t(k)].data.data(), m, dk, s.activation);
        const T* in = k > 0 ? ws.A[size_t(k - 1)].data.data() : X;
        dense_backward(be, k > 0 ? ws.dA[size_t(k - 1)].data.data() : static_cast<T*>(nullptr),
                       grad + layout.views[size_t(2 * k)].offset, grad + layout.views[size_t(2 * k + 1)].offset, dA, in,
                       P.W[size_t(k)], Trans::no, m, dprev, dk);
    }
    if (s.lambda != 0)
        decayed([&](const ParamView& v) {
            for (int64_t i = 0; i < v.numel(); ++i) grad[v.offset + i] += T(s.lambda) * params[v.offset + i];
        });
    return J;
}

template <class T>
std::vector<int32_t> stack_predict(Backend& be, const StackSpec& s, const ParamLayout& layout, const T* params,
                                   const T* X, int64_t m) {
    StackWorkspace<T> ws;
    ws.reserve(s, m);
    stack_forward(be, s, stack_params(s, layout, params), X, m, ws);
    std::vector<int32_t> pred(static_cast<size_t>(m));
    for (int64_t i = 0; i < m; ++i) {
        const T* z = ws.Z.row(i);
        int32_t best = 0;
        for (int64_t c = 1; c < s.n_classes; ++c)
            if (z[c] > z[best]) best = int32_t(c);
        pred[size_t(i)] = best;
    }
    return pred;
}

void stack_check_config(const Config& cfg) {
    check(!cfg.layers.empty(),
          "setting 'layers' is empty; give the hidden sizes of the stacked encoders, e.g. layers = [200, 200] or --set layers=200,200");
    for (int64_t d : cfg.layers)
        check(d > 0, "setting 'layers' contains " + std::to_string(d) + "; every layer needs at least one hidden unit");
    check(!config_is_modern(cfg), "sae stack pretrains classic autoencoders, not architecture \"" + config_architecture(cfg) +
                                      "\"; set architecture = \"classic\" and a classic sparsity (kl, l1, none)");
    check(cfg.optimizer == "lbfgs", "sae stack trains every layer with full-batch L-BFGS, not optimizer = \"" + cfg.optimizer +
                                        "\"; set optimizer = \"lbfgs\" (max_iterations per layer)");
}

std::vector<PretrainedLayer> stack_pretrain(Backend& be, const Config& cfg, const Matrix<float>& X,
                                            const std::string& out_dir, const Normalizer& norm) {
    stack_check_config(cfg);
    std::vector<PretrainedLayer> out;
    Matrix<float> input;  // layer k's input for k ≥ 2 (the previous layer's activations)
    const int64_t nl = int64_t(cfg.layers.size());
    for (int64_t k = 0; k < nl; ++k) {
        const Matrix<float>& Xk = k == 0 ? X : input;
        const std::string dir = out_dir.empty() ? "" : out_dir + "/layer" + std::to_string(k + 1);
        PretrainedLayer layer;
        layer.cfg = cfg;
        layer.cfg.d_sae = cfg.layers[size_t(k)];
        if (k > 0) {  // the saved settings point at this layer's own input
            layer.cfg.data = dir.empty() ? "layer" + std::to_string(k + 1) + "/input.npy" : dir + "/input.npy";
            layer.cfg.normalize = "none";
            layer.cfg.max_samples = 0;
        }
        if (!dir.empty()) {
            ensure_writable_dir(dir);
            if (k > 0) npy_write_f32(dir + "/input.npy", Xk.data.data(), {Xk.rows, Xk.cols});
        }
        layer.objective = objective_create(layer.cfg, Xk.cols);
        Objective& obj = *layer.objective;
        layer.params.assign(size_t(obj.layout().total), 0.0f);
        Rng rng(uint64_t(cfg.seed) + uint64_t(k));
        obj.init(layer.params.data(), rng, Xk);
        obj.set_training(true);
        obj.set_step(0);  // denoising: one corruption for the whole L-BFGS run
        obj.reserve(Xk.rows);
        const auto t0 = Clock::now();
        const std::string what = "stack: layer " + std::to_string(k + 1) + "/" + std::to_string(nl) + " (" +
                                 std::to_string(Xk.cols) + " -> " + std::to_string(obj.d_sae()) + ")";
        const FitResult fit = lbfgs_fit(layer.params, cfg.max_iterations, cfg.lbfgs_history, cfg.log_every, what, [&](const float* p, float* g) {
            return obj.cost(be, p, Xk.data.data(), Xk.rows, g).total();
        });
        layer.report.d_in = Xk.cols;
        layer.report.d_out = obj.d_sae();
        layer.report.iterations = fit.iterations;
        layer.report.stop_reason = fit.stop_reason;
        layer.report.J = obj.cost(be, layer.params.data(), Xk.data.data(), Xk.rows, nullptr);
        layer.report.seconds = seconds_since(t0);
        if (!dir.empty()) model_save(dir, layer.cfg, obj, layer.params.data(), 1.0, k == 0 ? norm : Normalizer{});
        if (k + 1 < nl) input = encode(be, obj, layer.params.data(), Xk);
        out.push_back(std::move(layer));
    }
    return out;
}

StackReport stack_train(Backend& be, const Config& cfg, const Matrix<float>& X, const std::vector<int32_t>& labels,
                        const std::string& out_dir, StackModel* model_out, const Normalizer& norm) {
    const auto t0 = Clock::now();
    stack_check_config(cfg);
    const int64_t n = X.rows;
    check(int64_t(labels.size()) == n, "stack: " + std::to_string(labels.size()) + " labels but " + std::to_string(n) +
                                           " samples; give one label per sample");
    StackReport rep;
    rep.layers = cfg.layers;
    rep.classes = labels;
    std::sort(rep.classes.begin(), rep.classes.end());
    rep.classes.erase(std::unique(rep.classes.begin(), rep.classes.end()), rep.classes.end());
    check(!rep.classes.empty() && rep.classes.front() >= 0, "stack: labels must be non-negative integers");
    check(rep.classes.size() >= 2, "stack: every sample has label " + std::to_string(rep.classes.front()) +
                                       "; a classifier needs at least two classes");
    const int64_t K = int64_t(rep.classes.size());
    std::vector<int32_t> y(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
        y[size_t(i)] = int32_t(std::lower_bound(rep.classes.begin(), rep.classes.end(), labels[size_t(i)]) - rep.classes.begin());

    // Train / test split, deterministic by seed.
    const int64_t n_train = std::llround((1.0 - cfg.test_fraction) * double(n));
    check(n_train >= 1 && n_train <= n - 1, "test_fraction = " + std::to_string(cfg.test_fraction) + " of " + std::to_string(n) +
                                                 " samples leaves the training or the test part empty; use more samples or another test_fraction");
    std::vector<int64_t> idx(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) idx[size_t(i)] = i;
    const Split split = split_indices(idx, 1.0 - cfg.test_fraction, uint64_t(cfg.seed));
    const Matrix<float> Xtr = take_rows(X, split.train), Xte = take_rows(X, split.test);
    std::vector<int32_t> ytr, yte;
    for (int64_t i : split.train) ytr.push_back(y[size_t(i)]);
    for (int64_t i : split.test) yte.push_back(y[size_t(i)]);
    rep.n_train = Xtr.rows;
    rep.n_test = Xte.rows;
    if (!out_dir.empty()) ensure_writable_dir(out_dir);

    // 1. Greedy layer-wise pretraining on the training part.
    const std::vector<PretrainedLayer> layers = stack_pretrain(be, cfg, Xtr, out_dir, norm);
    for (const auto& l : layers) rep.pretraining.push_back(l.report);

    StackModel M;
    M.spec = {X.cols, cfg.layers, K, activation_parse(cfg.encoder_activation), cfg.softmax_weight_decay};
    validate(M.spec);
    M.layout = stack_layout(M.spec);
    M.params.assign(size_t(M.layout.total), 0.0f);
    for (size_t k = 0; k < layers.size(); ++k) {
        const ParamLayout& Lk = layers[k].objective->layout();
        for (const char* name : {"W_enc", "b_enc"}) {
            const ParamView& src = Lk.get(name);
            const ParamView& dst = M.layout.views[2 * k + (name[0] == 'b' ? 1 : 0)];
            check(src.numel() == dst.numel(), "stack: layer " + std::to_string(k + 1) + " has the wrong shape");
            std::copy(layers[k].params.begin() + src.offset, layers[k].params.begin() + src.offset + src.numel(),
                      M.params.begin() + dst.offset);
        }
    }

    // 2. Softmax regression on the last layer's features of the training part.
    const int64_t dL = cfg.layers.back();
    {
        StackWorkspace<float> ws;
        ws.reserve(M.spec, Xtr.rows);
        stack_forward(be, M.spec, stack_params(M.spec, M.layout, M.params.data()), Xtr.data.data(), Xtr.rows, ws);
        const Matrix<double> F = to_double(ws.A.back());
        const SoftmaxSpec ss{K, dL, true, cfg.softmax_weight_decay};
        SoftmaxTrainOptions so;
        so.max_iterations = cfg.softmax_iterations;
        so.lbfgs.history = int(cfg.lbfgs_history);
        std::fprintf(stderr, "stack: softmax (%lld -> %lld classes), %lld L-BFGS iterations\n", (long long)dL, (long long)K,
                     (long long)cfg.softmax_iterations);
        const SoftmaxFit fit = softmax_train(be, ss, F, ytr, so, uint64_t(cfg.seed));
        rep.softmax_cost = fit.cost;
        rep.softmax_iterations = fit.iterations;
        // θ [K, dL] (then b [K]) → softmax.W [dL, K], softmax.b [K].
        float* Ws = M.params.data() + M.layout.get("softmax.W").offset;
        float* bs = M.params.data() + M.layout.get("softmax.b").offset;
        for (int64_t c = 0; c < K; ++c) {
            for (int64_t j = 0; j < dL; ++j) Ws[j * K + c] = float(fit.params[size_t(c * dL + j)]);
            bs[c] = float(fit.params[size_t(K * dL + c)]);
        }
    }
    rep.accuracy_before = accuracy(stack_predict<float>(be, M.spec, M.layout, M.params.data(), Xte.data.data(), Xte.rows), yte);
    rep.train_accuracy_before =
        accuracy(stack_predict<float>(be, M.spec, M.layout, M.params.data(), Xtr.data.data(), Xtr.rows), ytr);
    std::fprintf(stderr, "stack: before fine-tuning: test accuracy %.4f, train accuracy %.4f\n", rep.accuracy_before,
                 rep.train_accuracy_before);

    // 3. Fine-tuning: every encoder and the softmax, by backpropagation.
    {
        StackWorkspace<float> ws;
        ws.reserve(M.spec, Xtr.rows);
        auto cost = [&](const float* p, float* g) {
            return stack_cost<float>(be, M.spec, M.layout, p, Xtr.data.data(), ytr.data(), Xtr.rows, g, ws);
        };
        if (cfg.finetune_iterations > 0) {
            const FitResult fit = lbfgs_fit(M.params, cfg.finetune_iterations, cfg.lbfgs_history, cfg.log_every, "stack: fine-tuning", cost);
            rep.finetune_cost_before = fit.f0;
            rep.finetune_cost_after = fit.f;
            rep.finetune_iterations = fit.iterations;
            rep.finetune_stop_reason = fit.stop_reason;
        } else {
            rep.finetune_cost_before = rep.finetune_cost_after = cost(M.params.data(), nullptr);
            rep.finetune_stop_reason = "finetune_iterations = 0";
        }
    }
    rep.accuracy_after = accuracy(stack_predict<float>(be, M.spec, M.layout, M.params.data(), Xte.data.data(), Xte.rows), yte);
    rep.train_accuracy_after =
        accuracy(stack_predict<float>(be, M.spec, M.layout, M.params.data(), Xtr.data.data(), Xtr.rows), ytr);
    std::fprintf(stderr, "stack: after fine-tuning: test accuracy %.4f, train accuracy %.4f\n", rep.accuracy_after,
                 rep.train_accuracy_after);
    rep.seconds = seconds_since(t0);

    if (!out_dir.empty()) {
        std::vector<TensorOut> t;
        for (const auto& v : M.layout.views) t.push_back({v.name, v.shape, DType::f32, M.params.data() + v.offset});
        std::string classes;
        for (int32_t c : rep.classes) {
            if (!classes.empty()) classes += ',';
            classes += std::to_string(c);
        }
        safetensors_write(out_dir + "/stack.safetensors", t,
                          {{"format", "sae-stack"},
                           {"activation", activation_name(M.spec.activation)},
                           {"classes", classes},
                           {"config", config_to_json(cfg, -1)}});
        write_file_atomic(out_dir + "/stack.json", stack_report_json(rep) + "\n");
    }
    if (model_out) *model_out = std::move(M);
    return rep;
}

StackReport stack_run(const Config& cfg, const std::string& labels_path, const std::string& out_dir) {
    config_validate(cfg);
    stack_check_config(cfg);
    set_num_threads(int(cfg.threads));
    ensure_writable_dir(out_dir);  // before any long work
    std::vector<int32_t> labels = labels_load(labels_path);
    Config settings = cfg;
    settings.normalize = config_normalize(cfg);
    Normalizer norm;
    const Matrix<float> X = dataset_load_fit(cfg.data, settings.normalize, cfg.max_samples, &norm);
    // max_samples keeps the first samples: keep the same labels.
    if (cfg.max_samples > 0 && int64_t(labels.size()) > X.rows && X.rows == cfg.max_samples) labels.resize(size_t(X.rows));
    check(int64_t(labels.size()) == X.rows, labels_path + ": " + std::to_string(labels.size()) + " labels but " + cfg.data +
                                                " has " + std::to_string(X.rows) + " samples; give one label per sample");
    auto be = backend_create(cfg.backend);
    return stack_train(*be, settings, X, labels, out_dir, nullptr, norm);
}

std::string stack_report_json(const StackReport& r) {
    nlohmann::ordered_json j;
    j["layers"] = r.layers;
    j["classes"] = r.classes;
    j["n_train"] = r.n_train;
    j["n_test"] = r.n_test;
    j["accuracy_before"] = r.accuracy_before;
    j["accuracy_after"] = r.accuracy_after;
    j["train_accuracy_before"] = r.train_accuracy_before;
    j["train_accuracy_after"] = r.train_accuracy_after;
    nlohmann::ordered_json pre = nlohmann::ordered_json::array();
    for (size_t k = 0; k < r.pretraining.size(); ++k) {
        const auto& l = r.pretraining[k];
        nlohmann::ordered_json o;
        o["layer"] = k + 1;
        o["d_in"] = l.d_in;
        o["d_out"] = l.d_out;
        o["iterations"] = l.iterations;
        o["stop_reason"] = l.stop_reason;
        o["J_total"] = l.J.total();
        o["J_rec"] = l.J.rec;
        o["J_weight_decay"] = l.J.weight_decay;
        o["J_sparsity"] = l.J.sparsity;
        o["J_denoise"] = l.J.denoise;
        o["seconds"] = l.seconds;
        pre.push_back(o);
    }
    j["pretraining"] = pre;
    j["softmax"] = {{"iterations", r.softmax_iterations}, {"cost", r.softmax_cost}};
    j["finetune"] = {{"iterations", r.finetune_iterations},
                     {"stop_reason", r.finetune_stop_reason},
                     {"cost_before", r.finetune_cost_before},
                     {"cost_after", r.finetune_cost_after}};
    j["seconds"] = r.seconds;
    return j.dump(2);
}

#define SAE_INSTANTIATE(T)                                                                                      \
    template struct StackWorkspace<T>;                                                                          \
    template double stack_cost<T>(Backend&, const StackSpec&, const ParamLayout&, const T*, const T*,           \
                                  const int32_t*, int64_t, T*, StackWorkspace<T>&);                             \
    template std::vector<int32_t> stack_predict<T>(Backend&, const StackSpec&, const ParamLayout&, const T*, \
                                                   const T*, int64_t);
SAE_INSTANTIATE(float)
SAE_INSTANTIATE(double)
#undef SAE_INSTANTIATE

}  // namespace sae
