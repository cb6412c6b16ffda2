// Each subcommand registers itself on the app; its callback throws sae::Error on failure.
#pragma once
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "sae/config.hpp"

namespace sae_cli {

void add_train(CLI::App& app);
void add_eval(CLI::App& app);
void add_encode(CLI::App& app);
void add_gradcheck(CLI::App& app);
void add_synth(CLI::App& app);

// CONFIG file (optional) then every --set key=value in order, validated.
sae::Config load_config(const std::string& path, const std::vector<std::string>& sets);

}  // namespace sae_cli
