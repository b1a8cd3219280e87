//! Rebuilds the crate when a migration is added or changed: `sqlx::migrate!` embeds
//! `migrations/` at compile time, and without this an incremental build (and the tests) would
//! keep migrating to the list of the last build (the build script sqlx recommends).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
