# Compile-fail checks (tests/CMakeLists.txt). Two modes:
#
#   cmake -DBUILD_DIR=<tree> -DTARGET=<target> -DLOG=<file> -P expect_failure.cmake
#     builds TARGET, which compiles every case of entry_points.cpp at once; passes only if that
#     build fails, and keeps the compiler's messages in LOG for the checks below.
#   cmake -DLOG=<file> -DCASE=<name> -DEXPECT=<concept> -DEXPECT_DETAIL=<pattern or -> -P ...
#     passes only if case CASE failed with a message that names the concept EXPECT (and matches
#     EXPECT_DETAIL unless it is "-"), reported as a C++20 constraint diagnostic or one of igrad's
#     static_asserts: the failure must be the concept check, not an unrelated error.
#
# A case's messages are the lines from one that names the case's function (its `#line` file name,
# "case_<name>:") up to the next line that names another case: g++ prints the "required from here"
# or "In function" line of a case before that case's error and notes.
if(DEFINED TARGET)
  execute_process(COMMAND ${CMAKE_COMMAND} --build ${BUILD_DIR} --target ${TARGET}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  file(WRITE ${LOG} "${out}${err}")
  if(rc EQUAL 0)
    message(FATAL_ERROR "${TARGET} compiled, but it must not: every case holds a wrong type")
  endif()
  message(STATUS "${TARGET} was rejected; the compiler's messages are in ${LOG}")
  return()
endif()

file(READ ${LOG} all)
# One list element per line: ';' and brackets would split or group CMake list elements.
string(REPLACE ";" "," all "${all}")
string(REPLACE "[" "(" all "${all}")
string(REPLACE "]" ")" all "${all}")
string(REPLACE "\n" ";" lines "${all}")
set(messages "")
set(inside FALSE)
foreach(line IN LISTS lines)
  if(line MATCHES "^case_([a-z_]+):")
    if(CMAKE_MATCH_1 STREQUAL CASE)
      set(inside TRUE)
    else()
      set(inside FALSE)
    endif()
  endif()
  if(inside)
    string(APPEND messages "${line}\n")
  endif()
endforeach()
if(messages STREQUAL "")
  message(FATAL_ERROR "case_${CASE} compiled: a wrong policy went unnoticed (${LOG})")
endif()
if(NOT messages MATCHES "error:" OR NOT messages MATCHES "${EXPECT}"
   OR NOT messages MATCHES "constraint|static assertion failed")
  message(FATAL_ERROR "case_${CASE} failed, but not with a concept check naming ${EXPECT}:\n${messages}")
endif()
if(DEFINED EXPECT_DETAIL AND NOT EXPECT_DETAIL STREQUAL "-" AND NOT messages MATCHES "${EXPECT_DETAIL}")
  message(FATAL_ERROR "case_${CASE} failed naming ${EXPECT}, but not ${EXPECT_DETAIL}:\n${messages}")
endif()
message(STATUS "case_${CASE} was rejected with a message naming ${EXPECT}")
