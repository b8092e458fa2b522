#pragma once
/// @file viz.hpp
/// @brief Sub-umbrella: pictures of explanations — colormaps, overlays, grids, PNG output.

#include <igrad/viz/colormap.hpp>
#include <igrad/viz/comparison.hpp>
#include <igrad/viz/figure.hpp>
#include <igrad/viz/plot.hpp>
#include <igrad/viz/sanity_figure.hpp>
