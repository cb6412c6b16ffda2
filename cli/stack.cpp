#include <cstdio>

#include "commands.hpp"
#include "sae/stack.hpp"

namespace sae_cli {

void add_stack(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "stack", "stacked autoencoders: greedy layer-wise pretraining, a softmax layer, end-to-end fine-tuning; prints JSON");
    struct Args {
        std::string config, labels, out = "runs/stack";
        std::vector<std::string> sets;
    };
    auto args = std::make_shared<Args>();
    cmd->add_option("CONFIG", args->config, "TOML file of settings (layers = [200, 200], classic settings per layer, ...)");
    cmd->add_option("--labels", args->labels, "labels of the data's samples: IDX (e.g. MNIST labels-idx1-ubyte.gz) or .npy")
        ->required();
    cmd->add_option("--set", args->sets, "override a setting: --set key=value (repeatable), e.g. --set layers=200,200");
    cmd->add_option("--out", args->out, "output directory")->capture_default_str();
    cmd->footer(
        "Uses the settings layers, test_fraction, softmax_weight_decay, softmax_iterations, finetune_iterations, and per\n"
        "layer the classic autoencoder's settings (encoder_activation, sparsity, rho, beta, weight_decay, max_iterations, ...).\n"
        "Outputs in DIR: layerK/{model.safetensors, cfg.json} (layerK/input.npy for K >= 2), stack.safetensors\n"
        "(enc1.W, enc1.b, ..., softmax.W, softmax.b), stack.json (test accuracy before and after fine-tuning).\n"
        "See sae train --help for every setting.");
    cmd->callback([args]() {
        const sae::Config cfg = load_config(args->config, args->sets);
        const sae::StackReport r = sae::stack_run(cfg, args->labels, args->out);
        std::printf("%s\n", sae::stack_report_json(r).c_str());
    });
}

}  // namespace sae_cli
