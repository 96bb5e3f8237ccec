//! With the `torch` feature (`--device torch-cpu`): checks that LibTorch is where
//! `LIBTORCH` says (scripts/libtorch puts it in .libtorch/, and .cargo/config.toml points
//! there), lets what cargo runs find its libraries, and compiles
//! src/libtorch/conv_backward.cpp against its headers.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    let Some(root) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        fail("LIBTORCH is not set: run `bash scripts/libtorch` in the checkout (.cargo/config.toml sets LIBTORCH to its .libtorch/), or set LIBTORCH to a LibTorch 2.9.0 folder");
    };
    let lib = root.join("lib");
    if !lib.join("libtorch_cpu.so").exists() {
        fail(&format!(
            "{} holds no LibTorch (lib/libtorch_cpu.so): run `bash scripts/libtorch`",
            root.display()
        ));
    }
    println!("cargo:rerun-if-changed={}", lib.display());
    // cargo puts the link-search folders of build scripts on the library path of what
    // it runs (`cargo run`, `cargo test`) only when they lie inside the target folder:
    // so the libraries are linked from OUT_DIR, not searched in LIBTORCH.
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("libtorch");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap_or_else(|e| fail(&format!("{}: {e}", out.display())));
    for entry in
        std::fs::read_dir(&lib).unwrap_or_else(|e| fail(&format!("{}: {e}", lib.display())))
    {
        let entry = entry.unwrap_or_else(|e| fail(&format!("{}: {e}", lib.display())));
        let to = out.join(entry.file_name());
        std::os::unix::fs::symlink(entry.path(), &to)
            .unwrap_or_else(|e| fail(&format!("{}: {e}", to.display())));
    }
    println!("cargo:rustc-link-search=native={}", out.display());
    compile_conv_backward(&root);
}

/// src/libtorch/conv_backward.cpp, against LibTorch's headers. `cc` is a build
/// dependency of the `torch` feature only.
#[cfg(feature = "torch")]
fn compile_conv_backward(root: &std::path::Path) {
    let cpp = "src/libtorch/conv_backward.cpp";
    println!("cargo:rerun-if-changed={cpp}");
    let include = root.join("include");
    println!("cargo:rerun-if-changed={}", include.display());
    cc::Build::new()
        .cpp(true)
        .file(cpp)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .std("c++17")
        // The pinned LibTorch 2.9.0 (PyPI's build) uses the C++11 string ABI: its
        // libc10.so exports `std::__cxx11` symbols. torch-sys assumes the same.
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("blindfold_torch_ops");
    // After the static library on the link line: what its code calls.
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}

#[cfg(not(feature = "torch"))]
fn compile_conv_backward(_: &std::path::Path) {
    unreachable!("main returns first without the torch feature")
}

fn fail(why: &str) -> ! {
    eprintln!("blindfold-zone (feature torch): {why}");
    std::process::exit(1)
}
