//! `config.json`: the input is the config of a model directory whose weights are a tiny
//! model's (llama, qwen2, gpt2 or BERT, chosen by the first byte), loaded for real by `ftl.load`.

use ftl_fuzz::{files, put, run_clear, runtime, scratch};

const MODELS: [&str; 4] = ["llama", "qwen2", "gpt2", "bert"];

fn main() {
    let rt = runtime();
    for m in MODELS {
        let dir = scratch().join(m);
        std::fs::create_dir_all(&dir).unwrap();
        let w = files().join("models").join(m).join("model.safetensors");
        std::fs::copy(w, dir.join("model.safetensors")).unwrap();
    }
    afl::fuzz!(|data: &[u8]| {
        let Some((&which, text)) = data.split_first() else {
            return;
        };
        let m = MODELS[which as usize % MODELS.len()];
        let p = put(&format!("{m}/config.json"), text);
        let src = format!(
            "local m = ftl.load({:?})\nm:forward({{1, 2}})\n",
            p.parent().unwrap()
        );
        run_clear(&rt, &src, &[&p]);
    });
}
