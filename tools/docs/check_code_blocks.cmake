# Fails when documentation shows code that no test compiles (issues 15 and 17):
# - a header of include/igrad with a Doxygen `@code` / `\code` block: an example in a header must
#   be `@snippet` of a compiled, tested file (tests/unit/doc_snippets.cpp, examples/*.cpp);
# - a Markdown page (README.md, docs/*.md) that pulls its code in with Doxygen directives
#   (`@snippet`, `@include`, `@dontinclude`, `@skip`, `@until`, `@code`) or other Doxygen
#   commands a forge shows as text (`@ref`, `[TOC]`). Pages hold their code inline in ```cpp
#   blocks, which docs.code compiles, and link with Markdown links.
#
#   cmake -DSOURCE_DIR=<repository root> -P check_code_blocks.cmake
if(NOT SOURCE_DIR)
  message(FATAL_ERROR "check_code_blocks.cmake: pass -DSOURCE_DIR=<repository root>")
endif()
set(problems "")
file(GLOB_RECURSE headers RELATIVE ${SOURCE_DIR} ${SOURCE_DIR}/include/igrad/*.hpp)
foreach(header IN LISTS headers)
  file(STRINGS ${SOURCE_DIR}/${header} lines REGEX "[@\\\\](code|endcode)([^a-zA-Z_]|$)")
  foreach(line IN LISTS lines)
    string(STRIP "${line}" line)
    string(APPEND problems "  ${header}: ${line}\n")
  endforeach()
endforeach()
file(GLOB pages RELATIVE ${SOURCE_DIR} ${SOURCE_DIR}/README.md ${SOURCE_DIR}/docs/*.md)
foreach(page IN LISTS pages)
  file(STRINGS ${SOURCE_DIR}/${page} lines
       REGEX "((^|[ \t])[@\\\\](snippet|include|dontinclude|skip|skipline|until|line|code|ref)([ \t{]|$))|^\\[TOC\\]")
  foreach(line IN LISTS lines)
    string(STRIP "${line}" line)
    string(APPEND problems "  ${page}: ${line}\n")
  endforeach()
endforeach()
if(problems)
  message(FATAL_ERROR "Documentation code that no test compiles:\n${problems}"
          "Headers: move the example into tests/unit/doc_snippets.cpp between `//! [name]` "
          "markers and reference it with `@snippet doc_snippets.cpp name`. Pages: put the code "
          "inline in a ```cpp block (tools/docs/doc_blocks.cpp says how docs.code compiles it).")
endif()
list(LENGTH headers header_count)
list(LENGTH pages page_count)
message(STATUS "check_code_blocks: ${header_count} headers and ${page_count} pages hold no uncompiled code")
