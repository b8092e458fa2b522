// The Trainer (SPEC §2): the full gradient against finite differences, λ = 0, misuse, fit and
// its callbacks, the Hana ablation.
#include "test_support.hpp"

#include <boost/hana/equal.hpp>
#include <boost/hana/length.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <algorithm>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

using namespace igrad_test;
namespace fs = std::filesystem;

namespace {

/// L(θ) with the teacher frozen at its value for θ0: the function whose gradient the trainer
/// follows (the teacher is detached, SPEC §2).
template <class E>
double loss_with_frozen_teacher(TinyConv& model, const torch::Tensor& x, const torch::Tensor& t,
                                const torch::Tensor& teacher, double lambda) {
  const auto input = x.detach().requires_grad_(true);
  const auto lc = torch::nn::functional::cross_entropy(model(input), t);
  const auto student = torch::autograd::grad({lc}, {input})[0];
  return (lc + lambda * E{}(student, teacher).mean()).item().toDouble();
}

std::vector<torch::Tensor> snapshot(const std::vector<torch::Tensor>& tensors) {
  std::vector<torch::Tensor> copies;
  for (const auto& t : tensors) copies.push_back(t.detach().clone());
  return copies;
}

bool all_equal(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!torch::equal(a[i], b[i])) return false;
  return true;
}

std::vector<torch::Tensor> optimizer_state(torch::optim::Optimizer& optimizer) {
  std::ostringstream bytes;
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  archive.save_to(bytes);
  const auto s = bytes.str();
  return {torch::from_blob(const_cast<char*>(s.data()), {static_cast<int64_t>(s.size())},
                           torch::kChar).clone()};
}

struct ToyDataset : torch::data::datasets::Dataset<ToyDataset> {
  torch::Tensor images, labels;
  explicit ToyDataset(int64_t n) {
    torch::manual_seed(11);
    images = torch::randn({n, 1, 6, 6});
    labels = torch::randint(0, 3, {n}, torch::kLong);
  }
  torch::data::Example<> get(size_t i) override {
    return {images[static_cast<int64_t>(i)], labels[static_cast<int64_t>(i)]};
  }
  torch::optional<size_t> size() const override { return images.size(0); }
};

}  // namespace

TEST_CASE("trainer: dL/dtheta including the double-backprop term matches finite differences") {
  for (bool batch_norm : {false, true}) {
    CAPTURE(batch_norm);
    torch::manual_seed(5);
    TinyConv model(3, batch_norm);
    model->to(torch::kDouble);
    model->train();
    const auto x = torch::randn({3, 1, 6, 6}, torch::kDouble);
    const auto t = torch::tensor({0, 2, 1});
    const double lambda = 0.8;
    torch::optim::SGD unused(model->parameters(), 0.0);
    igrad::Trainer<igrad::CosineError, igrad::GuidedReLU> trainer(
        model, unused, igrad::TrainerOptions().lambda(lambda));
    const auto l = trainer.loss(x, t);
    for (auto& p : model->parameters()) p.mutable_grad() = torch::Tensor();
    l.total.backward();
    const auto teacher = igrad::input_gradient<igrad::GuidedReLU>(model, x, t);
    CHECK(l.total.item<double>() ==
          doctest::Approx(loss_with_frozen_teacher<igrad::CosineError>(model, x, t, teacher,
                                                                       lambda)).epsilon(1e-12));
    for (auto& p : model->parameters()) {
      const auto analytic = p.grad().clone();
      auto numeric = torch::zeros_like(p);
      auto flat = p.data().view(-1);
      auto out = numeric.view(-1);
      for (int64_t i = 0; i < flat.numel(); ++i) {
        const double old = flat[i].item<double>(), h = 1e-6;
        flat[i] = old + h;
        const double plus = loss_with_frozen_teacher<igrad::CosineError>(model, x, t, teacher, lambda);
        flat[i] = old - h;
        const double minus = loss_with_frozen_teacher<igrad::CosineError>(model, x, t, teacher, lambda);
        flat[i] = old;
        out[i] = (plus - minus) / (2 * h);
      }
      CHECK(max_abs_diff(analytic, numeric) < 1e-6);
      // The regulariser's own term must matter, or the check above proves little.
    }
    // Without the double-backprop term the gradient is measurably different.
    const auto lc = trainer.loss(x, t).classification;
    const auto plain = torch::autograd::grad({lc}, {model->conv->weight})[0];
    CHECK(max_abs_diff(plain, model->conv->weight.grad()) > 1e-4);
  }
}

TEST_CASE("trainer: the fast batch-norm, ReLU and max-pool second-order paths equal LibTorch's own") {
  for (bool affine : {true, false}) {
    CAPTURE(affine);
    torch::manual_seed(6);
    TinyConv model(3, true);
    if (!affine) model->bn = model->replace_module(
        "bn", torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(3).affine(false)));
    model->to(torch::kDouble);
    model->train();
    if (affine) {
      torch::NoGradGuard no_grad;
      model->bn->weight.uniform_(0.5, 1.5);
      model->bn->bias.uniform_(-0.5, 0.5);
    }
    const auto x = torch::randn({4, 1, 6, 6}, torch::kDouble);
    const auto t = torch::tensor({0, 2, 1, 1});
    {  // The fast path is taken: LibTorch's batch-norm node is the one the hook recognises.
      const auto logits = model(x.clone().requires_grad_(true));
      CHECK(igrad::detail::ScopedBatchNormDoubleBackward({logits}).hooked() == 1);
      // and the ReLU and the max-pool get theirs (no all-zero second-order terms).
      CHECK(igrad::detail::ScopedPiecewiseLinearDoubleBackward({logits}).hooked() == 2);
      // With an affine batch norm the trainer asks for its weight and bias gradients, and the
      // path reads its per-channel sums from them; without, it computes them itself. The
      // comparison below covers both.
      CHECK(igrad::detail::ScopedBatchNormDoubleBackward({logits}).affine_parameters().size() ==
            (affine ? 2U : 0U));
    }
    torch::optim::SGD unused(model->parameters(), 0.0);
    igrad::Trainer<igrad::CosineError, igrad::GuidedReLU> trainer(
        model, unused, igrad::TrainerOptions().lambda(0.6));
    trainer.loss(x, t).total.backward();
    std::vector<torch::Tensor> fast;
    for (auto& p : model->parameters()) fast.push_back(p.grad().clone());
    // LibTorch's generic double backward, written out without igrad's hooks.
    for (auto& p : model->parameters()) p.mutable_grad() = torch::Tensor();
    const auto input = x.clone().requires_grad_(true);
    const auto lc = torch::nn::functional::cross_entropy(model(input), t);
    const auto student = torch::autograd::grad({lc}, {input}, {}, true, true)[0];
    const auto teacher = igrad::gradient<igrad::GuidedReLU>({lc}, {input}, {}, true)[0].detach();
    (lc + 0.6 * igrad::CosineError{}(student, teacher).mean()).backward();
    const auto params = model->parameters();
    for (size_t i = 0; i < params.size(); ++i) CHECK(max_abs_diff(fast[i], params[i].grad()) < 1e-12);
  }
}

TEST_CASE("trainer: a step's gradients are those of an unrestricted backward, for every trainable parameter") {
  // The step backpropagates to the parameters only (not to its input batch). Parameters outside
  // the optimizer still get their gradient, and frozen ones none, as with loss.backward().
  torch::manual_seed(12);
  TinyConv model(3, true);
  model->to(torch::kDouble);
  model->train();
  model->bn->bias.requires_grad_(false);
  // The optimizer holds all but the convolution's weight; a learning rate of 0 keeps θ fixed.
  std::vector<torch::Tensor> held;
  for (auto& p : model->parameters())
    if (!p.is_same(model->conv->weight) && p.requires_grad()) held.push_back(p);
  torch::optim::SGD optimizer(held, 0.0);
  igrad::Trainer<igrad::CosineError, igrad::GuidedReLU> trainer(
      model, optimizer, igrad::TrainerOptions().lambda(0.7));
  const auto x = torch::randn({4, 1, 6, 6}, torch::kDouble);
  const auto t = torch::tensor({2, 0, 1, 1});
  trainer.step(x, t);
  std::vector<torch::Tensor> stepped;
  for (auto& p : model->parameters()) {
    stepped.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
    p.mutable_grad() = torch::Tensor();
  }
  trainer.loss(x, t).total.backward();
  const auto params = model->parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    CAPTURE(i);
    REQUIRE(stepped[i].defined() == params[i].grad().defined());
    if (stepped[i].defined()) CHECK(max_abs_diff(stepped[i], params[i].grad()) < 1e-12);
  }
  CHECK(model->conv->weight.grad().defined());
  CHECK_FALSE(model->bn->bias.grad().defined());
}

TEST_CASE("trainer: lambda = 0 gives exactly the parameter update of plain training") {
  torch::manual_seed(7);
  TinyConv a(3, true), b(3, true);
  copy_state(*a, *b);
  torch::optim::Adam opt_a(a->parameters(), 1e-2), opt_b(b->parameters(), 1e-2);
  igrad::Trainer<> trainer(a, opt_a, igrad::TrainerOptions().lambda(0.0));
  a->train();
  b->train();
  for (int i = 0; i < 3; ++i) {
    const auto x = torch::randn({8, 1, 6, 6});
    const auto t = torch::randint(0, 3, {8}, torch::kLong);
    const auto r = trainer.step(x, t);
    CHECK(r.regulariser_loss < 0);  // still reported
    opt_b.zero_grad();
    const auto loss = torch::nn::functional::cross_entropy(b(x), t);
    loss.backward();
    opt_b.step();
    CHECK(r.loss == loss.item<double>());
  }
  CHECK(all_equal(a->parameters(), b->parameters()));
  CHECK(all_equal(a->buffers(), b->buffers()));
}

TEST_CASE("trainer: a regularised step moves toward the guided gradient on a fixed batch") {
  torch::manual_seed(2);
  TinyConv model;
  torch::optim::Adam optimizer(model->parameters(), 5e-3);
  igrad::Trainer<igrad::CosineError, igrad::GuidedReLU> trainer(
      model, optimizer, igrad::TrainerOptions().lambda(5.0));
  const auto x = torch::randn({16, 1, 6, 6});
  const auto t = torch::randint(0, 3, {16}, torch::kLong);
  const double first = trainer.step(x, t).regulariser_loss;
  double last = first;
  for (int i = 0; i < 40; ++i) last = trainer.step(x, t).regulariser_loss;
  CHECK(last < first - 0.05);
  CHECK(trainer.steps() == 41);
}

TEST_CASE("trainer: misuse raises igrad errors and leaves model and optimizer unchanged") {
  torch::manual_seed(4);
  TinyConv model(3, true);
  torch::optim::Adam optimizer(model->parameters(), 1e-2);
  igrad::Trainer<> trainer(model, optimizer);
  trainer.step(torch::randn({4, 1, 6, 6}), torch::tensor({0, 1, 2, 0}));  // optimizer has state
  const auto params = snapshot(model->parameters());
  const auto buffers = snapshot(model->buffers());
  const auto state = optimizer_state(optimizer);
  auto unchanged = [&] {
    CHECK(all_equal(params, model->parameters()));
    CHECK(all_equal(buffers, model->buffers()));
    CHECK(all_equal(state, optimizer_state(optimizer)));
  };
  const auto x = torch::randn({4, 1, 6, 6});
  const auto t = torch::tensor({0, 1, 2, 0});
  CHECK_THROWS_WITH_AS(trainer.step(torch::randn({36}), t), doctest::Contains("expected [N, ...]"),
                       igrad::InvalidArgument);
  unchanged();
  CHECK_THROWS_WITH_AS(trainer.step(x, torch::tensor({0, 1})),
                       doctest::Contains("expected [4] class indices"), igrad::InvalidArgument);
  unchanged();
  CHECK_THROWS_WITH_AS(trainer.step(x, torch::tensor({0, 1, 3, 0})),
                       doctest::Contains("expected class indices in [0, 3)"),
                       igrad::InvalidArgument);
  unchanged();
  CHECK_THROWS_WITH_AS(trainer.step(torch::randn({0, 1, 6, 6}), torch::zeros({0}, torch::kLong)),
                       doctest::Contains("empty"), igrad::InvalidArgument);
  unchanged();
  auto bad = x.clone();
  bad[1][0][2][2] = std::nan("");
  CHECK_THROWS_WITH_AS(trainer.step(bad, t), doctest::Contains("NaN or infinite"),
                       igrad::InvalidArgument);
  unchanged();
  CHECK_THROWS_WITH_AS(trainer.step(torch::randn({4, 1, 5, 5}), t),
                       doctest::Contains("rejected an input batch of shape [4, 1, 5, 5]"),
                       igrad::InvalidArgument);
  unchanged();
  CHECK_THROWS_AS(trainer.step(x, torch::tensor({0.0, 1.0, 2.0, 0.0})), igrad::InvalidArgument);
  unchanged();
  CHECK_THROWS_AS(igrad::Trainer<>(model, optimizer, igrad::TrainerOptions().lambda(-1.0)),
                  igrad::InvalidArgument);
  {
    // A model whose logits overflow: the loss is not finite, the step is refused.
    torch::NoGradGuard no_grad;
    model->fc->bias[0].fill_(std::numeric_limits<float>::infinity());
  }
  const auto params_inf = snapshot(model->parameters());
  CHECK_THROWS_WITH_AS(trainer.step(x, t), doctest::Contains("loss is not finite"),
                       igrad::NumericalError);
  CHECK(all_equal(params_inf, model->parameters()));
  CHECK(all_equal(buffers, model->buffers()));
  CHECK(all_equal(state, optimizer_state(optimizer)));
}

namespace {
/// An error function that gives NaN for every sample, as a broken backward or policy would.
struct NanError {
  static constexpr const char* name = "NanError";
  torch::Tensor operator()(const torch::Tensor& standard, const torch::Tensor& guided) const {
    return (standard * guided).flatten(1).sum(1) * std::numeric_limits<double>::quiet_NaN();
  }
};
}  // namespace

TEST_CASE("trainer: a NaN regulariser beside a finite L_C is refused and points at its sources") {
  torch::manual_seed(4);
  TinyConv model(3, true);
  torch::optim::Adam optimizer(model->parameters(), 1e-2);
  igrad::Trainer<NanError> trainer(model, optimizer);
  const auto params = snapshot(model->parameters());
  const auto buffers = snapshot(model->buffers());
  const auto x = torch::randn({4, 1, 6, 6});
  const auto t = torch::tensor({0, 1, 2, 0});
  CHECK_THROWS_WITH_AS(trainer.step(x, t),
                       doctest::Contains("L_C is finite, so the input gradients or the error "
                                         "function gave it"),
                       igrad::NumericalError);
  CHECK(all_equal(params, model->parameters()));
  CHECK(all_equal(buffers, model->buffers()));
  CHECK(trainer.steps() == 0);
  {
    // Logits that overflow: L_C itself is not finite, and the message does not blame gradients.
    torch::NoGradGuard no_grad;
    model->fc->bias[0].fill_(std::numeric_limits<float>::infinity());
  }
  try {
    trainer.step(x, t);
    FAIL("a step with an infinite L_C was taken");
  } catch (const igrad::NumericalError& error) {
    CHECK(std::string(error.what()).find("L_C is finite") == std::string::npos);
  }
}

TEST_CASE("trainer: the Hana ablation runs one trainer per error function") {
  static_assert(boost::hana::length(igrad::all_error_functions) == boost::hana::size_c<6>);
  std::vector<std::string> names;
  const auto x = torch::randn({4, 1, 6, 6});
  const auto t = torch::tensor({0, 1, 2, 0});
  igrad::for_each_policy(igrad::all_error_functions, [&](auto type) {
    using E = typename decltype(type)::type;
    torch::manual_seed(0);
    TinyConv model;
    torch::optim::SGD optimizer(model->parameters(), 0.01);
    igrad::Trainer<E, igrad::GuidedReLU> trainer(model, optimizer,
                                                 igrad::TrainerOptions().lambda(0.1));
    const auto before = snapshot(model->parameters());
    const auto r = trainer.step(x, t);
    CHECK(std::isfinite(r.regulariser_loss));
    CHECK_FALSE(all_equal(before, model->parameters()));
    names.emplace_back(E::name);
  });
  CHECK(names == std::vector<std::string>{"SigmoidMasking", "CenteredSigmoidMasking",
                                          "HistogramIntersection", "CosineError",
                                          "MeanAbsoluteError", "MeanSquaredError"});
}

TEST_CASE("trainer: fit over a LibTorch data loader with CSV log, progress bar, early stop") {
  const fs::path dir = fs::path(IGRAD_TEST_BINARY_DIR) / "fit_csv";
  remove_tree(dir);
  torch::manual_seed(9);
  TinyConv model;
  torch::optim::Adam optimizer(model->parameters(), 1e-2);
  igrad::Trainer<> trainer(model, optimizer, igrad::TrainerOptions().lambda(0.1));
  auto loader = torch::data::make_data_loader(
      ToyDataset(40).map(torch::data::transforms::Stack<>()),
      torch::data::DataLoaderOptions().batch_size(16));
  std::FILE* progress = std::tmpfile();
  struct CountBatches {
    int batches = 0;
    void on_batch_end(igrad::TrainerState&, const igrad::StepResult&) { ++batches; }
  } counter;
  const auto logs = trainer.fit(loader, 3, igrad::CsvLogger(dir / "epochs.csv", dir / "steps.csv"),
                                igrad::ProgressBar(progress).interactive(false), counter);
  REQUIRE(logs.size() == 3);
  CHECK(counter.batches == 9);  // 16 + 16 + 8 per epoch
  CHECK(logs[0].samples == 40);
  CHECK_FALSE(model->is_training() == false);  // mode restored to what it was (training)
  std::ifstream epochs(dir / "epochs.csv");
  std::string header, row;
  std::getline(epochs, header);
  CHECK(header == "epoch,loss,classification_loss,regulariser_loss,accuracy,seconds");
  int rows = 0;
  while (std::getline(epochs, row)) {
    double loss = std::stod(row.substr(row.find(',') + 1));
    CHECK(loss == doctest::Approx(logs[rows].loss).epsilon(1e-8));
    ++rows;
  }
  CHECK(rows == 3);
  std::ifstream steps(dir / "steps.csv");
  int step_rows = -1;
  while (std::getline(steps, row)) ++step_rows;
  CHECK(step_rows == 9);
  std::rewind(progress);
  char buffer[4096] = {};
  const auto read = std::fread(buffer, 1, sizeof buffer - 1, progress);
  std::fclose(progress);
  const std::string printed(buffer, read);
  CHECK(printed.find("epoch 3/3: L=") != std::string::npos);
  // Each summary but the last gives the time the run still needs; the last the total.
  const auto first_line = printed.substr(0, printed.find('\n'));
  CHECK(first_line.find("epoch 1/3") != std::string::npos);
  CHECK(first_line.find(", ETA ") != std::string::npos);
  CHECK(printed.find(" in all)") > printed.find("epoch 3/3"));

  // Early stopping on a metric that stops improving after the first epoch.
  struct FakeValidation {
    double values[5] = {1.0, 0.9, 0.95, 0.93, 0.91};
    void on_epoch_end(igrad::TrainerState& s, igrad::EpochLog& log) {
      log.metrics["val_loss"] = values[s.epoch];
    }
  };
  igrad::Trainer<> again(model, optimizer);
  const auto stopped = again.fit(loader, 5, FakeValidation{},
                                 igrad::EarlyStopping(2).monitor("val_loss"));
  CHECK(stopped.size() == 4);  // best at epoch 1; epochs 2 and 3 without improvement
  CHECK_THROWS_AS(igrad::EarlyStopping(0), igrad::InvalidArgument);
}

TEST_CASE("trainer: checkpoints are atomic and resuming reproduces an uninterrupted run") {
  const fs::path dir = fs::path(IGRAD_TEST_BINARY_DIR) / "checkpoints";
  remove_tree(dir);
  auto make_loader = [] {
    return torch::data::make_data_loader<torch::data::samplers::RandomSampler>(
        ToyDataset(48).map(torch::data::transforms::Stack<>()),
        torch::data::DataLoaderOptions().batch_size(16));
  };
  // Uninterrupted: 3 epochs.
  torch::manual_seed(21);
  TinyConv full(3, true);
  torch::optim::Adam opt_full(full->parameters(), 1e-2);
  {
    igrad::Trainer<> trainer(full, opt_full);
    auto loader = make_loader();
    torch::manual_seed(100);
    trainer.fit(loader, 3);
  }
  // Interrupted after 2 epochs, then resumed into a fresh model from the checkpoint.
  torch::manual_seed(21);
  TinyConv first(3, true);
  torch::optim::Adam opt_first(first->parameters(), 1e-2);
  {
    igrad::Trainer<> trainer(first, opt_first);
    auto loader = make_loader();
    torch::manual_seed(100);
    trainer.fit(loader, 2, igrad::Checkpoint(dir / "run.pt"));
  }
  torch::manual_seed(999);  // whatever happened in between
  TinyConv resumed(3, true);
  torch::optim::Adam opt_resumed(resumed->parameters(), 1e-2);
  // The loader is built before the checkpoint restores the RNG: building a RandomSampler draws.
  auto resumed_loader = make_loader();
  const auto info = igrad::load_checkpoint(dir / "run.pt", resumed, opt_resumed);
  CHECK(info.next_epoch == 2);
  CHECK(info.global_step == 6);
  CHECK(all_equal(first->parameters(), resumed->parameters()));
  {
    igrad::Trainer<> trainer(resumed, opt_resumed);
    trainer.resume_at(info.next_epoch, info.global_step);
    trainer.fit_to(resumed_loader, 3);  // the remaining epoch of 3
    CHECK(trainer.steps() == 9);
  }
  CHECK(all_equal(full->parameters(), resumed->parameters()));

  // A write that fails midway leaves the previous checkpoint intact and no partial file.
  auto fns = igrad::AnyModel::functions_of(TinyConv(3, true));
  fns.save = [](torch::serialize::OutputArchive&) { throw std::runtime_error("disk full"); };
  CHECK_THROWS(igrad::save_checkpoint(dir / "run.pt", igrad::AnyModel(fns), opt_first, {}));
  CHECK_FALSE(fs::exists(dir / "run.pt.partial"));
  TinyConv check(3, true);
  torch::optim::Adam opt_check(check->parameters(), 1e-2);
  CHECK(igrad::load_checkpoint(dir / "run.pt", check, opt_check).next_epoch == 2);
  CHECK_THROWS_AS(igrad::load_checkpoint(dir / "missing.pt", check, opt_check), igrad::DataError);
  // A checkpoint of another architecture (4 classes) is refused and leaves the model as it was.
  TinyConv wider(4, true);
  torch::optim::Adam opt_wider(wider->parameters(), 1e-2);
  const auto wider_before = snapshot(wider->parameters());
  CHECK_THROWS_WITH_AS(igrad::load_checkpoint(dir / "run.pt", wider, opt_wider),
                       doctest::Contains("does not fit this model"), igrad::DataError);
  CHECK(all_equal(wider_before, wider->parameters()));
  {
    std::ofstream(dir / "garbage.pt") << "not a checkpoint";
  }
  CHECK_THROWS_AS(igrad::load_checkpoint(dir / "garbage.pt", check, opt_check), igrad::DataError);
}

namespace {

/// Stacked batches of ToyDataset, as a plain range (a loader `fit` accepts).
std::vector<torch::data::Example<>> toy_batches(int64_t batches, int64_t batch_size,
                                                torch::Dtype dtype = torch::kFloat) {
  ToyDataset data(batches * batch_size);
  std::vector<torch::data::Example<>> out;
  for (int64_t b = 0; b < batches; ++b)
    out.push_back({data.images.slice(0, b * batch_size, (b + 1) * batch_size).to(dtype),
                   data.labels.slice(0, b * batch_size, (b + 1) * batch_size)});
  return out;
}

}  // namespace

TEST_CASE("regularised_loss: the free function is the frozen-teacher loss and needs no optimizer") {
  torch::manual_seed(15);
  TinyConv model(3, true);
  model->to(torch::kDouble);
  model->train();
  const auto x = torch::randn({3, 1, 6, 6}, torch::kDouble);
  const auto t = torch::tensor({2, 0, 1});
  const auto teacher = igrad::input_gradient<igrad::GuidedReLU>(model, x, t);
  const auto buffers = snapshot(model->buffers());
  const auto l = igrad::regularised_loss(model, x, t, 0.8, igrad::CosineError{}, igrad::GuidedReLU{});
  // The forward pass updated the running statistics; evaluate the reference on the same ones.
  CHECK(l.total.item<double>() ==
        doctest::Approx(loss_with_frozen_teacher<igrad::CosineError>(model, x, t, teacher, 0.8))
            .epsilon(1e-12));
  CHECK(l.total.item<double>() ==
        doctest::Approx(l.classification.item<double>() + 0.8 * l.regulariser.item<double>()));
  CHECK(l.total.requires_grad());
  // λ = 0 without reporting: L = L_C and L_R is 0.
  const auto plain = igrad::regularised_loss(model, x, t, 0.0, igrad::CosineError{},
                                             igrad::GuidedReLU{}, /*report_regulariser=*/false);
  CHECK(plain.regulariser.item<double>() == 0.0);
  CHECK(plain.total.item<double>() == plain.classification.item<double>());
  // Misuse: a bad λ, and labels out of range found after the forward pass, which leaves the
  // batch-norm statistics as they were (the buffer transaction).
  const auto before = snapshot(model->buffers());
  CHECK_THROWS_AS(igrad::regularised_loss(model, x, t, -0.5), igrad::InvalidArgument);
  CHECK_THROWS_WITH_AS(igrad::regularised_loss(model, x, torch::tensor({0, 1, 3}), 0.8),
                       doctest::Contains("expected class indices in [0, 3)"),
                       igrad::InvalidArgument);
  CHECK(all_equal(before, model->buffers()));
  CHECK_FALSE(all_equal(buffers, model->buffers()));  // the successful calls did update them
}

TEST_CASE("trainer: fit(loader, n) runs n epochs each time it is called, fit_to runs up to an epoch") {
  torch::manual_seed(16);
  TinyConv model;
  torch::optim::SGD optimizer(model->parameters(), 0.01);
  igrad::Trainer<> trainer(model, optimizer, igrad::TrainerOptions().lambda(0.1));
  const auto batches = toy_batches(3, 4);
  const auto first = trainer.fit(batches, 2);
  REQUIRE(first.size() == 2);
  // A second fit on the same trainer trains two more epochs, numbered after the first two
  // (igrad 0.1.0 ran none: fit(loader, n) meant "up to epoch n").
  const auto second = trainer.fit(batches, 2);
  REQUIRE(second.size() == 2);
  CHECK(second[0].epoch == 2);
  CHECK(second[1].epoch == 3);
  CHECK(trainer.steps() == 12);
  CHECK(trainer.next_epoch() == 4);
  // fit_to: up to an epoch index, nothing when already there.
  CHECK(trainer.fit_to(batches, 4).empty());
  const auto last = trainer.fit_to(batches, 5);
  REQUIRE(last.size() == 1);
  CHECK(last[0].epoch == 4);
  CHECK(trainer.steps() == 15);
  // The state's epochs is where this fit ends: the Checkpoint's final save and "epoch 6/6".
  struct SeeEpochs {
    std::vector<int64_t> seen;
    void on_epoch_end(igrad::TrainerState& s, igrad::EpochLog&) { seen.push_back(s.epochs); }
  } see;
  trainer.fit(batches, 1, see);
  CHECK(see.seen == std::vector<int64_t>{6});
  CHECK_THROWS_AS(trainer.fit(batches, -1), igrad::InvalidArgument);
}

TEST_CASE("trainer: on_epoch_begin returning true stops before that epoch runs") {
  torch::manual_seed(17);
  TinyConv model;
  torch::optim::SGD optimizer(model->parameters(), 0.01);
  igrad::Trainer<> trainer(model, optimizer);
  struct StopAtSecondEpoch {
    int batches = 0, ends = 0;
    bool on_epoch_begin(igrad::TrainerState& s) { return s.epoch == 1; }
    void on_batch_end(igrad::TrainerState&, const igrad::StepResult&) { ++batches; }
    void on_train_end(igrad::TrainerState&) { ++ends; }
  } stopper;
  const auto logs = trainer.fit(toy_batches(3, 4), 5, stopper);
  CHECK(logs.size() == 1);  // igrad 0.1.0 ran the second epoch anyway: 2 logs, 6 batches
  CHECK(stopper.batches == 3);
  CHECK(trainer.steps() == 3);
  CHECK(stopper.ends == 1);
}

TEST_CASE("trainer: on_after_backward sees the step's gradients before the update and may change them") {
  torch::manual_seed(18);
  TinyConv model(3, true);
  model->to(torch::kDouble);
  const double rate = 0.1;
  torch::optim::SGD optimizer(model->parameters(), rate);  // θ ← θ - rate g, by hand below
  igrad::Trainer<> trainer(model, optimizer, igrad::TrainerOptions().lambda(0.5));
  struct Record {
    std::vector<torch::Tensor> parameters, gradients;
    int calls = 0;
    void on_after_backward(igrad::TrainerState& s) {
      ++calls;
      parameters.clear();
      gradients.clear();
      for (const auto& group : s.optimizer->param_groups())
        for (const auto& p : group.params()) {
          parameters.push_back(p.detach().clone());
          gradients.push_back(p.grad().clone());
        }
    }
    void on_batch_end(igrad::TrainerState& s, const igrad::StepResult&) {
      // The update used exactly the gradients seen in the hook: θ_after = θ_before - rate g.
      size_t i = 0;
      for (const auto& group : s.optimizer->param_groups())
        for (const auto& p : group.params()) {
          CHECK(max_abs_diff(p, parameters[i] - 0.1 * gradients[i]) < 1e-12);
          ++i;
        }
    }
  } record;
  trainer.fit(toy_batches(2, 4, torch::kDouble), 1, record);
  CHECK(record.calls == 2);
  // The hook's gradients are those of the loss at the step's weights (checked independently
  // on a copy of the weights before one more step).
  const auto batch = toy_batches(1, 4, torch::kDouble)[0];
  TinyConv copy(3, true);
  copy->to(torch::kDouble);
  copy_state(*model, *copy);
  torch::optim::SGD unused(copy->parameters(), 0.0);
  igrad::Trainer<> reference(copy, unused, igrad::TrainerOptions().lambda(0.5));
  reference.loss(batch.data, batch.target).total.backward();
  trainer.fit(std::vector<torch::data::Example<>>{batch}, 1, record);
  const auto params = copy->parameters();
  for (size_t i = 0; i < params.size(); ++i)
    CHECK(max_abs_diff(record.gradients[i], params[i].grad()) < 1e-12);

  // The direct form: a step whose callable zeroes the gradients leaves θ where it was.
  const auto before = snapshot(model->parameters());
  int called = 0;
  trainer.step(batch.data, batch.target, [&] {
    ++called;
    for (auto& p : model->parameters()) p.mutable_grad().zero_();
  });
  CHECK(called == 1);
  CHECK(all_equal(before, model->parameters()));
  // A callable that throws refuses the step: parameters, buffers and step count unchanged.
  const auto buffers = snapshot(model->buffers());
  const auto steps = trainer.steps();
  CHECK_THROWS_AS(trainer.step(batch.data, batch.target,
                               [] { throw igrad::NumericalError("gradients disagree"); }),
                  igrad::NumericalError);
  CHECK(all_equal(before, model->parameters()));
  CHECK(all_equal(buffers, model->buffers()));
  CHECK(trainer.steps() == steps);
}

TEST_CASE("trainer: callbacks reach lambda, and LambdaSchedule::warmup sets it per epoch") {
  torch::manual_seed(19);
  TinyConv model;
  model->to(torch::kDouble);
  torch::optim::SGD optimizer(model->parameters(), 0.01);
  igrad::Trainer<> trainer(model, optimizer, igrad::TrainerOptions().lambda(9.0));
  struct Record {
    std::vector<double> lambdas;
    void on_batch_end(igrad::TrainerState& s, const igrad::StepResult& r) {
      lambdas.push_back(s.lambda());
      // The step used that λ: L = L_C + λ L_R.
      CHECK(r.loss == doctest::Approx(r.classification_loss + s.lambda() * r.regulariser_loss)
                          .epsilon(1e-12));
    }
  } record;
  // λ = 0 for one epoch, then 0.3 / 2 and 0.3, then 0.3.
  trainer.fit(toy_batches(2, 4, torch::kDouble), 4, igrad::LambdaSchedule::warmup(0.3, 2, 1),
              record);
  REQUIRE(record.lambdas.size() == 8);
  const std::vector<double> expected{0, 0, 0.15, 0.15, 0.3, 0.3, 0.3, 0.3};
  for (size_t i = 0; i < expected.size(); ++i) CHECK(record.lambdas[i] == doctest::Approx(expected[i]));
  CHECK(trainer.lambda() == doctest::Approx(0.3));
  // A schedule with a negative λ fails before any step.
  const auto before = snapshot(model->parameters());
  const auto steps = trainer.steps();
  CHECK_THROWS_WITH_AS(
      trainer.fit(toy_batches(2, 4), 2, igrad::LambdaSchedule([](int64_t) { return -1.0; })),
      doctest::Contains("expected a finite value >= 0"), igrad::InvalidArgument);
  CHECK(all_equal(before, model->parameters()));
  CHECK(trainer.steps() == steps);
  // Outside fit a state has no trainer.
  igrad::TrainerState orphan{model, &optimizer, 1};
  CHECK_THROWS_AS(orphan.lambda(), igrad::InvalidArgument);
  CHECK_THROWS_AS(igrad::LambdaSchedule::warmup(0.1, 0), igrad::InvalidArgument);
}

TEST_CASE("trainer: GradientClipping makes the update the clipped gradient") {
  torch::manual_seed(20);
  TinyConv model(3, true);
  model->to(torch::kDouble);
  torch::optim::SGD optimizer(model->parameters(), 1.0);  // θ ← θ - g: the update is g
  igrad::Trainer<> trainer(model, optimizer, igrad::TrainerOptions().lambda(0.5));
  struct RawGradients {
    std::vector<torch::Tensor> g;
    void on_after_backward(igrad::TrainerState& s) {
      g.clear();
      for (auto& p : s.model.parameters()) g.push_back(p.grad().clone());
    }
  } raw;
  const double max_norm = 1e-3;
  igrad::GradientClipping clipping(max_norm);
  const auto before = snapshot(model->parameters());
  trainer.fit(toy_batches(1, 4, torch::kDouble), 1, raw, clipping);  // raw runs before clipping
  double squared = 0;
  for (const auto& g : raw.g) squared += g.pow(2).sum().item<double>();
  const double norm = std::sqrt(squared);
  CHECK(clipping.last_norm() == doctest::Approx(norm).epsilon(1e-9));
  REQUIRE(norm > 10 * max_norm);  // so that clipping matters
  // LibTorch scales by max_norm / (norm + 1e-6).
  const auto params = model->parameters();
  double update_squared = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto update = before[i] - params[i];
    CHECK(max_abs_diff(update, raw.g[i] * (max_norm / (norm + 1e-6))) < 1e-12);
    update_squared += update.pow(2).sum().item<double>();
  }
  CHECK(std::sqrt(update_squared) == doctest::Approx(max_norm).epsilon(1e-5));
  CHECK_THROWS_AS(igrad::GradientClipping(0.0), igrad::InvalidArgument);
}

TEST_CASE("trainer: CsvLogger fails on an unwritable path before the first step") {
  const fs::path dir = fs::path(IGRAD_TEST_BINARY_DIR) / "csv_unwritable";
  remove_tree(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "a_file") << "not a folder";
  torch::manual_seed(22);
  TinyConv model;
  torch::optim::SGD optimizer(model->parameters(), 0.1);
  igrad::Trainer<> trainer(model, optimizer);
  const auto before = snapshot(model->parameters());
  // A folder cannot be made under a regular file, whoever runs the test (root included).
  CHECK_THROWS_WITH_AS(trainer.fit(toy_batches(2, 4), 1, igrad::CsvLogger(dir / "a_file" / "log.csv")),
                       doctest::Contains("CsvLogger cannot write"), igrad::Error);
  CHECK(trainer.steps() == 0);
  CHECK(all_equal(before, model->parameters()));
}

TEST_CASE("trainer: a resumed CSV log keeps its metric columns") {
  const fs::path dir = fs::path(IGRAD_TEST_BINARY_DIR) / "csv_resume";
  remove_tree(dir);
  struct Validation {
    void on_epoch_end(igrad::TrainerState& s, igrad::EpochLog& log) {
      log.metrics["val_loss"] = 10.0 + static_cast<double>(s.epoch);
    }
  };
  torch::manual_seed(23);
  TinyConv model;
  torch::optim::SGD optimizer(model->parameters(), 0.1);
  {
    igrad::Trainer<> trainer(model, optimizer);
    trainer.fit(toy_batches(2, 4), 1, Validation{}, igrad::CsvLogger(dir / "epochs.csv"));
  }
  {  // A new process resuming at epoch 1, with a new logger on the same file.
    igrad::Trainer<> trainer(model, optimizer);
    trainer.resume_at(1, 2);
    trainer.fit_to(toy_batches(2, 4), 3, Validation{}, igrad::CsvLogger(dir / "epochs.csv"));
  }
  std::ifstream in(dir / "epochs.csv");
  std::string line;
  std::vector<std::string> lines;
  while (std::getline(in, line)) lines.push_back(line);
  REQUIRE(lines.size() == 4);
  CHECK(lines[0] == "epoch,loss,classification_loss,regulariser_loss,accuracy,seconds,val_loss");
  for (int epoch = 0; epoch < 3; ++epoch) {
    CAPTURE(epoch);
    const auto& row = lines[static_cast<size_t>(epoch) + 1];
    CHECK(row.rfind(std::to_string(epoch) + ",", 0) == 0);
    // The last column is val_loss (igrad 0.1.0 dropped it from the resumed rows).
    CHECK(row.substr(row.rfind(',') + 1) == std::to_string(10 + epoch));
    CHECK(std::count(row.begin(), row.end(), ',') == 6);
  }
}

TEST_CASE("trainer: over a sized range of batches the progress line knows the epoch's total from the start") {
  torch::manual_seed(4);
  TinyConv model;
  torch::optim::SGD optimizer(model->parameters(), 1e-2);
  igrad::Trainer<> trainer(model, optimizer, igrad::TrainerOptions().lambda(0.1));
  std::vector<torch::data::Example<>> batches;
  for (int i = 0; i < 3; ++i)
    batches.push_back({torch::randn({4, 1, 6, 6}), torch::randint(0, 3, {4}, torch::kLong)});
  std::FILE* progress = std::tmpfile();
  trainer.fit(batches, 1, igrad::ProgressBar(progress).interactive(true));
  std::rewind(progress);
  char buffer[4096] = {};
  const auto read = std::fread(buffer, 1, sizeof buffer - 1, progress);
  std::fclose(progress);
  // The first redraw, after batch 1, already shows "1/3" and a bar (0.1.0 learnt the total only
  // at the end of the first epoch and showed "1").
  const std::string printed(buffer, read);
  CHECK(printed.find("] 1/3 L=") != std::string::npos);
  CHECK(igrad::ProgressBar::duration(59.6) == "1 min 00 s");
  CHECK(igrad::ProgressBar::duration(7385) == "2 h 03 min");
}
