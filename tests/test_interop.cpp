// What the field reports and exchanges: SAELens's reconstruction metrics in `evaluate` against a
// plain double computation; SAELens and sparsify exports read back by readers written from
// those projects' documented semantics, the round trip export → import, malformed imports.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>

#include "sae/data.hpp"
#include "sae/eval.hpp"
#include "sae/io.hpp"
#include "sae/modern.hpp"
#include "sae/objective.hpp"
#include "test_util.hpp"

using namespace sae;

namespace {

// The saved tensors of an objective (what model.safetensors holds), as double vectors.
std::map<std::string, std::vector<double>> saved(const Objective& obj, const float* params) {
    std::vector<std::vector<float>> scratch;
    std::map<std::string, std::vector<double>> out;
    for (const auto& t : obj.export_tensors(params, 1.0, scratch)) {
        int64_t n = 1;
        for (auto q : t.shape) n *= q;
        const float* d = static_cast<const float*>(t.data);
        out[t.name] = std::vector<double>(d, d + n);
    }
    return out;
}

// TopK (k per row, ties to the lower index) in double from the saved tensors: x̂ [m, d_in].
std::vector<double> topk_reconstruct(const std::map<std::string, std::vector<double>>& t, const Matrix<float>& X,
                                     int64_t d_sae, int64_t k) {
    const int64_t m = X.rows, d = X.cols;
    const auto &W = t.at("W_enc"), &b = t.at("b_enc"), &Wd = t.at("W_dec"), &bd = t.at("b_dec");
    std::vector<double> out(size_t(m * d));
    for (int64_t i = 0; i < m; ++i) {
        std::vector<double> pre(static_cast<size_t>(d_sae));
        for (int64_t j = 0; j < d_sae; ++j) {
            double z = b[size_t(j)];
            for (int64_t c = 0; c < d; ++c) z += (double(X(i, c)) - bd[size_t(c)]) * W[size_t(c * d_sae + j)];
            pre[size_t(j)] = z;
        }
        std::vector<int64_t> idx(static_cast<size_t>(d_sae));
        for (int64_t j = 0; j < d_sae; ++j) idx[size_t(j)] = j;
        std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t c) { return pre[size_t(a)] > pre[size_t(c)]; });
        for (int64_t c = 0; c < d; ++c) out[size_t(i * d + c)] = bd[size_t(c)];
        for (int64_t r = 0; r < k; ++r) {
            const int64_t j = idx[size_t(r)];
            const double h = std::max(0.0, pre[size_t(j)]);
            for (int64_t c = 0; c < d; ++c) out[size_t(i * d + c)] += h * Wd[size_t(j * d + c)];
        }
    }
    return out;
}

TEST(EvalMetrics, SaeLensReconstructionMetricsMatchPlainDouble) {
    Config cfg;
    cfg.architecture = "topk";
    cfg.d_sae = 24;
    cfg.k = 3;
    const int64_t d = 8, m = 50;
    auto obj = objective_create(cfg, d);
    std::vector<float> p(size_t(obj->layout().total));
    Rng rng(3);
    Matrix<float> X(m, d);
    for (auto& x : X.data) x = float(rng.uniform(-1, 2));
    obj->init(p.data(), rng, X);
    for (float& v : p) v += float(rng.uniform(-0.05, 0.05));
    auto be = backend_create("reference");
    const EvalResult r = evaluate(*be, *obj, cfg, p.data(), X, 0.0, 7);  // chunks of 7: sums across chunks

    const auto xh = topk_reconstruct(saved(*obj, p.data()), X, cfg.d_sae, cfg.k);
    // explained variance = 1 − Σᵢ‖xᵢ − x̂ᵢ‖² / Σᵢ‖xᵢ − x̄‖², x̄ the mean row; cos, l2 ratio per row
    // then averaged; relative reconstruction bias = Σ‖x̂ᵢ‖² / Σ xᵢ·x̂ᵢ.
    std::vector<double> mean(static_cast<size_t>(d), 0.0);
    for (int64_t i = 0; i < m; ++i)
        for (int64_t c = 0; c < d; ++c) mean[size_t(c)] += double(X(i, c)) / double(m);
    double res = 0, tot = 0, cos = 0, ratio = 0, hh_sum = 0, xd_sum = 0;
    for (int64_t i = 0; i < m; ++i) {
        double xx = 0, hh = 0, xd = 0;
        for (int64_t c = 0; c < d; ++c) {
            const double x = X(i, c), h = xh[size_t(i * d + c)];
            res += (x - h) * (x - h);
            tot += (x - mean[size_t(c)]) * (x - mean[size_t(c)]);
            xx += x * x, hh += h * h, xd += x * h;
        }
        cos += xd / std::sqrt(xx * hh) / double(m);
        ratio += std::sqrt(hh / xx) / double(m);
        hh_sum += hh, xd_sum += xd;
    }
    EXPECT_NEAR(r.explained_variance, 1 - res / tot, 1e-5);
    EXPECT_NEAR(r.explained_variance, 1 - r.fvu, 1e-15);
    EXPECT_NEAR(r.cossim, cos, 1e-5);
    EXPECT_NEAR(r.l2_ratio, ratio, 1e-5);
    EXPECT_NEAR(r.relative_reconstruction_bias, hh_sum / xd_sum, 1e-5);
    // Not trivially 1 (the model is random): the checks compare real numbers.
    EXPECT_LT(r.cossim, 0.999);
    EXPECT_GT(std::fabs(r.l2_ratio - 1), 1e-3);
}

// A zero input and a zero reconstruction: SAELens's guards (‖x‖ < 1e-4 divides by 1; norms
// clamped at 1e-8 in the cosine) keep every metric finite.
TEST(EvalMetrics, ZeroRowsStayFinite) {
    Stats st;
    st.reset(3, 2);
    const float X[6] = {0, 0, 0, 1, 2, 2}, Xh[6] = {0, 0, 0, 0, 0, 0}, H[4] = {0, 0, 0, 0};
    st.add(X, Xh, H, 2, 0.0);
    EXPECT_EQ(st.cossim(), 0.0);
    EXPECT_EQ(st.l2_ratio(), 0.0);
    EXPECT_EQ(st.relative_reconstruction_bias(), 0.0);
    EXPECT_TRUE(std::isfinite(st.explained_variance()));
}

// --- formats out and in ---------------------------------------------------------------------
using sae_test::run;
const std::string kSae = sae_test::sae_binary();

// Sparse non-negative data with known directions (sae synth), 16 dimensions.
std::string synth_data(const std::string& dir) {
    const auto r = run(kSae + " synth --out " + dir + "/d --features 24 --dim 16 --samples 400 --seed 2");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return dir + "/d/data.npy";
}

std::string train(const std::string& dir, const std::string& data, const std::string& arch, const std::string& extra = "") {
    const std::string out = dir + "/m-" + arch;
    const auto r = run(kSae + " train --set data=" + data + " --set normalize=none --set architecture=" + arch +
                       " --set d_sae=32 --set k=4 --set optimizer=adam --set lr=0.003 --set batch_size=64 --set epochs=2"
                       " --set seed=3 --set threads=1 --set l1_coefficient=0.01 --set l0_coefficient=0.001 " +
                       extra + " --out " + out);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return out;
}

Array encode(const std::string& model, const std::string& data, const std::string& out) {
    const auto r = run(kSae + " encode --model " + model + " --data " + data + " --out " + out);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return npy_read(out);
}

// SAELens's encoder as its documentation and SAE classes define it, from cfg.json and
// sae_weights.safetensors alone: sae_in = x − b_dec·apply_b_dec_to_input, then per architecture
//   standard: relu(sae_in @ W_enc + b_enc)
//   topk:     relu of the k largest of sae_in @ W_enc + b_enc, 0 elsewhere
//   jumprelu: pre = sae_in @ W_enc + b_enc; relu(pre)·(pre > threshold)
//   gated:    1[sae_in @ W_enc + b_gate > 0] · relu(sae_in @ (W_enc·exp(r_mag)) + b_mag)
std::vector<double> saelens_encode(const SafeTensors& st, const nlohmann::json& cfg, const float* x) {
    const int64_t d_in = cfg.at("d_in"), d_sae = cfg.at("d_sae");
    const std::string arch = cfg.at("architecture");
    auto T = [&](const char* n) -> const std::vector<float>& { return st.tensors.at(n).f32; };
    const bool sub = cfg.at("apply_b_dec_to_input").get<bool>();
    std::vector<double> in(static_cast<size_t>(d_in)), h(static_cast<size_t>(d_sae), 0.0);
    for (int64_t c = 0; c < d_in; ++c) in[size_t(c)] = double(x[c]) - (sub ? double(T("b_dec")[size_t(c)]) : 0.0);
    auto lin = [&](int64_t j, double scale, double bias) {
        double z = bias;
        for (int64_t c = 0; c < d_in; ++c) z += in[size_t(c)] * double(T("W_enc")[size_t(c * d_sae + j)]) * scale;
        return z;
    };
    if (arch == "gated") {
        for (int64_t j = 0; j < d_sae; ++j) {
            const double gate = lin(j, 1.0, T("b_gate")[size_t(j)]);
            const double mag = lin(j, std::exp(double(T("r_mag")[size_t(j)])), T("b_mag")[size_t(j)]);
            h[size_t(j)] = gate > 0 ? std::max(0.0, mag) : 0.0;
        }
        return h;
    }
    std::vector<double> pre(static_cast<size_t>(d_sae));
    for (int64_t j = 0; j < d_sae; ++j) pre[size_t(j)] = lin(j, 1.0, T("b_enc")[size_t(j)]);
    if (arch == "standard") {
        for (int64_t j = 0; j < d_sae; ++j) h[size_t(j)] = std::max(0.0, pre[size_t(j)]);
    } else if (arch == "topk") {
        std::vector<int64_t> idx(static_cast<size_t>(d_sae));
        for (int64_t j = 0; j < d_sae; ++j) idx[size_t(j)] = j;
        std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return pre[size_t(a)] > pre[size_t(b)]; });
        for (int64_t r = 0; r < cfg.at("k").get<int64_t>(); ++r)
            h[size_t(idx[size_t(r)])] = std::max(0.0, pre[size_t(idx[size_t(r)])]);
    } else {
        EXPECT_EQ(arch, "jumprelu");
        for (int64_t j = 0; j < d_sae; ++j)
            h[size_t(j)] = pre[size_t(j)] > T("threshold")[size_t(j)] ? std::max(0.0, pre[size_t(j)]) : 0.0;
    }
    return h;
}

// sparsify's encoder (SparseCoder.encode): relu(linear(x − b_dec, encoder.weight, encoder.bias)),
// then the k largest.
std::vector<double> sparsify_encode(const SafeTensors& st, const nlohmann::json& cfg, const float* x) {
    const int64_t d_in = cfg.at("d_in"), n = cfg.at("num_latents"), k = cfg.at("k");
    const auto& W = st.tensors.at("encoder.weight").f32;  // [n, d_in]
    const auto& b = st.tensors.at("encoder.bias").f32;
    const auto& bd = st.tensors.at("b_dec").f32;
    std::vector<double> pre(static_cast<size_t>(n)), h(static_cast<size_t>(n), 0.0);
    for (int64_t j = 0; j < n; ++j) {
        double z = b[size_t(j)];
        for (int64_t c = 0; c < d_in; ++c) z += (double(x[c]) - bd[size_t(c)]) * W[size_t(j * d_in + c)];
        pre[size_t(j)] = std::max(0.0, z);
    }
    std::vector<int64_t> idx(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) idx[size_t(j)] = j;
    std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t c) { return pre[size_t(a)] > pre[size_t(c)]; });
    for (int64_t r = 0; r < k; ++r) h[size_t(idx[size_t(r)])] = pre[size_t(idx[size_t(r)])];
    return h;
}

void expect_codes(const Array& H, const Array& X, int64_t d_sae,
                  const std::function<std::vector<double>(const float*)>& reader, const std::string& what) {
    const int64_t d = X.shape[1];
    int64_t checked = 0;
    for (int64_t i = 0; i < X.shape[0]; i += 7) {
        const auto h = reader(X.values.data() + i * d);
        for (int64_t j = 0; j < d_sae; ++j) ASSERT_NEAR(H.values[size_t(i * d_sae + j)], h[size_t(j)], 1e-4) << what << " row " << i << " latent " << j;
        ++checked;
    }
    EXPECT_GT(checked, 50);
}

class ExportSaeLens : public ::testing::TestWithParam<std::string> {};

TEST_P(ExportSaeLens, ReaderOfTheDocumentedSemanticsReproducesEncodeAndImportRoundTrips) {
    const std::string arch = GetParam();
    const std::string dir = sae_test::temp_dir("interop");
    const std::string data = synth_data(dir);
    const std::string model = train(dir, data, arch);
    const Array X = npy_read(data);
    const Array H = encode(model, data, dir + "/h.npy");
    const auto r = run(kSae + " export --model " + model + " --format saelens --out " + dir + "/sl");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto cfg = nlohmann::json::parse(sae_test::read_bytes(dir + "/sl/cfg.json"));
    for (const char* key : {"d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
                            "reshape_activations", "architecture", "metadata"})
        EXPECT_TRUE(cfg.contains(key)) << key;
    const ArchInfo& row = arch_info(arch_parse(arch));
    EXPECT_EQ(cfg["architecture"], row.threshold != ThresholdKind::none ? "jumprelu" : arch);
    EXPECT_EQ(cfg["normalize_activations"], "none");
    if (arch == "topk") EXPECT_EQ(cfg["k"], 4);
    const SafeTensors st = safetensors_read(dir + "/sl/sae_weights.safetensors");
    EXPECT_EQ(st.tensors.at("W_enc").shape, (std::vector<int64_t>{16, 32}));
    EXPECT_EQ(st.tensors.at("W_dec").shape, (std::vector<int64_t>{32, 16}));
    expect_codes(H, X, 32, [&](const float* x) { return saelens_encode(st, cfg, x); }, "saelens " + arch);

    // Back in: the imported model encodes the same.
    const auto im = run(kSae + " import --format saelens --from " + dir + "/sl --out " + dir + "/back");
    ASSERT_EQ(im.exit_code, 0) << im.err;
    const Array H2 = encode(dir + "/back", data, dir + "/h2.npy");
    ASSERT_EQ(H2.values.size(), H.values.size());
    for (size_t t = 0; t < H.values.size(); ++t) ASSERT_NEAR(H2.values[t], H.values[t], 1e-5) << arch << " " << t;
    EXPECT_EQ(run(kSae + " eval --model " + dir + "/back --data " + data).exit_code, 0);
}

std::vector<std::string> modern_arch_names() {
    std::vector<std::string> out;
    for (const ArchInfo& row : arch_table()) out.push_back(row.name);
    return out;
}
INSTANTIATE_TEST_SUITE_P(Architectures, ExportSaeLens, ::testing::ValuesIn(modern_arch_names()));

TEST(ExportSparsify, TopkReaderReproducesEncodeAndImportRoundTrips) {
    const std::string dir = sae_test::temp_dir("interop");
    const std::string data = synth_data(dir);
    const Array X = npy_read(data);
    // apply_b_dec_to_input off as well: sparsify always subtracts b_dec, so the bias is folded.
    for (const std::string extra : {"", "--set apply_b_dec_to_input=false"}) {
        SCOPED_TRACE(extra);
        const std::string model = train(dir, data, "topk", extra);
        const Array H = encode(model, data, dir + "/h.npy");
        ASSERT_EQ(run(kSae + " export --model " + model + " --format sparsify --out " + dir + "/sp").exit_code, 0);
        const auto cfg = nlohmann::json::parse(sae_test::read_bytes(dir + "/sp/cfg.json"));
        EXPECT_EQ(cfg["num_latents"], 32);
        EXPECT_EQ(cfg["k"], 4);
        EXPECT_EQ(cfg["d_in"], 16);
        const SafeTensors st = safetensors_read(dir + "/sp/sae.safetensors");
        EXPECT_EQ(st.tensors.at("encoder.weight").shape, (std::vector<int64_t>{32, 16}));
        EXPECT_EQ(st.tensors.at("W_dec").shape, (std::vector<int64_t>{32, 16}));
        expect_codes(H, X, 32, [&](const float* x) { return sparsify_encode(st, cfg, x); }, "sparsify");
        ASSERT_EQ(run(kSae + " import --format sparsify --from " + dir + "/sp --out " + dir + "/back").exit_code, 0);
        const Array H2 = encode(dir + "/back", data, dir + "/h2.npy");
        for (size_t t = 0; t < H.values.size(); ++t) ASSERT_NEAR(H2.values[t], H.values[t], 1e-5) << t;
    }
    // Architectures sparsify lacks are refused with one line.
    const std::string jr = train(dir, data, "jumprelu");
    sae_test::expect_clear_error(run(kSae + " export --model " + jr + " --format sparsify --out " + dir + "/x"), "TopK");
}

TEST(Export, RefusesNormalisedAndClassicModels) {
    const std::string dir = sae_test::temp_dir("interop");
    const std::string data = synth_data(dir);
    const std::string model = train(dir, data, "topk", "--set normalize=unit_range");
    sae_test::expect_clear_error(run(kSae + " export --model " + model + " --format saelens --out " + dir + "/x"),
                                 "normalize = \"unit_range\" cannot be exported");
    const auto c = run(kSae + " train --set data=" + data + " --set d_sae=8 --set max_iterations=2 --out " + dir + "/c");
    ASSERT_EQ(c.exit_code, 0) << c.err;
    sae_test::expect_clear_error(run(kSae + " export --model " + dir + "/c --format saelens --out " + dir + "/y"), "classic");
    sae_test::expect_clear_error(run(kSae + " export --model " + model + " --format onnx --out " + dir + "/z"), "saelens or sparsify");
}

// A SAELens directory written by hand, then broken one way at a time.
TEST(Import, MalformedAndUnsupportedDirectoriesGiveOneClearLine) {
    const std::string dir = sae_test::temp_dir("interop");
    const int64_t d_in = 4, d_sae = 6;
    std::vector<float> W(size_t(d_in * d_sae), 0.1f), b(size_t(d_sae), 0.0f), bd(size_t(d_in), 0.0f);
    auto write = [&](const std::string& name, nlohmann::json cfg, std::vector<int64_t> w_shape, bool with_b_enc = true) {
        const std::string d = dir + "/" + name;
        std::filesystem::create_directories(d);
        std::vector<TensorOut> ts = {{"W_enc", w_shape, DType::f32, W.data()},
                                     {"W_dec", {d_sae, d_in}, DType::f32, W.data()},
                                     {"b_dec", {d_in}, DType::f32, bd.data()}};
        if (with_b_enc) ts.push_back({"b_enc", {d_sae}, DType::f32, b.data()});
        safetensors_write(d + "/sae_weights.safetensors", ts);
        sae_test::write_bytes(d + "/cfg.json", cfg.dump());
        return d;
    };
    const nlohmann::json good = {{"architecture", "standard"}, {"d_in", d_in}, {"d_sae", d_sae}, {"dtype", "float32"},
                                 {"apply_b_dec_to_input", true}, {"normalize_activations", "none"}};
    auto import = [&](const std::string& d) { return run(kSae + " import --format saelens --from " + d + " --out " + d + "-out"); };
    const auto ok = import(write("good", good, {d_in, d_sae}));
    ASSERT_EQ(ok.exit_code, 0) << ok.err;

    auto without = [&](const char* key) {
        nlohmann::json c = good;
        c.erase(key);
        return c;
    };
    auto with = [&](const char* key, nlohmann::json v) {
        nlohmann::json c = good;
        c[key] = v;
        return c;
    };
    sae_test::expect_clear_error(import(write("no_d_sae", without("d_sae"), {d_in, d_sae})), "'d_sae'");
    sae_test::expect_clear_error(import(write("shape", good, {d_sae, d_in})), "tensor 'W_enc' has shape [6, 4], expected [4, 6]");
    sae_test::expect_clear_error(import(write("no_b_enc", good, {d_in, d_sae}, false)), "missing tensor 'b_enc'");
    sae_test::expect_clear_error(import(write("hook_z", with("reshape_activations", "hook_z"), {d_in, d_sae})), "hook_z");
    sae_test::expect_clear_error(import(write("tc", with("d_out", 9), {d_in, d_sae})), "transcoder");
    sae_test::expect_clear_error(import(write("tc2", with("architecture", "jumprelu_transcoder"), {d_in, d_sae})),
                                 "architecture \"jumprelu_transcoder\" is not supported");
    sae_test::expect_clear_error(import(write("ln", with("normalize_activations", "layer_norm"), {d_in, d_sae})), "layer_norm");
    sae_test::expect_clear_error(import(write("jr", with("architecture", "jumprelu"), {d_in, d_sae})), "missing tensor 'threshold'");
    sae_test::expect_clear_error(run(kSae + " import --format saelens --from " + dir + "/nowhere --out " + dir + "/o"), "not found");
    sae_test::write_bytes(dir + "/good/cfg.json", "{not json");
    sae_test::expect_clear_error(import(dir + "/good"), "invalid JSON");
    // sparsify's variants sae does not run.
    const std::string sp = dir + "/sp";
    std::filesystem::create_directories(sp);
    std::vector<float> enc(size_t(d_sae * d_in), 0.1f);
    safetensors_write(sp + "/sae.safetensors", {{"encoder.weight", {d_sae, d_in}, DType::f32, enc.data()},
                                               {"encoder.bias", {d_sae}, DType::f32, b.data()},
                                               {"W_dec", {d_sae, d_in}, DType::f32, enc.data()},
                                               {"b_dec", {d_in}, DType::f32, bd.data()}});
    const nlohmann::json spc = {{"d_in", d_in}, {"num_latents", d_sae}, {"k", 2}, {"expansion_factor", 0}, {"normalize_decoder", true}};
    auto sp_import = [&](nlohmann::json c) {
        sae_test::write_bytes(sp + "/cfg.json", c.dump());
        return run(kSae + " import --format sparsify --from " + sp + " --out " + dir + "/sp-out");
    };
    ASSERT_EQ(sp_import(spc).exit_code, 0);
    nlohmann::json t = spc;
    t["transcode"] = true;
    sae_test::expect_clear_error(sp_import(t), "transcoder");
    t = spc;
    t["skip_connection"] = true;
    sae_test::expect_clear_error(sp_import(t), "skip_connection");
    t = spc;
    t.erase("k");
    sae_test::expect_clear_error(sp_import(t), "'k'");
}

}  // namespace
