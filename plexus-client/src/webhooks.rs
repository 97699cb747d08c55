//! Webhooks: the hub POSTs each message of its topics to a URL (docs/API.md §11). Shown as
//! JSON values, as consumers are.

use serde_json::Value;

use crate::{Client, Error, decode, problem};

impl Client {
    /// Creates a webhook (`settings` as `POST /v1/webhooks` takes them: `url`, `topics`,
    /// `since`…); the webhook as created, its `id` and `secret` included.
    pub async fn create_webhook(&self, settings: &Value) -> Result<Value, Error> {
        let response = self
            .http
            .post(format!("{}/v1/webhooks", self.base))
            .json(settings)
            .send()
            .await?;
        decode(response).await
    }

    /// Deletes a webhook and its consumer.
    pub async fn delete_webhook(&self, id: &str) -> Result<(), Error> {
        let response = self
            .http
            .delete(format!("{}/v1/webhooks/{id}", self.base))
            .send()
            .await?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(problem(response).await)
    }
}
