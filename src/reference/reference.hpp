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
Result cost(const ModelSpec& spec, const CostSpec& cost, const std::vector<double>& params,
            const std::vector<double>& X, int64_t m, bool with_grad);

}  // namespace sae::reference
