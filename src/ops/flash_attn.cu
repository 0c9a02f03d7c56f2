// Flash attention for bf16 on tensor cores (WMMA 16×16×16, f32 accumulators), forward and
// backward, included by kernels.cu. The scores never reach global memory: the forward pass keeps
// a running max and sum per query row (f32) and writes the output and each row's log-sum-exp;
// the backward pass recomputes the probabilities from them, one block per key tile and head.
//
// Layouts are the model's own, so no transposes or head-grouping copies are needed:
// q, o [b, tq, h, D]; k, v [b, tk, hkv, D] (query head hq reads kv head hq / (h / hkv));
// lse [b, h, tq]; key_valid [b, tk] u8. Masking as attn_softmax_fwd: key j is visible from query
// i (position pos = offset + i) when valid, j <= pos if causal, and pos - j < window if window > 0;
// a query that sees no key gets a zero output and zero gradients.
#include <mma.h>

namespace fa {
using namespace nvcuda;
typedef __nv_bfloat16 bf;

constexpr int WARPS = 4;  // 16 query (forward) or key (backward) rows per warp
constexpr int BQ = 64;    // query rows per tile
constexpr int BK = 64;    // keys per tile

typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> Acc;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf, wmma::row_major> ARow;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf, wmma::col_major> ACol;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf, wmma::row_major> BRow;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf, wmma::col_major> BCol;

// Rows [r0, r0 + N) of two row-strided bf16 matrices of D columns (same strides) into shared
// memory (leading dimension ld), zeros from row `limit` on. 16-byte vectors (D and the strides are
// multiples of 8), and every load of the 128 threads issued before the first is waited for.
template <int D, int N>
__device__ __forceinline__ void load_rows2(bf* dst1, const bf* src1, bf* dst2, const bf* src2, int ld, long stride,
                                           int r0, int limit) {
    constexpr int V = D / 8, PER = N * V / 128;
    uint4 t1[PER], t2[PER];
#pragma unroll
    for (int it = 0; it < PER; it++) {
        int i = threadIdx.x + it * 128, r = i / V, c = (i % V) * 8;
        bool in = r0 + r < limit;
        long at = (long)(r0 + r) * stride + c;
        t1[it] = in ? *reinterpret_cast<const uint4*>(src1 + at) : make_uint4(0, 0, 0, 0);
        t2[it] = in ? *reinterpret_cast<const uint4*>(src2 + at) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int it = 0; it < PER; it++) {
        int i = threadIdx.x + it * 128, r = i / V, c = (i % V) * 8;
        *reinterpret_cast<uint4*>(dst1 + r * ld + c) = t1[it];
        *reinterpret_cast<uint4*>(dst2 + r * ld + c) = t2[it];
    }
}

// One matrix's rows (see load_rows2).
template <int D, int N>
__device__ __forceinline__ void load_rows(bf* dst, const bf* src, int ld, long stride, int r0, int limit) {
    constexpr int V = D / 8, PER = N * V / 128;
    uint4 t[PER];
#pragma unroll
    for (int it = 0; it < PER; it++) {
        int i = threadIdx.x + it * 128, r = i / V, c = (i % V) * 8;
        t[it] = r0 + r < limit ? *reinterpret_cast<const uint4*>(src + (long)(r0 + r) * stride + c)
                               : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int it = 0; it < PER; it++) {
        int i = threadIdx.x + it * 128, r = i / V, c = (i % V) * 8;
        *reinterpret_cast<uint4*>(dst + r * ld + c) = t[it];
    }
}

template <int D>
struct Dims {
    static constexpr int LQ = D + 8;   // bf16 tiles of D columns
    static constexpr int LS = BK + 4;  // f32 score tiles
    static constexpr int LP = BK + 8;  // bf16 probability tiles
};

// Which row of its 16×16 tile each element of an accumulator fragment holds (the fragment's
// layout is the hardware's): loaded once from a tile of row numbers in `tmp` (16 × ld floats).
__device__ __forceinline__ void row_map(int* rows, float* tmp, int ld) {
    int lane = threadIdx.x % 32;
    for (int e = lane; e < 256; e += 32) tmp[(e / 16) * ld + e % 16] = (float)(e / 16);
    __syncwarp();
    Acc m;
    wmma::load_matrix_sync(m, tmp, ld, wmma::mem_row_major);
#pragma unroll
    for (int i = 0; i < Acc::num_elements; i++) rows[i] = (int)m.x[i];
    __syncwarp();
}

// A warp's 16×16 f32 tile `a`, each row times `scale[row]`, into bf16 rows of `dst` (stride
// `stride`, 16 columns from `dst`) where row < `n`; `tmp` holds 16 × ld floats.
__device__ __forceinline__ void store_rows(Acc& a, const int* rows, const float* scale, float* tmp, int ld, bf* dst,
                                           long stride, int n) {
    int lane = threadIdx.x % 32;
#pragma unroll
    for (int i = 0; i < Acc::num_elements; i++) a.x[i] *= scale[rows[i]];
    wmma::store_matrix_sync(tmp, a, ld, wmma::mem_row_major);
    __syncwarp();
    for (int e = lane; e < 256; e += 32) {
        int r = e / 16, c = e % 16;
        if (r < n) dst[r * stride + c] = __float2bfloat16(tmp[r * ld + c]);
    }
    __syncwarp();
}

template <int D>
__device__ void fwd(const bf* Q, const bf* K, const bf* V, const uint8_t* kvalid, bf* O, float* LSE, int tq, int tk,
                    int h, int hkv, int causal, int offset, int window, float scale) {
    typedef Dims<D> L;
    extern __shared__ __align__(128) unsigned char smem[];
    bf* Qs = (bf*)smem;
    bf* Ks = Qs + BQ * L::LQ;
    bf* Vs = Ks + BK * L::LQ;
    float* Ss = (float*)(Vs + BK * L::LQ);
    bf* Ps = (bf*)(Ss + BQ * L::LS);
    float* ms = (float*)(Ps + BQ * L::LP);
    float* ls = ms + BQ;
    float* alphas = ls + BQ;
    uint8_t* kvs = (uint8_t*)(alphas + BQ);

    int tid = threadIdx.x, w = tid / 32, lane = tid % 32;
    int q0 = blockIdx.x * BQ;
    int bh = blockIdx.y, b = bh / h, hq = bh % h, hk = hq / (h / hkv);
    long qstride = (long)h * D, kstride = (long)hkv * D;
    const bf* qb = Q + ((long)b * tq * h + hq) * D;
    const bf* kb = K + ((long)b * tk * hkv + hk) * D;
    const bf* vb = V + ((long)b * tk * hkv + hk) * D;
    const uint8_t* valid = kvalid + (long)b * tk;
    float* Sw = Ss + 16 * w * L::LS;  // this warp's rows

    load_rows<D, BQ>(Qs, qb, L::LQ, qstride, q0, tq);
    for (int i = tid; i < BQ; i += blockDim.x) {
        ms[i] = -INFINITY;
        ls[i] = 0.0f;
    }
    int rows[Acc::num_elements];
    row_map(rows, Sw, L::LS);
    // this warp's 16 rows × D of the output, unnormalised
    Acc o[D / 16];
#pragma unroll
    for (int j = 0; j < D / 16; j++) wmma::fill_fragment(o[j], 0.0f);
    // two lanes per query row, each taking every other key of a tile
    int r = 16 * w + lane / 2, half = lane % 2, qi = q0 + r, pos = offset + qi;
    // only the key tiles some query of this tile can see
    int kend = causal ? min(tk, offset + q0 + BQ) : tk;
    int kbeg = window > 0 ? max(0, q0 + offset - window + 1) / BK * BK : 0;
    for (int k0 = kbeg; k0 < kend; k0 += BK) {
        __syncthreads();
        load_rows2<D, BK>(Ks, kb, Vs, vb, L::LQ, kstride, k0, tk);
        for (int i = tid; i < BK; i += blockDim.x) kvs[i] = k0 + i < tk ? valid[k0 + i] : 0;
        __syncthreads();
        for (int j = 0; j < BK / 16; j++) {
            Acc acc;
            wmma::fill_fragment(acc, 0.0f);
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                ARow a;
                BCol bm;
                wmma::load_matrix_sync(a, Qs + 16 * w * L::LQ + 16 * kk, L::LQ);
                wmma::load_matrix_sync(bm, Ks + 16 * j * L::LQ + 16 * kk, L::LQ);
                wmma::mma_sync(acc, a, bm, acc);
            }
            wmma::store_matrix_sync(Sw + 16 * j, acc, L::LS, wmma::mem_row_major);
        }
        __syncwarp();
        float x[BK / 2];
        float mx = -INFINITY;
#pragma unroll
        for (int i = 0; i < BK / 2; i++) {
            int c = 2 * i + half, kj = k0 + c;
            bool vis = qi < tq && kvs[c] && (!causal || kj <= pos) && (window <= 0 || pos - kj < window);
            x[i] = vis ? Ss[r * L::LS + c] * scale : -INFINITY;
            mx = fmaxf(mx, x[i]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
        float m_old = ms[r];
        float m_new = fmaxf(m_old, mx);
        float sum = 0.0f;
#pragma unroll
        for (int i = 0; i < BK / 2; i++) {
            float p = x[i] == -INFINITY ? 0.0f : __expf(x[i] - m_new);
            Ps[r * L::LP + 2 * i + half] = __float2bfloat16(p);
            sum += p;
        }
        sum += __shfl_xor_sync(0xffffffff, sum, 1);
        float alpha = m_old == -INFINITY ? 0.0f : __expf(m_old - m_new);
        __syncwarp();
        if (half == 0) {
            ms[r] = m_new;
            ls[r] = ls[r] * alpha + sum;
            alphas[r] = alpha;
        }
        __syncwarp();
#pragma unroll
        for (int j = 0; j < D / 16; j++) {
#pragma unroll
            for (int i = 0; i < Acc::num_elements; i++) o[j].x[i] *= alphas[16 * w + rows[i]];
#pragma unroll
            for (int kk = 0; kk < BK / 16; kk++) {
                ARow a;
                BRow bm;
                wmma::load_matrix_sync(a, Ps + 16 * w * L::LP + 16 * kk, L::LP);
                wmma::load_matrix_sync(bm, Vs + 16 * kk * L::LQ + 16 * j, L::LQ);
                wmma::mma_sync(o[j], a, bm, o[j]);
            }
        }
    }
    __syncthreads();
    // 1/l per row (0 for a query that sees no key), the log-sum-exp for the backward pass
    if (half == 0 && qi < tq) {
        float l = ls[r];
        alphas[r] = l > 0.0f ? 1.0f / l : 0.0f;
        LSE[((long)b * h + hq) * tq + qi] = l > 0.0f ? ms[r] + logf(l) : INFINITY;
    }
    __syncwarp();
    int n = min(16, tq - (q0 + 16 * w));
    bf* ob = O + (((long)b * tq + q0 + 16 * w) * h + hq) * D;
#pragma unroll
    for (int j = 0; j < D / 16; j++) store_rows(o[j], rows, alphas + 16 * w, Sw, L::LS, ob + 16 * j, qstride, n);
}

// One block per (key tile, batch, query head): dK and dV of the tile accumulate in registers and
// are added (f32, atomically: the query heads of a group share them) at the end; dQ is added per
// query tile.
template <int D>
__device__ void bwd(const bf* Q, const bf* K, const bf* V, const bf* dO, const float* LSE, const float* Dsum,
                    const uint8_t* kvalid, float* dQ, float* dK, float* dV, int tq, int tk, int h, int hkv,
                    int causal, int offset, int window, float scale) {
    typedef Dims<D> L;
    extern __shared__ __align__(128) unsigned char smem[];
    bf* Ks = (bf*)smem;
    bf* Vs = Ks + BK * L::LQ;
    bf* Qs = Vs + BK * L::LQ;
    bf* dOs = Qs + BQ * L::LQ;
    float* Ss = (float*)(dOs + BQ * L::LQ);
    float* dPs = Ss + BQ * L::LS;
    bf* Ps = (bf*)(dPs + BQ * L::LS);
    bf* dSs = Ps + BQ * L::LP;
    float* scratch = (float*)(dSs + BQ * L::LP);
    float* lse_s = scratch + WARPS * 256;
    float* dsum_s = lse_s + BQ;
    uint8_t* kvs = (uint8_t*)(dsum_s + BQ);

    int tid = threadIdx.x, w = tid / 32, lane = tid % 32;
    int k0 = blockIdx.x * BK;
    int bh = blockIdx.y, b = bh / h, hq = bh % h, hk = hq / (h / hkv);
    long qstride = (long)h * D, kstride = (long)hkv * D;
    const uint8_t* valid = kvalid + (long)b * tk;
    const bf* qb = Q + ((long)b * tq * h + hq) * D;
    const bf* dob = dO + ((long)b * tq * h + hq) * D;

    load_rows2<D, BK>(Ks, K + ((long)b * tk * hkv + hk) * D, Vs, V + ((long)b * tk * hkv + hk) * D, L::LQ, kstride, k0,
                      tk);
    for (int i = tid; i < BK; i += blockDim.x) kvs[i] = k0 + i < tk ? valid[k0 + i] : 0;
    // this warp's 16 keys × D of dK and dV
    Acc dk[D / 16], dv[D / 16];
#pragma unroll
    for (int j = 0; j < D / 16; j++) {
        wmma::fill_fragment(dk[j], 0.0f);
        wmma::fill_fragment(dv[j], 0.0f);
    }
    // only the query tiles that can see some key of this tile
    int qbeg = causal ? max(0, k0 - offset) / BQ * BQ : 0;
    int qend = window > 0 ? min(tq, k0 + BK - 1 + window - offset) : tq;
    // two lanes per query row in the element-wise part, each taking every other key
    int rl = 16 * w + lane / 2, half = lane % 2;
    float* sc = scratch + w * 256;
    for (int q0 = qbeg; q0 < qend; q0 += BQ) {
        __syncthreads();
        load_rows2<D, BQ>(Qs, qb, dOs, dob, L::LQ, qstride, q0, tq);
        for (int i = tid; i < BQ; i += blockDim.x) {
            int qi = q0 + i;
            long at = ((long)b * h + hq) * tq + qi;
            lse_s[i] = qi < tq ? LSE[at] : INFINITY;
            dsum_s[i] = qi < tq ? Dsum[at] : 0.0f;
        }
        __syncthreads();
        // scores and dP = dO·Vᵀ for this warp's 16 query rows
        for (int j = 0; j < BK / 16; j++) {
            Acc s, dp;
            wmma::fill_fragment(s, 0.0f);
            wmma::fill_fragment(dp, 0.0f);
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                ARow a;
                BCol bm;
                wmma::load_matrix_sync(a, Qs + 16 * w * L::LQ + 16 * kk, L::LQ);
                wmma::load_matrix_sync(bm, Ks + 16 * j * L::LQ + 16 * kk, L::LQ);
                wmma::mma_sync(s, a, bm, s);
                wmma::load_matrix_sync(a, dOs + 16 * w * L::LQ + 16 * kk, L::LQ);
                wmma::load_matrix_sync(bm, Vs + 16 * j * L::LQ + 16 * kk, L::LQ);
                wmma::mma_sync(dp, a, bm, dp);
            }
            wmma::store_matrix_sync(Ss + 16 * w * L::LS + 16 * j, s, L::LS, wmma::mem_row_major);
            wmma::store_matrix_sync(dPs + 16 * w * L::LS + 16 * j, dp, L::LS, wmma::mem_row_major);
        }
        __syncwarp();
        {
            int qi = q0 + rl, pos = offset + qi;
            float lse = lse_s[rl], ds0 = dsum_s[rl];
#pragma unroll
            for (int i = 0; i < BK / 2; i++) {
                int c = 2 * i + half, kj = k0 + c;
                bool vis = qi < tq && kvs[c] && (!causal || kj <= pos) && (window <= 0 || pos - kj < window);
                float p = vis ? __expf(Ss[rl * L::LS + c] * scale - lse) : 0.0f;
                Ps[rl * L::LP + c] = __float2bfloat16(p);
                dSs[rl * L::LP + c] = __float2bfloat16(p * (dPs[rl * L::LS + c] - ds0) * scale);
            }
        }
        __syncthreads();
        // dV += Pᵀ·dO and dK += dSᵀ·Q for this warp's 16 keys
#pragma unroll
        for (int kk = 0; kk < BQ / 16; kk++) {
            ACol p, ds;
            wmma::load_matrix_sync(p, Ps + 16 * kk * L::LP + 16 * w, L::LP);
            wmma::load_matrix_sync(ds, dSs + 16 * kk * L::LP + 16 * w, L::LP);
#pragma unroll
            for (int j = 0; j < D / 16; j++) {
                BRow bm;
                wmma::load_matrix_sync(bm, dOs + 16 * kk * L::LQ + 16 * j, L::LQ);
                wmma::mma_sync(dv[j], p, bm, dv[j]);
                wmma::load_matrix_sync(bm, Qs + 16 * kk * L::LQ + 16 * j, L::LQ);
                wmma::mma_sync(dk[j], ds, bm, dk[j]);
            }
        }
        // dQ += dS·K for this warp's 16 query rows
        for (int j = 0; j < D / 16; j++) {
            Acc dq;
            wmma::fill_fragment(dq, 0.0f);
#pragma unroll
            for (int kk = 0; kk < BK / 16; kk++) {
                ARow a;
                BRow bm;
                wmma::load_matrix_sync(a, dSs + 16 * w * L::LP + 16 * kk, L::LP);
                wmma::load_matrix_sync(bm, Ks + 16 * kk * L::LQ + 16 * j, L::LQ);
                wmma::mma_sync(dq, a, bm, dq);
            }
            wmma::store_matrix_sync(sc, dq, 16, wmma::mem_row_major);
            __syncwarp();
            for (int e = lane; e < 256; e += 32) {
                int qi = q0 + 16 * w + e / 16;
                if (qi < tq) atomicAdd(dQ + (((long)b * tq + qi) * h + hq) * D + 16 * j + e % 16, sc[e]);
            }
            __syncwarp();
        }
    }
    // the warp's keys of dK and dV, added through its scratch
#pragma unroll
    for (int j = 0; j < D / 16; j++) {
        for (int t = 0; t < 2; t++) {
            wmma::store_matrix_sync(sc, t == 0 ? dk[j] : dv[j], 16, wmma::mem_row_major);
            __syncwarp();
            float* dst = t == 0 ? dK : dV;
            for (int e = lane; e < 256; e += 32) {
                int kj = k0 + 16 * w + e / 16;
                if (kj < tk) atomicAdd(dst + (((long)b * tk + kj) * hkv + hk) * D + 16 * j + e % 16, sc[e]);
            }
            __syncwarp();
        }
    }
}
}  // namespace fa

// Σ_d dO·O per query row, [b, h, tq] (the softmax backward's row term).
extern "C" __global__ void flash_dsum_bf16(const __nv_bfloat16* O, const __nv_bfloat16* dO, float* Dsum, long rows,
                                           int tq, int h, int d) {
    long r = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= rows) return;
    const __nv_bfloat16* o = O + r * d;
    const __nv_bfloat16* g = dO + r * d;
    float s = 0.0f;
    for (int c = lane; c < d; c += 32) s += __bfloat162float(o[c]) * __bfloat162float(g[c]);
    s = warp_sum(s);
    // r indexes [b, tq, h]
    long hq = r % h, qi = (r / h) % tq, b = r / ((long)h * tq);
    if (lane == 0) Dsum[(b * h + hq) * tq + qi] = s;
}

#define FLASH_D(D)                                                                                                   \
    extern "C" __global__ void __launch_bounds__(128, (D) <= 64 ? 4 : 2)                                             \
        flash_fwd_d##D##_bf16(const __nv_bfloat16* Q, const __nv_bfloat16* K, const __nv_bfloat16* V,               \
                              const uint8_t* kv, __nv_bfloat16* O, float* LSE, int tq, int tk, int h, int hkv,       \
                              int causal, int offset, int window, float scale) {                                     \
        fa::fwd<D>(Q, K, V, kv, O, LSE, tq, tk, h, hkv, causal, offset, window, scale);                              \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(128) flash_bwd_d##D##_bf16(                                         \
        const __nv_bfloat16* Q, const __nv_bfloat16* K, const __nv_bfloat16* V, const __nv_bfloat16* dO,            \
        const float* LSE, const float* Dsum, const uint8_t* kv, float* dQ, float* dK, float* dV,                     \
        int tq, int tk, int h, int hkv, int causal, int offset, int window, float scale) {                           \
        fa::bwd<D>(Q, K, V, dO, LSE, Dsum, kv, dQ, dK, dV, tq, tk, h, hkv, causal, offset, window, scale);           \
    }
FLASH_D(32)
FLASH_D(64)
FLASH_D(96)
FLASH_D(128)
