// Latent shards (docs/distributed.md, the part of the design built so far): a rank owns a
// contiguous slice of the latents; the pieces here are what a sharded TopK step is made of, pure
// functions with no communication, tested against one process's selection.
#pragma once
#include <cstdint>

#include "sae/comm.hpp"

namespace sae {

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

}  // namespace sae
