// sae features: a trained model's filters as a PNG grid, and how edge-like they are (JSON).
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "sae/error.hpp"
#include "sae/images.hpp"
#include "sae/io.hpp"
#include "sae/model_file.hpp"

namespace sae_cli {

void add_features(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "features", "draw a model's filters (one tile per latent) into a PNG grid and print, as JSON, how localised "
                    "and how oriented each one is");
    struct Args {
        std::string model, out, which = "encoder", contrast = "symmetric";
        int64_t width = 0, height = 0, scale = 0, columns = 0;
    };
    auto args = std::make_shared<Args>();
    cmd->add_option("--model", args->model, "model directory written by `sae train`")->required();
    cmd->add_option("--out", args->out, "output PNG file")->required();
    cmd->add_option("--which", args->which, "encoder (columns of W_enc) | decoder (rows of W_dec)")->capture_default_str();
    cmd->add_option("--width", args->width, "tile width (default: sqrt(d_in) when d_in is a perfect square)");
    cmd->add_option("--height", args->height, "tile height (default: d_in / width)");
    cmd->add_option("--scale", args->scale, "each weight becomes scale x scale pixels (0 = about 32 pixels a tile)")
        ->capture_default_str();
    cmd->add_option("--columns", args->columns, "tiles per row (0 = ceil(sqrt(d_sae)))")->capture_default_str();
    cmd->add_option("--contrast", args->contrast,
                    "per-tile contrast: symmetric (0 is mid-gray, +-max|w| black/white) | minmax")->capture_default_str();
    cmd->callback([args]() {
        sae::check(args->contrast == "symmetric" || args->contrast == "minmax",
                   "--contrast must be symmetric or minmax (got '" + args->contrast + "')");
        sae::check(args->width >= 0 && args->height >= 0 && args->scale >= 0 && args->columns >= 0,
                   "--width, --height, --scale and --columns must be >= 0");
        const sae::SavedModel m = sae::model_load(args->model);
        const int64_t d_in = m.objective->d_in();
        int64_t w = args->width, h = args->height;
        if (w == 0 && h == 0) {
            const auto r = int64_t(std::llround(std::sqrt(double(d_in))));
            sae::check(r * r == d_in, "model has d_in = " + std::to_string(d_in) +
                                          ", not a perfect square; give the tile shape with --width and --height");
            w = h = r;
        } else if (h == 0) {
            sae::check(d_in % w == 0, "--width " + std::to_string(w) + " does not divide d_in = " + std::to_string(d_in));
            h = d_in / w;
        } else if (w == 0) {
            sae::check(d_in % h == 0, "--height " + std::to_string(h) + " does not divide d_in = " + std::to_string(d_in));
            w = d_in / h;
        }
        sae::check(w * h == d_in, "--width x --height = " + std::to_string(w * h) + " but the model has d_in = " +
                                      std::to_string(d_in) + "; they must match");
        const sae::Matrix<float> F = sae::model_filters(m, args->which);
        sae::GridOptions g;
        g.columns = args->columns;
        g.scale = args->scale > 0 ? args->scale : std::max<int64_t>(1, (32 + std::max(w, h) - 1) / std::max(w, h));
        g.contrast = args->contrast == "minmax" ? sae::TileContrast::minmax : sae::TileContrast::symmetric;
        const sae::Gray8 img = sae::filter_grid(F.data.data(), F.rows, h, w, g);
        sae::write_file_atomic(args->out, sae::png_encode(img));

        nlohmann::ordered_json j;
        j["png"] = args->out;
        j["width"] = img.width;
        j["height"] = img.height;
        j["which"] = args->which;
        j["tile"] = {h, w};
        j["filters"] = F.rows;
        double sl = 0, so = 0;
        std::vector<double> loc, ori;
        for (int64_t k = 0; k < F.rows; ++k) {
            const auto s = sae::filter_score(F.row(k), h, w);
            loc.push_back(s.localisation);
            ori.push_back(s.orientation);
            sl += s.localisation;
            so += s.orientation;
        }
        j["mean_localisation"] = sl / double(F.rows);
        j["mean_orientation"] = so / double(F.rows);
        j["localisation"] = loc;
        j["orientation"] = ori;
        std::printf("%s\n", j.dump().c_str());
    });
}

}  // namespace sae_cli
