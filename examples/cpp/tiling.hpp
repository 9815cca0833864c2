// The window lists of docs/contract.md section 3 (reference and cells), from nsr.json's parameters.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "mini_json.hpp"

struct Window {
  int y, x, ky0, kx0, ky1, kx1;
  double weight;
};

struct Plan {
  int window_h = 0, window_w = 0;
  std::vector<Window> windows;
  bool overlapping = false;  // kept parts overlap: weighted mean
  int pad(int h, int w) const {
    int p = 0;
    for (const auto& t : windows)
      p = std::max({p, -t.y, -t.x, t.y + window_h - h, t.x + window_w - w});
    return p;
  }
};

inline Plan whole_plan(int h, int w) { return Plan{h, w, {{0, 0, 0, 0, h, w, 1.0}}, false}; }

inline Plan reference_plan(int h, int w, const mini_json::Value& t) {
  int pad = t["reflect_pad"].as_int(), p = t["patch"].as_int(), s = t["stride"].as_int();
  double main_w = t["main_weight"].as_double(), strip_w = t["strip_weight"].as_double();
  int hp = h + 2 * pad, wp = w + 2 * pad;
  int nh = (hp - p) / s + 1, nw = (wp - p) / s + 1;
  int crop_h = hp - ((nh - 1) * s + p), crop_w = wp - ((nw - 1) * s + p);
  std::vector<std::tuple<int, int, double>> at;  // padded coordinates
  for (int i = 0; i < nh; ++i)
    for (int j = 0; j < nw; ++j) at.emplace_back(crop_h / 2 + i * s, crop_w / 2 + j * s, main_w);
  for (int j = 0; j < nw; ++j) at.emplace_back(0, j * s, strip_w);             // top row
  for (int i = 0; i < nh; ++i) at.emplace_back(i * s, wp - p, strip_w);        // right column
  for (int j = 0; j < nw; ++j) at.emplace_back(hp - p, crop_w + j * s, strip_w);  // bottom row
  for (int i = 0; i < nh; ++i) at.emplace_back(crop_h + i * s, 0, strip_w);    // left column
  Plan plan{p, p, {}, true};
  for (auto& [py, px, wt] : at) plan.windows.push_back({py - pad, px - pad, pad, pad, p - pad, p - pad, wt});
  return plan;
}

// round(i * size / n) as Python computes it: a double quotient, rounded half to even
inline std::vector<int> cuts(int size, int n) {
  std::vector<int> c;
  for (int i = 0; i <= n; ++i) c.push_back(static_cast<int>(std::nearbyint(double(i) * size / n)));
  return c;
}

inline int ceil_div(long a, long b) { return static_cast<int>((a + b - 1) / b); }

inline Plan cells_plan(int h, int w, const mini_json::Value& t, int batch) {
  int cell_max = t["cell_max"].as_int(), halo = t["halo"].as_int();
  int slack = t["grid_slack"].as_int(), min_cell = t["min_cell"].as_int();
  int rows = ceil_div(h, cell_max), cols = ceil_div(w, cell_max);
  if (batch > 1) {  // a fixed batch: the grid that computes least, padding of the last call included
    int r0 = rows, c0 = cols;
    std::pair<long, long> best{std::numeric_limits<long>::max(), 0};
    for (int r = r0; r <= r0 + slack; ++r)
      for (int c = c0; c <= c0 + slack; ++c) {
        if (!(r == r0 && c == c0) && !(h / r >= min_cell && w / c >= min_cell)) continue;
        long calls = ceil_div(long(r) * c, batch);
        std::pair<long, long> cost{calls * batch * (ceil_div(h, r) + 2 * halo) * long(ceil_div(w, c) + 2 * halo),
                                   long(r) * c};
        if (cost < best) best = cost, rows = r, cols = c;
      }
  }
  std::vector<int> yc = cuts(h, rows), xc = cuts(w, cols);
  int ch = 0, cw = 0;
  for (int i = 0; i < rows; ++i) ch = std::max(ch, yc[i + 1] - yc[i]);
  for (int j = 0; j < cols; ++j) cw = std::max(cw, xc[j + 1] - xc[j]);
  Plan plan{ch + 2 * halo, cw + 2 * halo, {}, false};
  // border "clamp": windows stay inside the image (the halo moves inwards), see docs/contract.md
  auto place = [halo](int start, int window, int size) {
    return std::min(std::max(0, start - halo), std::max(0, size - window));
  };
  for (int i = 0; i < rows; ++i) {
    int wy = place(yc[i], plan.window_h, h);
    for (int j = 0; j < cols; ++j) {
      int wx = place(xc[j], plan.window_w, w);
      plan.windows.push_back({wy, wx, yc[i] - wy, xc[j] - wx, yc[i + 1] - wy, xc[j + 1] - wx, 1.0});
    }
  }
  return plan;
}

// `batch`: the engine's fixed patch batch, 0 when dynamic.
inline Plan make_plan(const std::string& mode, int h, int w, const mini_json::Value& semantics, int batch) {
  const auto& tiling = semantics["tiling"];
  if (!tiling.has(mode)) return whole_plan(h, w);  // dense models: the whole image is the exact result
  const auto& t = tiling[mode];
  int whole = t["whole_image_if_side_below"].as_int();
  if (h < whole || w < whole) return whole_plan(h, w);
  return mode == "reference" ? reference_plan(h, w, t) : cells_plan(h, w, t, batch);
}
