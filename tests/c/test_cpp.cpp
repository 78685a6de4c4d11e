// The header from C++ (-std=c++17 -Wall -Wextra -Werror -pedantic): RAII ownership, vectors,
// a slide streamed in strips and compared with the Rust engine's outputs.
// Usage: test_cpp <fixture dir>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "msclam.h"

namespace {

struct ModelDeleter {
    void operator()(msclam_model *m) const noexcept { msclam_model_free(m); }
};
struct SessionDeleter {
    void operator()(msclam_session *s) const noexcept { msclam_session_free(s); }
};
using ModelPtr = std::unique_ptr<msclam_model, ModelDeleter>;
using SessionPtr = std::unique_ptr<msclam_session, SessionDeleter>;

void ok(msclam_status status, const char *what) {
    if (status != MSCLAM_STATUS_OK) {
        throw std::runtime_error(std::string(what) + ": " + msclam_status_string(status) + ": " +
                                 msclam_last_error_message());
    }
}

template <typename T>
std::vector<T> read_values(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<T> values(bytes.size() / sizeof(T));
    std::copy(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(values.size() * sizeof(T)),
              reinterpret_cast<char *>(values.data()));
    return values;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s <fixture dir>\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    int passed = 0, failed = 0;
    auto check = [&](bool cond, const std::string &what) {
        if (cond) {
            ++passed;
        } else {
            ++failed;
            std::fprintf(stderr, "FAIL: %s\n", what.c_str());
        }
    };
    try {
        msclam_model *raw_model = nullptr;
        ok(msclam_model_load((dir + "/model.mscl").c_str(), &raw_model), "load");
        ModelPtr model(raw_model);
        msclam_model_info info = msclam_model_info_init();
        ok(msclam_model_get_info(model.get(), &info), "info");
        const std::size_t dim = info.input_dim;

        const auto slide = read_values<float>(dir + "/slide.f32");
        const auto coords = read_values<std::uint32_t>(dir + "/coords.u32");
        const auto want_probs = read_values<float>(dir + "/expected_tile_probs.f32");
        const auto want_slide = read_values<float>(dir + "/expected_slide_probs.f32");
        const std::size_t tiles = slide.size() / dim;
        check(tiles == want_probs.size() && tiles > 0, "fixture sizes");

        msclam_session_options opts = msclam_session_options_default();
        opts.max_tiles = tiles;
        msclam_session *raw_session = nullptr;
        ok(msclam_session_create(model.get(), &opts, &raw_session), "create");
        SessionPtr session(raw_session);

        std::vector<float> probs(tiles);
        float slide_prob = 0.0f;
        const std::size_t strips[] = {1, 7, 64, 33};
        for (std::size_t start = 0, i = 0; start < tiles; ++i) {
            std::size_t n = std::min(strips[i % 4], tiles - start);
            ok(msclam_session_push(session.get(), &slide[start * dim], n, dim, &coords[2 * start],
                                   &probs[start], nullptr, &slide_prob),
               "push");
            start += n;
        }
        std::size_t bad = 0;
        for (std::size_t t = 0; t < tiles; ++t) {
            if (std::fabs(probs[t] - want_probs[t]) > 1e-5 * std::fabs(want_probs[t]) + 1e-7) ++bad;
        }
        check(bad == 0, std::to_string(bad) + " tile probabilities differ");
        check(std::fabs(slide_prob - want_slide[info.tumor_class]) < 1e-5f, "slide probability");

        msclam_slide_result result = msclam_slide_result_init();
        ok(msclam_session_finalize(session.get(), &result), "finalize");
        check(result.num_tiles == tiles, "tiles in result");
        std::vector<std::uint8_t> mask(tiles);
        std::size_t count = 0;
        ok(msclam_session_copy_tile_mask(session.get(), mask.data(), mask.size(), &count), "mask");
        std::size_t tumor = 0;
        for (auto m : mask) tumor += m;
        check(count == tiles && tumor == result.tumor_tiles, "mask agrees with result");
        check(msclam_session_push(session.get(), nullptr, 1, dim, nullptr, nullptr, nullptr, nullptr) ==
                  MSCLAM_STATUS_NULL_ARGUMENT,
              "errors are statuses, not exceptions");
    } catch (const std::exception &e) {
        std::fprintf(stderr, "FAIL: %s\n", e.what());
        ++failed;
    }
    std::printf("test_cpp: %d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
