#pragma once
/// @file saliency.hpp
/// @brief Sub-umbrella: input-space saliency (SPEC §4) — `SaliencyMethod`, Gradient,
/// GuidedBackprop, Deconvnet, InputXGradient, SmoothGrad, SmoothGradSquared, VarGrad,
/// IntegratedGradients, Occlusion, FeatureAblation, GradientShap, DeepLift, `attribute`,
/// `saliency_map`, `explain`, and the quadrature rules.

#include <igrad/saliency/quadrature.hpp>
#include <igrad/saliency/saliency_methods.hpp>
