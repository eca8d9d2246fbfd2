//! From YAML text to a validated [`RuleSet`], with every problem found at once.

use std::collections::BTreeMap;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoadError, LoaderOptions, Node, Span};

use portolan_core::names::{Named, UnknownName, names};

use crate::error::{Problem, RuleError};
use crate::kind;
use crate::model::{Glob, HostSelector, PortRange, Rule, RuleSet, Severity, SocketPredicate};

/// The keys of every rule, whatever its kind.
pub(crate) const COMMON_KEYS: [&str; 6] =
    ["id", "kind", "severity", "description", "hosts", "sockets"];
const HOST_KEYS: [&str; 3] = ["labels", "hostname", "host_id"];
const SOCKET_KEYS: [&str; 12] = [
    "protocol",
    "ports",
    "state",
    "exposure",
    "process",
    "executable",
    "user",
    "unit",
    "container",
    "pod",
    "pod_namespace",
    "netns",
];
/// Longest accepted string anywhere in a rule file.
const MAX_STRING: usize = 1024;

/// Parses and validates a rule file. `file` names it in error messages.
///
/// # Errors
///
/// [`RuleError::Yaml`] when the text is not YAML (or has a duplicate key);
/// [`RuleError::Invalid`] with every problem found otherwise.
pub fn parse(file: &str, text: &str) -> Result<RuleSet, RuleError> {
    let options = LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .toplevel_mapping();
    let root = marked_yaml::parse_yaml_with_options(0, text, options)
        .map_err(|e| RuleError::Yaml(load_problem(file, &e)))?;
    let mut cx = Cx {
        file,
        problems: Vec::new(),
    };
    let rules = cx.file(&root);
    if cx.problems.is_empty() {
        Ok(RuleSet { rules })
    } else {
        cx.problems.sort_by_key(|p| (p.line, p.column));
        Err(RuleError::Invalid(cx.problems))
    }
}

fn load_problem(file: &str, e: &LoadError) -> Problem {
    let (marker, message) = match e {
        LoadError::TopLevelMustBeMapping(m) => (
            *m,
            "a rule file is a mapping with `version` and `rules`".to_string(),
        ),
        LoadError::TopLevelMustBeSequence(m) => (*m, "expected a sequence".to_string()),
        LoadError::UnexpectedAnchor(m) => (
            *m,
            "anchors and aliases are not supported in rule files".into(),
        ),
        LoadError::MappingKeyMustBeScalar(m) => (*m, "mapping keys must be plain strings".into()),
        LoadError::UnexpectedTag(m) => (*m, "YAML tags are not supported in rule files".into()),
        LoadError::ScanError(m, scan) => (*m, format!("invalid YAML: {}", scan.info())),
        LoadError::DuplicateKey(inner) => {
            let first = inner
                .prev_key
                .span()
                .start()
                .map_or(0, marked_yaml::Marker::line);
            (
                inner
                    .key
                    .span()
                    .start()
                    .copied()
                    .unwrap_or(marked_yaml::Marker::new(0, 0, 0, 0)),
                format!(
                    "duplicate key `{}` (first given on line {first})",
                    inner.key.as_str()
                ),
            )
        }
    };
    Problem {
        file: file.to_string(),
        line: marker.line(),
        column: marker.column(),
        message,
    }
}

fn one_of(list: &[&str]) -> String {
    list.join(", ")
}

/// The state of one parse: the file's name and every problem found so far. The kinds'
/// modules read their parameters with its methods.
pub(crate) struct Cx<'a> {
    file: &'a str,
    problems: Vec<Problem>,
}

impl Cx<'_> {
    pub(crate) fn problem(&mut self, span: &Span, message: String) {
        let (line, column) = span.start().map_or((0, 0), |m| (m.line(), m.column()));
        self.problems.push(Problem {
            file: self.file.to_string(),
            line,
            column,
            message,
        });
    }

    /// Reports keys of `map` not in `allowed`.
    pub(crate) fn known_keys(&mut self, map: &MarkedMappingNode, what: &str, allowed: &[&str]) {
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                self.problem(
                    key.span(),
                    format!(
                        "unknown key `{}` in {what} (expected one of {})",
                        key.as_str(),
                        one_of(allowed)
                    ),
                );
            }
        }
    }

    pub(crate) fn mapping<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
    ) -> Option<&'n MarkedMappingNode> {
        let m = node.as_mapping();
        if m.is_none() {
            self.problem(node.span(), format!("{what} must be a mapping"));
        }
        m
    }

    pub(crate) fn scalar<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
    ) -> Option<&'n MarkedScalarNode> {
        match node.as_scalar() {
            Some(s) if s.as_str().len() > MAX_STRING => {
                self.problem(
                    node.span(),
                    format!("{what} is longer than {MAX_STRING} bytes"),
                );
                None
            }
            Some(s) => Some(s),
            None => {
                self.problem(node.span(), format!("{what} must be a string or a number"));
                None
            }
        }
    }

    pub(crate) fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        self.scalar(node, what).map(|s| s.as_str().to_string())
    }

    /// A scalar or a sequence of scalars.
    pub(crate) fn list<'n>(&mut self, node: &'n Node, what: &str) -> Vec<&'n MarkedScalarNode> {
        match node {
            Node::Sequence(seq) => seq
                .iter()
                .filter_map(|item| self.scalar(item, &format!("each of {what}")))
                .collect(),
            _ => self.scalar(node, what).into_iter().collect(),
        }
    }

    pub(crate) fn choice(
        &mut self,
        s: &MarkedScalarNode,
        what: &str,
        choices: &[&'static str],
    ) -> Option<&'static str> {
        let found = choices.iter().find(|c| **c == s.as_str()).copied();
        if found.is_none() {
            self.problem(
                s.span(),
                format!(
                    "{what} must be one of {}; got `{}`",
                    one_of(choices),
                    s.as_str()
                ),
            );
        }
        found
    }

    /// The value of an enum named by `s`; a problem listing every name otherwise.
    pub(crate) fn named<T>(&mut self, s: &MarkedScalarNode, what: &str) -> Option<T>
    where
        T: Named + std::str::FromStr<Err = UnknownName>,
    {
        match s.as_str().parse::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(
                    s.span(),
                    format!(
                        "{what} must be one of {}; got `{}`",
                        one_of(&e.accepted),
                        s.as_str()
                    ),
                );
                None
            }
        }
    }

    /// Enum values, one or a list of them, each checked by [`Cx::named`].
    fn nameds<T>(&mut self, node: &Node, what: &str) -> Vec<T>
    where
        T: Named + std::str::FromStr<Err = UnknownName>,
    {
        self.list(node, what)
            .into_iter()
            .filter_map(|s| self.named(s, &format!("`{what}`")))
            .collect()
    }

    /// The parameter `key` of `map` naming an enum value, `default` when absent.
    pub(crate) fn named_param<T>(
        &mut self,
        map: &MarkedMappingNode,
        key: &str,
        default: T,
    ) -> Option<T>
    where
        T: Named + std::str::FromStr<Err = UnknownName>,
    {
        match map.get_node(key) {
            Some(n) => {
                let what = format!("`{key}`");
                let s = self.scalar(n, &what)?;
                self.named(s, &what)
            }
            None => Some(default),
        }
    }

    fn globs(&mut self, node: &Node, what: &str) -> Vec<Glob> {
        self.list(node, what)
            .into_iter()
            .map(|s| Glob(s.as_str().to_string()))
            .collect()
    }

    pub(crate) fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
        &mut self,
        node: &Node,
        what: &str,
        min: T,
        max: T,
    ) -> Option<T> {
        let s = self.scalar(node, what)?;
        match s.as_str().trim().parse::<T>() {
            Ok(v) if v >= min && v <= max => Some(v),
            _ => {
                self.problem(
                    s.span(),
                    format!(
                        "{what} must be a number from {min} to {max}; got `{}`",
                        s.as_str()
                    ),
                );
                None
            }
        }
    }

    pub(crate) fn share(&mut self, node: &Node, what: &str) -> Option<f64> {
        let s = self.scalar(node, what)?;
        match s.as_str().trim().parse::<f64>() {
            Ok(v) if v > 0.0 && v <= 1.0 => Some(v),
            _ => {
                self.problem(
                    s.span(),
                    format!(
                        "{what} must be a share above 0 and at most 1 (such as 0.8); got `{}`",
                        s.as_str()
                    ),
                );
                None
            }
        }
    }

    pub(crate) fn duration(&mut self, node: &Node, what: &str) -> Option<u64> {
        let s = self.scalar(node, what)?;
        match humantime::parse_duration(s.as_str().trim()) {
            Ok(d) if d.as_secs() >= 1 && d.as_secs() <= 10 * 366 * 86_400 => Some(d.as_secs()),
            _ => {
                self.problem(
                    s.span(),
                    format!(
                        "{what} must be a duration from 1s to 10 years such as `10m`, `24h` or `7d`; got `{}`",
                        s.as_str()
                    ),
                );
                None
            }
        }
    }

    fn file(&mut self, root: &Node) -> Vec<Rule> {
        let Some(map) = self.mapping(root, "a rule file") else {
            return Vec::new();
        };
        self.known_keys(map, "the rule file", &["version", "rules"]);
        if let Some(v) = map.get_node("version") {
            let ok = v.as_scalar().is_some_and(|s| s.as_str() == "1");
            if !ok {
                self.problem(v.span(), "`version` must be 1".into());
            }
        }
        let Some(rules) = map.get_node("rules") else {
            self.problem(
                map.span(),
                "the rule file has no `rules` (a list of rules)".into(),
            );
            return Vec::new();
        };
        let Some(seq) = rules.as_sequence() else {
            self.problem(rules.span(), "`rules` must be a list of rules".into());
            return Vec::new();
        };
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut out = Vec::new();
        for node in seq.iter() {
            if let Some(rule) = self.rule(node) {
                if let Some(first) = seen.get(&rule.id) {
                    let id_span = node
                        .as_mapping()
                        .and_then(|m| m.get_node("id"))
                        .map_or(*node.span(), |n| *n.span());
                    self.problem(
                        &id_span,
                        format!(
                            "duplicate rule id `{}` (first used on line {first}); ids must be unique",
                            rule.id
                        ),
                    );
                    continue;
                }
                seen.insert(rule.id.clone(), rule.line);
                out.push(rule);
            }
        }
        out
    }

    fn rule(&mut self, node: &Node) -> Option<Rule> {
        let map = self.mapping(node, "a rule")?;
        let before = self.problems.len();
        let line = node.span().start().map_or(0, marked_yaml::Marker::line);
        let id = match map.get_node("id") {
            Some(n) => self.string(n, "`id`").and_then(|id| {
                let ok = !id.is_empty()
                    && id.len() <= 128
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !ok {
                    self.problem(
                        n.span(),
                        format!("`id` must be 1 to 128 ASCII letters, digits, `-`, `_` or `.`; got `{id}`"),
                    );
                }
                ok.then_some(id)
            }),
            None => {
                self.problem(map.span(), "a rule needs an `id`".into());
                None
            }
        };
        let kind_name = match map.get_node("kind") {
            Some(n) => self
                .scalar(n, "`kind`")
                .and_then(|s| self.choice(s, "`kind`", &kind::NAMES)),
            None => {
                self.problem(
                    map.span(),
                    format!("a rule needs a `kind` (one of {})", one_of(&kind::NAMES)),
                );
                None
            }
        };
        let severity = match map.get_node("severity") {
            Some(n) => self
                .scalar(n, "`severity`")
                .and_then(|s| self.named::<Severity>(s, "`severity`")),
            None => {
                self.problem(
                    map.span(),
                    format!(
                        "a rule needs a `severity` (one of {})",
                        one_of(&names::<Severity>())
                    ),
                );
                None
            }
        };
        let description = map
            .get_node("description")
            .and_then(|n| self.string(n, "`description`"))
            .unwrap_or_default();
        let hosts = map
            .get_node("hosts")
            .map(|n| self.hosts(n, "hosts"))
            .unwrap_or_default();
        let sockets = map
            .get_node("sockets")
            .map(|n| self.sockets(n, "`sockets`"))
            .unwrap_or_default();
        let kind = kind_name.and_then(|k| kind::parse(self, k, map, &sockets));
        if self.problems.len() != before {
            return None;
        }
        Some(Rule {
            id: id?,
            severity: severity?,
            description,
            hosts,
            sockets,
            kind: kind?,
            line,
        })
    }

    pub(crate) fn hosts(&mut self, node: &Node, what: &str) -> HostSelector {
        let mut sel = HostSelector::default();
        let Some(map) = self.mapping(node, &format!("`{what}`")) else {
            return sel;
        };
        self.known_keys(map, &format!("`{what}`"), &HOST_KEYS);
        if let Some(labels) = map.get_node("labels")
            && let Some(lm) = self.mapping(labels, &format!("`{what}.labels`"))
        {
            for (k, v) in lm.iter() {
                if let Some(value) = self.string(v, &format!("label `{}`", k.as_str())) {
                    sel.labels.push((k.as_str().to_string(), Glob(value)));
                }
            }
        }
        if let Some(n) = map.get_node("hostname") {
            sel.hostname = self.globs(n, "`hostname`");
        }
        if let Some(n) = map.get_node("host_id") {
            sel.host_id = self
                .list(n, "`host_id`")
                .into_iter()
                .map(|s| s.as_str().to_string())
                .collect();
        }
        sel
    }

    pub(crate) fn sockets(&mut self, node: &Node, what: &str) -> SocketPredicate {
        let mut p = SocketPredicate::default();
        let Some(map) = self.mapping(node, what) else {
            return p;
        };
        self.known_keys(map, what, &SOCKET_KEYS);
        for (key, value) in map.iter() {
            match key.as_str() {
                "protocol" => p.protocol = self.nameds(value, "protocol"),
                "state" => p.state = self.nameds(value, "state"),
                "exposure" => p.exposure = self.nameds(value, "exposure"),
                "ports" => p.ports = self.ports(value),
                "process" => p.process = self.globs(value, "`process`"),
                "executable" => p.executable = self.globs(value, "`executable`"),
                "user" => p.user = self.globs(value, "`user`"),
                "unit" => p.unit = self.globs(value, "`unit`"),
                "container" => p.container = self.globs(value, "`container`"),
                "pod" => p.pod = self.globs(value, "`pod`"),
                "pod_namespace" => p.pod_namespace = self.globs(value, "`pod_namespace`"),
                "netns" => p.netns = self.netns(value),
                _ => {}
            }
        }
        p
    }

    /// Network namespace inodes; `host` is 0, the agent's own.
    fn netns(&mut self, node: &Node) -> Vec<u64> {
        let mut out = Vec::new();
        for s in self.list(node, "`netns`") {
            let text = s.as_str().trim();
            match text {
                "host" => out.push(0),
                _ => match text.parse::<u64>() {
                    Ok(n) => out.push(n),
                    Err(_) => self.problem(
                        s.span(),
                        format!(
                            "`netns` takes `host` (the agent's own namespace) and namespace inodes such as 4026532999 (`portolan sockets -o wide` shows them); got `{text}`"
                        ),
                    ),
                },
            }
        }
        out
    }

    fn ports(&mut self, node: &Node) -> Vec<PortRange> {
        let mut out = Vec::new();
        for s in self.list(node, "`ports`") {
            let text = s.as_str().trim();
            let parsed = match text.split_once('-') {
                Some((a, b)) => a
                    .trim()
                    .parse::<u16>()
                    .ok()
                    .zip(b.trim().parse::<u16>().ok()),
                None => text.parse::<u16>().ok().map(|p| (p, p)),
            };
            match parsed {
                Some((first, last)) if first <= last => out.push(PortRange { first, last }),
                _ => self.problem(
                    s.span(),
                    format!(
                        "`ports` takes port numbers (0-65535) and ranges such as \"9200-9300\"; got `{text}`"
                    ),
                ),
            }
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::Kind;
    use proptest::prelude::*;

    /// Every problem of a file that must be refused, as printed.
    pub(crate) fn problems(text: &str) -> Vec<String> {
        match parse("rules.yaml", text) {
            Ok(set) => panic!("accepted: {set:?}"),
            Err(e) => e.problems().iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_full_rule_parses() {
        let set = parse(
            "rules.yaml",
            "version: 1\nrules:\n  - id: db\n    kind: listener\n    severity: high\n    hosts: {labels: {env: prod}, hostname: \"db-*\", host_id: [a, b]}\n    sockets: {protocol: tcp, ports: [5432, \"9200-9300\"], exposure: [public, wildcard], process: postgres}\n",
        )
        .expect("valid");
        let rule = &set.rules[0];
        assert_eq!(rule.kind, Kind::Listener);
        assert_eq!(rule.severity, Severity::High);
        assert_eq!(rule.line, 3);
        assert_eq!(rule.hosts.labels, vec![("env".into(), Glob("prod".into()))]);
        assert_eq!(rule.hosts.host_id, vec!["a", "b"]);
        assert_eq!(
            rule.sockets.ports,
            vec![
                PortRange {
                    first: 5432,
                    last: 5432
                },
                PortRange {
                    first: 9200,
                    last: 9300
                }
            ]
        );
    }

    #[test]
    fn a_bad_enum_names_file_line_column_and_choices() {
        let text = "rules:\n  - id: db\n    kind: listener\n    severity: high\n    sockets:\n      exposure: [public, publik]\n";
        assert_eq!(
            problems(text),
            vec![
                "rules.yaml:6:26: `exposure` must be one of loopback, link_local, private, public, wildcard; got `publik`"
            ]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "rules:\n  - id: a\n    kind: listener\n    severity: urgent\n    colour: red\n  - id: a\n    kind: scan\n    severity: low\n    by: ports\n  - id: b\n    kind: listener\n    severity: low\n    sockets: {ports: [\"90-80\", 70000]}\n  - id: c\n    kind: nope\n    severity: low\n";
        let got = problems(text);
        assert_eq!(got.len(), 6, "{got:#?}");
        assert!(got[0].starts_with("rules.yaml:4:15: `severity` must be one of info, low, medium, high, critical; got `urgent`"), "{got:#?}");
        assert!(
            got[1].starts_with("rules.yaml:5:5: unknown key `colour` in a `listener` rule"),
            "{got:#?}"
        );
        assert!(
            got[2].starts_with("rules.yaml:7:11: a `scan` rule needs `min`"),
            "{got:#?}"
        );
        assert!(
            got[3].starts_with("rules.yaml:13:23: `ports` takes port numbers"),
            "{got:#?}"
        );
        assert!(
            got[4].starts_with("rules.yaml:13:32: `ports` takes port numbers"),
            "{got:#?}"
        );
        assert!(
            got[5].starts_with("rules.yaml:15:11: `kind` must be one of listener,"),
            "{got:#?}"
        );
    }

    #[test]
    fn duplicate_ids_and_keys_are_errors() {
        let text = "rules:\n  - {id: a, kind: listener, severity: low}\n  - {id: a, kind: listener, severity: low}\n";
        assert_eq!(
            problems(text),
            vec![
                "rules.yaml:3:10: duplicate rule id `a` (first used on line 2); ids must be unique"
            ]
        );
        let dup = "rules:\n  - id: a\n    id: b\n";
        assert_eq!(
            problems(dup),
            vec!["rules.yaml:3:5: duplicate key `id` (first given on line 2)"]
        );
    }

    #[test]
    fn kind_parameters_are_checked() {
        let text = "rules:\n  - {id: a, kind: ephemeral_exhaustion, severity: low, share: 1.5, sockets: {ports: [1]}}\n  - {id: b, kind: new_listener, severity: low, window: soon}\n  - {id: c, kind: peer_drift, severity: low}\n";
        let got = problems(text);
        assert_eq!(got.len(), 4, "{got:#?}");
        assert!(
            got.iter()
                .any(|p| p.contains("`share` must be a share above 0"))
        );
        assert!(
            got.iter()
                .any(|p| p.contains("`sockets` does not apply to `ephemeral_exhaustion`"))
        );
        assert!(
            got.iter()
                .any(|p| p.contains("`window` must be a duration"))
        );
        assert!(got.iter().any(|p| p.contains("needs a `label`")));
    }

    #[test]
    fn pod_container_and_netns_selectors_parse_in_every_socket_selector() {
        let text = "rules:\n  - id: a\n    kind: listener\n    severity: low\n    sockets: {pod: \"web-*\", pod_namespace: [shop, \"kube-*\"], container: \"?*\", netns: [host, 4026532999]}\n  - id: b\n    kind: flow_policy\n    severity: high\n    clients: {}\n    sockets: {ports: [5432], pod: [\"shop/db-*\"], netns: 4026533000}\n  - id: c\n    kind: new_listener\n    severity: low\n    allow: [{pod_namespace: kube-system}]\n  - {id: d, kind: shared_port, severity: low, sockets: {pod: \"?*\"}}\n  - {id: e, kind: peer_drift, severity: low, label: role, sockets: {netns: host}}\n  - {id: f, kind: port_owner_change, severity: low, sockets: {pod: api}}\n";
        let set = parse("rules.yaml", text).expect("valid");
        let a = &set.rules[0].sockets;
        assert_eq!(a.pod, vec![Glob("web-*".into())]);
        assert_eq!(
            a.pod_namespace,
            vec![Glob("shop".into()), Glob("kube-*".into())]
        );
        assert_eq!(a.container, vec![Glob("?*".into())]);
        assert_eq!(a.netns, vec![0, 4_026_532_999]);
        assert_eq!(set.rules[1].sockets.pod, vec![Glob("shop/db-*".into())]);
        assert_eq!(set.rules[1].sockets.netns, vec![4_026_533_000]);
        let Kind::NewListener(params) = &set.rules[2].kind else {
            panic!("new_listener: {:?}", set.rules[2].kind);
        };
        assert_eq!(
            params.allow[0].pod_namespace,
            vec![Glob("kube-system".into())]
        );
        assert_eq!(set.rules[5].sockets.pod, vec![Glob("api".into())]);
        for rule in &set.rules {
            let sql = crate::compile(rule);
            assert!(sql.starts_with("SELECT "), "{sql}");
        }
    }

    #[test]
    fn a_bad_netns_and_pods_on_connection_counting_rules_are_errors() {
        let text = "rules:\n  - {id: a, kind: listener, severity: low, sockets: {netns: [pod, -1]}}\n  - {id: b, kind: scan, severity: low, by: ports, min: 3, sockets: {pod: web}}\n";
        let got = problems(text);
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(
            got[0].starts_with("rules.yaml:2:62: `netns` takes `host`")
                && got[0].ends_with("got `pod`"),
            "{got:#?}"
        );
        assert!(got[1].ends_with("got `-1`"), "{got:#?}");
        assert!(
            got[2].contains("`sockets` does not apply to `scan` rules"),
            "{got:#?}"
        );
    }

    #[test]
    fn not_yaml_is_one_problem() {
        let got = problems("rules: [\n");
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("rules.yaml:"), "{got:?}");
    }

    #[test]
    fn the_default_pack_parses_and_compiles() {
        let set = parse(
            "deploy/rules/default.yaml",
            include_str!("../../../deploy/rules/default.yaml"),
        )
        .expect("the default pack is valid");
        let kinds: std::collections::BTreeSet<&str> =
            set.rules.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(
            kinds.len(),
            kind::NAMES.len(),
            "every kind is used: {kinds:?}"
        );
        for rule in &set.rules {
            let sql = crate::compile(rule);
            assert!(sql.starts_with("SELECT "), "{sql}");
        }
    }

    proptest! {
        /// Any string given as a hostname glob or label value survives parsing unchanged.
        #[test]
        fn strings_survive_parsing(s in "[^\\x00-\\x1f\\x7f]{0,40}") {
            let quoted = s.replace('\\', "\\\\").replace('"', "\\\"");
            let text = format!(
                "rules:\n  - id: a\n    kind: listener\n    severity: low\n    hosts:\n      hostname: \"{quoted}\"\n      labels: {{k: \"{quoted}\"}}\n"
            );
            let set = parse("p.yaml", &text).expect("valid");
            prop_assert_eq!(&set.rules[0].hosts.hostname, &vec![Glob(s.clone())]);
            prop_assert_eq!(&set.rules[0].hosts.labels, &vec![("k".to_string(), Glob(s))]);
        }

        /// Any string given as a pod or pod namespace glob survives parsing unchanged,
        /// and any inode as a `netns`.
        #[test]
        fn pod_selectors_survive_parsing(s in "[^\\x00-\\x1f\\x7f]{0,40}", inode in any::<u64>()) {
            let quoted = s.replace('\\', "\\\\").replace('"', "\\\"");
            let text = format!(
                "rules:\n  - id: a\n    kind: listener\n    severity: low\n    sockets:\n      pod: \"{quoted}\"\n      pod_namespace: [\"{quoted}\"]\n      netns: [{inode}, host]\n"
            );
            let set = parse("p.yaml", &text).expect("valid");
            prop_assert_eq!(&set.rules[0].sockets.pod, &vec![Glob(s.clone())]);
            prop_assert_eq!(&set.rules[0].sockets.pod_namespace, &vec![Glob(s)]);
            prop_assert_eq!(&set.rules[0].sockets.netns, &vec![inode, 0]);
        }
    }
}
