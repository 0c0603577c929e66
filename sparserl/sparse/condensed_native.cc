// Native condensed kernels for XLA:CPU (XLA FFI custom calls), built by sparserl/sparse/condensed_native.py.
//
// A kernel W [in, out] is used through its kept inputs idx, out * k slots (an [out, k] buffer read flat), and
// offsets [out + 1]: neuron o keeps the slots s in [offsets[o], offsets[o + 1]) (Lasby et al. 2023, section 3.1;
// constant fan-in k: offsets[o] = o * k; SRigL's ablation: k' slots per active neuron, none per ablated one):
//   forward   y[b, o]            = sum_{s of o} x[b, idx[s]] * W[idx[s], o]
//   backward  dx[b, i]           = sum_{(o, s of o): idx[s] = i} W[i, o] * dy[b, o]
//             dW[idx[s], o]      = sum_b x[b, idx[s]] * dy[b, o]            (0 off the indices)
// The slots from offsets[out] on belong to no neuron: their values and value gradients are 0. An empty offsets
// operand means constant fan-in (no array to read, no XLA op to make it).
// Every buffer may carry leading seed axes (jax.vmap, vmap_method="broadcast_all"); f32 and s32 only.
//
// The batch is cut into tiles of kLanes examples. A tile of x is transposed into [in][kLanes] (32 KB for
// in = 512, so it stays in L1), and every kept connection adds one vector of it, scaled, into a register.
// Work is split over (seed, tile), (seed, part of the batch) or (seed, output block) and shared with XLA's
// intra-op thread pool.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kLanes = 16;  // floats per vector; GCC lowers the vector type to the widest the CPU has
typedef float Vector __attribute__((vector_size(kLanes * sizeof(float)), aligned(4)));
constexpr int64_t kOutputBlock = 64;  // output neurons per task where the work is split by outputs

// Runs first(i) for i in [0, first_count), then second(i) for i in [0, second_count), on the calling thread and
// on the pool's threads, which are scheduled once per call (one can take some 100 us to start). Tasks are
// claimed from atomic counters, so nobody waits for a thread that has not started: the caller runs every
// unclaimed task itself, and between the phases everyone waits only for first-phase tasks already running (no
// deadlock when the pool is busy, for example with another of these calls). A pool thread that starts late
// finds fewer tasks, or none, and then never touches `first` or `second`.
template <typename First, typename Second>
void TwoPhases(ffi::ThreadPool& pool, int64_t first_count, const First& first, int64_t second_count,
               const Second& second) {
  struct Progress {
    std::atomic<int64_t> first_next{0}, first_done{0}, second_next{0}, second_done{0};
  };
  auto progress = std::make_shared<Progress>();
  const First* first_task = &first;  // dereferenced only for a claimed task, i.e. before the caller returns
  const Second* second_task = &second;
  auto work = [progress, first_count, second_count, first_task, second_task]() {
    for (int64_t i = progress->first_next.fetch_add(1); i < first_count; i = progress->first_next.fetch_add(1)) {
      (*first_task)(i);
      progress->first_done.fetch_add(1, std::memory_order_release);
    }
    while (progress->first_done.load(std::memory_order_acquire) < first_count) std::this_thread::yield();
    for (int64_t i = progress->second_next.fetch_add(1); i < second_count; i = progress->second_next.fetch_add(1)) {
      (*second_task)(i);
      progress->second_done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), std::max(first_count, second_count)) - 1;
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([work]() { work(); });  // the caller is a worker too
  work();
  while (progress->second_done.load(std::memory_order_acquire) < second_count) std::this_thread::yield();
}

struct Dims {
  int64_t seeds, batch, in, out, k;
  int64_t tiles() const { return (batch + kLanes - 1) / kLanes; }
  int64_t output_blocks() const { return (out + kOutputBlock - 1) / kOutputBlock; }
  int64_t slots() const { return out * k; }
};

Dims DimsOf(ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::S32>& idx) {
  auto x_dims = x.dimensions(), idx_dims = idx.dimensions();
  const size_t rank = x_dims.size();
  Dims dims{1, x_dims[rank - 2], x_dims[rank - 1], idx_dims[rank - 2], idx_dims[rank - 1]};
  for (size_t axis = 0; axis + 2 < rank; ++axis) dims.seeds *= x_dims[axis];
  return dims;
}

// tile[i][lane] = rows[first + lane][i] for the lanes inside the batch, 0 beyond it.
void TransposeIn(const float* rows, int64_t width, int64_t batch, int64_t first, float* tile) {
  const int64_t lanes = std::min(kLanes, batch - first);
  for (int64_t i = 0; i < width; ++i) {
    float* out = tile + i * kLanes;
    for (int64_t lane = 0; lane < lanes; ++lane) out[lane] = rows[(first + lane) * width + i];
    for (int64_t lane = lanes; lane < kLanes; ++lane) out[lane] = 0.f;
  }
}

// rows[first + lane][i] = tile[i][lane] for the lanes inside the batch.
void TransposeOut(const float* tile, int64_t width, int64_t batch, int64_t first, float* rows) {
  const int64_t lanes = std::min(kLanes, batch - first);
  for (int64_t lane = 0; lane < lanes; ++lane)
    for (int64_t i = 0; i < width; ++i) rows[(first + lane) * width + i] = tile[i * kLanes + lane];
}

// The sum of a vector's lanes as a tree of halves (a scalar loop over the lanes is a 16-add dependency chain).
float SumOfLanes(Vector v) {
  typedef float Half __attribute__((vector_size(kLanes / 2 * sizeof(float))));
  typedef float Quarter __attribute__((vector_size(kLanes / 4 * sizeof(float))));
  const Half half = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                    __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const Quarter quarter = __builtin_shufflevector(half, half, 0, 1, 2, 3) + __builtin_shufflevector(half, half, 4, 5, 6, 7);
  return (quarter[0] + quarter[2]) + (quarter[1] + quarter[3]);
}

// totals[lane] = SumOfLanes(sums[lane]) for 16 vectors at once: four rounds that each add the two halves of every
// pair of vectors' lane groups into one vector (15 shuffle pairs and adds, against 16 separate trees of 4). Each
// round pairs vectors whose positions differ in the highest remaining bit, taken in bit-reversed order, so that
// lane l of the result holds vector l's sum.
Vector SumsOfLanes(const Vector (&sums)[kLanes]) {
  static_assert(kLanes == 16, "the rounds below are written for 16 lanes");
  Vector halves[8], quarters[4], eighths[2];
  static constexpr int kReversed[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
  for (int p = 0; p < 8; ++p) {
    const Vector a = sums[kReversed[2 * p]], b = sums[kReversed[2 * p + 1]];
    halves[p] = __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
                __builtin_shufflevector(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  }
  for (int p = 0; p < 4; ++p) {
    const Vector a = halves[2 * p], b = halves[2 * p + 1];
    quarters[p] = __builtin_shufflevector(a, b, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27) +
                  __builtin_shufflevector(a, b, 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
  }
  for (int p = 0; p < 2; ++p) {
    const Vector a = quarters[2 * p], b = quarters[2 * p + 1];
    eighths[p] = __builtin_shufflevector(a, b, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
                 __builtin_shufflevector(a, b, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
  }
  const Vector a = eighths[0], b = eighths[1];
  return __builtin_shufflevector(a, b, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) +
         __builtin_shufflevector(a, b, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
}

const Vector& RowOf(const float* tile, int32_t i) { return *reinterpret_cast<const Vector*>(tile + int64_t(i) * kLanes); }
Vector& RowOf(float* tile, int32_t i) { return *reinterpret_cast<Vector*>(tile + int64_t(i) * kLanes); }

// y^T tile[o + q] = sum_j v[s + q k + j] x^T tile[idx[s + q k + j]], s = offsets[o], for `count` neighbouring
// outputs of k slots each: `count` independent accumulators in registers (four hide the latency of a vector
// multiply-add).
template <int64_t count>
void OutputsOfTile(const float* x_tile, const float* v, const int32_t* kept, int64_t k, int64_t s, int64_t o,
                   float* y_tile) {
  Vector sum[count] = {};
  for (int64_t j = 0; j < k; ++j)
    for (int64_t q = 0; q < count; ++q) sum[q] += v[s + q * k + j] * RowOf(x_tile, kept[s + q * k + j]);
  for (int64_t q = 0; q < count; ++q) RowOf(y_tile, o + q) = sum[q];
}

// The slots of one seed's neurons: o's are [begin(o), end(o)), from the offsets or, without them, o * k.
struct Neurons {
  const int32_t* offsets;  // nullptr: constant fan-in k
  int64_t k;
  int64_t begin(int64_t o) const { return offsets ? offsets[o] : o * k; }
  int64_t end(int64_t o) const { return begin(o + 1); }
  // True when outputs o .. o + 3 keep the same number of slots (always under constant fan-in).
  bool FourAlike(int64_t o) const {
    const int64_t count = end(o) - begin(o);
    return end(o + 1) - begin(o + 1) == count && end(o + 2) - begin(o + 2) == count &&
           end(o + 3) - begin(o + 3) == count;
  }
};

Neurons NeuronsOf(const Dims& d, const int32_t* offsets_data, int64_t seed) {
  return {offsets_data ? offsets_data + seed * (d.out + 1) : nullptr, d.k};
}

const int32_t* OffsetsOf(ffi::Buffer<ffi::S32>& offsets) {
  return offsets.element_count() ? offsets.typed_data() : nullptr;
}

// ---------------------------------------------------------------------------------------------------------------
// Forward: outputs y from the kept values [out, k], gathered from the dense kernel first (`Forward`: W gathered
// once, for the backward pass) or given (`ForwardKept`: the values are the trained state; kept-value training).

// visit(o, s) for every slot s of the outputs [first, first + kOutputBlock) of one seed, the j-th slots of all
// of them before the (j + 1)-th: the j-th kept inputs of neighbouring outputs lie in nearby rows of W.
template <typename Visit>
void SlotsOfBlock(const Dims& d, const Neurons& n, int64_t first, const Visit& visit) {
  const int64_t last = std::min(first + kOutputBlock, d.out);
  if (!n.offsets) {  // constant fan-in, without the per-slot test: Scatter runs this every kept-value step
    for (int64_t j = 0; j < d.k; ++j)
      for (int64_t o = first; o < last; ++o) visit(o, o * d.k + j);
    return;
  }
  int64_t most = 0;
  for (int64_t o = first; o < last; ++o) most = std::max<int64_t>(most, n.end(o) - n.begin(o));
  for (int64_t j = 0; j < most; ++j)
    for (int64_t o = first; o < last; ++o)
      if (n.begin(o) + j < n.end(o)) visit(o, n.begin(o) + j);
}

// The slots of no neuron, [offsets[out], out * k), set to 0 by the task of the last output block.
void ZeroUnusedSlots(const Dims& d, const Neurons& n, float* slots, int64_t first) {
  if (first + kOutputBlock < d.out) return;
  std::fill(slots + n.begin(d.out), slots + d.slots(), 0.f);
}

// values[s] = W[idx[s], o] for the slots s of the outputs [first, first + kOutputBlock) of one seed.
void GatherBlock(const Dims& d, const float* w_data, const int32_t* idx_data, const int32_t* offsets_data,
                 float* values_data, int64_t task) {
  const int64_t seed = task / d.output_blocks(), first = (task % d.output_blocks()) * kOutputBlock;
  const float* w = w_data + seed * d.in * d.out;
  const int32_t* kept = idx_data + seed * d.slots();
  const Neurons n = NeuronsOf(d, offsets_data, seed);
  float* v = values_data + seed * d.slots();
  SlotsOfBlock(d, n, first, [&](int64_t o, int64_t s) { v[s] = w[int64_t(kept[s]) * d.out + o]; });
  ZeroUnusedSlots(d, n, v, first);
}

// One (seed, tile) of y = x W restricted to the indices, from the kept values.
void TileOutputs(const Dims& d, const float* x_data, const float* values_data, const int32_t* idx_data,
                 const int32_t* offsets_data, float* scratch_data, float* y_data, int64_t task) {
  const int64_t seed = task / d.tiles(), first = (task % d.tiles()) * kLanes;
  const int32_t* kept = idx_data + seed * d.slots();
  const Neurons n = NeuronsOf(d, offsets_data, seed);
  const float* v = values_data + seed * d.slots();
  float* x_tile = scratch_data + task * (d.in + d.out) * kLanes;
  float* y_tile = x_tile + d.in * kLanes;
  TransposeIn(x_data + seed * d.batch * d.in, d.in, d.batch, first, x_tile);
  int64_t o = 0;
  while (o < d.out) {
    const int64_t k = n.end(o) - n.begin(o);
    if (o + 4 <= d.out && n.FourAlike(o)) {
      OutputsOfTile<4>(x_tile, v, kept, k, n.begin(o), o, y_tile);
      o += 4;
    } else {
      OutputsOfTile<1>(x_tile, v, kept, k, n.begin(o), o, y_tile);
      o += 1;
    }
  }
  TransposeOut(y_tile, d.out, d.batch, first, y_data + seed * d.batch * d.out);
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                   ffi::Buffer<ffi::S32> idx, ffi::Buffer<ffi::S32> offsets, ffi::ResultBuffer<ffi::F32> y,
                   ffi::ResultBuffer<ffi::F32> values, ffi::ResultBuffer<ffi::F32> scratch) {
  const Dims d = DimsOf(x, idx);
  float* values_data = values->typed_data();
  TwoPhases(
      pool, d.seeds * d.output_blocks(),
      [&](int64_t task) {
        GatherBlock(d, kernel.typed_data(), idx.typed_data(), OffsetsOf(offsets), values_data, task);
      },
      d.seeds * d.tiles(),
      [&](int64_t task) {
        TileOutputs(d, x.typed_data(), values_data, idx.typed_data(), OffsetsOf(offsets), scratch->typed_data(),
                    y->typed_data(), task);
      });
  return ffi::Error::Success();
}

ffi::Error ForwardKept(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> values,
                       ffi::Buffer<ffi::S32> idx, ffi::Buffer<ffi::S32> offsets, ffi::ResultBuffer<ffi::F32> y,
                       ffi::ResultBuffer<ffi::F32> scratch) {
  const Dims d = DimsOf(x, idx);
  TwoPhases(
      pool, 0, [](int64_t) {}, d.seeds * d.tiles(),
      [&](int64_t task) {
        TileOutputs(d, x.typed_data(), values.typed_data(), idx.typed_data(), OffsetsOf(offsets),
                    scratch->typed_data(), y->typed_data(), task);
      });
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------------------------------
// Backward: dx, the kernel gradient and scratch. The kernel gradient is dense-shaped (`Backward`: the kept
// entries, zeros elsewhere), the kept values' own slots (`BackwardKept`: dvalues[s] = dW[idx[s], o]), or not asked
// for (`BackwardInput`: dx alone, for values that are not differentiated, such as SAC's critics in its actor loss).

enum class KernelGradient { kDenseShaped, kKept, kNone };

template <KernelGradient kGradient>
ffi::Error BackwardOf(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> values,
                      ffi::Buffer<ffi::S32> idx, ffi::Buffer<ffi::S32> offsets, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dx, float* dkernel_data, ffi::ResultBuffer<ffi::F32> scratch) {
  constexpr bool kKeptGradient = kGradient == KernelGradient::kKept;
  const Dims d = DimsOf(x, idx);
  const float* x_data = x.typed_data();
  const float* values_data = values.typed_data();
  const int32_t* idx_data = idx.typed_data();
  const int32_t* offsets_data = OffsetsOf(offsets);
  const float* dy_data = dy.typed_data();
  float* dx_data = dx->typed_data();
  // Batches of 4 tiles or more per thread are cut into `parts` runs of whole tiles per seed, one task each: the
  // task also sums its own examples' kernel gradient, reading back only the x^T and dy^T lines its core wrote,
  // and the parts' sums are added at the end. (Whole-batch rows, written tile by tile by whichever core took the
  // tile, had each core read the others' lines: 1.1-1.6x slower at batch 128 and 256.) Smaller batches take one
  // task per tile and sum each slot over the whole batch (parts = 1).
  // Scratch, per seed: per part x^T [in][width] and dy^T [out][width] (width: its examples, padded to tiles),
  // then per tile the dx tile [in][kLanes] and the dy tile [out][kLanes].
  const int64_t parts = kGradient == KernelGradient::kNone
                            ? 1
                            : std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), d.tiles() / 4));
  const int64_t padded = d.tiles() * kLanes;
  const int64_t per_seed = (d.in + d.out) * padded + d.tiles() * (d.in + d.out) * kLanes;
  float* scratch_data = scratch->typed_data();
  thread_local std::vector<float> partial_store;  // [seeds][parts][slots], kept between calls
  if (parts > 1 || kGradient == KernelGradient::kDenseShaped) partial_store.resize(d.seeds * parts * d.slots());
  float* partials = partial_store.data();
  auto tiles_of_part = [&](int64_t part) {
    return std::make_pair(d.tiles() * part / parts, d.tiles() * (part + 1) / parts);
  };

  // One tile: dx^T[idx[s]] += W[idx[s], o] * dy^T[o] (a scatter-add into the L1 tile), the tile's columns of its
  // part's x^T and dy^T, and a slice of the kernel gradient's rows zeroed.
  auto tile_gradients = [&](int64_t seed, int64_t part, int64_t tile) {
    const auto [tile_first, tile_last] = tiles_of_part(part);
    const int64_t width = (tile_last - tile_first) * kLanes, first = tile * kLanes;
    const int64_t column = first - tile_first * kLanes;
    const int32_t* kept = idx_data + seed * d.slots();
    const Neurons n = NeuronsOf(d, offsets_data, seed);
    const float* v = values_data + seed * d.slots();
    float* x_rows = scratch_data + seed * per_seed + (d.in + d.out) * tile_first * kLanes;
    float* dy_rows = x_rows + d.in * width;
    // a part's tiles reuse its first tile's area, which stays in L1 and L2 from one tile to the next
    const int64_t area = parts > 1 ? tile_first : tile;
    float* dx_tile = scratch_data + seed * per_seed + (d.in + d.out) * (padded + area * kLanes);
    float* dy_tile = dx_tile + d.in * kLanes;
    TransposeIn(dy_data + seed * d.batch * d.out, d.out, d.batch, first, dy_tile);
    std::memset(dx_tile, 0, d.in * kLanes * sizeof(float));
    for (int64_t o = 0; o < d.out; ++o) {
      const Vector g = RowOf(static_cast<const float*>(dy_tile), o);
      for (int64_t s = n.begin(o); s < n.end(o); ++s) RowOf(dx_tile, kept[s]) += v[s] * g;
    }
    TransposeOut(dx_tile, d.in, d.batch, first, dx_data + seed * d.batch * d.in);
    if (kGradient == KernelGradient::kNone) return;
    float* x_tile = dx_tile;  // the dx tile is written out: reuse it for x's tile
    TransposeIn(x_data + seed * d.batch * d.in, d.in, d.batch, first, x_tile);
    for (int64_t i = 0; i < d.in; ++i) *reinterpret_cast<Vector*>(x_rows + i * width + column) = RowOf(x_tile, i);
    for (int64_t o = 0; o < d.out; ++o) *reinterpret_cast<Vector*>(dy_rows + o * width + column) = RowOf(dy_tile, o);
    if (kKeptGradient) return;
    const int64_t rows_first = d.in * tile / d.tiles(), rows_last = d.in * (tile + 1) / d.tiles();
    std::memset(dkernel_data + seed * d.in * d.out + rows_first * d.out, 0,
                (rows_last - rows_first) * d.out * sizeof(float));
  };
  // gradients[s] = <x^T[idx[s]], dy^T[o]> for one seed's slots s in [begin, end), of neurons from o on, the rows
  // holding `tiles` tiles of examples: 16 slots at a time, their sums' lanes added in one tree (`SumsOfLanes`).
  // (Inlined: called as a function, it ran 1.2-1.4x slower.)
  auto slot_gradients = [&](int64_t seed, const float* x_rows, int64_t tiles, int64_t begin, int64_t end, int64_t o,
                            float* gradients) __attribute__((always_inline)) {
    const int32_t* kept = idx_data + seed * d.slots();
    const Neurons n = NeuronsOf(d, offsets_data, seed);
    const int64_t width = tiles * kLanes;
    const float* dy_rows = x_rows + d.in * width;
    if (tiles < 4) {  // few products per slot: one tree per slot measured faster than the shared trees
      for (int64_t s = begin; s < end; ++s) {
        while (s >= n.end(o)) ++o;
        const Vector* row = reinterpret_cast<const Vector*>(x_rows + int64_t(kept[s]) * width);
        const Vector* g = reinterpret_cast<const Vector*>(dy_rows + o * width);
        Vector sum = {};
        for (int64_t t = 0; t < tiles; ++t) sum += row[t] * g[t];
        gradients[s] = SumOfLanes(sum);
      }
      return;
    }
    for (int64_t group = begin; group < end; group += kLanes) {
      const int64_t count = std::min(kLanes, end - group);
      Vector sums[kLanes];
      for (int64_t lane = 0; lane < count; ++lane) {
        const int64_t s = group + lane;
        while (s >= n.end(o)) ++o;  // past the neurons with no slots left
        const Vector* row = reinterpret_cast<const Vector*>(x_rows + int64_t(kept[s]) * width);
        const Vector* g = reinterpret_cast<const Vector*>(dy_rows + o * width);
        Vector sum = {};
        for (int64_t t = 0; t < tiles; ++t) sum += row[t] * g[t];
        sums[lane] = sum;
      }
      for (int64_t lane = count; lane < kLanes; ++lane) sums[lane] = Vector{};
      const Vector totals = SumsOfLanes(sums);
      for (int64_t lane = 0; lane < count; ++lane) gradients[group + lane] = totals[lane];
    }
  };
  // parts > 1: per (seed, part), its tiles, then its kernel gradient at every slot.
  auto part_gradients = [&](int64_t task) {
    const int64_t seed = task / parts, part = task % parts;
    const auto [tile_first, tile_last] = tiles_of_part(part);
    for (int64_t tile = tile_first; tile < tile_last; ++tile) tile_gradients(seed, part, tile);
    const Neurons n = NeuronsOf(d, offsets_data, seed);
    const float* x_rows = scratch_data + seed * per_seed + (d.in + d.out) * tile_first * kLanes;
    float* partial = partials + (seed * parts + part) * d.slots();
    slot_gradients(seed, x_rows, tile_last - tile_first, 0, n.begin(d.out), 0, partial);
  };
  // Per (seed, output block): the kernel gradient at the block's kept connections, the parts' sums added (or,
  // with one part, summed over the whole batch here).
  auto kernel_gradient = [&](int64_t task) {
    const int64_t seed = task / d.output_blocks(), first = (task % d.output_blocks()) * kOutputBlock;
    const int32_t* kept = idx_data + seed * d.slots();
    const Neurons n = NeuronsOf(d, offsets_data, seed);
    float* dw = dkernel_data + seed * (kKeptGradient ? d.slots() : d.in * d.out);
    const int64_t last = std::min(first + kOutputBlock, d.out);
    float* partial = partials + seed * parts * d.slots();
    if (parts == 1) {  // the sums over the whole batch: the kept gradient itself, or to be placed in the kernel's
      const float* x_rows = scratch_data + seed * per_seed;
      slot_gradients(seed, x_rows, d.tiles(), n.begin(first), n.begin(last), first, kKeptGradient ? dw : partial);
      if (kKeptGradient) return ZeroUnusedSlots(d, n, dw, first);
    }
    for (int64_t o = first; o < last; ++o)
      for (int64_t s = n.begin(o); s < n.end(o); ++s) {
        float sum = partial[s];
        for (int64_t p = 1; p < parts; ++p) sum += partial[p * d.slots() + s];
        dw[kKeptGradient ? s : int64_t(kept[s]) * d.out + o] = sum;
      }
    if (kKeptGradient) ZeroUnusedSlots(d, n, dw, first);
  };
  if (parts == 1)
    TwoPhases(
        pool, d.seeds * d.tiles(), [&](int64_t task) { tile_gradients(task / d.tiles(), 0, task % d.tiles()); },
        kGradient == KernelGradient::kNone ? 0 : d.seeds * d.output_blocks(), kernel_gradient);
  else
    TwoPhases(pool, d.seeds * parts, part_gradients, d.seeds * d.output_blocks(), kernel_gradient);
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> values,
                    ffi::Buffer<ffi::S32> idx, ffi::Buffer<ffi::S32> offsets, ffi::Buffer<ffi::F32> dy,
                    ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dkernel,
                    ffi::ResultBuffer<ffi::F32> scratch) {
  return BackwardOf<KernelGradient::kDenseShaped>(pool, x, values, idx, offsets, dy, dx, dkernel->typed_data(),
                                                 scratch);
}

ffi::Error BackwardKept(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> values,
                        ffi::Buffer<ffi::S32> idx, ffi::Buffer<ffi::S32> offsets, ffi::Buffer<ffi::F32> dy,
                        ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dvalues,
                        ffi::ResultBuffer<ffi::F32> scratch) {
  return BackwardOf<KernelGradient::kKept>(pool, x, values, idx, offsets, dy, dx, dvalues->typed_data(), scratch);
}

ffi::Error BackwardInput(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> values,
                         ffi::Buffer<ffi::S32> idx, ffi::Buffer<ffi::S32> offsets, ffi::Buffer<ffi::F32> dy,
                         ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> scratch) {
  return BackwardOf<KernelGradient::kNone>(pool, x, values, idx, offsets, dy, dx, nullptr, scratch);
}

// ---------------------------------------------------------------------------------------------------------------
// Between a dense kernel [in, out] and its kept values (out * k slots): `Gather` reads them (0 in the slots of no
// neuron), `Scatter` writes them into the kernel (its output aliases the kernel operand, so XLA hands it the
// kernel's own buffer when it can).

Dims KernelDims(ffi::Buffer<ffi::F32>& kernel, ffi::Buffer<ffi::S32>& idx) {
  auto kernel_dims = kernel.dimensions(), idx_dims = idx.dimensions();
  const size_t rank = kernel_dims.size();
  Dims dims{1, 0, kernel_dims[rank - 2], idx_dims[rank - 2], idx_dims[rank - 1]};
  for (size_t axis = 0; axis + 2 < rank; ++axis) dims.seeds *= kernel_dims[axis];
  return dims;
}

ffi::Error Gather(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::S32> idx,
                  ffi::Buffer<ffi::S32> offsets, ffi::ResultBuffer<ffi::F32> values) {
  const Dims d = KernelDims(kernel, idx);
  TwoPhases(
      pool, d.seeds * d.output_blocks(),
      [&](int64_t task) {
        GatherBlock(d, kernel.typed_data(), idx.typed_data(), OffsetsOf(offsets), values->typed_data(), task);
      },
      0, [](int64_t) {});
  return ffi::Error::Success();
}

ffi::Error Scatter(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::S32> idx,
                   ffi::Buffer<ffi::S32> offsets, ffi::Buffer<ffi::F32> values, ffi::ResultBuffer<ffi::F32> updated) {
  const Dims d = KernelDims(kernel, idx);
  float* out_data = updated->typed_data();
  if (out_data != kernel.typed_data()) std::memcpy(out_data, kernel.typed_data(), kernel.size_bytes());
  TwoPhases(
      pool, d.seeds * d.output_blocks(),
      [&](int64_t task) {
        const int64_t seed = task / d.output_blocks(), first = (task % d.output_blocks()) * kOutputBlock;
        float* w = out_data + seed * d.in * d.out;
        const int32_t* kept = idx.typed_data() + seed * d.slots();
        const float* v = values.typed_data() + seed * d.slots();
        SlotsOfBlock(d, NeuronsOf(d, OffsetsOf(offsets), seed), first,
                     [&](int64_t o, int64_t s) { w[int64_t(kept[s]) * d.out + o] = v[s]; });
      },
      0, [](int64_t) {});
  return ffi::Error::Success();
}

}  // namespace

// The handlers take XLA's intra-op thread pool as a context; with this binding (the FFI's extension point for
// context types) each handler's binding is read from its signature, the buffers' dtypes included.
template <>
struct xla::ffi::CtxBinding<xla::ffi::ThreadPool> {
  using Ctx = xla::ffi::ThreadPool;
};

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparserlCondensedForward, Forward);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SparserlCondensedBackward, Backward);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SparserlCondensedForwardKept, ForwardKept);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SparserlCondensedBackwardKept, BackwardKept);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SparserlCondensedBackwardInput, BackwardInput);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SparserlCondensedGather, Gather);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SparserlCondensedScatter, Scatter);
