#pragma once
/// @file detail/progress_line.hpp
/// @brief The one progress renderer behind `ProgressBar` (training) and the evaluation's
/// progress: a line redrawn in place on a terminal, plain lines elsewhere (logs, CI), a 24-wide
/// bar and human-readable durations.

#include <igrad/exceptions.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <utility>

#include <unistd.h>

namespace igrad::detail {

/// `seconds` as "42 s", "3 min 05 s" or "2 h 07 min".
inline std::string format_duration(double seconds) {
  const auto whole = static_cast<int64_t>(seconds + 0.5);
  if (whole < 60) return igrad::detail::format("{} s", whole);
  if (whole < 3600) return igrad::detail::format("{} min {:02} s", whole / 60, whole % 60);
  return igrad::detail::format("{} h {:02} min", whole / 3600, (whole % 3600) / 60);
}

/// "[######..................] " for `done` of `total` (24 wide, with a trailing space); empty
/// when the total is unknown or zero.
inline std::string progress_bar_text(int64_t done, std::optional<int64_t> total) {
  if (!total || *total <= 0) return {};
  constexpr int width = 24;
  const double fraction = static_cast<double>(done) / static_cast<double>(*total);
  const int filled = std::min(width, static_cast<int>(fraction * width + 0.5));
  return igrad::detail::format("[{}{}] ", std::string(filled, '#'),
                               std::string(width - filled, '.'));
}

/// A progress line on a stream: on a terminal it is redrawn in place (at most every 100 ms);
/// elsewhere only whole lines are written, so logs stay readable. A null stream writes nothing.
class ProgressLine {
 public:
  /// A line on `stream` (may be null), a terminal when `isatty` says so.
  explicit ProgressLine(std::FILE* stream)
      : stream_(stream), tty_(stream != nullptr && ::isatty(::fileno(stream)) != 0) {}

  /// Whether the line is redrawn in place.
  bool is_terminal() const { return tty_; }
  /// Forces terminal (redraw) or plain (whole lines) output.
  void set_terminal(bool on) { tty_ = on; }
  /// Whether anything is written at all.
  bool enabled() const { return stream_ != nullptr; }

  /// On a terminal, redraws the line with `render()` unless it was drawn less than 100 ms ago;
  /// elsewhere does nothing.
  template <class Render>
  void redraw(Render&& render) {
    if (stream_ == nullptr || !tty_) return;
    const auto now = std::chrono::steady_clock::now();
    if (now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    // fmt rather than "literal" + std::string: GCC 12 warns falsely (-Wstringop-overflow) on the
    // latter once inlined into fit().
    std::fputs(igrad::detail::format("\r{}\x1b[K", std::forward<Render>(render)()).c_str(),
               stream_);
    std::fflush(stream_);
  }

  /// Writes `text` as a line of its own (on a terminal, over the line drawn in place).
  void print_line(const std::string& text) {
    if (stream_ == nullptr) return;
    std::fputs(igrad::detail::format("{}{}\n", tty_ ? "\r\x1b[K" : "", text).c_str(), stream_);
    std::fflush(stream_);
  }

 private:
  std::FILE* stream_;
  bool tty_;
  std::chrono::steady_clock::time_point last_draw_{};
};

}  // namespace igrad::detail
