// nsr_restore EXPORT_DIR IN.png OUT.png [reference|cells] [--windows] [--bench REPEATS]
//
// Restores IN.png with the engine of an nsr-deploy export folder, through the OpenVINO C++ API, as
// docs/contract.md says (the same pixels as `nsr-deploy restore`, up to engines' float rounding).
// Runs model.xml when the folder has an OpenVINO target, else model.onnx; a fixed-batch engine's calls of
// fewer windows go to its batch_one file, when the export has one. --windows prints, as JSON, the window
// list (to compare with the conformance vectors) and the engine calls made. --bench REPEATS times, in
// turns, the whole of IN.png and one full call of the main engine, per output pixel (JSON).
// Sizes are printed height x width, in the order of the JSON's [h, w]. Bad input: one "error:" line, exit 2.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <openvino/openvino.hpp>

#include "mini_json.hpp"
#include "png_io.hpp"
#include "tiling.hpp"

namespace {

constexpr int kDynamicCallSize = 16;  // windows per call when the engine's batch is dynamic, as `restore`

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

struct Calls {
  int model = 0, batch_one = 0;  // engine calls made on the main file and on its batch_one file
  size_t computed = 0;           // windows computed, fill copies included
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
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
    main_ = compile(dir + "/" + engine["file"].text);
    if (static_batch_ > 1 && engine.has("batch_one")) single_ = compile(dir + "/" + engine["batch_one"]["file"].text);
  }

  int channels() const { return channels_; }
  int scale() const { return scale_; }
  int call_size() const { return static_batch_ ? static_batch_ : kDynamicCallSize; }
  int cell_window() const {  // the side of a `cells` window of full cells (dense models: cell_max's default)
    const auto& tiling = manifest_["semantics"]["tiling"];
    return tiling.has("cells") ? tiling["cells"]["cell_max"].as_int() + 2 * tiling["cells"]["halo"].as_int() : 86;
  }
  Plan plan(const std::string& mode, int h, int w) const {
    return make_plan(mode, h, w, manifest_["semantics"], static_batch_);
  }

  Image8 restore(const Image8& in, const Plan& plan, Calls& calls) {
    const int h = in.height, w = in.width, c = channels_, s = scale_;
    std::vector<float> x(static_cast<size_t>(c) * h * w);  // CHW, u8 / 255 in float32
    for (int ch = 0; ch < c; ++ch)
      for (size_t i = 0; i < size_t(h) * w; ++i) x[ch * size_t(h) * w + i] = float(in.pixels[i * c + ch]) / 255.0f;
    const size_t oh = size_t(h) * s, ow = size_t(w) * s;
    std::vector<float> out(c * oh * ow, 0.0f), weight(plan.overlapping ? oh * ow : 0, 0.0f);
    const size_t n_windows = plan.windows.size();
    for (size_t first = 0; first < n_windows; first += call_size()) {
      const size_t m = std::min(n_windows - first, size_t(call_size()));
      if (single_ && m < size_t(static_batch_)) {  // a short call: one window at a time on the batch-1 file
        for (size_t b = 0; b < m; ++b) {
          put(run(single_, x, h, w, plan, first + b, 1, 1), plan, first + b, 1, out, weight, oh, ow);
          ++calls.batch_one, ++calls.computed;
        }
        continue;
      }
      const size_t n = static_batch_ ? size_t(static_batch_) : m;  // a fixed batch: filled with the last window
      put(run(main_, x, h, w, plan, first, m, n), plan, first, m, out, weight, oh, ow);
      ++calls.model, calls.computed += n;
    }
    return to_image(out, weight, plan.overlapping, oh, ow);
  }

  // Seconds of one full call of the main engine: its batch of windows of `wh` x `ww`, all inside `in`.
  double time_full_call(const Image8& in, int wh, int ww) {
    std::vector<float> x(size_t(channels_) * in.height * in.width, 0.5f);
    Plan plan{wh, ww, std::vector<Window>(call_size(), Window{0, 0, 0, 0, wh, ww, 1.0}), false};
    const auto t0 = std::chrono::steady_clock::now();
    run(main_, x, in.height, in.width, plan, 0, call_size(), call_size());
    return seconds_since(t0);
  }

 private:
  std::unique_ptr<ov::InferRequest> compile(const std::string& file) {
    auto model = core_.read_model(file);
    // f32 execution on every CPU (bf16 machines would otherwise compute the softmax in bf16)
    compiled_.push_back(core_.compile_model(model, "CPU", ov::hint::inference_precision(ov::element::f32)));
    return std::make_unique<ov::InferRequest>(compiled_.back().create_infer_request());
  }

  // Runs windows first .. first+m-1 (the last repeated up to n) through `request`; returns y.
  const float* run(std::unique_ptr<ov::InferRequest>& request, const std::vector<float>& x, int h, int w,
                   const Plan& plan, size_t first, size_t m, size_t n) {
    const int c = channels_, wh = plan.window_h, ww = plan.window_w;
    const bool reflect = plan.pad(h, w) < h && plan.pad(h, w) < w;
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
          for (int ch = 0; ch < c; ++ch) xp[((b * c + ch) * wh + i) * ww + j] = x[(ch * size_t(h) + sy) * w + sx];
          vp[(b * wh + i) * ww + j] = (yy >= 0 && yy < h && xx >= 0 && xx < w) ? 1.0f : 0.0f;
        }
      }
    }
    request->set_tensor("x", xt);
    request->set_tensor("valid", vt);
    request->infer();
    return request->get_tensor("y").data<const float>();
  }

  // Adds the kept parts of windows first .. first+m-1 (outputs y) to the image: written, or blended.
  void put(const float* y, const Plan& plan, size_t first, size_t m, std::vector<float>& out,
           std::vector<float>& weight, size_t oh, size_t ow) const {
    const int c = channels_, s = scale_;
    const size_t yh = size_t(plan.window_h) * s, yw = size_t(plan.window_w) * s;
    for (size_t b = 0; b < m; ++b) {
      const Window& t = plan.windows[first + b];
      const float wt = static_cast<float>(t.weight);
      for (int i = t.ky0 * s; i < t.ky1 * s; ++i) {  // kept rows and columns, at output resolution
        const size_t oy = size_t(t.y * s + i);
        for (int j = t.kx0 * s; j < t.kx1 * s; ++j) {
          const size_t ox = size_t(t.x * s + j);
          for (int ch = 0; ch < c; ++ch) {
            const float v = y[((b * c + ch) * yh + i) * yw + j];
            float& o = out[(ch * oh + oy) * ow + ox];
            if (plan.overlapping) o += wt * v; else o = v;
          }
          if (plan.overlapping) weight[oy * ow + ox] += wt;
        }
      }
    }
  }

  Image8 to_image(const std::vector<float>& out, const std::vector<float>& weight, bool blended, size_t oh,
                  size_t ow) const {
    const int c = channels_;
    Image8 result{int(oh), int(ow), c, std::vector<uint8_t>(c * oh * ow)};
    for (int ch = 0; ch < c; ++ch)
      for (size_t i = 0; i < oh * ow; ++i) {
        float v = out[ch * oh * ow + i];
        if (blended) v = v / weight[i];
        const float q = std::nearbyint(std::min(255.0f, std::max(0.0f, v * 255.0f)));  // half to even
        result.pixels[i * c + ch] = static_cast<uint8_t>(q);
      }
    return result;
  }

  mini_json::Value manifest_;
  int scale_ = 1, channels_ = 3, static_batch_ = 0;
  ov::Core core_;
  std::vector<ov::CompiledModel> compiled_;
  std::unique_ptr<ov::InferRequest> main_, single_;
};

void print_windows(const Plan& plan, int h, int w, const Calls& calls) {
  std::printf("{\"window\": [%d, %d], \"pad\": %d, \"calls\": {\"model\": %d, \"batch_one\": %d}, "
              "\"computed_windows\": %zu, \"windows\": [",
              plan.window_h, plan.window_w, plan.pad(h, w), calls.model, calls.batch_one, calls.computed);
  for (size_t i = 0; i < plan.windows.size(); ++i) {
    const Window& t = plan.windows[i];
    std::printf("%s[%d, %d, %d, %d, %d, %d, %.17g]", i ? ", " : "", t.y, t.x, t.ky0, t.kx0, t.ky1, t.kx1, t.weight);
  }
  std::printf("]}\n");
}

// Seconds per output pixel of the whole image (restore as above) and of one full main-engine call of
// windows of the `cells` window size, taken in turns so that both see the same machine load.
void bench(Restorer& restorer, const Picture& in, const std::string& mode, int repeats, int cell_window) {
  const Plan plan = restorer.plan(mode, in.image.height, in.image.width);
  const double s2 = double(restorer.scale()) * restorer.scale();
  const double whole_px = double(in.image.height) * in.image.width * s2;
  const double full_px = double(restorer.call_size()) * cell_window * cell_window * s2;
  std::printf("{\"image\": [%d, %d], \"windows\": %zu, \"full_call\": {\"windows\": %d, \"window\": [%d, %d]}, "
              "\"ns_per_output_pixel\": [",
              in.image.height, in.image.width, plan.windows.size(), restorer.call_size(), cell_window, cell_window);
  for (int r = 0; r < repeats; ++r) {
    Calls calls;
    const auto t0 = std::chrono::steady_clock::now();
    restorer.restore(in.image, plan, calls);
    const double whole = seconds_since(t0);
    const double full = restorer.time_full_call(in.image, cell_window, cell_window);
    std::printf("%s{\"whole\": %.3f, \"full_call\": %.3f, \"calls\": [%d, %d]}", r ? ", " : "",
                whole / whole_px * 1e9, full / full_px * 1e9, calls.model, calls.batch_one);
  }
  std::printf("]}\n");
}

struct Args {
  std::string dir, in, out, mode = "reference";
  bool windows = false;
  int bench = 0;
};

Args parse(int argc, char** argv) {
  if (argc < 4) throw std::invalid_argument("usage: nsr_restore EXPORT_DIR IN.png OUT.png [reference|cells] "
                                            "[--windows] [--bench REPEATS]");
  Args a{argv[1], argv[2], argv[3]};
  for (int i = 4; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--windows") a.windows = true;
    else if (arg == "--bench" && i + 1 < argc) a.bench = std::max(1, std::atoi(argv[++i]));
    else if (i == 4 && (arg == "reference" || arg == "cells")) a.mode = arg;
    else throw std::invalid_argument("tiling must be reference or cells, then optionally --windows, --bench N");
  }
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args args = parse(argc, argv);
    const auto t0 = std::chrono::steady_clock::now();
    Restorer restorer(args.dir);
    const Picture in = read_png(args.in, restorer.channels());
    const double load = seconds_since(t0);
    if (args.bench) {
      bench(restorer, in, args.mode, args.bench, restorer.cell_window());
      return 0;
    }
    const auto t1 = std::chrono::steady_clock::now();
    const Plan plan = restorer.plan(args.mode, in.image.height, in.image.width);
    Calls calls;
    const Image8 out = restorer.restore(in.image, plan, calls);
    const double restore = seconds_since(t1);
    // an alpha channel is not restored: resized as Pillow's bicubic to the output size and put back
    const std::vector<uint8_t> alpha = in.alpha.empty() ? in.alpha
        : resize_bicubic(in.alpha, in.image.height, in.image.width, out.height, out.width);
    write_png(args.out, out, alpha);
    if (args.windows) print_windows(plan, in.image.height, in.image.width, calls);
    std::fprintf(stderr, "%s: %d x %d -> %d x %d (height x width), %s tiling, %zu windows of %d x %d, "
                 "%d calls of the model + %d of batch_one, load %.3f s, restore %.3f s\n",
                 args.out.c_str(), in.image.height, in.image.width, out.height, out.width, args.mode.c_str(),
                 plan.windows.size(), plan.window_h, plan.window_w, calls.model, calls.batch_one, load, restore);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  return 0;
}
