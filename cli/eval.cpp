#include <cstdio>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "sae/error.hpp"
#include "sae/eval.hpp"
#include "sae/io.hpp"
#include "sae/model_file.hpp"

namespace sae_cli {

namespace {
// The saved model with --set overrides applied to its settings (e.g. --set beta=0).
sae::SavedModel load_model(const std::string& dir, const std::vector<std::string>& sets) {
    sae::SavedModel m = sae::model_load(dir);
    for (const auto& s : sets) sae::config_apply_override(m.cfg, s);
    sae::config_validate(m.cfg);
    sae::check(m.cfg.d_sae == m.spec.d_sae && m.cfg.tied == m.spec.tied &&
                   m.cfg.encoder_activation == sae::activation_name(m.spec.encoder) &&
                   m.cfg.decoder_activation == sae::activation_name(m.spec.decoder),
               "--set cannot change the model's shape or activations (d_sae, tied, encoder_activation, decoder_activation)");
    return m;
}
}  // namespace

void add_eval(CLI::App& app) {
    auto* cmd = app.add_subcommand("eval", "evaluate a trained model on a data set; prints one JSON object");
    struct Args {
        std::string model, data;
        std::vector<std::string> sets;
    };
    auto args = std::make_shared<Args>();
    cmd->add_option("--model", args->model, "model directory written by `sae train`")->required();
    cmd->add_option("--data", args->data, "data file (default: the model's training data)");
    cmd->add_option("--set", args->sets, "override a saved setting for this evaluation, e.g. --set beta=0");
    cmd->callback([args]() {
        const sae::SavedModel m = load_model(args->model, args->sets);
        sae::set_num_threads(int(m.cfg.threads));
        const std::string data = args->data.empty() ? m.cfg.data : args->data;
        const auto X = sae::dataset_load(data, m.cfg.normalize, args->data.empty() ? m.cfg.max_samples : 0);
        sae::check(X.cols == m.spec.d_in, data + ": samples have " + std::to_string(X.cols) +
                                              " features but the model was trained with d_in = " +
                                              std::to_string(m.spec.d_in) + "; use data of the model's shape");
        auto be = sae::backend_create(m.cfg.backend);
        const auto r = sae::evaluate(*be, m.spec, sae::config_cost_spec(m.cfg), m.layout, m.params.data(), X,
                                     sae::config_active_threshold(m.cfg));
        nlohmann::ordered_json j;
        j["J_total"] = r.J.total();
        j["J_rec"] = r.J.rec;
        j["J_weight_decay"] = r.J.weight_decay;
        j["J_sparsity"] = r.J.sparsity;
        j["mse"] = r.mse;
        j["fvu"] = r.fvu;
        j["l0"] = r.l0;
        j["mean_activation"] = r.mean_activation;
        j["dead_fraction"] = r.dead_fraction;
        j["rho_hat_min"] = r.rho_hat_min;
        j["rho_hat_max"] = r.rho_hat_max;
        j["samples"] = r.n;
        std::printf("%s\n", j.dump().c_str());
    });
}

void add_encode(CLI::App& app) {
    auto* cmd = app.add_subcommand("encode", "write the hidden activations of a data set as float32 .npy [N, d_sae]");
    struct Args {
        std::string model, data, out;
    };
    auto args = std::make_shared<Args>();
    cmd->add_option("--model", args->model, "model directory written by `sae train`")->required();
    cmd->add_option("--data", args->data, "data file")->required();
    cmd->add_option("--out", args->out, "output .npy file")->required();
    cmd->callback([args]() {
        const sae::SavedModel m = load_model(args->model, {});
        sae::set_num_threads(int(m.cfg.threads));
        const auto X = sae::dataset_load(args->data, m.cfg.normalize, 0);
        sae::check(X.cols == m.spec.d_in, args->data + ": samples have " + std::to_string(X.cols) +
                                              " features but the model was trained with d_in = " +
                                              std::to_string(m.spec.d_in) + "; use data of the model's shape");
        auto be = sae::backend_create(m.cfg.backend);
        const auto H = sae::encode(*be, m.spec, m.layout, m.params.data(), X);
        sae::npy_write_f32(args->out, H.data.data(), {H.rows, H.cols});
        std::printf("wrote %s [%lld, %lld]\n", args->out.c_str(), (long long)H.rows, (long long)H.cols);
    });
}

}  // namespace sae_cli
