//! The etcd [`Coordinator`]: automatic failover's leader key, leases, epoch counter and
//! published positions kept in etcd (v3 API; Debian's `etcd-server` 3.4 and later), as
//! Patroni keeps PostgreSQL's.
//!
//! Keys, per cluster and database (values are JSON, readable with `etcdctl get --prefix
//! /repnode/`):
//!
//! | key | bound to | what |
//! | --- | --- | --- |
//! | `/repnode/<cluster>/<db>/leader` | the leader's lease | [`LeaderRecord`] |
//! | `/repnode/<cluster>/<db>/epoch` | nothing | the highest epoch granted |
//! | `/repnode/<cluster>/<db>/commit` | nothing | the leader's last [`CommitRecord`] |
//! | `/repnode/<cluster>/<db>/members/<member>` | the member's lease | [`MemberRecord`] |
//!
//! A campaign is one etcd transaction: the leader key is created only if it does not exist
//! and the epoch counter is unchanged since it was read, and the counter is raised in the
//! same transaction, so two leaders never share an epoch (the fencing token Jepsen found
//! etcd locks unsafe without). A commit point is published only while the leader key is
//! bound to the publisher's lease (a transaction comparing the key's lease).
//!
//! ```no_run
//! use std::time::Duration;
//! use coordinator_etcd::{EtcdCoordinator, EtcdOptions};
//! use replication_core::coordinator::Coordinator;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let options = EtcdOptions::new(vec!["127.0.0.1:2379".into()], "prod");
//! let etcd = EtcdCoordinator::connect(options).await.unwrap();
//! let lease = etcd.grant_lease(Duration::from_secs(5)).await.unwrap();
//! println!("{:?}", etcd.view("app").await.unwrap().leader);
//! # }
//! ```

pub mod testing;

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use futures::StreamExt;
use replication_core::coordinator::{
    Campaign, ClusterView, CommitRecord, Coordinator, CoordinatorError, LeaderRecord, LeaderWatch,
    LeaseId, MemberRecord,
};
use replication_core::types::Epoch;
use serde::de::DeserializeOwned;

/// Client certificates for etcd's mutual TLS (PEM).
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// The CA that signed etcd's server certificates.
    pub ca_pem: Vec<u8>,
    /// This client's certificate.
    pub cert_pem: Vec<u8>,
    /// Its private key.
    pub key_pem: Vec<u8>,
}

/// How to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// `HOST:PORT` of each etcd member.
    pub endpoints: Vec<String>,
    /// The cluster's name: keys live under `/repnode/<cluster>/`.
    pub cluster: String,
    /// Mutual TLS, when etcd requires it.
    pub tls: Option<EtcdTls>,
    /// How long one call may take before it counts as unavailable.
    pub call_timeout: Duration,
}

impl EtcdOptions {
    /// Plain connections to `endpoints`, calls bounded at one second.
    pub fn new(endpoints: Vec<String>, cluster: impl Into<String>) -> EtcdOptions {
        EtcdOptions {
            endpoints,
            cluster: cluster.into(),
            tls: None,
            call_timeout: Duration::from_secs(1),
        }
    }
}

/// The coordinator, over one etcd client (cheap to clone: connections are shared).
#[derive(Clone)]
pub struct EtcdCoordinator {
    client: Client,
    prefix: String,
    call_timeout: Duration,
}

impl std::fmt::Debug for EtcdCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCoordinator")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// How many times a campaign is retried when the epoch counter moved under it.
const CAMPAIGN_ATTEMPTS: usize = 8;

impl EtcdCoordinator {
    /// Connects to etcd. The connection is made lazily and again after failures: a server
    /// starts while etcd is down, and its calls fail as unavailable until it is back.
    ///
    /// # Errors
    /// [`CoordinatorError::Unavailable`] for an endpoint that is not `HOST:PORT` or bad TLS
    /// material.
    pub async fn connect(options: EtcdOptions) -> Result<EtcdCoordinator, CoordinatorError> {
        if options.endpoints.is_empty() {
            return Err(CoordinatorError::Unavailable(
                "no etcd endpoint given".into(),
            ));
        }
        if options.cluster.is_empty() || options.cluster.contains('/') {
            return Err(CoordinatorError::Unavailable(format!(
                "bad cluster name {:?}: it must be non-empty, without '/'",
                options.cluster
            )));
        }
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let endpoints: Vec<String> = options
            .endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.call_timeout)
            .with_timeout(options.call_timeout)
            .with_keep_alive(options.call_timeout, options.call_timeout)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some(tls) = &options.tls {
            let config = TlsOptions::new()
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
            connect = connect.with_tls(config);
        }
        let client = Client::connect(endpoints, Some(connect))
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(EtcdCoordinator {
            client,
            prefix: format!("/repnode/{}/", options.cluster),
            call_timeout: options.call_timeout,
        })
    }

    fn key(&self, db: &str, what: &str) -> String {
        format!("{}{db}/{what}", self.prefix)
    }

    /// Runs one call within the timeout.
    async fn call<R>(
        &self,
        call: impl Future<Output = Result<R, etcd_client::Error>>,
    ) -> Result<R, etcd_client::Error> {
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(answer) => answer,
            Err(_) => Err(etcd_client::Error::InvalidArgs(format!(
                "no answer from etcd within {:?}",
                self.call_timeout
            ))),
        }
    }
}

fn unavailable(error: &etcd_client::Error) -> CoordinatorError {
    CoordinatorError::Unavailable(format!("etcd: {error}"))
}

/// An error of a call made under `lease`: etcd's "lease not found" means it expired.
fn lease_error(error: &etcd_client::Error, lease: LeaseId) -> CoordinatorError {
    if error.to_string().contains("lease not found") {
        CoordinatorError::LeaseExpired(lease)
    } else {
        unavailable(error)
    }
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, CoordinatorError> {
    serde_json::from_slice(kv.value()).map_err(|e| CoordinatorError::Malformed {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        reason: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Plain data structures: serializing them cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn leader_of(kv: &KeyValue) -> Result<LeaderRecord, CoordinatorError> {
    let mut leader: LeaderRecord = decode(kv)?;
    leader.lease = LeaseId(kv.lease());
    Ok(leader)
}

#[async_trait::async_trait]
impl Coordinator for EtcdCoordinator {
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, CoordinatorError> {
        let mut client = self.client.clone();
        let seconds = ttl.as_secs().max(1) as i64;
        let granted = self.call(client.lease_grant(seconds, None)).await;
        granted
            .map(|g| LeaseId(g.id()))
            .map_err(|e| unavailable(&e))
    }

    async fn renew_lease(&self, lease: LeaseId) -> Result<(), CoordinatorError> {
        let mut client = self.client.clone();
        // One keep-alive round trip: the keeper's first answer is the renewal.
        let renewed = self.call(client.lease_keep_alive(lease.0)).await;
        renewed.map(|_| ()).map_err(|e| lease_error(&e, lease))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), CoordinatorError> {
        let mut client = self.client.clone();
        match self.call(client.lease_revoke(lease.0)).await {
            Ok(_) => Ok(()),
            Err(error) => match lease_error(&error, lease) {
                CoordinatorError::LeaseExpired(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn campaign(
        &self,
        db: &str,
        member: &str,
        address: &str,
        lease: LeaseId,
        above: Epoch,
    ) -> Result<Campaign, CoordinatorError> {
        let leader_key = self.key(db, "leader");
        let epoch_key = self.key(db, "epoch");
        for _ in 0..CAMPAIGN_ATTEMPTS {
            let mut client = self.client.clone();
            let read = self.call(client.get(epoch_key.as_str(), None)).await;
            let read = read.map_err(|e| unavailable(&e))?;
            let (counter, counter_unchanged) = match read.kvs().first() {
                Some(kv) => (
                    decode::<Epoch>(kv)?,
                    Compare::mod_revision(epoch_key.as_str(), CompareOp::Equal, kv.mod_revision()),
                ),
                None => (
                    Epoch(0),
                    Compare::create_revision(epoch_key.as_str(), CompareOp::Equal, 0),
                ),
            };
            let epoch = counter.max(above).next();
            let record = LeaderRecord {
                member: member.to_string(),
                address: address.to_string(),
                epoch,
                lease,
            };
            let txn = Txn::new()
                .when([
                    Compare::create_revision(leader_key.as_str(), CompareOp::Equal, 0),
                    counter_unchanged,
                ])
                .and_then([
                    TxnOp::put(
                        leader_key.as_str(),
                        encode(&record),
                        Some(PutOptions::new().with_lease(lease.0)),
                    ),
                    TxnOp::put(epoch_key.as_str(), encode(&epoch), None),
                ])
                .or_else([TxnOp::get(leader_key.as_str(), None)]);
            let answer = self.call(client.txn(txn)).await;
            let answer = answer.map_err(|e| lease_error(&e, lease))?;
            if answer.succeeded() {
                return Ok(Campaign::Won { epoch });
            }
            for response in answer.op_responses() {
                if let TxnOpResponse::Get(get) = response
                    && let Some(kv) = get.kvs().first()
                {
                    return Ok(Campaign::Held(leader_of(kv)?));
                }
            }
            // The key is vacant but the counter moved: another campaign raced this one.
        }
        Err(CoordinatorError::Unavailable(format!(
            "the epoch counter of {db} kept moving during {CAMPAIGN_ATTEMPTS} campaign attempts"
        )))
    }

    async fn view(&self, db: &str) -> Result<ClusterView, CoordinatorError> {
        let mut client = self.client.clone();
        let prefix = format!("{}{db}/", self.prefix);
        let options = GetOptions::new().with_prefix();
        let read = self.call(client.get(prefix.as_str(), Some(options))).await;
        let read = read.map_err(|e| unavailable(&e))?;
        let mut view = ClusterView {
            revision: read.header().map_or(0, |h| h.revision()) as u64,
            ..ClusterView::default()
        };
        for kv in read.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let Some(name) = key.strip_prefix(prefix.as_str()) else {
                continue;
            };
            match name {
                "leader" => view.leader = Some(leader_of(kv)?),
                "epoch" => view.epoch = decode(kv)?,
                "commit" => view.last_commit = Some(decode(kv)?),
                _ if name.starts_with("members/") => {
                    let record: MemberRecord = decode(kv)?;
                    view.members.push(MemberRecord {
                        revision: kv.mod_revision() as u64,
                        ..record
                    });
                }
                // Keys of a newer version: not ours to read.
                _ => {}
            }
        }
        Ok(view)
    }

    async fn publish_member(
        &self,
        db: &str,
        record: &MemberRecord,
        lease: LeaseId,
    ) -> Result<(), CoordinatorError> {
        let mut client = self.client.clone();
        let key = self.key(db, &format!("members/{}", record.member));
        let options = PutOptions::new().with_lease(lease.0);
        let put = self
            .call(client.put(key, encode(record), Some(options)))
            .await;
        put.map(|_| ()).map_err(|e| lease_error(&e, lease))
    }

    async fn publish_commit(
        &self,
        db: &str,
        record: &CommitRecord,
        lease: LeaseId,
    ) -> Result<(), CoordinatorError> {
        let mut client = self.client.clone();
        let txn = Txn::new()
            .when([Compare::lease(
                self.key(db, "leader"),
                CompareOp::Equal,
                lease.0,
            )])
            .and_then([TxnOp::put(self.key(db, "commit"), encode(record), None)]);
        let answer = self.call(client.txn(txn)).await;
        match answer.map_err(|e| unavailable(&e))?.succeeded() {
            true => Ok(()),
            false => Err(CoordinatorError::NotLeader(db.to_string())),
        }
    }

    async fn watch_leader(&self, db: &str) -> Result<LeaderWatch, CoordinatorError> {
        let mut client = self.client.clone();
        let watch = self.call(client.watch(self.key(db, "leader"), None)).await;
        let watch = watch.map_err(|e| unavailable(&e))?;
        let stream = futures::stream::unfold(Some(watch), |watch| async move {
            let mut watch = watch?;
            match watch.message().await {
                Ok(Some(response)) if response.canceled() => Some((
                    Err(CoordinatorError::Unavailable(format!(
                        "etcd canceled the watch: {}",
                        response.cancel_reason()
                    ))),
                    None,
                )),
                Ok(Some(_)) => Some((Ok(()), Some(watch))),
                Ok(None) => None,
                Err(error) => Some((Err(unavailable(&error)), None)),
            }
        });
        Ok(stream.boxed())
    }
}
