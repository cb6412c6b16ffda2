// Reports: one self-contained HTML page (no external resources: inline SVG charts drawn here,
// PNG pictures as base64 data URIs, a few lines of inline JS) about a training run or a sweep.
//
// Run directory (from `sae train`) → DIR/report.html with
//   #summary          settings and the final metrics of `evaluate` over the training data
//   #curves           every J term and the learning rate against the step (metrics.jsonl)
//   #activity         mean ρ̂ (min–max band) and FVU / L0 / dead fraction against the step
//   #rho-hat          histogram of ρ̂ⱼ (classic models; the target ρ marked for KL)
//   #density          histogram of log10 firing frequency (dead latents counted apart)
//   #features         the learnt filters as an image grid (d_in a perfect square), also DIR/features.png
//   #reconstructions  16 samples and their reconstructions, also DIR/reconstructions.png
// Sweep directory (from `sae sweep`) → DIR/report.html with
//   #sweep-table      sweep.csv as a table (links to each run's report.html when present)
//   #sweep-plots      each metric against each swept key, one line per combination of the others
//   #sweep-curves     J_total against the step for every run
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sae {

struct ReportOptions {
    int64_t max_samples = -1;  // samples evaluated for a run report; < 0: as the run was trained
};

// Writes DIR/report.html (and, for a run, features.png / reconstructions.png when d_in is a
// perfect square) atomically; returns the paths written. A directory that is neither a run nor a
// sweep, or whose files are missing or malformed, is one sae::Error line naming the file.
// Sections that need the training data are left out, with a note, when it cannot be loaded
// (warnings go to `warnings`, one line each).
std::vector<std::string> report_write(const std::string& dir, const ReportOptions& opt,
                                      std::vector<std::string>* warnings = nullptr);

// --- building blocks (exposed for tests) ------------------------------------------------------
struct ChartSeries {
    std::string name;
    std::vector<double> x, y;  // non-finite points (and, on a log axis, points <= 0) are skipped
    bool dashed = false;
    std::string color;         // empty: the palette's next colour
};
struct ChartBand {  // a shaded area between lo and hi, behind the lines
    std::string name;
    std::vector<double> x, lo, hi;
    std::string color;
};
struct ChartMarker {  // a vertical (or, with horizontal = true, horizontal) reference line
    double at = 0;
    std::string label;
    bool horizontal = false;
};
struct LineChart {
    std::string id;  // the <svg>'s id; each series' <polyline> gets id "<id>-<n>" (n = 0, 1, ...)
    std::string title, x_label, y_label;
    bool log_x = false, log_y = false;
    std::vector<std::string> x_categories;  // non-empty: x = 0, 1, ... labelled by these
    std::vector<double> x_ticks;            // non-empty: ticks at exactly these x (e.g. the swept values)
    std::vector<ChartSeries> series;
    std::vector<ChartBand> bands;
    std::vector<ChartMarker> markers;
    int width = 560, height = 300;  // the plotting area plus axes; a legend adds to the width
    bool legend = true;             // drawn on the right when there is more than one entry
};
std::string svg_line_chart(const LineChart& chart);

struct Histogram {
    std::string id, title, x_label, y_label = "latents";
    std::vector<double> edges;   // [n + 1], increasing
    std::vector<double> counts;  // [n]
    std::vector<ChartMarker> markers;
    std::string note;            // a line under the title
    int width = 560, height = 260;
};
std::string svg_histogram(const Histogram& h);

// About `max_count` round tick values covering [lo, hi] (steps of 1, 2 or 5 × 10^k).
std::vector<double> nice_ticks(double lo, double hi, int max_count = 6);
// Tick values for a log axis over [lo, hi] (lo > 0): powers of ten, with 2 and 5 between them
// when the range spans few decades.
std::vector<double> log_ticks(double lo, double hi);
// Short text of a tick value: 0.001, 0.25, 1.5e-05, 2e+06.
std::string tick_label(double v);

std::string base64_encode(const std::string& bytes);
std::string html_escape(const std::string& s);

// Parses metrics.jsonl text: one JSON object per line (blank lines skipped). Throws naming
// `name` and the line number on malformed JSON.
struct MetricsLog {
    std::vector<std::string> keys;              // numeric keys in first-seen order
    std::vector<std::vector<double>> columns;   // [keys][lines], NaN where a line lacks the key
    size_t lines = 0;
    const std::vector<double>* get(const std::string& key) const;  // null if absent
};
MetricsLog metrics_parse(const std::string& text, const std::string& name);

}  // namespace sae
