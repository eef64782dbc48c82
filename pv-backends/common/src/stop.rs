//! A level-triggered stop request that threads can wait on with `poll`.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::sys;

/// Asks threads to stop: once [`stop`](StopSignal::stop)ped it stays
/// stopped, and its [`fd`](StopSignal::fd) stays readable, so it can sit
/// in a `poll` set next to an event channel.
///
/// [`is_stopped`](StopSignal::is_stopped) reads a flag, not the fd: data
/// paths ask it once per round, and a system call each time would cost
/// them (in a PV dom0 every system call goes through Xen).
#[derive(Debug)]
pub struct StopSignal {
    eventfd: File,
    stopped: AtomicBool,
    /// Whether SIGTERM and SIGINT stop this signal (see
    /// [`on_termination`](StopSignal::on_termination)).
    on_termination: bool,
}

impl StopSignal {
    /// A signal not yet stopped.
    pub fn new() -> io::Result<Self> {
        Ok(StopSignal {
            eventfd: File::from(sys::eventfd()?),
            stopped: AtomicBool::new(false),
            on_termination: false,
        })
    }

    /// A signal, living as long as the process, that SIGTERM and SIGINT
    /// stop.
    pub fn on_termination() -> io::Result<&'static StopSignal> {
        let signal: &'static StopSignal = Box::leak(Box::new(StopSignal { on_termination: true, ..StopSignal::new()? }));
        sys::signal_on_termination(signal.fd())?;
        Ok(signal)
    }

    /// Requests a stop. Idempotent.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        if let Err(e) = sys::eventfd_signal(&self.eventfd) {
            // Writing 8 bytes to our own eventfd cannot fail but for a
            // saturated counter, which `eventfd_signal` treats as success.
            log::error!("cannot signal the stop eventfd: {e}");
        }
    }

    /// Whether a stop was requested (no system call).
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire) || (self.on_termination && sys::terminated())
    }

    /// Waits up to `timeout` for a stop; returns whether one was requested.
    pub fn wait(&self, timeout: Duration) -> bool {
        matches!(sys::poll_readable([self.fd()], Some(timeout)), Ok([true]))
    }

    /// The fd, readable once stopped.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.eventfd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_stopped_once_stopped() {
        let stop = StopSignal::new().unwrap();
        assert!(!stop.is_stopped());
        assert!(!stop.wait(Duration::from_millis(10)));

        stop.stop();
        stop.stop();

        assert!(stop.is_stopped());
        assert!(stop.is_stopped(), "checking does not consume the stop");
        assert!(stop.wait(Duration::ZERO), "and the fd stays readable for poll sets");
    }

    #[test]
    fn threads_see_a_stop_without_polling() {
        let stop = std::sync::Arc::new(StopSignal::new().unwrap());
        let waiter = {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.is_stopped() {
                    std::hint::spin_loop();
                }
            })
        };
        std::thread::sleep(Duration::from_millis(20));

        stop.stop();

        waiter.join().unwrap();
        assert!(!StopSignal::new().unwrap().is_stopped(), "signals are independent");
    }
}
