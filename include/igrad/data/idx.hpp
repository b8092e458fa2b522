#pragma once
/// @file data/idx.hpp
/// @brief Reading gzipped (or plain) files whole, and the IDX format of (Fashion-)MNIST.
///
/// Every failure — a missing file, a corrupt or truncated gzip stream, a wrong magic number, a
/// header that disagrees with the file's size — raises `igrad::DataError` naming the file and
/// what was wrong, since a silently short data set would make every later number wrong.

#include <igrad/exceptions.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>
#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace igrad::data {

/// @defgroup data_group Data
/// @brief Datasets (Fashion-MNIST, CIFAR-10/100, cluttered Fashion-MNIST) and their readers.
/// @{

/// @brief The whole content of a file, decompressed when it is gzip-compressed.
///
/// zlib reads a file without a gzip header transparently, so both `x.gz` and an already
/// decompressed `x` are accepted. Throws `DataError` when the file is missing, unreadable, or its
/// gzip stream is corrupt or truncated.
inline std::vector<std::uint8_t> read_gzip_file(const std::filesystem::path& path) {
  detail::require<DataError>(std::filesystem::is_regular_file(path),
                             "data file '{}' does not exist or is not a regular file",
                             path.string());
  gzFile file = gzopen(path.string().c_str(), "rb");
  detail::require<DataError>(file != nullptr, "data file '{}' cannot be opened for reading",
                             path.string());
  gzbuffer(file, 1 << 18);
  std::vector<std::uint8_t> bytes;
  constexpr std::size_t chunk = std::size_t{1} << 22;
  std::string failure;
  for (;;) {
    const std::size_t old_size = bytes.size();
    bytes.resize(old_size + chunk);
    const int got = gzread(file, bytes.data() + old_size, static_cast<unsigned>(chunk));
    if (got < 0) {
      int code = Z_OK;
      failure = gzerror(file, &code);
      bytes.resize(old_size);
      break;
    }
    bytes.resize(old_size + static_cast<std::size_t>(got));
    if (got == 0) break;
  }
  if (failure.empty()) {
    int code = Z_OK;
    const char* message = gzerror(file, &code);
    if (code != Z_OK && code != Z_STREAM_END) failure = message;
  }
  // gzclose reports Z_BUF_ERROR when the stream ended in the middle of a member (truncation).
  const int closed = gzclose(file);
  if (failure.empty() && closed == Z_BUF_ERROR) failure = "unexpected end of file";
  if (failure.empty() && closed != Z_OK) failure = "error while closing (zlib code " +
                                                   std::to_string(closed) + ")";
  detail::require<DataError>(failure.empty(),
                             "data file '{}' is not a valid gzip stream (truncated or corrupt): "
                             "{}; expected an intact .gz file — download it again",
                             path.string(), failure);
  return bytes;
}

/// @brief An IDX file (the format of MNIST and Fashion-MNIST) of unsigned bytes, as a `uint8`
/// tensor whose shape is the file's dimensions.
///
/// `expected_rank` is the number of dimensions the caller needs (3 for images, 1 for labels).
/// Throws `DataError` naming the file on a wrong magic number (the type byte must be 0x08,
/// unsigned byte), a wrong rank, or a payload that is shorter or longer than the header says.
inline torch::Tensor read_idx_file(const std::filesystem::path& path, int64_t expected_rank) {
  const auto bytes = read_gzip_file(path);
  const auto be32 = [&](std::size_t offset) {
    return (std::uint32_t{bytes[offset]} << 24) | (std::uint32_t{bytes[offset + 1]} << 16) |
           (std::uint32_t{bytes[offset + 2]} << 8) | std::uint32_t{bytes[offset + 3]};
  };
  detail::require<DataError>(bytes.size() >= 4,
                             "IDX file '{}' holds {} bytes; expected at least the 4-byte magic "
                             "number (the file is truncated)",
                             path.string(), bytes.size());
  const std::uint32_t magic = be32(0);
  const std::uint32_t expected_magic = 0x0800u + static_cast<std::uint32_t>(expected_rank);
  detail::require<DataError>(magic == expected_magic,
                             "IDX file '{}' has magic number 0x{:08x}; expected 0x{:08x} "
                             "(unsigned bytes, {} dimensions)",
                             path.string(), magic, expected_magic, expected_rank);
  const std::size_t header = 4 + 4 * static_cast<std::size_t>(expected_rank);
  detail::require<DataError>(bytes.size() >= header,
                             "IDX file '{}' holds {} bytes; expected a {}-byte header (the file "
                             "is truncated)",
                             path.string(), bytes.size(), header);
  std::vector<int64_t> shape;
  const std::size_t available = bytes.size() - header;
  // The product of the dimensions, capped at `too_many` (more than the file holds): the plain
  // product of three 32-bit sizes can wrap around 64 bits (2^31 · 2^31 · 4 is 0) and pass.
  const std::size_t too_many = available + 1;
  std::size_t payload = 1;
  bool empty = false;
  for (int64_t d = 0; d < expected_rank; ++d) {
    shape.push_back(be32(4 + 4 * static_cast<std::size_t>(d)));
    const auto size = static_cast<std::size_t>(shape.back());
    if (size == 0)
      empty = true;
    else
      payload = payload > too_many / size ? too_many : payload * size;
  }
  if (empty) payload = 0;
  detail::require<DataError>(
      available == payload,
      "IDX file '{}' holds {} data bytes but its header announces {} "
      "(shape {}); the file is {}",
      path.string(), available,
      payload >= too_many ? igrad::detail::format("more") : igrad::detail::format("{}", payload),
      igrad::detail::format("[{}]", fmt::join(shape, ", ")),
      available < payload ? "truncated" : "too long");
  auto tensor = torch::empty(shape, torch::kUInt8);
  // An empty tensor's data pointer may be null, which memcpy must not get even for 0 bytes.
  if (payload > 0) std::memcpy(tensor.data_ptr<std::uint8_t>(), bytes.data() + header, payload);
  return tensor;
}

/// @}
}  // namespace igrad::data
