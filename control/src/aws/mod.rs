//! AWS discovery, the only module that imports AWS crates. Auto Scaling goes through the
//! official SDK (`aws-sdk-autoscaling`, credentials and region from `aws-config`'s standard chain,
//! `AWS_ENDPOINT_URL` included); the one EC2 call, `DescribeInstances` by instance-id filter, is
//! signed with `aws-sigv4` and its XML read with `roxmltree` (docs/aws-sdk.md says why).

use crate::discover::{Hook, Instance, TERMINATING_WAIT};
use aws_config::BehaviorVersion;
use aws_credential_types::provider::ProvideCredentials;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// EC2 accepts at most this many values in one filter.
const FILTER_VALUES: usize = 200;
/// Attempts for a throttled or failing EC2 call.
const ATTEMPTS: u32 = 4;

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("DescribeAutoScalingGroups: {0}")]
    AutoScaling(String),
    #[error("AWS credentials: {0}")]
    Credentials(String),
    #[error("DescribeInstances: {0}")]
    Ec2(String),
    #[error("DescribeLifecycleHooks: {0}")]
    Hooks(String),
    #[error("{action} for {instance}: {why}")]
    Lifecycle {
        action: &'static str,
        instance: String,
        why: String,
    },
}

/// The transition of the hooks that hold terminating instances for control.
const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";

/// A discovery client for one region.
#[derive(Clone)]
pub struct Discovery {
    sdk: aws_config::SdkConfig,
    asg: aws_sdk_autoscaling::Client,
    region: String,
    ec2_endpoint: String,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("region", &self.region)
            .field("ec2_endpoint", &self.ec2_endpoint)
            .finish_non_exhaustive()
    }
}

/// One group member as Auto Scaling reports it.
#[derive(Debug, Clone)]
struct Member {
    id: String,
    group: String,
    group_tags: BTreeMap<String, String>,
    lifecycle: String,
    healthy: bool,
}

/// One instance as EC2 reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Instance {
    pub id: String,
    pub private_ip: Option<IpAddr>,
    pub zone: String,
    pub state: String,
}

impl Discovery {
    /// Loads the standard chain (environment, profile, IMDSv2 on EC2) for `region`.
    pub async fn new(region: &str) -> Discovery {
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_owned()))
            .load()
            .await;
        let asg = aws_sdk_autoscaling::Client::new(&sdk);
        let ec2_endpoint = std::env::var("AWS_ENDPOINT_URL_EC2")
            .ok()
            .or_else(|| sdk.endpoint_url().map(str::to_owned))
            .unwrap_or_else(|| format!("https://ec2.{region}.amazonaws.com"));
        Discovery {
            sdk,
            asg,
            region: region.to_owned(),
            ec2_endpoint,
        }
    }

    /// The instances of the named groups and of the groups carrying each tag set, with their
    /// addresses, zones and, for those in `Terminating:Wait`, the group's Terminating hook.
    pub async fn discover(
        &self,
        names: &[String],
        tag_sets: &[BTreeMap<String, String>],
    ) -> Result<Vec<Instance>, AwsError> {
        let mut members = Vec::new();
        if !names.is_empty() {
            members.extend(self.members(Some(names), None).await?);
        }
        for tags in tag_sets {
            members.extend(self.members(None, Some(tags)).await?);
        }
        let mut seen = std::collections::HashSet::new();
        members.retain(|m| seen.insert(m.id.clone()));
        let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
        let ec2: HashMap<String, Ec2Instance> = self
            .describe_instances(&ids)
            .await?
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        // Hooks are looked up only for groups that have an instance waiting on one.
        let mut hooks: HashMap<String, Option<Hook>> = HashMap::new();
        for m in members.iter().filter(|m| m.lifecycle == TERMINATING_WAIT) {
            if !hooks.contains_key(&m.group) {
                let hook = self.terminating_hook(&m.group).await?;
                hooks.insert(m.group.clone(), hook);
            }
        }
        Ok(members
            .into_iter()
            .map(|m| {
                let e = ec2.get(&m.id);
                Instance {
                    address: e.and_then(|e| e.private_ip),
                    zone: e.map(|e| e.zone.clone()).unwrap_or_default(),
                    ec2_state: e.map(|e| e.state.clone()).unwrap_or_default(),
                    hook: (m.lifecycle == TERMINATING_WAIT)
                        .then(|| hooks.get(&m.group).cloned().flatten())
                        .flatten(),
                    id: m.id,
                    group: m.group,
                    group_tags: m.group_tags,
                    lifecycle: m.lifecycle,
                    healthy: m.healthy,
                }
            })
            .collect())
    }

    /// DescribeAutoScalingGroups by name or by tags (`tag:KEY` filters, all of which must
    /// match), every page.
    async fn members(
        &self,
        names: Option<&[String]>,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Result<Vec<Member>, AwsError> {
        let mut out = Vec::new();
        let mut req = self
            .asg
            .describe_auto_scaling_groups()
            .set_auto_scaling_group_names(names.map(<[String]>::to_vec));
        for (k, v) in tags.into_iter().flatten() {
            req = req.filters(
                aws_sdk_autoscaling::types::Filter::builder()
                    .name(format!("tag:{k}"))
                    .values(v.clone())
                    .build(),
            );
        }
        let mut pages = req.into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| AwsError::AutoScaling(error_text(&e)))?;
            for g in page.auto_scaling_groups() {
                let name = g.auto_scaling_group_name().unwrap_or_default().to_owned();
                let group_tags: BTreeMap<String, String> = g
                    .tags()
                    .iter()
                    .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
                    .collect();
                if tags.is_some_and(|want| want.iter().any(|(k, v)| group_tags.get(k) != Some(v))) {
                    continue;
                }
                for i in g.instances() {
                    out.push(Member {
                        id: i.instance_id().unwrap_or_default().to_owned(),
                        group: name.clone(),
                        group_tags: group_tags.clone(),
                        lifecycle: i
                            .lifecycle_state()
                            .map(|s| s.as_str().to_owned())
                            .unwrap_or_default(),
                        healthy: i.health_status().is_some_and(|h| h == "Healthy"),
                    });
                }
            }
        }
        Ok(out)
    }

    /// The group's `autoscaling:EC2_INSTANCE_TERMINATING` hook, if it has one.
    async fn terminating_hook(&self, group: &str) -> Result<Option<Hook>, AwsError> {
        let out = self
            .asg
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(group)
            .send()
            .await
            .map_err(|e| AwsError::Hooks(error_text(&e)))?;
        Ok(out
            .lifecycle_hooks()
            .iter()
            .find(|h| h.lifecycle_transition() == Some(TERMINATING))
            .map(|h| Hook {
                name: h.lifecycle_hook_name().unwrap_or_default().to_owned(),
                heartbeat_timeout: Duration::from_secs(
                    h.heartbeat_timeout().unwrap_or(3600).max(1) as u64,
                ),
            }))
    }

    /// CompleteLifecycleAction with CONTINUE: Auto Scaling may terminate the instance.
    pub async fn complete(&self, group: &str, hook: &str, instance: &str) -> Result<(), AwsError> {
        self.asg
            .complete_lifecycle_action()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook)
            .instance_id(instance)
            .lifecycle_action_result("CONTINUE")
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::Lifecycle {
                action: "CompleteLifecycleAction",
                instance: instance.to_owned(),
                why: error_text(&e),
            })
    }

    /// RecordLifecycleActionHeartbeat: restarts the hook's heartbeat timeout.
    pub async fn heartbeat(&self, group: &str, hook: &str, instance: &str) -> Result<(), AwsError> {
        self.asg
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook)
            .instance_id(instance)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::Lifecycle {
                action: "RecordLifecycleActionHeartbeat",
                instance: instance.to_owned(),
                why: error_text(&e),
            })
    }

    /// DescribeInstances filtered by instance id (a missing id does not fail the call, as an
    /// id list would), every page, signed with SigV4.
    pub async fn describe_instances(&self, ids: &[String]) -> Result<Vec<Ec2Instance>, AwsError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(FILTER_VALUES) {
            let mut token: Option<String> = None;
            loop {
                let mut form = vec![
                    ("Action".to_owned(), "DescribeInstances".to_owned()),
                    ("Version".to_owned(), "2016-11-15".to_owned()),
                    ("Filter.1.Name".to_owned(), "instance-id".to_owned()),
                    ("MaxResults".to_owned(), "1000".to_owned()),
                ];
                for (i, id) in chunk.iter().enumerate() {
                    form.push((format!("Filter.1.Value.{}", i + 1), id.clone()));
                }
                if let Some(t) = &token {
                    form.push(("NextToken".to_owned(), t.clone()));
                }
                let body = form
                    .iter()
                    .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                    .collect::<Vec<_>>()
                    .join("&");
                let xml = self.ec2_call(body).await?;
                let (instances, next) = parse_describe_instances(&xml)?;
                out.extend(instances);
                match next {
                    Some(t) if !t.is_empty() => token = Some(t),
                    _ => break,
                }
            }
        }
        Ok(out)
    }

    /// One signed EC2 Query API call, retried with jittered backoff when throttled or failing.
    async fn ec2_call(&self, body: String) -> Result<String, AwsError> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                let base = 200u64 << attempt;
                let jitter = fastrand::u64(0..base);
                tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
            }
            match self.ec2_once(&body).await {
                Ok((200, text)) => return Ok(text),
                Ok((status, text)) => {
                    let retry = status >= 500
                        || text.contains("Throttling")
                        || text.contains("RequestLimitExceeded");
                    last = format!("HTTP {status}: {}", first_line(&text));
                    if !retry {
                        break;
                    }
                }
                Err(e) => last = e,
            }
        }
        Err(AwsError::Ec2(last))
    }

    async fn ec2_once(&self, body: &str) -> Result<(u16, String), String> {
        let creds = self
            .sdk
            .credentials_provider()
            .ok_or("no credentials provider")?
            .provide_credentials()
            .await
            .map_err(|e| AwsError::Credentials(e.to_string()).to_string())?;
        let url: hyper::Uri = self
            .ec2_endpoint
            .parse()
            .map_err(|e| format!("endpoint {}: {e}", self.ec2_endpoint))?;
        let host = url.host().ok_or("endpoint without a host")?.to_owned();
        let https = url.scheme_str() == Some("https");
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = url
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|| host.clone());
        let mut req = hyper::Request::builder()
            .method("POST")
            .uri(format!(
                "{}://{authority}/",
                if https { "https" } else { "http" }
            ))
            .header("host", &authority)
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| e.to_string())?;
        // SigV4 over method, URI, the headers above and the body.
        let identity = creds.into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ec2")
            .time(SystemTime::now())
            .settings(aws_sigv4::http_request::SigningSettings::default())
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let signable = aws_sigv4::http_request::SignableRequest::new(
            "POST",
            req.uri().to_string(),
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            aws_sigv4::http_request::SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| e.to_string())?;
        let (instructions, _) = aws_sigv4::http_request::sign(signable, &params)
            .map_err(|e| e.to_string())?
            .into_parts();
        instructions.apply_to_request_http1x(&mut req);
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
        let response = if https {
            let name =
                rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            let tls = tls_connector()?
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            send(TokioIo::new(tls), req).await?
        } else {
            send(TokioIo::new(tcp), req).await?
        };
        Ok(response)
    }
}

/// Sends one request over a fresh HTTP/1.1 connection.
async fn send<IO>(io: IO, req: hyper::Request<Full<Bytes>>) -> Result<(u16, String), String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "EC2 connection");
        }
    });
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .map_err(|_| "EC2 did not answer in 30 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The TLS client for EC2: the system's CA bundle (Debian's or Amazon Linux's path).
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::pem::PemObject;
    static CFG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    if let Some(c) = CFG.get() {
        return Ok(tokio_rustls::TlsConnector::from(c.clone()));
    }
    let bundle = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).is_file())
    .ok_or("no system CA bundle found")?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(bundle)
        .map_err(|e| format!("{bundle}: {e}"))?
        .flatten()
    {
        let _ = roots.add(c);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let cfg = CFG.get_or_init(|| Arc::new(cfg)).clone();
    Ok(tokio_rustls::TlsConnector::from(cfg))
}

/// Percent-encodes a form value as SigV4 and the Query API expect (unreserved kept).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(300).collect()
}

fn error_text<E: std::error::Error>(e: &E) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Reads instances and the next-page token from a DescribeInstances response.
pub fn parse_describe_instances(xml: &str) -> Result<(Vec<Ec2Instance>, Option<String>), AwsError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| AwsError::Ec2(format!("XML: {e}")))?;
    fn child<'a, 'input>(
        n: roxmltree::Node<'a, 'input>,
        name: &str,
    ) -> Option<roxmltree::Node<'a, 'input>> {
        n.children()
            .find(|c| c.is_element() && c.tag_name().name() == name)
    }
    let text = |n: Option<roxmltree::Node<'_, '_>>| n.and_then(|n| n.text()).map(str::to_owned);
    let root = doc.root_element();
    if root.tag_name().name() == "Response" {
        // An error document.
        let msg = root
            .descendants()
            .find(|n| n.tag_name().name() == "Message")
            .and_then(|n| n.text())
            .unwrap_or("unknown error");
        return Err(AwsError::Ec2(msg.to_owned()));
    }
    let mut out = Vec::new();
    if let Some(reservations) = child(root, "reservationSet") {
        for r in reservations.children().filter(|c| c.is_element()) {
            let Some(set) = child(r, "instancesSet") else {
                continue;
            };
            for i in set.children().filter(|c| c.is_element()) {
                out.push(Ec2Instance {
                    id: text(child(i, "instanceId")).unwrap_or_default(),
                    private_ip: text(child(i, "privateIpAddress")).and_then(|s| s.parse().ok()),
                    zone: text(child(i, "placement").and_then(|p| child(p, "availabilityZone")))
                        .unwrap_or_default(),
                    state: text(child(i, "instanceState").and_then(|s| child(s, "name")))
                        .unwrap_or_default(),
                });
            }
        }
    }
    let next = text(child(root, "nextToken"));
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_describe_instances_xml() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>r</requestId>
  <reservationSet>
    <item><reservationId>r-1</reservationId><instancesSet>
      <item><instanceId>i-1</instanceId><privateIpAddress>10.0.1.5</privateIpAddress>
        <placement><availabilityZone>us-east-1a</availabilityZone></placement>
        <instanceState><code>16</code><name>running</name></instanceState></item>
      <item><instanceId>i-2</instanceId>
        <placement><availabilityZone>us-east-1b</availabilityZone></placement>
        <instanceState><code>0</code><name>pending</name></instanceState></item>
    </instancesSet></item>
  </reservationSet>
  <nextToken>abc</nextToken>
</DescribeInstancesResponse>"#;
        let (list, next) = parse_describe_instances(xml).unwrap();
        assert_eq!(next.as_deref(), Some("abc"));
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].private_ip, Some("10.0.1.5".parse().unwrap()));
        assert_eq!(list[0].zone, "us-east-1a");
        assert_eq!(list[1].private_ip, None);
        assert_eq!(list[1].state, "pending");
        let err = r#"<Response><Errors><Error><Code>AuthFailure</Code><Message>nope</Message></Error></Errors></Response>"#;
        assert!(parse_describe_instances(err)
            .unwrap_err()
            .to_string()
            .contains("nope"));
    }

    #[test]
    fn form_values_are_percent_encoded() {
        assert_eq!(encode("Filter.1.Value.1"), "Filter.1.Value.1");
        assert_eq!(encode("a b/c="), "a%20b%2Fc%3D");
    }
}
