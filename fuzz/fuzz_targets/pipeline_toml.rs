#![no_main]
// See sdseg_volume::fuzzing::pipeline_toml for what this target covers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sdseg_volume::fuzzing::pipeline_toml(data));
