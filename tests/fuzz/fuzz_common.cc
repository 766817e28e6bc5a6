// Shared helpers of the fuzz targets. See fuzz.h.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "fuzz.h"

namespace syncsched::fuzz {
namespace {
std::string& CurrentInput() {
  static std::string name;
  return name;
}
}  // namespace

void SetCurrentInput(std::string name) { CurrentInput() = std::move(name); }

void Fail(const char* file, int line, const char* condition, std::string_view detail) {
  std::fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n  %.*s\n", file, line, condition,
               static_cast<int>(detail.size()), detail.data());
  if (!CurrentInput().empty()) std::fprintf(stderr, "  input: %s\n", CurrentInput().c_str());
  std::fflush(stderr);
  std::abort();
}

std::string PercentEncode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size() * 3);
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    bool plain = (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || (u >= '0' && u <= '9') ||
                 u == '-' || u == '.' || u == '_' || u == '~';
    if (plain) {
      out += c;
    } else {
      out += '%';
      out += kHex[u >> 4];
      out += kHex[u & 15];
    }
  }
  return out;
}

}  // namespace syncsched::fuzz
