// Errors: one exception type whose message is the single line shown to the user.
// Convention for messages: "<file or subject>: <what is wrong>; <what to do>".
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace sae {

class Error : public std::runtime_error {
public:
    explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// Throws Error(msg) when cond is false. Used instead of assert: validation must survive release builds.
inline void check(bool cond, const std::string& msg) {
    if (!cond) throw Error(msg);
}

// Text from a file or the command line (or a library quoting it), put into a one-line message:
// control characters (a newline, say) escaped as \xNN, text beyond 200 bytes cut.
inline std::string one_line(std::string_view s) {
    std::string out;
    for (size_t i = 0; i < s.size() && i < 200; ++i) {
        const uint8_t c = uint8_t(s[i]);
        if (c < 0x20 || c == 0x7f) {
            const char* hex = "0123456789abcdef";
            out += {'\\', 'x', hex[c >> 4], hex[c & 15]};
        } else {
            out += char(c);
        }
    }
    return s.size() > 200 ? out + "..." : out;
}

}  // namespace sae
