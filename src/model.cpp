#include "sae/model.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "sae/error.hpp"

namespace sae {

namespace {
constexpr double kRhoClamp = 1e-12;

template <class T>
inline T sigmoid(T z) {
    // Two branches so exp never overflows: the result stays in [0, 1] for any finite z.
    if (z >= T(0)) return T(1) / (T(1) + std::exp(-z));
    const T e = std::exp(z);
    return e / (T(1) + e);
}

template <class T>
inline T apply(Activation a, T z) {
    switch (a) {
        case Activation::sigmoid: return sigmoid(z);
        case Activation::relu: return z > T(0) ? z : T(0);
        case Activation::tanh: return std::tanh(z);
        case Activation::linear: return z;
    }
    return z;
}

// Derivative expressed through the activation's output y.
template <class T>
inline T derivative_from_output(Activation a, T y) {
    switch (a) {
        case Activation::sigmoid: return y * (T(1) - y);
        case Activation::relu: return y > T(0) ? T(1) : T(0);
        case Activation::tanh: return T(1) - y * y;
        case Activation::linear: return T(1);
    }
    return T(1);
}

double clamp_rho(double r) { return std::clamp(r, kRhoClamp, 1.0 - kRhoClamp); }

// Sequential sum: per-row partial sums are computed in parallel, combined here in row order so
// the result does not depend on which thread finished first.
double sum_in_order(const double* v, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += v[i];
    return s;
}

// Grows M to at least [m, n] (no allocation once large enough).
template <class T>
void ensure_size(Matrix<T>& M, int64_t m, int64_t n) {
    if (M.cols != n || int64_t(M.data.size()) < m * n) M.resize(m, n);
}
}  // namespace

Activation activation_parse(const std::string& name) {
    if (name == "sigmoid") return Activation::sigmoid;
    if (name == "relu") return Activation::relu;
    if (name == "tanh") return Activation::tanh;
    if (name == "linear") return Activation::linear;
    throw Error("unknown activation '" + name + "'; use one of: sigmoid, relu, tanh, linear");
}
std::string activation_name(Activation a) {
    switch (a) {
        case Activation::sigmoid: return "sigmoid";
        case Activation::relu: return "relu";
        case Activation::tanh: return "tanh";
        case Activation::linear: return "linear";
    }
    return "?";
}
Sparsity sparsity_parse(const std::string& name) {
    if (name == "none") return Sparsity::none;
    if (name == "kl") return Sparsity::kl;
    if (name == "l1") return Sparsity::l1;
    throw Error("unknown sparsity '" + name + "'; use one of: kl, l1, none");
}
Corruption corruption_parse(const std::string& name) {
    if (name == "none") return Corruption::none;
    if (name == "masking") return Corruption::masking;
    if (name == "gaussian") return Corruption::gaussian;
    throw Error("unknown corruption '" + name + "'; use one of: none, masking, gaussian");
}
std::string corruption_name(Corruption c) {
    switch (c) {
        case Corruption::none: return "none";
        case Corruption::masking: return "masking";
        case Corruption::gaussian: return "gaussian";
    }
    return "?";
}

Rng corruption_rng(uint64_t seed, int64_t step) {
    // A mix distinct from the epoch-order and initialisation seeds; Rng's splitmix spreads it.
    return Rng(seed * 0xd1b54a32d192ed03ULL + uint64_t(step) * 0x8cb92ba72f3d8dd7ULL + 0x632be59bd9b4e019ULL);
}

template <class T>
void draw_corruption(const DenoiseSpec& spec, int64_t m, int64_t d_in, int64_t d_sae, T* noise, T* drop,
                     Rng& rng) {
    const int64_t n = m * d_in;
    if (spec.corruption == Corruption::masking)
        for (int64_t i = 0; i < n; ++i) noise[i] = rng.uniform() < spec.level ? T(0) : T(1);
    else if (spec.corruption == Corruption::gaussian)
        for (int64_t i = 0; i < n; ++i) noise[i] = T(spec.level * rng.normal());
    if (!drop) return;
    const int64_t nh = m * d_sae;
    if (spec.dropout <= 0) {
        std::fill(drop, drop + nh, T(1));
        return;
    }
    const T keep = T(1.0 / (1.0 - spec.dropout));
    for (int64_t i = 0; i < nh; ++i) drop[i] = rng.uniform() < spec.dropout ? T(0) : keep;
}

template <class T>
void apply_corruption(Corruption c, const T* X, const T* noise, int64_t n, T* Xc) {
    if (c == Corruption::masking)
        for (int64_t i = 0; i < n; ++i) Xc[i] = X[i] * noise[i];
    else if (c == Corruption::gaussian)
        for (int64_t i = 0; i < n; ++i) Xc[i] = X[i] + noise[i];
    else
        std::copy(X, X + n, Xc);
}

std::string sparsity_name(Sparsity s) {
    switch (s) {
        case Sparsity::none: return "none";
        case Sparsity::kl: return "kl";
        case Sparsity::l1: return "l1";
    }
    return "?";
}

void validate(const ModelSpec& model, const CostSpec& cost) {
    check(model.d_in > 0, "d_in must be positive (the data has no features?)");
    check(model.d_sae > 0, "d_sae must be positive; set d_sae to the number of hidden units");
    check(cost.sparsity != Sparsity::kl || model.encoder == Activation::sigmoid,
          "sparsity = \"kl\" needs activations in (0,1) but encoder_activation is \"" +
              activation_name(model.encoder) +
              "\"; set encoder_activation = \"sigmoid\" or use sparsity = \"l1\"");
    check(cost.sparsity != Sparsity::kl || (cost.rho > 0 && cost.rho < 1),
          "rho must be strictly between 0 and 1 for sparsity = \"kl\"");
    check(cost.beta >= 0 && std::isfinite(cost.beta), "beta must be a finite number >= 0");
    check(cost.weight_decay >= 0 && std::isfinite(cost.weight_decay),
          "weight_decay must be a finite number >= 0");
    check(cost.l1_coefficient >= 0 && std::isfinite(cost.l1_coefficient),
          "l1_coefficient must be a finite number >= 0");
    check(cost.gamma >= 0 && std::isfinite(cost.gamma), "gamma must be a finite number >= 0");
}

ParamLayout model_layout(const ModelSpec& spec) {
    ParamLayout L;
    L.add("W_enc", {spec.d_in, spec.d_sae});
    L.add("b_enc", {spec.d_sae});
    if (!spec.tied) L.add("W_dec", {spec.d_sae, spec.d_in});
    L.add("b_dec", {spec.d_in});
    return L;
}

template <class T>
void model_init(const ModelSpec& spec, const ParamLayout& layout, T* params, Rng& rng) {
    const double r = std::sqrt(6.0) / std::sqrt(double(spec.d_in + spec.d_sae + 1));
    std::fill(params, params + layout.total, T(0));
    for (const auto& v : layout.views) {
        if (v.name != "W_enc" && v.name != "W_dec") continue;
        T* p = params + v.offset;
        for (int64_t i = 0; i < v.numel(); ++i) p[i] = T(rng.uniform(-r, r));
    }
}

template <class T>
ModelParams<T> model_params(const ModelSpec& spec, const ParamLayout& layout, T* flat) {
    ModelParams<T> p;
    p.W_enc = flat + layout.get("W_enc").offset;
    p.b_enc = flat + layout.get("b_enc").offset;
    p.b_dec = flat + layout.get("b_dec").offset;
    if (spec.tied) {
        p.W_dec = p.W_enc;
        p.dec_trans = Trans::yes;
    } else {
        p.W_dec = flat + layout.get("W_dec").offset;
        p.dec_trans = Trans::no;
    }
    return p;
}

template <class T>
void dense_forward(Backend& be, T* out, const T* in, const T* W, Trans tw, const T* b, int64_t m,
                   int64_t k, int64_t n, Activation act) {
    be.gemm(Trans::no, tw, m, n, k, T(1), in, k, W, tw == Trans::no ? n : k, T(0), out, n);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
        T* o = out + i * n;
        for (int64_t j = 0; j < n; ++j) o[j] = apply(act, o[j] + b[j]);
    }
}

template <class T>
void activation_backward(T* d_out, const T* out, int64_t m, int64_t n, Activation act) {
    if (act == Activation::linear) return;
    const int64_t total = m * n;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < total; ++i) d_out[i] *= derivative_from_output(act, out[i]);
}

template <class T>
void dense_backward(Backend& be, T* d_in, T* dW, T* db, const T* d_pre, const T* in, const T* W,
                    Trans tw, int64_t m, int64_t k, int64_t n) {
    if (tw == Trans::no)  // dW [k, n] += inᵀ [k, m] · d_pre [m, n]
        be.gemm(Trans::yes, Trans::no, k, n, m, T(1), in, k, d_pre, n, T(1), dW, n);
    else                  // dW [n, k] += d_preᵀ [n, m] · in [m, k]
        be.gemm(Trans::yes, Trans::no, n, k, m, T(1), d_pre, n, in, k, T(1), dW, k);
    // Column sums in a fixed order, so results do not depend on the thread count.
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < n; ++j) {
        T s = 0;
        for (int64_t i = 0; i < m; ++i) s += d_pre[i * n + j];
        db[j] += s;
    }
    if (d_in)  // d_in [m, k] = d_pre [m, n] · op(W)ᵀ
        be.gemm(Trans::no, tw == Trans::no ? Trans::yes : Trans::no, m, k, n, T(1), d_pre, n, W,
                tw == Trans::no ? n : k, T(0), d_in, k);
}

template <class T>
void Workspace<T>::reserve(const ModelSpec& spec, int64_t max_m, bool denoising) {
    H.resize(max_m, spec.d_sae);
    Xhat.resize(max_m, spec.d_in);
    dXhat.resize(max_m, spec.d_in);
    dH.resize(max_m, spec.d_sae);
    rho_hat.resize(size_t(spec.d_sae));
    row_sums.resize(size_t(max_m));
    if (denoising) {
        Hdrop.resize(max_m, spec.d_sae);
        Hclean.resize(max_m, spec.d_sae);
        dHclean.resize(max_m, spec.d_sae);
    }
}

double kl_divergence(double rho, double rho_hat) {
    const double r = clamp_rho(rho_hat);
    return rho * std::log(rho / r) + (1 - rho) * std::log((1 - rho) / (1 - r));
}

template <class T>
CostTerms model_cost(Backend& be, const ModelSpec& spec, const CostSpec& cost,
                     const ParamLayout& layout, const T* params, const T* X, int64_t m, T* grad,
                     Workspace<T>& ws, const T* Xc, const T* drop) {
    if (m <= 0) throw Error("model_cost: empty batch");
    if (ws.H.rows < m || ws.H.cols != spec.d_sae || ws.Xhat.cols != spec.d_in)
        throw Error("model_cost: workspace not reserved for this batch size");
    const int64_t d_in = spec.d_in, d_sae = spec.d_sae;
    const auto P = model_params(spec, layout, const_cast<T*>(params));
    T* H = ws.H.data.data();
    T* Xhat = ws.Xhat.data.data();
    T* dXhat = ws.dXhat.data.data();
    T* dH = ws.dH.data.data();
    const double inv_m = 1.0 / double(m);

    // Denoising: the encoder sees Xc (if given), the decoder r ⊙ h (if a dropout mask is given).
    const T* Xenc = Xc ? Xc : X;
    const bool with_D = Xc != nullptr && cost.gamma != 0;
    dense_forward(be, H, Xenc, P.W_enc, Trans::no, P.b_enc, m, d_in, d_sae, spec.encoder);
    const T* Hdec = H;
    if (drop) {
        ensure_size(ws.Hdrop, m, d_sae);
        T* Hd = ws.Hdrop.data.data();
        const int64_t total = m * d_sae;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < total; ++i) Hd[i] = H[i] * drop[i];
        Hdec = Hd;
    }
    dense_forward(be, Xhat, Hdec, P.W_dec, P.dec_trans, P.b_dec, m, d_sae, d_in, spec.decoder);

    CostTerms J;
    // Reconstruction error; dXhat = (x̂ − x)/m. Per-row sums in double, then summed in row order.
    double* row_sums = ws.row_sums.data();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
        double row = 0;
        for (int64_t j = 0; j < d_in; ++j) {
            const T e = Xhat[i * d_in + j] - X[i * d_in + j];
            row += double(e) * double(e);
            dXhat[i * d_in + j] = T(double(e) * inv_m);
        }
        row_sums[i] = row;
    }
    J.rec = 0.5 * sum_in_order(row_sums, m) * inv_m;

    // γ·D(x, x′) = γ·(1/m)·Σᵢ ½‖h(xᵢ) − h(x′ᵢ)‖², with h(x) from a second encoder pass.
    T* Hc = nullptr;
    if (with_D) {
        ensure_size(ws.Hclean, m, d_sae);
        Hc = ws.Hclean.data.data();
        dense_forward(be, Hc, X, P.W_enc, Trans::no, P.b_enc, m, d_in, d_sae, spec.encoder);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < m; ++i) {
            double row = 0;
            for (int64_t j = 0; j < d_sae; ++j) {
                const double e = double(H[i * d_sae + j]) - double(Hc[i * d_sae + j]);
                row += e * e;
            }
            row_sums[i] = row;
        }
        J.denoise = cost.gamma * 0.5 * sum_in_order(row_sums, m) * inv_m;
    }

    // ρ̂ⱼ = mean of column j of H, summed in a fixed order.
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < d_sae; ++j) {
        double s = 0;
        for (int64_t i = 0; i < m; ++i) s += double(H[i * d_sae + j]);
        ws.rho_hat[size_t(j)] = T(s * inv_m);
    }

    {
        double wd = 0;
        for (const auto& v : layout.views) {
            if (v.name != "W_enc" && v.name != "W_dec") continue;
            double s = 0;
            const T* w = params + v.offset;
            for (int64_t i = 0; i < v.numel(); ++i) s += double(w[i]) * double(w[i]);
            wd += s;
        }
        if (spec.tied) wd *= 2;  // W_dec = W_encᵀ contributes ‖W_enc‖² a second time
        J.weight_decay = 0.5 * cost.weight_decay * wd;
    }

    if (cost.sparsity == Sparsity::kl) {
        double s = 0;
        for (int64_t j = 0; j < d_sae; ++j) s += kl_divergence(cost.rho, double(ws.rho_hat[size_t(j)]));
        J.sparsity = cost.beta * s;
    } else if (cost.sparsity == Sparsity::l1) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < m; ++i) {
            double row = 0;
            for (int64_t j = 0; j < d_sae; ++j) row += std::fabs(double(H[i * d_sae + j]));
            row_sums[i] = row;
        }
        J.sparsity = cost.l1_coefficient * sum_in_order(row_sums, m) * inv_m;
    }

    if (!grad) return J;

    std::fill(grad, grad + layout.total, T(0));
    auto G = model_params(spec, layout, grad);

    // Decoder: dXhat → pre-activation gradient; dW_dec, db_dec; dH = dZ2·W_decᵀ.
    activation_backward(dXhat, Xhat, m, d_in, spec.decoder);
    dense_backward(be, dH, G.W_dec, G.b_dec, dXhat, Hdec, P.W_dec, P.dec_trans, m, d_sae, d_in);
    if (drop) {  // ∂(r ⊙ h)/∂h = r
        const int64_t total = m * d_sae;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < total; ++i) dH[i] *= drop[i];
    }

    // Sparsity gradient w.r.t. H, added to dH.
    if (cost.sparsity == Sparsity::kl && cost.beta != 0) {
        // ∂/∂hᵢⱼ β·KL(ρ‖ρ̂ⱼ) = (β/m)·(−ρ/ρ̂ⱼ + (1−ρ)/(1−ρ̂ⱼ)); the same for every row i.
        for (int64_t j = 0; j < d_sae; ++j) {
            const double r = clamp_rho(double(ws.rho_hat[size_t(j)]));
            const T t = T(cost.beta * inv_m * (-cost.rho / r + (1 - cost.rho) / (1 - r)));
            for (int64_t i = 0; i < m; ++i) dH[i * d_sae + j] += t;
        }
    } else if (cost.sparsity == Sparsity::l1 && cost.l1_coefficient != 0) {
        const T c = T(cost.l1_coefficient * inv_m);
        const int64_t total = m * d_sae;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < total; ++i) {
            const T h = H[i];
            dH[i] += h > T(0) ? c : (h < T(0) ? -c : T(0));
        }
    }

    // D: ∂/∂h(x′) = (γ/m)·(h(x′) − h(x)) and the opposite for h(x), which has its own encoder pass.
    T* dHc = nullptr;
    if (with_D) {
        ensure_size(ws.dHclean, m, d_sae);
        dHc = ws.dHclean.data.data();
        const T c = T(cost.gamma * inv_m);
        const int64_t total = m * d_sae;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < total; ++i) {
            const T t = c * (H[i] - Hc[i]);
            dH[i] += t;
            dHc[i] = -t;
        }
    }

    // Encoder.
    activation_backward(dH, H, m, d_sae, spec.encoder);
    dense_backward<T>(be, nullptr, G.W_enc, G.b_enc, dH, Xenc, P.W_enc, Trans::no, m, d_in, d_sae);
    if (with_D) {
        activation_backward(dHc, Hc, m, d_sae, spec.encoder);
        dense_backward<T>(be, nullptr, G.W_enc, G.b_enc, dHc, X, P.W_enc, Trans::no, m, d_in, d_sae);
    }

    // Weight decay: λ·W (tied: 2λ·W_enc, matching J_weight_decay above).
    if (cost.weight_decay != 0) {
        for (const auto& v : layout.views) {
            if (v.name != "W_enc" && v.name != "W_dec") continue;
            const T lam = T(cost.weight_decay * (spec.tied ? 2.0 : 1.0));
            const T* w = params + v.offset;
            T* g = grad + v.offset;
            for (int64_t i = 0; i < v.numel(); ++i) g[i] += lam * w[i];
        }
    }
    return J;
}

#define SAE_INSTANTIATE(T)                                                                       \
    template void model_init<T>(const ModelSpec&, const ParamLayout&, T*, Rng&);                 \
    template ModelParams<T> model_params<T>(const ModelSpec&, const ParamLayout&, T*);           \
    template void dense_forward<T>(Backend&, T*, const T*, const T*, Trans, const T*, int64_t,   \
                                   int64_t, int64_t, Activation);                                \
    template void activation_backward<T>(T*, const T*, int64_t, int64_t, Activation);            \
    template void dense_backward<T>(Backend&, T*, T*, T*, const T*, const T*, const T*, Trans,   \
                                    int64_t, int64_t, int64_t);                                  \
    template struct Workspace<T>;                                                                \
    template CostTerms model_cost<T>(Backend&, const ModelSpec&, const CostSpec&,                \
                                     const ParamLayout&, const T*, const T*, int64_t, T*,        \
                                     Workspace<T>&, const T*, const T*);                         \
    template void draw_corruption<T>(const DenoiseSpec&, int64_t, int64_t, int64_t, T*, T*, Rng&); \
    template void apply_corruption<T>(Corruption, const T*, const T*, int64_t, T*);
SAE_INSTANTIATE(float)
SAE_INSTANTIATE(double)
#undef SAE_INSTANTIATE

}  // namespace sae
