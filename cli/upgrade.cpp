#include <cstdio>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "sae/eval.hpp"
#include "sae/model_file.hpp"

namespace sae_cli {

void add_upgrade(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "upgrade", "add what an older model directory lacks: the normalisation statistics of its training data "
                   "(models saved before they were stored re-derived them from each file read)");
    struct Args {
        std::string model, data;
    };
    auto args = std::make_shared<Args>();
    cmd->add_option("--model", args->model, "model directory written by `sae train`")->required();
    cmd->add_option("--data", args->data, "the model's training data (default: cfg.json's data and max_samples)");
    cmd->callback([args]() {
        bool changed = false;
        const sae::Normalizer n = sae::model_fit_normalization(args->model, args->data, &changed);
        std::printf("%s: normalize = %s, normalize_stats %s %s\n", args->model.c_str(),
                    sae::normalize_name(n.mode).c_str(), sae::normalizer_to_json(n).dump().c_str(),
                    changed ? "(fitted on the training data and saved in cfg.json)" : "(already saved; nothing to do)");
    });
}

}  // namespace sae_cli
