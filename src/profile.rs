//! Host-side sampling profile of a run (`profile` feature, `FTL_PPROF=file`): where the CPU time
//! of a GPU training step goes, as self and inclusive sample counts per function.

use std::collections::HashMap;

pub struct Profile(pprof::ProfilerGuard<'static>, std::path::PathBuf);

/// Starts sampling when `FTL_PPROF` names an output file.
pub fn start() -> Option<Profile> {
    let path = std::env::var_os("FTL_PPROF")?;
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(1999)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .ok()?;
    Some(Profile(guard, path.into()))
}

impl Profile {
    /// Writes the 60 functions with most samples, by self and by inclusive count.
    pub fn finish(self) {
        let Ok(report) = self.0.report().build() else {
            return;
        };
        let (mut own, mut incl, mut threads) = (HashMap::new(), HashMap::new(), HashMap::new());
        let mut total = 0isize;
        for (frames, &n) in &report.data {
            total += n;
            *threads.entry(frames.thread_name.clone()).or_insert(0) += n;
            let names: Vec<String> = frames
                .frames
                .iter()
                .flat_map(|f| f.iter().map(|s| s.name()))
                .collect();
            if let Some(leaf) = names.first() {
                *own.entry(leaf.clone()).or_insert(0) += n;
            }
            let mut seen = std::collections::HashSet::new();
            for name in names {
                if seen.insert(name.clone()) {
                    *incl.entry(name).or_insert(0) += n;
                }
            }
        }
        let top = |m: HashMap<String, isize>| {
            let mut v: Vec<_> = m.into_iter().collect();
            v.sort_by(|a, b| b.1.cmp(&a.1));
            v.into_iter()
                .take(60)
                .map(|(k, n)| {
                    format!(
                        "{n:8} {:5.1}%  {}",
                        100.0 * n as f64 / total as f64,
                        &k[..k.len().min(160)]
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        let text = format!(
            "{total} samples\n\n# threads\n{}\n\n# self\n{}\n\n# inclusive\n{}\n",
            top(threads),
            top(own),
            top(incl)
        );
        if let Err(e) = std::fs::write(&self.1, text) {
            eprintln!("FTL_PPROF: {}: {e}", self.1.display());
        }
    }
}
