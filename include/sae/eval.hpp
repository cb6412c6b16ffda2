// Using a model: load a data set as the config says, evaluate every cost term and statistic
// over a whole data set (in chunks; the classic KL term uses ρ̂ over the whole set), encode,
// and check gradients.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "sae/backend.hpp"
#include "sae/config.hpp"
#include "sae/data.hpp"
#include "sae/metrics.hpp"
#include "sae/model.hpp"
#include "sae/objective.hpp"
#include "sae/tensor.hpp"

namespace sae {

// Reads any supported file, keeps the first max_samples samples (0 = all) and rejects
// non-finite values. Returns the raw values [N, d_in]; *source (if given): the element type read.
Matrix<float> dataset_read(const std::string& path, int64_t max_samples, SourceType* source = nullptr);
// Training data: read, fit the normalisation `normalize` on it (*fitted), apply it.
Matrix<float> dataset_load_fit(const std::string& path, const std::string& normalize,
                               int64_t max_samples, Normalizer* fitted);
// A model's input: read, then apply the model's saved normalisation.
Matrix<float> dataset_load(const std::string& path, const Normalizer& norm, int64_t max_samples);

// The same two steps on samples already in memory (the Python package's arrays): X [rows, cols]
// raw values converted to float32 from `source`, checked like a file's samples (none, or a
// non-finite value, is an error naming `name`). When the normalisation changes nothing
// (normalize = "none") no copy is made: *normalised is left empty and X is used as it is.
// Training data: the first max_samples rows (0 = all) are kept (returned: their count), the
// normalisation fitted on them (*fitted) and applied.
int64_t samples_fit(const float* X, int64_t rows, int64_t cols, SourceType source, const std::string& normalize,
                    int64_t max_samples, const std::string& name, Normalizer* fitted, Matrix<float>* normalised);
// A model's input: the model's saved normalisation applied.
void samples_apply(const float* X, int64_t rows, int64_t cols, SourceType source, const Normalizer& norm,
                   const std::string& name, Matrix<float>* normalised);

// For a model saved before normalisation statistics were stored (`sae upgrade`): fits them on
// its training data (`data`, or cfg.json's data and max_samples when empty) and rewrites cfg.json
// atomically with "normalize_stats". Returns what was fitted; a model that has them already is
// left alone (*changed = false).
Normalizer model_fit_normalization(const std::string& dir, const std::string& data, bool* changed);

struct EvalResult {
    CostTerms J;
    double mse = 0, fvu = 0, l0 = 0, mean_activation = 0, dead_fraction = 0, dense_fraction = 0;
    // SAELens's reconstruction metrics (docs/formats.md): 1 − fvu, mean cos(x, x̂), mean
    // ‖x̂‖/‖x‖, Σ‖x̂‖² / Σ x·x̂. Over the inputs the model sees (after its saved normalisation).
    double explained_variance = 0, cossim = 0, l2_ratio = 0, relative_reconstruction_bias = 0;
    double rho_hat_min = 0, rho_hat_max = 0;
    Stats::Histogram density;
    int64_t n = 0;
};

// X [N, d_in] (raw inputs: saved models have any input scale folded in). A latent is active on
// a sample when h > threshold. The objective is put in inference mode.
EvalResult evaluate(Backend& be, Objective& obj, const Config& cfg, const float* params,
                    const Matrix<float>& X, double threshold, int64_t chunk = 4096);

EvalResult evaluate(Backend& be, Objective& obj, const Config& cfg, const float* params,
                    const float* X, int64_t rows, int64_t cols, double threshold, int64_t chunk = 4096);

// The JSON object `sae eval` prints (one line): J_total, J_rec, J_weight_decay, J_sparsity,
// J_denoise, mse, fvu, l0, mean_activation, dead_fraction, dense_fraction, density_log10_hist,
// rho_hat_min, rho_hat_max, samples; with mm (against G ground-truth features) also mmcs,
// mmcs_min, mmcs_median, mmcs_frac_above_0.9, ground_truth_features.
struct MmcsResult;
std::string eval_json(const EvalResult& r, const MmcsResult* mm = nullptr, int64_t G = 0);

// Hidden activations H [N, d_sae].
Matrix<float> encode(Backend& be, Objective& obj, const float* params, const Matrix<float>& X,
                     int64_t chunk = 4096);
// The same from X [rows, cols] into H [rows, d_sae].
void encode(Backend& be, Objective& obj, const float* params, const float* X, int64_t rows, int64_t cols,
            float* H, int64_t chunk = 4096);
// Reconstructions X̂ [rows, d_in] of X [rows, cols] (the model's forward pass, as in evaluate).
void reconstruct(Backend& be, Objective& obj, const float* params, const float* X, int64_t rows, int64_t cols,
                 float* Xhat, int64_t chunk = 4096);
// Reconstructions X̂ [rows, d_in] from hidden activations H [rows, d_sae], as docs/formats.md
// states: classic g(H·W_dec + b_dec) with g = decoder_activation, the others H·W_dec + b_dec.
void decode(Backend& be, const Objective& obj, const Config& cfg, const float* params, const float* H,
            int64_t rows, float* Xhat);

// `sae gradcheck`: a small classic model of the settings' activations, tying, sparsity and
// coefficients (a zero coefficient raised so every term is checked), X [samples, d_in] uniform
// in [0.05, 0.95] from seed + 12345; the spec and cost used come back with the result.
struct GradcheckRun;
GradcheckRun gradcheck_settings(const Config& cfg, int64_t d_in, int64_t d_sae, int64_t samples, double eps = 3e-5);

// Central differences in double: ‖num − ana‖ / ‖num + ana‖ per parameter tensor and overall.
struct GradcheckResult {
    std::vector<std::pair<std::string, double>> per_tensor;
    double overall = 0;
};
// Classic model. X [m, spec.d_in] in double; parameters initialised from seed with non-zero biases.
struct GradcheckRun {
    ModelSpec spec;
    CostSpec cost;
    GradcheckResult result;
};
GradcheckResult gradcheck(const ModelSpec& spec, const CostSpec& cost,
                          const std::vector<double>& X, int64_t m, uint64_t seed,
                          double eps = 3e-5);

}  // namespace sae
