//! Which push endpoints mailpush will POST to. A subscription's endpoint is a URL the browser
//! (that is, anyone holding a client token) hands us, so left unchecked it would let a user make
//! mailpush send requests into its own network (SSRF). An endpoint must be `https` and every
//! address its host has must be public; the check runs at registration, and again when each
//! connection is made ([`PublicOnly`], so a name that later resolves to `10.0.0.1` is refused
//! too). `push.webpush.allow_private_endpoints` lifts both rules, for tests and push services
//! on a private network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Longest endpoint accepted (real ones are 150 to 500 bytes).
pub const MAX_ENDPOINT: usize = 2048;

/// The SSRF rules, from `push.webpush.allow_private_endpoints`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointPolicy {
    pub allow_private: bool,
}

impl EndpointPolicy {
    /// Checks an endpoint before it is stored; the error says why it was refused.
    pub async fn check(self, endpoint: &str) -> Result<Url, String> {
        let url = self.check_url(endpoint)?;
        if self.allow_private {
            return Ok(url);
        }
        let Some(host) = url.host_str() else {
            return Err("endpoint: has no host".into());
        };
        if let Some(ip) = ip_literal(host) {
            return if is_public(ip) {
                Ok(url)
            } else {
                Err(format!(
                    "endpoint: {ip} is a loopback, private or reserved address"
                ))
            };
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let addresses: Vec<SocketAddr> = match tokio::net::lookup_host((host, port)).await {
            Ok(addresses) => addresses.collect(),
            Err(err) => return Err(format!("endpoint: cannot resolve {host}: {err}")),
        };
        if addresses.is_empty() {
            return Err(format!("endpoint: {host} has no address"));
        }
        if let Some(private) = addresses.iter().find(|address| !is_public(address.ip())) {
            return Err(format!(
                "endpoint: {host} resolves to {}, a loopback, private or reserved address",
                private.ip()
            ));
        }
        Ok(url)
    }

    /// The checks that need no name lookup: a URL, `https` (or `http` when private endpoints
    /// are allowed), no credentials, a bounded length.
    fn check_url(self, endpoint: &str) -> Result<Url, String> {
        if endpoint.len() > MAX_ENDPOINT {
            return Err(format!(
                "endpoint: longer than {MAX_ENDPOINT} bytes ({})",
                endpoint.len()
            ));
        }
        let url = Url::parse(endpoint).map_err(|err| format!("endpoint: not a URL ({err})"))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_private => {}
            scheme => {
                return Err(format!(
                    "endpoint: must be an https URL, not {scheme}: (http only with push.webpush.allow_private_endpoints)"
                ));
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("endpoint: must not carry credentials".into());
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("endpoint: has no host".into());
        }
        Ok(url)
    }

    /// Checked again just before sending: an IP-literal endpoint never goes through the
    /// resolver, so [`PublicOnly`] cannot see it.
    pub fn allows_literal(self, url: &Url) -> bool {
        self.allow_private || url.host_str().and_then(ip_literal).is_none_or(is_public)
    }
}

/// A URL host as an address, when it is one (`[::1]` included).
fn ip_literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Whether an address is on the public internet: not loopback, private, link-local, shared
/// (CGNAT), multicast, documentation or otherwise reserved. IPv4 inside IPv6 is judged as IPv4.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(ip),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0064 && ip.segments()[1] == 0xff9b) // NAT64: an IPv4 address inside
}

/// The resolver of the Web Push client: the system's, with every non-public address dropped,
/// so a connection can only go where a registration could.
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|address| is_public(address.ip()))
                .collect();
            if addresses.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            let addresses: Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: EndpointPolicy = EndpointPolicy {
        allow_private: false,
    };
    const PRIVATE: EndpointPolicy = EndpointPolicy {
        allow_private: true,
    };

    #[test]
    fn addresses() {
        for public in ["8.8.8.8", "142.250.74.10", "2a00:1450:4001:82a::200a"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        for private in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "64:ff9b::a00:1",
            "2001:db8::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
    }

    #[tokio::test]
    async fn endpoints() {
        let refused = |url: &'static str, policy: EndpointPolicy, expect: &'static str| async move {
            let err = policy.check(url).await.expect_err(url);
            assert!(err.contains(expect), "{url}: {err}");
        };
        refused("http://127.0.0.1/push/1", STRICT, "must be an https URL").await;
        refused("https://10.0.0.1/push/1", STRICT, "10.0.0.1 is a loopback").await;
        refused("https://[::1]:8443/push", STRICT, "::1 is a loopback").await;
        refused("https://localhost/push/1", STRICT, "resolves to").await;
        refused("not a url", STRICT, "not a URL").await;
        refused("ftp://push.example/1", PRIVATE, "must be an https URL").await;
        refused("https://user:pw@push.example/1", PRIVATE, "credentials").await;
        let long = format!("https://push.example/{}", "a".repeat(MAX_ENDPOINT));
        assert!(
            STRICT
                .check(&long)
                .await
                .unwrap_err()
                .contains("longer than")
        );
        // Allowed: no lookup is made, so this passes without a network.
        assert!(
            PRIVATE
                .check("http://localhost:8090/notify/x")
                .await
                .is_ok()
        );
        assert!(PRIVATE.check("https://10.0.0.1/push").await.is_ok());
        assert!(STRICT.check("https://8.8.8.8/push").await.is_ok());
        let literal = Url::parse("https://127.0.0.1/x").unwrap();
        assert!(!STRICT.allows_literal(&literal));
        assert!(PRIVATE.allows_literal(&literal));
        assert!(STRICT.allows_literal(&Url::parse("https://push.example/x").unwrap()));
    }
}
