//! The load generator gives the servers it measures the CPU first.
//!
//! Why: `orderflow bench` generates its load on the machine that runs the
//! servers it starts. On a small machine (two cores here) the generator's
//! threads preempt the server's, also while one of them holds SQLite's
//! writer, and every order queued behind that one waits too. A deployment's
//! load comes from other machines. Measured with the default bench
//! (docs/benchmarks.md, "The load generator yields the CPU"): v2's order
//! request p99 was 35.0 and 44.1 ms with the generator at the servers'
//! priority, 21.2 and 23.3 ms with it at nice +10; the closed loop then
//! sent less (7,554 and 6,762 req/s against 9,453 and 8,170).
//!
//! So the bench's runtime threads run at a lower priority (`--generator-nice`,
//! 10 by default; 0 shares the cores equally; not in the modes
//! `BenchArgs::effective_generator_nice` names), and everything that belongs
//! to the system under test (servers, workers, the bare listener, Redis) is
//! started from the **launcher**, a thread made before any thread was
//! lowered: a child process inherits the nice value of the thread that forks
//! it. The thread that runs `main` is never lowered either.
//!
//! Linux keeps a nice value per thread, which is what makes this work; on
//! other systems nothing is lowered.

use std::sync::OnceLock;
use std::sync::mpsc;

use crate::BenchError;

/// A closure the launcher runs, at the priority the bench started with.
type Job = Box<dyn FnOnce() + Send>;

/// The launcher's queue, once [`runtime`] made it.
static LAUNCHER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();

/// The runtime for `orderflow bench`: its worker and blocking threads run
/// `nice` steps below the calling thread's priority, and the launcher (see
/// the module docs) is started first, by the calling thread. With `nice` 0
/// it is tokio's default runtime and nothing is launched aside.
pub fn runtime(nice: i32) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if nice > 0 {
        let (sender, jobs) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("bench-launcher".into())
            .spawn(move || {
                for job in jobs {
                    job();
                }
            })?;
        // Only the first runtime gets a launcher (one per process is enough).
        let _ = LAUNCHER.set(sender);
        builder.on_thread_start(move || lower_this_thread(nice));
    }
    builder.build()
}

/// Runs `start` at the priority the bench started with (on the launcher,
/// inside this runtime's context, so a `tokio::process::Command` spawned
/// there is reaped by it), or on the blocking pool when nothing was
/// lowered. For starting what the bench measures.
pub async fn at_server_priority<T, F>(start: F) -> Result<T, BenchError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let Some(launcher) = LAUNCHER.get() else {
        return tokio::task::spawn_blocking(start)
            .await
            .map_err(|e| BenchError::Server(format!("starting a process: {e}")));
    };
    let runtime = tokio::runtime::Handle::current();
    let (answer, answered) = tokio::sync::oneshot::channel();
    launcher
        .send(Box::new(move || {
            let _inside = runtime.enter();
            let _ = answer.send(start());
        }))
        .map_err(|_| BenchError::Server("the launcher thread is gone".into()))?;
    answered
        .await
        .map_err(|_| BenchError::Server("the launcher dropped a start".into()))
}

/// Lowers the calling thread's priority by `nice` steps (a raise would
/// need privileges; a lowering never does). A failure is reported once per
/// thread and the thread runs on unlowered.
fn lower_this_thread(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let thread = rustix::thread::gettid();
        let lowered = getpriority_process(Some(thread))
            .and_then(|now| setpriority_process(Some(thread), (now + nice).min(19)));
        if let Err(error) = lowered {
            eprintln!("orderflow bench: could not lower a generator thread's priority: {error}");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// The nice value of the calling thread (Linux), for the report.
pub fn this_thread_nice() -> Option<i32> {
    #[cfg(target_os = "linux")]
    {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).ok()
    }
    #[cfg(not(target_os = "linux"))]
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The nice value of a `cat` started by `start` (read from its own
    /// `/proc/self/stat`: it inherited it from the thread that forked it).
    fn nice_of_child(spawned: std::io::Result<std::process::Output>) -> i32 {
        let output = spawned.expect("cat runs");
        let stat = String::from_utf8(output.stdout).expect("stat is text");
        // Fields after the command name in parentheses; nice is field 19.
        let after_name = &stat[stat.rfind(')').expect("stat names the command") + 2..];
        after_name
            .split(' ')
            .nth(16)
            .expect("stat has a nice field")
            .parse()
            .expect("nice is a number")
    }

    fn cat_stat() -> std::io::Result<std::process::Output> {
        std::process::Command::new("cat")
            .arg("/proc/self/stat")
            .output()
    }

    #[test]
    fn the_generator_runs_lowered_and_what_it_starts_does_not() {
        let base = this_thread_nice().expect("Linux tells a thread's nice value");
        let lowered = (base + 5).min(19);
        let runtime = runtime(5).expect("a runtime");
        let (generator, started_aside, started_by_generator) = runtime.block_on(async {
            tokio::spawn(async {
                let generator = this_thread_nice().expect("nice value");
                let aside = nice_of_child(at_server_priority(cat_stat).await.expect("launched"));
                let by_generator = nice_of_child(cat_stat());
                (generator, aside, by_generator)
            })
            .await
            .expect("the task ran")
        });
        assert_eq!(generator, lowered, "a runtime worker runs lowered");
        assert_eq!(
            started_aside, base,
            "the launcher starts at the old priority"
        );
        assert_eq!(
            started_by_generator, lowered,
            "a child inherits its forking thread's nice value, which is why the launcher exists"
        );
    }
}
