//! `sdseg-volume slurm-script`: print a ready sbatch job-array script that runs `run` over a
//! dataset, one shard per array task (one model load per task, `--quiet` logs, resume).
//! Only options Slurm 22.05 supports (`--array` with `%`, `--gres`, `--cpus-per-task`,
//! `--mem`, `--time`, `--partition`, `--account`, `--output` with `%A`/`%a`).

use std::path::{Path, PathBuf};

use super::run::{ModelArgs, OutputArgs};
use super::Globals;
use crate::error::{ResultExt, UsageError};
use crate::model::device::DeviceSpec;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dataset folder(s): each NIfTI file and each DICOM series subfolder is a case.
    #[arg(long, value_name = "DIR", required_unless_present = "manifest")]
    pub data: Vec<PathBuf>,
    /// A manifest instead of (or besides) --data (see `run --help`).
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Output folder.
    #[arg(long, short, value_name = "DIR")]
    pub out: PathBuf,
    /// Number of array tasks (shards): the array is 0..N-1.
    #[arg(long, value_name = "N")]
    pub array: usize,
    /// At most this many tasks at once (`--array=0-N%K`).
    #[arg(long, value_name = "K")]
    pub max_parallel: Option<usize>,
    /// GPUs per task (`--gres=gpu:N`); with GPUs, `run` gets `--device cuda` unless given.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub gpus: u32,
    /// Time limit per task: [D-]HH:MM:SS, or minutes.
    #[arg(long, value_name = "TIME")]
    pub time: Option<String>,
    /// CPUs per task (also sets RAYON_NUM_THREADS).
    #[arg(long, value_name = "C")]
    pub cpus_per_task: Option<u32>,
    /// Memory per node, e.g. 16G or 16000M.
    #[arg(long, value_name = "M")]
    pub mem: Option<String>,
    #[arg(long, value_name = "P")]
    pub partition: Option<String>,
    #[arg(long, value_name = "A")]
    pub account: Option<String>,
    #[arg(long, value_name = "NAME", default_value = "sdseg")]
    pub job_name: String,
    /// Folder for the task logs (default: OUT/logs; created now, as Slurm needs it to exist).
    #[arg(long, value_name = "DIR")]
    pub logs: Option<PathBuf>,
    /// The sdseg-volume binary the tasks run (default: this one).
    #[arg(long, value_name = "FILE")]
    pub binary: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Slurm time formats: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
fn valid_time(t: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit());
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (Some(d), r),
        None => (None, t),
    };
    if days.is_some_and(|d| !digits(d)) {
        return false;
    }
    let parts: Vec<&str> = rest.split(':').collect();
    parts.iter().all(|p| digits(p)) && (1..=3).contains(&parts.len())
}

fn valid_mem(m: &str) -> bool {
    let n = m.trim_end_matches(['K', 'M', 'G', 'T']);
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && m.len() - n.len() <= 1
}

/// Single-quote for bash.
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Absolute, without `.` components (existing paths are canonicalised).
fn absolute(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    joined
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

fn abs_str(p: &Path) -> String {
    absolute(p).to_string_lossy().into_owned()
}

impl ModelArgs {
    /// The flags that reproduce these options, paths made absolute.
    pub fn to_argv(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut push = |k: &str, val: String| {
            v.push(k.to_string());
            v.push(val);
        };
        if let Some(w) = &self.weights {
            push("--weights", abs_str(w));
        }
        if let Some(c) = &self.model_config {
            let p = Path::new(c);
            push(
                "--model-config",
                if p.is_file() { abs_str(p) } else { c.clone() },
            );
        }
        // A pipeline file (possibly with :VARIANT) becomes an absolute path.
        let (file, variant) = match self.pipeline.rsplit_once(':') {
            Some((f, v)) if Path::new(f).is_file() => (f, Some(v)),
            _ => (self.pipeline.as_str(), None),
        };
        let mut pipeline = if Path::new(file).is_file() {
            abs_str(Path::new(file))
        } else {
            file.to_string()
        };
        if let Some(v) = variant {
            pipeline = format!("{pipeline}:{v}");
        }
        push("--pipeline", pipeline);
        // Without one, each task picks the default for the CPUs its job step gets.
        if let Some(b) = self.batch_size {
            push("--batch-size", b.to_string());
        }
        if let Some(d) = self.device {
            push("--device", d.to_string());
        }
        push("--dtype", self.dtype.to_string());
        push("--seed", self.seed.to_string());
        if self.samples != 1 {
            push("--samples", self.samples.to_string());
        }
        push(
            "--noise",
            match self.noise {
                crate::pipeline::segmenter::NoiseMode::Shared => "shared".into(),
                crate::pipeline::segmenter::NoiseMode::PerSlice => "per-slice".into(),
            },
        );
        push("--resize", self.resize.to_string());
        if let Some(s) = &self.read.series {
            push("--series", s.clone());
        }
        if let Some(t) = &self.test_segmenter {
            let mut s = format!("threshold:{}", t.classes);
            if t.delay_ms > 0 {
                s.push_str(&format!(":{}", t.delay_ms));
            }
            push("--test-segmenter", s);
        }
        for (on, flag) in [
            (self.no_ema, "--no-ema"),
            (self.read.allow_gaps, "--allow-gaps"),
            (self.read.allow_tilt, "--allow-tilt"),
        ] {
            if on {
                v.push(flag.into());
            }
        }
        v
    }
}

impl OutputArgs {
    pub fn to_argv(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(n) = &self.name {
            v.extend(["--name".into(), n.as_str().to_string()]);
        }
        v.extend(self.format.to_argv());
        if let Some(r) = &self.report {
            v.extend(["--report".into(), abs_str(r)]);
        }
        if let Some(p) = &self.preview {
            v.extend(["--preview".into(), abs_str(Path::new(p))]);
        }
        if let Some(u) = &self.uncertainty {
            v.extend(["--uncertainty".into(), abs_str(Path::new(u))]);
        }
        match self.postprocess.as_deref() {
            Some(p) if Path::new(p).is_file() => {
                v.extend(["--postprocess".into(), abs_str(Path::new(p))])
            }
            Some(p) => v.extend(["--postprocess".into(), p.to_string()]),
            None => {}
        }
        for (on, flag) in [
            (self.overwrite, "--overwrite"),
            (self.empty_segments, "--empty-segments"),
            (self.statistics, "--statistics"),
            (self.json, "--json"),
        ] {
            if on {
                v.push(flag.into());
            }
        }
        v
    }
}

/// The sbatch script text (validated arguments in, nothing written).
pub fn script(a: &Args, binary: &Path, cases: usize) -> String {
    let n = a.array;
    let out = abs_str(&a.out);
    let logs = a
        .logs
        .as_deref()
        .map(abs_str)
        .unwrap_or_else(|| format!("{out}/logs"));
    let tool = crate::pipeline::report::tool_info();
    let mut s = String::from("#!/bin/bash\n");
    s.push_str(&format!(
        "# Generated by {} {}{} (slurm-script).\n",
        tool.name,
        tool.version,
        tool.git_hash
            .map(|h| format!(" (git {})", &h[..h.len().min(12)]))
            .unwrap_or_default()
    ));
    s.push_str(&format!(
        "# {cases} case(s) in {n} array task(s). Task T loads the model once and segments shard\n\
         # T/{n}: cases T, T+{n}, T+2*{n}, ... of the case ids in sorted order.\n\
         # Submit: sbatch <this file>. Resubmitting, all of it or one task (sbatch --array={last}\n\
         # <this file>), resumes: cases whose output exists are skipped.\n",
        last = n - 1
    ));
    let array = match a.max_parallel {
        Some(k) => format!("0-{}%{k}", n - 1),
        None => format!("0-{}", n - 1),
    };
    let mut sb = |k: &str, v: String| s.push_str(&format!("#SBATCH --{k}={v}\n"));
    sb("job-name", a.job_name.clone());
    sb("array", array);
    sb("output", format!("{logs}/{}_%A_%a.log", a.job_name));
    sb("ntasks", "1".into());
    if let Some(c) = a.cpus_per_task {
        sb("cpus-per-task", c.to_string());
    }
    if let Some(m) = &a.mem {
        sb("mem", m.clone());
    }
    if let Some(t) = &a.time {
        sb("time", t.clone());
    }
    if let Some(p) = &a.partition {
        sb("partition", p.clone());
    }
    if let Some(acc) = &a.account {
        sb("account", acc.clone());
    }
    if a.gpus > 0 {
        sb("gres", format!("gpu:{}", a.gpus));
    }
    s.push_str("\nset -euo pipefail\n");
    if a.cpus_per_task.is_some() {
        s.push_str("export RAYON_NUM_THREADS=\"${SLURM_CPUS_PER_TASK:-1}\"\n");
    }
    s.push_str(&format!(
        "echo \"task ${{SLURM_ARRAY_TASK_ID}} of {n} on $(hostname), started $(date -Is)\"\n"
    ));
    // One line per flag and its value.
    let mut lines: Vec<String> = vec!["--quiet run".into()];
    lines.extend(a.data.iter().map(|d| q(&abs_str(d))));
    if let Some(m) = &a.manifest {
        lines.push(format!("--manifest {}", q(&abs_str(m))));
    }
    lines.push(format!("--out {}", q(&out)));
    lines.push(format!("--shard \"${{SLURM_ARRAY_TASK_ID}}/{n}\""));
    let mut model = a.model.clone();
    if a.gpus > 0 && model.device.is_none() {
        model.device = Some(DeviceSpec::Cuda(0));
    }
    for arg in model.to_argv().into_iter().chain(a.output.to_argv()) {
        match lines.last_mut() {
            Some(l) if !arg.starts_with("--") => {
                l.push(' ');
                l.push_str(&q(&arg));
            }
            _ => lines.push(arg),
        }
    }
    s.push_str(&format!("exec {}", q(&binary.to_string_lossy())));
    for l in lines {
        s.push_str(" \\\n    ");
        s.push_str(&l);
    }
    s.push('\n');
    s
}

/// Check the flags (the run flags through `run`'s own validation, so the tasks cannot fail on
/// usage), count the cases, create the log folder and return the script.
pub fn build(a: &Args, g: Globals) -> anyhow::Result<String> {
    if a.array == 0 {
        return Err(UsageError("--array must be at least 1".into()).into());
    }
    if a.max_parallel == Some(0) {
        return Err(UsageError("--max-parallel must be at least 1".into()).into());
    }
    if let Some(t) = &a.time {
        if !valid_time(t) {
            return Err(UsageError(format!(
                "--time {t}: expected [D-]HH:MM:SS, MM:SS or minutes (Slurm's formats)"
            ))
            .into());
        }
    }
    if let Some(m) = &a.mem {
        if !valid_mem(m) {
            return Err(
                UsageError(format!("--mem {m}: expected a size like 16G or 16000M")).into(),
            );
        }
    }
    if a.gpus == 0 && matches!(a.model.device, Some(DeviceSpec::Cuda(_))) {
        return Err(UsageError("--device cuda needs GPUs: add --gpus 1".into()).into());
    }
    if crate::io::nifti::is_nifti_path(&a.out) {
        return Err(UsageError(format!(
            "--out {}: slurm-script writes many cases; give a folder",
            a.out.display()
        ))
        .into());
    }
    let run_args = super::run::Args {
        inputs: a.data.clone(),
        out: a.out.clone(),
        manifest: a.manifest.clone(),
        shard: Some(crate::pipeline::shard::Shard::ALL),
        model: a.model.clone(),
        output: a.output.clone(),
        html: None,
        gt: None,
        html_ct_size: crate::review::CT_IN_PLANE,
    };
    // Without an explicit --device the run flags are validated for CPU here: the GPU is on
    // the compute node, maybe not on this one.
    let opts = run_args.to_options(g)?;
    let disc = crate::pipeline::cases::discover(&crate::pipeline::cases::CaseSpec {
        inputs: &opts.inputs,
        manifest: opts.manifest.as_deref(),
        out: &opts.out,
        name: &opts.name,
    })
    .classified()?;
    if let Some(p) = &opts.preview {
        if disc.cases.len() > 1 && !p.per_case() {
            return Err(UsageError(format!(
                "--preview {}: put {{case}} in the path (several cases)",
                p.0
            ))
            .into());
        }
    }
    if let Some(r) = &a.output.report {
        if !r.to_string_lossy().contains("{shard}") {
            return Err(UsageError(format!(
                "--report {}: every task writes a report; put {{shard}} in the path",
                r.display()
            ))
            .into());
        }
    }
    if a.gpus > 1 {
        eprintln!("note: `run` uses one GPU per task (cuda:0 of the task's allocation)");
    }
    if a.array > disc.cases.len() {
        eprintln!(
            "note: {} array tasks for {} case(s): {} task(s) will have nothing to do",
            a.array,
            disc.cases.len(),
            a.array - disc.cases.len()
        );
    }
    let logs = a.logs.clone().unwrap_or_else(|| a.out.join("logs"));
    std::fs::create_dir_all(&logs)
        .map_err(|e| anyhow::anyhow!("creating the log folder {}: {e}", logs.display()))?;
    let binary = match &a.binary {
        Some(b) => absolute(b),
        None => {
            std::env::current_exe().map_err(|e| anyhow::anyhow!("locating this executable: {e}"))?
        }
    };
    Ok(script(a, &binary, disc.cases.len()))
}

pub fn run(args: Args, g: Globals) -> anyhow::Result<()> {
    let text = build(&args, g)?;
    print!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_value_formats() {
        for t in ["30", "10:00", "02:00:00", "1-12", "1-12:30", "2-00:00:00"] {
            assert!(valid_time(t), "{t}");
        }
        for t in ["", "1h", "1:2:3:4", "a-10", "-10:00"] {
            assert!(!valid_time(t), "{t}");
        }
        for m in ["16G", "16000M", "512", "2T"] {
            assert!(valid_mem(m), "{m}");
        }
        for m in ["G", "16GB", "1.5G", ""] {
            assert!(!valid_mem(m), "{m}");
        }
        assert_eq!(q("it's"), r"'it'\''s'");
    }
}
