#include "sae/stream.hpp"

#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <sstream>

#include "sae/error.hpp"
#include "sae/rng.hpp"

namespace sae {

namespace {

[[noreturn]] void fail(const std::string& name, const std::string& what) { throw Error(name + ": " + what); }

constexpr uint64_t kAutoBlockBytes = uint64_t(1) << 20;   // block_samples = 0: about 1 MiB of file per block
constexpr uint64_t kSlackBytes = uint64_t(2) << 20;       // the "small constant" of the stated bound
constexpr uint64_t kPerShardBytes = 1024;

uint64_t mix64(uint64_t x) {  // splitmix64 finaliser
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

std::string errno_text() { return std::strerror(errno); }

bool has_glob_magic(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

// The pattern's files, sorted by name. An existing regular file is taken literally (even if its
// name contains glob characters).
std::vector<std::string> expand(const std::string& pattern) {
    struct stat st {};
    if (::stat(pattern.c_str(), &st) == 0 && S_ISREG(st.st_mode)) return {pattern};
    glob_t g{};
    const int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
    std::vector<std::string> out;
    if (rc == 0)
        for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
    ::globfree(&g);
    if (rc == GLOB_NOMATCH) {
        if (has_glob_magic(pattern)) fail(pattern, "no files match this pattern; check the directory and the pattern");
        fail(pattern, "cannot open (No such file or directory); check the path");
    }
    if (rc != 0) fail(pattern, "cannot expand the pattern (glob error " + std::to_string(rc) + "); check the directory");
    return out;
}

void to_f32(const char* src, float* dst, NpyDtype t, int64_t n) {
    switch (t) {
        case NpyDtype::f32: std::memcpy(dst, src, size_t(n) * 4); return;
        case NpyDtype::f16:
            for (int64_t i = 0; i < n; ++i) {
                uint16_t h;
                std::memcpy(&h, src + 2 * i, 2);
                dst[i] = f16_to_f32(h);
            }
            return;
        case NpyDtype::bf16:
            for (int64_t i = 0; i < n; ++i) {
                uint16_t h;
                std::memcpy(&h, src + 2 * i, 2);
                dst[i] = bf16_to_f32(h);
            }
            return;
        default: throw Error("stream: internal error, unsupported shard dtype");  // rejected at validation
    }
}

// Opens path read-only and checks that it still has the size seen at validation.
int open_checked(const StreamShard& sh) {
    const int fd = ::open(sh.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail(sh.path, "cannot open (" + errno_text() + "); the shard disappeared after the stream was opened");
    struct stat st {};
    if (::fstat(fd, &st) != 0 || uint64_t(st.st_size) != sh.file_bytes) {
        ::close(fd);
        fail(sh.path, "changed size since the stream was opened (was " + std::to_string(sh.file_bytes) +
                          " bytes); do not modify shards while they are streamed");
    }
    return fd;
}

}  // namespace

struct StreamSource::Impl {
    StreamOptions opt;
    std::vector<StreamShard> shards;
    std::vector<int64_t> shard_block0;  // first global block number of each shard, plus the total
    int64_t d = 0, N = 0, bs = 0, nb = 0, slots = 0;
    size_t max_item = 0;
    uint64_t page = 4096;

    std::unique_ptr<float[]> buf;     // [slots, d] (never touched in ids-only use: next_part)
    bool ids_only = false;            // next_part() was used: the buffer holds ids alone
    std::unique_ptr<int64_t[]> ids;   // [slots]
    std::unique_ptr<char[]> scratch;  // one row in file bytes (seek only)
    int64_t fill = 0;                 // valid slots

    uint64_t epoch = 0;
    int64_t emitted = 0;  // samples emitted in this epoch
    int64_t read = 0;     // samples read from this epoch's block stream
    Rng rng;
    uint64_t keys[4] = {};  // Feistel round keys of this epoch
    int half_bits = 0;
    uint64_t half_mask = 0;

    // Reader cursor: the block at ordinal k of this epoch's order.
    int64_t k = -1, blk = -1, blk_shard = 0, blk_row0 = 0, blk_rows = 0, r = 0;  // r: next row in the block
    // Mapped window: rows [map_first, blk_rows) of block map_blk.
    void* map = nullptr;
    size_t map_len = 0;
    const char* map_rows = nullptr;
    int64_t map_blk = -1, map_first = 0;

    ~Impl() { unmap(); }

    void unmap() {
        if (map) ::munmap(map, map_len);
        map = nullptr;
        map_len = 0;
        map_rows = nullptr;
        map_blk = -1;
    }

    // Block ordinal x of this epoch → block number: a 4-round Feistel network on 2·half_bits
    // bits, cycle-walking until the value falls in [0, nb). A bijection; < 4 walks on average.
    int64_t permute(int64_t x) const {
        if (nb == 1) return 0;
        uint64_t v = uint64_t(x);
        do {
            uint64_t L = v >> half_bits, R = v & half_mask;
            for (uint64_t key : keys) {
                const uint64_t t = L ^ (mix64(R ^ key) & half_mask);
                L = R;
                R = t;
            }
            v = (L << half_bits) | R;
        } while (v >= uint64_t(nb));
        return int64_t(v);
    }

    void start_epoch(uint64_t e) {
        unmap();
        epoch = e;
        emitted = read = fill = 0;
        k = blk = -1;
        blk_rows = r = 0;
        const uint64_t base = mix64(opt.seed ^ mix64(e ^ 0x5ae5f2ea3c0ffeeULL));
        rng.reseed(mix64(base + 1));
        for (int i = 0; i < 4; ++i) keys[i] = mix64(base + 2 + uint64_t(i));
    }

    // Block b → its shard, first row in the shard, and row count.
    void locate(int64_t b, int64_t& shard, int64_t& row0, int64_t& rows) const {
        shard = int64_t(std::upper_bound(shard_block0.begin(), shard_block0.end(), b) - shard_block0.begin()) - 1;
        row0 = (b - shard_block0[size_t(shard)]) * bs;
        rows = std::min(bs, shards[size_t(shard)].rows - row0);
    }

    // Asks the kernel to read the next block of the order into the page cache (which is not part
    // of the resident set), so the disk works while the current block is consumed.
    void prefetch_next() const {
        if (k + 1 >= nb) return;
        int64_t s = 0, row0 = 0, rows = 0;
        locate(permute(k + 1), s, row0, rows);
        const StreamShard& sh = shards[size_t(s)];
        const uint64_t row_bytes = uint64_t(d) * sh.item_size;
        const int fd = ::open(sh.path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) return;  // reported when the block is mapped
        ::posix_fadvise(fd, off_t(sh.data_offset + uint64_t(row0) * row_bytes), off_t(uint64_t(rows) * row_bytes),
                        POSIX_FADV_WILLNEED);
        ::close(fd);
    }

    // The next sample of this epoch's block stream (read < N): advances the cursor, returns its
    // global index. Reads nothing.
    int64_t next_id() {
        if (r == blk_rows) {
            blk = permute(++k);
            locate(blk, blk_shard, blk_row0, blk_rows);
            r = 0;
        }
        ++read;
        return shards[size_t(blk_shard)].first_row + blk_row0 + r++;
    }

    // Maps rows [first, blk_rows) of the current block.
    void map_window(int64_t first) {
        unmap();
        const StreamShard& sh = shards[size_t(blk_shard)];
        const uint64_t row_bytes = uint64_t(d) * sh.item_size;
        const uint64_t begin = sh.data_offset + uint64_t(blk_row0 + first) * row_bytes;
        const uint64_t end = sh.data_offset + uint64_t(blk_row0 + blk_rows) * row_bytes;
        const uint64_t abegin = begin / page * page;
        const int fd = open_checked(sh);
        void* m = ::mmap(nullptr, size_t(end - abegin), PROT_READ, MAP_PRIVATE, fd, off_t(abegin));
        const int err = errno;
        ::close(fd);
        if (m == MAP_FAILED) fail(sh.path, "cannot memory-map (" + std::string(std::strerror(err)) + "); check free address space");
        ::madvise(m, size_t(end - abegin), MADV_SEQUENTIAL);
        ::madvise(m, size_t(end - abegin), MADV_WILLNEED);
        map = m;
        map_len = size_t(end - abegin);
        map_rows = static_cast<const char*>(m) + (begin - abegin);
        map_blk = blk;
        map_first = first;
        prefetch_next();
    }

    // Reads the next sample of the stream into dst (d floats); returns its global index.
    int64_t read_next(float* dst) {
        const int64_t id = next_id();
        const int64_t row = r - 1;
        if (map_blk != blk) map_window(row);
        const StreamShard& sh = shards[size_t(blk_shard)];
        to_f32(map_rows + uint64_t(row - map_first) * uint64_t(d) * sh.item_size, dst, sh.dtype, d);
        if (r == blk_rows) unmap();  // block used up: its pages leave the resident set now
        return id;
    }

    void emit(float* dst, int64_t* id_out) {
        if (emitted == N) start_epoch(epoch + 1);
        if (fill == 0) {  // epoch start: fill the buffer
            for (int64_t i = 0; i < slots; ++i) ids[i] = read_next(buf.get() + i * d);
            fill = slots;
        }
        const int64_t j = int64_t(rng.below(uint64_t(fill)));
        float* slot = buf.get() + j * d;
        std::memcpy(dst, slot, size_t(d) * sizeof(float));
        if (id_out) *id_out = ids[j];
        if (read < N) {
            ids[j] = read_next(slot);
        } else {  // draining: the last valid slot moves into the emitted one
            --fill;
            if (j != fill) {
                std::memcpy(slot, buf.get() + fill * d, size_t(d) * sizeof(float));
                ids[j] = ids[fill];
            }
        }
        ++emitted;
    }

    // Same draws as emit(), on ids only; returns the emitted sample's id.
    int64_t skip() {
        if (emitted == N) start_epoch(epoch + 1);
        if (fill == 0) {
            for (int64_t i = 0; i < slots; ++i) ids[i] = next_id();
            fill = slots;
        }
        const int64_t j = int64_t(rng.below(uint64_t(fill)));
        const int64_t out = ids[j];
        if (read < N) {
            ids[j] = next_id();
        } else {
            --fill;
            ids[j] = ids[fill];
        }
        ++emitted;
        return out;
    }

    // Reads the data of the fill slots from their ids, in file order, with pread.
    void materialise() { read_rows(ids.get(), fill, buf.get()); }

    // Rows with global indices id[0..n) into out [n, d], read in file order with pread.
    void read_rows(const int64_t* row_ids, int64_t n, float* out) {
        std::vector<int64_t> order(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) order[size_t(i)] = i;
        std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return row_ids[a] < row_ids[b]; });
        int fd = -1;
        size_t fd_shard = 0;
        try {
            for (int64_t slot : order) {
                const int64_t id = row_ids[slot];
                const size_t s = size_t(std::upper_bound(shards.begin(), shards.end(), id,
                                                         [](int64_t v, const StreamShard& sh) { return v < sh.first_row; }) -
                                        shards.begin()) - 1;
                const StreamShard& sh = shards[s];
                if (fd < 0 || fd_shard != s) {
                    if (fd >= 0) ::close(fd);
                    fd = -1;
                    fd = open_checked(sh);
                    fd_shard = s;
                }
                const size_t row_bytes = size_t(d) * sh.item_size;
                const uint64_t at = sh.data_offset + uint64_t(id - sh.first_row) * row_bytes;
                for (size_t got = 0; got < row_bytes;) {
                    const ssize_t n = ::pread(fd, scratch.get() + got, row_bytes - got, off_t(at + got));
                    if (n < 0 && errno == EINTR) continue;
                    if (n <= 0) fail(sh.path, "read error (" + (n < 0 ? errno_text() : std::string("end of file")) +
                                                  "); the shard changed after the stream was opened");
                    got += size_t(n);
                }
                to_f32(scratch.get(), out + slot * d, sh.dtype, d);
            }
        } catch (...) {
            if (fd >= 0) ::close(fd);
            throw;
        }
        if (fd >= 0) ::close(fd);
    }
};

StreamSource::StreamSource(const StreamOptions& opt) : p_(std::make_unique<Impl>()) {
    Impl& s = *p_;
    s.opt = opt;
    check(!opt.pattern.empty(), "stream: no data path given; set a .npy file or a glob pattern such as 'acts/*.npy'");
    check(opt.buffer_samples >= 1, "stream: buffer_samples is " + std::to_string(opt.buffer_samples) +
                                       "; it must be at least 1 (e.g. 65536)");
    check(opt.block_samples >= 0, "stream: block_samples is " + std::to_string(opt.block_samples) +
                                      "; it must be 0 (automatic) or positive");
    check(opt.dtype_hint.empty() || opt.dtype_hint == "bfloat16",
          "stream: dtype_hint '" + opt.dtype_hint + "' is unknown; use \"bfloat16\" or leave it empty");
    const long ps = ::sysconf(_SC_PAGESIZE);
    if (ps > 0) s.page = uint64_t(ps);

    for (const std::string& path : expand(opt.pattern)) {
        const NpyHeader h = npy_read_header(path, opt.dtype_hint);
        std::string shape;
        for (size_t i = 0; i < h.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(h.shape[i]);
        if (h.shape.size() != 2)
            fail(path, "has shape (" + shape + "); streaming needs 2-d arrays [samples, d_in], reshape before saving");
        if (h.dtype != NpyDtype::f32 && h.dtype != NpyDtype::f16 && h.dtype != NpyDtype::bf16)
            fail(path, "dtype '" + h.descr + "' cannot be streamed (float32 '<f4', float16 '<f2' and bfloat16 are); "
                       "convert with arr.astype(np.float32)");
        if (s.shards.empty()) s.d = h.shape[1];
        else if (h.shape[1] != s.d)
            fail(path, "has d_in " + std::to_string(h.shape[1]) + " (shape (" + shape + ")) but " +
                           s.shards.front().path + " has " + std::to_string(s.d) +
                           "; all shards need the same number of columns");
        StreamShard sh;
        sh.path = path;
        sh.rows = h.shape[0];
        sh.dtype = h.dtype;
        sh.item_size = h.item_size;
        sh.data_offset = h.data_offset;
        sh.file_bytes = h.data_offset + h.data_bytes();
        sh.first_row = s.N;
        s.N += sh.rows;
        s.max_item = std::max(s.max_item, sh.item_size);
        s.shards.push_back(std::move(sh));
    }
    s.bs = opt.block_samples > 0
               ? opt.block_samples
               : std::max<int64_t>(1, int64_t(kAutoBlockBytes / (uint64_t(s.d) * s.max_item)));
    for (const auto& sh : s.shards) {
        s.shard_block0.push_back(s.nb);
        s.nb += (sh.rows + s.bs - 1) / s.bs;
    }
    s.shard_block0.push_back(s.nb);
    while ((uint64_t(1) << (2 * s.half_bits)) < uint64_t(s.nb)) ++s.half_bits;
    s.half_mask = (uint64_t(1) << s.half_bits) - 1;

    s.slots = std::min(opt.buffer_samples, s.N);
    try {
        s.buf.reset(new float[size_t(s.slots) * size_t(s.d)]);  // uninitialised: pages are touched when filled
        s.ids.reset(new int64_t[size_t(s.slots)]);
        s.scratch.reset(new char[size_t(s.d) * s.max_item]);
    } catch (const std::bad_alloc&) {
        throw Error("stream: cannot allocate the shuffle buffer of " + std::to_string(s.slots) + " samples x " +
                    std::to_string(s.d) + " floats (" + std::to_string(uint64_t(s.slots) * uint64_t(s.d) * 4 >> 20) +
                    " MiB); lower buffer_samples");
    }
    s.start_epoch(0);
}

StreamSource::~StreamSource() = default;
StreamSource::StreamSource(StreamSource&&) noexcept = default;
StreamSource& StreamSource::operator=(StreamSource&&) noexcept = default;

int64_t StreamSource::d_in() const { return p_->d; }
int64_t StreamSource::num_samples() const { return p_->N; }
int64_t StreamSource::buffer_slots() const { return p_->slots; }
int64_t StreamSource::block_samples() const { return p_->bs; }
const std::vector<StreamShard>& StreamSource::shards() const { return p_->shards; }
uint64_t StreamSource::epoch() const { return p_->epoch; }
int64_t StreamSource::position() const { return p_->emitted; }

void StreamSource::next_batch(float* out, int64_t m, int64_t* ids) {
    check(m >= 0, "stream: batch size " + std::to_string(m) + " is negative");
    check(m == 0 || out != nullptr, "stream: next_batch needs an output buffer");
    Impl& s = *p_;
    check(!s.ids_only, "stream: next_batch after next_part; use one of them per stream");
    for (int64_t i = 0; i < m; ++i) s.emit(out + i * s.d, ids ? ids + i : nullptr);
}

void StreamSource::next_part(float* out, int64_t m, int64_t begin, int64_t count, int64_t* ids) {
    check(m >= 0 && begin >= 0 && count >= 0 && begin + count <= m,
          "stream: rows [" + std::to_string(begin) + ", " + std::to_string(begin + count) + ") are not a part of a batch of " +
              std::to_string(m));
    check(ids != nullptr && (count == 0 || out != nullptr), "stream: next_part needs ids [m] and an output buffer");
    Impl& s = *p_;
    check(s.ids_only || (s.emitted == 0 && s.fill == 0) || s.emitted == s.N,
          "stream: next_part after next_batch in the same epoch; use one of them per stream");
    s.ids_only = true;
    for (int64_t i = 0; i < m; ++i) ids[i] = s.skip();
    s.read_rows(ids + begin, count, out + begin * s.d);
}

void StreamSource::set_ids_only() {
    Impl& s = *p_;
    check(s.ids_only || (s.emitted == 0 && s.fill == 0), "stream: set_ids_only on a stream already emitting data");
    s.ids_only = true;
}

void StreamSource::seek(uint64_t epoch, int64_t position) {
    Impl& s = *p_;
    check(position >= 0 && position <= s.N, "stream: position " + std::to_string(position) +
                                                " is outside the epoch of " + std::to_string(s.N) +
                                                " samples; the checkpoint does not belong to this data");
    s.start_epoch(epoch);
    if (position == 0) return;
    for (int64_t i = 0; i < position; ++i) s.skip();
    if (!s.ids_only) s.materialise();
}

std::string StreamSource::state() const {
    const Impl& s = *p_;
    std::ostringstream os;
    os << "stream1 seed=" << s.opt.seed << " buffer=" << s.slots << " block=" << s.bs << " d_in=" << s.d
       << " samples=" << s.N << " epoch=" << s.epoch << " position=" << s.emitted;
    return os.str();
}

void StreamSource::set_state(const std::string& text) {
    const Impl& s = *p_;
    const std::string bad = "stream state '" + text.substr(0, 200) + "' is malformed; the checkpoint is damaged";
    std::istringstream is(text);
    std::string tag;
    check(bool(is >> tag) && tag == "stream1", bad);
    const char* names[] = {"seed", "buffer", "block", "d_in", "samples", "epoch", "position"};
    uint64_t v[7] = {};
    for (int i = 0; i < 7; ++i) {
        std::string tok;
        check(bool(is >> tok), bad);
        const size_t eq = tok.find('=');
        check(eq != std::string::npos && tok.compare(0, eq, names[i]) == 0, bad);
        const std::string num = tok.substr(eq + 1);
        check(!num.empty() && num.find_first_not_of("0123456789") == std::string::npos && num.size() <= 20, bad);
        try {
            v[i] = std::stoull(num);
        } catch (const std::exception&) {
            throw Error(bad);
        }
    }
    std::string rest;
    check(!(is >> rest), bad);
    const uint64_t have[5] = {s.opt.seed, uint64_t(s.slots), uint64_t(s.bs), uint64_t(s.d), uint64_t(s.N)};
    for (int i = 0; i < 5; ++i)
        check(v[i] == have[i], std::string("stream state: saved with ") + names[i] + " " + std::to_string(v[i]) +
                                   " but this stream has " + std::to_string(have[i]) +
                                   "; resume with the same data and stream settings");
    check(v[6] <= uint64_t(s.N), bad);
    seek(v[5], int64_t(v[6]));
}

uint64_t StreamSource::resident_bound_bytes() const {
    const Impl& s = *p_;
    return uint64_t(s.slots) * (4 * uint64_t(s.d) + 8) + uint64_t(s.bs) * uint64_t(s.d) * s.max_item + 2 * s.page +
           kSlackBytes + kPerShardBytes * s.shards.size();
}

}  // namespace sae
