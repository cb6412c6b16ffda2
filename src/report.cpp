// Reports as one self-contained HTML file: SVG charts drawn here, pictures as base64 PNGs.
#include "sae/report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "sae/backend.hpp"
#include "sae/config.hpp"
#include "sae/error.hpp"
#include "sae/eval.hpp"
#include "sae/images.hpp"
#include "sae/io.hpp"
#include "sae/model_file.hpp"
#include "sae/stream.hpp"
#include "sae/sweep.hpp"

namespace fs = std::filesystem;

namespace sae {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
const char* const kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
constexpr size_t kPaletteSize = sizeof(kPalette) / sizeof(kPalette[0]);

std::string fmt(const char* f, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, f, v);
    return buf;
}
std::string px(double v) { return fmt("%.1f", v); }

// A number for tables: 4 significant digits, "–" when missing.
std::string num(double v, const char* f = "%.4g") { return std::isfinite(v) ? fmt(f, v) : "–"; }

}  // namespace

// ------------------------------------------------------------------------------- text helpers

std::string html_escape(const std::string& s) {
    std::string o;
    o.reserve(s.size());
    for (char c : s) {
        switch (c) {
            case '&': o += "&amp;"; break;
            case '<': o += "&lt;"; break;
            case '>': o += "&gt;"; break;
            case '"': o += "&quot;"; break;
            case '\'': o += "&#39;"; break;
            default: o += c;
        }
    }
    return o;
}

std::string base64_encode(const std::string& bytes) {
    static const char* abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    size_t i = 0;
    for (; i + 2 < bytes.size(); i += 3) {
        const uint32_t v = uint32_t(uint8_t(bytes[i])) << 16 | uint32_t(uint8_t(bytes[i + 1])) << 8 | uint8_t(bytes[i + 2]);
        out += abc[v >> 18 & 63];
        out += abc[v >> 12 & 63];
        out += abc[v >> 6 & 63];
        out += abc[v & 63];
    }
    if (i < bytes.size()) {
        uint32_t v = uint32_t(uint8_t(bytes[i])) << 16;
        if (i + 1 < bytes.size()) v |= uint32_t(uint8_t(bytes[i + 1])) << 8;
        out += abc[v >> 18 & 63];
        out += abc[v >> 12 & 63];
        out += i + 1 < bytes.size() ? abc[v >> 6 & 63] : '=';
        out += '=';
    }
    return out;
}

// ------------------------------------------------------------------------------------- ticks

std::vector<double> nice_ticks(double lo, double hi, int max_count) {
    std::vector<double> t;
    if (!(std::isfinite(lo) && std::isfinite(hi)) || hi < lo) return t;
    if (hi == lo) return {lo};
    const double raw = (hi - lo) / std::max(1, max_count);
    const double mag = std::pow(10.0, std::floor(std::log10(raw)));
    double step = mag;
    for (double m : {1.0, 2.0, 5.0, 10.0})
        if (m * mag >= raw * (1 - 1e-9)) {
            step = m * mag;
            break;
        }
    for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step)
        t.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
    return t;
}

std::vector<double> log_ticks(double lo, double hi) {
    std::vector<double> t;
    if (!(lo > 0 && hi >= lo && std::isfinite(hi))) return t;
    const double decades = std::log10(hi / lo);
    if (decades < 0.8) {  // less than a decade: round values, placed on the log axis
        for (double v : nice_ticks(lo, hi, 4))
            if (v > 0) t.push_back(v);
        return t;
    }
    const int e0 = int(std::floor(std::log10(lo))), e1 = int(std::ceil(std::log10(hi)));
    const int every = std::max(1, (e1 - e0 + 7) / 8);  // at most about 8 powers of ten
    const bool minor = decades <= 2.5;
    for (int e = e0; e <= e1; ++e) {
        const double p = std::pow(10.0, e);
        if ((e - e0) % every == 0 && p >= lo * (1 - 1e-9) && p <= hi * (1 + 1e-9)) t.push_back(p);
        if (minor)
            for (double m : {2.0, 5.0})
                if (m * p >= lo && m * p <= hi) t.push_back(m * p);
    }
    std::sort(t.begin(), t.end());
    return t;
}

std::string tick_label(double v) {
    if (v == 0) return "0";
    const double a = std::fabs(v);
    std::string s;
    if (a >= 1e-3 && a < 1e5) {
        s = fmt("%.6f", v);
        while (!s.empty() && s.back() == '0') s.pop_back();
        if (!s.empty() && s.back() == '.') s.pop_back();
        // %.6f rounds e.g. 0.0012345 fine; trim spurious digits from float noise.
        const std::string g = fmt("%.6g", v);
        if (g.size() < s.size() && g.find('e') == std::string::npos) s = g;
        return s;
    }
    s = fmt("%.3g", v);
    // 1e-05 → 1e-5, 2e+06 → 2e6
    const size_t e = s.find('e');
    if (e == std::string::npos) return s;
    std::string mant = s.substr(0, e), ex = s.substr(e + 1);
    const bool neg = ex[0] == '-';
    ex = ex.substr(1);
    while (ex.size() > 1 && ex[0] == '0') ex.erase(0, 1);
    return mant + "e" + (neg ? "-" : "") + ex;
}

// ------------------------------------------------------------------------------------ charts

namespace {

struct Scale {
    bool log = false;
    double lo = 0, hi = 1;      // domain, in data units
    double p0 = 0, p1 = 1;      // pixel range
    double t(double v) const { return log ? std::log10(v) : v; }
    double operator()(double v) const {
        const double a = t(lo), b = t(hi);
        return p0 + (t(v) - a) / (b - a) * (p1 - p0);
    }
};

// Pads [lo, hi] a little (in log space for log axes); a zero-based range stays at 0.
void pad_range(double& lo, double& hi, bool log, bool zero_floor) {
    if (log) {
        double a = std::log10(lo), b = std::log10(hi);
        if (b - a < 0.3) {
            const double m = (a + b) / 2;
            a = m - 0.15;
            b = m + 0.15;
        }
        const double p = 0.04 * (b - a);
        lo = std::pow(10.0, a - p);
        hi = std::pow(10.0, b + p);
        return;
    }
    if (hi == lo) {
        const double d = lo == 0 ? 1 : std::fabs(lo) * 0.1;
        lo -= d;
        hi += d;
    }
    if (zero_floor && lo >= 0 && lo <= 0.25 * hi) lo = 0;
    const double p = 0.04 * (hi - lo);
    if (!(zero_floor && lo == 0)) lo -= p;
    hi += p;
}

std::string svg_open(const std::string& id, int w, int h, const std::string& title) {
    return "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\"" +
           (id.empty() ? std::string() : " id=\"" + html_escape(id) + "\"") + " width=\"" + std::to_string(w) +
           "\" height=\"" + std::to_string(h) + "\" viewBox=\"0 0 " + std::to_string(w) + " " + std::to_string(h) +
           "\" role=\"img\" aria-label=\"" + html_escape(title) + "\" font-family=\"sans-serif\">\n";
}

struct Frame {
    double left = 68, right = 14, top = 34, bottom = 46;
    double pw(int w) const { return w - left - right; }
    double ph(int h) const { return h - top - bottom; }
};

struct LegendEntry {
    std::string name, color;
    enum Kind { line, dashed, area } kind = line;
};

double text_width(const std::string& s, double font_px) {
    // Average glyph width of a sans-serif face, counting UTF-8 sequences once.
    size_t chars = 0;
    for (unsigned char c : s) chars += (c & 0xC0) != 0x80;
    return double(chars) * font_px * 0.58;
}

std::string legend_svg(const std::vector<LegendEntry>& entries, double x, double y) {
    std::string s;
    for (size_t i = 0; i < entries.size(); ++i) {
        const auto& e = entries[i];
        const double cy = y + 9 + 18 * double(i);
        if (e.kind == LegendEntry::area)
            s += "<rect x=\"" + px(x) + "\" y=\"" + px(cy - 5) + "\" width=\"18\" height=\"10\" fill=\"" + e.color +
                 "\" fill-opacity=\"0.25\" stroke=\"" + e.color + "\" stroke-opacity=\"0.4\"/>";
        else
            s += "<line x1=\"" + px(x) + "\" y1=\"" + px(cy) + "\" x2=\"" + px(x + 18) + "\" y2=\"" + px(cy) +
                 "\" stroke=\"" + e.color + "\" stroke-width=\"2.2\"" +
                 (e.kind == LegendEntry::dashed ? " stroke-dasharray=\"5,3\"" : "") + "/>";
        s += "<text x=\"" + px(x + 24) + "\" y=\"" + px(cy + 4) + "\" font-size=\"12\" fill=\"#333\">" +
             html_escape(e.name) + "</text>\n";
    }
    return s;
}

// A legend shared by several charts, as HTML: series i has the colour svg_line_chart gives the
// i-th series without a colour of its own (dashed after the palette's 10 colours).
std::string html_legend(const std::vector<std::string>& names,
                        const std::vector<std::pair<std::string, std::string>>& dashed_extra) {
    std::string s = "<div class=\"legend\">";
    auto item = [&](const std::string& name, const std::string& color, bool dashed) {
        s += "<span><svg width=\"22\" height=\"10\"><line x1=\"1\" y1=\"5\" x2=\"21\" y2=\"5\" stroke=\"" + color +
             "\" stroke-width=\"2.4\"" + (dashed ? " stroke-dasharray=\"5,3\"" : "") + "/></svg>" + html_escape(name) +
             "</span>";
    };
    for (size_t i = 0; i < names.size(); ++i) item(names[i], kPalette[i % kPaletteSize], i >= kPaletteSize);
    for (const auto& [name, color] : dashed_extra) item(name, color, true);
    return s + "</div>\n";
}

// Gridlines, tick labels, axis lines and axis titles.
std::string axes_svg(const Scale& xs, const Scale& ys, const std::vector<double>& xt, const std::vector<std::string>& xl,
                     const std::vector<double>& yt, const std::string& x_label, const std::string& y_label,
                     const Frame& f, int w, int h) {
    std::string s;
    const double x0 = f.left, x1 = w - f.right, y0 = f.top, y1 = h - f.bottom;
    s += "<rect x=\"" + px(x0) + "\" y=\"" + px(y0) + "\" width=\"" + px(x1 - x0) + "\" height=\"" + px(y1 - y0) +
         "\" fill=\"#fcfcfd\"/>\n";
    for (double v : yt) {
        const double y = ys(v);
        if (y < y0 - 0.5 || y > y1 + 0.5) continue;
        s += "<line x1=\"" + px(x0) + "\" y1=\"" + px(y) + "\" x2=\"" + px(x1) + "\" y2=\"" + px(y) +
             "\" stroke=\"#e3e5e8\"/><text x=\"" + px(x0 - 6) + "\" y=\"" + px(y + 4) +
             "\" font-size=\"11\" fill=\"#555\" text-anchor=\"end\">" + html_escape(tick_label(v)) + "</text>\n";
    }
    for (size_t i = 0; i < xt.size(); ++i) {
        const double x = xs(xt[i]);
        if (x < x0 - 0.5 || x > x1 + 0.5) continue;
        s += "<line x1=\"" + px(x) + "\" y1=\"" + px(y0) + "\" x2=\"" + px(x) + "\" y2=\"" + px(y1) +
             "\" stroke=\"#e3e5e8\"/><line x1=\"" + px(x) + "\" y1=\"" + px(y1) + "\" x2=\"" + px(x) + "\" y2=\"" +
             px(y1 + 4) + "\" stroke=\"#888\"/><text x=\"" + px(x) + "\" y=\"" + px(y1 + 16) +
             "\" font-size=\"11\" fill=\"#555\" text-anchor=\"middle\">" +
             html_escape(i < xl.size() ? xl[i] : tick_label(xt[i])) + "</text>\n";
    }
    s += "<path d=\"M" + px(x0) + "," + px(y0) + "V" + px(y1) + "H" + px(x1) + "\" fill=\"none\" stroke=\"#888\"/>\n";
    s += "<text x=\"" + px((x0 + x1) / 2) + "\" y=\"" + px(h - 8) + "\" font-size=\"12\" fill=\"#333\" text-anchor=\"middle\">" +
         html_escape(x_label) + "</text>\n";
    s += "<text transform=\"translate(14," + px((y0 + y1) / 2) + ") rotate(-90)\" font-size=\"12\" fill=\"#333\" text-anchor=\"middle\">" +
         html_escape(y_label) + "</text>\n";
    return s;
}

std::string no_data_svg(const std::string& id, const std::string& title, int w, int h) {
    return svg_open(id, w, h, title) + "<text x=\"12\" y=\"20\" font-size=\"14\" font-weight=\"bold\" fill=\"#222\">" +
           html_escape(title) + "</text><text x=\"" + std::to_string(w / 2) + "\" y=\"" + std::to_string(h / 2) +
           "\" font-size=\"13\" fill=\"#888\" text-anchor=\"middle\">no data</text></svg>\n";
}

}  // namespace

std::string svg_line_chart(const LineChart& c) {
    const bool cat = !c.x_categories.empty();
    const bool logx = c.log_x && !cat, logy = c.log_y;
    auto okx = [&](double x) { return std::isfinite(x) && (!logx || x > 0); };
    auto oky = [&](double y) { return std::isfinite(y) && (!logy || y > 0); };
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    auto see = [&](double x, double y) {
        xlo = std::min(xlo, x), xhi = std::max(xhi, x), ylo = std::min(ylo, y), yhi = std::max(yhi, y);
    };
    for (const auto& s : c.series)
        for (size_t i = 0; i < std::min(s.x.size(), s.y.size()); ++i)
            if (okx(s.x[i]) && oky(s.y[i])) see(s.x[i], s.y[i]);
    for (const auto& b : c.bands)
        for (size_t i = 0; i < b.x.size() && i < b.lo.size() && i < b.hi.size(); ++i)
            if (okx(b.x[i]) && oky(b.lo[i]) && oky(b.hi[i])) see(b.x[i], b.lo[i]), see(b.x[i], b.hi[i]);
    if (!(xlo <= xhi)) return no_data_svg(c.id, c.title, c.width, c.height);
    for (const auto& m : c.markers) {
        if (!m.horizontal && okx(m.at)) xlo = std::min(xlo, m.at), xhi = std::max(xhi, m.at);
        if (m.horizontal && oky(m.at)) ylo = std::min(ylo, m.at), yhi = std::max(yhi, m.at);
    }

    // Legend: every named series and band, and labelled markers.
    std::vector<LegendEntry> legend;
    std::vector<std::string> colors;
    size_t next_color = 0;
    for (const auto& s : c.series) {
        const std::string col = s.color.empty() ? kPalette[next_color++ % kPaletteSize] : s.color;
        colors.push_back(col);
        const bool dashed = s.dashed || (s.color.empty() && next_color > kPaletteSize);
        legend.push_back({s.name, col, dashed ? LegendEntry::dashed : LegendEntry::line});
    }
    for (const auto& b : c.bands) legend.push_back({b.name, b.color.empty() ? "#1f77b4" : b.color, LegendEntry::area});
    for (const auto& m : c.markers)
        if (!m.label.empty()) legend.push_back({m.label, "#555", LegendEntry::dashed});
    const bool show_legend = c.legend && (legend.size() > 1 || (!c.markers.empty() && !legend.empty()));
    double legend_w = 0;
    if (show_legend)
        for (const auto& e : legend) legend_w = std::max(legend_w, 36 + text_width(e.name, 12));
    legend_w = std::min(legend_w, 300.0);

    Frame f;
    const int W = c.width + int(std::ceil(legend_w));
    const int H = std::max(c.height, show_legend ? int(f.top + 18 * legend.size() + 12) : 0);
    Scale xs{logx, xlo, xhi, f.left, double(c.width) - f.right};
    Scale ys{logy, ylo, yhi, H - f.bottom, f.top};
    if (cat) {
        xs.lo = -0.5;
        xs.hi = double(c.x_categories.size()) - 0.5;
    } else {
        pad_range(xs.lo, xs.hi, logx, true);
        if (!logx && xlo >= 0 && xs.lo < 0) xs.lo = 0;
    }
    pad_range(ys.lo, ys.hi, logy, true);

    std::vector<double> xt;
    std::vector<std::string> xl;
    if (cat) {
        for (size_t i = 0; i < c.x_categories.size(); ++i) xt.push_back(double(i));
        xl = c.x_categories;
    } else if (!c.x_ticks.empty()) {
        for (double v : c.x_ticks)
            if (okx(v)) xt.push_back(v);
    } else {
        xt = logx ? log_ticks(xs.lo, xs.hi) : nice_ticks(xs.lo, xs.hi, std::max(2, c.width / 90));
    }
    const std::vector<double> yt = logy ? log_ticks(ys.lo, ys.hi) : nice_ticks(ys.lo, ys.hi, std::max(2, c.height / 45));

    std::string s = svg_open(c.id, W, H, c.title);
    s += "<text x=\"" + px(f.left) + "\" y=\"20\" font-size=\"14\" font-weight=\"bold\" fill=\"#222\">" +
         html_escape(c.title) + "</text>\n";
    s += axes_svg(xs, ys, xt, xl, yt, c.x_label, c.y_label + (logy ? " (log scale)" : ""), f, c.width, H);

    for (const auto& b : c.bands) {
        std::string upper, lower;
        for (size_t i = 0; i < b.x.size() && i < b.lo.size() && i < b.hi.size(); ++i) {
            if (!(okx(b.x[i]) && oky(b.lo[i]) && oky(b.hi[i]))) continue;
            upper += px(xs(b.x[i])) + "," + px(ys(b.hi[i])) + " ";
            lower = px(xs(b.x[i])) + "," + px(ys(b.lo[i])) + " " + lower;
        }
        const std::string col = b.color.empty() ? "#1f77b4" : b.color;
        s += "<polygon points=\"" + upper + lower + "\" fill=\"" + col + "\" fill-opacity=\"0.18\" stroke=\"none\"><title>" +
             html_escape(b.name) + "</title></polygon>\n";
    }
    for (const auto& m : c.markers) {
        if (m.horizontal ? !oky(m.at) : !okx(m.at)) continue;
        if (m.horizontal) {
            const double y = ys(m.at);
            s += "<line x1=\"" + px(f.left) + "\" y1=\"" + px(y) + "\" x2=\"" + px(c.width - f.right) + "\" y2=\"" + px(y) +
                 "\" stroke=\"#555\" stroke-width=\"1.5\" stroke-dasharray=\"5,3\"><title>" + html_escape(m.label) +
                 "</title></line>\n";
        } else {
            const double x = xs(m.at);
            s += "<line x1=\"" + px(x) + "\" y1=\"" + px(f.top) + "\" x2=\"" + px(x) + "\" y2=\"" + px(H - f.bottom) +
                 "\" stroke=\"#555\" stroke-width=\"1.5\" stroke-dasharray=\"5,3\"><title>" + html_escape(m.label) +
                 "</title></line>\n";
        }
    }
    for (size_t k = 0; k < c.series.size(); ++k) {
        const auto& ser = c.series[k];
        std::string pts, dots;
        size_t count = 0;
        const size_t n = std::min(ser.x.size(), ser.y.size());
        for (size_t i = 0; i < n; ++i)
            count += okx(ser.x[i]) && oky(ser.y[i]);
        for (size_t i = 0; i < n; ++i) {
            if (!(okx(ser.x[i]) && oky(ser.y[i]))) continue;
            const std::string X = px(xs(ser.x[i])), Y = px(ys(ser.y[i]));
            pts += X + "," + Y + " ";
            if (count <= 60)
                dots += "<circle cx=\"" + X + "\" cy=\"" + Y + "\" r=\"2.6\" fill=\"" + colors[k] + "\"><title>" +
                        html_escape(ser.name) + ": " +
                        html_escape(cat && size_t(ser.x[i]) < c.x_categories.size() ? c.x_categories[size_t(ser.x[i])]
                                                                                       : tick_label(ser.x[i])) +
                        " → " + html_escape(fmt("%.6g", ser.y[i])) + "</title></circle>";
        }
        if (!pts.empty()) pts.pop_back();
        const bool dashed = legend[k].kind == LegendEntry::dashed;
        s += "<polyline id=\"" + html_escape(c.id) + "-" + std::to_string(k) + "\" data-series=\"" + html_escape(ser.name) +
             "\" points=\"" + pts + "\" fill=\"none\" stroke=\"" + colors[k] +
             "\" stroke-width=\"1.8\" stroke-linejoin=\"round\"" + (dashed ? " stroke-dasharray=\"6,3\"" : "") +
             "><title>" + html_escape(ser.name) + "</title></polyline>\n" + dots + "\n";
    }
    if (show_legend) s += legend_svg(legend, c.width + 4, f.top);
    return s + "</svg>\n";
}

std::string svg_histogram(const Histogram& h) {
    const size_t n = std::min(h.counts.size(), h.edges.empty() ? 0 : h.edges.size() - 1);
    if (n == 0) return no_data_svg(h.id, h.title, h.width, h.height);
    Frame f;
    if (!h.note.empty()) f.top += 16;
    double cmax = 0;
    for (size_t i = 0; i < n; ++i) cmax = std::max(cmax, h.counts[i]);
    double xlo = h.edges.front(), xhi = h.edges[n];
    for (const auto& m : h.markers) xlo = std::min(xlo, m.at), xhi = std::max(xhi, m.at);
    std::vector<LegendEntry> legend;
    for (const auto& m : h.markers)
        if (!m.label.empty()) legend.push_back({m.label, "#d62728", LegendEntry::dashed});
    double legend_w = 0;
    for (const auto& e : legend) legend_w = std::max(legend_w, 36 + text_width(e.name, 12));
    const int W = h.width + int(std::ceil(legend_w));
    Scale xs{false, xlo, xhi, f.left, double(h.width) - f.right};
    Scale ys{false, 0, cmax > 0 ? cmax * 1.06 : 1, h.height - f.bottom, f.top};
    const auto yt = nice_ticks(0, ys.hi, 5);
    const auto xt = nice_ticks(xlo, xhi, std::max(2, h.width / 80));

    std::string s = svg_open(h.id, W, h.height, h.title);
    s += "<text x=\"" + px(f.left) + "\" y=\"20\" font-size=\"14\" font-weight=\"bold\" fill=\"#222\">" +
         html_escape(h.title) + "</text>\n";
    if (!h.note.empty())
        s += "<text x=\"" + px(f.left) + "\" y=\"38\" font-size=\"12\" fill=\"#666\">" + html_escape(h.note) + "</text>\n";
    s += axes_svg(xs, ys, xt, {}, yt, h.x_label, h.y_label, f, h.width, h.height);
    for (size_t i = 0; i < n; ++i) {
        if (h.counts[i] <= 0) continue;
        const double x0 = xs(h.edges[i]), x1 = xs(h.edges[i + 1]), y = ys(h.counts[i]);
        s += "<rect class=\"bar\" x=\"" + px(x0 + 0.5) + "\" y=\"" + px(y) + "\" width=\"" + px(std::max(0.5, x1 - x0 - 1)) +
             "\" height=\"" + px(ys(0) - y) + "\" fill=\"#4c78a8\"><title>[" + tick_label(h.edges[i]) + ", " +
             tick_label(h.edges[i + 1]) + "): " + fmt("%.0f", h.counts[i]) + "</title></rect>\n";
    }
    for (const auto& m : h.markers) {
        const double x = xs(m.at);
        s += "<line x1=\"" + px(x) + "\" y1=\"" + px(f.top) + "\" x2=\"" + px(x) + "\" y2=\"" + px(h.height - f.bottom) +
             "\" stroke=\"#d62728\" stroke-width=\"2\" stroke-dasharray=\"5,3\"><title>" + html_escape(m.label) +
             "</title></line>\n";
    }
    if (!legend.empty()) s += legend_svg(legend, h.width + 4, f.top);
    return s + "</svg>\n";
}

// ----------------------------------------------------------------------------------- metrics

const std::vector<double>* MetricsLog::get(const std::string& key) const {
    for (size_t i = 0; i < keys.size(); ++i)
        if (keys[i] == key) return &columns[i];
    return nullptr;
}

MetricsLog metrics_parse(const std::string& text, const std::string& name) {
    MetricsLog m;
    std::map<std::string, size_t> index;
    size_t line_no = 0, pos = 0;
    while (pos < text.size()) {
        size_t end = text.find('\n', pos);
        if (end == std::string::npos) end = text.size();
        const std::string line = text.substr(pos, end - pos);
        pos = end + 1;
        ++line_no;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        nlohmann::ordered_json j;  // keeps the file's key order
        try {
            j = nlohmann::ordered_json::parse(line);
        } catch (const nlohmann::json::exception&) {
            throw Error(name + ": line " + std::to_string(line_no) + " is not valid JSON; the file is damaged");
        }
        check(j.is_object(), name + ": line " + std::to_string(line_no) + " is not a JSON object");
        for (const auto& [k, v] : j.items()) {
            if (!v.is_number()) continue;
            auto it = index.find(k);
            if (it == index.end()) {
                it = index.emplace(k, m.keys.size()).first;
                m.keys.push_back(k);
                m.columns.emplace_back(m.lines, kNaN);
            }
        }
        for (auto& col : m.columns) col.push_back(kNaN);
        for (const auto& [k, v] : j.items())
            if (v.is_number()) m.columns[index[k]].back() = v.get<double>();
        ++m.lines;
    }
    return m;
}

// ------------------------------------------------------------------------------ page helpers

namespace {

const char* kStyle = R"(
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Helvetica,Arial,sans-serif;margin:0;background:#f4f5f7;color:#222}
main{max-width:1260px;margin:0 auto;padding:12px 24px 40px}
h1{font-size:22px;margin:10px 0 2px}
h2{font-size:17px;margin:2px 0 10px}
.sub{color:#555;margin:0 0 8px;font-size:14px}
nav{font-size:13px;margin:6px 0 0}nav a{margin-right:14px;color:#1f5fa8;text-decoration:none}
section{background:#fff;border:1px solid #e0e3e8;border-radius:8px;padding:12px 20px 18px;margin:14px 0}
.row{display:flex;flex-wrap:wrap;gap:14px 28px;align-items:flex-start}
table{border-collapse:collapse;font-size:13px}
td,th{padding:3px 8px;border-bottom:1px solid #eceef1;text-align:right;white-space:nowrap}
th.wrap{white-space:normal;vertical-align:bottom}
th{background:#f3f4f6;font-weight:600}
.l{text-align:left}
tr.failed td{background:#fdecec}
.note{color:#666;font-size:13px;margin:4px 0 8px}
figure{margin:0}figcaption{color:#555;font-size:13px;margin:4px 0}
img.pix{image-rendering:pixelated;max-width:100%;border:1px solid #ddd}
details{font-size:13px;margin-top:8px}pre{font-size:12px;background:#f7f7f9;padding:8px;overflow:auto;max-height:320px}
h3{font-size:14px;margin:14px 0 4px;color:#333}
.scroll{overflow-x:auto}
.legend{display:flex;flex-wrap:wrap;gap:4px 18px;font-size:13px;color:#333;margin:2px 0 6px}
.legend span{display:inline-flex;align-items:center;gap:6px}
)";

std::string page_open(const std::string& title, const std::string& subtitle,
                      const std::vector<std::pair<std::string, std::string>>& nav) {
    std::string s = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>" + html_escape(title) +
                    "</title>\n<style>" + kStyle + "</style></head>\n<body>\n<main>\n<h1>" + html_escape(title) +
                    "</h1>\n<p class=\"sub\">" + subtitle + "</p>\n<nav>";
    for (const auto& [id, name] : nav) s += "<a href=\"#" + id + "\">" + html_escape(name) + "</a>";
    return s + "</nav>\n";
}

// Once loaded, the page checks that it has charts and that every picture decoded, and says so
// on the console (the browser test looks for "sae-report: ready").
std::string page_close() {
    return "</main>\n<script>\nwindow.addEventListener('load', function () {\n"
           "  var charts = document.querySelectorAll('svg.chart').length, broken = 0;\n"
           "  for (var i = 0; i < document.images.length; i++) {\n"
           "    var im = document.images[i];\n"
           "    if (!im.complete || im.naturalWidth === 0) broken++;\n"
           "  }\n"
           "  var ok = charts > 0 && broken === 0;\n"
           "  document.body.setAttribute('data-report', ok ? 'ready' : 'broken');\n"
           "  (ok ? console.log : console.error)('sae-report: ' + (ok ? 'ready' : 'broken') + ' (' + charts +\n"
           "      ' charts, ' + document.images.length + ' pictures, ' + broken + ' broken)');\n"
           "});\n</script>\n</body></html>\n";
}

std::string png_img(const std::string& png, const std::string& id, const std::string& alt, int64_t width) {
    return "<img class=\"pix\" id=\"" + id + "\" alt=\"" + html_escape(alt) + "\" width=\"" + std::to_string(width) +
           "\" src=\"data:image/png;base64," + base64_encode(png) + "\">";
}

std::string table_rows(const std::vector<std::pair<std::string, std::string>>& rows) {
    std::string s;
    for (const auto& [k, v] : rows) s += "<tr><td class=\"l\">" + html_escape(k) + "</td><td>" + html_escape(v) + "</td></tr>\n";
    return s;
}

bool is_perfect_square(int64_t n, int64_t& side) {
    side = int64_t(std::llround(std::sqrt(double(n))));
    return side >= 2 && side * side == n;
}

// Each tile about 56 pixels wide.
int64_t tile_scale(int64_t side) { return std::max<int64_t>(1, 56 / side); }

// Originals (top row) and reconstructions (bottom row) with one grey scale for all: the
// originals' [min, max] → [0, 255], a 1-pixel separator of value 64.
Gray8 recon_grid(const float* X, const float* Xhat, int64_t n, int64_t side, int64_t scale) {
    float lo = INFINITY, hi = -INFINITY;
    for (int64_t i = 0; i < n * side * side; ++i) lo = std::min(lo, X[i]), hi = std::max(hi, X[i]);
    if (!(hi > lo)) hi = lo + 1;
    const int64_t t = side * scale;
    Gray8 g;
    g.width = n * (t + 1) + 1;
    g.height = 2 * (t + 1) + 1;
    g.pixels.assign(size_t(g.width * g.height), 64);
    for (int row = 0; row < 2; ++row)
        for (int64_t k = 0; k < n; ++k) {
            const float* src = (row == 0 ? X : Xhat) + k * side * side;
            for (int64_t r = 0; r < t; ++r)
                for (int64_t c = 0; c < t; ++c) {
                    const double v = (double(src[(r / scale) * side + c / scale]) - lo) / (hi - lo);
                    const int64_t y = 1 + row * (t + 1) + r, x = 1 + k * (t + 1) + c;
                    g.pixels[size_t(y * g.width + x)] = uint8_t(std::lround(255 * std::clamp(v, 0.0, 1.0)));
                }
        }
    return g;
}

std::string jstr(const nlohmann::json& cfg, const char* key) {
    if (!cfg.contains(key)) return "";
    const auto& v = cfg[key];
    if (v.is_string()) return v.get<std::string>();
    if (v.is_number_float()) return tick_label(v.get<double>());
    return v.dump();
}

// The settings worth showing for this model (the rest are in the full cfg.json below).
std::vector<std::pair<std::string, std::string>> key_settings(const nlohmann::json& cfg) {
    const bool classic = jstr(cfg, "architecture") == "classic";
    std::vector<std::string> keys = {"data", "max_samples", "normalize", "architecture", "d_in", "d_sae"};
    if (classic) keys.insert(keys.end(), {"encoder_activation", "decoder_activation"});
    keys.insert(keys.end(), {"tied", "sparsity"});
    const std::string sp = jstr(cfg, "sparsity"), opt = jstr(cfg, "optimizer");
    if (sp == "kl") keys.insert(keys.end(), {"rho", "beta"});
    if (sp == "l1") keys.push_back("l1_coefficient");
    if (sp == "topk" || sp == "batchtopk") keys.push_back("k");
    if (sp == "jumprelu") keys.insert(keys.end(), {"l0_coefficient", "bandwidth"});
    const std::string arch = jstr(cfg, "architecture");
    if (arch == "gated" && sp != "l1") keys.push_back("l1_coefficient");
    if (arch == "matryoshka_batchtopk") keys.insert(keys.end(), {"k", "matryoshka_groups", "matryoshka_weights"});
    if (classic) keys.push_back("weight_decay");
    if (cfg.contains("corruption") && jstr(cfg, "corruption") != "none") keys.insert(keys.end(), {"corruption", "corruption_level"});
    keys.push_back("optimizer");
    if (opt == "lbfgs") {
        keys.push_back("max_iterations");
    } else {
        keys.insert(keys.end(), {"lr", "lr_schedule", "batch_size", "epochs"});
    }
    keys.insert(keys.end(), {"seed", "threads"});
    std::vector<std::pair<std::string, std::string>> rows;
    for (const auto& k : keys)
        if (cfg.contains(k)) rows.emplace_back(k, jstr(cfg, k.c_str()));
    return rows;
}

struct RunInfo {
    nlohmann::json cfg;
    MetricsLog metrics;
    nlohmann::json last_line;  // the last metrics line (for the density histogram without data)
};

RunInfo read_run(const std::string& dir) {
    RunInfo r;
    for (const char* f : {"cfg.json", "metrics.jsonl", "model.safetensors"})
        check(fs::exists(dir + "/" + f), dir + "/" + f + ": missing; pass a directory written by `sae train` (or `sae sweep`)");
    try {
        r.cfg = nlohmann::json::parse(read_file(dir + "/cfg.json"));
    } catch (const nlohmann::json::exception&) {
        throw Error(dir + "/cfg.json: not valid JSON; the run directory is damaged");
    }
    const std::string text = read_file(dir + "/metrics.jsonl");
    r.metrics = metrics_parse(text, dir + "/metrics.jsonl");
    size_t end = text.find_last_not_of("\n\r \t");
    if (end != std::string::npos) {
        const size_t start = text.rfind('\n', end);
        r.last_line = nlohmann::json::parse(text.substr(start == std::string::npos ? 0 : start + 1, end + 1 - (start == std::string::npos ? 0 : start + 1)));
    }
    return r;
}

const std::vector<double>& steps_of(const MetricsLog& m) {
    static const std::vector<double> none;
    const auto* s = m.get("step");
    return s ? *s : none;
}

bool all_zero_or_missing(const std::vector<double>& v) {
    for (double x : v)
        if (std::isfinite(x) && x != 0) return false;
    return true;
}

// Chart of every J term against the step.
std::string cost_chart(const MetricsLog& m, const std::string& id, const std::string& step_name) {
    LineChart c;
    c.id = id;
    c.title = "Cost terms";
    c.x_label = step_name;
    c.y_label = "J";
    c.width = 520;
    bool positive = true;
    for (const auto& key : m.keys) {
        if (key.rfind("J_", 0) != 0) continue;
        const auto& y = *m.get(key);
        if (all_zero_or_missing(y)) continue;
        c.series.push_back({key, steps_of(m), y});
        for (double v : y)
            if (std::isfinite(v) && v <= 0) positive = false;
    }
    // J_total first and dark.
    for (size_t i = 0; i < c.series.size(); ++i)
        if (c.series[i].name == "J_total") {
            std::rotate(c.series.begin(), c.series.begin() + long(i), c.series.begin() + long(i) + 1);
            c.series[0].color = "#222";
        }
    c.log_y = positive;
    return svg_line_chart(c);
}

}  // namespace

// ---------------------------------------------------------------------------------- run page

namespace {

// Streamed training data (shuffle_buffer > 0: .npy shards, e.g. a harvest's): the first samples
// of the stream's first epoch, drawn as training drew them (seed, shuffle buffer), at most
// max_samples (0: kStreamedRows), normalised as the model does.
constexpr int64_t kStreamedRows = 65536;
Matrix<float> streamed_sample(const Config& cfg, const Normalizer& norm, int64_t max_samples, std::string* note) {
    StreamOptions so;
    so.pattern = cfg.data;
    so.buffer_samples = cfg.shuffle_buffer;
    so.seed = cfg.seed;
    so.dtype_hint = cfg.data_dtype == "bfloat16" ? "bfloat16" : "";
    StreamSource src(so);
    const int64_t total = src.num_samples();
    const int64_t n = std::min(total, max_samples > 0 ? max_samples : kStreamedRows);
    Matrix<float> X(n, src.d_in());
    src.next_batch(X.data.data(), n);
    check_finite(X, cfg.data);
    normalizer_apply(norm, X, SourceType::f32);
    check_finite(X, cfg.data + " (after normalize = " + normalize_name(norm.mode) + ")");
    if (n < total)
        *note = "Streamed training data: the metrics, histograms and pictures below are over the first " +
                std::to_string(n) + " of its " + std::to_string(total) +
                " samples, in the order training drew them (--max-samples N for more).";
    return X;
}

// The #features section (src/report_browser.cpp): from the harvest given (--harvest) or found
// through cfg.json data, else from the training images (X, H: null when there are none); "" when
// there is neither.
std::string features_section(const std::string& dir, const SavedModel& model, const ReportOptions& opt,
                             const Matrix<float>* X, const Matrix<float>* H, int64_t side,
                             std::vector<std::string>& warnings) {
    BrowserOptions bo;
    bo.latents = opt.latents;
    bo.contexts = opt.contexts;
    std::string harvest = opt.harvest, hook = opt.hook, found_hook;
    if (harvest.empty()) {
        try {
            std::string found;
            if (harvest_discover(model.cfg.data, &found, &found_hook)) harvest = found;
        } catch (const std::exception& e) {
            warnings.push_back(std::string(e.what()) + " (found through cfg.json data; the feature browser is left out)");
        }
        check(!harvest.empty() || hook.empty(), dir + "/cfg.json: data " + one_line(model.cfg.data) +
                                                    " is not in a harvest directory; pass --harvest DIR with --hook");
    } else {
        std::string found;
        try {
            if (!harvest_discover(model.cfg.data, &found, &found_hook) ||
                fs::weakly_canonical(found) != fs::weakly_canonical(harvest))
                found_hook.clear();
        } catch (const std::exception&) {
            found_hook.clear();
        }
    }
    if (!harvest.empty()) {
        const Harvest h = harvest_read(harvest);
        if (hook.empty()) hook = found_hook;
        if (hook.empty() && h.hooks.size() == 1) hook = h.hooks[0].name;
        if (hook.empty()) {
            std::string names;
            for (const auto& k : h.hooks) names += (names.empty() ? "" : ", ") + k.name;
            throw Error(harvest + "/manifest.json: " + std::to_string(h.hooks.size()) + " hooks (" + names +
                        ") and the run's data is none of them; pass --hook NAME");
        }
        if (!h.complete) warnings.push_back(harvest + "/manifest.json: the harvest is not complete; browsing the rows it has");
        return browser_section(browser_from_harvest(model, h, hook, bo));
    }
    if (X && H) return browser_section(browser_from_images(H->data.data(), X->data.data(), X->rows, H->cols, side,
                                                           config_active_threshold(model.cfg), bo));
    return "";
}

std::vector<std::string> write_run_report(const std::string& dir, const ReportOptions& opt,
                                          std::vector<std::string>& warnings) {
    const RunInfo info = read_run(dir);
    SavedModel model = model_load(dir);
    const Config& cfg = model.cfg;
    const bool lbfgs = cfg.optimizer == "lbfgs";
    const std::string step_name = lbfgs ? "L-BFGS iteration" : "step";
    const int64_t d_in = model.objective->d_in(), d_sae = model.objective->d_sae();
    const bool classic = model.objective->architecture() == "classic";
    const bool kl = classic && cfg.sparsity == "kl";

    // The training data, evaluated as `sae eval` does.
    Matrix<float> X;
    bool have_data = false;
    std::string data_problem;
    std::string data_note;
    try {
        const int64_t max_samples = opt.max_samples >= 0 ? opt.max_samples : cfg.max_samples;
        X = cfg.shuffle_buffer > 0 ? streamed_sample(cfg, model.norm, max_samples, &data_note)
                                   : dataset_load(cfg.data, model.norm, max_samples);
        check(X.cols == d_in, cfg.data + ": samples have " + std::to_string(X.cols) + " features but the model has d_in = " +
                                  std::to_string(d_in));
        have_data = true;
    } catch (const std::exception& e) {
        data_problem = e.what();
        warnings.push_back("the training data could not be loaded (" + data_problem +
                           "); the report leaves out the sections that need it");
    }
    set_num_threads(int(cfg.threads));
    auto be = backend_create(cfg.backend);
    EvalResult ev;
    std::vector<double> rho_hat;
    Matrix<float> H;
    if (have_data) {
        ev = evaluate(*be, *model.objective, cfg, model.params.data(), X, config_active_threshold(cfg));
        H = encode(*be, *model.objective, model.params.data(), X);
        rho_hat.assign(size_t(d_sae), 0.0);
        for (int64_t i = 0; i < H.rows; ++i)
            for (int64_t j = 0; j < d_sae; ++j) rho_hat[size_t(j)] += H(i, j);
        for (auto& r : rho_hat) r /= double(std::max<int64_t>(1, H.rows));
    }

    std::vector<std::string> written;
    std::vector<std::pair<std::string, std::string>> nav = {{"summary", "Summary"}, {"curves", "Training curves"},
                                                            {"activity", "Activity"}};
    nav.emplace_back("latents", "Latents");
    int64_t side = 0;
    const bool square = is_perfect_square(d_in, side);
    const std::string features = features_section(dir, model, opt, square && have_data ? &X : nullptr,
                                                  square && have_data ? &H : nullptr, side, warnings);
    if (!features.empty()) nav.emplace_back("features", "Features");
    if (square) nav.emplace_back("filters", "Filters");
    if (square && have_data) nav.emplace_back("reconstructions", "Reconstructions");

    std::string subtitle = html_escape(model.objective->architecture() + " · " + std::to_string(d_in) + " → " +
                                       std::to_string(d_sae) + " → " + std::to_string(d_in));
    if (classic) subtitle += " · " + html_escape(cfg.encoder_activation) + " encoder";
    subtitle += " · sparsity " + html_escape(cfg.sparsity);
    if (kl) subtitle += " (ρ = " + html_escape(tick_label(cfg.rho)) + ", β = " + html_escape(tick_label(cfg.beta)) + ")";
    if (!classic && (cfg.sparsity == "topk" || cfg.sparsity == "batchtopk" || cfg.architecture == "matryoshka_batchtopk"))
        subtitle += " (k = " + std::to_string(cfg.k) + ")";
    if (classic) subtitle += " · λ = " + html_escape(tick_label(cfg.weight_decay));
    subtitle += " · " + html_escape(cfg.optimizer) + " · " + std::to_string(info.metrics.lines) + " metrics lines";
    std::string html = page_open("sae report: " + fs::path(dir).lexically_normal().filename().string(), subtitle, nav);
    if (!data_note.empty()) html += "<p class=\"note\">" + html_escape(data_note) + "</p>\n";
    if (!have_data)
        html += "<p class=\"note\">The training data could not be loaded (" + html_escape(data_problem) +
                "): final metrics are the last metrics line's; the ρ̂ histogram and the reconstructions are left out.</p>\n";

    // Summary.
    html += "<section id=\"summary\"><h2>Summary</h2><div class=\"row\">\n";
    html += "<table><tr><th class=\"l\" colspan=\"2\">Settings</th></tr>\n" + table_rows(key_settings(info.cfg)) + "</table>\n";
    std::vector<std::pair<std::string, std::string>> final_rows;
    std::string final_title;
    if (have_data) {
        final_title = "Final metrics (evaluate over " + std::to_string(ev.n) + " training samples)";
        final_rows = {{"J_total", num(ev.J.total(), "%.6g")}, {"J_rec", num(ev.J.rec, "%.6g")},
                      {"J_weight_decay", num(ev.J.weight_decay, "%.6g")}, {"J_sparsity", num(ev.J.sparsity, "%.6g")}};
        if (ev.J.aux != 0) final_rows.emplace_back("J_aux", num(ev.J.aux, "%.6g"));
        final_rows.insert(final_rows.end(),
                          {{"MSE", num(ev.mse, "%.5g")},
                           {"FVU (fraction of variance unexplained)", num(ev.fvu, "%.4f")},
                           {"explained variance (1 − FVU)", num(ev.explained_variance, "%.4f")},
                           {"cosine similarity of x and x̂ (mean)", num(ev.cossim, "%.4f")},
                           {"L2 ratio ‖x̂‖/‖x‖ (mean)", num(ev.l2_ratio, "%.4f")},
                           {"relative reconstruction bias", num(ev.relative_reconstruction_bias, "%.4f")},
                           {"L0 (active latents per sample)", num(ev.l0, "%.3f")},
                           {"mean ρ̂ (min – max)", num(ev.mean_activation, "%.4f") + " (" + num(ev.rho_hat_min, "%.4f") +
                                                     " – " + num(ev.rho_hat_max, "%.4f") + ")"},
                           {"dead fraction (never active)", num(ev.dead_fraction, "%.3f")},
                           {"dense fraction (active on > 10%)", num(ev.dense_fraction, "%.3f")},
                           {"active threshold", tick_label(config_active_threshold(cfg))}});
    } else {
        final_title = "Last metrics line";
        for (const char* k : {"step", "J_total", "J_rec", "J_weight_decay", "J_sparsity", "fvu", "l0", "rho_hat_mean",
                              "dead_fraction"})
            if (info.last_line.contains(k) && info.last_line[k].is_number())
                final_rows.emplace_back(k, num(info.last_line[k].get<double>(), "%.6g"));
    }
    const auto& steps = steps_of(info.metrics);
    if (!steps.empty()) final_rows.emplace_back("last logged " + step_name, num(steps.back(), "%.0f"));
    html += "<table><tr><th class=\"l\" colspan=\"2\">" + html_escape(final_title) + "</th></tr>\n" + table_rows(final_rows) +
            "</table>\n</div>\n<details><summary>All settings (cfg.json)</summary><pre>" + html_escape(info.cfg.dump(2)) +
            "</pre></details></section>\n";

    // Training curves.
    html += "<section id=\"curves\"><h2>Training curves</h2><div class=\"row\">\n";
    html += cost_chart(info.metrics, "chart-cost", step_name);
    const auto* lr = info.metrics.get("lr");
    if (lr && !all_zero_or_missing(*lr)) {
        LineChart c;
        c.id = "chart-lr";
        c.title = "Learning rate";
        c.x_label = step_name;
        c.y_label = "learning rate";
        c.width = 420;
        c.series.push_back({"lr", steps, *lr});
        html += svg_line_chart(c);
    } else {
        html += "<p class=\"note\" style=\"max-width:320px\">" +
                std::string(lbfgs ? "L-BFGS picks each step's length by a line search: there is no learning rate to plot."
                                  : "No learning rate was logged.") +
                "</p>\n";
    }
    html += "</div><p class=\"note\">" +
            std::string(lbfgs ? "With L-BFGS each point is over the whole training set at that iteration."
                              : "With minibatch optimisers each point is the mean over the steps since the previous line.") +
            " Terms that are zero throughout are not drawn.</p></section>\n";

    // Activity over training.
    html += "<section id=\"activity\"><h2>Activity during training</h2><div class=\"row\">\n";
    {
        LineChart c;
        c.id = "chart-rho";
        c.title = "ρ̂ⱼ across latents: mean and range";
        c.x_label = step_name;
        c.y_label = "ρ̂";
        c.width = 420;
        const auto* mean = info.metrics.get("rho_hat_mean");
        const auto* lo = info.metrics.get("rho_hat_min");
        const auto* hi = info.metrics.get("rho_hat_max");
        if (lo && hi) c.bands.push_back({"min – max", steps, *lo, *hi, "#1f77b4"});
        if (mean) c.series.push_back({"mean", steps, *mean, false, "#1f77b4"});
        if (kl) c.markers.push_back({cfg.rho, "target ρ = " + tick_label(cfg.rho), true});
        html += svg_line_chart(c);
    }
    {
        LineChart c;
        c.id = "chart-fvu";
        c.title = "Reconstruction and dead latents";
        c.x_label = step_name;
        c.y_label = "fraction";
        c.width = 380;
        if (const auto* v = info.metrics.get("fvu")) c.series.push_back({"FVU", steps, *v});
        if (const auto* v = info.metrics.get("dead_fraction")) c.series.push_back({"dead fraction", steps, *v});
        html += svg_line_chart(c);
    }
    if (const auto* v = info.metrics.get("l0")) {
        LineChart c;
        c.id = "chart-l0";
        c.title = "L0: active latents per sample";
        c.x_label = step_name;
        c.y_label = "L0";
        c.width = 420;
        c.series.push_back({"L0", steps, *v});
        html += svg_line_chart(c);
    }
    html += "</div><p class=\"note\">A latent is active on a sample when h &gt; " +
            html_escape(tick_label(config_active_threshold(cfg))) +
            "; dead = never active in the window of that line. FVU = Σ‖x̂ − x‖² / Σ‖x − x̄‖².</p></section>\n";

    // Latent statistics: ρ̂ histogram and feature density.
    html += "<section id=\"latents\"><h2>Latents</h2><div class=\"row\">\n";
    if (classic && have_data) {
        double hi = 0;
        for (double r : rho_hat) hi = std::max(hi, r);
        if (kl) hi = std::max(hi, cfg.rho * 1.5);
        hi = hi > 0 ? hi * 1.02 : 1;
        const int bins = 40;
        Histogram h;
        h.id = "chart-rho-hat";
        h.title = "ρ̂ⱼ: mean activation of each latent";
        h.x_label = "ρ̂ⱼ = mean over samples of hⱼ";
        for (int b = 0; b <= bins; ++b) h.edges.push_back(hi * b / bins);
        h.counts.assign(bins, 0);
        for (double r : rho_hat) h.counts[size_t(std::min(bins - 1, int(r / hi * bins)))] += 1;
        h.width = 440;
        h.note = "mean " + num(ev.mean_activation, "%.4f") + ", min " + num(ev.rho_hat_min, "%.4f") + ", max " +
                 num(ev.rho_hat_max, "%.4f");
        if (kl) h.markers.push_back({cfg.rho, "target ρ = " + tick_label(cfg.rho)});
        html += "<div id=\"rho-hat\">" + svg_histogram(h) + "</div>\n";
    }

    // Feature density.
    {
        Stats::Histogram dh;
        int64_t n_samples = 0;
        if (have_data) {
            dh = ev.density;
            n_samples = ev.n;
        } else if (info.last_line.contains("density_log10_hist")) {
            const auto& j = info.last_line["density_log10_hist"];
            dh.edges = j.value("edges", std::vector<double>{});
            dh.counts = j.value("counts", std::vector<int64_t>{});
            dh.never = j.value("never", int64_t(0));
        }
        Histogram h;
        h.id = "chart-density";
        h.title = "Feature density: how often each latent fires";
        h.x_label = "log10(firing frequency)";
        // From the lowest frequency the sample count can show (1/N) up.
        size_t first = 0;
        if (n_samples > 0)
            while (first + 1 < dh.counts.size() && dh.edges[first + 1] <= std::log10(1.0 / double(n_samples))) ++first;
        for (size_t i = first; i < dh.counts.size() && i + 1 < dh.edges.size(); ++i) {
            if (h.edges.empty()) h.edges.push_back(dh.edges[i]);
            h.edges.push_back(dh.edges[i + 1]);
            h.counts.push_back(double(dh.counts[i]));
        }
        int64_t fired = 0;
        for (auto cnt : dh.counts) fired += cnt;
        h.width = 500;
        h.note = std::to_string(dh.never) + " of " + std::to_string(fired + dh.never) + " latents never fired (not drawn)";
        html += "<div id=\"density\">" + svg_histogram(h) + "</div>\n</div>\n<p class=\"note\">";
        if (classic && have_data)
            html += "ρ̂ⱼ: the mean activation of latent j over the " + std::to_string(X.rows) + " training samples" +
                    (kl ? std::string(", which the KL penalty pulls towards ρ") : std::string()) + ". ";
        html += "Firing frequency: the fraction of " +
                (have_data ? "the " + std::to_string(n_samples) + " training samples" : std::string("the last metrics window's samples")) +
                " on which a latent is active (h &gt; " + html_escape(tick_label(config_active_threshold(cfg))) +
                "), in bins of 0.5 in log10.</p></section>\n";
    }

    // The feature browser, then the filters.
    html += features;
    if (square) {
        const std::string which = classic ? "encoder" : "decoder";
        const Matrix<float> F = model_filters(model, which);
        const int64_t shown = std::min<int64_t>(F.rows, 400);
        GridOptions go;
        go.scale = tile_scale(side);
        const Gray8 grid = filter_grid(F.data.data(), shown, side, side, go);
        const std::string png = png_encode(grid);
        write_file_atomic(dir + "/features.png", png);
        written.push_back(dir + "/features.png");
        html += "<section id=\"filters\"><h2>Learnt filters</h2><figure>" +
                png_img(png, "img-features", "learnt features", grid.width) + "<figcaption>" +
                (classic ? "Encoder filters (column j of W_enc, the input that most excites latent j)"
                         : "Decoder directions (row j of W_dec)") +
                (shown < F.rows ? ", the first " + std::to_string(shown) + " of " + std::to_string(F.rows)
                                : ", all " + std::to_string(shown)) +
                ", each scaled on its own: mid-grey = 0, white = its largest positive weight, black = its most negative. "
                "Also in features.png.</figcaption></figure></section>\n";
    }

    // Reconstructions.
    if (square && have_data) {
        const int64_t n = std::min<int64_t>(16, X.rows);
        Matrix<float> Xs(n, d_in);
        std::copy(X.data.begin(), X.data.begin() + n * d_in, Xs.data.begin());
        model.objective->set_training(false);
        model.objective->reserve(n);
        model.objective->cost(*be, model.params.data(), Xs.data.data(), n, nullptr);
        const float* Xhat = model.objective->reconstruction();
        const Gray8 g = recon_grid(Xs.data.data(), Xhat, n, side, tile_scale(side));
        const std::string png = png_encode(g);
        write_file_atomic(dir + "/reconstructions.png", png);
        written.push_back(dir + "/reconstructions.png");
        html += "<section id=\"reconstructions\"><h2>Reconstructions</h2><figure>" +
                png_img(png, "img-reconstructions", "samples and reconstructions", g.width) +
                "<figcaption>Top: the first " + std::to_string(n) +
                " training samples; bottom: their reconstructions x̂. One grey scale for both rows (the samples' minimum "
                "→ black, maximum → white). Also in reconstructions.png.</figcaption></figure></section>\n";
    }

    html += page_close();
    write_file_atomic(dir + "/report.html", html);
    written.insert(written.begin(), dir + "/report.html");
    return written;
}

// -------------------------------------------------------------------------------- sweep page

const std::vector<std::pair<std::string, std::string>> kSweepMetrics = {
    {"J_rec", "J_rec (reconstruction)"}, {"J_sparsity", "J_sparsity"}, {"mean_rho_hat", "mean ρ̂"},
    {"l0", "L0 (active per sample)"},    {"fvu", "FVU"},               {"dead_fraction", "dead fraction"},
    {"accuracy", "accuracy"}};

bool parse_number(const std::string& s, double& v) {
    if (s.empty()) return false;
    char* end = nullptr;
    v = std::strtod(s.c_str(), &end);
    return end == s.c_str() + s.size() && std::isfinite(v);
}

std::vector<std::string> write_sweep_report(const std::string& dir, std::vector<std::string>& warnings) {
    const CsvTable t = csv_parse(read_file(dir + "/sweep.csv"), dir + "/sweep.csv");
    const int c_run = t.column("run"), c_status = t.column("status");
    check(c_run == 0 && c_status > 0, dir + "/sweep.csv: expected the columns run, <swept keys>, status, ...; "
                                            "the file was not written by `sae sweep`");
    std::vector<std::string> keys(t.header.begin() + 1, t.header.begin() + c_status);
    std::vector<std::pair<int, std::string>> metrics;  // column, title
    for (const auto& [k, title] : kSweepMetrics)
        if (t.column(k) >= 0) metrics.emplace_back(t.column(k), title);
    size_t failed = 0;
    for (const auto& r : t.rows) failed += r[size_t(c_status)] != "ok";

    std::string subtitle = std::to_string(t.rows.size()) + " runs";
    for (const auto& k : keys) {
        std::vector<std::string> vals;
        for (const auto& r : t.rows) {
            const std::string& v = r[size_t(t.column(k))];
            if (std::find(vals.begin(), vals.end(), v) == vals.end()) vals.push_back(v);
        }
        std::string list;
        for (const auto& v : vals) list += (list.empty() ? "" : ", ") + v;
        subtitle += " · " + k + " ∈ {" + list + "}";
    }
    if (failed) subtitle += " · " + std::to_string(failed) + " failed";
    std::string html = page_open("sae sweep report: " + fs::path(dir).lexically_normal().filename().string(),
                                 html_escape(subtitle),
                                 {{"sweep-table", "Table"}, {"sweep-plots", "Metrics vs settings"}, {"sweep-curves", "Training curves"}});

    // Table.
    html += "<section id=\"sweep-table\"><h2>Runs</h2><div class=\"scroll\"><table>\n<tr>";
    for (size_t i = 0; i < t.header.size(); ++i) {
        // Long names may break after an underscore.
        std::string name = html_escape(t.header[i]);
        if (name.size() > 10)
            for (size_t p = name.find('_'); p != std::string::npos; p = name.find('_', p + 6)) name.insert(p + 1, "<wbr>");
        html += std::string("<th class=\"wrap") + (int(i) <= c_status ? " l" : "") + "\">" + name + "</th>";
    }
    html += "</tr>\n";
    for (const auto& r : t.rows) {
        html += r[size_t(c_status)] == "ok" ? "<tr>" : "<tr class=\"failed\">";
        for (size_t i = 0; i < r.size(); ++i) {
            double v = 0;
            std::string cell = html_escape(r[i]);
            if (int(i) == c_run) {  // "run-07" (the settings are in the next columns), linked to its report
                const size_t dash = r[i].find('-', 4);
                cell = "<span title=\"" + cell + "\">" + html_escape(r[i].substr(0, dash)) + "</span>";
                if (fs::exists(dir + "/" + r[i] + "/report.html"))
                    cell = "<a href=\"" + html_escape(r[i]) + "/report.html\">" + cell + "</a>";
            } else if (int(i) > c_status && parse_number(r[i], v))
                cell = num(v, t.header[i] == "time_s" ? "%.1f" : "%.4g");
            html += std::string("<td") + (int(i) <= c_status ? " class=\"l\"" : "") + ">" + cell + "</td>";
        }
        html += "</tr>\n";
    }
    html += "</table></div><p class=\"note\">Metrics evaluated over each run's training data (as <code>sae eval</code>); "
            "time_s = training wall time. Also in sweep.csv and sweep.md.</p></section>\n";

    // Metric against each swept key, one line per combination of the other keys.
    html += "<section id=\"sweep-plots\"><h2>Metrics against the swept settings</h2>\n";
    for (size_t ki = 0; ki < keys.size(); ++ki) {
        const int kc = t.column(keys[ki]);
        std::vector<std::string> xvals;
        for (const auto& r : t.rows)
            if (std::find(xvals.begin(), xvals.end(), r[size_t(kc)]) == xvals.end()) xvals.push_back(r[size_t(kc)]);
        bool numeric = true, positive = true;
        std::vector<double> xnum;
        for (const auto& v : xvals) {
            double x = 0;
            numeric &= parse_number(v, x);
            positive &= x > 0;
            xnum.push_back(x);
        }
        const bool logx = numeric && positive && xnum.size() >= 2 &&
                          *std::max_element(xnum.begin(), xnum.end()) >= 9.99 * *std::min_element(xnum.begin(), xnum.end());
        // One line per combination of the other keys' values, in order of appearance.
        std::vector<std::string> groups;
        std::vector<size_t> group_of_row;
        for (const auto& r : t.rows) {
            std::string g;
            for (size_t o = 0; o < keys.size(); ++o)
                if (o != ki) g += (g.empty() ? "" : ", ") + keys[o] + "=" + r[size_t(t.column(keys[o]))];
            const auto it = std::find(groups.begin(), groups.end(), g);
            group_of_row.push_back(size_t(it - groups.begin()));
            if (it == groups.end()) groups.push_back(g);
        }
        const bool rho_target = keys[ki] == "rho" && numeric && t.column("mean_rho_hat") >= 0;
        std::vector<std::pair<std::string, std::string>> extra;
        if (rho_target) extra.emplace_back("ρ̂ = ρ (the target, on the mean ρ̂ chart)", "#888");
        html += "<h3>against " + html_escape(keys[ki]) + "</h3>\n";
        if (groups.size() > 1 || !extra.empty()) html += html_legend(groups, extra);
        html += "<div class=\"row\">\n";
        for (const auto& [mc, mtitle] : metrics) {
            const std::string metric = t.header[size_t(mc)];
            LineChart c;
            c.id = "sweep-" + keys[ki] + "-" + metric;
            c.title = mtitle;
            c.x_label = keys[ki] + (logx ? " (log scale)" : "");
            c.y_label = metric;
            c.width = 350;
            c.height = 240;
            c.legend = false;
            c.log_x = logx;
            if (numeric) c.x_ticks = xnum;
            else c.x_categories = xvals;
            for (const auto& g : groups) c.series.push_back({g.empty() ? metric : g, {}, {}});
            for (size_t i = 0; i < t.rows.size(); ++i) {
                const auto& r = t.rows[i];
                double y = kNaN;
                if (r[size_t(c_status)] == "ok") parse_number(r[size_t(mc)], y);
                const size_t xi = size_t(std::find(xvals.begin(), xvals.end(), r[size_t(kc)]) - xvals.begin());
                auto& s = c.series[group_of_row[i]];
                s.x.push_back(numeric ? xnum[xi] : double(xi));
                s.y.push_back(y);
            }
            bool ypos = true;
            double ymin = INFINITY, ymax = 0;
            for (auto& s : c.series) {
                // Points in increasing x.
                std::vector<size_t> order(s.x.size());
                for (size_t i = 0; i < order.size(); ++i) order[i] = i;
                std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return s.x[a] < s.x[b]; });
                std::vector<double> x2, y2;
                for (size_t i : order) x2.push_back(s.x[i]), y2.push_back(s.y[i]);
                s.x = x2;
                s.y = y2;
                for (double y : s.y)
                    if (std::isfinite(y)) ypos &= y > 0, ymin = std::min(ymin, y), ymax = std::max(ymax, y);
            }
            c.log_y = ypos && ymax > 30 * ymin;
            if (rho_target && metric == "mean_rho_hat") c.series.push_back({"ρ̂ = ρ (target)", xnum, xnum, true, "#888"});
            html += svg_line_chart(c);
        }
        html += "</div>\n";
    }
    html += "</section>\n";

    // Training curves of every run.
    html += "<section id=\"sweep-curves\"><h2>Training curves of every run</h2>\n";
    LineChart jt, fv;
    jt.id = "sweep-curves-J_total";
    jt.title = "J_total";
    jt.y_label = "J_total";
    jt.log_y = true;
    fv.id = "sweep-curves-fvu";
    fv.title = "FVU";
    fv.y_label = "FVU";
    jt.width = fv.width = 530;
    jt.height = fv.height = 300;
    jt.legend = fv.legend = false;  // one legend above both
    std::vector<std::string> names;
    std::string step_name = "step";
    for (const auto& r : t.rows) {
        const std::string run_dir = dir + "/" + r[0];
        if (!fs::exists(run_dir + "/metrics.jsonl")) continue;
        MetricsLog m;
        try {
            m = metrics_parse(read_file(run_dir + "/metrics.jsonl"), run_dir + "/metrics.jsonl");
            if (fs::exists(run_dir + "/cfg.json") &&
                nlohmann::json::parse(read_file(run_dir + "/cfg.json")).value("optimizer", "") == "lbfgs")
                step_name = "L-BFGS iteration";
        } catch (const std::exception& e) {
            warnings.push_back(e.what());
            continue;
        }
        std::string name;
        for (const auto& k : keys) name += (name.empty() ? "" : ", ") + k + "=" + r[size_t(t.column(k))];
        names.push_back(name);
        const auto* J = m.get("J_total");
        const auto* F = m.get("fvu");
        jt.series.push_back({name, steps_of(m), J ? *J : std::vector<double>{}});
        fv.series.push_back({name, steps_of(m), F ? *F : std::vector<double>{}});
    }
    jt.x_label = fv.x_label = step_name;
    html += html_legend(names, {}) + "<div class=\"row\">\n" + svg_line_chart(jt) + svg_line_chart(fv) +
            "</div></section>\n";
    html += page_close();
    write_file_atomic(dir + "/report.html", html);
    return {dir + "/report.html"};
}

}  // namespace

std::vector<std::string> report_write(const std::string& dir, const ReportOptions& opt, std::vector<std::string>* warnings) {
    std::vector<std::string> local;
    std::vector<std::string>& warn = warnings ? *warnings : local;
    check(fs::is_directory(dir), dir + ": no such directory; pass the --out directory of `sae train` or `sae sweep`");
    if (fs::exists(dir + "/sweep.csv")) return write_sweep_report(dir, warn);
    if (fs::exists(dir + "/cfg.json") || fs::exists(dir + "/metrics.jsonl") || fs::exists(dir + "/model.safetensors"))
        return write_run_report(dir, opt, warn);
    throw Error(dir + ": neither a run directory (cfg.json, metrics.jsonl, model.safetensors) nor a sweep directory "
                      "(sweep.csv); pass the --out directory of `sae train` or `sae sweep`");
}

}  // namespace sae
