//! Clients of the outside world: git (and later GitHub, Daytona, sandbox-agent).

pub mod conflicts;
pub mod diff;
pub mod git;
pub mod github;
pub mod sandbox_agent;
