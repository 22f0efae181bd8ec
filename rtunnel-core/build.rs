//! Rebuilds the crate when a migration is added.
//!
//! `sqlx::migrate!` embeds `migrations/sql` at compile time, and on stable
//! Rust Cargo reruns the macro only when a file it already knows changes:
//! a new migration file alone left the old list in the binary and in the
//! tests. This is the build script `sqlx migrate build-script` writes.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
