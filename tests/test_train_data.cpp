// train_run's data and hooks without Python (train.hpp TrainData, TrainHooks, BatchSource): the
// caller's samples give the bits of the same values read from a .npy; a BatchSource is
// deterministic whatever its batch boundaries, one pass per epoch, resumable, and its failures
// (and the hooks') propagate after a checkpoint; the stop flag returns "interrupted"; the signal
// handler found before training is the one left after it.
#include <gtest/gtest.h>

#include <csignal>
#include <filesystem>
#include <stdexcept>

#include "sae/error.hpp"
#include "sae/io.hpp"
#include "sae/rng.hpp"
#include "sae/train.hpp"
#include "test_util.hpp"

using namespace sae;
using sae_test::read_bytes;
using sae_test::temp_dir;

namespace {

std::vector<float> random_rows(int64_t n, int64_t d) {
    Rng rng(7);
    std::vector<float> x(size_t(n * d));
    for (auto& v : x) v = float(rng.uniform(-1, 1));
    return x;
}

// Serves rows [n, d] in batches of `batch` rows; optionally throws before batch `fail_at`.
class VectorSource final : public BatchSource {
public:
    VectorSource(const std::vector<float>& x, int64_t d, int64_t batch, bool restartable = true, int64_t fail_at = -1)
        : x_(x), d_(d), batch_(batch), restartable_(restartable), fail_at_(fail_at) {}
    Batch next() override {
        const int64_t n = int64_t(x_.size()) / d_;
        if (served_++ == fail_at_) throw std::runtime_error("source failed");
        if (row_ >= n) return {};
        const int64_t rows = std::min(batch_, n - row_);
        Batch b{x_.data() + row_ * d_, rows, d_};
        row_ += rows;
        return b;
    }
    bool restart() override {
        if (!restartable_) return false;
        row_ = 0;
        return true;
    }

private:
    const std::vector<float>& x_;
    int64_t d_, batch_;
    bool restartable_;
    int64_t fail_at_, row_ = 0, served_ = 0;
};

Config streamed(int64_t epochs) {
    Config c;
    c.architecture = "topk";
    c.k = 3;
    c.d_sae = 16;
    c.optimizer = "adam";
    c.batch_size = 32;
    c.epochs = epochs;
    c.threads = 1;
    c.log_every = 4;
    c.checkpoint_every = 1000;
    c.shuffle_buffer = 50;
    return c;
}

TrainHooks quiet() {
    TrainHooks h;
    h.quiet = true;
    return h;
}

std::string model_bytes(const std::string& dir) { return read_bytes(dir + "/model.safetensors"); }

}  // namespace

TEST(TrainData, SamplesInMemoryGiveTheBitsOfTheSameNpy) {
    const std::string dir = temp_dir("td-mem");
    const auto x = random_rows(300, 10);
    npy_write_f32(dir + "/x.npy", x.data(), {300, 10});
    for (const char* normalize : {"auto", "none", "ufldl"}) {
        Config c;
        c.data = dir + "/x.npy";
        c.d_sae = 6;
        c.optimizer = "adam";
        c.epochs = 2;
        c.batch_size = 40;
        c.threads = 1;
        c.normalize = normalize;
        train_run(c, dir + "/file", false, TrainData{}, quiet());
        TrainData d;
        d.samples = x.data();
        d.rows = 300;
        d.cols = 10;
        d.name = "samples";
        train_run(c, dir + "/mem", false, d, quiet());
        EXPECT_EQ(model_bytes(dir + "/file"), model_bytes(dir + "/mem")) << normalize;
    }
    std::filesystem::remove_all(dir);
}

TEST(TrainData, BatchSourceIsDeterministicWhateverItsBatches) {
    const std::string dir = temp_dir("td-fed");
    const auto x = random_rows(200, 8);
    VectorSource a(x, 8, 25), b(x, 8, 7);
    TrainData da, db;
    da.batches = &a;
    db.batches = &b;
    const TrainSummary s = train_run(streamed(3), dir + "/a", false, da, quiet());
    train_run(streamed(3), dir + "/b", false, db, quiet());
    EXPECT_EQ(model_bytes(dir + "/a"), model_bytes(dir + "/b"));
    EXPECT_EQ(s.steps, (3 * 200 + 31) / 32);  // ceil(epochs·N/B), batches straddling passes
    EXPECT_EQ(s.samples, s.steps * 32);
    std::filesystem::remove_all(dir);
}

TEST(TrainData, BatchSourceResumesToTheSameBits) {
    const std::string dir = temp_dir("td-resume");
    const auto x = random_rows(200, 8);
    VectorSource full(x, 8, 25), part(x, 8, 25), rest(x, 8, 25);
    TrainData d;
    d.batches = &full;
    train_run(streamed(3), dir + "/full", false, d, quiet());
    d.batches = &part;
    train_run(streamed(2), dir + "/part", false, d, quiet());
    d.batches = &rest;
    train_run(streamed(3), dir + "/part", true, d, quiet());
    EXPECT_EQ(model_bytes(dir + "/full"), model_bytes(dir + "/part"));
    std::filesystem::remove_all(dir);
}

TEST(TrainData, ASourceReadOnceCannotGiveTwoEpochs) {
    const std::string dir = temp_dir("td-once");
    const auto x = random_rows(100, 8);
    VectorSource once(x, 8, 25, false);
    TrainData d;
    d.batches = &once;
    const std::string e = sae_test::error_of([&] { train_run(streamed(2), dir, false, d, quiet()); });
    EXPECT_NE(e.find("the data can be read only once"), std::string::npos) << e;
    VectorSource once1(x, 8, 25, false);
    d.batches = &once1;
    const TrainSummary s = train_run(streamed(1), dir, false, d, quiet());
    EXPECT_EQ(s.samples, 100);  // the last batch short
    std::filesystem::remove_all(dir);
}

TEST(TrainData, FailuresOfTheSourceAndHooksPropagateAfterACheckpoint) {
    const std::string dir = temp_dir("td-fail");
    const auto x = random_rows(200, 8);
    VectorSource full(x, 8, 25), failing(x, 8, 25, true, 12), rest(x, 8, 25);
    TrainData d;
    d.batches = &full;
    train_run(streamed(3), dir + "/full", false, d, quiet());
    d.batches = &failing;
    EXPECT_THROW(train_run(streamed(3), dir + "/part", false, d, quiet()), std::runtime_error);
    ASSERT_TRUE(std::filesystem::exists(dir + "/part/checkpoint.safetensors"));
    d.batches = &rest;
    train_run(streamed(3), dir + "/part", true, d, quiet());
    EXPECT_EQ(model_bytes(dir + "/full"), model_bytes(dir + "/part"));

    TrainHooks h = quiet();
    int64_t logged = 0;
    h.on_log = [&](int64_t step, const std::string& json) {
        EXPECT_NE(json.find("\"step\":" + std::to_string(step)), std::string::npos);
        if (++logged == 3) throw std::runtime_error("hook failed");
    };
    VectorSource again(x, 8, 25);
    d.batches = &again;
    EXPECT_THROW(train_run(streamed(3), dir + "/hook", false, d, h), std::runtime_error);
    const auto st = safetensors_read(dir + "/hook/checkpoint.safetensors");
    EXPECT_EQ(st.metadata.at("step"), "12");
    std::filesystem::remove_all(dir);
}

namespace {
void custom_handler(int) {}
}  // namespace

TEST(TrainData, StopFlagInterruptsAndThePreviousHandlerIsRestored) {
    const std::string dir = temp_dir("td-stop");
    const auto x = random_rows(200, 8);
    std::signal(SIGINT, custom_handler);
    std::atomic<bool> stop{false};
    TrainHooks h = quiet();
    h.stop = &stop;
    h.progress = [&](const TrainProgress& p) {
        EXPECT_TRUE(p.total == -1 || p.total == 19);  // known once the first pass is read
        if (p.step >= 8) stop = true;
    };
    VectorSource src(x, 8, 25);
    TrainData d;
    d.batches = &src;
    const TrainSummary s = train_run(streamed(3), dir, false, d, h);
    EXPECT_EQ(s.stop_reason, "interrupted");
    EXPECT_EQ(s.steps, 8);
    EXPECT_EQ(train_interrupted_message(streamed(3), s), "interrupted at step 8; checkpoint saved, continue with --resume");
    EXPECT_TRUE(std::filesystem::exists(dir + "/checkpoint.safetensors"));
    EXPECT_FALSE(std::filesystem::exists(dir + "/model.safetensors"));
    EXPECT_EQ(std::signal(SIGINT, SIG_DFL), &custom_handler);
    std::filesystem::remove_all(dir);
}
