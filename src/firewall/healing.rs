//! Self-healing: if an admin (or a script) deletes our table while we run, the pinhole that
//! hit the hole fails — its transfer gets `425` with the reason — and the base table is
//! reinstalled in the background so that the next transfer works again.
//!
//! A periodic check ([`Healing::watch`]) also catches a deleted table when no transfer is
//! asking, since interception (the redirect rule) vanishes with it.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tracing::{error, warn};

use super::table::BaseTable;
use super::{Firewall, FirewallError, Pinhole};

/// Wraps a firewall so that a missing table triggers one reinstall at a time.
pub struct Healing<F> {
    inner: F,
    table: Arc<BaseTable>,
    reinstalling: Arc<AtomicBool>,
    reinstalls: Arc<AtomicU64>,
    retired: Arc<AtomicBool>,
}

impl<F: Firewall> Healing<F> {
    /// Wraps `inner`, which writes into `table`.
    pub fn new(inner: F, table: BaseTable) -> Self {
        Self {
            inner,
            table: Arc::new(table),
            reinstalling: Arc::new(AtomicBool::new(false)),
            reinstalls: Arc::new(AtomicU64::new(0)),
            retired: Arc::new(AtomicBool::new(false)),
        }
    }

    /// How many times the table was reinstalled.
    pub fn reinstalls(&self) -> u64 {
        self.reinstalls.load(Ordering::Relaxed)
    }

    /// The wrapped firewall.
    pub fn inner(&self) -> &F {
        &self.inner
    }

    /// From now on the table is being removed on purpose: never reinstall it again. Returns
    /// once no reinstall is running (up to 10 s), so that none can put the table (and its
    /// redirect to a listener about to close) back after the daemon removed it.
    pub async fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.reinstalling.load(Ordering::Acquire) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Reinstalls the table, unless one finished since the reinstall count was `before`: the
    /// "missing" that asks for it is then stale, and installing again over the live table
    /// would drop every pinhole added since, whose PORT or 227 is already out.
    fn reinstall_unless_since(&self, before: u64) {
        if self.reinstalls() == before {
            self.reinstall();
        }
    }

    /// Reinstalls the table unless a reinstall is already running or we are shutting down.
    pub fn reinstall(&self) {
        if self.retired.load(Ordering::Acquire) || self.reinstalling.swap(true, Ordering::AcqRel) {
            return;
        }
        let retired = self.retired.clone();
        let table = self.table.clone();
        let flag = self.reinstalling.clone();
        let count = self.reinstalls.clone();
        // `nft -f` is a blocking process spawn: keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            if retired.load(Ordering::Acquire) {
                flag.store(false, Ordering::Release);
                return;
            }
            match table.install() {
                Ok(()) => {
                    count.fetch_add(1, Ordering::Relaxed);
                    warn!(table = %table.table, "our nftables table had vanished; reinstalled it");
                }
                Err(e) => error!(error = %e, "could not reinstall our nftables table"),
            }
            flag.store(false, Ordering::Release);
        });
    }

    /// Checks every `period` that the table exists and reinstalls it if not. Runs forever.
    pub async fn watch(self: Arc<Self>, period: Duration) {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let table = self.table.table.clone();
            let before = self.reinstalls();
            let busy = self.reinstalling.load(Ordering::Acquire);
            let exists =
                tokio::task::spawn_blocking(move || super::netlink::table_exists(&table)).await;
            // A "missing" answer is stale when a reinstall ran meanwhile; installing again
            // over the live table would drop every pinhole added since, whose PORT or 227 is
            // already out.
            if matches!(exists, Ok(Ok(false))) && !busy {
                self.reinstall_unless_since(before);
            }
        }
    }
}

impl<F: Firewall> Firewall for Healing<F> {
    async fn open(&self, pinhole: Pinhole, timeout: Duration) -> Result<(), FirewallError> {
        let before = self.reinstalls();
        let result = self.inner.open(pinhole, timeout).await;
        if let Err(FirewallError::TableMissing { .. }) = &result {
            self.reinstall_unless_since(before);
        }
        result
    }

    async fn close(&self, pinhole: Pinhole) -> Result<(), FirewallError> {
        self.inner.close(pinhole).await
    }

    async fn connection_alive(&self, pinhole: Pinhole) -> bool {
        self.inner.connection_alive(pinhole).await
    }

    async fn peers_connected(&self, client: IpAddr, server: IpAddr, control: [u16; 2]) -> bool {
        self.inner.peers_connected(client, server, control).await
    }
}
