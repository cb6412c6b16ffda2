// libFuzzer target: a model's cfg.json text. model_load reads it with config_from_json, then
// validates the settings and derives the model spec and parameter layout from them; the same
// steps here, in memory. A config that parses must also survive a JSON round trip unchanged.
#include "fuzz_common.hpp"
#include "sae/config.hpp"
#include "sae/model.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string in = sae_fuzz::bytes(data, size);
    sae::Config cfg;
    if (!sae_fuzz::parses([&] { cfg = sae::config_from_json(in, "fuzz/cfg.json"); })) return 0;

    const std::string json = sae::config_to_json(cfg);
    sae::Config again;
    sae_fuzz::require(sae_fuzz::parses([&] { again = sae::config_from_json(json, "round trip"); }),
                      "cfg.json: config_to_json output does not parse back", json);
    sae_fuzz::require(sae::config_to_json(again) == json, "cfg.json: round trip changed the settings", json);

    sae_fuzz::parses([&] {
        sae::config_validate(cfg);
        const sae::ModelSpec spec = sae::config_model_spec(cfg, 7);
        const sae::ParamLayout layout = sae::model_layout(spec);
        sae_fuzz::require(layout.total > 0, "cfg.json: empty parameter layout");
        (void)sae::config_cost_spec(cfg);
        (void)sae::config_optimizer_hyper(cfg);
        (void)sae::config_active_threshold(cfg);
    });
    return 0;
}
