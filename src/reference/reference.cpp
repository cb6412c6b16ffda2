#include "reference/reference.hpp"

#include <cmath>

namespace sae::reference {
namespace {

double act(Activation a, double z) {
    switch (a) {
        case Activation::sigmoid: return 1.0 / (1.0 + std::exp(-z));
        case Activation::relu: return z > 0 ? z : 0;
        case Activation::tanh: return std::tanh(z);
        case Activation::linear: return z;
    }
    return z;
}
double act_prime(Activation a, double z) {
    switch (a) {
        case Activation::sigmoid: {
            const double s = 1.0 / (1.0 + std::exp(-z));
            return s * (1 - s);
        }
        case Activation::relu: return z > 0 ? 1 : 0;
        case Activation::tanh: {
            const double t = std::tanh(z);
            return 1 - t * t;
        }
        case Activation::linear: return 1;
    }
    return 1;
}

}  // namespace

Result cost(const ModelSpec& spec, const CostSpec& c, const std::vector<double>& params,
            const std::vector<double>& X, int64_t m, bool with_grad, const std::vector<double>& Xc,
            const std::vector<double>& drop) {
    const int64_t n = spec.d_in, h = spec.d_sae;
    const ParamLayout L = model_layout(spec);
    const double* W1 = params.data() + L.get("W_enc").offset;  // W1[k*h + j]: input k → hidden j
    const double* b1 = params.data() + L.get("b_enc").offset;
    const double* b2 = params.data() + L.get("b_dec").offset;
    const double* Wd = spec.tied ? nullptr : params.data() + L.get("W_dec").offset;
    // Decoder weight from hidden j to output k.
    auto W2 = [&](int64_t j, int64_t k) { return spec.tied ? W1[k * h + j] : Wd[j * n + k]; };

    // Denoising: the encoder's input x′ (Xc, or X), dropout multiplier r, and whether D is on.
    const std::vector<double>& Xin = Xc.empty() ? X : Xc;
    auto r_of = [&](int64_t i, int64_t j) { return drop.empty() ? 1.0 : drop[size_t(i * h + j)]; };
    const bool with_D = !Xc.empty() && c.gamma != 0;

    Result r;
    std::vector<double> z2(size_t(m * h)), a2(size_t(m * h)), z3(size_t(m * n)), a3(size_t(m * n));
    std::vector<double> z2c(size_t(m * h)), a2c(size_t(m * h));  // clean input's code h(x), for D
    for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < h; ++j) {
            double z = b1[j];
            for (int64_t k = 0; k < n; ++k) z += Xin[size_t(i * n + k)] * W1[k * h + j];
            z2[size_t(i * h + j)] = z;
            a2[size_t(i * h + j)] = act(spec.encoder, z);
            double zc = b1[j];
            for (int64_t k = 0; k < n; ++k) zc += X[size_t(i * n + k)] * W1[k * h + j];
            z2c[size_t(i * h + j)] = zc;
            a2c[size_t(i * h + j)] = act(spec.encoder, zc);
        }
        for (int64_t k = 0; k < n; ++k) {
            double z = b2[k];
            for (int64_t j = 0; j < h; ++j) z += r_of(i, j) * a2[size_t(i * h + j)] * W2(j, k);
            z3[size_t(i * n + k)] = z;
            a3[size_t(i * n + k)] = act(spec.decoder, z);
        }
    }
    if (with_D)
        for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < h; ++j) {
                const double e = a2[size_t(i * h + j)] - a2c[size_t(i * h + j)];
                r.J.denoise += c.gamma * 0.5 * e * e / double(m);
            }

    for (int64_t i = 0; i < m; ++i)
        for (int64_t k = 0; k < n; ++k) {
            const double e = a3[size_t(i * n + k)] - X[size_t(i * n + k)];
            r.J.rec += 0.5 * e * e / double(m);
        }

    double sq = 0;
    for (int64_t k = 0; k < n; ++k)
        for (int64_t j = 0; j < h; ++j) sq += W1[k * h + j] * W1[k * h + j];
    for (int64_t j = 0; j < h; ++j)
        for (int64_t k = 0; k < n; ++k) sq += W2(j, k) * W2(j, k);
    r.J.weight_decay = 0.5 * c.weight_decay * sq;

    r.rho_hat.assign(size_t(h), 0.0);
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < h; ++j) r.rho_hat[size_t(j)] += a2[size_t(i * h + j)] / double(m);
    if (c.sparsity == Sparsity::kl)
        for (int64_t j = 0; j < h; ++j) {
            const double p = c.rho, q = r.rho_hat[size_t(j)];
            r.J.sparsity += c.beta * (p * std::log(p / q) + (1 - p) * std::log((1 - p) / (1 - q)));
        }
    else if (c.sparsity == Sparsity::l1)
        for (int64_t i = 0; i < m * h; ++i) r.J.sparsity += c.l1_coefficient * std::fabs(a2[size_t(i)]) / double(m);
    r.H = a2;
    if (!with_grad) return r;

    // Backpropagation, one sample at a time, accumulated into separate named gradients.
    std::vector<double> gW1(size_t(n * h), 0.0), gb1(size_t(h), 0.0), gW2(size_t(h * n), 0.0),
        gb2(size_t(n), 0.0);  // gW2[j*n + k]: hidden j → output k
    std::vector<double> d3(static_cast<size_t>(n)), d2(static_cast<size_t>(h));
    for (int64_t i = 0; i < m; ++i) {
        for (int64_t k = 0; k < n; ++k)
            d3[size_t(k)] = (a3[size_t(i * n + k)] - X[size_t(i * n + k)]) *
                            act_prime(spec.decoder, z3[size_t(i * n + k)]);
        for (int64_t j = 0; j < h; ++j) {
            double back = 0;
            for (int64_t k = 0; k < n; ++k) back += W2(j, k) * d3[size_t(k)];
            back *= r_of(i, j);  // the decoder saw r·h
            if (with_D) back += c.gamma * (a2[size_t(i * h + j)] - a2c[size_t(i * h + j)]);
            if (c.sparsity == Sparsity::kl) {
                const double p = c.rho, q = r.rho_hat[size_t(j)];
                back += c.beta * (-p / q + (1 - p) / (1 - q));
            } else if (c.sparsity == Sparsity::l1) {
                const double a = a2[size_t(i * h + j)];
                back += c.l1_coefficient * (a > 0 ? 1.0 : (a < 0 ? -1.0 : 0.0));
            }
            d2[size_t(j)] = back * act_prime(spec.encoder, z2[size_t(i * h + j)]);
        }
        for (int64_t j = 0; j < h; ++j)
            for (int64_t k = 0; k < n; ++k)
                gW2[size_t(j * n + k)] += r_of(i, j) * a2[size_t(i * h + j)] * d3[size_t(k)] / double(m);
        for (int64_t k = 0; k < n; ++k) gb2[size_t(k)] += d3[size_t(k)] / double(m);
        for (int64_t k = 0; k < n; ++k)
            for (int64_t j = 0; j < h; ++j) gW1[size_t(k * h + j)] += Xin[size_t(i * n + k)] * d2[size_t(j)] / double(m);
        for (int64_t j = 0; j < h; ++j) gb1[size_t(j)] += d2[size_t(j)] / double(m);
        if (with_D)  // D through the clean code: ∂/∂h(x) = γ·(h(x) − h(x′))
            for (int64_t j = 0; j < h; ++j) {
                const double dc = c.gamma * (a2c[size_t(i * h + j)] - a2[size_t(i * h + j)]) *
                                  act_prime(spec.encoder, z2c[size_t(i * h + j)]);
                for (int64_t k = 0; k < n; ++k) gW1[size_t(k * h + j)] += X[size_t(i * n + k)] * dc / double(m);
                gb1[size_t(j)] += dc / double(m);
            }
    }
    for (int64_t k = 0; k < n; ++k)
        for (int64_t j = 0; j < h; ++j) gW1[size_t(k * h + j)] += c.weight_decay * W1[k * h + j];
    for (int64_t j = 0; j < h; ++j)
        for (int64_t k = 0; k < n; ++k) gW2[size_t(j * n + k)] += c.weight_decay * W2(j, k);

    r.grad.assign(size_t(L.total), 0.0);
    double* G = r.grad.data();
    for (int64_t q = 0; q < n * h; ++q) G[L.get("W_enc").offset + q] = gW1[size_t(q)];
    for (int64_t j = 0; j < h; ++j) G[L.get("b_enc").offset + j] = gb1[size_t(j)];
    for (int64_t k = 0; k < n; ++k) G[L.get("b_dec").offset + k] = gb2[size_t(k)];
    if (spec.tied) {  // decoder weight (j, k) is W1 (k, j): its gradient lands there
        for (int64_t j = 0; j < h; ++j)
            for (int64_t k = 0; k < n; ++k) G[L.get("W_enc").offset + k * h + j] += gW2[size_t(j * n + k)];
    } else {
        for (int64_t q = 0; q < h * n; ++q) G[L.get("W_dec").offset + q] = gW2[size_t(q)];
    }
    return r;
}

}  // namespace sae::reference
