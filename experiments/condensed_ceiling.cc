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

// Batches that are not a multiple of kLanes: per example and output, gather its k kept inputs.
void gather_forward(const float* x, const float* values, const int32_t* idx, float* y, int64_t batch, int64_t in,
                    int64_t out, int64_t k, int64_t first, int64_t last) {
  for (int64_t b = 0; b < batch; ++b) {
    const float* example = x + b * in;
    for (int64_t o = first; o < last; ++o) {
      const int32_t* kept = idx + o * k;
      const float* weight = values + o * k;
      float sum = 0.f;
      for (int64_t j = 0; j < k; ++j) sum += example[kept[j]] * weight[j];
      y[b * out + o] = sum;
    }
  }
}

// Multiples of kLanes, on x^T [in, batch]: y^T[o] = sum_j values[o, j] * x^T[idx[o, j]], `vectors` x kLanes batch
// entries at once in registers (whole contiguous rows of x^T, so every multiply-add is a vector one).
template <int64_t vectors>
void row_forward(const float* __restrict transposed, const float* __restrict values, const int32_t* __restrict idx,
                 float* __restrict transposed_y, int64_t batch, int64_t k, int64_t b0, int64_t first, int64_t last) {
  for (int64_t o = first; o < last; ++o) {
    Vector sum[vectors] = {};
    const int32_t* kept = idx + o * k;
    const float* weight = values + o * k;
    for (int64_t j = 0; j < k; ++j) {
      const Vector* row = reinterpret_cast<const Vector*>(transposed + int64_t(kept[j]) * batch + b0);
      for (int64_t v = 0; v < vectors; ++v) sum[v] += weight[j] * row[v];
    }
    Vector* row_out = reinterpret_cast<Vector*>(transposed_y + o * batch + b0);
    for (int64_t v = 0; v < vectors; ++v) row_out[v] = sum[v];
  }
}

void rows_forward(const float* transposed, const float* values, const int32_t* idx, float* transposed_y,
                  int64_t batch, int64_t k, int64_t first, int64_t last) {
  int64_t b0 = 0;
  for (; b0 + 4 * kLanes <= batch; b0 += 4 * kLanes) row_forward<4>(transposed, values, idx, transposed_y, batch, k, b0, first, last);
  for (; b0 < batch; b0 += kLanes) row_forward<1>(transposed, values, idx, transposed_y, batch, k, b0, first, last);
}

// In tiles of kLanes x kLanes, so that reads and writes both stay within a few cache lines.
void transpose(const float* from, float* to, int64_t rows, int64_t columns) {
  for (int64_t r0 = 0; r0 < rows; r0 += kLanes)
    for (int64_t c0 = 0; c0 < columns; c0 += kLanes)
      for (int64_t r = r0; r < r0 + kLanes && r < rows; ++r)
        for (int64_t c = c0; c < c0 + kLanes && c < columns; ++c) to[c * rows + r] = from[r * columns + c];
}

}  // namespace

// Runs the forward pass `repeats` times, its outputs split over `threads` threads, and returns the mean
// nanoseconds per pass (the transposes of x and y included, thread start-up included).
extern "C" double condensed_forward_ns(const float* x, const float* values, const int32_t* idx, float* y,
                                       int64_t batch, int64_t in, int64_t out, int64_t k, int64_t repeats,
                                       int64_t threads) {
  const bool rows = batch % kLanes == 0;
  std::vector<float> transposed(rows ? in * batch : 0), transposed_y(rows ? out * batch : 0);
  auto part = [&](int64_t t) {
    const int64_t first = out * t / threads, last = out * (t + 1) / threads;
    if (rows) rows_forward(transposed.data(), values, idx, transposed_y.data(), batch, k, first, last);
    else gather_forward(x, values, idx, y, batch, in, out, k, first, last);
  };
  const auto start = std::chrono::steady_clock::now();
  for (int64_t repeat = 0; repeat < repeats; ++repeat) {
    if (rows) transpose(x, transposed.data(), batch, in);
    std::vector<std::thread> workers;
    for (int64_t t = 1; t < threads; ++t) workers.emplace_back(part, t);
    part(0);
    for (auto& worker : workers) worker.join();
    if (rows) transpose(transposed_y.data(), y, out, batch);
  }
  return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count() / repeats;
}
