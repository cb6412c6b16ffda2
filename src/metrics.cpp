#include "sae/metrics.hpp"
#include "sae/error.hpp"

#include <algorithm>
#include <cmath>

namespace sae {

void Stats::reset(int64_t din, int64_t dsae) {
    n = 0;
    d_in = din;
    d_sae = dsae;
    sq_err = 0;
    sum_x.assign(size_t(din), 0.0);
    sum_x2 = 0;
    sum_h.assign(size_t(dsae), 0.0);
    sum_abs_h = 0;
    fires.assign(size_t(dsae), 0);
    active = 0;
    sum_cos = sum_l2_ratio = sum_xhat2 = sum_dot = 0;
}

// One sample's reconstruction terms, and one latent's activation h: shared by both add()s so
// that they accumulate in the same order.
void Stats::add_input_row(const float* x, const float* xh) {
    double xx = 0, hh = 0, xd = 0;
    for (int64_t k = 0; k < d_in; ++k) {
        const double e = double(xh[k]) - double(x[k]);
        sq_err += e * e;
        sum_x[size_t(k)] += x[k];
        sum_x2 += double(x[k]) * double(x[k]);
        xx += double(x[k]) * double(x[k]);
        hh += double(xh[k]) * double(xh[k]);
        xd += double(x[k]) * double(xh[k]);
    }
    const double nx = std::sqrt(xx), nh = std::sqrt(hh);
    sum_cos += xd / (std::max(nx, 1e-8) * std::max(nh, 1e-8));
    sum_l2_ratio += nh / (nx < 1e-4 ? 1.0 : nx);
    sum_xhat2 += hh;
    sum_dot += xd;
}

void Stats::add_latent(int64_t j, float h, double threshold) {
    sum_h[size_t(j)] += h;
    sum_abs_h += std::fabs(double(h));
    if (double(h) > threshold) {
        ++fires[size_t(j)];
        ++active;
    }
}

void Stats::add(const float* X, const float* Xhat, const ActiveRows& H, int64_t m, double threshold) {
    check(threshold >= 0, "Stats::add: row lists need an activity threshold >= 0");
    for (int64_t i = 0; i < m; ++i) {
        add_input_row(X + i * d_in, Xhat + i * d_in);
        for (int64_t e = H.beg[i]; e < H.end[i]; ++e) add_latent(H.col[e], H.val[e], threshold);
    }
    n += m;
}

void Stats::add(const float* X, const float* Xhat, const float* H, int64_t m, double threshold) {
    for (int64_t i = 0; i < m; ++i) {
        add_input_row(X + i * d_in, Xhat + i * d_in);
        for (int64_t j = 0; j < d_sae; ++j) add_latent(j, H[i * d_sae + j], threshold);
    }
    n += m;
}

double Stats::mse() const { return n ? sq_err / (double(n) * double(d_in)) : 0.0; }

double Stats::fvu() const {
    if (!n) return 0.0;
    double mean_sq = 0;
    for (double s : sum_x) mean_sq += s * s;
    const double var = sum_x2 - mean_sq / double(n);
    return var > 0 ? sq_err / var : 0.0;
}

double Stats::explained_variance() const { return n ? 1.0 - fvu() : 0.0; }
double Stats::cossim() const { return n ? sum_cos / double(n) : 0.0; }
double Stats::l2_ratio() const { return n ? sum_l2_ratio / double(n) : 0.0; }
double Stats::relative_reconstruction_bias() const { return sum_dot != 0 ? sum_xhat2 / sum_dot : 0.0; }

double Stats::l0() const { return n ? double(active) / double(n) : 0.0; }

double Stats::dead_fraction() const {
    if (!d_sae) return 0.0;
    int64_t dead = 0;
    for (auto f : fires) dead += f == 0;
    return double(dead) / double(d_sae);
}

double Stats::dense_fraction(double above) const {
    if (!d_sae || !n) return 0.0;
    int64_t dense = 0;
    for (auto f : fires) dense += double(f) > above * double(n);
    return double(dense) / double(d_sae);
}

Stats::Histogram Stats::density_histogram() const {
    Histogram h;
    for (int i = 0; i <= 16; ++i) h.edges.push_back(-8.0 + 0.5 * i);
    h.counts.assign(16, 0);
    for (auto f : fires) {
        if (f == 0 || n == 0) {
            ++h.never;
            continue;
        }
        const double lg = std::log10(double(f) / double(n));
        const int bin = std::clamp(int(std::floor((lg + 8.0) / 0.5)), 0, 15);
        ++h.counts[size_t(bin)];
    }
    return h;
}

std::vector<double> Stats::rho_hat() const {
    std::vector<double> r(size_t(d_sae), 0.0);
    if (n)
        for (int64_t j = 0; j < d_sae; ++j) r[size_t(j)] = sum_h[size_t(j)] / double(n);
    return r;
}

}  // namespace sae
