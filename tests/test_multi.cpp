// Several variants from one data stream (train_run_variants, sae train --variant / [[variant]]):
// each variant's files are the bytes a separate run of its merged settings writes; resume after
// any interruption (also between two variants' checkpoints) gives the uninterrupted bytes; every
// refused combination is one line naming what to change.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "sae/config.hpp"
#include "sae/error.hpp"
#include "sae/io.hpp"
#include "sae/rng.hpp"
#include "sae/train.hpp"
#include "test_util.hpp"

using namespace sae;
namespace fs = std::filesystem;

namespace {

const std::string kSae = sae_test::sae_binary();
const char* kFiles[] = {"model.safetensors", "checkpoint.safetensors", "cfg.json"};

std::string make_npy(const std::string& path, int64_t n, int64_t d, uint64_t seed) {
    Rng rng(seed);
    std::vector<float> X(size_t(n * d));
    for (auto& x : X) x = float(rng.uniform(-1.0, 1.0) * (1 + (&x - X.data()) % d % 3));
    npy_write_f32(path, X.data(), {n, d});
    return path;
}

Config modern_base(const std::string& data) {
    Config c;
    c.data = data;
    c.architecture = "topk";
    c.d_sae = 32;
    c.k = 4;
    c.optimizer = "adam";
    c.lr = 0.003;
    c.batch_size = 50;
    c.epochs = 3;
    c.seed = 3;
    c.threads = 1;
    c.log_every = 5;
    c.checkpoint_every = 7;
    return c;
}

TrainHooks quiet() {
    TrainHooks h;
    h.quiet = true;
    return h;
}

// Every variant's files equal those of a separate run of its merged settings.
void expect_equals_separate_runs(const std::vector<Variant>& variants, const std::string& multi_dir, const std::string& dir) {
    for (const Variant& v : variants) {
        const std::string sep = dir + "/separate-" + v.name;
        train_run(v.cfg, sep, false, TrainData{}, quiet());
        for (const char* f : kFiles)
            EXPECT_EQ(sae_test::read_bytes(multi_dir + "/" + v.name + "/" + f), sae_test::read_bytes(sep + "/" + f))
                << v.name << "/" << f;
        EXPECT_EQ(sae_test::read_jsonl(multi_dir + "/" + v.name + "/metrics.jsonl").size(),
                  sae_test::read_jsonl(sep + "/metrics.jsonl").size());
    }
}

VariantSpec spec(const std::string& name, std::vector<std::pair<std::string, std::string>> settings) {
    return {name, std::move(settings)};
}

TEST(Multi, ModernVariantsEqualSeparateRuns) {
    const std::string dir = sae_test::temp_dir("multi-modern");
    Config base = modern_base(make_npy(dir + "/x.npy", 600, 16, 1));
    const auto variants = config_variants(
        base, {spec("k4", {{"resample_dead", "true"}, {"dead_threshold_samples", "200"}}),
               spec("bt", {{"architecture", "batchtopk"}, {"k", "6"}, {"d_sae", "48"}}),
               spec("gated", {{"architecture", "gated"}, {"l1_coefficient", "0.01"}, {"optimizer", "rmsprop"}}),
               spec("mat", {{"architecture", "matryoshka_batchtopk"}, {"matryoshka_groups", "0.25,0.75"}, {"dtype", "bf16"}}),
               spec("jr", {{"architecture", "jumprelu"}, {"lr_schedule", "cosine"}, {"warmup_steps", "5"}})});
    const auto s = train_run_variants(variants, dir + "/multi", false, TrainData{}, quiet());
    ASSERT_EQ(s.size(), variants.size());
    for (const auto& x : s) {
        EXPECT_EQ(x.stop_reason, "epochs");
        EXPECT_EQ(x.steps, 36);  // 3 epochs of ceil(600 / 50)
    }
    expect_equals_separate_runs(variants, dir + "/multi", dir);
}

// .npy shards through a shuffle buffer, inputs scaled to E|x| = sqrt(d_in): read, shuffled and
// scaled once for both.
TEST(Multi, StreamedShardsEqualSeparateRuns) {
    const std::string dir = sae_test::temp_dir("multi-stream");
    make_npy(dir + "/a.npy", 300, 16, 2);
    make_npy(dir + "/b.npy", 250, 16, 3);
    Config base = modern_base(dir + "/*.npy");
    base.shuffle_buffer = 128;
    base.normalize = "none";
    base.normalize_activations = "expected_norm";
    const auto variants = config_variants(base, {spec("k2", {{"k", "2"}}), spec("k8", {{"k", "8"}, {"d_sae", "64"}})});
    train_run_variants(variants, dir + "/multi", false, TrainData{}, quiet());
    expect_equals_separate_runs(variants, dir + "/multi", dir);
}

// The classic model with a minibatch optimiser (normalize auto = unit_range for all), one variant
// denoising (its masks are drawn from (seed, step), as in a separate run).
TEST(Multi, MinibatchClassicEqualsSeparateRuns) {
    const std::string dir = sae_test::temp_dir("multi-classic");
    Config base;
    base.data = sae_test::two_blob_npy(dir, 300, 12);
    base.d_sae = 8;
    base.optimizer = "sgd";
    base.lr = 0.5;
    base.batch_size = 32;
    base.epochs = 4;
    base.threads = 1;
    base.checkpoint_every = 5;
    const auto variants = config_variants(
        base, {spec("kl", {}), spec("b0", {{"beta", "0"}, {"d_sae", "5"}}),
               spec("l1", {{"sparsity", "l1"}, {"encoder_activation", "relu"}, {"optimizer", "adam"}, {"lr", "0.01"}}),
               spec("dn", {{"corruption", "masking"}, {"gamma", "0.5"}})});
    train_run_variants(variants, dir + "/multi", false, TrainData{}, quiet());
    expect_equals_separate_runs(variants, dir + "/multi", dir);
}

// Stopped (the stop flag, as Ctrl-C) and resumed: the uninterrupted bytes. Then the run is
// stopped between two variants' checkpoints: one variant's checkpoint is older than the others'
// and one has none at all; the resume replays the stream for them until they reach the others.
TEST(Multi, ResumeEqualsUninterruptedAlsoWithVariantsBehind) {
    const std::string dir = sae_test::temp_dir("multi-resume");
    const Config base = modern_base(make_npy(dir + "/x.npy", 600, 16, 4));
    const auto variants = config_variants(
        base, {spec("a", {}), spec("b", {{"architecture", "batchtopk"}, {"d_sae", "40"}}), spec("c", {{"k", "2"}})});
    train_run_variants(variants, dir + "/ref", false, TrainData{}, quiet());

    auto stopped_at = [&](const std::string& out, int64_t at, bool resume) {
        std::atomic<bool> stop{false};
        TrainHooks h = quiet();
        h.stop = &stop;
        h.on_log = [&](int64_t step, const std::string& line) {
            EXPECT_EQ(line.rfind("{\"variant\":\"", 0), 0u) << line;
            if (step >= at) stop = true;
        };
        const auto s = train_run_variants(variants, out, resume, TrainData{}, h);
        return s[0];
    };
    // Interrupted twice, resumed to the end.
    const std::string out = dir + "/stopped";
    EXPECT_EQ(stopped_at(out, 10, false).stop_reason, "interrupted");
    EXPECT_EQ(stopped_at(out, 25, true).stop_reason, "interrupted");
    EXPECT_EQ(train_run_variants(variants, out, true, TrainData{}, quiet())[0].stop_reason, "epochs");
    for (const auto& v : variants)
        for (const char* f : kFiles)
            EXPECT_EQ(sae_test::read_bytes(dir + "/ref/" + v.name + "/" + f), sae_test::read_bytes(out + "/" + v.name + "/" + f))
                << v.name << "/" << f;

    // b's checkpoint from step 10, a's from step 25, c never checkpointed.
    const std::string early = dir + "/early", late = dir + "/late";
    stopped_at(early, 10, false);
    stopped_at(late, 25, false);
    fs::copy_file(early + "/b/checkpoint.safetensors", late + "/b/checkpoint.safetensors", fs::copy_options::overwrite_existing);
    fs::remove(late + "/c/checkpoint.safetensors");
    EXPECT_EQ(train_run_variants(variants, late, true, TrainData{}, quiet())[0].stop_reason, "epochs");
    for (const auto& v : variants) {
        for (const char* f : kFiles)
            EXPECT_EQ(sae_test::read_bytes(dir + "/ref/" + v.name + "/" + f), sae_test::read_bytes(late + "/" + v.name + "/" + f))
                << v.name << "/" << f;
        int64_t last = -1;  // each variant's metrics: strictly increasing steps
        for (const auto& j : sae_test::read_jsonl(late + "/" + v.name + "/metrics.jsonl")) {
            EXPECT_GT(j["step"].get<int64_t>(), last) << v.name;
            last = j["step"].get<int64_t>();
        }
        EXPECT_EQ(last, 36);
    }
    // Resuming with no checkpoint anywhere is the single run's error.
    sae_test::expect_error_line([&] { train_run_variants(variants, dir + "/none", true, TrainData{}, quiet()); },
                                dir + "/none/a/checkpoint.safetensors", {"no checkpoint to resume from"});
}

// The CLI killed (SIGKILL) at random moments and resumed each time: the uninterrupted bytes.
TEST(Multi, SigkillAtRandomMomentsThenResumeIsBitIdentical) {
    const std::string dir = sae_test::temp_dir("multi-kill");
    make_npy(dir + "/x.npy", 2000, 32, 5);
    const std::string args = " --set data=" + dir + "/x.npy" +
                             " --set architecture=topk --set k=8 --set d_sae=128 --set optimizer=adam --set lr=0.003 "
                             "--set batch_size=50 --set epochs=20 --set seed=3 --set threads=1 --set checkpoint_every=7 "
                             "--set log_every=5 --variant name=a --variant name=b,k=16,architecture=batchtopk "
                             "--variant name=c,architecture=gated,d_sae=64";
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_EQ(sae_test::run(kSae + " train" + args + " --out " + dir + "/ref").exit_code, 0);
    const double T = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const std::string out = dir + "/killed";
    Rng rng(2026);
    int kills = 0, attempts = 0;
    for (;;) {
        ASSERT_LT(++attempts, 60) << "training never finished";
        const bool have_ckpt = fs::exists(out + "/a/checkpoint.safetensors") || fs::exists(out + "/b/checkpoint.safetensors") ||
                               fs::exists(out + "/c/checkpoint.safetensors");
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.3f", std::max(0.02, rng.uniform(0.03, 0.2) * T * (1.0 + attempts / 8.0)));
        auto r = sae_test::run("timeout -s KILL " + std::string(buf) + " " + kSae + " train" + args + " --out " + out +
                               (have_ckpt ? " --resume" : ""));
        if (r.exit_code == 0) break;
        ASSERT_EQ(r.exit_code, 137) << r.err;
        ++kills;
    }
    std::printf("%d kills in %d attempts; uninterrupted run %.3f s\n", kills, attempts, T);
    EXPECT_GE(kills, 3);
    for (const char* v : {"a", "b", "c"})
        EXPECT_EQ(sae_test::read_bytes(dir + "/ref/" + v + "/model.safetensors"), sae_test::read_bytes(out + "/" + v + "/model.safetensors"))
            << v;
}

TEST(Multi, VariantTextAndTomlTables) {
    const VariantSpec v = variant_parse("name=m, architecture=matryoshka_batchtopk,matryoshka_groups=0.25,0.75,k=8");
    EXPECT_EQ(v.name, "m");
    ASSERT_EQ(v.settings.size(), 3u);
    EXPECT_EQ(v.settings[1].first, "matryoshka_groups");
    EXPECT_EQ(v.settings[1].second, "0.25,0.75");
    EXPECT_EQ(v.settings[2].second, "8");
    sae_test::expect_error_line([] { variant_parse("k=16"); }, "--variant 'k=16'", {"has no name", "name="});
    sae_test::expect_error_line([] { variant_parse("k16"); }, "--variant 'k16'", {"expected name=NAME"});
    sae_test::expect_error_line([] { variant_parse("name=a,name=b"); }, "--variant 'name=a,name=b'", {"name given twice"});

    std::vector<VariantSpec> specs;
    const Config c = config_parse_toml("architecture = \"topk\"\noptimizer = \"adam\"\n"
                                       "[[variant]]\nname = \"k16\"\nk = 16\n"
                                       "[[variant]]\nname = \"big\"\nk = 32\nd_sae = 8192\nlayers = [3, 4]\n",
                                       "v.toml", &specs);
    EXPECT_EQ(c.architecture, "topk");
    ASSERT_EQ(specs.size(), 2u);
    EXPECT_EQ(specs[1].name, "big");
    const auto vs = config_variants(c, specs);
    EXPECT_EQ(vs[0].cfg.k, 16);
    EXPECT_EQ(vs[1].cfg.d_sae, 8192);
    EXPECT_EQ(vs[1].cfg.layers, (std::vector<int64_t>{3, 4}));
    EXPECT_EQ(vs[1].cfg.optimizer, "adam");
    sae_test::expect_error_line([] { config_parse_toml("[[variant]]\nk = 4\n", "v.toml"); }, "v.toml",
                                {"[[variant]] tables are read by sae train only"});
    sae_test::expect_error_line([&] { config_parse_toml("[[variant]]\nk = 4\n", "v.toml", &specs); }, "v.toml",
                                {"[[variant]] 1", "has no name"});
    sae_test::expect_error_line([&] { config_parse_toml("[[variant]]\nname = \"a\"\nkk = 4\n", "v.toml", &specs); }, "v.toml",
                                {"[[variant]] 'a'", "unknown setting 'kk'", "did you mean 'k'"});
    sae_test::expect_error_line([&] { config_parse_toml("[variant]\nname = \"a\"\n", "v.toml", &specs); }, "v.toml",
                                {"array of tables"});
}

TEST(Multi, TheExampleFileReads) {
    std::vector<VariantSpec> specs;
    const Config c = config_load_toml(sae_test::source_dir() + "/examples/topk_variants.toml", &specs);
    const auto v = config_variants(c, specs);
    ASSERT_EQ(v.size(), 4u);
    EXPECT_EQ(v[2].name, "k5-wide");
    EXPECT_EQ(v[2].cfg.d_sae, 1024);
    EXPECT_EQ(v[3].cfg.architecture, "batchtopk");
}

TEST(Multi, RefusedCombinationsGiveOneLineEach) {
    Config base = modern_base("x.npy");
    // Each setting that defines the stream, changed by a variant.
    for (const char* key : {"data", "normalize", "max_samples", "shuffle_buffer", "data_dtype", "normalize_activations",
                            "batch_size", "epochs", "max_iterations", "seed", "threads", "log_every", "checkpoint_every",
                            "latent_shards"}) {
        EXPECT_TRUE(config_key_is_shared(key));
        sae_test::expect_error_line([&] { config_variants(base, {spec("a", {}), spec("b", {{key, "1"}})}); }, "variant 'b'",
                                    {std::string("'") + key + "' defines the data stream", "set it outside the variants"});
    }
    EXPECT_FALSE(config_key_is_shared("k"));
    sae_test::expect_error_line([&] { config_variants(base, {spec("a", {}), spec("a", {{"k", "2"}})}); }, "variant 'a'",
                                {"the name is given twice"});
    sae_test::expect_error_line([&] { config_variants(base, {spec("a", {{"kk", "2"}})}); }, "variant 'a'",
                                {"unknown setting 'kk'", "did you mean 'k'"});
    sae_test::expect_error_line([&] { config_variants(base, {spec("a", {{"k", "two"}})}); }, "variant 'a'",
                                {"setting 'k'", "not an integer"});
    sae_test::expect_error_line([&] { config_variants(base, {spec("a/b", {})}); }, "variant 'a/b'", {"a directory name"});
    sae_test::expect_error_line([&] { config_variants(base, {spec("..", {})}); }, "variant '..'", {"a directory name"});
    sae_test::expect_error_line([&] { config_variants(base, {spec("a", {{"architecture", "bogus"}})}); }, "variant 'a'",
                                {"'architecture'", "use one of"});
    // normalize = auto resolves per architecture, but the stream's normalisation is one.
    Config classic = base;
    classic.architecture = "classic";
    classic.sparsity = "kl";
    sae_test::expect_error_line([&] { config_variants(classic, {spec("c", {}), spec("t", {{"architecture", "topk"}})}); },
                                "variant 't'", {"normalize resolves to \"none\"", "\"unit_range\"", "set normalize"});
    // Full-batch L-BFGS cannot share a stream of minibatches.
    const auto lb = config_variants(base, {spec("a", {}), spec("lb", {{"optimizer", "lbfgs"}})});
    sae_test::expect_error_line([&] { train_run_variants(lb, sae_test::temp_dir("multi-lbfgs"), false, TrainData{}, quiet()); },
                                "variant 'lb'", {"optimizer = \"lbfgs\"", "use adam, sgd or rmsprop"});
    // Variants built by hand are checked too.
    std::vector<Variant> hand = config_variants(base, {spec("a", {}), spec("b", {})});
    hand[1].cfg.seed = 9;
    sae_test::expect_error_line([&] { train_run_variants(hand, sae_test::temp_dir("multi-hand"), false, TrainData{}, quiet()); },
                                "variant 'b'", {"'seed' defines the data stream"});
    hand[1] = hand[0];
    sae_test::expect_error_line([&] { train_run_variants(hand, sae_test::temp_dir("multi-hand"), false, TrainData{}, quiet()); },
                                "variant 'a'", {"the name is given twice"});
}

// The CLI: a TOML file's [[variant]] tables then --variant, one line per refusal.
TEST(Multi, CommandLine) {
    const std::string dir = sae_test::temp_dir("multi-cli");
    make_npy(dir + "/x.npy", 300, 16, 6);
    const std::string shared = "data = \"x.npy\"\narchitecture = \"topk\"\nd_sae = 32\noptimizer = \"adam\"\nepochs = 2\nthreads = 1\n";
    sae_test::write_bytes(dir + "/one.toml", shared);
    sae_test::write_bytes(dir + "/v.toml", shared + "[[variant]]\nname = \"k2\"\nk = 2\n");
    auto r = sae_test::run(kSae + " train " + dir + "/v.toml --variant name=k6,k=6,d_sae=48 --out " + dir + "/m");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("k2: trained 4 steps"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("k6: trained 4 steps"), std::string::npos) << r.out;
    r = sae_test::run(kSae + " train " + dir + "/one.toml --set k=6 --set d_sae=48 --out " + dir + "/k6");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    for (const char* f : kFiles)
        EXPECT_EQ(sae_test::read_bytes(dir + "/m/k6/" + f), sae_test::read_bytes(dir + "/k6/" + f)) << f;
    sae_test::expect_clear_error(sae_test::run(kSae + " train " + dir + "/v.toml --variant name=k2,k=3 --out " + dir + "/d"),
                                 "variant 'k2': the name is given twice");
    sae_test::expect_clear_error(sae_test::run(kSae + " train " + dir + "/v.toml --variant name=b,batch_size=3 --out " + dir + "/d"),
                                 "variant 'b': 'batch_size' defines the data stream");
    sae_test::expect_clear_error(sae_test::run(kSae + " train " + dir + "/v.toml --variant name=b,d_sea=3 --out " + dir + "/d"),
                                 "did you mean 'd_sae'");
}

}  // namespace
