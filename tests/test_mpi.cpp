// Training under mpirun (built with SAE_MPI): data replicas against one process, the same bits
// run after run, resume and its layout check, and the faults (bad data, a killed rank).
// Tiny models: each run takes a fraction of a second. Skipped when built without MPI.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "sae/io.hpp"
#include "test_util.hpp"

namespace {

using sae_test::run;

const std::string kMpiexec = SAE_MPIEXEC;

#define REQUIRE_MPI() \
    if (kMpiexec.empty()) GTEST_SKIP() << "built without MPI (-DSAE_MPI=OFF)"

// `sae train` on `ranks` processes (1: no mpirun), one thread each.
sae_test::CommandResult train(int ranks, const std::string& dir, const std::string& sets, const std::string& extra = "") {
    std::string cmd;
    if (ranks > 1)
        cmd = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " + kMpiexec + " --oversubscribe -np " +
              std::to_string(ranks) + " ";
    return run(cmd + sae_test::sae_binary() + " train --out " + dir + " --set threads=1 " + sets + " " + extra);
}

// max |a − b| over every saved tensor, relative to max |a|.
double max_rel_diff(const std::string& a_dir, const std::string& b_dir) {
    const auto a = sae::safetensors_read(a_dir + "/model.safetensors");
    const auto b = sae::safetensors_read(b_dir + "/model.safetensors");
    EXPECT_EQ(a.tensors.size(), b.tensors.size());
    double diff = 0, scale = 0;
    for (const auto& [name, ta] : a.tensors) {
        const auto& tb = b.tensors.at(name);
        EXPECT_EQ(ta.shape, tb.shape) << name;
        for (size_t i = 0; i < ta.f32.size(); ++i) {
            diff = std::max(diff, double(std::fabs(ta.f32[i] - tb.f32[i])));
            scale = std::max(scale, double(std::fabs(ta.f32[i])));
        }
    }
    return diff / scale;
}

// A job that failed as it should: non-zero exit, and one "sae: error: ..." line (rank 0's) that
// contains needle; mpirun's own notice of the abort may follow.
void expect_one_error(const sae_test::CommandResult& r, const std::string& needle) {
    EXPECT_NE(r.exit_code, 0);
    const size_t at = r.err.find("sae: error: ");
    ASSERT_NE(at, std::string::npos) << r.err;
    EXPECT_NE(r.err.substr(at, r.err.find('\n', at) - at).find(needle), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("sae: error: ", at + 1), std::string::npos) << "more than one message:\n" << r.err;
}

// `sae train` on `ranks` ranks, into out, until `file` (in out) appears; then SIGKILL to the last
// rank mpirun started (its children are the ranks). Returns mpirun's exit code and the
// milliseconds from the kill to mpirun's end (a watchdog kills mpirun after 30 s).
std::pair<int, int> kill_a_rank(const std::string& dir, int ranks, const std::string& out, const std::string& sets,
                                const std::string& file) {
    const std::string script =
        "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " + kMpiexec + " --oversubscribe -np " + std::to_string(ranks) +
        " " + sae_test::sae_binary() + " train --out " + out + " --set threads=1 " + sets + " >" + dir + "/log 2>&1 & MP=$!\n"
        "for i in $(seq 300); do [ -f " + out + "/" + file + " ] && break; sleep 0.1; done\n"
        "sleep 0.5\n"
        "V=$(pgrep -P $MP | tail -n 1)\n"
        "[ -n \"$V\" ] || { echo no-rank; kill -9 $MP; exit 3; }\n"
        "kill -9 $V; T0=$(date +%s%N)\n"
        "( sleep 30; kill -9 $MP 2>/dev/null ) & W=$!\n"
        "wait $MP; RC=$?; T1=$(date +%s%N); kill $W 2>/dev/null\n"
        "echo rc=$RC ms=$(( (T1 - T0) / 1000000 ))\n";
    sae_test::write_bytes(dir + "/kill.sh", script);
    const auto r = run("bash " + dir + "/kill.sh");
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    const size_t rc = r.out.find("rc="), ms = r.out.find("ms=");
    EXPECT_TRUE(rc != std::string::npos && ms != std::string::npos) << r.out;
    if (rc == std::string::npos || ms == std::string::npos) return {0, 1 << 30};
    return {std::stoi(r.out.substr(rc + 3)), std::stoi(r.out.substr(ms + 3))};
}

nlohmann::json cfg_json(const std::string& dir) { return nlohmann::json::parse(sae_test::read_bytes(dir + "/cfg.json")); }

struct Case {
    const char* name;
    std::string sets;
};

std::vector<Case> cases(const std::string& data) {
    const std::string base = "--set data=" + data + " --set optimizer=adam --set lr=0.01 --set batch_size=50 --set epochs=3 --set log_every=4 ";
    return {
        {"classic_kl", base + "--set d_sae=6 --set beta=3"},
        {"topk", base + "--set architecture=topk --set k=3 --set d_sae=24"},
        {"topk_auxk_resample", base + "--set architecture=topk --set k=2 --set d_sae=24 --set dead_threshold_samples=100 --set resample_dead=true"},
        {"jumprelu", base + "--set architecture=jumprelu --set d_sae=24"},
        {"standard", base + "--set architecture=standard --set d_sae=24"},
        {"gated", base + "--set architecture=gated --set d_sae=24"},
        // streamed shards: every replica reads the same deterministic shuffle
        {"topk_streamed", base + "--set architecture=topk --set k=3 --set d_sae=24 --set shuffle_buffer=64"},
        // a selection over the whole batch: replicas merge their histograms and ties
        {"batchtopk", base + "--set architecture=batchtopk --set k=3 --set d_sae=24"},
        {"matryoshka_batchtopk", base + "--set architecture=matryoshka_batchtopk --set k=3 --set d_sae=24"},
        // denoising: every replica draws the whole batch's masks and takes its rows'
        {"classic_denoise", base + "--set d_sae=6 --set beta=3 --set corruption=masking --set corruption_level=0.3 --set dropout=0.2"},
        {"classic_gaussian", base + "--set d_sae=6 --set beta=3 --set corruption=gaussian --set corruption_level=0.1"},
        // streamed, each replica reading only its rows; resampling gathers the batch's rows
        {"topk_streamed_resample", base + "--set architecture=topk --set k=2 --set d_sae=24 --set shuffle_buffer=64 "
                                          "--set dead_threshold_samples=100 --set resample_dead=true"},
    };
}

TEST(Mpi, ReplicasMatchOneProcess) {
    REQUIRE_MPI();
    const std::string dir = sae_test::temp_dir("mpi_replicas");
    const std::string data = sae_test::two_blob_npy(dir, 250, 12);  // batches of 50: 17/17/16 rows on 3 ranks
    for (const auto& c : cases(data)) {
        const std::string one = dir + "/" + c.name + "_1";
        auto r = train(1, one, c.sets);
        ASSERT_EQ(r.exit_code, 0) << c.name << r.err;
        for (int ranks : {2, 3, 4}) {
            // 2 and 4 ranks: the two selections are enough
            if (ranks != 3 && std::string(c.name) != "topk" && std::string(c.name) != "batchtopk") continue;
            const std::string many = dir + "/" + c.name + "_" + std::to_string(ranks);
            r = train(ranks, many, c.sets);
            ASSERT_EQ(r.exit_code, 0) << c.name << " ranks " << ranks << ": " << r.err;
            // Up to the order of floating-point sums (the slices' partial sums).
            EXPECT_LT(max_rel_diff(one, many), 1e-5) << c.name << " ranks " << ranks;
            EXPECT_EQ(cfg_json(many)["ranks"], ranks);
            EXPECT_EQ(cfg_json(many)["latent_shards"], 1);
            // Rank 0 alone writes: one metrics line per log step, as one process.
            const auto m1 = sae_test::read_jsonl(one + "/metrics.jsonl"), mn = sae_test::read_jsonl(many + "/metrics.jsonl");
            ASSERT_EQ(m1.size(), mn.size()) << c.name;
            // The statistics are the whole batch's (all replicas' rows), not rank 0's.
            EXPECT_NEAR(m1.back()["l0"].get<double>(), mn.back()["l0"].get<double>(), 1e-9) << c.name;
            EXPECT_NEAR(m1.back()["fvu"].get<double>(), mn.back()["fvu"].get<double>(), 1e-4) << c.name;
            EXPECT_NEAR(m1.back()["J_total"].get<double>(), mn.back()["J_total"].get<double>(),
                        1e-5 * std::fabs(m1.back()["J_total"].get<double>()))
                << c.name;
        }
        // Every other output is the same file: cfg.json differs in "ranks" alone.
        auto a = cfg_json(one), b = cfg_json(dir + "/" + c.name + "_3");
        a.erase("ranks");
        b.erase("ranks");
        EXPECT_EQ(a, b) << c.name;
    }
    std::filesystem::remove_all(dir);
}

TEST(Mpi, SameLayoutSameBits) {
    REQUIRE_MPI();
    const std::string dir = sae_test::temp_dir("mpi_bits");
    const std::string data = sae_test::two_blob_npy(dir, 250, 12);
    const std::string sets = cases(data)[1].sets;
    ASSERT_EQ(train(3, dir + "/a", sets).exit_code, 0);
    ASSERT_EQ(train(3, dir + "/b", sets).exit_code, 0);
    EXPECT_EQ(sae_test::read_bytes(dir + "/a/model.safetensors"), sae_test::read_bytes(dir + "/b/model.safetensors"));
    std::filesystem::remove_all(dir);
}

// Full-batch L-BFGS: every replica computes its rows' cost and gradient; summed, they are the
// whole set's, so the iterates are one process's (the line search amplifies rounding, so few
// iterations).
TEST(Mpi, LbfgsFollowsOneProcess) {
    REQUIRE_MPI();
    const std::string dir = sae_test::temp_dir("mpi_lbfgs");
    const std::string data = sae_test::two_blob_npy(dir, 250, 12);
    // (and denoising: one corruption of the whole set, each replica its rows' part of it)
    for (const std::string extra : {"", " --set corruption=masking --set corruption_level=0.2"}) {
        const std::string sets = "--set data=" + data + " --set optimizer=lbfgs --set max_iterations=5 --set d_sae=6 --set beta=3" + extra;
        ASSERT_EQ(train(1, dir + "/one", sets).exit_code, 0);
        for (int ranks : {2, 3}) {
            const std::string many = dir + "/r" + std::to_string(ranks);
            const auto r = train(ranks, many, sets);
            ASSERT_EQ(r.exit_code, 0) << r.err;
            EXPECT_LT(max_rel_diff(dir + "/one", many), 1e-5) << ranks << extra;
            const auto m1 = sae_test::read_jsonl(dir + "/one/metrics.jsonl"), mn = sae_test::read_jsonl(many + "/metrics.jsonl");
            ASSERT_EQ(m1.size(), mn.size());
            for (size_t i = 0; i < m1.size(); ++i)
                EXPECT_NEAR(m1[i]["J_total"].get<double>(), mn[i]["J_total"].get<double>(), 1e-6 * m1[i]["J_total"].get<double>()) << extra;
        }
    }
    std::filesystem::remove_all(dir);
}

TEST(Mpi, ResumeSameBitsAndLayoutChecked) {
    REQUIRE_MPI();
    const std::string dir = sae_test::temp_dir("mpi_resume");
    const std::string data = sae_test::two_blob_npy(dir, 250, 12);
    const std::string sets = cases(data)[2].sets;  // topk with AuxK and resampling
    ASSERT_EQ(train(2, dir + "/whole", sets).exit_code, 0);
    ASSERT_EQ(train(2, dir + "/parts", sets, "--set epochs=1").exit_code, 0);
    const auto r = train(2, dir + "/parts", sets, "--resume");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(sae_test::read_bytes(dir + "/whole/model.safetensors"), sae_test::read_bytes(dir + "/parts/model.safetensors"));
    const auto ck = sae::safetensors_read(dir + "/parts/checkpoint.safetensors");
    EXPECT_EQ(ck.metadata.at("ranks"), "2");
    EXPECT_EQ(ck.metadata.at("latent_shards"), "1");
    // Streamed (each replica reading its rows only): the same.
    const std::string streamed = sets + " --set shuffle_buffer=64";
    ASSERT_EQ(train(2, dir + "/swhole", streamed).exit_code, 0);
    ASSERT_EQ(train(2, dir + "/sparts", streamed, "--set epochs=1").exit_code, 0);
    const auto rs = train(2, dir + "/sparts", streamed, "--resume");
    ASSERT_EQ(rs.exit_code, 0) << rs.err;
    EXPECT_EQ(sae_test::read_bytes(dir + "/swhole/model.safetensors"), sae_test::read_bytes(dir + "/sparts/model.safetensors"));
    // Another layout: refused with one line.
    for (int ranks : {1, 3}) {
        const auto bad = train(ranks, dir + "/parts", sets, "--resume");
        expect_one_error(bad, "the checkpoint was made by 2 ranks but this run has " + std::to_string(ranks));
    }
    std::filesystem::remove_all(dir);
}

// Bad data (a NaN in a shard): every rank stops, with one message (rank 0's; the others wait a
// moment before printing, and MPI_Abort ends them first).
TEST(Mpi, BadDataStopsEveryRankWithOneMessage) {
    REQUIRE_MPI();
    const std::string dir = sae_test::temp_dir("mpi_nan");
    std::vector<float> X(4000 * 8, 0.5f);
    for (size_t i = 0; i < X.size(); ++i) X[i] = float(i % 7) * 0.1f;
    X[size_t(3900 * 8 + 3)] = NAN;
    sae::npy_write_f32(dir + "/x.npy", X.data(), {4000, 8});
    for (const char* stream : {"0", "100"}) {
        const auto r = train(3, dir + "/out",
                             "--set data=" + dir + "/x.npy --set shuffle_buffer=" + stream +
                                 " --set normalize=none --set architecture=topk --set k=2 --set d_sae=8 --set optimizer=adam");
        expect_one_error(r, "feature 3 (counting from 0) is NaN; the data must be finite");
    }
    std::filesystem::remove_all(dir);
}

// One rank killed (SIGKILL) mid-run: mpirun ends the others within seconds (no hang in a
// collective), and the last checkpoint (rank 0 writes it atomically) is intact and resumes.
TEST(Mpi, KilledRankEndsTheJob) {
    REQUIRE_MPI();
    const std::string dir = sae_test::temp_dir("mpi_kill");
    const std::string data = sae_test::two_blob_npy(dir, 250, 12);
    const std::string sets = cases(data)[1].sets + " --set epochs=1000000 --set checkpoint_every=20";
    const std::string out = dir + "/out";
    const auto [rc, ms] = kill_a_rank(dir, 3, out, sets, "checkpoint.safetensors");
    EXPECT_NE(rc, 0);
    EXPECT_LT(ms, 20000) << "the job outlived its killed rank by " << ms << " ms";
    // The checkpoint: complete, and a run of the same layout resumes from it.
    const auto ck = sae::safetensors_read(out + "/checkpoint.safetensors");
    const int64_t step = std::stoll(ck.metadata.at("step"));
    EXPECT_GE(step, 20);
    EXPECT_EQ(step % 20, 0);
    const auto resumed = train(3, out, sets, "--resume --set epochs=" + std::to_string(step * 50 / 250 + 1));
    EXPECT_EQ(resumed.exit_code, 0) << resumed.err;
    std::filesystem::remove_all(dir);
}

// Variants from one pass under mpirun: every rank runs every variant on its slice of each batch.
// Each variant's files are the bytes of a separate job of its merged settings on the same ranks,
// and match one process up to the order of sums; resume continues every variant to those bytes.
TEST(Mpi, VariantsAreSeparateJobs) {
    REQUIRE_MPI();
    const std::string dir = sae_test::temp_dir("mpi_variants");
    const std::string data = sae_test::two_blob_npy(dir, 250, 12);
    const std::string sets = cases(data)[1].sets + " --set normalize=unit_range";  // topk k=3, d_sae=24
    const std::string variants =
        "--variant name=k2,k=2,resample_dead=true,dead_threshold_samples=100 "
        "--variant name=btk,architecture=batchtopk,d_sae=16 --variant name=kl,architecture=classic,d_sae=6,beta=3";
    const std::vector<std::pair<std::string, std::string>> merged = {
        {"k2", "--set k=2 --set resample_dead=true --set dead_threshold_samples=100"},
        {"btk", "--set architecture=batchtopk --set d_sae=16"},
        {"kl", "--set architecture=classic --set d_sae=6 --set beta=3"}};
    auto r = train(3, dir + "/multi", sets, variants);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    ASSERT_EQ(train(1, dir + "/multi1", sets, variants).exit_code, 0);
    for (const auto& [name, extra] : merged) {
        r = train(3, dir + "/" + name, sets + " " + extra);
        ASSERT_EQ(r.exit_code, 0) << name << r.err;
        for (const char* f : {"model.safetensors", "cfg.json", "metrics.jsonl", "checkpoint.safetensors"})
            if (std::string(f) != "metrics.jsonl")  // (its samples_per_sec is a timing)
                EXPECT_EQ(sae_test::read_bytes(dir + "/multi/" + name + "/" + f), sae_test::read_bytes(dir + "/" + name + "/" + f))
                    << name << " " << f;
        EXPECT_EQ(sae_test::read_jsonl(dir + "/multi/" + name + "/metrics.jsonl").size(),
                  sae_test::read_jsonl(dir + "/" + name + "/metrics.jsonl").size()) << name;
        EXPECT_EQ(cfg_json(dir + "/multi/" + name)["ranks"], 3);
        EXPECT_LT(max_rel_diff(dir + "/multi1/" + name, dir + "/multi/" + name), 1e-5) << name;
    }
    // Stopped after one epoch of three, resumed on the same ranks: the uninterrupted bytes.
    ASSERT_EQ(train(3, dir + "/parts", sets, variants + " --set epochs=1").exit_code, 0);
    r = train(3, dir + "/parts", sets, variants + " --resume");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    for (const auto& [name, extra] : merged)
        EXPECT_EQ(sae_test::read_bytes(dir + "/multi/" + name + "/model.safetensors"),
                  sae_test::read_bytes(dir + "/parts/" + name + "/model.safetensors")) << name;
    // One variant's checkpoint lost: it replays the stream alone until it reaches the others,
    // on every rank alike.
    ASSERT_EQ(train(3, dir + "/late", sets, variants + " --set epochs=1").exit_code, 0);
    std::filesystem::remove(dir + "/late/btk/checkpoint.safetensors");
    r = train(3, dir + "/late", sets, variants + " --resume");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    for (const auto& [name, extra] : merged)
        EXPECT_EQ(sae_test::read_bytes(dir + "/multi/" + name + "/model.safetensors"),
                  sae_test::read_bytes(dir + "/late/" + name + "/model.safetensors")) << name;
    // A variant's refusal under mpirun names the variant.
    expect_one_error(train(2, dir + "/bad", sets, "--set latent_shards=2 --variant name=a --variant name=kl,architecture=classic,d_sae=6"),
                     "variant 'kl': latent_shards > 1: the latents of a classic model cannot be sharded");
    std::filesystem::remove_all(dir);
}

// SIGTERM to one rank (a scheduler's preemption): the stop request travels with the step's sums,
// so every rank stops after the same step and the checkpoint is consistent; resuming gives the
// bits of an uninterrupted run.
TEST(Mpi, TermOfOneRankStopsAllAtOneStep) {
    REQUIRE_MPI();
    const std::string dir = sae_test::temp_dir("mpi_term");
    const std::string data = sae_test::two_blob_npy(dir, 250, 12);
    const std::string sets = cases(data)[1].sets + " --set epochs=400 --set checkpoint_every=50";  // 2000 steps
    ASSERT_EQ(train(2, dir + "/whole", sets).exit_code, 0);
    const std::string out = dir + "/parts";
    const std::string script =
        "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " + kMpiexec + " --oversubscribe -np 2 " +
        sae_test::sae_binary() + " train --out " + out + " --set threads=1 " + sets + " >" + dir + "/log 2>&1 & MP=$!\n"
        "for i in $(seq 300); do [ -f " + out + "/checkpoint.safetensors ] && break; sleep 0.05; done\n"
        "kill -TERM $(pgrep -P $MP | tail -n 1); wait $MP; echo rc=$?\n";
    sae_test::write_bytes(dir + "/term.sh", script);
    const auto r = run("bash " + dir + "/term.sh");
    const std::string log = sae_test::read_bytes(dir + "/log");
    ASSERT_NE(r.out.find("rc="), std::string::npos) << r.out << r.err;
    ASSERT_NE(log.find("sae: error: interrupted at step "), std::string::npos) << log;
    const auto ck = sae::safetensors_read(out + "/checkpoint.safetensors");
    EXPECT_LT(std::stoll(ck.metadata.at("step")), 2000) << "the run ended before the signal";
    const auto resumed = train(2, out, sets, "--resume");
    ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
    EXPECT_EQ(sae_test::read_bytes(dir + "/whole/model.safetensors"), sae_test::read_bytes(out + "/model.safetensors"));
    std::filesystem::remove_all(dir);
}

// `sae bench` under mpirun times the replicas' step; rank 0 alone prints, with what each
// collective carried: the gradient sum is 4·P bytes a step.
TEST(Mpi, BenchTimesTheDistributedStep) {
    REQUIRE_MPI();
    const std::string cmd = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " + kMpiexec +
                            " --oversubscribe -np 2 " + sae_test::sae_binary() +
                            " bench --d-in 16 --steps 3 --warmup 1 --set architecture=topk --set k=4 --set d_sae=64 "
                            "--set optimizer=adam --set batch_size=64 --set threads=1";
    const auto r = run(cmd);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);  // one object: rank 0's
    EXPECT_EQ(j["ranks"], 2);
    EXPECT_EQ(j["rows_per_rank"], 32);
    const double P = 2 * 16 * 64 + 64 + 16;
    EXPECT_EQ(j["collectives"]["gradient"]["bytes_per_step"].get<double>(), 4 * P);
    EXPECT_EQ(j["collectives"]["gradient"]["calls_per_step"].get<double>(), 1.0);
    // Two latent shards: no gradient sum (each owns its latents); per step each rank sends its
    // k best per row (m·k·8 bytes) and its partial x̂ (m·d_in·4), and b_dec's partial gradient.
    const auto s = run(cmd + " --set latent_shards=2");
    ASSERT_EQ(s.exit_code, 0) << s.err;
    const auto t = nlohmann::json::parse(s.out);
    EXPECT_EQ(t["latent_shards"], 2);
    EXPECT_EQ(t["d_sae"], 32);
    EXPECT_EQ(t["d_sae_total"], 64);
    EXPECT_EQ(t["rows_per_rank"], 64);
    const auto& c = t["collectives"];
    EXPECT_FALSE(c.contains("gradient"));
    EXPECT_EQ(c["top-k merge"]["bytes_per_step"].get<double>(), 64 * 4 * 8);
    EXPECT_EQ(c["decoder reduce"]["bytes_per_step"].get<double>(), 64 * 16 * 4);
    EXPECT_EQ(c["b_dec gradient"]["bytes_per_step"].get<double>(), 16 * 4);
    EXPECT_LT(t["params_mib"].get<double>(), j["params_mib"].get<double>()) << "a shard holds half the latents";
}

// Latent shards: each rank of a latent group owns a slice of d_sae = 25 latents (divisible by
// none of 2, 3, 4), TopK's selection merged exactly, x̂ and ê summed; pure shards and a 2 x 2
// mesh (2 shards x 2 data replicas) against one process, up to the order of sums.
TEST(Mpi, LatentShardsMatchOneProcess) {
    REQUIRE_MPI();
    const std::string dir = sae_test::temp_dir("mpi_shards");
    const std::string data = sae_test::two_blob_npy(dir, 250, 12);
    const std::string base = "--set data=" + data + " --set optimizer=adam --set lr=0.01 --set batch_size=50 --set epochs=3 --set log_every=4 --set d_sae=25 ";
    const std::vector<Case> archs = {
        {"topk_auxk", base + "--set architecture=topk --set k=3 --set dead_threshold_samples=100"},
        {"topk_resample", base + "--set architecture=topk --set k=2 --set dead_threshold_samples=100 --set resample_dead=true"},
        {"batchtopk", base + "--set architecture=batchtopk --set k=3 --set dead_threshold_samples=100"},
        {"jumprelu", base + "--set architecture=jumprelu"},
        {"standard", base + "--set architecture=standard --set grad_clip_norm=0.5"},
        {"gated", base + "--set architecture=gated"},
        // groups of 7, 6, 12 latents: shards cut through them
        {"matryoshka", base + "--set architecture=matryoshka_batchtopk --set k=3 --set matryoshka_groups=0.28,0.24,0.48"},
    };
    for (const auto& c : archs) {
        const std::string one = dir + "/" + c.name + "_1";
        ASSERT_EQ(train(1, one, c.sets).exit_code, 0) << c.name;
        const auto m1 = sae_test::read_jsonl(one + "/metrics.jsonl");
        if (std::string(c.name) == "topk_resample") EXPECT_GT(m1.back()["resampled_latents"].get<int64_t>(), 0);
        if (std::string(c.name) == "topk_auxk") {  // AuxK ran: dead latents on some shards
            double aux = 0;
            for (const auto& l : m1) aux = std::max(aux, l["J_aux"].get<double>());
            EXPECT_GT(aux, 0.0);
        }
        for (auto [ranks, shards] : std::vector<std::pair<int, int>>{{2, 2}, {3, 3}, {4, 4}, {4, 2}}) {
            if (std::string(c.name) != "topk_auxk" && std::string(c.name) != "batchtopk" && ranks == 2) continue;
            const std::string tag = std::string(c.name) + " " + std::to_string(ranks) + " ranks, latent_shards " + std::to_string(shards);
            const std::string many = dir + "/" + c.name + "_" + std::to_string(ranks) + "_" + std::to_string(shards);
            const auto r = train(ranks, many, c.sets, "--set latent_shards=" + std::to_string(shards));
            ASSERT_EQ(r.exit_code, 0) << tag << ": " << r.err;
            EXPECT_LT(max_rel_diff(one, many), 1e-5) << tag;
            const auto j = cfg_json(many);
            EXPECT_EQ(j["ranks"], ranks);
            EXPECT_EQ(j["latent_shards"], shards);
            EXPECT_EQ(j["d_sae"], 25);
            // Every line has the statistics of every latent and every row.
            const auto mn = sae_test::read_jsonl(many + "/metrics.jsonl");
            ASSERT_EQ(m1.size(), mn.size()) << tag;
            for (size_t i = 0; i < m1.size(); ++i) {
                EXPECT_NEAR(m1[i]["l0"].get<double>(), mn[i]["l0"].get<double>(), 1e-9) << tag;
                EXPECT_NEAR(m1[i]["fvu"].get<double>(), mn[i]["fvu"].get<double>(), 1e-4) << tag;
                EXPECT_EQ(m1[i]["dead_fraction_threshold"], mn[i]["dead_fraction_threshold"]) << tag;
                EXPECT_EQ(m1[i]["resampled_latents"], mn[i]["resampled_latents"]) << tag;
                EXPECT_EQ(m1[i]["density_log10_hist"]["counts"], mn[i]["density_log10_hist"]["counts"]) << tag;
                EXPECT_NEAR(m1[i]["J_total"].get<double>(), mn[i]["J_total"].get<double>(), 1e-5 * m1[i]["J_total"].get<double>()) << tag;
            }
        }
    }
    std::filesystem::remove_all(dir);
}

// A 2 x 2 mesh: the same bits run after run; stopped after one epoch and resumed, the bits of
// the uninterrupted run; one checkpoint file per shard and a manifest naming them (older steps'
// files gone); another layout refused with one line.
TEST(Mpi, LatentShardCheckpointsResume) {
    REQUIRE_MPI();
    const std::string dir = sae_test::temp_dir("mpi_shard_resume");
    const std::string data = sae_test::two_blob_npy(dir, 250, 12);
    const std::string sets = "--set data=" + data + " --set optimizer=adam --set lr=0.01 --set batch_size=50 --set epochs=3 "
                             "--set log_every=4 --set checkpoint_every=4 --set architecture=topk --set k=3 --set d_sae=25 "
                             "--set dead_threshold_samples=100 --set latent_shards=2";
    ASSERT_EQ(train(4, dir + "/a", sets).exit_code, 0);
    ASSERT_EQ(train(4, dir + "/b", sets).exit_code, 0);
    EXPECT_EQ(sae_test::read_bytes(dir + "/a/model.safetensors"), sae_test::read_bytes(dir + "/b/model.safetensors"));
    auto r = train(4, dir + "/parts", sets, "--set epochs=1");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto manifest = nlohmann::json::parse(sae_test::read_bytes(dir + "/parts/checkpoint.json"));
    EXPECT_EQ(manifest["step"], 5);
    EXPECT_EQ(manifest["ranks"], 4);
    EXPECT_EQ(manifest["latent_shards"], 2);
    ASSERT_EQ(manifest["files"].size(), 2u);
    int files = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir + "/parts"))
        files += e.path().filename().string().rfind("checkpoint.step-", 0) == 0;
    EXPECT_EQ(files, 2) << "older steps' shard files are removed";
    for (int s = 0; s < 2; ++s) {
        const auto ck = sae::safetensors_read(dir + "/parts/" + manifest["files"][size_t(s)].get<std::string>());
        EXPECT_EQ(ck.metadata.at("shard"), std::to_string(s));
        EXPECT_EQ(ck.metadata.at("latent_count"), s == 0 ? "13" : "12");
        EXPECT_EQ(ck.metadata.at("step"), "5");
    }
    EXPECT_FALSE(std::filesystem::exists(dir + "/parts/checkpoint.safetensors"));
    r = train(4, dir + "/parts", sets, "--resume");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(sae_test::read_bytes(dir + "/a/model.safetensors"), sae_test::read_bytes(dir + "/parts/model.safetensors"));
    // Another layout: refused, with the layout to use.
    expect_one_error(train(2, dir + "/parts", sets, "--resume"),
                     "made by 4 ranks with latent_shards = 2 but this run has 2 ranks with latent_shards = 2");
    expect_one_error(train(4, dir + "/parts", sets, "--resume --set latent_shards=4"),
                     "made by 4 ranks with latent_shards = 2 but this run has 4 ranks with latent_shards = 4");
    expect_one_error(train(4, dir + "/parts", sets, "--resume --set latent_shards=1"), "the checkpoint was made with latent shards");
    // A damaged manifest: one line naming it.
    sae_test::write_bytes(dir + "/parts/checkpoint.json", "{\"format\": \"sae-checkpoint-shards\", \"step\": ");
    expect_one_error(train(4, dir + "/parts", sets, "--resume"), "checkpoint.json: not valid JSON");
    std::filesystem::remove_all(dir);
}

// A rank of a sharded job killed mid-run (SIGKILL): the job ends within seconds and the manifest
// names a step whose every shard file is complete; the same layout resumes from it.
TEST(Mpi, KilledShardRankLeavesACompleteCheckpoint) {
    REQUIRE_MPI();
    const std::string dir = sae_test::temp_dir("mpi_shard_kill");
    const std::string data = sae_test::two_blob_npy(dir, 250, 12);
    const std::string sets = "--set data=" + data + " --set optimizer=adam --set batch_size=50 --set architecture=topk --set k=3 "
                             "--set d_sae=25 --set latent_shards=3 --set epochs=1000000 --set checkpoint_every=20";
    const std::string out = dir + "/out";
    const auto [rc, ms] = kill_a_rank(dir, 3, out, sets, "checkpoint.json");
    EXPECT_NE(rc, 0);
    EXPECT_LT(ms, 20000) << "the job outlived its killed rank by " << ms << " ms";
    const auto manifest = nlohmann::json::parse(sae_test::read_bytes(out + "/checkpoint.json"));
    const int64_t step = manifest["step"];
    EXPECT_GE(step, 20);
    EXPECT_EQ(step % 20, 0);
    for (const auto& f : manifest["files"]) {
        const auto ck = sae::safetensors_read(out + "/" + f.get<std::string>());  // complete: it parses
        EXPECT_EQ(std::stoll(ck.metadata.at("step")), step);
    }
    const auto resumed = train(3, out, sets, "--resume --set epochs=" + std::to_string(step * 50 / 250 + 1));
    EXPECT_EQ(resumed.exit_code, 0) << resumed.err;
    std::filesystem::remove_all(dir);
}

// Settings that data replicas cannot honour yet are refused with one line, on every rank.
TEST(Mpi, RefusalsAreOneLine) {
    REQUIRE_MPI();
    const std::string dir = sae_test::temp_dir("mpi_refuse");
    const std::string data = sae_test::two_blob_npy(dir, 250, 12);
    const std::string base = "--set data=" + data + " --set optimizer=adam --set d_sae=8 ";
    expect_one_error(train(2, dir + "/b", base + "--set latent_shards=3"), "does not divide the 2 ranks");
    expect_one_error(train(3, dir + "/c", base + "--set batch_size=248"), "fewer than the 3 data replicas");
    expect_one_error(train(2, dir + "/d", base + "--set architecture=batchtopk --set k=2 --set screen=bf16"),
                     "screen = bf16 with batchtopk is not supported across 2 data replicas");
    // Latent shards: what is not built for them yet.
    expect_one_error(train(2, dir + "/f", base + "--set latent_shards=2"), "the latents of a classic model cannot be sharded");
    expect_one_error(train(2, dir + "/g", base + "--set architecture=topk --set k=2 --set latent_shards=2 --set resample_duplicates=0.9"),
                     "resample_duplicates (which compares every pair of decoder rows) is not built for latent shards yet");
    expect_one_error(train(2, dir + "/h", base + "--set architecture=topk --set k=2 --set latent_shards=2 --set screen=fp32"),
                     "screen = fp32 is not supported with latent shards yet");
    expect_one_error(train(3, dir + "/i", base + "--set architecture=topk --set k=2 --set d_sae=2 --set latent_shards=3"),
                     "leaves a shard without latents");
    std::filesystem::remove_all(dir);
}

}  // namespace
