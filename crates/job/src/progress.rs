//! Progress bars on stderr (hidden when stderr is not a terminal, or with --quiet): bytes
//! per phase, and one bar per training epoch.

use std::sync::Mutex;

use blindfold_zone::train::{EpochMetrics, TrainProgress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Draws one byte-count bar per phase.
pub struct Bars {
    quiet: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    /// Bars on stderr, or none with `quiet`.
    pub fn new(quiet: bool) -> Self {
        Bars {
            quiet,
            bar: Mutex::new(None),
        }
    }
}

impl blindfold_dataset::Progress for Bars {
    fn begin(&self, what: &str, total: u64) {
        let target = if self.quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let pb = ProgressBar::with_draw_target(Some(total), target);
        pb.set_style(
            ProgressStyle::with_template(
                "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_message(what.to_owned());
        *self.bar.lock().expect("progress lock") = Some(pb);
    }

    fn advance(&self, n: u64) {
        if let Some(b) = &*self.bar.lock().expect("progress lock") {
            b.inc(n);
        }
    }

    fn end(&self) {
        if let Some(b) = self.bar.lock().expect("progress lock").take() {
            b.finish_and_clear();
        }
    }
}

/// Progress of a training run: one bar per epoch with loss, accuracy and samples/s, and
/// a line per epoch after it (both withheld with `quiet`).
pub struct EpochBars {
    quiet: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl EpochBars {
    /// Bars on stderr, or none with `quiet`.
    pub fn new(quiet: bool) -> Self {
        EpochBars {
            quiet,
            bar: Mutex::new(None),
        }
    }
}

impl TrainProgress for EpochBars {
    fn epoch_start(&self, epoch: usize, records: u64) {
        let target = if self.quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let pb = ProgressBar::with_draw_target(Some(records), target);
        pb.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb.set_prefix(epoch.to_string());
        *self.bar.lock().expect("progress lock") = Some(pb);
    }

    fn step(&self, done: u64, loss: f64, accuracy: f64, samples_per_s: f64) {
        if let Some(b) = &*self.bar.lock().expect("progress lock") {
            b.set_position(done);
            let acc = if accuracy.is_nan() {
                String::new()
            } else {
                format!(" acc {:.2}%", accuracy * 100.0)
            };
            b.set_message(format!("loss {loss:.4}{acc} {samples_per_s:.0} samples/s"));
        }
    }

    fn epoch_end(&self, m: &EpochMetrics) {
        if let Some(b) = self.bar.lock().expect("progress lock").take() {
            b.finish_and_clear();
        }
        // --quiet withholds the figures too: on a real TEE, stderr is the cloud's.
        if !self.quiet {
            eprintln!("{}", epoch_line(m));
        }
    }
}

/// One line per epoch, as printed after its bar.
pub fn epoch_line(m: &EpochMetrics) -> String {
    if let Some(rmse) = m.train_rmse {
        let opt = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.4}"));
        return format!(
            "epoch {}: loss (MSE) {:.4}, train RMSE {rmse:.4}, validation RMSE {}, test RMSE {}, {:.1} s, {:.0} samples/s",
            m.epoch,
            m.loss,
            opt(m.validation_rmse),
            opt(m.test_rmse),
            m.seconds,
            m.samples_per_s
        );
    }
    format!(
        "epoch {}: loss {:.4}, train accuracy {:.2}%, test accuracy {}, {:.1} s, {:.0} samples/s",
        m.epoch,
        m.loss,
        m.train_accuracy.unwrap_or(0.0) * 100.0,
        m.test_accuracy
            .map_or("n/a".into(), |a| format!("{:.2}%", a * 100.0)),
        m.seconds,
        m.samples_per_s
    )
}
