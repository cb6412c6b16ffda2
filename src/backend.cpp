#include "sae/backend.hpp"

#include <dnnl.h>
#include <omp.h>

#include "sae/error.hpp"

namespace sae {
namespace {

// Element (i, j) of op(X) where X is row-major with leading dimension ld.
template <class T>
inline T at(const T* X, int64_t ld, Trans t, int64_t i, int64_t j) {
    return t == Trans::no ? X[i * ld + j] : X[j * ld + i];
}

// Plain loop product, accumulating in T. Obviously correct; used by the reference backend.
template <class T>
void gemm_loops(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
    for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
            T acc = 0;
            for (int64_t k = 0; k < K; ++k) acc += at(A, lda, ta, i, k) * at(B, ldb, tb, k, j);
            T& c = C[i * ldc + j];
            c = (beta == T(0) ? T(0) : beta * c) + alpha * acc;
        }
}

// Cache-friendlier double product for gradient checks on the fast path: rows of C are
// independent, so they are split over threads; the i-k-j order streams rows of op(B).
void gemm_f64_blocked(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, double alpha,
                      const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                      double* C, int64_t ldc) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < M; ++i) {
        double* c = C + i * ldc;
        for (int64_t j = 0; j < N; ++j) c[j] = (beta == 0.0) ? 0.0 : beta * c[j];
        for (int64_t k = 0; k < K; ++k) {
            const double a = alpha * at(A, lda, ta, i, k);
            if (a == 0.0) continue;
            if (tb == Trans::no) {
                const double* b = B + k * ldb;
                for (int64_t j = 0; j < N; ++j) c[j] += a * b[j];
            } else {
                for (int64_t j = 0; j < N; ++j) c[j] += a * B[j * ldb + k];
            }
        }
    }
}

class ReferenceBackend final : public Backend {
public:
    std::string name() const override { return "reference"; }
    void gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
              int64_t lda, const float* B, int64_t ldb, float beta, float* C,
              int64_t ldc) override {
        gemm_loops(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    }
    void gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, double alpha,
              const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
              double* C, int64_t ldc) override {
        gemm_loops(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    }
};

class OneDnnBackend final : public Backend {
public:
    std::string name() const override { return "onednn"; }
    void gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
              int64_t lda, const float* B, int64_t ldb, float beta, float* C,
              int64_t ldc) override {
        if (M == 0 || N == 0) return;
        const dnnl_status_t st =
            dnnl_sgemm(ta == Trans::yes ? 'T' : 'N', tb == Trans::yes ? 'T' : 'N', M, N, K,
                       alpha, A, lda, B, ldb, beta, C, ldc);
        if (st != dnnl_success)  // message built only on failure: no allocation per product
            throw Error("oneDNN sgemm failed (status " + std::to_string(int(st)) +
                        "); this is a bug, please report the shapes M=" + std::to_string(M) +
                        " N=" + std::to_string(N) + " K=" + std::to_string(K));
    }
    void gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, double alpha,
              const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
              double* C, int64_t ldc) override {
        gemm_f64_blocked(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    }
};

}  // namespace

std::vector<std::string> backend_names() { return {"onednn", "reference"}; }

std::unique_ptr<Backend> backend_create(const std::string& name) {
    if (name == "onednn") return std::make_unique<OneDnnBackend>();
    if (name == "reference") return std::make_unique<ReferenceBackend>();
    std::string list;
    for (const auto& n : backend_names()) list += (list.empty() ? "" : ", ") + n;
    throw Error("backend '" + name + "' is not available; available backends: " + list);
}

void set_num_threads(int threads) {
    if (threads > 0) omp_set_num_threads(threads);
}
int get_num_threads() { return omp_get_max_threads(); }

}  // namespace sae
