// A trained model on disk: DIR/model.safetensors (float32 W_enc [d_in, d_sae], b_enc [d_sae],
// W_dec [d_sae, d_in], b_dec [d_in]; W_dec is written out even for tied weights) and
// DIR/cfg.json (every setting, plus d_in, d_sae, architecture, format_version, dtype).
#pragma once
#include <string>
#include <vector>

#include "sae/config.hpp"
#include "sae/model.hpp"
#include "sae/tensor.hpp"

namespace sae {

inline constexpr int kModelFormatVersion = 1;

struct SavedModel {
    Config cfg;
    ModelSpec spec;
    ParamLayout layout;
    std::vector<float> params;  // [layout.total]
};

// The cfg.json text for a config and input dimension.
std::string model_cfg_json(const Config& cfg, int64_t d_in);
void model_save(const std::string& dir, const Config& cfg, const ModelSpec& spec,
                const ParamLayout& layout, const float* params);
// Validates cfg.json (format version, d_in/d_sae) and the tensors' names, dtypes and shapes.
SavedModel model_load(const std::string& dir);

}  // namespace sae
