// Times the plain training step against igrad's regularised step (SPEC §2) on the same model and
// batch, in one run, and measures each step's peak memory in fresh child processes (the median
// of three).
//
//   igrad_bench_training [--threads 1,2] [--steps 15] [--models small_cnn,resnet18]
//                        [--device cpu|cuda] [--processes N]
//
// Prints one line per figure; each line ends with the ratio regularised / plain. On CUDA the
// timers synchronise the device, and the memory lines (host peak RSS) are left out.
//
// --processes N measures data-parallel scaling instead: the regularised step at the same global
// batch (SmallCNN 128, ResNet-18 32) in 1 process × 1 thread, then in N processes × 1 thread on
// 127.0.0.1 (Gloo, igrad::distributed::DataParallel), each process a child of this one; prints
// the share of the step spent averaging gradients and `scaling <model> <efficiency>` with
// efficiency = (throughput of N ranks / throughput of 1) / N.
#include <igrad/distributed.hpp>
#include <igrad/igrad.hpp>
#include <igrad/models.hpp>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <torch/cuda.h>

#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
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

/// A TCP port on 127.0.0.1 that nothing listens on right now.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0)
    throw std::runtime_error("cannot find a free port on 127.0.0.1");
  ::close(fd);
  return ntohs(address.sin_port);
}

/// CPU time of this process (all its threads, Gloo's included), in ms.
double process_cpu_ms() {
  timespec t{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return 1e3 * static_cast<double>(t.tv_sec) + 1e-6 * static_cast<double>(t.tv_nsec);
}

/// Child mode of --processes: this rank's share of the global batch, `steps` regularised steps
/// with the gradients averaged across the process group the environment describes. Prints the
/// median step time, the median time spent averaging gradients and the median CPU time of a
/// step, in ms.
int measure_scaling(const std::string& model, int steps) {
  torch::set_num_threads(1);
  auto group = igrad::distributed::ProcessGroup::from_environment();
  auto w = make_workload(model);
  const auto [begin, end] = group.shard(w.x.size(0));
  const auto x = w.x.slice(0, begin, end), t = w.t.slice(0, begin, end);
  torch::optim::Adam optimizer(w.model.parameters(), 1e-3);
  igrad::Trainer<> trainer(w.model, optimizer, igrad::TrainerOptions().lambda(7.5e-3));
  igrad::distributed::DataParallel parallel(group);
  struct StepTimer {
    igrad::distributed::DataParallel* parallel;
    std::vector<double> step_ms{}, communication_ms{}, cpu_ms{};
    std::chrono::steady_clock::time_point last = std::chrono::steady_clock::now();
    double last_communication = 0, last_cpu = process_cpu_ms();
    void on_batch_end(igrad::TrainerState&, const igrad::StepResult&) {
      const auto now = std::chrono::steady_clock::now();
      const double cpu = process_cpu_ms();
      step_ms.push_back(std::chrono::duration<double, std::milli>(now - last).count());
      communication_ms.push_back(1e3 * (parallel->communication_seconds() - last_communication));
      cpu_ms.push_back(cpu - last_cpu);
      last = now;
      last_cpu = cpu;
      last_communication = parallel->communication_seconds();
    }
  } timer{&parallel};
  const int warm_up = 2;
  std::vector<torch::data::Example<>> batches(static_cast<std::size_t>(warm_up + steps), {x, t});
  timer.last = std::chrono::steady_clock::now();
  timer.last_cpu = process_cpu_ms();
  trainer.fit(batches, 1, parallel, timer);
  const std::vector<double> step(timer.step_ms.begin() + warm_up, timer.step_ms.end());
  const std::vector<double> communication(timer.communication_ms.begin() + warm_up,
                                          timer.communication_ms.end());
  const std::vector<double> cpu(timer.cpu_ms.begin() + warm_up, timer.cpu_ms.end());
  std::printf("%f %f %f\n", median(step), median(communication), median(cpu));
  return 0;
}

/// Medians of one scaling run, in ms: rank 0's step and communication, the busiest rank's CPU.
struct ScalingFigures {
  double step = -1, communication = -1, cpu = -1;
};

/// Runs `processes` ranks of `--child-scaling` (a world of one without launcher variables).
ScalingFigures scaling_run(const std::string& self, const std::string& model,
                                      int steps, int processes) {
  const int port = free_port();
  std::vector<std::FILE*> pipes;
  for (int rank = 0; rank < processes; ++rank) {
    const std::string env =
        processes == 1 ? std::string("env -u RANK -u WORLD_SIZE")
                       : fmt::format("env RANK={} LOCAL_RANK={} WORLD_SIZE={} MASTER_ADDR=127.0.0.1 "
                                     "MASTER_PORT={}",
                                     rank, rank, processes, port);
    pipes.push_back(::popen(
        fmt::format("{} '{}' --child-scaling {} --steps {}", env, self, model, steps).c_str(), "r"));
  }
  ScalingFigures figures;
  bool failed = false;
  for (int rank = 0; rank < processes; ++rank) {
    double s = -1, c = -1, u = -1;
    if (pipes[rank] && std::fscanf(pipes[rank], "%lf %lf %lf", &s, &c, &u) != 3) s = c = u = -1;
    if (pipes[rank]) ::pclose(pipes[rank]);
    if (rank == 0) figures.step = s, figures.communication = c;
    failed = failed || u < 0;
    figures.cpu = std::max(figures.cpu, u);
  }
  if (failed) figures.cpu = -1;
  return figures;
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
  std::string child_model, child_kind, child_scaling;
  int processes = 0;
  app.add_option("--threads", threads, "thread counts to measure")->delimiter(',');
  app.add_option("--models", models, "small_cnn, resnet18")->delimiter(',');
  app.add_option("--steps", steps, "timed steps of each kind")->check(CLI::Range(3, 1000));
  app.add_option("--device", device_name, "cpu, or cuda when torch::cuda::is_available()")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--processes", processes,
                 "measure data-parallel scaling over this many processes × 1 thread instead")
      ->check(CLI::Range(2, 64));
  app.add_option("--child-memory", child_model)->group("");
  app.add_option("--child-scaling", child_scaling)->group("");
  app.add_option("--child-kind", child_kind)->group("");
  CLI11_PARSE(app, argc, argv);
  if (!child_model.empty()) return measure_memory(child_model, child_kind == "regularised", threads.at(0));
  if (!child_scaling.empty()) return measure_scaling(child_scaling, steps);
  if (processes > 0) {
    fmt::print("# igrad {} / LibTorch {}: regularised step, 1 process x 1 thread vs {} processes "
               "x 1 thread (Gloo on 127.0.0.1) at the same global batch, medians of {} steps\n",
               igrad::version_string, TORCH_VERSION, processes, steps);
    for (const auto& name : models) {
      const auto one = scaling_run(argv[0], name, steps, 1);
      const auto many = scaling_run(argv[0], name, steps, processes);
      if (one.step <= 0 || many.step <= 0 || one.cpu <= 0 || many.cpu <= 0) {
        fmt::print(stderr, "{}: a child process failed\n", name);
        return 1;
      }
      const auto global_batch = make_workload(name).x.size(0);
      fmt::print("processes {} global batch {}: 1 rank {:.1f} ms/step, {} ranks {:.1f} ms/step, "
                 "throughput ratio {:.2f}, communication {:.1f} ms ({:.0f}% of the step); CPU "
                 "time per step: 1 rank {:.1f} ms, busiest of {} ranks {:.1f} ms\n",
                 name, global_batch, one.step, processes, many.step, one.step / many.step,
                 many.communication, 100 * many.communication / many.step, one.cpu, processes,
                 many.cpu);
      fmt::print("scaling {} {:.2f}\n", name, one.step / many.step / processes);
      // On a machine busy with other work the wall times measure the scheduler: the CPU time of
      // the busiest rank is what the step would take on cores of its own.
      fmt::print("scaling-cpu {} {:.2f}\n", name, one.cpu / many.cpu / processes);
      std::fflush(stdout);  // a run of minutes: show each model's figures as they come
    }
    return 0;
  }
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
