//! Inference first: every thread of the daemon runs at a lower priority
//! (a higher nice value) than the inference thread and ONNX Runtime's.
//!
//! Why: the pipeline's rate is the model's. On a workstation with few
//! cores, decoding, preprocessing, commits and bookkeeping take turns on
//! the cores with inference, and every turn inference loses slows the
//! whole pipeline. Lowered, they get the cores inference leaves (and they
//! yield to the instrument's own software too).
//!
//! A thread starts at its creator's priority, and an unprivileged process
//! cannot raise a priority again. So `bfx-daemon run` starts a spawner
//! thread first, at the daemon's priority, before it lowers the async
//! runtime's threads ([`lower_this_thread`] at each thread's start); the
//! inference thread, and ONNX Runtime sessions with their thread pools,
//! are then made by [`spawn_unlowered`] and [`run_unlowered`] on threads
//! the spawner starts. Where no spawner was started (the library's own
//! users and tests) they run as plain threads.

use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// How much nicer than the daemon its lowered threads are: the scheduler
/// then gives one about a tenth of a core contended with inference
/// (weights 1024 : 110).
pub const LOWER_BY: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// Starts threads at the priority the daemon started with.
struct Spawner {
    jobs: mpsc::Sender<Job>,
    /// The daemon's nice value, taken when the spawner started.
    nice: Option<i32>,
}

static SPAWNER: OnceLock<Spawner> = OnceLock::new();

/// Start the spawner at the calling thread's priority (once; later calls
/// do nothing). Call it before any thread is lowered.
pub fn start_spawner() -> std::io::Result<()> {
    if SPAWNER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("bfx-spawner".into())
        .spawn(move || {
            for job in rx {
                job();
            }
        })?;
    // A second caller racing this one started a spawner that stays idle.
    let _ = SPAWNER.set(Spawner {
        jobs: tx,
        nice: this_thread_nice().ok(),
    });
    Ok(())
}

/// Spawn thread `name` running `f`, at the daemon's priority.
pub fn spawn_unlowered<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<JoinHandle<T>> {
    let builder = std::thread::Builder::new().name(name.to_string());
    let Some(spawner) = SPAWNER.get() else {
        return builder.spawn(f);
    };
    let (tx, rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        // The caller waits for this answer below.
        let _ = tx.send(builder.spawn(f));
    });
    spawner
        .jobs
        .send(job)
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

/// Run `f` on a thread at the daemon's priority and wait for it: for
/// work that starts threads of its own (ONNX Runtime's session threads).
/// A panic in `f` is resumed in the caller.
pub fn run_unlowered<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let handle = spawn_unlowered("bfx-unlowered", f)?;
    Ok(handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
}

/// Lower the calling thread to [`LOWER_BY`] above the daemon's priority
/// (above its own where no spawner was started). A thread started from a
/// lowered one is lowered already and stays as it is. Where the system
/// refuses, the thread keeps its priority (the first refusal is logged).
pub fn lower_this_thread() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if let Err(e) = renice_this_thread(LOWER_BY) {
        WARNED.call_once(|| {
            tracing::warn!(error = %e, "cannot lower the priority of the daemon's threads other than inference; on few cores throughput is lower");
        });
    }
}

/// The calling thread's nice value.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn this_thread_nice() -> std::io::Result<i32> {
    // SAFETY: gettid and getpriority take no pointers; errno's location is
    // the calling thread's own. getpriority can return -1 as a value, so
    // errno, cleared before, decides.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, tid);
        match *libc::__errno_location() {
            0 => Ok(nice),
            errno => Err(std::io::Error::from_raw_os_error(errno)),
        }
    }
}

/// Set the calling thread's nice value to `by` above the daemon's (on
/// Linux a thread id given as PRIO_PROCESS names that thread alone).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn renice_this_thread(by: i32) -> std::io::Result<()> {
    let own = this_thread_nice()?;
    let daemon = SPAWNER.get().and_then(|s| s.nice).unwrap_or(own);
    let nice = (daemon + by).min(19);
    if own >= nice {
        return Ok(());
    }
    // SAFETY: gettid and setpriority take no pointers.
    let result =
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn this_thread_nice() -> std::io::Result<i32> {
    Err(std::io::Error::other(
        "thread priorities are read on Linux only",
    ))
}

#[cfg(not(target_os = "linux"))]
fn renice_this_thread(_by: i32) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "thread priorities are set on Linux only",
    ))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Threads started from a lowered thread are lowered too, and lowering
    /// them again keeps them there; the threads the spawner starts are
    /// not lowered; lowering one thread leaves the others alone.
    #[test]
    fn the_spawner_starts_threads_at_the_daemons_priority() {
        let own = this_thread_nice().expect("nice value");
        start_spawner().expect("spawner");
        let lowered = (own + LOWER_BY).min(19);
        let seen = std::thread::spawn(move || {
            lower_this_thread();
            let me = this_thread_nice().expect("nice value");
            let child = std::thread::spawn(|| {
                lower_this_thread();
                this_thread_nice().expect("nice value")
            })
            .join()
            .expect("child ran");
            let spawned = spawn_unlowered("test", || this_thread_nice().expect("nice value"))
                .expect("spawned")
                .join()
                .expect("spawned thread ran");
            let run = run_unlowered(|| this_thread_nice().expect("nice value")).expect("ran");
            (me, child, spawned, run)
        })
        .join()
        .expect("thread ran");
        assert_eq!(seen, (lowered, lowered, own, own));
        assert_eq!(this_thread_nice().expect("nice value"), own);
    }

    /// A panic on the unlowered thread reaches the caller.
    #[test]
    fn a_panic_in_run_unlowered_is_resumed() {
        let caught = std::panic::catch_unwind(|| run_unlowered(|| panic!("bad session")));
        assert!(caught.is_err());
    }
}
