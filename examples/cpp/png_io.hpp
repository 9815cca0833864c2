// PNG in and out through libpng, shaped as docs/contract.md section 2 says: any bit depth and colour
// type becomes 8-bit grey or RGB, an alpha channel is kept aside (and resized the way Pillow's bicubic
// does), the EXIF orientation of an eXIf chunk is applied.
#pragma once
#include <png.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

struct Image8 {
  int height = 0, width = 0, channels = 0;  // channels: 1 (grey), 2 (grey + alpha), 3 (RGB), 4 (RGBA)
  std::vector<uint8_t> pixels;              // row-major, interleaved (HxWxC)
};

struct Picture {
  Image8 image;                // what the model takes: 1 or 3 channels
  std::vector<uint8_t> alpha;  // HxW, empty when the file has no alpha
};

namespace png_detail {

// The file's samples as libpng gives them: palette expanded (its tRNS as alpha), grey below 8 bits
// scaled to 8, 16-bit samples kept (big-endian) so that section 2's 16-bit rules can be applied.
struct Raw {
  png_uint_32 width = 0, height = 0;
  int channels = 0, depth = 0, colour_type = 0;
  std::vector<uint8_t> data;
  std::vector<uint8_t> exif;      // an eXIf chunk: TIFF-structured EXIF
  std::string exif_profile, xmp;  // text chunks "Raw profile type exif" (hex) and "XML:com.adobe.xmp"
  std::vector<png_bytep> rows;
  char why[200] = "";
};

inline void on_error(png_structp png, png_const_charp message) {
  auto* raw = static_cast<Raw*>(png_get_error_ptr(png));
  std::snprintf(raw->why, sizeof raw->why, "%s", message);
  png_longjmp(png, 1);
}

inline void on_warning(png_structp, png_const_charp) {}

// The orientation sources of chunks before or after the image data (the first of each kind counts).
inline void keep_metadata(png_structp png, png_infop info, Raw& raw) {
  png_uint_32 n = 0;
  png_bytep exif = nullptr;
  if (raw.exif.empty() && png_get_eXIf_1(png, info, &n, &exif) && n) raw.exif.assign(exif, exif + n);
  png_textp text = nullptr;
  int count = 0;
  png_get_text(png, info, &text, &count);
  for (int i = 0; i < count; ++i) {
    const size_t len = text[i].compression >= PNG_ITXT_COMPRESSION_NONE ? text[i].itxt_length : text[i].text_length;
    std::string* into = !std::strcmp(text[i].key, "XML:com.adobe.xmp")       ? &raw.xmp
                        : !std::strcmp(text[i].key, "Raw profile type exif") ? &raw.exif_profile
                                                                             : nullptr;
    if (into && into->empty()) into->assign(text[i].text, len);
  }
}

// No automatic object with a destructor lives in this frame: libpng's errors longjmp out of it.
inline bool decode(std::FILE* f, Raw& raw, png_structp png, png_infop info, png_infop end) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_init_io(png, f);
  png_read_info(png, info);
  raw.width = png_get_image_width(png, info);
  raw.height = png_get_image_height(png, info);
  raw.depth = png_get_bit_depth(png, info);
  raw.colour_type = png_get_color_type(png, info);
  if (raw.colour_type == PNG_COLOR_TYPE_PALETTE) {
    png_set_palette_to_rgb(png);
    if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);  // a palette's tRNS is alpha
  } else if (raw.depth < 8) {
    png_set_expand_gray_1_2_4_to_8(png);  // 1/2/4-bit grey scaled to 0..255 (x255, x85, x17)
  }
  // a grey or RGB file's tRNS (one transparent colour) is ignored, as Pillow's reader leaves it aside
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  raw.channels = png_get_channels(png, info);
  raw.depth = png_get_bit_depth(png, info);
  const size_t row = png_get_rowbytes(png, info);
  raw.data.resize(row * raw.height);
  raw.rows.resize(raw.height);
  for (png_uint_32 y = 0; y < raw.height; ++y) raw.rows[y] = raw.data.data() + y * row;
  png_read_image(png, raw.rows.data());
  keep_metadata(png, info, raw);
  png_read_end(png, end);  // chunks after the image data count too
  keep_metadata(png, end, raw);
  return true;
}

inline Raw read_raw(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error(path + ": cannot open it");
  uint8_t signature[8] = {};
  if (std::fread(signature, 1, 8, f) != 8 || png_sig_cmp(signature, 0, 8)) {
    std::fclose(f);
    throw std::runtime_error(path + ": not a readable PNG (no PNG signature)");
  }
  Raw raw;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &raw, on_error, on_warning);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  png_infop end = info ? png_create_info_struct(png) : nullptr;
  if (end) png_set_sig_bytes(png, 8);
  const bool ok = end && decode(f, raw, png, info, end);
  png_destroy_read_struct(&png, &info, &end);
  std::fclose(f);
  if (!ok) throw std::runtime_error(path + ": not a readable PNG (" + raw.why + ")");
  return raw;
}

// 16 bits to 8, as the Python reader (Pillow) does: grey without alpha is rounded, round(v * 255 / 65535)
// = (v + 128) / 257; every other 16-bit sample (RGB, RGBA, grey + alpha) keeps its high byte.
inline std::vector<uint8_t> to_8bit(const Raw& raw) {
  if (raw.depth == 8) return raw.data;
  const size_t n = raw.data.size() / 2;
  const bool rounded = raw.channels == 1;
  std::vector<uint8_t> out(n);
  for (size_t i = 0; i < n; ++i) {
    const unsigned v = unsigned(raw.data[2 * i]) << 8 | raw.data[2 * i + 1];
    out[i] = static_cast<uint8_t>(rounded ? (v + 128) / 257 : v >> 8);
  }
  return out;
}

// EXIF Orientation (tag 0x0112) of TIFF-structured EXIF data, 0 when absent or unreadable.
inline int exif_orientation(const std::vector<uint8_t>& e) {
  if (e.size() < 8 || !((e[0] == 'I' && e[1] == 'I') || (e[0] == 'M' && e[1] == 'M'))) return 0;
  const bool big = e[0] == 'M';
  auto u16 = [&](size_t at) { return big ? unsigned(e[at]) << 8 | e[at + 1] : unsigned(e[at + 1]) << 8 | e[at]; };
  auto u32 = [&](size_t at) { return big ? (size_t(u16(at)) << 16 | u16(at + 2)) : (size_t(u16(at + 2)) << 16 | u16(at)); };
  const size_t ifd = u32(4);
  if (ifd + 2 > e.size()) return 0;
  const unsigned count = u16(ifd);
  for (unsigned k = 0; k < count && ifd + 2 + 12 * (k + 1) <= e.size(); ++k) {
    const size_t at = ifd + 2 + 12 * k;
    if (u16(at) == 0x0112 && u16(at + 2) == 3) return int(u16(at + 8));  // SHORT: in the entry's first 2 bytes
  }
  return 0;
}

// ImageMagick's hex profile: a blank line, "exif", the length, then hex digits; "Exif\0\0" may lead.
inline std::vector<uint8_t> unhex_profile(const std::string& text) {
  size_t at = 0;
  for (int line = 0; line < 3; ++line) {
    at = text.find('\n', at);
    if (at == std::string::npos) return {};
    ++at;
  }
  std::vector<uint8_t> out;
  int high = -1;
  for (size_t i = at; i < text.size(); ++i) {
    const unsigned char ch = text[i];
    const int v = std::isdigit(ch) ? ch - '0' : std::isxdigit(ch) ? std::tolower(ch) - 'a' + 10 : -1;
    if (v < 0) continue;
    if (high < 0) high = v; else out.push_back(uint8_t(high << 4 | v)), high = -1;
  }
  if (out.size() >= 6 && !std::memcmp(out.data(), "Exif\0\0", 6)) out.erase(out.begin(), out.begin() + 6);
  return out;
}

// The orientation Pillow's exif_transpose applies: the eXIf chunk's (else the hex profile's) EXIF tag;
// without that tag, an XMP packet's first tiff:Orientation="N" or tiff:Orientation>N.
inline int orientation(const Raw& raw) {
  int o = raw.exif.empty() ? exif_orientation(unhex_profile(raw.exif_profile)) : exif_orientation(raw.exif);
  if (o) return o;
  const std::string tag = "tiff:Orientation";
  for (size_t at = raw.xmp.find(tag); at != std::string::npos; at = raw.xmp.find(tag, at + 1)) {
    size_t digit = at + tag.size();
    if (raw.xmp.compare(digit, 2, "=\"") == 0) digit += 2;
    else if (raw.xmp.compare(digit, 1, ">") == 0) digit += 1;
    else continue;
    if (digit < raw.xmp.size() && std::isdigit(static_cast<unsigned char>(raw.xmp[digit]))) return raw.xmp[digit] - '0';
  }
  return 0;
}

// The image as displayed: EXIF orientations 2-8 (flips, rotations, transpositions), as Pillow's exif_transpose;
// any other value leaves it as stored.
inline Image8 orient(const Image8& in, int orientation) {
  if (orientation < 2 || orientation > 8) return in;
  const int h = in.height, w = in.width, c = in.channels;
  const bool swap = orientation >= 5;
  Image8 out{swap ? w : h, swap ? h : w, c, std::vector<uint8_t>(in.pixels.size())};
  for (int i = 0; i < out.height; ++i)
    for (int j = 0; j < out.width; ++j) {
      int y = i, x = j;  // the stored pixel shown at (i, j)
      switch (orientation) {
        case 2: x = w - 1 - j; break;                    // mirrored left-right
        case 3: y = h - 1 - i, x = w - 1 - j; break;     // rotated 180
        case 4: y = h - 1 - i; break;                    // mirrored top-bottom
        case 5: y = j, x = i; break;                     // transposed
        case 6: y = h - 1 - j, x = i; break;             // rotate 90 clockwise to display
        case 7: y = h - 1 - j, x = w - 1 - i; break;     // transversed
        case 8: y = j, x = w - 1 - i; break;             // rotate 90 counter-clockwise to display
      }
      std::memcpy(&out.pixels[(size_t(i) * out.width + j) * c], &in.pixels[(size_t(y) * w + x) * c], c);
    }
  return out;
}

inline uint8_t luma(const uint8_t* p) {  // ITU-R 601, exactly as Pillow's convert("L")
  return static_cast<uint8_t>((p[0] * 19595u + p[1] * 38470u + p[2] * 7471u + 0x8000u) >> 16);
}

}  // namespace png_detail

// Reads a PNG and shapes it for a `channels`-channel model (docs/contract.md section 2).
inline Picture read_png(const std::string& path, int channels) {
  const png_detail::Raw raw = png_detail::read_raw(path);
  const int c = raw.channels;
  Image8 stored{int(raw.height), int(raw.width), c, png_detail::to_8bit(raw)};
  const Image8 shown = png_detail::orient(stored, png_detail::orientation(raw));
  const size_t n = size_t(shown.height) * shown.width;
  Picture out;
  out.image = {shown.height, shown.width, channels, std::vector<uint8_t>(n * channels)};
  const bool grey = c <= 2, has_alpha = c == 2 || c == 4;
  if (has_alpha) out.alpha.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* p = &shown.pixels[i * c];
    if (has_alpha) out.alpha[i] = p[c - 1];
    uint8_t* q = &out.image.pixels[i * channels];
    if (channels == 3 && grey) q[0] = q[1] = q[2] = p[0];
    else if (channels == 3) std::memcpy(q, p, 3);
    else q[0] = grey ? p[0] : png_detail::luma(p);
  }
  return out;
}

namespace png_detail {

inline double bicubic(double x) {  // Pillow's cubic convolution kernel, a = -0.5
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

constexpr int kPrecision = 22;  // Pillow's fixed-point bits for 8-bit images (32 - 8 - 2)

// One axis of Pillow's resample: for each output index, its first input index and fixed-point weights.
struct Taps {
  std::vector<int> first, count;
  std::vector<std::vector<int32_t>> k;
};

inline Taps taps(int in, int out) {
  const double scale = double(in) / out, filterscale = std::max(scale, 1.0), support = 2.0 * filterscale;
  Taps t;
  for (int xx = 0; xx < out; ++xx) {
    const double center = (xx + 0.5) * scale;
    const int xmin = std::max(int(center - support + 0.5), 0);
    const int xmax = std::min(int(center + support + 0.5), in) - xmin;
    std::vector<double> w(xmax);
    double sum = 0;
    for (int x = 0; x < xmax; ++x) sum += w[x] = bicubic((x + xmin - center + 0.5) / filterscale);
    std::vector<int32_t> k(xmax);
    for (int x = 0; x < xmax; ++x) {
      const double v = (sum != 0 ? w[x] / sum : w[x]) * (1 << kPrecision);
      k[x] = static_cast<int32_t>(v < 0 ? -0.5 + v : 0.5 + v);  // rounded away from zero
    }
    t.first.push_back(xmin), t.count.push_back(xmax), t.k.push_back(std::move(k));
  }
  return t;
}

inline uint8_t clip8(int64_t v) {  // v includes the half added before the shift
  if (v >= (int64_t(1) << kPrecision << 8)) return 255;
  if (v <= 0) return 0;
  return static_cast<uint8_t>(v >> kPrecision);
}

}  // namespace png_detail

// An 8-bit plane resized as Pillow's Image.resize(..., BICUBIC): horizontal pass, then vertical, each in
// integer fixed point, rounded and clipped to 0..255 (the intermediate image is 8-bit too).
inline std::vector<uint8_t> resize_bicubic(const std::vector<uint8_t>& in, int h, int w, int oh, int ow) {
  using namespace png_detail;
  const Taps tx = taps(w, ow), ty = taps(h, oh);
  std::vector<uint8_t> mid(size_t(h) * ow), out(size_t(oh) * ow);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < ow; ++x) {
      int64_t s = 1 << (kPrecision - 1);
      for (int k = 0; k < tx.count[x]; ++k) s += int64_t(in[size_t(y) * w + tx.first[x] + k]) * tx.k[x][k];
      mid[size_t(y) * ow + x] = clip8(s);
    }
  for (int y = 0; y < oh; ++y)
    for (int x = 0; x < ow; ++x) {
      int64_t s = 1 << (kPrecision - 1);
      for (int k = 0; k < ty.count[y]; ++k) s += int64_t(mid[size_t(ty.first[y] + k) * ow + x]) * ty.k[y][k];
      out[size_t(y) * ow + x] = clip8(s);
    }
  return out;
}

// Writes to a temporary file beside `path`, then renames it: never a half-written file. `alpha` (empty,
// or the output's size) becomes the file's alpha channel.
inline void write_png(const std::string& path, const Image8& img, const std::vector<uint8_t>& alpha = {}) {
  Image8 out = img;
  if (!alpha.empty()) {
    const int c = img.channels;
    out.channels = c + 1;
    out.pixels.resize(size_t(img.height) * img.width * out.channels);
    for (size_t i = 0; i < size_t(img.height) * img.width; ++i) {
      std::memcpy(&out.pixels[i * (c + 1)], &img.pixels[i * c], c);
      out.pixels[i * (c + 1) + c] = alpha[i];
    }
  }
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(out.width);
  image.height = static_cast<png_uint_32>(out.height);
  const png_uint_32 formats[] = {PNG_FORMAT_GRAY, PNG_FORMAT_GA, PNG_FORMAT_RGB, PNG_FORMAT_RGBA};
  image.format = formats[out.channels - 1];
  std::string tmp = path + ".tmp-nsr";
  if (!png_image_write_to_file(&image, tmp.c_str(), 0, out.pixels.data(), 0, nullptr)) {
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": cannot write (" + image.message + ")");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": cannot write");
  }
}
