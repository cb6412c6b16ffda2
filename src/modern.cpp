#include "sae/modern.hpp"

#include "bf16.hpp"
#include "sae/shards.hpp"
#include "screen_kernels.hpp"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <omp.h>
#include <type_traits>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "sae/error.hpp"

namespace sae {

namespace {

// modern_cost must not allocate once the workspace is reserved, so its own checks throw from a
// string literal only when they fail (check() would build a std::string on every call).
inline void require(bool cond, const char* msg) {
    if (!cond) throw Error(msg);
}

double sum_in_order(const double* v, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += v[i];
    return s;
}

bool uses_selection(Arch a) { return arch_info(a).uses_k; }
bool uses_aux(const ModernSpec& spec) { return arch_info(spec.arch).aux_k && spec.k_aux > 0; }

bool finite_nonneg(double v) { return std::isfinite(v) && v >= 0; }

// Named pointers into a flat buffer laid out by modern_layout.
template <class T>
struct Tensors {
    T* W_enc;          // [d_in, d_sae]
    T* b_enc;          // [d_sae]
    T* W_dec;          // [d_sae, d_in]
    T* b_dec;          // [d_in]
    T* log_threshold;  // [d_sae], jumprelu only (else null)
    T* r_mag;          // [d_sae], gated only (else null)
    T* b_mag;          // [d_sae], gated only (else null)
};

template <class T>
Tensors<T> tensors(const ParamLayout& layout, T* flat) {
    // Compared by name in place: no string is built, so nothing is allocated.
    Tensors<T> t{};
    for (const auto& v : layout.views) {
        T* p = flat + v.offset;
        if (v.name == "W_enc") t.W_enc = p;
        else if (v.name == "b_enc" || v.name == "b_gate") t.b_enc = p;  // the encoder product's bias
        else if (v.name == "W_dec") t.W_dec = p;
        else if (v.name == "b_dec") t.b_dec = p;
        else if (v.name == "log_threshold") t.log_threshold = p;
        else if (v.name == "r_mag") t.r_mag = p;
        else if (v.name == "b_mag") t.b_mag = p;
    }
    require(t.W_enc && t.b_enc && t.W_dec && t.b_dec,
            "modern SAE: parameter layout lacks W_enc, b_enc, W_dec or b_dec; build it with "
            "modern_layout");
    return t;
}

// Hot loops are compiled for AVX-512 and AVX2 too, picked at load time by the CPU (GCC
// function multi-versioning); the rest of the library stays at the baseline ISA.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SAE_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SAE_SIMD_CLONES
#endif

// Selection key: NaN is read as −∞ so nth_element sees a strict weak order.
template <class T>
inline T key(T v) {
    return v == v ? v : -std::numeric_limits<T>::infinity();
}

// The k-th largest (1-based, 1 ≤ k ≤ n) of s[0..n); s is permuted.
template <class T>
T kth_largest(T* s, int64_t n, int64_t k) {
    std::nth_element(s, s + (k - 1), s + n, std::greater<T>());
    return s[k - 1];
}

// --- vector kernels (fixed summation order: results do not depend on the ISA picked) -------
template <class T>
SAE_SIMD_CLONES void axpy(T* y, T a, const T* x, int64_t n) {
    for (int64_t c = 0; c < n; ++c) y[c] += a * x[c];
}

template <class T>
SAE_SIMD_CLONES T dot(const T* x, const T* y, int64_t n) {
    constexpr int L = 16;
    T acc[L] = {};
    int64_t c = 0;
    for (; c + L <= n; c += L)
        for (int t = 0; t < L; ++t) acc[t] += x[c + t] * y[c + t];
    T s = 0;
    for (int t = 0; t < L; ++t) s += acc[t];
    for (; c < n; ++c) s += x[c] * y[c];
    return s;
}

// Σ x[c]·y[c] accumulated in double.
template <class T>
SAE_SIMD_CLONES double dot_double(const T* x, const T* y, int64_t n) {
    constexpr int L = 8;
    double acc[L] = {};
    int64_t c = 0;
    for (; c + L <= n; c += L)
        for (int t = 0; t < L; ++t) acc[t] += double(x[c + t]) * double(y[c + t]);
    double s = 0;
    for (int t = 0; t < L; ++t) s += acc[t];
    for (; c < n; ++c) s += double(x[c]) * double(y[c]);
    return s;
}

// Group maxima: gmax[g] = max over p[g], p[g + G], p[g + 2G], ... (NaN never wins; −∞ for a
// group of NaNs). Every group is non-empty when G ≤ n.
template <class T>
SAE_SIMD_CLONES void group_max(const T* p, int64_t n, int64_t G, T* gmax) {
    for (int64_t g = 0; g < G; ++g) gmax[g] = -std::numeric_limits<T>::infinity();
    int64_t j = 0;
    for (; j + G <= n; j += G)
        for (int64_t g = 0; g < G; ++g) {
            const T x = p[j + g];
            gmax[g] = x > gmax[g] ? x : gmax[g];
        }
    for (int64_t g = 0; j + g < n; ++g) {
        const T x = p[j + g];
        gmax[g] = x > gmax[g] ? x : gmax[g];
    }
}

// Entries of p[0..n) with x > 0 and x ≥ lo, in index order, into (cidx, cval); returns their
// count. One comparison per entry: x ≥ max(lo, smallest positive number). Blocks of 64 are
// tested first with vector compares (GCC vector types: one AVX-512 or two AVX2 compares per 16)
// so the common case, no candidate in the block, costs a few instructions per 16 entries.
// Appends the entries of p[from, to) with x ≥ thr (x and its index) to (cidx, cval) at c.
template <class T>
inline int64_t take_at_least(const T* p, int64_t from, int64_t to, T thr, int32_t* cidx, T* cval, int64_t c) {
    for (int64_t q = from; q < to; ++q)
        if (p[q] >= thr) {
            cidx[c] = int32_t(q);
            cval[c++] = p[q];
        }
    return c;
}

template <class T>
int64_t at_least_plain(const T* p, int64_t n, T thr, int32_t* cidx, T* cval) {
    return take_at_least(p, 0, n, thr, cidx, cval, 0);
}

#if defined(__GNUC__) && defined(__x86_64__)
// Blocks of 64 floats are tested with vector compares first, so the common case (no candidate
// in the block) costs a few instructions per 16 entries. Same result as at_least_plain.
__attribute__((target("avx512f"))) int64_t at_least_avx512(const float* p, int64_t n, float thr,
                                                           int32_t* cidx, float* cval) {
    const __m512 t = _mm512_set1_ps(thr);
    int64_t c = 0, j = 0;
    for (; j + 64 <= n; j += 64) {
        const __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(p + j), t, _CMP_GE_OQ) |
                            _mm512_cmp_ps_mask(_mm512_loadu_ps(p + j + 16), t, _CMP_GE_OQ) |
                            _mm512_cmp_ps_mask(_mm512_loadu_ps(p + j + 32), t, _CMP_GE_OQ) |
                            _mm512_cmp_ps_mask(_mm512_loadu_ps(p + j + 48), t, _CMP_GE_OQ);
        if (m) c = take_at_least(p, j, j + 64, thr, cidx, cval, c);
    }
    return take_at_least(p, j, n, thr, cidx, cval, c);
}

__attribute__((target("avx2"))) int64_t at_least_avx2(const float* p, int64_t n, float thr, int32_t* cidx,
                                                      float* cval) {
    const __m256 t = _mm256_set1_ps(thr);
    int64_t c = 0, j = 0;
    for (; j + 32 <= n; j += 32) {
        const __m256 m = _mm256_or_ps(_mm256_or_ps(_mm256_cmp_ps(_mm256_loadu_ps(p + j), t, _CMP_GE_OQ),
                                                   _mm256_cmp_ps(_mm256_loadu_ps(p + j + 8), t, _CMP_GE_OQ)),
                                      _mm256_or_ps(_mm256_cmp_ps(_mm256_loadu_ps(p + j + 16), t, _CMP_GE_OQ),
                                                   _mm256_cmp_ps(_mm256_loadu_ps(p + j + 24), t, _CMP_GE_OQ)));
        if (_mm256_movemask_ps(m)) c = take_at_least(p, j, j + 32, thr, cidx, cval, c);
    }
    return take_at_least(p, j, n, thr, cidx, cval, c);
}
#endif

using AtLeastFn = int64_t (*)(const float*, int64_t, float, int32_t*, float*);
AtLeastFn pick_at_least() {
#if defined(__GNUC__) && defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return at_least_avx512;
    if (__builtin_cpu_supports("avx2")) return at_least_avx2;
#endif
    return at_least_plain<float>;
}
const AtLeastFn g_at_least_float = pick_at_least();

// Entries of p[0..n) with x > 0 and x ≥ lo, in index order, into (cidx, cval); returns their
// count. One comparison per entry: x ≥ max(lo, smallest positive number).
template <class T>
int64_t positive_at_least(const T* p, int64_t n, T lo, int32_t* cidx, T* cval) {
    const T thr = lo > T(0) ? lo : std::numeric_limits<T>::denorm_min();
    if constexpr (std::is_same_v<T, float>) return g_at_least_float(p, n, thr, cidx, cval);
    else return at_least_plain(p, n, thr, cidx, cval);
}

// Lower bound for the k-th largest of p[0..n): with G = 4k groups, the k-th largest group
// maximum (k distinct elements are ≥ it). −∞ when the row is too short for groups to help.
template <class T>
T topk_lower_bound(const T* p, int64_t n, int64_t k, T* gmax) {
    const int64_t G = 4 * k;
    if (2 * G > n) return -std::numeric_limits<T>::infinity();
    group_max(p, n, G, gmax);
    return kth_largest(gmax, G, k);
}

// TopK of one row p [n]: the k largest (ties at the k-th value go to the lower columns), then
// relu, as (column, value) pairs in column order. Scans the row twice (group maxima, then the
// few entries above their bound) while it sits in cache. Buffers: gmax [4k], cidx [n],
// cval [n], tmp [n]. Returns the number kept (≤ k).
template <class T>
int64_t topk_row(const T* p, int64_t n, int64_t k, T* gmax, int32_t* cidx, T* cval, T* tmp,
                 int32_t* out_col, T* out_val) {
    const T lo = topk_lower_bound(p, n, k, gmax);
    const int64_t c = positive_at_least(p, n, lo, cidx, cval);
    if (c <= k) {  // every positive entry at or above the bound is kept (all of them, if < k)
        std::copy(cidx, cidx + c, out_col);
        std::copy(cval, cval + c, out_val);
        return c;
    }
    std::copy(cval, cval + c, tmp);
    const T v = kth_largest(tmp, c, k);  // the row's k-th largest (> 0)
    int64_t above = 0;
    for (int64_t t = 0; t < c; ++t) above += cval[t] > v;
    int64_t ties = k - above, out = 0;
    for (int64_t t = 0; t < c; ++t) {
        bool keep = cval[t] > v;
        if (!keep && cval[t] == v && ties > 0) {
            keep = true;
            --ties;
        }
        if (keep) {
            out_col[out] = cidx[t];
            out_val[out++] = cval[t];
        }
    }
    return out;
}

// Zeroes p [n] with streaming stores where the CPU has them: the dense H of a sparse batch is
// almost all zeros and is not read again soon, so its lines need not be fetched first.
template <class T>
void zero_streaming(T* p, int64_t n) {
#if defined(__SSE2__)
    char* b = reinterpret_cast<char*>(p);
    int64_t bytes = n * int64_t(sizeof(T));
    for (; (reinterpret_cast<uintptr_t>(b) & 15) != 0 && bytes > 0; --bytes) *b++ = 0;
    const __m128i z = _mm_setzero_si128();
    for (; bytes >= 16; bytes -= 16, b += 16) _mm_stream_si128(reinterpret_cast<__m128i*>(b), z);
    for (; bytes > 0; --bytes) *b++ = 0;
    _mm_sfence();  // order the streamed zeros before the ordinary stores that follow
#else
    std::fill(p, p + n, T(0));
#endif
}

// Writes row i of a dense [m, n] matrix from its (column, value) list.
template <class T>
void scatter_row(T* dense_row, int64_t n, const int32_t* col, const T* val, int64_t count) {
    zero_streaming(dense_row, n);
    for (int64_t e = 0; e < count; ++e) dense_row[col[e]] = val[e];
}

// Order-preserving map of a value to an unsigned integer (a < b ⇔ order_key(a) < order_key(b));
// −0 is read as +0 and NaN maps to 0, below every number.
template <class T> struct KeyType;
template <> struct KeyType<float> { using type = uint32_t; };
template <> struct KeyType<double> { using type = uint64_t; };

template <class T>
inline typename KeyType<T>::type order_key(T v) {
    using U = typename KeyType<T>::type;
    constexpr U sign = U(1) << (sizeof(U) * 8 - 1);
    constexpr U inf = std::bit_cast<U>(std::numeric_limits<T>::infinity());
    const U u = std::bit_cast<U>(v);
    const U mag = u & ~sign;
    // Negative: flip every bit; non-negative: set the sign bit. Branch-free: the sign of pre is
    // unpredictable.
    const U flip = U(0) - (u >> (sizeof(U) * 8 - 1));
    U key = u ^ (flip | sign);
    key = mag == 0 ? sign : key;  // −0 → +0
    key = mag > inf ? U(0) : key; // NaN
    return key;
}

// BatchTopK training, exact fallback: keeps the m·k largest entries of pre [m, n] over the whole
// batch (ties at the cut go to the lower flattened index), then relu, into the dense H.
// row_sums [m]. The cut is found by a most-significant-digit-first radix select over order keys,
// 11 bits per pass, each pass a parallel histogram over rows. Histograms hold integer counts, so
// merging the per-thread ones in any order gives the same result. Used when the candidate
// buffers of the fast selection overflow (masses of equal values), and for data replicas
// (share, not null): pre is then this replica's rows of a batch of share->rows, the histograms
// are summed over the replicas, and the ties at the cut go to the replicas in rank order (their
// rows come in that order), so the selection is the whole batch's, as one process makes it.
// Latent shards (shards, not null): pre holds this shard's columns, the histograms are summed over
// the shards too, and within a row the ties go to the shards in order (their columns come in that
// order in the row), so the cut and its ties are those of the whole dictionary.
template <class T>
void select_batchtopk_radix(T* H, const T* pre, int64_t m, int64_t n, int64_t k, double* row_sums,
                            const BatchShare* share = nullptr, Comm* shards = nullptr) {
    if (share && share->rows == 0) share = nullptr;
    using U = typename KeyType<T>::type;
    constexpr int kKeyBits = int(sizeof(U)) * 8, kMaxBits = 11, kBins = 1 << kMaxBits;
    U prefix = 0, mask = 0;
    int64_t rank = (share ? share->rows : m) * k;  // rank of the cut among the entries that match prefix under mask
    for (int hi = kKeyBits; hi > 0; hi -= kMaxBits) {
        const int bits = std::min(kMaxBits, hi), shift = hi - bits;
        const U digit = U((U(1) << bits) - 1);
        int64_t hist[kBins] = {};
#pragma omp parallel
        {
            int64_t local[kBins] = {};
#pragma omp for schedule(static)
            for (int64_t i = 0; i < m; ++i)
                for (int64_t j = 0; j < n; ++j) {
                    const U kv = order_key(pre[i * n + j]);
                    if ((kv & mask) == prefix) ++local[(kv >> shift) & digit];
                }
#pragma omp critical(sae_batchtopk_hist)
            for (int b = 0; b < kBins; ++b) hist[b] += local[b];
        }
        if (share || shards) {  // counts below 2^53: exact in double
            double all[kBins];
            for (int b = 0; b < kBins; ++b) all[b] = double(hist[b]);
            if (share) share->sum(all, kBins);
            if (shards) shards->allreduce_sum(all, kBins, "batch statistics");
            for (int b = 0; b < kBins; ++b) hist[b] = int64_t(all[b]);
        }
        int b = int(digit);
        for (; b > 0 && hist[b] < rank; --b) rank -= hist[b];
        prefix |= U(b) << shift;
        mask |= digit << shift;
    }
    // prefix is the key of the (m·k)-th largest entry; exactly m·k − rank entries lie above it
    // and the first `rank` entries equal to it (in flattened order) are kept too.
    const U cut = prefix;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
        int64_t c = 0;
        for (int64_t j = 0; j < n; ++j) c += order_key(pre[i * n + j]) == cut;
        row_sums[i] = double(c);
    }
    // Each row's ties on every shard (flattened order: row, then shard, then column).
    const int S = shards ? shards->size() : 1, me = shards ? shards->rank() : 0;
    std::vector<double> tie_rows;
    if (shards) {
        std::vector<double> mine(row_sums, row_sums + m);
        tie_rows.resize(size_t(m * S));
        shards->allgather(mine.data(), m * int64_t(sizeof(double)), tie_rows.data(), "batch statistics");
    }
    auto row_ties = [&](int s, int64_t i) { return shards ? tie_rows[size_t(s * m + i)] : row_sums[i]; };
    int64_t ties = rank;
    if (share) {  // the ties the replicas before this one take first
        std::vector<double> counts(size_t(share->size), 0.0);
        for (int64_t i = 0; i < m; ++i)
            for (int s = 0; s < S; ++s) counts[size_t(share->rank)] += row_ties(s, i);
        share->sum(counts.data(), share->size);
        for (int r = 0; r < share->rank; ++r) ties -= int64_t(counts[size_t(r)]);
        ties = std::max<int64_t>(ties, 0);
    }
    for (int64_t i = 0; i < m; ++i) {
        int64_t mine = 0;
        for (int s = 0; s < S; ++s) {
            const int64_t take = std::min(ties, int64_t(row_ties(s, i)));
            if (s == me) mine = take;
            ties -= take;
        }
        row_sums[i] = double(mine);
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
        int64_t row_ties = int64_t(row_sums[i]);
        const T* p = pre + i * n;
        T* h = H + i * n;
        for (int64_t j = 0; j < n; ++j) {
            const U kv = order_key(p[j]);
            bool keep = kv > cut;
            if (!keep && kv == cut && row_ties > 0) {
                keep = true;
                --row_ties;
            }
            h[j] = keep && p[j] > T(0) ? p[j] : T(0);
        }
    }
}

// For every column j of an [m, n] matrix: fin(j, Σᵢ f(i, j)), summed over rows in order.
// Columns go to threads in blocks of 64 so each row segment is read contiguously.
template <class F, class Fin>
void column_sums(int64_t m, int64_t n, F&& f, Fin&& fin) {
    constexpr int64_t kBlock = 64;
    const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t j0 = b * kBlock, w = std::min(kBlock, n - j0);
        double acc[kBlock] = {};
        for (int64_t i = 0; i < m; ++i)
            for (int64_t t = 0; t < w; ++t) acc[t] += f(i, j0 + t);
        for (int64_t t = 0; t < w; ++t) fin(j0 + t, acc[t]);
    }
}

// Builds the by-column copy of S (counting sort over columns; rows stay ascending).
template <class T>
void transpose_lists(SparseRows<T>& S, int64_t m, int64_t n, int64_t* cursor) {
    int64_t* cp = S.col_ptr.data();
    std::fill(cp, cp + n + 1, int64_t(0));
    for (int64_t i = 0; i < m; ++i)
        for (int64_t e = S.beg[size_t(i)]; e < S.end[size_t(i)]; ++e) ++cp[S.col[size_t(e)] + 1];
    for (int64_t j = 0; j < n; ++j) cp[j + 1] += cp[j];
    std::copy(cp, cp + n, cursor);
    for (int64_t i = 0; i < m; ++i)
        for (int64_t e = S.beg[size_t(i)]; e < S.end[size_t(i)]; ++e) {
            const int64_t q = cursor[S.col[size_t(e)]]++;
            S.t_row[size_t(q)] = int32_t(i);
            S.t_val[size_t(q)] = S.val[size_t(e)];
        }
}

// Lists from a dense [m, n] matrix: its positive entries (count, offsets, fill).
template <class T>
void lists_from_dense(SparseRows<T>& S, const T* H, int64_t m, int64_t n) {
    int64_t pos = 0;
    for (int64_t i = 0; i < m; ++i) {
        int64_t c = 0;
        for (int64_t j = 0; j < n; ++j) c += H[i * n + j] > T(0);
        S.beg[size_t(i)] = pos;
        S.end[size_t(i)] = pos += c;
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
        int64_t q = S.beg[size_t(i)];
        for (int64_t j = 0; j < n; ++j)
            if (H[i * n + j] > T(0)) {
                S.col[size_t(q)] = int32_t(j);
                S.val[size_t(q++)] = H[i * n + j];
            }
    }
}

// The products of modern_cost: float in the requested precision, double in double.
inline void product(Backend& be, Trans ta, Trans tb, int64_t M, int64_t N, int64_t K,
                    const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                    float* C, int64_t ldc, const float* bias, Precision p) {
    be.gemm_ex(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc, bias, p);
}
inline void product(Backend& be, Trans ta, Trans tb, int64_t M, int64_t N, int64_t K,
                    const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                    double* C, int64_t ldc, const double* bias, Precision) {
    be.gemm(ta, tb, M, N, K, 1.0, A, lda, B, ldb, beta, C, ldc);
    if (bias) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < M; ++i)
            for (int64_t j = 0; j < N; ++j) C[i * ldc + j] += bias[j];
    }
}

// TopK on the sparse path with no dense H: the encoder product and the selection fused per
// block of rows (the TopK fast path).
template <class T>
bool topk_lists_only(const ModernSpec& spec, const ModernWorkspace<T>& ws) {
    return spec.arch == Arch::topk && ws.path != ProductPath::dense && !ws.dense_h;
}

// Entries kept per row by the threshold rules (jumprelu, BatchTopK inference) on the automatic
// path; above this the batch takes the dense path.
int64_t threshold_row_cap(const ModernSpec& spec, ProductPath path) {
    const int64_t n = spec.d_sae;
    if (path == ProductPath::sparse) return n;
    const int64_t k = arch_info(spec.arch).uses_k ? spec.k : 1;
    return std::min(n, std::max(k, n / 16));
}

}  // namespace

const std::vector<ArchInfo>& arch_table() {
    //  arch  name  uses_k  aux_k  lists  threshold  gate  nested  enc_bias  extra  summary
    static const std::vector<ArchInfo> table = {
        {Arch::standard, "standard", false, false, false, ThresholdKind::none, false, false, "b_enc", {},
         "relu(pre); L1 penalty weighted by decoder norms"},
        {Arch::topk, "topk", true, true, true, ThresholdKind::none, false, false, "b_enc", {},
         "relu of the k largest pre-activations of each sample"},
        {Arch::batchtopk, "batchtopk", true, true, true, ThresholdKind::batch, false, false, "b_enc", {},
         "relu of the m*k largest pre-activations of the batch; a learnt threshold at inference"},
        {Arch::jumprelu, "jumprelu", false, false, true, ThresholdKind::learnt, false, false, "b_enc", {"log_threshold"},
         "pre*H(pre - theta) with a learnt theta per latent; L0 penalty (straight-through)"},
        {Arch::gated, "gated", false, false, false, ThresholdKind::none, true, false, "b_gate", {"r_mag", "b_mag"},
         "1[gate > 0]*relu(magnitude), shared weights; L1 on relu(gate), gate reconstruction aux"},
        {Arch::matryoshka_batchtopk, "matryoshka_batchtopk", true, true, true, ThresholdKind::batch, false, true,
         "b_enc", {}, "batchtopk whose loss sums the reconstruction errors of nested prefixes of latent groups"},
    };
    return table;
}

const ArchInfo& arch_info(Arch a) {
    for (const ArchInfo& r : arch_table())
        if (r.arch == a) return r;
    throw Error("arch_info: an Arch value without a row in arch_table()");
}

Arch arch_parse(const std::string& name) {
    if (name == "l1") return Arch::standard;
    std::string names;
    for (const ArchInfo& r : arch_table()) {
        if (name == r.name) return r.arch;
        names += std::string(names.empty() ? "" : ", ") + r.name + (r.arch == Arch::standard ? " (alias l1)" : "");
    }
    throw Error("unknown architecture '" + name + "'; use one of: " + names);
}

std::string arch_name(Arch a) { return arch_info(a).name; }

void validate(const ModernSpec& spec) {
    check(spec.d_in > 0, "d_in must be positive (the data has no features?)");
    check(spec.d_sae > 0, "d_sae must be positive; set d_sae to the number of latents");
    const std::string arch = arch_name(spec.arch);
    if (uses_selection(spec.arch))
        check(spec.k >= 1 && spec.k <= spec.d_sae,
              "k = " + std::to_string(spec.k) + " is out of range for arch = \"" + arch +
                  "\"; set k between 1 and d_sae (" + std::to_string(spec.d_sae) + ")");
    check(spec.k_aux >= 0 && spec.k_aux <= spec.d_sae,
          "k_aux = " + std::to_string(spec.k_aux) + " is out of range; set k_aux between 0 (off) " +
              "and d_sae (" + std::to_string(spec.d_sae) + ")");
    check(finite_nonneg(spec.l1_coefficient), "l1_coefficient must be a finite number >= 0");
    check(finite_nonneg(spec.l0_coefficient), "l0_coefficient must be a finite number >= 0");
    check(finite_nonneg(spec.aux_coefficient), "aux_coefficient must be a finite number >= 0");
    if (arch_info(spec.arch).nested) {
        const auto& e = spec.group_ends;
        check(!e.empty() && e.back() == spec.d_sae,
              "matryoshka_groups must describe groups covering all d_sae latents (e.g. 0.25,0.25,0.5)");
        for (size_t g = 0; g < e.size(); ++g)
            check(e[g] > (g ? e[g - 1] : 0), "matryoshka_groups gives an empty group; use fewer or larger groups");
        check(spec.group_weights.size() == e.size(),
              "matryoshka_weights needs one weight per group (" + std::to_string(e.size()) + ")");
        for (double w : spec.group_weights) check(finite_nonneg(w), "matryoshka_weights must be finite numbers >= 0");
    }
    if (arch_info(spec.arch).threshold == ThresholdKind::learnt) {
        check(std::isfinite(spec.bandwidth) && spec.bandwidth > 0,
              "bandwidth must be a finite number > 0 for arch = \"jumprelu\" (e.g. 1e-3)");
        check(std::isfinite(spec.initial_threshold) && spec.initial_threshold > 0,
              "initial_threshold must be a finite number > 0 for arch = \"jumprelu\" (e.g. 1e-3)");
    }
}

namespace {
std::vector<double> number_list(const std::string& text, const char* setting) {
    std::vector<double> out;
    size_t pos = 0;
    while (pos <= text.size()) {
        const size_t comma = std::min(text.find(',', pos), text.size());
        const std::string item = text.substr(pos, comma - pos);
        size_t used = 0;
        double v = 0;
        try {
            v = std::stod(item, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        check(used > 0 && item.find_first_not_of(" \t", used) == std::string::npos && std::isfinite(v),
              std::string(setting) + " = \"" + text + "\": '" + item + "' is not a number; give comma-separated numbers");
        out.push_back(v);
        pos = comma + 1;
    }
    return out;
}
}  // namespace

std::vector<int64_t> matryoshka_group_ends(const std::string& fractions, int64_t d_sae) {
    const std::vector<double> f = number_list(fractions, "matryoshka_groups");
    double total = 0;
    for (double v : f) {
        check(v > 0, "matryoshka_groups = \"" + fractions + "\": every fraction must be > 0");
        total += v;
    }
    check(std::fabs(total - 1) < 1e-6, "matryoshka_groups = \"" + fractions + "\": the fractions must sum to 1");
    std::vector<int64_t> ends;
    double cum = 0;
    for (size_t g = 0; g < f.size(); ++g) {
        cum += f[g];
        ends.push_back(g + 1 == f.size() ? d_sae : int64_t(std::llround(cum * double(d_sae))));
    }
    return ends;
}

std::vector<double> matryoshka_group_weights(const std::string& weights, size_t groups) {
    if (weights.empty()) return std::vector<double>(groups, 1.0);
    return number_list(weights, "matryoshka_weights");
}

ParamLayout modern_layout(const ModernSpec& spec) {
    const ArchInfo& row = arch_info(spec.arch);
    ParamLayout L;
    L.add("W_enc", {spec.d_in, spec.d_sae});
    L.add(row.enc_bias, {spec.d_sae});
    L.add("W_dec", {spec.d_sae, spec.d_in});
    L.add("b_dec", {spec.d_in});
    for (const char* name : row.extra) L.add(name, {spec.d_sae});
    return L;
}

template <class T>
void modern_init(const ModernSpec& spec, const ParamLayout& layout, T* params, Rng& rng) {
    const int64_t d_in = spec.d_in, d_sae = spec.d_sae;
    std::fill(params, params + layout.total, T(0));
    const auto P = tensors(layout, params);
    std::vector<double> row(static_cast<size_t>(d_in));
    // A shard: the draws of the latents before it, as normal() consumes them (two uniforms per
    // value, the first drawn again while it is 0). A row is never all zeros (|normal()| > 0, as
    // the first uniform is < 1 and the cosine of a double is never exactly 0), so no row is drawn twice.
    for (int64_t v = 0; v < spec.latent_begin * d_in; ++v) {
        while ((rng.next_u64() >> 11) == 0) {
        }
        rng.next_u64();
    }
    for (int64_t j = 0; j < d_sae; ++j) {
        double sq = 0;
        while (sq == 0) {  // a zero draw has no direction; draw again (probability ~0)
            sq = 0;
            for (int64_t c = 0; c < d_in; ++c) {
                row[size_t(c)] = rng.normal();
                sq += row[size_t(c)] * row[size_t(c)];
            }
        }
        const double scale = 0.1 / std::sqrt(sq);
        for (int64_t c = 0; c < d_in; ++c) {
            const T w = T(row[size_t(c)] * scale);
            P.W_dec[j * d_in + c] = w;
            P.W_enc[c * d_sae + j] = w;
        }
    }
    if (P.log_threshold) {
        const T lt = T(std::log(spec.initial_threshold));
        for (int64_t j = 0; j < d_sae; ++j) P.log_threshold[j] = lt;
    }
}

template <class T>
void SparseRows<T>::reserve(int64_t m, int64_t n, int64_t capacity) {
    beg.assign(size_t(m), 0);
    end.assign(size_t(m), 0);
    col.resize(size_t(capacity));
    val.resize(size_t(capacity));
    col_ptr.assign(size_t(n + 1), 0);
    t_row.resize(size_t(capacity));
    t_val.resize(size_t(capacity));
    cap = capacity;
}

template <class T>
int64_t SparseRows<T>::nnz(int64_t m) const {
    int64_t s = 0;
    for (int64_t i = 0; i < m; ++i) s += end[size_t(i)] - beg[size_t(i)];
    return s;
}

template <class T>
void ModernWorkspace<T>::reserve(const ModernSpec& spec, int64_t max_m) {
    const int64_t d_in = spec.d_in, d_sae = spec.d_sae;
    const ArchInfo& row = arch_info(spec.arch);
    const bool selecting = row.uses_k, with_aux = uses_aux(spec);
    const bool sparse_arch = row.lists && path != ProductPath::dense;
    // The dense path's dH: rows without lists always, a learnt threshold for dense batches, any
    // row when forced.
    const bool dense_dh = !row.lists || path == ProductPath::dense ||
                          (row.threshold == ThresholdKind::learnt && path == ProductPath::automatic);
    // TopK keeping only its lists needs no dense H or Haux, and pre-activations for one encoder
    // block at a time.
    const bool lists_only = topk_lists_only(spec, *this);
    xin.resize(max_m, d_in);
    pre.resize(lists_only && encoder_block > 0 ? std::min(max_m, encoder_block) : max_m, d_sae);
    H.resize(lists_only ? 0 : max_m, d_sae);
    if (lists_only) {  // give back what an earlier reserve with dense H took
        pre.data.shrink_to_fit();
        H.data.shrink_to_fit();
    }
    Xhat.resize(max_m, d_in);
    dXhat.resize(max_m, d_in);
    dH.resize(dense_dh ? max_m : 0, d_sae);
    // AuxK's buffers; the gate's reconstruction uses the same three.
    const bool aux_buffers = with_aux || row.gate;
    Haux.resize(aux_buffers && !lists_only ? max_m : 0, d_sae);
    if (lists_only) Haux.data.shrink_to_fit();
    // bf16 lists-only TopK: W_enc rounded once per step for all encoder blocks (and bf16
    // screening, below). Sized once here, so an unchanged size keeps the contents.
    const size_t prepared = w_bf16.size() + screen_wt.size() + screen_wn.size() + screen_cb.size();
    Eaux.resize(aux_buffers ? max_m : 0, d_in);
    dEaux.resize(aux_buffers ? max_m : 0, d_in);
    mag.resize(row.gate ? max_m : 0, d_sae);
    dXg.resize(row.nested ? int64_t(spec.group_ends.size()) * max_m : 0, d_in);
    bias_sum.resize(row.gate ? size_t(d_sae) : 0);
    mag_scale.resize(row.gate ? size_t(d_sae) : 0);
    // Entries per row of the lists: exactly k (TopK), a threshold rule's cap (the learnt and
    // batch thresholds), at least k for the batch selection.
    int64_t row_cap = 0;
    if (row.lists) row_cap = row.threshold == ThresholdKind::none ? spec.k : threshold_row_cap(spec, path);
    if (row.threshold == ThresholdKind::batch) row_cap = std::max(spec.k, row_cap);
    act.reserve(max_m, d_sae, max_m * row_cap);
    aux.reserve(with_aux ? max_m : 0, with_aux ? d_sae : 0, with_aux ? max_m * spec.k_aux : 0);
    threads = std::max(1, omp_get_max_threads());
    per_thread = 0;
    if (row.lists)
        per_thread = std::max<int64_t>(3 * d_sae + 4 * (selecting ? spec.k : 0) + 16,
                                       sparse_arch ? 16 * d_in : 0);
    scratch.resize(size_t(threads * per_thread));
    // Screened TopK (float, lists only): W_enc transposed, column norms, bias terms, and two
    // candidate lists per thread (TopK, AuxK).
    const bool screening = std::is_same_v<T, float> && screen != Screen::off &&
                           (lists_only || spec.arch == Arch::batchtopk || spec.arch == Arch::jumprelu);
    // bf16 screening on a CPU without bf16 instructions takes the fp32 product: the same bits.
    screen_product = screen == Screen::bf16 && !screen_bf16_native() ? Screen::fp32 : screen;
    screen_thr.resize(screening && spec.arch == Arch::jumprelu ? size_t(d_sae) : 0);
    screen_wt.resize(screening ? size_t(d_in * d_sae) : 0);
    screen_wn.resize(screening ? size_t(d_sae) : 0);
    screen_cb.resize(screening ? size_t(d_sae) : 0);
    screen_col.resize(screening ? size_t(threads * 2 * d_sae) : 0);
    const bool rounded = std::is_same_v<T, float> &&
                         ((lists_only && precision == Precision::bf16) || (screening && screen_product == Screen::bf16));
    w_bf16.resize(rounded ? size_t(d_in * d_sae) : 0);
    // The screening's preparation, kept for inference, holds only while its buffers are the same.
    if (w_bf16.size() + screen_wt.size() + screen_wn.size() + screen_cb.size() != prepared) screen_src.clear();
    iscratch.resize(row.lists ? size_t(threads * d_sae) : 0);
    const bool bt = row.threshold == ThresholdKind::batch;  // the batch selection's candidates
    const int64_t groups = bt ? (8 * spec.k <= d_sae ? 4 * spec.k : d_sae) : 0;
    const int64_t cand_cap = bt ? 2 * max_m * spec.k + d_sae : 0;
    cand_val.resize(size_t(cand_cap));
    cand_col.resize(size_t(cand_cap));
    cand_tmp.resize(size_t(std::max(cand_cap, max_m * groups)));
    cand_beg.resize(bt ? size_t(max_m) : 0);
    cand_end.resize(bt ? size_t(max_m) : 0);
    dead_idx.resize(with_aux ? size_t(d_sae) : 0);
    cursor.resize(row.lists ? size_t(d_sae) : 0);
    row_sums.resize(size_t(max_m));
    latent.resize(size_t(d_sae));
}

namespace {

// TopK over rows [r0, r1) into ws.act (row i at [i·k, i·k + kept)); the dense H too when
// write_h. Row i of the pre-activations is at pre + (i − pre_row0)·n.
template <class T>
void select_topk(ModernWorkspace<T>& ws, const T* pre, int64_t pre_row0, int64_t r0, int64_t r1, int64_t n,
                 int64_t k, bool write_h, int nt) {
    SparseRows<T>& A = ws.act;
    T* H = ws.H.data.data();
#pragma omp parallel num_threads(nt)
    {
        const int tid = omp_get_thread_num();
        T* s = ws.scratch.data() + tid * ws.per_thread;
        int32_t* cidx = ws.iscratch.data() + int64_t(tid) * n;
        T* gmax = s;
        T* cval = s + 4 * k;
        T* tmp = cval + n;
#pragma omp for schedule(static)
        for (int64_t i = r0; i < r1; ++i) {
            const int64_t b = i * k;
            const int64_t c = topk_row(pre + (i - pre_row0) * n, n, k, gmax, cidx, cval, tmp,
                                       A.col.data() + b, A.val.data() + b);
            A.beg[size_t(i)] = b;
            A.end[size_t(i)] = b + c;
            if (write_h) scatter_row(H + i * n, n, A.col.data() + b, A.val.data() + b, c);
        }
    }
}

// BatchTopK training into ws.act (exact offsets, m·k entries at most). A lower bound for the
// batch's (m·k)-th largest entry: with 4k groups per row, the (m·k)-th largest of all group
// maxima. One pass computes the group maxima, a second collects the positive entries at or
// above the bound (a little over m·k of them), and the exact cut and its ties (in flattened
// order) are settled on those alone. Falls back to the radix select over everything (which
// writes the dense H whatever write_h says) when the candidates overflow their buffer (masses
// of equal values).
template <class T>
void select_batchtopk(ModernWorkspace<T>& ws, const T* pre, int64_t m, int64_t n, int64_t k,
                      bool write_h, int nt) {
    SparseRows<T>& A = ws.act;
    T* H = ws.H.data.data();
    const int64_t target = m * k;
    const int64_t G = 8 * k <= n ? 4 * k : n;
    T* gm = ws.cand_tmp.data();
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < m; ++i) group_max(pre + i * n, n, G, gm + i * G);
    const T lo = kth_largest(gm, m * G, target);

    const int64_t cap = int64_t(ws.cand_val.size());
    bool overflow = false;
#pragma omp parallel num_threads(nt) reduction(|| : overflow)
    {
        const int tid = omp_get_thread_num(), nthr = omp_get_num_threads();
        const int64_t r0 = m * tid / nthr, r1 = m * (tid + 1) / nthr;
        const int64_t c0 = cap * tid / nthr, c1 = cap * (tid + 1) / nthr;
        int32_t* cidx = ws.iscratch.data() + int64_t(tid) * n;
        T* cval = ws.scratch.data() + tid * ws.per_thread;
        int64_t pos = c0;
        for (int64_t i = r0; i < r1; ++i) {
            const int64_t c = positive_at_least(pre + i * n, n, lo, cidx, cval);
            ws.cand_beg[size_t(i)] = pos;
            if (pos + c > c1) {
                overflow = true;
                ws.cand_end[size_t(i)] = pos;
                continue;
            }
            std::copy(cidx, cidx + c, ws.cand_col.data() + pos);
            std::copy(cval, cval + c, ws.cand_val.data() + pos);
            ws.cand_end[size_t(i)] = pos += c;
        }
    }
    if (overflow) {
        select_batchtopk_radix(H, pre, m, n, k, ws.row_sums.data());
        lists_from_dense(A, H, m, n);
        return;
    }

    // The exact cut v among the candidates: above it everything is kept, at it the first ties
    // in flattened order.
    int64_t total = 0;
    for (int64_t i = 0; i < m; ++i) {
        const int64_t b = ws.cand_beg[size_t(i)], c = ws.cand_end[size_t(i)] - b;
        std::copy(ws.cand_val.data() + b, ws.cand_val.data() + b + c, ws.cand_tmp.data() + total);
        total += c;
    }
    const bool keep_all = total <= target;
    const T v = keep_all ? T(0) : kth_largest(ws.cand_tmp.data(), total, target);
    int64_t ties = target, pos = 0;
    if (!keep_all)
        for (int64_t i = 0; i < m; ++i)
            for (int64_t e = ws.cand_beg[size_t(i)]; e < ws.cand_end[size_t(i)]; ++e)
                ties -= ws.cand_val[size_t(e)] > v;
    for (int64_t i = 0; i < m; ++i) {  // per row: count kept; ws.row_sums[i] = its ties
        int64_t kept = 0, row_ties = 0;
        for (int64_t e = ws.cand_beg[size_t(i)]; e < ws.cand_end[size_t(i)]; ++e) {
            const T x = ws.cand_val[size_t(e)];
            if (keep_all || x > v) {
                ++kept;
            } else if (x == v && ties > 0) {
                ++kept;
                ++row_ties;
                --ties;
            }
        }
        ws.row_sums[size_t(i)] = double(row_ties);
        A.beg[size_t(i)] = pos;
        A.end[size_t(i)] = pos += kept;
    }
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < m; ++i) {
        int64_t q = A.beg[size_t(i)], row_ties = int64_t(ws.row_sums[size_t(i)]);
        for (int64_t e = ws.cand_beg[size_t(i)]; e < ws.cand_end[size_t(i)]; ++e) {
            const T x = ws.cand_val[size_t(e)];
            bool keep = keep_all || x > v;
            if (!keep && x == v && row_ties > 0) {
                keep = true;
                --row_ties;
            }
            if (keep) {
                A.col[size_t(q)] = ws.cand_col[size_t(e)];
                A.val[size_t(q++)] = x;
            }
        }
        if (write_h)
            scatter_row(H + i * n, n, A.col.data() + A.beg[size_t(i)], A.val.data() + A.beg[size_t(i)],
                        A.end[size_t(i)] - A.beg[size_t(i)]);
    }
}

// Threshold rules, h = pre·1[pre > θ] with θ = theta[j] (jumprelu; also listing the entries in
// the straight-through window |pre − θ|/ε < ½ with value 0) or one θ for every latent
// (BatchTopK inference). Row i's entries go to [i·cap_row, ...); the dense H when write_h.
// ws.row_sums[i] = the row's active count. Returns false if a row had more than cap_row entries
// (the caller then takes the dense path; the dense H is always complete when write_h).
template <class T>
bool select_threshold(ModernWorkspace<T>& ws, const T* pre, int64_t m, int64_t n,
                      const double* theta, double one_theta, double eps, int64_t cap_row,
                      bool write_h, int nt) {
    SparseRows<T>& A = ws.act;
    T* H = ws.H.data.data();
    const bool window = eps > 0;
    bool overflow = false;
#pragma omp parallel for schedule(static) num_threads(nt) reduction(|| : overflow)
    for (int64_t i = 0; i < m; ++i) {
        const T* p = pre + i * n;
        T* h = H + i * n;
        const int64_t b = i * cap_row;
        int64_t c = 0, active = 0;
        for (int64_t j = 0; j < n; ++j) {
            const double th = theta ? theta[j] : one_theta;
            const bool on = double(p[j]) > th;
            const bool in_window = window && std::fabs((double(p[j]) - th) / eps) < 0.5;
            active += on;
            if (write_h) h[j] = on ? p[j] : T(0);
            if (on || in_window) {
                if (c < cap_row) {
                    A.col[size_t(b + c)] = int32_t(j);
                    A.val[size_t(b + c)] = on ? p[j] : T(0);
                }
                ++c;
            }
        }
        overflow = overflow || c > cap_row;
        A.beg[size_t(i)] = b;
        A.end[size_t(i)] = b + std::min(c, cap_row);
        ws.row_sums[size_t(i)] = double(active);
    }
    return !overflow;
}

// AuxK selection: per row i in [r0, r1) (at pre + (i − pre_row0)·n), the k_aux largest among the
// dead latents (ties to the lower index), relu, into ws.aux (row i at [i·k_aux, ...)); the dense
// Haux when write_h.
template <class T>
void select_aux(ModernWorkspace<T>& ws, const T* pre, int64_t pre_row0, int64_t r0, int64_t r1, int64_t n,
                int64_t n_dead, int64_t k_aux, bool write_h, int nt) {
    const int64_t k = std::min(k_aux, n_dead);
    SparseRows<T>& S = ws.aux;
    const int32_t* di = ws.dead_idx.data();
    T* Haux = ws.Haux.data.data();
    if (k == 0) {  // a latent shard with none of the dead latents: empty rows
        for (int64_t i = r0; i < r1; ++i) {
            S.beg[size_t(i)] = S.end[size_t(i)] = i * k_aux;
            if (write_h) std::fill(Haux + i * n, Haux + (i + 1) * n, T(0));
        }
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        T* s = ws.scratch.data() + omp_get_thread_num() * ws.per_thread;
#pragma omp for schedule(static)
        for (int64_t i = r0; i < r1; ++i) {
            const T* p = pre + (i - pre_row0) * n;
            for (int64_t t = 0; t < n_dead; ++t) s[t] = key(p[di[t]]);
            const T v = kth_largest(s, n_dead, k);
            int64_t above = 0;
            for (int64_t t = 0; t < n_dead; ++t) above += key(p[di[t]]) > v;
            int64_t ties = k - above;
            const int64_t b = i * k_aux;
            int64_t c = 0;
            for (int64_t t = 0; t < n_dead; ++t) {
                const T q = key(p[di[t]]);
                bool keep = q > v;
                if (!keep && q == v && ties > 0) {
                    keep = true;
                    --ties;
                }
                if (keep && p[di[t]] > T(0)) {
                    S.col[size_t(b + c)] = di[t];
                    S.val[size_t(b + c++)] = p[di[t]];
                }
            }
            S.beg[size_t(i)] = b;
            S.end[size_t(i)] = b + c;
            if (write_h) scatter_row(Haux + i * n, n, S.col.data() + b, S.val.data() + b, c);
        }
    }
}

// Asks for a row of n values ahead of its use (the gathers below jump between rows that the
// hardware prefetcher cannot guess).
template <class T>
inline void prefetch_row(const T* p, int64_t n) {
    const char* b = reinterpret_cast<const char*>(p);
    for (int64_t o = 0; o < n * int64_t(sizeof(T)); o += 64) __builtin_prefetch(b + o);
}

// out_i = (bias, or 0) + Σ_{(j, v) in row i of S} v·W[j]   for W [n, d] row-major, out [m, d].
template <class T>
void sparse_rows_times(const SparseRows<T>& S, const T* W, const T* bias, int64_t m, int64_t d,
                       T* out, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < m; ++i) {
        T* o = out + i * d;
        if (bias) std::copy(bias, bias + d, o);
        else std::fill(o, o + d, T(0));
        const int64_t e0 = S.beg[size_t(i)], e1 = S.end[size_t(i)];
        if (e0 < e1) prefetch_row(W + int64_t(S.col[size_t(e0)]) * d, d);
        for (int64_t e = e0; e < e1; ++e) {
            if (e + 1 < e1) prefetch_row(W + int64_t(S.col[size_t(e + 1)]) * d, d);
            const T v = S.val[size_t(e)];
            if (v != T(0)) axpy(o, v, W + int64_t(S.col[size_t(e)]) * d, d);
        }
    }
}

}  // namespace

const std::array<const char*, 8>& modern_phase_names() {
    static const std::array<const char*, 8> names = {"input", "encoder", "select", "decode",
                                                     "auxk", "lists", "backward", "b_dec"};
    return names;
}

namespace {
// Adds the time since the previous mark to phase p (when profiling).
struct PhaseClock {
    bool on;
    std::array<double, 8>& ms;
    std::chrono::steady_clock::time_point t = std::chrono::steady_clock::now();
    void mark(int p) {
        if (!on) return;
        const auto now = std::chrono::steady_clock::now();
        ms[size_t(p)] += std::chrono::duration<double, std::milli>(now - t).count();
        t = now;
    }
};
}  // namespace

namespace {

// Everything one modern_cost call shares between its stages: the inputs, the workspace's
// buffers and the settings derived from the spec. The stages and the architectures' ops read
// and write through it.
template <class T>
struct Step {
    Backend& be;
    const ModernSpec& spec;
    ModernWorkspace<T>& ws;
    Tensors<T> P;            // parameters
    Tensors<T> G{};          // gradient (when asked)
    const T* X;              // [m, d_in]
    const T* xin = nullptr;  // [m, d_in] encoder input
    int64_t m, d_in, d_sae;
    T* pre;                  // [m, d_sae] (the last encoder block when fused)
    T* H;                    // [m, d_sae] dense activations (when written)
    T* Xhat;                 // [m, d_in]
    T* dXhat;                // [m, d_in]
    double* row_sums;        // [m]
    double* latent;          // [d_sae] per-latent values of the row (θ, decoder norms)
    double inv_m;
    int nt;
    Precision prec;
    double l1, l0;           // penalty coefficients × sparsity_scale
    double batchtopk_threshold;
    bool want_sparse;        // the row has lists and the path allows them
    bool write_h;            // the dense H is written
    int64_t n_dead = 0;
    bool aux = false;        // AuxK runs this call
    T* bias_grad = nullptr;  // Σᵢ ∂J/∂preᵢ [d_sae]: the encoder bias's gradient (gated: ws.bias_sum)
    Comm* shards = nullptr;  // latent shards (ws.shards, when more than one)
    bool lead = true;        // the first shard (or no shards): adds b_dec to x̂ and Σ dXhat to b_dec's gradient
    bool inference = false;  // no gradient asked (encode, eval): screening may keep its preparation
};

// Latent shards: buf [n] summed over every shard (every shard gets the same bits).
template <class T>
void shards_sum(Step<T>& s, T* buf, int64_t n, const char* what) {
    if constexpr (std::is_same_v<T, float>)
        if (s.shards) s.shards->allreduce_sum(buf, n, what);
}
inline double shards_sum_value(Comm* shards, double v, const char* what) {
    if (shards) shards->allreduce_sum(&v, 1, what);
    return v;
}

// Latent shards: each shard's k best of each row (S, as a TopK selection leaves it) → this
// shard's part of the rows' exact global k best (shards_select); the dense rows when written.
template <class T>
void shards_merge(Step<T>& s, SparseRows<T>& S, int64_t k, T* dense) {
    if constexpr (std::is_same_v<T, float>) {
        if (!s.shards) return;
        shards_select(*s.shards, s.spec.latent_begin, s.d_sae, s.m, k, S.beg.data(), S.end.data(), S.col.data(),
                      S.val.data(), s.ws.shard_buf);
        if (dense)
            for (int64_t i = 0; i < s.m; ++i) {
                T* row = dense + i * s.d_sae;
                std::fill(row, row + s.d_sae, T(0));
                const int64_t b = S.beg[size_t(i)];
                scatter_row(row, s.d_sae, S.col.data() + b, S.val.data() + b, S.end[size_t(i)] - b);
            }
    }
}

// The per-architecture half of a row of the table (the other half, ArchInfo, is public).
template <class T>
struct ArchOps {
    // h = σ(pre): into ws.act (lists) and/or the dense H (when s.write_h). Returns false when
    // the lists are incomplete (too many active entries), then the dense H is complete and the
    // dense path runs. Rows without lists write H and return false.
    bool (*select)(Step<T>& s);
    // J.sparsity (may leave per-latent values in s.latent for the backward); null: 0.
    double (*penalty)(Step<T>& s);
    // Dense path: turns ∂J/∂h = dXhat·W_decᵀ (in dH) into ∂J/∂pre, the gradient of the encoder
    // product's output, adding the penalty's and the row's own terms and writing the row's own
    // parameter gradients; null: pass it where h > 0 (gate_mask).
    void (*dense_backward)(Step<T>& s, T* dH);
    // The row's own auxiliary term (J.aux; AuxK is the pipeline's); null: none.
    double (*aux)(Step<T>& s);
};

// Through σ: the gradient passes exactly where h > 0 (relu's positive part, the kept
// TopK/BatchTopK entries, the open JumpReLU gate since θ > 0).
template <class T>
void gate_mask(Step<T>& s, T* dH) {
    const int64_t nH = s.m * s.d_sae;
    const T* H = s.H;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < nH; ++t)
        if (!(H[t] > T(0))) dH[t] = T(0);
}

// --- standard: relu, L1 weighted by decoder norms ----------------------------------------
template <class T>
bool select_relu(Step<T>& s) {
    const int64_t nH = s.m * s.d_sae;
    T* H = s.H;
    const T* pre = s.pre;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < nH; ++t) H[t] = pre[t] > T(0) ? pre[t] : T(0);
    return false;
}

// latent[j] = ‖W_dec[j]‖ (or 1); returns λ₁·(1/m)·Σᵢⱼ |Aᵢⱼ|·latent[j] for A [m, d_sae].
template <class T>
double weighted_l1(Step<T>& s, const T* A) {
    const int64_t d_in = s.d_in, d_sae = s.d_sae;
    double* latent = s.latent;
    const T* W_dec = s.P.W_dec;
    if (s.spec.l1_decoder_norm) {
#pragma omp parallel for schedule(static)
        for (int64_t j = 0; j < d_sae; ++j) {
            double q = 0;
            for (int64_t c = 0; c < d_in; ++c) {
                const double w = double(W_dec[j * d_in + c]);
                q += w * w;
            }
            latent[j] = std::sqrt(q);
        }
    } else {
        for (int64_t j = 0; j < d_sae; ++j) latent[j] = 1.0;
    }
    double* row_sums = s.row_sums;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < s.m; ++i) {
        double row = 0;
        for (int64_t j = 0; j < d_sae; ++j) row += std::fabs(double(A[i * d_sae + j])) * latent[j];
        row_sums[i] = row;
    }
    return s.l1 * sum_in_order(row_sums, s.m) * s.inv_m;
}

// J.sparsity = λ₁·(1/m)·Σᵢⱼ |hᵢⱼ|·‖W_dec[j]‖.
template <class T>
double penalty_l1(Step<T>& s) {
    return weighted_l1(s, s.H);
}

// ∂/∂W_dec[j] of λ₁·(1/m)·Σᵢ|Aᵢⱼ|·‖W_dec[j]‖ = (λ₁/m)·Σᵢ|Aᵢⱼ|·W_dec[j]/‖W_dec[j]‖ (latent[j] = the norm).
template <class T>
void decoder_norm_grad(Step<T>& s, const T* A) {
    const int64_t d_in = s.d_in, d_sae = s.d_sae;
    const double c = s.l1 * s.inv_m;
    const double* latent = s.latent;
    column_sums(
        s.m, d_sae, [&](int64_t i, int64_t j) { return std::fabs(double(A[i * d_sae + j])); },
        [&](int64_t j, double a) {
            if (latent[j] == 0) return;  // no direction: the norm has no gradient here
            const double f = c * a / latent[j];
            for (int64_t col = 0; col < d_in; ++col)
                s.G.W_dec[j * d_in + col] += T(f * double(s.P.W_dec[j * d_in + col]));
        });
}

// ∂/∂hᵢⱼ = (λ/m)·sign(hᵢⱼ)·‖W_dec[j]‖; ∂/∂W_dec[j] = (λ/m)·Σᵢ|hᵢⱼ|·W_dec[j]/‖W_dec[j]‖.
template <class T>
void dense_backward_l1(Step<T>& s, T* dH) {
    if (s.l1 != 0) {
        const int64_t d_sae = s.d_sae;
        const double c = s.l1 * s.inv_m;
        const T* H = s.H;
        const double* latent = s.latent;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < s.m; ++i)
            for (int64_t j = 0; j < d_sae; ++j) {
                const T h = H[i * d_sae + j];
                const double sg = h > T(0) ? 1.0 : (h < T(0) ? -1.0 : 0.0);
                dH[i * d_sae + j] += T(c * sg * latent[j]);
            }
        if (s.spec.l1_decoder_norm) decoder_norm_grad(s, H);
    }
    gate_mask(s, dH);
}

// --- threshold rules (JumpReLU, BatchTopK inference) -------------------------------------
// theta [d_sae] or one value for every latent; eps > 0 also lists the straight-through window.
// On overflow with no dense H asked for, writes the dense H the dense path needs.
template <class T>
bool select_by_threshold(Step<T>& s, const double* theta, double one_theta, double eps) {
    ModernWorkspace<T>& ws = s.ws;
    const int64_t cap_row = ws.act.cap / int64_t(ws.act.beg.size());
    const bool complete = select_threshold(ws, s.pre, s.m, s.d_sae, theta, one_theta, eps, cap_row,
                                           s.write_h, s.nt);
    if (!complete && !s.write_h) {
        const int64_t d_sae = s.d_sae;
        T* H = s.H;
        const T* pre = s.pre;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < s.m; ++i)
            for (int64_t j = 0; j < d_sae; ++j) {
                const double th = theta ? theta[j] : one_theta;
                const T p = pre[i * d_sae + j];
                H[i * d_sae + j] = double(p) > th ? p : T(0);
            }
    }
    return complete;
}

// --- topk / batchtopk ----------------------------------------------------------------------
template <class T>
bool select_topk_all(Step<T>& s) {
    select_topk(s.ws, s.pre, 0, 0, s.m, s.d_sae, s.spec.k, s.write_h, s.nt);
    return true;
}

template <class T>
bool select_batch(Step<T>& s) {
    if (s.batchtopk_threshold >= 0) return select_by_threshold(s, nullptr, s.batchtopk_threshold, 0.0);
    if (s.ws.share.rows > 0 || s.shards) {  // replicas, shards: the whole batch's selection (radix, exact)
        select_batchtopk_radix(s.ws.H.data.data(), s.pre, s.m, s.d_sae, s.spec.k, s.ws.row_sums.data(), &s.ws.share,
                               s.shards);
        lists_from_dense(s.ws.act, s.ws.H.data.data(), s.m, s.d_sae);
        return true;
    }
    select_batchtopk(s.ws, s.pre, s.m, s.d_sae, s.spec.k, s.write_h, s.nt);
    return true;
}

// --- jumprelu: h = pre·H(pre − θ), L0 penalty, straight-through θ -------------------------
// latent[j] = θⱼ; ws.row_sums holds each row's active count for the penalty.
template <class T>
bool select_jump(Step<T>& s) {
    for (int64_t j = 0; j < s.d_sae; ++j) s.latent[j] = std::exp(double(s.P.log_threshold[j]));
    return select_by_threshold(s, s.latent, 0.0, s.spec.bandwidth);
}

template <class T>
double penalty_l0(Step<T>& s) {
    return s.l0 * sum_in_order(s.row_sums, s.m) * s.inv_m;
}

// Straight-through: ∂J/∂θⱼ = Σᵢ K((preᵢⱼ − θⱼ)/ε)·(−θⱼ/ε·dHᵢⱼ − λ₀/(m·ε)), then
// ∂J/∂log θⱼ = θⱼ·∂J/∂θⱼ. dH here is still ∂J/∂h (before the gate).
template <class T>
void dense_backward_jump(Step<T>& s, T* dH) {
    const int64_t d_sae = s.d_sae;
    const double eps = s.spec.bandwidth;
    const double l0_term = -s.l0 * s.inv_m / eps;
    const double* latent = s.latent;
    const T* pre = s.pre;
    column_sums(
        s.m, d_sae,
        [&](int64_t i, int64_t j) {
            const double th = latent[j];
            const double u = (double(pre[i * d_sae + j]) - th) / eps;
            return std::fabs(u) < 0.5 ? -th / eps * double(dH[i * d_sae + j]) + l0_term : 0.0;
        },
        [&](int64_t j, double g) { s.G.log_threshold[j] = T(latent[j] * g); });
    gate_mask(s, dH);
}

// --- gated: h = 1[gate > 0]·relu(mag), shared weights -------------------------------------
// pre is the gate (bias b_gate); mag = (pre − b_gate)·exp(r_mag) + b_mag; Haux = relu(gate).
template <class T>
bool select_gated(Step<T>& s) {
    const int64_t m = s.m, n = s.d_sae;
    double* er = s.ws.mag_scale.data();
    for (int64_t j = 0; j < n; ++j) er[j] = std::exp(double(s.P.r_mag[j]));
    const T* pre = s.pre;
    const T* b_gate = s.P.b_enc;
    const T* b_mag = s.P.b_mag;
    T* mag = s.ws.mag.data.data();
    T* H = s.H;
    T* Hg = s.ws.Haux.data.data();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
            const int64_t t = i * n + j;
            const T g = pre[t];
            const T mg = T((double(g) - double(b_gate[j])) * er[j] + double(b_mag[j]));
            mag[t] = mg;
            H[t] = g > T(0) && mg > T(0) ? mg : T(0);
            Hg[t] = g > T(0) ? g : T(0);
        }
    return false;
}

// λ₁·(1/m)·Σᵢⱼ relu(gateᵢⱼ)·‖W_dec[j]‖.
template <class T>
double penalty_gate(Step<T>& s) {
    return weighted_l1(s, s.ws.Haux.data.data());
}

// (1/m)·Σᵢ ½‖Yᵢ − xᵢ‖² over the step's batch (rows summed in order); dY = (Y − x)/m.
template <class T>
double half_squared_error(Step<T>& s, const T* Y, T* dY) {
    const int64_t m = s.m, d_in = s.d_in;
    const T* X = s.X;
    double* row_sums = s.row_sums;
    const double inv_m = s.inv_m;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
        double row = 0;
        for (int64_t c = 0; c < d_in; ++c) {
            const double e = double(Y[i * d_in + c]) - double(X[i * d_in + c]);
            row += e * e;
            dY[i * d_in + c] = T(e * inv_m);
        }
        row_sums[i] = row;
    }
    return 0.5 * sum_in_order(row_sums, m) * inv_m;
}

// x̃ = relu(gate)·W_dec + b_dec (decoder frozen); aux = (1/m)·Σᵢ ½‖x̃ᵢ − xᵢ‖²; dEaux = (x̃ − x)/m.
template <class T>
double aux_gate(Step<T>& s) {
    ModernWorkspace<T>& ws = s.ws;
    const int64_t m = s.m, d_in = s.d_in;
    T* Et = ws.Eaux.data.data();
    T* dE = ws.dEaux.data.data();
    product(s.be, Trans::no, Trans::no, m, d_in, s.d_sae, ws.Haux.data.data(), s.d_sae, s.P.W_dec, d_in, T(0), Et,
            d_in, s.lead ? s.P.b_dec : nullptr, s.prec);
    shards_sum(s, Et, m * d_in, "decoder reduce");  // shards: every shard's partial x̃
    return half_squared_error(s, Et, dE);
}

// dH = ∂J/∂h on entry. dmag = dH where gate > 0 and mag > 0; dgate = (λ₁/m)·‖W_dec[j]‖ +
// dEaux·W_decᵀ where gate > 0; ∂J/∂(x'·W_enc) = dgate + exp(r_mag)·dmag (left in dH);
// b_gate: Σ dgate, b_mag: Σ dmag, r_mag: Σ dmag·(gate − b_gate)·exp(r_mag); the penalty's
// decoder-norm gradient into W_dec (the aux term's decoder is frozen).
template <class T>
void dense_backward_gate(Step<T>& s, T* dH) {
    ModernWorkspace<T>& ws = s.ws;
    const int64_t m = s.m, n = s.d_sae, d_in = s.d_in;
    T* Hg = ws.Haux.data.data();
    if (s.l1 != 0 && s.spec.l1_decoder_norm) decoder_norm_grad(s, Hg);
    // Hg is not needed again: it takes dEaux·W_decᵀ [m, d_sae], then dgate.
    product(s.be, Trans::no, Trans::yes, m, n, d_in, ws.dEaux.data.data(), d_in, s.P.W_dec, d_in, T(0), Hg, n,
            nullptr, s.prec);
    const double c = s.l1 * s.inv_m;
    const double* latent = s.latent;
    const double* er = ws.mag_scale.data();
    const T* pre = s.pre;
    T* mag = ws.mag.data.data();  // takes dmag
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
            const int64_t t = i * n + j;
            const bool open = pre[t] > T(0);
            const T dmag = open && mag[t] > T(0) ? dH[t] : T(0);
            const T dgate = open ? T(c * latent[j] + double(Hg[t])) : T(0);
            mag[t] = dmag;
            Hg[t] = dgate;
            dH[t] = T(double(dgate) + er[j] * double(dmag));
        }
    const T* b_gate = s.P.b_enc;
    column_sums(
        m, n, [&](int64_t i, int64_t j) { return double(Hg[i * n + j]); },
        [&](int64_t j, double v) { s.G.b_enc[j] = T(v); });
    column_sums(
        m, n, [&](int64_t i, int64_t j) { return double(mag[i * n + j]); },
        [&](int64_t j, double v) { s.G.b_mag[j] = T(v); });
    column_sums(
        m, n,
        [&](int64_t i, int64_t j) {
            return double(mag[i * n + j]) * (double(pre[i * n + j]) - double(b_gate[j]));
        },
        [&](int64_t j, double v) { s.G.r_mag[j] = T(v * er[j]); });
}

// The rows of the table, in arch_table() order.
template <class T>
const ArchOps<T>& arch_ops(Arch a) {
    //                                select              penalty          dense_backward            aux
    static const ArchOps<T> standard{select_relu<T>, penalty_l1<T>, dense_backward_l1<T>, nullptr};
    static const ArchOps<T> topk{select_topk_all<T>, nullptr, nullptr, nullptr};
    static const ArchOps<T> batchtopk{select_batch<T>, nullptr, nullptr, nullptr};
    static const ArchOps<T> jumprelu{select_jump<T>, penalty_l0<T>, dense_backward_jump<T>, nullptr};
    static const ArchOps<T> gated{select_gated<T>, penalty_gate<T>, dense_backward_gate<T>, aux_gate<T>};
    static const ArchOps<T> matryoshka{select_batch<T>, nullptr, nullptr, nullptr};
    switch (a) {
        case Arch::standard: return standard;
        case Arch::topk: return topk;
        case Arch::batchtopk: return batchtopk;
        case Arch::jumprelu: return jumprelu;
        case Arch::gated: return gated;
        case Arch::matryoshka_batchtopk: return matryoshka;
    }
    throw Error("arch_ops: an Arch value without ops");
}

// --- the shared stages ----------------------------------------------------------------------
// x' = x − b_dec (or x).
template <class T>
void stage_input(Step<T>& s) {
    s.xin = s.X;
    if (!s.spec.apply_b_dec_to_input) return;
    T* xb = s.ws.xin.data.data();
    const int64_t d_in = s.d_in;
    const T* X = s.X;
    const T* b_dec = s.P.b_dec;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < s.m; ++i)
        for (int64_t c = 0; c < d_in; ++c) xb[i * d_in + c] = X[i * d_in + c] - b_dec[c];
    s.xin = xb;
}

// Dead latents for AuxK: their count, their indices in ws.dead_idx.
template <class T>
void stage_dead(Step<T>& s, const uint8_t* dead, bool lists_only) {
    // Latent shards: every shard counts (a shard with none of the dead latents may have no mask).
    if (!uses_aux(s.spec) || (!dead && !s.shards)) return;
    if (dead)
        for (int64_t j = 0; j < s.d_sae; ++j) s.n_dead += dead[j] != 0;
    s.aux = shards_sum_value(s.shards, double(s.n_dead), "dead count") > 0;  // dead latents of every shard
    if (!s.aux) return;
    ModernWorkspace<T>& ws = s.ws;
    require((lists_only || ws.Haux.rows >= s.m) && ws.Haux.cols == s.d_sae && ws.Eaux.cols == s.d_in &&
                int64_t(ws.dead_idx.size()) == s.d_sae && ws.aux.cap >= s.m * s.spec.k_aux,
            "modern_cost: workspace not reserved for AuxK");
    if (dead)
        for (int64_t j = 0, t = 0; j < s.d_sae; ++j)
            if (dead[j]) ws.dead_idx[size_t(t++)] = int32_t(j);
}

// --- screened TopK (float, lists only; docs/performance.md "Screened TopK") -----------------
template <class T>
bool screening_on(const ModernWorkspace<T>& ws) {
    return std::is_same_v<T, float> && ws.screen != Screen::off && !ws.screen_wt.empty();
}

// The smallest float ≥ v·(1 + 2⁻¹⁸) (v ≥ 0; +∞ when out of range): the bound's inputs rounded
// up with room for the float operations that combine them.
// Asks for n floats from p ahead of their use (the candidates' columns of W_enc are far apart).
inline void prefetch_floats(const float* p, int64_t n) {
    for (int64_t q = 0; q < n; q += 16) __builtin_prefetch(p + q, 0, 3);
}

inline float screen_up(double v) {
    v *= 1.0 + std::ldexp(1.0, -18);
    float f = float(v);
    if (double(f) < v) f = std::nextafter(f, std::numeric_limits<float>::infinity());
    return f;
}

// AuxK's candidates among the n_dead dead latents di of one row: those whose upper bound
// s_j + e_j reaches a lower bound of their ka-th largest value (lo: the row's lower bounds;
// cval [n_dead] and gmax: scratch). Writes them to acols; returns their count.
inline int64_t screen_aux_candidates(const float* srow, const float* wn, const float* cb, float alpha, float tau,
                                     const float* lo, const int32_t* di, int64_t n_dead, int64_t ka, float* cval,
                                     float* gmax, int32_t* acols) {
    for (int64_t t = 0; t < n_dead; ++t) cval[t] = lo[di[t]];
    const float La = 8 * ka <= n_dead ? topk_lower_bound(cval, n_dead, ka, gmax) : kth_largest(cval, n_dead, ka);
    int64_t na = 0;
    for (int64_t t = 0; t < n_dead; ++t) {
        const int32_t j = di[t];
        if (srow[j] + (alpha * wn[j] + (cb[j] + tau)) >= La) acols[na++] = j;
    }
    return na;
}

// Per step: W_enc transposed (columns contiguous for screen_dot), the column norms and bias
// terms of the bound, W_enc rounded to bf16 (bf16 screening). Returns the largest column norm.
inline double screen_prepare(Step<float>& s, const ScreenBound& bound) {
    ModernWorkspace<float>& ws = s.ws;
    const int64_t d_in = s.d_in, n = s.d_sae;
    const float* W = s.P.W_enc;
    const float* b = s.P.b_enc;
    // Inference: the last preparation still holds if W_enc and b_enc are unchanged, bit for bit.
    const size_t src_len = size_t(d_in * n + n);
    if (s.inference && ws.screen_src.size() == src_len &&
        std::memcmp(ws.screen_src.data(), W, size_t(d_in * n) * sizeof(float)) == 0 &&
        std::memcmp(ws.screen_src.data() + d_in * n, b, size_t(n) * sizeof(float)) == 0)
        return ws.screen_wn_max;
    float* wt = ws.screen_wt.data();
    float* wn = ws.screen_wn.data();
    float* cb = ws.screen_cb.data();
    const bool rounded = ws.screen_product == Screen::bf16;
    uint16_t* wb = rounded ? ws.w_bf16.data() : nullptr;  // W_enc rounded, in the same pass
    double rho = 0;  // bf16: the columns' largest relative rounding (screen_row_factor)
#pragma omp parallel for schedule(static) num_threads(s.nt) reduction(max : rho)
    for (int64_t j0 = 0; j0 < n; j0 += 64) {
        const int64_t j1 = std::min(n, j0 + 64);
        for (int64_t c = 0; c < d_in; ++c)
            for (int64_t j = j0; j < j1; ++j) {
                const float v = W[c * n + j];
                wt[j * d_in + c] = v;
                if (rounded) wb[c * n + j] = bf16::round(v);
            }
        for (int64_t j = j0; j < j1; ++j) {
            double q = 0, qd = 0;
            if (rounded) {
                q = screen_column_sq(wt + j * d_in, d_in, &qd);
                if (q > 0) rho = std::max(rho, std::sqrt(qd / q));
            } else {
                for (int64_t c = 0; c < d_in; ++c) q += double(wt[j * d_in + c]) * double(wt[j * d_in + c]);
            }
            wn[j] = screen_up(std::sqrt(q));
            cb[j] = screen_up(bound.coef_b * std::fabs(double(b[j])));
        }
    }
    ws.screen_rho = rho;
    double wn_max = 0;
    for (int64_t j = 0; j < n; ++j) wn_max = std::max(wn_max, double(wn[j]));
    ws.screen_wn_max = wn_max;
    if (s.inference) {  // (the copy's room is taken once, at the first inference call)
        ws.screen_src.resize(src_len);
        std::copy(W, W + d_in * n, ws.screen_src.begin());
        std::copy(b, b + n, ws.screen_src.begin() + d_in * n);
    } else if (!ws.screen_src.empty()) {
        std::vector<float>().swap(ws.screen_src);
    }
    return wn_max;
}

// The largest float ≤ v (−∞ below the float range).
inline float float_down(double v) {
    float f = float(v);
    if (double(f) > v) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
    return f;
}

// The screening product for a block and the exact TopK (and AuxK) of screen_dot values; the
// bound decides which entries need screen_dot. Rows the bound cannot serve (a non-finite
// screening value or bound) compute every entry with screen_dot (counted as fallbacks).
inline void stage_encode_select_screened(Step<float>& s, PhaseClock& clock, int64_t blk) {
    ModernWorkspace<float>& ws = s.ws;
    const int64_t m = s.m, d_in = s.d_in, n = s.d_sae, k = s.spec.k;
    require(int64_t(ws.screen_wt.size()) >= d_in * n && int64_t(ws.screen_col.size()) >= 2 * ws.threads * n &&
                s.nt <= ws.threads && (ws.screen_product == Screen::fp32 || int64_t(ws.w_bf16.size()) >= d_in * n),
            "modern_cost: workspace not reserved for screening");
    const ScreenBound bound = screen_bound(ws.screen_product, d_in);
    const float* W = s.P.W_enc;
    const float* b = s.P.b_enc;
    const float* wt = ws.screen_wt.data();
    const float* wn = ws.screen_wn.data();
    const float* cb = ws.screen_cb.data();
    const double wn_max = screen_prepare(s, bound);
    const double sqrt_n = std::sqrt(double(d_in));
    const int64_t n_dead = s.aux ? s.n_dead : 0;
    const int64_t ka = s.aux ? std::min(s.spec.k_aux, n_dead) : 0;
    const int32_t* di = ws.dead_idx.data();
    SparseRows<float>& A = ws.act;
    SparseRows<float>& X = ws.aux;
    int64_t st_cand = 0, st_fall = 0, st_aux = 0;
    for (int64_t r0 = 0; r0 < m; r0 += blk) {
        const int64_t rows = std::min(blk, m - r0);
        if (ws.screen_product == Screen::bf16)
            s.be.gemm_bf16_b(Trans::no, rows, n, d_in, s.xin + r0 * d_in, d_in, ws.w_bf16.data(), 0.0f, s.pre, n, b);
        else
            product(s.be, Trans::no, Trans::no, rows, n, d_in, s.xin + r0 * d_in, d_in, W, n, 0.0f, s.pre, n, b,
                    Precision::f32);
        clock.mark(1);
#pragma omp parallel num_threads(s.nt) reduction(+ : st_cand, st_fall, st_aux)
        {
            const int tid = omp_get_thread_num();
            float* sc = ws.scratch.data() + tid * ws.per_thread;
            float* gmax = sc;           // [4k]
            float* cval = sc + 4 * k;   // [n]
            float* tmp = cval + n;      // [n]
            float* lo = tmp + n;        // [n]: the lower bounds, then the exact values
            int32_t* cidx = ws.iscratch.data() + int64_t(tid) * n;
            int32_t* cols = ws.screen_col.data() + int64_t(tid) * 2 * n;  // TopK candidates
            int32_t* acols = cols + n;                                      // AuxK candidates
#pragma omp for schedule(static)
            for (int64_t i = r0; i < r0 + rows; ++i) {
                const float* x = s.xin + i * d_in;
                const float* srow = s.pre + (i - r0) * n;
                double xn = 0;
                const float alpha = screen_up(screen_row_factor(ws.screen_product, x, d_in, ws.screen_rho, &xn));
                const float tau = screen_up(bound.tau_scale * (2.0 * double(d_in) + 4 + 2 * sqrt_n * (xn + wn_max)));
                bool all = !(std::isfinite(alpha) && std::isfinite(tau)) || !screen_lower(srow, wn, cb, alpha, tau, n, lo);
                int64_t nc = 0, na = 0;
                if (!all) {
                    // A lower bound L of the k-th largest value: every entry whose upper bound is
                    // below L (or not positive) is below the k-th largest, so never selected.
                    float L;
                    if (8 * k <= n) L = topk_lower_bound(lo, n, k, gmax);
                    else {
                        std::copy(lo, lo + n, cval);
                        L = kth_largest(cval, n, k);
                    }
                    const float thr = std::max(L, std::numeric_limits<float>::denorm_min());
                    nc = screen_candidates(srow, wn, cb, alpha, tau, n, thr, cols);
                    if (ka > 0)  // the same among the dead latents, against their ka-th largest
                        na = screen_aux_candidates(srow, wn, cb, alpha, tau, lo, di, n_dead, ka, cval, gmax, acols);
                }
                // Exact values of the candidates; a non-finite one sends the row to the fallback.
                for (int pass = 0; pass < 2; ++pass) {
                    if (all) {
                        nc = n;
                        for (int64_t j = 0; j < n; ++j) cols[j] = int32_t(j);
                        na = n_dead;
                        for (int64_t t = 0; t < n_dead; ++t) acols[t] = di[t];
                    }
                    bool finite = true;
                    for (int64_t t = 0; t < nc; ++t) {
                        const int32_t j = cols[t];
                        if (t + 2 < nc) prefetch_floats(wt + int64_t(cols[t + 2]) * d_in, d_in);
                        lo[t] = screen_dot(x, wt + int64_t(j) * d_in, d_in, b[j]);
                        finite = finite && std::isfinite(lo[t]);
                    }
                    if (!finite && !all) {
                        all = true;
                        continue;
                    }
                    break;
                }
                st_cand += nc;
                st_fall += all;
                const int64_t bo = i * k;
                const int64_t c = topk_row(lo, nc, k, gmax, cidx, cval, tmp, A.col.data() + bo, A.val.data() + bo);
                for (int64_t e = 0; e < c; ++e) A.col[size_t(bo + e)] = cols[A.col[size_t(bo + e)]];
                A.beg[size_t(i)] = bo;
                A.end[size_t(i)] = bo + c;
                if (ka > 0) {
                    // AuxK on the candidates: the ka largest (ties to the lower column), kept if > 0
                    st_aux += na;
                    for (int64_t t = 0; t < na; ++t) {
                        const int32_t j = acols[t];
                        lo[t] = screen_dot(x, wt + int64_t(j) * d_in, d_in, b[j]);
                        tmp[t] = key(lo[t]);
                    }
                    const float v = kth_largest(tmp, na, ka);
                    int64_t above = 0;
                    for (int64_t t = 0; t < na; ++t) above += key(lo[t]) > v;
                    int64_t ties = ka - above, ca = 0;
                    const int64_t ba = i * s.spec.k_aux;
                    for (int64_t t = 0; t < na; ++t) {
                        const float q2 = key(lo[t]);
                        bool keep = q2 > v;
                        if (!keep && q2 == v && ties > 0) {
                            keep = true;
                            --ties;
                        }
                        if (keep && lo[t] > 0.0f) {
                            X.col[size_t(ba + ca)] = acols[t];
                            X.val[size_t(ba + ca++)] = lo[t];
                        }
                    }
                    X.beg[size_t(i)] = ba;
                    X.end[size_t(i)] = ba + ca;
                }
            }
        }
        clock.mark(2);
    }
    ws.screen_stats = ScreenStats{.rows = m, .candidates = st_cand, .fallback_rows = st_fall,
                                  .aux_rows = ka > 0 ? m : 0, .aux_candidates = st_aux};
}

// Screened BatchTopK (training's batch cut and AuxK, or the inference threshold) and JumpReLU
// (θ_j, and the straight-through window |v − θ_j| < ε/2 in training): the screening product
// into the whole pre [m, d_sae], then every entry whose upper bound s + e reaches the rule's
// lower bound t is replaced by its screen_dot value (rows the bound cannot serve: every entry).
// An entry left alone has its value v and its s both below t, and t is below everything the
// rule can keep or list:
//   BatchTopK training: t = max(L, smallest positive float), L the (m·k)-th largest of the rows'
//     4k group maxima of s − e (a lower bound of the batch's (m·k)-th largest value); AuxK: per
//     row the k_aux-th largest lower bound among the dead latents, as for TopK;
//   BatchTopK inference: t = the largest float ≤ θ (kept: v > θ);
//   JumpReLU: t_j = the largest float ≤ θ_j − ε (kept: v > θ_j; listed: |v − θ_j|/ε < ½).
// So the unchanged selection, penalty and dense backward read pre as they would read the
// definition's values everywhere: the same selections, ties and value bits.
inline void stage_encoder_screened(Step<float>& s) {
    ModernWorkspace<float>& ws = s.ws;
    const int64_t m = s.m, d_in = s.d_in, n = s.d_sae;
    const ArchInfo& row = arch_info(s.spec.arch);
    const bool batch = row.threshold == ThresholdKind::batch && s.batchtopk_threshold < 0;
    const bool jump = row.threshold == ThresholdKind::learnt;
    const int64_t k = s.spec.k, G = 8 * k <= n ? 4 * k : n;
    require(int64_t(ws.screen_wt.size()) >= d_in * n && int64_t(ws.screen_col.size()) >= 2 * ws.threads * n &&
                s.nt <= ws.threads && ws.pre.rows >= m &&
                (ws.screen_product == Screen::fp32 || int64_t(ws.w_bf16.size()) >= d_in * n) &&
                (!jump || int64_t(ws.screen_thr.size()) == n) && (!batch || int64_t(ws.cand_tmp.size()) >= m * G) &&
                ws.per_thread >= 3 * n,
            "modern_cost: workspace not reserved for screening");
    const ScreenBound bound = screen_bound(ws.screen_product, d_in);
    const float* b = s.P.b_enc;
    const float* wt = ws.screen_wt.data();
    const float* wn = ws.screen_wn.data();
    const float* cb = ws.screen_cb.data();
    const double wn_max = screen_prepare(s, bound);
    float* pre = s.pre;
    if (ws.screen_product == Screen::bf16)
        s.be.gemm_bf16_b(Trans::no, m, n, d_in, s.xin, d_in, ws.w_bf16.data(), 0.0f, pre, n, b);
    else
        product(s.be, Trans::no, Trans::no, m, n, d_in, s.xin, d_in, s.P.W_enc, n, 0.0f, pre, n, b, Precision::f32);
    float* tj = ws.screen_thr.data();
    if (jump)
        for (int64_t j = 0; j < n; ++j)
            tj[j] = float_down(std::exp(double(s.P.log_threshold[j])) - s.spec.bandwidth);
    const double sqrt_n = std::sqrt(double(d_in));
    // The row's bound: e_j = alpha·wn[j] + (cb[j] + tau); false when it is not finite.
    auto row_bound = [&](int64_t i, float& alpha, float& tau) {
        const float* x = s.xin + i * d_in;
        double xn = 0;
        alpha = screen_up(screen_row_factor(ws.screen_product, x, d_in, ws.screen_rho, &xn));
        tau = screen_up(bound.tau_scale * (2.0 * double(d_in) + 4 + 2 * sqrt_n * (xn + wn_max)));
        return std::isfinite(alpha) && std::isfinite(tau);
    };
    double* fell = ws.row_sums.data();  // 1 for a row every entry of which is recomputed
    float t = 0;
    if (batch) {  // the batch cut's lower bound from the group maxima of the lower bounds
        float* gm = ws.cand_tmp.data();
#pragma omp parallel for schedule(static) num_threads(s.nt)
        for (int64_t i = 0; i < m; ++i) {
            float* lo = ws.scratch.data() + omp_get_thread_num() * ws.per_thread;
            float alpha, tau;
            const bool ok = row_bound(i, alpha, tau) && screen_lower(pre + i * n, wn, cb, alpha, tau, n, lo);
            fell[i] = ok ? 0.0 : 1.0;
            if (ok) group_max(lo, n, G, gm + i * G);
            else std::fill(gm + i * G, gm + (i + 1) * G, -std::numeric_limits<float>::infinity());
        }
        t = std::max(kth_largest(gm, m * G, m * k), std::numeric_limits<float>::denorm_min());
    } else if (!jump) {
        t = float_down(s.batchtopk_threshold);
    }
    const int64_t n_dead = s.aux && batch ? s.n_dead : 0;
    const int64_t ka = n_dead > 0 ? std::min(s.spec.k_aux, n_dead) : 0;
    const int32_t* di = ws.dead_idx.data();
    int64_t st_cand = 0, st_fall = 0, st_aux = 0;
#pragma omp parallel num_threads(s.nt) reduction(+ : st_cand, st_fall, st_aux)
    {
        const int tid = omp_get_thread_num();
        float* lo = ws.scratch.data() + tid * ws.per_thread;  // [n]
        float* cval = lo + n;                                  // [n]
        float* gmax = cval + n;                                // [n / 2]
        int32_t* cols = ws.screen_col.data() + int64_t(tid) * 2 * n;
        int32_t* acols = cols + n;
#pragma omp for schedule(static)
        for (int64_t i = 0; i < m; ++i) {
            const float* x = s.xin + i * d_in;
            float* srow = pre + i * n;
            float alpha = 0, tau = 0;
            bool all = batch ? fell[i] != 0.0 : !row_bound(i, alpha, tau);
            if (!batch && !all) all = !screen_lower(srow, wn, cb, alpha, tau, n, lo);
            if (batch && !all) row_bound(i, alpha, tau);
            int64_t nc = 0, na = 0;
            if (!all) {
                nc = jump ? screen_candidates_each(srow, wn, cb, alpha, tau, n, tj, cols)
                          : screen_candidates(srow, wn, cb, alpha, tau, n, t, cols);
                if (ka > 0) {  // AuxK: the same among the dead latents, against their ka-th largest
                    screen_lower(srow, wn, cb, alpha, tau, n, lo);
                    na = screen_aux_candidates(srow, wn, cb, alpha, tau, lo, di, n_dead, ka, cval, gmax, acols);
                }
            }
            if (all) {
                for (int64_t j = 0; j < n; ++j) srow[j] = screen_dot(x, wt + j * d_in, d_in, b[j]);
                nc = n;
            } else {
                // the values first (the candidate tests above read s), then into pre
                for (int64_t q = 0; q < nc; ++q) {
                    if (q + 2 < nc) prefetch_floats(wt + int64_t(cols[q + 2]) * d_in, d_in);
                    lo[q] = screen_dot(x, wt + int64_t(cols[q]) * d_in, d_in, b[cols[q]]);
                }
                for (int64_t q = 0; q < na; ++q)
                    cval[q] = screen_dot(x, wt + int64_t(acols[q]) * d_in, d_in, b[acols[q]]);
                for (int64_t q = 0; q < nc; ++q) srow[cols[q]] = lo[q];
                for (int64_t q = 0; q < na; ++q) srow[acols[q]] = cval[q];
            }
            st_cand += nc;
            st_fall += all;
            st_aux += na;
        }
    }
    ws.screen_stats = ScreenStats{.rows = m, .candidates = st_cand, .fallback_rows = st_fall,
                                  .aux_rows = ka > 0 ? m : 0, .aux_candidates = st_aux};
}

// TopK keeping lists only: the encoder product and the selections (TopK, AuxK) a block of rows
// at a time, each block selected while its pre-activations are still in cache.
template <class T>
void stage_encode_select_fused(Step<T>& s, PhaseClock& clock) {
    ModernWorkspace<T>& ws = s.ws;
    const int64_t m = s.m, d_in = s.d_in, d_sae = s.d_sae;
    const int64_t blk = ws.encoder_block > 0 ? ws.encoder_block : m;
    if constexpr (std::is_same_v<T, float>)
        if (screening_on(ws)) return stage_encode_select_screened(s, clock, blk);
    // bf16: W_enc is rounded once for all the blocks.
    const bool w_rounded = std::is_same_v<T, float> && s.prec == Precision::bf16;
    if constexpr (std::is_same_v<T, float>)
        if (w_rounded) {
            require(int64_t(ws.w_bf16.size()) >= d_in * d_sae, "modern_cost: workspace not reserved for bf16");
            round_to_bf16(s.P.W_enc, d_in, d_sae, d_sae, ws.w_bf16.data());
        }
    for (int64_t r0 = 0; r0 < m; r0 += blk) {
        const int64_t rows = std::min(blk, m - r0);
        // pre holds this block only
        if constexpr (std::is_same_v<T, float>) {
            if (w_rounded)
                s.be.gemm_bf16_b(Trans::no, rows, d_sae, d_in, s.xin + r0 * d_in, d_in, ws.w_bf16.data(), 0.0f,
                                 s.pre, d_sae, s.P.b_enc);
            else
                product(s.be, Trans::no, Trans::no, rows, d_sae, d_in, s.xin + r0 * d_in, d_in, s.P.W_enc, d_sae,
                        T(0), s.pre, d_sae, s.P.b_enc, s.prec);
        } else {
            product(s.be, Trans::no, Trans::no, rows, d_sae, d_in, s.xin + r0 * d_in, d_in, s.P.W_enc, d_sae, T(0),
                    s.pre, d_sae, s.P.b_enc, s.prec);
        }
        clock.mark(1);
        select_topk(ws, s.pre, r0, r0, r0 + rows, d_sae, s.spec.k, false, s.nt);
        if (s.aux) select_aux(ws, s.pre, r0, r0, r0 + rows, d_sae, s.n_dead, s.spec.k_aux, false, s.nt);
        clock.mark(2);
    }
}

// pre [m, d_sae] = x'·W_enc + bias: the one dense product of the forward.
template <class T>
void stage_encoder(Step<T>& s) {
    product(s.be, Trans::no, Trans::no, s.m, s.d_sae, s.d_in, s.xin, s.d_in, s.P.W_enc, s.d_sae, T(0), s.pre,
            s.d_sae, s.P.b_enc, s.prec);
}

// x̂ [m, d_in] = h·W_dec + b_dec; returns rec; dXhat = (x̂ − x)/m.
template <class T>
double stage_decode(Step<T>& s, bool sparse) {
    const int64_t m = s.m, d_in = s.d_in;
    const T* bias = s.lead ? s.P.b_dec : nullptr;  // shards: every shard's partial sum, b_dec once
    if (sparse)
        sparse_rows_times(s.ws.act, s.P.W_dec, bias, m, d_in, s.Xhat, s.nt);
    else
        product(s.be, Trans::no, Trans::no, m, d_in, s.d_sae, s.H, s.d_sae, s.P.W_dec, d_in, T(0), s.Xhat, d_in,
                bias, s.prec);
    shards_sum(s, s.Xhat, m * d_in, "decoder reduce");
    return half_squared_error(s, s.Xhat, s.dXhat);
}

// Nested prefixes (matryoshka): x̂⁽ᵍ⁾ for every group g, rec = Σ_g w_g·½·(1/m)·Σᵢ‖x̂⁽ᵍ⁾ᵢ − xᵢ‖²;
// ws.dXg group g = Σ_{g' ≥ g} w_g'·(x̂⁽ᵍ'⁾ − x)/m (what the latents of group g see), dXhat = its
// group 0 (b_dec sees every prefix), Xhat = x̂⁽ᴳ⁻¹⁾. Lists: each row's entries in column order,
// snapshotted at each group end; dense: one product per group added to the previous prefix.
template <class T>
double stage_decode_nested(Step<T>& s, bool sparse) {
    const int64_t m = s.m, d_in = s.d_in, d_sae = s.d_sae;
    const int64_t* ends = s.spec.group_ends.data();
    const double* w = s.spec.group_weights.data();
    const int64_t G = int64_t(s.spec.group_ends.size());
    T* D = s.ws.dXg.data.data();
    const T* X = s.X;
    T* Xhat = s.Xhat;
    const T* W_dec = s.P.W_dec;
    const T* b_dec = s.P.b_dec;
    double* row_sums = s.row_sums;
    const double inv_m = s.inv_m;
    // Row i's error of prefix g (x̂⁽ᵍ⁾ row i in o) into D, its weighted square into row_sums.
    auto error_row = [&](int64_t g, int64_t i, const T* o) {
        T* dg = D + (g * m + i) * d_in;
        const T* x = X + i * d_in;
        double row = 0;
        for (int64_t c = 0; c < d_in; ++c) {
            const double e = double(o[c]) - double(x[c]);
            row += e * e;
            dg[c] = T(w[g] * e * inv_m);
        }
        row_sums[i] += w[g] * row;
    };
    for (int64_t i = 0; i < m; ++i) row_sums[i] = 0;
    if (s.shards) {
        // Latent shards: each shard's part of every prefix x̂⁽ᵍ⁾ (its latents below ends[g], b_dec
        // on the first shard) into D, summed over the shards, then the errors from the sums.
        const int64_t b = s.spec.latent_begin;
        for (int64_t g = 0; g < G; ++g) {
            T* Dg = D + g * m * d_in;
            const int64_t lo = std::clamp<int64_t>((g ? ends[g - 1] : 0) - b, 0, d_sae);
            const int64_t hi = std::clamp<int64_t>(ends[g] - b, 0, d_sae);
            if (g == 0) {
                for (int64_t i = 0; i < m; ++i)
                    for (int64_t c = 0; c < d_in; ++c) Dg[i * d_in + c] = s.lead ? b_dec[c] : T(0);
            } else {
                std::copy(Dg - m * d_in, Dg, Dg);
            }
            if (hi <= lo) continue;
            if (sparse) {
                const SparseRows<T>& A = s.ws.act;
#pragma omp parallel for schedule(static) num_threads(s.nt)
                for (int64_t i = 0; i < m; ++i)
                    for (int64_t e = A.beg[size_t(i)]; e < A.end[size_t(i)]; ++e) {
                        const int64_t j = A.col[size_t(e)];
                        if (j >= lo && j < hi && A.val[size_t(e)] != T(0))
                            axpy(Dg + i * d_in, A.val[size_t(e)], W_dec + j * d_in, d_in);
                    }
            } else {
                product(s.be, Trans::no, Trans::no, m, d_in, hi - lo, s.H + lo, d_sae, W_dec + lo * d_in, d_in, T(1), Dg,
                        d_in, nullptr, s.prec);
            }
        }
        shards_sum(s, D, G * m * d_in, "decoder reduce");
        std::copy(D + (G - 1) * m * d_in, D + G * m * d_in, Xhat);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < m; ++i)
            for (int64_t g = 0; g < G; ++g) error_row(g, i, D + (g * m + i) * d_in);  // (in place)
    } else if (sparse) {
        const SparseRows<T>& A = s.ws.act;
#pragma omp parallel for schedule(static) num_threads(s.nt)
        for (int64_t i = 0; i < m; ++i) {
            T* o = Xhat + i * d_in;
            std::copy(b_dec, b_dec + d_in, o);
            int64_t e = A.beg[size_t(i)];
            const int64_t e1 = A.end[size_t(i)];
            for (int64_t g = 0; g < G; ++g) {
                for (; e < e1 && A.col[size_t(e)] < ends[g]; ++e) {
                    const T v = A.val[size_t(e)];
                    if (v != T(0)) axpy(o, v, W_dec + int64_t(A.col[size_t(e)]) * d_in, d_in);
                }
                error_row(g, i, o);
            }
        }
    } else {
        for (int64_t g = 0; g < G; ++g) {
            const int64_t j0 = g ? ends[g - 1] : 0, width = ends[g] - j0;
            // Xhat += H[:, j0 : j0 + width]·W_dec[j0 : j0 + width] (group 0: = ... + b_dec)
            product(s.be, Trans::no, Trans::no, m, d_in, width, s.H + j0, d_sae, W_dec + j0 * d_in, d_in,
                    g ? T(1) : T(0), Xhat, d_in, g ? nullptr : b_dec, s.prec);
#pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < m; ++i) error_row(g, i, Xhat + i * d_in);
        }
    }
    T* dXhat = s.dXhat;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
        for (int64_t g = G - 2; g >= 0; --g) {
            T* dg = D + (g * m + i) * d_in;
            const T* next = D + ((g + 1) * m + i) * d_in;
            for (int64_t c = 0; c < d_in; ++c) dg[c] += next[c];
        }
        std::copy(D + i * d_in, D + (i + 1) * d_in, dXhat + i * d_in);
    }
    return 0.5 * sum_in_order(row_sums, m) * inv_m;
}

// AuxK on dead latents: ê = h_aux·W_dec against e = x − x̂ (a constant); returns aux.
template <class T>
double stage_auxk(Step<T>& s, bool sparse, bool fused) {
    ModernWorkspace<T>& ws = s.ws;
    const int64_t m = s.m, d_in = s.d_in, d_sae = s.d_sae;
    T* Eaux = ws.Eaux.data.data();
    T* dEaux = ws.dEaux.data.data();
    if (!fused) select_aux(ws, s.pre, 0, 0, m, d_sae, s.n_dead, s.spec.k_aux, s.write_h, s.nt);
    shards_merge(s, ws.aux, s.spec.k_aux, s.write_h ? ws.Haux.data.data() : nullptr);
    if (sparse)
        sparse_rows_times<T>(ws.aux, s.P.W_dec, nullptr, m, d_in, Eaux, s.nt);
    else
        product(s.be, Trans::no, Trans::no, m, d_in, d_sae, ws.Haux.data.data(), d_sae, s.P.W_dec, d_in, T(0),
                Eaux, d_in, nullptr, s.prec);
    shards_sum(s, Eaux, m * d_in, "decoder reduce");
    const double c = s.spec.aux_coefficient * s.inv_m;
    const T* X = s.X;
    const T* Xhat = s.Xhat;
    double* row_sums = s.row_sums;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
        double row = 0;
        for (int64_t col = 0; col < d_in; ++col) {
            const int64_t t = i * d_in + col;
            const double e = double(X[t]) - double(Xhat[t]);
            const double r = double(Eaux[t]) - e;
            row += r * r;
            dEaux[t] = T(c * r);
        }
        row_sums[i] = row;
    }
    return s.spec.aux_coefficient * 0.5 * sum_in_order(row_sums, m) * s.inv_m;
}

// Sparse backward: every gradient entry is written exactly once (no fill). Per latent j:
// ∂J/∂h_ij = dXhat_i·W_dec[j] for its listed rows i; dW_dec[j] = Σ h_ij·dXhat_i; the gate passes
// it where h > 0 (dpre); dW_enc[:, j] = Σ dpre_ij·x'_i and db_enc[j] = Σ dpre_ij, collected for
// 16 latents in a tile [16, d_in] and written as 16-wide column blocks. A learnt threshold
// takes its straight-through gradient from the listed entries in its window.
template <class T>
void stage_backward_sparse(Step<T>& s, PhaseClock& clock) {
    ModernWorkspace<T>& ws = s.ws;
    const int64_t m = s.m, d_in = s.d_in, d_sae = s.d_sae;
    int64_t* cursor = ws.cursor.data();
    transpose_lists(ws.act, m, d_sae, cursor);
    if (s.aux) transpose_lists(ws.aux, m, d_sae, cursor);
    clock.mark(5);
    const SparseRows<T>& A = ws.act;
    const SparseRows<T>& X2 = ws.aux;
    const T* dEaux = s.aux ? ws.dEaux.data.data() : nullptr;
    const T* dXhat = s.dXhat;
    const T* xin = s.xin;
    const T* pre = s.pre;
    const double* latent = s.latent;
    const Tensors<T>& P = s.P;
    const Tensors<T>& G = s.G;
    const bool aux = s.aux;
    const bool jump = arch_info(s.spec.arch).threshold == ThresholdKind::learnt;
    // Nested groups: latent j's rows of ∂J/∂x̂ are those of its group in ws.dXg.
    const bool nested = arch_info(s.spec.arch).nested;
    const int64_t latent_begin = s.spec.latent_begin;
    const int64_t* ends = s.spec.group_ends.data();
    const T* dXg = ws.dXg.data.data();
    const double eps = s.spec.bandwidth;
    const double l0_term = -s.l0 * s.inv_m / eps;
    constexpr int64_t kB = 16;  // latents per block: one cache line of a W_enc row
    const int64_t blocks = (d_sae + kB - 1) / kB;
#pragma omp parallel num_threads(s.nt)
    {
        T* tile = ws.scratch.data() + omp_get_thread_num() * ws.per_thread;
#pragma omp for schedule(dynamic, 4)
        for (int64_t blk = 0; blk < blocks; ++blk) {
            const int64_t j0 = blk * kB, w = std::min(kB, d_sae - j0);
            std::fill(tile, tile + w * d_in, T(0));
            for (int64_t t = 0; t < w; ++t) {
                const int64_t j = j0 + t;
                T* gd = G.W_dec + j * d_in;
                const T* wd = P.W_dec + j * d_in;
                T* tj = tile + t * d_in;
                std::fill(gd, gd + d_in, T(0));
                double db = 0, gth = 0;
                const double th = jump ? latent[j] : 0.0;
                const T* dXj = dXhat;
                if (nested) {
                    int64_t g = 0;
                    while (j + latent_begin >= ends[g]) ++g;  // (shards: j's place in the whole dictionary)
                    dXj = dXg + g * m * d_in;
                }
                const int64_t q0 = A.col_ptr[size_t(j)], q1 = A.col_ptr[size_t(j + 1)];
                for (int64_t q = q0; q < q1; ++q) {
                    if (q + 1 < q1) {
                        const int64_t next = A.t_row[size_t(q + 1)];
                        prefetch_row(dXj + next * d_in, d_in);
                        prefetch_row(xin + next * d_in, d_in);
                    }
                    const int64_t i = A.t_row[size_t(q)];
                    const T h = A.t_val[size_t(q)];
                    const T* dx = dXj + i * d_in;
                    const T d = dot(dx, wd, d_in);
                    if (h > T(0)) {
                        axpy(gd, h, dx, d_in);
                        axpy(tj, d, xin + i * d_in, d_in);
                        db += double(d);
                    }
                    if (jump) {
                        const double u = (double(pre[i * d_sae + j]) - th) / eps;
                        if (std::fabs(u) < 0.5) gth += -th / eps * double(d) + l0_term;
                    }
                }
                if (aux)
                    for (int64_t q = X2.col_ptr[size_t(j)]; q < X2.col_ptr[size_t(j + 1)]; ++q) {
                        const int64_t i = X2.t_row[size_t(q)];
                        const T* de = dEaux + i * d_in;
                        const T d = dot(de, wd, d_in);
                        axpy(gd, X2.t_val[size_t(q)], de, d_in);
                        axpy(tj, d, xin + i * d_in, d_in);
                        db += double(d);
                    }
                G.b_enc[j] = T(db);
                if (jump) G.log_threshold[j] = T(th * gth);
            }
            for (int64_t c = 0; c < d_in; ++c) {
                T* g = G.W_enc + c * d_sae + j0;
                for (int64_t t = 0; t < w; ++t) g[t] = tile[t * d_in + c];
            }
        }
    }
    clock.mark(6);
    // db_dec = Σᵢ dXhat_i (the W_enc·db_enc part follows in stage_b_dec).
    column_sums(
        m, d_in, [&](int64_t i, int64_t c) { return double(dXhat[i * d_in + c]); },
        [&](int64_t c, double v) { G.b_dec[c] = T(v); });
}

// Dense backward: three products, the row's penalty and parameter gradients between the
// decoder and the gate.
template <class T>
void stage_backward_dense(Step<T>& s, const ArchOps<T>& ops, const ParamLayout& layout, T* grad,
                          PhaseClock& clock) {
    ModernWorkspace<T>& ws = s.ws;
    const int64_t m = s.m, d_in = s.d_in, d_sae = s.d_sae;
    std::fill(grad, grad + layout.total, T(0));
    if (s.bias_grad != s.G.b_enc) std::fill(s.bias_grad, s.bias_grad + d_sae, T(0));
    if (ws.dH.rows < m || ws.dH.cols != d_sae) ws.dH.resize(ws.H.rows, d_sae);  // see header
    T* dH = ws.dH.data.data();
    const T* H = s.H;
    const T* dXhat = s.dXhat;
    const Tensors<T>& P = s.P;
    const Tensors<T>& G = s.G;

    // Decoder: dW_dec += hᵀ·dXhat, db_dec += Σᵢ dXhat, dH = dXhat·W_decᵀ (nested groups: per
    // group g with its own ∂J/∂x̂ from ws.dXg).
    if (arch_info(s.spec.arch).nested) {
        const int64_t* ends = s.spec.group_ends.data();
        for (int64_t g = 0; g < int64_t(s.spec.group_ends.size()); ++g) {
            // (shards: the part of group g among this shard's latents)
            const int64_t b = s.spec.latent_begin;
            const int64_t j0 = std::clamp<int64_t>((g ? ends[g - 1] : 0) - b, 0, d_sae);
            const int64_t width = std::clamp<int64_t>(ends[g] - b, 0, d_sae) - j0;
            if (width <= 0) continue;
            const T* Dg = ws.dXg.data.data() + g * m * d_in;
            product(s.be, Trans::yes, Trans::no, width, d_in, m, H + j0, d_sae, Dg, d_in, T(1), G.W_dec + j0 * d_in,
                    d_in, nullptr, s.prec);
            product(s.be, Trans::no, Trans::yes, m, width, d_in, Dg, d_in, P.W_dec + j0 * d_in, d_in, T(0), dH + j0,
                    d_sae, nullptr, s.prec);
        }
    } else {
        product(s.be, Trans::yes, Trans::no, d_sae, d_in, m, H, d_sae, dXhat, d_in, T(1), G.W_dec, d_in, nullptr,
                s.prec);
        product(s.be, Trans::no, Trans::yes, m, d_sae, d_in, dXhat, d_in, P.W_dec, d_in, T(0), dH, d_sae, nullptr,
                s.prec);
    }
    column_sums(
        m, d_in, [&](int64_t i, int64_t c) { return double(dXhat[i * d_in + c]); },
        [&](int64_t c, double v) { G.b_dec[c] += T(v); });

    // Through σ (and the row's own terms): dH becomes ∂J/∂pre.
    if (ops.dense_backward) ops.dense_backward(s, dH);
    else gate_mask(s, dH);

    if (s.aux) {
        const T* Haux = ws.Haux.data.data();
        const T* dEaux = ws.dEaux.data.data();
        // dW_dec += h_auxᵀ·dEaux; ∂aux/∂h_aux = dEaux·W_decᵀ, passed where h_aux > 0. Summed
        // into dH per row (W_dec row j by a dot product), so no [m, d_sae] buffer is needed.
        product(s.be, Trans::yes, Trans::no, d_sae, d_in, m, Haux, d_sae, dEaux, d_in, T(1), G.W_dec, d_in,
                nullptr, s.prec);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < d_sae; ++j)
                if (Haux[i * d_sae + j] > T(0))
                    dH[i * d_sae + j] += dot(dEaux + i * d_in, P.W_dec + j * d_in, d_in);
    }

    // Encoder: dW_enc += x'ᵀ·dpre, db_enc += Σᵢ dpre (gated: Σᵢ dpre is kept for b_dec only).
    product(s.be, Trans::yes, Trans::no, d_in, d_sae, m, s.xin, d_in, dH, d_sae, T(1), G.W_enc, d_sae, nullptr,
            s.prec);
    T* bias_grad = s.bias_grad;
    column_sums(
        m, d_sae, [&](int64_t i, int64_t j) { return double(dH[i * d_sae + j]); },
        [&](int64_t j, double v) { bias_grad[j] += T(v); });
    clock.mark(6);
}

// Through x' = x − b_dec: ∂J/∂b_dec −= Σᵢ dpreᵢ·W_encᵀ = W_enc·(Σᵢ dpreᵢ), and Σᵢ dpreᵢ is
// the encoder bias's gradient (gated: kept apart in ws.bias_sum).
template <class T>
void stage_b_dec(Step<T>& s) {
    if (!s.spec.apply_b_dec_to_input) return;
    const int64_t d_sae = s.d_sae;
    const Tensors<T>& P = s.P;
    const Tensors<T>& G = s.G;
    const T* bias_grad = s.bias_grad;
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < s.d_in; ++c) G.b_dec[c] -= T(dot_double(P.W_enc + c * d_sae, bias_grad, d_sae));
}

}  // namespace

template <class T>
CostTerms modern_cost(Backend& be, const ModernSpec& spec, const ParamLayout& layout,
                      const T* params, const T* X, int64_t m, T* grad, ModernWorkspace<T>& ws,
                      const uint8_t* dead, double batchtopk_threshold, double sparsity_scale) {
    const int64_t d_in = spec.d_in, d_sae = spec.d_sae;
    const ArchInfo& row = arch_info(spec.arch);
    const ArchOps<T>& ops = arch_ops<T>(spec.arch);
    require(m > 0, "modern_cost: empty batch");
    const bool lists_only = topk_lists_only(spec, ws);
    const int64_t pre_rows = lists_only && ws.encoder_block > 0 ? std::min(m, ws.encoder_block) : m;
    require(ws.pre.rows >= pre_rows && ws.pre.cols == d_sae && ws.xin.cols == d_in &&
                (lists_only || ws.H.rows >= m) &&
                int64_t(ws.row_sums.size()) >= m && int64_t(ws.latent.size()) == d_sae,
            "modern_cost: workspace not reserved for this model and batch size");
    // Latent shards: this spec holds d_sae of latents_total latents (k counts over all of them).
    Comm* shards = ws.shards && ws.shards->size() > 1 ? ws.shards : nullptr;
    require(!shards || (std::is_same_v<T, float> && spec.latents_total > 0 &&
                        !screening_on(ws)),
            "modern_cost: latent shards need float, spec.latents_total and no screening");
    require(!row.uses_k || (spec.k >= 1 && spec.k <= (shards ? spec.latents_total : d_sae)),
            "modern_cost: k out of range; set k between 1 and d_sae");
    require(!row.lists || (int64_t(ws.act.beg.size()) >= m && int64_t(ws.act.col_ptr.size()) == d_sae + 1 &&
                           int64_t(ws.iscratch.size()) >= int64_t(ws.threads) * d_sae &&
                           ws.per_thread >= 3 * d_sae + (row.uses_k ? 4 * spec.k : 0)),
            "modern_cost: workspace not reserved for this architecture");
    require(spec.arch != Arch::topk || ws.act.cap >= m * spec.k,
            "modern_cost: workspace not reserved for this k");
    require(row.threshold != ThresholdKind::batch || batchtopk_threshold >= 0 ||
                (int64_t(ws.cand_val.size()) >= 2 * m * spec.k + d_sae && ws.act.cap >= m * spec.k &&
                 int64_t(ws.cand_tmp.size()) >= m * (8 * spec.k <= d_sae ? 4 * spec.k : d_sae)),
            "modern_cost: workspace not reserved for this k");

    const auto P = tensors(layout, const_cast<T*>(params));
    require(row.threshold != ThresholdKind::learnt || P.log_threshold,
            "modern_cost: jumprelu needs log_threshold in the parameter layout");
    require(!row.nested || (!spec.group_ends.empty() && spec.group_ends.back() == (shards ? spec.latents_total : d_sae) &&
                            spec.group_weights.size() == spec.group_ends.size() &&
                            ws.dXg.rows >= int64_t(spec.group_ends.size()) * m),
            "modern_cost: matryoshka needs group_ends, group_weights and a workspace reserved for them");
    require(!row.gate || (P.r_mag && P.b_mag && ws.mag.rows >= m && int64_t(ws.bias_sum.size()) == d_sae &&
                          ws.Haux.rows >= m && ws.Eaux.rows >= m),
            "modern_cost: gated needs r_mag and b_mag in the layout and a workspace reserved for it");
    Step<T> s{.be = be,
              .spec = spec,
              .ws = ws,
              .P = P,
              .X = X,
              .m = m,
              .d_in = d_in,
              .d_sae = d_sae,
              .pre = ws.pre.data.data(),
              .H = ws.H.data.data(),
              .Xhat = ws.Xhat.data.data(),
              .dXhat = ws.dXhat.data.data(),
              .row_sums = ws.row_sums.data(),
              .latent = ws.latent.data(),
              .inv_m = 1.0 / double(m),
              .nt = std::max(1, std::min(omp_get_max_threads(), ws.threads)),
              .prec = std::is_same_v<T, float> ? ws.precision : Precision::f32,
              .l1 = spec.l1_coefficient * sparsity_scale,
              .l0 = spec.l0_coefficient * sparsity_scale,
              .batchtopk_threshold = batchtopk_threshold,
              .want_sparse = row.lists && ws.path != ProductPath::dense,
              .write_h = false};
    s.write_h = ws.dense_h || !s.want_sparse;
    s.shards = shards;
    s.lead = !shards || shards->rank() == 0;
    s.inference = grad == nullptr;

    PhaseClock clock{ws.profile, ws.profile_ms};
    stage_input(s);
    stage_dead(s, dead, lists_only);
    clock.mark(0);

    // pre = x'·W_enc + bias, then h = σ(pre) by the row's selection.
    CostTerms J;
    bool sparse = s.want_sparse;
    const bool fused = lists_only && ((ws.encoder_block > 0 && ws.encoder_block < m) || screening_on(ws));
    if (fused) {
        stage_encode_select_fused(s, clock);
    } else {
        bool screened = false;
        if constexpr (std::is_same_v<T, float>)
            if (screening_on(ws) && (spec.arch == Arch::batchtopk || spec.arch == Arch::jumprelu)) {
                stage_encoder_screened(s);
                screened = true;
            }
        if (!screened) stage_encoder(s);
        clock.mark(1);
        sparse = ops.select(s) && s.want_sparse;
    }
    if (spec.arch == Arch::topk) shards_merge(s, ws.act, spec.k, s.write_h ? s.H : nullptr);
    ws.sparse_used = sparse;
    if (ops.penalty) J.sparsity = shards_sum_value(shards, ops.penalty(s), "penalty");
    clock.mark(2);

    J.rec = row.nested ? stage_decode_nested(s, sparse) : stage_decode(s, sparse);
    clock.mark(3);
    if (s.aux) J.aux = stage_auxk(s, sparse, fused);
    else if (ops.aux) J.aux = ops.aux(s);
    clock.mark(4);
    if (!grad) return J;

    s.G = tensors(layout, grad);
    s.bias_grad = row.gate ? ws.bias_sum.data() : s.G.b_enc;
    if (sparse)
        stage_backward_sparse(s, clock);
    else
        stage_backward_dense(s, ops, layout, grad, clock);
    // Shards: Σ dXhat once (the first shard), each shard's W_enc·Σ dpre, summed.
    if (!s.lead) std::fill(s.G.b_dec, s.G.b_dec + d_in, T(0));
    stage_b_dec(s);
    shards_sum(s, s.G.b_dec, d_in, "b_dec gradient");
    clock.mark(7);
    return J;
}

template <class T>
void decoder_remove_parallel_grad(const ModernSpec& spec, const ParamLayout& layout,
                                  const T* params, T* grad) {
    const int64_t d_in = spec.d_in;
    const ParamView* v = layout.find("W_dec");  // find, not get: no message string is built
    require(v != nullptr, "decoder_remove_parallel_grad: the layout has no W_dec");
    const int64_t off = v->offset;
    const T* W = params + off;
    T* G = grad + off;
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < spec.d_sae; ++j) {
        double wg = 0, ww = 0;
        for (int64_t c = 0; c < d_in; ++c) {
            wg += double(W[j * d_in + c]) * double(G[j * d_in + c]);
            ww += double(W[j * d_in + c]) * double(W[j * d_in + c]);
        }
        if (ww == 0) continue;
        const double a = wg / ww;
        for (int64_t c = 0; c < d_in; ++c) G[j * d_in + c] -= T(a * double(W[j * d_in + c]));
    }
}

template <class T>
void decoder_normalize_rows(const ModernSpec& spec, const ParamLayout& layout, T* params) {
    const int64_t d_in = spec.d_in;
    const ParamView* v = layout.find("W_dec");
    require(v != nullptr, "decoder_normalize_rows: the layout has no W_dec");
    T* W = params + v->offset;
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < spec.d_sae; ++j) {
        double ww = 0;
        for (int64_t c = 0; c < d_in; ++c) ww += double(W[j * d_in + c]) * double(W[j * d_in + c]);
        if (ww == 0) continue;  // a zero row has no direction to keep
        const double s = 1.0 / std::sqrt(ww);
        for (int64_t c = 0; c < d_in; ++c) W[j * d_in + c] = T(double(W[j * d_in + c]) * s);
    }
}

template <class T>
double batchtopk_min_kept(const ModernWorkspace<T>& ws, int64_t m, int64_t d_sae) {
    require(ws.H.rows >= m && ws.H.cols == d_sae, "batchtopk_min_kept: workspace has no batch of that size");
    double best = -1;
    auto take = [&](double h) {
        if (h > 0 && (best < 0 || h < best)) best = h;
    };
    if (ws.sparse_used) {  // the lists hold every kept entry
        for (int64_t i = 0; i < m; ++i)
            for (int64_t e = ws.act.beg[size_t(i)]; e < ws.act.end[size_t(i)]; ++e) take(double(ws.act.val[size_t(e)]));
        return best;
    }
    const T* H = ws.H.data.data();
    for (int64_t t = 0; t < m * d_sae; ++t) take(double(H[t]));
    return best;
}

std::vector<uint8_t> duplicate_latents(Backend& be, const float* W_dec, int64_t d_sae, int64_t d_in,
                                       double cos_above, const std::vector<int64_t>& score) {
    require(int64_t(score.size()) == d_sae, "duplicate_latents: score must have d_sae entries");
    // Unit rows (zero rows stay zero: cosine 0 with everything).
    std::vector<float> Wn(size_t(d_sae * d_in));
    for (int64_t j = 0; j < d_sae; ++j) {
        double ww = 0;
        for (int64_t c = 0; c < d_in; ++c) ww += double(W_dec[j * d_in + c]) * W_dec[j * d_in + c];
        const double s = ww > 0 ? 1.0 / std::sqrt(ww) : 0.0;
        for (int64_t c = 0; c < d_in; ++c) Wn[size_t(j * d_in + c)] = float(W_dec[j * d_in + c] * s);
    }
    std::vector<uint8_t> marked(size_t(d_sae), 0);
    const int64_t block = 256;
    std::vector<float> G(size_t(std::min(block, d_sae) * d_sae));
    for (int64_t j0 = 0; j0 < d_sae; j0 += block) {
        const int64_t rows = std::min(block, d_sae - j0);
        // G [rows, d_sae] = Wn[j0 : j0+rows] · Wnᵀ
        be.gemm(Trans::no, Trans::yes, rows, d_sae, d_in, 1.0f, Wn.data() + j0 * d_in, d_in, Wn.data(), d_in, 0.0f,
                G.data(), d_sae);
        for (int64_t j = j0; j < j0 + rows; ++j)
            for (int64_t l = j + 1; l < d_sae; ++l) {
                if (marked[size_t(j)]) break;
                if (marked[size_t(l)] || double(G[size_t((j - j0) * d_sae + l)]) <= cos_above) continue;
                marked[size_t(score[size_t(l)] <= score[size_t(j)] ? l : j)] = 1;
            }
    }
    return marked;
}

#define SAE_INSTANTIATE(T)                                                                       \
    template void modern_init<T>(const ModernSpec&, const ParamLayout&, T*, Rng&);               \
    template struct ModernWorkspace<T>;                                                          \
    template struct SparseRows<T>;                                                               \
    template CostTerms modern_cost<T>(Backend&, const ModernSpec&, const ParamLayout&, const T*, \
                                      const T*, int64_t, T*, ModernWorkspace<T>&,                \
                                      const uint8_t*, double, double);                           \
    template void decoder_remove_parallel_grad<T>(const ModernSpec&, const ParamLayout&,         \
                                                  const T*, T*);                                 \
    template void decoder_normalize_rows<T>(const ModernSpec&, const ParamLayout&, T*);          \
    template double batchtopk_min_kept<T>(const ModernWorkspace<T>&, int64_t, int64_t);
SAE_INSTANTIATE(float)
SAE_INSTANTIATE(double)
#undef SAE_INSTANTIATE

}  // namespace sae
