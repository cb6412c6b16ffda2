// Malformed input: every file in tests/regression/<parser>/ (inputs the fuzzers found, see
// docs/reliability.md) and every seed in fuzz/corpus/<parser>/ goes through its parser, which
// must either succeed or throw sae::Error with a one-line message. Built into build-asan/ too,
// so scripts/sanitize.sh replays them under AddressSanitizer + UBSan.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>

#include "sae/config.hpp"
#include "sae/data.hpp"
#include "sae/error.hpp"
#include "sae/images.hpp"
#include "sae/io.hpp"
#include "sae/model.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using namespace sae;

namespace {

using Parser = std::function<void(const std::string& bytes, const std::string& path)>;

// One entry per directory name under tests/regression/ and fuzz/corpus/; each does what the
// fuzz target of the same name does.
const std::map<std::string, Parser>& parsers() {
    static const std::map<std::string, Parser> p = {
        {"idx", [](const std::string& b, const std::string& path) { (void)array_to_samples(idx_parse(b, path)); }},
        {"npy",
         [](const std::string& b, const std::string& path) {
             for (const char* hint : {"", "bfloat16"}) {
                 try {
                     (void)npy_parse_header(b, b.size(), path, hint);
                 } catch (const Error&) {
                 }
                 (void)npy_parse(b, path, hint);
             }
         }},
        {"safetensors", [](const std::string& b, const std::string& path) { (void)safetensors_parse(b, path); }},
        {"cfg_json",
         [](const std::string& b, const std::string& path) {
             const Config c = config_from_json(b, path);
             EXPECT_EQ(config_to_json(config_from_json(config_to_json(c), "round trip")), config_to_json(c));
             config_validate(c);
             (void)model_layout(config_model_spec(c, 7));
         }},
        {"toml",
         [](const std::string& b, const std::string& path) {
             const Config c = config_parse_toml(b, path);
             config_validate(c);
         }},
        {"array_read", [](const std::string&, const std::string& path) { (void)array_read(path); }},
        {"image", [](const std::string& b, const std::string& path) { (void)image_decode(b, path); }},
    };
    return p;
}

// Files of dir, sorted (an absent dir has none).
std::vector<fs::path> files_in(const fs::path& dir) {
    std::vector<fs::path> out;
    if (!fs::is_directory(dir)) return out;
    for (const auto& e : fs::directory_iterator(dir))
        if (e.is_regular_file()) out.push_back(e.path());
    std::sort(out.begin(), out.end());
    return out;
}

// Runs every file of root/<parser>/ through its parser; returns how many files there were.
int replay(const fs::path& root) {
    int n = 0;
    for (const auto& [name, parse] : parsers()) {
        for (const fs::path& f : files_in(root / name)) {
            ++n;
            SCOPED_TRACE(f.string());
            const std::string bytes = sae_test::read_bytes(f.string());
            try {
                parse(bytes, f.string());
            } catch (const Error& e) {
                const std::string m = e.what();
                EXPECT_FALSE(m.empty());
                EXPECT_EQ(m.find_first_of("\n\r"), std::string::npos) << "message spans several lines: " << m;
            }
            // Any other exception type escapes and fails the test.
        }
    }
    return n;
}

}  // namespace

TEST(Regression, EveryRegressionFileParsesOrThrowsOneLineError) {
    const fs::path root = fs::path(sae_test::source_dir()) / "tests" / "regression";
    for (const auto& e : fs::directory_iterator(root))  // no directory without a parser
        if (e.is_directory()) EXPECT_TRUE(parsers().count(e.path().filename().string())) << e.path();
    EXPECT_GT(replay(root), 0);
}

TEST(Regression, EverySeedParsesOrThrowsOneLineError) {
    EXPECT_GT(replay(fs::path(sae_test::source_dir()) / "fuzz" / "corpus"), 0);
}

// toml++ 3.3 has undefined behaviour on non-ASCII characters where it looks for whitespace
// (found by fuzz_toml); config_parse_toml rejects those before toml++ sees them, and nothing else.
TEST(Regression, TomlNonAsciiOnlyInStringsAndComments) {
    const Config c = config_parse_toml(
        "# réglages, ½ and ∑ in a comment\n"
        "data = \"données/x.npy\"  # é\n"
        "normalize = 'none'\n"
        "\"d_sae\" = 4\n"
        "encoder_activation = \"\"\"sigmoid\"\"\"\n"
        "decoder_activation = '''linear'''\n",
        "/cfg/é.toml");
    EXPECT_EQ(c.data, "/cfg/données/x.npy");
    EXPECT_EQ(c.d_sae, 4);
    EXPECT_EQ(c.decoder_activation, "linear");
    EXPECT_EQ(config_parse_toml("data = \"\"\"a\\\n   b\"\"\"\n", "x.toml").data, "ab");  // ASCII after "\"

    std::string m = sae_test::error_of([] { config_parse_toml("d_sae = 4\n\xcc\xaa\n", "x.toml"); });
    EXPECT_NE(m.find("x.toml:2:1: invalid TOML: non-ASCII character outside a string or comment"), std::string::npos) << m;
    m = sae_test::error_of([] { config_parse_toml("d_sae = 4 \xc2\xa7\n", "x.toml"); });
    EXPECT_NE(m.find("x.toml:1:11:"), std::string::npos) << m;
    m = sae_test::error_of([] { config_parse_toml("data = 1e\"\xc3\xa9\n", "x.toml"); });  // a quote inside a token opens no string
    EXPECT_NE(m.find("non-ASCII character outside"), std::string::npos) << m;
    m = sae_test::error_of([] { config_parse_toml("data = \"\"\"\\\n  \xc2\xa7\"\"\"\n", "x.toml"); });
    EXPECT_NE(m.find("x.toml:2:3: invalid TOML: a non-ASCII character right after a line-ending backslash"),
              std::string::npos) << m;
}

// Text from the file quoted in a message is kept on one line (found by fuzz_toml).
TEST(Regression, ConfigMessagesStayOnOneLine) {
    std::string m = sae_test::error_of([] { config_parse_toml("tied = tr\nd_sae = 3\n", "x.toml"); });
    EXPECT_NE(m.find("x.toml:1:"), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    m = sae_test::error_of([] { config_validate(config_parse_toml("normalize = \"unit\\nrange\"\n", "x.toml")); });
    EXPECT_NE(m.find("'unit\\x0arange' is not valid"), std::string::npos) << m;
    m = sae_test::error_of([] { config_parse_toml("\"d_\\r\\nsae\" = 4\n", "x.toml"); });
    EXPECT_NE(m.find("unknown setting 'd_\\x0d\\x0asae'"), std::string::npos) << m;
    Config c;
    m = sae_test::error_of([&] { config_set(c, "d_sae", "4\n5"); });
    EXPECT_NE(m.find("'4\\x0a5' is not an integer"), std::string::npos) << m;
}

// cfg.json values must have the setting's JSON type; a float for an integer setting was
// converted with undefined behaviour when out of range (found by fuzz_cfg_json).
TEST(Regression, CfgJsonTypesAreExact) {
    for (const char* text : {"{\"d_sae\": 1e300}", "{\"d_sae\": 2.5}", "{\"d_sae\": 18446744073709551615}",
                             "{\"seed\": -1e19}", "{\"tied\": 1}", "{\"beta\": true}", "{\"normalize\": 3}"}) {
        const std::string m = sae_test::error_of([&] { config_from_json(text, "cfg.json"); });
        EXPECT_NE(m.find("has the wrong type"), std::string::npos) << text << ": " << m;
    }
    const Config c = config_from_json("{\"d_sae\": 12, \"beta\": 2, \"rho\": 0.25, \"tied\": true}", "cfg.json");
    EXPECT_EQ(c.d_sae, 12);
    EXPECT_DOUBLE_EQ(c.beta, 2.0);  // an integer is a valid number
    EXPECT_DOUBLE_EQ(c.rho, 0.25);
    EXPECT_TRUE(c.tied);
}
