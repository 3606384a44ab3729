//! The `daytona` provider's foundations: Daytona's REST API client (`api`) and
//! the organization's `daytona` profile, validated (`settings`). The provider
//! itself (a `SandboxProvider` that creates sandboxes on Daytona) is not built
//! yet, so tasks cannot name `daytona`: see docs/providers.md.

pub mod api;
pub mod settings;
