#pragma once
/// @file data/cifar.hpp
/// @brief CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from their binary versions, supplied by the
/// user (igrad does not download anything).

#include <igrad/data/image_dataset.hpp>
#include <igrad/exceptions.hpp>

#include <torch/arg.h>
#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace igrad::data {

/// @addtogroup data_group
/// @{

/// @brief How to load CIFAR, with chained setters: `CifarOptions().split(Split::test)`.
struct CifarOptions {
  /// The training or the test files.
  TORCH_ARG(Split, split) = Split::train;
  /// Normalise with the dataset's per-channel mean and standard deviation; off: pixels in [0, 1].
  TORCH_ARG(bool, normalize) = true;
  /// CIFAR-100 only: the 20 coarse super-class labels instead of the 100 fine labels (default).
  TORCH_ARG(bool, coarse_labels) = false;
};

/// @}
}  // namespace igrad::data

namespace igrad::detail {

/// Reads records of `label_bytes` label bytes followed by a 3×32×32 image from `files`;
/// `label_index` picks which label byte is the label, `classes` bounds it.
inline std::pair<torch::Tensor, torch::Tensor> read_cifar_records(
    const std::vector<std::filesystem::path>& files, int64_t label_bytes, int64_t label_index,
    int64_t classes) {
  constexpr int64_t image_bytes = 3 * 32 * 32;
  const int64_t record = label_bytes + image_bytes;
  std::vector<int64_t> counts;
  int64_t total = 0;
  for (const auto& file : files) {
    require<DataError>(std::filesystem::is_regular_file(file),
                                      "CIFAR file '{}' is missing; expected the binary version's "
                                      "file there",
                                      file.string());
    const auto bytes = static_cast<int64_t>(std::filesystem::file_size(file));
    require<DataError>(
        bytes > 0 && bytes % record == 0,
        "CIFAR file '{}' holds {} bytes; expected a non-zero multiple of the {}-byte record "
        "({} label byte{} + 3072 pixel bytes): the file is truncated or not the binary version",
        file.string(), bytes, record, label_bytes, label_bytes == 1 ? "" : "s");
    counts.push_back(bytes / record);
    total += bytes / record;
  }
  auto pixels = torch::empty({total, 3, 32, 32}, torch::kUInt8);
  auto labels = torch::empty({total}, torch::kLong);
  auto* pixel_out = pixels.data_ptr<std::uint8_t>();
  auto* label_out = labels.data_ptr<int64_t>();
  std::vector<char> buffer;
  int64_t row = 0;
  for (std::size_t f = 0; f < files.size(); ++f) {
    buffer.resize(static_cast<std::size_t>(counts[f] * record));
    std::ifstream in(files[f], std::ios::binary);
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    require<DataError>(static_cast<bool>(in),
                                      "CIFAR file '{}' could not be read completely ({} of {} "
                                      "bytes)",
                                      files[f].string(), in.gcount(), buffer.size());
    for (int64_t r = 0; r < counts[f]; ++r, ++row) {
      const char* rec = buffer.data() + r * record;
      const auto label = static_cast<int64_t>(static_cast<std::uint8_t>(rec[label_index]));
      require<DataError>(label < classes,
                                        "CIFAR file '{}', record {}: label {} is out of range; "
                                        "expected [0, {}) — the file is corrupt or of the other "
                                        "CIFAR version",
                                        files[f].string(), r, label, classes);
      label_out[row] = label;
      std::memcpy(pixel_out + row * image_bytes, rec + label_bytes, image_bytes);
    }
  }
  return {pixels, labels};
}

/// The directory itself, or its `subdirectory` when the user passed the archive's parent.
inline std::filesystem::path cifar_directory(const std::filesystem::path& directory,
                                             const char* subdirectory, const char* dataset,
                                             const char* expected_files) {
  require<DataError>(
      std::filesystem::is_directory(directory),
      "{} directory '{}' does not exist; expected the directory of the binary version ({}), "
      "which igrad does not download",
      dataset, directory.string(), expected_files);
  if (std::filesystem::is_directory(directory / subdirectory)) return directory / subdirectory;
  return directory;
}

}  // namespace igrad::detail

namespace igrad::data {

/// @addtogroup data_group
/// @{

/// @brief CIFAR-10: 32×32 colour images `[3, 32, 32]` of 10 classes, 50 000 for training
/// (`data_batch_1.bin` … `data_batch_5.bin`) and 10 000 for test (`test_batch.bin`).
///
/// Each record is 1 label byte and 3072 pixel bytes (channel-major). The directory may be the
/// extracted `cifar-10-batches-bin` or its parent. Normalised per channel with the training
/// set's mean (0.4914, 0.4822, 0.4465) and standard deviation (0.2470, 0.2435, 0.2616) — the
/// pixel standard deviation, not the (0.2023, 0.1994, 0.2010) often copied from old scripts.
/// Throws `DataError` naming the file when one is missing, truncated or holds a bad label.
class Cifar10 : public ImageDataset {
 public:
  /// Per-channel mean of the training set (pixels in [0, 1]).
  static constexpr std::array<double, 3> kMean = {0.4914, 0.4822, 0.4465};
  /// Per-channel standard deviation of the training set.
  static constexpr std::array<double, 3> kStd = {0.2470, 0.2435, 0.2616};
  /// Number of classes.
  static constexpr int64_t kClasses = 10;

  /// @brief The normalisation CIFAR-10 uses.
  static Normalization normalization_constants() {
    return {{kMean.begin(), kMean.end()}, {kStd.begin(), kStd.end()}};
  }

  /// @brief Loads the split of the binary CIFAR-10 files in `directory`.
  explicit Cifar10(const std::filesystem::path& directory, const CifarOptions& options = {})
      : Cifar10(load(directory, options), options) {}

 private:
  Cifar10(std::pair<torch::Tensor, torch::Tensor> loaded, const CifarOptions& options)
      : ImageDataset(std::move(loaded.first), std::move(loaded.second),
                     options.normalize() ? normalization_constants() : Normalization{},
                     kClasses) {}

  static std::pair<torch::Tensor, torch::Tensor> load(const std::filesystem::path& directory,
                                                      const CifarOptions& options) {
    const auto dir = detail::cifar_directory(
        directory, "cifar-10-batches-bin", "CIFAR-10",
        "data_batch_1.bin … data_batch_5.bin and test_batch.bin");
    std::vector<std::filesystem::path> files;
    if (options.split() == Split::train) {
      for (int i = 1; i <= 5; ++i)
        files.push_back(dir / igrad::detail::format("data_batch_{}.bin", i));
    } else {
      files.push_back(dir / "test_batch.bin");
    }
    return detail::read_cifar_records(files, 1, 0, kClasses);
  }
};

/// @brief CIFAR-100: 32×32 colour images `[3, 32, 32]`, 100 fine classes (default) or 20 coarse
/// ones, 50 000 for training (`train.bin`) and 10 000 for test (`test.bin`).
///
/// Each record is 1 coarse label byte, 1 fine label byte and 3072 pixel bytes. The directory may
/// be the extracted `cifar-100-binary` or its parent. Normalised per channel with the training
/// set's mean (0.5071, 0.4865, 0.4409) and standard deviation (0.2673, 0.2564, 0.2762).
class Cifar100 : public ImageDataset {
 public:
  /// Per-channel mean of the training set (pixels in [0, 1]).
  static constexpr std::array<double, 3> kMean = {0.5071, 0.4865, 0.4409};
  /// Per-channel standard deviation of the training set.
  static constexpr std::array<double, 3> kStd = {0.2673, 0.2564, 0.2762};
  /// Number of fine classes.
  static constexpr int64_t kFineClasses = 100;
  /// Number of coarse classes.
  static constexpr int64_t kCoarseClasses = 20;

  /// @brief The normalisation CIFAR-100 uses.
  static Normalization normalization_constants() {
    return {{kMean.begin(), kMean.end()}, {kStd.begin(), kStd.end()}};
  }

  /// @brief Loads the split of the binary CIFAR-100 files in `directory`.
  explicit Cifar100(const std::filesystem::path& directory, const CifarOptions& options = {})
      : Cifar100(load(directory, options), options) {}

 private:
  Cifar100(std::pair<torch::Tensor, torch::Tensor> loaded, const CifarOptions& options)
      : ImageDataset(std::move(loaded.first), std::move(loaded.second),
                     options.normalize() ? normalization_constants() : Normalization{},
                     options.coarse_labels() ? kCoarseClasses : kFineClasses) {}

  static std::pair<torch::Tensor, torch::Tensor> load(const std::filesystem::path& directory,
                                                      const CifarOptions& options) {
    const auto dir =
        detail::cifar_directory(directory, "cifar-100-binary", "CIFAR-100", "train.bin, test.bin");
    const auto file = dir / (options.split() == Split::train ? "train.bin" : "test.bin");
    return detail::read_cifar_records({file}, 2, options.coarse_labels() ? 0 : 1,
                                      options.coarse_labels() ? kCoarseClasses : kFineClasses);
  }
};

/// @}
}  // namespace igrad::data
