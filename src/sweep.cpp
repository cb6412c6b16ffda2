#include "sae/sweep.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "sae/backend.hpp"
#include "sae/classify.hpp"
#include "sae/error.hpp"
#include "sae/io.hpp"
#include "sae/model_file.hpp"
#include "sae/train.hpp"

extern char** environ;

namespace fs = std::filesystem;

namespace sae {

namespace {

std::string trim(const std::string& s) {
    const size_t a = s.find_first_not_of(" \t\r\n");
    if (a == std::string::npos) return "";
    const size_t b = s.find_last_not_of(" \t\r\n");
    return s.substr(a, b - a + 1);
}

// Splits on commas that are not inside [...].
std::vector<std::string> split_values(const std::string& s) {
    std::vector<std::string> out;
    std::string cur;
    int depth = 0;
    for (char c : s) {
        if (c == '[') ++depth;
        if (c == ']' && depth > 0) --depth;
        if (c == ',' && depth == 0) {
            out.push_back(trim(cur));
            cur.clear();
        } else {
            cur += c;
        }
    }
    out.push_back(trim(cur));
    return out;
}

std::string assignment_text(const Assignment& a) {
    std::string s;
    for (const auto& [k, v] : a) s += (s.empty() ? "" : ", ") + k + "=" + v;
    return s.empty() ? "(no grid)" : s;
}

std::string fmt(const char* f, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, f, v);
    return buf;
}

std::string last_line_of(const std::string& path) {
    std::string text;
    try {
        text = read_file(path);
    } catch (const Error&) {
        return "";
    }
    std::string line;
    size_t end = text.size();
    while (end > 0) {
        const size_t start = text.rfind('\n', end - 1);
        const size_t b = start == std::string::npos ? 0 : start + 1;
        line = trim(text.substr(b, end - b));
        if (!line.empty() || b == 0) break;
        end = b - 1;
    }
    // Progress bars redraw with '\r': keep the last state.
    if (const size_t cr = line.rfind('\r'); cr != std::string::npos) line = trim(line.substr(cr + 1));
    if (line.rfind("sae: error: ", 0) == 0) line = line.substr(12);
    return line;
}

volatile std::sig_atomic_t g_stop = 0;
void on_stop_signal(int) { g_stop = 1; }

}  // namespace

GridAxis grid_axis_parse(const std::string& spec) {
    const std::string where = "--grid '" + spec + "'";
    const size_t eq = spec.find('=');
    check(eq != std::string::npos, where + ": expected key=value1,value2,..., e.g. --grid beta=0.3,1,3");
    GridAxis axis;
    axis.key = trim(spec.substr(0, eq));
    check(!axis.key.empty(), where + ": no key before '='; write e.g. --grid beta=0.3,1,3");
    check(option_find(axis.key) != nullptr, where + ": unknown setting '" + axis.key + "'; did you mean '" +
                                                option_nearest(axis.key) + "'? (sae train --help lists every setting)");
    axis.values = split_values(spec.substr(eq + 1));
    std::set<std::string> seen;
    for (const auto& v : axis.values) {
        check(!v.empty(), where + ": an empty value; separate the values with single commas, e.g. " + axis.key + "=1,2,3");
        check(seen.insert(v).second, where + ": the value '" + v + "' appears twice; list each value once");
        Config probe;
        try {
            config_set(probe, axis.key, v);
        } catch (const Error& e) {
            throw Error(where + ": " + e.what());
        }
    }
    return axis;
}

std::vector<Assignment> grid_expand(const std::vector<GridAxis>& axes) {
    std::set<std::string> keys;
    for (const auto& a : axes) {
        check(keys.insert(a.key).second, "--grid: the key '" + a.key + "' is given twice; put all its values in one --grid");
        check(!a.values.empty(), "--grid " + a.key + ": no values");
    }
    std::vector<Assignment> out(1);
    for (const auto& a : axes) {  // each new axis varies faster than those before it
        std::vector<Assignment> next;
        next.reserve(out.size() * a.values.size());
        for (const auto& prefix : out)
            for (const auto& v : a.values) {
                Assignment x = prefix;
                x.emplace_back(a.key, v);
                next.push_back(std::move(x));
            }
        out = std::move(next);
    }
    return out;
}

std::string sweep_run_name(size_t index, size_t count, const Assignment& a) {
    std::string idx = std::to_string(index);
    const size_t width = std::to_string(std::max<size_t>(count, 1)).size();
    if (idx.size() < width) idx.insert(0, width - idx.size(), '0');
    std::string name = "run-" + idx;
    for (size_t i = 0; i < a.size(); ++i) {
        std::string v = a[i].second.substr(0, 40);
        for (char& c : v)
            if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '+' && c != '-') c = '_';
        name += (i == 0 ? "-" : "_") + a[i].first + "=" + v;
    }
    return name;
}

int64_t sweep_threads_per_job(int64_t threads_setting, int64_t jobs) {
    int64_t total = threads_setting > 0 ? threads_setting : int64_t(std::thread::hardware_concurrency());
    if (total <= 0) total = 1;
    return std::max<int64_t>(1, total / std::max<int64_t>(1, jobs));
}

std::vector<SweepRun> sweep_plan(const SweepSpec& spec) {
    check(spec.jobs >= 1, "--jobs must be >= 1");
    check(!spec.out_dir.empty(), "--out: an output directory is needed");
    Config base = spec.config_path.empty() ? Config{} : config_load_toml(spec.config_path);
    for (const auto& s : spec.sets) config_apply_override(base, s);
    bool threads_swept = false;
    for (const auto& a : spec.axes) threads_swept |= a.key == "threads";
    const int64_t tpj = sweep_threads_per_job(base.threads, spec.jobs);

    const auto combos = grid_expand(spec.axes);
    std::vector<SweepRun> runs;
    for (size_t i = 0; i < combos.size(); ++i) {
        SweepRun r;
        r.index = i + 1;
        r.assignment = combos[i];
        r.cfg = base;
        for (const auto& [k, v] : r.assignment) config_set(r.cfg, k, v);
        if (!threads_swept) r.cfg.threads = tpj;
        try {
            config_validate(r.cfg);
        } catch (const Error& e) {
            throw Error("sweep run " + std::to_string(r.index) + " (" + assignment_text(r.assignment) + "): " + e.what());
        }
        r.name = sweep_run_name(r.index, combos.size(), r.assignment);
        r.dir = (fs::path(spec.out_dir) / r.name).string();

        // A directory from an earlier sweep must hold the same run.
        const std::string cfg_path = r.dir + "/cfg.json";
        bool more_steps = false;
        if (fs::exists(cfg_path)) {
            nlohmann::json saved;
            try {
                saved = nlohmann::json::parse(read_file(cfg_path));
            } catch (const nlohmann::json::exception&) {
                throw Error(cfg_path + ": not valid JSON; delete " + r.dir + " to train that run again");
            }
            const nlohmann::json planned = nlohmann::json::parse(config_to_json(r.cfg));
            for (const auto& [key, value] : planned.items()) {
                if (!saved.contains(key) || saved[key] == value) continue;
                if (config_key_may_change_on_resume(key)) {
                    more_steps |= key == "epochs" || key == "max_iterations";
                    continue;
                }
                throw Error(r.dir + ": trained before with " + key + " = " + saved[key].dump() +
                            ", but the sweep now asks for " + value.dump() +
                            "; use another --out, or delete that directory to train the run again");
            }
        }
        r.done = !more_steps && fs::exists(r.dir + "/model.safetensors") && fs::exists(r.dir + "/done");
        r.resume = !r.done && fs::exists(cfg_path) && fs::exists(r.dir + "/checkpoint.safetensors");
        runs.push_back(std::move(r));
    }
    return runs;
}

std::vector<SweepResult> sweep_train(const SweepSpec& spec, const std::vector<SweepRun>& runs,
                                     const std::string& exe, std::FILE* log) {
    using clock = std::chrono::steady_clock;
    std::vector<SweepResult> results(runs.size());
    const size_t n = runs.size();
    auto tag = [&](size_t i) {
        const std::string w = std::to_string(n);
        std::string s = std::to_string(i + 1);
        return "[" + std::string(w.size() - s.size(), ' ') + s + "/" + w + "] ";
    };
    std::vector<size_t> pending;
    for (size_t i = 0; i < n; ++i) {
        results[i].run = runs[i];
        if (runs[i].done) {
            try {
                results[i].seconds = nlohmann::json::parse(read_file(runs[i].dir + "/done")).value("seconds", 0.0);
            } catch (const std::exception&) {
                results[i].seconds = 0;
            }
        } else {
            pending.push_back(i);
        }
    }

    g_stop = 0;
    auto old_int = std::signal(SIGINT, on_stop_signal);
    auto old_term = std::signal(SIGTERM, on_stop_signal);
    struct Running {
        size_t index;
        clock::time_point start;
    };
    std::map<pid_t, Running> running;
    size_t next = 0;

    auto start = [&](size_t i) {
        const SweepRun& r = runs[i];
        fs::create_directories(r.dir);
        std::vector<std::string> args{exe, "train"};
        if (!spec.config_path.empty()) args.push_back(spec.config_path);
        auto set = [&](const std::string& kv) {
            args.push_back("--set");
            args.push_back(kv);
        };
        for (const auto& s : spec.sets) set(s);
        for (const auto& [k, v] : r.assignment) set(k + "=" + v);
        bool threads_swept = false;
        for (const auto& [k, v] : r.assignment) threads_swept |= k == "threads";
        if (!threads_swept) set("threads=" + std::to_string(r.cfg.threads));
        args.push_back("--out");
        args.push_back(r.dir);
        if (r.resume) args.push_back("--resume");
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);

        const std::string log_path = r.dir + "/train.log";
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_addopen(&fa, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        posix_spawn_file_actions_adddup2(&fa, 1, 2);
        pid_t pid = 0;
        const int rc = posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv.data(), environ);
        posix_spawn_file_actions_destroy(&fa);
        if (rc != 0) {
            results[i].status = "failed: cannot start " + exe + " (" + std::strerror(rc) + ")";
            std::fprintf(log, "%sFAILED %s: %s\n", tag(i).c_str(), r.name.c_str(), results[i].status.c_str() + 8);
            return;
        }
        std::fprintf(log, "%s%s %s\n", tag(i).c_str(), r.resume ? "resume" : "start ", r.name.c_str());
        std::fflush(log);
        running[pid] = {i, clock::now()};
    };

    while (true) {
        while (!g_stop && running.size() < size_t(spec.jobs) && next < pending.size()) start(pending[next++]);
        if (running.empty()) break;
        int status = 0;
        const pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) {
            if (errno == EINTR) continue;
            break;  // no children left (should not happen while `running` is not empty)
        }
        auto it = running.find(pid);
        if (it == running.end()) continue;
        const size_t i = it->second.index;
        const double secs = std::chrono::duration<double>(clock::now() - it->second.start).count();
        running.erase(it);
        SweepResult& res = results[i];
        res.seconds = secs;
        const std::string log_path = runs[i].dir + "/train.log";
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            nlohmann::json done;
            done["seconds"] = secs;
            write_file_atomic(runs[i].dir + "/done", done.dump() + "\n");
            std::fprintf(log, "%sdone   %s: %.1f s\n", tag(i).c_str(), runs[i].name.c_str(), secs);
        } else {
            std::string why = WIFEXITED(status) ? "exit " + std::to_string(WEXITSTATUS(status))
                                                : "killed by signal " + std::to_string(WTERMSIG(status));
            const std::string last = last_line_of(log_path);
            if (!last.empty()) why += ": " + last;
            res.status = "failed: " + why;
            std::fprintf(log, "%sFAILED %s: %s (log: %s)\n", tag(i).c_str(), runs[i].name.c_str(), why.c_str(),
                         log_path.c_str());
        }
        std::fflush(log);
    }
    for (size_t k = next; k < pending.size(); ++k)
        results[pending[k]].status = "failed: not started (interrupted)";
    std::signal(SIGINT, old_int);
    std::signal(SIGTERM, old_term);
    return results;
}

void sweep_evaluate(const SweepSpec& spec, std::vector<SweepResult>& results, std::FILE* log) {
    std::vector<int32_t> labels;
    if (!spec.labels.empty()) labels = labels_load(spec.labels);
    // The last data set loaded: runs of a sweep usually share it.
    std::string data_key;
    Matrix<float> X;
    for (auto& res : results) {
        if (res.status != "ok") continue;
        try {
            SavedModel m = model_load(res.run.dir);
            const std::string key = m.cfg.data + '\n' + normalize_name(m.norm.mode) + normalizer_to_json(m.norm).dump() + '\n' + std::to_string(m.cfg.max_samples);
            if (key != data_key) {
                X = dataset_load(m.cfg.data, m.norm, m.cfg.max_samples);
                data_key = key;
            }
            auto be = backend_create(m.cfg.backend);
            res.eval = evaluate(*be, *m.objective, m.cfg, m.params.data(), X, config_active_threshold(m.cfg));
            res.evaluated = true;
            if (!labels.empty()) {
                check(int64_t(labels.size()) >= X.rows,
                      spec.labels + ": " + std::to_string(labels.size()) + " labels but the run's data holds " +
                          std::to_string(X.rows) + " samples; pass the labels of the training data");
                const std::vector<int32_t> y(labels.begin(), labels.begin() + X.rows);
                std::vector<int32_t> classes(y);
                std::sort(classes.begin(), classes.end());
                classes.erase(std::unique(classes.begin(), classes.end()), classes.end());
                check(classes.size() >= 2, spec.labels + ": the labels of the run's samples hold one class; a classifier needs two");
                const auto idx = select_by_labels(y, classes);
                const Split split = split_indices(idx, 0.5, 0);
                auto features = [&](const std::vector<int64_t>& rows) {
                    return to_double(encode(*be, *m.objective, m.params.data(), take_rows(X, rows)));
                };
                const Matrix<double> Ftrain = features(split.train), Ftest = features(split.test);
                const SoftmaxSpec sm{int64_t(classes.size()), Ftrain.cols, true, 1e-4};
                SoftmaxTrainOptions opt;
                opt.max_iterations = 400;
                const SoftmaxFit fit = softmax_train(*be, sm, Ftrain, remap_labels(y, split.train, classes), opt, 0);
                res.accuracy = accuracy(softmax_predict(*be, sm, fit.params.data(), Ftest),
                                        remap_labels(y, split.test, classes));
            }
        } catch (const std::exception& e) {
            res.status = std::string("failed: evaluation: ") + e.what();
            res.evaluated = false;
            std::fprintf(log, "FAILED evaluating %s: %s\n", res.run.name.c_str(), e.what());
        }
    }
}

namespace {

struct Column {
    std::string name;
    const char* csv_format;
    const char* md_format;
    double (*get)(const SweepResult&);
};

std::vector<Column> metric_columns(bool with_accuracy) {
    std::vector<Column> c = {
        {"J_total", "%.10g", "%.4g", [](const SweepResult& r) { return r.eval.J.total(); }},
        {"J_rec", "%.10g", "%.4g", [](const SweepResult& r) { return r.eval.J.rec; }},
        {"J_weight_decay", "%.10g", "%.4g", [](const SweepResult& r) { return r.eval.J.weight_decay; }},
        {"J_sparsity", "%.10g", "%.4g", [](const SweepResult& r) { return r.eval.J.sparsity; }},
        {"mean_rho_hat", "%.10g", "%.4f", [](const SweepResult& r) { return r.eval.mean_activation; }},
        {"l0", "%.10g", "%.2f", [](const SweepResult& r) { return r.eval.l0; }},
        {"fvu", "%.10g", "%.4f", [](const SweepResult& r) { return r.eval.fvu; }},
        {"dead_fraction", "%.10g", "%.3f", [](const SweepResult& r) { return r.eval.dead_fraction; }},
    };
    if (with_accuracy) c.push_back({"accuracy", "%.10g", "%.4f", [](const SweepResult& r) { return r.accuracy; }});
    return c;
}

}  // namespace

std::string csv_field(const std::string& s) {
    if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
    std::string q = "\"";
    for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
}

std::string sweep_csv(const SweepSpec& spec, const std::vector<SweepResult>& results) {
    const auto cols = metric_columns(!spec.labels.empty());
    std::string s = "run";
    for (const auto& a : spec.axes) s += "," + csv_field(a.key);
    s += ",status";
    for (const auto& c : cols) s += "," + c.name;
    s += ",time_s\n";
    for (const auto& r : results) {
        s += csv_field(r.run.name);
        for (const auto& kv : r.run.assignment) s.append(",").append(csv_field(kv.second));
        s.append(",").append(csv_field(r.status));
        for (const auto& c : cols) s.append(",").append(r.evaluated ? fmt(c.csv_format, c.get(r)) : "");
        s.append(",").append(r.seconds > 0 ? fmt("%.3f", r.seconds) : "").append("\n");
    }
    return s;
}

std::string sweep_markdown(const SweepSpec& spec, const std::vector<SweepResult>& results) {
    const auto cols = metric_columns(!spec.labels.empty());
    auto esc = [](const std::string& s) {
        std::string o;
        for (char c : s) o += c == '|' ? std::string("\\|") : c == '\n' ? std::string(" ") : std::string(1, c);
        return o;
    };
    std::string head = "| run |", rule = "|---:|";
    for (const auto& a : spec.axes) {
        head += " " + a.key + " |";
        rule += "---:|";
    }
    head += " status |";
    rule += "---|";
    for (const auto& c : cols) {
        head += " " + c.name + " |";
        rule += "---:|";
    }
    head += " time (s) |\n";
    rule += "---:|\n";
    std::string s = head + rule;
    for (const auto& r : results) {
        s.append("| ").append(std::to_string(r.run.index)).append(" |");
        for (const auto& kv : r.run.assignment) s.append(" ").append(esc(kv.second)).append(" |");
        s.append(" ").append(esc(r.status)).append(" |");
        for (const auto& c : cols) s.append(" ").append(r.evaluated ? fmt(c.md_format, c.get(r)) : "").append(" |");
        s.append(" ").append(r.seconds > 0 ? fmt("%.1f", r.seconds) : "").append(" |\n");
    }
    return s;
}

int64_t sweep_run(const SweepSpec& spec, const std::string& exe, std::FILE* log) {
    if (!spec.labels.empty()) labels_load(spec.labels);  // a bad labels file fails before training
    const std::vector<SweepRun> runs = sweep_plan(spec);
    ensure_writable_dir(spec.out_dir);
    size_t done = 0;
    for (const auto& r : runs) done += r.done;
    const int64_t threads = runs.empty() ? 1 : runs[0].cfg.threads;
    std::fprintf(log, "sweep: %zu runs in %s (%zu done before, %zu to train), %lld job(s) x %lld thread(s)\n", runs.size(),
                 spec.out_dir.c_str(), done, runs.size() - done, (long long)spec.jobs, (long long)threads);
    std::fflush(log);
    std::vector<SweepResult> results = sweep_train(spec, runs, exe, log);

    // Evaluation in this process, with every thread the sweep had.
    Config base = spec.config_path.empty() ? Config{} : config_load_toml(spec.config_path);
    for (const auto& s : spec.sets) config_apply_override(base, s);
    set_num_threads(int(sweep_threads_per_job(base.threads, 1)));
    std::fprintf(log, "sweep: evaluating %zu runs over their training data\n", runs.size());
    std::fflush(log);
    sweep_evaluate(spec, results, log);

    write_file_atomic(spec.out_dir + "/sweep.csv", sweep_csv(spec, results));
    write_file_atomic(spec.out_dir + "/sweep.md", sweep_markdown(spec, results));
    int64_t failed = 0;
    for (const auto& r : results) failed += r.status != "ok";
    return failed;
}

// --- CSV ---------------------------------------------------------------------------------------

int CsvTable::column(const std::string& name) const {
    for (size_t i = 0; i < header.size(); ++i)
        if (header[i] == name) return int(i);
    return -1;
}

CsvTable csv_parse(const std::string& text, const std::string& name) {
    std::vector<std::vector<std::string>> records;
    std::vector<std::string> rec;
    std::string field;
    bool quoted = false, any = false;
    for (size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (quoted) {
            if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
                field += '"';
                ++i;
            } else if (c == '"') {
                quoted = false;
            } else {
                field += c;
            }
        } else if (c == '"') {
            quoted = true;
            any = true;
        } else if (c == ',') {
            rec.push_back(std::move(field));
            field.clear();
            any = true;
        } else if (c == '\n' || c == '\r') {
            if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
            if (any || !field.empty()) {
                rec.push_back(std::move(field));
                records.push_back(std::move(rec));
            }
            rec.clear();
            field.clear();
            any = false;
        } else {
            field += c;
            any = true;
        }
    }
    check(!quoted, name + ": a quoted field is not closed; the file is damaged");
    if (any || !field.empty()) {
        rec.push_back(std::move(field));
        records.push_back(std::move(rec));
    }
    check(!records.empty(), name + ": empty; expected a header line");
    CsvTable t;
    t.header = std::move(records[0]);
    for (size_t i = 1; i < records.size(); ++i) {
        check(records[i].size() == t.header.size(),
              name + ": line " + std::to_string(i + 1) + " has " + std::to_string(records[i].size()) +
                  " fields but the header has " + std::to_string(t.header.size()));
        t.rows.push_back(std::move(records[i]));
    }
    return t;
}

}  // namespace sae
