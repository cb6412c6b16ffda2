#include "sae/classify.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "sae/data.hpp"
#include "sae/error.hpp"
#include "sae/io.hpp"
#include "sae/rng.hpp"

namespace sae {

// --- softmax regression -------------------------------------------------------------------

void validate(const SoftmaxSpec& spec) {
    check(spec.n_classes >= 2, "softmax: n_classes = " + std::to_string(spec.n_classes) +
                                   "; a classifier needs at least 2 classes");
    check(spec.d >= 1, "softmax: d = " + std::to_string(spec.d) + "; features need at least 1 dimension");
    check(std::isfinite(spec.lambda) && spec.lambda >= 0,
          "softmax: lambda = " + std::to_string(spec.lambda) + "; use a finite weight decay >= 0");
}

int64_t softmax_param_count(const SoftmaxSpec& spec) {
    return spec.n_classes * spec.d + (spec.bias ? spec.n_classes : 0);
}

namespace {

// Z = X·θᵀ (+ b) into Z [m, K].
void logits(Backend& be, const SoftmaxSpec& s, const double* params, const double* X, int64_t m, double* Z) {
    const int64_t K = s.n_classes, d = s.d;
    be.gemm(Trans::no, Trans::yes, m, K, d, 1.0, X, d, params, d, 0.0, Z, K);
    if (s.bias) {
        const double* b = params + K * d;
        for (int64_t i = 0; i < m; ++i)
            for (int64_t c = 0; c < K; ++c) Z[i * K + c] += b[c];
    }
}

// Row i of Z [K] → probabilities in place; returns log Σ exp(z) (stable: max subtracted first).
double softmax_row(double* z, int64_t K) {
    double mx = z[0];
    for (int64_t c = 1; c < K; ++c) mx = std::max(mx, z[c]);
    double sum = 0;
    for (int64_t c = 0; c < K; ++c) sum += std::exp(z[c] - mx);
    const double lse = mx + std::log(sum);
    for (int64_t c = 0; c < K; ++c) z[c] = std::exp(z[c] - lse);
    return lse;
}

}  // namespace

double softmax_cost(Backend& be, const SoftmaxSpec& spec, const double* params, const double* X,
                    const int32_t* y, int64_t m, double* grad, SoftmaxWorkspace& ws) {
    check(m >= 1, "softmax: no samples; the cost needs at least one");
    const int64_t K = spec.n_classes, d = spec.d;
    ws.P.resize(size_t(m * K));
    double* P = ws.P.data();
    logits(be, spec, params, X, m, P);
    double nll = 0;
    for (int64_t i = 0; i < m; ++i) {
        const int32_t yi = y[i];
        if (yi < 0 || yi >= K)
            throw Error("softmax: label " + std::to_string(yi) + " of sample " + std::to_string(i) +
                        " is outside [0, " + std::to_string(K) + "); remap labels to 0..K-1");
        double* z = P + i * K;
        const double zy = z[yi];
        nll += softmax_row(z, K) - zy;  // −log p(y|x) = logΣexp(z) − z_y
    }
    double sq = 0;
    for (int64_t j = 0; j < K * d; ++j) sq += params[j] * params[j];
    const double J = nll / double(m) + 0.5 * spec.lambda * sq;
    if (grad == nullptr) return J;

    // D = (P − Y)/m, in place; ∂J/∂θ = Dᵀ·X + λθ; ∂J/∂b = column sums of D.
    const double inv_m = 1.0 / double(m);
    for (int64_t i = 0; i < m; ++i) {
        double* p = P + i * K;
        p[y[i]] -= 1.0;
        for (int64_t c = 0; c < K; ++c) p[c] *= inv_m;
    }
    be.gemm(Trans::yes, Trans::no, K, d, m, 1.0, P, K, X, d, 0.0, grad, d);
    for (int64_t j = 0; j < K * d; ++j) grad[j] += spec.lambda * params[j];
    if (spec.bias) {
        double* gb = grad + K * d;
        std::fill(gb, gb + K, 0.0);
        for (int64_t i = 0; i < m; ++i)
            for (int64_t c = 0; c < K; ++c) gb[c] += P[i * K + c];
    }
    return J;
}

void softmax_probabilities(Backend& be, const SoftmaxSpec& spec, const double* params, const double* X,
                           int64_t m, double* P) {
    if (m == 0) return;
    logits(be, spec, params, X, m, P);
    for (int64_t i = 0; i < m; ++i) softmax_row(P + i * spec.n_classes, spec.n_classes);
}

std::vector<int32_t> softmax_predict(Backend& be, const SoftmaxSpec& spec, const double* params,
                                     const Matrix<double>& X) {
    check(X.cols == spec.d, "softmax: the data has " + std::to_string(X.cols) + " features but the classifier expects " +
                                std::to_string(spec.d));
    const int64_t K = spec.n_classes;
    std::vector<double> Z(size_t(X.rows * K));
    if (X.rows > 0) logits(be, spec, params, X.data.data(), X.rows, Z.data());  // argmax z = argmax p
    std::vector<int32_t> pred(size_t(X.rows));
    for (int64_t i = 0; i < X.rows; ++i) {
        const double* z = Z.data() + i * K;
        pred[size_t(i)] = int32_t(std::max_element(z, z + K) - z);
    }
    return pred;
}

SoftmaxFit softmax_train(Backend& be, const SoftmaxSpec& spec, const Matrix<double>& X,
                         const std::vector<int32_t>& y, const SoftmaxTrainOptions& options, uint64_t seed) {
    validate(spec);
    check(X.cols == spec.d, "softmax: the data has " + std::to_string(X.cols) + " features but the classifier expects " +
                                std::to_string(spec.d));
    check(X.rows >= 1 && int64_t(y.size()) == X.rows,
          "softmax: " + std::to_string(X.rows) + " samples but " + std::to_string(y.size()) +
              " labels; give one label per sample (at least one)");
    check(options.max_iterations >= 0, "softmax: max_iterations must be >= 0");
    const int64_t n = softmax_param_count(spec);
    std::vector<double> x0(size_t(n), 0.0);
    Rng rng(seed);
    for (int64_t j = 0; j < spec.n_classes * spec.d; ++j) x0[size_t(j)] = 0.005 * rng.normal();
    SoftmaxWorkspace ws;
    const ObjectiveFn f = [&](const double* p, double* g) {
        return softmax_cost(be, spec, p, X.data.data(), y.data(), X.rows, g, ws);
    };
    Lbfgs opt(n, options.lbfgs);
    opt.init(x0.data(), f);
    while (opt.status() == LbfgsStatus::running && opt.iteration() < options.max_iterations) opt.iterate(f);
    SoftmaxFit fit;
    fit.params = opt.x();
    fit.cost = opt.f();
    fit.iterations = opt.iteration();
    fit.evaluations = opt.evaluations();
    fit.status = opt.status();
    return fit;
}

double accuracy(const std::vector<int32_t>& pred, const std::vector<int32_t>& truth) {
    check(!truth.empty() && pred.size() == truth.size(),
          "accuracy: " + std::to_string(pred.size()) + " predictions for " + std::to_string(truth.size()) +
              " labels; give one prediction per label (at least one)");
    int64_t right = 0;
    for (size_t i = 0; i < pred.size(); ++i) right += pred[i] == truth[i];
    return double(right) / double(truth.size());
}

Matrix<int64_t> confusion_matrix(const std::vector<int32_t>& pred, const std::vector<int32_t>& truth,
                                 int64_t n_classes) {
    check(pred.size() == truth.size(), "confusion matrix: " + std::to_string(pred.size()) + " predictions for " +
                                           std::to_string(truth.size()) + " labels; give one prediction per label");
    check(n_classes >= 1, "confusion matrix: n_classes must be >= 1");
    Matrix<int64_t> C(n_classes, n_classes);
    for (size_t i = 0; i < pred.size(); ++i) {
        if (truth[i] < 0 || truth[i] >= n_classes || pred[i] < 0 || pred[i] >= n_classes)
            throw Error("confusion matrix: class outside [0, " + std::to_string(n_classes) + ") at sample " +
                        std::to_string(i));
        ++C(truth[i], pred[i]);
    }
    return C;
}

// --- data selection -----------------------------------------------------------------------

namespace {

std::string trim(const std::string& s) {
    const auto b = s.find_first_not_of(" \t");
    if (b == std::string::npos) return "";
    return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

int32_t class_number(const std::string& tok, const std::string& spec) {
    const std::string t = trim(tok);
    const std::string advice = "; write classes like 0-4, 5-9 or 1,3,7";
    check(!t.empty(), "class list '" + spec + "': empty class" + advice);
    check(t.find_first_not_of("0123456789") == std::string::npos,
          "class list '" + spec + "': '" + t + "' is not a non-negative integer" + advice);
    check(t.size() <= 10, "class list '" + spec + "': '" + t + "' is too large" + advice);
    const long long v = std::stoll(t);
    check(v <= std::numeric_limits<int32_t>::max(), "class list '" + spec + "': '" + t + "' is too large" + advice);
    return int32_t(v);
}

}  // namespace

std::vector<int32_t> class_spec_parse(const std::string& spec) {
    std::vector<int32_t> out;
    check(!trim(spec).empty(), "class list is empty; write classes like 0-4, 5-9 or 1,3,7");
    size_t start = 0;
    while (true) {
        const size_t comma = spec.find(',', start);
        const std::string part = spec.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        const size_t dash = part.find('-');
        if (dash == std::string::npos) {
            out.push_back(class_number(part, spec));
        } else {
            const int32_t a = class_number(part.substr(0, dash), spec), b = class_number(part.substr(dash + 1), spec);
            check(a <= b, "class list '" + spec + "': range " + trim(part) + " runs backwards; write it as " +
                              std::to_string(b) + "-" + std::to_string(a));
            check(int64_t(b) - a < (1 << 20), "class list '" + spec + "': range " + trim(part) + " is too long");
            for (int64_t c = a; c <= b; ++c) out.push_back(int32_t(c));
        }
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

std::string class_spec_text(const std::vector<int32_t>& classes) {
    std::string s;
    for (size_t i = 0; i < classes.size();) {
        size_t j = i;
        while (j + 1 < classes.size() && classes[j + 1] == classes[j] + 1) ++j;
        if (!s.empty()) s += ",";
        s += std::to_string(classes[i]);
        if (j > i) {
            s += '-';
            s += std::to_string(classes[j]);
        }
        i = j + 1;
    }
    return s;
}

std::vector<int32_t> labels_load(const std::string& path) {
    const Array a = array_read(path);
    check(a.shape.size() == 1 || (a.shape.size() == 2 && a.shape[1] == 1),
          path + ": labels must be a 1-d array [N] (or [N, 1]) but the file holds " +
              std::to_string(a.shape.size()) + " dimensions; pass the labels file (e.g. labels-idx1-ubyte.gz)");
    std::vector<int32_t> out(a.values.size());
    for (size_t i = 0; i < a.values.size(); ++i) {
        const float v = a.values[i];
        if (!(std::isfinite(v) && v >= 0 && v == std::floor(v) && v < 2147483648.0f))
            throw Error(path + ": label " + std::to_string(i) + " is " + std::to_string(v) +
                        ", not a non-negative integer; labels must be class numbers");
        out[i] = int32_t(v);
    }
    return out;
}

std::vector<int64_t> select_by_labels(const std::vector<int32_t>& labels, const std::vector<int32_t>& classes) {
    check(!classes.empty(), "no classes selected; give at least one class");
    std::vector<int64_t> count(classes.size(), 0), idx;
    for (size_t i = 0; i < labels.size(); ++i) {
        const auto it = std::lower_bound(classes.begin(), classes.end(), labels[i]);
        if (it != classes.end() && *it == labels[i]) {
            ++count[size_t(it - classes.begin())];
            idx.push_back(int64_t(i));
        }
    }
    for (size_t c = 0; c < classes.size(); ++c)
        check(count[c] > 0, "class " + std::to_string(classes[c]) + " has no samples among the " +
                                std::to_string(labels.size()) + " labels; choose classes present in the data");
    return idx;
}

std::vector<int32_t> remap_labels(const std::vector<int32_t>& labels, const std::vector<int64_t>& idx,
                                  const std::vector<int32_t>& classes) {
    std::vector<int32_t> out(idx.size());
    for (size_t i = 0; i < idx.size(); ++i) {
        if (idx[i] < 0 || size_t(idx[i]) >= labels.size()) throw Error("remap_labels: index out of range");
        const int32_t l = labels[size_t(idx[i])];
        const auto it = std::lower_bound(classes.begin(), classes.end(), l);
        if (it == classes.end() || *it != l)
            throw Error("label " + std::to_string(l) + " of sample " + std::to_string(idx[i]) +
                        " is not among the selected classes");
        out[i] = int32_t(it - classes.begin());
    }
    return out;
}

Split split_indices(const std::vector<int64_t>& idx, double train_fraction, uint64_t seed) {
    check(train_fraction > 0 && train_fraction < 1,
          "train fraction " + std::to_string(train_fraction) + " is outside (0, 1); use e.g. 0.5");
    const int64_t n = int64_t(idx.size());
    const int64_t n_train = std::llround(train_fraction * double(n));
    check(n_train >= 1 && n_train <= n - 1,
          "train fraction " + std::to_string(train_fraction) + " of " + std::to_string(n) +
              " samples leaves the train or the test set empty; use more samples or another fraction");
    std::vector<int64_t> v = idx;
    Rng rng(seed);
    for (int64_t i = n - 1; i >= 1; --i) std::swap(v[size_t(i)], v[size_t(rng.below(uint64_t(i + 1)))]);
    Split s;
    s.train.assign(v.begin(), v.begin() + n_train);
    s.test.assign(v.begin() + n_train, v.end());
    std::sort(s.train.begin(), s.train.end());
    std::sort(s.test.begin(), s.test.end());
    return s;
}

template <class T>
Matrix<T> take_rows(const Matrix<T>& X, const std::vector<int64_t>& idx) {
    Matrix<T> out(int64_t(idx.size()), X.cols);
    for (size_t i = 0; i < idx.size(); ++i) {
        if (idx[i] < 0 || idx[i] >= X.rows)
            throw Error("take_rows: row " + std::to_string(idx[i]) + " outside [0, " + std::to_string(X.rows) + ")");
        std::copy(X.row(idx[i]), X.row(idx[i]) + X.cols, out.row(int64_t(i)));
    }
    return out;
}
template Matrix<float> take_rows(const Matrix<float>&, const std::vector<int64_t>&);
template Matrix<double> take_rows(const Matrix<double>&, const std::vector<int64_t>&);

Matrix<double> to_double(const Matrix<float>& X) {
    Matrix<double> out(X.rows, X.cols);
    std::copy(X.data.begin(), X.data.end(), out.data.begin());
    return out;
}

void npy_write_u8(const std::string& path, const uint8_t* data, const std::vector<int64_t>& shape) {
    std::string dims;
    uint64_t numel = 1;
    for (size_t i = 0; i < shape.size(); ++i) {
        check(shape[i] >= 0, path + ": negative dimension " + std::to_string(shape[i]) + "; fix the shape");
        check(shape[i] == 0 || numel <= UINT64_MAX / uint64_t(shape[i]), path + ": array size overflows; fix the shape");
        numel *= uint64_t(shape[i]);
        dims += (i ? ", " : "") + std::to_string(shape[i]);
    }
    if (shape.size() == 1) dims += ",";
    check(data != nullptr || numel == 0, path + ": data pointer is null; pass the array data");
    // magic(6) + version(2) + u16 header length + dict padded with spaces and '\n' to 64 bytes.
    std::string dict = "{'descr': '|u1', 'fortran_order': False, 'shape': (" + dims + "), }";
    dict.append(63 - (10 + dict.size()) % 64, ' ');
    dict += '\n';
    check(dict.size() <= 0xffff, path + ": too many dimensions for an .npy v1.0 header; reduce the rank");
    const uint16_t len = uint16_t(dict.size());
    const unsigned char len_le[2] = {uint8_t(len & 0xff), uint8_t(len >> 8)};
    AtomicFile f(path);
    f.write("\x93NUMPY\x01\x00", 8);
    f.write(len_le, 2);
    f.write(dict);
    f.write(data, size_t(numel));
    f.commit();
}

}  // namespace sae
