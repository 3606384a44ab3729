//! TaskStatusPoller (`org/{org}/repo/{repo}/task/{task}/status-sync`): one per
//! active task, every 2 s by default. It asks the provider how the sandbox is
//! (checkout present, terminal host alive, agent running or exited, last output)
//! and sends that to the TaskActor as `StatusObserved`. It writes nothing. The
//! TaskActor answers whether the task is still active; when it is not, the poller
//! stops.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::actors::registry::ActorMeta;
use crate::actors::task::StatusObserved;
use crate::actors::Kiln;
use crate::providers::{SandboxHandle, SandboxProvider};
use crate::util::now_ms;

pub struct TaskStatusPoller {
    kiln: Kiln,
    org: String,
    repo: String,
    task: String,
    handle: SandboxHandle,
    provider: Arc<dyn SandboxProvider>,
    meta: Arc<ActorMeta>,
    interval: Duration,
    timer: Option<SpawnHandle>,
    busy: bool,
    polls: u64,
    last_poll_at: Option<i64>,
    last_error: Option<String>,
}

impl TaskStatusPoller {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kiln: Kiln,
        org: String,
        repo: String,
        task: String,
        handle: SandboxHandle,
        provider: Arc<dyn SandboxProvider>,
        meta: Arc<ActorMeta>,
        interval: Duration,
    ) -> Self {
        TaskStatusPoller {
            kiln,
            org,
            repo,
            task,
            handle,
            provider,
            meta,
            interval,
            timer: None,
            busy: false,
            polls: 0,
            last_poll_at: None,
            last_error: None,
        }
    }


    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        self.busy = true;
        self.meta.touch();
        let (provider, handle) = (self.provider.clone(), self.handle.clone());
        let (kiln, org, repo, task) = (self.kiln.clone(), self.org.clone(), self.repo.clone(), self.task.clone());
        let from = self.meta.clone();
        let work = async move {
            let health = provider.health(handle).await?;
            let reply = kiln.task(&org, &repo, &task).send(StatusObserved { health, from }).await?;
            reply
        };
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| {
            act.busy = false;
            act.polls += 1;
            act.last_poll_at = Some(now_ms());
            match result {
                Ok(still_active) => {
                    act.last_error = None;
                    if !still_active {
                        ctx.stop();
                    }
                }
                Err(e) => act.last_error = Some(e.to_string()),
            }
        }));
    }
}

poller_controls!(TaskStatusPoller, "task_status", |_this| (None, None));
