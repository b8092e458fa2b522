# igrad_header_includes(HEADER INCLUDE_DIR OUT): the <...> names that HEADER (relative to
# INCLUDE_DIR) includes, in order. Shared by the layering and umbrella checks.
function(igrad_header_includes header include_dir out)
  file(STRINGS ${include_dir}/${header} lines REGEX "^[ \t]*#[ \t]*include[ \t]*<[^>]+>")
  set(names "")
  foreach(line IN LISTS lines)
    string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*<([^>]+)>.*$" "\\1" included "${line}")
    list(APPEND names ${included})
  endforeach()
  set(${out} ${names} PARENT_SCOPE)
endfunction()
