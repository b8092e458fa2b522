# Study resume test (ctest examples.study_resume): a tiny study run straight through, the same
# study stopped after its first run (--max-runs 1) and rerun, and the same study shared out over
# two processes (tools/launch/local.sh) must write the same differences.csv; the stopped one must
# have left exactly one finished run behind.
# Usage: cmake -DSTUDY=<igrad_study> -DWORK=<scratch folder> -DLAUNCH=<tools/launch/local.sh>
#        -P resume_test.cmake
if(NOT STUDY OR NOT WORK OR NOT LAUNCH)
  message(FATAL_ERROR "resume_test.cmake needs -DSTUDY=<igrad_study>, -DWORK=<folder> and "
                      "-DLAUNCH=<tools/launch/local.sh>")
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

# Two ranks, each with its share of the runs, one thread each.
execute_process(COMMAND ${CMAKE_COMMAND} -E env IGRAD_LAUNCH_LOGS=${WORK}/two_ranks_logs
                        bash ${LAUNCH} --timeout 1200 2 ${STUDY} --smoke --threads 1
                        --output ${WORK}/two_ranks
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 1500)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the two-rank study failed (${rc}):\n${out}\n${err}")
endif()
file(READ ${WORK}/two_ranks_logs/rank1.log rank1)
if(NOT out MATCHES "rank 0 of 2 \\(torchrun\\)" OR NOT out MATCHES "== finished"
   OR NOT rank1 MATCHES "rank 1 of 2" OR NOT rank1 MATCHES "== finished")
  message(FATAL_ERROR "the two ranks did not each run part of the study:\nrank 0:\n${out}\n"
                      "rank 1:\n${rank1}")
endif()

foreach(study resumed two_ranks)
  foreach(name differences.csv best_lambda.txt)
    file(READ ${WORK}/straight/${name} straight)
    file(READ ${WORK}/${study}/${name} other)
    if(NOT straight STREQUAL other)
      message(FATAL_ERROR "${name} differs between the straight and the ${study} study:\n"
                          "straight:\n${straight}\n${study}:\n${other}")
    endif()
  endforeach()
endforeach()
file(STRINGS ${WORK}/straight/differences.csv rows)
list(LENGTH rows row_count)
# 2 configurations (cosine and mse at the chosen λ) x (accuracy + 2 methods x 7 metrics) + header
if(NOT row_count EQUAL 31)
  message(FATAL_ERROR "differences.csv has ${row_count} lines; expected 31")
endif()
# The side-by-side maps of the baseline and the chosen λ's model, linked from the report.
foreach(study straight resumed two_ranks)
  file(READ ${WORK}/${study}/report.md report)
  if(NOT EXISTS ${WORK}/${study}/maps.png OR NOT report MATCHES "!\\[maps\\]\\(maps.png\\)")
    message(FATAL_ERROR "the ${study} study wrote no maps.png linked from its report.md")
  endif()
endforeach()
message(STATUS "study resume: the resumed and the two-rank studies' reports equal the straight one's")
