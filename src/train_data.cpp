#include "train_data.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>

#include "sae/data.hpp"
#include "sae/error.hpp"
#include "sae/rng.hpp"

namespace sae::train_data {

void Samples::own(Matrix<float>&& m) {
    owned = std::move(m);
    data = owned.data.data();
    rows = owned.rows;
    cols = owned.cols;
}

void Samples::borrow(const float* p, int64_t r, int64_t c) {
    owned = {};
    data = p;
    rows = r;
    cols = c;
}

void Samples::scale(double s) {
    if (data != owned.data.data()) {
        Matrix<float> copy(rows, cols);
        std::copy(data, data + rows * cols, copy.data.begin());
        own(std::move(copy));
    }
    for (auto& v : owned.data) v = float(double(v) * s);
}

Matrix<float> Samples::head(int64_t n) const {
    Matrix<float> h(std::min(rows, n), cols);
    std::copy(data, data + h.size(), h.data.begin());
    return h;
}

namespace {

// Epoch e's sample order: a Fisher–Yates shuffle driven by (seed, e) alone.
void epoch_order(std::vector<int64_t>& perm, uint64_t seed, int64_t epoch) {
    for (size_t i = 0; i < perm.size(); ++i) perm[i] = int64_t(i);
    Rng rng(seed * 0x9e3779b97f4a7c15ULL + uint64_t(epoch) + 1);
    for (size_t i = perm.size(); i > 1; --i) std::swap(perm[i - 1], perm[rng.below(i)]);
}

class MemoryBatches final : public Batches {
public:
    MemoryBatches(const Samples& X, int64_t batch_size, int64_t epochs, uint64_t seed)
        : X_(X), B_(std::min(batch_size, X.rows)), per_epoch_((X.rows + B_ - 1) / B_), total_(per_epoch_ * epochs),
          seed_(seed), perm_(size_t(X.rows)) {}
    int64_t next(float* Xb) override {
        const int64_t epoch = step_ / per_epoch_, b = step_ % per_epoch_;
        if (epoch != perm_epoch_) {
            epoch_order(perm_, seed_, epoch);
            perm_epoch_ = epoch;
        }
        const int64_t m = std::min(B_, X_.rows - b * B_);
        for (int64_t i = 0; i < m; ++i)
            std::memcpy(Xb + i * X_.cols, X_.row(perm_[size_t(b * B_ + i)]), sizeof(float) * size_t(X_.cols));
        ++step_;
        return m;
    }
    bool done(int64_t steps_taken) const override { return steps_taken >= total_; }
    int64_t batch_size() const override { return B_; }
    int64_t total() const override { return total_; }
    double epoch(int64_t steps_taken) const override { return double(steps_taken) / double(per_epoch_); }
    // The position follows from the step: resuming sets it through set_state("step").
    void set_state(const std::string& step) override { step_ = std::stoll(step); }

private:
    const Samples& X_;
    int64_t B_, per_epoch_, total_;
    uint64_t seed_;
    std::vector<int64_t> perm_;
    int64_t perm_epoch_ = -1, step_ = 0;
};

class ShardBatches final : public Batches {
public:
    ShardBatches(const StreamOptions& so, int64_t batch_size, int64_t epochs, const std::string& name)
        : stream_(so), name_(name) {
        N_ = stream_.num_samples();
        B_ = std::min(batch_size, N_);
        total_ = (epochs * N_ + B_ - 1) / B_;
        ids_.resize(size_t(B_));
    }
    int64_t next(float* Xb) override {
        const int64_t d = stream_.d_in();
        if (part_) stream_.next_part(Xb, B_, begin_, count_, ids_.data());
        else stream_.next_batch(Xb, B_, ids_.data());
        for (int64_t i = part_ ? begin_ : 0; i < (part_ ? begin_ + count_ : B_); ++i)
            for (int64_t k = 0; k < d; ++k) {
                float& x = Xb[i * d + k];
                if (!std::isfinite(x))  // (not check(): its message would be built for every value)
                    throw Error(name_ + ": sample " + std::to_string(ids_[size_t(i)]) + ", feature " +
                                std::to_string(k) + " (counting from 0) is not finite; clean the data");
                x = float(double(x) * scale_);
            }
        return B_;
    }
    bool done(int64_t steps_taken) const override { return steps_taken >= total_; }
    int64_t batch_size() const override { return B_; }
    int64_t total() const override { return total_; }
    double epoch(int64_t steps_taken) const override { return double(steps_taken) * double(B_) / double(N_); }
    bool streamed() const override { return true; }
    std::string state() const override { return stream_.state(); }
    void set_state(const std::string& s) override { stream_.set_state(s); }
    void set_input_scale(double s) override { scale_ = s; }
    void set_part(int64_t begin, int64_t count) override {
        check(begin >= 0 && count >= 1 && begin + count <= B_, "stream: a replica's rows lie outside the batch");
        part_ = true;
        begin_ = begin;
        count_ = count;
        stream_.set_ids_only();
    }

private:
    StreamSource stream_;
    bool part_ = false;
    int64_t begin_ = 0, count_ = 0;
    std::string name_;
    int64_t N_ = 0, B_ = 0, total_ = 0;
    std::vector<int64_t> ids_;
    double scale_ = 1.0;
};

class FedBatches final : public Batches {
public:
    FedBatches(BatchSource& src, int64_t buffer_samples, int64_t batch_size, int64_t epochs, uint64_t seed,
               const std::string& name)
        : src_(src), slots_(buffer_samples), epochs_(epochs), seed_(seed), name_(name) {
        start_pass(0);
        check(fill_ > 0, name_ + ": the data has no samples");
        B_ = N_ > 0 ? std::min(batch_size, N_) : batch_size;
    }
    int64_t next(float* Xb) override {
        int64_t m = 0;
        while (m < B_) {
            if (fill_ == 0) {  // this pass is over: on into the next (after the last one too, as
                               // the shards' stream does, so a longer run extends this one)
                if (epoch_ + 1 >= epochs_ && !src_.restart()) break;  // read once: a short last batch
                start_pass(epoch_ + 1, epoch_ + 1 >= epochs_);
                check(fill_ > 0, name_ + ": pass " + std::to_string(epoch_) +
                                     " over the data gave no samples; an iterable must give the same data each pass");
            }
            emit(Xb + m * d_);
            ++m;
        }
        for (int64_t i = 0; i < m * d_; ++i) Xb[i] = float(double(Xb[i]) * scale_);
        done_epoch_ = epoch_;
        done_emitted_ = emitted_;
        return m;
    }
    // The run is ceil(epochs·N/B) batches, N known once the first pass is read.
    bool done(int64_t steps_taken) const override { return N_ > 0 && steps_taken >= total(); }
    int64_t batch_size() const override { return B_; }
    int64_t total() const override { return N_ > 0 ? (epochs_ * N_ + B_ - 1) / B_ : -1; }
    double epoch(int64_t) const override {
        return double(epoch_) + (N_ > 0 ? double(emitted_) / double(N_) : 0.0);
    }
    bool streamed() const override { return true; }
    bool external() const override { return true; }
    std::string state() const override {
        return "fed1 buffer=" + std::to_string(slots_) + " seed=" + std::to_string(seed_) + " d_in=" +
               std::to_string(d_) + " samples=" + std::to_string(N_) + " epoch=" + std::to_string(done_epoch_) +
               " position=" + std::to_string(done_emitted_);
    }
    // Replays the buffer draws up to the saved position: the source is read again from the
    // start of that pass (its samples are read, not merely skipped).
    void set_state(const std::string& text) override {
        const std::string bad = "batch-source state '" + text.substr(0, 200) +
                                "' is malformed or belongs to a streamed file run; the checkpoint is damaged";
        std::istringstream is(text);
        std::string tag;
        check(bool(is >> tag) && tag == "fed1", bad);
        const char* names[] = {"buffer", "seed", "d_in", "samples", "epoch", "position"};
        int64_t v[6] = {};
        for (int i = 0; i < 6; ++i) {
            std::string tok;
            check(bool(is >> tok), bad);
            const size_t eq = tok.find('=');
            check(eq != std::string::npos && tok.compare(0, eq, names[i]) == 0, bad);
            try {
                v[i] = std::stoll(tok.substr(eq + 1));
            } catch (const std::exception&) {
                throw Error(bad);
            }
        }
        check(v[0] == slots_ && uint64_t(v[1]) == seed_ && v[2] == d_,
              name_ + ": the checkpoint was made with another shuffle buffer, seed or d_in; resume with the same data and settings");
        const int64_t epoch = v[4], position = v[5];
        check(epoch >= 0 && epoch <= epochs_ && position >= 0, bad);
        if (epoch > 0) start_pass(epoch);
        if (v[3] > 0) N_ = v[3];
        std::vector<float> scratch(static_cast<size_t>(d_));
        for (int64_t i = 0; i < position; ++i) {
            if (fill_ == 0)
                throw Error(name_ + ": the data ended before the checkpoint's position (pass " + std::to_string(epoch) +
                            ", sample " + std::to_string(position) + "); resume with the same data");
            emit(scratch.data());
        }
        done_epoch_ = epoch_;
        done_emitted_ = emitted_;
    }
    void set_input_scale(double s) override { scale_ = s; }
    // The first n samples read (the buffer before any draw).
    Matrix<float> head(int64_t n) const {
        Matrix<float> h(std::min(fill_, n), d_);
        std::copy(buf_.begin(), buf_.begin() + h.size(), h.data.begin());
        return h;
    }

private:
    // restarted: the caller has restarted the source already.
    void start_pass(int64_t e, bool restarted = false) {
        if (started_ && !restarted)
            check(src_.restart(), name_ + ": the data can be read only once (a generator or an iterator), but epochs = " +
                                      std::to_string(epochs_) + "; pass epochs=1, or a re-iterable object (a list, or a "
                                      "class whose __iter__ starts again)");
        started_ = true;
        epoch_ = e;
        emitted_ = 0;
        read_ = 0;
        exhausted_ = false;
        cur_ = {};
        cur_row_ = 0;
        rng_ = Rng(seed_ * 0x9e3779b97f4a7c15ULL + uint64_t(e) + 1);
        fill_ = 0;
        while (fill_ < slots_ && pull(fill_)) ++fill_;
    }
    // Reads the pass's next sample into slot `slot`; false at the end of the pass.
    bool pull(int64_t slot) {
        while (cur_row_ >= cur_.rows) {
            if (exhausted_) return false;
            cur_ = src_.next();
            cur_row_ = 0;
            if (cur_.rows == 0) {
                exhausted_ = true;
                if (epoch_ == 0 || N_ == 0) N_ = read_;
                check(read_ == N_, name_ + ": pass " + std::to_string(epoch_) + " gave " + std::to_string(read_) +
                                       " samples but the first gave " + std::to_string(N_) +
                                       "; an iterable must give the same data each pass");
                return false;
            }
            check(cur_.rows > 0 && cur_.cols > 0 && cur_.data != nullptr, name_ + ": a batch of shape [" +
                                                                              std::to_string(cur_.rows) + ", " +
                                                                              std::to_string(cur_.cols) + "] is empty");
            if (d_ == 0) d_ = cur_.cols;
            check(cur_.cols == d_, name_ + ": a batch has " + std::to_string(cur_.cols) +
                                       " features per sample but the first had " + std::to_string(d_) +
                                       "; every batch must have the same width");
        }
        if (buf_.size() < size_t((slot + 1) * d_)) buf_.resize(size_t((slot + 1) * d_));
        const float* r = cur_.data + cur_row_ * d_;
        for (int64_t k = 0; k < d_; ++k)
            if (!std::isfinite(r[k]))
                throw Error(name_ + ": sample " + std::to_string(read_) + " of pass " + std::to_string(epoch_) +
                            ", feature " + std::to_string(k) + " (counting from 0) is " +
                            (std::isnan(r[k]) ? "NaN" : "inf") + "; the data must be finite, clean or re-export it");
        std::memcpy(buf_.data() + slot * d_, r, sizeof(float) * size_t(d_));
        ++cur_row_;
        ++read_;
        return true;
    }
    // One sample out of a random slot, which is refilled from the source (or, once the pass is
    // read, given the last slot's sample).
    void emit(float* out) {
        const int64_t j = int64_t(rng_.below(uint64_t(fill_)));
        std::memcpy(out, buf_.data() + j * d_, sizeof(float) * size_t(d_));
        if (!pull(j)) {
            --fill_;
            if (j != fill_) std::memcpy(buf_.data() + j * d_, buf_.data() + fill_ * d_, sizeof(float) * size_t(d_));
        }
        ++emitted_;
    }

    BatchSource& src_;
    int64_t slots_, epochs_;
    uint64_t seed_;
    std::string name_;
    int64_t d_ = 0, N_ = 0, B_ = 0;
    std::vector<float> buf_;  // [fill_, d_] of up to slots_ rows
    int64_t fill_ = 0;
    int64_t epoch_ = 0, emitted_ = 0, read_ = 0;
    int64_t done_epoch_ = 0, done_emitted_ = 0;  // the position after the last finished batch
    bool started_ = false, exhausted_ = false;
    BatchSource::Batch cur_;
    int64_t cur_row_ = 0;
    Rng rng_{0};
    double scale_ = 1.0;
};

}  // namespace

std::unique_ptr<Batches> batches_in_memory(const Samples& X, int64_t batch_size, int64_t epochs, uint64_t seed) {
    return std::make_unique<MemoryBatches>(X, batch_size, epochs, seed);
}

std::unique_ptr<Batches> batches_from_shards(const StreamOptions& so, int64_t batch_size, int64_t epochs,
                                             const std::string& name, Matrix<float>* head) {
    auto b = std::make_unique<ShardBatches>(so, batch_size, epochs, name);
    // A sample of the data (its first samples in stream order) for initialisation and scaling.
    StreamSource h(so);
    head->resize(std::min<int64_t>(h.num_samples(), 10000), h.d_in());
    h.next_batch(head->data.data(), head->rows);
    check_finite(*head, name);
    return b;
}

std::unique_ptr<Batches> batches_fed(BatchSource& src, int64_t buffer_samples, int64_t batch_size, int64_t epochs,
                                     uint64_t seed, const std::string& name, Matrix<float>* head) {
    auto b = std::make_unique<FedBatches>(src, buffer_samples, batch_size, epochs, seed, name);
    *head = b->head(10000);
    return b;
}

}  // namespace sae::train_data
