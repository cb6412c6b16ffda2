// Errors: one exception type whose message is the single line shown to the user.
// Convention for messages: "<file or subject>: <what is wrong>; <what to do>".
#pragma once
#include <stdexcept>
#include <string>

namespace sae {

class Error : public std::runtime_error {
public:
    explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// Throws Error(msg) when cond is false. Used instead of assert: validation must survive release builds.
inline void check(bool cond, const std::string& msg) {
    if (!cond) throw Error(msg);
}

}  // namespace sae
