//! Chat templates (`tokenizer.chat_template`) rendered with minijinja in a sandbox.
//!
//! A template is code from the model file, so it is treated as hostile: minijinja has no file or
//! network access; rendering is bounded by fuel (instructions executed), by recursion depth, and by
//! output size; Python string methods that Hugging Face templates use (`strip`, `startswith`...) are
//! provided by `minijinja-contrib`'s pycompat layer.

use minijinja::{Environment, ErrorKind, context};
use serde::Serialize;

use crate::error::{Error, Result};

/// Most bytes a rendered prompt may take.
pub const MAX_OUTPUT: usize = 1 << 20;
/// Instructions a render may execute.
const FUEL: u64 = 2_000_000;
/// Largest template source accepted.
const MAX_SOURCE: usize = 256 << 10;

/// One chat message.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message { role: role.into(), content: content.into() }
    }
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
}

fn tmpl_err(e: minijinja::Error) -> Error {
    Error::Template(e.to_string())
}

impl ChatTemplate {
    /// Compiles a template.
    pub fn new(source: &str) -> Result<Self> {
        if source.len() > MAX_SOURCE {
            return Err(Error::Template(format!("template of {} bytes exceeds {MAX_SOURCE}", source.len())));
        }
        let mut env = Environment::new();
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(64);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |_fmt: String| "1 January 2026".to_string());
        env.add_template_owned("chat", source.to_owned()).map_err(tmpl_err)?;
        Ok(ChatTemplate { env })
    }

    /// Renders messages; `add_generation_prompt` opens the assistant's turn.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool, bos: &str, eos: &str) -> Result<String> {
        let t = self.env.get_template("chat").map_err(tmpl_err)?;
        let out = t
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => bos,
                eos_token => eos,
            })
            .map_err(tmpl_err)?;
        if out.len() > MAX_OUTPUT {
            return Err(Error::Template(format!("rendered prompt of {} bytes exceeds {MAX_OUTPUT}", out.len())));
        }
        Ok(out)
    }
}
