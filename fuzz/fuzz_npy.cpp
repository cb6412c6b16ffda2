// libFuzzer target: the .npy reader on arbitrary bytes (a file after any gunzip): npy_parse,
// with and without the bfloat16 dtype hint, and npy_parse_header (the streaming reader's
// entry point), which must agree with npy_parse on every input.
#include "fuzz_common.hpp"
#include "sae/data.hpp"

namespace {
void parse(const std::string& in, const std::string& hint) {
    sae::NpyHeader h;
    const bool header_ok = sae_fuzz::parses([&] { h = sae::npy_parse_header(in, in.size(), "fuzz.npy", hint); });
    if (header_ok) {
        sae_fuzz::require(h.numel > 0 && h.data_offset <= in.size(), "npy: header numel or offset out of range");
        // The header alone (what a streaming reader holds) parses to the same result.
        sae::NpyHeader h2;
        sae_fuzz::require(sae_fuzz::parses([&] {
                              h2 = sae::npy_parse_header(in.substr(0, size_t(h.data_offset)), in.size(), "fuzz.npy", hint);
                          }),
                          "npy: header does not parse from its own bytes");
        sae_fuzz::require(h2.shape == h.shape && h2.descr == h.descr && h2.numel == h.numel &&
                              h2.data_offset == h.data_offset,
                          "npy: header differs when parsed from its own bytes");
    }
    const bool ok = sae_fuzz::parses([&] {
        sae::Array a = sae::npy_parse(in, "fuzz.npy", hint);
        sae_fuzz::require(int64_t(a.values.size()) == a.numel(), "npy: value count differs from the shape");
        sae_fuzz::require(a.values.size() < in.size(), "npy: more values than input bytes");
        if (!a.shape.empty()) {  // a 0-d array is a valid .npy but not a sample matrix
            sae::Matrix<float> m = sae::array_to_samples(std::move(a));
            sae_fuzz::require(m.rows > 0 && m.cols > 0, "npy: empty sample matrix");
        }
    });
    if (ok) {
        sae_fuzz::require(header_ok, "npy: npy_parse accepts what npy_parse_header rejects");
        sae_fuzz::require(h.data_offset + h.data_bytes() == in.size(), "npy: accepted with a wrong data size");
    } else if (header_ok) {
        sae_fuzz::require(h.data_offset + h.data_bytes() != in.size(), "npy: rejected although the header and size are right");
    }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string in = sae_fuzz::bytes(data, size);
    parse(in, "");
    parse(in, "bfloat16");
    return 0;
}
