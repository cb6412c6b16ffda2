// Latent shards (docs/distributed.md): a rank owns a contiguous slice of the latents; the pieces
// here are what a sharded TopK step's selection is made of (modern_cost calls shards_select),
// tested against one process's selection.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "sae/comm.hpp"

namespace sae {

// A job of world.size() ranks as latent_shards S x R data replicas, world rank = replica·S +
// shard: the ranks of one replica hold the whole dictionary between them (shard_group, in shard
// order); the ranks of one shard hold the same latents and split each batch (data, in replica
// order: the world itself when S = 1). Every rank must call it (it splits the world).
struct MeshLayout {
    int shards = 1, shard = 0, replicas = 1, replica = 0;
    RowSlice latents;  // this rank's latents of the dictionary
    std::unique_ptr<Comm> shard_group, replica_group;  // made when S > 1
    Comm* data = nullptr;  // the data replicas of this shard
};
MeshLayout mesh_layout(Comm& world, int shards, int64_t d_sae);

// Latents [begin, begin + count) of d_sae that shard s of S owns: contiguous, in shard order,
// the first d_sae % S shards one more (d_sae need not divide).
inline RowSlice latent_slice(int64_t d_sae, int s, int S) { return replica_rows(d_sae, s, S); }

// The k best entries of each row of a shard's pre-activations pre [m, n] (the shard's latents,
// columns begin .. begin + n − 1 of the whole row), in the order one process's TopK selects:
// larger value first, ties to the lower column, NaN as −∞. Rows with n < k are padded with
// (−∞, INT32_MAX). out_val, out_col [m, k], each row sorted in that order.
void shard_topk(const float* pre, int64_t m, int64_t n, int64_t begin, int64_t k, float* out_val, int32_t* out_col);

// Every shard's k best of each row (as shard_topk gives them; cand_val, cand_col [shards, m, k],
// e.g. straight from an allgather) merged into the row's k best over all latents, the same
// entries, in the same order, as shard_topk over the whole row. out_val, out_col [m, k].
void topk_merge(const float* cand_val, const int32_t* cand_col, int shards, int64_t m, int64_t k, float* out_val,
                int32_t* out_col);

// Room for shards_select (resized on first use, reused after).
struct ShardBuffers {
    std::vector<float> send, recv, cand_val, out_val;
    std::vector<int32_t> cand_col, out_col;
};

// A sharded TopK (or AuxK) selection made global. This shard owns latents [begin, begin + count).
// Rows [0, m): its list of row i holds at [beg[i], end[i]) its k best entries that the
// selection keeps (e.g. TopK's positive values; local columns ascending; fewer when it has
// fewer). Every shard of group sends its lists (m·k (value, column) pairs in the selection
// order, padded as shard_topk pads: m·k·8 bytes), topk_merge gives each row's k best over every
// shard, and row i keeps those of its entries that are among them: one process's selection
// (larger value first, ties to the lower latent), local columns ascending, at [beg[i], end[i])
// (end shrinks). Every shard of group must call it with the same m and k.
void shards_select(Comm& group, int64_t begin, int64_t count, int64_t m, int64_t k, const int64_t* beg, int64_t* end,
                   int32_t* col, float* val, ShardBuffers& b);

}  // namespace sae
