//! The store: the node tree, permissions, transactions, watches and
//! quotas, with the semantics of Xen's C `xenstored`.
//!
//! - Permissions: dom0 may do anything; a node's owner (its first
//!   permission entry) may do anything with it; any other domain has the
//!   access of its own entry, or else the first entry's access. A node that
//!   does not exist is judged by its nearest existing ancestor. New nodes
//!   inherit their parent's permissions, owned by their creator.
//! - Transactions work on a snapshot of the tree. Every node a transaction
//!   reads or writes is recorded with the generation it had in the
//!   snapshot; the commit fails with `EAGAIN` if any of them changed since
//!   (adding or removing a child changes the parent), and otherwise copies
//!   the nodes it wrote into the tree.
//! - Watches fire once when registered, then for every change at or below
//!   their path (a removal also fires the watches below the removed node),
//!   to watchers that may read the changed node; transaction changes fire
//!   at commit.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::ops::Bound;
use std::sync::Arc;

use imbl::OrdMap;

use hypercall_abi::platform::{XsPerm, XsPermAccess};
use hypercall_abi::xen::xs_wire::{XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX};
use hypercall_abi::xen::DomId;

/// Per-domain and per-connection limits (C xenstored's `-Q` quotas).
///
/// They bind unprivileged domains only; dom0 is not limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Most nodes one domain may own (`-Q nodes=`, C xenstored's `-E`).
    pub nodes_per_domain: usize,
    /// Largest value of one node, in bytes (`-Q node-size=`, `-S`).
    pub node_size: usize,
    /// Most watches one connection may hold (`-Q watches=`, `-W`).
    pub watches_per_conn: usize,
    /// Most transactions one connection may have open (`-Q transactions=`, `-t`).
    pub transactions_per_conn: usize,
    /// Most permission entries on one node (`-Q permissions=`, `-A`).
    pub perms_per_node: usize,
    /// Most requests one connection may have queued (`-Q outstanding=`).
    pub outstanding_per_conn: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            nodes_per_domain: MAX_NODES_PER_DOMAIN,
            node_size: MAX_NODE_SIZE,
            watches_per_conn: MAX_WATCHES_PER_CONN,
            transactions_per_conn: MAX_TRANSACTIONS_PER_CONN,
            perms_per_node: MAX_PERMS,
            outstanding_per_conn: MAX_OUTSTANDING_PER_CONN,
        }
    }
}

impl Quotas {
    /// Sets the quota called `name` (C xenstored's `-Q` and `CONTROL quota`
    /// names) to `value`; `false` if there is no such quota.
    pub fn set(&mut self, name: &str, value: usize) -> bool {
        let field = match name {
            "nodes" => &mut self.nodes_per_domain,
            "node-size" => &mut self.node_size,
            "watches" => &mut self.watches_per_conn,
            "transactions" => &mut self.transactions_per_conn,
            "permissions" => &mut self.perms_per_node,
            "outstanding" => &mut self.outstanding_per_conn,
            _ => return false,
        };
        *field = value;
        true
    }

    /// Every quota as (name, value), in `CONTROL quota` order.
    pub fn list(&self) -> [(&'static str, usize); 6] {
        [
            ("nodes", self.nodes_per_domain),
            ("node-size", self.node_size),
            ("watches", self.watches_per_conn),
            ("transactions", self.transactions_per_conn),
            ("permissions", self.perms_per_node),
            ("outstanding", self.outstanding_per_conn),
        ]
    }
}

/// A connection to the store.
pub type ConnId = u64;

/// Most nodes an unprivileged domain may own (C xenstored's default quota).
pub const MAX_NODES_PER_DOMAIN: usize = 1000;
/// Most watches one connection may hold.
pub const MAX_WATCHES_PER_CONN: usize = 128;
/// Most transactions one connection may have open.
pub const MAX_TRANSACTIONS_PER_CONN: usize = 10;
/// Most permission entries on one node.
pub const MAX_PERMS: usize = 64;
/// Largest node value of an unprivileged domain (C xenstored's default).
pub const MAX_NODE_SIZE: usize = 2048;
/// Most requests one connection may have waiting (C xenstored's default).
pub const MAX_OUTSTANDING_PER_CONN: usize = 20;
/// Watch path that fires when a domain is introduced.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// Watch path that fires when a domain is released.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// A failed request, as the errno whose name goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub conn: ConnId,
    pub domid: DomId,
}

/// A watch event to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    pub conn: ConnId,
    pub path: String,
    pub token: String,
}

#[derive(Debug, Clone)]
struct Node {
    value: Vec<u8>,
    perms: Vec<XsPerm>,
    children: BTreeSet<String>,
    generation: u64,
}

/// One change, for firing watches.
#[derive(Debug, Clone)]
struct Change {
    path: String,
    /// Permission sets that decide who may see the change: a watcher
    /// allowed to read by any of them is told.
    perms: Vec<Vec<XsPerm>>,
    /// The node and everything below it went away.
    removed: bool,
}

/// What a transaction saw and did.
#[derive(Debug, Default, Clone)]
struct TxLog {
    /// Path → generation in the snapshot (`None`: did not exist).
    seen: BTreeMap<String, Option<u64>>,
    /// Paths written, created or removed.
    dirty: BTreeSet<String>,
}

#[derive(Debug, Clone)]
struct Tree {
    /// A persistent map: a transaction's snapshot is an O(1) clone that
    /// shares every node it does not change. Keys and nodes are shared
    /// pointers, so that copying a changed map chunk copies no strings.
    nodes: OrdMap<Arc<str>, Arc<Node>>,
    /// Nodes owned, per domain (for the `nodes` quota).
    owned: HashMap<DomId, usize>,
    next_generation: u64,
    /// Set on a transaction's snapshot.
    log: Option<TxLog>,
    /// Changes made, for watches.
    changes: Vec<Change>,
    quotas: Quotas,
    /// `XS_SET_TARGET`: domain → the domain it acts for.
    targets: BTreeMap<DomId, DomId>,
}

#[derive(Debug)]
struct Transaction {
    conn: ConnId,
    tree: Tree,
}

#[derive(Debug)]
struct Watch {
    conn: ConnId,
    domid: DomId,
    /// The path as registered (absolute, or relative to the home).
    path: String,
    /// The absolute path, or the special `@...` name.
    abs: String,
    token: String,
}

/// The whole store.
#[derive(Debug)]
pub struct Store {
    tree: Tree,
    transactions: HashMap<u32, Transaction>,
    next_tx: u32,
    watches: Vec<Watch>,
    fires: Vec<Fire>,
    introduced: BTreeSet<DomId>,
}

fn home(domid: DomId) -> String {
    format!("/local/domain/{domid}")
}

/// The absolute form of `path` for `domid`, checked like C xenstored's
/// `is_valid_nodename`: characters `[A-Za-z0-9_@/-]`, no empty component,
/// no trailing slash, and within the length limits.
pub fn canonicalize(domid: DomId, path: &str) -> Result<String, Errno> {
    let einval = Errno(libc::EINVAL);
    if path.is_empty() {
        return Err(einval);
    }
    let abs = if path.starts_with('/') {
        if path.len() > XENSTORE_ABS_PATH_MAX {
            return Err(einval);
        }
        path.to_owned()
    } else {
        if path.len() > XENSTORE_REL_PATH_MAX {
            return Err(einval);
        }
        format!("{}/{path}", home(domid))
    };
    if abs.len() > XENSTORE_ABS_PATH_MAX {
        return Err(einval);
    }
    let ok_chars = abs
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-/_@".contains(&b));
    if !ok_chars || (abs != "/" && (abs.ends_with('/') || abs.contains("//"))) {
        return Err(einval);
    }
    Ok(abs)
}

fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whether `path` is `base` or below it.
fn is_at_or_below(path: &str, base: &str) -> bool {
    base == "/"
        || path == base
        || (path.starts_with(base) && path.as_bytes().get(base.len()) == Some(&b'/'))
}

/// (may read, may write) for `domid` on a node with `perms`; `target` is
/// the domain `domid` acts for (`XS_SET_TARGET`), which gives it an
/// owner's rights on that domain's nodes.
fn access(perms: &[XsPerm], domid: DomId, target: Option<DomId>) -> (bool, bool) {
    let Some(owner) = perms.first() else {
        return (domid == 0, domid == 0);
    };
    if domid == 0 || owner.domid == domid || Some(owner.domid) == target {
        return (true, true);
    }
    let acc = perms[1..]
        .iter()
        .find(|p| p.domid == domid)
        .unwrap_or(owner)
        .access;
    match acc {
        XsPermAccess::None => (false, false),
        XsPermAccess::Read => (true, false),
        XsPermAccess::Write => (false, true),
        XsPermAccess::Both => (true, true),
    }
}

#[derive(Clone, Copy)]
enum Need {
    Read,
    Write,
    Owner,
}

fn allowed(perms: &[XsPerm], domid: DomId, target: Option<DomId>, need: Need) -> bool {
    let (r, w) = access(perms, domid, target);
    match need {
        Need::Read => r,
        Need::Write => w,
        Need::Owner => {
            domid == 0
                || perms
                    .first()
                    .is_some_and(|o| o.domid == domid || Some(o.domid) == target)
        }
    }
}

impl Tree {
    fn allowed(&self, perms: &[XsPerm], domid: DomId, need: Need) -> bool {
        allowed(perms, domid, self.targets.get(&domid).copied(), need)
    }

    fn new() -> Self {
        let mut nodes = OrdMap::new();
        let root_perms = vec![XsPerm {
            domid: 0,
            access: XsPermAccess::None,
        }];
        nodes.insert(
            Arc::from("/"),
            Arc::new(Node {
                value: Vec::new(),
                perms: root_perms,
                children: BTreeSet::new(),
                generation: 0,
            }),
        );
        Tree {
            nodes,
            owned: HashMap::from([(0, 1)]),
            next_generation: 1,
            log: None,
            changes: Vec::new(),
            quotas: Quotas::default(),
            targets: BTreeMap::new(),
        }
    }

    /// Records the snapshot generation of `path` the first time a
    /// transaction touches it.
    fn touch(&mut self, path: &str) {
        if let Some(log) = &mut self.log {
            if !log.seen.contains_key(path) {
                let generation = self.nodes.get(path).map(|n| n.generation);
                log.seen.insert(path.to_owned(), generation);
            }
        }
    }

    fn mark_dirty(&mut self, path: &str) {
        if let Some(log) = &mut self.log {
            log.dirty.insert(path.to_owned());
        }
    }

    fn stamp(&mut self) -> u64 {
        let g = self.next_generation;
        self.next_generation += 1;
        g
    }

    /// The errno for a missing node: `ENOENT` if the caller may read the
    /// nearest existing ancestor, `EACCES` otherwise.
    fn missing(&self, domid: DomId, path: &str) -> Errno {
        let mut p = parent(path);
        while let Some(pp) = p {
            if let Some(n) = self.nodes.get(pp) {
                return if self.allowed(&n.perms, domid, Need::Read) {
                    Errno(libc::ENOENT)
                } else {
                    Errno(libc::EACCES)
                };
            }
            p = parent(pp);
        }
        Errno(libc::ENOENT)
    }

    fn get(&mut self, domid: DomId, path: &str, need: Need) -> Result<&Node, Errno> {
        self.touch(path);
        match self.nodes.get(path) {
            None => Err(self.missing(domid, path)),
            Some(n) if !self.allowed(&n.perms, domid, need) => Err(Errno(libc::EACCES)),
            Some(n) => Ok(n),
        }
    }

    fn read(&mut self, domid: DomId, path: &str) -> Result<Vec<u8>, Errno> {
        Ok(self.get(domid, path, Need::Read)?.value.clone())
    }

    /// The children's names, each NUL-terminated (the wire form).
    fn directory(&mut self, domid: DomId, path: &str) -> Result<Vec<u8>, Errno> {
        let children = &self.get(domid, path, Need::Read)?.children;
        let mut out = Vec::with_capacity(children.iter().map(|c| c.len() + 1).sum());
        for c in children {
            out.extend_from_slice(c.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    fn directory_generation(
        &mut self,
        domid: DomId,
        path: &str,
    ) -> Result<(u64, Vec<String>), Errno> {
        let n = self.get(domid, path, Need::Read)?;
        Ok((n.generation, n.children.iter().cloned().collect()))
    }

    fn get_perms(&mut self, domid: DomId, path: &str) -> Result<Vec<XsPerm>, Errno> {
        Ok(self.get(domid, path, Need::Read)?.perms.clone())
    }

    fn owned_by(&self, domid: DomId) -> usize {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    fn count_owner(&mut self, node: Option<&Node>, delta: isize) {
        if let Some(owner) = node.and_then(|n| n.perms.first()).map(|o| o.domid) {
            let n = self.owned.entry(owner).or_insert(0);
            *n = n.saturating_add_signed(delta);
            if *n == 0 {
                self.owned.remove(&owner);
            }
        }
    }

    /// Puts `node` at `path`, keeping the per-domain counts.
    fn put(&mut self, path: &str, node: Arc<Node>) {
        self.count_owner(Some(&node), 1);
        let old = self.nodes.insert(Arc::from(path), node);
        self.count_owner(old.as_deref(), -1);
    }

    /// The node at `path`, to change (copied first if a snapshot shares it).
    fn node_mut(&mut self, path: &str) -> Option<&mut Node> {
        self.nodes.get_mut(path).map(Arc::make_mut)
    }

    /// Removes the node at `path`, keeping the per-domain counts.
    fn take(&mut self, path: &str) {
        let old = self.nodes.remove(path);
        self.count_owner(old.as_deref(), -1);
    }

    /// Creates `path` and any missing ancestors, if the caller may write
    /// the nearest existing ancestor and has quota left.
    fn create(&mut self, domid: DomId, path: &str) -> Result<(), Errno> {
        // Find the nearest existing ancestor and the nodes to create.
        let mut missing = vec![path.to_owned()];
        let mut anc = parent(path);
        let base = loop {
            let Some(a) = anc else {
                return Err(Errno(libc::ENOENT));
            };
            self.touch(a);
            if self.nodes.contains_key(a) {
                break a.to_owned();
            }
            missing.push(a.to_owned());
            anc = parent(a);
        };
        let base_perms = self
            .nodes
            .get(base.as_str())
            .map(|n| n.perms.clone())
            .unwrap_or_default();
        if !self.allowed(&base_perms, domid, Need::Write) {
            return Err(Errno(libc::EACCES));
        }
        if domid != 0 && self.owned_by(domid) + missing.len() > self.quotas.nodes_per_domain {
            return Err(Errno(libc::ENOSPC));
        }
        let mut perms = base_perms;
        if domid != 0 {
            // Inherit the parent's permissions, owned by the creator.
            perms.retain(|p| p.domid != domid);
            let default = perms.first().map_or(XsPermAccess::None, |o| o.access);
            if perms.is_empty() {
                perms.push(XsPerm {
                    domid,
                    access: default,
                });
            } else {
                perms[0] = XsPerm {
                    domid,
                    access: default,
                };
            }
        }
        let mut parent_path = base;
        for p in missing.into_iter().rev() {
            let generation = self.stamp();
            self.touch(&p);
            self.put(
                &p,
                Arc::new(Node {
                    value: Vec::new(),
                    perms: perms.clone(),
                    children: BTreeSet::new(),
                    generation,
                }),
            );
            self.mark_dirty(&p);
            let generation = self.stamp();
            if let Some(par) = self.node_mut(&parent_path) {
                par.children.insert(basename(&p).to_owned());
                par.generation = generation;
            }
            self.mark_dirty(&parent_path);
            parent_path = p;
        }
        Ok(())
    }

    fn write(&mut self, domid: DomId, path: &str, value: &[u8]) -> Result<(), Errno> {
        if domid != 0 && value.len() > self.quotas.node_size {
            return Err(Errno(libc::ENOSPC));
        }
        self.touch(path);
        if !self.nodes.contains_key(path) {
            self.create(domid, path)?;
        }
        self.get(domid, path, Need::Write)?;
        let generation = self.stamp();
        let Some(node) = self.node_mut(path) else {
            return Err(Errno(libc::ENOENT));
        };
        node.value = value.to_vec();
        node.generation = generation;
        let perms = node.perms.clone();
        self.mark_dirty(path);
        self.changes.push(Change {
            path: path.to_owned(),
            perms: vec![perms],
            removed: false,
        });
        Ok(())
    }

    fn mkdir(&mut self, domid: DomId, path: &str) -> Result<(), Errno> {
        self.touch(path);
        if self.nodes.contains_key(path) {
            // C xenstored: mkdir of an existing node succeeds, if visible.
            return self.get(domid, path, Need::Read).map(|_| ());
        }
        self.create(domid, path)?;
        let perms = self
            .nodes
            .get(path)
            .map(|n| n.perms.clone())
            .unwrap_or_default();
        self.changes.push(Change {
            path: path.to_owned(),
            perms: vec![perms],
            removed: false,
        });
        Ok(())
    }

    fn rm(&mut self, domid: DomId, path: &str) -> Result<(), Errno> {
        if path == "/" {
            return Err(Errno(libc::EINVAL));
        }
        self.touch(path);
        if !self.nodes.contains_key(path) {
            // C xenstored: removing a missing node whose parent exists succeeds.
            let par = parent(path).unwrap_or("/");
            self.touch(par);
            return match self.nodes.get(par) {
                Some(n) if self.allowed(&n.perms, domid, Need::Read) => Ok(()),
                Some(_) => Err(Errno(libc::EACCES)),
                None => Err(self.missing(domid, path)),
            };
        }
        let perms = self.get(domid, path, Need::Write)?.perms.clone();
        let doomed: Vec<String> = self
            .nodes
            .range::<_, str>((Bound::Included(path), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(path))
            .filter(|k| is_at_or_below(k, path))
            .map(|k| k.to_string())
            .collect();
        for d in &doomed {
            self.touch(d);
            self.take(d);
            self.mark_dirty(d);
        }
        let par = parent(path).unwrap_or("/").to_owned();
        self.touch(&par);
        let generation = self.stamp();
        if let Some(p) = self.node_mut(&par) {
            p.children.remove(basename(path));
            p.generation = generation;
        }
        self.mark_dirty(&par);
        self.changes.push(Change {
            path: path.to_owned(),
            perms: vec![perms],
            removed: true,
        });
        Ok(())
    }

    fn set_perms(&mut self, domid: DomId, path: &str, perms: Vec<XsPerm>) -> Result<(), Errno> {
        if perms.is_empty() || (domid != 0 && perms.len() > self.quotas.perms_per_node) {
            return Err(Errno(libc::EINVAL));
        }
        let old = self.get(domid, path, Need::Owner)?.perms.clone();
        let new_owner = perms[0].domid;
        let old_owner = old.first().map(|o| o.domid);
        if domid != 0
            && Some(new_owner) != old_owner
            && self.owned_by(new_owner) >= self.quotas.nodes_per_domain
        {
            return Err(Errno(libc::ENOSPC));
        }
        let generation = self.stamp();
        if let Some(mut n) = self.nodes.get(path).map(|n| Node::clone(n)) {
            n.perms = perms.clone();
            n.generation = generation;
            self.put(path, Arc::new(n));
        }
        self.mark_dirty(path);
        // Both those who could see the node and those who now can are told.
        self.changes.push(Change {
            path: path.to_owned(),
            perms: vec![old, perms],
            removed: false,
        });
        Ok(())
    }
}

/// What a request can ask of the store, with its arguments parsed.
#[derive(Debug)]
pub enum Op<'a> {
    Read(&'a str),
    Write(&'a str, &'a [u8]),
    Mkdir(&'a str),
    Rm(&'a str),
    Directory(&'a str),
    /// A listing with the node's generation, for `XS_DIRECTORY_PART`.
    DirectoryPart(&'a str),
    GetPerms(&'a str),
    SetPerms(&'a str, Vec<XsPerm>),
}

/// A successful operation's result.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Ok,
    Value(Vec<u8>),
    /// Children's names, each NUL-terminated (the wire form).
    Names(Vec<u8>),
    /// A listing and the node's generation.
    NamesAt(u64, Vec<String>),
    /// A ready reply payload.
    Part(Vec<u8>),
    Perms(Vec<XsPerm>),
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty store holding `/`, `/local` and `/local/domain`, dom0's.
    pub fn new() -> Self {
        Self::with_quotas(Quotas::default())
    }

    /// An empty store enforcing `quotas`.
    pub fn with_quotas(quotas: Quotas) -> Self {
        let mut tree = Tree::new();
        tree.quotas = quotas;
        // dom0 may create anything; these cannot fail.
        let _ = tree.mkdir(0, "/local/domain");
        tree.changes.clear();
        Store {
            tree,
            transactions: HashMap::new(),
            next_tx: 1,
            watches: Vec::new(),
            fires: Vec::new(),
            introduced: BTreeSet::new(),
        }
    }

    /// Runs `op` for `caller`, inside transaction `tx` unless it is 0.
    pub fn op(&mut self, caller: Caller, tx: u32, op: Op<'_>) -> Result<Answer, Errno> {
        let domid = caller.domid;
        let tree = if tx == 0 {
            &mut self.tree
        } else {
            match self.transactions.get_mut(&tx) {
                Some(t) if t.conn == caller.conn => &mut t.tree,
                _ => return Err(Errno(libc::ENOENT)),
            }
        };
        let abs = |p: &str| canonicalize(domid, p);
        let answer = match op {
            Op::Read(p) => Answer::Value(tree.read(domid, &abs(p)?)?),
            Op::Write(p, v) => tree.write(domid, &abs(p)?, v).map(|()| Answer::Ok)?,
            Op::Mkdir(p) => tree.mkdir(domid, &abs(p)?).map(|()| Answer::Ok)?,
            Op::Rm(p) => tree.rm(domid, &abs(p)?).map(|()| Answer::Ok)?,
            Op::Directory(p) => Answer::Names(tree.directory(domid, &abs(p)?)?),
            Op::DirectoryPart(p) => {
                let (generation, names) = tree.directory_generation(domid, &abs(p)?)?;
                Answer::NamesAt(generation, names)
            }
            Op::GetPerms(p) => Answer::Perms(tree.get_perms(domid, &abs(p)?)?),
            Op::SetPerms(p, perms) => tree
                .set_perms(domid, &abs(p)?, perms)
                .map(|()| Answer::Ok)?,
        };
        if tx == 0 {
            self.fire_changes();
        }
        Ok(answer)
    }

    /// `XS_TRANSACTION_START`.
    pub fn transaction_start(&mut self, caller: Caller) -> Result<u32, Errno> {
        if self
            .transactions
            .values()
            .filter(|t| t.conn == caller.conn)
            .count()
            >= self.tree.quotas.transactions_per_conn
            && caller.domid != 0
        {
            return Err(Errno(libc::ENOSPC));
        }
        let mut id = self.next_tx;
        while id == 0 || self.transactions.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_tx = id.wrapping_add(1);
        let mut tree = self.tree.clone();
        tree.log = Some(TxLog::default());
        tree.changes.clear();
        self.transactions.insert(
            id,
            Transaction {
                conn: caller.conn,
                tree,
            },
        );
        Ok(id)
    }

    /// `XS_TRANSACTION_END`: commits (or aborts) transaction `tx`.
    pub fn transaction_end(&mut self, caller: Caller, tx: u32, commit: bool) -> Result<(), Errno> {
        match self.transactions.get(&tx) {
            Some(t) if t.conn == caller.conn => {}
            _ => return Err(Errno(libc::ENOENT)),
        }
        let Some(t) = self.transactions.remove(&tx) else {
            return Err(Errno(libc::ENOENT));
        };
        if !commit {
            return Ok(());
        }
        let Tree {
            nodes,
            log,
            changes,
            ..
        } = t.tree;
        let log = log.unwrap_or_default();
        let conflict = log
            .seen
            .iter()
            .any(|(path, g)| self.tree.nodes.get(path.as_str()).map(|n| n.generation) != *g);
        if conflict {
            return Err(Errno(libc::EAGAIN));
        }
        for path in &log.dirty {
            match nodes.get(path.as_str()) {
                Some(n) => {
                    let mut n = Node::clone(n);
                    n.generation = self.tree.stamp();
                    self.tree.put(path, Arc::new(n));
                }
                None => self.tree.take(path),
            }
        }
        self.tree.changes.extend(changes);
        self.fire_changes();
        Ok(())
    }

    /// `XS_WATCH`; fires the watch once at once.
    pub fn watch(&mut self, caller: Caller, path: &str, token: &str) -> Result<(), Errno> {
        let abs = if path.starts_with('@') {
            if path != INTRODUCE_DOMAIN && path != RELEASE_DOMAIN {
                return Err(Errno(libc::EINVAL));
            }
            path.to_owned()
        } else {
            canonicalize(caller.domid, path)?
        };
        let mine = self.watches.iter().filter(|w| w.conn == caller.conn);
        if mine.clone().any(|w| w.path == path && w.token == token) {
            return Err(Errno(libc::EEXIST));
        }
        if caller.domid != 0 && mine.count() >= self.tree.quotas.watches_per_conn {
            return Err(Errno(libc::E2BIG));
        }
        self.watches.push(Watch {
            conn: caller.conn,
            domid: caller.domid,
            path: path.to_owned(),
            abs,
            token: token.to_owned(),
        });
        self.fires.push(Fire {
            conn: caller.conn,
            path: path.to_owned(),
            token: token.to_owned(),
        });
        Ok(())
    }

    /// `XS_UNWATCH`.
    pub fn unwatch(&mut self, caller: Caller, path: &str, token: &str) -> Result<(), Errno> {
        let before = self.watches.len();
        self.watches
            .retain(|w| !(w.conn == caller.conn && w.path == path && w.token == token));
        if self.watches.len() == before {
            return Err(Errno(libc::ENOENT));
        }
        Ok(())
    }

    /// `XS_RESET_WATCHES`.
    pub fn reset_watches(&mut self, caller: Caller) {
        self.watches.retain(|w| w.conn != caller.conn);
    }

    /// Forgets a closed connection's watches and transactions.
    pub fn drop_connection(&mut self, conn: ConnId) {
        self.watches.retain(|w| w.conn != conn);
        self.transactions.retain(|_, t| t.conn != conn);
    }

    /// Creates a new domain's home, owned by it, and fires `@introduceDomain`.
    pub fn introduce_domain(&mut self, domid: DomId) {
        self.introduced.insert(domid);
        let h = home(domid);
        let dom0 = 0;
        if let Err(e) = self.tree.mkdir(dom0, &h) {
            log::error!("cannot create {h}: errno {}", e.0);
        }
        let _ = self.tree.set_perms(
            dom0,
            &h,
            vec![XsPerm {
                domid,
                access: XsPermAccess::None,
            }],
        );
        self.fire_changes();
        self.fire_special(INTRODUCE_DOMAIN);
    }

    /// Removes a departed domain's home and fires `@releaseDomain`.
    pub fn release_domain(&mut self, domid: DomId) {
        self.introduced.remove(&domid);
        let _ = self.tree.rm(0, &home(domid));
        self.fire_changes();
        self.fire_special(RELEASE_DOMAIN);
    }

    /// The quotas in force.
    pub fn quotas(&self) -> Quotas {
        self.tree.quotas
    }

    /// Changes the quotas; transactions already open keep the old ones.
    pub fn set_quotas(&mut self, quotas: Quotas) {
        self.tree.quotas = quotas;
    }

    /// `XS_INTRODUCE` of a real toolstack, which creates the domain's home
    /// itself: marks the domain introduced and fires `@introduceDomain`.
    pub fn mark_introduced(&mut self, domid: DomId) {
        self.introduced.insert(domid);
        self.fire_special(INTRODUCE_DOMAIN);
    }

    /// `XS_RELEASE` or a domain's death, with the toolstack removing its
    /// nodes: forgets the domain and fires `@releaseDomain`.
    pub fn mark_released(&mut self, domid: DomId) {
        self.introduced.remove(&domid);
        self.fire_special(RELEASE_DOMAIN);
    }

    /// Fires `@releaseDomain` without forgetting anyone (C xenstored does so
    /// on every `VIRQ_DOM_EXC`, so that toolstacks re-check their domains).
    pub fn fire_release(&mut self) {
        self.fire_special(RELEASE_DOMAIN);
    }

    /// `XS_SET_TARGET`: `domid` (a device model, say) acts for `target`,
    /// with an owner's rights on the nodes `target` owns.
    pub fn set_target(&mut self, domid: DomId, target: DomId) {
        self.tree.targets.insert(domid, target);
    }

    /// Forgets what `domid` acted for, and who acted for it.
    pub fn clear_target(&mut self, domid: DomId) {
        self.tree.targets.retain(|d, t| *d != domid && *t != domid);
    }

    /// Domains introduced and not released.
    pub fn introduced(&self) -> impl Iterator<Item = DomId> + '_ {
        self.introduced.iter().copied()
    }

    /// `XS_IS_DOMAIN_INTRODUCED`.
    pub fn is_introduced(&self, domid: DomId) -> bool {
        self.introduced.contains(&domid)
    }

    /// The watch events to send, oldest first.
    pub fn take_fires(&mut self) -> Vec<Fire> {
        std::mem::take(&mut self.fires)
    }

    fn fire_special(&mut self, name: &str) {
        for w in self.watches.iter().filter(|w| w.abs == name) {
            self.fires.push(Fire {
                conn: w.conn,
                path: name.to_owned(),
                token: w.token.clone(),
            });
        }
    }

    fn fire_changes(&mut self) {
        for c in std::mem::take(&mut self.tree.changes) {
            for w in &self.watches {
                if w.abs.starts_with('@')
                    || !c
                        .perms
                        .iter()
                        .any(|p| self.tree.allowed(p, w.domid, Need::Read))
                {
                    continue;
                }
                let event_abs = if is_at_or_below(&c.path, &w.abs) {
                    c.path.clone()
                } else if c.removed && is_at_or_below(&w.abs, &c.path) {
                    // The watched node went away with an ancestor.
                    w.abs.clone()
                } else {
                    continue;
                };
                self.fires.push(Fire {
                    conn: w.conn,
                    path: event_path(w, &event_abs),
                    token: w.token.clone(),
                });
            }
        }
    }
}

/// The path to report to watch `w` for a change at `abs`: relative if the
/// watch was registered relative, as C xenstored does.
fn event_path(w: &Watch, abs: &str) -> String {
    if w.path.starts_with('/') {
        return abs.to_owned();
    }
    let prefix = format!("{}/", home(w.domid));
    abs.strip_prefix(&prefix)
        .map_or_else(|| abs.to_owned(), str::to_owned)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const DOM0: Caller = Caller {
        conn: 100,
        domid: 0,
    };
    const DOM1: Caller = Caller {
        conn: 101,
        domid: 1,
    };
    const DOM2: Caller = Caller {
        conn: 102,
        domid: 2,
    };

    fn store() -> Store {
        let mut s = Store::new();
        s.introduce_domain(1);
        s.introduce_domain(2);
        s
    }

    fn perm(domid: DomId, access: XsPermAccess) -> XsPerm {
        XsPerm { domid, access }
    }

    #[test]
    fn paths_are_validated_and_made_absolute() {
        assert_eq!(
            canonicalize(3, "device/vif").unwrap(),
            "/local/domain/3/device/vif"
        );
        assert_eq!(canonicalize(3, "/").unwrap(), "/");
        for bad in [
            "",
            "/a/",
            "/a//b",
            "/a b",
            "/a\u{e9}",
            "a/../b",
            &"x".repeat(XENSTORE_REL_PATH_MAX + 1),
        ] {
            assert!(canonicalize(3, bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn write_read_directory_rm() {
        let mut s = store();
        s.op(DOM1, 0, Op::Write("device/vif/0/state", b"1"))
            .unwrap();
        assert_eq!(
            s.op(DOM1, 0, Op::Read("/local/domain/1/device/vif/0/state"))
                .unwrap(),
            Answer::Value(b"1".to_vec())
        );
        assert_eq!(
            s.op(DOM1, 0, Op::Directory("device/vif")).unwrap(),
            Answer::Names(b"0\0".to_vec())
        );
        s.op(DOM1, 0, Op::Rm("device")).unwrap();
        assert_eq!(
            s.op(DOM1, 0, Op::Read("device/vif/0/state")),
            Err(Errno(libc::ENOENT))
        );
        assert_eq!(
            s.op(DOM1, 0, Op::Rm("device")),
            Ok(Answer::Ok),
            "removing a missing child succeeds"
        );
        assert_eq!(s.op(DOM0, 0, Op::Rm("/")), Err(Errno(libc::EINVAL)));
    }

    #[test]
    fn permissions_are_enforced_per_domain() {
        let mut s = store();
        s.op(DOM1, 0, Op::Write("secret", b"x")).unwrap();
        assert_eq!(
            s.op(DOM2, 0, Op::Read("/local/domain/1/secret")),
            Err(Errno(libc::EACCES))
        );
        assert_eq!(
            s.op(DOM2, 0, Op::Write("/local/domain/1/secret", b"y")),
            Err(Errno(libc::EACCES))
        );
        assert_eq!(
            s.op(DOM2, 0, Op::Write("/local/domain/1/new", b"y")),
            Err(Errno(libc::EACCES))
        );
        assert_eq!(
            s.op(DOM2, 0, Op::Read("/local/domain/1/nothing")),
            Err(Errno(libc::EACCES)),
            "no existence leak"
        );
        assert!(
            s.op(DOM0, 0, Op::Read("/local/domain/1/secret")).is_ok(),
            "dom0 reads anything"
        );
        let p = vec![perm(1, XsPermAccess::None), perm(2, XsPermAccess::Read)];
        assert_eq!(
            s.op(DOM2, 0, Op::SetPerms("/local/domain/1/secret", p.clone())),
            Err(Errno(libc::EACCES))
        );
        s.op(DOM1, 0, Op::SetPerms("secret", p.clone())).unwrap();
        assert_eq!(
            s.op(DOM2, 0, Op::Read("/local/domain/1/secret")).unwrap(),
            Answer::Value(b"x".to_vec())
        );
        assert_eq!(
            s.op(DOM2, 0, Op::Write("/local/domain/1/secret", b"y")),
            Err(Errno(libc::EACCES))
        );
        assert_eq!(
            s.op(DOM2, 0, Op::GetPerms("/local/domain/1/secret"))
                .unwrap(),
            Answer::Perms(p)
        );
        // Children inherit permissions and belong to their creator.
        s.op(
            DOM1,
            0,
            Op::SetPerms(
                "/local/domain/1",
                vec![perm(1, XsPermAccess::None), perm(2, XsPermAccess::Write)],
            ),
        )
        .unwrap();
        s.op(DOM2, 0, Op::Write("/local/domain/1/from2", b"hi"))
            .unwrap();
        let Answer::Perms(p) = s
            .op(DOM0, 0, Op::GetPerms("/local/domain/1/from2"))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(p[0].domid, 2);
    }

    #[test]
    fn quota_limits_unprivileged_domains() {
        let mut s = store();
        let mut failed = None;
        for i in 0..=MAX_NODES_PER_DOMAIN {
            if let Err(e) = s.op(DOM1, 0, Op::Write(&format!("n{i}"), b"")) {
                failed = Some(e);
                break;
            }
        }
        assert_eq!(failed, Some(Errno(libc::ENOSPC)));
    }

    /// The per-domain node counts kept incrementally match a recount.
    fn assert_owner_counts(s: &Store) {
        let mut counted: HashMap<DomId, usize> = HashMap::new();
        for n in s.tree.nodes.values() {
            *counted.entry(n.perms[0].domid).or_default() += 1;
        }
        assert_eq!(s.tree.owned, counted);
    }

    #[test]
    fn owner_counts_follow_random_operations_and_commits() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut s = store();
        let callers = [DOM0, DOM1, DOM2];
        let mut open: Vec<(Caller, u32)> = Vec::new();
        for _ in 0..5000 {
            let caller = callers[rng.gen_range(0..3)];
            let path = format!(
                "/local/domain/{}/{}/{}",
                rng.gen_range(0..3),
                rng.gen_range(0..4),
                rng.gen_range(0..4)
            );
            let tx = match rng.gen_range(0..10) {
                0 => {
                    if let Ok(t) = s.transaction_start(caller) {
                        open.push((caller, t));
                    }
                    continue;
                }
                1 if !open.is_empty() => {
                    let (c, t) = open.swap_remove(rng.gen_range(0..open.len()));
                    let _ = s.transaction_end(c, t, rng.gen_bool(0.8));
                    assert_owner_counts(&s);
                    continue;
                }
                2 | 3 if !open.is_empty() => {
                    let (c, t) = open[rng.gen_range(0..open.len())];
                    if c.conn != caller.conn {
                        continue;
                    }
                    t
                }
                _ => 0,
            };
            let _ = match rng.gen_range(0..4) {
                0 => s.op(caller, tx, Op::Write(&path, b"v")),
                1 => s.op(caller, tx, Op::Mkdir(&path)),
                2 => s.op(caller, tx, Op::Rm(&path[..path.len() - 2])),
                _ => s.op(
                    caller,
                    tx,
                    Op::SetPerms(&path, vec![perm(rng.gen_range(0..3), XsPermAccess::Read)]),
                ),
            };
            assert_owner_counts(&s);
        }
    }

    #[test]
    fn transactions_isolate_and_detect_conflicts() {
        let mut s = store();
        s.op(DOM1, 0, Op::Write("a", b"0")).unwrap();
        let t = s.transaction_start(DOM1).unwrap();
        s.op(DOM1, t, Op::Write("a", b"1")).unwrap();
        assert_eq!(
            s.op(DOM1, 0, Op::Read("a")).unwrap(),
            Answer::Value(b"0".to_vec()),
            "not visible before commit"
        );
        assert_eq!(
            s.op(DOM2, t, Op::Read("/local/domain/1/a")),
            Err(Errno(libc::ENOENT)),
            "not another's tx"
        );
        s.transaction_end(DOM1, t, true).unwrap();
        assert_eq!(
            s.op(DOM1, 0, Op::Read("a")).unwrap(),
            Answer::Value(b"1".to_vec())
        );

        let t = s.transaction_start(DOM1).unwrap();
        s.op(DOM1, t, Op::Read("a")).unwrap();
        s.op(DOM1, t, Op::Write("b", b"from tx")).unwrap();
        s.op(DOM0, 0, Op::Write("/local/domain/1/a", b"2")).unwrap();
        assert_eq!(s.transaction_end(DOM1, t, true), Err(Errno(libc::EAGAIN)));
        assert_eq!(
            s.op(DOM1, 0, Op::Read("b")),
            Err(Errno(libc::ENOENT)),
            "a failed commit changes nothing"
        );

        // A transaction creating a child conflicts with a concurrent child.
        let t = s.transaction_start(DOM1).unwrap();
        s.op(DOM1, t, Op::Write("dir/x", b"")).unwrap();
        s.op(DOM1, 0, Op::Write("dir/y", b"")).unwrap();
        assert_eq!(s.transaction_end(DOM1, t, true), Err(Errno(libc::EAGAIN)));

        let t = s.transaction_start(DOM1).unwrap();
        s.op(DOM1, t, Op::Write("c", b"")).unwrap();
        s.transaction_end(DOM1, t, false).unwrap();
        assert_eq!(
            s.op(DOM1, 0, Op::Read("c")),
            Err(Errno(libc::ENOENT)),
            "aborted"
        );
        assert_eq!(
            s.transaction_end(DOM1, t, true),
            Err(Errno(libc::ENOENT)),
            "already ended"
        );
    }

    #[test]
    fn watches_fire_on_registration_changes_and_removal() {
        let mut s = store();
        s.watch(DOM1, "backend", "tok").unwrap();
        s.watch(DOM0, "/local/domain/1/backend/vif/0", "abs")
            .unwrap();
        assert_eq!(s.watch(DOM1, "backend", "tok"), Err(Errno(libc::EEXIST)));
        let f = s.take_fires();
        assert_eq!(
            f[0],
            Fire {
                conn: DOM1.conn,
                path: "backend".into(),
                token: "tok".into()
            }
        );
        s.op(DOM1, 0, Op::Write("backend/vif/0/state", b"4"))
            .unwrap();
        let f = s.take_fires();
        assert!(f.contains(&Fire {
            conn: DOM1.conn,
            path: "backend/vif/0/state".into(),
            token: "tok".into()
        }));
        assert!(f.contains(&Fire {
            conn: DOM0.conn,
            path: "/local/domain/1/backend/vif/0/state".into(),
            token: "abs".into()
        }));
        s.op(DOM1, 0, Op::Write("other", b"")).unwrap();
        assert!(s.take_fires().is_empty(), "changes elsewhere do not fire");
        s.op(DOM1, 0, Op::Rm("backend")).unwrap();
        let f = s.take_fires();
        assert!(f.contains(&Fire {
            conn: DOM0.conn,
            path: "/local/domain/1/backend/vif/0".into(),
            token: "abs".into()
        }));
        // Domain 2 may not see domain 1's nodes, so its watch stays quiet.
        s.watch(DOM2, "/local/domain/1", "spy").unwrap();
        s.take_fires();
        s.op(DOM1, 0, Op::Write("x", b"")).unwrap();
        assert!(s.take_fires().iter().all(|f| f.conn != DOM2.conn));
        // Transaction changes fire at commit only.
        let t = s.transaction_start(DOM1).unwrap();
        s.op(DOM1, t, Op::Write("backend/y", b"")).unwrap();
        assert!(s.take_fires().is_empty());
        s.transaction_end(DOM1, t, true).unwrap();
        assert_eq!(s.take_fires().len(), 1);
        s.unwatch(DOM1, "backend", "tok").unwrap();
        assert_eq!(s.unwatch(DOM1, "backend", "tok"), Err(Errno(libc::ENOENT)));
    }

    #[test]
    fn a_target_domain_gets_owner_rights_on_its_targets_nodes() {
        let mut s = store();
        s.op(DOM1, 0, Op::Write("secret", b"x")).unwrap();
        let dm = Caller {
            conn: 103,
            domid: 3,
        };
        s.introduce_domain(3);
        assert_eq!(
            s.op(dm, 0, Op::Read("/local/domain/1/secret")),
            Err(Errno(libc::EACCES))
        );
        s.set_target(3, 1);
        assert_eq!(
            s.op(dm, 0, Op::Read("/local/domain/1/secret")),
            Ok(Answer::Value(b"x".to_vec()))
        );
        s.op(dm, 0, Op::Write("/local/domain/1/secret", b"y"))
            .unwrap();
        assert_eq!(
            s.op(DOM2, 0, Op::Read("/local/domain/1/secret")),
            Err(Errno(libc::EACCES)),
            "others are still kept out"
        );
        s.clear_target(1);
        assert_eq!(
            s.op(dm, 0, Op::Read("/local/domain/1/secret")),
            Err(Errno(libc::EACCES))
        );
    }

    #[test]
    fn domain_lifecycle_fires_special_watches() {
        let mut s = store();
        s.watch(DOM0, RELEASE_DOMAIN, "r").unwrap();
        s.take_fires();
        s.op(DOM1, 0, Op::Write("x", b"")).unwrap();
        s.release_domain(1);
        assert_eq!(
            s.take_fires(),
            vec![Fire {
                conn: DOM0.conn,
                path: RELEASE_DOMAIN.into(),
                token: "r".into()
            }]
        );
        assert_eq!(
            s.op(DOM0, 0, Op::Read("/local/domain/1/x")),
            Err(Errno(libc::ENOENT))
        );
        assert_eq!(s.watch(DOM0, "@bogus", "t"), Err(Errno(libc::EINVAL)));
    }
}
