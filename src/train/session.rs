//! A training session, what `train` (SDSeg, [`super::sdseg`]) and `train-autoencoder`
//! ([`super::autoencoder`]) share:
//!
//! 1. the run folder and its [`RunState`]: a fresh one, or the one `--resume` continues
//!    (a folder that already holds a run is never overwritten silently);
//! 2. the training slices ([`SliceSet`]) and the held-out cases of the data source;
//! 3. `log.csv`, started with the trainer's header (kept on `--resume`);
//! 4. the step loop ([`run_steps`]): batches prefetched on a background thread, and after each
//!    optimiser step the cadence of both trainings: validation when the [`Trainer`] says so,
//!    a log line every `log_every` steps (and after every validation and the last step), the
//!    `last` checkpoint every `save_every` steps and after the last step.
//!
//! What a step, a validation, a log line and a checkpoint are belongs to each [`Trainer`].
//! All randomness derives from the seed and the step, so `--resume` continues exactly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;

use crate::model::config::SdsegConfig;
use crate::pipeline::Pipeline;

use super::checkpoint::RunState;
use super::data::{self, prefetch, CaseRef, DataSource, HostBatch, Sampler, SliceSet};
use super::model::StepLosses;
use super::optim::AdamW;
use super::validate::ValReport;
use super::TrainError;

/// Progress events for the caller (progress bars, logs).
#[derive(Clone, Debug)]
pub enum Event {
    Message(String),
    Step {
        step: u64,
        total: u64,
        losses: StepLosses,
        lr: f64,
    },
    Validation {
        step: u64,
        report: ValReport,
    },
}

/// Send `Event::Message(m)`.
pub(super) fn say(on_event: &mut dyn FnMut(&Event), m: String) {
    on_event(&Event::Message(m));
}

/// The option checks both trainings share: a batch, and slices of the model's size.
pub(super) fn check_options(
    batch_size: usize,
    pipeline: &Pipeline,
    config: &SdsegConfig,
) -> Result<(), TrainError> {
    if batch_size == 0 {
        return Err(TrainError::Usage("--batch-size must be at least 1".into()));
    }
    if pipeline.slicing.size != config.image_size() {
        return Err(TrainError::Usage(format!(
            "the pipeline slices at {0}×{0} but the model config expects {1}×{1} images \
             (ddconfig.resolution); make them agree",
            pipeline.slicing.size,
            config.image_size()
        )));
    }
    Ok(())
}

/// Create the run folder `out` and return its state: `fresh` for a new run, the saved state
/// with `resume`. A folder that already holds a run needs `resume`.
pub(super) fn open_run(
    out: &Path,
    resume: bool,
    fresh: RunState,
    on_event: &mut dyn FnMut(&Event),
) -> Result<RunState, TrainError> {
    std::fs::create_dir_all(out).map_err(|source| TrainError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    if resume {
        let st = RunState::load(out)?;
        say(
            on_event,
            format!(
                "resuming {} at step {} (seed {}, batch {}, lr {:.3e})",
                out.display(),
                st.step,
                st.seed,
                st.batch_size,
                st.base_lr
            ),
        );
        return Ok(st);
    }
    if RunState::path(out).exists() {
        return Err(TrainError::Usage(format!(
            "{} already holds a run (state.json); pass --resume to continue it or choose a new --out",
            out.display()
        )));
    }
    Ok(fresh)
}

/// The state of a new run: step 0, no scale factor or best score yet, checkpoints
/// `last.safetensors` and `last.state.safetensors`.
pub(super) fn fresh_state(
    seed: u64,
    batch_size: usize,
    base_lr: f64,
    warmup_steps: u64,
    pipeline: &Pipeline,
    data: &DataSource,
) -> RunState {
    RunState {
        step: 0,
        seed,
        batch_size,
        base_lr,
        warmup_steps,
        pipeline: pipeline.name.clone(),
        data: data.to_string(),
        scale_factor: None,
        best_val_dice: None,
        checkpoint: "last.safetensors".into(),
        optimizer_state: "last.state.safetensors".into(),
    }
}

/// The training slices of `data` (every case the pipeline's splits do not hold out) and the
/// held-out cases.
pub(super) fn load_training_slices(
    data: &DataSource,
    pipeline: &Pipeline,
    warnings: &mut Vec<String>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<(Arc<SliceSet>, Vec<CaseRef>), TrainError> {
    let (train_refs, held_out) = data::list_cases(data, pipeline, warnings)?;
    say(
        on_event,
        format!(
            "loading {} training case(s) from {}",
            train_refs.len(),
            data
        ),
    );
    let set = Arc::new(SliceSet::build(data::load_cases(&train_refs)?, pipeline)?);
    say(
        on_event,
        format!(
            "{} training slices at {}² ({:.0}% with foreground, {} constant slices skipped)",
            set.len(),
            set.size,
            100.0 * set.foreground_fraction(),
            set.skipped_constant
        ),
    );
    Ok((set, held_out))
}

/// Load the optimiser state of a resumed run (`state.optimizer_state` in `out`).
pub(super) fn resume_optimizer(
    opt: &mut AdamW,
    out: &Path,
    state: &RunState,
    device: &Device,
) -> Result<(), TrainError> {
    let resume_error = |message: String| TrainError::Resume {
        run_dir: out.to_path_buf(),
        message,
    };
    let st = out.join(&state.optimizer_state);
    let tensors = candle_core::safetensors::load(&st, device)
        .map_err(|e| resume_error(format!("{}: {e}", st.display())))?;
    opt.load_state(&tensors)
        .map_err(|e| resume_error(e.to_string()))
}

/// `log.csv` of a run: one line per logged step, appended (a resumed run continues it).
pub(super) struct RunLog {
    path: PathBuf,
}

impl RunLog {
    /// The log in `out`; a new run starts it afresh with the column names `header`.
    pub(super) fn start(out: &Path, header: &str, resume: bool) -> Result<RunLog, TrainError> {
        let log = RunLog {
            path: out.join("log.csv"),
        };
        if !resume {
            let _ = std::fs::remove_file(&log.path);
            log.append(header)?;
        }
        Ok(log)
    }

    pub(super) fn append(&self, line: &str) -> Result<(), TrainError> {
        let write_error = |source| TrainError::Write {
            path: self.path.clone(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(write_error)?;
        writeln!(f, "{line}").map_err(write_error)
    }
}

/// Every how many steps a session logs and saves (0 = only after the last step).
#[derive(Clone, Copy, Debug)]
pub(super) struct Cadence {
    pub log_every: u64,
    pub save_every: u64,
}

/// Is `step` (steps done) a multiple of `every` (> 0)?
pub(super) fn due(every: u64, step: u64) -> bool {
    every > 0 && step.is_multiple_of(every)
}

/// One model's part of a session.
pub(super) trait Trainer {
    /// One optimiser step on `batch`, the `n`-th of the run (from 0); returns its losses and
    /// learning rate.
    fn step(
        &mut self,
        n: u64,
        batch: HostBatch,
        state: &mut RunState,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<(StepLosses, f64), TrainError>;

    /// Validate after `step` steps if due (`last`: after the run's last step); the log columns
    /// of the result, `None` when it did not validate.
    fn validate(
        &mut self,
        step: u64,
        last: bool,
        state: &mut RunState,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<Option<String>, TrainError>;

    /// The `log.csv` line after `step` steps: `recent` is the mean loss since the last line.
    fn log_line(
        &self,
        step: u64,
        recent: f32,
        losses: &StepLosses,
        lr: f64,
        elapsed_s: f64,
        val: Option<&str>,
    ) -> String;

    /// Write the `last` checkpoint and the run state.
    fn save(&mut self, state: &RunState) -> Result<(), TrainError>;
}

/// What [`run_steps`] did.
#[derive(Clone, Debug)]
pub(super) struct Steps {
    pub steps_done: u64,
    pub first_loss: Option<StepLosses>,
    pub last_loss: Option<StepLosses>,
    /// Mean loss since the previous log line, at the last log line (NaN without one).
    pub recent_loss: f32,
    pub elapsed_s: f64,
}

impl Steps {
    pub fn steps_per_second(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.steps_done as f64 / self.elapsed_s
        } else {
            0.0
        }
    }
}

/// Train from `state.step` up to `end` steps on batches of `set` (module docs).
pub(super) fn run_steps(
    trainer: &mut dyn Trainer,
    set: Arc<SliceSet>,
    state: &mut RunState,
    end: u64,
    cadence: Cadence,
    log: &RunLog,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Steps, TrainError> {
    let start = state.step;
    let sampler = Sampler {
        seed: state.seed,
        batch: state.batch_size,
    };
    let (rx, producer) = prefetch(set, sampler, start, end, 2);
    let t0 = Instant::now();
    let (mut first_loss, mut last_loss) = (None, None);
    let mut window: Vec<f32> = Vec::new();
    let mut recent = f32::NAN;
    for n in start..end {
        let batch = rx
            .recv()
            .map_err(|_| TrainError::Internal("data thread stopped".into()))?;
        debug_assert_eq!(batch.step, n);
        let (losses, lr) = trainer.step(n, batch, state, on_event)?;
        state.step = n + 1;
        first_loss.get_or_insert(losses);
        last_loss = Some(losses);
        window.push(losses.loss);
        on_event(&Event::Step {
            step: n + 1,
            total: end,
            losses,
            lr,
        });
        let last = n + 1 == end;
        let val = trainer.validate(n + 1, last, state, on_event)?;
        if due(cadence.log_every.max(1), n + 1) || last || val.is_some() {
            recent = window.iter().sum::<f32>() / window.len().max(1) as f32;
            window.clear();
            let elapsed_s = t0.elapsed().as_secs_f64();
            log.append(&trainer.log_line(n + 1, recent, &losses, lr, elapsed_s, val.as_deref()))?;
        }
        if due(cadence.save_every, n + 1) || last {
            trainer.save(state)?;
        }
    }
    drop(rx);
    let _ = producer.join();
    Ok(Steps {
        steps_done: end - start,
        first_loss,
        last_loss,
        recent_loss: recent,
        elapsed_s: t0.elapsed().as_secs_f64(),
    })
}
