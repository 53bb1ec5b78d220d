//! The kernel backend: pinholes as nf_tables set elements, over raw nfnetlink.
//!
//! Why it is shaped this way (measurements in `DESIGN.md`, "Netfilter shape"):
//!
//! - **Long-lived sockets, opened by one thread.** Spawning `nft` costs ~2 ms per add and
//!   ~14 ms per delete; closing *any* nf_tables netlink socket waits for an RCU grace period,
//!   so even a socket per operation is as slow as `nft`. `NETLINK_NETFILTER` sockets opened
//!   once cost a few microseconds per element. The firewall thread opens them all at start:
//!   a thread can be put into another network namespace (`setns`) before it opens a socket,
//!   which binds the socket to that namespace for good (see [`NftFirewall::start_in_netns`]).
//!   It keeps one for itself and lends one to each runtime thread: a caller runs its own
//!   transaction on the socket it finds free, without a thread hand-off, and a thread that
//!   is preempted mid-transaction holds up only its own sessions. Who holds each element is
//!   counted across all sockets, and ordered where two sockets touch one element
//!   ([`owners`]).
//! - **Batching.** Callers that find every socket busy send their requests over a channel; the
//!   thread drains everything queued (up to [`MAX_BATCH`] requests) into one nf_tables
//!   transaction: `BATCH_BEGIN`, one message per element with its own sequence number,
//!   `BATCH_END`. The kernel processes the batch synchronously inside `sendmsg`, so every
//!   answer is queued on the socket when `sendmsg` returns, in message order; errors are
//!   matched back to requests by sequence number. Only the last message asks for a success
//!   ACK (`NLM_F_ACK`): errors are always answered, so once the last message's answer is in,
//!   every message that said nothing succeeded (an ACK per message cost an skb and a
//!   `recvmsg` each). A transaction is all or nothing: when any message fails the kernel
//!   aborts the batch *but still acknowledges the last message if it was fine*, so a zero
//!   ACK means "committed" only if the whole batch had no error. On
//!   any error the requests of the batch are replayed one per batch, which attributes each
//!   error precisely. Every operation is idempotent (add without `NLM_F_EXCL`, destroy), so
//!   replaying is always safe. A request whose answers were dropped on the way (`ENOBUFS`) is
//!   asked once more while its caller waits; an add still without an answer is removed
//!   again, since it may be in the kernel. One with no answer within [`ACK_WAIT`] is not
//!   asked again: the kernel answers inside `sendmsg`, so that is no lost message.
//! - **Destroy, not delete.** `close` sends `NFT_MSG_DESTROYSETELEM` (kernel >= 6.3), which
//!   succeeds when the element is already gone: consumed by its connection (the rule deletes
//!   it) or expired. `NFT_MSG_DELSETELEM` would fail with `ENOENT` and, worse, abort every
//!   other message of its batch. On a kernel without destroy (`EINVAL`/`EOPNOTSUPP`), close
//!   falls back to one delete per element, ignoring `ENOENT`.
//!
//! Wire format: netlink header, `nfgenmsg { family: NFPROTO_INET, version: 0, res_id: 0 }`,
//! then `NFTA_SET_ELEM_LIST_TABLE`, `NFTA_SET_ELEM_LIST_SET` (NUL-terminated strings) and
//! `NFTA_SET_ELEM_LIST_ELEMENTS { NFTA_LIST_ELEM { KEY { DATA_VALUE }, DATA { DATA_VALUE },
//! TIMEOUT (be64 ms) } }`. Concatenated keys pad every component to 4 bytes, in network
//! byte order (`inet_service` is 2 bytes big-endian plus 2 zero bytes).

use std::fmt;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, TryLockError, mpsc};
use std::time::{Duration, Instant};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::{Direction, Firewall, FirewallError, Pinhole};

mod flows;
mod owners;
use flows::{Claim, SWEEP_PER_CALL, StaleFlows};
#[cfg(test)]
pub(crate) use owners::{COLD_GC_INTERVAL, hot_twin};
use owners::{Hold, Owners, Removal};

/// Most requests (pinholes) sent in one nf_tables transaction. An active-mode pinhole is
/// three messages, so a full batch is at most 768 messages and as many ACKs.
const MAX_BATCH: usize = 256;

// uapi: linux/netlink.h
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_DONE: u16 = 3;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
// uapi: linux/netfilter/nfnetlink.h
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNETLINK_V0: u8 = 0;
// uapi: linux/netfilter.h
const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_INET: u8 = 1;
// uapi: linux/netfilter/nf_tables.h, enum nf_tables_msg_types
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_GETGEN: u16 = 16;
/// Added in 6.3 after `GETRULE_RESET` (25) and `DESTROYTABLE..DESTROYSET` (26..29).
const NFT_MSG_DESTROYSETELEM: u16 = 30;
// enum nft_set_elem_list_attributes
// enum nft_table_attributes
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
// enum nft_list_attributes
const NFTA_LIST_ELEM: u16 = 1;
// enum nft_set_elem_attributes
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
// enum nft_data_attributes
const NFTA_DATA_VALUE: u16 = 1;
// uapi: linux/netfilter/nfnetlink_conntrack.h
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_PROTOINFO: u16 = 4;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
/// `enum tcp_conntrack`: the states in which a connection is over.
const TCP_CONNTRACK_TIME_WAIT: u8 = 7;
const TCP_CONNTRACK_CLOSE: u8 = 8;
/// Attribute type bits that are flags, not type.
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | 0x4000);
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// The source port of an active data connection from a server that follows RFC 959's
/// default (L-1 of port 21), e.g. Debian's vsftpd and proftpd.
const FTP_DATA_PORT: u16 = 20;

/// Socket buffer sizes. ACKs are one datagram each (~1 KiB of receive-buffer accounting), and
/// they are all queued before we read the first: a full batch needs ~1 MiB, a buffer that
/// overflows loses ACKs (`ENOBUFS`).
const RECV_BUFFER: libc::c_int = 8 << 20;
const SEND_BUFFER: libc::c_int = 2 << 20;
/// How long to wait for ACKs that were not queued when `sendmsg` returned (they always are on
/// current kernels; this only bounds a wait that should never happen).
const ACK_WAIT: Duration = Duration::from_secs(5);
/// How long the dump of conntrack's flows at start may take (a table of a million entries
/// takes a few seconds).
const DUMP_LIMIT: Duration = Duration::from_secs(60);
/// How long the thread polls its queue after a batch before it blocks. Waking a blocked
/// thread and then the waiting task costs ~10 us, several times the kernel's ~1.5 us per
/// transaction: polling halves the latency of back-to-back calls, for at most 50 us of CPU
/// after each burst.
const SPIN: Duration = Duration::from_micros(50);
/// How long a caller waits for the backend that another thread holds before it queues its
/// request for the firewall thread (see `NftFirewall::lock_briefly`).
const LOCK_SPIN: Duration = Duration::from_micros(30);
/// Spinning only helps when the holder runs on another CPU at the same time.
static SPIN_ALLOWED: LazyLock<bool> =
    LazyLock::new(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1));
/// How often an add refused with EBUSY is retried, and the back-off step between tries.
const BUSY_RETRIES: u32 = 5;
const BUSY_BACKOFF: Duration = Duration::from_millis(1);

/// The kernel backend of [`Firewall`]: a cheap, cloneable handle to the firewall thread.
///
/// The thread owns the netlink socket and stops (closing it) when the last handle is dropped.
#[derive(Clone)]
pub struct NftFirewall {
    inner: Arc<Inner>,
}

struct Inner {
    requests: mpsc::Sender<Request>,
    /// The sockets: the firewall thread's first, then one per runtime thread (see
    /// [`sockets`]). A caller runs its own transaction on whichever it finds free (see
    /// [`NftFirewall::submit`]).
    pool: Arc<Vec<Mutex<Backend>>>,
    /// Who holds each element, across all the sockets.
    owners: Arc<Owners>,
    table: String,
    counters: Arc<Counters>,
}

/// How many sockets callers use besides the firewall thread's: one per CPU, as the daemon
/// runs one runtime thread per CPU by default. More threads than sockets only means that two
/// of them sometimes share one (a caller tries every socket before it waits).
fn sockets() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_SOCKETS))
}

/// The data connection tuple `server:20 -> gateway:port` of an active pinhole that leased a
/// gateway port (none for passive pinholes and for active ones without a port of their own).
fn active_flow(pinhole: &Pinhole) -> Option<flows::Flow> {
    let (Direction::Active, Some(via)) = (pinhole.direction, pinhole.via) else {
        return None;
    };
    // Canonical, as conntrack (and its dump at start) names them: a v4-mapped address of
    // a dual-stack socket is the IPv4 flow.
    Some((
        std::net::SocketAddr::new(pinhole.from.to_canonical(), FTP_DATA_PORT),
        std::net::SocketAddr::new(via.ip().to_canonical(), via.port()),
    ))
}

/// The most caller sockets (a bound on the sockets a large machine keeps open).
const MAX_SOCKETS: usize = 16;

thread_local! {
    /// This thread's own socket in every pool: the next free slot, taken at its first
    /// pinhole (so runtime threads, which start together, get different sockets).
    static SLOT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

fn slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    SLOT.with(|slot| {
        slot.get().unwrap_or_else(|| {
            let taken = NEXT.fetch_add(1, Ordering::Relaxed);
            slot.set(Some(taken));
            taken
        })
    })
}

/// What the firewall thread has done so far (for benchmarks, the lab and debugging).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FirewallStats {
    /// Requests (opens and closes) answered.
    pub requests: u64,
    /// nf_tables transactions sent, replays included. Fewer than `requests` means batching.
    pub transactions: u64,
    /// Batches that failed and were replayed one request per transaction.
    pub replays: u64,
    /// Time spent sending transactions and reading their acknowledgements.
    pub kernel_time: Duration,
    /// Stale data connections of released gateway ports removed from conntrack when the
    /// port was leased again (on the install's path).
    pub flows_forgotten: u64,
    /// Released gateway ports whose data connection's tuple was swept from conntrack in the
    /// background, a second after their pinhole closed.
    pub flows_swept: u64,
    /// Active installs that skipped the conntrack delete because a sweep had already
    /// cleared their tuple since its last close.
    pub flow_deletes_skipped: u64,
    /// Active installs refused because the leased gateway port's previous data connection
    /// was still alive (the session leased another port).
    pub ports_in_use: u64,
    /// Sweeps that found their data connection still alive after its pinhole closed (a
    /// server's 226 ahead of the data's tail, or a session that ended mid-transfer) and left
    /// it alone, to look again later.
    pub flow_sweeps_deferred: u64,
    /// Adds the kernel refused with EBUSY and that were retried (each cost an aborted
    /// transaction: many mean hash chains too long for the sets' collection interval).
    pub busy_retries: u64,
    /// Pinholes placed in the `_hot` twin sets (a key reused within seconds).
    pub hot_placements: u64,
    /// Times the base table was reinstalled after it vanished: counted by the self-healing
    /// wrapper (`healing`), 0 from this backend alone.
    pub table_reinstalls: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    transactions: AtomicU64,
    replays: AtomicU64,
    kernel_nanos: AtomicU64,
    flows_forgotten: AtomicU64,
    flows_swept: AtomicU64,
    flow_deletes_skipped: AtomicU64,
    flow_sweeps_deferred: AtomicU64,
    ports_in_use: AtomicU64,
    busy_retries: AtomicU64,
    hot_placements: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl fmt::Debug for NftFirewall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NftFirewall")
            .field("table", &self.inner.table)
            .finish_non_exhaustive()
    }
}

/// Whether the `inet` table `table` exists in the current network namespace, asked over a
/// netlink socket of its own (for the watchdog; blocking: it waits for the kernel's answer,
/// and closing the socket waits for an RCU grace period).
pub(crate) fn table_exists(table: &str) -> Result<bool, FirewallError> {
    let mut backend = Backend::open(
        table.to_owned(),
        Arc::new(Counters::default()),
        Arc::default(),
    )?;
    backend.table_exists()
}

impl NftFirewall {
    /// Starts the firewall thread in the caller's network namespace, for the pinhole sets of
    /// table `inet <table>`.
    ///
    /// Fails early, before any pinhole is asked for, when the socket cannot be opened or the
    /// process lacks `CAP_NET_ADMIN` ([`FirewallError::PermissionDenied`]). The table itself
    /// need not exist yet: it is looked up by every operation.
    pub fn start(table: &str) -> Result<Self, FirewallError> {
        Self::spawn(table, sockets(), || Ok(()))
    }

    /// Like [`NftFirewall::start`], but the thread first enters the network namespace at
    /// `netns` (e.g. `/var/run/netns/NAME`, as made by `ip netns add NAME`), so the socket
    /// and every pinhole live there. `None` stays in the caller's namespace.
    pub fn start_in_netns(table: &str, netns: Option<&Path>) -> Result<Self, FirewallError> {
        let Some(path) = netns else {
            return Self::start(table);
        };
        let path = path.to_path_buf();
        Self::spawn(table, sockets(), move || enter_netns(&path))
    }

    /// Like [`NftFirewall::start`], but runs `setup` on the firewall thread before the socket
    /// is opened (enter a namespace, drop capabilities, ...). Its error fails the start.
    pub fn start_with<S>(table: &str, setup: S) -> Result<Self, FirewallError>
    where
        S: FnOnce() -> std::io::Result<()> + Send + 'static,
    {
        Self::spawn(table, sockets(), move || {
            setup().map_err(|e| FirewallError::io("set up the firewall thread", &e))
        })
    }

    /// The table this backend adds elements to.
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// Counters of the firewall thread.
    pub fn stats(&self) -> FirewallStats {
        let c = &self.inner.counters;
        FirewallStats {
            requests: c.requests.load(Ordering::Relaxed),
            transactions: c.transactions.load(Ordering::Relaxed),
            replays: c.replays.load(Ordering::Relaxed),
            kernel_time: Duration::from_nanos(c.kernel_nanos.load(Ordering::Relaxed)),
            flows_forgotten: c.flows_forgotten.load(Ordering::Relaxed),
            flows_swept: c.flows_swept.load(Ordering::Relaxed),
            flow_deletes_skipped: c.flow_deletes_skipped.load(Ordering::Relaxed),
            flow_sweeps_deferred: c.flow_sweeps_deferred.load(Ordering::Relaxed),
            ports_in_use: c.ports_in_use.load(Ordering::Relaxed),
            busy_retries: c.busy_retries.load(Ordering::Relaxed),
            hot_placements: c.hot_placements.load(Ordering::Relaxed),
            table_reinstalls: 0,
        }
    }

    /// Like [`NftFirewall::start_in_netns`], with `sockets` sockets for callers (0: they all
    /// share the firewall thread's), so that tests can make callers contend.
    #[cfg(test)]
    fn start_sharing(table: &str, netns: &Path, sockets: usize) -> Result<Self, FirewallError> {
        let path = netns.to_path_buf();
        Self::spawn(table, sockets, move || enter_netns(&path))
    }

    fn spawn<S>(table: &str, sockets: usize, setup: S) -> Result<Self, FirewallError>
    where
        S: FnOnce() -> Result<(), FirewallError> + Send + 'static,
    {
        if table.is_empty() || table.len() > 255 || table.contains('\0') {
            return Err(FirewallError::InvalidTableName(table.to_owned()));
        }
        type Pool = Arc<Vec<Mutex<Backend>>>;
        let (requests, queue) = mpsc::channel::<Request>();
        let (ready_tx, ready) = mpsc::sync_channel::<Result<Pool, FirewallError>>(1);
        let name = table.to_owned();
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        let flows = Arc::new(StaleFlows::default());
        // Every socket is opened on the thread, after `setup`: a socket belongs for good to
        // the network namespace it was opened in.
        let open_pool = move || -> Result<Pool, FirewallError> {
            setup()?;
            let pool = (0..=sockets)
                .map(|_| {
                    Backend::open(name.clone(), thread_counters.clone(), flows.clone())
                        .map(Mutex::new)
                })
                .collect::<Result<Vec<_>, _>>()?;
            learn_flows_at_start(&name, &thread_counters, &flows);
            Ok(Arc::new(pool))
        };
        let thread = std::thread::Builder::new()
            .name("ftp-alg-nft".into())
            .spawn(move || match open_pool() {
                Ok(pool) => {
                    let _ = ready_tx.send(Ok(pool.clone()));
                    run(&pool[0], &queue);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| FirewallError::io("spawn the firewall thread", &e))?;
        match ready.recv() {
            Ok(Ok(pool)) => Ok(Self {
                inner: Arc::new(Inner {
                    requests,
                    pool,
                    owners: Arc::default(),
                    table: table.to_owned(),
                    counters,
                }),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(FirewallError::Stopped),
        }
    }

    /// A free socket: this thread's own, else any other that is free, else this thread's
    /// own if it frees up within [`LOCK_SPIN`]. Each runtime thread normally finds its own
    /// socket free, so a thread that is preempted in the middle of a transaction delays only
    /// its own sessions. (With one shared socket the sessions of every other thread queued
    /// behind it: in-daemon install p99 1-3 ms with 32 busy sessions on 2 CPUs.)
    fn lock_any(&self) -> Result<MutexGuard<'_, Backend>, TryLockError<MutexGuard<'_, Backend>>> {
        let pool = &self.inner.pool;
        let home = 1 + slot() % (pool.len() - 1).max(1);
        for i in 0..pool.len() {
            match pool[(home + i) % pool.len()].try_lock() {
                Err(TryLockError::WouldBlock) => {}
                other => return other,
            }
        }
        self.lock_briefly(&pool[home % pool.len()])
    }

    /// `backend`, if it is free within [`LOCK_SPIN`]. Its holder (another runtime thread or
    /// the firewall thread) is in the middle of one transaction of a few µs; waiting for it
    /// here is cheaper than handing the request to the firewall thread, whose wake-up on a
    /// busy 2-CPU box took milliseconds. A holder that was preempted is not waited for: after
    /// the spin the request is queued (and batched with the others).
    fn lock_briefly<'a>(
        &self,
        backend: &'a Mutex<Backend>,
    ) -> Result<MutexGuard<'a, Backend>, TryLockError<MutexGuard<'a, Backend>>> {
        let started = Instant::now();
        let mut spins = 0u32;
        loop {
            match backend.try_lock() {
                Err(TryLockError::WouldBlock) if *SPIN_ALLOWED => {}
                other => return other,
            }
            spins += 1;
            if spins.is_multiple_of(16) && started.elapsed() >= LOCK_SPIN {
                return Err(TryLockError::WouldBlock);
            }
            std::hint::spin_loop();
        }
    }

    /// Counts the holders of the elements (see [`owners`]), then runs what the kernel must
    /// do: an add, or the removal of the elements nobody holds any more.
    async fn submit(
        &self,
        kind: Kind,
        pinhole: Pinhole,
        mut elements: Vec<Element>,
    ) -> Result<(), FirewallError> {
        match kind {
            Kind::Add { .. } => {
                let mut hold = Hold::take(&self.inner.owners, &mut elements).await;
                let hot = elements.iter().any(|e| owners::is_hot(e.set));
                // Dropped from here until answered (the caller gave up), the add may still
                // reach the kernel: the hold then leaves an orphan for the next close.
                hold.in_doubt = true;
                let result = self.run_request(kind, pinhole, elements, None).await;
                hold.in_doubt = false;
                match &result {
                    Ok(()) => {
                        hold.keep();
                        if hot {
                            Counters::add(&self.inner.counters.hot_placements, 1);
                        }
                    }
                    // Added, then refused: the elements are in the kernel and held until
                    // removed like any pinhole's. Likewise an add whose answer was lost
                    // twice (a protocol error): it may be in the kernel, so it goes.
                    Err(FirewallError::PortInUse { .. } | FirewallError::Protocol(_)) => {
                        hold.keep();
                        let undo = self::elements(&pinhole, false)?;
                        if let Err(e) = self.remove(pinhole, undo).await {
                            warn!(%pinhole, error = %e, "could not remove a refused pinhole");
                        }
                    }
                    Err(_) => {
                        // Undone now: an element a closed co-holder left for this add to keep
                        // is nobody's any more, and goes with this removal.
                        drop(hold);
                        if self.inner.owners.has_orphans()
                            && let Err(e) = self.remove(pinhole, Vec::new()).await
                        {
                            warn!(%pinhole, error = %e, "could not remove an orphaned element");
                        }
                    }
                }
                result
            }
            Kind::Remove => self.remove(pinhole, elements).await,
        }
    }

    /// Removes the elements of `pinhole` that no other pinhole holds.
    async fn remove(&self, pinhole: Pinhole, elements: Vec<Element>) -> Result<(), FirewallError> {
        let removal = self.inner.owners.release(elements);
        if removal.elements().is_empty() {
            debug!(%pinhole, "pinhole still held by another session; kept");
            Counters::add(&self.inner.counters.requests, 1);
            return Ok(());
        }
        let elements = removal.elements().to_vec();
        self.run_request(Kind::Remove, pinhole, elements, Some(removal))
            .await
    }

    /// Runs one request: on the caller's own thread when a socket is free (one `sendmsg` and
    /// the ACK read, a few microseconds, no thread hand-off), else through the firewall
    /// thread, which batches everything that queued up meanwhile.
    async fn run_request(
        &self,
        kind: Kind,
        pinhole: Pinhole,
        elements: Vec<Element>,
        removal: Option<Removal>,
    ) -> Result<(), FirewallError> {
        let (reply, mut answer) = oneshot::channel();
        let request = Request {
            kind,
            pinhole,
            elements,
            reply,
            _removal: removal,
        };
        let request = match self.lock_any() {
            Ok(mut backend) => {
                let mut batch = vec![request];
                let retry = backend.process(&mut batch, Mode::Inline);
                drop(backend);
                match retry {
                    // EBUSY: retried by the thread, whose back-off must not block a runtime
                    // worker.
                    Some(request) => request,
                    None => {
                        return answer.try_recv().map_err(|_| FirewallError::Stopped)?;
                    }
                }
            }
            Err(TryLockError::WouldBlock) => request,
            Err(TryLockError::Poisoned(_)) => return Err(FirewallError::Stopped),
        };
        let (reply, queued) = oneshot::channel();
        self.inner
            .requests
            .send(Request { reply, ..request })
            .map_err(|_| FirewallError::Stopped)?;
        drop(answer);
        queued.await.map_err(|_| FirewallError::Stopped)?
    }
}

impl Firewall for NftFirewall {
    async fn open(&self, pinhole: Pinhole, timeout: Duration) -> Result<(), FirewallError> {
        let elements = elements(&pinhole, true)?;
        let timeout_ms = timeout_millis(timeout);
        self.submit(Kind::Add { timeout_ms }, pinhole, elements)
            .await
    }

    async fn close(&self, pinhole: Pinhole) -> Result<(), FirewallError> {
        let elements = elements(&pinhole, false)?;
        self.submit(Kind::Remove, pinhole, elements).await
    }
}

fn enter_netns(path: &Path) -> Result<(), FirewallError> {
    let fail = |e: &std::io::Error| FirewallError::Namespace {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(|e| fail(&e))?;
    // SAFETY: plain syscall on a descriptor we own; it changes this thread's namespace only.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(fail(&std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Rounds up to whole milliseconds, at least one: zero would mean "no timeout" to the kernel.
fn timeout_millis(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_nanos().div_ceil(1_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// What a request does to its elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Add { timeout_ms: u64 },
    Remove,
}

/// One set element: its set, its key, and (maps only, adds only) its data.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Element {
    set: &'static str,
    key: Vec<u8>,
    data: Option<Vec<u8>>,
}

struct Request {
    kind: Kind,
    pinhole: Pinhole,
    elements: Vec<Element>,
    reply: oneshot::Sender<Result<(), FirewallError>>,
    /// A remove's elements are marked as being removed until this is dropped with the request
    /// (answered or not).
    _removal: Option<Removal>,
}

/// The elements of a pinhole, in the order they are added. `with_data`: include map data
/// (needed to add, not to remove).
fn elements(pinhole: &Pinhole, with_data: bool) -> Result<Vec<Element>, FirewallError> {
    if !pinhole.is_single_family() {
        return Err(FirewallError::MixedFamilies(*pinhole));
    }
    let key = |parts: &[Part]| {
        let mut bytes = Vec::with_capacity(36);
        for part in parts {
            match *part {
                Part::Addr(ip) => match ip.to_canonical() {
                    IpAddr::V4(v4) => bytes.extend_from_slice(&v4.octets()),
                    IpAddr::V6(v6) => bytes.extend_from_slice(&v6.octets()),
                },
                Part::Port(port) => {
                    bytes.extend_from_slice(&port.to_be_bytes());
                    bytes.extend_from_slice(&[0, 0]);
                }
            }
        }
        bytes
    };
    let v6 = pinhole.is_ipv6();
    let set = |v4: &'static str, v6name: &'static str| if v6 { v6name } else { v4 };
    let to = key(&[
        Part::Addr(pinhole.from),
        Part::Addr(pinhole.to.ip()),
        Part::Port(pinhole.to.port()),
    ]);
    let mut out = Vec::with_capacity(4);
    if let Some(via) = pinhole.via {
        let outside = key(&[
            Part::Addr(pinhole.from),
            Part::Addr(via.ip()),
            Part::Port(via.port()),
        ]);
        out.push(Element {
            set: set("dnat_to", "dnat_to6"),
            key: outside.clone(),
            data: with_data
                .then(|| key(&[Part::Addr(pinhole.to.ip()), Part::Port(pinhole.to.port())])),
        });
        out.push(Element {
            set: set("dnat_once", "dnat_once6"),
            key: outside,
            data: None,
        });
    }
    if let Some(snat) = pinhole.snat {
        out.push(Element {
            set: set("snat_to", "snat_to6"),
            key: to.clone(),
            data: with_data.then(|| key(&[Part::Addr(snat)])),
        });
    }
    out.push(Element {
        set: match pinhole.direction {
            Direction::Active => set("active_pin", "active_pin6"),
            Direction::Passive => set("passive_pin", "passive_pin6"),
        },
        key: to,
        data: None,
    });
    Ok(out)
}

enum Part {
    Addr(IpAddr),
    Port(u16),
}

/// Whether a TCP connection in conntrack state `state` is over (nothing more to deliver).
fn finished(state: u8) -> bool {
    matches!(state, TCP_CONNTRACK_TIME_WAIT | TCP_CONNTRACK_CLOSE)
}

/// What conntrack holds on a data connection's tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowState {
    /// Nothing.
    Gone,
    /// An entry in this TCP state (`enum tcp_conntrack`).
    Tcp(u8),
    /// An entry without a TCP state (not expected for a TCP tuple).
    Unknown,
}

// ---------------------------------------------------------------------------------------
// Encoding

fn msg_start(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, patched by msg_end
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
    buf.push(family); // struct nfgenmsg
    buf.push(NFNETLINK_V0);
    buf.extend_from_slice(&res_id.to_be_bytes());
    start
}

fn msg_end(buf: &mut [u8], start: usize) {
    let len = u32::try_from(buf.len() - start).unwrap_or(u32::MAX);
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn pad(buf: &mut Vec<u8>) {
    buf.resize(buf.len().next_multiple_of(4), 0);
}

fn attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    // Payloads are at most a table name (255 bytes) or a 36-byte key: the length fits.
    let len = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    pad(buf);
}

fn attr_str(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let len = u16::try_from(4 + s.len() + 1).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
    pad(buf);
}

fn nest_start(buf: &mut Vec<u8>, ty: u16) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    start
}

fn nest_end(buf: &mut [u8], start: usize) {
    let len = u16::try_from(buf.len() - start).unwrap_or(u16::MAX);
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

fn batch_marker(buf: &mut Vec<u8>, ty: u16, seq: u32) {
    let start = msg_start(
        buf,
        ty,
        NLM_F_REQUEST,
        seq,
        NFPROTO_UNSPEC,
        NFNL_SUBSYS_NFTABLES,
    );
    msg_end(buf, start);
}

/// One `NEWSETELEM` / `DESTROYSETELEM` / `DELSETELEM` message carrying one element; `ack`
/// asks for an acknowledgement of success too (an error is always answered).
fn setelem_msg(
    buf: &mut Vec<u8>,
    msg: u16,
    seq: u32,
    table: &str,
    element: &Element,
    timeout_ms: Option<u64>,
    ack: bool,
) {
    let mut flags = NLM_F_REQUEST;
    if ack {
        flags |= NLM_F_ACK;
    }
    if msg == NFT_MSG_NEWSETELEM {
        flags |= NLM_F_CREATE;
    }
    let ty = (NFNL_SUBSYS_NFTABLES << 8) | msg;
    let start = msg_start(buf, ty, flags, seq, NFPROTO_INET, 0);
    attr_str(buf, NFTA_SET_ELEM_LIST_TABLE, table);
    attr_str(buf, NFTA_SET_ELEM_LIST_SET, element.set);
    let list = nest_start(buf, NFTA_SET_ELEM_LIST_ELEMENTS);
    let item = nest_start(buf, NFTA_LIST_ELEM);
    let key = nest_start(buf, NFTA_SET_ELEM_KEY);
    attr(buf, NFTA_DATA_VALUE, &element.key);
    nest_end(buf, key);
    if let Some(data) = &element.data {
        let nest = nest_start(buf, NFTA_SET_ELEM_DATA);
        attr(buf, NFTA_DATA_VALUE, data);
        nest_end(buf, nest);
    }
    if let Some(ms) = timeout_ms {
        attr(buf, NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
    }
    nest_end(buf, item);
    nest_end(buf, list);
    msg_end(buf, start);
}

/// One ctnetlink `DELETE` of the TCP connection whose original tuple is `src -> dst`.
fn ct_delete_msg(
    buf: &mut Vec<u8>,
    seq: u32,
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
) {
    ct_flow_msg(buf, IPCTNL_MSG_CT_DELETE, seq, src, dst);
}

/// A ctnetlink request about the TCP flow whose original tuple is `src -> dst`: `msg` is
/// `IPCTNL_MSG_CT_GET` or `IPCTNL_MSG_CT_DELETE`.
fn ct_flow_msg(
    buf: &mut Vec<u8>,
    msg: u16,
    seq: u32,
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
) {
    let canonical =
        |a: std::net::SocketAddr| std::net::SocketAddr::new(a.ip().to_canonical(), a.port());
    let (src, dst) = (canonical(src), canonical(dst));
    let (family, src_attr, dst_attr) = if src.ip().is_ipv4() {
        (NFPROTO_IPV4, CTA_IP_V4_SRC, CTA_IP_V4_DST)
    } else {
        (NFPROTO_IPV6, CTA_IP_V6_SRC, CTA_IP_V6_DST)
    };
    let ip_bytes = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let ty = (NFNL_SUBSYS_CTNETLINK << 8) | msg;
    let start = msg_start(buf, ty, NLM_F_REQUEST | NLM_F_ACK, seq, family, 0);
    let tuple = nest_start(buf, CTA_TUPLE_ORIG);
    let ip = nest_start(buf, CTA_TUPLE_IP);
    attr(buf, src_attr, &ip_bytes(src.ip()));
    attr(buf, dst_attr, &ip_bytes(dst.ip()));
    nest_end(buf, ip);
    let proto = nest_start(buf, CTA_TUPLE_PROTO);
    attr(buf, CTA_PROTO_NUM, &[libc::IPPROTO_TCP as u8]);
    attr(buf, CTA_PROTO_SRC_PORT, &src.port().to_be_bytes());
    attr(buf, CTA_PROTO_DST_PORT, &dst.port().to_be_bytes());
    nest_end(buf, proto);
    nest_end(buf, tuple);
    msg_end(buf, start);
}

// ---------------------------------------------------------------------------------------
// Decoding

/// What one netlink message from the kernel says, as far as we care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// `NLMSG_ERROR`: an ACK (`errno == 0`) or an error (positive errno) for message `seq`.
    Ack { seq: u32, errno: i32 },
    /// A conntrack entry (the answer to a `CT_GET`, or one of a dump's): its TCP state, and
    /// its original tuple if it is TCP.
    Flow {
        seq: u32,
        tcp_state: Option<u8>,
        tcp: Option<flows::Flow>,
    },
    /// Anything else (e.g. the `NEWGEN` answer to `GETGEN`).
    Other { seq: u32, ty: u16 },
}

fn ne_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn ne_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

/// A conntrack tuple's `src -> dst` if it is TCP.
fn tcp_tuple(tuple: &[u8]) -> Option<flows::Flow> {
    let ip = find_attr(tuple, CTA_TUPLE_IP)?;
    let proto = find_attr(tuple, CTA_TUPLE_PROTO)?;
    if find_attr(proto, CTA_PROTO_NUM)?.first() != Some(&(libc::IPPROTO_TCP as u8)) {
        return None;
    }
    let port = |ty| -> Option<u16> {
        Some(u16::from_be_bytes(
            find_attr(proto, ty)?.get(..2)?.try_into().ok()?,
        ))
    };
    let addr = |v4, v6| -> Option<IpAddr> {
        if let Some(a) = find_attr(ip, v4) {
            let bytes: [u8; 4] = a.get(..4)?.try_into().ok()?;
            return Some(IpAddr::from(bytes));
        }
        let bytes: [u8; 16] = find_attr(ip, v6)?.get(..16)?.try_into().ok()?;
        Some(IpAddr::from(bytes))
    };
    Some((
        std::net::SocketAddr::new(
            addr(CTA_IP_V4_SRC, CTA_IP_V6_SRC)?,
            port(CTA_PROTO_SRC_PORT)?,
        ),
        std::net::SocketAddr::new(
            addr(CTA_IP_V4_DST, CTA_IP_V6_DST)?,
            port(CTA_PROTO_DST_PORT)?,
        ),
    ))
}

/// The payload of the first attribute of type `ty` in `attrs` (a run of netlink
/// attributes); `None` when absent or when the run is malformed before it.
fn find_attr(mut attrs: &[u8], ty: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = usize::from(ne_u16(attrs, 0)?);
        let this = ne_u16(attrs, 2)? & NLA_TYPE_MASK;
        let payload = attrs.get(4..len)?;
        if this == ty {
            return Some(payload);
        }
        attrs = attrs.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    None
}

/// Parses one datagram (possibly several netlink messages). Malformed input is an error,
/// never a panic; messages parsed before the malformed one are kept in `out`.
fn parse_replies(mut data: &[u8], out: &mut Vec<Reply>) -> Result<(), String> {
    while !data.is_empty() {
        let (Some(len), Some(ty), Some(seq)) = (ne_u32(data, 0), ne_u16(data, 4), ne_u32(data, 8))
        else {
            return Err(format!(
                "truncated netlink header ({} bytes left)",
                data.len()
            ));
        };
        let len = len as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(format!(
                "netlink message length {len} out of range (1..={} bytes, header {NLMSG_HDRLEN})",
                data.len()
            ));
        }
        if ty == NLMSG_ERROR {
            let code = ne_u32(&data[..len], NLMSG_HDRLEN)
                .ok_or_else(|| format!("truncated NLMSG_ERROR for sequence {seq}"))?;
            let errno = (code.cast_signed())
                .checked_neg()
                .filter(|e| *e >= 0)
                .ok_or_else(|| format!("invalid error code {code:#x} for sequence {seq}"))?;
            out.push(Reply::Ack { seq, errno });
        } else if ty == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW {
            // After the header, a 4-byte nfgenmsg, then the entry's attributes.
            let attrs = data[..len].get(NLMSG_HDRLEN + 4..).unwrap_or_default();
            let tcp_state = find_attr(attrs, CTA_PROTOINFO)
                .and_then(|info| find_attr(info, CTA_PROTOINFO_TCP))
                .and_then(|tcp| find_attr(tcp, CTA_PROTOINFO_TCP_STATE))
                .and_then(|state| state.first().copied());
            let tcp = find_attr(attrs, CTA_TUPLE_ORIG).and_then(tcp_tuple);
            out.push(Reply::Flow {
                seq,
                tcp_state,
                tcp,
            });
        } else {
            out.push(Reply::Other { seq, ty });
        }
        data = data.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The thread

/// The result of one request within one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Every message ACKed, and the transaction committed.
    Done,
    /// The kernel refused element `element` of this request with `errno`.
    Refused { errno: i32, element: usize },
    /// The kernel refused the whole transaction (answered on `BATCH_BEGIN`).
    BatchRefused(i32),
    /// This request was fine, but another one made the transaction abort.
    Aborted,
    /// Some ACK never came within [`ACK_WAIT`], so the result is unknown. (The kernel
    /// answers a batch inside `sendmsg`: waiting again would not help.)
    Lost(String),
    /// Answers were lost on the way (`ENOBUFS`, a truncated reply): the result is unknown, and
    /// asking again gets a fresh answer at once.
    Dropped(String),
    /// The socket failed.
    Io(FirewallError),
}

/// A unit of work in a transaction: some elements, added or removed.
struct Job<'a> {
    kind: Kind,
    elements: &'a [Element],
}

struct Backend {
    socket: Socket,
    table: String,
    seq: u32,
    /// Whether `NFT_MSG_DESTROYSETELEM` works (cleared after the first EINVAL/EOPNOTSUPP that
    /// a plain delete does not reproduce).
    destroy: bool,
    /// The destroy message type (a field so that tests can simulate an old kernel).
    destroy_msg: u16,
    tx: Vec<u8>,
    rx: Vec<u8>,
    replies: Vec<Reply>,
    counters: Arc<Counters>,
    /// Sweep state of closed active flows, shared by every socket of the firewall.
    flows: Arc<StaleFlows>,
    /// Tests: how many of the next transactions run but report their answers lost.
    #[cfg(test)]
    lose_answers: u32,
}

impl Backend {
    fn open(
        table: String,
        counters: Arc<Counters>,
        flows: Arc<StaleFlows>,
    ) -> Result<Self, FirewallError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| {
            FirewallError::io(
                "open a NETLINK_NETFILTER socket (is nfnetlink available?)",
                &e,
            )
        })?;
        socket
            .bind_auto()
            .map_err(|e| FirewallError::io("bind the netlink socket", &e))?;
        // Errors are acknowledged with the header of the failed message only, not its body.
        socket
            .set_cap_ack(true)
            .map_err(|e| FirewallError::io("set NETLINK_CAP_ACK", &e))?;
        set_buffer(&socket, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, RECV_BUFFER);
        set_buffer(&socket, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, SEND_BUFFER);
        let mut backend = Self {
            socket,
            table,
            seq: std::process::id().rotate_left(16),
            destroy: true,
            destroy_msg: NFT_MSG_DESTROYSETELEM,
            tx: Vec::with_capacity(64 << 10),
            rx: Vec::with_capacity(64 << 10),
            replies: Vec::new(),
            counters,
            flows,
            #[cfg(test)]
            lose_answers: 0,
        };
        backend.probe()?;
        Ok(backend)
    }

    /// Asks for the ruleset generation: answers EPERM without CAP_NET_ADMIN, so a daemon
    /// that is not permitted fails at start, not at its first transfer.
    fn probe(&mut self) -> Result<(), FirewallError> {
        let seq = bump(&mut self.seq);
        self.tx.clear();
        let start = msg_start(
            &mut self.tx,
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            NFPROTO_UNSPEC,
            0,
        );
        msg_end(&mut self.tx, start);
        match self.ask(seq, "a generation query")? {
            0 => Ok(()),
            libc::EPERM => Err(FirewallError::PermissionDenied),
            errno => Err(kernel_error("answer a generation query", errno)),
        }
    }

    /// Sends the one message in `tx` (sequence `seq`) and waits for its ACK: the errno the
    /// kernel answered (0 for success). `what` names the request in errors.
    fn ask(&mut self, seq: u32, what: &str) -> Result<i32, FirewallError> {
        self.ask_with(seq, what, |_| {})
    }

    /// [`Backend::ask`], handing every other reply to `seq` (e.g. a conntrack entry, which
    /// comes before the ACK) to `on_reply`.
    fn ask_with(
        &mut self,
        seq: u32,
        what: &str,
        mut on_reply: impl FnMut(Reply),
    ) -> Result<i32, FirewallError> {
        self.send()
            .map_err(|e| FirewallError::io("send to the kernel", &e))?;
        let mut answer = None;
        let lost = self.receive(|reply| {
            match reply {
                Reply::Ack { seq: s, errno } if s == seq => answer = Some(errno),
                Reply::Flow { seq: s, .. } | Reply::Other { seq: s, .. } if s == seq => {
                    on_reply(reply);
                }
                _ => {}
            }
            answer.is_some()
        });
        match (answer, lost) {
            (Some(errno), _) => Ok(errno),
            (None, Err(e)) => Err(e),
            (None, Ok(())) => Err(FirewallError::Protocol(format!("no answer to {what}"))),
        }
    }

    /// Whether `inet <table>` exists: one `NFT_MSG_GETTABLE` for that name (a lookup, not a
    /// dump: `nft list tables` would fetch every set element into its cache, 100,000
    /// pinholes every few seconds on a busy gateway).
    fn table_exists(&mut self) -> Result<bool, FirewallError> {
        let seq = bump(&mut self.seq);
        self.tx.clear();
        let start = msg_start(
            &mut self.tx,
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            NFPROTO_INET,
            0,
        );
        let table = self.table.clone();
        attr_str(&mut self.tx, NFTA_TABLE_NAME, &table);
        msg_end(&mut self.tx, start);
        match self.ask(seq, "a table lookup")? {
            0 => Ok(true),
            libc::ENOENT => Ok(false),
            libc::EPERM => Err(FirewallError::PermissionDenied),
            errno => Err(kernel_error("look up our table", errno)),
        }
    }

    fn send(&self) -> std::io::Result<()> {
        let sent = self.socket.send_to(&self.tx, &SocketAddr::new(0, 0), 0)?;
        if sent != self.tx.len() {
            return Err(std::io::Error::other(format!(
                "short send: {sent} of {} bytes",
                self.tx.len()
            )));
        }
        Ok(())
    }

    /// Reads every queued reply, handing each to `on_reply`, which answers whether all
    /// expected replies have now arrived. Returns as soon as `on_reply` said so (or, after a
    /// problem, once the queue is empty); waits up to [`ACK_WAIT`] for stragglers. `Ok(())` with `on_reply` never satisfied
    /// means the wait timed out. Replies dropped by the kernel (`ENOBUFS`) are reported as an
    /// error *after* the queue is drained, so the caller can still use the rest.
    fn receive(&mut self, mut on_reply: impl FnMut(Reply) -> bool) -> Result<(), FirewallError> {
        let mut done = false;
        let mut problem: Option<FirewallError> = None;
        let deadline = Instant::now() + ACK_WAIT;
        loop {
            self.rx.clear();
            match self
                .socket
                .recv(&mut self.rx, libc::MSG_DONTWAIT | libc::MSG_TRUNC)
            {
                Ok(len) => {
                    if len > self.rx.len() {
                        problem = Some(FirewallError::Protocol(format!(
                            "reply of {len} bytes truncated to {}",
                            self.rx.len()
                        )));
                    }
                    self.replies.clear();
                    if let Err(e) = parse_replies(&self.rx, &mut self.replies) {
                        problem = Some(FirewallError::Protocol(e));
                    }
                    for reply in self.replies.drain(..) {
                        done |= on_reply(reply);
                    }
                    // Everything expected is here: skip the read that would only say
                    // EAGAIN (a stray message left queued is ignored by the next call).
                    if done && problem.is_none() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // The kernel answers a batch inside sendmsg: after a problem (answers
                    // dropped on overrun), what is not queued now never comes.
                    if done || problem.is_some() {
                        break;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() || !self.wait_readable(left) {
                        break;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    problem = Some(FirewallError::Protocol(
                        "the kernel dropped acknowledgements (receive buffer overrun)".into(),
                    ));
                }
                Err(e) => {
                    problem = Some(FirewallError::io("receive from the kernel", &e));
                    break;
                }
            }
        }
        problem.map_or(Ok(()), Err)
    }

    fn wait_readable(&self, timeout: Duration) -> bool {
        let mut fd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd, for the duration of the call.
        let rc = unsafe { libc::poll(&raw mut fd, 1, ms) };
        rc > 0
            || (rc < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted)
    }

    /// Runs `jobs` as one transaction and says what became of each.
    fn transact(&mut self, jobs: &[Job<'_>]) -> Vec<Outcome> {
        let started = Instant::now();
        let outcomes = self.transact_inner(jobs);
        #[cfg(test)]
        let outcomes = if self.lose_answers > 0 {
            self.lose_answers -= 1;
            vec![Outcome::Dropped("test: answers dropped".into()); jobs.len()]
        } else {
            outcomes
        };
        Counters::add(&self.counters.transactions, 1);
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Counters::add(&self.counters.kernel_nanos, nanos);
        outcomes
    }

    fn transact_inner(&mut self, jobs: &[Job<'_>]) -> Vec<Outcome> {
        self.tx.clear();
        let begin = bump(&mut self.seq);
        batch_marker(&mut self.tx, NFNL_MSG_BATCH_BEGIN, begin);
        let first = begin.wrapping_add(1);
        // For each message: (job index, element index).
        let mut owners: Vec<(usize, usize)> = Vec::new();
        let messages: usize = jobs.iter().map(|job| job.elements.len()).sum();
        for (j, job) in jobs.iter().enumerate() {
            for (e, element) in job.elements.iter().enumerate() {
                let seq = bump(&mut self.seq);
                let (msg, timeout) = match job.kind {
                    Kind::Add { timeout_ms } => (NFT_MSG_NEWSETELEM, Some(timeout_ms)),
                    Kind::Remove if self.destroy => (self.destroy_msg, None),
                    Kind::Remove => (NFT_MSG_DELSETELEM, None),
                };
                // Only the last message asks for a success ACK: errors are always answered,
                // and the kernel delivers a batch's answers in message order once it has
                // committed or aborted, so the last one's ACK closes the transaction. (An
                // ACK per message would cost the kernel an skb and us a recvmsg each.)
                let last = owners.len() + 1 == messages;
                setelem_msg(&mut self.tx, msg, seq, &self.table, element, timeout, last);
                owners.push((j, e));
            }
        }
        let end = bump(&mut self.seq);
        batch_marker(&mut self.tx, NFNL_MSG_BATCH_END, end);

        if let Err(e) = self.send() {
            let error = FirewallError::io("send a batch to the kernel", &e);
            return vec![Outcome::Io(error); jobs.len()];
        }
        let mut acks: Vec<Option<i32>> = vec![None; owners.len()];
        let mut batch_errno = None;
        let received = self.receive(|reply| {
            if let Reply::Ack { seq, errno } = reply {
                if seq == begin {
                    if errno != 0 {
                        batch_errno = Some(errno);
                    }
                } else if let Some(slot) = acks.get_mut(seq.wrapping_sub(first) as usize)
                    && slot.is_none()
                {
                    *slot = Some(errno);
                }
            }
            acks.last().is_some_and(Option::is_some) || batch_errno.is_some()
        });
        // The last message's answer came after every earlier one's: those that said nothing
        // succeeded.
        if acks.last().is_some_and(Option::is_some) {
            for ack in &mut acks {
                ack.get_or_insert(0);
            }
        }

        let any_error =
            batch_errno.is_some() || acks.iter().any(|a| matches!(a, Some(e) if *e != 0));
        let mut outcomes = vec![Outcome::Done; jobs.len()];
        if let Err(e) = received {
            // Something may be missing, so nothing is known for sure; the caller replays.
            let why = e.to_string();
            return vec![Outcome::Dropped(why); jobs.len()];
        }
        for (k, &(j, e)) in owners.iter().enumerate() {
            let outcome = &mut outcomes[j];
            match acks[k] {
                Some(0) => {}
                Some(errno) => {
                    if !matches!(outcome, Outcome::Refused { .. }) {
                        *outcome = Outcome::Refused { errno, element: e };
                    }
                }
                None => {
                    if *outcome == Outcome::Done {
                        *outcome = Outcome::Lost("no acknowledgement from the kernel".into());
                    }
                }
            }
        }
        for outcome in &mut outcomes {
            if *outcome == Outcome::Done && any_error {
                *outcome = match batch_errno {
                    Some(errno) => Outcome::BatchRefused(errno),
                    None => Outcome::Aborted,
                };
            } else if matches!(outcome, Outcome::Lost(_))
                && let Some(errno) = batch_errno
            {
                // BATCH_BEGIN was refused, so nothing else was even looked at.
                *outcome = Outcome::BatchRefused(errno);
            }
        }
        outcomes
    }

    /// Runs a batch and answers every request; in [`Mode::Inline`] an add the kernel found
    /// busy is returned unanswered instead of being retried here.
    fn process(&mut self, batch: &mut Vec<Request>, mode: Mode) -> Option<Request> {
        // An open whose caller stopped waiting would leave an untracked pinhole behind (until
        // its timeout): skip it. Closes always run.
        batch.retain(|r| !(matches!(r.kind, Kind::Add { .. }) && r.reply.is_closed()));
        if batch.is_empty() {
            return None;
        }
        let started = Instant::now();
        let jobs: Vec<Job<'_>> = batch
            .iter()
            .map(|r| Job {
                kind: r.kind,
                elements: &r.elements,
            })
            .collect();
        let messages: usize = batch.iter().map(|r| r.elements.len()).sum();
        let outcomes = self.transact(&jobs);
        drop(jobs);
        let committed = outcomes.iter().all(|o| *o == Outcome::Done);
        debug!(
            requests = batch.len(),
            messages,
            committed,
            micros = started.elapsed().as_micros() as u64,
            "nftables batch"
        );
        let mut handed_back = None;
        if committed || batch.len() == 1 {
            for (request, outcome) in batch.drain(..).zip(outcomes) {
                handed_back = self.finish(request, outcome, mode).or(handed_back);
            }
            return handed_back;
        }
        debug!(
            requests = batch.len(),
            "batch aborted; replaying each request alone to attribute errors"
        );
        Counters::add(&self.counters.replays, 1);
        for request in batch.drain(..) {
            let outcome = self.transact_one(&request);
            handed_back = self.finish(request, outcome, mode).or(handed_back);
        }
        handed_back
    }

    fn transact_one(&mut self, request: &Request) -> Outcome {
        self.transact(&[Job {
            kind: request.kind,
            elements: &request.elements,
        }])
        .pop()
        .unwrap_or_else(|| Outcome::Lost("empty transaction".into()))
    }

    /// Answers one request with its outcome; `Some` hands an add the kernel found busy back
    /// to an inline caller (unanswered) for the thread to retry.
    fn finish(&mut self, request: Request, mut outcome: Outcome, mode: Mode) -> Option<Request> {
        // Answers dropped on the way (ENOBUFS): the kernel may or may not have done it. Every
        // request is idempotent, so asking again gives a known answer, at once. Not an add
        // whose caller has gone (an orphan for the owner counts to remove); a close always.
        if let Outcome::Dropped(why) = &outcome
            && !(matches!(request.kind, Kind::Add { .. }) && request.reply.is_closed())
        {
            debug!(pinhole = %request.pinhole, %why, "answer lost; asking the kernel once more");
            Counters::add(&self.counters.replays, 1);
            outcome = self.transact_one(&request);
        }
        // EBUSY: the kernel is resizing the set under a concurrent transaction. It is not a
        // clash of keys; a retry a moment later succeeds.
        let busy = |outcome: &Outcome| {
            matches!(
                outcome,
                Outcome::Refused {
                    errno: libc::EBUSY,
                    ..
                }
            )
        };
        if mode == Mode::Inline && matches!(request.kind, Kind::Add { .. }) && busy(&outcome) {
            return Some(request);
        }
        let mut retries = 0;
        while matches!(request.kind, Kind::Add { .. }) && busy(&outcome) && retries < BUSY_RETRIES {
            retries += 1;
            Counters::add(&self.counters.replays, 1);
            Counters::add(&self.counters.busy_retries, 1);
            debug!(
                pinhole = %request.pinhole,
                retries,
                "nftables set busy (EBUSY); retrying after a back-off"
            );
            std::thread::sleep(BUSY_BACKOFF * retries);
            outcome = self.transact_one(&request);
        }
        let result = match (request.kind, outcome) {
            (Kind::Remove, Outcome::Refused { errno, .. })
                if self.destroy && (errno == libc::EINVAL || errno == libc::EOPNOTSUPP) =>
            {
                self.remove_with_delete(&request.elements)
            }
            // Without destroy, one element already gone (e.g. `active_once`, consumed by the
            // connection) fails the whole transaction: delete the others one by one.
            (Kind::Remove, Outcome::Refused { errno, .. })
                if !self.destroy && errno == libc::ENOENT && request.elements.len() > 1 =>
            {
                self.remove_each(&request.elements)
            }
            (kind, outcome) => self.interpret(kind, &request.elements, outcome),
        };
        let result = match result {
            Ok(()) if matches!(request.kind, Kind::Add { .. }) => {
                // The elements stay in the kernel; `NftFirewall::submit` removes them.
                self.check_stale_flow(&request.pinhole)
            }
            other => other,
        };
        if let Err(error) = &result {
            debug!(pinhole = %request.pinhole, %error, "pinhole operation failed");
        }
        Counters::add(&self.counters.requests, 1);
        let closed = matches!(request.kind, Kind::Remove) && result.is_ok();
        let _ = request.reply.send(result);
        // After the answer: a close comes after the 226 was relayed, while the client reads
        // it, so sweeping here keeps the conntrack deletes off the next PORT's path.
        if closed {
            let now = Instant::now();
            if let Some(flow) = active_flow(&request.pinhole) {
                self.flows.closed(flow, now);
            }
            self.sweep(now);
        }
        None
    }

    /// Removes from conntrack the tuples of active pinholes closed at least
    /// [`flows::SWEEP_AFTER`] ago (a few per call), so that their ports' next opens need
    /// not (see [`flows`]).
    fn sweep(&mut self, now: Instant) {
        for flow in self.flows.take_due(now, SWEEP_PER_CALL) {
            let (src, dst) = flow;
            let state = if self.flows.finished_at_start(flow, now) {
                // Found finished at start, untouched since: only a new SYN could revive it,
                // and none can come before its port is leased (which asks again).
                Ok(FlowState::Tcp(TCP_CONNTRACK_TIME_WAIT))
            } else {
                self.flow_state(flow)
            };
            let finished = match state {
                Ok(FlowState::Gone) => Ok(()),
                Ok(FlowState::Tcp(state)) if finished(state) => match self.delete_flow(flow) {
                    Ok(0 | libc::ENOENT) => Ok(()),
                    Ok(errno) => Err(format!(
                        "conntrack refused to delete it: {}",
                        std::io::Error::from_raw_os_error(errno)
                    )),
                    Err(e) => Err(e.to_string()),
                },
                Ok(FlowState::Tcp(state)) => {
                    debug!(%src, %dst, state, "data connection still alive after its pinhole closed; sweep deferred");
                    Counters::add(&self.counters.flow_sweeps_deferred, 1);
                    self.flows.alive(flow, now);
                    continue;
                }
                Ok(FlowState::Unknown) => Err("conntrack's answer had no TCP state".into()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(error) = &finished {
                debug!(%src, %dst, %error, "could not sweep a data connection");
            } else {
                Counters::add(&self.counters.flows_swept, 1);
            }
            self.flows.swept(flow, finished.is_ok());
        }
    }

    /// What conntrack holds on the TCP flow whose original tuple is `flow`.
    fn flow_state(&mut self, flow: flows::Flow) -> Result<FlowState, FirewallError> {
        let seq = bump(&mut self.seq);
        self.tx.clear();
        ct_flow_msg(&mut self.tx, IPCTNL_MSG_CT_GET, seq, flow.0, flow.1);
        let mut state = None;
        let errno = self.ask_with(seq, "a conntrack lookup", |reply| {
            if let Reply::Flow { tcp_state, .. } = reply {
                state = tcp_state;
            }
        })?;
        match errno {
            libc::ENOENT => Ok(FlowState::Gone),
            0 => Ok(state.map_or(FlowState::Unknown, FlowState::Tcp)),
            errno => Err(kernel_error("look up a data connection", errno)),
        }
    }

    /// Every TCP flow conntrack holds from source port 20 (one dump of the whole table, at
    /// start): what a daemon before this one may have left on the gateway ports. `None`
    /// when there are more than `max`.
    /// Each with whether it has finished.
    fn port20_flows(
        &mut self,
        max: usize,
    ) -> Result<Option<Vec<(flows::Flow, bool)>>, FirewallError> {
        let seq = bump(&mut self.seq);
        self.tx.clear();
        let start = msg_start(
            &mut self.tx,
            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            NFPROTO_UNSPEC,
            0,
        );
        msg_end(&mut self.tx, start);
        self.send()
            .map_err(|e| FirewallError::io("send to the kernel", &e))?;
        let mut found = Vec::new();
        let mut too_many = false;
        let mut end: Option<i32> = None;
        let deadline = Instant::now() + DUMP_LIMIT;
        while end.is_none() && Instant::now() < deadline {
            self.receive(|reply| {
                match reply {
                    Reply::Flow {
                        seq: s,
                        tcp: Some(flow),
                        tcp_state,
                    } if s == seq && flow.0.port() == FTP_DATA_PORT => {
                        if found.len() < max {
                            found.push((flow, tcp_state.is_some_and(finished)));
                        } else {
                            too_many = true;
                        }
                    }
                    Reply::Other { seq: s, ty } if s == seq && ty == NLMSG_DONE => end = Some(0),
                    Reply::Ack { seq: s, errno } if s == seq => end = Some(errno),
                    _ => {}
                }
                end.is_some()
            })?;
        }
        match end {
            Some(0) if too_many => Ok(None),
            Some(0) => Ok(Some(found)),
            Some(errno) => Err(kernel_error("list conntrack's flows", errno)),
            None => Err(FirewallError::Protocol(format!(
                "conntrack's flow list did not end within {} s",
                DUMP_LIMIT.as_secs()
            ))),
        }
    }

    /// Asks conntrack to delete the TCP flow whose original tuple is `flow`; the kernel's
    /// errno (0: deleted, `ENOENT`: there was none).
    fn delete_flow(&mut self, flow: flows::Flow) -> Result<i32, FirewallError> {
        let seq = bump(&mut self.seq);
        self.tx.clear();
        ct_delete_msg(&mut self.tx, seq, flow.0, flow.1);
        self.ask(seq, "a conntrack delete")
    }

    /// An active pinhole has just leased a gateway port: whatever conntrack still tracks on
    /// its data connection's tuple `server:20 -> gateway:port` belongs to an earlier holder
    /// of the port. A finished one (TIME_WAIT, or CLOSE after a reset, with its DNAT to that
    /// client) would take the new holder's SYN for itself and deliver the server's
    /// connection to the previous client: it is removed before the rewritten PORT/EPRT is
    /// released, so the port can be leased again at once. A live one (a transfer whose
    /// session ended, or whose server sent its 226 ahead of the data's tail; a transfer of a
    /// daemon that ran before this one) is not touched: deleting it would lose the rest of
    /// that transfer, and the server could not connect from port 20 on a 4-tuple still in use
    /// anyway. The port is refused ([`FirewallError::PortInUse`]) and the session leases
    /// another. No entry (`ENOENT`) is the usual case and fine.
    ///
    /// Not when the pinhole *closes*: the 226 that ends a transfer overtakes the client's
    /// FIN and last ACK on the data connection, and with the entry gone those are dropped
    /// by the forward chain; the server's close then waits for a retransmission (vsftpd
    /// answered the next command ~200 ms late, 2 % of active transfers).
    ///
    /// Skipped when a background sweep has cleared the tuple since its last close (see
    /// [`flows`]): that takes the conntrack round trip off the PORT's path.
    fn check_stale_flow(&mut self, pinhole: &Pinhole) -> Result<(), FirewallError> {
        let Some(flow) = active_flow(pinhole) else {
            return Ok(());
        };
        if self.flows.claim(flow, ACK_WAIT) == Claim::AlreadySwept {
            Counters::add(&self.counters.flow_deletes_skipped, 1);
            return Ok(());
        }
        let (src, via) = flow;
        let state = self.flow_state(flow);
        match state {
            Ok(FlowState::Gone) => {}
            Ok(FlowState::Tcp(state)) if !finished(state) => {
                self.flows.alive(flow, Instant::now());
                Counters::add(&self.counters.ports_in_use, 1);
                debug!(%src, dst = %via, state, "leased gateway port still carries a live data connection; refused");
                return Err(FirewallError::PortInUse {
                    server: src,
                    gateway: via,
                });
            }
            // Finished, or conntrack could not say: delete, as a finished one must be.
            _ => {
                if let Err(e) = &state {
                    debug!(%src, dst = %via, error = %e, "could not look up a data connection; deleting it");
                }
                match self.delete_flow(flow) {
                    Ok(0) => {
                        Counters::add(&self.counters.flows_forgotten, 1);
                        debug!(%src, dst = %via, "stale data connection removed from conntrack");
                    }
                    Ok(libc::ENOENT) => {}
                    Ok(errno) => debug!(
                        %src,
                        dst = %via,
                        error = %std::io::Error::from_raw_os_error(errno),
                        "conntrack refused to forget a data connection"
                    ),
                    Err(e) => {
                        debug!(%src, dst = %via, error = %e, "could not ask conntrack to forget a data connection")
                    }
                }
            }
        }
        self.flows.opened(flow);
        Ok(())
    }

    /// The fallback for kernels without `DESTROYSETELEM` (< 6.3, which answer `EINVAL`):
    /// delete instead, and keep doing so if that works.
    fn remove_with_delete(&mut self, elements: &[Element]) -> Result<(), FirewallError> {
        self.destroy = false;
        let result = self.remove_each(elements);
        match &result {
            Err(FirewallError::Kernel { errno, .. })
                if *errno == libc::EINVAL || *errno == libc::EOPNOTSUPP =>
            {
                // Delete fails the same way: the request is bad, not the message type.
                self.destroy = true;
            }
            _ => info!("kernel lacks NFT_MSG_DESTROYSETELEM (needs 6.3); using DELSETELEM"),
        }
        result
    }

    /// Removes each element in a transaction of its own, so that one missing element
    /// (`ENOENT`, not an error for a close) does not abort the others.
    fn remove_each(&mut self, elements: &[Element]) -> Result<(), FirewallError> {
        let mut result = Ok(());
        for element in elements.chunks(1) {
            let outcome = self
                .transact(&[Job {
                    kind: Kind::Remove,
                    elements: element,
                }])
                .pop()
                .unwrap_or_else(|| Outcome::Lost("empty transaction".into()));
            if let Err(e) = self.interpret(Kind::Remove, element, outcome) {
                result = result.and(Err(e));
            }
        }
        result
    }

    fn interpret(
        &self,
        kind: Kind,
        elements: &[Element],
        outcome: Outcome,
    ) -> Result<(), FirewallError> {
        let set = |element: usize| {
            elements
                .get(element)
                .map_or("(unknown set)", |e| e.set)
                .to_owned()
        };
        let adding = matches!(kind, Kind::Add { .. });
        match outcome {
            Outcome::Done => Ok(()),
            // Removing: the element, its set or its whole table is gone. Either way the
            // pinhole is not in the kernel, which is all close promises.
            Outcome::Refused {
                errno: libc::ENOENT,
                ..
            } if !adding => Ok(()),
            Outcome::Refused { errno, element } => Err(match errno {
                libc::EPERM => FirewallError::PermissionDenied,
                libc::ENOENT => FirewallError::TableMissing {
                    table: self.table.clone(),
                    set: set(element),
                },
                // A set at its `size` answers ENFILE ("Too many open files in system").
                libc::ENFILE | libc::ENOSPC | libc::E2BIG => {
                    FirewallError::SetFull { set: set(element) }
                }
                libc::EEXIST => FirewallError::Conflict { set: set(element) },
                libc::EBUSY => kernel_error(
                    &format!("add to set {} (busy; retried)", set(element)),
                    errno,
                ),
                _ => {
                    let what = if adding {
                        format!("add an element to set {}", set(element))
                    } else {
                        format!("remove an element from set {}", set(element))
                    };
                    kernel_error(&what, errno)
                }
            }),
            Outcome::BatchRefused(libc::EPERM) => Err(FirewallError::PermissionDenied),
            Outcome::BatchRefused(errno) => Err(kernel_error("run a transaction", errno)),
            Outcome::Aborted => Err(FirewallError::Protocol(
                "transaction aborted by another request".into(),
            )),
            Outcome::Lost(why) | Outcome::Dropped(why) => {
                warn!(%why, "lost track of a pinhole operation");
                Err(FirewallError::Protocol(why))
            }
            Outcome::Io(error) => Err(error),
        }
    }
}

/// The firewall thread: takes what callers queued (they queue only when they found the socket
/// busy) and sends it in batches.
fn run(backend: &Mutex<Backend>, queue: &mpsc::Receiver<Request>) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    let mut busy = false;
    loop {
        // Spin briefly only under load (the last batch had company): with one request
        // at a time the spin never catches the next one and steals a core from the
        // tasks that produce it.
        let spun = if busy { spin_recv(queue) } else { None };
        let first = match spun {
            Some(request) => request,
            None => match queue.recv() {
                Ok(request) => request,
                Err(_) => break,
            },
        };
        batch.push(first);
        let Ok(mut backend) = backend.lock() else {
            // A caller panicked inside a transaction; nothing can be trusted any more.
            break;
        };
        // Whatever queued while we waited for the socket joins the batch.
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        busy = batch.len() > 1;
        backend.process(&mut batch, Mode::Thread);
        batch.clear();
    }
    debug!("all firewall handles dropped; closing the netlink socket");
}

/// Who runs a transaction: the firewall thread, or a caller that found the socket free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Thread,
    /// On a runtime worker: never sleep (an EBUSY add is handed back for the thread to retry).
    Inline,
}

/// Waits for a request by polling for up to [`SPIN`], so a caller that sends its next
/// request right after its ACK does not pay two futex wake-ups.
fn spin_recv(queue: &mpsc::Receiver<Request>) -> Option<Request> {
    let until = Instant::now() + SPIN;
    loop {
        if let Ok(r) = queue.try_recv() {
            return Some(r);
        }
        if Instant::now() >= until {
            return None;
        }
        std::hint::spin_loop();
    }
}

/// The next sequence number.
/// Reads what conntrack holds from port 20 before the first pinhole (see [`flows`]): with
/// that known, a port's first lease needs no conntrack round trip. On a socket of its own,
/// closed after it (the dump's replies never mix with a transaction's).
fn learn_flows_at_start(table: &str, counters: &Arc<Counters>, flows: &Arc<StaleFlows>) {
    let started = Instant::now();
    let found = Backend::open(table.to_owned(), counters.clone(), flows.clone())
        .and_then(|mut backend| backend.port20_flows(flows::MAX_TRACKED / 2));
    match found {
        Ok(Some(found)) => {
            let n = found.len();
            flows.known_at_start(&found, Instant::now());
            info!(
                flows = n,
                millis = started.elapsed().as_millis() as u64,
                "conntrack read at start: data connections from port 20 to look at; first \
                 leases of the other ports need no conntrack round trip"
            );
        }
        Ok(None) => info!(
            "conntrack holds too many flows from port 20 to track; every first lease of a \
             port asks conntrack about it"
        ),
        Err(e) => warn!(
            error = %e,
            "could not read conntrack's flows at start; every first lease of a port asks \
             conntrack about it"
        ),
    }
}

fn bump(seq: &mut u32) -> u32 {
    *seq = seq.wrapping_add(1);
    *seq
}

fn kernel_error(what: &str, errno: i32) -> FirewallError {
    FirewallError::Kernel {
        what: what.to_owned(),
        errno,
        message: std::io::Error::from_raw_os_error(errno).to_string(),
    }
}

/// Raises a socket buffer: the privileged option first (may exceed the sysctl maximum), then
/// the plain one. Failure only means smaller batches may overrun, which is handled.
fn set_buffer(socket: &Socket, forced: libc::c_int, plain: libc::c_int, size: libc::c_int) {
    for option in [forced, plain] {
        // SAFETY: setsockopt with a pointer to a live c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&raw const size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
    debug!(size, "could not raise a netlink socket buffer");
}

#[cfg(test)]
mod tests;
