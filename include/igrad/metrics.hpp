#pragma once
/// @file metrics.hpp
/// @brief Measure explanations (SPEC §5): Average Drop / Increase / Gain, insertion and deletion,
/// the pointing games, Sparseness and Complexity, max-sensitivity, ROAD, faithfulness
/// correlation, infidelity, the model parameter randomisation test, and
/// `evaluate`, which puts them in one method × metric table.
///
/// The Boost.Hana overload that turns CAM types into explainers lives in
/// `<igrad/metrics/evaluate_cams.hpp>` (it needs the CAM family).

#include <igrad/metrics/causal.hpp>
#include <igrad/metrics/complexity.hpp>
#include <igrad/metrics/evaluate.hpp>
#include <igrad/metrics/faithfulness.hpp>
#include <igrad/metrics/masking.hpp>
#include <igrad/metrics/perturbation.hpp>
#include <igrad/metrics/pointing.hpp>
#include <igrad/metrics/road.hpp>
#include <igrad/metrics/sanity.hpp>
#include <igrad/metrics/sensitivity.hpp>
#include <igrad/metrics/table.hpp>
