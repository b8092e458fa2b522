#pragma once
/// @file models/resnet.hpp
/// @brief ResNet-18, CIFAR variant (He et al. 2016; SPEC §6).

#include <igrad/exceptions.hpp>

#include <torch/arg.h>
#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace igrad::models {

/// @addtogroup zoo_group
/// @{

/// @brief Options of `ResNet18`: `ResNet18Options().classes(100)`.
struct ResNet18Options {
  /// Number of classes K.
  TORCH_ARG(int64_t, classes) = 10;
  /// Input channels (3 for colour images).
  TORCH_ARG(int64_t, in_channels) = 3;
  /// Width of the first stage; the stages have 1×, 2×, 4×, 8× this width. 64 (64–512) is
  /// ResNet-18; smaller values give the same architecture, thinner, for quick experiments.
  TORCH_ARG(int64_t, base_width) = 64;
};

namespace deferred {  // see small_cnn.hpp

/// @brief The residual block of ResNet-18/34: conv3×3 → BN → ReLU → conv3×3 → BN, plus the
/// shortcut (identity, or 1×1 conv → BN when the shape changes), then ReLU. Two rectifier sites.
template <class Instantiation = void>
class BasicBlockImpl : public torch::nn::Module {
 public:
  /// @brief A block from `in` to `out` channels whose first convolution has `stride`.
  BasicBlockImpl(int64_t in, int64_t out, int64_t stride)
      : torch::nn::Module("igrad::models::BasicBlockImpl") {
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3)
                                                           .stride(stride).padding(1).bias(false)));
    bn1 = register_module("bn1", torch::nn::BatchNorm2d(out));
    conv2 = register_module(
        "conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(out, out, 3).padding(1).bias(false)));
    bn2 = register_module("bn2", torch::nn::BatchNorm2d(out));
    if (stride != 1 || in != out) {
      shortcut = register_module(
          "shortcut",
          torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 1)
                                                      .stride(stride).bias(false)),
                                torch::nn::BatchNorm2d(out)));
    }
  }
  /// @brief `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`.
  torch::Tensor forward(const torch::Tensor& x) {
    auto y = bn2(conv2(torch::relu(bn1(conv1(x)))));
    return torch::relu(y + (shortcut ? shortcut->forward(x) : x));
  }

  torch::nn::Conv2d conv1{nullptr};       ///< the first 3×3 convolution
  torch::nn::Conv2d conv2{nullptr};       ///< the second 3×3 convolution
  torch::nn::BatchNorm2d bn1{nullptr};    ///< the first convolution's batch norm
  torch::nn::BatchNorm2d bn2{nullptr};    ///< the second convolution's batch norm
  torch::nn::Sequential shortcut{nullptr};                  ///< projection, when needed
};
}  // namespace deferred

/// `BasicBlockImpl`: see `deferred::BasicBlockImpl`.
using BasicBlockImpl = deferred::BasicBlockImpl<>;
/// @brief Module holder of `BasicBlockImpl`.
TORCH_MODULE(BasicBlock);

namespace deferred {  // see small_cnn.hpp

/// @brief ResNet-18 for 32×32 inputs (the CIFAR variant): a 3×3 stride-1 stem (conv → BN →
/// ReLU) without max-pool, four stages of two `BasicBlock`s of widths 64, 128, 256, 512 (stages
/// 2–4 halve the resolution), features = layer4's output after its last ReLU (512×4×4 for a
/// 32×32 input), head = global average pooling → Linear(512, K).
/// 17 rectifier sites: the stem's and two per block.
template <class Instantiation = void>
class ResNet18Impl : public torch::nn::Module {
 public:
  /// @brief Builds the network.
  explicit ResNet18Impl(const ResNet18Options& options = {})
      : torch::nn::Module("igrad::models::ResNet18Impl"), options_(options) {
    detail::require(options.classes() >= 1 && options.in_channels() >= 1 &&
                        options.base_width() >= 1,
                    "ResNet18Options has classes {}, in_channels {}, base_width {}; expected all "
                    ">= 1",
                    options.classes(), options.in_channels(), options.base_width());
    const int64_t w = options.base_width();
    stem_conv = register_module(
        "conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(options.in_channels(), w, 3)
                                       .padding(1).bias(false)));
    stem_bn = register_module("bn1", torch::nn::BatchNorm2d(w));
    layer1 = register_module("layer1", stage(w, w, 1));
    layer2 = register_module("layer2", stage(w, 2 * w, 2));
    layer3 = register_module("layer3", stage(2 * w, 4 * w, 2));
    layer4 = register_module("layer4", stage(4 * w, 8 * w, 2));
    fc = register_module("fc", torch::nn::Linear(8 * w, options.classes()));
  }

  /// @brief The feature map `[N, 8·base_width, H/8, W/8]`: layer4's output.
  torch::Tensor features(const torch::Tensor& x) {
    auto a = torch::relu(stem_bn(stem_conv(x)));
    return layer4->forward(layer3->forward(layer2->forward(layer1->forward(a))));
  }
  /// @brief Logits `[N, K]`: global average pooling, then the linear layer.
  torch::Tensor head(const torch::Tensor& a) { return fc(a.mean({2, 3})); }
  /// @brief Logits `[N, K]` = head(features(x)).
  torch::Tensor forward(const torch::Tensor& x) { return head(features(x)); }

  /// @brief Four stages (`igrad::StagedClassifier`): the outputs of layer1 … layer4.
  int64_t stage_count() const { return 4; }
  /// @brief The feature maps of layer1 … layer4 (widths w, 2w, 4w, 8w; resolutions H, H/2, H/4,
  /// H/8), computed in one pass; the last is `features(x)`.
  std::vector<torch::Tensor> stages(const torch::Tensor& x) {
    std::vector<torch::Tensor> maps;
    auto a = torch::relu(stem_bn(stem_conv(x)));
    for (auto* layer : {&layer1, &layer2, &layer3, &layer4}) {
      a = (*layer)->forward(a);
      maps.push_back(a);
    }
    return maps;
  }
  /// @brief Logits from stage `stage`'s map (0-based): the remaining layers, then the head.
  torch::Tensor head_from(int64_t stage, const torch::Tensor& a) {
    detail::require(stage >= 0 && stage < 4, "ResNet18::head_from() got stage {}; expected 0 to 3",
                    stage);
    auto out = a;
    const std::array<torch::nn::Sequential*, 4> layers{&layer1, &layer2, &layer3, &layer4};
    for (int64_t s = stage + 1; s < 4; ++s) out = (*layers[static_cast<std::size_t>(s)])->forward(out);
    return head(out);
  }

  /// @brief The options it was built with.
  const ResNet18Options& options() const { return options_; }

  torch::nn::Conv2d stem_conv{nullptr};   ///< the 3×3 stem convolution
  torch::nn::BatchNorm2d stem_bn{nullptr};  ///< its batch norm
  torch::nn::Sequential layer1{nullptr};  ///< stage 1: two blocks of width w
  torch::nn::Sequential layer2{nullptr};  ///< stage 2: two blocks of width 2w, stride 2
  torch::nn::Sequential layer3{nullptr};  ///< stage 3: two blocks of width 4w, stride 2
  torch::nn::Sequential layer4{nullptr};  ///< stage 4: two blocks of width 8w, stride 2
  torch::nn::Linear fc{nullptr};          ///< the classifier of the head

 private:
  static torch::nn::Sequential stage(int64_t in, int64_t out, int64_t stride) {
    return torch::nn::Sequential(BasicBlock(in, out, stride), BasicBlock(out, out, 1));
  }
  ResNet18Options options_;
};
}  // namespace deferred

/// `ResNet18Impl`: see `deferred::ResNet18Impl`.
using ResNet18Impl = deferred::ResNet18Impl<>;
/// @brief Module holder of `ResNet18Impl`.
TORCH_MODULE(ResNet18);

/// @}
}  // namespace igrad::models
