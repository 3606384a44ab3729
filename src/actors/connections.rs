//! Live client connections opened with an organization token or a dashboard
//! session (the event stream and terminal WebSockets), so that revoking the
//! token, deleting its organization or ending the session closes them at once
//! instead of at their next reconnect.
//!
//! A WebSocket session takes a [`Ticket`] before it starts, registers it with
//! its token once it has an address, and unregisters it in `stopping()`. The
//! OrganizationActor calls [`Connections::close_token`] after it revokes a token
//! and [`Connections::close_organization`] after it deletes an organization.
//! Closing sets the ticket's `cut` flag under the lock, then sends the session
//! [`CloseRevoked`]: the session checks the flag before it sends an event or
//! output and before it forwards a keystroke, so nothing passes once the revoking
//! request is answered, even before the close frame is out.
//!
//! Connections opened with the admin token are never registered: it cannot be
//! revoked. A dashboard session of the admin is registered by its session only,
//! so signing out closes its connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;

/// Why the server closed a connection on its credential's account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// The token it was opened with was revoked.
    Token,
    /// The token's organization was deleted (and its tokens with it).
    Organization,
    /// The dashboard session it was opened with ended (signed out).
    SessionEnded,
}

impl Revoked {
    /// The WebSocket close code, documented in api.md.
    pub const fn code(self) -> u16 {
        match self {
            Revoked::Token => 4001,
            Revoked::Organization => 4004,
            Revoked::SessionEnded => 4003,
        }
    }

    /// The close frame's reason text.
    pub const fn reason(self) -> &'static str {
        match self {
            Revoked::Token => "token revoked",
            Revoked::Organization => "organization deleted",
            Revoked::SessionEnded => "signed out",
        }
    }
}

/// Closes a connection whose credential was revoked: a close frame with the
/// reason's code, then stop.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct CloseRevoked {
    pub why: Revoked,
}

/// A connection's place in the registry, held by its session.
#[derive(Debug, Clone)]
pub struct Ticket {
    id: u64,
    cut: Arc<AtomicBool>,
}

impl Ticket {
    /// Whether the connection's credential was revoked: send nothing more, and
    /// forward nothing more.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

struct Entry {
    organization: String,
    /// The organization token (`None`: a session of the admin).
    token: Option<String>,
    /// The hash of the dashboard session's id, for a connection opened with one.
    session: Option<String>,
    cut: Arc<AtomicBool>,
    closer: Recipient<CloseRevoked>,
}

/// The registry of token-authenticated connections. Cheap operations under one
/// short lock; shared through `Kiln`.
#[derive(Default)]
pub struct Connections {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
}

impl Connections {
    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh ticket, for a session about to start.
    pub fn ticket(&self) -> Ticket {
        Ticket { id: self.next.fetch_add(1, Ordering::Relaxed), cut: Arc::new(AtomicBool::new(false)) }
    }

    /// Records that the connection of `ticket` was opened with `token` of
    /// `organization`, through the dashboard session `session` when it has one.
    pub fn register(
        &self,
        ticket: &Ticket,
        organization: &str,
        token: Option<&str>,
        session: Option<&str>,
        closer: Recipient<CloseRevoked>,
    ) {
        let entry = Entry {
            organization: organization.to_string(),
            token: token.map(str::to_string),
            session: session.map(str::to_string),
            cut: ticket.cut.clone(),
            closer,
        };
        self.open().insert(ticket.id, entry);
    }

    /// Forgets the connection (its session is stopping). Unknown tickets are fine.
    pub fn unregister(&self, ticket: &Ticket) {
        self.open().remove(&ticket.id);
    }

    /// Closes one registered connection (its token turned out to be revoked).
    pub fn close(&self, ticket: &Ticket, why: Revoked) {
        self.close_where(why, |id, _| id == ticket.id);
    }

    /// Closes every connection opened with the token `token_id`; answers how many.
    pub fn close_token(&self, token_id: &str) -> usize {
        self.close_where(Revoked::Token, |_, e| e.token.as_deref() == Some(token_id))
    }

    /// Closes every connection opened through the dashboard session whose id
    /// hashes to `session_hash`; answers how many.
    pub fn close_session(&self, session_hash: &str) -> usize {
        self.close_where(Revoked::SessionEnded, |_, e| e.session.as_deref() == Some(session_hash))
    }

    /// Closes every connection opened with a token of `organization`; answers how many.
    pub fn close_organization(&self, organization: &str) -> usize {
        // The admin's bearer connections stay (the admin can read a deleted
        // organization's history); an admin's dashboard session on this
        // organization is deleted with it, so its connections go too.
        self.close_where(Revoked::Organization, |_, e| e.organization == organization && (e.token.is_some() || e.session.is_some()))
    }

    fn close_where(&self, why: Revoked, matches: impl Fn(u64, &Entry) -> bool) -> usize {
        let mut open = self.open();
        let ids: Vec<u64> = open.iter().filter(|(id, e)| matches(**id, e)).map(|(id, _)| *id).collect();
        for id in &ids {
            if let Some(entry) = open.remove(id) {
                entry.cut.store(true, Ordering::SeqCst);
                entry.closer.do_send(CloseRevoked { why });
            }
        }
        ids.len()
    }

    /// Connections registered now.
    pub fn len(&self) -> usize {
        self.open().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Probe(Arc<Mutex<Vec<Revoked>>>);
    impl Actor for Probe {
        type Context = Context<Self>;
    }
    impl Handler<CloseRevoked> for Probe {
        type Result = ();
        fn handle(&mut self, msg: CloseRevoked, _: &mut Context<Self>) {
            self.0.lock().unwrap().push(msg.why);
        }
    }

    #[actix::test]
    async fn closing_cuts_only_the_matching_connections_and_forgets_them() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let probe = Probe(got.clone()).start();
        let c = Connections::default();
        let (a, b, other) = (c.ticket(), c.ticket(), c.ticket());
        c.register(&a, "acme", Some("tok_a"), None, probe.clone().recipient());
        c.register(&b, "acme", Some("tok_b"), Some("sess_b"), probe.clone().recipient());
        c.register(&other, "globex", Some("tok_g"), None, probe.clone().recipient());
        assert_eq!(c.close_token("tok_a"), 1);
        assert!(a.is_cut() && !b.is_cut() && !other.is_cut(), "the flag is set before close_token returns");
        assert_eq!(c.close_organization("acme"), 1);
        assert!(b.is_cut() && !other.is_cut());
        assert_eq!(c.close_token("tok_a"), 0, "a closed connection is forgotten");
        assert_eq!(c.close_session("sess_b"), 0, "b was closed with its organization");
        let admin = c.ticket();
        c.register(&admin, "globex", None, Some("sess_admin"), probe.clone().recipient());
        let bearer = c.ticket();
        c.register(&bearer, "globex", None, None, probe.clone().recipient());
        assert_eq!(c.close_organization("globex"), 2, "its token's and the admin's dashboard session on it, not the admin's bearer");
        assert!(admin.is_cut() && other.is_cut() && !bearer.is_cut());
        assert_eq!(c.close_session("sess_admin"), 0, "closed with its organization");
        c.unregister(&bearer);
        c.unregister(&other);
        assert!(c.is_empty());
        // Let the probe handle its mail.
        probe.send(CloseRevoked { why: Revoked::Token }).await.unwrap();
        assert_eq!(*got.lock().unwrap(), vec![Revoked::Token, Revoked::Organization, Revoked::Organization, Revoked::Organization, Revoked::Token]);
    }
}
