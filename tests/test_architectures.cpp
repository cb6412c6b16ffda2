// Gated and Matryoshka BatchTopK end to end on data with known ground truth: MMCS on `sae synth`
// data (beside GroundTruth.TopkAndL1RecoverSyntheticFeatures in test_modern_cli.cpp), and the
// measure Matryoshka exists for, feature absorption, on a hierarchical synthetic set.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "sae/data.hpp"
#include "sae/io.hpp"
#include "sae/rng.hpp"
#include "test_util.hpp"

using namespace sae;
using sae_test::run;

namespace {

const std::string kSae = sae_test::sae_binary();

// CI scale as GroundTruth.TopkAndL1RecoverSyntheticFeatures: 64 features in 32 dimensions,
// 20,000 samples, 64 latents, Adam 20 epochs, one thread (deterministic). Measured 2026-12-04
// with these settings: gated (l1 0.3) 0.976; matryoshka_batchtopk (k 5, the default groups
// 0.125, 0.125, 0.25, 0.5) 0.823, against 0.933 for plain batchtopk with the same settings: the
// first groups must reconstruct alone, so their latents blend features (docs/ground_truth.md).
// The bars guard against regressions.
TEST(GroundTruth, GatedAndMatryoshkaRecoverSyntheticFeatures) {
    const std::string dir = sae_test::temp_dir("gt");
    ASSERT_EQ(run(kSae + " synth --out " + dir + "/d --features 64 --dim 32 --samples 20000 --seed 1").exit_code, 0);
    const std::string common = " --set data=" + dir + "/d/data.npy --set normalize=none --set d_sae=64 --set optimizer=adam"
                               " --set lr=0.003 --set batch_size=256 --set epochs=20 --set threads=1 --set log_every=1000";
    const std::pair<std::string, double> cases[] = {
        {"--set architecture=gated --set l1_coefficient=0.3", 0.95},
        {"--set architecture=matryoshka_batchtopk --set k=5", 0.80}};
    for (const auto& [arch, bar] : cases) {
        ASSERT_EQ(run(kSae + " train" + common + " " + arch + " --out " + dir + "/m").exit_code, 0) << arch;
        auto e = run(kSae + " eval --model " + dir + "/m --data " + dir + "/d/data.npy --ground-truth " + dir + "/d/features.npy");
        ASSERT_EQ(e.exit_code, 0) << e.err;
        const double mmcs = nlohmann::json::parse(e.out)["mmcs"].get<double>();
        EXPECT_GE(mmcs, bar) << arch;
        std::printf("%s: MMCS %.4f (bar %.2f)\n", arch.c_str(), mmcs, bar);
    }
}

// A hierarchical set: P parent features, each with C children; a sample has each parent with
// probability q and then exactly one of its children (a child never occurs without its parent),
// plus independent features. x = Σ coefficient·direction, coefficients uniform in [0.5, 1.5],
// directions unit Gaussian in d dimensions.
struct Hierarchy {
    int64_t d = 32, P = 4, C = 4, independent = 16, n = 20000;
    double q = 0.25, p_independent = 0.05;
    std::vector<double> dirs;            // [P + P·C + independent, d]: parents, children, others
    std::vector<uint8_t> parent_active;  // [n, P]
    std::vector<float> X;                // [n, d]
};

Hierarchy make_hierarchy(uint64_t seed) {
    Hierarchy h;
    Rng rng(seed);
    const int64_t F = h.P + h.P * h.C + h.independent;
    h.dirs.resize(size_t(F * h.d));
    for (int64_t f = 0; f < F; ++f) {
        double s = 0;
        for (int64_t c = 0; c < h.d; ++c) s += std::pow(h.dirs[size_t(f * h.d + c)] = rng.normal(), 2);
        for (int64_t c = 0; c < h.d; ++c) h.dirs[size_t(f * h.d + c)] /= std::sqrt(s);
    }
    h.parent_active.assign(size_t(h.n * h.P), 0);
    h.X.assign(size_t(h.n * h.d), 0.0f);
    auto add = [&](int64_t i, int64_t f) {
        const double a = rng.uniform(0.5, 1.5);
        for (int64_t c = 0; c < h.d; ++c) h.X[size_t(i * h.d + c)] += float(a * h.dirs[size_t(f * h.d + c)]);
    };
    for (int64_t i = 0; i < h.n; ++i) {
        for (int64_t p = 0; p < h.P; ++p)
            if (rng.uniform() < h.q) {
                h.parent_active[size_t(i * h.P + p)] = 1;
                add(i, p);
                add(i, h.P + p * h.C + int64_t(rng.below(uint64_t(h.C))));
            }
        for (int64_t f = 0; f < h.independent; ++f)
            if (rng.uniform() < h.p_independent) add(i, h.P + h.P * h.C + f);
    }
    return h;
}

struct Absorption {
    double parent_cos = 0;     // mean over parents of the best decoder-row cosine
    double parent_recall = 0;  // mean over parents: of the samples with the parent, the fraction
                               // on which its best-matching latent fires
};

Absorption absorption(const Hierarchy& h, const std::string& model, const std::string& data, const std::string& dir) {
    const SafeTensors st = safetensors_read(model + "/model.safetensors");
    const auto& W = st.tensors.at("W_dec").f32;
    const int64_t d_sae = st.tensors.at("W_dec").shape[0];
    EXPECT_EQ(run(kSae + " encode --model " + model + " --data " + data + " --out " + dir + "/h.npy").exit_code, 0);
    const Array H = npy_read(dir + "/h.npy");
    Absorption a;
    for (int64_t p = 0; p < h.P; ++p) {
        double best = -2;
        int64_t arg = 0;
        for (int64_t j = 0; j < d_sae; ++j) {
            double dot = 0, nn = 0;
            for (int64_t c = 0; c < h.d; ++c) {
                dot += double(W[size_t(j * h.d + c)]) * h.dirs[size_t(p * h.d + c)];
                nn += double(W[size_t(j * h.d + c)]) * W[size_t(j * h.d + c)];
            }
            const double cs = nn > 0 ? dot / std::sqrt(nn) : 0;
            if (cs > best) best = cs, arg = j;
        }
        int64_t with = 0, fired = 0;
        for (int64_t i = 0; i < h.n; ++i)
            if (h.parent_active[size_t(i * h.P + p)]) {
                ++with;
                fired += H.values[size_t(i * d_sae + arg)] > 0;
            }
        a.parent_cos += best / double(h.P);
        a.parent_recall += double(fired) / double(with) / double(h.P);
    }
    return a;
}

// Under a tight L0 (k = 2 against about 2.8 true features per sample), BatchTopK absorbs the
// parents into parent+child latents; Matryoshka's first group of 4 latents must reconstruct on
// its own and keeps the parents as latents of their own that fire with every child.
TEST(Absorption, MatryoshkaKeepsParentFeaturesThatBatchTopKAbsorbs) {
    const std::string dir = sae_test::temp_dir("absorb");
    const Hierarchy h = make_hierarchy(5);
    npy_write_f32(dir + "/x.npy", h.X.data(), {h.n, h.d});
    const std::string common = " --set data=" + dir + "/x.npy --set normalize=none --set d_sae=64 --set k=2 --set optimizer=adam"
                               " --set lr=0.003 --set batch_size=256 --set epochs=20 --set threads=1 --set log_every=1000";
    ASSERT_EQ(run(kSae + " train" + common + " --set architecture=batchtopk --out " + dir + "/b").exit_code, 0);
    ASSERT_EQ(run(kSae + " train" + common + " --set architecture=matryoshka_batchtopk --set matryoshka_groups=0.0625,0.1875,0.75"
                         " --out " + dir + "/m").exit_code, 0);
    const Absorption b = absorption(h, dir + "/b", dir + "/x.npy", dir);
    const Absorption m = absorption(h, dir + "/m", dir + "/x.npy", dir);
    std::printf("parent cosine / recall: batchtopk %.3f / %.3f, matryoshka_batchtopk %.3f / %.3f\n", b.parent_cos,
                b.parent_recall, m.parent_cos, m.parent_recall);
    // Measured 2026-12-04 (deterministic: seed, one thread): batchtopk 0.764 / 0.450,
    // matryoshka 0.845 / 0.649. The parent latents of the first group also carry some of the
    // children's mean direction (a parent never occurs alone), hence cosines near 0.85.
    EXPECT_GT(m.parent_recall, b.parent_recall + 0.1);
    EXPECT_GT(m.parent_cos, b.parent_cos);
}

}  // namespace
