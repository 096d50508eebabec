//! Build progress on stderr: a numbered spinner per step, byte bars for copies.

use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Shows the steps of a build.
#[derive(Debug)]
pub struct Progress {
    multi: MultiProgress,
    total: usize,
    done: usize,
    started: Instant,
}

/// One running step; finish it with [`Step::finish`].
#[derive(Debug)]
pub struct Step {
    bar: ProgressBar,
    label: String,
    started: Instant,
}

impl Progress {
    /// Starts a build of `total` steps.
    pub fn new(total: usize) -> Self {
        Self {
            multi: MultiProgress::new(),
            total,
            done: 0,
            started: Instant::now(),
        }
    }

    /// Begins the next step.
    pub fn step(&mut self, label: &str) -> Step {
        self.done += 1;
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{prefix:.bold} {spinner} {msg} [{elapsed}]")
                .expect("valid template")
                .tick_strings(&["-", "\\", "|", "/", "+"]),
        );
        bar.set_prefix(format!("[{}/{}]", self.done, self.total));
        bar.set_message(label.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        if bar.is_hidden() {
            eprintln!("[{}/{}] {label}", self.done, self.total);
        }
        Step {
            bar,
            label: label.to_owned(),
            started: Instant::now(),
        }
    }

    /// Prints a log line above the bars.
    pub fn log(&self, line: &str) {
        if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    /// A byte progress bar for a copy of `len` bytes.
    pub fn bytes(&self, label: &str, len: u64) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(len));
        bar.set_style(
            ProgressStyle::with_template("      {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(label.to_owned());
        bar
    }

    /// Time since the build started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Step {
    /// Shows the latest output line of a running tool.
    pub fn detail(&self, line: &str) {
        let short: String = line.chars().take(70).collect();
        self.bar.set_message(format!("{}: {short}", self.label));
    }

    /// Marks the step done, with a note (e.g. a size or "cached").
    pub fn finish(self, note: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        let msg = if note.is_empty() {
            format!("{} ({secs:.1}s)", self.label)
        } else {
            format!("{}: {note} ({secs:.1}s)", self.label)
        };
        if self.bar.is_hidden() {
            eprintln!("      done: {msg}");
        }
        self.bar
            .set_style(ProgressStyle::with_template("{prefix:.bold} ✓ {msg}").expect("valid template"));
        self.bar.finish_with_message(msg);
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.abandon_with_message(format!("{} (failed)", self.label));
        }
    }
}
