//! safetensors files: the input is a model directory's `model.safetensors` (with a tiny llama's
//! config), loaded by `ftl.load`, and a tensor file read by `ftl.tensor.load` and
//! `ftl.tensor.metadata`.

use ftl_fuzz::{files, put, run_clear, runtime, scratch};

fn main() {
    let rt = runtime();
    let dir = scratch().join("m");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        files().join("models/llama/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    afl::fuzz!(|data: &[u8]| {
        let p = put("m/model.safetensors", data);
        let src = format!(
            "local t = ftl.tensor.load({p:?})\nftl.tensor.metadata({p:?})\nlocal m = ftl.load({:?})\n\
             m:forward({{1, 2}})\n",
            p.parent().unwrap()
        );
        run_clear(&rt, &src, &[&p]);
    });
}
