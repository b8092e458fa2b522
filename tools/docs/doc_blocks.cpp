// Turns the ```cpp blocks of Markdown files into one C++ translation unit, so that the test suite
// compiles (and runs) the code the documentation shows: a renamed API breaks the build, not the
// reader. Standard C++ only (no LibTorch): it is built and run at build time.
//
//   doc_blocks OUTPUT.cpp FILE.md...
//
// Each file's blocks are read in order; an HTML comment on the line before a block (invisible
// when the Markdown is rendered) says what the block is:
//   (none)                             a complete program when it has `int main(`: compiled and run;
//                                      otherwise statements, appended in order to the body of one
//                                      function per file, which the generated main() runs
//   <!-- doc-test: declarations -->    namespace-scope code (types, functions), visible to the
//                                      file's later blocks
//   <!-- doc-test: compile-only -->    a program or statements compiled but not run (it needs
//                                      what a test has not: a GPU, a user's file, an hour; the
//                                      doc says so)
//   <!-- doc-test: skip -->            not compiled (output, pseudo-code; say why in the doc)
// `<!-- doc-test: setup CODE -->` (or `compile-only setup CODE`) before a statements block adds
// hidden code in front of it: the context a reader does not need to see, e.g. a small random
// batch instead of a dataset.
// #include lines of any block go to the top of the translation unit, after <igrad/igrad.hpp>,
// which every page may assume.
#include <cctype>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Block {
  std::string kind;   // statements, declarations, program, compile-only, skip
  std::string setup;  // hidden statements in front of a statements block
  std::string code;
  int line = 0;       // first line of the code in the Markdown file
};

std::string trim(const std::string& s) {
  const auto first = s.find_first_not_of(" \t\r");
  if (first == std::string::npos) return "";
  return s.substr(first, s.find_last_not_of(" \t\r") - first + 1);
}

std::vector<Block> read_blocks(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::vector<Block> blocks;
  std::string line, previous, marker_kind, marker_setup;
  int number = 0;
  bool inside = false;
  Block current;
  while (std::getline(in, line)) {
    ++number;
    const auto t = trim(line);
    if (!inside && t == "```cpp") {
      inside = true;
      current = Block{};
      current.line = number + 1;
      current.kind = "statements";
      const auto p = trim(previous);
      const std::string tag = "<!-- doc-test:";
      if (p.rfind(tag, 0) == 0 && p.size() >= tag.size() + 3 && p.substr(p.size() - 3) == "-->") {
        // "KIND", "setup CODE" or "compile-only setup CODE"
        std::string body = trim(p.substr(tag.size(), p.size() - tag.size() - 3));
        const auto space = body.find(' ');
        current.kind = body.substr(0, space);
        std::string rest = space == std::string::npos ? "" : trim(body.substr(space + 1));
        if (current.kind == "setup") {
          current.kind = "statements";
          rest = "setup " + rest;
        }
        if (rest.rfind("setup ", 0) == 0) current.setup = rest.substr(6);
        static const std::set<std::string> kinds{"statements", "declarations", "compile-only",
                                                 "skip"};
        if (!kinds.count(current.kind))
          throw std::runtime_error(path + ":" + std::to_string(number - 1) +
                                   ": unknown doc-test kind '" + current.kind + "'");
      }
    } else if (inside && t == "```") {
      inside = false;
      const bool program = current.code.find("int main(") != std::string::npos;
      if (current.kind == "statements" && program) current.kind = "program";
      if (current.kind == "compile-only" && !program) current.kind = "compile-only-statements";
      blocks.push_back(current);
    } else if (inside) {
      current.code += line + "\n";
    }
    if (!t.empty()) previous = line;
  }
  if (inside) throw std::runtime_error(path + ": a ```cpp block is not closed");
  return blocks;
}

std::string identifier(const std::string& path) {
  std::string id = "doc_";
  for (char c : path) id += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return id;
}

}  // namespace

int main(int argc, char** argv) try {
  if (argc < 3) {
    std::cerr << "usage: doc_blocks OUTPUT.cpp FILE.md...\n";
    return 2;
  }
  std::set<std::string> includes;
  std::ostringstream body, runner;
  int programs = 0, compiled = 0;
  for (int a = 2; a < argc; ++a) {
    const std::string path = argv[a];
    const auto blocks = read_blocks(path);
    const auto ns = identifier(path);
    // One namespace per file; its blocks in order, so later blocks see earlier declarations.
    std::ostringstream statements;
    bool has_statements = false;
    body << "namespace " << ns << " {\n";
    for (std::size_t b = 0; b < blocks.size(); ++b) {
      const auto& block = blocks[b];
      if (block.kind == "skip") continue;
      ++compiled;
      std::ostringstream code;
      std::istringstream lines(block.code);
      std::string line;
      while (std::getline(lines, line)) {
        if (trim(line).rfind("#include", 0) == 0)
          includes.insert(trim(line));
        else
          code << line << "\n";
      }
      const auto origin = "#line " + std::to_string(block.line) + " \"" + path + "\"\n";
      if (block.kind == "declarations") {
        body << origin << code.str();
      } else if (block.kind == "compile-only-statements") {
        body << "[[maybe_unused]] void compile_only_" << b << "() {\n" << block.setup << "\n"
             << origin << code.str() << "}\n";
      } else if (block.kind == "statements") {
        has_statements = true;
        if (!block.setup.empty()) statements << block.setup << "\n";
        statements << origin << code.str();
      } else {  // program or compile-only: a nested namespace, main renamed
        const auto name = "program_" + std::to_string(b);
        std::string text = code.str();
        text.replace(text.find("int main("), 9, "int program_main(");
        // main() may end without a return; a renamed main may not. A program that runs must
        // return its status (the target makes a missing one an error); one compiled only may omit it.
        const bool run = block.kind == "program";
        if (!run) body << "#pragma GCC diagnostic push\n#pragma GCC diagnostic ignored \"-Wreturn-type\"\n";
        body << "namespace " << name << " {\n" << origin << text << "}  // namespace " << name
             << "\n";
        if (!run) body << "#pragma GCC diagnostic pop\n";
        if (block.kind == "program") {
          ++programs;
          runner << "  run(\"" << path << ":" << block.line << "\", [] { return " << ns
                 << "::" << name << "::program_main(); });\n";
        }
      }
    }
    if (has_statements) {
      // Statements of one file share a scope in order, as a reader follows them.
      body << "int statements() {\n" << statements.str() << "return 0;\n}\n";
      runner << "  run(\"" << path << " (statements)\", [] { return " << ns
             << "::statements(); });\n";
    }
    body << "}  // namespace " << ns << "\n";
  }
  std::ofstream out(argv[1]);
  out << "// Generated by tools/docs/doc_blocks.cpp from the documentation: do not edit.\n"
      << "#include <igrad/igrad.hpp>  // what every page assumes\n";
  for (const auto& include : includes) out << include << "\n";
  out << "#include <cstdio>\n#include <exception>\n\n" << body.str() << "\n"
      << "namespace {\nint failures = 0;\n"
      << "template <class F> void run(const char* where, F f) {\n"
      << "  try {\n    if (f() != 0) { std::fprintf(stderr, \"%s: returned non-zero\\n\", where); ++failures; }\n"
      << "  } catch (const std::exception& e) {\n"
      << "    std::fprintf(stderr, \"%s: %s\\n\", where, e.what()); ++failures;\n  }\n}\n}  // namespace\n\n"
      << "int main() {\n" << runner.str()
      << "  std::printf(\"documentation code: %d failed\\n\", failures);\n"
      << "  return failures == 0 ? 0 : 1;\n}\n";
  std::cout << "doc_blocks: " << compiled << " blocks (" << programs << " programs run) into "
            << argv[1] << "\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "doc_blocks: " << e.what() << "\n";
  return 1;
}
