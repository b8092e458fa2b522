// The fuzz targets' entry functions (declared in targets.hpp): each writes the input to a
// scratch file, hands it to one igrad reader, and swallows igrad exceptions. Anything else — another
// exception, a crash, a sanitizer report — is a finding. Compiled once into the fuzzers and into
// igrad_tests, whose corpus replay test calls the same functions.
#include "targets.hpp"

#include <igrad/callbacks/checkpoint.hpp>
#include <igrad/data/cifar.hpp>
#include <igrad/data/idx.hpp>
#include <igrad/models/serialize.hpp>

#include <torch/torch.h>

#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace igrad_fuzz {

/// A tiny model with parameters and buffers (batch norm) of two dtypes (float, int64).
struct NetImpl : torch::nn::Module {
  NetImpl() {
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 2, 3)));
    bn = register_module("bn", torch::nn::BatchNorm2d(2));
    fc = register_module("fc", torch::nn::Linear(2, 3));
  }
  torch::Tensor forward(torch::Tensor x) {
    return fc(torch::relu(bn(conv(x))).mean({2, 3}));
  }
  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(Net);

/// A scratch file of this process, named after the target: fuzzers run in parallel.
inline std::filesystem::path scratch_file(const char* target) {
  const char* directory = std::getenv("TMPDIR");
  return std::filesystem::path(directory != nullptr ? directory : "/tmp") /
         ("igrad-fuzz-" + std::string(target) + "-" + std::to_string(::getpid()));
}

/// Writes `size` bytes to the target's scratch file and returns its path.
inline std::filesystem::path write_input(const char* target, const std::uint8_t* data,
                                         std::size_t size) {
  const auto path = scratch_file(target);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  return path;
}

/// Runs `read`, swallowing igrad's exceptions (the promised outcome for bad input).
template <class Read>
void expect_success_or_igrad_error(Read&& read) {
  try {
    read();
  } catch (const igrad::Error&) {
  }
}

/// IDX, gzip-compressed or plain: as images (rank 3) and as labels (rank 1).
void run_idx(const std::uint8_t* data, std::size_t size) {
  const auto path = write_input("idx", data, size);
  expect_success_or_igrad_error([&] { igrad::data::read_idx_file(path, 3); });
  expect_success_or_igrad_error([&] { igrad::data::read_idx_file(path, 1); });
}

/// CIFAR binary records: as CIFAR-10 (1 label byte) and CIFAR-100 fine and coarse labels.
void run_cifar(const std::uint8_t* data, std::size_t size) {
  const auto path = write_input("cifar", data, size);
  expect_success_or_igrad_error([&] { igrad::detail::read_cifar_records({path}, 1, 0, 10); });
  expect_success_or_igrad_error([&] { igrad::detail::read_cifar_records({path}, 2, 1, 100); });
  expect_success_or_igrad_error([&] { igrad::detail::read_cifar_records({path}, 2, 0, 20); });
}

/// `load_weights` into a fresh `Net`.
void run_weights(const std::uint8_t* data, std::size_t size) {
  const auto path = write_input("weights", data, size);
  Net net;
  expect_success_or_igrad_error([&] { igrad::load_weights(net, path); });
}

/// `load_checkpoint` into a fresh `Net` and Adam.
void run_checkpoint(const std::uint8_t* data, std::size_t size) {
  const auto path = write_input("checkpoint", data, size);
  Net net;
  torch::optim::Adam adam(net->parameters(), 1e-3);
  expect_success_or_igrad_error([&] { igrad::load_checkpoint(path, net, adam); });
}

/// Every target.
std::vector<Target> targets() {
  return {{"idx", run_idx}, {"cifar", run_cifar}, {"weights", run_weights},
          {"checkpoint", run_checkpoint}};
}

void initialise() {
  torch::set_num_threads(1);
  // IGRAD_FUZZ_WRITE_SEEDS=<corpus root>: write the seed corpus and stop (tools/fuzz/run.sh).
  if (const char* root = std::getenv("IGRAD_FUZZ_WRITE_SEEDS")) {
    write_seeds(root);
    std::exit(0);
  }
}

void write_seeds(const std::filesystem::path& root) {
  namespace fs = std::filesystem;
  for (const auto& target : targets()) fs::create_directories(root / target.name);
  const auto write = [](const fs::path& path, const std::vector<std::uint8_t>& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  };
  const auto be32 = [](std::vector<std::uint8_t>& bytes, std::uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) bytes.push_back(static_cast<std::uint8_t>(v >> shift));
  };
  // IDX: two 3x3 images (plain and gzip-compressed) and three labels.
  std::vector<std::uint8_t> images;
  be32(images, 0x0803);
  be32(images, 2);
  be32(images, 3);
  be32(images, 3);
  for (int i = 0; i < 18; ++i) images.push_back(static_cast<std::uint8_t>(i * 14));
  write(root / "idx" / "images_plain", images);
  {
    gzFile file = gzopen((root / "idx" / "images.gz").c_str(), "wb9");
    gzwrite(file, images.data(), static_cast<unsigned>(images.size()));
    gzclose(file);
  }
  std::vector<std::uint8_t> labels;
  be32(labels, 0x0801);
  be32(labels, 3);
  labels.insert(labels.end(), {0, 9, 4});
  write(root / "idx" / "labels_plain", labels);
  // CIFAR: one CIFAR-10 record (1 label byte) and one CIFAR-100 record (2 label bytes).
  std::vector<std::uint8_t> record(1 + 3072);
  for (std::size_t i = 0; i < record.size(); ++i) record[i] = static_cast<std::uint8_t>(i * 7);
  record[0] = 3;
  write(root / "cifar" / "cifar10_record", record);
  record.insert(record.begin(), 7);
  record[1] = 42;
  write(root / "cifar" / "cifar100_record", record);
  // Weights and a checkpoint of the nets the targets load into (after one step: Adam state).
  torch::manual_seed(0);
  Net net;
  igrad::save_weights(net, root / "weights" / "net.pt");
  torch::optim::Adam adam(net->parameters(), 1e-3);
  net(torch::randn({2, 1, 5, 5})).sum().backward();
  adam.step();
  igrad::save_checkpoint(root / "checkpoint" / "net_adam.pt", net, adam, {1, 1});
}

}  // namespace igrad_fuzz
