#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| blindfold_dataset::import::fuzz(data));
