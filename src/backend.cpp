#include "sae/backend.hpp"

#include <dnnl.h>
#include <omp.h>

#include <cstring>
#include <dnnl.hpp>

#include "bf16.hpp"
#include "sae/error.hpp"

// Hot loops are compiled for AVX-512 and AVX2 too, picked at load time by the CPU (GCC
// function multi-versioning); the rest of the library stays at the baseline ISA.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SAE_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SAE_SIMD_CLONES
#endif

namespace sae {

Precision precision_parse(const std::string& name) {
    if (name == "float32" || name == "f32") return Precision::f32;
    if (name == "bf16") return Precision::bf16;
    throw Error("unknown dtype '" + name + "'; use float32 or bf16");
}
std::string precision_name(Precision p) { return p == Precision::bf16 ? "bf16" : "float32"; }

namespace {

using bf16::bits_of;
using bf16::float_of;
inline uint16_t to_bf16_bits(uint32_t u) { return bf16::to_bits(u); }

SAE_SIMD_CLONES
void round_rows_bits(const float* src, int64_t rows, int64_t cols, int64_t ld, uint16_t* dst) {
#pragma omp parallel for schedule(static) if (rows * cols >= (1 << 16))
    for (int64_t r = 0; r < rows; ++r) {
        const uint32_t* s = reinterpret_cast<const uint32_t*>(src + r * ld);
        uint16_t* d = dst + r * cols;
        for (int64_t c = 0; c < cols; ++c) d[c] = to_bf16_bits(s[c]);
    }
}

SAE_SIMD_CLONES
void round_rows_float(const float* src, int64_t rows, int64_t cols, int64_t ld, float* dst) {
#pragma omp parallel for schedule(static) if (rows * cols >= (1 << 16))
    for (int64_t r = 0; r < rows; ++r) {
        const uint32_t* s = reinterpret_cast<const uint32_t*>(src + r * ld);
        uint32_t* d = reinterpret_cast<uint32_t*>(dst + r * cols);
        for (int64_t c = 0; c < cols; ++c) d[c] = uint32_t(to_bf16_bits(s[c])) << 16;
    }
}

}  // namespace

uint16_t float_to_bf16(float x) { return to_bf16_bits(bits_of(x)); }
float bf16_to_float(uint16_t b) { return float_of(uint32_t(b) << 16); }
void round_to_bf16(const float* src, int64_t rows, int64_t cols, int64_t ld, uint16_t* dst) {
    round_rows_bits(src, rows, cols, ld, dst);
}
void round_to_bf16(const float* src, int64_t rows, int64_t cols, int64_t ld, float* dst) {
    round_rows_float(src, rows, cols, ld, dst);
}

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

void add_bias(float* C, int64_t M, int64_t N, int64_t ldc, const float* bias) {
#pragma omp parallel for schedule(static) if (M * N >= (1 << 15))
    for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) C[i * ldc + j] += bias[j];
}

// C = beta·C (+ bias): the product of an empty inner dimension.
void scale_only(float* C, int64_t M, int64_t N, int64_t ldc, float beta, const float* bias) {
    for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
            float& c = C[i * ldc + j];
            c = (beta == 0.0f ? 0.0f : beta * c) + (bias ? bias[j] : 0.0f);
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

[[noreturn]] void dnnl_failed(const char* what, int status, int64_t M, int64_t N, int64_t K) {
    throw Error(std::string("oneDNN ") + what + " failed (status " + std::to_string(status) +
                "); this is a bug, please report the shapes M=" + std::to_string(M) +
                " N=" + std::to_string(N) + " K=" + std::to_string(K));
}

// fp32 and bf16 products through oneDNN matmul primitives. A primitive is specialised to its
// shapes, transposes, leading dimensions, alpha, beta, bias, input type and thread count; it
// is created on the first product of that kind (allocating; a few ms for JIT code) and reused
// afterwards, so a training loop creates its handful once. Data pointers are bound per call.
class OneDnnBackend final : public Backend {
public:
    OneDnnBackend() : eng_(dnnl::engine::kind::cpu, 0), stream_(eng_) {}
    std::string name() const override { return "onednn"; }

    void gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
              int64_t lda, const float* B, int64_t ldb, float beta, float* C,
              int64_t ldc) override {
        gemm_ex(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, nullptr, Precision::f32);
    }
    void gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, double alpha,
              const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
              double* C, int64_t ldc) override {
        gemm_f64_blocked(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    }

    void gemm_bf16_b(Trans ta, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                     const uint16_t* B, float beta, float* C, int64_t ldc, const float* bias) override {
        if (M == 0 || N == 0) return;
        if (K == 0) return scale_only(C, M, N, ldc, beta, bias);
        Key key{ta == Trans::yes, false, true, bias != nullptr, get_num_threads(), M, N, K, lda, N, ldc, 1.0f, beta};
        Entry& e = entry(key);
        if (e.kind != Kind::primitive) return Backend::gemm_bf16_b(ta, M, N, K, A, lda, B, beta, C, ldc, bias);
        const int64_t ar = key.ta ? K : M, ac = key.ta ? M : K;
        if (int64_t(bf_a_.size()) < ar * ac) bf_a_.resize(size_t(ar * ac));
        round_to_bf16(A, ar, ac, lda, bf_a_.data());
        execute(e, bf_a_.data(), B, C, bias, M, N, K);
    }

    void gemm_ex(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha,
                 const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                 int64_t ldc, const float* bias, Precision precision) override {
        if (M == 0 || N == 0) return;
        if (K == 0) return scale_only(C, M, N, ldc, beta, bias);
        const bool bf16 = precision == Precision::bf16;
        Key key{ta == Trans::yes, tb == Trans::yes, bf16, bias != nullptr && alpha == 1.0f,
                get_num_threads(), M, N, K, lda, ldb, ldc, alpha, beta};
        Entry& e = entry(key);
        if (e.kind == Kind::emulate_bf16)  // no bf16 kernel on this CPU: round, then fp32
            return Backend::gemm_ex(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias,
                                    precision);
        if (e.kind == Kind::sgemm) {
            const dnnl_status_t st =
                dnnl_sgemm(key.ta ? 'T' : 'N', key.tb ? 'T' : 'N', M, N, K, alpha, A, lda, B,
                           ldb, beta, C, ldc);
            if (st != dnnl_success) dnnl_failed("sgemm", int(st), M, N, K);
            if (bias) add_bias(C, M, N, ldc, bias);
            return;
        }
        const void* a = A;
        const void* b = B;
        if (bf16) {  // pack op's storage densely as bf16: [rows, cols] with ld = cols
            const int64_t ar = key.ta ? K : M, ac = key.ta ? M : K;
            const int64_t br = key.tb ? N : K, bc = key.tb ? K : N;
            if (int64_t(bf_a_.size()) < ar * ac) bf_a_.resize(size_t(ar * ac));
            if (int64_t(bf_b_.size()) < br * bc) bf_b_.resize(size_t(br * bc));
            round_to_bf16(A, ar, ac, lda, bf_a_.data());
            round_to_bf16(B, br, bc, ldb, bf_b_.data());
            a = bf_a_.data();
            b = bf_b_.data();
        }
        execute(e, a, b, C, bias, M, N, K);
        if (bias && !e.has_bias) add_bias(C, M, N, ldc, bias);
    }

private:
    struct Entry;
    void execute(Entry& e, const void* a, const void* b, float* C, const float* bias, int64_t M, int64_t N,
                 int64_t K) {
        bind(e.a, a);
        bind(e.b, b);
        bind(e.c, C);
        if (e.has_bias) bind(e.bias, bias);
        bind(e.scratch, scratch_.data());
        dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, e.a.get()},
                                   {DNNL_ARG_WEIGHTS, e.b.get()},
                                   {DNNL_ARG_DST, e.c.get()},
                                   {DNNL_ARG_SCRATCHPAD, e.scratch.get()},
                                   {DNNL_ARG_BIAS, e.has_bias ? e.bias.get() : nullptr}};
        const dnnl_status_t st =
            dnnl_primitive_execute(e.prim.get(), stream_.get(), e.has_bias ? 5 : 4, args);
        if (st != dnnl_success) dnnl_failed("matmul", int(st), M, N, K);
    }

    struct Key {
        bool ta, tb, bf16, bias;
        int threads;
        int64_t M, N, K, lda, ldb, ldc;
        float alpha, beta;
        bool operator==(const Key& o) const {
            return ta == o.ta && tb == o.tb && bf16 == o.bf16 && bias == o.bias &&
                   threads == o.threads && M == o.M && N == o.N && K == o.K && lda == o.lda &&
                   ldb == o.ldb && ldc == o.ldc && bits_of(alpha) == bits_of(o.alpha) &&
                   bits_of(beta) == bits_of(o.beta);
        }
    };
    enum class Kind { primitive, sgemm, emulate_bf16 };
    struct Entry {
        Key key;
        Kind kind = Kind::primitive;
        bool has_bias = false;
        dnnl::matmul prim;
        dnnl::memory a, b, c, bias, scratch;
    };
    static constexpr size_t kMaxEntries = 256;  // beyond this the cache starts over

    void bind(dnnl::memory& m, const void* p) {
        const dnnl_status_t st =
            dnnl_memory_set_data_handle_v2(m.get(), const_cast<void*>(p), stream_.get());
        if (st != dnnl_success) dnnl_failed("set_data_handle", int(st), 0, 0, 0);
    }

    Entry& entry(const Key& k) {
        if (last_ < entries_.size() && entries_[last_]->key == k) return *entries_[last_];
        for (size_t i = 0; i < entries_.size(); ++i)
            if (entries_[i]->key == k) return *entries_[last_ = i];
        if (entries_.size() >= kMaxEntries) entries_.clear();
        entries_.push_back(create(k));
        last_ = entries_.size() - 1;
        return *entries_.back();
    }

    std::unique_ptr<Entry> create(const Key& k) {
        auto e = std::make_unique<Entry>();
        e->key = k;
        using dt = dnnl::memory::data_type;
        using dims = dnnl::memory::dims;
        const dt in = k.bf16 ? dt::bf16 : dt::f32;
        // bf16 inputs are packed densely (ld = stored width); fp32 ones are used in place.
        const int64_t lda = k.bf16 ? (k.ta ? k.M : k.K) : k.lda;
        const int64_t ldb = k.bf16 ? (k.tb ? k.K : k.N) : k.ldb;
        const dnnl::memory::desc a_md({k.M, k.K}, in, k.ta ? dims{1, lda} : dims{lda, 1});
        const dnnl::memory::desc b_md({k.K, k.N}, in, k.tb ? dims{1, ldb} : dims{ldb, 1});
        const dnnl::memory::desc c_md({k.M, k.N}, dt::f32, dims{k.ldc, 1});
        const dnnl::memory::desc bias_md({1, k.N}, dt::f32, dims{k.N, 1});
        try {
            dnnl::primitive_attr attr;
            attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
            if (k.alpha != 1.0f) attr.set_output_scales(0, {k.alpha});
            if (k.beta != 0.0f) {
                dnnl::post_ops po;
                po.append_sum(k.beta);
                attr.set_post_ops(po);
            }
            const dnnl::matmul::desc d = k.bias ? dnnl::matmul::desc(a_md, b_md, bias_md, c_md)
                                                : dnnl::matmul::desc(a_md, b_md, c_md);
            const dnnl::matmul::primitive_desc pd(d, attr, eng_);
            // oneDNN's reference kernels are plain loops: the packed gemm is faster for fp32;
            // for bf16 the rounding emulation (then an fp32 product) is.
            if (std::strncmp(pd.impl_info_str(), "ref", 3) == 0) {
                e->kind = k.bf16 ? Kind::emulate_bf16 : Kind::sgemm;
                return e;
            }
            e->prim = dnnl::matmul(pd);
            e->has_bias = k.bias;
            e->a = dnnl::memory(a_md, eng_, DNNL_MEMORY_NONE);
            e->b = dnnl::memory(b_md, eng_, DNNL_MEMORY_NONE);
            e->c = dnnl::memory(c_md, eng_, DNNL_MEMORY_NONE);
            if (k.bias) e->bias = dnnl::memory(bias_md, eng_, DNNL_MEMORY_NONE);
            const auto sp = pd.scratchpad_desc();
            if (scratch_.size() < sp.get_size() + 64) scratch_.resize(sp.get_size() + 64);
            e->scratch = dnnl::memory(sp, eng_, DNNL_MEMORY_NONE);
        } catch (const dnnl::error&) {  // unsupported combination on this CPU
            e->kind = k.bf16 ? Kind::emulate_bf16 : Kind::sgemm;
        }
        return e;
    }

    dnnl::engine eng_;
    dnnl::stream stream_;
    std::vector<std::unique_ptr<Entry>> entries_;
    size_t last_ = 0;
    std::vector<char> scratch_ = std::vector<char>(64);
    std::vector<uint16_t> bf_a_, bf_b_;
};

}  // namespace

void Backend::gemm_ex(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha,
                      const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                      float* C, int64_t ldc, const float* bias, Precision precision) {
    if (M == 0 || N == 0) return;
    if (K == 0) return scale_only(C, M, N, ldc, beta, bias);
    if (precision == Precision::bf16) {
        const int64_t ar = ta == Trans::yes ? K : M, ac = ta == Trans::yes ? M : K;
        const int64_t br = tb == Trans::yes ? N : K, bc = tb == Trans::yes ? K : N;
        if (int64_t(emu_a_.size()) < ar * ac) emu_a_.resize(size_t(ar * ac));
        if (int64_t(emu_b_.size()) < br * bc) emu_b_.resize(size_t(br * bc));
        round_to_bf16(A, ar, ac, lda, emu_a_.data());
        round_to_bf16(B, br, bc, ldb, emu_b_.data());
        gemm(ta, tb, M, N, K, alpha, emu_a_.data(), ac, emu_b_.data(), bc, beta, C, ldc);
    } else {
        gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    }
    if (bias) add_bias(C, M, N, ldc, bias);
}

void Backend::gemm_bf16_b(Trans ta, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                          const uint16_t* B, float beta, float* C, int64_t ldc, const float* bias) {
    if (M == 0 || N == 0) return;
    if (K == 0) return scale_only(C, M, N, ldc, beta, bias);
    const int64_t ar = ta == Trans::yes ? K : M, ac = ta == Trans::yes ? M : K;
    if (int64_t(emu_a_.size()) < ar * ac) emu_a_.resize(size_t(ar * ac));
    if (int64_t(emu_b_.size()) < K * N) emu_b_.resize(size_t(K * N));
    round_to_bf16(A, ar, ac, lda, emu_a_.data());
    for (int64_t t = 0; t < K * N; ++t) emu_b_[size_t(t)] = bf16_to_float(B[t]);
    gemm(ta, Trans::no, M, N, K, 1.0f, emu_a_.data(), ac, emu_b_.data(), N, beta, C, ldc);
    if (bias) add_bias(C, M, N, ldc, bias);
}

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
