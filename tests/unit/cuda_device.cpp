// CUDA: every computation runs on the model's device (SPEC §2, §4, §5). Each test runs the same
// work on the GPU and on the CPU and compares, in double precision so that the comparison can be
// tight (no TF32). On CUDA an affine batch norm runs through cuDNN in float and in double, so
// these tests also cover igrad's second-order batch-norm path on cuDNN's node. Without a CUDA
// device that LibTorch can see, each test says so and returns: CI has no GPU, and
// tools/cuda/run-on-device.sh runs this suite on one.
#include "test_support.hpp"

#include <igrad/cam.hpp>

#include <torch/csrc/autograd/generated/Functions.h>
#include <torch/cuda.h>

#include <filesystem>
#include <string>

using namespace igrad_test;

namespace {

// Without a GPU each case prints the marker CTest's SKIP_REGULAR_EXPRESSION (tests/CMakeLists.txt)
// looks for, so it is reported as skipped rather than passed.
bool cuda_present() {
  if (torch::cuda::is_available()) return true;
  MESSAGE("igrad-test-skipped: LibTorch sees no CUDA device (run tools/cuda/run-on-device.sh on a "
          "GPU)");
  return false;
}

const torch::Device kCuda(torch::kCUDA);
const torch::Device kCpu(torch::kCPU);

/// A narrow SmallCNN with the same initial weights for a given seed, on `device` in `dtype`.
igrad::models::SmallCNN small_cnn(torch::Device device, torch::Dtype dtype, uint64_t seed = 3) {
  torch::manual_seed(seed);
  igrad::models::SmallCNN net(igrad::models::SmallCNNOptions().widths({8, 16, 16}));
  net->to(device, dtype);
  return net;
}

/// The largest difference relative to the larger magnitude of the two tensors (both moved to CPU).
double relative_difference(const torch::Tensor& got, const torch::Tensor& expected) {
  const auto a = got.detach().cpu().to(torch::kDouble), b = expected.detach().cpu().to(torch::kDouble);
  const double scale = std::max(1.0, std::max(a.abs().max().item<double>(), b.abs().max().item<double>()));
  return (a - b).abs().max().item<double>() / scale;
}

/// The largest magnitude in a tensor.
double largest(const torch::Tensor& t) { return t.detach().abs().max().item<double>(); }

std::vector<torch::Tensor> snapshot_buffers(torch::nn::Module& module) {
  std::vector<torch::Tensor> copies;
  for (const auto& b : module.buffers()) copies.push_back(b.detach().clone());
  return copies;
}

void restore_buffers(torch::nn::Module& module, const std::vector<torch::Tensor>& copies) {
  torch::NoGradGuard no_grad;
  auto buffers = module.buffers();
  for (size_t i = 0; i < buffers.size(); ++i) buffers[i].copy_(copies[i]);
}

struct Batch {
  torch::Tensor images, labels;
};

Batch random_batch(int64_t n, torch::Dtype dtype, uint64_t seed = 5) {
  torch::manual_seed(seed);
  return {torch::randn({n, 1, 28, 28}, dtype), torch::randint(0, 10, {n}, torch::kLong)};
}

}  // namespace

TEST_CASE("cuda: standard, guided and deconv input gradients equal the CPU's") {
  if (!cuda_present()) return;
  const auto batch = random_batch(6, torch::kDouble);
  igrad::for_each_policy(igrad::all_backprop_rules, [&](auto type) {
    using R = typename decltype(type)::type;
    CAPTURE(std::string(R::name));
    auto cpu = small_cnn(kCpu, torch::kDouble), gpu = small_cnn(kCuda, torch::kDouble);
    for (const bool training : {false, true}) {
      CAPTURE(training);
      cpu->train(training);
      gpu->train(training);
      const auto expected = igrad::input_gradient<R>(cpu, batch.images, batch.labels);
      const auto got = igrad::input_gradient<R>(gpu, batch.images.to(kCuda), batch.labels.to(kCuda));
      CHECK(got.device().is_cuda());
      CHECK(largest(expected) > 0);
      CHECK(relative_difference(got, expected) < 1e-10);
    }
  });
}

TEST_CASE("cuda: one regularised step gives the CPU's parameters, for every error function") {
  if (!cuda_present()) return;
  const auto batch = random_batch(8, torch::kDouble);
  igrad::for_each_policy(igrad::all_error_functions, [&](auto type) {
    using E = typename decltype(type)::type;
    CAPTURE(std::string(E::name));
    auto cpu = small_cnn(kCpu, torch::kDouble), gpu = small_cnn(kCuda, torch::kDouble);
    torch::optim::Adam cpu_adam(cpu->parameters(), 1e-2), gpu_adam(gpu->parameters(), 1e-2);
    const auto options = igrad::TrainerOptions().lambda(0.5);
    igrad::Trainer<E, igrad::GuidedReLU> on_cpu(cpu, cpu_adam, options), on_gpu(gpu, gpu_adam, options);
    for (int step = 0; step < 2; ++step) {
      const auto expected = on_cpu.step(batch.images, batch.labels);
      // The batch stays on the CPU: the trainer moves it to the model's device.
      const auto got = on_gpu.step(batch.images, batch.labels);
      CHECK(got.loss == doctest::Approx(expected.loss).epsilon(1e-9));
      CHECK(got.regulariser_loss == doctest::Approx(expected.regulariser_loss).epsilon(1e-9));
      CHECK(expected.regulariser_loss != 0);  // the regulariser takes part (E may be negative)
    }
    const auto p_cpu = cpu->parameters(), p_gpu = gpu->parameters();
    for (size_t i = 0; i < p_cpu.size(); ++i) {
      CHECK(p_gpu[i].device().is_cuda());
      CHECK(relative_difference(p_gpu[i], p_cpu[i]) < 1e-9);
    }
    const auto b_cpu = cpu->buffers(), b_gpu = gpu->buffers();
    for (size_t i = 0; i < b_cpu.size(); ++i) CHECK(relative_difference(b_gpu[i], b_cpu[i]) < 1e-9);
  });
}

TEST_CASE("cuda: the fast batch-norm second-order path covers cuDNN's batch norm") {
  if (!cuda_present()) return;
  for (const auto dtype : {torch::kDouble, torch::kFloat}) {
    const bool is_double = dtype == torch::kDouble;
    CAPTURE(is_double);
    const auto batch = random_batch(16, dtype);
    const auto x = batch.images.to(kCuda), t = batch.labels.to(kCuda);
    auto net = small_cnn(kCuda, dtype);
    net->train();
    const auto before = snapshot_buffers(*net);
    {  // The graph goes through cuDNN's batch norm, and the hook recognises its three nodes.
      const auto logits = net->forward(x.clone().requires_grad_(true));
      int cudnn_nodes = 0;
      igrad::detail::visit_graph({logits}, [&](torch::autograd::Node* node) {
        cudnn_nodes += dynamic_cast<torch::autograd::generated::CudnnBatchNormBackward0*>(node) != nullptr;
      });
      CHECK(cudnn_nodes == 3);
      CHECK(igrad::detail::ScopedBatchNormDoubleBackward({logits}).hooked() == 3);
    }
    restore_buffers(*net, before);
    torch::optim::SGD unused(net->parameters(), 0.0);
    igrad::Trainer<igrad::CosineError, igrad::GuidedReLU> trainer(
        net, unused, igrad::TrainerOptions().lambda(0.6));
    trainer.loss(x, t).total.backward();
    std::vector<torch::Tensor> fast;
    for (auto& p : net->parameters()) {
      fast.push_back(p.grad().clone());
      p.mutable_grad() = torch::Tensor();
    }
    restore_buffers(*net, before);  // the same running statistics for the second forward
    // LibTorch's generic double backward, without igrad's hooks.
    const auto input = x.clone().requires_grad_(true);
    const auto lc = torch::nn::functional::cross_entropy(net->forward(input), t);
    const auto student = torch::autograd::grad({lc}, {input}, {}, true, true)[0];
    const auto teacher = igrad::gradient<igrad::GuidedReLU>({lc}, {input}, {}, true)[0].detach();
    (lc + 0.6 * igrad::CosineError{}(student, teacher).mean()).backward();
    const auto params = net->parameters();
    for (size_t i = 0; i < params.size(); ++i) {
      CAPTURE(i);
      CHECK(relative_difference(fast[i], params[i].grad()) < (is_double ? 1e-9 : 1e-3));
    }
  }
}

TEST_CASE("cuda: every CAM method gives the CPU's maps, returned on the input's device") {
  if (!cuda_present()) return;
  const auto batch = random_batch(5, torch::kDouble);
  auto cpu = small_cnn(kCpu, torch::kDouble), gpu = small_cnn(kCuda, torch::kDouble);
  boost::hana::for_each(igrad::all_cam_methods, [&](auto type) {
    using C = typename decltype(type)::type;
    CAPTURE(std::string(C::name));
    const auto options = igrad::CamOptions().batch_size(7);  // Score-CAM & co.: ragged batches
    const auto expected = igrad::explain<C>(cpu, batch.images, batch.labels, options);
    const auto got = igrad::explain<C>(gpu, batch.images.to(kCuda), batch.labels.to(kCuda), options);
    CHECK(got.device().is_cuda());
    CHECK(largest(expected) > 0);
    CHECK(relative_difference(got, expected) < 1e-7);
    // A CPU batch explained by a CUDA model: computed on the GPU, returned on the CPU.
    const auto back = igrad::explain<C>(gpu, batch.images, batch.labels, options);
    CHECK(back.device().is_cpu());
    CHECK(relative_difference(back, expected) < 1e-7);
  });
}

TEST_CASE("cuda: every input-space saliency method gives the CPU's attributions") {
  if (!cuda_present()) return;
  const auto batch = random_batch(4, torch::kDouble);
  auto cpu = small_cnn(kCpu, torch::kDouble), gpu = small_cnn(kCuda, torch::kDouble);
  const auto options = igrad::SaliencyOptions().samples(6).steps(8);
  boost::hana::for_each(igrad::all_saliency_methods, [&](auto type) {
    using S = typename decltype(type)::type;
    CAPTURE(std::string(S::name));
    const auto expected = igrad::attribute<S>(cpu, batch.images, batch.labels, options);
    const auto got = igrad::attribute<S>(gpu, batch.images.to(kCuda), batch.labels.to(kCuda), options);
    CHECK(got.device().is_cuda());
    CHECK(largest(expected) > 0);
    CHECK(relative_difference(got, expected) < 1e-9);
  });
}

TEST_CASE("cuda: faithfulness, insertion, deletion and pointing equal the CPU's") {
  if (!cuda_present()) return;
  const auto batch = random_batch(6, torch::kDouble);
  auto cpu = small_cnn(kCpu, torch::kDouble), gpu = small_cnn(kCuda, torch::kDouble);
  cpu->eval();
  gpu->eval();
  const auto maps = igrad::explain<igrad::GradCam>(cpu, batch.images, batch.labels);
  const auto x = batch.images.to(kCuda), m = maps.to(kCuda), y = batch.labels.to(kCuda);
  const auto f_cpu = igrad::faithfulness(cpu, batch.images, maps, batch.labels);
  const auto f_gpu = igrad::faithfulness(gpu, x, m, y);
  CHECK(f_gpu.average_drop == doctest::Approx(f_cpu.average_drop).epsilon(1e-9));
  CHECK(f_gpu.average_increase == doctest::Approx(f_cpu.average_increase).epsilon(1e-9));
  CHECK(f_gpu.average_gain == doctest::Approx(f_cpu.average_gain).epsilon(1e-9));
  // CPU data scored by the CUDA model: the model runs on its device, the results come back.
  const auto f_mixed = igrad::faithfulness(gpu, batch.images, maps, batch.labels);
  CHECK(f_mixed.average_drop == doctest::Approx(f_cpu.average_drop).epsilon(1e-9));
  const auto options = igrad::CausalOptions().pixels_per_step(28);
  const auto mixed = igrad::insertion(gpu, batch.images, maps, batch.labels, options);
  CHECK(mixed.probabilities.device().is_cpu());
  CHECK(relative_difference(mixed.auc, igrad::insertion(cpu, batch.images, maps, batch.labels, options).auc) < 1e-9);
  for (const bool inserting : {true, false}) {
    CAPTURE(inserting);
    const auto expected = inserting ? igrad::insertion(cpu, batch.images, maps, batch.labels, options)
                                    : igrad::deletion(cpu, batch.images, maps, batch.labels, options);
    const auto got = inserting ? igrad::insertion(gpu, x, m, y, options)
                               : igrad::deletion(gpu, x, m, y, options);
    CHECK(got.probabilities.device().is_cuda());
    CHECK(relative_difference(got.probabilities, expected.probabilities) < 1e-9);
    CHECK(relative_difference(got.auc, expected.auc) < 1e-9);
  }
  const auto boxes = torch::tensor({4, 4, 20, 20}).repeat({6, 1});
  CHECK(torch::equal(igrad::pointing_hits(m, boxes).cpu(), igrad::pointing_hits(maps, boxes)));
  CHECK(relative_difference(igrad::energy_pointing(m, boxes), igrad::energy_pointing(maps, boxes)) < 1e-12);
}

TEST_CASE("cuda: fit with held-out reporting and a checkpoint keeps the model on the GPU") {
  if (!cuda_present()) return;
  const auto batch = random_batch(64, torch::kFloat);
  auto net = small_cnn(kCuda, torch::kFloat);
  torch::optim::Adam adam(net->parameters(), 1e-3);
  igrad::Trainer<igrad::CosineError, igrad::GuidedReLU> trainer(net, adam,
                                                               igrad::TrainerOptions().lambda(0.1));
  trainer.held_out(batch.images.slice(0, 0, 16), batch.labels.slice(0, 0, 16));
  std::vector<torch::data::Example<>> examples;
  for (int64_t i = 0; i < 64; i += 16)
    examples.push_back({batch.images.slice(0, i, i + 16), batch.labels.slice(0, i, i + 16)});
  const auto directory = std::filesystem::path(IGRAD_TEST_BINARY_DIR) / "cuda_fit";
  remove_tree(directory);
  std::filesystem::create_directories(directory);
  const auto logs = trainer.fit(examples, 2, igrad::Checkpoint(directory / "last.pt"));
  REQUIRE(logs.size() == 2);
  for (const auto& log : logs) {
    CHECK(std::isfinite(log.loss));
    CHECK(log.regulariser_loss != 0);
    REQUIRE(log.metrics.count("cam_average_drop") == 1);
    CHECK(std::isfinite(log.metrics.at("cam_average_drop")));
  }
  for (const auto& p : net->parameters()) CHECK(p.device().is_cuda());
  // The weights saved from the GPU load into a CPU model unchanged.
  igrad::save_weights(net, directory / "weights.pt");
  auto cpu = small_cnn(kCpu, torch::kFloat, /*seed=*/99);
  igrad::load_weights(cpu, directory / "weights.pt");
  const auto a = net->parameters(), b = cpu->parameters();
  for (size_t i = 0; i < a.size(); ++i) CHECK(torch::equal(a[i].cpu(), b[i]));
}
