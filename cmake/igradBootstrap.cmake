# Installs the Debian packages igrad's build, tests and demo need, when they are missing.
# As root (or with password-less sudo) it runs apt-get itself; otherwise it stops and prints the
# exact apt-get line to run. Only the top-level presets switch this on (IGRAD_BOOTSTRAP_DEPS).

set(IGRAD_DEBIAN_PACKAGES
  libtorch-dev libgloo-dev libboost-dev libfmt-dev doctest-dev libstb-dev libcli11-dev zlib1g-dev
  dataset-fashion-mnist)

function(igrad_bootstrap_debian_packages)
  find_program(IGRAD_DPKG_QUERY dpkg-query)
  if(NOT IGRAD_DPKG_QUERY)
    message(STATUS "igrad: not a Debian system, skipping the package bootstrap")
    return()
  endif()
  set(missing "")
  foreach(pkg IN LISTS IGRAD_DEBIAN_PACKAGES)
    execute_process(COMMAND ${IGRAD_DPKG_QUERY} -W -f=\${Status} ${pkg}
                    OUTPUT_VARIABLE status ERROR_QUIET)
    if(NOT status MATCHES "install ok installed")
      list(APPEND missing ${pkg})
    endif()
  endforeach()
  if(NOT missing)
    message(STATUS "igrad: all Debian packages present")
    return()
  endif()
  list(JOIN missing " " missing_line)
  message(STATUS "igrad: installing missing Debian packages: ${missing_line}")

  execute_process(COMMAND id -u OUTPUT_VARIABLE uid OUTPUT_STRIP_TRAILING_WHITESPACE)
  set(prefix "")
  if(NOT uid STREQUAL "0")
    find_program(IGRAD_SUDO sudo)
    if(IGRAD_SUDO)
      execute_process(COMMAND ${IGRAD_SUDO} -n true RESULT_VARIABLE sudo_rc OUTPUT_QUIET ERROR_QUIET)
    endif()
    if(NOT IGRAD_SUDO OR NOT sudo_rc EQUAL 0)
      message(FATAL_ERROR
        "igrad needs Debian packages that are not installed, and this user may not install them.\n"
        "Run:\n  sudo apt-get update && sudo apt-get install -y ${missing_line}\n"
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
