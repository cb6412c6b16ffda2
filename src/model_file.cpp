#include "sae/model_file.hpp"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "sae/error.hpp"
#include "sae/io.hpp"

namespace sae {

std::string model_cfg_json(const Config& cfg, int64_t d_in) {
    auto j = nlohmann::ordered_json::parse(config_to_json(cfg));
    j["architecture"] = "classic";
    j["d_in"] = d_in;
    j["dtype"] = "float32";
    j["format_version"] = kModelFormatVersion;
    return j.dump(2) + "\n";
}

void model_save(const std::string& dir, const Config& cfg, const ModelSpec& spec,
                const ParamLayout& layout, const float* params) {
    std::vector<float> W_dec;  // tied: materialise W_encᵀ [d_sae, d_in]
    const float* dec = nullptr;
    if (spec.tied) {
        const float* W = params + layout.get("W_enc").offset;
        W_dec.resize(size_t(spec.d_sae * spec.d_in));
        for (int64_t k = 0; k < spec.d_in; ++k)
            for (int64_t j = 0; j < spec.d_sae; ++j) W_dec[size_t(j * spec.d_in + k)] = W[k * spec.d_sae + j];
        dec = W_dec.data();
    } else {
        dec = params + layout.get("W_dec").offset;
    }
    std::vector<TensorOut> t = {
        {"W_enc", {spec.d_in, spec.d_sae}, DType::f32, params + layout.get("W_enc").offset},
        {"b_enc", {spec.d_sae}, DType::f32, params + layout.get("b_enc").offset},
        {"W_dec", {spec.d_sae, spec.d_in}, DType::f32, dec},
        {"b_dec", {spec.d_in}, DType::f32, params + layout.get("b_dec").offset},
    };
    safetensors_write(dir + "/model.safetensors", t, {{"format", "sae"}});
    write_file_atomic(dir + "/cfg.json", model_cfg_json(cfg, spec.d_in));
}

SavedModel model_load(const std::string& dir) {
    const std::string cfg_path = dir + "/cfg.json";
    const std::string st_path = dir + "/model.safetensors";
    check(std::filesystem::exists(cfg_path),
          cfg_path + ": not found; --model must be a directory written by `sae train`");
    const std::string text = read_file(cfg_path);
    SavedModel m;
    m.cfg = config_from_json(text, cfg_path);
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(text);
    } catch (const std::exception&) {
        throw Error(cfg_path + ": invalid JSON; the model directory is damaged");
    }
    auto get_int = [&](const char* key) -> int64_t {
        check(j.contains(key) && j[key].is_number_integer(),
              cfg_path + ": missing or non-integer '" + key + "'; the model directory is damaged");
        return j[key].get<int64_t>();
    };
    const int64_t version = get_int("format_version");
    check(version <= kModelFormatVersion,
          cfg_path + ": format_version " + std::to_string(version) +
              " is newer than this sae understands (" + std::to_string(kModelFormatVersion) +
              "); upgrade sae");
    const int64_t d_in = get_int("d_in");
    check(d_in > 0 && d_in < (int64_t(1) << 31), cfg_path + ": d_in out of range");
    try {
        config_validate(m.cfg);
    } catch (const Error& e) {
        throw Error(cfg_path + ": " + e.what());
    }
    m.spec = config_model_spec(m.cfg, d_in);
    m.layout = model_layout(m.spec);

    SafeTensors st = safetensors_read(st_path);
    auto want = [&](const std::string& name, std::vector<int64_t> shape) -> const TensorIn& {
        auto it = st.tensors.find(name);
        check(it != st.tensors.end(), st_path + ": tensor '" + name + "' is missing");
        check(it->second.dtype == DType::f32,
              st_path + ": tensor '" + name + "' is " + dtype_name(it->second.dtype) + ", expected F32");
        auto shape_text = [](const std::vector<int64_t>& s) {
            std::string t = "[";
            for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
            return t + "]";
        };
        check(it->second.shape == shape, st_path + ": tensor '" + name + "' has shape " +
                                             shape_text(it->second.shape) + " but cfg.json implies " +
                                             shape_text(shape));
        return it->second;
    };
    m.params.assign(size_t(m.layout.total), 0.0f);
    auto put = [&](const std::string& name, const TensorIn& t) {
        std::copy(t.f32.begin(), t.f32.end(), m.params.begin() + m.layout.get(name).offset);
    };
    put("W_enc", want("W_enc", {d_in, m.spec.d_sae}));
    put("b_enc", want("b_enc", {m.spec.d_sae}));
    const TensorIn& W_dec = want("W_dec", {m.spec.d_sae, d_in});
    if (!m.spec.tied) put("W_dec", W_dec);
    put("b_dec", want("b_dec", {d_in}));
    return m;
}

}  // namespace sae
