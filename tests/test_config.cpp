// The option table: TOML and --set parsing, validation, nearest-key suggestions, JSON round trip.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "sae/config.hpp"
#include "sae/error.hpp"
#include "test_util.hpp"

using namespace sae;

namespace {

TEST(Config, IssueKeysAllPresent) {
    for (const char* k : {"data", "normalize", "d_sae", "encoder_activation", "decoder_activation", "tied",
                          "sparsity", "rho", "beta", "weight_decay", "l1_coefficient", "optimizer", "lr",
                          "momentum", "batch_size", "epochs", "max_iterations", "lr_schedule", "seed", "threads"})
        EXPECT_NE(option_find(k), nullptr) << k;
}

TEST(Config, TomlValuesAndRelativeDataPath) {
    const std::string dir = sae_test::temp_dir("cfg");
    sae_test::write_bytes(dir + "/a.toml",
                          "# comment\ndata = \"digits.idx\"\nd_sae = 25\nbeta = 3\nrho = 0.05\ntied = true\n"
                          "sparsity = \"l1\"\nencoder_activation = \"relu\"\nweight_decay = 1e-4\n");
    const Config c = config_load_toml(dir + "/a.toml");
    EXPECT_EQ(c.d_sae, 25);
    EXPECT_DOUBLE_EQ(c.beta, 3.0);  // an integer accepted for a float key
    EXPECT_DOUBLE_EQ(c.rho, 0.05);
    EXPECT_DOUBLE_EQ(c.weight_decay, 1e-4);
    EXPECT_TRUE(c.tied);
    EXPECT_EQ(c.sparsity, "l1");
    EXPECT_EQ(c.data, dir + "/digits.idx");
    EXPECT_NO_THROW(config_validate(c));
}

TEST(Config, UnknownKeySuggestsNearest) {
    const std::string dir = sae_test::temp_dir("cfg");
    sae_test::write_bytes(dir + "/b.toml", "betta = 3\n");
    const std::string msg = sae_test::error_of([&] { config_load_toml(dir + "/b.toml"); });
    EXPECT_NE(msg.find("b.toml"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'betta'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("did you mean 'beta'"), std::string::npos) << msg;

    Config c;
    const std::string msg2 = sae_test::error_of([&] { config_apply_override(c, "weight_decy=1"); });
    EXPECT_NE(msg2.find("did you mean 'weight_decay'"), std::string::npos) << msg2;
    EXPECT_EQ(option_nearest("lr_shedule"), "lr_schedule");
}

TEST(Config, BadTomlIsOneClearLine) {
    const std::string dir = sae_test::temp_dir("cfg");
    sae_test::write_bytes(dir + "/c.toml", "d_sae = = 4\n");
    std::string msg = sae_test::error_of([&] { config_load_toml(dir + "/c.toml"); });
    EXPECT_NE(msg.find("c.toml:1"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;

    sae_test::write_bytes(dir + "/d.toml", "[model]\nd_sae = 4\n");
    msg = sae_test::error_of([&] { config_load_toml(dir + "/d.toml"); });
    EXPECT_NE(msg.find("unknown setting 'model'"), std::string::npos) << msg;

    sae_test::write_bytes(dir + "/e.toml", "d_sae = \"many\"\n");
    msg = sae_test::error_of([&] { config_load_toml(dir + "/e.toml"); });
    EXPECT_NE(msg.find("d_sae"), std::string::npos) << msg;

    sae_test::write_bytes(dir + "/f.toml", "d_sae = 2.5\n");
    msg = sae_test::error_of([&] { config_load_toml(dir + "/f.toml"); });
    EXPECT_NE(msg.find("not an integer"), std::string::npos) << msg;

    msg = sae_test::error_of([&] { config_load_toml(dir + "/missing.toml"); });
    EXPECT_NE(msg.find("missing.toml"), std::string::npos) << msg;
}

TEST(Config, SetParsesByType) {
    Config c;
    config_apply_override(c, "d_sae=50");
    config_apply_override(c, " beta = 0.5 ");
    config_apply_override(c, "tied=true");
    config_apply_override(c, "optimizer=\"adam\"");
    EXPECT_EQ(c.d_sae, 50);
    EXPECT_DOUBLE_EQ(c.beta, 0.5);
    EXPECT_TRUE(c.tied);
    EXPECT_EQ(c.optimizer, "adam");
    EXPECT_NE(sae_test::error_of([&] { config_apply_override(c, "d_sae=12x"); }).find("not an integer"), std::string::npos);
    EXPECT_NE(sae_test::error_of([&] { config_apply_override(c, "beta=nan"); }).find("finite"), std::string::npos);
    EXPECT_NE(sae_test::error_of([&] { config_apply_override(c, "tied=maybe"); }).find("boolean"), std::string::npos);
    EXPECT_NE(sae_test::error_of([&] { config_apply_override(c, "beta"); }).find("key=value"), std::string::npos);
}

TEST(Config, ValidationRangesChoicesAndCrossRules) {
    Config c;
    EXPECT_NO_THROW(config_validate(c));
    c.rho = 1.0;
    EXPECT_NE(sae_test::error_of([&] { config_validate(c); }).find("'rho'"), std::string::npos);
    c = Config{};
    c.d_sae = 0;
    EXPECT_NE(sae_test::error_of([&] { config_validate(c); }).find("'d_sae'"), std::string::npos);
    c = Config{};
    c.optimizer = "adamw";
    const std::string msg = sae_test::error_of([&] { config_validate(c); });
    EXPECT_NE(msg.find("lbfgs, adam, sgd, rmsprop"), std::string::npos) << msg;
    c = Config{};
    c.encoder_activation = "relu";  // with the default sparsity = kl
    EXPECT_NE(sae_test::error_of([&] { config_validate(c); }).find("sigmoid"), std::string::npos);
    c.sparsity = "l1";
    EXPECT_NO_THROW(config_validate(c));
    c.weight_decay = -1;
    EXPECT_NE(sae_test::error_of([&] { config_validate(c); }).find("weight_decay"), std::string::npos);
}

TEST(Config, JsonRoundTripCoversEveryKey) {
    Config c;
    c.d_sae = 77;
    c.beta = 0.25;
    c.tied = true;
    c.lr_schedule = "cosine";
    const std::string text = config_to_json(c);
    const auto j = nlohmann::json::parse(text);
    EXPECT_EQ(j.size(), option_table().size());
    const Config back = config_from_json(text, "cfg.json");
    EXPECT_EQ(config_to_json(back), text);
    EXPECT_THROW(config_from_json("{\"d_sae\": \"x\"}", "cfg.json"), Error);
    EXPECT_THROW(config_from_json("[1,2", "cfg.json"), Error);
}

TEST(Config, HelpListsEveryKeyWithDefault) {
    const std::string help = config_help();
    for (const auto& o : option_table()) EXPECT_NE(help.find(o.name), std::string::npos) << o.name;
    EXPECT_NE(help.find("default: 196"), std::string::npos);
    // Each group heading appears once.
    for (const auto& o : option_table()) {
        const std::string heading = std::string("[") + o.group + "]";
        EXPECT_EQ(help.find(heading), help.rfind(heading)) << heading;
    }
}

}  // namespace

// screen applies to TopK's minibatch step only; anywhere else it is refused, not ignored.
TEST(Config, ScreenOutsideItsArchitecturesIsRefused) {
    Config c;
    c.optimizer = "adam";
    c.screen = "bf16";
    for (const char* arch : {"topk", "batchtopk", "jumprelu"}) {
        c.architecture = arch;
        EXPECT_NO_THROW(config_validate(c)) << arch;
    }
    for (const auto& [arch, opt] : std::vector<std::pair<std::string, std::string>>{
             {"standard", "adam"}, {"gated", "adam"}, {"matryoshka_batchtopk", "adam"}, {"classic", "adam"},
             {"topk", "lbfgs"}}) {
        Config d = c;
        d.architecture = arch;
        d.optimizer = opt;
        const std::string msg = sae_test::error_of([&] { config_validate(d); });
        EXPECT_NE(msg.find("screen = \"bf16\" screens topk, batchtopk and jumprelu"), std::string::npos) << msg;
        EXPECT_EQ(msg.find('\n'), std::string::npos);
    }
}
