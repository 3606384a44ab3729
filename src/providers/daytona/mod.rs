//! The `daytona` provider: tasks whose sandboxes are Daytona sandboxes.
//! `api` is Daytona's REST API client, `settings` the organization's validated
//! `daytona` profile, `provider` the `SandboxProvider` built on both. What works
//! and what is not built yet: docs/providers.md.

pub mod api;
pub mod provider;
pub mod settings;

pub use provider::DaytonaProvider;
