{{/*
Names, labels and the TOML renderer shared by every template.
*/}}

{{- define "portolan.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's base name; components append -agent, -collector, -evaluator (so it is kept
to 52 characters, leaving room for the longest suffix within the 63 of a label value).
*/}}
{{- define "portolan.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "portolan.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "portolan.labels" -}}
helm.sh/chart: {{ include "portolan.chart" . }}
app.kubernetes.io/name: {{ include "portolan.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portolan
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of one component: (dict "root" $ "component" "agent"). */}}
{{- define "portolan.componentLabels" -}}
{{ include "portolan.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "agent"). Never change them: selectors are immutable. */}}
{{- define "portolan.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portolan.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "portolan.agent.fullname" -}}{{ include "portolan.fullname" . }}-agent{{- end -}}
{{- define "portolan.collector.fullname" -}}{{ include "portolan.fullname" . }}-collector{{- end -}}
{{- define "portolan.evaluator.fullname" -}}{{ include "portolan.fullname" . }}-evaluator{{- end -}}

{{- define "portolan.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The collector Service's in-cluster DNS names (also the collector certificate's). */}}
{{- define "portolan.collector.dnsNames" -}}
{{- $svc := include "portolan.collector.fullname" . -}}
{{- $ns := .Release.Namespace -}}
- {{ $svc }}
- {{ $svc }}.{{ $ns }}
- {{ $svc }}.{{ $ns }}.svc
- {{ $svc }}.{{ $ns }}.svc.{{ .Values.clusterDomain }}
{{- range .Values.tls.certManager.collector.dnsNames }}
- {{ . }}
{{- end }}
{{- end -}}

{{/* Where agents send their inventories: the collector Service unless agent.config.collector.endpoint says otherwise. */}}
{{- define "portolan.collector.endpoint" -}}
{{- printf "https://%s.%s.svc:%d" (include "portolan.collector.fullname" .) .Release.Namespace (int .Values.collector.service.port) -}}
{{- end -}}

{{/* The Secret holding the collector's ca.crt, tls.crt and tls.key. */}}
{{- define "portolan.collector.tlsSecret" -}}
{{- if .Values.tls.certManager.enabled -}}
{{- printf "%s-tls" (include "portolan.collector.fullname" .) -}}
{{- else -}}
{{- default (printf "%s-tls" (include "portolan.collector.fullname" .)) .Values.tls.collectorSecret -}}
{{- end -}}
{{- end -}}

{{/* Where the revocation list's ConfigMap is mounted, as a whole directory. */}}
{{- define "portolan.collector.revocationDir" -}}/etc/portolan/revocation{{- end -}}

{{/* Where the CRLs' ConfigMap or Secret is mounted, as a whole directory. */}}
{{- define "portolan.collector.crlDir" -}}/etc/portolan/crl{{- end -}}

{{/* Whether CRLs are mounted ("true" or empty); fails when both sources are set. */}}
{{- define "portolan.collector.crlEnabled" -}}
{{- $crl := .Values.collector.crl -}}
{{- if and $crl.configMap $crl.secret -}}
{{- fail "collector.crl: set either configMap or secret, not both" -}}
{{- end -}}
{{- if or $crl.configMap $crl.secret -}}true{{- end -}}
{{- end -}}

{{/* The Secret holding the ClickHouse credentials. */}}
{{- define "portolan.clickhouse.secret" -}}
{{- default (printf "%s-clickhouse" (include "portolan.fullname" .)) .Values.clickhouse.existingSecret -}}
{{- end -}}

{{- define "portolan.clickhouse.url" -}}
{{- required "clickhouse.url is required: the HTTP URL of your ClickHouse server, e.g. --set clickhouse.url=http://clickhouse.db.svc:8123 (the chart does not run the collector's managed local ClickHouse)" .Values.clickhouse.url -}}
{{- end -}}

{{/* Name of the Secret of one agent certificate issued by cert-manager (agent.tls.source=certManager). */}}
{{- define "portolan.agent.nodeSecret" -}}
{{- printf "%s-%s" (include "portolan.agent.fullname" .root) .node | trunc 253 -}}
{{- end -}}

{{/* Where the collector and the evaluator find the Secrets of `clickhouse.tls`. */}}
{{- define "portolan.clickhouse.tlsDir" -}}
/etc/portolan/clickhouse-tls
{{- end -}}

{{/* Environment of the collector and the evaluator: ClickHouse credentials from the Secret. */}}
{{- define "portolan.clickhouse.env" -}}
- name: PORTOLAN_CLICKHOUSE_USER
  valueFrom:
    secretKeyRef:
      name: {{ include "portolan.clickhouse.secret" . }}
      key: {{ .Values.clickhouse.userKey }}
      optional: true
- name: PORTOLAN_CLICKHOUSE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "portolan.clickhouse.secret" . }}
      key: {{ .Values.clickhouse.passwordKey }}
      optional: true
{{- end -}}

{{/* Security context of the agent container: agent.securityContext, plus CAP_SYS_ADMIN with agent.enterNamespaces. */}}
{{- define "portolan.agent.securityContext" -}}
{{- $sc := deepCopy .Values.agent.securityContext -}}
{{- if .Values.agent.enterNamespaces -}}
{{- $caps := default (dict) (get $sc "capabilities") -}}
{{- $add := default (list) (get $caps "add") -}}
{{- if not (has "SYS_ADMIN" $add) -}}
{{- $_ := set $caps "add" (append $add "SYS_ADMIN") -}}
{{- end -}}
{{- $_ := set $sc "capabilities" $caps -}}
{{- end -}}
{{- toYaml $sc -}}
{{- end -}}

{{/* Security context of the collector and evaluator containers: nothing but the network. */}}
{{- define "portolan.restrictedSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Configurations. Each is a dict with exactly the keys of deploy/config/portolan-*.toml:
chart defaults (overridable), then the user's `config` values, then the keys the chart
owns because they depend on how the pods are built (paths, ports, evaluation).
*/}}
{{- define "portolan.agent.config" -}}
{{- $tlsDir := "/etc/portolan/tls" -}}
{{- $config := deepCopy (default (dict) .Values.agent.config) -}}
{{- $collector := default (dict) (get $config "collector") -}}
{{- if not (get $collector "endpoint") -}}
{{- $_ := set $collector "endpoint" (include "portolan.collector.endpoint" .) -}}
{{- end -}}
{{- $_ := set $config "collector" $collector -}}
{{- $_ = set $config "version" 1 -}}
{{- $_ = set $config "proc_root" "/host/proc" -}}
{{- $_ = set $config "pod_logs_dir" "/var/log/pods" -}}
{{- $spool := default (dict) (get $config "spool") -}}
{{- $_ = set $spool "dir" .Values.agent.spoolHostPath -}}
{{- $_ = set $config "spool" $spool -}}
{{- if eq .Values.agent.tls.source "enrollment" -}}
{{- /* The CA only is mounted; the agent makes its key and obtains its certificate into the
node's spool directory (kept across pod restarts: the key stays on its node). */ -}}
{{- $_ = set $config "tls" (dict "ca" (printf "%s/ca.pem" $tlsDir) "cert" (printf "%s/agent.pem" .Values.agent.spoolHostPath) "key" (printf "%s/agent.key" .Values.agent.spoolHostPath)) -}}
{{- $_ = set $config "enrollment" (dict "token_file" "/etc/portolan/enrollment/token") -}}
{{- else -}}
{{- $_ = set $config "tls" (dict "ca" (printf "%s/ca.pem" $tlsDir) "cert" (printf "%s/agent.pem" $tlsDir) "key" (printf "%s/agent.key" $tlsDir)) -}}
{{- end -}}
{{- /* Always on: the probes need /healthz and /readyz; metrics.enabled only adds scraping. */ -}}
{{- $_ = set $config "metrics" (dict "listen" (printf "0.0.0.0:%d" (int .Values.metrics.port))) -}}
{{- toJson $config -}}
{{- end -}}

{{/* The keys the chart sets in both collector configurations, over `config` dict $config. */}}
{{- define "portolan.collector.ownedKeys" -}}
{{- $root := .root -}}
{{- $config := .config -}}
{{- $tlsDir := "/etc/portolan/tls" -}}
{{- $_ := set $config "version" 1 -}}
{{- $_ = set $config "listen" (printf "0.0.0.0:%d" (int $root.Values.collector.port)) -}}
{{- $_ = set $config "state_dir" "/var/lib/portolan-collector" -}}
{{- $tls := dict "ca" (printf "%s/ca.crt" $tlsDir) "cert" (printf "%s/tls.crt" $tlsDir) "key" (printf "%s/tls.key" $tlsDir) -}}
{{- with $root.Values.collector.revocation.configMap -}}
{{- $_ = set $tls "revoked" (printf "%s/%s" (include "portolan.collector.revocationDir" $root) $root.Values.collector.revocation.key) -}}
{{- end -}}
{{- if include "portolan.collector.crlEnabled" $root -}}
{{- $crls := list -}}
{{- range $key := $root.Values.collector.crl.keys -}}
{{- $crls = append $crls (printf "%s/%s" (include "portolan.collector.crlDir" $root) $key) -}}
{{- end -}}
{{- $_ = set $tls "crls" $crls -}}
{{- end -}}
{{- $_ = set $config "tls" $tls -}}
{{- $clickhouse := dict "url" (include "portolan.clickhouse.url" $root) "database" $root.Values.clickhouse.database "batch_window" $root.Values.clickhouse.batchWindow "batch_max_rows" (int $root.Values.clickhouse.batchMaxRows) -}}
{{- $chTls := dict -}}
{{- if $root.Values.clickhouse.tls.caSecret -}}
{{- $_ = set $chTls "ca" (printf "%s/ca/%s" (include "portolan.clickhouse.tlsDir" $root) $root.Values.clickhouse.tls.caKey) -}}
{{- end -}}
{{- if $root.Values.clickhouse.tls.clientSecret -}}
{{- $_ = set $chTls "cert" (printf "%s/client/tls.crt" (include "portolan.clickhouse.tlsDir" $root)) -}}
{{- $_ = set $chTls "key" (printf "%s/client/tls.key" (include "portolan.clickhouse.tlsDir" $root)) -}}
{{- end -}}
{{- if $chTls -}}
{{- $_ = set $clickhouse "tls" $chTls -}}
{{- end -}}
{{- $_ = set $config "clickhouse" $clickhouse -}}
{{- /* Always on: the probes need /healthz and /readyz; metrics.enabled only adds scraping. */ -}}
{{- $_ = set $config "metrics" (dict "listen" (printf "0.0.0.0:%d" (int $root.Values.metrics.port))) -}}
{{- end -}}

{{- define "portolan.collector.config" -}}
{{- $config := deepCopy (default (dict) .Values.collector.config) -}}
{{- include "portolan.collector.ownedKeys" (dict "root" . "config" $config) -}}
{{- /* Only the collector enrols: the evaluator never holds the signer's key. */ -}}
{{- $enrollment := default (dict) (get $config "enrollment") -}}
{{- if .Values.enrollment.enabled -}}
{{- $_ := set $enrollment "enabled" true -}}
{{- $_ = set $enrollment "signer_cert" "/etc/portolan/signer/tls.crt" -}}
{{- $_ = set $enrollment "signer_key" "/etc/portolan/signer/tls.key" -}}
{{- end -}}
{{- if $enrollment -}}
{{- $_ := set $config "enrollment" $enrollment -}}
{{- end -}}
{{- $_ := set $config "rules" (dict "evaluate" false) -}}
{{- toJson $config -}}
{{- end -}}

{{- define "portolan.evaluator.ruleFiles" -}}
{{- $files := list -}}
{{- if .Values.evaluator.rules.defaultPack -}}
{{- $files = append $files "/etc/portolan/rules/default.yaml" -}}
{{- end -}}
{{- range $name := keys .Values.evaluator.rules.custom | sortAlpha -}}
{{- $files = append $files (printf "/etc/portolan/rules/%s" $name) -}}
{{- end -}}
{{- if not $files -}}
{{- fail "the evaluator has no rule file: keep evaluator.rules.defaultPack true or add files under evaluator.rules.custom" -}}
{{- end -}}
{{- toJson $files -}}
{{- end -}}

{{/* The evaluator: collector.config, then evaluator.config section by section, then the chart's keys. */}}
{{- define "portolan.evaluator.config" -}}
{{- $config := deepCopy (default (dict) .Values.collector.config) -}}
{{- range $section, $value := deepCopy (default (dict) .Values.evaluator.config) -}}
{{- $existing := get $config $section -}}
{{- if and (kindIs "map" $existing) (kindIs "map" $value) -}}
{{- $_ := set $config $section (mustMergeOverwrite $existing $value) -}}
{{- else -}}
{{- $_ := set $config $section $value -}}
{{- end -}}
{{- end -}}
{{- include "portolan.collector.ownedKeys" (dict "root" . "config" $config) -}}
{{- $rules := default (dict) (get $config "rules") -}}
{{- $_ := set $rules "evaluate" true -}}
{{- $_ = set $rules "files" (include "portolan.evaluator.ruleFiles" . | fromJsonArray) -}}
{{- $_ = set $config "rules" $rules -}}
{{- toJson $config -}}
{{- end -}}

{{/*
A TOML document from a dict (JSON round-tripped, so numbers arrive as float64 and are
written back as integers when whole). Scalars and inline arrays first, then [tables],
then [[arrays of tables]]; keys sorted, `version` first.
*/}}
{{- define "portolan.toml" -}}
{{- include "portolan.toml.table" (dict "table" . "path" "") -}}
{{- end -}}

{{- define "portolan.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "portolan.toml.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) -}}
{{- $all := true -}}
{{- range . -}}{{- if not (kindIs "map" .) -}}{{- $all = false -}}{{- end -}}{{- end -}}
{{- if $all -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{- define "portolan.toml.value" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- ternary "true" "false" $v -}}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) -}}
{{- if eq (float64 (int64 $v)) (float64 $v) -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) (kindIs "uint64" $v) -}}
{{- $v -}}
{{- else if kindIs "slice" $v -}}
[{{- range $i, $e := $v -}}{{- if $i -}}, {{ end -}}{{- include "portolan.toml.value" $e -}}{{- end -}}]
{{- else if kindIs "map" $v -}}
{{- if eq (len $v) 0 -}}{}{{- else -}}
{ {{- range $i, $k := keys $v | sortAlpha -}}{{- if $i -}},{{- end }} {{ include "portolan.toml.key" $k }} = {{ include "portolan.toml.value" (index $v $k) }}{{- end }} }
{{- end -}}
{{- else -}}
{{- fail (printf "cannot write %v (%s) as TOML: configuration values must be strings, numbers, booleans, lists or maps" $v (kindOf $v)) -}}
{{- end -}}
{{- end -}}

{{- define "portolan.toml.table" -}}
{{- $t := .table -}}
{{- $path := .path -}}
{{- $keys := keys $t | sortAlpha -}}
{{- if has "version" $keys -}}
{{- $keys = prepend (without $keys "version") "version" -}}
{{- end -}}
{{- range $k := $keys -}}
{{- $v := index $t $k -}}
{{- if not (or (kindIs "map" $v) (include "portolan.toml.isTableArray" $v)) }}
{{ include "portolan.toml.key" $k }} = {{ include "portolan.toml.value" $v }}
{{- end -}}
{{- end -}}
{{- range $k := $keys -}}
{{- $v := index $t $k -}}
{{- if kindIs "map" $v -}}
{{- $sub := ternary (include "portolan.toml.key" $k) (printf "%s.%s" $path (include "portolan.toml.key" $k)) (eq $path "") }}

[{{ $sub }}]
{{- include "portolan.toml.table" (dict "table" $v "path" $sub) -}}
{{- end -}}
{{- end -}}
{{- range $k := $keys -}}
{{- $v := index $t $k -}}
{{- if include "portolan.toml.isTableArray" $v -}}
{{- $sub := ternary (include "portolan.toml.key" $k) (printf "%s.%s" $path (include "portolan.toml.key" $k)) (eq $path "") -}}
{{- range $e := $v }}

[[{{ $sub }}]]
{{- range $ek := keys $e | sortAlpha }}
{{ include "portolan.toml.key" $ek }} = {{ include "portolan.toml.value" (index $e $ek) }}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The probes of every workload, on the HTTP listener of `metrics.port`: started and alive
while /healthz answers 200 (the process's loops run), ready while /readyz does (the
collector can write to ClickHouse and its schema is current; the agent has scanned and
its changes reach the collector or fit in its spool).
*/}}
{{- define "portolan.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 5
  failureThreshold: 60
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 20
  failureThreshold: 3
{{- end -}}
