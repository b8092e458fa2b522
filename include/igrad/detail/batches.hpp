#pragma once
/// @file detail/batches.hpp
/// @brief What `Trainer::fit` needs of a data loader: its range of batches, and each batch's
/// `{data, target}`. (Formerly in callbacks/callback.hpp; a loader is not a callback.)

#include <torch/torch.h>

#include <utility>
#include <vector>

namespace igrad::detail {

/// The range of batches behind a loader: dereferences a (smart) pointer to a data loader.
template <class Loader>
decltype(auto) batches(Loader& loader) {
  if constexpr (requires { loader->begin(); }) {
    return (*loader);
  } else {
    return (loader);
  }
}

/// `{data, target}` of a batch: a stacked `Example<>` or a vector of examples.
template <class Batch>
std::pair<torch::Tensor, torch::Tensor> unpack_batch(const Batch& batch) {
  if constexpr (requires { batch.data; batch.target; }) {
    return {batch.data, batch.target};
  } else {
    std::vector<torch::Tensor> data, target;
    data.reserve(batch.size());
    target.reserve(batch.size());
    for (const auto& example : batch) {
      data.push_back(example.data);
      target.push_back(example.target);
    }
    return {torch::stack(data), torch::stack(target).view({-1})};
  }
}

}  // namespace igrad::detail
