// libFuzzer target: a TOML settings file (config_parse_toml, the in-memory half of
// config_load_toml), then validation and a round trip through cfg.json.
#include "fuzz_common.hpp"
#include "sae/config.hpp"
#include "sae/model.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string in = sae_fuzz::bytes(data, size);
    sae::Config cfg;
    if (!sae_fuzz::parses([&] { cfg = sae::config_parse_toml(in, "fuzz/settings.toml"); })) return 0;

    const std::string json = sae::config_to_json(cfg);
    sae::Config again;
    sae_fuzz::require(sae_fuzz::parses([&] { again = sae::config_from_json(json, "round trip"); }),
                      "toml: config_to_json output does not parse back", json);
    sae_fuzz::require(sae::config_to_json(again) == json, "toml: round trip changed the settings", json);

    sae_fuzz::parses([&] {
        sae::config_validate(cfg);
        (void)sae::model_layout(sae::config_model_spec(cfg, 7));
        (void)sae::config_cost_spec(cfg);
    });
    return 0;
}
