// sae report: one self-contained HTML page about a training run or a sweep.
#include <cstdio>

#include "commands.hpp"
#include "sae/report.hpp"

namespace sae_cli {

void add_report(CLI::App& app) {
    auto* cmd = app.add_subcommand("report", "write DIR/report.html: charts and pictures of a run or of a sweep");
    struct Args {
        std::string dir;
        int64_t max_samples = -1;
        std::string harvest, hook, latents = "1000";
        int64_t contexts = 10;
    };
    auto args = std::make_shared<Args>();
    cmd->add_option("DIR", args->dir, "a run directory (from `sae train`) or a sweep directory (from `sae sweep`)")->required();
    cmd->add_option("--max-samples", args->max_samples,
                    "run report: samples of the training data to evaluate (default: as many as the run trained on)");
    cmd->add_option("--harvest", args->harvest,
                    "run report: a harvest directory (manifest.json, from sae.torch.harvest) to browse the features on; "
                    "default: the one cfg.json's data lies in, if any");
    cmd->add_option("--hook", args->hook, "run report: the harvest's hook (default: the one the run trained on, or the only one)");
    cmd->add_option("--latents", args->latents, "run report: latents in the feature browser, the most active first, or 'all' (default 1000)");
    cmd->add_option("--contexts", args->contexts, "run report: top-activating rows (or images) per latent (default 10)")
        ->check(CLI::Range(int64_t(0), int64_t(1000)));
    cmd->footer(
        "A run's page: settings and final metrics, every J term and the learning rate against the step, mean rho_hat,\n"
        "FVU, L0 and dead latents during training, histograms of rho_hat_j and of feature density, the learnt features\n"
        "and reconstructions as pictures (when d_in is a perfect square; also features.png, reconstructions.png), and the\n"
        "feature browser: each latent's top-activating contexts (a harvest's text, or the training images), histogram,\n"
        "density and the tokens its decoder row promotes and suppresses (with the harvest's unembed.npy).\n"
        "A sweep's page: the table, each metric against each swept setting, and every run's training curves.\n"
        "The page is one file with no external resources: open it in any browser.");
    cmd->callback([args]() {
        std::vector<std::string> warnings;
        sae::ReportOptions opt;
        opt.max_samples = args->max_samples;
        opt.harvest = args->harvest;
        opt.hook = args->hook;
        opt.contexts = args->contexts;
        opt.latents = sae::report_latents_parse(args->latents);
        const auto files = sae::report_write(args->dir, opt, &warnings);
        for (const auto& w : warnings) std::fprintf(stderr, "sae: warning: %s\n", w.c_str());
        std::printf("wrote");
        for (size_t i = 0; i < files.size(); ++i) std::printf("%s %s", i ? "," : "", files[i].c_str());
        std::printf("\n");
    });
}

}  // namespace sae_cli
