#pragma once
/// @file data/image_folder.hpp
/// @brief `ImageFolder`: a classification dataset of the user's own images, one sub-folder per
/// class, PNG and JPEG (and the other formats stb_image reads), resized to a given size and read
/// lazily — one file per `get` — so that LibTorch's data loader workers decode in parallel.
/// @snippet doc_snippets.cpp image_folder

#include <igrad/data/image_dataset.hpp>
#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>

#include <torch/torch.h>

// The implementations live in Debian's compiled libstb that igrad links (Stb::Stb).
#include <stb/stb_image.h>
#include <stb/stb_image_resize.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace igrad::data {

/// @addtogroup data_group
/// @{

/// @brief Options of `ImageFolder`, with chained setters.
struct ImageFolderOptions {
  /// Height every image is resized to.
  TORCH_ARG(int64_t, height) = 32;
  /// Width every image is resized to.
  TORCH_ARG(int64_t, width) = 32;
  /// Channels of the samples: 1 (grey) or 3 (RGB); files are converted as they are read.
  TORCH_ARG(int64_t, channels) = 3;
  /// The per-channel normalisation applied by `get` (identity when none); see `compute_normalization`.
  TORCH_ARG(Normalization, normalization) = {};
  /// Files that are not readable images are dropped with a warning on stderr (checked when the
  /// dataset is built, by decoding every file once) instead of raising `DataError`.
  TORCH_ARG(bool, skip_broken) = false;
  /// Class folders without any image are kept (their class index exists, no sample has it)
  /// instead of raising `DataError`.
  TORCH_ARG(bool, allow_empty_classes) = false;

 public:  // TORCH_ARG leaves the section private
  /// @brief Sets height and width at once.
  ImageFolderOptions& size(int64_t h, int64_t w) {
    height(h);
    width(w);
    return *this;
  }
};

/// @brief Reads one image file as `uint8 [C, H, W]` resized to `height × width` with `channels`
/// channels; throws `DataError` naming the file when it cannot be read or is not an image.
inline torch::Tensor read_image(const std::filesystem::path& path, int64_t height, int64_t width,
                                int64_t channels) {
  detail::require(channels == 1 || channels == 3,
                  "read_image: {} channels; expected 1 (grey) or 3 (RGB)", channels);
  detail::require(height >= 1 && width >= 1, "read_image: size {}x{}; expected at least 1x1",
                  height, width);
  int w = 0, h = 0, in_file = 0;
  std::unique_ptr<stbi_uc, void (*)(void*)> pixels(
      stbi_load(path.c_str(), &w, &h, &in_file, static_cast<int>(channels)), stbi_image_free);
  if (!pixels) {
    const char* reason = stbi_failure_reason();
    throw DataError(
        igrad::detail::format("cannot read the image '{}': {}; expected a PNG or JPEG file",
                              path.string(), reason ? reason : "unknown error"));
  }
  auto out = torch::empty({height, width, channels}, torch::kUInt8);
  if (h == height && w == width) {
    std::copy_n(pixels.get(), height * width * channels, out.data_ptr<uint8_t>());
  } else if (stbir_resize_uint8(pixels.get(), w, h, 0, out.data_ptr<uint8_t>(),
                                static_cast<int>(width), static_cast<int>(height), 0,
                                static_cast<int>(channels)) == 0) {
    throw DataError(igrad::detail::format("cannot resize the image '{}' ({}x{}) to {}x{}",
                                          path.string(), w, h, width, height));
  }
  return out.permute({2, 0, 1}).contiguous();
}

/// @brief A classification dataset read from `root/<class>/<image>`: classes are the
/// sub-folders in name order (index 0, 1, …), samples the files in each, in name order; hidden
/// entries (names starting with '.') are ignored.
///
/// `get(i)` reads file i and returns `{image [C, H, W] float, label (int64)}` with pixels in
/// [0, 1], normalised when the options give a normalisation. A file that is not a readable image
/// raises `DataError` naming it — when the dataset is built (its header is checked) or when it
/// is read — unless `skip_broken` drops it with a warning.
class ImageFolder : public torch::data::datasets::Dataset<ImageFolder> {
 public:
  /// @brief One sample: its file and class index.
  struct Sample {
    std::filesystem::path path;  ///< the image file
    int64_t label = 0;           ///< the class index
  };

  /// @brief Lists `root`'s classes and images; see the class documentation.
  explicit ImageFolder(const std::filesystem::path& root, ImageFolderOptions options = {})
      : root_(root), options_(std::move(options)) {
    namespace fs = std::filesystem;
    detail::require(options_.channels() == 1 || options_.channels() == 3,
                    "ImageFolder: {} channels; expected 1 (grey) or 3 (RGB)", options_.channels());
    detail::require(options_.height() >= 1 && options_.width() >= 1,
                    "ImageFolder: size {}x{}; expected at least 1x1", options_.height(),
                    options_.width());
    const auto& norm = options_.normalization();
    detail::require(norm.is_identity() ||
                        (static_cast<int64_t>(norm.mean.size()) == options_.channels() &&
                         norm.std.size() == norm.mean.size()),
                    "ImageFolder: the normalisation has {} means and {} deviations for {} "
                    "channels; expected one of each per channel",
                    norm.mean.size(), norm.std.size(), options_.channels());
    detail::require<DataError>(fs::is_directory(root), "ImageFolder: '{}' is not a folder; "
                               "expected a folder with one sub-folder per class", root.string());
    std::vector<fs::path> class_dirs;
    for (const auto& entry : fs::directory_iterator(root))
      if (entry.is_directory() && entry.path().filename().string().front() != '.')
        class_dirs.push_back(entry.path());
    std::sort(class_dirs.begin(), class_dirs.end());
    detail::require<DataError>(!class_dirs.empty(), "ImageFolder: '{}' has no sub-folders; "
                               "expected one sub-folder per class", root.string());
    for (const auto& dir : class_dirs) {
      const auto label = static_cast<int64_t>(classes_.size());
      classes_.push_back(dir.filename().string());
      std::vector<fs::path> files;
      for (const auto& entry : fs::directory_iterator(dir))
        if (entry.is_regular_file() && entry.path().filename().string().front() != '.')
          files.push_back(entry.path());
      std::sort(files.begin(), files.end());
      int64_t kept = 0;
      for (const auto& file : files) {
        if (const auto problem = check(file)) {
          if (!options_.skip_broken()) throw DataError(*problem);
          std::fputs(igrad::detail::format("ImageFolder: skipping {}\n", *problem).c_str(), stderr);
          skipped_.push_back(file);
          continue;
        }
        samples_.push_back({file, label});
        ++kept;
      }
      detail::require<DataError>(kept > 0 || options_.allow_empty_classes(),
                                 "ImageFolder: the class folder '{}' holds no image; expected at "
                                 "least one per class (or allow_empty_classes)", dir.string());
    }
  }

  /// @brief Reads sample `index`: `{image [C, H, W] float in [0, 1] (normalised), label}`.
  torch::data::Example<> get(size_t index) override {
    detail::require(index < samples_.size(), "sample index {} is out of range; expected [0, {})",
                    index, samples_.size());
    const auto& s = samples_[index];
    auto image = read_image(s.path, options_.height(), options_.width(), options_.channels())
                     .to(torch::kFloat)
                     .div_(255.0);
    return {options_.normalization().normalize(image), torch::tensor(s.label, torch::kLong)};
  }

  /// @brief Number of samples.
  torch::optional<size_t> size() const override { return samples_.size(); }
  /// @brief Number of samples, as a signed count.
  int64_t count() const { return static_cast<int64_t>(samples_.size()); }
  /// @brief The class names (sub-folder names) in index order.
  const std::vector<std::string>& class_names() const { return classes_; }
  /// @brief Number of classes.
  int64_t classes() const { return static_cast<int64_t>(classes_.size()); }
  /// @brief Every sample's file and class.
  const std::vector<Sample>& samples() const { return samples_; }
  /// @brief Files dropped by `skip_broken`.
  const std::vector<std::filesystem::path>& skipped() const { return skipped_; }
  /// @brief The options the dataset was built with.
  const ImageFolderOptions& options() const { return options_; }
  /// @brief The normalisation `get` applies.
  const Normalization& normalization() const { return options_.normalization(); }

  /// @brief Reads every sample into memory as an `ImageDataset` (bytes; the same normalisation).
  ImageDataset load_all() const {
    std::vector<torch::Tensor> images;
    std::vector<int64_t> labels;
    for (const auto& s : samples_) {
      images.push_back(read_image(s.path, options_.height(), options_.width(), options_.channels()));
      labels.push_back(s.label);
    }
    auto pixels = images.empty()
                      ? torch::empty({0, options_.channels(), options_.height(), options_.width()},
                                     torch::kUInt8)
                      : torch::stack(images);
    return ImageDataset(pixels, torch::tensor(labels, torch::kLong), options_.normalization(),
                        classes());
  }

 private:
  /// Why `file` is not a usable image, or nothing. Without skip_broken only the header is read
  /// (cheap); with it the whole file is decoded, so that no broken file is left for `get`.
  std::optional<std::string> check(const std::filesystem::path& file) const {
    if (options_.skip_broken()) {
      try {
        read_image(file, options_.height(), options_.width(), options_.channels());
      } catch (const DataError& e) {
        return std::string(e.what());
      }
      return std::nullopt;
    }
    int w = 0, h = 0, c = 0;
    if (stbi_info(file.c_str(), &w, &h, &c) == 0) {
      const char* reason = stbi_failure_reason();
      return igrad::detail::format("'{}' is not a readable image ({}); expected a PNG or JPEG file",
                                   file.string(), reason ? reason : "unknown format");
    }
    return std::nullopt;
  }

  std::filesystem::path root_;
  ImageFolderOptions options_;
  std::vector<std::string> classes_;
  std::vector<Sample> samples_;
  std::vector<std::filesystem::path> skipped_;
};

/// @brief Per-channel mean and standard deviation of a dataset's pixels in [0, 1] (read without
/// its normalisation), over its first `max_images` samples (0: all), for
/// `ImageFolderOptions::normalization`. Sums are taken in double.
inline Normalization compute_normalization(const ImageFolder& dataset, int64_t max_images = 0) {
  const int64_t n = max_images > 0 ? std::min(max_images, dataset.count()) : dataset.count();
  detail::require(n > 0, "compute_normalization of an empty dataset; expected at least one image");
  const auto& o = dataset.options();
  auto sum = torch::zeros({o.channels()}, torch::kDouble);
  auto squares = torch::zeros({o.channels()}, torch::kDouble);
  for (int64_t i = 0; i < n; ++i) {
    const auto x = read_image(dataset.samples()[static_cast<size_t>(i)].path, o.height(),
                              o.width(), o.channels())
                       .to(torch::kDouble)
                       .div_(255.0)
                       .flatten(1);
    sum += x.sum(1);
    squares += x.pow(2).sum(1);
  }
  const double count = static_cast<double>(n * o.height() * o.width());
  const auto mean = sum / count;
  // Population variance; a constant channel gets std 1 so that normalising never divides by 0.
  auto std = (squares / count - mean.pow(2)).clamp_min(0).sqrt();
  std = torch::where(std > 0, std, torch::ones_like(std));
  Normalization result;
  for (int64_t c = 0; c < o.channels(); ++c) {
    result.mean.push_back(mean[c].item<double>());
    result.std.push_back(std[c].item<double>());
  }
  return result;
}

/// @}
}  // namespace igrad::data
