// Row-major matrices and the flat parameter buffer.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "sae/error.hpp"

namespace sae {

// An owning row-major matrix [rows, cols]. A batch of m samples of dimension d is Matrix [m, d].
template <class T>
struct Matrix {
    int64_t rows = 0, cols = 0;
    std::vector<T> data;

    Matrix() = default;
    Matrix(int64_t r, int64_t c) : rows(r), cols(c), data(size_t(r * c)) {}
    void resize(int64_t r, int64_t c) { rows = r; cols = c; data.resize(size_t(r * c)); }
    T* row(int64_t i) { return data.data() + i * cols; }
    const T* row(int64_t i) const { return data.data() + i * cols; }
    T& operator()(int64_t i, int64_t j) { return data[size_t(i * cols + j)]; }
    const T& operator()(int64_t i, int64_t j) const { return data[size_t(i * cols + j)]; }
    int64_t size() const { return rows * cols; }
};

// A named view (offset + shape) into a flat buffer. Parameters, gradients and every optimizer
// moment share one ParamLayout, so each is one allocation and one loop.
struct ParamView {
    std::string name;
    std::vector<int64_t> shape;
    int64_t offset = 0;  // in elements
    int64_t numel() const {
        int64_t n = 1;
        for (auto d : shape) n *= d;
        return n;
    }
};

struct ParamLayout {
    std::vector<ParamView> views;
    int64_t total = 0;

    const ParamView& add(const std::string& name, std::vector<int64_t> shape) {
        ParamView v{name, std::move(shape), total};
        total += v.numel();
        views.push_back(std::move(v));
        return views.back();
    }
    const ParamView* find(const std::string& name) const {
        for (const auto& v : views)
            if (v.name == name) return &v;
        return nullptr;
    }
    const ParamView& get(const std::string& name) const {
        const ParamView* v = find(name);
        if (!v) throw Error("no parameter tensor named '" + name + "'");  // message built only on failure
        return *v;
    }
};

}  // namespace sae
