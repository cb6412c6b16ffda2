// libFuzzer target: sae::array_read, i.e. the whole data-file path: gzip detection and
// inflation (raw or concatenated members), then the choice between .npy and IDX by content.
// array_read takes a path, so each input is written to one temporary file per process first
// (in /dev/shm when it exists); slower than the in-memory targets, but it is the gunzip code.
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "fuzz_common.hpp"
#include "sae/data.hpp"

namespace {
std::string temp_path() {
    const char* dir = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : nullptr;
    std::string d = dir ? dir : std::filesystem::temp_directory_path().string();
    return d + "/sae-fuzz-array-" + std::to_string(::getpid());
}
struct TempFile {
    std::string path = temp_path();
    ~TempFile() { std::remove(path.c_str()); }
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static TempFile tmp;
    std::FILE* f = std::fopen(tmp.path.c_str(), "wb");
    sae_fuzz::require(f != nullptr, "cannot create the temporary file", tmp.path);
    sae_fuzz::require(std::fwrite(data, 1, size, f) == size && std::fclose(f) == 0,
                      "cannot write the temporary file", tmp.path);
    sae_fuzz::parses([&] {
        sae::Array a = sae::array_read(tmp.path);
        sae_fuzz::require(int64_t(a.values.size()) == a.numel(), "array_read: value count differs from the shape");
    });
    return 0;
}
