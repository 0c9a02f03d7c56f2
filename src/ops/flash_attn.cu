// Flash attention for bf16 on tensor cores (mma.sync m16n8k16, f32 accumulators), forward and
// backward, included by kernels.cu. The scores never leave registers: the forward pass keeps a
// running max and sum per query row (f32) and writes the output and each row's log-sum-exp; the
// backward pass recomputes the probabilities from them, one block per key tile and head. Tiles
// are loaded with cp.async one step ahead of the math on the current one.
//
// Layouts are the model's own, so no transposes or head-grouping copies are needed:
// q, o [b, tq, h, D]; k, v [b, tk, hkv, D] (query head hq reads kv head hq / (h / hkv));
// lse [b, h, tq]; key_valid [b, tk] u8. Masking as attn_softmax_fwd: key j is visible from query
// i (position pos = offset + i) when valid, j <= pos if causal, and pos - j < window if window > 0;
// a query that sees no key gets a zero output and zero gradients.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16): lane = 4g + t. A (16×16): a0 (row g,
// cols 2t, 2t+1), a1 (row g+8, same cols), a2 (row g, cols 2t+8, 2t+9), a3 (row g+8, cols 2t+8..).
// B (16×8): b0 (rows 2t, 2t+1, col g), b1 (rows 2t+8, 2t+9, col g). C (16×8): c0, c1 (row g, cols
// 2t, 2t+1), c2, c3 (row g+8). Two C tiles side by side are therefore one A fragment, which is how
// probabilities go from one product into the next without leaving registers.

namespace fa {
typedef __nv_bfloat16 bf;

constexpr int BQ = 64;  // forward: query rows per block (16 per warp)
constexpr int BK = 64;  // backward: keys per block (16 per warp); forward: keys per step
constexpr float LOG2E = 1.4426950408889634f;

__device__ __forceinline__ uint32_t saddr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// Four 8×8 bf16 matrices; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldsm(uint32_t* r, const bf* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(saddr(p)));
}
// The same, each matrix transposed.
__device__ __forceinline__ void ldsm_t(uint32_t* r, const bf* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(saddr(p)));
}

// c += a · b
__device__ __forceinline__ void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// Two C tiles (columns 16k .. 16k + 15 of a 16-row product) as the A fragment of the next product.
__device__ __forceinline__ void c_to_a(uint32_t* a, const float* c0, const float* c1) {
    a[0] = pack(c0[0], c0[1]);
    a[1] = pack(c0[2], c0[3]);
    a[2] = pack(c1[0], c1[1]);
    a[3] = pack(c1[2], c1[3]);
}

// 16 bytes global → shared, zeros when !in (src is then not read).
__device__ __forceinline__ void cp16(bf* dst, const bf* src, bool in) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(saddr(dst)), "l"(src), "r"(in ? 16 : 0));
}
__device__ __forceinline__ void cp4(float* dst, const float* src, bool in) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(saddr(dst)), "l"(src), "r"(in ? 4 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }
__device__ __forceinline__ void cp_wait_all() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }

// Rows [r0, r0 + N) of a row-strided bf16 matrix of D columns into shared memory (leading
// dimension ld), zeros from row `limit` on; 16-byte pieces (D and the strides are multiples of 8).
template <int D, int N>
__device__ __forceinline__ void load_rows(bf* dst, const bf* src, int ld, long stride, int r0, int limit) {
    constexpr int V = D / 8, PER = N * V / 128;
    static_assert(N * V % 128 == 0, "tile not a multiple of the block's 16-byte loads");
#pragma unroll
    for (int it = 0; it < PER; it++) {
        int i = threadIdx.x + it * 128, r = i / V, c = (i % V) * 8;
        bool in = r0 + r < limit;
        cp16(dst + r * ld + c, in ? src + (long)(r0 + r) * stride + c : src, in);
    }
}

__device__ __forceinline__ bool visible(int qi, int tq, int kj, bool valid, int causal, int offset, int window) {
    int pos = offset + qi;
    return qi < tq && valid && (!causal || kj <= pos) && (window <= 0 || pos - kj < window);
}

// Whether every (query, key) of the tiles [q0, q0 + nq) × [k0, k0 + nk) is visible, given that
// all keys of the key tile are valid: such tiles skip the per-element mask.
__device__ __forceinline__ bool tile_open(int q0, int nq, int tq, int k0, int nk, int tk, int causal, int offset,
                                          int window) {
    return q0 + nq <= tq && k0 + nk <= tk && (!causal || k0 + nk - 1 <= offset + q0) &&
           (window <= 0 || offset + q0 + nq - 1 - k0 < window);
}

template <int D>
__device__ void fwd(const bf* Q, const bf* K, const bf* V, const uint8_t* kvalid, bf* O, float* LSE, int tq, int tk,
                    int h, int hkv, int causal, int offset, int window, float scale) {
    constexpr int LD = D + 8;  // padded rows: ldmatrix's eight row reads hit distinct banks
    constexpr int KD = D / 16, NS = BK / 8, NO = D / 8;
    extern __shared__ __align__(128) unsigned char smem[];
    bf* Qs = (bf*)smem;
    bf* Ks = Qs + BQ * LD;        // [2][BK * LD]
    bf* Vs = Ks + 2 * BK * LD;    // [2][BK * LD]
    uint8_t* kvs = (uint8_t*)(Vs + 2 * BK * LD);  // [2][BK]

    int tid = threadIdx.x, w = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    int q0 = blockIdx.x * BQ;
    int bh = blockIdx.y, b = bh / h, hq = bh % h, hk = hq / (h / hkv);
    long qstride = (long)h * D, kstride = (long)hkv * D;
    const bf* qb = Q + ((long)b * tq * h + hq) * D;
    const bf* kb = K + ((long)b * tk * hkv + hk) * D;
    const bf* vb = V + ((long)b * tk * hkv + hk) * D;
    const uint8_t* valid = kvalid + (long)b * tk;
    float sl = scale * LOG2E;  // scores in log2 units

    // only the key tiles some query of this tile can see
    int kend = causal ? min(tk, offset + q0 + BQ) : tk;
    int kbeg = window > 0 ? max(0, q0 + offset - window + 1) / BK * BK : 0;

    load_rows<D, BQ>(Qs, qb, LD, qstride, q0, tq);
    int flag = 1;  // this thread's key of the next tile is valid (threads < BK)
    if (kbeg < kend) {
        load_rows<D, BK>(Ks, kb, LD, kstride, kbeg, tk);
        load_rows<D, BK>(Vs, vb, LD, kstride, kbeg, tk);
        if (tid < BK) {
            flag = kbeg + tid < tk && valid[kbeg + tid];
            kvs[tid] = flag;
        }
    }
    cp_commit();

    uint32_t qa[KD][4];  // this warp's 16 query rows, as A fragments
    float o[NO][4];      // its output rows, unnormalised
#pragma unroll
    for (int j = 0; j < NO; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    // rows g and g + 8 of the warp: running max (log2 units) and this thread's part of the sum
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    int qrow[2] = {q0 + 16 * w + g, q0 + 16 * w + g + 8};

    for (int k0 = kbeg, it = 0; k0 < kend; k0 += BK, it++) {
        int cur = it & 1;
        cp_wait_all();
        bool all_valid = __syncthreads_and(flag);
        if (it == 0) {
#pragma unroll
            for (int kk = 0; kk < KD; kk++)
                ldsm(qa[kk], Qs + (16 * w + lane % 8 + 8 * ((lane / 8) % 2)) * LD + 16 * kk + 8 * (lane / 16));
        }
        // the next tile streams in while this one is used
        int k1 = k0 + BK;
        if (k1 < kend) {
            load_rows<D, BK>(Ks + (cur ^ 1) * BK * LD, kb, LD, kstride, k1, tk);
            load_rows<D, BK>(Vs + (cur ^ 1) * BK * LD, vb, LD, kstride, k1, tk);
            if (tid < BK) {
                flag = k1 + tid < tk && valid[k1 + tid];
                kvs[(cur ^ 1) * BK + tid] = flag;
            }
        }
        cp_commit();
        const bf* ks = Ks + cur * BK * LD;
        const bf* vs = Vs + cur * BK * LD;
        const uint8_t* kv = kvs + cur * BK;

        float s[NS][4];
#pragma unroll
        for (int n = 0; n < NS; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KD; kk++) {
#pragma unroll
            for (int np = 0; np < NS / 2; np++) {
                uint32_t r[4];
                ldsm(r, ks + (16 * np + lane % 8 + 8 * (lane / 16)) * LD + 16 * kk + 8 * ((lane / 8) % 2));
                mma(s[2 * np], qa[kk], r[0], r[1]);
                mma(s[2 * np + 1], qa[kk], r[2], r[3]);
            }
        }
        bool open = all_valid && tile_open(q0, BQ, tq, k0, BK, tk, causal, offset, window);
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < NS; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int c = 8 * n + 2 * t + (e & 1);
                bool vis = open || visible(qrow[e / 2], tq, k0 + c, kv[c], causal, offset, window);
                s[n][e] = vis ? s[n][e] * sl : -INFINITY;
                mx[e / 2] = fmaxf(mx[e / 2], s[n][e]);
            }
        }
        float alpha[2], ref[2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffff, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffff, mx[i], 2));
            float mn = fmaxf(m[i], mx[i]);
            ref[i] = mn == -INFINITY ? 0.0f : mn;  // a row that sees nothing yet keeps zeros
            alpha[i] = exp2f(m[i] - ref[i]);
            m[i] = mn;
            l[i] *= alpha[i];
        }
#pragma unroll
        for (int n = 0; n < NS; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                s[n][e] = exp2f(s[n][e] - ref[e / 2]);
                l[e / 2] += s[n][e];
            }
        }
#pragma unroll
        for (int j = 0; j < NO; j++) {
            o[j][0] *= alpha[0];
            o[j][1] *= alpha[0];
            o[j][2] *= alpha[1];
            o[j][3] *= alpha[1];
        }
        // o += p · v
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            uint32_t pa[4];
            c_to_a(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                uint32_t r[4];
                ldsm_t(r, vs + (16 * kk + lane % 8 + 8 * ((lane / 8) % 2)) * LD + 16 * dp + 8 * (lane / 16));
                mma(o[2 * dp], pa, r[0], r[1]);
                mma(o[2 * dp + 1], pa, r[2], r[3]);
            }
        }
    }
    cp_wait_all();
    // 1/l per row (0 for a query that sees no key), the log-sum-exp for the backward pass
#pragma unroll
    for (int i = 0; i < 2; i++) {
        l[i] += __shfl_xor_sync(0xffffffff, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffff, l[i], 2);
        int qi = qrow[i];
        if (qi >= tq) continue;
        float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
        if (t == 0) LSE[((long)b * h + hq) * tq + qi] = l[i] > 0.0f ? (m[i] + log2f(l[i])) / LOG2E : INFINITY;
        bf* orow = O + (((long)b * tq + qi) * h + hq) * D + 2 * t;
#pragma unroll
        for (int j = 0; j < NO; j++)
            *reinterpret_cast<__nv_bfloat162*>(orow + 8 * j) =
                __floats2bfloat162_rn(o[j][2 * i] * inv, o[j][2 * i + 1] * inv);
    }
}

// One block per (key tile, batch, query head), each warp 16 keys: the transposed scores Sᵀ = K·Qᵀ
// put the keys on the rows, so Pᵀ and dSᵀ are A fragments of dV += Pᵀ·dO and dK += dSᵀ·Q straight
// from registers; dK and dV accumulate there and are added (f32, atomically: the query heads of a
// group share them) at the end. dQ = dS·K sums over the block's keys, so dSᵀ goes through shared
// memory and each query tile's dQ is added atomically.
template <int D, int NQ>
__device__ void bwd(const bf* Q, const bf* K, const bf* V, const bf* dO, const float* LSE, const float* Dsum,
                    const uint8_t* kvalid, float* dQ, float* dK, float* dV, int tq, int tk, int h, int hkv,
                    int causal, int offset, int window, float scale) {
    constexpr int LD = D + 8, LDS = NQ + 8;
    constexpr int KD = D / 16, NS = NQ / 8, NO = D / 8;
    // dQ: the tile's NQ × D split over the four warps, RB row blocks of 16 by WPR column ranges
    constexpr int RB = NQ / 16, WPR = 4 / RB, CW = D / WPR;
    static_assert(RB * WPR == 4 && CW % 16 == 0, "dQ tile does not split over four warps");
    extern __shared__ __align__(128) unsigned char smem[];
    bf* Ks = (bf*)smem;
    bf* Vs = Ks + BK * LD;
    bf* Qs = Vs + BK * LD;        // [2][NQ * LD]
    bf* dOs = Qs + 2 * NQ * LD;   // [2][NQ * LD]
    bf* dSs = dOs + 2 * NQ * LD;  // dSᵀ, [BK][LDS]
    float* lse_s = (float*)(dSs + BK * LDS);  // [2][NQ]
    float* dsum_s = lse_s + 2 * NQ;           // [2][NQ]
    uint8_t* kvs = (uint8_t*)(dsum_s + 2 * NQ);

    int tid = threadIdx.x, w = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    int k0 = blockIdx.x * BK;
    int bh = blockIdx.y, b = bh / h, hq = bh % h, hk = hq / (h / hkv);
    long qstride = (long)h * D, kstride = (long)hkv * D;
    const bf* qb = Q + ((long)b * tq * h + hq) * D;
    const bf* dob = dO + ((long)b * tq * h + hq) * D;
    const float* lseb = LSE + ((long)b * h + hq) * tq;
    const float* dsumb = Dsum + ((long)b * h + hq) * tq;
    float sl = scale * LOG2E;

    // only the query tiles that can see some key of this tile
    int qbeg = causal ? max(0, k0 - offset) / NQ * NQ : 0;
    int qend = window > 0 ? min(tq, k0 + BK - 1 + window - offset) : tq;

    load_rows<D, BK>(Ks, K + ((long)b * tk * hkv + hk) * D, LD, kstride, k0, tk);
    load_rows<D, BK>(Vs, V + ((long)b * tk * hkv + hk) * D, LD, kstride, k0, tk);
    auto load_q = [&](int q, int buf) {
        load_rows<D, NQ>(Qs + buf * NQ * LD, qb, LD, qstride, q, tq);
        load_rows<D, NQ>(dOs + buf * NQ * LD, dob, LD, qstride, q, tq);
        if (tid < NQ) {
            bool in = q + tid < tq;
            cp4(lse_s + buf * NQ + tid, in ? lseb + q + tid : lseb, in);
        } else if (tid < 2 * NQ) {
            int i = tid - NQ;
            bool in = q + i < tq;
            cp4(dsum_s + buf * NQ + i, in ? dsumb + q + i : dsumb, in);
        }
    };
    if (qbeg < qend) load_q(qbeg, 0);
    cp_commit();
    int flag = 1;
    if (tid < BK) {
        flag = k0 + tid < tk && kvalid[(long)b * tk + k0 + tid];
        kvs[tid] = flag;
    }
    bool all_valid = __syncthreads_and(flag);

    float dk[NO][4], dv[NO][4];
#pragma unroll
    for (int j = 0; j < NO; j++) {
        dk[j][0] = dk[j][1] = dk[j][2] = dk[j][3] = 0.0f;
        dv[j][0] = dv[j][1] = dv[j][2] = dv[j][3] = 0.0f;
    }
    // this thread's keys (rows g and g + 8 of the warp's 16)
    int kr[2] = {16 * w + g, 16 * w + g + 8};
    // A fragments of the warp's keys and values, rows 16w .. 16w + 15
    const bf* ka = Ks + (16 * w + lane % 8 + 8 * ((lane / 8) % 2)) * LD + 8 * (lane / 16);
    const bf* va = Vs + (16 * w + lane % 8 + 8 * ((lane / 8) % 2)) * LD + 8 * (lane / 16);

    for (int q0 = qbeg, it = 0; q0 < qend; q0 += NQ, it++) {
        int cur = it & 1;
        cp_wait_all();
        __syncthreads();
        if (q0 + NQ < qend) load_q(q0 + NQ, cur ^ 1);
        cp_commit();
        const bf* qs = Qs + cur * NQ * LD;
        const bf* dos = dOs + cur * NQ * LD;
        const float* lse = lse_s + cur * NQ;
        const float* dsum = dsum_s + cur * NQ;

        // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ for the warp's 16 keys × NQ queries
        float s[NS][4], dp[NS][4];
#pragma unroll
        for (int n = 0; n < NS; n++) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.0f;
        }
#pragma unroll
        for (int kk = 0; kk < KD; kk++) {
            uint32_t a[4], av[4];
            ldsm(a, ka + 16 * kk);
            ldsm(av, va + 16 * kk);
#pragma unroll
            for (int np = 0; np < NS / 2; np++) {
                int at = (16 * np + lane % 8 + 8 * (lane / 16)) * LD + 16 * kk + 8 * ((lane / 8) % 2);
                uint32_t r[4];
                ldsm(r, qs + at);
                mma(s[2 * np], a, r[0], r[1]);
                mma(s[2 * np + 1], a, r[2], r[3]);
                ldsm(r, dos + at);
                mma(dp[2 * np], av, r[0], r[1]);
                mma(dp[2 * np + 1], av, r[2], r[3]);
            }
        }
        // Pᵀ into s, dSᵀ = Pᵀ ∘ (dPᵀ − Σ dO·O) · scale into dp
        bool open = all_valid && tile_open(q0, NQ, tq, k0, BK, tk, causal, offset, window);
#pragma unroll
        for (int n = 0; n < NS; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int c = 8 * n + 2 * t + (e & 1), r = kr[e / 2];
                bool vis = open || visible(q0 + c, tq, k0 + r, kvs[r], causal, offset, window);
                float p = vis ? exp2f(s[n][e] * sl - lse[c] * LOG2E) : 0.0f;
                s[n][e] = p;
                dp[n][e] = p * (dp[n][e] - dsum[c]) * scale;
            }
        }
        // dV += Pᵀ·dO, dK += dSᵀ·Q
#pragma unroll
        for (int kk = 0; kk < NS / 2; kk++) {
            uint32_t pa[4], da[4];
            c_to_a(pa, s[2 * kk], s[2 * kk + 1]);
            c_to_a(da, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
            for (int j = 0; j < D / 16; j++) {
                int at = (16 * kk + lane % 8 + 8 * ((lane / 8) % 2)) * LD + 16 * j + 8 * (lane / 16);
                uint32_t r[4];
                ldsm_t(r, dos + at);
                mma(dv[2 * j], pa, r[0], r[1]);
                mma(dv[2 * j + 1], pa, r[2], r[3]);
                ldsm_t(r, qs + at);
                mma(dk[2 * j], da, r[0], r[1]);
                mma(dk[2 * j + 1], da, r[2], r[3]);
            }
        }
        // dSᵀ to shared memory for dQ
#pragma unroll
        for (int n = 0; n < NS; n++) {
            int c = 8 * n + 2 * t;
            *reinterpret_cast<uint32_t*>(dSs + kr[0] * LDS + c) = pack(dp[n][0], dp[n][1]);
            *reinterpret_cast<uint32_t*>(dSs + kr[1] * LDS + c) = pack(dp[n][2], dp[n][3]);
        }
        __syncthreads();
        // dQ = dS·K: this warp's 16 query rows × CW columns
        int rb = 16 * (w % RB), cb = CW * (w / RB);
        float dq[CW / 8][4];
#pragma unroll
        for (int j = 0; j < CW / 8; j++) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            uint32_t a[4];
            ldsm_t(a, dSs + (16 * kk + lane % 8 + 8 * (lane / 16)) * LDS + rb + 8 * ((lane / 8) % 2));
#pragma unroll
            for (int j = 0; j < CW / 16; j++) {
                uint32_t r[4];
                ldsm_t(r, Ks + (16 * kk + lane % 8 + 8 * ((lane / 8) % 2)) * LD + cb + 16 * j + 8 * (lane / 16));
                mma(dq[2 * j], a, r[0], r[1]);
                mma(dq[2 * j + 1], a, r[2], r[3]);
            }
        }
#pragma unroll
        for (int i = 0; i < 2; i++) {
            int qi = q0 + rb + g + 8 * i;
            if (qi >= tq) continue;
            float* row = dQ + (((long)b * tq + qi) * h + hq) * D + cb + 2 * t;
#pragma unroll
            for (int j = 0; j < CW / 8; j++)
                atomicAdd(reinterpret_cast<float2*>(row + 8 * j), make_float2(dq[j][2 * i], dq[j][2 * i + 1]));
        }
    }
    cp_wait_all();
    // the warp's keys of dK and dV
#pragma unroll
    for (int i = 0; i < 2; i++) {
        int kj = k0 + kr[i];
        if (kj >= tk) continue;
        long at = (((long)b * tk + kj) * hkv + hk) * D + 2 * t;
#pragma unroll
        for (int j = 0; j < NO; j++) {
            atomicAdd(reinterpret_cast<float2*>(dK + at + 8 * j), make_float2(dk[j][2 * i], dk[j][2 * i + 1]));
            atomicAdd(reinterpret_cast<float2*>(dV + at + 8 * j), make_float2(dv[j][2 * i], dv[j][2 * i + 1]));
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

// The backward pass's query tile: 64 rows up to D = 64, 32 above (dK and dV take the registers).
#define FLASH_D(D)                                                                                                   \
    extern "C" __global__ void __launch_bounds__(128, (D) <= 64 ? 3 : 2)                                             \
        flash_fwd_d##D##_bf16(const __nv_bfloat16* Q, const __nv_bfloat16* K, const __nv_bfloat16* V,               \
                              const uint8_t* kv, __nv_bfloat16* O, float* LSE, int tq, int tk, int h, int hkv,       \
                              int causal, int offset, int window, float scale) {                                     \
        fa::fwd<D>(Q, K, V, kv, O, LSE, tq, tk, h, hkv, causal, offset, window, scale);                              \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(128, 2) flash_bwd_d##D##_bf16(                                      \
        const __nv_bfloat16* Q, const __nv_bfloat16* K, const __nv_bfloat16* V, const __nv_bfloat16* dO,            \
        const float* LSE, const float* Dsum, const uint8_t* kv, float* dQ, float* dK, float* dV,                     \
        int tq, int tk, int h, int hkv, int causal, int offset, int window, float scale) {                           \
        fa::bwd<D, (D) <= 64 ? 64 : 32>(Q, K, V, dO, LSE, Dsum, kv, dQ, dK, dV, tq, tk, h, hkv, causal, offset,      \
                                        window, scale);                                                              \
    }
FLASH_D(32)
FLASH_D(64)
FLASH_D(96)
FLASH_D(128)
