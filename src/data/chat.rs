//! Chat data: messages rendered with the tokenizer's chat template (minijinja configured as HF's
//! jinja2 environment: trim_blocks, lstrip_blocks), loss only on the assistant turns.

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use minijinja::{context, Environment};

fn env(tpl: &str) -> Result<Environment<'static>> {
    let mut e = Environment::new();
    e.set_trim_blocks(true);
    e.set_lstrip_blocks(true);
    e.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    e.add_template_owned("chat", tpl.to_string())
        .map_err(|e| Error::msg(format!("chat template: {e}")))?;
    Ok(e)
}

/// The template applied to `msgs`.
pub fn render(
    env: &Environment,
    tok: &Tokenizer,
    msgs: &[(String, String)],
    add_generation_prompt: bool,
) -> Result<String> {
    let messages: Vec<minijinja::Value> = msgs
        .iter()
        .map(|(r, c)| context! { role => r, content => c })
        .collect();
    env.get_template("chat")
        .and_then(|t| {
            t.render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => tok.bos_token.clone().unwrap_or_default(),
                eos_token => tok.eos_token.clone().unwrap_or_default(),
            })
        })
        .map_err(|e| Error::msg(format!("chat template: {e}")))
}

/// Token ids and labels of a conversation: every segment tokenized on its own; the text an
/// assistant turn adds after its generation prompt is learned, the rest masked.
pub fn tokenize(
    tpl: &str,
    tok: &Tokenizer,
    msgs: &[(String, String)],
) -> Result<(Vec<u32>, Vec<i64>)> {
    let env = env(tpl)?;
    let mut prev = String::new();
    let mut ids = Vec::new();
    let mut labels = Vec::new();
    let mut push = |text: &str, learn: bool| -> Result<()> {
        let t = tok.encode(text, false)?;
        labels.extend(
            t.iter()
                .map(|&x| if learn { x as i64 } else { super::IGNORE }),
        );
        ids.extend(t);
        Ok(())
    };
    let prefix_err = || {
        Error::msg(
            "chat template: a shorter conversation does not render as a prefix of a longer one",
        )
    };
    for i in 0..msgs.len() {
        let full = render(&env, tok, &msgs[..=i], false)?;
        if msgs[i].0 == "assistant" {
            let head = render(&env, tok, &msgs[..i], true)?;
            let h = head.strip_prefix(prev.as_str()).ok_or_else(prefix_err)?;
            let a = full.strip_prefix(head.as_str()).ok_or_else(prefix_err)?;
            push(h, false)?;
            push(a, true)?;
        } else {
            let seg = full.strip_prefix(prev.as_str()).ok_or_else(prefix_err)?;
            push(seg, false)?;
        }
        prev = full;
    }
    Ok((ids, labels))
}
