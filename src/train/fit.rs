//! The loop around the steps: [`Trainer::fit`] with its observers (progress bar, `loss.csv`,
//! `loss.png`, checkpoint cadence), its limits ([`FitOptions`]) and what it reports.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::module::Module;
use ddpm_core::NoisePredictor;
use indicatif::{ProgressBar, ProgressStyle};

use super::{BatchSource, StepReport, TrainError, Trainer, minutes_to_duration};
use crate::checkpoint::{self, RunLock};

impl<M: Module + NoisePredictor<D>, const D: usize> Trainer<M, D> {
    /// Trains until the configured steps are done, the time limit passes or the stop flag is
    /// raised, with a progress bar (on a terminal), a loss log (`loss.csv`), checkpoints every
    /// `checkpoint_every` steps and at the end, and a loss plot (`loss.png`). The run directory
    /// is locked for the duration ([`RunLock`]).
    ///
    /// # Errors
    /// [`TrainError::RunExists`] when a fresh run would write into a directory holding another
    /// run's checkpoints; [`CheckpointError::Locked`](crate::checkpoint::CheckpointError::Locked); errors of [`step`](Self::step) (the last
    /// checkpoint is kept) and of saving.
    pub fn fit(
        &mut self,
        data: &impl BatchSource<D>,
        mut options: FitOptions<'_>,
    ) -> Result<FitReport, TrainError> {
        // One checkpoint folder given as the run directory: the run directory it belongs to.
        let run_dir = if checkpoint::is_checkpoint_dir(&options.run_dir) {
            checkpoint::run_dir_of(&options.run_dir)
        } else {
            options.run_dir.clone()
        };
        self.check_data(data)?;
        let _lock = RunLock::acquire(&run_dir)?;
        let existing = checkpoint::list(&run_dir);
        if self.run_dir.as_deref() != Some(run_dir.as_path()) && !existing.is_empty() {
            return Err(TrainError::RunExists(run_dir));
        }
        if let Some(&(newer, _)) = existing.last()
            && newer > self.state.step
        {
            return Err(TrainError::NewerCheckpoints {
                run_dir,
                step: self.state.step,
                newer,
            });
        }
        let log_err = |path: &Path, e: &dyn std::fmt::Display| TrainError::Log {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let csv_path = run_dir.join("loss.csv");
        let new_csv = !csv_path.exists();
        let mut csv = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&csv_path)
            .map_err(|e| log_err(&csv_path, &e))?;
        if new_csv {
            writeln!(csv, "step,loss,loss_smoothed,lr,grad_norm,images_per_s")
                .map_err(|e| log_err(&csv_path, &e))?;
        }
        let bar = if options.progress {
            let bar = ProgressBar::new(self.config.steps).with_position(self.state.step);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        } else {
            ProgressBar::hidden()
        };
        let started = Instant::now();
        let first_step = self.state.step;
        let mut smoothed: Option<f64> = None;
        let mut window = Instant::now();
        let mut window_images = 0usize;
        let batch = self.config.batch_size;
        let every = self.config.checkpoint_every;
        let log_every = options.log_every.max(1);
        let mut reason = StopReason::Finished;
        let mut last_checkpoint = None;
        while !self.finished() {
            if options
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::SeqCst))
            {
                reason = StopReason::Interrupted;
                break;
            }
            if options.time_limit.is_some_and(|l| started.elapsed() >= l) {
                reason = StopReason::TimeLimit;
                break;
            }
            let report = match self.step(data) {
                Ok(r) => r,
                Err(e) => {
                    bar.abandon();
                    return Err(e);
                }
            };
            window_images += batch;
            let s = smoothed.map_or(report.loss, |v| 0.98 * v + 0.02 * report.loss);
            smoothed = Some(s);
            let ips = window_images as f64 / window.elapsed().as_secs_f64().max(1e-9);
            if report.step.is_multiple_of(log_every) {
                writeln!(
                    csv,
                    "{},{:.6},{:.6},{:.3e},{:.4},{:.1}",
                    report.step, report.loss, s, report.lr, report.grad_norm, ips
                )
                .map_err(|e| log_err(&csv_path, &e))?;
                window = Instant::now();
                window_images = 0;
            }
            bar.set_position(report.step);
            bar.set_message(format!("loss {s:.4} | {ips:.0} img/s"));
            if let Some(f) = options.on_step.as_mut() {
                f(&report);
            }
            if every > 0 && report.step.is_multiple_of(every) {
                last_checkpoint = Some(self.save_checkpoint(&run_dir)?);
            }
        }
        bar.finish_with_message(format!("{reason} at step {}", self.state.step));
        // Every step done (in this call or by `step` before it) ends up in a checkpoint.
        if self.saved_step != Some(self.state.step) || checkpoint::list(&run_dir).is_empty() {
            last_checkpoint = Some(self.save_checkpoint(&run_dir)?);
        }
        let checkpoint = match last_checkpoint {
            Some(p) => p,
            None => checkpoint::resolve(&run_dir)?.checkpoint.dir,
        };
        csv.flush().map_err(|e| log_err(&csv_path, &e))?;
        let loss_plot = if options.plot {
            let path = run_dir.join("loss.png");
            crate::plot::plot_loss(&read_loss_csv(&csv_path), &path)
                .map_err(|e| log_err(&path, &e))?;
            Some(path)
        } else {
            None
        };
        let elapsed = started.elapsed();
        let steps_run = self.state.step - first_step;
        Ok(FitReport {
            reason,
            step: self.state.step,
            steps_run,
            elapsed,
            smoothed_loss: smoothed,
            images_per_s: (steps_run as usize * batch) as f64 / elapsed.as_secs_f64().max(1e-9),
            checkpoint,
            loss_plot,
        })
    }
}

/// Why [`Trainer::fit`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// All configured steps are done.
    Finished,
    /// The time limit passed.
    TimeLimit,
    /// The stop flag was raised (Ctrl-C).
    Interrupted,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopReason::Finished => "finished",
            StopReason::TimeLimit => "time limit reached",
            StopReason::Interrupted => "interrupted",
        })
    }
}

/// A callback of [`FitOptions::on_step`].
type StepHook<'a> = Box<dyn FnMut(&StepReport) + 'a>;

/// How [`Trainer::fit`] runs: where it writes, when it stops, what it reports.
pub struct FitOptions<'a> {
    run_dir: PathBuf,
    time_limit: Option<Duration>,
    stop: Option<Arc<AtomicBool>>,
    log_every: u64,
    progress: bool,
    plot: bool,
    on_step: Option<StepHook<'a>>,
}

impl std::fmt::Debug for FitOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FitOptions")
            .field("run_dir", &self.run_dir)
            .field("time_limit", &self.time_limit)
            .field("log_every", &self.log_every)
            .field("progress", &self.progress)
            .field("plot", &self.plot)
            .finish()
    }
}

impl<'a> FitOptions<'a> {
    /// Checkpoints, `loss.csv` and `loss.png` go to `run_dir`; no time limit; a loss line
    /// every 10 steps; a progress bar; a loss plot at the end.
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        Self {
            run_dir: run_dir.into(),
            time_limit: None,
            stop: None,
            log_every: 10,
            progress: true,
            plot: true,
            on_step: None,
        }
    }
    /// Stops (with a checkpoint) after `minutes` minutes, checked as [`minutes_to_duration`]
    /// checks them.
    ///
    /// # Errors
    /// [`TrainError::TimeLimit`] for NaN, a negative or an unrepresentably long time.
    pub fn with_time_limit_minutes(self, minutes: f64) -> Result<Self, TrainError> {
        Ok(self.with_time_limit(minutes_to_duration(minutes)?))
    }

    /// Stops after `limit` (with a checkpoint).
    pub fn with_time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }
    /// Stop (with a checkpoint) when `flag` becomes true (set it from a Ctrl-C handler).
    pub fn with_stop_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stop = Some(flag);
        self
    }
    /// Write a line to `loss.csv` every `steps` steps.
    pub fn with_log_every(mut self, steps: u64) -> Self {
        self.log_every = steps;
        self
    }
    /// Show a progress bar on stderr (hidden anyway when stderr is not a terminal).
    pub fn with_progress(mut self, show: bool) -> Self {
        self.progress = show;
        self
    }
    /// Plot `loss.png` at the end.
    pub fn with_plot(mut self, plot: bool) -> Self {
        self.plot = plot;
        self
    }
    /// Call `f` after every step.
    pub fn on_step(mut self, f: impl FnMut(&StepReport) + 'a) -> Self {
        self.on_step = Some(Box::new(f));
        self
    }
}

/// What [`Trainer::fit`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct FitReport {
    /// Why it stopped.
    pub reason: StopReason,
    /// The step reached.
    pub step: u64,
    /// Steps run by this call.
    pub steps_run: u64,
    /// Wall time of this call.
    pub elapsed: Duration,
    /// Exponentially smoothed loss (weight 0.02) at the end; `None` when no step ran.
    pub smoothed_loss: Option<f64>,
    /// Training images per second over this call.
    pub images_per_s: f64,
    /// The newest checkpoint.
    pub checkpoint: PathBuf,
    /// The loss plot, when drawn.
    pub loss_plot: Option<PathBuf>,
}

impl std::fmt::Display for FitReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: step {} ({} this run) in {:.1} min, {:.1} images/s, {}; checkpoint {}",
            self.reason,
            self.step,
            self.steps_run,
            self.elapsed.as_secs_f64() / 60.0,
            self.images_per_s,
            match self.smoothed_loss {
                Some(l) => format!("smoothed loss {l:.4}"),
                None => "no step run".to_string(),
            },
            self.checkpoint.display()
        )
    }
}

/// `(step, loss)` of a `loss.csv` written by [`Trainer::fit`].
pub fn read_loss_csv(path: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut it = l.split(',');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_report_says_when_no_step_ran() {
        let mut r = FitReport {
            reason: StopReason::Finished,
            step: 3268,
            steps_run: 0,
            elapsed: Duration::from_secs(0),
            smoothed_loss: None,
            images_per_s: 0.0,
            checkpoint: PathBuf::from("run/checkpoints/step-00003268"),
            loss_plot: None,
        };
        let text = r.to_string();
        assert!(
            text.contains("no step run") && !text.contains("NaN"),
            "{text}"
        );
        r.smoothed_loss = Some(0.01664);
        r.steps_run = 10;
        let text = r.to_string();
        assert!(
            text.starts_with("finished: step 3268 (10 this run)")
                && text.contains("smoothed loss 0.0166;"),
            "{text}"
        );
    }
}
