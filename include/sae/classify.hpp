// Self-taught learning (UFLDL): softmax regression on learnt features, and the data selection
// around it (samples of some classes, a seeded train/test split, labels remapped to 0..K−1).
//
// Softmax regression, K classes, features x ∈ R^d, parameters θ [K, d] and (optionally) a bias
// b [K], laid out flat as θ (row-major) then b:
//   z = θ·x + b,  p(y = c | x) = exp(z_c) / Σ_c' exp(z_c')   (computed as exp(z_c − max z))
//   J = (1/m)·Σᵢ −log p(yᵢ | xᵢ) + (λ/2)·‖θ‖²                  (the bias is not decayed)
//   ∂J/∂θ = (1/m)·(P − Y)ᵀ·X + λθ,   ∂J/∂b = (1/m)·Σᵢ (pᵢ − yᵢ)     (Y one-hot [m, K])
// UFLDL's exercise has no bias; with bias = true (the default here) the model can shift
// classes without moving θ. Trained with full-batch L-BFGS in double.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "sae/backend.hpp"
#include "sae/optim.hpp"
#include "sae/tensor.hpp"

namespace sae {

// --- softmax regression -------------------------------------------------------------------
struct SoftmaxSpec {
    int64_t n_classes = 0;  // K ≥ 2
    int64_t d = 0;          // features per sample ≥ 1
    bool bias = true;       // b [K], not decayed
    double lambda = 1e-4;   // weight decay on θ, ≥ 0
};
void validate(const SoftmaxSpec& spec);           // throws sae::Error naming the setting
int64_t softmax_param_count(const SoftmaxSpec& spec);  // K·d (+ K with bias)

// Scratch for softmax_cost: probabilities [m, K] (reused between calls of the same m).
struct SoftmaxWorkspace {
    std::vector<double> P;
};

// J at params [softmax_param_count] on X [m, d] (row-major, double) with labels y [m] in
// [0, K); the gradient is written into grad when it is not null. m ≥ 1. The products go
// through be.gemm (double).
double softmax_cost(Backend& be, const SoftmaxSpec& spec, const double* params, const double* X,
                    const int32_t* y, int64_t m, double* grad, SoftmaxWorkspace& ws);

// Class probabilities P [m, K] (rows sum to 1) and the most probable class of each row (the
// lowest index on ties).
void softmax_probabilities(Backend& be, const SoftmaxSpec& spec, const double* params,
                           const double* X, int64_t m, double* P);
std::vector<int32_t> softmax_predict(Backend& be, const SoftmaxSpec& spec, const double* params,
                                     const Matrix<double>& X);

struct SoftmaxTrainOptions {
    int64_t max_iterations = 400;  // L-BFGS iterations (UFLDL: 400 for self-taught learning)
    LbfgsOptions lbfgs{};
};
struct SoftmaxFit {
    std::vector<double> params;  // [softmax_param_count], starting from 0.005·N(0,1) θ, zero b
    double cost = 0;
    int64_t iterations = 0, evaluations = 0;
    LbfgsStatus status = LbfgsStatus::running;  // running = stopped at max_iterations
};
// X [m, d] with X.cols == spec.d, y [m] in [0, K). Deterministic for a given seed.
SoftmaxFit softmax_train(Backend& be, const SoftmaxSpec& spec, const Matrix<double>& X,
                         const std::vector<int32_t>& y, const SoftmaxTrainOptions& options,
                         uint64_t seed = 0);

// Fraction of pred[i] == truth[i] (sizes must match, ≥ 1).
double accuracy(const std::vector<int32_t>& pred, const std::vector<int32_t>& truth);
// Counts C [K, K]: C(t, p) = number of samples of true class t predicted as p (rows: truth).
Matrix<int64_t> confusion_matrix(const std::vector<int32_t>& pred, const std::vector<int32_t>& truth,
                                 int64_t n_classes);

// --- data selection -----------------------------------------------------------------------
// "0-4", "5-9", "1,3,7", "0-2,8" → sorted distinct class labels. Labels are integers in
// [0, 2^31). Malformed text ("0-x", "4-2", "", "1,,2") throws one line saying what is wrong.
std::vector<int32_t> class_spec_parse(const std::string& spec);
std::string class_spec_text(const std::vector<int32_t>& classes);  // "0,1,2,3,4" → "0-4"

// Labels from an IDX (e.g. MNIST labels-idx1-ubyte.gz) or .npy file: a 1-d array (or [N, 1])
// of non-negative integers. Throws naming the path otherwise.
std::vector<int32_t> labels_load(const std::string& path);

// Indices i (ascending) with labels[i] in classes. Throws when a class has no sample.
std::vector<int64_t> select_by_labels(const std::vector<int32_t>& labels,
                                      const std::vector<int32_t>& classes);
// labels[idx[i]] → its position in classes (sorted): classes {5,…,9} maps 5 → 0, …, 9 → 4.
std::vector<int32_t> remap_labels(const std::vector<int32_t>& labels, const std::vector<int64_t>& idx,
                                  const std::vector<int32_t>& classes);

struct Split {
    std::vector<int64_t> train, test;  // disjoint, each ascending, together = the input
};
// A seeded Fisher–Yates shuffle (sae::Rng) of idx; the first round(fraction·n) go to train.
// fraction in (0, 1); both parts must be non-empty (throws otherwise). Same seed, same split.
Split split_indices(const std::vector<int64_t>& idx, double train_fraction, uint64_t seed);

// Rows idx of X, in that order.
template <class T>
Matrix<T> take_rows(const Matrix<T>& X, const std::vector<int64_t>& idx);
// Float features to double (for softmax_train).
Matrix<double> to_double(const Matrix<float>& X);

// Writes a C-order uint8 .npy array atomically (dtype '|u1'), e.g. selected MNIST digits: read
// back with normalize = "unit_range" they are divided by 255, exactly like the IDX file.
void npy_write_u8(const std::string& path, const uint8_t* data, const std::vector<int64_t>& shape);

}  // namespace sae
