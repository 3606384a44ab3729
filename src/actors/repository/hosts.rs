//! Which hosts a repository's source URL may reach, for what an organization's
//! token registers (docs/operations.md, "Repository sources"): git must not be
//! the server's way into itself or its network (a server-side request forgery).
//!
//! With `repos.deny_private_hosts` (the default), the host of an organization's
//! URL must resolve only to public addresses: no loopback, link-local (the cloud
//! metadata address 169.254.169.254), private, shared, unspecified, multicast or
//! reserved ones. `repos.allowed_hosts` names hosts let through anyway (an
//! internal git server). The admin token may register anything.
//!
//! Checked at registration and again before every command that talks to the
//! origin (DNS can change). The addresses checked are the ones git connects to
//! for https/http (pinned with `http.curloptResolve`, no redirects followed) and
//! ssh (`HostName` pinned, the host key still looked up by name); a `git://`
//! URL's host is resolved again by git itself, a small window the docs name.
//! Classifying addresses and reading URLs is pure; [`check`] resolves.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use crate::config::ReposConfig;

/// How git reaches a source URL's host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http,
    Ssh,
    Git,
}

/// The host and port a source URL makes git connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub transport: Transport,
}

/// The addresses checked for a host, for git to connect to and nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub target: Target,
    pub addrs: Vec<IpAddr>,
}

impl Pin {
    /// What git is told: connect to these addresses only.
    pub fn connect(&self) -> crate::integrations::git::Connect {
        crate::integrations::git::Connect {
            host: self.target.host.clone(),
            port: self.target.port,
            ssh: self.target.transport == Transport::Ssh,
            addrs: self.addrs.clone(),
        }
    }
}

/// Why a source's host is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It resolves to (or is) an address of the server's own networks.
    Private { host: String, addr: IpAddr },
    /// It does not resolve.
    Unresolved { host: String, error: String },
}

impl Refusal {
    pub fn message(&self) -> String {
        match self {
            Refusal::Private { host, addr } => format!(
                "the repository's host `{host}` is {addr}, a loopback, link-local or private address: an organization's token may only reach public hosts (the server's operator can allow a host with repos.allowed_hosts)"
            ),
            Refusal::Unresolved { host, error } => format!("the repository's host `{host}` does not resolve: {error}"),
        }
    }
}

/// The host and port of a stored source URL (`scheme://[user@]host[:port]/…`
/// or scp-like `[user@]host:path`); `None` for anything else.
pub fn target(url: &str) -> Option<Target> {
    let lower = url.to_ascii_lowercase();
    let schemes = [("https://", Transport::Http, 443), ("http://", Transport::Http, 80), ("ssh://", Transport::Ssh, 22), ("git://", Transport::Git, 9418)];
    if let Some((scheme, transport, default_port)) = schemes.iter().find(|(s, _, _)| lower.starts_with(s)) {
        let rest = &url[scheme.len()..];
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        let port = match port {
            Some(p) if !p.is_empty() => p.parse().ok()?,
            _ => *default_port,
        };
        return (!host.is_empty()).then(|| Target { host: host.to_ascii_lowercase(), port, transport: *transport });
    }
    if url.contains("://") {
        return None;
    }
    let login = url.split_once(':')?.0;
    let host = login.rsplit_once('@').map_or(login, |(_, h)| h);
    (!host.is_empty()).then(|| Target { host: host.to_ascii_lowercase(), port: 22, transport: Transport::Ssh })
}

/// Whether git may not connect to `ip` for an organization: anything but a
/// public unicast address.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return private_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                return private_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                || (s[0..6] == [0, 0, 0, 0, 0, 0]) // ::a.b.c.d (IPv4-compatible) and ::/96
        }
    }
}

fn private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0 // this network
        || (a == 100 && (64..128).contains(&b)) // shared (carrier-grade NAT)
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

/// Whether `host` is one of `repos.allowed_hosts`: a name (any letter case), or
/// `*.example.com` for every name under it.
pub fn allowed(allowed_hosts: &[String], host: &str) -> bool {
    allowed_hosts.iter().any(|a| {
        let a = a.trim().to_ascii_lowercase();
        match a.strip_prefix("*.") {
            Some(domain) => host.strip_suffix(domain).is_some_and(|rest| rest.ends_with('.')),
            None => a == host,
        }
    })
}

/// The policy for an organization's source URL: `Ok(None)` when there is
/// nothing to check (the policy is off, the host is allowed, not a URL), else
/// the addresses git is to use. Resolves the host: call on the blocking pool.
pub fn check(cfg: &ReposConfig, url: &str) -> Result<Option<Pin>, Refusal> {
    check_with(cfg.deny_private_hosts, &cfg.allowed_hosts, url)
}

/// [`check`] with the policy given as its two settings (notifications have
/// their own, `notifications.deny_private_hosts` and `allowed_hosts`).
pub fn check_with(deny_private_hosts: bool, allowed_hosts: &[String], url: &str) -> Result<Option<Pin>, Refusal> {
    let Some(target) = target(url) else { return Ok(None) };
    if !deny_private_hosts || allowed(allowed_hosts, &target.host) {
        return Ok(None);
    }
    // The pin goes into ssh's command line: only what a host name or address holds.
    if !target.host.chars().all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c)) {
        return Err(Refusal::Unresolved { host: target.host.clone(), error: "not a host name".into() });
    }
    let addrs: Vec<IpAddr> = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(|e| Refusal::Unresolved { host: target.host.clone(), error: e.to_string() })?
            .map(|a: SocketAddr| a.ip())
            .collect(),
    };
    if let Some(addr) = addrs.iter().find(|a| is_private(**a)) {
        return Err(Refusal::Private { host: target.host, addr: *addr });
    }
    if addrs.is_empty() {
        return Err(Refusal::Unresolved { host: target.host, error: "no address".into() });
    }
    Ok(Some(Pin { target, addrs }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(deny: bool, allowed: &[&str]) -> ReposConfig {
        let mut c = crate::config::Config::load_from(None, None, &[]).unwrap().repos;
        c.deny_private_hosts = deny;
        c.allowed_hosts = allowed.iter().map(|s| s.to_string()).collect();
        c
    }

    #[test]
    fn reads_the_host_git_connects_to() {
        let t = |u: &str| target(u).map(|t| (t.host, t.port, t.transport));
        assert_eq!(t("https://Git.Example/a/b.git"), Some(("git.example".into(), 443, Transport::Http)));
        assert_eq!(t("http://h:8080/x"), Some(("h".into(), 8080, Transport::Http)));
        assert_eq!(t("https://[::1]:8443/x"), Some(("::1".into(), 8443, Transport::Http)));
        assert_eq!(t("ssh://git@127.0.0.1:2222/x.git"), Some(("127.0.0.1".into(), 2222, Transport::Ssh)));
        assert_eq!(t("git@localhost:a/b"), Some(("localhost".into(), 22, Transport::Ssh)));
        assert_eq!(t("git://169.254.169.254/x"), Some(("169.254.169.254".into(), 9418, Transport::Git)));
        assert_eq!(t("/srv/app"), None);
    }

    #[test]
    fn private_addresses_are_refused_and_public_ones_pass() {
        for ip in [
            "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254", "0.0.0.0",
            "100.64.0.1", "255.255.255.255", "224.0.0.1", "240.0.0.1", "::1", "::", "fe80::1", "fd00::1", "fc00::5", "::ffff:127.0.0.1",
            "::ffff:169.254.169.254", "64:ff9b::a00:1", "::127.0.0.1", "ff02::1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["140.82.112.3", "8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn the_policy_refuses_the_server_itself_unless_allowed() {
        for url in ["ssh://git@127.0.0.1/x", "git@localhost:x", "https://[::1]/x", "git://169.254.169.254/x", "http://10.0.0.5:3000/x"] {
            assert!(matches!(check(&cfg(true, &[]), url), Err(Refusal::Private { .. })), "{url}");
        }
        assert_eq!(check(&cfg(false, &[]), "git@localhost:x"), Ok(None), "the policy is off");
        assert_eq!(check(&cfg(true, &["LOCALHOST"]), "git@localhost:x"), Ok(None), "an allowed host");
        assert_eq!(check(&cfg(true, &["*.corp.example"]), "https://git.corp.example/x").map(|_| ()), Ok(()));
        assert!(!allowed(&["*.corp.example".into()], "corp.example"));
        assert!(!allowed(&["*.corp.example".into()], "evilcorp.example"));
        let pin = check(&cfg(true, &[]), "https://8.8.8.8/x").unwrap().unwrap();
        assert_eq!(pin.addrs, vec!["8.8.8.8".parse::<IpAddr>().unwrap()]);
    }
}
