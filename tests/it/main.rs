//! Integration tests: each starts the real `kiln` binary on an ephemeral port
//! with its own data dir, and speaks HTTP and WebSocket to it.

mod common;

mod api;
mod auth;
mod bad_input;
mod browser;
mod changes;
mod cli;
mod concurrency;
mod conflicts;
mod confine;
mod dashboard;
mod dashboard_attention;
mod dashboard_autostop;
mod dashboard_session;
mod dashboard_changes;
mod dashboard_notify;
mod dashboard_conflicts;
mod dashboard_views;
mod daytona_autostop;
mod daytona_client;
mod daytona_profile;
mod daytona_provider;
mod fake_daytona;
mod fake_github;
mod fake_sandbox_agent;
mod git_lifecycle;
mod isolation;
mod lifecycle;
mod migrations;
mod notifications;
mod openapi;
mod remote_terminal;
mod reactions;
mod restart;
mod sandbox_agent;
mod sandboxes;
mod sessions;
mod single_writer;
mod stream;
mod terminal_host;
