// sae classify: softmax regression on a model's hidden activations (or raw pixels) — UFLDL's
// self-taught learning. sae select: the samples of some classes, e.g. digits 5–9 to train on.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "sae/classify.hpp"
#include "sae/data.hpp"
#include "sae/error.hpp"
#include "sae/eval.hpp"
#include "sae/io.hpp"
#include "sae/model_file.hpp"

namespace sae_cli {

namespace {

void check_counts(const std::string& data, int64_t n_samples, const std::string& labels, size_t n_labels) {
    sae::check(int64_t(n_labels) == n_samples,
               labels + ": " + std::to_string(n_labels) + " labels but " + data + " holds " +
                   std::to_string(n_samples) + " samples; pass the labels file that belongs to the data");
}

std::string confusion_csv(const sae::Matrix<int64_t>& C, const std::vector<int32_t>& classes) {
    std::string s = "true\\predicted";
    for (int32_t c : classes) s += "," + std::to_string(c);
    s += "\n";
    for (int64_t t = 0; t < C.rows; ++t) {
        s += std::to_string(classes[size_t(t)]);
        for (int64_t p = 0; p < C.cols; ++p) s += "," + std::to_string(C(t, p));
        s += "\n";
    }
    return s;
}

}  // namespace

void add_classify(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "classify",
        "self-taught learning: softmax regression (L-BFGS) on a model's hidden activations or on raw pixels, for the "
        "samples of --classes split into train/test; prints one JSON object");
    struct Args {
        std::string data, labels, model, classes, out;
        bool raw = false, no_bias = false;
        double train_fraction = 0.5, lambda = 1e-4;
        int64_t max_iterations = 400, threads = 0;
        uint64_t seed = 0;
    };
    auto args = std::make_shared<Args>();
    cmd->add_option("--data", args->data, "images: IDX (raw or .gz) or .npy [N, ...]")->required();
    cmd->add_option("--labels", args->labels, "labels: IDX or .npy [N] of class numbers")->required();
    cmd->add_option("--model", args->model,
                    "model directory from `sae train`: features = its hidden activations (data normalised as the "
                    "model's cfg says)");
    cmd->add_flag("--raw", args->raw, "features = raw pixels, normalize = unit_range (uint8 / 255)");
    cmd->add_option("--classes", args->classes, "classes to classify, e.g. 0-4 or 1,3,7")->required();
    cmd->add_option("--train-fraction", args->train_fraction,
                    "fraction of the selected samples used for training (seeded shuffle); the rest is the test set")
        ->capture_default_str();
    cmd->add_option("--lambda", args->lambda, "weight decay (lambda/2)|theta|^2 (bias not decayed)")->capture_default_str();
    cmd->add_option("--max-iterations", args->max_iterations, "L-BFGS iterations")->capture_default_str();
    cmd->add_flag("--no-bias", args->no_bias, "no bias term (UFLDL's softmax has none)");
    cmd->add_option("--seed", args->seed, "seed of the train/test split and of the initial theta")->capture_default_str();
    cmd->add_option("--threads", args->threads, "threads (0 = runtime default)")->capture_default_str();
    cmd->add_option("--out", args->out, "directory for classify.json and confusion.csv (test set; rows: true class)");
    cmd->callback([args]() {
        const auto t0 = std::chrono::steady_clock::now();
        sae::check(args->raw != !args->model.empty(),
                   args->raw ? "--raw and --model exclude each other; give one"
                             : "no features chosen; give --model DIR (a trained model) or --raw (pixels)");
        const std::vector<int32_t> classes = sae::class_spec_parse(args->classes);
        sae::check(classes.size() >= 2, "--classes " + args->classes + " selects one class; a classifier needs at least 2");
        sae::check(args->train_fraction > 0 && args->train_fraction < 1,
                   "--train-fraction " + std::to_string(args->train_fraction) + " is outside (0, 1); use e.g. 0.5");
        sae::check(args->lambda >= 0 && std::isfinite(args->lambda), "--lambda must be a finite number >= 0");
        sae::check(args->max_iterations >= 1, "--max-iterations must be >= 1");
        if (!args->out.empty()) sae::ensure_writable_dir(args->out);
        sae::set_num_threads(int(args->threads));

        // Features of every selected sample.
        sae::SavedModel m;
        sae::Matrix<float> X;
        if (args->raw) {  // pixels as features: unit_range fitted on this data (uint8: ÷ 255)
            X = sae::dataset_load_fit(args->data, "unit_range", 0, nullptr);
        } else {
            m = sae::model_load(args->model);
            X = sae::dataset_load(args->data, m.norm, 0);
        }
        if (!args->raw)
            sae::check(X.cols == m.objective->d_in(),
                       args->data + ": samples have " + std::to_string(X.cols) +
                           " features but the model was trained with d_in = " + std::to_string(m.objective->d_in()) +
                           "; use data of the model's shape");
        const std::vector<int32_t> labels = sae::labels_load(args->labels);
        check_counts(args->data, X.rows, args->labels, labels.size());
        const std::vector<int64_t> idx = sae::select_by_labels(labels, classes);
        const sae::Split split = sae::split_indices(idx, args->train_fraction, args->seed);

        auto be = sae::backend_create(args->raw ? "onednn" : m.cfg.backend);
        auto features = [&](const std::vector<int64_t>& rows) {
            sae::Matrix<float> Xs = sae::take_rows(X, rows);
            if (args->raw) return sae::to_double(Xs);
            return sae::to_double(sae::encode(*be, *m.objective, m.params.data(), Xs));
        };
        const sae::Matrix<double> Ftrain = features(split.train), Ftest = features(split.test);
        const auto ytrain = sae::remap_labels(labels, split.train, classes);
        const auto ytest = sae::remap_labels(labels, split.test, classes);

        sae::SoftmaxSpec spec{int64_t(classes.size()), Ftrain.cols, !args->no_bias, args->lambda};
        sae::SoftmaxTrainOptions opt;
        opt.max_iterations = args->max_iterations;
        const sae::SoftmaxFit fit = sae::softmax_train(*be, spec, Ftrain, ytrain, opt, args->seed);
        const auto ptrain = sae::softmax_predict(*be, spec, fit.params.data(), Ftrain);
        const auto ptest = sae::softmax_predict(*be, spec, fit.params.data(), Ftest);
        const auto C = sae::confusion_matrix(ptest, ytest, spec.n_classes);
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

        nlohmann::ordered_json j;
        j["accuracy_train"] = sae::accuracy(ptrain, ytrain);
        j["accuracy_test"] = sae::accuracy(ptest, ytest);
        j["n_train"] = ytrain.size();
        j["n_test"] = ytest.size();
        nlohmann::json conf = nlohmann::json::array();
        for (int64_t t = 0; t < C.rows; ++t) conf.push_back(std::vector<int64_t>(C.row(t), C.row(t) + C.cols));
        j["confusion"] = conf;
        j["features"] = args->raw ? std::string("raw") : m.objective->architecture();
        j["d_features"] = spec.d;
        j["classes"] = classes;
        if (!args->raw) {
            j["model"] = args->model;
            j["sparsity"] = m.cfg.sparsity;
        }
        j["normalize"] = args->raw ? std::string("unit_range") : sae::normalize_name(m.norm.mode);
        j["lambda"] = spec.lambda;
        j["bias"] = spec.bias;
        j["train_fraction"] = args->train_fraction;
        j["seed"] = args->seed;
        j["cost"] = fit.cost;
        j["iterations"] = fit.iterations;
        j["lbfgs_status"] = fit.status == sae::LbfgsStatus::running ? "max_iterations" : sae::lbfgs_status_name(fit.status);
        j["seconds"] = secs;
        const std::string text = j.dump();
        if (!args->out.empty()) {
            sae::write_file_atomic(args->out + "/classify.json", text + "\n");
            sae::write_file_atomic(args->out + "/confusion.csv", confusion_csv(C, classes));
        }
        std::printf("%s\n", text.c_str());
    });
}

void add_select(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "select", "write the samples of some classes (e.g. digits 5-9) as .npy: uint8 data stays uint8, so "
                  "normalize = \"unit_range\" still divides by 255; other data is written as float32");
    struct Args {
        std::string data, labels, classes, out, labels_out;
    };
    auto args = std::make_shared<Args>();
    cmd->add_option("--data", args->data, "images: IDX (raw or .gz) or .npy [N, ...]")->required();
    cmd->add_option("--labels", args->labels, "labels: IDX or .npy [N] of class numbers")->required();
    cmd->add_option("--classes", args->classes, "classes to keep, e.g. 5-9 or 1,3,7")->required();
    cmd->add_option("--out", args->out, "output .npy file (the kept samples, original order and shape)")->required();
    cmd->add_option("--labels-out", args->labels_out, "also write the kept labels as .npy (uint8 if all < 256)");
    cmd->callback([args]() {
        const std::vector<int32_t> classes = sae::class_spec_parse(args->classes);
        const sae::Array a = sae::array_read(args->data);
        sae::check(!a.shape.empty() && a.shape[0] >= 1, args->data + ": the data set has no samples");
        const std::vector<int32_t> labels = sae::labels_load(args->labels);
        check_counts(args->data, a.shape[0], args->labels, labels.size());
        const std::vector<int64_t> idx = sae::select_by_labels(labels, classes);
        const int64_t row = a.numel() / a.shape[0];
        std::vector<int64_t> shape = a.shape;
        shape[0] = int64_t(idx.size());
        const bool u8 = a.source == sae::SourceType::u8;
        if (u8) {
            std::vector<uint8_t> out(idx.size() * size_t(row));
            for (size_t i = 0; i < idx.size(); ++i)
                for (int64_t k = 0; k < row; ++k) out[i * size_t(row) + size_t(k)] = uint8_t(a.values[size_t(idx[i] * row + k)]);
            sae::npy_write_u8(args->out, out.data(), shape);
        } else {
            std::vector<float> out(idx.size() * size_t(row));
            for (size_t i = 0; i < idx.size(); ++i)
                std::copy(a.values.begin() + idx[i] * row, a.values.begin() + (idx[i] + 1) * row,
                          out.begin() + int64_t(i) * row);
            sae::npy_write_f32(args->out, out.data(), shape);
        }
        if (!args->labels_out.empty()) {
            int32_t mx = 0;
            for (int64_t i : idx) mx = std::max(mx, labels[size_t(i)]);
            if (mx < 256) {
                std::vector<uint8_t> l;
                for (int64_t i : idx) l.push_back(uint8_t(labels[size_t(i)]));
                sae::npy_write_u8(args->labels_out, l.data(), {int64_t(l.size())});
            } else {
                std::vector<float> l;
                for (int64_t i : idx) l.push_back(float(labels[size_t(i)]));
                sae::npy_write_f32(args->labels_out, l.data(), {int64_t(l.size())});
            }
        }
        std::string dims;
        for (size_t i = 0; i < shape.size(); ++i) dims += (i ? ", " : "") + std::to_string(shape[i]);
        std::printf("wrote %s [%s] %s: %zu of %lld samples, classes %s\n", args->out.c_str(), dims.c_str(),
                    u8 ? "uint8" : "float32", idx.size(), (long long)a.shape[0],
                    sae::class_spec_text(classes).c_str());
    });
}

}  // namespace sae_cli
