//! The frontend half of the xenbus handshake, node for node as Linux's
//! xen-netfront does it (`drivers/net/xen-netfront.c`) towards Linux's
//! xen-netback (`drivers/net/xen-netback/xenbus.c`).
//!
//! The toolstack creates the frontend directory (`device/vif/<devid>` in
//! the guest's home) with `backend`, `backend-id`, `handle` and `mac`
//! nodes, and the backend's directory. Then:
//!
//! 1. The frontend is *Initialising*; the backend writes what it offers
//!    (`feature-rx-copy`, `feature-sg`, `feature-gso-tcpv4`, ...,
//!    `multi-queue-max-queues`, `feature-split-event-channels`) and moves
//!    to *InitWait*.
//! 2. The frontend reads `mac` from its own directory, grants its tx and
//!    rx ring pages, allocates its event channels and writes, in one
//!    transaction: `multi-queue-num-queues` (if the backend has
//!    `multi-queue-max-queues`), per queue (`<dir>` or `<dir>/queue-N`)
//!    `tx-ring-ref`, `rx-ring-ref` and `event-channel` (or
//!    `event-channel-tx` and `event-channel-rx`), then `request-rx-copy`,
//!    `feature-rx-notify`, `feature-sg`, `feature-gso-tcpv4`,
//!    `feature-gso-tcpv6` and `feature-ipv6-csum-offload`
//!    (`talk_to_netback`); and moves straight to *Connected*: netfront
//!    never writes *Initialised*.
//! 3. The backend maps the rings, binds the ports and moves to
//!    *Connected* (once its hotplug script reported `hotplug-status`).
//! 4. Closing, by either side: the frontend moves to *Closing* then
//!    *Closed* as the backend follows; only then are the grants ended and
//!    the event channels closed. Writing *Initialising* again brings the
//!    backend back to *InitWait* for a reconnect.
//!
//! [`Bus`] holds the xenstore connection, the two directories and a watch
//! on the backend's `state`.

use std::time::{Duration, Instant};

use hypercall_abi::platform::{Transaction, Xenstore};
use hypercall_abi::xen::xenbus::XenbusState;
use hypercall_abi::xen::DomId;

use crate::error::Error;
use crate::protocol::NodeSource;

/// How often a wait for the backend looks at its state even without a
/// watch event.
const STATE_POLL: Duration = Duration::from_millis(500);
/// Attempts at a xenstore transaction that keeps conflicting.
const TRANSACTION_ATTEMPTS: u32 = 64;

/// The frontend's xenstore connection and the device's two directories.
pub struct Bus<S: Xenstore> {
    store: S,
    fe_path: String,
    be_path: String,
    backend_domid: DomId,
    token: String,
    state: XenbusState,
}

impl<S: Xenstore> std::fmt::Debug for Bus<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("frontend", &self.fe_path)
            .field("backend", &self.be_path)
            .field("backend_domid", &self.backend_domid)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<S: Xenstore> Bus<S> {
    /// Finds the backend of the frontend directory `fe_path` (absolute, or
    /// relative to the domain's home) and watches its state.
    pub fn attach(store: S, fe_path: String) -> Result<Self, Error> {
        let backend = format!("{fe_path}/backend");
        let be_path = match store.read(Transaction::NONE, &backend) {
            Ok(value) => text(&value),
            Err(e) if e.is_not_found() => return Err(Error::NoDevice(fe_path)),
            Err(source) => {
                return Err(Error::Xenstore {
                    op: "read",
                    path: backend,
                    source,
                })
            }
        };
        if !be_path.starts_with('/') {
            return Err(Error::BadNode {
                path: backend,
                value: be_path,
                expected: "an absolute path",
            });
        }
        let backend_id = format!("{fe_path}/backend-id");
        let value = store
            .read(Transaction::NONE, &backend_id)
            .map_err(Error::xs("read", &backend_id))?;
        let backend_domid = text(&value).parse::<DomId>().map_err(|_| Error::BadNode {
            path: backend_id.clone(),
            value: text(&value),
            expected: "a domain id",
        })?;
        let token = format!("rnetfront:{fe_path}");
        let state_path = format!("{be_path}/state");
        store
            .watch(&state_path, &token)
            .map_err(Error::xs("watch", &state_path))?;
        let state = own_state(&store, &fe_path)?;
        log::debug!("{fe_path}: backend {be_path} in domain {backend_domid}, we are {state:?}");
        Ok(Bus {
            store,
            fe_path,
            be_path,
            backend_domid,
            token,
            state,
        })
    }

    /// The frontend directory.
    pub fn frontend_path(&self) -> &str {
        &self.fe_path
    }

    /// The backend directory.
    pub fn backend_path(&self) -> &str {
        &self.be_path
    }

    /// The backend's domain.
    pub fn backend_domid(&self) -> DomId {
        self.backend_domid
    }

    /// Our state as last written (or found when attaching).
    pub fn state(&self) -> XenbusState {
        self.state
    }

    /// The backend's state; `Unknown` if its node is missing or garbled.
    pub fn backend_state(&self) -> Result<XenbusState, Error> {
        let path = format!("{}/state", self.be_path);
        match self.store.read(Transaction::NONE, &path) {
            Ok(value) => Ok(XenbusState::parse(&value).unwrap_or(XenbusState::Unknown)),
            Err(e) if e.is_not_found() => Ok(XenbusState::Unknown),
            Err(source) => Err(Error::Xenstore {
                op: "read",
                path,
                source,
            }),
        }
    }

    /// Writes our `state` node (`xenbus_switch_state`).
    pub fn switch(&mut self, state: XenbusState) -> Result<(), Error> {
        if self.state != state {
            log::info!("{}: {:?} -> {:?}", self.fe_path, self.state, state);
        }
        self.write(Transaction::NONE, "state", state.as_str())?;
        self.state = state;
        Ok(())
    }

    /// Waits until the backend's state satisfies `done`, for at most
    /// `timeout`; returns the state.
    pub fn wait_backend(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(XenbusState) -> bool,
    ) -> Result<XenbusState, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.backend_state()?;
            if done(state) {
                return Ok(state);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout(format!(
                    "the backend {} to {what} (it is {state:?})",
                    self.be_path
                )));
            }
            self.store
                .read_watch(Some(left.min(STATE_POLL)))
                .map_err(Error::xs("read watch", &self.be_path))?;
        }
    }

    /// Whether the backend's state node changed since the last call
    /// (without blocking); if so, its new state.
    pub fn backend_changed(&self) -> Result<Option<XenbusState>, Error> {
        let mut changed = false;
        while self
            .store
            .read_watch(Some(Duration::ZERO))
            .map_err(Error::xs("read watch", &self.be_path))?
            .is_some()
        {
            changed = true;
        }
        if changed {
            self.backend_state().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Runs `body` in a transaction, again while the commit conflicts.
    pub fn transaction(
        &self,
        mut body: impl FnMut(Transaction) -> Result<(), Error>,
    ) -> Result<(), Error> {
        for _ in 0..TRANSACTION_ATTEMPTS {
            let tx = self
                .store
                .transaction_start()
                .map_err(Error::xs("start a transaction on", &self.fe_path))?;
            if let Err(e) = body(tx) {
                if let Err(abort) = self.store.transaction_end(tx, false) {
                    log::warn!("{}: aborting a transaction failed: {abort}", self.fe_path);
                }
                return Err(e);
            }
            match self.store.transaction_end(tx, true) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_again() => continue,
                Err(source) => {
                    return Err(Error::Xenstore {
                        op: "commit a transaction on",
                        path: self.fe_path.clone(),
                        source,
                    })
                }
            }
        }
        Err(Error::TransactionConflict(self.fe_path.clone()))
    }

    /// Writes a node of the frontend directory.
    pub fn write(&self, tx: Transaction, node: &str, value: &str) -> Result<(), Error> {
        let path = format!("{}/{node}", self.fe_path);
        self.store
            .write(tx, &path, value.as_bytes())
            .map_err(|source| Error::Xenstore {
                op: "write",
                path,
                source,
            })
    }

    /// Removes a node of the frontend directory, if it exists.
    pub fn remove(&self, tx: Transaction, node: &str) -> Result<(), Error> {
        let path = format!("{}/{node}", self.fe_path);
        match self.store.rm(tx, &path) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(source) => Err(Error::Xenstore {
                op: "remove",
                path,
                source,
            }),
        }
    }

    /// Reads a node of the frontend directory; `None` if it is missing.
    pub fn own_node(&self, node: &str) -> Result<Option<String>, Error> {
        let path = format!("{}/{node}", self.fe_path);
        match self.store.read(Transaction::NONE, &path) {
            Ok(value) => Ok(Some(text(&value))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(source) => Err(Error::Xenstore {
                op: "read",
                path,
                source,
            }),
        }
    }

    /// The children of the frontend directory.
    pub fn children(&self, tx: Transaction) -> Result<Vec<String>, Error> {
        self.store
            .directory(tx, &self.fe_path)
            .map_err(Error::xs("list", &self.fe_path))
    }

    /// Closes our side as netfront does (`xennet_bus_close`): Closing, then Closed once the
    /// backend followed (or is gone). Each wait is bounded by `timeout`.
    pub fn close(&mut self, timeout: Duration) -> Result<(), Error> {
        use XenbusState::{Closed, Closing, InitWait, Unknown};
        self.switch(Closing)?;
        let followed = self.wait_backend("close", timeout, |s| {
            matches!(s, Closing | Closed | Unknown | InitWait)
        });
        self.switch(Closed)?;
        followed?;
        self.wait_backend("close", timeout, |s| {
            matches!(s, Closed | Unknown | InitWait)
        })?;
        Ok(())
    }
}

impl<S: Xenstore> NodeSource for Bus<S> {
    fn node(&self, node: &'static str) -> Result<Option<String>, Error> {
        let path = format!("{}/{node}", self.be_path);
        match self.store.read(Transaction::NONE, &path) {
            Ok(value) => Ok(Some(text(&value))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(source) => Err(Error::Xenstore {
                op: "read",
                path,
                source,
            }),
        }
    }
}

impl<S: Xenstore> Drop for Bus<S> {
    fn drop(&mut self) {
        let path = format!("{}/state", self.be_path);
        if let Err(e) = self.store.unwatch(&path, &self.token) {
            log::debug!("{}: removing the watch on {path} failed: {e}", self.fe_path);
        }
    }
}

fn own_state<S: Xenstore>(store: &S, fe_path: &str) -> Result<XenbusState, Error> {
    let path = format!("{fe_path}/state");
    match store.read(Transaction::NONE, &path) {
        Ok(value) => Ok(XenbusState::parse(&value).unwrap_or(XenbusState::Unknown)),
        Err(e) if e.is_not_found() => Ok(XenbusState::Unknown),
        Err(source) => Err(Error::Xenstore {
            op: "read",
            path,
            source,
        }),
    }
}

/// A node's value as text, without a trailing NUL or blanks.
fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .trim_end_matches('\0')
        .trim()
        .to_owned()
}
