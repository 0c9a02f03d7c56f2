//! Learning-rate schedules as pure functions, with transformers' formulas
//! (`get_{constant,linear,cosine}_schedule_with_warmup`, `cosine_with_min_lr`).

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Constant,
    Linear,
    Cosine,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "constant" => Kind::Constant,
            "linear" => Kind::Linear,
            "cosine" => Kind::Cosine,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub kind: Kind,
    pub warmup: usize,
    /// the floor of the cosine as an absolute lr (`cosine_with_min_lr`)
    pub min_lr: Option<f64>,
}

/// The learning rate of optimizer step `step` (from 0) of `total`.
pub fn lr_at(s: &Schedule, lr: f64, step: usize, total: usize) -> f64 {
    lr * factor(s, lr, step, total)
}

fn factor(s: &Schedule, lr: f64, step: usize, total: usize) -> f64 {
    if step < s.warmup {
        return step as f64 / s.warmup.max(1) as f64;
    }
    let progress = (step - s.warmup) as f64 / total.saturating_sub(s.warmup).max(1) as f64;
    match s.kind {
        Kind::Constant => 1.0,
        Kind::Linear => {
            ((total as f64 - step as f64) / total.saturating_sub(s.warmup).max(1) as f64).max(0.0)
        }
        Kind::Cosine => {
            let c = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
            match s.min_lr {
                Some(m) => {
                    let rate = m / lr;
                    c * (1.0 - rate) + rate
                }
                None => c.max(0.0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s = Schedule {
            kind: Kind::Linear,
            warmup: 2,
            min_lr: None,
        };
        let lrs: Vec<f64> = (0..6).map(|k| lr_at(&s, 1.0, k, 6)).collect();
        assert_eq!(lrs, vec![0.0, 0.5, 1.0, 0.75, 0.5, 0.25]);
        let c = Schedule {
            kind: Kind::Cosine,
            warmup: 0,
            min_lr: Some(0.1),
        };
        assert!((lr_at(&c, 1.0, 0, 10) - 1.0).abs() < 1e-12);
        assert!((lr_at(&c, 1.0, 10, 10) - 0.1).abs() < 1e-12);
        let k = Schedule {
            kind: Kind::Constant,
            warmup: 4,
            min_lr: None,
        };
        assert_eq!(lr_at(&k, 2.0, 1, 10), 0.5);
        assert_eq!(lr_at(&k, 2.0, 7, 10), 2.0);
    }
}
