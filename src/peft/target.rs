//! Which modules a call touches: the recipe contract's pattern forms (PEFT list/suffix rule,
//! globs with `*`, `**`, `{a,b}`, `{0..3}`, `re:` full-match regexes, `layers=`, `exclude=`) and
//! PEFT's own rules for reading `adapter_config.json`.

use crate::error::{Error, Result};
use regex::Regex;

/// One pattern in any of the contract's forms.
#[derive(Clone, Debug)]
pub enum Pattern {
    /// names matching exactly or as a `.`-suffix (PEFT's list rule)
    List(Vec<String>),
    /// globs (after brace expansion) or a `re:` regex, compiled to full-match regexes
    Regex { source: String, re: Vec<Regex> },
}

impl Pattern {
    pub fn list(items: Vec<String>) -> Self {
        Pattern::List(items)
    }

    /// A string pattern: `re:...` is a full-match regex, anything else a glob.
    pub fn parse(s: &str) -> Result<Self> {
        if let Some(r) = s.strip_prefix("re:") {
            return Ok(Pattern::Regex {
                source: s.to_string(),
                re: vec![full_regex(r)?],
            });
        }
        let re = expand_braces(s)?
            .iter()
            .map(|g| {
                Regex::new(&glob_to_regex(g))
                    .map_err(|e| Error::msg(format!("bad pattern `{s}`: {e}")))
            })
            .collect::<Result<_>>()?;
        Ok(Pattern::Regex {
            source: s.to_string(),
            re,
        })
    }

    /// PEFT's `target_modules` string: a full-match regex.
    pub fn peft_regex(s: &str) -> Result<Self> {
        Ok(Pattern::Regex {
            source: s.to_string(),
            re: vec![full_regex(s)?],
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            Pattern::List(items) => items.iter().any(|t| suffix_match(path, t)),
            Pattern::Regex { re, .. } => re.iter().any(|r| r.is_match(path)),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Pattern::List(items) => format!("{items:?}"),
            Pattern::Regex { source, .. } => format!("`{source}`"),
        }
    }

    /// The literal words of the pattern, to suggest near misses.
    fn words(&self) -> Vec<String> {
        let src = match self {
            Pattern::List(items) => items.join(" "),
            Pattern::Regex { source, .. } => source.clone(),
        };
        src.split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| w.len() > 1 && w.parse::<usize>().is_err() && *w != "re")
            .map(String::from)
            .collect()
    }
}

/// `path == t` or `path` ends with `.t`.
pub fn suffix_match(path: &str, t: &str) -> bool {
    path == t
        || (path.len() > t.len()
            && path.ends_with(t)
            && path.as_bytes()[path.len() - t.len() - 1] == b'.')
}

fn full_regex(r: &str) -> Result<Regex> {
    Regex::new(&format!("^(?:{r})$"))
        .map_err(|e| Error::msg(format!("bad regular expression `{r}`: {e}")))
}

/// Expands `{a,b}` and `{0..3}` alternatives into plain globs.
fn expand_braces(s: &str) -> Result<Vec<String>> {
    let Some(open) = s.find('{') else {
        return Ok(vec![s.to_string()]);
    };
    let close = s[open..]
        .find('}')
        .map(|i| open + i)
        .ok_or_else(|| Error::msg(format!("pattern `{s}`: unclosed `{{`")))?;
    let inner = &s[open + 1..close];
    let alts: Vec<String> = match inner.split_once("..") {
        Some((a, b)) if a.trim().parse::<i64>().is_ok() && b.trim().parse::<i64>().is_ok() => {
            let (a, b): (i64, i64) = (a.trim().parse().unwrap(), b.trim().parse().unwrap());
            if a <= b {
                (a..=b).map(|i| i.to_string()).collect()
            } else {
                (b..=a).rev().map(|i| i.to_string()).collect()
            }
        }
        _ => inner.split(',').map(|x| x.trim().to_string()).collect(),
    };
    let mut out = Vec::new();
    for a in alts {
        out.extend(expand_braces(&format!(
            "{}{}{}",
            &s[..open],
            a,
            &s[close + 1..]
        ))?);
    }
    Ok(out)
}

/// A dotted glob → anchored regex: `*` one segment (or part of one), `**` any number of
/// segments, `?` one character.
fn glob_to_regex(g: &str) -> String {
    if g == "**" {
        return "^.*$".into();
    }
    let mut out = String::from("^");
    let mut need_dot = false;
    let segs: Vec<&str> = g.split('.').collect();
    for (i, seg) in segs.iter().enumerate() {
        if *seg == "**" {
            if i == 0 {
                out.push_str(r"(?:[^.]+\.)*");
                need_dot = false;
            } else {
                out.push_str(r"(?:\.[^.]+)*");
            }
            continue;
        }
        if need_dot {
            out.push_str(r"\.");
        }
        for c in seg.chars() {
            match c {
                '*' => out.push_str("[^.]*"),
                '?' => out.push_str("[^.]"),
                c => out.push_str(&regex::escape(&c.to_string())),
            }
        }
        need_dot = true;
    }
    out.push('$');
    out
}

/// The layer index of a module path: its first all-digit segment.
pub fn layer_of(path: &str) -> Option<usize> {
    path.split('.').find_map(|s| s.parse().ok())
}

/// `{0..29}` for a run of indices, `{0,2,5}` otherwise, `7` alone.
fn index_set(ix: &[usize]) -> String {
    match ix {
        [one] => one.to_string(),
        _ if ix.windows(2).all(|w| w[1] == w[0] + 1) => {
            format!("{{{}..{}}}", ix[0], ix[ix.len() - 1])
        }
        _ => format!(
            "{{{}}}",
            ix.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// Module paths written compactly as globs of this module's own syntax, which match exactly
/// those paths: `model.layers.{0..29}.self_attn.{q_proj,v_proj}`. Layer indices (the first
/// all-digit segment) are folded first, then sibling names with the same indices.
pub fn compact(paths: &[String]) -> Vec<String> {
    enum Item {
        Plain(String),
        Group(usize),
    }
    // (before the index, after it, indices), in order of first appearance
    let mut groups: Vec<(String, String, Vec<usize>)> = Vec::new();
    let mut items = Vec::new();
    for p in paths {
        let segs: Vec<&str> = p.split('.').collect();
        let Some(i) = segs.iter().position(|s| s.parse::<usize>().is_ok()) else {
            items.push(Item::Plain(p.clone()));
            continue;
        };
        let (pre, post) = (segs[..i].join("."), segs[i + 1..].join("."));
        let n: usize = segs[i].parse().unwrap_or(0);
        match groups.iter().position(|g| g.0 == pre && g.1 == post) {
            Some(g) => groups[g].2.push(n),
            None => {
                items.push(Item::Group(groups.len()));
                groups.push((pre, post, vec![n]));
            }
        }
    }
    // paths equal but for their last segment, with the same indices, share one `{a,b}`:
    // (stem, last segments; None for a path that is not folded)
    let mut out: Vec<(String, Option<Vec<String>>)> = Vec::new();
    for item in items {
        let g = match item {
            Item::Plain(p) => {
                out.push((p, None));
                continue;
            }
            Item::Group(g) => g,
        };
        let (pre, post, ix) = &mut groups[g];
        ix.sort_unstable();
        ix.dedup();
        let head = [pre.as_str(), &index_set(ix)]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(".");
        if post.is_empty() {
            out.push((head, None));
            continue;
        }
        let (stem, last) = match post.rsplit_once('.') {
            Some((mid, last)) => (format!("{head}.{mid}"), last),
            None => (head, post.as_str()),
        };
        match out.iter_mut().find(|(s, l)| *s == stem && l.is_some()) {
            Some((_, Some(l))) => l.push(last.to_string()),
            _ => out.push((stem, Some(vec![last.to_string()]))),
        }
    }
    out.into_iter()
        .map(|(stem, lasts)| match lasts.as_deref() {
            None => stem,
            Some([l]) => format!("{stem}.{l}"),
            Some(ls) => format!("{stem}.{{{}}}", ls.join(",")),
        })
        .collect()
}

/// A full selection: pattern, optional layer filter, optional exclusion.
#[derive(Clone, Debug)]
pub struct Selector {
    pub pattern: Pattern,
    pub layers: Option<Vec<usize>>,
    pub exclude: Option<Pattern>,
}

impl Selector {
    pub fn new(pattern: Pattern) -> Self {
        Selector {
            pattern,
            layers: None,
            exclude: None,
        }
    }

    /// Only the `layers` and `exclude` parts (for "all-linear").
    pub fn matches_filters(&self, path: &str) -> bool {
        if self.exclude.as_ref().is_some_and(|ex| ex.matches(path)) {
            return false;
        }
        match &self.layers {
            Some(ls) => layer_of(path).is_some_and(|l| ls.contains(&l)),
            None => true,
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        if let Some(ex) = &self.exclude {
            if ex.matches(path) {
                return false;
            }
        }
        if let Some(ls) = &self.layers {
            match layer_of(path) {
                Some(l) if ls.contains(&l) => {}
                _ => return false,
            }
        }
        self.pattern.matches(path)
    }

    /// The matching `candidates`, or an error listing similar ones when none matches.
    pub fn select(&self, candidates: &[String], what: &str) -> Result<Vec<String>> {
        let got: Vec<String> = candidates
            .iter()
            .filter(|p| self.matches(p))
            .cloned()
            .collect();
        if got.is_empty() {
            let mut pat = self.pattern.describe();
            if let Some(l) = &self.layers {
                pat.push_str(&format!(" with layers {l:?}"));
            }
            if let Some(e) = &self.exclude {
                pat.push_str(&format!(" excluding {}", e.describe()));
            }
            return Err(Error::NoMatch {
                pattern: pat,
                hint: similar(&self.pattern, candidates, what),
            });
        }
        Ok(got)
    }
}

/// Parses `layers = {0, 5}`, `"0-11"`, `"0,2,4-6"` or a single index.
pub fn parse_layers(s: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || {
            Error::msg(format!(
                "layers: cannot read `{part}` (use \"0-11\" or {{0, 5}})"
            ))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                out.extend(a.min(b)..=a.max(b));
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(out)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + (ca != *cb) as usize;
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// ": similar <what>: a, b, …" — the candidates closest to the pattern's words.
fn similar(p: &Pattern, candidates: &[String], what: &str) -> String {
    let words = p.words();
    if candidates.is_empty() {
        return format!(" (the model has no {what})");
    }
    let score = |c: &str| -> usize {
        let segs: Vec<&str> = c.split('.').collect();
        words
            .iter()
            .map(|w| {
                segs.iter()
                    .map(|s| {
                        if s.contains(w.as_str()) || w.contains(s) {
                            0
                        } else {
                            levenshtein(w, s)
                        }
                    })
                    .min()
                    .unwrap_or(usize::MAX)
            })
            .sum::<usize>()
    };
    let mut scored: Vec<(usize, &String)> = candidates.iter().map(|c| (score(c), c)).collect();
    scored.sort_by_key(|(s, c)| (*s, c.len()));
    let mut names: Vec<&str> = Vec::new();
    // prefer one example per distinct module kind (last segment) so layers do not crowd the list
    let mut seen = std::collections::HashSet::new();
    for (_, c) in &scored {
        let kind: String = c
            .split('.')
            .filter(|s| s.parse::<usize>().is_err())
            .collect::<Vec<_>>()
            .join(".");
        if seen.insert(kind) {
            names.push(c);
        }
        if names.len() == 8 {
            break;
        }
    }
    format!("; similar {what}: {}", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_paths_are_globs_that_match_exactly_those_paths() {
        let mut all = vec!["model.embed_tokens".to_string()];
        for i in 0..30 {
            for m in [
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "mlp.up_proj",
            ] {
                all.push(format!("model.layers.{i}.{m}"));
            }
        }
        all.push("lm_head".into());
        let pick = |f: &dyn Fn(&str) -> bool| -> Vec<String> {
            all.iter().filter(|p| f(p)).cloned().collect()
        };
        let cases = [
            (
                pick(&|p| p.ends_with("q_proj") || p.ends_with("v_proj")),
                vec!["model.layers.{0..29}.self_attn.{q_proj,v_proj}"],
            ),
            (
                pick(&|p| p.ends_with("q_proj") && layer_of(p).is_some_and(|l| l % 10 == 0)),
                vec!["model.layers.{0,10,20}.self_attn.q_proj"],
            ),
            (
                pick(&|p| p.contains(".3.") || p == "lm_head"),
                vec![
                    "model.layers.3.self_attn.{q_proj,k_proj,v_proj}",
                    "model.layers.3.mlp.up_proj",
                    "lm_head",
                ],
            ),
            (vec!["lm_head".to_string()], vec!["lm_head"]),
        ];
        for (paths, want) in cases {
            let got = compact(&paths);
            assert_eq!(got, want);
            let pats: Vec<Pattern> = got.iter().map(|g| Pattern::parse(g).unwrap()).collect();
            let back = pick(&|p| pats.iter().any(|q| q.matches(p)));
            assert_eq!(back, paths, "{got:?} does not match exactly its paths");
        }
    }

    fn paths() -> Vec<String> {
        let mut v = Vec::new();
        for i in 0..12 {
            for m in [
                "self_attn.q_proj",
                "self_attn.v_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ] {
                v.push(format!("model.layers.{i}.{m}"));
            }
        }
        v.push("lm_head".into());
        v
    }

    #[test]
    fn list_rule_is_suffix_on_dot_boundary() {
        let p = Pattern::list(vec!["q_proj".into(), "mlp.up_proj".into()]);
        assert!(p.matches("model.layers.0.self_attn.q_proj"));
        assert!(p.matches("model.layers.0.mlp.up_proj"));
        assert!(!p.matches("model.layers.0.self_attn.xq_proj"));
        assert!(p.matches("q_proj"));
    }

    #[test]
    fn globs() {
        let p = Pattern::parse("model.layers.{0..3}.mlp.*").unwrap();
        let got: Vec<_> = paths().into_iter().filter(|x| p.matches(x)).collect();
        assert_eq!(got.len(), 8);
        assert!(got.iter().all(|x| x.contains(".mlp.")));
        let p = Pattern::parse("**.v_proj").unwrap();
        assert_eq!(paths().iter().filter(|x| p.matches(x)).count(), 12);
        let p = Pattern::parse("model.layers.{10,11}.**").unwrap();
        assert_eq!(paths().iter().filter(|x| p.matches(x)).count(), 8);
        let p = Pattern::parse("model.layers.1.*").unwrap();
        assert_eq!(
            paths().iter().filter(|x| p.matches(x)).count(),
            0,
            "* stays in one segment"
        );
        let p = Pattern::parse("model.layers.0.{self_attn.q_proj,mlp.up_proj}").unwrap();
        assert_eq!(paths().iter().filter(|x| p.matches(x)).count(), 2);
    }

    #[test]
    fn regex_is_full_match() {
        let p = Pattern::parse(r"re:.*\.layers\.0\.(self_attn\.q|mlp\.up)_proj").unwrap();
        assert_eq!(paths().iter().filter(|x| p.matches(x)).count(), 2);
        let p = Pattern::parse("re:q_proj").unwrap();
        assert_eq!(paths().iter().filter(|x| p.matches(x)).count(), 0);
    }

    #[test]
    fn layers_and_exclude() {
        let mut s = Selector::new(Pattern::list(vec!["q_proj".into(), "v_proj".into()]));
        s.layers = Some(parse_layers("2-3").unwrap());
        s.exclude = Some(Pattern::parse("**.v_proj").unwrap());
        let got = s.select(&paths(), "modules").unwrap();
        assert_eq!(
            got,
            vec![
                "model.layers.2.self_attn.q_proj",
                "model.layers.3.self_attn.q_proj"
            ]
        );
    }

    #[test]
    fn no_match_lists_similar_paths() {
        let s = Selector::new(Pattern::list(vec!["q_prj".into()]));
        let e = s.select(&paths(), "modules").unwrap_err().to_string();
        assert!(e.contains("q_prj"), "{e}");
        assert!(e.contains("model.layers.0.self_attn.q_proj"), "{e}");
    }
}
