// Every backend's product against a plain triple loop written here, for all transpose cases,
// odd shapes, leading dimensions larger than the width, and beta ≠ 0.
#include <gtest/gtest.h>

#include "sae/backend.hpp"
#include "sae/error.hpp"
#include "sae/rng.hpp"

using namespace sae;

namespace {

template <class T>
void check_backend(const std::string& name, double tol) {
    auto be = backend_create(name);
    Rng rng(1);
    for (auto ta : {Trans::no, Trans::yes})
        for (auto tb : {Trans::no, Trans::yes}) {
            const int64_t M = 13, N = 7, K = 29, pad = 3;
            const int64_t lda = (ta == Trans::no ? K : M) + pad;
            const int64_t ldb = (tb == Trans::no ? N : K) + pad;
            const int64_t ldc = N + pad;
            std::vector<T> A(size_t((ta == Trans::no ? M : K) * lda)),
                B(size_t((tb == Trans::no ? K : N) * ldb)), C(size_t(M * ldc));
            for (auto& v : A) v = T(rng.uniform(-1, 1));
            for (auto& v : B) v = T(rng.uniform(-1, 1));
            for (auto& v : C) v = T(rng.uniform(-1, 1));
            std::vector<T> expect = C;
            const T alpha = T(0.75), beta = T(-0.5);
            for (int64_t i = 0; i < M; ++i)
                for (int64_t j = 0; j < N; ++j) {
                    double s = 0;
                    for (int64_t k = 0; k < K; ++k) {
                        const double a = ta == Trans::no ? A[size_t(i * lda + k)] : A[size_t(k * lda + i)];
                        const double b = tb == Trans::no ? B[size_t(k * ldb + j)] : B[size_t(j * ldb + k)];
                        s += a * b;
                    }
                    expect[size_t(i * ldc + j)] = T(alpha * s + beta * double(C[size_t(i * ldc + j)]));
                }
            be->gemm(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
            for (int64_t i = 0; i < M; ++i)
                for (int64_t j = 0; j < N; ++j)
                    ASSERT_NEAR(C[size_t(i * ldc + j)], expect[size_t(i * ldc + j)], tol)
                        << name << " ta=" << int(ta) << " tb=" << int(tb) << " at " << i << "," << j;
        }
}

TEST(Backend, OneDnnFloat) { check_backend<float>("onednn", 1e-4); }
TEST(Backend, OneDnnDouble) { check_backend<double>("onednn", 1e-12); }
TEST(Backend, ReferenceFloat) { check_backend<float>("reference", 1e-4); }
TEST(Backend, ReferenceDouble) { check_backend<double>("reference", 1e-12); }

TEST(Backend, UnknownNameListsAvailable) {
    try {
        backend_create("cuda-nope");
        FAIL();
    } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("cuda-nope"), std::string::npos);
        EXPECT_NE(msg.find("onednn"), std::string::npos);
    }
}

TEST(Rng, SameSeedSameStreamAndStateRoundTrip) {
    Rng a(123), b(123);
    for (int i = 0; i < 10; ++i) EXPECT_EQ(a.next_u64(), b.next_u64());
    Rng c(0);
    c.set_state(a.state());
    for (int i = 0; i < 10; ++i) EXPECT_EQ(a.next_u64(), c.next_u64());
    EXPECT_THROW(c.set_state("1 2 three 4"), Error);
    EXPECT_THROW(c.set_state("0 0 0 0"), Error);
    // uniform() is in [0,1) and below(n) in [0,n).
    for (int i = 0; i < 1000; ++i) {
        const double u = a.uniform();
        EXPECT_GE(u, 0.0);
        EXPECT_LT(u, 1.0);
        EXPECT_LT(a.below(7), 7u);
    }
}

}  // namespace
