//! `ftl inspect MODEL [PATTERN]`: a model's module tree from its headers only (shapes, dtypes,
//! parameter counts, layers folded when they are alike), marking what a pattern matches, so
//! that targets can be written without guessing.

use crate::check::count;
use crate::model::hf_cache::resolve_ref;
use crate::model::hub::{self, LoadOpts};
use crate::peft::target::{compact, layer_of, Pattern, Selector};
use crate::peft::Kind;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// A pattern as given on the command line: `re:…` or a glob (`*`, `{a,b}`), `all-linear`, or
/// module names separated by commas, matched as PEFT matches a list (`q_proj,v_proj`).
pub fn cli_pattern(s: &str) -> Result<(Selector, bool)> {
    if s.eq_ignore_ascii_case("all-linear") {
        return Ok((Selector::new(Pattern::list(vec![])), true));
    }
    let glob = s.starts_with("re:") || s.contains(['*', '{', '?']);
    let p = if glob {
        Pattern::parse(s)?
    } else {
        Pattern::list(s.split(',').map(|x| x.trim().to_string()).collect())
    };
    Ok((Selector::new(p), false))
}

struct Row {
    /// the module path
    path: String,
    /// (weight name, shape, dtype, the module it is tied to)
    weights: Vec<(String, Vec<usize>, String, Option<String>)>,
    hit: bool,
}

impl Row {
    fn params(&self) -> usize {
        self.weights
            .iter()
            .filter(|w| w.3.is_none())
            .map(|w| w.1.iter().product::<usize>())
            .sum()
    }
}

fn line(out: &mut String, indent: &str, name: &str, r: &Row, mark: &str) {
    let shapes: Vec<String> = r
        .weights
        .iter()
        .map(|(n, s, _, tied)| match tied {
            Some(t) => format!("{n} tied to {t}"),
            None => format!("{n} {s:?}"),
        })
        .collect();
    let dtype = r.weights.first().map_or("", |w| w.2.as_str());
    let w = 40 - indent.len();
    let _ = writeln!(
        out,
        "{mark:<2}{indent}{name:<w$} {:<44} {dtype:<5} {:>12}",
        shapes.join(", "),
        count(r.params())
    );
}

/// The listing `ftl inspect` prints.
pub fn inspect(model: &Path, pattern: Option<&str>) -> Result<String> {
    let lo = LoadOpts {
        shapes_only: true,
        ..Default::default()
    };
    let dir = resolve_ref(model, Path::new(""))?;
    let mut m = hub::load(&dir, &lo).with_context(|| format!("loading {}", model.display()))?;
    let users = m.weight_users();
    let mut first_user: BTreeMap<usize, String> = BTreeMap::new();
    let mut rows: Vec<Row> = Vec::new();
    for (path, suffix, p) in m.handles() {
        let tied = match first_user.get(&p.key()) {
            Some(f) if users.get(&p.key()).copied().unwrap_or(1) > 1 => Some(f.clone()),
            _ => {
                first_user.insert(p.key(), path.clone());
                None
            }
        };
        // the file's dtype (a GGUF file's quantization), else the one ftl loads
        let dtype = m
            .stored_dtypes
            .get(&format!("{}.{suffix}", tied.as_deref().unwrap_or(&path)))
            .cloned()
            .unwrap_or_else(|| p.value().dtype().as_str().to_string());
        let w = (suffix.to_string(), p.dims(), dtype, tied);
        match rows.iter_mut().find(|r| r.path == path) {
            Some(r) => r.weights.push(w),
            None => rows.push(Row {
                path,
                weights: vec![w],
                hit: false,
            }),
        }
    }
    let hits: Vec<String> = match pattern {
        None => Vec::new(),
        Some(s) => {
            let (sel, all_linear) = cli_pattern(s)?;
            if all_linear {
                m.all_linear(&sel)
            } else {
                let cands = m.module_paths(Kind::Any);
                sel.select(&cands, "modules")?
            }
        }
    };
    for r in rows.iter_mut() {
        r.hit = hits.contains(&r.path);
    }
    let d = m.info_dims();
    let total: usize = rows.iter().map(Row::params).sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {}, {} layers, hidden {}, {} heads ({} key/value), vocab {}, {} parameters (loaded as {} on the CPU)",
        model.display(),
        m.arch.model_type(),
        d.layers,
        d.hidden,
        d.heads,
        d.kv_heads,
        d.vocab,
        count(total),
        m.dtype.as_str()
    );
    let _ = writeln!(
        out,
        "  {:<40} {:<44} {:<5} {:>12}",
        "module", "weights", "dtype", "parameters"
    );
    // a layer's modules by their path inside the layer: layers alike print once
    let layer_prefix = |p: &str| -> Option<(String, usize, String)> {
        let l = layer_of(p)?;
        let segs: Vec<&str> = p.split('.').collect();
        let i = segs
            .iter()
            .position(|s| s.parse::<usize>().ok() == Some(l))?;
        Some((segs[..i].join("."), l, segs[i + 1..].join(".")))
    };
    let mut i = 0;
    while i < rows.len() {
        let Some((pre, _, _)) = layer_prefix(&rows[i].path) else {
            let mark = if rows[i].hit { "*" } else { "" };
            line(&mut out, "", &rows[i].path, &rows[i], mark);
            i += 1;
            continue;
        };
        // the run of rows inside `pre.N…`, every layer
        let start = i;
        while i < rows.len() && layer_prefix(&rows[i].path).is_some_and(|(p, _, _)| p == pre) {
            i += 1;
        }
        let block = &rows[start..i];
        let mut per_layer: BTreeMap<usize, Vec<&Row>> = BTreeMap::new();
        for r in block {
            let (_, l, _) = layer_prefix(&r.path).unwrap_or_default();
            per_layer.entry(l).or_default().push(r);
        }
        type Layout = Vec<(String, Vec<(String, Vec<usize>)>)>;
        let shape = |rs: &Vec<&Row>| -> Layout {
            rs.iter()
                .map(|r| {
                    (
                        layer_prefix(&r.path).map(|x| x.2).unwrap_or_default(),
                        r.weights
                            .iter()
                            .map(|w| (w.0.clone(), w.1.clone()))
                            .collect(),
                    )
                })
                .collect()
        };
        let layers: Vec<usize> = per_layer.keys().copied().collect();
        let first = &per_layer[&layers[0]];
        let alike = per_layer.values().all(|rs| shape(rs) == shape(first));
        let groups: Vec<Vec<usize>> = if alike {
            vec![layers.clone()]
        } else {
            layers.iter().map(|l| vec![*l]).collect()
        };
        for g in groups {
            let rs = &per_layer[&g[0]];
            let each: usize = rs.iter().map(|r| r.params()).sum();
            let name = compact(&g.iter().map(|l| format!("{pre}.{l}")).collect::<Vec<_>>());
            let _ = writeln!(
                out,
                "  {} ({} layer{}, {} parameters each)",
                name[0],
                g.len(),
                if g.len() == 1 { "" } else { "s" },
                count(each)
            );
            for (k, r) in rs.iter().enumerate() {
                let rel = layer_prefix(&r.path).map(|x| x.2).unwrap_or_default();
                // which layers of the group the pattern matches at this position
                let hit_in: Vec<usize> = g
                    .iter()
                    .filter(|l| per_layer[l].get(k).is_some_and(|r| r.hit))
                    .copied()
                    .collect();
                let mark = if hit_in.is_empty() {
                    String::new()
                } else if hit_in.len() == g.len() {
                    "*".to_string()
                } else {
                    let c = compact(
                        &hit_in
                            .iter()
                            .map(|l| format!("{pre}.{l}"))
                            .collect::<Vec<_>>(),
                    );
                    format!("* in {}", c[0])
                };
                let name = if mark.len() > 1 {
                    format!("{rel}  ({mark})")
                } else {
                    rel
                };
                line(
                    &mut out,
                    "  ",
                    &name,
                    r,
                    if mark.is_empty() { "" } else { "*" },
                );
            }
        }
    }
    if let Some(p) = pattern {
        let n: usize = hits
            .iter()
            .filter_map(|h| rows.iter().find(|r| &r.path == h))
            .map(Row::params)
            .sum();
        let _ = writeln!(
            out,
            "`{p}` matches {} module{} ({} parameters), marked *:",
            hits.len(),
            if hits.len() == 1 { "" } else { "s" },
            count(n)
        );
        for c in compact(&hits) {
            let _ = writeln!(out, "  {c}");
        }
    }
    Ok(out)
}
