// libFuzzer target: sae::idx_parse on arbitrary bytes (an IDX file after any gunzip).
#include "fuzz_common.hpp"
#include "sae/data.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string in = sae_fuzz::bytes(data, size);
    sae_fuzz::parses([&] {
        sae::Array a = sae::idx_parse(in, "fuzz.idx");
        sae_fuzz::require(!a.shape.empty() && a.shape.size() <= 4, "idx: rank out of 1..4");
        sae_fuzz::require(int64_t(a.values.size()) == a.numel(), "idx: value count differs from the shape");
        sae_fuzz::require(a.values.size() < in.size(), "idx: more values than input bytes");
        sae::Matrix<float> m = sae::array_to_samples(std::move(a));
        sae_fuzz::require(m.rows > 0 && m.cols > 0, "idx: empty sample matrix");
    });
    return 0;
}
