#include "test_util.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "sae/data.hpp"
#include "sae/error.hpp"
#include "sae/io.hpp"
#include "sae/rng.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <barrier>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace fs = std::filesystem;

namespace sae_test {

namespace {
// The threads' meeting point: each posts its block, all wait, each reads every block, all wait.
struct Board {
    explicit Board(int n) : sync(n), blocks(size_t(n)) {}
    std::barrier<> sync;
    std::vector<std::vector<char>> blocks;
};

class ThreadComm final : public sae::Comm {
public:
    ThreadComm(std::shared_ptr<Board> b, int rank) : b_(std::move(b)), rank_(rank) {}
    int rank() const override { return rank_; }
    int size() const override { return int(b_->blocks.size()); }
    void allreduce_sum(float* buf, int64_t n, const char* what) override { sum(buf, n, what); }
    void allreduce_sum(double* buf, int64_t n, const char* what) override { sum(buf, n, what); }
    void allgather(const void* send, int64_t bytes, void* recv, const char* what) override {
        count(what, bytes);
        exchange(send, bytes, [&](int r, const char* p) { std::memcpy(static_cast<char*>(recv) + r * bytes, p, size_t(bytes)); });
    }
    void gather(const void* send, int64_t bytes, void* recv, int root, const char* what) override {
        count(what, bytes);
        exchange(send, bytes, [&](int r, const char* p) {
            if (rank_ == root) std::memcpy(static_cast<char*>(recv) + r * bytes, p, size_t(bytes));
        });
    }
    void broadcast(void* buf, int64_t bytes, int root, const char* what) override {
        count(what, bytes);
        exchange(buf, bytes, [&](int r, const char* p) {
            if (r == root && rank_ != root) std::memcpy(buf, p, size_t(bytes));
        });
    }
    void barrier() override { exchange(nullptr, 0, [](int, const char*) {}); }
    std::unique_ptr<sae::Comm> split(int, int) override { throw std::logic_error("ThreadComm: split is not built"); }
    [[noreturn]] void abort(int) override { std::abort(); }

private:
    template <class F>
    void exchange(const void* send, int64_t bytes, F&& take) {
        const char* p = static_cast<const char*>(send);
        b_->blocks[size_t(rank_)].assign(p, p + bytes);
        b_->sync.arrive_and_wait();
        for (int r = 0; r < size(); ++r) take(r, b_->blocks[size_t(r)].data());
        b_->sync.arrive_and_wait();
    }
    template <class T>
    void sum(T* buf, int64_t n, const char* what) {
        count(what, n * int64_t(sizeof(T)));
        std::vector<T> total(size_t(n), T(0));
        exchange(buf, n * int64_t(sizeof(T)), [&](int, const char* p) {
            const T* v = reinterpret_cast<const T*>(p);
            for (int64_t i = 0; i < n; ++i) total[size_t(i)] += v[i];
        });
        std::copy(total.begin(), total.end(), buf);
    }
    std::shared_ptr<Board> b_;
    int rank_;
};
}  // namespace

void run_ranks(int ranks, const std::function<void(sae::Comm&)>& f) {
    auto board = std::make_shared<Board>(ranks);
    std::vector<std::exception_ptr> errors(static_cast<size_t>(ranks));
    std::vector<std::thread> threads;
    for (int r = 0; r < ranks; ++r)
        threads.emplace_back([&, r] {
            ThreadComm comm(board, r);
            try {
                f(comm);
            } catch (...) {
                errors[size_t(r)] = std::current_exception();
            }
        });
    for (auto& t : threads) t.join();
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

// What docs/formats.md says a reader applies before the encoder, in double, from cfg.json alone.
namespace {
std::vector<float> documented_normalize(const nlohmann::json& cfg, const float* x, int64_t d) {
    std::vector<float> out(x, x + d);
    const std::string mode = cfg["normalize"];
    if (mode == "none") return out;
    const auto& s = cfg["normalize_stats"];
    if (mode == "unit_range") {
        const double a = s["min"], b = s["max"];
        for (int64_t i = 0; i < d; ++i) out[size_t(i)] = b == a ? 0.0f : float((double(x[i]) - a) / (b - a));
        return out;
    }
    EXPECT_EQ(mode, "ufldl");
    double mean = 0;
    for (int64_t i = 0; i < d; ++i) mean += x[i];
    mean /= double(d);
    const double c = s["clip"];
    for (int64_t i = 0; i < d; ++i) {
        const double y = float(double(x[i]) - mean);
        out[size_t(i)] = c == 0 ? 0.5f : float((std::min(std::max(y, -c), c) / c + 1.0) * 0.4 + 0.1);
    }
    return out;
}
}  // namespace

std::vector<double> documented_encode(const sae::SafeTensors& st, const nlohmann::json& cfg, const float* raw) {
    const int64_t d_in = cfg["d_in"], d_sae = cfg["d_sae"];
    const std::vector<float> xs = documented_normalize(cfg, raw, d_in);
    const float* x = xs.data();
    const std::string arch = cfg["architecture"];
    const auto& W = st.tensors.at("W_enc").f32;
    const auto& b = st.tensors.at(arch == "gated" ? "b_gate" : "b_enc").f32;
    const auto& bd = st.tensors.at("b_dec").f32;
    const bool sub = arch != "classic" && cfg["apply_b_dec_to_input"].get<bool>();
    std::vector<double> pre(static_cast<size_t>(d_sae)), h(static_cast<size_t>(d_sae), 0.0);
    for (int64_t j = 0; j < d_sae; ++j) {
        double z = b[size_t(j)];
        for (int64_t k = 0; k < d_in; ++k) z += (double(x[k]) - (sub ? double(bd[size_t(k)]) : 0.0)) * W[size_t(k * d_sae + j)];
        pre[size_t(j)] = z;
    }
    if (arch == "classic") {
        EXPECT_EQ(cfg["encoder_activation"], "sigmoid");
        for (int64_t j = 0; j < d_sae; ++j) h[size_t(j)] = 1.0 / (1.0 + std::exp(-pre[size_t(j)]));
    } else if (arch == "standard") {
        for (int64_t j = 0; j < d_sae; ++j) h[size_t(j)] = std::max(0.0, pre[size_t(j)]);
    } else if (arch == "gated") {  // pre is the gate; mag = x'·(W_enc ⊙ exp(r_mag)) + b_mag
        const auto& r = st.tensors.at("r_mag").f32;
        const auto& bm = st.tensors.at("b_mag").f32;
        for (int64_t j = 0; j < d_sae; ++j) {
            double mag = bm[size_t(j)];
            for (int64_t k = 0; k < d_in; ++k)
                mag += (double(x[k]) - (sub ? double(bd[size_t(k)]) : 0.0)) * W[size_t(k * d_sae + j)] *
                       std::exp(double(r[size_t(j)]));
            h[size_t(j)] = pre[size_t(j)] > 0 ? std::max(0.0, mag) : 0.0;
        }
    } else if (arch == "topk") {
        std::vector<int64_t> idx(static_cast<size_t>(d_sae));
        for (int64_t j = 0; j < d_sae; ++j) idx[size_t(j)] = j;
        std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t c) { return pre[size_t(a)] > pre[size_t(c)]; });
        for (int64_t r = 0; r < cfg["k"].get<int64_t>(); ++r) h[size_t(idx[size_t(r)])] = std::max(0.0, pre[size_t(idx[size_t(r)])]);
    } else {  // jumprelu, batchtopk, matryoshka_batchtopk: pre where pre > threshold
        const auto& th = st.tensors.at("threshold").f32;
        for (int64_t j = 0; j < d_sae; ++j) h[size_t(j)] = pre[size_t(j)] > th[size_t(j)] ? pre[size_t(j)] : 0.0;
    }
    return h;
}


std::string temp_dir(const std::string& tag) {
    static std::atomic<int> counter{0};
    fs::path p = fs::temp_directory_path() /
                 ("sae-test-" + tag + "-" + std::to_string(::getpid()) + "-" +
                  std::to_string(counter++));
    fs::remove_all(p);
    fs::create_directories(p);
    return p.string();
}

void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    if (!f) throw std::runtime_error("cannot write " + path);
    f.write(bytes.data(), std::streamsize(bytes.size()));
}

std::string read_bytes(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot read " + path);
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

CommandResult run(const std::string& command) {
    CommandResult r;
    const std::string dir = temp_dir("run");
    const std::string out = dir + "/out", err = dir + "/err";
    const std::string full = "(" + command + ") >" + out + " 2>" + err + " </dev/null";
    const int status = std::system(full.c_str());
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = read_bytes(out);
    r.err = read_bytes(err);
    fs::remove_all(dir);
    return r;
}

std::string sae_binary() { return SAE_BINARY; }
std::string source_dir() { return SAE_SOURCE_DIR; }

std::string two_blob_npy(const std::string& dir, int64_t n, int64_t d) {
    sae::Rng rng(3);
    std::vector<float> X(static_cast<size_t>(n * d));
    for (int64_t i = 0; i < n; ++i)
        for (int64_t k = 0; k < d; ++k)
            X[size_t(i * d + k)] = float(((i % 2) == (k % 2) ? 0.7 : 0.2) + rng.uniform(-0.1, 0.1));
    const std::string path = dir + "/x.npy";
    sae::npy_write_f32(path, X.data(), {n, d});
    return path;
}

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
    std::ifstream f(path);
    std::vector<nlohmann::json> out;
    std::string line;
    while (std::getline(f, line)) out.push_back(nlohmann::json::parse(line));
    return out;
}

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const sae::Error& e) {
        return e.what();
    }
    return "";
}

void expect_error_line(const std::function<void()>& f, const std::string& subject, const std::vector<std::string>& parts) {
    const std::string msg = error_of(f);
    EXPECT_EQ(msg.rfind(subject + ": ", 0), 0u) << (msg.empty() ? "<no error>" : msg);
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "missing '" << p << "' in: " << msg;
}

void expect_clear_error(const CommandResult& r, const std::string& needle) {
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_EQ(r.err.rfind("sae: error: ", 0), 0u) << r.err;
}

}  // namespace sae_test
