// Latent shards' TopK pieces (sae/shards.hpp): every shard's k best per row, merged, are the
// whole row's k best in one process's order, whatever the split (uneven d_sae, shards smaller
// than k) and with masses of ties and NaNs. Then the sharded step itself (modern_cost with
// ws.shards, its shards as threads of this process): the same selections, cost and gradient as
// the whole dictionary in one workspace, and the shard's part of the whole initialisation.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <mutex>
#include <numeric>
#include <set>
#include <vector>

#include "sae/backend.hpp"
#include "sae/modern.hpp"
#include "sae/rng.hpp"
#include "sae/shards.hpp"
#include "test_util.hpp"

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
                std::vector<float> pre(static_cast<size_t>(m * d_sae));
                for (auto& v : pre) {
                    const double u = rng.uniform();
                    v = u < 0.05 ? NAN : float(std::floor(rng.uniform() * 6.0) - 2.0);  // many ties, some NaN
                }
                std::vector<float> cand_val(static_cast<size_t>(S * m * k));
                std::vector<int32_t> cand_col(static_cast<size_t>(S * m * k));
                for (int s = 0; s < S; ++s) {
                    const auto sl = sae::latent_slice(d_sae, s, S);
                    std::vector<float> mine(static_cast<size_t>(m * sl.count));
                    for (int64_t i = 0; i < m; ++i)
                        for (int64_t j = 0; j < sl.count; ++j) mine[size_t(i * sl.count + j)] = pre[size_t(i * d_sae + sl.begin + j)];
                    sae::shard_topk(mine.data(), m, sl.count, sl.begin, k, cand_val.data() + s * m * k, cand_col.data() + s * m * k);
                }
                std::vector<float> val(static_cast<size_t>(m * k));
                std::vector<int32_t> col(static_cast<size_t>(m * k));
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

// shards_select over threads: each shard's TopK lists (its k best positive entries, as the TopK
// selection keeps them) become its part of the whole row's selection, ties to the lower latent.
TEST(Shards, SelectGivesEachShardItsPartOfTheWholeSelection) {
    sae::Rng rng(11);
    const int64_t m = 7;
    for (int64_t d_sae : {13, 64})
        for (int S : {2, 3, 5})
            for (int64_t k : {1, 4, 16}) {
                if (k > d_sae) continue;
                std::vector<float> pre(static_cast<size_t>(m * d_sae));
                for (auto& v : pre) v = float(std::floor(rng.uniform() * 5.0) - 1.0) * 0.5f;  // ties; some ≤ 0
                std::vector<std::vector<int32_t>> got(static_cast<size_t>(S));  // each shard's kept global columns
                sae_test::run_ranks(S, [&](sae::Comm& comm) {
                    const auto sl = sae::latent_slice(d_sae, comm.rank(), S);
                    std::vector<int64_t> beg(static_cast<size_t>(m)), end(static_cast<size_t>(m));
                    std::vector<int32_t> col(static_cast<size_t>(m * k));
                    std::vector<float> val(static_cast<size_t>(m * k));
                    for (int64_t i = 0; i < m; ++i) {  // the shard's TopK: k best, positive, column order
                        std::vector<float> row(pre.begin() + i * d_sae + sl.begin, pre.begin() + i * d_sae + sl.begin + sl.count);
                        auto best = reference_topk(row, std::min(k, sl.count));
                        std::sort(best.begin(), best.end());
                        beg[size_t(i)] = end[size_t(i)] = i * k;
                        for (int32_t j : best)
                            if (row[size_t(j)] > 0) {
                                col[size_t(end[size_t(i)])] = j;
                                val[size_t(end[size_t(i)]++)] = row[size_t(j)];
                            }
                    }
                    sae::ShardBuffers b;
                    sae::shards_select(comm, sl.begin, sl.count, m, k, beg.data(), end.data(), col.data(), val.data(), b);
                    auto& mine = got[size_t(comm.rank())];
                    for (int64_t i = 0; i < m; ++i)
                        for (int64_t e = beg[size_t(i)]; e < end[size_t(i)]; ++e) {
                            if (e > beg[size_t(i)]) EXPECT_LT(col[size_t(e - 1)], col[size_t(e)]) << "column order";
                            EXPECT_EQ(val[size_t(e)], pre[size_t(i * d_sae + sl.begin + col[size_t(e)])]);
                            mine.push_back(int32_t(i * d_sae + sl.begin + col[size_t(e)]));
                        }
                });
                std::vector<int32_t> all;
                for (auto& g : got) all.insert(all.end(), g.begin(), g.end());
                std::sort(all.begin(), all.end());
                std::vector<int32_t> want;
                for (int64_t i = 0; i < m; ++i) {
                    const std::vector<float> row(pre.begin() + i * d_sae, pre.begin() + (i + 1) * d_sae);
                    for (int32_t j : reference_topk(row, k))
                        if (row[size_t(j)] > 0) want.push_back(int32_t(i * d_sae + j));
                }
                std::sort(want.begin(), want.end());
                EXPECT_EQ(all, want) << "d_sae " << d_sae << " S " << S << " k " << k;
            }
}

// The shard's parameters [its layout] from the whole model's: W_enc's columns, the rows of every
// [d_sae, ...] tensor, b_dec as it is.
std::vector<float> shard_params(const sae::ParamLayout& whole, const sae::ParamLayout& part, const std::vector<float>& p,
                                int64_t d_in, int64_t d_sae, int64_t begin, int64_t count) {
    std::vector<float> out(static_cast<size_t>(part.total));
    for (const auto& v : part.views) {
        const auto& w = whole.get(v.name);
        if (v.name == "b_dec")
            std::copy(p.begin() + w.offset, p.begin() + w.offset + w.numel(), out.begin() + v.offset);
        else if (v.name == "W_enc")
            for (int64_t c = 0; c < d_in; ++c)
                for (int64_t j = 0; j < count; ++j) out[size_t(v.offset + c * count + j)] = p[size_t(w.offset + c * d_sae + begin + j)];
        else
            for (int64_t per = w.numel() / d_sae, j = 0; j < count * per; ++j)
                out[size_t(v.offset + j)] = p[size_t(w.offset + begin * per + j)];
    }
    return out;
}

TEST(Shards, ShardInitIsItsPartOfTheWholeInit) {
    sae::ModernSpec whole;
    whole.d_in = 7;
    whole.d_sae = 25;
    whole.arch = sae::Arch::jumprelu;
    const auto L = sae::modern_layout(whole);
    std::vector<float> p(static_cast<size_t>(L.total));
    sae::Rng rng(42);
    sae::modern_init(whole, L, p.data(), rng);
    for (int S : {2, 3, 4})
        for (int s = 0; s < S; ++s) {
            const auto sl = sae::latent_slice(whole.d_sae, s, S);
            sae::ModernSpec part = whole;
            part.d_sae = sl.count;
            part.latent_begin = sl.begin;
            part.latents_total = whole.d_sae;
            const auto Lp = sae::modern_layout(part);
            std::vector<float> q(static_cast<size_t>(Lp.total));
            sae::Rng r2(42);
            sae::modern_init(part, Lp, q.data(), r2);
            EXPECT_EQ(q, shard_params(L, Lp, p, whole.d_in, whole.d_sae, sl.begin, sl.count)) << "shard " << s << " of " << S;
        }
}

// modern_cost on S shards (threads) against one workspace holding every latent: the same
// selections (TopK, AuxK among dead latents of every shard), the same J and, up to the order of
// sums, each shard's slice of the whole gradient (b_dec's summed over the shards).
TEST(Shards, ShardedCostIsTheWholeCost) {
    const int64_t m = 40, d_in = 9, d_sae = 25;
    sae::Rng rng(3);
    std::vector<float> X0(static_cast<size_t>(m * d_in));
    for (auto& v : X0) v = float(rng.uniform(-1, 1));
    struct Case {
        sae::Arch arch;
        int64_t block;  // TopK's encoder block (fused below m)
        bool ties;      // latents j and j mod 7 alike, rows 2i and 2i + 1 alike: masses of exact ties
    };
    for (const Case c : {Case{sae::Arch::topk, 0, false}, Case{sae::Arch::topk, 16, false}, Case{sae::Arch::batchtopk, 0, false},
                         Case{sae::Arch::standard, 0, false}, Case{sae::Arch::jumprelu, 0, false}, Case{sae::Arch::gated, 0, false},
                         Case{sae::Arch::matryoshka_batchtopk, 0, false},
                         Case{sae::Arch::topk, 0, true}, Case{sae::Arch::batchtopk, 0, true}}) {
        // (ties: the plain-loop backend, whose every product entry is the same sum wherever its column sits)
        auto be = sae::backend_create(c.ties ? "reference" : "onednn");
        sae::ModernSpec whole;
        whole.d_in = d_in;
        whole.d_sae = d_sae;
        whole.arch = c.arch;
        whole.k = 4;
        whole.k_aux = sae::arch_info(c.arch).aux_k ? 6 : 0;
        whole.initial_threshold = 0.02;
        whole.bandwidth = 0.05;
        if (sae::arch_info(c.arch).nested) {  // groups that the shards cut through
            whole.group_ends = {7, 13, 25};
            whole.group_weights = {1.0, 0.5, 2.0};
        }
        const auto L = sae::modern_layout(whole);
        std::vector<float> p(static_cast<size_t>(L.total));
        sae::Rng r(7);
        sae::modern_init(whole, L, p.data(), r);
        for (int64_t t = 0; t < d_in; ++t) p[size_t(L.get("b_dec").offset + t)] = float(0.1 * rng.uniform(-1, 1));
        for (int64_t j = 0; j < d_sae; ++j) p[size_t(L.get(sae::arch_info(c.arch).enc_bias).offset + j)] = float(0.05 * rng.uniform(-1, 1));
        std::vector<float> X = X0;
        if (c.ties) {
            const auto& we = L.get("W_enc");
            const auto& wd = L.get("W_dec");
            const auto& bb = L.get(sae::arch_info(c.arch).enc_bias);
            for (int64_t j = 7; j < d_sae; ++j) {
                for (int64_t t = 0; t < d_in; ++t) {
                    p[size_t(we.offset + t * d_sae + j)] = p[size_t(we.offset + t * d_sae + j % 7)];
                    p[size_t(wd.offset + j * d_in + t)] = p[size_t(wd.offset + (j % 7) * d_in + t)];
                }
                p[size_t(bb.offset + j)] = p[size_t(bb.offset + j % 7)];
            }
            for (int64_t i = 1; i < m; i += 2) std::copy(X.begin() + (i - 1) * d_in, X.begin() + i * d_in, X.begin() + i * d_in);
        }
        std::vector<uint8_t> dead(size_t(d_sae), 0);
        for (int64_t j = 0; j < d_sae; ++j) dead[size_t(j)] = j % 3 == 0 || j > 20;  // some shards have none
        const uint8_t* dmask = whole.k_aux > 0 ? dead.data() : nullptr;

        sae::ModernWorkspace<float> ws;
        ws.dense_h = false;
        ws.encoder_block = c.block;
        ws.reserve(whole, m);
        std::vector<float> g(static_cast<size_t>(L.total));
        const sae::CostTerms J = sae::modern_cost<float>(*be, whole, L, p.data(), X.data(), m, g.data(), ws, dmask);
        std::set<std::pair<int64_t, int32_t>> want_act, want_aux;
        for (int64_t i = 0; i < m; ++i) {
            if (ws.sparse_used)
                for (int64_t e = ws.act.beg[size_t(i)]; e < ws.act.end[size_t(i)]; ++e) want_act.insert({i, ws.act.col[size_t(e)]});
            if (dmask)
                for (int64_t e = ws.aux.beg[size_t(i)]; e < ws.aux.end[size_t(i)]; ++e) want_aux.insert({i, ws.aux.col[size_t(e)]});
        }
        if (dmask) ASSERT_GT(J.aux, 0.0);
        double gmax = 0;
        for (float v : g) gmax = std::max(gmax, double(std::fabs(v)));

        for (int S : {2, 3}) {
            SCOPED_TRACE("arch " + sae::arch_name(c.arch) + " block " + std::to_string(c.block) + (c.ties ? " ties" : "") +
                         " shards " + std::to_string(S));
            std::mutex mu;
            std::set<std::pair<int64_t, int32_t>> got_act, got_aux;
            std::vector<sae::CostTerms> Js(static_cast<size_t>(S));
            std::vector<float> gb(static_cast<size_t>(d_in * S));
            sae_test::run_ranks(S, [&](sae::Comm& comm) {
                const int s = comm.rank();
                const auto sl = sae::latent_slice(d_sae, s, S);
                sae::ModernSpec part = whole;
                part.d_sae = sl.count;
                part.latent_begin = sl.begin;
                part.latents_total = d_sae;
                const auto Lp = sae::modern_layout(part);
                const auto q = shard_params(L, Lp, p, d_in, d_sae, sl.begin, sl.count);
                std::vector<uint8_t> mydead(dead.begin() + sl.begin, dead.begin() + sl.begin + sl.count);
                bool any = false;
                for (auto v : mydead) any |= v != 0;
                sae::ModernWorkspace<float> w;
                w.dense_h = false;
                w.encoder_block = c.block;
                w.threads = 1;
                w.shards = &comm;
                w.reserve(part, m);
                std::vector<float> gq(static_cast<size_t>(Lp.total));
                // A shard with no dead latent passes no mask, as the trainer does.
                auto own = sae::backend_create(c.ties ? "reference" : "onednn");  // (a backend's caches are per process)
                Js[size_t(s)] = sae::modern_cost<float>(*own, part, Lp, q.data(), X.data(), m, gq.data(), w,
                                                        dmask && any ? mydead.data() : nullptr);
                const auto want = shard_params(L, Lp, g, d_in, d_sae, sl.begin, sl.count);
                for (const auto& v : Lp.views)
                    for (int64_t t = 0; t < v.numel(); ++t)
                        ASSERT_NEAR(gq[size_t(v.offset + t)], want[size_t(v.offset + t)], 1e-5 * gmax) << v.name << " " << t;
                std::copy(gq.begin() + Lp.get("b_dec").offset, gq.begin() + Lp.get("b_dec").offset + d_in, gb.begin() + s * d_in);
                const std::lock_guard<std::mutex> lock(mu);
                for (int64_t i = 0; i < m; ++i) {
                    if (w.sparse_used)
                        for (int64_t e = w.act.beg[size_t(i)]; e < w.act.end[size_t(i)]; ++e)
                            got_act.insert({i, int32_t(sl.begin + w.act.col[size_t(e)])});
                    if (dmask)
                        for (int64_t e = w.aux.beg[size_t(i)]; e < w.aux.end[size_t(i)]; ++e)
                            got_aux.insert({i, int32_t(sl.begin + w.aux.col[size_t(e)])});
                }
            });
            for (int s = 0; s < S; ++s) {
                EXPECT_NEAR(Js[size_t(s)].rec, J.rec, 1e-5 * J.rec);
                EXPECT_NEAR(Js[size_t(s)].sparsity, J.sparsity, 1e-5 * std::max(1e-3, J.sparsity));
                EXPECT_NEAR(Js[size_t(s)].aux, J.aux, 1e-5 * std::max(1e-3, J.aux));
                EXPECT_EQ(Js[size_t(s)].rec, Js[0].rec) << "every shard holds the same J";
                for (int64_t t = 0; t < d_in; ++t) EXPECT_EQ(gb[size_t(s * d_in + t)], gb[size_t(t)]) << "b_dec's gradient, the same bits";
            }
            if (sae::arch_info(c.arch).uses_k) EXPECT_EQ(got_act, want_act);
            EXPECT_EQ(got_aux, want_aux);
        }
    }
}

}  // namespace
