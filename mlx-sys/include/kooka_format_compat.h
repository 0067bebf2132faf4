/* kooka: a `{}`-only std::format for standard libraries without <format> (GCC 12).
 *
 * mlx-c uses std::format only to build error messages. When the real one exists
 * (__cpp_lib_format) this header does nothing. */
#ifndef KOOKA_FORMAT_COMPAT_H
#define KOOKA_FORMAT_COMPAT_H
#ifdef __cplusplus
#include <version>
#if !defined(__cpp_lib_format)
#include <sstream>
#include <string>
#include <string_view>

namespace kooka_compat {
inline void format_rest(std::ostringstream& out, std::string_view fmt) {
  out << fmt;
}
template <typename T, typename... Rest>
void format_rest(std::ostringstream& out, std::string_view fmt, const T& value,
                 const Rest&... rest) {
  auto pos = fmt.find("{}");
  if (pos == std::string_view::npos) {
    out << fmt;
    return;
  }
  out << fmt.substr(0, pos) << value;
  format_rest(out, fmt.substr(pos + 2), rest...);
}
}  // namespace kooka_compat

namespace std {
template <typename... Args>
std::string format(std::string_view fmt, const Args&... args) {
  std::ostringstream out;
  kooka_compat::format_rest(out, fmt, args...);
  return out.str();
}
}  // namespace std
#endif
#endif
#endif
