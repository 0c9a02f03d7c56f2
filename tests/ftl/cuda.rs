//! The `cuda` build on a GPU (skipped where there is none): the bf16 flash attention kernels
//! against the f32 attention of the same values, output and gradients, through candle's graph
//! and through the device path's tape, for every kind of mask the models build.

use crate::common::rel;
use candle_core::{DType, Device, Tensor, Var};
use ftl::ops::{attention, tape, AttnMask};
use std::sync::Arc;

/// The GPU, or none (the test is then skipped: CI has no GPU; `scripts/gpu-check.sh tests`).
fn gpu() -> Option<Device> {
    let d = Device::new_cuda(0).ok();
    if d.is_none() {
        eprintln!("no CUDA device: skipped");
    }
    d
}

/// Asserts that each named bf16 result is within `tol` (relative) of its f32 counterpart.
fn close(what: &str, pairs: &[(&str, &Tensor, &Tensor)], tol: f32) {
    for (name, got, want) in pairs {
        assert_eq!(got.dims(), want.dims(), "{what}: {name} shape");
        let e = rel(got, want);
        assert!(e < tol, "{what}: {name} differs by {e}");
    }
}

struct Case {
    b: usize,
    tq: usize,
    /// keys before the queries (a KV cache or prefix tuning's virtual tokens)
    offset: usize,
    h: usize,
    hkv: usize,
    d: usize,
    causal: bool,
    window: Option<usize>,
    /// left padding of the last sample
    pad: usize,
}

fn check(dev: &Device, c: &Case, taped: bool) {
    let tk = c.offset + c.tq;
    let mut valid = vec![1u8; c.b * tk];
    for j in 0..c.pad {
        valid[(c.b - 1) * tk + c.offset + j] = 0;
    }
    let mask = AttnMask::new(c.causal, c.offset, Some(Arc::new(valid)), c.window);
    let scale = 1.0 / (c.d as f32).sqrt();
    // bf16 values, so both sides start from the same numbers
    let rnd = |s: &[usize]| {
        Tensor::randn(0f32, 1.0, s, dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap()
    };
    let (q, k, v) = (
        rnd(&[c.b, c.tq, c.h, c.d]),
        rnd(&[c.b, tk, c.hkv, c.d]),
        rnd(&[c.b, tk, c.hkv, c.d]),
    );
    let w = Tensor::randn(0f32, 1.0, (c.b, c.tq, c.h, c.d), dev).unwrap();
    let run = |dt: DType| {
        let vars: Vec<Var> = [&q, &k, &v]
            .iter()
            .map(|t| Var::from_tensor(&t.to_dtype(dt).unwrap()).unwrap())
            .collect();
        let rec = taped.then(tape::record);
        let y = attention(
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
            &mask,
            scale,
        )
        .unwrap();
        let loss = (y.to_dtype(DType::F32).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = if taped {
            tape::backward(&loss, None, tape::split_off(0)).unwrap()
        } else {
            loss.backward().unwrap()
        };
        drop(rec);
        let g: Vec<Tensor> = vars
            .iter()
            .map(|v| grads.get(v.as_tensor()).expect("gradient").clone())
            .collect();
        (y, g)
    };
    use std::sync::atomic::Ordering;
    let before = ftl::ops::cuda::FLASH_LAUNCHES.load(Ordering::Relaxed);
    let (yf, gf) = run(DType::BF16);
    assert!(
        ftl::ops::cuda::FLASH_LAUNCHES.load(Ordering::Relaxed) > before,
        "bf16 attention did not take the flash kernels"
    );
    let (yr, gr) = run(DType::F32);
    let what = format!("d {}, causal {}, taped {taped}", c.d, c.causal);
    close(&what, &[("output", &yf, &yr)], 1e-2);
    close(
        &what,
        &[
            ("dq", &gf[0], &gr[0]),
            ("dk", &gf[1], &gr[1]),
            ("dv", &gf[2], &gr[2]),
        ],
        2e-2,
    );
}

#[test]
fn flash_attention_matches_the_f32_attention() {
    let Some(dev) = gpu() else { return };
    let cases = [
        // GQA, ragged tile, a padded sample whose first queries see no key
        Case {
            b: 2,
            tq: 77,
            offset: 0,
            h: 4,
            hkv: 2,
            d: 64,
            causal: true,
            window: None,
            pad: 5,
        },
        Case {
            b: 1,
            tq: 130,
            offset: 0,
            h: 2,
            hkv: 2,
            d: 128,
            causal: true,
            window: None,
            pad: 0,
        },
        Case {
            b: 2,
            tq: 100,
            offset: 0,
            h: 6,
            hkv: 2,
            d: 32,
            causal: true,
            window: Some(16),
            pad: 3,
        },
        // prefix tuning / a KV cache: keys before the queries
        Case {
            b: 2,
            tq: 40,
            offset: 70,
            h: 4,
            hkv: 1,
            d: 64,
            causal: true,
            window: None,
            pad: 0,
        },
        // an encoder (BERT): no causal mask, padding
        Case {
            b: 3,
            tq: 65,
            offset: 0,
            h: 3,
            hkv: 3,
            d: 96,
            causal: false,
            window: None,
            pad: 9,
        },
        // many whole tiles without a mask (the kernels' unmasked path), several key and query
        // tiles per block in both passes
        Case {
            b: 1,
            tq: 256,
            offset: 0,
            h: 2,
            hkv: 1,
            d: 64,
            causal: false,
            window: None,
            pad: 0,
        },
        // the benchmark's shape per head (llama 1.1B: d 64, 8 query heads per KV head)
        Case {
            b: 2,
            tq: 512,
            offset: 0,
            h: 8,
            hkv: 1,
            d: 64,
            causal: true,
            window: None,
            pad: 0,
        },
        // a window short enough that the forward pass skips whole key tiles
        Case {
            b: 1,
            tq: 256,
            offset: 0,
            h: 2,
            hkv: 1,
            d: 64,
            causal: true,
            window: Some(40),
            pad: 0,
        },
        Case {
            b: 1,
            tq: 200,
            offset: 0,
            h: 2,
            hkv: 2,
            d: 128,
            causal: false,
            window: None,
            pad: 0,
        },
    ];
    for c in &cases {
        check(&dev, c, false);
        check(&dev, c, true);
    }
}

/// One LoRA layer (`x` and `w` in `dt`, f32 adapter) and its backward pass from the loss
/// Σ y·gw: the output and the gradients of x, A and B. The branch is added into the base output in
/// place, so a second call must give the same output.
fn lora_run(
    x: &Tensor,
    w: &Tensor,
    a: &Var,
    bm: &Var,
    s: f64,
    gw: &Tensor,
    dt: DType,
) -> [Tensor; 4] {
    let xv = Var::from_tensor(&x.to_dtype(dt).unwrap()).unwrap();
    let w = w.to_dtype(dt).unwrap();
    let layer = || {
        ftl::ops::lora_linear(
            xv.as_tensor(),
            &w,
            None,
            a.as_tensor(),
            bm.as_tensor(),
            s,
            false,
        )
        .unwrap()
    };
    let y = layer();
    assert_eq!(rel(&y, &layer()), 0.0, "a second call gave another output");
    let loss = (y.to_dtype(DType::F32).unwrap() * gw)
        .unwrap()
        .sum_all()
        .unwrap();
    let g = loss.backward().unwrap();
    let grad = |v: &Tensor| g.get(v).expect("gradient").clone();
    [
        y.clone(),
        grad(xv.as_tensor()),
        grad(a.as_tensor()),
        grad(bm.as_tensor()),
    ]
}

/// LoRA's low-rank kernels with bf16 activations (f32 adapters) against the same layer in f32
/// (whose kernels the PEFT fixtures check on the GPU, `scripts/gpu-check.sh check`):
/// ranks in every bucket, widths that are and are not multiples of the kernels' vector width.
#[test]
fn lora_kernels_match_the_f32_layer() {
    let Some(dev) = gpu() else { return };
    for (m, k, n, r) in [
        (100, 64, 48, 5),
        (257, 520, 96, 16),
        (64, 36, 40, 32),
        (33, 128, 72, 40),
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let w = Tensor::randn(0f32, 0.1, (n, k), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let a = Var::from_tensor(&Tensor::randn(0f32, 0.1, (r, k), &dev).unwrap()).unwrap();
        let bm = Var::from_tensor(&Tensor::randn(0f32, 0.1, (n, r), &dev).unwrap()).unwrap();
        let gw = Tensor::randn(0f32, 1.0, (m, n), &dev).unwrap();
        let run = |dt| lora_run(&x, &w, &a, &bm, 2.0, &gw, dt);
        let (b, f) = (run(DType::BF16), run(DType::F32));
        let names = ["output", "dx", "dA", "dB"];
        let pairs: Vec<_> = (0..4).map(|i| (names[i], &b[i], &f[i])).collect();
        close(&format!("lora m {m}, k {k}, r {r}"), &pairs, 1e-2);
    }
}

/// The tensor-core LoRA path keeps f32 precision where PEFT computes in f32: with a zero base
/// weight and bf16-exact inputs and output gradient, the adapter's gradients (f32) match the f32
/// layer to 1e-4 (a plain bf16 product would be off by ~4e-3), and the output and the input's
/// gradient differ only by their final bf16 rounding.
#[test]
fn lora_tensor_core_path_keeps_f32_precision() {
    let Some(dev) = gpu() else { return };
    let bf = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
    for (m, k, n, r) in [(300, 256, 96, 16), (64, 72, 40, 5), (1000, 2048, 512, 64)] {
        let x = bf(Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap());
        let w = Tensor::zeros((n, k), DType::BF16, &dev).unwrap();
        let a = Var::from_tensor(&Tensor::randn(0f32, 0.1, (r, k), &dev).unwrap()).unwrap();
        let bm = Var::from_tensor(&Tensor::randn(0f32, 0.1, (n, r), &dev).unwrap()).unwrap();
        let gw = bf(Tensor::randn(0f32, 1.0, (m, n), &dev).unwrap())
            .to_dtype(DType::F32)
            .unwrap();
        let run = |dt| lora_run(&x, &w, &a, &bm, 0.5, &gw, dt);
        let (b, f) = (run(DType::BF16), run(DType::F32));
        let what = format!("lora m {m}, k {k}, n {n}, r {r}");
        close(
            &what,
            &[("output", &b[0], &f[0]), ("dx", &b[1], &f[1])],
            5e-3,
        );
        close(&what, &[("dA", &b[2], &f[2]), ("dB", &b[3], &f[3])], 1e-4);
    }
}

/// RMSNorm and SwiGLU with bf16 activations against f32 (the f32 kernels are checked against HF by
/// the fixtures on the GPU): rows that take 16-byte vectors and rows that do not, output and the
/// gradients of the input and the weight.
#[test]
fn norm_and_swiglu_kernels_match_f32() {
    let Some(dev) = gpu() else { return };
    let bf = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
    for (rows, n) in [(300, 2048), (33, 100), (5, 4104)] {
        let x = bf(Tensor::randn(0f32, 1.0, (rows, n), &dev).unwrap());
        let u = bf(Tensor::randn(0f32, 1.0, (rows, n), &dev).unwrap());
        let w = bf(Tensor::randn(1f32, 0.1, n, &dev).unwrap());
        let gw = Tensor::randn(0f32, 1.0, (rows, n), &dev).unwrap();
        let run = |dt: DType| {
            let (xv, uv, wv) = (
                Var::from_tensor(&x.to_dtype(dt).unwrap()).unwrap(),
                Var::from_tensor(&u.to_dtype(dt).unwrap()).unwrap(),
                Var::from_tensor(&w.to_dtype(dt).unwrap()).unwrap(),
            );
            let y = ftl::ops::rms_norm(xv.as_tensor(), wv.as_tensor(), 1e-5).unwrap();
            let z = ftl::ops::silu_mul(&y, uv.as_tensor()).unwrap();
            let loss = (z.to_dtype(DType::F32).unwrap() * &gw)
                .unwrap()
                .sum_all()
                .unwrap();
            let g = loss.backward().unwrap();
            let mut out = vec![y, z];
            for v in [&xv, &uv, &wv] {
                out.push(g.get(v.as_tensor()).expect("gradient").clone());
            }
            out
        };
        let (b, f) = (run(DType::BF16), run(DType::F32));
        let names = ["rms", "swiglu", "dx", "du", "dw"];
        let pairs: Vec<_> = (0..5).map(|i| (names[i], &b[i], &f[i])).collect();
        close(&format!("rows {rows}, n {n}"), &pairs, 1e-2);
    }
}

/// The vectorised element-wise kernels with bf16 values against f32: adds (whole vectors, a tail,
/// an unaligned view), the embedding's gradient with repeated tokens (rows that take 16-byte
/// atomics and rows that do not) and AdamW (whole vectors and a tail).
#[test]
fn elementwise_kernels_match_f32() {
    let Some(dev) = gpu() else { return };
    let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
    let f32_ = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    for n in [4096usize, 1003] {
        let a = bf(&Tensor::randn(0f32, 1.0, n + 1, &dev).unwrap());
        let b = bf(&Tensor::randn(0f32, 1.0, n + 1, &dev).unwrap());
        for (x, y) in [
            (a.narrow(0, 0, n).unwrap(), b.narrow(0, 0, n).unwrap()),
            (a.narrow(0, 1, n).unwrap(), b.narrow(0, 1, n).unwrap()),
        ] {
            let got = ftl::ops::add(&x, &y).unwrap();
            let want = (f32_(&x) + f32_(&y)).unwrap();
            close(&format!("n {n}"), &[("add", &got, &want)], 1e-2);
        }
    }
    for h in [72usize, 36] {
        let w = Tensor::randn(0f32, 1.0, (50, h), &dev).unwrap();
        let ids = Tensor::new(&[3u32, 7, 3, 49, 0, 3, 7, 12], &dev).unwrap();
        let gw = bf(&Tensor::randn(0f32, 1.0, (8, h), &dev).unwrap());
        let grad = |dt: DType| {
            let v = Var::from_tensor(&w.to_dtype(dt).unwrap()).unwrap();
            let y = ftl::ops::embedding(v.as_tensor(), &ids).unwrap();
            let loss = (f32_(&y) * f32_(&gw)).unwrap().sum_all().unwrap();
            loss.backward().unwrap().get(v.as_tensor()).unwrap().clone()
        };
        let (b, f) = (grad(DType::BF16), grad(DType::F32));
        close(&format!("h {h}"), &[("embedding gradient", &b, &f)], 1e-2);
    }
    for n in [4096usize, 1003] {
        let r = |s: f32| Tensor::randn(0f32, s, n, &dev).unwrap();
        let (p, g, m) = (r(1.0), r(0.1), r(0.01));
        let v = r(0.01).sqr().unwrap();
        let step = |dt: DType| {
            let t: Vec<Tensor> = [&p, &m, &v]
                .iter()
                .map(|t| t.to_dtype(dt).unwrap())
                .collect();
            ftl::ops::cuda::adamw(&t[0], &g, &t[1], &t[2], 0.999, 0.9, 0.999, 1e-8, 1e-2, 0.03)
                .unwrap();
            t
        };
        let (b, f) = (step(DType::BF16), step(DType::F32));
        let pairs = [
            ("p", &b[0], &f[0]),
            ("m", &b[1], &f[1]),
            ("v", &b[2], &f[2]),
        ];
        close(&format!("adamw n {n}"), &pairs, 1e-2);
    }
}

/// IA3's scaling with bf16 activations against f32: the output, the input's and the vector's
/// gradients (the vector's summed over rows by a kernel).
#[test]
fn ia3_scaling_matches_f32() {
    let Some(dev) = gpu() else { return };
    for (m, n) in [(300, 40), (4099, 33), (64, 1030)] {
        let x = Tensor::randn(0f32, 1.0, (m, n), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let l = Var::from_tensor(&Tensor::randn(1f32, 0.1, n, &dev).unwrap()).unwrap();
        let gw = Tensor::randn(0f32, 1.0, (m, n), &dev).unwrap();
        let run = |dt: DType| {
            let xv = Var::from_tensor(&x.to_dtype(dt).unwrap()).unwrap();
            let y = ftl::ops::scale_last(xv.as_tensor(), l.as_tensor()).unwrap();
            let loss = (y.to_dtype(DType::F32).unwrap() * &gw)
                .unwrap()
                .sum_all()
                .unwrap();
            let g = loss.backward().unwrap();
            let dx = g.get(xv.as_tensor()).expect("dx").clone();
            let dl = g.get(l.as_tensor()).expect("dl").clone();
            (y, dx, dl)
        };
        let (yb, xb, lb) = run(DType::BF16);
        let (yf, xf, lf) = run(DType::F32);
        let pairs = [("y", &yb, &yf), ("dx", &xb, &xf), ("dl", &lb, &lf)];
        close(&format!("ia3 m {m}, n {n}"), &pairs, 1e-2);
    }
}
