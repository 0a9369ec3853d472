//! Chat templates: rendering the GGUF's `tokenizer.chat_template` (Jinja).
//!
//! Hugging Face models ship their prompt format as a Jinja template, and the
//! GGUF carries it verbatim. It is rendered here with `minijinja`, configured
//! as `transformers` (and llama-cpp-python's `Jinja2ChatFormatter`) configure
//! Jinja2: `trim_blocks` and `lstrip_blocks` on, a trailing newline of the
//! template dropped, and the variables `messages` (a list of `{role,
//! content}`), `add_generation_prompt`, `bos_token`, `eos_token`, plus the
//! `raise_exception(msg)` function templates call to reject input.
//!
//! Why an engine rather than a hard-coded ChatML writer: the template decides
//! details a writer would have to guess, such as SmolLM2's default system
//! prompt, inserted only when the first message is not a system message.
//! (llama.cpp's built-in `llama_chat_apply_template` recognises ChatML by
//! substring and never inserts that prompt; `llama-server --jinja`,
//! llama-cpp-python and `transformers` render the template, as here.)
//! `minijinja` is small (its only required dependency is `serde`), widely
//! used for exactly this job (Hugging Face's text-generation-inference renders
//! chat templates with it) and maintained. Templates that use Python-only
//! string methods (`.strip()`, `.startswith()`...) are not supported and fail
//! with a render error naming the problem.

use std::collections::BTreeMap;

use minijinja::{Environment, Error, ErrorKind, context};

/// Renders `template` for `messages`.
pub(crate) fn render(
    template: &str,
    messages: &[(&str, &str)],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String, Error> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    let tmpl = env.template_from_str(template)?;
    let msgs: Vec<BTreeMap<&str, &str>> = messages
        .iter()
        .map(|&(role, content)| BTreeMap::from([("role", role), ("content", content)]))
        .collect();
    tmpl.render(context! {
        messages => msgs,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_rejects() {
        let t = "{% for m in messages %}[{{ m['role'] }}:{{ m.content }}]\n{% endfor %}\
                 {% if add_generation_prompt %}>{% endif %}";
        assert_eq!(
            render(t, &[("user", "hi"), ("assistant", "yo")], true, "", "").ok(),
            Some("[user:hi]\n[assistant:yo]\n>".to_owned())
        );
        let bad = "{{ raise_exception('roles must alternate') }}";
        let e = render(bad, &[], false, "", "").err().map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("roles must alternate")));
        assert!(render("{% for %}", &[], false, "", "").is_err());
    }
}
