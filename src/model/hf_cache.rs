//! Model references: a path, or a hub id (`org/name`, `org/name@rev`) resolved offline in the
//! Hugging Face cache exactly where huggingface_hub puts snapshots, so a shared recipe runs
//! unchanged on any machine that has downloaded the model.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A parsed `org/name[@rev]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    pub org: String,
    pub name: String,
    pub rev: Option<String>,
}

/// The characters huggingface_hub allows in a repo id part; `--` and `..` are refused there too
/// (the cache uses `--` as its separator).
fn id_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.contains("--")
        && !s.contains("..")
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

impl HubId {
    /// `org/name` or `org/name@rev`; None for anything else (which is then a path).
    pub fn parse(s: &str) -> Option<HubId> {
        let (id, rev) = match s.split_once('@') {
            Some((id, rev)) => (id, Some(rev)),
            None => (s, None),
        };
        let (org, name) = id.split_once('/')?;
        if !id_part(org) || !id_part(name) {
            return None;
        }
        // a revision names a file under refs/ (branches may hold `/`, as `refs/pr/1` does):
        // never one that climbs out of it
        if let Some(r) = rev {
            if r.is_empty() || r.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
                return None;
            }
        }
        Some(HubId {
            org: org.into(),
            name: name.into(),
            rev: rev.map(String::from),
        })
    }

    /// `org/name` without the revision.
    pub fn repo(&self) -> String {
        format!("{}/{}", self.org, self.name)
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.rev {
            Some(r) => write!(f, "{}/{}@{r}", self.org, self.name),
            None => write!(f, "{}/{}", self.org, self.name),
        }
    }
}

/// Where the cache root came from, for the error that says where ftl looked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRoot {
    pub dir: PathBuf,
    pub from: &'static str,
}

fn expand_home(v: &str, home: Option<&str>) -> PathBuf {
    match (v.strip_prefix("~/"), home) {
        (Some(rest), Some(h)) => Path::new(h).join(rest),
        _ if v == "~" && home.is_some() => PathBuf::from(home.unwrap_or_default()),
        _ => PathBuf::from(v),
    }
}

/// The cache root as huggingface_hub computes it, from the variables `var` gives (empty ones
/// count as unset, as they would break every path).
pub fn root_from(var: impl Fn(&str) -> Option<String>) -> CacheRoot {
    let get = |k: &str| var(k).filter(|v| !v.is_empty());
    let home = get("HOME");
    let home = home.as_deref();
    if let Some(v) = get("HF_HUB_CACHE") {
        return CacheRoot {
            dir: expand_home(&v, home),
            from: "from HF_HUB_CACHE",
        };
    }
    if let Some(v) = get("HF_HOME") {
        return CacheRoot {
            dir: expand_home(&v, home).join("hub"),
            from: "from HF_HOME",
        };
    }
    if let Some(v) = get("XDG_CACHE_HOME") {
        return CacheRoot {
            dir: expand_home(&v, home).join("huggingface").join("hub"),
            from: "from XDG_CACHE_HOME",
        };
    }
    CacheRoot {
        dir: Path::new(home.unwrap_or("~")).join(".cache/huggingface/hub"),
        from: "the default: HF_HUB_CACHE, HF_HOME and XDG_CACHE_HOME are unset",
    }
}

/// The cache root of this process's environment.
pub fn root() -> CacheRoot {
    root_from(|k| std::env::var(k).ok())
}

fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// How to get `id` into the cache, for errors.
fn how_to_get(id: &HubId) -> String {
    let rev = id
        .rev
        .as_ref()
        .map_or(String::new(), |r| format!(" --revision {r}"));
    let py_rev = id
        .rev
        .as_ref()
        .map_or(String::new(), |r| format!(", revision='{r}'"));
    format!(
        "ftl reads the cache offline and never downloads: get the model with `huggingface-cli download {repo}{rev}` \
(or `python -c \"from huggingface_hub import snapshot_download; snapshot_download('{repo}'{py_rev})\"`), \
or give the model's directory as a path",
        repo = id.repo()
    )
}

/// The snapshot directory of `id` under the cache root `root`.
pub fn resolve_in(root: &CacheRoot, id: &HubId) -> Result<PathBuf> {
    resolve_with(root, id, None)
}

/// As `resolve_in`; `tried` is the path the reference would have been, for the error.
fn resolve_with(root: &CacheRoot, id: &HubId, tried: Option<&Path>) -> Result<PathBuf> {
    let repo_dir = root.dir.join(format!("models--{}--{}", id.org, id.name));
    let neither = tried.map_or(String::new(), |p| {
        format!(" is no file or directory ({}) and", p.display())
    });
    let looked = |what: &str, path: &Path| {
        Error::msg(format!(
            "model `{id}`{neither} is not in the Hugging Face cache: {what} {} (cache root {}, {}). {}",
            path.display(),
            root.dir.display(),
            root.from,
            how_to_get(id)
        ))
    };
    if !repo_dir.is_dir() {
        return Err(looked("no directory", &repo_dir));
    }
    let rev = id.rev.as_deref().unwrap_or("main");
    let commit = if is_commit(rev) {
        rev.to_ascii_lowercase()
    } else {
        let r = repo_dir.join("refs").join(rev);
        match std::fs::read_to_string(&r) {
            Ok(s) => s.trim().to_string(),
            Err(_) => {
                let known = refs(&repo_dir.join("refs"));
                let known = if known.is_empty() {
                    String::new()
                } else {
                    format!(" (cached revisions: {})", known.join(", "))
                };
                return Err(looked(&format!("no revision `{rev}`{known}: no file"), &r));
            }
        }
    };
    let snap = repo_dir.join("snapshots").join(&commit);
    if !is_commit(&commit) || !snap.is_dir() {
        return Err(looked(
            &format!("revision `{rev}` is commit `{commit}`, but there is no snapshot"),
            &snap,
        ));
    }
    Ok(snap)
}

/// The branch and tag names under `refs/` (nested ones as `pr/1`).
fn refs(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, pre)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let name = format!("{pre}{}", e.file_name().to_string_lossy());
            if e.path().is_dir() {
                stack.push((e.path(), format!("{name}/")));
            } else {
                out.push(name);
            }
        }
    }
    out.sort();
    out
}

/// What a model or adapter reference names: an existing file or directory (absolute, or relative
/// to `base`) is a path; otherwise a hub id is its snapshot in the cache; anything else is the
/// path, left for the loader to report as missing.
pub fn resolve_ref(reference: &Path, base: &Path) -> Result<PathBuf> {
    let path = base.join(reference);
    if path.exists() {
        return Ok(path);
    }
    match reference.to_str().and_then(HubId::parse) {
        Some(id) => resolve_with(&root(), &id, Some(&path)),
        None => Ok(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn root_with(vars: &[(&str, &str)]) -> CacheRoot {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        root_from(|k| m.get(k).cloned())
    }

    #[test]
    fn the_root_follows_huggingface_hubs_precedence() {
        let all = [
            ("HOME", "/home/u"),
            ("XDG_CACHE_HOME", "/xdg"),
            ("HF_HOME", "/hf"),
            ("HF_HUB_CACHE", "/hubcache"),
        ];
        assert_eq!(root_with(&all).dir, Path::new("/hubcache"));
        assert_eq!(root_with(&all[..3]).dir, Path::new("/hf/hub"));
        assert_eq!(root_with(&all[..2]).dir, Path::new("/xdg/huggingface/hub"));
        assert_eq!(
            root_with(&all[..1]).dir,
            Path::new("/home/u/.cache/huggingface/hub")
        );
        // empty counts as unset; `~` expands as huggingface_hub's expanduser does
        let r = root_with(&[
            ("HOME", "/home/u"),
            ("HF_HUB_CACHE", ""),
            ("HF_HOME", "~/hf"),
        ]);
        assert_eq!(r.dir, Path::new("/home/u/hf/hub"));
        assert_eq!(r.from, "from HF_HOME");
    }

    #[test]
    fn hub_ids_parse_and_paths_do_not() {
        let id = HubId::parse("HuggingFaceTB/SmolLM2-135M").unwrap();
        assert_eq!(
            (id.org.as_str(), id.name.as_str(), id.rev),
            ("HuggingFaceTB", "SmolLM2-135M", None)
        );
        let id = HubId::parse("org/name@v1.0").unwrap();
        assert_eq!(id.rev.as_deref(), Some("v1.0"));
        assert_eq!(
            HubId::parse("org/name@pr/1").unwrap().rev.as_deref(),
            Some("pr/1")
        );
        for bad in [
            "name",
            "/abs/path",
            "a/b/c",
            "../x",
            "./x",
            "org/",
            "/name",
            "org/na me",
            "org/name@",
            "org/name@../../x",
            "org/name@a//b",
            "o--x/name",
            "org/a..b",
        ] {
            assert_eq!(HubId::parse(bad), None, "{bad}");
        }
    }

    /// A cache laid out as huggingface_hub writes it: blobs, a snapshot of links, refs.
    fn fake_cache(refs_: &[(&str, &str)], commits: &[&str]) -> (tempfile::TempDir, CacheRoot) {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("models--org--name");
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::write(repo.join("blobs/abc"), "{}").unwrap();
        for c in commits {
            let s = repo.join("snapshots").join(c);
            std::fs::create_dir_all(&s).unwrap();
            std::os::unix::fs::symlink("../../blobs/abc", s.join("config.json")).unwrap();
        }
        for (r, c) in refs_ {
            let p = repo.join("refs").join(r);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, c).unwrap();
        }
        let root = CacheRoot {
            dir: t.path().to_path_buf(),
            from: "from HF_HUB_CACHE",
        };
        (t, root)
    }

    #[test]
    fn revisions_resolve_through_refs_or_as_commits() {
        let a = "a".repeat(40);
        let b = "0123456789abcdef0123456789abcdef01234567";
        let (_t, root) = fake_cache(&[("main", &format!("{a}\n")), ("v1", b)], &[&a, b]);
        let snap = |rev: &str| resolve_in(&root, &HubId::parse(&format!("org/name{rev}")).unwrap());
        let dir = root.dir.join("models--org--name/snapshots");
        // the default branch, a tag, a full hash used directly
        assert_eq!(snap("").unwrap(), dir.join(&a));
        assert_eq!(snap("@main").unwrap(), dir.join(&a));
        assert_eq!(snap("@v1").unwrap(), dir.join(b));
        assert_eq!(snap(&format!("@{b}")).unwrap(), dir.join(b));
        assert_eq!(
            std::fs::read_to_string(snap("").unwrap().join("config.json")).unwrap(),
            "{}"
        );
        // a missing ref names the file, the revisions there are, and how to get it
        let e = snap("@v2").unwrap_err().to_string();
        assert!(
            e.contains("refs/v2") && e.contains("main, v1") && e.contains("--revision v2"),
            "{e}"
        );
        // a hash with no snapshot
        let e = snap(&format!("@{}", "c".repeat(40)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no snapshot") && e.contains(&"c".repeat(40)),
            "{e}"
        );
        // a model not in the cache at all
        let e = resolve_in(&root, &HubId::parse("org/other").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("models--org--other")
                && e.contains(&root.dir.display().to_string())
                && e.contains("huggingface-cli download org/other")
                && e.contains("snapshot_download('org/other')"),
            "{e}"
        );
    }

    #[test]
    fn a_branch_whose_commit_has_no_snapshot_says_so() {
        let (_t, root) = fake_cache(&[("main", &"d".repeat(40))], &[]);
        let e = resolve_in(&root, &HubId::parse("org/name").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no snapshot") && e.contains("`main`"), "{e}");
    }
}
