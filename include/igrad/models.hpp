#pragma once
/// @file models.hpp
/// @brief Everything of igrad's model zoo: SmallCNN, ResNet-18 and MobileNet-V2 (CIFAR variants),
/// the Sequential / callables / TorchScript adapters, and weight serialisation.

#include <igrad/models/adapters.hpp>
#include <igrad/models/mobilenet_v2.hpp>
#include <igrad/models/resnet.hpp>
#include <igrad/models/serialize.hpp>
#include <igrad/models/small_cnn.hpp>
#include <igrad/models/torchscript.hpp>
