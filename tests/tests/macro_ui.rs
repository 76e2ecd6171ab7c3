//! Compile-time behaviour of `#[openai_call]`: accepted options and the diagnostics of misuse.
//!
//! The `.stderr` files are checked in; after a deliberate change regenerate them with
//! `TRYBUILD=overwrite cargo test -p tests --test macro_ui` and review each one by eye.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
