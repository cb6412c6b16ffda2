// One interface for every matrix product. Row-major throughout:
//   C[M,N] = alpha · op(A)[M,K] · op(B)[K,N] + beta · C
// op(A) is A [M,K] (lda ≥ K) or, transposed, A stored as [K,M] (lda ≥ M); likewise B.
// Backends: "onednn" (fp32 through oneDNN; fp64 through a blocked loop, used for gradient
// checks) and "reference" (plain loops, both precisions). Later backends (bf16, CUDA) add
// themselves to backend_create and backend_names.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sae {

enum class Trans { no, yes };

class Backend {
public:
    virtual ~Backend() = default;
    virtual std::string name() const = 0;
    virtual void gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha,
                      const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                      float* C, int64_t ldc) = 0;
    virtual void gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, double alpha,
                      const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                      double* C, int64_t ldc) = 0;
};

// Creates a backend by name; an unknown name throws sae::Error listing backend_names().
std::unique_ptr<Backend> backend_create(const std::string& name);
std::vector<std::string> backend_names();

// Sets the thread count used by OpenMP and oneDNN (0 = leave the runtime's default).
void set_num_threads(int threads);
int get_num_threads();

}  // namespace sae
