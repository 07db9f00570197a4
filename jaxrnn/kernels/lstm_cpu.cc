// LSTM recurrence for x86-64 CPUs with AVX-512, called from XLA through the FFI (jaxrnn.kernels.cpu).
//
// One call runs a whole sequence in one direction: per step, x_t @ W_ih^T + h_{t-1} @ W_hh^T in one
// set of accumulators, with the bias and the four gates fused into the epilogue (torch gate order
// i, f, g, o), so each step is one pass over the packed weights and nothing is written but the
// step's results. Work is split over up to `threads` threads by 16-unit blocks (all four gates of a
// unit in one block): the calling thread and helper tasks on XLA's intra-op thread pool claim blocks
// step by step, and a step starts when every block of the one before is done. The backward pass
// (jaxrnn_lstm_backward) runs the recurrence's gradient the same way.
//
// Shapes (T steps, B batch, I inputs, H hidden, a multiple of 16, U = H / 16 unit blocks):
//   x      (T, B, I)   inputs
//   wpi    (U, I, 64)  W_ih^T packed: wpi[u, k, g * 16 + j] = W_ih[g * H + 16 u + j, k]
//   bias   (4H)        b_ih + b_hh
//   wp     (U, H, 64)  W_hh^T packed the same way
//   h0, c0 (B, H)      initial state
//   valid  (T, B)      1 on real steps, 0 on padding (state carried, output zero)
// Results (jaxrnn_lstm_forward, inference): out (T, B, H), zero on padding; h_n, c_n (B, H).
// Results (jaxrnn_lstm_forward_train): out; hs, cs (T, B, H), the state after each step (carried
// through padding); z (T, B, 4H), the gate pre-activations, for the backward pass.
#include <immintrin.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

inline __m512 exp512(__m512 x) {
  // exp(x) = 2^n * p(r), r = x - n ln2, |r| <= ln2/2; degree-6 polynomial (Cephes expf coefficients)
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  __m512 r2 = _mm512_mul_ps(r, r);
  p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}
inline __m512 sigmoid512(__m512 x) {
  __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), x));
  return _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}
inline __m512 tanh512(__m512 x) {
  // tanh(x) = sign(x) * (1 - e) / (1 + e), e = exp(-2|x|)
  __m512 ax = _mm512_abs_ps(x);
  __m512 e = exp512(_mm512_mul_ps(ax, _mm512_set1_ps(-2.0f)));
  __m512 t = _mm512_div_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), e), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
  // small |x|: use x - x^3/3 + 2x^5/15 to keep relative accuracy
  __m512 x2 = _mm512_mul_ps(x, x);
  __m512 small = _mm512_mul_ps(ax, _mm512_fmadd_ps(x2, _mm512_fmadd_ps(x2, _mm512_set1_ps(2.f / 15.f), _mm512_set1_ps(-1.f / 3.f)), _mm512_set1_ps(1.f)));
  __mmask16 m = _mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.004f), _CMP_LT_OQ);
  t = _mm512_mask_blend_ps(m, t, small);
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(t), _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x80000000))));
}

template <int MR>
inline void tile(int K, const float* h, int ldh, const float* wp, __m512 acc[][4], bool zero) {
  if (zero) {
    for (int m = 0; m < MR; ++m) for (int g = 0; g < 4; ++g) acc[m][g] = _mm512_setzero_ps();
  }
  for (int k = 0; k < K; ++k) {
    const float* w = wp + k * 64;
    __m512 w0 = _mm512_loadu_ps(w), w1 = _mm512_loadu_ps(w + 16), w2 = _mm512_loadu_ps(w + 32), w3 = _mm512_loadu_ps(w + 48);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      __m512 a = _mm512_set1_ps(h[m * ldh + k]);
      acc[m][0] = _mm512_fmadd_ps(a, w0, acc[m][0]);
      acc[m][1] = _mm512_fmadd_ps(a, w1, acc[m][1]);
      acc[m][2] = _mm512_fmadd_ps(a, w2, acc[m][2]);
      acc[m][3] = _mm512_fmadd_ps(a, w3, acc[m][3]);
    }
  }
}


struct Step {
  int B, H, I;
  const float* x;     // (B, I) this step's inputs
  const float* hprev;
  const float* cprev;
  const float* wpi;   // W_ih^T packed (U, I, 64)
  const float* wp;    // W_hh^T packed (U, H, 64)
  const float* bias;  // (4H) b_ih + b_hh
  const float* valid;
  float* out;
  float* hs;
  float* cs;
  float* z;  // pre-activations (4 gates), or nullptr when not kept
};

template <int MR>
void block(const Step& s, int u, int r) {
  const int H = s.H;
  __m512 acc[MR][4];
  tile<MR>(s.I, s.x + (size_t)r * s.I, s.I, s.wpi + (size_t)u * s.I * 64, acc, true);  // x_t @ W_ih^T
  tile<MR>(H, s.hprev + (size_t)r * H, H, s.wp + (size_t)u * H * 64, acc, false);   // + h_{t-1} @ W_hh^T
  for (int m = 0; m < MR; ++m) {
    const size_t row = r + m;
    const size_t gate0 = row * 4 * H + u * 16, unit0 = row * H + u * 16;
    __m512 pre[4];
    for (int q = 0; q < 4; ++q) {
      pre[q] = _mm512_add_ps(acc[m][q], _mm512_loadu_ps(s.bias + q * H + u * 16));
      if (s.z) _mm512_storeu_ps(s.z + gate0 + q * H, pre[q]);
    }
    __m512 i = sigmoid512(pre[0]), f = sigmoid512(pre[1]), g = tanh512(pre[2]), o = sigmoid512(pre[3]);
    __m512 c_old = _mm512_loadu_ps(s.cprev + unit0);
    __m512 c = _mm512_fmadd_ps(f, c_old, _mm512_mul_ps(i, g));
    __m512 h = _mm512_mul_ps(o, tanh512(c));
    if (s.valid[row] > 0.5f) {
      _mm512_storeu_ps(s.cs + unit0, c);
      _mm512_storeu_ps(s.hs + unit0, h);
      _mm512_storeu_ps(s.out + unit0, h);
    } else {
      _mm512_storeu_ps(s.cs + unit0, c_old);
      _mm512_storeu_ps(s.hs + unit0, _mm512_loadu_ps(s.hprev + unit0));
      _mm512_storeu_ps(s.out + unit0, _mm512_setzero_ps());
    }
  }
}

void unit_block(const Step& s, int u) {
  int r = 0;
  for (; r + 6 <= s.B; r += 6) block<6>(s, u, r);
  switch (s.B - r) {
    case 5: block<5>(s, u, r); break;
    case 4: block<4>(s, u, r); break;
    case 3: block<3>(s, u, r); break;
    case 2: block<2>(s, u, r); break;
    case 1: block<1>(s, u, r); break;
    default: break;
  }
}

// Spins until `counter` reaches `target`; after a while yields the core, in case the thread it waits
// for shares it (the OS may put both on one core, and a pure spin would then burn the whole slice).
inline void wait_until(const std::atomic<int64_t>& counter, int64_t target) {
  for (int spins = 0; counter.load(std::memory_order_acquire) < target; ++spins) {
    if (spins < 2000) {
      _mm_pause();
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

ffi::Error CheckGates(const char* name, ffi::Buffer<ffi::F32>& gates) {
  auto dims = gates.dimensions();
  if (dims.size() != 3 || dims[2] % 64 != 0) {
    return ffi::Error::InvalidArgument(std::string(name) + ": gates must be (T, B, 4H) with H a multiple of 16");
  }
  return ffi::Error::Success();
}

// Forward. With hs (training) every step's state goes to hs/cs and the pre-activations to z;
// without (inference) the state ping-pongs between two (h, c) pairs.
ffi::Error Forward(const char* name, ffi::ThreadPool& pool, ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& wpi,
                   ffi::Buffer<ffi::F32>& bias, ffi::Buffer<ffi::F32>& wp, ffi::Buffer<ffi::F32>& h0,
                   ffi::Buffer<ffi::F32>& c0, ffi::Buffer<ffi::F32>& valid, bool reverse, int64_t threads, float* out,
                   float* hs, float* cs, float* z, float* h_n, float* c_n) {
  auto dims = x.dimensions();
  auto state_dims = h0.dimensions();
  if (dims.size() != 3 || state_dims.size() != 2 || state_dims[1] % 16 != 0 || state_dims[0] != dims[1]) {
    return ffi::Error::InvalidArgument(std::string(name) + ": expected x (T, B, I) and h0 (B, H), H a multiple of 16");
  }
  const int T = dims[0], B = dims[1], I = dims[2], H = state_dims[1], U = H / 16;
  const size_t state = (size_t)B * H;
  auto scratch = std::make_shared<std::vector<float>>(hs ? 0 : 4 * state);
  const float *x_p = x.typed_data(), *wpi_p = wpi.typed_data(), *bias_p = bias.typed_data();
  const float *wp_p = wp.typed_data(), *h0_p = h0.typed_data(), *c0_p = c0.typed_data();
  const float* valid_p = valid.typed_data();
  float* ping_pong = scratch->data();
  auto step_args = [=](int step) {
    StateIndex at(step, T, reverse);
    const float *hprev, *cprev;
    float *h_dst, *c_dst;
    if (hs) {
      hprev = step == 0 ? h0_p : hs + at.before * state;
      cprev = step == 0 ? c0_p : cs + at.before * state;
      h_dst = hs + at.t * state;
      c_dst = cs + at.t * state;
    } else {
      float* ping = ping_pong + (step % 2) * 2 * state;        // this step writes here
      float* pong = ping_pong + ((step + 1) % 2) * 2 * state;  // the previous step wrote here
      hprev = step == 0 ? h0_p : pong;
      cprev = step == 0 ? c0_p : pong + state;
      h_dst = ping;
      c_dst = ping + state;
    }
    return Step{B, H, I, x_p + (size_t)at.t * B * I, hprev, cprev, wpi_p, wp_p, bias_p, valid_p + (size_t)at.t * B,
                out + at.t * state, h_dst, c_dst, z ? z + at.t * 4 * state : nullptr};
  };
  auto phases = std::make_shared<Phases>(T, U, [=](int step, int u) { unit_block(step_args(step), u); });
  RunPhases(pool, threads, phases, scratch);
  if (!hs) {
    const float* last = T == 0 ? nullptr : ping_pong + ((T - 1) % 2) * 2 * state;
    std::memcpy(h_n, T == 0 ? h0_p : last, state * sizeof(float));
    std::memcpy(c_n, T == 0 ? c0_p : last + state, state * sizeof(float));
  }
  return ffi::Error::Success();
}

ffi::Error LstmForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> wpi,
                       ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> wp, ffi::Buffer<ffi::F32> h0,
                       ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> valid, bool reverse, int64_t threads,
                       ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> h_n,
                       ffi::ResultBuffer<ffi::F32> c_n) {
  return Forward("jaxrnn_lstm_forward", pool, x, wpi, bias, wp, h0, c0, valid, reverse, threads, out->typed_data(),
                 nullptr, nullptr, nullptr, h_n->typed_data(), c_n->typed_data());
}

ffi::Error LstmForwardTrain(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> wpi,
                            ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> wp, ffi::Buffer<ffi::F32> h0,
                            ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> valid, bool reverse, int64_t threads,
                            ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> hs,
                            ffi::ResultBuffer<ffi::F32> cs, ffi::ResultBuffer<ffi::F32> z) {
  return Forward("jaxrnn_lstm_forward_train", pool, x, wpi, bias, wp, h0, c0, valid, reverse, threads,
                 out->typed_data(), hs->typed_data(), cs->typed_data(), z->typed_data(), nullptr, nullptr);
}

// ---- backward -------------------------------------------------------------------------------

// acc[m] = sum_k a[m, k] * w[k, 0:16] for MR rows of a (row stride lda) and a (K, 16) weight panel.
template <int MR>
inline void tile16(int K, const float* a, int lda, const float* w, __m512* acc) {
  for (int m = 0; m < MR; ++m) acc[m] = _mm512_setzero_ps();
  for (int k = 0; k < K; ++k) {
    const __m512 wk = _mm512_loadu_ps(w + k * 16);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) acc[m] = _mm512_fmadd_ps(_mm512_set1_ps(a[m * lda + k]), wk, acc[m]);
  }
}

// dh[rows, 16 u : 16 u + 16] = dz[rows] @ W_hh[:, 16 u : 16 u + 16] on valid rows (padding rows keep dh).
template <int MR>
void backward_matmul_rows(int B, int H, int u, int r, const float* dz, const float* wb, const float* valid,
                          float* dh) {
  __m512 acc[MR];
  tile16<MR>(4 * H, dz + (size_t)r * 4 * H, 4 * H, wb + (size_t)u * 4 * H * 16, acc);
  for (int m = 0; m < MR; ++m) {
    if (valid[r + m] > 0.5f) _mm512_storeu_ps(dh + (size_t)(r + m) * H + u * 16, acc[m]);
  }
}

void backward_matmul(int B, int H, int u, const float* dz, const float* wb, const float* valid, float* dh) {
  int r = 0;
  for (; r + 8 <= B; r += 8) backward_matmul_rows<8>(B, H, u, r, dz, wb, valid, dh);
  switch (B - r) {
    case 7: backward_matmul_rows<7>(B, H, u, r, dz, wb, valid, dh); break;
    case 6: backward_matmul_rows<6>(B, H, u, r, dz, wb, valid, dh); break;
    case 5: backward_matmul_rows<5>(B, H, u, r, dz, wb, valid, dh); break;
    case 4: backward_matmul_rows<4>(B, H, u, r, dz, wb, valid, dh); break;
    case 3: backward_matmul_rows<3>(B, H, u, r, dz, wb, valid, dh); break;
    case 2: backward_matmul_rows<2>(B, H, u, r, dz, wb, valid, dh); break;
    case 1: backward_matmul_rows<1>(B, H, u, r, dz, wb, valid, dh); break;
    default: break;
  }
}

// Gate gradients of one step for the 16 units of block u, every row: from the carried dh, dc (and
// this step's output gradient), writes dz (the pre-activation gradients) and dc for the step before.
// Padding rows get dz = 0 and carry dh, dc unchanged.
void backward_gates(int B, int H, int u, const float* z, const float* c_prev, const float* c, const float* d_out,
                    const float* valid, const float* dh, float* dc, float* dz) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int row = 0; row < B; ++row) {
    const size_t gate0 = (size_t)row * 4 * H + u * 16, unit0 = (size_t)row * H + u * 16;
    if (valid[row] <= 0.5f) {
      for (int q = 0; q < 4; ++q) _mm512_storeu_ps(dz + gate0 + q * H, _mm512_setzero_ps());
      continue;
    }
    const __m512 i = sigmoid512(_mm512_loadu_ps(z + gate0)), f = sigmoid512(_mm512_loadu_ps(z + gate0 + H));
    const __m512 g = tanh512(_mm512_loadu_ps(z + gate0 + 2 * H)), o = sigmoid512(_mm512_loadu_ps(z + gate0 + 3 * H));
    const __m512 tc = tanh512(_mm512_loadu_ps(c + unit0));
    const __m512 dh_t = _mm512_add_ps(_mm512_loadu_ps(dh + unit0), _mm512_loadu_ps(d_out + unit0));
    // dc_t = dc + dh_t * o * (1 - tanh(c)^2)
    const __m512 dct = _mm512_fmadd_ps(_mm512_mul_ps(dh_t, o), _mm512_fnmadd_ps(tc, tc, one), _mm512_loadu_ps(dc + unit0));
    const __m512 di = _mm512_mul_ps(_mm512_mul_ps(dct, g), _mm512_mul_ps(i, _mm512_sub_ps(one, i)));
    const __m512 df = _mm512_mul_ps(_mm512_mul_ps(dct, _mm512_loadu_ps(c_prev + unit0)), _mm512_mul_ps(f, _mm512_sub_ps(one, f)));
    const __m512 dg = _mm512_mul_ps(_mm512_mul_ps(dct, i), _mm512_fnmadd_ps(g, g, one));
    const __m512 d_o = _mm512_mul_ps(_mm512_mul_ps(dh_t, tc), _mm512_mul_ps(o, _mm512_sub_ps(one, o)));
    _mm512_storeu_ps(dz + gate0, di);
    _mm512_storeu_ps(dz + gate0 + H, df);
    _mm512_storeu_ps(dz + gate0 + 2 * H, dg);
    _mm512_storeu_ps(dz + gate0 + 3 * H, d_o);
    _mm512_storeu_ps(dc + unit0, _mm512_mul_ps(dct, f));
  }
}

// Backward through the whole sequence, in the opposite order to the forward. Each step is two
// phases: the gate gradients (by unit block), then dh_{t-1} = dz_t @ W_hh (by unit block of dh).
ffi::Error LstmBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> z, ffi::Buffer<ffi::F32> cs,
                        ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> d_out, ffi::Buffer<ffi::F32> dh_n,
                        ffi::Buffer<ffi::F32> dc_n, ffi::Buffer<ffi::F32> valid, ffi::Buffer<ffi::F32> wb,
                        bool reverse, int64_t threads, ffi::ResultBuffer<ffi::F32> dz_out,
                        ffi::ResultBuffer<ffi::F32> dh0, ffi::ResultBuffer<ffi::F32> dc0) {
  if (auto error = CheckGates("jaxrnn_lstm_backward", z); error.failure()) return error;
  auto dims = z.dimensions();
  const int T = dims[0], B = dims[1], H = dims[2] / 4, U = H / 16;
  const size_t state = (size_t)B * H;
  float *dh = dh0->typed_data(), *dc = dc0->typed_data(), *dz = dz_out->typed_data();
  std::memcpy(dh, dh_n.typed_data(), state * sizeof(float));  // the carried gradients live in dh0, dc0
  std::memcpy(dc, dc_n.typed_data(), state * sizeof(float));
  const float *z_p = z.typed_data(), *cs_p = cs.typed_data(), *c0_p = c0.typed_data();
  const float *d_out_p = d_out.typed_data(), *valid_p = valid.typed_data(), *wb_p = wb.typed_data();
  auto run = [=](int phase, int u) {
    const int back_step = phase / 2;  // 0 is the forward's last step
    StateIndex at(T - 1 - back_step, T, reverse);
    const float* valid_t = valid_p + (size_t)at.t * B;
    float* dz_t = dz + at.t * 4 * state;
    if (phase % 2 == 0) {
      const float* c_prev = back_step == T - 1 ? c0_p : cs_p + at.before * state;
      backward_gates(B, H, u, z_p + at.t * 4 * state, c_prev, cs_p + at.t * state, d_out_p + at.t * state, valid_t,
                     dh, dc, dz_t);
    } else {
      backward_matmul(B, H, u, dz_t, wb_p, valid_t, dh);
    }
  };
  RunPhases(pool, threads, std::make_shared<Phases>(2 * T, U, run), nullptr);
  return ffi::Error::Success();
}

}  // namespace

#define JAXRNN_LSTM_ARGS                            \
  ffi::Ffi::Bind()                                  \
      .Ctx<ffi::ThreadPool>()                       \
      .Arg<ffi::Buffer<ffi::F32>>() /* x */         \
      .Arg<ffi::Buffer<ffi::F32>>() /* wpi */       \
      .Arg<ffi::Buffer<ffi::F32>>() /* bias */      \
      .Arg<ffi::Buffer<ffi::F32>>() /* wp */        \
      .Arg<ffi::Buffer<ffi::F32>>() /* h0 */        \
      .Arg<ffi::Buffer<ffi::F32>>() /* c0 */        \
      .Arg<ffi::Buffer<ffi::F32>>() /* valid */     \
      .Attr<bool>("reverse")                        \
      .Attr<int64_t>("threads")                     \
      .Ret<ffi::Buffer<ffi::F32>>() /* out */

// Inference: outputs (T, B, H), h_n (B, H), c_n (B, H).
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_lstm_forward, LstmForward,
                              JAXRNN_LSTM_ARGS.Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
// Training: outputs, hs, cs (T, B, H) and the pre-activations z (T, B, 4H) for the backward pass.
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_lstm_forward_train, LstmForwardTrain,
                              JAXRNN_LSTM_ARGS.Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
// Backward: dz (T, B, 4H), dh0 (B, H), dc0 (B, H) from z, cs (T, B, H), c0, d_out (T, B, H), dh_n, dc_n,
// valid and W_hh packed as (H/16, 4H, 16): wb[u, k, j] = W_hh[k, 16 u + j].
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_lstm_backward, LstmBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // z
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d_out
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dh_n
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dc_n
                                  .Arg<ffi::Buffer<ffi::F32>>()  // valid
                                  .Arg<ffi::Buffer<ffi::F32>>()  // wb
                                  .Attr<bool>("reverse")
                                  .Attr<int64_t>("threads")
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dz
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dh0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dc0
);
