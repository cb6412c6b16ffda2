#include "sae/comm.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>

namespace sae {

#ifdef SAE_HAVE_MPI
// src/comm_mpi.cpp: null when the environment is not an MPI launch.
std::unique_ptr<Comm> comm_mpi_create(int* argc, char*** argv);
#endif

namespace {

// One process: every collective is the identity (allgather/gather copy the block).
class LocalComm final : public Comm {
public:
    int rank() const override { return 0; }
    int size() const override { return 1; }
    void allreduce_sum(float*, int64_t, const char*) override {}
    void allreduce_sum(double*, int64_t, const char*) override {}
    void allgather(const void* send, int64_t bytes, void* recv, const char*) override {
        if (recv != send) std::memmove(recv, send, size_t(bytes));
    }
    void gather(const void* send, int64_t bytes, void* recv, int, const char*) override {
        if (recv && recv != send) std::memmove(recv, send, size_t(bytes));
    }
    void broadcast(void*, int64_t, int, const char*) override {}
    void barrier() override {}
    std::unique_ptr<Comm> split(int, int) override { return std::make_unique<LocalComm>(); }
    [[noreturn]] void abort(int code) override {
        std::fflush(nullptr);
        std::_Exit(code);
    }
};

std::unique_ptr<Comm>& world() {
    static std::unique_ptr<Comm> w = std::make_unique<LocalComm>();
    return w;
}

}  // namespace

Comm& comm_world() { return *world(); }

bool comm_mpi_built() {
#ifdef SAE_HAVE_MPI
    return true;
#else
    return false;
#endif
}

int comm_local_ranks() {
    for (const char* v : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"})
        if (const char* s = std::getenv(v)) {
            const int n = std::atoi(s);
            if (n > 0) return n;
        }
    return 1;
}

void comm_init(int* argc, char*** argv) {
#ifdef SAE_HAVE_MPI
    if (auto c = comm_mpi_create(argc, argv)) world() = std::move(c);
#else
    (void)argc;
    (void)argv;
    // mpirun -np N of a build without MPI: N copies would each train alone into the same files.
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"})
        if (const char* n = std::getenv(v); n && std::atoi(n) > 1) {
            const char* r = std::getenv("OMPI_COMM_WORLD_RANK");
            if (r && std::atoi(r) != 0) std::exit(1);  // rank 0 says why, once
            std::fprintf(stderr, "sae: error: started by mpirun with %s ranks, but this sae was built without MPI "
                                 "(-DSAE_MPI=OFF); install libopenmpi-dev and rebuild, or run one process\n", n);
            std::exit(1);
        }
#endif
}

void comm_fail(const std::string& message) {
    Comm& c = comm_world();
    // Rank 0's MPI_Abort ends the others well within this when every rank fails alike (0.5 s
    // was too little on a loaded machine: a second rank's line got out first); a rank failing
    // alone (bad data in its rows) prints after it.
    if (c.size() > 1 && c.rank() != 0) std::this_thread::sleep_for(std::chrono::seconds(5));
    std::fprintf(stderr, "sae: error: %s\n", message.c_str());
    std::fflush(stderr);
    if (c.size() > 1) c.abort(1);
}

RowSlice replica_rows(int64_t m, int r, int n) {
    const int64_t base = m / n, extra = m % n;
    return {int64_t(r) * base + std::min<int64_t>(r, extra), base + (r < extra ? 1 : 0)};
}

}  // namespace sae
