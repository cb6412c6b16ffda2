// sae._sae: the extension under the Python package `sae` (python/sae/__init__.py). It binds
// libsae's public headers one to one; arrays arrive already as C-contiguous float32 [N, d]
// (the package converts dtypes and layouts), are read in place, and every number returned comes
// from the same library calls the CLI makes. Long calls release the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <mutex>

#include "sae/backend.hpp"
#include "sae/config.hpp"
#include "sae/error.hpp"
#include "sae/eval.hpp"
#include "sae/io.hpp"
#include "sae/model_file.hpp"
#include "sae/report.hpp"
#include "sae/synth.hpp"
#include "sae/train.hpp"

namespace py = pybind11;

namespace {

using Settings = std::vector<std::pair<std::string, std::string>>;

// The settings as the CLI's --set key=value pairs would give them, validated.
sae::Config settings_config(const Settings& settings) {
    sae::Config cfg;
    for (const auto& [key, value] : settings) sae::config_set(cfg, key, value);
    sae::config_validate(cfg);
    return cfg;
}

sae::SourceType source_type(const std::string& s) {
    if (s == "u8") return sae::SourceType::u8;
    if (s == "f32") return sae::SourceType::f32;
    if (s == "f64") return sae::SourceType::f64;
    if (s == "f16") return sae::SourceType::f16;
    if (s == "bf16") return sae::SourceType::bf16;
    throw py::value_error("source must be u8, f32, f64, f16 or bf16");
}

// A C-contiguous float32 2-d array, read in place (the package makes sure of it).
struct Rows {
    const float* data;
    int64_t rows, cols;
};
Rows rows_of(const py::array& a) {
    if (!py::isinstance<py::array_t<float>>(a) || a.ndim() != 2 || !(a.flags() & py::array::c_style))
        throw py::type_error("internal: expected a C-contiguous float32 2-d array");
    return {static_cast<const float*>(a.data()), int64_t(a.shape(0)), int64_t(a.shape(1))};
}

py::array_t<float> new_rows(int64_t rows, int64_t cols) {
    return py::array_t<float>({py::ssize_t(rows), py::ssize_t(cols)});
}

py::object json_loads(const std::string& text) { return py::module_::import("json").attr("loads")(text); }

// A loaded model: the library's SavedModel and a backend. One call at a time (the objective's
// workspace is shared), with the GIL released while it computes.
struct Model {
    sae::SavedModel m;
    std::unique_ptr<sae::Backend> be;
    std::mutex mu;

    explicit Model(const std::string& dir) : m(sae::model_load(dir)), be(sae::backend_create(m.cfg.backend)) {}

    // The model's input: x normalised as saved (in place when that changes nothing).
    template <class F>
    void with_input(const py::array& x, const std::string& source, const std::string& name, F&& f) {
        const Rows r = rows_of(x);
        const sae::SourceType st = source_type(source);
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(mu);
        sae::set_num_threads(int(m.cfg.threads));
        sae::Matrix<float> copy;
        sae::samples_apply(r.data, r.rows, r.cols, st, m.norm, name, &copy);
        f(copy.data.empty() ? r.data : copy.data.data(), r.rows, r.cols);
    }

    py::array_t<float> encode(const py::array& x, const std::string& source, const std::string& name) {
        auto H = new_rows(x.shape(0), m.objective->d_sae());
        float* out = H.mutable_data();
        with_input(x, source, name, [&](const float* X, int64_t rows, int64_t cols) {
            sae::encode(*be, *m.objective, m.params.data(), X, rows, cols, out);
        });
        return H;
    }
    py::array_t<float> reconstruct(const py::array& x, const std::string& source, const std::string& name) {
        auto Xhat = new_rows(x.shape(0), m.objective->d_in());
        float* out = Xhat.mutable_data();
        with_input(x, source, name, [&](const float* X, int64_t rows, int64_t cols) {
            sae::reconstruct(*be, *m.objective, m.params.data(), X, rows, cols, out);
        });
        return Xhat;
    }
    py::array_t<float> decode(const py::array& h, const std::string& name) {
        const Rows r = rows_of(h);
        sae::check(r.cols == m.objective->d_sae(), name + ": has " + std::to_string(r.cols) +
                                                       " latents per row but the model has d_sae = " +
                                                       std::to_string(m.objective->d_sae()) + "; give codes of the model's width");
        auto Xhat = new_rows(r.rows, m.objective->d_in());
        float* out = Xhat.mutable_data();
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(mu);
        sae::set_num_threads(int(m.cfg.threads));
        sae::check_finite(r.data, r.rows, r.cols, name);
        sae::decode(*be, *m.objective, m.cfg, m.params.data(), r.data, r.rows, out);
        return Xhat;
    }
    py::object evaluate(const py::array& x, const std::string& source, const std::string& name, py::object truth) {
        std::string text;
        std::vector<float> F;
        int64_t G = 0;
        if (!truth.is_none()) {
            const Rows t = rows_of(truth.cast<py::array>());
            sae::check(t.rows >= 1 && t.cols == m.objective->d_in(),
                       "ground_truth: features have d = " + std::to_string(t.cols) + " but the model has d_in = " +
                           std::to_string(m.objective->d_in()) + "; use the features of the data the model was trained on");
            F.assign(t.data, t.data + t.rows * t.cols);
            G = t.rows;
        }
        with_input(x, source, name, [&](const float* X, int64_t rows, int64_t cols) {
            const auto r = sae::evaluate(*be, *m.objective, m.cfg, m.params.data(), X, rows, cols,
                                         sae::config_active_threshold(m.cfg));
            sae::MmcsResult mm;
            if (G > 0) {
                const std::vector<float> W = sae::model_decoder_rows(m);
                mm = sae::mmcs(*be, F.data(), G, W.data(), m.objective->d_sae(), m.objective->d_in());
            }
            text = sae::eval_json(r, G > 0 ? &mm : nullptr, G);
        });
        return json_loads(text);
    }
    py::dict tensors() {
        std::lock_guard<std::mutex> lock(mu);
        std::vector<std::vector<float>> scratch;
        py::dict d;
        for (const auto& t : m.objective->export_tensors(m.params.data(), 1.0, scratch)) {
            std::vector<py::ssize_t> shape(t.shape.begin(), t.shape.end());
            py::array_t<float> a(shape);
            std::memcpy(a.mutable_data(), t.data, sizeof(float) * size_t(a.size()));
            d[py::str(t.name)] = a;
        }
        return d;
    }
    std::string cfg_json() {
        return sae::model_cfg_json(m.cfg, *m.objective, m.input_scale, m.norm);
    }
    void save(const std::string& dir) {
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(mu);
        sae::ensure_writable_dir(dir);
        sae::model_save(dir, m);
    }
};

// A Python object with next() → a C-contiguous float32 [rows, d] array or None (the pass is
// over) and restart() → bool; called with the GIL held.
class PyBatches final : public sae::BatchSource {
public:
    explicit PyBatches(py::object feeder) : feeder_(std::move(feeder)) {}
    ~PyBatches() override {
        py::gil_scoped_acquire gil;
        held_ = py::object();
        feeder_ = py::object();
    }
    Batch next() override {
        py::gil_scoped_acquire gil;
        py::object b = feeder_.attr("next")();
        if (b.is_none()) {
            held_ = py::object();
            return {};
        }
        py::array a = b.cast<py::array>();
        const Rows r = rows_of(a);
        held_ = a;  // alive until the next call
        return {r.data, r.rows, r.cols};
    }
    bool restart() override {
        py::gil_scoped_acquire gil;
        return feeder_.attr("restart")().cast<bool>();
    }

private:
    py::object feeder_, held_;
};

py::dict summary_dict(const sae::TrainSummary& s) {
    py::dict d;
    d["steps"] = s.steps;
    d["samples"] = s.samples;
    d["J_total"] = s.J.total();
    d["J_rec"] = s.J.rec;
    d["J_weight_decay"] = s.J.weight_decay;
    d["J_sparsity"] = s.J.sparsity;
    d["J_aux"] = s.J.aux;
    d["J_denoise"] = s.J.denoise;
    d["mean_rho_hat"] = s.mean_rho_hat;
    d["seconds"] = s.seconds;
    d["stop_reason"] = s.stop_reason;
    d["skipped_batches"] = s.skipped_batches;
    return d;
}

// sae.train's engine: the data is the settings' `data` (array and feeder None), an array of
// raw samples, or a feeder (see PyBatches). progress(step, total, J_total, samples_per_s,
// log_step) replaces the stderr display; on_log(step, metrics_json) at each log step.
// variants: [(name, settings)], each trained into out/<name> from the one stream
// (train_run_variants); then a list of summaries, one per variant, is returned.
py::object train(const Settings& settings, const std::string& out, bool resume, py::object array,
                 const std::string& source, py::object feeder, const std::string& name, py::object progress,
                 bool quiet, py::object on_log, const std::vector<std::pair<std::string, Settings>>& variant_list) {
    std::vector<sae::Variant> variants;
    sae::Config cfg;
    if (variant_list.empty()) {
        cfg = settings_config(settings);
    } else {
        for (const auto& [key, value] : settings) sae::config_set(cfg, key, value);
        std::vector<sae::VariantSpec> specs;
        for (const auto& [vname, vsettings] : variant_list) specs.push_back({vname, vsettings});
        variants = sae::config_variants(cfg, specs);
        cfg = variants[0].cfg;
    }
    sae::TrainData data;
    data.name = name;
    py::array held;
    std::unique_ptr<PyBatches> batches;
    if (!array.is_none()) {
        held = array.cast<py::array>();
        const Rows r = rows_of(held);
        data.samples = r.data;
        data.rows = r.rows;
        data.cols = r.cols;
        data.source = source_type(source);
    } else if (!feeder.is_none()) {
        batches = std::make_unique<PyBatches>(feeder);
        data.batches = batches.get();
    }
    sae::TrainHooks hooks;
    hooks.quiet = quiet;
    if (!progress.is_none())
        hooks.progress = [&progress](const sae::TrainProgress& p) {
            py::gil_scoped_acquire gil;
            progress(p.step, p.total, p.J.total(), p.samples_per_s, p.log_step);
        };
    if (!on_log.is_none())
        hooks.on_log = [&on_log](int64_t step, const std::string& line) {
            py::gil_scoped_acquire gil;
            on_log(step, line);
        };
    std::vector<sae::TrainSummary> summaries;
    {
        py::gil_scoped_release release;
        if (variants.empty()) summaries.push_back(sae::train_run(cfg, out, resume, data, hooks));
        else summaries = sae::train_run_variants(variants, out, resume, data, hooks);
    }
    const sae::TrainSummary& s = summaries[0];
    if (s.stop_reason == "interrupted") {
        PyErr_SetString(PyExc_KeyboardInterrupt, sae::train_interrupted_message(cfg, s).c_str());
        throw py::error_already_set();
    }
    if (variants.empty()) return summary_dict(s);
    py::list list;
    for (const auto& x : summaries) list.append(summary_dict(x));
    return list;
}

py::dict synth(int64_t features, int64_t dim, int64_t samples, double mean_active, double decay, bool correlated,
               int64_t correlation_rank, uint64_t seed, bool keep_codes) {
    sae::SynthSpec spec;
    spec.features = features;
    spec.dim = dim;
    spec.samples = samples;
    spec.mean_active = mean_active;
    spec.decay = decay;
    spec.correlated = correlated;
    spec.correlation_rank = correlation_rank;
    spec.seed = seed;
    sae::synth_validate(spec, keep_codes);
    sae::SynthData d;
    {
        py::gil_scoped_release release;
        d = sae::synth_generate(spec, keep_codes);
    }
    auto to_array = [](const std::vector<float>& v, int64_t r, int64_t c) {
        auto a = new_rows(r, c);
        std::memcpy(a.mutable_data(), v.data(), sizeof(float) * v.size());
        return a;
    };
    py::dict out;
    out["data"] = to_array(d.data, d.samples, d.dim);
    out["features"] = to_array(d.features, d.n_features, d.dim);
    if (keep_codes) out["codes"] = to_array(d.codes, d.samples, d.n_features);
    out["probabilities"] = d.probabilities;
    out["clipped"] = d.clipped;
    out["mean_active"] = d.mean_active();
    return out;
}

py::dict mmcs(const py::array& features, const py::array& W_dec) {
    const Rows F = rows_of(features), W = rows_of(W_dec);
    sae::check(F.cols == W.cols, "mmcs: features have d = " + std::to_string(F.cols) + " but the decoder rows d = " +
                                     std::to_string(W.cols) + "; give W_dec [d_sae, d_in] of a model of this data");
    sae::check(F.rows >= 1 && W.rows >= 1, "mmcs: no features or no decoder rows");
    sae::MmcsResult r;
    {
        py::gil_scoped_release release;
        r = sae::mmcs(F.data, F.rows, W.data, W.rows, W.cols);
    }
    py::dict d;
    d["mmcs"] = r.mmcs;
    d["mmcs_min"] = r.min;
    d["mmcs_median"] = r.median;
    d["mmcs_frac_above_0.9"] = r.frac_above_0_9;
    d["per_feature"] = r.per_feature;
    d["best_row"] = r.best_row;
    return d;
}

py::dict gradcheck(const Settings& settings, int64_t d_in, int64_t d_sae, int64_t samples, double eps) {
    const sae::Config cfg = settings_config(settings);
    sae::check(d_in >= 1 && d_in <= 4096 && d_sae >= 1 && d_sae <= 4096 && samples >= 1 && samples <= 100000,
               "gradcheck: d_in and d_sae must be in [1, 4096], samples in [1, 100000]");
    sae::GradcheckRun g;
    {
        py::gil_scoped_release release;
        g = sae::gradcheck_settings(cfg, d_in, d_sae, samples, eps);
    }
    py::dict d;
    for (const auto& [name, err] : g.result.per_tensor) d[py::str(name)] = err;
    d["overall"] = g.result.overall;
    return d;
}

std::vector<std::string> report(const std::string& dir, int64_t max_samples, const std::string& harvest,
                                const std::string& hook, const std::string& latents, int64_t contexts) {
    sae::ReportOptions opt;
    opt.max_samples = max_samples;
    opt.harvest = harvest;
    opt.hook = hook;
    opt.latents = sae::report_latents_parse(latents);
    sae::check(contexts >= 0 && contexts <= 1000, "contexts: " + std::to_string(contexts) + " is not in [0, 1000]");
    opt.contexts = contexts;
    std::vector<std::string> warnings, written;
    {
        py::gil_scoped_release release;
        written = sae::report_write(dir, opt, &warnings);
    }
    for (const auto& w : warnings) PyErr_WarnEx(PyExc_UserWarning, w.c_str(), 1);
    return written;
}

}  // namespace

PYBIND11_MODULE(_sae, mod) {
    mod.doc() = "libsae bindings; use the package `sae`";
    py::register_exception<sae::Error>(mod, "Error", PyExc_ValueError);

    py::class_<Model>(mod, "Model")
        .def(py::init<const std::string&>())
        .def("encode", &Model::encode)
        .def("reconstruct", &Model::reconstruct)
        .def("decode", &Model::decode)
        .def("evaluate", &Model::evaluate)
        .def("tensors", &Model::tensors)
        .def("cfg_json", &Model::cfg_json)
        .def("save", &Model::save)
        .def_property_readonly("d_in", [](const Model& m) { return m.m.objective->d_in(); })
        .def_property_readonly("d_sae", [](const Model& m) { return m.m.objective->d_sae(); })
        .def_property_readonly("architecture", [](const Model& m) { return m.m.objective->architecture(); });

    mod.def("train", &train);
    mod.def("config_json", [](const Settings& s) { return sae::config_to_json(settings_config(s)); });
    mod.def("config_help", &sae::config_help);
    mod.def("synth", &synth);
    mod.def("mmcs", &mmcs);
    mod.def("gradcheck", &gradcheck);
    mod.def("report", &report);
    mod.def("backend_names", &sae::backend_names);
}
