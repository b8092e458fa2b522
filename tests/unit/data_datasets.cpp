// Datasets (SPEC §6): Fashion-MNIST on the real Debian files, IDX/gzip and CIFAR readers on files
// the tests write (intact, truncated, corrupt), and the cluttered localisation set.
#include "test_support.hpp"

#include <igrad/data.hpp>

#include <doctest/doctest.h>
#include <torch/torch.h>

#include <zlib.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using igrad::data::Split;

namespace {

const fs::path kFashionDir = "/usr/share/datasets/fashion-mnist";

/// A fresh, empty directory under the build tree.
fs::path scratch(const std::string& name) {
  const fs::path dir = fs::path(IGRAD_TEST_BINARY_DIR) / "data_scratch" / name;
  igrad_test::remove_tree(dir);
  fs::create_directories(dir);
  return dir;
}

void write_bytes(const fs::path& path, const std::vector<std::uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

std::vector<std::uint8_t> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_gzip(const fs::path& path, const std::vector<std::uint8_t>& bytes) {
  gzFile file = gzopen(path.string().c_str(), "wb");
  REQUIRE(file != nullptr);
  if (!bytes.empty()) gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(file);
}

void put_be32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(v >> shift));
}

/// IDX bytes of `n` 28×28 images whose pixel (r, c) of image i is (i * 31 + r * 28 + c) % 256.
std::vector<std::uint8_t> idx_images(std::uint32_t n, std::uint32_t announced) {
  std::vector<std::uint8_t> out;
  put_be32(out, 0x00000803);
  put_be32(out, announced);
  put_be32(out, 28);
  put_be32(out, 28);
  for (std::uint32_t i = 0; i < n; ++i)
    for (std::uint32_t p = 0; p < 28 * 28; ++p) out.push_back(static_cast<std::uint8_t>((i * 31 + p) % 256));
  return out;
}

std::vector<std::uint8_t> idx_labels(std::vector<std::uint8_t> labels) {
  std::vector<std::uint8_t> out;
  put_be32(out, 0x00000801);
  put_be32(out, static_cast<std::uint32_t>(labels.size()));
  out.insert(out.end(), labels.begin(), labels.end());
  return out;
}

/// Writes a valid 3-image t10k split into `dir`.
void write_small_fashion(const fs::path& dir) {
  write_gzip(dir / "t10k-images-idx3-ubyte.gz", idx_images(3, 3));
  write_gzip(dir / "t10k-labels-idx1-ubyte.gz", idx_labels({4, 0, 9}));
}

/// The message of the DataError that loading the t10k split of `dir` throws ("" if none).
std::string fashion_error(const fs::path& dir) {
  try {
    igrad::data::FashionMnist set(
        igrad::data::FashionMnistOptions().directory(dir).split(Split::test));
  } catch (const igrad::DataError& e) {
    return e.what();
  }
  return "";
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("fashion-mnist: the Debian files give 60000/10000 balanced, normalised samples") {
  const auto start = std::chrono::steady_clock::now();
  igrad::data::FashionMnist train;
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  MESSAGE("60000 training images loaded in " << seconds << " s");
  CHECK(seconds < 5.0);
  igrad::data::FashionMnist test(igrad::data::FashionMnistOptions().split(Split::test));
  REQUIRE(train.size().value() == 60000);
  REQUIRE(test.size().value() == 10000);
  CHECK(train.pixels().sizes() == torch::IntArrayRef({60000, 1, 28, 28}));
  CHECK(torch::equal(torch::bincount(train.labels()), torch::full({10}, 6000, torch::kLong)));
  CHECK(torch::equal(torch::bincount(test.labels()), torch::full({10}, 1000, torch::kLong)));

  // The published constants are the training set's pixel statistics (independent check).
  const auto raw = train.pixels().to(torch::kDouble) / 255.0;
  CHECK(raw.mean().item<double>() == doctest::Approx(igrad::data::FashionMnist::kMean).epsilon(1e-3));
  CHECK(raw.std().item<double>() == doctest::Approx(igrad::data::FashionMnist::kStd).epsilon(1e-3));

  const auto images = test.images();
  CHECK(images.sizes() == torch::IntArrayRef({10000, 1, 28, 28}));
  CHECK(images.min().item<double>() == doctest::Approx((0 - 0.2860) / 0.3530).epsilon(1e-6));
  CHECK(images.max().item<double>() == doctest::Approx((1 - 0.2860) / 0.3530).epsilon(1e-6));

  // Checksums from Python, independently of igrad:
  //   python3 -c "import gzip; d=gzip.open('t10k-images-idx3-ubyte.gz').read()[16:];
  //               print(sum(d[:784]), sum(d[784*9999:]))"          -> 33456 24390
  //   (labels: gzip.open('t10k-labels-idx1-ubyte.gz').read()[8:] -> first 9, last 5;
  //    train image 0: sum(gzip.open('train-images-idx3-ubyte.gz').read()[16:800]) -> 76247)
  CHECK(test.pixels()[0].to(torch::kLong).sum().item<int64_t>() == 33456);
  CHECK(test.pixels()[9999].to(torch::kLong).sum().item<int64_t>() == 24390);
  CHECK(train.pixels()[0].to(torch::kLong).sum().item<int64_t>() == 76247);
  CHECK(test.labels()[0].item<int64_t>() == 9);
  CHECK(test.labels()[9999].item<int64_t>() == 5);

  // get() agrees with the batched accessor and with the raw bytes.
  const auto example = test.get(0);
  CHECK(example.data.sizes() == torch::IntArrayRef({1, 28, 28}));
  CHECK(example.target.item<int64_t>() == 9);
  CHECK(max_abs_diff(example.data, images[0]) == 0.0);
  CHECK(max_abs_diff(test.normalization().denormalize(example.data) * 255.0,
                                 test.pixels()[0].to(torch::kFloat)) < 1e-3);
}

TEST_CASE("fashion-mnist: unnormalised pixels, data loader, validation split") {
  igrad::data::FashionMnist test(
      igrad::data::FashionMnistOptions().split(Split::test).normalize(false));
  CHECK(test.normalization().is_identity());
  CHECK(test.images(0, 100).min().item<double>() == 0.0);
  CHECK(test.images(0, 100).max().item<double>() == 1.0);

  auto loader = torch::data::make_data_loader(
      test.map(torch::data::transforms::Stack<>()),
      torch::data::DataLoaderOptions().batch_size(256));
  int64_t seen = 0;
  for (auto& batch : *loader) {
    CHECK(batch.data.dim() == 4);
    CHECK(batch.data.size(1) == 1);
    seen += batch.data.size(0);
  }
  CHECK(seen == 10000);

  const auto split = igrad::data::train_validation_split(test, 1000);
  CHECK(split.train.count() == 9000);
  CHECK(split.validation.count() == 1000);
  CHECK(torch::equal(split.validation.pixels(), test.pixels().slice(0, 9000)));
  CHECK(torch::equal(split.validation.labels(), test.labels().slice(0, 9000)));
  auto train_part = split.train;
  CHECK(torch::equal(train_part.get(8999).data, test.get(8999).data));
  CHECK_THROWS_AS(igrad::data::train_validation_split(test, 10000), igrad::InvalidArgument);
  CHECK_THROWS_AS(test.get(10000), igrad::InvalidArgument);
}

TEST_CASE("fashion-mnist: missing, truncated and corrupt files raise DataError naming them") {
  SUBCASE("missing directory names the Debian package") {
    const auto message = fashion_error("/nonexistent/igrad-fashion");
    CHECK(contains(message, "dataset-fashion-mnist"));
    CHECK(contains(message, "/nonexistent/igrad-fashion"));
  }
  SUBCASE("an intact small file loads, a missing one is named") {
    const auto dir = scratch("fashion_ok");
    write_small_fashion(dir);
    igrad::data::FashionMnist set(
        igrad::data::FashionMnistOptions().directory(dir).split(Split::test).normalize(false));
    REQUIRE(set.count() == 3);
    CHECK(torch::equal(set.labels(), torch::tensor({4, 0, 9}, torch::kLong)));
    CHECK(set.pixels()[2][0][1][3].item<int>() == (2 * 31 + 28 + 3) % 256);
    fs::remove(dir / "t10k-labels-idx1-ubyte.gz");
    CHECK(contains(fashion_error(dir), "t10k-labels-idx1-ubyte.gz"));
  }
  SUBCASE("wrong magic number") {
    const auto dir = scratch("fashion_magic");
    write_small_fashion(dir);
    auto bytes = idx_images(3, 3);
    bytes[3] = 0x01;
    write_gzip(dir / "t10k-images-idx3-ubyte.gz", bytes);
    const auto message = fashion_error(dir);
    CHECK(contains(message, "t10k-images-idx3-ubyte.gz"));
    CHECK(contains(message, "magic"));
  }
  SUBCASE("payload shorter than the header announces") {
    const auto dir = scratch("fashion_short");
    write_small_fashion(dir);
    write_gzip(dir / "t10k-images-idx3-ubyte.gz", idx_images(2, 3));
    const auto message = fashion_error(dir);
    CHECK(contains(message, "t10k-images-idx3-ubyte.gz"));
    CHECK(contains(message, "truncated"));
  }
  SUBCASE("payload longer than the header announces") {
    const auto dir = scratch("fashion_long");
    write_small_fashion(dir);
    write_gzip(dir / "t10k-images-idx3-ubyte.gz", idx_images(4, 3));
    CHECK(contains(fashion_error(dir), "too long"));
  }
  SUBCASE("labels and images disagree in number") {
    const auto dir = scratch("fashion_count");
    write_small_fashion(dir);
    write_gzip(dir / "t10k-labels-idx1-ubyte.gz", idx_labels({1, 2}));
    CHECK(contains(fashion_error(dir), "t10k-labels-idx1-ubyte.gz"));
  }
  SUBCASE("a truncated gzip stream") {
    const auto dir = scratch("fashion_gz_cut");
    write_small_fashion(dir);
    auto compressed = read_bytes(dir / "t10k-images-idx3-ubyte.gz");
    compressed.resize(compressed.size() / 2);
    write_bytes(dir / "t10k-images-idx3-ubyte.gz", compressed);
    const auto message = fashion_error(dir);
    CHECK(contains(message, "t10k-images-idx3-ubyte.gz"));
    CHECK(contains(message, "gzip"));
  }
  SUBCASE("a corrupt gzip stream") {
    const auto dir = scratch("fashion_gz_bad");
    write_small_fashion(dir);
    auto compressed = read_bytes(dir / "t10k-images-idx3-ubyte.gz");
    for (std::size_t i = 12; i < compressed.size() - 8; ++i) compressed[i] ^= 0x5a;
    write_bytes(dir / "t10k-images-idx3-ubyte.gz", compressed);
    const auto message = fashion_error(dir);
    CHECK(contains(message, "t10k-images-idx3-ubyte.gz"));
    CHECK(contains(message, "gzip"));
  }
  SUBCASE("an empty file") {
    const auto dir = scratch("fashion_empty");
    write_small_fashion(dir);
    write_bytes(dir / "t10k-images-idx3-ubyte.gz", {});
    CHECK(contains(fashion_error(dir), "t10k-images-idx3-ubyte.gz"));
  }
}

namespace {

/// A CIFAR record: label bytes, then pixel p = (seed + p) % 256.
void append_record(std::vector<std::uint8_t>& out, std::vector<std::uint8_t> labels, int seed) {
  out.insert(out.end(), labels.begin(), labels.end());
  for (int p = 0; p < 3072; ++p) out.push_back(static_cast<std::uint8_t>((seed + p) % 256));
}

std::string cifar10_error(const fs::path& dir) {
  try {
    igrad::data::Cifar10 set(dir);
  } catch (const igrad::DataError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("cifar-10: the binary format, normalisation, and broken files") {
  const auto root = scratch("cifar10");
  const auto dir = root / "cifar-10-batches-bin";
  fs::create_directories(dir);
  for (int b = 1; b <= 5; ++b) {
    std::vector<std::uint8_t> bytes;
    append_record(bytes, {static_cast<std::uint8_t>(b)}, b * 10);
    append_record(bytes, {static_cast<std::uint8_t>(9 - b)}, b * 10 + 1);
    write_bytes(dir / ("data_batch_" + std::to_string(b) + ".bin"), bytes);
  }
  std::vector<std::uint8_t> test_bytes;
  append_record(test_bytes, {7}, 3);
  write_bytes(dir / "test_batch.bin", test_bytes);

  // The parent directory is accepted too.
  igrad::data::Cifar10 train(root, igrad::data::CifarOptions().normalize(false));
  REQUIRE(train.count() == 10);
  CHECK(torch::equal(train.labels(), torch::tensor({1, 8, 2, 7, 3, 6, 4, 5, 5, 4}, torch::kLong)));
  // Record 2 is data_batch_2's first (seed 20): channel-major, pixel (c, y, x) = 20 + c·1024 + y·32 + x.
  const auto image = train.get(2).data;
  CHECK(image.sizes() == torch::IntArrayRef({3, 32, 32}));
  CHECK(image[1][2][3].item<float>() == doctest::Approx(((20 + 1024 + 2 * 32 + 3) % 256) / 255.0));

  igrad::data::Cifar10 test(dir, igrad::data::CifarOptions().split(Split::test));
  REQUIRE(test.count() == 1);
  CHECK(test.labels()[0].item<int64_t>() == 7);
  const double pixel = ((3 + 2048 + 5) % 256) / 255.0;
  CHECK(test.get(0).data[2][0][5].item<float>() ==
        doctest::Approx((pixel - 0.4465) / 0.2616).epsilon(1e-5));

  SUBCASE("truncated file") {
    auto bytes = read_bytes(dir / "data_batch_3.bin");
    bytes.resize(bytes.size() - 100);
    write_bytes(dir / "data_batch_3.bin", bytes);
    const auto message = cifar10_error(dir);
    CHECK(contains(message, "data_batch_3.bin"));
    CHECK(contains(message, "truncated"));
  }
  SUBCASE("label out of range") {
    std::vector<std::uint8_t> bytes;
    append_record(bytes, {12}, 0);
    write_bytes(dir / "data_batch_4.bin", bytes);
    const auto message = cifar10_error(dir);
    CHECK(contains(message, "data_batch_4.bin"));
    CHECK(contains(message, "label 12"));
  }
  SUBCASE("missing file and missing directory") {
    fs::remove(dir / "data_batch_5.bin");
    CHECK(contains(cifar10_error(dir), "data_batch_5.bin"));
    CHECK(contains(cifar10_error("/nonexistent/cifar"), "data_batch_1.bin"));
  }
}

TEST_CASE("cifar-100: fine labels by default, coarse on request") {
  const auto dir = scratch("cifar100");
  std::vector<std::uint8_t> bytes;
  append_record(bytes, {3, 71}, 0);
  append_record(bytes, {19, 99}, 1);
  append_record(bytes, {0, 5}, 2);
  write_bytes(dir / "train.bin", bytes);
  igrad::data::Cifar100 fine(dir);
  CHECK(fine.classes() == 100);
  CHECK(torch::equal(fine.labels(), torch::tensor({71, 99, 5}, torch::kLong)));
  igrad::data::Cifar100 coarse(dir, igrad::data::CifarOptions().coarse_labels(true));
  CHECK(coarse.classes() == 20);
  CHECK(torch::equal(coarse.labels(), torch::tensor({3, 19, 0}, torch::kLong)));
  CHECK(fine.get(1).data[0][0][0].item<float>() ==
        doctest::Approx((1 / 255.0 - 0.5071) / 0.2673).epsilon(1e-5));
  // A CIFAR-10 file read as CIFAR-100 has the wrong record size.
  bytes.resize(3 * 3073);
  write_bytes(dir / "train.bin", bytes);
  try {
    igrad::data::Cifar100 broken(dir);
    FAIL("expected a DataError");
  } catch (const igrad::DataError& e) {
    CHECK(contains(e.what(), "train.bin"));
  }
}

TEST_CASE("cluttered fashion-mnist: the item lies in its box, samples are seeded") {
  igrad::data::FashionMnist test(igrad::data::FashionMnistOptions().split(Split::test));
  const auto source = test.slice(0, 200);
  igrad::data::ClutteredFashionMnist cluttered(source, igrad::data::ClutteredOptions().seed(3));
  REQUIRE(cluttered.count() == 200);
  int with_clutter = 0;
  for (size_t i = 0; i < 30; ++i) {
    CAPTURE(i);
    const auto sample = cluttered.get(i);
    REQUIRE(sample.image.sizes() == torch::IntArrayRef({1, 64, 64}));
    REQUIRE(sample.mask.sizes() == torch::IntArrayRef({64, 64}));
    CHECK(sample.label.item<int64_t>() == source.labels()[static_cast<int64_t>(i)].item<int64_t>());
    const auto x0 = sample.box[0].item<int64_t>(), y0 = sample.box[1].item<int64_t>();
    const auto x1 = sample.box[2].item<int64_t>(), y1 = sample.box[3].item<int64_t>();
    CHECK(0 <= x0);
    CHECK(x0 < x1);
    CHECK(x1 <= 64);
    CHECK(0 <= y0);
    CHECK(y0 < y1);
    CHECK(y1 <= 64);
    // The mask holds exactly the item's non-zero pixels, all inside the box, touching each side.
    const auto item = source.pixels()[static_cast<int64_t>(i)][0];
    CHECK(sample.mask.sum().item<int64_t>() == item.ne(0).sum().item<int64_t>());
    const auto inside = sample.mask.slice(0, y0, y1).slice(1, x0, x1);
    CHECK(inside.sum().item<int64_t>() == sample.mask.sum().item<int64_t>());
    CHECK(inside.select(0, 0).any().item<bool>());
    CHECK(inside.select(0, y1 - y0 - 1).any().item<bool>());
    CHECK(inside.select(1, 0).any().item<bool>());
    CHECK(inside.select(1, x1 - x0 - 1).any().item<bool>());
    // The item's pixel values are on the canvas unchanged (clutter never overlaps the box).
    const auto canvas = torch::round(cluttered.normalization().denormalize(sample.image)[0] * 255);
    const auto item_values = item.masked_select(item.ne(0)).to(torch::kFloat);
    CHECK(torch::equal(canvas.masked_select(sample.mask), item_values));
    // Clutter lies outside the box.
    auto outside = canvas.clone();
    outside.slice(0, y0, y1).slice(1, x0, x1).zero_();
    if (outside.gt(0).any().item<bool>()) ++with_clutter;
  }
  CHECK(with_clutter >= 25);

  // Same seed and index, whatever the access order: the same sample; another seed differs.
  igrad::data::ClutteredFashionMnist again(source, igrad::data::ClutteredOptions().seed(3));
  const auto late = again.get(17);
  (void)again.get(4);
  const auto first = cluttered.get(17);
  CHECK(torch::equal(first.image, late.image));
  CHECK(torch::equal(first.box, late.box));
  CHECK(torch::equal(first.mask, late.mask));
  igrad::data::ClutteredFashionMnist other(source, igrad::data::ClutteredOptions().seed(4));
  int differing = 0;
  for (size_t i = 0; i < 10; ++i)
    if (!torch::equal(other.get(i).image, cluttered.get(i).image)) ++differing;
  CHECK(differing == 10);

  // No clutter: nothing outside the item's box; a larger canvas.
  igrad::data::ClutteredFashionMnist clean(
      source, igrad::data::ClutteredOptions().clutter_count(0).canvas_size(96));
  const auto s = clean.get(5);
  CHECK(s.image.sizes() == torch::IntArrayRef({1, 96, 96}));
  auto raw = clean.normalization().denormalize(s.image)[0].clone();
  raw.slice(0, s.box[1].item<int64_t>(), s.box[3].item<int64_t>())
      .slice(1, s.box[0].item<int64_t>(), s.box[2].item<int64_t>())
      .zero_();
  CHECK(raw.abs().max().item<double>() < 1e-5);

  // Batches: by range and through a data loader with the custom example type.
  const auto batch = cluttered.batch(10, 14);
  CHECK(batch.images.sizes() == torch::IntArrayRef({4, 1, 64, 64}));
  CHECK(batch.boxes.sizes() == torch::IntArrayRef({4, 4}));
  CHECK(batch.masks.sizes() == torch::IntArrayRef({4, 64, 64}));
  CHECK(torch::equal(batch.images[2], cluttered.get(12).image));
  auto loader = torch::data::make_data_loader(
      cluttered, torch::data::DataLoaderOptions().batch_size(64).workers(2));
  int64_t seen = 0;
  for (auto& examples : *loader) {
    const auto b = igrad::data::collate(examples);
    CHECK(torch::equal(b.boxes.select(1, 2).gt(b.boxes.select(1, 0)), torch::ones({b.boxes.size(0)}, torch::kBool)));
    seen += b.labels.size(0);
  }
  CHECK(seen == 200);

  CHECK_THROWS_AS(igrad::data::ClutteredFashionMnist(source, igrad::data::ClutteredOptions().canvas_size(20)),
                  igrad::InvalidArgument);
  CHECK_THROWS_AS(igrad::data::ClutteredFashionMnist(
                      source, igrad::data::ClutteredOptions().clutter_min_size(9).clutter_max_size(8)),
                  igrad::InvalidArgument);
}
