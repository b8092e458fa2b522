// Times the plain training step against igrad's regularised step (SPEC §2) on the same model and
// batch, in one run, and measures each step's peak memory in fresh child processes (the median
// of three).
//
//   igrad_bench_training [--threads 1,2] [--steps 15] [--models small_cnn,resnet18]
//                        [--device cpu|cuda]
//
// Prints one line per figure; each line ends with the ratio regularised / plain. On CUDA the
// timers synchronise the device, and the memory lines (host peak RSS) are left out.
#include <igrad/igrad.hpp>
#include <igrad/models.hpp>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <torch/cuda.h>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

namespace {

struct Workload {
  std::string name;
  igrad::AnyModel model;
  torch::Tensor x, t;
};

Workload make_workload(const std::string& name, const torch::Device& device = torch::kCPU) {
  torch::manual_seed(0);
  if (name == "small_cnn") {
    igrad::models::SmallCNN model;
    model->to(device);
    return {name, model, torch::randn({128, 1, 28, 28}).to(device),
            torch::randint(0, 10, {128}, torch::kLong).to(device)};
  }
  if (name == "resnet18") {
    igrad::models::ResNet18 model(igrad::models::ResNet18Options().in_channels(3).classes(100));
    model->to(device);
    return {name, model, torch::randn({32, 3, 32, 32}).to(device),
            torch::randint(0, 100, {32}, torch::kLong).to(device)};
  }
  throw std::invalid_argument("unknown model '" + name + "'; expected small_cnn or resnet18");
}

// On CUDA the work is asynchronous: a timer must wait for it.
void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

void plain_step(Workload& w, torch::optim::Optimizer& optimizer) {
  optimizer.zero_grad();
  torch::nn::functional::cross_entropy(w.model(w.x), w.t).backward();
  optimizer.step();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

/// Child mode: peak resident memory added by `steps` steps of one kind, in KiB.
int measure_memory(const std::string& model, bool regularised, int threads) {
  torch::set_num_threads(threads);
  auto w = make_workload(model);
  w.model.train();
  torch::optim::Adam optimizer(w.model.parameters(), 1e-3);
  igrad::Trainer<> trainer(w.model, optimizer, igrad::TrainerOptions().lambda(7.5e-3));
  const long before = igrad::resident_memory_kib();
  for (int i = 0; i < 3; ++i) regularised ? (void)trainer.step(w.x, w.t) : plain_step(w, optimizer);
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  std::printf("%ld\n", usage.ru_maxrss - before);
  return 0;
}

long child_peak_kib(const std::string& self, const std::string& model, bool regularised, int threads) {
  const std::string command = fmt::format("'{}' --child-memory {} --child-kind {} --threads {}",
                                          self, model, regularised ? "regularised" : "plain", threads);
  std::FILE* pipe = ::popen(command.c_str(), "r");
  long kib = -1;
  if (pipe && std::fscanf(pipe, "%ld", &kib) != 1) kib = -1;
  if (pipe) ::pclose(pipe);
  return kib;
}

}  // namespace

int main(int argc, char** argv) {
  // Keep freed memory in the process: without this, glibc returns every step's temporaries to
  // the system and the timings measure page faults (see bench/README.md).
  igrad::tune_allocator();
  CLI::App app{"igrad: plain vs regularised training step"};
  std::vector<int> threads{1, 2};
  std::vector<std::string> models{"small_cnn", "resnet18"};
  int steps = 15;
  std::string device_name = "cpu";
  std::string child_model, child_kind;
  app.add_option("--threads", threads, "thread counts to measure")->delimiter(',');
  app.add_option("--models", models, "small_cnn, resnet18")->delimiter(',');
  app.add_option("--steps", steps, "timed steps of each kind")->check(CLI::Range(3, 1000));
  app.add_option("--device", device_name, "cpu, or cuda when torch::cuda::is_available()")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--child-memory", child_model)->group("");
  app.add_option("--child-kind", child_kind)->group("");
  CLI11_PARSE(app, argc, argv);
  if (!child_model.empty()) return measure_memory(child_model, child_kind == "regularised", threads.at(0));
  if (device_name == "cuda" && !torch::cuda::is_available()) {
    fmt::print(stderr, "--device cuda: torch::cuda::is_available() is false in this build\n");
    return 2;
  }
  const torch::Device device(device_name == "cuda" ? torch::kCUDA : torch::kCPU);

  fmt::print("# igrad {} / LibTorch {} on {}, tuned malloc, Adam, lambda 7.5e-3, CosineError + GuidedReLU\n",
             igrad::version_string, TORCH_VERSION, device.str());
  for (const auto& name : models) {
    for (int t : threads) {
      torch::set_num_threads(t);
      auto w = make_workload(name, device);
      w.model.train();
      torch::optim::Adam plain_optimizer(w.model.parameters(), 1e-3);
      auto w2 = make_workload(name, device);
      w2.model.train();
      torch::optim::Adam reg_optimizer(w2.model.parameters(), 1e-3);
      igrad::Trainer<> trainer(w2.model, reg_optimizer, igrad::TrainerOptions().lambda(7.5e-3));
      for (int i = 0; i < 2; ++i) {  // warm-up: allocator, optimizer state, kernels
        plain_step(w, plain_optimizer);
        trainer.step(w2.x, w2.t);
      }
      std::vector<double> plain, regularised, pair_ratios;
      for (int i = 0; i < steps; ++i) {  // interleaved, so load changes hit both alike
        synchronize(device);
        auto start = std::chrono::steady_clock::now();
        plain_step(w, plain_optimizer);
        synchronize(device);
        plain.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
        start = std::chrono::steady_clock::now();
        trainer.step(w2.x, w2.t);
        synchronize(device);
        regularised.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
        pair_ratios.push_back(regularised.back() / plain.back());
      }
      // The machine's speed drifts during a run; a plain step and the regularised step right
      // after it see the same conditions, so the median of their ratios is the steadier figure.
      const double p = median(plain), r = median(regularised), ratio = median(pair_ratios);
      fmt::print("time {} batch {} threads {}: plain {:.1f} ms, regularised {:.1f} ms (medians of "
                 "{}), ratio of medians {:.2f}, median of step-pair ratios {:.2f}\n",
                 name, w.x.size(0), t, p, r, steps, r / p, ratio);
      if (device.is_cuda()) {
        if (t == threads.front()) fmt::print("ratio {} {:.2f}\n", name, ratio);
        continue;
      }
      // Peak RSS varies from process to process with what the allocator keeps: median of three.
      const auto median_peak = [&](bool regularised) {
        std::vector<double> peaks;
        for (int run = 0; run < 3; ++run)
          peaks.push_back(static_cast<double>(child_peak_kib(argv[0], name, regularised, t)));
        return static_cast<long>(median(peaks));
      };
      const long mp = median_peak(false);
      const long mr = median_peak(true);
      fmt::print("memory {} batch {} threads {}: plain {:.1f} MiB, regularised {:.1f} MiB, ratio {:.2f}\n",
                 name, w.x.size(0), t, mp / 1024.0, mr / 1024.0,
                 mp > 0 ? static_cast<double>(mr) / static_cast<double>(mp) : 0.0);
      if (t == threads.front()) fmt::print("ratio {} {:.2f}\n", name, ratio);
    }
  }
  return 0;
}
