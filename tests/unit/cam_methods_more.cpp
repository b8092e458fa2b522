// The CAM methods of issue 16 (EigenGrad-CAM, FEM, Shapley-CAM, Finer-CAM, KPCA-CAM) and the
// smoothing wrappers (EigenSmooth, AugSmooth): each against an independent formulation written
// here (explicit loops over channels and pixels, power iterations, closed forms on a GAP + Linear
// head, finite differences), batch-equals-singles and safety through the conformance checks, and
// misuse.
#include "test_support.hpp"

#include <igrad/cam.hpp>
#include <igrad/testing/conformance.hpp>

#include <boost/hana.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

using namespace igrad_test;
namespace F = torch::nn::functional;

namespace {

constexpr int64_t kClasses = 5;

/// conv3x3(1→4) [→ BN] → ReLU → max-pool 2 = features [N, 4, 4, 4] for 8×8 inputs. The head is
/// GAP → Linear(4, 5) (linear in A), or, with `smooth_head`, conv1x1 → tanh → flatten →
/// Linear(64, 5), whose Hessian in A is not zero.
struct FiveClassNetImpl : torch::nn::Module {
  explicit FiveClassNetImpl(bool smooth_head = false, bool batch_norm = false)
      : smooth(smooth_head) {
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 4, 3).padding(1)));
    if (batch_norm) bn = register_module("bn", torch::nn::BatchNorm2d(4));
    mix = register_module("mix", torch::nn::Conv2d(torch::nn::Conv2dOptions(4, 4, 1)));
    fc = register_module("fc", torch::nn::Linear(4, kClasses));
    deep_fc = register_module("deep_fc", torch::nn::Linear(64, kClasses));
  }
  torch::Tensor features(torch::Tensor x) {
    auto a = conv(x);
    if (bn) a = bn(a);
    return torch::max_pool2d(torch::relu(a), 2);
  }
  torch::Tensor head(torch::Tensor a) {
    if (smooth) return deep_fc(torch::tanh(mix(a)).flatten(1));
    return fc(a.mean({2, 3}));
  }
  torch::Tensor forward(torch::Tensor x) { return head(features(x)); }
  bool smooth;
  torch::nn::Conv2d conv{nullptr}, mix{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
  torch::nn::Linear fc{nullptr}, deep_fc{nullptr};
};
TORCH_MODULE(FiveClassNet);

FiveClassNet make_net(bool smooth_head, uint64_t seed, bool batch_norm = false) {
  torch::manual_seed(seed);
  FiveClassNet net(smooth_head, batch_norm);
  net->to(torch::kDouble);
  if (batch_norm) {  // non-trivial running statistics, so that a training-mode pass moves them
    torch::NoGradGuard no_grad;
    net->train();
    for (int i = 0; i < 3; ++i) net->forward(torch::randn({8, 1, 8, 8}, torch::kDouble) * 2 + 1);
  }
  net->eval();
  return net;
}

torch::Tensor images(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn({n, 1, 8, 8}, torch::kDouble);
}

double entry(const torch::Tensor& t, int64_t i) { return t[i].item<double>(); }

/// A = features(x_i) `[K, h, w]` and g = ∂s/∂A for one sample, where s = score(logits row).
template <class Net, class Score>
std::pair<torch::Tensor, torch::Tensor> a_and_gradient(Net& net, const torch::Tensor& x_i,
                                                       Score&& score) {
  auto a = net->features(x_i.unsqueeze(0)).detach().requires_grad_(true);
  const auto s = score(net->head(a)[0]);
  const auto g = torch::autograd::grad({s}, {a})[0];
  return {a.detach()[0], g[0]};
}

/// Σ_k w_k A^k by an explicit loop, `[h, w]`.
torch::Tensor loop_weighted_sum(const std::vector<double>& w, const torch::Tensor& a) {
  auto map = torch::zeros({a.size(1), a.size(2)}, torch::kDouble);
  for (int64_t k = 0; k < a.size(0); ++k) map += w[k] * a[k];
  return map;
}

/// Spatial mean of each channel of `[K, h, w]`, by loops.
std::vector<double> loop_channel_means(const torch::Tensor& t) {
  std::vector<double> means(t.size(0), 0.0);
  for (int64_t k = 0; k < t.size(0); ++k) {
    for (int64_t p = 0; p < t.size(1); ++p)
      for (int64_t q = 0; q < t.size(2); ++q) means[k] += t[k][p][q].item<double>();
    means[k] /= static_cast<double>(t.size(1) * t.size(2));
  }
  return means;
}

/// The leading eigenvector of a symmetric matrix by power iteration on `m + shift·I` (the shift
/// makes the largest algebraic eigenvalue the dominant one), with its eigenvalue of `m`.
std::pair<torch::Tensor, double> leading_eigenpair(const torch::Tensor& m) {
  const double shift = m.norm().item<double>();  // ≥ |λ| for all λ, and scale-free
  const auto shifted = m + shift * torch::eye(m.size(0), torch::kDouble);
  auto v = torch::ones({m.size(0), 1}, torch::kDouble) + 0.01 * torch::arange(m.size(0), torch::kDouble).view({-1, 1});
  if (shift == 0) return {v.view({-1}) / v.norm(), 0.0};
  for (int iteration = 0; iteration < 20000; ++iteration) {
    v = shifted.mm(v);
    v = v / v.norm();
  }
  const double value = (v.t().mm(m).mm(v)).item<double>();
  return {v.view({-1}), value};
}

/// The projection of maps `[K, h, w]` (as hw × K, centred columns) on their first principal
/// direction, sign: positive covariance with the channel sum. Power iteration on the covariance.
torch::Tensor reference_principal_projection(const torch::Tensor& maps) {
  const auto m = maps.flatten(1).t();  // [hw, K]
  const auto centred = m - m.mean(0, true);
  const auto direction = leading_eigenpair(centred.t().mm(centred)).first;
  auto projection = centred.mv(direction);
  const auto total = maps.sum(0).view({-1});
  if (((projection - projection.mean()) * (total - total.mean())).sum().item<double>() < 0)
    projection = -projection;
  return projection.view({maps.size(1), maps.size(2)});
}

const auto kTargets = torch::tensor({0, 3, 4}, torch::kLong);

}  // namespace

TEST_CASE("cam more: EigenGrad-CAM is the principal projection of g ∘ A, signed by the HiRes-CAM map") {
  auto net = make_net(/*smooth_head=*/true, 3);
  const auto x = images(3, 4);
  const auto raw = igrad::explain_raw<igrad::EigenGradCam>(net, x, kTargets);
  for (int64_t i = 0; i < 3; ++i) {
    const int64_t c = kTargets[i].item<int64_t>();
    const auto [a, g] = a_and_gradient(net, x[i], [&](const torch::Tensor& y) { return y[c]; });
    auto product = torch::zeros_like(a);
    for (int64_t k = 0; k < a.size(0); ++k)
      for (int64_t p = 0; p < a.size(1); ++p)
        for (int64_t q = 0; q < a.size(2); ++q)
          product[k][p][q] = a[k][p][q].item<double>() * g[k][p][q].item<double>();
    CHECK(max_abs_diff(raw[i], torch::relu(reference_principal_projection(product))) < 1e-8);
  }
  // Not Eigen-CAM: the gradient changes the decomposed matrix.
  CHECK(max_abs_diff(raw, igrad::explain_raw<igrad::EigenCam>(net, x, kTargets)) > 1e-6);
}

TEST_CASE("cam more: FEM thresholds each channel at mean + k std, both conventions, by loops") {
  auto net = make_net(false, 5);
  const auto x = images(2, 6);
  for (const double k : {2.0, 0.5}) {
    CAPTURE(k);
    const auto options = igrad::CamOptions().fem_k(k);
    const auto paper = igrad::explain_raw<igrad::Fem>(net, x, {}, options);
    const auto pgc = igrad::explain_raw<igrad::Fem>(
        net, x, {}, igrad::CamOptions(options).fem_convention(igrad::FemConvention::pytorch_grad_cam));
    for (int64_t i = 0; i < 2; ++i) {
      const auto a = net->features(x[i].unsqueeze(0)).detach()[0];
      const int64_t channels = a.size(0), h = a.size(1), w = a.size(2);
      auto paper_map = torch::zeros({h, w}, torch::kDouble);
      std::vector<double> fraction(channels);
      for (int64_t c = 0; c < channels; ++c) {
        double sum = 0, squares = 0;
        for (int64_t p = 0; p < h; ++p)
          for (int64_t q = 0; q < w; ++q) sum += a[c][p][q].item<double>();
        const double mean = sum / static_cast<double>(h * w);
        for (int64_t p = 0; p < h; ++p)
          for (int64_t q = 0; q < w; ++q) squares += std::pow(a[c][p][q].item<double>() - mean, 2);
        const double threshold = mean + k * std::sqrt(squares / static_cast<double>(h * w));
        int64_t above = 0;
        for (int64_t p = 0; p < h; ++p)
          for (int64_t q = 0; q < w; ++q)
            if (a[c][p][q].item<double>() > threshold) {
              ++above;
              paper_map[p][q] += mean;
            }
        fraction[c] = static_cast<double>(above) / static_cast<double>(h * w);
      }
      CHECK(max_abs_diff(paper[i], torch::relu(paper_map)) < 1e-12);
      CHECK(max_abs_diff(pgc[i], torch::relu(loop_weighted_sum(fraction, a))) < 1e-12);
    }
    if (k < 1) CHECK(paper.abs().max().item<double>() > 0);  // some pixel passes the threshold
  }
}

TEST_CASE("cam more: Shapley-CAM with ReST on a GAP + Linear head matches its closed form") {
  auto net = make_net(false, 7);
  const auto x = images(3, 8);
  const auto rest = igrad::CamOptions().target_score(igrad::rest_score);
  const auto shapley = igrad::explain_raw<igrad::ShapleyCam>(net, x, kTargets, rest);
  const auto grad_cam_rest = igrad::explain_raw<igrad::GradCam>(net, x, kTargets, rest);
  const auto W = net->fc->weight.detach();  // [5, 4]
  for (int64_t i = 0; i < 3; ++i) {
    const int64_t c = kTargets[i].item<int64_t>();
    const auto a = net->features(x[i].unsqueeze(0)).detach()[0];
    const int64_t channels = a.size(0);
    const double hw = static_cast<double>(a.size(1) * a.size(2));
    const auto a_bar = loop_channel_means(a);
    // y = W ā + b, p = softmax(y), s = y_c + log p_c = 2 y_c − logsumexp(y).
    std::vector<double> y(kClasses), p(kClasses);
    for (int64_t j = 0; j < kClasses; ++j) {
      y[j] = net->fc->bias[j].item<double>();
      for (int64_t l = 0; l < channels; ++l) y[j] += W[j][l].item<double>() * a_bar[l];
    }
    const double top = *std::max_element(y.begin(), y.end());
    double z = 0;
    for (int64_t j = 0; j < kClasses; ++j) z += std::exp(y[j] - top);
    for (int64_t j = 0; j < kClasses; ++j) p[j] = std::exp(y[j] - top) / z;
    // g^k = (2 W_ck − Σ_j p_j W_jk) / hw everywhere; H A = −(1/hw) [Wᵀ (diag p − p pᵀ) W ā]_k.
    std::vector<double> gradient_weight(channels), shapley_weight(channels);
    for (int64_t k = 0; k < channels; ++k) {
      double pw = 0;
      for (int64_t j = 0; j < kClasses; ++j) pw += p[j] * W[j][k].item<double>();
      gradient_weight[k] = (2 * W[c][k].item<double>() - pw) / hw;
      double curvature = 0;
      for (int64_t l = 0; l < channels; ++l) {
        double wsw = 0;
        for (int64_t j = 0; j < kClasses; ++j)
          for (int64_t m = 0; m < kClasses; ++m)
            wsw += W[j][k].item<double>() * ((j == m ? p[j] : 0.0) - p[j] * p[m]) * W[m][l].item<double>();
        curvature += wsw * a_bar[l];
      }
      const double hessian_product = -curvature / hw;
      shapley_weight[k] = gradient_weight[k] - 0.5 * hessian_product;
    }
    CHECK(max_abs_diff(grad_cam_rest[i], torch::relu(loop_weighted_sum(gradient_weight, a))) < 1e-12);
    CHECK(max_abs_diff(shapley[i], torch::relu(loop_weighted_sum(shapley_weight, a))) < 1e-12);
  }
  CHECK(max_abs_diff(shapley, grad_cam_rest) > 1e-6);  // the Hessian term is not vacuous
  // The ReST score itself: y_c − cross_entropy(y, c), pytorch-grad-cam's ClassifierOutputReST.
  const auto logits = net->forward(x).detach();
  const auto expected = logits.gather(1, kTargets.view({-1, 1})).view(-1) -
                        F::cross_entropy(logits, kTargets, F::CrossEntropyFuncOptions().reduction(torch::kNone));
  CHECK(max_abs_diff(igrad::rest_score(logits, kTargets), expected) < 1e-12);
  // With the logit and a head linear in A, H = 0: Shapley-CAM is Grad-CAM.
  CHECK(max_abs_diff(igrad::explain_raw<igrad::ShapleyCam>(net, x, kTargets),
                     igrad::explain_raw<igrad::GradCam>(net, x, kTargets)) < 1e-12);
}

TEST_CASE("cam more: Shapley-CAM's Hessian-vector product matches finite differences of the gradient") {
  auto net = make_net(/*smooth_head=*/true, 9);
  const auto x = images(2, 10);
  const auto t = torch::tensor({1, 2}, torch::kLong);
  const auto shapley = igrad::explain_raw<igrad::ShapleyCam>(net, x, t);
  for (int64_t i = 0; i < 2; ++i) {
    const int64_t c = t[i].item<int64_t>();
    const auto a = net->features(x[i].unsqueeze(0)).detach();
    const auto gradient_at = [&](const torch::Tensor& point) {
      auto v = point.clone().requires_grad_(true);
      return torch::autograd::grad({net->head(v)[0][c]}, {v})[0].detach()[0];
    };
    const double step = 1e-5;
    const auto g = gradient_at(a);
    const auto hessian_product = (gradient_at(a * (1 + step)) - gradient_at(a * (1 - step))) / (2 * step);
    std::vector<double> weights = loop_channel_means(g - 0.5 * hessian_product);
    CHECK(max_abs_diff(shapley[i], torch::relu(loop_weighted_sum(weights, a[0]))) < 1e-7);
    CHECK(hessian_product.abs().max().item<double>() > 1e-4);  // a non-linear head: H A ≠ 0
  }
}

TEST_CASE("cam more: Finer-CAM is Grad-CAM of the target logit against its nearest classes") {
  auto net = make_net(/*smooth_head=*/true, 11);
  const auto x = images(3, 12);
  for (const auto& setting : {std::pair<double, int64_t>{1.0, 3}, {0.6, 2}}) {
    const double alpha = setting.first;
    const int64_t comparisons = setting.second;
    CAPTURE(alpha);
    CAPTURE(comparisons);
    const auto options = igrad::CamOptions().finer_cam_alpha(alpha).finer_cam_comparisons(comparisons);
    const auto finer = igrad::explain_raw<igrad::FinerCam<>>(net, x, kTargets, options);
    for (int64_t i = 0; i < 3; ++i) {
      const int64_t c = kTargets[i].item<int64_t>();
      const auto logits = net->forward(x[i].unsqueeze(0)).detach()[0];
      // The classes other than c, nearest logit first (ties by index: stable sort).
      std::vector<int64_t> others;
      for (int64_t j = 0; j < kClasses; ++j)
        if (j != c) others.push_back(j);
      std::stable_sort(others.begin(), others.end(), [&](int64_t l, int64_t r) {
        return std::abs(entry(logits, l) - entry(logits, c)) < std::abs(entry(logits, r) - entry(logits, c));
      });
      others.resize(comparisons);
      const auto score = [&](const torch::Tensor& y) {
        const auto p = y.softmax(0);
        torch::Tensor numerator = torch::zeros({}, torch::kDouble), denominator = torch::zeros({}, torch::kDouble);
        for (const int64_t j : others) {
          numerator = numerator + p[j] * (y[c] - alpha * y[j]);
          denominator = denominator + p[j];
        }
        return numerator / (denominator + 1e-9);
      };
      const auto [a, g] = a_and_gradient(net, x[i], score);
      CHECK(max_abs_diff(finer[i], torch::relu(loop_weighted_sum(loop_channel_means(g), a))) < 1e-12);
    }
    CHECK(max_abs_diff(finer, igrad::explain_raw<igrad::GradCam>(net, x, kTargets)) > 1e-6);
  }
  // Another base method explains the same score: Finer-CAM on HiRes-CAM is Σ_k g ⊙ A of it.
  using FinerHiRes = igrad::FinerCam<igrad::HiResCam>;
  CHECK(std::string(FinerHiRes::name) == "Finer-CAM (HiRes-CAM)");
  CHECK(std::string(igrad::FinerCam<>::name) == "Finer-CAM");
  const auto hires = igrad::explain_raw<FinerHiRes>(net, x, kTargets);
  CHECK(hires.sizes() == torch::IntArrayRef({3, 4, 4}));
  CHECK(max_abs_diff(hires, igrad::explain_raw<igrad::HiResCam>(net, x, kTargets)) > 1e-6);
}

TEST_CASE("cam more: KPCA-CAM is the leading component of the centred kernel matrix, by loops") {
  auto net = make_net(false, 13);
  const auto x = images(2, 14);
  using Kernel = igrad::KpcaKernel;
  for (const auto kernel : {Kernel::sigmoid, Kernel::rbf, Kernel::poly, Kernel::cosine}) {
    CAPTURE(static_cast<int>(kernel));
    for (const auto sign : {igrad::ProjectionSign::correlate_with_sum, igrad::ProjectionSign::largest_entry_positive}) {
      const auto raw = igrad::explain_raw<igrad::KpcaCam>(
          net, x, {}, igrad::CamOptions().kpca_kernel(kernel).kpca_sign(sign));
      for (int64_t i = 0; i < 2; ++i) {
        const auto a = net->features(x[i].unsqueeze(0)).detach()[0];
        const int64_t channels = a.size(0), pixels = a.size(1) * a.size(2);
        const auto rows = a.flatten(1).t();                    // [hw, K]
        const auto centred = rows - rows.mean(0, true);
        const double gamma = 1.0 / static_cast<double>(channels);  // scikit-learn's default
        auto gram = torch::zeros({pixels, pixels}, torch::kDouble);
        for (int64_t p = 0; p < pixels; ++p)
          for (int64_t q = 0; q < pixels; ++q) {
            double inner = 0, distance = 0, np = 0, nq = 0;
            for (int64_t k = 0; k < channels; ++k) {
              const double u = centred[p][k].item<double>(), v = centred[q][k].item<double>();
              inner += u * v;
              distance += (u - v) * (u - v);
              np += u * u;
              nq += v * v;
            }
            double value = 0;
            switch (kernel) {
              case Kernel::sigmoid: value = std::tanh(gamma * inner + 1.0); break;
              case Kernel::rbf: value = std::exp(-gamma * distance); break;
              case Kernel::poly: value = std::pow(gamma * inner + 1.0, 3); break;
              case Kernel::cosine:
                value = (np == 0 || nq == 0) ? 0.0 : inner / std::sqrt(np * nq);
                break;
              default: break;
            }
            gram[p][q] = value;
          }
        // Centring in feature space: K − 1K − K1 + 1K1, by loops over row and column means.
        auto centred_gram = torch::zeros_like(gram);
        std::vector<double> row_mean(pixels, 0.0), column_mean(pixels, 0.0);
        double all_mean = 0;
        for (int64_t p = 0; p < pixels; ++p)
          for (int64_t q = 0; q < pixels; ++q) {
            row_mean[p] += gram[p][q].item<double>() / static_cast<double>(pixels);
            column_mean[q] += gram[p][q].item<double>() / static_cast<double>(pixels);
            all_mean += gram[p][q].item<double>() / static_cast<double>(pixels * pixels);
          }
        for (int64_t p = 0; p < pixels; ++p)
          for (int64_t q = 0; q < pixels; ++q)
            centred_gram[p][q] = gram[p][q].item<double>() - row_mean[p] - column_mean[q] + all_mean;
        const auto [vector, value] = leading_eigenpair(centred_gram);
        auto component = vector * std::sqrt(std::max(value, 0.0));
        if (sign == igrad::ProjectionSign::correlate_with_sum) {
          const auto total = a.sum(0).view({-1});
          if (((component - component.mean()) * (total - total.mean())).sum().item<double>() < 0)
            component = -component;
        } else {
          const auto largest = component.abs().argmax().item<int64_t>();
          if (component[largest].item<double>() < 0) component = -component;
        }
        CHECK(max_abs_diff(raw[i], torch::relu(component).view({a.size(1), a.size(2)})) < 1e-7);
      }
    }
  }
  // The linear kernel is PCA: KPCA-CAM is Eigen-CAM (same sign convention).
  CHECK(max_abs_diff(igrad::explain_raw<igrad::KpcaCam>(net, x, {}, igrad::CamOptions().kpca_kernel(Kernel::linear)),
                     igrad::explain_raw<igrad::EigenCam>(net, x)) < 1e-8);
}

TEST_CASE("cam more: EigenSmooth is the principal projection of the weighted channel maps") {
  auto net = make_net(/*smooth_head=*/true, 15);
  const auto x = images(3, 16);
  const auto smoothed = igrad::explain_raw<igrad::EigenSmooth<igrad::GradCam>>(net, x, kTargets);
  const auto layer = igrad::explain_raw<igrad::EigenSmooth<igrad::LayerCam>>(net, x, kTargets);
  for (int64_t i = 0; i < 3; ++i) {
    const int64_t c = kTargets[i].item<int64_t>();
    const auto [a, g] = a_and_gradient(net, x[i], [&](const torch::Tensor& y) { return y[c]; });
    const auto weights = loop_channel_means(g);
    auto weighted = torch::zeros_like(a), positive = torch::zeros_like(a);
    for (int64_t k = 0; k < a.size(0); ++k)
      for (int64_t p = 0; p < a.size(1); ++p)
        for (int64_t q = 0; q < a.size(2); ++q) {
          weighted[k][p][q] = weights[k] * a[k][p][q].item<double>();
          positive[k][p][q] = std::max(g[k][p][q].item<double>(), 0.0) * a[k][p][q].item<double>();
        }
    CHECK(max_abs_diff(smoothed[i], torch::relu(reference_principal_projection(weighted))) < 1e-8);
    CHECK(max_abs_diff(layer[i], torch::relu(reference_principal_projection(positive))) < 1e-8);
  }
  CHECK(std::string(igrad::EigenSmooth<igrad::GradCam>::name) == "Grad-CAM (eigen smooth)");
  CHECK(max_abs_diff(smoothed, igrad::explain_raw<igrad::GradCam>(net, x, kTargets)) > 1e-6);
}

TEST_CASE("cam more: AugSmooth averages the de-augmented maps of flipped and scaled images") {
  auto net = make_net(/*smooth_head=*/true, 17);
  const auto x = images(2, 18);
  const auto t = torch::tensor({2, 4}, torch::kLong);
  const auto raw = igrad::explain_raw<igrad::AugSmooth<igrad::GradCam>>(net, x, t);
  // Independent: the six pytorch-grad-cam passes (flip × {0.9, 1, 1.1}), each post-processed by
  // hand (ReLU, min–max, bilinear upsampling, min–max) and flipped back.
  const auto post_process = [](const torch::Tensor& m) {  // [h, w] → [8, 8]
    auto s = torch::relu(m);
    s = (s - s.min()) / (s.max() - s.min() + 1e-7);
    s = F::interpolate(s.view({1, 1, s.size(0), s.size(1)}),
                       F::InterpolateFuncOptions().size(std::vector<int64_t>{8, 8}).mode(torch::kBilinear).align_corners(false))[0][0];
    return (s - s.min()) / (s.max() - s.min() + 1e-7);
  };
  for (int64_t i = 0; i < 2; ++i) {
    const int64_t c = t[i].item<int64_t>();
    auto sum = torch::zeros({8, 8}, torch::kDouble);
    for (const bool flip : {false, true})
      for (const double factor : {0.9, 1.0, 1.1}) {
        const auto input = (flip ? x[i].flip({2}) : x[i]) * factor;
        const auto [a, g] = a_and_gradient(net, input, [&](const torch::Tensor& y) { return y[c]; });
        auto map = post_process(loop_weighted_sum(loop_channel_means(g), a));
        sum += flip ? map.flip({1}) : map;
      }
    CHECK(max_abs_diff(raw[i], sum / 6.0) < 1e-10);
  }
  // explain scales the average to [0, 1] again; without flips there are three passes.
  const auto maps = igrad::explain<igrad::AugSmooth<igrad::GradCam>>(net, x, t);
  CHECK(max_abs_diff(maps, igrad::normalize_cam(raw, 8, 8)) < 1e-12);
  const auto unflipped = igrad::explain_raw<igrad::AugSmooth<igrad::GradCam>>(
      net, x, t, igrad::CamOptions().aug_smooth_flip(false).aug_smooth_factors({1.0}));
  CHECK(max_abs_diff(unflipped, igrad::explain<igrad::GradCam>(net, x, t)) < 1e-12);
  CHECK(std::string(igrad::AugSmooth<igrad::GradCam>::name) == "Grad-CAM (aug smooth)");
}

TEST_CASE("cam more: the new methods and wrappers keep the CamMethod laws (batch, .grad, mode, buffers)") {
  auto net = make_net(false, 19, /*batch_norm=*/true);
  auto smooth = make_net(true, 21, /*batch_norm=*/true);
  const auto x = images(3, 20);
  const auto options = igrad::testing::ConformanceOptions().tolerance(1e-8);
  const auto cam_options = igrad::CamOptions().aug_smooth_factors({0.9, 1.1});
  int checked = 0;
  const auto check = [&](auto type, const igrad::CamOptions& o) {
    using C = typename decltype(type)::type;
    for (auto* model : {&net, &smooth}) {
      (*model)->train();
      const auto report = igrad::testing::check_cam_method<C>(*model, x, options, o);
      INFO(report.summary());
      CHECK(report.ok());
      CHECK((*model)->is_training());
    }
    ++checked;
  };
  boost::hana::for_each(
      boost::hana::tuple_t<igrad::EigenGradCam, igrad::Fem, igrad::ShapleyCam, igrad::FinerCam<>,
                           igrad::KpcaCam, igrad::FinerCam<igrad::GradCamPlusPlus>,
                           igrad::EigenSmooth<igrad::GradCam>, igrad::EigenSmooth<igrad::ScoreCam>,
                           igrad::AugSmooth<igrad::GradCam>,
                           igrad::AugSmooth<igrad::EigenSmooth<igrad::FinerCam<>>>>,
      [&](auto type) { check(type, cam_options); });
  check(boost::hana::type_c<igrad::ShapleyCam>, igrad::CamOptions().target_score(igrad::rest_score));
  check(boost::hana::type_c<igrad::Fem>, igrad::CamOptions().fem_convention(igrad::FemConvention::pytorch_grad_cam));
  CHECK(checked == 12);
  // The shipped list holds the five new methods.
  std::vector<std::string> names;
  boost::hana::for_each(igrad::all_cam_methods, [&](auto type) { names.emplace_back(decltype(type)::type::name); });
  for (const char* name : {"EigenGrad-CAM", "FEM", "Shapley-CAM", "Finer-CAM", "KPCA-CAM"})
    CHECK(std::find(names.begin(), names.end(), name) != names.end());
  static_assert(igrad::ChannelMapsCamMethod<igrad::FinerCam<>>);
  static_assert(!igrad::ChannelMapsCamMethod<igrad::EigenCam>);
  static_assert(igrad::cam_uses_target_score<igrad::ShapleyCam>);
  static_assert(!igrad::cam_uses_target_score<igrad::ScoreCam>);
}

TEST_CASE("cam more: bad options of the new methods give igrad errors that name the option") {
  auto net = make_net(false, 23);
  const auto x = images(2, 24);
  const auto nan = std::nan("");
  CHECK_THROWS_WITH_AS(igrad::explain<igrad::Fem>(net, x, {}, igrad::CamOptions().fem_k(nan)),
                       doctest::Contains("CamOptions::fem_k"), igrad::InvalidArgument);
  CHECK_THROWS_WITH_AS(igrad::explain<igrad::FinerCam<>>(net, x, {}, igrad::CamOptions().finer_cam_comparisons(5)),
                       doctest::Contains("at most 4"), igrad::InvalidArgument);
  CHECK_THROWS_WITH_AS(igrad::explain<igrad::FinerCam<>>(net, x, {}, igrad::CamOptions().finer_cam_comparisons(0)),
                       doctest::Contains("CamOptions::finer_cam_comparisons"), igrad::InvalidArgument);
  CHECK_THROWS_WITH_AS(igrad::explain<igrad::FinerCam<>>(net, x, {}, igrad::CamOptions().finer_cam_alpha(nan)),
                       doctest::Contains("CamOptions::finer_cam_alpha"), igrad::InvalidArgument);
  CHECK_THROWS_WITH_AS(igrad::explain<igrad::KpcaCam>(net, x, {}, igrad::CamOptions().kpca_gamma(-1)),
                       doctest::Contains("CamOptions::kpca_gamma"), igrad::InvalidArgument);
  CHECK_THROWS_WITH_AS(igrad::explain<igrad::KpcaCam>(net, x, {}, igrad::CamOptions().kpca_degree(0)),
                       doctest::Contains("CamOptions::kpca_degree"), igrad::InvalidArgument);
  CHECK_THROWS_WITH_AS(igrad::explain<igrad::AugSmooth<igrad::GradCam>>(net, x, {}, igrad::CamOptions().aug_smooth_factors({})),
                       doctest::Contains("CamOptions::aug_smooth_factors"), igrad::InvalidArgument);
  CHECK_THROWS_WITH_AS(igrad::explain<igrad::AugSmooth<igrad::GradCam>>(net, x, {}, igrad::CamOptions().aug_smooth_factors({1.0, -2.0})),
                       doctest::Contains("CamOptions::aug_smooth_factors"), igrad::InvalidArgument);
  const auto batch_score = [](const torch::Tensor& logits, const torch::Tensor&) { return logits.sum(); };
  CHECK_THROWS_WITH_AS(igrad::explain<igrad::GradCam>(net, x, {}, igrad::CamOptions().target_score(batch_score)),
                       doctest::Contains("CamOptions::target_score"), igrad::InvalidArgument);
  // The model is left usable and its parameters untouched by the failed calls.
  for (const auto& p : net->parameters()) CHECK_FALSE(p.grad().defined());
  CHECK_FALSE(net->is_training());
}
