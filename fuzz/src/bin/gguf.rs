//! GGUF files: the input is a `.gguf` model loaded by `ftl.load` (header, metadata, tokenizer,
//! tensor infos and the dequantized tensors), then run once.

use ftl_fuzz::{put, run_clear, runtime};

fn main() {
    let rt = runtime();
    afl::fuzz!(|data: &[u8]| {
        let p = put("model.gguf", data);
        let src = format!("local m = ftl.load({p:?})\nm:forward({{1, 2}})\n");
        run_clear(&rt, &src, &[&p]);
    });
}
