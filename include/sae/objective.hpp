// What the trainer needs from a model, whatever its architecture: the parameter layout, an
// initialisation, the cost of a batch with its gradient, and hooks around the optimiser step.
// The optimiser sees only the flat buffers; the trainer sees only this interface.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "sae/backend.hpp"
#include "sae/comm.hpp"
#include "sae/config.hpp"
#include "sae/io.hpp"
#include "sae/metrics.hpp"
#include "sae/model.hpp"
#include "sae/rng.hpp"
#include "sae/tensor.hpp"

namespace sae {

class Objective {
public:
    virtual ~Objective() = default;
    virtual std::string architecture() const = 0;
    int64_t d_in() const { return d_in_; }
    int64_t d_sae() const { return d_sae_; }
    const ParamLayout& layout() const { return layout_; }

    // params [layout().total]. sample [n, d_in]: data for data-dependent initialisation
    // (b_dec at the geometric median, ...), already scaled like the training data.
    virtual void init(float* params, Rng& rng, const Matrix<float>& sample) = 0;
    virtual void reserve(int64_t max_m) = 0;
    // X [m, d_in]; grad overwritten when not null. Afterwards hidden() [m, d_sae] and
    // reconstruction() [m, d_in] hold this batch's activations.
    virtual CostTerms cost(Backend& be, const float* params, const float* X, int64_t m, float* grad) = 0;
    virtual const float* hidden() const = 0;
    virtual const float* reconstruction() const = 0;
    // Training may switch the dense hidden() off: a sparse model then keeps only the row lists of
    // its active latents (active_rows(), not null after cost() when it did), saving a pass over
    // [m, d_sae]. hidden() is valid whenever active_rows() is null.
    virtual void set_dense_hidden(bool on) {}
    virtual const ActiveRows* active_rows() const { return nullptr; }

    // Around optimizer.update(): e.g. keep decoder rows at unit norm.
    virtual void before_update(const float* params, float* grad) {}
    virtual void after_update(float* params) {}
    // Training (batch statistics may change state, e.g. BatchTopK's threshold) or inference.
    virtual void set_training(bool training) {}
    // Training signals from the trainer.
    virtual void set_dead_mask(const uint8_t* dead) {}  // [d_sae], 1 = dead; null = none
    virtual void set_sparsity_scale(double scale) {}    // sparsity-coefficient warm-up
    // The training step the next cost() belongs to: random training-time masks (denoising
    // corruption, dropout) are drawn from (seed, step), so runs are deterministic and resumable.
    virtual void set_step(int64_t step) {}
    // Data replicas (train.cpp): the next cost() gets replica `rank`'s (of `size`) slice of a
    // batch of `rows` rows, and what the cost needs of the whole batch (the classic ρ̂, BatchTopK's
    // selection and threshold) is summed over the replicas with sum(buf [n], n). rows = 0: no
    // split. (Denoising draws the whole batch's masks and takes this replica's rows' part.)
    virtual void set_batch_share(int64_t rows, int rank, int size, std::function<void(double*, int64_t)> sum) {}
    // Latent shards (train.cpp, under mpirun): from now on this objective is latents
    // [begin, begin + count) of its dictionary, shard group->rank() of group->size(), meeting the
    // other shards through group in cost(); d_sae() and layout() become the shard's, and init()
    // gives the shard's part of the whole dictionary's initialisation. Call before reserve().
    // Throws Error (naming what to change) for a model whose latents cannot be sharded.
    virtual void set_latent_shard(Comm* group, int64_t begin, int64_t count);

    // Named scalars that are part of the model's state but not optimised (e.g. BatchTopK's
    // running threshold): saved in checkpoints and restored exactly.
    virtual std::map<std::string, double> extra_state() const { return {}; }
    virtual void set_extra_state(const std::map<std::string, double>& s) {}

    // The tensors of model.safetensors, float32, with the field's names and shapes. input_scale:
    // the factor the training data was multiplied by (folded into the weights so the saved model
    // takes raw inputs). scratch keeps any materialised tensor alive until written.
    virtual std::vector<TensorOut> export_tensors(const float* params, double input_scale,
                                                  std::vector<std::vector<float>>& scratch) const = 0;
    // The inverse of export_tensors (with input_scale 1): fills params (and any extra state,
    // e.g. BatchTopK's threshold) from loaded tensors, checking names, dtypes and shapes.
    virtual void import_tensors(const std::map<std::string, TensorIn>& tensors, float* params,
                                const std::string& path) = 0;

protected:
    int64_t d_in_ = 0, d_sae_ = 0;
    ParamLayout layout_;
};

// Checks a loaded tensor's presence, dtype (F32) and shape, then copies it to dst (if not null).
void import_tensor(const std::map<std::string, TensorIn>& tensors, float* dst, const std::string& path,
                   const std::string& name, const std::vector<int64_t>& shape);
std::string shape_text(const std::vector<int64_t>& shape);

// The modern architectures' spec the settings ask for, for inputs of dimension d_in.
struct ModernSpec;
ModernSpec modern_spec(const Config& cfg, int64_t d_in);

// The objective the settings ask for, for inputs of dimension d_in.
std::unique_ptr<Objective> objective_create(const Config& cfg, int64_t d_in);

}  // namespace sae
