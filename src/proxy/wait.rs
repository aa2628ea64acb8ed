//! How long a poll-driven wait has lasted: a body waiting on its sender,
//! a read waiting for a batch of bytes.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Tells whether the current wait has lasted `limit`, and wakes the task
/// when it does. One timer serves every wait, made on first use and
/// re-armed only when it fires for an earlier wait, so a stream of short
/// waits costs a clock read each rather than a timer each.
pub struct WaitClock {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// When the current wait began; `None` between waits.
    began: Option<Instant>,
}

impl WaitClock {
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            timer: None,
            began: None,
        }
    }

    /// A poll found nothing to do: starts the clock if this wait just
    /// began, and says whether it has run for `limit`.
    pub fn run_out(&mut self, cx: &mut Context<'_>) -> bool {
        let now = Instant::now();
        let deadline = *self.began.get_or_insert(now) + self.limit;
        if now >= deadline {
            return true;
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.as_mut().poll(cx).is_ready() {
            timer.as_mut().reset(deadline);
            let _ = timer.as_mut().poll(cx);
        }
        false
    }

    /// A poll made progress: the wait is over.
    pub fn stop(&mut self) {
        self.began = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop_context() -> Context<'static> {
        Context::from_waker(std::task::Waker::noop())
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_runs_out_after_its_limit_and_not_before() {
        let mut clock = WaitClock::new(Duration::from_secs(10));
        let mut cx = noop_context();
        assert!(!clock.run_out(&mut cx));
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!clock.run_out(&mut cx));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(clock.run_out(&mut cx));
    }

    #[tokio::test(start_paused = true)]
    async fn progress_starts_the_next_wait_afresh() {
        let mut clock = WaitClock::new(Duration::from_secs(10));
        let mut cx = noop_context();
        assert!(!clock.run_out(&mut cx));
        tokio::time::sleep(Duration::from_secs(9)).await;
        clock.stop();
        assert!(!clock.run_out(&mut cx));
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!clock.run_out(&mut cx), "9 s into the second wait");
    }
}
