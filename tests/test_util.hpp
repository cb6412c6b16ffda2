// Shared helpers for the test executables.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sae/comm.hpp"
#include "sae/io.hpp"

namespace sae_test {

// A fresh empty directory under the system temp dir, unique per call.
std::string temp_dir(const std::string& tag);

// Writes bytes to path (not atomic; for building test inputs).
void write_bytes(const std::string& path, const std::string& bytes);
std::string read_bytes(const std::string& path);

struct CommandResult {
    int exit_code = -1;
    std::string out;  // stdout
    std::string err;  // stderr
};
// Runs a shell command, capturing stdout and stderr separately.
CommandResult run(const std::string& command);

// DIR/x.npy: n samples of d features in [0, 1], two blobs (sample i has 0.7 on the features of
// its parity, 0.2 elsewhere, ±0.1 uniform noise; label = i % 2), so training can make progress.
// Returns the path.
std::string two_blob_npy(const std::string& dir, int64_t n = 120, int64_t d = 12);

// Every line of a JSON-lines file, parsed.
std::vector<nlohmann::json> read_jsonl(const std::string& path);

// The message of the sae::Error that f throws, or "" when it throws none.
std::string error_of(const std::function<void()>& f);

// f throws sae::Error with one line starting "<subject>: " and containing every part.
void expect_error_line(const std::function<void()>& f, const std::string& subject, const std::vector<std::string>& parts);

// A command that failed as the CLI should: non-zero exit, and one line on stderr, "sae: error: ...",
// containing needle.
void expect_clear_error(const CommandResult& r, const std::string& needle);

// The encoder exactly as docs/formats.md states it, from a model's saved files alone (in double):
// the raw row x normalised as "Before the encoder" says (cfg.json normalize, normalize_stats),
// then the architecture's row of "What the tensors compute".
std::vector<double> documented_encode(const sae::SafeTensors& st, const nlohmann::json& cfg, const float* x);

// Runs f(comm) on `ranks` threads, each with a communicator of its own over the others (rank r
// of ranks): allgather, gather, broadcast, barrier and the sums (added in rank order, so every
// rank gets the same bits) between threads, the way MPI does it between processes. Lets the
// sharded code paths be tested in one process, in every build. An exception on any thread is
// rethrown here after all have ended (f must not leave the others waiting in a collective).
void run_ranks(int ranks, const std::function<void(sae::Comm&)>& f);

// Path to the built `sae` binary and to the source tree (set by CMake).
std::string sae_binary();
std::string source_dir();

}  // namespace sae_test
