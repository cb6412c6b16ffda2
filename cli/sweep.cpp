// sae sweep: train every combination of a grid of settings (child `sae train` processes, --jobs
// at a time), evaluate each run, and write DIR/sweep.csv and DIR/sweep.md.
#include <cstdio>
#include <unistd.h>

#include "commands.hpp"
#include "sae/error.hpp"
#include "sae/io.hpp"
#include "sae/sweep.hpp"

namespace sae_cli {

namespace {
// This program's own file, to run `train` in child processes.
std::string self_exe() {
    char buf[4096];
    const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    sae::check(n > 0, "sweep: cannot find this program's path (/proc/self/exe)");
    return std::string(buf, size_t(n));
}
}  // namespace

void add_sweep(CLI::App& app) {
    auto* cmd = app.add_subcommand("sweep", "train and evaluate every combination of a grid of settings");
    struct Args {
        std::string config, out = "runs/sweep", labels;
        std::vector<std::string> sets, grids;
        int64_t jobs = 1;
    };
    auto args = std::make_shared<Args>();
    cmd->add_option("CONFIG", args->config, "TOML file of settings (optional; defaults otherwise)");
    cmd->add_option("--grid", args->grids, "a swept setting and its values: --grid beta=0.3,1,3 (repeatable; every combination is trained)")
        ->required();
    cmd->add_option("--set", args->sets, "override a setting for every run: --set key=value (repeatable)");
    cmd->add_option("--jobs", args->jobs, "runs trained at once; each gets max(1, threads / jobs) threads")->capture_default_str();
    cmd->add_option("--labels", args->labels, "labels of the training data (IDX or .npy): adds an accuracy column "
                                              "(softmax regression on each run's hidden activations, held-out half)");
    cmd->add_option("--out", args->out, "output directory: one run-<i>-<key>=<value>_... directory per run")
        ->capture_default_str();
    cmd->footer(
        "Runs already finished with the same settings are skipped; interrupted ones resume from their checkpoint.\n"
        "Outputs in DIR: run-*/ (model, cfg.json, metrics.jsonl, train.log), sweep.csv, sweep.md.\n"
        "Columns: the swept keys, status, J_total, J_rec, J_weight_decay, J_sparsity, mean_rho_hat, l0, fvu,\n"
        "dead_fraction, [accuracy], time_s (evaluated over each run's training data, as `sae eval`).\n"
        "Example: sae sweep examples/sweep_mnist.toml --grid beta=0.3,1,3 --grid rho=0.01,0.1 --jobs 2 --out runs/sweep");
    cmd->callback([args]() {
        sae::SweepSpec spec;
        spec.config_path = args->config;
        spec.sets = args->sets;
        for (const auto& g : args->grids) spec.axes.push_back(sae::grid_axis_parse(g));
        spec.out_dir = args->out;
        spec.jobs = args->jobs;
        spec.labels = args->labels;
        const int64_t failed = sae::sweep_run(spec, self_exe(), stderr);
        std::printf("%s", sae::read_file(spec.out_dir + "/sweep.md").c_str());
        std::printf("outputs: %s/{sweep.csv, sweep.md, run-*/}\n", spec.out_dir.c_str());
        sae::check(failed == 0, std::to_string(failed) + " run(s) failed (see the status column of " + spec.out_dir +
                                    "/sweep.md and each run's train.log)");
    });
}

}  // namespace sae_cli
