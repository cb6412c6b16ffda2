#include "reference/reference_modern.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace sae::reference {
namespace {

// Indices of the `count` largest pre[j] among the allowed j, largest first; on equal values
// the lower index comes first (strict > when scanning upward).
std::vector<int64_t> largest(const double* pre, int64_t n, int64_t count,
                             const std::vector<bool>& allowed) {
    std::vector<bool> taken(size_t(n), false);
    std::vector<int64_t> out;
    for (int64_t t = 0; t < count; ++t) {
        int64_t best = -1;
        for (int64_t j = 0; j < n; ++j) {
            if (!allowed[size_t(j)] || taken[size_t(j)]) continue;
            if (best < 0 || pre[j] > pre[best]) best = j;
        }
        if (best < 0) break;
        taken[size_t(best)] = true;
        out.push_back(best);
    }
    return out;
}

// Gated (Rajamanoharan et al. 2024), per sample from the formulas:
//   gate = x'·W_enc + b_gate, mag = x'·(W_enc ⊙ exp(r_mag)) + b_mag, h = 1[gate > 0]·relu(mag),
//   rec = ½‖h·W_dec + b_dec − x‖², sparsity = λ₁·Σⱼ relu(gateⱼ)·‖W_dec[j]‖,
//   aux = ½‖relu(gate)·W_dec + b_dec − x‖² with W_dec, b_dec held constant; all over m.
ModernResult gated_cost(const ModernSpec& spec, const std::vector<double>& params, const std::vector<double>& X,
                        int64_t m, bool with_grad, double sparsity_scale) {
    const int64_t n = spec.d_in, h = spec.d_sae;
    const ParamLayout L = modern_layout(spec);
    auto at = [&](const char* name) { return params.data() + L.get(name).offset; };
    const double *We = at("W_enc"), *bg = at("b_gate"), *rm = at("r_mag"), *bm = at("b_mag"), *Wd = at("W_dec"),
                 *bd = at("b_dec");
    ModernResult r;
    r.pre.assign(size_t(m * h), 0.0);
    r.H.assign(size_t(m * h), 0.0);
    r.Xhat.assign(size_t(m * n), 0.0);
    r.Haux.assign(size_t(m * h), 0.0);
    r.Ehat.assign(size_t(m * n), 0.0);
    if (with_grad) r.grad.assign(size_t(L.total), 0.0);
    auto gat = [&](const char* name) { return r.grad.data() + L.get(name).offset; };
    const double md = double(m), lam = spec.l1_coefficient * sparsity_scale;
    std::vector<double> norm(static_cast<size_t>(h), 1.0);
    if (spec.l1_decoder_norm)
        for (int64_t j = 0; j < h; ++j) {
            double q = 0;
            for (int64_t k = 0; k < n; ++k) q += Wd[j * n + k] * Wd[j * n + k];
            norm[size_t(j)] = std::sqrt(q);
        }
    for (int64_t i = 0; i < m; ++i) {
        const double* x = &X[size_t(i * n)];
        std::vector<double> xin(static_cast<size_t>(n)), gate(static_cast<size_t>(h)), mag(static_cast<size_t>(h)),
            a(static_cast<size_t>(h)), ag(static_cast<size_t>(h));
        for (int64_t k = 0; k < n; ++k) xin[size_t(k)] = x[k] - (spec.apply_b_dec_to_input ? bd[k] : 0.0);
        for (int64_t j = 0; j < h; ++j) {
            double zg = bg[j], zm = bm[j];
            for (int64_t k = 0; k < n; ++k) {
                zg += xin[size_t(k)] * We[k * h + j];
                zm += xin[size_t(k)] * We[k * h + j] * std::exp(rm[j]);
            }
            gate[size_t(j)] = zg;
            mag[size_t(j)] = zm;
            a[size_t(j)] = zg > 0 && zm > 0 ? zm : 0.0;
            ag[size_t(j)] = zg > 0 ? zg : 0.0;
            r.pre[size_t(i * h + j)] = zg;
            r.H[size_t(i * h + j)] = a[size_t(j)];
            r.Haux[size_t(i * h + j)] = ag[size_t(j)];
            r.J.sparsity += lam * ag[size_t(j)] * norm[size_t(j)] / md;
        }
        std::vector<double> g_xh(static_cast<size_t>(n)), g_xt(static_cast<size_t>(n));
        for (int64_t k = 0; k < n; ++k) {
            double z = bd[k], zt = bd[k];
            for (int64_t j = 0; j < h; ++j) {
                z += a[size_t(j)] * Wd[j * n + k];
                zt += ag[size_t(j)] * Wd[j * n + k];
            }
            r.Xhat[size_t(i * n + k)] = z;
            r.Ehat[size_t(i * n + k)] = zt;
            r.J.rec += 0.5 * (z - x[k]) * (z - x[k]) / md;
            r.J.aux += 0.5 * (zt - x[k]) * (zt - x[k]) / md;
            g_xh[size_t(k)] = (z - x[k]) / md;
            g_xt[size_t(k)] = (zt - x[k]) / md;
        }
        if (!with_grad) continue;
        double *gWe = gat("W_enc"), *gbg = gat("b_gate"), *grm = gat("r_mag"), *gbm = gat("b_mag"), *gWd = gat("W_dec"),
               *gbd = gat("b_dec");
        for (int64_t k = 0; k < n; ++k) gbd[k] += g_xh[size_t(k)];
        for (int64_t j = 0; j < h; ++j) {
            double gh = 0, gt = 0;
            for (int64_t k = 0; k < n; ++k) {
                gWd[j * n + k] += a[size_t(j)] * g_xh[size_t(k)];
                gh += g_xh[size_t(k)] * Wd[j * n + k];
                gt += g_xt[size_t(k)] * Wd[j * n + k];  // through the frozen decoder: no W_dec gradient
            }
            if (spec.l1_decoder_norm && norm[size_t(j)] > 0)
                for (int64_t k = 0; k < n; ++k) gWd[j * n + k] += lam * ag[size_t(j)] * Wd[j * n + k] / norm[size_t(j)] / md;
            const bool open = gate[size_t(j)] > 0;
            const double dmag = open && mag[size_t(j)] > 0 ? gh : 0.0;
            const double dgate = open ? lam * norm[size_t(j)] / md + gt : 0.0;
            const double e = std::exp(rm[j]);
            double zw = 0;  // x'·W_enc[:, j]
            for (int64_t k = 0; k < n; ++k) zw += xin[size_t(k)] * We[k * h + j];
            gbg[j] += dgate;
            gbm[j] += dmag;
            grm[j] += dmag * zw * e;
            for (int64_t k = 0; k < n; ++k) {
                gWe[k * h + j] += xin[size_t(k)] * (dgate + dmag * e);
                if (spec.apply_b_dec_to_input) gbd[k] -= We[k * h + j] * (dgate + dmag * e);
            }
        }
    }
    return r;
}

}  // namespace

ModernResult modern_cost(const ModernSpec& spec, const std::vector<double>& params,
                         const std::vector<double>& X, int64_t m, bool with_grad,
                         const std::vector<uint8_t>& dead, double batchtopk_threshold,
                         double sparsity_scale) {
    if (spec.arch == Arch::gated) return gated_cost(spec, params, X, m, with_grad, sparsity_scale);
    const int64_t n = spec.d_in, h = spec.d_sae;
    const ParamLayout L = modern_layout(spec);
    const double* We = params.data() + L.get("W_enc").offset;  // We[k*h + j]: input k → latent j
    const double* be = params.data() + L.get("b_enc").offset;
    const double* Wd = params.data() + L.get("W_dec").offset;  // Wd[j*n + k]: latent j → output k
    const double* bd = params.data() + L.get("b_dec").offset;
    const bool jump = spec.arch == Arch::jumprelu;
    std::vector<double> theta(size_t(h), 0.0);
    if (jump) {
        const double* lt = params.data() + L.get("log_threshold").offset;
        for (int64_t j = 0; j < h; ++j) theta[size_t(j)] = std::exp(lt[j]);
    }

    ModernResult r;
    r.pre.assign(size_t(m * h), 0.0);
    r.H.assign(size_t(m * h), 0.0);
    r.Xhat.assign(size_t(m * n), 0.0);
    r.Haux.assign(size_t(m * h), 0.0);
    r.Ehat.assign(size_t(m * n), 0.0);
    if (with_grad) r.grad.assign(size_t(L.total), 0.0);

    // Encoder input and pre-activations, every sample.
    std::vector<double> xin(size_t(m * n));
    for (int64_t i = 0; i < m; ++i)
        for (int64_t k = 0; k < n; ++k)
            xin[size_t(i * n + k)] =
                X[size_t(i * n + k)] - (spec.apply_b_dec_to_input ? bd[k] : 0.0);
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < h; ++j) {
            double z = be[j];
            for (int64_t k = 0; k < n; ++k) z += xin[size_t(i * n + k)] * We[k * h + j];
            r.pre[size_t(i * h + j)] = z;
        }

    // Which entries the architecture keeps (before the relu).
    std::vector<bool> keep(size_t(m * h), false);
    switch (spec.arch) {
        case Arch::standard:
            std::fill(keep.begin(), keep.end(), true);
            break;
        case Arch::topk: {
            const std::vector<bool> all(size_t(h), true);
            for (int64_t i = 0; i < m; ++i)
                for (int64_t j : largest(&r.pre[size_t(i * h)], h, spec.k, all))
                    keep[size_t(i * h + j)] = true;
            break;
        }
        case Arch::batchtopk:
        case Arch::matryoshka_batchtopk:
            if (batchtopk_threshold < 0) {
                std::vector<int64_t> order(size_t(m * h));
                std::iota(order.begin(), order.end(), int64_t(0));
                std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
                    const double pa = r.pre[size_t(a)], pb = r.pre[size_t(b)];
                    return pa != pb ? pa > pb : a < b;
                });
                for (int64_t t = 0; t < m * spec.k; ++t) keep[size_t(order[size_t(t)])] = true;
            } else {
                for (int64_t t = 0; t < m * h; ++t)
                    keep[size_t(t)] = r.pre[size_t(t)] > batchtopk_threshold;
            }
            break;
        case Arch::jumprelu:
            for (int64_t i = 0; i < m; ++i)
                for (int64_t j = 0; j < h; ++j)
                    keep[size_t(i * h + j)] = r.pre[size_t(i * h + j)] > theta[size_t(j)];
            break;
        case Arch::gated:
            break;  // gated_cost
    }
    for (int64_t t = 0; t < m * h; ++t)
        r.H[size_t(t)] = keep[size_t(t)] && r.pre[size_t(t)] > 0 ? r.pre[size_t(t)] : 0.0;

    std::vector<double> norm(static_cast<size_t>(h), 1.0);
    if (spec.arch == Arch::standard && spec.l1_decoder_norm)
        for (int64_t j = 0; j < h; ++j) {
            double s = 0;
            for (int64_t k = 0; k < n; ++k) s += Wd[j * n + k] * Wd[j * n + k];
            norm[size_t(j)] = std::sqrt(s);
        }

    std::vector<bool> is_dead(size_t(h), false);
    int64_t n_dead = 0;
    if (!dead.empty())
        for (int64_t j = 0; j < h; ++j) {
            is_dead[size_t(j)] = dead[size_t(j)] != 0;
            n_dead += dead[size_t(j)] != 0;
        }
    const bool nested = spec.arch == Arch::matryoshka_batchtopk;
    const bool aux_on = (spec.arch == Arch::topk || spec.arch == Arch::batchtopk || nested) &&
                        spec.k_aux > 0 && n_dead > 0;

    const double md = double(m);
    const double lam1 = spec.l1_coefficient * sparsity_scale;
    const double lam0 = spec.l0_coefficient * sparsity_scale;
    double* gWe = with_grad ? r.grad.data() + L.get("W_enc").offset : nullptr;
    double* gbe = with_grad ? r.grad.data() + L.get("b_enc").offset : nullptr;
    double* gWd = with_grad ? r.grad.data() + L.get("W_dec").offset : nullptr;
    double* gbd = with_grad ? r.grad.data() + L.get("b_dec").offset : nullptr;
    double* glt = with_grad && jump ? r.grad.data() + L.get("log_threshold").offset : nullptr;

    for (int64_t i = 0; i < m; ++i) {
        const double* x = &X[size_t(i * n)];
        const double* p = &r.pre[size_t(i * h)];
        const double* a = &r.H[size_t(i * h)];
        double* xh = &r.Xhat[size_t(i * n)];

        // Decoder and reconstruction error. Matryoshka: every prefix of groups g reconstructs
        // with the latents j < group_ends[g]; g_prefix[g] = w_g·(x̂⁽ᵍ⁾ − x)/m. One group (the
        // others): the whole decoder, weight 1.
        const std::vector<int64_t> ends = nested ? spec.group_ends : std::vector<int64_t>{h};
        const std::vector<double> weights = nested ? spec.group_weights : std::vector<double>{1.0};
        std::vector<std::vector<double>> g_prefix(ends.size(), std::vector<double>(size_t(n)));
        for (size_t g = 0; g < ends.size(); ++g)
            for (int64_t k = 0; k < n; ++k) {
                double z = bd[k];
                for (int64_t j = 0; j < ends[g]; ++j) z += a[j] * Wd[j * n + k];
                if (g + 1 == ends.size()) xh[k] = z;
                r.J.rec += weights[g] * 0.5 * (z - x[k]) * (z - x[k]) / md;
                g_prefix[g][size_t(k)] = weights[g] * (z - x[k]) / md;
            }

        // Sparsity.
        for (int64_t j = 0; j < h; ++j) {
            if (spec.arch == Arch::standard) r.J.sparsity += lam1 * std::fabs(a[j]) * norm[size_t(j)] / md;
            if (jump && p[j] > theta[size_t(j)]) r.J.sparsity += lam0 / md;
        }

        // AuxK: the k_aux largest dead pre-activations (relu), reconstructing e = x − x̂.
        std::vector<double> ha(size_t(h), 0.0), eh(size_t(n), 0.0), g_eh(size_t(n), 0.0);
        if (aux_on) {
            for (int64_t j : largest(p, h, std::min(spec.k_aux, n_dead), is_dead))
                ha[size_t(j)] = p[j] > 0 ? p[j] : 0.0;
            for (int64_t k = 0; k < n; ++k) {
                double z = 0;
                for (int64_t j = 0; j < h; ++j) z += ha[size_t(j)] * Wd[j * n + k];
                eh[size_t(k)] = z;
                const double diff = z - (x[k] - xh[k]);
                r.J.aux += spec.aux_coefficient * 0.5 * diff * diff / md;
                g_eh[size_t(k)] = spec.aux_coefficient * diff / md;
            }
            for (int64_t j = 0; j < h; ++j) r.Haux[size_t(i * h + j)] = ha[size_t(j)];
            for (int64_t k = 0; k < n; ++k) r.Ehat[size_t(i * n + k)] = eh[size_t(k)];
        }

        if (!with_grad) continue;

        // ∂J/∂x̂ and the decoder: latent j is in every prefix g with group_ends[g] > j.
        std::vector<double> g_h(static_cast<size_t>(h), 0.0), g_pre(static_cast<size_t>(h), 0.0);
        for (size_t g = 0; g < ends.size(); ++g)
            for (int64_t k = 0; k < n; ++k) gbd[k] += g_prefix[g][size_t(k)];
        for (int64_t j = 0; j < h; ++j)
            for (size_t g = 0; g < ends.size(); ++g) {
                if (j >= ends[g]) continue;
                for (int64_t k = 0; k < n; ++k) {
                    gWd[j * n + k] += a[j] * g_prefix[g][size_t(k)];
                    g_h[size_t(j)] += g_prefix[g][size_t(k)] * Wd[j * n + k];
                }
            }

        // L1 term: λ|h|·‖W_dec[j]‖.
        if (spec.arch == Arch::standard)
            for (int64_t j = 0; j < h; ++j) {
                const double sgn = a[j] > 0 ? 1.0 : (a[j] < 0 ? -1.0 : 0.0);
                g_h[size_t(j)] += lam1 * sgn * norm[size_t(j)] / md;
                if (spec.l1_decoder_norm && norm[size_t(j)] > 0)
                    for (int64_t k = 0; k < n; ++k)
                        gWd[j * n + k] += lam1 * std::fabs(a[j]) * Wd[j * n + k] / norm[size_t(j)] / md;
            }

        // Through σ.
        for (int64_t j = 0; j < h; ++j) {
            if (jump) {
                // h = pre·H(pre − θ): ∂h/∂pre = H(pre − θ); ∂h/∂θ = −(θ/ε)·K; the L0 term
                // λ₀·H(pre − θ)/m gives ∂/∂θ = −(λ₀/m)·(1/ε)·K; θ = exp(log θ).
                const double th = theta[size_t(j)], eps = spec.bandwidth;
                const double K = std::fabs((p[j] - th) / eps) < 0.5 ? 1.0 : 0.0;
                const double d_theta = g_h[size_t(j)] * (-th / eps) * K + (lam0 / md) * (-1.0 / eps) * K;
                glt[j] += d_theta * th;
                g_pre[size_t(j)] = p[j] > th ? g_h[size_t(j)] : 0.0;
            } else {
                g_pre[size_t(j)] = a[j] > 0 ? g_h[size_t(j)] : 0.0;
            }
        }

        // AuxK backward: ê = h_aux·W_dec only.
        if (aux_on)
            for (int64_t j = 0; j < h; ++j) {
                if (!(ha[size_t(j)] > 0)) continue;
                double gj = 0;
                for (int64_t k = 0; k < n; ++k) {
                    gWd[j * n + k] += ha[size_t(j)] * g_eh[size_t(k)];
                    gj += g_eh[size_t(k)] * Wd[j * n + k];
                }
                g_pre[size_t(j)] += gj;
            }

        // Encoder and, through x' = x − b_dec, the decoder bias.
        for (int64_t j = 0; j < h; ++j) {
            gbe[j] += g_pre[size_t(j)];
            for (int64_t k = 0; k < n; ++k) {
                gWe[k * h + j] += xin[size_t(i * n + k)] * g_pre[size_t(j)];
                if (spec.apply_b_dec_to_input) gbd[k] -= We[k * h + j] * g_pre[size_t(j)];
            }
        }
    }
    return r;
}

}  // namespace sae::reference
