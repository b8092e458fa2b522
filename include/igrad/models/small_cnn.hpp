#pragma once
/// @file models/small_cnn.hpp
/// @brief The small convolutional network of SPEC §6, sized for Fashion-MNIST (1×28×28).

#include <igrad/exceptions.hpp>

#include <torch/arg.h>
#include <torch/torch.h>

#include <array>
#include <cstdint>

namespace igrad::models {

/// @defgroup zoo_group Model zoo
/// @brief Models with a `features` / `head` split (`igrad::FeatureClassifier`), and adapters.
/// @{

/// @brief Options of `SmallCNN`: `SmallCNNOptions().classes(10).in_channels(1)`.
struct SmallCNNOptions {
  /// Output channels of the three convolutional stages.
  using Widths = std::array<int64_t, 3>;
  /// Number of classes K (logits `[N, K]`).
  TORCH_ARG(int64_t, classes) = 10;
  /// Input channels (1 for grey images).
  TORCH_ARG(int64_t, in_channels) = 1;
  /// Output channels of the three convolutions.
  TORCH_ARG(Widths, widths) = Widths{32, 64, 128};
};

/// @brief Class templates behind the zoo's module classes: the template parameter only defers
/// the instantiation of a model's constructor and forward pass (and of the LibTorch templates
/// they use) to the files that use the model, which keeps `<igrad/igrad.hpp>` light to compile.
/// Use the aliases in `igrad::models` (e.g. `MobileNetV2Impl`) and the module holders.
namespace deferred {

/// @brief SmallCNN (SPEC §6): [conv3×3 32 → BN → ReLU → max-pool 2] → [conv3×3 64 → BN → ReLU →
/// max-pool 2] → [conv3×3 128 → BN → ReLU] = features (128×7×7 for a 28×28 input);
/// head = global average pooling → Linear(128, K). Three rectifier sites.
template <class Instantiation = void>
class SmallCNNImpl : public torch::nn::Module {
 public:
  /// @brief Builds the network.
  explicit SmallCNNImpl(const SmallCNNOptions& options = {})
      : torch::nn::Module("igrad::models::SmallCNNImpl"), options_(options) {
    const auto& w = options.widths();
    detail::require(options.classes() >= 1 && options.in_channels() >= 1 && w[0] >= 1 &&
                        w[1] >= 1 && w[2] >= 1,
                    "SmallCNNOptions has classes {}, in_channels {}, widths [{}, {}, {}]; expected "
                    "all >= 1",
                    options.classes(), options.in_channels(), w[0], w[1], w[2]);
    int64_t in = options.in_channels();
    for (int k = 0; k < 3; ++k) {
      conv[k] = register_module(
          "conv" + std::to_string(k + 1),
          torch::nn::Conv2d(torch::nn::Conv2dOptions(in, w[k], 3).padding(1).bias(false)));
      bn[k] = register_module("bn" + std::to_string(k + 1), torch::nn::BatchNorm2d(w[k]));
      in = w[k];
    }
    fc = register_module("fc", torch::nn::Linear(w[2], options.classes()));
  }

  /// @brief The feature map `[N, widths[2], H/4, W/4]` (the last ReLU's output).
  torch::Tensor features(const torch::Tensor& x) {
    auto a = torch::max_pool2d(torch::relu(bn[0](conv[0](x))), 2);
    a = torch::max_pool2d(torch::relu(bn[1](conv[1](a))), 2);
    return torch::relu(bn[2](conv[2](a)));
  }
  /// @brief Logits `[N, K]` from a feature map: global average pooling, then the linear layer.
  torch::Tensor head(const torch::Tensor& a) { return fc(a.mean({2, 3})); }
  /// @brief Logits `[N, K]` = head(features(x)).
  torch::Tensor forward(const torch::Tensor& x) { return head(features(x)); }

  /// @brief The options it was built with.
  const SmallCNNOptions& options() const { return options_; }

  std::array<torch::nn::Conv2d, 3> conv{nullptr, nullptr, nullptr};  ///< the convolutions
  std::array<torch::nn::BatchNorm2d, 3> bn{nullptr, nullptr, nullptr};  ///< their batch norms
  torch::nn::Linear fc{nullptr};  ///< the classifier of the head

 private:
  SmallCNNOptions options_;
};
}  // namespace deferred

/// `SmallCNNImpl`: see `deferred::SmallCNNImpl`.
using SmallCNNImpl = deferred::SmallCNNImpl<>;
/// @brief Module holder of `SmallCNNImpl` (shared ownership, `model->features(x)`).
TORCH_MODULE(SmallCNN);

/// @}
}  // namespace igrad::models
