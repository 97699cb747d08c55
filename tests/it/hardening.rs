//! Hardening of the store (docs/SECURITY.md): on Redis a job and its events are one script,
//! so a hub killed mid-work leaves every job's state equal to its last event.

use crate::kit::Engine;

#[tokio::test]
async fn on_redis_a_job_and_its_last_event_agree_after_sigkill() {
    crate::regression::jobs_and_their_last_events_agree_after_sigkill(Engine::Redis).await;
}
