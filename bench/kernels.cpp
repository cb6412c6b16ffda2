// Google Benchmark microbenchmarks of the kernels behind a training step (docs/performance.md).
// Needs libbenchmark-dev: scripts/setup.sh --bench installs it.
// Build: cmake -S . -B build-bench -G Ninja -DSAE_BUILD_BENCH=ON && ninja -C build-bench sae_kernels
// Run:   OMP_NUM_THREADS=2 build-bench/sae_kernels [--benchmark_filter=Gemm]
//
//   Gemm/<shape>/<precision>: Backend::gemm_ex through the cached oneDNN matmul primitive;
//     shapes 0–4 the classic model's five products (m = 256, 784 ↔ 196), 5 the TopK encoder
//     (4096 × 768 → 16384); precision 0 = f32, 1 = bf16.
//   Sgemm/<shape>: dnnl_sgemm, the previous fp32 path, for comparison.
//   RoundBf16: float → bf16 packing of W_enc (768 × 16384).
//   ModernCost/<arch>/<batch>/<d_sae>/<k>/<bf16>: one modern_cost with gradient, d_in = 768,
//     every phase as a counter (ms per call).
//   ClassicCost, ClassicProducts: model_cost of the classic model at 784 → 196, m = 256, and its
//     five products alone (the difference: elementwise work in model.cpp).
//   Adam, DecoderUnitNorm: the optimiser update and the decoder-norm hooks at 768 → 16384.
#include <benchmark/benchmark.h>
#include <dnnl.h>

#include <cmath>
#include <vector>

#include "sae/backend.hpp"
#include "sae/model.hpp"
#include "sae/modern.hpp"
#include "sae/optim.hpp"
#include "sae/rng.hpp"

namespace {

using sae::Trans;

struct Shape {
    Trans ta, tb;
    int64_t M, N, K;
    float beta;
};
// The classic step's products (forward enc, forward dec, dW_dec, dH, dW_enc) and the TopK encoder.
const Shape kShapes[] = {
    {Trans::no, Trans::no, 256, 196, 784, 0},    {Trans::no, Trans::no, 256, 784, 196, 0},
    {Trans::yes, Trans::no, 196, 784, 256, 1},   {Trans::no, Trans::yes, 256, 196, 784, 0},
    {Trans::yes, Trans::no, 784, 196, 256, 1},   {Trans::no, Trans::no, 4096, 16384, 768, 0},
};

std::vector<float> random_vector(size_t n, uint64_t seed) {
    sae::Rng rng(seed);
    std::vector<float> v(n);
    for (auto& x : v) x = float(rng.uniform(-1, 1));
    return v;
}

void Gemm(benchmark::State& st) {
    const Shape s = kShapes[st.range(0)];
    const auto prec = st.range(1) ? sae::Precision::bf16 : sae::Precision::f32;
    auto be = sae::backend_create("onednn");
    const auto A = random_vector(size_t(s.M * s.K), 1), B = random_vector(size_t(s.K * s.N), 2);
    std::vector<float> C(size_t(s.M * s.N));
    const int64_t lda = s.ta == Trans::no ? s.K : s.M, ldb = s.tb == Trans::no ? s.N : s.K;
    for (auto _ : st)
        be->gemm_ex(s.ta, s.tb, s.M, s.N, s.K, 1.0f, A.data(), lda, B.data(), ldb, s.beta, C.data(), s.N,
                    nullptr, prec);
    st.counters["GFLOP/s"] = benchmark::Counter(2e-9 * double(s.M * s.N) * double(s.K),
                                                benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(Gemm)->ArgsProduct({{0, 1, 2, 3, 4, 5}, {0, 1}})->Unit(benchmark::kMillisecond)->UseRealTime();

void Sgemm(benchmark::State& st) {
    const Shape s = kShapes[st.range(0)];
    const auto A = random_vector(size_t(s.M * s.K), 1), B = random_vector(size_t(s.K * s.N), 2);
    std::vector<float> C(size_t(s.M * s.N));
    const int64_t lda = s.ta == Trans::no ? s.K : s.M, ldb = s.tb == Trans::no ? s.N : s.K;
    for (auto _ : st)
        dnnl_sgemm(s.ta == Trans::yes ? 'T' : 'N', s.tb == Trans::yes ? 'T' : 'N', s.M, s.N, s.K, 1.0f, A.data(),
                   lda, B.data(), ldb, s.beta, C.data(), s.N);
    st.counters["GFLOP/s"] = benchmark::Counter(2e-9 * double(s.M * s.N) * double(s.K),
                                                benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(Sgemm)->DenseRange(0, 5)->Unit(benchmark::kMillisecond)->UseRealTime();

void RoundBf16(benchmark::State& st) {
    const int64_t rows = 768, cols = 16384;
    const auto W = random_vector(size_t(rows * cols), 3);
    std::vector<uint16_t> out(W.size());
    for (auto _ : st) sae::round_to_bf16(W.data(), rows, cols, cols, out.data());
    st.counters["GB/s"] = benchmark::Counter(6e-9 * double(rows * cols), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(RoundBf16)->Unit(benchmark::kMillisecond)->UseRealTime();

// Modern cost: arch 0 = topk, 1 = batchtopk, 2 = jumprelu (thresholds set so about k latents
// per row fire), 3 = topk on the dense path (the reference for the sparse one).
void ModernCost(benchmark::State& st) {
    sae::ModernSpec spec;
    spec.d_in = 768;
    const int64_t m = st.range(1);
    spec.d_sae = st.range(2);
    spec.k = st.range(3);
    const int a = int(st.range(0));
    spec.arch = a == 1 ? sae::Arch::batchtopk : a == 2 ? sae::Arch::jumprelu : sae::Arch::topk;
    const sae::ParamLayout L = sae::modern_layout(spec);
    std::vector<float> params(size_t(L.total)), grad(size_t(L.total));
    sae::Rng rng(5);
    sae::modern_init(spec, L, params.data(), rng);
    auto X = random_vector(size_t(m * spec.d_in), 6);
    if (spec.arch == sae::Arch::jumprelu) {  // θ at about the (k/d_sae) upper quantile of pre
        const auto& v = L.get("log_threshold");
        for (int64_t j = 0; j < spec.d_sae; ++j) params[size_t(v.offset + j)] = std::log(0.06f);
    }
    auto be = sae::backend_create("onednn");
    sae::ModernWorkspace<float> ws;
    ws.precision = st.range(4) ? sae::Precision::bf16 : sae::Precision::f32;
    ws.path = a == 3 ? sae::ProductPath::dense : sae::ProductPath::automatic;
    ws.dense_h = false;
    ws.reserve(spec, m);
    sae::modern_cost<float>(*be, spec, L, params.data(), X.data(), m, grad.data(), ws);  // warm
    ws.profile = true;
    ws.profile_ms = {};
    int64_t n = 0;
    for (auto _ : st) {
        sae::modern_cost<float>(*be, spec, L, params.data(), X.data(), m, grad.data(), ws);
        ++n;
    }
    const auto& names = sae::modern_phase_names();
    for (size_t p = 0; p < names.size(); ++p) st.counters[names[p]] = ws.profile_ms[p] / double(n);
    int64_t nnz = ws.act.nnz(m);
    st.counters["nnz_per_row"] = double(nnz) / double(m);
    st.counters["sparse"] = ws.sparse_used;
}
BENCHMARK(ModernCost)
    ->ArgNames({"arch", "batch", "d_sae", "k", "bf16"})
    ->Args({0, 4096, 16384, 32, 0})
    ->Args({0, 4096, 16384, 32, 1})
    ->Args({1, 4096, 16384, 32, 0})
    ->Args({2, 4096, 16384, 32, 0})
    ->Args({0, 1024, 16384, 32, 0})
    ->Args({0, 4096, 4096, 32, 0})
    ->Args({0, 4096, 16384, 128, 0})
    ->Args({3, 1024, 16384, 32, 0})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(5);

// The classic model's cost with gradient (784 -> 196, sigmoid, KL, weight decay, m = 256) and,
// for comparison, its five products alone: the difference is the elementwise work in model.cpp.
void ClassicCost(benchmark::State& st) {
    sae::ModelSpec spec;
    spec.d_in = 784;
    spec.d_sae = 196;
    const sae::CostSpec cost;
    const int64_t m = 256;
    const sae::ParamLayout L = sae::model_layout(spec);
    std::vector<float> params(size_t(L.total)), grad(size_t(L.total));
    sae::Rng rng(1);
    sae::model_init(spec, L, params.data(), rng);
    sae::Rng data_rng(2);
    std::vector<float> X(size_t(m * spec.d_in));
    for (auto& x : X) x = float(data_rng.uniform());
    auto be = sae::backend_create("onednn");
    sae::Workspace<float> ws;
    ws.reserve(spec, m);
    for (auto _ : st) sae::model_cost<float>(*be, spec, cost, L, params.data(), X.data(), m, grad.data(), ws);
    st.counters["GFLOP/s"] = benchmark::Counter(10e-9 * double(m * spec.d_in * spec.d_sae),
                                                benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(ClassicCost)->Unit(benchmark::kMicrosecond)->UseRealTime();

void ClassicProducts(benchmark::State& st) {
    auto be = sae::backend_create("onednn");
    std::vector<std::vector<float>> A, B, C;
    for (int s = 0; s < 5; ++s) {
        const Shape& k = kShapes[s];
        A.push_back(random_vector(size_t(k.M * k.K), 1));
        B.push_back(random_vector(size_t(k.K * k.N), 2));
        C.emplace_back(size_t(k.M * k.N));
    }
    for (auto _ : st)
        for (int s = 0; s < 5; ++s) {
            const Shape& k = kShapes[s];
            be->gemm(k.ta, k.tb, k.M, k.N, k.K, 1.0f, A[size_t(s)].data(), k.ta == Trans::no ? k.K : k.M,
                     B[size_t(s)].data(), k.tb == Trans::no ? k.N : k.K, k.beta, C[size_t(s)].data(), k.N);
        }
    st.counters["GFLOP/s"] = benchmark::Counter(10e-9 * 256.0 * 784 * 196, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(ClassicProducts)->Unit(benchmark::kMicrosecond)->UseRealTime();

void Adam(benchmark::State& st) {
    const int64_t n = 2 * 768 * 16384 + 16384 + 768;
    auto opt = sae::optimizer_create("adam", n, sae::OptimizerHyper{});
    auto p = random_vector(size_t(n), 7), g = random_vector(size_t(n), 8);
    for (auto _ : st) opt->update(p.data(), g.data(), 1e-4);
    st.counters["GB/s"] = benchmark::Counter(28e-9 * double(n), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(Adam)->Unit(benchmark::kMillisecond)->UseRealTime();

void DecoderUnitNorm(benchmark::State& st) {
    sae::ModernSpec spec;
    spec.d_in = 768;
    spec.d_sae = 16384;
    const sae::ParamLayout L = sae::modern_layout(spec);
    auto p = random_vector(size_t(L.total), 9), g = random_vector(size_t(L.total), 10);
    for (auto _ : st) {
        sae::decoder_remove_parallel_grad(spec, L, p.data(), g.data());
        sae::decoder_normalize_rows(spec, L, p.data());
    }
}
BENCHMARK(DecoderUnitNorm)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
