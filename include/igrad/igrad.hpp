#pragma once
/// @file igrad.hpp
/// @brief The umbrella header: everything igrad offers but scale-out and the TorchScript loader.
///
/// As LibTorch's own <torch/torch.h> leaves out c10d and <torch/script.h>, this header leaves out
/// the two parts of igrad built on them, which cost every translation unit that includes it about
/// 9 % of LibTorch's own compiler work (g++'s allocated memory) and are needed by few: include
/// <igrad/distributed.hpp> (process groups, `DataParallel`, sharded evaluation) and
/// <igrad/models/torchscript.hpp> (`load_torchscript`, `from_torchscript`) where you use them.
///
/// igrad trains convolutional networks whose input gradients explain better (Torres Figueroa et
/// al., "A Learning Paradigm for Interpretable Gradients", VISAPP 2024), explains them with the
/// CAM family and input-space saliency, and measures the explanations. See the README (the main
/// page) and the pages @ref tutorial and @ref custom_policies.

#include <igrad/ablation.hpp>
#include <igrad/allocator.hpp>
#include <igrad/callbacks/callback.hpp>
#include <igrad/callbacks/checkpoint.hpp>
#include <igrad/callbacks/csv_logger.hpp>
#include <igrad/callbacks/early_stopping.hpp>
#include <igrad/callbacks/explanation_monitor.hpp>
#include <igrad/callbacks/gradient_clipping.hpp>
#include <igrad/callbacks/lambda_schedule.hpp>
#include <igrad/callbacks/progress_bar.hpp>
#include <igrad/cam.hpp>
#include <igrad/data.hpp>
#include <igrad/errors/error_functions.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/metrics.hpp>
#include <igrad/metrics/evaluate_cams.hpp>
#include <igrad/model.hpp>
#include <igrad/models.hpp>
#include <igrad/normalization.hpp>
#include <igrad/regularised_loss.hpp>
#include <igrad/rules/backprop_rules.hpp>
#include <igrad/rules/input_gradient.hpp>
#include <igrad/saliency.hpp>
#include <igrad/schedules.hpp>
#include <igrad/stats.hpp>
#include <igrad/study.hpp>
#include <igrad/trainer.hpp>
#include <igrad/version.hpp>
#include <igrad/viz.hpp>
