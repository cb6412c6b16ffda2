#include <cstdio>

#include "commands.hpp"
#include "sae/comm.hpp"
#include "sae/error.hpp"
#include "sae/train.hpp"

namespace sae_cli {

void add_train(CLI::App& app) {
    auto* cmd = app.add_subcommand("train", "train a sparse autoencoder");
    struct Args {
        std::string config, out = "runs/train";
        std::vector<std::string> sets;
        bool resume = false;
    };
    auto args = std::make_shared<Args>();
    cmd->add_option("CONFIG", args->config, "TOML file of settings (optional; defaults otherwise)");
    cmd->add_option("--set", args->sets, "override a setting: --set key=value (repeatable)");
    cmd->add_option("--out", args->out, "output directory")->capture_default_str();
    cmd->add_flag("--resume", args->resume, "continue from DIR/checkpoint.safetensors");
    cmd->footer("Settings (TOML keys, or --set key=value):\n" + sae::config_help() +
                "\nOutputs in DIR: model.safetensors, cfg.json, metrics.jsonl, checkpoint.safetensors");
    cmd->callback([args]() {
        const sae::Config cfg = load_config(args->config, args->sets);
        const sae::TrainSummary s = sae::train_run(cfg, args->out, args->resume);
        if (s.stop_reason == "interrupted") throw sae::Error(sae::train_interrupted_message(cfg, s));
        const sae::Comm& comm = sae::comm_world();
        if (comm.rank() != 0) return;  // rank 0 reports for the job
        std::printf("trained %lld %s in %.1f s (%s): J_total %.6g (rec %.6g, weight decay %.6g, sparsity %.6g), mean rho_hat %.4f\n",
                    (long long)s.steps, cfg.optimizer == "lbfgs" ? "iterations" : "steps", s.seconds,
                    s.stop_reason.c_str(), s.J.total(), s.J.rec, s.J.weight_decay, s.J.sparsity, s.mean_rho_hat);
        if (s.skipped_batches > 0)
            std::printf("skipped %lld batches with non-finite values (on_nonfinite = skip)\n", (long long)s.skipped_batches);
        std::printf("outputs: %s/{model.safetensors, cfg.json, metrics.jsonl, checkpoint.safetensors}\n",
                    args->out.c_str());
        if (comm.size() > 1 && s.steps > 0) {  // what rank 0 handed to each collective, per step
            std::printf("%d ranks; per %s, rank 0 sent:", comm.size(), cfg.optimizer == "lbfgs" ? "iteration" : "step");
            for (const auto& [what, t] : comm.traffic())
                std::printf(" %s %.0f B in %.2f calls, %.3g ms;", what.c_str(), double(t.bytes) / double(s.steps),
                            double(t.calls) / double(s.steps), 1e3 * t.seconds / double(s.steps));
            std::printf("\n");
        }
    });
}

}  // namespace sae_cli
