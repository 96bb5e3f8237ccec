//! With the `torch` feature: the run path to LibTorch's libraries (libtorch_rpath.rs,
//! shared with the CLI's build script).

include!("libtorch_rpath.rs");
