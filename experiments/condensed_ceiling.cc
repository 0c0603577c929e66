// A hand-written constant fan-in forward pass, timed as a bound on what condensed kernels can gain on a CPU:
//   y[b, o] = sum_j x[b, idx[o, j]] * values[o, j]        (Lasby et al. 2023, the "condensed" linear layer).
// Built with the machine's g++ and timed by experiments/condensed_ceiling.py; not part of the library.
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

namespace {

constexpr int64_t kLanes = 16;  // floats per vector; GCC lowers the vector type below to the widest the CPU has
typedef float Vector __attribute__((vector_size(kLanes * sizeof(float)), aligned(4)));

// Batches that are not a multiple of kLanes (acting): per example and output, gather its k kept inputs.
void gather_forward(const float* x, const float* values, const int32_t* idx, float* y, int64_t batch, int64_t in,
                    int64_t out, int64_t k, int64_t first_output, int64_t last_output) {
  for (int64_t b = 0; b < batch; ++b) {
    const float* example = x + b * in;
    for (int64_t o = first_output; o < last_output; ++o) {
      const int32_t* kept = idx + o * k;
      const float* weight = values + o * k;
      float sum = 0.f;
      for (int64_t j = 0; j < k; ++j) sum += example[kept[j]] * weight[j];
      y[b * out + o] = sum;
    }
  }
}

// `outputs` neurons o.. of one tile of kLanes examples: tile [in][kLanes] is x^T for those examples (32 KB for
// in = 512, so it stays in L1), and every kept connection adds one vector of it, scaled, into a register.
template <int64_t outputs>
void tile_outputs(const float* __restrict tile, const float* __restrict values, const int32_t* __restrict idx,
                  float* __restrict tile_y, int64_t k, int64_t o) {
  Vector sum[outputs] = {};
  for (int64_t j = 0; j < k; ++j)
    for (int64_t q = 0; q < outputs; ++q)
      sum[q] += values[(o + q) * k + j] * *reinterpret_cast<const Vector*>(tile + int64_t(idx[(o + q) * k + j]) * kLanes);
  for (int64_t q = 0; q < outputs; ++q) *reinterpret_cast<Vector*>(tile_y + (o + q) * kLanes) = sum[q];
}

// Tiles [first_tile, last_tile) of a batch that is a multiple of kLanes: transpose x into the tile, run every
// output four at a time (four independent accumulators), transpose the outputs back into y.
void tile_forward(const float* x, const float* values, const int32_t* idx, float* y, int64_t in, int64_t out,
                  int64_t k, int64_t first_tile, int64_t last_tile, float* tile, float* tile_y) {
  for (int64_t t = first_tile; t < last_tile; ++t) {
    const float* examples = x + t * kLanes * in;
    for (int64_t lane = 0; lane < kLanes; ++lane)
      for (int64_t i = 0; i < in; ++i) tile[i * kLanes + lane] = examples[lane * in + i];
    int64_t o = 0;
    for (; o + 4 <= out; o += 4) tile_outputs<4>(tile, values, idx, tile_y, k, o);
    for (; o < out; ++o) tile_outputs<1>(tile, values, idx, tile_y, k, o);
    float* outputs = y + t * kLanes * out;
    for (int64_t lane = 0; lane < kLanes; ++lane)
      for (int64_t o2 = 0; o2 < out; ++o2) outputs[lane * out + o2] = tile_y[o2 * kLanes + lane];
  }
}

}  // namespace

// Runs the forward pass `repeats` times on `threads` threads and returns the mean nanoseconds per pass. The
// threads split the tiles (or, below kLanes-multiples, the outputs), start once and run all their passes
// without waiting for each other: no thread start or barrier per pass, which favours this kernel.
extern "C" double condensed_forward_ns(const float* x, const float* values, const int32_t* idx, float* y,
                                       int64_t batch, int64_t in, int64_t out, int64_t k, int64_t repeats,
                                       int64_t threads) {
  const bool tiled = batch % kLanes == 0;
  const int64_t parts = tiled ? batch / kLanes : out;
  auto work = [&](int64_t thread) {
    const int64_t first = parts * thread / threads, last = parts * (thread + 1) / threads;
    std::vector<float> tile(tiled ? in * kLanes : 0), tile_y(tiled ? out * kLanes : 0);
    for (int64_t repeat = 0; repeat < repeats; ++repeat) {
      if (tiled) tile_forward(x, values, idx, y, in, out, k, first, last, tile.data(), tile_y.data());
      else gather_forward(x, values, idx, y, batch, in, out, k, first, last);
    }
  };
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> workers;
  for (int64_t thread = 1; thread < threads; ++thread) workers.emplace_back(work, thread);
  work(0);
  for (auto& worker : workers) worker.join();
  return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count() / repeats;
}
