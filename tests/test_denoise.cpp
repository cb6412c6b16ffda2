// Denoising and dropout for the classic SAE: the cost reconstructs the clean x from a corrupted
// x′, plus γ·D(x, x′) with D = (1/m)·Σᵢ ½‖h(xᵢ) − h(x′ᵢ)‖². Gradients by central differences in
// double with fixed masks, the fast path against the per-sample reference, D against an
// independent computation, the masks' statistics and determinism, and the trainer end to end.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <tuple>

#include "reference/reference.hpp"
#include "sae/config.hpp"
#include "sae/io.hpp"
#include "sae/model.hpp"
#include "sae/objective.hpp"
#include "test_util.hpp"

using namespace sae;
using sae_test::run;

namespace {

enum class Noise { masking_gamma, gaussian_gamma, dropout_only, all };
std::string noise_name(Noise n) {
    switch (n) {
        case Noise::masking_gamma: return "masking_gamma";
        case Noise::gaussian_gamma: return "gaussian_gamma";
        case Noise::dropout_only: return "dropout_only";
        case Noise::all: return "all";
    }
    return "?";
}

struct Problem {
    ModelSpec spec;
    CostSpec cost;
    ParamLayout layout;
    std::vector<double> params, X, Xc, drop;  // Xc, drop empty = not used
    int64_t m;
};

Problem make_problem(ModelSpec spec, CostSpec cost, Noise noise, int64_t m, uint64_t seed) {
    Problem p{spec, cost, model_layout(spec), {}, {}, {}, {}, m};
    Rng rng(seed);
    p.params.resize(size_t(p.layout.total));
    model_init(spec, p.layout, p.params.data(), rng);
    for (const char* b : {"b_enc", "b_dec"}) {
        const auto& v = p.layout.get(b);
        for (int64_t i = 0; i < v.numel(); ++i) p.params[size_t(v.offset + i)] = rng.uniform(-0.3, 0.3);
    }
    p.X.resize(size_t(m * spec.d_in));
    for (auto& x : p.X) x = rng.uniform(0.05, 0.95);
    DenoiseSpec d;
    if (noise == Noise::masking_gamma || noise == Noise::all) d = {Corruption::masking, 0.4, 0.0};
    if (noise == Noise::gaussian_gamma) d = {Corruption::gaussian, 0.2, 0.0};
    if (noise == Noise::dropout_only || noise == Noise::all) d.dropout = 0.3;
    std::vector<double> draws(p.X.size());
    if (d.dropout > 0) p.drop.resize(size_t(m * spec.d_sae));
    draw_corruption<double>(d, m, spec.d_in, spec.d_sae, draws.data(), p.drop.empty() ? nullptr : p.drop.data(), rng);
    if (d.corruption != Corruption::none) {
        p.Xc.resize(p.X.size());
        apply_corruption<double>(d.corruption, p.X.data(), draws.data(), int64_t(p.X.size()), p.Xc.data());
    }
    return p;
}

CostTerms fast_cost(Backend& be, const Problem& p, const std::vector<double>& params, std::vector<double>* grad) {
    Workspace<double> ws;
    ws.reserve(p.spec, p.m, true);
    return model_cost<double>(be, p.spec, p.cost, p.layout, params.data(), p.X.data(), p.m,
                              grad ? grad->data() : nullptr, ws, p.Xc.empty() ? nullptr : p.Xc.data(),
                              p.drop.empty() ? nullptr : p.drop.data());
}

template <class F>
double central_difference_error(const std::vector<double>& params, const std::vector<double>& ana, F f,
                                double eps = 1e-5) {
    std::vector<double> x = params;
    double diff = 0, sum = 0;
    for (size_t i = 0; i < x.size(); ++i) {
        const double orig = x[i];
        x[i] = orig + eps;
        const double fp = f(x);
        x[i] = orig - eps;
        const double fm = f(x);
        x[i] = orig;
        const double num = (fp - fm) / (2 * eps);
        diff += (num - ana[i]) * (num - ana[i]);
        sum += (num + ana[i]) * (num + ana[i]);
    }
    return std::sqrt(diff) / std::sqrt(sum);
}

using Combo = std::tuple<Activation, Activation, bool, Sparsity, Noise>;

std::vector<Combo> combos() {
    std::vector<Combo> out;
    for (auto enc : {Activation::sigmoid, Activation::relu, Activation::tanh})
        for (auto dec : {Activation::sigmoid, Activation::linear})
            for (bool tied : {false, true})
                for (auto sp : {Sparsity::none, Sparsity::kl, Sparsity::l1})
                    for (auto noise : {Noise::masking_gamma, Noise::gaussian_gamma, Noise::dropout_only, Noise::all}) {
                        if (sp == Sparsity::kl && enc != Activation::sigmoid) continue;
                        out.emplace_back(enc, dec, tied, sp, noise);
                    }
    return out;
}

std::string combo_name(const ::testing::TestParamInfo<Combo>& info) {
    const Combo& c = info.param;
    return activation_name(std::get<0>(c)) + "_" + activation_name(std::get<1>(c)) +
           (std::get<2>(c) ? "_tied_" : "_untied_") + sparsity_name(std::get<3>(c)) + "_" + noise_name(std::get<4>(c));
}

class DenoiseGradient : public ::testing::TestWithParam<Combo> {};

// Term by term: reconstruction of the clean input alone, + γ·D, + sparsity, everything.
TEST_P(DenoiseGradient, CentralDifferencesAgreePerTerm) {
    auto [enc, dec, tied, sp, noise] = GetParam();
    auto be = backend_create("onednn");
    // Hundreds of evaluations of a 6x4 model: one thread (threads are no help at this size, and
    // on a loaded machine every parallel region costs a scheduling round). FastVsReference
    // below runs with the default thread count.
    const int threads = get_num_threads();
    set_num_threads(1);
    struct Restore {
        int n;
        ~Restore() { set_num_threads(n); }
    } restore{threads};
    ModelSpec spec{6, 4, enc, dec, tied};
    const double kl_beta = sp == Sparsity::kl ? 3.0 : 0.0, l1 = sp == Sparsity::l1 ? 0.2 : 0.0;
    CostSpec terms[] = {
        {Sparsity::none, 0.1, 0.0, 0.0, 0.0},
        {Sparsity::none, 0.1, 0.0, 0.0, 0.0},
        {sp, 0.1, kl_beta, 0.0, l1},
        {sp, 0.1, 3.0, 0.3, 0.2},
    };
    terms[1].gamma = 0.7;
    terms[3].gamma = 0.5;
    for (const auto& cost : terms) {
        Problem p = make_problem(spec, cost, noise, 7, 42);
        std::vector<double> ana(size_t(p.layout.total));
        const CostTerms J = fast_cost(*be, p, p.params, &ana);
        if (!p.Xc.empty() && cost.gamma > 0) EXPECT_GT(J.denoise, 0.0);
        else EXPECT_EQ(J.denoise, 0.0);
        const double err = central_difference_error(
            p.params, ana, [&](const std::vector<double>& x) { return fast_cost(*be, p, x, nullptr).total(); });
        EXPECT_LT(err, 1e-9) << "sparsity=" << sparsity_name(cost.sparsity) << " gamma=" << cost.gamma
                             << " wd=" << cost.weight_decay;
    }
}

INSTANTIATE_TEST_SUITE_P(AllModels, DenoiseGradient, ::testing::ValuesIn(combos()), combo_name);

// The reference's own gradient with every denoising term passes central differences too.
TEST(DenoiseReference, GradientMatchesCentralDifferences) {
    for (bool tied : {false, true})
        for (Noise noise : {Noise::masking_gamma, Noise::gaussian_gamma, Noise::all}) {
            CostSpec cost{Sparsity::kl, 0.1, 3.0, 0.01, 0.0};
            cost.gamma = 0.6;
            Problem p = make_problem({5, 3, Activation::sigmoid, Activation::sigmoid, tied}, cost, noise, 6, 7);
            auto r = reference::cost(p.spec, p.cost, p.params, p.X, p.m, true, p.Xc, p.drop);
            EXPECT_GT(r.J.denoise, 0.0);
            const double err = central_difference_error(p.params, r.grad, [&](const std::vector<double>& x) {
                return reference::cost(p.spec, p.cost, x, p.X, p.m, false, p.Xc, p.drop).J.total();
            });
            EXPECT_LT(err, 1e-9) << noise_name(noise) << " tied=" << tied;
        }
}

class DenoiseFastVsReference : public ::testing::TestWithParam<Combo> {};

TEST_P(DenoiseFastVsReference, CostAndGradientMatch) {
    auto [enc, dec, tied, sp, noise] = GetParam();
    ModelSpec spec{20, 12, enc, dec, tied};
    CostSpec cost{sp, 0.1, 3.0, 3e-3, 1e-2};
    cost.gamma = 0.4;
    Problem p = make_problem(spec, cost, noise, 33, 9);
    auto ref = reference::cost(spec, p.cost, p.params, p.X, p.m, true, p.Xc, p.drop);
    for (const char* name : {"onednn", "reference"}) {
        auto be = backend_create(name);
        std::vector<double> g64(size_t(p.layout.total));
        const CostTerms J64 = fast_cost(*be, p, p.params, &g64);
        EXPECT_NEAR(J64.rec, ref.J.rec, 1e-12);
        EXPECT_NEAR(J64.weight_decay, ref.J.weight_decay, 1e-12);
        EXPECT_NEAR(J64.sparsity, ref.J.sparsity, 1e-12);
        EXPECT_NEAR(J64.denoise, ref.J.denoise, 1e-12);
        for (size_t i = 0; i < g64.size(); ++i) ASSERT_NEAR(g64[i], ref.grad[i], 1e-12) << name << " " << i;

        std::vector<float> pf(p.params.begin(), p.params.end()), Xf(p.X.begin(), p.X.end());
        std::vector<float> Xcf(p.Xc.begin(), p.Xc.end()), df(p.drop.begin(), p.drop.end());
        std::vector<float> g32(size_t(p.layout.total));
        Workspace<float> ws;
        ws.reserve(spec, p.m);  // without the denoising buffers: sized on first use
        const CostTerms J32 = model_cost<float>(*be, spec, p.cost, p.layout, pf.data(), Xf.data(), p.m, g32.data(), ws,
                                                Xcf.empty() ? nullptr : Xcf.data(), df.empty() ? nullptr : df.data());
        EXPECT_NEAR(J32.total(), ref.J.total(), 1e-5 * std::max(1.0, ref.J.total()));
        EXPECT_NEAR(J32.denoise, ref.J.denoise, 1e-5 * std::max(1.0, ref.J.denoise));
        double gmax = 0;
        for (double g : ref.grad) gmax = std::max(gmax, std::fabs(g));
        for (size_t i = 0; i < g32.size(); ++i) ASSERT_NEAR(g32[i], ref.grad[i], 1e-4 * gmax) << name << " param " << i;
        for (int64_t i = 0; i < p.m * spec.d_sae; ++i) ASSERT_NEAR(ws.H.data[size_t(i)], ref.H[size_t(i)], 1e-5);
    }
}

INSTANTIATE_TEST_SUITE_P(AllModels, DenoiseFastVsReference, ::testing::ValuesIn(combos()), combo_name);

// D computed independently: the codes of X and of Xc from two plain (non-denoising) passes.
TEST(DenoiseCost, DIsHalfMeanSquaredCodeDistance) {
    auto be = backend_create("onednn");
    CostSpec cost{Sparsity::kl, 0.1, 3.0, 3e-3, 0.0};
    cost.gamma = 0.25;
    Problem p = make_problem({9, 5, Activation::sigmoid, Activation::sigmoid, false}, cost, Noise::masking_gamma, 11, 3);
    Workspace<double> ws;
    ws.reserve(p.spec, p.m);
    model_cost<double>(*be, p.spec, cost, p.layout, p.params.data(), p.X.data(), p.m, nullptr, ws);
    const Matrix<double> Hx = ws.H;
    model_cost<double>(*be, p.spec, cost, p.layout, p.params.data(), p.Xc.data(), p.m, nullptr, ws);
    const Matrix<double> Hxc = ws.H;
    double D = 0;
    for (int64_t i = 0; i < p.m; ++i)
        for (int64_t j = 0; j < 5; ++j) D += 0.5 * (Hx(i, j) - Hxc(i, j)) * (Hx(i, j) - Hxc(i, j)) / double(p.m);
    ASSERT_GT(D, 0.0);
    const CostTerms J = fast_cost(*be, p, p.params, nullptr);
    EXPECT_NEAR(J.denoise, 0.25 * D, 1e-14);
    EXPECT_DOUBLE_EQ(J.total(), J.rec + J.weight_decay + J.sparsity + J.denoise);

    // The corrupted input's code drives the reconstruction and the sparsity; the target is X.
    Workspace<double> ws2;
    ws2.reserve(p.spec, p.m);
    const CostTerms Jc = model_cost<double>(*be, p.spec, cost, p.layout, p.params.data(), p.Xc.data(), p.m, nullptr, ws2);
    EXPECT_NEAR(J.sparsity, Jc.sparsity, 1e-14);
    EXPECT_NE(J.rec, Jc.rec);

    // Xc = X and no dropout: exactly the plain model, D = 0.
    const CostTerms J0 = model_cost<double>(*be, p.spec, cost, p.layout, p.params.data(), p.X.data(), p.m, nullptr, ws);
    const CostTerms J1 = model_cost<double>(*be, p.spec, cost, p.layout, p.params.data(), p.X.data(), p.m, nullptr, ws,
                                            p.X.data(), nullptr);
    EXPECT_EQ(J1.denoise, 0.0);
    EXPECT_EQ(J0.rec, J1.rec);
    EXPECT_EQ(J0.sparsity, J1.sparsity);
}

TEST(DenoiseMasks, StatisticsAndDeterminism) {
    const int64_t m = 200, d_in = 500, d_sae = 300;
    std::vector<float> noise(size_t(m * d_in)), drop(size_t(m * d_sae));
    Rng rng(1);
    draw_corruption<float>({Corruption::masking, 0.3, 0.25}, m, d_in, d_sae, noise.data(), drop.data(), rng);
    double zeros = 0, dropped = 0;
    for (float v : noise) {
        ASSERT_TRUE(v == 0.0f || v == 1.0f);
        zeros += v == 0.0f;
    }
    for (float v : drop) {
        ASSERT_TRUE(v == 0.0f || v == float(1 / 0.75));
        dropped += v == 0.0f;
    }
    EXPECT_NEAR(zeros / double(noise.size()), 0.3, 0.01);
    EXPECT_NEAR(dropped / double(drop.size()), 0.25, 0.01);

    draw_corruption<float>({Corruption::gaussian, 0.2, 0.0}, m, d_in, d_sae, noise.data(), drop.data(), rng);
    double s = 0, s2 = 0;
    for (float v : noise) s += v, s2 += double(v) * v;
    const double mean = s / double(noise.size());
    EXPECT_NEAR(mean, 0.0, 0.005);
    EXPECT_NEAR(std::sqrt(s2 / double(noise.size()) - mean * mean), 0.2, 0.005);
    for (float v : drop) ASSERT_EQ(v, 1.0f);  // p = 0: every unit kept, unscaled

    std::vector<float> a(100), b(100), c(100);
    Rng r1 = corruption_rng(7, 3), r2 = corruption_rng(7, 3), r3 = corruption_rng(7, 4), r4 = corruption_rng(8, 3);
    draw_corruption<float>({Corruption::gaussian, 1.0, 0.0}, 1, 100, 1, a.data(), nullptr, r1);
    draw_corruption<float>({Corruption::gaussian, 1.0, 0.0}, 1, 100, 1, b.data(), nullptr, r2);
    EXPECT_EQ(a, b);
    draw_corruption<float>({Corruption::gaussian, 1.0, 0.0}, 1, 100, 1, c.data(), nullptr, r3);
    EXPECT_NE(a, c);
    draw_corruption<float>({Corruption::gaussian, 1.0, 0.0}, 1, 100, 1, c.data(), nullptr, r4);
    EXPECT_NE(a, c);
}

// The objective draws its masks from (seed, step) in training, and never corrupts in evaluation.
TEST(DenoiseObjective, MasksFollowSeedAndStepAndEvaluationIsClean) {
    Config cfg;
    cfg.d_sae = 6;
    cfg.corruption = "masking";
    cfg.corruption_level = 0.3;
    cfg.dropout = 0.2;
    cfg.gamma = 0.5;
    cfg.seed = 11;
    config_validate(cfg);
    const int64_t d_in = 10, m = 17;
    auto obj = objective_create(cfg, d_in);
    const ParamLayout& L = obj->layout();
    std::vector<float> params(size_t(L.total)), X(size_t(m * d_in));
    Rng rng(2);
    obj->init(params.data(), rng, Matrix<float>());
    for (auto& x : X) x = float(rng.uniform(0.05, 0.95));
    auto be = backend_create("onednn");
    obj->reserve(m);

    // What the objective must compute at step 5: masks from corruption_rng(seed, 5).
    const ModelSpec spec = config_model_spec(cfg, d_in);
    const DenoiseSpec dn = config_denoise_spec(cfg);
    std::vector<float> noise(X.size()), drop(size_t(m * 6)), Xc(X.size());
    Rng r5 = corruption_rng(11, 5);
    draw_corruption<float>(dn, m, d_in, 6, noise.data(), drop.data(), r5);
    apply_corruption<float>(dn.corruption, X.data(), noise.data(), int64_t(X.size()), Xc.data());
    Workspace<float> ws;
    ws.reserve(spec, m, true);
    std::vector<float> g_expect(size_t(L.total)), g(size_t(L.total));
    const CostTerms want = model_cost<float>(*be, spec, config_cost_spec(cfg), L, params.data(), X.data(), m,
                                             g_expect.data(), ws, Xc.data(), drop.data());

    obj->set_training(true);
    obj->set_step(5);
    const CostTerms a = obj->cost(*be, params.data(), X.data(), m, g.data());
    EXPECT_EQ(a.total(), want.total());
    EXPECT_EQ(g, g_expect);
    EXPECT_GT(a.denoise, 0.0);
    const CostTerms a2 = obj->cost(*be, params.data(), X.data(), m, nullptr);
    EXPECT_EQ(a2.total(), a.total());
    obj->set_step(6);
    const CostTerms b = obj->cost(*be, params.data(), X.data(), m, nullptr);
    EXPECT_NE(b.total(), a.total());

    obj->set_training(false);
    const CostTerms e = obj->cost(*be, params.data(), X.data(), m, nullptr);
    const CostTerms clean = model_cost<float>(*be, spec, config_cost_spec(cfg), L, params.data(), X.data(), m, nullptr, ws);
    EXPECT_EQ(e.denoise, 0.0);
    EXPECT_EQ(e.total(), clean.total());
}

TEST(DenoiseConfig, KeysParseAndBadCombinationsAreOneLineErrors) {
    Config cfg = config_parse_toml("corruption = \"gaussian\"\ncorruption_level = 0.5\ndropout = 0.1\ngamma = 2\n", "t.toml");
    config_validate(cfg);
    EXPECT_EQ(cfg.corruption, "gaussian");
    EXPECT_EQ(config_denoise_spec(cfg).corruption, Corruption::gaussian);
    EXPECT_EQ(config_denoise_spec(cfg).level, 0.5);
    EXPECT_EQ(config_denoise_spec(cfg).dropout, 0.1);
    EXPECT_EQ(config_cost_spec(cfg).gamma, 2.0);
    const auto j = nlohmann::json::parse(config_to_json(cfg));
    EXPECT_EQ(j["corruption"], "gaussian");
    EXPECT_EQ(config_from_json(config_to_json(cfg), "cfg.json").gamma, 2.0);

    auto error_of = [](const std::vector<std::string>& sets) {
        Config c;
        try {
            for (const auto& s : sets) config_apply_override(c, s);
            config_validate(c);
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string();
    };
    for (const auto& [sets, word] : std::vector<std::pair<std::vector<std::string>, std::string>>{
             {{"corruption=masking", "corruption_level=1.5"}, "[0, 1]"},
             {{"corruption=salt"}, "masking"},
             {{"dropout=1"}, "dropout"},
             {{"gamma=0.5"}, "corruption"},
             {{"sparsity=topk", "corruption=masking"}, "classic"},
         }) {
        const std::string e = error_of(sets);
        EXPECT_NE(e.find(word), std::string::npos) << e;
        EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    }
    EXPECT_EQ(error_of({"corruption=gaussian", "corruption_level=1.5"}), "");
}

// --- the trainer ----------------------------------------------------------------------------
const std::string kSae = sae_test::sae_binary();

std::string train_cmd(const std::string& data, const std::string& out, const std::string& extra) {
    return kSae + " train --set data=" + data + " --set normalize=none --set d_sae=5 --set seed=1 --set threads=1 " +
           "--set corruption=masking --set corruption_level=0.3 --set dropout=0.2 --set gamma=0.5 --out " + out + " " + extra;
}

TEST(DenoiseCli, MetricsCarryJDenoiseAndEvalIsClean) {
    const std::string dir = sae_test::temp_dir("denoise");
    const std::string data = sae_test::two_blob_npy(dir);
    for (const std::string opt : {"--set max_iterations=20 --set log_every=5",
                                  "--set optimizer=adam --set lr=0.01 --set batch_size=32 --set epochs=3 --set log_every=4"}) {
        auto r = run(train_cmd(data, dir + "/run", opt));
        ASSERT_EQ(r.exit_code, 0) << r.err;
        const auto lines = sae_test::read_jsonl(dir + "/run/metrics.jsonl");
        ASSERT_GE(lines.size(), 3u);
        for (const auto& l : lines) {
            ASSERT_TRUE(l.contains("J_denoise")) << l.dump();
            EXPECT_GT(l["J_denoise"].get<double>(), 0.0);
            EXPECT_NEAR(l["J_total"].get<double>(), l["J_rec"].get<double>() + l["J_weight_decay"].get<double>() +
                                                        l["J_sparsity"].get<double>() + l["J_denoise"].get<double>(),
                        1e-9);
        }
        EXPECT_LT(lines.back()["J_total"].get<double>(), lines.front()["J_total"].get<double>()) << opt;
        auto e = run(kSae + " eval --model " + dir + "/run --data " + data);
        ASSERT_EQ(e.exit_code, 0) << e.err;
        const auto j = nlohmann::json::parse(e.out);
        EXPECT_EQ(j["J_denoise"].get<double>(), 0.0);
    }
}

// Masks drawn from (seed, step): a resumed run reproduces an uninterrupted one bit for bit.
TEST(DenoiseCli, ResumeGivesTheSameBits) {
    const std::string dir = sae_test::temp_dir("denoise");
    const std::string data = sae_test::two_blob_npy(dir);
    for (const auto& [whole, part, more] :
         std::vector<std::tuple<std::string, std::string, std::string>>{
             {"--set max_iterations=12", "--set max_iterations=6", "--set max_iterations=12"},
             {"--set optimizer=adam --set batch_size=32 --set epochs=4", "--set optimizer=adam --set batch_size=32 --set epochs=2",
              "--set optimizer=adam --set batch_size=32 --set epochs=4"}}) {
        std::filesystem::remove_all(dir + "/a");
        std::filesystem::remove_all(dir + "/b");
        ASSERT_EQ(run(train_cmd(data, dir + "/a", whole)).exit_code, 0);
        ASSERT_EQ(run(train_cmd(data, dir + "/b", part)).exit_code, 0);
        auto r = run(train_cmd(data, dir + "/b", more + " --resume"));
        ASSERT_EQ(r.exit_code, 0) << r.err;
        EXPECT_EQ(sae_test::read_bytes(dir + "/a/model.safetensors"), sae_test::read_bytes(dir + "/b/model.safetensors"))
            << whole;
    }
}

}  // namespace
