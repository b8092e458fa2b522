#pragma once
/// @file distributed.hpp
/// @brief Scale-out over LibTorch's c10d: a process group from the launchers' variables,
/// data-parallel training with the ordinary `Trainer`, and sharded evaluation
/// (docs/distributed.md).

#include <igrad/distributed/data_parallel.hpp>
#include <igrad/distributed/evaluation.hpp>
#include <igrad/distributed/process_group.hpp>
