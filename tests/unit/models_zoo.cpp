// Models (SPEC §6): the zoo's shapes, feature split and rectifier sites, a Trainer step on each,
// the Sequential / callables / TorchScript adapters, and weight serialisation.
#include "test_support.hpp"

#include <igrad/models.hpp>
#include <igrad/models/torchscript.hpp>

#include <torch/script.h>

#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using igrad::models::MobileNetV2;
using igrad::models::ResNet18;
using igrad::models::SmallCNN;

static_assert(igrad::FeatureClassifier<SmallCNN>);
static_assert(igrad::FeatureClassifier<ResNet18>);
static_assert(igrad::FeatureClassifier<MobileNetV2>);

namespace {

fs::path scratch(const std::string& name) {
  const fs::path dir = fs::path(IGRAD_TEST_BINARY_DIR) / "models_scratch" / name;
  igrad_test::remove_tree(dir);
  fs::create_directories(dir);
  return dir;
}

/// Checks forward == head(features(x)) in evaluation mode, and the feature map's shape.
void check_split(const igrad::AnyModel& model, const torch::Tensor& x,
                 std::vector<int64_t> feature_shape, int64_t classes) {
  torch::NoGradGuard no_grad;
  igrad::TrainingModeGuard eval(model, false);
  const auto a = model.features(x);
  CHECK(a.sizes() == torch::IntArrayRef(feature_shape));
  const auto logits = model.forward(x);
  CHECK(logits.sizes() == torch::IntArrayRef({x.size(0), classes}));
  CHECK(igrad_test::max_abs_diff(logits, model.head(a)) < 1e-5);
}

/// Rectifier sites of one forward pass in training mode.
std::size_t sites(const igrad::AnyModel& model, const torch::Tensor& x) {
  igrad::TrainingModeGuard train(model, true);
  return igrad::count_rectifier_sites({model.forward(x.detach().requires_grad_(true))});
}

/// Runs `steps` Trainer steps (cosine error, guided teacher) on one fixed batch; returns the
/// first and the last step's loss.
std::pair<double, double> train_steps(const igrad::AnyModel& model, const torch::Tensor& x,
                                      const torch::Tensor& t, int steps, double lr) {
  torch::optim::Adam optimizer(model.parameters(), torch::optim::AdamOptions(lr));
  igrad::Trainer<igrad::CosineError, igrad::GuidedReLU> trainer(
      model, optimizer, igrad::TrainerOptions().lambda(0.1));
  igrad::TrainingModeGuard train(model, true);
  double first = 0, last = 0;
  for (int s = 0; s < steps; ++s) {
    const auto r = trainer.step(x, t);
    REQUIRE(std::isfinite(r.loss));
    if (s == 0) first = r.loss;
    last = r.loss;
  }
  return {first, last};
}

int64_t count_modules_named(torch::nn::Module& module, const std::string& name) {
  int64_t n = 0;
  for (const auto& m : module.modules())
    if (m->name() == name) ++n;
  return n;
}

}  // namespace

TEST_CASE("SmallCNN: shapes, split, 3 rectifier sites, training lowers the loss") {
  torch::manual_seed(1);
  SmallCNN net;
  const auto x = torch::randn({6, 1, 28, 28});
  const igrad::AnyModel model = net;
  check_split(model, x, {6, 128, 7, 7}, 10);
  CHECK(sites(model, x) == 3);
  SmallCNN grey5(igrad::models::SmallCNNOptions().classes(5).in_channels(3).widths(igrad::models::SmallCNNOptions::Widths{8, 16, 24}));
  check_split(grey5, torch::randn({2, 3, 16, 16}), {2, 24, 4, 4}, 5);
  const auto t = torch::tensor({0, 1, 2, 3, 4, 5});
  const auto [first, last] = train_steps(model, x, t, 8, 1e-2);
  CHECK(last < first);
  CHECK_THROWS_AS(SmallCNN(igrad::models::SmallCNNOptions().classes(0)), igrad::InvalidArgument);
}

TEST_CASE("ResNet-18 (CIFAR): shapes, split, 17 rectifier sites, a Trainer step") {
  torch::manual_seed(2);
  ResNet18 net;
  const igrad::AnyModel model = net;
  const auto x = torch::randn({2, 3, 16, 16});
  check_split(model, x, {2, 512, 2, 2}, 10);
  // Stem 1 + 2 per BasicBlock × 8 blocks.
  CHECK(sites(model, x) == 17);
  CHECK(count_modules_named(*net, "igrad::models::BasicBlockImpl") == 8);
  ResNet18 grey(igrad::models::ResNet18Options().in_channels(1).classes(4));
  check_split(grey, torch::randn({1, 1, 8, 8}), {1, 512, 1, 1}, 4);
  // Training: the same architecture at width 8 keeps the step cheap on two cores.
  torch::manual_seed(3);
  ResNet18 thin(igrad::models::ResNet18Options().base_width(8).classes(3));
  const auto xs = torch::randn({4, 3, 8, 8});
  const auto [first, last] = train_steps(thin, xs, torch::tensor({0, 1, 2, 0}), 6, 1e-2);
  CHECK(last < first);
}

TEST_CASE("MobileNet-V2 (CIFAR): shapes, split, 35 ReLU6 sites, a Trainer step") {
  torch::manual_seed(4);
  MobileNetV2 net(igrad::models::MobileNetV2Options().classes(7));
  const igrad::AnyModel model = net;
  const auto x = torch::randn({2, 3, 16, 16});
  check_split(model, x, {2, 1280, 2, 2}, 7);
  // Stem 1 + first block (t = 1) 1 + 16 blocks × 2 + last 1×1 conv 1 = 35; each ReLU6 module
  // runs once per forward pass, so the count must also equal the number of ReLU6 modules.
  CHECK(sites(model, x) == 35);
  CHECK(count_modules_named(*net, "torch::nn::ReLU6Impl") == 35);
  int64_t blocks = 0;
  for (const auto& block : net->modules(false))
    if (auto r = std::dynamic_pointer_cast<igrad::models::InvertedResidualImpl>(block)) ++blocks;
  CHECK(blocks == 17);
  torch::manual_seed(5);
  MobileNetV2 small(igrad::models::MobileNetV2Options().classes(3).dropout(0.0));
  // Adam at 1e-3 on 16×16 inputs: at 1e-2, or with 1×1 final feature maps, a few steps of this
  // deep net bounce (the loss rose on LibTorch 2.11 though it fell on 1.13).
  const auto [first, last] =
      train_steps(small, torch::randn({4, 3, 16, 16}), torch::tensor({0, 1, 2, 1}), 6, 1e-3);
  CHECK(last < 0.5 * first);
}

TEST_CASE("the zoo's modules keep their class names (printing, named_modules)") {
  // The classes are aliases of class templates (igrad::models::deferred); LibTorch would name
  // them after the template specialisation.
  CHECK(SmallCNN()->name() == "igrad::models::SmallCNNImpl");
  ResNet18 resnet(igrad::models::ResNet18Options().base_width(1));
  CHECK(resnet->name() == "igrad::models::ResNet18Impl");
  CHECK(count_modules_named(*resnet, "igrad::models::BasicBlockImpl") == 8);
  MobileNetV2 mobilenet;
  CHECK(mobilenet->name() == "igrad::models::MobileNetV2Impl");
  CHECK(count_modules_named(*mobilenet, "igrad::models::InvertedResidualImpl") == 17);
  std::ostringstream printed;
  printed << *SmallCNN();
  CHECK(printed.str().rfind("igrad::models::SmallCNNImpl(", 0) == 0);
}

TEST_CASE("adapters: a Sequential split at an index, and a pair of callables") {
  torch::manual_seed(6);
  torch::nn::Sequential seq(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 4, 3).padding(1)),
                            torch::nn::ReLU(), torch::nn::AdaptiveAvgPool2d(1),
                            torch::nn::Flatten(), torch::nn::Linear(4, 3));
  const auto model = igrad::models::split_sequential(seq, 2);
  const auto x = torch::randn({5, 1, 6, 6});
  check_split(model, x, {5, 4, 6, 6}, 3);
  CHECK(igrad_test::max_abs_diff(model.forward(x), seq->forward(x)) == 0.0);
  CHECK(model.parameters().size() == seq->parameters().size());
  CHECK(sites(model, x) == 1);
  CHECK_THROWS_AS(igrad::models::split_sequential(seq, 0), igrad::InvalidArgument);
  CHECK_THROWS_AS(igrad::models::split_sequential(seq, 5), igrad::InvalidArgument);

  igrad_test::TinyConv conv(3);
  const auto pair = igrad::models::from_callables(
      conv, [conv](const torch::Tensor& v) mutable { return conv->features(v); },
      [conv](const torch::Tensor& a) mutable { return conv->head(a); });
  check_split(pair, x, {5, 3, 3, 3}, 3);
  CHECK(igrad_test::max_abs_diff(pair.forward(x), conv->forward(x)) == 0.0);
  const auto before = conv->parameters()[0].clone();
  train_steps(pair, x, torch::tensor({0, 1, 2, 0, 1}), 1, 1e-2);
  CHECK(!torch::equal(before, conv->parameters()[0]));
}

TEST_CASE("save_weights / load_weights and checkpoints round-trip") {
  const auto dir = scratch("weights");
  torch::manual_seed(7);
  SmallCNN a(igrad::models::SmallCNNOptions().classes(4));
  const auto x = torch::randn({3, 1, 12, 12});
  train_steps(a, x, torch::tensor({0, 1, 3}), 2, 1e-2);  // non-trivial BN statistics
  igrad::save_weights(a, dir / "sub" / "a.pt");
  CHECK(fs::exists(dir / "sub" / "a.pt"));
  CHECK(!fs::exists(dir / "sub" / "a.pt.partial"));
  torch::manual_seed(8);
  SmallCNN b(igrad::models::SmallCNNOptions().classes(4));
  a->eval();
  b->eval();
  CHECK(igrad_test::max_abs_diff(a(x), b(x)) > 1e-3);
  igrad::load_weights(b, dir / "sub" / "a.pt");
  CHECK(igrad_test::max_abs_diff(a(x), b(x)) == 0.0);

  SmallCNN wrong(igrad::models::SmallCNNOptions().classes(5));
  wrong->eval();
  const auto wrong_before = wrong(x);
  CHECK_THROWS_AS(igrad::load_weights(wrong, dir / "sub" / "a.pt"), igrad::DataError);
  CHECK(wrong->fc->weight.sizes() == torch::IntArrayRef({5, 128}));
  CHECK(igrad_test::max_abs_diff(wrong(x), wrong_before) == 0.0);  // left unchanged
  ResNet18 other(igrad::models::ResNet18Options().base_width(2));
  CHECK_THROWS_AS(igrad::load_weights(other, dir / "sub" / "a.pt"), igrad::DataError);
  CHECK_THROWS_AS(igrad::load_weights(b, dir / "missing.pt"), igrad::DataError);

  // Checkpoints reuse igrad::save_checkpoint / load_checkpoint on the same handles.
  torch::optim::SGD optimizer(a->parameters(), 0.1);
  igrad::save_checkpoint(dir / "ckpt.pt", a, optimizer, {3, 42});
  torch::optim::SGD optimizer_b(b->parameters(), 0.1);
  const auto info = igrad::load_checkpoint(dir / "ckpt.pt", b, optimizer_b);
  CHECK(info.next_epoch == 3);
  CHECK(info.global_step == 42);
}

namespace {

/// A scripted conv net built from TorchScript source in C++ (what a PyTorch export gives):
/// conv → ReLU → conv → ReLU (· buffer) = features; GAP → fc submodule = head.
torch::jit::Module scripted_net() {
  torch::manual_seed(9);
  torch::jit::Module fc("Fc");
  fc.register_parameter("weight", (torch::randn({3, 6}) * 0.3).requires_grad_(), false);
  fc.register_parameter("bias", torch::zeros({3}).requires_grad_(), false);
  torch::jit::Module net("Net");
  net.register_parameter("w1", (torch::randn({4, 1, 3, 3}) * 0.4).requires_grad_(), false);
  net.register_parameter("b1", torch::zeros({4}).requires_grad_(), false);
  net.register_parameter("w2", (torch::randn({6, 4, 3, 3}) * 0.3).requires_grad_(), false);
  net.register_parameter("b2", torch::zeros({6}).requires_grad_(), false);
  net.register_buffer("scale", torch::full({1}, 1.5));
  net.register_module("fc", fc);
  net.define(R"(
    def features(self, x):
        y = torch.relu(torch.conv2d(x, self.w1, self.b1, [1, 1], [1, 1]))
        y = torch.conv2d(y, self.w2, self.b2, [1, 1], [1, 1])
        return torch.relu(y) * self.scale
    def head(self, a):
        return torch.matmul(a.mean([2, 3]), self.fc.weight.t()) + self.fc.bias
    def forward(self, x):
        return self.head(self.features(x))
  )");
  return net;
}

}  // namespace

TEST_CASE("TorchScript adapter: split, rules on repeated calls, fine-tuning, weights") {
  const auto dir = scratch("torchscript");
  const auto path = dir / "net.pt";
  auto original = scripted_net();
  original.save(path.string());

  const auto model = igrad::models::load_torchscript(path);
  REQUIRE(model.has_feature_split());
  const auto x = torch::randn({4, 1, 8, 8});
  check_split(model, x, {4, 6, 8, 8}, 3);
  CHECK(model.parameters().size() == 6);
  CHECK(model.buffers().size() == 1);

  // The guided rule finds both ReLUs on every call, also after the profiling executor has had
  // many runs to optimise the graph.
  for (int call = 0; call < 8; ++call) {
    CAPTURE(call);
    const auto input = x.detach().requires_grad_(true);
    const auto logits = model.forward(input);
    CHECK(igrad::count_rectifier_sites({logits}) == 2);
    const auto guided = igrad::gradient<igrad::GuidedReLU>({logits.sum()}, {input});
    CHECK(guided[0].sizes() == x.sizes());
    const auto a = model.features(input);
    CHECK(igrad::count_rectifier_sites({a}) == 2);
  }
  {  // What the adapter protects against: the module called directly, with the optimiser on.
    auto direct = torch::jit::load(path.string());
    std::size_t found = 0;
    for (int call = 0; call < 8; ++call) {
      const auto input = x.detach().requires_grad_(true);
      found = igrad::count_rectifier_sites({direct.forward({input}).toTensor()});
    }
    MESSAGE("rectifier sites seen through an optimised TorchScript call: " << found);
  }

  // Fine-tuning from C++ with the Trainer.
  const auto before = model.parameters()[0].clone();
  const auto t = torch::tensor({0, 1, 2, 0});
  const auto [first, last] = train_steps(model, x, t, 5, 1e-2);
  CHECK(std::isfinite(last));
  CHECK(last < first);
  CHECK(!torch::equal(before, model.parameters()[0]));

  // Weights: a fresh copy of the file differs until the fine-tuned weights are loaded.
  igrad::save_weights(model, dir / "tuned.pt");
  const auto fresh = igrad::models::load_torchscript(path);
  {
    torch::NoGradGuard no_grad;
    CHECK(igrad_test::max_abs_diff(fresh.forward(x), model.forward(x)) > 1e-6);
  }
  const auto kept = fresh.parameters()[0];
  igrad::load_weights(fresh, dir / "tuned.pt");
  {
    torch::NoGradGuard no_grad;
    CHECK(igrad_test::max_abs_diff(fresh.forward(x), model.forward(x)) == 0.0);
  }
  CHECK(kept.data_ptr() == fresh.parameters()[0].data_ptr());  // loaded in place

  // Misuse.
  CHECK_THROWS_AS(igrad::models::load_torchscript(dir / "missing.pt"), igrad::DataError);
  torch::jit::Module half("Half");
  half.define(R"(
    def features(self, x):
        return torch.relu(x)
  )");
  CHECK_THROWS_AS(igrad::models::from_torchscript(half), igrad::InvalidArgument);
  torch::jit::Module split_only("SplitOnly");
  split_only.define(R"(
    def features(self, x):
        return torch.relu(x)
    def head(self, a):
        return a.mean([2, 3])
  )");
  const auto composed = igrad::models::from_torchscript(split_only);
  CHECK(igrad_test::max_abs_diff(composed.forward(x), torch::relu(x).mean({2, 3})) == 0.0);
}
