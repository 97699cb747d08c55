//! Requests forwarded as they are: a proxy in front of the hub (the sidecar) sends a method,
//! a path and headers it did not interpret, and hands the hub's status, headers and body back
//! unchanged, problems included, so its clients see exactly what the hub said.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

use crate::{ByteStream, Client, Error};

/// The hub's answer to a forwarded request: its status and headers, and its body as a stream
/// (a poll's JSON or an SSE stream alike).
pub struct Forwarded {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: ByteStream,
}

impl Client {
    /// Sends `method path_and_query` (e.g. `GET /v1/topics/a/messages?since=4`) with `headers`
    /// and `body` to the hub and returns once its answer's head arrived. `timeout` bounds the
    /// whole exchange, body included (leave it `None` for a stream). Any status is an `Ok`:
    /// only a hub that cannot be reached, or a request that cannot be made, is an `Err`.
    pub async fn forward(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(String, Vec<u8>)],
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Forwarded, Error> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| Error::Protocol(format!("{method:?} is not an HTTP method")))?;
        let mut request = self
            .http
            .request(method, format!("{}{path_and_query}", self.base));
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_slice());
        }
        if !body.is_empty() {
            request = request.body(body);
        }
        if let Some(t) = timeout {
            request = request.timeout(t);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        Ok(Forwarded {
            status,
            headers,
            body: ByteStream {
                body: response.bytes_stream().boxed(),
            },
        })
    }
}
