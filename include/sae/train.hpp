// Training: data → model → cost → optimiser, with metrics (JSONL), a progress display,
// atomic checkpoints, resume, and a guard against non-finite numbers.
//
// DIR/ after a run: model.safetensors, cfg.json, metrics.jsonl, checkpoint.safetensors.
// The checkpoint holds the parameters, the optimiser's state, the step and the settings; the
// data position follows from the step (each epoch's order is a function of seed and epoch),
// so a resumed run produces the same bits as an uninterrupted one (same seed, same threads).
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "sae/config.hpp"
#include "sae/data.hpp"
#include "sae/model.hpp"

namespace sae {

struct TrainSummary {
    int64_t steps = 0;          // minibatch steps, or L-BFGS iterations
    int64_t samples = 0;        // samples processed (L-BFGS: evaluations × N)
    CostTerms J;                // at the end (L-BFGS: full batch; minibatch: last log window)
    double mean_rho_hat = 0;
    double seconds = 0;
    std::string stop_reason;    // "max_iterations", "epochs", "converged_grad", ..., "interrupted"
    int64_t skipped_batches = 0;  // on_nonfinite = "skip": batches dropped
};

// Settings that may differ between a checkpoint and the run resuming it.
bool config_key_may_change_on_resume(const std::string& key);

// Batches fed from outside the library (a Python generator): one pass over the data at a
// time, in the source's own order; the trainer draws them through a shuffle buffer of
// cfg.shuffle_buffer samples (so memory stays bounded whatever the data's size).
class BatchSource {
public:
    struct Batch {
        const float* data = nullptr;  // [rows, cols] row-major float32, valid until the next call
        int64_t rows = 0, cols = 0;
    };
    virtual ~BatchSource() = default;
    // The pass's next batch; rows = 0 when the pass is over. May throw: the trainer then saves a
    // checkpoint of the last finished step and rethrows.
    virtual Batch next() = 0;
    // Starts the next pass from the beginning; false when the data can be read only once.
    virtual bool restart() = 0;
};

// Where the training data comes from: cfg.data (a file, or a glob of shards when
// shuffle_buffer > 0) as the CLI reads it, raw samples in memory, or a batch source.
struct TrainData {
    // Raw samples [rows, cols] (not normalised; borrowed for the call), converted to float32
    // from `source`. Normalisation is fitted on them exactly as on a file's samples, so an
    // array and the same values in a .npy train to the same bits.
    const float* samples = nullptr;
    int64_t rows = 0, cols = 0;
    SourceType source = SourceType::f32;
    BatchSource* batches = nullptr;  // streamed (needs shuffle_buffer > 0)
    std::string name;                // names the data in messages (default: cfg.data)
};

struct TrainProgress {
    int64_t step = 0, first_step = 0;  // now, and where this run (or resume) started
    int64_t total = 0;                 // steps in the run; -1 when unknown (a batch source)
    CostTerms J;                       // means since the last update
    double samples_per_s = 0;
    bool log_step = false;             // a metrics line was (or is about to be) written
};

struct TrainHooks {
    // Replaces the stderr display: called every 8 steps and at each log step (L-BFGS: each log).
    std::function<void(const TrainProgress&)> progress;
    bool quiet = false;  // no stderr display (when progress is not set either)
    // Called at each log step with its metrics.jsonl line (one JSON object, no newline); for a
    // run of several variants the object starts with "variant": its name.
    std::function<void(int64_t step, const std::string& metrics_json)> on_log;
    // Polled after every step, like SIGINT/SIGTERM: once true, the run saves a checkpoint and
    // returns with stop_reason "interrupted".
    const std::atomic<bool>* stop = nullptr;
};
// An exception thrown by a hook or a batch source is rethrown after a checkpoint of the last
// finished step is saved (resuming from it gives the bits of an uninterrupted run).

// Trains as cfg says, writing into out_dir. resume: continue from out_dir/checkpoint.safetensors
// (an error if there is none, or if it was made with incompatible settings).
// Progress goes to stderr: a bar on a terminal, one plain line per log step otherwise.
// SIGINT/SIGTERM during training: a checkpoint is saved and the run returns with stop_reason
// "interrupted" (no model.safetensors); the previous signal handlers are restored on return.
TrainSummary train_run(const Config& cfg, const std::string& out_dir, bool resume);
TrainSummary train_run(const Config& cfg, const std::string& out_dir, bool resume,
                       const TrainData& data, const TrainHooks& hooks);

// Several variants (config_variants) trained from one pass over the data: each batch is read,
// shuffled and normalised once and fed to every variant in turn; variant v writes what train_run
// writes into out_dir/<v.name>/, with its own model, optimiser, checkpoint and metrics, and ends
// with the bits a separate train_run of v.cfg gives. resume: every variant continues from its
// checkpoint; one that is behind (the run was stopped between two variants' checkpoints) or has
// none yet replays the stream alone until it reaches the others. Minibatch optimisers only
// (full-batch L-BFGS is refused). The progress display and hook follow the first variant.
std::vector<TrainSummary> train_run_variants(const std::vector<Variant>& variants, const std::string& out_dir, bool resume,
                                             const TrainData& data, const TrainHooks& hooks);

// "interrupted at step N; checkpoint saved, continue with --resume" (iteration for L-BFGS).
std::string train_interrupted_message(const Config& cfg, const TrainSummary& s);

}  // namespace sae
