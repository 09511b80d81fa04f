//! Where the service may open connections to.
//!
//! Setup fields (a CalDAV server URL, a Salesforce instance URL) and provider answers (a token
//! answer's `instance_url`, a paging URL) name hosts that nobody on the operator's side chose.
//! A request to such a URL goes through the **guarded** client: its resolver
//! ([`GuardedResolver`], plugged into reqwest) refuses loopback, private, link-local, CGNAT,
//! multicast, unspecified and reserved addresses — and the IPv4-mapped, -compatible, NAT64 and
//! 6to4 IPv6 forms of them — and hands reqwest only the addresses it checked, so there is no
//! second lookup that could answer differently. A URL whose host is an address literal never
//! reaches a resolver, so [`Outbound::route`] checks those itself before anything is sent. The
//! guarded client uses no proxy (a proxy would resolve the name itself) and follows no
//! redirect.
//!
//! Operator-configured endpoints (the configuration's provider APIs, OAuth token and
//! revocation URLs) are trusted: a request whose origin is one of them goes through the
//! **trusted** client, which may reach private addresses. `--outbound-allow` opens address
//! ranges to the guarded client too, for on-premises servers.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

pub use ipnet::IpNet;
use url::{Host, Url};

/// A connection the outbound policy refused: nothing was opened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{host} is {reason}: the service does not connect there")]
pub struct Refused {
    /// The host as the URL named it.
    pub host: String,
    /// What kind of address it is (or resolved to), in words.
    pub reason: String,
}

/// Which addresses the guarded client may reach: every public address, and the ranges the
/// operator opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    allow: Vec<IpNet>,
}

impl OutboundPolicy {
    /// Public addresses only, and `allow`.
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// The ranges opened beyond public addresses.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allow
    }

    /// `Err` with the kind of address, when the guarded client may not connect to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), &'static str> {
        let plain = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self
            .allow
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&plain))
        {
            return Ok(());
        }
        match non_public(ip) {
            Some(kind) => Err(kind),
            None => Ok(()),
        }
    }
}

/// Why `ip` is not a public unicast address, or `None` when it is one.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: &[([u8; 4], u32, &str)] = &[
        ([0, 0, 0, 0], 8, "an unspecified address"),
        ([10, 0, 0, 0], 8, "a private address"),
        ([100, 64, 0, 0], 10, "a shared (CGNAT) address"),
        ([127, 0, 0, 0], 8, "a loopback address"),
        ([169, 254, 0, 0], 16, "a link-local address"),
        ([172, 16, 0, 0], 12, "a private address"),
        ([192, 0, 0, 0], 24, "a reserved address"),
        ([192, 0, 2, 0], 24, "a documentation address"),
        ([192, 88, 99, 0], 24, "a reserved address"),
        ([192, 168, 0, 0], 16, "a private address"),
        ([198, 18, 0, 0], 15, "a reserved address"),
        ([198, 51, 100, 0], 24, "a documentation address"),
        ([203, 0, 113, 0], 24, "a documentation address"),
        ([224, 0, 0, 0], 4, "a multicast address"),
        ([240, 0, 0, 0], 4, "a reserved address"),
    ];
    RANGES
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, kind)| *kind)
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    // Forms that carry an IPv4 address: judged by the address they carry.
    let embedded = if let Some(v4) = ip.to_ipv4_mapped() {
        Some(v4)
    } else if s[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback() {
        // IPv4-compatible (deprecated), `::a.b.c.d`.
        Some(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ))
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64, 64:ff9b::/96.
        Some(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ))
    } else if s[0] == 0x2002 {
        // 6to4, 2002:aabb:ccdd::/48.
        Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ))
    } else {
        None
    };
    if let Some(v4) = embedded {
        return non_public_v4(v4);
    }
    if ip.is_unspecified() {
        Some("an unspecified address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if s[0] & 0xff00 == 0xff00 {
        Some("a multicast address")
    } else if s[0] & 0xffc0 == 0xfe80 {
        Some("a link-local address")
    } else if s[0] & 0xffc0 == 0xfec0 {
        Some("a site-local address")
    } else if s[0] & 0xfe00 == 0xfc00 {
        Some("a private (unique local) address")
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        Some("a documentation address")
    } else if s[0] == 0x2001 && s[1] == 0 {
        // Teredo hides an IPv4 address the service cannot judge.
        Some("a tunnelled (Teredo) address")
    } else if s[..4] == [0x100, 0, 0, 0] {
        Some("a discard address")
    } else if s[..3] == [0x64, 0xff9b, 1] {
        // Local-use NAT64 (RFC 8215), 64:ff9b:1::/48: a translator of the operator's own
        // network, whose IPv4 side may be anything, private ranges included.
        Some("a local-use NAT64 address")
    } else if s[0] == 0x2001 && s[1] == 2 && s[2] == 0 {
        Some("a benchmarking address")
    } else if s[0] & 0xfff0 == 0x3ff0 {
        // 3fff::/20 (RFC 9637).
        Some("a documentation address")
    } else if s[0] == 0x5f00 {
        // 5f00::/16, segment routing identifiers (RFC 9602): never a host on the internet.
        Some("a segment routing address")
    } else {
        None
    }
}

/// The guarded client's resolver: looks a name up once, keeps only the addresses the policy
/// permits, and refuses the name when none is left.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    policy: Arc<OutboundPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusal = None;
            let permitted: Vec<SocketAddr> = found
                .into_iter()
                .filter(|address| match policy.check(address.ip()) {
                    Ok(()) => true,
                    Err(kind) => {
                        refusal.get_or_insert(kind);
                        false
                    }
                })
                .collect();
            if permitted.is_empty() {
                let reason = match refusal {
                    Some(kind) => format!("resolves to {kind}"),
                    None => "not resolvable".to_owned(),
                };
                return Err(Box::new(Refused { host, reason }) as _);
            }
            Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An origin as the configuration names it: scheme, host and port.
type Origin = (String, String, u16);

fn origin(url: &Url) -> Option<Origin> {
    Some((
        url.scheme().to_owned(),
        url.host_str()?.to_ascii_lowercase(),
        url.port_or_known_default()?,
    ))
}

/// The two HTTP clients of the service's provider calls, and which one a URL goes through.
#[derive(Clone, Debug)]
pub struct Outbound {
    trusted: reqwest::Client,
    guarded: reqwest::Client,
    trusted_origins: Arc<BTreeSet<Origin>>,
    policy: Arc<OutboundPolicy>,
}

impl Outbound {
    /// Clients under `policy`, trusting the origins of `trusted` (the operator's endpoints).
    pub fn new(policy: OutboundPolicy, trusted: impl IntoIterator<Item = Url>) -> Self {
        let policy = Arc::new(policy);
        let guarded = base_client()
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .build()
            .expect("a client with static settings builds");
        Self {
            trusted: base_client()
                .build()
                .expect("a client with static settings builds"),
            guarded,
            trusted_origins: Arc::new(trusted.into_iter().filter_map(|u| origin(&u)).collect()),
            policy,
        }
    }

    /// Public addresses only and no trusted origin: every URL is guarded.
    pub fn guarded_only() -> Self {
        Self::new(OutboundPolicy::default(), [])
    }

    /// Public and loopback addresses: for provider servers on this machine (the fake
    /// providers of tests and benchmarks).
    pub fn loopback() -> Self {
        let loopback =
            ["127.0.0.0/8", "::1/128"].map(|net| net.parse().expect("a valid loopback range"));
        Self::new(OutboundPolicy::new(loopback.to_vec()), [])
    }

    /// The client for operator-configured endpoints.
    pub fn trusted(&self) -> &reqwest::Client {
        &self.trusted
    }

    /// The policy of the guarded client.
    pub fn policy(&self) -> &OutboundPolicy {
        &self.policy
    }

    /// The client a request to `url` goes through, or the refusal when the URL names a host
    /// the service does not connect to. Names are checked by the guarded client's resolver
    /// when it connects; address literals here.
    pub fn route(&self, url: &Url) -> Result<&reqwest::Client, Refused> {
        if origin(url).is_some_and(|o| self.trusted_origins.contains(&o)) {
            return Ok(&self.trusted);
        }
        let refuse = |reason: String| Refused {
            host: url.host_str().unwrap_or_default().to_owned(),
            reason,
        };
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refuse(format!("reached over {}", url.scheme())));
        }
        let literal = match url.host() {
            Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(Host::Domain(_)) => None,
            None => return Err(refuse("not a host".to_owned())),
        };
        if let Some(ip) = literal {
            self.policy
                .check(ip)
                .map_err(|kind| refuse(kind.to_owned()))?;
        }
        Ok(&self.guarded)
    }
}

/// What both clients share: no redirects (a token or an API call must not be sent
/// elsewhere), a name, connection limits.
fn base_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("harmony-sync/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
}

/// The outbound refusal somewhere in `error`'s causes, if it is one.
pub fn refusal_in(error: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(refused) = current.downcast_ref::<Refused>() {
            return Some(refused.clone());
        }
        cause = current.source();
    }
    None
}

/// Parses `--outbound-allow`'s ranges: CIDRs, or single addresses.
pub fn parse_allow(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an address range (CIDR, e.g. 10.20.0.0/16)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> bool {
        non_public(text.parse().expect("an address")).is_some()
    }

    #[test]
    fn every_kind_of_non_public_address_is_refused() {
        for text in [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.5.4",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "224.0.0.251",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a00:1",
            "64:ff9b:1:ffff::7f00:1",
            "2001:2::1",
            "3fff::1",
            "5f00::1",
            "2002:7f00:1::1",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "2001:db8::1",
        ] {
            assert!(refused(text), "{text} must be refused");
        }
        for text in [
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(!refused(text), "{text} is public");
        }
    }

    #[test]
    fn allowed_ranges_open_private_addresses_and_their_mapped_forms() {
        let policy = OutboundPolicy::new(vec![parse_allow("10.20.0.0/16").expect("a range")]);
        assert!(policy.check("10.20.3.4".parse().expect("ip")).is_ok());
        assert!(policy
            .check("::ffff:10.20.3.4".parse().expect("ip"))
            .is_ok());
        assert!(policy.check("10.21.0.1".parse().expect("ip")).is_err());
        assert_eq!(
            parse_allow("127.0.0.1").expect("an address"),
            "127.0.0.1/32".parse::<IpNet>().expect("net")
        );
        assert!(parse_allow("nonsense").is_err());
    }

    #[test]
    fn literal_hosts_in_every_spelling_are_judged_before_any_connection() {
        let outbound = Outbound::new(
            OutboundPolicy::default(),
            [Url::parse("http://127.0.0.1:9/api/").expect("url")],
        );
        for text in [
            "http://127.1:8080/",
            "http://2130706433/",
            "http://0x7f.0.0.1/",
            "http://[::ffff:127.0.0.1]:81/",
            "https://169.254.169.254/latest/meta-data",
            "https://10.0.0.1/",
            "http://[::1]/",
            "ftp://example.com/",
        ] {
            let url = Url::parse(text).expect("url");
            assert!(outbound.route(&url).is_err(), "{text} must be refused");
        }
        let configured = Url::parse("http://127.0.0.1:9/api/contacts").expect("url");
        assert!(outbound.route(&configured).is_ok(), "a configured origin");
        let named = Url::parse("https://calendar.example.com/dav/").expect("url");
        assert!(outbound.route(&named).is_ok(), "names go to the resolver");
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_that_resolves_to_loopback() {
        use reqwest::dns::Resolve;
        let resolver = GuardedResolver {
            policy: Arc::new(OutboundPolicy::default()),
        };
        let name: reqwest::dns::Name = "localhost".parse().expect("a name");
        let error = match resolver.resolve(name).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(error) => error,
        };
        let refused = refusal_in(error.as_ref()).expect("a refusal");
        assert!(refused.reason.contains("loopback"), "{refused}");

        let open = GuardedResolver {
            policy: Arc::new(OutboundPolicy::new(vec![
                parse_allow("127.0.0.0/8").expect("net"),
                parse_allow("::1/128").expect("net"),
            ])),
        };
        let name: reqwest::dns::Name = "localhost".parse().expect("a name");
        let addresses: Vec<_> = open.resolve(name).await.expect("allowed").collect();
        assert!(!addresses.is_empty());
    }
}
