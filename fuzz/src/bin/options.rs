//! Recipe option tables: a table decoded from the input goes to one of the API's functions (each
//! registry method, `ftl.train`, `ftl.new`, the data and tensor functions, the model's methods),
//! in plan mode (shapes only, nothing trained) or for real on a tiny model.

use ftl_fuzz::{run_clear, runtime, table, words, Bytes};
use std::sync::Arc;

const PRELUDE: &str = r#"
SMALL = {hidden_size = 16, intermediate_size = 32, num_hidden_layers = 2, num_attention_heads = 2,
  num_key_value_heads = 1, vocab_size = 260, max_position_embeddings = 64}
local rows = {{text = "one two"}, {text = "three four five"}, {text = "six"}}
CALLS = {
  function(m, d, t) ftl.train(m, d, t) end,
  function(m, d, t) ftl.lora(m, {targets = "all-linear"}); ftl.train(m, d, t) end,
  function(m, d, t) ftl.new("llama", t) end,
  function(m, d, t) ftl.new("gpt2", t) end,
  function(m, d, t) ftl.new("bert", t) end,
  function(m, d, t) ftl.new("qwen2", t) end,
  function(m, d, t) ftl.data.from(rows, t) end,
  function(m, d, t) ftl.data.from({t}) end,
  function(m, d, t) ftl.data.tokens(t) end,
  function(m, d, t) ftl.evaluate(m, d, t) end,
  function(m, d, t) m:state_dict(t) end,
  function(m, d, t) m:load_state_dict(t) end,
  function(m, d, t) m:generate({1, 2, 3}, t) end,
  function(m, d, t) m:forward({1, 2, 3}, t) end,
  function(m, d, t) m:freeze(t) end,
  function(m, d, t) m:unfreeze(t) end,
  function(m, d, t) ftl.lora(m, {targets = "q_proj"}); m:save_adapter("a", t) end,
  function(m, d, t) d:split(0.5, t) end,
  function(m, d, t) m:save("s", t) end,
  function(m, d, t) m:parameters(t) end,
  function(m, d, t) m:modules(t) end,
  function(m, d, t) ftl.tensor.from(t) end,
  function(m, d, t) ftl.tensor.zeros(t) end,
  function(m, d, t) ftl.plot("p.svg", t) end,
  function(m, d, t) m.tokenizer:encode("a b", t) end,
  function(m, d, t) m.tokenizer:decode(t) end,
}
for name, f in pairs(ftl) do
  if type(f) == "function" and name ~= "train" and name ~= "new" and name ~= "load"
    and name ~= "evaluate" and name ~= "plot" and name ~= "cache" and name ~= "clock"
    and name ~= "load_adapter" then
    CALLS[#CALLS + 1] = function(m, d, t) f(m, t) end
  end
end
"#;

const CALL: &str = r#"
local m = ftl.new("llama", SMALL, {tokenizer = ftl.tokenizer.bytes()})
local d = ftl.data.from({{text = "one two"}, {text = "three four five"}, {text = "six"}}, {format = "text"})
CALLS[1 + F % #CALLS](m, d, T)
"#;

fn main() {
    let rt = runtime();
    rt.run_source(PRELUDE).expect("the prelude runs");
    let words = words();
    afl::fuzz!(|data: &[u8]| {
        let mut b = Bytes(data);
        let which = b.u8();
        let plan = b.u8() % 4 != 0;
        let g = rt.lua.globals();
        g.set("F", which as i64).unwrap();
        g.set("T", table(&rt.lua, &mut b, &words, 2).unwrap())
            .unwrap();
        // beyond a few steps or tokens real runs only get slower, never find more
        if !plan {
            let t: mlua::Table = g.get("T").unwrap();
            for (k, hi) in [("max_steps", 3.0), ("epochs", 1.0), ("max_new_tokens", 4.0)] {
                if let Ok(Some(n)) = t.get::<Option<f64>>(k) {
                    t.set(k, n.min(hi)).unwrap();
                }
            }
        }
        let _shapes = plan.then(ftl::model::param::shapes_only);
        if plan {
            rt.lua
                .set_app_data(Arc::new(ftl::lua::plan::PlanState::default()));
        } else {
            rt.lua.remove_app_data::<Arc<ftl::lua::plan::PlanState>>();
        }
        run_clear(&rt, CALL, &[]);
    });
}
