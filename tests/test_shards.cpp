// Latent shards' TopK pieces (sae/shards.hpp): every shard's k best per row, merged, are the
// whole row's k best in one process's order, whatever the split (uneven d_sae, shards smaller
// than k) and with masses of ties and NaNs.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <numeric>
#include <vector>

#include "sae/rng.hpp"
#include "sae/shards.hpp"

namespace {

// The reference: the whole row sorted by (value desc, column asc), NaN as −∞, first k.
std::vector<int32_t> reference_topk(const std::vector<float>& row, int64_t k) {
    std::vector<int32_t> idx(row.size());
    std::iota(idx.begin(), idx.end(), 0);
    auto key = [](float v) { return std::isnan(v) ? -INFINITY : v; };
    std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return key(row[size_t(a)]) > key(row[size_t(b)]); });
    idx.resize(size_t(k));
    return idx;
}

TEST(Shards, LatentSlicesCoverInOrder) {
    for (int64_t d : {1, 7, 64, 1001})
        for (int S : {1, 2, 3, 4, 7}) {
            int64_t next = 0;
            for (int s = 0; s < S; ++s) {
                const auto r = sae::latent_slice(d, s, S);
                EXPECT_EQ(r.begin, next);
                EXPECT_LE(r.count, (d + S - 1) / S);
                next += r.count;
            }
            EXPECT_EQ(next, d);
        }
}

TEST(Shards, MergedShardTopkIsTheWholeRowsTopk) {
    sae::Rng rng(5);
    const int64_t m = 9;
    for (int64_t d_sae : {13, 64, 101})
        for (int S : {1, 2, 3, 5})
            for (int64_t k : {1, 4, 16}) {
                if (k > d_sae) continue;
                std::vector<float> pre(size_t(m * d_sae));
                for (auto& v : pre) {
                    const double u = rng.uniform();
                    v = u < 0.05 ? NAN : float(std::floor(rng.uniform() * 6.0) - 2.0);  // many ties, some NaN
                }
                std::vector<float> cand_val(size_t(S * m * k));
                std::vector<int32_t> cand_col(size_t(S * m * k));
                for (int s = 0; s < S; ++s) {
                    const auto sl = sae::latent_slice(d_sae, s, S);
                    std::vector<float> mine(size_t(m * sl.count));
                    for (int64_t i = 0; i < m; ++i)
                        for (int64_t j = 0; j < sl.count; ++j) mine[size_t(i * sl.count + j)] = pre[size_t(i * d_sae + sl.begin + j)];
                    sae::shard_topk(mine.data(), m, sl.count, sl.begin, k, cand_val.data() + s * m * k, cand_col.data() + s * m * k);
                }
                std::vector<float> val(size_t(m * k));
                std::vector<int32_t> col(size_t(m * k));
                sae::topk_merge(cand_val.data(), cand_col.data(), S, m, k, val.data(), col.data());
                for (int64_t i = 0; i < m; ++i) {
                    const std::vector<float> row(pre.begin() + i * d_sae, pre.begin() + (i + 1) * d_sae);
                    const auto want = reference_topk(row, k);
                    for (int64_t t = 0; t < k; ++t) {
                        ASSERT_EQ(col[size_t(i * k + t)], want[size_t(t)]) << "d_sae " << d_sae << " S " << S << " k " << k << " row " << i;
                        const float v = val[size_t(i * k + t)], w = row[size_t(want[size_t(t)])];
                        EXPECT_TRUE(v == w || (std::isnan(v) && std::isnan(w)));
                    }
                }
            }
}

}  // namespace
