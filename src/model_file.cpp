#include "sae/model_file.hpp"

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "sae/error.hpp"
#include "sae/io.hpp"

namespace sae {

nlohmann::ordered_json normalizer_to_json(const Normalizer& n) {
    nlohmann::ordered_json j = nlohmann::ordered_json::object();
    if (n.mode == Normalize::unit_range) {
        j["min"] = n.min;
        j["max"] = n.max;
    } else if (n.mode == Normalize::ufldl) {
        j["clip"] = n.clip;
    }
    return j;
}

Normalizer normalizer_from_cfg(const nlohmann::json& cfg, const std::string& normalize, const std::string& cfg_path) {
    Normalizer n;
    n.mode = normalize_parse(normalize);
    n.origin = cfg_path;
    if (n.mode == Normalize::none) return n;
    if (!cfg.contains("normalize_stats")) {
        n.fitted = false;  // saved before the statistics were stored
        return n;
    }
    const auto& s = cfg["normalize_stats"];
    auto number = [&](const char* key) {
        check(s.is_object() && s.contains(key) && s[key].is_number() && std::isfinite(s[key].get<double>()),
              cfg_path + ": normalize_stats needs a finite number '" + key + "' for normalize = \"" + normalize +
                  "\"; the model directory is damaged");
        return s[key].get<double>();
    };
    if (n.mode == Normalize::unit_range) {
        n.min = number("min");
        n.max = number("max");
        check(n.min <= n.max, cfg_path + ": normalize_stats has min > max; the model directory is damaged");
    } else {
        n.clip = number("clip");
        check(n.clip >= 0, cfg_path + ": normalize_stats has a negative clip; the model directory is damaged");
    }
    return n;
}

std::string model_cfg_json(const Config& cfg, const Objective& obj, double input_scale, const Normalizer& norm,
                           int64_t ranks) {
    auto j = nlohmann::ordered_json::parse(config_to_json(cfg));
    j["architecture"] = obj.architecture();
    j["d_in"] = obj.d_in();
    j["d_sae"] = obj.d_sae();
    j["dtype"] = "float32";
    j["input_scale"] = input_scale;  // already folded into the saved weights
    j["normalize_stats"] = normalizer_to_json(norm);
    j["ranks"] = ranks;
    j["format_version"] = kModelFormatVersion;
    return j.dump(2) + "\n";
}

void model_save(const std::string& dir, const Config& cfg, const Objective& obj, const float* params,
                double input_scale, const Normalizer& norm, int64_t ranks) {
    std::vector<std::vector<float>> scratch;
    const auto tensors = obj.export_tensors(params, input_scale, scratch);
    safetensors_write(dir + "/model.safetensors", tensors, {{"format", "sae"}});
    write_file_atomic(dir + "/cfg.json", model_cfg_json(cfg, obj, input_scale, norm, ranks));
}

void model_save(const std::string& dir, const SavedModel& m) {
    std::vector<std::vector<float>> scratch;
    const auto tensors = m.objective->export_tensors(m.params.data(), 1.0, scratch);
    safetensors_write(dir + "/model.safetensors", tensors, {{"format", "sae"}});
    write_file_atomic(dir + "/cfg.json", model_cfg_json(m.cfg, *m.objective, m.input_scale, m.norm, m.ranks));
}

std::vector<float> model_decoder_rows(const SavedModel& m) {
    std::vector<std::vector<float>> scratch;
    for (const auto& t : m.objective->export_tensors(m.params.data(), 1.0, scratch))
        if (t.name == "W_dec") {
            const float* p = static_cast<const float*>(t.data);
            return std::vector<float>(p, p + m.objective->d_sae() * m.objective->d_in());
        }
    throw Error("model: no W_dec tensor");
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
    check(d_in > 0 && d_in < (int64_t(1) << 31), cfg_path + ": d_in out of range; the model directory is damaged");
    if (j.contains("architecture") && j["architecture"].is_string()) {
        // cfg.json records the effective architecture; a sparsity naming it is consistent.
        const std::string arch = j["architecture"].get<std::string>();
        check(arch == config_architecture(m.cfg),
              cfg_path + ": architecture \"" + arch + "\" disagrees with the settings; the model directory is damaged");
    }
    try {
        config_validate(m.cfg);
        m.objective = objective_create(m.cfg, d_in);
    } catch (const Error& e) {
        throw Error(cfg_path + ": " + e.what());
    }
    try {
        m.norm = normalizer_from_cfg(j, config_normalize(m.cfg), cfg_path);
    } catch (const Error& e) {
        const std::string w = e.what();
        throw Error(w.rfind(cfg_path, 0) == 0 ? w : cfg_path + ": " + w);
    }
    if (j.contains("input_scale") && j["input_scale"].is_number()) m.input_scale = j["input_scale"].get<double>();
    if (j.contains("ranks") && j["ranks"].is_number_integer()) m.ranks = j["ranks"].get<int64_t>();
    check(get_int("d_sae") == m.objective->d_sae(), cfg_path + ": d_sae disagrees with the settings; the model directory is damaged");
    const SafeTensors st = safetensors_read(st_path);
    m.params.assign(size_t(m.objective->layout().total), 0.0f);
    m.objective->import_tensors(st.tensors, m.params.data(), st_path);
    return m;
}

}  // namespace sae
