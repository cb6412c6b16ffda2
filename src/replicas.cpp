#include "sae/replicas.hpp"

#include <algorithm>

#include "sae/error.hpp"

namespace sae {

CostTerms replicas_cost(Comm& comm, Objective& obj, Backend& be, const float* params, const float* X, int64_t M,
                        float* grad, bool stop, bool* agreed_stop) {
    if (agreed_stop) *agreed_stop = stop;
    if (comm.size() == 1) return obj.cost(be, params, X, M, grad);
    const RowSlice mine = replica_rows(M, comm.rank(), comm.size());
    obj.set_batch_share(M, comm.rank(), comm.size(),
                        [&comm](double* b, int64_t k) { comm.allreduce_sum(b, k, "batch statistics"); });
    CostTerms J = obj.cost(be, params, X + mine.begin * obj.d_in(), mine.count, grad);
    const double w = double(mine.count) / double(M);
    double terms[6] = {J.rec * w, J.weight_decay * w, J.sparsity * w, J.aux * w, J.denoise * w, stop ? 1.0 : 0.0};
    if (grad) {
        const int64_t n = obj.layout().total;
        const float wf = float(w);
        for (int64_t i = 0; i < n; ++i) grad[i] *= wf;
        comm.allreduce_sum(grad, n, "gradient");
    }
    comm.allreduce_sum(terms, 6, "J terms");
    if (agreed_stop) *agreed_stop = terms[5] > 0;
    return {terms[0], terms[1], terms[2], terms[3], terms[4]};
}

void replicas_reduce(Comm& comm, Stats& st) {
    if (comm.size() == 1) return;
    std::vector<double> b = {double(st.n), st.sq_err, st.sum_x2, st.sum_abs_h, double(st.active),
                             st.sum_cos, st.sum_l2_ratio, st.sum_xhat2, st.sum_dot};
    const size_t head = b.size();
    b.insert(b.end(), st.sum_x.begin(), st.sum_x.end());
    b.insert(b.end(), st.sum_h.begin(), st.sum_h.end());
    for (int64_t f : st.fires) b.push_back(double(f));
    comm.allreduce_sum(b.data(), int64_t(b.size()), "statistics");
    st.n = int64_t(b[0]);
    st.sq_err = b[1];
    st.sum_x2 = b[2];
    st.sum_abs_h = b[3];
    st.active = int64_t(b[4]);
    st.sum_cos = b[5];
    st.sum_l2_ratio = b[6];
    st.sum_xhat2 = b[7];
    st.sum_dot = b[8];
    size_t at = head;
    for (auto& v : st.sum_x) v = b[at++];
    for (auto& v : st.sum_h) v = b[at++];
    for (auto& v : st.fires) v = int64_t(b[at++]);
}

void replicas_any(Comm& comm, std::vector<uint8_t>& flags, std::vector<float>& scratch) {
    if (comm.size() == 1) return;
    scratch.assign(flags.begin(), flags.end());
    comm.allreduce_sum(scratch.data(), int64_t(scratch.size()), "fired");
    for (size_t j = 0; j < flags.size(); ++j) flags[j] = scratch[j] > 0;
}

void replicas_gather_rows(Comm& comm, const float* mine, int64_t M, int64_t cols, std::vector<float>& all) {
    const int n = comm.size();
    const RowSlice s = replica_rows(M, comm.rank(), n);
    const int64_t block = replica_rows(M, 0, n).count * cols;  // the largest slice
    std::vector<float> send(size_t(block), 0.0f), recv(size_t(block * n));
    std::copy(mine, mine + s.count * cols, send.begin());
    comm.allgather(send.data(), block * int64_t(sizeof(float)), recv.data(), "rows");
    all.resize(size_t(M * cols));
    for (int r = 0; r < n; ++r) {
        const RowSlice t = replica_rows(M, r, n);
        std::copy(recv.begin() + r * block, recv.begin() + r * block + t.count * cols, all.begin() + t.begin * cols);
    }
}

void replicas_check_same(Comm& comm, const std::vector<float>& params, int64_t step) {
    if (comm.size() == 1) return;
    uint64_t h = 1469598103934665603ULL;  // FNV-1a of the bytes
    const auto* b = reinterpret_cast<const unsigned char*>(params.data());
    for (size_t i = 0; i < params.size() * sizeof(float); ++i) h = (h ^ b[i]) * 1099511628211ULL;
    std::vector<uint64_t> all(size_t(comm.size()));
    comm.allgather(&h, sizeof h, all.data(), "parameter check");
    for (int r = 1; r < comm.size(); ++r)
        check(all[size_t(r)] == all[0], "step " + std::to_string(step) + ": rank " + std::to_string(r) +
                                            "'s parameters differ from rank 0's; the replicas diverged (a bug: please report it)");
}

}  // namespace sae
