#include "sae/shards.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
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

}  // namespace sae
