//! The task lifecycle as a pure function: `transition(status, input)` answers the
//! next status and the effects the TaskActor must carry out, or a refusal that
//! the API turns into 409. No I/O here.
//!
//! ```text
//! queued → provisioning → running ⇄ idle → archived
//!                  ↘ failed      ↘ stalled / interrupted (resume → provisioning)
//! any non-terminal → killed
//! ```

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    Queued,
    Provisioning,
    Running,
    Idle,
    /// The sandbox was lost while the task ran.
    Stalled,
    /// The server restarted and found no live agent.
    Interrupted,
    Failed,
    Archived,
    Killed,
}

pub const ALL_STATUSES: [TaskStatus; 9] = [
    TaskStatus::Queued,
    TaskStatus::Provisioning,
    TaskStatus::Running,
    TaskStatus::Idle,
    TaskStatus::Stalled,
    TaskStatus::Interrupted,
    TaskStatus::Failed,
    TaskStatus::Archived,
    TaskStatus::Killed,
];

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Provisioning => "provisioning",
            TaskStatus::Running => "running",
            TaskStatus::Idle => "idle",
            TaskStatus::Stalled => "stalled",
            TaskStatus::Interrupted => "interrupted",
            TaskStatus::Failed => "failed",
            TaskStatus::Archived => "archived",
            TaskStatus::Killed => "killed",
        }
    }

    /// Failed, archived and killed tasks never change again (but a failed task
    /// may still be archived, to tidy it away).
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Failed | TaskStatus::Archived | TaskStatus::Killed)
    }

    /// Whether a sandbox may exist for a task in this status.
    pub fn may_have_sandbox(self) -> bool {
        matches!(
            self,
            TaskStatus::Provisioning | TaskStatus::Running | TaskStatus::Idle | TaskStatus::Stalled | TaskStatus::Interrupted
        )
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ALL_STATUSES
            .iter()
            .copied()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown task status `{s}`"))
    }
}

/// What can happen to a task: user actions and observed facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskInput {
    /// Start provisioning a queued task.
    Provision,
    /// The sandbox is ready and the agent started.
    Provisioned,
    /// A provisioning step failed.
    ProvisionFailed { reason: String },
    /// The agent produced output (or started a turn).
    Activity,
    /// The agent has been quiet for its quiet period (or ended a turn).
    Quiet,
    /// The sandbox disappeared under a live task.
    SandboxLost,
    /// No terminal host answers for the task (it died, or the machine restarted).
    AgentGone,
    /// The agent process ended on its own (or was killed outside Kiln).
    AgentExited { code: Option<i32>, signal: Option<i32> },
    // User actions, by name in `POST …/tasks/{task}/{action}`.
    Push,
    Sync,
    Pr,
    Merge,
    Input,
    Attach,
    Switch,
    Resume,
    Archive,
    Kill,
}

/// The action names the API accepts, with their inputs.
pub const ACTIONS: &[&str] = &["push", "sync", "pr", "merge", "archive", "kill", "resume", "input", "attach", "switch"];

impl TaskInput {
    /// The input for an API action name.
    pub fn from_action(action: &str) -> Option<TaskInput> {
        Some(match action {
            "push" => TaskInput::Push,
            "sync" => TaskInput::Sync,
            "pr" => TaskInput::Pr,
            "merge" => TaskInput::Merge,
            "archive" => TaskInput::Archive,
            "kill" => TaskInput::Kill,
            "resume" => TaskInput::Resume,
            "input" => TaskInput::Input,
            "attach" => TaskInput::Attach,
            "switch" => TaskInput::Switch,
            _ => return None,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            TaskInput::Provision => "provision",
            TaskInput::Provisioned => "provisioned",
            TaskInput::ProvisionFailed { .. } => "provision_failed",
            TaskInput::Activity => "activity",
            TaskInput::Quiet => "quiet",
            TaskInput::SandboxLost => "sandbox_lost",
            TaskInput::AgentGone => "agent_gone",
            TaskInput::AgentExited { .. } => "agent_exited",
            TaskInput::Push => "push",
            TaskInput::Sync => "sync",
            TaskInput::Pr => "pr",
            TaskInput::Merge => "merge",
            TaskInput::Input => "input",
            TaskInput::Attach => "attach",
            TaskInput::Switch => "switch",
            TaskInput::Resume => "resume",
            TaskInput::Archive => "archive",
            TaskInput::Kill => "kill",
        }
    }
}

/// Work the actor must do for a transition, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Create the sandbox and launch the agent.
    CreateSandbox,
    /// Relaunch the agent with its resume command in the existing sandbox.
    RelaunchAgent,
    /// Stop the agent: SIGTERM, then SIGKILL after a grace period.
    StopAgent,
    /// Save uncommitted work to `refs/kiln/snapshots/<task>`, then remove the sandbox.
    SnapshotAndDestroySandbox,
    /// Run a git operation on the task branch.
    Git(GitOp),
    /// Write to the agent's terminal.
    SendInput,
    /// Hand the client a terminal attach target or the sandbox path.
    DescribeSandbox,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitOp {
    Push,
    Sync,
    Pr,
    Merge,
}

/// An accepted input: where the task goes and what to do on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub to: TaskStatus,
    pub effects: Vec<Effect>,
    /// Why the task is in its new status (failures), for `status_reason`.
    pub reason: Option<String>,
}

/// A refused input, answered with 409.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub from: TaskStatus,
    pub input: &'static str,
    pub message: String,
}

fn go(to: TaskStatus, effects: Vec<Effect>) -> Result<Transition, Refusal> {
    Ok(Transition { to, effects, reason: None })
}

/// The lifecycle. Every (status, input) pair not listed is refused.
pub fn transition(from: TaskStatus, input: &TaskInput) -> Result<Transition, Refusal> {
    use Effect::*;
    use TaskInput as I;
    use TaskStatus as S;
    let live = matches!(from, S::Running | S::Idle);
    match (from, input) {
        (S::Queued, I::Provision) => go(S::Provisioning, vec![CreateSandbox]),
        (S::Provisioning, I::Provisioned) => go(S::Running, vec![]),
        (S::Provisioning, I::ProvisionFailed { reason }) => {
            Ok(Transition { to: S::Failed, effects: vec![], reason: Some(reason.clone()) })
        }
        (S::Running | S::Idle, I::Activity) => go(S::Running, vec![]),
        (S::Running | S::Idle, I::Quiet) => go(S::Idle, vec![]),
        (S::Provisioning | S::Running | S::Idle, I::SandboxLost) => go(S::Stalled, vec![]),
        (S::Provisioning | S::Running | S::Idle, I::AgentGone) => Ok(Transition {
            to: S::Interrupted,
            effects: vec![],
            reason: Some("the terminal host is gone: resume to relaunch the agent".into()),
        }),
        (S::Provisioning | S::Running | S::Idle, I::AgentExited { code, signal }) => {
            let how = match (code, signal) {
                (Some(c), _) => format!("with code {c}"),
                (None, Some(s)) => format!("on signal {s}"),
                _ => "".into(),
            };
            Ok(Transition {
                to: S::Interrupted,
                effects: vec![],
                reason: Some(format!("the agent exited {how}: resume to relaunch it").replace("  ", " ")),
            })
        }
        (_, I::Push) if live => go(from, vec![Git(GitOp::Push)]),
        (_, I::Sync) if live => go(from, vec![Git(GitOp::Sync)]),
        (_, I::Pr) if live => go(from, vec![Git(GitOp::Pr)]),
        (_, I::Merge) if live => go(from, vec![Git(GitOp::Merge)]),
        (_, I::Input | I::Attach) if live => go(from, vec![if *input == I::Input { SendInput } else { DescribeSandbox }]),
        (S::Running | S::Idle | S::Stalled | S::Interrupted, I::Switch) => go(from, vec![DescribeSandbox]),
        (S::Stalled | S::Interrupted, I::Resume) => go(S::Provisioning, vec![RelaunchAgent]),
        (S::Queued | S::Failed, I::Archive) => go(S::Archived, vec![]),
        (S::Running | S::Idle | S::Stalled | S::Interrupted, I::Archive) => {
            go(S::Archived, vec![StopAgent, SnapshotAndDestroySandbox])
        }
        (S::Queued, I::Kill) => go(S::Killed, vec![]),
        (S::Provisioning | S::Running | S::Idle | S::Stalled | S::Interrupted, I::Kill) => {
            go(S::Killed, vec![StopAgent, SnapshotAndDestroySandbox])
        }
        _ => Err(Refusal { from, input: input.name(), message: refusal_message(from, input) }),
    }
}

fn refusal_message(from: TaskStatus, input: &TaskInput) -> String {
    let needs = match input {
        TaskInput::Push | TaskInput::Sync | TaskInput::Pr | TaskInput::Merge | TaskInput::Input | TaskInput::Attach => {
            "it needs a running or idle task"
        }
        TaskInput::Switch => "it needs a task with a sandbox (running, idle, stalled or interrupted)",
        TaskInput::Resume => "only stalled or interrupted tasks can be resumed",
        TaskInput::Archive => "only queued, running, idle, stalled, interrupted or failed tasks can be archived",
        TaskInput::Kill => "only a task that has not ended can be killed",
        _ => "that does not happen in this status",
    };
    format!("cannot {} a task that is {}: {}", input.name().replace('_', " "), from, needs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskStatus as S;

    fn all_inputs() -> Vec<TaskInput> {
        let mut v: Vec<TaskInput> = ACTIONS.iter().map(|a| TaskInput::from_action(a).unwrap()).collect();
        v.extend([
            TaskInput::Provision,
            TaskInput::Provisioned,
            TaskInput::ProvisionFailed { reason: "boom".into() },
            TaskInput::Activity,
            TaskInput::Quiet,
            TaskInput::SandboxLost,
            TaskInput::AgentGone,
            TaskInput::AgentExited { code: Some(3), signal: None },
        ]);
        v
    }

    /// The whole table: every status × every input, accepted ones with their
    /// target, everything else refused.
    #[test]
    fn every_status_and_input() {
        let expected = |from: S, input: &TaskInput| -> Option<S> {
            let live = matches!(from, S::Running | S::Idle);
            match input.name() {
                "provision" => (from == S::Queued).then_some(S::Provisioning),
                "provisioned" => (from == S::Provisioning).then_some(S::Running),
                "provision_failed" => (from == S::Provisioning).then_some(S::Failed),
                "activity" => live.then_some(S::Running),
                "quiet" => live.then_some(S::Idle),
                "sandbox_lost" => (live || from == S::Provisioning).then_some(S::Stalled),
                "agent_gone" | "agent_exited" => (live || from == S::Provisioning).then_some(S::Interrupted),
                "push" | "sync" | "pr" | "merge" | "input" | "attach" => live.then_some(from),
                "switch" => (live || matches!(from, S::Stalled | S::Interrupted)).then_some(from),
                "resume" => matches!(from, S::Stalled | S::Interrupted).then_some(S::Provisioning),
                "archive" => (!matches!(from, S::Provisioning | S::Archived | S::Killed)).then_some(S::Archived),
                "kill" => (!from.is_terminal()).then_some(S::Killed),
                other => panic!("untested input {other}"),
            }
        };
        let mut checked = 0;
        for from in ALL_STATUSES {
            for input in all_inputs() {
                let got = transition(from, &input);
                match expected(from, &input) {
                    Some(to) => assert_eq!(got.as_ref().map(|t| t.to), Ok(to), "{from} + {}", input.name()),
                    None => {
                        let refusal = got.expect_err(&format!("{from} + {} should be refused", input.name()));
                        assert_eq!(refusal.from, from);
                        assert!(refusal.message.contains(from.as_str()), "{}", refusal.message);
                    }
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 9 * 18);
    }

    #[test]
    fn terminal_states_never_move_except_failed_to_archived() {
        for from in [S::Archived, S::Killed, S::Failed] {
            for input in all_inputs() {
                let ok = transition(from, &input).is_ok();
                assert_eq!(ok, from == S::Failed && input == TaskInput::Archive, "{from} + {}", input.name());
            }
        }
    }

    #[test]
    fn effects_clean_up_live_sandboxes_only() {
        let kill_queued = transition(S::Queued, &TaskInput::Kill).unwrap();
        assert!(kill_queued.effects.is_empty());
        let kill_running = transition(S::Running, &TaskInput::Kill).unwrap();
        assert_eq!(kill_running.effects, vec![Effect::StopAgent, Effect::SnapshotAndDestroySandbox]);
        let archive_idle = transition(S::Idle, &TaskInput::Archive).unwrap();
        assert_eq!(archive_idle.effects, vec![Effect::StopAgent, Effect::SnapshotAndDestroySandbox]);
        assert_eq!(transition(S::Queued, &TaskInput::Provision).unwrap().effects, vec![Effect::CreateSandbox]);
        assert_eq!(transition(S::Stalled, &TaskInput::Resume).unwrap().effects, vec![Effect::RelaunchAgent]);
        let exited = transition(S::Running, &TaskInput::AgentExited { code: Some(3), signal: None }).unwrap();
        assert_eq!(exited.reason.as_deref(), Some("the agent exited with code 3: resume to relaunch it"));
        let failed = transition(S::Provisioning, &TaskInput::ProvisionFailed { reason: "no git".into() }).unwrap();
        assert_eq!(failed.reason.as_deref(), Some("no git"));
    }

    #[test]
    fn statuses_round_trip_and_refusals_read_well() {
        for s in ALL_STATUSES {
            assert_eq!(s.as_str().parse::<S>().unwrap(), s);
        }
        assert!("nope".parse::<S>().is_err());
        let r = transition(S::Queued, &TaskInput::Push).unwrap_err();
        assert_eq!(r.message, "cannot push a task that is queued: it needs a running or idle task");
        assert!(TaskInput::from_action("explode").is_none());
    }
}
