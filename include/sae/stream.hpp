// Streaming data sets larger than memory: .npy shards, memory-mapped a window at a time, drawn
// through a shuffle buffer, deterministic and resumable.
//
// Shards. StreamOptions::pattern is a path or a glob(3) pattern (matches sorted by name) of .npy
// files, each a C-order 2-d array [N_i, d_in] with the same d_in, dtype float32 '<f4', float16
// '<f2' or bfloat16. NumPy has no bfloat16: arrays saved through ml_dtypes carry descr '<V2' (a
// raw 2-byte void), read as bfloat16 only with dtype_hint = "bfloat16". Every shard's header,
// shape, dtype and size against the file size are checked in the constructor; failures throw
// sae::Error "<file>: <what>; <what to do>". Values are converted to float32 (exactly) on read.
//
// Order. Each shard is cut into blocks of block_samples consecutive rows. Epoch e reads the
// blocks of all shards in a pseudo-random order (a keyed Feistel permutation of block numbers,
// O(1) memory) and each block's rows in file order, into a shuffle buffer of
// buffer_slots() = min(buffer_samples, num_samples()) samples: the buffer is first filled, then
// each emitted sample is a uniformly random slot, refilled with the next sample read; once the
// epoch's samples are all read the buffer drains. So every sample appears exactly once per
// epoch, epochs do not mix (a batch may straddle two), and the order is a function of (shards,
// seed, buffer_samples, block_samples, epoch) only: the same settings give the same batches,
// bit for bit.
//
// Checkpoints. The position is (epoch, samples emitted in the epoch), saved as text by state().
// set_state() / seek() re-seed that epoch and replay the buffer draws on sample ids only (no data
// is read for them: O(position + blocks) time, about 50 ns per sample on one x86 core, i.e. under
// a minute per 10^9 samples into the epoch), then read the samples left in the buffer with pread,
// in file order (buffer_slots row reads). The transient cost is buffer_slots × 8 bytes for that
// sort.
//
// Resident memory. While streaming, the process's resident set grows by at most
//     buffer_slots × (4·d_in + 8)                  the shuffle buffer (float32 rows + int64 ids)
//   + block_samples × d_in × item_size + 2 pages   the one mapped window (the current block)
//   + 2 MiB + 1 KiB per shard                      shard table, scratch, allocator slack
// (item_size: 4 for float32, 2 for float16/bfloat16, the largest among the shards). Only the
// block being read is mapped (mmap MAP_PRIVATE read-only, MADV_SEQUENTIAL | MADV_WILLNEED);
// it is unmapped when the block is used up, so file pages leave the resident set as soon as they
// are consumed. They may stay in the kernel page cache, which is reclaimable and not part of the
// process's RSS. resident_bound_bytes() returns the figure above; seek() adds its transient
// buffer_slots × 8 bytes. A shard changed or truncated while the stream is open is an error when
// its next block is mapped (a file cut under an open mapping raises SIGBUS: do not modify shards
// during training).
//
// Ids only (next_part, for data replicas): the buffer's draws run on sample ids and each caller's
// rows are read when emitted, so the buffer's data pages are never touched; the bound above
// still holds (it then overstates the buffer).
//
// No allocation per batch. Not thread-safe: use one StreamSource per thread.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sae/data.hpp"

namespace sae {

struct StreamOptions {
    std::string pattern;             // a .npy path, or a glob(3) pattern of .npy shards
    int64_t buffer_samples = 65536;  // shuffle-buffer capacity in samples, ≥ 1
    int64_t block_samples = 0;       // rows per block (the unit of random read order); 0: about 1 MiB of file
    uint64_t seed = 0;
    std::string dtype_hint;          // "" or "bfloat16": read '<V2' / '|V2' shards as bfloat16
};

struct StreamShard {
    std::string path;
    int64_t rows = 0;
    NpyDtype dtype = NpyDtype::f32;
    size_t item_size = 4;
    uint64_t data_offset = 0;  // byte offset of the first value in the file
    uint64_t file_bytes = 0;   // file size when validated
    int64_t first_row = 0;     // global index of this shard's row 0 (shards in sorted-name order)
};

class StreamSource {
public:
    explicit StreamSource(const StreamOptions& opt);  // validates every shard; throws sae::Error
    ~StreamSource();
    StreamSource(StreamSource&&) noexcept;
    StreamSource& operator=(StreamSource&&) noexcept;
    StreamSource(const StreamSource&) = delete;
    StreamSource& operator=(const StreamSource&) = delete;

    int64_t d_in() const;
    int64_t num_samples() const;   // samples per epoch: the sum of the shards' rows
    int64_t buffer_slots() const;  // min(buffer_samples, num_samples())
    int64_t block_samples() const; // the effective block size
    const std::vector<StreamShard>& shards() const;

    // Writes the next m samples, row-major [m, d_in] float32, to out; if ids is not null, also
    // their global indices (shard first_row + row in shard) to ids[0..m). Continues into the next
    // epoch when this one ends.
    void next_batch(float* out, int64_t m, int64_t* ids = nullptr);
    // The same m samples' ids (ids [m], required), but only rows [begin, begin + count) of them
    // are read, into the same rows of out [m, d_in] (the others are left as they are): the
    // buffer then holds ids alone (its data pages are never touched) and each of those rows is
    // read from its shard when emitted (pread, in file order per call), so data replicas each
    // read only their part of every batch. A stream uses either next_batch or next_part; the
    // ids and rows are those next_batch would give.
    void next_part(float* out, int64_t m, int64_t begin, int64_t count, int64_t* ids);
    // Declares ids-only use before a set_state()/seek() (which then skips reading the buffer).
    void set_ids_only();

    uint64_t epoch() const;    // counting from 0
    int64_t position() const;  // samples emitted in the current epoch, 0..num_samples()

    // Position and settings as one line of text, for checkpoints; set_state() accepts it only for
    // a stream with the same seed, buffer, block size, d_in and sample count.
    std::string state() const;
    void set_state(const std::string& text);
    // Continues as if from a fresh stream after emitting `epoch` whole epochs and `position`
    // samples more (see Checkpoints above for the cost).
    void seek(uint64_t epoch, int64_t position);

    // The bound stated above, in bytes, for this stream's settings.
    uint64_t resident_bound_bytes() const;

private:
    struct Impl;
    std::unique_ptr<Impl> p_;
};

}  // namespace sae
