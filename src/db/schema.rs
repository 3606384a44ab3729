// @generated shape: kept in step with migrations/ (see diesel.toml). `events.id`
// is read as BigInt because SQLite rowids are 64-bit.

diesel::table! {
    api_tokens (id) {
        id -> Text,
        organization -> Text,
        name -> Text,
        token_hash -> Text,
        created_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    branches (repo_id, name) {
        repo_id -> Integer,
        name -> Text,
        head_sha -> Text,
        ahead -> Nullable<Integer>,
        behind -> Nullable<Integer>,
        updated_at -> BigInt,
        dirty_files -> Nullable<Integer>,
    }
}

diesel::table! {
    events (id) {
        id -> BigInt,
        organization -> Text,
        repo -> Nullable<Text>,
        task -> Nullable<Text>,
        kind -> Text,
        at -> BigInt,
        data -> Text,
        session -> Nullable<Text>,
    }
}

diesel::table! {
    inbox_entries (id) {
        id -> BigInt,
        organization -> Text,
        kind -> Text,
        repo -> Nullable<Text>,
        task -> Nullable<Text>,
        title -> Nullable<Text>,
        data -> Text,
        at -> BigInt,
        read_at -> Nullable<BigInt>,
        read_by -> Nullable<Text>,
    }
}

diesel::table! {
    notification_attempts (delivery_id, attempt) {
        delivery_id -> Text,
        attempt -> Integer,
        at -> BigInt,
        status_code -> Nullable<Integer>,
        error -> Nullable<Text>,
        duration_ms -> BigInt,
    }
}

diesel::table! {
    notification_cursors (organization) {
        organization -> Text,
        last_event -> BigInt,
    }
}

diesel::table! {
    notification_deliveries (id) {
        id -> Text,
        organization -> Text,
        webhook_id -> Text,
        event_id -> Nullable<BigInt>,
        kind -> Text,
        body -> Text,
        status -> Text,
        attempts -> Integer,
        next_attempt_at -> BigInt,
        last_error -> Nullable<Text>,
        created_at -> BigInt,
        finished_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    notification_webhooks (id) {
        id -> Text,
        organization -> Text,
        name -> Text,
        url -> Text,
        format -> Text,
        kinds -> Text,
        secret -> Text,
        after_event -> BigInt,
        created_at -> BigInt,
        created_by -> Nullable<Text>,
        enabled -> Bool,
    }
}

diesel::table! {
    organizations (name) {
        name -> Text,
        display_name -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    provider_profiles (organization, provider) {
        organization -> Text,
        provider -> Text,
        config -> Text,
        secrets -> Text,
        updated_at -> BigInt,
    }
}

diesel::table! {
    pull_requests (repo_id, number) {
        repo_id -> Integer,
        number -> Integer,
        state -> Text,
        draft -> Bool,
        title -> Text,
        url -> Text,
        head_ref -> Text,
        head_sha -> Text,
        base_ref -> Text,
        mergeable -> Nullable<Bool>,
        ci_state -> Nullable<Text>,
        review_decision -> Nullable<Text>,
        updated_at -> BigInt,
        checks -> Nullable<Text>,
    }
}

diesel::table! {
    repos (id) {
        id -> Integer,
        organization -> Text,
        name -> Text,
        source -> Text,
        source_kind -> Text,
        mirror_path -> Text,
        default_branch -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
        setup -> Text,
        settings -> Text,
        credential_user -> Nullable<Text>,
        credential_secret -> Nullable<Text>,
        registered_by -> Text,
    }
}

diesel::table! {
    sandbox_instances (id) {
        id -> Text,
        organization -> Text,
        task_id -> Text,
        provider -> Text,
        state -> Text,
        path -> Nullable<Text>,
        remote_id -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
        run_state -> Nullable<Text>,
        auto_stopped_at -> Nullable<BigInt>,
        stopped_by -> Nullable<Text>,
    }
}

diesel::table! {
    task_conflicts (repo_id, task_id, other) {
        repo_id -> Integer,
        task_id -> Text,
        other -> Text,
        files -> Text,
        since -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    task_issues (task_id) {
        task_id -> Text,
        repo_id -> Integer,
        issue_number -> BigInt,
        url -> Text,
        title -> Text,
        comment_state -> Text,
        comment_attempts -> Integer,
        comment_url -> Nullable<Text>,
        created_at -> BigInt,
    }
}

diesel::table! {
    task_reactions (task_id, cause, cause_key) {
        task_id -> Text,
        cause -> Text,
        cause_key -> Text,
        attempt -> Integer,
        outcome -> Text,
        fired_at -> BigInt,
    }
}

diesel::table! {
    task_runtime (task_id) {
        task_id -> Text,
        pid -> Nullable<Integer>,
        exit_code -> Nullable<Integer>,
        started_at -> Nullable<BigInt>,
        last_output_at -> Nullable<BigInt>,
        updated_at -> BigInt,
        ci_feedback_count -> Integer,
        pushed_branch -> Nullable<Text>,
        pushed_sha -> Nullable<Text>,
        confined -> Nullable<Bool>,
        confine_abi -> Nullable<Integer>,
        log_error -> Nullable<Text>,
    }
}

diesel::table! {
    task_sessions (id) {
        id -> Text,
        task_id -> Text,
        agent -> Text,
        acp_server_id -> Text,
        remote_session_id -> Nullable<Text>,
        status -> Text,
        last_remote_seq -> BigInt,
        created_at -> BigInt,
        updated_at -> BigInt,
        mode -> Nullable<Text>,
        model -> Nullable<Text>,
        stop_reason -> Nullable<Text>,
        awaiting_input -> Bool,
        remote_epoch -> Nullable<BigInt>,
        load_session -> Bool,
        last_error -> Nullable<Text>,
        checkpoint -> Nullable<Text>,
        checkpoint_event_id -> BigInt,
    }
}

diesel::table! {
    tasks (id) {
        id -> Text,
        organization -> Text,
        repo_id -> Integer,
        title -> Text,
        description -> Text,
        base_branch -> Text,
        branch -> Text,
        agent -> Text,
        provider -> Text,
        status -> Text,
        status_reason -> Nullable<Text>,
        awaiting_input -> Bool,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    web_sessions (id_hash) {
        id_hash -> Text,
        organization -> Text,
        token_id -> Nullable<Text>,
        created_at -> BigInt,
        expires_at -> BigInt,
    }
}

diesel::table! {
    web_sign_in_codes (code_hash) {
        code_hash -> Text,
        organization -> Text,
        token_id -> Nullable<Text>,
        created_at -> BigInt,
        expires_at -> BigInt,
    }
}

diesel::joinable!(api_tokens -> organizations (organization));
diesel::joinable!(branches -> repos (repo_id));
diesel::joinable!(provider_profiles -> organizations (organization));
diesel::joinable!(pull_requests -> repos (repo_id));
diesel::joinable!(repos -> organizations (organization));
diesel::joinable!(sandbox_instances -> organizations (organization));
diesel::joinable!(sandbox_instances -> tasks (task_id));
diesel::joinable!(task_conflicts -> repos (repo_id));
diesel::joinable!(task_conflicts -> tasks (task_id));
diesel::joinable!(task_issues -> repos (repo_id));
diesel::joinable!(task_issues -> tasks (task_id));
diesel::joinable!(task_reactions -> tasks (task_id));
diesel::joinable!(task_runtime -> tasks (task_id));
diesel::joinable!(task_sessions -> tasks (task_id));
diesel::joinable!(tasks -> organizations (organization));
diesel::joinable!(tasks -> repos (repo_id));
diesel::joinable!(web_sessions -> api_tokens (token_id));
diesel::joinable!(web_sessions -> organizations (organization));
diesel::joinable!(web_sign_in_codes -> api_tokens (token_id));
diesel::joinable!(web_sign_in_codes -> organizations (organization));

diesel::allow_tables_to_appear_in_same_query!(
    api_tokens,
    branches,
    events,
    organizations,
    provider_profiles,
    pull_requests,
    repos,
    sandbox_instances,
    task_conflicts,
    task_issues,
    task_reactions,
    task_runtime,
    task_sessions,
    tasks,
    web_sessions,
    web_sign_in_codes,
);

diesel::allow_tables_to_appear_in_same_query!(notification_deliveries, notification_webhooks);
