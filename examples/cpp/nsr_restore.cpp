// nsr_restore EXPORT_DIR IN.png OUT.png [reference|cells] [--windows]
//
// Restores IN.png with the engine of an nsr-deploy export folder, through the OpenVINO C++ API, as
// docs/contract.md says (the same pixels as `nsr-deploy restore`, up to engines' float rounding).
// Runs model.xml when the folder has an OpenVINO target, else model.onnx. --windows also prints the
// window list as JSON (to compare with the conformance vectors). Bad input: one "error:" line, exit 2.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <openvino/openvino.hpp>

#include "mini_json.hpp"
#include "png_io.hpp"
#include "tiling.hpp"

namespace {

constexpr int kDynamicCallSize = 16;  // windows per call when the engine's batch is dynamic

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(path + ": cannot read (not an nsr-deploy export folder?)");
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// The folder's engine: OpenVINO IR if exported, else the ONNX model (OpenVINO reads both).
const mini_json::Value& engine_entry(const mini_json::Value& manifest) {
  const auto& targets = manifest["targets"];
  for (const char* name : {"openvino", "onnx"})
    if (targets.has(name) && (!targets[name].has("portable") || targets[name]["portable"].boolean))
      return targets[name];
  throw std::runtime_error("nsr.json: no OpenVINO or portable ONNX engine in the folder");
}

int padded_index(int i, int n, bool reflect) {  // numpy 'reflect' (edge not repeated) or 'symmetric'
  if (reflect) {
    i = std::abs(i);
    return i >= n ? 2 * (n - 1) - i : i;
  }
  if (i < 0) i = -i - 1;
  return i >= n ? 2 * n - 1 - i : i;
}

class Restorer {
 public:
  Restorer(const std::string& dir) : manifest_(mini_json::parse(read_text(dir + "/nsr.json"))) {
    if (manifest_["contract_version"].as_int() != 1)
      throw std::runtime_error("nsr.json: contract version " + std::to_string(manifest_["contract_version"].as_int()) +
                               " (this program implements version 1)");
    const auto& sem = manifest_["semantics"];
    scale_ = sem["scale"].as_int();
    channels_ = sem["channels"].as_int();
    const auto& engine = engine_entry(manifest_);  // its own fixed batch, if it has one
    const auto& sb = engine.has("static_batch") ? engine["static_batch"] : manifest_["io"]["static_batch"];
    static_batch_ = sb.is_null() ? 0 : sb.as_int();
    ov::Core core;
    auto model = core.read_model(dir + "/" + engine["file"].text);
    // f32 execution on every CPU (bf16 machines would otherwise compute the softmax in bf16)
    compiled_ = core.compile_model(model, "CPU", ov::hint::inference_precision(ov::element::f32));
    request_ = compiled_.create_infer_request();
  }

  int channels() const { return channels_; }
  int static_batch() const { return static_batch_; }
  Plan plan(const std::string& mode, int h, int w) const {
    return make_plan(mode, h, w, manifest_["semantics"], static_batch_);
  }

  Image8 restore(const Image8& in, const Plan& plan) {
    const int h = in.height, w = in.width, c = channels_, s = scale_;
    const int wh = plan.window_h, ww = plan.window_w, pad = plan.pad(h, w);
    const bool reflect = pad < h && pad < w;
    std::vector<float> x(static_cast<size_t>(c) * h * w);  // CHW, u8 / 255 in float32
    for (int ch = 0; ch < c; ++ch)
      for (size_t i = 0; i < size_t(h) * w; ++i) x[ch * size_t(h) * w + i] = float(in.pixels[i * c + ch]) / 255.0f;
    const size_t oh = size_t(h) * s, ow = size_t(w) * s;
    std::vector<float> out(c * oh * ow, 0.0f), weight(plan.overlapping ? oh * ow : 0, 0.0f);
    const int call = static_batch_ ? static_batch_ : kDynamicCallSize;
    const size_t n_windows = plan.windows.size();
    for (size_t first = 0; first < n_windows; first += call) {
      const size_t m = std::min(n_windows - first, size_t(call));
      const size_t n = static_batch_ ? size_t(static_batch_) : m;  // a fixed batch: fill with the last window
      ov::Tensor xt(ov::element::f32, {n, size_t(c), size_t(wh), size_t(ww)});
      ov::Tensor vt(ov::element::f32, {n, 1, size_t(wh), size_t(ww)});
      float* xp = xt.data<float>();
      float* vp = vt.data<float>();
      for (size_t b = 0; b < n; ++b) {
        const Window& t = plan.windows[first + std::min(b, m - 1)];
        for (int i = 0; i < wh; ++i) {
          const int yy = t.y + i, sy = padded_index(yy, h, reflect);
          for (int j = 0; j < ww; ++j) {
            const int xx = t.x + j, sx = padded_index(xx, w, reflect);
            for (int ch = 0; ch < c; ++ch)
              xp[((b * c + ch) * wh + i) * ww + j] = x[(ch * size_t(h) + sy) * w + sx];
            vp[(b * wh + i) * ww + j] = (yy >= 0 && yy < h && xx >= 0 && xx < w) ? 1.0f : 0.0f;
          }
        }
      }
      request_.set_tensor("x", xt);
      request_.set_tensor("valid", vt);
      request_.infer();
      const ov::Tensor yt = request_.get_tensor("y");
      const float* yp = yt.data<const float>();
      const size_t yh = size_t(wh) * s, yw = size_t(ww) * s;
      for (size_t b = 0; b < m; ++b) {
        const Window& t = plan.windows[first + b];
        const float wt = static_cast<float>(t.weight);
        for (int i = t.ky0 * s; i < t.ky1 * s; ++i) {
          const size_t oy = size_t(t.y * s + i);
          for (int j = t.kx0 * s; j < t.kx1 * s; ++j) {
            const size_t ox = size_t(t.x * s + j);
            for (int ch = 0; ch < c; ++ch) {
              const float v = yp[((b * c + ch) * yh + i) * yw + j];
              float& o = out[(ch * oh + oy) * ow + ox];
              if (plan.overlapping) o += wt * v; else o = v;
            }
            if (plan.overlapping) weight[oy * ow + ox] += wt;
          }
        }
      }
    }
    Image8 result;
    result.height = int(oh);
    result.width = int(ow);
    result.channels = c;
    result.pixels.resize(c * oh * ow);
    for (int ch = 0; ch < c; ++ch)
      for (size_t i = 0; i < oh * ow; ++i) {
        float v = out[ch * oh * ow + i];
        if (plan.overlapping) v = v / weight[i];
        const float q = std::nearbyint(std::min(255.0f, std::max(0.0f, v * 255.0f)));  // half to even
        result.pixels[i * c + ch] = static_cast<uint8_t>(q);
      }
    return result;
  }

 private:
  mini_json::Value manifest_;
  int scale_ = 1, channels_ = 3, static_batch_ = 0;
  ov::CompiledModel compiled_;
  ov::InferRequest request_;
};

void print_windows(const Plan& plan, int h, int w) {
  std::printf("{\"window\": [%d, %d], \"pad\": %d, \"windows\": [", plan.window_h, plan.window_w, plan.pad(h, w));
  for (size_t i = 0; i < plan.windows.size(); ++i) {
    const Window& t = plan.windows[i];
    std::printf("%s[%d, %d, %d, %d, %d, %d, %.17g]", i ? ", " : "", t.y, t.x, t.ky0, t.kx0, t.ky1, t.kx1, t.weight);
  }
  std::printf("]}\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4 || argc > 6) {
    std::fprintf(stderr, "usage: %s EXPORT_DIR IN.png OUT.png [reference|cells] [--windows]\n", argv[0]);
    return 2;
  }
  const std::string mode = argc >= 5 ? argv[4] : "reference";
  const bool windows = argc == 6 && std::string(argv[5]) == "--windows";
  if ((mode != "reference" && mode != "cells") || (argc == 6 && !windows)) {
    std::fprintf(stderr, "error: tiling must be reference or cells, then optionally --windows\n");
    return 2;
  }
  try {
    const auto t0 = std::chrono::steady_clock::now();
    Restorer restorer(argv[1]);
    const Image8 in = read_png(argv[2], restorer.channels());
    const auto t1 = std::chrono::steady_clock::now();
    const Plan plan = restorer.plan(mode, in.height, in.width);
    const Image8 out = restorer.restore(in, plan);
    const auto t2 = std::chrono::steady_clock::now();
    write_png(argv[3], out);
    if (windows) print_windows(plan, in.height, in.width);
    std::fprintf(stderr, "%s: %dx%d -> %dx%d, %s tiling, %zu windows of %dx%d, load %.3f s, restore %.3f s\n",
                 argv[3], in.width, in.height, out.width, out.height, mode.c_str(), plan.windows.size(),
                 plan.window_w, plan.window_h, std::chrono::duration<double>(t1 - t0).count(),
                 std::chrono::duration<double>(t2 - t1).count());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  return 0;
}
