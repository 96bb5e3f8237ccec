// The same run path to LibTorch as the job binary's (`--features torch`): see
// crates/job/build.rs.

include!("../job/build.rs");
