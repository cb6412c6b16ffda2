#include "sae/config.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string_view>

#include "sae/backend.hpp"
#include "sae/error.hpp"
#include "sae/io.hpp"

namespace sae {

namespace {
constexpr double kMax = 1e308;

std::vector<OptionSpec> build_table() {
    using C = Config;
    return {
        {"data", &C::data, "data", "training data: IDX (raw or .gz) or .npy [N, ...]; chosen by content"},
        {"normalize", &C::normalize, "data", "input normalisation, its statistics fitted once on the training data and saved with the model (docs/formats.md); auto: unit_range for classic, none for the modern architectures", 0, 0, {"auto", "none", "unit_range", "ufldl"}},
        {"max_samples", &C::max_samples, "data", "use only the first N samples (0 = all)", 0, kMax},
        {"shuffle_buffer", &C::shuffle_buffer, "data", "> 0: stream .npy shards (data may be a glob) through a shuffle buffer of this many samples, with bounded memory", 0, 1e12},
        {"data_dtype", &C::data_dtype, "data", "element type of .npy shards whose header does not say (bfloat16 is stored as raw 2-byte values)", 0, 0, {"auto", "bfloat16"}},
        {"normalize_activations", &C::normalize_activations, "data", "expected_norm: scale inputs so E|x| = sqrt(d_in) (estimated from the data, folded into the saved weights)", 0, 0, {"none", "expected_norm"}},
        {"architecture", &C::architecture, "model", "classic: the CS294A autoencoder; the others are today's interpretability SAEs (ReLU, linear decoder)", 0, 0, {"classic", "standard", "topk", "batchtopk", "jumprelu", "gated", "matryoshka_batchtopk"}},
        {"d_sae", &C::d_sae, "model", "number of hidden units (latents)", 1, 1 << 24},
        {"encoder_activation", &C::encoder_activation, "model", "encoder activation f", 0, 0, {"sigmoid", "relu", "tanh"}},
        {"decoder_activation", &C::decoder_activation, "model", "decoder activation g", 0, 0, {"sigmoid", "linear"}},
        {"tied", &C::tied, "model", "tie weights: W_dec = W_enc^T"},
        {"sparsity", &C::sparsity, "cost", "classic: sparsity penalty; topk, batchtopk, jumprelu select that architecture", 0, 0, {"kl", "l1", "none", "topk", "batchtopk", "jumprelu"}},
        {"rho", &C::rho, "cost", "kl: target mean activation, in (0,1)", 1e-12, 1 - 1e-12},
        {"beta", &C::beta, "cost", "kl: weight of the sparsity term", 0, kMax},
        {"weight_decay", &C::weight_decay, "cost", "lambda: weight of (1/2)(|W_enc|^2 + |W_dec|^2)", 0, kMax},
        {"l1_coefficient", &C::l1_coefficient, "cost", "l1 / standard / gated: weight of (1/m) sum |h| (standard: times |W_dec row|; gated: of relu(gate) times |W_dec row|)", 0, kMax},
        {"l1_decoder_norm", &C::l1_decoder_norm, "cost", "standard, gated: weight each |h_j| by the norm of decoder row j"},
        {"corruption", &C::corruption, "cost", "denoising (classic, training only): corrupt the encoder's input x' = corrupt(x); the target stays x", 0, 0, {"none", "masking", "gaussian"}},
        {"corruption_level", &C::corruption_level, "cost", "masking: probability of zeroing each input (<= 1); gaussian: noise standard deviation", 0, kMax},
        {"dropout", &C::dropout, "cost", "classic, training only: probability of dropping each hidden unit (kept units scaled by 1/(1-p))", 0, 0.99},
        {"gamma", &C::gamma, "cost", "denoising: weight of D = (1/m) sum (1/2)|h(x) - h(x')|^2, the distance between clean and corrupted codes", 0, kMax},
        {"k", &C::k, "cost", "topk: latents kept per sample; batchtopk, matryoshka_batchtopk: per sample on average over the batch", 1, 1 << 24},
        {"l0_coefficient", &C::l0_coefficient, "cost", "jumprelu: weight of the L0 penalty", 0, kMax},
        {"bandwidth", &C::bandwidth, "cost", "jumprelu: width of the straight-through kernel", 1e-12, kMax},
        {"jumprelu_init_threshold", &C::jumprelu_init_threshold, "cost", "jumprelu: initial threshold", 1e-12, kMax},
        {"apply_b_dec_to_input", &C::apply_b_dec_to_input, "model", "modern: feed x - b_dec to the encoder"},
        {"b_dec_init", &C::b_dec_init, "model", "modern: initial b_dec from a data sample", 0, 0, {"geometric_median", "mean", "zero"}},
        {"decoder_unit_norm", &C::decoder_unit_norm, "model", "modern: keep decoder rows at unit norm (gradient projected, rows renormalised)"},
        {"k_aux", &C::k_aux, "cost", "topk/batchtopk/matryoshka_batchtopk AuxK latents per sample (negative = d_in/2, 0 = off)", -1, 1 << 24},
        {"aux_coefficient", &C::aux_coefficient, "cost", "AuxK loss weight", 0, kMax},
        {"matryoshka_groups", &C::matryoshka_groups, "cost", "matryoshka_batchtopk: sizes of the nested latent groups as fractions of d_sae summing to 1, comma-separated"},
        {"matryoshka_weights", &C::matryoshka_weights, "cost", "matryoshka_batchtopk: weight of each prefix's reconstruction error, comma-separated (empty = 1 each)"},
        {"dead_threshold_samples", &C::dead_threshold_samples, "run", "a latent is dead after this many samples without firing", 1, 9e18},
        {"resample_dead", &C::resample_dead, "run", "modern: re-initialise dead latents towards badly reconstructed samples at each log step"},
        {"resample_duplicates", &C::resample_duplicates, "run", "modern: at each log step also re-initialise (as resample_dead does) one latent of each pair whose decoder rows have cosine above this, the one that fired longer ago (0 = off)", 0, 1},
        {"sparsity_warmup_steps", &C::sparsity_warmup_steps, "optimiser", "sparsity coefficient ramps linearly from 0 over these steps", 0, 1e12},
        {"grad_clip_norm", &C::grad_clip_norm, "optimiser", "clip the gradient's global norm to this (0 = off)", 0, kMax},
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
        {"lbfgs_history", &C::lbfgs_history, "optimiser", "L-BFGS correction pairs kept (train, stack); memory and checkpoint hold 2 x this x parameters doubles", 1, 10000},
        {"lr_schedule", &C::lr_schedule, "optimiser", "learning-rate schedule after warm-up", 0, 0, {"constant", "step", "cosine", "linear"}},
        {"warmup_steps", &C::warmup_steps, "optimiser", "linear learning-rate warm-up steps", 0, 1e12},
        {"lr_step_size", &C::lr_step_size, "optimiser", "step schedule: steps between decays", 1, 1e12},
        {"lr_gamma", &C::lr_gamma, "optimiser", "step schedule: decay factor", 0, 1},
        {"min_lr", &C::min_lr, "optimiser", "cosine schedule: final learning rate", 0, kMax},
        {"seed", &C::seed, "run", "random seed (initialisation, shuffling)", 0, 9.2e18},
        {"threads", &C::threads, "run", "threads (0 = all cores; under mpirun, the cores shared among the ranks on the machine)", 0, 4096},
        {"latent_shards", &C::latent_shards, "run", "under mpirun: ranks that split the latents of one model; the ranks / latent_shards data replicas split each batch (docs/distributed.md)", 1, 4096},
        {"backend", &C::backend, "run", "matrix-product backend", 0, 0, {"onednn", "reference"}},
        {"screen", &C::screen, "run", "topk, batchtopk, jumprelu (training, encode, eval): exact selection of fixed-order fp32 values (screen_dot) found by screening a cheap product with a rigorous error bound: off (today's oneDNN fp32 values), fp32 or bf16 screening product (the same bits)", 0, 0, {"off", "fp32", "bf16"}},
        {"dtype", &C::dtype, "run", "matrix products of the modern architectures: float32, or bf16 (bf16 inputs, fp32 accumulation; weights and optimiser state stay fp32)", 0, 0, {"float32", "bf16"}},
        {"log_every", &C::log_every, "run", "steps between metrics lines", 1, 1e12},
        {"checkpoint_every", &C::checkpoint_every, "run", "steps between checkpoints", 1, 1e12},
        {"on_nonfinite", &C::on_nonfinite, "run", "a batch with a non-finite loss or gradient: stop (keeping the last checkpoint) or skip it and count it", 0, 0, {"stop", "skip"}},
        {"active_threshold", &C::active_threshold, "run", "a latent is active when h > this (negative = auto: 0 for relu, 0.5 otherwise)", -1, kMax},
        {"layers", &C::layers, "stack", "sae stack: hidden units of each stacked encoder, e.g. [200, 200] (--set layers=200,200)", 1, 1 << 24},
        {"test_fraction", &C::test_fraction, "stack", "sae stack: fraction of the labelled samples held out for testing (split by seed)", 1e-6, 1 - 1e-6},
        {"softmax_weight_decay", &C::softmax_weight_decay, "stack", "sae stack: weight decay of the softmax layer and of fine-tuning", 0, kMax},
        {"softmax_iterations", &C::softmax_iterations, "stack", "sae stack: L-BFGS iterations of the softmax layer on the pretrained features", 0, 1e9},
        {"finetune_iterations", &C::finetune_iterations, "stack", "sae stack: L-BFGS iterations of end-to-end fine-tuning (0 = none)", 0, 1e9},
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

// toml++ 3.3 (Debian 12) reaches __builtin_unreachable, i.e. undefined behaviour, when it tests
// some non-ASCII characters for whitespace (upstream issues #190 and #295): any non-ASCII
// character outside a string or comment, and one that follows a line-ending backslash in a
// multi-line basic string. The first is never valid TOML; the second is valid but useless in a
// settings file. Both are rejected here, before toml++ sees the text, in toml++'s message style.
// A quote opens a string only where TOML allows one (a key or a value may start there); inside
// a bare token (`x = 1e"é`) toml++ scans on, and so does this check.
void toml_reject_unsafe_non_ascii(const std::string& t, const std::string& path) {
    size_t line = 1, line_start = 0;
    char prev = '\n';  // the last byte outside strings and comments that is not a space or tab
    auto bad = [&](size_t at, const char* what) {
        throw Error(path + ":" + std::to_string(line) + ":" + std::to_string(at - line_start + 1) +
                    ": invalid TOML: " + what + "; fix the file (keys are flat: key = value)");
    };
    auto newline = [&](size_t at) { ++line, line_start = at + 1; };
    auto run = [&](size_t at, char q) {  // length of the run of q starting at t[at], up to 6
        size_t n = 0;
        while (n < 6 && at + n < t.size() && t[at + n] == q) ++n;
        return n;
    };
    size_t i = 0;
    while (i < t.size()) {
        const char c = t[i];
        if (c == '\n') {
            prev = c;
            newline(i++);
        } else if (c == '#') {  // comment: up to the end of the line
            while (i < t.size() && t[i] != '\n') ++i;
        } else if ((c == '"' || c == '\'') && std::string_view("\n=[{,.").find(prev) != std::string_view::npos) {
            prev = c;
            const bool multi = run(i, c) >= 3;
            i += multi ? 3 : 1;
            while (i < t.size()) {
                if (t[i] == c && (!multi || run(i, c) >= 3)) {  // closing quote(s); """" ends with one " inside
                    i += multi ? std::min<size_t>(run(i, c), 5) : 1;
                    break;
                }
                if (t[i] == '\n') {
                    if (!multi) break;  // unterminated: toml++ reports it
                    newline(i);
                } else if (c == '"' && t[i] == '\\') {
                    ++i;  // escape: skip the escaped byte; a line-ending backslash skips whitespace
                    if (multi && i < t.size() && (t[i] == ' ' || t[i] == '\t' || t[i] == '\r' || t[i] == '\n')) {
                        for (; i < t.size() && (t[i] == ' ' || t[i] == '\t' || t[i] == '\r' || t[i] == '\n'); ++i)
                            if (t[i] == '\n') newline(i);
                        if (i < t.size() && uint8_t(t[i]) >= 0x80)
                            bad(i, "a non-ASCII character right after a line-ending backslash is not supported");
                        continue;
                    }
                    if (i < t.size() && t[i] == '\n') newline(i);
                }
                ++i;
            }
        } else if (uint8_t(c) >= 0x80) {
            bad(i, "non-ASCII character outside a string or comment");
        } else {
            if (c != ' ' && c != '\t' && c != '\r') prev = c;
            ++i;
        }
    }
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
    check(o != nullptr, "unknown setting '" + one_line(key) + "'; did you mean '" + option_nearest(key) +
                            "'? (sae train --help lists every setting)");
    return *o;
}

void config_set(Config& cfg, const std::string& key, const std::string& raw) {
    const OptionSpec& o = find_or_suggest(key);
    const std::string value = trim(raw);
    auto bad = [&](const std::string& expected) {
        return Error("setting '" + key + "': '" + one_line(value) + "' is not " + expected);
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
            } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
                // "200,200", "[200, 200]"; "" or "[]" is the empty list.
                std::string v = value;
                if (v.size() >= 2 && v.front() == '[' && v.back() == ']') v = trim(v.substr(1, v.size() - 2));
                std::vector<int64_t> list;
                for (size_t pos = 0; !v.empty();) {
                    const size_t comma = v.find(',', pos);
                    const std::string tok = trim(v.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos));
                    int64_t x = 0;
                    auto [p, ec] = std::from_chars(tok.data(), tok.data() + tok.size(), x);
                    if (ec != std::errc() || p != tok.data() + tok.size() || tok.empty())
                        throw bad("a list of integers, e.g. 200,200");
                    list.push_back(x);
                    if (comma == std::string::npos) break;
                    pos = comma + 1;
                }
                cfg.*member = list;
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
          "--set '" + one_line(assignment) + "': expected key=value, e.g. --set beta=3");
    config_set(cfg, trim(assignment.substr(0, eq)), assignment.substr(eq + 1));
}

namespace {
// One table's keys as (key, value text) pairs, each key known and of the right TOML type; an
// array of integers (layers) becomes "200,200". where: "PATH" or "PATH: [[variant]] 2".
std::vector<std::pair<std::string, std::string>> table_settings(const toml::table& tbl, const std::string& where) {
    std::vector<std::pair<std::string, std::string>> out;
    for (auto&& [k, node] : tbl) {
        const std::string key(k.str());
        const OptionSpec* o = option_find(key);
        check(o != nullptr, where + ": unknown setting '" + one_line(key) + "'; did you mean '" +
                                option_nearest(key) + "'?");
        if (std::holds_alternative<std::vector<int64_t> Config::*>(o->member)) {  // an array of integers
            const toml::array* arr = node.as_array();
            check(arr != nullptr, where + ": setting '" + key + "' must be an array of integers, e.g. " + key + " = [200, 200]");
            std::string list;
            for (auto&& el : *arr) {
                const auto i = el.value_exact<int64_t>();
                check(i.has_value(), where + ": setting '" + key + "' must contain only integers, e.g. " + key + " = [200, 200]");
                if (!list.empty()) list += ',';
                list += std::to_string(*i);
            }
            out.emplace_back(key, list);
            continue;
        }
        std::string text;
        if (auto s = node.value_exact<std::string>()) text = *s;
        else if (auto i = node.value_exact<int64_t>()) text = std::to_string(*i);
        else if (auto d = node.value_exact<double>()) {
            std::ostringstream os;
            os.precision(17);
            os << *d;
            text = os.str();
        } else if (auto b = node.value_exact<bool>()) text = *b ? "true" : "false";
        else throw Error(where + ": setting '" + key + "' must be a single value (string, number or boolean), not a table or array");
        const bool is_string = std::holds_alternative<std::string Config::*>(o->member);
        check(is_string == node.is_string(),
              where + ": setting '" + key + "' must be " + (is_string ? "a string in quotes" : "a number or boolean, not a string"));
        out.emplace_back(key, text);
    }
    return out;
}
}  // namespace

Config config_parse_toml(const std::string& text, const std::string& path) {
    return config_parse_toml(text, path, nullptr);
}

Config config_parse_toml(const std::string& text, const std::string& path, std::vector<VariantSpec>* variants) {
    toml_reject_unsafe_non_ascii(text, path);
    toml::table tbl;
    try {
        tbl = toml::parse(text, path);
    } catch (const toml::parse_error& e) {
        std::ostringstream os;
        os << path << ":" << e.source().begin.line << ":" << e.source().begin.column
           << ": invalid TOML: " << one_line(e.description()) << "; fix the file (keys are flat: key = value)";
        throw Error(os.str());
    }
    if (const toml::node* v = tbl.get("variant")) {
        check(variants != nullptr, path + ": [[variant]] tables are read by sae train only (several variants from one data stream)");
        const toml::array* arr = v->as_array();
        check(arr != nullptr && arr->is_array_of_tables(),
              path + ": 'variant' must be an array of tables: [[variant]] then name = \"...\" and the settings that differ");
        int64_t i = 0;
        for (auto&& el : *arr) {
            ++i;
            const std::string where = path + ": [[variant]] " + std::to_string(i);
            toml::table t = *el.as_table();
            VariantSpec spec;
            if (const toml::node* n = t.get("name")) {
                const auto s = n->value_exact<std::string>();
                check(s.has_value(), where + ": 'name' must be a string in quotes");
                spec.name = *s;
                t.erase("name");
            }
            check(!spec.name.empty(), where + ": has no name; give it name = \"...\" (its output directory OUT/<name>)");
            spec.settings = table_settings(t, path + ": [[variant]] '" + one_line(spec.name) + "'");
            variants->push_back(std::move(spec));
        }
        tbl.erase("variant");
    }
    Config cfg;
    for (const auto& [key, value] : table_settings(tbl, path)) {
        try {
            config_set(cfg, key, value);
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

Config config_load_toml(const std::string& path) { return config_parse_toml(read_file(path), path); }
Config config_load_toml(const std::string& path, std::vector<VariantSpec>* variants) {
    return config_parse_toml(read_file(path), path, variants);
}

VariantSpec variant_parse(const std::string& text) {
    VariantSpec spec;
    std::vector<std::pair<std::string, std::string>> pairs;
    for (size_t pos = 0; pos <= text.size();) {
        size_t comma = text.find(',', pos);
        if (comma == std::string::npos) comma = text.size();
        const std::string piece = text.substr(pos, comma - pos);
        const size_t eq = piece.find('=');
        if (eq == std::string::npos) {
            check(!pairs.empty(), "--variant '" + one_line(text) + "': expected name=NAME,key=value,..., e.g. --variant name=k16,k=16");
            pairs.back().second += "," + piece;  // a list value: matryoshka_groups=0.5,0.5
        } else {
            pairs.emplace_back(trim(piece.substr(0, eq)), piece.substr(eq + 1));
        }
        pos = comma + 1;
    }
    for (auto& [key, value] : pairs) {
        if (key == "name") {
            check(spec.name.empty(), "--variant '" + one_line(text) + "': name given twice");
            spec.name = trim(value);
        } else {
            spec.settings.emplace_back(key, value);
        }
    }
    check(!spec.name.empty(), "--variant '" + one_line(text) + "': has no name; start it with name=NAME (its output directory OUT/NAME)");
    return spec;
}

bool config_key_is_shared(const std::string& key) {
    static const char* shared[] = {"data", "normalize", "max_samples", "shuffle_buffer", "data_dtype", "normalize_activations",
                                   "batch_size", "epochs", "max_iterations", "seed", "threads", "log_every", "checkpoint_every",
                                   "latent_shards"};
    for (const char* k : shared)
        if (key == k) return true;
    return false;
}

std::vector<Variant> config_variants(const Config& shared, const std::vector<VariantSpec>& specs) {
    check(!specs.empty(), "no variants given");
    std::vector<Variant> out;
    for (const VariantSpec& spec : specs) {
        const std::string who = "variant '" + one_line(spec.name) + "'";
        const bool name_ok = !spec.name.empty() && spec.name != "." && spec.name != ".." &&
                             std::all_of(spec.name.begin(), spec.name.end(), [](char c) {
                                 return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
                             });
        check(name_ok, who + ": a name is a directory name of letters, digits, '_', '-' and '.'");
        for (const Variant& v : out)
            check(v.name != spec.name, who + ": the name is given twice; each variant needs its own (its output directory)");
        Variant v{spec.name, shared};
        for (const auto& [key, value] : spec.settings) {
            check(!config_key_is_shared(key), who + ": '" + one_line(key) +
                                                  "' defines the data stream, which every variant shares; set it outside the variants");
            try {
                config_set(v.cfg, key, value);
            } catch (const Error& e) {
                throw Error(who + ": " + e.what());
            }
        }
        try {
            config_validate(v.cfg);
        } catch (const Error& e) {
            throw Error(who + ": " + e.what());
        }
        if (!out.empty() && config_normalize(v.cfg) != config_normalize(out[0].cfg))
            throw Error(who + ": normalize resolves to \"" + config_normalize(v.cfg) + "\" but for variant '" + out[0].name +
                        "' to \"" + config_normalize(out[0].cfg) + "\" (auto depends on the architecture); the data stream is shared, so set normalize");
        out.push_back(std::move(v));
    }
    return out;
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
                        throw Error("setting '" + std::string(o.name) + "' = '" + one_line(v) +
                                    "' is not valid; use one of: " + join(o.choices));
                } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
                    for (const int64_t x : v)
                        if (!(double(x) >= o.min && double(x) <= o.max)) {
                            std::ostringstream os;
                            os << "setting '" << o.name << "' contains " << x << ", which is out of range; each entry must be in "
                               << range_text(o);
                            throw Error(os.str());
                        }
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
    const bool sparsity_names_arch = cfg.sparsity == "topk" || cfg.sparsity == "batchtopk" || cfg.sparsity == "jumprelu";
    if (sparsity_names_arch && cfg.architecture != "classic" && cfg.architecture != cfg.sparsity)
        throw Error("sparsity = \"" + cfg.sparsity + "\" contradicts architecture = \"" + cfg.architecture +
                    "\"; set one of them");
    const std::string arch = config_architecture(cfg);
    if (arch == "classic" && cfg.normalize_activations != "none")
        throw Error("normalize_activations = \"" + cfg.normalize_activations +
                    "\" needs a modern architecture (linear decoder); use normalize instead for the classic model");
    if (cfg.screen != "off" && ((arch != "topk" && arch != "batchtopk" && arch != "jumprelu") || cfg.optimizer == "lbfgs"))
        throw Error("screen = \"" + cfg.screen + "\" screens topk, batchtopk and jumprelu (minibatch training, encode, eval), not architecture \"" + arch +
                    "\" with optimizer \"" + cfg.optimizer + "\"; set screen = \"off\" (or use one of those with adam, sgd or rmsprop)");
    if (arch != "classic" && (cfg.corruption != "none" || cfg.dropout > 0 || cfg.gamma > 0))
        throw Error("corruption, dropout and gamma (denoising) apply to the classic architecture only, not \"" + arch +
                    "\"; set corruption = \"none\", dropout = 0, gamma = 0");
    if (cfg.corruption == "masking" && cfg.corruption_level > 1)
        throw Error("corruption_level = " + std::to_string(cfg.corruption_level) +
                    " is the probability of zeroing an input for corruption = \"masking\"; use a value in [0, 1]");
    if (cfg.gamma > 0 && cfg.corruption == "none")
        throw Error("gamma > 0 weighs the distance between the codes of clean and corrupted inputs, but corruption = \"none\"; "
                    "set corruption = \"masking\" or \"gaussian\", or gamma = 0");
    if (arch == "classic" && cfg.sparsity == "kl" && cfg.encoder_activation != "sigmoid")
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
        // The JSON type must match exactly: no float for an integer (a conversion out of range
        // would be undefined behaviour; found by fuzz_cfg_json), no bool or string for a number.
        const bool ok = std::visit(
            [&](auto member) {
                using T = std::remove_cvref_t<decltype(cfg.*member)>;
                if constexpr (std::is_same_v<T, std::string>) {
                    if (!v.is_string()) return false;
                    cfg.*member = v.get<std::string>();
                } else if constexpr (std::is_same_v<T, bool>) {
                    if (!v.is_boolean()) return false;
                    cfg.*member = v.get<bool>();
                } else if constexpr (std::is_same_v<T, int64_t>) {
                    if (v.is_number_unsigned() ? v.get<uint64_t>() > uint64_t(INT64_MAX) : !v.is_number_integer())
                        return false;
                    cfg.*member = v.get<int64_t>();
                } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
                    if (!v.is_array()) return false;
                    std::vector<int64_t> list;
                    for (const auto& x : v) {
                        if (x.is_number_unsigned() ? x.get<uint64_t>() > uint64_t(INT64_MAX) : !x.is_number_integer())
                            return false;
                        list.push_back(x.get<int64_t>());
                    }
                    cfg.*member = list;
                } else {
                    if (!v.is_number()) return false;
                    cfg.*member = v.get<double>();
                }
                return true;
            },
            o.member);
        if (!ok)
            throw Error(what + ": setting '" + std::string(o.name) + "' has the wrong type (" + one_line(v.dump()) +
                        "); the model directory is damaged");
    }
    return cfg;
}

std::string config_help() {
    std::ostringstream os;
    const Config def;
    // Groups in order of first appearance, each listed once with all its keys.
    std::vector<std::string> groups;
    for (const auto& o : option_table())
        if (std::find(groups.begin(), groups.end(), o.group) == groups.end()) groups.push_back(o.group);
    for (const auto& group : groups) {
        os << "\n  [" << group << "]\n";
        for (const auto& o : option_table()) {
            if (group != o.group) continue;
            std::string d;
            std::visit(
                [&](auto member) {
                    std::ostringstream v;
                    using T = std::remove_cvref_t<decltype(def.*member)>;
                    if constexpr (std::is_same_v<T, bool>) v << (def.*member ? "true" : "false");
                    else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
                        v << "[";
                        for (size_t i = 0; i < (def.*member).size(); ++i) v << (i ? ", " : "") << (def.*member)[i];
                        v << "]";
                    } else v << def.*member;
                    d = v.str();
                },
                o.member);
            os << "    " << o.name << std::string(size_t(std::max<int>(1, 20 - int(std::string(o.name).size()))), ' ')
               << o.help << " (default: " << d;
            if (!o.choices.empty()) os << "; one of: " << join(o.choices);
            os << ")\n";
        }
    }
    return os.str();
}

std::string config_architecture(const Config& cfg) {
    if (cfg.architecture == "classic" &&
        (cfg.sparsity == "topk" || cfg.sparsity == "batchtopk" || cfg.sparsity == "jumprelu"))
        return cfg.sparsity;
    return cfg.architecture;
}

bool config_is_modern(const Config& cfg) { return config_architecture(cfg) != "classic"; }

std::string config_normalize(const Config& cfg) {
    if (cfg.normalize != "auto") return cfg.normalize;
    return config_is_modern(cfg) ? "none" : "unit_range";
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
    CostSpec c{sparsity_parse(cfg.sparsity), cfg.rho, cfg.beta, cfg.weight_decay, cfg.l1_coefficient};
    c.gamma = cfg.gamma;
    return c;
}

DenoiseSpec config_denoise_spec(const Config& cfg) {
    DenoiseSpec d;
    d.corruption = corruption_parse(cfg.corruption);
    d.level = cfg.corruption_level;
    d.dropout = cfg.dropout;
    return d;
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
    return (config_is_modern(cfg) || cfg.encoder_activation == "relu") ? 0.0 : 0.5;
}

}  // namespace sae
