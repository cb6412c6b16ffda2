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
}  // namespace sae
