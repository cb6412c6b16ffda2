// The slow, obviously-correct modern SAE (TopK, BatchTopK, JumpReLU, standard L1 + AuxK): one
// sample at a time, plain loops, double precision, written from the formulas in
// sae/modern.hpp (straight-through surrogate gradients included) without the fast path's
// structure: no Backend, selections by sorting / repeated arg-max instead of nth_element.
// Used only by tests, to check the fast path.
#pragma once
#include <cstdint>
#include <vector>

#include "sae/modern.hpp"

namespace sae::reference {

struct ModernResult {
    CostTerms J;
    std::vector<double> grad;  // same layout as modern_layout(spec); empty unless asked
    std::vector<double> pre;   // [m, d_sae] encoder pre-activations
    std::vector<double> H;     // [m, d_sae] activations
    std::vector<double> Xhat;  // [m, d_in] reconstruction
    std::vector<double> Haux;  // [m, d_sae] AuxK activations (all zero when AuxK is inactive)
    std::vector<double> Ehat;  // [m, d_in] AuxK reconstruction of the error ê = h_aux·W_dec
};

// params: flat vector in modern_layout(spec) order. X: [m, d_in] row-major. dead: [d_sae] or
// empty (no AuxK). Arguments as in sae::modern_cost.
ModernResult modern_cost(const ModernSpec& spec, const std::vector<double>& params,
                         const std::vector<double>& X, int64_t m, bool with_grad,
                         const std::vector<uint8_t>& dead = {}, double batchtopk_threshold = -1,
                         double sparsity_scale = 1.0);

}  // namespace sae::reference
