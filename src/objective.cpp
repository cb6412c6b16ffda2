#include "sae/objective.hpp"

namespace sae {

std::unique_ptr<Objective> make_classic_objective(const Config& cfg, int64_t d_in);
std::unique_ptr<Objective> make_modern_objective(const Config& cfg, int64_t d_in);

std::unique_ptr<Objective> objective_create(const Config& cfg, int64_t d_in) {
    if (config_is_modern(cfg)) return make_modern_objective(cfg, d_in);
    return make_classic_objective(cfg, d_in);
}

}  // namespace sae
