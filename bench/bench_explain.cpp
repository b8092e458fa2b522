// Times igrad's explanations and metrics on Fashion-MNIST test images with a briefly trained
// SmallCNN, in one run:
//   1. Score-CAM on --scorecam-images images: igrad's batched masked forwards (several batch
//      sizes, the best reported) against a per-image loop written here as pytorch-grad-cam's
//      ScoreCAM does it (16 masked images per forward); both must give the same maps.
//   2. The Grad-CAM family in batches of --cam-batch, against one plain forward + backward per
//      batch, with the model calls each method makes per batch counted.
//   2b. The CAM methods of issue 16 (EigenGrad-CAM, FEM, Shapley-CAM, Finer-CAM, KPCA-CAM,
//      FullGrad) and the smoothing wrappers on Grad-CAM, on --more-cam-images images in batches
//      of --cam-batch, in images/s, against one forward + backward per batch.
//   3. Every input-space saliency method (all_saliency_methods, default options) on
//      --saliency-images images in batches of --cam-batch, in images/s, against one forward +
//      backward per batch.
//   4. AD/AI/AG, insertion and deletion of Grad-CAM and Score-CAM maps on --images images in one
//      pass over batches, each part timed.
//
//   igrad_bench_explain [--threads 2] [--images 10000] [--scorecam-images 1000]
//                       [--scorecam-batches 128,256,512] [--saliency-images 200]
//                       [--more-cam-images 200]
//                       [--device cpu|cuda]
//
// Prints one line per figure; timing lines end with a ratio. Peak RSS at the end.
#include <igrad/igrad.hpp>
#include <igrad/models.hpp>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <torch/cuda.h>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

namespace {

namespace F = torch::nn::functional;

struct Settings {
  std::vector<int> threads{2};
  std::string device = "cpu";
  int64_t images = 10000;
  int64_t scorecam_images = 1000;
  std::vector<int64_t> scorecam_batches{128, 256, 512};
  int64_t reference_batch = 16;  // pytorch-grad-cam's ScoreCAM default BATCH_SIZE
  int64_t cam_batch = 100;
  int64_t saliency_images = 200;
  int64_t more_cam_images = 200;
  int repeats = 3;
  int64_t train_images = 10000;
  int64_t metrics_batch = 500;
  int64_t causal_batch = 256;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

std::string load_average() {
  std::ifstream file("/proc/loadavg");
  std::string one, five, fifteen;
  file >> one >> five >> fifteen;
  return fmt::format("{} {} {}", one, five, fifteen);
}

// On CUDA the work is asynchronous: a timer must wait for it.
void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

template <class Work>
double time_ms(const torch::Device& device, Work&& work) {
  synchronize(device);
  const auto start = std::chrono::steady_clock::now();
  work();
  synchronize(device);
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

/// Calls of the model's three entry points; `with_grad` counts those made with autograd on,
/// i.e. the ones that record a graph to backpropagate through.
struct CallCounts {
  int64_t forward = 0, features = 0, head = 0, with_grad = 0;
};

/// The same model, counting its calls: this is how the benchmark checks how many passes each
/// method makes, without instrumenting the library.
igrad::AnyModel counting(const igrad::AnyModel& model, std::shared_ptr<CallCounts> counts) {
  auto f = model.functions();
  const auto wrap = [&counts](auto inner, int64_t CallCounts::*field) {
    return [inner, counts, field](const torch::Tensor& x) {
      ++((*counts).*field);
      if (torch::GradMode::is_enabled()) ++counts->with_grad;
      return inner(x);
    };
  };
  f.forward = wrap(f.forward, &CallCounts::forward);
  f.features = wrap(f.features, &CallCounts::features);
  f.head = wrap(f.head, &CallCounts::head);
  return igrad::AnyModel(f);
}

/// Plain cross-entropy training, one epoch over the first `count` training images, so that the
/// maps are those of a classifier and not of a random net.
double train_briefly(igrad::models::SmallCNN& model, const igrad::data::FashionMnist& train,
                     int64_t count, const torch::Device& device) {
  torch::manual_seed(0);
  const auto x = train.images(0, count).to(device);
  const auto y = train.labels().slice(0, 0, count).to(device);
  const auto order = torch::randperm(count, torch::kLong).to(device);
  torch::optim::Adam optimizer(model->parameters(), 1e-3);
  model->train();
  return time_ms(device, [&] {
    for (int64_t start = 0; start < count; start += 128) {
      const auto index = order.slice(0, start, start + 128);
      optimizer.zero_grad();
      F::cross_entropy(model(x.index_select(0, index)), y.index_select(0, index)).backward();
      optimizer.step();
    }
  });
}

/// SPEC §4's post-processing, written out: ReLU, min–max at feature resolution, bilinear
/// upsampling (align_corners = false), min–max again.
torch::Tensor post_process(const torch::Tensor& raw, int64_t height, int64_t width) {
  const auto min_max = [](const torch::Tensor& m) {
    const auto flat = m.flatten(1);
    const auto low = std::get<0>(flat.min(1, true)), high = std::get<0>(flat.max(1, true));
    return ((flat - low) / (high - low + 1e-7)).view(m.sizes());
  };
  const auto scaled = min_max(torch::relu(raw));
  return min_max(F::interpolate(scaled.unsqueeze(1),
                                F::InterpolateFuncOptions()
                                    .size(std::vector<int64_t>{height, width})
                                    .mode(torch::kBilinear)
                                    .align_corners(false))
                     .squeeze(1));
}

/// Score-CAM as pytorch-grad-cam's ScoreCAM computes it (score_cam.py): all K activation maps
/// upsampled with UpsamplingBilinear2d (align_corners = true), each min–max normalised (eps 1e-8),
/// then per image the K masked copies forwarded `batch` at a time, the target logit of each
/// kept, and the weights = softmax over the K channels. pytorch-grad-cam builds the masked
/// copies of every image at once ([N, K, C, H, W], 400 MB here); this loop builds one image's at
/// a time, which is the same arithmetic in less memory.
torch::Tensor reference_score_cam(igrad::models::SmallCNN& model, const torch::Tensor& x,
                                  const torch::Tensor& targets, int64_t batch) {
  torch::NoGradGuard no_grad;
  model->eval();
  const int64_t n = x.size(0), height = x.size(2), width = x.size(3);
  const auto a = model->features(x);  // one forward for the activations, as its hooks record
  const int64_t k = a.size(1);
  auto masks = F::interpolate(a, F::InterpolateFuncOptions()
                                     .size(std::vector<int64_t>{height, width})
                                     .mode(torch::kBilinear)
                                     .align_corners(true));
  const auto flat = masks.flatten(2);
  const auto highs = std::get<0>(flat.max(-1)).view({n, k, 1, 1});
  const auto lows = std::get<0>(flat.min(-1)).view({n, k, 1, 1});
  masks = (masks - lows) / (highs - lows + 1e-8);
  auto scores = torch::empty({n, k}, x.options());
  const auto targets_cpu = targets.to(torch::kCPU);
  for (int64_t i = 0; i < n; ++i) {
    const auto inputs = x[i].unsqueeze(0) * masks[i].unsqueeze(1);  // [K, C, H, W]
    const int64_t c = targets_cpu[i].item<int64_t>();
    for (int64_t start = 0; start < k; start += batch) {
      const auto logits = model(inputs.slice(0, start, start + batch));
      scores[i].slice(0, start, start + batch).copy_(logits.select(1, c));
    }
  }
  const auto weights = scores.softmax(1);
  const auto raw = (weights.view({n, k, 1, 1}) * a).sum(1);
  return post_process(raw, height, width);
}

/// Section 1: Score-CAM, igrad batched against the per-image loop.
int64_t bench_score_cam(igrad::models::SmallCNN& model, const torch::Tensor& x,
                        const torch::Tensor& y, const Settings& s, const torch::Device& device) {
  const int64_t n = x.size(0);
  const igrad::AnyModel any = model;
  torch::Tensor reference;
  const double loop_ms = time_ms(device, [&] {
    reference = reference_score_cam(model, x, y, s.reference_batch);
  });
  double best_ms = 0;
  int64_t best_batch = 0;
  double worst_difference = 0;
  for (const int64_t b : s.scorecam_batches) {
    torch::Tensor maps;
    const auto options = igrad::CamOptions().batch_size(b).score_cam_convention(
        igrad::ScoreCamConvention::pytorch_grad_cam);
    const double ms = time_ms(device, [&] { maps = igrad::explain<igrad::ScoreCam>(any, x, y, options); });
    const double difference = (maps - reference).abs().max().item<double>();
    worst_difference = std::max(worst_difference, difference);
    fmt::print("scorecam batch {}: igrad {:.0f} ms for {} images, max |igrad - loop| {:.1e}, "
               "loop/igrad {:.2f}\n", b, ms, n, difference, loop_ms / ms);
    if (best_batch == 0 || ms < best_ms) best_ms = ms, best_batch = b;
  }
  // cuDNN runs float convolutions in TF32 (10-bit mantissa) and picks its algorithm by batch
  // size, so on CUDA the two batchings agree to about 1e-3 only.
  const double tolerance = device.is_cuda() ? 1e-3 : 1e-5;
  fmt::print("scorecam maps equal (pytorch-grad-cam convention): max |igrad - loop| {:.1e} over {} "
             "maps (tolerance {:.0e}), {}\n", worst_difference, n, tolerance,
             worst_difference <= tolerance ? "ok" : "MISMATCH");
  fmt::print("scorecam igrad {:.0f} ms (batch {}), per-image loop ({} per forward) {:.0f} ms, "
             "speedup {:.2f}\n", best_ms, best_batch, s.reference_batch, loop_ms, loop_ms / best_ms);
  return best_batch;
}

/// Section 2: each gradient method, batch by batch, against one forward + backward of the same
/// batch (logits of the targets, back to the input), interleaved so that load hits all alike.
void bench_grad_cams(igrad::models::SmallCNN& model, const torch::Tensor& x,
                     const torch::Tensor& y, const Settings& s, const torch::Device& device) {
  const auto counts = std::make_shared<CallCounts>();
  const igrad::AnyModel any = counting(model, counts);
  model->eval();
  const int64_t n = x.size(0);

  struct Method {
    std::string name;
    std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)> explain;
    std::vector<double> totals;
    CallCounts calls;
  };
  const auto method = [&]<class C>(C) {
    return Method{C::name, [&any](const torch::Tensor& xb, const torch::Tensor& yb) {
                    return igrad::explain<C>(any, xb, yb);
                  }, {}, {}};
  };
  std::vector<Method> methods{method(igrad::GradCam{}), method(igrad::GradCamPlusPlus{}),
                              method(igrad::XGradCam{}), method(igrad::LayerCam{}),
                              method(igrad::HiResCam{})};
  std::vector<double> plain_totals;
  for (int r = 0; r < s.repeats + 1; ++r) {  // repeat 0 warms up and is not counted
    double plain = 0;
    std::vector<double> totals(methods.size(), 0.0);
    for (int64_t start = 0; start < n; start += s.cam_batch) {
      const auto xb = x.slice(0, start, start + s.cam_batch);
      const auto yb = y.slice(0, start, start + s.cam_batch);
      plain += time_ms(device, [&] {
        const auto input = xb.detach().requires_grad_(true);
        const auto score = model(input).gather(1, yb.view({-1, 1})).sum();
        torch::autograd::grad({score}, {input});
      });
      for (std::size_t m = 0; m < methods.size(); ++m) {
        *counts = {};
        totals[m] += time_ms(device, [&] { methods[m].explain(xb, yb); });
        methods[m].calls = *counts;  // the last batch's calls; every batch makes the same
      }
    }
    if (r == 0) continue;
    plain_totals.push_back(plain);
    for (std::size_t m = 0; m < methods.size(); ++m) methods[m].totals.push_back(totals[m]);
  }
  const double plain = median(plain_totals);
  fmt::print("forward+backward (target logits to the input) {} images in batches of {}: {:.0f} ms\n",
             n, s.cam_batch, plain);
  for (const auto& m : methods) {
    const double ms = median(m.totals);
    fmt::print("{} {} images in batches of {}: {:.0f} ms, forward+backward {:.0f} ms; calls per "
               "batch: forward {}, features {}, head {} ({} recording a graph), ratio {:.2f}\n",
               m.name, n, s.cam_batch, ms, plain, m.calls.forward, m.calls.features, m.calls.head,
               m.calls.with_grad, ms / plain);
  }
}

/// Section 2b: the CAM methods of issue 16 and the smoothing wrappers (default options: FEM's
/// k = 2, Finer-CAM's 3 classes, KPCA-CAM's sigmoid kernel, AugSmooth's 6 passes), one warm-up
/// batch then one timed pass in batches of `--cam-batch`, against one forward + backward per
/// batch timed in the same pass; a line per method in images/s.
void bench_more_cams(igrad::models::SmallCNN& model, const torch::Tensor& x,
                     const torch::Tensor& y, const Settings& s, const torch::Device& device) {
  const igrad::AnyModel any(model);
  model->eval();
  const int64_t n = x.size(0);
  const auto plain_pass = [&](const torch::Tensor& xb, const torch::Tensor& yb) {
    const auto input = xb.detach().requires_grad_(true);
    const auto score = model(input).gather(1, yb.view({-1, 1})).sum();
    torch::autograd::grad({score}, {input});
  };
  constexpr auto methods =
      boost::hana::tuple_t<igrad::EigenGradCam, igrad::Fem, igrad::ShapleyCam, igrad::FinerCam<>,
                           igrad::KpcaCam, igrad::FullGrad, igrad::EigenSmooth<igrad::GradCam>,
                           igrad::AugSmooth<igrad::GradCam>>;
  boost::hana::for_each(methods, [&](auto type) {
    using C = typename decltype(type)::type;
    const auto first = x.slice(0, 0, s.cam_batch), first_targets = y.slice(0, 0, s.cam_batch);
    igrad::explain<C>(any, first, first_targets);  // warm-up, not counted
    double ms = 0, plain = 0;
    for (int64_t start = 0; start < n; start += s.cam_batch) {
      const auto xb = x.slice(0, start, start + s.cam_batch);
      const auto yb = y.slice(0, start, start + s.cam_batch);
      plain += time_ms(device, [&] { plain_pass(xb, yb); });
      ms += time_ms(device, [&] { igrad::explain<C>(any, xb, yb); });
    }
    fmt::print("cam {} {} images in batches of {}: {:.0f} ms, {:.1f} images/s, "
               "forward+backward {:.0f} ms, ratio {:.2f}\n",
               C::name, n, s.cam_batch, ms, 1e3 * static_cast<double>(n) / ms, plain, ms / plain);
  });
}

/// The options of a saliency line: the defaults, except Feature Ablation over superpixels of
/// 4 × 4 pixels (its default, one group per pixel, is H·W + 1 forwards per image).
template <class S>
igrad::SaliencyOptions bench_saliency_options(const torch::Tensor& x) {
  igrad::SaliencyOptions options;
  if constexpr (std::is_same_v<S, igrad::FeatureAblation>) {
    const auto rows = torch::div(torch::arange(x.size(2), torch::kLong), 4, "floor");
    const auto columns = torch::div(torch::arange(x.size(3), torch::kLong), 4, "floor");
    options.feature_mask(rows.view({-1, 1}) * ((x.size(3) + 3) / 4) + columns.view({1, -1}));
  }
  return options;
}

/// Section 3: each input-space method of `all_saliency_methods` with its default options
/// (SmoothGrad and its NoiseTunnel modes: 25 noisy copies; integrated gradients: 50 points;
/// Occlusion: 4 × 4 windows, stride 2; Gradient SHAP: 5 samples; Feature Ablation: 4 × 4
/// superpixels), one warm-up batch then one timed pass in batches of `--cam-batch`, against one
/// forward + backward per batch timed in the same pass; a line per method in images/s.
void bench_saliency(igrad::models::SmallCNN& model, const torch::Tensor& x, const torch::Tensor& y,
                    const Settings& s, const torch::Device& device) {
  const igrad::AnyModel any(model);
  model->eval();
  const int64_t n = x.size(0);
  const auto plain_pass = [&](const torch::Tensor& xb, const torch::Tensor& yb) {
    const auto input = xb.detach().requires_grad_(true);
    const auto score = model(input).gather(1, yb.view({-1, 1})).sum();
    torch::autograd::grad({score}, {input});
  };
  boost::hana::for_each(igrad::all_saliency_methods, [&](auto type) {
    using S = typename decltype(type)::type;
    const auto first = x.slice(0, 0, s.cam_batch), first_targets = y.slice(0, 0, s.cam_batch);
    const auto options = bench_saliency_options<S>(x);
    igrad::explain<S>(any, first, first_targets, options);  // warm-up, not counted
    double ms = 0, plain = 0;
    for (int64_t start = 0; start < n; start += s.cam_batch) {
      const auto xb = x.slice(0, start, start + s.cam_batch);
      const auto yb = y.slice(0, start, start + s.cam_batch);
      plain += time_ms(device, [&] { plain_pass(xb, yb); });
      ms += time_ms(device, [&] { igrad::explain<S>(any, xb, yb, options); });
    }
    fmt::print("saliency {} {} images in batches of {}: {:.0f} ms, {:.1f} images/s, "
               "forward+backward {:.0f} ms, ratio {:.2f}\n",
               S::name, n, s.cam_batch, ms, 1e3 * static_cast<double>(n) / ms, plain, ms / plain);
  });
}

/// Section 4: AD/AI/AG, insertion and deletion of Grad-CAM and Score-CAM on `x`, one pass over
/// batches, each part timed separately.
void bench_metrics(igrad::models::SmallCNN& model, const torch::Tensor& x,
                   const torch::Tensor& y, const Settings& s, int64_t score_cam_batch,
                   const torch::Device& device) {
  const igrad::AnyModel any = model;
  model->eval();
  const igrad::DatasetNormalization normalization =
      igrad::data::FashionMnist::normalization_constants();
  const auto masking = igrad::MaskingOptions().normalization(normalization);
  const auto causal = igrad::CausalOptions().normalization(normalization).batch_size(s.causal_batch);

  struct Part {
    std::string name;
    std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)> maps;
    igrad::FaithfulnessAccumulator faithfulness;
    igrad::CausalAccumulator insertion, deletion;
    double maps_ms = 0, faithfulness_ms = 0, insertion_ms = 0, deletion_ms = 0;
  };
  const auto score_options = igrad::CamOptions().batch_size(score_cam_batch);
  std::vector<Part> parts;
  parts.push_back({"Grad-CAM",
                   [&](const torch::Tensor& xb, const torch::Tensor& yb) {
                     return igrad::explain<igrad::GradCam>(any, xb, yb);
                   },
                   igrad::FaithfulnessAccumulator(masking),
                   igrad::CausalAccumulator(igrad::CausalMetric::insertion, causal),
                   igrad::CausalAccumulator(igrad::CausalMetric::deletion, causal)});
  parts.push_back({fmt::format("Score-CAM (batch {})", score_cam_batch),
                   [&](const torch::Tensor& xb, const torch::Tensor& yb) {
                     return igrad::explain<igrad::ScoreCam>(any, xb, yb, score_options);
                   },
                   igrad::FaithfulnessAccumulator(masking),
                   igrad::CausalAccumulator(igrad::CausalMetric::insertion, causal),
                   igrad::CausalAccumulator(igrad::CausalMetric::deletion, causal)});

  const int64_t n = x.size(0);
  for (int64_t start = 0; start < n; start += s.metrics_batch) {
    const auto xb = x.slice(0, start, start + s.metrics_batch);
    const auto yb = y.slice(0, start, start + s.metrics_batch);
    for (auto& p : parts) {
      torch::Tensor maps;
      p.maps_ms += time_ms(device, [&] { maps = p.maps(xb, yb); });
      p.faithfulness_ms += time_ms(device, [&] { p.faithfulness.add(any, xb, maps, yb); });
      p.insertion_ms += time_ms(device, [&] { p.insertion.add(any, xb, maps, yb); });
      p.deletion_ms += time_ms(device, [&] { p.deletion.add(any, xb, maps, yb); });
    }
  }
  double all = 0;
  for (const auto& p : parts) {
    const auto f = p.faithfulness.result();
    fmt::print("metrics {} on {} images: AD {:.2f} %, AI {:.2f} %, AG {:.2f} %, insertion {:.4f}, "
               "deletion {:.4f}\n", p.name, n, f.average_drop, f.average_increase,
               f.average_gain, p.insertion.result(), p.deletion.result());
    const double metrics = p.faithfulness_ms + p.insertion_ms + p.deletion_ms;
    const double total = p.maps_ms + metrics;
    all += total;
    fmt::print("time {} on {} images: maps {:.1f} s, AD/AI/AG {:.1f} s, insertion {:.1f} s, "
               "deletion {:.1f} s, total {:.1f} s, metrics/maps {:.2f}\n", p.name, n,
               p.maps_ms / 1e3, p.faithfulness_ms / 1e3, p.insertion_ms / 1e3,
               p.deletion_ms / 1e3, total / 1e3, metrics / p.maps_ms);
  }
  fmt::print("time metrics total (both methods, {} images, batches of {}, causal batch {}): "
             "{:.1f} s\n", n, s.metrics_batch, s.causal_batch, all / 1e3);
}

}  // namespace

int main(int argc, char** argv) {
  // Keep freed memory in the process: without this, glibc returns every batch's temporaries to
  // the system and the timings measure page faults (see bench/README.md).
  igrad::tune_allocator();
  // Line by line even into a file or a pipe: a full run takes minutes and is read as it goes.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  CLI::App app{"igrad: Score-CAM, the Grad-CAM family and the metrics on Fashion-MNIST"};
  Settings s;
  app.add_option("--threads", s.threads, "thread counts to measure (default 2)")->delimiter(',');
  app.add_option("--device", s.device, "cpu, or cuda when torch::cuda::is_available()")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--images", s.images, "test images for the metrics (default 10000)")
      ->check(CLI::Range(1, 10000));
  app.add_option("--scorecam-images", s.scorecam_images, "test images for the Score-CAM comparison")
      ->check(CLI::Range(1, 10000));
  app.add_option("--scorecam-batches", s.scorecam_batches, "igrad Score-CAM batch sizes to try")
      ->delimiter(',');
  app.add_option("--cam-batch", s.cam_batch, "images per batch of the Grad-CAM family")
      ->check(CLI::Range(1, 10000));
  app.add_option("--more-cam-images", s.more_cam_images,
                 "test images for the CAM methods of issue 16 and the smoothings (default 200)")
      ->check(CLI::Range(1, 10000));
  app.add_option("--saliency-images", s.saliency_images,
                 "test images for the input-space saliency methods (default 200)")
      ->check(CLI::Range(1, 10000));
  app.add_option("--repeats", s.repeats, "timed repeats of the Grad-CAM family (median)")
      ->check(CLI::Range(1, 100));
  app.add_option("--train-images", s.train_images, "training images for the one training epoch")
      ->check(CLI::Range(128, 60000));
  app.add_option("--metrics-batch", s.metrics_batch, "images per batch of the metrics pass")
      ->check(CLI::Range(1, 10000));
  app.add_option("--causal-batch", s.causal_batch, "step images per forward of insertion/deletion")
      ->check(CLI::Range(1, 100000));
  CLI11_PARSE(app, argc, argv);
  if (s.device == "cuda" && !torch::cuda::is_available()) {
    fmt::print(stderr, "--device cuda: torch::cuda::is_available() is false in this build\n");
    return 1;
  }
  const torch::Device device(s.device == "cuda" ? torch::kCUDA : torch::kCPU);

  const igrad::data::FashionMnist train;
  const igrad::data::FashionMnist test(
      igrad::data::FashionMnistOptions().split(igrad::data::Split::test));
  const int64_t needed =
      std::max({s.images, s.scorecam_images, s.saliency_images, s.more_cam_images});
  const auto x_all = test.images(0, needed).to(device);
  const auto y_all = test.labels().slice(0, 0, needed).to(device);

  fmt::print("# igrad {} / LibTorch {}, tuned malloc, device {}, load average at start {}\n",
             igrad::version_string, TORCH_VERSION, s.device, load_average());
  for (const int t : s.threads) {
    torch::set_num_threads(t);
    fmt::print("## threads {}\n", t);
    igrad::models::SmallCNN model;
    model->to(device);
    const double train_ms = train_briefly(model, train, s.train_images, device);
    model->eval();
    double accuracy = 0;
    {
      torch::NoGradGuard no_grad;
      accuracy = model(x_all).argmax(1).eq(y_all).to(torch::kDouble).mean().item<double>();
    }
    fmt::print("trained SmallCNN 1 epoch on {} training images (plain cross-entropy, Adam 1e-3, "
               "batch 128) in {:.1f} s; accuracy on the first {} test images {:.1f} %\n",
               s.train_images, train_ms / 1e3, needed, 100 * accuracy);

    const auto x_cam = x_all.slice(0, 0, s.scorecam_images);
    const auto y_cam = y_all.slice(0, 0, s.scorecam_images);
    const int64_t best_batch = bench_score_cam(model, x_cam, y_cam, s, device);
    bench_grad_cams(model, x_cam, y_cam, s, device);
    bench_more_cams(model, x_all.slice(0, 0, s.more_cam_images),
                    y_all.slice(0, 0, s.more_cam_images), s, device);
    bench_saliency(model, x_all.slice(0, 0, s.saliency_images),
                   y_all.slice(0, 0, s.saliency_images), s, device);
    bench_metrics(model, x_all.slice(0, 0, s.images), y_all.slice(0, 0, s.images), s, best_batch,
                  device);
  }
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  fmt::print("peak RSS {:.0f} MiB; load average at end {}\n", usage.ru_maxrss / 1024.0,
             load_average());
  return 0;
}
