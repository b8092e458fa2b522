#pragma once
// The fuzz targets' entry functions, shared by the libFuzzer executables (tests/fuzz/fuzz_*.cpp)
// and the corpus replay test of the doctest suite (tests/unit/reliability_files.cpp); defined in
// targets.cpp. Each must end in success or an igrad exception, whatever the bytes.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <vector>

namespace igrad_fuzz {

/// IDX, gzip-compressed or plain, read as images (rank 3) and as labels (rank 1).
void run_idx(const std::uint8_t* data, std::size_t size);
/// CIFAR binary records, read as CIFAR-10 and as CIFAR-100 with fine and coarse labels.
void run_cifar(const std::uint8_t* data, std::size_t size);
/// `igrad::load_weights` into a tiny net with batch norm.
void run_weights(const std::uint8_t* data, std::size_t size);
/// `igrad::load_checkpoint` into a tiny net with batch norm and Adam.
void run_checkpoint(const std::uint8_t* data, std::size_t size);

/// A fuzz target: its corpus directory's name and its entry.
struct Target {
  const char* name;                              ///< tests/fuzz/corpus/<name>
  void (*run)(const std::uint8_t*, std::size_t);  ///< the entry
};

/// Every target.
std::vector<Target> targets();

/// Pins LibTorch to one thread (fuzzers run two at a time on a small machine); with the
/// environment variable IGRAD_FUZZ_WRITE_SEEDS=<directory>, writes the seed corpus there and exits.
void initialise();

/// Writes a small valid input per target into `<root>/<target>/`.
void write_seeds(const std::filesystem::path& root);

}  // namespace igrad_fuzz
