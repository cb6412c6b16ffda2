// The feature browser (#features of the run report): on a harvest built here, with a model whose
// latents are planted (latent j reads the direction of token j), the chosen rows, activations,
// contexts, shading and promoted tokens against a plain loop over the documented encoder; the
// MNIST version's top digits; every bad input as one line; the page's size for 4096 latents.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <cstring>
#include <functional>
#include <regex>

#include "sae/config.hpp"
#include "sae/error.hpp"
#include "sae/eval.hpp"
#include "sae/io.hpp"
#include "sae/model_file.hpp"
#include "sae/report.hpp"
#include "sae/rng.hpp"
#include "test_util.hpp"

using namespace sae;
using sae_test::run;
namespace fs = std::filesystem;

namespace {

const std::string kSae = sae_test::sae_binary();

constexpr int64_t kD = 8, kV = 6, kSae7 = 7, kSeqs = 12, kLen = 20, kRows = kSeqs * kLen;

// An int32 .npy (C order).
void npy_write_i32(const std::string& path, const std::vector<int32_t>& v, const std::vector<int64_t>& shape) {
    std::string dict = "{'descr': '<i4', 'fortran_order': False, 'shape': (";
    for (size_t i = 0; i < shape.size(); ++i) dict += std::to_string(shape[i]) + (shape.size() == 1 ? "," : i + 1 < shape.size() ? ", " : "");
    dict += "), }";
    while ((10 + dict.size() + 1) % 64) dict += ' ';
    dict += '\n';
    std::string bytes = "\x93NUMPY";
    bytes += char(1);
    bytes += char(0);
    bytes += char(dict.size() & 0xff);
    bytes += char(dict.size() >> 8);
    bytes += dict;
    bytes.append(reinterpret_cast<const char*>(v.data()), v.size() * 4);
    sae_test::write_bytes(path, bytes);
}

struct Fixture {
    std::string dir, run;
    std::vector<int32_t> tokens;
    std::vector<int32_t> positions;  // [rows, 2]
    std::vector<float> X;            // [rows, kD]
    std::vector<float> unembed;      // [kD, kV]
};

// A harvest: 12 sequences of 20 tokens (ids 0..5), row x = a·e_token + small noise (dims 6, 7) with a distinct
// a in [0.5, 1.5); two shards (100 + 140 rows, the cut inside a sequence). A standard SAE whose
// latent j < 6 reads e_j (W_enc column e_j, b_enc 0) and writes e_j; latent 6 never fires
// (b_enc −1). unembed [8, 6]: entry (i, t) = 2 when i = t, else a small distinct value.
Fixture make_fixture() {
    Fixture f;
    f.dir = sae_test::temp_dir("browser");
    const std::string h = f.dir + "/harvest";
    fs::create_directories(h + "/blocks.1");
    Rng rng(11);
    for (int64_t s = 0; s < kSeqs; ++s)
        for (int64_t p = 0; p < kLen; ++p) {
            f.tokens.push_back(int32_t(rng.below(kV)));
            f.positions.push_back(int32_t(s));
            f.positions.push_back(int32_t(p));
        }
    f.X.assign(size_t(kRows * kD), 0);
    for (int64_t r = 0; r < kRows; ++r) {
        for (int64_t c = kV; c < kD; ++c) f.X[size_t(r * kD + c)] = float(0.02 * (rng.uniform() - 0.5));
        f.X[size_t(r * kD + f.tokens[size_t(r)])] = float(0.5 + (double((r * 7919) % kRows) + rng.uniform() * 0.5) / kRows);
    }
    npy_write_f32(h + "/blocks.1/000000.npy", f.X.data(), {100, kD});
    npy_write_f32(h + "/blocks.1/000001.npy", f.X.data() + 100 * kD, {kRows - 100, kD});
    npy_write_i32(h + "/tokens.npy", f.tokens, {kRows});
    npy_write_i32(h + "/positions.npy", f.positions, {kRows, 2});
    sae_test::write_bytes(h + "/vocab.json", R"(["a", " ", "\n", "</script><b>", "x\t", "\u00e9"])");
    f.unembed.assign(size_t(kD * kV), 0);
    for (int64_t i = 0; i < kD; ++i)
        for (int64_t t = 0; t < kV; ++t) f.unembed[size_t(i * kV + t)] = i == t ? 2.0f : float(0.01 * double((i * 5 + t * 3) % 11) - 0.05);
    npy_write_f32(h + "/unembed.npy", f.unembed.data(), {kD, kV});
    nlohmann::json m = {{"format", "sae-harvest"}, {"version", 1}, {"model", "planted"}, {"complete", true},
                        {"sequences", kSeqs}, {"rows", kRows}, {"tokens", "tokens.npy"}, {"positions", "positions.npy"},
                        {"vocab", "vocab.json"}, {"unembed", "unembed.npy"},
                        {"hooks", {{{"name", "blocks.1"}, {"d_in", kD}, {"rows", kRows}, {"dtype", "float32"},
                                    {"shards", {"blocks.1/000000.npy", "blocks.1/000001.npy"}}}}}};
    sae_test::write_bytes(h + "/manifest.json", m.dump(2));

    // The planted model, trained on that hook (cfg.json data names its shards).
    Config cfg;
    config_set(cfg, "architecture", "standard");
    config_set(cfg, "d_sae", std::to_string(kSae7));
    config_set(cfg, "normalize", "none");
    config_set(cfg, "data", h + "/blocks.1/*.npy");
    config_set(cfg, "shuffle_buffer", "64");
    auto obj = objective_create(cfg, kD);
    std::map<std::string, TensorIn> t;
    auto put = [&](const std::string& name, std::vector<int64_t> shape, std::vector<float> v) {
        TensorIn in;
        in.shape = std::move(shape);
        in.f32 = std::move(v);
        t[name] = in;
    };
    std::vector<float> W_enc(size_t(kD * kSae7), 0), W_dec(size_t(kSae7 * kD), 0), b_enc(size_t(kSae7), 0);
    for (int64_t j = 0; j < kV; ++j) W_enc[size_t(j * kSae7 + j)] = 1, W_dec[size_t(j * kD + j)] = 1;
    W_dec[size_t(6 * kD + 6)] = 1;
    b_enc[6] = -1;
    put("W_enc", {kD, kSae7}, W_enc);
    put("b_enc", {kSae7}, b_enc);
    put("W_dec", {kSae7, kD}, W_dec);
    put("b_dec", {kD}, std::vector<float>(size_t(kD), 0));
    std::vector<float> params(size_t(obj->layout().total));
    obj->import_tensors(t, params.data(), "planted");
    f.run = f.dir + "/run";
    fs::create_directories(f.run);
    Normalizer none;
    model_save(f.run, cfg, *obj, params.data(), 1.0, none);
    sae_test::write_bytes(f.run + "/metrics.jsonl", "{\"step\":0,\"J_total\":1.0,\"fvu\":0.5}\n");
    return f;
}

const Fixture& fixture() {
    static const Fixture f = make_fixture();
    return f;
}

// A copy of the fixture's harvest directory, to damage.
std::string harvest_copy(const std::string& tag) {
    const std::string d = sae_test::temp_dir("browser-" + tag) + "/h";
    fs::copy(fixture().dir + "/harvest", d, fs::copy_options::recursive);
    return d;
}
nlohmann::json manifest_of(const std::string& d) { return nlohmann::json::parse(sae_test::read_bytes(d + "/manifest.json")); }
void manifest_set(const std::string& d, const nlohmann::json& m) { sae_test::write_bytes(d + "/manifest.json", m.dump()); }

// Every row's codes by the encoder as docs/formats.md states it, in double: H [rows, d_sae].
std::vector<double> reference_codes(const std::string& run, const float* X, int64_t rows) {
    const SafeTensors st = safetensors_read(run + "/model.safetensors");
    const nlohmann::json cfg = nlohmann::json::parse(sae_test::read_bytes(run + "/cfg.json"));
    std::vector<double> H;
    for (int64_t r = 0; r < rows; ++r) {
        const auto h = sae_test::documented_encode(st, cfg, X + r * cfg["d_in"].get<int64_t>());
        H.insert(H.end(), h.begin(), h.end());
    }
    return H;
}

// The top k rows of latent j by a plain sort: activation descending, then row ascending; > 0 only.
std::vector<int64_t> reference_top(const std::vector<double>& H, int64_t rows, int64_t d_sae, int64_t j, int64_t k) {
    std::vector<int64_t> r;
    for (int64_t i = 0; i < rows; ++i)
        if (H[size_t(i * d_sae + j)] > 0) r.push_back(i);
    std::stable_sort(r.begin(), r.end(), [&](int64_t a, int64_t b) { return H[size_t(a * d_sae + j)] > H[size_t(b * d_sae + j)]; });
    if (int64_t(r.size()) > k) r.resize(size_t(k));
    return r;
}

// The JSON the page embeds for the browser.
nlohmann::json feature_data(const std::string& html) {
    const std::string open = "<script type=\"application/json\" id=\"feature-data\">";
    const size_t b = html.find(open);
    if (b == std::string::npos) return {};
    const size_t e = html.find("</script>", b);
    return nlohmann::json::parse(html.substr(b + open.size(), e - b - open.size()));
}

TEST(Browser, HarvestTopRowsContextsShadingAndTokensMatchAPlainLoop) {
    const Fixture& f = fixture();
    const SavedModel model = model_load(f.run);
    const Harvest h = harvest_read(f.dir + "/harvest");
    BrowserOptions opt;
    opt.chunk = 37;  // chunks that straddle both shards and sequences
    const Browser b = browser_from_harvest(model, h, "blocks.1", opt);
    const std::vector<double> H = reference_codes(f.run, f.X.data(), kRows);

    // Every latent is chosen (1000 > 7), the most often firing first; the dead one last.
    ASSERT_EQ(b.latents.size(), size_t(kSae7));
    std::vector<int64_t> fires(size_t(kSae7), 0);
    for (int64_t i = 0; i < kRows; ++i)
        for (int64_t j = 0; j < kSae7; ++j) fires[size_t(j)] += H[size_t(i * kSae7 + j)] > 0;
    for (size_t r = 0; r + 1 < b.latents.size(); ++r) {
        const auto &a = b.latents[r], &c = b.latents[r + 1];
        EXPECT_TRUE(a.fires > c.fires || (a.fires == c.fires && a.index < c.index)) << r;
    }
    EXPECT_EQ(b.latents.back().index, 6);
    EXPECT_EQ(b.latents.back().fires, 0);
    EXPECT_TRUE(b.latents.back().top.empty());

    for (const auto& L : b.latents) {
        const int64_t j = L.index;
        EXPECT_EQ(L.fires, fires[size_t(j)]) << j;
        EXPECT_DOUBLE_EQ(L.density, double(fires[size_t(j)]) / kRows);
        // Latent j fires exactly on the rows of token j.
        if (j < kV) EXPECT_EQ(L.fires, std::count(f.tokens.begin(), f.tokens.end(), int32_t(j))) << j;
        const auto want = reference_top(H, kRows, kSae7, j, 10);
        ASSERT_EQ(L.top.size(), want.size()) << j;
        int64_t hist_total = 0;
        for (auto c : L.hist) hist_total += c;
        EXPECT_EQ(hist_total, L.fires) << j;
        for (size_t c = 0; c < want.size(); ++c) {
            const BrowserContext& C = L.top[c];
            EXPECT_EQ(C.row, want[c]) << j << " " << c;
            EXPECT_NEAR(C.activation, H[size_t(want[c] * kSae7 + j)], 1e-6) << j << " " << c;
            EXPECT_EQ(f.tokens[size_t(C.row)], j);
            // The context: up to 24 rows before and 8 after, never outside the row's sequence.
            const int64_t seq = C.row / kLen, start = seq * kLen, end = start + kLen;
            EXPECT_EQ(C.begin, std::max(start, C.row - 24)) << C.row;
            EXPECT_EQ(C.end, std::min(end, C.row + 9)) << C.row;
            ASSERT_EQ(C.tokens.size(), size_t(C.end - C.begin));
            ASSERT_EQ(C.shade.size(), size_t(C.end - C.begin));
            for (int64_t r = C.begin; r < C.end; ++r) {
                EXPECT_EQ(C.tokens[size_t(r - C.begin)], f.tokens[size_t(r)]);
                // Shaded by this latent: its activation over its maximum, in 0..255.
                const double want_q = 255.0 * std::max(0.0, H[size_t(r * kSae7 + j)]) / L.max_activation;
                EXPECT_NEAR(C.shade[size_t(r - C.begin)], want_q, 0.5 + 1e-3) << j << " row " << r;
                EXPECT_EQ(C.shade[size_t(r - C.begin)] > 0, f.tokens[size_t(r)] == j) << j << " row " << r;
            }
        }
        if (!L.top.empty()) EXPECT_EQ(L.top[0].shade[size_t(L.top[0].row - L.top[0].begin)], 255);

        // Promoted / suppressed: W_dec[j] @ unembed = row j of unembed; top and bottom by a sort.
        std::vector<std::pair<float, int32_t>> logit;
        for (int32_t t = 0; t < kV; ++t) logit.emplace_back(f.unembed[size_t(j * kV + t)], t);
        std::vector<std::pair<float, int32_t>> up = logit, down = logit;
        std::stable_sort(up.begin(), up.end(), [](auto a, auto c) { return a.first > c.first; });
        std::stable_sort(down.begin(), down.end(), [](auto a, auto c) { return a.first < c.first; });
        ASSERT_EQ(L.promoted.size(), size_t(kV));
        ASSERT_EQ(L.suppressed.size(), size_t(kV));
        for (size_t i = 0; i < size_t(kV); ++i) {
            EXPECT_EQ(L.promoted[i].first, up[i].second) << j;
            EXPECT_FLOAT_EQ(L.promoted[i].second, up[i].first);
            EXPECT_EQ(L.suppressed[i].first, down[i].second) << j;
        }
        if (j < kV) EXPECT_EQ(L.promoted[0].first, j);
    }

    // Fewer latents and contexts.
    opt.latents = 2;
    opt.contexts = 3;
    const Browser b2 = browser_from_harvest(model, h, "blocks.1", opt);
    ASSERT_EQ(b2.latents.size(), 2u);
    EXPECT_EQ(b2.latents[0].index, b.latents[0].index);
    EXPECT_EQ(b2.latents[0].top.size(), 3u);
    EXPECT_EQ(b2.latents[0].top[2].row, b.latents[0].top[2].row);
}

TEST(Browser, BFloat16ShardsGiveTheSameRows) {
    const Fixture& f = fixture();
    const std::string d = harvest_copy("bf16");
    // Rewrite the shards as raw '<V2' bfloat16 (round to nearest even) and say so in the manifest.
    auto write_bf16 = [&](const std::string& path, const float* x, int64_t rows) {
        std::string dict = "{'descr': '<V2', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " + std::to_string(kD) + "), }";
        while ((10 + dict.size() + 1) % 64) dict += ' ';
        dict += '\n';
        std::string bytes = "\x93NUMPY";
        bytes += char(1);
        bytes += char(0);
        bytes += char(dict.size());
        bytes += char(0);
        bytes += dict;
        for (int64_t i = 0; i < rows * kD; ++i) {
            uint32_t u;
            std::memcpy(&u, &x[i], 4);
            const uint16_t hi = uint16_t((u + 0x7fff + ((u >> 16) & 1)) >> 16);
            bytes += char(hi & 0xff);
            bytes += char(hi >> 8);
        }
        sae_test::write_bytes(path, bytes);
    };
    write_bf16(d + "/blocks.1/000000.npy", f.X.data(), 100);
    write_bf16(d + "/blocks.1/000001.npy", f.X.data() + 100 * kD, kRows - 100);
    auto m = manifest_of(d);
    m["hooks"][0]["dtype"] = "bfloat16";
    manifest_set(d, m);
    const Browser b = browser_from_harvest(model_load(f.run), harvest_read(d), "blocks.1", {});
    ASSERT_EQ(b.latents.size(), size_t(kSae7));
    EXPECT_GT(b.latents[0].fires, 0);
    // bf16 keeps 8 bits: the values move by < 0.5%, the rows that fire do not change.
    const Browser f32 = browser_from_harvest(model_load(f.run), harvest_read(fixture().dir + "/harvest"), "blocks.1", {});
    for (size_t i = 0; i < b.latents.size(); ++i) EXPECT_EQ(b.latents[i].fires, f32.latents[i].fires);
}

// A harvest still running has no tokens.npy / positions.npy yet, only its per-shard
// (token, sequence, position) tables: the same browser comes out of them.
TEST(Browser, IncompleteHarvestUsesItsTokenShards) {
    const Fixture& f = fixture();
    const std::string d = harvest_copy("running");
    fs::create_directories(d + "/tokens");
    for (int s = 0; s < 2; ++s) {
        const int64_t r0 = s == 0 ? 0 : 100, r1 = s == 0 ? 100 : kRows;
        std::vector<int32_t> t;
        for (int64_t r = r0; r < r1; ++r)
            t.insert(t.end(), {f.tokens[size_t(r)], f.positions[size_t(2 * r)], f.positions[size_t(2 * r + 1)]});
        npy_write_i32(d + "/tokens/00000" + std::to_string(s) + ".npy", t, {r1 - r0, 3});
    }
    auto m = manifest_of(d);
    m.erase("tokens");
    m.erase("positions");
    m["complete"] = false;
    m["token_shards"] = {"tokens/000000.npy", "tokens/000001.npy"};
    m["has_tokens"] = true;
    manifest_set(d, m);
    const SavedModel model = model_load(f.run);
    const Browser a = browser_from_harvest(model, harvest_read(d), "blocks.1", {});
    const Browser b = browser_from_harvest(model, harvest_read(f.dir + "/harvest"), "blocks.1", {});
    ASSERT_EQ(a.latents.size(), b.latents.size());
    EXPECT_TRUE(a.positions);
    for (size_t i = 0; i < a.latents.size(); ++i) {
        ASSERT_EQ(a.latents[i].top.size(), b.latents[i].top.size());
        for (size_t c = 0; c < a.latents[i].top.size(); ++c) {
            EXPECT_EQ(a.latents[i].top[c].begin, b.latents[i].top[c].begin);
            EXPECT_EQ(a.latents[i].top[c].end, b.latents[i].top[c].end);
            EXPECT_EQ(a.latents[i].top[c].tokens, b.latents[i].top[c].tokens);
            EXPECT_EQ(a.latents[i].top[c].shade, b.latents[i].top[c].shade);
        }
    }
    const std::string run_dir = sae_test::temp_dir("browser-running") + "/run";
    fs::copy(f.run, run_dir, fs::copy_options::recursive);
    auto r = run(kSae + " report " + run_dir + " --harvest " + d);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("sae: warning: " + d + "/manifest.json: the harvest is not complete"), std::string::npos) << r.err;
    // A token table that disagrees with the rows.
    npy_write_i32(d + "/tokens/000001.npy", std::vector<int32_t>(size_t(3 * 10), 0), {10, 3});
    const std::string e = sae_test::error_of([&] { browser_from_harvest(model, harvest_read(d), "blocks.1", {}); });
    EXPECT_NE(e.find("token_shards hold 110 rows but hook blocks.1 has 240"), std::string::npos) << e;
}

TEST(Browser, ReportFindsTheHarvestAndEmbedsCompactEscapedData) {
    const Fixture& f = fixture();
    auto r = run(kSae + " report " + f.run);  // the harvest found through cfg.json data
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");  // the streamed training data (the same shards) is read for the other sections
    const std::string html = sae_test::read_bytes(f.run + "/report.html");
    EXPECT_NE(html.find("Final metrics (evaluate over 240 training samples)"), std::string::npos);
    EXPECT_EQ(html.find("Streamed training data"), std::string::npos);
    EXPECT_NE(html.find("<section id=\"features\">"), std::string::npos);
    EXPECT_NE(html.find("href=\"#features\""), std::string::npos);
    // The vocab entry "</script><b>" cannot end the data element or become markup.
    EXPECT_EQ(html.find("</script><b>"), std::string::npos);
    const nlohmann::json d = feature_data(html);
    ASSERT_TRUE(d.is_object());
    EXPECT_EQ(d["vocab"][3], "</script><b>");
    EXPECT_EQ(d["vocab"][1], "\u00b7");      // a space, visible
    EXPECT_EQ(d["vocab"][2], "\u21b5");      // a newline
    EXPECT_EQ(d["vocab"][4], "x\u2192");     // a tab
    EXPECT_EQ(d["rows"], kRows);
    const Browser b = browser_from_harvest(model_load(f.run), harvest_read(f.dir + "/harvest"), "blocks.1", {});
    ASSERT_EQ(d["L"].size(), b.latents.size());
    const int w = d["w"].get<int>();
    EXPECT_EQ(w, 1);  // 6 tokens: one hex digit each
    for (size_t i = 0; i < b.latents.size(); ++i) {
        const auto& L = d["L"][i];
        const auto& B = b.latents[i];
        EXPECT_EQ(L["j"], B.index);
        EXPECT_EQ(L["f"], B.fires);
        ASSERT_EQ(L["c"].size(), B.top.size());
        for (size_t c = 0; c < B.top.size(); ++c) {
            const auto& C = L["c"][c];
            EXPECT_EQ(C[0], B.top[c].row);
            const std::string toks = C[2], shade = C[3];
            ASSERT_EQ(toks.size(), B.top[c].tokens.size() * size_t(w));
            ASSERT_EQ(shade.size(), 2 * B.top[c].shade.size());
            for (size_t t = 0; t < B.top[c].tokens.size(); ++t) {
                EXPECT_EQ(std::stoi(toks.substr(t, 1), nullptr, 16), B.top[c].tokens[t]);
                EXPECT_EQ(std::stoi(shade.substr(2 * t, 2), nullptr, 16), B.top[c].shade[t]);
            }
            EXPECT_EQ(C[4], B.top[c].row - B.top[c].begin);
        }
        EXPECT_EQ(L["p"][0][0], B.promoted[0].first);
    }
    // --latents / --contexts / an explicit harvest and hook.
    r = run(kSae + " report " + f.run + " --harvest " + f.dir + "/harvest --hook blocks.1 --latents 2 --contexts 1");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const nlohmann::json d2 = feature_data(sae_test::read_bytes(f.run + "/report.html"));
    ASSERT_EQ(d2["L"].size(), 2u);
    EXPECT_EQ(d2["L"][0]["c"].size(), 1u);
    r = run(kSae + " report " + f.run + " --max-samples 50");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(sae_test::read_bytes(f.run + "/report.html").find("over the first 50 of its 240 samples"), std::string::npos);
    r = run(kSae + " report " + f.run + " --latents all");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(feature_data(sae_test::read_bytes(f.run + "/report.html"))["L"].size(), size_t(kSae7));
    sae_test::expect_clear_error(run(kSae + " report " + f.run + " --latents some"), "--latents: 'some'");
}

TEST(Browser, EachBadInputIsOneLine) {
    const Fixture& f = fixture();
    const SavedModel model = model_load(f.run);
    auto browse = [&](const std::string& d, const std::string& hook = "blocks.1") {
        return [=, &model] { browser_from_harvest(model, harvest_read(d), hook, {}); };
    };
    auto expect = [](const std::function<void()>& fn, const std::vector<std::string>& parts) {
        const std::string e = sae_test::error_of(fn);
        EXPECT_EQ(e.find('\n'), std::string::npos) << e;
        for (const auto& p : parts) EXPECT_NE(e.find(p), std::string::npos) << "'" << p << "' not in: " << e;
    };
    {  // missing and malformed manifests
        const std::string d = harvest_copy("manifest");
        fs::remove(d + "/manifest.json");
        expect(browse(d), {"manifest.json: missing"});
        sae_test::write_bytes(d + "/manifest.json", "{\"format\": ");
        expect(browse(d), {"manifest.json: not valid JSON"});
        sae_test::write_bytes(d + "/manifest.json", "{\"format\": \"other\"}");
        expect(browse(d), {"manifest.json", "sae-harvest"});
        auto m = manifest_of(fixture().dir + "/harvest");
        m["hooks"][0].erase("d_in");
        manifest_set(d, m);
        expect(browse(d), {"hook blocks.1", "\"d_in\" is missing"});
    }
    // An unknown hook names the available ones.
    expect(browse(fixture().dir + "/harvest", "blocks.9"), {"no hook 'blocks.9'", "its hooks: blocks.1"});
    {  // the hook's d_in against the model's: both numbers
        const std::string d = harvest_copy("din");
        auto m = manifest_of(d);
        m["hooks"][0]["d_in"] = 9;
        manifest_set(d, m);
        expect(browse(d), {"d_in = 9", "d_in = 8"});
    }
    {  // shards against the manifest: rows, and a shard of the wrong width
        const std::string d = harvest_copy("rows");
        auto m = manifest_of(d);
        m["hooks"][0]["rows"] = kRows + 1;
        manifest_set(d, m);
        expect(browse(d), {"241 rows", "shards hold 240"});
        const std::vector<float> z(size_t(10 * 7), 0);
        npy_write_f32(d + "/blocks.1/000001.npy", z.data(), {10, 7});
        expect(browse(d), {"000001.npy", "[10, 7]", "d_in = 8"});
        m["hooks"][0]["dtype"] = "bfloat16";
        m["hooks"][0]["rows"] = kRows;
        manifest_set(d, m);
        fs::copy_file(fixture().dir + "/harvest/blocks.1/000001.npy", d + "/blocks.1/000001.npy", fs::copy_options::overwrite_existing);
        expect(browse(d), {"000000.npy", "'<f4'", "bfloat16"});
    }
    {  // tokens and positions against the rows
        const std::string d = harvest_copy("tokens");
        npy_write_i32(d + "/tokens.npy", std::vector<int32_t>(size_t(kRows - 1), 0), {kRows - 1});
        expect(browse(d), {"tokens.npy", "239 tokens", "240 rows"});
        fs::copy_file(fixture().dir + "/harvest/tokens.npy", d + "/tokens.npy", fs::copy_options::overwrite_existing);
        npy_write_i32(d + "/positions.npy", std::vector<int32_t>(size_t(2 * 200), 0), {200, 2});
        expect(browse(d), {"positions.npy", "200 positions", "240 rows"});
    }
    {  // a vocabulary shorter than the largest token id
        const std::string d = harvest_copy("vocab");
        sae_test::write_bytes(d + "/vocab.json", "[\"a\", \"b\", \"c\"]");
        expect(browse(d), {"vocab.json", "3 entries", "up to id 5"});
        sae_test::write_bytes(d + "/vocab.json", "[\"a\", 2]");
        expect(browse(d), {"vocab.json", "entry 1 is not a string"});
    }
    {  // an unembedding in Fortran order (how NumPy saves W.T) reads as the same matrix
        const std::string d = harvest_copy("fortran");
        std::vector<float> t(size_t(kD * kV));  // column-major [kD, kV]
        for (int64_t i = 0; i < kD; ++i)
            for (int64_t c = 0; c < kV; ++c) t[size_t(c * kD + i)] = f.unembed[size_t(i * kV + c)];
        std::string dict = "{'descr': '<f4', 'fortran_order': True, 'shape': (" + std::to_string(kD) + ", " + std::to_string(kV) + "), }";
        while ((10 + dict.size() + 1) % 64) dict += ' ';
        dict += '\n';
        std::string bytes = std::string("\x93NUMPY") + char(1) + char(0) + char(dict.size()) + char(0) + dict;
        bytes.append(reinterpret_cast<const char*>(t.data()), t.size() * 4);
        sae_test::write_bytes(d + "/unembed.npy", bytes);
        const Browser a = browser_from_harvest(model, harvest_read(d), "blocks.1", {});
        const Browser c = browser_from_harvest(model, harvest_read(fixture().dir + "/harvest"), "blocks.1", {});
        for (size_t i = 0; i < a.latents.size(); ++i) {
            EXPECT_EQ(a.latents[i].promoted, c.latents[i].promoted);
            EXPECT_EQ(a.latents[i].suppressed, c.latents[i].suppressed);
        }
    }
    {  // an unembedding whose rows are not d_in
        const std::string d = harvest_copy("unembed");
        const std::vector<float> u(size_t(7 * kV), 0);
        npy_write_f32(d + "/unembed.npy", u.data(), {7, kV});
        expect(browse(d), {"unembed.npy", "7 rows", "d_in = 8"});
    }
    // Through the CLI: one line, "sae: error: ...".
    sae_test::expect_clear_error(run(kSae + " report " + f.run + " --harvest " + f.dir + "/harvest --hook nope"),
                                 "its hooks: blocks.1");
    sae_test::expect_clear_error(run(kSae + " report " + f.run + " --harvest " + f.dir + "/nowhere"), "manifest.json: missing");
    // --hook alone, for a run whose data is not in a harvest.
    const std::string moved = sae_test::temp_dir("browser-moved") + "/run";
    fs::copy(f.run, moved, fs::copy_options::recursive);
    std::string cfg = sae_test::read_bytes(moved + "/cfg.json");
    cfg = std::regex_replace(cfg, std::regex("\"data\": \"[^\"]*\""), "\"data\": \"/nonexistent/x.npy\"");
    sae_test::write_bytes(moved + "/cfg.json", cfg);
    sae_test::expect_clear_error(run(kSae + " report " + moved + " --hook blocks.1"), "is not in a harvest directory; pass --harvest");
}

// MNIST: the top digits of each latent are those a plain loop over the documented encoder finds.
TEST(Browser, MnistTopDigitsMatchAPlainLoop) {
    const std::string mnist = sae_test::source_dir() + "/data/mnist10k/images-idx3-ubyte.gz";
    const std::string d = sae_test::temp_dir("browser-mnist") + "/run";
    auto r = run(kSae + " train --set data=" + mnist +
                 " --set max_samples=300 --set d_sae=16 --set max_iterations=10 --set threads=2 --out " + d);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = run(kSae + " report " + d + " --contexts 6");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const std::string html = sae_test::read_bytes(d + "/report.html");
    EXPECT_NE(html.find("id=\"filters\""), std::string::npos);
    const nlohmann::json j = feature_data(html);
    ASSERT_TRUE(j.is_object());
    EXPECT_TRUE(j["images"].get<bool>());
    ASSERT_EQ(j["L"].size(), 16u);
    const Matrix<float> X = dataset_read(mnist, 300);
    const std::vector<double> H = reference_codes(d, X.data.data(), X.rows);
    const double thr = j["thr"].get<double>();
    for (const auto& L : j["L"]) {
        const int64_t lat = L["j"];
        int64_t fires = 0;
        for (int64_t i = 0; i < X.rows; ++i) fires += H[size_t(i * 16 + lat)] > thr;
        EXPECT_EQ(L["f"].get<int64_t>(), fires) << lat;
        const auto want = reference_top(H, X.rows, 16, lat, 6);
        ASSERT_EQ(L["c"].size(), want.size());
        for (size_t c = 0; c < want.size(); ++c) {
            const int64_t got = L["c"][c][0];
            // Equal rows, or (float against double) a tie within 1e-6.
            if (got != want[c]) EXPECT_NEAR(H[size_t(got * 16 + lat)], H[size_t(want[c] * 16 + lat)], 1e-6) << lat << " " << c;
        }
        ASSERT_TRUE(L.contains("img"));
        EXPECT_EQ(L["iw"], 2 * (6 * 29 + 1));  // 6 digits of 28 pixels, shown at twice their size
    }
}

// The page for 4096 latents × 10 contexts of 33 tokens stays a few megabytes.
TEST(Browser, SizeFor4096LatentsIsReasonable) {
    Browser b;
    b.rows = 1000000;
    b.d_sae = 4096;
    b.positions = b.unembed = true;
    for (int t = 0; t < 256; ++t) b.vocab.push_back(std::string(1, char('a' + t % 26)));
    Rng rng(3);
    for (int64_t j = 0; j < 4096; ++j) {
        BrowserLatent L;
        L.index = j;
        L.fires = 1000 + j;
        L.density = double(L.fires) / 1e6;
        L.max_activation = float(1 + rng.uniform());
        L.hist.assign(24, 0);
        for (auto& h : L.hist) h = int64_t(rng.below(5000));
        for (int t = 0; t < 10; ++t) L.promoted.emplace_back(int32_t(rng.below(256)), float(rng.uniform())),
                                     L.suppressed.emplace_back(int32_t(rng.below(256)), -float(rng.uniform()));
        for (int c = 0; c < 10; ++c) {
            BrowserContext C;
            C.row = int64_t(rng.below(1000000));
            C.activation = float(rng.uniform());
            C.begin = C.row - 24;
            C.end = C.row + 9;
            for (int t = 0; t < 33; ++t) {
                C.tokens.push_back(int32_t(rng.below(256)));
                C.shade.push_back(uint8_t(rng.uniform() < 0.8 ? 0 : rng.below(256)));
            }
            L.top.push_back(std::move(C));
        }
        b.latents.push_back(std::move(L));
    }
    const std::string s = browser_section(b);
    std::printf("feature browser, 4096 latents x 10 contexts x 33 tokens: %.2f MB\n", double(s.size()) / 1e6);
    EXPECT_LT(s.size(), size_t(12e6));
}

}  // namespace

namespace {

// In a real browser the inline JS renders the first latent: its contexts as shaded spans with the
// top token outlined, the escaped vocab entry as text (no <b> element), and no console errors.
TEST(Browser, PageRendersInChromium) {
    const char* chromium = "/usr/bin/chromium";
    if (!fs::exists(chromium)) GTEST_SKIP() << "chromium is not installed (scripts/setup.sh installs it)";
    const Fixture& f = fixture();
    const std::string d = sae_test::temp_dir("browser-page") + "/run";
    fs::copy(f.run, d, fs::copy_options::recursive);
    ASSERT_EQ(run(kSae + " report " + d + " --harvest " + f.dir + "/harvest").exit_code, 0);
    auto r = run("timeout 120 " + std::string(chromium) +
                 " --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
                 " --disable-component-update --disable-sync --enable-logging=stderr --v=0 --user-data-dir=" +
                 sae_test::temp_dir("chromium") + " --dump-dom file://" + d + "/report.html");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err.find("Uncaught"), std::string::npos) << r.err;
    const size_t view = r.out.find("id=\"feature-view\"");
    ASSERT_NE(view, std::string::npos);
    const std::string v = r.out.substr(view, r.out.find("<script", view) - view);  // the rendered latent only
    const Browser b = browser_from_harvest(model_load(f.run), harvest_read(f.dir + "/harvest"), "blocks.1", {});
    EXPECT_NE(v.find("<h3>Latent " + std::to_string(b.latents[0].index) + "</h3>"), std::string::npos) << v.substr(0, 400);
    size_t tops = 0, spans = 0;
    for (size_t p = v.find("class=\"top\""); p != std::string::npos; p = v.find("class=\"top\"", p + 1)) ++tops;
    for (size_t p = v.find("<span style="); p != std::string::npos; p = v.find("<span style=", p + 1)) ++spans;
    EXPECT_EQ(tops, b.latents[0].top.size());
    size_t want_spans = 0;
    for (const auto& C : b.latents[0].top) want_spans += C.tokens.size() - 1;
    EXPECT_EQ(spans, want_spans);
    // The vocab entry "</script><b>" (among the promoted tokens: all 6 are listed) shows as text.
    EXPECT_NE(v.find("<b>promotes</b>"), std::string::npos);
    EXPECT_NE(v.find("&lt;/script&gt;&lt;b&gt;"), std::string::npos);
    EXPECT_EQ(v.find("</script><b>"), std::string::npos);
    // report.html#latent-J opens latent J (here the second most active)
    ASSERT_GE(b.latents.size(), 2u);
    const std::string J = std::to_string(b.latents[1].index);
    auto h = run("timeout 120 " + std::string(chromium) +
                 " --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
                 " --disable-component-update --disable-sync --enable-logging=stderr --v=0 --user-data-dir=" +
                 sae_test::temp_dir("chromium") + " --dump-dom 'file://" + d + "/report.html#latent-" + J + "'");
    ASSERT_EQ(h.exit_code, 0) << h.err;
    const size_t hv = h.out.find("id=\"feature-view\"");
    ASSERT_NE(hv, std::string::npos);
    const std::string w = h.out.substr(hv, h.out.find("<script", hv) - hv);
    EXPECT_NE(w.find("<h3>Latent " + J + "</h3>"), std::string::npos) << w.substr(0, 400);
}

}  // namespace
