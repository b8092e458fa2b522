#pragma once
/// @file metrics/evaluate_cams.hpp
/// @brief `evaluate` for a compile-time list of CAM methods: a Boost.Hana tuple of CAM types
/// (`boost::hana::tuple_t<igrad::GradCam, igrad::ScoreCam>`) becomes a list of explainers named
/// by `C::name` and computed with `igrad::explain<C>`.
///
/// Kept apart from `<igrad/metrics.hpp>` so that measuring arbitrary explainers does not pull in
/// the CAM family.

#include <igrad/cam.hpp>
#include <igrad/metrics/evaluate.hpp>

#include <boost/hana/core/is_a.hpp>
#include <boost/hana/for_each.hpp>
#include <boost/hana/tuple.hpp>
#include <boost/hana/type.hpp>

#include <iterator>
#include <string>
#include <utility>
#include <vector>

namespace igrad {

/// @addtogroup metrics_group
/// @{

/// @brief One explainer per CAM type of a Hana type tuple, in order, named `C::name`, computing
/// `igrad::explain<C>(model, x, targets, options)`.
///
/// @snippet doc_snippets.cpp cam_explainers
template <class... CamTypes>
std::vector<Explainer> cam_explainers(const boost::hana::tuple<CamTypes...>& cams,
                                      const CamOptions& options = {}) {
  std::vector<Explainer> explainers;
  boost::hana::for_each(cams, [&](auto type) {
    static_assert(boost::hana::is_a<boost::hana::type_tag, decltype(type)>,
                  "igrad::cam_explainers expects a tuple of types: "
                  "boost::hana::tuple_t<igrad::GradCam, ...>");
    using C = typename decltype(type)::type;
    static_assert(CamMethod<C>, "igrad::cam_explainers: every type must model igrad::CamMethod "
                                "(see the CamMethod documentation)");
    explainers.push_back(
        {std::string(C::name),
         [options](const AnyModel& model, const torch::Tensor& x, const torch::Tensor& targets) {
           return explain<C>(model, x, targets, options);
         }});
  });
  return explainers;
}

/// @brief Evaluates the CAM types of a Hana type tuple on a dataset held in tensors; see the
/// `Explainer` overload of `evaluate`. `cam_options` configures every method.
/// @snippet doc_snippets.cpp evaluate_cams
template <class... CamTypes>
MetricsTable evaluate(const AnyModel& model, const boost::hana::tuple<CamTypes...>& cams,
                      const EvaluationBatch& data, const EvaluationOptions& options = {},
                      const CamOptions& cam_options = {}) {
  return evaluate(model, cam_explainers(cams, cam_options), data, options);
}

/// @brief Evaluates the CAM types of a Hana type tuple on one batch given as a whole (an
/// `igrad::LocalizationBatch`, a `torch::data::Example<>`, a tuple); see the `Explainer`
/// overload of `evaluate`.
template <class... CamTypes, class Batch>
  requires detail::SingleEvaluationBatch<std::remove_cvref_t<Batch>>
MetricsTable evaluate(const AnyModel& model, const boost::hana::tuple<CamTypes...>& cams,
                      const Batch& batch, const EvaluationOptions& options = {},
                      const CamOptions& cam_options = {}) {
  return evaluate(model, cam_explainers(cams, cam_options), detail::to_evaluation_batch(batch),
                  options);
}

/// @brief Evaluates the CAM types of a Hana type tuple on a range of batches; see the
/// `Explainer` overload of `evaluate`.
template <class... CamTypes, class Batches>
  requires requires(Batches& b) {
    std::begin(b);
    std::end(b);
  }
MetricsTable evaluate(const AnyModel& model, const boost::hana::tuple<CamTypes...>& cams,
                      Batches&& batches, const EvaluationOptions& options = {},
                      const CamOptions& cam_options = {}) {
  return evaluate(model, cam_explainers(cams, cam_options), std::forward<Batches>(batches),
                  options);
}

/// @}
}  // namespace igrad
