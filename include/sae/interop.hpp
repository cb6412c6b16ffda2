// Models in and out of the field's two common formats (docs/formats.md, "Other tools' formats"):
//   SAELens:  DIR/cfg.json + DIR/sae_weights.safetensors (W_enc [d_in, d_sae], b_enc, W_dec
//             [d_sae, d_in], b_dec; `threshold` for jumprelu; b_gate, r_mag, b_mag for gated).
//   sparsify: DIR/cfg.json + DIR/sae.safetensors (encoder.weight [num_latents, d_in],
//             encoder.bias, W_dec [num_latents, d_in], b_dec); TopK only.
// Both take raw activations; a model whose saved normalisation is not `none` is refused on export.
#pragma once
#include <string>

namespace sae {

enum class ExternalFormat { saelens, sparsify };
ExternalFormat external_format_parse(const std::string& name);  // "saelens" | "sparsify"

// Writes the model in model_dir (a directory of `sae train`) to out in that format. Throws one
// line naming what cannot be expressed (normalisation, an architecture the format lacks).
void model_export(const std::string& model_dir, ExternalFormat format, const std::string& out);

// Reads a directory of that format and writes an sae model directory to out (eval, encode,
// report read it); out/source_cfg.json keeps the original cfg.json. Unsupported variants
// (hook_z reshaping, transcoders, runtime normalisation, skip connections) and malformed files
// (missing keys, wrong shapes or dtypes) are refused with one line.
void model_import(const std::string& from, ExternalFormat format, const std::string& out);

}  // namespace sae
