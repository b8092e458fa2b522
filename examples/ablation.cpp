// The compile-time ablation: every error function igrad ships (a Boost.Hana type list) × a
// runtime list of λ, each trained on the same Fashion-MNIST subset with the same seed and
// schedule, then measured on the same test subset: test accuracy, L_R of the trained model, and
// the faithfulness (AD / AI / AG) and causal (insertion / deletion) metrics of its Grad-CAM maps.
// One table, rows = error function × λ, written as Markdown and CSV.
//
//   igrad_ablation --lambdas 0,0.3,1,3 --epochs 2 --output ablation
//   igrad_ablation --smoke --output ablation-smoke      # about a minute on 2 cores
#include <igrad/igrad.hpp>

#include "single_process.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace {

using igrad::data::FashionMnist;

struct Settings {
  std::vector<double> lambdas{0.0, 1.0};
  int64_t train_samples = 10000;
  int64_t test_samples = 1000;
  std::optional<int64_t> causal_samples;  // insertion / deletion images; all test samples if unset
  int64_t epochs = 2;
  int64_t batch_size = 64;
  double learning_rate = 1e-3;
  int threads = 2;
  uint64_t seed = 0;
  std::filesystem::path data_directory = "/usr/share/datasets/fashion-mnist";
  std::filesystem::path output = "ablation";
  bool smoke = false;
};

/// The images every run trains on and is measured on, loaded once.
struct Data {
  igrad::data::ImageDataset train;
  torch::Tensor test_images, test_labels;
  igrad::data::Normalization normalization;
};

/// One row of the table before it is named: what a trained model scores.
struct Scores {
  double accuracy = 0;  // % of the test subset
  double regulariser = 0;
  double average_drop = 0, average_increase = 0, average_gain = 0, insertion = 0, deletion = 0;
};

const std::vector<std::string> kColumns{"accuracy", "L_R",       "AD",      "AI",
                                        "AG",       "Insertion", "Deletion"};

std::string row_name(const char* error_function, double lambda) {
  return fmt::format("{} λ={:g}", error_function, lambda);
}

/// Trains a fresh SmallCNN with `Trainer<E, GuidedReLU>` at `lambda`. Seeding right before the
/// model and the loader are built gives every run the same initial weights and batch order.
template <class E>
igrad::models::SmallCNN train(const Settings& settings, const Data& data, double lambda,
                              bool report_regulariser = true) {
  torch::manual_seed(settings.seed);
  igrad::models::SmallCNN model;
  torch::optim::Adam optimizer(model->parameters(), settings.learning_rate);
  igrad::Trainer<E, igrad::GuidedReLU> trainer(
      model, optimizer,
      igrad::TrainerOptions().lambda(lambda).report_regulariser(report_regulariser));
  auto train_set = data.train;  // a copy sharing the tensors: map() needs a mutable dataset
  auto loader = torch::data::make_data_loader(
      train_set.map(torch::data::transforms::Stack<>()),
      torch::data::DataLoaderOptions().batch_size(static_cast<size_t>(settings.batch_size)));
  // A non-finite loss stops here: Trainer::step throws igrad::NumericalError, main reports it.
  trainer.fit(loader, settings.epochs);
  return model;
}

/// L_R of a trained model on the test subset, in evaluation mode: how far its standard input
/// gradients are from the guided ones under error function E.
template <class E>
double regulariser_on_test(const Settings& settings, const Data& data,
                           igrad::models::SmallCNN model) {
  torch::optim::SGD unused_optimizer(model->parameters(), 0.0);  // the trainer needs one
  igrad::Trainer<E, igrad::GuidedReLU> trainer(model, unused_optimizer,
                                               igrad::TrainerOptions().lambda(0.0));
  igrad::TrainingModeGuard evaluation(model, false);  // no batch-norm statistic changes
  const int64_t n = data.test_images.size(0);
  double sum = 0;
  for (int64_t start = 0; start < n; start += settings.batch_size) {
    const int64_t end = std::min(n, start + settings.batch_size);
    const torch::Tensor regulariser = trainer.loss(data.test_images.slice(0, start, end),
                                                   data.test_labels.slice(0, start, end))
                                          .regulariser;
    sum += regulariser.item<double>() * static_cast<double>(end - start);
  }
  return sum / static_cast<double>(n);
}

/// Test accuracy and Grad-CAM metrics of a trained model (L_R is filled in by the caller).
Scores measure(const Settings& settings, const Data& data, igrad::models::SmallCNN model) {
  Scores scores;
  {
    igrad::TrainingModeGuard evaluation(model, false);
    torch::NoGradGuard no_grad;
    scores.accuracy =
        100 * model->forward(data.test_images).argmax(1).eq(data.test_labels).to(torch::kDouble)
                  .mean().item<double>();
  }
  const auto cams = boost::hana::tuple_t<igrad::GradCam>;
  const auto options = igrad::EvaluationOptions()
                           .batch_size(settings.batch_size)
                           .normalization(data.normalization)
                           .progress(false);
  const int64_t causal_images = settings.causal_samples.value_or(data.test_images.size(0));
  // Insertion and deletion cost H·W / W + 1 forward passes per image and metric: when asked,
  // they run on the first images only, and AD/AI/AG on all of them.
  const bool fewer_causal = causal_images < data.test_images.size(0);
  auto faithfulness_options = options;
  if (fewer_causal) faithfulness_options.causal(false);
  const auto faithfulness =
      igrad::evaluate(model, cams, {data.test_images, data.test_labels}, faithfulness_options);
  const auto causal =
      fewer_causal ? igrad::evaluate(model, cams,
                                     {data.test_images.slice(0, 0, causal_images),
                                      data.test_labels.slice(0, 0, causal_images)},
                                     options)
                   : faithfulness;
  scores.average_drop = faithfulness.at(igrad::GradCam::name, "AD");
  scores.average_increase = faithfulness.at(igrad::GradCam::name, "AI");
  scores.average_gain = faithfulness.at(igrad::GradCam::name, "AG");
  scores.insertion = causal.at(igrad::GradCam::name, "Insertion");
  scores.deletion = causal.at(igrad::GradCam::name, "Deletion");
  return scores;
}

/// The table in Markdown with 4 significant digits: the L_R of the mean errors (about 1e-8) and
/// the accuracies (about 80) need different scales, which fixed decimals cannot give both.
std::string markdown_table(const igrad::MetricsTable& table) {
  std::string text = "| error function, λ |";
  std::string rule = "|:---|";
  for (const auto& column : table.metrics()) {
    text += fmt::format(" {} |", column);
    rule += "---:|";
  }
  text += "\n" + rule + "\n";
  for (const auto& method : table.methods()) {
    text += fmt::format("| {} |", method);
    for (const double value : table.row(method)) text += fmt::format(" {:.4g} |", value);
    text += "\n";
  }
  return text;
}

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream file(path, std::ios::binary);
  file << text;
  if (!file) throw igrad::Error(fmt::format("cannot write '{}'; expected a writable path", path.string()));
}

std::vector<double> table_row(const Scores& s) {
  return {s.accuracy,         s.regulariser,  s.average_drop, s.average_increase,
          s.average_gain,     s.insertion,    s.deletion};
}

int run(const Settings& settings) {
  torch::set_num_threads(settings.threads);
  const auto start = std::chrono::steady_clock::now();
  // Before any training: an unwritable --output should fail now, not after the last run.
  std::filesystem::create_directories(settings.output);
  const FashionMnist train_set(igrad::data::FashionMnistOptions().directory(settings.data_directory));
  const FashionMnist test_set(igrad::data::FashionMnistOptions()
                                  .directory(settings.data_directory)
                                  .split(igrad::data::Split::test));
  const Data data{train_set.slice(0, settings.train_samples),
                  test_set.images(0, settings.test_samples),
                  test_set.labels().slice(0, 0, settings.test_samples), test_set.normalization()};
  fmt::print("Fashion-MNIST: training on {} images for {} epoch(s), batch {}, seed {}; measuring "
             "on {} test images ({} for insertion / deletion); {} thread(s)\n",
             settings.train_samples, settings.epochs, settings.batch_size, settings.seed,
             settings.test_samples, settings.causal_samples.value_or(settings.test_samples),
             settings.threads);

  // λ = 0 trains plainly, identically for every error function (SPEC §2): train and measure it
  // once, and only measure each error function's L_R on that model.
  std::optional<std::pair<igrad::models::SmallCNN, Scores>> plain;
  if (std::find(settings.lambdas.begin(), settings.lambdas.end(), 0.0) != settings.lambdas.end()) {
    const auto t0 = std::chrono::steady_clock::now();
    auto model = train<igrad::CosineError>(settings, data, 0.0, /*report_regulariser=*/false);
    plain.emplace(model, measure(settings, data, model));
    fmt::print("λ=0 (plain training, shared by every error function): {:.1f} s, test accuracy "
               "{:.1f} %\n",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
               plain->second.accuracy);
  }

  igrad::MetricsTable table(kColumns);
  igrad::for_each_policy(igrad::all_error_functions, [&](auto type) {
    using E = typename decltype(type)::type;
    for (const double lambda : settings.lambdas) {
      const auto t0 = std::chrono::steady_clock::now();
      Scores scores;
      if (lambda == 0.0) {
        scores = plain->second;
        scores.regulariser = regulariser_on_test<E>(settings, data, plain->first);
      } else {
        const auto model = train<E>(settings, data, lambda);
        scores = measure(settings, data, model);
        scores.regulariser = regulariser_on_test<E>(settings, data, model);
      }
      table.add_row(row_name(E::name, lambda), table_row(scores));
      fmt::print("{}: {:.1f} s, test accuracy {:.1f} %, L_R {:.4g}, AD {:.1f} %\n",
                 row_name(E::name, lambda),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                 scores.accuracy, scores.regulariser, scores.average_drop);
    }
  });

  const auto markdown = settings.output / "ablation.md";
  const auto csv = settings.output / "ablation.csv";
  const auto text = markdown_table(table);
  write_file(markdown, text);
  table.write_csv(csv);  // every digit, for plots and further analysis
  fmt::print("\n{}\nColumns: accuracy (% of the test subset, higher is better), L_R (the error "
             "between standard and guided input gradients on the test subset, lower is closer), "
             "AD (%, lower), AI (%, higher), AG (%, higher), Insertion (AUC, higher), Deletion "
             "(AUC, lower), all of Grad-CAM on the true class.\n",
             text);
  fmt::print("Table written to {} and {} ({:.0f} s in all)\n", markdown.string(), csv.string(),
             std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  igrad::tune_allocator();  // steadier step times over many short training runs
  Settings settings;
  CLI::App app{"igrad ablation: every error function × each λ, trained and measured alike"};
  app.add_option("--lambdas", settings.lambdas, "Regulariser weights λ to try (0 = plain training). One list serves every error "
                 "function, whose scales differ: the cosine error lies in [-1, 1], the mean "
                 "squared error of raw input gradients is about 1e-8")
      ->delimiter(',')
      ->check(CLI::Validator(
          [](const std::string& text) {
            double lambda = 0;
            const bool number = CLI::detail::lexical_cast(text, lambda);
            return number && std::isfinite(lambda) && lambda >= 0
                       ? std::string()
                       : fmt::format("λ = {} is not a finite value >= 0", text);
          },
          "FLOAT >= 0"))
      ->capture_default_str();
  app.add_option("--train-samples", settings.train_samples,
                 "Training images (the first N of Fashion-MNIST's training set)")
      ->check(CLI::Range(int64_t{1}, int64_t{60000}))
      ->capture_default_str();
  app.add_option("--test-samples", settings.test_samples,
                 "Test images measured (the first N of the test set)")
      ->check(CLI::Range(int64_t{1}, int64_t{10000}))
      ->capture_default_str();
  app.add_option("--causal-samples", settings.causal_samples,
                 "Test images for insertion / deletion (default: all test samples)")
      ->check(CLI::Range(int64_t{1}, int64_t{10000}));
  app.add_option("--epochs", settings.epochs, "Training epochs")
      ->check(CLI::Range(int64_t{1}, int64_t{1000}))
      ->capture_default_str();
  app.add_option("--batch-size", settings.batch_size, "Batch size of training and evaluation")
      ->check(CLI::Range(int64_t{1}, int64_t{60000}))
      ->capture_default_str();
  app.add_option("--learning-rate", settings.learning_rate, "Adam's learning rate")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--threads", settings.threads, "LibTorch CPU threads")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--seed", settings.seed, "Seed of the weights and batch order (same for every run)")
      ->capture_default_str();
  app.add_option("--data", settings.data_directory, "Directory of the Fashion-MNIST files")
      ->capture_default_str();
  app.add_option("--output", settings.output, "Directory for ablation.md and ablation.csv")
      ->capture_default_str();
  app.add_flag("--smoke", settings.smoke,
               "Tiny settings for a smoke test: 1000 training images, 1 epoch, 200 test images "
               "(64 for insertion / deletion), λ = 1 (flags given explicitly still win)");
  CLI11_PARSE(app, argc, argv);

  if (settings.smoke) {
    const auto unless_given = [&](const char* flag, auto& value, auto smoke_value) {
      if (app.count(flag) == 0) value = smoke_value;
    };
    unless_given("--lambdas", settings.lambdas, std::vector<double>{1.0});
    unless_given("--train-samples", settings.train_samples, int64_t{1000});
    unless_given("--test-samples", settings.test_samples, int64_t{200});
    unless_given("--epochs", settings.epochs, int64_t{1});
    if (app.count("--causal-samples") == 0) settings.causal_samples = 64;
  }
  if (settings.causal_samples)
    settings.causal_samples = std::min(*settings.causal_samples, settings.test_samples);
  if (std::set<double>(settings.lambdas.begin(), settings.lambdas.end()).size() !=
      settings.lambdas.size()) {
    fmt::print(stderr, "--lambdas lists a value twice; expected distinct values\n");
    return 2;
  }
  if (settings.lambdas.empty()) {
    fmt::print(stderr, "--lambdas is empty; expected at least one value\n");
    return 2;
  }
  try {
    if (leave_to_rank_zero("igrad_ablation")) return 0;
    return run(settings);
  } catch (const std::exception& e) {
    fmt::print(stderr, "igrad_ablation: {}\n", e.what());
    return 1;
  }
}
