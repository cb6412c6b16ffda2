// Data replicas (docs/distributed.md): the few points where the ranks of an mpirun job meet in a
// training step. Every rank holds the same parameters and the whole batch, and costs its
// contiguous rows of it (replica_rows); these sum what the ranks computed. One process: each is
// the identity (the cost of the whole batch, nothing exchanged).
#pragma once
#include <cstdint>
#include <vector>

#include "sae/backend.hpp"
#include "sae/comm.hpp"
#include "sae/metrics.hpp"
#include "sae/objective.hpp"

namespace sae {

// The cost of the batch X [M, d_in] and, when grad is not null, its gradient [layout().total]:
// this rank's rows of it (obj.set_batch_share tells the objective the whole batch's size), its
// J terms and gradient weighted by m/M (each a mean over the rows plus terms of the parameters
// alone, which the weights, summing to 1, keep once), then summed over the ranks. The stop
// request travels with the sum: *agreed_stop (if not null) is whether any rank asked to stop,
// so every rank stops after the same step. Afterwards obj.hidden()/reconstruction()/active_rows()
// hold this rank's rows.
CostTerms replicas_cost(Comm& comm, Objective& obj, Backend& be, const float* params, const float* X, int64_t M,
                        float* grad, bool stop = false, bool* agreed_stop = nullptr);

// Statistics of each rank's rows → of the whole batch(es), on every rank.
void replicas_reduce(Comm& comm, Stats& st);

// flags [n] (0/1) → 1 where any rank has 1 (scratch: reused room).
void replicas_any(Comm& comm, std::vector<uint8_t>& flags, std::vector<float>& scratch);

// Each rank's rows mine [count, cols] of a batch of M rows → the whole batch all [M, cols], on
// every rank.
void replicas_gather_rows(Comm& comm, const float* mine, int64_t M, int64_t cols, std::vector<float>& all);

// Throws Error naming the first rank whose parameters differ from rank 0's (the replicas must
// hold the same bits; a difference is a bug), at training step `step`.
void replicas_check_same(Comm& comm, const std::vector<float>& params, int64_t step);

}  // namespace sae
