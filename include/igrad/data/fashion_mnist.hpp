#pragma once
/// @file data/fashion_mnist.hpp
/// @brief Fashion-MNIST (Xiao et al. 2017) from the gzipped IDX files of Debian's package
/// `dataset-fashion-mnist`.

#include <igrad/data/idx.hpp>
#include <igrad/data/image_dataset.hpp>
#include <igrad/exceptions.hpp>

#include <torch/arg.h>
#include <torch/torch.h>

#include <array>
#include <filesystem>
#include <string>

namespace igrad::data {

/// @addtogroup data_group
/// @{

/// @brief Where and how to load Fashion-MNIST, with chained setters:
/// `FashionMnistOptions().split(Split::test).normalize(false)`.
struct FashionMnistOptions {
  /// Directory holding `train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`,
  /// `t10k-images-idx3-ubyte.gz` and `t10k-labels-idx1-ubyte.gz` (or the same names without
  /// `.gz`). The default is where `apt-get install dataset-fashion-mnist` puts them.
  TORCH_ARG(std::filesystem::path, directory) = "/usr/share/datasets/fashion-mnist";
  /// The 60 000 training or the 10 000 test images.
  TORCH_ARG(Split, split) = Split::train;
  /// Normalise with `FashionMnist::kMean`, `FashionMnist::kStd` (SPEC §6); off: pixels in [0, 1].
  TORCH_ARG(bool, normalize) = true;
};

/// @brief Fashion-MNIST: 28×28 grey images `[1, 28, 28]` of 10 clothing classes, 6 000 per class
/// in the training set and 1 000 per class in the test set.
///
/// The whole split is read once into memory (about 0.3 s for the 60 000 training images).
/// Throws `DataError` when the directory is missing (naming the Debian package), or a file is
/// missing, truncated or corrupt (naming the file).
/// @snippet doc_snippets.cpp fashion_mnist
class FashionMnist : public ImageDataset {
 public:
  /// Mean pixel value of the training set (pixels in [0, 1]), used for normalisation.
  static constexpr double kMean = 0.2860;
  /// Standard deviation of the training set's pixels, used for normalisation.
  static constexpr double kStd = 0.3530;
  /// Number of classes.
  static constexpr int64_t kClasses = 10;
  /// The class names, in label order.
  static constexpr std::array<const char*, 10> kClassNames = {
      "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
      "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

  /// @brief The normalisation Fashion-MNIST uses (`kMean`, `kStd`, one channel).
  static Normalization normalization_constants() { return {{kMean}, {kStd}}; }

  /// @brief Loads the split `options` names.
  explicit FashionMnist(const FashionMnistOptions& options = {})
      : FashionMnist(load(options), options) {}

  /// @brief The options it was loaded with.
  const FashionMnistOptions& options() const { return options_; }

 private:
  /// The bytes read from the IDX files.
  struct Loaded {
    torch::Tensor pixels, labels;
  };

  FashionMnist(Loaded loaded, const FashionMnistOptions& options)
      : ImageDataset(std::move(loaded.pixels), std::move(loaded.labels),
                     options.normalize() ? normalization_constants() : Normalization{}, kClasses),
        options_(options) {}

  static std::filesystem::path locate(const std::filesystem::path& directory,
                                      const std::string& name) {
    const auto gz = directory / (name + ".gz");
    if (std::filesystem::exists(gz)) return gz;
    const auto plain = directory / name;
    if (std::filesystem::exists(plain)) return plain;
    throw DataError(
        igrad::detail::format("Fashion-MNIST file '{}' is missing; expected '{}' (or '{}') in "
                              "the directory given, as installed by Debian's package "
                              "dataset-fashion-mnist",
                              gz.string(), gz.filename().string(), name));
  }

  static Loaded load(const FashionMnistOptions& options) {
    const auto& directory = options.directory();
    detail::require<DataError>(
        std::filesystem::is_directory(directory),
        "Fashion-MNIST directory '{}' does not exist; install Debian's package "
        "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or set "
        "FashionMnistOptions::directory to a directory holding train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz",
        directory.string());
    const std::string prefix = options.split() == Split::train ? "train" : "t10k";
    const auto image_path = locate(directory, prefix + "-images-idx3-ubyte");
    const auto label_path = locate(directory, prefix + "-labels-idx1-ubyte");
    auto images = read_idx_file(image_path, 3);
    auto labels = read_idx_file(label_path, 1);
    detail::require<DataError>(images.size(1) == 28 && images.size(2) == 28,
                               "Fashion-MNIST file '{}' holds images of {}×{} pixels; expected "
                               "28×28",
                               image_path.string(), images.size(1), images.size(2));
    detail::require<DataError>(labels.size(0) == images.size(0),
                               "Fashion-MNIST file '{}' holds {} labels for the {} images of "
                               "'{}'; expected one label per image",
                               label_path.string(), labels.size(0), images.size(0),
                               image_path.string());
    if (labels.numel() > 0) {
      const auto high = labels.max().item<int64_t>();
      detail::require<DataError>(high < kClasses,
                                 "Fashion-MNIST file '{}' holds label {}; expected labels in "
                                 "[0, 10)",
                                 label_path.string(), high);
    }
    return {images.unsqueeze(1), labels};
  }

  FashionMnistOptions options_;
};

/// @}
}  // namespace igrad::data
