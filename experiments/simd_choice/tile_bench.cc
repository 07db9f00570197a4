// Which instruction-set layer for jaxrnn/kernels/recurrence_cpu.cc: GCC vector extensions (as now),
// hand-written AVX2/FMA intrinsics, Highway (static dispatch) or xsimd. Each variant implements
//   A. the kernel's register tile: C[MR][16] += sum_k A[m, k] W[k, 0:16] (MR = 6 rows, 16 columns =
//      kParts native vectors, accumulators in registers, k loop unrolled by 2, prefetch 8 rows ahead),
//      over 64 (K, 16) weight panels x 11 row tiles of a 64-row batch;
//   B. sigmoid and tanh over an array, with the kernel's exp_v / sigmoid_v / tanh_v formulas,
// in the same operation order, so results must be bit-identical to variant 1.
//
// Build everything (and main):      g++ -O3 -std=c++17 -march=native -mno-avx512f -ffp-contract=fast tile_bench.cc
// One variant's code only (-c):     ... -DONLY_VARIANT=1|2|3|4 -c     (for compile times / cross builds)
#include <cstddef>
#include <cstdint>
#include <cstring>

#ifndef ONLY_VARIANT
#define ONLY_VARIANT 0
#endif
#define WANT(n) (ONLY_VARIANT == 0 || ONLY_VARIANT == (n))

constexpr int kPrefetchRows = 8;

// The exported interface of every variant.
#define DECLARE_VARIANT(ns)                                                                      \
  namespace ns {                                                                                 \
  void gemm(int K, int B, int P, const float* A, const float* W, float* C);                      \
  void sigmoid(const float* x, float* y, size_t n);                                              \
  void tanh(const float* x, float* y, size_t n);                                                 \
  }
DECLARE_VARIANT(gv)
DECLARE_VARIANT(intr)
DECLARE_VARIANT(hw)
DECLARE_VARIANT(xs)

// The driver shared by all variants: panels outer (each (K, 16) panel read once from L2 and reused by
// the 11 row tiles while in L1), tiles of 6 rows inner, C is (B, 16 P) row-major.
#define DEFINE_GEMM_DRIVER                                                                       \
  void gemm(int K, int B, int P, const float* A, const float* W, float* C) {                     \
    const int ldc = 16 * P;                                                                      \
    for (int p = 0; p < P; ++p) {                                                                \
      const float* w = W + (size_t)p * K * 16;                                                   \
      for (int m0 = 0; m0 < B; m0 += 6) {                                                        \
        const float* a = A + (size_t)m0 * K;                                                     \
        float* c = C + (size_t)m0 * ldc + 16 * p;                                                \
        switch (B - m0 < 6 ? B - m0 : 6) {                                                       \
          case 6: tile<6>(K, a, K, w, c, ldc); break;                                            \
          case 5: tile<5>(K, a, K, w, c, ldc); break;                                            \
          case 4: tile<4>(K, a, K, w, c, ldc); break;                                            \
          case 3: tile<3>(K, a, K, w, c, ldc); break;                                            \
          case 2: tile<2>(K, a, K, w, c, ldc); break;                                            \
          default: tile<1>(K, a, K, w, c, ldc); break;                                           \
        }                                                                                        \
      }                                                                                          \
    }                                                                                            \
  }

// ================================================================================================
// 1. GCC vector extensions, copied from the kernel's instruction-set layer (V = kParts native vectors)
// ================================================================================================
#if WANT(1)
namespace gv {
#if defined(__AVX512F__)
constexpr int kNative = 16;
#elif defined(__AVX__)
constexpr int kNative = 8;
#else
constexpr int kNative = 4;
#endif
constexpr int kLanes = 16, kParts = kLanes / kNative;
typedef float NativeF __attribute__((vector_size(4 * kNative)));
typedef int32_t NativeI __attribute__((vector_size(4 * kNative)));
struct V { NativeF part[kParts]; };
struct VI { NativeI part[kParts]; };
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
JAXRNN_INLINE VI to_int(V a) { JAXRNN_PARTWISE(VI, __builtin_convertvector(a.part[i], NativeI)); }
typedef float NativeFu __attribute__((vector_size(4 * kNative), aligned(4), may_alias));
JAXRNN_INLINE V load(const float* p) { JAXRNN_PARTWISE(V, *(const NativeFu*)(p + i * kNative)); }
JAXRNN_INLINE void store(float* p, V v) {
  for (int i = 0; i < kParts; ++i) *(NativeFu*)(p + i * kNative) = v.part[i];
}
JAXRNN_INLINE NativeF splat_native(float a) { return a - NativeF{}; }
JAXRNN_INLINE V splat(float a) { JAXRNN_PARTWISE(V, splat_native(a)); }
JAXRNN_INLINE V zero() { return splat(0.0f); }
JAXRNN_INLINE V one() { return splat(1.0f); }
JAXRNN_INLINE V fmadd(V a, V b, V c) { return a * b + c; }
JAXRNN_INLINE V fnmadd(V a, V b, V c) { return c - a * b; }
JAXRNN_INLINE V vmax(V a, V b) { return select(a > b, a, b); }
JAXRNN_INLINE V vmin(V a, V b) { return select(a < b, a, b); }
JAXRNN_INLINE V bits_and(V a, int32_t m) { JAXRNN_PARTWISE(V, (NativeF)((NativeI)a.part[i] & m)); }
JAXRNN_INLINE V bits_or(V a, V b) { JAXRNN_PARTWISE(V, (NativeF)((NativeI)a.part[i] | (NativeI)b.part[i])); }
JAXRNN_INLINE V vabs(V x) { return bits_and(x, 0x7fffffff); }
JAXRNN_INLINE V round_nearest(V x) {
  const V magic = splat(12582912.0f);
  return (x + magic) - magic;
}
JAXRNN_INLINE V pow2(V n) {
  const VI e = to_int(n);
  JAXRNN_PARTWISE(V, (NativeF)((e.part[i] + 127) << 23));
}
JAXRNN_INLINE V exp_v(V x) {
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
  const V half = round_nearest(n * splat(0.5f) - splat(0.25f));
  return p * pow2(half) * pow2(n - half);
}
JAXRNN_INLINE V sigmoid_v(V x) { return one() / (one() + exp_v(zero() - x)); }
JAXRNN_INLINE V tanh_v(V x) {
  const V ax = vabs(x);
  const V e = exp_v(ax * splat(-2.0f));
  V t = (one() - e) / (one() + e);
  const V x2 = x * x;
  const V small = ax * fmadd(x2, fmadd(x2, splat(2.f / 15.f), splat(-1.f / 3.f)), one());
  t = select(ax < splat(0.004f), small, t);
  return bits_or(t, bits_and(x, (int32_t)0x80000000));
}

template <int MR>
inline void tile(int K, const float* a, int lda, const float* w, float* cp, int ldc) {
  NativeF c[MR][kParts];
  for (int m = 0; m < MR; ++m)
    for (int p = 0; p < kParts; ++p) c[m][p] = *(const NativeFu*)(cp + m * ldc + p * kNative);
#pragma GCC unroll 2
  for (int k = 0; k < K; ++k) {
    NativeF wk[kParts];
    __builtin_prefetch(w + (k + kPrefetchRows) * 16);
    for (int p = 0; p < kParts; ++p) wk[p] = *(const NativeFu*)(w + k * 16 + p * kNative);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const NativeF am = splat_native(a[m * lda + k]);
#pragma GCC unroll 16
      for (int p = 0; p < kParts; ++p) c[m][p] += am * wk[p];
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int p = 0; p < kParts; ++p) *(NativeFu*)(cp + m * ldc + p * kNative) = c[m][p];
}
DEFINE_GEMM_DRIVER
void sigmoid(const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; i += 16) store(y + i, sigmoid_v(load(x + i)));
}
void tanh(const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; i += 16) store(y + i, tanh_v(load(x + i)));
}
}  // namespace gv
#endif

// ================================================================================================
// 2. Hand-written AVX2/FMA intrinsics (x86 only): 16 floats = two __m256
// ================================================================================================
#if WANT(2)
#include <immintrin.h>
namespace intr {
static inline __attribute__((always_inline)) __m256 pow2(__m256 n) {
  const __m256i e = _mm256_cvttps_epi32(n);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23));
}
static inline __attribute__((always_inline)) __m256 round_nearest(__m256 x) {
  const __m256 magic = _mm256_set1_ps(12582912.0f);
  return _mm256_sub_ps(_mm256_add_ps(x, magic), magic);
}
static inline __attribute__((always_inline)) __m256 exp8(__m256 x) {
  // vmax(c, x) = c > x ? c : x and vmin likewise: exactly maxps/minps (second operand on NaN)
  x = _mm256_min_ps(_mm256_set1_ps(89.0f), _mm256_max_ps(_mm256_set1_ps(-104.0f), x));
  const __m256 n = round_nearest(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)));
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256 half =
      round_nearest(_mm256_sub_ps(_mm256_mul_ps(n, _mm256_set1_ps(0.5f)), _mm256_set1_ps(0.25f)));
  return _mm256_mul_ps(_mm256_mul_ps(p, pow2(half)), pow2(_mm256_sub_ps(n, half)));
}
static inline __attribute__((always_inline)) __m256 sigmoid8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}
static inline __attribute__((always_inline)) __m256 tanh8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 ax = _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)));
  const __m256 e = exp8(_mm256_mul_ps(ax, _mm256_set1_ps(-2.0f)));
  __m256 t = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
  const __m256 x2 = _mm256_mul_ps(x, x);
  const __m256 small = _mm256_mul_ps(
      ax, _mm256_fmadd_ps(x2, _mm256_fmadd_ps(x2, _mm256_set1_ps(2.f / 15.f), _mm256_set1_ps(-1.f / 3.f)), one));
  t = _mm256_blendv_ps(t, small, _mm256_cmp_ps(ax, _mm256_set1_ps(0.004f), _CMP_LT_OQ));
  return _mm256_or_ps(t, _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000))));
}
// kSet1: broadcast with _mm256_set1_ps(a[i]) instead of _mm256_broadcast_ss(&a[i]) (see README: with
// g++ 12 the pointer-taking builtin keeps the accumulator array in memory, a store per FMA pair).
template <int MR, bool kSet1 = false>
inline void tile(int K, const float* a, int lda, const float* w, float* cp, int ldc) {
  __m256 c[MR][2];
  for (int m = 0; m < MR; ++m) {
    c[m][0] = _mm256_loadu_ps(cp + m * ldc);
    c[m][1] = _mm256_loadu_ps(cp + m * ldc + 8);
  }
#pragma GCC unroll 2
  for (int k = 0; k < K; ++k) {
    _mm_prefetch((const char*)(w + (k + kPrefetchRows) * 16), _MM_HINT_T0);
    const __m256 w0 = _mm256_loadu_ps(w + k * 16), w1 = _mm256_loadu_ps(w + k * 16 + 8);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m256 am = kSet1 ? _mm256_set1_ps(a[m * lda + k]) : _mm256_broadcast_ss(a + m * lda + k);
      c[m][0] = _mm256_fmadd_ps(am, w0, c[m][0]);
      c[m][1] = _mm256_fmadd_ps(am, w1, c[m][1]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    _mm256_storeu_ps(cp + m * ldc, c[m][0]);
    _mm256_storeu_ps(cp + m * ldc + 8, c[m][1]);
  }
}
DEFINE_GEMM_DRIVER
namespace set1 {
template <int MR>
inline void tile(int K, const float* a, int lda, const float* w, float* cp, int ldc) {
  intr::tile<MR, true>(K, a, lda, w, cp, ldc);
}
DEFINE_GEMM_DRIVER
}  // namespace set1
void gemm_set1(int K, int B, int P, const float* A, const float* W, float* C) { set1::gemm(K, B, P, A, W, C); }
void sigmoid(const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; i += 16) {
    _mm256_storeu_ps(y + i, sigmoid8(_mm256_loadu_ps(x + i)));
    _mm256_storeu_ps(y + i + 8, sigmoid8(_mm256_loadu_ps(x + i + 8)));
  }
}
void tanh(const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; i += 16) {
    _mm256_storeu_ps(y + i, tanh8(_mm256_loadu_ps(x + i)));
    _mm256_storeu_ps(y + i + 8, tanh8(_mm256_loadu_ps(x + i + 8)));
  }
}
}  // namespace intr
#endif

// ================================================================================================
// 3. Highway, static dispatch (the target the compile flags give: AVX2 here, NEON on aarch64)
// ================================================================================================
#if WANT(3)
#include <hwy/cache_control.h>
#include <hwy/highway.h>
HWY_BEFORE_NAMESPACE();
namespace hwy {
namespace HWY_NAMESPACE {
namespace jr {
namespace hn = hwy::HWY_NAMESPACE;
using D = hn::ScalableTag<float>;
using DI = hn::RebindToSigned<D>;
using VF = hn::Vec<D>;
constexpr size_t kN = hn::MaxLanes(D());
constexpr int kParts = 16 / (int)kN;
static_assert(kParts >= 1 && 16 % kN == 0, "16 lanes must be whole vectors");

// vmax / vmin as compare + select, like the kernel (hn::Min/Max leave NaN handling to the target)
HWY_INLINE VF vmax(VF a, VF b) { return hn::IfThenElse(hn::Gt(a, b), a, b); }
HWY_INLINE VF vmin(VF a, VF b) { return hn::IfThenElse(hn::Lt(a, b), a, b); }
HWY_INLINE VF round_nearest(VF x) {
  const D d;
  const VF magic = hn::Set(d, 12582912.0f);
  return hn::Sub(hn::Add(x, magic), magic);
}
HWY_INLINE VF pow2(VF n) {
  const D d;
  const DI di;
  const auto e = hn::ConvertTo(di, n);
  return hn::BitCast(d, hn::ShiftLeft<23>(hn::Add(e, hn::Set(di, 127))));
}
HWY_INLINE VF exp_v(VF x) {
  const D d;
  x = vmin(hn::Set(d, 89.0f), vmax(hn::Set(d, -104.0f), x));
  const VF n = round_nearest(hn::Mul(x, hn::Set(d, 1.44269504088896341f)));
  VF r = hn::NegMulAdd(n, hn::Set(d, 0.693359375f), x);
  r = hn::NegMulAdd(n, hn::Set(d, -2.12194440e-4f), r);
  VF p = hn::Set(d, 1.9875691500E-4f);
  p = hn::MulAdd(p, r, hn::Set(d, 1.3981999507E-3f));
  p = hn::MulAdd(p, r, hn::Set(d, 8.3334519073E-3f));
  p = hn::MulAdd(p, r, hn::Set(d, 4.1665795894E-2f));
  p = hn::MulAdd(p, r, hn::Set(d, 1.6666665459E-1f));
  p = hn::MulAdd(p, r, hn::Set(d, 5.0000001201E-1f));
  p = hn::MulAdd(p, hn::Mul(r, r), hn::Add(r, hn::Set(d, 1.0f)));
  const VF half = round_nearest(hn::Sub(hn::Mul(n, hn::Set(d, 0.5f)), hn::Set(d, 0.25f)));
  return hn::Mul(hn::Mul(p, pow2(half)), pow2(hn::Sub(n, half)));
}
HWY_INLINE VF sigmoid_v(VF x) {
  const D d;
  const VF one = hn::Set(d, 1.0f);
  return hn::Div(one, hn::Add(one, exp_v(hn::Sub(hn::Zero(d), x))));
}
HWY_INLINE VF tanh_v(VF x) {
  const D d;
  const DI di;
  const VF one = hn::Set(d, 1.0f);
  const VF ax = hn::BitCast(d, hn::And(hn::BitCast(di, x), hn::Set(di, 0x7fffffff)));
  const VF e = exp_v(hn::Mul(ax, hn::Set(d, -2.0f)));
  VF t = hn::Div(hn::Sub(one, e), hn::Add(one, e));
  const VF x2 = hn::Mul(x, x);
  const VF small =
      hn::Mul(ax, hn::MulAdd(x2, hn::MulAdd(x2, hn::Set(d, 2.f / 15.f), hn::Set(d, -1.f / 3.f)), one));
  t = hn::IfThenElse(hn::Lt(ax, hn::Set(d, 0.004f)), small, t);
  return hn::BitCast(d, hn::Or(hn::BitCast(di, t), hn::And(hn::BitCast(di, x), hn::Set(di, (int32_t)0x80000000))));
}
template <int MR>
HWY_INLINE void tile(int K, const float* a, int lda, const float* w, float* cp, int ldc) {
  const D d;
  VF c[MR][kParts];
  for (int m = 0; m < MR; ++m)
    for (int p = 0; p < kParts; ++p) c[m][p] = hn::LoadU(d, cp + m * ldc + p * kN);
#pragma GCC unroll 2
  for (int k = 0; k < K; ++k) {
    hwy::Prefetch(w + (k + kPrefetchRows) * 16);
    VF wk[kParts];
    for (int p = 0; p < kParts; ++p) wk[p] = hn::LoadU(d, w + k * 16 + p * kN);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const VF am = hn::Set(d, a[m * lda + k]);
#pragma GCC unroll 16
      for (int p = 0; p < kParts; ++p) c[m][p] = hn::MulAdd(am, wk[p], c[m][p]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int p = 0; p < kParts; ++p) hn::StoreU(c[m][p], d, cp + m * ldc + p * kN);
}
DEFINE_GEMM_DRIVER
void sigmoid(const float* x, float* y, size_t n) {
  const D d;
  for (size_t i = 0; i < n; i += 16)
    for (int p = 0; p < kParts; ++p) hn::StoreU(sigmoid_v(hn::LoadU(d, x + i + p * kN)), d, y + i + p * kN);
}
void tanh(const float* x, float* y, size_t n) {
  const D d;
  for (size_t i = 0; i < n; i += 16)
    for (int p = 0; p < kParts; ++p) hn::StoreU(tanh_v(hn::LoadU(d, x + i + p * kN)), d, y + i + p * kN);
}
}  // namespace jr
}  // namespace HWY_NAMESPACE
}  // namespace hwy
HWY_AFTER_NAMESPACE();
namespace hw {
void gemm(int K, int B, int P, const float* A, const float* W, float* C) {
  hwy::HWY_NAMESPACE::jr::gemm(K, B, P, A, W, C);
}
void sigmoid(const float* x, float* y, size_t n) { hwy::HWY_NAMESPACE::jr::sigmoid(x, y, n); }
void tanh(const float* x, float* y, size_t n) { hwy::HWY_NAMESPACE::jr::tanh(x, y, n); }
const char* target_name() { return hwy::TargetName(HWY_TARGET); }
}  // namespace hw
#endif

// ================================================================================================
// 4. xsimd (xsimd::default_arch: fma3<avx2> with these flags, neon64 on aarch64)
// ================================================================================================
#if WANT(4)
#include <xsimd/xsimd.hpp>
namespace xs {
using A = xsimd::default_arch;
using B = xsimd::batch<float, A>;
using BI = xsimd::batch<int32_t, A>;
constexpr int kN = (int)B::size, kParts = 16 / kN;
static_assert(kParts >= 1 && 16 % kN == 0, "16 lanes must be whole vectors");
#define XS_INLINE [[gnu::always_inline]] inline
XS_INLINE B vmax(B a, B b) { return xsimd::select(a > b, a, b); }  // not xsimd::max: NaN rules differ per target
XS_INLINE B vmin(B a, B b) { return xsimd::select(a < b, a, b); }
XS_INLINE B round_nearest(B x) {
  const B magic(12582912.0f);
  return (x + magic) - magic;
}
XS_INLINE B pow2(B n) {
  const BI e = xsimd::to_int(n);
  return xsimd::bitwise_cast<B>((e + BI(127)) << 23);
}
XS_INLINE B exp_v(B x) {
  x = vmin(B(89.0f), vmax(B(-104.0f), x));
  const B n = round_nearest(x * B(1.44269504088896341f));
  B r = xsimd::fnma(n, B(0.693359375f), x);
  r = xsimd::fnma(n, B(-2.12194440e-4f), r);
  B p(1.9875691500E-4f);
  p = xsimd::fma(p, r, B(1.3981999507E-3f));
  p = xsimd::fma(p, r, B(8.3334519073E-3f));
  p = xsimd::fma(p, r, B(4.1665795894E-2f));
  p = xsimd::fma(p, r, B(1.6666665459E-1f));
  p = xsimd::fma(p, r, B(5.0000001201E-1f));
  p = xsimd::fma(p, r * r, r + B(1.0f));
  const B half = round_nearest(n * B(0.5f) - B(0.25f));
  return p * pow2(half) * pow2(n - half);
}
XS_INLINE B sigmoid_v(B x) { return B(1.0f) / (B(1.0f) + exp_v(B(0.0f) - x)); }
XS_INLINE B tanh_v(B x) {
  const B ax = xsimd::bitwise_cast<B>(xsimd::bitwise_cast<BI>(x) & BI(0x7fffffff));
  const B e = exp_v(ax * B(-2.0f));
  B t = (B(1.0f) - e) / (B(1.0f) + e);
  const B x2 = x * x;
  const B small = ax * xsimd::fma(x2, xsimd::fma(x2, B(2.f / 15.f), B(-1.f / 3.f)), B(1.0f));
  t = xsimd::select(ax < B(0.004f), small, t);
  return xsimd::bitwise_cast<B>(xsimd::bitwise_cast<BI>(t) | (xsimd::bitwise_cast<BI>(x) & BI((int32_t)0x80000000)));
}
template <int MR>
inline void tile(int K, const float* a, int lda, const float* w, float* cp, int ldc) {
  B c[MR][kParts];
  for (int m = 0; m < MR; ++m)
    for (int p = 0; p < kParts; ++p) c[m][p] = B::load_unaligned(cp + m * ldc + p * kN);
#pragma GCC unroll 2
  for (int k = 0; k < K; ++k) {
    __builtin_prefetch(w + (k + kPrefetchRows) * 16);
    B wk[kParts];
    for (int p = 0; p < kParts; ++p) wk[p] = B::load_unaligned(w + k * 16 + p * kN);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const B am(a[m * lda + k]);
#pragma GCC unroll 16
      for (int p = 0; p < kParts; ++p) c[m][p] = xsimd::fma(am, wk[p], c[m][p]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int p = 0; p < kParts; ++p) c[m][p].store_unaligned(cp + m * ldc + p * kN);
}
DEFINE_GEMM_DRIVER
void sigmoid(const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; i += 16)
    for (int p = 0; p < kParts; ++p) sigmoid_v(B::load_unaligned(x + i + p * kN)).store_unaligned(y + i + p * kN);
}
void tanh(const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; i += 16)
    for (int p = 0; p < kParts; ++p) tanh_v(B::load_unaligned(x + i + p * kN)).store_unaligned(y + i + p * kN);
}
const char* arch_name() { return A::name(); }
}  // namespace xs
#endif

// ================================================================================================
// Harness (full build only): correctness against variant 1, then interleaved timings.
// ================================================================================================
#if ONLY_VARIANT == 0
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace hw { const char* target_name(); }
namespace intr { void gemm_set1(int K, int B, int P, const float* A, const float* W, float* C); }
namespace xs { const char* arch_name(); }

struct Variant {
  const char* name;
  void (*gemm)(int, int, int, const float*, const float*, float*);
  void (*sigmoid)(const float*, float*, size_t);
  void (*tanh)(const float*, float*, size_t);
};
static const Variant kVariants[] = {
    {"gcc-vector", gv::gemm, gv::sigmoid, gv::tanh},
    {"intrinsics", intr::gemm, intr::sigmoid, intr::tanh},
    {"highway", hw::gemm, hw::sigmoid, hw::tanh},
    {"xsimd", xs::gemm, xs::sigmoid, xs::tanh},
    {"intrinsics, _mm256_set1_ps", intr::gemm_set1, intr::sigmoid, intr::tanh},
};
constexpr int kNV = 5;

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
static const float kSpecials[] = {std::numeric_limits<float>::quiet_NaN(), INFINITY, -INFINITY, -0.0f, 0.0f,
                                  1e-40f, -1e-40f, 100.0f, -100.0f};
static std::vector<float> random_with_specials(size_t n, std::mt19937& rng, float lo, float hi, bool raw_bits) {
  std::uniform_real_distribution<float> u(lo, hi), s(-0.01f, 0.01f);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    const unsigned kind = rng() % 16;
    if (kind == 0) v[i] = kSpecials[rng() % (sizeof kSpecials / sizeof *kSpecials)];
    else if (kind == 1) v[i] = s(rng);  // small |x|: the tanh series
    else if (kind == 2 && raw_bits) { uint32_t b = rng(); std::memcpy(&v[i], &b, 4); }  // any float, NaN payloads too
    else v[i] = u(rng);
  }
  for (size_t i = 0; i < sizeof kSpecials / sizeof *kSpecials && i < n; ++i) v[i] = kSpecials[i];
  return v;
}
static size_t count_bit_diffs(const std::vector<float>& a, const std::vector<float>& b) {
  size_t d = 0;
  for (size_t i = 0; i < a.size(); ++i) d += std::memcmp(&a[i], &b[i], 4) != 0;
  return d;
}
struct Stat { double med, lo, hi; };
static Stat stats(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v.front(), v.back()};
}

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 9;
  std::printf("highway target: %s, xsimd arch: %s, reps: %d\n\n", hw::target_name(), xs::arch_name(), reps);
  std::mt19937 rng(1234);
  const int B = 64, P = 64;
  const int Ks[2] = {320, 640};
  const size_t NM = 1 << 20;

  // ---- C. bit-identity against variant 1 ----
  bool same[kNV] = {true, true, true, true, true};
  size_t diffs[kNV][3] = {};
  for (int K : Ks) {
    // finite data (the benchmark's) and data with NaN, +-Inf, -0, subnormals, +-100 mixed in
    for (int special = 0; special < 2; ++special) {
      auto A = special ? random_with_specials((size_t)B * K, rng, -1, 1, false) : random_with_specials(0, rng, 0, 0, false);
      auto W = special ? random_with_specials((size_t)P * K * 16, rng, -1, 1, false) : A;
      auto C0 = special ? random_with_specials((size_t)B * 16 * P, rng, -1, 1, false) : A;
      if (!special) {
        std::uniform_real_distribution<float> u(-1, 1);
        A.resize((size_t)B * K); W.resize((size_t)P * K * 16); C0.resize((size_t)B * 16 * P);
        for (auto* v : {&A, &W, &C0}) for (auto& x : *v) x = u(rng);
      }
      std::vector<float> ref;
      for (int v = 0; v < kNV; ++v) {
        auto C = C0;
        kVariants[v].gemm(K, B, P, A.data(), W.data(), C.data());
        if (v == 0) ref = C;
        const size_t d = count_bit_diffs(C, ref);
        diffs[v][0] += d;
        same[v] = same[v] && d == 0;
      }
    }
  }
  {
    auto x = random_with_specials(NM, rng, -20, 20, true);
    std::vector<float> rs(NM), rt(NM), ys(NM), yt(NM);
    for (int v = 0; v < kNV; ++v) {
      kVariants[v].sigmoid(x.data(), ys.data(), NM);
      kVariants[v].tanh(x.data(), yt.data(), NM);
      if (v == 0) { rs = ys; rt = yt; }
      diffs[v][1] = count_bit_diffs(ys, rs);
      diffs[v][2] = count_bit_diffs(yt, rt);
      same[v] = same[v] && diffs[v][1] == 0 && diffs[v][2] == 0;
    }
    // sanity of the reference itself on the special inputs
    std::printf("reference on specials (x: sigmoid, tanh):\n");
    for (int i = 0; i < 9; ++i) std::printf("  %g: %g, %g\n", x[i], rs[i], rt[i]);
    double es = 0, et = 0;
    for (size_t i = 0; i < NM; ++i)
      if (std::isfinite(x[i]) && std::fabs(x[i]) < 50) {
        const double s = 1 / (1 + std::exp(-(double)x[i])), t = std::tanh((double)x[i]);
        if (s > 1e-30) es = std::max(es, std::fabs(rs[i] - s) / s);
        if (t != 0) et = std::max(et, std::fabs(rt[i] - t) / std::fabs(t));
      }
    std::printf("  max relative error vs double: sigmoid %.2e, tanh %.2e\n\n", es, et);
  }
  for (int v = 0; v < kNV; ++v)
    std::printf("bit-identity %-11s: gemm diffs %zu, sigmoid diffs %zu, tanh diffs %zu -> %s\n", kVariants[v].name,
                diffs[v][0], diffs[v][1], diffs[v][2], same[v] ? "identical" : "DIFFERENT");
  std::printf("\n");

  // ---- A. GEMM tile timings, interleaved ----
  Stat gstat[2][kNV];
  for (int ki = 0; ki < 2; ++ki) {
    const int K = Ks[ki];
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<float> A((size_t)B * K), W((size_t)P * K * 16), C((size_t)B * 16 * P, 0.0f);
    for (auto* v : {&A, &W}) for (auto& x : *v) x = u(rng);
    const double flops = 2.0 * B * K * 16 * P;
    // calibrate: calls per sample so a sample takes ~60 ms with variant 1
    int calls = 1;
    for (;;) {
      const double t0 = now();
      for (int i = 0; i < calls; ++i) kVariants[0].gemm(K, B, P, A.data(), W.data(), C.data());
      if (now() - t0 > 0.06) break;
      calls *= 2;
    }
    std::vector<double> g[kNV];
    for (int r = 0; r < reps; ++r)
      for (int v0 = 0; v0 < kNV; ++v0) {
        const int v = (v0 + r) % kNV;  // rotate the order each repetition
        std::fill(C.begin(), C.end(), 0.0f);
        kVariants[v].gemm(K, B, P, A.data(), W.data(), C.data());  // warm
        const double t0 = now();
        for (int i = 0; i < calls; ++i) kVariants[v].gemm(K, B, P, A.data(), W.data(), C.data());
        g[v].push_back(flops * calls / (now() - t0) * 1e-9);
      }
    for (int v = 0; v < kNV; ++v) gstat[ki][v] = stats(g[v]);
  }

  // ---- B. math timings, interleaved ----
  Stat mstat[2][kNV];
  {
    std::uniform_real_distribution<float> u(-10, 10);
    std::vector<float> x(NM), y(NM);
    for (auto& e : x) e = u(rng);
    for (int f = 0; f < 2; ++f) {
      const int calls = 40;
      std::vector<double> t[kNV];
      for (int r = 0; r < reps; ++r)
        for (int v0 = 0; v0 < kNV; ++v0) {
          const int v = (v0 + r) % kNV;
          auto fn = f == 0 ? kVariants[v].sigmoid : kVariants[v].tanh;
          fn(x.data(), y.data(), NM);
          const double t0 = now();
          for (int i = 0; i < calls; ++i) fn(x.data(), y.data(), NM);
          t[v].push_back((now() - t0) / calls / NM * 1e9);
        }
      for (int v = 0; v < kNV; ++v) mstat[f][v] = stats(t[v]);
    }
  }

  std::printf("| variant | A: GFLOP/s K=320 | A: GFLOP/s K=640 | B: sigmoid ns/elem | B: tanh ns/elem | bit-identical to gcc-vector |\n");
  std::printf("|---|---|---|---|---|---|\n");
  for (int v = 0; v < kNV; ++v) {
    std::printf("| %s | %.1f (%.1f-%.1f) | %.1f (%.1f-%.1f) | %.3f (%.3f-%.3f) | %.3f (%.3f-%.3f) | %s |\n", kVariants[v].name,
                gstat[0][v].med, gstat[0][v].lo, gstat[0][v].hi, gstat[1][v].med, gstat[1][v].lo, gstat[1][v].hi,
                mstat[0][v].med, mstat[0][v].lo, mstat[0][v].hi, mstat[1][v].med, mstat[1][v].lo, mstat[1][v].hi,
                same[v] ? "yes" : "no");
  }
  return 0;
}
#endif
