//! SandboxActor (`org/{org}/provider/{provider}/sandbox/{sandbox}`): the only
//! writer of `sandbox_instances`.
//!
//! Messages: `ProvisionSandbox` (record it as `creating`, have the provider make
//! it, then `ready` or `failed`), `RelaunchSandbox` (the agent again, in the same
//! sandbox), `DestroySandbox` (stop the agent, snapshot, remove: `destroyed`),
//! `MarkSandboxLost`, and for remote sandboxes' auto-stop `SuspendSandbox`
//! (`run_state` `stopping` → `stopped`) and `WakeSandbox` (`starting` →
//! `started`, the agent relaunched). The provider does the I/O; this actor keeps the row true.
//! Handlers are atomic, so a destroy never overlaps a relaunch. Lifecycle:
//! started on demand; stops when quiet like the other command actors.

mod store;

use std::sync::Arc;

use actix::prelude::*;

use super::registry::ActorMeta;
use super::Kiln;
use crate::error::AppResult;
use crate::providers::{
    CreateSandbox, Created, DestroySandbox as DestroyRequest, Destroyed, ResumeSandbox, SandboxHandle, SandboxProvider,
    SuspendSandbox as SuspendRequest,
};
use crate::util::now_ms;

/// Creates the sandbox for a task.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<Created>")]
pub struct ProvisionSandbox {
    pub req: CreateSandbox,
}

/// Starts the agent again (its resume command) in the existing sandbox.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<SandboxHandle>")]
pub struct RelaunchSandbox {
    pub req: ResumeSandbox,
}

/// Stops the agent, saves uncommitted work and removes the sandbox.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<Destroyed>")]
pub struct DestroySandbox {
    pub req: DestroyRequest,
}

/// Stops a remote sandbox whose task idles (or ends what is left of one that
/// was stopped outside Kiln), recording who stopped it.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<()>")]
pub struct SuspendSandbox {
    pub req: SuspendRequest,
    /// `kiln` or `daytona`.
    pub stopped_by: &'static str,
}

/// Starts a stopped remote sandbox again and relaunches the agent in it.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<SandboxHandle>")]
pub struct WakeSandbox {
    pub req: ResumeSandbox,
}

/// Records that the sandbox disappeared.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<()>")]
pub struct MarkSandboxLost {}

pub struct SandboxActor {
    kiln: Kiln,
    org: String,
    id: String,
    provider: Arc<dyn SandboxProvider>,
    meta: Arc<ActorMeta>,
}

impl SandboxActor {
    pub fn new(kiln: Kiln, org: String, id: String, provider: Arc<dyn SandboxProvider>, meta: Arc<ActorMeta>) -> Self {
        SandboxActor { kiln, org, id, provider, meta }
    }
}

impl Actor for SandboxActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        super::stop_when_idle(ctx, self.meta.clone(), self.kiln.config.tasks.actor_idle_secs);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.kiln.registry.remove(&self.meta);
    }
}

impl Handler<ProvisionSandbox> for SandboxActor {
    type Result = AtomicResponse<Self, AppResult<Created>>;

    fn handle(&mut self, msg: ProvisionSandbox, _: &mut Self::Context) -> Self::Result {
        let (kiln, org, id, provider) = (self.kiln.clone(), self.org.clone(), self.id.clone(), self.provider.clone());
        atomic!(self, async move {
            let (o, i, task, p) = (org.clone(), id.clone(), msg.req.task.clone(), provider.id().to_string());
            kiln.db.write(move |c| store::insert(c, &i, &o, &task, &p, now_ms())).await?;
            let created = provider.create(msg.req).await;
            let i = id.clone();
            match created {
                Ok(created) => {
                    let path = created.handle.path.to_string_lossy().to_string();
                    let remote = provider.capabilities().remote;
                    kiln.db
                        .write(move |c| {
                            store::set_state(c, &i, "ready", Some(&path), now_ms())?;
                            // A remote sandbox has a power state (auto-stop); a worktree none.
                            if remote {
                                store::set_run_state(c, &i, "started", None, now_ms())?;
                            }
                            Ok(())
                        })
                        .await?;
                    Ok(created)
                }
                Err(err) => {
                    kiln.db.write(move |c| store::set_state(c, &i, "failed", None, now_ms())).await?;
                    Err(err)
                }
            }
        })
    }
}

impl Handler<RelaunchSandbox> for SandboxActor {
    type Result = AtomicResponse<Self, AppResult<SandboxHandle>>;

    fn handle(&mut self, msg: RelaunchSandbox, _: &mut Self::Context) -> Self::Result {
        let (kiln, id, provider) = (self.kiln.clone(), self.id.clone(), self.provider.clone());
        atomic!(self, async move {
            let handle = provider.resume(msg.req).await?;
            let path = handle.path.to_string_lossy().to_string();
            kiln.db.write(move |c| store::set_state(c, &id, "ready", Some(&path), now_ms())).await?;
            Ok(handle)
        })
    }
}

impl Handler<DestroySandbox> for SandboxActor {
    type Result = AtomicResponse<Self, AppResult<Destroyed>>;

    fn handle(&mut self, msg: DestroySandbox, _: &mut Self::Context) -> Self::Result {
        let (kiln, id, provider) = (self.kiln.clone(), self.id.clone(), self.provider.clone());
        atomic!(self, async move {
            let i = id.clone();
            kiln.db.write(move |c| store::set_state(c, &i, "destroying", None, now_ms())).await?;
            let destroyed = provider.destroy(msg.req).await;
            let state = if destroyed.is_ok() { "destroyed" } else { "ready" };
            kiln.db.write(move |c| store::set_state(c, &id, state, None, now_ms())).await?;
            destroyed
        })
    }
}

impl Handler<SuspendSandbox> for SandboxActor {
    type Result = AtomicResponse<Self, AppResult<()>>;

    fn handle(&mut self, msg: SuspendSandbox, _: &mut Self::Context) -> Self::Result {
        let (kiln, id, provider) = (self.kiln.clone(), self.id.clone(), self.provider.clone());
        atomic!(self, async move {
            let i = id.clone();
            kiln.db.write(move |c| store::set_run_state(c, &i, "stopping", None, now_ms())).await?;
            let stopped = provider.suspend(msg.req).await;
            let (state, by) = if stopped.is_ok() { ("stopped", Some(msg.stopped_by)) } else { ("started", None) };
            kiln.db.write(move |c| store::set_run_state(c, &id, state, by, now_ms())).await?;
            stopped
        })
    }
}

impl Handler<WakeSandbox> for SandboxActor {
    type Result = AtomicResponse<Self, AppResult<SandboxHandle>>;

    fn handle(&mut self, msg: WakeSandbox, _: &mut Self::Context) -> Self::Result {
        let (kiln, id, provider) = (self.kiln.clone(), self.id.clone(), self.provider.clone());
        atomic!(self, async move {
            let i = id.clone();
            kiln.db.write(move |c| store::set_run_state(c, &i, "starting", None, now_ms())).await?;
            let woken = provider.resume(msg.req).await;
            // A failed start leaves it stopped (when and by whom kept): the next use tries again.
            let state = if woken.is_ok() { "started" } else { "stopped" };
            kiln.db.write(move |c| store::set_run_state(c, &id, state, None, now_ms())).await?;
            woken
        })
    }
}

impl Handler<MarkSandboxLost> for SandboxActor {
    type Result = AtomicResponse<Self, AppResult<()>>;

    fn handle(&mut self, _: MarkSandboxLost, _: &mut Self::Context) -> Self::Result {
        let (kiln, id) = (self.kiln.clone(), self.id.clone());
        atomic!(self, async move {
            kiln.db.write(move |c| store::set_state(c, &id, "lost", None, now_ms())).await?;
            Ok(())
        })
    }
}
