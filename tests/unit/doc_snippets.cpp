// The examples of igrad's header documentation: Doxygen shows the blocks between `//! [name]`
// markers (`@snippet doc_snippets.cpp name`), so every example in a header is code that this
// file compiles and runs. Each test case runs its snippet on tiny models and data and checks
// what the documentation says it gives.
#include "test_support.hpp"

#include <igrad/distributed.hpp>
#include <igrad/testing/conformance.hpp>

#include <boost/hana.hpp>
#include <stb/stb_image_write.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <vector>

using namespace igrad_test;

namespace {

//! [classifier]
// A Classifier: a module handle whose forward(x) returns the logits [N, K].
struct NetImpl : torch::nn::Module {
  torch::nn::Linear fc{register_module("fc", torch::nn::Linear(784, 10))};
  torch::Tensor forward(torch::Tensor x) { return fc(x.flatten(1)); }
};
TORCH_MODULE(Net);
static_assert(igrad::Classifier<Net> && !igrad::FeatureClassifier<Net>);
//! [classifier]

//! [feature_classifier]
// A FeatureClassifier: forward(x) == head(features(x)), features(x) the feature map [N, K, h, w].
struct SplitNetImpl : torch::nn::Module {
  torch::nn::Conv2d conv{register_module("conv", torch::nn::Conv2d(1, 8, 3))};
  torch::nn::Linear fc{register_module("fc", torch::nn::Linear(8, 10))};
  torch::Tensor features(torch::Tensor x) { return torch::relu(conv(x)); }  // [N, 8, h, w]
  torch::Tensor head(torch::Tensor a) { return fc(a.mean({2, 3})); }        // GAP + Linear
  torch::Tensor forward(torch::Tensor x) { return head(features(x)); }
};
TORCH_MODULE(SplitNet);
static_assert(igrad::FeatureClassifier<SplitNet>);  // igrad::explain<igrad::GradCam> accepts it
//! [feature_classifier]

//! [saliency_method]
// Gradient × input: an input-space method built from the rule-aware gradient of the target logit.
struct GradientTimesInput {
  static constexpr const char* name = "Gradient x Input";
  torch::Tensor operator()(const igrad::SaliencyRequest& r) const {
    return r.input * igrad::target_input_gradient<igrad::StandardReLU>(r, r.input);
  }
};
static_assert(igrad::SaliencyMethod<GradientTimesInput>);
//! [saliency_method]

igrad::models::SmallCNN tiny_small_cnn() {
  torch::manual_seed(3);
  return igrad::models::SmallCNN(igrad::models::SmallCNNOptions().widths({4, 6, 8}));
}

}  // namespace

TEST_CASE("doc snippets: Classifier, FeatureClassifier and a saliency method of one's own") {
  torch::manual_seed(0);
  Net net;
  SplitNet split;
  const auto x = torch::randn({2, 1, 28, 28});
  const igrad::AnyModel plain = net;
  CHECK_FALSE(plain.has_feature_split());
  CHECK(plain.forward(x).sizes() == torch::IntArrayRef({2, 10}));
  const auto report = igrad::testing::check_feature_split(split, x);
  INFO(report.summary());
  CHECK(report.ok());
  const auto maps = igrad::explain<igrad::GradCam>(split, x);
  CHECK(maps.sizes() == torch::IntArrayRef({2, 28, 28}));
  const auto attributions = igrad::attribute<GradientTimesInput>(split, x);
  CHECK(attributions.sizes() == x.sizes());
  const auto gradient = igrad::attribute<igrad::Gradient>(split, x);
  CHECK(max_abs_diff(attributions, gradient * x) < 1e-6);
}

TEST_CASE("doc snippets: explain and the list of CAM methods") {
  auto model = tiny_small_cnn();
  const auto images = torch::randn({2, 1, 16, 16});
  const auto labels = torch::tensor({1, 4});
  //! [explain]
  auto maps = igrad::explain<igrad::GradCamPlusPlus>(model, images);          // predicted classes
  auto score = igrad::explain<igrad::ScoreCam>(model, images, labels,
                                               igrad::CamOptions().batch_size(128));
  //! [explain]
  CHECK(maps.sizes() == torch::IntArrayRef({2, 16, 16}));
  CHECK(score.sizes() == torch::IntArrayRef({2, 16, 16}));

  std::vector<std::string> names;
  //! [all_cam_methods]
  boost::hana::for_each(igrad::all_cam_methods, [&](auto t) {
    using C = typename decltype(t)::type;
    names.push_back(C::name);  // e.g. one figure column or table row per method
  });
  //! [all_cam_methods]
  CHECK(names.size() == 20);
}

TEST_CASE("doc snippets: evaluation tables, explainers and the faithfulness accumulator") {
  auto model = tiny_small_cnn();
  torch::manual_seed(4);
  const auto images = torch::randn({4, 1, 16, 16});
  const auto labels = torch::tensor({0, 1, 2, 3});
  const auto boxes = torch::tensor({{0, 0, 8, 8}, {4, 4, 12, 12}, {0, 8, 8, 16}, {8, 0, 16, 8}});
  const igrad::DatasetNormalization norm({0.2860}, {0.3530});
  const auto saliency = [](const igrad::AnyModel& m, const torch::Tensor& x, const torch::Tensor& t) {
    return igrad::explain<igrad::Gradient>(m, x, t);
  };
  const auto csv = std::filesystem::temp_directory_path() / "igrad_doc_snippets_metrics.csv";
  const auto previous_directory = std::filesystem::current_path();
  std::filesystem::current_path(std::filesystem::temp_directory_path());
  //! [evaluate]
  auto table = igrad::evaluate(model, {{"Gradient", saliency}}, {images, labels, boxes},
                               igrad::EvaluationOptions().normalization(norm).progress(false));
  fmt::print("{}", table);
  table.write_csv("igrad_doc_snippets_metrics.csv");
  //! [evaluate]
  std::filesystem::current_path(previous_directory);
  CHECK(std::filesystem::exists(csv));
  std::filesystem::remove(csv);

  //! [cam_explainers]
  auto explainers = igrad::cam_explainers(boost::hana::tuple_t<igrad::GradCam, igrad::ScoreCam>);
  explainers.push_back({"Gradient", saliency});  // mix with run-time explainers
  //! [cam_explainers]
  REQUIRE(explainers.size() == 3);
  CHECK(explainers[0].name == "Grad-CAM");

  //! [evaluate_cams]
  auto cams = igrad::evaluate(model, boost::hana::tuple_t<igrad::GradCam, igrad::ScoreCam>,
                              {images, labels, boxes},
                              igrad::EvaluationOptions().batch_size(64).progress(false));
  //! [evaluate_cams]
  CHECK(cams.to_csv().find("Score-CAM") != std::string::npos);

  const std::vector<std::pair<torch::Tensor, torch::Tensor>> batches{
      {images.slice(0, 0, 3), labels.slice(0, 0, 3)}, {images.slice(0, 3), labels.slice(0, 3)}};
  //! [faithfulness_accumulator]
  igrad::FaithfulnessAccumulator faithfulness(igrad::MaskingOptions().normalization(norm));
  for (const auto& [x, y] : batches)
    faithfulness.add(model, x, igrad::explain<igrad::GradCam>(model, x, y), y);
  auto r = faithfulness.result();  // r.average_drop, r.average_increase, r.average_gain
  //! [faithfulness_accumulator]
  // Batches of 3 + 1 give the numbers of the whole batch at once.
  const auto whole = igrad::faithfulness(model, images,
                                         igrad::explain<igrad::GradCam>(model, images, labels),
                                         labels, igrad::MaskingOptions().normalization(norm));
  CHECK(r.average_drop == doctest::Approx(whole.average_drop));
  CHECK(r.average_gain == doctest::Approx(whole.average_gain));
}

TEST_CASE("doc snippets: the model adapters") {
  torch::manual_seed(6);
  const auto x = torch::randn({2, 1, 10, 10});
  //! [split_sequential]
  torch::nn::Sequential net(torch::nn::Conv2d(1, 8, 3), torch::nn::ReLU(),
                            torch::nn::AdaptiveAvgPool2d(1), torch::nn::Flatten(),
                            torch::nn::Linear(8, 10));
  igrad::AnyModel model = igrad::models::split_sequential(net, 2);  // features: conv + ReLU
  //! [split_sequential]
  CHECK(model.features(x).sizes() == torch::IntArrayRef({2, 8, 8, 8}));
  CHECK(igrad::testing::check_feature_split(model, x).ok());

  SplitNet split_net;
  //! [from_callables]
  auto adapted = igrad::models::from_callables(
      split_net, [split_net](const torch::Tensor& x) mutable { return split_net->features(x); },
      [split_net](const torch::Tensor& a) mutable { return split_net->head(a); });
  //! [from_callables]
  CHECK(igrad::testing::check_feature_split(adapted, x).ok());
  CHECK(adapted.parameters().size() == split_net->parameters().size());
}

TEST_CASE("doc snippets: Fashion-MNIST, a validation split and a data loader") {
  if (!std::filesystem::exists("/usr/share/datasets/fashion-mnist")) {
    MESSAGE("Fashion-MNIST is not installed (Debian package dataset-fashion-mnist): skipped");
    return;
  }
  //! [fashion_mnist]
  igrad::data::FashionMnist train;  // /usr/share/datasets/fashion-mnist, normalised
  auto [fit, validation] = igrad::data::train_validation_split(train, 5000);
  auto loader = torch::data::make_data_loader(
      fit.map(torch::data::transforms::Stack<>()), 128);
  //! [fashion_mnist]
  CHECK(validation.count() == 5000);
  // A copy: the iterator that `begin()` returns owns the batch and dies at the end of the line
  // (ASan found the dangling reference this line held before).
  const auto batch = *loader->begin();
  CHECK(batch.data.sizes() == torch::IntArrayRef({128, 1, 28, 28}));
}

TEST_CASE("doc snippets: an ablation over error functions and an explanation monitor") {
  torch::manual_seed(8);
  std::vector<torch::data::Example<>> batches{
      {torch::randn({4, 1, 16, 16}), torch::tensor({0, 1, 2, 3})}};
  const auto val_x = torch::randn({2, 1, 16, 16});
  const auto val_y = torch::tensor({1, 2});
  const auto options = igrad::TrainerOptions().lambda(0.1);
  std::map<std::string, double> losses;
  //! [ablation]
  boost::hana::for_each(igrad::all_error_functions, [&](auto type) {
    using E = typename decltype(type)::type;
    auto model = tiny_small_cnn();  // the same initial weights for every E
    torch::optim::SGD optimizer(model->parameters(), 0.01);
    igrad::Trainer<E, igrad::GuidedReLU> trainer(model, optimizer, options);
    const auto logs = trainer.fit(batches, /*epochs=*/1);
    losses[E::name] = logs.back().regulariser_loss;  // ... one row per E::name
  });
  //! [ablation]
  CHECK(losses.size() == 6);
  CHECK(losses.at("CosineError") >= -1.0);

  const auto log_path = std::filesystem::temp_directory_path() / "igrad_doc_snippets_log.csv";
  auto model = tiny_small_cnn();
  torch::optim::SGD optimizer(model->parameters(), 0.01);
  igrad::Trainer<> trainer(model, optimizer, options);
  const auto previous_directory = std::filesystem::current_path();
  std::filesystem::current_path(std::filesystem::temp_directory_path());
  auto& loader = batches;
  const igrad::DatasetNormalization normalization({0.2860}, {0.3530});  // the held-out set's
  //! [explanation_monitor]
  // The normalisation of the held-out images: faithfulness then masks pixels, not normalised
  // values (0 would be the dataset's mean, not black).
  trainer.fit(loader, 10,
              igrad::ExplanationMonitor<igrad::ScoreCam>(val_x, val_y).normalization(normalization),
              igrad::CsvLogger("igrad_doc_snippets_log.csv"));
  //! [explanation_monitor]
  std::filesystem::current_path(previous_directory);
  CHECK(std::filesystem::exists(log_path));
  std::filesystem::remove(log_path);
}

namespace {

/// One batch of four 16×16 images, as a range `fit` accepts.
std::vector<torch::data::Example<>> tiny_batches() {
  torch::manual_seed(9);
  return {{torch::randn({4, 1, 16, 16}), torch::tensor({0, 1, 2, 3})}};
}

/// The joint 2-norm of the parameters' gradients.
double gradient_norm(const torch::nn::Module& model) {
  double squares = 0;
  for (const auto& p : model.parameters())
    if (p.grad().defined()) squares += p.grad().pow(2).sum().item<double>();
  return std::sqrt(squares);
}

/// Runs in a fresh temporary directory, back in the previous one afterwards.
struct ScratchDirectory {
  explicit ScratchDirectory(const std::string& name)
      : path(std::filesystem::temp_directory_path() / name), previous(std::filesystem::current_path()) {
    remove_tree(path);
    std::filesystem::create_directories(path);
    std::filesystem::current_path(path);
  }
  ~ScratchDirectory() {
    std::filesystem::current_path(previous);
    remove_tree(path);
  }
  std::filesystem::path path, previous;
};

}  // namespace

TEST_CASE("doc snippets: a step with clipping, the losses without a trainer, buffer transactions") {
  auto model = tiny_small_cnn();
  torch::optim::SGD optimizer(model->parameters(), 0.01);
  igrad::Trainer<> trainer(model, optimizer, igrad::TrainerOptions().lambda(0.1));
  const auto batch = tiny_batches().front();
  const auto& x = batch.data;
  const auto& y = batch.target;
  //! [step_after_backward]
  trainer.step(x, y, [&] { torch::nn::utils::clip_grad_norm_(model->parameters(), 1.0); });
  //! [step_after_backward]
  // The gradients the update used were clipped to norm 1 (they stay in .grad after the step).
  CHECK(gradient_norm(*model) <= doctest::Approx(1.0));

  model->zero_grad();
  //! [regularised_loss]
  auto l = igrad::regularised_loss(model, x, y, 7.5e-3, igrad::CosineError{}, igrad::GuidedReLU{});
  l.total.backward();
  //! [regularised_loss]
  CHECK(l.total.item<double>() ==
        doctest::Approx(l.classification.item<double>() + 7.5e-3 * l.regulariser.item<double>()));
  CHECK(gradient_norm(*model) > 0);

  // BufferTransaction: the batch norms' running means move in a training-mode forward pass; a
  // committed transaction keeps them, an uncommitted one puts the copies back.
  model->train();
  const auto mean_before = model->bn[0]->running_mean.clone();
  {
    igrad::BufferTransaction uncommitted(model);
    model->forward(x);
    CHECK_FALSE(torch::equal(model->bn[0]->running_mean, mean_before));
  }
  CHECK(torch::equal(model->bn[0]->running_mean, mean_before));
  {
    //! [buffer_transaction]
    igrad::BufferTransaction transaction(model);
    auto logits = model->forward(x);  // forward passes update running statistics
    transaction.commit();             // keep them; without this the destructor restores the copies
    //! [buffer_transaction]
    CHECK(logits.size(0) == 4);
  }
  CHECK_FALSE(torch::equal(model->bn[0]->running_mean, mean_before));
}

TEST_CASE("doc snippets: clipping, a lambda schedule and a learning-rate schedule as callbacks") {
  auto loader = tiny_batches();
  const auto& x = loader.front().data;
  const auto& y = loader.front().target;
  auto model = tiny_small_cnn();
  torch::optim::SGD optimizer(model->parameters(), 0.01);
  igrad::Trainer<> trainer(model, optimizer, igrad::TrainerOptions().lambda(0.1));
  igrad::GradientClipping clipping(1.0);
  //! [gradient_clipping]
  trainer.fit(loader, 10, igrad::GradientClipping(1.0));
  trainer.step(x, y, [&] { clipping.clip(trainer.optimizer()); });  // outside fit
  //! [gradient_clipping]
  CHECK(clipping.last_norm() > 0);
  CHECK(gradient_norm(*model) <= doctest::Approx(1.0));
  CHECK(trainer.next_epoch() == 10);

  auto scheduled_model = tiny_small_cnn();
  torch::optim::SGD scheduled_optimizer(scheduled_model->parameters(), 0.01);
  igrad::Trainer<> lambda_trainer(scheduled_model, scheduled_optimizer);
  {
    auto& trainer = lambda_trainer;
    //! [lambda_schedule]
    // Plain training for 2 epochs, then λ = 7.5e-3 ramped in over 3 epochs.
    auto logs = trainer.fit(loader, 10, igrad::LambdaSchedule::warmup(7.5e-3, 3, 2),
                            igrad::ProgressBar());
    // Any function of the epoch index, which counts on over fit calls (here epochs 10 to 19).
    auto more = trainer.fit(loader, 10,
                            igrad::LambdaSchedule([](int64_t e) { return e < 15 ? 0.0 : 1e-2; }));
    //! [lambda_schedule]
    logs.insert(logs.end(), more.begin(), more.end());
    REQUIRE(logs.size() == 20);
    // Each epoch's λ, read back from its mean losses: L = L_C + λ L_R.
    const auto lambda_of = [](const igrad::EpochLog& log) {
      return (log.loss - log.classification_loss) / log.regulariser_loss;
    };
    const std::vector<double> expected{0, 0, 2.5e-3, 5e-3, 7.5e-3, 7.5e-3, 7.5e-3, 7.5e-3, 7.5e-3,
                                       7.5e-3, 0, 0, 0, 0, 0, 1e-2, 1e-2, 1e-2, 1e-2, 1e-2};
    for (std::size_t e = 0; e < logs.size(); ++e) {
      INFO("epoch " << e);
      CHECK(logs[e].epoch == static_cast<int64_t>(e));
      if (expected[e] == 0.0)
        CHECK(logs[e].loss == logs[e].classification_loss);  // L = L_C exactly
      else
        CHECK(lambda_of(logs[e]) == doctest::Approx(expected[e]).epsilon(1e-2));
    }
  }

  auto fresh = tiny_small_cnn();
  torch::optim::SGD sgd(fresh->parameters(), 0.1);
  igrad::Trainer<> scheduled(fresh, sgd, igrad::TrainerOptions().lambda(0.1));
  {
    auto& trainer = scheduled;
    //! [learning_rate_schedule]
    const int64_t steps_per_epoch = 430, epochs = 30;  // e.g. 55 000 images in batches of 128
    // Linear warm-up over 2 epochs, then cosine annealing over the remaining epochs.
    auto schedule = igrad::linear_warmup(2 * steps_per_epoch,
                                         igrad::cosine_annealing((epochs - 2) * steps_per_epoch));
    trainer.fit(loader, epochs, igrad::LearningRateScheduler(schedule, 0.1));
    //! [learning_rate_schedule]
  }
  // Here an epoch is one step: after 30 steps the rate is set for step 30 of the warm-up.
  CHECK(sgd.param_groups()[0].options().get_lr() == doctest::Approx(0.1 * 30.0 / 860.0));
  // The cosine part ends at the end of training: factor 0 after 28 epochs of 430 steps.
  const auto schedule = igrad::linear_warmup(860, igrad::cosine_annealing(28 * 430));
  CHECK(schedule(860, 2) == doctest::Approx(1.0));
  CHECK(schedule(30 * 430, 29) == doctest::Approx(0.0));
}

TEST_CASE("doc snippets: resuming from a checkpoint with fit_to") {
  const auto loader = tiny_batches();
  ScratchDirectory scratch("igrad_doc_snippets_resume");
  const std::filesystem::path path = "run.pt";
  const int64_t total_epochs = 3;
  {
    auto model = tiny_small_cnn();
    torch::optim::SGD optimizer(model->parameters(), 0.01);
    igrad::Trainer<> trainer(model, optimizer);
    trainer.fit(loader, 2, igrad::Checkpoint(path));  // interrupted after 2 of 3 epochs
  }
  auto model = tiny_small_cnn();
  torch::optim::SGD optimizer(model->parameters(), 0.01);
  igrad::Trainer<> trainer(model, optimizer);
  //! [resume]
  const auto info = igrad::load_checkpoint(path, model, optimizer);
  trainer.resume_at(info.next_epoch, info.global_step);
  auto logs = trainer.fit_to(loader, total_epochs, igrad::Checkpoint(path));
  //! [resume]
  CHECK(info.next_epoch == 2);
  CHECK(info.global_step == 2);
  REQUIRE(logs.size() == 1);  // only the missing epoch ran
  CHECK(logs[0].epoch == 2);
  CHECK(trainer.steps() == 3);
}

TEST_CASE("doc snippets: augmentation, an image folder and a resumable sampler") {
  {
    torch::manual_seed(10);
    igrad::data::ImageDataset train(torch::randint(0, 256, {10, 1, 8, 8}, torch::kUInt8),
                                    torch::arange(10) % 3);
    //! [resumable_sampler]
    auto loader = torch::data::make_data_loader<igrad::data::ResumableRandomSampler>(
        train.map(torch::data::transforms::Stack<>()), 128);
    //! [resumable_sampler]
    int64_t batches = 0, images = 0;
    for (const auto& batch : *loader) {
      ++batches;
      images += batch.data.size(0);
    }
    CHECK(batches == 1);
    CHECK(images == 10);
  }
  {
    ScratchDirectory scratch("igrad_doc_snippets_image_folder");
    torch::manual_seed(11);
    for (const std::string label : {"cat", "dog"}) {
      std::filesystem::create_directories("photos/train/" + label);
      for (int i = 0; i < 2; ++i) {
        const auto rgb = torch::randint(0, 256, {12, 10, 3}, torch::kUInt8).contiguous();
        const auto file = "photos/train/" + label + "/" + std::to_string(i) + ".png";
        REQUIRE(stbi_write_png(file.c_str(), 10, 12, 3, rgb.data_ptr<uint8_t>(), 30) != 0);
      }
    }
    //! [image_folder]
    igrad::data::ImageFolder train("photos/train", igrad::data::ImageFolderOptions().size(64, 64));
    auto stats = igrad::data::compute_normalization(train);  // per-channel mean / std
    train = igrad::data::ImageFolder(
        "photos/train", igrad::data::ImageFolderOptions().size(64, 64).normalization(stats));
    auto loader = torch::data::make_data_loader(
        train.map(torch::data::transforms::Stack<>()),
        torch::data::DataLoaderOptions().batch_size(64).workers(4));
    //! [image_folder]
    int64_t images = 0;
    torch::Tensor all;
    for (const auto& batch : *loader) {
      CHECK(batch.data.sizes().slice(1) == torch::IntArrayRef({3, 64, 64}));
      images += batch.data.size(0);
      all = batch.data;
    }
    CHECK(images == 4);
    // Normalised with its own statistics: each channel has mean 0 over the dataset.
    CHECK(all.mean({0, 2, 3}).abs().max().item<double>() < 1e-4);
  }
  if (!std::filesystem::exists("/usr/share/datasets/fashion-mnist")) {
    MESSAGE("Fashion-MNIST is not installed (Debian package dataset-fashion-mnist): skipped");
    return;
  }
  torch::manual_seed(12);
  //! [augment]
  auto train = igrad::data::FashionMnist()
                   .map(igrad::data::RandomCrop(4))
                   .map(igrad::data::RandomHorizontalFlip())
                   .map(torch::data::transforms::Stack<>());
  auto loader = torch::data::make_data_loader(std::move(train), 128);
  //! [augment]
  const auto batch = *loader->begin();
  CHECK(batch.data.sizes() == torch::IntArrayRef({128, 1, 28, 28}));
  CHECK(batch.target.sizes() == torch::IntArrayRef({128}));
}

TEST_CASE("doc snippets: data-parallel training in a world of one process") {
  // No launcher variables: from_environment() gives a world of one, where DataParallel and the
  // collectives do nothing and on_rank_zero runs its callback.
  for (const char* name : {"RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                           "SLURM_PROCID", "SLURM_NTASKS"})
    if (std::getenv(name) != nullptr) {
      MESSAGE("a launcher's variables are set: skipped");
      return;
    }
  ScratchDirectory scratch("igrad_doc_snippets_distributed");
  torch::manual_seed(13);
  const auto dataset = igrad::data::ImageDataset(torch::randint(0, 256, {12, 1, 16, 16}, torch::kUInt8),
                                                 torch::arange(12) % 10)
                           .map(torch::data::transforms::Stack<>());
  auto model = tiny_small_cnn();
  torch::optim::SGD optimizer(model->parameters(), 0.01);
  igrad::Trainer<> trainer(model, optimizer);
  //! [process_group]
  auto group = igrad::distributed::ProcessGroup::from_environment();  // torchrun, srun, mpirun
  if (group.rank() == 0) fmt::print("{} processes\n", group.world_size());
  //! [process_group]
  CHECK(group.world_size() == 1);
  //! [data_parallel]
  igrad::distributed::DistributedSampler sampler(dataset.size().value(), group, /*seed=*/1);
  auto loader = torch::data::make_data_loader(dataset, sampler, 64 / group.world_size());
  trainer.fit(loader, 10, igrad::distributed::DataParallel(group), sampler,
              igrad::distributed::on_rank_zero(group, igrad::ProgressBar()));
  //! [data_parallel]
  CHECK(trainer.next_epoch() == 10);
  CHECK(trainer.steps() == 10);  // one batch of 12 per epoch
  {
    using namespace igrad::distributed;
    using igrad::Checkpoint;
    //! [on_rank_zero]
    trainer.fit(loader, 10, DataParallel(group), on_rank_zero(group, Checkpoint("run.pt")));
    //! [on_rank_zero]
  }
  CHECK(std::filesystem::exists("run.pt"));
  CHECK(igrad::load_checkpoint("run.pt", model, optimizer).next_epoch == 20);
}

TEST_CASE("doc snippets: DeepLIFT by hand, from two recorded forwards") {
  torch::manual_seed(5);
  TinyMlp model;  // Linear(4, 3) -> ReLU -> Linear(3, 2)
  model->eval();
  const auto x_in = torch::randn({2, 4});
  const auto x_ref = torch::zeros({2, 4});
  const int64_t c = 1;
  //! [deeplift_by_hand]
  igrad::RectifierRecording reference;  // the reference forward
  model->forward(x_ref);
  reference.stop();
  igrad::RectifierRecording sites;      // the forward to differentiate
  auto x = x_in.detach().requires_grad_(true);
  auto y = model->forward(x).select(1, c).sum();
  sites.stop();
  igrad::ReferenceSites pairs(sites, reference);
  auto g = igrad::gradient<igrad::DeepLiftRescale>({y}, {x})[0];
  auto attributions = (x_in - x_ref) * g;
  //! [deeplift_by_hand]
  // Rescale on one hidden ReLU layer sums to the output difference (summation-to-delta), and
  // equals igrad::DeepLift with the same reference.
  torch::NoGradGuard no_grad;
  const auto delta = model->forward(x_in).select(1, c) - model->forward(x_ref).select(1, c);
  CHECK(torch::allclose(attributions.sum(1), delta, 1e-5, 1e-6));
  const auto same = igrad::attribute<igrad::DeepLift>(
      model, x_in, torch::tensor({c, c}), igrad::SaliencyOptions().baseline(x_ref));
  CHECK(torch::allclose(attributions, same, 1e-5, 1e-6));
}
