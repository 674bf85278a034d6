//! The integration tests: one test binary (one link instead of one per file), one module per
//! area, and the helpers they share in [`support`]: the binary under test, the shipped release
//! binary, fixtures and test data, temporary folders, and the Python tools the
//! interoperability tests compare against.

mod support;

mod architecture;
mod bench_cli;
mod corpus;
mod demo_run;
mod dicom;
mod dicom_seg;
mod eval;
mod exit_codes;
mod fuzz_regressions;
#[cfg(feature = "cuda")]
mod gpu;
mod installed;
mod interop_dcm2niix;
mod interop_nibabel;
mod metrics;
mod metrics_reference;
mod nifti;
mod parity;
mod pipeline;
mod real_world;
mod refine;
mod reproduce;
mod review;
mod rtstruct;
mod run;
mod run_dicom_outputs;
mod run_kill_resume;
mod samples;
mod train;
mod vae_parity;
