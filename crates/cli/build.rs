//! With the `torch` feature: the same run path to LibTorch's libraries as the job
//! binary's (crates/job/libtorch_rpath.rs).

include!("../job/libtorch_rpath.rs");
