//! What changed between two runs of `ftl watch`, in one line for the run's header and its
//! manifest: `recipe.lua:12 r = 8 → 16`, `helper.lua:3 + print(x)`, `data.jsonl`.

use similar::{DiffOp, TextDiff};
use std::path::{Path, PathBuf};

/// The recipe and its local modules as a run read them, recipe first.
pub type Sources = Vec<(PathBuf, String)>;

/// How many changes the line names before it counts the rest.
const SHOWN: usize = 2;
/// Longest side of a `before → after` pair.
const SIDE: usize = 40;

/// One line saying what changed from `old` to `new` (sources) and which other watched files (data,
/// models) changed; `None` when nothing did. Names are relative to `base` (the recipe's directory).
pub fn describe(old: &Sources, new: &Sources, others: &[PathBuf], base: &Path) -> Option<String> {
    let name = |p: &Path| p.strip_prefix(base).unwrap_or(p).display().to_string();
    let mut items: Vec<String> = Vec::new();
    for (path, text) in new {
        match old.iter().find(|(p, _)| p == path) {
            Some((_, before)) if before == text => {}
            Some((_, before)) => items.extend(lines(&name(path), before, text)),
            None if !old.is_empty() => items.push(format!("{} (new module)", name(path))),
            None => {}
        }
    }
    for p in others {
        if !new.iter().any(|(q, _)| q == p) {
            items.push(name(p));
        }
    }
    if items.is_empty() {
        return None;
    }
    let more = items.len().saturating_sub(SHOWN);
    let mut s = items.into_iter().take(SHOWN).collect::<Vec<_>>().join("; ");
    if more > 0 {
        s.push_str(&format!(" (+{more} more)"));
    }
    Some(s)
}

/// The changed lines of one file: `file:LINE before → after`, `file:LINE + added`, `file:LINE − removed`.
fn lines(file: &str, before: &str, after: &str) -> Vec<String> {
    let diff = TextDiff::from_lines(before, after);
    let old: Vec<&str> = before.lines().collect();
    let new: Vec<&str> = after.lines().collect();
    let mut out = Vec::new();
    for op in diff.ops() {
        match *op {
            DiffOp::Equal { .. } => {}
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => {
                let n = old_len.min(new_len);
                for k in 0..n {
                    let (o, w) = (old[old_index + k], new[new_index + k]);
                    out.push(format!("{file}:{} {}", new_index + k + 1, pair(o, w)));
                }
                for k in n..new_len {
                    out.push(format!(
                        "{file}:{} + {}",
                        new_index + k + 1,
                        short(new[new_index + k].trim())
                    ));
                }
                for k in n..old_len {
                    out.push(format!(
                        "{file}:{} − {}",
                        new_index + n + 1,
                        short(old[old_index + k].trim())
                    ));
                }
            }
            DiffOp::Insert {
                new_index, new_len, ..
            } => {
                for k in 0..new_len {
                    let l = new[new_index + k].trim();
                    if !l.is_empty() {
                        out.push(format!("{file}:{} + {}", new_index + k + 1, short(l)));
                    }
                }
            }
            DiffOp::Delete {
                old_index,
                old_len,
                new_index,
            } => {
                for k in 0..old_len {
                    let l = old[old_index + k].trim();
                    if !l.is_empty() {
                        out.push(format!("{file}:{} − {}", new_index + 1, short(l)));
                    }
                }
            }
        }
    }
    if out.is_empty() {
        // only blank lines or line endings changed
        out.push(format!("{file} (whitespace)"));
    }
    out
}

fn word(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// One changed line as `context before → after`, the parts both share left out: `r = 8 → 16`.
fn pair(before: &str, after: &str) -> String {
    let (o, n): (Vec<char>, Vec<char>) = (
        before.trim().chars().collect(),
        after.trim().chars().collect(),
    );
    let max = o.len().min(n.len());
    let mut p = o.iter().zip(&n).take_while(|(a, b)| a == b).count();
    // never split a word or a number
    while p > 0
        && word(o[p - 1])
        && (o.get(p).is_some_and(|c| word(*c)) || n.get(p).is_some_and(|c| word(*c)))
    {
        p -= 1;
    }
    let mut q = o
        .iter()
        .rev()
        .zip(n.iter().rev())
        .take_while(|(a, b)| a == b)
        .count()
        .min(max - p);
    while q > 0
        && word(o[o.len() - q])
        && ((o.len() > q && o.len() - q > p && word(o[o.len() - q - 1]))
            || (n.len() > q && n.len() - q > p && word(n[n.len() - q - 1])))
    {
        q -= 1;
    }
    let mid_o: String = o[p..o.len() - q].iter().collect();
    let mid_n: String = n[p..n.len() - q].iter().collect();
    let (mid_o, mid_n) = (mid_o.trim(), mid_n.trim());
    if mid_o.is_empty() || mid_n.is_empty() {
        return format!("{} → {}", short(before.trim()), short(after.trim()));
    }
    // the context is the key being set: what follows the last `{ ( , ;` before the change
    let prefix: String = o[..p].iter().collect();
    let start = prefix.rfind(['{', '(', ',', ';', '[']).map_or(0, |i| i + 1);
    let context = prefix[start..].trim_start();
    let context: String = if context.chars().count() > SIDE {
        let skip = context.chars().count() - SIDE;
        format!("…{}", context.chars().skip(skip).collect::<String>())
    } else {
        context.to_string()
    };
    format!("{context}{} → {}", short(mid_o), short(mid_n))
}

fn short(s: &str) -> String {
    if s.chars().count() > SIDE {
        format!("{}…", s.chars().take(SIDE - 1).collect::<String>())
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(p: &str, t: &str) -> (PathBuf, String) {
        (PathBuf::from(format!("/r/{p}")), t.to_string())
    }

    #[test]
    fn a_changed_value_shows_its_key_and_both_values() {
        let old = vec![src(
            "recipe.lua",
            "local m = 1\nftl.lora(m, {r = 8, alpha = 16})\n",
        )];
        let new = vec![src(
            "recipe.lua",
            "local m = 1\nftl.lora(m, {r = 16, alpha = 16})\n",
        )];
        assert_eq!(
            describe(&old, &new, &[], Path::new("/r")).unwrap(),
            "recipe.lua:2 r = 8 → 16"
        );
        // a number is never split: 16 → 18, not 6 → 8
        assert_eq!(pair("  r = 16,", "  r = 18,"), "r = 16 → 18");
        assert_eq!(pair("lr = 1e-3", "lr = 2e-3"), "lr = 1e-3 → 2e-3");
        assert_eq!(
            pair("targets = {'q', 'v'}", "targets = {'q'}"),
            "targets = {'q', 'v'} → targets = {'q'}"
        );
    }

    #[test]
    fn several_changes_modules_and_data_files() {
        let old = vec![
            src("w.lua", "a = 1\nb = 2\n"),
            src("lib/h.lua", "return 1\n"),
        ];
        let new = vec![
            src("w.lua", "a = 1\nb = 3\nprint(a)\n"),
            src("lib/h.lua", "return 2\n"),
            src("x.lua", "return 0\n"),
        ];
        let d = describe(
            &old,
            &new,
            &[PathBuf::from("/r/data.jsonl")],
            Path::new("/r"),
        )
        .unwrap();
        assert_eq!(d, "w.lua:2 b = 2 → 3; w.lua:3 + print(a) (+3 more)");
        assert_eq!(describe(&new, &new, &[], Path::new("/r")), None);
        let only_data = describe(
            &new,
            &new,
            &[PathBuf::from("/r/data.jsonl")],
            Path::new("/r"),
        );
        assert_eq!(only_data.unwrap(), "data.jsonl");
        let removed = describe(
            &new,
            &[src("w.lua", "a = 1\nb = 3\n")].to_vec(),
            &[],
            Path::new("/r"),
        );
        assert_eq!(removed.unwrap(), "w.lua:3 − print(a)");
    }
}
