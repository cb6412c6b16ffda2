#include "sae/interop.hpp"

#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <vector>

#include "sae/error.hpp"
#include "sae/io.hpp"
#include "sae/model_file.hpp"
#include "sae/modern.hpp"

namespace sae {

namespace {

using Json = nlohmann::ordered_json;

// The saved tensors of a loaded model by name (float32 copies).
std::map<std::string, std::vector<float>> saved_tensors(const SavedModel& m) {
    std::vector<std::vector<float>> scratch;
    std::map<std::string, std::vector<float>> out;
    for (const auto& t : m.objective->export_tensors(m.params.data(), 1.0, scratch)) {
        int64_t n = 1;
        for (auto q : t.shape) n *= q;
        const float* d = static_cast<const float*>(t.data);
        out[t.name] = std::vector<float>(d, d + n);
    }
    return out;
}

// [r, c] row-major → [c, r].
std::vector<float> transpose(const std::vector<float>& a, int64_t r, int64_t c) {
    std::vector<float> t(a.size());
    for (int64_t i = 0; i < r; ++i)
        for (int64_t j = 0; j < c; ++j) t[size_t(j * r + i)] = a[size_t(i * c + j)];
    return t;
}

void write_json(const std::string& path, const Json& j) { write_file_atomic(path, j.dump(2) + "\n"); }

// --- export ---------------------------------------------------------------------------------
// SAELens's name for how one of ours runs at inference.
std::string saelens_architecture(const ArchInfo& row) {
    if (row.threshold != ThresholdKind::none) return "jumprelu";  // batchtopk (and its kin) as SAELens saves them
    return row.name;                                             // standard, topk, gated
}

void export_saelens(const SavedModel& m, const ArchInfo& row, const std::string& out) {
    const int64_t d_in = m.objective->d_in(), d_sae = m.objective->d_sae();
    auto t = saved_tensors(m);
    Json cfg;
    cfg["architecture"] = saelens_architecture(row);
    cfg["d_in"] = d_in;
    cfg["d_sae"] = d_sae;
    cfg["dtype"] = "float32";
    cfg["device"] = "cpu";
    cfg["apply_b_dec_to_input"] = m.cfg.apply_b_dec_to_input;
    cfg["normalize_activations"] = "none";  // a training input scale is folded into the weights
    cfg["reshape_activations"] = "none";
    if (row.arch == Arch::topk) {
        cfg["k"] = m.cfg.k;
        cfg["rescale_acts_by_decoder_norm"] = false;
    }
    // No hook or model name is known to sae: the metadata says where the model came from.
    cfg["metadata"] = Json{{"sae_architecture", row.name}, {"exported_by", "sae export"}};
    std::vector<TensorOut> ts;
    auto add = [&](const std::string& name, std::vector<int64_t> shape) {
        check(t.count(name) == 1, "sae export: the model lacks tensor '" + name + "'");
        ts.push_back({name, std::move(shape), DType::f32, t.at(name).data()});
    };
    add("W_enc", {d_in, d_sae});
    const bool gated = std::string(row.name) == "gated";
    if (!gated) add("b_enc", {d_sae});
    add("W_dec", {d_sae, d_in});
    add("b_dec", {d_in});
    if (row.threshold != ThresholdKind::none) add("threshold", {d_sae});
    if (gated)
        for (const char* name : {"b_gate", "r_mag", "b_mag"}) add(name, {d_sae});
    safetensors_write(out + "/sae_weights.safetensors", ts);
    write_json(out + "/cfg.json", cfg);
}

void export_sparsify(const SavedModel& m, const ArchInfo& row, const std::string& out) {
    const int64_t d_in = m.objective->d_in(), d_sae = m.objective->d_sae();
    check(row.arch == Arch::topk,
          "sae export: sparsify holds TopK SAEs only; architecture \"" + std::string(row.name) +
              "\" exports to SAELens (--format saelens)");
    auto t = saved_tensors(m);
    // sparsify always encodes x − b_dec; without apply_b_dec_to_input fold b_dec·W_enc into the
    // encoder bias (exact up to float rounding: pre = (x − b_dec)·W_enc + b_enc + b_dec·W_enc).
    std::vector<float> bias = t.at("b_enc");
    if (!m.cfg.apply_b_dec_to_input)
        for (int64_t j = 0; j < d_sae; ++j) {
            double s = bias[size_t(j)];
            for (int64_t c = 0; c < d_in; ++c) s += double(t.at("b_dec")[size_t(c)]) * t.at("W_enc")[size_t(c * d_sae + j)];
            bias[size_t(j)] = float(s);
        }
    const std::vector<float> enc = transpose(t.at("W_enc"), d_in, d_sae);  // [d_sae, d_in]
    Json cfg;
    cfg["activation"] = "topk";
    cfg["expansion_factor"] = d_sae % d_in == 0 ? d_sae / d_in : 0;
    cfg["normalize_decoder"] = m.cfg.decoder_unit_norm;
    cfg["num_latents"] = d_sae;
    cfg["k"] = m.cfg.k;
    cfg["multi_topk"] = false;
    cfg["skip_connection"] = false;
    cfg["transcode"] = false;
    cfg["d_in"] = d_in;
    safetensors_write(out + "/sae.safetensors", {{"encoder.weight", {d_sae, d_in}, DType::f32, enc.data()},
                                                 {"encoder.bias", {d_sae}, DType::f32, bias.data()},
                                                 {"W_dec", {d_sae, d_in}, DType::f32, t.at("W_dec").data()},
                                                 {"b_dec", {d_in}, DType::f32, t.at("b_dec").data()}});
    write_json(out + "/cfg.json", cfg);
}

// --- import ---------------------------------------------------------------------------------
struct Reader {
    std::string dir, cfg_path, st_path;
    nlohmann::json cfg;
    SafeTensors st;

    Reader(const std::string& d, const std::string& weights) : dir(d), cfg_path(d + "/cfg.json"), st_path(d + "/" + weights) {
        check(std::filesystem::exists(cfg_path), cfg_path + ": not found; --from must be the directory holding cfg.json and " + weights);
        check(std::filesystem::exists(st_path), st_path + ": not found; --from must be the directory holding cfg.json and " + weights);
        try {
            cfg = nlohmann::json::parse(read_file(cfg_path));
        } catch (const nlohmann::json::exception&) {
            throw Error(cfg_path + ": invalid JSON");
        }
        check(cfg.is_object(), cfg_path + ": not a JSON object");
        st = safetensors_read(st_path);
    }
    int64_t integer(const char* key) const {
        check(cfg.contains(key) && cfg[key].is_number_integer() && cfg[key].get<int64_t>() > 0,
              cfg_path + ": missing or non-positive integer '" + key + "'");
        return cfg[key].get<int64_t>();
    }
    std::string text(const char* key, const std::string& dflt) const {
        if (!cfg.contains(key) || cfg[key].is_null()) return dflt;
        check(cfg[key].is_string(), cfg_path + ": '" + key + "' must be a string");
        return cfg[key].get<std::string>();
    }
    bool flag(const char* key, bool dflt) const {
        if (!cfg.contains(key) || cfg[key].is_null()) return dflt;
        check(cfg[key].is_boolean(), cfg_path + ": '" + key + "' must be true or false");
        return cfg[key].get<bool>();
    }
    // A tensor of the given shape as float32 values (F32, F16, BF16, F64 files).
    std::vector<float> tensor(const std::string& name, const std::vector<int64_t>& shape) const {
        const auto it = st.tensors.find(name);
        check(it != st.tensors.end(), st_path + ": missing tensor '" + name + "'");
        const TensorIn& t = it->second;
        check(t.dtype == DType::f32 || t.dtype == DType::f16 || t.dtype == DType::bf16 || t.dtype == DType::f64,
              st_path + ": tensor '" + name + "' is " + dtype_name(t.dtype) + "; floating-point tensors expected");
        check(t.shape == shape, st_path + ": tensor '" + name + "' has shape " + shape_text(t.shape) + ", expected " +
                                    shape_text(shape));
        for (float v : t.f32) check(std::isfinite(v), st_path + ": tensor '" + name + "' holds a non-finite value");
        return t.f32;
    }
};

// The tensors in our names, ready for Objective::import_tensors.
struct Imported {
    Config cfg;
    int64_t d_in = 0;
    std::map<std::string, std::vector<float>> tensors;
};

Imported read_saelens(const std::string& from) {
    Reader r(from, "sae_weights.safetensors");
    const std::string arch = r.text("architecture", "standard");
    check(arch == "standard" || arch == "topk" || arch == "jumprelu" || arch == "gated",
          r.cfg_path + ": architecture \"" + arch + "\" is not supported (supported: standard, topk, jumprelu, gated)");
    check(!r.cfg.contains("d_out") || r.cfg["d_out"] == r.cfg["d_in"],
          r.cfg_path + ": a transcoder (d_out differs from d_in) is not supported");
    const std::string reshape = r.text("reshape_activations", "none");
    const std::string hook = r.cfg.contains("metadata") && r.cfg["metadata"].is_object() && r.cfg["metadata"].contains("hook_name") &&
                                     r.cfg["metadata"]["hook_name"].is_string()
                                 ? r.cfg["metadata"]["hook_name"].get<std::string>()
                                 : r.text("hook_name", "");
    check(reshape == "none" && !(reshape == "none" && !r.cfg.contains("reshape_activations") && hook.size() >= 6 &&
                                 hook.compare(hook.size() - 6, 6, "hook_z") == 0),
          r.cfg_path + ": hook_z reshaping (attention heads concatenated) is not supported");
    const std::string norm = r.text("normalize_activations", "none");
    check(norm == "none", r.cfg_path + ": normalize_activations = \"" + norm +
                              "\" (applied at run time) is not supported; only \"none\" (raw activations) is");
    check(!r.flag("rescale_acts_by_decoder_norm", false),
          r.cfg_path + ": rescale_acts_by_decoder_norm = true is not supported");
    Imported im;
    im.d_in = r.integer("d_in");
    const int64_t d_sae = r.integer("d_sae"), d_in = im.d_in;
    Config& c = im.cfg;
    c.architecture = arch;
    c.d_sae = d_sae;
    c.normalize = "none";
    c.apply_b_dec_to_input = r.flag("apply_b_dec_to_input", true);
    if (arch == "topk") {
        c.k = r.integer("k");
        check(c.k <= d_sae, r.cfg_path + ": k exceeds d_sae");
    }
    auto& t = im.tensors;
    t["W_enc"] = r.tensor("W_enc", {d_in, d_sae});
    t["W_dec"] = r.tensor("W_dec", {d_sae, d_in});
    t["b_dec"] = r.tensor("b_dec", {d_in});
    if (arch == "gated") {
        for (const char* name : {"b_gate", "r_mag", "b_mag"}) t[name] = r.tensor(name, {d_sae});
    } else {
        t["b_enc"] = r.tensor("b_enc", {d_sae});
    }
    if (arch == "jumprelu") t["threshold"] = r.tensor("threshold", {d_sae});
    return im;
}

Imported read_sparsify(const std::string& from) {
    Reader r(from, "sae.safetensors");
    check(!r.flag("transcode", false), r.cfg_path + ": a transcoder (transcode = true) is not supported");
    check(!r.flag("skip_connection", false), r.cfg_path + ": skip_connection = true (W_skip) is not supported");
    const std::string act = r.text("activation", "topk");
    check(act == "topk", r.cfg_path + ": activation = \"" + act + "\" is not supported; only \"topk\" is");
    Imported im;
    im.d_in = r.integer("d_in");
    const int64_t d_in = im.d_in;
    int64_t d_sae = r.cfg.contains("num_latents") && r.cfg["num_latents"].is_number_integer() ? r.cfg["num_latents"].get<int64_t>() : 0;
    if (d_sae == 0) d_sae = d_in * r.integer("expansion_factor");  // sparsify: num_latents 0 → d_in × expansion
    check(d_sae > 0, r.cfg_path + ": num_latents must be positive");
    Config& c = im.cfg;
    c.architecture = "topk";
    c.d_sae = d_sae;
    c.k = r.integer("k");
    check(c.k <= d_sae, r.cfg_path + ": k exceeds num_latents");
    c.normalize = "none";
    c.apply_b_dec_to_input = true;  // sparsify encodes x − b_dec
    c.decoder_unit_norm = r.flag("normalize_decoder", true);
    auto& t = im.tensors;
    t["W_enc"] = transpose(r.tensor("encoder.weight", {d_sae, d_in}), d_sae, d_in);
    t["b_enc"] = r.tensor("encoder.bias", {d_sae});
    t["W_dec"] = r.tensor("W_dec", {d_sae, d_in});
    t["b_dec"] = r.tensor("b_dec", {d_in});
    return im;
}

}  // namespace

ExternalFormat external_format_parse(const std::string& name) {
    if (name == "saelens") return ExternalFormat::saelens;
    if (name == "sparsify") return ExternalFormat::sparsify;
    throw Error("unknown format '" + name + "'; use saelens or sparsify");
}

void model_export(const std::string& model_dir, ExternalFormat format, const std::string& out) {
    const SavedModel m = model_load(model_dir);
    const std::string arch = m.objective->architecture();
    check(arch != "classic", model_dir + ": the classic autoencoder (sigmoid units) has no SAELens or sparsify counterpart");
    check(m.norm.mode == Normalize::none,
          model_dir + ": normalize = \"" + normalize_name(m.norm.mode) +
              "\" cannot be exported: SAELens and sparsify take raw activations; train with normalize = none");
    const ArchInfo& row = arch_info(arch_parse(arch));
    std::filesystem::create_directories(out);
    ensure_writable_dir(out);
    if (format == ExternalFormat::saelens) export_saelens(m, row, out);
    else export_sparsify(m, row, out);
}

void model_import(const std::string& from, ExternalFormat format, const std::string& out) {
    Imported im = format == ExternalFormat::saelens ? read_saelens(from) : read_sparsify(from);
    config_validate(im.cfg);
    auto obj = objective_create(im.cfg, im.d_in);
    std::map<std::string, TensorIn> tensors;
    for (auto& [name, v] : im.tensors) {
        TensorIn t;
        t.dtype = DType::f32;
        t.f32 = std::move(v);
        t.shape = {int64_t(t.f32.size())};
        for (const auto& view : obj->layout().views)
            if (view.name == name) t.shape = view.shape;
        if (name == "threshold") t.shape = {obj->d_sae()};
        tensors[name] = std::move(t);
    }
    std::vector<float> params(size_t(obj->layout().total), 0.0f);
    obj->import_tensors(tensors, params.data(), from);
    std::filesystem::create_directories(out);
    ensure_writable_dir(out);
    Normalizer none;
    model_save(out, im.cfg, *obj, params.data(), 1.0, none);
    write_file_atomic(out + "/source_cfg.json", read_file(from + "/cfg.json"));
}

}  // namespace sae
