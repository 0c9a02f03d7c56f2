//! The registry's methods (LoHa, LoKr, VeRA) from recipes: `ftl.<method>` with PEFT's option
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
