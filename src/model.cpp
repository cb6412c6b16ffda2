#include "sae/model.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "sae/error.hpp"
#include "simd.hpp"

namespace sae {

namespace {
constexpr double kRhoClamp = 1e-12;

template <class T>
inline T sigmoid(T z) {
    // Never overflows: the result stays in [0, 1] for any finite z (simd.hpp).
    if constexpr (std::is_same_v<T, float>) return simd::sigmoid_f32(z);
    else return simd::sigmoid_f64(z);
}

// --- element-wise kernels of the classic model ----------------------------------------------
// Each is one pass, the activation chosen outside the loop so the loop vectorises. Reductions
// use fixed lanes and a fixed order: the bits do not depend on the thread count or the ISA.

// o[j] = act(o[j] + b[j]) for j < n (one row of a layer's output).
template <class T>
SAE_SIMD_CLONES void bias_act_row(T* __restrict o, const T* __restrict b, int64_t n, Activation act) {
    switch (act) {
        case Activation::sigmoid:
            for (int64_t j = 0; j < n; ++j) o[j] = sigmoid(o[j] + b[j]);
            return;
        case Activation::relu:
            for (int64_t j = 0; j < n; ++j) {
                const T z = o[j] + b[j];
                o[j] = z > T(0) ? z : T(0);
            }
            return;
        case Activation::tanh:
            for (int64_t j = 0; j < n; ++j) o[j] = std::tanh(o[j] + b[j]);
            return;
        case Activation::linear:
            for (int64_t j = 0; j < n; ++j) o[j] += b[j];
            return;
    }
}

// d[i] = (d[i] + add[i mod n]) · f′ expressed through the output y (add may be null).
template <class T>
SAE_SIMD_CLONES void act_backward_row(T* __restrict d, const T* __restrict y, const T* __restrict add, int64_t n,
                                      Activation act) {
    if (add)
        for (int64_t j = 0; j < n; ++j) d[j] += add[j];
    switch (act) {
        case Activation::sigmoid:
            for (int64_t j = 0; j < n; ++j) d[j] *= y[j] * (T(1) - y[j]);
            return;
        case Activation::relu:
            for (int64_t j = 0; j < n; ++j) d[j] = y[j] > T(0) ? d[j] : T(0);
            return;
        case Activation::tanh:
            for (int64_t j = 0; j < n; ++j) d[j] *= T(1) - y[j] * y[j];
            return;
        case Activation::linear:
            return;
    }
}

// One row of the reconstruction error: d = (x̂ − x)·inv_m·g′(x̂); returns Σ (x̂ − x)² in double.
template <class T>
SAE_SIMD_CLONES double reconstruction_row(const T* __restrict xhat, const T* __restrict x, T* __restrict d,
                                          int64_t n, T inv_m, Activation dec) {
    constexpr int L = 8;
    double acc[L] = {};
    int64_t j = 0;
    for (; j + L <= n; j += L)
        for (int t = 0; t < L; ++t) {
            const T e = xhat[j + t] - x[j + t];
            acc[t] += double(e) * double(e);
            d[j + t] = e * inv_m;
        }
    double s = 0;
    for (int t = 0; t < L; ++t) s += acc[t];
    for (; j < n; ++j) {
        const T e = xhat[j] - x[j];
        s += double(e) * double(e);
        d[j] = e * inv_m;
    }
    act_backward_row<T>(d, xhat, nullptr, n, dec);
    return s;
}

// acc[j] += Σᵢ A[i, j] over rows i in order (column sums of a row-major [m, n] block).
template <class T, class A>
SAE_SIMD_CLONES void column_sums(const T* __restrict M, int64_t m, int64_t n, A* __restrict acc) {
    for (int64_t i = 0; i < m; ++i) {
        const T* r = M + i * n;
        for (int64_t j = 0; j < n; ++j) acc[j] += A(r[j]);
    }
}

// Σ w² in double over one chunk; and g = lam·w unless g is null (the weight-decay gradient).
template <class T>
SAE_SIMD_CLONES double squares_and_decay(const T* __restrict w, T* __restrict g, int64_t n, T lam) {
    constexpr int L = 8;
    double acc[L] = {};
    int64_t i = 0;
    for (; i + L <= n; i += L)
        for (int t = 0; t < L; ++t) acc[t] += double(w[i + t]) * double(w[i + t]);
    double s = 0;
    for (int t = 0; t < L; ++t) s += acc[t];
    for (; i < n; ++i) s += double(w[i]) * double(w[i]);
    if (g)
        for (i = 0; i < n; ++i) g[i] = lam * w[i];
    return s;
}

// Σ |h| in double over one row.
template <class T>
SAE_SIMD_CLONES double abs_sum(const T* __restrict h, int64_t n) {
    constexpr int L = 8;
    double acc[L] = {};
    int64_t i = 0;
    for (; i + L <= n; i += L)
        for (int t = 0; t < L; ++t) acc[t] += std::fabs(double(h[i + t]));
    double s = 0;
    for (int t = 0; t < L; ++t) s += acc[t];
    for (; i < n; ++i) s += std::fabs(double(h[i]));
    return s;
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
    for (int64_t i = 0; i < m; ++i) bias_act_row<T>(out + i * n, b, n, act);
}

template <class T>
void activation_backward(T* d_out, const T* out, int64_t m, int64_t n, Activation act) {
    if (act == Activation::linear) return;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i) act_backward_row<T>(d_out + i * n, out + i * n, nullptr, n, act);
}

template <class T>
void dense_backward(Backend& be, T* d_in, T* dW, T* db, const T* d_pre, const T* in, const T* W,
                    Trans tw, int64_t m, int64_t k, int64_t n) {
    if (tw == Trans::no)  // dW [k, n] += inᵀ [k, m] · d_pre [m, n]
        be.gemm(Trans::yes, Trans::no, k, n, m, T(1), in, k, d_pre, n, T(1), dW, n);
    else                  // dW [n, k] += d_preᵀ [n, m] · in [m, k]
        be.gemm(Trans::yes, Trans::no, n, k, m, T(1), d_pre, n, in, k, T(1), dW, k);
    // Column sums in row order, so results do not depend on the thread count.
    column_sums<T, T>(d_pre, m, n, db);
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
    col_acc.reserve(size_t(spec.d_sae));
    kl_grad.reserve(size_t(spec.d_sae));
    chunk_sums.reserve(size_t((spec.d_in * spec.d_sae + (1 << 14) - 1) >> 14));
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
    // Reconstruction error; dXhat = (x̂ − x)/m · g′, the decoder's pre-activation gradient, in
    // the same pass. Per-row sums in double, then summed in row order.
    double* row_sums = ws.row_sums.data();
    const T inv_m_t = T(inv_m);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i)
        row_sums[i] = reconstruction_row<T>(Xhat + i * d_in, X + i * d_in, dXhat + i * d_in, d_in, inv_m_t,
                                            grad ? spec.decoder : Activation::linear);
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

    // ρ̂ⱼ = mean of column j of H, summed in row order.
    {
        std::vector<double>& acc = ws.col_acc;
        acc.assign(size_t(d_sae), 0.0);
        column_sums<T, double>(H, m, d_sae, acc.data());
        double inv_rows = inv_m;
        if (ws.share_rows > 0) {  // the whole batch's ρ̂, over every replica's slice
            ws.share_sum(acc.data(), d_sae);
            inv_rows = 1.0 / double(ws.share_rows);
        }
        for (int64_t j = 0; j < d_sae; ++j) ws.rho_hat[size_t(j)] = T(acc[size_t(j)] * inv_rows);
    }

    // Weight decay. With a gradient wanted, its term λ·W starts the gradient (tied: 2λ·W_enc,
    // matching J_weight_decay), the rest starts at zero, and the products add into it.
    // Σ W² in fixed chunks, summed in chunk order (independent of the thread count).
    {
        constexpr int64_t kChunk = 1 << 14;
        const T lam = T(cost.weight_decay * (spec.tied ? 2.0 : 1.0));
        if (grad) std::fill(grad, grad + layout.total, T(0));
        double wd = 0;
        for (const auto& v : layout.views) {
            if (v.name != "W_enc" && v.name != "W_dec") continue;
            const T* w = params + v.offset;
            T* g = grad ? grad + v.offset : nullptr;
            const int64_t chunks = (v.numel() + kChunk - 1) / kChunk;
            std::vector<double>& part = ws.chunk_sums;
            part.assign(size_t(chunks), 0.0);
#pragma omp parallel for schedule(static) if (chunks > 1)
            for (int64_t c = 0; c < chunks; ++c) {
                const int64_t lo = c * kChunk, hi = std::min(v.numel(), lo + kChunk);
                part[size_t(c)] = squares_and_decay<T>(w + lo, g ? g + lo : nullptr, hi - lo, lam);
            }
            wd += sum_in_order(part.data(), chunks);
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
        for (int64_t i = 0; i < m; ++i) row_sums[i] = abs_sum<T>(H + i * d_sae, d_sae);
        J.sparsity = cost.l1_coefficient * sum_in_order(row_sums, m) * inv_m;
    }

    if (!grad) return J;

    auto G = model_params(spec, layout, grad);

    // Decoder: dXhat already holds the pre-activation gradient; dW_dec, db_dec; dH = dZ2·W_decᵀ.
    dense_backward(be, dH, G.W_dec, G.b_dec, dXhat, Hdec, P.W_dec, P.dec_trans, m, d_sae, d_in);
    if (drop) {  // ∂(r ⊙ h)/∂h = r
        const int64_t total = m * d_sae;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < total; ++i) dH[i] *= drop[i];
    }

    // Sparsity gradient w.r.t. H: kl adds the same vector to every row (folded into the encoder's
    // activation backward below); l1 adds c·sign(h).
    const T* kl_row = nullptr;
    if (cost.sparsity == Sparsity::kl && cost.beta != 0) {
        // ∂/∂hᵢⱼ β·KL(ρ‖ρ̂ⱼ) = (β/m)·(−ρ/ρ̂ⱼ + (1−ρ)/(1−ρ̂ⱼ)); the same for every row i.
        ws.kl_grad.resize(size_t(d_sae));
        for (int64_t j = 0; j < d_sae; ++j) {
            const double r = clamp_rho(double(ws.rho_hat[size_t(j)]));
            ws.kl_grad[size_t(j)] = T(cost.beta * inv_m * (-cost.rho / r + (1 - cost.rho) / (1 - r)));
        }
        kl_row = ws.kl_grad.data();
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

    // Encoder (plus the kl row).
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i)
        act_backward_row<T>(dH + i * d_sae, H + i * d_sae, kl_row, d_sae, spec.encoder);
    dense_backward<T>(be, nullptr, G.W_enc, G.b_enc, dH, Xenc, P.W_enc, Trans::no, m, d_in, d_sae);
    if (with_D) {
        activation_backward(dHc, Hc, m, d_sae, spec.encoder);
        dense_backward<T>(be, nullptr, G.W_enc, G.b_enc, dHc, X, P.W_enc, Trans::no, m, d_in, d_sae);
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
