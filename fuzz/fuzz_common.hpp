// Shared by the libFuzzer targets: the contract every parser must keep on arbitrary bytes.
// A parser either returns, or throws sae::Error whose message is one non-empty line. Any other
// exception escapes LLVMFuzzerTestOneInput and aborts (libFuzzer reports it as a crash), and
// so does a broken message; sanitizer reports, timeouts and out-of-memory are crashes as well.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "sae/error.hpp"

namespace sae_fuzz {

inline std::string bytes(const uint8_t* data, size_t size) {
    return std::string(reinterpret_cast<const char*>(data), size);
}

[[noreturn]] inline void fail(const char* what, const std::string& detail) {
    std::fprintf(stderr, "fuzz contract broken: %s: %s\n", what, detail.c_str());
    std::abort();
}

inline void require(bool cond, const char* what, const std::string& detail = "") {
    if (!cond) fail(what, detail);
}

// The message of an sae::Error must be a single, non-empty line.
inline void check_message(const sae::Error& e) {
    const std::string m = e.what();
    require(!m.empty(), "empty sae::Error message");
    require(m.find_first_of("\n\r") == std::string::npos, "sae::Error message spans several lines", m);
}

// Runs f(); an sae::Error is an accepted outcome (checked for one line), returns whether f succeeded.
template <class F>
bool parses(F&& f) {
    try {
        f();
        return true;
    } catch (const sae::Error& e) {
        check_message(e);
        return false;
    }
}

}  // namespace sae_fuzz
