// Consumes igrad::viz: writes a PNG through stb and checks its signature.
#include <igrad/viz/figure.hpp>

#include <filesystem>
#include <fstream>
#include <iostream>

int main() {
  const auto path = (std::filesystem::temp_directory_path() / "igrad_consumer.png").string();
  igrad::write_png(path, torch::full({4, 6, 3}, 200, torch::kUInt8));
  std::ifstream in(path, std::ios::binary);
  char signature[8] = {};
  in.read(signature, 8);
  std::filesystem::remove(path);
  std::cout << "igrad::viz: wrote a PNG\n";
  return in && signature[1] == 'P' && signature[2] == 'N' && signature[3] == 'G' ? 0 : 1;
}
