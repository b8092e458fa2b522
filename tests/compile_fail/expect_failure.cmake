# Builds TARGET in BUILD_DIR and passes only if the build fails with a message matching EXPECT
# and a C++20 constraint diagnostic, i.e. the failure is the concept check, not something else.
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BUILD_DIR} --target ${TARGET}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
set(all "${out}${err}")
if(rc EQUAL 0)
  message(FATAL_ERROR "${TARGET} compiled, but it must not: a wrong policy went unnoticed")
endif()
if(NOT all MATCHES "${EXPECT}" OR NOT all MATCHES "constraint")
  message(FATAL_ERROR "${TARGET} failed, but not with a constraint message naming ${EXPECT}:\n${all}")
endif()
message(STATUS "${TARGET} was rejected with a message naming ${EXPECT}")
