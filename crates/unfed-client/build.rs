//! Enables the slow tests (real model weights) when `UNFED_SLOW=1`; otherwise they are listed
//! as ignored, with the reason, rather than skipped silently.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(unfed_slow)");
    println!("cargo::rerun-if-env-changed=UNFED_SLOW");
    if std::env::var("UNFED_SLOW").is_ok_and(|v| v == "1") {
        println!("cargo::rustc-cfg=unfed_slow");
    }
}
