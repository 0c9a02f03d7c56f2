//! Exports FTL_GIT_COMMIT (the commit ftl was built from, "unknown" outside a git checkout) for
//! run manifests; with the `cuda` feature, compiles src/ops/kernels.cu to PTX with nvcc
//! (CUDA_ROOT, CUDA_PATH or PATH). Without it no CUDA is needed.

fn main() {
    git_commit();
    println!("cargo:rerun-if-changed=src/ops/kernels.cu");
    println!("cargo:rerun-if-changed=src/ops/flash_attn.cu");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("kernels.ptx");
    let nvcc = ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|r| std::path::PathBuf::from(r).join("bin/nvcc"))
        .find(|p| p.exists())
        .unwrap_or_else(|| "nvcc".into());
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let status = std::process::Command::new(&nvcc)
        .args(["-ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
        .arg(&out)
        .arg("src/ops/kernels.cu")
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", nvcc.display()));
    assert!(status.success(), "nvcc failed on src/ops/kernels.cu");
}

fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn git_commit() {
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=FTL_GIT_COMMIT={commit}");
    // a new commit moves HEAD or the branch it names (a worktree keeps HEAD apart from the refs)
    // (only files that exist: cargo reruns on every build for a missing one)
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for path in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            if std::path::Path::new(&p).exists() {
                println!("cargo:rerun-if-changed={p}");
            }
        }
    }
}
