#pragma once
/// @file ablation.hpp
/// @brief Compile-time ablations over policies with Boost.Hana.

#include <igrad/errors/error_functions.hpp>
#include <igrad/rules/backprop_rules.hpp>

#include <boost/hana/for_each.hpp>
#include <boost/hana/tuple.hpp>
#include <boost/hana/type.hpp>

namespace igrad {

/// @addtogroup error_functions_group
/// @{

/// @brief The six error functions igrad ships, as a Hana type list, for ablations:
/// @snippet doc_snippets.cpp ablation
inline constexpr auto all_error_functions =
    boost::hana::tuple_t<SigmoidMasking, CenteredSigmoidMasking, HistogramIntersection,
                         CosineError, MeanAbsoluteError, MeanSquaredError>;

/// @brief The three backprop rules igrad ships, as a Hana type list.
inline constexpr auto all_backprop_rules = boost::hana::tuple_t<StandardReLU, GuidedReLU, DeconvReLU>;

/// @brief Calls `f(hana::type_c<P>)` for each policy type `P` of a Hana type list, checking at
/// compile time that each satisfies `ErrorFunction` or `BackpropRule`.
template <class Types, class F>
void for_each_policy(Types types, F&& f) {
  boost::hana::for_each(types, [&](auto type) {
    using P = typename decltype(type)::type;
    static_assert(ErrorFunction<P> || BackpropRule<P>,
                  "igrad::for_each_policy: every type must model igrad::ErrorFunction or "
                  "igrad::BackpropRule");
    f(type);
  });
}

/// @}
}  // namespace igrad
