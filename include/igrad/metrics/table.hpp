#pragma once
/// @file metrics/table.hpp
/// @brief A method × metric table of numbers, printable with fmt and writable as CSV and Markdown.

#include <igrad/exceptions.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace igrad {

/// @addtogroup metrics_group
/// @{

/// @brief Rows of explanation methods, columns of metrics.
///
/// The metric columns `evaluate` fills, with their units and which way is better:
/// `AD` (%, lower), `AI` (%, higher), `AG` (%, higher), `Insertion` (AUC in [0, 1], higher),
/// `Deletion` (AUC in [0, 1], lower), `Pointing` (% hits, higher), `EnergyPointing` (%, higher),
/// and with `EvaluationOptions::complexity_metrics`: `Sparseness` (mean Gini index in [0, 1],
/// higher: sparser), `Complexity` (mean entropy in nats, lower: more concentrated); with
/// `EvaluationOptions::road`: `ROAD` (mean combined score, score units, higher); with
/// `faithfulness_correlation`: `FaithCorr` (mean Pearson ρ in [−1, 1], higher); with
/// `infidelity`: `Infidelity` (mean squared error in squared score units, lower).
///
/// `to_csv()` and `to_markdown()` write every number in the shortest form that reads back to the
/// same double, so a table survives a round trip through a file; `igrad::detail::format("{}",
/// table)` (and `to_text`) aligns columns for reading, rounded.
class MetricsTable {
 public:
  /// @brief An empty table with these metric columns.
  explicit MetricsTable(std::vector<std::string> metrics = {}) : metrics_(std::move(metrics)) {}

  /// @brief Appends a method's row: one value per metric column.
  void add_row(std::string method, std::vector<double> values) {
    detail::require(values.size() == metrics_.size(),
                    "the row of '{}' has {} values for {} metric columns; expected one per column",
                    method, values.size(), metrics_.size());
    detail::require(std::find(methods_.begin(), methods_.end(), method) == methods_.end(),
                    "the table already has a row '{}'; expected unique method names", method);
    methods_.push_back(std::move(method));
    values_.push_back(std::move(values));
  }

  /// @brief The method names, in row order.
  const std::vector<std::string>& methods() const { return methods_; }
  /// @brief The metric names, in column order.
  const std::vector<std::string>& metrics() const { return metrics_; }
  /// @brief The values of a row, in column order.
  const std::vector<double>& row(std::string_view method) const {
    return values_[index_of(methods_, method, "method")];
  }
  /// @brief One value; throws `InvalidArgument` naming the known methods / metrics when absent.
  double at(std::string_view method, std::string_view metric) const {
    return row(method)[index_of(metrics_, metric, "metric")];
  }
  /// @brief Whether the table has this metric column.
  bool has_metric(std::string_view metric) const {
    return std::find(metrics_.begin(), metrics_.end(), metric) != metrics_.end();
  }

  /// @brief CSV (RFC 4180): a header `method,<metrics...>`, then one line per method; names
  /// holding a comma, quote or newline are quoted.
  std::string to_csv() const {
    std::string out = "method";
    for (const auto& m : metrics_) out += igrad::detail::format(",{}", csv_field(m));
    out += "\n";
    for (std::size_t r = 0; r < methods_.size(); ++r) {
      out += csv_field(methods_[r]);
      for (double v : values_[r]) out += igrad::detail::format(",{}", v);
      out += "\n";
    }
    return out;
  }

  /// @brief A GitHub-flavoured Markdown table; `decimals` rounds the numbers (none: exact
  /// shortest round-trip form). A `|` in a name is escaped.
  std::string to_markdown(std::optional<int> decimals = std::nullopt) const {
    std::string out = "| method |";
    for (const auto& m : metrics_) out += igrad::detail::format(" {} |", markdown_cell(m));
    out += "\n|:---|";
    for (std::size_t c = 0; c < metrics_.size(); ++c) out += "---:|";
    out += "\n";
    for (std::size_t r = 0; r < methods_.size(); ++r) {
      out += igrad::detail::format("| {} |", markdown_cell(methods_[r]));
      for (double v : values_[r])
        out += decimals ? igrad::detail::format(" {:.{}f} |", v, *decimals)
                        : igrad::detail::format(" {} |", v);
      out += "\n";
    }
    return out;
  }

  /// @brief Aligned plain text with `decimals` decimals (what `igrad::detail::format("{}", table)`
  /// prints).
  std::string to_text(int decimals = 3) const {
    std::size_t name_width = 6;  // "method"
    for (const auto& m : methods_) name_width = std::max(name_width, m.size());
    std::vector<std::size_t> widths;
    for (std::size_t c = 0; c < metrics_.size(); ++c) {
      std::size_t w = metrics_[c].size();
      for (const auto& row_values : values_)
        w = std::max(w, igrad::detail::format("{:.{}f}", row_values[c], decimals).size());
      widths.push_back(w);
    }
    std::string out = igrad::detail::format("{:<{}}", "method", name_width);
    for (std::size_t c = 0; c < metrics_.size(); ++c)
      out += igrad::detail::format("  {:>{}}", metrics_[c], widths[c]);
    out += "\n";
    for (std::size_t r = 0; r < methods_.size(); ++r) {
      out += igrad::detail::format("{:<{}}", methods_[r], name_width);
      for (std::size_t c = 0; c < metrics_.size(); ++c)
        out += igrad::detail::format("  {:>{}.{}f}", values_[r][c], widths[c], decimals);
      out += "\n";
    }
    return out;
  }

  /// @brief Writes `to_csv()` to a file; throws `InvalidArgument` when it cannot be written.
  void write_csv(const std::filesystem::path& path) const { write(path, to_csv()); }
  /// @brief Writes `to_markdown(decimals)` to a file.
  void write_markdown(const std::filesystem::path& path,
                      std::optional<int> decimals = std::nullopt) const {
    write(path, to_markdown(decimals));
  }

 private:
  static std::size_t index_of(const std::vector<std::string>& names, std::string_view name,
                              std::string_view what) {
    const auto it = std::find(names.begin(), names.end(), name);
    if (it == names.end()) {
      std::string known;
      for (const auto& n : names)
        known += igrad::detail::format("{}{}", known.empty() ? "" : ", ", n);
      throw InvalidArgument(igrad::detail::format("the table has no {} '{}'; expected one of: {}",
                                                  what, name, known.empty() ? "(none)" : known));
    }
    return static_cast<std::size_t>(it - names.begin());
  }
  static std::string csv_field(const std::string& s) {
    if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
    std::string quoted = "\"";
    for (char ch : s) quoted += ch == '"' ? std::string("\"\"") : std::string(1, ch);
    quoted += '"';
    return quoted;
  }
  static std::string markdown_cell(const std::string& s) {
    std::string out;
    for (char ch : s) out += ch == '|' ? std::string("\\|") : std::string(1, ch);
    return out;
  }
  static void write(const std::filesystem::path& path, const std::string& text) {
    std::ofstream file(path, std::ios::binary);
    file << text;
    detail::require(static_cast<bool>(file), "cannot write the table to '{}'; expected a "
                                             "writable path", path.string());
  }

  std::vector<std::string> metrics_;
  std::vector<std::string> methods_;
  std::vector<std::vector<double>> values_;
};

/// @}
}  // namespace igrad

/// @cond  fmt's formatter specialisation: documented in MetricsTable::to_text
/// @brief `igrad::detail::format("{}", table)`: the aligned plain-text table
/// (`MetricsTable::to_text()`).
template <>
struct fmt::formatter<igrad::MetricsTable> : fmt::formatter<std::string_view> {
  /// @brief Formats the table as aligned text with 3 decimals.
  template <class FormatContext>
  auto format(const igrad::MetricsTable& table, FormatContext& ctx) const {
    return fmt::formatter<std::string_view>::format(table.to_text(), ctx);
  }
};
/// @endcond
