// Reads a tensor written by Python's `torch.save` (the zip format, the default since
// PyTorch 1.6) through libtorch's own unpickler, `torch::jit::pickle_load`, which tch does
// not expose. The result is an owned `torch::Tensor*`: the same handle tch wraps.
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

#include <torch/csrc/jit/serialization/pickle.h>

namespace {
char *copy_message(const char *message) {
  size_t len = std::strlen(message);
  char *out = static_cast<char *>(std::malloc(len + 1));
  if (out != nullptr) {
    std::memcpy(out, message, len + 1);
  }
  return out;
}
} // namespace

extern "C" {

// Returns a new `torch::Tensor*`, or null with `*error` set to a message to be released
// with `msclam_torch_free_error`. Never lets a C++ exception out.
void *msclam_torch_load_tensor(const char *data, size_t len, char **error) {
  *error = nullptr;
  try {
    std::vector<char> bytes(data, data + len);
    c10::IValue value = torch::jit::pickle_load(bytes);
    if (!value.isTensor()) {
      *error = copy_message("the file holds a Python object that is not a tensor");
      return nullptr;
    }
    return new at::Tensor(value.toTensor());
  } catch (const std::exception &e) {
    *error = copy_message(e.what());
  } catch (...) {
    *error = copy_message("unknown C++ exception while reading the tensor");
  }
  return nullptr;
}

// Releases a message returned by `msclam_torch_load_tensor`.
void msclam_torch_free_error(char *error) { std::free(error); }
}
