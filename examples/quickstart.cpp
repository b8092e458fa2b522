// Quick start: train a small CNN whose input gradients are pulled toward guided backprop, explain
// it with Grad-CAM and measure the explanations. The README shows this file; it also runs as a
// smoke test, hence one epoch on 2048 training images (64 steps, a few seconds on 2 cores):
// enough for the maps to follow the clothes.
#include <igrad/igrad.hpp>

#include "single_process.hpp"

#include <cmath>

int main() try {
  igrad::tune_allocator();  // keep freed memory in the process: steady step times
  if (leave_to_rank_zero("igrad_quickstart")) return 0;  // one process, even under torchrun
  torch::set_num_threads(2);
  torch::manual_seed(0);

  using igrad::data::FashionMnist;
  FashionMnist train_set;  // /usr/share/datasets/fashion-mnist, normalised
  FashionMnist test_set(igrad::data::FashionMnistOptions().split(igrad::data::Split::test));
  auto loader = torch::data::make_data_loader(
      train_set.slice(0, 2048).map(torch::data::transforms::Stack<>()), /*batch_size=*/32);

  // L = L_C + λ E(δx, δ_G x) with E the cosine error and the guided rule as the teacher.
  igrad::models::SmallCNN model;
  torch::optim::Adam optimizer(model->parameters(), /*lr=*/1e-3);
  igrad::Trainer<igrad::CosineError, igrad::GuidedReLU> trainer(
      model, optimizer, igrad::TrainerOptions().lambda(1.0));
  const auto logs = trainer.fit(loader, /*epochs=*/1, igrad::ProgressBar());

  // Grad-CAM of the true classes of 256 test images; the first 8 drawn, all 256 measured.
  const auto images = test_set.images(0, 256);
  const auto labels = test_set.labels().slice(0, 0, 256);
  const auto maps = igrad::explain<igrad::GradCam>(model, images, labels);
  igrad::write_explanation_grid("quickstart_gradcam.png", images.slice(0, 0, 8),
                                {maps.slice(0, 0, 8)}, igrad::ExplanationGridOptions().scale(4));
  const auto faithfulness = igrad::faithfulness(
      model, images, maps, labels, igrad::MaskingOptions().normalization(test_set.normalization()));

  fmt::print("L_C {:.3f}, L_R {:.3f}, training accuracy {:.1f} %\n",
             logs.back().classification_loss, logs.back().regulariser_loss,
             100 * logs.back().accuracy);
  fmt::print("Grad-CAM maps: quickstart_gradcam.png\n");
  fmt::print("Average Drop of Grad-CAM on 256 test images: {:.1f} % (lower is better)\n",
             faithfulness.average_drop);
  return std::isfinite(logs.back().loss) && std::isfinite(faithfulness.average_drop) ? 0 : 1;
} catch (const std::exception& e) {  // e.g. igrad::DataError when the dataset is not installed
  fmt::print(stderr, "quickstart: {}\n", e.what());
  return 1;
}
