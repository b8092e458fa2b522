#pragma once
/// @file detail/archive_integrity.hpp
/// @brief What makes igrad's weights and checkpoint files trustworthy: a digest of everything
/// an archive stores, atomic writes, and a model load that checks dtype, device and shape of
/// every tensor and leaves the model unchanged when anything does not fit.

#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace igrad::detail {

/// The archive key of the digest igrad stores beside the tensors.
inline constexpr const char* kDigestKey = "igrad_digest";
/// The digest's layout: `[version, crc]`, an int64 tensor; a new version means a new layout.
inline constexpr int64_t kDigestVersion = 1;

/// CRC-32 (zlib's) of a byte range, continued from `crc`. zlib takes `uInt` lengths: chunked.
inline std::uint32_t crc_update(std::uint32_t crc, const void* data, std::size_t size) {
  const auto* bytes = static_cast<const Bytef*>(data);
  constexpr std::size_t chunk = std::size_t{1} << 30;
  while (size > 0) {
    const auto n = std::min(size, chunk);
    crc = static_cast<std::uint32_t>(::crc32(crc, bytes, static_cast<uInt>(n)));
    bytes += n;
    size -= n;
  }
  return crc;
}

/// CRC-32 of a string, its length first (so that "ab" + "c" differs from "a" + "bc").
inline std::uint32_t crc_update(std::uint32_t crc, std::string_view text) {
  const auto length = static_cast<std::uint64_t>(text.size());
  crc = crc_update(crc, &length, sizeof length);
  return crc_update(crc, text.data(), text.size());
}

/// Checks that a tensor read from a file lies inside its storage. LibTorch's unpickler builds a
/// tensor from the sizes, strides and offset the file states without checking them against the
/// bytes stored, so a corrupt file can yield a view past the end of its storage: reading it
/// would read memory the tensor does not own.
inline void require_within_storage(const torch::Tensor& t, std::string_view name,
                                   std::string_view what, const std::filesystem::path& path) {
  const auto corrupt = [&](std::string_view why) {
    return DataError(
        igrad::detail::format("{} '{}' is corrupt: stored tensor '{}' {}; nothing was loaded "
                              "— use another copy of the file",
                              what, path.string(), name, why));
  };
  if (t.layout() != torch::kStrided || !t.has_storage()) throw corrupt("is not a dense tensor");
  if (t.numel() == 0) return;
  int64_t last = t.storage_offset();  // the highest element index the view reaches
  if (last < 0) throw corrupt("has a negative storage offset");
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.stride(d) < 0) throw corrupt("has a negative stride");
    last += (t.size(d) - 1) * t.stride(d);
  }
  const auto elements = static_cast<int64_t>(t.storage().nbytes()) / t.element_size();
  if (last >= elements)
    throw corrupt(igrad::detail::format("reaches element {} of a storage of {} (shape {})", last,
                                        elements, shape_string(t)));
}

/// CRC-32 of everything `archive` stores, nested archives included, in sorted key order:
/// each key, each tensor's dtype, shape and bytes (on the CPU: the digest does not depend on
/// the device it was loaded to), each other value's printed form. The top level's digest key
/// is left out.
inline std::uint32_t archive_crc(torch::serialize::InputArchive& archive,
                                 const std::filesystem::path& path, std::string_view what,
                                 std::uint32_t crc = 0, const std::string& prefix = "") {
  const bool top_level = prefix.empty();
  auto keys = archive.keys();
  std::sort(keys.begin(), keys.end());
  for (const auto& key : keys) {
    if (top_level && key == kDigestKey) continue;
    c10::IValue value;
    if (!archive.try_read(key, value)) continue;
    crc = crc_update(crc, key);
    if (value.isTensor()) {
      require_within_storage(value.toTensor(), prefix + key, what, path);
      const auto tensor = value.toTensor().detach().to(torch::kCPU).contiguous();
      crc = crc_update(crc, c10::toString(tensor.scalar_type()));
      for (const auto size : tensor.sizes()) crc = crc_update(crc, &size, sizeof size);
      crc = crc_update(crc, tensor.data_ptr(), tensor.nbytes());
    } else if (value.isObject()) {
      torch::serialize::InputArchive nested;
      archive.read(key, nested);
      crc = archive_crc(nested, path, what, crc, prefix + key + ".");
    } else {
      std::ostringstream printed;
      printed << value;
      crc = crc_update(crc, printed.str());
    }
  }
  return crc;
}

/// Adds the digest of what `archive` holds so far under `kDigestKey`. The archive is
/// serialised once in memory and read back, so that the digest is computed exactly as
/// `verify_digest` will compute it from the file.
inline void add_digest(torch::serialize::OutputArchive& archive) {
  std::ostringstream serialised;
  archive.save_to(serialised);
  const auto bytes = serialised.str();
  torch::serialize::InputArchive readback;
  readback.load_from(bytes.data(), bytes.size());
  const auto crc = archive_crc(readback, "(in memory)", "archive");
  archive.write(kDigestKey, torch::tensor({kDigestVersion, static_cast<int64_t>(crc)}));
}

/// Checks the digest stored in `archive` (loaded from `path`) against its content; `DataError`
/// on a mismatch. Returns false, checking nothing, for a file without a digest (written before
/// igrad stored one, or by plain `torch::save`): such files still load as before.
inline bool verify_digest(torch::serialize::InputArchive& archive, const std::filesystem::path& path,
                          std::string_view what) {
  c10::IValue stored;
  if (!archive.try_read(kDigestKey, stored)) return false;
  require<DataError>(stored.isTensor(),
                     "{} '{}' has a malformed digest (not a tensor); the file is corrupt",
                     what, path.string());
  const auto& digest = stored.toTensor();
  require<DataError>(digest.scalar_type() == torch::kLong && digest.dim() == 1 &&
                         digest.numel() == 2,
                     "{} '{}' has a digest of an unknown layout (dtype {}, shape {}); expected "
                     "[{}, crc] as this igrad writes: the file is corrupt or from a newer igrad",
                     what, path.string(), c10::toString(digest.scalar_type()),
                     shape_string(digest), kDigestVersion);
  require_within_storage(digest, kDigestKey, what, path);
  const auto values = digest.to(torch::kCPU).contiguous();
  const auto* stored_values = values.data_ptr<int64_t>();
  require<DataError>(stored_values[0] == kDigestVersion,
                     "{} '{}' has a digest of layout version {}; expected {}: the file is corrupt "
                     "or from a newer igrad",
                     what, path.string(), stored_values[0], kDigestVersion);
  const auto expected = static_cast<std::uint32_t>(stored_values[1]);
  const auto actual = archive_crc(archive, path, what);
  require<DataError>(actual == expected && stored_values[1] >= 0 && stored_values[1] <= 0xffffffffLL,
                     "{} '{}' fails its digest check (stored CRC-32 {:08x}, content {:08x}): "
                     "the file was corrupted after it was written (a flipped byte, a bad copy); "
                     "nothing was loaded — use another copy of the file",
                     what, path.string(), expected, actual);
  return true;
}

/// Writes `archive` to `path` + ".partial", then renames it over `path`: an interrupted write
/// never leaves a truncated file. `what` names the file's kind in the error message.
inline void save_archive_atomically(torch::serialize::OutputArchive& archive,
                                    const std::filesystem::path& path, std::string_view what) {
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  auto temporary = path;
  temporary += ".partial";
  try {
    archive.save_to(temporary.string());
    std::filesystem::rename(temporary, path);
  } catch (const std::exception& e) {
    std::error_code ignored;
    std::filesystem::remove(temporary, ignored);
    throw Error(igrad::detail::format("cannot write {} '{}': {}", what, path.string(),
                                      first_line(e.what())));
  }
}

/// Checks the zip container of a LibTorch archive before LibTorch parses it: every entry's
/// CRC-32, as the zip format stores it, against its bytes. LibTorch's reader skips these checks
/// (miniz built with MINIZ_DISABLE_ZIP_READER_CRC32_CHECKS), and its TorchScript importer
/// crashes (SIGSEGV) on some corrupt class definitions in `code/`, so a damaged file must not
/// reach it. Handles stored and deflated entries and zip64 (LibTorch always writes the zip64
/// end records). `DataError` on anything that is not an intact zip.
inline void verify_zip_container(const std::vector<char>& file, const std::filesystem::path& path,
                                 std::string_view what) {
  const auto corrupt = [&](const std::string& why) {
    return DataError(
        igrad::detail::format("{} '{}' is corrupt: {}; nothing was loaded — use another copy "
                              "of the file",
                              what, path.string(), why));
  };
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(file.data());
  const std::uint64_t size = file.size();
  const auto le = [&](std::uint64_t at, int width) {  // little-endian, bounds-checked
    if (at > size || size - at < static_cast<std::uint64_t>(width))
      throw corrupt(
          igrad::detail::format("a zip record at byte {} runs past the end of the file", at));
    std::uint64_t value = 0;
    for (int i = width - 1; i >= 0; --i) value = (value << 8) | bytes[at + i];
    return value;
  };
  // End of central directory: the last "PK\5\6" within the 64 KiB comment window.
  constexpr std::uint64_t kEnd = 22;
  if (size < kEnd) throw corrupt("too short for a zip archive");
  std::uint64_t end = size - kEnd;
  const std::uint64_t lowest = size - kEnd > 65535 ? size - kEnd - 65535 : 0;
  while (le(end, 4) != 0x06054b50) {
    if (end == lowest) throw corrupt("no zip end-of-central-directory record");
    --end;
  }
  std::uint64_t entries = le(end + 10, 2), directory_size = le(end + 12, 4),
                directory = le(end + 16, 4);
  // zip64: a locator just before it points to the zip64 end record, which has the real counts.
  if (end >= 20 && le(end - 20, 4) == 0x07064b50) {
    const auto end64 = le(end - 20 + 8, 8);
    if (le(end64, 4) != 0x06064b50) throw corrupt("a broken zip64 end record");
    entries = le(end64 + 32, 8);
    directory_size = le(end64 + 40, 8);
    directory = le(end64 + 48, 8);
  }
  if (directory > size || directory_size > size - directory)
    throw corrupt("the zip central directory lies outside the file");
  std::vector<std::uint8_t> inflated;
  std::uint64_t at = directory;
  for (std::uint64_t entry = 0; entry < entries; ++entry) {
    if (le(at, 4) != 0x02014b50)
      throw corrupt(igrad::detail::format("zip entry {} is malformed", entry));
    const auto method = le(at + 10, 2);
    const auto stored_crc = static_cast<std::uint32_t>(le(at + 16, 4));
    std::uint64_t packed = le(at + 20, 4), unpacked = le(at + 24, 4);
    const auto name_length = le(at + 28, 2), extra_length = le(at + 30, 2),
               comment_length = le(at + 32, 2);
    std::uint64_t local = le(at + 42, 4);
    if (at + 46 + name_length > size)
      throw corrupt(igrad::detail::format("zip entry {} is cut", entry));
    const std::string name(reinterpret_cast<const char*>(bytes + at + 46), name_length);
    // zip64 extra field (id 1): 8-byte values for the fields saturated at 0xffffffff, in order.
    for (std::uint64_t x = at + 46 + name_length; x + 4 <= at + 46 + name_length + extra_length;) {
      const auto id = le(x, 2), length = le(x + 2, 2);
      if (id == 1) {
        std::uint64_t field = x + 4;
        if (unpacked == 0xffffffffu) unpacked = le(field, 8), field += 8;
        if (packed == 0xffffffffu) packed = le(field, 8), field += 8;
        if (local == 0xffffffffu) local = le(field, 8);
      }
      x += 4 + length;
    }
    if (le(local, 4) != 0x04034b50)
      throw corrupt(igrad::detail::format("zip entry '{}' has no local header", name));
    const auto data = local + 30 + le(local + 26, 2) + le(local + 28, 2);
    if (data > size || packed > size - data)
      throw corrupt(igrad::detail::format("zip entry '{}' runs past the end of the file", name));
    std::uint32_t crc = 0;
    if (method == 0) {
      if (packed != unpacked)
        throw corrupt(igrad::detail::format("zip entry '{}' has two sizes", name));
      crc = crc_update(0, bytes + data, packed);
    } else if (method == 8) {
      if (unpacked >= (std::uint64_t{1} << 32) || unpacked > 1024 * packed + 1024)
        throw corrupt(igrad::detail::format("zip entry '{}' claims an impossible size", name));
      inflated.resize(unpacked);
      z_stream stream{};
      if (inflateInit2(&stream, -MAX_WBITS) != Z_OK) throw corrupt("zlib cannot start");
      stream.next_in = const_cast<Bytef*>(bytes + data);
      stream.avail_in = static_cast<uInt>(std::min<std::uint64_t>(packed, 0xffffffffu));
      stream.next_out = inflated.data();
      stream.avail_out = static_cast<uInt>(unpacked);
      const int status = inflate(&stream, Z_FINISH);
      const auto produced = stream.total_out;
      inflateEnd(&stream);
      if (status != Z_STREAM_END || produced != unpacked)
        throw corrupt(igrad::detail::format("zip entry '{}' does not inflate", name));
      crc = crc_update(0, inflated.data(), inflated.size());
    } else {
      throw corrupt(
          igrad::detail::format("zip entry '{}' uses compression method {}", name, method));
    }
    if (crc != stored_crc)
      throw corrupt(
          igrad::detail::format("zip entry '{}' fails its CRC-32 check (stored {:08x}, bytes "
                                "{:08x})",
                                name, stored_crc, crc));
    at += 46 + name_length + extra_length + comment_length;
  }
}

/// Loads `path` into an archive on `device`; `DataError` naming the file when it is missing or
/// not an archive.
inline void load_archive(torch::serialize::InputArchive& archive, const std::filesystem::path& path,
                         torch::Device device, std::string_view what, std::string_view writer) {
  require<DataError>(std::filesystem::is_regular_file(path),
                     "{} '{}' does not exist or is not a regular file; expected a file written "
                     "by {}",
                     what, path.string(), writer);
  // Read once: the bytes checked are the bytes LibTorch parses.
  std::vector<char> file;
  {
    std::ifstream in(path, std::ios::binary);
    file.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    require<DataError>(!in.bad(), "{} '{}' cannot be read from disk", what, path.string());
  }
  verify_zip_container(file, path, what);
  try {
    archive.load_from(file.data(), file.size(), device);
  } catch (const std::exception& e) {
    throw DataError(
        igrad::detail::format("{} '{}' cannot be read: {}; expected a file written by {}", what,
                              path.string(), first_line(e.what()), writer));
  }
}

/// Every tensor an archive stores, with its dotted name ("conv.weight"), nested archives included.
struct StoredTensor {
  std::string name;     ///< dotted path of keys
  torch::Tensor value;  ///< the tensor, as loaded
};

/// Collects the tensors of `archive` (see `StoredTensor`).
inline void stored_tensors(torch::serialize::InputArchive& archive, const std::string& prefix,
                           std::vector<StoredTensor>& out, const std::filesystem::path& path,
                           std::string_view what) {
  for (const auto& key : archive.keys()) {
    c10::IValue value;
    if (!archive.try_read(key, value)) continue;
    if (value.isTensor()) {
      require_within_storage(value.toTensor(), prefix + key, what, path);
      out.push_back({prefix + key, value.toTensor()});
    } else if (value.isObject()) {
      torch::serialize::InputArchive nested;
      archive.read(key, nested);
      stored_tensors(nested, prefix + key + ".", out, path, what);
    }
  }
}

/// The model's tensors (parameters, then buffers) and copies of them, to restore the model when
/// a load fails at any later point.
class ModelSnapshot {
 public:
  /// @brief Copies every parameter and buffer of `model` (an `AnyModel`; a template so that
  /// detail/ does not depend on the public model header).
  template <class Model>
  explicit ModelSnapshot(const Model& model) : tensors_(model.parameters()) {
    parameter_count_ = tensors_.size();
    for (auto& b : model.buffers()) tensors_.push_back(b);
    for (const auto& t : tensors_) copies_.push_back(t.detach().clone());
  }
  /// @brief Puts the copies back into the same tensor objects (an optimizer built on them keeps
  /// working).
  void restore() {
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      if (tensors_[i].device() != copies_[i].device())
        tensors_[i].set_data(copies_[i]);
      else
        tensors_[i].set_(copies_[i]);
    }
  }
  /// The live tensors.
  const std::vector<torch::Tensor>& tensors() const { return tensors_; }
  /// The copies taken.
  const std::vector<torch::Tensor>& copies() const { return copies_; }
  /// How many of `tensors()` are parameters (the rest are buffers).
  std::size_t parameter_count() const { return parameter_count_; }

 private:
  std::vector<torch::Tensor> tensors_, copies_;
  std::size_t parameter_count_ = 0;
};

/// Loads a model's weights from `archive` (read from `path`), checking every tensor: its dtype
/// before anything is touched (LibTorch's `nn::Module::load` would reinterpret a double file's
/// bytes as floats), then shape, dtype and device of each loaded tensor (LibTorch silently adopts
/// a stored tensor of another shape). On any failure `snapshot` is restored and `DataError`
/// names the file and the tensor.
template <class Model>
void load_model_checked(const Model& model, torch::serialize::InputArchive& archive,
                        const std::filesystem::path& path, std::string_view what,
                        ModelSnapshot& snapshot) {
  std::vector<StoredTensor> stored;
  stored_tensors(archive, "", stored, path, what);
  std::set<c10::ScalarType> model_floating;
  for (const auto& t : snapshot.copies())
    if (t.is_floating_point()) model_floating.insert(t.scalar_type());
  const auto dtype_names = [&] {
    std::vector<std::string> names;
    for (const auto type : model_floating) names.emplace_back(c10::toString(type));
    return igrad::detail::format("{}", fmt::join(names, ", "));
  };
  for (const auto& s : stored) {
    if (!s.value.is_floating_point() || model_floating.empty()) continue;
    require<DataError>(model_floating.count(s.value.scalar_type()) > 0,
                       "{} '{}' does not fit this model: tensor '{}' is stored as {} but the "
                       "model's floating tensors are {}; expected a file saved from a model of "
                       "the same dtype (convert one of them with ->to(dtype)); the model was left "
                       "unchanged",
                       what, path.string(), s.name, c10::toString(s.value.scalar_type()),
                       dtype_names());
  }
  const auto& tensors = snapshot.tensors();
  const auto name_of = [&](std::size_t i) {
    for (const auto& s : stored)
      if (tensors[i].is_alias_of(s.value)) return igrad::detail::format("tensor '{}'", s.name);
    const bool parameter = i < snapshot.parameter_count();
    return igrad::detail::format("{} {}", parameter ? "parameter" : "buffer",
                                 parameter ? i : i - snapshot.parameter_count());
  };
  try {
    model.load(archive);
  } catch (const std::exception& e) {
    snapshot.restore();
    if (dynamic_cast<const Error*>(&e) != nullptr) throw;
    throw DataError(
        igrad::detail::format("{} '{}' does not fit this model: {}; expected weights saved "
                              "from the same architecture (the model was left unchanged)",
                              what, path.string(), first_line(e.what())));
  }
  const auto& copies = snapshot.copies();
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& loaded = tensors[i];
    std::string problem;
    // A tensor sharing a stored tensor's storage must have its dtype: same-size storage of
    // another dtype (a float32 file into an int32 buffer) would otherwise pass the shape check.
    const StoredTensor* source = nullptr;
    for (const auto& s : stored)
      if (loaded.is_alias_of(s.value)) source = &s;
    if (source != nullptr && source->value.scalar_type() != copies[i].scalar_type()) {
      problem = igrad::detail::format("is stored as {} but is {} in the model",
                                      c10::toString(source->value.scalar_type()),
                                      c10::toString(copies[i].scalar_type()));
    } else if (loaded.scalar_type() != copies[i].scalar_type()) {
      problem = igrad::detail::format("is {} in the file but {} in the model",
                                      c10::toString(loaded.scalar_type()),
                                      c10::toString(copies[i].scalar_type()));
    } else if (loaded.sizes() != copies[i].sizes()) {
      problem = igrad::detail::format("has shape {} in the file but {} in the model",
                                      shape_string(loaded), shape_string(copies[i]));
    } else if (loaded.device() != copies[i].device()) {
      problem = igrad::detail::format("was loaded to {} but the model's is on {}",
                                      loaded.device().str(), copies[i].device().str());
    }
    if (problem.empty()) continue;
    const auto name = name_of(i);
    snapshot.restore();
    throw DataError(
        igrad::detail::format("{} '{}' does not fit this model: {} {}; expected weights saved "
                              "from the same architecture, dtype and device (the model was "
                              "left unchanged)",
                              what, path.string(), name, problem));
  }
}

}  // namespace igrad::detail
