#pragma once
/// @file data.hpp
/// @brief Everything of igrad's data: Fashion-MNIST, CIFAR-10/100, cluttered Fashion-MNIST, and
/// the in-memory image dataset and normalisation they share.

#include <igrad/data/augment.hpp>
#include <igrad/data/cifar.hpp>
#include <igrad/data/cluttered.hpp>
#include <igrad/data/fashion_mnist.hpp>
#include <igrad/data/idx.hpp>
#include <igrad/data/image_dataset.hpp>
#include <igrad/data/image_folder.hpp>
#include <igrad/data/sampler.hpp>
