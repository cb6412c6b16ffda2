// The slow, obviously-correct model: one sample at a time, plain loops, double precision,
// written directly from the CS294A notes' backpropagation (derivatives from pre-activations).
// Used only by tests, to check the fast path. Kept forever.
#pragma once
#include <vector>

#include "sae/model.hpp"

namespace sae::reference {

struct Result {
    CostTerms J;
    std::vector<double> grad;    // same layout as model_layout(spec); empty unless asked
    std::vector<double> rho_hat; // [d_sae]
    std::vector<double> H;       // [m, d_sae] hidden activations
};

// params: flat vector in model_layout(spec) order. X: [m, d_in] row-major.
// Denoising (model.hpp): Xc [m, d_in] the corrupted input the encoder sees (empty = X), drop
// [m, d_sae] the dropout multipliers (empty = none); γ·D(x, x′) is added when Xc is given.
// H is then h(x′) before dropout.
Result cost(const ModelSpec& spec, const CostSpec& cost, const std::vector<double>& params,
            const std::vector<double>& X, int64_t m, bool with_grad,
            const std::vector<double>& Xc = {}, const std::vector<double>& drop = {});

}  // namespace sae::reference
