# Study resume test (ctest examples.study_resume): a tiny study run straight through and the same
# study stopped after its first run (--max-runs 1) and rerun must write the same differences.csv,
# and the stopped one must have left exactly one finished run behind.
# Usage: cmake -DSTUDY=<igrad_study> -DWORK=<scratch folder> -P resume_test.cmake
if(NOT STUDY OR NOT WORK)
  message(FATAL_ERROR "resume_test.cmake needs -DSTUDY=<igrad_study> and -DWORK=<folder>")
endif()
file(REMOVE_RECURSE ${WORK})

function(run_study)
  execute_process(COMMAND ${STUDY} --smoke --threads 1 ${ARGN}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 1500)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "igrad_study ${ARGN} failed (${rc}):\n${out}\n${err}")
  endif()
endfunction()

run_study(--output ${WORK}/straight)
run_study(--output ${WORK}/resumed --max-runs 1)
file(GLOB finished LIST_DIRECTORIES true ${WORK}/resumed/runs/*/summary.txt)
list(LENGTH finished count)
if(NOT count EQUAL 1)
  message(FATAL_ERROR "--max-runs 1 left ${count} finished runs; expected 1")
endif()
run_study(--output ${WORK}/resumed)

foreach(name differences.csv best_lambda.txt)
  file(READ ${WORK}/straight/${name} straight)
  file(READ ${WORK}/resumed/${name} resumed)
  if(NOT straight STREQUAL resumed)
    message(FATAL_ERROR "${name} differs between the straight and the resumed study:\n"
                        "straight:\n${straight}\nresumed:\n${resumed}")
  endif()
endforeach()
file(STRINGS ${WORK}/straight/differences.csv rows)
list(LENGTH rows row_count)
# 2 configurations (cosine and mse at the chosen λ) x (accuracy + 2 methods x 7 metrics) + header
if(NOT row_count EQUAL 31)
  message(FATAL_ERROR "differences.csv has ${row_count} lines; expected 31")
endif()
# The side-by-side maps of the baseline and the chosen λ's model, linked from the report.
foreach(study straight resumed)
  file(READ ${WORK}/${study}/report.md report)
  if(NOT EXISTS ${WORK}/${study}/maps.png OR NOT report MATCHES "!\\[maps\\]\\(maps.png\\)")
    message(FATAL_ERROR "the ${study} study wrote no maps.png linked from its report.md")
  endif()
endforeach()
message(STATUS "study resume: the resumed study's report equals the straight one's")
