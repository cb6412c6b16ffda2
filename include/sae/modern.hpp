// Modern SAEs for interpretability (TopK, BatchTopK, JumpReLU, L1/"standard"), decoder linear:
//   x' = x − b_dec  (if apply_b_dec_to_input, else x)       X [m, d_in] row-major
//   pre = x'·W_enc + b_enc                                  pre [m, d_sae]
//   h = σ(pre)  with σ per architecture:
//     standard : relu(pre)
//     topk     : relu of the k largest entries of each row of pre, 0 elsewhere
//     batchtopk: training (threshold < 0 passed): relu of the m·k largest entries of pre over
//                the whole batch; inference: pre·1[pre > threshold] with the learnt threshold
//     jumprelu : pre·H(pre − θ), θ = exp(log_threshold) per latent
//     gated    : pre (with bias b_gate) is the gate; the magnitude path shares the weights,
//                mag = x'·(W_enc ⊙ exp(r_mag)) + b_mag = (pre − b_gate)·exp(r_mag) + b_mag,
//                h = 1[pre > 0]·relu(mag)  (Rajamanoharan et al. 2024)
//     matryoshka_batchtopk: batchtopk's selection (training and inference) over all latents
//   x̂ = h·W_dec + b_dec                                     x̂ [m, d_in]
// Cost terms (every term averaged over the batch, same convention as the classic model):
//   rec      = (1/m)·Σᵢ ½‖x̂ᵢ − xᵢ‖²;  matryoshka_batchtopk (Bussmann et al., Nabeshima 2025):
//              latents in nested groups ending at group_ends[0] < ... < group_ends[G−1] = d_sae,
//              x̂⁽ᵍ⁾ = h[:, :group_ends[g]]·W_dec[:group_ends[g]] + b_dec (the prefix of groups
//              0..g), rec = Σ_g group_weights[g]·(1/m)·Σᵢ ½‖x̂⁽ᵍ⁾ᵢ − xᵢ‖²; x̂ = x̂⁽ᴳ⁻¹⁾.
//   sparsity = standard: λ₁·(1/m)·Σᵢⱼ |hᵢⱼ|·‖W_dec[j]‖ (‖W_dec[j]‖ factor only if
//              l1_decoder_norm); jumprelu: λ₀·(1/m)·Σᵢⱼ H(preᵢⱼ − θⱼ); topk/batchtopk: 0;
//              gated: λ₁·(1/m)·Σᵢⱼ relu(preᵢⱼ)·‖W_dec[j]‖ (the norm as for standard).
//              Multiplied by sparsity_scale (sparsity-coefficient warm-up).
//   aux      = AuxK (topk/batchtopk, when a dead mask is given and at least one latent is dead):
//              e = x − x̂ (treated as a constant), among dead latents take the k_aux largest
//              pre-activations per row (relu), ê = h_aux·W_dec (no bias),
//              aux = aux_coefficient·(1/m)·Σᵢ ½‖êᵢ − eᵢ‖². Gradient flows to W_enc, b_enc (and
//              b_dec through x' if applied), W_dec through ê only.
//              gated instead: the gate's own reconstruction through a frozen decoder,
//              x̃ = relu(pre)·W_dec + b_dec with W_dec, b_dec constants, aux = (1/m)·Σᵢ ½‖x̃ᵢ − xᵢ‖²
//              (coefficient 1, the same ½ as rec); its gradient reaches W_enc, b_gate (and b_dec
//              through x' only).
//   weight_decay: 0 (not used by modern SAEs).
// Straight-through gradients (Rajamanoharan et al. 2024), rectangle kernel K(u) = 1[|u| < ½],
// ε = bandwidth: ∂H(pre − θ)/∂θ := −(1/ε)·K((pre − θ)/ε); ∂h/∂θ := −(θ/ε)·K((pre − θ)/ε);
// ∂h/∂pre = H(pre − θ) (no gradient to pre through the step). Gradients w.r.t. log_threshold
// apply the chain rule through θ = exp(log_threshold).
// TopK/BatchTopK: gradient flows only through the kept entries (the selection is constant).
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "sae/backend.hpp"
#include "sae/comm.hpp"
#include "sae/model.hpp"
#include "sae/shards.hpp"
#include "sae/rng.hpp"
#include "sae/tensor.hpp"

namespace sae {

enum class Arch { standard, topk, batchtopk, jumprelu, gated, matryoshka_batchtopk };

// What a learnt threshold is and how it is saved as the tensor `threshold` [d_sae].
enum class ThresholdKind {
    none,     // no threshold
    learnt,   // a parameter log_threshold [d_sae], saved as exp(log_threshold)
    batch,    // one inference threshold learnt from the training batches (running mean of the
              // smallest kept activation), saved repeated d_sae times
};

// One row per architecture: everything the shared pipeline of modern_cost, the layout and the
// saved files ask of it. The selection, penalty and dense backward that go with a row live in
// src/modern.cpp (its ArchOps row), the reference in src/reference/reference_modern.cpp.
struct ArchInfo {
    Arch arch;
    const char* name;
    bool uses_k;              // keeps k latents per sample (exactly, or on average over a batch)
    bool aux_k;               // AuxK on dead latents applies (when k_aux > 0)
    bool lists;               // has the sparse path (active latents as row lists)
    ThresholdKind threshold;  // learnt or batch threshold, saved as `threshold`
    bool gate;                // gated: pre is the gate; a magnitude path shares W_enc (below)
    bool nested;              // rec sums the errors of nested prefixes of groups (group_ends)
    const char* enc_bias;     // the encoder product's bias tensor
    std::vector<const char*> extra;  // further [d_sae] parameters, in layout order
    const char* summary;      // one line for docs and errors
};
// Every architecture, in enum order; tests iterate over it.
const std::vector<ArchInfo>& arch_table();
const ArchInfo& arch_info(Arch a);
Arch arch_parse(const std::string& name);  // a row's name, or "l1" for standard
std::string arch_name(Arch a);

struct ModernSpec {
    int64_t d_in = 0, d_sae = 0;
    Arch arch = Arch::topk;
    int64_t k = 32;                   // topk, batchtopk
    bool apply_b_dec_to_input = true;
    bool l1_decoder_norm = true;      // standard: weight |h_j| by ‖W_dec[j]‖
    double l1_coefficient = 1e-3;     // standard
    double l0_coefficient = 1e-3;     // jumprelu
    double bandwidth = 1e-3;          // jumprelu straight-through kernel width ε
    double initial_threshold = 1e-3;  // jumprelu θ at init
    int64_t k_aux = 0;                // AuxK latents per sample (0 = off)
    double aux_coefficient = 1.0 / 32;
    std::vector<int64_t> group_ends;   // matryoshka: end of each nested group, ascending, last = d_sae
    std::vector<double> group_weights; // matryoshka: weight of each prefix's reconstruction error
    // Latent shards (docs/distributed.md): this spec's d_sae latents are latents
    // [latent_begin, latent_begin + d_sae) of a dictionary of latents_total (0: the whole one).
    int64_t latent_begin = 0, latents_total = 0;
};
// Group ends from fractions of d_sae ("0.25,0.25,0.5": sizes, summing to 1; each group at least
// one latent) and the prefixes' weights ("" = 1 each, else one number per group). Errors name
// the settings matryoshka_groups and matryoshka_weights.
std::vector<int64_t> matryoshka_group_ends(const std::string& fractions, int64_t d_sae);
std::vector<double> matryoshka_group_weights(const std::string& weights, size_t groups);
void validate(const ModernSpec& spec);  // throws sae::Error naming the setting

// W_enc [d_in, d_sae], b_enc [d_sae] (gated: b_gate), W_dec [d_sae, d_in], b_dec [d_in],
// then the row's extra [d_sae] tensors: jumprelu log_threshold; gated r_mag, b_mag.
ParamLayout modern_layout(const ModernSpec& spec);

// Decoder rows: random Gaussian directions scaled to norm 0.1; W_enc = W_decᵀ; biases 0;
// jumprelu log_threshold = log(initial_threshold). A latent shard (spec.latents_total > 0) gets
// the bits of its latents in the whole dictionary's initialisation (the draws of the latents
// before latent_begin skipped).
template <class T>
void modern_init(const ModernSpec& spec, const ParamLayout& layout, T* params, Rng& rng);

// How modern_cost forms its products (set in the workspace before reserve()).
//   dense:  every product over the dense [m, d_sae] activations (three GEMMs in the backward).
//   sparse: topk/batchtopk/jumprelu through per-row index lists of the active latents: the
//           decoder forward and backward cost ∝ m·k·d_in instead of m·d_sae·d_in, and the
//           encoder backward touches only active latents. The encoder product stays dense.
//   automatic: sparse for topk and batchtopk; for jumprelu (and BatchTopK's inference rule)
//           sparse while a batch has at most d_sae/16 active latents per row, dense above
//           (at init half the JumpReLU gates are open). standard is always dense.
enum class ProductPath { automatic, dense, sparse };

// Screened TopK (float, lists-only TopK training; docs/performance.md "Screened TopK"). With
// screening on, a pre-activation's value is DEFINED as screen_dot (a fixed-order fp32 dot
// product plus the bias), and the selection is the exact TopK of those values (ties to the lower
// column). A cheap product (fp32 oneDNN or bf16 oneDNN) gives approximations s with a rigorous
// bound |s − value| ≤ e; only the candidates (s + e ≥ a lower bound of the k-th largest) are
// recomputed with screen_dot. fp32 and bf16 give the same bits by construction.
enum class Screen { off, fp32, bf16 };
Screen screen_parse(const std::string& name);  // "off", "fp32", "bf16"
std::string screen_name(Screen s);
// The defining kernel: 16 lanes, lane l sums x[i]·w[i] for i ≡ l (mod 16) in increasing i
// (product rounded, then the sum rounded: no FMA), the lanes added pairwise (l + 8, + 4, + 2,
// + 1), then + b. Picked at load (AVX-512 or plain), the same bits on both.
float screen_dot(const float* x, const float* w, int64_t n, float b);
float screen_dot_plain(const float* x, const float* w, int64_t n, float b);
// The bound's coefficients for inner length n: |s − value| ≤ coef_s·‖x‖·‖w‖ + coef_b·|b| + tau,
// tau = tau_scale·(2n + 4 + 2·√n·(‖x‖ + ‖w‖max)) (underflow, flush-to-zero).
struct ScreenBound {
    double coef_s, coef_b, tau_scale;
};
ScreenBound screen_bound(Screen s, int64_t n);
// Whether bf16 screening takes oneDNN's bf16 product: the CPU has AVX512_BF16 or AMX-BF16 and
// the environment variable SAE_NO_BF16 is not set. Otherwise it takes the fp32 product, which
// gives the same bits (both screen to the same definition), at the fp32 product's speed.
bool screen_bf16_native();
// The factor of ‖w_j‖ in a row's bound (coef_s·‖x‖ above is its loose form), for the row x [n];
// *xn = ‖x‖. fp32: coef_s·‖x‖. bf16, with x̃ = bf16(x) and δx = x − x̃ (both exact in float),
// ρ = the largest ‖w_j − bf16(w_j)‖/‖w_j‖ over the columns (screen_rho) and γ the summation
// term of screen_bound: γ·((1 + ρ)‖x̃‖ + ‖x‖) + ρ‖x̃‖ + (1 + 2ρ)‖δx‖ + 8u‖x‖, which bounds
// |x̃·w̃ − x·w| by the residuals' actual norms instead of their worst case (u_b each): about
// 2.3× tighter on typical data (docs/performance.md). Subnormal entries count as unrounded
// (x̃_i = x_i): their error lies within τ's underflow budget. Norms in double; round the result up.
double screen_row_factor(Screen s, const float* x, int64_t n, double rho, double* xn);
// ρ for the columns of Wt [n, d] row-major (row j = W_enc[:, j]): the largest
// ‖w_j − bf16(w_j)‖/‖w_j‖ over the nonzero columns. screen_column_sq: one column's ‖w‖²
// (returned) and ‖w − bf16(w)‖² (*resid), in double.
double screen_rho(const float* Wt, int64_t n, int64_t d);
double screen_column_sq(const float* w, int64_t d, double* resid);
// Counters of the last modern_cost call with screening.
struct ScreenStats {
    int64_t rows = 0, candidates = 0, fallback_rows = 0, aux_rows = 0, aux_candidates = 0;
};

// The kept entries of an [m, n] matrix by row (row i: [beg[i], end[i]) of col/val, columns
// ascending) and the same entries by column (column j: [col_ptr[j], col_ptr[j+1]) of t_row/t_val,
// rows ascending).
template <class T>
struct SparseRows {
    std::vector<int64_t> beg, end;  // [m]
    std::vector<int32_t> col;       // [cap]
    std::vector<T> val;             // [cap]
    std::vector<int64_t> col_ptr;   // [n + 1]
    std::vector<int32_t> t_row;     // [cap]
    std::vector<T> t_val;           // [cap]
    int64_t cap = 0;
    void reserve(int64_t m, int64_t n, int64_t capacity);
    int64_t nnz(int64_t m) const;
};

// Data replicas (a batch split across ranks, train.cpp): this replica (rank of size) costs a
// contiguous slice of a batch of `rows` rows; batch-wide selections are made over the whole
// batch, with sum(buf [n], n) summing buffers over the replicas. rows = 0: no split.
struct BatchShare {
    int64_t rows = 0;
    int rank = 0, size = 1;
    std::function<void(double*, int64_t)> sum;
};

template <class T>
struct ModernWorkspace {
    BatchShare share;  // BatchTopK's selection over every replica's rows (see BatchShare)
    // Latent shards (float; spec.latents_total > 0): the ranks holding the other latents of the
    // dictionary, this one shard shards->rank() of shards->size(). modern_cost meets them where
    // a step needs every latent: the TopK and AuxK selections (each shard's k best per row
    // merged into the exact global k best), the dead count, x̂ and ê (partial sums over each
    // shard's latents, summed), the sparsity penalty and b_dec's gradient (summed). Everything
    // else (the encoder product, the backward of each latent) stays local. Null: no shards.
    Comm* shards = nullptr;
    ShardBuffers shard_buf;  // the merge's room

    // Execution options; set before reserve().
    Precision precision = Precision::f32;  // float products in f32 or bf16 (double: always double)
    ProductPath path = ProductPath::automatic;
    bool dense_h = true;  // sparse path: also write H and Haux [m, d_sae] (else only the lists)
    // TopK on the sparse path with dense_h off ("lists only"): the encoder product and the
    // selections run this many rows at a time, each block selected while in cache, and pre holds
    // one block (0 = the whole batch at once); H and Haux stay empty.
    int64_t encoder_block = 256;
    Screen screen = Screen::off;  // float: screened selection (see Screen): lists-only TopK,
                                  // BatchTopK (training and inference), JumpReLU
    Screen screen_product = Screen::off;  // the cheap product used (set by reserve): screen, or
                                          // fp32 for bf16 where the CPU lacks bf16 instructions

    Matrix<T> xin;    // [m, d_in] encoder input x − b_dec
    Matrix<T> pre;    // [m, d_sae]
    Matrix<T> H;      // [m, d_sae] activations (dense storage)
    Matrix<T> Xhat;   // [m, d_in]
    Matrix<T> dXhat;  // [m, d_in]
    Matrix<T> dH;     // [m, d_sae]; dense path only (empty when the sparse path serves the arch)
    Matrix<T> Haux, Eaux, dEaux;  // AuxK: h_aux [m, d_sae], ê [m, d_in], ∂aux/∂ê [m, d_in];
                                  // gated: relu(gate), x̃, ∂aux/∂x̃
    Matrix<T> mag;                // gated: magnitude pre-activations [m, d_sae]
    Matrix<T> dXg;                // matryoshka: ∂J/∂x̂ for the latents of each group [G·m, d_in]
                                  // (group g: Σ_{g' ≥ g} w_g'·(x̂⁽ᵍ'⁾ − x)/m, rows g·m ...)
    std::vector<T> bias_sum;      // gated: Σᵢ ∂J/∂(x'·W_enc) [d_sae] (b_dec's gradient through x')
    std::vector<double> mag_scale;  // gated: exp(r_mag) [d_sae]
    SparseRows<T> act;            // active latents (jumprelu: also those in the kernel window)
    SparseRows<T> aux;            // AuxK's selected dead latents
    std::vector<uint16_t> w_bf16; // bf16 lists-only TopK: W_enc rounded to bf16 [d_in · d_sae]
    std::vector<float> screen_wt;   // screening: W_enc transposed [d_sae, d_in]
    std::vector<float> screen_wn;   // ‖W_enc[:, j]‖ rounded up [d_sae]
    std::vector<float> screen_cb;   // coef_b·|b_enc[j]| rounded up [d_sae]
    std::vector<int32_t> screen_col;  // per-thread candidate columns [threads · 2 · d_sae]
    std::vector<float> screen_thr;    // screening jumprelu: the largest float ≤ θ_j − ε [d_sae]
    double screen_rho = 0;            // bf16 screening: this step's ρ (screen_row_factor)
    // Inference (no gradient: encode, eval in chunks): the preparation above is kept while W_enc
    // and b_enc are bit for bit those it was made from (a copy of them, compared on each call);
    // a call with a gradient (training) always prepares afresh and drops the copy.
    std::vector<float> screen_src;  // [d_in · d_sae + d_sae] when kept
    double screen_wn_max = 0;
    ScreenStats screen_stats;
    std::vector<T> scratch;       // per-thread selection and tile buffers [threads · per_thread]
    std::vector<int32_t> iscratch;  // per-thread index buffers [threads · d_sae]
    std::vector<T> cand_val, cand_tmp;  // BatchTopK candidates [2·m·k + d_sae]
    std::vector<int32_t> cand_col;
    std::vector<int64_t> cand_beg, cand_end;  // [m]
    std::vector<int32_t> dead_idx;            // [d_sae]
    std::vector<int64_t> cursor;              // [d_sae]
    std::vector<double> row_sums; // [m] per-row partial sums, combined in row order
    std::vector<double> latent;   // [d_sae] per-latent values (decoder row norms, thresholds)
    int threads = 0;              // per-thread buffers reserved for this many threads
    int64_t per_thread = 0;       // T elements of scratch per thread
    bool sparse_used = false;     // the last modern_cost call took the sparse path
    // Optional profile: when profile is set, modern_cost adds each phase's milliseconds to
    // profile_ms (phases named by modern_phase_names()).
    bool profile = false;
    std::array<double, 8> profile_ms{};
    // Sizes every buffer for batches of up to max_m rows; AuxK buffers and scratch stay empty
    // for architectures that do not use them.
    void reserve(const ModernSpec& spec, int64_t max_m);
};

// Phases of modern_cost, in order: "input" (x − b_dec), "encoder" (the dense product with its
// bias), "select" (σ: TopK/BatchTopK/JumpReLU selection into lists, dense H if written),
// "decode" (x̂, reconstruction loss, dXhat; standard's sparsity), "auxk", "lists" (the
// by-column copies for the backward), "backward" (decoder and encoder gradients), "b_dec".
const std::array<const char*, 8>& modern_phase_names();

// Cost terms for X [m, d_in]; grad (layout of params) overwritten when not null.
// dead [d_sae] (nullable): 1 for latents currently counted as dead (for AuxK).
// batchtopk_threshold: < 0 in training (batch selection), ≥ 0 to use the inference rule.
// Leaves pre (TopK keeping lists only: the last encoder block), Xhat, H (unless the sparse path
// ran with dense_h off; ws.act always holds the active entries when ws.sparse_used) in ws. No allocation once ws is reserved (except the
// dense fallback of BatchTopK's inference rule with a gradient, which sizes dH on first use).
template <class T>
CostTerms modern_cost(Backend& be, const ModernSpec& spec, const ParamLayout& layout,
                      const T* params, const T* X, int64_t m, T* grad, ModernWorkspace<T>& ws,
                      const uint8_t* dead = nullptr, double batchtopk_threshold = -1,
                      double sparsity_scale = 1.0);

// Unit-norm decoder practice: before the step remove from each W_dec row's gradient its
// component parallel to the row; after the step rescale each row to norm 1.
template <class T>
void decoder_remove_parallel_grad(const ModernSpec& spec, const ParamLayout& layout,
                                  const T* params, T* grad);
template <class T>
void decoder_normalize_rows(const ModernSpec& spec, const ParamLayout& layout, T* params);

// Duplicate latents: for each pair j < l of decoder rows W_dec [d_sae, d_in] whose cosine
// exceeds cos_above, the one with the lower score (score [d_sae], e.g. how recently or how often
// it fired; on a tie the later one) is marked, pairs taken in order (j, then l) and skipped once
// either latent is marked, so one latent of every group of near-copies stays. Zero rows are
// never marked. Returns marks [d_sae] (1 = duplicate). The Gram matrix is formed in blocks of
// rows through be (memory O(256·d_sae)).
std::vector<uint8_t> duplicate_latents(Backend& be, const float* W_dec, int64_t d_sae, int64_t d_in,
                                       double cos_above, const std::vector<int64_t>& score);

// BatchTopK inference threshold contribution of one training batch: the smallest positive
// activation kept (from ws.act after a sparse call, else ws.H; the caller keeps a running mean).
// Returns -1 if none was kept.
template <class T>
double batchtopk_min_kept(const ModernWorkspace<T>& ws, int64_t m, int64_t d_sae);

}  // namespace sae
