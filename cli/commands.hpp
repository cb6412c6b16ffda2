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
void add_stack(CLI::App& app);     // cli/stack.cpp
void add_classify(CLI::App& app);  // cli/classify.cpp: classify and select
void add_select(CLI::App& app);
void add_patches(CLI::App& app);   // cli/patches.cpp
void add_features(CLI::App& app);  // cli/features.cpp
void add_sweep(CLI::App& app);     // cli/sweep.cpp
void add_report(CLI::App& app);    // cli/report.cpp
void add_bench(CLI::App& app);     // cli/bench.cpp
void add_upgrade(CLI::App& app);   // cli/upgrade.cpp
void add_export(CLI::App& app);    // cli/interop.cpp: export and import
void add_import(CLI::App& app);

// CONFIG file (optional) then every --set key=value in order, validated.
sae::Config load_config(const std::string& path, const std::vector<std::string>& sets);

}  // namespace sae_cli
