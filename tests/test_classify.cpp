// Softmax regression, data selection for self-taught learning, and `sae classify` / `sae select`.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "sae/backend.hpp"
#include "sae/classify.hpp"
#include "sae/data.hpp"
#include "sae/error.hpp"
#include "sae/io.hpp"
#include "sae/rng.hpp"
#include "test_util.hpp"

using namespace sae;

namespace {

// Random features [m, d] in ±1 and labels in [0, K).
void random_problem(int64_t m, int64_t d, int64_t K, uint64_t seed, std::vector<double>& X, std::vector<int32_t>& y) {
    Rng rng(seed);
    X.resize(size_t(m * d));
    for (auto& v : X) v = rng.uniform(-1, 1);
    y.resize(size_t(m));
    for (auto& v : y) v = int32_t(rng.below(uint64_t(K)));
}

TEST(Softmax, GradientMatchesCentralDifferences) {
    for (const std::string bname : {"reference", "onednn"})
        for (bool bias : {false, true})
            for (double lambda : {0.0, 0.3}) {
                auto be = backend_create(bname);
                const SoftmaxSpec s{4, 5, bias, lambda};
                const int64_t m = 9, n = softmax_param_count(s);
                ASSERT_EQ(n, 4 * 5 + (bias ? 4 : 0));
                std::vector<double> X;
                std::vector<int32_t> y;
                random_problem(m, s.d, s.n_classes, 11, X, y);
                std::vector<double> p(static_cast<size_t>(n)), g(static_cast<size_t>(n));
                Rng rng(5);
                for (auto& v : p) v = rng.uniform(-1.5, 1.5);
                SoftmaxWorkspace ws;
                softmax_cost(*be, s, p.data(), X.data(), y.data(), m, g.data(), ws);
                double num2 = 0, diff2 = 0;
                const double eps = 1e-5;
                for (int64_t j = 0; j < n; ++j) {
                    const double keep = p[size_t(j)];
                    p[size_t(j)] = keep + eps;
                    const double fp = softmax_cost(*be, s, p.data(), X.data(), y.data(), m, nullptr, ws);
                    p[size_t(j)] = keep - eps;
                    const double fm = softmax_cost(*be, s, p.data(), X.data(), y.data(), m, nullptr, ws);
                    p[size_t(j)] = keep;
                    const double num = (fp - fm) / (2 * eps);
                    diff2 += (num - g[size_t(j)]) * (num - g[size_t(j)]);
                    num2 += (num + g[size_t(j)]) * (num + g[size_t(j)]);
                }
                EXPECT_LT(std::sqrt(diff2 / num2), 1e-9) << bname << " bias " << bias << " lambda " << lambda;
            }
}

TEST(Softmax, CostByHand) {
    auto be = backend_create("reference");
    SoftmaxWorkspace ws;
    // K = 2, d = 1, no bias, θ = [1, −1], λ = 0.5; samples x = 1 (class 0) and x = 2 (class 1):
    //   z = [1, −1] → −log p0 = log(1 + e^−2);  z = [2, −2] → −log p1 = log(1 + e^4)
    //   J = ½(log(1 + e^−2) + log(1 + e^4)) + (0.5/2)·(1 + 1)
    {
        const SoftmaxSpec s{2, 1, false, 0.5};
        const double theta[2] = {1, -1}, X[2] = {1, 2};
        const int32_t y[2] = {0, 1};
        const double expect = 0.5 * (std::log(1 + std::exp(-2.0)) + std::log(1 + std::exp(4.0))) + 0.5;
        EXPECT_NEAR(softmax_cost(*be, s, theta, X, y, 2, nullptr, ws), expect, 1e-14);
        // ∂J/∂θ0 = ½·Σ (p0 − [y=0])·x + λθ0, p0 = σ(2x·θ0 ... ) computed by hand:
        const double p0a = 1 / (1 + std::exp(-2.0)), p0b = 1 / (1 + std::exp(-4.0));
        double g[2];
        softmax_cost(*be, s, theta, X, y, 2, g, ws);
        EXPECT_NEAR(g[0], 0.5 * ((p0a - 1) * 1 + p0b * 2) + 0.5 * 1, 1e-14);
        EXPECT_NEAR(g[1], 0.5 * ((1 - p0a - 0) * 1 + (1 - p0b - 1) * 2) + 0.5 * -1, 1e-14);
    }
    // Zero parameters: every class has probability 1/K, J = log K whatever the data.
    {
        const SoftmaxSpec s{5, 3, true, 1.0};
        std::vector<double> p(size_t(softmax_param_count(s)), 0.0), X;
        std::vector<int32_t> y;
        random_problem(7, 3, 5, 2, X, y);
        EXPECT_NEAR(softmax_cost(*be, s, p.data(), X.data(), y.data(), 7, nullptr, ws), std::log(5.0), 1e-14);
    }
    // With bias, K = 3, d = 1, θ = 0, b = [0, log 2, log 5]: p = [1, 2, 5]/8; λ does not touch b.
    {
        const SoftmaxSpec s{3, 1, true, 10.0};
        const double p[6] = {0, 0, 0, 0, std::log(2.0), std::log(5.0)}, X[3] = {3, -1, 7};
        const int32_t y[3] = {0, 1, 2};
        const double expect = (std::log(8.0) + std::log(4.0) + std::log(8.0 / 5)) / 3;
        EXPECT_NEAR(softmax_cost(*be, s, p, X, y, 3, nullptr, ws), expect, 1e-14);
        std::vector<double> P(9);
        softmax_probabilities(*be, s, p, X, 3, P.data());
        EXPECT_NEAR(P[3 + 2], 5.0 / 8, 1e-15);
    }
    // Huge logits stay finite (the row max is subtracted): z = [1000, 0], class 1 → −log p1 = 1000.
    {
        const SoftmaxSpec s{2, 1, false, 0.0};
        const double theta[2] = {1000, 0}, X[1] = {1};
        const int32_t y[1] = {1};
        EXPECT_NEAR(softmax_cost(*be, s, theta, X, y, 1, nullptr, ws), 1000.0, 1e-9);
    }
    // A label outside [0, K) is an error, not a wild read.
    {
        const SoftmaxSpec s{2, 1, false, 0.0};
        const double theta[2] = {0, 0}, X[1] = {1};
        const int32_t y[1] = {2};
        EXPECT_THROW(softmax_cost(*be, s, theta, X, y, 1, nullptr, ws), Error);
    }
}

TEST(Softmax, SeparableProblemReaches100Percent) {
    // Three well-separated blobs in 2-d plus a constant-free layout: needs the bias too.
    auto be = backend_create("onednn");
    Rng rng(9);
    const int64_t m = 300;
    Matrix<double> X(m, 2);
    std::vector<int32_t> y(static_cast<size_t>(m));
    const double cx[3] = {3, -3, 0}, cy[3] = {0, 0, 4};
    for (int64_t i = 0; i < m; ++i) {
        const int32_t c = int32_t(i % 3);
        y[size_t(i)] = c;
        X(i, 0) = 5 + cx[c] + rng.uniform(-1, 1);
        X(i, 1) = cy[c] + rng.uniform(-1, 1);
    }
    const SoftmaxSpec s{3, 2, true, 1e-4};
    SoftmaxTrainOptions opt;
    opt.max_iterations = 200;
    const SoftmaxFit fit = softmax_train(*be, s, X, y, opt, 1);
    EXPECT_EQ(accuracy(softmax_predict(*be, s, fit.params.data(), X), y), 1.0);
    EXPECT_LT(fit.cost, 0.1);
    // Deterministic for a seed.
    const SoftmaxFit again = softmax_train(*be, s, X, y, opt, 1);
    EXPECT_EQ(again.params, fit.params);
}

TEST(Softmax, ConvergesToKnownOptimum) {
    // Features all zero: θ only pays weight decay (optimum θ = 0) and the bias must make the
    // probabilities the class frequencies: counts 1, 2, 5 → p = (1/8, 2/8, 5/8).
    auto be = backend_create("onednn");
    const SoftmaxSpec s{3, 4, true, 0.1};
    Matrix<double> X(8, 4);  // zeros
    const std::vector<int32_t> y = {2, 1, 2, 0, 2, 1, 2, 2};
    SoftmaxTrainOptions opt;
    opt.lbfgs.grad_tol = 1e-12;
    const SoftmaxFit fit = softmax_train(*be, s, X, y, opt, 3);
    for (int64_t j = 0; j < 12; ++j) EXPECT_NEAR(fit.params[size_t(j)], 0.0, 1e-7);
    std::vector<double> P(3);
    softmax_probabilities(*be, s, fit.params.data(), X.data.data(), 1, P.data());
    EXPECT_NEAR(P[0], 1.0 / 8, 1e-7);
    EXPECT_NEAR(P[1], 2.0 / 8, 1e-7);
    EXPECT_NEAR(P[2], 5.0 / 8, 1e-7);
    EXPECT_NEAR(fit.cost, -(1 * std::log(1.0 / 8) + 2 * std::log(2.0 / 8) + 5 * std::log(5.0 / 8)) / 8, 1e-12);

    // K = 2, d = 1, no bias, every x = 1, one sample of class 0 and three of class 1, λ = 1.
    // ∂J/∂θ0 + ∂J/∂θ1 = (p0 + p1 − 1) + θ0 + θ1 = θ0 + θ1, so the optimum is θ = (−t, t), and
    // ∂J/∂θ1 = (p1 − 3/4) + t = 0 with p1 = σ(2t).
    const SoftmaxSpec s2{2, 1, false, 1.0};
    Matrix<double> X2(4, 1);
    std::fill(X2.data.begin(), X2.data.end(), 1.0);
    const std::vector<int32_t> y2 = {0, 1, 1, 1};
    const SoftmaxFit f2 = softmax_train(*be, s2, X2, y2, opt, 4);
    EXPECT_NEAR(f2.params[0], -f2.params[1], 1e-8);
    const double t = f2.params[1];
    EXPECT_NEAR(1 / (1 + std::exp(-2 * t)) - 0.75 + t, 0.0, 1e-8);
    EXPECT_GT(t, 0.0);
}

TEST(Softmax, AccuracyAndConfusionByHand) {
    const std::vector<int32_t> truth = {0, 0, 0, 1, 1, 2, 2, 2, 2};
    const std::vector<int32_t> pred = {0, 1, 0, 1, 1, 2, 0, 2, 1};
    EXPECT_DOUBLE_EQ(accuracy(pred, truth), 6.0 / 9);
    const Matrix<int64_t> C = confusion_matrix(pred, truth, 3);
    const std::vector<int64_t> expect = {2, 1, 0,  //
                                         0, 2, 0,  //
                                         1, 1, 2};
    EXPECT_EQ(C.data, expect);
    EXPECT_THROW(confusion_matrix({0, 3}, {0, 1}, 3), Error);
    EXPECT_THROW(accuracy({0}, {0, 1}), Error);
}

TEST(Selection, ClassSpecParsing) {
    EXPECT_EQ(class_spec_parse("0-4"), (std::vector<int32_t>{0, 1, 2, 3, 4}));
    EXPECT_EQ(class_spec_parse("5-9"), (std::vector<int32_t>{5, 6, 7, 8, 9}));
    EXPECT_EQ(class_spec_parse("7,1,3"), (std::vector<int32_t>{1, 3, 7}));
    EXPECT_EQ(class_spec_parse("0-2, 8,2"), (std::vector<int32_t>{0, 1, 2, 8}));
    EXPECT_EQ(class_spec_parse("3"), (std::vector<int32_t>{3}));
    EXPECT_EQ(class_spec_text({0, 1, 2, 3, 4}), "0-4");
    EXPECT_EQ(class_spec_text({0, 1, 2, 8}), "0-2,8");
    for (const char* bad : {"0-x", "4-2", "", "1,,2", "-3", "a", "1-", "1.5", "99999999999"}) {
        try {
            class_spec_parse(bad);
            ADD_FAILURE() << "accepted '" << bad << "'";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("class list"), std::string::npos) << e.what();
            EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
        }
    }
}

TEST(Selection, FilterRemapSplit) {
    const std::vector<int32_t> labels = {5, 0, 9, 3, 5, 1, 7, 0, 2, 4, 8, 6, 1, 3, 9, 4, 2, 0, 6, 8};
    const std::vector<int32_t> low = class_spec_parse("0-4"), high = class_spec_parse("5-9");
    const auto a = select_by_labels(labels, low), b = select_by_labels(labels, high);
    EXPECT_EQ(a.size() + b.size(), labels.size());
    for (int64_t i : a) EXPECT_LE(labels[size_t(i)], 4);
    for (int64_t i : b) EXPECT_GE(labels[size_t(i)], 5);
    EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
    const auto r = remap_labels(labels, b, high);
    for (size_t i = 0; i < b.size(); ++i) EXPECT_EQ(r[i], labels[size_t(b[i])] - 5);
    EXPECT_THROW(select_by_labels(labels, {0, 11}), Error);  // class 11 has no sample
    EXPECT_THROW(remap_labels(labels, {0}, low), Error);     // label 5 is not in 0-4

    // Split: disjoint, complete, sorted, the requested size, the same for the same seed.
    std::vector<int64_t> idx(1001);
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = int64_t(3 * i + 1);
    const Split s1 = split_indices(idx, 0.5, 7), s2 = split_indices(idx, 0.5, 7), s3 = split_indices(idx, 0.5, 8);
    EXPECT_EQ(s1.train, s2.train);
    EXPECT_EQ(s1.test, s2.test);
    EXPECT_NE(s1.train, s3.train);
    EXPECT_EQ(s1.train.size(), 501u);  // round(500.5) = 501
    EXPECT_EQ(s1.test.size(), 500u);
    std::vector<int64_t> all = s1.train;
    all.insert(all.end(), s1.test.begin(), s1.test.end());
    std::sort(all.begin(), all.end());
    EXPECT_EQ(all, idx);  // disjoint and together the input
    EXPECT_TRUE(std::is_sorted(s1.train.begin(), s1.train.end()));
    // Not simply the first half.
    EXPECT_NE(s1.train, std::vector<int64_t>(idx.begin(), idx.begin() + 501));
    EXPECT_THROW(split_indices(idx, 0.0, 1), Error);
    EXPECT_THROW(split_indices(idx, 1.0, 1), Error);
    EXPECT_THROW(split_indices({4}, 0.5, 1), Error);  // one sample cannot be split

    Matrix<float> X(4, 2);
    for (int64_t i = 0; i < 8; ++i) X.data[size_t(i)] = float(i);
    const Matrix<float> T = take_rows(X, {2, 0});
    EXPECT_EQ(T.data, (std::vector<float>{4, 5, 0, 1}));
}

TEST(Selection, U8NpyRoundTripAndLabels) {
    const std::string dir = sae_test::temp_dir("classify");
    std::vector<uint8_t> v = {0, 255, 7, 128, 1, 2};
    npy_write_u8(dir + "/a.npy", v.data(), {2, 3});
    const Array a = npy_read(dir + "/a.npy");
    EXPECT_EQ(a.source, SourceType::u8);
    EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(a.values, (std::vector<float>{0, 255, 7, 128, 1, 2}));
    npy_write_u8(dir + "/l.npy", v.data(), {6});
    EXPECT_EQ(labels_load(dir + "/l.npy"), (std::vector<int32_t>{0, 255, 7, 128, 1, 2}));
    EXPECT_THROW(labels_load(dir + "/a.npy"), Error);  // 2-d [2, 3]
    const float f[2] = {1.0f, 2.5f};
    npy_write_f32(dir + "/f.npy", f, {2});
    EXPECT_THROW(labels_load(dir + "/f.npy"), Error);  // not an integer
}

// --- CLI ----------------------------------------------------------------------------------

const std::string kSae = sae_test::sae_binary();

// A tiny image set: n images 4×4 uint8 of 4 classes; class c lights pixels 4c..4c+3 (plus
// noise), so the classes are linearly separable in raw pixels.
void make_images(const std::string& dir, int64_t n, int64_t side = 4) {
    Rng rng(21);
    const int64_t d = side * side;
    std::vector<uint8_t> img(size_t(n * d)), lab(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        const int32_t c = int32_t(rng.below(4));
        lab[size_t(i)] = uint8_t(c);
        for (int64_t k = 0; k < d; ++k)
            img[size_t(i * d + k)] = uint8_t((k / (d / 4) == c ? 180 : 20) + rng.below(60));
    }
    idx_write_u8(dir + "/images.idx", img.data(), {n, side, side}, false);
    idx_write_u8(dir + "/labels.idx.gz", lab.data(), {n}, true);
}

TEST(ClassifyCli, SelectTrainClassify) {
    const std::string dir = sae_test::temp_dir("classify");
    make_images(dir, 240);
    const std::string images = dir + "/images.idx", labels = dir + "/labels.idx.gz";

    // Select classes 2-3 (uint8 stays uint8, shape kept) and train a tiny model on them.
    auto r = sae_test::run(kSae + " select --data " + images + " --labels " + labels + " --classes 2-3 --out " + dir +
                           "/sel.npy --labels-out " + dir + "/sel_labels.npy");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const Array sel = npy_read(dir + "/sel.npy");
    const Array all = idx_read(images);
    const std::vector<int32_t> L = labels_load(labels), SL = labels_load(dir + "/sel_labels.npy");
    EXPECT_EQ(sel.source, SourceType::u8);
    ASSERT_EQ(sel.shape.size(), 3u);
    EXPECT_EQ(sel.shape[1], 4);
    int64_t j = 0;
    for (int64_t i = 0; i < 240; ++i)
        if (L[size_t(i)] >= 2) {
            ASSERT_LT(j, sel.shape[0]);
            EXPECT_EQ(SL[size_t(j)], L[size_t(i)]);
            EXPECT_TRUE(std::equal(all.values.begin() + i * 16, all.values.begin() + (i + 1) * 16,
                                   sel.values.begin() + j * 16));
            ++j;
        }
    EXPECT_EQ(j, sel.shape[0]);

    r = sae_test::run(kSae + " train --set data=" + dir + "/sel.npy --set d_sae=6 --set max_iterations=20 "
                             "--set threads=1 --out " + dir + "/m");
    ASSERT_EQ(r.exit_code, 0) << r.err;

    const std::string common = " --data " + images + " --labels " + labels + " --threads 1";
    r = sae_test::run(kSae + " classify" + common + " --classes 0-1 --model " + dir + "/m --out " + dir + "/cls");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto jm = nlohmann::json::parse(r.out);
    EXPECT_EQ(jm["features"], "classic");
    EXPECT_EQ(jm["d_features"], 6);
    int64_t n01 = 0;
    for (int32_t l : L) n01 += l <= 1;
    EXPECT_EQ(jm["n_train"].get<int64_t>() + jm["n_test"].get<int64_t>(), n01);
    EXPECT_NEAR(double(jm["n_train"].get<int64_t>()), 0.5 * double(n01), 0.51);
    int64_t conf_total = 0;
    for (const auto& row : jm["confusion"]) {
        ASSERT_EQ(row.size(), 2u);
        for (const auto& c : row) conf_total += c.get<int64_t>();
    }
    EXPECT_EQ(conf_total, jm["n_test"].get<int64_t>());
    for (const char* k : {"accuracy_train", "accuracy_test"}) {
        EXPECT_GE(jm[k].get<double>(), 0.0);
        EXPECT_LE(jm[k].get<double>(), 1.0);
    }
    EXPECT_EQ(nlohmann::json::parse(sae_test::read_bytes(dir + "/cls/classify.json")), jm);
    const std::string csv = sae_test::read_bytes(dir + "/cls/confusion.csv");
    EXPECT_EQ(csv.rfind("true\\predicted,0,1\n0,", 0), 0u) << csv;
    EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 3);

    // Raw pixels: the classes are separable, so both accuracies are 1; same seed, same output.
    r = sae_test::run(kSae + " classify" + common + " --raw --classes 0-3 --seed 4");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto jr = nlohmann::json::parse(r.out);
    EXPECT_EQ(jr["features"], "raw");
    EXPECT_EQ(jr["d_features"], 16);
    EXPECT_EQ(jr["accuracy_train"].get<double>(), 1.0);
    EXPECT_EQ(jr["accuracy_test"].get<double>(), 1.0);
    EXPECT_EQ(jr["confusion"].size(), 4u);
    auto r2 = sae_test::run(kSae + " classify" + common + " --raw --classes 0-3 --seed 4");
    auto a = nlohmann::json::parse(r2.out), b = jr;
    a.erase("seconds");
    b.erase("seconds");
    EXPECT_EQ(a, b);
}

TEST(ClassifyCli, BadInputGivesOneClearLine) {
    const std::string dir = sae_test::temp_dir("classify");
    make_images(dir, 60);
    const std::string images = dir + "/images.idx", labels = dir + "/labels.idx.gz";
    const std::string base = kSae + " classify --data " + images + " --threads 1";

    // Labels of another size.
    std::vector<uint8_t> few(50, 1);
    idx_write_u8(dir + "/few.idx", few.data(), {50}, false);
    sae_test::expect_clear_error(sae_test::run(base + " --labels " + dir + "/few.idx --raw --classes 0-1"), "50 labels");
    sae_test::expect_clear_error(sae_test::run(kSae + " select --data " + images + " --labels " + dir +
                                     "/few.idx --classes 0-1 --out " + dir + "/s.npy"),
                       "50 labels");
    // Malformed class list; a class with no samples; one class; a bad fraction.
    sae_test::expect_clear_error(sae_test::run(base + " --labels " + labels + " --raw --classes 0-x"), "'x'");
    sae_test::expect_clear_error(sae_test::run(base + " --labels " + labels + " --raw --classes 0-1,7"), "class 7 has no samples");
    sae_test::expect_clear_error(sae_test::run(base + " --labels " + labels + " --raw --classes 2"), "at least 2");
    sae_test::expect_clear_error(sae_test::run(base + " --labels " + labels + " --raw --classes 0-1 --train-fraction 1.5"),
                       "--train-fraction");
    // Neither or both of --model / --raw.
    sae_test::expect_clear_error(sae_test::run(base + " --labels " + labels + " --classes 0-1"), "--raw");
    // A model whose d_in differs from the data's.
    std::vector<float> Y(30 * 9, 0.5f);
    for (size_t i = 0; i < Y.size(); ++i) Y[i] = float(i % 7) / 7;
    npy_write_f32(dir + "/y.npy", Y.data(), {30, 9});
    ASSERT_EQ(sae_test::run(kSae + " train --set data=" + dir + "/y.npy --set d_sae=3 --set max_iterations=2 "
                                   "--set threads=1 --out " + dir + "/m9")
                  .exit_code,
              0);
    sae_test::expect_clear_error(sae_test::run(base + " --labels " + labels + " --model " + dir + "/m9 --classes 0-1"),
                       "d_in = 9");
    // Labels that are not class numbers.
    sae_test::expect_clear_error(sae_test::run(base + " --labels " + dir + "/y.npy --raw --classes 0-1"), "labels must be");
}

}  // namespace
