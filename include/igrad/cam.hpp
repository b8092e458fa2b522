#pragma once
/// @file cam.hpp
/// @brief Sub-umbrella: the CAM family (SPEC §4) — `CamMethod`, the twenty shipped methods,
/// the smoothing wrappers, `explain` / `explain_raw`, `normalize_cam`, map statistics.

#include <igrad/cam/cam_method.hpp>
#include <igrad/cam/eigen_methods.hpp>
#include <igrad/cam/explain.hpp>
#include <igrad/cam/finer_cam.hpp>
#include <igrad/cam/full_grad.hpp>
#include <igrad/cam/gradient_free_methods.hpp>
#include <igrad/cam/gradient_methods.hpp>
#include <igrad/cam/guided_grad_cam.hpp>
#include <igrad/cam/shapley_cam.hpp>
#include <igrad/cam/smoothing.hpp>
#include <igrad/cam/stages.hpp>
