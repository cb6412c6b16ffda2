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
    };
    auto args = std::make_shared<Args>();
    cmd->add_option("DIR", args->dir, "a run directory (from `sae train`) or a sweep directory (from `sae sweep`)")->required();
    cmd->add_option("--max-samples", args->max_samples,
                    "run report: samples of the training data to evaluate (default: as many as the run trained on)");
    cmd->footer(
        "A run's page: settings and final metrics, every J term and the learning rate against the step, mean rho_hat,\n"
        "FVU, L0 and dead latents during training, histograms of rho_hat_j and of feature density, the learnt features\n"
        "and reconstructions as pictures (when d_in is a perfect square; also features.png, reconstructions.png).\n"
        "A sweep's page: the table, each metric against each swept setting, and every run's training curves.\n"
        "The page is one file with no external resources: open it in any browser.");
    cmd->callback([args]() {
        std::vector<std::string> warnings;
        const auto files = sae::report_write(args->dir, {args->max_samples}, &warnings);
        for (const auto& w : warnings) std::fprintf(stderr, "sae: warning: %s\n", w.c_str());
        std::printf("wrote");
        for (size_t i = 0; i < files.size(); ++i) std::printf("%s %s", i ? "," : "", files[i].c_str());
        std::printf("\n");
    });
}

}  // namespace sae_cli
