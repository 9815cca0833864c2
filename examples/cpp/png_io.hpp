// PNG in and out through libpng's simplified API, 8 bits per sample.
#pragma once
#include <png.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

struct Image8 {
  int height = 0, width = 0, channels = 0;  // channels: 1 (grey) or 3 (RGB)
  std::vector<uint8_t> pixels;              // row-major, interleaved (HxWxC)
};

// Reads any PNG as RGBA and shapes it for a `channels`-channel model per docs/contract.md section 2:
// grey files expand to RGB; colour becomes luma as Pillow computes it; alpha is dropped.
inline Image8 read_png(const std::string& path, int channels) {
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&image, path.c_str()))
    throw std::runtime_error(path + ": not a readable PNG (" + image.message + ")");
  image.format = PNG_FORMAT_RGBA;
  std::vector<uint8_t> rgba(PNG_IMAGE_SIZE(image));
  if (!png_image_finish_read(&image, nullptr, rgba.data(), 0, nullptr))
    throw std::runtime_error(path + ": cannot decode (" + image.message + ")");
  Image8 out;
  out.height = static_cast<int>(image.height);
  out.width = static_cast<int>(image.width);
  out.channels = channels;
  size_t n = static_cast<size_t>(out.height) * out.width;
  out.pixels.resize(n * channels);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* p = &rgba[4 * i];
    if (channels == 3) {
      std::memcpy(&out.pixels[3 * i], p, 3);
    } else {
      out.pixels[i] = static_cast<uint8_t>((p[0] * 19595u + p[1] * 38470u + p[2] * 7471u + 0x8000u) >> 16);
    }
  }
  return out;
}

// Writes to a temporary file beside `path`, then renames it: never a half-written file.
inline void write_png(const std::string& path, const Image8& img) {
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(img.width);
  image.height = static_cast<png_uint_32>(img.height);
  image.format = img.channels == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
  std::string tmp = path + ".tmp-nsr";
  if (!png_image_write_to_file(&image, tmp.c_str(), 0, img.pixels.data(), 0, nullptr)) {
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": cannot write (" + image.message + ")");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": cannot write");
  }
}
