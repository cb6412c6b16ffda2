// bf16 rounding as inline functions (internal): round to nearest even, NaN kept quiet, so loops
// over arrays vectorise. backend.hpp's float_to_bf16 / bf16_to_float are these, out of line.
#pragma once
#include <cstdint>
#include <cstring>

namespace sae::bf16 {

inline uint32_t bits_of(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    return u;
}
inline float float_of(uint32_t u) {
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}
// Branch-free so the loops below vectorise: NaN keeps its sign and gets the quiet bit.
inline uint16_t to_bits(uint32_t u) {
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t nan = (u >> 16) | 0x40u;
    return uint16_t((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}
inline uint16_t round(float x) { return to_bits(bits_of(x)); }
inline float value(uint16_t b) { return float_of(uint32_t(b) << 16); }

}  // namespace sae::bf16
