//! The `unfed` binary: one subcommand per role.
fn main() {}
