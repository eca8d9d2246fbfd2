//! `flow_policy`: servers (the rule's `hosts`) accept connections on the matched service
//! ports (the rule's `sockets`, of the server's end) only from clients matching
//! `clients`, from `networks`, and (with `outside: allow`) from anywhere outside the
//! fleet. A client address is joined to the fleet host that holds it on an interface.
//! Parameters: `clients`, `networks`, `outside`, `local`.

use crate::kind::Params;
use crate::model::{Cidr, HostSelector, Kind, Rule};
use crate::parse::Cx;
use crate::sql::Sources;
use crate::sql::address::{in_networks, is_link_local, is_loopback, unmapped};
use crate::sql::cond::{flow_cond, host_cond, host_filter};
use crate::sql::finding::fingerprint;

/// The kind's name in rule files.
pub(crate) const NAME: &str = "flow_policy";

/// The kind's parameters.
pub(crate) const PARAMS: [&str; 4] = ["clients", "networks", "outside", "local"];

/// Parameters of `flow_policy`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowPolicyParams {
    /// Fleet hosts allowed as clients: `None` (no `clients` key) allows no fleet host
    /// (unless `networks` covers it); an empty selector (`clients: {}`) allows every
    /// fleet host.
    pub clients: Option<HostSelector>,
    /// Client networks allowed whether or not their addresses belong to the fleet.
    pub networks: Vec<Cidr>,
    /// Clients outside the fleet are allowed.
    pub allow_outside: bool,
    /// Loopback clients (the server itself) are allowed.
    pub allow_local: bool,
}

/// Reads the parameters of a `flow_policy` rule.
pub(crate) fn parse(cx: &mut Cx<'_>, p: &Params<'_>) -> Option<Kind> {
    if !p.sockets.exposure.is_empty()
        && let Some(n) = p.get("sockets")
    {
        cx.problem(
            n.span(),
            "`sockets.exposure` does not apply to `flow_policy` rules (they look at connections; select servers with `hosts` and ports with `sockets.ports`)".into(),
        );
    }
    let clients = p.get("clients").map(|n| cx.hosts(n, "clients"));
    let mut networks = Vec::new();
    if let Some(n) = p.get("networks") {
        for s in cx.list(n, "`networks`") {
            match Cidr::parse(s.as_str()) {
                Ok(c) => networks.push(c),
                Err(e) => cx.problem(
                    s.span(),
                    format!(
                        "`networks` takes networks such as \"10.0.0.0/8\" or \"2001:db8::/32\": {e}"
                    ),
                ),
            }
        }
    }
    let allow_deny = |cx: &mut Cx<'_>, key: &str, default: bool| -> Option<bool> {
        match p.get(key) {
            Some(n) => {
                let s = cx.scalar(n, &format!("`{key}`"))?;
                Some(cx.choice(s, &format!("`{key}`"), &["allow", "deny"])? == "allow")
            }
            None => Some(default),
        }
    };
    let allow_outside = allow_deny(cx, "outside", false)?;
    let allow_local = allow_deny(cx, "local", true)?;
    Some(Kind::FlowPolicy(FlowPolicyParams {
        clients,
        networks,
        allow_outside,
        allow_local,
    }))
}

/// What the evidence says is allowed: `clients`, networks, `outside`, `local`, or `none`.
fn allowed(p: &FlowPolicyParams) -> String {
    let mut parts = Vec::new();
    if p.clients.is_some() {
        parts.push("clients".to_string());
    }
    parts.extend(p.networks.iter().map(Cidr::to_string));
    if p.allow_outside {
        parts.push("outside".into());
    }
    if p.allow_local {
        parts.push("local".into());
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(",")
    }
}

/// The findings of a `flow_policy` rule: one per (server, protocol, port, client host or
/// outside address).
pub(crate) fn sql(rule: &Rule, p: &FlowPolicyParams, src: &Sources) -> String {
    let client_cond = match &p.clients {
        None => "0".to_string(),
        Some(sel) => host_cond(sel).unwrap_or_else(|| "1".into()),
    };
    let deny_local = u8::from(!p.allow_local);
    let deny_outside = u8::from(!p.allow_outside);
    let allowed = allowed(p);
    let fp = fingerprint(
        &rule.id,
        &[
            "host_id",
            "protocol",
            "toString(service_port)",
            "client_key",
        ],
    );
    let remote = unmapped("remote_address");
    let local = is_loopback(&remote);
    let flows = &src.flows;
    let cond = flow_cond(&rule.sockets);
    let hosts = host_filter(&rule.hosts, src);
    let iface_addr = unmapped("splitByChar('/', iface)[1]");
    let hosts_t = &src.hosts;
    let loopback = is_loopback("remote");
    let link_local = is_link_local("remote");
    let networks = in_networks("remote", &p.networks);
    format!(
        r"SELECT host_id,
    {fp} AS fingerprint,
    concat(protocol, ' port ', toString(service_port), ' from ', client) AS subject,
    concat('client_host=', client_host_id,
        ' addresses=', arrayStringConcat(arraySort(remotes), ','),
        ' connections=', toString(connections),
        ' server_processes=', arrayStringConcat(arraySort(server_processes), ','),
        ' allowed={allowed}') AS evidence
FROM
(
SELECT host_id, protocol, service_port, client_host_id, client_key, any(client_desc) AS client,
    groupUniqArray(remote) AS remotes, sum(connections) AS connections,
    groupUniqArray(process) AS server_processes
FROM
(
SELECT host_id, protocol, service_port, remote, connections, process, client_host_id,
    if(client_host_id != '', client_host_id, remote) AS client_key,
    multiIf(is_local, concat(remote, ' (this host)'),
        client_host_id != '', client_hostname,
        concat(remote, ' (outside the fleet)')) AS client_desc,
    is_local, client_allowed
FROM
(
SELECT host_id, protocol, service_port, {remote} AS remote, {local} AS is_local, connections, process
FROM {flows}
WHERE present = 1 AND direction = 'inbound' AND {cond}{hosts}
) AS joined_left
ALL LEFT JOIN
(
SELECT remote, min(holder) AS client_host_id, any(holder_name) AS client_hostname, min(allowed) AS client_allowed
FROM
(
SELECT {iface_addr} AS remote, host_id AS holder, hostname AS holder_name, toUInt8({client_cond}) AS allowed
FROM {hosts_t}
ARRAY JOIN interfaces AS iface
)
WHERE NOT {loopback} AND NOT {link_local}
GROUP BY remote
) AS joined_right USING remote
WHERE if(is_local, {deny_local}, if(client_host_id != '', client_allowed = 0, {deny_outside})) AND NOT {networks}
)
GROUP BY host_id, protocol, service_port, client_host_id, client_key
)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_policy_parameters_are_checked() {
        let text = "rules:\n  - id: a\n    kind: flow_policy\n    severity: high\n    clients: {labels: {role: app}, rack: 3}\n    networks: [\"10.0.0.1/8\", \"fd00::/200\", nope]\n    outside: maybe\n    sockets: {ports: [5432], exposure: [public]}\n  - {id: b, kind: port_owner_change, severity: low, window: soon}\n";
        let got = crate::parse::tests::problems(text);
        let expected = [
            "rules.yaml:5:36: unknown key `rack` in `clients`",
            "rules.yaml:6:16: `networks` takes networks such as \"10.0.0.0/8\" or \"2001:db8::/32\": `10.0.0.1/8` has host bits set; the network is `10.0.0.0/8`",
            "`/200` is not a prefix length (0-128)",
            "`nope` is not an IP address",
            "rules.yaml:7:14: `outside` must be one of allow, deny; got `maybe`",
            "`sockets.exposure` does not apply to `flow_policy` rules",
            "rules.yaml:9:61: `window`",
        ];
        for e in expected {
            assert!(
                got.iter().any(|p| p.contains(e)),
                "missing {e:?} in {got:#?}"
            );
        }
        assert_eq!(got.len(), expected.len(), "{got:#?}");
        let ok = "rules:\n  - {id: a, kind: flow_policy, severity: high, clients: {}, networks: [\"10.8.0.0/16\"], local: deny}\n  - {id: b, kind: port_owner_change, severity: low, window: 2h}\n";
        let set = crate::parse("rules.yaml", ok).expect("valid");
        assert_eq!(
            set.rules[0].kind,
            Kind::FlowPolicy(FlowPolicyParams {
                clients: Some(HostSelector::default()),
                networks: vec![Cidr::parse("10.8.0.0/16").expect("a network")],
                allow_outside: false,
                allow_local: false,
            })
        );
        assert_eq!(
            set.rules[1].kind,
            Kind::PortOwnerChange { window_secs: 7200 }
        );
    }
}
