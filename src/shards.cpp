#include "sae/shards.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace sae {
namespace {

// The selection order: larger value first, then lower column; NaN read as −∞.
inline float key(float v) { return v == v ? v : -std::numeric_limits<float>::infinity(); }
inline bool before(float va, int32_t ca, float vb, int32_t cb) {
    const float a = key(va), b = key(vb);
    return a > b || (a == b && ca < cb);
}

}  // namespace

MeshLayout mesh_layout(Comm& world, int shards, int64_t d_sae) {
    MeshLayout L;
    L.shards = shards;
    L.shard = world.rank() % shards;
    L.replicas = world.size() / shards;
    L.replica = world.rank() / shards;
    L.latents = latent_slice(d_sae, L.shard, shards);
    L.data = &world;
    if (shards > 1) {
        L.replica_group = world.split(L.shard, L.replica);
        L.shard_group = world.split(L.replica, L.shard);
        L.data = L.replica_group.get();
    }
    return L;
}

void shard_topk(const float* pre, int64_t m, int64_t n, int64_t begin, int64_t k, float* out_val, int32_t* out_col) {
    std::vector<int32_t> idx(static_cast<size_t>(n));
    for (int64_t i = 0; i < m; ++i) {
        const float* p = pre + i * n;
        for (int64_t j = 0; j < n; ++j) idx[size_t(j)] = int32_t(j);
        const int64_t take = std::min(k, n);
        auto cmp = [&](int32_t a, int32_t b) { return before(p[a], a, p[b], b); };
        std::partial_sort(idx.begin(), idx.begin() + take, idx.end(), cmp);
        for (int64_t t = 0; t < k; ++t) {
            out_val[i * k + t] = t < take ? p[idx[size_t(t)]] : -std::numeric_limits<float>::infinity();
            out_col[i * k + t] = t < take ? int32_t(begin + idx[size_t(t)]) : INT32_MAX;
        }
    }
}

void topk_merge(const float* cand_val, const int32_t* cand_col, int shards, int64_t m, int64_t k, float* out_val,
                int32_t* out_col) {
    std::vector<int64_t> at(static_cast<size_t>(shards));
    for (int64_t i = 0; i < m; ++i) {
        std::fill(at.begin(), at.end(), 0);
        for (int64_t t = 0; t < k; ++t) {  // a k-way merge of sorted lists: take the best head
            int best = 0;
            for (int s = 1; s < shards; ++s) {
                const int64_t a = (int64_t(s) * m + i) * k + at[size_t(s)], b = (int64_t(best) * m + i) * k + at[size_t(best)];
                if (at[size_t(s)] < k && (at[size_t(best)] >= k || before(cand_val[a], cand_col[a], cand_val[b], cand_col[b])))
                    best = s;
            }
            const int64_t e = (int64_t(best) * m + i) * k + at[size_t(best)]++;
            out_val[i * k + t] = cand_val[e];
            out_col[i * k + t] = cand_col[e];
        }
    }
}

void shards_select(Comm& group, int64_t begin, int64_t count, int64_t m, int64_t k, const int64_t* beg, int64_t* end,
                   int32_t* col, float* val, ShardBuffers& b) {
    const int S = group.size();
    if (S == 1) return;
    const int64_t pairs = m * k;
    b.send.resize(size_t(2 * pairs));
    b.recv.resize(size_t(2 * pairs * S));
    b.cand_val.resize(size_t(pairs * S));
    b.cand_col.resize(size_t(pairs * S));
    b.out_val.resize(size_t(pairs));
    b.out_col.resize(size_t(pairs));
    // Each row's entries in the selection order, padded as shard_topk pads, packed as
    // [value, column] words for one allgather.
#pragma omp parallel
    {
        std::vector<int32_t> order(static_cast<size_t>(k));
#pragma omp for schedule(static)
        for (int64_t i = 0; i < m; ++i) {
            const int64_t r = beg[i], n = std::min(k, end[i] - r);
            for (int64_t t = 0; t < n; ++t) order[size_t(t)] = int32_t(t);
            std::sort(order.begin(), order.begin() + n,
                      [&](int32_t a, int32_t c) { return before(val[r + a], col[r + a], val[r + c], col[r + c]); });
            float* w = b.send.data() + 2 * i * k;
            for (int64_t t = 0; t < k; ++t) {
                const bool real = t < n;
                const int32_t c = real ? int32_t(begin + col[r + order[size_t(t)]]) : INT32_MAX;
                w[2 * t] = real ? val[r + order[size_t(t)]] : -std::numeric_limits<float>::infinity();
                std::memcpy(w + 2 * t + 1, &c, sizeof c);
            }
        }
    }
    group.allgather(b.send.data(), 2 * pairs * int64_t(sizeof(float)), b.recv.data(), "top-k merge");
    for (int64_t e = 0; e < pairs * S; ++e) {
        b.cand_val[size_t(e)] = b.recv[size_t(2 * e)];
        std::memcpy(&b.cand_col[size_t(e)], &b.recv[size_t(2 * e + 1)], sizeof(int32_t));
    }
    topk_merge(b.cand_val.data(), b.cand_col.data(), S, m, k, b.out_val.data(), b.out_col.data());
    // This shard's latents among each row's k best (in selection order; they are some of its own
    // entries, so they fit where its list was), back in column order.
#pragma omp parallel
    {
        std::vector<std::pair<int32_t, float>> keep(static_cast<size_t>(k));
#pragma omp for schedule(static)
        for (int64_t i = 0; i < m; ++i) {
            int64_t mine = 0;
            for (int64_t t = 0; t < k; ++t) {
                const int64_t c = b.out_col[size_t(i * k + t)];
                if (c >= begin && c < begin + count) keep[size_t(mine++)] = {int32_t(c - begin), b.out_val[size_t(i * k + t)]};
            }
            std::sort(keep.begin(), keep.begin() + mine);
            const int64_t r = beg[i];
            for (int64_t t = 0; t < mine; ++t) {
                col[r + t] = keep[size_t(t)].first;
                val[r + t] = keep[size_t(t)].second;
            }
            end[i] = r + mine;
        }
    }
}

}  // namespace sae
