// sae patches: random patches of natural images, whitened and normalised, as float32 .npy.
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "commands.hpp"
#include "sae/backend.hpp"
#include "sae/error.hpp"
#include "sae/images.hpp"
#include "sae/io.hpp"

namespace sae_cli {

void add_patches(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "patches", "sample random patches of natural images (PNG/JPEG), whitened and normalised, into a float32 .npy "
                   "[count, size*size] for `sae train`");
    struct Args {
        std::vector<std::string> images;
        std::string out, whiten = "oneoverf";
        sae::PatchOptions opt;
        int64_t threads = 0;
    };
    auto args = std::make_shared<Args>();
    // Ranges are checked by the library (one clear line), not by CLI11.
    cmd->add_option("--images", args->images, "image files or directories (their *.png, *.jpg, *.jpeg)")->required();
    cmd->add_option("--out", args->out, "output .npy file")->required();
    cmd->add_option("--size", args->opt.size, "patch side p in pixels (patches are p x p)")->capture_default_str();
    cmd->add_option("--count", args->opt.count, "number of patches")->capture_default_str();
    cmd->add_option("--whiten", args->whiten,
                    "none | oneoverf (Olshausen & Field's 1/f filter on each image, f0 = 0.4 cycles/pixel) | zca (on the "
                    "patches, each patch's mean removed first)")->capture_default_str();
    cmd->add_option("--zca-epsilon", args->opt.zca_epsilon, "ZCA regulariser: 1/sqrt(lambda + eps)")->capture_default_str();
    cmd->add_option("--normalize", args->opt.normalize,
                    "ufldl (each patch's mean removed, clipped to 3 sigma, scaled to [0.1, 0.9]) | none | unit_range")
        ->capture_default_str();
    cmd->add_option("--seed", args->opt.seed, "random seed (same seed, same bytes)")->capture_default_str();
    cmd->add_option("--threads", args->threads, "threads (0 = runtime default; output does not depend on it)")->capture_default_str();
    cmd->callback([args]() {
        args->opt.whiten = sae::whiten_parse(args->whiten);
        const std::string parent = std::filesystem::path(args->out).parent_path().string();
        sae::ensure_writable_dir(parent.empty() ? "." : parent);
        sae::set_num_threads(int(args->threads));
        const auto t0 = std::chrono::steady_clock::now();
        const auto paths = sae::image_paths(args->images);
        const sae::Matrix<float> X = sae::make_patches(paths, args->opt);
        sae::npy_write_f32(args->out, X.data.data(), {X.rows, X.cols});
        double lo = X.data[0], hi = X.data[0], mean = 0;
        for (float v : X.data) {
            lo = std::min(lo, double(v));
            hi = std::max(hi, double(v));
            mean += v;
        }
        mean /= double(X.data.size());
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("wrote %s [%lld, %lld] from %zu images: whiten %s, normalize %s, values in [%.4g, %.4g], mean %.4g "
                    "(%.2f s)\n",
                    args->out.c_str(), (long long)X.rows, (long long)X.cols, paths.size(),
                    sae::whiten_name(args->opt.whiten).c_str(), args->opt.normalize.c_str(), lo, hi, mean, s);
    });
}

}  // namespace sae_cli
