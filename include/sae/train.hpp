// Training: data → model → cost → optimiser, with metrics (JSONL), a progress display,
// atomic checkpoints, resume, and a guard against non-finite numbers.
//
// DIR/ after a run: model.safetensors, cfg.json, metrics.jsonl, checkpoint.safetensors.
// The checkpoint holds the parameters, the optimiser's state, the step and the settings; the
// data position follows from the step (each epoch's order is a function of seed and epoch),
// so a resumed run produces the same bits as an uninterrupted one (same seed, same threads).
#pragma once
#include <string>

#include "sae/config.hpp"
#include "sae/model.hpp"

namespace sae {

struct TrainSummary {
    int64_t steps = 0;          // minibatch steps, or L-BFGS iterations
    int64_t samples = 0;        // samples processed (L-BFGS: evaluations × N)
    CostTerms J;                // at the end (L-BFGS: full batch; minibatch: last log window)
    double mean_rho_hat = 0;
    double seconds = 0;
    std::string stop_reason;    // "max_iterations", "epochs", "converged_grad", ...
    int64_t skipped_batches = 0;  // on_nonfinite = "skip": batches dropped
};

// Settings that may differ between a checkpoint and the run resuming it.
bool config_key_may_change_on_resume(const std::string& key);

// Trains as cfg says, writing into out_dir. resume: continue from out_dir/checkpoint.safetensors
// (an error if there is none, or if it was made with incompatible settings).
// Progress goes to stderr: a bar on a terminal, one plain line per log step otherwise.
TrainSummary train_run(const Config& cfg, const std::string& out_dir, bool resume);

}  // namespace sae
