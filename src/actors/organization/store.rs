//! Writes to `organizations`, `provider_profiles` and `api_tokens`. Only the
//! OrganizationActor calls these.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;

use super::ProviderProfileView;
use crate::db::models::{ApiToken, Organization};
use crate::db::schema::{api_tokens, organizations, provider_profiles};

pub(super) fn insert_organization(conn: &mut SqliteConnection, row: &Organization) -> QueryResult<()> {
    diesel::insert_into(organizations::table).values(row).execute(conn).map(|_| ())
}

pub(super) fn update_display_name(
    conn: &mut SqliteConnection,
    org: &str,
    display_name: &str,
    now: i64,
) -> QueryResult<Option<Organization>> {
    diesel::update(organizations::table.find(org))
        .set((organizations::display_name.eq(display_name), organizations::updated_at.eq(now)))
        .returning(Organization::as_returning())
        .get_result(conn)
        .optional()
}

/// Deletes the organization; its tokens and provider profiles go with it.
pub(super) fn delete_organization(conn: &mut SqliteConnection, org: &str) -> QueryResult<bool> {
    diesel::delete(organizations::table.find(org)).execute(conn).map(|n| n > 0)
}

pub(super) fn insert_token(conn: &mut SqliteConnection, row: &ApiToken) -> QueryResult<()> {
    diesel::insert_into(api_tokens::table).values(row).execute(conn).map(|_| ())
}

pub(super) fn revoke_token(conn: &mut SqliteConnection, org: &str, id: &str, now: i64) -> QueryResult<Option<ApiToken>> {
    diesel::update(
        api_tokens::table
            .filter(api_tokens::organization.eq(org))
            .filter(api_tokens::id.eq(id))
            .filter(api_tokens::revoked_at.is_null()),
    )
    .set(api_tokens::revoked_at.eq(now))
    .returning(ApiToken::as_returning())
    .get_result(conn)
    .optional()
}

/// Replaces the profile's config and merges `secrets` into the stored ones (a
/// `null` value removes a secret).
pub(super) fn upsert_provider_profile(
    conn: &mut SqliteConnection,
    org: &str,
    provider: &str,
    config: serde_json::Map<String, serde_json::Value>,
    secrets: serde_json::Map<String, serde_json::Value>,
    now: i64,
) -> QueryResult<ProviderProfileView> {
    let existing: Option<String> = provider_profiles::table
        .find((org, provider))
        .select(provider_profiles::secrets)
        .first(conn)
        .optional()?;
    let mut merged: serde_json::Map<String, serde_json::Value> =
        existing.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
    for (key, value) in secrets {
        if value.is_null() {
            merged.remove(&key);
        } else {
            merged.insert(key, value);
        }
    }
    let config_text = serde_json::Value::Object(config).to_string();
    let secrets_text = serde_json::Value::Object(merged).to_string();
    diesel::insert_into(provider_profiles::table)
        .values((
            provider_profiles::organization.eq(org),
            provider_profiles::provider.eq(provider),
            provider_profiles::config.eq(&config_text),
            provider_profiles::secrets.eq(&secrets_text),
            provider_profiles::updated_at.eq(now),
        ))
        .on_conflict((provider_profiles::organization, provider_profiles::provider))
        .do_update()
        .set((
            provider_profiles::config.eq(&config_text),
            provider_profiles::secrets.eq(&secrets_text),
            provider_profiles::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(ProviderProfileView::from_row(provider, &config_text, &secrets_text, now))
}
