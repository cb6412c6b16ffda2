#include <cstdio>

#include "commands.hpp"
#include "sae/comm.hpp"
#include "sae/error.hpp"
#include "sae/train.hpp"

namespace sae_cli {

namespace {
void print_summary(const sae::Config& cfg, const sae::TrainSummary& s, const std::string& out) {
    std::printf("trained %lld %s in %.1f s (%s): J_total %.6g (rec %.6g, weight decay %.6g, sparsity %.6g), mean rho_hat %.4f\n",
                (long long)s.steps, cfg.optimizer == "lbfgs" ? "iterations" : "steps", s.seconds,
                s.stop_reason.c_str(), s.J.total(), s.J.rec, s.J.weight_decay, s.J.sparsity, s.mean_rho_hat);
    if (s.skipped_batches > 0)
        std::printf("skipped %lld batches with non-finite values (on_nonfinite = skip)\n", (long long)s.skipped_batches);
    std::printf("outputs: %s/{model.safetensors, cfg.json, metrics.jsonl, %s}\n", out.c_str(),
                cfg.latent_shards > 1 ? "checkpoint.json + one checkpoint file per latent shard" : "checkpoint.safetensors");
}

// Several ranks: what rank 0 handed to each collective, per step (of every variant together).
void print_traffic(const sae::Config& cfg, int64_t steps) {
    const sae::Comm& comm = sae::comm_world();
    if (comm.size() == 1 || steps <= 0) return;
    std::printf("%d ranks; per %s, rank 0 sent:", comm.size(), cfg.optimizer == "lbfgs" ? "iteration" : "step");
    for (const auto& [what, t] : comm.traffic())
        std::printf(" %s %.0f B in %.2f calls, %.3g ms;", what.c_str(), double(t.bytes) / double(steps),
                    double(t.calls) / double(steps), 1e3 * t.seconds / double(steps));
    std::printf("\n");
}
}  // namespace

void add_train(CLI::App& app) {
    auto* cmd = app.add_subcommand("train", "train a sparse autoencoder");
    struct Args {
        std::string config, out = "runs/train";
        std::vector<std::string> sets, variants;
        bool resume = false;
    };
    auto args = std::make_shared<Args>();
    cmd->add_option("CONFIG", args->config, "TOML file of settings (optional; defaults otherwise)");
    cmd->add_option("--set", args->sets, "override a setting: --set key=value (repeatable)");
    cmd->add_option("--variant", args->variants,
                    "train several models from one pass over the data: --variant name=k16,k=16 (repeatable; "
                    "each writes OUT/<name>/; after the file's [[variant]] tables)");
    cmd->add_option("--out", args->out, "output directory")->capture_default_str();
    cmd->add_flag("--resume", args->resume, "continue from DIR/checkpoint.safetensors, or DIR/checkpoint.json with latent shards (every variant's)");
    cmd->footer("Settings (TOML keys, or --set key=value):\n" + sae::config_help() +
                "\nOutputs in DIR: model.safetensors, cfg.json, metrics.jsonl, checkpoint.safetensors (latent shards under"
                "\nmpirun: checkpoint.json naming one checkpoint file per shard)"
                "\nVariants ([[variant]] tables with name = \"...\", or --variant): each variant's settings apply over"
                "\nthe shared ones and it writes DIR/<name>/; the settings that define the data stream are shared.");
    cmd->callback([args]() {
        std::vector<sae::VariantSpec> specs;
        sae::Config cfg = args->config.empty() ? sae::Config{} : sae::config_load_toml(args->config, &specs);
        for (const auto& s : args->sets) sae::config_apply_override(cfg, s);
        for (const auto& v : args->variants) specs.push_back(sae::variant_parse(v));
        if (specs.empty()) {
            sae::config_validate(cfg);
            const sae::TrainSummary s = sae::train_run(cfg, args->out, args->resume);
            if (s.stop_reason == "interrupted") throw sae::Error(sae::train_interrupted_message(cfg, s));
            if (sae::comm_world().rank() != 0) return;  // rank 0 reports for the job
            print_summary(cfg, s, args->out);
            print_traffic(cfg, s.steps);
            return;
        }
        const std::vector<sae::Variant> variants = sae::config_variants(cfg, specs);
        const auto summaries = sae::train_run_variants(variants, args->out, args->resume, sae::TrainData{}, sae::TrainHooks{});
        if (summaries[0].stop_reason == "interrupted")
            throw sae::Error(sae::train_interrupted_message(variants[0].cfg, summaries[0]));
        if (sae::comm_world().rank() != 0) return;
        for (size_t i = 0; i < variants.size(); ++i) {
            std::printf("%s: ", variants[i].name.c_str());
            print_summary(variants[i].cfg, summaries[i], args->out + "/" + variants[i].name);
        }
        print_traffic(variants[0].cfg, summaries[0].steps);
    });
}

}  // namespace sae_cli
