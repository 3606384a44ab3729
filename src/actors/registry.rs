//! The registry hands out actor addresses by key and starts actors on demand.
//!
//! Keys are organization-prefixed (`org/{org}/repo/{repo}/task/{task}`). Every
//! actor is started on the one actors arbiter, never inside an HTTP worker. Each
//! entry carries `ActorMeta`, which `/admin/actors` reads: when the actor started,
//! when it last handled a message, and how many messages sent through a `Handle`
//! are not answered yet (its backlog).

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use actix::dev::ToEnvelope;
use actix::prelude::*;
use serde::Serialize;

use crate::util::now_ms;

/// What `/admin/actors` shows of one actor.
#[derive(Debug)]
pub struct ActorMeta {
    pub key: String,
    pub kind: &'static str,
    pub started_at: i64,
    last_activity: AtomicI64,
    in_flight: AtomicI64,
}

impl ActorMeta {
    fn new(key: String, kind: &'static str) -> Self {
        let now = now_ms();
        ActorMeta { key, kind, started_at: now, last_activity: AtomicI64::new(now), in_flight: AtomicI64::new(0) }
    }

    /// Records that the actor handled a message now.
    pub fn touch(&self) {
        self.last_activity.store(now_ms(), Ordering::Relaxed);
    }

    pub fn last_activity(&self) -> i64 {
        self.last_activity.load(Ordering::Relaxed)
    }

    /// Messages sent through a `Handle` and not answered yet.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A row of `/admin/actors`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ActorInfo {
    pub key: String,
    pub kind: &'static str,
    pub started_at: i64,
    pub last_activity_at: i64,
    pub mailbox_backlog: i64,
}

/// An actor's address plus its bookkeeping.
pub struct Handle<A: Actor> {
    pub addr: Addr<A>,
    pub meta: Arc<ActorMeta>,
}

impl<A: Actor> Clone for Handle<A> {
    fn clone(&self) -> Self {
        Handle { addr: self.addr.clone(), meta: self.meta.clone() }
    }
}

impl<A: Actor> Handle<A> {
    /// Sends `msg` and waits for the answer, counting it in the backlog meanwhile.
    pub async fn send<M>(&self, msg: M) -> Result<M::Result, MailboxError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        let _counted = InFlight::new(&self.meta);
        self.addr.send(msg).await
    }
}

/// Counts one message as in flight until dropped, even when the caller gives up
/// waiting (a client that disconnects drops the future mid-send).
struct InFlight<'a>(&'a ActorMeta);

impl<'a> InFlight<'a> {
    fn new(meta: &'a ActorMeta) -> Self {
        meta.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(meta)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Entry {
    addr: Box<dyn Any + Send>,
    meta: Arc<ActorMeta>,
}

/// Actor addresses by key. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    arbiter: ArbiterHandle,
    entries: Arc<Mutex<BTreeMap<String, Entry>>>,
}

impl Registry {
    pub fn new(arbiter: ArbiterHandle) -> Self {
        Registry { arbiter, entries: Arc::new(Mutex::new(BTreeMap::new())) }
    }

    /// The live actor under `key`, or a new one made by `make` and started on the
    /// actors arbiter.
    pub fn get_or_start<A, F>(&self, key: String, kind: &'static str, make: F) -> Handle<A>
    where
        A: Actor<Context = Context<A>>,
        F: FnOnce(Arc<ActorMeta>) -> A + Send + 'static,
    {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = entries.get(&key) {
            if let Some(addr) = entry.addr.downcast_ref::<Addr<A>>() {
                if addr.connected() {
                    return Handle { addr: addr.clone(), meta: entry.meta.clone() };
                }
            }
        }
        let meta = Arc::new(ActorMeta::new(key.clone(), kind));
        let for_actor = meta.clone();
        let addr = A::start_in_arbiter(&self.arbiter, move |_| make(for_actor));
        entries.insert(key, Entry { addr: Box::new(addr.clone()), meta: meta.clone() });
        Handle { addr, meta }
    }

    /// Forgets the actor under `key` (if any) and answers it, so the next
    /// `get_or_start` starts a fresh one even while the old one is stopping.
    pub fn detach<A>(&self, key: &str) -> Option<Handle<A>>
    where
        A: Actor<Context = Context<A>>,
    {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.remove(key)?;
        let addr = entry.addr.downcast_ref::<Addr<A>>()?;
        Some(Handle { addr: addr.clone(), meta: entry.meta.clone() })
    }

    /// The live actor under `key`, without starting one.
    pub fn get<A>(&self, key: &str) -> Option<Handle<A>>
    where
        A: Actor<Context = Context<A>>,
    {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.get(key)?;
        let addr = entry.addr.downcast_ref::<Addr<A>>()?;
        addr.connected().then(|| Handle { addr: addr.clone(), meta: entry.meta.clone() })
    }

    /// Forgets an actor that stopped; a newer actor under the same key is kept.
    pub fn remove(&self, meta: &Arc<ActorMeta>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.get(&meta.key).is_some_and(|e| Arc::ptr_eq(&e.meta, meta)) {
            entries.remove(&meta.key);
        }
    }

    /// Every registered actor, by key.
    pub fn list(&self) -> Vec<ActorInfo> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .values()
            .map(|e| ActorInfo {
                key: e.meta.key.clone(),
                kind: e.meta.kind,
                started_at: e.meta.started_at,
                last_activity_at: e.meta.last_activity(),
                mailbox_backlog: e.meta.in_flight.load(Ordering::Relaxed),
            })
            .collect()
    }

    pub fn count(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Every live actor of one type (e.g. all HistoryActors, to flush at shutdown).
    pub fn all<A>(&self) -> Vec<Handle<A>>
    where
        A: Actor<Context = Context<A>>,
    {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .values()
            .filter_map(|e| {
                let addr = e.addr.downcast_ref::<Addr<A>>()?;
                Some(Handle { addr: addr.clone(), meta: e.meta.clone() })
            })
            .collect()
    }
}

/// The key of an organization's actor.
pub fn org_key(org: &str) -> String {
    format!("org/{org}")
}

pub fn history_key(org: &str) -> String {
    format!("org/{org}/history")
}

pub fn repo_key(org: &str, repo: &str) -> String {
    format!("org/{org}/repo/{repo}")
}

pub fn task_key(org: &str, repo: &str, task: &str) -> String {
    format!("org/{org}/repo/{repo}/task/{task}")
}
