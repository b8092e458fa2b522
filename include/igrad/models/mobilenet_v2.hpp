#pragma once
/// @file models/mobilenet_v2.hpp
/// @brief MobileNet-V2, CIFAR variant (Sandler et al. 2018; SPEC §6).

#include <igrad/exceptions.hpp>

#include <torch/arg.h>
#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <string>

namespace igrad::models {

/// @addtogroup zoo_group
/// @{

/// @brief Options of `MobileNetV2`: `MobileNetV2Options().classes(100).dropout(0.2)`.
struct MobileNetV2Options {
  /// Number of classes K.
  TORCH_ARG(int64_t, classes) = 10;
  /// Input channels (3 for colour images).
  TORCH_ARG(int64_t, in_channels) = 3;
  /// Dropout probability of the head, before the linear layer.
  TORCH_ARG(double, dropout) = 0.2;
};

namespace deferred {  // see small_cnn.hpp

/// @brief MobileNet-V2's inverted residual: [1×1 expansion → BN → ReLU6] (when the expansion
/// factor t > 1) → depthwise 3×3 (stride) → BN → ReLU6 → 1×1 linear projection → BN, plus the
/// input when the stride is 1 and the widths agree. Rectifier sites: 2 (1 when t = 1).
template <class Instantiation = void>
class InvertedResidualImpl : public torch::nn::Module {
 public:
  /// @brief A block from `in` to `out` channels with expansion factor `expansion` and `stride`.
  InvertedResidualImpl(int64_t in, int64_t out, int64_t stride, int64_t expansion)
      : torch::nn::Module("igrad::models::InvertedResidualImpl"),
        residual_(stride == 1 && in == out) {
    const int64_t hidden = in * expansion;
    if (expansion != 1) {
      body->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(in, hidden, 1).bias(false)));
      body->push_back(torch::nn::BatchNorm2d(hidden));
      body->push_back(torch::nn::ReLU6());
    }
    body->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(hidden, hidden, 3)
                                          .stride(stride).padding(1).groups(hidden).bias(false)));
    body->push_back(torch::nn::BatchNorm2d(hidden));
    body->push_back(torch::nn::ReLU6());
    body->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(hidden, out, 1).bias(false)));
    body->push_back(torch::nn::BatchNorm2d(out));
    register_module("body", body);
  }
  /// @brief The block's output.
  torch::Tensor forward(const torch::Tensor& x) {
    auto y = body->forward(x);
    return residual_ ? x + y : y;
  }
  /// @brief Whether the input is added to the output.
  bool has_residual() const { return residual_; }

  torch::nn::Sequential body;  ///< expansion, depthwise and projection layers

 private:
  bool residual_;
};
}  // namespace deferred

/// `InvertedResidualImpl`: see `deferred::InvertedResidualImpl`.
using InvertedResidualImpl = deferred::InvertedResidualImpl<>;
/// @brief Module holder of `InvertedResidualImpl`.
TORCH_MODULE(InvertedResidual);

namespace deferred {  // see small_cnn.hpp

/// @brief MobileNet-V2 for 32×32 inputs (the CIFAR variant): stem conv3×3 32 with stride 1 →
/// BN → ReLU6; 17 inverted residual blocks with (t, c, n, s) = (1,16,1,1), (6,24,2,1),
/// (6,32,3,2), (6,64,4,2), (6,96,3,1), (6,160,3,2), (6,320,1,1) — the ImageNet model with the
/// stem's and the second stage's stride set to 1, as for CIFAR; then the last 1×1 conv 320 → 1280
/// → BN → ReLU6 = features (1280×4×4 for a 32×32 input); head = global average pooling → dropout
/// → Linear(1280, K).
/// Rectifier sites (all ReLU6): stem 1 + first block 1 + 16 blocks × 2 + last conv 1 = 35.
template <class Instantiation = void>
class MobileNetV2Impl : public torch::nn::Module {
 public:
  /// The block configuration (expansion t, width c, repeats n, first stride s).
  static constexpr std::array<std::array<int64_t, 4>, 7> kBlocks = {{{1, 16, 1, 1},
                                                                      {6, 24, 2, 1},
                                                                      {6, 32, 3, 2},
                                                                      {6, 64, 4, 2},
                                                                      {6, 96, 3, 1},
                                                                      {6, 160, 3, 2},
                                                                      {6, 320, 1, 1}}};
  /// Channels of the feature map.
  static constexpr int64_t kFeatureChannels = 1280;

  /// @brief Builds the network.
  explicit MobileNetV2Impl(const MobileNetV2Options& options = {})
      : torch::nn::Module("igrad::models::MobileNetV2Impl"), options_(options) {
    detail::require(options.classes() >= 1 && options.in_channels() >= 1,
                    "MobileNetV2Options has classes {}, in_channels {}; expected both >= 1",
                    options.classes(), options.in_channels());
    detail::require(options.dropout() >= 0 && options.dropout() < 1,
                    "MobileNetV2Options::dropout is {}; expected a probability in [0, 1)",
                    options.dropout());
    body->push_back(torch::nn::Conv2d(
        torch::nn::Conv2dOptions(options.in_channels(), 32, 3).padding(1).bias(false)));
    body->push_back(torch::nn::BatchNorm2d(32));
    body->push_back(torch::nn::ReLU6());
    int64_t in = 32;
    for (const auto& [t, c, n, s] : kBlocks) {
      for (int64_t k = 0; k < n; ++k) {
        body->push_back(InvertedResidual(in, c, k == 0 ? s : 1, t));
        in = c;
      }
    }
    body->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(in, kFeatureChannels, 1).bias(false)));
    body->push_back(torch::nn::BatchNorm2d(kFeatureChannels));
    body->push_back(torch::nn::ReLU6());
    register_module("features", body);
    dropout = register_module("dropout", torch::nn::Dropout(options.dropout()));
    fc = register_module("fc", torch::nn::Linear(kFeatureChannels, options.classes()));
  }

  /// @brief The feature map `[N, 1280, H/8, W/8]`: the last ReLU6's output.
  torch::Tensor features(const torch::Tensor& x) { return body->forward(x); }
  /// @brief Logits `[N, K]`: global average pooling → dropout → linear layer.
  torch::Tensor head(const torch::Tensor& a) { return fc(dropout(a.mean({2, 3}))); }
  /// @brief Logits `[N, K]` = head(features(x)).
  torch::Tensor forward(const torch::Tensor& x) { return head(features(x)); }

  /// @brief The options it was built with.
  const MobileNetV2Options& options() const { return options_; }

  torch::nn::Sequential body;        ///< stem, blocks and the last 1×1 convolution
  torch::nn::Dropout dropout{nullptr};  ///< the head's dropout
  torch::nn::Linear fc{nullptr};     ///< the classifier of the head

 private:
  MobileNetV2Options options_;
};
}  // namespace deferred

/// `MobileNetV2Impl`: see `deferred::MobileNetV2Impl`.
using MobileNetV2Impl = deferred::MobileNetV2Impl<>;
/// @brief Module holder of `MobileNetV2Impl`.
TORCH_MODULE(MobileNetV2);

/// @}
}  // namespace igrad::models
