//! Keyword options from Python into the CLI's own argument structs (`cli::run::Args`), so that
//! `Args::to_options` validates them and builds the run exactly as for the command line.
//!
//! The Python wrapper passes every key it knows (its defaults are the CLI's: the tests compare
//! them with [`cli_run_args`]); values arrive as Python objects and are parsed with the same
//! `FromStr` implementations clap uses.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::str::FromStr;

use pyo3::conversion::FromPyObjectOwned;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use clap::Parser as _;
use sdseg_volume::cli::run::{Args, ModelArgs, OutputArgs};
use sdseg_volume::cli::{Cli, Command, InputArgs};

use crate::errors;

/// A dict of keyword options, read key by key; [`Options::finish`] refuses keys nobody read
/// (a wrapper that passes a misspelt key is a bug, not a silently ignored option).
pub struct Options<'py> {
    dict: Bound<'py, PyDict>,
    read: BTreeSet<String>,
}

impl<'py> Options<'py> {
    pub fn new(dict: Bound<'py, PyDict>) -> Options<'py> {
        Options {
            dict,
            read: BTreeSet::new(),
        }
    }

    /// The value of `key`, `None` when absent or `None`.
    pub fn get<T: FromPyObjectOwned<'py>>(&mut self, key: &str) -> PyResult<Option<T>> {
        self.read.insert(key.to_string());
        match self.dict.get_item(key)? {
            Some(v) if !v.is_none() => v
                .extract::<T>()
                .map(Some)
                .map_err(|e| PyTypeError::new_err(format!("{key}: {}", Into::<PyErr>::into(e)))),
            _ => Ok(None),
        }
    }

    pub fn get_or<T: FromPyObjectOwned<'py>>(&mut self, key: &str, default: T) -> PyResult<T> {
        Ok(self.get(key)?.unwrap_or(default))
    }

    /// A string option parsed as the CLI parses it (`key=value: <the parser's message>` when
    /// it does not parse: an `InputError`).
    pub fn parse<T: FromStr>(&mut self, key: &str) -> PyResult<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        match self.get::<String>(key)? {
            Some(s) => s
                .parse::<T>()
                .map(Some)
                .map_err(|e| errors::input(format!("{key}={s:?}: {e}"))),
            None => Ok(None),
        }
    }

    pub fn finish(self) -> PyResult<()> {
        let mut unknown = Vec::new();
        for k in self.dict.keys() {
            let k: String = k.extract()?;
            if !self.read.contains(&k) {
                unknown.push(k);
            }
        }
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(PyTypeError::new_err(format!(
                "unknown option(s): {}",
                unknown.join(", ")
            )))
        }
    }
}

/// `run`'s arguments with every option at the CLI's default (clap parses a minimal command
/// line), for `inputs` and `out`.
pub fn cli_run_args(inputs: Vec<PathBuf>, out: PathBuf) -> Args {
    let cli = Cli::try_parse_from(["sdseg-volume", "run", "INPUT", "--out", "OUT"])
        .expect("a minimal `run` command line parses");
    let Command::Run(mut args) = cli.command else {
        unreachable!("parsed a `run` command line")
    };
    args.inputs = inputs;
    args.out = out;
    *args
}

/// The model flags of `run` (`ModelArgs`) from `opts`, over the CLI's defaults in `args`.
pub fn model_args(opts: &mut Options<'_>, defaults: ModelArgs) -> PyResult<ModelArgs> {
    let d = defaults;
    Ok(ModelArgs {
        weights: opts.get("weights")?,
        model_config: opts.get("model_config")?,
        pipeline: opts.get_or("pipeline", d.pipeline)?,
        batch_size: opts.get_or("batch_size", d.batch_size)?,
        device: opts.parse("device")?.or(d.device),
        dtype: opts.parse("dtype")?.unwrap_or(d.dtype),
        samples: opts.get_or("samples", d.samples)?,
        seed: opts.get_or("seed", d.seed)?,
        noise: opts.parse("noise")?.unwrap_or(d.noise),
        no_ema: !opts.get_or("ema", !d.no_ema)?,
        resize: opts.parse("resize")?.unwrap_or(d.resize),
        read: InputArgs {
            series: opts.get("series")?,
            allow_gaps: opts.get_or("allow_gaps", d.read.allow_gaps)?,
            allow_tilt: opts.get_or("allow_tilt", d.read.allow_tilt)?,
        },
        test_segmenter: opts.parse("test_segmenter")?.or(d.test_segmenter),
    })
}

/// The output flags of `run` (`OutputArgs`) from `opts`, over the CLI's defaults. `--json`
/// stays off: the call returns the records it would print.
pub fn output_args(opts: &mut Options<'_>, defaults: OutputArgs) -> PyResult<OutputArgs> {
    let d = defaults;
    Ok(OutputArgs {
        name: opts.parse("name")?.or(d.name),
        format: opts.parse("format")?.unwrap_or(d.format),
        empty_segments: opts.get_or("empty_segments", d.empty_segments)?,
        overwrite: opts.get_or("overwrite", d.overwrite)?,
        report: opts.get("report")?,
        preview: opts.get("preview")?,
        uncertainty: opts.get("uncertainty")?,
        postprocess: opts.get("postprocess")?,
        statistics: opts.get_or("statistics", d.statistics)?,
        json: false,
    })
}

/// The command line equivalent to a call, for the run report's `command` (which for the CLI
/// is its own argv).
pub fn equivalent_command(function: &str, args: &Args) -> Vec<String> {
    let m = &args.model;
    let o = &args.output;
    let mut c = vec![
        format!("python: sdseg_volume.{function}"),
        "run".to_string(),
    ];
    c.extend(args.inputs.iter().map(|p| p.display().to_string()));
    c.push(format!("--out={}", args.out.display()));
    let mut flag = |name: &str, value: String| c.push(format!("--{name}={value}"));
    if let Some(p) = &args.manifest {
        flag("manifest", p.display().to_string());
    }
    if let Some(s) = &args.shard {
        flag("shard", s.to_string());
    }
    if let Some(w) = &m.weights {
        flag("weights", w.display().to_string());
    }
    if let Some(mc) = &m.model_config {
        flag("model-config", mc.clone());
    }
    flag("pipeline", m.pipeline.clone());
    if let Some(b) = m.batch_size {
        flag("batch-size", b.to_string());
    }
    if let Some(d) = &m.device {
        flag("device", d.to_string());
    }
    flag("dtype", m.dtype.to_string());
    flag("samples", m.samples.to_string());
    flag("seed", m.seed.to_string());
    flag(
        "noise",
        serde_json::to_value(m.noise)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
    );
    flag("resize", m.resize.to_string());
    flag("format", o.format.to_string());
    if let Some(p) = &o.postprocess {
        flag("postprocess", p.clone());
    }
    if let Some(u) = &o.uncertainty {
        flag("uncertainty", u.clone());
    }
    if let Some(r) = &o.report {
        flag("report", r.display().to_string());
    }
    if let Some(p) = &o.preview {
        flag("preview", p.clone());
    }
    if let Some(s) = &m.read.series {
        flag("series", s.clone());
    }
    if let Some(h) = &args.html {
        flag("html", h.display().to_string());
        if let Some(g) = &args.gt {
            flag("gt", g.display().to_string());
        }
        flag("html-ct-size", args.html_ct_size.to_string());
    }
    for (on, name) in [
        (m.no_ema, "no-ema"),
        (m.read.allow_gaps, "allow-gaps"),
        (m.read.allow_tilt, "allow-tilt"),
        (o.empty_segments, "empty-segments"),
        (o.overwrite, "overwrite"),
        (o.statistics, "statistics"),
    ] {
        if on {
            c.push(format!("--{name}"));
        }
    }
    c
}
