// Reliability of igrad's files (issue 14): weights and checkpoints refuse what does not fit
// (dtype, device, optimizer kind, flipped bytes) without changing the model, resume is exact
// whatever the order in which the loader is built, the Checkpoint callback checks its path
// before the first step and survives SIGKILL, and every fuzz corpus file ends in success or an
// igrad exception.
#include "../fuzz/targets.hpp"
#include "test_support.hpp"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;
using igrad_test::remove_tree;
using igrad_test::TinyConv;

namespace {

fs::path scratch(const std::string& name) {
  const auto dir = fs::path(IGRAD_TEST_BINARY_DIR) / "reliability_files" / name;
  remove_tree(dir);
  fs::create_directories(dir);
  return dir;
}

std::vector<torch::Tensor> snapshot(const std::vector<torch::Tensor>& tensors) {
  std::vector<torch::Tensor> copies;
  for (const auto& t : tensors) copies.push_back(t.detach().clone());
  return copies;
}

bool all_equal(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i].scalar_type() != b[i].scalar_type() || !torch::equal(a[i], b[i])) return false;
  return true;
}

/// Parameters and buffers: everything a weights file holds.
std::vector<torch::Tensor> state_of(const TinyConv& model) {
  auto all = model->parameters();
  for (const auto& b : model->buffers()) all.push_back(b);
  return all;
}

std::vector<char> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const fs::path& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

/// Where the raw bytes of `values` (a float tensor's data) start in `bytes`; npos when absent.
std::size_t find_tensor_data(const std::vector<char>& bytes, const torch::Tensor& values) {
  const auto contiguous = values.contiguous();
  const auto* begin = static_cast<const char*>(contiguous.data_ptr());
  const auto size = static_cast<std::size_t>(contiguous.nbytes());
  const auto at = std::search(bytes.begin(), bytes.end(), begin, begin + size);
  return at == bytes.end() ? std::string::npos : static_cast<std::size_t>(at - bytes.begin());
}

struct ToyDataset : torch::data::datasets::Dataset<ToyDataset> {
  torch::Tensor images, labels;
  explicit ToyDataset(int64_t n) {
    torch::manual_seed(11);
    images = torch::randn({n, 1, 6, 6});
    labels = torch::randint(0, 3, {n}, torch::kLong);
  }
  torch::data::Example<> get(size_t i) override {
    return {images[static_cast<int64_t>(i)], labels[static_cast<int64_t>(i)]};
  }
  torch::optional<size_t> size() const override { return images.size(0); }
};

struct CountBatches {
  int batches = 0;
  void on_batch_end(igrad::TrainerState&, const igrad::StepResult&) { ++batches; }
};

}  // namespace

TEST_CASE("reliability: load_weights refuses a file of another dtype and names the tensor") {
  const auto dir = scratch("dtype");
  torch::manual_seed(1);
  TinyConv as_double(3, true);
  as_double->to(torch::kDouble);
  igrad::save_weights(as_double, dir / "double.pt");
  TinyConv as_float(3, true);
  igrad::save_weights(as_float, dir / "float.pt");

  // double file -> float model
  TinyConv target(3, true);
  const auto before = snapshot(state_of(target));
  CHECK_THROWS_WITH_AS(igrad::load_weights(target, dir / "double.pt"),
                       doctest::Contains("conv.weight"), igrad::DataError);
  CHECK_THROWS_WITH_AS(igrad::load_weights(target, dir / "double.pt"),
                       doctest::Contains("Double"), igrad::DataError);
  CHECK(all_equal(before, state_of(target)));
  // float file -> double model
  TinyConv wide(3, true);
  wide->to(torch::kDouble);
  const auto wide_before = snapshot(state_of(wide));
  CHECK_THROWS_WITH_AS(igrad::load_weights(wide, dir / "float.pt"),
                       doctest::Contains("Float"), igrad::DataError);
  CHECK(all_equal(wide_before, state_of(wide)));
  // Checkpoints go through the same check.
  torch::optim::SGD sgd_double(as_double->parameters(), 0.1);
  igrad::save_checkpoint(dir / "double_ckpt.pt", as_double, sgd_double, {1, 2});
  torch::optim::SGD sgd(target->parameters(), 0.1);
  CHECK_THROWS_WITH_AS(igrad::load_checkpoint(dir / "double_ckpt.pt", target, sgd),
                       doctest::Contains("Double"), igrad::DataError);
  CHECK(all_equal(before, state_of(target)));
  // The same dtype still loads, value for value.
  igrad::load_weights(target, dir / "float.pt");
  CHECK(all_equal(snapshot(state_of(as_float)), state_of(target)));
}

TEST_CASE("reliability: load_checkpoint with another optimizer kind leaves model and optimizer") {
  const auto dir = scratch("optimizer_kind");
  torch::manual_seed(2);
  TinyConv saved(3, true);
  torch::optim::Adam adam(saved->parameters(), 1e-2);
  {
    igrad::Trainer<> trainer(saved, adam);
    trainer.step(torch::randn({4, 1, 6, 6}), torch::tensor({0, 1, 2, 0}));
  }
  igrad::save_checkpoint(dir / "adam.pt", saved, adam, {1, 1});

  TinyConv model(3, true);
  torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  {
    igrad::Trainer<> trainer(model, sgd);  // gives SGD a momentum buffer to lose
    trainer.step(torch::randn({4, 1, 6, 6}), torch::tensor({2, 1, 0, 0}));
  }
  const auto before = snapshot(state_of(model));
  std::ostringstream sgd_before;
  {
    torch::serialize::OutputArchive archive;
    sgd.save(archive);
    archive.save_to(sgd_before);
  }
  CHECK_THROWS_WITH_AS(igrad::load_checkpoint(dir / "adam.pt", model, sgd),
                       doctest::Contains("optimizer"), igrad::DataError);
  CHECK(all_equal(before, state_of(model)));
  std::ostringstream sgd_after;
  {
    torch::serialize::OutputArchive archive;
    sgd.save(archive);
    archive.save_to(sgd_after);
  }
  CHECK(sgd_before.str() == sgd_after.str());
  // The right kind loads.
  torch::optim::Adam adam_again(model->parameters(), 1e-2);
  CHECK(igrad::load_checkpoint(dir / "adam.pt", model, adam_again).global_step == 1);
  CHECK(all_equal(snapshot(state_of(saved)), state_of(model)));
}

TEST_CASE("reliability: a flipped byte in a weights or checkpoint file is a DataError") {
  const auto dir = scratch("flipped");
  torch::manual_seed(3);
  TinyConv saved(3, true);
  {
    torch::NoGradGuard no_grad;
    saved->fc->bias.copy_(torch::tensor({1.25f, -2.5f, 3.75f}));  // easy to find in the file
  }
  igrad::save_weights(saved, dir / "weights.pt");
  torch::optim::Adam adam(saved->parameters(), 1e-2);
  igrad::save_checkpoint(dir / "checkpoint.pt", saved, adam, {1, 1});

  for (const char* name : {"weights.pt", "checkpoint.pt"}) {
    CAPTURE(name);
    auto bytes = read_bytes(dir / name);
    const auto at = find_tensor_data(bytes, saved->fc->bias);
    REQUIRE(at != std::string::npos);
    bytes[at + 3] = 0x7e;  // the first bias's exponent byte: 1.25 (0x3fa00000) becomes 1.06e38
    write_bytes(dir / "flipped.pt", bytes);
    TinyConv model(3, true);
    torch::optim::Adam optimizer(model->parameters(), 1e-2);
    const auto before = snapshot(state_of(model));
    const auto load = [&] {
      if (std::string(name) == "weights.pt")
        igrad::load_weights(model, dir / "flipped.pt");
      else
        igrad::load_checkpoint(dir / "flipped.pt", model, optimizer);
    };
    // Caught by the zip container's CRC-32s, checked before LibTorch parses anything.
    CHECK_THROWS_WITH_AS(load(), doctest::Contains("CRC-32"), igrad::DataError);
    CHECK(all_equal(before, state_of(model)));
  }
}

TEST_CASE("reliability: a weights file re-packed with other values fails igrad's digest") {
  // A file whose zip CRCs are right but whose tensors differ from what igrad digested: what a
  // tool that rewrites archives would leave after damage. Built with plain LibTorch.
  const auto dir = scratch("repacked");
  torch::manual_seed(13);
  TinyConv saved(3, true);
  igrad::save_weights(saved, dir / "weights.pt");
  torch::serialize::InputArchive in;
  in.load_from((dir / "weights.pt").string());
  torch::Tensor digest;
  in.read("igrad_digest", digest);
  TinyConv changed(3, true);
  changed->load(in);
  {
    torch::NoGradGuard no_grad;
    changed->fc->bias[0].fill_(5.6e37);
  }
  torch::serialize::OutputArchive out;
  changed->save(out);
  out.write("igrad_digest", digest);
  out.save_to((dir / "repacked.pt").string());
  TinyConv model(3, true);
  const auto before = snapshot(state_of(model));
  CHECK_THROWS_WITH_AS(igrad::load_weights(model, dir / "repacked.pt"),
                       doctest::Contains("fails its digest check"), igrad::DataError);
  CHECK(all_equal(before, state_of(model)));
}

TEST_CASE("reliability: every single flipped byte of a weights file is refused or harmless") {
  const auto dir = scratch("every_byte");
  torch::manual_seed(4);
  TinyConv saved(3, true);
  igrad::save_weights(saved, dir / "weights.pt");
  const auto expected = snapshot(state_of(saved));
  const auto original = read_bytes(dir / "weights.pt");
  TinyConv model(3, true);
  int refused = 0, harmless = 0;
  // Every 3rd byte: the whole file would take ~3x as long and find nothing new.
  for (std::size_t i = 0; i < original.size(); i += 3) {
    auto bytes = original;
    bytes[i] ^= 0x20;
    write_bytes(dir / "flipped.pt", bytes);
    try {
      igrad::load_weights(model, dir / "flipped.pt");
      // Loaded: the flip hit a byte that does not matter (zip padding, a stored CRC...).
      CHECK_MESSAGE(all_equal(expected, state_of(model)), "byte ", i);
      ++harmless;
    } catch (const igrad::Error&) {
      ++refused;
    }
  }
  MESSAGE(refused, " flips refused, ", harmless, " harmless, of a ", original.size(),
          "-byte file");
  CHECK(refused > 0);
}

TEST_CASE("reliability: files without a digest (written before it existed) still load") {
  const auto dir = scratch("legacy");
  torch::manual_seed(5);
  TinyConv saved(3, true);
  torch::save(saved, (dir / "plain.pt").string());  // LibTorch's own format, no digest
  TinyConv model(3, true);
  igrad::load_weights(model, dir / "plain.pt");
  CHECK(all_equal(snapshot(state_of(saved)), state_of(model)));
  // A checkpoint of the previous layout: the same keys without digest and optimizer kind.
  torch::optim::Adam adam(saved->parameters(), 1e-2);
  torch::serialize::OutputArchive archive, model_archive, optimizer_archive;
  saved->save(model_archive);
  adam.save(optimizer_archive);
  archive.write("model", model_archive);
  archive.write("optimizer", optimizer_archive);
  archive.write("next_epoch", torch::tensor(int64_t{4}));
  archive.write("global_step", torch::tensor(int64_t{40}));
  archive.write("cpu_rng_state", torch::make_generator<at::CPUGeneratorImpl>(3).get_state());
  archive.save_to((dir / "old_checkpoint.pt").string());
  TinyConv resumed(3, true);
  torch::optim::Adam resumed_adam(resumed->parameters(), 1e-2);
  const auto info = igrad::load_checkpoint(dir / "old_checkpoint.pt", resumed, resumed_adam);
  CHECK(info.next_epoch == 4);
  CHECK(info.global_step == 40);
  CHECK(all_equal(snapshot(state_of(saved)), state_of(resumed)));
}

TEST_CASE("reliability: Checkpoint refuses a path it cannot write before the first step") {
  const auto dir = scratch("bad_path");
  std::ofstream(dir / "a_file") << "x";
  fs::create_directories(dir / "a_directory");
  torch::manual_seed(6);
  TinyConv model(3);
  torch::optim::SGD sgd(model->parameters(), 0.1);
  igrad::Trainer<> trainer(model, sgd);
  auto loader = torch::data::make_data_loader(
      ToyDataset(8).map(torch::data::transforms::Stack<>()),
      torch::data::DataLoaderOptions().batch_size(4));
  for (const auto& bad : {dir / "a_file" / "run.pt", dir / "a_directory"}) {
    CAPTURE(bad);
    CountBatches counter;
    CHECK_THROWS_AS(trainer.fit(loader, 1, counter, igrad::Checkpoint(bad)),
                    igrad::InvalidArgument);
    CHECK(counter.batches == 0);  // refused before a step was lost
  }
  // A missing directory is created, as save_checkpoint does.
  CountBatches counter;
  trainer.fit(loader, 1, counter, igrad::Checkpoint(dir / "new" / "run.pt"));
  CHECK(counter.batches == 2);
  CHECK(fs::is_regular_file(dir / "new" / "run.pt"));
}

TEST_CASE("reliability: resume is exact whatever the order of loader and load_checkpoint") {
  const auto dir = scratch("resume_order");
  // Made once, before everything: ToyDataset's constructor reseeds the generator, which would
  // undo what load_checkpoint restores (the caveat of ResumableRandomSampler's documentation).
  ToyDataset data(48);
  auto make_loader = [&data] {
    return torch::data::make_data_loader<igrad::data::ResumableRandomSampler>(
        ToyDataset(data).map(torch::data::transforms::Stack<>()),
        torch::data::DataLoaderOptions().batch_size(16));
  };
  torch::manual_seed(21);
  TinyConv full(3, true);
  torch::optim::Adam opt_full(full->parameters(), 1e-2);
  {
    igrad::Trainer<> trainer(full, opt_full);
    auto loader = make_loader();
    torch::manual_seed(100);
    trainer.fit(loader, 3);
  }
  torch::manual_seed(21);
  TinyConv first(3, true);
  torch::optim::Adam opt_first(first->parameters(), 1e-2);
  {
    igrad::Trainer<> trainer(first, opt_first);
    auto loader = make_loader();
    torch::manual_seed(100);
    trainer.fit(loader, 2, igrad::Checkpoint(dir / "run.pt"));
  }
  for (bool loader_first : {true, false}) {
    CAPTURE(loader_first);
    torch::manual_seed(999);  // whatever happened in between
    TinyConv resumed(3, true);
    torch::optim::Adam opt_resumed(resumed->parameters(), 1e-2);
    std::optional<decltype(make_loader())> loader;
    if (loader_first) loader.emplace(make_loader());
    const auto info = igrad::load_checkpoint(dir / "run.pt", resumed, opt_resumed);
    if (!loader_first) loader.emplace(make_loader());
    igrad::Trainer<> trainer(resumed, opt_resumed);
    trainer.resume_at(info.next_epoch, info.global_step);
    trainer.fit_to(*loader, 3);
    CHECK(trainer.steps() == 9);
    CHECK(all_equal(full->parameters(), resumed->parameters()));
  }
}

TEST_CASE("reliability: Checkpoint every_steps saves mid-epoch and resumes from that step") {
  const auto dir = scratch("every_steps");
  torch::manual_seed(7);
  TinyConv model(3);
  torch::optim::SGD sgd(model->parameters(), 0.1);
  igrad::Trainer<> trainer(model, sgd);
  auto loader = torch::data::make_data_loader<igrad::data::ResumableRandomSampler>(
      ToyDataset(40).map(torch::data::transforms::Stack<>()),
      torch::data::DataLoaderOptions().batch_size(8));
  struct CrashAt {  // a crash: no epoch-end checkpoint follows
    int64_t step;
    void on_batch_end(igrad::TrainerState& s, const igrad::StepResult&) {
      if (s.global_step == step) throw std::runtime_error("crash");
    }
  };
  // 5 batches per epoch, a checkpoint every 3 steps: the last one before step 8 is step 6,
  // inside epoch 1 (its first batch).
  CHECK_THROWS_AS(
      trainer.fit(loader, 4, igrad::Checkpoint(dir / "run.pt").every_steps(3), CrashAt{8}),
      std::runtime_error);
  CHECK_THROWS_AS(igrad::Checkpoint(dir / "x.pt").every_steps(0), igrad::InvalidArgument);
  TinyConv resumed(3);
  torch::optim::SGD resumed_sgd(resumed->parameters(), 0.1);
  const auto info = igrad::load_checkpoint(dir / "run.pt", resumed, resumed_sgd);
  CHECK(info.global_step == 6);
  CHECK(info.next_epoch == 1);  // the epoch it was in, redone from its start
  CHECK(info.batch == 1);
  CHECK_FALSE(fs::exists(dir / "run.pt.partial"));
}

namespace {
constexpr const char* kChildEnvironment = "IGRAD_RELIABILITY_SIGKILL_CHILD";

/// The child's side of the SIGKILL test: trains with a checkpoint every 2 steps until killed.
[[noreturn]] void train_until_killed(const fs::path& checkpoint) {
  torch::manual_seed(31);
  TinyConv model(3, true);
  torch::optim::Adam adam(model->parameters(), 1e-2);
  igrad::Trainer<> trainer(model, adam);
  auto loader = torch::data::make_data_loader<igrad::data::ResumableRandomSampler>(
      ToyDataset(32).map(torch::data::transforms::Stack<>()),  // reseeds: before the load
      torch::data::DataLoaderOptions().batch_size(8));
  if (fs::exists(checkpoint)) {
    const auto info = igrad::load_checkpoint(checkpoint, model, adam);
    trainer.resume_at(info.next_epoch, info.global_step);
  }
  trainer.fit(loader, 1'000'000, igrad::Checkpoint(checkpoint).every_steps(2));
  std::_Exit(3);  // not reached in the time the parent gives
}
}  // namespace

TEST_CASE("reliability: checkpoints survive SIGKILL at random points of fit") {
  if (const char* child = std::getenv(kChildEnvironment)) train_until_killed(child);
  const auto dir = scratch("sigkill");
  const auto checkpoint = dir / "run.pt";
  std::mt19937 random(14);
  std::uniform_int_distribution<int> delay_ms(0, 150);
  const auto started = std::chrono::steady_clock::now();
  int64_t last_step = 0;
  // Everything the child needs is prepared before fork: between fork and exec only
  // async-signal-safe calls are allowed (LibTorch has threads).
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  const std::string filter = "-tc=*survive SIGKILL*";
  std::vector<std::string> environment{std::string(kChildEnvironment) + "=" + checkpoint.string()};
  for (char** e = environ; *e != nullptr; ++e) environment.emplace_back(*e);
  std::vector<char*> envp;
  for (auto& e : environment) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<char*> argv{const_cast<char*>(self.c_str()), const_cast<char*>(filter.c_str()),
                          const_cast<char*>("--no-intro"), nullptr};
  for (int kill = 0; kill < 20; ++kill) {
    CAPTURE(kill);
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      const int null = ::open("/dev/null", O_WRONLY);
      ::dup2(null, STDOUT_FILENO);
      ::dup2(null, STDERR_FILENO);
      ::execve(self.c_str(), argv.data(), envp.data());
      std::_Exit(127);
    }
    // Kill at a random point after the child's first write of this round (it resumes from the
    // previous round's checkpoint, so every round trains on).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    const auto mtime = [&] {
      std::error_code ignored;
      return fs::last_write_time(checkpoint, ignored);
    };
    const auto previous = mtime();
    int status = 0;
    bool exited = false;
    while (mtime() == previous && std::chrono::steady_clock::now() < deadline) {
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        exited = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (!exited) {
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(random)));
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
    }
    REQUIRE_MESSAGE(WIFSIGNALED(status), "the child ended by itself, status ", status);
    // The last checkpoint loads, and training moves on from round to round.
    torch::manual_seed(31);
    TinyConv model(3, true);
    torch::optim::Adam adam(model->parameters(), 1e-2);
    const auto info = igrad::load_checkpoint(checkpoint, model, adam);
    CHECK(info.global_step >= last_step);
    CHECK(info.global_step % 2 == 0);
    last_step = info.global_step;
  }
  MESSAGE("20 kills in ", std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                        started).count(),
          " s, the last checkpoint at step ", last_step);
  // The resumed run completes and leaves no temporary file behind.
  torch::manual_seed(31);
  TinyConv model(3, true);
  torch::optim::Adam adam(model->parameters(), 1e-2);
  auto loader = torch::data::make_data_loader<igrad::data::ResumableRandomSampler>(
      ToyDataset(32).map(torch::data::transforms::Stack<>()),  // reseeds: before the load
      torch::data::DataLoaderOptions().batch_size(8));
  const auto info = igrad::load_checkpoint(checkpoint, model, adam);
  igrad::Trainer<> trainer(model, adam);
  trainer.resume_at(info.next_epoch, info.global_step);
  const auto logs = trainer.fit(loader, 2, igrad::Checkpoint(checkpoint).every_steps(2));
  CHECK(logs.size() == 2);
  CHECK(trainer.steps() == info.global_step + 8);
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(dir)) files.push_back(entry.path().filename());
  CHECK(files == std::vector<std::string>{"run.pt"});
}

TEST_CASE("reliability: every fuzz corpus file ends in success or an igrad exception") {
  const fs::path corpus = fs::path(IGRAD_TEST_SOURCE_DIR) / "fuzz" / "corpus";
  int files = 0;
  for (const auto& target : igrad_fuzz::targets()) {
    const auto directory = corpus / target.name;
    REQUIRE_MESSAGE(fs::is_directory(directory), directory);
    for (const auto& entry : fs::directory_iterator(directory)) {
      CAPTURE(entry.path());
      const auto bytes = read_bytes(entry.path());
      // The fuzz target's own entry: an igrad exception is caught there; anything else escapes.
      CHECK_NOTHROW(target.run(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()));
      ++files;
    }
  }
  MESSAGE(files, " corpus files replayed");
  CHECK(files > 0);
}
