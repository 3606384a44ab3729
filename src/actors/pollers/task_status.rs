//! TaskStatusPoller (`org/{org}/repo/{repo}/task/{task}/status-sync`): one per
//! active task, every 2 s by default. It asks the provider how the sandbox is
//! (checkout present, terminal host alive, agent running or exited, last output)
//! and sends that to the TaskActor as `StatusObserved`. It writes nothing. The
//! TaskActor answers whether the task is still active; when it is not, the poller
//! stops.
//!
//! A poller starts when a task's sandbox was just made (or its agent relaunched,
//! or Kiln restarted), the moment its status is about to change: the first poll
//! usually still sees the setup phase, and `provisioning → running` would wait a
//! whole interval. So the first polls come sooner, 100 ms after the one before,
//! doubling, until that reaches the interval (four more polls at the default 2 s).

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
                        return;
                    }
                }
                Err(e) => act.last_error = Some(e.to_string()),
            }
            if let Some(soon) = quick_poll_delay(act.polls, act.interval) {
                ctx.run_later(soon, |act, ctx| act.poll(ctx));
            }
        }));
    }
}

/// After the `polls`-th poll, how soon the next comes when sooner than the
/// interval: 100 ms, then doubling, while that is under the interval.
fn quick_poll_delay(polls: u64, interval: Duration) -> Option<Duration> {
    let soon = Duration::from_millis(100u64.checked_shl(polls.saturating_sub(1).min(20) as u32)?);
    (soon < interval).then_some(soon)
}

poller_controls!(TaskStatusPoller, "task_status", |_this| (None, None));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_polls_come_sooner_doubling_up_to_the_interval() {
        let every = Duration::from_millis(2000);
        let delays: Vec<Option<u64>> = (1..=6).map(|n| quick_poll_delay(n, every).map(|d| d.as_millis() as u64)).collect();
        assert_eq!(delays, [Some(100), Some(200), Some(400), Some(800), Some(1600), None]);
        // A short interval has no quick polls; a huge poll count cannot overflow.
        assert_eq!(quick_poll_delay(1, Duration::from_millis(100)), None);
        assert_eq!(quick_poll_delay(u64::MAX, Duration::from_secs(u64::MAX / 2)), Some(Duration::from_millis(100 << 20)));
    }
}
