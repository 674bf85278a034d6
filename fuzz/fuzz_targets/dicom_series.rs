#![no_main]
// See sdseg_volume::fuzzing::dicom_series for what this target covers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sdseg_volume::fuzzing::dicom_series(data));
