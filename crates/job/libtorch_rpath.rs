// With the `torch` feature: the binaries find LibTorch's libraries at run time through
// their run path: `$BLINDFOLD_LIBTORCH_RPATH` when set (scripts/build-job sets
// `$ORIGIN/libtorch`, so that the measured image's bytes do not name the build
// machine's folders), else `$LIBTORCH/lib` (.libtorch/lib in a checkout, see
// .cargo/config.toml and scripts/libtorch).

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=BLINDFOLD_LIBTORCH_RPATH");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    let rpath = match std::env::var("BLINDFOLD_LIBTORCH_RPATH") {
        Ok(p) => p,
        Err(_) => match std::env::var("LIBTORCH") {
            Ok(root) => format!("{}/lib", root.trim_end_matches('/')),
            Err(_) => return, // blindfold-zone's build script says what is missing
        },
    };
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{rpath}");
}
