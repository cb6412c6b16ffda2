// Screened TopK: the per-row passes over the screening values (src/screen.cpp). Internal.
#pragma once
#include <cstdint>

namespace sae {
// e_j = alpha·wn[j] + (cb[j] + tau), the bound of column j for this row.
// lo[j] = s[j] − e_j for j < n; returns false when some s[j] or e_j is not finite.
bool screen_lower(const float* s, const float* wn, const float* cb, float alpha, float tau, int64_t n, float* lo);
// Columns j < n with s[j] + e_j ≥ thr, in increasing order, into out; returns their count.
int64_t screen_candidates(const float* s, const float* wn, const float* cb, float alpha, float tau, int64_t n,
                          float thr, int32_t* out);
// Columns j < n with s[j] + e_j ≥ thr[j] (one threshold per column), in increasing order.
int64_t screen_candidates_each(const float* s, const float* wn, const float* cb, float alpha, float tau, int64_t n,
                               const float* thr, int32_t* out);
// The same kernels by clone (tests): which = 2 AVX-512, 1 AVX2, 0 plain; a clone the CPU lacks
// runs the next one down. Every clone gives the same bits (the file is built without FMA
// contraction; screen_dot sums each of its 16 lanes in the same order).
float screen_dot_clone(int which, const float* x, const float* w, int64_t n, float b);
bool screen_lower_clone(int which, const float* s, const float* wn, const float* cb, float alpha, float tau, int64_t n,
                        float* lo);
int64_t screen_candidates_clone(int which, const float* s, const float* wn, const float* cb, float alpha, float tau,
                                int64_t n, float thr, int32_t* out);
}  // namespace sae
