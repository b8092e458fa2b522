// Batched augmentation (include/igrad/data/augment.hpp): exact images for known crop offsets,
// the distribution of random offsets and flips with a fixed seed, and the torch::data transforms
// in a data loader.
#include <igrad/data.hpp>
#include <igrad/data/augment.hpp>
#include <igrad/exceptions.hpp>

#include <doctest/doctest.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

using namespace igrad::data;

TEST_CASE("crop_with_padding gives the hand-computed window for each offset") {
  // One 3x3 image 1..9 (channel 0) and 10x that (channel 1), four times, padding 1.
  const auto base = torch::arange(1, 10, torch::kFloat).view({1, 1, 3, 3});
  const auto images = torch::cat({base, base * 10}, 1).repeat({4, 1, 1, 1});
  const auto offsets = torch::tensor({0, 0, 2, 2, 1, 1, 0, 2}, torch::kLong).view({4, 2});
  const auto out = crop_with_padding(images, 1, offsets);
  REQUIRE(out.sizes() == images.sizes());
  const auto expect = [](std::vector<float> v) { return torch::tensor(v).view({3, 3}); };
  CHECK(torch::equal(out[0][0], expect({0, 0, 0, 0, 1, 2, 0, 4, 5})));  // top-left of the padding
  CHECK(torch::equal(out[1][0], expect({5, 6, 0, 8, 9, 0, 0, 0, 0})));  // bottom-right
  CHECK(torch::equal(out[2][0], base[0][0]));                            // centred: the image
  CHECK(torch::equal(out[3][0], expect({0, 0, 0, 2, 3, 0, 5, 6, 0})));  // row 0, column 2
  CHECK(torch::equal(out[3][1], expect({0, 0, 0, 20, 30, 0, 50, 60, 0})));  // same for channel 1
  // The fill value is what the padding holds.
  const auto filled = crop_with_padding(images, 1, offsets, -1.0);
  CHECK(torch::equal(filled[0][0], expect({-1, -1, -1, -1, 1, 2, -1, 4, 5})));

  CHECK_THROWS_AS(crop_with_padding(images, 1, torch::tensor({0, 3}).repeat({4, 1})),
                  igrad::InvalidArgument);  // 3 > 2·padding
  CHECK_THROWS_AS(crop_with_padding(images, 1, torch::zeros({4, 2})), igrad::InvalidArgument);
  CHECK_THROWS_AS(crop_with_padding(images[0], 1, offsets), igrad::InvalidArgument);
  CHECK_THROWS_AS(random_crop(images, -1), igrad::InvalidArgument);
}

TEST_CASE("random_crop draws each offset uniformly from 0 to 2 padding") {
  // A single marked pixel at (4, 4) of a 9x9 image lands at (4 + 2 − dy, 4 + 2 − dx) after a crop
  // with padding 2 at offset (dy, dx): the output tells the offset drawn.
  const int64_t n = 5000;
  auto images = torch::zeros({n, 1, 9, 9});
  images.index_put_({torch::indexing::Slice(), 0, 4, 4}, 1.0);
  torch::manual_seed(17);
  const auto out = random_crop(images, 2);
  const auto flat = out.view({n, 81}).argmax(1);
  CHECK(out.sum().item<double>() == n);  // the marker is never cropped away
  const auto dy = 6 - torch::div(flat, 9, "floor"), dx = 6 - flat.remainder(9);
  CHECK(dy.min().item<int64_t>() >= 0);
  CHECK(dy.max().item<int64_t>() <= 4);
  for (int64_t v = 0; v <= 4; ++v) {
    CAPTURE(v);
    // Binomial(5000, 1/5): mean 1000, sd 28.3; 5 sd either side.
    const auto rows = dy.eq(v).sum().item<int64_t>(), cols = dx.eq(v).sum().item<int64_t>();
    CHECK(rows > 858);
    CHECK(rows < 1142);
    CHECK(cols > 858);
    CHECK(cols < 1142);
  }
  // The same seed draws the same crops.
  torch::manual_seed(17);
  CHECK(torch::equal(random_crop(images, 2), out));
}

TEST_CASE("random_horizontal_flip mirrors images at the requested rate") {
  const auto mask = torch::tensor({true, false, true});
  const auto row = torch::tensor({1.0f, 2.0f, 3.0f}).view({1, 1, 1, 3}).repeat({3, 2, 2, 1});
  const auto flipped = horizontal_flip(row, mask);
  CHECK(torch::equal(flipped[0][1][1], torch::tensor({3.0f, 2.0f, 1.0f})));
  CHECK(torch::equal(flipped[1], row[1]));
  CHECK(torch::equal(flipped[2][0][0], torch::tensor({3.0f, 2.0f, 1.0f})));

  const int64_t n = 10000;
  const auto images = torch::tensor({0.0f, 1.0f}).view({1, 1, 1, 2}).repeat({n, 1, 1, 1});
  torch::manual_seed(5);
  const auto out = random_horizontal_flip(images, 0.3);
  const auto flips = out.select(3, 0).eq(1).sum().item<int64_t>();
  // Binomial(10000, 0.3): mean 3000, sd 45.8; 5 sd either side.
  CHECK(flips > 2771);
  CHECK(flips < 3229);
  CHECK(torch::equal(random_horizontal_flip(images, 0.0), images));
  CHECK(torch::equal(random_horizontal_flip(images, 1.0), images.flip({3})));
  CHECK_THROWS_AS(random_horizontal_flip(images, 1.5), igrad::InvalidArgument);
  CHECK_THROWS_AS(horizontal_flip(images, mask), igrad::InvalidArgument);
}

TEST_CASE("RandomCrop and RandomHorizontalFlip work as torch::data transforms in a loader") {
  const auto pixels = torch::randint(0, 256, {10, 1, 6, 6}, torch::kUInt8);
  const auto labels = torch::arange(10, torch::kLong);
  auto run = [&] {
    torch::manual_seed(3);
    auto dataset = ImageDataset(pixels, labels)
                       .map(RandomCrop(2))
                       .map(RandomHorizontalFlip(0.5))
                       .map(torch::data::transforms::Stack<>());
    auto loader = torch::data::make_data_loader<torch::data::samplers::SequentialSampler>(
        std::move(dataset), torch::data::DataLoaderOptions().batch_size(4));
    std::vector<torch::Tensor> images;
    for (auto& batch : *loader) {
      CHECK(batch.data.size(1) == 1);
      CHECK(batch.data.size(2) == 6);
      CHECK(batch.data.size(3) == 6);
      images.push_back(batch.data);
      // Targets pass through untouched, in order.
      CHECK(torch::equal(batch.target, labels.slice(0, 4 * (images.size() - 1),
                                                    std::min<int64_t>(10, 4 * images.size()))));
    }
    return torch::cat(images);
  };
  const auto first = run(), second = run();
  CHECK(first.size(0) == 10);
  CHECK(torch::equal(first, second));  // reproducible from the seed
  // Augmented, not copied: some image differs from its source.
  const auto source = ImageDataset(pixels, labels).images();
  CHECK_FALSE(torch::equal(first, source));
}
