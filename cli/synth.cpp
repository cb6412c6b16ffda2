// sae synth: the known-ground-truth data set of Sharkey, Braun & Millidge (2022).
#include <cstdio>

#include "commands.hpp"
#include "sae/backend.hpp"
#include "sae/error.hpp"
#include "sae/io.hpp"
#include "sae/synth.hpp"

namespace sae_cli {

void add_synth(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "synth", "write a synthetic data set with known ground-truth features: DIR/data.npy [N, d], DIR/features.npy [G, d]");
    struct Args {
        std::string out;
        sae::SynthSpec spec;
        int64_t threads = 0;
    };
    auto args = std::make_shared<Args>();
    // Ranges are checked by the library (one clear line), not by CLI11.
    cmd->add_option("--out", args->out, "output directory (created if missing)")->required();
    cmd->add_option("--features", args->spec.features, "G: number of true features (unit-norm Gaussian directions)")->required();
    cmd->add_option("--dim", args->spec.dim, "d: dimension of the data")->required();
    cmd->add_option("--samples", args->spec.samples, "N: number of samples")->required();
    cmd->add_option("--mean-active", args->spec.mean_active,
                    "expected active features per sample (p_i proportional to decay^i, clipped at 1)")->capture_default_str();
    cmd->add_option("--decay", args->spec.decay, "p_i proportional to decay^i")->capture_default_str();
    cmd->add_flag("--correlated", args->spec.correlated,
                  "correlated activations: threshold z ~ N(0, S), S a random rank-r-plus-identity correlation matrix");
    cmd->add_option("--correlation-rank", args->spec.correlation_rank, "r: random factors behind the correlations")->capture_default_str();
    cmd->add_option("--seed", args->spec.seed, "random seed (same seed, same bytes)")->capture_default_str();
    cmd->add_option("--threads", args->threads, "threads (0 = runtime default; output does not depend on it)")->capture_default_str();
    cmd->callback([args]() {
        const sae::SynthSpec& s = args->spec;
        sae::synth_validate(s);                 // sizes refused before any allocation or file
        sae::ensure_writable_dir(args->out);
        sae::set_num_threads(int(args->threads));
        const sae::SynthData D = sae::synth_generate(s);
        const std::string data = args->out + "/data.npy", feats = args->out + "/features.npy";
        sae::npy_write_f32(feats, D.features.data(), {s.features, s.dim});
        sae::npy_write_f32(data, D.data.data(), {s.samples, s.dim});
        std::string clip;
        if (D.clipped > 0)
            clip = "; the first " + std::to_string(D.clipped) + " of the probabilities clipped at 1 (mean_active close to features)";
        std::printf("wrote %s [%lld, %lld] and %s [%lld, %lld]: %s activations, mean active %.4f per sample "
                    "(expected %g), p_0 = %.4g, p_last = %.4g%s\n",
                    data.c_str(), (long long)s.samples, (long long)s.dim, feats.c_str(), (long long)s.features,
                    (long long)s.dim, s.correlated ? "correlated" : "independent", D.mean_active(), s.mean_active,
                    D.probabilities.front(), D.probabilities.back(), clip.c_str());
    });
}

}  // namespace sae_cli
