//! Work spread over a few threads (loading programs, detaching hooks, removing pins: each
//! waits for the kernel, and they overlap), without the two ways `std::thread::scope` can take
//! the daemon down: `scope.spawn` panics when the system refuses a thread (a task limit such
//! as systemd's `TasksMax=`, no memory), and a worker's panic is raised again in the caller.

use std::sync::{Mutex, PoisonError};

/// Runs `work` on every item from up to `threads` threads, and returns each item's result
/// (in no particular order). A thread the system refuses is not a failure: the calling thread
/// works through the queue too, so every item is done even with no thread at all. A panic in
/// `work` is caught: that item's result is `Err` with the panic's message, for the caller to
/// report with its context; the other items are still done.
pub fn run_all<I, R, F>(
    name: &str,
    threads: usize,
    items: Vec<I>,
    work: F,
) -> Vec<Result<R, String>>
where
    I: Send,
    R: Send,
    F: Fn(I) -> R + Sync,
{
    let queue = Mutex::new(items);
    let take = || queue.lock().unwrap_or_else(PoisonError::into_inner).pop();
    let drain = || {
        let mut results = Vec::new();
        while let Some(item) = take() {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(item)));
            results.push(result.map_err(|panic| panic_message(panic.as_ref())));
        }
        results
    };
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for _ in 1..threads {
            match std::thread::Builder::new()
                .name(name.to_owned())
                .spawn_scoped(scope, drain)
            {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    log::debug!("{name}: no more threads ({e}): the calling thread works too");
                    break;
                }
            }
        }
        let mut results = drain();
        for handle in handles {
            match handle.join() {
                Ok(theirs) => results.extend(theirs),
                // `drain` catches the work's panics; this is one in the queue's bookkeeping.
                Err(panic) => results.push(Err(panic_message(panic.as_ref()))),
            }
        }
        results
    })
}

/// The message of a panic's payload (`panic!` makes a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
    match message {
        Some(message) => format!("panicked: {message}"),
        None => "panicked".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_is_done_and_a_panic_is_an_error() {
        let mut results = run_all("test", 4, (0..50).collect(), |n: u32| {
            if n == 7 {
                panic!("seven");
            }
            n * 2
        });
        let errors: Vec<String> = results
            .iter()
            .filter_map(|r| r.as_ref().err().cloned())
            .collect();
        assert_eq!(errors, vec!["panicked: seven".to_string()]);
        results.retain(Result::is_ok);
        let mut done: Vec<u32> = results.into_iter().map(|r| r.unwrap()).collect();
        done.sort();
        let want: Vec<u32> = (0..50).filter(|n| *n != 7).map(|n| n * 2).collect();
        assert_eq!(done, want);
    }

    #[test]
    fn with_one_thread_the_caller_does_everything() {
        let results = run_all("test", 1, vec![1, 2, 3], |n: u32| n + 1);
        assert_eq!(results.len(), 3);
    }
}
