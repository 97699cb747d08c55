//! Durable consumers: the hub keeps the reader's place (docs/API.md §10). Consumers are shown
//! as JSON values: their figures are for people and dashboards.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{Client, Error, Page, decode, problem};

impl Client {
    /// Creates a consumer (`settings` as `PUT /v1/consumers/{name}` takes them); the same
    /// settings again are fine, other ones a `409` problem.
    pub async fn put_consumer(&self, name: &str, settings: &Value) -> Result<Value, Error> {
        let response = self
            .http
            .put(format!("{}/v1/consumers/{name}", self.base))
            .json(settings)
            .send()
            .await?;
        decode(response).await
    }

    /// A consumer with its lag figures.
    pub async fn consumer(&self, name: &str) -> Result<Value, Error> {
        decode(
            self.http
                .get(format!("{}/v1/consumers/{name}", self.base))
                .send()
                .await?,
        )
        .await
    }

    /// Every consumer (needs `admin`).
    pub async fn consumers(&self) -> Result<Value, Error> {
        decode(
            self.http
                .get(format!("{}/v1/consumers", self.base))
                .send()
                .await?,
        )
        .await
    }

    pub async fn delete_consumer(&self, name: &str) -> Result<(), Error> {
        let response = self
            .http
            .delete(format!("{}/v1/consumers/{name}", self.base))
            .send()
            .await?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(problem(response).await)
    }

    /// Moves a consumer to where a read from `since` starts; the consumer as it is then.
    pub async fn seek_consumer(&self, name: &str, since: &str) -> Result<Value, Error> {
        let response = self
            .http
            .post(format!("{}/v1/consumers/{name}/seek", self.base))
            .json(&json!({ "since": since }))
            .send()
            .await?;
        decode(response).await
    }

    /// Reads `topics` through consumer `name` (created `auto` when missing); with `wait`, a
    /// long poll. Each envelope carries its `delivery`.
    pub async fn read_consumer(
        &self,
        topics: &str,
        name: &str,
        limit: Option<usize>,
        wait: Option<Duration>,
    ) -> Result<Page, Error> {
        let mut query: Vec<(&str, String)> = vec![("consumer", name.to_owned())];
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        let mut request = self
            .http
            .get(format!("{}/v1/topics/{topics}/messages", self.base));
        if let Some(wait) = wait {
            query.push(("wait", format!("{:.3}", wait.as_secs_f64())));
            request = request.timeout(wait + Duration::from_secs(30));
        }
        decode(request.query(&query).send().await?).await
    }

    /// Acks (`action` `ack`), naks or terms messages of an explicit consumer: each
    /// `(topic, seq, delivery)`, all or none.
    pub async fn settle(
        &self,
        name: &str,
        action: &str,
        items: &[(String, u64, Option<u32>)],
    ) -> Result<(), Error> {
        let response = self
            .http
            .post(format!("{}/v1/consumers/{name}/{action}", self.base))
            .json(&json!({ "acks": ack_items(items) }))
            .send()
            .await?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(problem(response).await)
    }

    /// Settles `items` as [`Client::settle`] does, then reads up to `read` messages through
    /// the consumer in the same call (`"read": N`): one request per batch.
    pub async fn settle_and_read(
        &self,
        name: &str,
        action: &str,
        items: &[(String, u64, Option<u32>)],
        read: usize,
    ) -> Result<Page, Error> {
        let response = self
            .http
            .post(format!("{}/v1/consumers/{name}/{action}", self.base))
            .json(&json!({ "acks": ack_items(items), "read": read }))
            .send()
            .await?;
        decode(response).await
    }
}

fn ack_items(items: &[(String, u64, Option<u32>)]) -> Vec<Value> {
    items
        .iter()
        .map(|(topic, seq, delivery)| match delivery {
            Some(d) => json!({"topic": topic, "seq": seq, "delivery": d}),
            None => json!({"topic": topic, "seq": seq}),
        })
        .collect()
}
