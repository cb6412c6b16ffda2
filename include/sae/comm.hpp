// The ranks of a distributed run and the few collectives training needs (as Backend is for
// products): a one-process implementation that does nothing, and an MPI one (src/comm_mpi.cpp,
// built with -DSAE_MPI=ON) when the process was started by mpirun. docs/distributed.md.
//
// Every collective must be called by every rank, in the same order, with the same sizes. The
// sums give every rank the same bits (MPI: reduced on rank 0, then broadcast), in an order fixed
// by the layout, so the same layout gives the same bits run after run.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace sae {

class Comm {
public:
    virtual ~Comm() = default;
    virtual int rank() const = 0;
    virtual int size() const = 0;
    // buf [n]: every rank's buffer replaced by the element-wise sum over ranks.
    virtual void allreduce_sum(float* buf, int64_t n, const char* what) = 0;
    virtual void allreduce_sum(double* buf, int64_t n, const char* what) = 0;
    // send [bytes] from every rank → recv [size() · bytes], rank r's block at r · bytes.
    virtual void allgather(const void* send, int64_t bytes, void* recv, const char* what) = 0;
    // The same, but only root's recv is filled (others may pass null).
    virtual void gather(const void* send, int64_t bytes, void* recv, int root, const char* what) = 0;
    // buf [bytes] copied from root to every rank.
    virtual void broadcast(void* buf, int64_t bytes, int root, const char* what) = 0;
    virtual void barrier() = 0;
    // The ranks of this one with the same color, ordered by key (then by rank here): a
    // communicator of its own (MPI_Comm_split). Every rank must call it, in the same order.
    virtual std::unique_ptr<Comm> split(int color, int key) = 0;
    // Ends every rank of the job now (after this rank has printed why).
    [[noreturn]] virtual void abort(int code) = 0;

    // Bytes this rank handed to each collective (by its `what`), the number of calls and the
    // seconds spent in them (waiting for the slowest rank included), for docs/distributed.md's
    // per-step accounting.
    struct Traffic {
        int64_t calls = 0, bytes = 0;
        double seconds = 0;
    };
    const std::map<std::string, Traffic>& traffic() const { return traffic_; }
    void reset_traffic() { traffic_.clear(); }
    // A communicator made by split() counts its traffic in its parent's account (so the world's
    // shows every collective of this rank).
    void count_into(Comm& parent) { ledger_ = parent.ledger_ ? parent.ledger_ : &parent; }

protected:
    Traffic& count(const char* what, int64_t bytes) {
        auto& t = (ledger_ ? ledger_ : this)->traffic_[what];
        ++t.calls;
        t.bytes += bytes;
        return t;
    }

private:
    std::map<std::string, Traffic> traffic_;
    Comm* ledger_ = nullptr;
};

// The process's communicator: MPI's world once comm_init() found an MPI launch, else one
// process (rank 0 of 1). The library itself never starts MPI (Python, tests: one process).
Comm& comm_world();
// Starts MPI when this build has it and the environment says mpirun (or srun) started the
// process; otherwise does nothing. Call once, early in main. MPI is finalised at exit.
void comm_init(int* argc, char*** argv);
// Whether this build has MPI (-DSAE_MPI=ON).
bool comm_mpi_built();
// The ranks of this job on this machine, as the launcher says (OMPI_COMM_WORLD_LOCAL_SIZE,
// MPI_LOCALNRANKS); 1 when it says nothing.
int comm_local_ranks();

// Prints "sae: error: <message>" on stderr; in a job of several ranks, then ends every rank
// (a rank other than 0 waits a moment first, so that when every rank fails alike the job
// prints one line, rank 0's).
void comm_fail(const std::string& message);

// Rows [begin, begin + count) of a batch of m rows that data replica r of n takes: contiguous
// and disjoint, the first m % n replicas one row more.
struct RowSlice {
    int64_t begin = 0, count = 0;
};
RowSlice replica_rows(int64_t m, int r, int n);

}  // namespace sae
