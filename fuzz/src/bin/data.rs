//! Data files: the input is a JSONL file (read as each format: text, instruction, chat,
//! classification, none given) or a plain text file, loaded by `ftl.data.*` and tokenized for a training
//! step in plan mode.

use ftl_fuzz::{put, run_clear, runtime};
use std::sync::Arc;

const FORMATS: [&str; 5] = [
    "nil",
    "'text'",
    "'instruction'",
    "'chat'",
    "'classification'",
];

fn main() {
    let rt = runtime();
    rt.run_source(
        "M = ftl.new('llama', {hidden_size = 16, intermediate_size = 32, num_hidden_layers = 1, \
         num_attention_heads = 2, num_key_value_heads = 1, vocab_size = 260}, \
         {tokenizer = ftl.tokenizer.bytes()})",
    )
    .unwrap();
    afl::fuzz!(|data: &[u8]| {
        let Some((&which, text)) = data.split_first() else {
            return;
        };
        let (src, p) = if which < 200 {
            let p = put("d.jsonl", text);
            let f = FORMATS[which as usize % FORMATS.len()];
            (
                format!("local d = ftl.data.jsonl({p:?}, {{format = {f}}})\nlocal n = d:len(M.tokenizer)\n\
                         ftl.train(M, d, {{max_steps = 1, batch_size = 2}})\n"),
                p,
            )
        } else {
            let p = put("d.txt", text);
            (
                format!(
                    "local d = ftl.data.text({p:?}, {{block = 8}})\n\
                         ftl.train(M, d, {{max_steps = 1, batch_size = 2}})\n"
                ),
                p,
            )
        };
        let _shapes = ftl::model::param::shapes_only();
        rt.lua
            .set_app_data(Arc::new(ftl::lua::plan::PlanState::default()));
        run_clear(&rt, &src, &[&p]);
    });
}
