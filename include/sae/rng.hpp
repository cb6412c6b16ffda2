// Deterministic, serialisable random numbers: xoshiro256** seeded through splitmix64.
// Our own conversions to floats (not <random> distributions, whose output is
// implementation-defined), so the same seed gives the same bits on every platform.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>
#include <string>

namespace sae {

struct Rng {
    std::array<uint64_t, 4> s{};

    explicit Rng(uint64_t seed = 0) { reseed(seed); }

    void reseed(uint64_t seed) {
        uint64_t z = seed;
        for (auto& w : s) {
            z += 0x9e3779b97f4a7c15ULL;
            uint64_t x = z;
            x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
            x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
            w = x ^ (x >> 31);
        }
    }

    static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

    uint64_t next_u64() {
        const uint64_t result = rotl(s[1] * 5, 7) * 9;
        const uint64_t t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = rotl(s[3], 45);
        return result;
    }

    // Uniform in [0, 1) with 53 random bits.
    double uniform() { return double(next_u64() >> 11) * 0x1.0p-53; }
    double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

    // Uniform integer in [0, n), n > 0 (rejection sampling, no modulo bias).
    uint64_t below(uint64_t n) {
        const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
        uint64_t x;
        do { x = next_u64(); } while (x >= limit);
        return x % n;
    }

    // Standard normal (Box-Muller; one value per call, the partner discarded for simplicity).
    double normal() {
        double u1 = uniform();
        while (u1 <= 0.0) u1 = uniform();
        const double u2 = uniform();
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586476925 * u2);
    }

    // State as text "s0 s1 s2 s3" (decimal), for checkpoints.
    std::string state() const;
    void set_state(const std::string& text);  // throws sae::Error on malformed text
};

}  // namespace sae
