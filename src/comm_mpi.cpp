// The communicator over MPI (built with -DSAE_MPI=ON): MPI_COMM_WORLD, started only when the
// environment shows an MPI launch (mpirun, srun), funnelled (only the main thread calls MPI).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <memory>

#include "sae/comm.hpp"
#include "sae/error.hpp"

namespace sae {
namespace {

// MPI counts are int: long buffers go in pieces.
constexpr int64_t kPiece = int64_t(1) << 30;

// Adds the seconds of its lifetime to a collective's account.
class Timed {
public:
    explicit Timed(Comm::Traffic& t) : t_(t), start_(std::chrono::steady_clock::now()) {}
    ~Timed() { t_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }

private:
    Comm::Traffic& t_;
    std::chrono::steady_clock::time_point start_;
};

class MpiComm final : public Comm {
public:
    explicit MpiComm(MPI_Comm c = MPI_COMM_WORLD) : c_(c) {
        MPI_Comm_rank(c_, &rank_);
        MPI_Comm_size(c_, &size_);
    }
    ~MpiComm() override {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (c_ != MPI_COMM_WORLD && !finalized) MPI_Comm_free(&c_);
    }
    int rank() const override { return rank_; }
    int size() const override { return size_; }
    void allreduce_sum(float* buf, int64_t n, const char* what) override { sum(buf, n, MPI_FLOAT, sizeof(float), what); }
    void allreduce_sum(double* buf, int64_t n, const char* what) override { sum(buf, n, MPI_DOUBLE, sizeof(double), what); }
    void allgather(const void* send, int64_t bytes, void* recv, const char* what) override {
        const Timed timed(count(what, bytes));
        check(bytes <= INT_MAX, "allgather: a block of more than 2 GiB");
        MPI_Allgather(send, int(bytes), MPI_BYTE, recv, int(bytes), MPI_BYTE, c_);
    }
    void gather(const void* send, int64_t bytes, void* recv, int root, const char* what) override {
        const Timed timed(count(what, bytes));
        check(bytes <= INT_MAX, "gather: a block of more than 2 GiB");
        MPI_Gather(send, int(bytes), MPI_BYTE, recv, int(bytes), MPI_BYTE, root, c_);
    }
    void broadcast(void* buf, int64_t bytes, int root, const char* what) override {
        const Timed timed(count(what, bytes));
        for (int64_t at = 0; at < bytes; at += kPiece)
            MPI_Bcast(static_cast<char*>(buf) + at, int(std::min(kPiece, bytes - at)), MPI_BYTE, root, c_);
    }
    void barrier() override { MPI_Barrier(c_); }
    std::unique_ptr<Comm> split(int color, int key) override {
        MPI_Comm sub;
        MPI_Comm_split(c_, color, key, &sub);
        auto c = std::make_unique<MpiComm>(sub);
        c->count_into(*this);
        return c;
    }
    [[noreturn]] void abort(int code) override {
        MPI_Abort(MPI_COMM_WORLD, code);
        std::_Exit(code);
    }

private:
    // Reduced on rank 0 in the library's fixed order for this layout and size, then broadcast:
    // every rank holds the same bits (MPI_Allreduce does not promise that).
    void sum(void* buf, int64_t n, MPI_Datatype type, int64_t elem, const char* what) {
        const Timed timed(count(what, n * elem));
        char* p = static_cast<char*>(buf);
        for (int64_t at = 0; at < n; at += kPiece) {
            const int len = int(std::min(kPiece, n - at));
            void* chunk = p + at * elem;
            if (rank_ == 0) MPI_Reduce(MPI_IN_PLACE, chunk, len, type, MPI_SUM, 0, c_);
            else MPI_Reduce(chunk, nullptr, len, type, MPI_SUM, 0, c_);
            MPI_Bcast(chunk, len, type, 0, c_);
        }
    }
    MPI_Comm c_;
    int rank_ = 0, size_ = 1;
};

bool launched_by_mpi() {
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
        if (std::getenv(v)) return true;
    return false;
}

extern "C" void finalize_at_exit() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
}

}  // namespace

std::unique_ptr<Comm> comm_mpi_create(int* argc, char*** argv) {
    if (!launched_by_mpi()) return nullptr;
    int provided = 0;
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    std::atexit(finalize_at_exit);
    auto c = std::make_unique<MpiComm>();
    if (c->size() == 1) return nullptr;  // mpirun -np 1: one process, as without mpirun
    return c;
}

}  // namespace sae
