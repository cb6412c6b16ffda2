// libFuzzer target: sae::safetensors_parse on arbitrary bytes.
#include "fuzz_common.hpp"
#include "sae/io.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string in = sae_fuzz::bytes(data, size);
    sae_fuzz::parses([&] {
        const sae::SafeTensors st = sae::safetensors_parse(in, "fuzz.safetensors");
        uint64_t total = 0;
        for (const auto& [name, t] : st.tensors) {
            const size_t n = size_t(t.numel());
            total += n * sae::dtype_size(t.dtype);
            if (t.dtype == sae::DType::i64) {
                sae_fuzz::require(t.i64.size() == n && t.f32.empty(), "safetensors: I64 values", name);
            } else {
                sae_fuzz::require(t.f32.size() == n, "safetensors: float values", name);
                sae_fuzz::require(t.f64.size() == (t.dtype == sae::DType::f64 ? n : 0), "safetensors: F64 values", name);
            }
        }
        sae_fuzz::require(total <= in.size(), "safetensors: tensors larger than the input");
    });
    return 0;
}
