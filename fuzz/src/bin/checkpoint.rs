//! Checkpoints: the input is a checkpoint's `state.json` or its directory's `latest` file (the
//! other files a real checkpoint's, `fuzz/files/ck`), found and verified as `resume = true`
//! does.

use ftl_fuzz::{clear, files, put, scratch};

fn main() {
    let dir = scratch().join("ck");
    std::fs::create_dir_all(dir.join("step-2")).unwrap();
    for e in std::fs::read_dir(files().join("ck/step-2")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join("step-2").join(e.file_name())).unwrap();
    }
    let state = std::fs::read(files().join("ck/step-2/state.json")).unwrap();
    let latest = std::fs::read(files().join("ck/latest")).unwrap();
    afl::fuzz!(|data: &[u8]| {
        let Some((&which, text)) = data.split_first() else {
            return;
        };
        let (s, l) = if which < 128 {
            (text, &latest[..])
        } else {
            (&state[..], text)
        };
        let sp = put("ck/step-2/state.json", s);
        let lp = put("ck/latest", l);
        if let Err(e) = ftl::train::checkpoint::find(&dir) {
            clear(&format!("{e:#}"), &[&sp, &lp, &dir]);
        }
    });
}
