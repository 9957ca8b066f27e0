//! Child processes that cannot outlive the process that started them.
//!
//! Every child is spawned from one long-lived thread with `PR_SET_PDEATHSIG = SIGKILL`; the kernel
//! kills the children when that thread (and so the process) ends — also when a test panics, the
//! test binary is killed, or a `static` control plane never runs its destructor.

// Process control through libc (signals, process groups, PR_SET_PDEATHSIG): the one module of
// the workspace that needs unsafe.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Request = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("testbed-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
                    unsafe {
                        cmd.pre_exec(|| {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                return Err(io::Error::last_os_error());
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
                // The sender lives in a static: this loop never ends while the process lives.
            })
            .expect("spawn the testbed spawner thread");
        Mutex::new(tx)
    })
}

/// Spawn `cmd` so that it dies with this process.
pub fn spawn(cmd: Command) -> io::Result<Child> {
    let (tx, rx) = mpsc::channel();
    spawner().lock().expect("spawner lock").send((cmd, tx)).map_err(|_| io::Error::other("spawner thread gone"))?;
    rx.recv().map_err(|_| io::Error::other("spawner thread gone"))?
}

/// Stop a child: SIGTERM, then SIGKILL after `grace`.
pub fn stop(child: &mut Child, grace: std::time::Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: sending a signal to our own child's pid.
    unsafe {
        libc::kill(libc::pid_t::try_from(child.id()).expect("a pid fits pid_t"), libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Remove `dir` when the process exits, also when its owner lives in a `static` and is never
/// dropped (test binaries exit through `exit`, which runs atexit handlers).
/// Set `CSO_TESTBED_KEEP=1` to keep the directories (logs, kubeconfig) for debugging.
pub fn remove_at_exit(dir: &std::path::Path) {
    if std::env::var_os("CSO_TESTBED_KEEP").is_some() {
        eprintln!("testbed: keeping {}", dir.display());
        return;
    }
    static DIRS: OnceLock<Mutex<Vec<std::path::PathBuf>>> = OnceLock::new();
    extern "C" fn cleanup() {
        if let Some(dirs) = DIRS.get() {
            if let Ok(dirs) = dirs.lock() {
                for d in dirs.iter() {
                    let _ = std::fs::remove_dir_all(d);
                }
            }
        }
    }
    let mut first = false;
    let dirs = DIRS.get_or_init(|| {
        first = true;
        Mutex::new(Vec::new())
    });
    dirs.lock().expect("dirs lock").push(dir.to_path_buf());
    if first {
        // SAFETY: registering a plain extern "C" fn with no captured state.
        unsafe {
            libc::atexit(cleanup);
        }
    }
}

/// Peak RSS (MiB) of the largest child process waited for so far (benchmarks).
pub fn children_max_rss_mib() -> f64 {
    // SAFETY: an all-zero rusage is a valid value, and getrusage fills the struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_maxrss as f64 / 1024.0
}
