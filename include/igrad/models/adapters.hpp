#pragma once
/// @file models/adapters.hpp
/// @brief Adapters that give a model igrad cannot change a `features` / `head` split: an
/// `nn::Sequential` cut at an index, or two callables with the module owning their parameters.

#include <igrad/exceptions.hpp>
#include <igrad/model.hpp>

#include <torch/torch.h>

#include <concepts>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace igrad::models {

/// @addtogroup zoo_group
/// @{

/// @brief An `nn::Sequential` as a model whose features are its first `split` layers and whose
/// head is the rest: `features(x) = seq[0..split)(x)`, `head(a) = seq[split..end)(a)`.
///
/// Every layer must map one tensor to one tensor. Weights are saved and loaded with the
/// Sequential's own `save` / `load` (the same archive layout as saving it directly).
/// Throws `InvalidArgument` unless `0 < split < seq->size()`.
/// @snippet doc_snippets.cpp split_sequential
inline AnyModel split_sequential(torch::nn::Sequential sequential, std::size_t split) {
  detail::require(!sequential.is_empty(), "split_sequential() got an empty Sequential handle; "
                                          "expected a constructed torch::nn::Sequential");
  detail::require(split > 0 && split < sequential->size(),
                  "split_sequential() at index {} of a Sequential of {} layers; expected "
                  "0 < split < {} so that features and head each hold at least one layer",
                  split, sequential->size(), sequential->size());
  const auto run = [impl = sequential.ptr()](std::size_t begin, std::size_t end, torch::Tensor x) {
    auto it = impl->begin() + static_cast<std::ptrdiff_t>(begin);
    const auto stop = impl->begin() + static_cast<std::ptrdiff_t>(end);
    for (; it != stop; ++it) x = it->forward(x);
    return x;
  };
  const std::size_t size = sequential->size();
  auto functions = AnyModel::functions_of(sequential);
  functions.features = [run, split](const torch::Tensor& x) { return run(0, split, x); };
  functions.head = [run, split, size](const torch::Tensor& a) { return run(split, size, a); };
  functions.forward = [run, size](const torch::Tensor& x) { return run(0, size, x); };
  return AnyModel(std::move(functions));
}

/// @brief An `nn::Sequential` cut at several indices: one `split_sequential` model per index,
/// named "layers [0, split)", for `explain_stages` and `explain_fused`.
///
/// The stages share the Sequential (its parameters, mode and weights). Throws `InvalidArgument`
/// for no index, an index outside `0 < split < seq->size()`, or indices not strictly increasing.
inline std::vector<ModelStage> sequential_stages(torch::nn::Sequential sequential,
                                                 const std::vector<std::size_t>& splits) {
  detail::require(!splits.empty(), "sequential_stages() got no split index; expected at least "
                                   "one index 0 < split < the number of layers");
  std::vector<ModelStage> stages;
  for (std::size_t i = 0; i < splits.size(); ++i) {
    detail::require(i == 0 || splits[i] > splits[i - 1],
                    "sequential_stages(): split indices {} then {}; expected strictly increasing "
                    "indices (shallow to deep)", i == 0 ? 0 : splits[i - 1], splits[i]);
    stages.push_back({"layers [0, " + std::to_string(splits[i]) + ")",
                      split_sequential(sequential, splits[i])});
  }
  return stages;
}

/// @brief A model from a `features` callable, a `head` callable and the module that owns their
/// parameters and buffers (a `ModuleHolder` or `std::shared_ptr` to an `nn::Module`).
///
/// `forward(x)` is `head(features(x))`; parameters, buffers, train/eval and save/load go to
/// `owner`. Use it when a model computes its feature map in a function of its own, e.g. a
/// torchvision-like model whose `forward` does not return the map:
/// @snippet doc_snippets.cpp from_callables
template <class Owner, class Features, class Head>
  requires std::invocable<Features&, const torch::Tensor&> &&
           std::invocable<Head&, const torch::Tensor&>
AnyModel from_callables(Owner owner, Features features, Head head) {
  std::shared_ptr<torch::nn::Module> module;
  if constexpr (requires { owner.ptr(); }) {
    module = owner.ptr();
  } else {
    module = owner;
  }
  detail::require(module != nullptr, "from_callables() got an empty owner module; expected the "
                                     "module that owns the callables' parameters");
  auto f = AnyModel::Functions::of_module(module);
  auto shared_features = std::make_shared<Features>(std::move(features));
  auto shared_head = std::make_shared<Head>(std::move(head));
  f.features = [shared_features](const torch::Tensor& x) {
    return torch::Tensor((*shared_features)(x));
  };
  f.head = [shared_head](const torch::Tensor& a) { return torch::Tensor((*shared_head)(a)); };
  f.forward = [shared_features, shared_head](const torch::Tensor& x) {
    return torch::Tensor((*shared_head)(torch::Tensor((*shared_features)(x))));
  };
  return AnyModel(std::move(f));
}

/// @}
}  // namespace igrad::models
