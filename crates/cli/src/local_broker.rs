//! A key broker on loopback, in this process (demo and benchmarks): TLS with its own
//! self-signed certificate, state in a scratch folder.

use std::path::{Path, PathBuf};

use blindfold_owner::{Error, SealedDataset};

/// A running local broker; stops when dropped.
pub struct LocalBroker {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// Its folder.
    pub dir: PathBuf,
    /// The certificate a client must trust.
    pub ca_pem: Vec<u8>,
    admin: String,
    /// Serves the broker until dropped.
    _rt: tokio::runtime::Runtime,
}

impl LocalBroker {
    /// Initializes a broker in `dir` and serves it on a free loopback port.
    pub fn start(dir: &Path) -> Result<Self, Error> {
        let admin = blindfold_broker::init(dir, &[]).map_err(|e| Error::Bug(e.to_string()))?;
        let state = blindfold_broker::load(dir, None, blindfold_broker::Settings::default())
            .map_err(|e| Error::Bug(e.to_string()))?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::BadInput(e.to_string()))?;
        let url = format!(
            "https://{}",
            listener
                .local_addr()
                .map_err(|e| Error::Bug(e.to_string()))?
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::Bug(e.to_string()))?;
        let bd = blindfold_broker::BrokerDir(dir.to_owned());
        let ca_pem = std::fs::read(bd.cert())
            .map_err(|e| Error::BadInput(format!("{}: {e}", bd.cert().display())))?;
        rt.spawn(async move {
            let _ = blindfold_broker::serve(state, listener, Some(&bd)).await;
        });
        Ok(LocalBroker {
            url,
            dir: dir.to_owned(),
            ca_pem,
            admin,
            _rt: rt,
        })
    }

    /// How a job reaches this broker under `job`'s name.
    pub fn fetch_options(&self, job: &str) -> blindfold_attest::FetchOptions {
        blindfold_attest::FetchOptions {
            broker: self.url.clone(),
            ca_cert_pem: Some(self.ca_pem.clone()),
            job: Some(job.into()),
            model: None,
            receipt_key: None,
            insecure_http: false,
        }
    }

    /// Registers `ds` (the owner's view of it) under `policy` (TOML) through the admin API.
    pub fn register(&self, ds: &SealedDataset, policy: &str) -> Result<String, Error> {
        let client = blindfold_broker::client::AdminClient::new(
            &self.url,
            &self.admin,
            Some(&self.ca_pem),
            false,
        )
        .map_err(|e| Error::Bug(e.to_string()))?;
        let reg = crate::broker::registration(&blindfold_owner::release(ds), policy.into());
        let id = reg.dataset_id.clone();
        client
            .register(&reg)
            .map_err(|e| Error::Bug(format!("registration failed: {e}")))?;
        Ok(id)
    }
}
