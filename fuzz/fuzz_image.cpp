// libFuzzer target: sae::image_decode (PNG through libpng, JPEG through libjpeg-turbo) on arbitrary bytes.
#include "fuzz_common.hpp"
#include "sae/images.hpp"

namespace {
constexpr int64_t kFuzzMaxSide = 2048;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string in = sae_fuzz::bytes(data, size);
    sae_fuzz::parses([&] {
        // Sides up to 2048 (4M pixels): larger valid images take seconds each under ASan, which
        // libFuzzer's -timeout counts as a hang; the size check itself is the same code.
        const sae::Image im = sae::image_decode(in, "fuzz.png", kFuzzMaxSide);
        sae_fuzz::require(im.height > 0 && im.width > 0, "image: no pixels");
        sae_fuzz::require(im.height <= kFuzzMaxSide && im.width <= kFuzzMaxSide, "image: over the size limit");
        sae_fuzz::require(int64_t(im.pixels.size()) == im.height * im.width, "image: pixel count differs from the size");
        for (float v : im.pixels) sae_fuzz::require(v >= 0.0f && v <= 1.0f, "image: a value outside [0, 1]");
    });
    return 0;
}
