// sae bench: times the training step of the configured model on synthetic data of its shape.
// One step = objective cost with gradient + before_update + optimiser update + after_update,
// exactly what `sae train` runs per minibatch (without its per-step statistics and I/O).
// Prints one JSON object (docs/performance.md explains every field). Under mpirun it times the
// data replicas' step (each rank costs its rows of the batch; the sums of sae/replicas.hpp) and
// rank 0 prints, with the bytes and milliseconds of each collective per step.
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "sae/backend.hpp"
#include "sae/comm.hpp"
#include "sae/error.hpp"
#include "sae/eval.hpp"
#include "sae/modern.hpp"
#include "sae/objective.hpp"
#include "sae/optim.hpp"
#include "sae/replicas.hpp"
#include "sae/rng.hpp"
#include "sae/shards.hpp"

namespace sae_cli {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string loadavg() {
    std::ifstream f("/proc/loadavg");
    std::string a, b, c;
    f >> a >> b >> c;
    return a.empty() ? "n/a" : a + " " + b + " " + c;
}

double peak_rss_mib() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return double(u.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

// CPU time of the whole process (all threads), in seconds.
double cpu_seconds() {
    timespec t{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Synthetic batches of the configured shape. Modern models: sparse sums of random unit
// directions (so TopK selects among meaningful latents); classic: uniform in [0, 1] (its
// sigmoid decoder reconstructs values in (0, 1)).
sae::Matrix<float> synthetic(int64_t rows, int64_t d, bool modern, uint64_t seed) {
    sae::Rng rng(seed);
    sae::Matrix<float> X(rows, d);
    if (!modern) {
        for (auto& x : X.data) x = float(rng.uniform());
        return X;
    }
    const int64_t features = 4 * d, active = 16;
    std::vector<float> F(size_t(features * d));
    for (int64_t f = 0; f < features; ++f) {
        double sq = 0;
        for (int64_t c = 0; c < d; ++c) {
            const double v = rng.normal();
            F[size_t(f * d + c)] = float(v);
            sq += v * v;
        }
        const float s = float(1.0 / std::sqrt(sq));
        for (int64_t c = 0; c < d; ++c) F[size_t(f * d + c)] *= s;
    }
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t a = 0; a < active; ++a) {
            const int64_t f = int64_t(rng.below(uint64_t(features)));
            const float coef = float(rng.uniform());
            for (int64_t c = 0; c < d; ++c) X(i, c) += coef * F[size_t(f * d + c)];
        }
    return X;
}

}  // namespace

void add_bench(CLI::App& app) {
    auto* cmd = app.add_subcommand("bench", "time the training step of CONFIG's model on synthetic data of its shape; prints JSON");
    struct Args {
        std::string config;
        std::vector<std::string> sets;
        int64_t steps = 20, warmup = 3, d_in = 784, batches = 4;
        bool profile = false;
        int64_t encoder_block = 256;
        int64_t encode_rows = 0;
    };
    auto args = std::make_shared<Args>();
    cmd->add_option("CONFIG", args->config, "TOML file of settings (optional; defaults otherwise)");
    cmd->add_option("--set", args->sets, "override a setting: --set key=value (repeatable)");
    cmd->add_option("--steps", args->steps, "timed training steps")->capture_default_str();
    cmd->add_option("--warmup", args->warmup, "untimed steps first (primitive creation, page faults)")->capture_default_str();
    cmd->add_option("--d-in", args->d_in, "input dimension of the synthetic data")->capture_default_str();
    cmd->add_option("--batches", args->batches, "distinct synthetic batches cycled through")->capture_default_str();
    cmd->add_flag("--profile", args->profile, "modern architectures: also time each phase of the cost (phases_ms)");
    cmd->add_option("--encoder-block", args->encoder_block,
                    "with --profile: rows per fused encoder+TopK block in the profiled cost (0 = whole batch)")
        ->capture_default_str();
    cmd->add_option("--encode", args->encode_rows,
                    "time `sae encode` (sae::encode in chunks of 4096 into a dense [N, d_sae]) of this many synthetic rows "
                    "on the initialised model instead of training steps (a pool of 16384 rows encoded repeatedly)")
        ->capture_default_str();
    cmd->callback([args]() {
        const sae::Config cfg = load_config(args->config, args->sets);
        sae::check(args->steps >= 1 && args->warmup >= 0 && args->d_in >= 1 && args->batches >= 1,
                   "bench: --steps, --d-in and --batches must be >= 1 and --warmup >= 0");
        sae::check(cfg.optimizer != "lbfgs",
                   "bench times minibatch steps; set optimizer to adam, sgd or rmsprop (e.g. --set optimizer=adam)");
        sae::set_num_threads(int(cfg.threads));
        const std::string load_before = loadavg();
        const int64_t d_in = args->d_in, B = cfg.batch_size;
        const bool modern = sae::config_is_modern(cfg);

        auto be = sae::backend_create(cfg.backend);
        auto obj = sae::objective_create(cfg, d_in);
        // Under mpirun: latent_shards x data replicas, as `sae train` lays them out.
        sae::Comm& comm = sae::comm_world();
        const int shards = comm.size() > 1 ? int(cfg.latent_shards) : 1;
        sae::check(comm.size() % shards == 0, "latent_shards = " + std::to_string(shards) + " does not divide the " +
                                                  std::to_string(comm.size()) + " ranks; pick a divisor (mpirun -np N)");
        const int64_t d_sae_total = obj->d_sae();
        const sae::MeshLayout mesh = sae::mesh_layout(comm, shards, d_sae_total);
        if (shards > 1) {
            sae::check(!args->profile && args->encode_rows == 0, "bench: --profile and --encode-rows time one process; drop latent_shards");
            obj->set_latent_shard(mesh.shard_group.get(), mesh.latents.begin, mesh.latents.count);
        }
        const int64_t n = obj->layout().total, d_sae = obj->d_sae();  // (a shard's)
        std::vector<float> params(static_cast<size_t>(n)), grad(static_cast<size_t>(n));
        const sae::Matrix<float> X = synthetic(B * args->batches, d_in, modern, uint64_t(cfg.seed) + 1);
        {
            sae::Rng rng(uint64_t(cfg.seed));
            sae::Matrix<float> sample(std::min<int64_t>(X.rows, 4096), d_in);
            std::copy(X.data.begin(), X.data.begin() + sample.size(), sample.data.begin());
            obj->init(params.data(), rng, sample);
        }
        if (args->encode_rows > 0) {  // encode: the forward of the saved model, dense codes out
            const int64_t pool = std::min<int64_t>(16384, args->encode_rows);
            const sae::Matrix<float> P = synthetic(pool, d_in, modern, uint64_t(cfg.seed) + 2);
            std::vector<float> H(size_t(pool * d_sae));
            sae::encode(*be, *obj, params.data(), P.data.data(), std::min<int64_t>(pool, 4096), d_in, H.data());  // warm-up
            const auto t0 = Clock::now();
            const double c0 = cpu_seconds();
            int64_t done = 0, last = 0;
            while (done < args->encode_rows) {
                last = std::min(pool, args->encode_rows - done);
                sae::encode(*be, *obj, params.data(), P.data.data(), last, d_in, H.data());
                done += last;
            }
            const double s = since(t0), cpu = cpu_seconds() - c0;
            double nnz = 0;  // of the last pass
            for (int64_t t = 0; t < last * d_sae; ++t) nnz += H[size_t(t)] != 0.0f;
            nlohmann::ordered_json j;
            j["architecture"] = obj->architecture();
            j["screen"] = cfg.screen;
            j["threads"] = sae::get_num_threads();
            j["d_in"] = d_in;
            j["d_sae"] = d_sae;
            if (modern) j["k"] = cfg.k;
            j["encode_rows"] = done;
            j["encode_s"] = s;
            j["rows_per_s"] = double(done) / s;
            j["cpu_s"] = cpu;
            j["l0"] = nnz / double(last);
            j["peak_rss_mib"] = peak_rss_mib();
            j["loadavg_before"] = load_before;
            j["loadavg_after"] = loadavg();
            std::printf("%s\n", j.dump(2).c_str());
            return;
        }
        auto opt = sae::optimizer_create(cfg.optimizer, n, sae::config_optimizer_hyper(cfg));
        obj->set_training(true);
        obj->set_dense_hidden(false);  // as `sae train` does: sparse models keep only their row lists
        obj->reserve(B);

        std::vector<double> t_step, t_cost, t_update, t_cpu;
        sae::CostTerms J{}, J0{};
        for (int64_t s = 0; s < args->warmup + args->steps; ++s) {
            const float* Xb = X.row((s % args->batches) * B);
            const double c0 = cpu_seconds();
            const auto t0 = Clock::now();
            if (s == args->warmup) comm.reset_traffic();
            J = sae::replicas_cost(*mesh.data, *obj, *be, params.data(), Xb, B, grad.data());
            const auto t1 = Clock::now();
            obj->before_update(params.data(), grad.data());
            opt->update(params.data(), grad.data(), cfg.lr);
            obj->after_update(params.data());
            const double cost_s = std::chrono::duration<double>(t1 - t0).count();
            const double all_s = since(t0), cpu_s = cpu_seconds() - c0;
            if (s == 0) J0 = J;
            sae::check(std::isfinite(J.total()), "bench: the loss became non-finite at step " + std::to_string(s) + "; lower lr");
            if (s < args->warmup) continue;
            t_step.push_back(all_s);
            t_cost.push_back(cost_s);
            t_update.push_back(all_s - cost_s);
            t_cpu.push_back(cpu_s);
        }

        // The products alone, through the same backend and precision: the classic model's five
        // (2 forward, 3 backward) and the modern encoder's one (with its bias, as in the step).
        const sae::Precision prec = modern ? sae::precision_parse(cfg.dtype) : sae::Precision::f32;
        std::vector<float> A(size_t(B * d_sae)), C(size_t(B * std::max(d_in, d_sae))), Wt(size_t(d_in * d_sae));
        const float* W = params.data();  // W_enc [d_in, d_sae] is the first tensor of both layouts
        const float* Xb = X.row(0);
        auto encoder = [&] {
            be->gemm_ex(sae::Trans::no, sae::Trans::no, B, d_sae, d_in, 1.0f, Xb, d_in, W, d_sae, 0.0f,
                        A.data(), d_sae, W + d_in * d_sae, prec);
        };
        auto classic5 = [&] {
            using sae::Trans;
            be->gemm_ex(Trans::no, Trans::no, B, d_sae, d_in, 1.0f, Xb, d_in, W, d_sae, 0.0f, A.data(), d_sae, nullptr, prec);
            be->gemm_ex(Trans::no, Trans::no, B, d_in, d_sae, 1.0f, A.data(), d_sae, Wt.data(), d_in, 0.0f, C.data(), d_in, nullptr, prec);
            be->gemm_ex(Trans::yes, Trans::no, d_sae, d_in, B, 1.0f, A.data(), d_sae, C.data(), d_in, 1.0f, Wt.data(), d_in, nullptr, prec);
            be->gemm_ex(Trans::no, Trans::yes, B, d_sae, d_in, 1.0f, C.data(), d_in, Wt.data(), d_in, 0.0f, A.data(), d_sae, nullptr, prec);
            be->gemm_ex(Trans::yes, Trans::no, d_in, d_sae, B, 1.0f, Xb, d_in, A.data(), d_sae, 1.0f, grad.data(), d_sae, nullptr, prec);
        };
        const int64_t reps = std::max<int64_t>(3, args->steps);
        std::vector<double> t_prod;
        for (int64_t r = 0; r < reps + 2; ++r) {
            const auto t0 = Clock::now();
            if (modern) encoder(); else classic5();
            if (r >= 2) t_prod.push_back(since(t0));
        }
        // Phases of the modern cost, on the trained parameters (the objective's layout is
        // modern_layout of the same spec).
        nlohmann::ordered_json phases;
        if (args->profile && modern) {
            sae::ModernSpec spec = sae::modern_spec(cfg, d_in);
            spec.k_aux = 0;
            const sae::ParamLayout L = sae::modern_layout(spec);
            sae::check(L.total == n, "bench: the profiled layout differs from the objective's");
            sae::ModernWorkspace<float> ws;
            ws.precision = sae::precision_parse(cfg.dtype);
            ws.screen = sae::screen_parse(cfg.screen);
            ws.dense_h = false;  // as in training
            ws.encoder_block = args->encoder_block;
            ws.reserve(spec, B);
            for (int64_t s = 0; s < args->steps + 1; ++s) {
                ws.profile = s > 0;
                sae::modern_cost<float>(*be, spec, L, params.data(), X.row((s % args->batches) * B), B,
                                        grad.data(), ws);
            }
            const auto& names = sae::modern_phase_names();
            for (size_t p = 0; p < names.size(); ++p) phases[names[p]] = ws.profile_ms[p] / double(args->steps);
            phases["sparse_path"] = ws.sparse_used;
        }
        // Screened TopK: candidates per row and rows that fell back, from one cost on the trained
        // parameters; and the bf16 product alone (the screening product's rate).
        nlohmann::ordered_json screen;
        if (modern && cfg.screen != "off") {
            sae::ModernSpec spec = sae::modern_spec(cfg, d_in);
            const sae::ParamLayout L = sae::modern_layout(spec);
            sae::ModernWorkspace<float> ws;
            ws.precision = sae::precision_parse(cfg.dtype);
            ws.screen = sae::screen_parse(cfg.screen);
            ws.dense_h = false;
            ws.encoder_block = args->encoder_block;
            ws.reserve(spec, B);
            sae::modern_cost<float>(*be, spec, L, params.data(), X.row(0), B, grad.data(), ws);
            const sae::ScreenStats& st = ws.screen_stats;
            screen["mode"] = cfg.screen;
            screen["product"] = sae::screen_name(ws.screen_product);  // fp32 where the CPU lacks bf16
            screen["rows"] = st.rows;
            screen["candidates_per_row"] = st.rows ? double(st.candidates) / double(st.rows) : 0.0;
            screen["fallback_rows"] = st.fallback_rows;
            screen["fallback_share"] = st.rows ? double(st.fallback_rows) / double(st.rows) : 0.0;
            std::vector<double> t_bf;
            for (int64_t r = 0; r < reps + 2; ++r) {
                const auto t0 = Clock::now();
                be->gemm_ex(sae::Trans::no, sae::Trans::no, B, d_sae, d_in, 1.0f, Xb, d_in, W, d_sae, 0.0f, A.data(),
                            d_sae, W + d_in * d_sae, sae::Precision::bf16);
                if (r >= 2) t_bf.push_back(since(t0));
            }
            screen["bf16_encoder_product_ms"] = median(t_bf) * 1e3;
        }
        const std::string load_after = loadavg();

        const double mnk = double(B) * double(d_in) * double(d_sae);
        const double step_s = median(t_step), prod_s = median(t_prod);
        const double dense_flop = 10.0 * mnk;  // 5 products of 2·m·d_in·d_sae: the dense model
        size_t state = 0;
        for (auto& [name, buf] : opt->state()) state += buf->size();
        nlohmann::ordered_json j;
        j["config"] = args->config.empty() ? "(defaults)" : args->config;
        j["architecture"] = obj->architecture();
        j["dtype"] = modern ? sae::precision_name(prec) : "float32";
        j["backend"] = be->name();
        j["threads"] = sae::get_num_threads();
        j["d_in"] = d_in;
        j["d_sae"] = d_sae;
        j["batch"] = B;
        if (modern) j["k"] = cfg.k;
        j["optimizer"] = cfg.optimizer;
        j["steps"] = args->steps;
        j["ms_per_step"] = step_s * 1e3;
        j["ms_per_step_mean"] = [&] { double s = 0; for (double t : t_step) s += t; return s / double(t_step.size()) * 1e3; }();
        j["ms_per_step_min"] = *std::min_element(t_step.begin(), t_step.end()) * 1e3;
        j["samples_per_s"] = double(B) / step_s;
        j["cpu_ms_per_step"] = median(t_cpu) * 1e3;  // all threads; ≈ threads × ms_per_step when quiet
        j["ms_cost"] = median(t_cost) * 1e3;
        j["ms_update"] = median(t_update) * 1e3;
        j["effective_gflops"] = dense_flop / step_s * 1e-9;
        if (modern) {
            j["encoder_product_ms"] = prod_s * 1e3;
            j["encoder_product_gflops"] = 2.0 * mnk / prod_s * 1e-9;
            j["step_over_encoder_product"] = step_s / prod_s;
        } else {
            j["products_ms"] = prod_s * 1e3;
            j["matmul_gflops"] = dense_flop / prod_s * 1e-9;
            j["effective_over_matmul"] = prod_s / step_s;
        }
        if (!phases.empty()) j["phases_ms"] = phases;
        if (!screen.empty()) {
            screen["step_over_bf16_product"] = step_s / (double(screen["bf16_encoder_product_ms"]) * 1e-3);
            j["screen"] = screen;
        }
        if (comm.size() > 1) {  // rank 0's view; the products alone above are one rank's latents, on the whole batch
            j["ranks"] = comm.size();
            j["latent_shards"] = shards;
            j["d_sae_total"] = d_sae_total;
            j["rows_per_rank"] = sae::replica_rows(B, 0, mesh.replicas).count;
            nlohmann::ordered_json c;
            for (const auto& [what, t] : comm.traffic())
                c[what] = {{"bytes_per_step", double(t.bytes) / double(args->steps)},
                           {"calls_per_step", double(t.calls) / double(args->steps)},
                           {"ms_per_step", 1e3 * t.seconds / double(args->steps)}};
            j["collectives"] = c;
        }
        j["J_first"] = J0.total();
        j["J_last"] = J.total();
        j["params_mib"] = double(n) * 4 / 1048576.0;
        j["grad_mib"] = double(n) * 4 / 1048576.0;
        j["optimizer_state_mib"] = double(state) * 4 / 1048576.0;
        j["data_mib"] = double(X.size()) * 4 / 1048576.0;
        j["peak_rss_mib"] = peak_rss_mib();
        j["loadavg_before"] = load_before;
        j["loadavg_after"] = load_after;
        if (comm.rank() == 0) std::printf("%s\n", j.dump(2).c_str());
    });
}

}  // namespace sae_cli
