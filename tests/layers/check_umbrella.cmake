# The umbrella header's scope: nothing reachable from <igrad/igrad.hpp> through igrad's own
# includes may include c10d or TorchScript's loader, which <torch/torch.h> leaves out as well
# and which cost every file that includes the umbrella about 9 % of LibTorch's compiler work
# (README, "Per-area headers and compile time"). Reads the headers only.
#
#   cmake -DINCLUDE_DIR=<repository>/include -P check_umbrella.cmake
cmake_minimum_required(VERSION 3.25)
if(NOT INCLUDE_DIR)
  message(FATAL_ERROR "check_umbrella.cmake: pass -DINCLUDE_DIR=<repository>/include")
endif()

include(${CMAKE_CURRENT_LIST_DIR}/header_includes.cmake)

# What the umbrella must not reach: c10d, the TorchScript loader and the JIT's internals.
set(left_out_pattern "^(torch/script\\.h|torch/csrc/distributed/|torch/csrc/jit/)")

set(pending "igrad/igrad.hpp")
set(seen "")
set(offences "")
while(pending)
  list(POP_FRONT pending header)
  if(header IN_LIST seen)
    continue()
  endif()
  list(APPEND seen ${header})
  if(NOT EXISTS ${INCLUDE_DIR}/${header})
    message(FATAL_ERROR "check_umbrella.cmake: ${header} is included but not in ${INCLUDE_DIR}")
  endif()
  igrad_header_includes(${header} ${INCLUDE_DIR} includes)
  foreach(included IN LISTS includes)
    if(included MATCHES "^igrad/")
      list(APPEND pending ${included})
    elseif(included MATCHES "${left_out_pattern}")
      list(APPEND offences "${header} includes <${included}>")
    endif()
  endforeach()
endwhile()

list(LENGTH seen reached)
if(offences)
  list(JOIN offences "\n  " listed)
  message(FATAL_ERROR "<igrad/igrad.hpp> reaches headers it must leave out (c10d, TorchScript; "
                      "include them from <igrad/distributed.hpp> or "
                      "<igrad/models/torchscript.hpp> only):\n  ${listed}")
endif()
message(STATUS "the umbrella's ${reached} igrad headers include neither c10d nor TorchScript")
