//! Reading the README as a newcomer does: the shell block under a heading.

/// The README's text.
pub fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("the README")
}

/// The first ```sh block after `heading` in `text`.
pub fn sh_block_after<'a>(text: &'a str, heading: &str) -> &'a str {
    text.split(heading)
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|block| block.split("```").next())
        .unwrap_or_else(|| panic!("no shell block under {heading}"))
}
