# Builds TARGET in BUILD_DIR and passes only if the build fails with a message that names the
# concept EXPECT (and matches EXPECT_DETAIL unless it is "-"), reported as a C++20 constraint
# diagnostic or one of igrad's static_asserts: the failure must be the concept check, not an
# unrelated error.
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BUILD_DIR} --target ${TARGET}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
set(all "${out}${err}")
if(rc EQUAL 0)
  message(FATAL_ERROR "${TARGET} compiled, but it must not: a wrong policy went unnoticed")
endif()
if(NOT all MATCHES "${EXPECT}" OR NOT all MATCHES "constraint|static assertion failed")
  message(FATAL_ERROR "${TARGET} failed, but not with a concept check naming ${EXPECT}:\n${all}")
endif()
if(DEFINED EXPECT_DETAIL AND NOT EXPECT_DETAIL STREQUAL "-" AND NOT all MATCHES "${EXPECT_DETAIL}")
  message(FATAL_ERROR "${TARGET} failed naming ${EXPECT}, but not ${EXPECT_DETAIL}:\n${all}")
endif()
message(STATUS "${TARGET} was rejected with a message naming ${EXPECT}")
