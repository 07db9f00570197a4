// LSTM recurrence for x86-64 CPUs with AVX-512, called from XLA through the FFI (jaxrnn.kernels.cpu).
//
// One call runs a whole sequence in one direction: per step, the recurrent matmul h_{t-1} @ W_hh^T
// with the four gates fused into its epilogue (torch gate order i, f, g, o), so each step is one
// pass over the packed weights and nothing is written but the step's results. Work is split over
// up to `threads` threads by 16-unit blocks (all four gates of a unit in one block): the calling
// thread and helper tasks on XLA's intra-op thread pool claim blocks step by step, and a step
// starts when every block of the one before is done.
//
// Shapes (T steps, B batch, H hidden, U = H / 16 unit blocks, K = H):
//   gx     (T, B, 4H)  input projection x @ W_ih^T + b_ih + b_hh
//   wp     (U, K, 64)  W_hh^T packed: wp[u, k, g * 16 + j] = W_hh[g * H + 16 u + j, k]
//   h0, c0 (B, H)      initial state
//   valid  (T, B)      1 on real steps, 0 on padding (state carried, output zero)
// Results (jaxrnn_lstm_forward, inference): out (T, B, H), zero on padding; h_n, c_n (B, H).
// Results (jaxrnn_lstm_forward_train): out; hs, cs (T, B, H), the state after each step (carried
// through padding); z (T, B, 4H), the gate pre-activations gx + h_{t-1} @ W_hh^T, for the backward pass.
#include <immintrin.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <memory>
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
inline void tile(int K, const float* h, int ldh, const float* wp, __m512 acc[][4]) {
  for (int m = 0; m < MR; ++m) for (int g = 0; g < 4; ++g) acc[m][g] = _mm512_setzero_ps();
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
  int B, H, K;
  const float* hprev;
  const float* cprev;
  const float* wp;
  const float* gx;
  const float* valid;
  float* out;
  float* hs;
  float* cs;
  float* z;  // pre-activations gx + gh (4 gates), or nullptr when not kept
};

template <int MR>
void block(const Step& s, int u, int r) {
  const int H = s.H;
  __m512 acc[MR][4];
  tile<MR>(s.K, s.hprev + (size_t)r * s.K, s.K, s.wp + (size_t)u * s.K * 64, acc);
  for (int m = 0; m < MR; ++m) {
    const size_t row = r + m;
    const size_t gate0 = row * 4 * H + u * 16, unit0 = row * H + u * 16;
    __m512 pre[4];
    for (int q = 0; q < 4; ++q) {
      pre[q] = _mm512_add_ps(acc[m][q], _mm512_loadu_ps(s.gx + gate0 + q * H));
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

// One call's work, shared with the helper tasks (which may start late, or after the call is over:
// they hold it by shared_ptr and touch the buffers only through blocks they claimed before the end).
struct Sequence {
  int T, B, H, U;
  bool reverse;
  const float *gx, *wp, *h0, *c0, *valid;
  float *out, *hs, *cs, *z;     // hs, cs, z are null for inference
  std::vector<float> scratch;  // inference: the state ping-pongs between two (h, c) pairs
  // claims[s] packs the next unclaimed unit block of step s from the front (high 32 bits) and the
  // end of the unclaimed range (low 32 bits): participant 0 takes blocks from the front, helpers from
  // the back, so each thread keeps mostly the same weight panels in its cache from step to step.
  std::vector<std::atomic<uint64_t>> claims;
  std::atomic<int64_t> done{0};  // blocks finished, over all steps

  Step step_args(int step) {
    const size_t state = (size_t)B * H;
    const int t = reverse ? T - 1 - step : step, before = reverse ? t + 1 : t - 1;
    const float *hprev, *cprev;
    float *h_dst, *c_dst;
    if (hs) {
      hprev = step == 0 ? h0 : hs + before * state;
      cprev = step == 0 ? c0 : cs + before * state;
      h_dst = hs + t * state;
      c_dst = cs + t * state;
    } else {
      float* ping = scratch.data() + (step % 2) * 2 * state;        // this step writes here
      float* pong = scratch.data() + ((step + 1) % 2) * 2 * state;  // the previous step wrote here
      hprev = step == 0 ? h0 : pong;
      cprev = step == 0 ? c0 : pong + state;
      h_dst = ping;
      c_dst = ping + state;
    }
    return Step{B, H, H, hprev, cprev, wp, gx + t * 4 * state, valid + (size_t)t * B, out + t * state,
                h_dst, c_dst, z ? z + t * 4 * state : nullptr};
  }

  // Claims one unit block of `step` from the front or the back; -1 when none is left.
  int claim(int step, bool front) {
    uint64_t packed = claims[step].load(std::memory_order_relaxed);
    while (true) {
      const uint32_t lo = packed >> 32, hi = (uint32_t)packed;
      if (lo >= hi) return -1;
      const uint64_t next = front ? ((uint64_t)(lo + 1) << 32) | hi : ((uint64_t)lo << 32) | (hi - 1);
      if (claims[step].compare_exchange_weak(packed, next, std::memory_order_relaxed)) return front ? lo : hi - 1;
    }
  }

  // Works on the sequence until every block of every step is claimed. A step starts only when
  // all blocks of the step before are done. Safe to call from any number of threads.
  void participate(bool front) {
    for (int step = (int)(done.load(std::memory_order_acquire) / U); step < T; ++step) {
      while (done.load(std::memory_order_acquire) < (int64_t)step * U) _mm_pause();
      Step s = step_args(step);
      for (int u; (u = claim(step, front)) >= 0;) {
        unit_block(s, u);
        done.fetch_add(1, std::memory_order_acq_rel);
      }
    }
  }
};

// Runs the sequence. With `keep` (training) every step's state goes to hs/cs and the
// pre-activations to z. Helpers are tasks on XLA's own intra-op thread pool, so they do not
// fight XLA's threads for the cores; the calling thread alone finishes if none of them starts.
ffi::Error Run(const char* name, ffi::ThreadPool& pool, ffi::Buffer<ffi::F32>& gx, ffi::Buffer<ffi::F32>& wp,
               ffi::Buffer<ffi::F32>& h0, ffi::Buffer<ffi::F32>& c0, ffi::Buffer<ffi::F32>& valid, bool reverse,
               int64_t threads, float* out, float* hs, float* cs, float* z, float* h_n, float* c_n) {
  auto dims = gx.dimensions();
  if (dims.size() != 3 || dims[2] % 64 != 0) {
    return ffi::Error::InvalidArgument(std::string(name) + ": gx must be (T, B, 4H) with H a multiple of 16");
  }
  const int T = dims[0], B = dims[1], H = dims[2] / 4, U = H / 16;
  const size_t state = (size_t)B * H;
  auto seq = std::make_shared<Sequence>();
  seq->T = T, seq->B = B, seq->H = H, seq->U = U, seq->reverse = reverse;
  seq->gx = gx.typed_data(), seq->wp = wp.typed_data(), seq->h0 = h0.typed_data(), seq->c0 = c0.typed_data();
  seq->valid = valid.typed_data(), seq->out = out, seq->hs = hs, seq->cs = cs, seq->z = z;
  if (!hs) seq->scratch.resize(4 * state);
  seq->claims = std::vector<std::atomic<uint64_t>>(T);
  for (auto& c : seq->claims) c.store((uint64_t)U, std::memory_order_relaxed);  // lo = 0, hi = U
  const int64_t helpers = std::min<int64_t>(std::max<int64_t>(threads, 1), U) - 1;
  for (int64_t i = 0; i < helpers && T > 0; ++i) pool.Schedule([seq] { seq->participate(false); });
  seq->participate(true);
  while (seq->done.load(std::memory_order_acquire) < (int64_t)T * U) _mm_pause();  // helpers' last blocks
  if (!hs) {
    const float* last = T == 0 ? nullptr : seq->scratch.data() + ((T - 1) % 2) * 2 * state;
    std::memcpy(h_n, T == 0 ? h0.typed_data() : last, state * sizeof(float));
    std::memcpy(c_n, T == 0 ? c0.typed_data() : last + state, state * sizeof(float));
  }
  return ffi::Error::Success();
}

ffi::Error LstmForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> gx, ffi::Buffer<ffi::F32> wp, ffi::Buffer<ffi::F32> h0,
                       ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> valid, bool reverse, int64_t threads,
                       ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> h_n,
                       ffi::ResultBuffer<ffi::F32> c_n) {
  return Run("jaxrnn_lstm_forward", pool, gx, wp, h0, c0, valid, reverse, threads, out->typed_data(), nullptr, nullptr,
             nullptr, h_n->typed_data(), c_n->typed_data());
}

ffi::Error LstmForwardTrain(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> gx, ffi::Buffer<ffi::F32> wp, ffi::Buffer<ffi::F32> h0,
                            ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> valid, bool reverse, int64_t threads,
                            ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> hs,
                            ffi::ResultBuffer<ffi::F32> cs, ffi::ResultBuffer<ffi::F32> z) {
  return Run("jaxrnn_lstm_forward_train", pool, gx, wp, h0, c0, valid, reverse, threads, out->typed_data(),
             hs->typed_data(), cs->typed_data(), z->typed_data(), nullptr, nullptr);
}

}  // namespace

#define JAXRNN_LSTM_ARGS                            \
  ffi::Ffi::Bind()                                  \
      .Ctx<ffi::ThreadPool>()                       \
      .Arg<ffi::Buffer<ffi::F32>>() /* gx */        \
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
