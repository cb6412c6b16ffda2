// Reports: chart building blocks, the run and sweep pages (sections, pictures that decode to the
// stated sizes, one polyline point per metrics line, nothing external), clear errors, and the
// pages in a real headless browser (rendered, no console errors, a screenshot that is not blank).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <regex>

#include "sae/error.hpp"
#include "sae/io.hpp"
#include "sae/report.hpp"
#include "sae/rng.hpp"
#include "test_util.hpp"

#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>

using namespace sae;
using sae_test::run;
namespace fs = std::filesystem;

namespace {

const std::string kSae = sae_test::sae_binary();
const std::string kMnist = sae_test::source_dir() + "/data/mnist10k/images-idx3-ubyte.gz";

struct Picture {
    int width = 0, height = 0, channels = 0;
    std::vector<uint8_t> pixels;  // RGB
};
Picture png_decode(const std::string& bytes) {
    Picture p;
    unsigned char* d = stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()), int(bytes.size()), &p.width,
                                             &p.height, &p.channels, 3);
    if (!d) return {};
    p.pixels.assign(d, d + size_t(p.width) * size_t(p.height) * 3);
    stbi_image_free(d);
    return p;
}

std::string base64_decode(const std::string& s) {
    auto val = [](char c) -> int {
        if (c >= 'A' && c <= 'Z') return c - 'A';
        if (c >= 'a' && c <= 'z') return c - 'a' + 26;
        if (c >= '0' && c <= '9') return c - '0' + 52;
        return c == '+' ? 62 : c == '/' ? 63 : -1;
    };
    std::string out;
    uint32_t acc = 0;
    int bits = 0;
    for (char c : s) {
        const int v = val(c);
        if (v < 0) break;
        acc = acc << 6 | uint32_t(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out += char((acc >> bits) & 0xFF);
        }
    }
    return out;
}

// The data URI of the <img> with this id, decoded.
std::string embedded_png(const std::string& html, const std::string& id) {
    const size_t at = html.find("id=\"" + id + "\"");
    if (at == std::string::npos) return "";
    const std::string marker = "data:image/png;base64,";
    const size_t b = html.find(marker, at);
    const size_t e = html.find('"', b);
    return base64_decode(html.substr(b + marker.size(), e - b - marker.size()));
}

// Number of x,y pairs in the points attribute of the element with this id.
int polyline_points(const std::string& html, const std::string& id) {
    const size_t at = html.find("id=\"" + id + "\"");
    if (at == std::string::npos) return -1;
    const size_t b = html.find("points=\"", at) + 8;
    const std::string pts = html.substr(b, html.find('"', b) - b);
    int n = 0;
    for (char c : pts) n += c == ',';
    return n;
}

int count_of(const std::string& s, const std::string& what) {
    int n = 0;
    for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
    return n;
}

// Nothing loaded from elsewhere: the only URL is the SVG namespace.
void expect_self_contained(const std::string& html) {
    std::string rest = std::regex_replace(html, std::regex("xmlns=\"http://www.w3.org/2000/svg\""), "");
    EXPECT_EQ(rest.find("http:"), std::string::npos);
    EXPECT_EQ(rest.find("https:"), std::string::npos);
    EXPECT_EQ(rest.find("<link"), std::string::npos);
    EXPECT_EQ(rest.find("url("), std::string::npos);
    EXPECT_EQ(rest.find("@import"), std::string::npos);
    EXPECT_EQ(rest.find("<script src"), std::string::npos);
}

// A small MNIST run (d_sae = 16, 10 iterations, a metrics line every 2): trained once per process.
const std::string& mnist_run() {
    static const std::string dir = [] {
        const std::string d = sae_test::temp_dir("report") + "/run";
        auto r = run(kSae + " train --set data=" + kMnist +
                     " --set max_samples=300 --set d_sae=16 --set max_iterations=10 --set log_every=2 --set threads=2 --out " + d);
        EXPECT_EQ(r.exit_code, 0) << r.err;
        return d;
    }();
    return dir;
}

TEST(Report, TicksAndLabels) {
    EXPECT_EQ(nice_ticks(0, 1, 5), (std::vector<double>{0, 0.2, 0.4, 0.6000000000000001, 0.8, 1}));
    const auto t = nice_ticks(-3, 17, 4);
    EXPECT_EQ(t, (std::vector<double>{0, 5, 10, 15}));
    const auto l = log_ticks(1e-3, 20);
    for (double p : {1e-3, 1e-2, 1e-1, 1.0, 10.0}) EXPECT_NE(std::find(l.begin(), l.end(), p), l.end()) << p;
    const auto m = log_ticks(2, 150);  // few decades: 2 and 5 between powers of ten
    EXPECT_NE(std::find(m.begin(), m.end(), 50.0), m.end());
    EXPECT_FALSE(log_ticks(3, 4).empty());
    EXPECT_EQ(tick_label(1e-5), "1e-5");
    EXPECT_EQ(tick_label(2e6), "2e6");
    EXPECT_EQ(tick_label(0.25), "0.25");
    EXPECT_EQ(tick_label(0.6000000000000001), "0.6");
    EXPECT_EQ(tick_label(1500), "1500");
    EXPECT_EQ(tick_label(0), "0");
    EXPECT_EQ(tick_label(-0.001), "-0.001");
}

TEST(Report, Base64AndEscaping) {
    EXPECT_EQ(base64_encode(""), "");
    EXPECT_EQ(base64_encode("f"), "Zg==");
    EXPECT_EQ(base64_encode("fo"), "Zm8=");
    EXPECT_EQ(base64_encode("foo"), "Zm9v");
    EXPECT_EQ(base64_encode("foobar"), "Zm9vYmFy");
    std::string all;
    for (int i = 0; i < 256; ++i) all += char(i);
    EXPECT_EQ(base64_decode(base64_encode(all)), all);
    EXPECT_EQ(html_escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
}

TEST(Report, LineChartSkipsPointsItCannotDraw) {
    LineChart c;
    c.id = "c";
    c.title = "T <1>";
    c.series.push_back({"a", {0, 1, 2, 3, 4}, {1, 2, NAN, 4, 5}});
    c.series.push_back({"b", {0, 1, 2}, {0.5, -1, 2}});
    std::string svg = svg_line_chart(c);
    EXPECT_EQ(polyline_points(svg, "c-0"), 4);
    EXPECT_EQ(polyline_points(svg, "c-1"), 3);
    EXPECT_NE(svg.find("T &lt;1&gt;"), std::string::npos);
    EXPECT_NE(svg.find(">a</text>"), std::string::npos);  // a legend with two series
    c.log_y = true;  // non-positive values cannot be drawn on a log axis
    svg = svg_line_chart(c);
    EXPECT_EQ(polyline_points(svg, "c-1"), 2);
    EXPECT_NE(svg.find("(log scale)"), std::string::npos);
    LineChart empty;
    empty.id = "e";
    EXPECT_NE(svg_line_chart(empty).find("no data"), std::string::npos);
    Histogram h;
    h.id = "h";
    h.edges = {0, 1, 2, 3};
    h.counts = {1, 0, 5};
    h.markers.push_back({1.5, "target"});
    svg = svg_histogram(h);
    EXPECT_EQ(count_of(svg, "class=\"bar\""), 2);  // empty bins have no bar
    EXPECT_NE(svg.find(">target</text>"), std::string::npos);
}

TEST(Report, MetricsParseKeepsNumericColumns) {
    const auto m = metrics_parse("{\"step\":0,\"J_total\":3,\"h\":{\"a\":1}}\n\n{\"step\":5,\"J_total\":2,\"lr\":0.1}\n", "m");
    EXPECT_EQ(m.lines, 2u);
    EXPECT_EQ(m.keys, (std::vector<std::string>{"step", "J_total", "lr"}));
    EXPECT_EQ(*m.get("step"), (std::vector<double>{0, 5}));
    EXPECT_TRUE(std::isnan((*m.get("lr"))[0]));
    EXPECT_EQ(m.get("h"), nullptr);
    try {
        metrics_parse("{\"step\":0}\n{bad\n", "m.jsonl");
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("m.jsonl: line 2"), std::string::npos);
    }
}

TEST(Report, RunPageHasEverySectionAndDecodablePictures) {
    const std::string dir = mnist_run();
    auto r = run(kSae + " report " + dir);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");
    EXPECT_NE(r.out.find("report.html"), std::string::npos);
    const std::string html = sae_test::read_bytes(dir + "/report.html");
    for (const char* id : {"summary", "curves", "activity", "latents", "rho-hat", "density", "features", "filters", "reconstructions",
                           "chart-cost", "chart-rho", "chart-fvu", "chart-l0", "chart-rho-hat", "chart-density"})
        EXPECT_NE(html.find("id=\"" + std::string(id) + "\""), std::string::npos) << id;
    EXPECT_NE(html.find("target ρ = 0.1"), std::string::npos);
    expect_self_contained(html);

    // One polyline point per metrics line (steps 0, 2, ..., 10) for every J term drawn.
    const std::string metrics = sae_test::read_bytes(dir + "/metrics.jsonl");
    const int lines = int(std::count(metrics.begin(), metrics.end(), '\n'));
    EXPECT_EQ(lines, 6);
    for (int k = 0; k < 4; ++k) EXPECT_EQ(polyline_points(html, "chart-cost-" + std::to_string(k)), lines) << k;
    EXPECT_NE(html.find("data-series=\"J_total\""), std::string::npos);
    EXPECT_NE(html.find("data-series=\"J_sparsity\""), std::string::npos);
    EXPECT_EQ(html.find("data-series=\"J_aux\""), std::string::npos);  // zero throughout: not drawn

    // 16 filters of 28 x 28 at scale 2 in a 4 x 4 grid with 1-pixel separators.
    const std::string features = embedded_png(html, "img-features");
    EXPECT_EQ(features, sae_test::read_bytes(dir + "/features.png"));
    const Picture f = png_decode(features);
    EXPECT_EQ(f.width, 4 * 56 + 5);
    EXPECT_EQ(f.height, 4 * 56 + 5);
    // 16 samples over their 16 reconstructions.
    const std::string recon = embedded_png(html, "img-reconstructions");
    EXPECT_EQ(recon, sae_test::read_bytes(dir + "/reconstructions.png"));
    const Picture g = png_decode(recon);
    EXPECT_EQ(g.width, 16 * 57 + 1);
    EXPECT_EQ(g.height, 2 * 57 + 1);
}

TEST(Report, BadDirectoriesGiveOneClearLine) {
    const std::string dir = sae_test::temp_dir("report");
    sae_test::expect_clear_error(run(kSae + " report " + dir + "/nowhere"), "no such directory");
    sae_test::expect_clear_error(run(kSae + " report " + dir), "neither a run directory");
    // A run with a file missing, or a damaged one.
    fs::create_directories(dir + "/r");
    for (const char* f : {"cfg.json", "metrics.jsonl", "model.safetensors"})
        fs::copy_file(mnist_run() + "/" + f, dir + "/r/" + f);
    fs::remove(dir + "/r/metrics.jsonl");
    sae_test::expect_clear_error(run(kSae + " report " + dir + "/r"), "metrics.jsonl: missing");
    sae_test::write_bytes(dir + "/r/metrics.jsonl", "{\"step\":0,\"J_total\":1}\n{\"step\":\n");
    sae_test::expect_clear_error(run(kSae + " report " + dir + "/r"), "metrics.jsonl: line 2");
    sae_test::write_bytes(dir + "/sweep.csv", "run,beta\n");
    sae_test::expect_clear_error(run(kSae + " report " + dir), "sweep.csv");
    // Data that cannot be found: a warning, and the page without the sections that need it.
    fs::create_directories(dir + "/moved");
    for (const char* f : {"cfg.json", "metrics.jsonl", "model.safetensors"})
        fs::copy_file(mnist_run() + "/" + f, dir + "/moved/" + f);
    std::string cfg = sae_test::read_bytes(dir + "/moved/cfg.json");
    cfg = std::regex_replace(cfg, std::regex("\"data\": \"[^\"]*\""), "\"data\": \"/nonexistent/mnist.gz\"");
    sae_test::write_bytes(dir + "/moved/cfg.json", cfg);
    auto r = run(kSae + " report " + dir + "/moved");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("sae: warning: the training data could not be loaded"), std::string::npos) << r.err;
    const std::string html = sae_test::read_bytes(dir + "/moved/report.html");
    EXPECT_NE(html.find("id=\"filters\""), std::string::npos);
    EXPECT_EQ(html.find("id=\"features\""), std::string::npos);  // the browser needs the images
    EXPECT_EQ(html.find("id=\"reconstructions\""), std::string::npos);
    EXPECT_NE(html.find("id=\"density\""), std::string::npos);
}

// A 2 x 2 sweep on 16-feature data (4 x 4 "images").
const std::string& small_sweep() {
    static const std::string dir = [] {
        const std::string d = sae_test::temp_dir("report");
        Rng rng(5);
        std::vector<float> X(100 * 16);
        for (size_t i = 0; i < X.size(); ++i) X[i] = float(((i / 16) % 2 == (i % 16) % 2 ? 0.7 : 0.2) + rng.uniform(-0.1, 0.1));
        npy_write_f32(d + "/x.npy", X.data(), {100, 16});
        auto r = run(kSae + " sweep --set data=" + d +
                     "/x.npy --set normalize=none --set d_sae=4 --set max_iterations=6 --set log_every=2 --set threads=2 "
                     "--grid beta=0.3,3 --grid rho=0.05,0.2 --jobs 2 --out " + d + "/sw");
        EXPECT_EQ(r.exit_code, 0) << r.err;
        return d + "/sw";
    }();
    return dir;
}

TEST(Report, SweepPageHasTableAndOnePlotPerKeyAndMetric) {
    const std::string dir = small_sweep();
    auto r = run(kSae + " report " + dir + "/run-1-beta=0.3_rho=0.05");  // a run report first: linked from the table
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = run(kSae + " report " + dir);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const std::string html = sae_test::read_bytes(dir + "/report.html");
    for (const char* id : {"sweep-table", "sweep-plots", "sweep-curves", "sweep-curves-J_total", "sweep-curves-fvu"})
        EXPECT_NE(html.find("id=\"" + std::string(id) + "\""), std::string::npos) << id;
    EXPECT_NE(html.find("href=\"run-1-beta=0.3_rho=0.05/report.html\""), std::string::npos);
    expect_self_contained(html);
    for (const char* key : {"beta", "rho"})
        for (const char* metric : {"J_rec", "J_sparsity", "mean_rho_hat", "l0", "fvu", "dead_fraction"}) {
            const std::string id = std::string("sweep-") + key + "-" + metric;
            EXPECT_NE(html.find("id=\"" + id + "\""), std::string::npos) << id;
            // One line per value of the other key, one point per value of this one.
            EXPECT_EQ(polyline_points(html, id + "-0"), 2) << id;
            EXPECT_EQ(polyline_points(html, id + "-1"), 2) << id;
        }
    EXPECT_NE(html.find("data-series=\"rho=0.05\""), std::string::npos);
    EXPECT_NE(html.find("data-series=\"beta=0.3, rho=0.2\""), std::string::npos);
    // Every run's curve: 4 metrics lines (steps 0, 2, 4, 6).
    for (int k = 0; k < 4; ++k) EXPECT_EQ(polyline_points(html, "sweep-curves-J_total-" + std::to_string(k)), 4) << k;
    EXPECT_EQ(count_of(html, "<tr"), 5);  // header + 4 runs
}

// --- in a real browser -----------------------------------------------------------------------

const char* kChromium = "/usr/bin/chromium";

std::string chromium(const std::string& args, const std::string& html_path) {
    return "timeout 120 " + std::string(kChromium) +
           " --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
           " --disable-component-update --disable-sync --user-data-dir=" + sae_test::temp_dir("chromium") + " " + args +
           " file://" + html_path;
}

// Renders the page: its script must run after every picture decoded and report it ready on the
// console, nothing else may reach the console (errors, uncaught exceptions), and the screenshot
// must show charts.
void check_in_browser(const std::string& html_path, const std::string& shot) {
    auto r = run(chromium("--enable-logging=stderr --v=0 --hide-scrollbars --window-size=1200,2400 --screenshot=" + shot,
                          html_path));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("\"sae-report: ready ("), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("Uncaught"), std::string::npos) << r.err;
    EXPECT_EQ(count_of(r.err, "CONSOLE"), 1) << r.err;  // only the ready line

    const Picture p = png_decode(sae_test::read_bytes(shot));
    ASSERT_EQ(p.width, 1200);
    ASSERT_EQ(p.height, 2400);
    // Not blank: plenty of non-white pixels, and coloured ones (chart lines and bars).
    size_t ink = 0, colour = 0;
    for (size_t i = 0; i < p.pixels.size(); i += 3) {
        const int r0 = p.pixels[i], g0 = p.pixels[i + 1], b0 = p.pixels[i + 2];
        ink += r0 < 200 || g0 < 200 || b0 < 200;
        colour += std::max({r0, g0, b0}) - std::min({r0, g0, b0}) > 60;
    }
    const double n = double(p.width) * p.height;
    EXPECT_GT(ink / n, 0.02) << shot;
    EXPECT_GT(colour / n, 0.002) << shot;
}

TEST(ReportBrowser, RunAndSweepPagesRenderWithoutErrors) {
    if (!fs::exists(kChromium)) GTEST_SKIP() << "chromium is not installed (scripts/setup.sh installs it)";
    const std::string shots = sae_test::temp_dir("shots");
    ASSERT_EQ(run(kSae + " report " + mnist_run()).exit_code, 0);
    check_in_browser(mnist_run() + "/report.html", shots + "/run.png");
    ASSERT_EQ(run(kSae + " report " + small_sweep()).exit_code, 0);
    check_in_browser(small_sweep() + "/report.html", shots + "/sweep.png");
}

}  // namespace
