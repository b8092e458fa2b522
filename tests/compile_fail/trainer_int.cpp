// Must not compile: int is not an igrad::ErrorFunction. The build's message must name the concept.
#include <igrad/igrad.hpp>

int main() {
  igrad::Trainer<int, igrad::GuidedReLU>* trainer = nullptr;
  (void)trainer;
}
