#include "sae/modern.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <limits>

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

bool uses_selection(Arch a) { return a == Arch::topk || a == Arch::batchtopk; }
bool uses_aux(const ModernSpec& spec) { return uses_selection(spec.arch) && spec.k_aux > 0; }

bool finite_nonneg(double v) { return std::isfinite(v) && v >= 0; }

// Named pointers into a flat buffer laid out by modern_layout.
template <class T>
struct Tensors {
    T* W_enc;          // [d_in, d_sae]
    T* b_enc;          // [d_sae]
    T* W_dec;          // [d_sae, d_in]
    T* b_dec;          // [d_in]
    T* log_threshold;  // [d_sae], jumprelu only (else null)
};

template <class T>
Tensors<T> tensors(const ParamLayout& layout, T* flat) {
    // Compared by name in place: no string is built, so nothing is allocated.
    Tensors<T> t{};
    for (const auto& v : layout.views) {
        T* p = flat + v.offset;
        if (v.name == "W_enc") t.W_enc = p;
        else if (v.name == "b_enc") t.b_enc = p;
        else if (v.name == "W_dec") t.W_dec = p;
        else if (v.name == "b_dec") t.b_dec = p;
        else if (v.name == "log_threshold") t.log_threshold = p;
    }
    require(t.W_enc && t.b_enc && t.W_dec && t.b_dec,
            "modern SAE: parameter layout lacks W_enc, b_enc, W_dec or b_dec; build it with "
            "modern_layout");
    return t;
}

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

// TopK over each row of pre [m, n]: keeps the k largest (ties at the k-th value go to the lower
// columns), then relu. scratch [m·n].
template <class T>
void select_topk_rows(T* H, const T* pre, int64_t m, int64_t n, int64_t k, T* scratch) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
        const T* p = pre + i * n;
        T* h = H + i * n;
        T* s = scratch + i * n;
        for (int64_t j = 0; j < n; ++j) s[j] = key(p[j]);
        const T v = kth_largest(s, n, k);
        int64_t above = 0;
        for (int64_t j = 0; j < n; ++j) above += key(p[j]) > v;
        int64_t ties = k - above;  // entries equal to v still to keep
        for (int64_t j = 0; j < n; ++j) {
            const T q = key(p[j]);
            bool keep = q > v;
            if (!keep && q == v && ties > 0) {
                keep = true;
                --ties;
            }
            h[j] = keep && p[j] > T(0) ? p[j] : T(0);
        }
    }
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

// BatchTopK training: keeps the m·k largest entries of pre [m, n] over the whole batch (ties
// at the cut go to the lower flattened index), then relu. row_sums [m].
// The cut is found by a most-significant-digit-first radix select over order keys, 11 bits per
// pass, each pass a parallel histogram over rows: O(m·n) per pass instead of a serial
// nth_element over the whole batch. Histograms hold integer counts, so merging the per-thread
// ones in any order gives the same result.
template <class T>
void select_batchtopk(T* H, const T* pre, int64_t m, int64_t n, int64_t k, double* row_sums) {
    using U = typename KeyType<T>::type;
    constexpr int kKeyBits = int(sizeof(U)) * 8, kMaxBits = 11, kBins = 1 << kMaxBits;
    U prefix = 0, mask = 0;
    int64_t rank = m * k;  // rank of the cut among the entries that match prefix under mask
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
    int64_t ties = rank;
    for (int64_t i = 0; i < m; ++i) {
        const int64_t take = std::min(ties, int64_t(row_sums[i]));
        row_sums[i] = double(take);
        ties -= take;
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

// AuxK selection: per row of pre [m, n], the k_aux largest among dead latents (ties to the
// lower index), relu; zero elsewhere. scratch [m·n].
template <class T>
void select_aux(T* Haux, const T* pre, int64_t m, int64_t n, const uint8_t* dead,
                int64_t n_dead, int64_t k_aux, T* scratch) {
    const int64_t k = std::min(k_aux, n_dead);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
        const T* p = pre + i * n;
        T* h = Haux + i * n;
        T* s = scratch + i * n;
        int64_t c = 0;
        for (int64_t j = 0; j < n; ++j)
            if (dead[j]) s[c++] = key(p[j]);
        const T v = kth_largest(s, c, k);
        int64_t above = 0;
        for (int64_t j = 0; j < n; ++j) above += dead[j] && key(p[j]) > v;
        int64_t ties = k - above;
        for (int64_t j = 0; j < n; ++j) {
            h[j] = T(0);
            if (!dead[j]) continue;
            const T q = key(p[j]);
            bool keep = q > v;
            if (!keep && q == v && ties > 0) {
                keep = true;
                --ties;
            }
            if (keep && p[j] > T(0)) h[j] = p[j];
        }
    }
}

}  // namespace

Arch arch_parse(const std::string& name) {
    if (name == "standard" || name == "l1") return Arch::standard;
    if (name == "topk") return Arch::topk;
    if (name == "batchtopk") return Arch::batchtopk;
    if (name == "jumprelu") return Arch::jumprelu;
    throw Error("unknown architecture '" + name +
                "'; use one of: standard (alias l1), topk, batchtopk, jumprelu");
}

std::string arch_name(Arch a) {
    switch (a) {
        case Arch::standard: return "standard";
        case Arch::topk: return "topk";
        case Arch::batchtopk: return "batchtopk";
        case Arch::jumprelu: return "jumprelu";
    }
    return "?";
}

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
    if (spec.arch == Arch::jumprelu) {
        check(std::isfinite(spec.bandwidth) && spec.bandwidth > 0,
              "bandwidth must be a finite number > 0 for arch = \"jumprelu\" (e.g. 1e-3)");
        check(std::isfinite(spec.initial_threshold) && spec.initial_threshold > 0,
              "initial_threshold must be a finite number > 0 for arch = \"jumprelu\" (e.g. 1e-3)");
    }
}

ParamLayout modern_layout(const ModernSpec& spec) {
    ParamLayout L;
    L.add("W_enc", {spec.d_in, spec.d_sae});
    L.add("b_enc", {spec.d_sae});
    L.add("W_dec", {spec.d_sae, spec.d_in});
    L.add("b_dec", {spec.d_in});
    if (spec.arch == Arch::jumprelu) L.add("log_threshold", {spec.d_sae});
    return L;
}

template <class T>
void modern_init(const ModernSpec& spec, const ParamLayout& layout, T* params, Rng& rng) {
    const int64_t d_in = spec.d_in, d_sae = spec.d_sae;
    std::fill(params, params + layout.total, T(0));
    const auto P = tensors(layout, params);
    std::vector<double> row(static_cast<size_t>(d_in));
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
void ModernWorkspace<T>::reserve(const ModernSpec& spec, int64_t max_m) {
    const int64_t d_in = spec.d_in, d_sae = spec.d_sae;
    xin.resize(max_m, d_in);
    pre.resize(max_m, d_sae);
    H.resize(max_m, d_sae);
    Xhat.resize(max_m, d_in);
    dXhat.resize(max_m, d_in);
    dH.resize(max_m, d_sae);
    const bool aux = uses_aux(spec);
    Haux.resize(aux ? max_m : 0, d_sae);
    Eaux.resize(aux ? max_m : 0, d_in);
    dEaux.resize(aux ? max_m : 0, d_in);
    scratch.resize(spec.arch == Arch::topk || aux ? size_t(max_m * d_sae) : 0);
    row_sums.resize(size_t(max_m));
    latent.resize(size_t(d_sae));
}

template <class T>
CostTerms modern_cost(Backend& be, const ModernSpec& spec, const ParamLayout& layout,
                      const T* params, const T* X, int64_t m, T* grad, ModernWorkspace<T>& ws,
                      const uint8_t* dead, double batchtopk_threshold, double sparsity_scale) {
    const int64_t d_in = spec.d_in, d_sae = spec.d_sae;
    require(m > 0, "modern_cost: empty batch");
    require(ws.pre.rows >= m && ws.pre.cols == d_sae && ws.xin.cols == d_in &&
                int64_t(ws.row_sums.size()) >= m && int64_t(ws.latent.size()) == d_sae,
            "modern_cost: workspace not reserved for this model and batch size");
    const bool selecting = uses_selection(spec.arch);
    require(!selecting || (spec.k >= 1 && spec.k <= d_sae),
            "modern_cost: k out of range; set k between 1 and d_sae");
    require(spec.arch != Arch::topk || int64_t(ws.scratch.size()) >= m * d_sae,
            "modern_cost: workspace not reserved for this architecture");

    const auto P = tensors(layout, const_cast<T*>(params));
    require(spec.arch != Arch::jumprelu || P.log_threshold,
            "modern_cost: jumprelu needs log_threshold in the parameter layout");
    T* pre = ws.pre.data.data();
    T* H = ws.H.data.data();
    T* Xhat = ws.Xhat.data.data();
    T* dXhat = ws.dXhat.data.data();
    T* dH = ws.dH.data.data();
    double* row_sums = ws.row_sums.data();
    double* latent = ws.latent.data();
    const double inv_m = 1.0 / double(m);
    const int64_t nH = m * d_sae;

    // Encoder input x' [m, d_in].
    const T* xin = X;
    if (spec.apply_b_dec_to_input) {
        T* xb = ws.xin.data.data();
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < m; ++i)
            for (int64_t c = 0; c < d_in; ++c) xb[i * d_in + c] = X[i * d_in + c] - P.b_dec[c];
        xin = xb;
    }

    // pre [m, d_sae] = x'·W_enc + b_enc.
    dense_forward(be, pre, xin, P.W_enc, Trans::no, P.b_enc, m, d_in, d_sae, Activation::linear);

    // h = σ(pre). For jumprelu latent[j] = θⱼ.
    switch (spec.arch) {
        case Arch::standard:
#pragma omp parallel for schedule(static)
            for (int64_t t = 0; t < nH; ++t) H[t] = pre[t] > T(0) ? pre[t] : T(0);
            break;
        case Arch::topk:
            select_topk_rows(H, pre, m, d_sae, spec.k, ws.scratch.data());
            break;
        case Arch::batchtopk:
            if (batchtopk_threshold < 0) {
                select_batchtopk(H, pre, m, d_sae, spec.k, row_sums);
            } else {
#pragma omp parallel for schedule(static)
                for (int64_t t = 0; t < nH; ++t)
                    H[t] = double(pre[t]) > batchtopk_threshold ? pre[t] : T(0);
            }
            break;
        case Arch::jumprelu:
            for (int64_t j = 0; j < d_sae; ++j) latent[j] = std::exp(double(P.log_threshold[j]));
#pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < m; ++i)
                for (int64_t j = 0; j < d_sae; ++j) {
                    const T p = pre[i * d_sae + j];
                    H[i * d_sae + j] = double(p) > latent[j] ? p : T(0);
                }
            break;
    }

    // x̂ [m, d_in] = h·W_dec + b_dec.
    dense_forward(be, Xhat, H, P.W_dec, Trans::no, P.b_dec, m, d_sae, d_in, Activation::linear);

    CostTerms J;
    // rec; dXhat = (x̂ − x)/m.
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
        double row = 0;
        for (int64_t c = 0; c < d_in; ++c) {
            const double e = double(Xhat[i * d_in + c]) - double(X[i * d_in + c]);
            row += e * e;
            dXhat[i * d_in + c] = T(e * inv_m);
        }
        row_sums[i] = row;
    }
    J.rec = 0.5 * sum_in_order(row_sums, m) * inv_m;

    // Sparsity. For standard with l1_decoder_norm, latent[j] = ‖W_dec[j]‖.
    const double l1 = spec.l1_coefficient * sparsity_scale;
    const double l0 = spec.l0_coefficient * sparsity_scale;
    if (spec.arch == Arch::standard) {
        if (spec.l1_decoder_norm) {
#pragma omp parallel for schedule(static)
            for (int64_t j = 0; j < d_sae; ++j) {
                double s = 0;
                for (int64_t c = 0; c < d_in; ++c) {
                    const double w = double(P.W_dec[j * d_in + c]);
                    s += w * w;
                }
                latent[j] = std::sqrt(s);
            }
        } else {
            for (int64_t j = 0; j < d_sae; ++j) latent[j] = 1.0;
        }
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < m; ++i) {
            double row = 0;
            for (int64_t j = 0; j < d_sae; ++j) row += std::fabs(double(H[i * d_sae + j])) * latent[j];
            row_sums[i] = row;
        }
        J.sparsity = l1 * sum_in_order(row_sums, m) * inv_m;
    } else if (spec.arch == Arch::jumprelu) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < m; ++i) {
            int64_t c = 0;
            for (int64_t j = 0; j < d_sae; ++j) c += double(pre[i * d_sae + j]) > latent[j];
            row_sums[i] = double(c);
        }
        J.sparsity = l0 * sum_in_order(row_sums, m) * inv_m;
    }

    // AuxK on dead latents: ê = h_aux·W_dec against e = x − x̂ (a constant).
    int64_t n_dead = 0;
    if (uses_aux(spec) && dead)
        for (int64_t j = 0; j < d_sae; ++j) n_dead += dead[j] != 0;
    const bool aux = n_dead > 0;
    if (aux) {
        require(ws.Haux.rows >= m && ws.Haux.cols == d_sae && ws.Eaux.cols == d_in &&
                    int64_t(ws.scratch.size()) >= m * d_sae,
                "modern_cost: workspace not reserved for AuxK");
        T* Haux = ws.Haux.data.data();
        T* Eaux = ws.Eaux.data.data();
        T* dEaux = ws.dEaux.data.data();
        select_aux(Haux, pre, m, d_sae, dead, n_dead, spec.k_aux, ws.scratch.data());
        be.gemm(Trans::no, Trans::no, m, d_in, d_sae, T(1), Haux, d_sae, P.W_dec, d_in, T(0),
                Eaux, d_in);
        const double c = spec.aux_coefficient * inv_m;
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
        J.aux = spec.aux_coefficient * 0.5 * sum_in_order(row_sums, m) * inv_m;
    }

    if (!grad) return J;

    std::fill(grad, grad + layout.total, T(0));
    const auto G = tensors(layout, grad);

    // Decoder: dW_dec += hᵀ·dXhat, db_dec += Σᵢ dXhat, dH = dXhat·W_decᵀ.
    dense_backward(be, dH, G.W_dec, G.b_dec, dXhat, H, P.W_dec, Trans::no, m, d_sae, d_in);

    if (spec.arch == Arch::standard && l1 != 0) {
        // ∂/∂hᵢⱼ = (λ/m)·sign(hᵢⱼ)·‖W_dec[j]‖; ∂/∂W_dec[j] = (λ/m)·Σᵢ|hᵢⱼ|·W_dec[j]/‖W_dec[j]‖.
        const double c = l1 * inv_m;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < d_sae; ++j) {
                const T h = H[i * d_sae + j];
                const double s = h > T(0) ? 1.0 : (h < T(0) ? -1.0 : 0.0);
                dH[i * d_sae + j] += T(c * s * latent[j]);
            }
        if (spec.l1_decoder_norm)
            column_sums(
                m, d_sae, [&](int64_t i, int64_t j) { return std::fabs(double(H[i * d_sae + j])); },
                [&](int64_t j, double a) {
                    if (latent[j] == 0) return;  // no direction: the norm has no gradient here
                    const double f = c * a / latent[j];
                    for (int64_t col = 0; col < d_in; ++col)
                        G.W_dec[j * d_in + col] += T(f * double(P.W_dec[j * d_in + col]));
                });
    }

    if (spec.arch == Arch::jumprelu) {
        // Straight-through: ∂J/∂θⱼ = Σᵢ K((preᵢⱼ − θⱼ)/ε)·(−θⱼ/ε·dHᵢⱼ − λ₀/(m·ε)), then
        // ∂J/∂log θⱼ = θⱼ·∂J/∂θⱼ. dH here is still ∂J/∂h (before the gate).
        const double eps = spec.bandwidth;
        const double l0_term = -l0 * inv_m / eps;
        column_sums(
            m, d_sae,
            [&](int64_t i, int64_t j) {
                const double th = latent[j];
                const double u = (double(pre[i * d_sae + j]) - th) / eps;
                return std::fabs(u) < 0.5 ? -th / eps * double(dH[i * d_sae + j]) + l0_term : 0.0;
            },
            [&](int64_t j, double g) { G.log_threshold[j] = T(latent[j] * g); });
    }

    // Through σ: every architecture passes the gradient exactly where h > 0 (relu's positive
    // part, the kept TopK/BatchTopK entries, the open JumpReLU gate since θ > 0).
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < nH; ++t)
        if (!(H[t] > T(0))) dH[t] = T(0);

    if (aux) {
        const T* Haux = ws.Haux.data.data();
        const T* dEaux = ws.dEaux.data.data();
        T* dHaux = ws.scratch.data();  // [m, d_sae]; selection is finished
        // dW_dec += h_auxᵀ·dEaux; dHaux = dEaux·W_decᵀ, passed where h_aux > 0.
        be.gemm(Trans::yes, Trans::no, d_sae, d_in, m, T(1), Haux, d_sae, dEaux, d_in, T(1),
                G.W_dec, d_in);
        be.gemm(Trans::no, Trans::yes, m, d_sae, d_in, T(1), dEaux, d_in, P.W_dec, d_in, T(0),
                dHaux, d_sae);
#pragma omp parallel for schedule(static)
        for (int64_t t = 0; t < nH; ++t)
            if (Haux[t] > T(0)) dH[t] += dHaux[t];
    }

    // Encoder: dW_enc += x'ᵀ·dpre, db_enc += Σᵢ dpre.
    dense_backward<T>(be, nullptr, G.W_enc, G.b_enc, dH, xin, P.W_enc, Trans::no, m, d_in, d_sae);

    // Through x' = x − b_dec: ∂J/∂b_dec −= Σᵢ dpreᵢ·W_encᵀ = W_enc·(Σᵢ dpreᵢ), and Σᵢ dpreᵢ is
    // exactly the b_enc gradient.
    if (spec.apply_b_dec_to_input) {
#pragma omp parallel for schedule(static)
        for (int64_t c = 0; c < d_in; ++c) {
            double s = 0;
            for (int64_t j = 0; j < d_sae; ++j)
                s += double(P.W_enc[c * d_sae + j]) * double(G.b_enc[j]);
            G.b_dec[c] -= T(s);
        }
    }
    return J;
}

template <class T>
void decoder_remove_parallel_grad(const ModernSpec& spec, const ParamLayout& layout,
                                  const T* params, T* grad) {
    const int64_t d_in = spec.d_in;
    const int64_t off = layout.get("W_dec").offset;
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
    T* W = params + layout.get("W_dec").offset;
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
    check(ws.H.rows >= m && ws.H.cols == d_sae, "batchtopk_min_kept: workspace has no batch of that size");
    double best = -1;
    const T* H = ws.H.data.data();
    for (int64_t t = 0; t < m * d_sae; ++t) {
        const double h = double(H[t]);
        if (h > 0 && (best < 0 || h < best)) best = h;
    }
    return best;
}

#define SAE_INSTANTIATE(T)                                                                       \
    template void modern_init<T>(const ModernSpec&, const ParamLayout&, T*, Rng&);               \
    template struct ModernWorkspace<T>;                                                          \
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
