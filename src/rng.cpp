#include "sae/rng.hpp"

#include <sstream>

#include "sae/error.hpp"

namespace sae {

std::string Rng::state() const {
    std::ostringstream os;
    os << s[0] << ' ' << s[1] << ' ' << s[2] << ' ' << s[3];
    return os.str();
}

void Rng::set_state(const std::string& text) {
    std::istringstream is(text);
    std::array<uint64_t, 4> t{};
    for (auto& w : t) check(bool(is >> w), "random-number state '" + text + "' is malformed; the checkpoint is damaged");
    std::string rest;
    check(!(is >> rest), "random-number state '" + text + "' has trailing text; the checkpoint is damaged");
    check(t[0] | t[1] | t[2] | t[3], "random-number state is all zero; the checkpoint is damaged");
    s = t;
}

}  // namespace sae
