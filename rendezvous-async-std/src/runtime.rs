//! Where the nodes' tasks run.
//!
//! Inside [`run`], a node's swarm, every connection's task and the store's
//! tasks share [`run`]'s threads: with one thread (the binary's default,
//! `--threads 1`), a request goes from socket to core to socket without a
//! single wakeup across threads, and the async-io reactor is driven by the
//! same thread whenever it has nothing else to do. Outside [`run`] (an
//! embedder's own runtime), tasks go to async-std's pool.
//!
//! Inside [`run`], every task is [`crate::coalesce::flushing`]: what its TCP
//! streams write during one poll leaves in one `send` per stream when the
//! poll ends. An embedder's executor gets the same by wrapping the tasks it
//! gives [`crate::host::build`] in it.
//!
//! On the 2-core machine of BENCHMARKS.md one thread took less server CPU
//! per request than async-std's pool; with more cores and more connections
//! than one core can serve, more threads raise throughput.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};

static EXECUTOR: async_executor::Executor<'static> = async_executor::Executor::new();

/// Whether [`run`] is driving [`EXECUTOR`].
static DRIVEN: AtomicBool = AtomicBool::new(false);

/// Runs `future` to completion on this thread and `threads - 1` more, with
/// every task the nodes spawn meanwhile on the same threads.
pub fn run<T>(threads: NonZeroUsize, future: impl Future<Output = T>) -> T {
    DRIVEN.store(true, Ordering::SeqCst);
    for i in 1..threads.get() {
        let helper = std::thread::Builder::new()
            .name(format!("rendezvous-{i}"))
            .spawn(|| async_io::block_on(EXECUTOR.run(std::future::pending::<()>())));
        if let Err(e) = helper {
            tracing::warn!("running on {i} threads, not {threads}: {e}");
            break;
        }
    }
    let output = async_io::block_on(EXECUTOR.run(future));
    DRIVEN.store(false, Ordering::SeqCst);
    output
}

/// Runs `task` in the background: on [`run`]'s threads inside it, on
/// async-std's pool outside.
pub fn spawn(task: impl Future<Output = ()> + Send + 'static) {
    if DRIVEN.load(Ordering::Relaxed) {
        EXECUTOR.spawn(crate::coalesce::flushing(Box::pin(task))).detach();
    } else {
        async_std::task::spawn(task);
    }
}

/// Ctrl+C and SIGTERM, as a stream: what a node's `run` stops on. Installed
/// once per process.
pub fn interrupts() -> Result<futures::channel::mpsc::UnboundedReceiver<()>, String> {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    ctrlc::set_handler(move || drop(tx.unbounded_send(())))
        .map_err(|e| format!("cannot handle Ctrl+C: {e}"))?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_spawned_inside_run_run_on_its_threads() {
        let one = NonZeroUsize::MIN;
        let seen = run(one, async {
            let (tx, rx) = futures::channel::oneshot::channel();
            spawn(async move {
                let _ = tx.send(std::thread::current().id());
            });
            rx.await
        });
        assert_eq!(seen, Ok(std::thread::current().id()));
    }
}
