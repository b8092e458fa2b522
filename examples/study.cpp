// igrad's study runner: does the interpretable-gradient regulariser give better explanations,
// and at what accuracy cost? Trains seeds × λ grid × error functions, measures every run per test
// image, and reports paired-by-seed differences regularised − baseline with bootstrap 95 %
// confidence intervals (include/igrad/stats.hpp).
//
//  Phase 1: the baseline (λ = 0) and the grid error function (cosine) at each λ of the grid, for
//           every seed.
//  Phase 2: when phase 1 is complete, the other error functions at the best grid λ, chosen by the
//           rule in `choose_lambda` and written to best_lambda.txt (kept on later runs).
//
// Each run (model, error, λ, seed) writes its results into its own folder runs/<id>/, atomically
// (written as runs/<id>.partial/, then renamed), and is skipped when that folder exists: a killed
// study continues where it stopped, and training resumes from the run's last epoch checkpoint
// (kept under work/, outside the results). The report (report.md, differences.csv, runs.csv,
// figures) is rewritten after every run, and `--report-only` rewrites it from whatever finished.
//
// Under a launcher (torchrun, srun, mpirun, tools/launch/local.sh) the runs are shared out: rank r
// of W trains the runs of each phase whose index is r modulo W, into the same study folder. The
// ranks need no collective, only that folder: between the phases each rank waits until every
// phase-1 run has finished, and rank 0 alone writes the report, once every run has finished.
#include <igrad/distributed.hpp>
#include <igrad/igrad.hpp>
#include <igrad/stats.hpp>
#include <igrad/study.hpp>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------------------------------------
// Configuration

struct Config {
  std::string model = "small_cnn";
  std::string dataset = "fashion-mnist";
  std::string data_dir;
  int64_t image_size = 32;
  int64_t channels = 3;
  std::string device = "cpu";
  std::string optimizer = "adam";
  double momentum = 0.9;
  double weight_decay = 0;
  std::string schedule = "none";
  double warmup_epochs = 0;
  bool augment = false;
  std::vector<uint64_t> seeds{1, 2, 3};
  std::vector<double> lambdas{0, 7.5e-3, 1e-3, 3e-2, 1e-1, 3e-1};
  std::string grid_error = "cosine";
  std::vector<std::string> other_errors{"sigmoid", "centered-sigmoid", "histogram", "mae", "mse"};
  int64_t train_samples = 0;  // 0: the whole training split
  int64_t epochs = 3;
  int64_t batch_size = 128;
  double learning_rate = 1e-3;
  int64_t eval_samples = 2000;
  int64_t test_samples = 0;  // test images for the accuracy (0: all)
  int64_t localisation_samples = 1000;
  std::vector<std::string> methods{"GradCam", "GradCamPlusPlus", "ScoreCam"};
  int64_t resamples = 2000;
  int threads = 1;
  std::string output = "study";
  int64_t max_runs = 0;  // 0: no limit
  bool report_only = false;
  bool smoke = false;
};

/// Tiny settings that run the whole study (both phases, report) in about a minute.
void apply_smoke_settings(Config& c) {
  c.seeds = {1, 2};
  c.lambdas = {0, 0.1};
  c.other_errors = {"mse"};
  c.train_samples = 256;
  c.epochs = 1;
  c.batch_size = 64;
  c.eval_samples = 8;
  c.localisation_samples = 8;
  c.test_samples = 500;
  c.methods = {"GradCam", "ScoreCam"};
  c.resamples = 200;
}

std::string base_fingerprint(const Config& c);

/// The fixed settings every run of a study shares, written into each run's summary: a run folder
/// made with other settings is refused instead of mixed into the report.
std::string settings_fingerprint(const Config& c) {
  // The recipe enters only when it is not the default, so that studies begun before these
  // options existed keep their fingerprint.
  std::string recipe;
  if (c.optimizer != "adam" || c.weight_decay != 0)
    recipe += fmt::format(" optimizer={} momentum={} weight_decay={}", c.optimizer, c.momentum,
                          c.weight_decay);
  if (c.schedule != "none" || c.warmup_epochs != 0)
    recipe += fmt::format(" schedule={} warmup_epochs={}", c.schedule, c.warmup_epochs);
  if (c.augment) recipe += " augment=crop4+flip";
  if (c.test_samples > 0) recipe += fmt::format(" test_samples={}", c.test_samples);
  if (c.dataset.rfind("folder:", 0) == 0)
    recipe += fmt::format(" image_size={} channels={}", c.image_size, c.channels);
  return recipe.empty() ? base_fingerprint(c) : base_fingerprint(c) + recipe;
}

std::string base_fingerprint(const Config& c) {
  return fmt::format("model={} dataset={} train_samples={} epochs={} batch_size={} adam_lr={} "
                     "eval_samples={} localisation_samples={} methods={}",
                     c.model, c.dataset, c.train_samples, c.epochs, c.batch_size, c.learning_rate,
                     c.eval_samples, c.localisation_samples, fmt::join(c.methods, ","));
}

/// One training run of the study.
struct RunSpec {
  std::string error;  // the error function's class name; "none" for the baseline (λ = 0)
  double lambda = 0;
  uint64_t seed = 1;

  std::string id(const Config& c) const {
    return lambda == 0 ? fmt::format("{}_baseline_seed{}", c.model, seed)
                       : fmt::format("{}_{}_lambda{}_seed{}", c.model, error, lambda, seed);
  }
};

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

/// The class name of an error function given by any accepted name.
std::string error_class_name(const std::string& name) {
  std::string result;
  igrad::with_error_function(name, [&](auto type) {
    result = std::string(decltype(type)::type::name);
  });
  return result;
}

// ---------------------------------------------------------------------------------------------
// Data and models

struct Data {
  igrad::data::ImageDataset train, test;
  std::optional<igrad::data::ClutteredFashionMnist> cluttered;
};

Data load_data(const Config& c) {
  using namespace igrad::data;
  std::optional<ImageDataset> train, test;
  if (c.dataset.rfind("folder:", 0) == 0) {
    // The user's images: PATH/train/<class>/* and PATH/test/<class>/*, normalised with
    // statistics computed from (up to 5000 of) the training images.
    const fs::path root = c.dataset.substr(7);
    auto options = ImageFolderOptions().size(c.image_size, c.image_size).channels(c.channels);
    options.normalization(compute_normalization(ImageFolder(root / "train", options), 5000));
    train = ImageFolder(root / "train", options).load_all();
    test = ImageFolder(root / "test", options).load_all();
  } else if (c.dataset == "fashion-mnist") {
    auto options = FashionMnistOptions();
    if (!c.data_dir.empty()) options.directory(c.data_dir);
    train = FashionMnist(FashionMnistOptions(options).split(Split::train));
    test = FashionMnist(FashionMnistOptions(options).split(Split::test));
  } else if (c.dataset == "cifar10" || c.dataset == "cifar100") {
    if (c.data_dir.empty())
      throw igrad::InvalidArgument(fmt::format(
          "--dataset {} needs --data-dir: the folder holding the binary CIFAR files", c.dataset));
    if (c.dataset == "cifar10") {
      train = Cifar10(c.data_dir, CifarOptions().split(Split::train));
      test = Cifar10(c.data_dir, CifarOptions().split(Split::test));
    } else {
      train = Cifar100(c.data_dir, CifarOptions().split(Split::train));
      test = Cifar100(c.data_dir, CifarOptions().split(Split::test));
    }
  } else {
    throw igrad::InvalidArgument(fmt::format(
        "unknown dataset '{}'; expected fashion-mnist, cifar10, cifar100 or folder:PATH", c.dataset));
  }
  if (c.train_samples > 0 && c.train_samples < train->count()) train = train->slice(0, c.train_samples);
  Data d{*train, *test, std::nullopt};
  // One fixed cluttered set for every run, so that all runs are scored on the same images.
  if (c.dataset == "fashion-mnist") d.cluttered.emplace(*test, ClutteredOptions().seed(1));
  return d;
}

igrad::AnyModel make_model(const Config& c, int64_t in_channels, int64_t classes, uint64_t seed) {
  using namespace igrad::models;
  torch::manual_seed(seed);  // the runs of one seed start from the same weights
  igrad::AnyModel model = [&]() -> igrad::AnyModel {
    if (c.model == "small_cnn") return SmallCNN(SmallCNNOptions().in_channels(in_channels).classes(classes));
    if (c.model == "resnet18") return ResNet18(ResNet18Options().in_channels(in_channels).classes(classes));
    if (c.model == "mobilenet_v2")
      return MobileNetV2(MobileNetV2Options().in_channels(in_channels).classes(classes));
    throw igrad::InvalidArgument(
        fmt::format("unknown model '{}'; expected small_cnn, resnet18 or mobilenet_v2", c.model));
  }();
  if (c.device != "cpu") {  // parameters and buffers to the device, through the module's state
    torch::NoGradGuard no_grad;
    const torch::Device device(c.device);
    for (auto& p : model.parameters()) p.set_data(p.data().to(device));
    for (auto& b : model.buffers()) b.set_data(b.to(device));
  }
  return model;
}

/// Adam, or SGD with momentum and weight decay, at the base rate.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const Config& c, const igrad::AnyModel& model) {
  if (c.optimizer == "adam")
    return std::make_unique<torch::optim::Adam>(
        model.parameters(), torch::optim::AdamOptions(c.learning_rate).weight_decay(c.weight_decay));
  if (c.optimizer == "sgd")
    return std::make_unique<torch::optim::SGD>(
        model.parameters(),
        torch::optim::SGDOptions(c.learning_rate).momentum(c.momentum).weight_decay(c.weight_decay));
  throw igrad::InvalidArgument(fmt::format("unknown optimizer '{}'; expected adam or sgd", c.optimizer));
}

/// Optional linear warm-up, then a constant rate or cosine annealing to 0 at the last step.
igrad::LrSchedule make_schedule(const Config& c, int64_t steps_per_epoch) {
  const auto warmup = static_cast<int64_t>(std::llround(c.warmup_epochs * steps_per_epoch));
  igrad::LrSchedule after;
  if (c.schedule == "none") after = igrad::constant_lr();
  else if (c.schedule == "cosine")
    after = igrad::cosine_annealing(std::max<int64_t>(1, c.epochs * steps_per_epoch - warmup));
  else
    throw igrad::InvalidArgument(fmt::format("unknown schedule '{}'; expected none or cosine", c.schedule));
  return igrad::linear_warmup(warmup, after, warmup > 0 ? 1.0 / static_cast<double>(warmup) : 0.0);
}

// ---------------------------------------------------------------------------------------------
// One run: train (resuming from its checkpoint), evaluate per image, write its folder atomically

struct RunTimes {
  double train_seconds = 0, eval_seconds = 0;
};

/// Trains the run's model with error function E; a checkpoint per epoch under `work`.
template <class E>
igrad::AnyModel train_run(const Config& c, const Data& data, const RunSpec& run,
                          const fs::path& work) {
  auto model = make_model(c, data.train.images(0, 1).size(1), data.train.classes(), run.seed);
  auto optimizer = make_optimizer(c, model);
  // The baseline computes no regulariser at all (λ = 0 and no L_R reporting).
  igrad::Trainer<E, igrad::GuidedReLU> trainer(
      model, *optimizer, igrad::TrainerOptions().lambda(run.lambda).report_regulariser(run.lambda != 0));
  const auto loader_options =
      torch::data::DataLoaderOptions().batch_size(static_cast<size_t>(c.batch_size));
  auto stacked = igrad::data::ImageDataset(data.train).map(torch::data::transforms::Stack<>());
  // With --augment: random crop (padding 4) and horizontal flip of each batch.
  auto plain_loader = c.augment ? nullptr
                                : torch::data::make_data_loader<torch::data::samplers::RandomSampler>(
                                      stacked, loader_options);
  auto augmented_loader =
      c.augment ? torch::data::make_data_loader<torch::data::samplers::RandomSampler>(
                      igrad::data::ImageDataset(data.train)
                          .map(igrad::data::RandomCrop(4))
                          .map(igrad::data::RandomHorizontalFlip())
                          .map(torch::data::transforms::Stack<>()),
                      loader_options)
                : nullptr;
  const fs::path checkpoint = work / "checkpoint.pt";
  torch::manual_seed(run.seed + 1000);  // the shuffling stream of this seed
  // The checkpoint restores the RNG after the loader is built (building it draws from the RNG).
  // The schedule is a function of (epoch, step), which the checkpoint stores.
  if (fs::exists(checkpoint)) {
    const auto info = igrad::load_checkpoint(checkpoint, model, *optimizer);
    trainer.resume_at(info.next_epoch, info.global_step);
    fmt::print("resuming at epoch {} from {}\n", info.next_epoch + 1, checkpoint.string());
  }
  const int64_t steps_per_epoch = (data.train.count() + c.batch_size - 1) / c.batch_size;
  auto scheduler = igrad::LearningRateScheduler(make_schedule(c, steps_per_epoch), c.learning_rate);
  const auto fit = [&](auto& loader) {
    trainer.fit_to(loader, c.epochs, igrad::ProgressBar(stderr),
                   igrad::CsvLogger(work / "epochs.csv", work / "steps.csv"), scheduler,
                   igrad::Checkpoint(checkpoint));
  };
  if (c.augment) fit(augmented_loader);
  else fit(plain_loader);
  model.eval();
  return model;
}

/// Writes `values` as one CSV line: key, then each value.
void write_values(std::ostream& out, const std::string& key, const std::vector<double>& values) {
  out << key;
  for (double v : values) out << fmt::format(",{:.9g}", v);
  out << '\n';
}

void run_one(const Config& c, Data& data, const std::vector<igrad::Explainer>& explainers,
             const RunSpec& run, const fs::path& dir) {
  const auto id = run.id(c);
  const fs::path work = dir / "work" / id, partial = dir / "runs" / (id + ".partial"),
                 final_dir = dir / "runs" / id;
  fs::create_directories(work);
  const auto started = utc_now();
  fmt::print("== run {} ({}, lambda {}, seed {})\n", id, run.error, run.lambda, run.seed);
  std::fflush(stdout);
  RunTimes times;
  auto clock = std::chrono::steady_clock::now();
  const auto seconds_since = [](auto start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  std::optional<igrad::AnyModel> model;
  igrad::with_error_function(run.lambda == 0 ? c.grid_error : run.error, [&](auto type) {
    model = train_run<typename decltype(type)::type>(c, data, run, work);
  });
  times.train_seconds = seconds_since(clock);

  clock = std::chrono::steady_clock::now();
  const auto& test = data.test;
  const int64_t n = std::min(c.eval_samples, test.count());
  igrad::PerImageScores scores;
  const torch::Device device(c.device);
  const int64_t n_accuracy = c.test_samples > 0 ? std::min(c.test_samples, test.count()) : test.count();
  scores.values["accuracy"] = igrad::per_image_correct(
      *model, test.images(0, n_accuracy).to(device), test.labels().slice(0, 0, n_accuracy));
  const auto options = igrad::PerImageOptions().normalization(test.normalization());
  auto faithfulness = igrad::per_image_scores(
      *model, explainers, {test.images(0, n).to(device), test.labels().slice(0, 0, n).to(device)},
      options);
  scores.values.merge(faithfulness.values);
  if (data.cluttered && c.localisation_samples > 0) {
    auto& cluttered = *data.cluttered;
    const auto batch = cluttered.batch(0, std::min(c.localisation_samples, cluttered.count()));
    auto localisation = igrad::per_image_scores(
        *model, explainers, {batch.images.to(device), batch.labels.to(device), batch.boxes.to(device)},
        options);
    scores.values.merge(localisation.values);
  }
  times.eval_seconds = seconds_since(clock);

  // Written beside the final folder, then renamed: a run folder is complete or absent.
  fs::remove_all(partial);
  fs::create_directories(partial);
  {
    std::ofstream per_image(partial / "per_image.csv");
    for (const auto& [key, values] : scores.values) write_values(per_image, key, values);
    if (!per_image) throw igrad::Error(fmt::format("cannot write {}", (partial / "per_image.csv").string()));
  }
  const auto& acc = scores.values["accuracy"];
  double accuracy = 0;
  for (double v : acc) accuracy += v / static_cast<double>(acc.size());
  {
    std::ofstream summary(partial / "summary.txt");
    summary << fmt::format(
        "id={}\nerror={}\nlambda={}\nseed={}\nsettings={}\ntest_accuracy={:.4f}\n"
        "train_seconds={:.1f}\neval_seconds={:.1f}\nstarted={}\nfinished={}\nthreads={}\n",
        id, run.error, run.lambda, run.seed, settings_fingerprint(c), accuracy, times.train_seconds,
        times.eval_seconds, started, utc_now(), c.threads);
  }
  if (fs::exists(work / "epochs.csv")) fs::copy_file(work / "epochs.csv", partial / "epochs.csv");
  fs::rename(partial, final_dir);
  fmt::print("== finished {}: test accuracy {:.2f}%, training {:.0f} s, evaluation {:.0f} s\n", id,
             accuracy, times.train_seconds, times.eval_seconds);
  std::fflush(stdout);
}

// ---------------------------------------------------------------------------------------------
// Reading finished runs

struct RunResult {
  std::map<std::string, std::string> summary;
  std::map<std::string, std::vector<double>> values;
  std::string error() const { return summary.at("error"); }
  double lambda() const { return std::stod(summary.at("lambda")); }
  uint64_t seed() const { return std::stoull(summary.at("seed")); }
};

std::vector<RunResult> read_runs(const Config& c, const fs::path& dir) {
  std::vector<RunResult> runs;
  if (!fs::exists(dir / "runs")) return runs;
  std::vector<fs::path> folders;
  // A `.partial` folder is a run being written (by another rank) or one killed while writing.
  for (const auto& entry : fs::directory_iterator(dir / "runs"))
    if (entry.is_directory() && entry.path().extension() != ".partial" &&
        fs::exists(entry.path() / "summary.txt"))
      folders.push_back(entry.path());
  std::sort(folders.begin(), folders.end());
  for (const auto& folder : folders) {
    RunResult r;
    std::ifstream summary(folder / "summary.txt");
    for (std::string line; std::getline(summary, line);)
      if (auto eq = line.find('='); eq != std::string::npos)
        r.summary[line.substr(0, eq)] = line.substr(eq + 1);
    if (r.summary["settings"] != settings_fingerprint(c))
      throw igrad::InvalidArgument(fmt::format(
          "{} was made with other settings ({}); expected {}: use another --output", folder.string(),
          r.summary["settings"], settings_fingerprint(c)));
    std::ifstream per_image(folder / "per_image.csv");
    for (std::string line; std::getline(per_image, line);) {
      std::stringstream fields(line);
      std::string key, field;
      std::getline(fields, key, ',');
      auto& v = r.values[key];
      while (std::getline(fields, field, ',')) v.push_back(std::stod(field));
    }
    runs.push_back(std::move(r));
  }
  return runs;
}

// ---------------------------------------------------------------------------------------------
// The comparison: paired-by-seed differences with bootstrap intervals

struct Comparison {
  std::string error;
  double lambda = 0;
  std::vector<uint64_t> seeds{};
  /// Per quantity ("accuracy", "Grad-CAM/AD", ...), in the order of `quantities`.
  std::vector<std::string> quantities{};
  std::vector<double> baseline_mean{}, treated_mean{};
  std::vector<igrad::stats::PairedDifference> difference{};
  int better = 0, worse = 0, indistinguishable = 0;  // over the explanation metrics

  const igrad::stats::PairedDifference& of(const std::string& quantity) const {
    const auto at = std::find(quantities.begin(), quantities.end(), quantity);
    if (at == quantities.end()) throw igrad::InvalidArgument(fmt::format("no quantity '{}'", quantity));
    return difference[static_cast<size_t>(at - quantities.begin())];
  }
  bool has(const std::string& quantity) const {
    return std::find(quantities.begin(), quantities.end(), quantity) != quantities.end();
  }
};

std::string metric_of(const std::string& quantity) {
  const auto slash = quantity.find('/');
  return slash == std::string::npos ? quantity : quantity.substr(slash + 1);
}

double mean_of(const std::vector<std::vector<double>>& per_seed) {
  double total = 0;
  for (const auto& v : per_seed) {
    double sum = 0;
    for (double x : v) sum += x;
    total += sum / static_cast<double>(v.size());
  }
  return total / static_cast<double>(per_seed.size());
}

/// Every (error, λ > 0) configuration compared with the baselines of the seeds both have.
std::vector<Comparison> compare(const Config& c, const std::vector<RunResult>& runs) {
  std::map<uint64_t, const RunResult*> baselines;
  std::map<std::pair<std::string, double>, std::map<uint64_t, const RunResult*>> treated;
  for (const auto& r : runs) {
    if (r.lambda() == 0) baselines[r.seed()] = &r;
    else treated[{r.error(), r.lambda()}][r.seed()] = &r;
  }
  std::vector<Comparison> result;
  for (const auto& [config, by_seed] : treated) {
    Comparison cmp{config.first, config.second};
    for (const auto& [seed, run] : by_seed)
      if (baselines.count(seed)) cmp.seeds.push_back(seed);
    if (cmp.seeds.empty()) continue;
    for (const auto& [quantity, unused] : by_seed.at(cmp.seeds.front())->values) {
      std::vector<std::vector<double>> base, reg;
      for (auto seed : cmp.seeds) {
        base.push_back(baselines.at(seed)->values.at(quantity));
        reg.push_back(by_seed.at(seed)->values.at(quantity));
      }
      cmp.quantities.push_back(quantity);
      cmp.baseline_mean.push_back(mean_of(base));
      cmp.treated_mean.push_back(mean_of(reg));
      cmp.difference.push_back(igrad::stats::paired_bootstrap(
          base, reg, igrad::stats::BootstrapOptions().resamples(c.resamples).seed(2024)));
      if (quantity == "accuracy") continue;
      switch (cmp.difference.back().verdict(igrad::larger_is_better(metric_of(quantity)))) {
        case igrad::stats::Verdict::better: ++cmp.better; break;
        case igrad::stats::Verdict::worse: ++cmp.worse; break;
        default: ++cmp.indistinguishable;
      }
    }
    result.push_back(std::move(cmp));
  }
  // The grid error first, by λ; then the others.
  const auto grid = error_class_name(c.grid_error);
  std::stable_sort(result.begin(), result.end(), [&](const Comparison& a, const Comparison& b) {
    return std::make_tuple(a.error != grid, a.error, a.lambda) <
           std::make_tuple(b.error != grid, b.error, b.lambda);
  });
  return result;
}

/// The rule for the λ of phase 2: among the grid's λ > 0 whose accuracy cost is acceptable — its
/// 95 % interval contains 0, or the mean cost is under 1 point — the one with the lowest mean
/// Grad-CAM Average Drop difference (ties: the smaller λ); when none is acceptable, the λ with the
/// smallest accuracy cost.
/// The quantity the λ rule and the overview rank by.
const std::string kGradCamAd = std::string(igrad::GradCam::name) + "/AD";

constexpr const char* kLambdaRule =
    "among the cosine λ > 0 whose accuracy cost is acceptable (its 95 % interval contains 0, or "
    "the mean cost is under 1 point), the one with the lowest mean Grad-CAM Average Drop "
    "difference (ties: the smaller λ); when none is acceptable, the λ with the smallest "
    "accuracy cost";

std::optional<double> choose_lambda(const Config& c, const std::vector<Comparison>& comparisons) {
  const auto grid = error_class_name(c.grid_error);
  const Comparison* best = nullptr;
  for (const auto& cmp : comparisons) {
    if (cmp.error != grid || !cmp.has(kGradCamAd)) continue;
    const auto& acc = cmp.of("accuracy");
    if (!(acc.contains(0) || acc.mean > -1.0)) continue;
    if (!best || cmp.of(kGradCamAd).mean < best->of(kGradCamAd).mean) best = &cmp;
  }
  if (!best)
    for (const auto& cmp : comparisons)
      if (cmp.error == grid && (!best || cmp.of("accuracy").mean > best->of("accuracy").mean))
        best = &cmp;
  if (!best) return std::nullopt;
  return best->lambda;
}

// ---------------------------------------------------------------------------------------------
// The report

std::string interval(const igrad::stats::PairedDifference& d, const char* format = "{:+.3f}") {
  return fmt::format("{} [{}, {}]", fmt::format(fmt::runtime(format), d.mean),
                     fmt::format(fmt::runtime(format), d.lower),
                     fmt::format(fmt::runtime(format), d.upper));
}

/// The optimizer, schedule and augmentation in words.
std::string recipe_text(const Config& c) {
  std::string text = c.optimizer == "sgd"
                         ? fmt::format("SGD (lr {}, momentum {}, weight decay {})", c.learning_rate,
                                       c.momentum, c.weight_decay)
                         : fmt::format("Adam (lr {}{})", c.learning_rate,
                                       c.weight_decay > 0 ? fmt::format(", weight decay {}", c.weight_decay) : "");
  if (c.warmup_epochs > 0) text += fmt::format(", {} warm-up epoch(s)", c.warmup_epochs);
  if (c.schedule == "cosine") text += ", cosine annealing";
  if (c.augment) text += ", random crop (padding 4) and horizontal flip";
  return text;
}

void write_lambda_figures(const Config& c, const fs::path& dir,
                          const std::vector<Comparison>& comparisons) {
  const auto grid = error_class_name(c.grid_error);
  std::vector<const Comparison*> points;
  for (const auto& cmp : comparisons)
    if (cmp.error == grid) points.push_back(&cmp);
  if (points.size() < 2) return;  // a line needs two λ
  static const std::vector<igrad::Rgb> colors{{31, 119, 180}, {255, 127, 14}, {44, 160, 44},
                                              {214, 39, 40}, {148, 103, 189}};
  std::set<std::string> metrics;
  std::vector<std::string> methods;  // the explainers' names, in the order of the quantities
  for (const auto& q : points.front()->quantities) {
    metrics.insert(metric_of(q));
    const auto slash = q.find('/');
    if (slash != std::string::npos &&
        std::find(methods.begin(), methods.end(), q.substr(0, slash)) == methods.end())
      methods.push_back(q.substr(0, slash));
  }
  for (const auto& metric : metrics) {
    std::vector<igrad::Series> series;
    size_t k = 0;
    for (const auto& method : methods) {
      const auto quantity = metric == "accuracy" ? metric : method + "/" + metric;
      if (metric == "accuracy" && k > 0) break;
      igrad::Series mean{metric == "accuracy" ? "accuracy" : method, {}, {}, colors[k % colors.size()]};
      auto light = mean.color;
      for (auto& v : light) v = static_cast<uint8_t>(v + (255 - v) * 6 / 10);
      igrad::Series lower{"95% CI", {}, {}, light}, upper{"", {}, {}, light};
      for (const auto* cmp : points) {
        if (!cmp->has(quantity)) continue;
        const auto& d = cmp->of(quantity);
        const double x = std::log10(cmp->lambda);
        mean.x.push_back(x), lower.x.push_back(x), upper.x.push_back(x);
        mean.y.push_back(d.mean), lower.y.push_back(d.lower), upper.y.push_back(d.upper);
      }
      series.push_back(mean), series.push_back(lower), series.push_back(upper);
      ++k;
    }
    igrad::write_png(
        (dir / fmt::format("lambda_{}.png", metric)).string(),
        igrad::line_plot(series, igrad::PlotOptions().height(420).x_label("log10 lambda").title(
                                     fmt::format("{}: regularised - baseline", metric))));
  }
}

/// Side by side, per method, the maps of the first seed's baseline (B) and of its model at the
/// chosen λ of the grid error (R), on two test images of each of the first four classes:
/// `maps.png`. Needs both runs' final checkpoints in `work/`; returns whether it was written.
bool write_maps_figure(const Config& c, const fs::path& dir, const Data& data,
                       const std::vector<igrad::Explainer>& explainers, std::optional<double> lambda) {
  if (!lambda || c.seeds.empty()) return false;
  const auto seed = c.seeds.front();
  const RunSpec base_spec{"none", 0.0, seed}, reg_spec{error_class_name(c.grid_error), *lambda, seed};
  const auto base_checkpoint = dir / "work" / base_spec.id(c) / "checkpoint.pt";
  const auto reg_checkpoint = dir / "work" / reg_spec.id(c) / "checkpoint.pt";
  if (!fs::exists(dir / "runs" / base_spec.id(c)) || !fs::exists(dir / "runs" / reg_spec.id(c)) ||
      !fs::exists(base_checkpoint) || !fs::exists(reg_checkpoint))
    return false;
  const torch::Device device(c.device);
  const auto load = [&](const fs::path& checkpoint) {
    auto model = make_model(c, data.test.images(0, 1).size(1), data.test.classes(), seed);
    auto optimizer = make_optimizer(c, model);
    igrad::load_checkpoint(checkpoint, model, *optimizer);
    model.eval();
    return model;
  };
  const auto base = load(base_checkpoint), reg = load(reg_checkpoint);
  // Two images of each of the first four classes, so the figure shows varied items.
  const auto labels = data.test.labels();
  const auto index = torch::tensor(igrad::first_per_class(labels, 4, 2));
  const auto images = data.test.images().index_select(0, index).to(device);
  const auto targets = labels.index_select(0, index).to(device);
  auto columns = std::vector{igrad::method_explainer<igrad::Gradient>("grad"),
                             igrad::method_explainer<igrad::GuidedBackprop>("guided")};
  columns.insert(columns.end(), explainers.begin(), explainers.end());
  const int64_t scale = images.size(2) <= 32 ? 3 : 1;
  igrad::write_png((dir / "maps.png").string(),
                   igrad::comparison_grid({{"B", base}, {"R", reg}}, images, targets, columns,
                                          igrad::ExplanationGridOptions().scale(scale).padding(4)));
  return true;
}

void write_report(const Config& c, const fs::path& dir, const std::vector<RunResult>& runs,
                  const std::vector<Comparison>& comparisons, std::optional<double> best_lambda,
                  bool phase1_complete) {
  {
    std::ofstream csv(dir / "runs.csv");
    csv << "id,error,lambda,seed,test_accuracy,train_seconds,eval_seconds,started,finished\n";
    for (const auto& r : runs)
      csv << fmt::format("{},{},{},{},{},{},{},{},{}\n", r.summary.at("id"), r.error(),
                         r.summary.at("lambda"), r.seed(), r.summary.at("test_accuracy"),
                         r.summary.at("train_seconds"), r.summary.at("eval_seconds"),
                         r.summary.at("started"), r.summary.at("finished"));
  }
  {
    std::ofstream csv(dir / "differences.csv");
    csv << "error,lambda,quantity,larger_is_better,seeds,paired_values,baseline_mean,"
           "regularised_mean,difference,ci_lower,ci_upper,verdict,per_seed_differences\n";
    for (const auto& cmp : comparisons)
      for (size_t i = 0; i < cmp.quantities.size(); ++i) {
        const auto& d = cmp.difference[i];
        const bool larger = igrad::larger_is_better(metric_of(cmp.quantities[i]));
        csv << fmt::format("{},{},{},{},{},{},{:.6g},{:.6g},{:.6g},{:.6g},{:.6g},{},{:.6g}\n",
                           cmp.error, cmp.lambda, cmp.quantities[i], larger, cmp.seeds.size(),
                           d.samples, cmp.baseline_mean[i], cmp.treated_mean[i], d.mean, d.lower,
                           d.upper, igrad::stats::to_string(d.verdict(larger)),
                           fmt::join(d.per_seed, " "));
      }
  }
  write_lambda_figures(c, dir, comparisons);

  double run_seconds = 0;
  for (const auto& r : runs)
    run_seconds += std::stod(r.summary.at("train_seconds")) + std::stod(r.summary.at("eval_seconds"));
  const size_t planned = c.seeds.size() * (c.lambdas.size() + c.other_errors.size());
  std::string command;
  if (std::ifstream in(dir / "command.txt"); in) std::getline(in, command);

  std::ofstream md(dir / "report.md");
  md << "# Study: does the interpretable-gradient regulariser give better explanations?\n\n";
  md << fmt::format(
      "{}Model {}, dataset {}, {}, batch {}, {} epoch(s) on {} training images; seeds {}; "
      "grid error {} at λ ∈ {{{}}}; other error functions {} at the best grid λ. Metrics on the "
      "first {} test images (AD/AI/AG in %, insertion/deletion AUC), the pointing games on the "
      "first {} cluttered test items, accuracy on {}. Masking is in pixel space (SPEC §5); "
      "insertion starts from igrad's default blur (`BlurConvention::sampled`: the sampled "
      "Gaussian, 11 taps, σ 5, replicate padding in pixel space), not RISE's (point-filtered "
      "kernel, zero padding in normalised space), which gives other insertion values.\n\n",
      c.smoke ? "**Smoke settings: numbers are not meaningful.** " : "", c.model, c.dataset,
      recipe_text(c), c.batch_size, c.epochs,
      c.train_samples > 0 ? fmt::format("{}", c.train_samples) : std::string("all"),
      fmt::join(c.seeds, ", "), c.grid_error, fmt::join(c.lambdas, ", "),
      fmt::join(c.other_errors, ", "), c.eval_samples, c.localisation_samples,
      c.test_samples > 0 ? fmt::format("the first {} test images", c.test_samples)
                         : std::string("the whole test set"));
  md << fmt::format("Command: `{}`\n\n", command);
  md << fmt::format(
      "Progress: {} of {} runs finished ({}); their training and evaluation took {:.1f} h of wall "
      "time in all ({} thread(s) each).\n\n",
      runs.size(), planned, runs.size() >= planned ? "complete" : "**partial: the numbers below "
      "cover only the finished runs**", run_seconds / 3600, c.threads);
  md << "## How to read the numbers\n\n"
        "For each configuration (error function, λ) and each quantity: the mean difference "
        "regularised − baseline, paired by seed (the same seed gives both models the same initial "
        "weights and batch order) and by test image, averaged over seeds; in brackets its 95 % "
        "bootstrap confidence interval, resampling the test images within each seed "
        "(" + std::to_string(c.resamples) + " resamples). The interval covers the test-image "
        "sampling for these trained models; the spread between seeds is in `differences.csv` "
        "(per_seed_differences). A quantity is *better* or *worse* when its interval excludes 0 on "
        "that side (lower is better for AD and Deletion, higher for the rest), else "
        "*indistinguishable*. The counts are over the explanation metrics (accuracy excluded).\n\n";
  md << "## Overview\n\n| error | λ | seeds | accuracy cost (points) | better | worse | "
        "indistinguishable | Grad-CAM AD difference |\n|---|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& cmp : comparisons)
    md << fmt::format("| {} | {} | {} | {} | {} | {} | {} | {} |\n", cmp.error, cmp.lambda,
                      cmp.seeds.size(), interval(cmp.of("accuracy"), "{:+.2f}"), cmp.better,
                      cmp.worse, cmp.indistinguishable,
                      cmp.has(kGradCamAd) ? interval(cmp.of(kGradCamAd), "{:+.2f}") : "–");
  md << "\n## Choice of λ for the other error functions\n\nRule: " << kLambdaRule << ".\n\n";
  if (best_lambda)
    md << fmt::format("Chosen: **λ = {}**{}.\n\n", *best_lambda,
                      phase1_complete ? "" : " (provisional: the grid is not complete)");
  else
    md << "Not chosen yet: no grid run has finished.\n\n";
  md << "Note: λ is chosen on the same test images the report evaluates, so the other error "
        "functions' comparison at that λ is mildly favoured by the choice; the full cosine grid is "
        "reported as it is.\n\n";
  for (const auto& cmp : comparisons) {
    md << fmt::format("## {} at λ = {} ({} seed(s): {})\n\n", cmp.error, cmp.lambda,
                      cmp.seeds.size(), fmt::join(cmp.seeds, ", "));
    md << "| quantity | baseline | regularised | difference [95 % CI] | verdict |\n"
          "|---|---:|---:|---:|:---:|\n";
    for (size_t i = 0; i < cmp.quantities.size(); ++i) {
      const auto& d = cmp.difference[i];
      const bool larger = igrad::larger_is_better(metric_of(cmp.quantities[i]));
      const bool auc = metric_of(cmp.quantities[i]) == "Insertion" || metric_of(cmp.quantities[i]) == "Deletion";
      md << fmt::format("| {} | {:.{}f} | {:.{}f} | {} | {} |\n", cmp.quantities[i],
                        cmp.baseline_mean[i], auc ? 4 : 2, cmp.treated_mean[i], auc ? 4 : 2,
                        interval(d, auc ? "{:+.4f}" : "{:+.2f}"),
                        igrad::stats::to_string(d.verdict(larger)));
    }
    md << "\n";
  }
  md << "## Figures\n\n";
  if (fs::exists(dir / "maps.png"))
    md << fmt::format(
        "![maps](maps.png)\n\nSeed {}: the baseline (B) and the model trained with the {} error at "
        "the chosen λ (R), side by side for each method — the standard input gradient, the "
        "guided-backprop gradient, then each CAM method — on two test images of each of the first "
        "four classes (rows).\n\n",
        c.seeds.front(), c.grid_error);
  md << "Each metric's difference regularised − baseline against log10 λ (cosine "
        "error), per CAM method, with its 95 % interval (light lines): `lambda_<metric>.png`.\n\n";
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().filename().string().rfind("lambda_", 0) == 0 && entry.path().extension() == ".png")
      md << fmt::format("![{}]({})\n", entry.path().stem().string(), entry.path().filename().string());
  md << "\n## Files\n\n`runs/<id>/` per run: `summary.txt` (settings, accuracy, timings), "
        "`per_image.csv` (every metric per test image: one line per quantity), `epochs.csv` "
        "(training log). `runs.csv`, `differences.csv` (every quantity of every configuration), "
        "`best_lambda.txt`. Checkpoints stay in `work/` (not in git).\n";
}

// ---------------------------------------------------------------------------------------------
// The study

using igrad::distributed::LaunchEnvironment;

/// Whether this process trains run `index` of a phase: rank r of W takes the runs whose index is
/// r modulo W (a world of one takes them all).
bool takes(const LaunchEnvironment& launch, size_t index) {
  return static_cast<int64_t>(index) % launch.world_size == launch.rank;
}

bool finished_run(const Config& c, const RunSpec& spec, const fs::path& dir) {
  return fs::exists(dir / "runs" / spec.id(c) / "summary.txt");
}

/// Runs this process's share of `specs` that have not finished; returns false when --max-runs
/// stopped it.
bool run_all(const Config& c, Data& data, const std::vector<igrad::Explainer>& explainers,
             const std::vector<RunSpec>& specs, const LaunchEnvironment& launch,
             const fs::path& dir, int64_t& runs_done, const std::function<void()>& after_each) {
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& spec = specs[i];
    if (!takes(launch, i) || finished_run(c, spec, dir)) continue;
    if (c.max_runs > 0 && runs_done >= c.max_runs) return false;
    run_one(c, data, explainers, spec, dir);
    ++runs_done;
    after_each();
  }
  return true;
}

/// Waits until every run of `specs` has finished (the other ranks' share). A rank that fails
/// makes the launcher stop the others (torchrun, `srun --kill-on-bad-exit`, local.sh), so no
/// timeout here: a run may take hours.
void wait_for_runs(const Config& c, const std::vector<RunSpec>& specs,
                   const LaunchEnvironment& launch, const fs::path& dir, std::string_view what) {
  auto last_message = std::chrono::steady_clock::now() - std::chrono::hours(1);
  for (;;) {
    std::vector<std::string> missing;
    for (const auto& spec : specs)
      if (!finished_run(c, spec, dir)) missing.push_back(spec.id(c));
    if (missing.empty()) return;
    if (std::chrono::steady_clock::now() - last_message > std::chrono::minutes(10)) {
      fmt::print("rank {}: waiting for {} of the other ranks: {}\n", launch.rank, what,
                 fmt::join(missing, ", "));
      std::fflush(stdout);
      last_message = std::chrono::steady_clock::now();
    }
    std::this_thread::sleep_for(std::chrono::seconds(2));
  }
}

}  // namespace

int main(int argc, char** argv) {
  igrad::tune_allocator();
  Config c;
  CLI::App app{"igrad study: seeds x lambda grid x error functions, with confidence intervals"};
  app.add_option("--model", c.model, "small_cnn, resnet18 or mobilenet_v2")->capture_default_str();
  app.add_option("--dataset", c.dataset, "fashion-mnist, cifar10, cifar100 or folder:PATH (PATH/train/<class>/*, PATH/test/<class>/*)")->capture_default_str();
  app.add_option("--data-dir", c.data_dir, "dataset folder (CIFAR: required; Fashion-MNIST: Debian's by default)");
  app.add_option("--image-size", c.image_size, "folder:PATH: images are resized to this square size")->capture_default_str();
  app.add_option("--channels", c.channels, "folder:PATH: 1 (grey) or 3 (RGB)")->capture_default_str();
  app.add_option("--device", c.device, "cpu or cuda")->capture_default_str();
  app.add_option("--optimizer", c.optimizer, "adam or sgd")->capture_default_str();
  app.add_option("--momentum", c.momentum, "SGD momentum")->capture_default_str();
  app.add_option("--weight-decay", c.weight_decay, "weight decay of either optimizer")->capture_default_str();
  app.add_option("--schedule", c.schedule, "learning-rate schedule: none or cosine (to 0 at the last step)")->capture_default_str();
  app.add_option("--warmup-epochs", c.warmup_epochs, "linear warm-up before the schedule, in epochs")->capture_default_str();
  app.add_flag("--augment", c.augment, "random crop (padding 4) and horizontal flip of training batches");
  app.add_option("--seeds", c.seeds, "seeds (weights and batch order)")->delimiter(',')->capture_default_str();
  app.add_option("--lambdas", c.lambdas, "λ grid of the grid error function; 0 is the baseline")->delimiter(',')->capture_default_str();
  app.add_option("--grid-error", c.grid_error, "error function of the λ grid")->capture_default_str();
  app.add_option("--other-errors", c.other_errors, "error functions run at the best grid λ")->delimiter(',')->capture_default_str();
  app.add_option("--train-samples", c.train_samples, "training images (0: all)")->capture_default_str();
  app.add_option("--epochs", c.epochs, "epochs per run")->capture_default_str()->check(CLI::Range(1, 10000));
  app.add_option("--batch-size", c.batch_size, "training batch size")->capture_default_str()->check(CLI::Range(1, 100000));
  app.add_option("--learning-rate", c.learning_rate, "base learning rate")->capture_default_str();
  app.add_option("--test-samples", c.test_samples, "test images for the accuracy (0: all)")->capture_default_str();
  app.add_option("--eval-samples", c.eval_samples, "test images for AD/AI/AG/insertion/deletion")->capture_default_str();
  app.add_option("--localisation-samples", c.localisation_samples, "cluttered test items for the pointing games (0: none)")->capture_default_str();
  app.add_option("--methods", c.methods, "CAM methods (class names)")->delimiter(',')->capture_default_str();
  app.add_option("--resamples", c.resamples, "bootstrap resamples")->capture_default_str()->check(CLI::Range(1, 1000000));
  app.add_option("--threads", c.threads, "CPU threads")->capture_default_str()->check(CLI::Range(1, 256));
  app.add_option("--output", c.output, "study folder (results, report, work/ for checkpoints)")->capture_default_str();
  app.add_option("--max-runs", c.max_runs, "stop after this many runs (0: no limit); rerun to continue")->capture_default_str();
  app.add_flag("--report-only", c.report_only, "only rewrite the report from the finished runs");
  app.add_flag("--smoke", c.smoke, "tiny settings: checks the whole study in about a minute");
  CLI11_PARSE(app, argc, argv);
  if (c.smoke) apply_smoke_settings(c);

  try {
    torch::set_num_threads(c.threads);
    if (c.device != "cpu" && !torch::cuda::is_available())
      throw igrad::InvalidArgument(fmt::format("--device {}, but LibTorch sees no CUDA device; expected cpu", c.device));
    igrad::detail::require(std::find(c.lambdas.begin(), c.lambdas.end(), 0.0) != c.lambdas.end(),
                           "--lambdas {} lacks 0; expected the baseline λ = 0 in the grid",
                           fmt::join(c.lambdas, ","));
    for (double l : c.lambdas)
      igrad::detail::require(std::isfinite(l) && l >= 0, "--lambdas holds {}; expected values >= 0", l);
    const auto grid_error = error_class_name(c.grid_error);
    std::vector<std::string> others;
    for (const auto& e : c.other_errors) others.push_back(error_class_name(e));
    const auto launch = LaunchEnvironment::from_environment();
    const fs::path dir = fs::absolute(c.output);
    fs::create_directories(dir / "runs");
    if (launch.rank > 0 && c.report_only) return 0;  // rank 0 writes it
    if (!c.report_only && launch.rank == 0) {
      std::ofstream command(dir / "command.txt");
      std::vector<std::string> args(argv, argv + argc);
      command << fmt::format("{}\n", fmt::join(args, " "));
    }
    const auto explainers = igrad::cam_explainers_by_name(c.methods, igrad::CamOptions().batch_size(256));

    Data data = load_data(c);
    std::optional<double> best;
    bool phase1_complete = false;
    const auto report = [&] {
      const auto runs = read_runs(c, dir);
      const auto comparisons = compare(c, runs);
      auto lambda = best ? best : choose_lambda(c, comparisons);
      write_maps_figure(c, dir, data, explainers, lambda);
      write_report(c, dir, runs, comparisons, lambda, phase1_complete || best.has_value());
    };
    if (std::ifstream in(dir / "best_lambda.txt"); in) {
      double l = 0;
      if (in >> l) best = l;
    }
    if (c.report_only) {
      report();
      fmt::print("report: {}\n", (dir / "report.md").string());
      return 0;
    }

    fmt::print("data: {} training, {} test images; settings: {}\n", data.train.count(),
               data.test.count(), settings_fingerprint(c));
    if (launch.world_size > 1)
      fmt::print("rank {} of {} ({}): runs {} modulo {} of each phase\n", launch.rank,
                 launch.world_size, launch.launcher, launch.rank, launch.world_size);
    // Only rank 0 writes the report, so that no two processes write the same files.
    const std::function<void()> after_each = [&] {
      if (launch.rank == 0) report();
    };
    int64_t runs_done = 0;
    std::vector<RunSpec> phase1;
    for (double l : c.lambdas)
      for (auto seed : c.seeds) phase1.push_back({l == 0 ? "none" : grid_error, l, seed});
    bool finished = run_all(c, data, explainers, phase1, launch, dir, runs_done, after_each);
    if (finished) {
      if (launch.world_size > 1) wait_for_runs(c, phase1, launch, dir, "phase-1 runs");
      phase1_complete = true;
      if (!best) {
        // Every rank reads the same finished runs, so every rank chooses the same λ.
        best = choose_lambda(c, compare(c, read_runs(c, dir)));
        igrad::detail::require<igrad::Error>(best.has_value(), "no λ > 0 in the grid to choose from");
        if (launch.rank == 0) std::ofstream(dir / "best_lambda.txt") << fmt::format("{}\n", *best);
        fmt::print("phase 2: the other error functions at lambda {}\n", *best);
      }
      std::vector<RunSpec> phase2;
      for (const auto& e : others)
        if (e != grid_error)
          for (auto seed : c.seeds) phase2.push_back({e, *best, seed});
      finished = run_all(c, data, explainers, phase2, launch, dir, runs_done, after_each);
      if (finished && launch.world_size > 1) {
        if (launch.rank > 0) {
          fmt::print("rank {}: its runs are finished; rank 0 writes the report\n", launch.rank);
          return 0;
        }
        wait_for_runs(c, phase2, launch, dir, "phase-2 runs");
      }
    }
    if (launch.rank > 0) {
      fmt::print("rank {}: stopped by --max-runs (rerun to continue)\n", launch.rank);
      return 0;
    }
    report();
    fmt::print("{}; report: {}\n", finished ? "study complete" : "stopped by --max-runs (rerun to continue)",
               (dir / "report.md").string());
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "igrad study failed: {}\n", e.what());
    return 1;
  }
}
