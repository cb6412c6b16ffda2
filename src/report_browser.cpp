// The feature browser of the run report (#features): what each latent responds to.
//
// Two sources. A harvest (docs/formats.md: manifest.json, .npy shards per hook, tokens,
// positions, vocab, unembed) is streamed in chunks and encoded twice (browser_from_harvest);
// training images come with their codes already computed (browser_from_images). Either way the
// result is a Browser: per chosen latent its firing count, activation histogram, top rows with
// their contexts shaded by that latent, and the tokens its decoder row promotes and suppresses.
// browser_section turns it into compact JSON that inline JS renders one latent at a time.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "sae/backend.hpp"
#include "sae/data.hpp"
#include "sae/error.hpp"
#include "sae/eval.hpp"
#include "sae/images.hpp"
#include "sae/io.hpp"
#include "sae/model_file.hpp"
#include "sae/report.hpp"

namespace fs = std::filesystem;

namespace sae {

// ------------------------------------------------------------------------------ the manifest

int64_t report_latents_parse(const std::string& text) {
    if (text == "all") return -1;
    char* end = nullptr;
    const long long v = std::strtoll(text.c_str(), &end, 10);
    check(!text.empty() && end == text.c_str() + text.size() && v >= 1,
          "--latents: '" + one_line(text) + "' is neither a count >= 1 nor 'all'");
    return v;
}

const HarvestHook& Harvest::hook(const std::string& name) const {
    std::string names;
    for (const auto& h : hooks) {
        if (h.name == name) return h;
        names += (names.empty() ? "" : ", ") + h.name;
    }
    throw Error(dir + "/manifest.json: no hook '" + one_line(name) + "'; its hooks: " + names);
}

Harvest harvest_read(const std::string& dir) {
    const std::string path = dir + "/manifest.json";
    check(fs::is_regular_file(path), path + ": missing; pass a directory written by sae.torch.harvest");
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(read_file(path));
    } catch (const nlohmann::json::exception&) {
        throw Error(path + ": not valid JSON; the harvest directory is damaged");
    }
    auto bad = [&](const std::string& what) { return Error(path + ": " + what + "; not a manifest sae.torch.harvest wrote"); };
    if (!j.is_object() || j.value("format", "") != "sae-harvest") throw bad("\"format\" is not \"sae-harvest\"");
    if (!j.contains("version") || !j["version"].is_number_integer() || j["version"].get<int64_t>() != 1)
        throw bad("\"version\" is not 1 (the only version this build reads)");
    auto integer = [&](const nlohmann::json& o, const char* key, const std::string& where) {
        if (!o.contains(key) || !o[key].is_number_integer() || o[key].get<int64_t>() < 0)
            throw bad(where + "\"" + key + "\" is missing or not a non-negative integer");
        return o[key].get<int64_t>();
    };
    auto text = [&](const nlohmann::json& o, const char* key, bool required, const std::string& where) {
        if (!o.contains(key) || o[key].is_null()) {
            if (required) throw bad(where + "\"" + key + "\" is missing");
            return std::string();
        }
        if (!o[key].is_string()) throw bad(where + "\"" + key + "\" is not a string");
        return o[key].get<std::string>();
    };
    Harvest h;
    h.dir = dir;
    h.model = text(j, "model", false, "");
    if (j.contains("complete")) {
        if (!j["complete"].is_boolean()) throw bad("\"complete\" is not true or false");
        h.complete = j["complete"].get<bool>();
    }
    h.sequences = j.contains("sequences") ? integer(j, "sequences", "") : 0;
    h.rows = integer(j, "rows", "");
    h.tokens = text(j, "tokens", false, "");
    h.positions = text(j, "positions", false, "");
    h.vocab = text(j, "vocab", false, "");
    h.unembed = text(j, "unembed", false, "");
    if (j.contains("token_shards")) {
        if (!j["token_shards"].is_array()) throw bad("\"token_shards\" is not a list");
        for (const auto& t : j["token_shards"]) {
            if (!t.is_string()) throw bad("an entry of \"token_shards\" is not a string");
            h.token_shards.push_back(t.get<std::string>());
        }
    }
    if (j.contains("has_tokens")) {
        if (!j["has_tokens"].is_boolean()) throw bad("\"has_tokens\" is not true or false");
        h.has_tokens = j["has_tokens"].get<bool>();
    }
    if (!j.contains("hooks") || !j["hooks"].is_array() || j["hooks"].empty()) throw bad("\"hooks\" is missing or empty");
    for (const auto& o : j["hooks"]) {
        if (!o.is_object()) throw bad("an entry of \"hooks\" is not an object");
        HarvestHook k;
        k.name = text(o, "name", true, "a hook's ");
        const std::string where = "hook " + one_line(k.name) + ": ";
        k.d_in = integer(o, "d_in", where);
        k.rows = integer(o, "rows", where);
        k.dtype = o.contains("dtype") ? text(o, "dtype", true, where) : "float32";
        if (k.dtype != "float32" && k.dtype != "bfloat16") throw bad(where + "\"dtype\" is not float32 or bfloat16");
        if (k.d_in < 1) throw bad(where + "\"d_in\" is 0");
        if (!o.contains("shards") || !o["shards"].is_array()) throw bad(where + "\"shards\" is missing");
        for (const auto& s : o["shards"]) {
            if (!s.is_string()) throw bad(where + "a shard is not a string");
            k.shards.push_back(s.get<std::string>());
        }
        h.hooks.push_back(std::move(k));
    }
    return h;
}

bool harvest_discover(const std::string& data, std::string* dir, std::string* hook) {
    if (data.empty()) return false;
    const fs::path shard_dir = fs::path(data).parent_path();
    const fs::path root = shard_dir.parent_path();
    if (shard_dir.empty() || !fs::is_regular_file(root / "manifest.json")) return false;
    const Harvest h = harvest_read(root.string());
    std::error_code ec;
    const fs::path want = fs::weakly_canonical(shard_dir, ec);
    for (const auto& k : h.hooks) {
        if (k.shards.empty()) continue;
        if (fs::weakly_canonical(root / fs::path(k.shards.front()).parent_path(), ec) == want) {
            *dir = root.string();
            *hook = k.name;
            return true;
        }
    }
    return false;
}

// ------------------------------------------------------------------------------ reading files

namespace {

// A whole .npy file's header, for the small arrays sae's own readers (data.hpp) do not take:
// integer tables and a Fortran-order unembedding.
struct NpyFile {
    std::string bytes, descr;
    bool fortran = false;
    std::vector<int64_t> shape;
    size_t data = 0;  // offset of the first value
    int64_t numel = 1;
};

NpyFile npy_file_read(const std::string& path) {
    NpyFile f;
    f.bytes = read_file(path);
    const std::string& bytes = f.bytes;
    auto bad = [&](const std::string& what) { return Error(path + ": " + what); };
    if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) throw bad("not a .npy file");
    const int major = uint8_t(bytes[6]);
    size_t hlen = 0, start = 0;
    if (major == 1) {
        hlen = uint8_t(bytes[8]) | size_t(uint8_t(bytes[9])) << 8;
        start = 10;
    } else if (major == 2 || major == 3) {
        if (bytes.size() < 12) throw bad("truncated .npy header");
        for (int i = 0; i < 4; ++i) hlen |= size_t(uint8_t(bytes[8 + i])) << (8 * i);
        start = 12;
    } else {
        throw bad(".npy version " + std::to_string(major) + " is not supported");
    }
    if (start + hlen > bytes.size()) throw bad("the .npy header goes beyond the end of the file");
    const std::string header = bytes.substr(start, hlen);
    auto field = [&](const std::string& key) {
        const size_t k = header.find("'" + key + "'");
        if (k == std::string::npos) throw bad(".npy header has no '" + key + "'");
        size_t v = header.find(':', k);
        if (v == std::string::npos) throw bad("malformed .npy header");
        ++v;
        while (v < header.size() && header[v] == ' ') ++v;
        return v;
    };
    const size_t d = field("descr");
    const char q = d < header.size() ? header[d] : 0;
    const size_t d_end = header.find(q, d + 1);
    if ((q != '\'' && q != '"') || d_end == std::string::npos) throw bad("malformed .npy header");
    f.descr = header.substr(d + 1, d_end - d - 1);
    const size_t fo = field("fortran_order");
    if (header.compare(fo, 4, "True") == 0) f.fortran = true;
    else if (header.compare(fo, 5, "False") != 0) throw bad("malformed .npy header");
    const size_t s = field("shape");
    if (s >= header.size() || header[s] != '(') throw bad("malformed .npy shape");
    const size_t s_end = header.find(')', s);
    if (s_end == std::string::npos) throw bad("malformed .npy shape");
    for (size_t p = s + 1; p < s_end;) {
        while (p < s_end && (header[p] == ' ' || header[p] == ',')) ++p;
        if (p >= s_end) break;
        char* end = nullptr;
        const long long v = std::strtoll(header.c_str() + p, &end, 10);
        if (end == header.c_str() + p || v < 0 || v > (int64_t(1) << 40)) throw bad("malformed .npy shape");
        f.shape.push_back(v);
        f.numel *= v;
        if (f.numel > (int64_t(1) << 40)) throw bad("malformed .npy shape");
        p = size_t(end - header.c_str());
    }
    f.data = start + hlen;
    return f;
}

void npy_check_size(const NpyFile& f, size_t item, const std::string& path) {
    if (f.bytes.size() != f.data + size_t(f.numel) * item)
        throw Error(path + ": holds " + std::to_string(f.bytes.size() - f.data) + " data bytes but its shape needs " +
                    std::to_string(size_t(f.numel) * item) + "; the file is truncated or damaged");
}

// An integer .npy (int32 '<i4' or int64 '<i8', C order) as int64 values with its shape.
struct IntArray {
    std::vector<int64_t> shape;
    std::vector<int64_t> values;
};

IntArray npy_read_ints(const std::string& path) {
    const NpyFile f = npy_file_read(path);
    size_t item = 0;
    if (f.descr == "<i4") item = 4;
    else if (f.descr == "<i8") item = 8;
    else throw Error(path + ": dtype '" + one_line(f.descr) + "' is not int32 ('<i4') or int64 ('<i8')");
    if (f.fortran && f.shape.size() > 1) throw Error(path + ": Fortran order is not supported; save it in C order");
    npy_check_size(f, item, path);
    IntArray a;
    a.shape = f.shape;
    a.values.resize(size_t(f.numel));
    for (int64_t i = 0; i < f.numel; ++i) {
        if (item == 4) {
            int32_t v;
            std::memcpy(&v, f.bytes.data() + f.data + size_t(i) * 4, 4);
            a.values[size_t(i)] = v;
        } else {
            int64_t v;
            std::memcpy(&v, f.bytes.data() + f.data + size_t(i) * 8, 8);
            a.values[size_t(i)] = v;
        }
    }
    return a;
}

// A float32 2-d .npy [rows, cols] in C or Fortran order (NumPy saves a transposed weight, e.g.
// lm_head.weight.T, in Fortran order), as a row-major matrix.
Matrix<float> npy_read_matrix_f32(const std::string& path) {
    const NpyFile f = npy_file_read(path);
    if (f.descr != "<f4") throw Error(path + ": dtype '" + one_line(f.descr) + "' is not float32 ('<f4')");
    if (f.shape.size() != 2) throw Error(path + ": expected a 2-d array [d_model, V]");
    npy_check_size(f, 4, path);
    Matrix<float> M(f.shape[0], f.shape[1]);
    const char* src = f.bytes.data() + f.data;
    if (!f.fortran) {
        std::memcpy(M.data.data(), src, size_t(f.numel) * 4);
    } else {
        for (int64_t j = 0; j < M.cols; ++j)
            for (int64_t i = 0; i < M.rows; ++i) std::memcpy(&M(i, j), src + size_t(j * M.rows + i) * 4, 4);
    }
    return M;
}

// A hook's shards read in order, a chunk of rows at a time, converted to float32.
class ShardReader {
public:
    ShardReader(const Harvest& h, const HarvestHook& k) : d_in_(k.d_in) {
        int64_t total = 0;
        for (const auto& s : k.shards) {
            const std::string path = h.dir + "/" + s;
            check(fs::is_regular_file(path), path + ": missing; the manifest of " + h.dir + " lists it for hook " + k.name);
            const NpyHeader hd = npy_read_header(path, k.dtype == "bfloat16" ? "bfloat16" : "");
            const bool f32 = hd.dtype == NpyDtype::f32, bf16 = hd.dtype == NpyDtype::bf16;
            check(hd.shape.size() == 2 && hd.shape[1] == k.d_in,
                  path + ": shape " + shape_text(hd.shape) + " but the manifest says hook " + k.name + " has d_in = " +
                      std::to_string(k.d_in) + "; the harvest is inconsistent");
            check((k.dtype == "float32" && f32) || (k.dtype == "bfloat16" && bf16),
                  path + ": dtype '" + hd.descr + "' but the manifest says " + k.dtype + "; the harvest is inconsistent");
            shards_.push_back({path, hd.shape[0], hd.data_offset, hd.item_size});
            total += hd.shape[0];
        }
        check(total == k.rows, h.dir + "/manifest.json: hook " + k.name + " has " + std::to_string(k.rows) +
                                   " rows but its shards hold " + std::to_string(total) + "; the harvest is inconsistent");
        rows_ = total;
    }
    int64_t rows() const { return rows_; }
    void rewind() {
        shard_ = 0;
        row_in_shard_ = 0;
        file_.close();
    }
    // Up to `max` next rows into out [max, d_in]; returns how many (0 at the end).
    int64_t next(float* out, int64_t max) {
        int64_t got = 0;
        while (got < max && shard_ < shards_.size()) {
            const Shard& s = shards_[shard_];
            if (!file_.is_open()) {
                file_.open(s.path, std::ios::binary);
                check(bool(file_), s.path + ": cannot be opened");
                file_.seekg(std::streamoff(s.offset));
            }
            const int64_t n = std::min(max - got, s.rows - row_in_shard_);
            const size_t bytes = size_t(n * d_in_) * s.item;
            buf_.resize(bytes);
            file_.read(buf_.data(), std::streamsize(bytes));
            check(file_.gcount() == std::streamsize(bytes), s.path + ": shorter than its header says; it changed while being read");
            float* o = out + got * d_in_;
            if (s.item == 4) {
                std::memcpy(o, buf_.data(), bytes);
            } else {
                for (size_t i = 0; i < size_t(n * d_in_); ++i) {
                    uint16_t v;
                    std::memcpy(&v, buf_.data() + 2 * i, 2);
                    o[i] = bf16_to_f32(v);
                }
            }
            got += n;
            row_in_shard_ += n;
            if (row_in_shard_ == s.rows) {
                file_.close();
                ++shard_;
                row_in_shard_ = 0;
            }
        }
        return got;
    }

private:
    static std::string shape_text(const std::vector<int64_t>& s) {
        std::string t = "[";
        for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
        return t + "]";
    }
    struct Shard {
        std::string path;
        int64_t rows;
        uint64_t offset;
        size_t item;
    };
    std::vector<Shard> shards_;
    int64_t d_in_ = 0, rows_ = 0;
    size_t shard_ = 0;
    int64_t row_in_shard_ = 0;
    std::ifstream file_;
    std::vector<char> buf_;
};

// ------------------------------------------------------------------------------ the selection

// Keeps, per latent, the K largest activations (> 0) seen; rows must arrive in increasing order,
// so an equal activation never displaces an earlier row.
class TopRows {
public:
    TopRows(int64_t d_sae, int64_t k) : k_(k), acts_(size_t(d_sae * k)), rows_(size_t(d_sae * k)), n_(size_t(d_sae), 0),
                                        floor_(size_t(d_sae), 0.0f) {}
    void see(int64_t j, float v, int64_t row) {
        if (!(v > floor_[size_t(j)]) || k_ == 0) return;
        float* a = acts_.data() + j * k_;
        int64_t* r = rows_.data() + j * k_;
        int64_t& n = n_[size_t(j)];
        // Insert into the descending list (K is small): after every entry >= v.
        int64_t at = n < k_ ? n : k_ - 1;
        while (at > 0 && a[at - 1] < v) {
            if (at < k_) a[at] = a[at - 1], r[at] = r[at - 1];
            --at;
        }
        a[at] = v;
        r[at] = row;
        if (n < k_) ++n;
        if (n == k_) floor_[size_t(j)] = a[k_ - 1];
    }
    int64_t count(int64_t j) const { return n_[size_t(j)]; }
    float act(int64_t j, int64_t i) const { return acts_[size_t(j * k_ + i)]; }
    int64_t row(int64_t j, int64_t i) const { return rows_[size_t(j * k_ + i)]; }

private:
    int64_t k_;
    std::vector<float> acts_;
    std::vector<int64_t> rows_;
    std::vector<int64_t> n_;
    std::vector<float> floor_;
};

// The latents to show: the most often firing first (then by number), at most `latents` (< 0: all).
// A chosen latent's summary: firing count and density over `rows`, its largest activation, an
// empty histogram of `bins` bins (filled by the caller's pass over the codes).
BrowserLatent latent_summary(int64_t j, const std::vector<int64_t>& fires, int64_t rows, const TopRows& top, int bins) {
    BrowserLatent L;
    L.index = j;
    L.fires = fires[size_t(j)];
    L.density = double(L.fires) / double(std::max<int64_t>(1, rows));
    L.max_activation = top.count(j) ? top.act(j, 0) : 0.0f;
    L.hist.assign(size_t(std::max(1, bins)), 0);
    return L;
}

// A top row's context [begin, end): up to `before` rows before and `after` after, within the
// row's sequence (seq: sequence index of each row; empty = one sequence).
BrowserContext context_of(const TopRows& top, int64_t j, int64_t c, const std::vector<int64_t>& seq, int64_t rows,
                          int64_t before, int64_t after) {
    BrowserContext C;
    C.row = top.row(j, c);
    C.activation = top.act(j, c);
    C.begin = C.row;
    C.end = C.row + 1;
    while (C.begin > 0 && C.row - C.begin < before && (seq.empty() || seq[size_t(C.begin - 1)] == seq[size_t(C.row)]))
        --C.begin;
    while (C.end < rows && C.end - 1 - C.row < after && (seq.empty() || seq[size_t(C.end)] == seq[size_t(C.row)]))
        ++C.end;
    return C;
}

std::vector<int64_t> choose_latents(const std::vector<int64_t>& fires, int64_t latents) {
    std::vector<int64_t> order(fires.size());
    for (size_t j = 0; j < order.size(); ++j) order[j] = int64_t(j);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return fires[size_t(a)] > fires[size_t(b)]; });
    if (latents >= 0 && size_t(latents) < order.size()) order.resize(size_t(latents));
    return order;
}

uint8_t shade_of(float v, float max) {
    if (!(max > 0) || !(v > 0)) return 0;
    return uint8_t(std::lround(255.0 * std::clamp(double(v) / double(max), 0.0, 1.0)));
}

void bin(std::vector<int64_t>& hist, float v, float max) {
    const int nb = int(hist.size());
    if (nb == 0 || !(max > 0)) return;
    hist[size_t(std::clamp(int(double(v) / double(max) * nb), 0, nb - 1))] += 1;
}

// The top (and bottom) `n` entries of logits [V]: (id, value), ties by the smaller id.
std::vector<std::pair<int32_t, float>> extreme_tokens(const float* logits, int64_t V, int64_t n, bool top) {
    std::vector<int32_t> ids(static_cast<size_t>(V));
    for (int64_t i = 0; i < V; ++i) ids[size_t(i)] = int32_t(i);
    n = std::min(n, V);
    auto better = [&](int32_t a, int32_t b) {
        const float x = logits[a], y = logits[b];
        return top ? (x > y || (x == y && a < b)) : (x < y || (x == y && a < b));
    };
    std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), better);
    std::vector<std::pair<int32_t, float>> out;
    for (int64_t i = 0; i < n; ++i) out.emplace_back(ids[size_t(i)], logits[ids[size_t(i)]]);
    return out;
}

}  // namespace

// ------------------------------------------------------------------------------ from a harvest

Browser browser_from_harvest(const SavedModel& model, const Harvest& h, const std::string& hook_name,
                             const BrowserOptions& opt) {
    const HarvestHook& k = h.hook(hook_name);
    const int64_t d_in = model.objective->d_in(), d_sae = model.objective->d_sae();
    check(k.d_in == d_in, h.dir + "/manifest.json: hook " + k.name + " has d_in = " + std::to_string(k.d_in) +
                              " but the model has d_in = " + std::to_string(d_in) + "; pass the hook it was trained on");
    ShardReader reader(h, k);
    const int64_t rows = reader.rows();
    check(rows > 0, h.dir + ": hook " + k.name + " has no rows");

    Browser b;
    b.rows = rows;
    b.d_sae = d_sae;
    b.threshold = config_active_threshold(model.cfg);
    b.normalized = model.norm.mode != Normalize::none;
    b.source = h.dir + " · hook " + k.name + (h.model.empty() ? "" : " of " + h.model);

    // Tokens, positions, vocab, unembed: each checked against the rows and the model.
    std::vector<int32_t> tokens;
    if (!h.tokens.empty()) {
        const IntArray t = npy_read_ints(h.dir + "/" + h.tokens);
        check(t.shape.size() == 1 && t.shape[0] == rows, h.dir + "/" + h.tokens + ": " + std::to_string(t.values.size()) +
                                                             " tokens but hook " + k.name + " has " + std::to_string(rows) +
                                                             " rows; the harvest is inconsistent");
        tokens.reserve(t.values.size());
        for (int64_t v : t.values) {
            check(v >= 0 && v < (int64_t(1) << 31), h.dir + "/" + h.tokens + ": token id " + std::to_string(v) + " is out of range");
            tokens.push_back(int32_t(v));
        }
    }
    std::vector<int64_t> seq;  // the sequence index of each row
    if (!h.positions.empty()) {
        const IntArray p = npy_read_ints(h.dir + "/" + h.positions);
        check(p.shape.size() == 2 && p.shape[1] == 2 && p.shape[0] == rows,
              h.dir + "/" + h.positions + ": " + std::to_string(p.shape.empty() ? 0 : p.shape[0]) +
                  " positions (need [rows, 2]) but hook " + k.name + " has " + std::to_string(rows) +
                  " rows; the harvest is inconsistent");
        seq.resize(size_t(rows));
        for (int64_t i = 0; i < rows; ++i) seq[size_t(i)] = p.values[size_t(2 * i)];
        b.positions = true;
    }
    if (h.tokens.empty() && h.positions.empty() && !h.token_shards.empty()) {  // a harvest still running
        for (const auto& t : h.token_shards) {
            const std::string path = h.dir + "/" + t;
            const IntArray a = npy_read_ints(path);
            check(a.shape.size() == 2 && a.shape[1] == 3, path + ": expected [rows, 3] (token, sequence, position)");
            for (int64_t i = 0; i < a.shape[0]; ++i) {
                if (h.has_tokens) {
                    const int64_t v = a.values[size_t(3 * i)];
                    check(v >= 0 && v < (int64_t(1) << 31), path + ": token id " + std::to_string(v) + " is out of range");
                    tokens.push_back(int32_t(v));
                }
                seq.push_back(a.values[size_t(3 * i + 1)]);
            }
        }
        check(int64_t(seq.size()) == rows, h.dir + "/manifest.json: its token_shards hold " + std::to_string(seq.size()) +
                                               " rows but hook " + k.name + " has " + std::to_string(rows) +
                                               "; the harvest is inconsistent");
        b.positions = true;
    }
    if (!h.vocab.empty()) {
        const std::string path = h.dir + "/" + h.vocab;
        nlohmann::json v;
        try {
            v = nlohmann::json::parse(read_file(path));
        } catch (const nlohmann::json::exception&) {
            throw Error(path + ": not valid JSON (UTF-8); expected a list of strings, token id -> text");
        }
        check(v.is_array(), path + ": not a JSON list of strings");
        for (const auto& s : v) {
            check(s.is_string(), path + ": entry " + std::to_string(b.vocab.size()) + " is not a string");
            b.vocab.push_back(s.get<std::string>());
        }
        int32_t max_id = -1;
        for (int32_t t : tokens) max_id = std::max(max_id, t);
        check(max_id < int64_t(b.vocab.size()), path + ": " + std::to_string(b.vocab.size()) +
                                                    " entries but the tokens go up to id " + std::to_string(max_id) +
                                                    "; the vocabulary does not match the harvest");
    }
    Matrix<float> unembed;
    if (!h.unembed.empty()) {
        const std::string path = h.dir + "/" + h.unembed;
        unembed = npy_read_matrix_f32(path);
        check(unembed.rows == d_in, path + ": " + std::to_string(unembed.rows) + " rows but the model has d_in = " +
                                        std::to_string(d_in) + "; the unembedding must be [d_in, V]");
        b.unembed = true;
    }

    set_num_threads(int(model.cfg.threads));
    auto be = backend_create(model.cfg.backend);
    // Rows per chunk: opt.chunk, fewer when the codes [chunk, d_sae] would pass 16 MiB (the encoder
    // keeps a few buffers of that size).
    const int64_t chunk = std::max<int64_t>(1, std::min(opt.chunk, std::max<int64_t>(64, (int64_t(1) << 22) / d_sae)));
    const int64_t K = std::max<int64_t>(0, opt.contexts);
    Matrix<float> X(chunk, d_in), H(chunk, d_sae);
    auto encode_next = [&](int64_t* m) {
        *m = reader.next(X.data.data(), chunk);
        if (*m == 0) return false;
        Matrix<float> Xm;
        const float* src = X.data.data();
        if (model.norm.mode != Normalize::none) {
            Xm.resize(*m, d_in);
            std::copy(X.data.begin(), X.data.begin() + *m * d_in, Xm.data.begin());
            normalizer_apply(model.norm, Xm, k.dtype == "bfloat16" ? SourceType::bf16 : SourceType::f32);
            src = Xm.data.data();
        }
        check_finite(src, *m, d_in, h.dir + " hook " + k.name);
        encode(*be, *model.objective, model.params.data(), src, *m, d_in, H.data.data(), chunk);
        return true;
    };

    // Pass 1: firing counts and each latent's top rows.
    std::vector<int64_t> fires(size_t(d_sae), 0);
    TopRows top(d_sae, K);
    int64_t base = 0, m = 0;
    while (encode_next(&m)) {
        for (int64_t i = 0; i < m; ++i) {
            const float* hr = H.row(i);
            for (int64_t j = 0; j < d_sae; ++j) {
                fires[size_t(j)] += hr[j] > b.threshold;
                top.see(j, hr[j], base + i);
            }
        }
        base += m;
    }

    // The chosen latents and their contexts.
    const std::vector<int64_t> chosen = choose_latents(fires, opt.latents);
    struct Need {
        int64_t row;
        int32_t latent, ctx;  // latent: index into b.latents; ctx: into its top
    };
    std::vector<Need> needs;
    for (int64_t li = 0; li < int64_t(chosen.size()); ++li) {
        const int64_t j = chosen[size_t(li)];
        BrowserLatent L = latent_summary(j, fires, rows, top, opt.bins);
        for (int64_t c = 0; c < top.count(j); ++c) {
            BrowserContext C = context_of(top, j, c, seq, rows, opt.before, opt.after);
            C.shade.assign(size_t(C.end - C.begin), 0);
            if (!tokens.empty()) C.tokens.assign(tokens.begin() + C.begin, tokens.begin() + C.end);
            for (int64_t r = C.begin; r < C.end; ++r) needs.push_back({r, int32_t(li), int32_t(c)});
            L.top.push_back(std::move(C));
        }
        b.latents.push_back(std::move(L));
    }
    std::sort(needs.begin(), needs.end(), [](const Need& a, const Need& c) { return a.row < c.row; });

    // Pass 2: the chosen latents' histograms and their activations on the context rows.
    if (!chosen.empty()) {
        reader.rewind();
        base = 0;
        size_t next_need = 0;
        while (encode_next(&m)) {
            for (int64_t i = 0; i < m; ++i) {
                const float* hr = H.row(i);
                for (auto& L : b.latents)
                    if (hr[L.index] > b.threshold) bin(L.hist, hr[L.index], L.max_activation);
                for (; next_need < needs.size() && needs[next_need].row == base + i; ++next_need) {
                    const Need& n = needs[next_need];
                    BrowserLatent& L = b.latents[size_t(n.latent)];
                    BrowserContext& C = L.top[size_t(n.ctx)];
                    C.shade[size_t(n.row - C.begin)] = shade_of(hr[L.index], L.max_activation);
                }
            }
            base += m;
        }
    }

    // Promoted and suppressed tokens: W_dec[j] @ unembed, in blocks of latents.
    if (b.unembed && !b.latents.empty()) {
        const std::vector<float> Wdec = model_decoder_rows(model);  // [d_sae, d_in]
        const int64_t V = unembed.cols, block = std::max<int64_t>(1, std::min<int64_t>(256, (int64_t(1) << 26) / std::max<int64_t>(1, V)));
        Matrix<float> A(block, d_in), logits(block, V);
        for (size_t s = 0; s < b.latents.size(); s += size_t(block)) {
            const int64_t n = std::min<int64_t>(block, int64_t(b.latents.size() - s));
            for (int64_t i = 0; i < n; ++i)
                std::copy_n(Wdec.data() + b.latents[s + size_t(i)].index * d_in, d_in, A.row(i));
            be->gemm(Trans::no, Trans::no, n, V, d_in, 1.0f, A.data.data(), d_in, unembed.data.data(), V, 0.0f,
                     logits.data.data(), V);
            for (int64_t i = 0; i < n; ++i) {
                b.latents[s + size_t(i)].promoted = extreme_tokens(logits.row(i), V, 10, true);
                b.latents[s + size_t(i)].suppressed = extreme_tokens(logits.row(i), V, 10, false);
            }
        }
    }
    return b;
}

// ------------------------------------------------------------------------------ from images

Browser browser_from_images(const float* H, const float* X, int64_t rows, int64_t d_sae, int64_t side, double threshold,
                            const BrowserOptions& opt) {
    Browser b;
    b.rows = rows;
    b.d_sae = d_sae;
    b.threshold = threshold;
    b.images = true;
    b.side = side;
    const int64_t K = std::max<int64_t>(0, opt.contexts);
    std::vector<int64_t> fires(size_t(d_sae), 0);
    TopRows top(d_sae, K);
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < d_sae; ++j) {
            const float v = H[i * d_sae + j];
            fires[size_t(j)] += v > threshold;
            top.see(j, v, i);
        }
    const int64_t px = side * side;
    for (int64_t j : choose_latents(fires, opt.latents)) {
        BrowserLatent L = latent_summary(j, fires, rows, top, opt.bins);
        for (int64_t i = 0; i < rows; ++i)
            if (H[i * d_sae + j] > threshold) bin(L.hist, H[i * d_sae + j], L.max_activation);
        std::vector<float> tiles;
        for (int64_t c = 0; c < top.count(j); ++c) {
            BrowserContext C;
            C.row = top.row(j, c);
            C.activation = top.act(j, c);
            C.begin = C.row;
            C.end = C.row + 1;
            C.shade = {shade_of(C.activation, L.max_activation)};
            tiles.insert(tiles.end(), X + C.row * px, X + (C.row + 1) * px);
            L.top.push_back(std::move(C));
        }
        std::string png;
        if (!L.top.empty()) {
            GridOptions go;
            go.columns = int64_t(L.top.size());
            go.scale = std::max<int64_t>(1, 40 / side);
            go.contrast = TileContrast::minmax;
            go.separator = 255;
            png = png_encode(filter_grid(tiles.data(), int64_t(L.top.size()), side, side, go));
        }
        b.images_png.push_back(std::move(png));
        b.latents.push_back(std::move(L));
    }
    return b;
}

// ------------------------------------------------------------------------------ the section

namespace {

// Fixed-width lowercase hex of each value, `width` digits.
std::string hex_run(const std::vector<int64_t>& v, int width) {
    static const char* digits = "0123456789abcdef";
    std::string s(v.size() * size_t(width), '0');
    for (size_t i = 0; i < v.size(); ++i) {
        uint64_t x = uint64_t(v[i]);
        for (int d = width - 1; d >= 0; --d, x >>= 4) s[i * size_t(width) + size_t(d)] = digits[x & 15];
    }
    return s;
}

// A number rounded to 4 significant digits (the JSON stays short).
double r4(double v) {
    if (!std::isfinite(v)) return 0;
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.4g", v);
    return std::strtod(buf, nullptr);
}

// A token's text with whitespace made visible: space → ·, newline → ↵, tab → →, other control
// characters as \xNN (the page escapes HTML when it renders).
std::string visible(const std::string& s) {
    std::string o;
    for (unsigned char c : s) {
        if (c == ' ') o += "\xC2\xB7";
        else if (c == '\n') o += "\xE2\x86\xB5";
        else if (c == '\t') o += "\xE2\x86\x92";
        else if (c < 0x20 || c == 0x7f) {
            const char* hex = "0123456789abcdef";
            o += {'\\', 'x', hex[c >> 4], hex[c & 15]};
        } else {
            o += char(c);
        }
    }
    return o;
}

const char* kBrowserStyle = R"CSS(<style>
#features .fbar{display:flex;gap:8px;align-items:center;font-size:13px;margin:4px 0 10px;flex-wrap:wrap}
#features input{width:90px}
#features .ctx{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12.5px;line-height:1.9;margin:2px 0;white-space:pre-wrap;word-break:break-all}
#features .ctx span{padding:1px 0;border-radius:2px}
#features .ctx span.top{outline:1.5px solid #d62728}
#features .ctx .act{color:#666;font-family:sans-serif;font-size:11px;margin-right:8px;display:inline-block;min-width:64px}
#features .toks{font-size:12.5px;margin:2px 0}#features .toks code{background:#f1f3f5;padding:0 4px;margin-right:4px;border-radius:3px}
#features .ftop{display:flex;gap:24px;flex-wrap:wrap}
</style>
)CSS";

// Renders latent `i` of the data into #feature-view; the search box takes a latent number, and
// the page's address may end in #latent-J to open latent J.
const char* kBrowserScript = R"JS(<script>
(function () {
  var D = JSON.parse(document.getElementById('feature-data').textContent), at = {}, cur = 0;
  for (var i = 0; i < D.L.length; i++) at[D.L[i].j] = i;
  var view = document.getElementById('feature-view'), box = document.getElementById('feature-input');
  function esc(s) { return String(s).replace(/[&<>"']/g, function (c) { return '&#' + c.charCodeAt(0) + ';'; }); }
  function tok(id) { return D.vocab && id < D.vocab.length ? D.vocab[id] : '#' + id; }
  function hist(L) {
    var n = L.h.length, mx = 1, s = '', W = 300, H = 70;
    for (var k = 0; k < n; k++) mx = Math.max(mx, L.h[k]);
    s = '<svg width="' + (W + 60) + '" height="' + (H + 30) + '" font-family="sans-serif" font-size="11">';
    for (k = 0; k < n; k++) if (L.h[k] > 0) {
      var h = Math.max(1, H * Math.log(1 + L.h[k]) / Math.log(1 + mx));
      s += '<rect x="' + (40 + k * W / n) + '" y="' + (H - h + 4) + '" width="' + (W / n - 1) + '" height="' + h +
           '" fill="#4c78a8"><title>' + (L.m * k / n).toPrecision(3) + '–' + (L.m * (k + 1) / n).toPrecision(3) + ': ' + L.h[k] + '</title></rect>';
    }
    s += '<text x="40" y="' + (H + 18) + '">0</text><text x="' + (40 + W) + '" y="' + (H + 18) + '" text-anchor="end">' + L.m +
         '</text><text x="36" y="12" text-anchor="end">' + mx + '</text><text x="36" y="' + (H + 4) + '" text-anchor="end">1</text></svg>';
    return s;
  }
  function toks(list) {
    var s = '';
    for (var k = 0; k < list.length; k++) s += '<code title="' + list[k][1] + '">' + esc(tok(list[k][0])) + '</code>';
    return s;
  }
  function show(i) {
    if (i < 0 || i >= D.L.length) return;
    cur = i;
    var k, L = D.L[i], s = '<h3>Latent ' + L.j + '</h3><div class="ftop"><div><p class="note">rank ' + (i + 1) + ' of ' + D.L.length +
        ' · fires on ' + L.f + ' of ' + D.rows + ' ' + D.unit + ' (density ' + L.d + ') · max activation ' + L.m +
        '</p>' + hist(L) + '<p class="note">Activations above ' + D.thr + ', counts on a log scale.</p></div>';
    if (L.p) s += '<div><p class="toks"><b>promotes</b> ' + toks(L.p) + '</p><p class="toks"><b>suppresses</b> ' + toks(L.n) + '</p></div>';
    s += '</div>';
    if (D.images) {
      if (L.img) s += '<img class="pix" width="' + L.iw + '" alt="top images of latent ' + L.j + '" src="data:image/png;base64,' + L.img + '">';
      s += '<p class="note">' + L.c.map(function (c) { return D.unit.slice(0, -1) + ' ' + c[0] + ': ' + c[1]; }).join(' · ') + '</p>';
    } else {
      for (k = 0; k < L.c.length; k++) {
        var c = L.c[k], n = c[3].length / 2, line = '<div class="ctx"><span class="act">' + c[1] + '</span>';
        for (var t = 0; t < n; t++) {
          var q = parseInt(c[3].substr(2 * t, 2), 16), text = c[2] ? tok(parseInt(c[2].substr(t * D.w, D.w), 16)) : '·';
          line += '<span' + (t === c[4] ? ' class="top"' : '') + ' style="background:rgba(255,120,0,' + (q / 255).toFixed(3) +
                  ')" title="' + (q / 255 * L.m).toPrecision(3) + '">' + esc(text) + '</span>';
        }
        s += line + '</div>';
      }
      if (!L.c.length) s += '<p class="note">No row activates this latent.</p>';
    }
    view.innerHTML = s;
    box.value = L.j;
  }
  function go() {
    var j = parseInt(box.value, 10);
    if (j in at) show(at[j]);
    else view.innerHTML = '<p class="note">Latent ' + esc(box.value) + ' is not among the ' + D.L.length + ' shown.</p>';
  }
  document.getElementById('feature-go').onclick = go;
  box.onkeydown = function (e) { if (e.key === 'Enter') go(); };
  document.getElementById('feature-prev').onclick = function () { show(cur - 1); };
  document.getElementById('feature-next').onclick = function () { show(cur + 1); };
  // report.html#latent-123 opens latent 123 (a link to one latent)
  function fromHash() {
    var h = /^#latent-(\d+)$/.exec(location.hash);
    if (!h || !(h[1] in at)) return false;
    show(at[h[1]]);
    document.getElementById('features').scrollIntoView();
    return true;
  }
  window.addEventListener('hashchange', fromHash);
  if (!fromHash()) show(0);
})();
</script>
)JS";

}  // namespace

std::string browser_section(const Browser& b) {
    int64_t max_id = 0;
    for (const auto& L : b.latents)
        for (const auto& C : L.top)
            for (int32_t t : C.tokens) max_id = std::max<int64_t>(max_id, t);
    max_id = std::max<int64_t>(max_id, int64_t(b.vocab.size()) - 1);
    int w = 1;
    while (w < 8 && (int64_t(1) << (4 * w)) <= max_id) ++w;

    nlohmann::json d;
    d["rows"] = b.rows;
    d["thr"] = r4(b.threshold);
    d["unit"] = b.images ? "samples" : "rows";
    d["images"] = b.images;
    d["w"] = w;
    nlohmann::json vocab = nlohmann::json::array();
    for (const auto& s : b.vocab) vocab.push_back(visible(s));
    d["vocab"] = vocab;
    nlohmann::json L = nlohmann::json::array();
    for (size_t i = 0; i < b.latents.size(); ++i) {
        const BrowserLatent& l = b.latents[i];
        nlohmann::json o;
        o["j"] = l.index;
        o["f"] = l.fires;
        o["d"] = r4(l.density);
        o["m"] = r4(l.max_activation);
        o["h"] = l.hist;
        if (b.unembed) {
            nlohmann::json p = nlohmann::json::array(), n = nlohmann::json::array();
            for (const auto& [t, v] : l.promoted) p.push_back({t, r4(v)});
            for (const auto& [t, v] : l.suppressed) n.push_back({t, r4(v)});
            o["p"] = p;
            o["n"] = n;
        }
        nlohmann::json c = nlohmann::json::array();
        for (const auto& C : l.top) {
            std::vector<int64_t> t(C.tokens.begin(), C.tokens.end()), q(C.shade.begin(), C.shade.end());
            c.push_back({C.row, r4(C.activation), hex_run(t, w), hex_run(q, 2), C.row - C.begin});
        }
        o["c"] = c;
        if (b.images && i < b.images_png.size() && !b.images_png[i].empty()) {
            o["img"] = base64_encode(b.images_png[i]);
            // Shown with tiles about 56 pixels wide (pixelated), whatever the PNG's own scale.
            const int64_t n = int64_t(l.top.size()), scale = std::max<int64_t>(1, 40 / std::max<int64_t>(1, b.side));
            const int64_t width = n * (b.side * scale + 1) + 1;
            o["iw"] = width * std::max<int64_t>(1, 56 / std::max<int64_t>(1, b.side * scale));
        }
        L.push_back(o);
    }
    d["L"] = L;
    // Inside <script>: no "<" may survive (a vocab entry "</script>" would end the element).
    std::string json = d.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), safe;
    safe.reserve(json.size());
    for (char ch : json) safe += ch == '<' ? std::string("\\u003c") : std::string(1, ch);

    std::string s = "<section id=\"features\"><h2>Features</h2>\n" + std::string(kBrowserStyle);
    s += "<p class=\"note\">The " + std::to_string(b.latents.size()) + " most often firing of " + std::to_string(b.d_sae) +
         " latents over " + std::to_string(b.rows) + (b.images ? " training samples" : " rows of " + html_escape(b.source)) +
         ". For each, its top-activating " + (b.images ? "samples" : "rows") +
         (b.images ? std::string(" (each image scaled on its own)")
                   : std::string(" with ") + (b.positions ? "the text around them in the same sequence" : "the rows around them (no positions.npy: sequence boundaries unknown)") +
                         ", every token shaded by that latent's activation on it (orange = its maximum; the top token outlined)") +
         ". ";
    if (b.unembed)
        s += "Promoted / suppressed: the largest and smallest entries of W_dec[j] · unembed (the final layer norm is ignored" +
             std::string(b.normalized ? "; the model normalises its inputs, so the direction is in normalised units" : "") + "). ";
    s += "Search by latent number; whitespace is shown as · (space), ↵ (newline), → (tab).</p>\n";
    s += "<div class=\"fbar\"><label>latent <input id=\"feature-input\" type=\"number\" min=\"0\"></label>"
         "<button id=\"feature-go\">show</button><button id=\"feature-prev\">◀ more active</button>"
         "<button id=\"feature-next\">less active ▶</button></div>\n<div id=\"feature-view\"></div>\n";
    s += "<script type=\"application/json\" id=\"feature-data\">" + safe + "</script>\n" + kBrowserScript + "</section>\n";
    return s;
}

}  // namespace sae
