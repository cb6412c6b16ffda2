// Nothing lost, numbers never go bad silently: SIGKILL at random moments with bit-identical
// resume, a full disk, non-finite losses, files from the future, NaN in data, sigmoid overflow.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "sae/io.hpp"
#include "sae/model.hpp"
#include "test_util.hpp"

using namespace sae;
using sae_test::run;
namespace fs = std::filesystem;

namespace {

const std::string kSae = sae_test::sae_binary();

std::string make_npy(const std::string& dir, int64_t n, int64_t d, uint64_t seed = 5) {
    Rng rng(seed);
    std::vector<float> X(size_t(n * d));
    for (auto& x : X) x = float(rng.uniform(0.0, 1.0));
    const std::string path = dir + "/x.npy";
    npy_write_f32(path, X.data(), {n, d});
    return path;
}

std::string bytes(const std::string& p) { return sae_test::read_bytes(p); }

// A non-zero exit, and stderr ending in exactly one "sae: error: ..." line that names `needle`
// (progress lines may come before it).
void expect_one_line_error(const sae_test::CommandResult& r, const std::string& needle) {
    EXPECT_NE(r.exit_code, 0);
    ASSERT_FALSE(r.err.empty());
    ASSERT_EQ(r.err.back(), '\n') << r.err;
    const size_t start = r.err.rfind('\n', r.err.size() - 2);
    const std::string last = r.err.substr(start == std::string::npos ? 0 : start + 1);
    EXPECT_EQ(last.rfind("sae: error: ", 0), 0u) << r.err;
    EXPECT_NE(last.find(needle), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("sae: error: "), r.err.rfind("sae: error: ")) << r.err;
}

// Kills training with SIGKILL after random delays, resumes each time, and compares the final
// model with an uninterrupted run (same seed, same threads): the bytes must be identical.
TEST(Reliability, SigkillAtRandomMomentsThenResumeIsBitIdentical) {
    // Long enough (about a second here) that several kills land inside the run: the kill delays
    // are fractions of the uninterrupted run's time, and process start-up is a fixed cost.
    constexpr int kEpochs = 30;
    const std::string dir = sae_test::temp_dir("kill");
    const std::string data = make_npy(dir, 2000, 64);
    const std::string args = " --set data=" + data +
                             " --set normalize=none --set d_sae=128 --set optimizer=adam --set lr=0.003 "
                             "--set batch_size=50 --set epochs=" + std::to_string(kEpochs) + " --set seed=3 --set threads=1 "
                             "--set checkpoint_every=7 --set log_every=5";
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_EQ(run(kSae + " train" + args + " --out " + dir + "/ref").exit_code, 0);
    const double T = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    const std::string out = dir + "/killed";
    Rng rng(2026);
    int kills = 0, attempts = 0;
    for (;;) {
        ASSERT_LT(++attempts, 60) << "training never finished";
        const bool have_ckpt = fs::exists(out + "/checkpoint.safetensors");
        // Random moments within the run; the window widens with each attempt so that a loaded
        // machine (slower start-up) still makes progress between kills.
        const double delay = std::max(0.02, rng.uniform(0.03, 0.2) * T * (1.0 + attempts / 8.0));
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.3f", delay);
        auto r = run("timeout -s KILL " + std::string(buf) + " " + kSae + " train" + args + " --out " + out +
                     (have_ckpt ? " --resume" : ""));
        if (r.exit_code == 0) break;
        ASSERT_EQ(r.exit_code, 137) << r.err;  // killed, not failed
        ++kills;
    }
    std::printf("%d kills in %d attempts; uninterrupted run %.3f s\n", kills, attempts, T);
    EXPECT_GE(kills, 3) << "the runs were too short to be interrupted (uninterrupted run: " << T << " s)";
    EXPECT_EQ(bytes(dir + "/ref/model.safetensors"), bytes(out + "/model.safetensors"));
    // No temporary files are left behind, and metrics steps are strictly increasing.
    for (const auto& e : fs::directory_iterator(out))
        EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
    std::ifstream f(out + "/metrics.jsonl");
    std::string line;
    int64_t last = -1;
    while (std::getline(f, line)) {
        const auto j = nlohmann::json::parse(line);
        EXPECT_GT(j["step"].get<int64_t>(), last);
        last = j["step"].get<int64_t>();
    }
    EXPECT_EQ(last, kEpochs * 40);
}

// A file-size limit makes every write past it fail (EFBIG), like a full disk: a clear error,
// and the previous model and checkpoint stay as they were.
TEST(Reliability, FullDiskGivesClearErrorAndKeepsPreviousOutputs) {
    const std::string dir = sae_test::temp_dir("full");
    const std::string data = make_npy(dir, 300, 64);
    const std::string args = " --set data=" + data + " --set normalize=none --set d_sae=256 --set max_iterations=3 --out " + dir + "/run";
    ASSERT_EQ(run(kSae + " train" + args).exit_code, 0);
    const std::string model = bytes(dir + "/run/model.safetensors");
    const std::string ckpt = bytes(dir + "/run/checkpoint.safetensors");
    ASSERT_GT(model.size(), 100000u);
    // 64 KiB limit (ulimit -f counts 1024-byte blocks): the checkpoint cannot be written.
    auto r = run("ulimit -f 64; " + kSae + " train" + args + " --set seed=9");
    expect_one_line_error(r, "checkpoint.safetensors");
    EXPECT_NE(r.err.find("disk full"), std::string::npos) << r.err;
    EXPECT_EQ(bytes(dir + "/run/model.safetensors"), model);
    EXPECT_EQ(bytes(dir + "/run/checkpoint.safetensors"), ckpt);
    for (const auto& e : fs::directory_iterator(dir + "/run"))
        EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
}

// An output directory that cannot be made (here: below a regular file; root ignores permission
// bits) is an error before training starts: one line naming it, no progress, nothing written.
TEST(Reliability, UnwritableOutputDirectoryFailsBeforeTraining) {
    const std::string dir = sae_test::temp_dir("unwritable");
    const std::string data = make_npy(dir, 300, 64);
    std::ofstream(dir + "/file") << "a regular file";
    auto r = run(kSae + " train --set data=" + data + " --set normalize=none --set d_sae=16 --set max_iterations=50 --out " +
                 dir + "/file/run");
    expect_one_line_error(r, dir + "/file/run");
    EXPECT_EQ(r.err.find("step"), std::string::npos) << "training started: " << r.err;
    EXPECT_EQ(bytes(dir + "/file"), "a regular file");
}

// One poisoned sample (finite, but 1e30: its gradient overflows float) sits in exactly one batch
// per epoch. stop: an error naming the step and the term, the last checkpoint finite.
// skip: the run completes and skips exactly one batch per epoch.
TEST(Reliability, NonFiniteGradientStopsNamingStepAndTermOrIsSkipped) {
    const std::string dir = sae_test::temp_dir("nan");
    Rng rng(8);
    std::vector<float> X(200 * 16);
    for (auto& x : X) x = float(rng.uniform(0.0, 1.0));
    for (int k = 0; k < 16; ++k) X[size_t(37 * 16 + k)] = 1e30f;
    npy_write_f32(dir + "/x.npy", X.data(), {200, 16});
    const std::string args = " --set data=" + dir + "/x.npy" +
                             " --set normalize=none --set d_sae=8 --set encoder_activation=relu "
                             "--set decoder_activation=linear --set sparsity=l1 --set optimizer=adam "
                             "--set lr=0.01 --set batch_size=20 --set epochs=3 --set checkpoint_every=1";
    auto r = run(kSae + " train" + args + " --out " + dir + "/stop");
    expect_one_line_error(r, "step ");
    EXPECT_TRUE(r.err.find("J_rec is not finite") != std::string::npos ||
                r.err.find("the gradient is not finite") != std::string::npos) << r.err;
    const SafeTensors st = safetensors_read(dir + "/stop/checkpoint.safetensors");
    for (float v : st.tensors.at("params").f32) ASSERT_TRUE(std::isfinite(v));

    auto s = run(kSae + " train" + args + " --set on_nonfinite=skip --out " + dir + "/skip");
    ASSERT_EQ(s.exit_code, 0) << s.err;
    EXPECT_NE(s.out.find("skipped 3 batches"), std::string::npos) << s.out;
    std::ifstream f(dir + "/skip/metrics.jsonl");
    std::string line, last;
    while (std::getline(f, line)) last = line;
    EXPECT_EQ(nlohmann::json::parse(last)["skipped_batches"].get<int64_t>(), 3);
    const SafeTensors model = safetensors_read(dir + "/skip/model.safetensors");  // kept alive for the loop
    for (float v : model.tensors.at("W_enc").f32) ASSERT_TRUE(std::isfinite(v));
}

// An update that overflows the parameters (a finite gradient, an absurd lr) stops the run too.
TEST(Reliability, OverflowingUpdateStops) {
    const std::string dir = sae_test::temp_dir("nan");
    const std::string data = make_npy(dir, 200, 16);
    auto r = run(kSae + " train --set data=" + data +
                 " --set normalize=none --set d_sae=8 --set encoder_activation=relu --set decoder_activation=linear "
                 "--set sparsity=l1 --set optimizer=sgd --set momentum=0 --set lr=1e12 --set batch_size=20 "
                 "--set epochs=3 --set checkpoint_every=1 --set on_nonfinite=skip --out " + dir + "/m");
    expect_one_line_error(r, "non-finite");
    const SafeTensors ckpt = safetensors_read(dir + "/m/checkpoint.safetensors");  // kept alive for the loop
    for (float v : ckpt.tensors.at("params").f32) ASSERT_TRUE(std::isfinite(v));
}

TEST(Reliability, ModelFromNewerFormatIsRefused) {
    const std::string dir = sae_test::temp_dir("ver");
    const std::string data = make_npy(dir, 50, 8);
    ASSERT_EQ(run(kSae + " train --set data=" + data + " --set d_sae=4 --set max_iterations=2 --out " + dir + "/m").exit_code, 0);
    auto cfg = nlohmann::json::parse(bytes(dir + "/m/cfg.json"));
    cfg["format_version"] = 99;
    sae_test::write_bytes(dir + "/m/cfg.json", cfg.dump());
    expect_one_line_error(run(kSae + " eval --model " + dir + "/m --data " + data), "newer");
}

TEST(Reliability, NanInDataIsRejectedNamingTheSample) {
    const std::string dir = sae_test::temp_dir("nandata");
    std::vector<float> X(30 * 4, 0.5f);
    X[size_t(17 * 4 + 2)] = NAN;
    npy_write_f32(dir + "/bad.npy", X.data(), {30, 4});
    auto r = run(kSae + " train --set data=" + dir + "/bad.npy --set d_sae=3 --out " + dir + "/m");
    expect_one_line_error(r, "bad.npy");
    EXPECT_NE(r.err.find("17"), std::string::npos) << r.err;
}

TEST(Reliability, SigmoidAndKlStayFiniteAtExtremes) {
    auto be = backend_create("onednn");
    ModelSpec spec{2, 2, Activation::sigmoid, Activation::sigmoid, false};
    const ParamLayout L = model_layout(spec);
    std::vector<float> p(size_t(L.total), 0.0f);
    auto P = model_params(spec, L, p.data());
    P.W_enc[0] = 1e4f; P.W_enc[1] = -1e4f; P.W_enc[2] = -1e4f; P.W_enc[3] = 1e4f;  // z = ±1e4·x
    P.W_dec[0] = 1e4f; P.W_dec[3] = -1e4f;
    const std::vector<float> X = {1, 0, 0, 1, 1, 1};
    Workspace<float> ws;
    ws.reserve(spec, 3);
    std::vector<float> g(size_t(L.total));
    const CostTerms J = model_cost<float>(*be, spec, CostSpec{}, L, p.data(), X.data(), 3, g.data(), ws);
    EXPECT_TRUE(std::isfinite(J.total())) << J.rec << " " << J.sparsity;  // ρ̂ is 0 or 1 for some latents
    for (float v : g) EXPECT_TRUE(std::isfinite(v));
    for (float h : ws.H.data) {
        EXPECT_GE(h, 0.0f);
        EXPECT_LE(h, 1.0f);
    }
}

}  // namespace
