// Statistics accumulated over batches: reconstruction error, variance of the data, mean
// activation per latent, firing counts. Drives metrics.jsonl, `sae eval` and dead-latent counts.
#pragma once
#include <cstdint>
#include <vector>

namespace sae {

// A batch's nonzero activations as row lists: row i holds (col[e], val[e]) for e in
// [beg[i], end[i]). Every latent not listed is 0. (Sparse models keep these instead of [m, d_sae].)
struct ActiveRows {
    const int64_t* beg = nullptr;
    const int64_t* end = nullptr;
    const int32_t* col = nullptr;
    const float* val = nullptr;
};

struct Stats {
    int64_t n = 0;                // samples seen
    int64_t d_in = 0, d_sae = 0;
    double sq_err = 0;            // Σ ‖x̂ − x‖²
    std::vector<double> sum_x;    // [d_in] Σ x
    double sum_x2 = 0;            // Σ ‖x‖²
    std::vector<double> sum_h;    // [d_sae] Σ h
    double sum_abs_h = 0;         // Σ |h|
    std::vector<int64_t> fires;   // [d_sae] samples on which the latent was active (h > threshold)
    int64_t active = 0;           // Σ over samples of the number of active latents
    // Per-sample reconstruction shape (SAELens's metrics; docs/formats.md has the formulas):
    double sum_cos = 0;           // Σ cos(x, x̂), norms clamped below at 1e-8
    double sum_l2_ratio = 0;      // Σ ‖x̂‖/‖x‖ (‖x‖ < 1e-4 read as 1)
    double sum_xhat2 = 0;         // Σ ‖x̂‖²
    double sum_dot = 0;           // Σ x·x̂

    void reset(int64_t d_in, int64_t d_sae);
    // X, Xhat [m, d_in], H [m, d_sae].
    void add(const float* X, const float* Xhat, const float* H, int64_t m, double threshold);
    // The same from row lists (threshold ≥ 0: unlisted latents, 0, never fire); adds exactly what
    // add() adds for the dense H those lists describe.
    void add(const float* X, const float* Xhat, const ActiveRows& H, int64_t m, double threshold);

    double mse() const;            // Σ‖x̂ − x‖² / (n·d_in)
    double fvu() const;            // Σ‖x̂ − x‖² / Σ‖x − x̄‖²  (x̄: mean over the samples seen)
    double explained_variance() const;  // 1 − fvu()
    double cossim() const;              // mean cos(x, x̂)
    double l2_ratio() const;            // mean ‖x̂‖/‖x‖
    double relative_reconstruction_bias() const;  // Σ‖x̂‖² / Σ x·x̂ (0 when Σ x·x̂ = 0)
    double l0() const;             // mean number of active latents per sample
    double dead_fraction() const;  // latents never active over the samples seen
    double dense_fraction(double above = 0.1) const;  // latents active on > 10% of samples
    // Histogram of log10(firing frequency) over latents that fired at least once: bins of width
    // 0.5 from −8 to 0 (frequencies below 1e-8 land in the first bin); `never` counts the rest.
    struct Histogram {
        std::vector<double> edges;    // [17]
        std::vector<int64_t> counts;  // [16]
        int64_t never = 0;
    };
    Histogram density_histogram() const;
    std::vector<double> rho_hat() const;  // [d_sae] mean activation

private:
    void add_input_row(const float* x, const float* xh);
    void add_latent(int64_t j, float h, double threshold);
};

}  // namespace sae
