//! Writes to `organizations`, `provider_profiles`, `api_tokens`,
//! `web_sign_in_codes` and `web_sessions`. Only the OrganizationActor calls these.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;

use super::ProviderProfileView;
use crate::db::models::{ApiToken, Organization, SignInCode, WebSession};
use crate::db::schema::{api_tokens, organizations, provider_profiles, web_sessions, web_sign_in_codes};

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

/// Revokes the token, and in the same transaction deletes its dashboard sessions
/// and unspent sign-in codes: a session never outlives its token. Answers the
/// token and the hashes of the sessions deleted.
pub(super) fn revoke_token(
    conn: &mut SqliteConnection,
    org: &str,
    id: &str,
    now: i64,
) -> QueryResult<Option<(ApiToken, Vec<String>)>> {
    // `Db::write` runs this in one transaction.
    let Some(token) = revoke_token_row(conn, org, id, now)? else { return Ok(None) };
    diesel::delete(web_sign_in_codes::table.filter(web_sign_in_codes::token_id.eq(id))).execute(conn)?;
    let sessions = diesel::delete(web_sessions::table.filter(web_sessions::token_id.eq(id)))
        .returning(web_sessions::id_hash)
        .get_results(conn)?;
    Ok(Some((token, sessions)))
}

fn revoke_token_row(conn: &mut SqliteConnection, org: &str, id: &str, now: i64) -> QueryResult<Option<ApiToken>> {
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

/// Stores a sign-in code, first dropping the organization's expired codes and
/// sessions (nothing else cleans them up, and they are few).
pub(super) fn insert_sign_in_code(conn: &mut SqliteConnection, row: &SignInCode) -> QueryResult<()> {
    delete_expired(conn, &row.organization, row.created_at)?;
    diesel::insert_into(web_sign_in_codes::table).values(row).execute(conn).map(|_| ())
}

/// Spends a code: deletes it and answers it when it was still valid at `now`.
/// The delete is what makes a code single-use.
pub(super) fn take_sign_in_code(
    conn: &mut SqliteConnection,
    org: &str,
    code_hash: &str,
    now: i64,
) -> QueryResult<Option<SignInCode>> {
    let taken = diesel::delete(
        web_sign_in_codes::table
            .filter(web_sign_in_codes::code_hash.eq(code_hash))
            .filter(web_sign_in_codes::organization.eq(org)),
    )
    .returning(SignInCode::as_returning())
    .get_result(conn)
    .optional()?;
    Ok(taken.filter(|c| c.expires_at > now))
}

pub(super) fn insert_web_session(conn: &mut SqliteConnection, row: &WebSession) -> QueryResult<()> {
    delete_expired(conn, &row.organization, row.created_at)?;
    diesel::insert_into(web_sessions::table).values(row).execute(conn).map(|_| ())
}

/// Deletes one session (sign out); answers whether it existed.
pub(super) fn delete_web_session(conn: &mut SqliteConnection, org: &str, id_hash: &str) -> QueryResult<bool> {
    diesel::delete(
        web_sessions::table.filter(web_sessions::id_hash.eq(id_hash)).filter(web_sessions::organization.eq(org)),
    )
    .execute(conn)
    .map(|n| n > 0)
}

fn delete_expired(conn: &mut SqliteConnection, org: &str, now: i64) -> QueryResult<()> {
    diesel::delete(
        web_sign_in_codes::table
            .filter(web_sign_in_codes::organization.eq(org))
            .filter(web_sign_in_codes::expires_at.le(now)),
    )
    .execute(conn)?;
    diesel::delete(web_sessions::table.filter(web_sessions::organization.eq(org)).filter(web_sessions::expires_at.le(now)))
        .execute(conn)?;
    Ok(())
}
