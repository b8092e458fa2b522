#pragma once
/// @file models.hpp
/// @brief igrad's model zoo: SmallCNN, ResNet-18 and MobileNet-V2 (CIFAR variants), the
/// Sequential / callables adapters, and weight serialisation.
///
/// The TorchScript adapter (`load_torchscript`, `from_torchscript`) has its own header,
/// <igrad/models/torchscript.hpp>: it needs <torch/script.h>, which <torch/torch.h> leaves out.

#include <igrad/models/adapters.hpp>
#include <igrad/models/mobilenet_v2.hpp>
#include <igrad/models/resnet.hpp>
#include <igrad/models/serialize.hpp>
#include <igrad/models/small_cnn.hpp>
