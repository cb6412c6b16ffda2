// The classic sparse autoencoder (CS294A / UFLDL):
//   H = f(X·W_enc + b_enc)      X [m, d_in] row-major batch, H [m, d_sae]
//   X̂ = g(H·W_dec + b_dec)      X̂ [m, d_in]; tied: W_dec = W_encᵀ (no W_dec parameter)
// Cost, each term separately:
//   J_rec          = (1/m)·Σᵢ ½‖x̂⁽ⁱ⁾ − x⁽ⁱ⁾‖²
//   J_weight_decay = (λ/2)·(‖W_enc‖² + ‖W_dec‖²)          (tied: W_dec is W_encᵀ, counted twice)
//   J_sparsity     = kl: β·Σⱼ KL(ρ‖ρ̂ⱼ), ρ̂ = (1/m)·Σᵢ h⁽ⁱ⁾;  l1: λ′·(1/m)·Σᵢⱼ |hᵢⱼ|;  none: 0
//
// Denoising (training only; optional inputs of model_cost): the encoder sees a corrupted input
// x′ [m, d_in] and a dropout mask r [m, d_sae] multiplies the hidden units, while the target
// stays the clean x:
//   h(x′) = f(x′·W_enc + b_enc),  x̂ = g((r ⊙ h(x′))·W_dec + b_dec),  J_rec = (1/m)·Σᵢ ½‖x̂⁽ⁱ⁾ − x⁽ⁱ⁾‖²
//   J_denoise      = γ·D(x, x′),  D = (1/m)·Σᵢ ½‖h(x⁽ⁱ⁾) − h(x′⁽ⁱ⁾)‖²
// D is the mean squared distance between the hidden representations of the clean and the
// corrupted input (both before dropout); its gradient flows through both h(x) and h(x′).
// The sparsity terms use h(x′) before dropout (inverted dropout keeps E[r ⊙ h] = h, and ρ̂
// stays in (0, 1)). r holds multipliers: 0 (dropped) or 1/(1 − p) (kept), p the dropout rate.
// Without x′ and r (and always in evaluation) the model is the plain one above and J_denoise = 0.
// Layers are plain functions over row-major batches; backward functions ADD into gradients.
// Everything is templated on the scalar (float for training, double for gradient checks).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "sae/backend.hpp"
#include "sae/rng.hpp"
#include "sae/tensor.hpp"

namespace sae {

enum class Activation { sigmoid, relu, tanh, linear };
enum class Sparsity { none, kl, l1 };
enum class Corruption { none, masking, gaussian };
Activation activation_parse(const std::string& name);  // throws listing valid names
std::string activation_name(Activation a);
Sparsity sparsity_parse(const std::string& name);
std::string sparsity_name(Sparsity s);
Corruption corruption_parse(const std::string& name);  // throws listing valid names
std::string corruption_name(Corruption c);

struct ModelSpec {
    int64_t d_in = 0, d_sae = 0;
    Activation encoder = Activation::sigmoid;
    Activation decoder = Activation::sigmoid;
    bool tied = false;
};

struct CostSpec {
    Sparsity sparsity = Sparsity::kl;
    double rho = 0.1;             // kl target mean activation, in (0, 1)
    double beta = 3.0;            // kl weight
    double weight_decay = 3e-3;   // λ
    double l1_coefficient = 1e-3; // λ′
    double gamma = 0.0;           // γ: weight of D(x, x′) (denoising; needs a corrupted input)
};

// How training corrupts a batch (denoising autoencoders). Evaluation never corrupts.
struct DenoiseSpec {
    Corruption corruption = Corruption::none;
    double level = 0.0;    // masking: probability of zeroing each input; gaussian: noise std
    double dropout = 0.0;  // probability of dropping each hidden unit, in [0, 1)
    bool active() const { return (corruption != Corruption::none && level > 0) || dropout > 0; }
};

// The random part of a batch's corruption, drawn from rng in this order: noise [m, d_in]
// row-major (masking: multipliers, 0 with probability `level`, else 1; gaussian: level·N(0, 1);
// none: no draws, noise untouched), then, if drop is not null, drop [m, d_sae] (dropout
// multipliers: 0 with probability p, else 1/(1 − p); all 1 without draws when p = 0).
template <class T>
void draw_corruption(const DenoiseSpec& spec, int64_t m, int64_t d_in, int64_t d_sae, T* noise, T* drop,
                     Rng& rng);
// Xc [n] = X ⊙ noise (masking), X + noise (gaussian) or X (none).
template <class T>
void apply_corruption(Corruption c, const T* X, const T* noise, int64_t n, T* Xc);
// The generator for training step `step` of a run with seed `seed`: the masks of a batch are a
// function of (seed, step) alone, so runs are deterministic and resume to the same bits.
Rng corruption_rng(uint64_t seed, int64_t step);

// Throws sae::Error for impossible combinations (kl with a non-sigmoid encoder, rho ∉ (0,1),
// negative coefficients, zero sizes).
void validate(const ModelSpec& model, const CostSpec& cost);

// Parameter layout: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in] (untied only),
// b_dec [d_in]. Gradients and optimiser moments use the same layout.
ParamLayout model_layout(const ModelSpec& spec);

// Weights uniform in ±√6/√(d_in + d_sae + 1), biases 0 (the UFLDL starter's initialisation).
template <class T>
void model_init(const ModelSpec& spec, const ParamLayout& layout, T* params, Rng& rng);

// Named pointers into a flat buffer laid out by model_layout.
template <class T>
struct ModelParams {
    T* W_enc;  // [d_in, d_sae]
    T* b_enc;  // [d_sae]
    T* W_dec;  // [d_sae, d_in]; for tied weights this points at W_enc and dec_trans is yes
    T* b_dec;  // [d_in]
    Trans dec_trans;
};
template <class T>
ModelParams<T> model_params(const ModelSpec& spec, const ParamLayout& layout, T* flat);

// --- layers -------------------------------------------------------------------------------
// out[i, j] = act(in[i,:]·W[:, j] + b[j]).  in [m, k], W [k, n] (or [n, k] when tw = yes), b [n]
template <class T>
void dense_forward(Backend& be, T* out, const T* in, const T* W, Trans tw, const T* b, int64_t m,
                   int64_t k, int64_t n, Activation act);

// Turns d_out [m, n] (gradient w.r.t. the layer's output) into the gradient w.r.t. its
// pre-activation, in place, using the saved output out [m, n].
template <class T>
void activation_backward(T* d_out, const T* out, int64_t m, int64_t n, Activation act);

// Given d_pre [m, n]: dW += inᵀ·d_pre (or its transpose into a [n, k] W when tw = yes),
// db += column sums of d_pre, and d_in = d_pre·Wᵀ if d_in is not null (overwritten).
template <class T>
void dense_backward(Backend& be, T* d_in, T* dW, T* db, const T* d_pre, const T* in, const T* W,
                    Trans tw, int64_t m, int64_t k, int64_t n);

// --- cost ---------------------------------------------------------------------------------
struct CostTerms {
    double rec = 0, weight_decay = 0, sparsity = 0;
    double aux = 0;  // modern SAEs: AuxK loss on dead latents
    double denoise = 0;  // denoising: γ·D(x, x′), see the top of this file
    double total() const { return rec + weight_decay + sparsity + aux + denoise; }
};

// Per-batch activations and statistics, sized once for the largest batch (no allocation per
// step once reserved).
template <class T>
struct Workspace {
    Matrix<T> H;      // [m, d_sae] hidden activations
    Matrix<T> Xhat;   // [m, d_in] reconstruction
    Matrix<T> dXhat;  // [m, d_in] gradient w.r.t. the decoder pre-activation
    Matrix<T> dH;     // [m, d_sae] gradient w.r.t. the encoder pre-activation
    std::vector<T> rho_hat;  // [d_sae] mean activation over the batch
    std::vector<double> row_sums;  // [m] per-row partial sums, combined in row order
    std::vector<double> col_acc;   // [d_sae] column sums of H in double
    std::vector<double> chunk_sums;  // partial sums of ‖W‖², one per fixed chunk
    std::vector<T> kl_grad;        // [d_sae] the kl gradient, the same for every row
    // Denoising only (sized by reserve(..., true), or on first use):
    Matrix<T> Hdrop;   // [m, d_sae] r ⊙ h(x′), the decoder's input under dropout
    Matrix<T> Hclean;  // [m, d_sae] h(x) of the clean input, for D
    Matrix<T> dHclean; // [m, d_sae] gradient w.r.t. the clean pre-activation
    // Data replicas (a batch split across ranks, train.cpp): the batch given to model_cost is a
    // slice of one of share_rows rows, and ρ̂ is that whole batch's: its column sums are summed
    // over the replicas by share_sum(sums [d_sae]) before dividing by share_rows. 0 = no split.
    int64_t share_rows = 0;
    std::function<void(double*, int64_t)> share_sum;
    void reserve(const ModelSpec& spec, int64_t max_m, bool denoising = false);
};

// J terms for batch X [m, d_in]; if grad (same layout as params) is not null, it is
// overwritten with ∂J_total/∂params. Leaves H, Xhat and rho_hat in ws.
// Denoising: Xc [m, d_in] (the corrupted input the encoder sees; null = X) and drop [m, d_sae]
// (dropout multipliers; null = none). The target is always X; J.denoise = γ·D is computed when
// Xc is given and γ > 0. ws.H then holds h(x′) before dropout. Masks are inputs, so gradients
// are exact for fixed masks.
template <class T>
CostTerms model_cost(Backend& be, const ModelSpec& spec, const CostSpec& cost,
                     const ParamLayout& layout, const T* params, const T* X, int64_t m, T* grad,
                     Workspace<T>& ws, const T* Xc = nullptr, const T* drop = nullptr);

// KL(ρ‖ρ̂) = ρ·log(ρ/ρ̂) + (1−ρ)·log((1−ρ)/(1−ρ̂)), with ρ̂ clamped to [1e-12, 1 − 1e-12] so
// the value stays finite when a latent is always off or always on.
double kl_divergence(double rho, double rho_hat);

}  // namespace sae
