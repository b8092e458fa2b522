#include <torch/torch.h>
#include <igrad/igrad.hpp>
