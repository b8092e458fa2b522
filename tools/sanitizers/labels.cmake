# CTest labels for the sanitizer lane (IGRAD_SANITIZE; the asan-ubsan test preset leaves out the
# label "sanitizer_skip"). Read by CTest after doctest's discovered tests, so it can label them by
# name; a name that is not built (a narrowed IGRAD_TEST_GLOB) is ignored. Each entry says why it
# cannot run under ASan; the main suite runs all of them.

# Measures resident memory over 10 000 calls: ASan keeps freed blocks in its quarantine (256 MiB
# by default) and allocates shadow memory, so RSS grows by design. LeakSanitizer checks the same
# code for leaks in every other test that calls explain().
set_tests_properties("explain: 10 000 consecutive calls inside training leave no memory behind"
                     PROPERTIES LABELS sanitizer_skip)
