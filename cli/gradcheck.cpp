#include <algorithm>
#include <cstdio>

#include "commands.hpp"
#include "sae/error.hpp"
#include "sae/eval.hpp"

namespace sae_cli {

void add_gradcheck(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "gradcheck", "check analytic gradients against central differences in double precision");
    struct Args {
        std::string config;
        std::vector<std::string> sets;
        int64_t d_in = 8, d_sae = 5, samples = 10;
        double eps = 3e-5, tolerance = 1e-9;
    };
    auto args = std::make_shared<Args>();
    cmd->add_option("CONFIG", args->config, "TOML settings: activations, tied, sparsity and coefficients are used");
    cmd->add_option("--set", args->sets, "override a setting: --set key=value (repeatable)");
    cmd->add_option("--d-in", args->d_in, "input dimension of the small test model")->capture_default_str()->check(CLI::Range(1, 4096));
    cmd->add_option("--d-sae", args->d_sae, "hidden units of the small test model")->capture_default_str()->check(CLI::Range(1, 4096));
    cmd->add_option("--samples", args->samples, "random samples in the batch")->capture_default_str()->check(CLI::Range(1, 100000));
    cmd->add_option("--eps", args->eps, "central-difference step")->capture_default_str();
    cmd->add_option("--tolerance", args->tolerance, "largest accepted ||num-ana||/||num+ana||")->capture_default_str();
    cmd->callback([args]() {
        sae::Config cfg = load_config(args->config, args->sets);
        const sae::GradcheckRun g = sae::gradcheck_settings(cfg, args->d_in, args->d_sae, args->samples, args->eps);
        const sae::ModelSpec& spec = g.spec;
        const sae::CostSpec& cost = g.cost;
        const sae::GradcheckResult& r = g.result;
        std::printf("gradient check: d_in=%lld d_sae=%lld m=%lld encoder=%s decoder=%s tied=%s sparsity=%s "
                    "beta=%g rho=%g weight_decay=%g l1_coefficient=%g eps=%g\n",
                    (long long)spec.d_in, (long long)spec.d_sae, (long long)args->samples,
                    sae::activation_name(spec.encoder).c_str(), sae::activation_name(spec.decoder).c_str(),
                    spec.tied ? "true" : "false", sae::sparsity_name(cost.sparsity).c_str(), cost.beta,
                    cost.rho, cost.weight_decay, cost.l1_coefficient, args->eps);
        for (const auto& [name, err] : r.per_tensor) std::printf("  %-8s %.3e\n", name.c_str(), err);
        std::printf("  overall  %.3e  (||num-ana||/||num+ana||, bar %.0e)\n", r.overall, args->tolerance);
        double worst = r.overall;
        for (const auto& t : r.per_tensor) worst = std::max(worst, t.second);
        if (!(worst <= args->tolerance))  // also catches NaN
            throw sae::Error("gradient check failed: worst ratio " + std::to_string(worst) + " > " +
                             std::to_string(args->tolerance) + "; the analytic gradient is wrong");
        std::printf("PASS\n");
    });
}

}  // namespace sae_cli
