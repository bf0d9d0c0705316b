//! Which addresses certflow may connect to when a user names the target: the
//! outbound policy of webhooks (Slack included) and of any later caller of a
//! user-supplied URL. A team operator must not be able to make the server call
//! its own loopback, the private network it runs in or the cloud metadata
//! address (169.254.169.254) and read the answer back (server-side request
//! forgery).
//!
//! The rule: an address that is loopback, private, link-local, multicast,
//! unspecified or otherwise not globally routable is refused, unless an
//! administrator allow-lists it (`[outbound] allow`: CIDRs, addresses or host
//! names). The rule is pure here; `certflow-outbound` applies it to every
//! address a name resolves to, on the connection that is actually made.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// `[outbound]` in the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundSettings {
    /// Destinations allowed despite their address class: CIDRs (`10.0.0.0/8`),
    /// addresses (`127.0.0.1`, `::1`), host names (`hooks.internal.example`)
    /// and host-name suffixes (`*.internal.example`). A host name allows every
    /// address it resolves to.
    pub allow: Vec<String>,
}

/// Why an address is not for outbound calls by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// 127.0.0.0/8, ::1, and the `localhost` names (RFC 6761 §6.3).
    Loopback,
    /// RFC 1918 ranges, shared address space 100.64.0.0/10 (RFC 6598),
    /// unique-local fc00::/7 (RFC 4193) and deprecated site-local fec0::/10.
    Private,
    /// 169.254.0.0/16 (the cloud metadata address among them) and fe80::/10.
    LinkLocal,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 0.0.0.0/8 ("this network", RFC 791) and ::.
    Unspecified,
    /// Not globally routable for another reason: 240.0.0.0/4 and the broadcast
    /// address, the IETF protocol block 192.0.0.0/24, the documentation and
    /// benchmarking ranges (RFC 5737, RFC 2544, RFC 3849), discard-only 100::/64.
    Reserved,
}

impl AddressClass {
    /// Stable name, used in refusals.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::LinkLocal => "link-local",
            AddressClass::Multicast => "multicast",
            AddressClass::Unspecified => "unspecified",
            AddressClass::Reserved => "reserved",
        }
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The class that keeps `ip` from outbound calls, or `None` for a globally
/// routable address. IPv6 forms that carry an IPv4 address (mapped
/// `::ffff:a.b.c.d`, compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4
/// `2002::/16`) are judged by that IPv4 address, since that is where the
/// packets may end up.
pub fn classify(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, c, _] = ip.octets();
    if a == 0 {
        Some(AddressClass::Unspecified)
    } else if a == 127 {
        Some(AddressClass::Loopback)
    } else if a == 10
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 100 && (64..128).contains(&b))
    {
        Some(AddressClass::Private)
    } else if a == 169 && b == 254 {
        Some(AddressClass::LinkLocal)
    } else if (224..240).contains(&a) {
        Some(AddressClass::Multicast)
    } else if a >= 240
        || (a == 192 && b == 0 && c == 0)
        || (a == 192 && b == 0 && c == 2)
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || (a == 198 && (18..20).contains(&b))
    {
        Some(AddressClass::Reserved)
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some(AddressClass::Unspecified);
    }
    if ip.is_loopback() {
        return Some(AddressClass::Loopback);
    }
    let embedded_v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated).
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) {
        return classify_v4(embedded_v4(s[6], s[7]));
    }
    // NAT64 well-known prefix (RFC 6052).
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return classify_v4(embedded_v4(s[6], s[7]));
    }
    // 6to4 (RFC 3056): the IPv4 address of the relay follows the prefix.
    if s[0] == 0x2002 {
        return classify_v4(embedded_v4(s[1], s[2]));
    }
    match s[0] {
        x if x & 0xfe00 == 0xfc00 => Some(AddressClass::Private),
        x if x & 0xffc0 == 0xfec0 => Some(AddressClass::Private),
        x if x & 0xffc0 == 0xfe80 => Some(AddressClass::LinkLocal),
        x if x & 0xff00 == 0xff00 => Some(AddressClass::Multicast),
        0x2001 if s[1] == 0x0db8 => Some(AddressClass::Reserved),
        0x0100 if s[1..4] == [0, 0, 0] => Some(AddressClass::Reserved),
        _ => None,
    }
}

/// One allowed host name: exact, or every name under a suffix (`*.example.com`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    Exact(String),
    Under(String),
}

/// A destination the policy refused, naming the rule: shown to users as the
/// reason of a refused subscription or delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The host as named in the URL.
    pub host: String,
    /// The address refused, when the host is a name that resolved to it.
    pub resolved: Option<IpAddr>,
    /// Why.
    pub class: AddressClass,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.resolved {
            Some(ip) => write!(
                f,
                "refused by outbound policy: {} resolves to {ip}, which is {}",
                self.host, self.class
            ),
            None => write!(
                f,
                "refused by outbound policy: {} is {}",
                self.host, self.class
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// The outbound policy: the default rule plus the administrator's allow-list.
/// The default value allows nothing special.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    nets: Vec<IpNet>,
    hosts: Vec<HostRule>,
}

/// A host name as compared: lower case, without a final dot.
fn normal_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// `host` without the brackets of an IPv6 literal in a URL.
fn unbracketed(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

impl OutboundPolicy {
    /// The policy of `settings`; an entry that is neither a CIDR, an address
    /// nor a host name is named in the error.
    pub fn new(settings: &OutboundSettings) -> Result<Self, String> {
        let mut policy = Self::default();
        for entry in &settings.allow {
            let e = entry.trim();
            if let Ok(net) = e.parse::<IpNet>() {
                policy.nets.push(net.trunc());
            } else if let Ok(ip) = unbracketed(e).parse::<IpAddr>() {
                policy.nets.push(IpNet::from(ip));
            } else if let Some(suffix) = e.strip_prefix("*.")
                && is_host_name(suffix)
            {
                policy.hosts.push(HostRule::Under(normal_host(suffix)));
            } else if is_host_name(e) {
                policy.hosts.push(HostRule::Exact(normal_host(e)));
            } else {
                return Err(format!(
                    "outbound.allow: {entry:?} is not a CIDR, an IP address, a host name or *.<domain>"
                ));
            }
        }
        Ok(policy)
    }

    /// Whether the administrator allow-listed this host name (every address
    /// it resolves to is then allowed).
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = normal_host(unbracketed(host));
        self.hosts.iter().any(|rule| match rule {
            HostRule::Exact(h) => *h == host,
            HostRule::Under(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
        })
    }

    /// Checks one address `host` names (itself, or one it resolved to).
    pub fn check_address(&self, host: &str, ip: IpAddr) -> Result<(), Refusal> {
        let Some(class) = classify(ip) else {
            return Ok(());
        };
        if self.host_allowed(host) || self.nets.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        let literal = unbracketed(host).parse::<IpAddr>().ok() == Some(ip);
        Err(Refusal {
            host: host.to_owned(),
            resolved: (!literal).then_some(ip),
            class,
        })
    }

    /// Checks what a URL's host names by itself, before any lookup: an IP
    /// literal (in any form a URL parser accepts: `http://2130706433/` is
    /// 127.0.0.1) or a `localhost` name. `host` is the parsed URL's host.
    /// Other names pass here and are checked address by address when resolved.
    pub fn check_literal(&self, host: &str) -> Result<(), Refusal> {
        if let Ok(ip) = unbracketed(host).parse::<IpAddr>() {
            return self.check_address(host, ip);
        }
        let name = normal_host(host);
        if (name == "localhost" || name.ends_with(".localhost")) && !self.host_allowed(&name) {
            return Err(Refusal {
                host: host.to_owned(),
                resolved: None,
                class: AddressClass::Loopback,
            });
        }
        Ok(())
    }
}

/// Letters, digits, hyphens and underscores in dot-separated labels.
fn is_host_name(s: &str) -> bool {
    let s = s.trim_end_matches('.');
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn class(s: &str) -> Option<&'static str> {
        classify(s.parse().unwrap()).map(AddressClass::as_str)
    }

    #[test]
    fn special_addresses_are_classified_per_their_registries() {
        // IANA IPv4/IPv6 special-purpose address registries (RFC 6890 and updates).
        for (ip, want) in [
            ("127.0.0.1", Some("loopback")),
            ("127.255.255.254", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.31.255.255", Some("private")),
            ("192.168.1.1", Some("private")),
            ("100.64.0.1", Some("private")),
            ("169.254.169.254", Some("link-local")),
            ("224.0.0.1", Some("multicast")),
            ("239.255.255.250", Some("multicast")),
            ("0.0.0.0", Some("unspecified")),
            ("0.1.2.3", Some("unspecified")),
            ("255.255.255.255", Some("reserved")),
            ("240.0.0.1", Some("reserved")),
            ("192.0.2.1", Some("reserved")),
            ("198.18.0.1", Some("reserved")),
            ("::1", Some("loopback")),
            ("::", Some("unspecified")),
            ("fe80::1", Some("link-local")),
            ("fc00::1", Some("private")),
            ("fd12:3456::1", Some("private")),
            ("fec0::1", Some("private")),
            ("ff02::1", Some("multicast")),
            ("2001:db8::1", Some("reserved")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:169.254.169.254", Some("link-local")),
            ("::ffff:10.0.0.1", Some("private")),
            ("::127.0.0.1", Some("loopback")),
            ("64:ff9b::a9fe:a9fe", Some("link-local")),
            ("2002:7f00:1::", Some("loopback")),
            // Globally routable.
            ("93.184.216.34", None),
            ("172.32.0.1", None),
            ("100.128.0.1", None),
            ("8.8.8.8", None),
            ("2606:4700:4700::1111", None),
            ("::ffff:8.8.8.8", None),
        ] {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn literals_are_refused_naming_the_rule_unless_allowed() {
        let strict = OutboundPolicy::default();
        for (host, rule) in [
            ("127.0.0.1", "127.0.0.1 is loopback"),
            ("[::1]", "[::1] is loopback"),
            ("169.254.169.254", "169.254.169.254 is link-local"),
            ("localhost", "localhost is loopback"),
            ("api.localhost.", "api.localhost. is loopback"),
            ("[::ffff:127.0.0.1]", "is loopback"),
        ] {
            let err = strict.check_literal(host).unwrap_err().to_string();
            assert!(
                err.starts_with("refused by outbound policy: ") && err.contains(rule),
                "{host}: {err}"
            );
        }
        strict.check_literal("hooks.example.com").unwrap();
        strict.check_literal("93.184.216.34").unwrap();

        let allowing = OutboundPolicy::new(&OutboundSettings {
            allow: vec![
                "127.0.0.1".into(),
                "10.0.0.0/8".into(),
                "fd00::/8".into(),
                "hooks.internal.example".into(),
                "*.svc.example".into(),
            ],
        })
        .unwrap();
        allowing.check_literal("127.0.0.1").unwrap();
        allowing.check_literal("10.200.0.7").unwrap();
        allowing.check_literal("[fd00::7]").unwrap();
        assert!(allowing.check_literal("127.0.0.2").is_err());
        assert!(allowing.check_literal("192.168.0.1").is_err());
        let resolved = "172.16.0.9".parse().unwrap();
        allowing
            .check_address("hooks.internal.example", resolved)
            .unwrap();
        allowing.check_address("a.svc.example.", resolved).unwrap();
        let err = allowing.check_address("svc.example", resolved).unwrap_err();
        assert_eq!(
            err.to_string(),
            "refused by outbound policy: svc.example resolves to 172.16.0.9, which is private"
        );
        assert!(
            allowing
                .check_address("xsvc.example", "172.16.0.9".parse().unwrap())
                .is_err()
        );
    }

    #[test]
    fn allow_entries_are_checked() {
        for bad in ["10.0.0.0/33", "", "hooks example", "*.", "http://x"] {
            let err = OutboundPolicy::new(&OutboundSettings {
                allow: vec![bad.into()],
            })
            .unwrap_err();
            assert!(err.contains("outbound.allow"), "{bad}: {err}");
        }
    }
}
