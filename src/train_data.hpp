// The trainer's data (internal to train.cpp): samples held in memory, and the batches of a
// minibatch run in their order, from memory, from .npy shards, or fed by a BatchSource.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "sae/stream.hpp"
#include "sae/tensor.hpp"
#include "sae/train.hpp"

namespace sae::train_data {

// Rows in memory [rows, cols]: owned, or borrowed from the caller and used as given.
struct Samples {
    Matrix<float> owned;
    const float* data = nullptr;
    int64_t rows = 0, cols = 0;
    const float* row(int64_t i) const { return data + i * cols; }
    void own(Matrix<float>&& m);
    void borrow(const float* p, int64_t r, int64_t c);
    // Every value times s, in double, rounded to float (a borrowed view is copied first).
    void scale(double s);
    // The first min(rows, n) rows, copied.
    Matrix<float> head(int64_t n) const;
};

// The batches of a minibatch run, in order. next() fills Xb [m, d_in] (room for B rows) and
// returns m ≥ 1; it is called only while !done().
class Batches {
public:
    virtual ~Batches() = default;
    virtual int64_t next(float* Xb) = 0;
    virtual bool done(int64_t steps_taken) const = 0;
    virtual int64_t batch_size() const = 0;             // B
    virtual int64_t total() const = 0;                  // steps in the run; -1 while unknown
    virtual double epoch(int64_t steps_taken) const = 0;  // for metrics.jsonl
    virtual bool streamed() const { return false; }     // position saved in checkpoints
    virtual bool external() const { return false; }     // fed by user code, which may throw anything
    virtual std::string state() const { return ""; }    // the position after the last batch
    virtual void set_state(const std::string&) {}
    virtual void set_input_scale(double) {}             // streamed: applied to every batch
    // This process needs only rows [begin, begin + count) of each batch (a data replica): a
    // stream of shards then reads only those (the others hold no data); memory: no change.
    // Call before the first batch and before set_state().
    virtual void set_part(int64_t begin, int64_t count) {}
};

// In memory: epoch e is a Fisher–Yates permutation from (seed, e); ceil(N/B) batches per epoch,
// the last one possibly short. X must outlive the batches.
std::unique_ptr<Batches> batches_in_memory(const Samples& X, int64_t batch_size, int64_t epochs, uint64_t seed);

// Streamed from .npy shards (StreamSource): batches of B straddle epochs; ceil(epochs·N/B)
// batches. head: the first min(N, 10000) samples in stream order (for initialisation).
std::unique_ptr<Batches> batches_from_shards(const StreamOptions& so, int64_t batch_size, int64_t epochs,
                                             const std::string& name, Matrix<float>* head);

// Fed by a BatchSource through a shuffle buffer of buffer_samples: the buffer is filled from the
// source, then each sample emitted is a uniformly random slot (from (seed, pass)), refilled with
// the next sample read; once the pass is read the buffer drains. Each pass is one epoch (the
// source restarted between them); a run is ceil(epochs·N/B) batches of B, straddling passes
// (the last one reads into one more pass, like the shards' stream, so a run with more epochs
// extends it bit for bit), except that a source read only once ends with a short batch. N, the
// samples per pass, is known once the first pass ends. Memory:
// buffer_samples × d_in floats, grown as filled. head: the first min(10000, buffer) samples
// read. Values are checked finite as they are read.
std::unique_ptr<Batches> batches_fed(BatchSource& src, int64_t buffer_samples, int64_t batch_size, int64_t epochs,
                                     uint64_t seed, const std::string& name, Matrix<float>* head);

}  // namespace sae::train_data
