# Installs, on Debian, the packages igrad needs and CMake cannot find — only for the parts being
# built (core always; the data/viz components when enabled; doctest for the tests; CLI11 for the
# examples and benchmarks; the Fashion-MNIST package for the tests and the demo). Each missing
# package is printed with the reason it is needed. A dependency CMake already finds (for instance
# LibTorch through Torch_DIR or CMAKE_PREFIX_PATH) is left alone. As root (or with password-less
# sudo) it runs apt-get itself; otherwise it stops and prints the exact apt-get line.
# Only the top-level presets switch this on (IGRAD_BOOTSTRAP_DEPS).

# True in `out` when a CMake package configuration file for `name` is visible to find_package.
function(_igrad_config_visible name out)
  string(TOLOWER "${name}" lower)
  set(dirs "")
  foreach(hint IN ITEMS "${${name}_DIR}" "$ENV{${name}_DIR}")
    if(hint)
      list(APPEND dirs "${hint}")
    endif()
  endforeach()
  find_file(config NAMES ${name}Config.cmake ${lower}-config.cmake
            HINTS ${dirs}
            PATH_SUFFIXES cmake/${name} lib/cmake/${name} lib/${CMAKE_LIBRARY_ARCHITECTURE}/cmake/${name}
                          share/cmake/${name} share/${lower}/cmake lib/cmake/${lower}
            NO_CACHE)
  if(config)
    set(${out} TRUE PARENT_SCOPE)
  else()
    set(${out} FALSE PARENT_SCOPE)
  endif()
endfunction()

function(igrad_bootstrap_debian_packages)
  find_program(IGRAD_DPKG_QUERY dpkg-query)
  if(NOT IGRAD_DPKG_QUERY)
    message(STATUS "igrad: not a Debian system, skipping the package bootstrap")
    return()
  endif()
  set(missing "")
  set(reasons "")
  macro(_igrad_need package reason)
    list(APPEND missing ${package})
    string(APPEND reasons "\n  ${package}: ${reason}")
  endmacro()

  _igrad_config_visible(Torch have)
  if(NOT have)
    _igrad_need(libtorch-dev "LibTorch, for every part of igrad (no TorchConfig.cmake found; set Torch_DIR to use your own)")
  endif()
  # Debian's libtorch-dev ships c10d's Gloo backend without Gloo's headers, which
  # ProcessGroupGloo.hpp includes; a LibTorch of one's own (Torch_DIR outside /usr) ships them.
  set(torch_hint "${Torch_DIR}")
  if(NOT torch_hint)
    set(torch_hint "$ENV{Torch_DIR}")
  endif()
  if(NOT torch_hint OR torch_hint MATCHES "^/usr/")
    find_path(gloo_header gloo/algorithm.h NO_CACHE)
    if(NOT gloo_header)
      _igrad_need(libgloo-dev "Gloo's headers, for multi-process training (igrad/distributed.hpp)")
    endif()
  endif()
  _igrad_config_visible(fmt have)
  if(NOT have)
    _igrad_need(libfmt-dev "fmt, for every part of igrad")
  endif()
  find_path(hana_header boost/hana.hpp NO_CACHE)
  if(NOT hana_header)
    _igrad_need(libboost-dev "Boost.Hana, for every part of igrad")
  endif()
  if(IGRAD_WITH_DATA)
    find_path(zlib_header zlib.h NO_CACHE)
    if(NOT zlib_header)
      _igrad_need(zlib1g-dev "zlib, for the data component (gzip-compressed datasets)")
    endif()
  endif()
  if(IGRAD_WITH_VIZ)
    find_path(stb_header stb_image_write.h PATH_SUFFIXES stb NO_CACHE)
    find_library(stb_library stb NO_CACHE)
    if(NOT stb_header OR NOT stb_library)
      _igrad_need(libstb-dev "stb, for the viz component (PNG figures)")
    endif()
  endif()
  if(IGRAD_BUILD_TESTS)
    _igrad_config_visible(doctest have)
    if(NOT have)
      _igrad_need(doctest-dev "doctest, for the test suite (IGRAD_BUILD_TESTS)")
    endif()
  endif()
  if(IGRAD_BUILD_EXAMPLES OR IGRAD_BUILD_BENCHMARKS)
    _igrad_config_visible(CLI11 have)
    if(NOT have)
      _igrad_need(libcli11-dev "CLI11, for the command lines of the examples and benchmarks")
    endif()
  endif()
  if(IGRAD_BUILD_TESTS OR IGRAD_BUILD_EXAMPLES)
    if(NOT EXISTS /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz)
      _igrad_need(dataset-fashion-mnist "Fashion-MNIST, for the tests and the demo")
    endif()
  endif()

  if(NOT missing)
    message(STATUS "igrad: every dependency of the enabled parts was found")
    return()
  endif()
  list(JOIN missing " " missing_line)
  message(STATUS "igrad: installing missing Debian packages:${reasons}")

  execute_process(COMMAND id -u OUTPUT_VARIABLE uid OUTPUT_STRIP_TRAILING_WHITESPACE)
  set(prefix "")
  if(NOT uid STREQUAL "0")
    find_program(IGRAD_SUDO sudo)
    if(IGRAD_SUDO)
      execute_process(COMMAND ${IGRAD_SUDO} -n true RESULT_VARIABLE sudo_rc OUTPUT_QUIET ERROR_QUIET)
    endif()
    if(NOT IGRAD_SUDO OR NOT sudo_rc EQUAL 0)
      message(FATAL_ERROR
        "igrad needs Debian packages that are not installed, and this user may not install them:"
        "${reasons}\nRun:\n  sudo apt-get update && sudo apt-get install -y ${missing_line}\n"
        "then configure again.")
    endif()
    set(prefix ${IGRAD_SUDO} -n)
  endif()
  execute_process(COMMAND ${CMAKE_COMMAND} -E env DEBIAN_FRONTEND=noninteractive
                          ${prefix} apt-get update -q RESULT_VARIABLE rc)
  execute_process(COMMAND ${CMAKE_COMMAND} -E env DEBIAN_FRONTEND=noninteractive
                          ${prefix} apt-get install -y -q ${missing} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "igrad: apt-get failed (exit ${rc}). Run by hand:\n"
                        "  sudo apt-get update && sudo apt-get install -y ${missing_line}")
  endif()
endfunction()
