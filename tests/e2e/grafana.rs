//! Grafana: every SQL query of `deploy/grafana` (panel targets, template variable queries,
//! alert rule queries) is extracted, its grafana-clickhouse-datasource macros and template
//! variables expanded as Grafana would, and run against the ClickHouse a real collector
//! filled from real agents in namespace hosts. Each answer must have the shape its panel
//! needs (time series: a time column then numbers; tables: the columns the panel names;
//! stats: a number; node graphs: ids, sources, targets), must not be empty, and the key
//! panels must show what the test did: the public listener it opened, the host whose agent
//! it stopped, the flows it made, the findings its rules raised and resolved.
//!
//! The same expanded queries, with fixed times, are written to `target/chdb/grafana.sql`
//! for `tools/chdb/check.py`, which runs them on a current ClickHouse.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use portolan_core::Protocol;
use portolan_testkit::{Lab, NetnsHost, SocketFixture, fixture_binary};
use serde_json::{Map, Value};

use crate::support::{Cluster, Limits};

/// The data source every dashboard and alert rule must use.
const DATASOURCE_UID: &str = "portolan-clickhouse";
const DATASOURCE_TYPE: &str = "grafana-clickhouse-datasource";
const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// `$__interval_s` as Grafana would compute it for a wide panel over a few hours.
const INTERVAL_S: u64 = 10;

/// A public address (TEST-NET-1) given to the `web` host's loopback interface: a wildcard
/// bind there is exposed publicly, and nothing is ever sent to it.
const PUBLIC_ADDRESS: &str = "192.0.2.10";
const WEB_PORT: u16 = 18443;
const PUBLIC_ONLY_PORT: u16 = 18444;
const LOOPBACK_PORT: u16 = 16379;
const DB_PORT: u16 = 15432;
const SHORT_LIVED_PORT: u16 = 19090;

const RULES: &str = r#"
version: 1
rules:
  - id: public-listener
    kind: listener
    severity: high
    sockets: {exposure: [public]}
  - id: db-listener
    kind: listener
    severity: medium
    hosts: {labels: {role: db}}
    sockets: {ports: [15432]}
"#;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

// --- what Grafana would run ------------------------------------------------------------

/// What a query's answer must look like.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// A time column, then numbers (string columns: series labels).
    TimeSeries,
    /// Exactly these columns, in this order.
    Table(Vec<String>),
    /// One row; numbers.
    Stat,
    /// A label column, then numbers.
    Bars,
    /// Node graph nodes: `id`, `title`, `mainstat`.
    Nodes,
    /// Node graph edges: `id`, `source`, `target`, `mainstat`.
    Edges,
    /// A template variable: one column of values.
    Variable,
    /// A Grafana-managed alert rule's query: label columns and one number, compared by
    /// the rule's threshold.
    Alert { op: String, threshold: f64 },
}

/// A template variable of a dashboard.
#[derive(Debug, Clone)]
struct Variable {
    name: String,
    multi: bool,
    include_all: bool,
    /// The selected value of a custom variable.
    current: Option<String>,
}

/// Each dashboard's variables, by dashboard uid.
type Variables = BTreeMap<String, Vec<Variable>>;

/// One query of a dashboard or of the alert rules.
#[derive(Debug, Clone)]
struct GrafanaQuery {
    /// `file: panel "title" refId` or similar.
    origin: String,
    /// The dashboard's uid (`alerts` for the alert rules).
    dashboard: String,
    /// The panel's title (or the variable's or rule's name).
    title: String,
    sql: String,
    expect: Expect,
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// A YAML document as JSON (plain scalars that read as numbers or booleans become them).
fn read_yaml(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let node = marked_yaml::parse_yaml(0, &text)
        .map_err(|e| anyhow::anyhow!("{} is not YAML: {e}", path.display()))?;
    Ok(yaml_to_json(&node))
}

fn yaml_to_json(node: &marked_yaml::Node) -> Value {
    match node {
        marked_yaml::Node::Scalar(s) => {
            let text = s.as_str();
            if s.may_coerce() {
                if let Ok(n) = text.parse::<i64>() {
                    return Value::from(n);
                }
                if let Ok(f) = text.parse::<f64>() {
                    return Value::from(f);
                }
                if let Some(b) = s.as_bool() {
                    return Value::Bool(b);
                }
            }
            Value::String(text.to_string())
        }
        marked_yaml::Node::Sequence(seq) => Value::Array(seq.iter().map(yaml_to_json).collect()),
        marked_yaml::Node::Mapping(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.as_str().to_string(), yaml_to_json(v)))
                .collect::<Map<String, Value>>(),
        ),
    }
}

fn dashboard_files() -> Result<Vec<PathBuf>> {
    let dir = repo().join("deploy/grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    ensure!(
        files.len() >= 5,
        "expected the five dashboards in {}",
        dir.display()
    );
    Ok(files)
}

fn str_of<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a str> {
    v[key]
        .as_str()
        .with_context(|| format!("{what}: `{key}` is missing or not a string"))
}

fn check_datasource(v: &Value, what: &str) -> Result<()> {
    ensure!(
        v["datasource"]["uid"] == DATASOURCE_UID && v["datasource"]["type"] == DATASOURCE_TYPE,
        "{what}: data source is {}, expected uid `{DATASOURCE_UID}` of type `{DATASOURCE_TYPE}`",
        v["datasource"]
    );
    Ok(())
}

/// The columns a table panel names: the keys of its organize transformation, in its order;
/// every field override by name must name one of them.
fn table_columns(panel: &Value, what: &str) -> Result<Vec<String>> {
    let organize = panel["transformations"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["id"] == "organize"))
        .with_context(|| {
            format!("{what}: a table without an organize transformation naming its columns")
        })?;
    let index = organize["options"]["indexByName"]
        .as_object()
        .with_context(|| format!("{what}: organize has no indexByName"))?;
    let mut columns: Vec<(u64, String)> = index
        .iter()
        .map(|(k, v)| (v.as_u64().unwrap_or(u64::MAX), k.clone()))
        .collect();
    columns.sort();
    let columns: Vec<String> = columns.into_iter().map(|(_, c)| c).collect();
    let renamed: BTreeSet<&String> = organize["options"]["renameByName"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    ensure!(
        renamed == columns.iter().collect(),
        "{what}: renameByName {renamed:?} and indexByName {columns:?} name different columns"
    );
    for o in panel["fieldConfig"]["overrides"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if o["matcher"]["id"] == "byName" {
            let name = o["matcher"]["options"].as_str().unwrap_or_default();
            ensure!(
                columns.iter().any(|c| c == name),
                "{what}: an override names column `{name}`, which the table does not have"
            );
        }
    }
    Ok(columns)
}

fn panels(list: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in list.as_array().into_iter().flatten() {
        if p["type"] == "row" {
            out.extend(panels(&p["panels"]));
        } else {
            out.push(p);
        }
    }
    out
}

/// Every query of a dashboard, and its template variables.
fn dashboard_queries(file: &Path) -> Result<(Vec<GrafanaQuery>, Vec<Variable>)> {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dashboard = read_json(file)?;
    let uid = str_of(&dashboard, "uid", &name)?.to_string();
    let mut out = Vec::new();
    let mut variables = Vec::new();
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let var = str_of(v, "name", &name)?.to_string();
        let what = format!("{name}: variable `{var}`");
        match v["type"].as_str() {
            Some("query") => {
                check_datasource(v, &what)?;
                out.push(GrafanaQuery {
                    origin: what.clone(),
                    dashboard: uid.clone(),
                    title: format!("variable {var}"),
                    sql: str_of(v, "query", &what)?.to_string(),
                    expect: Expect::Variable,
                });
            }
            Some("custom") => {}
            other => bail!("{what}: variable type {other:?} is not handled by this test"),
        }
        variables.push(Variable {
            name: var,
            multi: v["multi"].as_bool().unwrap_or(false),
            include_all: v["includeAll"].as_bool().unwrap_or(false),
            current: v["current"]["value"].as_str().map(str::to_string),
        });
    }
    for p in panels(&dashboard["panels"]) {
        let title = str_of(p, "title", &name)?.to_string();
        let kind = str_of(p, "type", &name)?;
        let targets = p["targets"]
            .as_array()
            .filter(|t| !t.is_empty())
            .with_context(|| format!("{name}: panel `{title}` has no query"))?;
        for t in targets {
            let ref_id = str_of(t, "refId", &title)?;
            let what = format!("{name}: panel `{title}` query {ref_id}");
            check_datasource(t, &what)?;
            ensure!(t["editorType"] == "sql", "{what}: not a raw SQL query");
            let format = t["format"].as_u64();
            let expect = match kind {
                "timeseries" => {
                    ensure!(
                        format == Some(0) && t["queryType"] == "timeseries",
                        "{what}: a time series panel needs format 0 (time series)"
                    );
                    Expect::TimeSeries
                }
                "table" => Expect::Table(table_columns(p, &what)?),
                "stat" => Expect::Stat,
                "bargauge" => Expect::Bars,
                "nodeGraph" => match ref_id {
                    "nodes" => Expect::Nodes,
                    "edges" => Expect::Edges,
                    _ => bail!("{what}: node graph queries are refId `nodes` or `edges`"),
                },
                other => bail!("{what}: panel type `{other}` has no expected shape in this test"),
            };
            if kind != "timeseries" {
                ensure!(format == Some(1), "{what}: expected format 1 (table)");
            }
            out.push(GrafanaQuery {
                origin: what.clone(),
                dashboard: uid.clone(),
                title: title.clone(),
                sql: str_of(t, "rawSql", &what)?.to_string(),
                expect,
            });
        }
    }
    Ok((out, variables))
}

/// The queries of the alert rules, each with its threshold.
fn alert_queries(file: &Path) -> Result<Vec<GrafanaQuery>> {
    let doc = read_yaml(file)?;
    let mut out = Vec::new();
    for group in doc["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            let title = str_of(rule, "title", "alert rule")?.to_string();
            let condition = str_of(rule, "condition", &title)?;
            let data = rule["data"]
                .as_array()
                .with_context(|| format!("alert rule `{title}` has no data"))?;
            let by_ref = |r: &str| data.iter().find(|d| d["refId"] == r);
            let cond = by_ref(condition)
                .with_context(|| format!("alert rule `{title}`: no data item {condition}"))?;
            ensure!(
                cond["model"]["type"] == "threshold",
                "alert rule `{title}`: the condition is expected to be a threshold"
            );
            let evaluator = &cond["model"]["conditions"][0]["evaluator"];
            let op = str_of(evaluator, "type", &title)?.to_string();
            let threshold = evaluator["params"][0]
                .as_f64()
                .with_context(|| format!("alert rule `{title}`: threshold without a number"))?;
            let input = str_of(&cond["model"], "expression", &title)?;
            let query = by_ref(input)
                .with_context(|| format!("alert rule `{title}`: no data item {input}"))?;
            ensure!(
                query["datasourceUid"] == DATASOURCE_UID,
                "alert rule `{title}`: query {input} is not on `{DATASOURCE_UID}`"
            );
            check_datasource(&query["model"], &title)?;
            ensure!(
                query["model"]["format"] == 1 && query["model"]["editorType"] == "sql",
                "alert rule `{title}`: expected a raw SQL table query"
            );
            ensure!(
                query["relativeTimeRange"]["from"].as_u64().is_some(),
                "alert rule `{title}`: query {input} needs a relativeTimeRange"
            );
            out.push(GrafanaQuery {
                origin: format!("portolan-alerts.yaml: rule `{title}`"),
                dashboard: "alerts".into(),
                title: title.clone(),
                sql: str_of(&query["model"], "rawSql", &title)?.to_string(),
                expect: Expect::Alert { op, threshold },
            });
        }
    }
    ensure!(
        out.len() >= 2,
        "expected the alert rules on findings and stale hosts"
    );
    Ok(out)
}

/// Every query of every dashboard and alert rule, with each dashboard's variables.
fn all_queries() -> Result<(Vec<GrafanaQuery>, Variables)> {
    let mut queries = Vec::new();
    let mut variables = BTreeMap::new();
    let mut uids = BTreeSet::new();
    for file in dashboard_files()? {
        let (q, v) = dashboard_queries(&file)?;
        let uid = q.first().map(|q| q.dashboard.clone()).unwrap_or_default();
        ensure!(uids.insert(uid.clone()), "two dashboards with uid `{uid}`");
        variables.insert(uid, v);
        queries.extend(q);
    }
    queries.extend(alert_queries(
        &repo().join("deploy/grafana/provisioning/alerting/portolan-alerts.yaml"),
    )?);
    Ok((queries, variables))
}

// --- macros and template variables -----------------------------------------------------

/// What a variable is set to.
#[derive(Debug, Clone)]
enum Binding {
    All,
    Values(Vec<String>),
}

/// The time range, interval and variables a query is expanded with.
#[derive(Debug, Clone)]
struct Expansion {
    from: u64,
    to: u64,
    interval_s: u64,
    vars: BTreeMap<String, Binding>,
}

/// The arguments of a macro call starting right after its `(` at `open`: split on
/// top-level commas; returns them and the index just after the closing `)`.
fn macro_args(sql: &str, open: usize) -> Result<(Vec<String>, usize)> {
    let bytes = sql.as_bytes();
    let (mut depth, mut quoted, mut start) = (0usize, false, open);
    let mut args = Vec::new();
    let mut i = open;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\\' if quoted => i += 1,
            b'\'' => quoted = !quoted,
            b'(' if !quoted => depth += 1,
            b')' if !quoted && depth > 0 => depth -= 1,
            b')' if !quoted => {
                args.push(sql[start..i].trim().to_string());
                return Ok((args, i + 1));
            }
            b',' if !quoted && depth == 0 => {
                args.push(sql[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    bail!("unclosed macro call at byte {open}")
}

/// `$__conditionalAll(condition, $var)`: `1=1` when the variable is at All, else the
/// condition (as the data source's frontend does before interpolating variables).
fn conditional_all(sql: &str, ctx: &Expansion) -> Result<String> {
    const MACRO: &str = "$__conditionalAll(";
    let mut out = String::new();
    let mut rest = sql;
    while let Some(at) = rest.find(MACRO) {
        out.push_str(&rest[..at]);
        let (args, end) = macro_args(rest, at + MACRO.len())?;
        ensure!(
            args.len() == 2,
            "$__conditionalAll takes 2 arguments, got {args:?}"
        );
        let var = args[1]
            .trim_start_matches('$')
            .trim_start_matches('{')
            .trim_end_matches('}');
        match ctx.vars.get(var) {
            Some(Binding::All) => out.push_str("1=1"),
            Some(Binding::Values(_)) => out.push_str(&args[0]),
            None => bail!("$__conditionalAll names variable `{var}`, which is not set"),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    Ok(out)
}

fn format_values(name: &str, values: &[String], format: &str) -> Result<String> {
    let quoted = |escape: &dyn Fn(&str) -> String| {
        values
            .iter()
            .map(|v| format!("'{}'", escape(v)))
            .collect::<Vec<_>>()
            .join(",")
    };
    Ok(match format {
        "singlequote" => quoted(&|v| v.replace('\'', "\\'")),
        "sqlstring" => quoted(&|v| v.replace('\'', "''")),
        "csv" => values.join(","),
        "raw" => {
            ensure!(
                values.len() == 1,
                "`${name}` without a format has {} values: give a format",
                values.len()
            );
            values[0].clone()
        }
        other => bail!("variable `{name}`: format `{other}` is not handled by this test"),
    })
}

/// Template variables: `${name:format}`, `${name}`, `$name`.
fn interpolate(sql: &str, ctx: &Expansion) -> Result<String> {
    let mut out = String::new();
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, format, len) = if let Some(inner) = after.strip_prefix('{') {
            let close = inner.find('}').context("unclosed `${`")?;
            let body = &inner[..close];
            let (n, f) = body.split_once(':').unwrap_or((body, "raw"));
            (n.to_string(), f.to_string(), close + 2)
        } else {
            let n: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let len = n.len();
            (n, "raw".to_string(), len)
        };
        if name.is_empty() || name.starts_with("__") {
            // Not a variable (`$'` in a regex) or a macro, expanded later.
            out.push('$');
            rest = after;
            continue;
        }
        match ctx.vars.get(&name) {
            Some(Binding::Values(values)) => out.push_str(&format_values(&name, values, &format)?),
            Some(Binding::All) => {
                bail!("variable `{name}` at All is used outside $__conditionalAll")
            }
            None => bail!("unknown template variable `{name}`"),
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The data source's own macros, expanded as its backend does.
fn macros(sql: &str, ctx: &Expansion) -> Result<String> {
    let mut out = String::new();
    let mut rest = sql;
    while let Some(at) = rest.find("$__") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 3..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let mut end = at + 3 + name.len();
        let args = if rest[end..].starts_with('(') {
            let (args, close) = macro_args(rest, end + 1)?;
            end = close;
            Some(args)
        } else {
            None
        };
        let one = |args: &Option<Vec<String>>| -> Result<String> {
            match args.as_deref() {
                Some([column]) => Ok(column.clone()),
                _ => bail!("$__{name} takes one column, got {args:?}"),
            }
        };
        let expanded = match name.as_str() {
            "timeFilter" => {
                let c = one(&args)?;
                format!(
                    "{c} >= toDateTime({}) AND {c} <= toDateTime({})",
                    ctx.from, ctx.to
                )
            }
            "interval_s" if args.is_none() => ctx.interval_s.max(1).to_string(),
            other => bail!(
                "unknown macro `$__{other}` (this test expands only the macros the dashboards use: add it here, as the data source expands it)"
            ),
        };
        out.push_str(&expanded);
        rest = &rest[end..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A query as the data source sends it to ClickHouse.
fn expand(sql: &str, ctx: &Expansion) -> Result<String> {
    let sql = conditional_all(sql, ctx)?;
    let sql = interpolate(&sql, ctx)?;
    let sql = macros(&sql, ctx)?;
    ensure!(
        !sql.contains("$__"),
        "a macro is left after expansion:\n{sql}"
    );
    Ok(sql)
}

/// The two ways each query is run: every multi-value variable at All, and every variable
/// at the values below (multi-value ones get two hosts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Selection {
    All,
    Chosen,
}

/// The value a variable is set to in the `Chosen` run, per dashboard.
fn chosen(dashboard: &str, var: &str) -> Option<Vec<String>> {
    let one = |s: &str| Some(vec![s.to_string()]);
    match (dashboard, var) {
        (_, "host") => Some(vec!["web".into(), "gone".into()]),
        ("portolan-listener-history", "port") => one(&SHORT_LIVED_PORT.to_string()),
        ("portolan-flows", "port") => one(&WEB_PORT.to_string()),
        (_, "severity") => one("high"),
        (_, "rule") => one("public-listener"),
        _ => None,
    }
}

fn context(
    q: &GrafanaQuery,
    variables: &Variables,
    selection: Selection,
    from: u64,
    to: u64,
) -> Result<Expansion> {
    let mut vars = BTreeMap::new();
    for v in variables.get(&q.dashboard).into_iter().flatten() {
        let binding = if selection == Selection::All && v.include_all {
            Binding::All
        } else if let Some(values) = chosen(&q.dashboard, &v.name) {
            let values = if v.multi {
                values
            } else {
                values[..1].to_vec()
            };
            Binding::Values(values)
        } else if let Some(current) = &v.current {
            Binding::Values(vec![current.clone()])
        } else {
            bail!(
                "{}: no value for variable `{}` in this test",
                q.origin,
                v.name
            )
        };
        vars.insert(v.name.clone(), binding);
    }
    Ok(Expansion {
        from,
        to,
        interval_s: INTERVAL_S,
        vars,
    })
}

// --- answers ---------------------------------------------------------------------------

/// A query's answer: column names and types, and rows as text.
#[derive(Debug, Clone)]
struct Answer {
    columns: Vec<(String, String)>,
    rows: Vec<Vec<String>>,
}

impl Answer {
    fn column(&self, name: &str) -> Result<usize> {
        self.columns
            .iter()
            .position(|(n, _)| n == name)
            .with_context(|| format!("no column `{name}` in {:?}", self.names()))
    }

    fn names(&self) -> Vec<&str> {
        self.columns.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The rows as maps column → value.
    fn records(&self) -> Vec<BTreeMap<&str, &str>> {
        self.rows
            .iter()
            .map(|r| {
                self.columns
                    .iter()
                    .zip(r)
                    .map(|((n, _), v)| (n.as_str(), v.as_str()))
                    .collect()
            })
            .collect()
    }
}

fn is_numeric(ty: &str) -> bool {
    let ty = ty.trim_start_matches("Nullable(");
    ["UInt", "Int", "Float", "Decimal"]
        .iter()
        .any(|p| ty.starts_with(p))
}

fn is_text(ty: &str) -> bool {
    let ty = ty
        .trim_start_matches("Nullable(")
        .trim_start_matches("LowCardinality(");
    ty.starts_with("String") || ty.starts_with("FixedString")
}

fn is_time(ty: &str) -> bool {
    ty.starts_with("DateTime")
}

async fn run(cluster: &Cluster, sql: &str) -> Result<Answer> {
    let bytes = cluster
        .store
        .client()
        .query(sql)
        .fetch_bytes("JSONCompact")
        .context("starting the query")?
        .collect()
        .await
        .context("ClickHouse refused the query")?;
    let doc: Value = serde_json::from_slice(&bytes).context("reading ClickHouse's answer")?;
    let columns = doc["meta"]
        .as_array()
        .context("no `meta` in the answer")?
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or_default().to_string(),
                m["type"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let rows = doc["data"]
        .as_array()
        .context("no `data` in the answer")?
        .iter()
        .map(|r| {
            r.as_array()
                .into_iter()
                .flatten()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    Ok(Answer { columns, rows })
}

/// Whether an answer has the shape its panel needs; an empty answer fails too.
fn check_shape(expect: &Expect, a: &Answer) -> Result<()> {
    ensure!(
        !a.rows.is_empty(),
        "no rows, where the test made data for it"
    );
    let types: Vec<&str> = a.columns.iter().map(|(_, t)| t.as_str()).collect();
    let text_or_number = |from: usize| types[from..].iter().all(|t| is_numeric(t) || is_text(t));
    match expect {
        Expect::TimeSeries => {
            ensure!(
                types.first().is_some_and(|t| is_time(t)),
                "a time series needs a DateTime first column, got {:?}",
                a.columns
            );
            ensure!(
                types[1..].iter().any(|t| is_numeric(t)) && text_or_number(1),
                "a time series needs numbers (and label strings) after the time, got {:?}",
                a.columns
            );
        }
        Expect::Table(columns) => {
            ensure!(
                a.names() == columns.iter().map(String::as_str).collect::<Vec<_>>(),
                "the panel names columns {columns:?}, the query returns {:?}",
                a.names()
            );
        }
        Expect::Stat => {
            ensure!(
                a.rows.len() == 1,
                "a stat needs one row, got {}",
                a.rows.len()
            );
            ensure!(
                types.iter().all(|t| is_numeric(t)),
                "a stat needs numbers, got {:?}",
                a.columns
            );
        }
        Expect::Bars => {
            ensure!(
                types.len() >= 2 && is_text(types[0]) && types[1..].iter().all(|t| is_numeric(t)),
                "a bar gauge needs a label then numbers, got {:?}",
                a.columns
            );
        }
        Expect::Nodes | Expect::Edges => {
            let needed: &[&str] = if *expect == Expect::Nodes {
                &["id", "title"]
            } else {
                &["id", "source", "target"]
            };
            for n in needed {
                ensure!(is_text(types[a.column(n)?]), "`{n}` must be a string");
            }
            ensure!(
                is_numeric(types[a.column("mainstat")?]),
                "`mainstat` must be a number"
            );
            let ids: BTreeSet<&String> = a.rows.iter().map(|r| &r[0]).collect();
            ensure!(ids.len() == a.rows.len(), "node graph ids are not unique");
        }
        Expect::Variable => {
            ensure!(
                a.columns.len() == 1,
                "a variable query returns one column, got {:?}",
                a.columns
            );
        }
        Expect::Alert { .. } => {
            let numbers = types.iter().filter(|t| is_numeric(t)).count();
            ensure!(
                numbers == 1 && text_or_number(0),
                "an alert query returns label strings and one number, got {:?}",
                a.columns
            );
            let labels: BTreeSet<Vec<&String>> = a
                .rows
                .iter()
                .map(|r| {
                    r.iter()
                        .zip(&types)
                        .filter(|(_, t)| is_text(t))
                        .map(|(v, _)| v)
                        .collect()
                })
                .collect();
            ensure!(
                labels.len() == a.rows.len(),
                "two alert instances with the same labels"
            );
        }
    }
    Ok(())
}

/// The label sets of an alert query's rows that its threshold fires on.
fn firing(expect: &Expect, a: &Answer) -> Result<Vec<BTreeMap<String, String>>> {
    let Expect::Alert { op, threshold } = expect else {
        bail!("not an alert query")
    };
    let mut out = Vec::new();
    for row in &a.rows {
        let mut labels = BTreeMap::new();
        let mut value = None;
        for ((name, ty), v) in a.columns.iter().zip(row) {
            if is_numeric(ty) {
                value = Some(v.parse::<f64>().context("a numeric value")?);
            } else {
                labels.insert(name.clone(), v.clone());
            }
        }
        let value = value.context("no value")?;
        let fires = match op.as_str() {
            "gt" => value > *threshold,
            "lt" => value < *threshold,
            other => bail!("threshold type `{other}` is not handled by this test"),
        };
        if fires {
            out.push(labels);
        }
    }
    Ok(out)
}

// --- the deployable files, without a server ---------------------------------------------

/// The provisioning files agree with each other, every query expands, and the expanded
/// queries are written for the check on a current ClickHouse (`tools/chdb/check.py`).
#[test]
fn grafana_provisioning_is_consistent_and_dumped_for_chdb() -> Result<()> {
    let base = repo().join("deploy/grafana/provisioning");
    let ds = read_yaml(&base.join("datasources/portolan-clickhouse.yaml"))?;
    let source = &ds["datasources"][0];
    assert_eq!(source["uid"], DATASOURCE_UID);
    assert_eq!(source["type"], DATASOURCE_TYPE);
    for key in ["host", "port", "protocol", "username", "defaultDatabase"] {
        assert!(
            source["jsonData"].get(key).is_some(),
            "jsonData.{key} missing"
        );
    }
    assert_eq!(source["jsonData"]["protocol"], "http");
    assert!(
        source["secureJsonData"]["password"]
            .as_str()
            .is_some_and(|p| p.starts_with("${")),
        "the password comes from the environment"
    );
    let provider = read_yaml(&base.join("dashboards/portolan.yaml"))?;
    assert_eq!(provider["providers"][0]["type"], "file");
    // The contact point example: valid, and its policies route to receivers it defines.
    let contacts = read_yaml(&base.join("alerting/contact-points.example.yaml"))?;
    let names: BTreeSet<&str> = contacts["contactPoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let policy = &contacts["policies"][0];
    let mut receivers = vec![policy["receiver"].as_str()];
    receivers.extend(
        policy["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["receiver"].as_str()),
    );
    for r in receivers {
        assert!(
            r.is_some_and(|r| names.contains(r)),
            "policy receiver {r:?} not in {names:?}"
        );
    }

    let (queries, variables) = all_queries()?;
    let (from, to) = (1_760_000_000, 1_760_021_600);
    let mut dump = String::from(
        "-- generated by tests/e2e/grafana.rs: the Grafana queries of deploy/grafana, expanded; statements end with a line holding only `;`\n\n",
    );
    for q in &queries {
        for selection in [Selection::All, Selection::Chosen] {
            let ctx = context(q, &variables, selection, from, to)?;
            let sql = expand(&q.sql, &ctx).with_context(|| q.origin.clone())?;
            let _ = write!(
                dump,
                "-- grafana {} ({selection:?})\n{sql}\n;\n\n",
                q.origin
            );
        }
    }
    let dir = repo().join("target/chdb");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("grafana.sql"), dump)?;
    println!("{} Grafana queries expanded", queries.len());
    Ok(())
}

#[test]
fn grafana_macro_expansion_follows_the_data_source() -> Result<()> {
    let mut vars = BTreeMap::new();
    vars.insert("host".to_string(), Binding::All);
    vars.insert(
        "sev".to_string(),
        Binding::Values(vec!["high".into(), "o'brien".into()]),
    );
    vars.insert("n".to_string(), Binding::Values(vec!["5".into()]));
    let ctx = Expansion {
        from: 100,
        to: 200,
        interval_s: 0,
        vars,
    };
    assert_eq!(
        expand(
            "WHERE $__conditionalAll(host_id IN (${host:singlequote}), $host) AND $__conditionalAll(s IN (${sev:singlequote}), $sev) AND x > $n AND ${sev:sqlstring} != '' AND y IN (${sev:csv})",
            &ctx
        )?,
        "WHERE 1=1 AND s IN ('high','o\\'brien') AND x > 5 AND 'high','o''brien' != '' AND y IN (high,o'brien)"
    );
    assert_eq!(
        expand(
            "SELECT intDiv(toUInt32(at), $__interval_s) AS t WHERE $__timeFilter(at)",
            &ctx
        )?,
        "SELECT intDiv(toUInt32(at), 1) AS t WHERE at >= toDateTime(100) AND at <= toDateTime(200)"
    );
    // Macros the dashboards do not use are refused rather than guessed; `$__timeInterval`
    // expands to `toStartOfInterval`, which ClickHouse 18.16 lacks.
    assert!(expand("SELECT $__timeInterval(at)", &ctx).is_err());
    assert!(expand("WHERE at < $__toTime", &ctx).is_err());
    assert_eq!(
        expand("replaceRegexpOne(a, '^x$', '\\\\1')", &ctx)?,
        "replaceRegexpOne(a, '^x$', '\\\\1')"
    );
    assert!(expand("WHERE $__timeFilter_ms(at)", &ctx).is_err());
    assert!(expand("WHERE $__dateFilter(d)", &ctx).is_err());
    assert!(expand("WHERE x IN ($nope)", &ctx).is_err());
    assert!(expand("WHERE x IN (${host:singlequote})", &ctx).is_err());
    assert!(expand("WHERE x IN (${sev:percentencode})", &ctx).is_err());
    Ok(())
}

// --- end to end --------------------------------------------------------------------------

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Waits until `check` passes, or fails with its last error after `timeout`.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("{what}: not within {timeout:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

async fn scalar(cluster: &Cluster, sql: &str) -> Result<u64> {
    let a = run(cluster, sql).await?;
    a.rows
        .first()
        .and_then(|r| r.first())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no number from {sql}"))
}

/// Runs every query in both selections; returns the answers by (dashboard, title,
/// selection) for the content checks.
async fn run_all(
    cluster: &Cluster,
    queries: &[GrafanaQuery],
    variables: &Variables,
    from: u64,
) -> Result<BTreeMap<(String, String, Selection), Answer>> {
    let mut out = BTreeMap::new();
    for q in queries {
        for selection in [Selection::All, Selection::Chosen] {
            let ctx = context(q, variables, selection, from, now_unix() + 60)?;
            let sql = expand(&q.sql, &ctx).with_context(|| q.origin.clone())?;
            let answer = run(cluster, &sql)
                .await
                .with_context(|| format!("{} ({selection:?}):\n{sql}", q.origin))?;
            check_shape(&q.expect, &answer).with_context(|| {
                format!("{} ({selection:?}):\n{sql}\nanswer: {answer:?}", q.origin)
            })?;
            let key = (q.dashboard.clone(), q.title.clone(), selection);
            // Node graph: two queries under one title.
            let key = match q.expect {
                Expect::Nodes => (key.0, format!("{} nodes", key.1), selection),
                Expect::Edges => (key.0, format!("{} edges", key.1), selection),
                _ => key,
            };
            out.insert(key, answer);
        }
    }
    Ok(out)
}

/// What the key panels must show of what the test did.
fn check_content(
    answers: &BTreeMap<(String, String, Selection), Answer>,
    queries: &[GrafanaQuery],
    bridge: IpAddr,
) -> Result<()> {
    let get = |d: &str, t: &str, s: Selection| {
        answers
            .get(&(d.to_string(), t.to_string(), s))
            .with_context(|| format!("no answer for {d} / {t}"))
    };
    use Selection::{All, Chosen};
    let fleet = "portolan-fleet";

    // The values the test chooses are among those each variable's query offers.
    for ((dashboard, title, selection), a) in answers {
        let Some(var) = title.strip_prefix("variable ") else {
            continue;
        };
        let offered: BTreeSet<&str> = a.rows.iter().map(|r| r[0].as_str()).collect();
        for value in chosen(dashboard, var).into_iter().flatten() {
            ensure!(
                offered.contains(value.as_str()),
                "{dashboard}: variable `{var}` does not offer `{value}` ({selection:?}): {offered:?}"
            );
        }
    }

    // The public listeners the test opened on `web`, and nothing private or loopback.
    let public = get(fleet, "Public listeners", All)?.records();
    let ports: BTreeSet<(&str, &str)> = public
        .iter()
        .map(|r| (r["host_id"], r["local_port"]))
        .collect();
    for port in [WEB_PORT, PUBLIC_ONLY_PORT] {
        ensure!(
            ports.contains(&("web", port.to_string().as_str())),
            "public listener web:{port} missing from {ports:?}"
        );
    }
    ensure!(
        !public
            .iter()
            .any(|r| r["local_port"] == LOOPBACK_PORT.to_string()
                || r["local_port"] == DB_PORT.to_string()),
        "a loopback or private listener among the public ones: {ports:?}"
    );
    let exposure = get(fleet, "Listeners by exposure", All)?.records();
    let public_n = exposure
        .iter()
        .find(|r| r["exposure"] == "public")
        .and_then(|r| r["listeners_n"].parse::<u64>().ok());
    ensure!(
        public_n.is_some_and(|n| n >= 2),
        "exposure counts without the public listeners: {exposure:?}"
    );

    // The stopped agent's host, and only it.
    for s in [All, Chosen] {
        let stale: BTreeSet<&str> = get(fleet, "Hosts that stopped reporting", s)?
            .records()
            .iter()
            .map(|r| r["host_id"])
            .collect();
        ensure!(
            stale == BTreeSet::from(["gone"]),
            "stale hosts {stale:?}, expected gone ({s:?})"
        );
    }
    ensure!(
        get(fleet, "Stopped reporting", All)?.rows == vec![vec!["1".to_string()]],
        "the stale count is not 1"
    );

    // Alert rules, through their thresholds.
    let alert = |title_part: &str| -> Result<Vec<BTreeMap<String, String>>> {
        let q = queries
            .iter()
            .find(|q| q.dashboard == "alerts" && q.title.contains(title_part))
            .with_context(|| format!("no alert rule titled `…{title_part}…`"))?;
        firing(&q.expect, get("alerts", &q.title, All)?)
    };
    let stale: Vec<String> = alert("stopped reporting")?
        .into_iter()
        .map(|l| l["host_id"].clone())
        .collect();
    ensure!(
        stale == vec!["gone".to_string()],
        "stale alert fires for {stale:?}"
    );
    let open = alert("open findings")?;
    for (sev, rule, host) in [
        ("high", "public-listener", "web"),
        ("medium", "db-listener", "db"),
    ] {
        ensure!(
            open.iter()
                .any(|l| l["severity"] == sev && l["rule_id"] == rule && l["host_id"] == host),
            "open findings alert does not fire for ({sev}, {rule}, {host}): {open:?}"
        );
    }

    // Findings: open and resolved, with the chosen host, severity and rule.
    let findings = "portolan-findings";
    let open = get(findings, "Open findings", Chosen)?.records();
    ensure!(
        open.iter()
            .all(|r| r["rule_id"] == "public-listener" && r["host_id"] == "web")
            && open
                .iter()
                .any(|r| r["subject"].contains(&WEB_PORT.to_string())),
        "open findings for web/high/public-listener: {open:?}"
    );
    let resolved = get(findings, "Resolved in the time range", Chosen)?.records();
    ensure!(
        resolved
            .iter()
            .any(|r| r["subject"].contains(&SHORT_LIVED_PORT.to_string())),
        "the closed listener's finding is not among the resolved: {resolved:?}"
    );
    let by_severity = get(findings, "Open findings by severity", All)?.records();
    let severities: BTreeSet<&str> = by_severity.iter().map(|r| r["severity"]).collect();
    ensure!(
        severities == BTreeSet::from(["high", "medium"]),
        "open findings by severity: {by_severity:?}"
    );

    // Listener history: the short-lived listener opened and closed.
    let history = "portolan-listener-history";
    let events = get(history, "Listener events", Chosen)?.records();
    for event in ["added", "removed"] {
        ensure!(
            events.iter().any(|r| r["host_id"] == "web"
                && r["local_port"] == SHORT_LIVED_PORT.to_string()
                && r["event"] == event),
            "no `{event}` event of web:{SHORT_LIVED_PORT}: {events:?}"
        );
    }
    let short = get(history, "Short-lived listeners", Chosen)?.records();
    ensure!(
        short
            .iter()
            .any(|r| r["host_id"] == "web" && r["port"] == SHORT_LIVED_PORT.to_string()),
        "web:{SHORT_LIVED_PORT} is not a short-lived listener: {short:?}"
    );

    // Flows: app → web and app → db between fleet hosts, web → the bridge outside it.
    let flows = "portolan-flows";
    let between = get(flows, "Flows between hosts", All)?.records();
    for (server, port, n) in [("web", WEB_PORT, "2"), ("db", DB_PORT, "1")] {
        ensure!(
            between.iter().any(|r| r["client"] == "app"
                && r["server"] == server
                && r["service_port"] == port.to_string()
                && r["connections_n"] == n),
            "no flow app → {server}:{port} with {n} connections: {between:?}"
        );
    }
    let edges = get(flows, "Flows between hosts edges", Chosen)?.records();
    ensure!(
        edges
            .iter()
            .any(|r| r["source"] == "app" && r["target"] == "web"),
        "no edge app → web: {edges:?}"
    );
    let nodes: BTreeSet<&str> = get(flows, "Flows between hosts nodes", All)?
        .records()
        .iter()
        .map(|r| r["id"])
        .collect();
    for host in ["web", "db", "app", "gone"] {
        ensure!(nodes.contains(host), "node {host} missing: {nodes:?}");
    }
    let leaving = get(flows, "Connections leaving the fleet", Chosen)?.records();
    ensure!(
        leaving
            .iter()
            .any(|r| r["host_id"] == "web" && r["remote"] == bridge.to_string()),
        "web's connection to {bridge}:{WEB_PORT} does not leave the fleet: {leaving:?}"
    );
    ensure!(
        !leaving
            .iter()
            .any(|r| r["remote"].starts_with("10.77.") && r["remote"] != bridge.to_string()),
        "a fleet host's address counted as outside the fleet: {leaving:?}"
    );

    // Host detail of web.
    let listeners: BTreeSet<&str> = get("portolan-host", "Listeners", Chosen)?
        .records()
        .iter()
        .map(|r| r["local_port"])
        .collect();
    for port in [WEB_PORT, PUBLIC_ONLY_PORT, LOOPBACK_PORT] {
        ensure!(
            listeners.contains(port.to_string().as_str()),
            "web's listener {port} missing from host detail: {listeners:?}"
        );
    }
    Ok(())
}

struct Hosts {
    web: NetnsHost,
    db: NetnsHost,
    app: NetnsHost,
    gone: NetnsHost,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_queries_show_what_the_fleet_holds() -> Result<()> {
    let (queries, variables) = all_queries()?;
    // Expansion errors are the files' own: fail at once rather than after the waits.
    for q in &queries {
        for selection in [Selection::All, Selection::Chosen] {
            expand(&q.sql, &context(q, &variables, selection, 0, 1)?)
                .with_context(|| q.origin.clone())?;
        }
    }
    let lab = Lab::new("graf")?;
    let hosts = Hosts {
        web: lab.add_host("web")?,
        db: lab.add_host("db")?,
        app: lab.add_host("app")?,
        gone: lab.add_host("gone")?,
    };
    // `web` holds a public address on its loopback interface: its wildcard binds are
    // exposed publicly.
    hosts.web.output(
        "ip",
        ["addr", "add", &format!("{PUBLIC_ADDRESS}/32"), "dev", "lo"],
    )?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let cluster = Cluster::start(
        "grafana",
        &[bridge],
        Limits {
            rules: Some(RULES.into()),
            ..Limits::default()
        },
    )
    .await?;
    let from = now_unix().saturating_sub(600);

    // Outside the fleet: a listener on the bridge (the root namespace, no agent).
    let outside = std::net::TcpListener::bind(SocketAddr::new(bridge, WEB_PORT))
        .context("listening on the bridge address")?;

    let fixture = fixture_binary()?;
    let web = SocketFixture::spawn(Some(&hosts.web), &fixture)?;
    let db = SocketFixture::spawn(Some(&hosts.db), &fixture)?;
    let app = SocketFixture::spawn(Some(&hosts.app), &fixture)?;
    web.listen(Protocol::Tcp, format!("0.0.0.0:{WEB_PORT}").parse()?)?;
    web.listen(
        Protocol::Tcp,
        format!("{PUBLIC_ADDRESS}:{PUBLIC_ONLY_PORT}").parse()?,
    )?;
    web.listen(Protocol::Tcp, format!("127.0.0.1:{LOOPBACK_PORT}").parse()?)?;
    db.listen(Protocol::Tcp, hosts.db.ipv4_addr(DB_PORT))?;
    for _ in 0..2 {
        app.connect(Protocol::Tcp, hosts.web.ipv4_addr(WEB_PORT))?;
    }
    app.connect(Protocol::Tcp, hosts.db.ipv4_addr(DB_PORT))?;
    web.connect(Protocol::Tcp, SocketAddr::new(bridge, WEB_PORT))?;

    let collector = SocketAddr::new(bridge, cluster.collector_port);
    let mut agents = Vec::new();
    for (host, id, role) in [
        (&hosts.web, "web", "web"),
        (&hosts.db, "db", "db"),
        (&hosts.app, "app", "app"),
    ] {
        agents.push(cluster.spawn_agent(
            Some(host),
            id,
            collector,
            SCAN_INTERVAL,
            &[("role", role), ("env", "e2e")],
        )?);
    }
    let gone_agent = cluster.spawn_agent(
        Some(&hosts.gone),
        "gone",
        collector,
        SCAN_INTERVAL,
        &[("role", "batch")],
    )?;

    // Every host reported, and the rules found the public listener.
    wait_for("every host reporting", Duration::from_secs(60), || async {
        let n = scalar(
            &cluster,
            "SELECT uniqExact(host_id) FROM host_reports WHERE kind = 'snapshot'",
        )
        .await?;
        ensure!(n == 4, "{n} hosts reported a snapshot");
        Ok(())
    })
    .await?;
    let open_on = |port: u16| {
        format!(
            "SELECT count() FROM findings FINAL WHERE rule_id = 'public-listener' AND host_id = 'web' AND status = 'open' AND subject LIKE '%:{port}'"
        )
    };
    wait_for(
        "the public listener's finding",
        Duration::from_secs(30),
        || async {
            ensure!(
                scalar(&cluster, &open_on(WEB_PORT)).await? == 1,
                "not open yet"
            );
            Ok(())
        },
    )
    .await?;

    // A listener that opens and closes: history, and a finding opened then resolved.
    let (short, _) = web.listen(
        Protocol::Tcp,
        format!("0.0.0.0:{SHORT_LIVED_PORT}").parse()?,
    )?;
    wait_for(
        "the short-lived listener's finding",
        Duration::from_secs(30),
        || async {
            ensure!(
                scalar(&cluster, &open_on(SHORT_LIVED_PORT)).await? == 1,
                "not open yet"
            );
            Ok(())
        },
    )
    .await?;
    web.close(short)?;
    wait_for("the short-lived finding resolved", Duration::from_secs(30), || async {
        let n = scalar(
            &cluster,
            &format!("SELECT count() FROM findings FINAL WHERE status = 'resolved' AND subject LIKE '%:{SHORT_LIVED_PORT}'"),
        )
        .await?;
        ensure!(n == 1, "not resolved yet");
        Ok(())
    })
    .await?;

    // One host stops reporting.
    drop(gone_agent);
    let stopped = Instant::now();

    // Every query, in both selections, until the stopped host is stale (5 scan
    // intervals) and every panel shows what the test did.
    let answers = wait_for(
        "every Grafana query answering as expected",
        Duration::from_secs(60),
        || async {
            let answers = run_all(&cluster, &queries, &variables, from).await?;
            check_content(&answers, &queries, bridge)?;
            Ok(answers)
        },
    )
    .await?;
    println!(
        "{} Grafana queries × 2 selections ran on ClickHouse with the expected shape and content ({} s after the agent stopped)",
        queries.len(),
        stopped.elapsed().as_secs()
    );
    for ((dashboard, title, selection), a) in &answers {
        if *selection == Selection::All {
            println!("  {dashboard} / {title}: {} rows", a.rows.len());
        }
    }
    drop(agents);
    drop(outside);
    Ok(())
}
