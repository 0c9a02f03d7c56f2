// CUDA kernels for ftl's device path: masked softmax for attention, cross-entropy over the
// vocabulary, RMSNorm, rotary embeddings, SwiGLU and AdamW, each with its backward pass, and
// flash attention (flash_attn.cu).
// Every kernel computes in f32 and reads/writes f32 or bf16 (suffix _f32 / _bf16).
#include <cuda_bf16.h>
#include <stdint.h>
#include <type_traits>

__device__ __forceinline__ float ld(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float ld(const __nv_bfloat16* p, long i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st(float* p, long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(__nv_bfloat16* p, long i, float v) { p[i] = __float2bfloat16(v); }
__device__ __forceinline__ float rnd(float v, const float*) { return v; }
__device__ __forceinline__ float rnd(float v, const __nv_bfloat16*) { return __bfloat162float(__float2bfloat16(v)); }

// ---- 16-byte vectors ---------------------------------------------------------------------------
// S consecutive values as f32 (S = 1, or 16 bytes' worth: p then 16-byte aligned), and back.
template <typename T, int S>
__device__ __forceinline__ void ldn(const T* p, float* o) {
    if constexpr (S == 1) {
        o[0] = ld(p, 0);
    } else {
        static_assert(S * sizeof(T) == 16, "one 16-byte vector");
        uint4 a = *reinterpret_cast<const uint4*>(p);
        const T* v = reinterpret_cast<const T*>(&a);
#pragma unroll
        for (int e = 0; e < S; e++) o[e] = ld(v, e);
    }
}
template <typename T, int S>
__device__ __forceinline__ void stn(T* p, const float* o) {
    if constexpr (S == 1) {
        st(p, 0, o[0]);
    } else {
        uint4 a;
        T* v = reinterpret_cast<T*>(&a);
#pragma unroll
        for (int e = 0; e < S; e++) st(v, e, o[e]);
        *reinterpret_cast<uint4*>(p) = a;
    }
}

// Calls at(i, S) for every S-value chunk of [0, n), a grid-stride loop: 16-byte chunks where `vec`
// (the arrays 16-byte aligned), single values for the tail. candle's kernels take one value per
// thread, at a fraction of the bandwidth.
template <typename T, typename F>
__device__ __forceinline__ void chunks(long n, int vec, F at) {
    constexpr int V = 16 / sizeof(T);
    long stride = (long)blockDim.x * gridDim.x, i0 = (long)blockIdx.x * blockDim.x + threadIdx.x;
    long nv = vec ? n / V : 0;
    for (long i = i0; i < nv; i += stride) at(i * V, std::integral_constant<int, V>());
    for (long i = nv * V + i0; i < n; i += stride) at(i, std::integral_constant<int, 1>());
}


// Block-wide reductions (blockDim.x a multiple of 32, at most 1024).
__device__ float block_sum(float v) {
    __shared__ float sh[32];
    __syncthreads();
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    int w = threadIdx.x / 32, l = threadIdx.x % 32;
    if (l == 0) sh[w] = v;
    __syncthreads();
    int nw = blockDim.x / 32;
    v = (threadIdx.x < nw) ? sh[threadIdx.x] : 0.0f;
    if (w == 0)
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    if (threadIdx.x == 0) sh[0] = v;
    __syncthreads();
    return sh[0];
}

// The larger of two, NaN if either is: fmaxf drops a NaN, and a NaN score or logit must make
// its row NaN (the training's non-finite check sees it) rather than vanish.
__device__ __forceinline__ float max_nan(float a, float b) {
    return (a != a || b != b) ? __int_as_float(0x7fc00000) : fmaxf(a, b);
}

__device__ float block_max(float v) {
    __shared__ float sh[32];
    __syncthreads();
    for (int o = 16; o > 0; o >>= 1) v = max_nan(v, __shfl_xor_sync(0xffffffff, v, o));
    int w = threadIdx.x / 32, l = threadIdx.x % 32;
    if (l == 0) sh[w] = v;
    __syncthreads();
    int nw = blockDim.x / 32;
    v = (threadIdx.x < nw) ? sh[threadIdx.x] : -INFINITY;
    if (w == 0)
        for (int o = 16; o > 0; o >>= 1) v = max_nan(v, __shfl_xor_sync(0xffffffff, v, o));
    if (threadIdx.x == 0) sh[0] = v;
    __syncthreads();
    return sh[0];
}

// ---- attention: P = softmax(scale·S) over the visible keys of each query row ----------------
// S: [rows, tk] f32, rows = b · (heads grouped) · tq with tq innermost; a row's query sits at
// absolute position offset + (row % tq); key j is visible when causal allows it (j <= pos), the
// sliding window allows it (pos - j < window, window > 0) and key_valid[b·tk + j] != 0. A row with
// no visible key is all zeros.
template <typename T>
__device__ void attn_softmax_fwd(const float* S, T* P, const uint8_t* kv, int tk, int tq, int rows_per_b,
                                 int causal, int offset, int window, float scale) {
    long r = blockIdx.x;
    int b = r / rows_per_b;
    int pos = offset + (int)(r % tq);
    const float* s = S + r * (long)tk;
    T* p = P + r * (long)tk;
    const uint8_t* valid = kv + (long)b * tk;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < tk; j += blockDim.x) {
        bool vis = valid[j] && (!causal || j <= pos) && (window <= 0 || pos - j < window);
        if (vis) mx = max_nan(mx, s[j] * scale);
    }
    mx = block_max(mx);
    if (mx == -INFINITY) {
        for (int j = threadIdx.x; j < tk; j += blockDim.x) st(p, j, 0.0f);
        return;
    }
    float sum = 0.0f;
    for (int j = threadIdx.x; j < tk; j += blockDim.x) {
        bool vis = valid[j] && (!causal || j <= pos) && (window <= 0 || pos - j < window);
        if (vis) sum += __expf(s[j] * scale - mx);
    }
    sum = block_sum(sum);
    float inv = 1.0f / sum;
    for (int j = threadIdx.x; j < tk; j += blockDim.x) {
        bool vis = valid[j] && (!causal || j <= pos) && (window <= 0 || pos - j < window);
        st(p, j, vis ? __expf(s[j] * scale - mx) * inv : 0.0f);
    }
}

// dS = P ⊙ (dP − Σ P⊙dP) · scale per row; P f32, dP and dS of type T.
template <typename T>
__device__ void attn_softmax_bwd(const float* P, const T* dP, T* dS, int tk, float scale) {
    long r = blockIdx.x;
    const float* p = P + r * (long)tk;
    const T* dp = dP + r * (long)tk;
    T* ds = dS + r * (long)tk;
    float dot = 0.0f;
    for (int j = threadIdx.x; j < tk; j += blockDim.x) dot += p[j] * ld(dp, j);
    dot = block_sum(dot);
    for (int j = threadIdx.x; j < tk; j += blockDim.x) st(ds, j, p[j] * (ld(dp, j) - dot) * scale);
}

// The same two with one warp per row, the row held in registers (tk <= 1024): one read of S.
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = max_nan(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}

template <typename T>
__device__ void attn_softmax_fwd_w(const float* S, T* P, const uint8_t* kv, long rows, int tk, int tq,
                                   int rows_per_b, int causal, int offset, int window, float scale) {
    long r = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= rows) return;
    int b = r / rows_per_b;
    int pos = offset + (int)(r % tq);
    const float* s = S + r * (long)tk;
    T* p = P + r * (long)tk;
    const uint8_t* valid = kv + (long)b * tk;
    float v[32];
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < 32; i++) {
        int j = lane + 32 * i;
        float x = -INFINITY;
        if (j < tk && valid[j] && (!causal || j <= pos) && (window <= 0 || pos - j < window)) x = s[j] * scale;
        v[i] = x;
        mx = max_nan(mx, x);
    }
    mx = warp_max(mx);
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < 32; i++) {
        v[i] = mx == -INFINITY || v[i] == -INFINITY ? 0.0f : __expf(v[i] - mx);
        sum += v[i];
    }
    sum = warp_sum(sum);
    float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
#pragma unroll
    for (int i = 0; i < 32; i++) {
        int j = lane + 32 * i;
        if (j < tk) st(p, j, v[i] * inv);
    }
}

template <typename T>
__device__ void attn_softmax_bwd_w(const float* P, const T* dP, T* dS, long rows, int tk, float scale) {
    long r = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= rows) return;
    const float* p = P + r * (long)tk;
    const T* dp = dP + r * (long)tk;
    T* ds = dS + r * (long)tk;
    float pv[32], dv[32];
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < 32; i++) {
        int j = lane + 32 * i;
        pv[i] = j < tk ? p[j] : 0.0f;
        dv[i] = j < tk ? ld(dp, j) : 0.0f;
        dot += pv[i] * dv[i];
    }
    dot = warp_sum(dot);
#pragma unroll
    for (int i = 0; i < 32; i++) {
        int j = lane + 32 * i;
        if (j < tk) st(ds, j, pv[i] * (dv[i] - dot) * scale);
    }
}

// ---- Σ x² (gradient norms): block partial sums added atomically into out[0] -----------------
template <typename T>
__device__ void sumsq(const T* x, float* out, long n, int vec) {
    float s = 0.0f;
    chunks<T>(n, vec, [&](long i, auto sz) {
        constexpr int S = decltype(sz)::value;
        float v[S];
        ldn<T, S>(x + i, v);
#pragma unroll
        for (int e = 0; e < S; e++) s += v[e] * v[e];
    });
    s = block_sum(s);
    if (threadIdx.x == 0) atomicAdd(out, s);
}

// Y[i] = f(i, X1[i], X2[i]) (X2 may be null).
template <typename T, typename F>
__device__ __forceinline__ void map2(const T* __restrict__ X1, const T* __restrict__ X2, T* __restrict__ Y, long n,
                                     int vec, F f) {
    chunks<T>(n, vec, [&](long i, auto s) {
        constexpr int S = decltype(s)::value;
        float a[S], b[S], y[S];
        ldn<T, S>(X1 + i, a);
        if (X2) ldn<T, S>(X2 + i, b);
#pragma unroll
        for (int e = 0; e < S; e++) y[e] = f(i + e, a[e], X2 ? b[e] : 0.0f);
        stn<T, S>(Y + i, y);
    });
}

// ---- Y = A + B (residual connections, gradients of values with several users) -------------------
template <typename T>
__device__ void add2(const T* A, const T* B, T* Y, long n, int vec) {
    map2(A, B, Y, n, vec, [](long, float a, float b) { return a + b; });
}

// ---- Y = X · V per column, V (f32) rounded to X's dtype first (IA3's scaling) ----------------
template <typename T>
__device__ void scale_cols(const T* X, const float* __restrict__ V, T* Y, long n, int N, int vec) {
    map2(X, (const T*)nullptr, Y, n, vec, [=](long i, float x, float) { return x * rnd(V[i % N], X); });
}

// ---- Σ over rows of G ⊙ X, per column (IA3's vector gradient), in f32 --------------------------
// A block takes 32 columns; its 8 warps take every 8th row and add their sums in shared memory,
// in a fixed order (deterministic).
template <typename T>
__device__ void colsum_mul(const T* __restrict__ G, const T* __restrict__ X, float* __restrict__ out, long M, int N) {
    __shared__ float part[8][32];
    int c = blockIdx.x * 32 + threadIdx.x % 32, w = threadIdx.x / 32;
    float s = 0.0f;
    if (c < N) {
        long i = w;
        for (; i + 56 < M; i += 64) {
            float g[8], x[8];
#pragma unroll
            for (int u = 0; u < 8; u++) {
                g[u] = ld(G, (i + 8 * u) * N + c);
                x[u] = ld(X, (i + 8 * u) * N + c);
            }
#pragma unroll
            for (int u = 0; u < 8; u++) s += g[u] * x[u];
        }
        for (; i < M; i += 8) s += ld(G, i * N + c) * ld(X, i * N + c);
    }
    part[w][threadIdx.x % 32] = s;
    __syncthreads();
    if (w == 0 && c < N) {
        float t = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; k++) t += part[k][threadIdx.x];
        out[c] = t;
    }
}

// ---- LoRA's low-rank branch without f32 copies of the activations --------------------------
// Instantiated for R = 8, 16, 32, 64: a rank r <= R is zero-padded to R, so the inner loops have
// a fixed length and no predicates.
// Eight consecutive values as f32 (p 16-byte aligned).
__device__ __forceinline__ void ld8(const float* p, float* x) {
    float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
    x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
}
__device__ __forceinline__ void ld8(const __nv_bfloat16* p, float* x) {
    uint4 v = *reinterpret_cast<const uint4*>(p);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 f = __bfloat1622float2(h[i]);
        x[2 * i] = f.x, x[2 * i + 1] = f.y;
    }
}

// lora_down: H[M, r] (f32) = X[M, K] · A[r, K]ᵀ. A warp takes LORA_ROWS(R) rows, each lane eight
// consecutive columns of every LORA_KC (one vector load per row), so each value of A read from
// shared memory serves all the warp's rows; the lanes' partial sums are added at the end.
#define LORA_KC 256
#define LORA_ROWS(R) ((R) <= 16 ? 4 : (R) == 32 ? 2 : 1)
template <typename T, int R>
__device__ void lora_down(const T* __restrict__ X, const float* __restrict__ A, float* __restrict__ H, long M, int K,
                          int r) {
    constexpr int ROWS = LORA_ROWS(R);
    extern __shared__ __align__(16) float sA[];  // [R][LORA_KC]
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    long row0 = ((long)blockIdx.x * (blockDim.x / 32) + warp) * ROWS;
    bool vec = K % 8 == 0 && reinterpret_cast<uintptr_t>(X) % 16 == 0;
    bool veca = K % 4 == 0 && reinterpret_cast<uintptr_t>(A) % 16 == 0;
    float acc[ROWS][R];
#pragma unroll
    for (int i = 0; i < ROWS; i++)
#pragma unroll
        for (int j = 0; j < R; j++) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += LORA_KC) {
        // the A tile: all of a thread's loads issued before any is waited for (256 threads)
        constexpr int N4 = R * LORA_KC / 4 / 256;
        float4 t4[N4];
#pragma unroll
        for (int it = 0; it < N4; it++) {
            int t = (threadIdx.x + it * 256) * 4, j = t / LORA_KC, kk = t % LORA_KC;
            const float* src = A + (long)j * K + k0 + kk;
            if (j < r && veca && k0 + kk + 4 <= K) {
                t4[it] = *reinterpret_cast<const float4*>(src);
            } else {
                float v[4];
#pragma unroll
                for (int e = 0; e < 4; e++) v[e] = j < r && k0 + kk + e < K ? src[e] : 0.0f;
                t4[it] = make_float4(v[0], v[1], v[2], v[3]);
            }
        }
        __syncthreads();
#pragma unroll
        for (int it = 0; it < N4; it++) reinterpret_cast<float4*>(sA)[threadIdx.x + it * 256] = t4[it];
        __syncthreads();
        int kk = lane * 8, k = k0 + kk;
        float x[ROWS][8];
#pragma unroll
        for (int i = 0; i < ROWS; i++) {
            long row = row0 + i;
            if (row < M && vec && k + 8 <= K) {
                ld8(X + row * K + k, x[i]);
            } else {
#pragma unroll
                for (int e = 0; e < 8; e++) x[i][e] = row < M && k + e < K ? ld(X, row * K + k + e) : 0.0f;
            }
        }
#pragma unroll
        for (int j = 0; j < R; j++) {
            float a[8];
            ld8(sA + j * LORA_KC + kk, a);
#pragma unroll
            for (int i = 0; i < ROWS; i++)
#pragma unroll
                for (int e = 0; e < 8; e++) acc[i][j] += x[i][e] * a[e];
        }
    }
#pragma unroll
    for (int i = 0; i < ROWS; i++) {
        long row = row0 + i;
        if (row >= M) break;
#pragma unroll
        for (int j = 0; j < R; j++) {
            float v = warp_sum(acc[i][j]);
            if (j < r && lane == (j & 31)) H[row * r + j] = v;
        }
    }
}

// lora_up_add: O[M, N] = Y[M, N] + s · (H[M, r] · B[N, r]ᵀ), summed in f32 and rounded once (PEFT
// adds the f32 branch to the base output, then casts back). A thread owns one column (its row of
// B in registers) for 32 rows.
template <typename T, int R>
__device__ void lora_up_add(const T* __restrict__ Y, const float* __restrict__ H, const float* __restrict__ B,
                            T* __restrict__ O, long M, int N, int r, float s) {
    __shared__ float sH[32 * R];
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    long i0 = (long)blockIdx.y * 32;
    int rows = (int)min((long)32, M - i0);
    for (int t = threadIdx.x; t < 32 * R; t += blockDim.x) {
        int ii = t / R, j = t % R;
        sH[t] = (ii < rows && j < r) ? H[(i0 + ii) * r + j] : 0.0f;
    }
    __syncthreads();
    if (n >= N) return;
    float b[R];
#pragma unroll
    for (int j = 0; j < R; j++) b[j] = j < r ? B[(long)n * r + j] : 0.0f;
#pragma unroll 8
    for (int ii = 0; ii < rows; ii++) {
        float d = 0.0f;
#pragma unroll
        for (int j = 0; j < R; j++) d += sH[ii * R + j] * b[j];
        long o = (i0 + ii) * N + n;
        st(O, o, ld(Y, o) + d * s);
    }
}

// lora_outer: P[split, r, K] = s · L[rows of split, r]ᵀ · X[rows of split, K] (f32 partial sums
// over 128-row slices; the caller adds the slices, so the result does not depend on scheduling).
template <typename T, int R>
__device__ void lora_outer(const float* __restrict__ L, const T* __restrict__ X, float* __restrict__ P, long M, int K,
                           int r, float s) {
    __shared__ float sL[128 * R];
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    long i0 = (long)blockIdx.y * 128;
    int rows = (int)min((long)128, M - i0);
    for (int t = threadIdx.x; t < 128 * R; t += blockDim.x) {
        int ii = t / R, j = t % R;
        sL[t] = (ii < rows && j < r) ? L[(i0 + ii) * r + j] : 0.0f;
    }
    __syncthreads();
    if (k >= K) return;
    float acc[R];
#pragma unroll
    for (int j = 0; j < R; j++) acc[j] = 0.0f;
    int ii = 0;
    for (; ii + 8 <= rows; ii += 8) {
        float xv[8];
#pragma unroll
        for (int u = 0; u < 8; u++) xv[u] = ld(X, (i0 + ii + u) * K + k);
#pragma unroll
        for (int u = 0; u < 8; u++)
#pragma unroll
            for (int j = 0; j < R; j++) acc[j] += sL[(ii + u) * R + j] * xv[u];
    }
    for (; ii < rows; ii++) {
        float xv = ld(X, (i0 + ii) * K + k);
#pragma unroll
        for (int j = 0; j < R; j++) acc[j] += sL[ii * R + j] * xv;
    }
    float* p = P + (long)blockIdx.y * r * K;
#pragma unroll
    for (int j = 0; j < R; j++)
        if (j < r) p[(long)j * K + k] = acc[j] * s;
}

// ---- cross-entropy: per row lse − x[label] (0 for label < 0) and its gradient ---------------
template <typename T>
__device__ void ce_fwd(const T* X, const int32_t* labels, float* loss, int v) {
    long r = blockIdx.x;
    const T* x = X + r * (long)v;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < v; j += blockDim.x) mx = fmaxf(mx, ld(x, j));
    mx = block_max(mx);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < v; j += blockDim.x) sum += __expf(ld(x, j) - mx);
    sum = block_sum(sum);
    if (threadIdx.x == 0) {
        int lab = labels[r];
        loss[r] = lab < 0 ? 0.0f : (mx + logf(sum) - ld(x, lab));
    }
}

template <typename T>
__device__ void ce_bwd(const T* X, const int32_t* labels, const float* g, T* D, int v) {
    long r = blockIdx.x;
    const T* x = X + r * (long)v;
    T* d = D + r * (long)v;
    int lab = labels[r];
    if (lab < 0) {
        for (int j = threadIdx.x; j < v; j += blockDim.x) st(d, j, 0.0f);
        return;
    }
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < v; j += blockDim.x) mx = fmaxf(mx, ld(x, j));
    mx = block_max(mx);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < v; j += blockDim.x) sum += __expf(ld(x, j) - mx);
    sum = block_sum(sum);
    float inv = 1.0f / sum, gs = g[0];
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        float pj = __expf(ld(x, j) - mx) * inv;
        st(d, j, (pj - (j == lab ? 1.0f : 0.0f)) * gs);
    }
}

// ---- RMSNorm (HF: normalised in f32, cast to the input dtype, then scaled by w) -------------
// One warp per row, S values per access (16-byte vectors where the row allows).
template <typename T, int S>
__device__ void rms_fwd_row(const T* x, const T* W, T* y, int n, float eps) {
    int lane = threadIdx.x % 32;
    float ss = 0.0f;
    for (int j = lane * S; j < n; j += 32 * S) {
        float a[S];
        ldn<T, S>(x + j, a);
#pragma unroll
        for (int e = 0; e < S; e++) ss += a[e] * a[e];
    }
    float rs = rsqrtf(warp_sum(ss) / n + eps);
    for (int j = lane * S; j < n; j += 32 * S) {
        float a[S], w[S];
        ldn<T, S>(x + j, a);
        ldn<T, S>(W + j, w);
#pragma unroll
        for (int e = 0; e < S; e++) a[e] = w[e] * rnd(a[e] * rs, x);
        stn<T, S>(y + j, a);
    }
}

template <typename T>
__device__ void rms_fwd(const T* X, const T* W, T* Y, long rows, int n, float eps, int vec) {
    long r = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    if (vec)
        rms_fwd_row<T, 16 / sizeof(T)>(X + r * n, W, Y + r * n, n, eps);
    else
        rms_fwd_row<T, 1>(X + r * n, W, Y + r * n, n, eps);
}

// dx = rstd·(g⊙w − x̂·mean(g⊙w⊙x̂)); with dw != null also dw += g⊙x̂ (f32, atomically).
template <typename T, int S>
__device__ void rms_bwd_row(const T* x, const T* W, const T* g, T* dx, float* DW, int n, float eps) {
    int lane = threadIdx.x % 32;
    float ss = 0.0f, dot = 0.0f;
    for (int j = lane * S; j < n; j += 32 * S) {
        float a[S], w[S], d[S];
        ldn<T, S>(x + j, a);
        ldn<T, S>(W + j, w);
        ldn<T, S>(g + j, d);
#pragma unroll
        for (int e = 0; e < S; e++) {
            ss += a[e] * a[e];
            dot += d[e] * w[e] * a[e];
        }
    }
    float rs = rsqrtf(warp_sum(ss) / n + eps);
    dot = warp_sum(dot) * rs / n;
    for (int j = lane * S; j < n; j += 32 * S) {
        float a[S], w[S], d[S], o[S];
        ldn<T, S>(x + j, a);
        ldn<T, S>(W + j, w);
        ldn<T, S>(g + j, d);
        float gx[S];
#pragma unroll
        for (int e = 0; e < S; e++) {
            float xh = a[e] * rs;
            o[e] = rs * (d[e] * w[e] - xh * dot);
            gx[e] = d[e] * xh;
        }
        if (dx) stn<T, S>(dx + j, o);
        if constexpr (S == 1) {
            if (DW) atomicAdd(DW + j, gx[0]);
        }
    }
}

// Every row adds into the same n values of dw: with dw, a block's warps take rows in turn and add
// into the block's copy in shared memory (`local`: the launch gave it n floats), which goes to dw
// once per block.
template <typename T>
__device__ void rms_bwd(const T* X, const T* W, const T* G, T* DX, float* DW, long rows, int n, float eps, int vec,
                        int local) {
    extern __shared__ float dws[];
    int w = threadIdx.x / 32, nw = blockDim.x / 32;
    local = local && DW;
    float* acc = local ? dws : DW;
    if (local) {
        for (int j = threadIdx.x; j < n; j += blockDim.x) dws[j] = 0.0f;
        __syncthreads();
    }
    for (long r = (long)blockIdx.x * nw + w; r < rows; r += (long)gridDim.x * nw) {
        T* dx = DX ? DX + r * n : nullptr;
        if (vec && !DW)
            rms_bwd_row<T, 16 / sizeof(T)>(X + r * n, W, G + r * n, dx, nullptr, n, eps);
        else
            rms_bwd_row<T, 1>(X + r * n, W, G + r * n, dx, acc, n, eps);
    }
    if (local) {
        __syncthreads();
        for (int j = threadIdx.x; j < n; j += blockDim.x) atomicAdd(DW + j, dws[j]);
    }
}

// ---- rotary embeddings on [b, t, h, d]: (x1, x2) → (x1·c − s·x2·σ, x2·c + s·x1·σ) --------------
template <typename T>
__device__ void rope(const T* X, T* Y, const float* C, const float* S, long rows, int t, int h, int d, float sign) {
    int half = d / 2;
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * half) return;
    long row = i / half;
    int k = i % half;
    int pos = (row / h) % t;
    float c = C[pos * half + k], s = S[pos * half + k] * sign;
    long o = row * d;
    float a = ld(X, o + k), b = ld(X, o + half + k);
    st(Y, o + k, a * c - b * s);
    st(Y, o + half + k, b * c + a * s);
}

// ---- SwiGLU: y = silu(g)·u; backward dg, du ---------------------------------------------------
template <typename T>
__device__ void silu_mul_fwd(const T* G, const T* U, T* Y, long n, int vec) {
    map2(G, U, Y, n, vec, [](long, float g, float u) { return g / (1.0f + __expf(-g)) * u; });
}

template <typename T>
__device__ void silu_mul_bwd(const T* G, const T* U, const T* D, T* DG, T* DU, long n, int vec) {
    chunks<T>(n, vec, [&](long i, auto sz) {
        constexpr int S = decltype(sz)::value;
        float g[S], u[S], d[S], dg[S], du[S];
        ldn<T, S>(G + i, g);
        ldn<T, S>(U + i, u);
        ldn<T, S>(D + i, d);
#pragma unroll
        for (int e = 0; e < S; e++) {
            float s = 1.0f / (1.0f + __expf(-g[e]));
            dg[e] = d[e] * u[e] * s * (1.0f + g[e] * (1.0f - s));
            du[e] = d[e] * g[e] * s;
        }
        if (DG) stn<T, S>(DG + i, dg);
        if (DU) stn<T, S>(DU + i, du);
    });
}

// ---- AdamW as torch.optim.AdamW: decoupled decay, bias correction, eps outside the root ------
template <typename T>
__device__ void adamw(T* P, const T* G, T* M, T* V, long n, float wd_factor, float b1, float b2, float eps,
                      float step_size, float bc2_sqrt, int vec) {
    chunks<T>(n, vec, [&](long i, auto sz) {
        constexpr int S = decltype(sz)::value;
        float p[S], g[S], m[S], v[S];
        ldn<T, S>(P + i, p);
        ldn<T, S>(G + i, g);
        ldn<T, S>(M + i, m);
        ldn<T, S>(V + i, v);
#pragma unroll
        for (int e = 0; e < S; e++) {
            p[e] *= wd_factor;
            m[e] += (g[e] - m[e]) * (1.0f - b1);
            v[e] = v[e] * b2 + (1.0f - b2) * g[e] * g[e];
            p[e] -= step_size * (m[e] / (sqrtf(v[e]) / bc2_sqrt + eps));
        }
        stn<T, S>(P + i, p);
        stn<T, S>(M + i, m);
        stn<T, S>(V + i, v);
    });
}

// ---- the embedding's gradient: dW[ids[r], :] += G[r, :] in f32, one warp per row (repeated
// tokens add up in no fixed order, so their sums may differ in the last bits between runs; 16-byte
// atomics where the rows allow) -------------------------------------------------------------------
template <typename T>
__device__ void embed_bwd(const T* G, const uint32_t* ids, float* dW, long rows, int h, long vocab, int vec) {
    long r = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= rows || ids[r] >= vocab) return;
    const T* g = G + r * h;
    float* d = dW + (long)ids[r] * h;
    if (vec) {
        constexpr int S = 16 / sizeof(T);
        for (int j = lane * S; j < h; j += 32 * S) {
            float x[S];
            ldn<T, S>(g + j, x);
#pragma unroll
            for (int e = 0; e < S; e += 4)
                atomicAdd(reinterpret_cast<float4*>(d + j + e), make_float4(x[e], x[e + 1], x[e + 2], x[e + 3]));
        }
    } else {
        for (int j = lane; j < h; j += 32) atomicAdd(d + j, ld(g, j));
    }
}

#define BOTH(NAME, ARGS, CALL)                                                                     \
    extern "C" __global__ void NAME##_f32 ARGS { using T = float; CALL; }                          \
    extern "C" __global__ void NAME##_bf16 ARGS { using T = __nv_bfloat16; CALL; }

BOTH(attn_softmax_fwd, (const float* S, void* P, const uint8_t* kv, int tk, int tq, int rows_per_b, int causal,
                        int offset, int window, float scale),
     attn_softmax_fwd<T>(S, (T*)P, kv, tk, tq, rows_per_b, causal, offset, window, scale))
BOTH(attn_softmax_bwd, (const float* P, const void* dP, void* dS, int tk, float scale),
     attn_softmax_bwd<T>(P, (const T*)dP, (T*)dS, tk, scale))
// LoRA on tensor cores (bf16 activations, f32 adapters): each f32 operand of a low-rank product
// is split into its bf16 high part hi = bf16(x) and the bf16 remainder lo = bf16(x − hi); then
// hi·hi + hi·lo + lo·hi, accumulated in f32 by cuBLAS, is the f32 product to ~2⁻¹⁶ relative (the
// dropped lo·lo term), far below the bf16 rounding of the layer's output.
// lora_split: X [rows, cols] (row stride ld; with off > 0 the sum X[.., j] + X[.., off + j] of a
// product's two halves) as three bf16 column blocks of out [rows, 3 cols]: block p holds lo where
// bit p of `lo` is set, hi elsewhere.
extern "C" __global__ void lora_split_f32(const float* X, long ld, long off, __nv_bfloat16* out, long rows,
                                          long cols, int lo) {
    long n = rows * cols;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        long r = i / cols, c = i % cols;
        float x = X[r * ld + c];
        if (off > 0) x += X[r * ld + off + c];
        __nv_bfloat16 hi = __float2bfloat16(x), rest = __float2bfloat16(x - __bfloat162float(hi));
        __nv_bfloat16* o = out + r * 3 * cols + c;
        o[0] = lo & 1 ? rest : hi;
        o[cols] = lo & 2 ? rest : hi;
        o[2 * cols] = lo & 4 ? rest : hi;
    }
}
// lora_fold: out [rows, cols] = s · (X[.., j] + X[.., off + j]) (row stride ld): a product of a
// split operand, its two halves added.
extern "C" __global__ void lora_fold_f32(const float* X, long ld, long off, float* out, long rows, long cols,
                                         float s) {
    long n = rows * cols;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        long r = i / cols, c = i % cols;
        out[i] = s * (X[r * ld + c] + X[r * ld + off + c]);
    }
}
BOTH(attn_softmax_fwd_w, (const float* S, void* P, const uint8_t* kv, long rows, int tk, int tq, int rows_per_b,
                          int causal, int offset, int window, float scale),
     attn_softmax_fwd_w<T>(S, (T*)P, kv, rows, tk, tq, rows_per_b, causal, offset, window, scale))
BOTH(attn_softmax_bwd_w, (const float* P, const void* dP, void* dS, long rows, int tk, float scale),
     attn_softmax_bwd_w<T>(P, (const T*)dP, (T*)dS, rows, tk, scale))
BOTH(sumsq, (const void* X, float* out, long n, int vec), sumsq<T>((const T*)X, out, n, vec))
BOTH(scale_cols, (const void* X, const float* V, void* Y, long n, int N, int vec),
     scale_cols<T>((const T*)X, V, (T*)Y, n, N, vec))
BOTH(add2, (const void* A, const void* B, void* Y, long n, int vec), add2<T>((const T*)A, (const T*)B, (T*)Y, n, vec))
BOTH(colsum_mul, (const void* G, const void* X, float* out, long M, int N),
     colsum_mul<T>((const T*)G, (const T*)X, out, M, N))
#define LORA_K(NAME, TY, SFX, R)                                                                      \
    extern "C" __global__ void lora_down_r##R##_##SFX(const void* X, const float* A, float* H, long M, int K,   \
                                                      int r) {                                       \
        lora_down<TY, R>((const TY*)X, A, H, M, K, r);                                               \
    }                                                                                                \
    extern "C" __global__ void lora_up_add_r##R##_##SFX(const void* Y, const float* H, const float* B, void* O, \
                                                        long M, int N, int r, float s) {             \
        lora_up_add<TY, R>((const TY*)Y, H, B, (TY*)O, M, N, r, s);                                  \
    }                                                                                                \
    extern "C" __global__ void lora_outer_r##R##_##SFX(const float* L, const void* X, float* P, long M, int K,  \
                                                       int r, float s) {                             \
        lora_outer<TY, R>(L, (const TY*)X, P, M, K, r, s);                                           \
    }
// f32 models only: bf16 activations take the tensor-core path (lora_split/lora_fold + cuBLAS)
#define LORA_R(R) LORA_K(lora, float, f32, R)
LORA_R(8)
LORA_R(16)
LORA_R(32)
LORA_R(64)
BOTH(ce_fwd, (const void* X, const int32_t* labels, float* loss, int v), ce_fwd<T>((const T*)X, labels, loss, v))
BOTH(ce_bwd, (const void* X, const int32_t* labels, const float* g, void* D, int v),
     ce_bwd<T>((const T*)X, labels, g, (T*)D, v))
BOTH(rms_fwd, (const void* X, const void* W, void* Y, long rows, int n, float eps, int vec),
     rms_fwd<T>((const T*)X, (const T*)W, (T*)Y, rows, n, eps, vec))
BOTH(rms_bwd, (const void* X, const void* W, const void* G, void* DX, float* DW, long rows, int n, float eps,
               int vec, int local),
     rms_bwd<T>((const T*)X, (const T*)W, (const T*)G, (T*)DX, DW, rows, n, eps, vec, local))
BOTH(rope, (const void* X, void* Y, const float* C, const float* S, long rows, int t, int h, int d, float sign),
     rope<T>((const T*)X, (T*)Y, C, S, rows, t, h, d, sign))
BOTH(silu_mul_fwd, (const void* G, const void* U, void* Y, long n, int vec),
     silu_mul_fwd<T>((const T*)G, (const T*)U, (T*)Y, n, vec))
BOTH(silu_mul_bwd, (const void* G, const void* U, const void* D, void* DG, void* DU, long n, int vec),
     silu_mul_bwd<T>((const T*)G, (const T*)U, (const T*)D, (T*)DG, (T*)DU, n, vec))
BOTH(adamw, (void* P, const void* G, void* M, void* V, long n, float wd_factor, float b1, float b2, float eps,
             float step_size, float bc2_sqrt, int vec),
     adamw<T>((T*)P, (const T*)G, (T*)M, (T*)V, n, wd_factor, b1, b2, eps, step_size, bc2_sqrt, vec))
BOTH(embed_bwd, (const void* G, const uint32_t* ids, float* dW, long rows, int h, long vocab, int vec),
     embed_bwd<T>((const T*)G, ids, dW, rows, h, vocab, vec))

// flash attention (bf16, tensor cores), forward and backward
#include "flash_attn.cu"
