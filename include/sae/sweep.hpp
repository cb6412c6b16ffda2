// Hyperparameter sweeps: every combination of a grid of settings, each trained in its own
// directory by a child `sae train` process (so each job has its own thread count), resumable,
// then evaluated over its training data into one table (sweep.csv, sweep.md).
//
// DIR/ after a sweep:
//   run-<i>-<key>=<value>_.../   one `sae train --out` directory per combination (i from 1),
//                                plus train.log (the child's output) and done (written when
//                                training finished: {"seconds": wall time of the last training})
//   sweep.csv                    one row per run: run, the swept keys, status, the metrics
//   sweep.md                     the same as a Markdown table
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "sae/config.hpp"
#include "sae/eval.hpp"

namespace sae {

// One swept key and its values, as given: "beta=0.3,1,3". Values are split on commas outside
// brackets (so a list value is written "[200,100]") and trimmed.
struct GridAxis {
    std::string key;
    std::vector<std::string> values;
};
// Throws one line for: no '=', an empty key or value, a repeated value, an unknown key (naming
// the nearest one), or a value the key does not accept.
GridAxis grid_axis_parse(const std::string& spec);

// (key, value) pairs, in axis order.
using Assignment = std::vector<std::pair<std::string, std::string>>;
// The cartesian product, first axis slowest (like nested loops in the order given). No axes:
// one empty assignment. Throws if a key appears on two axes.
std::vector<Assignment> grid_expand(const std::vector<GridAxis>& axes);

// "run-<index>-key=value_key=value": index zero-padded to the width of count; characters other
// than letters, digits and . + - replaced by '_', each value cut to 40 characters.
std::string sweep_run_name(size_t index, size_t count, const Assignment& a);

struct SweepSpec {
    std::string config_path;        // TOML file, optional
    std::vector<std::string> sets;  // --set key=value, applied before the grid's values
    std::vector<GridAxis> axes;
    std::string out_dir;
    int64_t jobs = 1;               // runs trained at once
    std::string labels;             // optional labels file → an accuracy column
};

struct SweepRun {
    size_t index = 0;  // 1-based
    Assignment assignment;
    Config cfg;        // settings of this run (threads: the per-job count)
    std::string name, dir;
    bool done = false;   // finished earlier with these settings: not trained again
    bool resume = false; // has a checkpoint made with these settings: continued
};

// Loads the config, applies the --set values and then each combination's values, validates
// every run's settings, and checks the directories already in out_dir: a run trained before
// with other settings (other than epochs, max_iterations, log_every, checkpoint_every, threads)
// is an error. Nothing is written. Each run gets threads = sweep_threads_per_job(the config's
// threads, jobs) unless threads is swept.
std::vector<SweepRun> sweep_plan(const SweepSpec& spec);

// The per-job thread count: max(1, threads / jobs), threads = the setting, or the machine's
// count when it is 0 (automatic).
int64_t sweep_threads_per_job(int64_t threads_setting, int64_t jobs);

struct SweepResult {
    SweepRun run;
    std::string status = "ok";  // "ok", or "failed: <why>"
    double seconds = 0;         // training wall time (of the last training of this run)
    bool evaluated = false;
    EvalResult eval;
    double accuracy = -1;       // < 0: not computed
};

// Trains every run that is not done, `jobs` at a time, each as a child process:
//   exe train [config] --set ... --set <key>=<value> ... --set threads=<t> --out <dir> [--resume]
// with its output in <dir>/train.log; a run that fails is recorded and the others go on.
// Progress lines go to log. On SIGINT/SIGTERM no new run starts; running ones save their
// checkpoints (they get the signal too) and are recorded as failed.
std::vector<SweepResult> sweep_train(const SweepSpec& spec, const std::vector<SweepRun>& runs,
                                     const std::string& exe, std::FILE* log);

// Evaluates each trained run over its training data (as `sae eval --model DIR` does) and, with
// spec.labels (one label per sample; the first N are used when the run kept N samples), fits
// softmax regression on its hidden activations with `sae classify`'s defaults: half the samples
// for training (seeded split, seed 0: the same split for every run), λ = 1e-4, 400 L-BFGS
// iterations; accuracy = on the other half.
void sweep_evaluate(const SweepSpec& spec, std::vector<SweepResult>& results, std::FILE* log);

// The table: run, the swept keys, status, J_total, J_rec, J_weight_decay, J_sparsity,
// mean_rho_hat, l0, fvu, dead_fraction, [accuracy], time_s. Failed runs have empty metrics.
std::string sweep_csv(const SweepSpec& spec, const std::vector<SweepResult>& results);
std::string sweep_markdown(const SweepSpec& spec, const std::vector<SweepResult>& results);

// The whole command: plan (fails before anything starts), train, evaluate, write sweep.csv and
// sweep.md atomically. Returns the number of failed runs.
int64_t sweep_run(const SweepSpec& spec, const std::string& exe, std::FILE* log);

// --- reading tables back ---------------------------------------------------------------------
struct CsvTable {
    std::vector<std::string> header;
    std::vector<std::vector<std::string>> rows;  // each the header's length
    int column(const std::string& name) const;  // index, or -1
};
// RFC 4180: comma-separated, fields with comma, quote or newline in double quotes ("" = ").
// Throws naming `name` on unbalanced quotes or rows of the wrong length.
CsvTable csv_parse(const std::string& text, const std::string& name);
std::string csv_field(const std::string& s);  // quoted when needed

}  // namespace sae
