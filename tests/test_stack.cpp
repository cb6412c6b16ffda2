// Stacked autoencoders: the `layers` setting, layer wiring, the fine-tuning gradient by central
// differences in double, the softmax part against classify.hpp, fine-tuning on a small problem,
// one-line errors for bad input, and `sae stack` end to end.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "sae/classify.hpp"
#include "sae/config.hpp"
#include "sae/io.hpp"
#include "sae/model_file.hpp"
#include "sae/stack.hpp"
#include "test_util.hpp"

using namespace sae;
using sae_test::run;

namespace {

const std::string kSae = sae_test::sae_binary();

// --- the layers setting -----------------------------------------------------------------------
TEST(LayersSetting, TomlSetJsonAndHelp) {
    Config cfg = config_parse_toml("layers = [200, 100, 50]\n", "t.toml");
    EXPECT_EQ(cfg.layers, (std::vector<int64_t>{200, 100, 50}));
    config_apply_override(cfg, "layers=7,8");
    EXPECT_EQ(cfg.layers, (std::vector<int64_t>{7, 8}));
    config_apply_override(cfg, "layers=[ 3 , 4 ]");
    EXPECT_EQ(cfg.layers, (std::vector<int64_t>{3, 4}));
    config_validate(cfg);
    const auto j = nlohmann::json::parse(config_to_json(cfg));
    EXPECT_EQ(j["layers"], nlohmann::json::array({3, 4}));
    EXPECT_EQ(config_from_json(config_to_json(cfg), "cfg.json").layers, cfg.layers);
    config_apply_override(cfg, "layers=");
    EXPECT_TRUE(cfg.layers.empty());
    EXPECT_TRUE(Config{}.layers.empty());
    EXPECT_NE(config_help().find("layers"), std::string::npos);
    EXPECT_NE(config_help().find("(default: [])"), std::string::npos);

    for (const auto& [text, word] : std::vector<std::pair<std::string, std::string>>{
             {"layers = 200\n", "array of integers"},
             {"layers = [200, \"x\"]\n", "only integers"},
             {"layers = [200, 1.5]\n", "only integers"},
             {"layers = [[1], [2]]\n", "only integers"},
             {"d_sae = [1, 2]\n", "single value"},
         }) {
        const std::string e = sae_test::error_of([&] { config_parse_toml(text, "t.toml"); });
        EXPECT_NE(e.find(word), std::string::npos) << text << " -> " << e;
        EXPECT_NE(e.find("t.toml"), std::string::npos) << e;
    }
    Config c;
    EXPECT_NE(sae_test::error_of([&] { config_apply_override(c, "layers=200,x"); }).find("list of integers"), std::string::npos);
    EXPECT_NE(sae_test::error_of([&] { config_apply_override(c, "layers=200,,3"); }).find("list of integers"), std::string::npos);
    config_apply_override(c, "layers=200,0");
    const std::string e = sae_test::error_of([&] { config_validate(c); });
    EXPECT_NE(e.find("'layers' contains 0"), std::string::npos) << e;
    EXPECT_NE(sae_test::error_of([] { config_from_json("{\"layers\": [1, 2.5]}", "cfg.json"); }).find("wrong type"), std::string::npos);
    EXPECT_NE(sae_test::error_of([] { config_from_json("{\"layers\": 3}", "cfg.json"); }).find("wrong type"), std::string::npos);
}

TEST(LayersSetting, ExamplesParse) {
    const Config st = config_load_toml(sae_test::source_dir() + "/examples/stacked.toml");
    config_validate(st);
    stack_check_config(st);
    EXPECT_EQ(st.layers, (std::vector<int64_t>{200, 200}));
    EXPECT_EQ(st.softmax_weight_decay, 1e-4);
    const Config dn = config_load_toml(sae_test::source_dir() + "/examples/denoising.toml");
    config_validate(dn);
    EXPECT_EQ(dn.corruption, "masking");
    EXPECT_EQ(dn.corruption_level, 0.3);
}

// --- the network and its gradient -----------------------------------------------------------------
struct Net {
    StackSpec spec;
    ParamLayout layout;
    std::vector<double> params, X;
    std::vector<int32_t> y;
    int64_t m;
};

Net make_net(Activation act, double lambda, uint64_t seed) {
    Net n;
    n.spec = {5, {4, 3}, 3, act, lambda};
    n.layout = stack_layout(n.spec);
    n.m = 7;
    Rng rng(seed);
    n.params.resize(size_t(n.layout.total));
    for (auto& p : n.params) p = rng.uniform(-0.8, 0.8);
    n.X.resize(size_t(n.m * 5));
    for (auto& x : n.X) x = rng.uniform(0.05, 0.95);
    for (int64_t i = 0; i < n.m; ++i) n.y.push_back(int32_t(rng.below(3)));
    return n;
}

TEST(StackNetwork, LayoutWiresEachLayerToThePrevious) {
    const StackSpec s{784, {200, 100}, 10, Activation::sigmoid, 1e-4};
    const ParamLayout L = stack_layout(s);
    std::vector<std::string> names;
    for (const auto& v : L.views) names.push_back(v.name);
    EXPECT_EQ(names, (std::vector<std::string>{"enc1.W", "enc1.b", "enc2.W", "enc2.b", "softmax.W", "softmax.b"}));
    EXPECT_EQ(L.get("enc1.W").shape, (std::vector<int64_t>{784, 200}));
    EXPECT_EQ(L.get("enc2.W").shape, (std::vector<int64_t>{200, 100}));
    EXPECT_EQ(L.get("softmax.W").shape, (std::vector<int64_t>{100, 10}));
    EXPECT_EQ(L.get("softmax.b").shape, (std::vector<int64_t>{10}));
}

TEST(StackNetwork, FineTuningGradientMatchesCentralDifferences) {
    auto be = backend_create("onednn");
    for (Activation act : {Activation::sigmoid, Activation::tanh, Activation::relu})
        for (double lambda : {0.0, 0.05}) {
            Net n = make_net(act, lambda, 4);
            StackWorkspace<double> ws;
            std::vector<double> ana(n.params.size());
            stack_cost<double>(*be, n.spec, n.layout, n.params.data(), n.X.data(), n.y.data(), n.m, ana.data(), ws);
            std::vector<double> x = n.params;
            double diff = 0, sum = 0;
            for (size_t i = 0; i < x.size(); ++i) {
                const double orig = x[i], eps = 1e-5;
                x[i] = orig + eps;
                const double fp = stack_cost<double>(*be, n.spec, n.layout, x.data(), n.X.data(), n.y.data(), n.m, nullptr, ws);
                x[i] = orig - eps;
                const double fm = stack_cost<double>(*be, n.spec, n.layout, x.data(), n.X.data(), n.y.data(), n.m, nullptr, ws);
                x[i] = orig;
                const double num = (fp - fm) / (2 * eps);
                diff += (num - ana[i]) * (num - ana[i]);
                sum += (num + ana[i]) * (num + ana[i]);
            }
            EXPECT_LT(std::sqrt(diff / sum), 1e-9) << activation_name(act) << " lambda=" << lambda;
            // Every tensor receives gradient (the first encoder too).
            const auto& v = n.layout.get("enc1.W");
            double g1 = 0;
            for (int64_t i = 0; i < v.numel(); ++i) g1 += std::fabs(ana[size_t(v.offset + i)]);
            EXPECT_GT(g1, 0.0);
        }
}

// The softmax part is softmax regression (classify.hpp) on the last features, plus the decay
// of the encoders' weights.
TEST(StackNetwork, CostIsSoftmaxRegressionOnTheLastFeatures) {
    auto be = backend_create("onednn");
    Net n = make_net(Activation::sigmoid, 0.03, 9);
    StackWorkspace<double> ws;
    ws.reserve(n.spec, n.m);
    const double J = stack_cost<double>(*be, n.spec, n.layout, n.params.data(), n.X.data(), n.y.data(), n.m, nullptr, ws);
    // Features by hand: a₂ = σ(σ(X·W₁ + b₁)·W₂ + b₂).
    auto sig = [](double z) { return 1 / (1 + std::exp(-z)); };
    const double* W1 = n.params.data() + n.layout.get("enc1.W").offset;
    const double* b1 = n.params.data() + n.layout.get("enc1.b").offset;
    const double* W2 = n.params.data() + n.layout.get("enc2.W").offset;
    const double* b2 = n.params.data() + n.layout.get("enc2.b").offset;
    const double* Ws = n.params.data() + n.layout.get("softmax.W").offset;
    const double* bs = n.params.data() + n.layout.get("softmax.b").offset;
    Matrix<double> F(n.m, 3);
    for (int64_t i = 0; i < n.m; ++i) {
        double a1[4];
        for (int j = 0; j < 4; ++j) {
            double z = b1[j];
            for (int k = 0; k < 5; ++k) z += n.X[size_t(i * 5 + k)] * W1[k * 4 + j];
            a1[j] = sig(z);
        }
        for (int j = 0; j < 3; ++j) {
            double z = b2[j];
            for (int k = 0; k < 4; ++k) z += a1[k] * W2[k * 3 + j];
            F(i, j) = sig(z);
        }
    }
    const SoftmaxSpec ss{3, 3, true, 0.03};
    std::vector<double> theta(size_t(softmax_param_count(ss)));
    for (int c = 0; c < 3; ++c) {
        for (int j = 0; j < 3; ++j) theta[size_t(c * 3 + j)] = Ws[j * 3 + c];
        theta[size_t(9 + c)] = bs[c];
    }
    SoftmaxWorkspace sw;
    const double Jsoft = softmax_cost(*be, ss, theta.data(), F.data.data(), n.y.data(), n.m, nullptr, sw);
    double enc_sq = 0;
    for (const char* w : {"enc1.W", "enc2.W"}) {
        const auto& v = n.layout.get(w);
        for (int64_t i = 0; i < v.numel(); ++i) enc_sq += n.params[size_t(v.offset + i)] * n.params[size_t(v.offset + i)];
    }
    EXPECT_NEAR(J, Jsoft + 0.5 * 0.03 * enc_sq, 1e-12);
    // Probabilities left in ws.Z sum to one.
    for (int64_t i = 0; i < n.m; ++i) EXPECT_NEAR(ws.Z(i, 0) + ws.Z(i, 1) + ws.Z(i, 2), 1.0, 1e-12);
}

// --- the procedure --------------------------------------------------------------------------
// Four classes in [0, 1]^12: each class lights up its own three inputs, plus noise. A 2-unit
// bottleneck trained without labels cannot keep four classes apart as well as after fine-tuning.
void make_problem(int64_t n, Matrix<float>& X, std::vector<int32_t>& y, uint64_t seed) {
    Rng rng(seed);
    X.resize(n, 12);
    y.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) {
        const int c = int(i % 4);
        y[size_t(i)] = c;
        for (int k = 0; k < 12; ++k) X(i, k) = float((k / 3 == c ? 0.75 : 0.25) + rng.uniform(-0.2, 0.2));
    }
}

Config small_config() {
    Config cfg;
    cfg.layers = {6, 3};
    cfg.max_iterations = 60;
    cfg.softmax_iterations = 100;
    cfg.finetune_iterations = 100;
    cfg.softmax_weight_decay = 1e-4;
    cfg.beta = 3;
    cfg.rho = 0.1;
    cfg.weight_decay = 3e-3;
    cfg.threads = 1;
    cfg.log_every = 1000;
    cfg.seed = 3;
    return cfg;
}

TEST(StackProcedure, PretrainingWiresLayersAndFineTuningDoesNotHurt) {
    auto be = backend_create("onednn");
    Matrix<float> X;
    std::vector<int32_t> y;
    make_problem(400, X, y, 5);
    const Config cfg = small_config();

    const auto layers = stack_pretrain(*be, cfg, X, "");
    ASSERT_EQ(layers.size(), 2u);
    EXPECT_EQ(layers[0].objective->d_in(), 12);
    EXPECT_EQ(layers[0].objective->d_sae(), 6);
    EXPECT_EQ(layers[1].objective->d_in(), 6);  // layer 2's input is layer 1's hidden units
    EXPECT_EQ(layers[1].objective->d_sae(), 3);
    EXPECT_EQ(layers[1].report.d_in, 6);
    EXPECT_LT(layers[0].report.J.total(), 1e9);

    StackModel model;
    const StackReport r = stack_train(*be, cfg, X, y, "", &model);
    EXPECT_EQ(r.n_train, 200);
    EXPECT_EQ(r.n_test, 200);
    EXPECT_EQ(r.classes, (std::vector<int32_t>{0, 1, 2, 3}));
    EXPECT_LT(r.finetune_cost_after, r.finetune_cost_before);
    EXPECT_GE(r.accuracy_after, r.accuracy_before);
    EXPECT_GE(r.train_accuracy_after, r.train_accuracy_before);
    EXPECT_GT(r.accuracy_after, 0.9);
    EXPECT_EQ(model.layout.get("enc2.W").shape, (std::vector<int64_t>{6, 3}));

    // Same seed, same result.
    const StackReport r2 = stack_train(*be, cfg, X, y, "");
    EXPECT_EQ(r2.accuracy_after, r.accuracy_after);
    EXPECT_EQ(r2.finetune_cost_after, r.finetune_cost_after);

    // The stack's L-BFGS fits (layers, softmax, fine-tuning) use lbfgs_history: with 2 pairs kept
    // instead of 100 the results differ, and fine-tuning still lowers its cost.
    Config short_memory = cfg;
    short_memory.lbfgs_history = 2;
    const StackReport r3 = stack_train(*be, short_memory, X, y, "");
    EXPECT_NE(r3.finetune_cost_after, r.finetune_cost_after);
    EXPECT_NE(r3.softmax_cost, r.softmax_cost);
    EXPECT_LT(r3.finetune_cost_after, r3.finetune_cost_before);
}

TEST(StackProcedure, BadInputIsAOneLineError) {
    auto be = backend_create("onednn");
    Matrix<float> X;
    std::vector<int32_t> y;
    make_problem(40, X, y, 5);
    auto expect_error = [&](const Config& cfg, const std::vector<int32_t>& labels, const std::string& word) {
        const std::string e = sae_test::error_of([&] { stack_train(*be, cfg, X, labels, ""); });
        EXPECT_NE(e.find(word), std::string::npos) << e;
        EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    };
    Config cfg = small_config();
    expect_error(cfg, std::vector<int32_t>(y.begin(), y.end() - 1), "39 labels but 40 samples");
    expect_error(cfg, std::vector<int32_t>(40, 2), "two classes");
    cfg.layers = {};
    expect_error(cfg, y, "'layers' is empty");
    cfg.layers = {4, 0};
    expect_error(cfg, y, "'layers' contains 0");
    cfg = small_config();
    cfg.optimizer = "adam";
    expect_error(cfg, y, "lbfgs");
    cfg = small_config();
    cfg.sparsity = "topk";
    expect_error(cfg, y, "classic");
    cfg = small_config();
    cfg.test_fraction = 0.999;
    expect_error(cfg, y, "test_fraction");
}

// --- sae stack ----------------------------------------------------------------------------------
TEST(StackCli, EndToEndOnATinyDataSet) {
    const std::string dir = sae_test::temp_dir("stack");
    Matrix<float> X;
    std::vector<int32_t> y;
    make_problem(160, X, y, 8);
    npy_write_f32(dir + "/x.npy", X.data.data(), {X.rows, X.cols});
    std::vector<float> yf(y.begin(), y.end());
    npy_write_f32(dir + "/y.npy", yf.data(), {int64_t(yf.size())});
    const std::string toml = dir + "/stack.toml";
    sae_test::write_bytes(toml, "data = \"x.npy\"\nnormalize = \"none\"\nlayers = [6, 3]\nmax_iterations = 40\n"
                                "softmax_iterations = 50\nfinetune_iterations = 50\nthreads = 1\nseed = 2\n");
    auto r = run(kSae + " stack " + toml + " --labels " + dir + "/y.npy --out " + dir + "/out");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["layers"], nlohmann::json::array({6, 3}));
    EXPECT_EQ(j["n_train"].get<int>() + j["n_test"].get<int>(), 160);
    EXPECT_GE(j["accuracy_after"].get<double>(), j["accuracy_before"].get<double>());
    EXPECT_EQ(j["pretraining"].size(), 2u);
    EXPECT_EQ(nlohmann::json::parse(sae_test::read_bytes(dir + "/out/stack.json")), j);

    const SafeTensors st = safetensors_read(dir + "/out/stack.safetensors");
    EXPECT_EQ(st.tensors.at("enc1.W").shape, (std::vector<int64_t>{12, 6}));
    EXPECT_EQ(st.tensors.at("enc1.b").shape, (std::vector<int64_t>{6}));
    EXPECT_EQ(st.tensors.at("enc2.W").shape, (std::vector<int64_t>{6, 3}));
    EXPECT_EQ(st.tensors.at("softmax.W").shape, (std::vector<int64_t>{3, 4}));
    EXPECT_EQ(st.tensors.at("softmax.b").shape, (std::vector<int64_t>{4}));
    EXPECT_EQ(st.metadata.at("format"), "sae-stack");

    // Each layer is a model directory that model_load and `sae eval` accept.
    const SavedModel l1 = model_load(dir + "/out/layer1");
    EXPECT_EQ(l1.objective->d_in(), 12);
    EXPECT_EQ(l1.objective->d_sae(), 6);
    const SavedModel l2 = model_load(dir + "/out/layer2");
    EXPECT_EQ(l2.objective->d_in(), 6);
    EXPECT_EQ(l2.objective->d_sae(), 3);
    auto e = run(kSae + " eval --model " + dir + "/out/layer2");
    EXPECT_EQ(e.exit_code, 0) << e.err;
    EXPECT_EQ(nlohmann::json::parse(e.out)["samples"].get<int>(), j["n_train"].get<int>());

    // Bad input: one line on stderr, exit 1.
    for (const auto& [extra, word] : std::vector<std::pair<std::string, std::string>>{
             {"--set max_samples=100", ""},  // max_samples keeps the first labels too: not an error
             {"--set layers=", "'layers' is empty"},
             {"--set layers=6,0", "'layers' contains 0"},
         }) {
        auto b = run(kSae + " stack " + toml + " --labels " + dir + "/y.npy --out " + dir + "/bad " + extra +
                     " --set max_iterations=2 --set softmax_iterations=2 --set finetune_iterations=2");
        if (word.empty()) {
            EXPECT_EQ(b.exit_code, 0) << b.err;
            continue;
        }
        EXPECT_EQ(b.exit_code, 1) << extra;
        EXPECT_NE(b.err.find(word), std::string::npos) << b.err;
        EXPECT_EQ(std::count(b.err.begin(), b.err.end(), '\n'), 1) << b.err;
    }
    npy_write_f32(dir + "/y_short.npy", yf.data(), {int64_t(yf.size()) - 1});
    auto b = run(kSae + " stack " + toml + " --labels " + dir + "/y_short.npy --out " + dir + "/bad");
    EXPECT_EQ(b.exit_code, 1);
    EXPECT_NE(b.err.find("159 labels but"), std::string::npos) << b.err;
    EXPECT_EQ(std::count(b.err.begin(), b.err.end(), '\n'), 1) << b.err;
}

}  // namespace
