// ImageFolder (include/igrad/data/image_folder.hpp) on a folder the test writes: PNG and JPEG
// files, a corrupt file, a truncated PNG, an empty class; exact pixels, resizing, grey
// conversion, normalisation statistics, and loading through a data loader with workers.
#include "test_support.hpp"

#include <igrad/data/image_folder.hpp>
#include <igrad/exceptions.hpp>

#include <doctest/doctest.h>
#include <stb/stb_image_write.h>
#include <unistd.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using igrad::data::ImageFolder;
using igrad::data::ImageFolderOptions;

namespace {

/// Writes an RGB image `[H, W, 3]` uint8 as PNG or JPEG (quality 100).
void write_image(const fs::path& path, const torch::Tensor& rgb) {
  const auto t = rgb.contiguous();
  const int h = static_cast<int>(t.size(0)), w = static_cast<int>(t.size(1));
  const int ok = path.extension() == ".png"
                     ? stbi_write_png(path.c_str(), w, h, 3, t.data_ptr<uint8_t>(), w * 3)
                     : stbi_write_jpg(path.c_str(), w, h, 3, t.data_ptr<uint8_t>(), 100);
  REQUIRE(ok != 0);
}

torch::Tensor constant_rgb(int64_t h, int64_t w, int r, int g, int b) {
  return torch::tensor({r, g, b}, torch::kUInt8).view({1, 1, 3}).repeat({h, w, 1});
}

struct Folder {
  fs::path root;
  torch::Tensor gradient;  // the 2x3 PNG of class "a", its exact pixels
  // One folder per process: CTest runs these cases in parallel processes, which must not
  // remove and rewrite each other's files.
  Folder()
      : root(fs::path(IGRAD_TEST_BINARY_DIR) /
             ("study_image_folder_" + std::to_string(::getpid()))) {
    igrad_test::remove_tree(root);
    fs::create_directories(root / "a");
    fs::create_directories(root / "b");
    fs::create_directories(root / "c_empty");
    gradient = torch::arange(18, torch::kInt).mul(13).to(torch::kUInt8).view({2, 3, 3});
    write_image(root / "a" / "1.png", gradient);
    write_image(root / "a" / "2.jpg", constant_rgb(4, 4, 200, 100, 50));
    write_image(root / "b" / "3.png", constant_rgb(4, 4, 10, 20, 30));
    std::ofstream(root / "b" / "notes.png") << "this is not an image";
    std::ofstream(root / "b" / ".hidden") << "ignored";
  }
  ~Folder() { igrad_test::remove_tree(root); }
};

}  // namespace

TEST_CASE("ImageFolder names a broken file and an empty class, or skips them when asked") {
  Folder folder;
  try {
    ImageFolder dataset(folder.root, ImageFolderOptions().size(2, 3));
    FAIL("a folder with a non-image file was accepted");
  } catch (const igrad::DataError& e) {
    CHECK(std::string(e.what()).find("notes.png") != std::string::npos);
  }
  try {
    ImageFolder dataset(folder.root, ImageFolderOptions().size(2, 3).skip_broken(true));
    FAIL("an empty class was accepted");
  } catch (const igrad::DataError& e) {
    CHECK(std::string(e.what()).find("c_empty") != std::string::npos);
  }
  ImageFolder dataset(folder.root,
                      ImageFolderOptions().size(2, 3).skip_broken(true).allow_empty_classes(true));
  CHECK(dataset.class_names() == std::vector<std::string>{"a", "b", "c_empty"});
  CHECK(dataset.classes() == 3);
  REQUIRE(dataset.count() == 3);
  REQUIRE(dataset.skipped().size() == 1);
  CHECK(dataset.skipped().front().filename() == "notes.png");
  CHECK(dataset.samples()[0].label == 0);
  CHECK(dataset.samples()[1].label == 0);
  CHECK(dataset.samples()[2].label == 1);
  CHECK_THROWS_AS(ImageFolder(folder.root / "missing"), igrad::DataError);
  CHECK_THROWS_AS(ImageFolder(folder.root, ImageFolderOptions().channels(2)), igrad::InvalidArgument);
}

TEST_CASE("ImageFolder reads exact PNG pixels, resizes, converts to grey and reads JPEG") {
  Folder folder;
  fs::remove(folder.root / "b" / "notes.png");
  fs::remove(folder.root / "c_empty");
  ImageFolder exact(folder.root, ImageFolderOptions().size(2, 3));
  const auto first = exact.get(0);
  // [H, W, C] bytes -> [C, H, W] floats in [0, 1].
  CHECK(torch::allclose(first.data, folder.gradient.permute({2, 0, 1}).to(torch::kFloat) / 255.0));
  CHECK(first.target.item<int64_t>() == 0);
  CHECK(exact.get(2).target.item<int64_t>() == 1);
  // A constant 4x4 image resized to 2x3 stays constant.
  const auto resized = exact.get(2).data;
  CHECK(resized.sizes() == torch::IntArrayRef({3, 2, 3}));
  CHECK(torch::allclose(resized, torch::tensor({10.0f, 20.0f, 30.0f}).view({3, 1, 1}).expand({3, 2, 3}) / 255.0,
                        0, 1.0 / 255));
  // JPEG is lossy: a constant colour comes back within a few levels.
  const auto jpeg = exact.get(1).data;
  CHECK((jpeg - torch::tensor({200.0f, 100.0f, 50.0f}).view({3, 1, 1}) / 255.0).abs().max().item<double>() <
        4.0 / 255);
  // Grey: stb's luma (77 r + 150 g + 29 b) >> 8 of (10, 20, 30) is 4640 >> 8 = 18.
  ImageFolder grey(folder.root, ImageFolderOptions().size(4, 4).channels(1));
  const auto g = grey.get(2).data;
  CHECK(g.size(0) == 1);
  CHECK(g.mul(255).round().eq((10 * 77 + 20 * 150 + 30 * 29) >> 8).all().item<bool>());

  // A PNG cut short is refused naming the file: when read, or already by the header check
  // (stb 2022, Debian 12, reads only the header there; stb 2024, Debian 13, notices the cut).
  const auto bytes = fs::file_size(folder.root / "a" / "1.png");
  fs::resize_file(folder.root / "a" / "1.png", bytes / 2);
  try {
    ImageFolder truncated(folder.root, ImageFolderOptions().size(2, 3));
    truncated.get(0);
    FAIL("a truncated PNG was read");
  } catch (const igrad::DataError& e) {
    CHECK(std::string(e.what()).find("1.png") != std::string::npos);
  }
  ImageFolder skipping(folder.root, ImageFolderOptions().size(2, 3).skip_broken(true));
  CHECK(skipping.count() == 2);
}

TEST_CASE("ImageFolder normalisation statistics and loading through a data loader with workers") {
  Folder folder;
  fs::remove(folder.root / "b" / "notes.png");
  fs::remove(folder.root / "c_empty");
  fs::remove(folder.root / "a" / "2.jpg");
  write_image(folder.root / "a" / "2.png", constant_rgb(2, 3, 200, 100, 50));
  ImageFolder dataset(folder.root, ImageFolderOptions().size(2, 3));
  const auto stats = igrad::data::compute_normalization(dataset);
  // Independent: the three images' bytes, all pixels of a channel pooled.
  const auto all = torch::stack({folder.gradient, constant_rgb(2, 3, 200, 100, 50),
                                 constant_rgb(2, 3, 10, 20, 30)})
                       .to(torch::kDouble)
                       .div(255.0)
                       .permute({3, 0, 1, 2})
                       .reshape({3, -1});
  for (int c = 0; c < 3; ++c) {
    CAPTURE(c);
    CHECK(stats.mean[c] == doctest::Approx(all[c].mean().item<double>()).epsilon(1e-12));
    CHECK(stats.std[c] == doctest::Approx(all[c].std(/*unbiased=*/false).item<double>()).epsilon(1e-12));
  }
  ImageFolder normalised(folder.root, ImageFolderOptions().size(2, 3).normalization(stats));
  CHECK(torch::allclose(normalised.get(1).data, stats.normalize(dataset.get(1).data)));

  auto loader = torch::data::make_data_loader<torch::data::samplers::SequentialSampler>(
      ImageFolder(dataset).map(torch::data::transforms::Stack<>()),
      torch::data::DataLoaderOptions().batch_size(2).workers(2));
  std::multiset<int64_t> labels;
  int64_t seen = 0;
  for (auto& batch : *loader) {
    CHECK(batch.data.size(1) == 3);
    seen += batch.data.size(0);
    for (int64_t i = 0; i < batch.target.size(0); ++i) labels.insert(batch.target[i].item<int64_t>());
  }
  CHECK(seen == 3);
  CHECK(labels == std::multiset<int64_t>{0, 0, 1});
  const auto in_memory = dataset.load_all();
  CHECK(in_memory.count() == 3);
  CHECK(torch::allclose(in_memory.images(0, 1)[0], dataset.get(0).data));
}
