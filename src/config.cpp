#include "sae/config.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "sae/backend.hpp"
#include "sae/error.hpp"

namespace sae {

namespace {
constexpr double kMax = 1e308;

std::vector<OptionSpec> build_table() {
    using C = Config;
    return {
        {"data", &C::data, "data", "training data: IDX (raw or .gz) or .npy [N, ...]; chosen by content"},
        {"normalize", &C::normalize, "data", "input normalisation", 0, 0, {"none", "unit_range", "ufldl"}},
        {"max_samples", &C::max_samples, "data", "use only the first N samples (0 = all)", 0, kMax},
        {"d_sae", &C::d_sae, "model", "number of hidden units (latents)", 1, 1 << 24},
        {"encoder_activation", &C::encoder_activation, "model", "encoder activation f", 0, 0, {"sigmoid", "relu", "tanh"}},
        {"decoder_activation", &C::decoder_activation, "model", "decoder activation g", 0, 0, {"sigmoid", "linear"}},
        {"tied", &C::tied, "model", "tie weights: W_dec = W_enc^T"},
        {"sparsity", &C::sparsity, "cost", "sparsity penalty", 0, 0, {"kl", "l1", "none"}},
        {"rho", &C::rho, "cost", "kl: target mean activation, in (0,1)", 1e-12, 1 - 1e-12},
        {"beta", &C::beta, "cost", "kl: weight of the sparsity term", 0, kMax},
        {"weight_decay", &C::weight_decay, "cost", "lambda: weight of (1/2)(|W_enc|^2 + |W_dec|^2)", 0, kMax},
        {"l1_coefficient", &C::l1_coefficient, "cost", "l1: weight of (1/m) sum |h|", 0, kMax},
        {"optimizer", &C::optimizer, "optimiser", "lbfgs is full-batch; the others use minibatches", 0, 0, {"lbfgs", "adam", "sgd", "rmsprop"}},
        {"lr", &C::lr, "optimiser", "base learning rate (adam, sgd, rmsprop)", 0, kMax},
        {"momentum", &C::momentum, "optimiser", "sgd momentum", 0, 1},
        {"adam_beta1", &C::adam_beta1, "optimiser", "adam first-moment decay", 0, 1 - 1e-12},
        {"adam_beta2", &C::adam_beta2, "optimiser", "adam second-moment decay", 0, 1 - 1e-12},
        {"eps", &C::eps, "optimiser", "adam/rmsprop denominator epsilon", 0, 1},
        {"rmsprop_decay", &C::rmsprop_decay, "optimiser", "rmsprop squared-gradient decay", 0, 1 - 1e-12},
        {"batch_size", &C::batch_size, "optimiser", "minibatch size (adam, sgd, rmsprop)", 1, 1 << 24},
        {"epochs", &C::epochs, "optimiser", "passes over the data (adam, sgd, rmsprop)", 1, 1e9},
        {"max_iterations", &C::max_iterations, "optimiser", "lbfgs iterations", 1, 1e9},
        {"lr_schedule", &C::lr_schedule, "optimiser", "learning-rate schedule after warm-up", 0, 0, {"constant", "step", "cosine"}},
        {"warmup_steps", &C::warmup_steps, "optimiser", "linear learning-rate warm-up steps", 0, 1e12},
        {"lr_step_size", &C::lr_step_size, "optimiser", "step schedule: steps between decays", 1, 1e12},
        {"lr_gamma", &C::lr_gamma, "optimiser", "step schedule: decay factor", 0, 1},
        {"min_lr", &C::min_lr, "optimiser", "cosine schedule: final learning rate", 0, kMax},
        {"seed", &C::seed, "run", "random seed (initialisation, shuffling)", 0, 9.2e18},
        {"threads", &C::threads, "run", "threads (0 = all cores)", 0, 4096},
        {"backend", &C::backend, "run", "matrix-product backend", 0, 0, {"onednn", "reference"}},
        {"log_every", &C::log_every, "run", "steps between metrics lines", 1, 1e12},
        {"checkpoint_every", &C::checkpoint_every, "run", "steps between checkpoints", 1, 1e12},
        {"active_threshold", &C::active_threshold, "run", "a latent is active when h > this (negative = auto: 0 for relu, 0.5 otherwise)", -1, kMax},
    };
}

size_t edit_distance(const std::string& a, const std::string& b) {
    std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        cur[0] = i;
        for (size_t j = 1; j <= b.size(); ++j)
            cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
        std::swap(prev, cur);
    }
    return prev[b.size()];
}

std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
}

std::string range_text(const OptionSpec& o) {
    std::ostringstream os;
    os << "[" << (o.min <= -1e307 ? std::string("-inf") : (std::ostringstream() << o.min).str()) << ", "
       << (o.max >= 1e307 ? std::string("inf") : (std::ostringstream() << o.max).str()) << "]";
    return os.str();
}

std::string trim(const std::string& s) {
    const auto b = s.find_first_not_of(" \t");
    if (b == std::string::npos) return "";
    const auto e = s.find_last_not_of(" \t");
    return s.substr(b, e - b + 1);
}
}  // namespace

const std::vector<OptionSpec>& option_table() {
    static const std::vector<OptionSpec> table = build_table();
    return table;
}

const OptionSpec* option_find(const std::string& key) {
    for (const auto& o : option_table())
        if (key == o.name) return &o;
    return nullptr;
}

std::string option_nearest(const std::string& key) {
    std::string best;
    size_t best_d = SIZE_MAX;
    for (const auto& o : option_table()) {
        const size_t d = edit_distance(key, o.name);
        if (d < best_d) { best_d = d; best = o.name; }
    }
    return best;
}

static const OptionSpec& find_or_suggest(const std::string& key) {
    const OptionSpec* o = option_find(key);
    check(o != nullptr, "unknown setting '" + key + "'; did you mean '" + option_nearest(key) +
                            "'? (sae train --help lists every setting)");
    return *o;
}

void config_set(Config& cfg, const std::string& key, const std::string& raw) {
    const OptionSpec& o = find_or_suggest(key);
    const std::string value = trim(raw);
    auto bad = [&](const std::string& expected) {
        return Error("setting '" + key + "': '" + value + "' is not " + expected);
    };
    std::visit(
        [&](auto member) {
            using T = std::remove_cvref_t<decltype(cfg.*member)>;
            if constexpr (std::is_same_v<T, std::string>) {
                std::string v = value;
                if (v.size() >= 2 && (v.front() == '"' || v.front() == '\'') && v.back() == v.front())
                    v = v.substr(1, v.size() - 2);
                cfg.*member = v;
            } else if constexpr (std::is_same_v<T, bool>) {
                if (value == "true" || value == "1") cfg.*member = true;
                else if (value == "false" || value == "0") cfg.*member = false;
                else throw bad("a boolean (true or false)");
            } else if constexpr (std::is_same_v<T, int64_t>) {
                int64_t v = 0;
                auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
                if (ec != std::errc() || p != value.data() + value.size() || value.empty())
                    throw bad("an integer");
                cfg.*member = v;
            } else {
                char* end = nullptr;
                const double v = std::strtod(value.c_str(), &end);
                if (value.empty() || end != value.c_str() + value.size() || !std::isfinite(v))
                    throw bad("a finite number");
                cfg.*member = v;
            }
        },
        o.member);
}

void config_apply_override(Config& cfg, const std::string& assignment) {
    const auto eq = assignment.find('=');
    check(eq != std::string::npos && eq > 0,
          "--set '" + assignment + "': expected key=value, e.g. --set beta=3");
    config_set(cfg, trim(assignment.substr(0, eq)), assignment.substr(eq + 1));
}

Config config_load_toml(const std::string& path) {
    toml::table tbl;
    try {
        tbl = toml::parse_file(path);
    } catch (const toml::parse_error& e) {
        std::ostringstream os;
        os << path << ":" << e.source().begin.line << ":" << e.source().begin.column
           << ": invalid TOML: " << e.description() << "; fix the file (keys are flat: key = value)";
        throw Error(os.str());
    }
    Config cfg;
    for (auto&& [k, node] : tbl) {
        const std::string key(k.str());
        const OptionSpec* o = option_find(key);
        check(o != nullptr, path + ": unknown setting '" + key + "'; did you mean '" +
                                option_nearest(key) + "'?");
        std::string text;
        if (auto s = node.value_exact<std::string>()) text = *s;
        else if (auto i = node.value_exact<int64_t>()) text = std::to_string(*i);
        else if (auto d = node.value_exact<double>()) {
            std::ostringstream os;
            os.precision(17);
            os << *d;
            text = os.str();
        } else if (auto b = node.value_exact<bool>()) text = *b ? "true" : "false";
        else throw Error(path + ": setting '" + key + "' must be a single value (string, number or boolean), not a table or array");
        const bool is_string = std::holds_alternative<std::string Config::*>(o->member);
        check(is_string == node.is_string(),
              path + ": setting '" + key + "' must be " + (is_string ? "a string in quotes" : "a number or boolean, not a string"));
        try {
            config_set(cfg, key, text);
        } catch (const Error& e) {
            throw Error(path + ": " + e.what());
        }
    }
    if (!cfg.data.empty() && tbl.contains("data")) {
        namespace fs = std::filesystem;
        fs::path p(cfg.data);
        if (p.is_relative()) cfg.data = (fs::path(path).parent_path() / p).lexically_normal().string();
    }
    return cfg;
}

void config_validate(const Config& cfg) {
    for (const auto& o : option_table()) {
        std::visit(
            [&](auto member) {
                using T = std::remove_cvref_t<decltype(cfg.*member)>;
                const auto& v = cfg.*member;
                if constexpr (std::is_same_v<T, std::string>) {
                    if (!o.choices.empty() &&
                        std::find(o.choices.begin(), o.choices.end(), v) == o.choices.end())
                        throw Error("setting '" + std::string(o.name) + "' = '" + v +
                                    "' is not valid; use one of: " + join(o.choices));
                } else if constexpr (!std::is_same_v<T, bool>) {
                    if (!(double(v) >= o.min && double(v) <= o.max)) {
                        std::ostringstream os;
                        os << "setting '" << o.name << "' = " << v << " is out of range; allowed "
                           << range_text(o);
                        throw Error(os.str());
                    }
                }
            },
            o.member);
    }
    check(!cfg.data.empty(), "setting 'data' is empty; give the path of an IDX or .npy file");
    if (cfg.sparsity == "kl" && cfg.encoder_activation != "sigmoid")
        throw Error("sparsity = \"kl\" needs activations in (0,1) but encoder_activation = \"" +
                    cfg.encoder_activation + "\"; set encoder_activation = \"sigmoid\" or sparsity = \"l1\"");
}

std::string config_to_json(const Config& cfg, int indent) {
    nlohmann::ordered_json j;
    for (const auto& o : option_table())
        std::visit([&](auto member) { j[o.name] = cfg.*member; }, o.member);
    return j.dump(indent);
}

Config config_from_json(const std::string& text, const std::string& what) {
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(text);
    } catch (const std::exception& e) {
        throw Error(what + ": invalid JSON (" + std::string(e.what()) + "); the model directory is damaged");
    }
    check(j.is_object(), what + ": expected a JSON object; the model directory is damaged");
    Config cfg;
    for (const auto& o : option_table()) {
        if (!j.contains(o.name)) continue;
        const auto& v = j[o.name];
        try {
            std::visit(
                [&](auto member) {
                    using T = std::remove_cvref_t<decltype(cfg.*member)>;
                    cfg.*member = v.get<T>();
                },
                o.member);
        } catch (const nlohmann::json::exception&) {
            throw Error(what + ": setting '" + std::string(o.name) + "' has the wrong type (" +
                        v.dump() + "); the model directory is damaged");
        }
    }
    return cfg;
}

std::string config_help() {
    std::ostringstream os;
    const Config def;
    std::string group;
    for (const auto& o : option_table()) {
        if (group != o.group) {
            group = o.group;
            os << "\n  [" << group << "]\n";
        }
        std::string d;
        std::visit(
            [&](auto member) {
                std::ostringstream v;
                using T = std::remove_cvref_t<decltype(def.*member)>;
                if constexpr (std::is_same_v<T, bool>) v << (def.*member ? "true" : "false");
                else v << def.*member;
                d = v.str();
            },
            o.member);
        os << "    " << o.name << std::string(size_t(std::max<int>(1, 20 - int(std::string(o.name).size()))), ' ')
           << o.help << " (default: " << d;
        if (!o.choices.empty()) os << "; one of: " << join(o.choices);
        os << ")\n";
    }
    return os.str();
}

ModelSpec config_model_spec(const Config& cfg, int64_t d_in) {
    ModelSpec s;
    s.d_in = d_in;
    s.d_sae = cfg.d_sae;
    s.encoder = activation_parse(cfg.encoder_activation);
    s.decoder = activation_parse(cfg.decoder_activation);
    s.tied = cfg.tied;
    return s;
}

CostSpec config_cost_spec(const Config& cfg) {
    return CostSpec{sparsity_parse(cfg.sparsity), cfg.rho, cfg.beta, cfg.weight_decay, cfg.l1_coefficient};
}

OptimizerHyper config_optimizer_hyper(const Config& cfg) {
    OptimizerHyper h;
    h.momentum = cfg.momentum;
    h.beta1 = cfg.adam_beta1;
    h.beta2 = cfg.adam_beta2;
    h.eps = cfg.eps;
    h.rms_decay = cfg.rmsprop_decay;
    return h;
}

double config_active_threshold(const Config& cfg) {
    if (cfg.active_threshold >= 0) return cfg.active_threshold;
    return cfg.encoder_activation == "relu" ? 0.0 : 0.5;
}

}  // namespace sae
