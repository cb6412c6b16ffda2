// Reports: one self-contained HTML page (no external resources: inline SVG charts drawn here,
// PNG pictures as base64 data URIs, a few lines of inline JS) about a training run or a sweep.
//
// Run directory (from `sae train`) → DIR/report.html with
//   #summary          settings and the final metrics of `evaluate` over the training data
//   #curves           every J term and the learning rate against the step (metrics.jsonl)
//   #activity         mean ρ̂ (min–max band) and FVU / L0 / dead fraction against the step
//   #rho-hat          histogram of ρ̂ⱼ (classic models; the target ρ marked for KL)
//   #density          histogram of log10 firing frequency (dead latents counted apart)
//   #features         the feature browser (src/report_browser.cpp): for the N most active latents
//                     their top-activating contexts (a harvest's text, or the training images),
//                     activation histogram, firing density and, with an unembedding, the tokens
//                     each decoder row promotes and suppresses; compact JSON rendered by inline JS
//   #filters          the learnt filters as an image grid (d_in a perfect square), also DIR/features.png
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
    int64_t max_samples = -1;  // samples evaluated for a run report; < 0: as the run was trained (streamed
                               // shards, shuffle_buffer > 0: the first samples the stream draws, 65,536 if 0)
    std::string harvest;       // a harvest directory (docs/formats.md); "": discovered from cfg.json data
    std::string hook;          // the harvest's hook; "": the one cfg.json data names, or the only one
    int64_t latents = 1000;    // latents in the browser, the most active first; < 0: all
    int64_t contexts = 10;     // top-activating rows (or images) shown per latent
};

// Writes DIR/report.html (and, for a run, features.png / reconstructions.png when d_in is a
// perfect square) atomically; returns the paths written. A directory that is neither a run nor a
// sweep, or whose files are missing or malformed, is one sae::Error line naming the file.
// Sections that need the training data are left out, with a note, when it cannot be loaded
// (warnings go to `warnings`, one line each).
// The --latents text: a count >= 1, or "all" (-1); anything else is one sae::Error line.
int64_t report_latents_parse(const std::string& text);
std::vector<std::string> report_write(const std::string& dir, const ReportOptions& opt,
                                      std::vector<std::string>* warnings = nullptr);

// --- the feature browser (src/report_browser.cpp) -----------------------------------------
// A harvest directory as its manifest.json describes it (written by Python sae.torch.harvest;
// the format is in docs/formats.md). Paths are as written (relative to dir).
struct HarvestHook {
    std::string name, dtype;  // dtype "float32" or "bfloat16"
    int64_t d_in = 0, rows = 0;
    std::vector<std::string> shards;
};
struct Harvest {
    std::string dir, model;
    bool complete = true;
    int64_t sequences = 0, rows = 0;
    std::string tokens, positions, vocab, unembed;  // "" when the manifest has none
    // Per-shard (token, sequence, position) tables [rows_i, 3] int32, as sae.torch.harvest keeps
    // them while it runs (tokens.npy / positions.npy are written when it completes): used when
    // those two are absent. has_tokens false: their token column is not meaningful (-1).
    std::vector<std::string> token_shards;
    bool has_tokens = true;
    std::vector<HarvestHook> hooks;
    const HarvestHook& hook(const std::string& name) const;  // throws naming the available hooks
};
// Reads and validates DIR/manifest.json (format, version, types of every field); the files it
// names are checked when they are read. One sae::Error line on any problem.
Harvest harvest_read(const std::string& dir);
// Whether `data` (a cfg.json data path or glob) lies in a hook's shard directory of a harvest
// (a manifest.json in the shard directory's parent): then *dir and *hook are set. A manifest that
// cannot be read makes this throw.
bool harvest_discover(const std::string& data, std::string* dir, std::string* hook);

struct BrowserOptions {
    int64_t latents = 1000;  // < 0: all
    int64_t contexts = 10;
    int64_t before = 24, after = 8;  // context rows around the top row (same sequence only)
    int64_t chunk = 4096;            // rows encoded at a time (fewer when [chunk, d_sae] floats pass 16 MiB)
    int bins = 24;                   // activation histogram bins over (0, the latent's maximum]
};
struct BrowserContext {
    int64_t row = 0;            // the top-activating row (a harvest row, or a sample)
    float activation = 0;       // the latent's activation there
    int64_t begin = 0, end = 0; // context rows [begin, end), begin <= row < end, one sequence
    std::vector<int32_t> tokens;  // [end − begin] token ids (empty without tokens.npy)
    std::vector<uint8_t> shade;   // [end − begin] round(255 · clamp(h_j / max_j, 0, 1)) on each row
};
struct BrowserLatent {
    int64_t index = 0;      // latent number j
    int64_t fires = 0;      // rows with h_j > the active threshold
    double density = 0;     // fires / rows
    float max_activation = 0;
    std::vector<int64_t> hist;  // [bins] rows with h_j > threshold by h_j in equal bins of (0, max]
    std::vector<BrowserContext> top;  // by activation, descending; ties: the earlier row
    std::vector<std::pair<int32_t, float>> promoted, suppressed;  // (token, (W_dec[j] @ unembed)[token])
};
struct Browser {
    int64_t rows = 0, d_sae = 0;
    double threshold = 0;
    bool images = false;  // contexts are training images (side × side), not text
    int64_t side = 0;
    bool positions = false, unembed = false, normalized = false;
    std::vector<std::string> vocab;       // token id → text (empty: ids are shown)
    std::vector<BrowserLatent> latents;   // the most active first (fires descending, then j)
    std::vector<std::string> images_png;  // images: per latent, its top images in one PNG strip
    std::string source;                   // what was browsed, for the page
};
struct SavedModel;
// Encodes the hook's rows with the model (in chunks of opt.chunk rows: memory is the chunk's rows
// and codes, d_sae · contexts, 16 bytes per context row, and tokens + sequence index (12 bytes)
// per harvest row, not the harvest's activations), twice: the first pass counts
// firings and keeps each latent's top rows, the second bins the chosen latents' activations and
// reads their activations on the context rows. Tokens, positions, vocab and unembed are read when
// the manifest names them; every inconsistency with the manifest or the model is one sae::Error.
Browser browser_from_harvest(const SavedModel& model, const Harvest& h, const std::string& hook,
                             const BrowserOptions& opt);
// The same from codes already computed: H [rows, d_sae] of the samples X [rows, side²] (images).
Browser browser_from_images(const float* H, const float* X, int64_t rows, int64_t d_sae, int64_t side,
                            double threshold, const BrowserOptions& opt);
// The #features section: a search box and the compact JSON (in a <script type="application/json"
// id="feature-data">) that a few lines of inline JS render one latent at a time.
std::string browser_section(const Browser& b);

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
