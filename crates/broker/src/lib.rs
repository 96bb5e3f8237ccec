//! placeholder
#![allow(missing_docs)]
pub mod policy;
pub mod verifier;
