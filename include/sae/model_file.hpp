// A trained model on disk: DIR/model.safetensors (float32 W_enc [d_in, d_sae], b_enc [d_sae],
// W_dec [d_sae, d_in], b_dec [d_in], and `threshold` [d_sae] for jumprelu/batchtopk; W_dec is
// written out even for tied weights) and DIR/cfg.json (every setting, plus d_in, d_sae,
// architecture, format_version, dtype, input_scale, normalize_stats). Weights take inputs as
// normalised by `normalize` with the saved statistics (data.hpp Normalizer); an input scale used
// in training is folded into them on save.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sae/config.hpp"
#include "sae/data.hpp"
#include "sae/objective.hpp"

namespace sae {

inline constexpr int kModelFormatVersion = 1;

struct SavedModel {
    Config cfg;
    std::unique_ptr<Objective> objective;
    std::vector<float> params;  // [objective->layout().total]
    int64_t ranks = 1;          // cfg.json "ranks": the processes that trained it
    Normalizer norm;            // what inputs get before the encoder (saved statistics)
    double input_scale = 1.0;   // as cfg.json records it (already folded into params)
};

// The cfg.json text.
// ranks: the processes that trained it (cfg.json "ranks"; with the setting latent_shards, the
// layout of an mpirun run).
std::string model_cfg_json(const Config& cfg, const Objective& obj, double input_scale,
                           const Normalizer& norm, int64_t ranks = 1);
void model_save(const std::string& dir, const Config& cfg, const Objective& obj, const float* params,
                double input_scale, const Normalizer& norm, int64_t ranks = 1);
// A loaded model written again (its tensors and cfg.json as loaded; `Model.save` in Python).
void model_save(const std::string& dir, const SavedModel& m);
// The decoder rows W_dec [d_sae, d_in] as saved (tied weights give W_encᵀ; any architecture).
std::vector<float> model_decoder_rows(const SavedModel& m);
// The cfg.json "normalize_stats" object of a normaliser, and back (cfg_path for messages). A
// cfg.json without it under normalize ≠ none gives an unfitted normaliser (see Normalizer).
nlohmann::ordered_json normalizer_to_json(const Normalizer& n);
Normalizer normalizer_from_cfg(const nlohmann::json& cfg, const std::string& normalize, const std::string& cfg_path);
// Validates cfg.json (format version, d_in, settings) and the tensors' names, dtypes and shapes.
SavedModel model_load(const std::string& dir);

}  // namespace sae
