//! The integration tests, one module per behaviour, in one test binary: each
//! separate binary linked the whole crate (rdkafka, tokio, axum, reqwest)
//! again and compiled `common` again. Run one file's tests with
//! `cargo test --test integration <file_name>`.
//!
//! All modules' tests share this process and run in parallel threads: a test
//! must not change process-wide state (environment, current directory,
//! signal handlers, a global subscriber), and one that measures the whole
//! process runs alone in a child ([`common::in_a_process_of_its_own`]).

mod common;

mod accuracy_drop_reaches_alertmanager;
mod admin_api_requires_a_token;
mod alert_events_reach_kafka_and_webhook;
mod alerts_survive_alertmanager_outage;
mod architecture;
mod bad_input_is_reported;
mod baselines_reload_without_losing_windows;
mod cardinality_stays_bounded;
mod checkpoints_are_bound_to_what_they_describe;
mod consumption_survives_broker_outage;
mod daemon_exports_drift_gauges;
mod demo_shows_drift_within_a_minute;
mod end_to_end_prometheus_alertmanager;
mod engine_on_generated_traffic;
mod group_members_share_partitions;
mod health_alerts_reach_alertmanager;
mod memory_is_known_before_start;
mod no_raw_values_leak;
mod page_lists_a_thousand_models;
mod parallel_replay_matches_one_thread;
mod prometheus_files_pass_promtool;
mod replay_flags_drifted_features;
mod replay_report_opens_in_a_browser;
mod replica_takes_over_model_state;
mod restart_restores_windows;
mod scenario_suite_meets_targets;
mod secrets_never_reach_output;
mod shipped_samples_are_reproducible;
mod short_soak_is_clean;
mod sigterm_commits_offsets;
mod slow_consumer_leaves_the_backlog_in_kafka;
