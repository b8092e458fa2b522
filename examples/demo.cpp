// igrad's main demo: reproduces the seed paper's experiment (Torres Figueroa et al., VISAPP 2024)
// on Fashion-MNIST and writes a report a person reads.
//
//  1. λ sweep on a validation split: for each λ, a short regularised training; λ is chosen as the
//     one whose Grad-CAM Average Drop on the validation images is lowest among those whose
//     validation accuracy is within 1 point of λ = 0's (ties: the smaller λ).
//  2. A baseline (λ = 0) and a regularised model (chosen λ), same seed and schedule.
//  3. Test accuracy; AD / AI / AG / insertion / deletion for Grad-CAM, Grad-CAM++ and Score-CAM;
//     Sparseness, Complexity, ROAD, faithfulness correlation and infidelity (Quantus, captum and
//     pytorch-grad-cam's measures); pointing game and energy-based pointing game on cluttered
//     Fashion-MNIST; the model parameter randomisation sanity check of Grad-CAM on both models.
//  4. report.md with tables: each difference regularised − baseline with its 95 % bootstrap
//     confidence interval over the test images, and whether it is better, worse or
//     indistinguishable; CSV files and PNG figures.
//
// Every training run checkpoints each epoch; --resume continues stopped runs to the same result.
#include <igrad/distributed.hpp>
#include <igrad/igrad.hpp>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------------------------------------
// Configuration

struct Config {
  std::string model = "small_cnn";
  std::string dataset = "fashion-mnist";
  std::string data_dir;
  std::string error = "cosine";
  std::string device = "cpu";
  std::optional<double> lambda;
  // A log grid that includes the seed paper's best cosine λ (7.5e-3).
  std::vector<double> sweep_lambdas{1e-3, 7.5e-3, 3e-2, 1e-1, 3e-1};
  int64_t sweep_train_samples = 8000;
  int64_t sweep_epochs = 1;
  int64_t validation_samples = 5000;
  int64_t sweep_eval_samples = 500;
  int64_t train_samples = 0;  // 0: the whole training split
  int64_t epochs = 1;
  int64_t batch_size = 128;
  double learning_rate = 1e-3;
  std::string optimizer = "adam";
  double momentum = 0.9;
  double weight_decay = 0;
  std::string schedule = "none";
  double warmup_epochs = 0;
  std::vector<int64_t> milestones;
  double gamma = 0.1;
  bool augment = false;
  int64_t image_size = 32;
  int64_t channels = 3;
  int64_t resamples = 2000;
  int64_t eval_samples = 500;
  int64_t localisation_samples = 300;
  std::vector<std::string> methods{"GradCam", "GradCamPlusPlus", "ScoreCam"};
  // The measures of issue 16 (Sparseness, Complexity, ROAD, FaithCorr, Infidelity), with settings
  // that keep the default demo inside its time budget on 2 cores.
  bool extra_measures = true;
  std::vector<double> road_percentiles{10, 20, 30, 40, 50, 60, 70, 80, 90};  // pytorch-grad-cam's
  // ROAD's imputation is a conjugate-gradient solve per percentile and order, its cost: a relative
  // residual of 1e-6 changes the imputed pixels far less than the imputation's own noise (0.01).
  double road_tolerance = 1e-6;
  int64_t faithcorr_runs = 20;       // Quantus: 100
  int64_t faithcorr_subset = 224;    // Quantus' subset_size (at most H·W)
  int64_t infidelity_samples = 10;   // captum's n_perturb_samples
  int64_t sanity_images = 8;         // images of the parameter randomisation check
  int threads = 2;
  uint64_t seed = 1;
  std::string output = "demo-report";
  bool resume = false;
  bool smoke = false;
};

/// Tiny settings that run the whole pipeline in a couple of minutes (the test suite's check).
void apply_smoke_settings(Config& c) {
  c.sweep_lambdas = {0.1};
  c.sweep_train_samples = 1500;
  c.validation_samples = 500;
  c.sweep_eval_samples = 100;
  c.train_samples = 2000;
  c.epochs = 1;
  c.eval_samples = 32;
  c.localisation_samples = 32;
  c.road_percentiles = {20, 50, 80};
  c.faithcorr_runs = 10;
  c.infidelity_samples = 5;
  c.sanity_images = 4;
}

// ---------------------------------------------------------------------------------------------
// Data and models

struct Data {
  igrad::data::ImageDataset train, validation, test;
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
    const ImageFolder plain(root / "train", options);
    options.normalization(compute_normalization(plain, 5000));
    train = ImageFolder(root / "train", options).load_all();
    test = ImageFolder(root / "test", options).load_all();
    if (train->count() <= c.validation_samples)
      throw igrad::InvalidArgument(fmt::format(
          "{} holds {} training images, not more than --validation-samples {}; expected more "
          "images or a smaller validation split", (root / "train").string(), train->count(),
          c.validation_samples));
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
  auto split = train_validation_split(*train, c.validation_samples);
  Data d{split.train, split.validation, *test, std::nullopt};
  if (c.train_samples > 0 && c.train_samples < d.train.count()) d.train = d.train.slice(0, c.train_samples);
  if (c.dataset == "fashion-mnist") d.cluttered.emplace(*test, ClutteredOptions().seed(c.seed));
  return d;
}

/// The parameter randomisation check of one trained model: (explainer, images, targets, options).
using Randomisation = std::function<igrad::RandomisationResult(
    const igrad::Explainer&, const torch::Tensor&, const torch::Tensor&,
    const igrad::RandomisationOptions&)>;

/// A model seen as `AnyModel`, and its randomisation check, which needs the module's own type to
/// build a fresh copy (`model_randomisation(model, make_model, ...)`: the models are not
/// `Cloneable`).
struct BuiltModel {
  igrad::AnyModel model;
  Randomisation randomisation;
};

template <class M, class Make>
BuiltModel built_model(Make make) {
  M model = make();
  Randomisation randomisation = [model, make](const igrad::Explainer& explainer,
                                              const torch::Tensor& x, const torch::Tensor& targets,
                                              const igrad::RandomisationOptions& options) {
    return igrad::model_randomisation(model, make, explainer, x, targets, options);
  };
  return {igrad::AnyModel(model), std::move(randomisation)};
}

BuiltModel make_model(const Config& c, int64_t in_channels, int64_t classes) {
  using namespace igrad::models;
  torch::manual_seed(c.seed);  // every model of the run starts from the same weights
  BuiltModel built = [&]() -> BuiltModel {
    if (c.model == "small_cnn")
      return built_model<SmallCNN>([options = SmallCNNOptions().in_channels(in_channels).classes(classes)] {
        return SmallCNN(options);
      });
    if (c.model == "resnet18")
      return built_model<ResNet18>([options = ResNet18Options().in_channels(in_channels).classes(classes)] {
        return ResNet18(options);
      });
    if (c.model == "mobilenet_v2")
      return built_model<MobileNetV2>(
          [options = MobileNetV2Options().in_channels(in_channels).classes(classes)] {
            return MobileNetV2(options);
          });
    throw igrad::InvalidArgument(fmt::format(
        "unknown model '{}'; expected small_cnn, resnet18 or mobilenet_v2", c.model));
  }();
  const auto& model = built.model;
  // Move parameters and buffers to the device through the module's own state.
  if (c.device != "cpu") {
    torch::NoGradGuard no_grad;
    const torch::Device device(c.device);
    for (auto& p : model.parameters()) p.set_data(p.data().to(device));
    for (auto& b : model.buffers()) b.set_data(b.to(device));
  }
  return built;
}

// ---------------------------------------------------------------------------------------------
// Training

/// Adam, or SGD with momentum and weight decay (the seed paper's recipe), at the base rate.
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

/// The optimizer, schedule and augmentation in words, for the report.
std::string optimizer_text(const Config& c) {
  std::string text = c.optimizer == "sgd"
                         ? fmt::format("SGD (lr {}, momentum {}, weight decay {})", c.learning_rate,
                                       c.momentum, c.weight_decay)
                         : fmt::format("Adam (lr {}{})", c.learning_rate,
                                       c.weight_decay > 0 ? fmt::format(", weight decay {}", c.weight_decay) : "");
  if (c.warmup_epochs > 0) text += fmt::format(", {} warm-up epoch(s)", c.warmup_epochs);
  if (c.schedule == "cosine") text += ", cosine annealing";
  if (c.schedule == "multistep")
    text += fmt::format(", ×{} at epochs {}", c.gamma, fmt::join(c.milestones, ", "));
  if (c.augment) text += ", random crop (padding 4) and horizontal flip";
  return text;
}

/// The learning-rate schedule: optional linear warm-up, then constant, cosine or multi-step.
igrad::LrSchedule make_schedule(const Config& c, int64_t steps_per_epoch, int64_t epochs) {
  const auto warmup = static_cast<int64_t>(std::llround(c.warmup_epochs * steps_per_epoch));
  igrad::LrSchedule after;
  if (c.schedule == "none") after = igrad::constant_lr();
  else if (c.schedule == "cosine")
    after = igrad::cosine_annealing(std::max<int64_t>(1, epochs * steps_per_epoch - warmup));
  else if (c.schedule == "multistep") after = igrad::multi_step(c.milestones, c.gamma);
  else
    throw igrad::InvalidArgument(fmt::format(
        "unknown schedule '{}'; expected none, cosine or multistep", c.schedule));
  // The first warm-up step trains at 1/warmup of the base rate rather than at 0.
  return igrad::linear_warmup(warmup, after, warmup > 0 ? 1.0 / static_cast<double>(warmup) : 0.0);
}

struct TrainedModel {
  igrad::AnyModel model;
  double lambda = 0;
  fs::path steps_csv, epochs_csv;
  double seconds = 0;
  Randomisation randomisation;  ///< the sanity check on this model
};

/// Trains one model with error function E and λ; resumes from its checkpoint when asked.
///
/// Under a launcher (WORLD_SIZE > 1) every rank trains on its shard of each epoch with
/// `--batch-size / WORLD_SIZE` images per step, the gradients averaged across ranks
/// (igrad::distributed::DataParallel); rank 0 alone shows progress and writes logs and checkpoints.
template <class E>
TrainedModel train(const Config& c, const igrad::distributed::ProcessGroup& group,
                   const igrad::data::ImageDataset& data, double lambda, int64_t epochs,
                   const std::string& tag, const fs::path& dir) {
  namespace dist = igrad::distributed;
  auto built = make_model(c, data.images(0, 1).size(1), data.classes());
  auto model = built.model;
  auto optimizer = make_optimizer(c, model);
  igrad::Trainer<E, igrad::GuidedReLU> trainer(model, *optimizer,
                                               igrad::TrainerOptions().lambda(lambda));
  const int64_t per_rank_batch = c.batch_size / group.world_size();
  const auto loader_options =
      torch::data::DataLoaderOptions().batch_size(static_cast<size_t>(per_rank_batch));
  // One process: LibTorch's RandomSampler, as always. Several: each rank's shard of the epoch.
  std::optional<dist::DistributedSampler> shards;
  if (group.distributed())
    shards.emplace(static_cast<std::size_t>(data.count()), group, c.seed + 1);
  auto stacked = igrad::data::ImageDataset(data).map(torch::data::transforms::Stack<>());
  // Augmented: random crop (padding 4) and horizontal flip of each batch, the seed paper's recipe.
  auto augmented = igrad::data::ImageDataset(data)
                       .map(igrad::data::RandomCrop(4))
                       .map(igrad::data::RandomHorizontalFlip())
                       .map(torch::data::transforms::Stack<>());
  auto plain_loader = c.augment || shards ? nullptr
                                          : torch::data::make_data_loader<torch::data::samplers::RandomSampler>(
                                                stacked, loader_options);
  auto augmented_loader =
      c.augment && !shards ? torch::data::make_data_loader<torch::data::samplers::RandomSampler>(
                                 augmented, loader_options)
                           : nullptr;
  auto plain_shard_loader = !c.augment && shards
                                ? torch::data::make_data_loader(stacked, *shards, loader_options)
                                : nullptr;
  auto augmented_shard_loader = c.augment && shards
                                    ? torch::data::make_data_loader(augmented, *shards, loader_options)
                                    : nullptr;
  const fs::path checkpoint = dir / "checkpoints" / (tag + ".pt");
  torch::manual_seed(c.seed + 1);  // the shuffling stream, the same for every run
  // The checkpoint restores the RNG after the loader is built (building it draws from the RNG).
  // The schedule is a function of (epoch, step), which the checkpoint stores: nothing else to restore.
  if (c.resume && fs::exists(checkpoint)) {
    const auto info = igrad::load_checkpoint(checkpoint, model, *optimizer);
    trainer.resume_at(info.next_epoch, info.global_step);
    if (group.is_rank_zero())
      fmt::print("{}: resuming at epoch {} from {}\n", tag, info.next_epoch + 1, checkpoint.string());
  }
  TrainedModel result{model, lambda, dir / (tag + "_steps.csv"), dir / (tag + "_epochs.csv"), 0,
                      built.randomisation};
  if (group.is_rank_zero())
    fmt::print("== training {} ({} samples, {} epochs, lambda {}, {} + GuidedReLU{})\n", tag,
               data.count(), epochs, lambda, E::name,
               group.distributed() ? fmt::format(", {} ranks × batch {}", group.world_size(), per_rank_batch)
                                   : std::string());
  const auto start = std::chrono::steady_clock::now();
  // A rank's shard has ⌈count / ranks⌉ images (LibTorch pads the last one).
  const int64_t shard = (data.count() + group.world_size() - 1) / group.world_size();
  const int64_t steps_per_epoch = (shard + per_rank_batch - 1) / per_rank_batch;
  auto scheduler =
      igrad::LearningRateScheduler(make_schedule(c, steps_per_epoch, epochs), c.learning_rate);
  const auto run = [&](auto& loader) {
    // fit_to: up to epoch `epochs` in all, so a resumed run trains only the epochs left.
    trainer.fit_to(loader, epochs, igrad::ProgressBar(stderr),
                   igrad::CsvLogger(result.epochs_csv, result.steps_csv), scheduler,
                   igrad::Checkpoint(checkpoint));
  };
  const auto run_sharded = [&](auto& loader) {
    trainer.fit_to(loader, epochs, dist::DataParallel(group), *shards,
                   dist::on_rank_zero(group, igrad::ProgressBar(stderr)),
                   dist::on_rank_zero(group, igrad::CsvLogger(result.epochs_csv, result.steps_csv)),
                   scheduler, dist::on_rank_zero(group, igrad::Checkpoint(checkpoint)));
  };
  if (plain_shard_loader) run_sharded(plain_shard_loader);
  else if (augmented_shard_loader) run_sharded(augmented_shard_loader);
  else if (c.augment) run(augmented_loader);
  else run(plain_loader);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  model.eval();
  return result;
}

// ---------------------------------------------------------------------------------------------
// Evaluation

double accuracy(const igrad::AnyModel& model, const torch::Tensor& images,
                const torch::Tensor& labels, const torch::Device& device) {
  torch::NoGradGuard no_grad;
  igrad::TrainingModeGuard eval(model, false);
  int64_t correct = 0;
  for (int64_t i = 0; i < images.size(0); i += 500) {
    const auto end = std::min(images.size(0), i + 500);
    const auto logits = model(images.slice(0, i, end).to(device));
    correct += logits.argmax(1).cpu().eq(labels.slice(0, i, end)).sum().item<int64_t>();
  }
  return 100.0 * static_cast<double>(correct) / static_cast<double>(images.size(0));
}

/// The measures of issue 16 the report adds (per CAM method), in their table order.
const std::vector<std::string> extra_metrics{"Sparseness", "Complexity", "ROAD", "FaithCorr",
                                             "Infidelity"};

struct Evaluation {
  double test_accuracy = 0;
  igrad::MetricsTable faithfulness;
  std::optional<igrad::MetricsTable> localisation;
  /// Every quantity per image ("accuracy", "Grad-CAM/AD", ...), for the confidence intervals.
  igrad::PerImageScores per_image;
};

double mean_of(const std::vector<double>& v) {
  double sum = 0;
  for (double x : v) sum += x;
  return v.empty() ? std::nan("") : sum / static_cast<double>(v.size());
}

/// The method × metric table of the per-image means.
igrad::MetricsTable table_of(const igrad::PerImageScores& scores,
                             const std::vector<igrad::Explainer>& explainers,
                             const std::vector<std::string>& metrics) {
  igrad::MetricsTable table(metrics);
  for (const auto& e : explainers) {
    std::vector<double> row;
    for (const auto& metric : metrics) row.push_back(mean_of(scores.values.at(e.name + "/" + metric)));
    table.add_row(e.name, std::move(row));
  }
  return table;
}

/// The first `count` items scored per image, each rank scoring its contiguous block and every
/// rank receiving all the scores in item order (one process: simply all of them).
template <class Score>
igrad::PerImageScores sharded_scores(const igrad::distributed::ProcessGroup& group, int64_t count,
                                     const char* what, Score&& score) {
  if (count < group.world_size())
    throw igrad::InvalidArgument(fmt::format(
        "{} {} images for {} processes; expected at least one image per process", what, count,
        group.world_size()));
  const auto [begin, end] = group.shard(count);
  igrad::PerImageScores local = score(begin, end), all;
  for (auto& [key, values] : local.values)
    all.values[key] = igrad::distributed::gather_blocks(group, values, begin, count, key);
  return all;
}

Evaluation evaluate(const Config& c, const igrad::distributed::ProcessGroup& group,
                    const TrainedModel& trained, Data& data,
                    const std::vector<igrad::Explainer>& explainers) {
  const torch::Device device(c.device);
  Evaluation e;
  e.per_image = sharded_scores(group, data.test.count(), "accuracy on", [&](int64_t b, int64_t end) {
    igrad::PerImageScores s;
    s.values["accuracy"] = igrad::per_image_correct(
        trained.model, data.test.images(b, end).to(device), data.test.labels().slice(0, b, end));
    return s;
  });
  e.test_accuracy = mean_of(e.per_image.values["accuracy"]);
  const int64_t n = std::min(c.eval_samples, data.test.count());
  auto options = igrad::PerImageOptions().batch_size(64).normalization(data.test.normalization());
  std::vector<std::string> metrics{"AD", "AI", "AG", "Insertion", "Deletion"};
  if (c.extra_measures) {
    const auto image = data.test.images(0, 1);
    const int64_t pixels = image.size(2) * image.size(3);
    options.complexity_metrics(true)
        .road(igrad::RoadOptions().percentiles(c.road_percentiles).imputation(
            igrad::ImputationOptions().seed(c.seed).tolerance(c.road_tolerance)))
        .faithfulness_correlation(igrad::FaithfulnessCorrelationOptions()
                                      .runs(c.faithcorr_runs)
                                      .subset_size(std::min(c.faithcorr_subset, pixels))
                                      .seed(c.seed))
        .infidelity(igrad::InfidelityOptions().samples(c.infidelity_samples).seed(c.seed));
    metrics.insert(metrics.end(), extra_metrics.begin(), extra_metrics.end());
  }
  auto faithfulness = sharded_scores(group, n, "--eval-samples:", [&](int64_t b, int64_t end) {
    return igrad::per_image_scores(
        trained.model, explainers,
        igrad::EvaluationBatch{data.test.images(b, end).to(device),
                               data.test.labels().slice(0, b, end).to(device)},
        options);
  });
  e.faithfulness = table_of(faithfulness, explainers, metrics);
  e.per_image.values.merge(faithfulness.values);
  if (data.cluttered) {
    const int64_t m = std::min(c.localisation_samples, data.cluttered->count());
    auto localisation = sharded_scores(group, m, "--localisation-samples:", [&](int64_t b, int64_t end) {
      auto batch = data.cluttered->batch(b, end);
      return igrad::per_image_scores(
          trained.model, explainers,
          igrad::EvaluationBatch{batch.images.to(device), batch.labels.to(device), batch.boxes.to(device)},
          options);
    });
    e.localisation = table_of(localisation, explainers, {"Pointing", "EnergyPointing"});
    e.per_image.values.merge(localisation.values);
  }
  return e;
}

// ---------------------------------------------------------------------------------------------
// Report

struct Row {
  std::string label;
  std::string key;  // the quantity in Evaluation::per_image
  double baseline, regularised;
  bool larger_better;
  igrad::stats::PairedDifference difference{};  // regularised − baseline, with its 95 % interval
};

/// Fills each row's difference: paired by test image, bootstrap 95 % interval over the images.
void add_intervals(const Config& c, std::vector<Row>& rows, const Evaluation& base,
                   const Evaluation& reg) {
  for (auto& r : rows)
    r.difference = igrad::stats::paired_bootstrap(
        {base.per_image.values.at(r.key)}, {reg.per_image.values.at(r.key)},
        igrad::stats::BootstrapOptions().resamples(c.resamples).seed(c.seed));
}

std::string comparison_table(const std::vector<Row>& rows, int& better, int& worse, int& same) {
  std::string out =
      "| | baseline (λ = 0) | regularised | difference [95 % CI] | verdict |\n|---|---:|---:|---:|:---:|\n";
  for (const auto& r : rows) {
    const auto verdict = r.difference.verdict(r.larger_better);
    // Three decimals, or three significant digits for quantities that small (Infidelity).
    const bool tiny = std::max(std::abs(r.baseline), std::abs(r.regularised)) < 0.01;
    const auto number = [tiny](double v, bool sign) {
      if (tiny) return sign ? fmt::format("{:+.2e}", v) : fmt::format("{:.2e}", v);
      return sign ? fmt::format("{:+.3f}", v) : fmt::format("{:.3f}", v);
    };
    const auto cell = [&](double v, bool bold) {
      return bold ? "**" + number(v, false) + "**" : number(v, false);
    };
    out += fmt::format("| {} | {} | {} | {} [{}, {}] | {} |\n", r.label,
                       cell(r.baseline, verdict == igrad::stats::Verdict::worse),
                       cell(r.regularised, verdict == igrad::stats::Verdict::better),
                       number(r.difference.mean, true), number(r.difference.lower, true),
                       number(r.difference.upper, true), igrad::stats::to_string(verdict));
    (verdict == igrad::stats::Verdict::better  ? better
     : verdict == igrad::stats::Verdict::worse ? worse
                                               : same)++;
  }
  return out;
}

/// One row per method and metric of `metrics` that the tables hold.
std::vector<Row> metric_rows(const igrad::MetricsTable& base, const igrad::MetricsTable& reg,
                             const std::vector<std::string>& metrics) {
  std::vector<Row> rows;
  for (const auto& method : base.methods())
    for (const auto& metric : base.metrics())
      if (std::find(metrics.begin(), metrics.end(), metric) != metrics.end())
        rows.push_back({fmt::format("{} {}", method, metric), method + "/" + metric,
                      base.at(method, metric), reg.at(method, metric),
                      igrad::larger_is_better(metric)});
  return rows;
}

/// Reads the step log written by CsvLogger: columns step, epoch, loss, L_C, L_R, accuracy.
std::vector<std::array<double, 3>> read_steps(const fs::path& path) {
  std::vector<std::array<double, 3>> rows;
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::vector<double> v;
    std::stringstream fields(line);
    std::string field;
    while (std::getline(fields, field, ',')) v.push_back(std::stod(field));
    if (v.size() >= 5) rows.push_back({v[0], v[3], v[4]});
  }
  return rows;
}

void write_training_curves(const fs::path& dir, const TrainedModel& base, const TrainedModel& reg) {
  const auto b = read_steps(base.steps_csv), r = read_steps(reg.steps_csv);
  auto series = [](const std::vector<std::array<double, 3>>& rows, size_t column,
                   const std::string& label, igrad::Rgb color) {
    igrad::Series s{label, {}, {}, color};
    for (const auto& row : rows) {
      s.x.push_back(row[0]);
      s.y.push_back(row[column]);
    }
    return s;
  };
  const igrad::Rgb blue{31, 119, 180}, orange{255, 127, 14};
  const auto smoothing = igrad::PlotOptions().x_label("step").smoothing(15);
  igrad::write_png((dir / "curves_classification_loss.png").string(),
                   igrad::line_plot({series(b, 1, "baseline", blue), series(r, 1, "regularised", orange)},
                                    igrad::PlotOptions(smoothing).title("L_C (cross-entropy)")));
  igrad::write_png((dir / "curves_regulariser.png").string(),
                   igrad::line_plot({series(b, 2, "baseline", blue), series(r, 2, "regularised", orange)},
                                    igrad::PlotOptions(smoothing).title("L_R (error between gradients)")));
}

void write_explanation_figure(const Config& c, const fs::path& dir, const Data& data,
                              const TrainedModel& base, const TrainedModel& reg) {
  const torch::Device device(c.device);
  // Two images of each of the first four classes, so the figure shows varied items.
  const auto labels = data.test.labels();
  const auto index = torch::tensor(igrad::first_per_class(labels, 4, 2));
  const auto images = data.test.images().index_select(0, index).to(device);
  const auto targets = labels.index_select(0, index).to(device);
  auto columns = std::vector{igrad::method_explainer<igrad::Gradient>("grad"),
                             igrad::method_explainer<igrad::GuidedBackprop>("guided")};
  const auto cams = igrad::cam_explainers_by_name(c.methods, igrad::CamOptions().batch_size(256));
  columns.insert(columns.end(), cams.begin(), cams.end());
  const int64_t scale = images.size(2) <= 32 ? 3 : 1;
  const auto out = igrad::comparison_grid({{"B", base.model}, {"R", reg.model}}, images, targets, columns,
                                          igrad::ExplanationGridOptions().scale(scale).padding(4));
  igrad::write_png((dir / "explanations.png").string(), out);
}

/// The model parameter randomisation check of Grad-CAM on both models (the same images and
/// classes), its figures, its CSV, and the report section.
std::string sanity_section(const Config& c, const fs::path& dir, const Data& data,
                           const TrainedModel& base, const TrainedModel& reg) {
  const torch::Device device(c.device);
  const int64_t k = std::min(c.sanity_images, data.test.count());
  const auto images = data.test.images(0, k).to(device);
  const auto targets = data.test.labels().slice(0, 0, k).to(device);
  const auto grad_cam = igrad::cam_explainers_by_name({"GradCam"}, {}).front();
  const auto options = igrad::RandomisationOptions().seed(c.seed).keep_maps(true);
  const auto figure = igrad::RandomisationFigureOptions().images(k).scale(images.size(2) <= 32 ? 3 : 1);
  const auto b = base.randomisation(grad_cam, images, targets, options);
  const auto r = reg.randomisation(grad_cam, images, targets, options);
  igrad::write_randomisation_figure((dir / "sanity_gradcam_baseline.png").string(), images.cpu(), b, figure);
  igrad::write_randomisation_figure((dir / "sanity_gradcam_regularised.png").string(), images.cpu(), r, figure);
  std::ofstream csv(dir / "sanity.csv");
  csv << "step,layer,baseline_mean_spearman,regularised_mean_spearman\n";
  std::string table = "| layers randomised | last layer randomised | baseline | regularised |\n|---:|---|---:|---:|\n";
  for (size_t s = 0; s < b.layers.size(); ++s) {
    csv << fmt::format("{},{},{:.9g},{:.9g}\n", s + 1, b.layers[s], b.mean_spearman[s], r.mean_spearman[s]);
    table += fmt::format("| {} | `{}` | {:.3f} | {:.3f} |\n", s + 1, b.layers[s], b.mean_spearman[s],
                         r.mean_spearman[s]);
  }
  return fmt::format(
      "## Sanity check: model parameter randomisation (Grad-CAM)\n\n"
      "Adebayo et al. 2018: each model's parameterised layers are redrawn at random from the output "
      "down, cascading (seed {}), and Grad-CAM explains the first {} test images (class = ground "
      "truth) after each step; the table gives the mean Spearman rank correlation of the maps with "
      "the trained model's maps. A method passes when the correlation falls towards 0 as layers are "
      "randomised: its maps depend on the weights they claim to explain. One that stays near 1 "
      "does not.\n\n{}\n"
      "![sanity check, baseline](sanity_gradcam_baseline.png)\n\n"
      "![sanity check, regularised](sanity_gradcam_regularised.png)\n\n"
      "Rows: images; columns: the image, its Grad-CAM map, and the map after some of the steps "
      "(labelled by the layer randomised last); under them the mean rank correlation per step.\n\n",
      c.seed, k, table);
}

}  // namespace

int main(int argc, char** argv) {
  igrad::tune_allocator();
  Config c;
  CLI::App app{"igrad demo: train a baseline and a regularised model, explain, measure, report"};
  app.add_option("--model", c.model, "small_cnn, resnet18 or mobilenet_v2")->capture_default_str();
  app.add_option("--dataset", c.dataset, "fashion-mnist, cifar10, cifar100 or folder:PATH (PATH/train/<class>/*, PATH/test/<class>/*)")->capture_default_str();
  app.add_option("--data-dir", c.data_dir, "dataset folder (CIFAR: required; Fashion-MNIST: Debian's by default)");
  app.add_option("--error", c.error, "error function: cosine, sigmoid, centered-sigmoid, histogram, mae, mse")->capture_default_str();
  app.add_option("--lambda", c.lambda, "use this λ and skip the sweep");
  app.add_option("--sweep", c.sweep_lambdas, "λ values the sweep tries (λ = 0 is always added)")->delimiter(',')->capture_default_str();
  app.add_option("--sweep-train-samples", c.sweep_train_samples, "training images per sweep run")->capture_default_str();
  app.add_option("--sweep-epochs", c.sweep_epochs, "epochs per sweep run")->capture_default_str();
  app.add_option("--validation-samples", c.validation_samples, "training images held out for validation")->capture_default_str();
  app.add_option("--train-samples", c.train_samples, "training images for the final runs (0: all)")->capture_default_str();
  app.add_option("--epochs", c.epochs, "epochs of the final runs")->capture_default_str()->check(CLI::Range(1, 10000));
  app.add_option("--batch-size", c.batch_size, "training batch size")->capture_default_str()->check(CLI::Range(1, 100000));
  app.add_option("--learning-rate", c.learning_rate, "base learning rate")->capture_default_str();
  app.add_option("--optimizer", c.optimizer, "adam or sgd")->capture_default_str();
  app.add_option("--momentum", c.momentum, "SGD momentum")->capture_default_str();
  app.add_option("--weight-decay", c.weight_decay, "weight decay (L2) of either optimizer")->capture_default_str();
  app.add_option("--schedule", c.schedule, "learning-rate schedule: none, cosine or multistep")->capture_default_str();
  app.add_option("--warmup-epochs", c.warmup_epochs, "linear warm-up before the schedule, in epochs")->capture_default_str();
  app.add_option("--milestones", c.milestones, "multistep: epochs where the rate is multiplied by --gamma")->delimiter(',');
  app.add_option("--gamma", c.gamma, "multistep: the factor at each milestone")->capture_default_str();
  app.add_flag("--augment", c.augment, "random crop (padding 4) and horizontal flip of training batches");
  app.add_option("--image-size", c.image_size, "folder:PATH datasets: images are resized to this square size")->capture_default_str();
  app.add_option("--channels", c.channels, "folder:PATH datasets: 1 (grey) or 3 (RGB)")->capture_default_str();
  app.add_option("--resamples", c.resamples, "bootstrap resamples of the confidence intervals")->capture_default_str()->check(CLI::Range(1, 1000000));
  app.add_option("--eval-samples", c.eval_samples, "test images for AD/AI/AG/insertion/deletion")->capture_default_str();
  app.add_option("--localisation-samples", c.localisation_samples, "cluttered images for the pointing games")->capture_default_str();
  app.add_option("--methods", c.methods, "CAM methods to evaluate (class names)")->delimiter(',')->capture_default_str();
  app.add_flag("--extra-measures,!--no-extra-measures", c.extra_measures,
               "also Sparseness, Complexity, ROAD, FaithCorr and Infidelity per CAM method (on by default)");
  app.add_option("--road-percentiles", c.road_percentiles, "ROAD: percentiles of pixels imputed (pytorch-grad-cam's ROADCombined)")->delimiter(',')->capture_default_str();
  app.add_option("--road-tolerance", c.road_tolerance, "ROAD: relative residual of the imputation's conjugate-gradient solve (igrad's default 1e-10)")->capture_default_str()->check(CLI::Range(1e-14, 1e-1));
  app.add_option("--faithcorr-runs", c.faithcorr_runs, "faithfulness correlation: random subsets per image (Quantus: 100)")->capture_default_str()->check(CLI::Range(2, 100000));
  app.add_option("--faithcorr-subset", c.faithcorr_subset, "faithfulness correlation: pixels per subset (at most H·W)")->capture_default_str()->check(CLI::Range(1, 100000000));
  app.add_option("--infidelity-samples", c.infidelity_samples, "infidelity: Gaussian perturbations per image (captum's default)")->capture_default_str()->check(CLI::Range(1, 100000));
  app.add_option("--sanity-images", c.sanity_images, "test images of the parameter randomisation check")->capture_default_str()->check(CLI::Range(1, 10000));
  app.add_option("--threads", c.threads, "CPU threads")->capture_default_str()->check(CLI::Range(1, 256));
  app.add_option("--device", c.device, "cpu or cuda")->capture_default_str();
  app.add_option("--seed", c.seed, "seed of weights, shuffling and the cluttered set")->capture_default_str();
  app.add_option("--output", c.output, "report folder")->capture_default_str();
  app.add_flag("--resume", c.resume, "continue stopped runs from their checkpoints in --output");
  app.add_flag("--smoke", c.smoke, "tiny settings: checks the whole pipeline in minutes");
  CLI11_PARSE(app, argc, argv);
  if (c.smoke) apply_smoke_settings(c);

  try {
    torch::set_num_threads(c.threads);
    if (c.device == "cuda" && !torch::cuda::is_available())
      throw igrad::InvalidArgument("--device cuda, but LibTorch sees no CUDA device; expected cpu");
    const torch::Device device(c.device);
    // A world of one without launcher variables; under torchrun, srun or mpirun, data-parallel
    // training and sharded evaluation, with rank 0 writing the report (docs/distributed.md).
    const auto group = igrad::distributed::ProcessGroup::from_environment();
    const bool writer = group.is_rank_zero();
    if (c.batch_size % group.world_size() != 0)
      throw igrad::InvalidArgument(fmt::format(
          "--batch-size {} cannot be split over {} processes; expected a multiple of WORLD_SIZE",
          c.batch_size, group.world_size()));
    const fs::path dir = fs::absolute(c.output);
    fs::create_directories(dir);
    const auto start = std::chrono::steady_clock::now();
    Data data = load_data(c);
    if (writer)
      fmt::print("data: {} training, {} validation, {} test images{}\n", data.train.count(),
                 data.validation.count(), data.test.count(),
                 group.distributed() ? fmt::format("; {} processes", group.world_size()) : "");
    const auto explainers = igrad::cam_explainers_by_name(c.methods, igrad::CamOptions().batch_size(256));

    int exit_code = 0;
    igrad::with_error_function(c.error, [&](auto type) {
      using E = typename decltype(type)::type;
      // 1. λ sweep on the validation split.
      std::string sweep_md;
      double chosen = c.lambda.value_or(0.0);
      if (!c.lambda) {
        std::vector<double> lambdas{0.0};
        for (double l : c.sweep_lambdas)
          if (l > 0) lambdas.push_back(l);
        const auto sweep_train = data.train.slice(0, std::min(c.sweep_train_samples, data.train.count()));
        const int64_t nv = std::min(c.sweep_eval_samples, data.validation.count());
        const auto val_images = data.validation.images(0, nv).to(device);
        const auto val_labels = data.validation.labels().slice(0, 0, nv).to(device);
        auto grad_cam = igrad::cam_explainers_by_name({"GradCam"}, {});
        struct SweepRow { double lambda, accuracy, average_drop, regulariser; };
        std::vector<SweepRow> rows;
        for (double l : lambdas) {
          auto t = train<E>(c, group, sweep_train, l, c.sweep_epochs, fmt::format("sweep_lambda_{}", l), dir);
          const double acc = accuracy(t.model, data.validation.images(), data.validation.labels(), device);
          const auto table = igrad::evaluate(
              t.model, grad_cam, igrad::EvaluationBatch{val_images, val_labels},
              igrad::EvaluationOptions().causal(false).progress(false).normalization(data.validation.normalization()));
          // Rank 0 wrote the step log; the others take its value.
          double lr_tail = 0;
          if (writer) {
            const auto steps = read_steps(t.steps_csv);
            const size_t tail = std::max<size_t>(1, steps.size() / 5);
            for (size_t i = steps.size() - std::min(tail, steps.size()); i < steps.size(); ++i)
              lr_tail += steps[i][2] / static_cast<double>(tail);
          }
          lr_tail = group.sum({lr_tail}, "the sweep's final L_R")[0];
          rows.push_back({l, acc, table.at(igrad::GradCam::name, "AD"), lr_tail});
          if (writer) fmt::print("sweep: lambda {} -> validation accuracy {:.2f}%, Grad-CAM AD {:.2f}%, L_R {:.4f}\n",
                     l, acc, rows.back().average_drop, lr_tail);
        }
        const double reference = rows.front().accuracy;
        std::optional<SweepRow> best;
        for (const auto& r : rows)
          if (r.lambda > 0 && r.accuracy >= reference - 1.0 && (!best || r.average_drop < best->average_drop))
            best = r;
        std::string rule = "lowest validation Grad-CAM Average Drop among the λ > 0 whose validation "
                           "accuracy is within 1 point of λ = 0's";
        if (!best) {  // none kept the accuracy: take the most accurate λ > 0, and say so
          for (const auto& r : rows)
            if (r.lambda > 0 && (!best || r.accuracy > best->accuracy)) best = r;
          rule += " (no λ met the accuracy condition, so the most accurate λ > 0 was taken)";
        }
        chosen = best->lambda;
        sweep_md = fmt::format(
            "λ was chosen by a sweep on a validation split ({} held-out training images, {} of them "
            "for the Average Drop), each λ trained for {} epoch(s) on {} images: rule — {}. "
            "Chosen: **λ = {}**.\n\n| λ | validation accuracy (%) | Grad-CAM AD (%) | final L_R |\n|---:|---:|---:|---:|\n",
            data.validation.count(), nv, c.sweep_epochs, sweep_train.count(), rule, chosen);
        std::ofstream csv;
        if (writer) {
          csv.open(dir / "sweep.csv");
          csv << "lambda,validation_accuracy,gradcam_average_drop,final_regulariser\n";
        }
        for (const auto& r : rows) {
          sweep_md += fmt::format("| {} | {:.2f} | {:.2f} | {:.4f} |\n", r.lambda, r.accuracy, r.average_drop, r.regulariser);
          if (writer)
            csv << fmt::format("{},{:.6f},{:.6f},{:.6f}\n", r.lambda, r.accuracy, r.average_drop, r.regulariser);
        }
      } else {
        sweep_md = fmt::format("λ = {} was given on the command line (no sweep).\n", chosen);
      }

      // 2. Baseline and regularised models, same seed and schedule.
      const auto base = train<E>(c, group, data.train, 0.0, c.epochs, "baseline", dir);
      const auto reg = train<E>(c, group, data.train, chosen, c.epochs, "regularised", dir);

      // 3. Evaluation, each rank scoring its block of the images.
      if (writer) fmt::print("== evaluating the baseline\n");
      const auto evaluation_start = std::chrono::steady_clock::now();
      const auto eb = evaluate(c, group, base, data, explainers);
      if (writer) fmt::print("== evaluating the regularised model\n");
      const auto er = evaluate(c, group, reg, data, explainers);
      const double evaluation_seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - evaluation_start).count();
      if (!writer) return;  // rank 0 writes the files and the report
      fmt::print("evaluation of both models: {:.1f} s ({} the issue-16 measures)\n", evaluation_seconds,
                 c.extra_measures ? "with" : "without");
      fmt::print("== sanity check: parameter randomisation of Grad-CAM\n");
      const auto sanity_start = std::chrono::steady_clock::now();
      const auto sanity_md = sanity_section(c, dir, data, base, reg);
      const double sanity_seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - sanity_start).count();
      eb.faithfulness.write_csv((dir / "metrics_baseline.csv").string());
      er.faithfulness.write_csv((dir / "metrics_regularised.csv").string());
      if (eb.localisation) {
        eb.localisation->write_csv((dir / "localisation_baseline.csv").string());
        er.localisation->write_csv((dir / "localisation_regularised.csv").string());
      }

      // 4. Figures and report.
      write_training_curves(dir, base, reg);
      write_explanation_figure(c, dir, data, base, reg);
      std::vector<Row> rows{{"test accuracy (%)", "accuracy", eb.test_accuracy, er.test_accuracy, true}};
      for (auto& r : metric_rows(eb.faithfulness, er.faithfulness, {"AD", "AI", "AG", "Insertion", "Deletion"}))
        rows.push_back(r);
      auto extra_rows = metric_rows(eb.faithfulness, er.faithfulness, extra_metrics);
      std::vector<Row> loc_rows;
      if (eb.localisation) {
        for (const auto& method : eb.localisation->methods())
          for (const std::string metric : {"Pointing", "EnergyPointing"})
            loc_rows.push_back({fmt::format("{} {}", method, metric), method + "/" + metric,
                                eb.localisation->at(method, metric),
                                er.localisation->at(method, metric), true});
      }
      add_intervals(c, rows, eb, er);
      add_intervals(c, loc_rows, eb, er);
      add_intervals(c, extra_rows, eb, er);
      int better = 0, worse = 0, same = 0;
      const auto main_table = comparison_table(rows, better, worse, same);
      const auto extra_table = extra_rows.empty() ? std::string() : comparison_table(extra_rows, better, worse, same);
      const auto loc_table = loc_rows.empty() ? std::string() : comparison_table(loc_rows, better, worse, same);
      {
        std::ofstream csv(dir / "comparison.csv");
        csv << "quantity,baseline,regularised,larger_is_better,difference,ci_lower,ci_upper,verdict\n";
        for (const auto* list : {&rows, &extra_rows, &loc_rows})
          for (const auto& r : *list)
            csv << fmt::format("{},{:.9g},{:.9g},{},{:.9g},{:.9g},{:.9g},{}\n", r.label, r.baseline,
                               r.regularised, r.larger_better, r.difference.mean, r.difference.lower,
                               r.difference.upper,
                               igrad::stats::to_string(r.difference.verdict(r.larger_better)));
      }
      const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::ofstream md(dir / "report.md");
      md << fmt::format("# igrad demo report: interpretable gradients on {}\n\n", c.dataset);
      md << fmt::format(
          "Model {}, {} + GuidedReLU, {}, batch {}, {} epoch(s) on {} training images, seed {}, "
          "{} thread(s){}, device {}. Run time {:.0f} s (baseline training {:.0f} s, regularised {:.0f} s).{}\n\n",
          c.model, E::name, optimizer_text(c), c.batch_size, c.epochs, data.train.count(), c.seed, c.threads,
          group.distributed() ? fmt::format(" × {} processes (data-parallel: batch {} per process)",
                                            group.world_size(), c.batch_size / group.world_size())
                              : std::string(),
          c.device, total, base.seconds, reg.seconds, c.smoke ? " **Smoke settings: numbers are not meaningful.**" : "");
      md << "## How λ was chosen\n\n" << sweep_md << "\n";
      md << fmt::format(
          "## Accuracy and faithfulness (test set)\n\nAccuracy on all {} test images; AD / AI / AG in %, "
          "insertion / deletion as AUC in [0, 1], on the first {} test images, class = ground truth, "
          "masking in pixel space (SPEC §5). Insertion starts from igrad's default blur "
          "(`BlurConvention::sampled`: the sampled Gaussian, 11 taps, σ 5, replicate padding in pixel "
          "space), not RISE's (point-filtered kernel, zero padding in normalised space), which gives "
          "other insertion values. Lower is better for AD and deletion, higher for the rest. "
          "The difference is regularised − baseline, paired by image, with its 95 % bootstrap "
          "confidence interval over the test images ({} resamples); a quantity is better or worse "
          "when the interval excludes 0 on that side (the value is then in bold), else "
          "indistinguishable. One seed: the interval covers the choice of test images, not the "
          "training's randomness (the study runner, examples/study.cpp, covers seeds).\n\n",
          data.test.count(), std::min(c.eval_samples, data.test.count()), c.resamples);
      md << main_table << "\n";
      if (!extra_table.empty())
        md << fmt::format(
                  "## Further measures (Quantus, captum, pytorch-grad-cam)\n\n"
                  "The same test images, classes and paired bootstrap as above, per CAM method. "
                  "Sparseness: Gini index of the map (higher: more concentrated); Complexity: entropy of "
                  "the map's fractional contributions (lower: more concentrated); ROAD: "
                  "pytorch-grad-cam's ROADCombined, (LeRF − MoRF) / 2 of the class probability over the "
                  "percentiles {{{}}} with noisy linear imputation (conjugate gradients to a relative residual of {}; higher is better); FaithCorr: Pearson "
                  "correlation between the map's sum over {} random subsets of {} pixels and the drop of "
                  "the class logit when those pixels are set to the image's minimum (Quantus uses 100 "
                  "subsets; higher is better); Infidelity: captum's, {} Gaussian perturbations of σ 0.003 "
                  "(normalised units), the map rescaled by its least-squares factor (lower is better). "
                  "The two concentration measures say how focused a map is, not whether it is right.\n\n",
                  fmt::join(c.road_percentiles, ", "), c.road_tolerance, c.faithcorr_runs,
                  std::min<int64_t>(c.faithcorr_subset, data.test.images(0, 1).size(2) * data.test.images(0, 1).size(3)),
                  c.infidelity_samples)
           << extra_table << "\n";
      if (!loc_table.empty())
        md << fmt::format(
                  "## Localisation (cluttered Fashion-MNIST, 64×64, first {} test items)\n\n"
                  "Pointing game (tolerance 15 px at 224 px, scaled) and energy-based pointing game, in %.\n\n",
                  std::min(c.localisation_samples, data.test.count()))
           << loc_table << "\n";
      md << fmt::format(
          "## Summary\n\nOf the {} quantities above, the regularised model is detectably better on "
          "{}, worse on {}, and indistinguishable from the baseline on {} (95 % intervals). {}\n\n",
          rows.size() + extra_rows.size() + loc_rows.size(), better, worse, same,
          worse > 0 ? "Where it is worse, the table says so: this run does not support a claim of "
                      "better explanations on those metrics."
                    : "On this run it is nowhere detectably worse.");
      md << sanity_md;
      md << fmt::format(
          "## Time\n\nEvaluation of both models (every table above) {:.1f} s{}; sanity check {:.1f} s.\n\n",
          evaluation_seconds,
          c.extra_measures ? ", the further measures included" : " (further measures off: --no-extra-measures)",
          sanity_seconds);
      md << "## Figures\n\n"
            "![explanations](explanations.png)\n\n"
            "Rows: test images. Columns: the image; the standard gradient of the baseline (B) and of "
            "the regularised model (R); the guided-backprop gradient of each; then each CAM method for "
            "B and R.\n\n"
            "![L_C](curves_classification_loss.png) ![L_R](curves_regulariser.png)\n\n"
            "Training curves per step (moving average over 15 steps).\n\n"
            "## Files\n\n`comparison.csv`, `metrics_*.csv`, `localisation_*.csv`, `sweep.csv`, `sanity.csv`, "
            "`*_steps.csv` / `*_epochs.csv` (training logs), `checkpoints/` (resume with `--resume`).\n";
      md.close();
      fmt::print("\n{}", main_table);
      if (!extra_table.empty()) fmt::print("\n{}", extra_table);
      if (!loc_table.empty()) fmt::print("\n{}", loc_table);
      fmt::print("\nregularised better on {}, worse on {}, indistinguishable on {}; total {:.0f} s\nreport: {}\n", better, worse, same,
                 total, (dir / "report.md").string());
      for (const auto* list : {&rows, &extra_rows})
        for (const auto& r : *list)
          if (!std::isfinite(r.baseline) || !std::isfinite(r.regularised)) exit_code = 1;
    });
    return exit_code;
  } catch (const std::exception& e) {
    fmt::print(stderr, "igrad demo failed: {}\n", e.what());
    return 1;
  }
}
