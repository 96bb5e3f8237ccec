//! The owner's client of the broker's admin API (docs/broker-protocol.md §1): register
//! and revoke datasets. Behind the `client` feature: the broker service does not need
//! it, the owner's CLI does. The one typed client for every caller (`broker register`,
//! `revoke`, the demo's and the benchmarks' local brokers).

use blindfold_protocol::errors::{ErrorBody, ErrorCode};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::server::Registration;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The call's options cannot be used (a URL that is not `https://`, a bad
    /// certificate): the caller's input.
    #[error("{0}")]
    BadInput(String),
    /// The broker could not be reached, or its reply could not be read.
    #[error("{url}: {what}")]
    Transport {
        /// The URL.
        url: String,
        /// What failed.
        what: String,
    },
    /// The broker answered with an error code (a conflict, a wrong token, ...).
    #[error("{url}: the broker answered {status} {}: {detail}", code.name())]
    Refused {
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The code.
        code: ErrorCode,
        /// The broker's explanation.
        detail: String,
    },
}

/// A connection to a broker's admin API with its admin token.
pub struct AdminClient {
    base: String,
    token: Zeroizing<String>,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl AdminClient {
    /// A client of the broker at `url` (`https://`, or `http://` to loopback with
    /// `insecure_http`), trusting only `ca_pem` when given.
    pub fn new(
        url: &str,
        token: &str,
        ca_pem: Option<&[u8]>,
        insecure_http: bool,
    ) -> Result<AdminClient, AdminError> {
        blindfold_protocol::check_broker_url(url, insecure_http).map_err(AdminError::BadInput)?;
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        if let Some(pem) = ca_pem {
            let c = reqwest::Certificate::from_pem(pem)
                .map_err(|e| AdminError::BadInput(format!("CA certificate: {e}")))?;
            b = b.tls_certs_only([c]);
        }
        let transport = |what: String| AdminError::Transport {
            url: url.into(),
            what,
        };
        Ok(AdminClient {
            base: url.trim_end_matches('/').to_owned(),
            token: Zeroizing::new(token.trim().to_owned()),
            http: b
                .build()
                .map_err(|e| transport(blindfold_protocol::error_chain(&e)))?,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| transport(e.to_string()))?,
        })
    }

    fn post(&self, path: &str, body: &impl serde::Serialize) -> Result<Value, AdminError> {
        let url = format!("{}{path}", self.base);
        let transport = |e: reqwest::Error| AdminError::Transport {
            url: url.clone(),
            what: blindfold_protocol::error_chain(&e),
        };
        self.rt.block_on(async {
            let r = self
                .http
                .post(&url)
                .bearer_auth(self.token.as_str())
                .json(body)
                .send()
                .await
                .map_err(transport)?;
            let status = r.status();
            let text = r.text().await.map_err(transport)?;
            if status.is_success() {
                return serde_json::from_str(&text).map_err(|e| AdminError::Transport {
                    url: url.clone(),
                    what: format!("reply: {e}"),
                });
            }
            let body = serde_json::from_str::<ErrorBody>(&text).ok();
            match body.as_ref().and_then(ErrorCode::from_body) {
                Some(code) => Err(AdminError::Refused {
                    url: url.clone(),
                    status: status.as_u16(),
                    code,
                    detail: body.map(|b| b.detail).unwrap_or_default(),
                }),
                None => Err(AdminError::Transport {
                    url: url.clone(),
                    what: format!("HTTP {status}"),
                }),
            }
        })
    }

    /// Registers a dataset (its key, manifest digest and version, and policy).
    pub fn register(&self, reg: &Registration) -> Result<(), AdminError> {
        self.post("/admin/v0/datasets", reg).map(drop)
    }

    /// Revokes a dataset: no release from now on, and no registration again.
    pub fn revoke(&self, dataset_id: &str) -> Result<(), AdminError> {
        self.post(
            &format!("/admin/v0/datasets/{dataset_id}/revoke"),
            &Value::Null,
        )
        .map(drop)
    }
}
