// One interface for every matrix product. Row-major throughout:
//   C[M,N] = alpha · op(A)[M,K] · op(B)[K,N] + beta · C
// op(A) is A [M,K] (lda ≥ K) or, transposed, A stored as [K,M] (lda ≥ M); likewise B.
// Backends: "onednn" (fp32 and bf16 through oneDNN matmul primitives, created once per shape and
// reused; fp64 through a blocked loop, used for gradient checks) and "reference" (plain loops,
// both precisions; bf16 emulated by rounding the inputs). Later backends (CUDA) add themselves
// to backend_create and backend_names.
//
// A Backend is not thread-safe: one object serves one caller at a time (it owns the primitive
// cache and the bf16 conversion buffers). Products themselves run on all OpenMP threads.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sae {

enum class Trans { no, yes };

// How the products of a float gemm are formed. f32: fp32 inputs. bf16: both inputs rounded to
// bfloat16 (round to nearest, ties to even), products and accumulation in fp32, fp32 output. A
// product of two bf16 numbers is exact in fp32, so bf16 differs from f32 only by the rounding
// of the inputs (relative 2^-9 per element) and the order of the sums.
enum class Precision { f32, bf16 };
Precision precision_parse(const std::string& name);  // "float32" (alias "f32") or "bf16"
std::string precision_name(Precision p);             // "float32" or "bf16"

// bfloat16 as its 16-bit pattern: the top half of the fp32 number, rounded to nearest even.
// NaN stays NaN (quiet), ±inf stays ±inf; finite numbers beyond the bf16 range round to ±inf.
uint16_t float_to_bf16(float x);
float bf16_to_float(uint16_t b);
// dst[r·cols + c] = bf16(src[r·ld + c]) for r < rows, c < cols (packs a strided block).
void round_to_bf16(const float* src, int64_t rows, int64_t cols, int64_t ld, uint16_t* dst);
// The same, writing the rounded values back as floats (the emulation path).
void round_to_bf16(const float* src, int64_t rows, int64_t cols, int64_t ld, float* dst);

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

    // The general float product: C = alpha·op(A)·op(B) + beta·C, plus bias[j] added to every
    // row of C when bias [N] is not null, with the products in `precision`. This base version
    // builds it from gemm(): bf16 by rounding copies of A and B into buffers this object owns
    // (grown on first use, then reused: no allocation once warm), the bias by one pass over C.
    virtual void gemm_ex(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha,
                         const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                         float* C, int64_t ldc, const float* bias, Precision precision);

    // The bf16 product when B is already rounded: C = op(A)·B + beta·C (+ bias), A float (rounded
    // here), B bf16 bits [K, N] row-major and dense (ld = N). Lets a caller round a weight matrix
    // once and use it for several products (row blocks of one batch). The same result as gemm_ex
    // with Precision::bf16 on the float B those bits round.
    virtual void gemm_bf16_b(Trans ta, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                             const uint16_t* B, float beta, float* C, int64_t ldc, const float* bias);

protected:
    std::vector<float> emu_a_, emu_b_;  // bf16-rounded copies of A and B (emulation)
};

// Creates a backend by name; an unknown name throws sae::Error listing backend_names().
std::unique_ptr<Backend> backend_create(const std::string& name);
std::vector<std::string> backend_names();

// Sets the thread count used by OpenMP and oneDNN (0 = leave the runtime's default).
void set_num_threads(int threads);
int get_num_threads();

}  // namespace sae
