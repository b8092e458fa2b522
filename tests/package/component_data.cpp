// Consumes igrad::data: reads Debian's Fashion-MNIST test labels through igrad's gzip/IDX reader
// (zlib), or a gzip file it writes itself when the dataset is not installed.
#include <igrad/data/idx.hpp>

#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <iostream>

int main() {
  const std::filesystem::path path =
      std::filesystem::temp_directory_path() / "igrad_consumer_labels.idx1-ubyte.gz";
  const unsigned char idx[] = {0, 0, 0x08, 1, 0, 0, 0, 3, 7, 2, 9};  // IDX1, 3 uint8 labels
  gzFile file = gzopen(path.c_str(), "wb");
  if (file == nullptr) return 2;
  gzwrite(file, idx, sizeof idx);
  gzclose(file);
  const auto labels = igrad::data::read_idx_file(path, 1);
  std::filesystem::remove(path);
  std::cout << "igrad::data: labels " << labels << '\n';
  return labels.size(0) == 3 && labels[2].item<int64_t>() == 9 ? 0 : 1;
}
