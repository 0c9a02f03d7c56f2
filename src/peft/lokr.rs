//! LoKr (PEFT's `LoKrConfig`): the weight change is a Kronecker product, `ΔW = W1 ⊗ W2 · α/r`,
//! each factor full or a low-rank product (`W1a·W1b`, `W2a·W2b`), with `out = l·k`, `in = m·n`
//! split by PEFT's `factorization`.

use super::loha::{apply, check_common, param, rank_dropout, skipped};
use super::registry::{self, Config, LinearMethod, Opt, Spec};
use crate::error::Result;
use crate::model::layers::{Linear, LinearAdapter};
use crate::model::{Ctx, Param};
use candle_core::Tensor;

pub struct LoKr;

const OPTIONS: &[Opt] = &[
    Opt {
        key: "r",
        ty: "integer",
        default: "8",
        doc: "rank of a decomposed factor",
    },
    registry::LYCORIS[0],
    registry::LYCORIS[1],
    registry::LYCORIS[2],
    Opt {
        key: "init_weights",
        ty: "boolean|\"lycoris\"",
        default: "true",
        doc: "start at ΔW = 0 (W1 zero; \"lycoris\": W2 zero instead); false: every factor random",
    },
    Opt {
        key: "decompose_both",
        ty: "boolean",
        default: "false",
        doc: "decompose the first factor too (when r is small enough)",
    },
    Opt {
        key: "decompose_factor",
        ty: "integer",
        default: "-1",
        doc: "the size of the first factor's dimensions (-1: as square as the dimension allows)",
    },
    Opt {
        key: "rank_dropout_scale",
        ty: "boolean",
        default: "false",
        doc: "rescale the rows rank dropout keeps",
    },
];

/// PEFT's `factorization`: `dimension = m·n`; `m = factor` when it divides (even when `m > n`),
/// else the most balanced split with `m ≤ n` and `m` at most `factor` (any, with −1).
pub fn factorization(dimension: usize, factor: i64) -> (usize, usize) {
    if factor > 0 && dimension.is_multiple_of(factor as usize) {
        return (factor as usize, dimension / factor as usize);
    }
    let factor = if factor < 0 {
        dimension
    } else {
        factor as usize
    };
    let (mut m, mut n) = (1, dimension);
    let length = m + n;
    while m < n {
        let mut new_m = m + 1;
        while !dimension.is_multiple_of(new_m) {
            new_m += 1;
        }
        let new_n = dimension / new_m;
        if new_m + new_n > length || new_m > factor {
            break;
        }
        (m, n) = (new_m, new_n);
    }
    if m > n {
        (n, m)
    } else {
        (m, n)
    }
}

/// A factor: a full matrix, or `a·b`.
enum Factor {
    Full(Param),
    Low(Param, Param),
}

/// Which part of a factor starts at zero (the rest kaiming-uniform, `a = √5`).
#[derive(Clone, Copy, PartialEq)]
enum Zero {
    Nothing,
    /// the full matrix, or `a`
    A,
    /// the full matrix, or `b`
    B,
}

impl Factor {
    fn new(
        (rows, cols): (usize, usize),
        r: usize,
        full: bool,
        zero: Zero,
        rng: &mut impl rand::Rng,
        dev: &candle_core::Device,
    ) -> Result<Self> {
        let mut make = |rows: usize, cols: usize, z: bool| {
            if z {
                vec![0f32; rows * cols]
            } else {
                registry::kaiming(rng, rows, cols)
            }
        };
        Ok(if full {
            let v = make(rows, cols, zero != Zero::Nothing);
            Factor::Full(param(v, (rows, cols), dev)?)
        } else {
            let a = make(rows, r, zero == Zero::A);
            let b = make(r, cols, zero == Zero::B);
            Factor::Low(param(a, (rows, r), dev)?, param(b, (r, cols), dev)?)
        })
    }

    fn value(&self, ctx: &Ctx) -> Result<Tensor> {
        Ok(match self {
            Factor::Full(w) => w.get(ctx),
            Factor::Low(a, b) => a.get(ctx).matmul(&b.get(ctx))?,
        })
    }

    fn params(&self, name: &str, out: &mut Vec<(String, Param)>) {
        match self {
            Factor::Full(w) => out.push((name.to_string(), w.clone())),
            Factor::Low(a, b) => {
                out.push((format!("{name}_a"), a.clone()));
                out.push((format!("{name}_b"), b.clone()));
            }
        }
    }
}

const SPEC: Spec = Spec {
    name: "lokr",
    peft_type: "LOKR",
    doc: "Attaches LoKr adapters (Kronecker product, PEFT's LoKrConfig)",
    options: OPTIONS,
    config_extras: r#"{"layers_pattern": null, "layers_to_transform": null, "alpha_pattern": {}, "rank_pattern": {}, "exclude_modules": null, "use_effective_conv2d": false}"#,
    lua_names: &[],
    lua_values: &[],
};

impl LinearMethod for LoKr {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn default_targets(&self, model_type: &str) -> Option<Vec<&'static str>> {
        registry::attention_qv(model_type)
    }
    fn peft_wraps_conv1d(&self) -> bool {
        // PEFT 0.21: "Target module of type Conv1D not supported"
        false
    }
    fn check(&self, cfg: &Config) -> Result<()> {
        check_common(cfg)?;
        match cfg.get("init_weights") {
            Some(serde_json::Value::Bool(_)) => {}
            Some(serde_json::Value::String(s)) if s == "lycoris" => {}
            other => {
                return Err(crate::Error::msg(format!(
                    "init_weights must be true, false or \"lycoris\", got {}",
                    other.cloned().unwrap_or_default()
                )))
            }
        }
        let f = registry::int(cfg, "decompose_factor");
        if f == 0 || f < -1 {
            return Err(crate::Error::msg(format!(
                "decompose_factor must be -1 or at least 1, got {f}"
            )));
        }
        Ok(())
    }
    fn attach(
        &self,
        cfg: &Config,
        lin: &Linear,
        path: &str,
        seed: u64,
        _shared: &[(String, Param)],
    ) -> Result<Box<dyn LinearAdapter>> {
        let (out, inp) = (lin.out_features(), lin.in_features());
        let r = registry::int(cfg, "r") as usize;
        // at most the two full factors, or four of rank r
        crate::model::param::ensure_fits(path, &[&[out, r], &[r, inp]])?;
        let factor = registry::int(cfg, "decompose_factor");
        let (in_m, in_n) = factorization(inp, factor);
        let (out_l, out_k) = factorization(out, factor);
        // PEFT decomposes a factor when r is below half its larger side (the first only with
        // decompose_both)
        let full1 =
            !(registry::flag(cfg, "decompose_both") && (r as f64) < out_l.max(in_m) as f64 / 2.0);
        let full2 = (r as f64) >= out_k.max(in_n) as f64 / 2.0;
        // PEFT: ΔW starts at zero through W1 (W1, or W1a), or with "lycoris" through W2 (W2, or
        // W2b); false: every factor random
        let (z1, z2) = match cfg.get("init_weights") {
            Some(serde_json::Value::Bool(false)) => (Zero::Nothing, Zero::Nothing),
            Some(serde_json::Value::String(s)) if s == "lycoris" => (Zero::Nothing, Zero::B),
            _ => (Zero::A, Zero::Nothing),
        };
        let dev = lin.weight.value().device().clone();
        let mut rng = super::lora::rng_for(seed, path);
        let w1 = Factor::new((out_l, in_m), r, full1, z1, &mut rng, &dev)?;
        let w2 = Factor::new((out_k, in_n), r, full2, z2, &mut rng, &dev)?;
        Ok(Box::new(LoKrAdapter {
            w1,
            w2,
            scale: registry::num(cfg, "alpha") / r as f64,
            rank_dropout: registry::num(cfg, "rank_dropout") as f32,
            rescale: registry::flag(cfg, "rank_dropout_scale"),
            module_dropout: registry::num(cfg, "module_dropout") as f32,
        }))
    }
}

pub struct LoKrAdapter {
    w1: Factor,
    w2: Factor,
    scale: f64,
    rank_dropout: f32,
    rescale: bool,
    module_dropout: f32,
}

/// `a ⊗ b`: `[m, n] ⊗ [p, q]` → `[m·p, n·q]`.
fn kron(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (m, n) = a.dims2()?;
    let (p, q) = b.dims2()?;
    let k = a
        .reshape((m, 1, n, 1))?
        .broadcast_mul(&b.reshape((1, p, 1, q))?)?;
    Ok(k.reshape((m * p, n * q))?)
}

impl LinearAdapter for LoKrAdapter {
    fn delta(&self, x: &Tensor, _base: &Tensor, lin: &Linear, ctx: &Ctx) -> Result<Option<Tensor>> {
        if skipped(self.module_dropout, ctx) {
            return Ok(None);
        }
        let dw = rank_dropout(
            self.delta_weight(lin, ctx)?,
            self.rank_dropout,
            self.rescale,
            ctx,
        )?;
        apply(x, &dw).map(Some)
    }

    fn delta_weight(&self, _lin: &Linear, ctx: &Ctx) -> Result<Tensor> {
        Ok((kron(&self.w1.value(ctx)?, &self.w2.value(ctx)?)? * self.scale)?)
    }

    fn params(&self) -> Vec<(String, Param)> {
        let mut out = Vec::new();
        self.w1.params("lokr_w1", &mut out);
        self.w2.params("lokr_w2", &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::factorization;

    #[test]
    fn factorization_is_peft_s() {
        // values of peft.tuners.lokr.layer.factorization
        assert_eq!(factorization(64, -1), (8, 8));
        assert_eq!(factorization(32, -1), (4, 8));
        assert_eq!(factorization(128, 4), (4, 32));
        assert_eq!(factorization(96, -1), (8, 12));
        assert_eq!(factorization(7, -1), (1, 7));
        assert_eq!(factorization(64, 3), (2, 32));
        // a factor that divides is taken as it is, even as the larger side
        assert_eq!(factorization(64, 32), (32, 2));
    }
}
