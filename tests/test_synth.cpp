// The known-ground-truth benchmark (sae synth) and MMCS, checked against independent
// computations: closed-form probabilities, plain-loop products, hand-worked cosines.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "sae/backend.hpp"
#include "sae/data.hpp"
#include "sae/error.hpp"
#include "sae/io.hpp"
#include "sae/rng.hpp"
#include "sae/synth.hpp"
#include "test_util.hpp"

using namespace sae;
using sae_test::run;

namespace {

SynthSpec spec_of(int64_t G, int64_t d, int64_t N, uint64_t seed = 1, bool correlated = false) {
    SynthSpec s;
    s.features = G;
    s.dim = d;
    s.samples = N;
    s.seed = seed;
    s.correlated = correlated;
    return s;
}

// Activation indicators [N, G] from the codes (coefficients are > 0 when active, except with
// probability 2⁻²⁴ per activation; checked against active_total below).
std::vector<uint8_t> indicators(const SynthData& D) {
    std::vector<uint8_t> a(D.codes.size());
    for (size_t i = 0; i < a.size(); ++i) a[i] = D.codes[i] != 0.0f;
    return a;
}

// Pearson correlation of the indicators of features i and j.
double indicator_corr(const std::vector<uint8_t>& a, int64_t N, int64_t G, int64_t i, int64_t j) {
    double si = 0, sj = 0, sij = 0;
    for (int64_t n = 0; n < N; ++n) {
        const double x = a[size_t(n * G + i)], y = a[size_t(n * G + j)];
        si += x;
        sj += y;
        sij += x * y;
    }
    const double pi = si / N, pj = sj / N, pij = sij / N;
    return (pij - pi * pj) / std::sqrt(pi * (1 - pi) * pj * (1 - pj));
}

TEST(Synth, ProbabilitiesFollowTheGeometricLawAndSumToMeanActive) {
    SynthSpec s = spec_of(64, 4, 1);
    int64_t clipped = -1;
    const auto p = synth_probabilities(s, &clipped);
    ASSERT_EQ(p.size(), 64u);
    EXPECT_EQ(clipped, 0);
    // Closed form: p_i = 5·0.99^i / Σ_{j<64} 0.99^j, Σ = (1 − 0.99^64)/0.01.
    const double Z = (1 - std::pow(0.99, 64)) / 0.01;
    for (int64_t i = 0; i < 64; ++i) EXPECT_NEAR(p[size_t(i)], 5 * std::pow(0.99, double(i)) / Z, 1e-12) << i;

    // Clipping: G = 10, decay 0.5, mean 9.25 → leading features at 1, the sum still 9.25.
    s = spec_of(10, 4, 1);
    s.decay = 0.5;
    s.mean_active = 9.25;
    const auto q = synth_probabilities(s, &clipped);
    EXPECT_GT(clipped, 0);
    EXPECT_NEAR(std::accumulate(q.begin(), q.end(), 0.0), 9.25, 1e-12);
    for (int64_t i = 0; i < 10; ++i) {
        EXPECT_LE(q[size_t(i)], 1.0);
        if (i < clipped) {
            EXPECT_EQ(q[size_t(i)], 1.0);
        }
        if (i > clipped) {
            EXPECT_NEAR(q[size_t(i)] / q[size_t(i - 1)], 0.5, 1e-12);
        }
    }
    // By hand: 7 at 1 would leave 2.25 for 0.5⁷·(1 + ½ + ¼) → p_7 = 2.25/1.75 > 1; 8 at 1 leave
    // 1.25 = s·0.5⁸·(1 + ½) → p_8 = 5/6, p_9 = 5/12.
    EXPECT_EQ(clipped, 8);
    EXPECT_NEAR(q[8], 5.0 / 6, 1e-12);
    EXPECT_NEAR(q[9], 5.0 / 12, 1e-12);

    // mean_active = G: every feature always on.
    s.mean_active = 10;
    for (double v : synth_probabilities(s)) EXPECT_EQ(v, 1.0);
    s.mean_active = 10.5;
    EXPECT_THROW(synth_probabilities(s), Error);
    s.mean_active = 0;
    EXPECT_THROW(synth_probabilities(s), Error);
}

TEST(Synth, FrequenciesFeaturesAndCoefficientsMatchTheSpec) {
    const int64_t G = 64, d = 32, N = 20000;
    const SynthData D = synth_generate(spec_of(G, d, N, 7), true);
    ASSERT_EQ(D.data.size(), size_t(N * d));
    ASSERT_EQ(D.features.size(), size_t(G * d));
    ASSERT_EQ(D.codes.size(), size_t(N * G));
    const double Z = (1 - std::pow(0.99, double(G))) / 0.01;

    for (int64_t i = 0; i < G; ++i) {
        double nn = 0;
        for (int64_t k = 0; k < d; ++k) nn += double(D.features[size_t(i * d + k)]) * D.features[size_t(i * d + k)];
        EXPECT_NEAR(std::sqrt(nn), 1.0, 1e-6) << i;
    }
    const auto a = indicators(D);
    int64_t nonzero = 0;
    double coef_sum = 0;
    for (size_t t = 0; t < D.codes.size(); ++t) {
        const float c = D.codes[t];
        ASSERT_GE(c, 0.0f);
        ASSERT_LT(c, 1.0f);
        nonzero += c != 0.0f;
        coef_sum += c;
    }
    EXPECT_EQ(nonzero, D.active_total);
    // Every feature's empirical frequency within 5 binomial standard deviations of p_i.
    for (int64_t i = 0; i < G; ++i) {
        const double p = 5 * std::pow(0.99, double(i)) / Z;
        double f = 0;
        for (int64_t n = 0; n < N; ++n) f += a[size_t(n * G + i)];
        f /= N;
        EXPECT_NEAR(f, p, 5 * std::sqrt(p * (1 - p) / N)) << "feature " << i;
    }
    // Mean active count: Var = Σ p(1−p) per sample.
    double var = 0;
    for (int64_t i = 0; i < G; ++i) {
        const double p = 5 * std::pow(0.99, double(i)) / Z;
        var += p * (1 - p);
    }
    EXPECT_NEAR(D.mean_active(), 5.0, 5 * std::sqrt(var / N));
    // Coefficients uniform on [0, 1): mean 1/2, sd 1/√12.
    EXPECT_NEAR(coef_sum / double(nonzero), 0.5, 5 / std::sqrt(12.0 * double(nonzero)));
}

TEST(Synth, DataIsCodesTimesFeaturesExactly) {
    for (bool corr : {false, true}) {
        const int64_t G = 40, d = 16, N = 3000;
        const SynthData D = synth_generate(spec_of(G, d, N, 3, corr), true);
        std::vector<double> acc(static_cast<size_t>(d));
        for (int64_t n = 0; n < N; ++n) {
            std::fill(acc.begin(), acc.end(), 0.0);
            for (int64_t i = 0; i < G; ++i)
                for (int64_t k = 0; k < d; ++k)
                    acc[size_t(k)] += double(D.codes[size_t(n * G + i)]) * double(D.features[size_t(i * d + k)]);
            for (int64_t k = 0; k < d; ++k)
                ASSERT_EQ(D.data[size_t(n * d + k)], float(acc[size_t(k)])) << "sample " << n << " dim " << k;
        }
    }
}

TEST(Synth, DeterministicForASeedWhateverTheThreadCount) {
    const SynthSpec s = spec_of(50, 12, 5000, 11, true);  // > 1 block of samples
    set_num_threads(1);
    const SynthData a = synth_generate(s);
    set_num_threads(2);
    const SynthData b = synth_generate(s);
    EXPECT_EQ(a.data, b.data);
    EXPECT_EQ(a.features, b.features);
    SynthSpec s2 = s;
    s2.seed = 12;
    const SynthData c = synth_generate(s2);
    EXPECT_NE(a.data, c.data);
    EXPECT_NE(a.features, c.features);
}

TEST(Synth, CorrelatedKeepsMarginalsAndCorrelatesActivations) {
    const int64_t G = 24, d = 8, N = 40000;
    const SynthData I = synth_generate(spec_of(G, d, N, 5, false), true);
    const SynthData C = synth_generate(spec_of(G, d, N, 5, true), true);
    const auto ai = indicators(I), ac = indicators(C);
    const double Z = (1 - std::pow(0.99, double(G))) / 0.01;
    for (int64_t i = 0; i < G; ++i) {
        const double p = 5 * std::pow(0.99, double(i)) / Z;
        double f = 0;
        for (int64_t n = 0; n < N; ++n) f += ac[size_t(n * G + i)];
        EXPECT_NEAR(f / N, p, 5 * std::sqrt(p * (1 - p) / N)) << "feature " << i;
    }
    EXPECT_NEAR(C.mean_active(), 5.0, 0.1);  // looser: correlated counts have a larger variance
    double max_ind = 0, max_cor = 0;
    int64_t strong = 0;
    for (int64_t i = 0; i < G; ++i)
        for (int64_t j = i + 1; j < G; ++j) {
            max_ind = std::max(max_ind, std::fabs(indicator_corr(ai, N, G, i, j)));
            const double r = std::fabs(indicator_corr(ac, N, G, i, j));
            max_cor = std::max(max_cor, r);
            strong += r > 0.1;
        }
    // Independent: each sample correlation has sd 1/√N = 0.005; 276 pairs stay below 6 sd.
    EXPECT_LT(max_ind, 0.03);
    EXPECT_GT(max_cor, 0.2);
    EXPECT_GE(strong, 10);
}

TEST(Synth, RefusesBadSpecsAndAbsurdSizesBeforeAllocating) {
    EXPECT_THROW(synth_generate(spec_of(0, 4, 10)), Error);
    EXPECT_THROW(synth_generate(spec_of(4, 0, 10)), Error);
    EXPECT_THROW(synth_generate(spec_of(4, 4, 0)), Error);
    SynthSpec s = spec_of(10, 4, 10);
    s.decay = 1.5;
    EXPECT_THROW(synth_generate(s), Error);
    s = spec_of(100, 100000, 100000);  // 37 GiB of data
    try {
        synth_validate(s);
        FAIL() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("8 GiB"), std::string::npos) << e.what();
    }
    EXPECT_NO_THROW(synth_validate(spec_of(100, 1000, 1000000)));  // 3.7 GiB
    EXPECT_NO_THROW(synth_validate(spec_of(2000, 1000, 1000000), false));
    EXPECT_THROW(synth_validate(spec_of(2000, 1000, 1000000), true), Error);  // + 7.5 GiB of codes
    EXPECT_THROW(synth_validate(spec_of(2, 4, int64_t(1) << 62)), Error);  // no overflow
}

TEST(Synth, NormalQuantileInvertsTheCdf) {
    EXPECT_DOUBLE_EQ(normal_cdf(0), 0.5);
    EXPECT_NEAR(normal_cdf(1.959963984540054), 0.975, 1e-15);
    EXPECT_NEAR(normal_quantile(0.975), 1.959963984540054, 1e-12);
    EXPECT_NEAR(normal_quantile(0.5), 0.0, 1e-15);
    for (double p : {1e-300, 1e-10, 0.01, 0.3, 0.9, 0.999999})
        EXPECT_NEAR(normal_cdf(normal_quantile(p)), p, 1e-12 * p + 1e-16) << p;
    EXPECT_EQ(normal_quantile(0), -INFINITY);
    EXPECT_EQ(normal_quantile(1), INFINITY);
}

// --- MMCS ---------------------------------------------------------------------------------

std::vector<float> gaussian(int64_t rows, int64_t d, uint64_t seed) {
    Rng rng(seed);
    std::vector<float> M(size_t(rows * d));
    for (auto& v : M) v = float(rng.normal());
    return M;
}

// Brute force in double: max over rows of the cosine, per feature.
std::vector<double> brute_max_cos(const std::vector<float>& F, int64_t G, const std::vector<float>& W, int64_t m,
                                  int64_t d) {
    std::vector<double> out(static_cast<size_t>(G));
    for (int64_t i = 0; i < G; ++i) {
        double best = -2;
        for (int64_t j = 0; j < m; ++j) {
            double dot = 0, a = 0, b = 0;
            for (int64_t k = 0; k < d; ++k) {
                dot += double(F[size_t(i * d + k)]) * W[size_t(j * d + k)];
                a += double(F[size_t(i * d + k)]) * F[size_t(i * d + k)];
                b += double(W[size_t(j * d + k)]) * W[size_t(j * d + k)];
            }
            best = std::max(best, dot / std::sqrt(a * b));
        }
        out[size_t(i)] = best;
    }
    return out;
}

TEST(Mmcs, HandWorkedTwoDimensionalExample) {
    // True features e₁ and 5·e₂. Decoder rows at 30°, 135° and 270° (with lengths 2, √2, 3).
    const std::vector<float> F = {1, 0, 0, 5};
    const std::vector<float> W = {std::sqrt(3.0f), 1, -1, 1, 0, -3};
    const MmcsResult r = mmcs(F.data(), 2, W.data(), 3, 2);
    // e₁: cos 30° = √3/2, cos 135° = −1/√2, cos 270° = 0 → √3/2 (row 0).
    // e₂: cos 60° = 1/2, cos 45° = 1/√2, cos 180° = −1 → 1/√2 (row 1).
    ASSERT_EQ(r.per_feature.size(), 2u);
    EXPECT_NEAR(r.per_feature[0], 0.8660254037844386, 1e-6);
    EXPECT_NEAR(r.per_feature[1], 0.7071067811865476, 1e-6);
    EXPECT_EQ(r.best_row[0], 0);
    EXPECT_EQ(r.best_row[1], 1);
    EXPECT_NEAR(r.mmcs, (0.8660254037844386 + 0.7071067811865476) / 2, 1e-6);
    EXPECT_NEAR(r.min, 0.7071067811865476, 1e-6);
    EXPECT_NEAR(r.median, r.mmcs, 1e-12);
    EXPECT_EQ(r.frac_above_0_9, 0.0);
}

TEST(Mmcs, OneWhenDecoderIsAPermutedScaledCopy) {
    const int64_t G = 30, d = 20, extra = 17;
    const auto F = gaussian(G, d, 1);
    std::vector<int64_t> perm(G);
    std::iota(perm.begin(), perm.end(), 0);
    Rng rng(2);
    for (int64_t i = G - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[rng.below(uint64_t(i + 1))]);
    // Row perm[i] = (scale)·F_i; plus random extra rows.
    std::vector<float> W = gaussian(G + extra, d, 3);
    for (int64_t i = 0; i < G; ++i) {
        const float scale = float(rng.uniform(0.01, 100.0));
        for (int64_t k = 0; k < d; ++k) W[size_t(perm[size_t(i)] * d + k)] = scale * F[size_t(i * d + k)];
    }
    const MmcsResult r = mmcs(F.data(), G, W.data(), G + extra, d);
    EXPECT_NEAR(r.mmcs, 1.0, 1e-6);
    EXPECT_NEAR(r.min, 1.0, 1e-6);
    EXPECT_EQ(r.frac_above_0_9, 1.0);
    for (int64_t i = 0; i < G; ++i) EXPECT_EQ(r.best_row[size_t(i)], perm[size_t(i)]) << i;
}

TEST(Mmcs, RandomDecoderBelowOneAndMatchesBruteForce) {
    const int64_t G = 50, d = 64, m = 100;
    const auto F = gaussian(G, d, 4);
    const auto W = gaussian(m, d, 5);
    const MmcsResult r = mmcs(F.data(), G, W.data(), m, d);
    const auto ref = brute_max_cos(F, G, W, m, d);
    double mean = 0;
    for (int64_t i = 0; i < G; ++i) {
        EXPECT_NEAR(r.per_feature[size_t(i)], ref[size_t(i)], 1e-5) << i;
        mean += ref[size_t(i)] / G;
    }
    EXPECT_NEAR(r.mmcs, mean, 1e-5);
    EXPECT_LT(r.mmcs, 0.6);  // max of 100 cosines with sd 1/8 is about 0.3
    EXPECT_GT(r.mmcs, 0.0);
    std::vector<double> sorted = ref;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_NEAR(r.min, sorted.front(), 1e-5);
    EXPECT_NEAR(r.median, 0.5 * (sorted[24] + sorted[25]), 1e-5);
    // Same result through the plain-loop backend, and with many blocks of features.
    auto ref_be = backend_create("reference");
    const MmcsResult r2 = mmcs(*ref_be, F.data(), G, W.data(), m, d);
    for (int64_t i = 0; i < G; ++i) EXPECT_NEAR(r2.per_feature[size_t(i)], r.per_feature[size_t(i)], 1e-5);
}

TEST(Mmcs, InvariantToDecoderRowScalingAndZeroRowsCountAsZero) {
    const int64_t G = 12, d = 9, m = 15;
    const auto F = gaussian(G, d, 6);
    auto W = gaussian(m, d, 7);
    const MmcsResult a = mmcs(F.data(), G, W.data(), m, d);
    Rng rng(8);
    for (int64_t j = 0; j < m; ++j) {
        const float s = float(rng.uniform(1e-3, 1e3));
        for (int64_t k = 0; k < d; ++k) W[size_t(j * d + k)] *= s;
    }
    const MmcsResult b = mmcs(F.data(), G, W.data(), m, d);
    for (int64_t i = 0; i < G; ++i) {
        EXPECT_NEAR(a.per_feature[size_t(i)], b.per_feature[size_t(i)], 1e-6);
        EXPECT_EQ(a.best_row[size_t(i)], b.best_row[size_t(i)]);
    }
    // An all-zero decoder: every cosine is 0.
    std::vector<float> Z(size_t(m * d), 0.0f);
    EXPECT_EQ(mmcs(F.data(), G, Z.data(), m, d).mmcs, 0.0);
    // Bad sizes.
    EXPECT_THROW(mmcs(F.data(), 0, W.data(), m, d), Error);
    EXPECT_THROW(mmcs(F.data(), G, W.data(), 0, d), Error);
}

// --- CLI ----------------------------------------------------------------------------------

const std::string kSae = sae_test::sae_binary();

TEST(SynthCli, WritesBothFilesWithTheLibrarysValuesAndSameSeedSameBytes) {
    const std::string dir = sae_test::temp_dir("synth");
    auto r = run(kSae + " synth --out " + dir + "/a --features 20 --dim 8 --samples 1500 --seed 4");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("mean active"), std::string::npos) << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
    const Array X = npy_read(dir + "/a/data.npy");
    const Array F = npy_read(dir + "/a/features.npy");
    EXPECT_EQ(X.shape, (std::vector<int64_t>{1500, 8}));
    EXPECT_EQ(F.shape, (std::vector<int64_t>{20, 8}));
    const SynthData D = synth_generate(spec_of(20, 8, 1500, 4));
    EXPECT_EQ(X.values, D.data);
    EXPECT_EQ(F.values, D.features);

    ASSERT_EQ(run(kSae + " synth --out " + dir + "/b --features 20 --dim 8 --samples 1500 --seed 4 --threads 1").exit_code, 0);
    ASSERT_EQ(run(kSae + " synth --out " + dir + "/c --features 20 --dim 8 --samples 1500 --seed 5").exit_code, 0);
    for (const char* f : {"/data.npy", "/features.npy"}) {
        EXPECT_EQ(sae_test::read_bytes(dir + "/a" + f), sae_test::read_bytes(dir + "/b" + f)) << f;
        EXPECT_NE(sae_test::read_bytes(dir + "/a" + f), sae_test::read_bytes(dir + "/c" + f)) << f;
    }
    // Correlated and clipped options are accepted and reported.
    r = run(kSae + " synth --out " + dir + "/d --features 6 --dim 4 --samples 100 --mean-active 5.9 --correlated");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("correlated"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("clipped"), std::string::npos) << r.out;
}

TEST(SynthCli, BadArgumentsGiveOneClearLine) {
    const std::string dir = sae_test::temp_dir("synth");
    const std::string ok = " --features 10 --dim 4 --samples 50";
    sae_test::expect_clear_error(run(kSae + " synth --out " + dir + "/x --features 0 --dim 4 --samples 50"), "features");
    sae_test::expect_clear_error(run(kSae + " synth --out " + dir + "/x --features 10 --dim 0 --samples 50"), "dim");
    sae_test::expect_clear_error(run(kSae + " synth --out " + dir + "/x --features 10 --dim 4 --samples 0"), "samples");
    sae_test::expect_clear_error(run(kSae + " synth --out " + dir + "/x" + ok + " --mean-active 11"), "mean_active");
    sae_test::expect_clear_error(run(kSae + " synth --out " + dir + "/x --features 10 --dim 100000 --samples 100000"), "8 GiB");
    // Output directory below a regular file.
    sae_test::write_bytes(dir + "/file", "x");
    sae_test::expect_clear_error(run(kSae + " synth --out " + dir + "/file/sub" + ok), "file");
    EXPECT_FALSE(std::ifstream(dir + "/x/data.npy").good());
}

TEST(SynthCli, EvalGroundTruthPrintsMmcsOfTheDecoder) {
    const std::string dir = sae_test::temp_dir("synth");
    ASSERT_EQ(run(kSae + " synth --out " + dir + "/s --features 16 --dim 8 --samples 2000 --mean-active 2 --seed 2").exit_code, 0);
    const std::string train = kSae + " train --set data=" + dir +
                              "/s/data.npy --set normalize=none --set sparsity=l1 --set encoder_activation=relu "
                              "--set decoder_activation=linear --set d_sae=24 --set optimizer=adam --set lr=0.01 "
                              "--set batch_size=64 --set epochs=3 --set seed=1 --set threads=1 --out ";
    auto t = run(train + dir + "/m");
    ASSERT_EQ(t.exit_code, 0) << t.err;
    auto r = run(kSae + " eval --model " + dir + "/m --ground-truth " + dir + "/s/features.npy");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    ASSERT_TRUE(j.contains("mmcs")) << r.out;
    const double v = j["mmcs"].get<double>();
    EXPECT_GE(v, -1.0);
    EXPECT_LE(v, 1.0);
    EXPECT_EQ(j["ground_truth_features"].get<int64_t>(), 16);
    EXPECT_LE(j["mmcs_min"].get<double>(), v);
    EXPECT_GE(j["mmcs_frac_above_0.9"].get<double>(), 0.0);
    EXPECT_TRUE(j.contains("fvu"));  // the usual metrics are still there

    // Independently: brute-force cosines against the saved W_dec.
    const SafeTensors st = safetensors_read(dir + "/m/model.safetensors");
    const auto& W = st.tensors.at("W_dec");
    ASSERT_EQ(W.shape, (std::vector<int64_t>{24, 8}));
    const Array F = npy_read(dir + "/s/features.npy");
    const auto ref = brute_max_cos(F.values, 16, W.f32, 24, 8);
    EXPECT_NEAR(v, std::accumulate(ref.begin(), ref.end(), 0.0) / 16, 1e-5);
    EXPECT_NEAR(j["mmcs_min"].get<double>(), *std::min_element(ref.begin(), ref.end()), 1e-5);

    // Tied weights: W_dec = W_encᵀ.
    ASSERT_EQ(run(train + dir + "/tied --set tied=true").exit_code, 0);
    r = run(kSae + " eval --model " + dir + "/tied --ground-truth " + dir + "/s/features.npy");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const SafeTensors st2 = safetensors_read(dir + "/tied/model.safetensors");
    const auto& We = st2.tensors.at("W_enc");  // [8, 24]
    std::vector<float> Wt(24 * 8);
    for (int64_t k = 0; k < 8; ++k)
        for (int64_t jj = 0; jj < 24; ++jj) Wt[size_t(jj * 8 + k)] = We.f32[size_t(k * 24 + jj)];
    const auto ref2 = brute_max_cos(F.values, 16, Wt, 24, 8);
    EXPECT_NEAR(nlohmann::json::parse(r.out)["mmcs"].get<double>(), std::accumulate(ref2.begin(), ref2.end(), 0.0) / 16,
                1e-5);

    // Ground truth of the wrong dimension, or not 2-d: clear errors.
    std::vector<float> G7(16 * 7, 0.5f);
    npy_write_f32(dir + "/g7.npy", G7.data(), {16, 7});
    sae_test::expect_clear_error(run(kSae + " eval --model " + dir + "/m --ground-truth " + dir + "/g7.npy"), "d_in = 8");
    npy_write_f32(dir + "/g1.npy", G7.data(), {16 * 7});
    sae_test::expect_clear_error(run(kSae + " eval --model " + dir + "/m --ground-truth " + dir + "/g1.npy"), "2-d");
    sae_test::expect_clear_error(run(kSae + " eval --model " + dir + "/m --ground-truth " + dir + "/none.npy"), "none.npy");
}

}  // namespace
