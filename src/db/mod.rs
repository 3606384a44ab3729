//! Storage: the connection pool, the generated schema, row types and read-only
//! queries. Writes live in the owning actor's `store.rs`, never here.

pub mod models;
pub mod pool;
pub mod queries;
pub mod schema;

pub use pool::{Db, DbError};
