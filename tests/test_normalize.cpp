// A saved model is self-contained: input normalisation is fitted once on the training data,
// saved in cfg.json and applied as saved, so a sample's codes never depend on the file it sits
// in. Checked for every `normalize` mode and architecture through the CLI, against a reader that
// follows docs/formats.md alone, and for models saved before the statistics were stored.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "sae/data.hpp"
#include "sae/io.hpp"
#include "sae/modern.hpp"
#include "sae/rng.hpp"
#include "test_util.hpp"

using namespace sae;
using sae_test::run;
namespace fs = std::filesystem;

namespace {

const std::string kSae = sae_test::sae_binary();

// n rows of d floats with an offset and a spread that differ per feature, so min/max and the
// standard deviation of a file's first rows differ from the whole file's.
std::vector<float> offset_data(int64_t n, int64_t d, uint64_t seed) {
    Rng rng(seed);
    std::vector<float> X(size_t(n * d));
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < d; ++j) X[size_t(i * d + j)] = float(0.3 * j - 1.0 + (0.5 + 0.1 * j) * rng.normal());
    return X;
}

std::string encode_cmd(const std::string& model, const std::string& data, const std::string& out) {
    return kSae + " encode --model " + model + " --data " + data + " --out " + out;
}

struct Case {
    std::string arch, normalize;
};

class SelfContained : public ::testing::TestWithParam<Case> {};

// Train on a file, then encode it and a file holding only some of its rows (the first 10, and
// rows 5..24 shifted by a constant elsewhere): the shared rows get the same bits; the codes also
// match the documented reader, and `sae eval` on the small file agrees with its own encode.
TEST_P(SelfContained, SameRowsSameCodesInAnyFile) {
    const Case c = GetParam();
    const std::string dir = sae_test::temp_dir("selfc");
    const int64_t n = 400, d = 12;
    const std::vector<float> X = offset_data(n, d, 3);
    npy_write_f32(dir + "/all.npy", X.data(), {n, d});
    npy_write_f32(dir + "/first10.npy", X.data(), {10, d});
    // Rows 5..24, then 30 rows with values far outside the training range.
    std::vector<float> mixed(X.begin() + 5 * d, X.begin() + 25 * d);
    for (int64_t i = 0; i < 30 * d; ++i) mixed.push_back(float(50.0 + i));
    npy_write_f32(dir + "/mixed.npy", mixed.data(), {50, d});

    const std::string model = dir + "/m";
    auto r = run(kSae + " train --set data=" + dir + "/all.npy --set architecture=" + c.arch +
                 " --set normalize=" + c.normalize +
                 " --set d_sae=10 --set k=3 --set optimizer=adam --set lr=0.003 --set batch_size=64 --set epochs=2"
                 " --set seed=1 --set threads=1 --set l1_coefficient=0.01 --out " + model);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto cfg = nlohmann::json::parse(sae_test::read_bytes(model + "/cfg.json"));
    const std::string applied = c.normalize == "auto" ? (c.arch == "classic" ? "unit_range" : "none") : c.normalize;
    EXPECT_EQ(cfg["normalize"], applied);
    ASSERT_TRUE(cfg.contains("normalize_stats"));
    if (applied == "unit_range") {  // the training file's own min and max
        EXPECT_EQ(cfg["normalize_stats"]["min"].get<double>(), double(*std::min_element(X.begin(), X.end())));
        EXPECT_EQ(cfg["normalize_stats"]["max"].get<double>(), double(*std::max_element(X.begin(), X.end())));
    }
    if (applied == "ufldl") EXPECT_GT(cfg["normalize_stats"]["clip"].get<double>(), 0.0);

    for (const char* f : {"all", "first10", "mixed"})
        ASSERT_EQ(run(encode_cmd(model, dir + "/" + f + ".npy", dir + "/h_" + f + ".npy")).exit_code, 0) << f;
    const Array H = npy_read(dir + "/h_all.npy"), H10 = npy_read(dir + "/h_first10.npy"), Hm = npy_read(dir + "/h_mixed.npy");
    ASSERT_EQ(H.shape, (std::vector<int64_t>{n, 10}));
    for (int64_t q = 0; q < 10 * 10; ++q) ASSERT_EQ(H10.values[size_t(q)], H.values[size_t(q)]) << q;
    for (int64_t q = 0; q < 20 * 10; ++q) ASSERT_EQ(Hm.values[size_t(q)], H.values[size_t(50 + q)]) << q;

    const SafeTensors st = safetensors_read(model + "/model.safetensors");
    for (int64_t i : {0, 7, 399}) {
        const std::vector<double> h = sae_test::documented_encode(st, cfg, X.data() + i * d);
        for (int64_t q = 0; q < 10; ++q) EXPECT_NEAR(H.values[size_t(i * 10 + q)], h[size_t(q)], 2e-5) << i << "," << q;
    }

    // eval of the first rows alone: the same codes, so the same L0 as computed from them.
    auto e = run(kSae + " eval --model " + model + " --data " + dir + "/first10.npy");
    ASSERT_EQ(e.exit_code, 0) << e.err;
    if (c.arch != "classic") {
        double l0 = 0;
        for (int64_t q = 0; q < 10 * 10; ++q) l0 += H10.values[size_t(q)] > 0;
        EXPECT_DOUBLE_EQ(nlohmann::json::parse(e.out)["l0"].get<double>(), l0 / 10);
    }
}

std::vector<Case> cases() {
    std::vector<Case> v;
    std::vector<std::string> archs = {"classic"};
    for (const ArchInfo& a : arch_table()) archs.push_back(a.name);  // every modern row
    for (const std::string& a : archs)
        for (const char* m : {"auto", "none", "unit_range", "ufldl"}) v.push_back({a, m});
    return v;
}

INSTANTIATE_TEST_SUITE_P(EveryModeAndArchitecture, SelfContained, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.arch + "_" + info.param.normalize; });

// Drops "normalize_stats" from a model's cfg.json, as models saved before it existed lack it.
void strip_stats(const std::string& model) {
    auto cfg = nlohmann::ordered_json::parse(sae_test::read_bytes(model + "/cfg.json"));
    ASSERT_TRUE(cfg.contains("normalize_stats"));
    cfg.erase("normalize_stats");
    sae_test::write_bytes(model + "/cfg.json", cfg.dump(2));
}

// A float model saved without its statistics is refused with one line naming the fix; `sae
// upgrade` fits them on the training data and the model then encodes as it did when trained.
TEST(LegacyModels, FloatDataWithoutStatisticsIsRefusedThenUpgraded) {
    for (const std::string mode : {"unit_range", "ufldl"}) {
        const std::string dir = sae_test::temp_dir("legacy");
        const std::vector<float> X = offset_data(200, 8, 5);
        npy_write_f32(dir + "/x.npy", X.data(), {200, 8});
        npy_write_f32(dir + "/x5.npy", X.data(), {5, 8});
        const std::string model = dir + "/m";
        ASSERT_EQ(run(kSae + " train --set data=" + dir + "/x.npy --set normalize=" + mode +
                      " --set d_sae=6 --set max_iterations=5 --set threads=1 --out " + model).exit_code, 0);
        ASSERT_EQ(run(encode_cmd(model, dir + "/x.npy", dir + "/before.npy")).exit_code, 0);
        const std::string saved = sae_test::read_bytes(model + "/cfg.json");
        strip_stats(model);

        for (const std::string sub : {"encode --out " + dir + "/h.npy", std::string("eval")}) {
            auto r = run(kSae + " " + sub + " --model " + model + " --data " + dir + "/x5.npy");
            sae_test::expect_clear_error(r, "saved without its normalisation statistics");
            EXPECT_NE(r.err.find("sae upgrade --model"), std::string::npos) << r.err;
            EXPECT_NE(r.err.find(model + "/cfg.json"), std::string::npos) << r.err;
        }
        EXPECT_FALSE(fs::exists(dir + "/h.npy"));

        auto u = run(kSae + " upgrade --model " + model);
        ASSERT_EQ(u.exit_code, 0) << u.err;
        EXPECT_NE(u.out.find("fitted on the training data"), std::string::npos) << u.out;
        // The same statistics as training fitted, so the same cfg.json and the same codes.
        EXPECT_EQ(nlohmann::json::parse(sae_test::read_bytes(model + "/cfg.json"))["normalize_stats"],
                  nlohmann::json::parse(saved)["normalize_stats"]);
        ASSERT_EQ(run(encode_cmd(model, dir + "/x.npy", dir + "/after.npy")).exit_code, 0);
        EXPECT_EQ(sae_test::read_bytes(dir + "/after.npy"), sae_test::read_bytes(dir + "/before.npy")) << mode;
        auto again = run(kSae + " upgrade --model " + model);
        ASSERT_EQ(again.exit_code, 0);
        EXPECT_NE(again.out.find("nothing to do"), std::string::npos) << again.out;
    }
}

// uint8 data under unit_range was always x / 255, whatever the file: such a model is read as it
// was meant, with no upgrade, and encodes as it did.
TEST(LegacyModels, Uint8UnitRangeIsReadAsMeant) {
    const std::string dir = sae_test::temp_dir("legacy8");
    Rng rng(2);
    std::vector<uint8_t> px(size_t(60 * 16));
    for (auto& p : px) p = uint8_t(rng.below(200));
    idx_write_u8(dir + "/x.idx", px.data(), {60, 4, 4}, false);
    idx_write_u8(dir + "/x3.idx", px.data(), {3, 4, 4}, false);
    const std::string model = dir + "/m";
    ASSERT_EQ(run(kSae + " train --set data=" + dir + "/x.idx --set d_sae=5 --set max_iterations=5 --set threads=1 --out " + model).exit_code, 0);
    const auto cfg = nlohmann::json::parse(sae_test::read_bytes(model + "/cfg.json"));
    EXPECT_EQ(cfg["normalize"], "unit_range");
    EXPECT_EQ(cfg["normalize_stats"]["min"], 0.0);
    EXPECT_EQ(cfg["normalize_stats"]["max"], 255.0);  // not the data's 199
    ASSERT_EQ(run(encode_cmd(model, dir + "/x3.idx", dir + "/before.npy")).exit_code, 0);
    strip_stats(model);
    auto r = run(encode_cmd(model, dir + "/x3.idx", dir + "/after.npy"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(sae_test::read_bytes(dir + "/after.npy"), sae_test::read_bytes(dir + "/before.npy"));
}

// Damaged statistics: one line naming cfg.json.
TEST(LegacyModels, MalformedStatisticsAreRefused) {
    const std::string dir = sae_test::temp_dir("badstats");
    const std::vector<float> X = offset_data(50, 4, 1);
    npy_write_f32(dir + "/x.npy", X.data(), {50, 4});
    const std::string model = dir + "/m";
    ASSERT_EQ(run(kSae + " train --set data=" + dir + "/x.npy --set normalize=unit_range --set d_sae=3 --set max_iterations=2 --set threads=1 --out " + model).exit_code, 0);
    const auto good = nlohmann::ordered_json::parse(sae_test::read_bytes(model + "/cfg.json"));
    for (const char* bad : {R"({"min": 1})", R"({"min": 2, "max": 1})", R"({"min": "a", "max": 1})", R"([])"}) {
        auto cfg = good;
        cfg["normalize_stats"] = nlohmann::ordered_json::parse(bad);
        sae_test::write_bytes(model + "/cfg.json", cfg.dump(2));
        auto r = run(encode_cmd(model, dir + "/x.npy", dir + "/h.npy"));
        sae_test::expect_clear_error(r, model + "/cfg.json: normalize_stats");
    }
}

// The library's fit and apply against hand-worked values.
TEST(Normalizer, FitAndApplyByHand) {
    Matrix<float> X(2, 3);
    X.data = {2, 4, 6, 10, 0, 8};
    const Normalizer u = normalizer_fit(X, Normalize::unit_range, SourceType::f32);
    EXPECT_EQ(u.min, 0.0);
    EXPECT_EQ(u.max, 10.0);
    Matrix<float> one(1, 3);
    one.data = {5, 12, -10};  // outside the training range: not clipped, unit_range is affine
    normalizer_apply(u, one, SourceType::f32);
    EXPECT_EQ(one.data, (std::vector<float>{0.5f, 1.2f, -1.0f}));

    // ufldl: rows minus their means: {-2, 0, 2}, {4, -6, 2}; population std of those six values
    // (mean 0) = sqrt(64/6); clip = 3 × that.
    const Normalizer f = normalizer_fit(X, Normalize::ufldl, SourceType::f32);
    EXPECT_DOUBLE_EQ(f.clip, 3.0 * std::sqrt(64.0 / 6.0));
    Matrix<float> r(1, 3);
    r.data = {1, 1, 31};  // mean 11: y = {-10, -10, 20}; clip ≈ 9.80 clamps all three
    normalizer_apply(f, r, SourceType::f32);
    EXPECT_FLOAT_EQ(r.data[0], 0.1f);
    EXPECT_FLOAT_EQ(r.data[2], 0.9f);
    Matrix<float> s(1, 2);
    s.data = {1, 2};  // y = {-0.5, 0.5}
    normalizer_apply(f, s, SourceType::f32);
    EXPECT_FLOAT_EQ(s.data[0], float((-0.5 / f.clip + 1) * 0.4 + 0.1));

    // An unfitted normaliser refuses float data and reads uint8 as ÷ 255.
    Normalizer legacy;
    legacy.mode = Normalize::unit_range;
    legacy.fitted = false;
    legacy.origin = "m/cfg.json";
    Matrix<float> p(1, 2);
    p.data = {51, 255};
    sae_test::expect_error_line([&] { normalizer_apply(legacy, p, SourceType::f32); }, "m/cfg.json", {"sae upgrade"});
    normalizer_apply(legacy, p, SourceType::u8);
    EXPECT_EQ(p.data, (std::vector<float>{0.2f, 1.0f}));
}

}  // namespace
