// Sweeps: grid parsing and expansion, run names, fail-fast validation, resuming, failed runs,
// and the table checked against `sae eval` on each run.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "sae/classify.hpp"
#include "sae/error.hpp"
#include "sae/io.hpp"
#include "sae/rng.hpp"
#include "sae/sweep.hpp"
#include "test_util.hpp"

using namespace sae;
using sae_test::run;
namespace fs = std::filesystem;

namespace {

const std::string kSae = sae_test::sae_binary();

std::string sweep_cmd(const std::string& data, const std::string& out, const std::string& extra) {
    return kSae + " sweep --set data=" + data +
           " --set normalize=none --set d_sae=5 --set max_iterations=10 --set seed=1 --set threads=2 --out " + out + " " +
           extra;
}

std::string error_of(const std::string& spec) {
    try {
        grid_axis_parse(spec);
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

TEST(Sweep, GridExpansionIsTheCartesianProductFirstAxisSlowest) {
    const std::vector<GridAxis> axes = {grid_axis_parse("beta=0.3,1"), grid_axis_parse("rho = 0.01, 0.05 ,0.1")};
    EXPECT_EQ(axes[1].values, (std::vector<std::string>{"0.01", "0.05", "0.1"}));
    const auto g = grid_expand(axes);
    ASSERT_EQ(g.size(), 6u);
    const std::vector<std::pair<std::string, std::string>> expect[] = {
        {{"beta", "0.3"}, {"rho", "0.01"}}, {{"beta", "0.3"}, {"rho", "0.05"}}, {{"beta", "0.3"}, {"rho", "0.1"}},
        {{"beta", "1"}, {"rho", "0.01"}},   {{"beta", "1"}, {"rho", "0.05"}},   {{"beta", "1"}, {"rho", "0.1"}}};
    for (size_t i = 0; i < 6; ++i) EXPECT_EQ(g[i], expect[i]) << i;
    // Three axes: 2 x 1 x 3.
    EXPECT_EQ(grid_expand({axes[0], grid_axis_parse("d_sae=8"), axes[1]}).size(), 6u);
    EXPECT_EQ(grid_expand({}).size(), 1u);
    // Values inside brackets keep their commas (list-valued settings).
    if (option_find("layers")) EXPECT_EQ(grid_axis_parse("layers=[20,10],[5]").values.size(), 2u);
}

TEST(Sweep, BadGridSpecsFailWithOneClearLine) {
    EXPECT_NE(error_of("beta").find("expected key=value1,value2"), std::string::npos);
    EXPECT_NE(error_of("=1,2").find("no key"), std::string::npos);
    EXPECT_NE(error_of("beta=").find("empty value"), std::string::npos);
    EXPECT_NE(error_of("beta=1,,3").find("empty value"), std::string::npos);
    EXPECT_NE(error_of("beta=1,2,").find("empty value"), std::string::npos);
    EXPECT_NE(error_of("betaa=1,2").find("did you mean 'beta'"), std::string::npos) << error_of("betaa=1,2");
    EXPECT_NE(error_of("beta=1,x").find("not a finite number"), std::string::npos) << error_of("beta=1,x");
    EXPECT_NE(error_of("d_sae=8,1.5").find("integer"), std::string::npos);
    EXPECT_NE(error_of("beta=1,1").find("twice"), std::string::npos);
    EXPECT_THROW(grid_expand({grid_axis_parse("beta=1"), grid_axis_parse("beta=2")}), Error);
    for (const auto* bad : {"beta", "beta=", "betaa=1"}) {
        const std::string e = error_of(bad);
        EXPECT_EQ(e.find('\n'), std::string::npos);
        EXPECT_EQ(e.rfind("--grid '", 0), 0u) << e;
    }
}

TEST(Sweep, RunNamesAreSanitisedAndPadded) {
    EXPECT_EQ(sweep_run_name(3, 12, {{"beta", "0.3"}, {"rho", "1e-2"}}), "run-03-beta=0.3_rho=1e-2");
    EXPECT_EQ(sweep_run_name(1, 1, {{"data", "/a b/c*.npy"}}), "run-1-data=_a_b_c_.npy");
    EXPECT_EQ(sweep_run_name(7, 100, {}), "run-007");
    EXPECT_EQ(sweep_run_name(1, 2, {{"data", std::string(100, 'x')}}).size(), std::string("run-1-data=").size() + 40);
}

TEST(Sweep, ThreadsAreSplitAcrossJobs) {
    EXPECT_EQ(sweep_threads_per_job(8, 2), 4);
    EXPECT_EQ(sweep_threads_per_job(2, 4), 1);
    EXPECT_EQ(sweep_threads_per_job(3, 2), 1);
    EXPECT_GE(sweep_threads_per_job(0, 1), 1);
}

TEST(Sweep, BadSettingsFailBeforeAnythingStarts) {
    const std::string dir = sae_test::temp_dir("sweep");
    const std::string data = sae_test::two_blob_npy(dir);
    sae_test::expect_clear_error(run(sweep_cmd(data, dir + "/s1", "--grid betaa=1,2")), "did you mean 'beta'");
    sae_test::expect_clear_error(run(sweep_cmd(data, dir + "/s2", "--grid beta=1,,2")), "empty value");
    sae_test::expect_clear_error(run(sweep_cmd(data, dir + "/s3", "--grid beta=1 --set rhoo=1")), "did you mean 'rho'");
    // Valid values one by one, but not together: KL sparsity needs a sigmoid encoder.
    sae_test::expect_clear_error(run(sweep_cmd(data, dir + "/s4", "--grid encoder_activation=sigmoid,relu")), "sweep run 2");
    sae_test::expect_clear_error(run(sweep_cmd(data, dir + "/s5", "--grid rho=0.1,2")), "rho");
    sae_test::expect_clear_error(run(sweep_cmd(data, dir + "/s6", "--grid beta=1 --labels " + dir + "/none.npy")), "none.npy");
    for (const char* s : {"/s1", "/s2", "/s3", "/s4", "/s5", "/s6"}) EXPECT_FALSE(fs::exists(dir + s)) << s;
}

double csv_number(const CsvTable& t, size_t row, const std::string& col) {
    const int c = t.column(col);
    EXPECT_GE(c, 0) << col;
    return c < 0 ? NAN : std::stod(t.rows[row][size_t(c)]);
}

TEST(Sweep, TableMatchesSaeEvalAndRunsResume) {
    const std::string dir = sae_test::temp_dir("sweep");
    const std::string data = sae_test::two_blob_npy(dir);
    const std::string out = dir + "/sw";
    const std::string cmd = sweep_cmd(data, out, "--grid beta=0,3 --grid rho=0.05,0.2 --jobs 2");
    auto r = run(cmd);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("4 runs"), std::string::npos) << r.err;
    EXPECT_NE(r.out.find("| run | beta | rho | status |"), std::string::npos) << r.out;

    const CsvTable t = csv_parse(sae_test::read_bytes(out + "/sweep.csv"), "sweep.csv");
    const std::vector<std::string> header = {"run", "beta", "rho", "status", "J_total", "J_rec", "J_weight_decay",
                                             "J_sparsity", "mean_rho_hat", "l0", "fvu", "dead_fraction", "time_s"};
    EXPECT_EQ(t.header, header);
    ASSERT_EQ(t.rows.size(), 4u);
    const std::vector<std::string> names = {"run-1-beta=0_rho=0.05", "run-2-beta=0_rho=0.2", "run-3-beta=3_rho=0.05",
                                            "run-4-beta=3_rho=0.2"};
    for (size_t i = 0; i < 4; ++i) {
        EXPECT_EQ(t.rows[i][0], names[i]);
        EXPECT_EQ(t.rows[i][3], "ok");
        EXPECT_TRUE(fs::exists(out + "/" + names[i] + "/done"));
        EXPECT_TRUE(fs::exists(out + "/" + names[i] + "/train.log"));
        // Each job got threads / jobs = 1 thread.
        const auto cfg = nlohmann::json::parse(sae_test::read_bytes(out + "/" + names[i] + "/cfg.json"));
        EXPECT_EQ(cfg["threads"], 1);
        EXPECT_EQ(cfg["beta"].get<double>(), i < 2 ? 0.0 : 3.0);
        // The row's numbers are `sae eval`'s.
        auto e = run(kSae + " eval --model " + out + "/" + names[i]);
        ASSERT_EQ(e.exit_code, 0) << e.err;
        const auto j = nlohmann::json::parse(e.out);
        for (const auto& [col, key] : std::vector<std::pair<std::string, std::string>>{
                 {"J_total", "J_total"}, {"J_rec", "J_rec"}, {"J_weight_decay", "J_weight_decay"},
                 {"J_sparsity", "J_sparsity"}, {"mean_rho_hat", "mean_activation"}, {"l0", "l0"}, {"fvu", "fvu"},
                 {"dead_fraction", "dead_fraction"}}) {
            const double want = j[key].get<double>();
            EXPECT_NEAR(csv_number(t, i, col), want, 1e-6 * std::fabs(want) + 1e-9) << names[i] << " " << col;
        }
        EXPECT_GT(csv_number(t, i, "time_s"), 0);
    }
    EXPECT_EQ(csv_number(t, 0, "J_sparsity"), 0.0);  // beta = 0
    EXPECT_GT(csv_number(t, 2, "J_sparsity"), 0.0);

    // The Markdown table: header, rule, one line per run.
    const std::string md = sae_test::read_bytes(out + "/sweep.md");
    EXPECT_EQ(std::count(md.begin(), md.end(), '\n'), 6);
    EXPECT_NE(md.find("| 3 | 3 | 0.05 | ok |"), std::string::npos) << md;

    // Again: nothing is trained.
    std::map<std::string, fs::file_time_type> mtime;
    for (const auto& n : names) mtime[n] = fs::last_write_time(out + "/" + n + "/model.safetensors");
    r = run(cmd);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("4 done before, 0 to train"), std::string::npos) << r.err;
    for (const auto& n : names) EXPECT_EQ(fs::last_write_time(out + "/" + n + "/model.safetensors"), mtime[n]) << n;

    // One run's outputs deleted: only that one is trained again, to the same bits.
    const std::string model2 = sae_test::read_bytes(out + "/" + names[1] + "/model.safetensors");
    fs::remove_all(out + "/" + names[1]);
    // Another killed after its checkpoint: resumed from it.
    fs::remove(out + "/" + names[2] + "/done");
    fs::remove(out + "/" + names[2] + "/model.safetensors");
    r = run(cmd);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("2 done before, 2 to train"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("resume " + names[2]), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("start  " + names[1]), std::string::npos) << r.err;
    EXPECT_EQ(fs::last_write_time(out + "/" + names[0] + "/model.safetensors"), mtime[names[0]]);
    EXPECT_EQ(fs::last_write_time(out + "/" + names[3] + "/model.safetensors"), mtime[names[3]]);
    EXPECT_EQ(sae_test::read_bytes(out + "/" + names[1] + "/model.safetensors"), model2);
    EXPECT_TRUE(fs::exists(out + "/" + names[2] + "/model.safetensors"));
    EXPECT_EQ(csv_parse(sae_test::read_bytes(out + "/sweep.csv"), "sweep.csv").rows.size(), 4u);

    // More iterations: every run continues from its checkpoint.
    r = run(sweep_cmd(data, out, "--grid beta=0,3 --grid rho=0.05,0.2 --jobs 2 --set max_iterations=12"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("0 done before, 4 to train"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("resume " + names[0]), std::string::npos) << r.err;

    // Other settings in the same directory: refused before anything starts.
    sae_test::expect_clear_error(run(sweep_cmd(data, out, "--grid beta=0,3 --grid rho=0.05,0.2 --set d_sae=6")),
                       "trained before with d_sae = 5");
}

TEST(Sweep, AFailedRunIsReportedAndTheOthersGoOn) {
    const std::string dir = sae_test::temp_dir("sweep");
    const std::string data = sae_test::two_blob_npy(dir);
    const std::string out = dir + "/sw";
    auto r = run(sweep_cmd(data, out, "--grid data=" + data + "," + dir + "/missing.npy"));
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("1 run(s) failed"), std::string::npos) << r.err;
    const CsvTable t = csv_parse(sae_test::read_bytes(out + "/sweep.csv"), "sweep.csv");
    ASSERT_EQ(t.rows.size(), 2u);
    EXPECT_EQ(t.rows[0][size_t(t.column("status"))], "ok");
    const std::string status = t.rows[1][size_t(t.column("status"))];
    EXPECT_EQ(status.rfind("failed: exit 1: ", 0), 0u) << status;
    EXPECT_NE(status.find("missing.npy"), std::string::npos) << status;
    EXPECT_EQ(t.rows[1][size_t(t.column("fvu"))], "");
    EXPECT_FALSE(t.rows[0][size_t(t.column("fvu"))].empty());
}

TEST(Sweep, LabelsAddAnAccuracyColumn) {
    const std::string dir = sae_test::temp_dir("sweep");
    const std::string data = sae_test::two_blob_npy(dir);
    std::vector<uint8_t> y(120);
    for (size_t i = 0; i < y.size(); ++i) y[i] = uint8_t(i % 2);
    npy_write_u8(dir + "/y.npy", y.data(), {120});
    auto r = run(sweep_cmd(data, dir + "/sw", "--grid beta=0,3 --labels " + dir + "/y.npy"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const CsvTable t = csv_parse(sae_test::read_bytes(dir + "/sw/sweep.csv"), "sweep.csv");
    ASSERT_GE(t.column("accuracy"), 0);
    ASSERT_EQ(t.rows.size(), 2u);
    for (size_t i = 0; i < 2; ++i) EXPECT_GT(csv_number(t, i, "accuracy"), 0.9);  // two well-separated blobs
}

TEST(Sweep, CsvRoundTripsQuotedFields) {
    const std::string text = "a,b,c\n1,\"x, y\",\"say \"\"hi\"\"\"\n2,,\r\n";
    const CsvTable t = csv_parse(text, "t.csv");
    ASSERT_EQ(t.rows.size(), 2u);
    EXPECT_EQ(t.rows[0][1], "x, y");
    EXPECT_EQ(t.rows[0][2], "say \"hi\"");
    EXPECT_EQ(t.rows[1][1], "");
    EXPECT_EQ(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    EXPECT_EQ(csv_field("plain"), "plain");
    EXPECT_THROW(csv_parse("a,b\n1\n", "t.csv"), Error);
    EXPECT_THROW(csv_parse("a,b\n\"1,2\n", "t.csv"), Error);
}

}  // namespace
