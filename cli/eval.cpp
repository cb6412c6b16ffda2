#include <cstdio>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "sae/data.hpp"
#include "sae/error.hpp"
#include "sae/eval.hpp"
#include "sae/io.hpp"
#include "sae/model_file.hpp"
#include "sae/synth.hpp"

namespace sae_cli {

namespace {
// The saved model with --set overrides applied to its settings (e.g. --set beta=0).
sae::SavedModel load_model(const std::string& dir, const std::vector<std::string>& sets) {
    sae::SavedModel m = sae::model_load(dir);
    if (sets.empty()) return m;
    sae::Config cfg = m.cfg;
    for (const auto& s : sets) sae::config_apply_override(cfg, s);
    sae::config_validate(cfg);
    // The overridden settings must describe the same parameters: rebuild the objective from
    // them and check its layout matches the loaded one.
    auto obj = sae::objective_create(cfg, m.objective->d_in());
    const auto& a = obj->layout().views;
    const auto& b = m.objective->layout().views;
    bool same = obj->architecture() == m.objective->architecture() && a.size() == b.size();
    for (size_t i = 0; same && i < a.size(); ++i) same = a[i].name == b[i].name && a[i].shape == b[i].shape;
    sae::check(same && cfg.encoder_activation == m.cfg.encoder_activation &&
                   cfg.decoder_activation == m.cfg.decoder_activation,
               "--set cannot change the model's architecture, shape or activations (architecture, d_sae, tied, "
               "encoder_activation, decoder_activation)");
    obj->set_extra_state(m.objective->extra_state());
    m.cfg = cfg;
    m.objective = std::move(obj);
    return m;
}

}  // namespace

void add_eval(CLI::App& app) {
    auto* cmd = app.add_subcommand("eval", "evaluate a trained model on a data set; prints one JSON object");
    struct Args {
        std::string model, data, ground_truth;
        std::vector<std::string> sets;
    };
    auto args = std::make_shared<Args>();
    cmd->add_option("--model", args->model, "model directory written by `sae train`")->required();
    cmd->add_option("--data", args->data, "data file (default: the model's training data)");
    cmd->add_option("--set", args->sets, "override a saved setting for this evaluation, e.g. --set beta=0");
    cmd->add_option("--ground-truth", args->ground_truth,
                    "true features [G, d_in] .npy (e.g. from `sae synth`): adds mmcs (mean max cosine similarity "
                    "with the decoder rows), mmcs_min, mmcs_median, mmcs_frac_above_0.9");
    cmd->callback([args]() {
        const sae::SavedModel m = load_model(args->model, args->sets);
        sae::Array truth;
        if (!args->ground_truth.empty()) {  // checked before the (longer) evaluation
            truth = sae::npy_read(args->ground_truth);
            sae::check(truth.shape.size() == 2 && truth.shape[0] >= 1,
                       args->ground_truth + ": ground-truth features must be a 2-d array [G, d_in] with G >= 1; "
                                            "pass the features.npy written by `sae synth`");
            sae::check(truth.shape[1] == m.objective->d_in(),
                       args->ground_truth + ": features have d = " + std::to_string(truth.shape[1]) +
                           " but the model has d_in = " + std::to_string(m.objective->d_in()) +
                           "; use the features of the data the model was trained on");
        }
        sae::set_num_threads(int(m.cfg.threads));
        const std::string data = args->data.empty() ? m.cfg.data : args->data;
        const auto X = sae::dataset_load(data, m.norm, args->data.empty() ? m.cfg.max_samples : 0);
        sae::check(X.cols == m.objective->d_in(), data + ": samples have " + std::to_string(X.cols) +
                                              " features but the model was trained with d_in = " +
                                              std::to_string(m.objective->d_in()) + "; use data of the model's shape");
        auto be = sae::backend_create(m.cfg.backend);
        const auto r = sae::evaluate(*be, *m.objective, m.cfg, m.params.data(), X,
                                     sae::config_active_threshold(m.cfg));
        sae::MmcsResult mm;
        if (!args->ground_truth.empty()) {
            const std::vector<float> W = sae::model_decoder_rows(m);
            mm = sae::mmcs(*be, truth.values.data(), truth.shape[0], W.data(), m.objective->d_sae(), m.objective->d_in());
        }
        const auto j = sae::eval_json(r, args->ground_truth.empty() ? nullptr : &mm, truth.shape.empty() ? 0 : truth.shape[0]);
        std::printf("%s\n", j.c_str());
    });
}

void add_encode(CLI::App& app) {
    auto* cmd = app.add_subcommand("encode", "write the hidden activations of a data set as float32 .npy [N, d_sae]");
    struct Args {
        std::string model, data, out;
        std::vector<std::string> sets;
    };
    auto args = std::make_shared<Args>();
    cmd->add_option("--model", args->model, "model directory written by `sae train`")->required();
    cmd->add_option("--data", args->data, "data file")->required();
    cmd->add_option("--out", args->out, "output .npy file")->required();
    cmd->add_option("--set", args->sets,
                    "override a saved setting that does not change the parameters, e.g. --set screen=bf16 or "
                    "--set threads=4");
    cmd->callback([args]() {
        const sae::SavedModel m = load_model(args->model, args->sets);
        sae::set_num_threads(int(m.cfg.threads));
        const auto X = sae::dataset_load(args->data, m.norm, 0);
        sae::check(X.cols == m.objective->d_in(), args->data + ": samples have " + std::to_string(X.cols) +
                                              " features but the model was trained with d_in = " +
                                              std::to_string(m.objective->d_in()) + "; use data of the model's shape");
        auto be = sae::backend_create(m.cfg.backend);
        const auto H = sae::encode(*be, *m.objective, m.params.data(), X);
        sae::npy_write_f32(args->out, H.data.data(), {H.rows, H.cols});
        std::printf("wrote %s [%lld, %lld]\n", args->out.c_str(), (long long)H.rows, (long long)H.cols);
    });
}

}  // namespace sae_cli
