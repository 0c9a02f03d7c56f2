//! `adapter_config.json`: the input is the config of a PEFT adapter directory whose weights are
//! a real one's (LoRA, IA3, LoHa, LoKr, VeRA, prefix or prompt tuning: the first byte chooses),
//! loaded onto a tiny llama by `ftl.load_adapter` and run once.

use ftl_fuzz::{files, put, run_clear, runtime, scratch};

const ADAPTERS: [&str; 7] = ["lora", "ia3", "loha", "lokr", "vera", "prefix", "prompt"];

fn main() {
    let rt = runtime();
    for a in ADAPTERS {
        let dir = scratch().join(a);
        std::fs::create_dir_all(&dir).unwrap();
        let w = files()
            .join("adapters")
            .join(a)
            .join("adapter_model.safetensors");
        std::fs::copy(w, dir.join("adapter_model.safetensors")).unwrap();
    }
    let base = files().join("models/llama");
    afl::fuzz!(|data: &[u8]| {
        let Some((&which, text)) = data.split_first() else {
            return;
        };
        let a = ADAPTERS[which as usize % ADAPTERS.len()];
        let p = put(&format!("{a}/adapter_config.json"), text);
        let src = format!(
            "local m = ftl.load({base:?})\nftl.load_adapter(m, {:?})\nm:forward({{1, 2}})\n",
            p.parent().unwrap()
        );
        run_clear(&rt, &src, &[&p]);
    });
}
