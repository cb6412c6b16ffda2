// End-to-end: the `sae` binary on small data sets, checked against independent computations.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "reference/reference.hpp"
#include "sae/data.hpp"
#include "sae/io.hpp"
#include "test_util.hpp"

using namespace sae;
using sae_test::run;

namespace {

const std::string kSae = sae_test::sae_binary();

std::string train_cmd(const std::string& data, const std::string& out, const std::string& extra) {
    return kSae + " train --set data=" + data + " --set normalize=none --set d_sae=5 --set seed=1 --set threads=1 --out " +
           out + " " + extra;
}

TEST(Cli, TrainWritesEveryOutputAndJDecreases) {
    const std::string dir = sae_test::temp_dir("cli");
    const std::string data = sae_test::two_blob_npy(dir);
    auto r = run(train_cmd(data, dir + "/run", "--set max_iterations=30 --set log_every=5"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("outputs:"), std::string::npos);
    // Not a terminal: plain progress lines, no carriage returns.
    EXPECT_NE(r.err.find("step 30/30"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find('\r'), std::string::npos);

    const auto cfg = nlohmann::json::parse(sae_test::read_bytes(dir + "/run/cfg.json"));
    EXPECT_EQ(cfg["d_in"], 12);
    EXPECT_EQ(cfg["d_sae"], 5);
    EXPECT_EQ(cfg["architecture"], "classic");
    EXPECT_EQ(cfg["sparsity"], "kl");
    EXPECT_EQ(cfg["optimizer"], "lbfgs");

    const SafeTensors st = safetensors_read(dir + "/run/model.safetensors");
    EXPECT_EQ(st.tensors.at("W_enc").shape, (std::vector<int64_t>{12, 5}));
    EXPECT_EQ(st.tensors.at("b_enc").shape, (std::vector<int64_t>{5}));
    EXPECT_EQ(st.tensors.at("W_dec").shape, (std::vector<int64_t>{5, 12}));
    EXPECT_EQ(st.tensors.at("b_dec").shape, (std::vector<int64_t>{12}));
    EXPECT_EQ(st.tensors.at("W_enc").dtype, DType::f32);

    const auto lines = sae_test::read_jsonl(dir + "/run/metrics.jsonl");
    ASSERT_GE(lines.size(), 6u);
    for (const char* k : {"step", "epoch", "J_total", "J_rec", "J_weight_decay", "J_sparsity", "rho_hat_mean",
                          "rho_hat_min", "rho_hat_max", "l0", "dead_fraction", "fvu", "lr", "samples_per_s"})
        EXPECT_TRUE(lines.back().contains(k)) << k;
    for (const auto& l : lines)
        EXPECT_NEAR(l["J_total"].get<double>(),
                    l["J_rec"].get<double>() + l["J_weight_decay"].get<double>() + l["J_sparsity"].get<double>(), 1e-9);
    EXPECT_LT(lines.back()["J_total"].get<double>(), 0.5 * lines.front()["J_total"].get<double>());
    EXPECT_TRUE(std::filesystem::exists(dir + "/run/checkpoint.safetensors"));
}

TEST(Cli, EvalMatchesReferenceAndOverridesApply) {
    const std::string dir = sae_test::temp_dir("cli");
    const std::string data = sae_test::two_blob_npy(dir);
    ASSERT_EQ(run(train_cmd(data, dir + "/run", "--set max_iterations=15")).exit_code, 0);
    auto r = run(kSae + " eval --model " + dir + "/run --data " + data);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    for (const char* k : {"J_total", "J_rec", "J_weight_decay", "J_sparsity", "mse", "fvu", "l0", "mean_activation",
                          "dead_fraction"})
        EXPECT_TRUE(j.contains(k)) << k;

    // Independent: the plain-loop double reference on the saved weights and the same data.
    const SafeTensors st = safetensors_read(dir + "/run/model.safetensors");
    ModelSpec spec{12, 5, Activation::sigmoid, Activation::sigmoid, false};
    const ParamLayout L = model_layout(spec);
    std::vector<double> p(size_t(L.total));
    for (const char* name : {"W_enc", "b_enc", "W_dec", "b_dec"}) {
        const auto& t = st.tensors.at(name);
        std::copy(t.f32.begin(), t.f32.end(), p.begin() + L.get(name).offset);
    }
    const Array a = npy_read(data);
    std::vector<double> X(a.values.begin(), a.values.end());
    const auto ref = reference::cost(spec, {Sparsity::kl, 0.1, 3.0, 3e-3, 1e-3}, p, X, 120, false);
    EXPECT_NEAR(j["J_rec"].get<double>(), ref.J.rec, 1e-5 * ref.J.rec);
    EXPECT_NEAR(j["J_weight_decay"].get<double>(), ref.J.weight_decay, 1e-6 * ref.J.weight_decay);
    EXPECT_NEAR(j["J_sparsity"].get<double>(), ref.J.sparsity, 1e-4 * ref.J.sparsity + 1e-7);
    double mean = 0;
    for (double v : ref.rho_hat) mean += v / 5;
    EXPECT_NEAR(j["mean_activation"].get<double>(), mean, 1e-5);
    EXPECT_NEAR(j["mse"].get<double>(), 2 * ref.J.rec / 12, 1e-5 * ref.J.rec);

    auto r0 = run(kSae + " eval --model " + dir + "/run --data " + data + " --set beta=0");
    ASSERT_EQ(r0.exit_code, 0) << r0.err;
    const auto j0 = nlohmann::json::parse(r0.out);
    EXPECT_EQ(j0["J_sparsity"].get<double>(), 0.0);
    EXPECT_DOUBLE_EQ(j0["J_rec"].get<double>(), j["J_rec"].get<double>());
}

TEST(Cli, EncodeWritesSigmoidActivations) {
    const std::string dir = sae_test::temp_dir("cli");
    const std::string data = sae_test::two_blob_npy(dir);
    ASSERT_EQ(run(train_cmd(data, dir + "/run", "--set max_iterations=5")).exit_code, 0);
    auto r = run(kSae + " encode --model " + dir + "/run --data " + data + " --out " + dir + "/h.npy");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const Array H = npy_read(dir + "/h.npy");
    ASSERT_EQ(H.shape, (std::vector<int64_t>{120, 5}));
    const SafeTensors st = safetensors_read(dir + "/run/model.safetensors");
    const auto& W = st.tensors.at("W_enc").f32;
    const auto& b = st.tensors.at("b_enc").f32;
    const Array X = npy_read(data);
    for (int64_t i : {0, 7, 119})
        for (int64_t j = 0; j < 5; ++j) {
            double z = b[size_t(j)];
            for (int64_t k = 0; k < 12; ++k) z += double(X.values[size_t(i * 12 + k)]) * W[size_t(k * 5 + j)];
            EXPECT_NEAR(H.values[size_t(i * 5 + j)], 1 / (1 + std::exp(-z)), 1e-6);
        }
}

TEST(Cli, GradcheckPassesForEveryModelKind) {
    for (const std::string sets : {"", "--set encoder_activation=relu --set sparsity=l1 --set decoder_activation=linear",
                                   "--set tied=true", "--set encoder_activation=tanh --set sparsity=none"}) {
        auto r = run(kSae + " gradcheck " + sets);
        EXPECT_EQ(r.exit_code, 0) << sets << "\n" << r.out << r.err;
        EXPECT_NE(r.out.find("W_enc"), std::string::npos);
        EXPECT_NE(r.out.find("overall"), std::string::npos);
        EXPECT_NE(r.out.find("PASS"), std::string::npos);
    }
    // An impossible bar fails with a non-zero exit.
    auto r = run(kSae + " gradcheck --tolerance 1e-30");
    EXPECT_NE(r.exit_code, 0);
}

std::string file_bytes(const std::string& p) { return sae_test::read_bytes(p); }

TEST(Cli, ResumeIsBitIdenticalForMinibatchAndLbfgs) {
    const std::string dir = sae_test::temp_dir("cli");
    const std::string data = sae_test::two_blob_npy(dir);
    for (const std::string opt : {"adam", "sgd", "rmsprop"}) {
        const std::string common = "--set optimizer=" + opt + " --set batch_size=32 --set lr=0.01 --set checkpoint_every=3";
        ASSERT_EQ(run(train_cmd(data, dir + "/full-" + opt, common + " --set epochs=4")).exit_code, 0);
        ASSERT_EQ(run(train_cmd(data, dir + "/part-" + opt, common + " --set epochs=2")).exit_code, 0);
        auto r = run(train_cmd(data, dir + "/part-" + opt, common + " --set epochs=4 --resume"));
        ASSERT_EQ(r.exit_code, 0) << r.err;
        EXPECT_EQ(file_bytes(dir + "/full-" + opt + "/model.safetensors"),
                  file_bytes(dir + "/part-" + opt + "/model.safetensors")) << opt;
    }
    ASSERT_EQ(run(train_cmd(data, dir + "/lb-full", "--set max_iterations=12")).exit_code, 0);
    ASSERT_EQ(run(train_cmd(data, dir + "/lb-part", "--set max_iterations=5")).exit_code, 0);
    auto r = run(train_cmd(data, dir + "/lb-part", "--set max_iterations=12 --resume"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(file_bytes(dir + "/lb-full/model.safetensors"), file_bytes(dir + "/lb-part/model.safetensors"));
    // The resumed run's metrics continue where the first stopped, with no duplicated steps.
    const auto lines = sae_test::read_jsonl(dir + "/lb-part/metrics.jsonl");
    for (size_t i = 1; i < lines.size(); ++i)
        EXPECT_GT(lines[i]["step"].get<int64_t>(), lines[i - 1]["step"].get<int64_t>());
    // lbfgs_history sets the pairs kept: the checkpoint's history buffers hold 3 × n doubles each,
    // the run differs from the default's (fewer pairs), and it resumes bit-identically too.
    const std::string h3 = " --set lbfgs_history=3";
    ASSERT_EQ(run(train_cmd(data, dir + "/h3-full", "--set max_iterations=12" + h3)).exit_code, 0);
    ASSERT_EQ(run(train_cmd(data, dir + "/h3-part", "--set max_iterations=5" + h3)).exit_code, 0);
    r = run(train_cmd(data, dir + "/h3-part", "--set max_iterations=12 --resume" + h3));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(file_bytes(dir + "/h3-full/model.safetensors"), file_bytes(dir + "/h3-part/model.safetensors"));
    EXPECT_NE(file_bytes(dir + "/h3-full/model.safetensors"), file_bytes(dir + "/lb-full/model.safetensors"));
    const auto ck3 = safetensors_read(dir + "/h3-full/checkpoint.safetensors");
    const auto ck10 = safetensors_read(dir + "/lb-full/checkpoint.safetensors");  // the default: 10 pairs
    const int64_t n = ck10.tensors.at("params").shape.at(0);
    EXPECT_EQ(ck3.tensors.at("lbfgs.s").shape.at(0), 3 * n);
    EXPECT_EQ(ck10.tensors.at("lbfgs.s").shape.at(0), 10 * n);
}

TEST(Cli, SameSeedSameBitsDifferentSeedDifferentBits) {
    const std::string dir = sae_test::temp_dir("cli");
    const std::string data = sae_test::two_blob_npy(dir);
    const std::string opts = "--set optimizer=adam --set epochs=2 --set batch_size=16";
    ASSERT_EQ(run(train_cmd(data, dir + "/a", opts)).exit_code, 0);
    ASSERT_EQ(run(train_cmd(data, dir + "/b", opts)).exit_code, 0);
    ASSERT_EQ(run(train_cmd(data, dir + "/c", opts + " --set seed=2")).exit_code, 0);
    EXPECT_EQ(file_bytes(dir + "/a/model.safetensors"), file_bytes(dir + "/b/model.safetensors"));
    EXPECT_NE(file_bytes(dir + "/a/model.safetensors"), file_bytes(dir + "/c/model.safetensors"));
}

TEST(Cli, BadInputGivesOneClearLine) {
    const std::string dir = sae_test::temp_dir("cli");
    const std::string data = sae_test::two_blob_npy(dir);
    sae_test::expect_clear_error(run(train_cmd(dir + "/nope.npy", dir + "/r", "")), "nope.npy");
    sae_test::expect_clear_error(run(train_cmd(data, dir + "/r", "--set betaa=2")), "did you mean 'beta'");
    sae_test::expect_clear_error(run(train_cmd(data, dir + "/r", "--set encoder_activation=relu")), "sigmoid");
    sae_test::expect_clear_error(run(train_cmd(data, dir + "/r", "--set rho=0")), "rho");
    sae_test::expect_clear_error(run(train_cmd(data, dir + "/r2", "--resume")), "no checkpoint");
    sae_test::write_bytes(dir + "/bad.toml", "d_sae = 10\nsparsty = \"kl\"\n");
    sae_test::expect_clear_error(run(kSae + " train " + dir + "/bad.toml --out " + dir + "/r3"), "did you mean 'sparsity'");
    // Output directory below a regular file: refused before training.
    sae_test::expect_clear_error(run(train_cmd(data, data + "/sub", "")), "x.npy");

    ASSERT_EQ(run(train_cmd(data, dir + "/m", "--set max_iterations=3")).exit_code, 0);
    const std::string other = dir + "/other.npy";
    std::vector<float> Y(40 * 7, 0.5f);
    npy_write_f32(other, Y.data(), {40, 7});
    sae_test::expect_clear_error(run(kSae + " eval --model " + dir + "/m --data " + other), "d_in = 12");
    // A resumed run must use the same settings.
    sae_test::expect_clear_error(run(train_cmd(data, dir + "/m", "--set max_iterations=6 --set beta=1 --resume")), "beta");
    // A truncated model file.
    const std::string st = file_bytes(dir + "/m/model.safetensors");
    sae_test::write_bytes(dir + "/m/model.safetensors", st.substr(0, st.size() / 2));
    sae_test::expect_clear_error(run(kSae + " eval --model " + dir + "/m --data " + data), "model.safetensors");
    sae_test::expect_clear_error(run(kSae + " eval --model " + dir + "/nowhere --data " + data), "cfg.json");
}

TEST(Cli, HelpListsSettings) {
    auto r = run(kSae + " train --help");
    EXPECT_EQ(r.exit_code, 0);
    for (const char* k : {"d_sae", "rho", "beta", "weight_decay", "l1_coefficient", "lr_schedule", "--resume"})
        EXPECT_NE(r.out.find(k), std::string::npos) << k;
}

TEST(Cli, TrainsOnBundledMnistIdx) {
    const std::string mnist = sae_test::source_dir() + "/data/mnist10k/images-idx3-ubyte.gz";
    const std::string dir = sae_test::temp_dir("cli");
    auto r = run(kSae + " train --set data=" + mnist +
                 " --set max_samples=300 --set d_sae=16 --set max_iterations=10 --set threads=2 --out " + dir + "/run");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto cfg = nlohmann::json::parse(sae_test::read_bytes(dir + "/run/cfg.json"));
    EXPECT_EQ(cfg["d_in"], 784);
}

}  // namespace
