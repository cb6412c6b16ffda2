#include "test_util.hpp"

#include <gtest/gtest.h>

#include <algorithm>

#include "sae/data.hpp"
#include "sae/error.hpp"
#include "sae/io.hpp"
#include "sae/rng.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace fs = std::filesystem;

namespace sae_test {

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
