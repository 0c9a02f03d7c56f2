//! The registry's methods (IA3, LoHa, LoKr, VeRA) from recipes: `ftl.<method>` with PEFT's option
//! names, their parameter counts, save → load, and option errors located at the recipe's line.
//! Their agreement with PEFT is in `fixtures` (logits, merge) and `training` (steps).

use crate::recipes::run;

fn recipe(src: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("m.lua");
    std::fs::write(&p, src).unwrap();
    (t, p)
}

#[test]
fn each_method_attaches_with_peft_s_shapes_and_reloads_as_it_saved() {
    let model = crate::common::fixture("llama-tiny").display().to_string();
    // llama-tiny: hidden 64, q_proj 64→64, v_proj 64→32, down_proj 128→64, two layers
    let src = r#"
local function count(opts, method)
  local m = ftl.load(ftl.args.model)
  local a = ftl[method](m, opts)
  local d = ftl.data.from({{text = "hello world, hello fox"}}, {format = "text"})
  ftl.train(m, d, {max_steps = 2, lr = 1e-2})
  m:save_adapter(method)
  local t = ftl.tensor.load(ftl.args.model .. "/expected.safetensors")
  local before = m:forward(t.input_ids, t.attention_mask)
  local fresh = ftl.load(ftl.args.model)
  ftl.load_adapter(fresh, ftl.out_dir .. "/" .. method)
  local after = fresh:forward(t.input_ids, t.attention_mask)
  local diff = (before - after):abs():max()
  print(method, a:trainable(), #a:targets(), diff)
end
count({r = 4}, "loha")
count({r = 1, decompose_both = true, decompose_factor = 4}, "lokr")
count({r = 8, targets = {"q_proj", "v_proj", "down_proj"}}, "vera")
"#;
    let (_t, p) = recipe(src);
    let (code, out, err) = run(&p, &[&format!("model={model}")]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
    // LoHa r=4 on q (64×64) and v (32×64): 2·4·(64+64) + 2·4·(32+64), per layer, two layers
    let loha = 2 * (2 * 4 * (64 + 64) + 2 * 4 * (32 + 64));
    // LoKr r=1, factor 4, decompose_both: q 64 = 4·16 both sides: W1 4×4 as 4×1 + 1×4 (r below
    // half of 4), W2 16×16 as 16×1 + 1×16; v 32 = 4·8 out, 64 = 4·16 in: W1 the same, W2 8×1 +
    // 1×16
    let lokr = 2 * ((4 + 4 + 16 + 16) + (4 + 4 + 8 + 16));
    // VeRA: λ_b (out) + λ_d (r) per target: q 64+8, v 32+8, down 64+8
    let vera = 2 * ((64 + 8) + (32 + 8) + (64 + 8));
    for (row, (name, n)) in rows
        .iter()
        .zip([("loha", loha), ("lokr", lokr), ("vera", vera)])
    {
        assert_eq!(row[0], name, "{out}");
        assert_eq!(row[1].parse::<usize>().unwrap(), n, "{name}: trainable");
        let diff: f64 = row[3].parse().unwrap();
        assert!(diff < 1e-5, "{name}: reloaded differs by {diff}");
    }
    assert_eq!(rows.len(), 3, "{out}");
}

#[test]
fn bad_options_name_the_option_and_the_line() {
    let model = crate::common::fixture("llama-tiny").display().to_string();
    let cases = [
        (
            "ftl.loha(m, {rr = 4})",
            "unknown option `rr`; did you mean `r`?",
        ),
        ("ftl.lokr(m, {r = 0})", "r must be at least 1"),
        (
            "ftl.lokr(m, {decompose_factor = 0})",
            "decompose_factor must be -1 or at least 1",
        ),
        (
            "ftl.lokr(m, {init_weights = 'gauss'})",
            "init_weights must be true, false or \"lycoris\"",
        ),
        (
            "ftl.vera(m, {vera_dropout = 1.5})",
            "vera_dropout must be in [0, 1)",
        ),
        ("ftl.vera(m, {r = 'big'})", "option `r` must be an integer"),
        ("ftl.prefix(m, {tokens = 0})", "tokens must be at least 1"),
        (
            "ftl.prefix(m, {projection = -3})",
            "projection must be a hidden size or true",
        ),
        (
            "ftl.prompt(m, {init_txt = 'hi'})",
            "unknown option `init_txt`; did you mean `init_text`?",
        ),
        (
            "ftl.ia3(m, {feedfoward = 'down_proj'})",
            "unknown option `feedfoward`; did you mean `feedforward`?",
        ),
        (
            "ftl.ia3(m, {feedforward = 'gate_proj'})",
            "`feedforward` matches none of the targets",
        ),
        (
            "ftl.loha(m, {targets = 'nothing_like_this'})",
            "nothing_like_this",
        ),
    ];
    for (call, want) in cases {
        let (_t, p) = recipe(&format!("local m = ftl.load(ftl.args.model)\n{call}\n"));
        let (code, _, err) = run(&p, &[&format!("model={model}")]);
        assert_ne!(code, 0, "{call}");
        assert!(err.contains(want), "{call}: {err}");
        assert!(err.contains("m.lua:2"), "{call}: {err}");
    }
}

/// IA3's feed-forward modules as PEFT picks them: the architecture's default whenever
/// `feedforward` is left out (custom targets too, and a file whose `feedforward_modules` is null),
/// none with `{}`; a feed-forward target scales its input (`ia3_l` `[1, in]`).
#[test]
fn ia3_feedforward_defaults_as_peft_s() {
    use crate::common::*;
    let model = fixture("llama-tiny").display().to_string();
    let src = r#"
local function shapes(opts)
  local m = ftl.load(ftl.args.model)
  local a = ftl.ia3(m, opts)
  local out = {}
  for _, p in ipairs(a:parameters()) do
    if p.name:find("layers.0.", 1, true) then
      out[#out + 1] = p.name:match("([%w_]+)%.ia3_l$") .. "=" .. table.concat(p.shape, "x")
    end
  end
  print(table.concat(out, " "))
  return m
end
shapes({})
shapes({targets = {"k_proj", "down_proj"}})
shapes({targets = {"k_proj", "down_proj"}, feedforward = {}})
local m = shapes({targets = {"k_proj", "down_proj"}, feedforward = "re:.*k_proj"})
local d = ftl.data.from({{text = "hello world, hello fox"}}, {format = "text"})
ftl.train(m, d, {max_steps = 2, lr = 1e-1})
print(m:save_adapter("ia3"))
"#;
    let (_t, p) = recipe(src);
    let (code, out, err) = run(&p, &[&format!("model={model}")]);
    assert_eq!(code, 0, "{err}");
    // llama-tiny: k_proj 64→32, v_proj 64→32, down_proj 128→64
    let want = [
        "k_proj=32x1 v_proj=32x1 down_proj=1x128",
        "k_proj=32x1 down_proj=1x128",
        "k_proj=32x1 down_proj=64x1",
        "k_proj=1x64 down_proj=64x1",
    ];
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..4], want, "{out}");
    // the saved list reads back as saved; made null, PEFT's default (down_proj) applies
    let dir = std::path::PathBuf::from(lines[4]);
    let cfg_path = dir.join("adapter_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    assert_eq!(
        cfg["feedforward_modules"],
        serde_json::json!([
            "model.layers.0.self_attn.k_proj",
            "model.layers.1.self_attn.k_proj"
        ]),
        "{cfg}"
    );
    let mut m = load(&fixture("llama-tiny"));
    ftl::peft::io::load_adapter(&mut m, &dir, &Default::default()).unwrap();
    cfg["feedforward_modules"] = serde_json::Value::Null;
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err =
        ftl::peft::io::load_adapter(&mut load(&fixture("llama-tiny")), &dir, &Default::default())
            .unwrap_err()
            .to_string();
    // the saved k_proj vectors are [1, 64]: under PEFT's default they would be [32, 1]
    assert!(err.contains("k_proj.ia3_l"), "{err}");
}

/// Prefix and prompt tuning from the registry: the recipe API's names (`tokens`, `projection`,
/// `init_text`) written under PEFT's (`num_virtual_tokens`, `prefix_projection`,
/// `prompt_tuning_init_text`), and read back to the same logits; a projected prefix saves its
/// projected keys and values, as PEFT does for inference.
#[test]
fn prompt_learning_saves_peft_s_fields_and_reloads() {
    let model = crate::common::fixture("llama-tiny").display().to_string();
    let src = r#"
local t = ftl.tensor.load(ftl.args.model .. "/expected.safetensors")
local d = ftl.data.from({{text = "hello world, hello fox"}}, {format = "text"})
for _, case in ipairs({{"prefix", {tokens = 3, projection = 16}}, {"prompt", {tokens = 5, init_text = "opposite"}}}) do
  local m = ftl.load(ftl.args.model)
  local a = ftl[case[1]](m, case[2])
  ftl.train(m, d, {max_steps = 2, lr = 1e-2})
  local dir = m:save_adapter(case[1])
  local fresh = ftl.load(ftl.args.model)
  ftl.load_adapter(fresh, dir)
  local diff = (m:forward(t.input_ids, t.attention_mask) - fresh:forward(t.input_ids, t.attention_mask)):abs():max()
  print(case[1], a:trainable(), dir, diff)
end
"#;
    let (_t, p) = recipe(src);
    let (code, out, err) = run(&p, &[&format!("model={model}")]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 2, "{out}");
    // llama-tiny: 2 layers, 2 kv heads × 16 = token_dim 32, hidden 64; the prefix MLP 32 → 16 →
    // 2·2·32, the prompt 5 × 64
    let prefix = 3 * 32 + (16 * 32 + 16) + (128 * 16 + 128);
    assert_eq!(rows[0][1].parse::<usize>().unwrap(), prefix, "{out}");
    assert_eq!(rows[1][1].parse::<usize>().unwrap(), 5 * 64, "{out}");
    let cfg = |dir: &str| -> serde_json::Value {
        let s = std::fs::read_to_string(std::path::Path::new(dir).join("adapter_config.json"));
        serde_json::from_str(&s.unwrap()).unwrap()
    };
    let c = cfg(rows[0][2]);
    assert_eq!(c["peft_type"], "PREFIX_TUNING", "{c}");
    assert_eq!(c["num_virtual_tokens"], 3, "{c}");
    assert_eq!(c["prefix_projection"], true, "{c}");
    assert_eq!(c["encoder_hidden_size"], 16, "{c}");
    let c = cfg(rows[1][2]);
    assert_eq!(c["peft_type"], "PROMPT_TUNING", "{c}");
    assert_eq!(c["num_virtual_tokens"], 5, "{c}");
    assert_eq!(c["prompt_tuning_init"], "TEXT", "{c}");
    assert_eq!(c["prompt_tuning_init_text"], "opposite", "{c}");
    for r in &rows {
        let diff: f64 = r[3].parse().unwrap();
        assert!(diff < 1e-5, "{}: reloaded differs by {diff}", r[0]);
    }
}

/// PEFT's rank_pattern / alpha_pattern read per module (the fixture's logits are in `fixtures`),
/// and written back so that the saved adapter reads the same.
#[test]
fn per_module_rank_and_alpha_survive_save_and_load() {
    use crate::common::*;
    let d = fixture("lokr-rank-alpha-pattern");
    let e = expected(&d);
    let mut m = load(&fixture("llama-tiny"));
    ftl::peft::io::load_adapter(&mut m, &d, &Default::default()).unwrap();
    let params = m.adapter_params("default");
    let shape = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, p)| p.dims());
    // r 2 decomposes layer 1's v_proj W2 (8×16 → 8×2 · 2×16); layer 0's keeps it full at r 8
    assert_eq!(
        shape("model.layers.1.self_attn.v_proj.lokr_w2_a"),
        Some(vec![8, 2])
    );
    assert_eq!(
        shape("model.layers.0.self_attn.v_proj.lokr_w2"),
        Some(vec![8, 8])
    );
    let t = tempfile::tempdir().unwrap();
    ftl::peft::io::save_adapter(&mut m, t.path(), "default").unwrap();
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(t.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        cfg["rank_pattern"]["model\\.layers\\.1\\.self_attn\\.v_proj"], 2,
        "{cfg}"
    );
    assert_eq!(
        cfg["alpha_pattern"]["model\\.layers\\.0\\.self_attn\\.q_proj"], 3.0,
        "{cfg}"
    );
    let mut back = load(&fixture("llama-tiny"));
    ftl::peft::io::load_adapter(&mut back, t.path(), &Default::default()).unwrap();
    assert!(rel(&logits(&back, &e), e.get("logits")) < 1e-4);
}

/// PEFT's LoHa and LoKr refuse GPT-2's Conv1D layers: ftl adapts them, and says the file will not
/// load in PEFT; VeRA, which PEFT puts there, says nothing.
#[test]
fn methods_peft_cannot_put_on_conv1d_say_so() {
    let model = crate::common::fixture("gpt2-tiny").display().to_string();
    for (method, warns) in [("loha", true), ("lokr", true), ("vera", false)] {
        let (_t, p) = recipe(&format!(
            "local m = ftl.load(ftl.args.model)\nftl.{method}(m, {{r = 2}})\n"
        ));
        let o = crate::recipes::ftl_bin()
            .args(["run"])
            .arg(&p)
            .arg(format!("model={model}"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{method}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            err.contains("PeftModel.from_pretrained will refuse"),
            warns,
            "{method}: {err}"
        );
    }
}
