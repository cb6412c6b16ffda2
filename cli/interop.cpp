#include <cstdio>

#include "commands.hpp"
#include "sae/interop.hpp"

namespace sae_cli {

void add_export(CLI::App& app) {
    auto* cmd = app.add_subcommand("export", "write a model in SAELens's or sparsify's layout (docs/formats.md)");
    struct Args {
        std::string model, format, out;
    };
    auto args = std::make_shared<Args>();
    cmd->add_option("--model", args->model, "model directory written by `sae train`")->required();
    cmd->add_option("--format", args->format, "saelens (cfg.json + sae_weights.safetensors) or sparsify "
                                              "(cfg.json + sae.safetensors; TopK only)")
        ->required();
    cmd->add_option("--out", args->out, "output directory (created if missing)")->required();
    cmd->callback([args]() {
        sae::model_export(args->model, sae::external_format_parse(args->format), args->out);
        std::printf("wrote %s (%s)\n", args->out.c_str(), args->format.c_str());
    });
}

void add_import(CLI::App& app) {
    auto* cmd = app.add_subcommand("import", "turn a SAELens or sparsify SAE directory into an sae model directory");
    struct Args {
        std::string from, format, out;
    };
    auto args = std::make_shared<Args>();
    cmd->add_option("--format", args->format, "saelens or sparsify")->required();
    cmd->add_option("--from", args->from, "the directory holding its cfg.json and safetensors file")->required();
    cmd->add_option("--out", args->out, "output model directory (created if missing)")->required();
    cmd->callback([args]() {
        sae::model_import(args->from, sae::external_format_parse(args->format), args->out);
        std::printf("wrote %s (from %s, %s)\n", args->out.c_str(), args->from.c_str(), args->format.c_str());
    });
}

}  // namespace sae_cli
