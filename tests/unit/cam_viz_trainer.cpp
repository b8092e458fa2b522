// Pictures (colormaps, overlays, PNG grids read back with stb_image) and the CAM method as the
// Trainer's third policy: statistics in EpochLog::metrics, through the Trainer and the callback.
#include "test_support.hpp"

#include <igrad/callbacks/explanation_monitor.hpp>
#include <igrad/cam.hpp>
#include <igrad/viz.hpp>

#include <stb/stb_image.h>

#include <filesystem>
#include <memory>

using namespace igrad_test;
namespace fs = std::filesystem;

namespace {

/// conv3x3(1→4) → ReLU → max-pool 2 = features; head = GAP → Linear(4, 3).
struct GapNetImpl : torch::nn::Module {
  GapNetImpl() {
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 4, 3).padding(1)));
    fc = register_module("fc", torch::nn::Linear(4, 3));
  }
  torch::Tensor features(torch::Tensor x) { return torch::max_pool2d(torch::relu(conv(x)), 2); }
  torch::Tensor head(torch::Tensor a) { return fc(a.mean({2, 3})); }
  torch::Tensor forward(torch::Tensor x) { return head(features(x)); }
  torch::nn::Conv2d conv{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(GapNet);

struct ToyDataset : torch::data::datasets::Dataset<ToyDataset> {
  torch::Tensor images, labels;
  explicit ToyDataset(int64_t n) {
    torch::manual_seed(11);
    images = torch::randn({n, 1, 8, 8});
    labels = torch::randint(0, 3, {n}, torch::kLong);
  }
  torch::data::Example<> get(size_t i) override {
    return {images[static_cast<int64_t>(i)], labels[static_cast<int64_t>(i)]};
  }
  torch::optional<size_t> size() const override { return images.size(0); }
};

std::vector<torch::Tensor> snapshot_parameters(const std::shared_ptr<torch::nn::Module>& module) {
  std::vector<torch::Tensor> copies;
  for (const auto& p : module->parameters()) copies.push_back(p.detach().clone());
  return copies;
}
template <class M>
std::vector<torch::Tensor> snapshot_parameters(const torch::nn::ModuleHolder<M>& module) {
  return snapshot_parameters(module.ptr());
}

bool same_tensors(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!torch::equal(a[i], b[i])) return false;
  return true;
}

std::array<int, 3> pixel(const torch::Tensor& rgb, int64_t row, int64_t column) {
  return {rgb[row][column][0].item<int>(), rgb[row][column][1].item<int>(), rgb[row][column][2].item<int>()};
}

}  // namespace

TEST_CASE("viz: viridis matches matplotlib's table at anchors, jet matches its formula by hand") {
  const auto t = torch::tensor({0.0, 0.25, 0.5, 0.75, 1.0}, torch::kDouble).view({1, 5});
  const auto viridis = igrad::apply_colormap(t, igrad::Colormap::viridis);
  CHECK(viridis.sizes() == torch::IntArrayRef({1, 5, 3}));
  CHECK((viridis.scalar_type() == torch::kUInt8));
  // matplotlib: viridis(0) = #440154, (0.25) = #3b528b, (0.5) = #21918c, (0.75) = #5ec962, (1) = #fde725.
  const int expected[5][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  for (int j = 0; j < 5; ++j)
    for (int c = 0; c < 3; ++c) {
      CAPTURE(j);
      CAPTURE(c);
      CHECK(std::abs(viridis[0][j][c].item<int>() - expected[j][c]) <= 4);
    }
  const auto jet = igrad::apply_colormap(t, igrad::Colormap::jet);
  // jet(0) = (0, 0, 0.5), jet(0.5) = (0.5, 1, 0.5), jet(1) = (0.5, 0, 0).
  CHECK(pixel(jet, 0, 0) == std::array<int, 3>{0, 0, 128});
  CHECK(pixel(jet, 0, 2) == std::array<int, 3>{128, 255, 128});
  CHECK(pixel(jet, 0, 4) == std::array<int, 3>{128, 0, 0});
}

TEST_CASE("viz: overlay blends the coloured map over the min-max scaled image") {
  const auto image = torch::tensor({0.0, 2.0}).view({1, 1, 2});  // displays as black, white
  const auto map = torch::tensor({0.5, 0.5}).view({1, 2});
  const auto blended = igrad::overlay(image, map, 0.5, igrad::Colormap::jet);
  // jet(0.5) = (127.5, 255, 127.5) → 128 (round half to even); half over black (64, 128 from
  // 127.5) and over white (191.5 → 192).
  CHECK(pixel(blended, 0, 0) == std::array<int, 3>{64, 128, 64});
  CHECK(pixel(blended, 0, 1) == std::array<int, 3>{192, 255, 192});
  CHECK_THROWS_AS(igrad::overlay(image, torch::zeros({2, 2})), igrad::InvalidArgument);
}

TEST_CASE("viz: a grid written as PNG reads back with its size and known pixels") {
  const auto images = torch::zeros({2, 1, 4, 5});  // constant images display black
  auto first = torch::zeros({2, 4, 5});
  first[0][1][2] = 1.0;  // image 0, method 0: one hot pixel
  const auto second = torch::ones({2, 4, 5});
  const auto path = (fs::temp_directory_path() / "igrad_cam_grid_test.png").string();
  igrad::write_explanation_grid(path, images, {first, second},
                                igrad::ExplanationGridOptions().alpha(1.0).colormap(igrad::Colormap::jet).padding(3));
  int width = 0, height = 0, channels = 0;
  std::unique_ptr<unsigned char, void (*)(void*)> data(stbi_load(path.c_str(), &width, &height, &channels, 3),
                                                      stbi_image_free);
  REQUIRE(data != nullptr);
  // Rows: 2 images × (4 + 3) + 3 = 17; columns: (image + 2 methods) × (5 + 3) + 3 = 27.
  CHECK(height == 17);
  CHECK(width == 27);
  const auto at = [&](int row, int column, int c) { return static_cast<int>(data.get()[(row * width + column) * 3 + c]); };
  CHECK(at(0, 0, 0) == 255);  // padding is white
  // Row 0, column 1 (method 0) starts at x = 3 + 8 = 11, y = 3; its pixel (1, 2) is jet(1) = (128, 0, 0).
  CHECK(at(3 + 1, 11 + 2, 0) == 128);
  CHECK(at(3 + 1, 11 + 2, 1) == 0);
  CHECK(at(3 + 1, 11 + 2, 2) == 0);
  CHECK(at(3, 11, 2) == 128);  // map 0 elsewhere: jet(0) = (0, 0, 128)
  CHECK(at(3, 3, 0) == 0);     // the image column: black
  fs::remove(path);

  CHECK_THROWS_WITH_AS(igrad::write_png("/nonexistent-folder/x/grid.png", torch::zeros({2, 2, 3}, torch::kUInt8)),
                       doctest::Contains("/nonexistent-folder/x/grid.png"), igrad::Error);
}

TEST_CASE("viz: column labels put a band of text above each labelled column, the grid unchanged below") {
  const auto images = torch::zeros({2, 1, 12, 40});
  const auto maps = torch::rand({2, 12, 40});
  const auto options = igrad::ExplanationGridOptions().padding(2).alpha(1.0);
  const auto plain = igrad::explanation_grid(images, {maps, maps}, options);
  auto labelled_options = options;
  labelled_options.column_labels({"A", ""}).image_label("");
  const auto labelled = igrad::explanation_grid(images, {maps, maps}, labelled_options);
  const int64_t band = labelled.size(0) - plain.size(0);
  REQUIRE(band > 0);
  CHECK(labelled.size(1) == plain.size(1));
  CHECK(torch::equal(labelled.slice(0, band), plain));
  // Columns start at x = 2 + c * 42; only column 1 ("A") has dark text pixels in the band.
  const auto dark = labelled.slice(0, 0, band).lt(128).any(2);
  CHECK_FALSE(dark.slice(1, 0, 2 + 42).any().item<bool>());
  CHECK(dark.slice(1, 2 + 42, 2 + 2 * 42).any().item<bool>());
  CHECK_FALSE(dark.slice(1, 2 + 2 * 42).any().item<bool>());

  auto wrong = options;
  wrong.column_labels({"only one"});
  CHECK_THROWS_WITH_AS(igrad::explanation_grid(images, {maps, maps}, wrong),
                       doctest::Contains("1 column labels for 2 columns"), igrad::InvalidArgument);
}

TEST_CASE("viz: first_per_class picks class by class, and comparison_grid lays out method x model columns") {
  const auto labels = torch::tensor({2, 0, 1, 0, 2, 0, 1}, torch::kInt);
  CHECK(igrad::first_per_class(labels, 3, 2) == std::vector<int64_t>{1, 3, 2, 6, 0, 4});
  CHECK(igrad::first_per_class(labels, 4, 1) == std::vector<int64_t>{1, 2, 0});  // class 3: none
  CHECK_THROWS_WITH_AS(igrad::first_per_class(labels.to(torch::kFloat), 3, 2),
                       doctest::Contains("1-D integer tensor"), igrad::InvalidArgument);
  CHECK_THROWS_WITH_AS(igrad::first_per_class(labels, 3, 0), doctest::Contains("must be positive"),
                       igrad::InvalidArgument);

  torch::manual_seed(3);
  TinyConv base(3), reg(3);
  base->eval();
  reg->eval();
  const auto images = torch::randn({2, 1, 6, 6});
  const auto targets = torch::tensor({0, 2});
  const std::vector explainers{igrad::method_explainer<igrad::Gradient>("grad"),
                               igrad::method_explainer<igrad::GradCam>()};
  CHECK(explainers[1].name == std::string(igrad::GradCam::name));  // "Grad-CAM"
  const auto options = igrad::ExplanationGridOptions().padding(1);
  const auto grid = igrad::comparison_grid({{"B", base}, {"R", reg}}, images, targets, explainers, options);
  // The same figure built by hand: method-major, model-minor columns, labelled "<method> <model>".
  const std::vector<torch::Tensor> columns{
      igrad::explain<igrad::Gradient>(base, images, targets), igrad::explain<igrad::Gradient>(reg, images, targets),
      igrad::explain<igrad::GradCam>(base, images, targets), igrad::explain<igrad::GradCam>(reg, images, targets)};
  auto by_hand = options;
  by_hand.column_labels({"grad B", "grad R", "Grad-CAM B", "Grad-CAM R"});
  CHECK(torch::equal(grid, igrad::explanation_grid(images, columns, by_hand)));
  // Models and methods swapped in the labels would give other pictures in the band above the grid.
  by_hand.column_labels({"grad R", "grad B", "Grad-CAM R", "Grad-CAM B"});
  CHECK_FALSE(torch::equal(grid, igrad::explanation_grid(images, columns, by_hand)));

  CHECK_THROWS_WITH_AS(igrad::comparison_grid({}, images, targets, explainers), doctest::Contains("at least one model"),
                       igrad::InvalidArgument);
  CHECK_THROWS_WITH_AS(igrad::comparison_grid({{"B", base}}, images[0], targets, explainers),
                       doctest::Contains("comparison_grid: the images have shape"), igrad::InvalidArgument);
}

TEST_CASE("cam statistics: mean and top-20% mass by hand") {
  // Five pixels per map: top 20 % = one pixel.
  const auto maps = torch::tensor({1.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0},
                                  torch::kDouble).view({3, 1, 5});
  const auto s = igrad::map_statistics(maps);
  CHECK(s.mean == doctest::Approx(3.5 / 15.0));
  CHECK(s.top_mass == doctest::Approx((1.0 + 0.2 + 0.0) / 3.0));
}

TEST_CASE("trainer: held_out and ExplanationMonitor report statistics and faithfulness, one owner per key") {
  torch::manual_seed(2);
  GapNet model;
  torch::optim::SGD optimizer(model->parameters(), 0.05);
  igrad::Trainer<igrad::CosineError, igrad::GuidedReLU, igrad::GradCam> trainer(
      model, optimizer, igrad::TrainerOptions().lambda(0.01));
  static_assert(std::is_same_v<igrad::Trainer<>::cam_method_type, igrad::GradCam>);
  ToyDataset data(24);
  const auto held_x = data.images.slice(0, 0, 6).clone();
  const auto held_t = data.labels.slice(0, 0, 6).clone();
  trainer.held_out(held_x, held_t);  // deprecated form of ExplanationMonitor<GradCam>
  auto loader = torch::data::make_data_loader(
      ToyDataset(24).map(torch::data::transforms::Stack<>()),
      torch::data::DataLoaderOptions().batch_size(8));
  // Both would write cam_mean ... (igrad 0.1.0: the monitor silently overwrote the trainer's
  // figures): refused before the first step.
  const auto before = snapshot_parameters(model);
  CHECK_THROWS_WITH_AS(trainer.fit(loader, 2, igrad::ExplanationMonitor<igrad::ScoreCam>(held_x, held_t)),
                       doctest::Contains("would be written by both Trainer::held_out and "
                                         "ExplanationMonitor<Score-CAM>"),
                       igrad::InvalidArgument);
  CHECK(trainer.steps() == 0);
  CHECK(same_tensors(before, model->parameters()));
  // With its own prefix the monitor reports beside the trainer's Grad-CAM.
  const auto logs = trainer.fit(
      loader, 2, igrad::ExplanationMonitor<igrad::ScoreCam>(held_x, held_t).prefix("score_cam_"));
  REQUIRE(logs.size() == 2);
  CHECK(model->is_training());  // fit restores the mode it found (a new module trains)
  for (const auto& log : logs)
    for (const char* name : {"cam_mean", "cam_top20_mass", "cam_average_drop", "cam_average_increase",
                             "cam_average_gain", "score_cam_mean", "score_cam_top20_mass",
                             "score_cam_average_drop", "score_cam_average_increase",
                             "score_cam_average_gain"}) {
      CAPTURE(name);
      REQUIRE(log.metrics.count(name) == 1);
    }
  // The last epoch's figures are those of the final weights; recompute them independently from
  // the maps and the faithfulness metric.
  const auto& last = logs.back().metrics;
  const auto grad_maps = igrad::explain<igrad::GradCam>(model, held_x, held_t);
  const auto score_maps = igrad::explain<igrad::ScoreCam>(model, held_x, held_t);
  const auto grad = igrad::map_statistics(grad_maps);
  const auto score = igrad::map_statistics(score_maps);
  CHECK(last.at("cam_mean") == doctest::Approx(grad.mean).epsilon(1e-9));
  CHECK(last.at("cam_top20_mass") == doctest::Approx(grad.top_mass).epsilon(1e-9));
  CHECK(last.at("score_cam_mean") == doctest::Approx(score.mean).epsilon(1e-9));
  CHECK(last.at("score_cam_top20_mass") == doctest::Approx(score.top_mass).epsilon(1e-9));
  CHECK(grad.mean != doctest::Approx(score.mean));
  const auto f = igrad::faithfulness(model, held_x, grad_maps, held_t);
  CHECK(last.at("cam_average_drop") == doctest::Approx(f.average_drop).epsilon(1e-9));
  CHECK(last.at("cam_average_increase") == doctest::Approx(f.average_increase).epsilon(1e-9));
  CHECK(last.at("cam_average_gain") == doctest::Approx(f.average_gain).epsilon(1e-9));
  const auto fs_ = igrad::faithfulness(model, held_x, score_maps, held_t);
  CHECK(last.at("score_cam_average_drop") == doctest::Approx(fs_.average_drop).epsilon(1e-9));
  CHECK(last.at("cam_average_drop") >= 0);
  CHECK(last.at("cam_average_drop") <= 100);
  // The trainer's explain is its CAM policy's.
  CHECK(max_abs_diff(trainer.explain(held_x, held_t), grad_maps) == 0);
  // Two monitors on the same names are refused as well; a callback that writes a monitor's key
  // without claiming it is caught when the monitor writes.
  CHECK_THROWS_AS(trainer.fit(loader, 1, igrad::ExplanationMonitor<igrad::GradCamPlusPlus>(held_x)
                                             .prefix("score_cam_"),
                              igrad::ExplanationMonitor<igrad::ScoreCam>(held_x).prefix("score_cam_")),
                  igrad::InvalidArgument);
  struct Squatter {
    void on_epoch_end(igrad::TrainerState&, igrad::EpochLog& log) { log.metrics["x_mean"] = 1; }
  };
  CHECK_THROWS_WITH_AS(trainer.fit(loader, 1, Squatter{},
                                   igrad::ExplanationMonitor<igrad::GradCam>(held_x).prefix("x_")),
                       doctest::Contains("already written"), igrad::InvalidArgument);
}

TEST_CASE("fit: the held-out set and the model's features/head split are checked before the first step") {
  // A conv net (with a ReLU for the guided rule) with only forward(): no features/head split,
  // so no CAM.
  struct FlatNetImpl : torch::nn::Module {
    FlatNetImpl() { conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 3, 3))); }
    torch::Tensor forward(torch::Tensor x) { return torch::relu(conv(x)).mean({2, 3}); }
    torch::nn::Conv2d conv{nullptr};
  };
  torch::manual_seed(3);
  auto flat = std::make_shared<FlatNetImpl>();
  torch::optim::SGD flat_optimizer(flat->parameters(), 0.1);
  ToyDataset data(8);
  const std::vector<torch::data::Example<>> batches{{data.images, data.labels}};
  {
    igrad::Trainer<> trainer(flat, flat_optimizer);
    trainer.held_out(data.images.slice(0, 0, 2));
    const auto before = snapshot_parameters(flat);
    // igrad 0.1.0 trained the first epoch and then failed, losing it.
    CHECK_THROWS_WITH_AS(trainer.fit(batches, 2), doctest::Contains("features/head split"),
                         igrad::GraphError);
    CHECK(trainer.steps() == 0);
    CHECK(same_tensors(before, flat->parameters()));
  }
  {
    igrad::Trainer<> trainer(flat, flat_optimizer);
    CHECK_THROWS_AS(trainer.fit(batches, 2, igrad::ExplanationMonitor<>(data.images.slice(0, 0, 2))),
                    igrad::GraphError);
    CHECK(trainer.steps() == 0);
  }
  // A split model, but a held-out set of the wrong channel count.
  GapNet model;
  torch::optim::SGD optimizer(model->parameters(), 0.1);
  igrad::Trainer<> trainer(model, optimizer);
  const auto before = snapshot_parameters(model);
  CHECK_THROWS_AS(trainer.fit(batches, 1, igrad::ExplanationMonitor<igrad::GradCam>(torch::randn({2, 3, 8, 8}))),
                  igrad::InvalidArgument);
  CHECK(trainer.steps() == 0);
  CHECK(same_tensors(before, model->parameters()));
}

TEST_CASE("explain: 10 000 consecutive calls inside training leave no memory behind") {
  torch::manual_seed(8);
  GapNet model;
  model->train();
  const auto x = torch::randn({4, 1, 8, 8});
  const auto t = torch::tensor({0, 1, 2, 0});
  for (int i = 0; i < 200; ++i) igrad::explain<igrad::GradCamPlusPlus>(model, x, t);  // warm-up
  const long before = igrad::resident_memory_kib();
  for (int i = 0; i < 10000; ++i) igrad::explain<igrad::GradCamPlusPlus>(model, x, t);
  const long grown = igrad::resident_memory_kib() - before;
  CAPTURE(grown);
  // A graph or a gradient kept per call (about 1 KiB each here) would add 10 MiB or more.
  CHECK(grown < 4 * 1024);
  CHECK(model->is_training());
  for (const auto& p : model->parameters()) CHECK_FALSE(p.grad().defined());
}
