// Stacked autoencoders for classification (UFLDL, "Building deep networks for classification"):
// greedy layer-wise pretraining of classic sparse autoencoders, a softmax layer on the last
// layer's features, then end-to-end fine-tuning of all encoders and the softmax by backprop.
//
// The network, for a batch X [m, d₀] (row-major) and L stacked encoders:
//   a₀ = X,  aₖ = f(aₖ₋₁·Wₖ + bₖ)       Wₖ [dₖ₋₁, dₖ], bₖ [dₖ]: the k-th autoencoder's W_enc, b_enc
//   z = a_L·W_s + b_s,  p = softmax(z)  W_s [d_L, K], b_s [K]
// Fine-tuning cost (labels y ∈ [0, K)):
//   J = (1/m)·Σᵢ −log p(yᵢ | xᵢ) + (λ/2)·(Σₖ ‖Wₖ‖² + ‖W_s‖²)     (biases are not decayed)
// λ = softmax_weight_decay. Pretraining: layer k is the classic SAE of the settings (activations,
// sparsity, rho, beta, weight_decay, denoising, ...) with d_sae = layers[k−1], trained by
// full-batch L-BFGS for max_iterations on layer k−1's hidden activations of the training part.
// The softmax layer: softmax regression (classify.hpp, with bias) on the last features,
// softmax_iterations of L-BFGS. Fine-tuning: L-BFGS on the concatenated parameters,
// finetune_iterations. Everything is deterministic for a given seed and thread count.
//
// Outputs in DIR (sae stack): layerK/model.safetensors + layerK/cfg.json (each autoencoder, in
// the model_save format: `sae eval`/`sae encode` read them; layer 1 takes the raw data, layer
// K ≥ 2 the previous layer's activations, written as layerK/input.npy for the training part),
// stack.safetensors (the fine-tuned network: enc1.W, enc1.b, ..., softmax.W, softmax.b, float32,
// shapes as above) and stack.json (the report below, also printed).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sae/backend.hpp"
#include "sae/config.hpp"
#include "sae/data.hpp"
#include "sae/model.hpp"
#include "sae/objective.hpp"
#include "sae/tensor.hpp"

namespace sae {

struct StackSpec {
    int64_t d_in = 0;
    std::vector<int64_t> layers;  // hidden sizes d₁..d_L, each ≥ 1, at least one
    int64_t n_classes = 0;        // K ≥ 2
    Activation activation = Activation::sigmoid;  // f of every encoder
    double lambda = 1e-4;         // weight decay of fine-tuning
};
void validate(const StackSpec& spec);  // throws a one-line sae::Error

// enc1.W [d₀, d₁], enc1.b [d₁], ..., encL.W, encL.b, softmax.W [d_L, K], softmax.b [K].
ParamLayout stack_layout(const StackSpec& spec);

template <class T>
struct StackWorkspace {
    std::vector<Matrix<T>> A, dA;  // [m, dₖ] activations and their gradients, k = 1..L
    Matrix<T> Z;                   // [m, K] logits, then probabilities
    std::vector<double> row_sums;  // [m]
    void reserve(const StackSpec& spec, int64_t max_m);
};

// Fine-tuning cost J at params (stack_layout order) on X [m, d₀] with labels y [m] in [0, K);
// grad (same layout) is overwritten with ∂J/∂params when not null. Leaves the class
// probabilities in ws.Z.
template <class T>
double stack_cost(Backend& be, const StackSpec& spec, const ParamLayout& layout, const T* params, const T* X,
                  const int32_t* y, int64_t m, T* grad, StackWorkspace<T>& ws);

// The most probable class (lowest index on ties) of each row of X [m, d₀].
template <class T>
std::vector<int32_t> stack_predict(Backend& be, const StackSpec& spec, const ParamLayout& layout, const T* params,
                                   const T* X, int64_t m);

// Settings `sae stack` needs: layers non-empty without zeros, the classic architecture, L-BFGS.
void stack_check_config(const Config& cfg);

struct StackLayerReport {
    int64_t d_in = 0, d_out = 0;
    int64_t iterations = 0;
    std::string stop_reason;
    CostTerms J;  // at the end, on the layer's training input
    double seconds = 0;
};

struct PretrainedLayer {
    Config cfg;                           // the settings it was trained with (d_sae = its size)
    std::unique_ptr<Objective> objective;  // d_in() = the previous layer's d_sae
    std::vector<float> params;            // objective->layout()
    StackLayerReport report;
};

// Greedy layer-wise pretraining on X [n, d_in] (the training part). If out_dir is not empty,
// each layer is saved as out_dir/layerK/ (model.safetensors, cfg.json; input.npy for K ≥ 2).
// X is normalised by `norm` (saved with layer 1; the later layers take the codes as they are).
std::vector<PretrainedLayer> stack_pretrain(Backend& be, const Config& cfg, const Matrix<float>& X,
                                            const std::string& out_dir, const Normalizer& norm = {});

struct StackReport {
    std::vector<int64_t> layers;
    std::vector<int32_t> classes;  // the distinct labels, sorted; class c of the softmax is classes[c]
    int64_t n_train = 0, n_test = 0;
    std::vector<StackLayerReport> pretraining;
    double softmax_cost = 0;
    int64_t softmax_iterations = 0;
    double accuracy_before = 0, accuracy_after = 0;              // on the test part
    double train_accuracy_before = 0, train_accuracy_after = 0;  // on the training part
    double finetune_cost_before = 0, finetune_cost_after = 0;
    int64_t finetune_iterations = 0;
    std::string finetune_stop_reason;
    double seconds = 0;
};
std::string stack_report_json(const StackReport& report);  // one JSON object, pretty-printed

struct StackModel {
    StackSpec spec;
    ParamLayout layout;
    std::vector<float> params;  // fine-tuned
};

// The whole procedure on labelled data X [n, d_in], labels [n] (non-negative integers, at
// least two distinct values; mapped to 0..K−1 in sorted order): split by test_fraction and
// seed, pretrain, softmax, fine-tune, accuracies before and after. If out_dir is not empty,
// writes every output listed above. model (if not null) receives the fine-tuned network.
StackReport stack_train(Backend& be, const Config& cfg, const Matrix<float>& X, const std::vector<int32_t>& labels,
                        const std::string& out_dir, StackModel* model = nullptr, const Normalizer& norm = {});

// sae stack: loads cfg.data (its normalisation fitted on it and saved with layer 1) and the labels file (IDX or .npy),
// checks that they match, then stack_train into out_dir.
StackReport stack_run(const Config& cfg, const std::string& labels_path, const std::string& out_dir);

}  // namespace sae
