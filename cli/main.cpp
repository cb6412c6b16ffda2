// sae: train, evaluate and study sparse autoencoders.
#include <csignal>
#include <cstdio>
#include <new>

#include "commands.hpp"
#include "sae/comm.hpp"
#include "sae/error.hpp"

namespace sae_cli {

sae::Config load_config(const std::string& path, const std::vector<std::string>& sets) {
    sae::Config cfg = path.empty() ? sae::Config{} : sae::config_load_toml(path);
    for (const auto& s : sets) sae::config_apply_override(cfg, s);
    sae::config_validate(cfg);
    return cfg;
}

}  // namespace sae_cli

int main(int argc, char** argv) {
    // A file-size limit (ulimit -f) should fail the write with a clear error, not kill us.
    std::signal(SIGXFSZ, SIG_IGN);
    // Under mpirun: MPI started, and an error on any rank ends every rank (sae::comm_fail).
    sae::comm_init(&argc, &argv);
    CLI::App app{"sae: fast sparse autoencoders (train, evaluate, encode, check gradients)"};
    app.require_subcommand(1);
    app.set_version_flag("--version", "sae 0.1.0");
    sae_cli::add_train(app);
    sae_cli::add_eval(app);
    sae_cli::add_encode(app);
    sae_cli::add_gradcheck(app);
    sae_cli::add_synth(app);
    sae_cli::add_stack(app);
    sae_cli::add_classify(app);
    sae_cli::add_select(app);
    sae_cli::add_patches(app);
    sae_cli::add_features(app);
    sae_cli::add_sweep(app);
    sae_cli::add_report(app);
    sae_cli::add_bench(app);
    sae_cli::add_upgrade(app);
    sae_cli::add_export(app);
    sae_cli::add_import(app);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    } catch (const sae::Error& e) {
        sae::comm_fail(e.what());
        return 1;
    } catch (const std::bad_alloc&) {
        sae::comm_fail("out of memory; use a smaller data set (max_samples), batch_size or d_sae, or split the latents across processes (mpirun with latent_shards, docs/distributed.md)");
        return 1;
    } catch (const std::exception& e) {
        sae::comm_fail(e.what());
        return 1;
    }
    return 0;
}
