// Shared helpers for the test executables.
#pragma once
#include <string>

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

// Path to the built `sae` binary and to the source tree (set by CMake).
std::string sae_binary();
std::string source_dir();

}  // namespace sae_test
