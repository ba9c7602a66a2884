//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds the migration folders,
//! and cargo does not notice a new file in them by itself.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
