//! `reencrypt`: every Secret (of some namespaces, or all) stored again under the API server's
//! current first encryption provider, by the product's engine (`kms_key_vault_mode::reencrypt`:
//! names only, a no-op merge patch per Secret, adaptive concurrency, an exact resume point) —
//! what a key rotation or a move to KMS needs on any cluster. Around the engine this adds what a
//! person at a terminal and a script need: a count first, progress (a bar on a terminal, plain
//! lines otherwise), a checkpoint file written atomically as it goes so an interrupted run
//! resumes (`--resume`), a verification pass, and exit codes (docs/plugin.md#exit-codes).
//! May touch: Secrets (the no-op patch only; no data read or sent) and the checkpoint file.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Cluster, Exit, Failure, Outcome};
use crate::kms_key_vault_mode::reencrypt::{self as engine, Progress, Settings};

/// Where the checkpoint goes unless `--checkpoint` says otherwise.
pub(crate) const DEFAULT_CHECKPOINT: &str = "clustersecurity-reencrypt.checkpoint.json";
/// The engine's cap, and the most the plugin allows.
const MOST_IN_FLIGHT: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Concurrency {
    /// As many in flight as the API server takes (the engine's limiter), up to 64.
    Auto,
    /// Exactly this many in flight.
    Fixed(usize),
}

fn concurrency(text: &str) -> Result<Concurrency, String> {
    if text == "auto" {
        return Ok(Concurrency::Auto);
    }
    match text.parse::<usize>() {
        Ok(n) if (1..=MOST_IN_FLIGHT).contains(&n) => Ok(Concurrency::Fixed(n)),
        _ => Err(format!("{text:?}: give `auto` or a number between 1 and {MOST_IN_FLIGHT}")),
    }
}

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Args {
    /// Only the Secrets of these namespaces (repeat, or separate with commas); default: every namespace.
    #[arg(short = 'n', long, value_delimiter = ',')]
    pub namespace: Vec<String>,
    /// Rewrites in flight: `auto` (adapts to the API server's latency, up to 64) or a fixed number 1-64.
    #[arg(long, default_value = "auto", value_parser = concurrency)]
    pub concurrency: Concurrency,
    /// Continue the interrupted run recorded in the checkpoint file.
    #[arg(long)]
    pub resume: bool,
    /// The checkpoint file (written as the run goes; read by --resume).
    #[arg(long, default_value = DEFAULT_CHECKPOINT)]
    pub checkpoint: PathBuf,
    /// Secret names listed per request; the checkpoint is written once per page.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub page_size: u32,
    /// Skip the verification pass (a second no-op pass that counts Secrets still stored under an older provider).
    #[arg(long)]
    pub no_verify: bool,
}

impl Args {
    /// Checks clap cannot express.
    pub(crate) fn check(&self) -> Result<(), String> {
        if let Some(bad) = self.namespace.iter().find(|n| n.is_empty() || n.contains('/')) {
            return Err(format!("--namespace {bad:?} is not a namespace name"));
        }
        Ok(())
    }

    /// The namespaces in scope, sorted and once each (empty: all).
    fn scope(&self) -> Vec<String> {
        let mut s = self.namespace.clone();
        s.sort();
        s.dedup();
        s
    }

    fn settings(&self) -> Settings {
        let (concurrency, adaptive) = match self.concurrency {
            Concurrency::Auto => (MOST_IN_FLIGHT, true),
            Concurrency::Fixed(n) => (n, false),
        };
        Settings { concurrency, page_size: self.page_size, adaptive, ..Settings::default() }
    }
}

/// Secrets counted by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Counts {
    pub rewritten: u64,
    pub unchanged: u64,
    pub gone: u64,
    pub failed: u64,
}

impl Counts {
    pub(super) fn handled(&self) -> u64 {
        self.rewritten + self.unchanged + self.gone + self.failed
    }

    fn of(p: &Progress) -> Self {
        Self { rewritten: p.rewritten, unchanged: p.unchanged, gone: p.gone, failed: p.failed }
    }

    fn add(self, o: Self) -> Self {
        Self {
            rewritten: self.rewritten + o.rewritten,
            unchanged: self.unchanged + o.unchanged,
            gone: self.gone + o.gone,
            failed: self.failed + o.failed,
        }
    }
}

/// What the checkpoint file holds: enough to resume exactly, and to refuse resuming elsewhere.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Checkpoint {
    pub version: u32,
    /// The API server the run rewrites through.
    pub server: String,
    /// The namespaces in scope (empty: all).
    pub scope: Vec<String>,
    /// Namespaces finished (a scoped run goes one namespace after the other, in order).
    pub done: Vec<String>,
    /// Counts of the finished namespaces.
    pub done_counts: Counts,
    /// The pass in progress: its counts and resume point (`namespace/name`, and the API
    /// server's list continuation for its page).
    pub counts: Counts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_continue: Option<String>,
    /// Every pass finished.
    pub complete: bool,
    pub started_at: String,
    pub updated_at: String,
}

impl Checkpoint {
    pub(super) fn handled(&self) -> u64 {
        self.done_counts.handled() + self.counts.handled()
    }

    /// The engine's start for the pass in progress.
    fn start(&self) -> Progress {
        Progress {
            total: self.counts.handled(),
            rewritten: self.counts.rewritten,
            unchanged: self.counts.unchanged,
            gone: self.counts.gone,
            failed: self.counts.failed,
            resume_after: self.resume_after.clone(),
            resume_continue: self.resume_continue.clone(),
            listed_again: 0,
        }
    }
}

/// Read a checkpoint; None when the file does not exist.
pub(crate) fn load(path: &Path) -> Result<Option<Checkpoint>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("the checkpoint {} does not parse ({e}); remove it to start over", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read the checkpoint {}: {e}", path.display())),
    }
}

/// Write a checkpoint atomically (a temporary file renamed over it): a run killed at any moment
/// leaves the previous checkpoint or this one, never half of one.
pub(crate) fn save(path: &Path, c: &Checkpoint) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, serde_json::to_vec_pretty(c).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, path)
}

/// The checkpoint this run starts from: a fresh one, or the one `--resume` continues — refused
/// (usage) when it would lose or mix up work.
pub(crate) fn starting_point(
    existing: Option<Checkpoint>,
    args: &Args,
    server: &str,
    now: Timestamp,
) -> Result<Checkpoint, Failure> {
    let path = args.checkpoint.display();
    let scope = args.scope();
    match (existing, args.resume) {
        (Some(c), false) if !c.complete => Err(Failure::usage(format!(
            "{path} holds an unfinished run ({} Secrets handled{}): add --resume to continue it, or remove the file to start over",
            c.handled(),
            c.resume_after.as_deref().map(|k| format!(", resume after {k}")).unwrap_or_default()
        ))),
        (None, true) => Err(Failure::usage(format!("--resume: no checkpoint at {path}; run without --resume to start"))),
        (Some(c), true) if c.server != server => Err(Failure::usage(format!(
            "--resume: the checkpoint {path} is of a run through {}, this context is {server}",
            c.server
        ))),
        (Some(c), true) if c.scope != scope => Err(Failure::usage(format!(
            "--resume: the checkpoint {path} covers {}, the command line {}; give the same --namespace",
            describe_scope(&c.scope),
            describe_scope(&scope)
        ))),
        (Some(c), true) => Ok(c),
        (_, false) => Ok(Checkpoint {
            version: 1,
            server: server.to_string(),
            scope,
            started_at: now.to_string(),
            updated_at: now.to_string(),
            ..Default::default()
        }),
    }
}

fn describe_scope(scope: &[String]) -> String {
    if scope.is_empty() {
        "every namespace".into()
    } else {
        format!("namespace(s) {}", scope.join(","))
    }
}

/// A count with thousands separators (`12,345`).
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn duration(secs: f64) -> String {
    // A float cast saturates (a negative value or NaN is 0).
    #[allow(clippy::cast_sign_loss)]
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// One progress line: handled of total, percent, rate since this invocation started and ETA.
pub(crate) fn progress_line(handled: u64, total: u64, done_here: u64, elapsed: Duration, bar: bool) -> String {
    let total = total.max(handled);
    let pct = if total == 0 { 100.0 } else { handled as f64 * 100.0 / total as f64 };
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done_here as f64 / secs } else { 0.0 };
    let eta = if rate > 0.0 { duration((total - handled) as f64 / rate) } else { "?".into() };
    let head = if bar {
        // A float cast saturates (a negative value or NaN is 0).
        #[allow(clippy::cast_sign_loss)]
        let filled = (pct / 100.0 * 30.0).round() as usize;
        format!("[{}{}] ", "#".repeat(filled.min(30)), ".".repeat(30 - filled.min(30)))
    } else {
        String::new()
    };
    format!("{head}{}/{} Secrets ({pct:.0}%)  {rate:.0}/s  ETA {eta}", thousands(handled), thousands(total))
}

/// Progress on stdout: a bar redrawn in place on a terminal, a plain line at most every second
/// otherwise.
struct Display {
    tty: bool,
    started: Instant,
    last: Option<Instant>,
    total: u64,
    /// Handled before this invocation (a resumed run's).
    base: u64,
}

impl Display {
    fn show(&mut self, handled: u64, last_one: bool) {
        let now = Instant::now();
        if !last_one && !self.tty && self.last.is_some_and(|l| now.duration_since(l) < Duration::from_secs(1)) {
            return;
        }
        self.last = Some(now);
        let line =
            progress_line(handled, self.total, handled.saturating_sub(self.base), self.started.elapsed(), self.tty);
        let mut out = std::io::stdout().lock();
        if self.tty {
            let _ = write!(out, "\r{line}\x1b[K");
            if last_one {
                let _ = writeln!(out);
            }
        } else {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
}

/// The exit code of a finished run.
pub(crate) fn verdict(counts: &Counts, stale_on_verification: Option<u64>) -> Exit {
    if counts.failed > 0 {
        Exit::Failed
    } else if stale_on_verification.is_some_and(|n| n > 0) {
        Exit::Unverified
    } else {
        Exit::Ok
    }
}

fn engine_failure(e: engine::ReencryptError) -> Failure {
    let engine::ReencryptError::List(e) = e;
    Failure::kube("listing Secrets", e)
}

pub(crate) async fn run(cluster: &Cluster, args: &Args) -> Outcome {
    let existing = load(&args.checkpoint).map_err(Failure::usage)?;
    if args.resume && existing.as_ref().is_some_and(|c| c.complete) {
        println!("the run recorded in {} completed; nothing to resume", args.checkpoint.display());
        return Ok(Exit::Ok);
    }
    let mut checkpoint = starting_point(existing, args, &cluster.server, Timestamp::now())?;
    let settings = args.settings();
    let passes: Vec<Option<String>> = if checkpoint.scope.is_empty() {
        vec![None]
    } else {
        checkpoint.scope.iter().filter(|n| !checkpoint.done.contains(n)).cloned().map(Some).collect()
    };
    // The count first: one request per namespace (or one for all), no Secret read.
    let mut total = checkpoint.done_counts.handled();
    for ns in &passes {
        total += engine::count_in(&cluster.client, ns.as_deref(), args.page_size)
            .await
            .map_err(|e| Failure::kube("counting Secrets", e))?;
    }
    let base = checkpoint.handled();
    println!(
        "re-encrypting the Secrets of {} through {}: {} to go{}, concurrency {}, checkpoint {}",
        describe_scope(&checkpoint.scope),
        cluster.server,
        thousands(total.saturating_sub(base)),
        checkpoint
            .resume_after
            .as_deref()
            .map(|k| format!(" (resuming after {k}, {} handled before)", thousands(base)))
            .unwrap_or_default(),
        match args.concurrency {
            Concurrency::Auto => "auto".to_string(),
            Concurrency::Fixed(n) => n.to_string(),
        },
        args.checkpoint.display()
    );
    save(&args.checkpoint, &checkpoint)
        .map_err(|e| Failure::usage(format!("cannot write the checkpoint {}: {e}", args.checkpoint.display())))?;
    let tty = std::io::stdout().is_terminal();
    let mut display = Display { tty, started: Instant::now(), last: None, total, base };
    let started = Instant::now();
    for ns in passes {
        let start = checkpoint.start();
        let before = checkpoint.done_counts;
        let mut write_error = None;
        let pass = engine::run_in(&cluster.client, ns.as_deref(), settings, start, |p| {
            checkpoint.counts = Counts::of(p);
            checkpoint.resume_after = p.resume_after.clone();
            checkpoint.resume_continue = p.resume_continue.clone();
            checkpoint.updated_at = Timestamp::now().to_string();
            if let Err(e) = save(&args.checkpoint, &checkpoint) {
                write_error.get_or_insert(e);
            }
            display.show(before.add(Counts::of(p)).handled(), false);
        });
        let p = tokio::select! {
            p = pass => p.map_err(engine_failure)?,
            _ = tokio::signal::ctrl_c() => {
                println!();
                eprintln!(
                    "interrupted: the checkpoint {} holds where the run was; continue with the same command and --resume",
                    args.checkpoint.display()
                );
                return Ok(Exit::Interrupted);
            }
        };
        if let Some(e) = write_error {
            eprintln!("warning: the checkpoint could not always be written ({e}); an interrupted run would redo more");
        }
        checkpoint.done_counts = before.add(Counts::of(&p));
        checkpoint.counts = Counts::default();
        checkpoint.resume_after = None;
        checkpoint.resume_continue = None;
        if let Some(ns) = ns {
            checkpoint.done.push(ns);
        }
        checkpoint.complete = checkpoint.scope.iter().all(|n| checkpoint.done.contains(n));
        checkpoint.updated_at = Timestamp::now().to_string();
        save(&args.checkpoint, &checkpoint)
            .map_err(|e| Failure::usage(format!("cannot write the checkpoint {}: {e}", args.checkpoint.display())))?;
    }
    display.show(checkpoint.handled(), true);
    let c = checkpoint.done_counts;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "done: {} Secrets — {} rewritten, {} already current, {} deleted meanwhile, {} failed — this run {} in {} ({:.0}/s)",
        thousands(c.handled()),
        thousands(c.rewritten),
        thousands(c.unchanged),
        thousands(c.gone),
        thousands(c.failed),
        thousands(c.handled().saturating_sub(base)),
        duration(secs),
        c.handled().saturating_sub(base) as f64 / secs.max(0.001)
    );
    if c.rewritten == 0 && c.unchanged > 0 {
        println!(
            "note: no Secret needed rewriting — each was stored under the API server's current first provider already; if you changed the encryption configuration, is it on every API server, and were they restarted?"
        );
    }
    if c.failed > 0 {
        println!(
            "{} Secret(s) could not be rewritten (after 5 attempts each); run again: handled ones are cheap",
            c.failed
        );
    }
    let stale = if args.no_verify {
        None
    } else {
        let mut v = Counts::default();
        for ns in checkpoint.scope.iter().map(|n| Some(n.as_str())).chain(checkpoint.scope.is_empty().then_some(None)) {
            let p = engine::run_in(&cluster.client, ns, settings, Progress::default(), |_| {})
                .await
                .map_err(engine_failure)?;
            v = v.add(Counts::of(&p));
        }
        println!(
            "verified: {} of {} Secrets stored under the current provider{}",
            thousands(v.unchanged),
            thousands(v.handled() - v.gone),
            if v.rewritten > 0 {
                format!(
                    "; {} were not and are now — an API server with an older encryption configuration may be writing",
                    thousands(v.rewritten)
                )
            } else {
                String::new()
            }
        );
        Some(v.rewritten)
    };
    Ok(verdict(&c, stale))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(resume: bool, namespaces: &[&str]) -> Args {
        Args {
            namespace: namespaces.iter().map(|s| s.to_string()).collect(),
            concurrency: Concurrency::Auto,
            resume,
            checkpoint: "cp.json".into(),
            page_size: 500,
            no_verify: false,
        }
    }

    #[test]
    fn concurrency_is_auto_or_a_number_the_engine_takes() {
        assert_eq!(concurrency("auto"), Ok(Concurrency::Auto));
        assert_eq!(concurrency("64"), Ok(Concurrency::Fixed(64)));
        assert!(concurrency("0").unwrap_err().contains("between 1 and 64"));
        assert!(concurrency("65").is_err() && concurrency("x").is_err());
        let fixed = Args { concurrency: Concurrency::Fixed(8), ..args(false, &[]) }.settings();
        assert_eq!((fixed.concurrency, fixed.adaptive, fixed.attempts), (8, false, 5));
        let auto = args(false, &[]).settings();
        assert_eq!((auto.concurrency, auto.adaptive), (64, true));
    }

    #[test]
    fn a_checkpoint_resumes_only_what_it_recorded() {
        let now = Timestamp::now();
        let fresh = starting_point(None, &args(false, &["b", "a", "b"]), "https://k", now).unwrap();
        assert_eq!(
            (fresh.scope.clone(), fresh.complete, fresh.handled()),
            (vec!["a".to_string(), "b".to_string()], false, 0)
        );
        let mut half = fresh.clone();
        half.counts = Counts { rewritten: 140, unchanged: 10, gone: 0, failed: 0 };
        half.resume_after = Some("a/s-00149".into());
        // Not without --resume: that would start over and overwrite the record.
        let e = starting_point(Some(half.clone()), &args(false, &["a", "b"]), "https://k", now).unwrap_err();
        assert_eq!(e.exit, Exit::Usage);
        assert!(
            e.message.contains("150 Secrets handled, resume after a/s-00149") && e.message.contains("--resume"),
            "{}",
            e.message
        );
        let resumed = starting_point(Some(half.clone()), &args(true, &["b", "a"]), "https://k", now).unwrap();
        assert_eq!(resumed, half);
        let p = resumed.start();
        assert_eq!((p.total, p.rewritten, p.resume_after.as_deref()), (150, 140, Some("a/s-00149")));
        let e = starting_point(Some(half.clone()), &args(true, &["a"]), "https://k", now).unwrap_err();
        assert!(e.message.contains("covers namespace(s) a,b, the command line namespace(s) a"), "{}", e.message);
        let e = starting_point(Some(half.clone()), &args(true, &["a", "b"]), "https://other", now).unwrap_err();
        assert!(e.message.contains("through https://k, this context is https://other"), "{}", e.message);
        let e = starting_point(None, &args(true, &[]), "https://k", now).unwrap_err();
        assert!(e.message.contains("no checkpoint at cp.json"));
        // A completed record is simply replaced by a new run.
        let done = Checkpoint { complete: true, ..half };
        assert_eq!(starting_point(Some(done), &args(false, &[]), "https://k", now).unwrap().handled(), 0);
    }

    #[test]
    fn the_checkpoint_survives_a_round_trip_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        assert_eq!(load(&path), Ok(None));
        let c = Checkpoint {
            version: 1,
            server: "https://k".into(),
            resume_after: Some("ns/x".into()),
            resume_continue: Some("opaque".into()),
            counts: Counts { rewritten: 3, ..Default::default() },
            ..Default::default()
        };
        save(&path, &c).unwrap();
        assert_eq!(load(&path), Ok(Some(c)));
        assert!(!dir.path().join("cp.json.tmp").exists(), "renamed into place");
        std::fs::write(&path, "{").unwrap();
        assert!(load(&path).unwrap_err().contains("remove it to start over"));
    }

    #[test]
    fn progress_shows_count_rate_and_eta() {
        let line = progress_line(1_500, 6_000, 1_000, Duration::from_secs(2), false);
        assert_eq!(line, "1,500/6,000 Secrets (25%)  500/s  ETA 9s");
        let bar = progress_line(3_000, 6_000, 3_000, Duration::from_secs(1), true);
        assert!(bar.starts_with("[###############...............] 3,000/6,000 Secrets (50%)  3000/s  ETA 1s"), "{bar}");
        assert!(progress_line(0, 0, 0, Duration::ZERO, false).contains("(100%)  0/s  ETA ?"));
        assert_eq!(duration(125.0), "2m05s");
        assert_eq!(duration(7300.0), "2h01m");
    }

    #[test]
    fn exit_codes_a_script_can_use() {
        let ok = Counts { rewritten: 10, ..Default::default() };
        assert_eq!(verdict(&ok, Some(0)), Exit::Ok);
        assert_eq!(verdict(&ok, None), Exit::Ok);
        assert_eq!(verdict(&ok, Some(2)), Exit::Unverified);
        assert_eq!(verdict(&Counts { failed: 1, ..ok }, Some(0)), Exit::Failed);
        assert_eq!(Exit::Failed as u8, 1);
        assert_eq!(Exit::Usage as u8, 2);
        assert_eq!(Exit::Unreachable as u8, 3);
        assert_eq!(Exit::NotFound as u8, 4);
        assert_eq!(Exit::Unverified as u8, 5);
        assert_eq!(Exit::Interrupted as u8, 130);
    }
}
