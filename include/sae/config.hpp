// Settings: one struct, one table. Every key's name, type, default, range and help text live in
// option_table(); TOML parsing, --set overrides, validation, --help and cfg.json all read it.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "sae/model.hpp"
#include "sae/optim.hpp"

namespace sae {

struct Config {
    // data
    std::string data = "data/mnist10k/images-idx3-ubyte.gz";
    std::string normalize = "auto";      // resolved by config_normalize
    int64_t max_samples = 0;
    int64_t shuffle_buffer = 0;          // > 0: stream .npy shards through a shuffle buffer
    std::string data_dtype = "auto";
    std::string normalize_activations = "none";
    // model
    std::string architecture = "classic";
    int64_t d_sae = 196;
    std::string encoder_activation = "sigmoid";
    std::string decoder_activation = "sigmoid";
    bool tied = false;
    // cost
    std::string sparsity = "kl";
    double rho = 0.1;
    double beta = 3.0;
    double weight_decay = 3e-3;
    double l1_coefficient = 1e-3;
    bool l1_decoder_norm = true;
    int64_t k = 32;
    double l0_coefficient = 1e-3;
    double bandwidth = 1e-3;
    double jumprelu_init_threshold = 1e-3;
    bool apply_b_dec_to_input = true;
    std::string b_dec_init = "geometric_median";
    bool decoder_unit_norm = true;
    int64_t k_aux = -1;                  // < 0: automatic, d_in / 2
    double aux_coefficient = 1.0 / 32;
    std::string matryoshka_groups = "0.125,0.125,0.25,0.5";  // fractions of d_sae, nested groups
    std::string matryoshka_weights = "";                       // per prefix ("" = 1 each)
    int64_t dead_threshold_samples = 10000000;
    bool resample_dead = false;
    double resample_duplicates = 0;      // > 0: cosine above which a decoder row is a duplicate
    int64_t sparsity_warmup_steps = 0;
    double grad_clip_norm = 0;
    // denoising (classic)
    std::string corruption = "none";
    double corruption_level = 0.3;
    double dropout = 0;
    double gamma = 0;
    // optimisation
    std::string optimizer = "lbfgs";
    double lr = 1e-3;
    double momentum = 0.9;
    double adam_beta1 = 0.9;
    double adam_beta2 = 0.999;
    double eps = 1e-8;
    double rmsprop_decay = 0.99;
    int64_t batch_size = 256;
    int64_t epochs = 10;
    int64_t max_iterations = 400;
    int64_t lbfgs_history = 10;          // L-BFGS correction pairs kept (each 2·n doubles)
    std::string lr_schedule = "constant";
    int64_t warmup_steps = 0;
    int64_t lr_step_size = 1000;
    double lr_gamma = 0.1;
    double min_lr = 0.0;
    // run
    int64_t seed = 0;
    int64_t threads = 0;
    int64_t latent_shards = 1;  // ranks that split the latents (mpirun; docs/distributed.md)
    std::string backend = "onednn";
    std::string screen = "off";      // TopK: screened exact selection (off, fp32, bf16)
    std::string dtype = "float32";   // products: float32, or bf16 (fp32 master weights and state)
    int64_t log_every = 10;
    int64_t checkpoint_every = 50;
    double active_threshold = -1;  // < 0: automatic (0 for relu, 0.5 otherwise)
    std::string on_nonfinite = "stop";
    // stacked autoencoders (sae stack)
    std::vector<int64_t> layers;         // hidden sizes, e.g. {200, 200}
    double test_fraction = 0.5;
    double softmax_weight_decay = 1e-4;
    int64_t softmax_iterations = 400;
    int64_t finetune_iterations = 400;
};

using Member = std::variant<std::string Config::*, int64_t Config::*, double Config::*, bool Config::*,
                            std::vector<int64_t> Config::*>;  // an integer list: TOML array, --set a,b,c

struct OptionSpec {
    const char* name;
    Member member;
    const char* group;
    const char* help;
    double min = -1e308, max = 1e308;  // inclusive numeric range
    std::vector<std::string> choices;  // for strings; empty = free text (e.g. a path)
};

const std::vector<OptionSpec>& option_table();
const OptionSpec* option_find(const std::string& key);
// The valid key closest to `key` by edit distance.
std::string option_nearest(const std::string& key);

// Sets one key from text ("--set key=value" or a TOML scalar rendered as text; an integer list
// as "200,200", optionally in brackets, "" = empty). Throws
// sae::Error naming the key and the expected type/range, or the nearest key when unknown.
void config_set(Config& cfg, const std::string& key, const std::string& value);
// "key=value" form.
void config_apply_override(Config& cfg, const std::string& assignment);

// Reads a flat TOML file. Relative paths in `data` are resolved against the file's directory.
// Nested tables, unknown keys and arrays (except arrays of integers for list settings such as
// `layers`) are errors naming the file and the key.
Config config_load_toml(const std::string& path);
// The same on a file's text already in memory (used by config_load_toml and the fuzzer); name
// appears in messages and is the base against which a relative `data` path is resolved.
Config config_parse_toml(const std::string& text, const std::string& name);

// ---- several variants trained from one data stream (sae train) ----
// One variant as given: its name (its output directory OUT/<name>) and the settings that differ,
// as key=value texts applied over the shared settings.
struct VariantSpec {
    std::string name;
    std::vector<std::pair<std::string, std::string>> settings;
};
struct Variant {
    std::string name;
    Config cfg;  // the shared settings with the variant's applied, validated
};
// As config_parse_toml / config_load_toml, also reading [[variant]] tables (each with name = "..."
// and flat keys) into *variants; without variants, such tables are an error.
Config config_parse_toml(const std::string& text, const std::string& name, std::vector<VariantSpec>* variants);
Config config_load_toml(const std::string& path, std::vector<VariantSpec>* variants);
// "name=k16,k=16,d_sae=8192" (sae train --variant). A piece without '=' continues the previous
// value, so lists keep their commas: "name=m,matryoshka_groups=0.5,0.5".
VariantSpec variant_parse(const std::string& text);
// The settings that define the data stream (data, batch order, normalisation, run length,
// threads, logging and checkpoint steps): every variant of one run shares them.
bool config_key_is_shared(const std::string& key);
// The shared settings with each variant's applied. Throws one line naming the variant and: a
// missing, malformed or repeated name, an unknown key (and the nearest one), a shared key, an
// invalid value or combination, or normalize = "auto" resolving differently between variants.
std::vector<Variant> config_variants(const Config& shared, const std::vector<VariantSpec>& specs);

// Checks every range and choice in the table, then cross-key rules (kl needs a sigmoid
// encoder, ...). Throws with one line naming the key and what to do.
void config_validate(const Config& cfg);

// Every key and its value, as a JSON object text (stable key order = table order).
std::string config_to_json(const Config& cfg, int indent = 2);
// Reads the keys of a cfg.json back (unknown keys ignored: cfg.json also carries d_in etc.).
Config config_from_json(const std::string& json_text, const std::string& what);

// The --help text for all keys, grouped, with defaults and ranges.
std::string config_help();

// The architecture the settings select: `architecture`, or the modern one named by `sparsity`
// (topk, batchtopk, jumprelu) when architecture is left at "classic".
std::string config_architecture(const Config& cfg);
bool config_is_modern(const Config& cfg);
// The normalisation the settings select: `normalize`, with auto resolved (unit_range for the
// classic model, none for the modern architectures).
std::string config_normalize(const Config& cfg);

// Model and cost specs implied by the config, for a given input dimension.
ModelSpec config_model_spec(const Config& cfg, int64_t d_in);
CostSpec config_cost_spec(const Config& cfg);
DenoiseSpec config_denoise_spec(const Config& cfg);
OptimizerHyper config_optimizer_hyper(const Config& cfg);
// The threshold above which a latent counts as active (for L0 and dead latents).
double config_active_threshold(const Config& cfg);

}  // namespace sae
