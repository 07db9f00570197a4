// RNN (tanh, relu), LSTM and GRU recurrences for CPUs, called from XLA through the FFI
// (jaxrnn.kernels.cpu). Written once against 16-lane GCC vectors (see "the instruction-set layer"), compiled
// for AVX-512, AVX2 or any other target g++ knows.
//
// One call runs a whole sequence in one direction. Each step is one pass over the packed weights:
// x_t @ W_ih^T and h_{t-1} @ W_hh^T go into one set of 6x64 register tiles, and the bias and the
// cell's gates are fused into the tile's epilogue, so nothing is written but the step's results.
// Work is split over up to `threads` threads by blocks of hidden units (all gates of a unit in one
// block): the calling thread and helper tasks on XLA's intra-op thread pool claim blocks step by
// step, and a step starts when every block of the one before is done. The backward pass runs the
// recurrence's gradient the same way: per step the gate gradients, then dh_{t-1} = dz_t @ W_hh;
// every 8 steps it adds those steps' gradients into the weight gradients, so nothing of size
// (T, B, G H) is written.
//
// One template drives the three cells; a cell is a traits struct (Lstm, Gru, Rnn<Act>) that says
// how its gates sit in the 64 accumulator columns of a block, and what its epilogue and gate
// gradients are. Torch's gate orders: LSTM i, f, g, o; GRU r, z, n.
//
// Shapes (T steps, B batch, I inputs, H hidden, a multiple of the cell's block; S states per step,
// 2 for LSTM (h, c) and 1 otherwise; U = H / block):
//   x       (T, B, I)          inputs
//   wpi     (U, Gi, I, 16)     W_ih^T packed by block, Gi 16-column slots of (I, 16) each
//   bias    (U, 64)            the bias of each accumulator column
//   wp      (U, Gh, H, 16)     W_hh^T packed the same way
//   state0  (S, B, H)          initial state
//   valid   (T, B)             1 on real steps, 0 on padding (state carried, output zero)
// Results, inference (*_forward): out (T, B, H), zero on padding; state_n (S, B, H).
// Results, training (*_forward_train): states (T, S, B, H), the state after each step (carried
// through padding; the outputs are its h, zeroed on padding); z (T, B, Z H), the gate values the
// backward pass needs (LSTM i, f, g, o; GRU r, z, W_hn h + b_hn, n; Z = 0 for RNN).
// Backward (*_backward), from z, states, state0, d_out (T, B, H), d_state_n (S, B, H), valid, W_hh
// packed as wb (H/W, W/16, G H, 16) (wb[u, s, k, l] = W_hh[k, W u + 16 s + l], W = 64 or 16; G = 4
// LSTM, 3 GRU, 1 RNN), x and, for the input gradient, W_ih packed as wbi (Ip/16, G H, 16) (16-column
// slots of W_ih, Ip = I rounded up to 16; empty for none): d_wih_t (I, G H) and d_whh_t (H, G H), the
// weight gradients transposed; d_bias (2, G H), of b_ih and b_hh; dx (T, B, Ip) (empty for none);
// d_state0 (S, B, H).
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// ---- the instruction-set layer ----------------------------------------------------------------
// Everything below this section is written against V (16 float lanes), VI (16 int32 lanes) and the
// functions and operators here; nothing else names an instruction set. V is kParts GCC vectors of the
// target's native width (one zmm with AVX-512, two ymm with AVX2, four xmm or NEON registers
// otherwise), so one source runs wherever g++ does, and jaxrnn.kernels.cpu picks the target with the
// compile flags. (A plain 64-byte GCC vector would do on AVX-512, but g++ lowers it through the stack
// on narrower targets, 8x slower on AVX2.) The register tile sizes (kTileRows, kTileRowsNarrow)
// depend on the target too.
//
// Non-finite values follow IEEE arithmetic and the rules of XLA's own loop, whatever the target:
//   vmax(c, x) and vmin(c, x) return x when either is NaN (comparisons, never fmax/fmin, which drop
//   a NaN), so clamping a NaN keeps it NaN and relu(NaN) is NaN;
//   exp(NaN) = NaN, exp(x) overflows to +Inf above about 88.72 and underflows to 0 below about -103.9
//   (subnormal in between, flushed to 0 where XLA's threads flush them), so sigmoid(-Inf) = 0,
//   sigmoid(+Inf) = 1 and tanh(+-Inf) = +-1.

// A register tile is kTileRows rows of a by kPassV vectors V (16 columns each) of the weights; a tile
// of more columns (an LSTM block's 64) is computed kPassV vectors at a time, so each weight cache line
// is reused by as many rows as the registers allow. (The AVX2 build used to hold 2 rows x 4 V at once:
// 16 ymm accumulators on a 16-register target, spilled, and each weight line served 2 rows only; an
// LSTM forward at batch 64, hidden 512 ran at 44 GFLOP/s on one core, against 55-66 with 6 x 1.)
#if defined(__AVX512F__)
constexpr int kNative = 16;
// 32 zmm: 6 x 4 tiles of V (24 accumulators, 4 weight vectors, a broadcast), 8 x 1 for narrow ones.
constexpr int kTileRows = 6, kTileRowsNarrow = 8, kPassV = 4;
#elif defined(__AVX__)
constexpr int kNative = 8;
// 16 ymm: 6 x 1 tiles of V (12 accumulators, a V of weights, a broadcast).
constexpr int kTileRows = 6, kTileRowsNarrow = 6, kPassV = 1;
#elif defined(__aarch64__)
constexpr int kNative = 4;
// 32 NEON registers: 6 x 1 tiles of V (24 accumulators, a V of weights, a broadcast).
constexpr int kTileRows = 6, kTileRowsNarrow = 6, kPassV = 1;
#else
constexpr int kNative = 4;
// 16 xmm without FMA (SSE2): 2 x 1 tiles of V (8 accumulators, a V of weights, a broadcast, a product).
constexpr int kTileRows = 2, kTileRowsNarrow = 2, kPassV = 1;
#endif
constexpr int kLanes = 16, kParts = kLanes / kNative;
typedef float NativeF __attribute__((vector_size(4 * kNative)));
typedef int32_t NativeI __attribute__((vector_size(4 * kNative)));

struct V {  // 16 floats
  NativeF part[kParts];
};
struct VI {  // 16 int32; as a mask, each lane all ones (true) or zero
  NativeI part[kParts];
};

#define JAXRNN_INLINE [[gnu::always_inline]] inline
#define JAXRNN_PARTWISE(R, expr) \
  R r;                           \
  for (int i = 0; i < kParts; ++i) r.part[i] = (expr);  \
  return r

JAXRNN_INLINE V operator+(V a, V b) { JAXRNN_PARTWISE(V, a.part[i] + b.part[i]); }
JAXRNN_INLINE V operator-(V a, V b) { JAXRNN_PARTWISE(V, a.part[i] - b.part[i]); }
JAXRNN_INLINE V operator*(V a, V b) { JAXRNN_PARTWISE(V, a.part[i] * b.part[i]); }
JAXRNN_INLINE V operator/(V a, V b) { JAXRNN_PARTWISE(V, a.part[i] / b.part[i]); }
JAXRNN_INLINE VI operator<(V a, V b) { JAXRNN_PARTWISE(VI, a.part[i] < b.part[i]); }
JAXRNN_INLINE VI operator>(V a, V b) { JAXRNN_PARTWISE(VI, a.part[i] > b.part[i]); }
JAXRNN_INLINE V select(VI mask, V a, V b) { JAXRNN_PARTWISE(V, mask.part[i] ? a.part[i] : b.part[i]); }
JAXRNN_INLINE VI as_int(V a) { JAXRNN_PARTWISE(VI, (NativeI)a.part[i]); }
JAXRNN_INLINE V as_float(VI a) { JAXRNN_PARTWISE(V, (NativeF)a.part[i]); }
JAXRNN_INLINE VI to_int(V a) { JAXRNN_PARTWISE(VI, __builtin_convertvector(a.part[i], NativeI)); }

// Unaligned, part by part (a memcpy of the whole struct goes through the stack on AVX2).
typedef float NativeFu __attribute__((vector_size(4 * kNative), aligned(4), may_alias));
JAXRNN_INLINE V load(const float* p) { JAXRNN_PARTWISE(V, *(const NativeFu*)(p + i * kNative)); }
JAXRNN_INLINE void store(float* p, V v) {
  for (int i = 0; i < kParts; ++i) *(NativeFu*)(p + i * kNative) = v.part[i];
}
// a - 0 is a for every a (-0 and NaN included; a + 0 would turn -0 into +0), so this is one broadcast.
JAXRNN_INLINE NativeF splat_native(float a) { return a - NativeF{}; }
JAXRNN_INLINE V splat(float a) { JAXRNN_PARTWISE(V, splat_native(a)); }
JAXRNN_INLINE V zero() { return splat(0.0f); }
JAXRNN_INLINE V one() { return splat(1.0f); }
JAXRNN_INLINE V add(V a, V b) { return a + b; }
JAXRNN_INLINE V sub(V a, V b) { return a - b; }
JAXRNN_INLINE V mul(V a, V b) { return a * b; }
JAXRNN_INLINE V fmadd(V a, V b, V c) { return a * b + c; }  // one FMA where the target has it
JAXRNN_INLINE V fnmadd(V a, V b, V c) { return c - a * b; }  // likewise
JAXRNN_INLINE V vmax(V a, V b) { return select(a > b, a, b); }  // b if either is NaN
JAXRNN_INLINE V vmin(V a, V b) { return select(a < b, a, b); }  // b if either is NaN
JAXRNN_INLINE V bits_and(V a, int32_t m) { JAXRNN_PARTWISE(V, (NativeF)((NativeI)a.part[i] & m)); }
JAXRNN_INLINE V bits_or(V a, V b) { JAXRNN_PARTWISE(V, (NativeF)((NativeI)a.part[i] | (NativeI)b.part[i])); }
JAXRNN_INLINE V vabs(V x) { return bits_and(x, 0x7fffffff); }
// Round to the nearest integer (ties to even) for |x| < 2^22; NaN stays NaN.
JAXRNN_INLINE V round_nearest(V x) {
  const V magic = splat(12582912.0f);  // 1.5 * 2^23
  return (x + magic) - magic;
}
// 2^n for integral n in [-126, 127], from the exponent bits.
JAXRNN_INLINE V pow2(V n) {
  const VI e = to_int(n);
  JAXRNN_PARTWISE(V, (NativeF)((e.part[i] + 127) << 23));
}
// Lanes [0, n) true, the others false (n may be <= 0 or >= 16).
JAXRNN_INLINE VI lanes_below(int n) {
  static const int32_t lane[kLanes] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  typedef int32_t NativeIu __attribute__((vector_size(4 * kNative), aligned(4), may_alias));
  JAXRNN_PARTWISE(VI, *(const NativeIu*)(lane + i * kNative) < n);
}
// Keeps lanes [0, n) of v and zeroes the others.
JAXRNN_INLINE V keep_lanes(V v, int n) { return n >= kLanes ? v : select(lanes_below(n), v, zero()); }

// Spin-wait hint.
JAXRNN_INLINE void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// ---- math -----------------------------------------------------------------------------------

JAXRNN_INLINE V exp_v(V x) {
  // exp(x) = 2^n * p(r), r = x - n ln2, |r| <= ln2/2; degree-6 polynomial (Cephes expf coefficients).
  // The clamp keeps n in [-150, 129] (NaN passes through); 2^n is applied as two factors of at most
  // 2^65 each, so the result overflows to Inf or underflows to 0 exactly where exp does.
  x = vmin(splat(89.0f), vmax(splat(-104.0f), x));
  const V n = round_nearest(x * splat(1.44269504088896341f));
  V r = fnmadd(n, splat(0.693359375f), x);
  r = fnmadd(n, splat(-2.12194440e-4f), r);
  V p = splat(1.9875691500E-4f);
  p = fmadd(p, r, splat(1.3981999507E-3f));
  p = fmadd(p, r, splat(8.3334519073E-3f));
  p = fmadd(p, r, splat(4.1665795894E-2f));
  p = fmadd(p, r, splat(1.6666665459E-1f));
  p = fmadd(p, r, splat(5.0000001201E-1f));
  p = fmadd(p, r * r, r + one());
  const V half = round_nearest(n * splat(0.5f) - splat(0.25f));  // floor(n / 2) for integral n
  return p * pow2(half) * pow2(n - half);
}
JAXRNN_INLINE V sigmoid_v(V x) { return one() / (one() + exp_v(zero() - x)); }
JAXRNN_INLINE V tanh_v(V x) {
  // tanh(x) = sign(x) * (1 - e) / (1 + e), e = exp(-2|x|); NaN gives NaN
  const V ax = vabs(x);
  const V e = exp_v(ax * splat(-2.0f));
  V t = (one() - e) / (one() + e);
  // |x| < 0.25: the series to x^9 (relative error < 1e-8 there), where 1 - e loses digits (up to 7e-6
  // relative with the exp form alone below 0.01; with the series at most 3e-7 over all x)
  const V x2 = x * x;
  V series = fmadd(x2, splat(62.f / 2835.f), splat(-17.f / 315.f));
  series = fmadd(x2, series, splat(2.f / 15.f));
  series = fmadd(x2, series, splat(-1.f / 3.f));
  const V small = ax * fmadd(x2, series, one());
  t = select(ax < splat(0.25f), small, t);
  return bits_or(t, bits_and(x, (int32_t)0x80000000));
}
// The gradients of the activations, from their values, in the form JAX differentiates them (so the
// zeros, NaN and Inf come out where the XLA loop's do): sigmoid' = s (1 - s), d tanh = (g + g t)(1 - t).
JAXRNN_INLINE V sigmoid_grad(V s) { return mul(s, sub(one(), s)); }
JAXRNN_INLINE V tanh_backward(V g, V t) { return mul(fmadd(g, t, g), sub(one(), t)); }

// ---- one step of the forward pass -------------------------------------------------------------

struct Step {
  int B, H, I;
  int units;          // the real hidden units; [units, H) is zero padding
  const float* x;     // (B, I) this step's inputs
  const float* prev;  // (S, B, H) the state before the step
  const float* wpi;   // (U, Gi, I, 16) W_ih^T packed
  const float* wp;    // (U, Gh, H, 16) W_hh^T packed
  const float* bias;  // (U, 64)
  const float* valid; // (B)
  float* out;         // (B, H), or nullptr in training (the outputs are the states' h, zero on padding)
  float* dst;         // (S, B, H) the state after the step
  float* z;           // (B, Z H) gate values, or nullptr when not kept
};

// acc[m][Slot[g]] (+)= sum_k a[m, k] * w_g[k, :16], g < NG, for MR rows of a and NG weight slots,
// (K, 16) panels each, slot g at w + g ws. a is stored in chunks of kc columns (k), cs floats apart,
// row m of a chunk at m lda (kc = K: a plain row-major a). kPassV of the NG slots per pass over K,
// in registers, each pass streaming its slots' panels in order.
constexpr int kPrefetchRows = 8;  // how far ahead (rows of a weight panel) tile prefetches

template <int MR, int NG, const int* Slot>
inline void tile(int K, const float* a, int lda, int kc, size_t cs, const float* w, size_t ws, V acc[][4]) {
  constexpr int GP = NG < kPassV ? NG : kPassV;  // divides NG: kPassV is 1 or 4, NG 1, 3 or 4
#pragma GCC unroll 1
  for (int g0 = 0; g0 < NG; g0 += GP) {
    NativeF c[MR][GP][kParts];
    for (int m = 0; m < MR; ++m)
      for (int g = 0; g < GP; ++g) for (int p = 0; p < kParts; ++p) c[m][g][p] = acc[m][Slot[g0 + g]].part[p];
    for (int k0 = 0; k0 < K; k0 += kc) {
      const float* ak = a + (size_t)(k0 / kc) * cs - k0;  // ak[m lda + k], k in [k0, k0 + kc)
      const int k1 = std::min(K, k0 + kc);
#pragma GCC unroll 2
      for (int k = k0; k < k1; ++k) {
        NativeF wk[GP][kParts];
#pragma GCC unroll 16
        for (int g = 0; g < GP; ++g) {
          __builtin_prefetch(w + (g0 + g) * ws + (k + kPrefetchRows) * 16);
          for (int p = 0; p < kParts; ++p) wk[g][p] = *(const NativeFu*)(w + (g0 + g) * ws + k * 16 + p * kNative);
        }
#pragma GCC unroll 8
        for (int m = 0; m < MR; ++m) {
          const NativeF am = splat_native(ak[m * lda + k]);
#pragma GCC unroll 16
          for (int g = 0; g < GP; ++g) for (int p = 0; p < kParts; ++p) c[m][g][p] += am * wk[g][p];
        }
      }
    }
    for (int m = 0; m < MR; ++m)
      for (int g = 0; g < GP; ++g) for (int p = 0; p < kParts; ++p) acc[m][Slot[g0 + g]].part[p] = c[m][g][p];
  }
}

inline constexpr int kSlots0123[4] = {0, 1, 2, 3};
inline constexpr int kSlots013[3] = {0, 1, 3};

// Where the 64 accumulator columns of block u go: LSTM and GRU keep 16 units and 4 gate slots
// (slot q is columns 16 q .. 16 q + 15 of unit block u); RNN keeps 64 units and one gate.

// LSTM, torch's gate order i, f, g, o: slot q is gate q, from x and h alike.
struct Lstm {
  static constexpr const char* kName = "lstm";
  static constexpr int kStates = 2, kBlock = 16, kIn = 4, kHid = 4, kZ = 4, kDz = 4, kDx = 0;
  static constexpr const int* kInSlot = kSlots0123;
  static constexpr const int* kHidSlot = kSlots0123;
  static constexpr bool kDirectDh = false;  // dh_{t-1} is dz_t @ W_hh alone

  [[gnu::always_inline]] static void epilogue(const Step& s, int u, int row, V acc[4]) {
    const size_t B = s.B, H = s.H, unit0 = row * H + u * 16;
    V pre[4];
    for (int q = 0; q < 4; ++q) pre[q] = add(acc[q], load(s.bias + u * 64 + q * 16));
    const V i = sigmoid_v(pre[0]), f = sigmoid_v(pre[1]), g = tanh_v(pre[2]), o = sigmoid_v(pre[3]);
    if (s.z) {  // the gates, so the backward pass needs no exp for them
      float* z = s.z + row * 4 * H + u * 16;
      store(z, i);
      store(z + H, f);
      store(z + 2 * H, g);
      store(z + 3 * H, o);
    }
    const V c_old = load(s.prev + B * H + unit0);
    const V c = fmadd(f, c_old, mul(i, g));
    const V h = mul(o, tanh_v(c));
    if (s.valid[row] > 0.5f) {
      store(s.dst + unit0, h);
      store(s.dst + B * H + unit0, c);
      if (s.out) store(s.out + unit0, h);
    } else {
      store(s.dst + unit0, load(s.prev + unit0));
      store(s.dst + B * H + unit0, c_old);
      if (s.out) store(s.out + unit0, zero());
    }
  }
};

// GRU, torch's gate order r, z, n with n = tanh(W_in x + b_in + r * (W_hn h + b_hn)): the slots are
// r, z (x and h summed), hn = W_hn h + b_hn and xn = W_in x + b_in. W_ih's panels r, z, n go to
// slots 0, 1, 3; W_hh's r, z, n to 0, 1, 2. z keeps r, z, hn and n. The backward pass writes the
// gradients of both projections: dz = [d r_pre, d z_pre, d hn] for W_hh h + b_hh and dx = d xn
// (with dz's first two) for W_ih x + b_ih.
struct Gru {
  static constexpr const char* kName = "gru";
  static constexpr int kStates = 1, kBlock = 16, kIn = 3, kHid = 3, kZ = 4, kDz = 3, kDx = 1;
  static constexpr const int* kInSlot = kSlots013;
  static constexpr const int* kHidSlot = kSlots0123;
  static constexpr bool kDirectDh = true;  // dh_{t-1} = dh_t * z + dz_t @ W_hh

  [[gnu::always_inline]] static void epilogue(const Step& s, int u, int row, V acc[4]) {
    const size_t H = s.H, unit0 = row * H + u * 16;
    V pre[4];
    for (int q = 0; q < 4; ++q) pre[q] = add(acc[q], load(s.bias + u * 64 + q * 16));
    const V r = sigmoid_v(pre[0]), z = sigmoid_v(pre[1]);
    const V n = tanh_v(fmadd(r, pre[2], pre[3]));
    if (s.z) {
      float* zs = s.z + row * 4 * H + u * 16;
      store(zs, r);
      store(zs + H, z);
      store(zs + 2 * H, pre[2]);
      store(zs + 3 * H, n);
    }
    const V h_old = load(s.prev + unit0);
    if (s.valid[row] > 0.5f) {
      const V h = fmadd(z, sub(h_old, n), n);  // (1 - z) n + z h
      store(s.dst + unit0, h);
      if (s.out) store(s.out + unit0, h);
    } else {
      store(s.dst + unit0, h_old);
      if (s.out) store(s.out + unit0, zero());
    }
  }
};

// Elman RNN: one gate, blocks of 64 units (slot q is units 16 q .. 16 q + 15 of the block). The
// backward pass needs no gate values: the gradient of tanh or relu follows from h.
struct Tanh {
  static V f(V x) { return tanh_v(x); }
  static V backward(V g, V h) { return tanh_backward(g, h); }
  static constexpr const char* kName = "rnn_tanh";
};
struct Relu {
  static V f(V x) { return vmax(zero(), x); }  // NaN stays NaN
  // jax.nn.relu's gradient: g where x > 0, else exactly 0 (h > 0 exactly where x > 0)
  static V backward(V g, V h) { return select(h > zero(), g, zero()); }
  static constexpr const char* kName = "rnn_relu";
};
template <typename Act>
struct Rnn {
  static constexpr const char* kName = Act::kName;
  static constexpr int kStates = 1, kBlock = 64, kIn = 4, kHid = 4, kZ = 0, kDz = 1, kDx = 0;
  static constexpr const int* kInSlot = kSlots0123;
  static constexpr const int* kHidSlot = kSlots0123;
  static constexpr bool kDirectDh = false;

  [[gnu::always_inline]] static void epilogue(const Step& s, int u, int row, V acc[4]) {
    const bool valid = s.valid[row] > 0.5f;
    for (int q = 0; q < 4; ++q) {
      const size_t unit0 = (size_t)row * s.H + u * 64 + q * 16;
      if (valid) {
        const V h = Act::f(add(acc[q], load(s.bias + u * 64 + q * 16)));
        store(s.dst + unit0, h);
        if (s.out) store(s.out + unit0, h);
      } else {
        store(s.dst + unit0, load(s.prev + unit0));
        if (s.out) store(s.out + unit0, zero());
      }
    }
  }
};

// Calls f(std::integral_constant<int, n>{}) for a run-time n in [1, MAX] (nothing for n = 0): a tile
// size as a compile-time constant.
template <int MAX, typename F>
inline void with_constant(int n, F&& f) {
  if constexpr (MAX > 0) {
    if (n == MAX) {
      f(std::integral_constant<int, MAX>{});
    } else {
      with_constant<MAX - 1>(n, f);
    }
  }
}

// Calls f(std::integral_constant<int, MR>{}, r) for row tiles [r, r + MR), MR <= MAX, covering rows
// [0, B). for_row_tiles makes them as even as possible (B = 32, MAX = 6: 6 6 5 5 5 5; an LSTM
// forward at batch 32, hidden 256, 100 steps went from 7.3 to 6.8 ms); for_row_tiles_greedy takes MAX rows while
// it can (6 6 6 6 6 2), which measured faster for the backward's matmul (9 against 13 ms).
template <int MAX, typename F>
inline void for_row_tiles_greedy(int B, F f) {
  int r = 0;
  for (; r + MAX <= B; r += MAX) f(std::integral_constant<int, MAX>{}, r);
  with_constant<MAX - 1>(B - r, [&](auto mr) { f(mr, r); });
}
template <int MAX, typename F>
inline void for_row_tiles(int B, F f) {
  const int tiles = (B + MAX - 1) / MAX;
  for (int i = 0, r = 0; i < tiles; ++i) {
    const int rows = B / tiles + (i < B % tiles ? 1 : 0);
    with_constant<MAX>(rows, [&](auto mr) { f(mr, r); });
    r += rows;
  }
}

// The first hidden unit of accumulator slot q of block u: LSTM and GRU blocks hold 16 units (the slots
// are their gates), RNN blocks 64 (slot q holds units 16 q .. 16 q + 15).
template <typename Cell>
int first_unit(int u, int q) {
  return Cell::kBlock == kLanes ? u * kLanes : u * Cell::kBlock + q * kLanes;
}

template <typename Cell, int MR>
void rows_block(const Step& s, int u, int r) {
  V acc[MR][4];
  for (int m = 0; m < MR; ++m) for (int q = 0; q < 4; ++q) acc[m][q] = zero();
  const size_t wi = (size_t)s.I * 16, wh = (size_t)s.H * 16;  // floats per slot panel
  tile<MR, Cell::kIn, Cell::kInSlot>(s.I, s.x + (size_t)r * s.I, s.I, s.I, 0, s.wpi + u * wi * Cell::kIn, wi, acc);
  tile<MR, Cell::kHid, Cell::kHidSlot>(s.H, s.prev + (size_t)r * s.H, s.H, s.H, 0, s.wp + u * wh * Cell::kHid, wh, acc);
  // Padding units get a zero pre-activation whatever x holds (their weights are zero, but 0 * Inf is
  // NaN), so they stay exactly 0 and never reach the real units through W_hh.
  for (int q = 0; q < 4; ++q) {
    const int real = s.units - first_unit<Cell>(u, q);
    if (real < kLanes) for (int m = 0; m < MR; ++m) acc[m][q] = keep_lanes(acc[m][q], real);
  }
  for (int m = 0; m < MR; ++m) Cell::epilogue(s, u, r + m, acc[m]);
}

template <typename Cell>
void unit_block(const Step& s, int u) {
  for_row_tiles<kTileRows>(s.B, [&](auto mr, int r) { rows_block<Cell, decltype(mr)::value>(s, u, r); });
}

// ---- threads ----------------------------------------------------------------------------------

// Spins until `counter` reaches `target`; after a while yields the core, in case the thread it waits
// for shares it (the OS may put both on one core, and a pure spin would then burn the whole slice).
inline void wait_until(const std::atomic<int64_t>& counter, int64_t target) {
  for (int spins = 0; counter.load(std::memory_order_acquire) < target; ++spins) {
    if (spins < 2000) {
      cpu_relax();
    } else {
      std::this_thread::yield();
    }
  }
}

// Phases of U blocks each, run in order by the calling thread and any helpers that join: phase p
// starts when every block of phase p - 1 is done. Helpers may start late, or after the call is over:
// they hold the work by shared_ptr and touch the buffers only through blocks claimed before the end.
struct Phases {
  int P, U;
  std::function<void(int, int)> run;  // run(phase, block)
  // claims[p] packs the next unclaimed block of phase p from the front (high 32 bits) and the end of
  // the unclaimed range (low 32 bits): the caller takes blocks from the front, helpers from the back,
  // so each thread keeps mostly the same weight panels in its cache from phase to phase.
  std::vector<std::atomic<uint64_t>> claims;
  std::atomic<int64_t> done{0};  // blocks finished, over all phases

  Phases(int P, int U, std::function<void(int, int)> run) : P(P), U(U), run(std::move(run)), claims(P) {
    for (auto& c : claims) c.store((uint64_t)U, std::memory_order_relaxed);  // lo = 0, hi = U
  }

  int claim(int p, bool front) {
    uint64_t packed = claims[p].load(std::memory_order_relaxed);
    while (true) {
      const uint32_t lo = packed >> 32, hi = (uint32_t)packed;
      if (lo >= hi) return -1;
      const uint64_t next = front ? ((uint64_t)(lo + 1) << 32) | hi : ((uint64_t)lo << 32) | (hi - 1);
      if (claims[p].compare_exchange_weak(packed, next, std::memory_order_relaxed)) return front ? lo : hi - 1;
    }
  }

  void participate(bool front) {
    for (int p = (int)(done.load(std::memory_order_acquire) / U); p < P; ++p) {
      wait_until(done, (int64_t)p * U);
      for (int u; (u = claim(p, front)) >= 0;) {
        run(p, u);
        done.fetch_add(1, std::memory_order_acq_rel);
      }
    }
  }
};

// Runs all phases on the calling thread plus up to `threads - 1` tasks on XLA's intra-op pool (so
// they do not fight XLA's own threads for the cores). The caller alone finishes if no helper starts.
// `owner` keeps the work's buffers alive for late helpers.
void RunPhases(ffi::ThreadPool& pool, int64_t threads, std::shared_ptr<Phases> phases, std::shared_ptr<void> owner) {
  const int64_t helpers = std::min<int64_t>(std::max<int64_t>(threads, 1), phases->U) - 1;
  for (int64_t i = 0; i < helpers && phases->P > 0; ++i) {
    pool.Schedule([phases, owner] { phases->participate(false); });
  }
  phases->participate(true);
  const int64_t total = (int64_t)phases->P * phases->U;
  wait_until(phases->done, total);  // the helpers' last blocks
}

// The state a step starts from and where it writes, for step number `step` of T (in processing order).
struct StateIndex {
  int t, before;  // time index of this step and of the previous one (in processing order)
  StateIndex(int step, int T, bool reverse)
      : t(reverse ? T - 1 - step : step), before(reverse ? T - step : step - 1) {}
};

// ---- forward ----------------------------------------------------------------------------------

// With `states` (training) every step's state goes there and the gate values to z; without
// (inference) the state ping-pongs between two scratch buffers.
template <typename Cell>
ffi::Error Forward(const std::string& name, ffi::ThreadPool& pool, ffi::Buffer<ffi::F32>& x,
                   ffi::Buffer<ffi::F32>& wpi, ffi::Buffer<ffi::F32>& bias, ffi::Buffer<ffi::F32>& wp,
                   ffi::Buffer<ffi::F32>& state0, ffi::Buffer<ffi::F32>& valid, bool reverse, int64_t units,
                   int64_t threads, float* out, float* states, float* z, float* state_n) {
  auto dims = x.dimensions();
  auto state_dims = state0.dimensions();
  if (dims.size() != 3 || state_dims.size() != 3 || state_dims[0] != Cell::kStates || state_dims[1] != dims[1] ||
      state_dims[2] % Cell::kBlock != 0 || units < 1 || units > state_dims[2]) {
    return ffi::Error::InvalidArgument(name + ": expected x (T, B, I) and state0 (" + std::to_string(Cell::kStates) +
                                       ", B, H), H a multiple of " + std::to_string(Cell::kBlock) +
                                       ", and units in [1, H]");
  }
  const int T = dims[0], B = dims[1], I = dims[2], H = state_dims[2], U = H / Cell::kBlock;
  const size_t state = (size_t)Cell::kStates * B * H;
  auto scratch = std::make_shared<std::vector<float>>(states ? 0 : 2 * state);
  const float *x_p = x.typed_data(), *wpi_p = wpi.typed_data(), *bias_p = bias.typed_data();
  const float *wp_p = wp.typed_data(), *state0_p = state0.typed_data(), *valid_p = valid.typed_data();
  float* ping_pong = scratch->data();
  auto step_args = [=](int step) {
    StateIndex at(step, T, reverse);
    const float* prev;
    float* dst;
    if (states) {
      prev = step == 0 ? state0_p : states + at.before * state;
      dst = states + at.t * state;
    } else {
      prev = step == 0 ? state0_p : ping_pong + ((step + 1) % 2) * state;  // the previous step wrote there
      dst = ping_pong + (step % 2) * state;
    }
    return Step{B, H, I, (int)units, x_p + (size_t)at.t * B * I, prev, wpi_p, wp_p, bias_p, valid_p + (size_t)at.t * B,
                out ? out + (size_t)at.t * B * H : nullptr, dst, z ? z + (size_t)at.t * B * Cell::kZ * H : nullptr};
  };
  auto phases = std::make_shared<Phases>(T, U, [=](int step, int u) { unit_block<Cell>(step_args(step), u); });
  RunPhases(pool, threads, phases, scratch);
  if (!states) std::memcpy(state_n, T == 0 ? state0_p : ping_pong + ((T - 1) % 2) * state, state * sizeof(float));
  return ffi::Error::Success();
}

template <typename Cell>
ffi::Error ForwardInference(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> wpi,
                            ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> wp, ffi::Buffer<ffi::F32> state0,
                            ffi::Buffer<ffi::F32> valid, bool reverse, int64_t units, int64_t threads,
                            ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> state_n) {
  return Forward<Cell>(std::string("jaxrnn_") + Cell::kName + "_forward", pool, x, wpi, bias, wp, state0, valid,
                       reverse, units, threads, out->typed_data(), nullptr, nullptr, state_n->typed_data());
}

template <typename Cell>
ffi::Error ForwardTrain(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> wpi,
                        ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> wp, ffi::Buffer<ffi::F32> state0,
                        ffi::Buffer<ffi::F32> valid, bool reverse, int64_t units, int64_t threads,
                        ffi::ResultBuffer<ffi::F32> states, ffi::ResultBuffer<ffi::F32> z) {
  return Forward<Cell>(std::string("jaxrnn_") + Cell::kName + "_forward_train", pool, x, wpi, bias, wp, state0,
                       valid, reverse, units, threads, nullptr, states->typed_data(),
                       Cell::kZ ? z->typed_data() : nullptr, nullptr);
}

// ---- backward ---------------------------------------------------------------------------------

// A step's gradients, staged: the columns are dz's D H (the gradient of the pre-activations of
// h_{t-1} @ W_hh^T + b_hh) and then, for GRU, the H of d(W_in x_t + b_in) (the r and z rows of
// W_ih x_t + b_ih have dz's). They are stored by slots of 16 columns, (columns / 16, B, 16), so that
// a slot's rows are contiguous: the weight gradients stream them in order, one cache line a row.
struct Staged {
  int B;
  float* p;
  float* at(size_t row, size_t column) const { return p + (column / 16 * B + row) * 16 + column % 16; }
};

struct BackStep {
  int B, H;
  int units;           // the real hidden units; [units, H) is zero padding
  const float* z;      // (B, Z H) this step's gate values
  const float* prev;   // (S, B, H) the state before the step
  const float* cur;    // (S, B, H) the state after it
  const float* d_out;  // (B, H) gradient of this step's output
  const float* valid;  // (B)
  float* d_state;      // (S, B, H) carried: the gradient of the state after the step, then before it
  Staged g;            // this step's gradients
};

// Gate gradients of one step for the 16 units of block u, every row: from the carried state gradient
// and this step's output gradient, stages the step's gradients and what of the state gradient does not
// go through W_hh (LSTM: dc; GRU: dh * z). Padding rows get zero gradients and carry the state
// gradient unchanged.
struct LstmGrad {
  static void gates(const BackStep& s, int u) {
    const size_t B = s.B, H = s.H;
    float *dh = s.d_state, *dc = s.d_state + B * H;
    for (size_t row = 0; row < B; ++row) {
      const size_t gate0 = row * 4 * H + u * 16, unit0 = row * H + u * 16;
      float* dz[4];
      for (int q = 0; q < 4; ++q) dz[q] = s.g.at(row, q * H + u * 16);
      if (s.valid[row] <= 0.5f) {
        for (int q = 0; q < 4; ++q) store(dz[q], zero());
        continue;
      }
      const V i = load(s.z + gate0), f = load(s.z + gate0 + H), g = load(s.z + gate0 + 2 * H);
      const V o = load(s.z + gate0 + 3 * H);
      const V tc = tanh_v(load(s.cur + B * H + unit0));
      const V dh_t = keep_lanes(add(load(dh + unit0), load(s.d_out + unit0)), s.units - u * 16);
      // dc_t = dc + dh_t * o * (1 - tanh(c)^2)
      const V dct = add(tanh_backward(mul(dh_t, o), tc), load(dc + unit0));
      store(dz[0], mul(mul(dct, g), sigmoid_grad(i)));
      store(dz[1], mul(mul(dct, load(s.prev + B * H + unit0)), sigmoid_grad(f)));
      store(dz[2], tanh_backward(mul(dct, i), g));
      store(dz[3], mul(mul(dh_t, tc), sigmoid_grad(o)));
      store(dc + unit0, mul(dct, f));
    }
  }
};
struct GruGrad {
  static void gates(const BackStep& s, int u) {
    const size_t B = s.B, H = s.H;
    float* dh = s.d_state;
    for (size_t row = 0; row < B; ++row) {
      const size_t gate0 = row * 4 * H + u * 16, unit0 = row * H + u * 16;
      float* dz[4];  // r, z, hn; then xn
      for (int q = 0; q < 4; ++q) dz[q] = s.g.at(row, q * H + u * 16);
      if (s.valid[row] <= 0.5f) {
        for (int q = 0; q < 4; ++q) store(dz[q], zero());
        continue;
      }
      const V r = load(s.z + gate0), z = load(s.z + gate0 + H), hn = load(s.z + gate0 + 2 * H);
      const V n = load(s.z + gate0 + 3 * H);
      const V dh_t = keep_lanes(add(load(dh + unit0), load(s.d_out + unit0)), s.units - u * 16);
      // h = (1 - z) n + z h_prev
      const V dn_pre = tanh_backward(fnmadd(dh_t, z, dh_t), n);
      const V dz_pre = mul(mul(dh_t, sub(load(s.prev + unit0), n)), sigmoid_grad(z));
      const V dr_pre = mul(mul(dn_pre, hn), sigmoid_grad(r));
      store(dz[0], dr_pre);
      store(dz[1], dz_pre);
      store(dz[2], mul(dn_pre, r));
      store(dz[3], dn_pre);
      store(dh + unit0, mul(dh_t, z));  // the direct part; the matmul phase adds dz @ W_hh
    }
  }
};

template <typename Act>
struct RnnGrad {
  static void gates(const BackStep& s, int u) {
    const size_t B = s.B, H = s.H;
    for (size_t row = 0; row < B; ++row) {
      const size_t unit0 = row * H + u * 16;
      float* dz = s.g.at(row, u * 16);
      if (s.valid[row] <= 0.5f) {
        store(dz, zero());
        continue;
      }
      const V dh_t = keep_lanes(add(load(s.d_state + unit0), load(s.d_out + unit0)), s.units - u * 16);
      store(dz, Act::backward(dh_t, load(s.cur + unit0)));
    }
  }
};

template <typename Cell> struct GradOf;
template <> struct GradOf<Lstm> { using type = LstmGrad; };
template <> struct GradOf<Gru> { using type = GruGrad; };
template <typename Act> struct GradOf<Rnn<Act>> { using type = RnnGrad<Act>; };

// acc[m][:NP] += staged[rows r .. r + MR, columns lo .. hi] @ w[(hi - lo) rows, NP slots of 16] (slot q's
// rows at w + q ws, 16 floats each; lo and hi multiples of 16).
template <int MR, int NP>
inline void staged_tile(const Staged& g, int r, size_t lo, size_t hi, const float* w, size_t ws, V acc[][4]) {
  tile<MR, NP, kSlots0123>(hi - lo, g.at(r, lo), 16, 16, (size_t)g.B * 16, w, ws, acc);
}

// dh[rows, W u : W u + W] (+)= dz[rows, :K] @ W_hh[:K, W u : W u + W] (W = 16 NP) on valid rows;
// padding rows keep dh. GRU starts from the direct part the gates phase left in dh.
template <typename Cell, int MR, int NP>
void backward_matmul_rows(const BackStep& s, int u, int r, const float* wb) {
  const size_t H = s.H, K = Cell::kDz * H;
  float* dh = s.d_state + (size_t)u * 16 * NP;
  V acc[MR][4];
  for (int m = 0; m < MR; ++m) {
    for (int p = 0; p < NP; ++p) acc[m][p] = Cell::kDirectDh ? load(dh + (r + m) * H + 16 * p) : zero();
  }
  staged_tile<MR, NP>(s.g, r, 0, K, wb + u * K * 16 * NP, K * 16, acc);
  for (int m = 0; m < MR; ++m) {
    if (s.valid[r + m] <= 0.5f) continue;
    for (int p = 0; p < NP; ++p) store(dh + (r + m) * H + 16 * p, acc[m][p]);
  }
}

// c^T[n, m] += sum_k b[k, n] a[k, m] for MR rows n (of x or h_{t-1}) and NV 16-column vectors of m,
// over the B rows of each step s in [s0, s1): a's row r of step s is a_of(s)[v] + 16 r, b's is
// b_of(s) + r ldb.
template <int MR, int NV, typename AOf, typename BOf>
inline void weight_tile(int s0, int s1, int B, AOf a_of, BOf b_of, size_t ldb, float* c, size_t ldc) {
  constexpr int VP = NV < kPassV ? NV : kPassV;  // vectors per pass, as in tile
#pragma GCC unroll 1
  for (int v0 = 0; v0 < NV; v0 += VP) {
    NativeF acc[MR][VP][kParts];
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < VP; ++v)
        for (int p = 0; p < kParts; ++p) acc[i][v][p] = *(const NativeFu*)(c + i * ldc + 16 * (v0 + v) + p * kNative);
    for (int s = s0; s < s1; ++s) {
      const float* b = b_of(s);
      const float* a[VP];
      for (int v = 0; v < VP; ++v) a[v] = a_of(s, v0 + v);
      for (int r = 0; r < B; ++r, b += ldb) {
        NativeF av[VP][kParts];
#pragma GCC unroll 16
        for (int v = 0; v < VP; ++v)
          for (int p = 0; p < kParts; ++p) av[v][p] = *(const NativeFu*)(a[v] + 16 * r + p * kNative);
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
          const NativeF bi = splat_native(b[i]);
#pragma GCC unroll 16
          for (int v = 0; v < VP; ++v) for (int p = 0; p < kParts; ++p) acc[i][v][p] += bi * av[v][p];
        }
      }
    }
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < VP; ++v)
        for (int p = 0; p < kParts; ++p) *(NativeFu*)(c + i * ldc + 16 * (v0 + v) + p * kNative) = acc[i][v][p];
  }
}

// Backward through the whole sequence, in the opposite order to the forward. Each step is two
// phases over blocks of W units (W = 64 when H allows, else 16; wb is packed by the same blocks):
// the gate gradients, then dh_{t-1} = (direct part) + dz_t @ W_hh. The steps' gradients are staged
// in a ring of C steps, and after every C steps a third phase adds them into the weight and bias
// gradients (kept transposed) and, when asked, computes those steps' input gradients
// dx_t = d(W_ih x_t + b_ih) @ W_ih.
template <typename Cell>
ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> z, ffi::Buffer<ffi::F32> states,
                    ffi::Buffer<ffi::F32> state0, ffi::Buffer<ffi::F32> d_out, ffi::Buffer<ffi::F32> d_state_n,
                    ffi::Buffer<ffi::F32> valid, ffi::Buffer<ffi::F32> wb, ffi::Buffer<ffi::F32> x,
                    ffi::Buffer<ffi::F32> wbi, bool reverse, int64_t units, int64_t threads,
                    ffi::ResultBuffer<ffi::F32> d_wih_out,
                    ffi::ResultBuffer<ffi::F32> d_whh_out, ffi::ResultBuffer<ffi::F32> d_bias_out,
                    ffi::ResultBuffer<ffi::F32> dx_out, ffi::ResultBuffer<ffi::F32> d_state0) {
  auto dims = d_out.dimensions();
  auto state_dims = state0.dimensions();
  auto wb_dims = wb.dimensions();
  auto x_dims = x.dimensions();
  auto dx_dims = dx_out->dimensions();
  const int64_t W = wb_dims.size() == 4 && wb_dims[3] == 16 ? wb_dims[1] * 16 : 0;
  const bool input_grad = wbi.element_count() > 0;
  const int64_t Ip = x_dims.size() == 3 ? (x_dims[2] + 15) / 16 * 16 : 0;
  if (dims.size() != 3 || state_dims.size() != 3 || state_dims[0] != Cell::kStates || (W != 16 && W != 64) ||
      dims[2] % W != 0 || wb_dims[0] * W != dims[2] || wb_dims[2] != Cell::kDz * dims[2] || state_dims[2] != dims[2] ||
      state_dims[1] != dims[1] ||
      x_dims.size() != 3 || x_dims[0] != dims[0] || x_dims[1] != dims[1] || units < 1 || units > dims[2] ||
      (input_grad && (wbi.element_count() != (int64_t)Cell::kDz * dims[2] * Ip || dx_dims.size() != 3 ||
                      dx_dims[2] != Ip))) {
    return ffi::Error::InvalidArgument(
        std::string("jaxrnn_") + Cell::kName +
        "_backward: expected d_out (T, B, H), state0 (S, B, H), wb (H/W, W/16, G H, 16) with W 16 or 64 dividing H, x "
        "(T, B, I), wbi (G H Ip) with dx (T, B, Ip), Ip = I rounded up to 16, or both empty, and units in [1, H]");
  }
  const int T = dims[0], B = dims[1], H = dims[2], U = H / W, I = x_dims[2];
  const size_t state = (size_t)Cell::kStates * B * H, GH = (size_t)Cell::kDz * H;
  // staged columns: dz's G H, then GRU's H of d(W_in x + b_in); a multiple of 64 for every cell
  const size_t staged_cols = (size_t)(Cell::kDz + Cell::kDx) * H;
  float *d_state = d_state0->typed_data(), *dx = input_grad ? dx_out->typed_data() : nullptr;
  float *d_wih = d_wih_out->typed_data(), *d_whh = d_whh_out->typed_data(), *d_bias = d_bias_out->typed_data();
  std::memcpy(d_state, d_state_n.typed_data(), state * sizeof(float));  // the carried gradient lives in d_state0
  std::memset(d_wih, 0, (size_t)I * GH * sizeof(float));
  std::memset(d_whh, 0, (size_t)H * GH * sizeof(float));
  std::memset(d_bias, 0, 2 * GH * sizeof(float));
  const float *z_p = z.typed_data(), *states_p = states.typed_data(), *state0_p = state0.typed_data();
  const float *d_out_p = d_out.typed_data(), *valid_p = valid.typed_data(), *wb_p = wb.typed_data();
  const float *x_p = x.typed_data(), *wbi_p = wbi.typed_data();
  constexpr int C = 8;
  const size_t stage_step = (size_t)B * staged_cols;
  // The tiles of x_t and h_{t-1} rows below (the scratch holds both): see pack_operands.
  constexpr int N6 = kTileRows;  // columns per operand tile: the weight tiles' rows
  const int tiles_x = (I + N6 - 1) / N6, tiles_h = (H + N6 - 1) / N6;
  const size_t tile_floats = (size_t)C * B * N6;
  auto scratch = std::make_shared<std::vector<float>>(C * stage_step + (tiles_x + tiles_h) * tile_floats);
  float* stage_p = scratch->data();
  float* operands_p = stage_p + C * stage_step;
  // back_step 0 is the forward's last step; its time index and the state it started from.
  auto time_of = [=](int back_step) { return StateIndex(T - 1 - back_step, T, reverse); };
  auto prev_of = [=](int back_step) {
    return back_step == T - 1 ? state0_p : states_p + time_of(back_step).before * state;
  };
  auto staged = [=](int back_step) { return Staged{B, stage_p + (back_step % C) * stage_step}; };
  auto step_args = [=](int back_step) {
    StateIndex at = time_of(back_step);
    return BackStep{B,
                    H,
                    (int)units,
                    Cell::kZ ? z_p + (size_t)at.t * B * Cell::kZ * H : nullptr,
                    prev_of(back_step),
                    states_p + at.t * state,
                    d_out_p + (size_t)at.t * B * H,
                    valid_p + (size_t)at.t * B,
                    d_state,
                    staged(back_step)};
  };
  // The group's rows of x_t and h_{t-1}, packed by the gates phases for the weight gradients: tile j
  // holds 6 columns n of all C B rows k, (C B, 6) row-major, so a weight tile reads them in order.
  // Tiles [0, tiles_x) are x's, then h's.
  auto pack_operands = [=](int back_step, int u) {  // work item u's tiles of step back_step's rows
    const float* xs = x_p + (size_t)time_of(back_step).t * B * I;
    const float* hs = prev_of(back_step);
    for (int j = u; j < tiles_x + tiles_h; j += U) {
      const bool is_x = j < tiles_x;
      const int n0 = N6 * (is_x ? j : j - tiles_x), n = std::min(N6, (is_x ? I : H) - n0);
      const size_t ld = is_x ? I : H;
      const float* src = (is_x ? xs : hs) + n0;
      float* dst = operands_p + j * tile_floats + (size_t)(back_step % C) * B * N6;
      for (int r = 0; r < B; ++r) std::memcpy(dst + N6 * r, src + r * ld, n * sizeof(float));
    }
  };
  // The staged column of gradient column m of the input projection (ih) or the recurrent one (hh):
  // they differ in GRU's n gate only.
  auto column = [=](bool ih, size_t m) { return ih && Cell::kDx && m >= 2 * (size_t)H ? m + H : m; };
  const int vectors = GH / 16, chunks = (vectors + 3) / 4;
  // Work item u of a group's third phase: the weight and bias gradients of 64-column chunks u, u + U,
  // ... of G H, then the input gradient of its share of (step, row tile) pairs.
  auto accumulate = [=](int first, int last, int u) {
    for (int chunk = u; chunk < chunks; chunk += U) {
      const int nv = std::min(4, vectors - 4 * chunk);
      for (int part = 0; part < 2; ++part) {  // 0: W_ih from x_t, 1: W_hh from h_{t-1}
        const bool ih = part == 0;
        size_t cols[4];
        for (int v = 0; v < nv; ++v) cols[v] = column(ih, 16 * (4 * chunk + v));
        auto a_of = [&](int s, int v) { return (const float*)staged(s).at(0, cols[v]); };
        float* bias = d_bias + (ih ? 0 : GH) + 64 * chunk;
        if (!ih && !Cell::kDx) {  // LSTM, RNN: both projections have the same gradient, so b_hh's is b_ih's
          std::memcpy(bias, bias - GH, 16 * nv * sizeof(float));
        } else {
          for (int v = 0; v < nv; ++v) {  // the bias gradient: the rows' sum
            V sum = load(bias + 16 * v);
            for (int s = first; s < last; ++s) {
              const float* a = a_of(s, v);
              for (int r = 0; r < B; ++r) sum = add(sum, load(a + 16 * r));
            }
            store(bias + 16 * v, sum);
          }
        }
        const int N = ih ? I : H;
        float* c = (ih ? d_wih : d_whh) + 64 * chunk;
        auto over_n = [&](auto nvc) {
          constexpr int NV = decltype(nvc)::value;
          for_row_tiles_greedy<N6>(N, [&](auto mr, int n0) {
            const float* tile = operands_p + (size_t)((ih ? 0 : tiles_x) + n0 / N6) * tile_floats;
            auto b_of = [&](int s) { return tile + (size_t)(s % C) * B * N6; };
            weight_tile<decltype(mr)::value, NV>(first, last, B, a_of, b_of, N6, c + n0 * GH, GH);
          });
        };
        with_constant<4>(nv, over_n);
      }
    }
    if (!input_grad) return;
    // dx_t[rows, 64 p : 64 p + 64] = d(W_ih x_t + b_ih)[rows] @ W_ih[:, 64 p : ...]
    const int in_vectors = Ip / 16, panels = (in_vectors + 3) / 4;
    int item = 0;
    for (int s = first; s < last; ++s) {
      const Staged g = staged(s);
      const int t = time_of(s).t;
      for_row_tiles_greedy<kTileRows>(B, [&](auto mr, int r) {
        constexpr int MR = decltype(mr)::value;
        for (int p = 0; p < panels; ++p, ++item) {
          if (item % U != u) continue;
          const int np = std::min(4, in_vectors - 4 * p);
          const float* w = wbi_p + GH * 64 * p;  // panel p: np slots of (G H, 16)
          float* out = dx + ((size_t)t * B + r) * Ip + 64 * p;
          auto run = [&](auto npc) {
            constexpr int NP = decltype(npc)::value;
            V acc[MR][4];
            for (int m = 0; m < MR; ++m) for (int q = 0; q < NP; ++q) acc[m][q] = zero();
            if (Cell::kDx) {  // GRU: the r, z rows from dz, the n rows from the staged d(W_in x + b_in)
              staged_tile<MR, NP>(g, r, 0, 2 * H, w, GH * 16, acc);
              staged_tile<MR, NP>(g, r, 3 * H, 4 * H, w + (size_t)2 * H * 16, GH * 16, acc);
            } else {
              staged_tile<MR, NP>(g, r, 0, GH, w, GH * 16, acc);
            }
            for (int m = 0; m < MR; ++m) for (int q = 0; q < NP; ++q) store(out + m * Ip + 16 * q, acc[m][q]);
          };
          with_constant<4>(np, run);
        }
      });
    }
  };
  const int per_group = 2 * C + 1, groups = (T + C - 1) / C;
  auto run = [=](int phase, int u) {
    const int group = phase / per_group, within = phase % per_group;
    const int first = group * C, last = std::min(T, first + C);
    if (within == 2 * (last - first)) return accumulate(first, last, u);
    const BackStep s = step_args(first + within / 2);
    if (within % 2 == 0) {
      for (int sub = 0; sub < W / 16; ++sub) GradOf<Cell>::type::gates(s, u * (W / 16) + sub);
      pack_operands(first + within / 2, u);
    } else if (W == 64) {
      for_row_tiles_greedy<kTileRows>(B, [&](auto mr, int r) { backward_matmul_rows<Cell, decltype(mr)::value, 4>(s, u, r, wb_p); });
    } else {
      for_row_tiles_greedy<kTileRowsNarrow>(B, [&](auto mr, int r) { backward_matmul_rows<Cell, decltype(mr)::value, 1>(s, u, r, wb_p); });
    }
  };
  RunPhases(pool, threads, std::make_shared<Phases>(2 * T + groups, U, run), scratch);
  return ffi::Error::Success();
}

}  // namespace

#define JAXRNN_FORWARD_ARGS                         \
  ffi::Ffi::Bind()                                  \
      .Ctx<ffi::ThreadPool>()                       \
      .Arg<ffi::Buffer<ffi::F32>>() /* x */         \
      .Arg<ffi::Buffer<ffi::F32>>() /* wpi */       \
      .Arg<ffi::Buffer<ffi::F32>>() /* bias */      \
      .Arg<ffi::Buffer<ffi::F32>>() /* wp */        \
      .Arg<ffi::Buffer<ffi::F32>>() /* state0 */    \
      .Arg<ffi::Buffer<ffi::F32>>() /* valid */     \
      .Attr<bool>("reverse")                        \
      .Attr<int64_t>("units")                       \
      .Attr<int64_t>("threads")

#define JAXRNN_BACKWARD_ARGS                        \
  ffi::Ffi::Bind()                                  \
      .Ctx<ffi::ThreadPool>()                       \
      .Arg<ffi::Buffer<ffi::F32>>() /* z */         \
      .Arg<ffi::Buffer<ffi::F32>>() /* states */    \
      .Arg<ffi::Buffer<ffi::F32>>() /* state0 */    \
      .Arg<ffi::Buffer<ffi::F32>>() /* d_out */     \
      .Arg<ffi::Buffer<ffi::F32>>() /* d_state_n */ \
      .Arg<ffi::Buffer<ffi::F32>>() /* valid */     \
      .Arg<ffi::Buffer<ffi::F32>>() /* wb */        \
      .Arg<ffi::Buffer<ffi::F32>>() /* x */         \
      .Arg<ffi::Buffer<ffi::F32>>() /* wbi */       \
      .Attr<bool>("reverse")                        \
      .Attr<int64_t>("units")                       \
      .Attr<int64_t>("threads")                     \
      .Ret<ffi::Buffer<ffi::F32>>() /* d_wih_t */   \
      .Ret<ffi::Buffer<ffi::F32>>() /* d_whh_t */   \
      .Ret<ffi::Buffer<ffi::F32>>() /* d_bias */    \
      .Ret<ffi::Buffer<ffi::F32>>() /* dx */        \
      .Ret<ffi::Buffer<ffi::F32>>() /* d_state0 */

// Per cell: inference (out, state_n), training (states, z) and backward (d_wih_t, d_whh_t, d_bias, dx,
// d_state0).
#define JAXRNN_CELL(name, Cell)                                                                               \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_##name##_forward, ForwardInference<Cell>,                              \
                                JAXRNN_FORWARD_ARGS.Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()); \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_##name##_forward_train, ForwardTrain<Cell>,                            \
                                JAXRNN_FORWARD_ARGS.Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()); \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_##name##_backward, Backward<Cell>, JAXRNN_BACKWARD_ARGS);

using RnnTanh = Rnn<Tanh>;
using RnnRelu = Rnn<Relu>;
JAXRNN_CELL(lstm, Lstm)
JAXRNN_CELL(gru, Gru)
JAXRNN_CELL(rnn_tanh, RnnTanh)
JAXRNN_CELL(rnn_relu, RnnRelu)
