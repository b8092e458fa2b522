// The sanitizer runtimes' defaults for igrad's instrumented test binary (IGRAD_SANITIZE).
//
// Compiled into the binary rather than set in the environment because the binary also runs at
// build time (doctest's test discovery) and by hand, and must behave the same there as under
// CTest. ASAN_OPTIONS, UBSAN_OPTIONS and LSAN_OPTIONS in the environment still override these.
//
// LibTorch's libraries are not instrumented: what they do wrong, or what ASan cannot see through
// them, is suppressed here by LibTorch's own names only, each with the reason. igrad's own code is
// never suppressed: a finding there is a bug to fix.

extern "C" {

/// ASan: fail on the first error; also check the order of dynamic initialisers of globals.
/// `suppressions` names ASan's own file (odr_violation / interceptor_via_lib entries).
const char* __asan_default_options() {
  return "halt_on_error=1:detect_leaks=1:check_initialization_order=1:strict_init_order=1"
         ":suppressions=" IGRAD_SANITIZER_DIR "/asan.supp";
}

/// UBSan: compiled recoverable (so that suppressions work), halted here on the first finding.
const char* __ubsan_default_options() {
  return "halt_on_error=1:print_stacktrace=1:suppressions=" IGRAD_SANITIZER_DIR "/ubsan.supp";
}

/// LeakSanitizer's suppressions (it reads no file of its own here: `suppressions` above is ASan's).
const char* __lsan_default_suppressions() {
  return "";
}
}
