// Known-ground-truth benchmark (Sharkey, Braun & Millidge 2022, "Taking features out of
// superposition with sparse autoencoders", interim report) and the MMCS metric.
//
// Data: G true features F [G, d], each a random Gaussian direction scaled to unit norm.
// Feature i is active in a sample with probability pᵢ = min(1, s·decayⁱ) (decay = 0.99), s
// chosen so that Σᵢ pᵢ = mean_active (the expected number of active features per sample). When
// s·decay⁰ > 1 the leading probabilities are clipped at 1 and s is solved again over the others,
// so the expected count stays mean_active; SynthData::clipped says how many were clipped.
// An active feature gets a coefficient cᵢ uniform in [0, 1) (24-bit float grid, so never 1);
// an inactive one gets 0. A sample is x = Σᵢ cᵢ·Fᵢ (accumulated in double over i ascending,
// rounded to float once).
//
// Independent activations (default): feature i is active when an independent uniform draw is
// below pᵢ.
// Correlated activations (correlated = true): z ~ N(0, Σ) with Σ a random correlation matrix
//   Σ = D^{-1/2}·(A·Aᵀ + I)·D^{-1/2},  A [G, r] iid N(0, 1), r = correlation_rank, D = diag(A·Aᵀ + I),
// drawn as zᵢ = (Aᵢ·u + eᵢ)/√Dᵢᵢ with u ~ N(0, I_r), e ~ N(0, I_G); feature i is active when
// Φ(zᵢ) < pᵢ, i.e. zᵢ < Φ⁻¹(pᵢ). Each zᵢ is standard normal, so the marginal activation
// probabilities are still exactly pᵢ, but features whose rows of A point the same way fire
// together (and opposite ones avoid each other).
//
// Determinism: everything comes from sae::Rng. Features (and A) from streams derived from the
// seed; samples in blocks of kSynthBlock rows, each block with its own stream, so the output is
// the same bits for a given seed whatever the thread count.
#pragma once
#include <cstdint>
#include <vector>

#include "sae/backend.hpp"

namespace sae {

inline constexpr int64_t kSynthBlock = 1024;                  // rows per random stream
inline constexpr uint64_t kSynthMaxBytes = 8ull << 30;       // refuse data (and codes) above 8 GiB

struct SynthSpec {
    int64_t features = 0;        // G ≥ 1
    int64_t dim = 0;             // d ≥ 1
    int64_t samples = 0;         // N ≥ 1
    double mean_active = 5.0;    // expected active features per sample, in (0, G]
    double decay = 0.99;         // pᵢ ∝ decayⁱ, in (0, 1]
    bool correlated = false;
    int64_t correlation_rank = 4;  // r, columns of A (correlated only), ≥ 1
    uint64_t seed = 0;
};

// Throws sae::Error naming the bad setting; also refuses sizes above kSynthMaxBytes
// (data [N, d] float32, and codes [N, G] float32 when keep_codes) before anything is allocated.
void synth_validate(const SynthSpec& spec, bool keep_codes = false);

// Activation probabilities p [G] for the spec (see above) and the number clipped at 1.
std::vector<double> synth_probabilities(const SynthSpec& spec, int64_t* clipped = nullptr);

struct SynthData {
    std::vector<float> data;      // [N, d]
    std::vector<float> features;  // [G, d], unit-norm rows
    std::vector<float> codes;     // [N, G] coefficients cᵢ (0 when inactive); empty unless keep_codes
    std::vector<double> probabilities;  // [G]
    int64_t clipped = 0;          // probabilities clipped at 1
    int64_t active_total = 0;     // activations drawn over all samples
    double mean_active() const;   // active_total / N (the empirical count)
    int64_t samples = 0, dim = 0, n_features = 0;  // N, d, G
};

// Generates the data set (OpenMP over blocks of samples). keep_codes also returns the codes.
SynthData synth_generate(const SynthSpec& spec, bool keep_codes = false);

// Standard normal CDF Φ and its inverse (bisection to full double precision; ±inf at 0 and 1).
double normal_cdf(double x);
double normal_quantile(double p);

// --- MMCS ---------------------------------------------------------------------------------
// Mean max cosine similarity between true features F [G, d] and decoder rows W_dec [d_sae, d]:
//   MMCS = (1/G)·Σᵢ maxⱼ cos(Fᵢ, W_dec[j]).
// Both sides are normalised row by row first (so it is invariant to scaling either); a zero
// row has cosine 0 with everything. Cosines are products of normalised float rows through
// be.gemm, in blocks of true features (memory O(block·d_sae)), clamped to [−1, 1].
struct MmcsResult {
    double mmcs = 0;
    std::vector<double> per_feature;  // [G] max cosine of each true feature
    std::vector<int64_t> best_row;    // [G] the decoder row attaining it
    double min = 0, median = 0;       // over per_feature
    double frac_above_0_9 = 0;        // fraction of true features with max cosine > 0.9
};
MmcsResult mmcs(Backend& be, const float* features, int64_t G, const float* W_dec, int64_t d_sae, int64_t d);
// The same through the "onednn" backend.
MmcsResult mmcs(const float* features, int64_t G, const float* W_dec, int64_t d_sae, int64_t d);

}  // namespace sae
